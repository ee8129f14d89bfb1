//! The engine boundary: what the batcher's model thread runs.
//!
//! [`Runner`] is the one seam between HTTP and a model. [`EncoderEngine`] implements it for
//! the encoder pipelines by calling each task's `run_encoded` over a whole packed batch; the
//! batcher never sees a task. Generation (`/v1/completions`, `/v1/chat/completions`) will add
//! a second engine here, a continuous-batching loop over `girder::generate` with one KV cache
//! per sequence, fed by its own queue; it does not go through [`Runner`], whose batches end
//! when their forward pass ends.

use girder::pipelines::{embeddings, fill_mask, text_classification, token_classification, Model};
use girder::tokenize::Encoded;
use std::sync::Arc;

/// What one request asks of the encoder. Requests with equal work can share a forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// Pooled embeddings; `normalize: None` follows the model's modules.json.
    Embed { normalize: Option<bool> },
    /// Sequence classification.
    Classify(text_classification::Options),
    /// Token classification.
    Ner(token_classification::Options),
    /// Masked-token prediction.
    FillMask(fill_mask::Options),
}

/// One text's result.
#[derive(Debug, Clone)]
pub enum Item {
    Embedding(embeddings::Output),
    Classes(text_classification::TextResult),
    Entities(token_classification::TextResult),
    Masks(fill_mask::TextResult),
}

/// Runs one batch: `texts[i]` was tokenized into `encodings[i]`; returns one item per text,
/// in order. Called from the batcher's model thread only.
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        work: &Work,
        texts: &[String],
        encodings: &[Encoded],
    ) -> girder::Result<Vec<Item>>;
}

/// The encoder pipelines over one loaded model.
pub struct EncoderEngine {
    model: Arc<Model>,
}

impl EncoderEngine {
    pub fn new(model: Arc<Model>) -> Self {
        EncoderEngine { model }
    }
}

impl Runner for EncoderEngine {
    fn run(
        &self,
        work: &Work,
        texts: &[String],
        encodings: &[Encoded],
    ) -> girder::Result<Vec<Item>> {
        let model = &*self.model;
        Ok(match work {
            Work::Embed { normalize } => {
                let options = embeddings::Options {
                    pooling: None,
                    normalize: *normalize,
                };
                embeddings::run_encoded(model, encodings, &options)?
                    .into_iter()
                    .map(Item::Embedding)
                    .collect()
            }
            Work::Classify(options) => text_classification::run_encoded(model, encodings, options)?
                .into_iter()
                .map(Item::Classes)
                .collect(),
            Work::Ner(options) => {
                token_classification::run_encoded(model, texts, encodings, options)?
                    .into_iter()
                    .map(Item::Entities)
                    .collect()
            }
            Work::FillMask(options) => fill_mask::run_encoded(model, encodings, options)?
                .into_iter()
                .map(Item::Masks)
                .collect(),
        })
    }
}

//! The engine boundary: what the batcher's model thread runs.
//!
//! [`Runner`] is the one seam between HTTP and an encoder. [`EncoderEngine`] implements it
//! with the library's [`TaskOptions::run_encoded`] over the forward passes the model plans
//! for the batch ([`Model::plan`], under the model's `max_batch_tokens`: a batch the batcher
//! formed under the same budget is one pass, a request alone over it is split); the batcher
//! never sees a task. Generation (`/v1/completions`, `/v1/chat/completions`) has its own
//! continuous-batching engine ([`crate::generation`]): its batches do not end when a forward
//! pass ends.

use girder::pipelines::{Model, TaskOptions, TaskOutput};
use girder::tokenize::Encoded;
use std::sync::Arc;

/// Runs one batch: `texts[i]` was tokenized into `encodings[i]`; returns one output per
/// text, in order. Requests with equal options share a batch. Called from the batcher's
/// model thread only.
pub trait Runner: Send + Sync + 'static {
    fn run(
        &self,
        work: &TaskOptions,
        texts: &[String],
        encodings: &[Encoded],
    ) -> girder::Result<Vec<TaskOutput>>;
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
        work: &TaskOptions,
        texts: &[String],
        encodings: &[Encoded],
    ) -> girder::Result<Vec<TaskOutput>> {
        let plan = self.model.plan(encodings);
        work.run_encoded(&self.model, texts, encodings, &plan)
    }
}

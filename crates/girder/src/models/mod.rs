//! The architectures girder implements, one file each, and the [`registry`] that picks one
//! from config.json the way transformers' AutoModel does: `architectures[0]` first, else
//! `model_type`.
//!
//! The registry is the only table that lists architectures. Models never see text, files or
//! threads: they get [`Weights`], a config and a [`RaggedBatch`] (decoders also each
//! sequence's [`KvCache`]). [`EncoderModel`], [`DecoderModel`] and [`Seq2SeqModel`] are a
//! loaded class of each kind, behind the traits every model file implements.

pub mod bart;
pub mod bert;
pub mod distilbert;
pub mod encoder_decoder;
pub mod gemma3;
pub mod gpt2;
mod heads;
pub mod llama;
pub mod marian;
pub mod mpnet;
pub mod registry;
pub mod roberta;
pub mod t5;
pub mod whisper;

pub use encoder_decoder::{EncoderInput, EncoderStates, Seq2SeqForward, Seq2SeqModel};
pub use registry::{Architecture, Resolved};

use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::{Embedding, KvCache};
use candle_core::Tensor;

/// Layers a configuration may declare at most: past any real model (the largest have under
/// 200), and small enough that per-layer tables sized from the config stay small when a
/// config.json or a GGUF header is edited to claim billions.
pub const MAX_LAYERS: usize = 4096;

/// `num_hidden_layers` of `file`, refused past [`MAX_LAYERS`].
pub(crate) fn check_layer_count(file: &std::path::Path, layers: usize) -> crate::Result<()> {
    if layers > MAX_LAYERS {
        return Err(crate::Error::BadConfig {
            file: file.to_path_buf(),
            field: "num_hidden_layers".into(),
            reason: format!(
                "{layers} layers: more than any checkpoint holds (at most {MAX_LAYERS})"
            ),
        });
    }
    Ok(())
}

/// The kinds of model girder runs; each task names the kinds that serve it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// Bidirectional encoders (BERT and its family): hidden states, classifiers, fill-mask.
    Encoder,
    /// Causal language models (GPT-2, LLaMA and its family): text generation.
    Decoder,
    /// Encoder-decoders (T5, BART, Marian, Whisper): translation, summarization,
    /// text-to-text generation, speech recognition.
    EncoderDecoder,
}

impl Kind {
    /// `encoder`, `decoder`, `encoder-decoder`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Encoder => "encoder",
            Kind::Decoder => "decoder",
            Kind::EncoderDecoder => "encoder-decoder",
        }
    }

    /// The kind in a sentence: `an encoder`, `a decoder (causal language model)`.
    pub fn describe(self) -> &'static str {
        match self {
            Kind::Encoder => "an encoder",
            Kind::Decoder => "a decoder (causal language model)",
            Kind::EncoderDecoder => "an encoder-decoder (sequence-to-sequence model)",
        }
    }

    /// The kind in a plural noun phrase: `encoders`, `decoders (causal language models)`.
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Encoder => "encoders",
            Kind::Decoder => "decoders (causal language models)",
            Kind::EncoderDecoder => "encoder-decoders (sequence-to-sequence models)",
        }
    }
}

/// Which head a checkpoint carries (the suffix of its transformers class name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Head {
    /// `…Model`: hidden states (and pooler output).
    Base,
    /// `…ForSequenceClassification`
    SequenceClassification,
    /// `…ForTokenClassification`
    TokenClassification,
    /// `…ForMaskedLM`
    MaskedLM,
    /// `…ForCausalLM`, `GPT2LMHeadModel`: next-token logits.
    CausalLM,
    /// `…ForConditionalGeneration`, `MarianMTModel`: text in, text out (transformers'
    /// `AutoModelForSeq2SeqLM`).
    Seq2SeqLM,
    /// `WhisperForConditionalGeneration`: audio in, text out (`AutoModelForSpeechSeq2Seq`).
    SpeechSeq2Seq,
}

impl Head {
    /// The kind of model that carries this head: decoders carry the causal-LM head,
    /// encoder-decoders the sequence-to-sequence heads, encoders the others (an
    /// encoder-decoder's sequence classifier included: it is run as an encoder is).
    pub fn kind(self) -> Kind {
        match self {
            Head::CausalLM => Kind::Decoder,
            Head::Seq2SeqLM | Head::SpeechSeq2Seq => Kind::EncoderDecoder,
            _ => Kind::Encoder,
        }
    }

    /// What a message calls it.
    pub fn name(self) -> &'static str {
        match self {
            Head::Base => "a base model, no head",
            Head::SequenceClassification => "a sequence-classification head",
            Head::TokenClassification => "a token-classification head",
            Head::MaskedLM => "a masked-LM head",
            Head::CausalLM => "a causal-LM head",
            Head::Seq2SeqLM => "a sequence-to-sequence LM head",
            Head::SpeechSeq2Seq => "a speech-to-text head",
        }
    }
}

/// What an encoder's base model returns.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// `[total_tokens, hidden]`
    pub last_hidden_state: Tensor,
    /// `[num_seqs, hidden]`, for models with a pooler (`tanh(W·h[CLS])`).
    pub pooler_output: Option<Tensor>,
}

/// The forward pass every encoder class implements.
pub trait EncoderForward: Send + Sync {
    /// The base model on a packed batch.
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput>;

    /// The head on top of [`encode`](Self::encode)'s output. Sequence classifiers return
    /// `[num_seqs, num_labels]`; token-level heads return one row per token, restricted to
    /// `rows` (indices into the packed tokens) when given: `[rows, num_labels | vocab]`.
    fn head(
        &self,
        out: &EncoderOutput,
        batch: &RaggedBatch,
        rows: Option<&[u32]>,
    ) -> Result<Tensor> {
        let _ = (out, batch, rows);
        Err(Error::TaskMismatch {
            model: "this model".into(),
            task: "a head".into(),
            reason: "it is a base model without a head".into(),
        })
    }

    /// The last layer alone on `hidden` (`[total_tokens, hidden]`, the states entering it),
    /// computed at each sequence's first token only, then the pooler: `last_hidden_state`
    /// holds those rows (`[num_seqs, hidden]`), so a head reads them with
    /// [`RaggedBatch::single_tokens`]. What a sequence classifier reads of its last layer,
    /// for training that layer on cached states (`girder train --method top-layer`).
    fn encode_last_layer(&self, hidden: &Tensor, batch: &RaggedBatch) -> Result<EncoderOutput> {
        let _ = (hidden, batch);
        Err(Error::Unsupported {
            what: "running the last layer alone on this architecture (BERT, RoBERTa and XLM-RoBERTa have it)".into(),
        })
    }

    /// The word-embedding matrix `[vocab, hidden]`, as loaded (the guard reads its rows).
    fn word_embeddings(&self) -> &Embedding;

    /// Rows of the position-embedding table (before any [`registry::PositionOffset`]).
    fn max_position_embeddings(&self) -> usize;
}

/// A base model's weights: under `prefix.` in head checkpoints (`bert.`, `roberta.`), at
/// the root in base ones.
pub(crate) fn base_weights(w: &Weights, prefix: &str) -> Weights {
    if w.contains(&format!("{prefix}.embeddings.word_embeddings.weight")) {
        w.pp(prefix)
    } else {
        w.clone()
    }
}

/// Position ids as transformers' `create_position_ids_from_input_ids` (RoBERTa, MPNet):
/// tokens count from `padding_idx + 1`, and a pad token (even one typed in the text) gets
/// `padding_idx`.
pub(crate) fn positions_after_padding(batch: &RaggedBatch, padding_idx: u32) -> Vec<u32> {
    let mut positions = Vec::with_capacity(batch.total_tokens());
    for i in 0..batch.num_seqs() {
        let mut count = 0;
        for &id in &batch.input_ids[batch.seq_range(i)] {
            if id == padding_idx {
                positions.push(padding_idx);
            } else {
                count += 1;
                positions.push(padding_idx + count);
            }
        }
    }
    positions
}

/// A loaded encoder with its head, built by its registry row.
pub struct EncoderModel {
    resolved: Resolved,
    position_limit: usize,
    inner: Box<dyn EncoderForward>,
}

impl std::fmt::Debug for EncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderModel")
            .field("class_name", &self.resolved.class_name)
            .field("head", &self.resolved.head)
            .finish()
    }
}

impl EncoderModel {
    /// Builds the class `resolved` names (an encoder row of the registry) from the checkpoint.
    pub fn load(resolved: Resolved, config: &CommonConfig, weights: &Weights) -> Result<Self> {
        let Some(build) = resolved.architecture.constructor.encoder(resolved.head) else {
            return Err(Error::TaskMismatch {
                model: resolved.class_name.into(),
                task: "the encoder pipelines".into(),
                reason: format!("it is {}", resolved.architecture.kind.describe()),
            });
        };
        if matches!(
            resolved.head,
            Head::SequenceClassification | Head::TokenClassification
        ) && config.id2label.is_empty()
        {
            return Err(Error::BadConfig {
                file: config.path.clone(),
                field: "id2label".into(),
                reason: format!(
                    "{} needs labels (id2label or num_labels)",
                    resolved.class_name
                ),
            });
        }
        let inner = build(weights, config, resolved.head)?;
        let offset = resolved.architecture.position_offset.rows(config);
        let position_limit = inner.max_position_embeddings().saturating_sub(offset);
        Ok(EncoderModel {
            resolved,
            position_limit,
            inner,
        })
    }

    /// transformers' class name, e.g. `BertForTokenClassification`.
    pub fn class_name(&self) -> &str {
        self.resolved.class_name
    }

    /// The registry row.
    pub fn architecture(&self) -> &'static Architecture {
        self.resolved.architecture
    }

    /// The head the checkpoint carries.
    pub fn head(&self) -> Head {
        self.resolved.head
    }

    /// How many tokens (special tokens included) the position embeddings can index.
    pub fn position_limit(&self) -> usize {
        self.position_limit
    }

    /// Rows of the word-embedding matrix.
    pub fn vocab_size(&self) -> usize {
        self.inner.word_embeddings().dims().0
    }

    /// The word-embedding matrix `[vocab, hidden]`.
    pub fn word_embeddings(&self) -> &Embedding {
        self.inner.word_embeddings()
    }

    /// The base model's output on a packed batch.
    pub fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        crate::layers::in_thread_pool(|| self.inner.encode(batch))
    }

    /// The last layer at each sequence's first token, on the states entering it (see
    /// [`EncoderForward::encode_last_layer`]).
    pub fn encode_last_layer(&self, hidden: &Tensor, batch: &RaggedBatch) -> Result<EncoderOutput> {
        crate::layers::in_thread_pool(|| self.inner.encode_last_layer(hidden, batch))
    }

    /// The head's logits for an already-encoded batch (see [`EncoderForward::head`]).
    pub fn head_logits(
        &self,
        out: &EncoderOutput,
        batch: &RaggedBatch,
        rows: Option<&[u32]>,
    ) -> Result<Tensor> {
        if self.resolved.head == Head::Base {
            return Err(Error::TaskMismatch {
                model: self.resolved.class_name.into(),
                task: "a head".into(),
                reason: "it is a base model without a head".into(),
            });
        }
        crate::layers::in_thread_pool(|| self.inner.head(out, batch, rows))
    }
}

/// Which rows a decoder turns into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last token of each sequence: `[num_seqs, vocab]` (generation).
    Last,
    /// Every token: `[total_tokens, vocab]` (scoring a prompt, parity tests).
    All,
}

/// The forward pass every causal language model implements.
///
/// `batch` holds each sequence's new tokens, with `positions` continuing from what its cache
/// holds ([`RaggedBatch::push_from`]); `caches[i]` belongs to sequence `i` and receives its
/// keys and values. A prompt is processed in one call (prefill), then one token per call.
pub trait DecoderForward: Send + Sync {
    /// Logits of the rows `logits` selects.
    fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor>;

    /// An empty cache for one sequence, with room for `capacity` positions (it grows beyond).
    fn new_cache(&self, capacity: usize) -> Result<KvCache>;

    /// Positions the model can attend over (`max_position_embeddings` / `n_positions`).
    fn context_length(&self) -> usize;

    /// Rows of the output projection.
    fn vocab_size(&self) -> usize;

    /// The token-embedding matrix `[vocab, hidden]`, as loaded (the guard reads its rows).
    fn input_embeddings(&self) -> &Embedding;
}

/// Checks what a decoder needs of its batch: one cache per sequence, positions continuing
/// from the cache, and no position past the context.
pub(crate) fn check_decoder_batch(
    batch: &RaggedBatch,
    caches: &[&mut KvCache],
    context_length: usize,
) -> Result<()> {
    let cached: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    check_cached_positions(batch, &cached, Some(context_length))
}

/// What every decoder (a causal LM's, an encoder-decoder's) needs of its batch, given the
/// positions each sequence's cache holds: one cache per sequence, positions continuing from
/// it, and none past `max_positions`.
pub(crate) fn check_cached_positions(
    batch: &RaggedBatch,
    cached: &[usize],
    max_positions: Option<usize>,
) -> Result<()> {
    if cached.len() != batch.num_seqs() {
        return Err(Error::InvalidOption {
            option: "caches".into(),
            reason: format!(
                "{} caches for {} sequences: each sequence needs its own",
                cached.len(),
                batch.num_seqs()
            ),
        });
    }
    for (i, &held) in cached.iter().enumerate() {
        let range = batch.seq_range(i);
        if range.is_empty() {
            return Err(Error::BadInput {
                index: i,
                reason: "the sequence has no tokens".into(),
            });
        }
        let first = batch.positions[range.start] as usize;
        if first != held {
            return Err(Error::InvalidOption {
                option: "positions".into(),
                reason: format!(
                    "sequence {i} starts at position {first} but its cache holds {held} positions"
                ),
            });
        }
        let end = held + range.len();
        if let Some(max) = max_positions.filter(|&max| end > max) {
            return Err(Error::ContextLength {
                index: i,
                tokens: end,
                max,
            });
        }
    }
    Ok(())
}

/// `hidden` `[total_tokens, hidden]` restricted to the rows `logits` selects.
pub(crate) fn logit_rows(hidden: &Tensor, batch: &RaggedBatch, logits: Logits) -> Result<Tensor> {
    match logits {
        Logits::All => Ok(hidden.clone()),
        Logits::Last => {
            let rows: Vec<u32> = batch.cu_seqlens[1..].iter().map(|&end| end - 1).collect();
            let rows = Tensor::new(rows, hidden.device())?;
            Ok(hidden.index_select(&rows, 0)?)
        }
    }
}

/// A loaded causal language model, built by its registry row.
pub struct DecoderModel {
    class_name: String,
    architecture: &'static Architecture,
    inner: Box<dyn DecoderForward>,
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel")
            .field("class_name", &self.class_name)
            .finish()
    }
}

impl DecoderModel {
    /// Builds the class `resolved` names (a decoder row of the registry) from a
    /// safetensors checkpoint.
    pub fn load(resolved: Resolved, config: &CommonConfig, weights: &Weights) -> Result<Self> {
        let registry::Constructor::Decoder(build) = resolved.architecture.constructor else {
            return Err(Error::TaskMismatch {
                model: resolved.class_name.into(),
                task: "text-generation".into(),
                reason: format!("it is {}", resolved.architecture.kind.describe()),
            });
        };
        Ok(DecoderModel {
            class_name: resolved.class_name.to_string(),
            architecture: resolved.architecture,
            inner: build(weights, config)?,
        })
    }

    /// Builds a model from a GGUF file with the constructor of its registry row; `weights`
    /// serves the file's tensors under transformers' names.
    pub fn load_gguf(
        architecture: &'static Architecture,
        format: registry::GgufFormat,
        gguf: &crate::hub::GgufFile,
        weights: &Weights,
    ) -> Result<Self> {
        Ok(DecoderModel {
            class_name: architecture.classes[0].0.to_string(),
            architecture,
            inner: (format.build)(gguf, weights)?,
        })
    }

    /// The same model with another implementation of its forward pass (to wrap,
    /// instrument or replace it; tests and benchmarks).
    pub fn map_inner(
        self,
        f: impl FnOnce(Box<dyn DecoderForward>) -> Box<dyn DecoderForward>,
    ) -> Self {
        DecoderModel {
            inner: f(self.inner),
            ..self
        }
    }

    /// transformers' class name, e.g. `LlamaForCausalLM`.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// The registry row.
    pub fn architecture(&self) -> &'static Architecture {
        self.architecture
    }

    /// See [`DecoderForward::forward`].
    pub fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor> {
        crate::layers::in_thread_pool(|| self.inner.forward(batch, caches, logits))
    }

    /// See [`DecoderForward::new_cache`].
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.inner.new_cache(capacity)
    }

    /// See [`DecoderForward::context_length`].
    pub fn context_length(&self) -> usize {
        self.inner.context_length()
    }

    /// See [`DecoderForward::vocab_size`].
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// See [`DecoderForward::input_embeddings`].
    pub fn input_embeddings(&self) -> &Embedding {
        self.inner.input_embeddings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_start_after_padding_idx() {
        let mut batch = RaggedBatch::from_encodings([]);
        batch.push(&[0, 5, 6, 2], &[]);
        batch.push(&[0, 1, 7, 2], &[]);
        assert_eq!(positions_after_padding(&batch, 1), [2, 3, 4, 5, 2, 1, 3, 4]);
    }
}

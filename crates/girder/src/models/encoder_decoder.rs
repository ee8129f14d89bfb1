//! The encoder-decoder kind (Vaswani et al. 2017, "Attention Is All You Need"): an encoder
//! reads the whole input once, a decoder writes the output token by token, attending to its
//! own tokens (causal self-attention over a [`KvCache`](crate::layers::KvCache)) and to the
//! encoder's output (cross-attention over a [`CrossKv`], computed once per input).
//!
//! [`Seq2SeqForward`] is what every encoder-decoder file implements (T5, BART, Marian,
//! Whisper); [`Seq2SeqModel`] is a loaded one, built by its registry row. The encoder reads
//! packed token ids (text models) or log-mel features (speech models); either way its output
//! stays packed, one range of rows per input, and so does the decoder's batch: no padding on
//! either side. What to generate is left to [`crate::generate::seq2seq`].

use super::{registry, Architecture, Logits, Resolved};
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::{CrossKv, Embedding, Seq2SeqCache};
use candle_core::Tensor;
use std::sync::Arc;

/// What an encoder reads.
#[derive(Debug, Clone, Copy)]
pub enum EncoderInput<'a> {
    /// Token ids of each input, packed (text models).
    Tokens(&'a RaggedBatch),
    /// Log-mel features `[num_seqs, mel_bins, frames]` f32 (speech models).
    Features(&'a Tensor),
}

impl EncoderInput<'_> {
    /// Number of inputs.
    pub fn num_seqs(&self) -> usize {
        match self {
            EncoderInput::Tokens(batch) => batch.num_seqs(),
            EncoderInput::Features(features) => features.dims().first().copied().unwrap_or(0),
        }
    }
}

/// An encoder's output for a batch, packed: input `i` owns rows
/// `cu_seqlens[i]..cu_seqlens[i + 1]` of `last_hidden_state`.
#[derive(Debug, Clone)]
pub struct EncoderStates {
    /// `[total_rows, hidden]`
    pub last_hidden_state: Tensor,
    /// `[num_seqs + 1]`
    pub cu_seqlens: Vec<u32>,
}

impl EncoderStates {
    /// Number of inputs.
    pub fn num_seqs(&self) -> usize {
        self.cu_seqlens.len().saturating_sub(1)
    }

    /// Input `i`'s rows, `[len, hidden]`.
    pub fn rows(&self, i: usize) -> Result<Tensor> {
        let (start, end) = (self.cu_seqlens[i] as usize, self.cu_seqlens[i + 1] as usize);
        Ok(self.last_hidden_state.narrow(0, start, end - start)?)
    }
}

/// The forward passes every encoder-decoder implements.
///
/// A sequence's decoding starts from [`new_cache`](Self::new_cache) with its input's
/// [`CrossKv`]; `decode` then takes each sequence's new tokens, positions continuing from
/// what its cache holds ([`RaggedBatch::push_from`]): the decoder prompt at once, then one
/// token per call.
pub trait Seq2SeqForward: Send + Sync {
    /// The encoder on a batch of inputs.
    fn encode(&self, input: EncoderInput<'_>) -> Result<EncoderStates>;

    /// Every decoder layer's cross-attention keys and values of each input of `states`.
    fn cross_kv(&self, states: &EncoderStates) -> Result<Vec<Arc<CrossKv>>>;

    /// Logits of the rows `logits` selects, `caches[i]` belonging to sequence `i`.
    fn decode(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut Seq2SeqCache],
        logits: Logits,
    ) -> Result<Tensor>;

    /// An empty decoder cache for one sequence over `cross`, with room for `capacity`
    /// positions (it grows beyond).
    fn new_cache(&self, cross: Arc<CrossKv>, capacity: usize) -> Result<Seq2SeqCache>;

    /// Positions the encoder can read (`max_position_embeddings`, Whisper's 1500 frames);
    /// `None` when only memory bounds it (T5's relative positions).
    fn max_source_positions(&self) -> Option<usize>;

    /// Positions the decoder can write; `None` when only memory bounds it.
    fn max_target_positions(&self) -> Option<usize>;

    /// Rows of the output projection.
    fn vocab_size(&self) -> usize;

    /// The decoder's token-embedding matrix `[vocab, hidden]`, as loaded (the guard reads its
    /// rows).
    fn input_embeddings(&self) -> &Embedding;
}

/// Checks what a decoder needs of its batch: one cache per sequence, positions continuing
/// from the cache, and no position past `max_target_positions`.
pub(crate) fn check_decoder_batch(
    batch: &RaggedBatch,
    caches: &[&mut Seq2SeqCache],
    max_target_positions: Option<usize>,
) -> Result<()> {
    let cached: Vec<usize> = caches.iter().map(|c| c.len()).collect();
    super::check_cached_positions(batch, &cached, max_target_positions)
}

/// Each sequence's cross-attention keys and values of one decoder layer, in batch order.
pub(crate) fn cross_layer(caches: &[&mut Seq2SeqCache], layer: usize) -> Vec<(Tensor, Tensor)> {
    caches
        .iter()
        .map(|cache| cache.cross.layer(layer).clone())
        .collect()
}

/// A loaded encoder-decoder, built by its registry row.
pub struct Seq2SeqModel {
    resolved: Resolved,
    inner: Box<dyn Seq2SeqForward>,
}

impl std::fmt::Debug for Seq2SeqModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seq2SeqModel")
            .field("class_name", &self.resolved.class_name)
            .finish()
    }
}

impl Seq2SeqModel {
    /// Builds the class `resolved` names (an encoder-decoder row of the registry).
    pub fn load(resolved: Resolved, config: &CommonConfig, weights: &Weights) -> Result<Self> {
        let registry::Constructor::EncoderDecoder { generation, .. } =
            resolved.architecture.constructor
        else {
            return Err(Error::TaskMismatch {
                model: resolved.class_name.into(),
                task: "the encoder-decoder pipelines".into(),
                reason: format!("it is {}", resolved.architecture.kind.describe()),
            });
        };
        Ok(Seq2SeqModel {
            resolved,
            inner: generation(weights, config)?,
        })
    }

    /// transformers' class name, e.g. `T5ForConditionalGeneration`.
    pub fn class_name(&self) -> &str {
        self.resolved.class_name
    }

    /// The registry row.
    pub fn architecture(&self) -> &'static Architecture {
        self.resolved.architecture
    }

    /// What config.json resolved to.
    pub fn resolved(&self) -> Resolved {
        self.resolved
    }

    /// See [`Seq2SeqForward::encode`]; the inputs' cross-attention keys and values with it.
    pub fn encode(&self, input: EncoderInput<'_>) -> Result<(EncoderStates, Vec<Arc<CrossKv>>)> {
        crate::layers::in_thread_pool(|| {
            let states = self.inner.encode(input)?;
            let cross = self.inner.cross_kv(&states)?;
            Ok((states, cross))
        })
    }

    /// See [`Seq2SeqForward::decode`].
    pub fn decode(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut Seq2SeqCache],
        logits: Logits,
    ) -> Result<Tensor> {
        crate::layers::in_thread_pool(|| self.inner.decode(batch, caches, logits))
    }

    /// See [`Seq2SeqForward::new_cache`].
    pub fn new_cache(&self, cross: Arc<CrossKv>, capacity: usize) -> Result<Seq2SeqCache> {
        self.inner.new_cache(cross, capacity)
    }

    /// See [`Seq2SeqForward::max_source_positions`].
    pub fn max_source_positions(&self) -> Option<usize> {
        self.inner.max_source_positions()
    }

    /// See [`Seq2SeqForward::max_target_positions`].
    pub fn max_target_positions(&self) -> Option<usize> {
        self.inner.max_target_positions()
    }

    /// See [`Seq2SeqForward::vocab_size`].
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    /// See [`Seq2SeqForward::input_embeddings`].
    pub fn input_embeddings(&self) -> &Embedding {
        self.inner.input_embeddings()
    }
}

//! BART (Lewis et al. 2019, "BART: Denoising Sequence-to-Sequence Pre-training for Natural
//! Language Generation, Translation, and Comprehension").
//!
//! Mirrors transformers `models/bart/modeling_bart.py` (v5.24): token embeddings (scaled by
//! √d_model when `scale_embedding`) plus learned positions offset by 2 → `layernorm_embedding`
//! → post-norm encoder layers (self-attention, residual, LayerNorm, feed-forward, residual,
//! LayerNorm); the decoder the same with causal self-attention over its cache and a
//! cross-attention block over the encoder output between them → the LM head tied to the
//! shared embeddings, plus `final_logits_bias`. `BartForSequenceClassification` runs encoder
//! and decoder over the same text and classifies the decoder state of its last `</s>`.
//!
//! Marian (`marian.rs`) is this model with sinusoidal positions and no embedding LayerNorm;
//! Whisper (`whisper.rs`) reuses its attention blocks, as transformers copies them.

use super::encoder_decoder::{check_decoder_batch, cross_layer, EncoderInput, EncoderStates};
use super::heads::{EncoderHead, WithHead};
use super::{EncoderForward, EncoderOutput, Head, Logits, Seq2SeqForward};
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::{
    add_in_place, cross_attention, layer_norm, packed_self_attention, ragged_causal_attention,
    Activation, CrossKv, Embedding, KvCache, LayerNorm, Linear, Seq2SeqCache,
};
use candle_core::Tensor;
use candle_nn::Module;
use serde::Deserialize;
use std::sync::Arc;

/// Where a BART-family checkpoint keeps the encoder and decoder (`model.encoder…`).
pub const BASE_MODEL_PREFIX: &str = "model";

/// BART's positions start at row 2 of the table (fairseq's padding offset).
const POSITION_OFFSET: usize = 2;

fn default_vocab_size() -> usize {
    50265
}
fn default_d_model() -> usize {
    1024
}
fn default_layers() -> usize {
    12
}
fn default_heads() -> usize {
    16
}
fn default_ffn_dim() -> usize {
    4096
}
fn default_max_position_embeddings() -> usize {
    1024
}
fn default_activation() -> String {
    "gelu".into()
}

#[derive(Debug, Clone, Deserialize)]
pub(crate) struct RawConfig {
    #[serde(default = "default_vocab_size")]
    pub(crate) vocab_size: usize,
    #[serde(default = "default_d_model")]
    pub(crate) d_model: usize,
    #[serde(default = "default_layers")]
    pub(crate) encoder_layers: usize,
    #[serde(default = "default_layers")]
    pub(crate) decoder_layers: usize,
    #[serde(default = "default_heads")]
    pub(crate) encoder_attention_heads: usize,
    #[serde(default = "default_heads")]
    pub(crate) decoder_attention_heads: usize,
    #[serde(default = "default_ffn_dim")]
    pub(crate) encoder_ffn_dim: usize,
    #[serde(default = "default_ffn_dim")]
    pub(crate) decoder_ffn_dim: usize,
    #[serde(default = "default_max_position_embeddings")]
    pub(crate) max_position_embeddings: usize,
    #[serde(default = "default_activation")]
    pub(crate) activation_function: String,
    #[serde(default)]
    pub(crate) scale_embedding: bool,
    #[serde(default)]
    pub(crate) eos_token_id: Option<u32>,
}

/// How a BART-family model turns positions into vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Positions {
    /// A learned table, read from row `position + 2` (BART).
    LearnedOffset2,
    /// Fixed sinusoids, sines in the first half and cosines in the second (Marian).
    Sinusoidal,
}

/// The hyper-parameters of the BART family (defaults: `BartConfig`, bart-large).
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    /// Rows of the decoder's embeddings and LM head (Marian's `decoder_vocab_size`).
    pub decoder_vocab_size: usize,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub max_position_embeddings: usize,
    pub activation_function: Activation,
    /// Token embeddings are multiplied by √d_model.
    pub scale_embedding: bool,
    /// BART: `layernorm_embedding` after the sum of token and position embeddings.
    pub layernorm_embedding: bool,
    pub(crate) positions: Positions,
    /// Encoder and decoder read one embedding table (`shared`).
    pub shared_embeddings: bool,
    pub eos_token_id: Option<u32>,
}

impl Config {
    /// Parses BART's config.json.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let raw: RawConfig = common.parse_as()?;
        Config::from_raw(raw, common, Positions::LearnedOffset2, true)
    }

    /// A BART-family config from its common fields.
    pub(crate) fn from_raw(
        raw: RawConfig,
        common: &CommonConfig,
        positions: Positions,
        layernorm_embedding: bool,
    ) -> Result<Self> {
        for (field, heads) in [
            ("encoder_attention_heads", raw.encoder_attention_heads),
            ("decoder_attention_heads", raw.decoder_attention_heads),
        ] {
            if heads == 0 || !raw.d_model.is_multiple_of(heads) {
                return Err(Error::BadConfig {
                    file: common.path.clone(),
                    field: field.into(),
                    reason: format!("{heads} does not divide d_model ({})", raw.d_model),
                });
            }
        }
        Ok(Config {
            vocab_size: raw.vocab_size,
            decoder_vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            encoder_layers: raw.encoder_layers,
            decoder_layers: raw.decoder_layers,
            encoder_attention_heads: raw.encoder_attention_heads,
            decoder_attention_heads: raw.decoder_attention_heads,
            encoder_ffn_dim: raw.encoder_ffn_dim,
            decoder_ffn_dim: raw.decoder_ffn_dim,
            max_position_embeddings: raw.max_position_embeddings,
            activation_function: Activation::parse(
                &raw.activation_function,
                &common.path,
                "activation_function",
            )?,
            scale_embedding: raw.scale_embedding,
            layernorm_embedding,
            positions,
            shared_embeddings: true,
            eos_token_id: raw.eos_token_id,
        })
    }

    fn embed_scale(&self) -> f64 {
        if self.scale_embedding {
            (self.d_model as f64).sqrt()
        } else {
            1.0
        }
    }
}

/// `nn.LayerNorm`'s default epsilon, which every BART-family LayerNorm uses.
const LAYER_NORM_EPS: f64 = 1e-5;

/// Multi-head self-attention of the BART family (`BartAttention` without key/value states):
/// q, k and v as one product, queries scaled by `head_dim^-0.5`, then `out_proj`.
#[derive(Debug, Clone)]
pub(crate) struct SelfAttention {
    qkv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl SelfAttention {
    /// `q_proj`, `k_proj`, `v_proj` and `out_proj` under `w`; Whisper's `k_proj` has no bias.
    pub(crate) fn load(w: &Weights, dim: usize, heads: usize) -> Result<Self> {
        Ok(SelfAttention {
            qkv: Linear::concat(&[
                Linear::load(&w.pp("q_proj"), dim, dim)?,
                load_maybe_biased(&w.pp("k_proj"), dim, dim)?,
                Linear::load(&w.pp("v_proj"), dim, dim)?,
            ])?,
            out_proj: Linear::load(&w.pp("out_proj"), dim, dim)?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// Bidirectional attention of each packed sequence over itself (encoders).
    pub(crate) fn encode(&self, x: &Tensor, cu_seqlens: &[u32]) -> Result<Tensor> {
        let context = packed_self_attention(
            &self.qkv.forward(x)?,
            self.heads,
            self.head_dim,
            cu_seqlens,
            None,
            &crate::layers::Dropout::new(0.0),
        )?;
        self.out_proj.forward(&context)
    }

    /// Causal attention of each sequence's new tokens over its cache (decoders).
    pub(crate) fn decode(
        &self,
        x: &Tensor,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let e = self.heads * self.head_dim;
        let qkv = self.qkv.forward(x)?; // [n, 3 · e]
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i * e, e)?
                .reshape((n, self.heads, self.head_dim))?)
        };
        let out = ragged_causal_attention(
            &split(0)?,
            &split(1)?,
            &split(2)?,
            &batch.cu_seqlens,
            caches,
            layer,
            None,
            (self.head_dim as f64).powf(-0.5),
            None,
        )?;
        self.out_proj.forward(&out)
    }
}

/// Cross-attention of the BART family (`BartAttention` with key/value states): queries from
/// the decoder, keys and values from the encoder output, computed once per input.
#[derive(Debug, Clone)]
pub(crate) struct CrossAttention {
    q_proj: Linear,
    kv: Linear,
    out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl CrossAttention {
    pub(crate) fn load(w: &Weights, dim: usize, heads: usize) -> Result<Self> {
        Ok(CrossAttention {
            q_proj: Linear::load(&w.pp("q_proj"), dim, dim)?,
            kv: Linear::concat(&[
                load_maybe_biased(&w.pp("k_proj"), dim, dim)?,
                Linear::load(&w.pp("v_proj"), dim, dim)?,
            ])?,
            out_proj: Linear::load(&w.pp("out_proj"), dim, dim)?,
            heads,
            head_dim: dim / heads,
        })
    }

    /// Keys and values of every input of `states`, `[heads, len, head_dim]` each.
    pub(crate) fn keys_values(&self, states: &EncoderStates) -> Result<Vec<(Tensor, Tensor)>> {
        let e = self.heads * self.head_dim;
        let kv = self.kv.forward(&states.last_hidden_state)?; // [rows, 2 · e]
        (0..states.num_seqs())
            .map(|i| {
                let (start, end) = (
                    states.cu_seqlens[i] as usize,
                    states.cu_seqlens[i + 1] as usize,
                );
                let rows = kv.narrow(0, start, end - start)?;
                let heads_first = |t: Tensor| -> Result<Tensor> {
                    Ok(t.reshape((end - start, self.heads, self.head_dim))?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                Ok((
                    heads_first(rows.narrow(1, 0, e)?)?,
                    heads_first(rows.narrow(1, e, e)?)?,
                ))
            })
            .collect()
    }

    /// The new tokens of each sequence over its input's keys and values.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        batch: &RaggedBatch,
        kv: &[(Tensor, Tensor)],
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let q = self
            .q_proj
            .forward(x)?
            .reshape((n, self.heads, self.head_dim))?;
        let out = cross_attention(&q, &batch.cu_seqlens, kv, (self.head_dim as f64).powf(-0.5))?;
        self.out_proj.forward(&out)
    }
}

/// A projection whose bias may be absent (Whisper's `k_proj`).
fn load_maybe_biased(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Linear> {
    if w.contains("bias") {
        Linear::load(w, in_dim, out_dim)
    } else {
        Linear::load_no_bias(w, in_dim, out_dim)
    }
}

/// The feed-forward block: `fc2(act(fc1(x)))`.
#[derive(Debug, Clone)]
pub(crate) struct FeedForward {
    fc1: Linear,
    fc2: Linear,
    activation: Activation,
}

impl FeedForward {
    pub(crate) fn load(
        w: &Weights,
        dim: usize,
        ffn: usize,
        activation: Activation,
    ) -> Result<Self> {
        Ok(FeedForward {
            fc1: Linear::load(&w.pp("fc1"), dim, ffn)?,
            fc2: Linear::load(&w.pp("fc2"), ffn, dim)?,
            activation,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.activation.forward_owned(self.fc1.forward(x)?)?;
        self.fc2.forward(&h)
    }
}

/// `BartEncoderLayer`: post-norm self-attention and feed-forward blocks.
#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: SelfAttention,
    self_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl EncoderLayer {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let d = cfg.d_model;
        Ok(EncoderLayer {
            self_attn: SelfAttention::load(&w.pp("self_attn"), d, cfg.encoder_attention_heads)?,
            self_attn_layer_norm: layer_norm(&w.pp("self_attn_layer_norm"), d, LAYER_NORM_EPS)?,
            ffn: FeedForward::load(w, d, cfg.encoder_ffn_dim, cfg.activation_function)?,
            final_layer_norm: layer_norm(&w.pp("final_layer_norm"), d, LAYER_NORM_EPS)?,
        })
    }

    fn forward(&self, x: &Tensor, cu_seqlens: &[u32]) -> Result<Tensor> {
        let attended = self.self_attn.encode(x, cu_seqlens)?;
        let x = self
            .self_attn_layer_norm
            .forward(&add_in_place(attended, x)?)?;
        let h = self.ffn.forward(&x)?;
        Ok(self.final_layer_norm.forward(&add_in_place(h, &x)?)?)
    }
}

/// `BartDecoderLayer`: post-norm causal self-attention, cross-attention and feed-forward.
#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn: SelfAttention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: CrossAttention,
    encoder_attn_layer_norm: LayerNorm,
    ffn: FeedForward,
    final_layer_norm: LayerNorm,
}

impl DecoderLayer {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (d, heads) = (cfg.d_model, cfg.decoder_attention_heads);
        Ok(DecoderLayer {
            self_attn: SelfAttention::load(&w.pp("self_attn"), d, heads)?,
            self_attn_layer_norm: layer_norm(&w.pp("self_attn_layer_norm"), d, LAYER_NORM_EPS)?,
            encoder_attn: CrossAttention::load(&w.pp("encoder_attn"), d, heads)?,
            encoder_attn_layer_norm: layer_norm(
                &w.pp("encoder_attn_layer_norm"),
                d,
                LAYER_NORM_EPS,
            )?,
            ffn: FeedForward::load(w, d, cfg.decoder_ffn_dim, cfg.activation_function)?,
            final_layer_norm: layer_norm(&w.pp("final_layer_norm"), d, LAYER_NORM_EPS)?,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        batch: &RaggedBatch,
        caches: &mut [&mut Seq2SeqCache],
        layer: usize,
    ) -> Result<Tensor> {
        let cross = cross_layer(caches, layer);
        let attended = {
            let mut own: Vec<&mut KvCache> = caches.iter_mut().map(|c| &mut c.self_attn).collect();
            self.self_attn.decode(x, batch, &mut own, layer)?
        };
        let x = self
            .self_attn_layer_norm
            .forward(&add_in_place(attended, x)?)?;
        let crossed = self.encoder_attn.forward(&x, batch, &cross)?;
        let x = self
            .encoder_attn_layer_norm
            .forward(&add_in_place(crossed, &x)?)?;
        let h = self.ffn.forward(&x)?;
        Ok(self.final_layer_norm.forward(&add_in_place(h, &x)?)?)
    }
}

/// Token embeddings (scaled), positions and the optional embedding LayerNorm of one side.
#[derive(Debug, Clone)]
struct Embeddings {
    tokens: Embedding,
    scale: f64,
    positions: PositionTable,
    layernorm: Option<LayerNorm>,
}

/// The rows positions read: a learned table or sinusoids computed at load.
#[derive(Debug, Clone)]
enum PositionTable {
    Learned { table: Embedding, offset: usize },
    Fixed(Embedding),
}

impl Embeddings {
    /// `[n]` ids and positions → `[n, d_model]`.
    fn forward(&self, ids: &[u32], positions: &[u32]) -> Result<Tensor> {
        let device = self.tokens.device();
        let n = ids.len();
        let x = self.tokens.forward(&Tensor::from_slice(ids, n, device)?)?;
        let x = if self.scale != 1.0 {
            (x * self.scale)?
        } else {
            x
        };
        let (table, offset) = match &self.positions {
            PositionTable::Learned { table, offset } => (table, *offset as u32),
            PositionTable::Fixed(table) => (table, 0),
        };
        let rows: Vec<u32> = positions.iter().map(|p| p + offset).collect();
        let x = (x + table.forward(&Tensor::from_slice(&rows, n, device)?)?)?;
        match &self.layernorm {
            Some(norm) => Ok(norm.forward(&x)?),
            None => Ok(x),
        }
    }

    /// Positions the table can index.
    fn max_positions(&self) -> usize {
        match &self.positions {
            PositionTable::Learned { table, offset } => table.dims().0.saturating_sub(*offset),
            PositionTable::Fixed(table) => table.dims().0,
        }
    }
}

/// The sinusoidal table of Marian (transformers' `MarianSinusoidalPositionalEmbedding`):
/// position `p`, column `j < ⌈d/2⌉` is `sin(p / 10000^(2j/d))`, column `⌈d/2⌉ + j` is
/// `cos(p / 10000^(2j/d))`, computed in f64.
pub(crate) fn sinusoidal_table(rows: usize, dim: usize) -> Vec<f32> {
    let sentinel = dim.div_ceil(2);
    let mut table = vec![0f32; rows * dim];
    for p in 0..rows {
        let row = &mut table[p * dim..(p + 1) * dim];
        for (c, value) in row.iter_mut().enumerate() {
            let (j, sine) = if c < sentinel {
                (2 * c, true)
            } else {
                (2 * (c - sentinel) + 1, false)
            };
            let angle = p as f64 / 10000f64.powf((2 * (j / 2)) as f64 / dim as f64);
            *value = if sine { angle.sin() } else { angle.cos() } as f32;
        }
    }
    table
}

/// `BartForConditionalGeneration` (and `MarianMTModel`): encoder, decoder and LM head.
pub struct BartForConditionalGeneration {
    encoder_embeddings: Embeddings,
    encoder_layers: Vec<EncoderLayer>,
    decoder_embeddings: Embeddings,
    decoder_layers: Vec<DecoderLayer>,
    lm_head: Linear,
    final_logits_bias: Option<Tensor>,
    cfg: Config,
}

impl BartForConditionalGeneration {
    /// Loads `model.encoder…`, `model.decoder…`, `lm_head` (else the tied decoder embeddings)
    /// and `final_logits_bias` (zeros when absent, as transformers initialises it), or the
    /// unprefixed names of a `BartModel` checkpoint.
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let m = if w.contains("model.encoder.layers.0.fc1.weight") {
            w.pp(BASE_MODEL_PREFIX)
        } else {
            w.clone()
        };
        let d = cfg.d_model;
        let shared = if cfg.shared_embeddings && m.contains("shared.weight") {
            Some(Embedding::load(&m.pp("shared"), cfg.vocab_size, d)?)
        } else {
            None
        };
        let side = |side: &str, vocab: usize| -> Result<Embeddings> {
            let s = m.pp(side);
            let tokens = match (&shared, s.contains("embed_tokens.weight")) {
                (_, true) => Embedding::load(&s.pp("embed_tokens"), vocab, d)?,
                (Some(shared), false) => shared.clone(),
                (None, false) => Embedding::load(&s.pp("embed_tokens"), vocab, d)?,
            };
            let positions = match cfg.positions {
                Positions::LearnedOffset2 => PositionTable::Learned {
                    table: Embedding::load(
                        &s.pp("embed_positions"),
                        cfg.max_position_embeddings + POSITION_OFFSET,
                        d,
                    )?,
                    offset: POSITION_OFFSET,
                },
                Positions::Sinusoidal => {
                    let rows = cfg.max_position_embeddings;
                    let table =
                        Tensor::from_vec(sinusoidal_table(rows, d), (rows, d), tokens.device())?;
                    PositionTable::Fixed(Embedding::from_table(table))
                }
            };
            let layernorm = if cfg.layernorm_embedding {
                Some(layer_norm(&s.pp("layernorm_embedding"), d, LAYER_NORM_EPS)?)
            } else {
                None
            };
            Ok(Embeddings {
                tokens,
                scale: cfg.embed_scale(),
                positions,
                layernorm,
            })
        };
        let encoder_embeddings = side("encoder", cfg.vocab_size)?;
        let decoder_embeddings = side("decoder", cfg.decoder_vocab_size)?;
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|i| EncoderLayer::load(&m.pp(format!("encoder.layers.{i}")), cfg))
            .collect::<Result<_>>()?;
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|i| DecoderLayer::load(&m.pp(format!("decoder.layers.{i}")), cfg))
            .collect::<Result<_>>()?;
        let lm_head = if w.contains("lm_head.weight") {
            Linear::load_no_bias(&w.pp("lm_head").for_output(), d, cfg.decoder_vocab_size)?
        } else {
            decoder_embeddings.tokens.tied_projection(None)?
        };
        let final_logits_bias = if w.contains("final_logits_bias") {
            Some(
                w.get([1, cfg.decoder_vocab_size], "final_logits_bias")?
                    .reshape(cfg.decoder_vocab_size)?,
            )
        } else {
            None
        };
        Ok(BartForConditionalGeneration {
            encoder_embeddings,
            encoder_layers,
            decoder_embeddings,
            decoder_layers,
            lm_head,
            final_logits_bias,
            cfg: cfg.clone(),
        })
    }

    /// The encoder over packed token ids: `[total_tokens, d_model]`.
    fn encoder(&self, batch: &RaggedBatch) -> Result<Tensor> {
        let x = self
            .encoder_embeddings
            .forward(&batch.input_ids, &batch.positions)?;
        self.encoder_layers
            .iter()
            .try_fold(x, |x, layer| layer.forward(&x, &batch.cu_seqlens))
    }

    /// The decoder's last hidden states `[total_tokens, d_model]`.
    fn decoder(&self, batch: &RaggedBatch, caches: &mut [&mut Seq2SeqCache]) -> Result<Tensor> {
        let x = self
            .decoder_embeddings
            .forward(&batch.input_ids, &batch.positions)?;
        self.decoder_layers
            .iter()
            .enumerate()
            .try_fold(x, |x, (i, layer)| layer.forward(&x, batch, caches, i))
    }
}

impl Seq2SeqForward for BartForConditionalGeneration {
    fn encode(&self, input: EncoderInput<'_>) -> Result<EncoderStates> {
        let EncoderInput::Tokens(batch) = input else {
            return Err(Error::Unsupported {
                what: "audio features as the input of a text model".into(),
            });
        };
        check_source_positions(batch, self.encoder_embeddings.max_positions())?;
        Ok(EncoderStates {
            last_hidden_state: self.encoder(batch)?,
            cu_seqlens: batch.cu_seqlens.clone(),
        })
    }

    fn cross_kv(&self, states: &EncoderStates) -> Result<Vec<Arc<CrossKv>>> {
        cross_kv_of_layers(self.decoder_layers.iter().map(|l| &l.encoder_attn), states)
    }

    fn decode(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut Seq2SeqCache],
        logits: Logits,
    ) -> Result<Tensor> {
        check_decoder_batch(batch, caches, self.max_target_positions())?;
        let x = self.decoder(batch, caches)?;
        let x = super::logit_rows(&x, batch, logits)?;
        let y = self.lm_head.forward(&x)?;
        Ok(match &self.final_logits_bias {
            Some(bias) => add_in_place(y, bias)?,
            None => y,
        })
    }

    fn new_cache(&self, cross: Arc<CrossKv>, capacity: usize) -> Result<Seq2SeqCache> {
        let table = &self.decoder_embeddings.tokens;
        let heads = self.cfg.decoder_attention_heads;
        Ok(Seq2SeqCache {
            self_attn: KvCache::new(
                self.cfg.decoder_layers,
                heads,
                self.cfg.d_model / heads,
                capacity,
                candle_core::DType::F32, // activations are f32 whatever the weights
                table.device(),
            )?,
            cross,
        })
    }

    fn max_source_positions(&self) -> Option<usize> {
        Some(self.encoder_embeddings.max_positions())
    }

    fn max_target_positions(&self) -> Option<usize> {
        Some(self.decoder_embeddings.max_positions())
    }

    /// The decoder's vocabulary (Marian's `decoder_vocab_size` when it differs).
    #[allow(clippy::misnamed_getters)]
    fn vocab_size(&self) -> usize {
        self.cfg.decoder_vocab_size
    }

    fn input_embeddings(&self) -> &Embedding {
        &self.decoder_embeddings.tokens
    }
}

/// Refuses a source sequence longer than the encoder's position table.
pub(crate) fn check_source_positions(batch: &RaggedBatch, max: usize) -> Result<()> {
    for i in 0..batch.num_seqs() {
        let len = batch.seq_range(i).len();
        if len > max {
            return Err(Error::InputTooLong {
                index: i,
                tokens: Some(len),
                max,
            });
        }
    }
    Ok(())
}

/// Every decoder layer's cross-attention keys and values, per input.
pub(crate) fn cross_kv_of_layers<'a>(
    layers: impl Iterator<Item = &'a CrossAttention>,
    states: &EncoderStates,
) -> Result<Vec<Arc<CrossKv>>> {
    let mut per_input: Vec<Vec<(Tensor, Tensor)>> = vec![Vec::new(); states.num_seqs()];
    for layer in layers {
        for (input, kv) in per_input.iter_mut().zip(layer.keys_values(states)?) {
            input.push(kv);
        }
    }
    per_input
        .into_iter()
        .map(|layers| Ok(Arc::new(CrossKv::new(layers)?)))
        .collect()
}

/// The base of `BartForSequenceClassification`: encoder and decoder over the same text (the
/// decoder's input shifted right behind `decoder_start_token_id`, as transformers'
/// `shift_tokens_right`). `last_hidden_state` is the decoder's; the pooled output is its state
/// at each text's last `</s>`, which `classification_head` reads.
struct SequenceClassifierBase {
    model: BartForConditionalGeneration,
    decoder_start_token_id: u32,
    eos_token_id: u32,
}

impl EncoderForward for SequenceClassifierBase {
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        check_source_positions(batch, self.model.encoder_embeddings.max_positions())?;
        let states = EncoderStates {
            last_hidden_state: self.model.encoder(batch)?,
            cu_seqlens: batch.cu_seqlens.clone(),
        };
        let cross = self.model.cross_kv(&states)?;
        let mut shifted = RaggedBatch::from_encodings([]);
        let mut last_eos = Vec::with_capacity(batch.num_seqs());
        for i in 0..batch.num_seqs() {
            let range = batch.seq_range(i);
            let ids = &batch.input_ids[range.clone()];
            let mut input = Vec::with_capacity(ids.len());
            input.push(self.decoder_start_token_id);
            input.extend_from_slice(&ids[..ids.len().saturating_sub(1)]);
            shifted.push_from(&input, 0);
            let eos = ids
                .iter()
                .rposition(|&id| id == self.eos_token_id)
                .ok_or_else(|| Error::BadInput {
                    index: i,
                    reason: format!(
                        "BartForSequenceClassification classifies the state of the text's last </s> (id {}), and it has none",
                        self.eos_token_id
                    ),
                })?;
            last_eos.push((range.start + eos) as u32);
        }
        let mut caches = cross
            .into_iter()
            .zip(batch.seqlens())
            .map(|(cross, len)| self.model.new_cache(cross, len as usize))
            .collect::<Result<Vec<_>>>()?;
        let mut refs: Vec<&mut Seq2SeqCache> = caches.iter_mut().collect();
        let hidden = self.model.decoder(&shifted, &mut refs)?;
        let rows = Tensor::new(last_eos, hidden.device())?;
        Ok(EncoderOutput {
            pooler_output: Some(hidden.index_select(&rows, 0)?),
            last_hidden_state: hidden,
        })
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.model.encoder_embeddings.tokens
    }

    fn max_position_embeddings(&self) -> usize {
        self.model.encoder_embeddings.max_positions()
    }
}

/// `decoder_start_token_id` of config.json (BART's default: `</s>`, 2).
fn decoder_start_token_id(common: &CommonConfig) -> Result<u32> {
    #[derive(Deserialize)]
    struct Start {
        #[serde(default)]
        decoder_start_token_id: Option<u32>,
    }
    let start: Start = common.parse_as()?;
    Ok(start.decoder_start_token_id.unwrap_or(2))
}

/// Builds `BartForConditionalGeneration` from config.json and its checkpoint (the registry's
/// constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn Seq2SeqForward>> {
    Ok(Box::new(BartForConditionalGeneration::load(
        w,
        &Config::from_common(common)?,
    )?))
}

/// Builds `BartForSequenceClassification` (an NLI head such as bart-large-mnli's), run as an
/// encoder is.
pub fn load_classifier(
    w: &Weights,
    common: &CommonConfig,
    head: Head,
) -> Result<Box<dyn EncoderForward>> {
    if head != Head::SequenceClassification {
        return Err(Error::unsupported_head("BART", head.name()));
    }
    let cfg = Config::from_common(common)?;
    let d = cfg.d_model;
    let labels = common.id2label.len();
    let base = SequenceClassifierBase {
        model: BartForConditionalGeneration::load(w, &cfg)?,
        decoder_start_token_id: decoder_start_token_id(common)?,
        eos_token_id: cfg.eos_token_id.unwrap_or(2),
    };
    let h = w.pp("classification_head");
    Ok(Box::new(WithHead {
        base,
        head: EncoderHead::PooledDense {
            dense: Linear::load(&h.pp("dense"), d, d)?,
            activation: Activation::Tanh,
            out_proj: Linear::load(&h.pp("out_proj"), d, labels)?,
        },
    }))
}

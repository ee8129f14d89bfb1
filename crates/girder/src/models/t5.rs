//! T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
//! Text-to-Text Transformer"), and its v1.1 / FLAN variants by config.
//!
//! Mirrors transformers `models/t5/modeling_t5.py` (v5.24): shared token embeddings (not
//! scaled, no position embeddings) → pre-norm blocks with T5's RMS-style LayerNorm (no mean,
//! no bias); self-attention without `1/√d` scaling, whose scores get a learned bias per head
//! and *relative position bucket* (computed by the first block, shared by the others:
//! bidirectional in the encoder, looking back only in the decoder); the decoder's blocks add
//! cross-attention (no position bias) before the feed-forward block, which is `wo(relu(wi x))`
//! in T5 and `wo(gelu_tanh(wi_0 x) · wi_1 x)` (`feed_forward_proj: gated-gelu`) in v1.1 →
//! final LayerNorm → `lm_head` (the shared embeddings unless the checkpoint has its own), the
//! decoder output first scaled by `d_model^-0.5` when `tie_word_embeddings` is not false.

use super::bart::check_source_positions;
use super::encoder_decoder::{check_decoder_batch, cross_layer, EncoderInput, EncoderStates};
use super::{Logits, Seq2SeqForward};
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::{
    add_in_place, cross_attention, ragged_causal_attention, varlen_attention, Activation, CrossKv,
    DistanceBias, Dropout, Embedding, KvCache, Linear, RmsNorm, Seq2SeqCache,
};
use candle_core::Tensor;
use serde::Deserialize;
use std::sync::Arc;

fn default_vocab_size() -> usize {
    32128
}
fn default_d_model() -> usize {
    512
}
fn default_d_kv() -> usize {
    64
}
fn default_d_ff() -> usize {
    2048
}
fn default_num_layers() -> usize {
    6
}
fn default_num_heads() -> usize {
    8
}
fn default_buckets() -> usize {
    32
}
fn default_max_distance() -> usize {
    128
}
fn default_eps() -> f64 {
    1e-6
}
fn default_feed_forward_proj() -> String {
    "relu".into()
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "default_vocab_size")]
    vocab_size: usize,
    #[serde(default = "default_d_model")]
    d_model: usize,
    #[serde(default = "default_d_kv")]
    d_kv: usize,
    #[serde(default = "default_d_ff")]
    d_ff: usize,
    #[serde(default = "default_num_layers")]
    num_layers: usize,
    #[serde(default)]
    num_decoder_layers: Option<usize>,
    #[serde(default = "default_num_heads")]
    num_heads: usize,
    #[serde(default = "default_buckets")]
    relative_attention_num_buckets: usize,
    #[serde(default = "default_max_distance")]
    relative_attention_max_distance: usize,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_feed_forward_proj")]
    feed_forward_proj: String,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    scale_decoder_outputs: Option<bool>,
}

/// T5's hyper-parameters (defaults: `T5Config`, t5-small).
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub d_model: usize,
    /// Width of each head (q, k and v are `num_heads · d_kv` wide, which need not be
    /// `d_model`).
    pub d_kv: usize,
    pub d_ff: usize,
    pub num_layers: usize,
    pub num_decoder_layers: usize,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    pub relative_attention_max_distance: usize,
    pub layer_norm_epsilon: f64,
    /// The feed-forward activation (`relu` in T5, `gelu_new` in v1.1's `gated-gelu`).
    pub dense_act_fn: Activation,
    /// `wi_0` and `wi_1` (a gated feed-forward block) instead of `wi`.
    pub is_gated_act: bool,
    /// The decoder output is scaled by `d_model^-0.5` before the LM head.
    pub scale_decoder_outputs: bool,
}

impl Config {
    /// Parses config.json, `feed_forward_proj` as `T5Config.__post_init__` does.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let raw: RawConfig = common.parse_as()?;
        let bad = |field: &str, reason: String| Error::BadConfig {
            file: common.path.clone(),
            field: field.into(),
            reason,
        };
        let parts: Vec<&str> = raw.feed_forward_proj.split('-').collect();
        let is_gated_act = parts[0] == "gated";
        if parts.len() > 2 || (parts.len() == 2 && !is_gated_act) {
            return Err(bad(
                "feed_forward_proj",
                format!(
                    "`{}` is neither `gated-{{ACT}}` nor `{{ACT}}`",
                    raw.feed_forward_proj
                ),
            ));
        }
        let act = if raw.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            parts[parts.len() - 1]
        };
        if raw.num_heads == 0 || raw.d_kv == 0 {
            return Err(bad(
                "num_heads",
                "num_heads and d_kv must be positive".into(),
            ));
        }
        if raw.relative_attention_num_buckets < 4 || raw.relative_attention_max_distance < 2 {
            return Err(bad(
                "relative_attention_num_buckets",
                "needs at least 4 buckets and a max distance of at least 2".into(),
            ));
        }
        Ok(Config {
            vocab_size: raw.vocab_size,
            d_model: raw.d_model,
            d_kv: raw.d_kv,
            d_ff: raw.d_ff,
            num_layers: raw.num_layers,
            num_decoder_layers: raw.num_decoder_layers.unwrap_or(raw.num_layers),
            num_heads: raw.num_heads,
            relative_attention_num_buckets: raw.relative_attention_num_buckets,
            relative_attention_max_distance: raw.relative_attention_max_distance,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            dense_act_fn: Activation::parse(act, &common.path, "feed_forward_proj")?,
            is_gated_act,
            scale_decoder_outputs: raw
                .scale_decoder_outputs
                .unwrap_or(raw.tie_word_embeddings != Some(false)),
        })
    }

    fn inner_dim(&self) -> usize {
        self.num_heads * self.d_kv
    }
}

/// transformers' `T5Attention._relative_position_bucket`: the bucket of a key at
/// `relative_position` (key minus query) from its query. Half the buckets (of each
/// direction, when bidirectional) are exact distances, the rest grow logarithmically up to
/// `max_distance`; the logarithm is taken in f32 and truncated, as torch does.
pub(crate) fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> usize {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0i64;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        -relative_position.min(0)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as usize;
    }
    let log_ratio = (distance as f32 / max_exact as f32).ln();
    let scale = (max_distance as f64 / max_exact as f64).ln() as f32;
    let large = max_exact + (log_ratio / scale * (num_buckets - max_exact) as f32) as i64;
    (bucket + large.min(num_buckets - 1)) as usize
}

/// `T5Attention` for self-attention: q, k, v and o without bias, scores unscaled.
#[derive(Debug, Clone)]
struct SelfAttention {
    qkv: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl SelfAttention {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        Ok(SelfAttention {
            qkv: Linear::concat(&[
                Linear::load_no_bias(&w.pp("q"), d, inner)?,
                Linear::load_no_bias(&w.pp("k"), d, inner)?,
                Linear::load_no_bias(&w.pp("v"), d, inner)?,
            ])?,
            o: Linear::load_no_bias(&w.pp("o"), inner, d)?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// q, k and v `[n, heads, d_kv]` of `x`.
    fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let n = x.dim(0)?;
        let inner = self.heads * self.d_kv;
        let qkv = self.qkv.forward(x)?;
        let part = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i * inner, inner)?
                .reshape((n, self.heads, self.d_kv))?)
        };
        Ok((part(0)?, part(1)?, part(2)?))
    }

    /// Bidirectional attention of each packed sequence, `bias` `[heads, m, m]`.
    fn encode(&self, x: &Tensor, cu_seqlens: &[u32], bias: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)?;
        let (q, k, v) = self.qkv(x)?;
        let context =
            varlen_attention(&q, &k, &v, cu_seqlens, 1.0, Some(bias), &Dropout::new(0.0))?;
        self.o
            .forward(&context.reshape((n, self.heads * self.d_kv))?)
    }

    /// Causal attention over each sequence's cache, `bias` by distance.
    fn decode(
        &self,
        x: &Tensor,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        layer: usize,
        bias: &DistanceBias,
    ) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x)?;
        let out = ragged_causal_attention(
            &q,
            &k,
            &v,
            &batch.cu_seqlens,
            caches,
            layer,
            None,
            1.0,
            Some(bias),
        )?;
        self.o.forward(&out)
    }
}

/// `T5Attention` for cross-attention (`EncDecAttention`): no position bias, unscaled.
#[derive(Debug, Clone)]
struct CrossAttention {
    q: Linear,
    kv: Linear,
    o: Linear,
    heads: usize,
    d_kv: usize,
}

impl CrossAttention {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (d, inner) = (cfg.d_model, cfg.inner_dim());
        Ok(CrossAttention {
            q: Linear::load_no_bias(&w.pp("q"), d, inner)?,
            kv: Linear::concat(&[
                Linear::load_no_bias(&w.pp("k"), d, inner)?,
                Linear::load_no_bias(&w.pp("v"), d, inner)?,
            ])?,
            o: Linear::load_no_bias(&w.pp("o"), inner, d)?,
            heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    fn keys_values(&self, states: &EncoderStates) -> Result<Vec<(Tensor, Tensor)>> {
        let inner = self.heads * self.d_kv;
        let kv = self.kv.forward(&states.last_hidden_state)?;
        (0..states.num_seqs())
            .map(|i| {
                let start = states.cu_seqlens[i] as usize;
                let len = states.cu_seqlens[i + 1] as usize - start;
                let rows = kv.narrow(0, start, len)?;
                let heads_first = |t: Tensor| -> Result<Tensor> {
                    Ok(t.reshape((len, self.heads, self.d_kv))?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                Ok((
                    heads_first(rows.narrow(1, 0, inner)?)?,
                    heads_first(rows.narrow(1, inner, inner)?)?,
                ))
            })
            .collect()
    }

    fn forward(&self, x: &Tensor, batch: &RaggedBatch, kv: &[(Tensor, Tensor)]) -> Result<Tensor> {
        let n = x.dim(0)?;
        let q = self.q.forward(x)?.reshape((n, self.heads, self.d_kv))?;
        let out = cross_attention(&q, &batch.cu_seqlens, kv, 1.0)?;
        self.o.forward(&out)
    }
}

/// `T5LayerFF`: `DenseReluDense` (or `T5DenseGatedActDense`).
#[derive(Debug, Clone)]
struct FeedForward {
    /// `wi`, or `wi_0` and `wi_1` side by side.
    wi: Linear,
    wo: Linear,
    act: Activation,
    gated: bool,
}

impl FeedForward {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (d, ff) = (cfg.d_model, cfg.d_ff);
        let wi = if cfg.is_gated_act {
            Linear::concat(&[
                Linear::load_no_bias(&w.pp("wi_0"), d, ff)?,
                Linear::load_no_bias(&w.pp("wi_1"), d, ff)?,
            ])?
        } else {
            Linear::load_no_bias(&w.pp("wi"), d, ff)?
        };
        Ok(FeedForward {
            wi,
            wo: Linear::load_no_bias(&w.pp("wo"), ff, d)?,
            act: cfg.dense_act_fn,
            gated: cfg.is_gated_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.wi.forward(x)?;
        let h = if self.gated {
            self.act.gated(&h)?
        } else {
            self.act.forward_owned(h)?
        };
        self.wo.forward(&h)
    }
}

/// An encoder `T5Block`: `layer.0` self-attention, `layer.1` feed-forward, each pre-norm
/// with a residual.
#[derive(Debug, Clone)]
struct EncoderBlock {
    attention_norm: RmsNorm,
    attention: SelfAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// A decoder `T5Block`: `layer.0` self-attention, `layer.1` cross-attention, `layer.2`
/// feed-forward.
#[derive(Debug, Clone)]
struct DecoderBlock {
    attention_norm: RmsNorm,
    attention: SelfAttention,
    cross_norm: RmsNorm,
    cross: CrossAttention,
    ff_norm: RmsNorm,
    ff: FeedForward,
}

/// `T5ForConditionalGeneration`.
pub struct T5ForConditionalGeneration {
    shared: Embedding,
    encoder_blocks: Vec<EncoderBlock>,
    /// The first encoder block's `relative_attention_bias` `[buckets, heads]`.
    encoder_bias: Tensor,
    encoder_final_norm: RmsNorm,
    decoder_blocks: Vec<DecoderBlock>,
    /// The decoder's bias by distance, every distance from 0 to `max_distance`.
    decoder_bias: DistanceBias,
    decoder_final_norm: RmsNorm,
    lm_head: Linear,
    cfg: Config,
}

impl T5ForConditionalGeneration {
    /// Loads `shared`, `encoder.block.*`, `decoder.block.*`, the final norms and `lm_head`
    /// (else the shared embeddings).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (d, eps) = (cfg.d_model, cfg.layer_norm_epsilon);
        let shared = if w.contains("shared.weight") {
            Embedding::load(&w.pp("shared"), cfg.vocab_size, d)?
        } else {
            Embedding::load(&w.pp("encoder.embed_tokens"), cfg.vocab_size, d)?
        };
        let encoder_blocks = (0..cfg.num_layers)
            .map(|i| {
                let b = w.pp(format!("encoder.block.{i}.layer"));
                Ok(EncoderBlock {
                    attention_norm: RmsNorm::load(&b.pp("0.layer_norm"), d, eps)?,
                    attention: SelfAttention::load(&b.pp("0.SelfAttention"), cfg)?,
                    ff_norm: RmsNorm::load(&b.pp("1.layer_norm"), d, eps)?,
                    ff: FeedForward::load(&b.pp("1.DenseReluDense"), cfg)?,
                })
            })
            .collect::<Result<_>>()?;
        let decoder_blocks = (0..cfg.num_decoder_layers)
            .map(|i| {
                let b = w.pp(format!("decoder.block.{i}.layer"));
                Ok(DecoderBlock {
                    attention_norm: RmsNorm::load(&b.pp("0.layer_norm"), d, eps)?,
                    attention: SelfAttention::load(&b.pp("0.SelfAttention"), cfg)?,
                    cross_norm: RmsNorm::load(&b.pp("1.layer_norm"), d, eps)?,
                    cross: CrossAttention::load(&b.pp("1.EncDecAttention"), cfg)?,
                    ff_norm: RmsNorm::load(&b.pp("2.layer_norm"), d, eps)?,
                    ff: FeedForward::load(&b.pp("2.DenseReluDense"), cfg)?,
                })
            })
            .collect::<Result<_>>()?;
        let bias_table = |side: &str| {
            w.get(
                [cfg.relative_attention_num_buckets, cfg.num_heads],
                &format!("{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"),
            )
        };
        let encoder_bias = bias_table("encoder")?;
        let decoder_bias = decoder_distance_bias(&bias_table("decoder")?, cfg)?;
        let lm_head = if w.contains("lm_head.weight") {
            Linear::load_no_bias(&w.pp("lm_head").for_output(), d, cfg.vocab_size)?
        } else {
            shared.tied_projection(None)?
        };
        Ok(T5ForConditionalGeneration {
            encoder_final_norm: RmsNorm::load(&w.pp("encoder.final_layer_norm"), d, eps)?,
            decoder_final_norm: RmsNorm::load(&w.pp("decoder.final_layer_norm"), d, eps)?,
            shared,
            encoder_blocks,
            encoder_bias,
            decoder_blocks,
            decoder_bias,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// The encoder's bias `[heads, m, m]` for sequences of up to `m` tokens: key minus query,
    /// bucketed both ways.
    fn encoder_position_bias(&self, m: usize) -> Result<Tensor> {
        let (buckets, heads) = (self.cfg.relative_attention_num_buckets, self.cfg.num_heads);
        let table: Vec<f32> = self.encoder_bias.flatten_all()?.to_vec1()?;
        // One bucket per key-minus-query distance in (-m, m).
        let by_distance: Vec<usize> = (0..2 * m.max(1) - 1)
            .map(|i| {
                relative_position_bucket(
                    i as i64 - (m.max(1) as i64 - 1),
                    true,
                    buckets,
                    self.cfg.relative_attention_max_distance,
                )
            })
            .collect();
        let mut bias = vec![0f32; heads * m * m];
        for h in 0..heads {
            for q in 0..m {
                for k in 0..m {
                    let bucket = by_distance[k + m - 1 - q];
                    bias[(h * m + q) * m + k] = table[bucket * heads + h];
                }
            }
        }
        Ok(Tensor::from_vec(
            bias,
            (heads, m, m),
            self.encoder_bias.device(),
        )?)
    }

    fn encoder(&self, batch: &RaggedBatch) -> Result<Tensor> {
        let device = self.shared.device();
        let n = batch.total_tokens();
        let mut x = self
            .shared
            .forward(&Tensor::from_slice(&batch.input_ids, n, device)?)?;
        let bias = self.encoder_position_bias(batch.max_seqlen)?;
        for block in &self.encoder_blocks {
            let a = block.attention.encode(
                &block.attention_norm.forward(&x)?,
                &batch.cu_seqlens,
                &bias,
            )?;
            x = add_in_place(a, &x)?;
            let h = block.ff.forward(&block.ff_norm.forward(&x)?)?;
            x = add_in_place(h, &x)?;
        }
        self.encoder_final_norm.forward(&x)
    }
}

/// The decoder's bias by distance: column `d` the bias of a key `d` behind its query, for
/// every distance up to `max_distance` (beyond, the bucket stays the last).
fn decoder_distance_bias(table: &Tensor, cfg: &Config) -> Result<DistanceBias> {
    let (buckets, heads) = (cfg.relative_attention_num_buckets, cfg.num_heads);
    let table: Vec<f32> = table.flatten_all()?.to_vec1()?;
    let width = cfg.relative_attention_max_distance + 1;
    let mut by_head = vec![0f32; heads * width];
    for d in 0..width {
        let bucket = relative_position_bucket(
            -(d as i64),
            false,
            buckets,
            cfg.relative_attention_max_distance,
        );
        for h in 0..heads {
            by_head[h * width + d] = table[bucket * heads + h];
        }
    }
    DistanceBias::new(by_head, heads, width)
}

impl Seq2SeqForward for T5ForConditionalGeneration {
    fn encode(&self, input: EncoderInput<'_>) -> Result<EncoderStates> {
        let EncoderInput::Tokens(batch) = input else {
            return Err(Error::Unsupported {
                what: "audio features as the input of a text model".into(),
            });
        };
        check_source_positions(batch, usize::MAX)?;
        Ok(EncoderStates {
            last_hidden_state: self.encoder(batch)?,
            cu_seqlens: batch.cu_seqlens.clone(),
        })
    }

    fn cross_kv(&self, states: &EncoderStates) -> Result<Vec<Arc<CrossKv>>> {
        let mut per_input: Vec<Vec<(Tensor, Tensor)>> = vec![Vec::new(); states.num_seqs()];
        for block in &self.decoder_blocks {
            for (input, kv) in per_input.iter_mut().zip(block.cross.keys_values(states)?) {
                input.push(kv);
            }
        }
        per_input
            .into_iter()
            .map(|layers| Ok(Arc::new(CrossKv::new(layers)?)))
            .collect()
    }

    fn decode(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut Seq2SeqCache],
        logits: Logits,
    ) -> Result<Tensor> {
        check_decoder_batch(batch, caches, None)?;
        let device = self.shared.device();
        let n = batch.total_tokens();
        let mut x = self
            .shared
            .forward(&Tensor::from_slice(&batch.input_ids, n, device)?)?;
        for (i, block) in self.decoder_blocks.iter().enumerate() {
            let cross = cross_layer(caches, i);
            let a = {
                let mut own: Vec<&mut KvCache> =
                    caches.iter_mut().map(|c| &mut c.self_attn).collect();
                block.attention.decode(
                    &block.attention_norm.forward(&x)?,
                    batch,
                    &mut own,
                    i,
                    &self.decoder_bias,
                )?
            };
            x = add_in_place(a, &x)?;
            let c = block
                .cross
                .forward(&block.cross_norm.forward(&x)?, batch, &cross)?;
            x = add_in_place(c, &x)?;
            let h = block.ff.forward(&block.ff_norm.forward(&x)?)?;
            x = add_in_place(h, &x)?;
        }
        let x = self.decoder_final_norm.forward(&x)?;
        let x = super::logit_rows(&x, batch, logits)?;
        let x = if self.cfg.scale_decoder_outputs {
            (x * (self.cfg.d_model as f64).powf(-0.5))?
        } else {
            x
        };
        self.lm_head.forward(&x)
    }

    fn new_cache(&self, cross: Arc<CrossKv>, capacity: usize) -> Result<Seq2SeqCache> {
        let table = &self.shared;
        Ok(Seq2SeqCache {
            self_attn: KvCache::new(
                self.cfg.num_decoder_layers,
                self.cfg.num_heads,
                self.cfg.d_kv,
                capacity,
                candle_core::DType::F32, // activations are f32 whatever the weights
                table.device(),
            )?,
            cross,
        })
    }

    fn max_source_positions(&self) -> Option<usize> {
        None
    }

    fn max_target_positions(&self) -> Option<usize> {
        None
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn input_embeddings(&self) -> &Embedding {
        &self.shared
    }
}

/// Builds `T5ForConditionalGeneration` from config.json and its checkpoint (the registry's
/// constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn Seq2SeqForward>> {
    Ok(Box::new(T5ForConditionalGeneration::load(
        w,
        &Config::from_common(common)?,
    )?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets of t5-small (32 buckets, max distance 128), as transformers computes them.
    #[test]
    fn buckets_follow_mesh_tensorflow() {
        let b = |rp: i64, bi: bool| relative_position_bucket(rp, bi, 32, 128);
        // Bidirectional: 16 per direction, 8 exact; keys after the query use the upper half.
        assert_eq!((b(0, true), b(-1, true), b(1, true)), (0, 1, 17));
        assert_eq!((b(-7, true), b(-8, true), b(-12, true)), (7, 8, 9));
        assert_eq!((b(-127, true), b(-128, true), b(-1000, true)), (15, 15, 15));
        assert_eq!(b(1000, true), 31);
        // Causal: 32 buckets looking back, 16 exact; keys ahead all share bucket 0.
        assert_eq!((b(3, false), b(-3, false), b(-15, false)), (0, 3, 15));
        assert_eq!(
            (b(-16, false), b(-128, false), b(-5000, false)),
            (16, 31, 31)
        );
    }
}

//! Whisper (Radford et al. 2022, "Robust Speech Recognition via Large-Scale Weak
//! Supervision").
//!
//! Mirrors transformers `models/whisper/modeling_whisper.py` (v5.24). The encoder reads 30 s
//! of log-mel features `[mel_bins, 3000]`: two convolutions with GELU (the second of stride 2,
//! so 1,500 positions), plus the stored sinusoidal positions, then pre-norm layers and a final
//! LayerNorm. The decoder is BART's with pre-norm layers: token embeddings plus learned
//! positions, causal self-attention, cross-attention over the encoder output, feed-forward,
//! a final LayerNorm, and `proj_out` tied to the token embeddings. The attention blocks are
//! BART's (`k_proj` has no bias), as transformers copies them. What the decoder is prompted
//! with and how timestamps are read is the speech-recognition pipeline's business.

use super::bart::{cross_kv_of_layers, CrossAttention, FeedForward, SelfAttention};
use super::encoder_decoder::{check_decoder_batch, cross_layer, EncoderInput, EncoderStates};
use super::{Logits, Seq2SeqForward};
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::{
    add_in_place, layer_norm, Activation, CrossKv, Embedding, KvCache, LayerNorm, Linear,
    Seq2SeqCache,
};
use candle_core::Tensor;
use candle_nn::Module;
use serde::Deserialize;
use std::sync::Arc;

/// `nn.LayerNorm`'s default epsilon, which Whisper's LayerNorms use.
const LAYER_NORM_EPS: f64 = 1e-5;

fn default_vocab_size() -> usize {
    51865
}
fn default_num_mel_bins() -> usize {
    80
}
fn default_layers() -> usize {
    4
}
fn default_heads() -> usize {
    6
}
fn default_ffn_dim() -> usize {
    1536
}
fn default_d_model() -> usize {
    384
}
fn default_max_source_positions() -> usize {
    1500
}
fn default_max_target_positions() -> usize {
    448
}
fn default_activation() -> String {
    "gelu".into()
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "default_vocab_size")]
    vocab_size: usize,
    #[serde(default = "default_num_mel_bins")]
    num_mel_bins: usize,
    #[serde(default = "default_layers")]
    encoder_layers: usize,
    #[serde(default = "default_heads")]
    encoder_attention_heads: usize,
    #[serde(default = "default_layers")]
    decoder_layers: usize,
    #[serde(default = "default_heads")]
    decoder_attention_heads: usize,
    #[serde(default = "default_ffn_dim")]
    encoder_ffn_dim: usize,
    #[serde(default = "default_ffn_dim")]
    decoder_ffn_dim: usize,
    #[serde(default = "default_d_model")]
    d_model: usize,
    #[serde(default = "default_max_source_positions")]
    max_source_positions: usize,
    #[serde(default = "default_max_target_positions")]
    max_target_positions: usize,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default)]
    scale_embedding: bool,
}

/// Whisper's hyper-parameters (defaults: `WhisperConfig`, whisper-tiny).
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub num_mel_bins: usize,
    pub encoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_layers: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    pub d_model: usize,
    /// Encoder positions: the frames after the strided convolution (1,500 for 30 s).
    pub max_source_positions: usize,
    /// Decoder positions (448).
    pub max_target_positions: usize,
    pub activation_function: Activation,
    /// Decoder token embeddings are multiplied by √d_model.
    pub scale_embedding: bool,
}

impl Config {
    /// Parses config.json.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let raw: RawConfig = common.parse_as()?;
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
            num_mel_bins: raw.num_mel_bins,
            encoder_layers: raw.encoder_layers,
            encoder_attention_heads: raw.encoder_attention_heads,
            decoder_layers: raw.decoder_layers,
            decoder_attention_heads: raw.decoder_attention_heads,
            encoder_ffn_dim: raw.encoder_ffn_dim,
            decoder_ffn_dim: raw.decoder_ffn_dim,
            d_model: raw.d_model,
            max_source_positions: raw.max_source_positions,
            max_target_positions: raw.max_target_positions,
            activation_function: Activation::parse(
                &raw.activation_function,
                &common.path,
                "activation_function",
            )?,
            scale_embedding: raw.scale_embedding,
        })
    }

    /// Frames of log-mel features the encoder reads (twice its positions: 3,000).
    pub fn input_frames(&self) -> usize {
        2 * self.max_source_positions
    }
}

/// A 1-D convolution over frames, `weight` `[out, in, kernel]`, padding `kernel / 2` on each
/// side: computed as one matrix product of the frames' windows (im2col).
#[derive(Debug, Clone)]
struct Conv1d {
    /// `[in · kernel, out]`: column `o` the kernel of output channel `o`, ordered channel
    /// by channel, tap by tap, as the windows are.
    weight_t: Tensor,
    bias: Tensor,
    in_channels: usize,
    kernel: usize,
    stride: usize,
}

impl Conv1d {
    fn load(
        w: &Weights,
        in_channels: usize,
        out: usize,
        kernel: usize,
        stride: usize,
    ) -> Result<Self> {
        let weight = w.get([out, in_channels, kernel], "weight")?;
        Ok(Conv1d {
            weight_t: weight
                .reshape((out, in_channels * kernel))?
                .t()?
                .contiguous()?,
            bias: w.get([out], "bias")?,
            in_channels,
            kernel,
            stride,
        })
    }

    /// `x` `[in, frames]` → `[out_frames, out]` (frames first, as the encoder reads them).
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (channels, frames) = x.dims2()?;
        let pad = self.kernel / 2;
        let out_frames = (frames + 2 * pad - self.kernel) / self.stride + 1;
        let x: Vec<f32> = x.contiguous()?.flatten_all()?.to_vec1()?;
        let width = channels * self.kernel;
        let mut windows = vec![0f32; out_frames * width];
        for (t, window) in windows.chunks_exact_mut(width).enumerate() {
            let start = (t * self.stride) as isize - pad as isize;
            for c in 0..channels {
                let row = &x[c * frames..(c + 1) * frames];
                for k in 0..self.kernel {
                    let at = start + k as isize;
                    if at >= 0 && (at as usize) < frames {
                        window[c * self.kernel + k] = row[at as usize];
                    }
                }
            }
        }
        let windows = Tensor::from_vec(windows, (out_frames, width), self.weight_t.device())?;
        crate::layers::cpu::team::rest();
        let y = windows.matmul(&self.weight_t)?;
        debug_assert_eq!(self.in_channels, channels);
        add_in_place(y, &self.bias)
    }
}

/// `WhisperEncoderLayer` (and the decoder's self-attention half): pre-norm blocks.
#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: SelfAttention,
    final_layer_norm: LayerNorm,
    ffn: FeedForward,
}

/// `WhisperDecoderLayer`: pre-norm self-attention, cross-attention and feed-forward.
#[derive(Debug, Clone)]
struct DecoderLayer {
    self_attn_layer_norm: LayerNorm,
    self_attn: SelfAttention,
    encoder_attn_layer_norm: LayerNorm,
    encoder_attn: CrossAttention,
    final_layer_norm: LayerNorm,
    ffn: FeedForward,
}

/// `WhisperForConditionalGeneration`.
pub struct WhisperForConditionalGeneration {
    conv1: Conv1d,
    conv2: Conv1d,
    /// `[max_source_positions, d_model]`
    encoder_positions: Tensor,
    encoder_layers: Vec<EncoderLayer>,
    encoder_layer_norm: LayerNorm,
    embed_tokens: Embedding,
    decoder_positions: Embedding,
    decoder_layers: Vec<DecoderLayer>,
    decoder_layer_norm: LayerNorm,
    proj_out: Linear,
    cfg: Config,
}

impl WhisperForConditionalGeneration {
    /// Loads `model.encoder…`, `model.decoder…` and `proj_out` (else the tied token
    /// embeddings).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let m = if w.contains("model.encoder.conv1.weight") {
            w.pp("model")
        } else {
            w.clone()
        };
        let (d, act) = (cfg.d_model, cfg.activation_function);
        let e = m.pp("encoder");
        let encoder_layers = (0..cfg.encoder_layers)
            .map(|i| {
                let l = e.pp(format!("layers.{i}"));
                Ok(EncoderLayer {
                    self_attn_layer_norm: layer_norm(
                        &l.pp("self_attn_layer_norm"),
                        d,
                        LAYER_NORM_EPS,
                    )?,
                    self_attn: SelfAttention::load(
                        &l.pp("self_attn"),
                        d,
                        cfg.encoder_attention_heads,
                    )?,
                    final_layer_norm: layer_norm(&l.pp("final_layer_norm"), d, LAYER_NORM_EPS)?,
                    ffn: FeedForward::load(&l, d, cfg.encoder_ffn_dim, act)?,
                })
            })
            .collect::<Result<_>>()?;
        let dec = m.pp("decoder");
        let decoder_layers = (0..cfg.decoder_layers)
            .map(|i| {
                let l = dec.pp(format!("layers.{i}"));
                let heads = cfg.decoder_attention_heads;
                Ok(DecoderLayer {
                    self_attn_layer_norm: layer_norm(
                        &l.pp("self_attn_layer_norm"),
                        d,
                        LAYER_NORM_EPS,
                    )?,
                    self_attn: SelfAttention::load(&l.pp("self_attn"), d, heads)?,
                    encoder_attn_layer_norm: layer_norm(
                        &l.pp("encoder_attn_layer_norm"),
                        d,
                        LAYER_NORM_EPS,
                    )?,
                    encoder_attn: CrossAttention::load(&l.pp("encoder_attn"), d, heads)?,
                    final_layer_norm: layer_norm(&l.pp("final_layer_norm"), d, LAYER_NORM_EPS)?,
                    ffn: FeedForward::load(&l, d, cfg.decoder_ffn_dim, act)?,
                })
            })
            .collect::<Result<_>>()?;
        let embed_tokens = Embedding::load(&dec.pp("embed_tokens"), cfg.vocab_size, d)?;
        let proj_out = if w.contains("proj_out.weight") {
            Linear::load_no_bias(&w.pp("proj_out").for_output(), d, cfg.vocab_size)?
        } else {
            embed_tokens.tied_projection(None)?
        };
        Ok(WhisperForConditionalGeneration {
            conv1: Conv1d::load(&e.pp("conv1"), cfg.num_mel_bins, d, 3, 1)?,
            conv2: Conv1d::load(&e.pp("conv2"), d, d, 3, 2)?,
            encoder_positions: e.get([cfg.max_source_positions, d], "embed_positions.weight")?,
            encoder_layers,
            encoder_layer_norm: layer_norm(&e.pp("layer_norm"), d, LAYER_NORM_EPS)?,
            decoder_positions: Embedding::load(
                &dec.pp("embed_positions"),
                cfg.max_target_positions,
                d,
            )?,
            embed_tokens,
            decoder_layers,
            decoder_layer_norm: layer_norm(&dec.pp("layer_norm"), d, LAYER_NORM_EPS)?,
            proj_out,
            cfg: cfg.clone(),
        })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// The encoder on features `[num_seqs, mel_bins, frames]` → `[num_seqs · positions, d]`.
    fn encoder(&self, features: &Tensor) -> Result<(Tensor, Vec<u32>)> {
        let (num_seqs, mel_bins, frames) = features.dims3()?;
        if mel_bins != self.cfg.num_mel_bins || frames != self.cfg.input_frames() {
            return Err(Error::Unsupported {
                what: format!(
                    "log-mel features of {mel_bins} bins x {frames} frames (this Whisper reads {} x {}: 30 s)",
                    self.cfg.num_mel_bins,
                    self.cfg.input_frames()
                ),
            });
        }
        let act = self.cfg.activation_function;
        let mut windows = Vec::with_capacity(num_seqs);
        for i in 0..num_seqs {
            let x = act.forward_owned(self.conv1.forward(&features.get(i)?)?)?; // [frames, d]
            let x = act.forward_owned(self.conv2.forward(&x.t()?.contiguous()?)?)?; // [positions, d]
            windows.push(add_in_place(x, &self.encoder_positions)?);
        }
        let positions = self.cfg.max_source_positions as u32;
        let cu_seqlens: Vec<u32> = (0..=num_seqs as u32).map(|i| i * positions).collect();
        let mut x = if windows.len() == 1 {
            windows.remove(0)
        } else {
            Tensor::cat(&windows, 0)?
        };
        for layer in &self.encoder_layers {
            let a = layer
                .self_attn
                .encode(&layer.self_attn_layer_norm.forward(&x)?, &cu_seqlens)?;
            x = add_in_place(a, &x)?;
            let h = layer.ffn.forward(&layer.final_layer_norm.forward(&x)?)?;
            x = add_in_place(h, &x)?;
        }
        Ok((self.encoder_layer_norm.forward(&x)?, cu_seqlens))
    }
}

impl Seq2SeqForward for WhisperForConditionalGeneration {
    fn encode(&self, input: EncoderInput<'_>) -> Result<EncoderStates> {
        let EncoderInput::Features(features) = input else {
            return Err(Error::Unsupported {
                what: "token ids as the input of Whisper (it reads log-mel features)".into(),
            });
        };
        let (last_hidden_state, cu_seqlens) = self.encoder(features)?;
        Ok(EncoderStates {
            last_hidden_state,
            cu_seqlens,
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
        check_decoder_batch(batch, caches, Some(self.cfg.max_target_positions))?;
        let device = self.embed_tokens.device();
        let n = batch.total_tokens();
        let tokens =
            self.embed_tokens
                .forward(&Tensor::from_slice(&batch.input_ids, n, device)?)?;
        let tokens = if self.cfg.scale_embedding {
            (tokens * (self.cfg.d_model as f64).sqrt())?
        } else {
            tokens
        };
        let positions =
            self.decoder_positions
                .forward(&Tensor::from_slice(&batch.positions, n, device)?)?;
        let mut x = (tokens + positions)?;
        for (i, layer) in self.decoder_layers.iter().enumerate() {
            let cross = cross_layer(caches, i);
            let a = {
                let mut own: Vec<&mut KvCache> =
                    caches.iter_mut().map(|c| &mut c.self_attn).collect();
                layer.self_attn.decode(
                    &layer.self_attn_layer_norm.forward(&x)?,
                    batch,
                    &mut own,
                    i,
                )?
            };
            x = add_in_place(a, &x)?;
            let c = layer.encoder_attn.forward(
                &layer.encoder_attn_layer_norm.forward(&x)?,
                batch,
                &cross,
            )?;
            x = add_in_place(c, &x)?;
            let h = layer.ffn.forward(&layer.final_layer_norm.forward(&x)?)?;
            x = add_in_place(h, &x)?;
        }
        let x = self.decoder_layer_norm.forward(&x)?;
        let x = super::logit_rows(&x, batch, logits)?;
        self.proj_out.forward(&x)
    }

    fn new_cache(&self, cross: Arc<CrossKv>, capacity: usize) -> Result<Seq2SeqCache> {
        let table = &self.embed_tokens;
        let heads = self.cfg.decoder_attention_heads;
        Ok(Seq2SeqCache {
            self_attn: KvCache::new(
                self.cfg.decoder_layers,
                heads,
                self.cfg.d_model / heads,
                capacity.min(self.cfg.max_target_positions),
                candle_core::DType::F32, // activations are f32 whatever the weights
                table.device(),
            )?,
            cross,
        })
    }

    fn max_source_positions(&self) -> Option<usize> {
        Some(self.cfg.max_source_positions)
    }

    fn max_target_positions(&self) -> Option<usize> {
        Some(self.cfg.max_target_positions)
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn input_embeddings(&self) -> &Embedding {
        &self.embed_tokens
    }
}

/// Builds `WhisperForConditionalGeneration` from config.json and its checkpoint (the
/// registry's constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn Seq2SeqForward>> {
    Ok(Box::new(WhisperForConditionalGeneration::load(
        w,
        &Config::from_common(common)?,
    )?))
}

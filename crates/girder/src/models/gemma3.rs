//! Gemma 3 (Gemma Team 2025, <https://arxiv.org/abs/2503.19786>), the text decoder:
//! `Gemma3ForCausalLM`.
//!
//! Mirrors transformers `models/gemma3/modeling_gemma3.py` (v5.24). Against LLaMA:
//! - the embeddings are scaled by `√hidden_size`;
//! - every RMSNorm multiplies by `1 + weight` (GGUF files store `1 + weight`: llama.cpp's
//!   converter adds the one);
//! - each block normalises the input and the output of both sublayers (four norms);
//! - queries and keys get an RMSNorm per head (QK-norm) before RoPE, and the scores the
//!   scale `query_pre_attn_scalar^-1/2`;
//! - local sliding-window layers and global layers interleave (`layer_types`, by default
//!   every sixth layer global), each kind with its own RoPE base (10 000 and 1 000 000);
//! - the MLP is GeGLU: `down(gelu_tanh(gate(x)) · up(x))`;
//! - the logits are soft-capped, `cap · tanh(logits / cap)`, when the config sets
//!   `final_logit_softcapping`.

use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::gguf::TensorNames;
use crate::hub::{GgufFile, Weights};
use crate::layers::rope::{RopeParameters, RopeScaling, RotaryEmbedding};
use crate::layers::{
    add_in_place, ragged_causal_attention, Activation, Embedding, KvCache, Linear, RmsNorm,
};
use crate::models::{DecoderForward, Logits};
use candle_core::Tensor;
use serde::Deserialize;

fn default_vocab_size() -> usize {
    262_208
}
fn default_hidden_size() -> usize {
    2304
}
fn default_intermediate_size() -> usize {
    9216
}
fn default_layers() -> usize {
    26
}
fn default_heads() -> usize {
    8
}
fn default_kv_heads() -> usize {
    4
}
fn default_head_dim() -> usize {
    256
}
fn default_hidden_activation() -> String {
    "gelu_pytorch_tanh".into()
}
fn default_max_position_embeddings() -> usize {
    131_072
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}
fn default_true() -> bool {
    true
}
fn default_query_pre_attn_scalar() -> f64 {
    256.0
}
fn default_sliding_window() -> Option<usize> {
    Some(4096)
}
fn default_sliding_window_pattern() -> usize {
    6
}

/// The fields of config.json Gemma 3 reads (defaults: `Gemma3TextConfig`).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "default_vocab_size")]
    vocab_size: usize,
    #[serde(default = "default_hidden_size")]
    hidden_size: usize,
    #[serde(default = "default_intermediate_size")]
    intermediate_size: usize,
    #[serde(default = "default_layers")]
    num_hidden_layers: usize,
    #[serde(default = "default_heads")]
    num_attention_heads: usize,
    #[serde(default = "default_kv_heads")]
    num_key_value_heads: usize,
    #[serde(default = "default_head_dim")]
    head_dim: usize,
    #[serde(default = "default_hidden_activation", alias = "hidden_act")]
    hidden_activation: String,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_true")]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default = "default_query_pre_attn_scalar")]
    query_pre_attn_scalar: f64,
    #[serde(default = "default_sliding_window")]
    sliding_window: Option<usize>,
    #[serde(default = "default_sliding_window_pattern")]
    sliding_window_pattern: usize,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
    #[serde(default)]
    final_logit_softcapping: Option<f64>,
    #[serde(default)]
    attn_logit_softcapping: Option<f64>,
    /// transformers 5: `{"full_attention": {...}, "sliding_attention": {...}}`.
    #[serde(default)]
    rope_parameters: Option<std::collections::HashMap<String, RopeParameters>>,
    /// transformers 4.x.
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_local_base_freq: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
}

/// One kind of attention layer's RoPE.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    pub theta: f64,
    pub scaling: RopeScaling,
}

/// Hyper-parameters of Gemma 3's text decoder.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_activation: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub query_pre_attn_scalar: f64,
    /// Per layer: the sliding window of a local layer, `None` for a global one.
    pub windows: Vec<Option<usize>>,
    pub global_rope: Rope,
    pub local_rope: Rope,
    pub final_logit_softcapping: Option<f64>,
    /// The norms' weights are stored as `1 + weight` (GGUF), not as `weight` (transformers).
    pub norms_hold_one: bool,
}

/// `layer_types` from the pattern when the config has none: every `pattern`-th layer global.
fn layer_windows(layers: usize, pattern: usize, window: usize) -> Vec<Option<usize>> {
    (0..layers)
        .map(|i| (!(i + 1).is_multiple_of(pattern.max(1))).then_some(window))
        .collect()
}

impl Config {
    /// Parses config.json (`model_type` `gemma3_text`).
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let raw: RawConfig = common.parse_as()?;
        let file = &common.path;
        let bad = |field: &str, reason: String| Error::BadConfig {
            file: file.clone(),
            field: field.into(),
            reason,
        };
        if raw.num_attention_heads == 0
            || raw.num_key_value_heads == 0
            || !raw
                .num_attention_heads
                .is_multiple_of(raw.num_key_value_heads)
        {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{} does not divide num_attention_heads ({})",
                    raw.num_key_value_heads, raw.num_attention_heads
                ),
            ));
        }
        super::check_layer_count(file, raw.num_hidden_layers)?;
        if raw.head_dim == 0 || !raw.head_dim.is_multiple_of(2) || raw.num_hidden_layers == 0 {
            return Err(bad(
                "head_dim",
                format!("{} must be even and positive for RoPE", raw.head_dim),
            ));
        }
        if raw.attn_logit_softcapping.is_some() {
            return Err(bad(
                "attn_logit_softcapping",
                "soft-capped attention scores (Gemma 2) are not supported".into(),
            ));
        }
        let window = raw
            .sliding_window
            .filter(|&w| w > 0)
            .ok_or_else(|| bad("sliding_window", "must be a positive number".into()))?;
        let windows = match &raw.layer_types {
            Some(types) if types.len() != raw.num_hidden_layers => {
                return Err(bad(
                    "layer_types",
                    format!(
                        "has {} entries for {} layers",
                        types.len(),
                        raw.num_hidden_layers
                    ),
                ))
            }
            Some(types) => types
                .iter()
                .map(|t| (t == "sliding_attention").then_some(window))
                .collect(),
            None => layer_windows(raw.num_hidden_layers, raw.sliding_window_pattern, window),
        };
        let (global_rope, local_rope) = match &raw.rope_parameters {
            Some(by_type) => {
                let rope = |kind: &str, theta: f64| -> Result<Rope> {
                    Ok(match by_type.get(kind) {
                        Some(p) => Rope {
                            theta: p.rope_theta.unwrap_or(theta),
                            scaling: p.scaling(file, "rope_parameters")?,
                        },
                        None => Rope {
                            theta,
                            scaling: RopeScaling::Default,
                        },
                    })
                };
                (
                    rope("full_attention", 1_000_000.0)?,
                    rope("sliding_attention", 10_000.0)?,
                )
            }
            None => (
                Rope {
                    theta: raw.rope_theta.unwrap_or(1_000_000.0),
                    scaling: match &raw.rope_scaling {
                        Some(p) => p.scaling(file, "rope_scaling")?,
                        None => RopeScaling::Default,
                    },
                },
                Rope {
                    theta: raw.rope_local_base_freq.unwrap_or(10_000.0),
                    scaling: RopeScaling::Default,
                },
            ),
        };
        Ok(Config {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads,
            head_dim: raw.head_dim,
            hidden_activation: Activation::parse(
                &raw.hidden_activation,
                file,
                "hidden_activation",
            )?,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias,
            query_pre_attn_scalar: raw.query_pre_attn_scalar,
            windows,
            global_rope,
            local_rope,
            final_logit_softcapping: raw.final_logit_softcapping,
            norms_hold_one: false,
        })
    }

    /// The hyper-parameters of a `gemma3` GGUF file, with what llama.cpp fixes for the
    /// architecture rather than storing (`llama-model.cpp`): every sixth layer global, the
    /// local RoPE base 10 000, the query scale `head_dim^-1/2` (27B: `hidden / heads`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let key = |k: &str| format!("gemma3.{k}");
        let bad = |reason: String| Error::BadGguf {
            file: gguf.path().to_path_buf(),
            reason,
        };
        let heads = gguf.u32_key(&key("attention.head_count"))? as usize;
        let kv_heads = gguf
            .opt_u32(&key("attention.head_count_kv"))?
            .map_or(heads, |h| h as usize);
        let hidden = gguf.u32_key(&key("embedding_length"))? as usize;
        let layers = gguf.u32_key(&key("block_count"))? as usize;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || layers == 0 {
            return Err(bad(format!(
                "{heads} attention heads, {kv_heads} kv heads, {layers} layers"
            )));
        }
        let head_dim = gguf
            .opt_u32(&key("attention.key_length"))?
            .map_or(256, |d| d as usize);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(format!("head dimension {head_dim} is not even")));
        }
        let window = gguf
            .opt_u32(&key("attention.sliding_window"))?
            .map_or(4096, |w| w as usize);
        if window == 0 {
            return Err(bad("a sliding window of 0".into()));
        }
        let scaling = match gguf.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => RopeScaling::Linear {
                factor: gguf
                    .opt_f32(&key("rope.scaling.factor"))?
                    .ok_or_else(|| bad(format!("`{}` is missing", key("rope.scaling.factor"))))?,
            },
            Some(other) => {
                return Err(Error::UnsupportedGguf {
                    file: gguf.path().to_path_buf(),
                    what: format!("rope scaling `{other}`"),
                })
            }
        };
        let vocab_size = gguf.vocab_size()?;
        let query_pre_attn_scalar = if layers == 62 {
            (hidden / heads) as f64
        } else {
            head_dim as f64
        };
        Ok(Config {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: gguf.u32_key(&key("feed_forward_length"))? as usize,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            hidden_activation: Activation::GeluTanh,
            max_position_embeddings: gguf.u32_key(&key("context_length"))? as usize,
            rms_norm_eps: gguf
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6) as f64,
            tie_word_embeddings: gguf.tensor_shape("lm_head.weight").is_none(),
            attention_bias: false,
            query_pre_attn_scalar,
            windows: layer_windows(layers, 6, window),
            global_rope: Rope {
                theta: gguf.opt_f32(&key("rope.freq_base"))?.unwrap_or(1_000_000.0) as f64,
                scaling,
            },
            local_rope: Rope {
                theta: 10_000.0,
                scaling: RopeScaling::Default,
            },
            final_logit_softcapping: gguf
                .opt_f32(&key("final_logit_softcapping"))?
                .map(f64::from),
            norms_hold_one: true,
        })
    }
}

/// `Gemma3RMSNorm`: `x / rms(x) · (1 + weight)`, the `1 +` added once at load.
fn norm(w: &Weights, dim: usize, cfg: &Config) -> Result<RmsNorm> {
    let weight = w.get([dim], "weight")?;
    let weight = if cfg.norms_hold_one {
        weight
    } else {
        weight.affine(1.0, 1.0)?
    };
    Ok(RmsNorm::from_weight(weight, cfg.rms_norm_eps))
}

fn linear(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    if bias {
        Linear::load(w, in_dim, out_dim)
    } else {
        Linear::load_no_bias(w, in_dim, out_dim)
    }
}

/// `Gemma3Attention`: q/k/v (one product), QK-norm, RoPE, causal attention (windowed in local
/// layers), o_proj.
#[derive(Debug, Clone)]
struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    q_norm: RmsNorm,
    k_norm: RmsNorm,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
    scale: f64,
}

impl Attention {
    fn load(w: &Weights, cfg: &Config, layer: usize) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        let bias = cfg.attention_bias;
        Ok(Attention {
            qkv_proj: Linear::concat(&[
                linear(&w.pp("q_proj"), h, q_out, bias)?,
                linear(&w.pp("k_proj"), h, kv_out, bias)?,
                linear(&w.pp("v_proj"), h, kv_out, bias)?,
            ])?,
            o_proj: linear(&w.pp("o_proj"), q_out, h, bias)?,
            q_norm: norm(&w.pp("q_norm"), d, cfg)?,
            k_norm: norm(&w.pp("k_norm"), d, cfg)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            window: cfg.windows[layer],
            scale: cfg.query_pre_attn_scalar.powf(-0.5),
        })
    }

    /// Each head of `x` `[n, heads · head_dim]` through `norm`, back as `[n, heads · head_dim]`.
    fn per_head(norm: &RmsNorm, x: &Tensor, heads: usize, head_dim: usize) -> Result<Tensor> {
        let n = x.dim(0)?;
        let rows = x.contiguous()?.reshape((n * heads, head_dim))?;
        Ok(norm.forward(&rows)?.reshape((n, heads * head_dim))?)
    }

    fn forward(
        &self,
        x: &Tensor,
        cos_sin: &(Tensor, Tensor),
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let d = self.head_dim;
        let (q_width, kv_width) = (self.heads * d, self.kv_heads * d);
        let qkv = self.qkv_proj.forward(x)?;
        let (cos, sin) = cos_sin;
        let q = Self::per_head(&self.q_norm, &qkv.narrow(1, 0, q_width)?, self.heads, d)?;
        let q = RotaryEmbedding::apply_heads(&q, self.heads, cos, sin)?;
        let k = qkv.narrow(1, q_width, kv_width)?;
        let k = Self::per_head(&self.k_norm, &k, self.kv_heads, d)?;
        let k = RotaryEmbedding::apply_heads(&k, self.kv_heads, cos, sin)?;
        let v = qkv
            .narrow(1, q_width + kv_width, kv_width)?
            .reshape((n, self.kv_heads, d))?;
        let out = ragged_causal_attention(
            &q,
            &k,
            &v,
            &batch.cu_seqlens,
            caches,
            layer,
            self.window,
            self.scale,
            None,
        )?;
        self.o_proj.forward(&out)
    }
}

/// `Gemma3MLP`: `down(gelu_tanh(gate(x)) · up(x))`, gate and up as one product.
#[derive(Debug, Clone)]
struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Mlp {
            gate_up_proj: Linear::concat(&[
                Linear::load_no_bias(&w.pp("gate_proj"), h, i)?,
                Linear::load_no_bias(&w.pp("up_proj"), h, i)?,
            ])?,
            down_proj: Linear::load_no_bias(&w.pp("down_proj"), i, h)?,
            act: cfg.hidden_activation,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        self.down_proj.forward(&self.act.gated(&gate_up)?)
    }
}

/// `Gemma3DecoderLayer`: both sublayers normalised before and after.
#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    pre_feedforward_layernorm: RmsNorm,
    mlp: Mlp,
    post_feedforward_layernorm: RmsNorm,
}

impl Layer {
    fn load(w: &Weights, cfg: &Config, layer: usize) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Layer {
            input_layernorm: norm(&w.pp("input_layernorm"), h, cfg)?,
            self_attn: Attention::load(&w.pp("self_attn"), cfg, layer)?,
            post_attention_layernorm: norm(&w.pp("post_attention_layernorm"), h, cfg)?,
            pre_feedforward_layernorm: norm(&w.pp("pre_feedforward_layernorm"), h, cfg)?,
            mlp: Mlp::load(&w.pp("mlp"), cfg)?,
            post_feedforward_layernorm: norm(&w.pp("post_feedforward_layernorm"), h, cfg)?,
        })
    }
}

/// `Gemma3TextModel`: scaled embeddings, layers, final norm.
#[derive(Debug, Clone)]
pub struct Gemma3TextModel {
    embed_tokens: Embedding,
    /// `√hidden_size` in f32, as `Gemma3TextScaledWordEmbedding`'s buffer.
    embed_scale: f32,
    layers: Vec<Layer>,
    norm: RmsNorm,
    global_rotary: RotaryEmbedding,
    local_rotary: RotaryEmbedding,
}

impl Gemma3TextModel {
    /// Loads `embed_tokens`, `layers.{i}` and `norm` under `w` (the checkpoint's `model.`).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let d = cfg.head_dim;
        Ok(Gemma3TextModel {
            embed_tokens: Embedding::load(&w.pp("embed_tokens"), cfg.vocab_size, cfg.hidden_size)?,
            embed_scale: (cfg.hidden_size as f64).sqrt() as f32,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(&w.pp(format!("layers.{i}")), cfg, i))
                .collect::<Result<_>>()?,
            norm: norm(&w.pp("norm"), cfg.hidden_size, cfg)?,
            global_rotary: RotaryEmbedding::new(d, cfg.global_rope.theta, &cfg.global_rope.scaling),
            local_rotary: RotaryEmbedding::new(d, cfg.local_rope.theta, &cfg.local_rope.scaling),
        })
    }

    /// The final hidden states `[total_tokens, hidden]`; each sequence's keys and values are
    /// appended to its cache.
    pub fn forward(&self, batch: &RaggedBatch, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let device = self.embed_tokens.device();
        let ids = Tensor::from_slice(&batch.input_ids, batch.total_tokens(), device)?;
        let global = self.global_rotary.cos_sin(&batch.positions, device)?;
        let local = self.local_rotary.cos_sin(&batch.positions, device)?;
        let mut x = self
            .embed_tokens
            .forward(&ids)?
            .affine(self.embed_scale as f64, 0.0)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let cos_sin = if layer.self_attn.window.is_some() {
                &local
            } else {
                &global
            };
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(&h, cos_sin, batch, caches, i)?;
            x = add_in_place(layer.post_attention_layernorm.forward(&h)?, &x)?;
            let h = layer.pre_feedforward_layernorm.forward(&x)?;
            let h = layer.mlp.forward(&h)?;
            x = add_in_place(layer.post_feedforward_layernorm.forward(&h)?, &x)?;
        }
        self.norm.forward(&x)
    }
}

/// `Gemma3ForCausalLM`.
#[derive(Debug, Clone)]
pub struct Gemma3ForCausalLM {
    model: Gemma3TextModel,
    lm_head: Linear,
    cfg: Config,
}

impl Gemma3ForCausalLM {
    /// Loads `model.*` and `lm_head` (or ties the head to `model.embed_tokens`).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let model = Gemma3TextModel::load(&w.pp("model"), cfg)?;
        // Tied: from the table's own blocks for a GGUF file's (the kernel's layout of the same
        // bytes).
        let lm_head = if cfg.tie_word_embeddings {
            model.embed_tokens.tied_projection(None)?
        } else {
            Linear::load_no_bias(
                &w.pp("lm_head").for_output(),
                cfg.hidden_size,
                cfg.vocab_size,
            )?
        };
        Ok(Gemma3ForCausalLM {
            model,
            lm_head,
            cfg: cfg.clone(),
        })
    }
}

impl DecoderForward for Gemma3ForCausalLM {
    fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor> {
        super::check_decoder_batch(batch, caches, self.cfg.max_position_embeddings)?;
        let hidden = self.model.forward(batch, caches)?;
        let hidden = super::logit_rows(&hidden, batch, logits)?;
        let logits = self.lm_head.forward(&hidden)?;
        Ok(match self.cfg.final_logit_softcapping {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        })
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let table = &self.model.embed_tokens;
        KvCache::new(
            self.cfg.num_hidden_layers,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            capacity,
            candle_core::DType::F32, // activations are f32 whatever the weights
            table.device(),
        )
    }

    fn context_length(&self) -> usize {
        self.cfg.max_position_embeddings
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn input_embeddings(&self) -> &Embedding {
        &self.model.embed_tokens
    }
}

/// Builds `Gemma3ForCausalLM` from config.json and its checkpoint (the registry's constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn DecoderForward>> {
    Ok(Box::new(Gemma3ForCausalLM::load(
        w,
        &Config::from_common(common)?,
    )?))
}

/// Builds the model from a `gemma3` GGUF file.
pub fn load_gguf(gguf: &GgufFile, w: &Weights) -> Result<Box<dyn DecoderForward>> {
    Ok(Box::new(Gemma3ForCausalLM::load(
        w,
        &Config::from_gguf(gguf)?,
    )?))
}

/// Gemma's chat template (the `chat_template` of Gemma 3's `tokenizer_config.json`), for
/// GGUF files that carry none: turns `<start_of_turn>user` / `<start_of_turn>model`, a system
/// message folded into the first user turn, contents trimmed, roles made to alternate.
pub const CHAT_TEMPLATE: &str = r#"{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"#;

/// llama.cpp's tensor names for `LLM_ARCH_GEMMA3` → transformers' names.
pub const GGUF_TENSOR_NAMES: TensorNames = TensorNames {
    whole: &[
        ("token_embd", "model.embed_tokens"),
        ("output_norm", "model.norm"),
        ("output", "lm_head"),
    ],
    layer_prefix: "model.layers",
    layer: &[
        ("attn_norm", "input_layernorm"),
        ("attn_q_norm", "self_attn.q_norm"),
        ("attn_k_norm", "self_attn.k_norm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("post_attention_norm", "post_attention_layernorm"),
        ("ffn_norm", "pre_feedforward_layernorm"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
        ("post_ffw_norm", "post_feedforward_layernorm"),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sixth_layer_is_global() {
        let w = layer_windows(12, 6, 512);
        let globals: Vec<usize> = (0..12).filter(|&i| w[i].is_none()).collect();
        assert_eq!(globals, [5, 11]);
        assert_eq!(w[0], Some(512));
    }
}

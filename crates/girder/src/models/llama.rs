//! LLaMA (Touvron et al. 2023, <https://arxiv.org/abs/2302.13971>) and the models that share
//! its layout, chosen by config: Mistral (sliding-window attention) and Qwen2 (q/k/v bias).
//! SmolLM, TinyLlama and Llama 2/3 are LLaMA checkpoints.
//!
//! Mirrors transformers `models/llama/modeling_llama.py` (v5.24): RMSNorm → attention with
//! RoPE and grouped-query heads → residual → RMSNorm → SwiGLU MLP → residual; a final norm
//! and the LM head (tied to the embeddings when `tie_word_embeddings`). Mistral and Qwen2
//! differ only in what `models/mistral/modeling_mistral.py` and `models/qwen2/modeling_qwen2.py`
//! configure: the window and the biases.

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
    32000
}
fn default_hidden_size() -> usize {
    4096
}
fn default_intermediate_size() -> usize {
    11008
}
fn default_layers() -> usize {
    32
}
fn default_heads() -> usize {
    32
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_max_position_embeddings() -> usize {
    2048
}
fn default_rms_norm_eps() -> f64 {
    1e-6
}

/// The fields of config.json LLaMA, Mistral and Qwen2 read (defaults: `LlamaConfig`).
#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default)]
    model_type: Option<String>,
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
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    hidden_act: String,
    #[serde(default = "default_max_position_embeddings")]
    max_position_embeddings: usize,
    #[serde(default = "default_rms_norm_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    max_window_layers: Option<usize>,
    #[serde(default)]
    layer_types: Option<Vec<String>>,
}

/// Hyper-parameters of a LLaMA-family decoder, resolved from config.json.
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    /// Bias on q/k/v (Qwen2 always, LLaMA with `attention_bias`); o_proj has one only
    /// with `attention_bias`.
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub mlp_bias: bool,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Per layer: the sliding window, if that layer has one.
    pub windows: Vec<Option<usize>>,
}

impl Config {
    /// Parses config.json; `model_type` decides Mistral's window and Qwen2's biases.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let raw: RawConfig = common.parse_as()?;
        let file = &common.path;
        let bad = |field: &str, reason: String| Error::BadConfig {
            file: file.clone(),
            field: field.into(),
            reason,
        };
        let model_type = raw.model_type.as_deref().unwrap_or("llama");
        if raw.num_attention_heads == 0 || raw.hidden_size == 0 || raw.num_hidden_layers == 0 {
            return Err(bad(
                "num_attention_heads",
                "hidden_size, num_hidden_layers and num_attention_heads must be positive".into(),
            ));
        }
        super::check_layer_count(file, raw.num_hidden_layers)?;
        let kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if kv_heads == 0 || !raw.num_attention_heads.is_multiple_of(kv_heads) {
            return Err(bad(
                "num_key_value_heads",
                format!(
                    "{kv_heads} does not divide num_attention_heads ({})",
                    raw.num_attention_heads
                ),
            ));
        }
        let head_dim = raw
            .head_dim
            .unwrap_or(raw.hidden_size / raw.num_attention_heads);
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(bad(
                "head_dim",
                format!("{head_dim} must be even and positive for RoPE"),
            ));
        }
        // transformers 5 writes `rope_parameters` (theta inside); 4.x wrote `rope_theta` and
        // an optional `rope_scaling`.
        let (rope_theta, rope_scaling) = match &raw.rope_parameters {
            Some(p) => (
                p.rope_theta.or(raw.rope_theta).unwrap_or(10000.0),
                p.scaling(file, "rope_parameters")?,
            ),
            None => (
                raw.rope_theta.unwrap_or(10000.0),
                match &raw.rope_scaling {
                    Some(p) => p.scaling(file, "rope_scaling")?,
                    None => RopeScaling::Default,
                },
            ),
        };
        let windows = (0..raw.num_hidden_layers)
            .map(|i| -> Result<Option<usize>> {
                let sliding = match (&raw.layer_types, model_type) {
                    (Some(types), _) => {
                        let t = types.get(i).ok_or_else(|| {
                            bad(
                                "layer_types",
                                format!(
                                    "has {} entries for {} layers",
                                    types.len(),
                                    raw.num_hidden_layers
                                ),
                            )
                        })?;
                        t == "sliding_attention"
                    }
                    // MistralConfig's default window is 4096; `null` turns it off.
                    (None, "mistral") => true,
                    (None, "qwen2") => {
                        raw.use_sliding_window.unwrap_or(false)
                            && i >= raw.max_window_layers.unwrap_or(28)
                    }
                    _ => false,
                };
                Ok(if sliding {
                    Some(raw.sliding_window.unwrap_or(4096))
                } else {
                    None
                })
            })
            .collect::<Result<Vec<_>>>()?;
        // `"sliding_window": null` in a Mistral config means full attention.
        let windows = if model_type == "mistral"
            && raw.layer_types.is_none()
            && common
                .raw
                .get("sliding_window")
                .is_some_and(|v| v.is_null())
        {
            vec![None; raw.num_hidden_layers]
        } else {
            windows
        };
        if windows.contains(&Some(0)) {
            return Err(bad("sliding_window", "must be positive".into()));
        }
        Ok(Config {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: kv_heads,
            head_dim,
            hidden_act: Activation::parse(&raw.hidden_act, file, "hidden_act")?,
            max_position_embeddings: raw.max_position_embeddings,
            rms_norm_eps: raw.rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings,
            qkv_bias: raw.attention_bias || model_type == "qwen2",
            o_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            rope_theta,
            rope_scaling,
            windows,
        })
    }
}

impl Config {
    /// The hyper-parameters a GGUF file's metadata gives (`{arch}.*` keys, as transformers'
    /// `integrations/ggml.py` maps them); vocabulary and head tying come from the tensors.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let arch = gguf.architecture().to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let unsupported = |what: String| Error::UnsupportedGguf {
            file: gguf.path().to_path_buf(),
            what,
        };
        let heads = gguf.u32_key(&key("attention.head_count"))? as usize;
        let hidden = gguf.u32_key(&key("embedding_length"))? as usize;
        let layers = gguf.u32_key(&key("block_count"))? as usize;
        let kv_heads = gguf
            .opt_u32(&key("attention.head_count_kv"))?
            .map_or(heads, |h| h as usize);
        let bad = |reason: String| Error::BadGguf {
            file: gguf.path().to_path_buf(),
            reason,
        };
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || layers == 0 {
            return Err(bad(format!(
                "{heads} attention heads, {kv_heads} kv heads, {layers} layers"
            )));
        }
        let head_dim = gguf
            .opt_u32(&key("attention.key_length"))?
            .map_or(hidden / heads, |d| d as usize);
        let rope_scaling = match gguf.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::Default,
            Some("linear") => RopeScaling::Linear {
                factor: gguf
                    .opt_f32(&key("rope.scaling.factor"))?
                    .ok_or_else(|| bad(format!("`{}` is missing", key("rope.scaling.factor"))))?,
            },
            Some(other) => return Err(unsupported(format!("rope scaling `{other}`"))),
        };
        if gguf.tensor_shape("rope_freqs.weight").is_some() {
            return Err(unsupported(
                "rope frequency factors (`rope_freqs.weight`, Llama 3.1 scaling)".into(),
            ));
        }
        let vocab_size = gguf.vocab_size()?;
        let ffn = gguf.u32_key(&key("feed_forward_length"))? as usize;
        Ok(Config {
            vocab_size,
            hidden_size: hidden,
            intermediate_size: ffn,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: kv_heads,
            head_dim,
            hidden_act: Activation::Silu,
            max_position_embeddings: gguf.u32_key(&key("context_length"))? as usize,
            rms_norm_eps: gguf
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-6) as f64,
            tie_word_embeddings: gguf.tensor_shape("lm_head.weight").is_none(),
            qkv_bias: gguf
                .tensor_shape("model.layers.0.self_attn.q_proj.bias")
                .is_some(),
            o_bias: gguf
                .tensor_shape("model.layers.0.self_attn.o_proj.bias")
                .is_some(),
            mlp_bias: false,
            rope_theta: gguf.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0) as f64,
            rope_scaling,
            windows: vec![None; layers],
        })
    }
}

fn linear(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Linear> {
    if bias {
        Linear::load(w, in_dim, out_dim)
    } else {
        Linear::load_no_bias(w, in_dim, out_dim)
    }
}

/// `LlamaAttention`: q/k/v projections, RoPE, causal attention over the cache, o_proj.
///
/// The checkpoint's `q_proj`, `k_proj` and `v_proj` are loaded as one product
/// ([`Linear::concat`]) whose output columns are q, then k, then v.
#[derive(Debug, Clone)]
struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    window: Option<usize>,
}

impl Attention {
    fn load(w: &Weights, cfg: &Config, layer: usize) -> Result<Self> {
        let (h, d) = (cfg.hidden_size, cfg.head_dim);
        let (q_out, kv_out) = (cfg.num_attention_heads * d, cfg.num_key_value_heads * d);
        Ok(Attention {
            qkv_proj: Linear::concat(&[
                linear(&w.pp("q_proj"), h, q_out, cfg.qkv_bias)?,
                linear(&w.pp("k_proj"), h, kv_out, cfg.qkv_bias)?,
                linear(&w.pp("v_proj"), h, kv_out, cfg.qkv_bias)?,
            ])?,
            o_proj: linear(&w.pp("o_proj"), q_out, h, cfg.o_bias)?,
            heads: cfg.num_attention_heads,
            kv_heads: cfg.num_key_value_heads,
            head_dim: d,
            window: cfg.windows[layer],
        })
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
        let (q_width, kv_width) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let qkv = self.qkv_proj.forward(x)?;
        let (cos, sin) = cos_sin;
        let q = RotaryEmbedding::apply_heads(&qkv.narrow(1, 0, q_width)?, self.heads, cos, sin)?;
        let k = qkv.narrow(1, q_width, kv_width)?;
        let k = RotaryEmbedding::apply_heads(&k, self.kv_heads, cos, sin)?;
        let v = qkv.narrow(1, q_width + kv_width, kv_width)?.reshape((
            n,
            self.kv_heads,
            self.head_dim,
        ))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = ragged_causal_attention(
            &q,
            &k,
            &v,
            &batch.cu_seqlens,
            caches,
            layer,
            self.window,
            scale,
            None,
        )?;
        self.o_proj.forward(&out)
    }
}

/// `LlamaMLP`: `down(act(gate(x)) · up(x))` (SwiGLU with SiLU); `gate_proj` and `up_proj`
/// loaded as one product whose output is `[gate | up]`.
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
                linear(&w.pp("gate_proj"), h, i, cfg.mlp_bias)?,
                linear(&w.pp("up_proj"), h, i, cfg.mlp_bias)?,
            ])?,
            down_proj: linear(&w.pp("down_proj"), i, h, cfg.mlp_bias)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.gate_up_proj.forward(x)?;
        self.down_proj.forward(&self.act.gated(&gate_up)?)
    }
}

/// `LlamaDecoderLayer`.
#[derive(Debug, Clone)]
struct Layer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Layer {
    fn load(w: &Weights, cfg: &Config, layer: usize) -> Result<Self> {
        let (h, eps) = (cfg.hidden_size, cfg.rms_norm_eps);
        Ok(Layer {
            input_layernorm: RmsNorm::load(&w.pp("input_layernorm"), h, eps)?,
            self_attn: Attention::load(&w.pp("self_attn"), cfg, layer)?,
            post_attention_layernorm: RmsNorm::load(&w.pp("post_attention_layernorm"), h, eps)?,
            mlp: Mlp::load(&w.pp("mlp"), cfg)?,
        })
    }
}

/// `LlamaModel` / `MistralModel` / `Qwen2Model`: embeddings, layers, final norm.
#[derive(Debug, Clone)]
pub struct LlamaModel {
    embed_tokens: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    rotary: RotaryEmbedding,
}

impl LlamaModel {
    /// Loads `embed_tokens`, `layers.{i}` and `norm` under `w` (the checkpoint's `model.`).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        Ok(LlamaModel {
            embed_tokens: Embedding::load(&w.pp("embed_tokens"), cfg.vocab_size, cfg.hidden_size)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(&w.pp(format!("layers.{i}")), cfg, i))
                .collect::<Result<_>>()?,
            norm: RmsNorm::load(&w.pp("norm"), cfg.hidden_size, cfg.rms_norm_eps)?,
            rotary: RotaryEmbedding::new(cfg.head_dim, cfg.rope_theta, &cfg.rope_scaling),
        })
    }

    /// The final hidden states `[total_tokens, hidden]`; each sequence's keys and values are
    /// appended to its cache.
    pub fn forward(&self, batch: &RaggedBatch, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let device = self.embed_tokens.device();
        let ids = Tensor::from_slice(&batch.input_ids, batch.total_tokens(), device)?;
        let cos_sin = self.rotary.cos_sin(&batch.positions, device)?;
        let mut x = self.embed_tokens.forward(&ids)?;
        // Residual sums into the sublayer's fresh output (`h + x`, equal to `x + h`) on the
        // team: candle's add ran on its own thread pool, a third thread on two cores.
        for (i, layer) in self.layers.iter().enumerate() {
            let h = layer.input_layernorm.forward(&x)?;
            let h = layer.self_attn.forward(&h, &cos_sin, batch, caches, i)?;
            x = add_in_place(h, &x)?;
            let h = layer
                .mlp
                .forward(&layer.post_attention_layernorm.forward(&x)?)?;
            x = add_in_place(h, &x)?;
        }
        self.norm.forward(&x)
    }
}

/// `LlamaForCausalLM` (also `MistralForCausalLM`, `Qwen2ForCausalLM`).
#[derive(Debug, Clone)]
pub struct LlamaForCausalLM {
    model: LlamaModel,
    lm_head: Linear,
    cfg: Config,
}

impl LlamaForCausalLM {
    /// Loads `model.*` and `lm_head` (or ties the head to `model.embed_tokens`).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let model = LlamaModel::load(&w.pp("model"), cfg)?;
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
        Ok(LlamaForCausalLM {
            model,
            lm_head,
            cfg: cfg.clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl DecoderForward for LlamaForCausalLM {
    fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor> {
        super::check_decoder_batch(batch, caches, self.cfg.max_position_embeddings)?;
        let hidden = self.model.forward(batch, caches)?;
        let hidden = super::logit_rows(&hidden, batch, logits)?;
        self.lm_head.forward(&hidden)
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let device = self.model.embed_tokens.device();
        KvCache::new(
            self.cfg.num_hidden_layers,
            self.cfg.num_key_value_heads,
            self.cfg.head_dim,
            capacity,
            candle_core::DType::F32, // activations are f32 whatever the weights
            device,
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

/// Builds `LlamaForCausalLM` (or Mistral's, Qwen2's) from config.json and its checkpoint
/// (the registry's constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn DecoderForward>> {
    Ok(Box::new(LlamaForCausalLM::load(
        w,
        &Config::from_common(common)?,
    )?))
}

/// Builds the model from a GGUF file (`llama`, `qwen2`): hyper-parameters from its metadata,
/// tensors through `w` under transformers' names ([`GGUF_TENSOR_NAMES`]).
pub fn load_gguf(gguf: &GgufFile, w: &Weights) -> Result<Box<dyn DecoderForward>> {
    Ok(Box::new(LlamaForCausalLM::load(
        w,
        &Config::from_gguf(gguf)?,
    )?))
}

/// llama.cpp's tensor names for this architecture (`llm_arch` `LLM_ARCH_LLAMA` and
/// `LLM_ARCH_QWEN2` in llama.cpp's `llama-arch.cpp`) → transformers' names.
pub const GGUF_TENSOR_NAMES: TensorNames = TensorNames {
    whole: &[
        ("token_embd", "model.embed_tokens"),
        ("output_norm", "model.norm"),
        ("output", "lm_head"),
    ],
    layer_prefix: "model.layers",
    layer: &[
        ("attn_norm", "input_layernorm"),
        ("ffn_norm", "post_attention_layernorm"),
        ("attn_q", "self_attn.q_proj"),
        ("attn_k", "self_attn.k_proj"),
        ("attn_v", "self_attn.v_proj"),
        ("attn_output", "self_attn.o_proj"),
        ("ffn_gate", "mlp.gate_proj"),
        ("ffn_up", "mlp.up_proj"),
        ("ffn_down", "mlp.down_proj"),
    ],
};

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Result<Config> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        Config::from_common(&CommonConfig::from_file(&path).unwrap())
    }

    const BASE: &str = r#""hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4"#;

    #[test]
    fn family_differences_come_from_model_type() {
        let qwen2 = config(&format!(r#"{{"model_type": "qwen2", {BASE}}}"#)).unwrap();
        assert!(qwen2.qkv_bias && !qwen2.o_bias);
        assert_eq!(qwen2.windows, [None, None]);
        let mistral = config(&format!(
            r#"{{"model_type": "mistral", "sliding_window": 8, {BASE}}}"#
        ))
        .unwrap();
        assert_eq!(mistral.windows, [Some(8), Some(8)]);
        let full = config(&format!(
            r#"{{"model_type": "mistral", "sliding_window": null, {BASE}}}"#
        ))
        .unwrap();
        assert_eq!(full.windows, [None, None]);
        let typed = config(&format!(
            r#"{{"model_type": "qwen2", "sliding_window": 4, "layer_types": ["full_attention", "sliding_attention"], {BASE}}}"#
        ))
        .unwrap();
        assert_eq!(typed.windows, [None, Some(4)]);
    }

    #[test]
    fn rope_reads_both_config_generations() {
        let v4 = config(&format!(
            r#"{{"model_type": "llama", "rope_theta": 500000.0, "rope_scaling": {{"type": "linear", "factor": 2.0}}, {BASE}}}"#
        ))
        .unwrap();
        assert_eq!(v4.rope_theta, 500000.0);
        assert_eq!(v4.rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let v5 = config(&format!(
            r#"{{"model_type": "llama", "rope_parameters": {{"rope_type": "default", "rope_theta": 1000.0}}, {BASE}}}"#
        ))
        .unwrap();
        assert_eq!(
            (v5.rope_theta, v5.rope_scaling),
            (1000.0, RopeScaling::Default)
        );
    }

    #[test]
    fn bad_head_counts_are_named() {
        let err = config(&format!(
            r#"{{"model_type": "llama", "num_key_value_heads": 3, {BASE}}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(err.contains("num_key_value_heads"), "{err}");
    }
}

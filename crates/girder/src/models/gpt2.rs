//! GPT-2 (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners").
//!
//! Mirrors transformers `models/gpt2/modeling_gpt2.py` (v5.24): token + learned position
//! embeddings → pre-norm blocks (LayerNorm → fused-qkv attention → residual → LayerNorm →
//! MLP → residual) → `ln_f` → the LM head tied to `wte`. The checkpoint stores its
//! projections as `Conv1D`, whose weight is `[in, out]`, the transpose of `nn.Linear`'s.

use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::LayerNorm;
use crate::layers::{layer_norm, ragged_causal_attention, Activation, Embedding, KvCache, Linear};
use crate::models::{DecoderForward, Logits};
use candle_core::Tensor;
use candle_nn::Module;
use serde::Deserialize;

fn default_vocab_size() -> usize {
    50257
}
fn default_n_positions() -> usize {
    1024
}
fn default_n_embd() -> usize {
    768
}
fn default_n_layer() -> usize {
    12
}
fn default_n_head() -> usize {
    12
}
fn default_activation() -> String {
    "gelu_new".into()
}
fn default_eps() -> f64 {
    1e-5
}
fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize)]
struct RawConfig {
    #[serde(default = "default_vocab_size")]
    vocab_size: usize,
    #[serde(default = "default_n_positions")]
    n_positions: usize,
    #[serde(default = "default_n_embd")]
    n_embd: usize,
    #[serde(default = "default_n_layer")]
    n_layer: usize,
    #[serde(default = "default_n_head")]
    n_head: usize,
    #[serde(default)]
    n_inner: Option<usize>,
    #[serde(default = "default_activation")]
    activation_function: String,
    #[serde(default = "default_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "default_true")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
}

/// GPT-2's hyper-parameters (defaults: `GPT2Config`, the 124M model).
#[derive(Debug, Clone)]
pub struct Config {
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    /// The MLP width, `n_inner` or `4 · n_embd`.
    pub n_inner: usize,
    pub activation_function: Activation,
    pub layer_norm_epsilon: f64,
    pub scale_attn_weights: bool,
    pub scale_attn_by_inverse_layer_idx: bool,
}

impl Config {
    /// Parses config.json.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let raw: RawConfig = common.parse_as()?;
        if raw.n_head == 0 || !raw.n_embd.is_multiple_of(raw.n_head) {
            return Err(Error::BadConfig {
                file: common.path.clone(),
                field: "n_head".into(),
                reason: format!("{} does not divide n_embd ({})", raw.n_head, raw.n_embd),
            });
        }
        Ok(Config {
            vocab_size: raw.vocab_size,
            n_positions: raw.n_positions,
            n_embd: raw.n_embd,
            n_layer: raw.n_layer,
            n_head: raw.n_head,
            n_inner: raw.n_inner.unwrap_or(4 * raw.n_embd),
            activation_function: Activation::parse(
                &raw.activation_function,
                &common.path,
                "activation_function",
            )?,
            layer_norm_epsilon: raw.layer_norm_epsilon,
            scale_attn_weights: raw.scale_attn_weights,
            scale_attn_by_inverse_layer_idx: raw.scale_attn_by_inverse_layer_idx,
        })
    }
}

/// Loads a `Conv1D` (`weight [in, out]`, `bias [out]`) as a [`Linear`].
fn conv1d(w: &Weights, in_dim: usize, out_dim: usize) -> Result<Linear> {
    Linear::load_transposed(w, in_dim, out_dim)
}

/// `GPT2Attention`: fused `c_attn` → q, k, v; causal attention over the cache; `c_proj`.
#[derive(Debug, Clone)]
struct Attention {
    c_attn: Linear,
    c_proj: Linear,
    heads: usize,
    head_dim: usize,
    scale: f64,
}

impl Attention {
    fn load(w: &Weights, cfg: &Config, layer: usize) -> Result<Self> {
        let e = cfg.n_embd;
        let head_dim = e / cfg.n_head;
        let mut scale = if cfg.scale_attn_weights {
            1.0 / (head_dim as f64).sqrt()
        } else {
            1.0
        };
        if cfg.scale_attn_by_inverse_layer_idx {
            scale /= (layer + 1) as f64;
        }
        Ok(Attention {
            c_attn: conv1d(&w.pp("c_attn"), e, 3 * e)?,
            c_proj: conv1d(&w.pp("c_proj"), e, e)?,
            heads: cfg.n_head,
            head_dim,
            scale,
        })
    }

    fn forward(
        &self,
        x: &Tensor,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        layer: usize,
    ) -> Result<Tensor> {
        let n = x.dim(0)?;
        let e = self.heads * self.head_dim;
        let qkv = self.c_attn.forward(x)?; // [n, 3 * e]
        let split = |i: usize| -> Result<Tensor> {
            Ok(qkv
                .narrow(1, i * e, e)?
                .contiguous()?
                .reshape((n, self.heads, self.head_dim))?)
        };
        let (q, k, v) = (split(0)?, split(1)?, split(2)?);
        let out = ragged_causal_attention(
            &q,
            &k,
            &v,
            &batch.cu_seqlens,
            caches,
            layer,
            None,
            self.scale,
            None,
        )?;
        self.c_proj.forward(&out)
    }
}

/// `GPT2MLP`: `c_proj(act(c_fc(x)))`.
#[derive(Debug, Clone)]
struct Mlp {
    c_fc: Linear,
    c_proj: Linear,
    act: Activation,
}

/// `GPT2Block`.
#[derive(Debug, Clone)]
struct Block {
    ln_1: LayerNorm,
    attn: Attention,
    ln_2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(w: &Weights, cfg: &Config, layer: usize) -> Result<Self> {
        let (e, eps) = (cfg.n_embd, cfg.layer_norm_epsilon);
        Ok(Block {
            ln_1: layer_norm(&w.pp("ln_1"), e, eps)?,
            attn: Attention::load(&w.pp("attn"), cfg, layer)?,
            ln_2: layer_norm(&w.pp("ln_2"), e, eps)?,
            mlp: Mlp {
                c_fc: conv1d(&w.pp("mlp.c_fc"), e, cfg.n_inner)?,
                c_proj: conv1d(&w.pp("mlp.c_proj"), cfg.n_inner, e)?,
                act: cfg.activation_function,
            },
        })
    }
}

/// `GPT2LMHeadModel`: the transformer and its head, tied to the token embeddings.
#[derive(Debug, Clone)]
pub struct GPT2LMHeadModel {
    wte: Embedding,
    /// The LM head, tied to `wte`, as a layer of its own when the table is kept in bf16,
    /// f16 or quantized; an f32 table is multiplied through its transposed view, without a
    /// copy.
    lm_head: Option<Linear>,
    wpe: Embedding,
    h: Vec<Block>,
    ln_f: LayerNorm,
    cfg: Config,
}

impl GPT2LMHeadModel {
    /// Loads `transformer.*` (or the unprefixed names of a `GPT2Model` checkpoint).
    pub fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let t = if w.contains("transformer.wte.weight") {
            w.pp("transformer")
        } else {
            w.clone()
        };
        let wte = Embedding::load(&t.pp("wte"), cfg.vocab_size, cfg.n_embd)?;
        let lm_head = match wte.is_dense_f32() {
            true => None,
            false => Some(wte.tied_projection(None)?),
        };
        Ok(GPT2LMHeadModel {
            wte,
            lm_head,
            wpe: Embedding::load(&t.pp("wpe"), cfg.n_positions, cfg.n_embd)?,
            h: (0..cfg.n_layer)
                .map(|i| Block::load(&t.pp(format!("h.{i}")), cfg, i))
                .collect::<Result<_>>()?,
            ln_f: layer_norm(&t.pp("ln_f"), cfg.n_embd, cfg.layer_norm_epsilon)?,
            cfg: cfg.clone(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }
}

impl DecoderForward for GPT2LMHeadModel {
    fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor> {
        super::check_decoder_batch(batch, caches, self.cfg.n_positions)?;
        let device = self.wte.device();
        let n = batch.total_tokens();
        let ids = Tensor::from_slice(&batch.input_ids, n, device)?;
        let positions = Tensor::from_slice(&batch.positions, n, device)?;
        let mut x = (self.wte.forward(&ids)? + self.wpe.forward(&positions)?)?;
        for (i, block) in self.h.iter().enumerate() {
            let a = block
                .attn
                .forward(&block.ln_1.forward(&x)?, batch, caches, i)?;
            x = (x + a)?;
            let h = block.mlp.c_fc.forward(&block.ln_2.forward(&x)?)?;
            let h = block.mlp.c_proj.forward(&block.mlp.act.forward(&h)?)?;
            x = (x + h)?;
        }
        let x = self.ln_f.forward(&x)?;
        let x = super::logit_rows(&x, batch, logits)?;
        crate::layers::cpu::team::rest(); // candle's matmul runs on rayon's threads
        match &self.lm_head {
            Some(head) => head.forward(&x),
            None => Ok(x.matmul(&self.wte.dense_table()?.t()?)?),
        }
    }

    fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        let table = &self.wte;
        KvCache::new(
            self.cfg.n_layer,
            self.cfg.n_head,
            self.cfg.n_embd / self.cfg.n_head,
            capacity,
            candle_core::DType::F32, // activations are f32 whatever the weights
            table.device(),
        )
    }

    fn context_length(&self) -> usize {
        self.cfg.n_positions
    }

    fn vocab_size(&self) -> usize {
        self.cfg.vocab_size
    }

    fn input_embeddings(&self) -> &Embedding {
        &self.wte
    }
}

/// Builds `GPT2LMHeadModel` from config.json and its checkpoint (the registry's constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn DecoderForward>> {
    Ok(Box::new(GPT2LMHeadModel::load(
        w,
        &Config::from_common(common)?,
    )?))
}

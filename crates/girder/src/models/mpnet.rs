//! MPNet (Song et al., 2020, <https://arxiv.org/abs/2004.09297>), the base of
//! sentence-transformers' all-mpnet-base-v2.
//!
//! Follows transformers' `models/mpnet/modeling_mpnet.py`: embeddings (words and positions
//! counted after `padding_idx`, as RoBERTa; no token types) → layers of self-attention with
//! a relative position bias and a feed-forward block, each with a residual LayerNorm →
//! pooler and heads. The bias is T5's bucketed relative position: one learned value per
//! head and bucket (`relative_attention_bias`, owned by the encoder and shared by every
//! layer), added to the attention scores before the softmax.

use super::bert::Pooler;
use super::heads::{first_token_heads, WithHead};
use super::{base_weights, positions_after_padding, EncoderForward, EncoderOutput, Head};
use crate::batch::{BatchTensors, RaggedBatch};
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::{
    add_in_place, layer_norm, packed_self_attention, Activation, Dropout, Embedding, LayerNorm,
    Linear,
};
use candle_core::Tensor;
use candle_nn::Module;
use serde::Deserialize;

/// Where head classes keep `MPNetModel`'s tensors (transformers' `base_model_prefix`).
pub const BASE_MODEL_PREFIX: &str = "mpnet";

/// MPNetConfig's fields, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::num_hidden_layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::num_attention_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::relative_attention_num_buckets")]
    pub relative_attention_num_buckets: usize,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    /// girder's override of the heads' dropout (`girder train --classifier-dropout`);
    /// transformers' MPNet heads use `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        30527
    }
    pub fn hidden_size() -> usize {
        768
    }
    pub fn num_hidden_layers() -> usize {
        12
    }
    pub fn num_attention_heads() -> usize {
        12
    }
    pub fn intermediate_size() -> usize {
        3072
    }
    pub fn hidden_act() -> String {
        "gelu".into()
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn relative_attention_num_buckets() -> usize {
        32
    }
    pub fn dropout() -> f64 {
        0.1
    }
}

/// The distance from which relative positions share logarithmically wider buckets
/// (`max_distance` of `relative_position_bucket`, fixed at 128 in transformers).
const MAX_DISTANCE: usize = 128;

/// The buckets positions are sorted into. transformers' `compute_position_bias` uses its
/// default `num_buckets=32` whatever `relative_attention_num_buckets` says (that sets only
/// the rows of the table), so girder does too.
const NUM_BUCKETS: usize = 32;

/// `MPNetEmbeddings.padding_idx`: transformers fixes it at 1, whatever `pad_token_id` says.
pub const PADDING_IDX: u32 = 1;

impl Config {
    /// Parses and validates the MPNet view of config.json.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let cfg: Config = common.parse_as()?;
        let bad = |field: &str, reason: String| Error::BadConfig {
            file: common.path.clone(),
            field: field.into(),
            reason,
        };
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            return Err(bad(
                "num_attention_heads",
                format!(
                    "hidden_size {} is not a multiple of num_attention_heads {}",
                    cfg.hidden_size, cfg.num_attention_heads
                ),
            ));
        }
        if cfg.relative_attention_num_buckets < NUM_BUCKETS {
            return Err(bad(
                "relative_attention_num_buckets",
                format!(
                    "{} rows, but the position bias looks up {NUM_BUCKETS} buckets (transformers' `compute_position_bias` default)",
                    cfg.relative_attention_num_buckets
                ),
            ));
        }
        Ok(cfg)
    }

    fn activation(&self, common: &CommonConfig) -> Result<Activation> {
        Activation::parse(&self.hidden_act, &common.path, "hidden_act")
    }

    fn classifier_dropout(&self) -> Dropout {
        Dropout::new(self.classifier_dropout.unwrap_or(self.hidden_dropout_prob))
    }
}

/// The bucket of a key `relative` positions after its query (negative: before it), as
/// transformers' `MPNetEncoder.relative_position_bucket`: half the buckets for keys after
/// the query, half for keys before; in each half, exact distances below a quarter of the
/// buckets, then logarithmically wider buckets up to [`MAX_DISTANCE`], which the last shares.
pub fn relative_position_bucket(relative: i64) -> u32 {
    let half = (NUM_BUCKETS / 2) as i64;
    // transformers negates first: `n = -relative_position`; `n < 0` (a later key) picks the
    // upper half.
    let n = -relative;
    let mut bucket = if n < 0 { half } else { 0 };
    let n = n.abs();
    let max_exact = half / 2;
    bucket += if n < max_exact {
        n
    } else {
        // In f32, as torch computes `log(n.float() / max_exact) / log(max_distance / max_exact)`,
        // truncated towards zero by `.to(torch.long)`.
        let scaled = (n as f32 / max_exact as f32).ln()
            / (MAX_DISTANCE as f32 / max_exact as f32).ln()
            * (half - max_exact) as f32;
        (max_exact + scaled as i64).min(half - 1)
    };
    bucket as u32
}

/// Word and position embeddings, then LayerNorm and dropout (`MPNetEmbeddings`).
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
    padding_idx: u32,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        Ok(Embeddings {
            word_embeddings: Embedding::load(&w.pp("word_embeddings"), cfg.vocab_size, h)?,
            position_embeddings: Embedding::load(
                &w.pp("position_embeddings"),
                cfg.max_position_embeddings,
                h,
            )?,
            layer_norm: layer_norm(&w.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            padding_idx: PADDING_IDX,
        })
    }

    fn forward(&self, batch: &RaggedBatch, input_ids: &Tensor) -> Result<Tensor> {
        let positions = positions_after_padding(batch, self.padding_idx);
        let positions = Tensor::from_vec(positions, batch.total_tokens(), input_ids.device())?;
        let x = self.word_embeddings.forward(input_ids)?;
        let x = (x + self.position_embeddings.forward(&positions)?)?;
        self.dropout.forward(self.layer_norm.forward(&x)?)
    }
}

/// `MPNetAttention`: `MPNetSelfAttention` (`q`, `k`, `v` loaded as one product, scores plus
/// the position bias, `o`), then the residual LayerNorm.
struct Attention {
    qkv: Linear,
    probs_dropout: Dropout,
    o: Linear,
    dropout: Dropout,
    layer_norm: LayerNorm,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        let attn = w.pp("attn");
        Ok(Attention {
            qkv: Linear::concat(&[
                Linear::load(&attn.pp("q"), h, h)?,
                Linear::load(&attn.pp("k"), h, h)?,
                Linear::load(&attn.pp("v"), h, h)?,
            ])?,
            probs_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            o: Linear::load(&attn.pp("o"), h, h)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            layer_norm: layer_norm(&w.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// `position_bias`: `[heads, max_seqlen, max_seqlen]`.
    fn forward(&self, x: &Tensor, batch: &BatchTensors, position_bias: &Tensor) -> Result<Tensor> {
        let context = packed_self_attention(
            &self.qkv.forward(x)?,
            self.num_heads,
            self.head_dim,
            &batch.cu_seqlens,
            Some(position_bias),
            &self.probs_dropout,
        )?;
        let out = self.dropout.forward(self.o.forward(&context)?)?;
        Ok(self.layer_norm.forward(&add_in_place(out, x)?)?)
    }
}

/// One layer: attention, then `MPNetIntermediate` + `MPNetOutput` with its residual LayerNorm.
struct Layer {
    attention: Attention,
    intermediate: Linear,
    activation: Activation,
    output: Linear,
    dropout: Dropout,
    output_norm: LayerNorm,
}

impl Layer {
    fn load(w: &Weights, cfg: &Config, activation: Activation) -> Result<Self> {
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Layer {
            attention: Attention::load(&w.pp("attention"), cfg)?,
            intermediate: Linear::load(&w.pp("intermediate.dense"), h, i)?,
            activation,
            output: Linear::load(&w.pp("output.dense"), i, h)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            output_norm: layer_norm(&w.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
        })
    }

    fn forward(&self, x: &Tensor, batch: &BatchTensors, position_bias: &Tensor) -> Result<Tensor> {
        let attended = self.attention.forward(x, batch, position_bias)?;
        let h = self
            .activation
            .forward_owned(self.intermediate.forward(&attended)?)?;
        let out = self.dropout.forward(self.output.forward(&h)?)?;
        Ok(self.output_norm.forward(&add_in_place(out, &attended)?)?)
    }
}

/// The layers and the relative position bias they share (`MPNetEncoder`).
struct Encoder {
    layers: Vec<Layer>,
    /// `[relative_attention_num_buckets, heads]`
    relative_attention_bias: Embedding,
}

impl Encoder {
    fn load(w: &Weights, cfg: &Config, activation: Activation) -> Result<Self> {
        Ok(Encoder {
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::load(&w.pp(format!("layer.{i}")), cfg, activation))
                .collect::<Result<_>>()?,
            relative_attention_bias: Embedding::load(
                &w.pp("relative_attention_bias"),
                cfg.relative_attention_num_buckets,
                cfg.num_attention_heads,
            )?,
        })
    }

    /// The bias of query `i` for key `j`, `[heads, len, len]` (`compute_position_bias`). It
    /// depends only on `j - i`, so a sequence shorter than `len` uses the top-left block.
    fn position_bias(&self, len: usize) -> Result<Tensor> {
        let buckets: Vec<u32> = (0..len as i64)
            .flat_map(|i| (0..len as i64).map(move |j| relative_position_bucket(j - i)))
            .collect();
        let table = &self.relative_attention_bias;
        let buckets = Tensor::from_vec(buckets, len * len, table.device())?;
        let values = self.relative_attention_bias.forward(&buckets)?; // [len · len, heads]
        let heads = values.dim(1)?;
        Ok(values
            .reshape((len, len, heads))?
            .permute((2, 0, 1))?
            .contiguous()?)
    }

    fn forward(&self, x: Tensor, batch: &BatchTensors, max_seqlen: usize) -> Result<Tensor> {
        let bias = self.position_bias(max_seqlen)?;
        self.layers
            .iter()
            .try_fold(x, |x, layer| layer.forward(&x, batch, &bias))
    }
}

/// The bare encoder (`MPNetModel`): last hidden state and, when the checkpoint has one, the
/// pooler output.
pub struct MPNetModel {
    embeddings: Embeddings,
    encoder: Encoder,
    pooler: Option<Pooler>,
    max_position_embeddings: usize,
}

impl MPNetModel {
    /// `w` is the checkpoint root; the `mpnet.` prefix of head checkpoints is found here.
    pub fn load(
        w: &Weights,
        cfg: &Config,
        common: &CommonConfig,
        with_pooler: bool,
    ) -> Result<Self> {
        let w = base_weights(w, BASE_MODEL_PREFIX);
        // `MPNetPooler` is BERT's: `tanh(W · h[<s>] + b)`.
        let pooler = Pooler::load_if_present(&w, cfg.hidden_size, with_pooler)?;
        Ok(MPNetModel {
            embeddings: Embeddings::load(&w.pp("embeddings"), cfg)?,
            encoder: Encoder::load(&w.pp("encoder"), cfg, cfg.activation(common)?)?,
            pooler,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }
}

impl EncoderForward for MPNetModel {
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        let t = batch.to_tensors(self.word_embeddings().device())?;
        let x = self.embeddings.forward(batch, &t.input_ids)?;
        let last_hidden_state = self.encoder.forward(x, &t, batch.max_seqlen)?;
        Pooler::output(self.pooler.as_ref(), last_hidden_state, batch)
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.embeddings.word_embeddings
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }
}

/// Loads `MPNetModel` (with its pooler), `MPNetForSequenceClassification`
/// (`MPNetClassificationHead`: dense + tanh on `<s>`, then `out_proj`), `…ForTokenClassification`
/// (`classifier` on every token) or `…ForMaskedLM` (`lm_head`: dense, exact GELU, LayerNorm,
/// decoder tied to the word embeddings, as `MPNetLMHead`).
pub fn load(w: &Weights, common: &CommonConfig, head: Head) -> Result<Box<dyn EncoderForward>> {
    let cfg = Config::from_common(common)?;
    let (h, labels) = (cfg.hidden_size, common.id2label.len());
    let mpnet = MPNetModel::load(w, &cfg, common, head == Head::Base)?;
    let dropout = cfg.classifier_dropout();
    let eps = cfg.layer_norm_eps;
    match first_token_heads(w, head, h, labels, dropout, eps, mpnet.word_embeddings())? {
        None => Ok(Box::new(mpnet)),
        Some(head) => Ok(Box::new(WithHead { base: mpnet, head })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_follow_transformers() {
        // transformers' MPNetEncoder.relative_position_bucket on these key - query offsets
        // (the fixtures' expected.json holds every offset up to ±max_position_embeddings).
        let relative = [
            -200, -128, -91, -90, -20, -8, -7, -1, 0, 1, 7, 8, 20, 90, 91, 200,
        ];
        let expected = [15, 15, 15, 14, 10, 8, 7, 1, 0, 17, 23, 24, 26, 30, 31, 31];
        let got: Vec<u32> = relative
            .iter()
            .map(|&r| relative_position_bucket(r))
            .collect();
        assert_eq!(got, expected);
    }
}

//! DistilBERT (Sanh et al., 2019, <https://arxiv.org/abs/1910.01108>).
//!
//! Follows transformers' `models/distilbert/modeling_distilbert.py`: embeddings (words and
//! positions, no token types) → layers of attention and feed-forward, each with a residual
//! LayerNorm → heads. Its config names differ from BERT's (`dim`, `n_layers`, `hidden_dim`).

use super::heads::{tied_decoder, EncoderHead, WithHead};
use super::{base_weights, EncoderForward, EncoderOutput, Head};
use crate::batch::{BatchTensors, RaggedBatch};
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::LayerNorm;
use crate::layers::{
    add_in_place, layer_norm, packed_self_attention, Activation, Dropout, Embedding, Linear,
};
use candle_core::Tensor;
use candle_nn::Module;
use serde::Deserialize;

/// Where head classes keep `DistilBertModel`'s tensors (transformers' `base_model_prefix`).
pub const BASE_MODEL_PREFIX: &str = "distilbert";

/// transformers hard-codes DistilBERT's LayerNorm epsilon.
const LAYER_NORM_EPS: f64 = 1e-12;

/// DistilBertConfig's fields, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct Config {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::dim")]
    pub dim: usize,
    #[serde(default = "defaults::n_layers")]
    pub n_layers: usize,
    #[serde(default = "defaults::n_heads")]
    pub n_heads: usize,
    #[serde(default = "defaults::hidden_dim")]
    pub hidden_dim: usize,
    #[serde(default = "defaults::activation")]
    pub activation: String,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::dropout")]
    pub dropout: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_dropout: f64,
    #[serde(default = "defaults::seq_classif_dropout")]
    pub seq_classif_dropout: f64,
    /// girder's override of the heads' dropout (`girder train --classifier-dropout`);
    /// transformers' DistilBERT reads `seq_classif_dropout` and `dropout` instead.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        30522
    }
    pub fn dim() -> usize {
        768
    }
    pub fn n_layers() -> usize {
        6
    }
    pub fn n_heads() -> usize {
        12
    }
    pub fn hidden_dim() -> usize {
        3072
    }
    pub fn activation() -> String {
        "gelu".into()
    }
    pub fn max_position_embeddings() -> usize {
        512
    }
    pub fn dropout() -> f64 {
        0.1
    }
    pub fn seq_classif_dropout() -> f64 {
        0.2
    }
}

impl Config {
    /// Parses and validates the DistilBERT view of config.json.
    pub fn from_common(common: &CommonConfig) -> Result<Self> {
        let cfg: Config = common.parse_as()?;
        if cfg.n_heads == 0 || !cfg.dim.is_multiple_of(cfg.n_heads) {
            return Err(Error::BadConfig {
                file: common.path.clone(),
                field: "n_heads".into(),
                reason: format!(
                    "dim {} is not a multiple of n_heads {}",
                    cfg.dim, cfg.n_heads
                ),
            });
        }
        Ok(cfg)
    }

    fn activation(&self, common: &CommonConfig) -> Result<Activation> {
        Activation::parse(&self.activation, &common.path, "activation")
    }
}

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        Ok(Embeddings {
            word_embeddings: Embedding::load(&w.pp("word_embeddings"), cfg.vocab_size, cfg.dim)?,
            position_embeddings: Embedding::load(
                &w.pp("position_embeddings"),
                cfg.max_position_embeddings,
                cfg.dim,
            )?,
            layer_norm: layer_norm(&w.pp("LayerNorm"), cfg.dim, LAYER_NORM_EPS)?,
            dropout: Dropout::new(cfg.dropout),
        })
    }

    fn forward(&self, t: &BatchTensors) -> Result<Tensor> {
        let x = self.word_embeddings.forward(&t.input_ids)?;
        let x = (x + self.position_embeddings.forward(&t.positions)?)?;
        self.dropout.forward(self.layer_norm.forward(&x)?)
    }
}

/// `MultiHeadSelfAttention`: q/k/v projections (loaded as one product), per-sequence
/// attention, `out_lin`.
struct Attention {
    qkv: Linear,
    dropout: Dropout,
    out_lin: Linear,
    n_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let d = cfg.dim;
        Ok(Attention {
            qkv: Linear::concat(&[
                Linear::load(&w.pp("q_lin"), d, d)?,
                Linear::load(&w.pp("k_lin"), d, d)?,
                Linear::load(&w.pp("v_lin"), d, d)?,
            ])?,
            dropout: Dropout::new(cfg.attention_dropout),
            out_lin: Linear::load(&w.pp("out_lin"), d, d)?,
            n_heads: cfg.n_heads,
            head_dim: d / cfg.n_heads,
        })
    }

    fn forward(&self, x: &Tensor, t: &BatchTensors) -> Result<Tensor> {
        let context = packed_self_attention(
            &self.qkv.forward(x)?,
            self.n_heads,
            self.head_dim,
            &t.cu_seqlens,
            None,
            &self.dropout,
        )?;
        self.out_lin.forward(&context)
    }
}

/// `TransformerBlock`: attention + `sa_layer_norm`, feed-forward (`ffn.lin1`, activation,
/// `ffn.lin2`) + `output_layer_norm`.
struct Layer {
    attention: Attention,
    sa_layer_norm: LayerNorm,
    lin1: Linear,
    activation: Activation,
    lin2: Linear,
    dropout: Dropout,
    output_layer_norm: LayerNorm,
}

impl Layer {
    fn load(w: &Weights, cfg: &Config, activation: Activation) -> Result<Self> {
        Ok(Layer {
            attention: Attention::load(&w.pp("attention"), cfg)?,
            sa_layer_norm: layer_norm(&w.pp("sa_layer_norm"), cfg.dim, LAYER_NORM_EPS)?,
            lin1: Linear::load(&w.pp("ffn.lin1"), cfg.dim, cfg.hidden_dim)?,
            activation,
            lin2: Linear::load(&w.pp("ffn.lin2"), cfg.hidden_dim, cfg.dim)?,
            dropout: Dropout::new(cfg.dropout),
            output_layer_norm: layer_norm(&w.pp("output_layer_norm"), cfg.dim, LAYER_NORM_EPS)?,
        })
    }

    fn forward(&self, x: &Tensor, t: &BatchTensors) -> Result<Tensor> {
        let attended = self
            .sa_layer_norm
            .forward(&add_in_place(self.attention.forward(x, t)?, x)?)?;
        let h = self
            .activation
            .forward_owned(self.lin1.forward(&attended)?)?;
        let out = self.dropout.forward(self.lin2.forward(&h)?)?;
        Ok(self
            .output_layer_norm
            .forward(&add_in_place(out, &attended)?)?)
    }
}

/// The bare encoder (`DistilBertModel`); it has no pooler.
pub struct DistilBertModel {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    max_position_embeddings: usize,
}

impl DistilBertModel {
    /// `w` is the checkpoint root; the `distilbert.` prefix of head checkpoints is found here.
    pub fn load(w: &Weights, cfg: &Config, common: &CommonConfig) -> Result<Self> {
        let w = base_weights(w, BASE_MODEL_PREFIX);
        let activation = cfg.activation(common)?;
        let layers = (0..cfg.n_layers)
            .map(|i| Layer::load(&w.pp(format!("transformer.layer.{i}")), cfg, activation))
            .collect::<Result<_>>()?;
        Ok(DistilBertModel {
            embeddings: Embeddings::load(&w.pp("embeddings"), cfg)?,
            layers,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }
}

impl EncoderForward for DistilBertModel {
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        let t = batch.to_tensors(self.word_embeddings().device())?;
        let x = self.embeddings.forward(&t)?;
        let last_hidden_state = self
            .layers
            .iter()
            .try_fold(x, |x, layer| layer.forward(&x, &t))?;
        Ok(EncoderOutput {
            last_hidden_state,
            pooler_output: None,
        })
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.embeddings.word_embeddings
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }
}

/// Loads `DistilBertModel`, `DistilBertForSequenceClassification` (`pre_classifier` + ReLU
/// on `[CLS]`, then `classifier`), `DistilBertForTokenClassification` (`classifier` on every
/// token) or `DistilBertForMaskedLM` (`vocab_transform`, activation, `vocab_layer_norm`,
/// then `vocab_projector` tied to the word embeddings).
pub fn load(w: &Weights, common: &CommonConfig, head: Head) -> Result<Box<dyn EncoderForward>> {
    let cfg = &Config::from_common(common)?;
    let (d, labels) = (cfg.dim, common.id2label.len());
    let distilbert = DistilBertModel::load(w, cfg, common)?;
    let head = match head {
        Head::Base => return Ok(Box::new(distilbert)),
        Head::SequenceClassification => EncoderHead::FirstToken {
            input_dropout: Dropout::new(0.0),
            dense: Linear::load(&w.pp("pre_classifier"), d, d)?,
            activation: Activation::Relu,
            dropout: Dropout::new(cfg.classifier_dropout.unwrap_or(cfg.seq_classif_dropout)),
            out_proj: Linear::load(&w.pp("classifier"), d, labels)?,
        },
        Head::TokenClassification => EncoderHead::PerToken {
            dropout: Dropout::new(cfg.classifier_dropout.unwrap_or(cfg.dropout)),
            classifier: Linear::load(&w.pp("classifier"), d, labels)?,
        },
        Head::MaskedLM => EncoderHead::MaskedLm {
            dense: Linear::load(&w.pp("vocab_transform"), d, d)?,
            activation: cfg.activation(common)?,
            norm: layer_norm(&w.pp("vocab_layer_norm"), d, LAYER_NORM_EPS)?,
            decoder: tied_decoder(
                &w.pp("vocab_projector"),
                "weight",
                &["bias"],
                distilbert.word_embeddings(),
            )?,
        },
        Head::CausalLM | Head::Seq2SeqLM | Head::SpeechSeq2Seq => {
            return Err(Error::unsupported_head("DistilBERT", head.name()))
        }
    };
    Ok(Box::new(WithHead {
        base: distilbert,
        head,
    }))
}

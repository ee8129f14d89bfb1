//! BERT (Devlin et al., 2018, <https://arxiv.org/abs/1810.04805>), also MiniLM checkpoints.
//!
//! Follows transformers' `models/bert/modeling_bert.py`: embeddings → self-attention →
//! feed-forward → layers → pooler → heads. Runs on ragged batches: every block sees
//! `[total_tokens, hidden]`, attention runs per sequence (see [`crate::layers`]).
//! RoBERTa reuses the `Encoder` and [`Config`] from here and brings its own embeddings and heads.

use super::heads::{first_tokens, tied_decoder, EncoderHead, WithHead};
use super::{base_weights, EncoderForward, EncoderOutput, Head};
use crate::batch::{BatchTensors, RaggedBatch};
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::LayerNorm;
use crate::layers::{
    add_in_place, layer_norm, packed_first_token_attention, packed_self_attention, Activation,
    Dropout, Embedding, Linear,
};
use candle_core::Tensor;
use candle_nn::Module;
use serde::Deserialize;

/// Where head classes keep `BertModel`'s tensors (transformers' `base_model_prefix`).
pub const BASE_MODEL_PREFIX: &str = "bert";

/// BertConfig's fields, with transformers' defaults.
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
    #[serde(default = "defaults::type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "defaults::position_embedding_type")]
    pub position_embedding_type: String,
    #[serde(default = "defaults::dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "defaults::dropout")]
    pub attention_probs_dropout_prob: f64,
    /// The heads' dropout; `None`: `hidden_dropout_prob`.
    #[serde(default)]
    pub classifier_dropout: Option<f64>,
}

mod defaults {
    pub fn vocab_size() -> usize {
        30522
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
    pub fn type_vocab_size() -> usize {
        2
    }
    pub fn layer_norm_eps() -> f64 {
        1e-12
    }
    pub fn position_embedding_type() -> String {
        "absolute".into()
    }
    pub fn dropout() -> f64 {
        0.1
    }
}

impl Config {
    /// Parses and validates the BERT view of config.json.
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
        if cfg.position_embedding_type != "absolute" {
            return Err(bad(
                "position_embedding_type",
                format!(
                    "`{}` is not supported (only `absolute`)",
                    cfg.position_embedding_type
                ),
            ));
        }
        Ok(cfg)
    }

    pub(crate) fn activation(&self, common: &CommonConfig) -> Result<Activation> {
        Activation::parse(&self.hidden_act, &common.path, "hidden_act")
    }

    /// The classification heads' dropout (`classifier_dropout`, else `hidden_dropout_prob`).
    pub(crate) fn classifier_dropout(&self) -> Dropout {
        Dropout::new(self.classifier_dropout.unwrap_or(self.hidden_dropout_prob))
    }
}

/// word + position + token type embeddings, then LayerNorm and dropout.
struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
    layer_norm: LayerNorm,
    dropout: Dropout,
}

impl Embeddings {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        Ok(Embeddings {
            word_embeddings: Embedding::load(
                &w.pp("word_embeddings"),
                cfg.vocab_size,
                cfg.hidden_size,
            )?,
            position_embeddings: Embedding::load(
                &w.pp("position_embeddings"),
                cfg.max_position_embeddings,
                cfg.hidden_size,
            )?,
            token_type_embeddings: Embedding::load(
                &w.pp("token_type_embeddings"),
                cfg.type_vocab_size,
                cfg.hidden_size,
            )?,
            layer_norm: layer_norm(&w.pp("LayerNorm"), cfg.hidden_size, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
        })
    }

    /// `[total_tokens]` ids, types and positions → `[total_tokens, hidden]`.
    fn forward(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        positions: &Tensor,
    ) -> Result<Tensor> {
        let x = self.word_embeddings.forward(input_ids)?;
        let x = (x + self.token_type_embeddings.forward(token_type_ids)?)?;
        let x = (x + self.position_embeddings.forward(positions)?)?;
        self.dropout.forward(self.layer_norm.forward(&x)?)
    }
}

/// Multi-head self-attention plus its output projection and residual LayerNorm
/// (`BertAttention` = `BertSelfAttention` + `BertSelfOutput`). The checkpoint's `query`,
/// `key` and `value` are loaded as one product whose output columns are q, k, v.
struct Attention {
    qkv: Linear,
    probs_dropout: Dropout,
    output: Linear,
    dropout: Dropout,
    output_norm: LayerNorm,
    num_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn load(w: &Weights, cfg: &Config) -> Result<Self> {
        let h = cfg.hidden_size;
        let sa = w.pp("self");
        Ok(Attention {
            qkv: Linear::concat(&[
                Linear::load(&sa.pp("query"), h, h)?,
                Linear::load(&sa.pp("key"), h, h)?,
                Linear::load(&sa.pp("value"), h, h)?,
            ])?,
            probs_dropout: Dropout::new(cfg.attention_probs_dropout_prob),
            output: Linear::load(&w.pp("output.dense"), h, h)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            output_norm: layer_norm(&w.pp("output.LayerNorm"), h, cfg.layer_norm_eps)?,
            num_heads: cfg.num_attention_heads,
            head_dim: h / cfg.num_attention_heads,
        })
    }

    /// `first_tokens`: each sequence's first-token row only (`[num_seqs, hidden]`), which
    /// still attends over its whole sequence.
    fn forward(&self, x: &Tensor, batch: &BatchTensors, first_tokens: bool) -> Result<Tensor> {
        let (context, residual) = if first_tokens {
            let firsts = Tensor::new(&batch.cu_seqlens[..batch.cu_seqlens.len() - 1], x.device())?;
            let first_rows = x.index_select(&firsts, 0)?;
            // The keys and values of every token, the queries of the first tokens only.
            let h = self.num_heads * self.head_dim;
            let context = packed_first_token_attention(
                &self.qkv.forward_columns(&first_rows, 0..h)?,
                &self.qkv.forward_columns(x, h..3 * h)?,
                self.num_heads,
                self.head_dim,
                &batch.cu_seqlens,
                &self.probs_dropout,
            )?;
            (context, first_rows)
        } else {
            let context = packed_self_attention(
                &self.qkv.forward(x)?,
                self.num_heads,
                self.head_dim,
                &batch.cu_seqlens,
                None,
                &self.probs_dropout,
            )?;
            (context, x.clone())
        };
        let out = self.dropout.forward(self.output.forward(&context)?)?;
        Ok(self.output_norm.forward(&add_in_place(out, &residual)?)?)
    }
}

/// One transformer layer: attention, then the feed-forward block with its residual LayerNorm
/// (`BertIntermediate` + `BertOutput`).
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
        Ok(Layer {
            attention: Attention::load(&w.pp("attention"), cfg)?,
            intermediate: Linear::load(
                &w.pp("intermediate.dense"),
                cfg.hidden_size,
                cfg.intermediate_size,
            )?,
            activation,
            output: Linear::load(
                &w.pp("output.dense"),
                cfg.intermediate_size,
                cfg.hidden_size,
            )?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            output_norm: layer_norm(
                &w.pp("output.LayerNorm"),
                cfg.hidden_size,
                cfg.layer_norm_eps,
            )?,
        })
    }

    /// `first_tokens`: each sequence's first-token row only, as [`Attention::forward`].
    fn forward(&self, x: &Tensor, batch: &BatchTensors, first_tokens: bool) -> Result<Tensor> {
        let attended = self.attention.forward(x, batch, first_tokens)?;
        let h = self
            .activation
            .forward_owned(self.intermediate.forward(&attended)?)?;
        let out = self.dropout.forward(self.output.forward(&h)?)?;
        Ok(self.output_norm.forward(&add_in_place(out, &attended)?)?)
    }
}

/// The stack of layers (`BertEncoder`), shared with RoBERTa.
pub(crate) struct Encoder {
    layers: Vec<Layer>,
}

impl Encoder {
    pub(crate) fn load(w: &Weights, cfg: &Config, activation: Activation) -> Result<Self> {
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| Layer::load(&w.pp(format!("layer.{i}")), cfg, activation))
            .collect::<Result<_>>()?;
        Ok(Encoder { layers })
    }

    pub(crate) fn forward(&self, x: Tensor, batch: &BatchTensors) -> Result<Tensor> {
        self.layers
            .iter()
            .try_fold(x, |x, layer| layer.forward(&x, batch, false))
    }

    /// The last layer alone on `x`, the states entering it, at each sequence's first token:
    /// `[num_seqs, hidden]`. A classifier reads nothing else of the last layer, so training
    /// it on cached states needs only these rows (`girder train --method top-layer`).
    pub(crate) fn last_layer_first_tokens(
        &self,
        x: &Tensor,
        batch: &RaggedBatch,
    ) -> Result<Tensor> {
        let Some(last) = self.layers.last() else {
            return Err(Error::Unsupported {
                what: "training the last layer of an encoder with no layers".into(),
            });
        };
        last.forward(x, &batch.to_tensors(x.device())?, true)
    }
}

/// `tanh(W · h[CLS] + b)` (`BertPooler`).
pub(crate) struct Pooler {
    dense: Linear,
}

impl Pooler {
    /// The pooler under `w` (the base model's root) when `wanted` and the checkpoint has one,
    /// or when `w` creates missing tensors (a head trained from a checkpoint without one).
    pub(crate) fn load_if_present(
        w: &Weights,
        hidden: usize,
        wanted: bool,
    ) -> Result<Option<Self>> {
        if !wanted || !(w.contains("pooler.dense.weight") || w.creates_missing()) {
            return Ok(None);
        }
        Ok(Some(Pooler {
            dense: Linear::load(&w.pp("pooler.dense"), hidden, hidden)?,
        }))
    }

    /// `hidden`: `[total_tokens, h]` → `[num_seqs, h]`.
    pub(crate) fn forward(&self, hidden: &Tensor, batch: &RaggedBatch) -> Result<Tensor> {
        let first = first_tokens(hidden, batch)?;
        Ok(self.dense.forward(&first)?.tanh()?)
    }

    /// The encoder's output: `last_hidden_state` and, with a pooler, its pooled first tokens.
    pub(crate) fn output(
        pooler: Option<&Pooler>,
        last_hidden_state: Tensor,
        batch: &RaggedBatch,
    ) -> Result<EncoderOutput> {
        let pooler_output = match pooler {
            Some(p) => Some(p.forward(&last_hidden_state, batch)?),
            None => None,
        };
        Ok(EncoderOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}

/// The bare encoder: last hidden state and, when the checkpoint has one, the pooler output.
pub struct BertModel {
    embeddings: Embeddings,
    encoder: Encoder,
    pooler: Option<Pooler>,
    max_position_embeddings: usize,
}

impl BertModel {
    /// `w` is the checkpoint root; the `bert.` prefix of head checkpoints is found here.
    pub fn load(
        w: &Weights,
        cfg: &Config,
        common: &CommonConfig,
        with_pooler: bool,
    ) -> Result<Self> {
        let w = base_weights(w, BASE_MODEL_PREFIX);
        let pooler = Pooler::load_if_present(&w, cfg.hidden_size, with_pooler)?;
        Ok(BertModel {
            embeddings: Embeddings::load(&w.pp("embeddings"), cfg)?,
            encoder: Encoder::load(&w.pp("encoder"), cfg, cfg.activation(common)?)?,
            pooler,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }
}

impl EncoderForward for BertModel {
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        let device = self.word_embeddings().device();
        let t = batch.to_tensors(device)?;
        let x = self
            .embeddings
            .forward(&t.input_ids, &t.token_type_ids, &t.positions)?;
        let last_hidden_state = self.encoder.forward(x, &t)?;
        Pooler::output(self.pooler.as_ref(), last_hidden_state, batch)
    }

    fn encode_last_layer(&self, hidden: &Tensor, batch: &RaggedBatch) -> Result<EncoderOutput> {
        let firsts = self.encoder.last_layer_first_tokens(hidden, batch)?;
        Pooler::output(
            self.pooler.as_ref(),
            firsts,
            &RaggedBatch::single_tokens(batch.num_seqs()),
        )
    }

    fn word_embeddings(&self) -> &Embedding {
        &self.embeddings.word_embeddings
    }

    fn max_position_embeddings(&self) -> usize {
        self.max_position_embeddings
    }
}

/// Loads `BertModel` (with its pooler), `BertForSequenceClassification` (pooler output →
/// `classifier`), `BertForTokenClassification` (`classifier` on every token) or
/// `BertForMaskedLM` (`cls.predictions`: transform, then the decoder tied to the word
/// embeddings).
pub fn load(w: &Weights, common: &CommonConfig, head: Head) -> Result<Box<dyn EncoderForward>> {
    let cfg = &Config::from_common(common)?;
    let (h, labels) = (cfg.hidden_size, common.id2label.len());
    let with_pooler = matches!(head, Head::Base | Head::SequenceClassification);
    let bert = BertModel::load(w, cfg, common, with_pooler)?;
    let head = match head {
        Head::Base => return Ok(Box::new(bert)),
        Head::SequenceClassification => {
            if bert.pooler.is_none() {
                return Err(Error::MissingTensor {
                    name: "bert.pooler.dense.weight".into(),
                    files: "BertForSequenceClassification classifies the pooler output".into(),
                });
            }
            EncoderHead::Pooled {
                dropout: cfg.classifier_dropout(),
                classifier: Linear::load(&w.pp("classifier"), h, labels)?,
            }
        }
        Head::TokenClassification => EncoderHead::PerToken {
            dropout: cfg.classifier_dropout(),
            classifier: Linear::load(&w.pp("classifier"), h, labels)?,
        },
        Head::MaskedLM => {
            let p = w.pp("cls.predictions");
            EncoderHead::MaskedLm {
                dense: Linear::load(&p.pp("transform.dense"), h, h)?,
                activation: cfg.activation(common)?,
                norm: layer_norm(&p.pp("transform.LayerNorm"), h, cfg.layer_norm_eps)?,
                decoder: tied_decoder(
                    &p,
                    "decoder.weight",
                    &["bias", "decoder.bias"],
                    bert.word_embeddings(),
                )?,
            }
        }
        Head::CausalLM | Head::Seq2SeqLM | Head::SpeechSeq2Seq => {
            return Err(Error::unsupported_head("BERT", head.name()))
        }
    };
    Ok(Box::new(WithHead { base: bert, head }))
}

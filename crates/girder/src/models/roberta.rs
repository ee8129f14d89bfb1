//! RoBERTa (Liu et al., 2019, <https://arxiv.org/abs/1907.11692>) and XLM-RoBERTa
//! (Conneau et al., 2019, <https://arxiv.org/abs/1911.02116>), which share one implementation.
//!
//! Follows transformers' `models/roberta/modeling_roberta.py`. The layers are BERT's
//! (`bert::Encoder`); what differs is the embeddings (positions start after
//! `padding_idx`) and the heads (a two-layer classification head, an LM head with GELU).

use super::bert::{Config, Encoder, Pooler};
use super::heads::{first_token_heads, WithHead};
use super::{base_weights, positions_after_padding, EncoderForward, EncoderOutput, Head};
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::Result;
use crate::hub::Weights;
use crate::layers::LayerNorm;
use crate::layers::{layer_norm, Dropout, Embedding};
use candle_core::Tensor;
use candle_nn::Module;

/// Where head classes keep `RobertaModel`'s tensors (transformers' `base_model_prefix`).
pub const BASE_MODEL_PREFIX: &str = "roberta";

/// RoBERTa's `padding_idx` (config `pad_token_id`, 1 by default).
fn padding_idx(cfg: &Config) -> u32 {
    cfg.pad_token_id.unwrap_or(DEFAULT_PADDING_IDX)
}

/// `padding_idx` when config.json names no `pad_token_id` (RoBERTa's `<pad>` is id 1).
pub const DEFAULT_PADDING_IDX: u32 = 1;

struct Embeddings {
    word_embeddings: Embedding,
    position_embeddings: Embedding,
    token_type_embeddings: Embedding,
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
            token_type_embeddings: Embedding::load(
                &w.pp("token_type_embeddings"),
                cfg.type_vocab_size,
                h,
            )?,
            layer_norm: layer_norm(&w.pp("LayerNorm"), h, cfg.layer_norm_eps)?,
            dropout: Dropout::new(cfg.hidden_dropout_prob),
            padding_idx: padding_idx(cfg),
        })
    }

    fn forward(
        &self,
        batch: &RaggedBatch,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
    ) -> Result<Tensor> {
        let positions = positions_after_padding(batch, self.padding_idx);
        let positions = Tensor::from_vec(positions, batch.total_tokens(), input_ids.device())?;
        let x = self.word_embeddings.forward(input_ids)?;
        let x = (x + self.token_type_embeddings.forward(token_type_ids)?)?;
        let x = (x + self.position_embeddings.forward(&positions)?)?;
        self.dropout.forward(self.layer_norm.forward(&x)?)
    }
}

/// The bare encoder (`RobertaModel`, `XLMRobertaModel`).
pub struct RobertaModel {
    embeddings: Embeddings,
    encoder: Encoder,
    pooler: Option<Pooler>,
    max_position_embeddings: usize,
}

impl RobertaModel {
    /// `w` is the checkpoint root; the `roberta.` prefix of head checkpoints is found here.
    pub fn load(
        w: &Weights,
        cfg: &Config,
        common: &CommonConfig,
        with_pooler: bool,
    ) -> Result<Self> {
        let w = base_weights(w, BASE_MODEL_PREFIX);
        let pooler = Pooler::load_if_present(&w, cfg.hidden_size, with_pooler)?;
        Ok(RobertaModel {
            embeddings: Embeddings::load(&w.pp("embeddings"), cfg)?,
            encoder: Encoder::load(&w.pp("encoder"), cfg, cfg.activation(common)?)?,
            pooler,
            max_position_embeddings: cfg.max_position_embeddings,
        })
    }
}

impl EncoderForward for RobertaModel {
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        let t = batch.to_tensors(self.word_embeddings().device())?;
        let x = self
            .embeddings
            .forward(batch, &t.input_ids, &t.token_type_ids)?;
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

/// Loads `RobertaModel` / `XLMRobertaModel` (with its pooler), `…ForSequenceClassification`
/// (`RobertaClassificationHead`: dense + tanh on `<s>`, then `out_proj`; no pooler),
/// `…ForTokenClassification` (`classifier` on every token) or `…ForMaskedLM` (`lm_head`:
/// dense, exact GELU whatever `hidden_act` says, as `RobertaLMHead` hard-codes it,
/// LayerNorm, decoder tied to the word embeddings).
pub fn load(w: &Weights, common: &CommonConfig, head: Head) -> Result<Box<dyn EncoderForward>> {
    let cfg = &Config::from_common(common)?;
    let (h, labels) = (cfg.hidden_size, common.id2label.len());
    let roberta = RobertaModel::load(w, cfg, common, head == Head::Base)?;
    let dropout = cfg.classifier_dropout();
    let eps = cfg.layer_norm_eps;
    match first_token_heads(w, head, h, labels, dropout, eps, roberta.word_embeddings())? {
        None => Ok(Box::new(roberta)),
        Some(head) => Ok(Box::new(WithHead {
            base: roberta,
            head,
        })),
    }
}

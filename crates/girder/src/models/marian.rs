//! MarianMT (Junczys-Dowmunt et al. 2018, "Marian: Fast Neural Machine Translation in C++"),
//! the architecture of the Helsinki-NLP OPUS-MT translation models.
//!
//! transformers' `models/marian/modeling_marian.py` (v5.24) copies BART's layers; what
//! differs is here: fixed sinusoidal positions without BART's offset of 2 (sines in the first
//! half of each vector, cosines in the second), no LayerNorm after the embeddings, embeddings
//! scaled by √d_model (`scale_embedding` is true in the OPUS-MT configs), swish activations,
//! and a decoder vocabulary that may differ from the encoder's when
//! `share_encoder_decoder_embeddings` is false. The model itself is [`bart`]'s.

use super::bart::{self, Positions, RawConfig};
use super::Seq2SeqForward;
use crate::config::CommonConfig;
use crate::error::Result;
use crate::hub::Weights;
use serde::Deserialize;

/// `MarianMTModel`: BART's encoder-decoder with Marian's embeddings.
pub type MarianMTModel = bart::BartForConditionalGeneration;

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
struct MarianFields {
    #[serde(default)]
    decoder_vocab_size: Option<usize>,
    #[serde(default = "default_true")]
    share_encoder_decoder_embeddings: bool,
}

/// Marian's hyper-parameters (defaults: `MarianConfig`), as a BART-family [`bart::Config`].
pub fn config(common: &CommonConfig) -> Result<bart::Config> {
    let raw: RawConfig = common.parse_as()?;
    let fields: MarianFields = common.parse_as()?;
    let mut cfg = bart::Config::from_raw(raw, common, Positions::Sinusoidal, false)?;
    cfg.decoder_vocab_size = fields.decoder_vocab_size.unwrap_or(cfg.vocab_size);
    cfg.shared_embeddings = fields.share_encoder_decoder_embeddings;
    Ok(cfg)
}

/// Builds `MarianMTModel` from config.json and its checkpoint (the registry's constructor).
pub fn load(w: &Weights, common: &CommonConfig) -> Result<Box<dyn Seq2SeqForward>> {
    Ok(Box::new(MarianMTModel::load(w, &config(common)?)?))
}

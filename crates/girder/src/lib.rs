//! girder: load Hugging Face model folders and GGUF files and run transformers' pipelines
//! in Rust, with guard rails.
//!
//! [`load`] turns a folder (config.json, tokenizer.json, model.safetensors), a hub id in the
//! Hugging Face cache or a `.gguf` file into a [`Loaded`] model of one [`Kind`]; the
//! architecture is picked from config.json as AutoModel does ([`models::registry`]). Texts
//! are tokenized under one explicit policy ([`tokenize`]), packed without padding
//! ([`batch`]), and run through the task's pipeline ([`pipelines`]).
//!
//! ```
//! # fn main() -> girder::Result<()> {
//! use girder::pipelines::embeddings;
//!
//! let model = girder::load("tests/fixtures/bert-st-mean", &girder::LoadOptions::default())?;
//! let texts = ["A man is eating food.", "A man rides a horse."];
//! let vectors = embeddings::run(model.encoder()?, &texts, &embeddings::Options::default())?;
//! assert_eq!(vectors.len(), 2);
//! # Ok(())
//! # }
//! ```

pub mod audio;
pub mod batch;
pub mod check;
pub mod config;
pub mod error;
pub mod export;
pub mod generate;
pub mod hub;
pub mod layers;
pub mod models;
pub mod pipelines;
pub mod pretrained;
pub mod rng;
pub mod tokenize;
pub mod train;

/// The dtype of [`LoadOptions::dtype`] (candle's).
pub use candle_core::DType;
pub use error::{Error, Result};
pub use models::Kind;
pub use pretrained::{load, LoadOptions, Loaded};

#[cfg(test)]
mod test_support {
    use candle_core::Tensor;

    /// `max |a - b|` over all elements (same shapes).
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs())
            .and_then(|d| d.flatten_all())
            .and_then(|d| d.max(0))
            .and_then(|d| d.to_dtype(candle_core::DType::F32))
            .and_then(|d| d.to_scalar::<f32>())
            .expect("tensors of the same shape")
    }
}

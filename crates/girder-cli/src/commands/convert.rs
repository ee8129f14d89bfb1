//! `girder convert`: turn a model in another engine's format into a Hugging Face folder that
//! transformers and girder load. Today: a CTranslate2 Whisper model (faster-whisper's
//! `model.bin` with its config.json and tokenizer.json).

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A CTranslate2 model folder (model.bin, config.json, tokenizer.json).
    Ctranslate2,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// The source model's format.
    #[arg(long, value_enum)]
    from: Format,
    /// The source model folder.
    source: PathBuf,
    /// The Hugging Face folder to write (created; files in it are replaced).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    match args.from {
        Format::Ctranslate2 => {
            let converted = girder::hub::ctranslate2::convert_whisper(&args.source, &args.out)
                .with_context(|| format!("cannot convert {}", args.source.display()))?;
            println!(
                "{}",
                serde_json::json!({
                    "folder": converted.folder,
                    "tensors": converted.tensors,
                    "architecture": "WhisperForConditionalGeneration",
                })
            );
        }
    }
    Ok(())
}

//! `girder convert`: turn a model in another engine's format into a Hugging Face folder that
//! transformers and girder load. The source format: a CTranslate2 Whisper model
//! (faster-whisper's `model.bin` with its config.json and tokenizer.json).

use anyhow::{bail, Context, Result};
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
    /// The Hugging Face folder to write (created; it must be empty unless `--force`).
    #[arg(long)]
    out: PathBuf,
    /// Write into `--out` even when it holds files (those of the same names are replaced).
    #[arg(long)]
    force: bool,
}

pub fn run(args: ConvertArgs) -> Result<()> {
    // A folder with files in it may be another model: it is not overwritten by mistake.
    if !args.force {
        if let Ok(mut entries) = std::fs::read_dir(&args.out) {
            if entries.next().is_some() {
                bail!(
                    "{} is not empty: pass --force to write the converted model into it (files of the same names are replaced)",
                    args.out.display()
                );
            }
        }
    }
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

//! `girder quantize`: write a decoder in fewer bits as a GGUF file that llama.cpp and girder
//! load, after the accuracy report says what the quantization costs.
//!
//! The steps: the model quantized at load is measured against f32 on the probe (refused above
//! `--max-drift` unless `--allow-drift`: nothing is written); the file is written
//! ([`girder::export::write_gguf`]: its tokenizer read back and checked); the file is loaded
//! and must reproduce the probe outputs of the model quantized at load, else it is removed.

use super::precision::{parse_quantization, PrecisionArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use girder::check::drift;
use girder::export::GgufOptions;
use girder::layers::Quantization;
use girder::LoadOptions;
use std::path::PathBuf;

/// The largest difference of a probe output (a next-token log-probability) between the
/// written file and the model quantized at load: the two hold the same blocks, so anything
/// above float noise is a fault of the writer.
const MAX_REPRODUCTION_ERROR: f64 = 1e-4;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The model: a folder holding config.json, tokenizer.json and safetensors (LLaMA,
    /// Mistral without a sliding window, Qwen2), or a Hugging Face id.
    #[arg(long)]
    model: String,
    /// The block type of the linear layers and the embedding table: q8_0, q6_k, q5_k, q5_0,
    /// q4_k or q4_0 (rows that are not whole K-quant super-blocks fall back as llama.cpp's
    /// quantize does; norms and matrices under 65,536 values stay f32).
    #[arg(long, value_parser = parse_quantization)]
    to: Quantization,
    /// The GGUF file to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` when it exists.
    #[arg(long)]
    force: bool,
    /// Keep the output projection in f32 (llama.cpp's `--output-tensor-type f32`).
    #[arg(long)]
    lm_head_f32: bool,
    /// The largest drift the accuracy report accepts, 0 to 1 (1 - next-token top-1
    /// agreement with f32).
    #[arg(long, default_value_t = drift::DEFAULT_MAX_DRIFT)]
    max_drift: f64,
    /// Write the file even when its drift is above --max-drift (printed as a warning).
    #[arg(long)]
    allow_drift: bool,
    /// Probe texts for the accuracy report, one per line (default: the built-in sentences).
    #[arg(long)]
    probe: Option<PathBuf>,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    if args.out.exists() && !args.force {
        bail!("{} exists: pass --force to replace it", args.out.display());
    }
    if args.out.is_dir() {
        bail!(
            "{} is a folder: --out names the GGUF file to write",
            args.out.display()
        );
    }
    // What cannot be written is said before the accuracy report runs.
    girder::export::check_writable(&args.model)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let precision = PrecisionArgs {
        dtype: None,
        quantize: Some(args.to),
        lm_head_f32: args.lm_head_f32,
        max_drift: args.max_drift,
        allow_drift: args.allow_drift,
        drift_probe: args.probe.clone(),
        drift_report: None,
    };
    let texts = precision.probe_texts()?;
    let (quantized, report) =
        precision.load_with_report(&args.model, &LoadOptions::default(), "quantize")?;
    let report = report.context("the accuracy report was not made")?;
    let expected = drift::probe_outputs(&quantized, &texts)?;
    drop(quantized);

    let options = GgufOptions {
        quantization: Some(args.to),
        output_in_f32: args.lm_head_f32,
        metadata: vec![
            ("girder.quantization".into(), args.to.name().into()),
            (
                "girder.drift_report".into(),
                serde_json::to_string(&report)?,
            ),
        ],
    };
    let written = girder::export::write_gguf(&args.model, &options, &args.out)
        .with_context(|| format!("cannot write {}", args.out.display()))?;

    // The file must hold the model that was measured.
    let out = args.out.to_string_lossy().into_owned();
    let reproduction = girder::load(&out, &LoadOptions::default())
        .and_then(|from_file| drift::probe_outputs(&from_file, &texts))
        .map(|got| drift::largest_difference(&expected, &got));
    let difference = match reproduction {
        Ok(Some(d)) if d <= MAX_REPRODUCTION_ERROR => d,
        other => {
            let _ = std::fs::remove_file(&args.out);
            match other {
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("{} does not load back; it was removed", args.out.display())
                    })
                }
                Ok(d) => bail!(
                    "{} does not reproduce the model quantized at load (largest difference {:?}); it was removed",
                    args.out.display(),
                    d
                ),
            }
        }
    };
    println!(
        "{}",
        serde_json::json!({
            "file": written.file,
            "bytes": written.bytes,
            "architecture": written.architecture,
            "tensor_types": written.tensor_types,
            "tokenizer_texts_checked": written.tokenizer_texts_checked,
            "largest_difference_from_load": difference,
            "report": report,
        })
    );
    Ok(())
}

//! `girder quantize`: write a model in fewer bits, after the accuracy report says what that
//! costs: a decoder quantized as a GGUF file that llama.cpp and girder load (`--to q4_k`), or
//! any safetensors model as a folder of bf16 or f16 weights (`--to bf16`).
//!
//! The steps: the model reduced at load is measured against f32 on the probe (refused above
//! `--max-drift` unless `--allow-drift`: nothing is written); the output is written
//! ([`girder::export::write_gguf`], its tokenizer read back and checked, or
//! [`girder::export::write_half_precision`]); it is loaded and must reproduce the probe outputs
//! of the model reduced at load, else its weights are removed.

use super::precision::{parse_dtype, parse_quantization, PrecisionArgs};
use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use girder::check::drift::{self, DriftReport, ProbeOutputs};
use girder::export::GgufOptions;
use girder::layers::Quantization;
use girder::LoadOptions;
use std::path::{Path, PathBuf};

/// What `--to` asks for.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// A GGUF file of this block type.
    Gguf(Quantization),
    /// A safetensors folder with weights in bf16 or f16.
    Half(DType),
}

fn parse_target(name: &str) -> std::result::Result<Target, String> {
    match name.to_ascii_lowercase().as_str() {
        "bf16" | "bfloat16" | "f16" | "fp16" | "float16" => parse_dtype(name).map(Target::Half),
        _ => parse_quantization(name)
            .map(Target::Gguf)
            .map_err(|e| format!("{e}; or bf16, f16 for a safetensors folder")),
    }
}

/// The largest difference of a probe output (a log-probability, an embedding value, a label
/// probability) between the written model and the model reduced at load: the two hold the
/// same weights, so anything above float noise is a fault of the writer.
const MAX_REPRODUCTION_ERROR: f64 = 1e-4;

#[derive(Args)]
pub struct QuantizeArgs {
    /// The model: a folder holding config.json, tokenizer.json and safetensors, or a Hugging
    /// Face id (for a GGUF file: LLaMA, Mistral without a sliding window, Qwen2).
    #[arg(long)]
    model: String,
    /// q8_0, q6_k, q5_k, q5_0, q4_k or q4_0: a GGUF file, its linear layers and embedding
    /// table in that block type (rows that are not whole K-quant super-blocks fall back as
    /// llama.cpp's quantize does; norms and matrices under 65,536 values stay f32). bf16 or
    /// f16: a safetensors folder, matrices of 65,536 values or more in that type.
    #[arg(long, value_parser = parse_target)]
    to: Target,
    /// The GGUF file, or for bf16/f16 the folder, to write.
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` when it exists (a folder: its files of the same names).
    #[arg(long)]
    force: bool,
    /// GGUF: keep the output projection in f32 (llama.cpp's `--output-tensor-type f32`).
    #[arg(long)]
    lm_head_f32: bool,
    /// The largest drift the accuracy report accepts, 0 to 1 (1 - next-token top-1
    /// agreement for a causal LM, 1 - the lowest embedding cosine for an embedder, …).
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
    // What cannot be written is said before the accuracy report runs.
    let name = args
        .out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .with_context(|| format!("--out {} names no file or folder", args.out.display()))?;
    let parent = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "{} does not exist: --out goes into an existing folder",
            parent.display()
        );
    }
    match args.to {
        Target::Gguf(_) => {
            if args.out.is_dir() {
                bail!(
                    "{} is a folder: --out names the GGUF file to write",
                    args.out.display()
                );
            }
            if !name.ends_with(".gguf") {
                bail!(
                    "--out {} must end in .gguf, which is how girder and llama.cpp tell the format",
                    args.out.display()
                );
            }
            if args.out.exists() && !args.force {
                bail!("{} exists: pass --force to replace it", args.out.display());
            }
            girder::export::check_writable(&args.model)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
        }
        Target::Half(_) => {
            if args.out.is_file() {
                bail!(
                    "{} is a file: --out names the folder to write",
                    args.out.display()
                );
            }
            let holds_files = std::fs::read_dir(&args.out).is_ok_and(|mut d| d.next().is_some());
            if holds_files && !args.force {
                bail!(
                    "{} is not empty: pass --force to write into it (files of the same names are replaced)",
                    args.out.display()
                );
            }
            if args.lm_head_f32 {
                bail!("--lm-head-f32 applies to GGUF outputs (--to q8_0 … q4_0)");
            }
            girder::export::check_half_target(&args.model, &args.out)?;
        }
    }
    let (dtype, quantize) = match args.to {
        Target::Gguf(q) => (None, Some(q)),
        Target::Half(d) => (Some(d), None),
    };
    let precision = PrecisionArgs {
        dtype,
        quantize,
        lm_head_f32: args.lm_head_f32,
        max_drift: args.max_drift,
        allow_drift: args.allow_drift,
        drift_probe: args.probe.clone(),
        drift_report: None,
    };
    let texts = precision.probe_texts()?;
    let (reduced, measured) =
        precision.load_measured(&args.model, &LoadOptions::default(), "quantize")?;
    drop(reduced);
    let (report, expected) = measured.context("the accuracy report was not made")?;

    // Written beside --out under a hidden name, checked, then moved into place: a failed
    // run leaves --out as it was.
    let staging = parent.join(format!(
        ".{name}.staging{}",
        if name.ends_with(".gguf") { ".gguf" } else { "" }
    ));
    remove(&staging);
    let result = write_and_check(&args, &staging, &report, &expected, &texts).and_then(|line| {
        put_in_place(&staging, &args.out)?;
        Ok(line)
    });
    remove(&staging);
    let mut line = result?;
    let key = if matches!(args.to, Target::Gguf(_)) {
        "file"
    } else {
        "folder"
    };
    line[key] = args.out.to_string_lossy().into_owned().into();
    println!("{line}");
    Ok(())
}

/// Writes the output at `staging` and checks that it reproduces the reduced model's probe
/// outputs (`expected`); returns what was written, as the JSON line to print.
fn write_and_check(
    args: &QuantizeArgs,
    staging: &Path,
    report: &DriftReport,
    expected: &ProbeOutputs,
    texts: &[String],
) -> Result<serde_json::Value> {
    let (mut line, reload) = match args.to {
        Target::Gguf(quantization) => {
            let options = GgufOptions {
                quantization: Some(quantization),
                output_in_f32: args.lm_head_f32,
                metadata: vec![
                    ("girder.quantization".into(), quantization.name().into()),
                    ("girder.drift_report".into(), serde_json::to_string(report)?),
                ],
            };
            let written = girder::export::write_gguf(&args.model, &options, staging)
                .with_context(|| format!("cannot write {}", args.out.display()))?;
            (serde_json::to_value(&written)?, LoadOptions::default())
        }
        Target::Half(dtype) => {
            let written = girder::export::write_half_precision(
                &args.model,
                dtype,
                staging,
                &card_section(report),
            )
            .with_context(|| format!("cannot write {}", args.out.display()))?;
            let reload = LoadOptions {
                dtype,
                ..LoadOptions::default()
            };
            (serde_json::to_value(&written)?, reload)
        }
    };
    // The output must hold the model that was measured.
    let loaded = girder::load(&staging.to_string_lossy(), &reload).with_context(|| {
        format!(
            "{} does not load back; nothing was written",
            args.out.display()
        )
    })?;
    let got = drift::probe_outputs(&loaded, texts)?;
    let difference = reproduction_error(expected, &got)?;
    if difference > MAX_REPRODUCTION_ERROR {
        bail!(
            "{}: the written model's outputs differ from the model reduced at load by up to {difference}; nothing was written",
            args.out.display()
        );
    }
    line["largest_difference_from_load"] = difference.into();
    line["report"] = serde_json::to_value(report)?;
    Ok(line)
}

/// Moves the checked output from `staging` to `out`: a file replaces a file; a folder's
/// entries replace those of the same names in `out` (created when absent).
fn put_in_place(staging: &Path, out: &Path) -> Result<()> {
    let rename = |from: &Path, to: &Path| {
        std::fs::rename(from, to)
            .with_context(|| format!("cannot move {} to {}", from.display(), to.display()))
    };
    if staging.is_file() || !out.exists() {
        return rename(staging, out);
    }
    for entry in std::fs::read_dir(staging)? {
        let entry = entry?;
        let target = out.join(entry.file_name());
        remove(&target);
        rename(&entry.path(), &target)?;
    }
    Ok(())
}

/// Removes a file, link or folder if present.
fn remove(path: &Path) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => {
            let _ = std::fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = std::fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// How far the reloaded output's probe outputs are from the reduced model's: the largest
/// difference of a number where the outputs are numbers, else 0 for identical outputs
/// (entities, masked words, generated ids) and infinity for any change.
fn reproduction_error(expected: &ProbeOutputs, got: &ProbeOutputs) -> Result<f64> {
    if let Some(d) = drift::largest_difference(expected, got) {
        return Ok(d);
    }
    let compared = drift::compare(expected, got, "reloaded", 1, 0.0)?;
    Ok(if compared.drift == 0.0 {
        0.0
    } else {
        f64::INFINITY
    })
}

/// The section `--to bf16|f16` appends to the folder's README.md.
fn card_section(report: &DriftReport) -> String {
    format!(
        "## Precision\n\nWritten by `girder quantize --to {}`: matrices of 65,536 values or more in {}, the rest in f32.\n\nAccuracy report against the f32 checkpoint: {}\n\n```json\n{}\n```\n",
        report.candidate,
        report.candidate,
        report.summary(),
        serde_json::to_string_pretty(report).unwrap_or_default()
    )
}

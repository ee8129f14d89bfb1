//! `girder bench`: times one workload of the encoder benchmark in this process, so that
//! peak RSS belongs to it, and prints one JSON line with the same fields as
//! `scripts/bench_reference.py` (engine "girder"). `scripts/bench-encoders` runs it beside
//! PyTorch and ONNX Runtime and prints the table.

use anyhow::{Context, Result};
use clap::Args;
use girder::layers::Quantization;
use girder::pipelines::{embeddings, Model};
use girder::pretrained::DEFAULT_MAX_BATCH_TOKENS;
use girder::LoadOptions;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct BenchArgs {
    /// The model folder (or hub id).
    #[arg(long, short)]
    model: String,
    /// The workloads file written by scripts/bench_workloads.py.
    #[arg(long)]
    workloads: PathBuf,
    /// Which workload (a, b, c, s).
    #[arg(long)]
    workload: String,
    /// Keep timing runs for at least this many seconds.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// At least this many timed runs.
    #[arg(long, default_value_t = 5)]
    min_runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    /// Tokens per forward pass at most.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Quantize the linear layers and embedding tables at load (q8_0, q6_k, q5_k, q5_0,
    /// q4_k, q4_0), to time and size the quantized model alone: no accuracy report here
    /// (`girder run --quantize` prints it), so the peak RSS is the quantized load's.
    #[arg(long, value_parser = super::precision::parse_quantization)]
    quantize: Option<Quantization>,
    /// Keep linear layers and embeddings in bf16 or f16 (no accuracy report here either).
    #[arg(long, value_parser = super::precision::parse_dtype, default_value = "f32", conflicts_with = "quantize")]
    dtype: candle_core::DType,
}

#[derive(Deserialize)]
struct Workloads {
    workloads: BTreeMap<String, Workload>,
}

#[derive(Deserialize)]
struct Workload {
    texts: Vec<String>,
    max_length: usize,
    #[serde(default)]
    flops: Option<f64>,
}

pub fn run(args: BenchArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.workloads)
        .with_context(|| format!("cannot read {}", args.workloads.display()))?;
    let mut all: Workloads = serde_json::from_str(&text)
        .with_context(|| format!("{}: not a workloads file", args.workloads.display()))?;
    let names: Vec<String> = all.workloads.keys().cloned().collect();
    let workload = all.workloads.remove(&args.workload).with_context(|| {
        format!(
            "no workload `{}` in {} (has: {})",
            args.workload,
            args.workloads.display(),
            names.join(", ")
        )
    })?;
    let options = LoadOptions {
        max_length: Some(workload.max_length),
        max_batch_tokens: args.max_batch_tokens,
        quantize: args.quantize,
        dtype: args.dtype,
        ..LoadOptions::default()
    };
    let model = crate::returning_freed_memory(|| Model::load(&args.model, &options))
        .with_context(|| format!("cannot load model `{}`", args.model))?;
    let rss_after_load = current_rss_bytes();
    let load_peak_rss = peak_rss_bytes();
    let opts = embeddings::Options::default();
    let real_tokens: usize = model
        .encode_texts(&workload.texts)?
        .iter()
        .map(|e| e.len())
        .sum();

    let mut first = Vec::new();
    for _ in 0..args.warmup {
        first = embeddings::run(&model, &workload.texts, &opts)?;
    }
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < args.min_runs || started.elapsed() < Duration::from_secs_f64(args.seconds) {
        let t = Instant::now();
        first = embeddings::run(&model, &workload.texts, &opts)?;
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let mut line = serde_json::json!({
        "engine": "girder",
        "workload": args.workload,
        "median_s": median,
        "min_s": times[0],
        "runs": times.len(),
        "sentences_per_s": workload.texts.len() as f64 / median,
        "tokens_per_s": real_tokens as f64 / median,
        "peak_rss_bytes": peak_rss_bytes(),
        "rss_after_load_bytes": rss_after_load,
        "load_peak_rss_bytes": load_peak_rss,
        "quantize": args.quantize.map(Quantization::name),
        "dtype": girder::pretrained::dtype_name(args.dtype),
        "embedding0": first.first().map(|e| e.embedding.iter().take(4).copied().collect::<Vec<_>>()),
        "num_texts": workload.texts.len(),
        "real_tokens": real_tokens,
        "padded_tokens": real_tokens,
        "max_batch_tokens": args.max_batch_tokens,
        "timed": "tokenize + forward + mean pool + normalize",
    });
    if let Some(flops) = workload.flops {
        line["useful_gflop_per_s"] = serde_json::json!(flops / median / 1e9);
    }
    println!("{line}");
    Ok(())
}

/// The process's peak resident set (`VmHWM` of /proc/self/status), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

/// The process's resident set now (`VmRSS`), in bytes.
fn current_rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

//! `--dtype` and `--quantize` for `girder run`, `generate`, `chat`, `serve`, `eval`, `bench`
//! (and the report of `girder quantize`): weights kept in
//! bf16 or f16, or linear layers quantized, at load, after the accuracy report
//! ([`girder::check::drift`]) says what it costs.

use anyhow::{bail, Context, Result};
use candle_core::DType;
use clap::Args;
use girder::check::drift::{self, DriftReport, ProbeOutputs};
use girder::layers::Quantization;
use girder::{LoadOptions, Loaded};
use std::path::PathBuf;

/// The precision weights are kept in at load, and its accuracy report.
#[derive(Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("precision").args(["dtype", "quantize"])))]
pub struct PrecisionArgs {
    /// Keep the linear layers' and embedding tables' weights of a safetensors checkpoint in
    /// f32 (default), bf16 or f16: half the memory, widened to f32 in the matmul kernel.
    /// Norms, biases and matrices under 65,536 values (most classifier heads) stay f32. Before any work, the model is compared
    /// with the f32 one on probe texts (the accuracy report, on stderr).
    #[arg(long, value_parser = parse_dtype)]
    pub dtype: Option<DType>,
    /// Quantize the linear layers of a safetensors checkpoint at load: q8_0, q6_k, q5_k,
    /// q5_0, q4_k or q4_0 (GGUF blocks, girder's quantized kernels), embedding tables too.
    /// Norms, biases and matrices under 65,536 values (most classifier heads) stay f32.
    /// Before any work, the quantized model is compared with the
    /// f32 one on probe texts (the accuracy report, on stderr).
    #[arg(long, value_parser = parse_quantization)]
    pub quantize: Option<Quantization>,
    /// Keep the output projection (an LM head, an MLM decoder, tied or not) in f32 while
    /// --dtype or --quantize reduce the rest.
    #[arg(long, requires = "precision")]
    pub lm_head_f32: bool,
    /// The largest drift the accuracy report accepts, 0 to 1: 1 - the lowest embedding
    /// cosine, 1 - the label (or next-token, or masked-word) agreement, 1 - entity F1.
    #[arg(long, requires = "precision", default_value_t = drift::DEFAULT_MAX_DRIFT)]
    pub max_drift: f64,
    /// Use the model even when its drift is above --max-drift (printed as a warning).
    #[arg(long, requires = "precision")]
    pub allow_drift: bool,
    /// Probe texts for the accuracy report, one per line (default: 52 built-in sentences).
    #[arg(long, requires = "precision")]
    pub drift_probe: Option<PathBuf>,
    /// Also write the accuracy report to this file as JSON.
    #[arg(long, requires = "precision")]
    pub drift_report: Option<PathBuf>,
}

/// `--quantize`'s value parser (shared with `girder bench`).
pub fn parse_quantization(name: &str) -> std::result::Result<Quantization, String> {
    Quantization::parse(name).map_err(|e| e.to_string())
}

/// `--dtype`'s value parser (shared with `girder bench`).
pub fn parse_dtype(name: &str) -> std::result::Result<DType, String> {
    girder::pretrained::parse_dtype(name).map_err(|e| e.to_string())
}

impl PrecisionArgs {
    /// Loads `reference` with `options` in the precision `--dtype` or `--quantize` asks for:
    /// the f32 model's probe outputs are computed and the f32 model dropped before the
    /// other one loads, the two compared, the report printed (and written), and a drift
    /// above --max-drift refused unless --allow-drift. `work` names the command in messages.
    pub fn load(&self, reference: &str, options: &LoadOptions, work: &str) -> Result<Loaded> {
        Ok(self.load_with_report(reference, options, work)?.0)
    }

    /// [`load`](Self::load), and the accuracy report when one was made.
    pub fn load_with_report(
        &self,
        reference: &str,
        options: &LoadOptions,
        work: &str,
    ) -> Result<(Loaded, Option<DriftReport>)> {
        let (loaded, measured) = self.load_measured(reference, options, work)?;
        Ok((loaded, measured.map(|(report, _)| report)))
    }

    /// [`load_with_report`](Self::load_with_report), with the reduced model's probe outputs
    /// the report was made from.
    pub fn load_measured(
        &self,
        reference: &str,
        options: &LoadOptions,
        work: &str,
    ) -> Result<(Loaded, Option<(DriftReport, ProbeOutputs)>)> {
        let options = LoadOptions {
            dtype: self.dtype.unwrap_or(DType::F32),
            quantize: self.quantize,
            output_in_f32: self.lm_head_f32,
            ..options.clone()
        };
        crate::returning_freed_memory(|| self.load_and_report(reference, &options, work))
    }

    /// The accuracy report's probe: `--drift-probe`'s lines, or the built-in texts.
    pub fn probe_texts(&self) -> Result<Vec<String>> {
        let Some(path) = &self.drift_probe else {
            return Ok(drift::probe_texts());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read --drift-probe {}", path.display()))?;
        let lines: Vec<String> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect();
        if lines.is_empty() {
            bail!("--drift-probe {} has no texts", path.display());
        }
        Ok(lines)
    }

    fn load_and_report(
        &self,
        reference: &str,
        options: &LoadOptions,
        work: &str,
    ) -> Result<(Loaded, Option<(DriftReport, ProbeOutputs)>)> {
        let Some(candidate) = girder::pretrained::reduced_precision(options) else {
            if self.drift_probe.is_some() || self.drift_report.is_some() || self.allow_drift {
                bail!("--drift-probe, --drift-report and --allow-drift go with --dtype bf16|f16 or --quantize");
            }
            let loaded = girder::load(reference, options)
                .with_context(|| format!("cannot load model `{reference}`"))?;
            return Ok((loaded, None));
        };
        let texts = self.probe_texts()?;
        let (reduced, report, outputs) =
            drift::load_measured_with_outputs(reference, options, &texts, self.max_drift)
                .with_context(|| {
                    format!(
                        "cannot load model `{reference}` in {candidate} with its accuracy report"
                    )
                })?;
        eprintln!("girder {work}: accuracy report: {}", report.summary());
        let kernel = girder::layers::cpu::quant_matmul::kernel_name();
        if self.quantize.is_some() && kernel != "avx512-vnni" {
            // Measured: all-MiniLM-L6-v2 Q8_0 on mixed-length batches runs at 0.46x f32 on
            // the AVX2 kernel, 1.9x on AVX-512 VNNI (README, "Precision at load").
            eprintln!(
                "girder {work}: note: this CPU runs quantized matmuls on the {kernel} kernel, which is slower than f32 for batches of many tokens: here --quantize saves memory, not time"
            );
        }
        if let Some(path) = &self.drift_report {
            let json = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, json + "\n")
                .with_context(|| format!("cannot write --drift-report {}", path.display()))?;
        }
        if !report.ok {
            if self.allow_drift {
                eprintln!(
                    "girder {work}: WARNING: {} drifts {:.4} from f32, above --max-drift {}; used anyway (--allow-drift)",
                    candidate,
                    report.drift,
                    self.max_drift
                );
            } else {
                bail!(
                    "{} drifts {:.4} from f32 on the probe ({}), above --max-drift {}: the model is not used. Try more bits, raise --max-drift, or pass --allow-drift",
                    candidate,
                    report.drift,
                    report.measure,
                    self.max_drift
                );
            }
        }
        Ok((reduced, Some((report, outputs))))
    }
}

//! NaN and infinity: a checkpoint with non-finite weights, or a config whose numbers make the
//! network produce them (a negative `layer_norm_eps`), answers `null` scores or garbage
//! without any error. The word-embedding matrix is summed (a NaN or infinity anywhere makes
//! the sum non-finite), and an encoder runs the probe texts through its base model and, for
//! a sequence classifier, its head.

use super::canary::EmbeddingMatrix;
use super::{Finding, Severity, Subject};
use crate::error::Result;
use crate::models::Head;
use crate::pipelines::text_classification as tc;
use candle_core::Tensor;

/// Probe texts run through the network: enough to reach every layer, few enough to stay fast.
const PROBE_TEXTS: usize = 16;

const FIX: &str = "the weights or config.json produce NaN or infinity (a corrupted or badly converted checkpoint, an overflowing half-precision export, a zero or negative layer_norm_eps): re-export the model and check it again";

/// `non-finite-weights` and `non-finite-outputs` errors, or nothing; the probe texts run
/// through the network only when `run_probe` (the tokenizer fits the model).
pub fn check(
    subject: &Subject,
    embedding: Option<&EmbeddingMatrix>,
    probe: &[String],
    run_probe: bool,
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    if let Some(matrix) = embedding {
        if !finite_rows(&matrix.embedding)? {
            findings.push(Finding::new(
                Severity::Error,
                "non-finite-weights",
                format!("tensor `{}` holds NaN or infinite values", matrix.name),
                FIX,
            ));
        }
    }
    let Some(model) = subject.model.filter(|_| run_probe) else {
        return Ok(findings);
    };
    let texts: Vec<&String> = probe.iter().take(PROBE_TEXTS).collect();
    let encodings = model.encode_texts(&texts)?;
    let plan = model.plan(&encodings);
    let mut bad_outputs = Vec::new();
    model.forward_batches(&encodings, &plan, |indices, _, out| {
        if !finite(&out.last_hidden_state)?
            || out.pooler_output.as_ref().map(finite).transpose()? == Some(false)
        {
            bad_outputs.extend_from_slice(indices);
        }
        Ok(())
    })?;
    let mut what = "hidden states";
    if bad_outputs.is_empty() && model.encoder.head() == Head::SequenceClassification {
        let options = tc::Options {
            top_k: tc::TopK::All,
            function_to_apply: None,
        };
        for (i, result) in tc::run(model, &texts, &options)?.iter().enumerate() {
            let mut scores = result.labels.iter().flatten().chain(&result.best);
            if scores.any(|l| !l.score.is_finite()) {
                bad_outputs.push(i);
            }
        }
        what = "classification scores";
    }
    if !bad_outputs.is_empty() {
        bad_outputs.sort_unstable();
        findings.push(Finding::new(
            Severity::Error,
            "non-finite-outputs",
            format!(
                "the model's {what} are NaN or infinite for {} of {} probe texts (first: {:?})",
                bad_outputs.len(),
                texts.len(),
                texts[bad_outputs[0]]
            ),
            FIX,
        ));
    }
    Ok(findings)
}

/// Whether every value of the table is finite, read a chunk of rows at a time.
fn finite_rows(table: &crate::layers::Embedding) -> Result<bool> {
    let mut all = true;
    super::canary::for_each_chunk(table, |rows| {
        all &= rows.iter().all(|x| x.is_finite());
        Ok(())
    })?;
    Ok(all)
}

/// Whether every value of `t` is finite: a NaN or infinity anywhere makes the sum non-finite
/// (so does an overflowing sum, itself a sign of broken values).
fn finite(t: &Tensor) -> Result<bool> {
    let sum = t
        .to_dtype(candle_core::DType::F32)?
        .sum_all()?
        .to_scalar::<f32>()?;
    Ok(sum.is_finite())
}

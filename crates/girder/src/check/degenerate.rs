//! Degenerate outputs: a model whose answer does not depend on its input passes every
//! tokenizer check and serves confident garbage. An encoder runs the probe texts once (the
//! built-in [`PROBE`](super::PROBE) or `--probe`, at most [`MAX_TEXTS`]) and
//! `degenerate-outputs` warns, with the figures, when
//!
//! - a sequence classifier gives every text the same label (at least [`MIN_LABEL_TEXTS`]
//!   texts, two labels or more, not a regression): a head whose bias swamps its input, or a
//!   body that no longer tells texts apart. A detector of a rare class (toxicity, spam) may do
//!   this honestly on everyday text: the fix says to probe with texts of every label;
//! - the outputs hardly depend on the input: the sentence embeddings (as `girder run
//!   embeddings` computes them: the folder's pooling, else the mean; normalising changes no
//!   cosine) have a mean pairwise cosine above [`MAX_EMBEDDING_COSINE`], or the mean-pooled
//!   last hidden states a spread (the root of the mean over dimensions of their variance
//!   across texts, over the root mean square of their values) below [`MIN_HIDDEN_SPREAD`].
//!   A final LayerNorm whose weight is zero makes every token's state its bias: cosine
//!   1.000000, spread 3e-8. Trained sentence models measure a cosine near 0.07 and a spread
//!   near 0.94; untrained (random) and raw base models are anisotropic, all their states
//!   sharing a direction (the random fixtures reach a cosine of 0.9955; mean-pooled base
//!   RoBERTa-family models are commonly reported near 0.99 between any two texts), so the
//!   cosine threshold sits at 1 − 1e-4 (45 times closer to 1 than the worst fixture) and
//!   the spread's at a hundredth of the lowest fixture's, 0.11 (the calibration table of
//!   `degenerate_outputs_calibration_on_matched_models` in `tests/check.rs`).
//!
//! NaN and infinity are [`numerics`](super::numerics)' (`non-finite-outputs`): outputs that are
//! not all finite are not measured here.

use super::{Finding, Severity, Subject};
use crate::config::ProblemType;
use crate::error::Result;
use crate::layers::pooling::{pool, Pooling};
use crate::models::Head;
use crate::pipelines::text_classification as tc;
use crate::pipelines::Model;

/// Probe texts run through the network at most.
pub const MAX_TEXTS: usize = 32;
/// Fewer probe texts than this and one label winning them all is not evidence.
pub const MIN_LABEL_TEXTS: usize = 10;
/// Sentence embeddings whose mean pairwise cosine exceeds this are degenerate.
pub const MAX_EMBEDDING_COSINE: f64 = 0.9999;
/// Hidden-state spread across texts below this is degenerate.
pub const MIN_HIDDEN_SPREAD: f64 = 1e-3;

/// The most frequent best label of a sequence classifier on the probe.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelShare {
    pub label: String,
    /// Texts whose best label it is.
    pub wins: usize,
    /// Labels the classifier has.
    pub labels: usize,
    /// Its score (the pipeline's softmax or sigmoid) over the texts it wins.
    pub score_mean: f64,
    pub score_min: f64,
    pub score_max: f64,
}

/// What the probe measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Degeneracy {
    /// Probe texts run.
    pub texts: usize,
    /// Mean pairwise cosine of the embeddings `girder run embeddings` computes.
    pub embedding_cosine: f64,
    /// Spread of the mean-pooled last hidden states across texts (see the module docs).
    pub hidden_spread: f64,
    /// For a single- or multi-label sequence classifier: its most frequent best label.
    pub classifier: Option<LabelShare>,
}

/// Runs the probe through `model` and measures; `None` when an output is not finite (or
/// fewer than two texts were given).
pub fn measure(model: &Model, probe: &[String]) -> Result<Option<Degeneracy>> {
    let texts: Vec<&String> = probe.iter().take(MAX_TEXTS).collect();
    if texts.len() < 2 {
        return Ok(None);
    }
    let encodings = model.encode_texts(&texts)?;
    let plan = model.plan(&encodings);
    let sentence_pooling = model.sentence.as_ref().map(|s| s.pooling);
    let labels = &model.config.id2label;
    let classifies = model.encoder.head() == Head::SequenceClassification
        && labels.len() >= 2
        && model.config.problem_type != Some(ProblemType::Regression);
    let n = texts.len();
    let mut hidden: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut embedded: Vec<Vec<f32>> = vec![Vec::new(); n];
    let mut best: Vec<Option<(String, f64)>> = vec![None; n];
    model.forward_batches(&encodings, &plan, |indices, batch, out| {
        let mean = pool(&out.last_hidden_state, batch, Pooling::Mean)?.to_vec2::<f32>()?;
        let embedding = match sentence_pooling {
            Some(p) if p != Pooling::Mean => {
                Some(pool(&out.last_hidden_state, batch, p)?.to_vec2::<f32>()?)
            }
            _ => None,
        };
        let logits = if classifies {
            Some(
                model
                    .encoder
                    .head_logits(out, batch, None)?
                    .to_vec2::<f32>()?,
            )
        } else {
            None
        };
        for (row, &index) in indices.iter().enumerate() {
            hidden[index] = mean[row].clone();
            embedded[index] = embedding.as_ref().map_or(&mean[row], |e| &e[row]).clone();
            if let Some(logits) = &logits {
                let output = tc::postprocess_item(
                    &logits[row],
                    labels,
                    model.config.problem_type,
                    &tc::Options::default(),
                );
                if let Ok(tc::Output::Best(b)) = output {
                    best[index] = Some((b.label, b.score));
                }
            }
        }
        Ok(())
    })?;
    let finite = |rows: &[Vec<f32>]| rows.iter().flatten().all(|x| x.is_finite());
    if !finite(&hidden) || !finite(&embedded) {
        return Ok(None);
    }
    let classifier = if classifies {
        if best
            .iter()
            .any(|b| b.as_ref().is_none_or(|(_, s)| !s.is_finite()))
        {
            return Ok(None);
        }
        let best: Vec<(String, f64)> = best.into_iter().flatten().collect();
        Some(most_frequent(&best, labels))
    } else {
        None
    };
    Ok(Some(Degeneracy {
        texts: n,
        embedding_cosine: mean_pairwise_cosine(&embedded),
        hidden_spread: spread(&hidden),
        classifier,
    }))
}

/// `degenerate-outputs` warnings, or nothing; the probe runs only when `run_probe` (the
/// tokenizer fits the model) and the subject is an encoder.
pub fn check(subject: &Subject, probe: &[String], run_probe: bool) -> Result<Vec<Finding>> {
    let Some(model) = subject.model.filter(|_| run_probe) else {
        return Ok(Vec::new());
    };
    let Some(d) = measure(model, probe)? else {
        return Ok(Vec::new());
    };
    Ok(findings(&d))
}

/// The warnings `d` calls for.
pub fn findings(d: &Degeneracy) -> Vec<Finding> {
    let mut findings = Vec::new();
    let n = d.texts;
    if let Some(c) = d.classifier.as_ref().filter(|c| c.wins == n) {
        if n >= MIN_LABEL_TEXTS {
            findings.push(Finding::new(
                Severity::Warning,
                "degenerate-outputs",
                format!(
                    "the classifier labels every probe text `{}` ({} of {n}, 100%; {} labels): its score mean {:.3}, min {:.3}, max {:.3}",
                    c.label, c.wins, c.labels, c.score_mean, c.score_min, c.score_max
                ),
                "a head whose bias swamps its input, or a body that no longer tells texts apart (a bad conversion or fine-tune); if this label is right for all of these texts (a detector of a rare class), run `girder check --probe` with texts of every label",
            ));
        }
    }
    if d.embedding_cosine > MAX_EMBEDDING_COSINE || d.hidden_spread < MIN_HIDDEN_SPREAD {
        findings.push(Finding::new(
            Severity::Warning,
            "degenerate-outputs",
            format!(
                "the outputs hardly depend on the input: over the {n} probe texts the sentence embeddings' mean pairwise cosine is {:.6} (threshold {MAX_EMBEDDING_COSINE}) and the hidden states' spread {:.2e} of their magnitude (threshold {MIN_HIDDEN_SPREAD:.0e}); trained models measure a cosine near 0.07 and a spread near 0.9",
                d.embedding_cosine, d.hidden_spread
            ),
            "every input gives (nearly) the same output: a zeroed LayerNorm weight, collapsed or badly converted weights; re-export the model and check it again",
        ));
    }
    findings
}

/// The label that wins most texts (the first in id order on a tie), with its scores there.
fn most_frequent(best: &[(String, f64)], labels: &[String]) -> LabelShare {
    let wins = |label: &String| best.iter().filter(|(l, _)| l == label).count();
    let mut label = labels.first().cloned().unwrap_or_default();
    for l in labels {
        if wins(l) > wins(&label) {
            label = l.clone();
        }
    }
    let scores: Vec<f64> = best
        .iter()
        .filter(|(l, _)| *l == label)
        .map(|(_, s)| *s)
        .collect();
    let count = scores.len();
    LabelShare {
        wins: count,
        labels: labels.len(),
        score_mean: scores.iter().sum::<f64>() / count.max(1) as f64,
        score_min: scores.iter().copied().fold(f64::INFINITY, f64::min),
        score_max: scores.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        label,
    }
}

/// Mean cosine over all pairs of rows (a zero row counts as cosine 0).
fn mean_pairwise_cosine(rows: &[Vec<f32>]) -> f64 {
    let norm = |r: &[f32]| r.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let norms: Vec<f64> = rows.iter().map(|r| norm(r)).collect();
    let (mut sum, mut pairs) = (0.0, 0usize);
    for i in 0..rows.len() {
        for j in i + 1..rows.len() {
            let dot: f64 = rows[i]
                .iter()
                .zip(&rows[j])
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let denominator = norms[i] * norms[j];
            if denominator > 0.0 {
                sum += dot / denominator;
            }
            pairs += 1;
        }
    }
    sum / pairs.max(1) as f64
}

/// sqrt(mean over dimensions of the variance across rows) / sqrt(mean of the squares).
fn spread(rows: &[Vec<f32>]) -> f64 {
    let n = rows.len() as f64;
    let dims = rows.first().map_or(0, Vec::len);
    let (mut variance, mut square) = (0.0, 0.0);
    for d in 0..dims {
        let column = rows.iter().map(|r| f64::from(r[d]));
        let mean = column.clone().sum::<f64>() / n;
        variance += column.clone().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        square += column.map(|x| x * x).sum::<f64>() / n;
    }
    if square == 0.0 {
        return 0.0;
    }
    (variance / square).sqrt()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_identical_and_varied_rows() {
        let same = vec![vec![1.0, -2.0, 0.5]; 5];
        assert!(spread(&same) < 1e-12);
        assert!((mean_pairwise_cosine(&same) - 1.0).abs() < 1e-12);
        let varied = vec![vec![1.0, 0.0], vec![0.0, 1.0], vec![-1.0, 0.0]];
        assert!(spread(&varied) > 0.5);
        assert!((mean_pairwise_cosine(&varied) - (-1.0 / 3.0)).abs() < 1e-12);
    }

    #[test]
    fn one_label_winning_every_text_is_a_warning() {
        let labels: Vec<String> = ["NEG", "POS"].iter().map(|s| s.to_string()).collect();
        let best: Vec<(String, f64)> = (0..12)
            .map(|i| ("POS".into(), 0.9 + i as f64 / 200.0))
            .collect();
        let c = most_frequent(&best, &labels);
        assert_eq!((c.label.as_str(), c.wins), ("POS", 12));
        let d = Degeneracy {
            texts: 12,
            embedding_cosine: 0.2,
            hidden_spread: 0.5,
            classifier: Some(c),
        };
        let f = findings(&d);
        assert_eq!(f.len(), 1);
        assert!(f[0].message.contains("`POS` (12 of 12"), "{}", f[0].message);
        // Too few texts: no evidence.
        let few = Degeneracy {
            texts: 3,
            classifier: Some(most_frequent(&best[..3], &labels)),
            ..d
        };
        assert!(findings(&few).is_empty());
    }
}

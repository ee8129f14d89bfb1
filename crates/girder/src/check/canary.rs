//! The weight-based canary: does the model's own embedding matrix agree with the tokenizer?
//!
//! A wrong tokenizer of plausible size (another model family's, a cased vocabulary on an
//! uncased model, a reordered vocabulary) loads without an error and produces garbage.
//! The model's weights can tell: training pulls the embedding rows of related strings
//! together. A word and its continuation form (`run` / `##run`, `Ġrun` / `run`,
//! `▁run` / `run`), its capitalised form and its plural have rows far more alike than two
//! random entries under the tokenizer the model was trained with. Under any other
//! tokenizer the strings point at rows of unrelated tokens, and the related pairs are no
//! more alike than random pairs. The statistic needs no head, so it works on a
//! sentence-embedding model such as all-MiniLM-L6-v2.
//!
//! The statistic is an effect size: `(mean cos(related) − mean cos(random)) / std cos(random)`,
//! over rows centred on the mean row (trained embeddings share a common direction that
//! makes every cosine positive). Calibration (tests/check.rs builds the zoo): matched,
//! all-MiniLM-L6-v2 with its WordPiece vocabulary gives 7.2 and SmolLM2-135M (its Q4_1
//! GGUF embedding) with its byte-level BPE vocabulary 5.0; mismatched, a permuted vocabulary
//! gives −0.01 to 0.02, and another family's vocabulary (GPT-2's, RoBERTa's, SmolLM2's on
//! MiniLM; MiniLM's on SmolLM2) 0.01 to 0.10. The threshold, [`MIN_RELATED_EFFECT`] = 1.0,
//! sits far from both.
//!
//! Untrained (randomly initialised) weights carry no such structure whatever the
//! tokenizer, so the canary first checks that the rows look trained: the spread of row
//! norms of an i.i.d. Gaussian matrix is `1/sqrt(2·hidden)` of their mean; trained
//! matrices spread far more (all-MiniLM-L6-v2: 6.0×; girder's random test fixtures: 1.0×).

use super::Subject;
use super::{Finding, Severity};
use crate::error::Result;
use candle_core::{DType, Device, Tensor, D};
use std::collections::{HashMap, HashSet};

/// Below this effect size the tokenizer does not match the embedding matrix.
pub const MIN_RELATED_EFFECT: f64 = 1.0;
/// Below this ratio of row-norm spread to a Gaussian matrix's, the rows look untrained.
pub const MIN_TRAINED_SPREAD: f64 = 2.0;
/// Fewer related pairs than this and the statistic is too noisy to decide.
pub const MIN_PAIRS: usize = 200;

/// The model's word-embedding matrix, read from the checkpoint.
pub struct EmbeddingMatrix {
    /// The tensor's name in a base checkpoint (the registry's `embedding_tensor`).
    pub name: String,
    /// `[rows, hidden]`, f32, on the CPU.
    pub weight: Tensor,
}

impl EmbeddingMatrix {
    /// The word embedding of the loaded model, copied to the CPU as f32 when it lives
    /// elsewhere; `None` when the subject has none.
    pub fn load(model: &Subject) -> Result<Option<Self>> {
        let Some((name, weight)) = model.embedding else {
            return Ok(None);
        };
        let weight = weight.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        Ok(Some(EmbeddingMatrix {
            name: name.to_string(),
            weight,
        }))
    }

    /// Rows of the matrix: the number of ids the model can embed.
    pub fn rows(&self) -> usize {
        self.weight.dims()[0]
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.weight.dims()[1]
    }
}

/// The canary's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// Row-norm spread relative to an i.i.d. Gaussian matrix's (≥ [`MIN_TRAINED_SPREAD`]: trained).
    pub trained_spread: f64,
    /// Related pairs found in the vocabulary (ids inside the matrix).
    pub pairs: usize,
    /// The effect size (see the module docs); `None` when not computed.
    pub related_effect: Option<f64>,
    /// Mean norm of the rows the probe uses over the median row norm (diagnostic).
    pub probe_norm_ratio: Option<f64>,
}

/// Measures the canary statistics for `model`'s tokenizer against `embedding`.
pub fn measure(model: &Subject, embedding: &EmbeddingMatrix, probe: &[String]) -> Result<Canary> {
    let weight = &embedding.weight;
    let norms: Vec<f32> = weight.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1()?;
    let trained_spread = spread_of(&norms, embedding.hidden());
    let vocab = model.tokenizer.inner().get_vocab(true);
    let pairs = related_pairs(&vocab, embedding.rows());
    let related_effect = if trained_spread < MIN_TRAINED_SPREAD || pairs.len() < MIN_PAIRS {
        None
    } else {
        Some(effect_of(weight, &pairs)?)
    };
    Ok(Canary {
        trained_spread,
        pairs: pairs.len(),
        related_effect,
        probe_norm_ratio: probe_norm_ratio(model, &norms, probe),
    })
}

/// Row-norm spread of `weight` (`[rows, hidden]`) relative to an i.i.d. Gaussian matrix's.
pub fn trained_spread(weight: &Tensor) -> Result<f64> {
    let (_, hidden) = weight.dims2()?;
    let norms: Vec<f32> = weight.sqr()?.sum(D::Minus1)?.sqrt()?.to_vec1()?;
    Ok(spread_of(&norms, hidden))
}

fn spread_of(norms: &[f32], hidden: usize) -> f64 {
    let (mean, std) = mean_std(norms.iter().map(|&x| x as f64));
    let gaussian_spread = 1.0 / (2.0 * hidden as f64).sqrt();
    if mean > 0.0 {
        std / mean / gaussian_spread
    } else {
        0.0
    }
}

/// The related-pairs effect size of a vocabulary on an embedding matrix `weight`
/// (`[rows, hidden]`, f32): see the module docs. `None` with fewer than [`MIN_PAIRS`] pairs.
pub fn related_effect(weight: &Tensor, vocab: &HashMap<String, u32>) -> Result<Option<f64>> {
    let (rows, _) = weight.dims2()?;
    let pairs = related_pairs(vocab, rows);
    if pairs.len() < MIN_PAIRS {
        return Ok(None);
    }
    effect_of(weight, &pairs).map(Some)
}

fn effect_of(weight: &Tensor, pairs: &[(u32, u32)]) -> Result<f64> {
    // Cosines of rows centred on the mean row; only the rows a pair uses are gathered.
    // The mean as a [1, rows] × [rows, hidden] product: candle reduces over dim 0 slowly.
    let (rows, _) = weight.dims2()?;
    let mean_row =
        (Tensor::ones((1, rows), DType::F32, weight.device())?.matmul(weight)? / rows as f64)?; // [1, hidden]
    let unit = |ids: &[u32]| -> Result<Tensor> {
        let rows = weight
            .index_select(&Tensor::new(ids, weight.device())?, 0)?
            .broadcast_sub(&mean_row)?; // [pairs, hidden]
        let norms = rows.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(rows.broadcast_div(&norms)?)
    };
    let cosines = |a: &[u32], b: &[u32]| -> Result<Vec<f32>> {
        Ok((unit(a)? * unit(b)?)?.sum(D::Minus1)?.to_vec1()?)
    };
    let (a, b): (Vec<u32>, Vec<u32>) = pairs.iter().copied().unzip();
    let related = cosines(&a, &b)?;
    // Random pairs drawn from the same ids, so frequency and norm effects cancel.
    let pool: Vec<u32> = a.iter().chain(&b).copied().collect();
    let mut rng = SplitMix64(0x9e37_79b9_7f4a_7c15);
    let n_random = (pairs.len() * 4).clamp(2_000, 20_000);
    let (ra, rb): (Vec<u32>, Vec<u32>) = (0..n_random)
        .map(|_| (rng.pick(&pool), rng.pick(&pool)))
        .filter(|(x, y)| x != y)
        .unzip();
    let random = cosines(&ra, &rb)?;
    let (rel_mean, _) = mean_std(related.iter().map(|&x| x as f64));
    let (rand_mean, rand_std) = mean_std(random.iter().map(|&x| x as f64));
    Ok((rel_mean - rand_mean) / rand_std.max(1e-12))
}

/// The canary's findings; `embedding` is `None` when the model exposes no word-embedding
/// matrix.
pub fn check(
    model: &Subject,
    embedding: Option<&EmbeddingMatrix>,
    probe: &[String],
) -> Result<Vec<Finding>> {
    let Some(embedding) = embedding else {
        return Ok(vec![Finding::new(
            Severity::Info,
            "canary-inconclusive",
            format!(
                "{} exposes no word-embedding matrix: the weight-based tokenizer check did not run",
                model.class_name
            ),
            "",
        )]);
    };
    let canary = measure(model, embedding, probe)?;
    let probe_rows = canary
        .probe_norm_ratio
        .map(|r| format!("; the probe's rows have {r:.2}× the median row norm"))
        .unwrap_or_default();
    if canary.trained_spread < MIN_TRAINED_SPREAD {
        return Ok(vec![Finding::new(
            Severity::Info,
            "canary-untrained",
            format!(
                "the rows of `{}` look untrained (row-norm spread {:.2}× that of random init, trained models show ≥ {MIN_TRAINED_SPREAD}): the weight-based tokenizer check cannot tell, as for a random test model",
                embedding.name, canary.trained_spread
            ),
            "",
        )]);
    }
    let Some(effect) = canary.related_effect else {
        return Ok(vec![Finding::new(
            Severity::Info,
            "canary-inconclusive",
            format!(
                "only {} related vocabulary pairs (word / continuation form, case, plural) fall inside the {} embedding rows; the weight-based check needs {MIN_PAIRS}",
                canary.pairs,
                embedding.rows()
            ),
            "",
        )]);
    };
    Ok(vec![if effect < MIN_RELATED_EFFECT {
        Finding::new(
            Severity::Error,
            "tokenizer-mismatch",
            format!(
                "this tokenizer does not match the model's embeddings: {} related vocabulary pairs (word / continuation form, case, plural) have rows no more alike than random pairs (effect {effect:.2}, a matched tokenizer gives ≥ {MIN_RELATED_EFFECT}){probe_rows}",
                canary.pairs
            ),
            "use the tokenizer the model was trained with (the tokenizer files of the model's own repository); a tokenizer of another model or revision maps text to the wrong rows",
        )
    } else {
        Finding::new(
            Severity::Info,
            "canary-passed",
            format!(
                "the embeddings agree with the tokenizer: {} related vocabulary pairs are more alike than random pairs (effect {effect:.2}, threshold {MIN_RELATED_EFFECT}){probe_rows}",
                canary.pairs
            ),
            "",
        )
    }])
}

/// Pairs of ids whose strings are related: a word and its continuation / word-start form
/// (WordPiece `##`, byte-level BPE `Ġ`, SentencePiece `▁`), a lowercase word and its
/// capitalised form, a word and its plural. Only ids below `rows`.
pub fn related_pairs(vocab: &HashMap<String, u32>, rows: usize) -> Vec<(u32, u32)> {
    let inside = |id: u32| (id as usize) < rows;
    let mut pairs = HashSet::new();
    let mut other = String::new(); // reused: this loop runs over the whole vocabulary
    let mut add = |id: u32, other: &str| {
        if let Some(&j) = vocab.get(other) {
            if j != id && inside(j) {
                pairs.insert((id.min(j), id.max(j)));
            }
        }
    };
    for (token, &id) in vocab {
        if !inside(id) {
            continue;
        }
        let (marker, surface) = split_marker(token);
        let mut chars = surface.chars();
        let (Some(first), Some(_)) = (chars.next(), chars.next()) else {
            continue;
        };
        if !surface.chars().all(char::is_alphabetic) {
            continue;
        }
        if marker.is_empty() {
            for m in MARKERS {
                other.clear();
                other.push_str(m);
                other.push_str(surface);
                add(id, &other);
            }
        }
        if surface.chars().all(char::is_lowercase) {
            other.clear();
            other.push_str(marker);
            other.extend(first.to_uppercase());
            other.push_str(&surface[first.len_utf8()..]);
            add(id, &other);
            if surface.chars().nth(2).is_some() {
                other.clear();
                other.push_str(token);
                other.push('s');
                add(id, &other);
            }
        }
    }
    let mut pairs: Vec<(u32, u32)> = pairs.into_iter().collect();
    pairs.sort_unstable();
    pairs
}

/// Word-continuation (`##`) and word-start (`Ġ`, `▁`) markers of the common tokenizer models.
const MARKERS: [&str; 3] = ["##", "Ġ", "▁"];

/// `("##", "ing")` for `##ing`, `("", "run")` for `run`.
pub fn split_marker(token: &str) -> (&str, &str) {
    for m in MARKERS {
        if let Some(rest) = token.strip_prefix(m) {
            return (m, rest);
        }
    }
    ("", token)
}

fn probe_norm_ratio(model: &Subject, norms: &[f32], probe: &[String]) -> Option<f64> {
    let mut sorted: Vec<f32> = norms.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = *sorted.get(sorted.len() / 2)? as f64;
    let inner = model.tokenizer.inner();
    let ids: Vec<f64> = probe
        .iter()
        .filter_map(|text| inner.encode(text.as_str(), false).ok())
        .flat_map(|e| e.get_ids().to_vec())
        .filter_map(|id| norms.get(id as usize).map(|&n| n as f64))
        .collect();
    if ids.is_empty() || median <= 0.0 {
        return None;
    }
    Some(mean_std(ids.into_iter()).0 / median)
}

fn mean_std(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let values: Vec<f64> = values.collect();
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// A small deterministic generator, so the canary gives the same number on every run.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn pick(&mut self, pool: &[u32]) -> u32 {
        pool[(self.next() % pool.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn related_pairs_cover_markers_case_and_plurals() {
        let vocab: HashMap<String, u32> = [
            ("run", 0),
            ("##run", 1),
            ("Run", 2),
            ("runs", 3),
            ("Ġcat", 4),
            ("cat", 5),
            ("Ġcats", 6),
            ("x", 7),
            ("##x", 8),
            ("far", 99),
        ]
        .into_iter()
        .map(|(s, i)| (s.to_string(), i))
        .collect();
        let pairs = related_pairs(&vocab, 50);
        assert_eq!(pairs, vec![(0, 1), (0, 2), (0, 3), (4, 5), (4, 6)]);
    }

    #[test]
    fn markers_split() {
        assert_eq!(split_marker("##ing"), ("##", "ing"));
        assert_eq!(split_marker("▁the"), ("▁", "the"));
        assert_eq!(split_marker("the"), ("", "the"));
    }
}

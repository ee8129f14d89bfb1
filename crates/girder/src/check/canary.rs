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
//! norms of an i.i.d. Gaussian matrix is `1/sqrt(2·hidden)` of their mean and the spread of
//! its rows' cosines `1/sqrt(hidden)`; trained matrices spread far more in one or the other
//! (all-MiniLM-L6-v2's norms 6.0×, Gemma 3's cosines; girder's random test fixtures: 1.0×).
//!
//! A tokenizer wrong in one part of its vocabulary only (a block of ids shifted by an
//! inserted line, frequent words re-sorted) keeps the whole-vocabulary effect high. The
//! effect is therefore also measured per id region ([`region_effects`]: ids in order, which
//! is the order of frequency in WordPiece, BPE and Unigram vocabularies): a stretch of
//! regions whose effect collapses while the typical region keeps its structure is
//! `tokenizer-mismatch-region`, an error from [`REGION_ERROR_SPAN`] ids on, a warning below.
//! Calibration (tests/check.rs, `localised_damage_zoo`): blocks of 300 to 5,000 of MiniLM's
//! ids permuted or shifted give region effects −0.44 to 0.25 against a typical 4.1 to 6.1;
//! the lowest region of a matched real model is 1.46 (all-mpnet-base-v2's most frequent
//! words), and a region collapses below min(1.0, 0.2 × typical).

use super::Subject;
use super::{Finding, Severity};
use crate::error::Result;
use crate::layers::Embedding;
use std::collections::{HashMap, HashSet};

/// Below this effect size the tokenizer does not match the embedding matrix.
pub const MIN_RELATED_EFFECT: f64 = 1.0;
/// Below this ratio of row-norm spread to a Gaussian matrix's, the rows look untrained.
pub const MIN_TRAINED_SPREAD: f64 = 2.0;
/// Fewer related pairs than this and the statistic is too noisy to decide: a model trained
/// on a small corpus with a small vocabulary (girder's toy seq2seq fixtures: 283 pairs, rows
/// shaped by training yet without a language's structure) gives effects near 0 under its own
/// tokenizer. Real vocabularies give thousands (MiniLM 4,820, SmolLM2 21,223).
pub const MIN_PAIRS: usize = 500;

/// The model's word-embedding matrix, as loaded.
pub struct EmbeddingMatrix {
    /// The tensor's name in a base checkpoint (the registry's `embedding_tensor`).
    pub name: String,
    /// `[rows, hidden]`, in the precision it is kept in (read a chunk of rows at a time).
    pub embedding: Embedding,
}

/// Rows of a table read at a time by the checks that pass over all of them: 32 MB of f32
/// for a hidden size of 1,024.
const CHUNK_ROWS: usize = 8_192;

impl EmbeddingMatrix {
    /// The word embedding of the loaded model; `None` when the subject has none.
    pub fn load(model: &Subject) -> Result<Option<Self>> {
        let Some((name, embedding)) = model.embedding else {
            return Ok(None);
        };
        Ok(Some(Self::new(name, embedding)))
    }

    /// The table of `embedding`, named `name` in messages.
    pub fn new(name: &str, embedding: &Embedding) -> Self {
        EmbeddingMatrix {
            name: name.to_string(),
            embedding: embedding.clone(),
        }
    }

    /// Rows of the matrix: the number of ids the model can embed.
    pub fn rows(&self) -> usize {
        self.embedding.dims().0
    }

    /// Hidden size.
    pub fn hidden(&self) -> usize {
        self.embedding.dims().1
    }
}

/// The canary's measurements.
#[derive(Debug, Clone, PartialEq)]
pub struct Canary {
    /// [`trained_spread`]: relative to an i.i.d. Gaussian matrix's (≥ [`MIN_TRAINED_SPREAD`]: trained).
    pub trained_spread: f64,
    /// Related pairs found in the vocabulary (ids inside the matrix).
    pub pairs: usize,
    /// The effect size (see the module docs); `None` when not computed.
    pub related_effect: Option<f64>,
    /// Mean norm of the rows the probe uses over the median row norm (diagnostic).
    pub probe_norm_ratio: Option<f64>,
    /// The median effect of the id regions ([`region_effects`]); `None` when not computed.
    pub typical_region_effect: Option<f64>,
    /// The id ranges whose regions lost their structure ([`damaged_ranges`]).
    pub damaged: Vec<DamagedRange>,
}

/// Measures the canary statistics for `tokenizer` against `embedding`.
pub fn measure(
    tokenizer: &tokenizers::Tokenizer,
    embedding: &EmbeddingMatrix,
    probe: &[String],
) -> Result<Canary> {
    let weight = &embedding.embedding;
    let (norms, mean_row, trained_spread) = spread_and_norms(weight)?;
    let vocab = tokenizer.get_vocab(true);
    let pairs = related_pairs(&vocab, embedding.rows());
    let unit_rows = if trained_spread < MIN_TRAINED_SPREAD || pairs.len() < MIN_PAIRS {
        None
    } else {
        Some(UnitRows::gather(weight, &mean_row, &pairs)?)
    };
    let related_effect = unit_rows.as_ref().map(|rows| effect_of(rows, &pairs));
    let (typical_region_effect, damaged) = match &unit_rows {
        Some(rows) => {
            let regions = regions_of(rows, &pairs);
            let mut effects: Vec<f64> = regions.iter().map(|r| r.effect).collect();
            effects.sort_by(f64::total_cmp);
            (
                effects.get(effects.len() / 2).copied(),
                damaged_ranges(&regions),
            )
        }
        None => (None, Vec::new()),
    };
    Ok(Canary {
        trained_spread,
        pairs: pairs.len(),
        related_effect,
        probe_norm_ratio: probe_norm_ratio(tokenizer, &norms, probe),
        typical_region_effect,
        damaged,
    })
}

/// How far `weight` (`[rows, hidden]`) is from an i.i.d. Gaussian matrix: the larger of its
/// row-norm spread and its cosine spread, each relative to a Gaussian matrix's (1.0 there).
///
/// Training spreads the row norms (frequent and rare tokens end up with different norms:
/// all-MiniLM-L6-v2 6.0×) or, where norms are held alike, the angles between rows (Gemma 3's
/// rows have nearly equal norms, 0.02×, and cosines spread far wider than random rows').
pub fn trained_spread(weight: &Embedding) -> Result<f64> {
    Ok(spread_and_norms(weight)?.2)
}

/// Every row of `weight`, [`CHUNK_ROWS`] at a time: `f(rows)` with the rows' f32 values.
pub(crate) fn for_each_chunk(
    weight: &Embedding,
    mut f: impl FnMut(&[f32]) -> Result<()>,
) -> Result<()> {
    let rows = weight.dims().0;
    for start in (0..rows).step_by(CHUNK_ROWS) {
        f(&weight.rows_f32(start..(start + CHUNK_ROWS).min(rows))?)?;
    }
    Ok(())
}

/// The mean of `weight`'s rows.
fn mean_row(weight: &Embedding) -> Result<Vec<f32>> {
    let (rows, hidden) = weight.dims();
    let mut mean_row = vec![0f32; hidden];
    for_each_chunk(weight, |chunk| {
        for row in chunk.chunks_exact(hidden) {
            mean_row.iter_mut().zip(row).for_each(|(m, x)| *m += x);
        }
        Ok(())
    })?;
    mean_row.iter_mut().for_each(|m| *m /= rows.max(1) as f32);
    Ok(mean_row)
}

/// The row norms of `weight`, its mean row and its [`trained_spread`], reading the table a
/// chunk of rows at a time.
fn spread_and_norms(weight: &Embedding) -> Result<(Vec<f32>, Vec<f32>, f64)> {
    let (rows, hidden) = weight.dims();
    let mut norms = Vec::with_capacity(rows);
    let mut mean_row = vec![0f32; hidden];
    for_each_chunk(weight, |chunk| {
        for row in chunk.chunks_exact(hidden) {
            norms.push(dot(row, row).sqrt());
            mean_row.iter_mut().zip(row).for_each(|(m, x)| *m += x);
        }
        Ok(())
    })?;
    mean_row.iter_mut().for_each(|m| *m /= rows.max(1) as f32);
    // Cosines of random pairs of rows centred on the mean row: their spread is
    // 1/sqrt(hidden) for a Gaussian matrix.
    let mut rng = SplitMix64(0x2545_f491_4f6c_dd1d);
    let pairs: Vec<(usize, usize)> = (0..2_000)
        .map(|_| {
            (
                (rng.next() % rows.max(1) as u64) as usize,
                (rng.next() % rows.max(1) as u64) as usize,
            )
        })
        .collect();
    let ids: Vec<u32> = pairs
        .iter()
        .flat_map(|&(i, j)| [i as u32, j as u32])
        .filter(|_| rows > 0)
        .collect();
    let picked = weight.gather_f32(&ids)?;
    let centred = |k: usize| -> Vec<f32> {
        let row = &picked[k * hidden..(k + 1) * hidden];
        row.iter().zip(&mean_row).map(|(x, m)| x - m).collect()
    };
    let cosines: Vec<f64> = pairs
        .iter()
        .enumerate()
        .filter(|_| rows > 0)
        .filter_map(|(k, &(i, j))| {
            let (a, b) = (centred(2 * k), centred(2 * k + 1));
            let norm = (dot(&a, &a) * dot(&b, &b)).sqrt();
            (i != j && norm > 0.0).then(|| (dot(&a, &b) / norm) as f64)
        })
        .collect();
    let (_, cosine_std) = mean_std(cosines.into_iter());
    let cosine_spread = cosine_std * (hidden as f64).sqrt();
    let spread = spread_of(&norms, hidden).max(cosine_spread);
    Ok((norms, mean_row, spread))
}

/// The dot product, in eight lanes so that it vectorises.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (chunks_a, chunks_b) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = chunks_a
        .remainder()
        .iter()
        .zip(chunks_b.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in chunks_a.zip(chunks_b) {
        for k in 0..8 {
            lanes[k] += x[k] * y[k];
        }
    }
    lanes.iter().sum::<f32>() + tail
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

/// The related-pairs effect size of a vocabulary on an embedding table `weight`
/// (`[rows, hidden]`, in any precision): see the module docs. `None` with fewer than [`MIN_PAIRS`] pairs.
pub fn related_effect(weight: &Embedding, vocab: &HashMap<String, u32>) -> Result<Option<f64>> {
    let (rows, _) = weight.dims();
    let pairs = related_pairs(vocab, rows);
    if pairs.len() < MIN_PAIRS {
        return Ok(None);
    }
    let mean_row = mean_row(weight)?;
    Ok(Some(effect_of(
        &UnitRows::gather(weight, &mean_row, &pairs)?,
        &pairs,
    )))
}

fn effect_of(rows: &UnitRows, pairs: &[(u32, u32)]) -> f64 {
    let related: Vec<f64> = pairs.iter().map(|&(a, b)| rows.cosine(a, b)).collect();
    // Random pairs drawn from the same ids, so frequency and norm effects cancel.
    let pool: Vec<u32> = pairs
        .iter()
        .map(|p| p.0)
        .chain(pairs.iter().map(|p| p.1))
        .collect();
    let mut rng = SplitMix64(0x9e37_79b9_7f4a_7c15);
    let n_random = (pairs.len() * 4).clamp(2_000, 20_000);
    let random: Vec<f64> = (0..n_random)
        .map(|_| (rng.pick(&pool), rng.pick(&pool)))
        .filter(|(x, y)| x != y)
        .map(|(x, y)| rows.cosine(x, y))
        .collect();
    let (rel_mean, _) = mean_std(related.into_iter());
    let (rand_mean, rand_std) = mean_std(random.into_iter());
    (rel_mean - rand_mean) / rand_std.max(1e-12)
}

/// Pair-bearing ids per region of [`region_effects`]: enough pairs for a stable effect
/// (the frequent words of a WordPiece vocabulary bring about 1.5 pairs each).
pub const REGION_IDS: usize = 96;
/// A region has lost its structure when its effect is below [`MIN_RELATED_EFFECT`] and
/// below this share of the median region's.
pub const REGION_COLLAPSE: f64 = 0.2;
/// Below this median region effect the vocabulary's structure is too weak to localise damage.
pub const MIN_TYPICAL_REGION_EFFECT: f64 = 3.0;
/// Damaged ranges spanning at least this many ids are an error, narrower ones a warning.
pub const REGION_ERROR_SPAN: u32 = 500;
/// Regions are examined among the ids below this one: the frequent part of any vocabulary.
/// Beyond it, large vocabularies hold rare merges that training barely moved (the last
/// 8,000 of Qwen2.5's 151,665 ids show no structure at all under their own tokenizer).
pub const REGION_ID_LIMIT: u32 = 32_768;

/// The related-pairs effect of one id region.
#[derive(Debug, Clone, PartialEq)]
pub struct RegionEffect {
    /// First and last id of the region's pair-bearing ids.
    pub first_id: u32,
    pub last_id: u32,
    /// Related pairs with an id in the region.
    pub pairs: usize,
    /// The region's effect size, against random pairs among the same rows.
    pub effect: f64,
}

/// The related-pairs effect per id region: the pair-bearing ids below [`REGION_ID_LIMIT`] in
/// id order (the order of
/// frequency in WordPiece, BPE and Unigram vocabularies alike), [`REGION_IDS`] at a time,
/// regions overlapping by half. Each region is measured against random pairs of its own
/// rows, so frequency bands with more alike rows (frequent words share directions) are
/// not mistaken for damage. A tokenizer shifted or permuted in one part of its vocabulary
/// keeps the whole-vocabulary effect high, and collapses the effect of the regions it
/// touches.
pub fn region_effects(weight: &Embedding, pairs: &[(u32, u32)]) -> Result<Vec<RegionEffect>> {
    let mean_row = mean_row(weight)?;
    Ok(regions_of(
        &UnitRows::gather(weight, &mean_row, pairs)?,
        pairs,
    ))
}

/// [`region_effects`] on rows gathered for (at least) `pairs`.
fn regions_of(rows: &UnitRows, pairs: &[(u32, u32)]) -> Vec<RegionEffect> {
    let pairs: Vec<(u32, u32)> = pairs
        .iter()
        .copied()
        .filter(|&(a, b)| a.min(b) < REGION_ID_LIMIT)
        .collect();
    let pairs = pairs.as_slice();
    let mut by_id: Vec<(u32, usize)> = pairs
        .iter()
        .enumerate()
        .flat_map(|(i, &(a, b))| [(a, i), (b, i)])
        .filter(|&(id, _)| id < REGION_ID_LIMIT)
        .collect();
    by_id.sort_unstable();
    let anchors: Vec<u32> = {
        let mut ids: Vec<u32> = by_id.iter().map(|&(id, _)| id).collect();
        ids.dedup();
        ids
    };
    let mut regions = Vec::new();
    let step = (REGION_IDS / 2).max(1);
    let mut rng = SplitMix64(0x5851_f42d_4c95_7f2d);
    let mut start = 0;
    while start < anchors.len() {
        let end = (start + REGION_IDS).min(anchors.len());
        // A short tail region is merged into the previous one by the window's reach.
        if end - start < REGION_IDS / 2 && start > 0 {
            break;
        }
        let (first, last) = (anchors[start], anchors[end - 1]);
        let lo = by_id.partition_point(|&(id, _)| id < first);
        let hi = by_id.partition_point(|&(id, _)| id <= last);
        let mut members: Vec<usize> = by_id[lo..hi].iter().map(|&(_, i)| i).collect();
        members.sort_unstable();
        members.dedup();
        let related: Vec<f64> = members
            .iter()
            .map(|&i| rows.cosine(pairs[i].0, pairs[i].1))
            .collect();
        let pool: Vec<u32> = members
            .iter()
            .flat_map(|&i| [pairs[i].0, pairs[i].1])
            .collect();
        let random: Vec<f64> = (0..400)
            .map(|_| (rng.pick(&pool), rng.pick(&pool)))
            .filter(|(x, y)| x != y)
            .map(|(x, y)| rows.cosine(x, y))
            .collect();
        let (rel_mean, _) = mean_std(related.iter().copied());
        let (rand_mean, rand_std) = mean_std(random.iter().copied());
        regions.push(RegionEffect {
            first_id: first,
            last_id: last,
            pairs: members.len(),
            effect: (rel_mean - rand_mean) / rand_std.max(1e-12),
        });
        if end == anchors.len() {
            break;
        }
        start += step;
    }
    regions
}

/// A stretch of ids whose regions all collapsed.
#[derive(Debug, Clone, PartialEq)]
pub struct DamagedRange {
    pub first_id: u32,
    pub last_id: u32,
    /// The lowest effect of its regions.
    pub worst_effect: f64,
    /// The median effect of all regions: what the rest of the vocabulary shows.
    pub typical_effect: f64,
    /// Related pairs in its regions.
    pub pairs: usize,
}

/// The stretches of consecutive regions that lost their structure (see [`REGION_COLLAPSE`]);
/// none when the median region's effect is below [`MIN_TYPICAL_REGION_EFFECT`].
pub fn damaged_ranges(regions: &[RegionEffect]) -> Vec<DamagedRange> {
    let mut effects: Vec<f64> = regions.iter().map(|r| r.effect).collect();
    effects.sort_by(f64::total_cmp);
    let Some(&median) = effects.get(effects.len() / 2) else {
        return Vec::new();
    };
    if median < MIN_TYPICAL_REGION_EFFECT {
        return Vec::new();
    }
    let limit = (REGION_COLLAPSE * median).min(MIN_RELATED_EFFECT);
    let mut ranges: Vec<DamagedRange> = Vec::new();
    let mut previous_collapsed = false;
    for region in regions {
        let collapsed = region.effect < limit;
        if collapsed {
            match ranges.last_mut() {
                Some(range) if previous_collapsed => {
                    range.last_id = range.last_id.max(region.last_id);
                    range.worst_effect = range.worst_effect.min(region.effect);
                    range.pairs += region.pairs;
                }
                _ => ranges.push(DamagedRange {
                    first_id: region.first_id,
                    last_id: region.last_id,
                    worst_effect: region.effect,
                    typical_effect: median,
                    pairs: region.pairs,
                }),
            }
        }
        previous_collapsed = collapsed;
    }
    ranges
}

/// Unit-length rows, centred on the mean row, of the ids a set of pairs uses.
struct UnitRows {
    index: HashMap<u32, usize>,
    hidden: usize,
    values: Vec<f32>,
}

impl UnitRows {
    /// The rows of `pairs`' ids, centred on `mean_row` and scaled to unit length.
    fn gather(weight: &Embedding, mean_row: &[f32], pairs: &[(u32, u32)]) -> Result<Self> {
        let hidden = weight.dims().1;
        let mut ids: Vec<u32> = pairs.iter().flat_map(|&(a, b)| [a, b]).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut values = weight.gather_f32(&ids)?;
        for centred in values.chunks_exact_mut(hidden) {
            centred.iter_mut().zip(mean_row).for_each(|(x, m)| *x -= m);
            let norm = dot(centred, centred).sqrt().max(1e-12);
            centred.iter_mut().for_each(|x| *x /= norm);
        }
        let index = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
        Ok(UnitRows {
            index,
            hidden,
            values,
        })
    }

    fn row(&self, id: u32) -> &[f32] {
        let i = self.index[&id];
        &self.values[i * self.hidden..(i + 1) * self.hidden]
    }

    fn cosine(&self, a: u32, b: u32) -> f64 {
        dot(self.row(a), self.row(b)) as f64
    }
}

/// The canary's findings for a model folder's subject; `embedding` is `None` when the model
/// exposes no word-embedding matrix.
pub fn check(
    model: &Subject,
    embedding: Option<&EmbeddingMatrix>,
    probe: &[String],
) -> Result<Vec<Finding>> {
    check_tokenizer(model.tokenizer.inner(), model.class_name, embedding, probe)
}

/// The canary's findings for `tokenizer` against the embedding of a model of `class_name`
/// (a GGUF file's, whose tokenizer comes from its metadata or `--tokenizer`).
pub fn check_tokenizer(
    tokenizer: &tokenizers::Tokenizer,
    class_name: &str,
    embedding: Option<&EmbeddingMatrix>,
    probe: &[String],
) -> Result<Vec<Finding>> {
    let Some(embedding) = embedding else {
        return Ok(vec![Finding::new(
            Severity::Info,
            "canary-inconclusive",
            format!(
                "{} exposes no word-embedding matrix: the weight-based tokenizer check did not run",
                class_name
            ),
            "",
        )]);
    };
    let canary = measure(tokenizer, embedding, probe)?;
    let probe_rows = canary
        .probe_norm_ratio
        .map(|r| format!("; the probe's rows have {r:.2}× the median row norm"))
        .unwrap_or_default();
    if canary.trained_spread < MIN_TRAINED_SPREAD {
        return Ok(vec![Finding::new(
            Severity::Info,
            "canary-untrained",
            format!(
                "the rows of `{}` look untrained (their norms and angles spread {:.2}× as random init's, trained models show ≥ {MIN_TRAINED_SPREAD}): the weight-based tokenizer check cannot tell, as for a random test model",
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
    if effect >= MIN_RELATED_EFFECT && !canary.damaged.is_empty() {
        return Ok(canary
            .damaged
            .iter()
            .map(|range| damaged_range_finding(tokenizer, range))
            .collect());
    }
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

/// A `tokenizer-mismatch-region` finding: an error when the range spans
/// [`REGION_ERROR_SPAN`] ids or more, else a warning.
fn damaged_range_finding(inner: &tokenizers::Tokenizer, range: &DamagedRange) -> Finding {
    let span = range.last_id - range.first_id + 1;
    let examples: Vec<String> = (range.first_id..=range.last_id)
        .filter_map(|id| inner.id_to_token(id))
        .filter(|t| split_marker(t).1.chars().all(char::is_alphabetic))
        .take(4)
        .map(|t| format!("`{t}`"))
        .collect();
    let severity = if span >= REGION_ERROR_SPAN {
        Severity::Error
    } else {
        Severity::Warning
    };
    Finding::new(
        severity,
        "tokenizer-mismatch-region",
        format!(
            "ids {}..={} ({span} ids: {}, …) do not match the model's embeddings: their {} related vocabulary pairs are no more alike than random rows (effect {:.2}) where the vocabulary's typical region shows {:.2}: a block of the vocabulary is shifted or reordered{}",
            range.first_id,
            range.last_id,
            examples.join(", "),
            range.pairs,
            range.worst_effect,
            range.typical_effect,
            if severity == Severity::Error {
                String::new()
            } else {
                format!(" (under {REGION_ERROR_SPAN} ids: a warning)")
            }
        ),
        "use the tokenizer the model was trained with; compare its vocabulary with this one in the id range named (an edited vocab.txt, merged or re-sorted entries)",
    )
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

fn probe_norm_ratio(inner: &tokenizers::Tokenizer, norms: &[f32], probe: &[String]) -> Option<f64> {
    let mut sorted: Vec<f32> = norms.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let median = *sorted.get(sorted.len() / 2)? as f64;

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

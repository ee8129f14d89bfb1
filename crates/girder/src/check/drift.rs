//! What a quantization costs, measured before any traffic: the model as loaded (quantized)
//! against the same checkpoint in f32 on probe texts, with the figure that fits its head.
//!
//! | model | figures | drift |
//! |---|---|---|
//! | sentence embedder, base encoder | cosine of each text's embedding: mean, lowest | 1 − the lowest cosine |
//! | sequence classifier | top-1 label agreement, largest change of any label's probability | 1 − agreement |
//! | token classifier | entity F1 (simple aggregation: span and label), token-label agreement | 1 − entity F1 |
//! | masked LM | top-1 agreement at a masked word per text, largest change of the reference's top probability | 1 − agreement |
//! | causal LM | next-token top-1 agreement over every position, mean KL(f32 ‖ quantized) | 1 − agreement |
//! | encoder-decoder (text) | greedy outputs (20 new tokens) identical | 1 − the share identical |
//!
//! A drift above `max_drift` fails the report; the CLI then refuses the model unless the user
//! allows it (`--allow-drift`).

use super::behaviour::PARAPHRASES;
use super::PROBE;
use crate::error::{Error, Result};
use crate::generate::{Overrides, Seq2SeqGenerator};
use crate::models::Head;
use crate::pipelines::{
    embeddings, fill_mask, text2text_generation, text_classification as tc,
    token_classification as tok, Model, Task,
};
use crate::pretrained::Loaded;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};

/// The default largest drift a quantized model may show (`--max-drift`).
pub const DEFAULT_MAX_DRIFT: f64 = 0.02;

/// Greedy tokens an encoder-decoder generates per probe text.
const SEQ2SEQ_NEW_TOKENS: usize = 20;

/// A quantized model against its f32 reference.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftReport {
    /// What was measured against f32 (`q8_0`).
    pub candidate: String,
    /// Probe texts run through both.
    pub texts: usize,
    /// What [`drift`](Self::drift) is, in words.
    pub measure: String,
    /// The one figure compared with `max_drift`: 0 is no change, 1 is every output changed.
    pub drift: f64,
    pub max_drift: f64,
    /// `drift <= max_drift`.
    pub ok: bool,
    /// Every figure measured, by name.
    pub figures: BTreeMap<String, f64>,
}

impl DriftReport {
    /// One line for a terminal: the figures and the verdict.
    pub fn summary(&self) -> String {
        let figures: Vec<String> = self
            .figures
            .iter()
            .map(|(name, value)| format!("{name} {value:.4}"))
            .collect();
        format!(
            "{} against f32 on {} probe texts: {}; drift ({}) {:.4}, {} --max-drift {}",
            self.candidate,
            self.texts,
            figures.join(", "),
            self.measure,
            self.drift,
            if self.ok { "within" } else { "ABOVE" },
            self.max_drift
        )
    }
}

/// The built-in probe of the drift report: the guard's probe texts and both sides of the
/// paraphrase pairs (52 texts).
pub fn probe_texts() -> Vec<String> {
    PROBE
        .iter()
        .copied()
        .chain(PARAPHRASES.iter().flat_map(|(a, b)| [*a, *b]))
        .map(String::from)
        .collect()
}

/// Loads `reference` as `options` say, quantized (`quantize`) or in bf16 or f16
/// (`dtype`), and measures it against the same checkpoint in f32 on `texts`: the f32
/// model's probe outputs are computed and the f32 model dropped before the other one loads,
/// so the peak memory is the larger of the two models, not their sum. The caller decides
/// what a failed report means (the CLI refuses the model unless `--allow-drift`).
pub fn load_measured(
    reference: &str,
    options: &crate::LoadOptions,
    texts: &[String],
    max_drift: f64,
) -> Result<(Loaded, DriftReport)> {
    load_measured_with_outputs(reference, options, texts, max_drift)
        .map(|(loaded, report, _)| (loaded, report))
}

/// [`load_measured`], and the reduced model's probe outputs the report was made from (what
/// `girder quantize` holds a written model to).
pub fn load_measured_with_outputs(
    reference: &str,
    options: &crate::LoadOptions,
    texts: &[String],
    max_drift: f64,
) -> Result<(Loaded, DriftReport, ProbeOutputs)> {
    if !(0.0..=1.0).contains(&max_drift) {
        return Err(Error::InvalidOption {
            option: "max_drift".into(),
            reason: format!("{max_drift} is not between 0 and 1"),
        });
    }
    // Refused by the load itself; said before the f32 one runs.
    crate::pretrained::check_precision(reference, options)?;
    let Some(candidate) = crate::pretrained::reduced_precision(options) else {
        return Err(Error::InvalidOption {
            option: "dtype".into(),
            reason: "the accuracy report compares a quantized, bf16 or f16 load with f32; this load is f32".into(),
        });
    };
    let f32_options = crate::LoadOptions {
        quantize: None,
        dtype: candle_core::DType::F32,
        ..options.clone()
    };
    let expected = probe_outputs(&crate::load(reference, &f32_options)?, texts)?;
    let reduced = crate::load(reference, options)?;
    let got = probe_outputs(&reduced, texts)?;
    let report = compare(&expected, &got, &candidate, texts.len(), max_drift)?;
    Ok((reduced, report, got))
}

/// Causal LMs are probed on this many texts at most: the reference's log-probabilities of
/// every position are kept until the quantized model is compared (vocabulary-sized rows).
const MAX_CAUSAL_TEXTS: usize = 24;

/// A model's outputs on the probe, in the form its head is compared in. Computed from the
/// f32 reference first, so that the reference can be dropped before the quantized model
/// loads (the peak memory is the larger of the two, not their sum).
#[derive(Debug, Clone)]
pub enum ProbeOutputs {
    /// A sequence classifier: every label's probability per text.
    Labels(Vec<Vec<(String, f64)>>),
    /// A token classifier: entity spans `(text, label, start, end)` and every token's label.
    Entities {
        spans: HashSet<(usize, String, Option<usize>, Option<usize>)>,
        tokens: Vec<String>,
    },
    /// A masked LM: the predictions at the masked word of each text, best first.
    Masked(Vec<Vec<(u32, f64)>>),
    /// Sentence embeddings (or the base model's mean-pooled states).
    Embeddings(Vec<Vec<f32>>),
    /// A causal LM: log-probabilities of the next token at every position of each text.
    NextToken(Vec<Vec<Vec<f32>>>),
    /// An encoder-decoder: the greedy output ids of each text.
    Generated(Vec<Vec<u32>>),
}

/// `model`'s outputs on `texts`, for [`compare`].
pub fn probe_outputs(model: &Loaded, texts: &[String]) -> Result<ProbeOutputs> {
    if texts.is_empty() {
        return Err(Error::EmptyInput);
    }
    match model {
        Loaded::Encoder(m) => encoder_outputs(m, texts),
        Loaded::Decoder(g) => {
            let mut all = Vec::new();
            for (index, text) in texts.iter().take(MAX_CAUSAL_TEXTS).enumerate() {
                let rows = super::behaviour::next_token_log_probs(g, text, index)?;
                all.push(rows.map(|(_, rows)| rows).unwrap_or_default());
            }
            Ok(ProbeOutputs::NextToken(all))
        }
        Loaded::EncoderDecoder(g) => seq2seq_outputs(g, texts),
    }
}

/// Compares the quantized model's outputs (`candidate`, named `candidate_name`) with the f32
/// reference's on the same `texts`.
pub fn compare(
    reference: &ProbeOutputs,
    candidate: &ProbeOutputs,
    candidate_name: &str,
    texts: usize,
    max_drift: f64,
) -> Result<DriftReport> {
    use ProbeOutputs as P;
    let (measure, drift, figures) = match (reference, candidate) {
        (P::Labels(r), P::Labels(c)) => labels(r, c),
        (
            P::Entities { spans, tokens },
            P::Entities {
                spans: c_spans,
                tokens: c_tokens,
            },
        ) => {
            let entity_f1 = f1(spans, c_spans);
            let same = tokens.iter().zip(c_tokens).filter(|(a, b)| a == b).count();
            (
                "1 - entity F1",
                1.0 - entity_f1,
                figures([
                    ("entity_f1", entity_f1),
                    (
                        "token_label_agreement",
                        same as f64 / tokens.len().max(1) as f64,
                    ),
                ]),
            )
        }
        (P::Masked(r), P::Masked(c)) => masked(r, c),
        (P::Embeddings(r), P::Embeddings(c)) => {
            let cosines: Vec<f64> = r.iter().zip(c).map(|(r, c)| cosine(r, c)).collect();
            let lowest = cosines.iter().copied().fold(f64::INFINITY, f64::min);
            let mean = cosines.iter().sum::<f64>() / cosines.len().max(1) as f64;
            (
                "1 - the lowest embedding cosine",
                1.0 - lowest,
                figures([("mean_cosine", mean), ("min_cosine", lowest)]),
            )
        }
        (P::NextToken(r), P::NextToken(c)) => next_token(r, c)?,
        (P::Generated(r), P::Generated(c)) => {
            let same = r.iter().zip(c).filter(|(r, c)| r == c).count();
            let share = same as f64 / r.len().max(1) as f64;
            (
                "1 - the share of identical greedy outputs",
                1.0 - share,
                figures([("identical_outputs", share)]),
            )
        }
        _ => {
            return Err(Error::InvalidOption {
                option: "quantize".into(),
                reason: "the reference and the quantized model have different heads".into(),
            })
        }
    };
    Ok(DriftReport {
        candidate: candidate_name.to_string(),
        texts,
        measure: measure.to_string(),
        drift,
        max_drift,
        ok: drift <= max_drift,
        figures,
    })
}

/// The largest absolute difference between two models' outputs of the same form
/// (next-token log-probabilities, embedding values, label probabilities): 0 when one
/// reproduces the other, infinite when their sizes or labels differ or a value is NaN.
/// `None` for other forms (entities, masked words, generated ids: compare those with
/// [`compare`]).
pub fn largest_difference(a: &ProbeOutputs, b: &ProbeOutputs) -> Option<f64> {
    use ProbeOutputs as P;
    /// |x − y|, NaN counted as infinitely far.
    fn gap(x: f64, y: f64) -> f64 {
        let d = (x - y).abs();
        if d.is_nan() {
            f64::INFINITY
        } else {
            d
        }
    }
    fn values(x: &[f32], y: &[f32]) -> f64 {
        if x.len() != y.len() {
            return f64::INFINITY;
        }
        x.iter()
            .zip(y)
            .map(|(x, y)| gap(*x as f64, *y as f64))
            .fold(0.0, f64::max)
    }
    fn each<T>(x: &[T], y: &[T], difference: impl Fn(&T, &T) -> f64) -> f64 {
        if x.len() != y.len() {
            return f64::INFINITY;
        }
        x.iter()
            .zip(y)
            .map(|(x, y)| difference(x, y))
            .fold(0.0, f64::max)
    }
    Some(match (a, b) {
        (P::NextToken(x), P::NextToken(y)) => each(x, y, |x, y| each(x, y, |x, y| values(x, y))),
        (P::Embeddings(x), P::Embeddings(y)) => each(x, y, |x, y| values(x, y)),
        // Labels may come in another order (by probability): matched by name.
        (P::Labels(x), P::Labels(y)) => each(x, y, |x, y| {
            if x.len() != y.len() {
                return f64::INFINITY;
            }
            x.iter()
                .map(|(label, p)| {
                    y.iter()
                        .find(|(other, _)| other == label)
                        .map_or(f64::INFINITY, |(_, q)| gap(*p, *q))
                })
                .fold(0.0, f64::max)
        }),
        _ => return None,
    })
}

type Measured = (&'static str, f64, BTreeMap<String, f64>);

fn figures<const N: usize>(pairs: [(&str, f64); N]) -> BTreeMap<String, f64> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn encoder_outputs(model: &Model, texts: &[String]) -> Result<ProbeOutputs> {
    Ok(match model.encoder.head() {
        Head::SequenceClassification => {
            let options = tc::Options {
                top_k: tc::TopK::All,
                ..tc::Options::default()
            };
            ProbeOutputs::Labels(
                tc::run(model, texts, &options)?
                    .into_iter()
                    .map(|r| {
                        r.labels
                            .unwrap_or_default()
                            .into_iter()
                            .map(|l| (l.label, l.score))
                            .collect()
                    })
                    .collect(),
            )
        }
        Head::TokenClassification => {
            let grouped = tok::Options {
                aggregation_strategy: tok::AggregationStrategy::Simple,
                ..tok::Options::default()
            };
            let spans = tok::run(model, texts, &grouped)?
                .iter()
                .enumerate()
                .flat_map(|(i, r)| {
                    r.entities
                        .iter()
                        .filter_map(|e| match e {
                            tok::Entity::Group(g) => {
                                Some((i, g.entity_group.clone(), g.start, g.end))
                            }
                            tok::Entity::Token(_) => None,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            let per_token = tok::Options {
                aggregation_strategy: tok::AggregationStrategy::None,
                ignore_labels: Vec::new(),
            };
            let tokens = tok::run(model, texts, &per_token)?
                .iter()
                .flat_map(|r| {
                    r.entities
                        .iter()
                        .filter_map(|e| match e {
                            tok::Entity::Token(t) => Some(t.entity.clone()),
                            tok::Entity::Group(_) => None,
                        })
                        .collect::<Vec<_>>()
                })
                .collect();
            ProbeOutputs::Entities { spans, tokens }
        }
        Head::MaskedLM => {
            let Some(mask) = model.tokenizer.mask_token() else {
                return Err(Error::Unsupported {
                    what: "a drift report for a masked LM without a mask token".into(),
                });
            };
            let masked: Vec<String> = texts
                .iter()
                .filter_map(|t| mask_middle_word(t, mask))
                .collect();
            ProbeOutputs::Masked(
                fill_mask::run(model, &masked, &fill_mask::Options::default())?
                    .into_iter()
                    .map(|r| match r.predictions {
                        fill_mask::Output::Single(p) => {
                            p.into_iter().map(|p| (p.token, p.score)).collect()
                        }
                        fill_mask::Output::Multi(_) => Vec::new(),
                    })
                    .collect(),
            )
        }
        _ => ProbeOutputs::Embeddings(
            embeddings::run(model, texts, &embeddings::Options::default())?
                .into_iter()
                .map(|o| o.embedding)
                .collect(),
        ),
    })
}

fn seq2seq_outputs(generator: &Seq2SeqGenerator, texts: &[String]) -> Result<ProbeOutputs> {
    if generator.feature_extractor().is_some() {
        return Err(Error::Unsupported {
            what: "a drift report for a speech model (it takes audio; the probe is text)".into(),
        });
    }
    let options = text2text_generation::Options {
        generation: Overrides {
            max_new_tokens: Some(SEQ2SEQ_NEW_TOKENS),
            num_beams: Some(1),
            do_sample: Some(false),
            ..Overrides::default()
        },
        ..text2text_generation::Options::default()
    };
    Ok(ProbeOutputs::Generated(
        text2text_generation::run(generator, Task::Text2TextGeneration, texts, &options)?
            .into_iter()
            .map(|o| o.token_ids)
            .collect(),
    ))
}

fn labels(reference: &[Vec<(String, f64)>], candidate: &[Vec<(String, f64)>]) -> Measured {
    let (mut agree, mut max_change) = (0usize, 0f64);
    for (r, c) in reference.iter().zip(candidate) {
        if r.first().map(|l| &l.0) == c.first().map(|l| &l.0) {
            agree += 1;
        }
        let scores: HashMap<&str, f64> = c.iter().map(|(l, s)| (l.as_str(), *s)).collect();
        for (label, score) in r {
            let other = scores.get(label.as_str()).copied().unwrap_or(0.0);
            max_change = max_change.max((score - other).abs());
        }
    }
    let agreement = agree as f64 / reference.len().max(1) as f64;
    (
        "1 - top-1 label agreement",
        1.0 - agreement,
        figures([
            ("label_agreement", agreement),
            ("max_probability_change", max_change),
        ]),
    )
}

fn masked(reference: &[Vec<(u32, f64)>], candidate: &[Vec<(u32, f64)>]) -> Measured {
    let (mut agree, mut max_change) = (0usize, 0f64);
    for (r, c) in reference.iter().zip(candidate) {
        let (Some(best), Some(other)) = (r.first(), c.first()) else {
            continue;
        };
        if best.0 == other.0 {
            agree += 1;
        }
        let same = c.iter().find(|p| p.0 == best.0).map_or(0.0, |p| p.1);
        max_change = max_change.max((best.1 - same).abs());
    }
    let agreement = agree as f64 / reference.len().max(1) as f64;
    (
        "1 - top-1 agreement at the mask",
        1.0 - agreement,
        figures([
            ("top1_agreement", agreement),
            ("max_top_probability_change", max_change),
        ]),
    )
}

fn next_token(reference: &[Vec<Vec<f32>>], candidate: &[Vec<Vec<f32>>]) -> Result<Measured> {
    let (mut positions, mut agree, mut kl_sum) = (0usize, 0usize, 0f64);
    for (r, c) in reference.iter().flatten().zip(candidate.iter().flatten()) {
        positions += 1;
        if argmax(r) == argmax(c) {
            agree += 1;
        }
        kl_sum += r
            .iter()
            .zip(c)
            .map(|(&lr, &lc)| {
                let p = (lr as f64).exp();
                if p > 0.0 {
                    p * (lr as f64 - lc as f64)
                } else {
                    0.0
                }
            })
            .sum::<f64>();
    }
    if positions == 0 {
        return Err(Error::EmptyInput);
    }
    let agreement = agree as f64 / positions as f64;
    Ok((
        "1 - next-token top-1 agreement",
        1.0 - agreement,
        figures([
            ("top1_agreement", agreement),
            ("mean_kl", kl_sum / positions as f64),
        ]),
    ))
}

/// `text` with its middle word replaced by `mask` (`None` for an empty text).
fn mask_middle_word(text: &str, mask: &str) -> Option<String> {
    let mut words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() {
        return None;
    }
    let middle = words.len() / 2;
    words[middle] = mask;
    Some(words.join(" "))
}

fn f1<T: Eq + std::hash::Hash>(reference: &HashSet<T>, candidate: &HashSet<T>) -> f64 {
    if reference.is_empty() && candidate.is_empty() {
        return 1.0;
    }
    let both = reference.intersection(candidate).count() as f64;
    2.0 * both / (reference.len() + candidate.len()) as f64
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    // Exactly 1 for the same vector (the sums below can round a hair under it).
    if a == b {
        return 1.0;
    }
    let (mut dot, mut aa, mut bb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        dot += x as f64 * y as f64;
        aa += x as f64 * x as f64;
        bb += y as f64 * y as f64;
    }
    if aa == 0.0 || bb == 0.0 {
        return if aa == bb { 1.0 } else { 0.0 };
    }
    dot / (aa.sqrt() * bb.sqrt())
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0
}

//! Entity-level NER metrics identical to seqeval's default mode
//! (`seqeval.metrics.classification_report` without `mode="strict"`), the metric
//! transformers' token-classification recipe reports.
//!
//! Entities are read as seqeval's `get_entities` does (CoNLL-2000 chunking): an `I-` tag
//! after `O` or after another type starts an entity, a change of type ends one, and `E-` /
//! `S-` tags are understood. Sentences are joined with an `O` between them, so an entity never
//! spans two sentences and positions are offsets into the joined sequence.

use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// One entity: its type and its first and last positions (inclusive).
pub type Entity = (String, usize, usize);

/// `(prefix, type)` of a tag: `B-geo-loc` → (`B`, `geo-loc`), `O` → (`O`, `_`).
fn split_tag(tag: &str) -> (char, &str) {
    let prefix = tag.chars().next().unwrap_or('O');
    let rest = tag.get(prefix.len_utf8()..).unwrap_or("");
    let kind = match rest.split_once('-') {
        Some((_, kind)) => kind,
        None => rest,
    };
    (prefix, if kind.is_empty() { "_" } else { kind })
}

fn end_of_chunk(prev_tag: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(prev_tag, 'E' | 'S')
        || (matches!(prev_tag, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev_tag != 'O' && prev_tag != '.' && prev_type != kind)
}

fn start_of_chunk(prev_tag: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev_tag, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != kind)
}

/// seqeval's `get_entities` over sentences.
pub fn entities<S: AsRef<str>>(sentences: &[Vec<S>]) -> Vec<Entity> {
    let mut joined: Vec<&str> = Vec::new();
    for sentence in sentences {
        joined.extend(sentence.iter().map(AsRef::as_ref));
        joined.push("O");
    }
    joined.push("O");
    let mut chunks = Vec::new();
    let (mut prev_tag, mut prev_type, mut begin) = ('O', "", 0);
    for (i, tag) in joined.iter().enumerate() {
        let (tag, kind) = split_tag(tag);
        if end_of_chunk(prev_tag, tag, prev_type, kind) {
            chunks.push((prev_type.to_string(), begin, i - 1));
        }
        if start_of_chunk(prev_tag, tag, prev_type, kind) {
            begin = i;
        }
        (prev_tag, prev_type) = (tag, kind);
    }
    chunks
}

/// Precision, recall and F1 of one entity type or of all of them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Scores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Gold entities.
    pub support: usize,
}

impl Scores {
    /// From counts, with 0 where a ratio is undefined (seqeval's `zero_division=0`).
    fn from_counts(correct: usize, predicted: usize, gold: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (ratio(correct, predicted), ratio(correct, gold));
        let f1 = if precision + recall == 0.0 {
            0.0
        } else {
            2.0 * precision * recall / (precision + recall)
        };
        Scores {
            precision,
            recall,
            f1,
            support: gold,
        }
    }
}

/// Entity-level scores per type and micro-averaged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NerMetrics {
    pub per_type: BTreeMap<String, Scores>,
    pub micro: Scores,
}

impl NerMetrics {
    /// Scores predicted tag sequences against gold ones (one tag list per sentence).
    pub fn compute<S: AsRef<str>, T: AsRef<str>>(gold: &[Vec<S>], predicted: &[Vec<T>]) -> Self {
        let gold: BTreeSet<Entity> = entities(gold).into_iter().collect();
        let predicted: BTreeSet<Entity> = entities(predicted).into_iter().collect();
        let types: BTreeSet<&String> = gold.iter().chain(&predicted).map(|e| &e.0).collect();
        let count = |set: &BTreeSet<Entity>, kind: &str| set.iter().filter(|e| e.0 == kind).count();
        let per_type = types
            .into_iter()
            .map(|kind| {
                let correct = gold
                    .intersection(&predicted)
                    .filter(|e| e.0 == *kind)
                    .count();
                (
                    kind.clone(),
                    Scores::from_counts(correct, count(&predicted, kind), count(&gold, kind)),
                )
            })
            .collect();
        let micro = Scores::from_counts(
            gold.intersection(&predicted).count(),
            predicted.len(),
            gold.len(),
        );
        NerMetrics { per_type, micro }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    struct Case {
        name: String,
        gold: Vec<Vec<String>>,
        pred: Vec<Vec<String>>,
        gold_entities: Vec<(String, usize, usize)>,
        pred_entities: Vec<(String, usize, usize)>,
        report: BTreeMap<String, BTreeMap<String, f64>>,
    }

    #[derive(Deserialize)]
    struct Fixture {
        cases: Vec<Case>,
    }

    /// tests/fixtures/seqeval/cases.json holds seqeval's own entities and reports for tricky
    /// sequences (scripts/make-seqeval-fixture).
    #[test]
    fn identical_to_seqeval_on_tricky_sequences() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/seqeval/cases.json"
        );
        let fixture: Fixture =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(fixture.cases.len() >= 10);
        for case in &fixture.cases {
            assert_eq!(entities(&case.gold), case.gold_entities, "{}", case.name);
            assert_eq!(entities(&case.pred), case.pred_entities, "{}", case.name);
            let metrics = NerMetrics::compute(&case.gold, &case.pred);
            let check = |key: &str, scores: &Scores| {
                let theirs = &case.report[key];
                for (name, ours) in [
                    ("precision", scores.precision),
                    ("recall", scores.recall),
                    ("f1-score", scores.f1),
                    ("support", scores.support as f64),
                ] {
                    assert!(
                        (theirs[name] - ours).abs() < 1e-12,
                        "{} {key} {name}: seqeval {} girder {ours}",
                        case.name,
                        theirs[name]
                    );
                }
            };
            check("micro avg", &metrics.micro);
            for (kind, scores) in &metrics.per_type {
                check(kind, scores);
            }
            let their_types = case.report.keys().filter(|k| !k.ends_with(" avg")).count();
            assert_eq!(metrics.per_type.len(), their_types, "{}", case.name);
        }
    }
}

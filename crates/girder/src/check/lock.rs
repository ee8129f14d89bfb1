//! `girder lock`: pin what "correct" looks like today, and report any drift later.
//!
//! A lock records the tokenizer's fingerprint (SHA-256 of its JSON with girder's
//! padding/truncation policy removed and keys sorted), the token ids of every probe text,
//! and for classifiers the label distribution and mean scores on the probe. `check
//! --lock` after an upgrade or a redeploy re-encodes and re-classifies the same texts:
//! changed ids, a moved label distribution, or one label taking over (the "every
//! prediction is positive" failure) are errors that name the numbers. A lock that cannot
//! be read or parsed is [`Error::BadLock`], never a pass.

use super::Subject;
use super::{Finding, Severity};
use crate::error::{Error, Result};
use crate::models::Head;
use crate::pipelines::text_classification::{self as tc, TopK};
use crate::tokenize::TextTokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The lock format version this girder writes and reads.
pub const LOCK_VERSION: u32 = 1;
/// A label winning at least this share of the probe now ...
pub const TAKEOVER_SHARE: f64 = 0.8;
/// ... having won at most this share when locked, has taken over.
pub const TAKEOVER_LOCKED_MAX: f64 = 0.6;
/// Total-variation distance between label distributions above which they drifted.
pub const MAX_LABEL_DRIFT: f64 = 0.25;
/// Largest change of a label's mean score before a warning.
pub const MAX_SCORE_DRIFT: f64 = 0.1;

/// A `girder.lock` file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lock {
    /// Format version ([`LOCK_VERSION`]).
    pub girder_lock: u32,
    /// The model's transformers class when locked.
    pub model_class: String,
    /// Where the tokenizer was read from, and its fingerprint.
    pub tokenizer: TokenizerPin,
    /// Every probe text with its token ids (special tokens included, as the model sees them).
    pub probe: Vec<ProbeEncoding>,
    /// For sequence classifiers: how the probe was classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierPin>,
}

/// The tokenizer's identity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerPin {
    pub source: String,
    /// SHA-256 (hex) of the normalised tokenizer JSON.
    pub sha256: String,
}

/// One probe text and its ids.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeEncoding {
    pub text: String,
    pub ids: Vec<u32>,
}

/// A classifier's behaviour on the probe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassifierPin {
    /// id2label.
    pub labels: Vec<String>,
    /// Share of probe texts whose best label is `labels[i]`.
    pub distribution: Vec<f64>,
    /// Mean score of `labels[i]` over the probe (after the pipeline's softmax/sigmoid).
    pub mean_scores: Vec<f64>,
}

/// SHA-256 of the tokenizer's JSON with the policy fields (padding, truncation) removed,
/// keys sorted: the same file gives the same fingerprint whatever girder's limits.
pub fn fingerprint(tokenizer: &TextTokenizer) -> Result<String> {
    fingerprint_of(tokenizer.inner(), tokenizer.source())
}

/// [`fingerprint`] of a tokenizer built elsewhere (a GGUF file's), `source` naming it in errors.
pub fn fingerprint_of(
    tokenizer: &tokenizers::Tokenizer,
    source: &std::path::Path,
) -> Result<String> {
    let bad = |reason: String| Error::BadTokenizer {
        file: source.to_path_buf(),
        reason,
    };
    let json = tokenizer.to_string(false).map_err(|e| bad(e.to_string()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;
    if let Some(object) = value.as_object_mut() {
        object.remove("padding");
        object.remove("truncation");
    }
    let canonical = sorted(value).to_string();
    Ok(Sha256::digest(canonical.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

/// Rebuilds objects with keys in order, whatever map serde_json was built with.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Encodes and (for classifiers) classifies `probe` with `model`.
pub fn create(model: &Subject, probe: &[String]) -> Result<Lock> {
    let probe_encodings = model
        .tokenizer
        .encode_all(probe)?
        .into_iter()
        .zip(probe)
        .map(|(e, text)| ProbeEncoding {
            text: text.clone(),
            ids: e.ids,
        })
        .collect();
    Ok(Lock {
        girder_lock: LOCK_VERSION,
        model_class: model.class_name.to_string(),
        tokenizer: TokenizerPin {
            source: model.tokenizer.source().display().to_string(),
            sha256: fingerprint(model.tokenizer)?,
        },
        probe: probe_encodings,
        classifier: classify(model, probe)?,
    })
}

fn classify(subject: &Subject, probe: &[String]) -> Result<Option<ClassifierPin>> {
    let Some(model) = subject
        .model
        .filter(|m| m.encoder.head() == Head::SequenceClassification)
    else {
        return Ok(None);
    };
    let labels = model.config.id2label.clone();
    let options = tc::Options {
        top_k: TopK::All,
        function_to_apply: None,
    };
    let results = tc::run(model, probe, &options)?;
    let mut wins = vec![0usize; labels.len()];
    let mut sums = vec![0f64; labels.len()];
    for result in &results {
        let ranked = result.labels.clone().unwrap_or_default();
        if let Some(best) = ranked.first() {
            if let Some(i) = labels.iter().position(|l| *l == best.label) {
                wins[i] += 1;
            }
        }
        for score in ranked {
            if let Some(i) = labels.iter().position(|l| *l == score.label) {
                sums[i] += score.score;
            }
        }
    }
    let n = results.len().max(1) as f64;
    // Six decimals: plenty for drift thresholds of 0.1, and the file reads back exactly.
    let round = |x: f64| (x * 1e6).round() / 1e6;
    Ok(Some(ClassifierPin {
        labels,
        distribution: wins.iter().map(|&w| round(w as f64 / n)).collect(),
        mean_scores: sums.iter().map(|s| round(s / n)).collect(),
    }))
}

/// Writes `lock` as pretty JSON.
pub fn write(lock: &Lock, path: &Path) -> Result<()> {
    let text = serde_json::to_string_pretty(lock).map_err(|e| Error::BadLock {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Reads and validates a lock file; anything unreadable, unparsable or inconsistent is
/// [`Error::BadLock`].
pub fn read(path: &Path) -> Result<Lock> {
    let bad = |reason: String| Error::BadLock {
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot be read: {e}")))?;
    let lock: Lock = serde_json::from_str(&text)
        .map_err(|e| bad(format!("not a valid girder lock file: {e}")))?;
    if lock.girder_lock != LOCK_VERSION {
        return Err(bad(format!(
            "format version {} is not the {LOCK_VERSION} this girder reads",
            lock.girder_lock
        )));
    }
    if lock.probe.is_empty() {
        return Err(bad("it pins no probe texts".into()));
    }
    if lock.tokenizer.sha256.len() != 64
        || !lock.tokenizer.sha256.chars().all(|c| c.is_ascii_hexdigit())
    {
        return Err(bad(
            "its tokenizer fingerprint is not a SHA-256 hex digest".into()
        ));
    }
    if let Some(c) = &lock.classifier {
        let n = c.labels.len();
        let sum: f64 = c.distribution.iter().sum();
        if n == 0
            || c.distribution.len() != n
            || c.mean_scores.len() != n
            || (sum - 1.0).abs() > 1e-4
        {
            return Err(bad(format!(
                "its classifier section is inconsistent ({n} labels, {} shares summing to {sum}, {} mean scores)",
                c.distribution.len(),
                c.mean_scores.len()
            )));
        }
    }
    Ok(lock)
}

/// Compares `model` (as loaded now) with `lock`.
pub fn compare(lock: &Lock, model: &Subject) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let texts: Vec<String> = lock.probe.iter().map(|p| p.text.clone()).collect();
    let now = model.tokenizer.encode_all(&texts)?;
    let changed: Vec<(&ProbeEncoding, &[u32])> = lock
        .probe
        .iter()
        .zip(&now)
        .filter(|(locked, now)| locked.ids != now.ids)
        .map(|(locked, now)| (locked, now.ids.as_slice()))
        .collect();
    let sha = fingerprint(model.tokenizer)?;
    if let Some((first, ids)) = changed.first() {
        findings.push(Finding::new(
            Severity::Error,
            "lock-ids-changed",
            format!(
                "{} of the {} locked probe texts tokenize differently; first: {:?}: locked {} now {}",
                changed.len(),
                lock.probe.len(),
                excerpt(&first.text, 120),
                show_ids(&first.ids, ids),
                show_ids(ids, &first.ids),
            ),
            "the tokenizer changed (another file, revision or library version): restore the locked tokenizer, or re-create the lock with `girder lock` if the change is intended",
        ));
    } else if sha != lock.tokenizer.sha256 {
        findings.push(Finding::new(
            Severity::Warning,
            "lock-fingerprint-changed",
            format!(
                "the tokenizer's fingerprint changed ({} → {}), though all {} probe texts tokenize as locked",
                short(&lock.tokenizer.sha256),
                short(&sha),
                lock.probe.len()
            ),
            "review what changed in the tokenizer files; run `girder lock` again to accept it",
        ));
    }
    if let Some(locked) = &lock.classifier {
        findings.extend(compare_classifier(locked, model, &texts)?);
    }
    if findings.is_empty() {
        findings.push(Finding::new(
            Severity::Info,
            "lock-ok",
            format!(
                "all {} locked probe texts tokenize as locked{}",
                lock.probe.len(),
                if lock.classifier.is_some() {
                    " and the label distribution is as locked"
                } else {
                    ""
                }
            ),
            "",
        ));
    }
    Ok(findings)
}

fn compare_classifier(
    locked: &ClassifierPin,
    model: &Subject,
    texts: &[String],
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let Some(now) = classify(model, texts)? else {
        return Ok(vec![Finding::new(
            Severity::Error,
            "lock-label-drift",
            format!(
                "the lock pins a classifier, but {} has no sequence-classification head",
                model.class_name
            ),
            "load the locked model",
        )]);
    };
    if now.labels != locked.labels {
        return Ok(vec![Finding::new(
            Severity::Error,
            "lock-label-drift",
            format!("the labels changed: locked {:?}, now {:?}", locked.labels, now.labels),
            "load the locked model, or re-create the lock with `girder lock` if the change is intended",
        )]);
    }
    let n = texts.len();
    let pct = |share: f64| format!("{:.0}%", 100.0 * share);
    let describe = |d: &[f64]| {
        now.labels
            .iter()
            .zip(d)
            .map(|(l, s)| format!("{l} {}", pct(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tv = 0.5
        * now
            .distribution
            .iter()
            .zip(&locked.distribution)
            .map(|(a, b)| (a - b).abs())
            .sum::<f64>();
    let takeover = now.distribution.iter().enumerate().find(|(i, &share)| {
        share >= TAKEOVER_SHARE && locked.distribution[*i] <= TAKEOVER_LOCKED_MAX
    });
    if let Some((i, &share)) = takeover {
        findings.push(Finding::new(
            Severity::Error,
            "lock-label-takeover",
            format!(
                "`{}` now wins {} of {n} probe texts ({}), locked {}: one label took over (now {}; locked {})",
                now.labels[i],
                (share * n as f64).round(),
                pct(share),
                pct(locked.distribution[i]),
                describe(&now.distribution),
                describe(&locked.distribution)
            ),
            "the model now sees different input than when locked (tokenizer, normalisation or weights changed): restore the locked files before trusting its predictions",
        ));
    } else if tv > MAX_LABEL_DRIFT {
        findings.push(Finding::new(
            Severity::Error,
            "lock-label-drift",
            format!(
                "the probe's label distribution moved by {tv:.2} (total variation, threshold {MAX_LABEL_DRIFT}): now {}; locked {}",
                describe(&now.distribution),
                describe(&locked.distribution)
            ),
            "restore the locked tokenizer and weights, or re-create the lock with `girder lock` if the change is intended",
        ));
    }
    let (worst, diff) = now
        .mean_scores
        .iter()
        .zip(&locked.mean_scores)
        .map(|(a, b)| (a - b).abs())
        .enumerate()
        .fold(
            (0, 0.0),
            |best, (i, d)| if d > best.1 { (i, d) } else { best },
        );
    if diff > MAX_SCORE_DRIFT {
        findings.push(Finding::new(
            Severity::Warning,
            "lock-scores-drift",
            format!(
                "the mean score of `{}` on the probe moved from {:.3} to {:.3} (threshold {MAX_SCORE_DRIFT})",
                now.labels[worst], locked.mean_scores[worst], now.mean_scores[worst]
            ),
            "check what changed since the lock; re-create it with `girder lock` if the change is intended",
        ));
    }
    Ok(findings)
}

/// The first 12 characters of a digest (all of a shorter one).
fn short(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

/// Up to 16 ids around the first position where `a` differs from `b`.
/// At most `max` characters of `text` (a probe text may be a whole document), with its
/// length when cut.
fn excerpt(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_string();
    }
    let head: String = text.chars().take(max).collect();
    format!("{head}… ({count} characters)")
}

fn show_ids(a: &[u32], b: &[u32]) -> String {
    let first = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let start = first.saturating_sub(4);
    let end = (start + 16).min(a.len());
    let body = a[start..end]
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[{}{body}{}] ({} ids, first difference at {first})",
        if start > 0 { "…, " } else { "" },
        if end < a.len() { ", …" } else { "" },
        a.len()
    )
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_long_probe_text_is_shown_as_an_excerpt() {
        let long = "word ".repeat(40_000);
        let shown = excerpt(&long, 120);
        assert!(shown.chars().count() < 160, "{shown}");
        assert!(shown.ends_with("(200000 characters)"), "{shown}");
        assert_eq!(excerpt("short", 120), "short");
    }

    use super::*;

    #[test]
    fn ids_are_shown_around_the_first_difference() {
        let a: Vec<u32> = (0..30).collect();
        let mut b = a.clone();
        b[10] = 99;
        let shown = show_ids(&a, &b);
        assert!(shown.starts_with("[…, 6, 7, 8, 9, 10"), "{shown}");
        assert!(shown.contains("first difference at 10"), "{shown}");
    }

    #[test]
    fn corrupt_locks_are_errors() {
        let dir = std::env::temp_dir().join(format!("girder-lock-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("girder.lock");
        for text in ["", "{", "{\"girder_lock\": 1}", "[1, 2]"] {
            std::fs::write(&path, text).unwrap();
            assert!(
                matches!(read(&path), Err(Error::BadLock { .. })),
                "{text:?}"
            );
        }
        assert!(matches!(
            read(&dir.join("absent.lock")),
            Err(Error::BadLock { .. })
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! `girder lock`: pin what "correct" looks like today, and report any drift later.
//!
//! A lock records which model it was made from, the tokenizer's fingerprint (SHA-256 of its
//! JSON with girder's padding/truncation policy removed and keys sorted), the token ids of
//! every probe text, and for classifiers the label distribution and mean scores on the
//! probe. `check --lock` after an upgrade or a redeploy re-encodes and re-classifies the
//! same texts: changed ids, a moved label distribution, or one label taking over (the
//! "every prediction is positive" failure) are errors that name the numbers. A lock that
//! cannot be read or parsed is [`Error::BadLock`], never a pass.
//!
//! The model's identity ([`ModelPin`], format 2): its transformers class, config.json's
//! `model_type`, its head, its labels (id2label, for a sequence or token classifier) and a
//! fingerprint of its weights ([`WeightsPin`]): the SHA-256 of the word-embedding matrix as
//! loaded (its shape, then its values as little-endian f32: a bf16 or f16 checkpoint
//! upcast, so the fingerprint does not depend on girder's compute dtype when the
//! checkpoint's precision is kept) and the SHA-256 of the tensor table of the folder's
//! safetensors files (every tensor's name, dtype and shape, sorted by name; not the
//! values, not the offsets). The embedding changes with any training that touches it (a
//! fine-tune, a vocabulary resize); the table with the depth, the widths, the head and
//! the stored dtype. A fine-tune that froze the embeddings and kept the layout keeps both:
//! its head's behaviour is pinned by the classifier section. Hashing the embedding of a
//! 110M-parameter model (30527 × 768, 94 MB as f32) took 0.32 s on the 2-core development
//! machine (`lock_identity_on_real_models`).
//!
//! A lock of another model (another class, `model_type`, head, label set or weight
//! fingerprint) is the error `lock-model-mismatch`, naming both models; a classifier
//! section without a classifier, or a classifier without one, is `lock-classifier-mismatch`.
//! Format 1 locks (no identity) are still read: their class is compared, and
//! `lock-identity-missing` warns that the lock should be re-created.

use super::Subject;
use super::{Finding, Severity};
use crate::error::{Error, Result};
use crate::models::registry::ARCHITECTURES;
use crate::models::Head;
use crate::pipelines::text_classification::{self as tc, TopK};
use crate::tokenize::TextTokenizer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::Path;

/// The lock format version this girder writes (2: with the model's identity).
pub const LOCK_VERSION: u32 = 2;
/// The oldest format version this girder reads (1: no identity; `lock-identity-missing`).
pub const OLDEST_LOCK_VERSION: u32 = 1;
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
    /// The model's identity (format 2; `None` in a format 1 lock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelPin>,
    /// Where the tokenizer was read from, and its fingerprint.
    pub tokenizer: TokenizerPin,
    /// Every probe text with its token ids (special tokens included, as the model sees them).
    pub probe: Vec<ProbeEncoding>,
    /// For sequence classifiers: how the probe was classified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier: Option<ClassifierPin>,
}

/// Which model a lock was made from (besides [`Lock::model_class`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPin {
    /// config.json's `model_type` (`bert`, `llama`), if it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
    /// The head: `base`, `sequence-classification`, `token-classification`, `masked-lm`,
    /// `causal-lm`, `seq2seq-lm`, `speech-seq2seq` ([`head_name`]).
    pub head: String,
    /// The model folder it was loaded from (shown in messages, never compared: a moved
    /// folder is the same model).
    pub source: String,
    /// id2label, for a sequence or token classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The weights' fingerprint.
    pub weights: WeightsPin,
}

/// A fingerprint of a model's weights (see the module docs for what it covers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightsPin {
    /// The word-embedding tensor's name in a base checkpoint (the registry's).
    pub embedding: String,
    /// Its shape as loaded, `[rows, hidden]`.
    pub shape: Vec<usize>,
    /// SHA-256 (hex) of the shape (u64 little-endian each) and the values (f32 little-endian).
    pub sha256: String,
    /// SHA-256 (hex) of the safetensors files' tensor table (name, dtype, shape of every
    /// tensor, sorted by name); `None` when the folder holds no safetensors file (a
    /// CTranslate2 conversion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors_sha256: Option<String>,
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
        model: Some(identity(model)?),
        tokenizer: TokenizerPin {
            source: model.tokenizer.source().display().to_string(),
            sha256: fingerprint(model.tokenizer)?,
        },
        probe: probe_encodings,
        classifier: classify(model, probe)?,
    })
}

/// The kebab-case name of a head, as a lock records it.
pub fn head_name(head: Head) -> &'static str {
    match head {
        Head::Base => "base",
        Head::SequenceClassification => "sequence-classification",
        Head::TokenClassification => "token-classification",
        Head::MaskedLM => "masked-lm",
        Head::CausalLM => "causal-lm",
        Head::Seq2SeqLM => "seq2seq-lm",
        Head::SpeechSeq2Seq => "speech-seq2seq",
    }
}

/// The head of the subject: the loaded encoder's, else the registry's for its class.
fn head_of(subject: &Subject) -> Option<Head> {
    if let Some(model) = subject.model {
        return Some(model.encoder.head());
    }
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.classes.iter())
        .find(|(name, _)| *name == subject.class_name)
        .map(|&(_, head)| head)
}

/// The identity a lock pins: class facts from config.json and the registry, the weights'
/// fingerprint from the embedding matrix as loaded and the folder's safetensors headers.
pub fn identity(subject: &Subject) -> Result<ModelPin> {
    let head = head_of(subject);
    let labels = matches!(
        head,
        Some(Head::SequenceClassification | Head::TokenClassification)
    )
    .then(|| subject.config.id2label.clone());
    let weights = match subject.embedding {
        Some((name, embedding)) => WeightsPin {
            embedding: name.to_string(),
            shape: vec![embedding.dims().0, embedding.dims().1],
            sha256: embedding_sha256(&embedding.checkpoint_table()?)?,
            tensors_sha256: tensors_sha256(subject)?,
        },
        None => {
            return Err(Error::InvalidOption {
                option: "lock".into(),
                reason: format!(
                    "{} has no word-embedding matrix to fingerprint",
                    subject.class_name
                ),
            })
        }
    };
    Ok(ModelPin {
        model_type: subject.config.model_type.clone(),
        head: head.map_or("unknown", head_name).to_string(),
        source: subject.folder.root().display().to_string(),
        labels,
        weights,
    })
}

/// SHA-256 of a table's shape (u64 little-endian each) then its values as f32
/// little-endian, read a chunk of rows at a time (pass [`Embedding::checkpoint_table`] to
/// fingerprint the checkpoint whatever precision the model was loaded in).
pub fn embedding_sha256(table: &crate::layers::Embedding) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(b"girder embedding f32le\0");
    let (rows, dim) = table.dims();
    for d in [rows, dim] {
        hasher.update((d as u64).to_le_bytes());
    }
    super::canary::for_each_chunk(table, |values| {
        // SAFETY: plain f32s viewed as their bytes, in the machine's order: little-endian on
        // every target girder runs on.
        let bytes = unsafe {
            std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values))
        };
        hasher.update(bytes);
        Ok(())
    })?;
    Ok(hex(&hasher.finalize()))
}

/// SHA-256 of the tensor table of the subject's safetensors files (name, dtype, shape per
/// tensor, sorted by name, `__metadata__` left out); `None` without a safetensors file.
fn tensors_sha256(subject: &Subject) -> Result<Option<String>> {
    let Ok(files) = subject.folder.weight_files() else {
        return Ok(None);
    };
    let mut table = std::collections::BTreeMap::new();
    for file in &files {
        let bad = |reason: String| Error::BadWeights {
            file: file.clone(),
            reason,
        };
        use std::io::Read;
        let mut f = std::fs::File::open(file).map_err(|e| Error::io(file, e))?;
        let mut len = [0u8; 8];
        f.read_exact(&mut len).map_err(|e| Error::io(file, e))?;
        let len = u64::from_le_bytes(len);
        if len > 100_000_000 {
            return Err(bad(format!("a header of {len} bytes")));
        }
        let mut header = vec![0u8; len as usize];
        f.read_exact(&mut header).map_err(|e| Error::io(file, e))?;
        let header: serde_json::Map<String, serde_json::Value> =
            serde_json::from_slice(&header).map_err(|e| bad(format!("its header: {e}")))?;
        for (name, info) in header {
            if name != "__metadata__" {
                table.insert(name, (info["dtype"].clone(), info["shape"].clone()));
            }
        }
    }
    let mut hasher = Sha256::new();
    for (name, (dtype, shape)) in &table {
        hasher.update(format!("{name}\t{dtype}\t{shape}\n").as_bytes());
    }
    Ok(Some(hex(&hasher.finalize())))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn classify(subject: &Subject, probe: &[String]) -> Result<Option<ClassifierPin>> {
    let Some(model) = classifier_of(subject) else {
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
    if !(OLDEST_LOCK_VERSION..=LOCK_VERSION).contains(&lock.girder_lock) {
        return Err(bad(format!(
            "format version {} is not one this girder reads ({OLDEST_LOCK_VERSION} to {LOCK_VERSION}); re-create it with `girder lock`",
            lock.girder_lock
        )));
    }
    if lock.girder_lock >= 2 && lock.model.is_none() {
        return Err(bad(format!(
            "format version {} needs the `model` section (the model's identity)",
            lock.girder_lock
        )));
    }
    if lock.probe.is_empty() {
        return Err(bad("it pins no probe texts".into()));
    }
    let is_digest = |d: &str| d.len() == 64 && d.chars().all(|c| c.is_ascii_hexdigit());
    if !is_digest(&lock.tokenizer.sha256) {
        return Err(bad(
            "its tokenizer fingerprint is not a SHA-256 hex digest".into()
        ));
    }
    if let Some(m) = &lock.model {
        let w = &m.weights;
        if !is_digest(&w.sha256) || !w.tensors_sha256.as_deref().is_none_or(is_digest) {
            return Err(bad(
                "its weight fingerprint is not a SHA-256 hex digest".into()
            ));
        }
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
    let same_model = match compare_identity(lock, model)? {
        Some(finding) => {
            let same = finding.severity != Severity::Error;
            findings.push(finding);
            same
        }
        None => true,
    };
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
    // The classifier of another model says nothing more than `lock-model-mismatch` did.
    if same_model {
        let classifies = classifier_of(model).is_some();
        match &lock.classifier {
            Some(locked) if classifies => {
                findings.extend(compare_classifier(locked, model, &texts)?)
            }
            Some(locked) => findings.push(Finding::new(
                Severity::Error,
                "lock-classifier-mismatch",
                format!(
                    "the lock pins a classifier (labels {:?}), but {} ({}) has no sequence-classification head",
                    locked.labels,
                    model.class_name,
                    model.folder.root().display()
                ),
                "check the model the lock was made from, or re-create the lock with `girder lock` for this one",
            )),
            None if classifies => findings.push(Finding::new(
                Severity::Error,
                "lock-classifier-mismatch",
                format!(
                    "{} ({}) is a sequence classifier (labels {:?}), but the lock pins no classifier section: it was made from another model (class `{}`), and this one's predictions would go unchecked",
                    model.class_name,
                    model.folder.root().display(),
                    model.config.id2label,
                    lock.model_class
                ),
                "check the model the lock was made from, or re-create the lock with `girder lock` for this one",
            )),
            None => {}
        }
    }
    if findings
        .iter()
        .all(|f| f.severity == Severity::Info || f.code == "lock-identity-missing")
    {
        findings.push(Finding::new(
            Severity::Info,
            "lock-ok",
            format!(
                "{}all {} locked probe texts tokenize as locked{}",
                match &lock.model {
                    Some(m) => format!(
                        "the model is the locked one ({}, {}, weights {}); ",
                        lock.model_class,
                        m.head,
                        short(&m.weights.sha256)
                    ),
                    None => String::new(),
                },
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

/// `lock-model-mismatch` (an error) when `lock` was made from another model,
/// `lock-identity-missing` (a warning) for a format 1 lock of the same class, else `None`.
fn compare_identity(lock: &Lock, model: &Subject) -> Result<Option<Finding>> {
    let fix = |now: &str| {
        format!(
            "check the model the lock was made from; if {now} replaces it on purpose, re-create the lock: `girder lock --model {now} --out <lock>`"
        )
    };
    let now_source = model.folder.root().display().to_string();
    let Some(locked) = &lock.model else {
        if lock.model_class != model.class_name {
            return Ok(Some(Finding::new(
                Severity::Error,
                "lock-model-mismatch",
                format!(
                    "the lock was made from another model: locked class {}, now {} from {now_source} (a format {} lock: no folder or weight fingerprint recorded)",
                    lock.model_class, model.class_name, lock.girder_lock
                ),
                fix(&now_source),
            )));
        }
        return Ok(Some(Finding::new(
            Severity::Warning,
            "lock-identity-missing",
            format!(
                "the lock (format {}) predates identity pinning: it records the class {} but not the head, labels or weights, so a lock of another {} model would pass",
                lock.girder_lock, lock.model_class, lock.model_class
            ),
            format!(
                "re-create it with `girder lock --model {now_source} --out <lock>` once this model is checked to be the right one"
            ),
        )));
    };
    let now = identity(model)?;
    let mut differs = Vec::new();
    if lock.model_class != model.class_name {
        differs.push("class".to_string());
    }
    if locked.model_type != now.model_type {
        differs.push("model_type".into());
    }
    if locked.head != now.head {
        differs.push(format!("head ({} → {})", locked.head, now.head));
    }
    if locked.labels != now.labels {
        differs.push(format!(
            "labels ({} → {})",
            show_labels(&locked.labels),
            show_labels(&now.labels)
        ));
    }
    if locked.weights.shape != now.weights.shape {
        differs.push(format!(
            "embedding shape ({:?} → {:?})",
            locked.weights.shape, now.weights.shape
        ));
    }
    if locked.weights.sha256 != now.weights.sha256 {
        differs.push("word-embedding weights".into());
    }
    if let (Some(a), Some(b)) = (&locked.weights.tensors_sha256, &now.weights.tensors_sha256) {
        if a != b {
            differs.push("tensor table (names, dtypes, shapes)".into());
        }
    }
    if differs.is_empty() {
        return Ok(None);
    }
    let describe = |class: &str, m: &ModelPin| {
        format!(
            "{class} ({}, {}) from {}, weights sha256 {}",
            m.model_type.as_deref().unwrap_or("no model_type"),
            m.head,
            m.source,
            short(&m.weights.sha256)
        )
    };
    Ok(Some(Finding::new(
        Severity::Error,
        "lock-model-mismatch",
        format!(
            "the lock was made from another model: locked {}; now {}; differs in {}",
            describe(&lock.model_class, locked),
            describe(model.class_name, &now),
            differs.join(", ")
        ),
        fix(&now_source),
    )))
}

fn show_labels(labels: &Option<Vec<String>>) -> String {
    match labels {
        Some(l) => format!("{l:?}"),
        None => "none".into(),
    }
}

/// The subject's sequence-classification model, if it is one.
fn classifier_of<'a>(subject: &Subject<'a>) -> Option<&'a crate::pipelines::Model> {
    subject
        .model
        .filter(|m| m.encoder.head() == Head::SequenceClassification)
}

fn compare_classifier(
    locked: &ClassifierPin,
    model: &Subject,
    texts: &[String],
) -> Result<Vec<Finding>> {
    let mut findings = Vec::new();
    let Some(now) = classify(model, texts)? else {
        return Ok(Vec::new());
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

//! The pre-flight guard: does this tokenizer fit this model, and has tokenization drifted?
//!
//! A wrong tokenizer (or a library upgrade that changed tokenization) produces garbage
//! without an error: transformers warns in a few cases and checks none of them properly.
//! [`check`] runs every check on a [`Loaded`] model (what [`crate::load`] returned: the
//! guard reads the tokenizer, the folder's files and the embedding matrix as loaded, never
//! opening the folder again) and returns a [`Report`] of [`Finding`]s, each with a severity,
//! a stable code, a message that names the numbers, and the fix. [`preflight`] is the subset
//! `girder run` and `girder serve` run at load.
//!
//! | module | checks | codes |
//! |---|---|---|
//! | [`fit`] | vocabulary against the embedding matrix, special tokens, length limits, casing and accents, unknown-token rate | `vocab-overflow`, `vocab-truncated`, `vocab-smaller`, `vocab-size-config`, `special-token-unknown`, `special-token-mismatch`, `pad-token-missing`, `max-length-unset`, `max-length-exceeds-positions`, `baked-padding`, `baked-truncation`, `casing-mismatch`, `accents-stripped`, `unk-rate` |
//! | [`canary`] | the model's own embedding rows tell a wrong tokenizer of plausible size, over the whole vocabulary and per id region | `tokenizer-mismatch`, `tokenizer-mismatch-region`, `canary-passed`, `canary-untrained`, `canary-inconclusive` |
//! | [`behaviour`] | the network on built-in texts: a causal LM's next-token loss, a sentence embedder's paraphrases | `next-token-loss`, `paraphrase-probe` |
//! | [`lock`] | drift against a pinned `girder.lock`, and whether it pins this model | `lock-model-mismatch`, `lock-classifier-mismatch`, `lock-identity-missing`, `lock-ids-changed`, `lock-fingerprint-changed`, `lock-label-drift`, `lock-label-takeover`, `lock-scores-drift`, `lock-ok` |
//! | [`generator`] | a loaded causal LM without a model folder (a GGUF file): ids against output rows, special tokens, probe round trip, the canary on its embedding, a `--tokenizer` against the file's own vocabulary, chat template | `vocab-overflow`, `vocab-smaller`, `special-token-unknown`, `eos-missing`, `round-trip`, `tokenizer-differs-from-file`, `tokenizer-matches-file`, the canary's codes, `chat-template`, `chat-template-missing` |
//! | [`numerics`] | NaN or infinity in the embedding matrix, the hidden states or the classifier's scores on the probe texts | `non-finite-weights`, `non-finite-outputs` |
//! | [`drift`] | a quantized model against its f32 reference on probe texts (`--quantize`), by head: embedding cosine, label agreement, entity F1, next-token agreement and KL | the [`drift::DriftReport`] |
//! | [`degenerate`] | a sequence classifier that gives every probe text the same label, sentence embeddings or hidden states that hardly vary across the probe texts | `degenerate-outputs` |
//! | [`model_card`] | README.md's YAML front matter, license and language policy | `card`, `card-missing`, `card-invalid`, `license-denied`, `language-missing` |
//!
//! Severity: an error means the model must not be trusted as loaded; a warning means the
//! user must act; info is what girder handles safely by itself.

pub mod behaviour;
pub mod canary;
pub mod degenerate;
pub mod drift;
pub mod fit;
pub mod generator;
pub mod lock;
pub mod model_card;
pub mod numerics;

use crate::config::CommonConfig;
use crate::error::Result;
use crate::hub::ModelFolder;
use crate::pipelines::Model;
use crate::pretrained::Loaded;
use crate::tokenize::TextTokenizer;
use serde::{Deserialize, Serialize};

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Handled safely by girder, or a fact worth showing.
    Info,
    /// The user must act (outputs may be degraded, or another tool would break).
    Warning,
    /// The model and tokenizer must not be used together as they are.
    Error,
}

impl Severity {
    /// `error`, `warning`, `info`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One result of a check.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    pub severity: Severity,
    /// Stable, kebab-case (`vocab-overflow`); scripts may match on it.
    pub code: String,
    /// One line that names the numbers.
    pub message: String,
    /// What to do about it (empty for plain information).
    pub fix: String,
}

impl Finding {
    /// A finding; `fix` may be empty.
    pub fn new(
        severity: Severity,
        code: &str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Finding {
            severity,
            code: code.to_string(),
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// The findings of one check run; serialises as `{"ok": bool, "findings": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// No finding is an error.
    pub ok: bool,
    /// Errors first, then warnings, then info; in check order within a severity.
    pub findings: Vec<Finding>,
}

impl Report {
    /// A report of `findings`, sorted by severity (stable within one).
    pub fn new(mut findings: Vec<Finding>) -> Self {
        findings.sort_by_key(|f| std::cmp::Reverse(f.severity));
        Report {
            ok: !findings.iter().any(|f| f.severity == Severity::Error),
            findings,
        }
    }

    /// Adds findings, keeping the order and `ok` right.
    pub fn extend(&mut self, more: impl IntoIterator<Item = Finding>) {
        let mut all = std::mem::take(&mut self.findings);
        all.extend(more);
        *self = Report::new(all);
    }

    /// The findings with this severity.
    pub fn with_severity(&self, severity: Severity) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(move |f| f.severity == severity)
    }

    /// Whether a finding has this code.
    pub fn has(&self, code: &str) -> bool {
        self.findings.iter().any(|f| f.code == code)
    }

    /// The first finding with this code.
    pub fn get(&self, code: &str) -> Option<&Finding> {
        self.findings.iter().find(|f| f.code == code)
    }
}

/// What [`check`] looks at besides the model.
#[derive(Debug, Clone, Default)]
pub struct CheckOptions {
    /// Probe texts (`--probe`); `None`: the built-in [`PROBE`].
    pub probe: Option<Vec<String>>,
    /// Licenses (model-card ids such as `cc-by-nc-4.0`) that make the check fail.
    pub deny_licenses: Vec<String>,
    /// Languages the model card must list (any one of them suffices per entry).
    pub require_languages: Vec<String>,
}

/// The built-in probe: everyday English across domains and registers (reviews, news,
/// instructions, science), then a few lines in other languages and scripts, so that a
/// tokenizer's coverage and the embedding rows it lands on are both exercised.
pub const PROBE: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, but the ending was terrible and the actors seemed bored.",
    "The company reported higher revenue in the third quarter than analysts expected.",
    "Please send the documents to my office before Friday afternoon.",
    "Scientists discovered a new species of frog in the rainforests of Brazil.",
    "She was running late, so she took a taxi to the airport.",
    "The children played happily in the park while their parents talked.",
    "Our government announced new policies on education, health and housing.",
    "He works as a doctor at the hospital and teaches students at the university.",
    "The weather will be cold and rainy tomorrow, with strong winds in the north.",
    "This product is great, I would buy it again and recommend it to my friends.",
    "Absolutely awful service: the food was cold and the waiter was rude.",
    "What time does the next train to London leave?",
    "Les enfants jouent dans le jardin pendant que leurs parents parlent.",
    "Die Regierung hat neue Gesetze für Bildung und Gesundheit beschlossen.",
    "El presidente visitó la ciudad y habló con los trabajadores.",
    "Il tempo sarà freddo domani, con pioggia e vento forte.",
    "Москва является столицей России.",
    "東京は日本の首都です。",
    "北京是中国的首都。",
];

/// The probe texts to use: the caller's, else [`PROBE`].
pub fn probe_texts(options: &CheckOptions) -> Vec<String> {
    match &options.probe {
        Some(texts) if !texts.is_empty() => texts.clone(),
        _ => PROBE.iter().map(|s| s.to_string()).collect(),
    }
}

/// What the checks look at: a loaded model's folder (config, tokenizer files), its tokenizer
/// and its word-embedding matrix as loaded.
///
/// The checks read the tokenizer, config.json and the embedding, never run the network
/// (except the lock's classifier probe, which needs [`Subject::model`]).
#[derive(Clone, Copy)]
pub struct Subject<'a> {
    pub folder: &'a ModelFolder,
    pub config: &'a CommonConfig,
    pub tokenizer: &'a TextTokenizer,
    /// transformers' class name, e.g. `BertModel`, `LlamaForCausalLM`.
    pub class_name: &'a str,
    /// A causal language model or an encoder-decoder (girder generates without padding).
    pub decoder: bool,
    /// Positions the model can index (RoBERTa's padding offset already removed).
    pub position_limit: usize,
    /// Positions lost to an offset (RoBERTa: `padding_idx + 1`), for messages.
    pub position_offset: usize,
    /// The longest input girder feeds the model.
    pub max_length: usize,
    /// The word-embedding matrix `[vocab, hidden]` as loaded, with its tensor name in a
    /// base checkpoint (the registry's `embedding_tensor`).
    pub embedding: Option<(&'a str, &'a crate::layers::Embedding)>,
    /// The loaded encoder, for checks that run it.
    pub model: Option<&'a Model>,
}

impl<'a> Subject<'a> {
    /// The subject of a loaded encoder.
    pub fn of_encoder(model: &'a Model) -> Self {
        let architecture = model.encoder.architecture();
        Subject {
            folder: &model.folder,
            config: &model.config,
            tokenizer: &model.tokenizer,
            class_name: model.encoder.class_name(),
            decoder: false,
            position_limit: model.encoder.position_limit(),
            position_offset: architecture.position_offset.rows(&model.config),
            max_length: model.tokenizer.max_length(),
            embedding: Some((
                architecture.embedding_tensor,
                model.encoder.word_embeddings(),
            )),
            model: Some(model),
        }
    }

    /// The subject of any loaded model with a folder; `None` for a GGUF file (see
    /// [`generator`]).
    pub fn of(loaded: &'a Loaded) -> Option<Self> {
        match loaded {
            Loaded::Encoder(model) => Some(Subject::of_encoder(model)),
            Loaded::Decoder(g) => {
                let (folder, config) = g.files()?;
                let context = g.model().context_length();
                Some(Subject {
                    folder,
                    config,
                    tokenizer: g.text_tokenizer(),
                    class_name: g.model().class_name(),
                    decoder: true,
                    position_limit: context,
                    position_offset: 0,
                    max_length: context,
                    embedding: Some((
                        g.model().architecture().embedding_tensor,
                        g.model().input_embeddings(),
                    )),
                    model: None,
                })
            }
            Loaded::EncoderDecoder(g) => {
                let (folder, config) = g.files();
                let max_length = g.text_tokenizer().max_length();
                Some(Subject {
                    folder,
                    config,
                    tokenizer: g.text_tokenizer(),
                    class_name: g.model().class_name(),
                    decoder: true,
                    position_limit: g.model().max_source_positions().unwrap_or(max_length),
                    position_offset: 0,
                    max_length,
                    embedding: Some((
                        g.model().architecture().embedding_tensor,
                        g.model().input_embeddings(),
                    )),
                    model: None,
                })
            }
        }
    }
}

/// What a lock pins and compares ([`lock::create`], [`lock::compare`]): a model folder's
/// tokenizer files. A GGUF file has none (its tokenizer is checked from its metadata).
pub fn lock_subject(loaded: &Loaded) -> Result<Subject<'_>> {
    Subject::of(loaded).ok_or_else(|| crate::Error::InvalidOption {
        option: "lock".into(),
        reason: format!(
            "{} has no model folder: a lock pins a folder's tokenizer files, and a GGUF file's tokenizer is checked from its metadata",
            loaded.tokenizer().source().display()
        ),
    })
}

/// The checks that decide whether a model may run: vocabulary fit, special tokens,
/// length, casing, unknown-token rate and the weight-based canary; for a GGUF file, the
/// checks of [`generator`]. `girder run` and `girder serve` run this at load and refuse to
/// start on an error unless `--allow-mismatch` is given.
pub fn preflight(model: &Loaded) -> Result<Report> {
    let probe = probe_texts(&CheckOptions::default());
    match Subject::of(model) {
        Some(subject) => preflight_subject(&subject, &probe),
        None => generator::check(model.decoder()?, &probe),
    }
}

/// [`preflight`] on any subject, with these probe texts.
pub fn preflight_subject(subject: &Subject, probe: &[String]) -> Result<Report> {
    let embedding = canary::EmbeddingMatrix::load(subject)?;
    preflight_with(subject, embedding.as_ref(), probe).map(Report::new)
}

fn preflight_with(
    subject: &Subject,
    embedding: Option<&canary::EmbeddingMatrix>,
    probe: &[String],
) -> Result<Vec<Finding>> {
    let mut findings = fit::check(subject, embedding.map(|e| e.rows()), probe)?;
    findings.extend(canary::check(subject, embedding, probe)?);
    Ok(findings)
}

/// Every check except the lock: [`preflight`] plus the model card.
///
/// ```
/// # fn main() -> girder::Result<()> {
/// use girder::check::{self, CheckOptions, Severity};
/// use girder::LoadOptions;
///
/// let model = girder::load("tests/fixtures/bert-seqcls", &LoadOptions::default())?;
/// let report = check::check(&model, &CheckOptions::default())?;
/// assert!(report.ok);
/// // A fixture has no model card: a warning, not an error.
/// assert_eq!(report.get("card-missing").map(|f| f.severity), Some(Severity::Warning));
///
/// // The same model with RoBERTa's tokenizer: its ids overflow the embedding matrix.
/// let options = LoadOptions {
///     tokenizer: Some("tests/fixtures/roberta-base".into()),
///     ..LoadOptions::default()
/// };
/// let mismatched = girder::load("tests/fixtures/bert-seqcls", &options)?;
/// let report = check::check(&mismatched, &CheckOptions::default())?;
/// assert!(!report.ok && report.has("vocab-overflow"));
/// # Ok(())
/// # }
/// ```
pub fn check(model: &Loaded, options: &CheckOptions) -> Result<Report> {
    let mut report = match Subject::of(model) {
        Some(subject) => check_subject(&subject, options)?,
        None => generator::check(model.decoder()?, &probe_texts(options))?,
    };
    // The network can read the tokenizer's ids only when they index its embedding.
    if !report.has("vocab-overflow") {
        report.extend(behaviour::check(model)?);
    }
    Ok(report)
}

/// [`check`] on any subject.
pub fn check_subject(subject: &Subject, options: &CheckOptions) -> Result<Report> {
    let probe = probe_texts(options);
    let embedding = canary::EmbeddingMatrix::load(subject)?;
    let mut findings = preflight_with(subject, embedding.as_ref(), &probe)?;
    // A tokenizer already found wrong may emit ids the network cannot index: the probe
    // forward pass runs only on a tokenizer that fits.
    let fits = !findings.iter().any(|f| f.severity == Severity::Error);
    findings.extend(numerics::check(subject, embedding.as_ref(), &probe, fits)?);
    findings.extend(degenerate::check(subject, &probe, fits)?);
    let mut report = Report::new(findings);
    report.extend(model_card::check(
        subject.folder.root(),
        &options.deny_licenses,
        &options.require_languages,
    ));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_sorts_by_severity_and_knows_ok() {
        let report = Report::new(vec![
            Finding::new(Severity::Info, "a", "m", ""),
            Finding::new(Severity::Error, "b", "m", "f"),
            Finding::new(Severity::Warning, "c", "m", "f"),
        ]);
        assert!(!report.ok);
        let codes: Vec<_> = report.findings.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["b", "c", "a"]);
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["findings"][0]["severity"], "error");
        assert_eq!(json["ok"], false);
        let mut report = Report::new(vec![]);
        assert!(report.ok);
        report.extend([Finding::new(Severity::Error, "x", "m", "f")]);
        assert!(!report.ok && report.has("x"));
    }
}

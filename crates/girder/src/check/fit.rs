//! Does the tokenizer fit the model? Checks that read files and sizes, not weights' meaning:
//! vocabulary against the embedding matrix, special tokens across config.json,
//! tokenizer_config.json and special_tokens_map.json, length limits, casing and accents,
//! and how much of the probe becomes the unknown token.

use super::Subject;
use super::{Finding, Severity};
use crate::error::Result;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tokenizers::{NormalizedString, Normalizer};

/// Share of the embedding rows a tokenizer may leave unreachable (padded matrices leave a
/// few: T5 32100 of 32128, Qwen2 151665 of 151936); more means a truncated vocabulary.
pub const MAX_UNUSED_ROWS: f64 = 0.1;
/// Share of the Latin-script probe's tokens that may be the unknown token before a warning.
pub const UNK_RATE_WARNING: f64 = 0.02;
/// Share of the Latin-script probe's tokens that may be the unknown token before an error.
pub const UNK_RATE_ERROR: f64 = 0.05;
/// A lowercasing tokenizer's vocabulary may have this share of word entries with capitals.
pub const MAX_CASED_SHARE_WHEN_LOWERCASING: f64 = 0.05;
/// A case-keeping tokenizer's vocabulary needs at least this share of word entries with capitals.
pub const MIN_CASED_SHARE_WHEN_KEEPING_CASE: f64 = 0.002;
/// An accent-stripping tokenizer's vocabulary may have this share of accented word entries.
pub const MAX_ACCENTED_SHARE_WHEN_STRIPPING: f64 = 0.01;
/// Word entries needed before the vocabulary's casing is judged.
const MIN_WORD_ENTRIES: usize = 500;

/// Every fit check. `embedding_rows` is the real row count of the word-embedding tensor
/// (`None` when the checkpoint has none girder recognises; config's vocab_size is used).
pub fn check(
    model: &Subject,
    embedding_rows: Option<usize>,
    probe: &[String],
) -> Result<Vec<Finding>> {
    let files = TokenizerFiles::read(model);
    let mut findings = vocab_fit(model, embedding_rows, probe);
    findings.extend(special_tokens(model, &files));
    findings.extend(length(model, &files));
    findings.extend(casing(model));
    findings.extend(unk_rate(model, &files, probe));
    Ok(findings)
}

/// What the tokenizer's files declare, as the loader read them.
struct TokenizerFiles<'a> {
    folder: PathBuf,
    tokenizer_config: &'a Value,
    special_tokens_map: &'a Value,
    declared: &'a crate::tokenize::Declared,
}

impl<'a> TokenizerFiles<'a> {
    fn read(model: &'a Subject) -> Self {
        let declared = model.tokenizer.declared();
        TokenizerFiles {
            folder: model
                .tokenizer
                .source()
                .parent()
                .unwrap_or(Path::new("."))
                .to_path_buf(),
            tokenizer_config: &declared.tokenizer_config,
            special_tokens_map: &declared.special_tokens_map,
            declared,
        }
    }

    /// `<role>_token` of a file: a string, or an AddedToken object's `content`.
    fn named(doc: &Value, role: &str) -> Option<String> {
        match doc.get(format!("{role}_token"))? {
            Value::String(s) => Some(s.clone()),
            Value::Object(o) => o.get("content")?.as_str().map(String::from),
            _ => None,
        }
    }
}

/// Check 1: the largest id the tokenizer can emit must index a row of the embedding matrix.
pub fn vocab_fit(model: &Subject, embedding_rows: Option<usize>, probe: &[String]) -> Vec<Finding> {
    let inner = model.tokenizer.inner();
    let vocab = inner.get_vocab(true);
    let size = inner.get_vocab_size(true);
    let max_id = vocab.values().copied().max().unwrap_or(0) as usize;
    let declared = model.config.vocab_size;
    let Some(rows) = embedding_rows.or(declared) else {
        return vec![Finding::new(
            Severity::Info,
            "vocab-unchecked",
            "neither an embedding tensor girder knows nor config.json's vocab_size tells the model's vocabulary size: the vocabulary fit was not checked",
            "",
        )];
    };
    let mut findings = Vec::new();
    if max_id >= rows {
        let (over, total) = probe
            .iter()
            .filter_map(|t| inner.encode(t.as_str(), true).ok())
            .flat_map(|e| e.get_ids().to_vec())
            .fold((0, 0), |(o, n), id| {
                (o + usize::from(id as usize >= rows), n + 1)
            });
        findings.push(Finding::new(
            Severity::Error,
            "vocab-overflow",
            format!(
                "the tokenizer can emit ids up to {max_id} ({size} entries with added tokens), but the embedding matrix has {rows} rows: {over} of the probe's {total} tokens index past it"
            ),
            "use the tokenizer the model was trained with; a tokenizer with more ids than embedding rows belongs to another model",
        ));
    } else if rows.saturating_sub(size) as f64 > MAX_UNUSED_ROWS * rows as f64 {
        findings.push(Finding::new(
            Severity::Error,
            "vocab-truncated",
            format!(
                "the tokenizer has {size} entries but the embedding matrix {rows} rows: {} rows ({:.0}%) can never be reached, more than the {:.0}% a padded matrix leaves (a truncated vocabulary, or another model's tokenizer)",
                rows.saturating_sub(size),
                100.0 * rows.saturating_sub(size) as f64 / rows as f64,
                100.0 * MAX_UNUSED_ROWS
            ),
            "use the model's complete tokenizer",
        ));
    } else if size < rows {
        findings.push(Finding::new(
            Severity::Info,
            "vocab-smaller",
            format!(
                "the tokenizer has {size} entries and the embedding matrix {rows} rows: {} rows are never used (checkpoints often pad the matrix, e.g. T5's 32100 entries vs 32128 rows)",
                rows.saturating_sub(size)
            ),
            "",
        ));
    }
    if let (Some(real), Some(declared)) = (embedding_rows, declared.filter(|&d| d != rows)) {
        findings.push(Finding::new(
            Severity::Warning,
            "vocab-size-config",
            format!(
                "config.json says vocab_size {declared}, but the embedding tensor has {real} rows"
            ),
            format!(
                "set vocab_size to {real} in config.json so that other tools size the model right"
            ),
        ));
    }
    findings
}

/// The roles a special token can play, with the keys config.json uses for their ids.
const ROLES: &[(&str, &[&str])] = &[
    ("pad", &["pad_token_id"]),
    ("unk", &["unk_token_id"]),
    ("cls", &["cls_token_id"]),
    ("sep", &["sep_token_id"]),
    ("mask", &["mask_token_id"]),
    ("bos", &["bos_token_id"]),
    ("eos", &["eos_token_id"]),
];

/// Check 2: the special tokens named by the tokenizer's files exist, agree with each other
/// and with the ids of config.json.
fn special_tokens(model: &Subject, files: &TokenizerFiles<'_>) -> Vec<Finding> {
    let inner = model.tokenizer.inner();
    let mut findings = Vec::new();
    let mut named: BTreeMap<&str, String> = BTreeMap::new();
    for (role, _) in ROLES {
        let in_config = TokenizerFiles::named(files.tokenizer_config, role);
        let in_map = TokenizerFiles::named(files.special_tokens_map, role);
        if let (Some(a), Some(b)) = (&in_config, &in_map) {
            if a != b {
                findings.push(Finding::new(
                    Severity::Error,
                    "special-token-mismatch",
                    format!("tokenizer_config.json names {role}_token `{a}` but special_tokens_map.json names `{b}`"),
                    "make both files name the same token (the one the model was trained with)",
                ));
            }
        }
        if let Some(token) = in_config.or(in_map) {
            if inner.token_to_id(&token).is_none() {
                findings.push(Finding::new(
                    Severity::Error,
                    "special-token-unknown",
                    format!(
                        "{role}_token `{token}` is not in the tokenizer's vocabulary ({})",
                        files.folder.display()
                    ),
                    "name a token the vocabulary has, or use the tokenizer these files belong to",
                ));
            } else {
                named.insert(role, token);
            }
        }
    }
    let size = inner.get_vocab_size(true);
    let added = inner.get_added_tokens_decoder();
    for (role, keys) in ROLES {
        for key in *keys {
            let ids: Vec<u64> = match model.config.raw.get(*key) {
                Some(Value::Number(n)) => n.as_u64().into_iter().collect(),
                Some(Value::Array(a)) => a.iter().filter_map(Value::as_u64).collect(),
                _ => continue,
            };
            // config's bos/eos play the cls/sep roles in BERT-style tokenizers.
            let expected = named.get(role).or_else(|| match *role {
                "bos" => named.get("cls"),
                "eos" => named.get("sep"),
                _ => None,
            });
            // An encoder-decoder's config may give bos_token_id the decoder start token
            // (Whisper's `<|startoftranscript|>`): generation starts from it, and the
            // tokenizer's bos_token is then never used.
            let decoder_start = model
                .config
                .raw
                .get("decoder_start_token_id")
                .and_then(Value::as_u64);
            for id in ids {
                let token = u32::try_from(id).ok().and_then(|id| inner.id_to_token(id));
                if *role == "bos" && decoder_start == Some(id) && token.is_some() {
                    continue;
                }
                match (token, expected) {
                    (None, _) => findings.push(Finding::new(
                        Severity::Error,
                        "special-token-unknown",
                        format!("config.json {key} {id} is not an id of this tokenizer ({size} entries)"),
                        "use the tokenizer the model was trained with, or correct the id in config.json",
                    )),
                    (Some(token), Some(expected)) if &token != expected
                        // A list of eos ids may name several tokens; one must match.
                        && !(model.config.raw.get(*key).is_some_and(Value::is_array)) =>
                    {
                        let expected_id = inner.token_to_id(expected).unwrap_or_default();
                        findings.push(Finding::new(
                            Severity::Error,
                            "special-token-mismatch",
                            format!("config.json {key} {id} is `{token}` in this tokenizer, but the tokenizer names {role}_token `{expected}` (id {expected_id})"),
                            "use the tokenizer the model was trained with; the model was trained with the id in config.json",
                        ))
                    }
                    (Some(token), None) => {
                        let special = u32::try_from(id)
                            .ok()
                            .and_then(|i| added.get(&i))
                            .is_some_and(|t| t.special)
                            || looks_special(&token);
                        if !special {
                            findings.push(Finding::new(
                                Severity::Warning,
                                "special-token-mismatch",
                                format!("config.json {key} {id} is `{token}` in this tokenizer, an ordinary token, and the tokenizer names no {role}_token"),
                                "use the tokenizer the model was trained with, or name the special token in tokenizer_config.json",
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let has_pad = named.contains_key("pad") || model.config.pad_token_id.is_some();
    if !has_pad {
        findings.push(Finding::new(
            Severity::Info,
            "pad-token-missing",
            format!(
                "neither the tokenizer nor config.json names a pad token: {} is {} without padding, so none is needed",
                model.class_name,
                if model.decoder {
                    "a decoder, and girder generates ragged batches (every prompt keeps its own cache)"
                } else {
                    "an encoder, and girder batches it"
                }
            ),
            "",
        ));
    }
    findings
}

/// `[CLS]`, `<s>`, `<|endoftext|>`: the usual spellings of special tokens.
fn looks_special(token: &str) -> bool {
    (token.starts_with('[') && token.ends_with(']'))
        || (token.starts_with('<') && token.ends_with('>') && token.len() > 2)
}

/// Check 5: model_max_length against the positions the model can index; settings girder overrides.
fn length(model: &Subject, files: &TokenizerFiles<'_>) -> Vec<Finding> {
    let mut findings = Vec::new();
    let positions = model.position_limit;
    let class = model.class_name;
    let offset_note = match model.config.max_position_embeddings {
        Some(d) if model.position_offset > 0 => format!(
            " (max_position_embeddings {d} less RoBERTa's padding offset of {})",
            model.position_offset
        ),
        _ => String::new(),
    };
    let limit = model.max_length;
    match files.tokenizer_config.get("model_max_length").and_then(Value::as_f64) {
        None => findings.push(Finding::new(
            Severity::Info,
            "max-length-unset",
            format!("tokenizer_config.json sets no model_max_length: girder limits inputs to {limit} tokens; {class} has {positions} positions{offset_note}"),
            format!("set model_max_length to {positions} in tokenizer_config.json so other tools truncate too"),
        )),
        Some(m) if !(1.0..1e29).contains(&m) => findings.push(Finding::new(
            Severity::Info,
            "max-length-unset",
            format!("tokenizer_config.json's model_max_length is {m:e} (transformers' 'unknown' sentinel): girder limits inputs to {limit} tokens, the safe limit; {class} has {positions} positions{offset_note}"),
            format!("set model_max_length to {positions} in tokenizer_config.json so other tools truncate too"),
        )),
        Some(m) if m as usize > positions => findings.push(Finding::new(
            Severity::Info,
            "max-length-exceeds-positions",
            format!("model_max_length {} is more than the {positions} positions {class} can index{offset_note}: girder limits inputs to {limit} tokens", m as usize),
            format!("set model_max_length to {positions} in tokenizer_config.json; tools that trust it fail on long inputs"),
        )),
        Some(_) => {}
    }
    if let Some(padding) = &files.declared.baked_padding {
        let to = match padding.strategy {
            tokenizers::PaddingStrategy::Fixed(n) => format!("to {n} tokens"),
            tokenizers::PaddingStrategy::BatchLongest => "to the longest input".into(),
        };
        findings.push(Finding::new(
            Severity::Info,
            "baked-padding",
            format!("tokenizer.json pads every input {to}; girder batches without padding and ignores it"),
            "",
        ));
    }
    if let Some(truncation) = &files.declared.baked_truncation {
        let at = truncation.max_length;
        findings.push(Finding::new(
            Severity::Info,
            "baked-truncation",
            format!("tokenizer.json truncates at {at} tokens; girder applies its own limit of {limit} and reports each truncated input"),
            "",
        ));
    }
    findings
}

/// The tokenizer's normalizer applied to `text` (the text itself without a normalizer).
fn normalize(tokenizer: &tokenizers::Tokenizer, text: &str) -> String {
    match tokenizer.get_normalizer() {
        Some(normalizer) => {
            let mut s = NormalizedString::from(text);
            match normalizer.normalize(&mut s) {
                Ok(()) => s.get().to_string(),
                Err(_) => text.to_string(),
            }
        }
        None => text.to_string(),
    }
}

/// Vocabulary statistics for the casing check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VocabCasing {
    /// Entries whose surface (without `##`/`Ġ`/`▁`) is alphabetic, 2+ characters.
    pub words: usize,
    /// Of those, entries with an uppercase letter.
    pub cased: usize,
    /// Of those, entries with a letter that carries an accent (decomposes with a combining mark).
    pub accented: usize,
}

/// Counts the vocabulary's word entries, cased and accented.
pub fn vocab_casing(tokenizer: &tokenizers::Tokenizer) -> VocabCasing {
    let mut stats = VocabCasing {
        words: 0,
        cased: 0,
        accented: 0,
    };
    for token in tokenizer.get_vocab(false).keys() {
        let (_, surface) = super::canary::split_marker(token);
        if surface.chars().count() < 2 || !surface.chars().all(char::is_alphabetic) {
            continue;
        }
        stats.words += 1;
        if surface.chars().any(char::is_uppercase) {
            stats.cased += 1;
        }
        if !surface.is_ascii() {
            let mut nfd = NormalizedString::from(surface);
            nfd.nfd();
            if nfd
                .get()
                .chars()
                .any(|c| ('\u{300}'..='\u{36f}').contains(&c))
            {
                stats.accented += 1;
            }
        }
    }
    stats
}

/// Check 4: lowercasing and accent stripping against what the vocabulary holds.
fn casing(model: &Subject) -> Vec<Finding> {
    let inner = model.tokenizer.inner();
    let lowercases = normalize(inner, "ABCDEFG Hij") == "abcdefg hij";
    let strips_accents = {
        let out = normalize(inner, "é");
        out == "e" || out == "E"
    };
    let stats = vocab_casing(inner);
    let mut findings = Vec::new();
    if stats.words < MIN_WORD_ENTRIES {
        return findings;
    }
    let share = |n: usize| n as f64 / stats.words as f64;
    if lowercases && share(stats.cased) > MAX_CASED_SHARE_WHEN_LOWERCASING {
        findings.push(Finding::new(
            Severity::Error,
            "casing-mismatch",
            format!(
                "the tokenizer lowercases its input, but {} of the vocabulary's {} word entries ({:.1}%) have capitals and can never be produced: a cased vocabulary behind an uncased tokenizer",
                stats.cased, stats.words, 100.0 * share(stats.cased)
            ),
            "use the model's own tokenizer, or turn lowercasing off (do_lower_case: false / no Lowercase normalizer)",
        ));
    } else if !lowercases && share(stats.cased) < MIN_CASED_SHARE_WHEN_KEEPING_CASE {
        findings.push(Finding::new(
            Severity::Error,
            "casing-mismatch",
            format!(
                "the tokenizer keeps case, but only {} of the vocabulary's {} word entries ({:.2}%) have capitals: capitalised words fall apart or become unknown (an uncased vocabulary needs lowercased input)",
                stats.cased, stats.words, 100.0 * share(stats.cased)
            ),
            "use the model's own tokenizer, or lowercase the input (do_lower_case: true / a Lowercase normalizer)",
        ));
    }
    if strips_accents && share(stats.accented) > MAX_ACCENTED_SHARE_WHEN_STRIPPING {
        findings.push(Finding::new(
            Severity::Warning,
            "accents-stripped",
            format!(
                "the tokenizer strips accents, but {} of the vocabulary's {} word entries ({:.1}%) carry them and can never be produced",
                stats.accented, stats.words, 100.0 * share(stats.accented)
            ),
            "use the model's own tokenizer, or keep accents (strip_accents: false)",
        ));
    }
    findings
}

/// How much of the probe becomes the unknown token.
fn unk_rate(model: &Subject, files: &TokenizerFiles<'_>, probe: &[String]) -> Vec<Finding> {
    let inner = model.tokenizer.inner();
    let unk = TokenizerFiles::named(files.tokenizer_config, "unk")
        .or_else(|| TokenizerFiles::named(files.special_tokens_map, "unk"))
        .or_else(|| {
            ["[UNK]", "<unk>"]
                .into_iter()
                .find(|t| inner.token_to_id(t).is_some())
                .map(String::from)
        })
        .and_then(|t| inner.token_to_id(&t));
    let Some(unk) = unk else {
        return Vec::new();
    };
    // A model may legitimately lack other scripts (an English vocabulary without CJK
    // characters); ordinary Latin-script text must not fall to the unknown token.
    let latin = |t: &&String| t.chars().all(|c| !c.is_alphabetic() || c <= '\u{24f}');
    let ids: Vec<u32> = probe
        .iter()
        .filter(latin)
        .filter_map(|t| inner.encode(t.as_str(), false).ok())
        .flat_map(|e| e.get_ids().to_vec())
        .collect();
    if ids.is_empty() {
        return Vec::new();
    }
    let unknown = ids.iter().filter(|&&id| id == unk).count();
    let rate = unknown as f64 / ids.len() as f64;
    let severity = if rate > UNK_RATE_ERROR {
        Severity::Error
    } else if rate > UNK_RATE_WARNING {
        Severity::Warning
    } else {
        return Vec::new();
    };
    vec![Finding::new(
        severity,
        "unk-rate",
        format!(
            "{unknown} of the {} tokens of the probe's Latin-script texts ({:.1}%) are the unknown token (warning above {:.0}%, error above {:.0}%): the vocabulary lacks pieces of ordinary text",
            ids.len(),
            100.0 * rate,
            100.0 * UNK_RATE_WARNING,
            100.0 * UNK_RATE_ERROR
        ),
        "use the model's complete tokenizer (a truncated or foreign vocabulary maps words to the unknown token)",
    )]
}

//! Text → token ids, under one explicit policy shared by every task.
//!
//! The policy, and why:
//! - Padding and truncation baked into `tokenizer.json` are ignored. all-MiniLM-L6-v2's file
//!   pads every input to 128 tokens; girder batches without padding, so padding is never wanted.
//! - Special tokens are added, as the transformers pipelines do.
//! - Inputs longer than the model's real limit ([`max_input_length`]) are truncated on the
//!   right and reported (`Encoded::truncated`), or refused with [`Error::InputTooLong`] when
//!   the caller turns truncation off. Never silently clipped, never a crash in the model.
//! - Offsets are in characters (as Python's `str` indexes), and word ids are kept: the NER
//!   pipeline needs both.

pub mod sentencepiece;
mod wordpiece;

use crate::error::{Error, Result};
use crate::hub::ModelFolder;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

/// One tokenized text under girder's policy (special tokens added, truncated to the limit).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Encoded {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    /// As `tokenizer.convert_ids_to_tokens`.
    pub tokens: Vec<String>,
    /// Character offsets (Unicode scalar values) into the text; `(0, 0)` for special tokens.
    pub offsets: Vec<(usize, usize)>,
    pub word_ids: Vec<Option<u32>>,
    /// 1 for special tokens.
    pub special_tokens_mask: Vec<u32>,
    /// The text had more tokens than the limit and was cut.
    pub truncated: bool,
}

impl Encoded {
    /// Number of tokens, special tokens included.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// True for an encoding without tokens (a tokenizer with no special tokens given "").
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// What to do with an input longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Truncation {
    /// Cut on the right to the limit and report `truncated: true` (the default).
    #[default]
    Truncate,
    /// Return [`Error::InputTooLong`].
    Refuse,
}

/// The limits that bound a model's input, gathered from the folder's files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InputLimits {
    /// `model_max_length` of tokenizer_config.json, when set to a real number.
    pub tokenizer_max_length: Option<usize>,
    /// Position embeddings the model can index (RoBERTa's padding offset already removed).
    pub position_limit: Option<usize>,
    /// sentence-transformers' `max_seq_length` (sentence_bert_config.json).
    pub sentence_max_seq_length: Option<usize>,
}

/// The model's real limit: the smallest of the known limits (512 when nothing is known,
/// transformers' common default for encoders).
pub fn max_input_length(limits: &InputLimits) -> usize {
    [
        limits.tokenizer_max_length,
        limits.position_limit,
        limits.sentence_max_seq_length,
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(512)
}

/// tokenizer_config.json, the fields girder reads.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct TokenizerConfig {
    #[serde(default)]
    pub model_max_length: Option<f64>,
    #[serde(default)]
    pub do_lower_case: Option<bool>,
    #[serde(default)]
    pub strip_accents: Option<bool>,
    #[serde(default)]
    pub tokenize_chinese_chars: Option<bool>,
    #[serde(default)]
    pub unk_token: Option<TokenField>,
    #[serde(default)]
    pub sep_token: Option<TokenField>,
    #[serde(default)]
    pub cls_token: Option<TokenField>,
    #[serde(default)]
    pub pad_token: Option<TokenField>,
    #[serde(default)]
    pub mask_token: Option<TokenField>,
}

/// A special token is written either as a string or as an AddedToken object.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(crate) enum TokenField {
    Plain(String),
    Added { content: String },
}

impl TokenField {
    pub fn content(&self) -> &str {
        match self {
            TokenField::Plain(s) => s,
            TokenField::Added { content } => content,
        }
    }
}

/// A JSON file of the folder as a document (an empty object when the file is absent),
/// and its path.
fn read_document(folder: &ModelFolder, name: &str) -> Result<(serde_json::Value, PathBuf)> {
    let path = folder.root().join(name);
    match folder.file(name) {
        Some(path) => Ok((crate::config::read_json(&path)?, path)),
        None => Ok((serde_json::Value::Object(Default::default()), path)),
    }
}

impl TokenizerConfig {
    fn from_document(doc: &serde_json::Value, path: &Path) -> Result<Self> {
        crate::config::parse_json(path, &doc.to_string())
    }

    /// transformers writes 1e30 (`VERY_LARGE_INTEGER`) when the limit is unknown.
    fn real_model_max_length(&self) -> Option<usize> {
        self.model_max_length
            .filter(|m| (1.0..1e29).contains(m))
            .map(|m| m as usize)
    }
}

/// What the tokenizer's files declare besides the tokenizer, read once at load for the
/// guard (`girder check` compares the special tokens they name and reports the padding and
/// truncation girder overrides).
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// tokenizer_config.json as a document (an empty object when absent).
    pub tokenizer_config: serde_json::Value,
    /// special_tokens_map.json as a document (an empty object when absent).
    pub special_tokens_map: serde_json::Value,
    /// The padding tokenizer.json bakes in, which the policy switches off.
    pub baked_padding: Option<tokenizers::PaddingParams>,
    /// The truncation tokenizer.json bakes in, which the policy replaces.
    pub baked_truncation: Option<tokenizers::TruncationParams>,
}

/// A tokenizer with girder's policy applied.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    source: PathBuf,
    max_length: usize,
    truncation: Truncation,
    mask_token: Option<String>,
    tokenizer_max_length: Option<usize>,
    declared: std::sync::Arc<Declared>,
    /// Decoded text loses its surrounding whitespace (`MarianTokenizer.convert_tokens_to_string`
    /// strips it).
    strip_decoded: bool,
    /// `inner` without truncation, when `inner` truncates: counting needs every token
    /// (`tokenizers` keeps only a few of the tokens it cuts).
    counting: Option<std::sync::Arc<tokenizers::Tokenizer>>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("source", &self.source)
            .field("max_length", &self.max_length)
            .field("truncation", &self.truncation)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, or builds a WordPiece tokenizer from `vocab.txt` and
    /// `tokenizer_config.json` when there is no tokenizer.json. The limit starts at
    /// tokenizer_config's `model_max_length` (or 512); the model loader lowers it to the
    /// model's real limit with [`set_max_length`](Self::set_max_length).
    pub fn from_folder(folder: &ModelFolder) -> Result<Self> {
        let (config_doc, config_path) = read_document(folder, "tokenizer_config.json")?;
        let config = TokenizerConfig::from_document(&config_doc, &config_path)?;
        let mut strip_decoded = false;
        let (inner, source) = if let Some(path) = folder.file("tokenizer.json") {
            (load_tokenizer_json(&path)?, path)
        } else if let (Some(spm), Some(vocab)) =
            (folder.file("source.spm"), folder.file("vocab.json"))
        {
            // Marian: no tokenizer.json exists for it.
            strip_decoded = true;
            (sentencepiece::marian_tokenizer(&spm, &vocab)?, spm)
        } else if let Some(vocab) = folder.file("vocab.txt") {
            (wordpiece::from_vocab(&vocab, &config)?, vocab)
        } else {
            return Err(Error::MissingFile {
                folder: folder.root().to_path_buf(),
                file: "tokenizer.json".into(),
                needs:
                    "a model folder needs tokenizer.json (or vocab.txt for a WordPiece tokenizer, source.spm and vocab.json for Marian)"
                        .into(),
            });
        };
        let (map_doc, map_path) = read_document(folder, "special_tokens_map.json")?;
        let special_map: SpecialTokensMap =
            crate::config::parse_json(&map_path, &map_doc.to_string())?;
        let mask_token = config
            .mask_token
            .as_ref()
            .map(|t| t.content().to_string())
            .or(special_map.mask_token.map(|t| t.content().to_string()))
            .or_else(|| {
                ["[MASK]", "<mask>"]
                    .into_iter()
                    .find(|t| inner.token_to_id(t).is_some())
                    .map(String::from)
            });
        let tokenizer_max_length = config.real_model_max_length();
        let declared = Declared {
            tokenizer_config: config_doc,
            special_tokens_map: map_doc,
            baked_padding: inner.get_padding().cloned(),
            baked_truncation: inner.get_truncation().cloned(),
        };
        let mut tokenizer = TextTokenizer {
            inner,
            source,
            max_length: tokenizer_max_length.unwrap_or(512),
            truncation: Truncation::Truncate,
            mask_token,
            tokenizer_max_length,
            declared: std::sync::Arc::new(declared),
            strip_decoded,
            counting: None,
        };
        tokenizer.apply_policy()?;
        Ok(tokenizer)
    }

    /// A tokenizer built elsewhere (a GGUF file's, from its metadata), read from `source`;
    /// the limit starts at 512 until the loader sets the model's.
    pub fn from_tokenizer(inner: tokenizers::Tokenizer, source: PathBuf) -> Result<Self> {
        let mut tokenizer = TextTokenizer {
            inner,
            source,
            max_length: 512,
            truncation: Truncation::Truncate,
            mask_token: None,
            tokenizer_max_length: None,
            declared: Default::default(),
            strip_decoded: false,
            counting: None,
        };
        tokenizer.apply_policy()?;
        Ok(tokenizer)
    }

    /// What the tokenizer's files declare besides the tokenizer ([`Declared`]).
    pub fn declared(&self) -> &Declared {
        &self.declared
    }

    /// `model_max_length` from tokenizer_config.json, when it is a real limit.
    pub fn tokenizer_max_length(&self) -> Option<usize> {
        self.tokenizer_max_length
    }

    /// The file the tokenizer came from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The longest input, special tokens included.
    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// The current truncation policy.
    pub fn truncation(&self) -> Truncation {
        self.truncation
    }

    /// Sets the limit and what happens beyond it.
    pub fn set_max_length(&mut self, max_length: usize, truncation: Truncation) -> Result<()> {
        if max_length < 2 {
            return Err(Error::InvalidOption {
                option: "max_length".into(),
                reason: format!("{max_length} leaves no room for the special tokens"),
            });
        }
        self.max_length = max_length;
        self.truncation = truncation;
        self.apply_policy()
    }

    fn apply_policy(&mut self) -> Result<()> {
        self.inner.with_padding(None);
        let truncation = match self.truncation {
            Truncation::Truncate => Some(TruncationParams {
                max_length: self.max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
                direction: TruncationDirection::Right,
            }),
            Truncation::Refuse => None,
        };
        self.counting = match truncation {
            Some(_) => {
                let mut counting = self.inner.clone();
                counting
                    .with_truncation(None)
                    .map_err(|e| Error::BadTokenizer {
                        file: self.source.clone(),
                        reason: e.to_string(),
                    })?;
                Some(std::sync::Arc::new(counting))
            }
            None => None,
        };
        self.inner
            .with_truncation(truncation)
            .map_err(|e| Error::BadTokenizer {
                file: self.source.clone(),
                reason: e.to_string(),
            })?;
        Ok(())
    }

    /// The tokenizer without truncation, for [`encode_within`].
    pub fn counting(&self) -> &tokenizers::Tokenizer {
        self.counting.as_deref().unwrap_or(&self.inner)
    }

    /// The underlying `tokenizers` tokenizer (padding and truncation already set by policy).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The mask token (`[MASK]`, `<mask>`), when the tokenizer has one.
    pub fn mask_token(&self) -> Option<&str> {
        self.mask_token.as_deref()
    }

    /// The id of the mask token, when the tokenizer has one.
    pub fn mask_token_id(&self) -> Option<u32> {
        self.mask_token
            .as_deref()
            .and_then(|t| self.inner.token_to_id(t))
    }

    /// Decodes ids to text as the model's transformers tokenizer does (`index` names the
    /// sequence in errors).
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool, index: usize) -> Result<String> {
        let text = self
            .inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| Error::Tokenize {
                index,
                reason: format!("cannot decode the ids: {e}"),
            })?;
        Ok(if self.strip_decoded {
            text.trim().to_string()
        } else {
            text
        })
    }

    /// Tokenizes one text; `index` is its position in the caller's input (for errors).
    ///
    /// The work is bounded by the limit, not by the text: a text far over it is tokenized
    /// only as far as the limit needs ([`encode_within`]), so a megabyte of text costs what a
    /// few thousand characters cost, and a refused one reports `tokens: None`.
    pub fn encode(&self, text: &str, index: usize) -> Result<Encoded> {
        let tokenize_error = |e: tokenizers::Error| Error::Tokenize {
            index,
            reason: e.to_string(),
        };
        // A text short enough to be tokenized whole needs no count first: truncation
        // tokenizes it once.
        if self.truncation == Truncation::Truncate
            && text.len() <= whole_text_bytes(self.max_length)
        {
            let encoding = self
                .inner
                .encode_char_offsets(text, true)
                .map_err(tokenize_error)?;
            return Ok(self.to_encoded(encoding));
        }
        let within = encode_within(self.counting(), text, true, self.max_length, Keep::Start)
            .map_err(tokenize_error)?;
        let encoding = match (within, self.truncation) {
            (Within::Whole(encoding), _) if encoding.len() <= self.max_length => encoding,
            (Within::Whole(encoding), Truncation::Refuse) => {
                return Err(Error::InputTooLong {
                    index,
                    tokens: Some(encoding.len()),
                    max: self.max_length,
                })
            }
            (Within::Over { .. }, Truncation::Refuse) => {
                return Err(Error::InputTooLong {
                    index,
                    tokens: None,
                    max: self.max_length,
                })
            }
            // Cut as `tokenizers` cuts (before the special tokens are added), on the part
            // tokenized.
            (Within::Whole(_), Truncation::Truncate) => self
                .inner
                .encode_char_offsets(text, true)
                .map_err(tokenize_error)?,
            (Within::Over { part, .. }, Truncation::Truncate) => self
                .inner
                .encode_char_offsets(&text[part], true)
                .map_err(tokenize_error)?,
        };
        Ok(self.to_encoded(encoding))
    }

    fn to_encoded(&self, encoding: tokenizers::Encoding) -> Encoded {
        Encoded {
            truncated: !encoding.get_overflowing().is_empty(),
            ids: encoding.get_ids().to_vec(),
            type_ids: encoding.get_type_ids().to_vec(),
            // As convert_ids_to_tokens: the vocabulary entry, not the matched text (an lstrip
            // token such as RoBERTa's `<mask>` would otherwise carry the space it absorbed).
            tokens: encoding
                .get_ids()
                .iter()
                .zip(encoding.get_tokens())
                .map(|(&id, token)| self.inner.id_to_token(id).unwrap_or_else(|| token.clone()))
                .collect(),
            offsets: encoding.get_offsets().to_vec(),
            word_ids: encoding.get_word_ids().to_vec(),
            special_tokens_mask: encoding.get_special_tokens_mask().to_vec(),
        }
    }

    /// Tokenizes every text; fails on the first that cannot be encoded.
    pub fn encode_all<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        if texts.is_empty() {
            return Err(Error::EmptyInput);
        }
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode(t.as_ref(), i))
            .collect()
    }

    /// Tokenizes a window of a longer input whose first text has index `first_index`
    /// (errors name the index in the whole input).
    pub fn encode_window<S: AsRef<str>>(
        &self,
        texts: &[S],
        first_index: usize,
    ) -> Result<Vec<Encoded>> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode(t.as_ref(), first_index + i))
            .collect()
    }
}

/// Which end of an over-long text is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The first tokens (encoders: truncation on the right).
    Start,
    /// The last tokens (prompts: the end of a conversation is what the reply follows).
    End,
}

/// What [`encode_within`] tokenized.
#[derive(Debug)]
pub enum Within {
    /// The whole text.
    Whole(tokenizers::Encoding),
    /// The text has more than the limit of tokens (by a margin): `encoding` is that of
    /// `text[part]` (a prefix for [`Keep::Start`], a suffix for [`Keep::End`]), whose tokens
    /// at the kept end are the whole text's.
    Over {
        encoding: tokenizers::Encoding,
        part: std::ops::Range<usize>,
    },
}

/// Bytes of text per token of the limit tokenized first: about twice what English needs
/// (4-5 bytes a token), so one pass decides for most texts.
const BYTES_PER_TOKEN: usize = 8;

/// Tokens past the limit a part must yield before its kept end is taken as the whole text's:
/// the cut can change the tokens of the word it falls in and the few next to it.
const CUT_MARGIN_TOKENS: usize = 16;

/// Tokenizes `text` only as far as a limit of `max_tokens` needs. A text of up to
/// `max_tokens × 8` bytes is tokenized whole; a longer one by parts growing twofold from the
/// kept end, cut at whitespace where there is some, until a part yields more than
/// `max_tokens` + 16 tokens ([`Within::Over`]) or the part is the whole text. Work and memory
/// are bounded by the limit (twice the part that decides), whatever the text's length: a
/// tokenizers `Encoding` keeps about 200 bytes per token.
///
/// `tokenizer` must not truncate ([`TextTokenizer::counting`]): the count needs every token.
pub fn encode_within(
    tokenizer: &tokenizers::Tokenizer,
    text: &str,
    add_special_tokens: bool,
    max_tokens: usize,
    keep: Keep,
) -> tokenizers::Result<Within> {
    let mut budget = whole_text_bytes(max_tokens);
    while budget < text.len() {
        let part = match keep {
            Keep::Start => 0..cut_before(text, budget),
            Keep::End => cut_after(text, text.len() - budget)..text.len(),
        };
        let encoding = tokenizer.encode_char_offsets(&text[part.clone()], add_special_tokens)?;
        if encoding.len() > max_tokens + CUT_MARGIN_TOKENS {
            return Ok(Within::Over { encoding, part });
        }
        budget = budget.saturating_mul(2);
    }
    Ok(Within::Whole(
        tokenizer.encode_char_offsets(text, add_special_tokens)?,
    ))
}

/// Texts up to this many bytes are tokenized whole by [`encode_within`].
fn whole_text_bytes(max_tokens: usize) -> usize {
    max_tokens
        .saturating_add(CUT_MARGIN_TOKENS)
        .saturating_mul(BYTES_PER_TOKEN)
}

/// A cut at most `at` bytes into `text`: after the last whitespace of its last quarter when
/// there is one (so no word is split), else at a character boundary.
fn cut_before(text: &str, at: usize) -> usize {
    let mut end = at.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let mut floor = end - end / 4;
    while !text.is_char_boundary(floor) {
        floor += 1;
    }
    match text[floor..end].rfind(char::is_whitespace) {
        Some(i) => floor + i,
        None => end,
    }
}

/// A cut at least `at` bytes into `text`, at the first whitespace of the quarter after it
/// when there is one, else at a character boundary.
fn cut_after(text: &str, at: usize) -> usize {
    let mut start = at.min(text.len());
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let reach = (text.len() - start) / 4;
    let mut ceiling = start + reach;
    while !text.is_char_boundary(ceiling) {
        ceiling += 1;
    }
    match text[start..ceiling].find(char::is_whitespace) {
        Some(i) => start + i,
        None => start,
    }
}

/// Loads tokenizer.json. `tokenizers` panics on some malformed files instead of returning an
/// error (a JSON error inside `decoder`, a BPE `continuing_subword_prefix` longer than a
/// merge, a post-processor template naming a special token it does not define, which panics
/// at the first encode): loading and one probe encode run under `catch_unwind`, and a panic
/// is a [`Error::BadTokenizer`] naming the file.
fn load_tokenizer_json(path: &Path) -> Result<tokenizers::Tokenizer> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let bad = |reason: String| Error::BadTokenizer {
        file: path.to_path_buf(),
        reason,
    };
    let loaded = std::panic::catch_unwind(|| {
        let tokenizer = tokenizers::Tokenizer::from_bytes(&bytes)?;
        tokenizer.encode_char_offsets("a b", true)?;
        Ok::<_, tokenizers::Error>(tokenizer)
    });
    match loaded {
        Ok(Ok(tokenizer)) => Ok(tokenizer),
        Ok(Err(e)) => Err(bad(e.to_string())),
        Err(panic) => Err(bad(format!(
            "the tokenizers library failed on it: {}",
            crate::error::panic_message(&*panic)
        ))),
    }
}

#[derive(Debug, Default, Deserialize)]
struct SpecialTokensMap {
    #[serde(default)]
    mask_token: Option<TokenField>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_is_the_smallest_known() {
        let limits = InputLimits {
            tokenizer_max_length: Some(512),
            position_limit: Some(512),
            sentence_max_seq_length: Some(256),
        };
        assert_eq!(max_input_length(&limits), 256);
        assert_eq!(max_input_length(&InputLimits::default()), 512);
    }

    #[test]
    fn transformers_sentinel_is_no_limit() {
        let config = TokenizerConfig {
            model_max_length: Some(1e30),
            ..Default::default()
        };
        assert_eq!(config.real_model_max_length(), None);
    }
}

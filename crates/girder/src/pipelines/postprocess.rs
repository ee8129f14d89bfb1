//! Shared pieces of the pipelines' post-processing: the error type, numpy-exact
//! score arithmetic and the tokenizer look-ups transformers makes through
//! `tokenizer._tokenizer` / `tokenizer.convert_tokens_to_string`.
//!
//! The arithmetic here reproduces what numpy does on `float32` arrays in
//! transformers' `pipelines/*.py` (softmax = subtract max, exp, divide by the
//! sum; `np.sum` uses pairwise summation), so that scores agree with Python's
//! to the last bit or two, not only to a tolerance.

use tokenizers::models::ModelWrapper;
use tokenizers::{Decoder, Model, Tokenizer};

/// Everything the post-processing steps can refuse. Messages follow the
/// exceptions transformers raises in the same situations.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PostprocessError {
    /// transformers: `ValueError` raised in `TokenClassificationPipeline._sanitize_parameters`
    /// for `first`/`average`/`max` with a slow tokenizer (no offsets).
    #[error(
        "Slow tokenizers cannot handle subwords. Please set the `aggregation_strategy` option to `\"simple\"` or use a fast tokenizer."
    )]
    SubwordsWithoutOffsets,
    /// The logits (or an encoding's per-token vectors) do not have the shape the
    /// encoding implies.
    #[error("shape mismatch: {what}: expected {expected}, got {got}")]
    ShapeMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    /// transformers looks labels up in `config.id2label` and raises `KeyError`.
    #[error("class index {index} has no label (id2label has {num_labels} entries)")]
    UnknownLabel { index: usize, num_labels: usize },
    /// numpy's `argmax` on an empty row (a model with zero labels).
    #[error("attempt to get argmax of an empty sequence")]
    EmptyScores,
    /// transformers: `PipelineException("fill-mask", ..., "No mask_token (...) found on the input")`.
    #[error("No mask_token ({mask_token}) found on the input")]
    NoMaskInInput { mask_token: String },
    /// transformers: `PipelineException(..., "The tokenizer does not define a `mask_token`.")`.
    #[error("The tokenizer does not define a `mask_token`.")]
    NoMaskToken,
    /// transformers: `ValueError` from `FillMaskPipeline.get_target_ids`.
    #[error("At least one target must be provided when passed.")]
    NoTargets,
    /// torch's `topk` with `k` larger than the number of candidates.
    #[error("selected index k out of range (k = {k}, candidates = {candidates})")]
    TopKOutOfRange { k: usize, candidates: usize },
    /// Error reported by the `tokenizers` crate while encoding or decoding.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
}

impl PostprocessError {
    pub(crate) fn tokenizer(e: impl std::fmt::Display) -> Self {
        PostprocessError::Tokenizer(e.to_string())
    }
}

/// `np.sum` of a contiguous `float32` vector: numpy's pairwise summation
/// (`@TYPE@_pairwise_sum`, 8 accumulators, blocks of 128), added to the
/// reduction's initial value 0. Plain left-to-right summation differs in the
/// last bits as soon as there are 8 or more terms.
pub(crate) fn np_sum_f32(a: &[f32]) -> f32 {
    // `-0.0 + x` is `x` for every x, so the reduction's identity adds nothing.
    pairwise_sum(a)
}

fn pairwise_sum(a: &[f32]) -> f32 {
    let n = a.len();
    if n < 8 {
        let mut res = -0.0f32;
        for &x in a {
            res += x;
        }
        res
    } else if n <= 128 {
        let mut r = [0f32; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i < n - (n % 8) {
            for (j, acc) in r.iter_mut().enumerate() {
                *acc += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `np.max` of a `float32` vector: NaN propagates. `None` for an empty vector
/// (numpy raises).
pub(crate) fn np_max(a: &[f32]) -> Option<f32> {
    let mut it = a.iter();
    let mut m = *it.next()?;
    for &x in it {
        if m.is_nan() {
            break;
        }
        if x.is_nan() || x > m {
            m = x;
        }
    }
    Some(m)
}

/// `np.argmax`: the first maximum; a NaN counts as the maximum (the first NaN
/// wins). `None` for an empty vector (numpy raises).
pub(crate) fn np_argmax(a: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &x) in a.iter().enumerate() {
        match best {
            None => best = Some((i, x)),
            Some((_, m)) if m.is_nan() => break,
            Some((_, m)) => {
                if x.is_nan() || x > m {
                    best = Some((i, x));
                }
            }
        }
    }
    best.map(|(i, _)| i)
}

/// transformers' numpy softmax over one row of `float32` logits:
/// `maxes = np.max(x); e = np.exp(x - maxes); e / e.sum()`, all in `float32`.
pub(crate) fn np_softmax(logits: &[f32]) -> Vec<f32> {
    let Some(max) = np_max(logits) else {
        return Vec::new();
    };
    let shifted: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
    let sum = np_sum_f32(&shifted);
    shifted.into_iter().map(|e| e / sum).collect()
}

/// transformers' numpy sigmoid `1.0 / (1.0 + np.exp(-x))`; the Python float
/// is a weak scalar under NEP 50, so everything stays `float32`.
pub(crate) fn np_sigmoid(logits: &[f32]) -> Vec<f32> {
    logits
        .iter()
        .map(|&x| 1.0f32 / (1.0f32 + (-x).exp()))
        .collect()
}

/// `np.nanmean` of a 1-D `float32` vector: NaNs are replaced by 0 and not
/// counted, the total is a pairwise `float32` sum, and the division by the
/// (integer) count happens in `float64` before rounding back to `float32`.
/// All-NaN (or empty) input gives NaN, as numpy does (with a warning).
pub(crate) fn np_nanmean(a: &[f32]) -> f32 {
    let cleaned: Vec<f32> = a
        .iter()
        .map(|&x| if x.is_nan() { 0.0 } else { x })
        .collect();
    let count = a.iter().filter(|x| !x.is_nan()).count();
    let total = np_sum_f32(&cleaned);
    (f64::from(total) / count as f64) as f32
}

/// `np.nanmean(np.stack(rows), axis=0)` for equally long `float32` rows.
/// numpy reduces axis 0 of a C-contiguous 2-D array row after row (a plain
/// left-to-right sum per column), except when there is a single column, where
/// the data is contiguous along the reduced axis and pairwise summation applies.
pub(crate) fn np_nanmean_axis0(rows: &[&[f32]]) -> Vec<f32> {
    let width = rows.first().map_or(0, |r| r.len());
    if width == 1 {
        // Rows all have `width` entries (callers pass equally long rows).
        let column: Vec<f32> = rows.iter().filter_map(|r| r.first().copied()).collect();
        return vec![np_nanmean(&column)];
    }
    let mut total = vec![0f32; width];
    let mut count = vec![0usize; width];
    for row in rows {
        for (j, &x) in row.iter().enumerate().take(width) {
            if !x.is_nan() {
                total[j] += x;
                count[j] += 1;
            } else {
                total[j] += 0.0;
            }
        }
    }
    total
        .iter()
        .zip(&count)
        .map(|(&t, &c)| (f64::from(t) / c as f64) as f32)
        .collect()
}

/// `tokenizer.convert_tokens_to_string(tokens)` of a transformers fast
/// tokenizer: `backend_tokenizer.decoder.decode(tokens)`, or the tokens joined
/// with spaces when the tokenizer has no decoder. No cleanup of tokenization
/// spaces happens here (the WordPiece decoder applies its own `cleanup`).
pub fn convert_tokens_to_string(
    tokenizer: &Tokenizer,
    tokens: Vec<String>,
) -> Result<String, PostprocessError> {
    match tokenizer.get_decoder() {
        Some(decoder) => decoder.decode(tokens).map_err(PostprocessError::tokenizer),
        None => Ok(tokens.join(" ")),
    }
}

/// `tokenizer._tokenizer.model.continuing_subword_prefix` as transformers
/// reads it with `getattr(..., None)`: WordPiece and BPE have the attribute,
/// Unigram and WordLevel do not. An empty prefix is returned as `None`
/// because Python only tests its truthiness.
pub fn continuing_subword_prefix(tokenizer: &Tokenizer) -> Option<String> {
    let prefix = match tokenizer.get_model() {
        ModelWrapper::WordPiece(wp) => Some(wp.continuing_subword_prefix.clone()),
        ModelWrapper::BPE(bpe) => bpe.continuing_subword_prefix.clone(),
        ModelWrapper::WordLevel(_) | ModelWrapper::Unigram(_) => None,
    };
    prefix.filter(|p| !p.is_empty())
}

/// Id of the unknown token (`tokenizer.unk_token_id`), taken from the
/// tokenizer model: WordPiece/WordLevel/BPE name it; Unigram keeps `unk_id`
/// private, so it is found by tokenizing a code point that no vocabulary
/// holds. Falls back to the conventional `<unk>` / `[UNK]` tokens.
pub fn unk_token_id(tokenizer: &Tokenizer) -> Option<u32> {
    let named = match tokenizer.get_model() {
        ModelWrapper::WordPiece(wp) => Some(wp.unk_token.clone()),
        ModelWrapper::WordLevel(wl) => Some(wl.unk_token.clone()),
        ModelWrapper::BPE(bpe) => bpe.unk_token.clone(),
        ModelWrapper::Unigram(u) => {
            const PROBE: &str = "\u{10FFFF}";
            match u.tokenize(PROBE) {
                Ok(tokens) if tokens.len() == 1 && tokens[0].value != PROBE => {
                    return Some(tokens[0].id);
                }
                _ => None,
            }
        }
    };
    named
        .and_then(|t| tokenizer.token_to_id(&t))
        .or_else(|| tokenizer.token_to_id("<unk>"))
        .or_else(|| tokenizer.token_to_id("[UNK]"))
}

/// Whether the tokenizer model is a BPE (transformers skips
/// `clean_up_tokenization` for those in `_decode`).
pub fn is_bpe(tokenizer: &Tokenizer) -> bool {
    matches!(tokenizer.get_model(), ModelWrapper::BPE(_))
}

/// Python's `str[start:end]` on code points, with its clamping (never panics).
pub(crate) fn char_slice(chars: &[char], start: usize, end: usize) -> String {
    let end = end.min(chars.len());
    if start >= end {
        return String::new();
    }
    chars[start..end].iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairwise_sum_matches_sequential_below_eight() {
        assert_eq!(np_sum_f32(&[1.0, 2.0, 3.0]), 6.0);
        assert_eq!(np_sum_f32(&[]), -0.0);
    }

    #[test]
    fn argmax_and_max_follow_numpy() {
        assert_eq!(np_argmax(&[1.0, 3.0, 3.0, 2.0]), Some(1));
        assert_eq!(np_argmax(&[1.0, f32::NAN, 5.0, f32::NAN]), Some(1));
        assert_eq!(np_argmax(&[]), None);
        assert!(np_max(&[1.0, f32::NAN, 5.0]).is_some_and(f32::is_nan));
        assert_eq!(np_max(&[-1.0, -3.0]), Some(-1.0));
    }

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = np_softmax(&[1000.0, 1000.0]);
        assert_eq!(p, vec![0.5, 0.5]);
        assert!(np_softmax(&[]).is_empty());
    }

    #[test]
    fn nanmean_ignores_nan() {
        assert_eq!(np_nanmean(&[1.0, f32::NAN, 3.0]), 2.0);
        assert!(np_nanmean(&[f32::NAN]).is_nan());
        let rows: [&[f32]; 2] = [&[1.0, f32::NAN], &[3.0, 4.0]];
        assert_eq!(np_nanmean_axis0(&rows), vec![2.0, 4.0]);
    }

    #[test]
    fn char_slice_clamps_like_python() {
        let c: Vec<char> = "héllo".chars().collect();
        assert_eq!(char_slice(&c, 1, 3), "él");
        assert_eq!(char_slice(&c, 3, 99), "lo");
        assert_eq!(char_slice(&c, 4, 2), "");
    }
}

/// Small in-code tokenizers and encoding helpers for the pipelines' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::str::FromStr;

    use serde_json::json;
    use tokenizers::Tokenizer;

    use crate::tokenize::Encoded;

    /// A lowercasing BERT-style WordPiece tokenizer over `vocab`, with the
    /// `[PAD] [UNK] [CLS] [SEP] [MASK]` tokens (which must be ids 0..=4) special.
    pub(crate) fn bert_like(vocab: &[&str]) -> Tokenizer {
        let specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];
        let added: Vec<_> = specials
            .iter()
            .enumerate()
            .map(|(id, content)| {
                json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                       "rstrip": false, "normalized": false, "special": true})
            })
            .collect();
        let vocab: serde_json::Map<String, serde_json::Value> = vocab
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), json!(i)))
            .collect();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": {"type": "BertNormalizer", "clean_text": true,
                           "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"},
            "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
            "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab}
        });
        Tokenizer::from_str(&spec.to_string()).expect("valid test tokenizer")
    }

    /// girder-style encoding of `text` (character offsets).
    pub(crate) fn encode(tok: &Tokenizer, text: &str) -> Encoded {
        let e = tok
            .encode_char_offsets(text, true)
            .expect("encodable test text");
        Encoded {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            tokens: e.get_tokens().to_vec(),
            offsets: e.get_offsets().to_vec(),
            word_ids: e.get_word_ids().to_vec(),
            special_tokens_mask: e.get_special_tokens_mask().to_vec(),
            truncated: false,
        }
    }
}

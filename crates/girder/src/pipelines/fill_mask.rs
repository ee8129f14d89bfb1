//! Post-processing of the `fill-mask` pipeline, following transformers'
//! `pipelines/fill_mask.py` (`FillMaskPipeline.postprocess`, `get_target_ids`,
//! `_sanitize_parameters`, `_ensure_exactly_one_mask_token`) of
//! transformers 5.24.0, for one text.
//!
//! Output shapes for one input text:
//! * exactly one mask token: a list of `top_k` predictions (dicts with keys
//!   `score, token, token_str, sequence`), best first;
//! * several mask tokens: a list (one per mask, in text order) of such lists.
//!   Each mask is predicted independently; in `sequence` only that mask is
//!   filled, the other masks stay, and special tokens are kept
//!   (`skip_special_tokens` is only used for the single-mask case).

use super::{in_input_order, Model};
use crate::error::{Error, Result};
use crate::models::Head;
use crate::tokenize::Encoded;
use std::collections::HashMap;

use serde::Serialize;
use tokenizers::Tokenizer;

use super::postprocess::{is_bpe, PostprocessError};

/// Call parameters of the pipeline. `Default` is transformers' default call
/// (`top_k=5`, no targets) with special tokens detected from the tokenizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Number of predictions per mask (transformers' default 5). With targets
    /// it is capped at the number of distinct target ids.
    pub top_k: usize,
    /// Restrict predictions to these tokens (see [`resolve_targets`]).
    pub targets: Option<Vec<String>>,
    /// `tokenizer.mask_token`; `None` = detect it in the tokenizer's special
    /// added tokens (see [`find_mask_token`]).
    pub mask_token: Option<String>,
    /// `tokenizer.pad_token` (pad ids are filtered out of `sequence`);
    /// `None` = detect it (see [`find_pad_token`]).
    pub pad_token: Option<String>,
    /// The tokenizer's `clean_up_tokenization_spaces` (from
    /// `tokenizer_config.json`; transformers 5 defaults it to `false`). It is
    /// ignored for BPE models, as transformers' `_decode` does.
    pub clean_up_tokenization_spaces: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            top_k: 5,
            targets: None,
            mask_token: None,
            pad_token: None,
            clean_up_tokenization_spaces: false,
        }
    }
}

/// One proposition, keys in transformers' order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Prediction {
    /// Probability of the token at this mask (`float32` softmax over the whole
    /// vocabulary, widened to `f64`), even when targets restrict the choice.
    pub score: f64,
    pub token: u32,
    /// `tokenizer.decode([token])`.
    pub token_str: String,
    /// The input with this mask filled, decoded.
    pub sequence: String,
}

/// `FillMaskPipeline` output for one text.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Output {
    /// Exactly one mask: `[ {score, token, token_str, sequence}, ... ]`.
    Single(Vec<Prediction>),
    /// Several masks: one list of predictions per mask, in order.
    Multi(Vec<Vec<Prediction>>),
}

/// Target ids with the warnings transformers logs while resolving them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedTargets {
    /// Distinct ids (transformers goes through a Python `set`; here they are
    /// sorted ascending).
    pub ids: Vec<u32>,
    pub warnings: Vec<String>,
}

/// `FillMaskPipeline.get_target_ids`: a target that is a vocabulary token
/// (added tokens included) is used as is; otherwise it is tokenized without
/// special tokens and its first token is used (with a warning), or it is
/// dropped with a warning when it tokenizes to nothing. No target left is an
/// error.
pub fn resolve_targets(
    targets: &[String],
    tokenizer: &Tokenizer,
) -> Result<Vec<u32>, PostprocessError> {
    resolve_targets_with_warnings(targets, tokenizer).map(|r| r.ids)
}

/// [`resolve_targets`], also returning transformers' warning messages.
pub fn resolve_targets_with_warnings(
    targets: &[String],
    tokenizer: &Tokenizer,
) -> Result<ResolvedTargets, PostprocessError> {
    let vocab: HashMap<String, u32> = tokenizer.get_vocab(true);
    let mut ids = Vec::new();
    let mut warnings = Vec::new();
    for target in targets {
        if let Some(&id) = vocab.get(target) {
            ids.push(id);
            continue;
        }
        // transformers: tokenizer(target, add_special_tokens=False, max_length=1,
        // truncation=True)["input_ids"], i.e. the first token. Padding is off
        // there; a padding configured in tokenizer.json is skipped through the
        // attention mask.
        let encoding = tokenizer
            .encode(target.as_str(), false)
            .map_err(PostprocessError::tokenizer)?;
        let first = encoding
            .get_ids()
            .iter()
            .zip(encoding.get_attention_mask())
            .find(|(_, &mask)| mask != 0)
            .map(|(&id, _)| id);
        match first {
            None => warnings.push(format!(
                "The specified target token `{target}` does not exist in the model vocabulary. \
                 We cannot replace it with anything meaningful, ignoring it"
            )),
            Some(id) => {
                warnings.push(format!(
                    "The specified target token `{target}` does not exist in the model vocabulary. \
                     Replacing with `{}`.",
                    tokenizer.id_to_token(id).unwrap_or_default()
                ));
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() {
        return Err(PostprocessError::NoTargets);
    }
    Ok(ResolvedTargets { ids, warnings })
}

/// The special added token conventionally used as mask (`[MASK]`, `<mask>`,
/// any case), for tokenizers whose `tokenizer_config.json` is not at hand.
pub fn find_mask_token(tokenizer: &Tokenizer) -> Option<String> {
    find_special(tokenizer, &["[mask]", "<mask>"])
}

/// The padding token: the one configured in tokenizer.json's padding, else
/// the special added token `[PAD]` / `<pad>` (any case).
pub fn find_pad_token(tokenizer: &Tokenizer) -> Option<String> {
    if let Some(padding) = tokenizer.get_padding() {
        return Some(padding.pad_token.clone());
    }
    find_special(tokenizer, &["[pad]", "<pad>"])
}

fn find_special(tokenizer: &Tokenizer, names: &[&str]) -> Option<String> {
    let mut found: Vec<(u32, String)> = tokenizer
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special && names.contains(&t.content.to_lowercase().as_str()))
        .map(|(id, t)| (id, t.content))
        .collect();
    // The map is unordered; the lowest id makes the choice deterministic.
    found.sort();
    found.into_iter().next().map(|(_, content)| content)
}

/// `tokenizer.decode(ids, skip_special_tokens)` of transformers 5: the
/// backend decode, then `clean_up_tokenization` when enabled (never for BPE).
pub fn decode(
    tokenizer: &Tokenizer,
    ids: &[u32],
    skip_special_tokens: bool,
    clean_up_tokenization_spaces: bool,
) -> Result<String, PostprocessError> {
    let text = tokenizer
        .decode(ids, skip_special_tokens)
        .map_err(PostprocessError::tokenizer)?;
    if clean_up_tokenization_spaces && !is_bpe(tokenizer) {
        Ok(clean_up_tokenization(&text))
    } else {
        Ok(text)
    }
}

/// transformers' `clean_up_tokenization` (same replacements, same order).
pub fn clean_up_tokenization(text: &str) -> String {
    text.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// The mask token (string and id) the options or the tokenizer define.
pub fn mask_token(
    tokenizer: &Tokenizer,
    opts: &Options,
) -> Result<(String, u32), PostprocessError> {
    let token = opts
        .mask_token
        .clone()
        .or_else(|| find_mask_token(tokenizer))
        .ok_or(PostprocessError::NoMaskToken)?;
    let id = tokenizer
        .token_to_id(&token)
        .ok_or(PostprocessError::NoMaskToken)?;
    Ok((token, id))
}

/// Positions of the mask token in the encoding, in order (the rows expected
/// in `mask_logits`). Errors as transformers' preprocessing does when there
/// is none.
pub fn mask_positions(
    enc: &Encoded,
    tokenizer: &Tokenizer,
    opts: &Options,
) -> Result<Vec<usize>, PostprocessError> {
    let (token, id) = mask_token(tokenizer, opts)?;
    let positions: Vec<usize> = enc
        .ids
        .iter()
        .enumerate()
        .filter(|(_, &t)| t == id)
        .map(|(i, _)| i)
        .collect();
    if positions.is_empty() {
        return Err(PostprocessError::NoMaskInInput { mask_token: token });
    }
    Ok(positions)
}

/// torch's `logits.softmax(dim=-1)` on one `float32` row: subtract the max,
/// exponentiate, multiply by the reciprocal of the sum. The sum is taken in
/// `f64` (torch sums in vectorised `float32` lanes; both stay far below 1e-6
/// relative error on a vocabulary-sized row).
fn torch_softmax(row: &[f32]) -> Vec<f32> {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, |m, x| {
        if m.is_nan() || x.is_nan() {
            f32::NAN
        } else {
            m.max(x)
        }
    });
    let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
    let sum = exps.iter().map(|&e| f64::from(e)).sum::<f64>() as f32;
    let inv = 1.0 / sum;
    exps.into_iter().map(|e| e * inv).collect()
}

/// `probs.topk(k)`: the `k` largest values, best first (NaN counts as the
/// largest, as in torch); ties keep the lower index first.
fn topk(values: &[f32], k: usize) -> Result<Vec<(usize, f32)>, PostprocessError> {
    if k > values.len() {
        return Err(PostprocessError::TopKOutOfRange {
            k,
            candidates: values.len(),
        });
    }
    let mut order: Vec<(usize, f32)> = values.iter().copied().enumerate().collect();
    order.sort_by(|a, b| match (a.1.is_nan(), b.1.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        // Equal values (including -0.0 vs 0.0) keep index order (stable sort).
        (false, false) => b.1.partial_cmp(&a.1).unwrap_or(std::cmp::Ordering::Equal),
    });
    order.truncate(k);
    Ok(order)
}

/// `FillMaskPipeline` for one text: `mask_logits[i]` is the vocabulary
/// logits row at the `i`-th mask position (see [`mask_positions`]).
///
/// Errors, in transformers' order: unusable targets, no mask token in the
/// tokenizer, no mask in the input, then shape problems and `top_k` larger
/// than the vocabulary (torch's `topk` error).
pub fn postprocess(
    enc: &Encoded,
    mask_logits: &[Vec<f32>],
    tokenizer: &Tokenizer,
    opts: &Options,
) -> Result<Output, PostprocessError> {
    // `_sanitize_parameters` resolves targets first, then checks the mask token.
    let target_ids = match &opts.targets {
        Some(targets) => Some(resolve_targets(targets, tokenizer)?),
        None => None,
    };
    let positions = mask_positions(enc, tokenizer, opts)?;
    if mask_logits.len() != positions.len() {
        return Err(PostprocessError::ShapeMismatch {
            what: "fill-mask logits rows (one per mask token)",
            expected: positions.len(),
            got: mask_logits.len(),
        });
    }
    let pad_id = opts
        .pad_token
        .clone()
        .or_else(|| find_pad_token(tokenizer))
        .and_then(|t| tokenizer.token_to_id(&t));

    // "Cap top_k if there are targets".
    let top_k = match &target_ids {
        Some(ids) => opts.top_k.min(ids.len()),
        None => opts.top_k,
    };
    let single_mask = positions.len() == 1;
    let clean = opts.clean_up_tokenization_spaces;

    let mut rows = Vec::with_capacity(positions.len());
    for (&position, logits) in positions.iter().zip(mask_logits) {
        let probs = torch_softmax(logits);
        let candidates: Vec<f32> = match &target_ids {
            Some(ids) => ids
                .iter()
                .map(|&id| probs.get(id as usize).copied())
                .collect::<Option<Vec<f32>>>()
                .ok_or(PostprocessError::ShapeMismatch {
                    what: "fill-mask logits row (shorter than a target id)",
                    expected: ids.iter().max().map_or(0, |&m| m as usize + 1),
                    got: probs.len(),
                })?,
            None => probs,
        };
        let mut row = Vec::with_capacity(top_k);
        for (index, score) in topk(&candidates, top_k)? {
            let token = match &target_ids {
                Some(ids) => ids[index],
                None => index as u32,
            };
            let mut ids = enc.ids.clone();
            ids[position] = token;
            // "Filter padding out" (after filling, so a predicted pad disappears too).
            if let Some(pad) = pad_id {
                ids.retain(|&t| t != pad);
            }
            // Other masks would vanish with skip_special_tokens, so multi-mask
            // outputs keep every special token.
            let sequence = decode(tokenizer, &ids, single_mask, clean)?;
            let token_str = decode(tokenizer, &[token], false, clean)?;
            row.push(Prediction {
                score: f64::from(score),
                token,
                token_str,
                sequence,
            });
        }
        rows.push(row);
    }
    if single_mask {
        Ok(Output::Single(rows.pop().unwrap_or_default()))
    } else {
        Ok(Output::Multi(rows))
    }
}

/// One text's predictions, and whether it was truncated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextResult {
    /// transformers' output: a list of predictions, or one list per mask.
    pub predictions: Output,
    pub truncated: bool,
}

/// Fills the masks of each text; one result per text, in order. A text without a mask
/// token is an error naming it, as transformers raises.
pub fn run<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    options: &Options,
) -> Result<Vec<TextResult>> {
    check_head(model)?;
    let encodings = model.encode_texts(texts)?;
    run_encoded(model, &encodings, &model.plan(&encodings), options)
}

fn check_head(model: &Model) -> Result<()> {
    if model.encoder.head() != Head::MaskedLM {
        return Err(Error::TaskMismatch {
            model: model.encoder.class_name().to_string(),
            task: "fill-mask".into(),
            reason: "it has no masked-LM head (architectures must name a …ForMaskedLM class)"
                .into(),
        });
    }
    Ok(())
}

/// [`run`] on texts already tokenized with `model.tokenizer`.
pub fn run_encoded(
    model: &Model,
    encodings: &[Encoded],
    plan: &[Vec<usize>],
    options: &Options,
) -> Result<Vec<TextResult>> {
    check_head(model)?;
    let tokenizer = model.tokenizer.inner();
    let mut options = options.clone();
    if options.mask_token.is_none() {
        options.mask_token = model.tokenizer.mask_token().map(String::from);
    }
    // Only the mask rows go through the vocabulary projection: [masks, vocab], not [tokens, vocab].
    let positions = encodings
        .iter()
        .enumerate()
        .map(|(index, enc)| {
            mask_positions(enc, tokenizer, &options).map_err(|e| Error::BadInput {
                index,
                reason: e.to_string(),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut results = (0..encodings.len()).map(|_| None).collect::<Vec<_>>();
    model.forward_batches(encodings, plan, |indices, batch, out| {
        let mut rows = Vec::new();
        for (i, &index) in indices.iter().enumerate() {
            let first = batch.seq_range(i).start as u32;
            rows.extend(positions[index].iter().map(|&p| first + p as u32));
        }
        let logits = model
            .encoder
            .head_logits(out, batch, Some(&rows))?
            .to_vec2::<f32>()?;
        let mut next = 0;
        for &index in indices {
            let count = positions[index].len();
            let enc = &encodings[index];
            let predictions = postprocess(enc, &logits[next..next + count], tokenizer, &options)
                .map_err(|e| Error::BadInput {
                    index,
                    reason: e.to_string(),
                })?;
            next += count;
            results[index] = Some(TextResult {
                predictions,
                truncated: enc.truncated,
            });
        }
        Ok(())
    })?;
    Ok(in_input_order(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::postprocess::test_support::{bert_like, encode};

    const VOCAB: [&str; 14] = [
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "dog", "sat", "on", "mat", ".",
        "ca", "##t",
    ];

    fn tokenizer() -> Tokenizer {
        bert_like(&VOCAB)
    }

    /// Logits favouring `ranked[0]`, then `ranked[1]`, ...
    fn logits(ranked: &[u32]) -> Vec<f32> {
        let mut row = vec![0.0f32; VOCAB.len()];
        for (rank, &id) in ranked.iter().enumerate() {
            row[id as usize] = 10.0 - rank as f32;
        }
        row
    }

    #[test]
    fn single_mask_lists_top_k_with_filled_sequences() {
        let tok = tokenizer();
        let enc = encode(&tok, "the [MASK] sat.");
        let out = postprocess(&enc, &[logits(&[6, 7, 10])], &tok, &Options::default()).unwrap();
        let Output::Single(preds) = &out else {
            panic!("{out:?}")
        };
        assert_eq!(preds.len(), 5);
        assert_eq!(preds[0].token, 6);
        assert_eq!(preds[0].token_str, "cat");
        assert_eq!(preds[0].sequence, "the cat sat.");
        assert_eq!(preds[1].sequence, "the dog sat.");
        assert!(preds[0].score > preds[1].score && preds[1].score > preds[2].score);
        // The rest are tied at logit 0: lowest id first; special tokens are
        // skipped in `sequence` (single mask) but not in `token_str`.
        assert_eq!(preds[3].token, 0);
        assert_eq!(preds[3].token_str, "[PAD]");
        assert_eq!(preds[3].sequence, "the sat.");
        assert_eq!(preds[4].token, 1);
        assert_eq!(preds[4].sequence, "the sat.");
        let json = serde_json::to_string(&preds[0]).unwrap();
        assert!(json.starts_with(r#"{"score":0."#));
        assert!(json.ends_with(r#","token":6,"token_str":"cat","sequence":"the cat sat."}"#));
    }

    #[test]
    fn multi_mask_gives_list_of_lists_keeping_specials() {
        let tok = tokenizer();
        let enc = encode(&tok, "the [MASK] sat on the [MASK]");
        let opts = Options {
            top_k: 2,
            ..Options::default()
        };
        let out = postprocess(&enc, &[logits(&[6, 7]), logits(&[10, 7])], &tok, &opts).unwrap();
        let Output::Multi(rows) = &out else {
            panic!("{out:?}")
        };
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0][0].sequence, "[CLS] the cat sat on the [MASK] [SEP]");
        assert_eq!(rows[1][0].sequence, "[CLS] the [MASK] sat on the mat [SEP]");
        assert_eq!(rows[1][1].token_str, "dog");
        let json = serde_json::to_value(&out).unwrap();
        assert!(json[0].is_array() && json[1][0]["token"] == 10);
    }

    #[test]
    fn targets_restrict_and_cap_top_k() {
        let tok = tokenizer();
        let enc = encode(&tok, "the [MASK].");
        let opts = Options {
            targets: Some(vec!["mat".into(), "dog".into(), "mat".into()]),
            ..Options::default()
        };
        let out = postprocess(&enc, &[logits(&[6, 7, 10])], &tok, &opts).unwrap();
        let Output::Single(preds) = &out else {
            panic!("{out:?}")
        };
        let tokens: Vec<u32> = preds.iter().map(|p| p.token).collect();
        assert_eq!(tokens, [7, 10]);
        // Scores are probabilities over the whole vocabulary, not renormalised.
        let full = postprocess(&enc, &[logits(&[6, 7, 10])], &tok, &Options::default()).unwrap();
        let Output::Single(all) = &full else { panic!() };
        assert_eq!(preds[0].score, all[1].score);
    }

    #[test]
    fn target_resolution_like_get_target_ids() {
        let tok = tokenizer();
        // "cat" is a token; "Cats" is not: tokenized to "cat" "##s"? no "##s"
        // in the vocab, so [UNK]; "cat dog" tokenizes to "cat" first.
        let r = resolve_targets_with_warnings(&["cat".into(), "cat dog".into()], &tok).unwrap();
        assert_eq!(r.ids, vec![6]);
        assert_eq!(r.warnings.len(), 1);
        assert!(r.warnings[0].ends_with("Replacing with `cat`."));
        let r = resolve_targets_with_warnings(&["".into(), "mat".into()], &tok).unwrap();
        assert_eq!(r.ids, vec![10]);
        assert!(r.warnings[0].ends_with("ignoring it"));
        assert_eq!(
            resolve_targets(&["".into()], &tok),
            Err(PostprocessError::NoTargets)
        );
        assert_eq!(resolve_targets(&[], &tok), Err(PostprocessError::NoTargets));
        assert_eq!(resolve_targets(&["[MASK]".into()], &tok), Ok(vec![4]));
    }

    #[test]
    fn errors_without_mask_and_bad_shapes() {
        let tok = tokenizer();
        let enc = encode(&tok, "the cat");
        assert_eq!(
            postprocess(&enc, &[], &tok, &Options::default()),
            Err(PostprocessError::NoMaskInInput {
                mask_token: "[MASK]".into()
            })
        );
        assert_eq!(
            postprocess(&Encoded::default(), &[], &tok, &Options::default()),
            Err(PostprocessError::NoMaskInInput {
                mask_token: "[MASK]".into()
            })
        );
        let enc = encode(&tok, "the [MASK]");
        assert!(matches!(
            postprocess(&enc, &[], &tok, &Options::default()),
            Err(PostprocessError::ShapeMismatch { .. })
        ));
        let big = Options {
            top_k: 100,
            ..Options::default()
        };
        assert!(matches!(
            postprocess(&enc, &[logits(&[6])], &tok, &big),
            Err(PostprocessError::TopKOutOfRange { k: 100, .. })
        ));
        let zero = Options {
            top_k: 0,
            ..Options::default()
        };
        assert_eq!(
            postprocess(&enc, &[logits(&[6])], &tok, &zero),
            Ok(Output::Single(vec![]))
        );
        let no_mask = Options {
            mask_token: Some("<nope>".into()),
            ..Options::default()
        };
        assert_eq!(
            postprocess(&enc, &[logits(&[6])], &tok, &no_mask),
            Err(PostprocessError::NoMaskToken)
        );
    }

    #[test]
    fn cleanup_replacements() {
        assert_eq!(
            clean_up_tokenization("a . b ? do n't i 'm"),
            "a. b? don't i'm"
        );
        assert_eq!(clean_up_tokenization("it ' s , ok !"), "it's, ok!");
    }
}

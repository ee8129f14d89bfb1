//! Token classification (NER) data: sentences of words tokenized with their tags aligned
//! to the first subword of each word, as transformers' `run_ner.py` labels them (later
//! subwords and special tokens ignored), predictions per word, and seqeval's scores.

use super::data::{align_tags, LabelSet, TaggedSentence, IGNORE_INDEX};
use super::fit::predicted_labels;
use super::seqeval::NerMetrics;
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::pipelines::Model;

/// A sentence tokenized from its words: ids, token types, each token's word, and each
/// token's tag id (the first subword of a word gets the word's tag, the others and the
/// special tokens [`IGNORE_INDEX`]).
#[derive(Debug, Clone)]
pub struct EncodedSentence {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub word_ids: Vec<Option<u32>>,
    pub tags: Vec<i64>,
}

/// Tokenizes each sentence's words (pre-tokenized input, special tokens added, truncated
/// under the model's policy) and aligns the tags to the subwords.
pub fn encode_sentences(
    model: &Model,
    sentences: &[TaggedSentence],
) -> Result<Vec<EncodedSentence>> {
    sentences
        .iter()
        .enumerate()
        .map(|(index, sentence)| {
            let pieces: Vec<&str> = sentence.words.iter().map(String::as_str).collect();
            let encoding = model
                .tokenizer
                .inner()
                .encode(pieces.as_slice(), true)
                .map_err(|e| Error::Tokenize {
                    index,
                    reason: e.to_string(),
                })?;
            Ok(EncodedSentence {
                tags: align_tags(encoding.get_word_ids(), &sentence.tags)?,
                ids: encoding.get_ids().to_vec(),
                type_ids: encoding.get_type_ids().to_vec(),
                word_ids: encoding.get_word_ids().to_vec(),
            })
        })
        .collect()
}

/// The sentences `indices` of `encoded` as one packed batch.
pub fn batch_of(encoded: &[EncodedSentence], indices: &[usize]) -> RaggedBatch {
    let mut batch = RaggedBatch::from_encodings([]);
    for &i in indices {
        batch.push(&encoded[i].ids, &encoded[i].type_ids);
    }
    batch
}

/// The rows of `batch` (built by [`batch_of`] from `indices`) that carry a word's tag, with
/// their `(sentence, word)` and gold tag.
pub fn labelled_rows(
    encoded: &[EncodedSentence],
    indices: &[usize],
    batch: &RaggedBatch,
) -> Vec<(u32, (usize, usize), usize)> {
    let mut rows = Vec::new();
    for (slot, &i) in indices.iter().enumerate() {
        let start = batch.seq_range(slot).start;
        for (token, &tag) in encoded[i].tags.iter().enumerate() {
            if tag != IGNORE_INDEX {
                let word = encoded[i].word_ids[token].unwrap_or_default() as usize;
                rows.push(((start + token) as u32, (i, word), tag as usize));
            }
        }
    }
    rows
}

/// Predicted tag names per word of each sentence (`O` for words without a row), from the
/// predicted tag id of each `(sentence, word)`.
pub fn word_tags(
    sentences: &[TaggedSentence],
    words: &[(usize, usize)],
    predicted: &[usize],
    tags: &LabelSet,
) -> Vec<Vec<String>> {
    let mut out = untagged(sentences);
    tag_words(
        &mut out,
        words.iter().copied().zip(predicted.iter().copied()),
        tags.names(),
    );
    out
}

/// `O` for every word of each sentence: what a word keeps when no row predicts it (its
/// first subword cut off by truncation).
pub(crate) fn untagged(sentences: &[TaggedSentence]) -> Vec<Vec<String>> {
    sentences
        .iter()
        .map(|s| vec!["O".to_string(); s.words.len()])
        .collect()
}

/// Writes `names[tag]` at each `(sentence, word)`.
pub(crate) fn tag_words(
    out: &mut [Vec<String>],
    predicted: impl IntoIterator<Item = ((usize, usize), usize)>,
    names: &[String],
) {
    for ((sentence, word), tag) in predicted {
        if let (Some(slot), Some(name)) = (
            out.get_mut(sentence).and_then(|s| s.get_mut(word)),
            names.get(tag),
        ) {
            slot.clone_from(name);
        }
    }
}

/// seqeval's entity-level scores of `predicted` word tags against the sentences' gold tags.
pub fn score(
    sentences: &[TaggedSentence],
    predicted: &[Vec<String>],
    tags: &LabelSet,
) -> NerMetrics {
    let gold: Vec<Vec<String>> = sentences
        .iter()
        .map(|s| s.tags.iter().map(|&t| tags.names()[t].clone()).collect())
        .collect();
    NerMetrics::compute(&gold, predicted)
}

/// Each sentence's predicted tag per word (`O` for words cut off by truncation) by a
/// token-classification `model` (inference path, dropout off), for `girder eval` on
/// CoNLL/BIO files.
pub fn predict_word_tags(model: &Model, sentences: &[TaggedSentence]) -> Result<Vec<Vec<String>>> {
    let encoded = encode_sentences(model, sentences)?;
    predict_encoded(model, sentences, &encoded, &model.config.id2label)
}

/// [`predict_word_tags`] of sentences already encoded ([`encode_sentences`]), tags named
/// by `names`.
pub fn predict_encoded(
    model: &Model,
    sentences: &[TaggedSentence],
    encoded: &[EncodedSentence],
    names: &[String],
) -> Result<Vec<Vec<String>>> {
    let mut out = untagged(sentences);
    let lengths: Vec<usize> = encoded.iter().map(|s| s.ids.len()).collect();
    for indices in model.plan_lengths(&lengths) {
        let batch = batch_of(encoded, &indices);
        let picked = labelled_rows(encoded, &indices, &batch);
        if picked.is_empty() {
            continue;
        }
        let out_rows = model.encoder.encode(&batch)?;
        let rows: Vec<u32> = picked.iter().map(|p| p.0).collect();
        let logits = model.encoder.head_logits(&out_rows, &batch, Some(&rows))?;
        let words = picked.iter().map(|p| p.1).zip(predicted_labels(&logits)?);
        tag_words(&mut out, words, names);
    }
    Ok(out)
}

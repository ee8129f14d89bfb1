//! Head-only token classification (NER): the encoder is frozen, the last hidden state of
//! each word's first subword is computed once, and a `Linear(hidden, num_tags)` classifier
//! is trained on those rows, as `BertForTokenClassification` with a frozen `bert` and
//! transformers' `run_ner.py` labelling (later subwords ignored) would be.

use super::data::{align_tags, LabelSet, TaggedSentence, IGNORE_INDEX};
use super::head::Observer;
use super::seqeval::NerMetrics;
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::pipelines::Model;
use candle_core::Tensor;

/// Per-word features: the rows of the words' first subwords.
#[derive(Debug, Clone)]
pub struct WordFeatures {
    /// `[labelled words, hidden]`
    pub features: Tensor,
    /// The tag id of each row.
    pub labels: Vec<usize>,
    /// `(sentence, word)` of each row.
    pub words: Vec<(usize, usize)>,
}

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

/// Runs the frozen encoder over the sentences and keeps each word's first-subword row.
/// Words cut off by truncation have no row (they are predicted `O`).
pub fn word_features(
    model: &Model,
    sentences: &[TaggedSentence],
    observer: &mut dyn Observer,
) -> Result<WordFeatures> {
    const WINDOW: usize = 256;
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    let mut words = Vec::new();
    let mut done = 0;
    for (w, window) in sentences.chunks(WINDOW).enumerate() {
        let first = w * WINDOW;
        let encoded = encode_sentences(model, window).map_err(|e| match e {
            Error::Tokenize { index, reason } => Error::Tokenize {
                index: first + index,
                reason,
            },
            other => other,
        })?;
        // One sequence at a time would be slow; pack the window under the model's budget.
        let lengths: Vec<usize> = encoded.iter().map(|s| s.ids.len()).collect();
        for indices in crate::batch::plan_batches(&lengths, model.max_batch_tokens) {
            let batch = batch_of(&encoded, &indices);
            let out = model.encoder.encode(&batch)?;
            let picked = labelled_rows(&encoded, &indices, &batch);
            for &(_, (sentence, word), tag) in &picked {
                labels.push(tag);
                words.push((first + sentence, word));
            }
            if !picked.is_empty() {
                let picked: Vec<u32> = picked.iter().map(|p| p.0).collect();
                let picked = Tensor::new(picked, out.last_hidden_state.device())?;
                rows.push(out.last_hidden_state.index_select(&picked, 0)?);
            }
        }
        done += window.len();
        observer.features(done, sentences.len());
    }
    if rows.is_empty() {
        return Err(Error::EmptyInput);
    }
    Ok(WordFeatures {
        features: Tensor::cat(&rows, 0)?,
        labels,
        words,
    })
}

/// Predicted tag names per word of each sentence (`O` for words without a row), from the
/// predicted tag id of each row of `features`.
pub fn word_tags(
    sentences: &[TaggedSentence],
    features: &WordFeatures,
    predicted: &[usize],
    tags: &LabelSet,
) -> Vec<Vec<String>> {
    let mut out = untagged(sentences);
    tag_words(
        &mut out,
        features
            .words
            .iter()
            .copied()
            .zip(predicted.iter().copied()),
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
/// token-classification `model` (inference path), for `girder eval` on CoNLL/BIO files.
pub fn predict_word_tags(model: &Model, sentences: &[TaggedSentence]) -> Result<Vec<Vec<String>>> {
    let mut out = untagged(sentences);
    let encoded = encode_sentences(model, sentences)?;
    let lengths: Vec<usize> = encoded.iter().map(|s| s.ids.len()).collect();
    for indices in crate::batch::plan_batches(&lengths, model.max_batch_tokens) {
        let batch = batch_of(&encoded, &indices);
        let picked = labelled_rows(&encoded, &indices, &batch);
        if picked.is_empty() {
            continue;
        }
        let out_rows = model.encoder.encode(&batch)?;
        let rows: Vec<u32> = picked.iter().map(|p| p.0).collect();
        let logits = model.encoder.head_logits(&out_rows, &batch, Some(&rows))?;
        let best = logits.argmax(1)?.to_vec1::<u32>()?;
        let words = picked
            .iter()
            .map(|p| p.1)
            .zip(best.iter().map(|&t| t as usize));
        tag_words(&mut out, words, &model.config.id2label);
    }
    Ok(out)
}

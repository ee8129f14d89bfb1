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

/// Tokenizes each sentence's words (pre-tokenized input, special tokens added, truncated
/// under the model's policy), runs the frozen encoder and keeps each word's first-subword
/// row. Words cut off by truncation have no row (they are predicted `O`).
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
        let mut batch_sentences = Vec::with_capacity(window.len());
        let mut aligned = Vec::with_capacity(window.len());
        for (i, sentence) in window.iter().enumerate() {
            let pieces: Vec<&str> = sentence.words.iter().map(String::as_str).collect();
            let encoding = model
                .tokenizer
                .inner()
                .encode(pieces.as_slice(), true)
                .map_err(|e| Error::Tokenize {
                    index: first + i,
                    reason: e.to_string(),
                })?;
            aligned.push(align_tags(encoding.get_word_ids(), &sentence.tags)?);
            // Each token's word, to map rows back to words.
            let word_ids: Vec<Option<u32>> = encoding.get_word_ids().to_vec();
            batch_sentences.push((
                encoding.get_ids().to_vec(),
                encoding.get_type_ids().to_vec(),
                word_ids,
            ));
        }
        // One sequence at a time would be slow; pack the window under the model's budget.
        let lengths: Vec<usize> = batch_sentences.iter().map(|s| s.0.len()).collect();
        for indices in crate::batch::plan_batches(&lengths, model.max_batch_tokens) {
            let mut batch = RaggedBatch::from_encodings([]);
            for &i in &indices {
                batch.push(&batch_sentences[i].0, &batch_sentences[i].1);
            }
            let out = model.encoder.encode(&batch)?;
            let mut picked = Vec::new();
            for (slot, &i) in indices.iter().enumerate() {
                let start = batch.seq_range(slot).start;
                for (token, &label) in aligned[i].iter().enumerate() {
                    if label != IGNORE_INDEX {
                        picked.push((start + token) as u32);
                        labels.push(label as usize);
                        let word = batch_sentences[i].2[token].unwrap_or_default() as usize;
                        words.push((first + i, word));
                    }
                }
            }
            if !picked.is_empty() {
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
    let mut out: Vec<Vec<String>> = sentences
        .iter()
        .map(|s| vec!["O".to_string(); s.words.len()])
        .collect();
    for (&(sentence, word), &tag) in features.words.iter().zip(predicted) {
        if let (Some(slot), Some(name)) = (
            out.get_mut(sentence).and_then(|s| s.get_mut(word)),
            tags.names().get(tag),
        ) {
            *slot = name.clone();
        }
    }
    out
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

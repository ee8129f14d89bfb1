//! Head-only training: the encoder is frozen, so what the head reads is computed once by
//! the inference model (each text's first-token row and pooler output; for token
//! classification each word's first-subword row), and only the head is trained on those
//! features, through the model's own head ([`crate::models::EncoderForward::head`]), dropout
//! included. Each step is then the head's products on a batch of rows instead of a pass
//! through the encoder.

use super::data::{LabelSet, TaggedSentence};
use super::fit::{fit, predicted_labels, Evaluation, Observer, TrainedModel};
use super::metrics::ClassificationMetrics;
use super::ner;
use super::trainable::Trainable;
use super::TrainingArguments;
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::models::EncoderOutput;
use crate::pipelines::Model;
use candle_core::Tensor;

/// What the head reads, one row per example, and the examples' gold label ids.
#[derive(Debug, Clone)]
pub struct Features {
    /// `[examples, hidden]`: each text's first-token row, or each word's first-subword row.
    pub rows: Tensor,
    /// `[examples, hidden]`: each text's pooler output (models with a pooler).
    pub pooled: Option<Tensor>,
    /// The gold label id of each row.
    pub labels: Vec<usize>,
    /// Token classification: the `(sentence, word)` of each row.
    pub words: Vec<(usize, usize)>,
}

impl Features {
    /// The head's input for the examples `chunk`: one single-token sequence per example.
    fn batch(&self, chunk: &[usize]) -> Result<(EncoderOutput, RaggedBatch)> {
        let index = Tensor::from_vec(
            chunk.iter().map(|&i| i as u32).collect::<Vec<_>>(),
            chunk.len(),
            self.rows.device(),
        )?;
        let out = EncoderOutput {
            last_hidden_state: self.rows.index_select(&index, 0)?,
            pooler_output: match &self.pooled {
                Some(p) => Some(p.index_select(&index, 0)?),
                None => None,
            },
        };
        let mut batch = RaggedBatch::from_encodings([]);
        for _ in chunk {
            batch.push(&[0], &[]);
        }
        Ok((out, batch))
    }

    /// The head's predicted label ids for every row, dropout off.
    pub fn predict(&self, model: &Model) -> Result<Vec<usize>> {
        let all: Vec<usize> = (0..self.labels.len()).collect();
        let mut predicted = Vec::with_capacity(all.len());
        for chunk in all.chunks(256) {
            let (out, batch) = self.batch(chunk)?;
            let logits = model.encoder.head_logits(&out, &batch, None)?;
            predicted.extend(predicted_labels(&logits)?);
        }
        Ok(predicted)
    }
}

/// Each text's first-token row and pooler output under the frozen encoder, with its label.
pub fn sequence_features<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    labels: &[usize],
    observer: &mut dyn Observer,
) -> Result<Features> {
    if texts.len() != labels.len() {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{} labels for {} texts", labels.len(), texts.len()),
        });
    }
    // Windows bound the memory held at once and give the progress bar something to show.
    const WINDOW: usize = 512;
    let mut rows: Vec<Option<(Tensor, Option<Tensor>)>> = vec![None; texts.len()];
    let mut done = 0;
    for (w, window) in texts.chunks(WINDOW).enumerate() {
        let first = w * WINDOW;
        let encodings = model.tokenizer.encode_window(window, first)?;
        model.forward_batches(
            &encodings,
            &model.plan(&encodings),
            |indices, batch, out| {
                let firsts = Tensor::new(batch.first_token_rows(), out.last_hidden_state.device())?;
                let firsts = out.last_hidden_state.index_select(&firsts, 0)?;
                for (row, &index) in indices.iter().enumerate() {
                    let pooled = match &out.pooler_output {
                        Some(p) => Some(p.get(row)?),
                        None => None,
                    };
                    rows[first + index] = Some((firsts.get(row)?, pooled));
                }
                Ok(())
            },
        )?;
        done += window.len();
        observer.features(done, texts.len());
    }
    let (firsts, pooled): (Vec<Tensor>, Vec<Option<Tensor>>) = rows.into_iter().flatten().unzip();
    if firsts.is_empty() {
        return Err(Error::EmptyInput);
    }
    let pooled: Option<Vec<Tensor>> = pooled.into_iter().collect();
    Ok(Features {
        rows: Tensor::stack(&firsts, 0)?,
        pooled: match pooled {
            Some(p) => Some(Tensor::stack(&p, 0)?),
            None => None,
        },
        labels: labels.to_vec(),
        words: Vec::new(),
    })
}

/// Each word's first-subword row under the frozen encoder, with its tag. Words cut off by
/// truncation have no row (they are predicted `O`).
pub fn token_features(
    model: &Model,
    sentences: &[TaggedSentence],
    observer: &mut dyn Observer,
) -> Result<Features> {
    const WINDOW: usize = 256;
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    let mut words = Vec::new();
    let mut done = 0;
    for (w, window) in sentences.chunks(WINDOW).enumerate() {
        let first = w * WINDOW;
        let encoded = ner::encode_sentences(model, window).map_err(|e| match e {
            Error::Tokenize { index, reason } => Error::Tokenize {
                index: first + index,
                reason,
            },
            other => other,
        })?;
        let lengths: Vec<usize> = encoded.iter().map(|s| s.ids.len()).collect();
        for indices in model.plan_lengths(&lengths) {
            let batch = ner::batch_of(&encoded, &indices);
            let out = model.encoder.encode(&batch)?;
            let picked = ner::labelled_rows(&encoded, &indices, &batch);
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
    Ok(Features {
        rows: Tensor::cat(&rows, 0)?,
        pooled: None,
        labels,
        words,
    })
}

/// Trains `trainable`'s head as a sequence classifier on `train`, evaluating on `eval` after
/// every epoch (accuracy) and keeping the best epoch's weights.
pub fn train_head(
    trainable: &Trainable,
    train: &Features,
    eval: Option<&Features>,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    let model = &trainable.model;
    let num_labels = model.config.id2label.len();
    let evaluate = || -> Result<Evaluation> {
        let Some(set) = eval else {
            return Ok(Evaluation::default());
        };
        let metrics = ClassificationMetrics::compute(&set.labels, &set.predict(model)?, num_labels);
        Ok(Evaluation {
            score: Some(metrics.accuracy),
            classification: Some(metrics),
            entities: None,
        })
    };
    train_on(trainable, train, args, observer, &evaluate)
}

/// Trains `trainable`'s head as a token classifier on `train`, evaluating on `eval` (the
/// features of the evaluation sentences, and the sentences) after every epoch with seqeval
/// and keeping the best epoch's weights (by micro-averaged entity F1, as full and LoRA
/// training do).
pub fn train_token_head(
    trainable: &Trainable,
    train: &Features,
    eval: Option<(&Features, &[TaggedSentence])>,
    tags: &LabelSet,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    let model = &trainable.model;
    let evaluate = || -> Result<Evaluation> {
        let Some((features, sentences)) = eval else {
            return Ok(Evaluation::default());
        };
        let words = ner::word_tags(sentences, &features.words, &features.predict(model)?, tags);
        let metrics = ner::score(sentences, &words, tags);
        Ok(Evaluation {
            score: Some(metrics.micro.f1),
            classification: None,
            entities: Some(metrics),
        })
    };
    train_on(trainable, train, args, observer, &evaluate)
}

/// The loop over cached features: each step runs the model's head on a batch of rows.
fn train_on(
    trainable: &Trainable,
    train: &Features,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
    evaluate: &(dyn Fn() -> Result<Evaluation> + Sync),
) -> Result<TrainedModel> {
    let model = &trainable.model;
    let loss = |chunk: &[usize]| -> Result<Tensor> {
        let (out, batch) = train.batch(chunk)?;
        let logits = model.encoder.head_logits(&out, &batch, None)?;
        let targets: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
        let targets = Tensor::from_vec(targets, chunk.len(), logits.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    };
    fit(
        trainable,
        train.labels.len(),
        args,
        observer,
        &loss,
        evaluate,
    )
}

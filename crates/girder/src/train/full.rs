//! Full fine-tuning and LoRA: the encoder runs in every step, and its trained tensors (every
//! weight, or the LoRA adapters and the head) learn, as transformers' Trainer trains
//! `…ForSequenceClassification` and `…ForTokenClassification`.

use super::data::{LabelSet, TaggedSentence};
use super::fit::{fit, predicted_labels, Evaluation, Observer, TrainedModel};
use super::metrics::ClassificationMetrics;
use super::ner::{self, EncodedSentence};
use super::trainable::Trainable;
use super::TrainingArguments;
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::pipelines::Model;
use crate::tokenize::Encoded;
use candle_core::Tensor;

/// Tokenized texts and their gold label ids.
#[derive(Debug, Clone, Copy)]
pub struct EncodedSet<'a> {
    pub encodings: &'a [Encoded],
    pub labels: &'a [usize],
}

/// Predicted label ids of a sequence classifier, dropout off, in batches of `batch_size`
/// texts.
pub fn predict(model: &Model, encodings: &[Encoded], batch_size: usize) -> Result<Vec<usize>> {
    let mut predicted = Vec::with_capacity(encodings.len());
    for chunk in encodings.chunks(batch_size.max(1)) {
        let batch = RaggedBatch::from_encodings(chunk);
        let out = model.encoder.encode(&batch)?;
        let logits = model.encoder.head_logits(&out, &batch, None)?;
        predicted.extend(predicted_labels(&logits)?);
    }
    Ok(predicted)
}

/// Trains `trainable` as a sequence classifier on `train`, evaluating on `eval` after every
/// epoch and keeping the best epoch's weights (by accuracy).
pub fn train_sequence_classifier(
    trainable: &Trainable,
    train: EncodedSet,
    eval: Option<EncodedSet>,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    let examples = train.encodings.len();
    if examples != train.labels.len() {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{} labels for {examples} examples", train.labels.len()),
        });
    }
    let model = &trainable.model;
    let num_labels = model.config.id2label.len();
    let loss = |chunk: &[usize]| -> Result<Tensor> {
        let batch = RaggedBatch::from_encodings(chunk.iter().map(|&i| &train.encodings[i]));
        let targets: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
        let out = model.encoder.encode(&batch)?;
        let logits = model.encoder.head_logits(&out, &batch, None)?;
        let targets = Tensor::from_vec(targets, chunk.len(), logits.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    };
    let evaluate = || -> Result<Evaluation> {
        let Some(set) = eval else {
            return Ok(Evaluation::default());
        };
        let metrics = ClassificationMetrics::compute(
            set.labels,
            &predict(model, set.encodings, 32)?,
            num_labels,
        );
        Ok(Evaluation {
            score: Some(metrics.accuracy),
            classification: Some(metrics),
            entities: None,
        })
    };
    fit(trainable, examples, args, observer, &loss, &evaluate)
}

/// Trains `trainable` as a token classifier (the loss on each word's first subword, as
/// transformers' `run_ner.py` labels them) on `train`, evaluating with seqeval on `eval`
/// (the sentences and their encodings) after every epoch and keeping the best epoch's
/// weights (by micro-averaged entity F1).
pub fn train_token_classifier(
    trainable: &Trainable,
    train: &[EncodedSentence],
    eval: Option<(&[TaggedSentence], &[EncodedSentence])>,
    tags: &LabelSet,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    let model = &trainable.model;
    let loss = |chunk: &[usize]| -> Result<Tensor> {
        let batch = ner::batch_of(train, chunk);
        let rows = ner::labelled_rows(train, chunk, &batch);
        let out = model.encoder.encode(&batch)?;
        let logits = model.encoder.head_logits(&out, &batch, None)?;
        let device = logits.device().clone();
        Ok(if rows.is_empty() {
            (logits.sum_all()? * 0.0)?
        } else {
            let picked = Tensor::new(rows.iter().map(|r| r.0).collect::<Vec<u32>>(), &device)?;
            let targets = Tensor::new(
                rows.iter().map(|r| r.2 as u32).collect::<Vec<u32>>(),
                &device,
            )?;
            candle_nn::loss::cross_entropy(&logits.index_select(&picked, 0)?, &targets)?
        })
    };
    let evaluate = || -> Result<Evaluation> {
        let Some((sentences, encoded)) = eval else {
            return Ok(Evaluation::default());
        };
        let predicted = ner::predict_encoded(model, sentences, encoded, tags.names())?;
        let metrics = ner::score(sentences, &predicted, tags);
        Ok(Evaluation {
            score: Some(metrics.micro.f1),
            classification: None,
            entities: Some(metrics),
        })
    };
    fit(trainable, train.len(), args, observer, &loss, &evaluate)
}

//! Full fine-tuning and LoRA: every weight of the encoder, the pooler and the classifier (or
//! the LoRA adapters and the classifier) is trained through the differentiable
//! [`TrainableBert`], as transformers' Trainer does for `BertForSequenceClassification` and
//! `BertForTokenClassification`.

use super::bert::{LookedUp, TrainableBert};
use super::data::{LabelSet, TaggedSentence};
use super::head::{EpochReport, Observer, StepReport};
use super::metrics::ClassificationMetrics;
use super::ner::{self, EncodedSentence};
use super::optim::{AdamW, AdamWSettings, SparseRows};
use super::seqeval::NerMetrics;
use super::{linear_schedule, Rng, TrainingArguments};
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::layers::in_thread_pool;
use crate::tokenize::Encoded;
use candle_core::{Device, Tensor};
use std::time::Instant;

/// Tokenized texts and their gold label ids.
#[derive(Debug, Clone, Copy)]
pub struct EncodedSet<'a> {
    pub encodings: &'a [Encoded],
    pub labels: &'a [usize],
}

/// The trained weights under checkpoint names, and the history.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// `BertForSequenceClassification` names (`bert.…`, `classifier.…`).
    pub tensors: Vec<(String, Tensor)>,
    /// With LoRA: the kept epoch's adapters and classifier, unmerged
    /// ([`TrainableBert::adapter_tensors`]).
    pub adapters: Option<Vec<(String, Tensor)>>,
    pub epochs: Vec<EpochReport>,
    /// The epoch (from 1) whose weights were kept: the best evaluation accuracy (the
    /// earliest on ties), or the last epoch without evaluation data.
    pub best_epoch: usize,
}

/// Predicted label ids, dropout off, in batches of `batch_size` texts.
pub fn predict(
    model: &TrainableBert,
    encodings: &[Encoded],
    batch_size: usize,
) -> Result<Vec<usize>> {
    let mut predicted = Vec::with_capacity(encodings.len());
    for chunk in encodings.chunks(batch_size.max(1)) {
        let batch = RaggedBatch::from_encodings(chunk);
        let logits = model.logits(&batch, &mut None)?;
        predicted.extend(
            logits
                .argmax(1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|i| i as usize),
        );
    }
    Ok(predicted)
}

/// The kept epoch: its number, its score, its weights and (LoRA) its adapters.
type Snapshot = (
    usize,
    f64,
    Vec<(String, Tensor)>,
    Option<Vec<(String, Tensor)>>,
);

/// Whether AdamW decays a parameter: weights yes, biases and LayerNorm no (the Trainer's
/// `get_decay_parameter_names`).
fn decays(name: &str) -> bool {
    !name.ends_with(".bias") && !name.contains("LayerNorm")
}

/// Trains every weight of `model` (or its LoRA adapters and classifier) as a sequence
/// classifier on `train` under a linear schedule, evaluating on `eval` after every epoch and
/// keeping the best epoch's weights (by accuracy).
pub fn train_full(
    model: &mut TrainableBert,
    train: EncodedSet,
    eval: Option<EncodedSet>,
    num_labels: usize,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    let examples = train.encodings.len();
    if examples != train.labels.len() || examples == 0 {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{} labels for {examples} examples", train.labels.len()),
        });
    }
    let loss = |model: &TrainableBert, chunk: &[usize], rng: &mut Rng| {
        let batch = RaggedBatch::from_encodings(chunk.iter().map(|&i| &train.encodings[i]));
        let targets: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
        let targets = Tensor::from_vec(targets, chunk.len(), &Device::Cpu)?;
        let (logits, looked_up) = model.training_logits(&batch, &mut Some(rng), true)?;
        Ok((
            candle_nn::loss::cross_entropy(&logits, &targets)?,
            looked_up,
        ))
    };
    let evaluate = |model: &TrainableBert| -> Result<Evaluation> {
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
    fit(model, examples, args, observer, &loss, &evaluate)
}

/// Trains `model` as a token classifier (`BertForTokenClassification`: the classifier on
/// every token, the loss on each word's first subword) on `train`, evaluating with seqeval on
/// `eval` (the sentences and their encodings) after every epoch and keeping the best epoch's
/// weights (by micro-averaged entity F1).
pub fn train_token_classifier(
    model: &mut TrainableBert,
    train: &[EncodedSentence],
    eval: Option<(&[TaggedSentence], &[EncodedSentence])>,
    tags: &LabelSet,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    if train.is_empty() {
        return Err(Error::EmptyInput);
    }
    let loss = |model: &TrainableBert, chunk: &[usize], rng: &mut Rng| {
        let batch = ner::batch_of(train, chunk);
        let rows = ner::labelled_rows(train, chunk, &batch);
        let (logits, looked_up) = model.token_logits(&batch, &mut Some(rng), true)?;
        let device = logits.device().clone();
        let loss = if rows.is_empty() {
            (logits.sum_all()? * 0.0)?
        } else {
            let picked = Tensor::new(rows.iter().map(|r| r.0).collect::<Vec<u32>>(), &device)?;
            let targets = Tensor::new(
                rows.iter().map(|r| r.2 as u32).collect::<Vec<u32>>(),
                &device,
            )?;
            candle_nn::loss::cross_entropy(&logits.index_select(&picked, 0)?, &targets)?
        };
        Ok((loss, looked_up))
    };
    let evaluate = |model: &TrainableBert| -> Result<Evaluation> {
        let Some((sentences, encoded)) = eval else {
            return Ok(Evaluation::default());
        };
        let predicted = predict_word_tags(model, sentences, encoded, tags, 32)?;
        let metrics = ner::score(sentences, &predicted, tags);
        Ok(Evaluation {
            score: Some(metrics.micro.f1),
            classification: None,
            entities: Some(metrics),
        })
    };
    fit(model, train.len(), args, observer, &loss, &evaluate)
}

/// Each sentence's predicted tag per word (`O` for words cut off by truncation), dropout off.
pub fn predict_word_tags(
    model: &TrainableBert,
    sentences: &[TaggedSentence],
    encoded: &[EncodedSentence],
    tags: &LabelSet,
    batch_size: usize,
) -> Result<Vec<Vec<String>>> {
    let mut out = ner::untagged(sentences);
    let indices: Vec<usize> = (0..encoded.len()).collect();
    for chunk in indices.chunks(batch_size.max(1)) {
        let batch = ner::batch_of(encoded, chunk);
        let rows = ner::labelled_rows(encoded, chunk, &batch);
        if rows.is_empty() {
            continue;
        }
        let (logits, _) = model.token_logits(&batch, &mut None, false)?;
        let picked = Tensor::new(
            rows.iter().map(|r| r.0).collect::<Vec<u32>>(),
            logits.device(),
        )?;
        let best = logits
            .index_select(&picked, 0)?
            .argmax(1)?
            .to_vec1::<u32>()?;
        let words = rows
            .iter()
            .map(|r| r.1)
            .zip(best.iter().map(|&t| t as usize));
        ner::tag_words(&mut out, words, tags.names());
    }
    Ok(out)
}

/// An evaluation after an epoch: the score that picks the kept epoch and the metrics.
#[derive(Debug, Clone, Default)]
struct Evaluation {
    score: Option<f64>,
    classification: Option<ClassificationMetrics>,
    entities: Option<NerMetrics>,
}

/// A step's loss on the examples `chunk`, with the word-embedding rows it looked up.
type StepLoss<'a> =
    dyn Fn(&TrainableBert, &[usize], &mut Rng) -> Result<(Tensor, Option<LookedUp>)> + Sync + 'a;

/// The training loop both heads share: shuffled batches, AdamW (weights decayed, biases and
/// LayerNorm not) under transformers' linear schedule, an evaluation after each epoch, and
/// the best epoch's weights kept.
fn fit(
    model: &mut TrainableBert,
    examples: usize,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
    loss_of: &StepLoss,
    evaluate: &(dyn Fn(&TrainableBert) -> Result<Evaluation> + Sync),
) -> Result<TrainedModel> {
    args.validate()?;
    model.dropout = args.classifier_dropout;
    let params = model
        .vars()
        .iter()
        .map(|(name, var)| {
            let decay = if decays(name) { args.weight_decay } else { 0.0 };
            (name.clone(), var.clone(), decay)
        })
        .collect();
    let mut optimizer = AdamW::new(
        params,
        AdamWSettings {
            learning_rate: args.learning_rate,
            beta1: args.adam_beta1,
            beta2: args.adam_beta2,
            eps: args.adam_epsilon,
        },
    )?;
    let batch_size = args.per_device_train_batch_size;
    let steps_per_epoch = examples.div_ceil(batch_size);
    let total_steps = steps_per_epoch * args.num_train_epochs;
    let warmup = (total_steps as f64 * args.warmup_ratio).ceil() as usize;
    // The model's own seed stream drives shuffling and dropout.
    let mut rng = Rng::new(args.seed ^ 0x5eed_f011);
    let mut order: Vec<usize> = (0..examples).collect();
    let mut step = 0;
    let mut epochs = Vec::with_capacity(args.num_train_epochs);
    let mut best: Option<Snapshot> = None;
    for epoch in 1..=args.num_train_epochs {
        let started = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(batch_size) {
            let learning_rate = args.learning_rate * linear_schedule(step, warmup, total_steps);
            optimizer.set_learning_rate(learning_rate);
            let model = &*model;
            let rng = &mut rng;
            let optimizer = &mut optimizer;
            // On rayon's pool: candle's matrix products run there, and from this thread each
            // would be handed over and waited for.
            let loss = in_thread_pool(move || -> Result<f32> {
                let (loss, looked_up) = loss_of(model, chunk, rng)?;
                let grads = loss.backward()?;
                match (&looked_up, model.word_embeddings()) {
                    (Some(rows), Some(table)) => {
                        let row_grads = grads.get(rows.rows.as_tensor()).ok_or_else(|| {
                            Error::InvalidOption {
                                option: "optimizer".into(),
                                reason: "no gradient reached the word embeddings".into(),
                            }
                        })?;
                        let sparse = [SparseRows {
                            table,
                            ids: &rows.ids,
                            grads: row_grads,
                        }];
                        optimizer.step(&grads, &sparse)?;
                    }
                    _ => optimizer.step(&grads, &[])?,
                }
                Ok(loss.to_scalar::<f32>()?)
            })?;
            step += 1;
            loss_sum += loss as f64;
            observer.step(&StepReport {
                epoch,
                step,
                total_steps,
                loss,
                learning_rate,
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        let evaluation = in_thread_pool(|| evaluate(model))?;
        let score = evaluation.score.unwrap_or(epoch as f64);
        if best.as_ref().is_none_or(|(_, s, _, _)| score > *s) {
            // Copies: the variables' storage keeps changing in the later epochs.
            let snapshot = model
                .checkpoint_tensors()?
                .into_iter()
                .map(|(n, t)| Ok((n, t.copy()?)))
                .collect::<Result<_>>()?;
            let adapters = match model.lora() {
                Some(_) => Some(
                    model
                        .adapter_tensors()
                        .into_iter()
                        .map(|(n, t)| Ok((n, t.copy()?)))
                        .collect::<Result<_>>()?,
                ),
                None => None,
            };
            best = Some((epoch, score, snapshot, adapters));
        }
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / steps_per_epoch as f64,
            examples_per_s: examples as f64 / seconds.max(1e-9),
            eval: evaluation.classification,
            entities: evaluation.entities,
        };
        observer.epoch(&report);
        epochs.push(report);
    }
    let (best_epoch, _, tensors, adapters) = best.ok_or(Error::EmptyInput)?;
    Ok(TrainedModel {
        tensors,
        adapters,
        epochs,
        best_epoch,
    })
}

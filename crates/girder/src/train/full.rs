//! Full fine-tuning: every weight of the encoder, the pooler and the classifier is trained
//! through the differentiable [`TrainableBert`], as transformers' Trainer does for
//! `BertForSequenceClassification`.

use super::bert::TrainableBert;
use super::head::{EpochReport, Observer, StepReport};
use super::metrics::ClassificationMetrics;
use super::optim::{AdamW, AdamWSettings, SparseRows};
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

/// Trains every weight of `model` on `train` under a linear schedule, evaluating on
/// `eval` after every epoch and keeping the best epoch's weights.
pub fn train_full(
    model: &mut TrainableBert,
    train: EncodedSet,
    eval: Option<EncodedSet>,
    num_labels: usize,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    args.validate()?;
    let examples = train.encodings.len();
    if examples != train.labels.len() || examples == 0 {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{} labels for {examples} examples", train.labels.len()),
        });
    }
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
            let batch = RaggedBatch::from_encodings(chunk.iter().map(|&i| &train.encodings[i]));
            let targets: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
            let targets = Tensor::from_vec(targets, chunk.len(), &Device::Cpu)?;
            let learning_rate = args.learning_rate * linear_schedule(step, warmup, total_steps);
            optimizer.set_learning_rate(learning_rate);
            let model = &*model;
            let rng = &mut rng;
            let optimizer = &mut optimizer;
            let loss = in_thread_pool(move || -> Result<Tensor> {
                let (logits, looked_up) = model.training_logits(&batch, &mut Some(rng), true)?;
                let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
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
                Ok(loss)
            })?;
            step += 1;
            let loss = loss.to_scalar::<f32>()?;
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
        let eval_metrics = match eval {
            Some(set) => Some(ClassificationMetrics::compute(
                set.labels,
                &predict(model, set.encodings, 32)?,
                num_labels,
            )),
            None => None,
        };
        let score = eval_metrics.as_ref().map_or(epoch as f64, |m| m.accuracy);
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
            eval: eval_metrics,
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

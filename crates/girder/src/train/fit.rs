//! The training loop every method shares, as transformers' `Trainer`: shuffled batches,
//! AdamW (weights decayed, biases and LayerNorm not) under the linear schedule, dropout on in
//! each step's forward pass, an evaluation after each epoch, the best epoch's weights kept.

use super::metrics::ClassificationMetrics;
use super::optim::{AdamW, AdamWSettings, SparseRows};
use super::seqeval::NerMetrics;
use super::trainable::Trainable;
use super::{linear_schedule, Rng, TrainingArguments};
use crate::error::{Error, Result};
use crate::layers::in_thread_pool;
use crate::layers::training::{training_pass, LookedUp};
use candle_core::{Tensor, Var};
use std::time::Instant;

/// Receives progress while features are computed and the model is trained.
pub trait Observer {
    /// `done` of `total` texts encoded.
    fn features(&mut self, _done: usize, _total: usize) {}
    /// After each optimizer step.
    fn step(&mut self, _report: &StepReport) {}
    /// After each epoch, with the evaluation when there is evaluation data.
    fn epoch(&mut self, _report: &EpochReport) {}
}

/// An observer that ignores everything.
pub struct Quiet;
impl Observer for Quiet {}

/// One optimizer step.
#[derive(Debug, Clone)]
pub struct StepReport {
    /// From 1.
    pub epoch: usize,
    /// From 1, over all epochs.
    pub step: usize,
    pub total_steps: usize,
    pub loss: f32,
    pub learning_rate: f64,
}

/// One finished epoch.
#[derive(Debug, Clone)]
pub struct EpochReport {
    /// From 1.
    pub epoch: usize,
    /// Mean training loss over the epoch's steps.
    pub train_loss: f64,
    /// Training examples per second in this epoch (the steps only).
    pub examples_per_s: f64,
    pub eval: Option<ClassificationMetrics>,
    /// Entity-level scores (token classification).
    pub entities: Option<NerMetrics>,
}

/// An evaluation after an epoch: the score that picks the kept epoch and the metrics.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    pub score: Option<f64>,
    pub classification: Option<ClassificationMetrics>,
    pub entities: Option<NerMetrics>,
}

/// The kept epoch's weights and the history.
#[derive(Debug, Clone)]
pub struct TrainedModel {
    /// Every tensor of the trained class under its checkpoint names (LoRA merged).
    pub tensors: Vec<(String, Tensor)>,
    /// With LoRA: the kept epoch's adapters and head, unmerged ([`Trainable::adapter`]).
    pub adapters: Option<Vec<(String, Tensor)>>,
    pub epochs: Vec<EpochReport>,
    /// The epoch (from 1) whose weights were kept: the best evaluation score (the earliest
    /// on ties), or the last epoch without evaluation data.
    pub best_epoch: usize,
}

/// Each row's predicted label id: the argmax of `logits`, `[rows, labels]`.
pub(crate) fn predicted_labels(logits: &Tensor) -> Result<Vec<usize>> {
    Ok(logits
        .argmax(1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|i| i as usize)
        .collect())
}

/// Whether AdamW decays a parameter: weights yes, biases and LayerNorm no (the Trainer's
/// `get_decay_parameter_names`).
fn decays(name: &str) -> bool {
    !name.ends_with(".bias")
        && !name.contains("LayerNorm")
        && !name.contains("layer_norm")
        && !name.ends_with(".beta")
        && !name.ends_with(".gamma")
}

/// A step's loss on the examples `chunk`, computed inside a training pass.
pub type StepLoss<'a> = dyn Fn(&[usize]) -> Result<Tensor> + Sync + 'a;

/// Trains `trainable` for `args.num_train_epochs` epochs over `examples` examples: each
/// step's loss comes from `loss_of` (run in a training pass: dropout on, embedding rows
/// recorded), each epoch ends with `evaluate` (dropout off). The model is left with the kept
/// epoch's weights.
pub fn fit(
    trainable: &Trainable,
    examples: usize,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
    loss_of: &StepLoss,
    evaluate: &(dyn Fn() -> Result<Evaluation> + Sync),
) -> Result<TrainedModel> {
    args.validate()?;
    if examples == 0 {
        return Err(Error::EmptyInput);
    }
    let trained = trainable.parameters().trained();
    let params = trained
        .clone()
        .into_iter()
        .map(|(name, var)| {
            let decay = if decays(&name) {
                args.weight_decay
            } else {
                0.0
            };
            (name, var, decay)
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
    // One seeded stream drives shuffling and dropout.
    let mut rng = Rng::new(args.seed ^ 0x5eed_f011);
    let mut order: Vec<usize> = (0..examples).collect();
    let mut step = 0;
    let mut epochs = Vec::with_capacity(args.num_train_epochs);
    let mut best: Option<(usize, f64, TrainedModel, Vec<Tensor>)> = None;
    for epoch in 1..=args.num_train_epochs {
        let started = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(batch_size) {
            let learning_rate = args.learning_rate * linear_schedule(step, warmup, total_steps);
            optimizer.set_learning_rate(learning_rate);
            let rng = &mut rng;
            let optimizer = &mut optimizer;
            // On rayon's pool: candle's matrix products run there, and from this thread each
            // would be handed over and waited for. The training pass lives on that thread.
            let loss = in_thread_pool(move || -> Result<f32> {
                let (loss, lookups) = training_pass(rng, || loss_of(chunk));
                let loss = loss?;
                let grads = loss.backward()?;
                let merged = merge_lookups(&lookups, &grads)?;
                let sparse: Vec<SparseRows> = merged
                    .iter()
                    .map(|(table, ids, grads)| SparseRows { table, ids, grads })
                    .collect();
                optimizer.step(&grads, &sparse)?;
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
        let evaluation = in_thread_pool(evaluate)?;
        let score = evaluation.score.unwrap_or(epoch as f64);
        if best.as_ref().is_none_or(|(_, s, _, _)| score > *s) {
            // Copies: the variables' storage keeps changing in the later epochs.
            let kept = TrainedModel {
                tensors: trainable.checkpoint()?,
                adapters: trainable.adapter()?,
                epochs: Vec::new(),
                best_epoch: epoch,
            };
            let values = trained
                .iter()
                .map(|(_, var)| Ok(var.as_tensor().copy()?))
                .collect::<Result<Vec<_>>>()?;
            best = Some((epoch, score, kept, values));
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
    let (_, _, mut kept, values) = best.ok_or(Error::EmptyInput)?;
    // The model in memory becomes the kept epoch's, as the Trainer's
    // `load_best_model_at_end`.
    for ((_, var), value) in trained.iter().zip(&values) {
        var.set(value)?;
    }
    kept.epochs = epochs;
    Ok(kept)
}

/// The rows each table looked up in a pass, with their gradients, one entry per table (a
/// table looked up twice has its ids and gradient rows concatenated).
fn merge_lookups(
    lookups: &[LookedUp],
    grads: &candle_core::backprop::GradStore,
) -> Result<Vec<(Var, Vec<u32>, Tensor)>> {
    let mut merged: Vec<(Var, Vec<u32>, Vec<Tensor>)> = Vec::new();
    for l in lookups {
        let Some(g) = grads.get(l.rows.as_tensor()) else {
            continue;
        };
        match merged
            .iter_mut()
            .find(|(t, _, _)| t.as_tensor().id() == l.table.as_tensor().id())
        {
            Some((_, ids, rows)) => {
                ids.extend_from_slice(&l.ids);
                rows.push(g.clone());
            }
            None => merged.push((l.table.clone(), l.ids.clone(), vec![g.clone()])),
        }
    }
    merged
        .into_iter()
        .map(|(table, ids, rows)| {
            let rows = match rows.len() {
                1 => rows.into_iter().next().expect("one gradient"),
                _ => Tensor::cat(&rows, 0)?,
            };
            Ok((table, ids, rows))
        })
        .collect()
}

//! Head-only training: the encoder is frozen, so each text's pooled output (`BertPooler`,
//! what `BertForSequenceClassification` classifies) is computed once by the inference
//! model, and only the classifier `Linear(hidden, num_labels)` is trained on those
//! features. Each step is then a `[batch, hidden] x [hidden, labels]` product instead of
//! a pass through the encoder.

use super::metrics::ClassificationMetrics;
use super::{linear_schedule, Rng, TrainingArguments};
use crate::error::{Error, Result};
use crate::pipelines::Model;
use candle_core::{DType, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use std::time::Instant;

/// Receives progress while features are computed and the head is trained.
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
    /// Training examples per second in this epoch (head steps only).
    pub examples_per_s: f64,
    pub eval: Option<ClassificationMetrics>,
    /// Entity-level scores (token classification trained through the encoder).
    pub entities: Option<super::seqeval::NerMetrics>,
}

/// Pooled features of `texts`: `[texts, hidden]`, row `i` for text `i`. The model must have
/// a pooler (`pooler.dense` in the checkpoint).
pub fn pooled_features<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    observer: &mut dyn Observer,
) -> Result<Tensor> {
    // Windows bound the memory held at once and give the progress bar something to show.
    const WINDOW: usize = 512;
    let mut rows: Vec<Option<Tensor>> = vec![None; texts.len()];
    let mut done = 0;
    for (w, window) in texts.chunks(WINDOW).enumerate() {
        let first = w * WINDOW;
        let encodings = model.tokenizer.encode_window(window, first)?;
        model.forward_batches(&encodings, &model.plan(&encodings), |indices, _batch, out| {
            let pooled = out.pooler_output.as_ref().ok_or_else(|| Error::TaskMismatch {
                model: model.encoder.class_name().to_string(),
                task: "head-only training".into(),
                reason: "the checkpoint has no pooler (pooler.dense), whose output BertForSequenceClassification classifies".into(),
            })?;
            for (row, &index) in indices.iter().enumerate() {
                rows[first + index] = Some(pooled.get(row)?);
            }
            Ok(())
        })?;
        done += window.len();
        observer.features(done, texts.len());
    }
    let rows: Vec<Tensor> = rows.into_iter().flatten().collect();
    if rows.is_empty() {
        return Err(Error::EmptyInput);
    }
    Ok(Tensor::stack(&rows, 0)?)
}

/// Features and their gold label ids.
#[derive(Debug, Clone, Copy)]
pub struct FeatureSet<'a> {
    /// `[examples, hidden]`
    pub features: &'a Tensor,
    pub labels: &'a [usize],
}

/// The trained classifier and the training history.
#[derive(Debug, Clone)]
pub struct TrainedHead {
    /// `[num_labels, hidden]`, the checkpoint's `classifier.weight` layout.
    pub weight: Tensor,
    /// `[num_labels]`
    pub bias: Tensor,
    pub epochs: Vec<EpochReport>,
    /// The epoch (from 1) whose weights were kept: the best evaluation accuracy (the
    /// earliest on ties), or the last epoch without evaluation data.
    pub best_epoch: usize,
}

/// Predicted label ids for `features` `[n, hidden]`.
pub fn predict(features: &Tensor, weight: &Tensor, bias: &Tensor) -> Result<Vec<usize>> {
    let logits = features.matmul(&weight.t()?)?.broadcast_add(bias)?;
    Ok(logits
        .argmax(1)?
        .to_vec1::<u32>()?
        .into_iter()
        .map(|i| i as usize)
        .collect())
}

/// Trains `Linear(hidden, num_labels)` on `train` with AdamW under a linear schedule,
/// evaluating on `eval` after every epoch and keeping the best epoch's weights.
pub fn train_head(
    train: FeatureSet,
    eval: Option<FeatureSet>,
    num_labels: usize,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedHead> {
    args.validate()?;
    let (examples, hidden) = train.features.dims2()?;
    if examples != train.labels.len() {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{} labels for {examples} examples", train.labels.len()),
        });
    }
    let device = train.features.device();
    let mut rng = Rng::new(args.seed);
    // transformers' _init_weights: normal(0, initializer_range = 0.02), bias 0.
    let init: Vec<f32> = (0..num_labels * hidden)
        .map(|_| (rng.normal() * 0.02) as f32)
        .collect();
    let weight = Var::from_tensor(&Tensor::from_vec(init, (num_labels, hidden), device)?)?;
    let bias = Var::zeros(num_labels, DType::F32, device)?;
    let params = |weight_decay| ParamsAdamW {
        lr: args.learning_rate,
        beta1: args.adam_beta1,
        beta2: args.adam_beta2,
        eps: args.adam_epsilon,
        weight_decay,
    };
    let mut weight_opt = AdamW::new(vec![weight.clone()], params(args.weight_decay))?;
    let mut bias_opt = AdamW::new(vec![bias.clone()], params(0.0))?;

    let batch_size = args.per_device_train_batch_size;
    let steps_per_epoch = examples.div_ceil(batch_size);
    let total_steps = steps_per_epoch * args.num_train_epochs;
    let warmup = (total_steps as f64 * args.warmup_ratio).ceil() as usize;
    let keep = 1.0 - args.classifier_dropout;

    let mut order: Vec<usize> = (0..examples).collect();
    let mut step = 0;
    let mut epochs = Vec::with_capacity(args.num_train_epochs);
    let mut best: Option<(usize, f64, Tensor, Tensor)> = None;
    for epoch in 1..=args.num_train_epochs {
        let started = Instant::now();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        for chunk in order.chunks(batch_size) {
            let rows: Vec<u32> = chunk.iter().map(|&i| i as u32).collect();
            let rows = Tensor::from_vec(rows, chunk.len(), device)?;
            let mut x = train.features.index_select(&rows, 0)?;
            if args.classifier_dropout > 0.0 {
                let mask: Vec<f32> = (0..chunk.len() * hidden)
                    .map(|_| {
                        if rng.uniform() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect();
                x = (x * Tensor::from_vec(mask, (chunk.len(), hidden), device)?)?;
            }
            let targets: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
            let targets = Tensor::from_vec(targets, chunk.len(), device)?;
            let logits = x.matmul(&weight.as_tensor().t()?)?.broadcast_add(&bias)?;
            let loss = candle_nn::loss::cross_entropy(&logits, &targets)?;
            let learning_rate = args.learning_rate * linear_schedule(step, warmup, total_steps);
            weight_opt.set_learning_rate(learning_rate);
            bias_opt.set_learning_rate(learning_rate);
            let grads = loss.backward()?;
            weight_opt.step(&grads)?;
            bias_opt.step(&grads)?;
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
                &predict(set.features, weight.as_tensor(), bias.as_tensor())?,
                num_labels,
            )),
            None => None,
        };
        let score = eval_metrics.as_ref().map_or(epoch as f64, |m| m.accuracy);
        if best.as_ref().is_none_or(|(_, s, _, _)| score > *s) {
            best = Some((
                epoch,
                score,
                weight.as_tensor().copy()?,
                bias.as_tensor().copy()?,
            ));
        }
        let report = EpochReport {
            epoch,
            train_loss: loss_sum / steps_per_epoch as f64,
            examples_per_s: examples as f64 / seconds.max(1e-9),
            eval: eval_metrics,
            entities: None,
        };
        observer.epoch(&report);
        epochs.push(report);
    }
    let (best_epoch, _, weight, bias) = best.ok_or(Error::EmptyInput)?;
    Ok(TrainedHead {
        weight,
        bias,
        epochs,
        best_epoch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Two Gaussian blobs in 8 dimensions, separable along the first axis.
    fn blobs(n: usize, seed: u64) -> (Tensor, Vec<usize>) {
        let mut rng = Rng::new(seed);
        let mut values = Vec::new();
        let mut labels = Vec::new();
        for i in 0..n {
            let label = i % 2;
            for d in 0..8 {
                let centre = if d == 0 {
                    2.0 * label as f64 - 1.0
                } else {
                    0.0
                };
                values.push((centre + 0.3 * rng.normal()) as f32);
            }
            labels.push(label);
        }
        (
            Tensor::from_vec(values, (n, 8), &Device::Cpu).unwrap(),
            labels,
        )
    }

    #[test]
    fn learns_a_separable_problem_and_keeps_the_best_epoch() {
        let (x, y) = blobs(200, 1);
        let (dev_x, dev_y) = blobs(60, 2);
        let args = TrainingArguments {
            num_train_epochs: 3,
            learning_rate: 1e-2,
            warmup_ratio: 0.1,
            ..Default::default()
        };
        let train = FeatureSet {
            features: &x,
            labels: &y,
        };
        let dev = FeatureSet {
            features: &dev_x,
            labels: &dev_y,
        };
        let trained = train_head(train, Some(dev), 2, &args, &mut Quiet).unwrap();
        assert_eq!(trained.epochs.len(), 3);
        let last = trained.epochs.last().unwrap();
        assert!(last.eval.as_ref().unwrap().accuracy > 0.95, "{last:?}");
        assert!(trained.epochs[0].train_loss > last.train_loss);
        let kept = trained.epochs[trained.best_epoch - 1]
            .eval
            .as_ref()
            .unwrap();
        assert_eq!(
            ClassificationMetrics::compute(
                &dev_y,
                &predict(&dev_x, &trained.weight, &trained.bias).unwrap(),
                2
            )
            .accuracy,
            kept.accuracy
        );
        // The same seed trains the same weights.
        let again = train_head(train, Some(dev), 2, &args, &mut Quiet).unwrap();
        assert_eq!(
            again.weight.to_vec2::<f32>().unwrap(),
            trained.weight.to_vec2::<f32>().unwrap()
        );
    }
}

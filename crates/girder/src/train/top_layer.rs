//! Top-layer training of a sequence classifier: the classifier keeps the base's first
//! `num_hidden_layers` layers and drops the layers above. The layers below the last kept one
//! are frozen, so what enters the last kept layer is computed once by the inference model
//! (loaded with one layer fewer); then the last kept layer, the pooler and the head are
//! trained on those states through the model's own code
//! ([`crate::models::EncoderForward::encode_last_layer`], dropout included).
//!
//! A classifier reads only each text's first-token row of the last layer, and that row
//! attends over the whole text: each step computes the layer's keys and values for every
//! token but its output projection, feed-forward block and norms for the first token only,
//! a small part of a pass through one layer. The result is a plain
//! `…ForSequenceClassification` folder with `num_hidden_layers` set to the layers kept.
//!
//! By default every layer is kept and the last one trained. Keeping fewer is an option
//! (`--num-hidden-layers`): a sentence-transformers encoder such as all-MiniLM-L6-v2 is
//! trained to make its mean-pooled last layer a similarity embedding, and its middle layers
//! carry as much of the sentiment as its last (a linear classifier on each layer's
//! mean-pooled states: 0.755 on the movie test split from the last layer, 0.769 from the
//! fourth), so a shallower classifier costs little accuracy and runs faster.

use super::fit::{fit, predicted_labels, Evaluation, Observer, TrainedModel};
use super::metrics::ClassificationMetrics;
use super::trainable::Trainable;
use super::TrainingArguments;
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::ModelRef;
use crate::pipelines::Model;
use crate::pretrained::LoadOptions;
use candle_core::Tensor;

/// The layers a top-layer classifier keeps of a base with `layers` layers by default: all
/// of them. On the VADER sentiment split (all-MiniLM-L6-v2, 3 epochs, batch 16) keeping
/// 6, 5 or 4 layers scored 0.811, 0.815 and 0.812 on the movie test split: within the
/// split's noise, so the classifier keeps the base's depth.
pub fn default_num_hidden_layers(layers: usize) -> usize {
    layers.max(1)
}

/// The base's number of layers, from its config.json.
pub fn base_num_hidden_layers(base: &str) -> Result<usize> {
    let folder = ModelRef::parse(base).resolve()?;
    let config = CommonConfig::from_file(
        &folder.require("config.json", "a model folder needs config.json")?,
    )?;
    config.num_hidden_layers().ok_or_else(|| Error::BadConfig {
        file: config.path.clone(),
        field: "num_hidden_layers".into(),
        reason: "absent: the number of layers is needed to keep some of them".into(),
    })
}

/// The frozen part of a top-layer classifier keeping `num_hidden_layers` layers of `base`:
/// the base with the layers below the last kept one, whose `last_hidden_state` is what
/// enters it. `options` as for the trained model (input limit, batch budget).
pub fn load_frozen(base: &str, num_hidden_layers: usize, options: &LoadOptions) -> Result<Model> {
    if num_hidden_layers == 0 {
        return Err(Error::InvalidOption {
            option: "num_hidden_layers".into(),
            reason: "top-layer training keeps at least one layer".into(),
        });
    }
    Model::load(
        base,
        &LoadOptions {
            num_hidden_layers: Some(num_hidden_layers - 1),
            head: None,
            training: None,
            ..options.clone()
        },
    )
}

/// What enters the last kept layer, one text after another, with the texts' gold labels.
#[derive(Debug, Clone)]
pub struct LayerInputs {
    /// `[total_tokens, hidden]`: every text's rows (in the order the frozen passes ran).
    pub states: Tensor,
    /// Each text's first row in `states` and its number of tokens, in input order.
    pub spans: Vec<(usize, usize)>,
    /// The gold label id of each text.
    pub labels: Vec<usize>,
}

impl LayerInputs {
    /// The states of the texts `chunk` and their layout.
    fn batch(&self, chunk: &[usize]) -> Result<(Tensor, RaggedBatch)> {
        let rows: Vec<u32> = chunk
            .iter()
            .flat_map(|&i| {
                let (start, len) = self.spans[i];
                start as u32..(start + len) as u32
            })
            .collect();
        let rows = Tensor::from_vec(rows.clone(), rows.len(), self.states.device())?;
        let batch = RaggedBatch::of_lengths(chunk.iter().map(|&i| self.spans[i].1));
        Ok((self.states.index_select(&rows, 0)?, batch))
    }

    /// The classifier's logits for the texts `chunk` (`[chunk, labels]`): the last layer at
    /// their first tokens, the pooler, the head; dropout off outside a training pass.
    pub fn logits(&self, model: &Model, chunk: &[usize]) -> Result<Tensor> {
        let (hidden, batch) = self.batch(chunk)?;
        let out = model.encoder.encode_last_layer(&hidden, &batch)?;
        model
            .encoder
            .head_logits(&out, &RaggedBatch::single_tokens(chunk.len()), None)
    }

    /// The classifier's predicted label ids for every text, dropout off.
    pub fn predict(&self, model: &Model) -> Result<Vec<usize>> {
        let all: Vec<usize> = (0..self.labels.len()).collect();
        let mut predicted = Vec::with_capacity(all.len());
        for chunk in all.chunks(64) {
            predicted.extend(predicted_labels(&self.logits(model, chunk)?)?);
        }
        Ok(predicted)
    }
}

/// What enters the last kept layer for each of `texts`, computed by `frozen` (from
/// [`load_frozen`]), with their labels.
pub fn layer_inputs<S: AsRef<str>>(
    frozen: &Model,
    texts: &[S],
    labels: &[usize],
    observer: &mut dyn Observer,
) -> Result<LayerInputs> {
    if texts.len() != labels.len() {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{} labels for {} texts", labels.len(), texts.len()),
        });
    }
    if texts.is_empty() {
        return Err(Error::EmptyInput);
    }
    // Windows bound the encodings held at once and give the progress bar something to show.
    const WINDOW: usize = 512;
    let mut outputs = Vec::new();
    let mut spans = vec![(0, 0); texts.len()];
    let mut rows = 0;
    let mut done = 0;
    for (w, window) in texts.chunks(WINDOW).enumerate() {
        let first = w * WINDOW;
        let encodings = frozen.tokenizer.encode_window(window, first)?;
        frozen.forward_batches(
            &encodings,
            &frozen.plan(&encodings),
            |indices, batch, out| {
                for (s, &index) in indices.iter().enumerate() {
                    let range = batch.seq_range(s);
                    spans[first + index] = (rows + range.start, range.len());
                }
                rows += batch.total_tokens();
                outputs.push(out.last_hidden_state.clone());
                Ok(())
            },
        )?;
        done += window.len();
        observer.features(done, texts.len());
    }
    Ok(LayerInputs {
        states: Tensor::cat(&outputs, 0)?,
        spans,
        labels: labels.to_vec(),
    })
}

/// Refuses, before anything is computed, a model whose family cannot run its last layer
/// alone.
pub fn check_supported(model: &Model) -> Result<()> {
    let hidden = model.encoder.word_embeddings().dims().1;
    let probe = Tensor::zeros(
        (1, hidden),
        candle_core::DType::F32,
        model.encoder.word_embeddings().device(),
    )?;
    model
        .encoder
        .encode_last_layer(&probe, &RaggedBatch::single_tokens(1))
        .map(|_| ())
        .map_err(|e| match e {
            Error::Unsupported { .. } => Error::Unsupported {
                what: format!(
                    "top-layer training of {} (BERT, RoBERTa and XLM-RoBERTa bases have it)",
                    model.encoder.class_name()
                ),
            },
            other => other,
        })
}

/// Trains `trainable` (loaded for [`super::Method::TopLayer`]) on `train`, evaluating on
/// `eval` after every epoch (accuracy) and keeping the best epoch's weights.
pub fn train_top_layer(
    trainable: &Trainable,
    train: &LayerInputs,
    eval: Option<&LayerInputs>,
    args: &TrainingArguments,
    observer: &mut dyn Observer,
) -> Result<TrainedModel> {
    let model = &trainable.model;
    check_supported(model)?;
    let num_labels = model.config.id2label.len();
    let loss = |chunk: &[usize]| -> Result<Tensor> {
        let logits = train.logits(model, chunk)?;
        let targets: Vec<u32> = chunk.iter().map(|&i| train.labels[i] as u32).collect();
        let targets = Tensor::from_vec(targets, chunk.len(), logits.device())?;
        Ok(candle_nn::loss::cross_entropy(&logits, &targets)?)
    };
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
    fit(
        trainable,
        train.labels.len(),
        args,
        observer,
        &loss,
        &evaluate,
    )
}

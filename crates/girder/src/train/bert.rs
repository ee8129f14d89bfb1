//! A differentiable `BertForSequenceClassification` for full fine-tuning.
//!
//! The inference model (`models/bert.rs`) is built for speed: linear weights are stored
//! transposed once at load, LayerNorm and softmax are candle's fused kernels, which have no
//! backward pass, and the weights are plain tensors. Training needs every weight as a
//! [`Var`] and every operation on candle's autograd tape, so this module computes the same
//! function from elementary, differentiable operations, on the same ragged batches
//! (attention per sequence, no padding). `tests::agrees_with_the_inference_model` holds the
//! two paths to the same output.

use super::Rng;
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::{ModelFolder, Weights};
use crate::layers::Activation;
use crate::models::bert::Config;
use candle_core::{DType, Device, Tensor, Var, D};
use std::collections::BTreeMap;

/// BERT's weights as trainable variables, under transformers' names without the `bert.`
/// prefix (`encoder.layer.0.attention.self.query.weight`), plus `classifier.weight` and
/// `classifier.bias` (which keep their names).
pub struct TrainableBert {
    cfg: Config,
    activation: Activation,
    vars: BTreeMap<String, Var>,
    /// Dropout probability inside the encoder and before the classifier (`hidden_dropout_prob`,
    /// `attention_probs_dropout_prob`).
    pub dropout: f64,
}

/// Where dropout masks come from during a training forward pass; `None` evaluates.
pub type DropoutRng<'a> = Option<&'a mut Rng>;

impl TrainableBert {
    /// Loads the base model's encoder and pooler from `folder` (a base checkpoint or a
    /// `bert.`-prefixed head checkpoint) and a new classifier initialised as transformers
    /// does (normal with `initializer_range`, seeded by `rng`).
    pub fn load(
        folder: &ModelFolder,
        common: &CommonConfig,
        num_labels: usize,
        rng: &mut Rng,
    ) -> Result<Self> {
        let cfg = Config::from_common(common)?;
        let activation = cfg.activation(common)?;
        let w = Weights::from_safetensors(&folder.weight_files()?, DType::F32, &Device::Cpu)?;
        let w = crate::models::bert::base_weights(&w, "bert");
        let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
        let mut shapes: Vec<(String, Vec<usize>)> = vec![
            (
                "embeddings.word_embeddings.weight".into(),
                vec![cfg.vocab_size, h],
            ),
            (
                "embeddings.position_embeddings.weight".into(),
                vec![cfg.max_position_embeddings, h],
            ),
            (
                "embeddings.token_type_embeddings.weight".into(),
                vec![cfg.type_vocab_size, h],
            ),
            ("embeddings.LayerNorm.weight".into(), vec![h]),
            ("embeddings.LayerNorm.bias".into(), vec![h]),
            ("pooler.dense.weight".into(), vec![h, h]),
            ("pooler.dense.bias".into(), vec![h]),
        ];
        for l in 0..cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            for name in [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
            ] {
                shapes.push((format!("{p}.{name}.weight"), vec![h, h]));
                shapes.push((format!("{p}.{name}.bias"), vec![h]));
            }
            shapes.push((format!("{p}.intermediate.dense.weight"), vec![i, h]));
            shapes.push((format!("{p}.intermediate.dense.bias"), vec![i]));
            shapes.push((format!("{p}.output.dense.weight"), vec![h, i]));
            shapes.push((format!("{p}.output.dense.bias"), vec![h]));
            for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
                shapes.push((format!("{p}.{norm}.weight"), vec![h]));
                shapes.push((format!("{p}.{norm}.bias"), vec![h]));
            }
        }
        let mut vars = BTreeMap::new();
        for (name, shape) in shapes {
            let tensor = if name.contains("LayerNorm") {
                // Old TensorFlow conversions name LayerNorm's parameters gamma / beta.
                let (stem, leaf) = name.rsplit_once('.').unwrap_or((&name, ""));
                let old = if leaf == "weight" { "gamma" } else { "beta" };
                w.pp(stem).get_either(shape, leaf, old)?
            } else {
                w.get(shape, &name)?
            };
            vars.insert(name, Var::from_tensor(&tensor)?);
        }
        let init: Vec<f32> = (0..num_labels * h)
            .map(|_| (rng.normal() * common_initializer_range(common)) as f32)
            .collect();
        vars.insert(
            "classifier.weight".into(),
            Var::from_tensor(&Tensor::from_vec(init, (num_labels, h), &Device::Cpu)?)?,
        );
        vars.insert(
            "classifier.bias".into(),
            Var::zeros(num_labels, DType::F32, &Device::Cpu)?,
        );
        Ok(TrainableBert {
            cfg,
            activation,
            vars,
            dropout: 0.1,
        })
    }

    /// Every trainable variable with its name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The weights under the names of a `BertForSequenceClassification` checkpoint
    /// (`bert.` prefix on the encoder), current values detached from the tape.
    pub fn checkpoint_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        self.vars
            .iter()
            .map(|(name, var)| {
                let full = if name.starts_with("classifier.") {
                    name.clone()
                } else {
                    format!("bert.{name}")
                };
                Ok((full, var.as_tensor().detach()))
            })
            .collect()
    }

    fn var(&self, name: &str) -> Result<&Tensor> {
        self.vars
            .get(name)
            .map(Var::as_tensor)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                files: "the trainable BERT".into(),
            })
    }

    fn linear(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let w = self.var(&format!("{prefix}.weight"))?;
        let b = self.var(&format!("{prefix}.bias"))?;
        Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let w = self.var(&format!("{prefix}.weight"))?;
        let b = self.var(&format!("{prefix}.bias"))?;
        let mean = x.mean_keepdim(D::Minus1)?;
        let centred = x.broadcast_sub(&mean)?;
        let variance = centred.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = centred.broadcast_div(&(variance + self.cfg.layer_norm_eps)?.sqrt()?)?;
        Ok(normed.broadcast_mul(w)?.broadcast_add(b)?)
    }

    fn dropout(&self, x: Tensor, rng: &mut DropoutRng) -> Result<Tensor> {
        let Some(rng) = rng.as_deref_mut() else {
            return Ok(x);
        };
        if self.dropout <= 0.0 {
            return Ok(x);
        }
        let keep = 1.0 - self.dropout;
        let mask: Vec<f32> = (0..x.elem_count())
            .map(|_| {
                if rng.uniform() < keep {
                    (1.0 / keep) as f32
                } else {
                    0.0
                }
            })
            .collect();
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?;
        Ok((x * mask)?)
    }

    /// Pooled output `[num_seqs, hidden]` (`BertPooler`: tanh of a dense layer on the first
    /// token); `rng` turns dropout on.
    pub fn pooled(&self, batch: &RaggedBatch, rng: &mut DropoutRng) -> Result<Tensor> {
        let device = Device::Cpu;
        let t = batch.to_tensors(&device)?;
        let emb = |name: &str, ids: &Tensor| -> Result<Tensor> {
            Ok(self
                .var(&format!("embeddings.{name}.weight"))?
                .index_select(ids, 0)?)
        };
        let x = ((emb("word_embeddings", &t.input_ids)?
            + emb("token_type_embeddings", &t.token_type_ids)?)?
            + emb("position_embeddings", &t.positions)?)?;
        let mut x = self.layer_norm(&x, "embeddings.LayerNorm")?;
        x = self.dropout(x, rng)?;
        let heads = self.cfg.num_attention_heads;
        let head_dim = self.cfg.hidden_size / heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let n = x.dim(0)?;
        for l in 0..self.cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = self.linear(&x, &format!("{p}.attention.self.query"))?;
            let k = self.linear(&x, &format!("{p}.attention.self.key"))?;
            let v = self.linear(&x, &format!("{p}.attention.self.value"))?;
            let mut contexts = Vec::with_capacity(batch.num_seqs());
            for s in 0..batch.num_seqs() {
                let range = batch.seq_range(s);
                // [len, hidden] → [heads, len, head_dim]
                let split = |t: &Tensor| -> Result<Tensor> {
                    Ok(t.narrow(0, range.start, range.len())?
                        .reshape((range.len(), heads, head_dim))?
                        .transpose(0, 1)?
                        .contiguous()?)
                };
                let (q, k, v) = (split(&q)?, split(&k)?, split(&v)?);
                let scores = (q.matmul(&k.t()?)? * scale)?; // [heads, len, len]
                let max = scores.max_keepdim(D::Minus1)?.detach();
                let exp = scores.broadcast_sub(&max)?.exp()?;
                let probs = exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)?;
                let probs = self.dropout(probs, rng)?;
                contexts.push(
                    probs
                        .matmul(&v)?
                        .transpose(0, 1)?
                        .reshape((range.len(), heads * head_dim))?,
                );
            }
            let context = Tensor::cat(&contexts, 0)?; // [n, hidden]
            debug_assert_eq!(context.dim(0)?, n);
            let out = self.linear(&context, &format!("{p}.attention.output.dense"))?;
            let out = self.dropout(out, rng)?;
            let attended =
                self.layer_norm(&(out + &x)?, &format!("{p}.attention.output.LayerNorm"))?;
            let h = self
                .activation
                .forward(&self.linear(&attended, &format!("{p}.intermediate.dense"))?)?;
            let out = self.linear(&h, &format!("{p}.output.dense"))?;
            let out = self.dropout(out, rng)?;
            x = self.layer_norm(&(out + attended)?, &format!("{p}.output.LayerNorm"))?;
        }
        let first = Tensor::new(batch.first_token_rows(), &device)?;
        let cls = x.index_select(&first, 0)?;
        Ok(self.linear(&cls, "pooler.dense")?.tanh()?)
    }

    /// Classifier logits `[num_seqs, num_labels]`; `rng` turns dropout on.
    pub fn logits(&self, batch: &RaggedBatch, rng: &mut DropoutRng) -> Result<Tensor> {
        let pooled = self.pooled(batch, rng)?;
        let pooled = self.dropout(pooled, rng)?;
        self.linear(&pooled, "classifier")
    }
}

fn common_initializer_range(common: &CommonConfig) -> f64 {
    #[derive(serde::Deserialize)]
    struct Init {
        #[serde(default = "default_range")]
        initializer_range: f64,
    }
    fn default_range() -> f64 {
        0.02
    }
    common
        .parse_as::<Init>()
        .map(|i| i.initializer_range)
        .unwrap_or(0.02)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::{LoadOptions, Model};

    fn fixture() -> (Model, RaggedBatch) {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bert-base");
        let model = Model::load(dir, &LoadOptions::default()).unwrap();
        let texts = [
            "A man is eating food.",
            "Short.",
            "The quick brown fox jumps.",
        ];
        let enc = model.encode_texts(&texts).unwrap();
        (model, RaggedBatch::from_encodings(&enc))
    }

    #[test]
    fn agrees_with_the_inference_model() {
        let (model, batch) = fixture();
        let inference = model.encoder.encode(&batch).unwrap().pooler_output.unwrap();
        let bert = TrainableBert::load(&model.folder, &model.config, 2, &mut Rng::new(0)).unwrap();
        let trainable = bert.pooled(&batch, &mut None).unwrap();
        let diff = (inference - trainable)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "the two forward paths differ by {diff}");
    }

    #[test]
    fn gradients_reach_every_weight_and_a_step_lowers_the_loss() {
        use candle_nn::{AdamW, Optimizer, ParamsAdamW};
        let (model, batch) = fixture();
        let bert = TrainableBert::load(&model.folder, &model.config, 2, &mut Rng::new(0)).unwrap();
        let targets = Tensor::new(&[1u32, 0, 1], &Device::Cpu).unwrap();
        let loss = |b: &TrainableBert| {
            candle_nn::loss::cross_entropy(&b.logits(&batch, &mut None).unwrap(), &targets).unwrap()
        };
        let before = loss(&bert);
        let grads = before.backward().unwrap();
        for (name, var) in bert.vars() {
            let grad = grads.get(var.as_tensor());
            assert!(grad.is_some(), "no gradient reaches {name}");
        }
        let vars: Vec<Var> = bert.vars().values().cloned().collect();
        let mut opt = AdamW::new(
            vars,
            ParamsAdamW {
                lr: 1e-3,
                ..Default::default()
            },
        )
        .unwrap();
        opt.step(&grads).unwrap();
        let after = loss(&bert);
        let (b, a) = (
            before.to_scalar::<f32>().unwrap(),
            after.to_scalar::<f32>().unwrap(),
        );
        assert!(a < b, "loss {b} → {a}");
    }
}

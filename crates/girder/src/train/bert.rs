//! A differentiable `BertForSequenceClassification` for full fine-tuning.
//!
//! The inference model (`models/bert.rs`) is built for speed: linear weights are stored
//! transposed once at load, LayerNorm and softmax are candle's fused kernels, which have no
//! backward pass, and the weights are plain tensors. Training needs every weight as a
//! [`Var`] and every operation on candle's autograd tape, so this module computes the same
//! function from differentiable operations (candle's, and the fused ones of [`super::ops`]
//! with their closed-form gradients), on the same ragged batches (attention per sequence,
//! no padding). `tests::agrees_with_the_inference_model` holds the
//! two paths to the same output.

use super::{ops, Rng};
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::{ModelFolder, Weights};
use crate::layers::Activation;
use crate::models::bert::Config;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::BTreeMap;

/// BERT's weights as trainable variables, under transformers' names without the `bert.`
/// prefix (`encoder.layer.0.attention.self.query.weight`), plus `classifier.weight` and
/// `classifier.bias` (which keep their names).
pub struct TrainableBert {
    cfg: Config,
    activation: Activation,
    /// What the optimizer trains: every weight, or with LoRA the adapters and the classifier.
    vars: BTreeMap<String, Var>,
    /// Weights frozen by LoRA (plain tensors: no gradient is computed for them).
    frozen: BTreeMap<String, Tensor>,
    lora: Option<Lora>,
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
        let w = crate::models::base_weights(&w, "bert");
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
            frozen: BTreeMap::new(),
            lora: None,
            dropout: 0.1,
        })
    }

    /// Freezes every weight but the classifier and adds LoRA adapters (Hu et al., 2021,
    /// <https://arxiv.org/abs/2106.09685>) to the linear layers of each attention block whose
    /// last name segment is in `lora.target_modules` (`query`, `key`, `value`, `dense`), as
    /// PEFT's `LoraConfig` does: `y = W x + b + (B A dropout(x)) * lora_alpha / r`, with `A`
    /// Kaiming-uniform and `B` zero, so training starts from the base model's function.
    pub fn enable_lora(&mut self, lora: Lora, rng: &mut Rng) -> Result<Vec<String>> {
        if lora.r == 0 {
            return Err(Error::InvalidOption {
                option: "lora_r".into(),
                reason: "must be at least 1".into(),
            });
        }
        let names: Vec<String> = self.vars.keys().cloned().collect();
        for name in names {
            if !name.starts_with("classifier.") {
                if let Some(var) = self.vars.remove(&name) {
                    self.frozen.insert(name, var.as_tensor().detach());
                }
            }
        }
        let mut adapted = Vec::new();
        for (name, weight) in &self.frozen {
            let Some(prefix) = name.strip_suffix(".weight") else {
                continue;
            };
            let leaf = prefix.rsplit('.').next().unwrap_or_default();
            if !prefix.starts_with("encoder.layer.")
                || !lora.target_modules.iter().any(|t| t == leaf)
            {
                continue;
            }
            let (out_dim, in_dim) = weight.dims2()?;
            // kaiming_uniform_(a = sqrt(5)): bound = 1 / sqrt(fan_in).
            let bound = 1.0 / (in_dim as f64).sqrt();
            let a: Vec<f32> = (0..lora.r * in_dim)
                .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
                .collect();
            adapted.push(prefix.to_string());
            self.vars.insert(
                format!("{prefix}.lora_A.weight"),
                Var::from_tensor(&Tensor::from_vec(a, (lora.r, in_dim), &Device::Cpu)?)?,
            );
            self.vars.insert(
                format!("{prefix}.lora_B.weight"),
                Var::zeros((out_dim, lora.r), DType::F32, &Device::Cpu)?,
            );
        }
        if adapted.is_empty() {
            return Err(Error::InvalidOption {
                option: "target_modules".into(),
                reason: format!(
                    "{} names no linear layer of the encoder (query, key, value, dense)",
                    lora.target_modules.join(",")
                ),
            });
        }
        self.lora = Some(lora);
        Ok(adapted)
    }

    /// The LoRA settings, when adapters are on.
    pub fn lora(&self) -> Option<&Lora> {
        self.lora.as_ref()
    }

    /// The LoRA adapters' tensors (`….lora_A.weight`, `….lora_B.weight`, names without the
    /// `bert.` prefix) and the classifier, detached.
    pub fn adapter_tensors(&self) -> Vec<(String, Tensor)> {
        self.vars
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Every trainable variable with its name.
    pub fn vars(&self) -> &BTreeMap<String, Var> {
        &self.vars
    }

    /// The weights under the names of a `BertForSequenceClassification` checkpoint
    /// (`bert.` prefix on the encoder), current values detached from the tape.
    pub fn checkpoint_tensors(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        let full = |name: &str| {
            if name.starts_with("classifier.") {
                name.to_string()
            } else {
                format!("bert.{name}")
            }
        };
        for (name, var) in &self.vars {
            if !name.contains(".lora_") {
                out.push((full(name), var.as_tensor().detach()));
            }
        }
        // With LoRA, the adapted weights are merged: W + (B A) * alpha / r.
        for (name, weight) in &self.frozen {
            let merged = match (name.strip_suffix(".weight"), &self.lora) {
                (Some(prefix), Some(lora))
                    if self.vars.contains_key(&format!("{prefix}.lora_A.weight")) =>
                {
                    let a = self.var(&format!("{prefix}.lora_A.weight"))?;
                    let b = self.var(&format!("{prefix}.lora_B.weight"))?;
                    (weight + (b.matmul(a)? * lora.scaling())?)?.detach()
                }
                _ => weight.clone(),
            };
            out.push((full(name), merged));
        }
        Ok(out)
    }

    fn var(&self, name: &str) -> Result<&Tensor> {
        self.vars
            .get(name)
            .map(Var::as_tensor)
            .or_else(|| self.frozen.get(name))
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                files: "the trainable BERT".into(),
            })
    }

    fn linear(&self, x: &Tensor, prefix: &str, rng: &mut DropoutRng) -> Result<Tensor> {
        let w = self.var(&format!("{prefix}.weight"))?;
        let b = self.var(&format!("{prefix}.bias"))?;
        let y = x.matmul(&w.t()?)?.broadcast_add(b)?;
        let (Some(lora), Some(a)) = (
            &self.lora,
            self.vars.get(&format!("{prefix}.lora_A.weight")),
        ) else {
            return Ok(y);
        };
        let b = self.var(&format!("{prefix}.lora_B.weight"))?;
        let x = self.dropout_p(x.clone(), lora.lora_dropout, rng)?;
        let delta = x.matmul(&a.as_tensor().t()?)?.matmul(&b.t()?)?;
        Ok((y + (delta * lora.scaling())?)?)
    }

    fn layer_norm(&self, x: &Tensor, prefix: &str) -> Result<Tensor> {
        let w = self.var(&format!("{prefix}.weight"))?;
        let b = self.var(&format!("{prefix}.bias"))?;
        ops::layer_norm(x, w, b, self.cfg.layer_norm_eps)
    }

    fn dropout(&self, x: Tensor, rng: &mut DropoutRng) -> Result<Tensor> {
        self.dropout_p(x, self.dropout, rng)
    }

    fn dropout_p(&self, x: Tensor, p: f64, rng: &mut DropoutRng) -> Result<Tensor> {
        let Some(rng) = rng.as_deref_mut() else {
            return Ok(x);
        };
        if p <= 0.0 {
            return Ok(x);
        }
        let keep = 1.0 - p;
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
        let (hidden, _) = self.encode(batch, rng, false)?;
        self.pool(&hidden, batch, rng)
    }

    fn pool(&self, hidden: &Tensor, batch: &RaggedBatch, rng: &mut DropoutRng) -> Result<Tensor> {
        let first = Tensor::new(batch.first_token_rows(), hidden.device())?;
        let cls = hidden.index_select(&first, 0)?;
        Ok(self.linear(&cls, "pooler.dense", rng)?.tanh()?)
    }

    /// The encoder's last hidden state `[tokens, hidden]`. With `gather` and a trainable
    /// word-embedding table, the rows the batch looks up become a leaf of their own
    /// ([`LookedUp`]), so that the backward pass yields their gradient instead of one for the
    /// whole table.
    fn encode(
        &self,
        batch: &RaggedBatch,
        rng: &mut DropoutRng,
        gather: bool,
    ) -> Result<(Tensor, Option<LookedUp>)> {
        let device = Device::Cpu;
        let t = batch.to_tensors(&device)?;
        let emb = |name: &str, ids: &Tensor| -> Result<Tensor> {
            Ok(self
                .var(&format!("embeddings.{name}.weight"))?
                .index_select(ids, 0)?)
        };
        let mut looked_up = None;
        let words = match self.vars.get(WORD_EMBEDDINGS) {
            Some(table) if gather => {
                let rows =
                    Var::from_tensor(&table.as_tensor().detach().index_select(&t.input_ids, 0)?)?;
                let words = rows.as_tensor().clone();
                looked_up = Some(LookedUp {
                    ids: t.input_ids.to_vec1::<u32>()?,
                    rows,
                });
                words
            }
            _ => emb("word_embeddings", &t.input_ids)?,
        };
        let x = ((words + emb("token_type_embeddings", &t.token_type_ids)?)?
            + emb("position_embeddings", &t.positions)?)?;
        let mut x = self.layer_norm(&x, "embeddings.LayerNorm")?;
        x = self.dropout(x, rng)?;
        let heads = self.cfg.num_attention_heads;
        let head_dim = self.cfg.hidden_size / heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let n = x.dim(0)?;
        for l in 0..self.cfg.num_hidden_layers {
            let p = format!("encoder.layer.{l}");
            let q = self.linear(&x, &format!("{p}.attention.self.query"), rng)?;
            let k = self.linear(&x, &format!("{p}.attention.self.key"), rng)?;
            let v = self.linear(&x, &format!("{p}.attention.self.value"), rng)?;
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
                let probs = ops::softmax_last_dim(&scores)?;
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
            let out = self.linear(&context, &format!("{p}.attention.output.dense"), rng)?;
            let out = self.dropout(out, rng)?;
            let attended =
                self.layer_norm(&(out + &x)?, &format!("{p}.attention.output.LayerNorm"))?;
            let h = self.linear(&attended, &format!("{p}.intermediate.dense"), rng)?;
            let h = match self.activation {
                Activation::Gelu => ops::gelu_erf(&h)?,
                other => other.forward(&h)?,
            };
            let out = self.linear(&h, &format!("{p}.output.dense"), rng)?;
            let out = self.dropout(out, rng)?;
            x = self.layer_norm(&(out + attended)?, &format!("{p}.output.LayerNorm"))?;
        }
        Ok((x, looked_up))
    }

    /// Classifier logits `[num_seqs, num_labels]`; `rng` turns dropout on.
    pub fn logits(&self, batch: &RaggedBatch, rng: &mut DropoutRng) -> Result<Tensor> {
        Ok(self.training_logits(batch, rng, false)?.0)
    }

    /// Sequence-classifier logits for a training step; with `gather`, the word-embedding rows
    /// the batch used as their own leaf (see [`LookedUp`]), `None` when that table is frozen.
    pub fn training_logits(
        &self,
        batch: &RaggedBatch,
        rng: &mut DropoutRng,
        gather: bool,
    ) -> Result<(Tensor, Option<LookedUp>)> {
        let (hidden, looked_up) = self.encode(batch, rng, gather)?;
        let pooled = self.pool(&hidden, batch, rng)?;
        let pooled = self.dropout(pooled, rng)?;
        Ok((self.linear(&pooled, "classifier", rng)?, looked_up))
    }

    /// Token-classifier logits `[tokens, num_labels]` (`BertForTokenClassification`: dropout,
    /// then the classifier on every token's hidden state), as [`Self::training_logits`].
    pub fn token_logits(
        &self,
        batch: &RaggedBatch,
        rng: &mut DropoutRng,
        gather: bool,
    ) -> Result<(Tensor, Option<LookedUp>)> {
        let (hidden, looked_up) = self.encode(batch, rng, gather)?;
        let hidden = self.dropout(hidden, rng)?;
        Ok((self.linear(&hidden, "classifier", rng)?, looked_up))
    }

    /// The word-embedding table, when it is trained.
    pub fn word_embeddings(&self) -> Option<&Var> {
        self.vars.get(WORD_EMBEDDINGS)
    }
}

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";

/// The word-embedding rows one batch looked up, copied out of the table as a leaf of the
/// tape: their gradient is `[tokens, hidden]` rather than the table's `[vocab, hidden]`
/// (47 MB for MiniLM, mostly zeros, allocated per step by `index_select`'s backward pass).
/// [`super::optim::SparseRows`] hands it to the optimizer.
pub struct LookedUp {
    pub ids: Vec<u32>,
    pub rows: Var,
}

/// PEFT's `LoraConfig` fields that girder uses.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    pub target_modules: Vec<String>,
}

impl Default for Lora {
    /// PEFT's defaults (r 8, alpha 8, dropout 0), with BERT's query and value as targets.
    fn default() -> Self {
        Lora {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: vec!["query".into(), "value".into()],
        }
    }
}

impl Lora {
    /// `lora_alpha / r`
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
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
    use crate::pipelines::Model;
    use crate::LoadOptions;

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
        let diff = crate::test_support::max_diff(&inference, &trainable);
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

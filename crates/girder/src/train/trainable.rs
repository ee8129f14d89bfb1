//! The model being trained: the inference model itself ([`crate::models`]), loaded through
//! the one loader with a new head and its trained tensors as variables.
//!
//! transformers trains `BertForSequenceClassification.from_pretrained(base, id2label=...)`:
//! the base's weights, a new head initialised by `_init_weights`, dropout on. Here
//! [`Trainable::load`] asks [`crate::load`] for the same ([`LoadOptions::head`],
//! [`LoadOptions::training`]): every encoder family the registry knows trains the same way,
//! through the same model file that serves it.

use super::{Method, TrainingArguments};
use crate::error::{Error, Result};
use crate::hub::{Lora, Parameters};
use crate::models::Head;
use crate::pipelines::Model;
use crate::pretrained::{LoadOptions, NewHead, TrainingLoad};
use candle_core::Tensor;
use std::collections::HashMap;

/// An encoder loaded for training as a classifier.
#[derive(Debug)]
pub struct Trainable {
    /// The inference model; its trained tensors are variables.
    pub model: Model,
    parameters: Parameters,
    method: Method,
}

impl Trainable {
    /// Loads `base` (a folder or hub id) with `head` (sequence or token classification) for
    /// `labels`, training what `method` trains: every weight, the head only, or the head and
    /// LoRA adapters (`lora`, required for [`Method::Lora`]). `options` sets the input limit
    /// and batch budget; its head and training fields are filled here.
    pub fn load(
        base: &str,
        head: Head,
        labels: &[String],
        method: Method,
        lora: Option<Lora>,
        args: &TrainingArguments,
        options: LoadOptions,
    ) -> Result<Self> {
        if !matches!(
            head,
            Head::SequenceClassification | Head::TokenClassification
        ) {
            return Err(Error::Unsupported {
                what: format!("training a model with {}", head.name()),
            });
        }
        let lora = match (method, lora) {
            (Method::Lora, Some(lora)) => Some(lora),
            (Method::Lora, None) => Some(Lora::default()),
            _ => None,
        };
        if let Some(lora) = &lora {
            lora.validate()?;
        }
        // The top-layer method trains the last kept layer and the pooler beside the head.
        let modules =
            match (method, options.num_hidden_layers) {
                (Method::TopLayer, Some(0) | None) => return Err(Error::InvalidOption {
                    option: "num_hidden_layers".into(),
                    reason:
                        "top-layer training keeps at least one layer, and needs to know how many"
                            .into(),
                }),
                (Method::TopLayer, Some(n)) => {
                    vec![format!("encoder.layer.{}", n - 1), "pooler".into()]
                }
                _ => Vec::new(),
            };
        let options = LoadOptions {
            head: Some(NewHead {
                head,
                labels: labels.to_vec(),
                classifier_dropout: Some(args.classifier_dropout),
            }),
            training: Some(TrainingLoad {
                all_weights: method == Method::Full,
                lora,
                seed: args.seed,
                modules,
            }),
            ..options
        };
        let model = crate::load(base, &options)?.into_encoder()?;
        let parameters = model
            .parameters
            .clone()
            .ok_or_else(|| Error::InvalidOption {
                option: "training".into(),
                reason: "the loader returned no trainable parameters".into(),
            })?;
        if method == Method::Lora
            && !parameters
                .tensors()
                .iter()
                .any(|(n, _)| n.contains(".lora_"))
        {
            let targets = parameters
                .lora_settings()
                .map(|l| l.target_modules)
                .unwrap_or_default();
            return Err(Error::InvalidOption {
                option: "target_modules".into(),
                reason: format!(
                    "{} names no linear layer in {}'s layers",
                    targets.join(","),
                    model.encoder.class_name()
                ),
            });
        }
        if parameters.trained().is_empty() {
            return Err(Error::InvalidOption {
                option: "method".into(),
                reason: format!(
                    "{} trains no tensor of {}",
                    method.name(),
                    model.encoder.class_name()
                ),
            });
        }
        Ok(Trainable {
            model,
            parameters,
            method,
        })
    }

    /// What is trained.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The model's tensors, the trained ones variables.
    pub fn parameters(&self) -> &Parameters {
        &self.parameters
    }

    /// The LoRA settings, when adapters are trained.
    pub fn lora(&self) -> Option<Lora> {
        self.parameters.lora_settings()
    }

    /// The tensors the base checkpoint lacked, initialised for training (the new head), under
    /// the class's checkpoint names.
    pub fn new_tensors(&self) -> Vec<String> {
        self.parameters
            .new_tensors()
            .iter()
            .filter(|n| !n.contains(".lora_"))
            .map(|n| self.checkpoint_name(n))
            .collect()
    }

    /// The head modules that hold tensors (PEFT's `modules_to_save`).
    pub fn head_modules(&self) -> Vec<String> {
        let tensors = self.parameters.tensors();
        self.model
            .encoder
            .architecture()
            .head_modules
            .iter()
            .filter(|m| tensors.iter().any(|(n, _)| in_module(n, m)))
            .map(|m| m.to_string())
            .collect()
    }

    /// Every tensor of the trained class under transformers' checkpoint names (the base
    /// model's under `base_model_prefix`), current values copied; LoRA's adapters merged
    /// into their layers' weights (`W + B·A·α/r`, PEFT's `merge_and_unload`).
    pub fn checkpoint(&self) -> Result<Vec<(String, Tensor)>> {
        let tensors = self.parameters.tensors();
        let by_name: HashMap<&str, &Tensor> =
            tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
        let lora = self.lora();
        let mut out = Vec::with_capacity(tensors.len());
        for (name, tensor) in &tensors {
            if name.contains(".lora_") {
                continue;
            }
            let adapter = name.strip_suffix(".weight").and_then(|prefix| {
                let a = by_name.get(format!("{prefix}.lora_A.weight").as_str())?;
                let b = by_name.get(format!("{prefix}.lora_B.weight").as_str())?;
                Some((*a, *b))
            });
            let value = match (adapter, &lora) {
                (Some((a, b)), Some(lora)) => (tensor + (b.matmul(a)? * lora.scaling())?)?,
                _ => tensor.copy()?,
            };
            out.push((self.checkpoint_name(name), value));
        }
        Ok(out)
    }

    /// LoRA: the adapters and the head under checkpoint names (the base model's prefix on
    /// the adapters), current values copied; `None` for the other methods.
    pub fn adapter(&self) -> Result<Option<Vec<(String, Tensor)>>> {
        if self.lora().is_none() {
            return Ok(None);
        }
        let heads = self.head_modules();
        let mut out = Vec::new();
        for (name, tensor) in self.parameters.tensors() {
            if name.contains(".lora_") || heads.iter().any(|m| in_module(&name, m)) {
                out.push((self.checkpoint_name(&name), tensor.copy()?));
            }
        }
        Ok(Some(out))
    }

    /// `name` as the class's checkpoint has it: head tensors at the root, the base model's
    /// under `base_model_prefix` (a base checkpoint keeps them at the root).
    fn checkpoint_name(&self, name: &str) -> String {
        let architecture = self.model.encoder.architecture();
        let prefix = architecture.base_model_prefix;
        if architecture.head_modules.iter().any(|m| in_module(name, m)) || in_module(name, prefix) {
            name.to_string()
        } else {
            format!("{prefix}.{name}")
        }
    }
}

/// Whether tensor `name` lies in the top-level module `module`.
fn in_module(name: &str, module: &str) -> bool {
    name.strip_prefix(module)
        .is_some_and(|rest| rest.starts_with('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::RaggedBatch;
    use crate::layers::training::training_pass;
    use crate::rng::Rng;

    /// Full fine-tuning of every family's fixture: a training pass's loss reaches every
    /// trained tensor (the word-embedding rows through their looked-up leaf), and a dropout
    /// pass differs from an evaluation pass while two passes from one seed agree.
    #[test]
    fn every_trained_tensor_gets_a_gradient() {
        for name in ["bert-base", "distilbert-base", "roberta-base", "mpnet-base"] {
            let dir = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
            let args = TrainingArguments::default();
            let labels = ["a".to_string(), "b".to_string()];
            let t = Trainable::load(
                &dir,
                Head::SequenceClassification,
                &labels,
                Method::Full,
                None,
                &args,
                LoadOptions::default(),
            )
            .unwrap();
            let enc = t
                .model
                .encode_texts(&["A man is eating food.", "Short."])
                .unwrap();
            let batch = RaggedBatch::from_encodings(&enc);
            let logits = |rng: Option<&mut Rng>| {
                let run = || {
                    let out = t.model.encoder.encode(&batch).unwrap();
                    t.model.encoder.head_logits(&out, &batch, None).unwrap()
                };
                match rng {
                    Some(rng) => training_pass(rng, run),
                    None => (run(), Vec::new()),
                }
            };
            let (eval, _) = logits(None);
            let (a, lookups) = logits(Some(&mut Rng::new(1)));
            let (b, _) = logits(Some(&mut Rng::new(1)));
            let rows = |x: &Tensor| x.to_vec2::<f32>().unwrap();
            assert_eq!(rows(&a), rows(&b), "{name}: one seed, one pass");
            assert_ne!(
                rows(&a),
                rows(&eval),
                "{name}: dropout is on in a training pass"
            );
            let targets = Tensor::new(&[1u32, 0], a.device()).unwrap();
            let loss = candle_nn::loss::cross_entropy(&a, &targets).unwrap();
            let grads = loss.backward().unwrap();
            assert!(
                !lookups.is_empty(),
                "{name}: the embedding lookups are recorded"
            );
            let looked_up: Vec<_> = lookups.iter().map(|l| l.table.as_tensor().id()).collect();
            for (var_name, var) in t.parameters().trained() {
                let reached = grads.get(var.as_tensor()).is_some()
                    || (looked_up.contains(&var.as_tensor().id())
                        && lookups
                            .iter()
                            .any(|l| grads.get(l.rows.as_tensor()).is_some()));
                assert!(reached, "{name}: no gradient reaches {var_name}");
            }
        }
    }
}

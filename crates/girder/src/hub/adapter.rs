//! PEFT LoRA adapters (Hu et al., 2021, <https://arxiv.org/abs/2106.09685>), applied to a
//! base checkpoint at load.
//!
//! An adapter folder, as PEFT's `save_pretrained` writes it, holds `adapter_config.json` and
//! `adapter_model.safetensors`: for each adapted linear layer `…query`, the factors
//! `base_model.model.…query.lora_A.weight` `[r, in]` and `….lora_B.weight` `[out, r]`, and
//! the `modules_to_save` (a classification head) whole. girder merges at load:
//! `W ← W + B·A · lora_alpha / r` (`/ √r` with rsLoRA), which is what PEFT's
//! `merge_and_unload()` computes, so inference runs at the base model's speed.
//!
//! A classification adapter (`task_type` `SEQ_CLS` or `TOKEN_CLS`) turns a base model into
//! `…ForSequenceClassification` / `…ForTokenClassification` with as many labels as its
//! classifier has rows. Label names come from `head_config.json` (written by
//! `girder train --method lora` beside the adapter; PEFT has no place for them), else
//! transformers' `LABEL_0`, `LABEL_1`, …

use super::Weights;
use crate::config::ProblemType;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The fields of PEFT's `LoraConfig` that decide how an adapter is applied.
#[derive(Debug, Clone, Deserialize)]
pub struct AdapterConfig {
    pub peft_type: String,
    #[serde(default)]
    pub task_type: Option<String>,
    #[serde(default)]
    pub base_model_name_or_path: Option<String>,
    pub r: usize,
    pub lora_alpha: f64,
    #[serde(default)]
    pub use_rslora: bool,
    #[serde(default)]
    pub use_dora: bool,
    #[serde(default)]
    pub fan_in_fan_out: bool,
    #[serde(default)]
    pub bias: Option<String>,
    #[serde(default)]
    pub rank_pattern: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    pub alpha_pattern: Option<BTreeMap<String, serde_json::Value>>,
}

/// Labels of a classification adapter, as girder writes them (`head_config.json`).
#[derive(Debug, Clone, Deserialize)]
struct HeadConfig {
    id2label: BTreeMap<String, String>,
    #[serde(default)]
    problem_type: Option<ProblemType>,
}

/// A PEFT LoRA adapter read from its folder.
#[derive(Debug)]
pub struct LoraAdapter {
    pub folder: PathBuf,
    pub config: AdapterConfig,
    /// Tensors under their names without PEFT's `base_model.model.` prefix.
    tensors: BTreeMap<String, Tensor>,
    head: Option<HeadConfig>,
}

const PEFT_PREFIX: &str = "base_model.model.";

/// The classifier a classification adapter was trained as ([`LoraAdapter::head`]).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterHead {
    /// Sequence classification (`SEQ_CLS`); token classification (`TOKEN_CLS`) otherwise.
    pub sequence: bool,
    /// The label of each class id.
    pub labels: Vec<String>,
    pub problem_type: Option<ProblemType>,
}

impl LoraAdapter {
    /// Reads `adapter_config.json` and `adapter_model.safetensors` from `folder`; refuses
    /// what girder cannot apply faithfully (DoRA, trained biases, per-module ranks or alphas,
    /// transposed `fan_in_fan_out` weights), naming the field.
    pub fn load(folder: impl AsRef<Path>) -> Result<Self> {
        let folder = folder.as_ref().to_path_buf();
        let config_path = folder.join("adapter_config.json");
        if !config_path.is_file() {
            return Err(Error::MissingFile {
                folder,
                file: "adapter_config.json".into(),
                needs: "a PEFT adapter folder needs adapter_config.json".into(),
            });
        }
        let config: AdapterConfig = crate::config::read_json(&config_path)?;
        let refuse = |field: &str, reason: &str| Error::BadConfig {
            file: config_path.clone(),
            field: field.into(),
            reason: reason.into(),
        };
        if config.peft_type != "LORA" {
            return Err(refuse(
                "peft_type",
                &format!("`{}`: girder applies LoRA adapters only", config.peft_type),
            ));
        }
        if config.r == 0 {
            return Err(refuse("r", "must be at least 1"));
        }
        if config.use_dora {
            return Err(refuse("use_dora", "DoRA adapters are not supported"));
        }
        if config.fan_in_fan_out {
            return Err(refuse(
                "fan_in_fan_out",
                "adapters of Conv1D (GPT-2) layers are not supported",
            ));
        }
        if config.bias.as_deref().is_some_and(|b| b != "none") {
            return Err(refuse(
                "bias",
                "adapters that train biases are not supported (only `none`)",
            ));
        }
        for (field, pattern) in [
            ("rank_pattern", &config.rank_pattern),
            ("alpha_pattern", &config.alpha_pattern),
        ] {
            if pattern.as_ref().is_some_and(|p| !p.is_empty()) {
                return Err(refuse(
                    field,
                    "per-module ranks or alphas are not supported",
                ));
            }
        }
        let weights_path = folder.join("adapter_model.safetensors");
        if !weights_path.is_file() {
            let needs = if folder.join("adapter_model.bin").is_file() {
                "only adapter_model.bin is here; girder reads safetensors (PEFT's default since 0.6)"
            } else {
                "a PEFT adapter folder needs adapter_model.safetensors"
            };
            return Err(Error::MissingFile {
                folder,
                file: "adapter_model.safetensors".into(),
                needs: needs.into(),
            });
        }
        let bad = |reason: String| Error::BadWeights {
            file: weights_path.clone(),
            reason,
        };
        let loaded = candle_core::safetensors::load(&weights_path, &Device::Cpu)
            .map_err(|e| bad(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        for (name, tensor) in loaded {
            let short = name.strip_prefix(PEFT_PREFIX).unwrap_or(&name).to_string();
            tensors.insert(short, tensor.to_dtype(DType::F32)?);
        }
        let head_path = folder.join("head_config.json");
        let head = if head_path.is_file() {
            Some(crate::config::read_json(&head_path)?)
        } else {
            None
        };
        Ok(LoraAdapter {
            folder,
            config,
            tensors,
            head,
        })
    }

    /// `lora_alpha / r`, or `lora_alpha / √r` with rsLoRA.
    pub fn scaling(&self) -> f64 {
        let r = self.config.r as f64;
        if self.config.use_rslora {
            self.config.lora_alpha / r.sqrt()
        } else {
            self.config.lora_alpha / r
        }
    }

    /// The adapted modules (`bert.encoder.layer.0.attention.self.query`, …).
    pub fn modules(&self) -> Vec<&str> {
        self.tensors
            .keys()
            .filter_map(|n| n.strip_suffix(".lora_A.weight"))
            .collect()
    }

    /// The base checkpoint with the adapter merged in: `W + B·A·scaling` for every adapted
    /// layer, the saved modules added, under the names the base checkpoint uses (with or
    /// without its `bert.` / `roberta.` prefix). A classification adapter's head is
    /// [`head`](Self::head); the loader builds it.
    pub fn apply(&self, base: &Weights) -> Result<Weights> {
        let file = self.folder.join("adapter_model.safetensors");
        let missing = |name: String| Error::MissingTensor {
            name,
            files: file.display().to_string(),
        };
        let mut merged = HashMap::new();
        let modules = self.modules();
        if modules.is_empty() {
            return Err(missing("any `….lora_A.weight`".into()));
        }
        for module in &modules {
            let a = &self.tensors[&format!("{module}.lora_A.weight")];
            let b = self
                .tensors
                .get(&format!("{module}.lora_B.weight"))
                .ok_or_else(|| missing(format!("{PEFT_PREFIX}{module}.lora_B.weight")))?;
            let name = base_name(base, &format!("{module}.weight")).ok_or_else(|| {
                Error::MissingTensor {
                    name: format!("{module}.weight (adapted by {})", file.display()),
                    files: "the base model".into(),
                }
            })?;
            let shape = base.shape_of(&name).unwrap_or_default();
            let (r, inputs) = a.dims2()?;
            let (outputs, r_b) = b.dims2()?;
            if shape != [outputs, inputs] || r_b != r {
                return Err(Error::ShapeMismatch {
                    tensor: format!("{PEFT_PREFIX}{module}.lora_B·lora_A (for {name})"),
                    expected: shape,
                    actual: vec![outputs, inputs],
                });
            }
            let weight = base.get(vec![outputs, inputs], &name)?;
            let delta = (b.matmul(a)? * self.scaling())?
                .to_dtype(weight.dtype())?
                .to_device(weight.device())?;
            merged.insert(name, (weight + delta)?);
        }
        for (name, tensor) in &self.tensors {
            if name.contains(".lora_") {
                continue;
            }
            // A saved module replaces the base's tensor of the same name, or adds one (a
            // classifier on a base model).
            let target = base_name(base, name).unwrap_or_else(|| name.clone());
            merged.insert(target, tensor.clone());
        }
        Ok(base.with_overrides(merged))
    }

    /// The classifier a `SEQ_CLS` / `TOKEN_CLS` adapter was trained as: its labels (from
    /// head_config.json, else `LABEL_i` for each row of the saved classifier) and problem
    /// type; `None` for an adapter of another task.
    pub fn head(&self) -> Result<Option<AdapterHead>> {
        let (sequence, head) = match self.config.task_type.as_deref() {
            Some("SEQ_CLS") => (true, "ForSequenceClassification"),
            Some("TOKEN_CLS") => (false, "ForTokenClassification"),
            _ => return Ok(None),
        };
        // The head's output layer: BERT's and DistilBERT's `classifier`, RoBERTa's and
        // MPNet's `classifier.out_proj`, or `score`.
        let classifier = [
            "classifier.weight",
            "classifier.out_proj.weight",
            "score.weight",
        ]
        .iter()
        .find_map(|n| self.tensors.get(*n))
        .ok_or_else(|| Error::MissingTensor {
            name: format!("{PEFT_PREFIX}classifier.weight (modules_to_save of a {head} adapter)"),
            files: self
                .folder
                .join("adapter_model.safetensors")
                .display()
                .to_string(),
        })?;
        let num_labels = classifier.dim(0)?;
        let labels = match &self.head {
            Some(h) => {
                let bad = || Error::BadConfig {
                    file: self.folder.join("head_config.json"),
                    field: "id2label".into(),
                    reason: format!("must name ids 0..{num_labels}, one per row of the classifier"),
                };
                let by_id = h
                    .id2label
                    .iter()
                    .map(|(k, v)| k.parse::<usize>().map(|k| (k, v.clone())))
                    .collect::<std::result::Result<BTreeMap<usize, String>, _>>()
                    .map_err(|_| bad())?;
                if by_id.keys().copied().ne(0..num_labels) {
                    return Err(bad());
                }
                by_id.into_values().collect()
            }
            None => (0..num_labels).map(|i| format!("LABEL_{i}")).collect(),
        };
        Ok(Some(AdapterHead {
            sequence,
            labels,
            problem_type: self.head.as_ref().and_then(|h| h.problem_type),
        }))
    }
}

/// The name of `name` in `base`: as is, or without its first segment (an adapter trained on
/// `BertForSequenceClassification` says `bert.encoder…`; a `BertModel` checkpoint `encoder…`).
fn base_name(base: &Weights, name: &str) -> Option<String> {
    if base.contains(name) {
        return Some(name.to_string());
    }
    let (_, rest) = name.split_once('.')?;
    base.contains(rest).then(|| rest.to_string())
}

//! Writes a trained classifier as a model folder that transformers' `from_pretrained`
//! loads unchanged: config.json, model.safetensors with transformers' tensor names, the
//! base model's tokenizer files, and a README.md model card.

use super::bert::Lora;
use super::data::LabelSet;
use super::metrics::ClassificationMetrics;
use super::seqeval::NerMetrics;
use super::TrainingArguments;
use crate::check::model_card;
use crate::error::{Error, Result};
use crate::hub::ModelFolder;
use candle_core::Tensor;
use safetensors::tensor::TensorView;
use safetensors::SafeTensors;
use std::collections::HashMap;
use std::path::Path;

/// The tokenizer files copied from the base folder when present (WordPiece, BPE and
/// SentencePiece layouts).
const TOKENIZER_FILES: [&str; 7] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "sentencepiece.bpe.model",
];

/// Which transformers head the folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassifierHead {
    /// `BertForSequenceClassification`: the classifier reads the pooler output.
    Sequence,
    /// `BertForTokenClassification`: the classifier reads every token (no pooler).
    Token,
}

impl ClassifierHead {
    fn architecture(self) -> &'static str {
        match self {
            ClassifierHead::Sequence => "BertForSequenceClassification",
            ClassifierHead::Token => "BertForTokenClassification",
        }
    }

    fn task(self) -> &'static str {
        match self {
            ClassifierHead::Sequence => "text-classification",
            ClassifierHead::Token => "token-classification",
        }
    }
}

/// Everything the folder records about a trained classifier.
#[derive(Debug, Clone)]
pub struct SequenceClassifier<'a> {
    pub head: ClassifierHead,
    /// The base model's folder (config, weights and tokenizer are taken from it).
    pub base: &'a ModelFolder,
    /// How the user named the base (`base_model` in the card).
    pub base_reference: &'a str,
    pub labels: &'a LabelSet,
    /// The trained tensors under `BertForSequenceClassification`'s names: at least
    /// `classifier.weight` `[num_labels, hidden]` and `classifier.bias` `[num_labels]`, and
    /// `bert.…` tensors that replace the base's after full fine-tuning.
    pub trained: Vec<(String, Tensor)>,
    /// The training data's names (`datasets` in the card).
    pub datasets: Vec<String>,
    /// The evaluation data's name and the kept epoch's metrics on it.
    pub evaluation: Option<(String, &'a ClassificationMetrics)>,
    /// Token classification: the evaluation data's name and seqeval's entity-level scores.
    pub ner_evaluation: Option<(String, &'a NerMetrics)>,
    pub method: &'a str,
    pub args: &'a TrainingArguments,
    pub best_epoch: usize,
}

/// Writes `BertForSequenceClassification` or `BertForTokenClassification` into `out`
/// (created if needed).
pub fn write_sequence_classifier(model: &SequenceClassifier, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config_path = model.base.require(
        "config.json",
        "the base model's config is the starting point",
    )?;
    let config_text =
        std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let mut config: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&config_text)
        .map_err(|e| Error::BadConfig {
            file: config_path.clone(),
            field: "(root)".into(),
            reason: e.to_string(),
        })?;
    let model_type = config
        .get("model_type")
        .and_then(|v| v.as_str())
        .unwrap_or_default();
    if model_type != "bert" {
        return Err(Error::UnsupportedArchitecture {
            name: format!("{model_type} (training writes BERT classifiers only so far)"),
            supported: "bert".into(),
        });
    }
    let id2label: serde_json::Map<String, serde_json::Value> = model
        .labels
        .names()
        .iter()
        .enumerate()
        .map(|(i, n)| (i.to_string(), n.clone().into()))
        .collect();
    let label2id: serde_json::Map<String, serde_json::Value> = model
        .labels
        .names()
        .iter()
        .enumerate()
        .map(|(i, n)| (n.clone(), i.into()))
        .collect();
    config.insert(
        "architectures".into(),
        serde_json::json!([model.head.architecture()]),
    );
    config.insert("id2label".into(), id2label.into());
    config.insert("label2id".into(), label2id.into());
    if model.head == ClassifierHead::Sequence {
        config.insert("problem_type".into(), "single_label_classification".into());
    }
    config.remove("_name_or_path");
    write_file(
        &out.join("config.json"),
        serde_json::to_string_pretty(&config).map_err(|e| Error::BadConfig {
            file: out.join("config.json"),
            field: "(root)".into(),
            reason: e.to_string(),
        })?,
    )?;

    write_weights(model, &out.join("model.safetensors"))?;

    for name in TOKENIZER_FILES {
        if let Some(source) = model.base.file(name) {
            let target = out.join(name);
            std::fs::copy(&source, &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    write_file(&out.join("README.md"), model_card_text(model, out)?)
}

fn write_file(path: &Path, contents: String) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// The base checkpoint's tensors under transformers' `bert.` names (bytes and dtypes
/// unchanged; a base's own head is dropped), with the trained tensors replacing or adding
/// to them.
fn write_weights(model: &SequenceClassifier, path: &Path) -> Result<()> {
    let files = model.base.weight_files()?;
    let buffers = files
        .iter()
        .map(|f| std::fs::read(f).map_err(|e| Error::io(f, e)))
        .collect::<Result<Vec<_>>>()?;
    let trained = model
        .trained
        .iter()
        // BertForTokenClassification has no pooler: a trainable twin that carried one along
        // (full or LoRA training) does not write it, or transformers reports unexpected keys.
        .filter(|(name, _)| {
            model.head == ClassifierHead::Sequence || !name.starts_with("bert.pooler.")
        })
        .map(|(name, t)| Ok((name.clone(), t.dims().to_vec(), f32_bytes(t)?)))
        .collect::<Result<Vec<_>>>()?;
    for required in ["classifier.weight", "classifier.bias"] {
        if !trained.iter().any(|(n, _, _)| n == required) {
            return Err(Error::MissingTensor {
                name: required.into(),
                files: "the trained tensors".into(),
            });
        }
    }
    let bad = |e: safetensors::SafeTensorError| Error::BadWeights {
        file: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut views: Vec<(String, TensorView)> = Vec::new();
    for (file, buffer) in files.iter().zip(&buffers) {
        let st = SafeTensors::deserialize(buffer).map_err(|e| Error::BadWeights {
            file: file.clone(),
            reason: e.to_string(),
        })?;
        for (name, view) in st.tensors() {
            let bare = name.strip_prefix("bert.").unwrap_or(&name);
            // BertForTokenClassification is built without a pooler.
            let parts: &[&str] = match model.head {
                ClassifierHead::Sequence => &["embeddings.", "encoder.", "pooler."],
                ClassifierHead::Token => &["embeddings.", "encoder."],
            };
            let is_base = parts.iter().any(|p| bare.starts_with(p));
            let full = format!("bert.{bare}");
            if is_base && !trained.iter().any(|(n, _, _)| *n == full) {
                views.push((full, view));
            }
        }
    }
    for (name, shape, bytes) in &trained {
        views.push((
            name.clone(),
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map_err(bad)?,
        ));
    }
    if model.head == ClassifierHead::Sequence
        && !views.iter().any(|(n, _)| n == "bert.pooler.dense.weight")
    {
        return Err(Error::MissingTensor {
            name: "pooler.dense.weight".into(),
            files: "BertForSequenceClassification classifies the pooler output".into(),
        });
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    // transformers refuses safetensors files whose metadata lacks format = "pt".
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(bad)
}

fn f32_bytes(t: &Tensor) -> Result<Vec<u8>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect())
}

/// A YAML string: JSON's double-quoted form is valid YAML.
fn yaml(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn model_card_text(model: &SequenceClassifier, out: &Path) -> Result<String> {
    // The license is inherited from the base's card: fine-tuning does not change it.
    let license = match model.base.file("README.md") {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            model_card::parse(&path, &text)?
                .and_then(|card| card.license)
                .map(|l| l.values())
        }
        None => None,
    };
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let mut y = vec!["---".to_string()];
    y.push(format!("base_model: {}", yaml(model.base_reference)));
    if let Some(license) = &license {
        match license.as_slice() {
            [one] => y.push(format!("license: {}", yaml(one))),
            many => {
                y.push("license:".into());
                y.extend(many.iter().map(|l| format!("- {}", yaml(l))));
            }
        }
    }
    y.push("datasets:".into());
    y.extend(model.datasets.iter().map(|d| format!("- {}", yaml(d))));
    y.push(format!("pipeline_tag: {}", model.head.task()));
    y.push("library_name: transformers".into());
    y.push(format!("tags:\n- girder\n- {}", model.head.task()));
    if let Some((data, metrics)) = &model.evaluation {
        y.push("model-index:".into());
        y.push(format!("- name: {}", yaml(&name)));
        y.push("  results:".into());
        y.push(
            "  - task:\n      type: text-classification\n      name: Text Classification".into(),
        );
        y.push(format!(
            "    dataset:\n      name: {}\n      type: {}",
            yaml(data),
            yaml(data)
        ));
        y.push(format!(
            "    metrics:\n    - type: accuracy\n      value: {:.4}\n    - type: f1\n      name: macro F1\n      value: {:.4}",
            metrics.accuracy, metrics.macro_f1
        ));
    }
    if let Some((data, metrics)) = &model.ner_evaluation {
        y.push("model-index:".into());
        y.push(format!("- name: {}", yaml(&name)));
        y.push("  results:".into());
        y.push(
            "  - task:\n      type: token-classification\n      name: Token Classification".into(),
        );
        y.push(format!(
            "    dataset:\n      name: {}\n      type: {}",
            yaml(data),
            yaml(data)
        ));
        y.push(format!(
            "    metrics:\n    - type: precision\n      value: {:.4}\n    - type: recall\n      value: {:.4}\n    - type: f1\n      value: {:.4}",
            metrics.micro.precision, metrics.micro.recall, metrics.micro.f1
        ));
    }
    y.push("---".into());
    let a = model.args;
    let mut body = format!(
        "\n# {name}\n\n`{}` fine-tuned by `girder train {} --method {}` on {}.\n\nLabels: {}.\n\n## Training\n\n| setting | value |\n|---|---|\n| epochs | {} (epoch {} kept) |\n| learning rate | {} (linear schedule, warm-up ratio {}) |\n| batch size | {} |\n| weight decay | {} |\n| classifier dropout | {} |\n| seed | {} |\n",
        model.base_reference,
        model.head.task(),
        model.method,
        model.datasets.join(", "),
        model.labels.listing(),
        a.num_train_epochs,
        model.best_epoch,
        a.learning_rate,
        a.warmup_ratio,
        a.per_device_train_batch_size,
        a.weight_decay,
        a.classifier_dropout,
        a.seed,
    );
    if let Some((data, metrics)) = &model.evaluation {
        body.push_str(&format!(
            "\n## Evaluation on {data} ({} examples)\n\n- accuracy: {:.4}\n- macro F1: {:.4}\n\nConfusion matrix (rows: gold, columns: predicted):\n\n```\n{}\n```\n",
            metrics.count,
            metrics.accuracy,
            metrics.macro_f1,
            metrics.confusion_table(model.labels.names())
        ));
    }
    if let Some((data, metrics)) = &model.ner_evaluation {
        body.push_str(&format!(
            "\n## Evaluation on {data} (entity level, seqeval default mode)\n\n| type | precision | recall | F1 | support |\n|---|---|---|---|---|\n"
        ));
        let rows = metrics
            .per_type
            .iter()
            .map(|(t, s)| (t.as_str(), s))
            .chain([("micro avg", &metrics.micro)]);
        for (kind, s) in rows {
            body.push_str(&format!(
                "| {kind} | {:.4} | {:.4} | {:.4} | {} |\n",
                s.precision, s.recall, s.f1, s.support
            ));
        }
    }
    if license.is_none() {
        body.push_str("\nThe base model's card names no license; none is stated here.\n");
    }
    Ok(y.join("\n") + "\n" + &body)
}

/// A LoRA adapter as PEFT writes it for `task_type = SEQ_CLS` or `TOKEN_CLS`.
#[derive(Debug, Clone)]
pub struct LoraAdapter<'a> {
    /// `base_model_name_or_path`: what PEFT loads the base from (a folder or a hub id).
    pub base_reference: &'a str,
    pub lora: &'a Lora,
    /// The adapters (`encoder.layer.N.attention.self.query.lora_A.weight`, …, names
    /// without `bert.`) and the classifier (`classifier.weight`, `classifier.bias`).
    pub tensors: Vec<(String, Tensor)>,
    pub datasets: Vec<String>,
    /// The classifier's label names, by id.
    pub labels: &'a [String],
    /// Sequence (`SEQ_CLS`) or token (`TOKEN_CLS`) classification.
    pub head: ClassifierHead,
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` with PEFT's names
/// (`base_model.model.bert.….lora_A.weight`, `base_model.model.classifier.weight`; the
/// classifier is one of PEFT's `modules_to_save`), plus a README.md card, and the label
/// names in `head_config.json` (PEFT's config has no place for them; `girder run --adapter`
/// reads them). PEFT loads the base as `AutoModelForSequenceClassification` with its default
/// two labels: more labels need `num_labels` passed to it.
pub fn write_lora_adapter(adapter: &LoraAdapter, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": match adapter.head {
            ClassifierHead::Sequence => "SEQ_CLS",
            ClassifierHead::Token => "TOKEN_CLS",
        },
        "base_model_name_or_path": adapter.base_reference,
        "r": adapter.lora.r,
        "lora_alpha": adapter.lora.lora_alpha,
        "lora_dropout": adapter.lora.lora_dropout,
        "target_modules": adapter.lora.target_modules,
        "modules_to_save": ["classifier", "score"],
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    let config_path = out.join("adapter_config.json");
    write_file(
        &config_path,
        serde_json::to_string_pretty(&config).map_err(|e| Error::BadConfig {
            file: config_path.clone(),
            field: "(root)".into(),
            reason: e.to_string(),
        })?,
    )?;
    let head_path = out.join("head_config.json");
    let head = serde_json::json!({
        "id2label": adapter.labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect::<serde_json::Map<_, _>>(),
        "label2id": adapter.labels.iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect::<serde_json::Map<_, _>>(),
        "problem_type": "single_label_classification",
    });
    write_file(
        &head_path,
        serde_json::to_string_pretty(&head).map_err(|e| Error::BadConfig {
            file: head_path.clone(),
            field: "(root)".into(),
            reason: e.to_string(),
        })?,
    )?;
    let path = out.join("adapter_model.safetensors");
    let owned = adapter
        .tensors
        .iter()
        .map(|(name, t)| {
            let full = if name.starts_with("classifier.") {
                format!("base_model.model.{name}")
            } else {
                format!("base_model.model.bert.{name}")
            };
            Ok((full, t.dims().to_vec(), f32_bytes(t)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let bad = |e: safetensors::SafeTensorError| Error::BadWeights {
        file: path.clone(),
        reason: e.to_string(),
    };
    let mut views = Vec::with_capacity(owned.len());
    for (name, shape, bytes) in &owned {
        views.push((
            name.clone(),
            TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes).map_err(bad)?,
        ));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), &path).map_err(bad)?;
    let mut card = vec![
        "---".to_string(),
        format!("base_model: {}", yaml(adapter.base_reference)),
        "library_name: peft".into(),
        format!("pipeline_tag: {}", adapter.head.task()),
        "datasets:".into(),
    ];
    card.extend(adapter.datasets.iter().map(|d| format!("- {}", yaml(d))));
    card.push("tags:\n- girder\n- lora\n---\n".into());
    card.push(format!(
        "# LoRA adapter for `{}`\n\nTrained by `girder train {} --method lora` (r {}, alpha {}, dropout {}, target modules {}).\n",
        adapter.base_reference,
        adapter.head.task(),
        adapter.lora.r,
        adapter.lora.lora_alpha,
        adapter.lora.lora_dropout,
        adapter.lora.target_modules.join(", ")
    ));
    write_file(&out.join("README.md"), card.join("\n"))
}

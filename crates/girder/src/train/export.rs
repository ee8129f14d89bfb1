//! Writes a trained classifier as a model folder that transformers' `from_pretrained`
//! loads unchanged: config.json (the base's, with the head class and its labels),
//! model.safetensors with transformers' tensor names, the base model's tokenizer files, and
//! a README.md model card; or, for LoRA, a PEFT adapter folder.

use super::data::LabelSet;
use super::metrics::ClassificationMetrics;
use super::seqeval::NerMetrics;
use super::TrainingArguments;
use crate::check::model_card;
use crate::error::{Error, Result};
use crate::hub::weights::write_safetensors;
use crate::hub::Lora;
use crate::models::Head;
use crate::pipelines::{Model, Task};
use candle_core::Tensor;
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

/// The pipeline a head serves, for the card.
fn task(head: Head) -> &'static str {
    Task::for_head(head).name()
}

/// Everything the folder records about a trained classifier.
#[derive(Debug, Clone)]
pub struct Classifier<'a> {
    /// The trained model: its config (head class, labels), head and base folder (whose
    /// tokenizer and card are taken).
    pub model: &'a Model,
    /// How the user named the base (`base_model` in the card).
    pub base_reference: &'a str,
    pub labels: &'a LabelSet,
    /// Every tensor under the class's checkpoint names ([`super::trainable::Trainable::checkpoint`]).
    pub tensors: Vec<(String, Tensor)>,
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

/// Writes the classifier's folder into `out` (created if needed).
pub fn write_classifier(classifier: &Classifier, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let model = classifier.model;
    let mut config = model.config.raw.clone();
    if let Some(map) = config.as_object_mut() {
        map.remove("_name_or_path");
    }
    let config_path = out.join("config.json");
    write_file(
        &config_path,
        serde_json::to_string_pretty(&config).map_err(|e| Error::BadConfig {
            file: config_path.clone(),
            field: "(root)".into(),
            reason: e.to_string(),
        })?,
    )?;
    write_safetensors(classifier.tensors.clone(), &out.join("model.safetensors"))?;
    for name in TOKENIZER_FILES {
        if let Some(source) = model.folder.file(name) {
            let target = out.join(name);
            std::fs::copy(&source, &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    write_file(&out.join("README.md"), model_card_text(classifier, out)?)
}

fn write_file(path: &Path, contents: String) -> Result<()> {
    std::fs::write(path, contents).map_err(|e| Error::io(path, e))
}

/// A YAML string: JSON's double-quoted form is valid YAML.
fn yaml(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

fn model_card_text(model: &Classifier, out: &Path) -> Result<String> {
    // The license is inherited from the base's card: fine-tuning does not change it.
    let license = match model.model.folder.file("README.md") {
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
    y.push(format!(
        "pipeline_tag: {}",
        task(model.model.encoder.head())
    ));
    y.push("library_name: transformers".into());
    y.push(format!(
        "tags:\n- girder\n- {}",
        task(model.model.encoder.head())
    ));
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
        task(model.model.encoder.head()),
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
    if model.method == super::Method::TopLayer.name() {
        let layers = model
            .model
            .config
            .num_hidden_layers()
            .map_or("the".to_string(), |n| n.to_string());
        body.push_str(&format!(
            "\nThe base's layers are kept up to layer {layers} (`num_hidden_layers`; any above it are dropped). The layers below the last kept one are the base's, frozen; the last kept layer, the pooler and the classifier were trained on what the frozen layers compute. The folder is a plain `{}` that transformers' `AutoModelForSequenceClassification` loads unchanged.\n",
            model.model.encoder.class_name()
        ));
    }
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
    /// The adapters (`bert.encoder.layer.N.attention.self.query.lora_A.weight`, …) and the
    /// head (`classifier.weight`, …) under the class's checkpoint names
    /// ([`super::trainable::Trainable::adapter`]).
    pub tensors: Vec<(String, Tensor)>,
    /// The head's modules, trained whole (PEFT's `modules_to_save`).
    pub modules_to_save: Vec<String>,
    pub datasets: Vec<String>,
    /// The classifier's label names, by id.
    pub labels: &'a [String],
    /// [`Head::SequenceClassification`] (`SEQ_CLS`) or [`Head::TokenClassification`]
    /// (`TOKEN_CLS`).
    pub head: Head,
    /// QLoRA: the block type the frozen base was quantized to while the adapters trained.
    pub quantized_base: Option<crate::layers::Quantization>,
}

/// Writes `adapter_config.json` and `adapter_model.safetensors` with PEFT's names
/// (`base_model.model.bert.….lora_A.weight`, `base_model.model.classifier.weight`; the head's
/// modules are PEFT's `modules_to_save`), plus a README.md card, and the label names in
/// `head_config.json` (PEFT's config has no place for them; `girder run --adapter` reads
/// them). PEFT loads the base as `AutoModelForSequenceClassification` with its default two
/// labels: more labels need `num_labels` passed to it.
pub fn write_lora_adapter(adapter: &LoraAdapter, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let config = serde_json::json!({
        "peft_type": "LORA",
        "task_type": match adapter.head {
            Head::TokenClassification => "TOKEN_CLS",
            _ => "SEQ_CLS",
        },
        "base_model_name_or_path": adapter.base_reference,
        "r": adapter.lora.r,
        "lora_alpha": adapter.lora.lora_alpha,
        "lora_dropout": adapter.lora.lora_dropout,
        "target_modules": adapter.lora.target_modules,
        "modules_to_save": adapter.modules_to_save,
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
    let named: Vec<(String, Tensor)> = adapter
        .tensors
        .iter()
        .map(|(name, t)| (format!("base_model.model.{name}"), t.clone()))
        .collect();
    write_safetensors(named, &out.join("adapter_model.safetensors"))?;
    let mut card = vec![
        "---".to_string(),
        format!("base_model: {}", yaml(adapter.base_reference)),
        "library_name: peft".into(),
        format!("pipeline_tag: {}", task(adapter.head)),
        "datasets:".into(),
    ];
    card.extend(adapter.datasets.iter().map(|d| format!("- {}", yaml(d))));
    let (method, tag) = match adapter.quantized_base {
        Some(_) => ("qlora", "- lora\n- qlora"),
        None => ("lora", "- lora"),
    };
    card.push(format!("tags:\n- girder\n{tag}\n---\n"));
    card.push(format!(
        "# LoRA adapter for `{}`\n\nTrained by `girder train {} --method {method}` (r {}, alpha {}, dropout {}, target modules {}).\n",
        adapter.base_reference,
        task(adapter.head),
        adapter.lora.r,
        adapter.lora.lora_alpha,
        adapter.lora.lora_dropout,
        adapter.lora.target_modules.join(", ")
    ));
    if let Some(q) = adapter.quantized_base {
        card.push(format!(
            "The base's linear layers were quantized to {} and frozen while the adapters trained (QLoRA); apply the adapter to the base in f32 (`girder run --adapter`).\n",
            q.name()
        ));
    }
    write_file(&out.join("README.md"), card.join("\n"))
}

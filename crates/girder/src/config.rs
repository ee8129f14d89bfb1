//! `config.json` and the other JSON files of a model folder.
//!
//! [`CommonConfig`] holds the fields every architecture shares (what AutoModel reads to
//! dispatch, and the label maps pipelines need). Each architecture parses its own
//! hyper-parameters from the same file with serde defaults copied from transformers'
//! `configuration_<arch>.py`. Errors name the file and the JSON path of the bad field.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reads a JSON file into `T`; a bad field is reported with its path (`id2label.3`).
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    parse_json(path, &text)
}

/// Parses JSON text that came from `path` (used in error messages).
pub fn parse_json<T: DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let de = &mut serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let field = if field == "." {
            "(document)".to_string()
        } else {
            field
        };
        Error::BadConfig {
            file: path.to_path_buf(),
            field,
            reason: inner.to_string(),
        }
    })
}

/// How a classifier's scores are meant, as transformers' `problem_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemType {
    Regression,
    SingleLabelClassification,
    MultiLabelClassification,
}

/// Where a config states its number of layers (DistilBERT: `n_layers`).
const LAYER_COUNT_KEYS: [&str; 2] = ["num_hidden_layers", "n_layers"];

/// The fields of config.json that are not specific to one architecture.
#[derive(Debug, Clone)]
pub struct CommonConfig {
    /// Where it was read from.
    pub path: PathBuf,
    /// `architectures`, e.g. `["BertForSequenceClassification"]`.
    pub architectures: Vec<String>,
    /// `model_type`, e.g. `"bert"`.
    pub model_type: Option<String>,
    /// `id2label` as a dense list (index = class id).
    pub id2label: Vec<String>,
    /// `problem_type`, if set.
    pub problem_type: Option<ProblemType>,
    /// `vocab_size`, if set.
    pub vocab_size: Option<usize>,
    /// `max_position_embeddings`, if set.
    pub max_position_embeddings: Option<usize>,
    /// `pad_token_id`, if set.
    pub pad_token_id: Option<u32>,
    /// The whole document, for architecture-specific parsing.
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
struct CommonFields {
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    problem_type: Option<ProblemType>,
    #[serde(default)]
    vocab_size: Option<usize>,
    #[serde(default)]
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

impl CommonConfig {
    /// Reads and validates `config.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let raw: serde_json::Value = parse_json(path, &text)?;
        if !raw.is_object() {
            return Err(Error::BadConfig {
                file: path.to_path_buf(),
                field: "(document)".into(),
                reason: "expected a JSON object".into(),
            });
        }
        let fields: CommonFields = parse_json(path, &text)?;
        let id2label = dense_labels(path, fields.id2label, fields.num_labels)?;
        Ok(CommonConfig {
            path: path.to_path_buf(),
            architectures: fields.architectures.unwrap_or_default(),
            model_type: fields.model_type,
            id2label,
            problem_type: fields.problem_type,
            vocab_size: fields.vocab_size,
            max_position_embeddings: fields.max_position_embeddings,
            pad_token_id: fields.pad_token_id,
            raw,
        })
    }

    /// The config of the same model as class `class_name` with these labels (by id), as
    /// transformers' `from_pretrained(..., id2label=...)` on a head class writes it:
    /// `architectures`, `id2label`, `label2id` and `num_labels`; `problem_type` becomes
    /// single-label classification for a sequence classifier; `classifier_dropout` is set
    /// when given.
    pub fn set_head(
        &mut self,
        class_name: &str,
        labels: &[String],
        sequence_classifier: bool,
        classifier_dropout: Option<f64>,
    ) {
        self.architectures = vec![class_name.to_string()];
        self.id2label = labels.to_vec();
        let Some(raw) = self.raw.as_object_mut() else {
            return;
        };
        raw.insert("architectures".into(), serde_json::json!([class_name]));
        let id2label: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (i.to_string(), l.clone().into()))
            .collect();
        let label2id: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .enumerate()
            .map(|(i, l)| (l.clone(), i.into()))
            .collect();
        raw.insert("id2label".into(), id2label.into());
        raw.insert("label2id".into(), label2id.into());
        raw.remove("num_labels");
        if sequence_classifier {
            self.problem_type = Some(ProblemType::SingleLabelClassification);
            raw.insert("problem_type".into(), "single_label_classification".into());
        }
        if let Some(p) = classifier_dropout {
            raw.insert("classifier_dropout".into(), p.into());
        }
    }

    /// Sets (or with `None` removes) `problem_type`.
    pub fn set_problem_type(&mut self, problem_type: Option<ProblemType>) {
        self.problem_type = problem_type;
        if let Some(raw) = self.raw.as_object_mut() {
            match problem_type.and_then(|p| serde_json::to_value(p).ok()) {
                Some(value) => raw.insert("problem_type".into(), value),
                None => raw.remove("problem_type"),
            };
        }
    }

    /// The number of layers (`num_hidden_layers`, DistilBERT's `n_layers`), when the config
    /// states it.
    pub fn num_hidden_layers(&self) -> Option<usize> {
        LAYER_COUNT_KEYS
            .into_iter()
            .find_map(|k| Some(self.raw.get(k)?.as_u64()? as usize))
    }

    /// Keeps the first `n` layers: the layer count (`num_hidden_layers`, DistilBERT's
    /// `n_layers`) becomes `n`, as transformers' `from_pretrained(..., num_hidden_layers=n)`
    /// sets it; more than the config has is an error.
    pub fn keep_layers(&mut self, n: usize) -> Result<()> {
        let bad = |field: &str, reason: String| Error::BadConfig {
            file: self.path.clone(),
            field: field.into(),
            reason,
        };
        let Some(raw) = self.raw.as_object_mut() else {
            return Err(bad("(root)", "expected a JSON object".into()));
        };
        let Some((key, layers)) = LAYER_COUNT_KEYS
            .into_iter()
            .find_map(|k| Some((k, raw.get(k)?.as_u64()? as usize)))
        else {
            return Err(bad(
                "num_hidden_layers",
                "absent: there is no layer count to keep the first layers of".into(),
            ));
        };
        if n > layers {
            return Err(Error::InvalidOption {
                option: "num_hidden_layers".into(),
                reason: format!(
                    "{n} layers asked for, but {} has {layers}",
                    self.path.display()
                ),
            });
        }
        raw.insert(key.into(), n.into());
        Ok(())
    }

    /// `initializer_range` (the standard deviation of new weights), 0.02 when unset.
    pub fn initializer_range(&self) -> f64 {
        self.raw
            .get("initializer_range")
            .and_then(|v| v.as_f64())
            .unwrap_or(0.02)
    }

    /// Parses the architecture-specific view of the same document.
    pub fn parse_as<T: DeserializeOwned>(&self) -> Result<T> {
        let text = self.raw.to_string();
        parse_json(&self.path, &text)
    }
}

/// `{"0": "NEG", "1": "POS"}` → `["NEG", "POS"]`; ids must be 0..n without gaps.
/// Without `id2label`, transformers names `num_labels` classes `LABEL_0`…
fn dense_labels(
    path: &Path,
    id2label: Option<BTreeMap<String, String>>,
    num_labels: Option<usize>,
) -> Result<Vec<String>> {
    let bad = |reason: String| Error::BadConfig {
        file: path.to_path_buf(),
        field: "id2label".into(),
        reason,
    };
    let Some(map) = id2label else {
        return Ok((0..num_labels.unwrap_or(0))
            .map(|i| format!("LABEL_{i}"))
            .collect());
    };
    let n = map.len();
    let mut labels = vec![None; n];
    for (key, label) in map {
        let id: usize = key
            .parse()
            .map_err(|_| bad(format!("key `{key}` is not a class id")))?;
        let slot = labels
            .get_mut(id)
            .ok_or_else(|| bad(format!("class id {id} is out of range 0..{n}")))?;
        *slot = Some(label);
    }
    labels
        .into_iter()
        .enumerate()
        .map(|(i, l)| l.ok_or_else(|| bad(format!("class id {i} has no label"))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_become_a_dense_list() {
        let p = Path::new("config.json");
        let map: BTreeMap<String, String> = [("1", "POS"), ("0", "NEG")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(dense_labels(p, Some(map), None).unwrap(), ["NEG", "POS"]);
        assert_eq!(
            dense_labels(p, None, Some(2)).unwrap(),
            ["LABEL_0", "LABEL_1"]
        );
        let gap: BTreeMap<String, String> = [("0", "A"), ("2", "C")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert!(dense_labels(p, Some(gap), None).is_err());
    }

    #[test]
    fn bad_field_is_named() {
        let err = parse_json::<CommonFields>(Path::new("config.json"), r#"{"vocab_size": "many"}"#)
            .err()
            .unwrap();
        let msg = err.to_string();
        assert!(msg.contains("vocab_size"), "{msg}");
    }
}

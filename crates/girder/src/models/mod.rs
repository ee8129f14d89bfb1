//! The architectures girder implements, and the registry that picks one from config.json
//! the way transformers' AutoModel does: `architectures[0]` first, else `model_type`.
//!
//! [`ARCHITECTURES`] is the only table that lists architectures. Models never see text,
//! files or threads: they get [`Weights`], a config and a [`RaggedBatch`].

pub mod bert;
pub mod distilbert;
pub mod roberta;

use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use candle_core::Tensor;

/// What an encoder's base model returns.
#[derive(Debug, Clone)]
pub struct EncoderOutput {
    /// `[total_tokens, hidden]`
    pub last_hidden_state: Tensor,
    /// `[num_seqs, hidden]`, for models with a pooler (`tanh(W·h[CLS])`).
    pub pooler_output: Option<Tensor>,
}

/// The forward pass every encoder class implements.
pub trait EncoderForward: Send + Sync {
    /// The base model on a packed batch.
    fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput>;

    /// The head on top of [`encode`](Self::encode)'s output. Sequence classifiers return
    /// `[num_seqs, num_labels]`; token-level heads return one row per token, restricted to
    /// `rows` (indices into the packed tokens) when given: `[rows, num_labels | vocab]`.
    fn head(
        &self,
        out: &EncoderOutput,
        batch: &RaggedBatch,
        rows: Option<&[u32]>,
    ) -> Result<Tensor> {
        let _ = (out, batch, rows);
        Err(Error::TaskMismatch {
            model: "this model".into(),
            task: "a head".into(),
            reason: "it is a base model without a head".into(),
        })
    }
}

/// Which head a checkpoint carries (the suffix of its transformers class name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Head {
    /// `…Model`: hidden states (and pooler output).
    Base,
    /// `…ForSequenceClassification`
    SequenceClassification,
    /// `…ForTokenClassification`
    TokenClassification,
    /// `…ForMaskedLM`
    MaskedLM,
}

impl Head {
    const ALL: [Head; 4] = [
        Head::Base,
        Head::SequenceClassification,
        Head::TokenClassification,
        Head::MaskedLM,
    ];

    fn class_suffix(self) -> &'static str {
        match self {
            Head::Base => "Model",
            Head::SequenceClassification => "ForSequenceClassification",
            Head::TokenClassification => "ForTokenClassification",
            Head::MaskedLM => "ForMaskedLM",
        }
    }
}

/// The implementation (one file per family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Bert,
    DistilBert,
    Roberta,
}

/// One row of the registry.
#[derive(Debug)]
pub struct Architecture {
    /// `model_type` values of config.json.
    pub model_types: &'static [&'static str],
    /// transformers' class-name prefix: `Bert` + `ForMaskedLM`.
    pub class_prefix: &'static str,
    /// The implementation.
    pub family: Family,
}

/// Every architecture girder supports.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        model_types: &["bert"],
        class_prefix: "Bert",
        family: Family::Bert,
    },
    Architecture {
        model_types: &["distilbert"],
        class_prefix: "DistilBert",
        family: Family::DistilBert,
    },
    Architecture {
        model_types: &["roberta"],
        class_prefix: "Roberta",
        family: Family::Roberta,
    },
    Architecture {
        model_types: &["xlm-roberta"],
        class_prefix: "XLMRoberta",
        family: Family::Roberta,
    },
];

/// Every supported class name, for error messages and docs.
pub fn supported_classes() -> Vec<String> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| {
            Head::ALL
                .iter()
                .map(move |h| format!("{}{}", a.class_prefix, h.class_suffix()))
        })
        .collect()
}

/// AutoModel dispatch: `architectures[0]` names class and head; without it, `model_type`
/// names the family and the base model is used.
pub fn resolve(config: &CommonConfig) -> Result<(&'static Architecture, Head, String)> {
    let unsupported = |name: &str| Error::UnsupportedArchitecture {
        name: name.to_string(),
        supported: supported_classes().join(", "),
    };
    if let Some(class) = config.architectures.first() {
        for arch in ARCHITECTURES {
            for head in Head::ALL {
                if class.strip_prefix(arch.class_prefix) == Some(head.class_suffix()) {
                    return Ok((arch, head, class.clone()));
                }
            }
        }
        return Err(unsupported(class));
    }
    match &config.model_type {
        Some(model_type) => ARCHITECTURES
            .iter()
            .find(|a| a.model_types.contains(&model_type.as_str()))
            .map(|a| (a, Head::Base, format!("{}Model", a.class_prefix)))
            .ok_or_else(|| unsupported(model_type)),
        None => Err(Error::BadConfig {
            file: config.path.clone(),
            field: "architectures".into(),
            reason:
                "neither `architectures` nor `model_type` is set, so the architecture is unknown"
                    .into(),
        }),
    }
}

/// A loaded encoder with its head, dispatched from config.json.
pub struct EncoderModel {
    class_name: String,
    family: Family,
    head: Head,
    position_limit: usize,
    vocab_size: usize,
    inner: Box<dyn EncoderForward>,
}

impl std::fmt::Debug for EncoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncoderModel")
            .field("class_name", &self.class_name)
            .field("head", &self.head)
            .finish()
    }
}

impl EncoderModel {
    /// Builds the class named by the config from the checkpoint.
    pub fn load(config: &CommonConfig, weights: &Weights) -> Result<Self> {
        let (arch, head, class_name) = resolve(config)?;
        let labels = |head: Head| -> Result<()> {
            if matches!(
                head,
                Head::SequenceClassification | Head::TokenClassification
            ) && config.id2label.is_empty()
            {
                return Err(Error::BadConfig {
                    file: config.path.clone(),
                    field: "id2label".into(),
                    reason: format!("{class_name} needs labels (id2label or num_labels)"),
                });
            }
            Ok(())
        };
        labels(head)?;
        let (inner, position_limit, vocab_size): (Box<dyn EncoderForward>, usize, usize) =
            match arch.family {
                Family::Bert => {
                    let cfg = bert::Config::from_common(config)?;
                    let inner: Box<dyn EncoderForward> = match head {
                        Head::Base => Box::new(bert::BertModel::load(weights, &cfg, config, true)?),
                        Head::SequenceClassification => Box::new(
                            bert::BertForSequenceClassification::load(weights, &cfg, config)?,
                        ),
                        Head::TokenClassification => Box::new(
                            bert::BertForTokenClassification::load(weights, &cfg, config)?,
                        ),
                        Head::MaskedLM => {
                            Box::new(bert::BertForMaskedLM::load(weights, &cfg, config)?)
                        }
                    };
                    (inner, cfg.max_position_embeddings, cfg.vocab_size)
                }
                Family::DistilBert => {
                    let cfg = distilbert::Config::from_common(config)?;
                    let inner: Box<dyn EncoderForward> = match head {
                        Head::Base => {
                            Box::new(distilbert::DistilBertModel::load(weights, &cfg, config)?)
                        }
                        Head::SequenceClassification => {
                            Box::new(distilbert::DistilBertForSequenceClassification::load(
                                weights, &cfg, config,
                            )?)
                        }
                        Head::TokenClassification => {
                            Box::new(distilbert::DistilBertForTokenClassification::load(
                                weights, &cfg, config,
                            )?)
                        }
                        Head::MaskedLM => Box::new(distilbert::DistilBertForMaskedLM::load(
                            weights, &cfg, config,
                        )?),
                    };
                    (inner, cfg.max_position_embeddings, cfg.vocab_size)
                }
                Family::Roberta => {
                    let cfg = bert::Config::from_common(config)?;
                    let inner: Box<dyn EncoderForward> = match head {
                        Head::Base => {
                            Box::new(roberta::RobertaModel::load(weights, &cfg, config, true)?)
                        }
                        Head::SequenceClassification => Box::new(
                            roberta::RobertaForSequenceClassification::load(weights, &cfg, config)?,
                        ),
                        Head::TokenClassification => Box::new(
                            roberta::RobertaForTokenClassification::load(weights, &cfg, config)?,
                        ),
                        Head::MaskedLM => {
                            Box::new(roberta::RobertaForMaskedLM::load(weights, &cfg, config)?)
                        }
                    };
                    (inner, roberta::position_limit(&cfg), cfg.vocab_size)
                }
            };
        Ok(EncoderModel {
            class_name,
            family: arch.family,
            head,
            position_limit,
            vocab_size,
            inner,
        })
    }

    /// transformers' class name, e.g. `BertForTokenClassification`.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// The implementation family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// The head the checkpoint carries.
    pub fn head(&self) -> Head {
        self.head
    }

    /// How many tokens (special tokens included) the position embeddings can index.
    pub fn position_limit(&self) -> usize {
        self.position_limit
    }

    /// Rows of the word-embedding matrix the config declares.
    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// The base model's output on a packed batch.
    pub fn encode(&self, batch: &RaggedBatch) -> Result<EncoderOutput> {
        self.inner.encode(batch)
    }

    /// The head's logits for an already-encoded batch (see [`EncoderForward::head`]).
    pub fn head_logits(
        &self,
        out: &EncoderOutput,
        batch: &RaggedBatch,
        rows: Option<&[u32]>,
    ) -> Result<Tensor> {
        if self.head == Head::Base {
            return Err(Error::TaskMismatch {
                model: self.class_name.clone(),
                task: "a head".into(),
                reason: "it is a base model without a head".into(),
            });
        }
        self.inner.head(out, batch, rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> CommonConfig {
        let dir = std::env::temp_dir().join(format!(
            "girder-models-{}-{}",
            std::process::id(),
            json.len()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.json");
        std::fs::write(&path, json).unwrap();
        CommonConfig::from_file(&path).unwrap()
    }

    #[test]
    fn dispatch_follows_automodel() {
        let (a, h, _) =
            resolve(&config(r#"{"architectures": ["XLMRobertaForMaskedLM"]}"#)).unwrap();
        assert_eq!((a.family, h), (Family::Roberta, Head::MaskedLM));
        let (a, h, _) = resolve(&config(r#"{"model_type": "distilbert"}"#)).unwrap();
        assert_eq!((a.family, h), (Family::DistilBert, Head::Base));
        let err = resolve(&config(r#"{"architectures": ["GPTJForCausalLM"]}"#)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("GPTJForCausalLM") && msg.contains("BertForMaskedLM"),
            "{msg}"
        );
    }
}

//! The registry: one row per architecture, and the only table that lists them.
//!
//! A row holds everything girder knows of an architecture outside its model file: the
//! `model_type` values and `architectures` class names of config.json (AutoModel's dispatch
//! keys), the kind of model, the heads each class carries, where position ids start, the
//! word-embedding tensor the guard reads, the GGUF architecture name with its tensor-name
//! map, and the constructors. Adding an architecture is a model file, one row here, and
//! fixtures. llama.cpp keeps its architectures the same way (`llm_arch` and
//! `LLM_TENSOR_NAMES`).

use super::{bart, bert, distilbert, gemma3, gpt2, llama, marian, mpnet, roberta, t5, whisper};
use super::{DecoderForward, EncoderForward, Head, Kind, Seq2SeqForward};
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::gguf::{GgufFile, TensorNames};
use crate::hub::Weights;

/// Builds an encoder class with its head from a checkpoint.
pub type EncoderConstructor = fn(&Weights, &CommonConfig, Head) -> Result<Box<dyn EncoderForward>>;
/// Builds a causal language model from a checkpoint and its config.json.
pub type DecoderConstructor = fn(&Weights, &CommonConfig) -> Result<Box<dyn DecoderForward>>;
/// Builds a causal language model from a GGUF file's metadata and tensors.
pub type GgufConstructor = fn(&GgufFile, &Weights) -> Result<Box<dyn DecoderForward>>;
/// Builds an encoder-decoder with its generation head from a checkpoint and its config.json.
pub type Seq2SeqConstructor = fn(&Weights, &CommonConfig) -> Result<Box<dyn Seq2SeqForward>>;

/// How an architecture is built: by kind, each with its constructor.
#[derive(Clone, Copy)]
pub enum Constructor {
    Encoder(EncoderConstructor),
    Decoder(DecoderConstructor),
    /// An encoder-decoder; `classifier` builds its sequence classifier (BART's, whose
    /// encoder and decoder both read the text), run as an encoder is.
    EncoderDecoder {
        generation: Seq2SeqConstructor,
        classifier: Option<EncoderConstructor>,
    },
}

impl Constructor {
    /// The constructor of a class with `head` run as an encoder: an encoder's, or an
    /// encoder-decoder's sequence classifier.
    pub fn encoder(self, head: Head) -> Option<EncoderConstructor> {
        match self {
            Constructor::Encoder(build) => Some(build),
            Constructor::EncoderDecoder { classifier, .. } if head.kind() == Kind::Encoder => {
                classifier
            }
            _ => None,
        }
    }
}

impl std::fmt::Debug for Constructor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Constructor::Encoder(_) => "Constructor::Encoder",
            Constructor::Decoder(_) => "Constructor::Decoder",
            Constructor::EncoderDecoder { .. } => "Constructor::EncoderDecoder",
        })
    }
}

/// Where position ids start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PositionOffset {
    /// At 0 (BERT, DistilBERT, GPT-2; decoders count from their cache).
    Zero,
    /// After `padding_idx` (config.json's `pad_token_id`, else `default`): transformers'
    /// `create_position_ids_from_input_ids` (RoBERTa, XLM-RoBERTa), so `padding_idx + 1`
    /// rows of the position table are never used by a real token.
    AfterPadding { default: u32 },
    /// After a `padding_idx` the architecture fixes (MPNet's is 1 whatever the config says).
    AfterFixedPadding(u32),
}

impl PositionOffset {
    /// Rows of the position table that no token can use under `config`.
    pub fn rows(self, config: &CommonConfig) -> usize {
        match self {
            PositionOffset::Zero => 0,
            PositionOffset::AfterPadding { default } => {
                config.pad_token_id.unwrap_or(default) as usize + 1
            }
            PositionOffset::AfterFixedPadding(padding_idx) => padding_idx as usize + 1,
        }
    }
}

/// How an architecture is stored in a GGUF file.
#[derive(Debug, Clone, Copy)]
pub struct GgufFormat {
    /// `general.architecture`.
    pub architecture: &'static str,
    /// llama.cpp's tensor names → transformers' names.
    pub tensor_names: &'static TensorNames,
    /// The converter permuted the rows of q and k for its interleaved RoPE
    /// (`LlamaModel.permute` in llama.cpp's `convert_hf_to_gguf.py`); undone on load.
    pub permuted_qk: bool,
    /// The family's chat template, for files that carry none (`tokenizer.chat_template`
    /// absent, as in Gemma 3 GGUFs converted from the base model).
    pub default_chat_template: Option<&'static str>,
    pub build: GgufConstructor,
}

/// One row of the registry.
#[derive(Debug)]
pub struct Architecture {
    /// The family, as the README's table of supported models names it.
    pub name: &'static str,
    /// `model_type` values of config.json.
    pub model_types: &'static [&'static str],
    pub kind: Kind,
    /// transformers' classes (`architectures[0]` of config.json) and the head each carries;
    /// the first is the class a config with only `model_type` gets.
    pub classes: &'static [(&'static str, Head)],
    pub position_offset: PositionOffset,
    /// The word-embedding matrix in a base checkpoint (head checkpoints add the base
    /// model's prefix), whose rows the guard reads.
    pub embedding_tensor: &'static str,
    /// transformers' `base_model_prefix`: where a head class keeps the base model's tensors
    /// (`bert.encoder…`).
    pub base_model_prefix: &'static str,
    /// The top-level modules of the heads (`classifier`, DistilBERT's `pre_classifier`): what
    /// head-only and LoRA training train, PEFT's `modules_to_save`.
    pub head_modules: &'static [&'static str],
    /// The linear layers LoRA adapts by default: the attention's query and value projections
    /// (PEFT's `TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING` where it names the family).
    pub lora_target_modules: &'static [&'static str],
    /// How llama.cpp stores the architecture, when girder reads it from GGUF.
    pub gguf: Option<GgufFormat>,
    pub constructor: Constructor,
}

/// The four classes of an encoder family: `{prefix}Model`, `…ForSequenceClassification`,
/// `…ForTokenClassification`, `…ForMaskedLM`.
macro_rules! encoder_classes {
    ($prefix:literal) => {
        &[
            (concat!($prefix, "Model"), Head::Base),
            (
                concat!($prefix, "ForSequenceClassification"),
                Head::SequenceClassification,
            ),
            (
                concat!($prefix, "ForTokenClassification"),
                Head::TokenClassification,
            ),
            (concat!($prefix, "ForMaskedLM"), Head::MaskedLM),
        ]
    };
}

/// Every architecture girder implements.
pub const ARCHITECTURES: &[Architecture] = &[
    Architecture {
        name: "BERT (and MiniLM)",
        model_types: &["bert"],
        kind: Kind::Encoder,
        classes: encoder_classes!("Bert"),
        position_offset: PositionOffset::Zero,
        embedding_tensor: "embeddings.word_embeddings.weight",
        base_model_prefix: bert::BASE_MODEL_PREFIX,
        head_modules: &["classifier", "cls"],
        lora_target_modules: &["query", "value"],
        gguf: None,
        constructor: Constructor::Encoder(bert::load),
    },
    Architecture {
        name: "DistilBERT",
        model_types: &["distilbert"],
        kind: Kind::Encoder,
        classes: encoder_classes!("DistilBert"),
        position_offset: PositionOffset::Zero,
        embedding_tensor: "embeddings.word_embeddings.weight",
        base_model_prefix: distilbert::BASE_MODEL_PREFIX,
        head_modules: &[
            "pre_classifier",
            "classifier",
            "vocab_transform",
            "vocab_layer_norm",
            "vocab_projector",
        ],
        lora_target_modules: &["q_lin", "v_lin"],
        gguf: None,
        constructor: Constructor::Encoder(distilbert::load),
    },
    Architecture {
        name: "RoBERTa",
        model_types: &["roberta"],
        kind: Kind::Encoder,
        classes: encoder_classes!("Roberta"),
        position_offset: PositionOffset::AfterPadding {
            default: roberta::DEFAULT_PADDING_IDX,
        },
        embedding_tensor: "embeddings.word_embeddings.weight",
        base_model_prefix: roberta::BASE_MODEL_PREFIX,
        head_modules: &["classifier", "lm_head"],
        lora_target_modules: &["query", "value"],
        gguf: None,
        constructor: Constructor::Encoder(roberta::load),
    },
    Architecture {
        name: "XLM-RoBERTa",
        model_types: &["xlm-roberta"],
        kind: Kind::Encoder,
        classes: encoder_classes!("XLMRoberta"),
        position_offset: PositionOffset::AfterPadding {
            default: roberta::DEFAULT_PADDING_IDX,
        },
        embedding_tensor: "embeddings.word_embeddings.weight",
        base_model_prefix: roberta::BASE_MODEL_PREFIX,
        head_modules: &["classifier", "lm_head"],
        lora_target_modules: &["query", "value"],
        gguf: None,
        constructor: Constructor::Encoder(roberta::load),
    },
    Architecture {
        name: "MPNet",
        model_types: &["mpnet"],
        kind: Kind::Encoder,
        classes: encoder_classes!("MPNet"),
        position_offset: PositionOffset::AfterFixedPadding(mpnet::PADDING_IDX),
        embedding_tensor: "embeddings.word_embeddings.weight",
        base_model_prefix: mpnet::BASE_MODEL_PREFIX,
        head_modules: &["classifier", "lm_head"],
        lora_target_modules: &["q", "v"],
        gguf: None,
        constructor: Constructor::Encoder(mpnet::load),
    },
    Architecture {
        name: "GPT-2",
        model_types: &["gpt2"],
        kind: Kind::Decoder,
        classes: &[("GPT2LMHeadModel", Head::CausalLM)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "transformer.wte.weight",
        base_model_prefix: "transformer",
        head_modules: &["lm_head"],
        lora_target_modules: &["c_attn"],
        gguf: None,
        constructor: Constructor::Decoder(gpt2::load),
    },
    Architecture {
        name: "LLaMA (SmolLM, TinyLlama, Llama 2/3)",
        model_types: &["llama"],
        kind: Kind::Decoder,
        classes: &[("LlamaForCausalLM", Head::CausalLM)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "model.embed_tokens.weight",
        base_model_prefix: "model",
        head_modules: &["lm_head"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: Some(GgufFormat {
            architecture: "llama",
            tensor_names: &llama::GGUF_TENSOR_NAMES,
            permuted_qk: true,
            default_chat_template: None,
            build: llama::load_gguf,
        }),
        constructor: Constructor::Decoder(llama::load),
    },
    Architecture {
        name: "Mistral",
        model_types: &["mistral"],
        kind: Kind::Decoder,
        classes: &[("MistralForCausalLM", Head::CausalLM)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "model.embed_tokens.weight",
        base_model_prefix: "model",
        head_modules: &["lm_head"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: None,
        constructor: Constructor::Decoder(llama::load),
    },
    Architecture {
        name: "Qwen2 (Qwen2.5)",
        model_types: &["qwen2"],
        kind: Kind::Decoder,
        classes: &[("Qwen2ForCausalLM", Head::CausalLM)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "model.embed_tokens.weight",
        base_model_prefix: "model",
        head_modules: &["lm_head"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: Some(GgufFormat {
            architecture: "qwen2",
            tensor_names: &llama::GGUF_TENSOR_NAMES,
            permuted_qk: false,
            default_chat_template: None,
            build: llama::load_gguf,
        }),
        constructor: Constructor::Decoder(llama::load),
    },
    Architecture {
        name: "Gemma 3 (text)",
        model_types: &["gemma3_text"],
        kind: Kind::Decoder,
        classes: &[("Gemma3ForCausalLM", Head::CausalLM)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "model.embed_tokens.weight",
        base_model_prefix: "model",
        head_modules: &["lm_head"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: Some(GgufFormat {
            architecture: "gemma3",
            tensor_names: &gemma3::GGUF_TENSOR_NAMES,
            permuted_qk: false,
            default_chat_template: Some(gemma3::CHAT_TEMPLATE),
            build: gemma3::load_gguf,
        }),
        constructor: Constructor::Decoder(gemma3::load),
    },
    Architecture {
        name: "T5 (and FLAN-T5, T5 v1.1)",
        model_types: &["t5"],
        kind: Kind::EncoderDecoder,
        classes: &[
            ("T5ForConditionalGeneration", Head::Seq2SeqLM),
            // Old configs name the same model so.
            ("T5WithLMHeadModel", Head::Seq2SeqLM),
        ],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "shared.weight",
        base_model_prefix: "transformer",
        head_modules: &["lm_head"],
        lora_target_modules: &["q", "v"],
        gguf: None,
        constructor: Constructor::EncoderDecoder {
            generation: t5::load,
            classifier: None,
        },
    },
    Architecture {
        name: "BART",
        model_types: &["bart"],
        kind: Kind::EncoderDecoder,
        classes: &[
            ("BartForConditionalGeneration", Head::Seq2SeqLM),
            // bart-large and bart-base name the base class; its LM head is tied to the
            // shared embeddings, as AutoModelForSeq2SeqLM loads it.
            ("BartModel", Head::Seq2SeqLM),
            (
                "BartForSequenceClassification",
                Head::SequenceClassification,
            ),
        ],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "shared.weight",
        base_model_prefix: bart::BASE_MODEL_PREFIX,
        head_modules: &["classification_head", "lm_head"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: None,
        constructor: Constructor::EncoderDecoder {
            generation: bart::load,
            classifier: Some(bart::load_classifier),
        },
    },
    Architecture {
        name: "Marian (OPUS-MT)",
        model_types: &["marian"],
        kind: Kind::EncoderDecoder,
        classes: &[("MarianMTModel", Head::Seq2SeqLM)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "shared.weight",
        base_model_prefix: bart::BASE_MODEL_PREFIX,
        head_modules: &["lm_head"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: None,
        constructor: Constructor::EncoderDecoder {
            generation: marian::load,
            classifier: None,
        },
    },
    Architecture {
        name: "Whisper",
        model_types: &["whisper"],
        kind: Kind::EncoderDecoder,
        classes: &[("WhisperForConditionalGeneration", Head::SpeechSeq2Seq)],
        position_offset: PositionOffset::Zero,
        embedding_tensor: "decoder.embed_tokens.weight",
        base_model_prefix: "model",
        head_modules: &["proj_out"],
        lora_target_modules: &["q_proj", "v_proj"],
        gguf: None,
        constructor: Constructor::EncoderDecoder {
            generation: whisper::load,
            classifier: None,
        },
    },
];

/// What config.json resolves to: the row, the class and its head.
#[derive(Debug, Clone, Copy)]
pub struct Resolved {
    pub architecture: &'static Architecture,
    /// transformers' class name, e.g. `BertForTokenClassification`.
    pub class_name: &'static str,
    pub head: Head,
}

impl Resolved {
    /// The base model of the same architecture (its first class, `…Model` for encoders).
    pub fn base(self) -> Resolved {
        let (class_name, head) = self.architecture.classes[0];
        Resolved {
            class_name,
            head,
            ..self
        }
    }
}

/// Every supported class name, for error messages and docs.
pub fn supported_classes() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .flat_map(|a| a.classes.iter().map(|(class, _)| *class))
        .collect()
}

/// The GGUF architectures girder reads, for error messages.
pub fn supported_gguf_architectures() -> Vec<&'static str> {
    ARCHITECTURES
        .iter()
        .filter_map(|a| a.gguf.map(|g| g.architecture))
        .collect()
}

/// AutoModel's dispatch: `architectures[0]` names the class and its head; without it,
/// `model_type` names the family, whose first class (the base model) is used.
///
/// ```
/// # fn main() -> girder::Result<()> {
/// use girder::config::CommonConfig;
/// use girder::models::{registry, Head, Kind};
/// let config = CommonConfig::from_file("tests/fixtures/roberta-tokcls/config.json".as_ref())?;
/// let resolved = registry::resolve(&config)?;
/// assert_eq!(resolved.class_name, "RobertaForTokenClassification");
/// assert_eq!((resolved.architecture.kind, resolved.head), (Kind::Encoder, Head::TokenClassification));
/// # Ok(())
/// # }
/// ```
pub fn resolve(config: &CommonConfig) -> Result<Resolved> {
    let unsupported = |name: &str| Error::UnsupportedArchitecture {
        name: name.to_string(),
        supported: supported_classes().join(", "),
    };
    if let Some(class) = config.architectures.first() {
        return ARCHITECTURES
            .iter()
            .find_map(|architecture| {
                architecture
                    .classes
                    .iter()
                    .find(|(name, _)| name == class)
                    .map(|&(class_name, head)| Resolved {
                        architecture,
                        class_name,
                        head,
                    })
            })
            .ok_or_else(|| unsupported(class));
    }
    match &config.model_type {
        Some(model_type) => ARCHITECTURES
            .iter()
            .find(|a| a.model_types.contains(&model_type.as_str()))
            .map(|architecture| {
                let (class_name, head) = architecture.classes[0];
                Resolved {
                    architecture,
                    class_name,
                    head,
                }
            })
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

/// The row that reads GGUF files of `general.architecture` = `name`.
pub fn resolve_gguf(gguf: &GgufFile) -> Result<(&'static Architecture, GgufFormat)> {
    let name = gguf.architecture();
    ARCHITECTURES
        .iter()
        .find_map(|a| a.gguf.filter(|g| g.architecture == name).map(|g| (a, g)))
        .ok_or_else(|| Error::UnsupportedGguf {
            file: gguf.path().to_path_buf(),
            what: format!(
                "architecture `{name}`; supported: {}",
                supported_gguf_architectures().join(", ")
            ),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> CommonConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        CommonConfig::from_file(&path).unwrap()
    }

    #[test]
    fn dispatch_follows_automodel() {
        let r = resolve(&config(r#"{"architectures": ["XLMRobertaForMaskedLM"]}"#)).unwrap();
        assert_eq!(
            (r.architecture.name, r.head),
            ("XLM-RoBERTa", Head::MaskedLM)
        );
        let r = resolve(&config(r#"{"model_type": "distilbert"}"#)).unwrap();
        assert_eq!((r.class_name, r.head), ("DistilBertModel", Head::Base));
        let r = resolve(&config(r#"{"model_type": "qwen2"}"#)).unwrap();
        assert_eq!(
            (r.class_name, r.architecture.kind),
            ("Qwen2ForCausalLM", Kind::Decoder)
        );
        let err = resolve(&config(r#"{"architectures": ["GPTJForCausalLM"]}"#)).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("GPTJForCausalLM")
                && msg.contains("BertForMaskedLM")
                && msg.contains("LlamaForCausalLM"),
            "{msg}"
        );
    }

    #[test]
    fn every_class_and_model_type_is_listed_once() {
        let mut classes = supported_classes();
        let n = classes.len();
        classes.sort();
        classes.dedup();
        assert_eq!(classes.len(), n, "a class name appears in two rows");
        let mut types: Vec<&str> = ARCHITECTURES
            .iter()
            .flat_map(|a| a.model_types.iter().copied())
            .collect();
        let n = types.len();
        types.sort();
        types.dedup();
        assert_eq!(types.len(), n, "a model_type appears in two rows");
        for a in ARCHITECTURES {
            let kinds_of_heads =
                |kind: Kind| a.classes.iter().filter(move |(_, h)| h.kind() == kind);
            match a.constructor {
                Constructor::Encoder(_) => {
                    assert_eq!(a.kind, Kind::Encoder, "{}", a.name);
                    assert_eq!(kinds_of_heads(Kind::Encoder).count(), a.classes.len());
                }
                Constructor::Decoder(_) => {
                    assert_eq!(a.kind, Kind::Decoder, "{}", a.name);
                    assert_eq!(kinds_of_heads(Kind::Decoder).count(), a.classes.len());
                }
                Constructor::EncoderDecoder { classifier, .. } => {
                    assert_eq!(a.kind, Kind::EncoderDecoder, "{}", a.name);
                    // The first class generates; a class run as an encoder needs the classifier.
                    assert_eq!(a.classes[0].1.kind(), Kind::EncoderDecoder, "{}", a.name);
                    assert_eq!(
                        kinds_of_heads(Kind::Encoder).count() > 0,
                        classifier.is_some(),
                        "{}",
                        a.name
                    );
                    assert_eq!(kinds_of_heads(Kind::Decoder).count(), 0, "{}", a.name);
                }
            }
        }
    }
}

//! The architectures girder implements, and the registry that picks one from config.json
//! the way transformers' AutoModel does: `architectures[0]` first, else `model_type`.
//!
//! [`ARCHITECTURES`] lists the encoders and [`DECODERS`] the causal language models; they are
//! the only tables that list architectures. Models never see text, files or threads: they
//! get [`Weights`], a config and a [`RaggedBatch`] (decoders also each sequence's [`KvCache`]).

pub mod bert;
pub mod distilbert;
pub mod gpt2;
mod heads;
pub mod llama;
pub mod roberta;

use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::Weights;
use crate::layers::KvCache;
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
        let (inner, position_limit, vocab_size) = match arch.family {
            Family::Bert => {
                let cfg = bert::Config::from_common(config)?;
                let inner = bert::load(weights, &cfg, config, head)?;
                (inner, cfg.max_position_embeddings, cfg.vocab_size)
            }
            Family::DistilBert => {
                let cfg = distilbert::Config::from_common(config)?;
                let inner = distilbert::load(weights, &cfg, config, head)?;
                (inner, cfg.max_position_embeddings, cfg.vocab_size)
            }
            Family::Roberta => {
                let cfg = bert::Config::from_common(config)?;
                let inner = roberta::load(weights, &cfg, config, head)?;
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
        crate::layers::in_thread_pool(|| self.inner.encode(batch))
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
        crate::layers::in_thread_pool(|| self.inner.head(out, batch, rows))
    }
}

/// Which rows a decoder turns into logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// The last token of each sequence: `[num_seqs, vocab]` (generation).
    Last,
    /// Every token: `[total_tokens, vocab]` (scoring a prompt, parity tests).
    All,
}

/// The forward pass every causal language model implements.
///
/// `batch` holds each sequence's new tokens, with `positions` continuing from what its cache
/// holds ([`RaggedBatch::push_from`]); `caches[i]` belongs to sequence `i` and receives its
/// keys and values. A prompt is processed in one call (prefill), then one token per call.
pub trait DecoderForward: Send + Sync {
    /// Logits of the rows `logits` selects.
    fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor>;

    /// An empty cache for one sequence, with room for `capacity` positions (it grows beyond).
    fn new_cache(&self, capacity: usize) -> Result<KvCache>;

    /// Positions the model can attend over (`max_position_embeddings` / `n_positions`).
    fn context_length(&self) -> usize;

    /// Rows of the output projection.
    fn vocab_size(&self) -> usize;
}

/// Checks what a decoder needs of its batch: one cache per sequence, positions continuing
/// from the cache, and no position past the context.
pub(crate) fn check_decoder_batch(
    batch: &RaggedBatch,
    caches: &[&mut KvCache],
    context_length: usize,
) -> Result<()> {
    if caches.len() != batch.num_seqs() {
        return Err(Error::InvalidOption {
            option: "caches".into(),
            reason: format!(
                "{} caches for {} sequences: each sequence needs its own",
                caches.len(),
                batch.num_seqs()
            ),
        });
    }
    for (i, cache) in caches.iter().enumerate() {
        let range = batch.seq_range(i);
        if range.is_empty() {
            return Err(Error::BadInput {
                index: i,
                reason: "the sequence has no tokens".into(),
            });
        }
        let first = batch.positions[range.start] as usize;
        if first != cache.len() {
            return Err(Error::InvalidOption {
                option: "positions".into(),
                reason: format!(
                    "sequence {i} starts at position {first} but its cache holds {} positions",
                    cache.len()
                ),
            });
        }
        let end = cache.len() + range.len();
        if end > context_length {
            return Err(Error::ContextLength {
                index: i,
                tokens: end,
                max: context_length,
            });
        }
    }
    Ok(())
}

/// `hidden` `[total_tokens, hidden]` restricted to the rows `logits` selects.
pub(crate) fn logit_rows(hidden: &Tensor, batch: &RaggedBatch, logits: Logits) -> Result<Tensor> {
    match logits {
        Logits::All => Ok(hidden.clone()),
        Logits::Last => {
            let rows: Vec<u32> = batch.cu_seqlens[1..].iter().map(|&end| end - 1).collect();
            let rows = Tensor::new(rows, hidden.device())?;
            Ok(hidden.index_select(&rows, 0)?)
        }
    }
}

/// The decoder implementations (one file per family).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecoderFamily {
    Gpt2,
    Llama,
}

/// One row of the decoder registry.
#[derive(Debug)]
pub struct DecoderArchitecture {
    /// `model_type` of config.json.
    pub model_type: &'static str,
    /// transformers' class name, `architectures[0]`.
    pub class_name: &'static str,
    /// The implementation.
    pub family: DecoderFamily,
}

/// Every causal language model girder supports.
pub const DECODERS: &[DecoderArchitecture] = &[
    DecoderArchitecture {
        model_type: "gpt2",
        class_name: "GPT2LMHeadModel",
        family: DecoderFamily::Gpt2,
    },
    DecoderArchitecture {
        model_type: "llama",
        class_name: "LlamaForCausalLM",
        family: DecoderFamily::Llama,
    },
    DecoderArchitecture {
        model_type: "mistral",
        class_name: "MistralForCausalLM",
        family: DecoderFamily::Llama,
    },
    DecoderArchitecture {
        model_type: "qwen2",
        class_name: "Qwen2ForCausalLM",
        family: DecoderFamily::Llama,
    },
];

/// AutoModelForCausalLM dispatch: `architectures[0]`, else `model_type`.
pub fn resolve_decoder(config: &CommonConfig) -> Result<&'static DecoderArchitecture> {
    let unsupported = |name: &str| Error::UnsupportedArchitecture {
        name: name.to_string(),
        supported: DECODERS
            .iter()
            .map(|d| d.class_name)
            .collect::<Vec<_>>()
            .join(", "),
    };
    if let Some(class) = config.architectures.first() {
        return DECODERS
            .iter()
            .find(|d| d.class_name == class)
            .ok_or_else(|| unsupported(class));
    }
    match &config.model_type {
        Some(model_type) => DECODERS
            .iter()
            .find(|d| d.model_type == model_type)
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

/// A loaded causal language model, dispatched from config.json.
pub struct DecoderModel {
    class_name: String,
    inner: Box<dyn DecoderForward>,
}

impl std::fmt::Debug for DecoderModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderModel")
            .field("class_name", &self.class_name)
            .finish()
    }
}

impl DecoderModel {
    /// Builds the class named by the config from a safetensors checkpoint.
    pub fn load(config: &CommonConfig, weights: &Weights) -> Result<Self> {
        let arch = resolve_decoder(config)?;
        let inner: Box<dyn DecoderForward> = match arch.family {
            DecoderFamily::Gpt2 => {
                let cfg = gpt2::Config::from_common(config)?;
                Box::new(gpt2::GPT2LMHeadModel::load(weights, &cfg)?)
            }
            DecoderFamily::Llama => {
                let cfg = llama::Config::from_common(config)?;
                Box::new(llama::LlamaForCausalLM::load(weights, &cfg)?)
            }
        };
        Ok(DecoderModel {
            class_name: arch.class_name.to_string(),
            inner,
        })
    }

    /// Builds a LLaMA-family model from a GGUF file (`llama`, `qwen2`). With
    /// `keep_quantized`, the projections stay quantized (`layers::quant_matmul`, or candle's
    /// quantized matmul for the types it does not read); otherwise every tensor is
    /// dequantized to f32.
    pub fn load_gguf(gguf: crate::hub::GgufFile, keep_quantized: bool) -> Result<Self> {
        let cfg = llama::Config::from_gguf(&gguf)?;
        let class_name = match gguf.architecture() {
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        let device = candle_core::Device::Cpu;
        let weights = Weights::from_gguf(gguf, keep_quantized, candle_core::DType::F32, &device);
        Ok(DecoderModel {
            class_name: class_name.to_string(),
            inner: Box::new(llama::LlamaForCausalLM::load(&weights, &cfg)?),
        })
    }

    /// Wraps an implementation built elsewhere.
    pub fn from_parts(class_name: impl Into<String>, inner: Box<dyn DecoderForward>) -> Self {
        DecoderModel {
            class_name: class_name.into(),
            inner,
        }
    }

    /// transformers' class name, e.g. `LlamaForCausalLM`.
    pub fn class_name(&self) -> &str {
        &self.class_name
    }

    /// See [`DecoderForward::forward`].
    pub fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> Result<Tensor> {
        crate::layers::in_thread_pool(|| self.inner.forward(batch, caches, logits))
    }

    /// See [`DecoderForward::new_cache`].
    pub fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        self.inner.new_cache(capacity)
    }

    /// See [`DecoderForward::context_length`].
    pub fn context_length(&self) -> usize {
        self.inner.context_length()
    }

    /// See [`DecoderForward::vocab_size`].
    pub fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
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

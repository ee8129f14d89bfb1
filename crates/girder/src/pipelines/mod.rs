//! Tasks with the semantics of the transformers pipelines.
//!
//! [`Model`] is a loaded model folder: config, tokenizer (with girder's policy) and weights.
//! Each task module takes a `&Model`, texts and a typed `Options` whose `Default` is
//! transformers' default, and returns one output per text, in input order.

pub mod embeddings;
pub mod fill_mask;
mod postprocess;
pub mod text_classification;
pub mod token_classification;

pub use postprocess::PostprocessError;

use crate::batch::{plan_batches, RaggedBatch};
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::{ModelFolder, ModelRef, Weights};
use crate::models::{EncoderModel, EncoderOutput};
use crate::tokenize::{max_input_length, Encoded, InputLimits, TextTokenizer, Truncation};
use candle_core::{DType, Device};

/// The tasks girder runs, with transformers' names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `text-classification` (alias `sentiment-analysis`)
    TextClassification,
    /// `token-classification` (alias `ner`)
    TokenClassification,
    /// `fill-mask`
    FillMask,
    /// `embeddings` (alias `feature-extraction`, `sentence-similarity`): one pooled vector per text
    Embeddings,
}

impl Task {
    /// All tasks, in the order `--help` lists them.
    pub const ALL: [Task; 4] = [
        Task::TextClassification,
        Task::TokenClassification,
        Task::FillMask,
        Task::Embeddings,
    ];

    /// transformers' task name.
    pub fn name(self) -> &'static str {
        match self {
            Task::TextClassification => "text-classification",
            Task::TokenClassification => "token-classification",
            Task::FillMask => "fill-mask",
            Task::Embeddings => "embeddings",
        }
    }

    /// Parses a task name or one of its aliases.
    pub fn parse(name: &str) -> Result<Task> {
        Ok(match name {
            "text-classification" | "sentiment-analysis" => Task::TextClassification,
            "token-classification" | "ner" => Task::TokenClassification,
            "fill-mask" => Task::FillMask,
            "embeddings" | "feature-extraction" | "sentence-similarity" => Task::Embeddings,
            other => {
                return Err(Error::InvalidOption {
                    option: "task".into(),
                    reason: format!(
                        "unknown task `{other}`; known: {}",
                        Task::ALL.map(Task::name).join(", ")
                    ),
                })
            }
        })
    }
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Overrides the model's input limit (it may not exceed the position embeddings).
    pub max_length: Option<usize>,
    /// What to do with inputs beyond the limit.
    pub truncation: Truncation,
    /// Where to compute.
    pub device: Device,
    /// Tokens per forward pass at most (see [`DEFAULT_MAX_BATCH_TOKENS`]).
    pub max_batch_tokens: usize,
    /// Take the tokenizer from this folder or hub id instead of the model's own folder
    /// (to check a tokenizer against a model: `girder check --tokenizer`).
    pub tokenizer: Option<String>,
    /// A PEFT LoRA adapter folder merged into the weights at load
    /// ([`crate::hub::LoraAdapter`]); a classification adapter sets the head and labels.
    pub adapter: Option<std::path::PathBuf>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_length: None,
            truncation: Truncation::Truncate,
            device: Device::Cpu,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            tokenizer: None,
            adapter: None,
        }
    }
}

/// The default budget of tokens per forward pass (`--max-batch-tokens`); it bounds
/// activation memory.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4096;

/// A model folder loaded for inference: config, tokenizer and weights.
///
/// ```
/// # fn main() -> girder::Result<()> {
/// use girder::pipelines::{embeddings, LoadOptions, Model};
/// let model = Model::load("tests/fixtures/bert-st-mean", &LoadOptions::default())?;
/// let out = embeddings::run(&model, &["A man is eating food."], &embeddings::Options::default())?;
/// assert!(out[0].embedding.len() > 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Model {
    pub folder: ModelFolder,
    pub config: CommonConfig,
    pub tokenizer: TextTokenizer,
    pub encoder: EncoderModel,
    /// sentence-transformers' configuration, when the folder has modules.json.
    pub sentence: Option<embeddings::SentenceConfig>,
    /// Tokens per forward pass at most.
    pub max_batch_tokens: usize,
}

impl Model {
    /// Loads a local folder or a hub id from the Hugging Face cache.
    pub fn load(reference: &str, options: &LoadOptions) -> Result<Self> {
        let folder = ModelRef::parse(reference).resolve()?;
        Self::load_folder(folder, options)
    }

    /// Loads an already located folder.
    pub fn load_folder(folder: ModelFolder, options: &LoadOptions) -> Result<Self> {
        let mut config = CommonConfig::from_file(
            &folder.require("config.json", "a model folder needs config.json")?,
        )?;
        let mut tokenizer = match &options.tokenizer {
            Some(reference) => {
                TextTokenizer::from_folder(&ModelRef::parse(reference).resolve_tokenizer()?)?
            }
            None => TextTokenizer::from_folder(&folder)?,
        };
        let mut weights =
            Weights::from_safetensors(&folder.weight_files()?, DType::F32, &options.device)?;
        if let Some(path) = &options.adapter {
            weights = crate::hub::LoraAdapter::load(path)?.apply(&weights, &mut config)?;
        }
        let encoder = EncoderModel::load(&config, &weights)?;
        let sentence = embeddings::SentenceConfig::from_folder(&folder)?;
        let limits = InputLimits {
            tokenizer_max_length: tokenizer.tokenizer_max_length(),
            position_limit: Some(encoder.position_limit()),
            sentence_max_seq_length: sentence.as_ref().and_then(|s| s.max_seq_length),
        };
        let max_length = match options.max_length {
            Some(m) if m > encoder.position_limit() => {
                return Err(Error::InvalidOption {
                    option: "max_length".into(),
                    reason: format!(
                        "{m} is more than the {} positions {} can encode",
                        encoder.position_limit(),
                        encoder.class_name()
                    ),
                })
            }
            Some(m) => m,
            None => max_input_length(&limits),
        };
        tokenizer.set_max_length(max_length, options.truncation)?;
        Ok(Model {
            folder,
            config,
            tokenizer,
            encoder,
            sentence,
            max_batch_tokens: options.max_batch_tokens.max(1),
        })
    }

    /// The task the model's head implies: text-classification for `…ForSequenceClassification`,
    /// token-classification for `…ForTokenClassification`, fill-mask for `…ForMaskedLM`, and
    /// embeddings for a base (or sentence-transformers) model. `girder serve` uses it when no
    /// `--task` is given.
    pub fn default_task(&self) -> Task {
        match self.encoder.head() {
            crate::models::Head::SequenceClassification => Task::TextClassification,
            crate::models::Head::TokenClassification => Task::TokenClassification,
            crate::models::Head::MaskedLM => Task::FillMask,
            crate::models::Head::Base => Task::Embeddings,
        }
    }

    /// Tokenizes `texts` under the policy.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        self.tokenizer.encode_all(texts)
    }

    /// Runs the base model over `encodings` in packed batches planned by
    /// [`plan_batches`] under [`Model::max_batch_tokens`], calling `each` with the input indices of
    /// the batch's sequences (in batch order), the batch and the output. Batches come in
    /// length order, not input order: callers place results by index.
    pub fn forward_batches(
        &self,
        encodings: &[Encoded],
        mut each: impl FnMut(&[usize], &RaggedBatch, &EncoderOutput) -> Result<()>,
    ) -> Result<()> {
        let lengths: Vec<usize> = encodings.iter().map(Encoded::len).collect();
        for indices in plan_batches(&lengths, self.max_batch_tokens) {
            let batch = RaggedBatch::from_encodings(indices.iter().map(|&i| &encodings[i]));
            let out = self.encoder.encode(&batch)?;
            each(&indices, &batch, &out)?;
        }
        Ok(())
    }
}

/// Puts per-index results back in input order.
pub(crate) fn in_input_order<T>(slots: Vec<Option<T>>) -> Vec<T> {
    slots.into_iter().flatten().collect()
}

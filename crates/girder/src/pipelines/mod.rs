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

use crate::batch::RaggedBatch;
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
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_length: None,
            truncation: Truncation::Truncate,
            device: Device::Cpu,
        }
    }
}

/// The most tokens one forward pass packs; bounds activation memory.
const MAX_BATCH_TOKENS: usize = 16_384;

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
}

impl Model {
    /// Loads a local folder or a hub id from the Hugging Face cache.
    pub fn load(reference: &str, options: &LoadOptions) -> Result<Self> {
        let folder = ModelRef::parse(reference).resolve()?;
        Self::load_folder(folder, options)
    }

    /// Loads an already located folder.
    pub fn load_folder(folder: ModelFolder, options: &LoadOptions) -> Result<Self> {
        let config = CommonConfig::from_file(
            &folder.require("config.json", "a model folder needs config.json")?,
        )?;
        let mut tokenizer = TextTokenizer::from_folder(&folder)?;
        let weights =
            Weights::from_safetensors(&folder.weight_files()?, DType::F32, &options.device)?;
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
        })
    }

    /// Tokenizes `texts` under the policy.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        self.tokenizer.encode_all(texts)
    }

    /// Runs the base model over `encodings` in packed batches of at most
    /// [`MAX_BATCH_TOKENS`], calling `each` with every batch, the index of its first
    /// encoding, and the output. Order is preserved.
    pub fn forward_batches(
        &self,
        encodings: &[Encoded],
        mut each: impl FnMut(usize, &RaggedBatch, &EncoderOutput) -> Result<()>,
    ) -> Result<()> {
        let mut start = 0;
        while start < encodings.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < encodings.len()
                && (end == start || tokens + encodings[end].len() <= MAX_BATCH_TOKENS)
            {
                tokens += encodings[end].len();
                end += 1;
            }
            let batch = RaggedBatch::from_encodings(&encodings[start..end]);
            let out = self.encoder.encode(&batch)?;
            each(start, &batch, &out)?;
            start = end;
        }
        Ok(())
    }
}

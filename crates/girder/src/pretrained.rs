//! The one loader: a model reference and [`LoadOptions`] become a [`Loaded`] model of one
//! [`Kind`], as transformers' `from_pretrained` and AutoModel do.
//!
//! A reference is a model folder, a hub id in the Hugging Face cache (`org/name[@revision]`),
//! or a `.gguf` file. The [registry](crate::models::registry) decides the architecture and
//! its kind from config.json (or a GGUF file's `general.architecture`); nothing else does.
//! The folder is opened once: config, tokenizer (under girder's policy), weights on the
//! device asked for, an adapter merged in, and for encoders the input limit; the CLI, the
//! server, the guard and training all start here.
//!
//! ```
//! # fn main() -> girder::Result<()> {
//! use girder::pipelines::{embeddings, Task};
//! use girder::{load, Kind, LoadOptions};
//!
//! let model = load("tests/fixtures/bert-st-mean", &LoadOptions::default())?;
//! assert_eq!((model.kind(), model.default_task()), (Kind::Encoder, Task::Embeddings));
//! let vectors = embeddings::run(model.encoder()?, &["A man is eating food."], &Default::default())?;
//! assert_eq!(vectors.len(), 1);
//!
//! // A task its kind does not serve is refused with the kinds that do.
//! let err = model.supports(Task::TextGeneration).unwrap_err().to_string();
//! assert!(err.contains("decoder"), "{err}");
//! # Ok(())
//! # }
//! ```

use crate::audio::WhisperFeatureExtractor;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::generate::{chat::ChatTemplate, GenerationConfig, Seq2SeqGenerator, TextGenerator};
use crate::hub::{
    FileSelection, GgufFile, Lora, LoraAdapter, ModelFolder, ModelRef, Trained, Training, Weights,
};
use crate::layers::Quantization;
use crate::models::{registry, Architecture, DecoderModel, EncoderModel, Head, Kind, Seq2SeqModel};
use crate::pipelines::{embeddings::SentenceConfig, Model, Task};
use crate::tokenize::{max_input_length, InputLimits, TextTokenizer, Truncation};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// The default budget of tokens per forward pass (`--max-batch-tokens`); it bounds
/// activation memory.
pub const DEFAULT_MAX_BATCH_TOKENS: usize = 4096;

/// How a GGUF file's tensors are used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GgufMode {
    /// Projections stay quantized: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K through
    /// girder's kernel with activations rounded to bytes as llama.cpp does
    /// (`layers::cpu::quant_matmul`), other types through candle's quantized matmul.
    #[default]
    Quantized,
    /// Every tensor dequantized to f32 (the reference transformers computes).
    Dequantized,
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where every tensor of the model lives and is computed.
    pub device: Device,
    /// Safetensors checkpoints: the dtype linear layers and embedding tables keep their
    /// weights in: f32 (the default; bf16 and f16 checkpoints are upcast), or bf16 or f16
    /// (half the memory, widened to f32 in the matmul kernel). Norms, biases and linear
    /// matrices under 65,536 values (most classifier heads) stay f32, and every activation
    /// is f32. [`crate::check::drift`] measures what
    /// bf16 or f16 costs.
    pub dtype: DType,
    /// Encoders: overrides the model's input limit (it may not exceed the position
    /// embeddings).
    pub max_length: Option<usize>,
    /// Encoders: what to do with inputs beyond the limit.
    pub truncation: Truncation,
    /// Encoders: tokens per forward pass at most (see [`DEFAULT_MAX_BATCH_TOKENS`]).
    pub max_batch_tokens: usize,
    /// Take the tokenizer from this folder or hub id instead of the model's own folder
    /// (to check a tokenizer against a model: `girder check --tokenizer`).
    pub tokenizer: Option<String>,
    /// Encoders: a PEFT LoRA adapter folder merged into the weights at load
    /// ([`LoraAdapter`]); a classification adapter sets the head and labels.
    pub adapter: Option<PathBuf>,
    /// GGUF files: quantized (the default) or dequantized projections.
    pub gguf: GgufMode,
    /// Safetensors checkpoints: quantize the linear layers' weights as they load
    /// ([`Quantization`]); `None`: as stored. [`crate::check::drift`] measures what it
    /// costs.
    pub quantize: Option<Quantization>,
    /// With `dtype` bf16/f16 or `quantize`: keep the output projection (an LM head, an MLM
    /// decoder, Whisper's `proj_out`, tied or not) in f32, as llama.cpp's
    /// `--output-tensor-type` chooses it apart from the rest.
    pub output_in_f32: bool,
    /// Encoders: build this head with these labels instead of the class config.json names,
    /// as transformers' `AutoModelForSequenceClassification.from_pretrained(base,
    /// id2label=...)`; a checkpoint without the head's tensors needs `training`, which
    /// initialises them.
    pub head: Option<NewHead>,
    /// Encoders: build the model for training, its trained tensors variables.
    pub training: Option<TrainingLoad>,
    /// Encoders: keep only the checkpoint's first `n` layers, as transformers'
    /// `from_pretrained(..., num_hidden_layers=n)` does; the config says `n` (so a folder
    /// written from the model loads the same). More layers than the checkpoint has is an
    /// error.
    pub num_hidden_layers: Option<usize>,
}

/// A head to build on an encoder, with its labels (see [`LoadOptions::head`]).
#[derive(Debug, Clone, PartialEq)]
pub struct NewHead {
    /// [`Head::SequenceClassification`] or [`Head::TokenClassification`].
    pub head: Head,
    /// The label of each class id.
    pub labels: Vec<String>,
    /// The heads' dropout (`classifier_dropout`); `None`: the architecture's default.
    pub classifier_dropout: Option<f64>,
}

/// What a training load trains (see [`LoadOptions::training`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingLoad {
    /// Every weight (full fine-tuning); otherwise the head's (the registry's
    /// `head_modules`) and the LoRA adapters.
    pub all_weights: bool,
    /// LoRA adapters on the targeted linear layers.
    pub lora: Option<Lora>,
    /// Seeds the new head's initialisation and LoRA's `A` matrices.
    pub seed: u64,
    /// Modules trained beside the head, by name as the base checkpoint has them
    /// (`encoder.layer.3`, `pooler`); the base model's prefix (`bert.`) is added where the
    /// checkpoint uses it.
    pub modules: Vec<String>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: DType::F32,
            max_length: None,
            truncation: Truncation::Truncate,
            max_batch_tokens: DEFAULT_MAX_BATCH_TOKENS,
            tokenizer: None,
            adapter: None,
            gguf: GgufMode::default(),
            quantize: None,
            output_in_f32: false,
            head: None,
            training: None,
            num_hidden_layers: None,
        }
    }
}

/// A model loaded by [`load`]: one variant per [`Kind`].
#[derive(Debug)]
pub enum Loaded {
    /// An encoder with its tokenizer: the text-classification, token-classification,
    /// fill-mask and embeddings pipelines.
    Encoder(Box<Model>),
    /// A causal language model with its tokenizer and generation settings: text generation.
    Decoder(Box<TextGenerator>),
    /// An encoder-decoder with its tokenizer and generation settings: translation,
    /// summarization, text-to-text generation, speech recognition.
    EncoderDecoder(Box<Seq2SeqGenerator>),
}

/// Loads `reference`: a folder, a `.gguf` file, a hub id (`org/name[@revision]`, downloaded
/// into the Hugging Face cache on first use) or a hub repository's GGUF file
/// (`org/name[@revision]/file.gguf`).
pub fn load(reference: &str, options: &LoadOptions) -> Result<Loaded> {
    check_precision(reference, options)?;
    let model_ref = ModelRef::parse(reference);
    if let ModelRef::HubFile { .. } = model_ref {
        return load_gguf(&model_ref.locate(&FileSelection::Model)?, options);
    }
    if is_gguf(reference) {
        return load_gguf(Path::new(reference), options);
    }
    let folder = model_ref.resolve()?;
    let mut config = CommonConfig::from_file(
        &folder.require("config.json", "a model folder needs config.json")?,
    )?;
    let mut resolved = registry::resolve(&config)?;
    // sentence-transformers loads its Transformer module with AutoModel: the base model,
    // whatever head `architectures` names (all-mpnet-base-v2 says MPNetForMaskedLM and
    // ships no LM head).
    let sentence = SentenceConfig::from_folder(&folder)?;
    if sentence.is_some() && resolved.architecture.kind == Kind::Encoder {
        resolved = resolved.base();
    }
    let tokenizer = match &options.tokenizer {
        Some(reference) => {
            TextTokenizer::from_folder(&ModelRef::parse(reference).resolve_tokenizer()?)?
        }
        None => TextTokenizer::from_folder(&folder)?,
    };
    if let (Some(q), Some(training)) = (options.quantize, &options.training) {
        // QLoRA: LoRA adapters over a frozen quantized base. Whatever else trains stays f32.
        if training.lora.is_none() || training.all_weights {
            return Err(Error::InvalidOption {
                option: "quantize".into(),
                reason: format!(
                    "--quantize {} in training quantizes the frozen base under LoRA adapters (--method qlora); this training has no LoRA adapters or trains every weight",
                    q.name()
                ),
            });
        }
    }
    if options.dtype != DType::F32 && options.training.is_some() {
        return Err(Error::Unsupported {
            what: format!(
                "training in {} (girder trains in f32)",
                dtype_name(options.dtype)
            ),
        });
    }
    let mut weights =
        Weights::from_safetensors(&folder.weight_files()?, DType::F32, &options.device)?
            .with_quantization(options.quantize)
            .with_weight_dtype(options.dtype)
            .with_output_in_f32(options.output_in_f32);
    // By the class's head: an encoder-decoder's sequence classifier runs as an encoder.
    match resolved.head.kind() {
        Kind::Encoder => {
            if let Some(n) = options.num_hidden_layers {
                config.keep_layers(n)?;
            }
            if let Some(path) = &options.adapter {
                let adapter = LoraAdapter::load(path)?;
                weights = adapter.apply(&weights)?;
                // A classification adapter brings the head it trained, and its labels.
                if let Some(head) = adapter.head()? {
                    let new = NewHead {
                        head: if head.sequence {
                            Head::SequenceClassification
                        } else {
                            Head::TokenClassification
                        },
                        labels: head.labels,
                        classifier_dropout: None,
                    };
                    resolved = with_head(resolved, &new, &mut config)?;
                    config.set_problem_type(head.problem_type);
                }
            }
            if let Some(new) = &options.head {
                resolved = with_head(resolved, new, &mut config)?;
            }
            let parameters = match &options.training {
                Some(load) => {
                    let architecture = resolved.architecture;
                    let head_modules: Vec<String> = architecture
                        .head_modules
                        .iter()
                        .map(|m| m.to_string())
                        .collect();
                    let lora = load.lora.clone().map(|mut lora| {
                        if lora.target_modules.is_empty() {
                            lora.target_modules = architecture
                                .lora_target_modules
                                .iter()
                                .map(|t| t.to_string())
                                .collect();
                        }
                        lora
                    });
                    let prefix = architecture.base_model_prefix;
                    // Head checkpoints keep the base model under its prefix, base ones at
                    // the root: either name matches.
                    let modules = load
                        .modules
                        .iter()
                        .flat_map(|m| [m.clone(), format!("{prefix}.{m}")]);
                    let plan = Training {
                        trained: if load.all_weights {
                            Trained::All
                        } else {
                            Trained::Modules(head_modules.iter().cloned().chain(modules).collect())
                        },
                        head_modules,
                        lora,
                        seed: load.seed,
                        initializer_range: config.initializer_range(),
                    };
                    let (trainable, parameters) = weights.for_training(plan);
                    weights = trainable;
                    Some(parameters)
                }
                None => None,
            };
            let encoder = EncoderModel::load(resolved, &config, &weights)?;
            let mut loaded = encoder_model(folder, config, tokenizer, encoder, sentence, options)?;
            if let Loaded::Encoder(model) = &mut loaded {
                model.parameters = parameters;
            }
            Ok(loaded)
        }
        Kind::EncoderDecoder => {
            refuse_encoder_options(options, resolved.class_name, Kind::EncoderDecoder)?;
            let model = Seq2SeqModel::load(resolved, &config, &weights)?;
            let generation_config = GenerationConfig::from_folder(&folder, &config)?;
            seq2seq_model(folder, config, tokenizer, model, generation_config, options)
        }
        Kind::Decoder => {
            refuse_encoder_options(options, resolved.class_name, Kind::Decoder)?;
            let model = DecoderModel::load(resolved, &config, &weights)?;
            let generation_config = GenerationConfig::from_folder(&folder, &config)?;
            let chat_template = ChatTemplate::from_folder(&folder)?;
            decoder_model(
                model,
                tokenizer,
                generation_config,
                chat_template,
                Some((folder, config)),
            )
        }
    }
}

/// The class of `resolved`'s architecture that carries `new.head`, with the config set for
/// its labels.
fn with_head(
    resolved: registry::Resolved,
    new: &NewHead,
    config: &mut CommonConfig,
) -> Result<registry::Resolved> {
    let architecture = resolved.architecture;
    let Some(&(class_name, head)) = architecture.classes.iter().find(|(_, h)| *h == new.head)
    else {
        return Err(Error::Unsupported {
            what: format!("{} with {}", architecture.name, new.head.name()),
        });
    };
    if new.labels.is_empty() {
        return Err(Error::InvalidOption {
            option: "labels".into(),
            reason: format!("{class_name} needs at least one label"),
        });
    }
    config.set_head(
        class_name,
        &new.labels,
        head == Head::SequenceClassification,
        new.classifier_dropout,
    );
    Ok(registry::Resolved {
        architecture,
        class_name,
        head,
    })
}

/// The encoder with its tokenizer limited to the model's real input length.
fn encoder_model(
    folder: ModelFolder,
    config: CommonConfig,
    mut tokenizer: TextTokenizer,
    encoder: EncoderModel,
    sentence: Option<SentenceConfig>,
    options: &LoadOptions,
) -> Result<Loaded> {
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
    Ok(Loaded::Encoder(Box::new(Model {
        folder,
        config,
        tokenizer,
        encoder,
        sentence,
        max_batch_tokens: options.max_batch_tokens.max(1),
        parameters: None,
    })))
}

/// The decoder with its tokenizer refusing prompts beyond the context: a prompt is never
/// cut silently.
fn decoder_model(
    model: DecoderModel,
    mut tokenizer: TextTokenizer,
    generation_config: GenerationConfig,
    chat_template: Option<ChatTemplate>,
    files: Option<(ModelFolder, CommonConfig)>,
) -> Result<Loaded> {
    tokenizer.set_max_length(model.context_length().max(2), Truncation::Refuse)?;
    Ok(Loaded::Decoder(Box::new(TextGenerator::new(
        model,
        tokenizer,
        generation_config,
        chat_template,
        files,
    ))))
}

/// The encoder-decoder with its tokenizer limited to the encoder's real input length, under
/// the load's truncation policy (inputs are cut on the right and say so, or refused).
fn seq2seq_model(
    folder: ModelFolder,
    config: CommonConfig,
    mut tokenizer: TextTokenizer,
    model: Seq2SeqModel,
    generation_config: GenerationConfig,
    options: &LoadOptions,
) -> Result<Loaded> {
    let limits = InputLimits {
        tokenizer_max_length: tokenizer.tokenizer_max_length(),
        position_limit: model.max_source_positions(),
        sentence_max_seq_length: None,
    };
    let max_length = match (options.max_length, model.max_source_positions()) {
        (Some(m), Some(limit)) if m > limit => {
            return Err(Error::InvalidOption {
                option: "max_length".into(),
                reason: format!(
                    "{m} is more than the {limit} positions {} can encode",
                    model.class_name()
                ),
            })
        }
        (Some(m), _) => m,
        (None, _) => max_input_length(&limits),
    };
    tokenizer.set_max_length(max_length, options.truncation)?;
    let features = if model.resolved().head == Head::SpeechSeq2Seq {
        let file = folder
            .file("preprocessor_config.json")
            .or_else(|| folder.file("processor_config.json"));
        Some(match file {
            Some(path) => WhisperFeatureExtractor::from_file(&path)?,
            None => WhisperFeatureExtractor::new(num_mel_bins(&config)?),
        })
    } else {
        None
    };
    Ok(Loaded::EncoderDecoder(Box::new(Seq2SeqGenerator::new(
        model,
        tokenizer,
        generation_config,
        folder,
        config,
        features,
    ))))
}

/// config.json's `num_mel_bins` (Whisper's default: 80).
fn num_mel_bins(config: &CommonConfig) -> Result<usize> {
    #[derive(serde::Deserialize)]
    struct Bins {
        #[serde(default)]
        num_mel_bins: Option<usize>,
    }
    let bins: Bins = config.parse_as()?;
    Ok(bins.num_mel_bins.unwrap_or(80))
}

/// A GGUF file: the architecture from `general.architecture`, the hyper-parameters,
/// tokenizer, chat template and eos/bos ids from its metadata.
/// Whether `reference` names a GGUF file: a local `.gguf` path or a hub repository's
/// `org/name/file.gguf`.
pub fn is_gguf(reference: &str) -> bool {
    Path::new(reference)
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || matches!(ModelRef::parse(reference), ModelRef::HubFile { .. })
}

/// `f32`, `bf16` or `f16`: the name `--dtype` takes.
pub fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "f32",
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F64 => "f64",
        _ => "an integer dtype",
    }
}

/// `f32`, `bf16` or `f16` (also `float32`, `bfloat16`, `float16`, `half`, any case, with
/// or without PyTorch's `torch.`).
///
/// ```
/// use candle_core::DType;
/// assert_eq!(girder::pretrained::parse_dtype("torch.bfloat16")?, DType::BF16);
/// assert!(girder::pretrained::parse_dtype("int8").is_err());
/// # Ok::<(), girder::Error>(())
/// ```
pub fn parse_dtype(name: &str) -> Result<DType> {
    let lower = name.to_ascii_lowercase();
    match lower.trim_start_matches("torch.") {
        "f32" | "float32" | "float" | "fp32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" | "half" | "fp16" => Ok(DType::F16),
        _ => Err(Error::InvalidOption {
            option: "dtype".into(),
            reason: format!(
                "`{name}` is not a dtype girder keeps weights in; expected f32, bf16 or f16 (for 8 and 4 bits, --quantize)"
            ),
        }),
    }
}

/// What a load keeps its weights in other than f32, if anything: the quantization's name
/// (`q8_0`) or the dtype's (`bf16`); what the accuracy report measures against f32.
pub fn reduced_precision(options: &LoadOptions) -> Option<String> {
    match (options.quantize, options.dtype) {
        (Some(q), _) => Some(q.name().to_string()),
        (None, DType::F32) => None,
        (None, dtype) => Some(dtype_name(dtype).to_string()),
    }
}

/// The precision options a load can honour, refused before anything loads: bf16 or f16
/// (not f64 or an integer dtype), not together with a quantization, and neither for a GGUF
/// file, which keeps the types it was written in.
pub fn check_precision(reference: &str, options: &LoadOptions) -> Result<()> {
    if !matches!(options.dtype, DType::F32 | DType::BF16 | DType::F16) {
        return Err(Error::InvalidOption {
            option: "dtype".into(),
            reason: format!(
                "girder keeps weights in f32, bf16 or f16, not {}",
                dtype_name(options.dtype)
            ),
        });
    }
    if let (Some(q), DType::BF16 | DType::F16) = (options.quantize, options.dtype) {
        return Err(Error::InvalidOption {
            option: "dtype".into(),
            reason: format!(
                "--dtype {} and --quantize {} together: pick one (quantized layers are multiplied from their blocks, the rest stays f32)",
                dtype_name(options.dtype),
                q.name()
            ),
        });
    }
    if !is_gguf(reference) {
        return Ok(());
    }
    if let Some(quantization) = options.quantize {
        return Err(Error::InvalidOption {
            option: "quantize".into(),
            reason: format!(
                "{reference} is a GGUF file, quantized already; --quantize {} applies to safetensors checkpoints",
                quantization.name()
            ),
        });
    }
    if options.dtype != DType::F32 {
        return Err(Error::InvalidOption {
            option: "dtype".into(),
            reason: format!(
                "{reference} is a GGUF file, which keeps the types it was written in; --dtype {} applies to safetensors checkpoints",
                dtype_name(options.dtype)
            ),
        });
    }
    Ok(())
}

fn load_gguf(path: &Path, options: &LoadOptions) -> Result<Loaded> {
    if !path.is_file() {
        return Err(Error::MissingFile {
            folder: path.parent().map(Path::to_path_buf).unwrap_or_default(),
            file: path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default(),
            needs: "the GGUF file to load".into(),
        });
    }
    let mut gguf = GgufFile::open(path)?;
    let (architecture, format) = registry::resolve_gguf(&gguf)?;
    refuse_encoder_options(options, architecture.classes[0].0, Kind::Decoder)?;
    if options.gguf == GgufMode::Quantized {
        warn_about_slow_types(&gguf);
    }
    gguf.map_tensors(format.tensor_names, format.permuted_qk, &options.device)?;
    let tokens = gguf.tokenizer()?;
    let generation_config = GenerationConfig {
        // The end of a turn (llama.cpp's EOT: Llama 3's `<|eot_id|>`) ends a generation as
        // the end of text does.
        eos_token_ids: [
            gguf.opt_u32("tokenizer.ggml.eos_token_id")?,
            gguf.opt_u32("tokenizer.ggml.eot_token_id")?,
        ]
        .into_iter()
        .flatten()
        .fold(Vec::new(), |mut ids, id| {
            if !ids.contains(&id) {
                ids.push(id);
            }
            ids
        }),
        bos_token_id: gguf.opt_u32("tokenizer.ggml.bos_token_id")?,
        ..GenerationConfig::default()
    };
    let chat_template = ChatTemplate::from_gguf(&gguf, &tokens, format.default_chat_template)?;
    // Another tokenizer in the file's place (`--tokenizer`, to check one against the file):
    // the file's own is kept beside it, for the guard to compare.
    let (tokenizer, file_tokenizer) = match &options.tokenizer {
        None => (
            TextTokenizer::from_tokenizer(tokens, path.to_path_buf())?,
            None,
        ),
        Some(reference) => (
            TextTokenizer::from_folder(&ModelRef::parse(reference).resolve_tokenizer()?)?,
            Some(tokens),
        ),
    };
    let keep_quantized = options.gguf == GgufMode::Quantized;
    let weights = Weights::from_gguf(gguf, keep_quantized, DType::F32, &options.device);
    let gguf = weights.gguf().ok_or_else(|| Error::BadGguf {
        file: path.to_path_buf(),
        reason: "the file's tensors were not kept".into(),
    })?;
    let model = DecoderModel::load_gguf(architecture, format, gguf, &weights)?;
    let loaded = decoder_model(model, tokenizer, generation_config, chat_template, None)?;
    Ok(match (loaded, file_tokenizer) {
        (Loaded::Decoder(g), Some(own)) => Loaded::Decoder(Box::new(g.with_file_tokenizer(own))),
        (loaded, _) => loaded,
    })
}

/// One warning per block type of the file's matrices that girder's kernels do not read,
/// naming the tensors: they run through candle's dequantizing matmul, many times slower.
fn warn_about_slow_types(gguf: &GgufFile) {
    for (dtype, names) in gguf.matrices_without_kernel() {
        let shown = names.iter().take(4).cloned().collect::<Vec<_>>().join(", ");
        let more = names.len().saturating_sub(4);
        tracing::warn!(
            "{}: {} tensors of type {dtype} have no girder kernel and are multiplied through \
             candle's dequantizing matmul (slow): {shown}{}",
            gguf.path().display(),
            names.len(),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
}

/// `class_name`, of kind `is`, asked to be a `wanted`.
fn wrong_kind(class_name: &str, is: Kind, wanted: Kind) -> Error {
    Error::TaskMismatch {
        model: class_name.to_string(),
        task: format!("as {}", wanted.describe()),
        reason: kind_reason(is, wanted),
    }
}

/// Why a model of kind `is` is not a `wanted`, naming each family of the kind wanted by its
/// first class (`BertModel`, `LlamaForCausalLM`).
fn kind_reason(is: Kind, wanted: Kind) -> String {
    let classes: Vec<&str> = registry::ARCHITECTURES
        .iter()
        .filter(|a| a.kind == wanted)
        .map(|a| a.classes[0].0)
        .collect();
    format!(
        "it is {}; girder's {}s: {}",
        is.describe(),
        wanted.name(),
        classes.join(", ")
    )
}

/// A load of another kind (`is`) refuses the options that only encoders take.
fn refuse_encoder_options(options: &LoadOptions, class_name: &str, is: Kind) -> Result<()> {
    let wanted = if options.head.is_some() {
        "a classification head"
    } else if options.training.is_some() {
        "training"
    } else if options.num_hidden_layers.is_some() {
        "keeping the first layers (num_hidden_layers)"
    } else {
        return refuse_adapter(options, class_name, is);
    };
    Err(Error::TaskMismatch {
        model: class_name.to_string(),
        task: wanted.into(),
        reason: kind_reason(is, Kind::Encoder),
    })
}

fn refuse_adapter(options: &LoadOptions, class_name: &str, is: Kind) -> Result<()> {
    match &options.adapter {
        Some(path) => Err(Error::InvalidOption {
            option: "adapter".into(),
            reason: format!(
                "{} is for encoders; {class_name} is {} (merge the adapter with PEFT first)",
                path.display(),
                is.describe()
            ),
        }),
        None => Ok(()),
    }
}

impl Loaded {
    /// The kind of model.
    pub fn kind(&self) -> Kind {
        match self {
            Loaded::Encoder(_) => Kind::Encoder,
            Loaded::Decoder(_) => Kind::Decoder,
            Loaded::EncoderDecoder(_) => Kind::EncoderDecoder,
        }
    }

    /// The registry row of its architecture.
    pub fn architecture(&self) -> &'static Architecture {
        match self {
            Loaded::Encoder(m) => m.encoder.architecture(),
            Loaded::Decoder(g) => g.model().architecture(),
            Loaded::EncoderDecoder(g) => g.model().architecture(),
        }
    }

    /// transformers' class name, e.g. `BertForSequenceClassification`, `LlamaForCausalLM`.
    pub fn class_name(&self) -> &str {
        match self {
            Loaded::Encoder(m) => m.encoder.class_name(),
            Loaded::Decoder(g) => g.model().class_name(),
            Loaded::EncoderDecoder(g) => g.model().class_name(),
        }
    }

    /// The head the checkpoint carries.
    pub fn head(&self) -> Head {
        match self {
            Loaded::Encoder(m) => m.encoder.head(),
            Loaded::Decoder(_) => Head::CausalLM,
            Loaded::EncoderDecoder(g) => g.model().resolved().head,
        }
    }

    /// The tokenizer, under girder's policy.
    pub fn tokenizer(&self) -> &TextTokenizer {
        match self {
            Loaded::Encoder(m) => &m.tokenizer,
            Loaded::Decoder(g) => g.text_tokenizer(),
            Loaded::EncoderDecoder(g) => g.text_tokenizer(),
        }
    }

    /// The model folder and its config.json; `None` for a GGUF file.
    pub fn files(&self) -> Option<(&ModelFolder, &CommonConfig)> {
        match self {
            Loaded::Encoder(m) => Some((&m.folder, &m.config)),
            Loaded::Decoder(g) => g.files(),
            Loaded::EncoderDecoder(g) => Some(g.files()),
        }
    }

    /// The task its head implies: text-classification for `…ForSequenceClassification`,
    /// token-classification for `…ForTokenClassification`, fill-mask for `…ForMaskedLM`,
    /// embeddings for a base (or sentence-transformers) model, text-generation for a causal
    /// language model. `girder serve` uses it when no `--task` is given.
    pub fn default_task(&self) -> Task {
        Task::for_head(self.head())
    }

    /// `Ok` when this model can run `task`; otherwise an error that says which kinds (and
    /// heads) serve it.
    pub fn supports(&self, task: Task) -> Result<()> {
        task.check(self.kind(), self.head(), self.class_name())
    }

    /// The encoder, or an error naming the kind this model is.
    pub fn encoder(&self) -> Result<&Model> {
        match self {
            Loaded::Encoder(m) => Ok(m),
            _ => Err(self.wrong_kind(Kind::Encoder)),
        }
    }

    /// The causal language model, or an error naming the kind this model is.
    pub fn decoder(&self) -> Result<&TextGenerator> {
        match self {
            Loaded::Decoder(g) => Ok(g),
            _ => Err(self.wrong_kind(Kind::Decoder)),
        }
    }

    /// The encoder-decoder, or an error naming the kind this model is.
    pub fn encoder_decoder(&self) -> Result<&Seq2SeqGenerator> {
        match self {
            Loaded::EncoderDecoder(g) => Ok(g),
            _ => Err(self.wrong_kind(Kind::EncoderDecoder)),
        }
    }

    /// [`encoder`](Self::encoder), by value.
    pub fn into_encoder(self) -> Result<Model> {
        match self {
            Loaded::Encoder(m) => Ok(*m),
            other => Err(other.wrong_kind(Kind::Encoder)),
        }
    }

    /// [`decoder`](Self::decoder), by value.
    pub fn into_decoder(self) -> Result<TextGenerator> {
        match self {
            Loaded::Decoder(g) => Ok(*g),
            other => Err(other.wrong_kind(Kind::Decoder)),
        }
    }

    /// [`encoder_decoder`](Self::encoder_decoder), by value.
    pub fn into_encoder_decoder(self) -> Result<Seq2SeqGenerator> {
        match self {
            Loaded::EncoderDecoder(g) => Ok(*g),
            other => Err(other.wrong_kind(Kind::EncoderDecoder)),
        }
    }

    fn wrong_kind(&self, wanted: Kind) -> Error {
        wrong_kind(self.class_name(), self.kind(), wanted)
    }
}

impl Model {
    /// Loads an encoder: [`load`], refusing any other kind.
    ///
    /// ```
    /// # fn main() -> girder::Result<()> {
    /// use girder::pipelines::{embeddings, Model};
    /// let model = Model::load("tests/fixtures/bert-st-mean", &Default::default())?;
    /// let out = embeddings::run(&model, &["A man is eating food."], &embeddings::Options::default())?;
    /// assert!(out[0].embedding.len() > 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn load(reference: &str, options: &LoadOptions) -> Result<Model> {
        load(reference, options)?.into_encoder()
    }
}

impl TextGenerator {
    /// Loads a causal language model (a folder, a hub id or a `.gguf` file, quantized):
    /// [`load`] with the default options, refusing any other kind.
    pub fn load(reference: &str) -> Result<TextGenerator> {
        load(reference, &LoadOptions::default())?.into_decoder()
    }
}

impl From<Model> for Loaded {
    fn from(model: Model) -> Self {
        Loaded::Encoder(Box::new(model))
    }
}

impl From<TextGenerator> for Loaded {
    fn from(generator: TextGenerator) -> Self {
        Loaded::Decoder(Box::new(generator))
    }
}

impl From<Seq2SeqGenerator> for Loaded {
    fn from(generator: Seq2SeqGenerator) -> Self {
        Loaded::EncoderDecoder(Box::new(generator))
    }
}

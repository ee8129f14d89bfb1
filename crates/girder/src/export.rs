//! Writing a model in another form, as `girder quantize` does: a LLaMA, Mistral or Qwen2
//! decoder as a GGUF file that llama.cpp and girder load ([`write_gguf`]), its tensors in the
//! types girder's own `--quantize` gives them at load; any safetensors model as a folder of
//! bf16 or f16 weights that transformers and girder load ([`write_half_precision`]).
//!
//! A GGUF file reproduces the model girder quantizes at load: the same block types by the
//! same rule ([`Quantization::quantize`]), q and k permuted as llama.cpp stores them (girder
//! undoes it on load), the tokenizer written as `tokenizer.ggml.*` keys and read back before
//! the file is returned: the probe texts must encode to the same ids and decode to the same
//! text as with tokenizer.json.

use crate::check::drift::probe_texts;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::generate::chat::ChatTemplate;
use crate::generate::GenerationConfig;
use crate::hub::gguf::GgufFile;
use crate::hub::gguf_write::{self, SpecialTokens};
use crate::hub::{ModelFolder, ModelRef, Weights};
use crate::layers::rope::RopeScaling;
use crate::layers::{Activation, Quantization, MIN_QUANTIZED_ELEMENTS};
use crate::models::llama;
use crate::models::registry::{self, GgufFormat};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How [`write_gguf`] writes a model.
#[derive(Debug, Clone, Default)]
pub struct GgufOptions {
    /// The block type of the linear layers and the embedding table (each matrix by
    /// [`Quantization::quantize`]'s rule); `None` writes every tensor in f32.
    pub quantization: Option<Quantization>,
    /// The output projection stays f32 (llama.cpp's `--output-tensor-type f32`); a tied one
    /// is written as its own `output.weight`.
    pub output_in_f32: bool,
    /// More string metadata, such as the accuracy report (`girder.drift_report`).
    pub metadata: Vec<(String, String)>,
}

/// What [`write_gguf`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct GgufWritten {
    pub file: PathBuf,
    pub bytes: u64,
    /// `general.architecture`.
    pub architecture: &'static str,
    /// How many tensors of each GGML type, by llama.cpp's name (`Q4_K`: 150).
    pub tensor_types: BTreeMap<String, usize>,
    /// Texts the file's tokenizer encoded and decoded as tokenizer.json does.
    pub tokenizer_texts_checked: usize,
}

/// Writes the decoder `reference` (a folder or hub id holding config.json, tokenizer.json and
/// safetensors) as the GGUF file `out`. Refused, naming the field: architectures other than
/// LLaMA, Mistral and Qwen2, what llama.cpp's LLaMA and Qwen2 graphs do not compute (another
/// activation, RoPE scaling other than linear, sliding windows, MLP or output biases, biased
/// q/k on a permuted LLaMA), tensors llama.cpp has no name for, and tokenizers
/// [`gguf_write::tokenizer_metadata`] cannot say. The file is written beside `out` and renamed
/// once whole; when its tokenizer does not read back as tokenizer.json, it is removed.
pub fn write_gguf(reference: &str, options: &GgufOptions, out: &Path) -> Result<GgufWritten> {
    let Plan {
        cfg,
        format,
        mut metadata,
        tokens,
        tokenizer_path,
        weights,
        names,
        ..
    } = plan(reference, options)?;
    metadata.extend(
        options
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone()))),
    );

    // The tensors, in the types girder's own load gives them.
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, gguf_name) in names {
        let shape = weights.shape_of(&name).unwrap_or_default();
        let mut tensor = weights.get(shape.clone(), &name)?;
        if format.permuted_qk {
            if name.ends_with("self_attn.q_proj.weight") {
                tensor = gguf_write::permute_rows(&tensor, cfg.num_attention_heads)?;
            } else if name.ends_with("self_attn.k_proj.weight") {
                tensor = gguf_write::permute_rows(&tensor, cfg.num_key_value_heads)?;
            }
        }
        let is_output = name == "lm_head.weight";
        let blocks = match options.quantization {
            Some(q) if shape.len() == 2 && !(is_output && options.output_in_f32) => {
                q.quantize(&tensor)?
            }
            _ => None,
        };
        if name == EMBEDDING && cfg.tie_word_embeddings && options.output_in_f32 {
            tensors.push((
                "output.weight".into(),
                QTensor::quantize(&tensor, GgmlDType::F32)?,
            ));
        }
        let stored = match blocks {
            Some(blocks) => blocks,
            None => QTensor::quantize(&tensor, GgmlDType::F32)?,
        };
        tensors.push((gguf_name, stored));
    }
    let mut tensor_types = BTreeMap::new();
    for (_, t) in &tensors {
        *tensor_types.entry(ggml_name(t.dtype())).or_insert(0) += 1;
    }
    let bytes = gguf_write::write(out, &metadata, &tensors)?;
    drop(tensors);

    // Read back: the file's tokenizer must be tokenizer.json's.
    let checked = check_tokenizer(out, &tokens, &tokenizer_path).inspect_err(|_| {
        let _ = std::fs::remove_file(out);
    })?;
    Ok(GgufWritten {
        file: out.to_path_buf(),
        bytes,
        architecture: format.architecture,
        tensor_types,
        tokenizer_texts_checked: checked,
    })
}

/// Checks that [`write_gguf`] can write `reference` (architecture, config, tokenizer, tensor
/// names and shapes from the safetensors headers) without reading any weight: what `girder
/// quantize` asks before the accuracy report runs.
pub fn check_writable(reference: &str) -> Result<()> {
    plan(reference, &GgufOptions::default()).map(drop)
}

/// The word-embedding table of the decoders written as GGUF.
const EMBEDDING: &str = "model.embed_tokens.weight";

/// What [`plan`] resolves of a model before any tensor is read.
struct Plan {
    cfg: llama::Config,
    format: GgufFormat,
    /// Everything but [`GgufOptions::metadata`].
    metadata: Vec<(String, Value)>,
    tokens: tokenizers::Tokenizer,
    tokenizer_path: PathBuf,
    weights: Weights,
    /// Checkpoint name → GGUF name, for every tensor written, in checkpoint order.
    names: Vec<(String, String)>,
}

fn plan(reference: &str, options: &GgufOptions) -> Result<Plan> {
    let (folder, weights) = f32_checkpoint(reference)?;
    let config_path = folder.require("config.json", "a model folder needs config.json")?;
    let common = CommonConfig::from_file(&config_path)?;
    let resolved = registry::resolve(&common)?;
    let refuse = |reason: String| Error::GgufExport {
        file: config_path.clone(),
        reason,
    };
    let model_type = common.model_type.as_deref().unwrap_or_default();
    let gguf_row = match model_type {
        // llama.cpp stores Mistral as LLaMA.
        "llama" | "mistral" => "llama",
        "qwen2" => "qwen2",
        _ => {
            return Err(refuse(format!(
                "{} ({}) has no GGUF writer; girder writes LLaMA, Mistral and Qwen2 decoders (--to bf16 or f16 writes any model as safetensors)",
                resolved.class_name, resolved.architecture.name
            )))
        }
    };
    let format: GgufFormat = registry::ARCHITECTURES
        .iter()
        .filter_map(|a| a.gguf)
        .find(|g| g.architecture == gguf_row)
        .expect("the registry stores LLaMA and Qwen2 in GGUF");
    let cfg = llama::Config::from_common(&common)?;
    let field = |name: &str, why: String| refuse(format!("`{name}`: {why}"));
    if cfg.hidden_act != Activation::Silu {
        return Err(field(
            "hidden_act",
            format!(
                "{:?}; llama.cpp's {gguf_row} graph computes SiLU",
                cfg.hidden_act
            ),
        ));
    }
    if let Some(window) = cfg.windows.iter().flatten().next() {
        if *window < cfg.max_position_embeddings {
            return Err(field(
                "sliding_window",
                format!(
                    "{window} tokens, under the context of {}; llama.cpp's {gguf_row} graph attends to the whole context",
                    cfg.max_position_embeddings
                ),
            ));
        }
    }
    if cfg.mlp_bias {
        return Err(field(
            "mlp_bias",
            "llama.cpp's graph has no MLP biases".into(),
        ));
    }
    if cfg.o_bias || (cfg.qkv_bias && format.permuted_qk) {
        return Err(field(
            "attention_bias",
            "girder writes LLaMA's attention unbiased (q/k biases would need the rows' permutation too)".into(),
        ));
    }
    let rope_scaling = match &cfg.rope_scaling {
        RopeScaling::Default => None,
        RopeScaling::Linear { factor } => Some(*factor),
        other => {
            return Err(field(
                "rope_scaling",
                format!("{other:?}; girder writes no scaling or linear scaling"),
            ))
        }
    };

    // The tensors' names and the embedding's rows, from the safetensors headers.
    let embedding_rows = match weights.shape_of(EMBEDDING).as_deref() {
        Some(&[rows, hidden]) if hidden == cfg.hidden_size => rows,
        other => {
            return Err(Error::GgufExport {
                file: folder.root().to_path_buf(),
                reason: format!(
                    "`{EMBEDDING}` has shape {other:?}, not [vocab_size, {}]",
                    cfg.hidden_size
                ),
            })
        }
    };
    if embedding_rows != cfg.vocab_size {
        return Err(field(
            "vocab_size",
            format!(
                "{} against the embedding's {embedding_rows} rows",
                cfg.vocab_size
            ),
        ));
    }
    let arch = format.architecture;
    let mut names = Vec::new();
    for name in weights.checkpoint_names() {
        if name.ends_with("rotary_emb.inv_freq")
            || (name == "lm_head.weight" && cfg.tie_word_embeddings)
        {
            continue;
        }
        let gguf_name = format
            .tensor_names
            .gguf_name(&name)
            .ok_or_else(|| Error::GgufExport {
                file: folder.root().to_path_buf(),
                reason: format!("tensor `{name}` has no name in llama.cpp's {arch} architecture"),
            })?;
        names.push((name, gguf_name));
    }

    let number = |name: &str, value: usize| {
        u32::try_from(value)
            .map(Value::U32)
            .map_err(|_| field(name, format!("{value} does not fit GGUF's 32 bits")))
    };
    let key = |k: &str| format!("{arch}.{k}");
    let model_name = reference
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(reference);
    let mut metadata: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(model_name.into())),
        (
            "general.file_type".into(),
            Value::U32(file_type(options.quantization)),
        ),
        ("general.quantization_version".into(), Value::U32(2)),
        (key("vocab_size"), number("vocab_size", cfg.vocab_size)?),
        (
            key("context_length"),
            number("max_position_embeddings", cfg.max_position_embeddings)?,
        ),
        (
            key("embedding_length"),
            number("hidden_size", cfg.hidden_size)?,
        ),
        (
            key("block_count"),
            number("num_hidden_layers", cfg.num_hidden_layers)?,
        ),
        (
            key("feed_forward_length"),
            number("intermediate_size", cfg.intermediate_size)?,
        ),
        (
            key("attention.head_count"),
            number("num_attention_heads", cfg.num_attention_heads)?,
        ),
        (
            key("attention.head_count_kv"),
            number("num_key_value_heads", cfg.num_key_value_heads)?,
        ),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(cfg.rope_theta as f32)),
        (
            key("rope.dimension_count"),
            number("head_dim", cfg.head_dim)?,
        ),
    ];
    if cfg.head_dim * cfg.num_attention_heads != cfg.hidden_size {
        metadata.push((
            key("attention.key_length"),
            number("head_dim", cfg.head_dim)?,
        ));
        metadata.push((
            key("attention.value_length"),
            number("head_dim", cfg.head_dim)?,
        ));
    }
    if let Some(factor) = rope_scaling {
        metadata.push((key("rope.scaling.type"), Value::String("linear".into())));
        metadata.push((key("rope.scaling.factor"), Value::F32(factor)));
    }

    // The tokenizer, with the special tokens of generation_config.json.
    let tokenizer_path = folder.require("tokenizer.json", "the GGUF file carries the tokenizer")?;
    let tokens =
        tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::BadTokenizer {
            file: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
    let generation = GenerationConfig::from_folder(&folder, &common)?;
    let (eos, eot) = match generation.eos_token_ids.as_slice() {
        [] => (None, None),
        [eos] => (Some(*eos), None),
        [eos, eot] => (Some(*eos), Some(*eot)),
        more => {
            return Err(field(
                "eos_token_id",
                format!("{more:?}: GGUF holds two ending tokens (end of text and end of turn)"),
            ))
        }
    };
    let special = SpecialTokens {
        bos: generation.bos_token_id,
        eos,
        eot,
        pad: generation.pad_token_id,
        add_bos: adds_bos(&tokens, generation.bos_token_id, &tokenizer_path)?,
    };
    let template = ChatTemplate::from_folder(&folder)?;
    metadata.extend(gguf_write::tokenizer_metadata(
        &tokenizer_path,
        embedding_rows,
        &special,
        template.as_ref().map(ChatTemplate::source),
    )?);
    Ok(Plan {
        cfg,
        format,
        metadata,
        tokens,
        tokenizer_path,
        weights,
        names,
    })
}

/// The folder of the safetensors model `reference` and its tensors, read as f32.
fn f32_checkpoint(reference: &str) -> Result<(ModelFolder, Weights)> {
    let folder = ModelRef::parse(reference).resolve()?;
    let weights = Weights::from_safetensors(&folder.weight_files()?, DType::F32, &Device::Cpu)?;
    Ok((folder, weights))
}

/// llama.cpp's name of a GGML type (`Q4_K`, `Q8_0`, `F32`).
fn ggml_name(dtype: GgmlDType) -> String {
    let name = format!("{dtype:?}");
    match name.strip_suffix('K') {
        Some(stem) if !stem.contains('_') => format!("{stem}_K"),
        _ => name,
    }
}

/// What [`write_half_precision`] wrote.
#[derive(Debug, Clone, Serialize)]
pub struct HalfWritten {
    pub folder: PathBuf,
    /// The size of the weights file.
    pub bytes: u64,
    /// Tensors stored in the half type, and in f32.
    pub half_tensors: usize,
    pub f32_tensors: usize,
    /// Integer tensors of the checkpoint not written (position-id buffers).
    pub dropped: Vec<String>,
}

/// Files of a model folder that hold weights: [`write_half_precision`] writes its own and
/// copies none of these (nor `onnx/` and `openvino/` exports).
fn is_weights_file(name: &str) -> bool {
    const EXTENSIONS: [&str; 10] = [
        ".safetensors",
        ".bin",
        ".pt",
        ".pth",
        ".h5",
        ".msgpack",
        ".onnx",
        ".ot",
        ".gguf",
        ".ckpt",
    ];
    EXTENSIONS.iter().any(|e| name.ends_with(e)) || name.ends_with(".safetensors.index.json")
}

/// Checks that [`write_half_precision`] may write `reference` into `out` before any work: not
/// into the model's own folder nor one inside it.
pub fn check_half_target(reference: &str, out: &Path) -> Result<()> {
    let folder = ModelRef::parse(reference).resolve()?;
    let source = folder
        .root()
        .canonicalize()
        .map_err(|e| Error::io(folder.root(), e))?;
    // `out` may not exist yet: its nearest existing ancestor says where it would be.
    let mut existing = out.to_path_buf();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.file_name(), existing.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    let mut resolved = if existing.as_os_str().is_empty() {
        std::env::current_dir().map_err(|e| Error::io(out, e))?
    } else {
        existing
            .canonicalize()
            .map_err(|e| Error::io(&existing, e))?
    };
    resolved.extend(rest.iter().rev());
    if resolved.starts_with(&source) {
        return Err(Error::InvalidOption {
            option: "out".into(),
            reason: format!(
                "{} is inside the model's own folder {}",
                out.display(),
                source.display()
            ),
        });
    }
    Ok(())
}

/// Writes the safetensors model `reference` as the folder `out` (created; the caller decides
/// whether an existing one may be written into) with its 2-D tensors of at least
/// [`MIN_QUANTIZED_ELEMENTS`] values in `dtype` (bf16 or f16) and the rest in f32, integer
/// buffers (`position_ids`) left out; every other file of the folder (config, tokenizer,
/// sentence-transformers modules, their weights as they are; not hidden ones, not links to
/// folders) is copied, and
/// `card_section` is appended to README.md (created when absent). Nothing is written before
/// every tensor has been read.
///
/// Why those tensors: they are the ones a `--dtype` load rounds from f32 whatever their role
/// (linear layers and large embedding tables), so the folder loaded with the same `--dtype`
/// holds the same values as the source halved at load; smaller embedding tables, which that
/// load halves too, are rounded from the same f32 values there.
pub fn write_half_precision(
    reference: &str,
    dtype: DType,
    out: &Path,
    card_section: &str,
) -> Result<HalfWritten> {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return Err(Error::InvalidOption {
            option: "to".into(),
            reason: format!("{dtype:?} is not a half type (bf16, f16)"),
        });
    }
    check_half_target(reference, out)?;
    let (folder, weights) = f32_checkpoint(reference)?;
    folder.require("config.json", "a model folder needs config.json")?;
    let (mut half_tensors, mut f32_tensors) = (0, 0);
    let mut dropped = Vec::new();
    let mut tensors = Vec::new();
    for name in weights.checkpoint_names() {
        let shape = weights.shape_of(&name).unwrap_or_default();
        let tensor = match weights.get(shape.clone(), &name) {
            Ok(t) => t,
            // Integer buffers (BERT's `position_ids`): both loaders compute them.
            Err(Error::DtypeMismatch { .. }) => {
                dropped.push(name);
                continue;
            }
            Err(e) => return Err(e),
        };
        let halved = shape.len() == 2 && shape.iter().product::<usize>() >= MIN_QUANTIZED_ELEMENTS;
        if halved {
            half_tensors += 1;
            tensors.push((name, tensor.to_dtype(dtype)?));
        } else {
            f32_tensors += 1;
            tensors.push((name, tensor));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    copy_model_files(folder.root(), out)?;
    let path = out.join("model.safetensors");
    replace_link(&path)?;
    crate::hub::weights::write_safetensors(tensors, &path)?;
    let readme = out.join("README.md");
    let mut card = match std::fs::read_to_string(&readme) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(Error::io(&readme, e)),
    };
    if !card.is_empty() && !card.ends_with("\n\n") {
        card.push_str(if card.ends_with('\n') { "\n" } else { "\n\n" });
    }
    card.push_str(card_section);
    replace_link(&readme)?;
    std::fs::write(&readme, card).map_err(|e| Error::io(&readme, e))?;
    Ok(HalfWritten {
        folder: out.to_path_buf(),
        bytes: std::fs::metadata(&path)
            .map_err(|e| Error::io(&path, e))?
            .len(),
        half_tensors,
        f32_tensors,
        dropped,
    })
}

/// Removes `path` when it is a link, so that writing it never writes through to the file it
/// points at (a cache snapshot's blob, shared with another snapshot).
fn replace_link(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            std::fs::remove_file(path).map_err(|e| Error::io(path, e))
        }
        _ => Ok(()),
    }
}

/// Copies `from`'s files and subfolders into `to`, the top level's weights excepted
/// ([`is_weights_file`]: the model's own, which the caller writes); a subfolder's are copied
/// as they are (a sentence-transformers `2_Dense/` module). A link to a file is copied as
/// the file (a Hugging Face cache snapshot links to its blobs); links to folders and hidden
/// names are skipped.
fn copy_model_files(from: &Path, to: &Path) -> Result<()> {
    copy_files(from, to, true)
}

fn copy_files(from: &Path, to: &Path, top: bool) -> Result<()> {
    for entry in std::fs::read_dir(from).map_err(|e| Error::io(from, e))? {
        let entry = entry.map_err(|e| Error::io(from, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let target = to.join(&name);
        let own = std::fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
        if own.is_dir() {
            if name != "onnx" && name != "openvino" {
                std::fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
                copy_files(&path, &target, false)?;
            }
            continue;
        }
        let is_file = if own.file_type().is_symlink() {
            std::fs::metadata(&path).is_ok_and(|m| m.is_file())
        } else {
            own.is_file()
        };
        if is_file && !(top && is_weights_file(&name)) {
            replace_link(&target)?;
            std::fs::copy(&path, &target).map_err(|e| Error::io(&target, e))?;
        }
    }
    Ok(())
}

/// llama.cpp's `llama_ftype` of a file quantized so (the K-quants' "small" variants: girder
/// gives every matrix one type, with llama.cpp's fallbacks).
fn file_type(quantization: Option<Quantization>) -> u32 {
    match quantization {
        None => 0,
        Some(Quantization::Q4_0) => 2,
        Some(Quantization::Q8_0) => 7,
        Some(Quantization::Q5_0) => 8,
        Some(Quantization::Q4K) => 14,
        Some(Quantization::Q5K) => 16,
        Some(Quantization::Q6K) => 18,
    }
}

/// Whether `tokens` starts every input with BOS, the only addition a GGUF vocabulary can
/// state; a post-processor that adds anything else is refused.
fn adds_bos(tokens: &tokenizers::Tokenizer, bos: Option<u32>, file: &Path) -> Result<bool> {
    let text = ["Hello world".to_string()];
    let plain = tokens
        .encode(text[0].as_str(), false)
        .map(|e| e.get_ids().to_vec())
        .map_err(|e| Error::BadTokenizer {
            file: file.to_path_buf(),
            reason: e.to_string(),
        })?;
    let with_special = gguf_write::encodings(tokens, &text, file)?.remove(0);
    if plain == with_special {
        return Ok(false);
    }
    match (bos, with_special.split_first()) {
        (Some(bos), Some((&first, rest))) if first == bos && rest == plain.as_slice() => Ok(true),
        _ => Err(Error::GgufExport {
            file: file.to_path_buf(),
            reason: format!(
                "the post-processor turns {plain:?} into {with_special:?}; a GGUF vocabulary can only add BOS{}",
                bos.map(|b| format!(" ({b})")).unwrap_or_default()
            ),
        }),
    }
}

/// Texts the written tokenizer is checked on: the drift probe, and what trips tokenizers up
/// (digits, runs of spaces and newlines, accents and emoji, code, the empty text, and every
/// added token in a sentence).
fn tokenizer_probe(tokens: &tokenizers::Tokenizer) -> Vec<String> {
    let mut texts = probe_texts();
    texts.extend(
        [
            "In 2024, 1234567 people paid $3.50 each.",
            "  two leading spaces,\ttabs\tand\n\nnewlines  \n",
            "Ünïcödé façade — naïve café 🤖 日本語のテキスト",
            "def f(x):\n    return x**2  # squared",
            "",
        ]
        .map(String::from),
    );
    let added: Vec<String> = tokens
        .get_added_tokens_decoder()
        .values()
        .map(|t| t.content.clone())
        .collect();
    if !added.is_empty() {
        texts.push(format!(
            "{} between {}",
            added.join("text"),
            added.join(" ")
        ));
    }
    texts
}

/// Opens the written file and checks that its tokenizer encodes and decodes the probe as
/// `tokens` (tokenizer.json) does; returns how many texts were checked.
fn check_tokenizer(out: &Path, tokens: &tokenizers::Tokenizer, source: &Path) -> Result<usize> {
    let gguf = GgufFile::open(out)?;
    let written = gguf.tokenizer()?;
    let texts = tokenizer_probe(tokens);
    let expected = gguf_write::encodings(tokens, &texts, source)?;
    let got = gguf_write::encodings(&written, &texts, out)?;
    let differs = |what: String| Error::GgufExport {
        file: out.to_path_buf(),
        reason: format!(
            "its tokenizer differs from {} on {what} (the file was removed)",
            source.display()
        ),
    };
    for ((text, e), g) in texts.iter().zip(&expected).zip(&got) {
        if e != g {
            return Err(differs(format!("{text:?}: ids {g:?} against {e:?}")));
        }
        let decode = |t: &tokenizers::Tokenizer, file: &Path| {
            t.decode(e, false).map_err(|err| Error::BadTokenizer {
                file: file.to_path_buf(),
                reason: err.to_string(),
            })
        };
        let (from_source, from_file) = (decode(tokens, source)?, decode(&written, out)?);
        if from_source != from_file {
            return Err(differs(format!(
                "the decoding of {e:?}: {from_file:?} against {from_source:?}"
            )));
        }
    }
    Ok(texts.len())
}

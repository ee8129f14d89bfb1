//! GGUF files (llama.cpp's format): metadata, quantized tensors under Hugging Face names, and
//! the tokenizer the metadata describes.
//!
//! [`GgufFile::open`] reads the header and metadata; [`GgufFile::read_tensors`] then reads
//! the tensors, renamed to the names of the transformers checkpoint by the architecture's
//! [`TensorNames`] (`blk.3.attn_q.weight` → `model.layers.3.self_attn.q_proj.weight`; the
//! maps live in the model files, named by the registry), so the model files load a GGUF
//! through the same [`Weights`](super::Weights) lookups as safetensors. llama.cpp's converter
//! permutes the rows of LLaMA's q/k projections for its interleaved RoPE (`LlamaModel.permute`
//! in `convert_hf_to_gguf.py`); they are un-permuted on load when the registry says so, as
//! transformers' `integrations/ggml.py` does, so one RoPE layout serves both formats. Rows are
//! independent in every GGML block format, so un-permuting moves whole rows of quantized
//! bytes and never requantizes.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How llama.cpp names an architecture's tensors, and the transformers names they get.
#[derive(Debug)]
pub struct TensorNames {
    /// Whole-model modules: GGUF name → transformers name (`token_embd` →
    /// `model.embed_tokens`); the parameter (`.weight`, `.bias`) is kept.
    pub whole: &'static [(&'static str, &'static str)],
    /// Where transformers keeps layer `i`: `{layer_prefix}.{i}`.
    pub layer_prefix: &'static str,
    /// Per-layer modules: `blk.{i}.{gguf}.{param}` → `{layer_prefix}.{i}.{transformers}.{param}`.
    pub layer: &'static [(&'static str, &'static str)],
}

impl TensorNames {
    /// The transformers name of GGUF tensor `gguf`, or `None` when the map has no entry.
    ///
    /// ```
    /// use girder::hub::gguf::TensorNames;
    /// const NAMES: TensorNames = TensorNames {
    ///     whole: &[("token_embd", "model.embed_tokens")],
    ///     layer_prefix: "model.layers",
    ///     layer: &[("attn_q", "self_attn.q_proj")],
    /// };
    /// assert_eq!(NAMES.transformers_name("blk.3.attn_q.weight").as_deref(), Some("model.layers.3.self_attn.q_proj.weight"));
    /// assert_eq!(NAMES.transformers_name("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
    /// assert_eq!(NAMES.transformers_name("rope_freqs.weight"), None);
    /// ```
    pub fn transformers_name(&self, gguf: &str) -> Option<String> {
        let (module, param) = gguf.rsplit_once('.')?;
        if let Some((_, hf)) = self.whole.iter().find(|(g, _)| *g == module) {
            return Some(format!("{hf}.{param}"));
        }
        let rest = module.strip_prefix("blk.")?;
        let (layer, module) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (_, hf) = self.layer.iter().find(|(g, _)| *g == module)?;
        Some(format!("{}.{layer}.{hf}.{param}", self.layer_prefix))
    }
}

/// An opened GGUF file: its metadata and, once [read](GgufFile::read_tensors), its tensors
/// (renamed, q/k un-permuted).
pub struct GgufFile {
    path: PathBuf,
    metadata: HashMap<String, Value>,
    architecture: String,
    /// The header's tensor table, until the tensors are read.
    tensor_infos: Option<Content>,
    /// Hugging Face tensor name → tensor.
    tensors: HashMap<String, Arc<QTensor>>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// GGML type ids (ggml.h `enum ggml_type`), to name a type candle cannot read.
fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgufFile {
    /// Reads the header and the metadata; an unknown tensor type is named in the error. The
    /// tensors are read by [`read_tensors`](Self::read_tensors).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bad = |reason: String| Error::BadGguf {
            file: path.clone(),
            reason,
        };
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut content = Content::read(&mut file).map_err(|e| {
            let msg = root_message(&e);
            match msg
                .strip_prefix("unknown dtype for tensor ")
                .and_then(|id| id.trim().parse::<u32>().ok())
            {
                Some(id) => Error::UnsupportedGguf {
                    file: path.clone(),
                    what: format!(
                        "tensor type {} (GGML type {id}); supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q8_K",
                        ggml_type_name(id).unwrap_or("unknown")
                    ),
                },
                None => bad(msg),
            }
        })?;
        let architecture = match content.metadata.get("general.architecture") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(bad("no `general.architecture` in the metadata".into())),
        };
        let metadata = std::mem::take(&mut content.metadata);
        Ok(GgufFile {
            path,
            metadata,
            architecture,
            tensor_infos: Some(content),
            tensors: HashMap::new(),
        })
    }

    /// The header's matrices whose block type girder's kernels do not read (Q2_K, Q3_K, the IQ
    /// types, F16…), by type name, each with its tensors' GGUF names, sorted. They load and run
    /// through candle's quantized matmul, which dequantizes as it goes. Empty once the tensors
    /// are read.
    ///
    /// ```no_run
    /// let gguf = girder::hub::GgufFile::open("model.gguf")?;
    /// for (dtype, names) in gguf.matrices_without_kernel() {
    ///     println!("{dtype}: {}", names.join(", "));
    /// }
    /// # Ok::<(), girder::error::Error>(())
    /// ```
    pub fn matrices_without_kernel(&self) -> std::collections::BTreeMap<String, Vec<String>> {
        let mut by_type = std::collections::BTreeMap::<String, Vec<String>>::new();
        for (name, info) in self.tensor_infos.iter().flat_map(|c| &c.tensor_infos) {
            let dtype = info.ggml_dtype;
            if info.shape.rank() == 2
                && dtype != GgmlDType::F32
                && !crate::layers::cpu::quant_matmul::QuantMatrix::reads(dtype)
            {
                by_type
                    .entry(format!("{dtype:?}"))
                    .or_default()
                    .push(name.clone());
            }
        }
        by_type.values_mut().for_each(|names| names.sort_unstable());
        by_type
    }

    /// Reads every tensor onto `device`, renamed by `names` (a tensor the map does not name
    /// keeps its GGUF name); with `permuted_qk`, undoes llama.cpp's permutation of the q and
    /// k rows. Reads once: later calls do nothing.
    pub fn read_tensors(
        &mut self,
        names: &TensorNames,
        permuted_qk: bool,
        device: &Device,
    ) -> Result<()> {
        let Some(content) = self.tensor_infos.take() else {
            return Ok(());
        };
        let path = self.path.clone();
        let bad = |reason: String| Error::BadGguf {
            file: path.clone(),
            reason,
        };
        let prefix = self.architecture.clone();
        let heads = self.u32_key(&format!("{prefix}.attention.head_count"))? as usize;
        let kv_heads = self
            .opt_u32(&format!("{prefix}.attention.head_count_kv"))?
            .map_or(heads, |h| h as usize);
        let mut file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        for name in content.tensor_infos.keys() {
            let tensor = content
                .tensor(&mut file, name, &Device::Cpu)
                .map_err(|e| bad(format!("tensor `{name}`: {}", root_message(&e))))?;
            let module = name.rsplit('.').nth(1);
            let tensor = match module {
                Some("attn_q") if permuted_qk && name.ends_with(".weight") => {
                    unpermute_rows(&tensor, heads)
                        .map_err(|e| bad(format!("tensor `{name}`: {e}")))?
                }
                Some("attn_k") if permuted_qk && name.ends_with(".weight") => {
                    unpermute_rows(&tensor, kv_heads)
                        .map_err(|e| bad(format!("tensor `{name}`: {e}")))?
                }
                _ => tensor,
            };
            let tensor = if device.is_cpu() {
                tensor
            } else {
                let data = tensor
                    .data()
                    .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
                let storage = QStorage::from_data(data, device, tensor.dtype())?;
                QTensor::new(storage, tensor.shape().clone())?
            };
            let hf = names
                .transformers_name(name)
                .unwrap_or_else(|| name.clone());
            self.tensors.insert(hf, Arc::new(tensor));
        }
        Ok(())
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `general.architecture` (`llama`, `qwen2`).
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// The raw metadata.
    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.metadata
    }

    /// A tensor by its Hugging Face name (or its GGUF name when it has no HF counterpart).
    pub fn tensor(&self, name: &str) -> Option<&Arc<QTensor>> {
        self.tensors.get(name)
    }

    /// Names of all tensors (Hugging Face names where mapped).
    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.tensors.keys()
    }

    fn bad_key(&self, key: &str, reason: String) -> Error {
        Error::BadGguf {
            file: self.path.clone(),
            reason: format!("metadata `{key}`: {reason}"),
        }
    }

    /// An integer metadata value, if present.
    pub fn opt_u32(&self, key: &str) -> Result<Option<u32>> {
        let Some(v) = self.metadata.get(key) else {
            return Ok(None);
        };
        let n = match v {
            Value::U8(x) => *x as u64,
            Value::U16(x) => *x as u64,
            Value::U32(x) => *x as u64,
            Value::U64(x) => *x,
            Value::I8(x) if *x >= 0 => *x as u64,
            Value::I16(x) if *x >= 0 => *x as u64,
            Value::I32(x) if *x >= 0 => *x as u64,
            Value::I64(x) if *x >= 0 => *x as u64,
            other => {
                return Err(self.bad_key(
                    key,
                    format!("expected an unsigned integer, found {other:?}"),
                ))
            }
        };
        u32::try_from(n)
            .map(Some)
            .map_err(|_| self.bad_key(key, format!("{n} is too large")))
    }

    /// An integer metadata value that must be present.
    pub fn u32_key(&self, key: &str) -> Result<u32> {
        self.opt_u32(key)?
            .ok_or_else(|| self.bad_key(key, "missing".into()))
    }

    /// A float metadata value, if present.
    pub fn opt_f32(&self, key: &str) -> Result<Option<f32>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(Some(*x)),
            Some(Value::F64(x)) => Ok(Some(*x as f32)),
            Some(other) => Err(self.bad_key(key, format!("expected a float, found {other:?}"))),
        }
    }

    /// A string metadata value, if present.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(self.bad_key(key, format!("expected a string, found {other:?}"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Vec<&str>> {
        match self.metadata.get(key) {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.as_str()),
                    other => Err(self.bad_key(key, format!("expected strings, found {other:?}"))),
                })
                .collect(),
            Some(other) => Err(self.bad_key(key, format!("expected an array, found {other:?}"))),
            None => Err(self.bad_key(key, "missing".into())),
        }
    }

    /// The tokenizer the metadata describes, as transformers' GGUF loader builds it
    /// (`integrations/gguf/gguf_tokenizer_mapping.py`):
    /// - `tokenizer.ggml.model = gpt2`: byte-level BPE with the file's vocabulary and merges,
    ///   split as the vocabulary's merges were learned (`tokenizer.ggml.pre`: Qwen2's and
    ///   Llama 3's patterns, GPT-2's otherwise), no BOS added;
    /// - `llama` in a Gemma file: Gemma's SentencePiece BPE with byte fallback, its merges
    ///   rebuilt from the vocabulary (the file lists none), `<bos>` added;
    ///
    /// and the tokens the file marks control (type 3) as special added tokens, user-defined
    /// ones (type 4) as plain added tokens.
    pub fn tokenizer(&self) -> Result<tokenizers::Tokenizer> {
        let model = self.opt_str("tokenizer.ggml.model")?.unwrap_or("");
        let tokens = self.strings("tokenizer.ggml.tokens")?;
        let types: Vec<u32> = match self.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::I32(x) => *x as u32,
                    Value::U32(x) => *x,
                    _ => 1,
                })
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let json = match model {
            "gpt2" => self.byte_level_json(&tokens, &types)?,
            "llama" if self.architecture.starts_with("gemma") => {
                self.gemma_json(&tokens, &types)?
            }
            other => {
                return Err(Error::UnsupportedGguf {
                    file: self.path.clone(),
                    what: format!(
                        "tokenizer model `{other}` (supported: byte-level BPE `gpt2`, and \
                         Gemma's SentencePiece `llama`)"
                    ),
                })
            }
        };
        let bytes = serde_json::to_vec(&json).map_err(|e| Error::BadTokenizer {
            file: self.path.clone(),
            reason: e.to_string(),
        })?;
        tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| Error::BadTokenizer {
            file: self.path.clone(),
            reason: e.to_string(),
        })
    }

    fn byte_level_json(&self, tokens: &[&str], types: &[u32]) -> Result<serde_json::Value> {
        let merges = self.strings("tokenizer.ggml.merges")?;
        let vocab: serde_json::Map<String, serde_json::Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), serde_json::Value::from(i)))
            .collect();
        let merges: Vec<[&str; 2]> = merges
            .iter()
            .map(|m| {
                m.split_once(' ').map(|(a, b)| [a, b]).ok_or_else(|| {
                    self.bad_key("tokenizer.ggml.merges", format!("entry `{m}` is not `a b`"))
                })
            })
            .collect::<Result<_>>()?;
        let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
            "trim_offsets": true, "use_regex": true});
        let mut decoder = byte_level.clone();
        decoder["add_prefix_space"] = true.into();
        let pre = self.opt_str("tokenizer.ggml.pre")?.unwrap_or("");
        let pre_tokenizer = match split_pattern(pre) {
            Some(pattern) => {
                let mut bytes = byte_level.clone();
                bytes["use_regex"] = false.into();
                serde_json::json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated",
                     "invert": false},
                    bytes,
                ]})
            }
            None => byte_level,
        };
        Ok(serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens(tokens, types, |_| true),
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {},
            },
            "decoder": decoder,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        }))
    }

    /// `GemmaTokenizer` over the file's vocabulary: tokens of two or more spaces respelled
    /// with `▁` (the file stores real spaces), merges rebuilt from the vocabulary in file
    /// order (Gemma's scores do not follow its merge order; transformers' `gemma_tokenizer`).
    fn gemma_json(&self, tokens: &[&str], types: &[u32]) -> Result<serde_json::Value> {
        let respelled: Vec<String> = tokens
            .iter()
            .map(|t| {
                if t.contains(' ') && t.trim().is_empty() {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.to_string()
                }
            })
            .collect();
        let vocab: std::collections::HashMap<&str, usize> = respelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let merges = merges_from_vocab(&respelled, &vocab);
        let bos = self.opt_u32("tokenizer.ggml.bos_token_id")?.unwrap_or(2) as usize;
        let bos_token = respelled
            .get(bos)
            .cloned()
            .unwrap_or_else(|| "<bos>".into());
        let vocab_json: serde_json::Map<String, serde_json::Value> = respelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), serde_json::Value::from(i)))
            .collect();
        Ok(serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens(tokens, types, |t| vocab.contains_key(t)),
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"},
            "pre_tokenizer": {"type": "Split", "pattern": {"String": " "},
                              "behavior": "MergedWithPrevious", "invert": false},
            "post_processor": {
                "type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
                           {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": bos_token, "type_id": 0}},
                         {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos_token, "type_id": 1}},
                         {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos_token.clone(): {"id": bos_token, "ids": [bos], "tokens": [bos_token]}},
            },
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
            ]},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": "<unk>", "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true,
                "ignore_merges": false, "vocab": vocab_json, "merges": merges,
            },
        }))
    }

    /// `tokenizer.chat_template`, if the file has one.
    pub fn chat_template(&self) -> Result<Option<&str>> {
        self.opt_str("tokenizer.chat_template")
    }
}

/// The split pattern of a byte-level vocabulary whose `tokenizer.ggml.pre` names one
/// (transformers' `GGUF_PRE_TOKENIZER_SPLITS`); `None`: GPT-2's, built into `ByteLevel`.
fn split_pattern(pre: &str) -> Option<&'static str> {
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => Some(LLAMA3),
        _ => None,
    }
}

/// Control tokens (type 3) as special added tokens, user-defined ones (type 4) the vocabulary
/// spells as the file does as plain added tokens, as transformers' `add_gguf_special_tokens`
/// (Gemma's runs of spaces, respelled with `▁`, are left to the model).
fn added_tokens(
    tokens: &[&str],
    types: &[u32],
    in_vocab: impl Fn(&str) -> bool,
) -> Vec<serde_json::Value> {
    tokens
        .iter()
        .zip(types)
        .enumerate()
        .filter(|(_, (token, &t))| t == 3 || (t == 4 && in_vocab(token)))
        .map(|(id, (content, &t))| {
            serde_json::json!({"id": id, "content": content, "single_word": false,
                "lstrip": false, "rstrip": false, "normalized": false, "special": t == 3})
        })
        .collect()
}

/// BPE merges implied by a vocabulary whose order is its merge order (transformers'
/// `generate_merges` with scores `−index`): every split of a token into two tokens, the
/// splits of one token ordered by their parts' ids, all ordered by the token's position,
/// then the longer left part, then the longer right part.
fn merges_from_vocab(
    tokens: &[String],
    vocab: &std::collections::HashMap<&str, usize>,
) -> Vec<[String; 2]> {
    let mut merges: Vec<(usize, usize, usize, &str, &str)> = Vec::new();
    for (position, token) in tokens.iter().enumerate() {
        let mut local: Vec<(usize, usize, &str, &str)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = token.split_at(at);
                Some((*vocab.get(left)?, *vocab.get(right)?, left, right))
            })
            .collect();
        local.sort_by_key(|&(l, r, _, _)| (l, r));
        merges.extend(
            local
                .into_iter()
                .map(|(_, _, l, r)| (position, l.chars().count(), r.chars().count(), l, r)),
        );
    }
    // Python's `sorted(..., reverse=True)` on (−position, len(left), len(right)): ascending
    // position, then descending lengths, equal keys keeping their order (a stable sort).
    merges.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    merges
        .into_iter()
        .map(|(_, _, _, l, r)| [l.to_string(), r.to_string()])
        .collect()
}

/// Undoes llama.cpp's `permute(w, n_head)`: rows `[n_head, 2, half, ..]` were reordered as
/// `[n_head, half, 2, ..]`; moves whole rows (of quantized bytes) back.
fn unpermute_rows(t: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let (rows, cols) = t.shape().dims2()?;
    if heads == 0 || rows % (2 * heads) != 0 {
        candle_core::bail!("{rows} rows do not split into {heads} heads of two halves");
    }
    let dtype: GgmlDType = t.dtype();
    let row_bytes = cols / dtype.block_size() * dtype.type_size();
    let data = t.data()?;
    if data.len() != rows * row_bytes {
        candle_core::bail!("{} bytes for {rows} rows of {row_bytes}", data.len());
    }
    let half = rows / heads / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                // GGUF row (h, i, j) holds HF row (h, j, i).
                let src = (h * half + i) * 2 + j;
                let dst = (h * 2 + j) * half + i;
                out[dst * row_bytes..(dst + 1) * row_bytes]
                    .copy_from_slice(&data[src * row_bytes..(src + 1) * row_bytes]);
            }
        }
    }
    let storage = QStorage::from_data(Cow::Owned(out), &Device::Cpu, dtype)?;
    QTensor::new(storage, (rows, cols))
}

fn root_message(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. }
        | candle_core::Error::Context { inner, .. }
        | candle_core::Error::WithBacktrace { inner, .. } => root_message(inner),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_permute() {
        // 2 heads × head_dim 4 = 8 rows of 32 f32 columns; row r holds the value r.
        let heads = 2;
        let hf: Vec<f32> = (0..8)
            .flat_map(|r| std::iter::repeat_n(r as f32, 32))
            .collect();
        // llama.cpp: reshape(heads, 2, half, cols).swapaxes(1, 2)
        let mut permuted = Vec::new();
        for h in 0..heads {
            for i in 0..2 {
                for j in 0..2 {
                    let r = (h * 2 + j) * 2 + i;
                    permuted.extend_from_slice(&hf[r * 32..(r + 1) * 32]);
                }
            }
        }
        let t = candle_core::Tensor::from_vec(permuted, (8, 32), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::F32).unwrap();
        let back = unpermute_rows(&q, heads)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        let rows: Vec<f32> = back.get_on_dim(1, 0).unwrap().to_vec1().unwrap();
        assert_eq!(rows, (0..8).map(|r| r as f32).collect::<Vec<_>>());
    }
}

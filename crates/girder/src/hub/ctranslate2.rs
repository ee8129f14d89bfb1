//! Converting a CTranslate2 Whisper model (`model.bin`, as faster-whisper ships it) into a
//! Hugging Face folder that transformers and girder load.
//!
//! `model.bin` (CTranslate2's binary format, version 6) is a header (format version, spec
//! name `WhisperSpec`, spec revision), then each variable as its name, rank, dimensions,
//! data type and bytes, then aliases (the output projection is the decoder's embeddings).
//! CTranslate2 fuses the self-attention's q, k and v (and the cross-attention's k and v)
//! into one matrix and gives `k` a bias of zeros where Whisper has none; the converter
//! splits them back under transformers' names (`model.encoder.layers.0.self_attn.q_proj`…),
//! dequantizes int8 weights with their scales, and writes f32 weights. A key bias adds the same
//! amount to a query's every score, which the softmax removes, so dropping it changes nothing.
//!
//! The folder gets config.json (the dimensions read from the tensors), generation_config.json
//! (suppressed tokens, alignment heads and languages from CTranslate2's config.json; special
//! ids from the tokenizer), preprocessor_config.json (the log-mel settings of the mel bins the
//! first convolution reads) and the tokenizer files.

use super::weights::write_safetensors;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// The largest `model.bin` girder reads (whisper-large-v3 in f32 is 6.2 GB).
const MAX_FILE_BYTES: u64 = 16 << 30;

/// A variable of `model.bin`.
#[derive(Debug, Clone)]
pub struct Variable {
    pub dims: Vec<usize>,
    pub dtype: CtDType,
    pub bytes: Vec<u8>,
}

/// CTranslate2's data types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtDType {
    F32,
    I8,
    I16,
    I32,
    F16,
    BF16,
}

impl CtDType {
    fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            0 => CtDType::F32,
            1 => CtDType::I8,
            2 => CtDType::I16,
            3 => CtDType::I32,
            4 => CtDType::F16,
            5 => CtDType::BF16,
            _ => return None,
        })
    }

    fn size(self) -> usize {
        match self {
            CtDType::I8 => 1,
            CtDType::I16 | CtDType::F16 | CtDType::BF16 => 2,
            CtDType::F32 | CtDType::I32 => 4,
        }
    }
}

/// A parsed `model.bin`.
#[derive(Debug)]
pub struct CtModel {
    pub path: PathBuf,
    pub spec: String,
    pub spec_revision: u32,
    pub variables: BTreeMap<String, Variable>,
    /// Alias name → the variable it names.
    pub aliases: BTreeMap<String, String>,
}

/// Reads the fields of `model.bin` in order, naming the file and the offset in errors.
struct Reader<'a> {
    path: &'a Path,
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadCTranslate2 {
            file: self.path.to_path_buf(),
            reason: format!("at byte {}: {}", self.at, reason.into()),
        }
    }

    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| self.bad(format!("{n} bytes needed, the file ends first")))?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A string: its length (NUL included) as u16, then the bytes.
    fn string(&mut self) -> Result<String> {
        let len = self.u16()? as usize;
        let raw = self.take(len)?;
        let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
        String::from_utf8(raw.to_vec()).map_err(|_| self.bad("a name is not UTF-8"))
    }
}

impl CtModel {
    /// Parses `path` (a `model.bin`), checking every size against the file.
    pub fn open(path: &Path) -> Result<Self> {
        let len = std::fs::metadata(path)
            .map_err(|e| Error::io(path, e))?
            .len();
        if len > MAX_FILE_BYTES {
            return Err(Error::BadCTranslate2 {
                file: path.to_path_buf(),
                reason: format!("{len} bytes is more than a CTranslate2 model girder reads"),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let mut r = Reader {
            path,
            bytes: &bytes,
            at: 0,
        };
        let version = r.u32()?;
        if !(3..=6).contains(&version) {
            return Err(r.bad(format!(
                "binary version {version}; girder reads versions 3 to 6"
            )));
        }
        let spec = r.string()?;
        let spec_revision = r.u32()?;
        let count = r.u32()? as usize;
        let mut variables = BTreeMap::new();
        for _ in 0..count {
            let name = r.string()?;
            let rank = r.u8()? as usize;
            let dims = (0..rank)
                .map(|_| Ok(r.u32()? as usize))
                .collect::<Result<Vec<_>>>()?;
            let code = r.u8()?;
            let dtype = CtDType::from_code(code)
                .ok_or_else(|| r.bad(format!("variable `{name}` has unknown data type {code}")))?;
            let size = r.u32()? as usize;
            let elements = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            if elements.and_then(|n| n.checked_mul(dtype.size())) != Some(size) {
                return Err(r.bad(format!(
                    "variable `{name}` of shape {dims:?} and type {dtype:?} declares {size} bytes"
                )));
            }
            let data = r.take(size)?.to_vec();
            variables.insert(
                name,
                Variable {
                    dims,
                    dtype,
                    bytes: data,
                },
            );
        }
        let mut aliases = BTreeMap::new();
        if r.at < bytes.len() {
            let count = r.u32()? as usize;
            for _ in 0..count {
                let alias = r.string()?;
                let target = r.string()?;
                aliases.insert(alias, target);
            }
        }
        Ok(CtModel {
            path: path.to_path_buf(),
            spec,
            spec_revision,
            variables,
            aliases,
        })
    }

    fn variable(&self, name: &str) -> Result<&Variable> {
        let name = self.aliases.get(name).map(String::as_str).unwrap_or(name);
        self.variables
            .get(name)
            .ok_or_else(|| Error::MissingTensor {
                name: name.to_string(),
                files: format!("{} (a CTranslate2 {})", self.path.display(), self.spec),
            })
    }

    /// A variable as an f32 tensor; int8 weights are dequantized with `<name>_scale` (one
    /// scale per row, `w = q / scale`).
    pub fn tensor(&self, name: &str) -> Result<Tensor> {
        let v = self.variable(name)?;
        let cpu = &Device::Cpu;
        let t = match v.dtype {
            CtDType::F32 => Tensor::from_raw_buffer(&v.bytes, DType::F32, &v.dims, cpu)?,
            CtDType::F16 => {
                Tensor::from_raw_buffer(&v.bytes, DType::F16, &v.dims, cpu)?.to_dtype(DType::F32)?
            }
            CtDType::BF16 => Tensor::from_raw_buffer(&v.bytes, DType::BF16, &v.dims, cpu)?
                .to_dtype(DType::F32)?,
            CtDType::I8 => {
                let scale_name = match name.strip_suffix("weight") {
                    Some(stem) => format!("{stem}weight_scale"),
                    None => format!("{name}_scale"),
                };
                let scale = self.tensor(&scale_name)?;
                let q: Vec<f32> = v.bytes.iter().map(|&b| b as i8 as f32).collect();
                let q = Tensor::from_vec(q, v.dims.as_slice(), cpu)?;
                let rows = v.dims.first().copied().unwrap_or(1);
                q.broadcast_div(&scale.reshape((rows, 1))?)?
            }
            CtDType::I16 | CtDType::I32 => {
                return Err(Error::Unsupported {
                    what: format!(
                        "CTranslate2 variable `{name}` of type {:?} as a weight",
                        v.dtype
                    ),
                })
            }
        };
        Ok(t)
    }

    /// A scalar integer variable (`encoder/num_heads`).
    pub fn int(&self, name: &str) -> Result<i64> {
        let v = self.variable(name)?;
        let b = &v.bytes;
        Ok(match (v.dtype, b.len()) {
            (CtDType::I8, 1) => b[0] as i8 as i64,
            (CtDType::I16, 2) => i16::from_le_bytes([b[0], b[1]]) as i64,
            (CtDType::I32, 4) => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64,
            _ => {
                return Err(Error::BadCTranslate2 {
                    file: self.path.clone(),
                    reason: format!("`{name}` is not an integer scalar"),
                })
            }
        })
    }

    fn dims(&self, name: &str) -> Result<&[usize]> {
        Ok(&self.variable(name)?.dims)
    }

    /// How many `{prefix}/layer_N` there are.
    fn layers(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                let stem = format!("{prefix}/layer_{i}/");
                self.variables.keys().any(|k| k.starts_with(&stem))
            })
            .count()
    }
}

/// What a conversion wrote.
#[derive(Debug, Clone)]
pub struct Converted {
    pub folder: PathBuf,
    pub tensors: usize,
    pub config: Value,
}

/// Converts the CTranslate2 Whisper model in `source` (model.bin, config.json, tokenizer.json)
/// into a Hugging Face folder at `out`.
pub fn convert_whisper(source: &Path, out: &Path) -> Result<Converted> {
    let model = CtModel::open(&source.join("model.bin"))?;
    if model.spec != "WhisperSpec" {
        return Err(Error::Unsupported {
            what: format!(
                "converting a CTranslate2 {} ({}): girder converts WhisperSpec models",
                model.spec,
                source.join("model.bin").display()
            ),
        });
    }
    let tokenizer_path = source.join("tokenizer.json");
    let tokenizer =
        tokenizers::Tokenizer::from_file(&tokenizer_path).map_err(|e| Error::BadTokenizer {
            file: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
    let ct_config: Value = match std::fs::read_to_string(source.join("config.json")) {
        Ok(text) => crate::config::parse_json(&source.join("config.json"), &text)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => json!({}),
        Err(e) => return Err(Error::io(source.join("config.json"), e)),
    };

    let mut tensors: Vec<(String, Tensor)> = Vec::new();
    let mut put = |name: String, t: Tensor| tensors.push((name, t));
    let norm = |ct: &str, hf: &str, put: &mut dyn FnMut(String, Tensor)| -> Result<()> {
        put(
            format!("{hf}.weight"),
            model.tensor(&format!("{ct}/gamma"))?,
        );
        put(format!("{hf}.bias"), model.tensor(&format!("{ct}/beta"))?);
        Ok(())
    };
    let linear = |ct: &str, hf: &str, put: &mut dyn FnMut(String, Tensor)| -> Result<()> {
        put(
            format!("{hf}.weight"),
            model.tensor(&format!("{ct}/weight"))?,
        );
        put(format!("{hf}.bias"), model.tensor(&format!("{ct}/bias"))?);
        Ok(())
    };
    // A fused projection split into `names` of `width` rows each (k without its bias).
    let split = |ct: &str,
                 hf: &str,
                 names: &[&str],
                 width: usize,
                 put: &mut dyn FnMut(String, Tensor)|
     -> Result<()> {
        let weight = model.tensor(&format!("{ct}/weight"))?;
        let bias = model.tensor(&format!("{ct}/bias"))?;
        for (i, part) in names.iter().enumerate() {
            put(
                format!("{hf}.{part}.weight"),
                weight.narrow(0, i * width, width)?.contiguous()?,
            );
            if *part != "k_proj" {
                put(
                    format!("{hf}.{part}.bias"),
                    bias.narrow(0, i * width, width)?.contiguous()?,
                );
            }
        }
        Ok(())
    };

    let embed = model.dims("decoder/embeddings/weight")?.to_vec();
    let (vocab_size, d_model) = (embed[0], embed[1]);
    // The blocks every layer has, encoder and decoder alike.
    let self_attention = |ct: &str, hf: &str, put: &mut dyn FnMut(String, Tensor)| -> Result<()> {
        norm(
            &format!("{ct}/self_attention/layer_norm"),
            &format!("{hf}.self_attn_layer_norm"),
            put,
        )?;
        split(
            &format!("{ct}/self_attention/linear_0"),
            &format!("{hf}.self_attn"),
            &["q_proj", "k_proj", "v_proj"],
            d_model,
            put,
        )?;
        linear(
            &format!("{ct}/self_attention/linear_1"),
            &format!("{hf}.self_attn.out_proj"),
            put,
        )
    };
    let feed_forward = |ct: &str, hf: &str, put: &mut dyn FnMut(String, Tensor)| -> Result<()> {
        norm(
            &format!("{ct}/ffn/layer_norm"),
            &format!("{hf}.final_layer_norm"),
            put,
        )?;
        linear(&format!("{ct}/ffn/linear_0"), &format!("{hf}.fc1"), put)?;
        linear(&format!("{ct}/ffn/linear_1"), &format!("{hf}.fc2"), put)
    };
    let conv1 = model.dims("encoder/conv1/weight")?.to_vec();
    let num_mel_bins = conv1[1];
    let source_positions = model.dims("encoder/position_encodings/encodings")?[0];
    let target_positions = model.dims("decoder/position_encodings/encodings")?[0];
    let (encoder_layers, decoder_layers) = (model.layers("encoder"), model.layers("decoder"));
    let encoder_heads = model.int("encoder/num_heads")? as usize;
    let decoder_heads = model.int("decoder/num_heads")? as usize;
    let ffn_dim = model.dims("encoder/layer_0/ffn/linear_0/weight")?[0];

    for conv in ["conv1", "conv2"] {
        linear(
            &format!("encoder/{conv}"),
            &format!("model.encoder.{conv}"),
            &mut put,
        )?;
    }
    put(
        "model.encoder.embed_positions.weight".into(),
        model.tensor("encoder/position_encodings/encodings")?,
    );
    for i in 0..encoder_layers {
        let (ct, hf) = (
            format!("encoder/layer_{i}"),
            format!("model.encoder.layers.{i}"),
        );
        self_attention(&ct, &hf, &mut put)?;
        feed_forward(&ct, &hf, &mut put)?;
    }
    norm("encoder/layer_norm", "model.encoder.layer_norm", &mut put)?;
    put(
        "model.decoder.embed_tokens.weight".into(),
        model.tensor("decoder/embeddings/weight")?,
    );
    put(
        "model.decoder.embed_positions.weight".into(),
        model.tensor("decoder/position_encodings/encodings")?,
    );
    for i in 0..decoder_layers {
        let (ct, hf) = (
            format!("decoder/layer_{i}"),
            format!("model.decoder.layers.{i}"),
        );
        self_attention(&ct, &hf, &mut put)?;
        norm(
            &format!("{ct}/attention/layer_norm"),
            &format!("{hf}.encoder_attn_layer_norm"),
            &mut put,
        )?;
        linear(
            &format!("{ct}/attention/linear_0"),
            &format!("{hf}.encoder_attn.q_proj"),
            &mut put,
        )?;
        split(
            &format!("{ct}/attention/linear_1"),
            &format!("{hf}.encoder_attn"),
            &["k_proj", "v_proj"],
            d_model,
            &mut put,
        )?;
        linear(
            &format!("{ct}/attention/linear_2"),
            &format!("{hf}.encoder_attn.out_proj"),
            &mut put,
        )?;
        feed_forward(&ct, &hf, &mut put)?;
    }
    norm("decoder/layer_norm", "model.decoder.layer_norm", &mut put)?;
    // The output projection is an alias of the embeddings: tied, as transformers ties it.
    if !model.aliases.contains_key("decoder/projection/weight")
        && model.variables.contains_key("decoder/projection/weight")
    {
        put(
            "proj_out.weight".into(),
            model.tensor("decoder/projection/weight")?,
        );
    }

    let id = |token: &str| -> Result<u32> {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| Error::BadTokenizer {
                file: tokenizer_path.clone(),
                reason: format!("Whisper's tokenizer needs the token {token}"),
            })
    };
    let eot = id("<|endoftext|>")?;
    let sot = id("<|startoftranscript|>")?;
    let no_timestamps = id("<|notimestamps|>")?;
    let multilingual = vocab_size >= 51865;
    let config = json!({
        "architectures": ["WhisperForConditionalGeneration"],
        "model_type": "whisper",
        "activation_function": "gelu",
        "d_model": d_model,
        "encoder_layers": encoder_layers,
        "decoder_layers": decoder_layers,
        "encoder_attention_heads": encoder_heads,
        "decoder_attention_heads": decoder_heads,
        "encoder_ffn_dim": ffn_dim,
        "decoder_ffn_dim": model.dims("decoder/layer_0/ffn/linear_0/weight")?[0],
        "num_mel_bins": num_mel_bins,
        "max_source_positions": source_positions,
        "max_target_positions": target_positions,
        "vocab_size": vocab_size,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "decoder_start_token_id": sot,
        "scale_embedding": false,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    });
    let ids = |key: &str| -> Vec<u64> {
        ct_config
            .get(key)
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default()
    };
    let mut generation = json!({
        "decoder_start_token_id": sot,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "pad_token_id": eot,
        "max_length": target_positions,
        "no_timestamps_token_id": no_timestamps,
        "prev_sot_token_id": id("<|startofprev|>").ok(),
        "is_multilingual": multilingual,
        "max_initial_timestamp_index": 50,
        "suppress_tokens": ids("suppress_ids"),
        "begin_suppress_tokens": ids("suppress_ids_begin"),
        "alignment_heads": ct_config.get("alignment_heads").cloned().unwrap_or(json!([])),
        "return_timestamps": false,
    });
    if multilingual {
        let mut lang_to_id = serde_json::Map::new();
        for lang in ids("lang_ids") {
            if let Some(token) = tokenizer.id_to_token(lang as u32) {
                lang_to_id.insert(token, json!(lang));
            }
        }
        generation["lang_to_id"] = Value::Object(lang_to_id);
        generation["task_to_id"] = json!({
            "transcribe": id("<|transcribe|>")?,
            "translate": id("<|translate|>")?,
        });
        generation["forced_decoder_ids"] = json!([[1, null], [2, id("<|transcribe|>")?]]);
    } else {
        generation["forced_decoder_ids"] = json!([[1, no_timestamps]]);
    }
    let preprocessor = json!({
        "feature_extractor_type": "WhisperFeatureExtractor",
        "feature_size": num_mel_bins,
        "sampling_rate": 16000,
        "hop_length": 160,
        "chunk_length": 30,
        "n_fft": 400,
        "n_samples": 480000,
        "nb_max_frames": 3000,
        "padding_side": "right",
        "padding_value": 0.0,
        "return_attention_mask": false,
        "processor_class": "WhisperProcessor",
    });
    let special: Vec<String> = tokenizer
        .get_added_tokens_decoder()
        .values()
        .filter(|t| t.special)
        .map(|t| t.content.clone())
        .collect();
    let tokenizer_config = json!({
        "tokenizer_class": "WhisperTokenizer",
        "model_max_length": 1024,
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "add_prefix_space": false,
        "errors": "replace",
        "processor_class": "WhisperProcessor",
    });
    let special_tokens_map = json!({
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "additional_special_tokens": special.iter().filter(|t| !t.starts_with("<|endoftext")).collect::<Vec<_>>(),
    });

    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let count = tensors.len();
    let mut seen = HashMap::new();
    for (name, _) in &tensors {
        if seen.insert(name.clone(), ()).is_some() {
            return Err(Error::BadCTranslate2 {
                file: model.path.clone(),
                reason: format!("two variables map to `{name}`"),
            });
        }
    }
    write_safetensors(tensors, &out.join("model.safetensors"))?;
    let write = |name: &str, value: &Value| -> Result<()> {
        let path = out.join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| Error::BadConfig {
            file: path.clone(),
            field: "(document)".into(),
            reason: e.to_string(),
        })?;
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
    };
    write("config.json", &config)?;
    write("generation_config.json", &generation)?;
    write("preprocessor_config.json", &preprocessor)?;
    write("tokenizer_config.json", &tokenizer_config)?;
    write("special_tokens_map.json", &special_tokens_map)?;
    std::fs::copy(&tokenizer_path, out.join("tokenizer.json"))
        .map_err(|e| Error::io(out.join("tokenizer.json"), e))?;
    Ok(Converted {
        folder: out.to_path_buf(),
        tensors: count,
        config,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model.bin of one f16 matrix, one int8 matrix with its scales, a scalar and an alias.
    fn write_model(path: &Path) {
        let mut b: Vec<u8> = Vec::new();
        let string = |b: &mut Vec<u8>, s: &str| {
            b.extend_from_slice(&((s.len() + 1) as u16).to_le_bytes());
            b.extend_from_slice(s.as_bytes());
            b.push(0);
        };
        b.extend_from_slice(&6u32.to_le_bytes());
        string(&mut b, "WhisperSpec");
        b.extend_from_slice(&3u32.to_le_bytes());
        b.extend_from_slice(&4u32.to_le_bytes());
        let var = |b: &mut Vec<u8>, name: &str, dims: &[u32], dtype: u8, data: &[u8]| {
            string(b, name);
            b.push(dims.len() as u8);
            for d in dims {
                b.extend_from_slice(&d.to_le_bytes());
            }
            b.push(dtype);
            b.extend_from_slice(&(data.len() as u32).to_le_bytes());
            b.extend_from_slice(data);
        };
        // f16 1.0, 2.0, -0.5, 0.25
        let f16: Vec<u8> = [0x3c00u16, 0x4000, 0xb800, 0x3400]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        var(&mut b, "a/weight", &[2, 2], 4, &f16);
        var(&mut b, "q/weight", &[2, 2], 1, &[10u8, 246, 127, 0]);
        let scales: Vec<u8> = [10f32, 127.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        var(&mut b, "q/weight_scale", &[2], 0, &scales);
        var(&mut b, "heads", &[], 2, &6i16.to_le_bytes());
        b.extend_from_slice(&1u32.to_le_bytes());
        string(&mut b, "b/weight");
        string(&mut b, "a/weight");
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn reads_types_scales_and_aliases() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        write_model(&path);
        let m = CtModel::open(&path).unwrap();
        assert_eq!((m.spec.as_str(), m.spec_revision), ("WhisperSpec", 3));
        let a: Vec<f32> = m
            .tensor("a/weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, [1.0, 2.0, -0.5, 0.25]);
        let b: Vec<f32> = m
            .tensor("b/weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(a, b);
        let q: Vec<f32> = m
            .tensor("q/weight")
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(q, [1.0, -1.0, 1.0, 0.0]);
        assert_eq!(m.int("heads").unwrap(), 6);
        let err = m.tensor("missing/weight").unwrap_err().to_string();
        assert!(err.contains("missing/weight"), "{err}");
    }

    #[test]
    fn a_cut_file_names_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.bin");
        write_model(&path);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..40]).unwrap();
        let err = CtModel::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("model.bin") && err.contains("the file ends first"),
            "{err}"
        );
        std::fs::write(&path, b"not a model").unwrap();
        let err = CtModel::open(&path).unwrap_err().to_string();
        assert!(err.contains("binary version"), "{err}");
    }
}

//! Writing GGUF files (llama.cpp's format): a byte-level BPE tokenizer as `tokenizer.ggml.*`
//! metadata, LLaMA's q/k rows permuted as llama.cpp stores them, and the file itself, written
//! beside its final name and renamed once whole.
//!
//! The keys are those llama.cpp's `convert_hf_to_gguf.py` writes and its loader reads; the
//! model-level choices (which architecture, which tensor in which type) are
//! [`crate::export`]'s.

use super::gguf::pre_tokenizer_name;
use crate::config::read_json;
use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::QTensor;
use candle_core::Tensor;
use serde_json::Value as Json;
use std::path::{Path, PathBuf};

/// llama.cpp's token types (`llama_token_type`).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The special tokens written beside a vocabulary.
#[derive(Debug, Clone, Default)]
pub struct SpecialTokens {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    /// The end of a turn, a second token that ends generation (Llama 3's `<|eot_id|>`).
    pub eot: Option<u32>,
    pub pad: Option<u32>,
    /// Inputs start with BOS (`tokenizer.ggml.add_bos_token`).
    pub add_bos: bool,
}

/// The `tokenizer.ggml.*` metadata of the byte-level BPE tokenizer in `path` (a
/// tokenizer.json), its vocabulary filled to `rows` tokens (the embedding's rows, which the
/// caller has checked against the checkpoint) with
/// `[PAD{id}]` tokens of type unused, as llama.cpp's converter fills a vocabulary smaller than
/// its embedding. Anything the GGUF keys cannot say (a normalizer, byte fallback, a split
/// pattern llama.cpp has no name for) is refused, naming the field: a file whose tokenizer
/// differs from the model's would tokenize every request differently.
pub fn tokenizer_metadata(
    path: &Path,
    rows: usize,
    special: &SpecialTokens,
    chat_template: Option<&str>,
) -> Result<Vec<(String, Value)>> {
    let json: Json = read_json(path)?;
    let refuse = |reason: String| Error::GgufExport {
        file: path.to_path_buf(),
        reason,
    };
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(refuse(format!(
            "`model.type` is {}; girder writes byte-level BPE vocabularies (`tokenizer.ggml.model = gpt2`)",
            model["type"]
        )));
    }
    if model["byte_fallback"] == true {
        return Err(refuse(
            "`model.byte_fallback` is true (a SentencePiece-style BPE), which GGUF's byte-level `gpt2` vocabulary cannot say".into(),
        ));
    }
    if !json["normalizer"].is_null() {
        return Err(refuse(format!(
            "`normalizer` is {}; a byte-level GGUF vocabulary has none",
            shortened(&json["normalizer"])
        )));
    }
    let pre = pre_tokenizer(&json["pre_tokenizer"]).ok_or_else(|| {
        refuse(format!(
            "`pre_tokenizer` {} has no `tokenizer.ggml.pre` that girder and llama.cpp read back the same",
            shortened(&json["pre_tokenizer"])
        ))
    })?;
    // Readers take `ignore_merges` from the split's name: on for Llama 3's alone.
    let ignores_merges = model["ignore_merges"] == true;
    if ignores_merges != (pre == "llama-bpe") {
        return Err(refuse(format!(
            "`model.ignore_merges` is {ignores_merges} with the `{pre}` split, which GGUF readers read as {}",
            pre == "llama-bpe"
        )));
    }

    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| refuse("`model.vocab` is not an object".into()))?;
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; rows];
    let mut place = |id: u64, token: &str, kind: i32| -> Result<()> {
        let slot = usize::try_from(id)
            .ok()
            .and_then(|id| tokens.get_mut(id))
            .ok_or_else(|| {
                refuse(format!(
                    "token `{token}` has id {id}, past the model's {rows} embedding rows"
                ))
            })?;
        *slot = Some((token.to_string(), kind));
        Ok(())
    };
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| refuse(format!("`model.vocab` gives `{token}` the id {id}")))?;
        place(id, token, NORMAL)?;
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) else {
            return Err(refuse(format!(
                "`added_tokens` entry {} has no id or content",
                shortened(added)
            )));
        };
        let kind = if added["special"] == true {
            CONTROL
        } else {
            USER_DEFINED
        };
        place(id, content, kind)?;
    }
    let (tokens, types): (Vec<Value>, Vec<Value>) = tokens
        .into_iter()
        .enumerate()
        .map(|(id, slot)| match slot {
            Some((token, kind)) => (Value::String(token), Value::I32(kind)),
            None => (Value::String(format!("[PAD{id}]")), Value::I32(UNUSED)),
        })
        .unzip();

    let merges = model["merges"]
        .as_array()
        .ok_or_else(|| refuse("`model.merges` is not a list".into()))?
        .iter()
        .map(|m| {
            let pair = match m {
                Json::String(s) => s.split_once(' '),
                Json::Array(p) => match (p.first().and_then(Json::as_str), p.get(1)) {
                    (Some(a), Some(Json::String(b))) if p.len() == 2 => Some((a, b.as_str())),
                    _ => None,
                },
                _ => None,
            };
            match pair {
                // GGUF joins a merge's two parts with a space: a part holding one could not
                // be split back.
                Some((a, b)) if !a.contains(' ') && !b.contains(' ') => {
                    Ok(Value::String(format!("{a} {b}")))
                }
                _ => Err(refuse(format!(
                    "merge {} is not two space-free tokens",
                    shortened(m)
                ))),
            }
        })
        .collect::<Result<Vec<_>>>()?;

    let mut metadata = vec![
        (
            "tokenizer.ggml.model".to_string(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_string(), Value::String(pre.into())),
        ("tokenizer.ggml.tokens".to_string(), Value::Array(tokens)),
        ("tokenizer.ggml.token_type".to_string(), Value::Array(types)),
        ("tokenizer.ggml.merges".to_string(), Value::Array(merges)),
        (
            "tokenizer.ggml.add_bos_token".to_string(),
            Value::Bool(special.add_bos),
        ),
    ];
    for (key, id) in [
        ("tokenizer.ggml.bos_token_id", special.bos),
        ("tokenizer.ggml.eos_token_id", special.eos),
        ("tokenizer.ggml.eot_token_id", special.eot),
        ("tokenizer.ggml.padding_token_id", special.pad),
    ] {
        if let Some(id) = id {
            metadata.push((key.to_string(), Value::U32(id)));
        }
    }
    if let Some(template) = chat_template {
        metadata.push((
            "tokenizer.chat_template".to_string(),
            Value::String(template.to_string()),
        ));
    }
    Ok(metadata)
}

/// The `tokenizer.ggml.pre` of a byte-level pre-tokenizer: GPT-2's built-in split, or a split
/// pattern the reader knows by name, followed by the byte mapping.
fn pre_tokenizer(pre: &Json) -> Option<&'static str> {
    // `use_regex` is true when absent (tokenizers' default).
    let byte_level = |p: &Json, use_regex: bool| {
        p["type"] == "ByteLevel"
            && p["add_prefix_space"] != true
            && (p["use_regex"] != false) == use_regex
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let [split, bytes] = pre["pretokenizers"].as_array()?.as_slice() else {
        return None;
    };
    if split["type"] != "Split"
        || split["behavior"] != "Isolated"
        || split["invert"] == true
        || !byte_level(bytes, false)
    {
        return None;
    }
    pre_tokenizer_name(split["pattern"]["Regex"].as_str()?)
}

/// A JSON value for an error message, cut to 200 characters.
fn shortened(v: &Json) -> String {
    let text = v.to_string();
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text,
    }
}

/// llama.cpp's `permute(w, n_head)` on the rows of a q or k projection `[heads·dim, in]`:
/// each head's rows `[2, dim/2]` (the two rotary halves, transformers' layout) become
/// `[dim/2, 2]` (adjacent pairs, llama.cpp's). [`GgufFile`](super::GgufFile) undoes it on
/// load.
pub fn permute_rows(weight: &Tensor, heads: usize) -> Result<Tensor> {
    let (rows, cols) = weight.dims2()?;
    if heads == 0 || !rows.is_multiple_of(heads * 2) {
        return Err(Error::Unsupported {
            what: format!("permuting {rows} rows for {heads} rotary heads"),
        });
    }
    Ok(weight
        .reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((rows, cols))?)
}

/// Writes `metadata` and `tensors` as the GGUF file `path` and returns its size. The bytes go
/// to a temporary file beside it first, renamed to `path` once complete, so an interrupted
/// write never leaves a truncated model under the final name.
pub fn write(
    path: &Path,
    metadata: &[(String, Value)],
    tensors: &[(String, QTensor)],
) -> Result<u64> {
    let partial = partial_path(path);
    let result = (|| -> Result<u64> {
        let file = std::fs::File::create(&partial).map_err(|e| Error::io(&partial, e))?;
        let mut writer = std::io::BufWriter::new(file);
        let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, t)| (k.as_str(), t)).collect();
        candle_core::quantized::gguf_file::write(&mut writer, &metadata, &tensors).map_err(
            |e| Error::GgufExport {
                file: path.to_path_buf(),
                reason: e.to_string(),
            },
        )?;
        let file = writer
            .into_inner()
            .map_err(|e| Error::io(&partial, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&partial, e))?;
        let bytes = file.metadata().map_err(|e| Error::io(&partial, e))?.len();
        std::fs::rename(&partial, path).map_err(|e| Error::io(path, e))?;
        Ok(bytes)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// `model.gguf` → `.model.gguf.partial` in the same folder (a rename within one file system).
fn partial_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.partial"))
}

/// The ids `tokens` encodes each text into, with special tokens: what two tokenizers must
/// agree on.
pub(crate) fn encodings(
    tokens: &tokenizers::Tokenizer,
    texts: &[String],
    file: &Path,
) -> Result<Vec<Vec<u32>>> {
    texts
        .iter()
        .map(|text| {
            tokens
                .encode(text.as_str(), true)
                .map(|e| e.get_ids().to_vec())
                .map_err(|e| Error::BadTokenizer {
                    file: file.to_path_buf(),
                    reason: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn permute_is_undone_by_the_reader() {
        // Two heads of four rows (dims [0,1 | 2,3]): llama.cpp interleaves the halves.
        let rows: Vec<f32> = (0..8).map(|r| r as f32).collect();
        let w = Tensor::from_vec(rows, (8, 1), &Device::Cpu).unwrap();
        let permuted = permute_rows(&w, 2).unwrap();
        let got: Vec<f32> = permuted.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got, [0., 2., 1., 3., 4., 6., 5., 7.]);
        assert!(permute_rows(&w, 3).is_err());
    }

    #[test]
    fn pre_tokenizers_have_names_or_are_refused() {
        let plain =
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "use_regex": true});
        assert_eq!(pre_tokenizer(&plain), Some("gpt-2"));
        let prefixed =
            serde_json::json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert_eq!(pre_tokenizer(&prefixed), None);
        let digits = serde_json::json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, plain]});
        assert_eq!(pre_tokenizer(&digits), None);
    }
}

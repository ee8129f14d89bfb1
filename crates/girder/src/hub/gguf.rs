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
//!
//! Before candle parses the header, girder reads it once itself (`scan_header`) and checks
//! the tensor table against the file (`check_layout`): candle takes each tensor's type,
//! dims and offset on trust and reads whatever bytes they point at, so a type field edited
//! from Q4_1 to Q4_0 would load the neighbouring bytes as weights. That pass also bounds what
//! candle would allocate for the metadata, and refuses an alignment of 0 (candle divides by
//! it). What remains unchecked: a type or shape whose size differs from the true one by less
//! than the alignment's padding, and the values of the weights themselves.

use crate::error::{Error, Result};
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::Device;
use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{Read, Seek};
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

    /// The GGUF name of transformers tensor `hf`: the inverse of
    /// [`transformers_name`](Self::transformers_name).
    ///
    /// ```
    /// use girder::hub::gguf::TensorNames;
    /// const NAMES: TensorNames = TensorNames {
    ///     whole: &[("token_embd", "model.embed_tokens")],
    ///     layer_prefix: "model.layers",
    ///     layer: &[("attn_q", "self_attn.q_proj")],
    /// };
    /// assert_eq!(NAMES.gguf_name("model.layers.3.self_attn.q_proj.bias").as_deref(), Some("blk.3.attn_q.bias"));
    /// assert_eq!(NAMES.gguf_name("model.embed_tokens.weight").as_deref(), Some("token_embd.weight"));
    /// assert_eq!(NAMES.gguf_name("model.layers.3.mlp.up_proj.weight"), None);
    /// ```
    pub fn gguf_name(&self, hf: &str) -> Option<String> {
        let (module, param) = hf.rsplit_once('.')?;
        if let Some((gguf, _)) = self.whole.iter().find(|(_, h)| *h == module) {
            return Some(format!("{gguf}.{param}"));
        }
        let rest = module.strip_prefix(self.layer_prefix)?.strip_prefix('.')?;
        let (layer, module) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let (gguf, _) = self.layer.iter().find(|(_, h)| *h == module)?;
        Some(format!("blk.{layer}.{gguf}.{param}"))
    }
}

/// An opened GGUF file: its metadata, its tensor table and, once
/// [mapped](GgufFile::map_tensors), its tensors by Hugging Face name, each read from the file
/// when asked for (q/k un-permuted).
///
/// Why read on demand: a model converts each matrix into its kernel's layout as it loads, so
/// a tensor read from the file is dropped as soon as its layer is built, and the file's
/// tensors are never in memory beside their converted copies.
pub struct GgufFile {
    path: PathBuf,
    metadata: HashMap<String, Value>,
    architecture: String,
    /// The header's tensor table and where the tensor data starts.
    content: Content,
    /// Hugging Face tensor name → GGUF name, once mapped.
    names: HashMap<String, String>,
    /// `(heads, kv_heads)` when the q and k rows are stored permuted (llama.cpp's llama).
    permuted_qk: Option<(usize, usize)>,
    device: Device,
    file: std::sync::Mutex<std::fs::File>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .field("tensors", &self.content.tensor_infos.len())
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

/// The GGML types candle reads into a tensor, by id; the other known types (Q8_1 and Q8_K
/// among them: candle parses their headers but cannot load their data) are refused by name.
fn loadable_type(id: u32) -> Option<GgmlDType> {
    Some(match id {
        0 => GgmlDType::F32,
        1 => GgmlDType::F16,
        2 => GgmlDType::Q4_0,
        3 => GgmlDType::Q4_1,
        6 => GgmlDType::Q5_0,
        7 => GgmlDType::Q5_1,
        8 => GgmlDType::Q8_0,
        10 => GgmlDType::Q2K,
        11 => GgmlDType::Q3K,
        12 => GgmlDType::Q4K,
        13 => GgmlDType::Q5K,
        14 => GgmlDType::Q6K,
        30 => GgmlDType::BF16,
        _ => return None,
    })
}

/// `general.alignment` when the metadata has none (the GGUF specification's default).
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml's `GGML_MAX_DIMS`.
const MAX_TENSOR_DIMS: u32 = 4;
/// Metadata keys and tensor names are short (ggml's `GGML_MAX_NAME` is 64 bytes); the bound
/// keeps a damaged length from allocating before the name is compared with anything.
const MAX_NAME_BYTES: u64 = 4096;
/// Metadata values in all (array items included). candle holds each in a 32-byte `Value`, so
/// a header of one-byte items would take 32 times its size in memory; real files stay below
/// a million (a 262k vocabulary's tokens, scores and types, a Llama 3 file's 280k merges).
const MAX_METADATA_VALUES: u64 = 1 << 23;
/// The nesting of arrays in arrays that candle's reader accepts.
const MAX_VALUE_DEPTH: usize = 64;

/// One entry of the header's tensor table, as the file declares it.
#[derive(Debug)]
struct DeclaredTensor {
    name: String,
    /// GGUF order: the innermost (row) dimension first.
    dims: Vec<u64>,
    ggml_type: u32,
    offset: u64,
}

/// What the header says about where the tensors lie.
#[derive(Debug)]
struct Layout {
    tensors: Vec<DeclaredTensor>,
    alignment: u64,
    /// The first byte of tensor data: the end of the header, rounded up to the alignment.
    data_start: u64,
    file_len: u64,
}

/// Reads a GGUF header without keeping its values: every length and count is checked
/// against the bytes left in the file before it is used, and nothing is allocated but the
/// keys and tensor names (each bounded), so a damaged header costs no memory. Errors are the
/// reason of an [`Error::BadGguf`].
struct HeaderReader<'a, R> {
    inner: &'a mut std::io::BufReader<R>,
    pos: u64,
    len: u64,
    /// Version 1 writes lengths and dims as u32, later versions as u64.
    v1: bool,
}

impl<R: std::io::Read + std::io::Seek> HeaderReader<'_, R> {
    fn truncated(&self, what: &str) -> String {
        format!(
            "the file ends inside the header ({what} at byte {} of {})",
            self.pos, self.len
        )
    }

    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        let mut buf = [0u8; N];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| self.truncated(what))?;
        self.pos += N as u64;
        Ok(buf)
    }

    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        self.array::<4>(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        self.array::<8>(what).map(u64::from_le_bytes)
    }

    /// A length, count or dimension: u32 in version 1, u64 after.
    fn length(&mut self, what: &str) -> std::result::Result<u64, String> {
        if self.v1 {
            self.u32(what).map(u64::from)
        } else {
            self.u64(what)
        }
    }

    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn skip(&mut self, n: u64, what: &str) -> std::result::Result<(), String> {
        if n > self.remaining() {
            return Err(format!(
                "{what} needs {n} bytes at byte {} but the file has {} left",
                self.pos,
                self.remaining()
            ));
        }
        let n_signed = i64::try_from(n).map_err(|_| self.truncated(what))?;
        // Within the buffer, a relative seek moves no data and makes no system call.
        self.inner
            .seek_relative(n_signed)
            .map_err(|e| format!("{what}: {e}"))?;
        self.pos += n;
        Ok(())
    }

    /// A string of at most `max` bytes, kept.
    fn string(&mut self, max: u64, what: &str) -> std::result::Result<String, String> {
        let n = self.length(what)?;
        if n > max || n > self.remaining() {
            return Err(format!(
                "{what} at byte {} is {n} bytes long (at most {max}, and {} are left in the file)",
                self.pos,
                self.remaining()
            ));
        }
        let mut buf = vec![0u8; n as usize];
        self.inner
            .read_exact(&mut buf)
            .map_err(|_| self.truncated(what))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// Skips one metadata value of GGUF value type `value_type`, counting it (and its items)
    /// against `budget`; returns a scalar integer's value (for `general.alignment`) with its
    /// type's name.
    fn skip_value(
        &mut self,
        value_type: u32,
        key: &str,
        depth: usize,
        budget: &mut u64,
    ) -> std::result::Result<Option<(i128, &'static str)>, String> {
        let what = || format!("metadata `{key}`");
        if *budget == 0 {
            return Err(format!(
                "the metadata holds more than {MAX_METADATA_VALUES} values (at `{key}`)"
            ));
        }
        *budget -= 1;
        let scalar = match value_type {
            0 => (i128::from(self.array::<1>(&what())?[0]), "U8"),
            1 => (i128::from(self.array::<1>(&what())?[0] as i8), "I8"),
            2 => (i128::from(u16::from_le_bytes(self.array(&what())?)), "U16"),
            3 => (i128::from(i16::from_le_bytes(self.array(&what())?)), "I16"),
            4 => (i128::from(self.u32(&what())?), "U32"),
            5 => (i128::from(self.u32(&what())? as i32), "I32"),
            6 => (i128::from(self.u32(&what())?), "F32"),
            7 => (i128::from(self.array::<1>(&what())?[0]), "BOOL"),
            10 => (i128::from(self.u64(&what())?), "U64"),
            11 => (i128::from(self.u64(&what())? as i64), "I64"),
            12 => (i128::from(self.u64(&what())?), "F64"),
            8 => {
                let n = self.length(&what())?;
                self.skip(n, &what())?;
                return Ok(None);
            }
            9 => {
                if depth >= MAX_VALUE_DEPTH {
                    return Err(format!(
                        "metadata `{key}` nests arrays deeper than {MAX_VALUE_DEPTH}"
                    ));
                }
                let item_type = self.u32(&what())?;
                let n = self.length(&what())?;
                if n > *budget {
                    return Err(format!(
                        "metadata `{key}` declares {n} items; the metadata may hold {MAX_METADATA_VALUES} values in all"
                    ));
                }
                let fixed = match item_type {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    _ => None,
                };
                match fixed {
                    Some(size) => {
                        // n ≤ 2^23, so the product cannot overflow.
                        self.skip(n * size, &what())?;
                        *budget -= n;
                    }
                    None => {
                        for _ in 0..n {
                            self.skip_value(item_type, key, depth + 1, budget)?;
                        }
                    }
                }
                return Ok(None);
            }
            other => {
                return Err(format!(
                    "metadata `{key}` has value type {other}, which GGUF does not define"
                ))
            }
        };
        // Floats are not integers: only the integer types carry a usable value.
        Ok((!matches!(scalar.1, "F32" | "F64" | "BOOL")).then_some(scalar))
    }
}

/// Reads the header of a GGUF file of `file_len` bytes: the metadata is skipped (but for
/// `general.alignment`), the tensor table kept. Every count and length is checked against
/// the bytes the file has left, and each table entry as it is read (its dims, and its name
/// against the others), so that a header whose counts were edited stops at the first entry
/// that cannot be one.
fn scan_header<R: std::io::Read + std::io::Seek>(
    reader: &mut std::io::BufReader<R>,
    file_len: u64,
) -> std::result::Result<Layout, String> {
    let mut r = HeaderReader {
        inner: reader,
        pos: 0,
        len: file_len,
        v1: false,
    };
    let magic = r.array::<4>("the magic number")?;
    // candle also accepts the magic written as a big-endian number.
    if &magic != b"GGUF" && &magic != b"FUGG" {
        return Err("the file does not start with `GGUF`".into());
    }
    let version = r.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(format!("GGUF version {version} (girder reads 1 to 3)"));
    }
    r.v1 = version == 1;
    let tensor_count = r.length("the tensor count")?;
    let kv_count = r.length("the metadata count")?;
    // The smallest entries: a key's length, its type and a one-byte value; a tensor's name
    // length, one dim count, its type and its offset.
    let prefix = if r.v1 { 4 } else { 8 };
    let least = kv_count
        .saturating_mul(prefix + 5)
        .saturating_add(tensor_count.saturating_mul(prefix + 16));
    if least > r.remaining() {
        return Err(format!(
            "the header declares {tensor_count} tensors and {kv_count} metadata entries, which need at least {least} bytes; the file has {} left",
            r.remaining()
        ));
    }
    let mut alignment = DEFAULT_ALIGNMENT;
    let mut budget = MAX_METADATA_VALUES;
    for _ in 0..kv_count {
        let key = r.string(MAX_NAME_BYTES, "a metadata key")?;
        let value_type = r.u32("a metadata value type")?;
        let value = r.skip_value(value_type, &key, 0, &mut budget)?;
        if key == "general.alignment" {
            // llama.cpp writes a U32 and refuses anything but a power of two; candle reads
            // any integer type up to 32 bits and ignores the others (U64 among them).
            match value {
                Some((v, "U8" | "U16" | "U32" | "I8" | "I16" | "I32"))
                    if v > 0 && (v as u64).is_power_of_two() =>
                {
                    alignment = v as u64;
                }
                Some((v, ty)) => {
                    return Err(format!(
                        "metadata `general.alignment` is {v} ({ty}): it must be a power of two, a U32"
                    ))
                }
                None => {
                    return Err(
                        "metadata `general.alignment` is not an integer: it must be a power of two, a U32"
                            .into(),
                    )
                }
            }
        }
    }
    let mut tensors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..tensor_count {
        let name = r.string(MAX_NAME_BYTES, "a tensor name")?;
        let n_dims = r.u32(&format!("the dims of tensor `{name}`"))?;
        if n_dims > MAX_TENSOR_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_TENSOR_DIMS})"
            ));
        }
        let dims = (0..n_dims)
            .map(|_| r.length(&format!("the dims of tensor `{name}`")))
            .collect::<std::result::Result<Vec<u64>, String>>()?;
        let ggml_type = r.u32(&format!("the type of tensor `{name}`"))?;
        let offset = r.u64(&format!("the offset of tensor `{name}`"))?;
        if !seen.insert(name.clone()) {
            return Err(format!("tensor `{name}` is listed twice"));
        }
        tensors.push(DeclaredTensor {
            name,
            dims,
            ggml_type,
            offset,
        });
    }
    let data_start = r
        .pos
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| r.truncated("the end of the tensor table"))?;
    Ok(Layout {
        tensors,
        alignment,
        data_start,
        file_len,
    })
}

/// A tensor's type and shape as error messages write them: `Q4_0, 576×576` (rows first, as
/// transformers' shapes).
fn describe(t: &DeclaredTensor) -> String {
    let type_name = ggml_type_name(t.ggml_type).unwrap_or("unknown");
    let shape = match t.dims.len() {
        0 => "a scalar".to_string(),
        _ => t
            .dims
            .iter()
            .rev()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join("×"),
    };
    format!("{type_name}, {shape}")
}

/// Checks the tensor table against the file, as llama.cpp writes it: every type is one
/// girder loads; a tensor's byte size (its dims in whole blocks of its type, computed
/// without overflow) fits in the file at its offset, which is a multiple of the alignment;
/// no two tensors overlap; and the tensors are packed: sorted by offset, each starts less
/// than `alignment` bytes after the previous one ends (the first at the start of the data),
/// and the last ends less than `alignment` bytes before the end of the file. A type or
/// shape field edited to another size breaks one of these, unless the sizes differ by less
/// than the padding.
fn check_layout(path: &Path, layout: &Layout) -> Result<()> {
    let bad = |reason: String| Error::BadGguf {
        file: path.to_path_buf(),
        reason,
    };
    let align = layout.alignment;
    // (start, end, tensor) in bytes from the start of the file.
    let mut spans = Vec::with_capacity(layout.tensors.len());
    for t in &layout.tensors {
        let Some(dtype) = loadable_type(t.ggml_type) else {
            let id = t.ggml_type;
            return Err(Error::UnsupportedGguf {
                file: path.to_path_buf(),
                what: format!(
                    "tensor type {} (GGML type {id}) of tensor `{}`; supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K..Q6_K",
                    ggml_type_name(id).unwrap_or("unknown"),
                    t.name
                ),
            });
        };
        let block = dtype.block_size() as u64;
        let row = t.dims.first().copied().unwrap_or(1);
        if row % block != 0 {
            return Err(bad(format!(
                "tensor `{}` ({}): rows of {row} elements are not whole {dtype:?} blocks of {block}",
                t.name,
                describe(t)
            )));
        }
        let size = t
            .dims
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d))
            .and_then(|elements| (elements / block).checked_mul(dtype.type_size() as u64))
            .filter(|&size| usize::try_from(size).is_ok());
        let Some(size) = size else {
            return Err(bad(format!(
                "tensor `{}` ({}) is larger than any file",
                t.name,
                describe(t)
            )));
        };
        if t.offset % align != 0 {
            return Err(bad(format!(
                "tensor `{}` ({}) starts at offset {}, not a multiple of the alignment {align}",
                t.name,
                describe(t),
                t.offset
            )));
        }
        let start = layout.data_start.checked_add(t.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(start), Some(end)) if end <= layout.file_len => spans.push((start, end, t)),
            _ => {
                return Err(bad(format!(
                    "tensor `{}` ({}) takes {size} bytes at offset {} of the data (byte {}), past the end of the file ({} bytes)",
                    t.name,
                    describe(t),
                    t.offset,
                    layout.data_start.saturating_add(t.offset),
                    layout.file_len
                )))
            }
        }
    }
    spans.sort_by_key(|&(start, end, _)| (start, end));
    let mismatch = "the type, shape or offset field does not match the data";
    if let Some(&(start, _, first)) = spans.first() {
        if start - layout.data_start >= align {
            return Err(bad(format!(
                "the tensor data begins at byte {} but the first tensor, `{}` ({}), starts {} bytes later: the offsets do not match the data",
                layout.data_start,
                first.name,
                describe(first),
                start - layout.data_start
            )));
        }
    }
    for pair in spans.windows(2) {
        let (start, end, t) = pair[0];
        let (next_start, _, next) = pair[1];
        if next_start < end {
            return Err(bad(format!(
                "tensor `{}` ({}) takes {} bytes but tensor `{}` ({}) starts {} bytes after it: they overlap, a type, shape or offset field does not match the data",
                t.name,
                describe(t),
                end - start,
                next.name,
                describe(next),
                next_start - start
            )));
        }
        if next_start - end >= align {
            return Err(bad(format!(
                "tensor `{}` ({}) takes {} bytes but the next tensor (`{}`) starts {} bytes later: {mismatch}",
                t.name,
                describe(t),
                end - start,
                next.name,
                next_start - start
            )));
        }
    }
    if let Some(&(start, end, last)) = spans.last() {
        if layout.file_len - end >= align {
            return Err(bad(format!(
                "tensor `{}` ({}), the last, takes {} bytes but the file goes on for {} bytes after its start: {mismatch}",
                last.name,
                describe(last),
                end - start,
                layout.file_len - start
            )));
        }
    }
    Ok(())
}

/// `{arch}.block_count` against the tensor table: llama.cpp numbers a model's blocks
/// `blk.0` to `blk.{count - 1}`, every one with tensors, so the count is one more than the
/// highest block number. Model configs size per-layer tables by this count before any tensor
/// is looked up, so an edited count (4294967293 layers) would be allocated before the first
/// missing tensor is noticed, and a smaller one would drop layers silently.
fn check_block_count(
    metadata: &HashMap<String, Value>,
    architecture: &str,
    layout: &Layout,
) -> std::result::Result<(), String> {
    let key = format!("{architecture}.block_count");
    let count = match metadata.get(&key) {
        Some(Value::U8(x)) => u64::from(*x),
        Some(Value::U16(x)) => u64::from(*x),
        Some(Value::U32(x)) => u64::from(*x),
        Some(Value::U64(x)) => *x,
        Some(Value::I8(x)) => u64::try_from(*x).unwrap_or(u64::MAX),
        Some(Value::I16(x)) => u64::try_from(*x).unwrap_or(u64::MAX),
        Some(Value::I32(x)) => u64::try_from(*x).unwrap_or(u64::MAX),
        Some(Value::I64(x)) => u64::try_from(*x).unwrap_or(u64::MAX),
        // Absent or not an integer: the model's config reports it.
        _ => return Ok(()),
    };
    let blocks = layout
        .tensors
        .iter()
        .filter_map(|t| {
            t.name
                .strip_prefix("blk.")?
                .split('.')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .max()
        .map_or(0, |highest| highest.saturating_add(1));
    if count != blocks {
        return Err(format!(
            "metadata `{key}` is {count}, but the tensor table holds {blocks} blocks (`blk.0` to `blk.{}`)",
            blocks.saturating_sub(1)
        ));
    }
    Ok(())
}

impl GgufFile {
    /// Reads the header and the metadata, after checking the header against the file: every
    /// tensor's type is one girder loads (an unknown one is named), and the tensor table
    /// describes the bytes of the file (`check_layout`), so an edited type, shape or offset
    /// field is refused here instead of loading other bytes as weights. The tensors are read
    /// by [`read_tensors`](Self::read_tensors).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bad = |reason: String| Error::BadGguf {
            file: path.clone(),
            reason,
        };
        let file = std::fs::File::open(&path).map_err(|e| Error::io(&path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        let mut reader = std::io::BufReader::new(file);
        let layout = scan_header(&mut reader, file_len).map_err(&bad)?;
        check_layout(&path, &layout)?;
        reader
            .seek(std::io::SeekFrom::Start(0))
            .map_err(|e| Error::io(&path, e))?;
        let mut content = Content::read(&mut reader).map_err(|e| bad(root_message(&e)))?;
        let architecture = match content.metadata.get("general.architecture") {
            Some(Value::String(a)) => a.clone(),
            _ => return Err(bad("no `general.architecture` in the metadata".into())),
        };
        check_block_count(&content.metadata, &architecture, &layout).map_err(&bad)?;
        let metadata = std::mem::take(&mut content.metadata);
        let file = reader.into_inner();
        Ok(GgufFile {
            path,
            metadata,
            architecture,
            content,
            names: HashMap::new(),
            permuted_qk: None,
            device: Device::Cpu,
            file: std::sync::Mutex::new(file),
        })
    }

    /// The header's matrices whose block type girder's kernels do not read (Q2_K, Q3_K, the IQ
    /// types, F16…), by type name, each with its tensors' GGUF names, sorted. They load and run
    /// through candle's quantized matmul, which dequantizes as it goes.
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
        for (name, info) in &self.content.tensor_infos {
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

    /// Names every tensor as `names` map it (a tensor the map does not name keeps its GGUF
    /// name) and sets how [`read_tensor`](Self::read_tensor) reads them: onto `device`, with
    /// `permuted_qk` llama.cpp's permutation of the q and k rows undone.
    pub fn map_tensors(
        &mut self,
        names: &TensorNames,
        permuted_qk: bool,
        device: &Device,
    ) -> Result<()> {
        let prefix = self.architecture.clone();
        let heads = self.u32_key(&format!("{prefix}.attention.head_count"))? as usize;
        let kv_heads = self
            .opt_u32(&format!("{prefix}.attention.head_count_kv"))?
            .map_or(heads, |h| h as usize);
        self.permuted_qk = permuted_qk.then_some((heads, kv_heads));
        self.device = device.clone();
        self.names = self
            .content
            .tensor_infos
            .keys()
            .map(|name| {
                let hf = names
                    .transformers_name(name)
                    .unwrap_or_else(|| name.clone());
                (hf, name.clone())
            })
            .collect();
        Ok(())
    }

    /// The tensor `name` (a Hugging Face name, once [mapped](Self::map_tensors)) read from the
    /// file, un-permuted and on the mapped device; `None` when the file has no such tensor.
    /// Each call reads the file anew: the caller keeps what it converts, not the file's copy.
    pub fn read_tensor(&self, name: &str) -> Result<Option<Arc<QTensor>>> {
        let Some(gguf_name) = self.names.get(name) else {
            return Ok(None);
        };
        let bad = |reason: String| Error::BadGguf {
            file: self.path.clone(),
            reason: format!("tensor `{gguf_name}`: {reason}"),
        };
        let tensor = {
            let mut file = self.file.lock().unwrap_or_else(|e| e.into_inner());
            self.content
                .tensor(&mut *file, gguf_name, &Device::Cpu)
                .map_err(|e| bad(root_message(&e)))?
        };
        let module = gguf_name.rsplit('.').nth(1);
        let tensor = match (module, self.permuted_qk) {
            (Some("attn_q"), Some((heads, _))) if gguf_name.ends_with(".weight") => {
                unpermute_rows(&tensor, heads).map_err(|e| bad(e.to_string()))?
            }
            (Some("attn_k"), Some((_, kv_heads))) if gguf_name.ends_with(".weight") => {
                unpermute_rows(&tensor, kv_heads).map_err(|e| bad(e.to_string()))?
            }
            _ => tensor,
        };
        let tensor = if self.device.is_cpu() {
            tensor
        } else {
            let data = tensor.data().map_err(|e| bad(e.to_string()))?;
            let storage = QStorage::from_data(data, &self.device, tensor.dtype())?;
            QTensor::new(storage, tensor.shape().clone())?
        };
        Ok(Some(Arc::new(tensor)))
    }

    /// The shape of the tensor `name` (a Hugging Face name, once mapped), from the header.
    pub fn tensor_shape(&self, name: &str) -> Option<Vec<usize>> {
        let gguf_name = self.names.get(name)?;
        Some(
            self.content
                .tensor_infos
                .get(gguf_name)?
                .shape
                .dims()
                .to_vec(),
        )
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

    /// The rows of the token embedding (`token_embd.weight`, mapped to
    /// `model.embed_tokens.weight`): the vocabulary the model embeds.
    pub fn vocab_size(&self) -> Result<usize> {
        match self.tensor_shape("model.embed_tokens.weight").as_deref() {
            Some(&[vocab_size, _]) => Ok(vocab_size),
            Some(other) => Err(Error::BadGguf {
                file: self.path.clone(),
                reason: format!("`token_embd.weight` has shape {other:?}, not [vocab, hidden]"),
            }),
            None => Err(Error::BadGguf {
                file: self.path.clone(),
                reason: "no `token_embd.weight` tensor".into(),
            }),
        }
    }

    /// Names of all tensors (Hugging Face names where mapped).
    pub fn tensor_names(&self) -> impl Iterator<Item = &String> {
        self.names.keys()
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

    /// A boolean metadata value, if present.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(Value::Bool(x)) => Ok(Some(*x)),
            Some(other) => Err(self.bad_key(key, format!("expected a boolean, found {other:?}"))),
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
    ///   Llama 3's patterns, GPT-2's otherwise), BOS added when `tokenizer.ggml.add_bos_token`
    ///   says so (as llama.cpp does);
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
        // llama.cpp adds BOS to a byte-level vocabulary's inputs only when the file says so.
        let bos = match self.opt_bool("tokenizer.ggml.add_bos_token")? {
            Some(true) => {
                let id = self.u32_key("tokenizer.ggml.bos_token_id")? as usize;
                let token = tokens.get(id).ok_or_else(|| {
                    self.bad_key(
                        "tokenizer.ggml.bos_token_id",
                        format!("{id} is past the {} tokens", tokens.len()),
                    )
                })?;
                Some((id, token.to_string()))
            }
            _ => None,
        };
        let post_processor = match bos {
            Some((id, token)) => bos_template(id, &token),
            None => serde_json::json!({
                "type": "TemplateProcessing",
                "single": [{"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {},
            }),
        };
        // Llama 3's vocabulary takes a word that is a token whole before merging (its
        // tokenizer.json's `ignore_merges`, llama.cpp's for the `llama3` split).
        let ignore_merges = split_pattern(pre) == Some(LLAMA3_SPLIT);
        Ok(serde_json::json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added_tokens(tokens, types, |_| true),
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges,
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
            "post_processor": bos_template(bos, &bos_token),
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

/// A post-processor that starts every input (and each of a pair) with BOS `token` (`id`).
fn bos_template(id: usize, token: &str) -> serde_json::Value {
    serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": token, "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": token, "type_id": 0}},
                 {"Sequence": {"id": "A", "type_id": 0}},
                 {"SpecialToken": {"id": token, "type_id": 1}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {token: {"id": token, "ids": [id], "tokens": [token]}},
    })
}

/// The split pattern of a byte-level vocabulary whose `tokenizer.ggml.pre` names one
/// (transformers' `GGUF_PRE_TOKENIZER_SPLITS`); `None`: GPT-2's, built into `ByteLevel`.
fn split_pattern(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" | "deepseek-r1-qwen" | "megrez" => Some(QWEN2_SPLIT),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "dbrx" | "smaug-bpe" => {
            Some(LLAMA3_SPLIT)
        }
        _ => None,
    }
}

/// The `tokenizer.ggml.pre` that names a byte-level vocabulary's split `pattern`: the inverse
/// of [`split_pattern`] (`None`: no name girder reads back as this pattern).
pub(crate) fn pre_tokenizer_name(pattern: &str) -> Option<&'static str> {
    match pattern {
        QWEN2_SPLIT => Some("qwen2"),
        LLAMA3_SPLIT => Some("llama-bpe"),
        _ => None,
    }
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

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

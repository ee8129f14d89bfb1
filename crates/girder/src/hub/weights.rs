//! Checkpoint tensors, memory-mapped from safetensors files, looked up by name.
//!
//! Plays the role of candle's `VarBuilder`, with two differences that matter to users:
//! errors are typed and name the tensor (and its expected and actual shapes), and every
//! tensor is upcast to the compute dtype (f32) on load, so bf16/f16 checkpoints just work.
//!
//! A GGUF file ([`GgufFile`]) serves the same lookups under transformers' names. Its tensors
//! are dequantized by [`get`](Weights::get), or kept quantized for [`Weights::qtensor`] when
//! the weights were opened with `keep_quantized`.

use super::GgufFile;
use crate::error::{Error, Result};
use candle_core::quantized::QTensor;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

struct Checkpoint {
    files: Vec<(PathBuf, MmapedSafetensors)>,
    /// tensor name → index into `files`
    routing: HashMap<String, usize>,
    /// Set instead of `files` for a GGUF checkpoint.
    gguf: Option<(GgufFile, bool)>,
}

/// A view of a checkpoint under a name prefix (`pp` adds a segment, like `VarBuilder::pp`).
#[derive(Clone)]
pub struct Weights {
    checkpoint: Arc<Checkpoint>,
    /// Tensors that replace or add to the checkpoint's, by full name (a LoRA adapter's
    /// merged weights and its classifier: [`super::LoraAdapter`]).
    overrides: Arc<HashMap<String, Tensor>>,
    prefix: String,
    dtype: DType,
    device: Device,
}

impl Weights {
    /// Memory-maps the files and indexes their tensors; a file that is not valid
    /// safetensors is reported by name.
    pub fn from_safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut mapped = Vec::with_capacity(files.len());
        let mut routing = HashMap::new();
        for (index, path) in files.iter().enumerate() {
            // SAFETY: the file is mapped read-only; like every mmap-based loader (candle,
            // safetensors, transformers) we rely on nobody truncating a checkpoint in use.
            let st = unsafe { MmapedSafetensors::new(path) }.map_err(|e| Error::BadWeights {
                file: path.clone(),
                reason: root_cause(&e),
            })?;
            for (name, _) in st.tensors() {
                routing.insert(name, index);
            }
            mapped.push((path.clone(), st));
        }
        Ok(Weights {
            checkpoint: Arc::new(Checkpoint {
                files: mapped,
                routing,
                gguf: None,
            }),
            overrides: Default::default(),
            prefix: String::new(),
            dtype,
            device: device.clone(),
        })
    }

    /// Serves the tensors of a GGUF file; with `keep_quantized`, [`qtensor`](Self::qtensor)
    /// hands out its quantized matrices (otherwise everything is dequantized to `dtype`).
    pub fn from_gguf(gguf: GgufFile, keep_quantized: bool, dtype: DType, device: &Device) -> Self {
        Weights {
            checkpoint: Arc::new(Checkpoint {
                files: Vec::new(),
                routing: HashMap::new(),
                gguf: Some((gguf, keep_quantized)),
            }),
            overrides: Default::default(),
            prefix: String::new(),
            dtype,
            device: device.clone(),
        }
    }

    /// The GGUF file the weights serve, if they come from one.
    pub fn gguf(&self) -> Option<&GgufFile> {
        self.checkpoint.gguf.as_ref().map(|(gguf, _)| gguf)
    }

    /// The quantized `[out, in]` tensor `prefix.name`, when the weights keep GGUF tensors
    /// quantized; `None` for safetensors and dequantized GGUF (use [`get`](Self::get)).
    pub fn qtensor(
        &self,
        shape: impl Into<Vec<usize>>,
        name: &str,
    ) -> Result<Option<Arc<QTensor>>> {
        let Some((gguf, true)) = &self.checkpoint.gguf else {
            return Ok(None);
        };
        let full = self.full_name(name);
        let Some(tensor) = gguf.tensor(&full) else {
            return Err(Error::MissingTensor {
                name: full,
                files: self.file_list(),
            });
        };
        let expected = shape.into();
        if tensor.shape().dims() != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                tensor: full,
                expected,
                actual: tensor.shape().dims().to_vec(),
            });
        }
        Ok(Some(tensor.clone()))
    }

    /// The same checkpoint with `tensors` (full names) in place of, or beside, its own.
    pub fn with_overrides(&self, tensors: HashMap<String, Tensor>) -> Self {
        let mut overrides = (*self.overrides).clone();
        overrides.extend(tensors);
        Weights {
            overrides: Arc::new(overrides),
            ..self.clone()
        }
    }

    /// The same checkpoint one level down: `w.pp("encoder").pp("layer.0")`.
    pub fn pp(&self, segment: impl AsRef<str>) -> Self {
        let segment = segment.as_ref();
        let prefix = match (self.prefix.is_empty(), segment.is_empty()) {
            (_, true) => self.prefix.clone(),
            (true, false) => segment.to_string(),
            (false, false) => format!("{}.{segment}", self.prefix),
        };
        Weights {
            prefix,
            ..self.clone()
        }
    }

    /// The device tensors are loaded to.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The compute dtype tensors are converted to.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether `prefix.name` is in the checkpoint.
    pub fn contains(&self, name: &str) -> bool {
        if self.overrides.contains_key(&self.full_name(name)) {
            return true;
        }
        if let Some((gguf, _)) = &self.checkpoint.gguf {
            return gguf.tensor(&self.full_name(name)).is_some();
        }
        self.checkpoint.routing.contains_key(&self.full_name(name))
    }

    /// The stored shape of `prefix.name`, if present.
    pub fn shape_of(&self, name: &str) -> Option<Vec<usize>> {
        let full = self.full_name(name);
        if let Some(t) = self.overrides.get(&full) {
            return Some(t.dims().to_vec());
        }
        if let Some((gguf, _)) = &self.checkpoint.gguf {
            return gguf.tensor(&full).map(|t| t.shape().dims().to_vec());
        }
        let index = *self.checkpoint.routing.get(&full)?;
        let view = self.checkpoint.files[index].1.get(&full).ok()?;
        Some(view.shape().to_vec())
    }

    /// Loads `prefix.name`, checks its shape and converts it to the compute dtype.
    pub fn get(&self, shape: impl Into<Vec<usize>>, name: &str) -> Result<Tensor> {
        let expected = shape.into();
        let full = self.full_name(name);
        if let Some(tensor) = self.overrides.get(&full) {
            if tensor.dims() != expected.as_slice() {
                return Err(Error::ShapeMismatch {
                    tensor: full,
                    expected,
                    actual: tensor.dims().to_vec(),
                });
            }
            return Ok(tensor.to_device(&self.device)?.to_dtype(self.dtype)?);
        }
        if let Some((gguf, _)) = &self.checkpoint.gguf {
            let Some(tensor) = gguf.tensor(&full) else {
                return Err(Error::MissingTensor {
                    name: full,
                    files: self.file_list(),
                });
            };
            if tensor.shape().dims() != expected.as_slice() {
                return Err(Error::ShapeMismatch {
                    tensor: full,
                    expected,
                    actual: tensor.shape().dims().to_vec(),
                });
            }
            return Ok(tensor.dequantize(&self.device)?.to_dtype(self.dtype)?);
        }
        let Some(&index) = self.checkpoint.routing.get(&full) else {
            return Err(Error::MissingTensor {
                name: full,
                files: self.file_list(),
            });
        };
        let (path, st) = &self.checkpoint.files[index];
        let tensor = st
            .load(&full, &self.device)
            .map_err(|e| Error::BadWeights {
                file: path.clone(),
                reason: format!("tensor `{full}`: {}", root_cause(&e)),
            })?;
        if let Ok(view) = st.get(&full) {
            release_mapped_pages(view.data());
        }
        if tensor.dims() != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                tensor: full,
                expected,
                actual: tensor.dims().to_vec(),
            });
        }
        Ok(tensor.to_dtype(self.dtype)?)
    }

    /// Like [`get`](Self::get), trying a legacy name when the first is absent
    /// (old BERT checkpoints call LayerNorm's weight `gamma` and its bias `beta`).
    pub fn get_either(
        &self,
        shape: impl Into<Vec<usize>>,
        name: &str,
        legacy: &str,
    ) -> Result<Tensor> {
        if !self.contains(name) && self.contains(legacy) {
            self.get(shape, legacy)
        } else {
            self.get(shape, name)
        }
    }

    fn file_list(&self) -> String {
        if let Some((gguf, _)) = &self.checkpoint.gguf {
            return gguf.path().display().to_string();
        }
        self.checkpoint
            .files
            .iter()
            .map(|(p, _)| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// candle wraps safetensors errors in context layers; users need the innermost message.
fn root_cause(e: &candle_core::Error) -> String {
    match e {
        candle_core::Error::WithPath { inner, .. } => root_cause(inner),
        candle_core::Error::Context { inner, .. } => root_cause(inner),
        candle_core::Error::WithBacktrace { inner, .. } => root_cause(inner),
        other => other.to_string(),
    }
}

/// Drops this process's references to the mapped pages that hold `bytes` (a tensor just
/// copied out of the read-only checkpoint mapping).
///
/// Why: a mapped page counts in the resident set once touched, so loading a checkpoint
/// held it twice, as mapped file pages and as the loaded copy (all-MiniLM-L6-v2: 87 MiB of
/// each), and the process's peak RSS with it. The pages stay in the page cache; a later read
/// of the same tensor faults them back in.
fn release_mapped_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        const PAGE: usize = 4096;
        let start = (bytes.as_ptr() as usize).div_ceil(PAGE) * PAGE;
        let end = (bytes.as_ptr() as usize + bytes.len()) / PAGE * PAGE;
        if end > start {
            // SAFETY: the range lies inside a read-only file mapping that lives as long as
            // the checkpoint; MADV_DONTNEED on it only drops page-table entries (the file's
            // contents come back on the next access), and nothing refers to the bytes: the
            // tensor was copied out of them.
            unsafe {
                libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED);
            }
        }
    }
    #[cfg(not(unix))]
    let _ = bytes;
}

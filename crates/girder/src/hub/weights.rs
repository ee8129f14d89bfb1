//! Checkpoint tensors, memory-mapped from safetensors files, looked up by name.
//!
//! Plays the role of candle's `VarBuilder`, with two differences that matter to users:
//! errors are typed and name the tensor (and its expected and actual shapes), and every
//! tensor is upcast to the compute dtype (f32) on load, so bf16/f16 checkpoints just work.
//!
//! A GGUF file ([`GgufFile`]) serves the same lookups under transformers' names. Its tensors
//! are dequantized by [`get`](Weights::get), or kept quantized for [`Weights::qtensor`] when
//! the weights were opened with `keep_quantized`.
//!
//! For training ([`Weights::for_training`]) the same lookups build the inference model with
//! its weights as variables ([`Parameters`]): the tensors a [`Training`] plan trains become
//! [`Var`]s, the others stay frozen, a tensor the checkpoint lacks (a new classification
//! head) is initialised as transformers' `_init_weights` does, and LoRA adapters are added to
//! the targeted linear layers, as candle's `VarBuilder::from_varmap` and PEFT do.

use super::GgufFile;
use crate::error::{Error, Result};
use crate::layers::Quantization;
use crate::rng::Rng;
use candle_core::quantized::QTensor;
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor, Var};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

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
    /// Set by [`Weights::for_training`].
    training: Option<Parameters>,
    /// Linear layers quantize their f32 weights at load ([`Weights::with_quantization`]).
    quantization: Option<Quantization>,
    /// The dtype linear layers and embedding tables keep their weights in
    /// ([`Weights::with_weight_dtype`]).
    weight_dtype: DType,
    /// Output projections stay in the compute dtype ([`Weights::with_output_in_f32`]).
    output_in_f32: bool,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights")
            .field("prefix", &self.prefix)
            .field("files", &self.file_list())
            .finish_non_exhaustive()
    }
}

/// Which tensors a training load makes variables, and how it starts what the checkpoint
/// lacks.
#[derive(Debug, Clone, PartialEq)]
pub struct Training {
    pub trained: Trained,
    /// The top-level modules of a new head: a checkpoint tensor there of another shape (a
    /// classifier trained for other labels) is initialised anew, as transformers'
    /// `ignore_mismatched_sizes=True` does.
    pub head_modules: Vec<String>,
    /// LoRA adapters on the targeted linear layers of the encoder's layers.
    pub lora: Option<Lora>,
    /// Seeds the initialisation of new tensors (a head) and of LoRA's `A` matrices.
    pub seed: u64,
    /// The standard deviation of new weights (config.json's `initializer_range`).
    pub initializer_range: f64,
}

/// The tensors a training load trains.
#[derive(Debug, Clone, PartialEq)]
pub enum Trained {
    /// Every tensor (full fine-tuning).
    All,
    /// The tensors under these top-level modules (a head: `classifier`, `pre_classifier`),
    /// and LoRA's adapters.
    Modules(Vec<String>),
}

/// PEFT's `LoraConfig` fields girder trains with (Hu et al., 2021,
/// <https://arxiv.org/abs/2106.09685>): `y = W x + b + (B A dropout(x)) · lora_alpha / r`,
/// `A` Kaiming-uniform and `B` zero, so training starts from the base model's function.
#[derive(Debug, Clone, PartialEq)]
pub struct Lora {
    pub r: usize,
    pub lora_alpha: f64,
    pub lora_dropout: f64,
    /// The last name segments of the linear layers that get adapters (`query`, `value`);
    /// empty: the architecture's default (the registry's `lora_target_modules`).
    pub target_modules: Vec<String>,
}

impl Default for Lora {
    /// PEFT's defaults: r 8, alpha 8, dropout 0, the architecture's default targets.
    fn default() -> Self {
        Lora {
            r: 8,
            lora_alpha: 8.0,
            lora_dropout: 0.0,
            target_modules: Vec::new(),
        }
    }
}

impl Lora {
    /// `lora_alpha / r`
    pub fn scaling(&self) -> f64 {
        self.lora_alpha / self.r as f64
    }

    /// Refuses settings that cannot train, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &str, reason: &str| {
            Err(Error::InvalidOption {
                option: option.into(),
                reason: reason.into(),
            })
        };
        if self.r == 0 {
            return bad("lora_r", "must be at least 1");
        }
        if !(self.lora_alpha > 0.0 && self.lora_alpha.is_finite()) {
            return bad("lora_alpha", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.lora_dropout) {
            return bad("lora_dropout", "must be in [0, 1)");
        }
        Ok(())
    }
}

/// One LoRA adapter of a linear layer: `[r, in]` and `[out, r]` variables.
#[derive(Debug, Clone)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
    pub scaling: f64,
    pub dropout: f64,
}

/// Every tensor a training load handed out, under its full checkpoint name: the variables
/// the optimizer trains and the frozen tensors, in load order. Shared by the [`Weights`]
/// views of one load.
#[derive(Clone)]
pub struct Parameters(Arc<Mutex<ParameterState>>);

struct ParameterState {
    plan: Training,
    rng: Rng,
    /// name → (tensor, trained)
    tensors: BTreeMap<String, (Tensor, bool)>,
    /// The names in load order.
    order: Vec<String>,
    /// Tensors the checkpoint lacked, initialised here.
    new: Vec<String>,
}

impl std::fmt::Debug for Parameters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("Parameters")
            .field("tensors", &state.order.len())
            .field("new", &state.new)
            .finish()
    }
}

impl Parameters {
    fn lock(&self) -> MutexGuard<'_, ParameterState> {
        // A panic while holding the lock leaves a valid state (inserts only).
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The training plan.
    pub fn plan(&self) -> Training {
        self.lock().plan.clone()
    }

    /// The trained variables with their names, in load order.
    pub fn trained(&self) -> Vec<(String, Var)> {
        let state = self.lock();
        state
            .order
            .iter()
            .filter_map(|name| {
                let (tensor, trained) = &state.tensors[name];
                trained
                    .then(|| Var::from_tensor(tensor).ok().map(|v| (name.clone(), v)))
                    .flatten()
            })
            .collect()
    }

    /// Every tensor handed out, trained or frozen, with its name, in load order; the
    /// trained ones detached from the tape.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        let state = self.lock();
        state
            .order
            .iter()
            .map(|name| (name.clone(), state.tensors[name].0.detach()))
            .collect()
    }

    /// The tensors the checkpoint lacked and the load initialised (a new head).
    pub fn new_tensors(&self) -> Vec<String> {
        self.lock().new.clone()
    }

    fn trains(plan: &Training, name: &str) -> bool {
        match &plan.trained {
            Trained::All => true,
            Trained::Modules(modules) => {
                name.contains(".lora_")
                    || modules
                        .iter()
                        .any(|m| name == m || name.starts_with(&format!("{m}.")))
            }
        }
    }

    /// The tensor `name`, loaded by `load` the first time; a missing one is initialised
    /// when `init` allows it.
    fn get_or_load(
        &self,
        name: &str,
        shape: &[usize],
        device: &Device,
        load: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Tensor> {
        if let Some((tensor, _)) = self.lock().tensors.get(name) {
            if tensor.dims() != shape {
                return Err(Error::ShapeMismatch {
                    tensor: name.to_string(),
                    expected: shape.to_vec(),
                    actual: tensor.dims().to_vec(),
                });
            }
            return Ok(tensor.clone());
        }
        let in_head = |state: &ParameterState| {
            state
                .plan
                .head_modules
                .iter()
                .any(|m| name.starts_with(&format!("{m}.")))
        };
        let (tensor, new) = match load() {
            Ok(tensor) => (tensor, false),
            Err(Error::MissingTensor { .. }) => (self.initialise(name, shape, device)?, true),
            Err(Error::ShapeMismatch { .. }) if in_head(&self.lock()) => {
                (self.initialise(name, shape, device)?, true)
            }
            Err(other) => return Err(other),
        };
        let mut state = self.lock();
        let trained = Self::trains(&state.plan, name);
        let tensor = if trained {
            Var::from_tensor(&tensor.contiguous()?)?.as_tensor().clone()
        } else {
            tensor
        };
        state
            .tensors
            .insert(name.to_string(), (tensor.clone(), trained));
        state.order.push(name.to_string());
        if new {
            state.new.push(name.to_string());
        }
        Ok(tensor)
    }

    /// transformers' `_init_weights` for a tensor the checkpoint lacks: biases 0, LayerNorm
    /// weights 1, other weights normal with the config's `initializer_range`.
    fn initialise(&self, name: &str, shape: &[usize], device: &Device) -> Result<Tensor> {
        let count: usize = shape.iter().product();
        let norm = name.ends_with("LayerNorm.weight") || name.ends_with("layer_norm.weight");
        let values: Vec<f32> = if name.ends_with(".bias") || name.ends_with("LayerNorm.beta") {
            vec![0.0; count]
        } else if norm || name.ends_with("LayerNorm.gamma") {
            vec![1.0; count]
        } else {
            let mut state = self.lock();
            let std = state.plan.initializer_range;
            (0..count)
                .map(|_| (state.rng.normal() * std) as f32)
                .collect()
        };
        Ok(Tensor::from_vec(values, shape, device)?)
    }

    /// The LoRA adapter of the linear layer `prefix` (`[in]` → `[out]`), created the first
    /// time; `None` unless the plan adapts it (its last segment is a target and it lies in a
    /// transformer layer, `….layer.N.…`).
    fn lora(
        &self,
        prefix: &str,
        in_dim: usize,
        out_dim: usize,
        device: &Device,
    ) -> Result<Option<LoraPair>> {
        let Some(lora) = self.lock().plan.lora.clone() else {
            return Ok(None);
        };
        let leaf = prefix.rsplit('.').next().unwrap_or_default();
        let in_layer = prefix.split('.').any(|s| s == "layer");
        if !in_layer || !lora.target_modules.iter().any(|t| t == leaf) {
            return Ok(None);
        }
        lora.validate()?;
        let a_name = format!("{prefix}.lora_A.weight");
        let b_name = format!("{prefix}.lora_B.weight");
        let a = self.get_or_load(&a_name, &[lora.r, in_dim], device, || {
            // kaiming_uniform_(a = sqrt(5)), as PEFT: bound = 1 / sqrt(fan_in).
            let bound = 1.0 / (in_dim as f64).sqrt();
            let mut state = self.lock();
            let values: Vec<f32> = (0..lora.r * in_dim)
                .map(|_| ((2.0 * state.rng.uniform() - 1.0) * bound) as f32)
                .collect();
            Ok(Tensor::from_vec(values, (lora.r, in_dim), device)?)
        })?;
        let b = self.get_or_load(&b_name, &[out_dim, lora.r], device, || {
            Ok(Tensor::zeros((out_dim, lora.r), DType::F32, device)?)
        })?;
        Ok(Some(LoraPair {
            a,
            b,
            scaling: lora.scaling(),
            dropout: lora.lora_dropout,
        }))
    }

    /// The LoRA settings of the plan, if any.
    pub fn lora_settings(&self) -> Option<Lora> {
        self.lock().plan.lora.clone()
    }
}

impl Weights {
    /// Memory-maps the files and indexes their tensors; a file that is not valid
    /// safetensors is reported by name.
    pub fn from_safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<Self> {
        let mut mapped = Vec::with_capacity(files.len());
        let mut routing = HashMap::new();
        for (index, path) in files.iter().enumerate() {
            // A file that cannot be opened (permissions, a FIFO) is an I/O error, not a
            // malformed checkpoint.
            match std::fs::metadata(path) {
                Ok(meta) if !meta.is_file() => {
                    return Err(Error::Io {
                        path: path.clone(),
                        source: std::io::Error::other("not a regular file"),
                    })
                }
                Err(source) => {
                    return Err(Error::Io {
                        path: path.clone(),
                        source,
                    })
                }
                Ok(_) => {}
            }
            if let Err(source) = std::fs::File::open(path) {
                return Err(Error::Io {
                    path: path.clone(),
                    source,
                });
            }
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
            training: None,
            quantization: None,
            weight_dtype: dtype,
            output_in_f32: false,
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
            training: None,
            quantization: None,
            weight_dtype: dtype,
            output_in_f32: false,
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
        self.gguf_tensor(gguf, &self.full_name(name), shape.into())
            .map(Some)
    }

    /// The same checkpoint with its linear layers' weights quantized as they load
    /// ([`crate::layers::Linear`]); `None`: as stored.
    pub fn with_quantization(&self, quantization: Option<Quantization>) -> Self {
        Weights {
            quantization,
            ..self.clone()
        }
    }

    /// How linear layers quantize their weights at load, if they do.
    pub fn quantization(&self) -> Option<Quantization> {
        self.quantization
    }

    /// The same weights, with linear layers and embedding tables kept in `dtype` (`--dtype
    /// bf16|f16`: half the memory of f32); norms, biases, linear matrices under
    /// [`MIN_QUANTIZED_ELEMENTS`](crate::layers::MIN_QUANTIZED_ELEMENTS) values and every
    /// activation stay f32 (see [`Linear`](crate::layers::Linear)).
    pub fn with_weight_dtype(&self, dtype: DType) -> Self {
        Weights {
            weight_dtype: dtype,
            ..self.clone()
        }
    }

    /// The dtype linear layers and embedding tables keep their weights in.
    pub fn weight_dtype(&self) -> DType {
        self.weight_dtype
    }

    /// The same weights, with output projections (an LM head, an MLM decoder, Whisper's
    /// `proj_out`, tied or not) kept in the compute dtype when `keep` even where the layers
    /// and tables are halved or quantized (`--lm-head-f32`): the projection decides every
    /// token and holds one row per vocabulary entry.
    pub fn with_output_in_f32(&self, keep: bool) -> Self {
        Weights {
            output_in_f32: keep,
            ..self.clone()
        }
    }

    /// Whether output projections stay in the compute dtype.
    pub fn keeps_output_in_f32(&self) -> bool {
        self.output_in_f32
    }

    /// The weights an output projection loads from: these, or, when outputs stay in the
    /// compute dtype, a view that neither quantizes nor halves.
    pub fn for_output(&self) -> Self {
        if !self.output_in_f32 {
            return self.clone();
        }
        Weights {
            quantization: None,
            weight_dtype: self.dtype,
            ..self.clone()
        }
    }

    /// Whether a training load makes some tensors variables.
    pub fn is_training(&self) -> bool {
        self.training.is_some()
    }

    /// Whether a training load trains `prefix.name` (the head's modules, LoRA's matrices, or
    /// everything in full fine-tuning).
    pub fn trains(&self, name: &str) -> bool {
        self.training
            .as_ref()
            .is_some_and(|p| Parameters::trains(&p.lock().plan, &self.full_name(name)))
    }

    /// `prefix.name` as the checkpoint stores it, converted to the compute dtype, outside a
    /// training load's record of its tensors: for a frozen weight that a layer keeps in
    /// another form (QLoRA's quantized base), so that the f32 copy is not held beside it.
    pub fn get_frozen(&self, shape: impl Into<Vec<usize>>, name: &str) -> Result<Tensor> {
        if self.trains(name) {
            return Err(Error::InvalidOption {
                option: "training".into(),
                reason: format!("`{}` is trained, not frozen", self.full_name(name)),
            });
        }
        self.load(&self.full_name(name), shape.into(), self.dtype)
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

    /// The same checkpoint for a training load under `plan`, and the [`Parameters`] it
    /// fills as the model is built.
    pub fn for_training(&self, plan: Training) -> (Self, Parameters) {
        let parameters = Parameters(Arc::new(Mutex::new(ParameterState {
            rng: Rng::new(plan.seed),
            plan,
            tensors: BTreeMap::new(),
            order: Vec::new(),
            new: Vec::new(),
        })));
        let weights = Weights {
            training: Some(parameters.clone()),
            ..self.clone()
        };
        (weights, parameters)
    }

    /// Whether this is a training load, which initialises the tensors a checkpoint lacks.
    pub fn creates_missing(&self) -> bool {
        self.training.is_some()
    }

    /// The LoRA adapter of the linear layer at this prefix (`[in]` → `[out]`), when a
    /// training load adapts it.
    pub fn lora(&self, in_dim: usize, out_dim: usize) -> Result<Option<LoraPair>> {
        match &self.training {
            Some(p) => p.lora(&self.prefix, in_dim, out_dim, &self.device),
            None => Ok(None),
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

    /// The names of the checkpoint's tensors (safetensors files; a GGUF file's once mapped),
    /// sorted.
    pub fn checkpoint_names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &self.checkpoint.gguf {
            Some((gguf, _)) => gguf.tensor_names().cloned().collect(),
            None => self.checkpoint.routing.keys().cloned().collect(),
        };
        names.sort_unstable();
        names
    }

    /// Whether `prefix.name` is in the checkpoint (or was created by this training load).
    pub fn contains(&self, name: &str) -> bool {
        if self.overrides.contains_key(&self.full_name(name)) {
            return true;
        }
        if let Some(p) = &self.training {
            if p.lock().tensors.contains_key(&self.full_name(name)) {
                return true;
            }
        }
        if let Some((gguf, _)) = &self.checkpoint.gguf {
            return gguf.tensor_shape(&self.full_name(name)).is_some();
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
            return gguf.tensor_shape(&full);
        }
        let index = *self.checkpoint.routing.get(&full)?;
        let view = self.checkpoint.files[index].1.get(&full).ok()?;
        Some(view.shape().to_vec())
    }

    /// Loads `prefix.name`, checks its shape and converts it to the compute dtype; in a
    /// training load, the variable or frozen tensor [`Parameters`] holds for it.
    pub fn get(&self, shape: impl Into<Vec<usize>>, name: &str) -> Result<Tensor> {
        let expected = shape.into();
        let full = self.full_name(name);
        match &self.training {
            Some(parameters) => parameters.get_or_load(&full, &expected, &self.device, || {
                self.load(&full, expected.clone(), self.dtype)
            }),
            None => self.load(&full, expected, self.dtype),
        }
    }

    /// Like [`get`](Self::get), in the [`weight_dtype`](Self::weight_dtype) (what linear
    /// layers and embedding tables keep); a training load's variables stay in the compute
    /// dtype.
    pub fn get_weight(&self, shape: impl Into<Vec<usize>>, name: &str) -> Result<Tensor> {
        if self.training.is_some() || self.weight_dtype == self.dtype {
            return self.get(shape, name);
        }
        self.load(&self.full_name(name), shape.into(), self.weight_dtype)
    }

    fn load(&self, full: &str, expected: Vec<usize>, dtype: DType) -> Result<Tensor> {
        let full = full.to_string();
        if let Some(tensor) = self.overrides.get(&full) {
            if tensor.dims() != expected.as_slice() {
                return Err(Error::ShapeMismatch {
                    tensor: full,
                    expected,
                    actual: tensor.dims().to_vec(),
                });
            }
            return Ok(tensor.to_device(&self.device)?.to_dtype(dtype)?);
        }
        if let Some((gguf, _)) = &self.checkpoint.gguf {
            let tensor = self.gguf_tensor(gguf, &full, expected)?;
            return Ok(tensor.dequantize(&self.device)?.to_dtype(dtype)?);
        }
        let Some(&index) = self.checkpoint.routing.get(&full) else {
            return Err(Error::MissingTensor {
                name: full,
                files: self.file_list(),
            });
        };
        let (path, st) = &self.checkpoint.files[index];
        let bad = |reason: String| Error::BadWeights {
            file: path.clone(),
            reason: format!("tensor `{full}`: {reason}"),
        };
        // The header's dtype and shape are checked before the bytes are read: the safetensors
        // crate checks that they account for the tensor's bytes, not that the model can use
        // them (an I64 buffer, or a [16, 16] matrix where the config implies [32, 32]).
        let view = st.get(&full).map_err(|e| bad(root_cause(&e)))?;
        if !FLOAT_DTYPES.contains(&view.dtype()) {
            return Err(Error::DtypeMismatch {
                file: path.clone(),
                tensor: full,
                expected: "a floating-point dtype (F32, F16, BF16 or F64)".into(),
                actual: format!("{:?}", view.dtype()),
            });
        }
        if view.shape() != expected.as_slice() {
            return Err(Error::ShapeMismatch {
                tensor: full,
                expected,
                actual: view.shape().to_vec(),
            });
        }
        let tensor = st
            .load(&full, &self.device)
            .map_err(|e| bad(root_cause(&e)))?;
        release_mapped_pages(view.data());
        Ok(tensor.to_dtype(dtype)?)
    }

    /// The GGUF tensor `full`, read from the file after its header's shape is checked
    /// against `expected`.
    fn gguf_tensor(
        &self,
        gguf: &GgufFile,
        full: &str,
        expected: Vec<usize>,
    ) -> Result<Arc<QTensor>> {
        let missing = || Error::MissingTensor {
            name: full.to_string(),
            files: self.file_list(),
        };
        let actual = gguf.tensor_shape(full).ok_or_else(missing)?;
        if actual != expected {
            return Err(Error::ShapeMismatch {
                tensor: full.to_string(),
                expected,
                actual,
            });
        }
        gguf.read_tensor(full)?.ok_or_else(missing)
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

/// The safetensors dtypes a weight may have; each is upcast to the compute dtype on load.
const FLOAT_DTYPES: [safetensors::Dtype; 4] = [
    safetensors::Dtype::F32,
    safetensors::Dtype::F16,
    safetensors::Dtype::BF16,
    safetensors::Dtype::F64,
];

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

/// Writes `tensors` as a safetensors file (each in its dtype: f32, bf16 or f16, others as
/// f32; names sorted; the `format: pt` metadata transformers requires). Each tensor is
/// dropped once its bytes are made, so that a model is not in memory twice.
pub fn write_safetensors(tensors: Vec<(String, Tensor)>, path: &Path) -> Result<()> {
    let owned = tensors
        .into_iter()
        .map(|(name, t)| {
            let (dtype, bytes) = stored_bytes(&t)?;
            Ok((name, t.dims().to_vec(), dtype, bytes))
        })
        .collect::<Result<Vec<_>>>()?;
    let bad = |e: safetensors::SafeTensorError| Error::BadWeights {
        file: path.to_path_buf(),
        reason: e.to_string(),
    };
    let mut views = Vec::with_capacity(owned.len());
    for (name, shape, dtype, bytes) in &owned {
        views.push((
            name.clone(),
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map_err(bad)?,
        ));
    }
    views.sort_by(|a, b| a.0.cmp(&b.0));
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(metadata), path).map_err(bad)?;
    // The safetensors crate creates the file readable by its owner alone; a model folder's
    // files are read by whoever serves it, as the JSON files beside it are.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))
            .map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

/// A tensor's little-endian bytes in the safetensors dtype it is written in.
fn stored_bytes(t: &Tensor) -> Result<(safetensors::Dtype, Vec<u8>)> {
    let flat = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::BF16 => (
            safetensors::Dtype::BF16,
            flat.to_vec1::<half::bf16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        DType::F16 => (
            safetensors::Dtype::F16,
            flat.to_vec1::<half::f16>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        _ => (
            safetensors::Dtype::F32,
            flat.to_dtype(DType::F32)?
                .to_vec1::<f32>()?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A written weights file is readable by the others who serve the folder, as the JSON
    /// files beside it are.
    #[cfg(unix)]
    #[test]
    fn written_weights_are_readable_by_all() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("girder-weights-mode-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let t = Tensor::zeros((2, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        write_safetensors(vec![("w".to_string(), t)], &path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode, 0o644);
    }
}

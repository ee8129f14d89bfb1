//! `girder._girder`: the extension module under the `girder` Python package
//! (`python/girder/__init__.py`, which gives it transformers' `pipeline` API).
//!
//! A [`Pipeline`] holds one model loaded by girder's one loader. Calls take the texts and
//! the call's arguments as a JSON object, run with the GIL released, and return each
//! text's output as girder serialises it (the CLI's JSON lines), or the embeddings as a
//! NumPy array; the Python side shapes them as transformers' pipelines return them.

use girder::check::{self, drift, CheckOptions};
use girder::generate::Overrides;
use girder::layers::pooling::Pooling;
use girder::layers::Quantization;
use girder::pipelines::automatic_speech_recognition::{self as asr, AudioInput};
use girder::pipelines::{
    embeddings, fill_mask, text2text_generation, text_classification as tc, text_generation,
    token_classification as tok, translation_pair, Model, Task, TaskOptions, TaskOutput,
};
use girder::tokenize::Truncation;
use girder::{DType, LoadOptions, Loaded};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use serde_json::{Map, Value};
use std::sync::RwLock;

create_exception!(
    _girder,
    GirderError,
    PyException,
    "An error from girder: a model that does not load, an input or argument it refuses."
);

/// A girder error as a Python exception, its causes on one line.
fn py_err(err: impl std::fmt::Display) -> PyErr {
    GirderError::new_err(err.to_string())
}

/// The model behind a pipeline.
struct State {
    loaded: Loaded,
}

/// One task on one loaded model (`girder.pipeline(...)` wraps it).
#[pyclass(frozen, module = "girder._girder")]
struct Pipeline {
    task: Task,
    /// A `translation_xx_to_yy` name given for the task: its `task_specific_params` entry.
    task_name: Option<String>,
    /// As given to `girder.pipeline` (a folder, a `.gguf` file or a hub id).
    reference: String,
    /// Calls read it together; a call that changes the input limit for itself holds it alone.
    state: RwLock<State>,
    /// With `quantize`: the accuracy report of the quantized model against f32, as JSON.
    drift_report: Option<String>,
}

#[pymethods]
impl Pipeline {
    /// Loads `model` for `task` (a name or alias of girder's task table).
    #[new]
    #[pyo3(signature = (task, model, *, tokenizer=None, device="cpu", dtype=None, adapter=None, max_length=None, truncation=true, quantize=None, max_drift=girder::check::drift::DEFAULT_MAX_DRIFT, allow_drift=false, drift_probe=None, lm_head_f32=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        task: &str,
        model: &str,
        tokenizer: Option<String>,
        device: &str,
        dtype: Option<&str>,
        adapter: Option<std::path::PathBuf>,
        max_length: Option<usize>,
        truncation: bool,
        quantize: Option<&str>,
        max_drift: f64,
        allow_drift: bool,
        drift_probe: Option<Vec<String>>,
        lm_head_f32: bool,
    ) -> PyResult<Self> {
        let task_name = translation_pair(task).map(|_| task.to_string());
        let task = Task::parse(task).map_err(py_err)?;
        if device != "cpu" {
            return Err(py_err(format!(
                "device `{device}`: this build of girder runs on the CPU (device=\"cpu\")"
            )));
        }
        let options = LoadOptions {
            tokenizer,
            adapter,
            max_length,
            truncation: truncation_of(truncation),
            dtype: dtype.map(dtype_of).transpose()?.unwrap_or(DType::F32),
            quantize: quantize
                .map(Quantization::parse)
                .transpose()
                .map_err(py_err)?,
            output_in_f32: lm_head_f32,
            ..LoadOptions::default()
        };
        let reference = model.to_string();
        let (loaded, drift_report) = py.detach(|| -> PyResult<_> {
            if girder::pretrained::reduced_precision(&options).is_none() {
                return Ok((girder::load(&reference, &options).map_err(py_err)?, None));
            }
            let texts = match drift_probe {
                Some(texts) if !texts.is_empty() => texts,
                _ => drift::probe_texts(),
            };
            let (loaded, report) =
                drift::load_measured(&reference, &options, &texts, max_drift).map_err(py_err)?;
            if !report.ok && !allow_drift {
                return Err(py_err(format!(
                    "{reference}: {}; the model is not used (allow_drift=True uses it anyway)",
                    report.summary()
                )));
            }
            Ok((
                loaded,
                Some(serde_json::to_string(&report).map_err(py_err)?),
            ))
        })?;
        let kind = loaded.kind();
        if task.kind() != kind {
            return Err(py_err(format!(
                "{reference} is {} model; the {} pipeline needs {}",
                kind_name(kind),
                task.name(),
                kind_name(task.kind())
            )));
        }
        Ok(Pipeline {
            task,
            task_name,
            reference,
            state: RwLock::new(State { loaded }),
            drift_report,
        })
    }

    /// With `quantize`: the accuracy report (JSON) of the quantized model against f32.
    #[getter]
    fn drift_report_json(&self) -> Option<String> {
        self.drift_report.clone()
    }

    /// The task's canonical name (`text-classification`, `embeddings`, …).
    #[getter]
    fn task(&self) -> &'static str {
        self.task.name()
    }

    /// The model reference the pipeline was loaded from.
    #[getter]
    fn model(&self) -> &str {
        &self.reference
    }

    /// The input limit in tokens and whether longer inputs are cut (`True`) or refused.
    fn input_limit(&self) -> PyResult<(usize, bool)> {
        let state = self.read()?;
        match &state.loaded {
            Loaded::Encoder(m) => Ok((
                m.tokenizer.max_length(),
                m.tokenizer.truncation() == Truncation::Truncate,
            )),
            _ => Err(py_err(format!(
                "{}: only encoder pipelines have an input limit to report",
                self.reference
            ))),
        }
    }

    /// Runs the task on `texts` with the call's arguments (`arguments`: a JSON object);
    /// returns a JSON array, one output per text as girder serialises it.
    fn run_json(&self, py: Python<'_>, texts: Vec<String>, arguments: &str) -> PyResult<String> {
        let arguments = parse_arguments(arguments)?;
        let outputs = py.detach(|| self.run(&texts, arguments))?;
        serde_json::to_string(&outputs).map_err(py_err)
    }

    /// Embeds `texts` (the embeddings task): a float32 array `[len(texts), dim]`.
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        arguments: &str,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let arguments = parse_arguments(arguments)?;
        let outputs = py.detach(|| self.run(&texts, arguments))?;
        let dim = match outputs.first() {
            Some(TaskOutput::Embeddings(o)) => o.embedding.len(),
            Some(_) => return Err(py_err("embed() serves the embeddings task")),
            None => 0,
        };
        let mut flat = Vec::with_capacity(outputs.len() * dim);
        for output in outputs {
            if let TaskOutput::Embeddings(o) = output {
                flat.extend_from_slice(&o.embedding);
            }
        }
        PyArray1::from_vec(py, flat).reshape([texts.len(), dim])
    }

    /// Transcribes audio (the automatic-speech-recognition task). Each input is
    /// `(kind, payload, sampling_rate)`: `("file", path, None)`, `("bytes", data, None)` or
    /// `("samples", float32 array, rate)` (`None`: the model's rate, as transformers takes a
    /// bare array). Returns a JSON array,
    /// one transcript per input.
    fn transcribe(
        &self,
        py: Python<'_>,
        inputs: Vec<(String, Bound<'_, PyAny>, Option<u32>)>,
        arguments: &str,
    ) -> PyResult<String> {
        if self.task != Task::AutomaticSpeechRecognition {
            return Err(py_err(format!(
                "transcribe() serves automatic-speech-recognition, not {}",
                self.task.name()
            )));
        }
        let options = asr_options(&parse_arguments(arguments)?)?;
        let inputs = inputs
            .into_iter()
            .enumerate()
            .map(|(i, (kind, payload, rate))| audio_input(i, &kind, &payload, rate))
            .collect::<PyResult<Vec<_>>>()?;
        if inputs.is_empty() {
            return Ok("[]".into());
        }
        let outputs = py.detach(|| {
            let state = self.read()?;
            let Loaded::EncoderDecoder(generator) = &state.loaded else {
                return Err(py_err(format!(
                    "{} is not a speech recognition model",
                    self.reference
                )));
            };
            asr::run(generator, &inputs, &options).map_err(py_err)
        })?;
        serde_json::to_string(&outputs).map_err(py_err)
    }

    fn __repr__(&self) -> String {
        format!(
            "girder.Pipeline(task={:?}, model={:?})",
            self.task.name(),
            self.reference
        )
    }
}

impl Pipeline {
    fn read(&self) -> PyResult<std::sync::RwLockReadGuard<'_, State>> {
        self.state
            .read()
            .map_err(|_| py_err("a previous call panicked while changing the input limit"))
    }

    /// Runs the task on `texts`; a call that sets `truncation` or `max_length` runs under
    /// that limit and restores the pipeline's own afterwards.
    fn run(
        &self,
        texts: &[String],
        mut arguments: Map<String, Value>,
    ) -> PyResult<Vec<TaskOutput>> {
        // The encoder pipelines' input limit; for text-to-text, `max_length` is the
        // generation's, as in transformers.
        let limit = if self.task.kind() == girder::Kind::Encoder {
            take_limit(&mut arguments)?
        } else {
            None
        };
        let options = task_options(self.task, self.task_name.as_deref(), &arguments)?;
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        match limit {
            None => run_loaded(&self.read()?.loaded, &options, texts),
            Some((max_length, truncation)) => {
                let mut state = self
                    .state
                    .write()
                    .map_err(|_| py_err("a previous call panicked while changing the limit"))?;
                let Loaded::Encoder(model) = &mut state.loaded else {
                    return Err(py_err(
                        "truncation and max_length are call arguments of the encoder pipelines; pass them to girder.pipeline() for the others",
                    ));
                };
                let saved = (model.tokenizer.max_length(), model.tokenizer.truncation());
                let max_length = max_length.unwrap_or(saved.0);
                let truncation = truncation.unwrap_or(saved.1);
                model
                    .tokenizer
                    .set_max_length(max_length, truncation)
                    .map_err(py_err)?;
                let result = run_loaded(&state.loaded, &options, texts);
                if let Loaded::Encoder(model) = &mut state.loaded {
                    model
                        .tokenizer
                        .set_max_length(saved.0, saved.1)
                        .map_err(py_err)?;
                }
                result
            }
        }
    }
}

fn run_loaded(
    loaded: &Loaded,
    options: &TaskOptions,
    texts: &[String],
) -> PyResult<Vec<TaskOutput>> {
    match loaded {
        Loaded::Encoder(model) => run_encoder(model, options, texts),
        Loaded::Decoder(generator) => options.run_generation(generator, texts, 0),
        Loaded::EncoderDecoder(generator) => options.run_seq2seq(generator, texts, 0),
    }
    .map_err(py_err)
}

fn run_encoder(
    model: &Model,
    options: &TaskOptions,
    texts: &[String],
) -> girder::Result<Vec<TaskOutput>> {
    let encodings = model.encode_texts(texts)?;
    options.run_encoded(model, texts, &encodings, &model.plan(&encodings))
}

/// `truncation` and `max_length` of a call, removed from its arguments.
fn take_limit(
    arguments: &mut Map<String, Value>,
) -> PyResult<Option<(Option<usize>, Option<Truncation>)>> {
    let truncation = match arguments.remove("truncation") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(b)) => Some(truncation_of(b)),
        Some(other) => return Err(bad_argument("truncation", "True or False", &other)),
    };
    let max_length = match arguments.remove("max_length") {
        None | Some(Value::Null) => None,
        Some(v) => Some(as_usize("max_length", &v)?),
    };
    Ok((truncation.is_some() || max_length.is_some()).then_some((max_length, truncation)))
}

fn truncation_of(truncate: bool) -> Truncation {
    if truncate {
        Truncation::Truncate
    } else {
        Truncation::Refuse
    }
}

fn kind_name(kind: girder::Kind) -> &'static str {
    match kind {
        girder::Kind::Encoder => "an encoder",
        girder::Kind::Decoder => "a causal language",
        girder::Kind::EncoderDecoder => "an encoder-decoder",
    }
}

/// What `dtype=` keeps the weights in: `"float32"` (or `"auto"`: girder computes in
/// float32 whatever the checkpoint stores), `"bfloat16"` or `"float16"` (`torch.` prefixes
/// accepted, as `str(torch.bfloat16)` writes them).
fn dtype_of(dtype: &str) -> PyResult<DType> {
    if dtype == "auto" {
        return Ok(DType::F32);
    }
    girder::pretrained::parse_dtype(dtype).map_err(py_err)
}

fn parse_arguments(arguments: &str) -> PyResult<Map<String, Value>> {
    match serde_json::from_str(arguments) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(py_err("the call's arguments must be a JSON object")),
        Err(e) => Err(py_err(format!("the call's arguments: {e}"))),
    }
}

fn bad_argument(name: &str, expected: &str, got: &Value) -> PyErr {
    py_err(format!("argument `{name}`: expected {expected}, got {got}"))
}

fn as_usize(name: &str, value: &Value) -> PyResult<usize> {
    value
        .as_u64()
        .and_then(|v| usize::try_from(v).ok())
        .ok_or_else(|| bad_argument(name, "a non-negative integer", value))
}

fn as_f32(name: &str, value: &Value) -> PyResult<f32> {
    value
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| bad_argument(name, "a number", value))
}

fn as_bool(name: &str, value: &Value) -> PyResult<bool> {
    value
        .as_bool()
        .ok_or_else(|| bad_argument(name, "True or False", value))
}

fn as_string(name: &str, value: &Value) -> PyResult<String> {
    value
        .as_str()
        .map(String::from)
        .ok_or_else(|| bad_argument(name, "a string", value))
}

fn as_strings(name: &str, value: &Value) -> PyResult<Vec<String>> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(items) => items.iter().map(|v| as_string(name, v)).collect(),
        other => Err(bad_argument(name, "a string or a list of strings", other)),
    }
}

/// The task's options from a call's arguments (transformers' names); an argument the task
/// does not take is an error naming it and the ones it takes.
fn task_options(
    task: Task,
    task_name: Option<&str>,
    arguments: &Map<String, Value>,
) -> PyResult<TaskOptions> {
    let takes: &[&str] = match task {
        Task::TextClassification => &["top_k", "function_to_apply"],
        Task::TokenClassification => &["aggregation_strategy", "ignore_labels"],
        Task::FillMask => &["top_k", "targets"],
        Task::Embeddings => &["pooling", "normalize"],
        Task::TextGeneration => &[
            "max_new_tokens",
            "do_sample",
            "temperature",
            "top_k",
            "top_p",
            "min_p",
            "repetition_penalty",
            "seed",
            "stop",
            "eos_token_id",
            "return_full_text",
            "batch_size",
        ],
        Task::Text2TextGeneration | Task::Summarization | Task::Translation => {
            return text_to_text_options(task, task_name, arguments)
        }
        other => {
            return Err(py_err(format!(
                "the {} pipeline takes audio: call it with files, bytes or arrays",
                other.name()
            )))
        }
    };
    if let Some(unknown) = arguments.keys().find(|k| !takes.contains(&k.as_str())) {
        return Err(py_err(format!(
            "the {} pipeline takes no argument `{unknown}` (it takes {}, truncation, max_length)",
            task.name(),
            takes.join(", ")
        )));
    }
    let get = |name: &str| arguments.get(name).filter(|v| !v.is_null());
    Ok(match task {
        Task::TextClassification => TaskOptions::TextClassification(tc::Options {
            top_k: match arguments.get("top_k") {
                None => tc::TopK::NotGiven,
                Some(Value::Null) => tc::TopK::All,
                Some(v) => tc::TopK::K(as_usize("top_k", v)?),
            },
            function_to_apply: match get("function_to_apply") {
                None => None,
                Some(v) => Some(match as_string("function_to_apply", v)?.as_str() {
                    "sigmoid" => tc::FunctionToApply::Sigmoid,
                    "softmax" => tc::FunctionToApply::Softmax,
                    "none" => tc::FunctionToApply::None,
                    other => {
                        return Err(py_err(format!(
                            "function_to_apply `{other}`: expected sigmoid, softmax or none"
                        )))
                    }
                }),
            },
        }),
        Task::TokenClassification => {
            let mut options = tok::Options::default();
            if let Some(v) = get("aggregation_strategy") {
                options.aggregation_strategy = match as_string("aggregation_strategy", v)?
                    .to_ascii_lowercase()
                    .as_str()
                {
                    "none" => tok::AggregationStrategy::None,
                    "simple" => tok::AggregationStrategy::Simple,
                    "first" => tok::AggregationStrategy::First,
                    "average" => tok::AggregationStrategy::Average,
                    "max" => tok::AggregationStrategy::Max,
                    other => {
                        return Err(py_err(format!(
                            "aggregation_strategy `{other}`: expected none, simple, first, average or max"
                        )))
                    }
                };
            }
            if let Some(v) = get("ignore_labels") {
                options.ignore_labels = as_strings("ignore_labels", v)?;
            }
            TaskOptions::TokenClassification(options)
        }
        Task::FillMask => {
            let mut options = fill_mask::Options::default();
            if let Some(v) = get("top_k") {
                options.top_k = as_usize("top_k", v)?;
            }
            if let Some(v) = get("targets") {
                options.targets = Some(as_strings("targets", v)?);
            }
            TaskOptions::FillMask(options)
        }
        Task::Embeddings => TaskOptions::Embeddings(embeddings::Options {
            pooling: match get("pooling") {
                None => None,
                Some(v) => Some(match as_string("pooling", v)?.as_str() {
                    "mean" => Pooling::Mean,
                    "cls" => Pooling::Cls,
                    "max" => Pooling::Max,
                    "last_token" | "lasttoken" => Pooling::LastToken,
                    other => {
                        return Err(py_err(format!(
                            "pooling `{other}`: expected mean, cls, max or last_token"
                        )))
                    }
                }),
            },
            normalize: get("normalize")
                .map(|v| as_bool("normalize", v))
                .transpose()?,
        }),
        Task::TextGeneration => TaskOptions::TextGeneration(generation_options(&get)?),
        _ => unreachable!("refused above"),
    })
}

/// text-generation's options: greedy unless `do_sample=True` (then transformers' defaults:
/// temperature 1.0, top_k 50).
fn generation_options<'a>(
    get: &impl Fn(&str) -> Option<&'a Value>,
) -> PyResult<text_generation::Options> {
    let mut options = text_generation::Options::default();
    let g = &mut options.generation;
    if let Some(v) = get("max_new_tokens") {
        g.max_new_tokens = Some(as_usize("max_new_tokens", v)?);
    }
    if let Some(v) = get("stop") {
        g.stop = as_strings("stop", v)?;
    }
    if let Some(v) = get("eos_token_id") {
        g.eos_token_ids = Some(match v {
            Value::Array(ids) => ids
                .iter()
                .map(|id| as_usize("eos_token_id", id).map(|id| id as u32))
                .collect::<PyResult<_>>()?,
            one => vec![as_usize("eos_token_id", one)? as u32],
        });
    }
    let do_sample = get("do_sample")
        .map(|v| as_bool("do_sample", v))
        .transpose()?
        .unwrap_or(false);
    let sampling = &mut g.sampling;
    if do_sample {
        sampling.temperature = 1.0;
        sampling.top_k = 50;
        if let Some(v) = get("temperature") {
            sampling.temperature = as_f32("temperature", v)?;
        }
        if let Some(v) = get("top_k") {
            sampling.top_k = as_usize("top_k", v)?;
        }
        if let Some(v) = get("top_p") {
            sampling.top_p = as_f32("top_p", v)?;
        }
        if let Some(v) = get("min_p") {
            sampling.min_p = as_f32("min_p", v)?;
        }
        if let Some(v) = get("seed") {
            sampling.seed = as_usize("seed", v)? as u64;
        }
    }
    if let Some(v) = get("repetition_penalty") {
        sampling.repetition_penalty = as_f32("repetition_penalty", v)?;
    }
    if let Some(v) = get("return_full_text") {
        options.return_full_text = as_bool("return_full_text", v)?;
    }
    if let Some(v) = get("batch_size") {
        options.batch_size = as_usize("batch_size", v)?.max(1);
    }
    options.generation.validate().map_err(py_err)?;
    Ok(options)
}

/// The text-to-text pipelines' options: `prefix`, and `generate`'s arguments as
/// [`Overrides`] reads them (transformers' names; an unknown one is an error naming it).
fn text_to_text_options(
    task: Task,
    task_name: Option<&str>,
    arguments: &Map<String, Value>,
) -> PyResult<TaskOptions> {
    let mut generation = arguments.clone();
    let prefix = match generation.remove("prefix") {
        None | Some(Value::Null) => None,
        Some(v) => Some(as_string("prefix", &v)?),
    };
    generation.retain(|_, v| !v.is_null());
    let generation: Overrides = serde_json::from_value(Value::Object(generation))
        .map_err(|e| py_err(format!("the {} pipeline's arguments: {e}", task.name())))?;
    Ok(TaskOptions::Text2Text(
        task,
        text2text_generation::Options {
            generation,
            task_name: task_name.map(String::from),
            prefix,
        },
    ))
}

/// One audio input as the Python side hands it over.
fn audio_input(
    index: usize,
    kind: &str,
    payload: &Bound<'_, PyAny>,
    rate: Option<u32>,
) -> PyResult<AudioInput> {
    Ok(match kind {
        "file" => AudioInput::File(payload.extract::<std::path::PathBuf>()?),
        "bytes" => AudioInput::Bytes {
            name: format!("input {index} (bytes)"),
            bytes: payload.cast::<PyBytes>()?.as_bytes().to_vec(),
        },
        "samples" => {
            let array: PyReadonlyArray1<f32> = payload.extract()?;
            let samples = array.as_slice().map_err(py_err)?.to_vec();
            AudioInput::Samples {
                name: format!("input {index} (array)"),
                samples,
                sampling_rate: rate,
            }
        }
        other => {
            return Err(py_err(format!(
                "input {index}: unknown audio kind `{other}`"
            )))
        }
    })
}

/// automatic-speech-recognition's options from a call's arguments, transformers' names:
/// `return_timestamps`, `chunk_length_s`, `stride_length_s`, `generate_kwargs` (merged with
/// the other arguments), Whisper's `language` and `task`, girder's `prompt`, and `generate`'s
/// arguments as [`Overrides`] reads them.
fn asr_options(arguments: &Map<String, Value>) -> PyResult<asr::Options> {
    let mut rest = arguments.clone();
    if let Some(nested) = rest.remove("generate_kwargs") {
        match nested {
            Value::Object(nested) => rest.extend(nested),
            Value::Null => {}
            other => return Err(bad_argument("generate_kwargs", "a dict", &other)),
        }
    }
    rest.retain(|_, v| !v.is_null());
    // transformers' warning switch for chunking seq2seq models; girder does not warn.
    rest.remove("ignore_warning");
    let mut options = asr::Options::default();
    if let Some(v) = rest.remove("return_timestamps") {
        options.return_timestamps = match v {
            Value::Bool(b) => b,
            Value::String(level) => {
                return Err(py_err(format!(
                    "return_timestamps=\"{level}\": girder returns segment timestamps (True); word and character timestamps are not available"
                )))
            }
            other => return Err(bad_argument("return_timestamps", "True or False", &other)),
        };
    }
    if let Some(v) = rest.remove("chunk_length_s") {
        let seconds = as_f32("chunk_length_s", &v)?;
        // transformers' default, 0, means no chunking.
        options.chunk_length_s = (seconds > 0.0).then_some(seconds);
    }
    if let Some(v) = rest.remove("stride_length_s") {
        options.stride_length_s = Some(match &v {
            Value::Array(pair) if pair.len() == 2 => (
                as_f32("stride_length_s", &pair[0])?,
                as_f32("stride_length_s", &pair[1])?,
            ),
            one => {
                let s = as_f32("stride_length_s", one)?;
                (s, s)
            }
        });
    }
    for (name, slot) in [
        ("language", &mut options.language),
        ("task", &mut options.task),
        ("prompt", &mut options.prompt),
    ] {
        if let Some(v) = rest.remove(name) {
            *slot = Some(as_string(name, &v)?);
        }
    }
    options.generation = serde_json::from_value(Value::Object(rest)).map_err(|e| {
        py_err(format!(
            "the automatic-speech-recognition pipeline's arguments: {e}"
        ))
    })?;
    Ok(options)
}

/// `girder check` on `model` (with `lock`: against that lock too): the report as JSON
/// (`ok`, `findings`).
#[pyfunction]
#[pyo3(signature = (model, *, tokenizer=None, probe=None, lock=None))]
fn check_json(
    py: Python<'_>,
    model: &str,
    tokenizer: Option<String>,
    probe: Option<Vec<String>>,
    lock: Option<std::path::PathBuf>,
) -> PyResult<String> {
    let report = py.detach(|| -> girder::Result<_> {
        // A corrupt lock fails before the model loads.
        let pinned = lock.as_deref().map(check::lock::read).transpose()?;
        let loaded = load_checked(model, tokenizer)?;
        let mut report = check::check(
            &loaded,
            &CheckOptions {
                probe,
                ..CheckOptions::default()
            },
        )?;
        if let Some(pinned) = &pinned {
            report.extend(check::lock::compare(
                pinned,
                &check::lock_subject(&loaded)?,
            )?);
        }
        Ok(report)
    });
    serde_json::to_string(&report.map_err(py_err)?).map_err(py_err)
}

/// `girder lock`: pins `model`'s tokenizer, identity and (for a classifier) its outputs on
/// the probe texts into the file `out`, after the pre-flight check passes (unless
/// `allow_mismatch`); returns the lock as JSON.
#[pyfunction]
#[pyo3(signature = (model, out, *, tokenizer=None, probe=None, allow_mismatch=false))]
fn lock_json(
    py: Python<'_>,
    model: &str,
    out: std::path::PathBuf,
    tokenizer: Option<String>,
    probe: Option<Vec<String>>,
    allow_mismatch: bool,
) -> PyResult<String> {
    let pinned = py.detach(|| -> PyResult<_> {
        let loaded = load_checked(model, tokenizer).map_err(py_err)?;
        let subject = check::lock_subject(&loaded).map_err(py_err)?;
        let texts = check::probe_texts(&CheckOptions {
            probe,
            ..CheckOptions::default()
        });
        let report = check::preflight_subject(&subject, &texts).map_err(py_err)?;
        if !report.ok && !allow_mismatch {
            let errors: Vec<String> = report
                .findings
                .iter()
                .filter(|f| f.severity == check::Severity::Error)
                .map(|f| format!("{}: {}", f.code, f.message))
                .collect();
            return Err(py_err(format!(
                "{model} fails the pre-flight check, so it is not pinned (allow_mismatch=True pins it anyway): {}",
                errors.join("; ")
            )));
        }
        let pinned = check::lock::create(&subject, &texts).map_err(py_err)?;
        check::lock::write(&pinned, &out).map_err(py_err)?;
        Ok(pinned)
    })?;
    serde_json::to_string(&pinned).map_err(py_err)
}

fn load_checked(model: &str, tokenizer: Option<String>) -> girder::Result<Loaded> {
    girder::load(
        model,
        &LoadOptions {
            tokenizer,
            ..LoadOptions::default()
        },
    )
}

/// The names of girder's tasks, as `girder.pipeline` accepts them.
#[pyfunction]
fn tasks() -> Vec<&'static str> {
    Task::all().map(Task::name).collect()
}

/// girder's version.
#[pyfunction]
fn version() -> &'static str {
    env!("CARGO_PKG_VERSION")
}

#[pymodule]
fn _girder(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Pipeline>()?;
    m.add_function(wrap_pyfunction!(check_json, m)?)?;
    m.add_function(wrap_pyfunction!(lock_json, m)?)?;
    m.add_function(wrap_pyfunction!(tasks, m)?)?;
    m.add_function(wrap_pyfunction!(version, m)?)?;
    m.add("GirderError", m.py().get_type::<GirderError>())?;
    Ok(())
}

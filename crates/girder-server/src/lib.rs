//! girder's HTTP server: encoder pipelines behind OpenAI- and TEI-shaped endpoints with
//! dynamic batching, text generation behind OpenAI's completion APIs with continuous
//! batching, back-pressure and Prometheus metrics.
//!
//! The model is loaded and checked ([`preflight`]) by the caller before the port opens.
//! Handlers validate and tokenize; for an encoder the [`batcher`] packs queued requests under
//! a token budget and its model thread runs them through the [`engine`]; for a causal
//! language model the [`generation`] engine steps a continuous batch. Errors map to statuses
//! in one place ([`error`]). The CLI's `girder serve` is [`preflight`], [`start`] and a
//! signal handler; tests call [`start`] directly.
//!
//! Endpoints: `POST /v1/embeddings`, `/embed`, `/predict`, `/ner`, `/fill-mask` (encoders),
//! `/v1/completions`, `/v1/chat/completions` (generation), `/tokenize`; `GET /health`,
//! `/info`, `/metrics`.

pub mod batcher;
pub mod engine;
pub mod error;
pub mod generation;
pub mod metrics;
pub mod routes;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use batcher::Batcher;
use engine::EncoderEngine;
use generation::Generator;
use girder::check::{self, lock, CheckOptions, Loaded, Report, Subject};
use girder::generate::TextGenerator;
use girder::pipelines::{Model, Task};
use girder::tokenize::Truncation;
use routes::info::Info;
pub use routes::ServedTask;
use routes::{AppState, EncoderState};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Requests waiting for the model at most, by default (`--max-queue`).
pub const DEFAULT_MAX_QUEUE: usize = 512;
/// Request bodies larger than this are refused with 413, by default.
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// How long shutdown waits for in-flight requests, by default.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `host:port`; port 0 picks a free one (tests).
    pub addr: SocketAddr,
    /// The task to serve; `None` follows the model's head ([`Model::default_task`]).
    pub task: Option<Task>,
    /// The reference the model was loaded from, reported by `/info`.
    pub model_ref: String,
    /// Tokens per batch (the model's own `max_batch_tokens` bounds each forward pass).
    pub max_batch_tokens: usize,
    /// Requests waiting at most; beyond, 429.
    pub max_queue: usize,
    /// Sequences decoding together at most (generation); more wait in the queue.
    pub max_sequences: usize,
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
    /// What [`preflight`] found, reported by `/info`.
    pub preflight: Option<Preflight>,
}

impl ServeOptions {
    pub fn new(addr: SocketAddr, model_ref: impl Into<String>) -> Self {
        ServeOptions {
            addr,
            task: None,
            model_ref: model_ref.into(),
            max_batch_tokens: girder::pipelines::DEFAULT_MAX_BATCH_TOKENS,
            max_queue: DEFAULT_MAX_QUEUE,
            max_sequences: generation::DEFAULT_MAX_SEQUENCES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            preflight: None,
        }
    }
}

/// A server that is listening.
pub struct Running {
    /// The bound address (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The task it serves.
    pub task: ServedTask,
    state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    join: JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

impl Running {
    /// Stops accepting connections, lets in-flight requests finish (at most the grace
    /// period) and returns. `Ok(true)`: everything finished in time.
    pub async fn shutdown(self) -> std::io::Result<bool> {
        self.state.shutting_down.store(true, Ordering::SeqCst);
        let _ = self.stop.send(());
        match tokio::time::timeout(self.grace, self.join).await {
            Ok(Ok(result)) => result.map(|()| true),
            Ok(Err(join)) => Err(std::io::Error::other(join)),
            Err(_) => {
                tracing::warn!(
                    "in-flight requests did not finish within {:?}; stopping anyway",
                    self.grace
                );
                Ok(false)
            }
        }
    }
}

/// The router over `state`, with metrics and the body limit.
pub fn router(state: Arc<AppState>, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/v1/embeddings", post(routes::embeddings::handler))
        .route("/embed", post(routes::embed::handler))
        .route("/predict", post(routes::predict::handler))
        .route("/ner", post(routes::ner::handler))
        .route("/fill-mask", post(routes::fill_mask::handler))
        .route("/v1/completions", post(routes::completions::handler))
        .route(
            "/v1/chat/completions",
            post(routes::chat_completions::handler),
        )
        .route("/tokenize", post(routes::tokenize::handler))
        .route("/health", get(routes::health::handler))
        .route("/info", get(routes::info::handler))
        .route("/metrics", get(routes::metrics::handler))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// What a server runs: an encoder (the pipelines) or a causal language model.
pub enum ServedModel {
    Encoder(Model),
    Generator(TextGenerator),
}

impl From<Model> for ServedModel {
    fn from(model: Model) -> Self {
        ServedModel::Encoder(model)
    }
}

impl From<TextGenerator> for ServedModel {
    fn from(model: TextGenerator) -> Self {
        ServedModel::Generator(model)
    }
}

/// The pre-flight check's outcome, as `/info` reports it.
#[derive(Debug, Clone)]
pub struct Preflight {
    /// The findings of `girder check` (and of the lock comparison when a lock was given).
    pub report: Report,
    /// `girder lock`'s fingerprint of the tokenizer.
    pub tokenizer_sha256: String,
    /// The tokenizer file checked.
    pub tokenizer_source: String,
}

/// Runs the checks of `girder check` on what will be served, and compares it with `pinned`
/// (a `girder lock` file) when given; a GGUF file (no model folder) gets the checks of
/// [`check::generator`]. The caller decides whether an error refuses to start.
pub fn preflight(
    model: &ServedModel,
    model_ref: &str,
    pinned: Option<&lock::Lock>,
) -> girder::Result<Option<Preflight>> {
    let run = |subject: &Subject| -> girder::Result<Preflight> {
        let mut report = check::check_subject(subject, &CheckOptions::default())?;
        if let Some(pinned) = pinned {
            report.extend(lock::compare(pinned, subject)?);
        }
        Ok(Preflight {
            report,
            tokenizer_sha256: lock::fingerprint(subject.tokenizer)?,
            tokenizer_source: subject.tokenizer.source().display().to_string(),
        })
    };
    match model {
        ServedModel::Encoder(model) => run(&Subject::of(model)).map(Some),
        // A GGUF file has no folder: the checks that read the loaded generator.
        ServedModel::Generator(g) if model_ref.to_ascii_lowercase().ends_with(".gguf") => {
            let report = check::generator::check(g, &check::probe_texts(&CheckOptions::default()))?;
            if pinned.is_some() {
                return Err(girder::Error::InvalidOption {
                    option: "--lock".into(),
                    reason: "a lock pins a model folder's tokenizer files; a GGUF file has none (its tokenizer is checked from its metadata)".into(),
                });
            }
            Ok(Some(Preflight {
                report,
                tokenizer_sha256: lock::fingerprint_of(g.tokenizer(), Path::new(model_ref))?,
                tokenizer_source: model_ref.to_string(),
            }))
        }
        // The checks read the folder's files; the loaded network is not needed.
        ServedModel::Generator(_) => run(&Loaded::open(model_ref, None)?.subject()).map(Some),
    }
}

/// Checks that `model` can serve the task, starts its engine and binds the port.
/// Must be called inside a tokio runtime.
pub async fn start(
    model: impl Into<ServedModel>,
    options: ServeOptions,
) -> Result<Running, StartError> {
    metrics::handle();
    let preflight = options.preflight.clone();
    let (task, encoder, generator, info) = match model.into() {
        ServedModel::Encoder(model) => {
            let task = options.task.unwrap_or_else(|| model.default_task());
            check_task(&model, task)?;
            let max_length = model.tokenizer.max_length();
            let truncating = {
                let mut t = model.tokenizer.clone();
                t.set_max_length(max_length, Truncation::Truncate)?;
                // Shared: a request's tokenization gets a handle, not a copy of the
                // vocabulary (cloning it per request was a quarter of the HTTP threads' time).
                Arc::new(t)
            };
            let refusing = {
                let mut t = model.tokenizer.clone();
                t.set_max_length(max_length, Truncation::Refuse)?;
                Arc::new(t)
            };
            let info = Info {
                model: options.model_ref.clone(),
                model_path: model.folder.root().display().to_string(),
                architecture: model.encoder.class_name().to_string(),
                task: task.name(),
                // `Model::load_folder` loads encoder weights as f32 (on CPU and GPU alike).
                dtype: "float32",
                max_input_length: max_length,
                context_length: None,
                max_batch_tokens: options.max_batch_tokens,
                max_queue: options.max_queue,
                max_sequences: None,
                tokenizer_source: Some(model.tokenizer.source().display().to_string()),
                tokenizer_sha256: Some(lock::fingerprint(&model.tokenizer)?),
                preflight: preflight.map(|p| p.report),
                version: env!("CARGO_PKG_VERSION"),
            };
            let model = Arc::new(model);
            let batcher = Batcher::spawn(
                Arc::new(EncoderEngine::new(model.clone())),
                options.max_batch_tokens,
                options.max_queue,
            )?;
            let encoder = EncoderState {
                model,
                batcher,
                truncating,
                refusing,
            };
            (ServedTask::Encoder(task), Some(encoder), None, info)
        }
        ServedModel::Generator(model) => {
            if let Some(task) = options.task {
                return Err(StartError::Model(girder::Error::TaskMismatch {
                    model: model.model().class_name().to_string(),
                    task: task.name().to_string(),
                    reason: "a causal language model serves text-generation".into(),
                }));
            }
            let context = model.model().context_length();
            let gguf = options.model_ref.to_ascii_lowercase().ends_with(".gguf");
            let info = Info {
                model: options.model_ref.clone(),
                model_path: match &preflight {
                    Some(p) => std::path::Path::new(&p.tokenizer_source)
                        .parent()
                        .map(|d| d.display().to_string())
                        .unwrap_or_default(),
                    None => options.model_ref.clone(),
                },
                architecture: model.model().class_name().to_string(),
                task: ServedTask::TextGeneration.name(),
                dtype: if gguf {
                    "gguf (quantized weights, activations rounded to 8 bits per block of 32)"
                } else {
                    "float32"
                },
                max_input_length: context.saturating_sub(1),
                context_length: Some(context),
                max_batch_tokens: options.max_batch_tokens,
                max_queue: options.max_queue,
                max_sequences: Some(options.max_sequences),
                tokenizer_source: preflight.as_ref().map(|p| p.tokenizer_source.clone()),
                tokenizer_sha256: preflight.as_ref().map(|p| p.tokenizer_sha256.clone()),
                preflight: preflight.map(|p| p.report),
                version: env!("CARGO_PKG_VERSION"),
            };
            let generator = Generator::spawn(
                Arc::new(model),
                options.max_queue,
                options.max_sequences,
                options.max_batch_tokens,
            )?;
            (ServedTask::TextGeneration, None, Some(generator), info)
        }
    };
    let state = Arc::new(AppState {
        model_ref: options.model_ref.clone(),
        task,
        encoder,
        generator,
        info,
        shutting_down: AtomicBool::new(false),
    });
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let addr = listener.local_addr()?;
    let app = router(state.clone(), options.max_body_bytes);
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running {
        addr,
        task,
        state,
        stop,
        join,
        grace: options.shutdown_grace,
    })
}

/// Refuses a task the model's head cannot run, before the port opens.
fn check_task(model: &Model, task: Task) -> Result<(), StartError> {
    let head_task = model.default_task();
    // A model with a head still has hidden states to pool, so embeddings always work.
    if task == head_task || task == Task::Embeddings {
        return Ok(());
    }
    Err(StartError::Model(girder::Error::TaskMismatch {
        model: model.encoder.class_name().to_string(),
        task: task.name().to_string(),
        reason: format!("its head serves {}", head_task.name()),
    }))
}

/// Why the server did not start.
#[derive(Debug)]
pub enum StartError {
    Model(girder::Error),
    Io(std::io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Model(e) => e.fmt(f),
            StartError::Io(e) => write!(f, "cannot listen: {e}"),
        }
    }
}

impl std::error::Error for StartError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            StartError::Model(e) => Some(e),
            StartError::Io(e) => Some(e),
        }
    }
}

impl From<girder::Error> for StartError {
    fn from(e: girder::Error) -> Self {
        StartError::Model(e)
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        StartError::Io(e)
    }
}

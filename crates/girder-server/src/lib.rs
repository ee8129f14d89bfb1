//! girder's HTTP server: encoder pipelines behind OpenAI- and TEI-shaped endpoints with
//! dynamic batching, text generation behind OpenAI's completion APIs with continuous
//! batching, back-pressure and Prometheus metrics.
//!
//! The model is loaded and checked ([`preflight`]) by the caller before the port opens.
//! Handlers validate and tokenize; for an encoder the [`batcher`] packs queued requests under
//! a token budget and its model thread runs them through the [`engine`]; for a causal
//! language model the [`generation`] engine steps a continuous batch. Errors map to statuses
//! in one place ([`error`]). Connections come through [`listen`] (a cap, a header and idle
//! timeout); [`guard`] checks the API key and CORS, counts the requests in flight and turns
//! new work away while the server drains. The CLI's `girder serve` is [`preflight`], [`start`] and a
//! signal handler; tests call [`start`] directly.
//!
//! Endpoints: `POST /v1/embeddings`, `/embed`, `/predict`, `/ner`, `/fill-mask` (encoders),
//! `/v1/completions`, `/v1/chat/completions` (generation), `/text2text-generation`,
//! `/summarization`, `/translation`, `/v1/audio/transcriptions` (encoder-decoders, batched
//! continuously by the [`seq2seq`] engine), `/tokenize`; `GET /health`, `/info`, `/metrics`.

pub mod batcher;
pub mod engine;
pub mod error;
pub mod generation;
pub mod guard;
pub mod listen;
pub mod metrics;
pub mod queue;
pub mod routes;
pub mod seq2seq;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use batcher::Batcher;
use engine::EncoderEngine;
use generation::Generator;
use girder::check::{self, lock, CheckOptions, Report};
use girder::pipelines::Task;
use girder::tokenize::Truncation;
use girder::Loaded;
use routes::info::Info;
use routes::{AppState, EncoderState};
use std::net::SocketAddr;
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
/// Inputs one request may hold at most, by default (TEI's default).
pub const DEFAULT_MAX_CLIENT_BATCH_SIZE: usize = 32;

/// How to serve.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// `host:port`; port 0 picks a free one (tests).
    pub addr: SocketAddr,
    /// The task to serve; `None` follows the model's head ([`Loaded::default_task`]).
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
    /// Inputs one request may hold at most; beyond, 413.
    pub max_client_batch_size: usize,
    /// Prompt tokens prefilled per generation step at most (chunked prefill).
    pub prefill_chunk: usize,
    /// The connection cap and the header/idle timeout.
    pub limits: listen::Limits,
    /// The API key, the public paths and the CORS origins.
    pub access: guard::Access,
    pub shutdown_grace: Duration,
    /// What [`preflight`] found, reported by `/info`.
    pub preflight: Option<Preflight>,
    /// The accuracy report of a model quantized, or kept in bf16 or f16, at load, reported
    /// by `/info`.
    pub quantization: Option<girder::check::drift::DriftReport>,
}

impl ServeOptions {
    pub fn new(addr: SocketAddr, model_ref: impl Into<String>) -> Self {
        ServeOptions {
            addr,
            task: None,
            model_ref: model_ref.into(),
            max_batch_tokens: girder::pretrained::DEFAULT_MAX_BATCH_TOKENS,
            max_queue: DEFAULT_MAX_QUEUE,
            max_sequences: generation::DEFAULT_MAX_SEQUENCES,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_client_batch_size: DEFAULT_MAX_CLIENT_BATCH_SIZE,
            prefill_chunk: girder::generate::continuous::DEFAULT_PREFILL_CHUNK,
            limits: listen::Limits::default(),
            access: guard::Access::open(),
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            preflight: None,
            quantization: None,
        }
    }
}

/// A server that is listening.
pub struct Running {
    /// The bound address (the real port when 0 was asked).
    pub addr: SocketAddr,
    /// The task it serves.
    pub task: Task,
    state: Arc<AppState>,
    stop: oneshot::Sender<()>,
    join: JoinHandle<std::io::Result<()>>,
    grace: Duration,
}

/// How a shutdown ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stopped {
    /// Requests still running at the end of the grace period, answered with an error.
    pub cut: usize,
}

/// How long the connections get to write the errors of cut requests.
const LINGER: Duration = Duration::from_secs(2);

impl Running {
    /// Drains: `/health` answers 503 and new work 503 while the requests in flight finish,
    /// for at most the grace period; those still running then are answered with an error
    /// (500, or an error event that ends a stream) and their work is cancelled. Then the
    /// port closes.
    pub async fn shutdown(self) -> std::io::Result<Stopped> {
        self.state.shutting_down.store(true, Ordering::SeqCst);
        let drain = self.state.drain.clone();
        let cut = match tokio::time::timeout(self.grace, drain.idle()).await {
            Ok(()) => 0,
            Err(_) => {
                let cut = drain.in_flight();
                tracing::warn!(
                    "{cut} requests still running after {:?}: answering them with an error",
                    self.grace
                );
                drain.cut();
                let _ = tokio::time::timeout(LINGER, drain.idle()).await;
                cut
            }
        };
        let _ = self.stop.send(());
        match self.join.await {
            Ok(result) => result.map(|()| Stopped { cut }),
            Err(join) => Err(std::io::Error::other(join)),
        }
    }

    /// Requests (and streams) in flight now.
    pub fn in_flight(&self) -> usize {
        self.state.drain.in_flight()
    }
}

/// The router over `state`: every task's endpoints ([`routes::task_routes`]) and the
/// common ones, with metrics and the body limit.
/// Layers, innermost first: the body limit and the body timeout (between two pieces of a
/// body), metrics, admission while draining
/// ([`guard::admit`]), the API key, CORS.
pub fn router(
    state: Arc<AppState>,
    max_body_bytes: usize,
    body_timeout: Duration,
    access: &guard::Access,
) -> Result<Router, StartError> {
    let mut router = Router::new();
    for task in Task::all() {
        for (path, route) in routes::task_routes(task) {
            router = router.route(path, route);
        }
    }
    let cors = guard::cors(&access.cors_allow_origins).map_err(|reason| {
        StartError::Model(girder::Error::InvalidOption {
            option: "--cors-allow-origin".into(),
            reason,
        })
    })?;
    let router = router
        .route("/tokenize", post(routes::tokenize::handler))
        .route("/health", get(routes::health::handler))
        .route("/info", get(routes::info::handler))
        .route("/metrics", get(routes::metrics::handler))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        // A body that stops arriving fails its request instead of holding it open.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            body_timeout,
        ))
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            guard::admit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            Arc::new(access.clone()),
            guard::require_api_key,
        ))
        .with_state(state);
    Ok(match cors {
        Some(cors) => router.layer(cors),
        None => router,
    })
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

/// Runs the checks of `girder check` on what will be served (a GGUF file gets those of
/// [`check::generator`]), and compares it with `pinned` (a `girder lock` file) when given.
/// The caller decides whether an error refuses to start.
pub fn preflight(model: &Loaded, pinned: Option<&lock::Lock>) -> girder::Result<Preflight> {
    let mut report = check::check(model, &CheckOptions::default())?;
    if let Some(pinned) = pinned {
        report.extend(lock::compare(pinned, &check::lock_subject(model)?)?);
    }
    Ok(Preflight {
        report,
        tokenizer_sha256: lock::fingerprint(model.tokenizer())?,
        tokenizer_source: model.tokenizer().source().display().to_string(),
    })
}

/// Checks that `model` can serve the task, starts its engine and binds the port.
/// Must be called inside a tokio runtime.
pub async fn start(model: Loaded, options: ServeOptions) -> Result<Running, StartError> {
    metrics::handle();
    let task = options.task.unwrap_or_else(|| model.default_task());
    model.supports(task)?;
    let mut info = Info {
        model: options.model_ref.clone(),
        model_path: model
            .files()
            .map_or(options.model_ref.clone(), |(folder, _)| {
                folder.root().display().to_string()
            }),
        architecture: model.class_name().to_string(),
        task: task.name(),
        dtype: match (&options.quantization, model.files()) {
            (Some(report), _) if matches!(report.candidate.as_str(), "bf16" | "f16") => format!(
                "{} (linear layers and embeddings kept in {}, widened to float32 in the kernels; norms, classifier heads and activations float32)",
                report.candidate, report.candidate
            ),
            (Some(report), _) => format!(
                "{} (linear layers and embeddings quantized at load, activations rounded to 8 bits per block of 32; norms and classifier heads float32)",
                report.candidate
            ),
            // The loader computes safetensors weights in f32 on every device.
            (None, Some(_)) => "float32".into(),
            (None, None) => {
                "gguf (quantized weights, activations rounded to 8 bits per block of 32)".into()
            }
        },
        max_input_length: model.tokenizer().max_length(),
        context_length: None,
        max_batch_tokens: options.max_batch_tokens,
        max_queue: options.max_queue,
        max_sequences: None,
        tokenizer_source: Some(model.tokenizer().source().display().to_string()),
        tokenizer_sha256: Some(lock::fingerprint(model.tokenizer())?),
        preflight: options.preflight.clone().map(|p| p.report),
        quantization: options.quantization.clone(),
        version: env!("CARGO_PKG_VERSION"),
    };
    let (encoder, generator, seq2seq) = match model {
        Loaded::Encoder(model) => {
            let max_length = model.tokenizer.max_length();
            let truncating = {
                let mut t = model.tokenizer.clone();
                t.set_max_length(max_length, Truncation::Truncate)?;
                // Shared: a request's tokenization gets a handle, not a copy of the
                // vocabulary (a copy per request costs a quarter of the HTTP threads' time).
                Arc::new(t)
            };
            let refusing = {
                let mut t = model.tokenizer.clone();
                t.set_max_length(max_length, Truncation::Refuse)?;
                Arc::new(t)
            };
            let model: Arc<girder::pipelines::Model> = Arc::new(*model);
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
                max_inputs: options.max_client_batch_size,
            };
            (Some(encoder), None, None)
        }
        Loaded::Decoder(model) => {
            let context = model.model().context_length();
            // One position stays free for the first new token.
            info.max_input_length = context.saturating_sub(1);
            info.context_length = Some(context);
            info.max_sequences = Some(options.max_sequences);
            let generator = Generator::spawn(
                Arc::new(*model),
                options.max_queue,
                options.max_sequences,
                options.prefill_chunk,
            )?;
            (None, Some(generator), None)
        }
        Loaded::EncoderDecoder(model) => {
            info.max_sequences = Some(options.max_sequences);
            info.context_length = model.model().max_target_positions();
            let engine = seq2seq::Seq2SeqEngine::spawn(
                Arc::new(*model),
                options.max_queue,
                options.max_sequences,
            )?;
            (None, None, Some(engine))
        }
    };
    let state = Arc::new(AppState {
        model_ref: options.model_ref.clone(),
        task,
        encoder,
        generator,
        seq2seq,
        info,
        shutting_down: AtomicBool::new(false),
        drain: Default::default(),
        max_client_batch_size: options.max_client_batch_size,
    });
    let app = router(
        state.clone(),
        options.max_body_bytes,
        options.limits.header_timeout,
        &options.access,
    )?;
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let join = tokio::spawn(listen::serve(
        listener,
        app,
        options.limits,
        stopped,
        LINGER,
    ));
    Ok(Running {
        addr,
        task,
        state,
        stop,
        join,
        grace: options.shutdown_grace,
    })
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

//! girder's HTTP server: encoder pipelines behind OpenAI- and TEI-shaped endpoints, with
//! dynamic batching, back-pressure and Prometheus metrics.
//!
//! The model is loaded (by the caller) before the port opens. Handlers validate and tokenize;
//! the [`batcher`] packs queued requests under a token budget and its model thread runs them
//! through the [`engine`]. Errors map to statuses in one place ([`error`]). The CLI's
//! `girder serve` is [`start`] plus a signal handler; tests call [`start`] directly.
//!
//! Endpoints: `POST /v1/embeddings`, `/embed`, `/predict`, `/ner`, `/fill-mask`,
//! `/tokenize`; `GET /health`, `/info`, `/metrics`.

pub mod batcher;
pub mod engine;
pub mod error;
pub mod metrics;
pub mod routes;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use batcher::Batcher;
use engine::EncoderEngine;
use girder::pipelines::{Model, Task};
use girder::tokenize::Truncation;
use routes::AppState;
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
    pub max_body_bytes: usize,
    pub shutdown_grace: Duration,
}

impl ServeOptions {
    pub fn new(addr: SocketAddr, model_ref: impl Into<String>) -> Self {
        ServeOptions {
            addr,
            task: None,
            model_ref: model_ref.into(),
            max_batch_tokens: girder::pipelines::DEFAULT_MAX_BATCH_TOKENS,
            max_queue: DEFAULT_MAX_QUEUE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
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
        .route("/tokenize", post(routes::tokenize::handler))
        .route("/health", get(routes::health::handler))
        .route("/info", get(routes::info::handler))
        .route("/metrics", get(routes::metrics::handler))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
}

/// Checks that `model` can serve the task, starts the batcher and binds the port.
/// Must be called inside a tokio runtime.
pub async fn start(model: Model, options: ServeOptions) -> Result<Running, StartError> {
    let task = options.task.unwrap_or_else(|| model.default_task());
    check_task(&model, task)?;
    metrics::handle();
    let max_length = model.tokenizer.max_length();
    let truncating = {
        let mut t = model.tokenizer.clone();
        t.set_max_length(max_length, Truncation::Truncate)?;
        t
    };
    let refusing = {
        let mut t = model.tokenizer.clone();
        t.set_max_length(max_length, Truncation::Refuse)?;
        t
    };
    let model = Arc::new(model);
    let batcher = Batcher::spawn(
        Arc::new(EncoderEngine::new(model.clone())),
        options.max_batch_tokens,
        options.max_queue,
    )?;
    let state = Arc::new(AppState {
        model,
        model_ref: options.model_ref.clone(),
        task,
        batcher,
        truncating,
        refusing,
        max_batch_tokens: options.max_batch_tokens,
        max_queue: options.max_queue,
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

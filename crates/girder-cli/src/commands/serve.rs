//! `girder serve`: load the model once, run the pre-flight check (and the lock comparison)
//! before the port opens, then serve it over HTTP (see the `girder-server` crate) until
//! SIGTERM or Ctrl-C. Then it drains: `/health` answers 503 and new requests 503 while those
//! in flight finish, for at most `--shutdown-grace-s`; it exits 0 when all finished, and 1,
//! naming how many, when some were cut off with an error.

use anyhow::{Context, Result};
use clap::Args;
use girder::check::lock;
use girder::pipelines::Task;
use girder::pretrained::DEFAULT_MAX_BATCH_TOKENS;
use girder::LoadOptions;
use girder_server::{ServeOptions, DEFAULT_MAX_QUEUE};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// A model folder, a hub id (`org/name[@revision]`) in the Hugging Face cache, or a
    /// `.gguf` file. A causal language model serves /v1/completions and /v1/chat/completions.
    #[arg(long, short)]
    model: String,
    /// The task (text-classification, token-classification, fill-mask, embeddings,
    /// text-generation); default: the one the model's head implies.
    #[arg(long)]
    task: Option<String>,
    /// A PEFT LoRA adapter folder merged into an encoder's weights at load (as `girder run
    /// --adapter`).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Tokens per encoder batch at most (one request alone may exceed it).
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Prompt tokens prefilled per generation step at most: a longer prompt is prefilled in
    /// chunks between the decode steps of the running sequences.
    #[arg(long, default_value_t = girder::generate::continuous::DEFAULT_PREFILL_CHUNK)]
    prefill_chunk: usize,
    /// Inputs one request may hold at most; more get 413.
    #[arg(long, default_value_t = girder_server::DEFAULT_MAX_CLIENT_BATCH_SIZE)]
    max_client_batch_size: usize,
    /// Requests waiting for the model at most; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = DEFAULT_MAX_QUEUE)]
    max_queue: usize,
    /// Sequences decoding together at most (generation); more wait in the queue.
    #[arg(long, default_value_t = girder_server::generation::DEFAULT_MAX_SEQUENCES)]
    max_sequences: usize,
    /// Compare with a lock file written by `girder lock` before opening the port; drift that
    /// is an error refuses to start.
    #[arg(long)]
    lock: Option<PathBuf>,
    /// Start even when the pre-flight check (or the lock) finds errors; they are printed as
    /// warnings and reported by /info.
    #[arg(long)]
    allow_mismatch: bool,
    #[command(flatten)]
    precision: super::precision::PrecisionArgs,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, default_value_t = girder_server::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Seconds that shutdown waits for in-flight requests.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_s: u64,
    /// Open connections at most; more are closed at once.
    #[arg(long, default_value_t = girder_server::listen::DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
    /// Seconds a connection may take to send a request head, or stay idle between requests,
    /// before it is closed.
    #[arg(long, default_value_t = girder_server::listen::DEFAULT_HEADER_TIMEOUT.as_secs())]
    header_timeout_s: u64,
    /// Require `Authorization: Bearer <KEY>` on every request but the --public-path ones.
    /// Prefer --api-key-file or GIRDER_API_KEY: a command line is visible to other users.
    #[arg(long, env = "GIRDER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// A file holding the API key (its first line).
    #[arg(long, conflicts_with = "api_key")]
    api_key_file: Option<PathBuf>,
    /// A path answered without the API key (repeatable; default: /health).
    #[arg(long = "public-path", default_values_t = ["/health".to_string()])]
    public_paths: Vec<String>,
    /// An origin whose web pages may call the server (repeatable; `*` for any). Without it
    /// no CORS headers are sent and browsers refuse cross-origin calls.
    #[arg(long = "cors-allow-origin")]
    cors_allow_origins: Vec<String>,
}

/// The API key from the option, the environment or the file; an empty key is an error.
fn api_key(args: &ServeArgs) -> Result<Option<String>> {
    let key = match (&args.api_key, &args.api_key_file) {
        (Some(key), _) => Some(key.trim().to_string()),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("cannot read the API key file {}", file.display()))?;
            Some(text.lines().next().unwrap_or_default().trim().to_string())
        }
        (None, None) => None,
    };
    if key.as_deref() == Some("") {
        anyhow::bail!("the API key is empty");
    }
    Ok(key)
}

pub fn run(args: ServeArgs) -> Result<()> {
    let task = args.task.as_deref().map(Task::parse).transpose()?;
    // Read the lock before loading the model: a corrupt lock fails fast and clearly.
    let pinned = args.lock.as_deref().map(lock::read).transpose()?;
    let load = LoadOptions {
        max_batch_tokens: args.max_batch_tokens,
        adapter: args.adapter.clone(),
        ..LoadOptions::default()
    };
    let (model, quantization) = args
        .precision
        .load_with_report(&args.model, &load, "serve")?;
    if let Some(task) = task {
        model.supports(task)?;
    }
    let preflight = girder_server::preflight(&model, pinned.as_ref())
        .context("the pre-flight check could not run")?;
    super::check::gate(&preflight.report, args.allow_mismatch, "serve", true)?;
    let mut options = ServeOptions::new(SocketAddr::new(args.host, args.port), &args.model);
    options.task = task;
    options.preflight = Some(preflight);
    options.quantization = quantization;
    options.max_batch_tokens = args.max_batch_tokens;
    options.max_queue = args.max_queue;
    options.max_sequences = args.max_sequences;
    options.max_body_bytes = args.max_body_bytes;
    options.max_client_batch_size = args.max_client_batch_size;
    options.prefill_chunk = args.prefill_chunk;
    options.shutdown_grace = Duration::from_secs(args.shutdown_grace_s);
    options.limits = girder_server::listen::Limits {
        max_connections: args.max_connections,
        header_timeout: Duration::from_secs(args.header_timeout_s.max(1)),
    };
    options.access = girder_server::guard::Access {
        api_key: api_key(&args)?,
        public_paths: args.public_paths.clone(),
        cors_allow_origins: args.cors_allow_origins.clone(),
    };
    if options.access.api_key.is_none() && !args.host.is_loopback() {
        eprintln!(
            "girder serve: warning: listening on {} without an API key: anyone who can reach \
             the port can use the model (--api-key-file, or GIRDER_API_KEY)",
            args.host
        );
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("girder-http")
        // Tokenization runs on the blocking pool. With tokio's default of up to 512 threads,
        // 64 concurrent clients grow it to dozens, each keeping its own allocator pages, and
        // the server's RSS climbs for a minute under load. A few threads tokenize as fast on
        // this many cores.
        .max_blocking_threads(std::thread::available_parallelism().map_or(4, |n| 2 * n.get()))
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let signal = ShutdownSignal::watch()?;
        let server = girder_server::start(model, options).await?;
        eprintln!(
            "girder serve: {} ({}) listening on http://{}",
            args.model,
            server.task.name(),
            server.addr
        );
        signal.received().await?;
        eprintln!(
            "girder serve: shutting down, finishing {} in-flight requests",
            server.in_flight()
        );
        let stopped = server.shutdown().await?;
        if stopped.cut > 0 {
            anyhow::bail!(
                "{} requests were still running after the grace period of {} s: they were answered with an error",
                stopped.cut,
                args.shutdown_grace_s
            );
        }
        Ok(())
    })
}

/// SIGTERM and Ctrl-C, watched from creation on: a signal that arrives right after the
/// "listening" line must shut down gracefully rather than kill the process.
struct ShutdownSignal {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignal {
    /// Installs the handlers (inside the runtime).
    fn watch() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(ShutdownSignal {
                term: signal(SignalKind::terminate()).context("cannot watch SIGTERM")?,
                interrupt: signal(SignalKind::interrupt()).context("cannot watch Ctrl-C")?,
            })
        }
        #[cfg(not(unix))]
        Ok(ShutdownSignal {})
    }

    /// Resolves on the first signal.
    async fn received(mut self) -> Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c()
            .await
            .context("cannot watch Ctrl-C")?;
        Ok(())
    }
}

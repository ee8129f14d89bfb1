//! `girder serve`: load the model once, then serve it over HTTP (see the `girder-server`
//! crate) until SIGTERM or Ctrl-C, after which in-flight requests finish and it exits 0.

use anyhow::{Context, Result};
use clap::Args;
use girder::pipelines::{LoadOptions, Model, Task, DEFAULT_MAX_BATCH_TOKENS};
use girder_server::{ServeOptions, DEFAULT_MAX_QUEUE};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

#[derive(Args)]
pub struct ServeArgs {
    /// A model folder, or a hub id (`org/name[@revision]`) in the Hugging Face cache.
    #[arg(long, short)]
    model: String,
    /// The task (text-classification, token-classification, fill-mask, embeddings); default:
    /// the one the model's head implies.
    #[arg(long)]
    task: Option<String>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
    /// The port to listen on (0: any free port, printed at start).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Tokens per batch at most (one request alone may exceed it).
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Requests waiting for the model at most; beyond, 429 with Retry-After.
    #[arg(long, default_value_t = DEFAULT_MAX_QUEUE)]
    max_queue: usize,
    /// Request bodies larger than this many bytes get 413.
    #[arg(long, default_value_t = girder_server::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Seconds that shutdown waits for in-flight requests.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_s: u64,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let task = args.task.as_deref().map(Task::parse).transpose()?;
    let load = LoadOptions {
        max_batch_tokens: args.max_batch_tokens,
        ..LoadOptions::default()
    };
    let model =
        Model::load(&args.model, &load).with_context(|| format!("cannot load {}", args.model))?;
    let mut options = ServeOptions::new(SocketAddr::new(args.host, args.port), &args.model);
    options.task = task;
    options.max_batch_tokens = args.max_batch_tokens;
    options.max_queue = args.max_queue;
    options.max_body_bytes = args.max_body_bytes;
    options.shutdown_grace = Duration::from_secs(args.shutdown_grace_s);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("girder-http")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let server = girder_server::start(model, options).await?;
        eprintln!(
            "girder serve: {} ({}) listening on http://{}",
            args.model,
            server.task.name(),
            server.addr
        );
        shutdown_signal().await?;
        eprintln!("girder serve: shutting down, finishing in-flight requests");
        if !server.shutdown().await? {
            eprintln!("girder serve: some requests were still running after the grace period");
        }
        Ok(())
    })
}

/// Resolves on Ctrl-C or (on Unix) SIGTERM.
async fn shutdown_signal() -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r.context("cannot watch Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c()
        .await
        .context("cannot watch Ctrl-C")?;
    Ok(())
}

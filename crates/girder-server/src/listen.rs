//! The accept loop: HTTP/1 connections under a cap, each closed when it sends no complete
//! request head in time, and a graceful stop.
//!
//! `axum::serve` accepts every connection and waits forever for an idle one's next request,
//! so idle sockets pile up until the process runs out of descriptors. Here a connection past
//! [`Limits::max_connections`] is closed at once, and one that has not sent a whole request
//! head within [`Limits::header_timeout`] (a slow client, or a keep-alive connection left
//! idle) is closed by hyper's header-read timer.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Semaphore};

/// Open connections at most, by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// How long a connection may take to send a request head, or stay idle between requests,
/// by default.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// What bounds the connections.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    /// For a request head, for the wait between two requests on a connection, and for the
    /// wait between two pieces of a request body.
    pub header_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
        }
    }
}

/// Serves `app` on `listener` until `stop` fires; then stops accepting and gives the open
/// connections `linger` to finish their responses before closing them.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stop: oneshot::Receiver<()>,
    linger: Duration,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut stop = stop;
    loop {
        let (stream, _) = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, or a connection reset before it was taken: the
                // listener is fine; wait a moment rather than spin.
                Err(err) => {
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED).increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(linger, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {linger:?}: closing them");
    }
    Ok(())
}

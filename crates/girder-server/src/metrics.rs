//! Prometheus metrics: one recorder per process, names in one place.
//!
//! Request counts and latency per route and status come from [`track`], a middleware around
//! every route; the batcher records queue depth and batch sizes, the generation engine
//! tokens, steps, time to first token and time per output token. `GET /metrics` renders them.

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;
use std::time::Instant;

/// Requests answered, by `route` and `status`.
pub const REQUESTS: &str = "girder_requests_total";
/// Seconds from request to response, by `route` and `status`.
pub const REQUEST_DURATION: &str = "girder_request_duration_seconds";
/// Requests waiting for the batcher.
pub const QUEUE_DEPTH: &str = "girder_queue_depth";
/// Requests per forward pass.
pub const BATCH_REQUESTS: &str = "girder_batch_requests";
/// Tokens per forward pass.
pub const BATCH_TOKENS: &str = "girder_batch_tokens";
/// Seconds a forward pass takes.
pub const BATCH_DURATION: &str = "girder_batch_duration_seconds";
/// Seconds a request waits in the queue.
pub const QUEUE_DURATION: &str = "girder_queue_duration_seconds";

/// Sequences decoding together in one generation step.
pub const DECODE_BATCH_SEQUENCES: &str = "girder_decode_batch_sequences";
/// Sequences in the running decode batch.
pub const RUNNING_SEQUENCES: &str = "girder_running_sequences";
/// Tokens generated.
pub const GENERATED_TOKENS: &str = "girder_generated_tokens_total";
/// Prompt tokens prefilled.
pub const PROMPT_TOKENS: &str = "girder_prompt_tokens_total";
/// Prompt tokens whose keys and values were copied from a kept prompt with the same
/// beginning instead of prefilled.
pub const REUSED_PROMPT_TOKENS: &str = "girder_reused_prompt_tokens_total";
/// Sequences stopped because their client went away.
pub const GENERATIONS_CANCELLED: &str = "girder_generations_cancelled_total";
/// Encoder batches abandoned between forward passes because their clients went away.
pub const BATCHES_CANCELLED: &str = "girder_batches_cancelled_total";
/// Connections closed at once because the server held `--max-connections` already.
pub const CONNECTIONS_REFUSED: &str = "girder_connections_refused_total";
/// Seconds one generation step (one forward pass) takes.
pub const STEP_DURATION: &str = "girder_generation_step_seconds";
/// Seconds from a generation request's arrival to its first token.
pub const TIME_TO_FIRST_TOKEN: &str = "girder_time_to_first_token_seconds";
/// Seconds between two tokens of one sequence.
pub const TIME_PER_OUTPUT_TOKEN: &str = "girder_time_per_output_token_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The process's Prometheus handle, installing the recorder on first use (a process can hold
/// one global recorder; several servers in one test process share it).
pub fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let seconds = [
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0, 10.0, 30.0,
        ];
        let counts = [
            1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
            8192.0, 16384.0,
        ];
        let builder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_REQUESTS.into()), &counts))
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_TOKENS.into()), &counts))
            .and_then(|b| {
                b.set_buckets_for_metric(Matcher::Full(DECODE_BATCH_SEQUENCES.into()), &counts)
            });
        let recorder = match builder {
            Ok(builder) => builder.build_recorder(),
            // Only an empty bucket list fails, and the lists above are constants.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    })
}

/// Renders the metrics in Prometheus' text format.
pub fn render() -> String {
    let handle = handle();
    handle.run_upkeep();
    handle.render()
}

/// Middleware: counts each request and times it, labelled with the matched route.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".to_string());
    let start = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    let labels = [("route", route), ("status", status)];
    metrics::counter!(REQUESTS, &labels).increment(1);
    metrics::histogram!(REQUEST_DURATION, &labels).record(start.elapsed().as_secs_f64());
    response
}

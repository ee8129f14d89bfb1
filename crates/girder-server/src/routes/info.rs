//! `GET /info`: what this server runs, and what the pre-flight check found before the port
//! opened.

use super::AppState;
use axum::extract::State;
use axum::Json;
use girder::check::drift::DriftReport;
use girder::check::Report;
use serde::Serialize;
use std::sync::Arc;

/// Fixed at start.
#[derive(Debug, Clone, Serialize)]
pub struct Info {
    /// `--model` as given.
    pub model: String,
    /// The folder (or file) it resolved to.
    pub model_path: String,
    /// `architectures[0]` as girder runs it.
    pub architecture: String,
    pub task: &'static str,
    /// How the weights are held and computed.
    pub dtype: String,
    /// Tokens per input, special tokens included (a prompt: the context less one position
    /// for the first new token).
    pub max_input_length: usize,
    /// Positions a causal language model attends over; absent for encoders.
    pub context_length: Option<usize>,
    pub max_batch_tokens: usize,
    pub max_queue: usize,
    /// Sequences decoding together at most; absent for encoders.
    pub max_sequences: Option<usize>,
    /// The tokenizer file.
    pub tokenizer_source: Option<String>,
    /// `girder lock`'s fingerprint of the tokenizer (SHA-256 of its canonical JSON).
    pub tokenizer_sha256: Option<String>,
    /// The findings of the pre-flight check run before the port opened (`None`: not run).
    pub preflight: Option<Report>,
    /// With `--quantize`: the accuracy report of the quantized model against f32.
    pub quantization: Option<DriftReport>,
    pub version: &'static str,
}

pub async fn handler(State(state): State<Arc<AppState>>) -> Json<Info> {
    Json(state.info.clone())
}

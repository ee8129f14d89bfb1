//! `GET /info`: what this server runs.

use super::AppState;
use axum::extract::State;
use axum::Json;
use serde::Serialize;
use std::sync::Arc;

#[derive(Debug, Serialize)]
pub struct Info {
    /// `--model` as given.
    pub model: String,
    /// The folder it resolved to.
    pub model_path: String,
    /// `architectures[0]` as girder runs it.
    pub architecture: String,
    pub task: &'static str,
    pub dtype: &'static str,
    /// Tokens per input, special tokens included.
    pub max_input_length: usize,
    pub max_batch_tokens: usize,
    pub max_queue: usize,
    /// The tokenizer file.
    pub tokenizer_source: String,
    pub version: &'static str,
}

pub async fn handler(State(state): State<Arc<AppState>>) -> Json<Info> {
    let model = &state.model;
    Json(Info {
        model: state.model_ref.clone(),
        model_path: model.folder.root().display().to_string(),
        architecture: model.encoder.class_name().to_string(),
        task: state.task.name(),
        // `Model::load_folder` loads encoder weights as f32 (on CPU and GPU alike).
        dtype: "float32",
        max_input_length: model.tokenizer.max_length(),
        max_batch_tokens: state.max_batch_tokens,
        max_queue: state.max_queue,
        tokenizer_source: model.tokenizer.source().display().to_string(),
        version: env!("CARGO_PKG_VERSION"),
    })
}

//! `GET /health`: 200 once the model is loaded and its thread runs; 503 while shutting down
//! or when the model thread has stopped. The port opens only after the model has loaded.

use super::AppState;
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};
use std::sync::Arc;

pub async fn handler(State(state): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    if state.is_shutting_down() {
        return Err(ApiError::Unavailable("the server is shutting down".into()));
    }
    let alive = match (&state.encoder, &state.generator, &state.seq2seq) {
        (Some(encoder), _, _) => encoder.batcher.is_alive(),
        (None, Some(generator), _) => generator.is_alive(),
        (None, None, Some(engine)) => engine.is_alive(),
        (None, None, None) => false,
    };
    if !alive {
        return Err(ApiError::Unavailable("the model thread has stopped".into()));
    }
    Ok(Json(json!({"status": "ok"})))
}

//! `POST /embed`: text-embeddings-inference's embeddings API: `{"inputs", "normalize",
//! "truncate"}` → one vector per input (a list of lists, also for a single string).

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use girder::pipelines::Task;
use girder::pipelines::{TaskOptions, TaskOutput};
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub inputs: Texts,
    /// TEI normalises unless told not to.
    #[serde(default = "yes")]
    pub normalize: bool,
    #[serde(default)]
    pub truncate: bool,
}

fn yes() -> bool {
    true
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Json<Vec<Vec<f32>>>, ApiError> {
    let encoder = state.require(Task::Embeddings, "/embed")?;
    let (texts, encodings) = encode(encoder, request.inputs, request.truncate, "inputs").await?;
    let work = TaskOptions::Embeddings(girder::pipelines::embeddings::Options {
        pooling: None,
        normalize: Some(request.normalize),
    });
    let items = encoder.batcher.call(work, texts, encodings).await?;
    items
        .into_iter()
        .map(|item| match item {
            TaskOutput::Embeddings(out) => Ok(out.embedding),
            _ => Err(ApiError::Internal(
                "the engine returned no embedding".into(),
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

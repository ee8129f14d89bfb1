//! `POST /predict`: text-embeddings-inference's classification API: `{"inputs", "raw_scores",
//! "truncate"}` → every label with its score, best first (a list per input when `inputs` is an
//! array).

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use girder::pipelines::text_classification::{FunctionToApply, LabelScore, Options, TopK};
use girder::pipelines::Task;
use girder::pipelines::{TaskOptions, TaskOutput};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub inputs: Texts,
    /// Logits instead of probabilities.
    #[serde(default)]
    pub raw_scores: bool,
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Response {
    One(Vec<LabelScore>),
    Many(Vec<Vec<LabelScore>>),
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Json<Response>, ApiError> {
    let encoder = state.require(Task::TextClassification, "/predict")?;
    let single = request.inputs.is_single();
    let (texts, encodings) = encode(encoder, request.inputs, request.truncate, "inputs").await?;
    let work = TaskOptions::TextClassification(Options {
        top_k: TopK::All,
        function_to_apply: request.raw_scores.then_some(FunctionToApply::None),
    });
    let items = encoder.batcher.call(work, texts, encodings).await?;
    let mut ranked = items
        .into_iter()
        .map(|item| match item {
            TaskOutput::TextClassification(result) => Ok(result.output().into_single_input()),
            _ => Err(ApiError::Internal("the engine returned no labels".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(match ranked.pop() {
        Some(one) if single => Response::One(one),
        Some(last) => {
            ranked.push(last);
            Response::Many(ranked)
        }
        None => Response::Many(ranked),
    }))
}

//! `POST /ner`: token classification as transformers' pipeline: `{"inputs",
//! "aggregation_strategy", "ignore_labels", "truncate"}` → the entities of a string, or a list
//! of them per input when `inputs` is an array.

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use girder::pipelines::token_classification::{AggregationStrategy, Entity, Options};
use girder::pipelines::Task;
use girder::pipelines::{TaskOptions, TaskOutput};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub inputs: Texts,
    /// `none` (default), `simple`, `first`, `average` or `max`, in any case.
    #[serde(default)]
    pub aggregation_strategy: Option<String>,
    /// transformers' default is `["O"]`.
    #[serde(default)]
    pub ignore_labels: Option<Vec<String>>,
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Response {
    One(Vec<Entity>),
    Many(Vec<Vec<Entity>>),
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Json<Response>, ApiError> {
    let encoder = state.require(Task::TokenClassification, "/ner")?;
    let mut options = Options::default();
    if let Some(name) = &request.aggregation_strategy {
        options.aggregation_strategy =
            name.parse::<AggregationStrategy>()
                .map_err(|reason| ApiError::Validation {
                    field: "aggregation_strategy".into(),
                    message: reason,
                })?;
    }
    if let Some(labels) = request.ignore_labels {
        options.ignore_labels = labels;
    }
    let single = request.inputs.is_single();
    let (texts, encodings) = encode(encoder, request.inputs, request.truncate, "inputs").await?;
    let items = encoder
        .batcher
        .call(TaskOptions::TokenClassification(options), texts, encodings)
        .await?;
    let mut all = items
        .into_iter()
        .map(|item| match item {
            TaskOutput::TokenClassification(result) => Ok(result.entities),
            _ => Err(ApiError::Internal("the engine returned no entities".into())),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(match all.pop() {
        Some(one) if single => Response::One(one),
        Some(last) => {
            all.push(last);
            Response::Many(all)
        }
        None => Response::Many(all),
    }))
}

//! `POST /fill-mask`: transformers' fill-mask pipeline: `{"inputs", "top_k", "targets",
//! "truncate"}` → the predictions of a string (a list per mask when it has several), or a list
//! of them per input when `inputs` is an array.

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use girder::pipelines::fill_mask::{self, Options, Output};
use girder::pipelines::Task;
use girder::pipelines::{TaskOptions, TaskOutput};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub inputs: Texts,
    /// Predictions per mask (transformers' default 5).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Restrict predictions to these tokens.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Response {
    One(Output),
    Many(Vec<Output>),
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Json<Response>, ApiError> {
    let encoder = state.require(Task::FillMask, "/fill-mask")?;
    let mut options = Options {
        targets: request.targets,
        mask_token: encoder.model.tokenizer.mask_token().map(String::from),
        ..Options::default()
    };
    if let Some(k) = request.top_k {
        if k == 0 {
            return Err(ApiError::Validation {
                field: "top_k".into(),
                message: "must be at least 1".into(),
            });
        }
        options.top_k = k;
    }
    if options.targets.as_ref().is_some_and(|t| t.is_empty()) {
        return Err(ApiError::Validation {
            field: "targets".into(),
            message: "must not be empty".into(),
        });
    }
    let single = request.inputs.is_single();
    let (texts, encodings) = encode(encoder, request.inputs, request.truncate, "inputs").await?;
    // A text without a mask token fails the whole batch in the library: refuse it here.
    let tokenizer = encoder.model.tokenizer.inner();
    for (i, enc) in encodings.iter().enumerate() {
        if let Err(e) = fill_mask::mask_positions(enc, tokenizer, &options) {
            return Err(ApiError::Validation {
                field: if single {
                    "inputs".into()
                } else {
                    format!("inputs[{i}]")
                },
                message: e.to_string(),
            });
        }
    }
    let items = encoder
        .batcher
        .call(TaskOptions::FillMask(options), texts, encodings)
        .await?;
    let mut all = items
        .into_iter()
        .map(|item| match item {
            TaskOutput::FillMask(result) => Ok(result.predictions),
            _ => Err(ApiError::Internal(
                "the engine returned no predictions".into(),
            )),
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

//! `POST /text2text-generation`, `/summarization`, `/translation`: an encoder-decoder's text
//! tasks in the Hugging Face Inference API's shape: `{"inputs": "..." | ["...", ...],
//! "parameters": {generation options, transformers' names}}` answers
//! `[{"generated_text" | "summary_text" | "translation_text": "..."}, ...]`, one object per
//! input. An input over the model's limit is a 413 unless `"truncate": true`.

use super::{ApiJson, AppState, Texts};
use crate::error::ApiError;
use crate::seq2seq::JobInput;
use axum::extract::State;
use axum::Json;
use girder::generate::seq2seq::DecoderPrompt;
use girder::generate::Overrides;
use girder::pipelines::text2text_generation::{self as t2t, Options};
use girder::pipelines::Task;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    pub inputs: Texts,
    #[serde(default)]
    pub parameters: Parameters,
    /// Cut inputs over the model's limit instead of refusing them.
    #[serde(default)]
    pub truncate: bool,
}

/// Generation options (transformers' names) and the task's.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Parameters {
    #[serde(flatten)]
    pub generation: Overrides,
    /// Put before each input instead of the task's prefix.
    #[serde(default)]
    pub prefix: Option<String>,
    /// translation: the `task_specific_params` entry, e.g. `translation_en_to_de`.
    #[serde(default)]
    pub task: Option<String>,
}

pub async fn text2text(
    state: State<Arc<AppState>>,
    request: ApiJson<Request>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    handle(
        state,
        request,
        Task::Text2TextGeneration,
        "/text2text-generation",
    )
    .await
}

pub async fn summarization(
    state: State<Arc<AppState>>,
    request: ApiJson<Request>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    handle(state, request, Task::Summarization, "/summarization").await
}

pub async fn translation(
    state: State<Arc<AppState>>,
    request: ApiJson<Request>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    handle(state, request, Task::Translation, "/translation").await
}

async fn handle(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
    task: Task,
    endpoint: &str,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let engine = state.require_seq2seq(task, endpoint)?;
    let texts = request.inputs.into_vec();
    super::check_count(texts.len(), "inputs", state.max_client_batch_size)?;
    if texts.is_empty() {
        return Err(ApiError::Validation {
            field: "inputs".into(),
            message: "must not be empty".into(),
        });
    }
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(ApiError::Validation {
            field: format!("inputs[{i}]"),
            message: "must not be an empty string".into(),
        });
    }
    let options = Options {
        generation: request.parameters.generation,
        task_name: request.parameters.task,
        prefix: request.parameters.prefix,
    };
    let model = engine.model().clone();
    let truncate = request.truncate;
    let prepared = tokio::task::spawn_blocking(move || {
        let prepared = t2t::prepare(&model, task, &texts, 0, &options)?;
        let start = model.decoder_start_token_id()?;
        Ok((prepared, start, model.text_tokenizer().max_length()))
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
    .map_err(|e: girder::Error| ApiError::from_library(e, "inputs"))?;
    let (prepared, start, max) = prepared;
    if !truncate {
        if let Some(i) = prepared.encodings.iter().position(|e| e.truncated) {
            return Err(ApiError::InputTooLong {
                field: format!("inputs[{i}]"),
                tokens: None,
                max,
            });
        }
    }
    let ids: Vec<Vec<u32>> = prepared.encodings.iter().map(|e| e.ids.clone()).collect();
    let prompts = ids
        .iter()
        .map(|_| DecoderPrompt {
            tokens: vec![start],
            timestamps: None,
        })
        .collect();
    let generated = engine
        .run(
            JobInput::Tokens(ids),
            prompts,
            prepared.config.clone(),
            prepared.seed,
        )
        .await?;
    let outputs = t2t::outputs(engine.model(), &prepared, generated, 0)
        .map_err(|e| ApiError::from_library(e, "inputs"))?;
    Ok(Json(
        outputs
            .iter()
            .map(|o| serde_json::to_value(o).unwrap_or_default())
            .collect(),
    ))
}

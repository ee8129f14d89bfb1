//! `POST /v1/completions`: OpenAI's (legacy) completions API. `prompt` is a string, or an
//! array of one; the fields and the answer are those of [`super::openai`].

use super::openai::{generate, invalid, max_prompt_tokens, Api, Request};
use super::{ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::response::Response;
use std::sync::Arc;

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Response, ApiError> {
    let generator = state.require_generator("/v1/completions")?;
    let prompt = match request.prompt.clone() {
        None => return Err(invalid("prompt", "is required")),
        Some(Texts::One(p)) => p,
        Some(Texts::Many(mut ps)) if ps.len() == 1 => ps.remove(0),
        Some(Texts::Many(ps)) => {
            return Err(invalid(
                "prompt",
                &format!(
                    "{} prompts given; send one prompt per request (requests are batched together)",
                    ps.len()
                ),
            ))
        }
    };
    if prompt.is_empty() {
        return Err(invalid("prompt", "must not be an empty string"));
    }
    let model = generator.model().clone();
    let max_prompt = max_prompt_tokens(generator);
    let ids =
        tokio::task::spawn_blocking(move || model.encode_prompt_within(&prompt, 0, max_prompt))
            .await
            .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
            .map_err(|e| ApiError::from_library(e, "prompt"))?;
    generate(&state, generator, &request, Api::Completions, ids, "prompt").await
}

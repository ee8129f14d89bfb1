//! `POST /v1/chat/completions`: OpenAI's chat API. The messages are rendered with the
//! model's chat template (ready for the assistant's reply) and continued; the reply is
//! `choices[0].message.content`, or streamed as `chat.completion.chunk`s ending in
//! `data: [DONE]`. The fields are those of [`super::openai`]; without `max_tokens` the reply
//! runs until eos or a full context.

use super::openai::{generate, max_prompt_tokens, Api, Request};
use super::{ApiJson, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::response::Response;
use std::sync::Arc;

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Response, ApiError> {
    let generator = state.require_generator("/v1/chat/completions")?;
    // Before the template runs: a request asking for tools is refused for the tools.
    request.refuse_unsupported_fields()?;
    let Some(messages) = &request.messages else {
        return Err(ApiError::Validation {
            field: "messages".into(),
            message: "is required".into(),
        });
    };
    if messages.is_empty() {
        return Err(ApiError::Validation {
            field: "messages".into(),
            message: "must not be empty".into(),
        });
    }
    let messages = messages
        .iter()
        .enumerate()
        .map(|(i, m)| m.to_message(i))
        .collect::<Result<Vec<_>, _>>()?;
    let model = generator.model().clone();
    let max_prompt = max_prompt_tokens(generator);
    let ids = tokio::task::spawn_blocking(move || {
        model.encode_chat_messages_within(&messages, max_prompt)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("the chat template failed: {e}")))?
    .map_err(|e| match e {
        // No template, or the template refused the conversation (raise_exception).
        girder::Error::InvalidOption { reason, .. } => ApiError::Validation {
            field: "messages".into(),
            message: reason,
        },
        other => ApiError::Validation {
            field: "messages".into(),
            message: other.to_string(),
        },
    })?;
    generate(&state, generator, &request, Api::Chat, ids, "messages").await
}

//! `POST /v1/chat/completions`: OpenAI's chat API. The messages are rendered with the
//! model's chat template (ready for the assistant's reply) and continued; the reply is
//! `choices[0].message.content`, or streamed as `chat.completion.chunk`s ending in
//! `data: [DONE]`. The sampling fields are those of [`super::completions`]; without
//! `max_tokens` the reply runs until eos or a full context.

use super::completions::{generate, Api, Request};
use super::{ApiJson, AppState};
use crate::error::ApiError;
use axum::extract::State;
use axum::response::Response;
use girder::generate::chat::Message;
use serde::Deserialize;
use std::sync::Arc;

/// One message: `content` is a string, or an array of `{"type": "text", "text"}` parts.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: Content,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    pub r#type: String,
    #[serde(default)]
    pub text: Option<String>,
}

impl ChatMessage {
    /// The message as the template sees it; `index` names it in errors.
    fn to_message(&self, index: usize) -> Result<Message, ApiError> {
        let content = match &self.content {
            Content::Text(text) => text.clone(),
            Content::Parts(parts) => {
                let mut text = String::new();
                for (p, part) in parts.iter().enumerate() {
                    match (part.r#type.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ApiError::Validation {
                                field: format!("messages[{index}].content[{p}]"),
                                message: format!(
                                    "only text parts (`{{\"type\": \"text\", \"text\": ...}}`) are supported, not `{}`",
                                    part.r#type
                                ),
                            })
                        }
                    }
                }
                text
            }
        };
        Ok(Message::new(self.role.clone(), content))
    }
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Response, ApiError> {
    let generator = state.require_generator("/v1/chat/completions")?;
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
    let ids = tokio::task::spawn_blocking(move || model.encode_chat_messages(&messages))
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

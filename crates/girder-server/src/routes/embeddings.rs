//! `POST /v1/embeddings`: OpenAI's embeddings API.
//!
//! `input` is a string or an array of strings (token arrays are not accepted);
//! `encoding_format` is `float` (default) or `base64` (little-endian f32, what the official
//! client asks for by default). `truncate` is girder's extension.

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use girder::pipelines::Task;
use girder::pipelines::{TaskOptions, TaskOutput};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub input: Texts,
    /// Echoed by OpenAI; any name is accepted here (the server runs one model).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub encoding_format: EncodingFormat,
    /// Must equal the model's size when given (no Matryoshka truncation).
    #[serde(default)]
    pub dimensions: Option<usize>,
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Default, Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Debug, Serialize)]
pub struct Embedding {
    pub object: &'static str,
    pub index: usize,
    pub embedding: Vector,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

#[derive(Debug, Serialize)]
pub struct Response {
    pub object: &'static str,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: Usage,
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Json<Response>, ApiError> {
    let encoder = state.require(Task::Embeddings, "/v1/embeddings")?;
    let (texts, encodings) = encode(encoder, request.input, request.truncate, "input").await?;
    let prompt_tokens = encodings.iter().map(|e| e.len()).sum();
    let items = encoder
        .batcher
        .call(
            TaskOptions::Embeddings(Default::default()),
            texts,
            encodings,
        )
        .await?;
    let mut data = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let TaskOutput::Embeddings(out) = item else {
            return Err(ApiError::Internal(
                "the engine returned no embedding".into(),
            ));
        };
        if let Some(d) = request.dimensions {
            if d != out.embedding.len() {
                return Err(ApiError::Validation {
                    field: "dimensions".into(),
                    message: format!(
                        "this model's embeddings have {} dimensions, not {d}",
                        out.embedding.len()
                    ),
                });
            }
        }
        let embedding = match request.encoding_format {
            EncodingFormat::Float => Vector::Float(out.embedding),
            EncodingFormat::Base64 => {
                let bytes: Vec<u8> = out.embedding.iter().flat_map(|x| x.to_le_bytes()).collect();
                Vector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
            }
        };
        data.push(Embedding {
            object: "embedding",
            index,
            embedding,
        });
    }
    Ok(Json(Response {
        object: "list",
        data,
        model: request.model.unwrap_or_else(|| state.model_ref.clone()),
        usage: Usage {
            prompt_tokens,
            total_tokens: prompt_tokens,
        },
    }))
}

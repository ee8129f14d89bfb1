//! The HTTP routes, one file per endpoint, and what they share: the server's state, the
//! JSON extractor whose rejections become [`ApiError`]s, and tokenization of inputs.

pub mod embed;
pub mod embeddings;
pub mod fill_mask;
pub mod health;
pub mod info;
pub mod metrics;
pub mod ner;
pub mod predict;
pub mod tokenize;

use crate::batcher::Batcher;
use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use girder::pipelines::{Model, Task};
use girder::tokenize::{Encoded, TextTokenizer};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// What every handler sees.
pub struct AppState {
    pub model: Arc<Model>,
    /// The model reference the server was started with (`--model`).
    pub model_ref: String,
    pub task: Task,
    pub batcher: Batcher,
    /// The model's tokenizer, cutting inputs to the limit (requests with `"truncate": true`).
    pub truncating: TextTokenizer,
    /// The same tokenizer, refusing inputs over the limit with their token count.
    pub refusing: TextTokenizer,
    pub max_batch_tokens: usize,
    pub max_queue: usize,
    /// Set once shutdown starts: `/health` then answers 503.
    pub shutting_down: AtomicBool,
}

impl AppState {
    /// Fails with 400 unless this server runs `task`.
    pub fn require(&self, task: Task, endpoint: &str) -> Result<(), ApiError> {
        if self.task == task {
            Ok(())
        } else {
            Err(ApiError::TaskMismatch {
                endpoint: format!("{endpoint} ({})", task.name()),
                served: self.task.name().to_string(),
            })
        }
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

/// `axum::Json`, with rejections (syntax 400, types 422, size 413, content type 415) in the
/// server's error shape.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = axum::extract::rejection::JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(ApiJson(value))
    }
}

/// A string or an array of strings (`input` / `inputs`).
#[derive(Debug, Clone)]
pub enum Texts {
    One(String),
    Many(Vec<String>),
}

impl Texts {
    pub fn is_single(&self) -> bool {
        matches!(self, Texts::One(_))
    }

    pub fn into_vec(self) -> Vec<String> {
        match self {
            Texts::One(t) => vec![t],
            Texts::Many(ts) => ts,
        }
    }
}

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextsVisitor;
        impl<'de> Visitor<'de> for TextsVisitor {
            type Value = Texts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Texts, E> {
                Ok(Texts::One(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Texts, E> {
                Ok(Texts::One(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts, A::Error> {
                let mut texts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
                while let Some(t) = seq.next_element::<String>()? {
                    texts.push(t);
                }
                Ok(Texts::Many(texts))
            }
        }
        deserializer.deserialize_any(TextsVisitor)
    }
}

/// Checks `texts` (named `field` in errors) and tokenizes them off the async threads:
/// an empty list or an empty string is a 422, an input over the limit a 413 unless
/// `truncate`. Returns the texts with their encodings.
pub async fn encode(
    state: &Arc<AppState>,
    texts: Texts,
    truncate: bool,
    field: &'static str,
) -> Result<(Vec<String>, Vec<Encoded>), ApiError> {
    let single = texts.is_single();
    let texts = texts.into_vec();
    if texts.is_empty() {
        return Err(ApiError::Validation {
            field: field.into(),
            message: "must not be empty".into(),
        });
    }
    let name = |i: usize| {
        if single {
            field.to_string()
        } else {
            format!("{field}[{i}]")
        }
    };
    if let Some(i) = texts.iter().position(|t| t.is_empty()) {
        return Err(ApiError::Validation {
            field: name(i),
            message: "must not be an empty string".into(),
        });
    }
    let state = state.clone();
    let job = tokio::task::spawn_blocking(move || {
        let tokenizer = if truncate {
            &state.truncating
        } else {
            &state.refusing
        };
        let encodings = texts
            .iter()
            .enumerate()
            .map(|(i, t)| tokenizer.encode(t, i))
            .collect::<girder::Result<Vec<_>>>();
        (texts, encodings)
    });
    let (texts, encodings) = job
        .await
        .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?;
    match encodings {
        Ok(encodings) => Ok((texts, encodings)),
        Err(girder::Error::InputTooLong { index, tokens, max }) => Err(ApiError::InputTooLong {
            field: name(index),
            tokens: Some(tokens),
            max,
        }),
        Err(err) => Err(ApiError::from_library(err, field)),
    }
}

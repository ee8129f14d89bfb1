//! The HTTP routes, one file per endpoint, and what they share: the server's state, the
//! routes of each task of the library's task table ([`task_routes`]), the JSON extractor
//! whose rejections become [`ApiError`]s, and tokenization of inputs. What the two OpenAI
//! generation endpoints share is [`openai`].

pub mod chat_completions;
pub mod completions;
pub mod embed;
pub mod embeddings;
pub mod fill_mask;
pub mod health;
pub mod info;
pub mod metrics;
pub mod ner;
pub mod openai;
pub mod predict;
pub mod text2text;
pub mod tokenize;
pub mod transcriptions;

use crate::batcher::Batcher;
use crate::error::ApiError;
use crate::generation::Generator;
use crate::seq2seq::Seq2SeqEngine;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::routing::{post, MethodRouter};
use girder::pipelines::{Model, Task};
use girder::tokenize::{Encoded, TextTokenizer};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The largest audio upload `/v1/audio/transcriptions` takes (OpenAI's limit, 25 MB).
pub const MAX_AUDIO_BYTES: usize = 25 * 1024 * 1024;

/// The endpoints of `task`. Every task's endpoints are mounted, whatever the server runs:
/// one of another task answers 400 with the task it needs and the task served.
pub fn task_routes(task: Task) -> Vec<(&'static str, MethodRouter<Arc<AppState>>)> {
    match task {
        Task::Embeddings => vec![
            ("/v1/embeddings", post(embeddings::handler)),
            ("/embed", post(embed::handler)),
        ],
        Task::TextClassification => vec![("/predict", post(predict::handler))],
        Task::TokenClassification => vec![("/ner", post(ner::handler))],
        Task::FillMask => vec![("/fill-mask", post(fill_mask::handler))],
        Task::TextGeneration => vec![
            ("/v1/completions", post(completions::handler)),
            ("/v1/chat/completions", post(chat_completions::handler)),
        ],
        Task::Text2TextGeneration => vec![("/text2text-generation", post(text2text::text2text))],
        Task::Summarization => vec![("/summarization", post(text2text::summarization))],
        Task::Translation => vec![("/translation", post(text2text::translation))],
        Task::AutomaticSpeechRecognition => vec![(
            "/v1/audio/transcriptions",
            post(transcriptions::handler).layer(DefaultBodyLimit::max(MAX_AUDIO_BYTES)),
        )],
    }
}

/// What every handler sees. Exactly one of `encoder`, `generator` and `seq2seq` is set.
pub struct AppState {
    /// The model reference the server was started with (`--model`).
    pub model_ref: String,
    pub task: Task,
    /// The encoder pipelines and their batcher, when the model is an encoder.
    pub encoder: Option<EncoderState>,
    /// The continuous-batching engine, when the model generates.
    pub generator: Option<Generator>,
    /// The encoder-decoder engine, when the model is an encoder-decoder.
    pub seq2seq: Option<Seq2SeqEngine>,
    /// What `/info` reports, fixed at start.
    pub info: info::Info,
    /// Set once shutdown starts: `/health` then answers 503, new work 503.
    pub shutting_down: AtomicBool,
    /// The requests in flight, and the cut at the end of the grace period.
    pub drain: Arc<crate::guard::Drain>,
    /// Inputs one request may hold at most (`--max-client-batch-size`).
    pub max_client_batch_size: usize,
}

/// An encoder model with its batcher.
pub struct EncoderState {
    pub model: Arc<Model>,
    pub batcher: Batcher,
    /// The model's tokenizer, cutting inputs to the limit (requests with `"truncate": true`).
    pub truncating: Arc<TextTokenizer>,
    /// The same tokenizer, refusing inputs over the limit with their token count.
    pub refusing: Arc<TextTokenizer>,
    /// Inputs one request may hold at most (`--max-client-batch-size`).
    pub max_inputs: usize,
}

impl AppState {
    /// The encoder, or 400 unless this server runs `task`.
    pub fn require(&self, task: Task, endpoint: &str) -> Result<&EncoderState, ApiError> {
        match &self.encoder {
            Some(encoder) if self.task == task => Ok(encoder),
            _ => Err(self.mismatch(task, endpoint)),
        }
    }

    /// The generation engine, or 400 when this server runs an encoder.
    pub fn require_generator(&self, endpoint: &str) -> Result<&Generator, ApiError> {
        self.generator
            .as_ref()
            .ok_or_else(|| self.mismatch(Task::TextGeneration, endpoint))
    }

    /// The encoder-decoder engine, or 400 unless its model serves `task` (a text
    /// encoder-decoder serves text2text-generation, summarization and translation alike).
    pub fn require_seq2seq(&self, task: Task, endpoint: &str) -> Result<&Seq2SeqEngine, ApiError> {
        match &self.seq2seq {
            Some(engine) => {
                let resolved = engine.model().model().resolved();
                task.check(
                    girder::Kind::EncoderDecoder,
                    resolved.head,
                    resolved.class_name,
                )
                .map_err(|_| self.mismatch(task, endpoint))?;
                Ok(engine)
            }
            None => Err(self.mismatch(task, endpoint)),
        }
    }

    fn mismatch(&self, task: Task, endpoint: &str) -> ApiError {
        ApiError::TaskMismatch {
            endpoint: format!("{endpoint} ({})", task.name()),
            served: self.task.name().to_string(),
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

/// 413 when a request holds more than `max` inputs (`--max-client-batch-size`).
pub fn check_count(count: usize, field: &str, max: usize) -> Result<(), ApiError> {
    if count > max {
        return Err(ApiError::TooManyInputs {
            field: field.into(),
            count,
            max,
        });
    }
    Ok(())
}

/// Checks `texts` (named `field` in errors) and tokenizes them off the async threads:
/// an empty list or an empty string is a 422, an input over the limit a 413 unless
/// `truncate`. Returns the texts with their encodings.
pub async fn encode(
    encoder: &EncoderState,
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
    check_count(texts.len(), field, encoder.max_inputs)?;
    let tokenizer = if truncate {
        encoder.truncating.clone()
    } else {
        encoder.refusing.clone()
    };
    let job = tokio::task::spawn_blocking(move || {
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
            tokens,
            max,
        }),
        Err(err) => Err(ApiError::from_library(err, field)),
    }
}

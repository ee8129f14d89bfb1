//! The server's one error type and its mapping to HTTP statuses.
//!
//! Every handler returns [`ApiError`]; this file is the only place that decides a status,
//! an error `type` and a `code` (as TEI's `router/src/lib.rs` does). The body has OpenAI's
//! shape: `{"error": {"message", "type", "code"}}`.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Seconds a client is told to wait after a 429 (`Retry-After`).
pub const RETRY_AFTER_S: u64 = 1;

/// Everything a request can fail with.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    /// The body is not JSON, or not JSON of the expected shape (400 / 422 / 413 / 415).
    Body { status: StatusCode, message: String },
    /// A field has a value the server cannot honour (422), e.g. an empty input.
    Validation { field: String, message: String },
    /// An input is longer than the model accepts and the request did not ask to truncate (413).
    InputTooLong {
        field: String,
        tokens: Option<usize>,
        max: usize,
    },
    /// More inputs in one request than `--max-client-batch-size` (413).
    TooManyInputs {
        field: String,
        count: usize,
        max: usize,
    },
    /// The API key is missing or wrong (401, with `WWW-Authenticate: Bearer`).
    Unauthorized(String),
    /// The endpoint needs another task than the one this server runs (400).
    TaskMismatch { endpoint: String, served: String },
    /// The queue is full (429, with `Retry-After`).
    Overloaded { max_queue: usize },
    /// The server is shutting down or its model thread is gone (503).
    Unavailable(String),
    /// The library refused an input or an option (422).
    BadInput(String),
    /// The model failed or panicked (500).
    Internal(String),
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    r#type: &'a str,
    code: &'a str,
}

impl ApiError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::Body { status, .. } => *status,
            ApiError::Validation { .. } | ApiError::BadInput(_) => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::InputTooLong { .. } | ApiError::TooManyInputs { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::TaskMismatch { .. } => StatusCode::BAD_REQUEST,
            ApiError::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and a stable machine-readable `code`.
    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::Body { status, .. } => match *status {
                StatusCode::PAYLOAD_TOO_LARGE => ("invalid_request_error", "body_too_large"),
                StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                    ("invalid_request_error", "unsupported_media_type")
                }
                StatusCode::UNPROCESSABLE_ENTITY => ("invalid_request_error", "invalid_field"),
                _ => ("invalid_request_error", "invalid_json"),
            },
            ApiError::Validation { .. } => ("invalid_request_error", "invalid_field"),
            ApiError::InputTooLong { .. } => ("invalid_request_error", "input_too_long"),
            ApiError::TooManyInputs { .. } => ("invalid_request_error", "too_many_inputs"),
            ApiError::Unauthorized(_) => ("invalid_request_error", "invalid_api_key"),
            ApiError::TaskMismatch { .. } => ("invalid_request_error", "task_mismatch"),
            ApiError::Overloaded { .. } => ("overloaded_error", "queue_full"),
            ApiError::Unavailable(_) => ("server_error", "unavailable"),
            ApiError::BadInput(_) => ("invalid_request_error", "invalid_input"),
            ApiError::Internal(_) => ("server_error", "internal_error"),
        }
    }

    /// The human-readable message.
    pub fn message(&self) -> String {
        match self {
            ApiError::Body { message, .. } => message.clone(),
            ApiError::Validation { field, message } => format!("`{field}`: {message}"),
            ApiError::InputTooLong { field, tokens, max } => match tokens {
                Some(tokens) => format!(
                    "`{field}` has {tokens} tokens, more than the model's limit of {max}: shorten it or send \"truncate\": true"
                ),
                None => format!(
                    "`{field}` has more tokens than the model's limit of {max}: shorten it or send \"truncate\": true"
                ),
            },
            ApiError::TooManyInputs { field, count, max } => format!(
                "`{field}` has {count} inputs, more than this server takes in one request ({max}, --max-client-batch-size): split it"
            ),
            ApiError::TaskMismatch { endpoint, served } => {
                format!("{endpoint} is not served: this server runs {served}")
            }
            ApiError::Overloaded { max_queue } => format!(
                "the queue is full ({max_queue} requests waiting): retry after {RETRY_AFTER_S} s"
            ),
            ApiError::Unavailable(m)
            | ApiError::BadInput(m)
            | ApiError::Internal(m)
            | ApiError::Unauthorized(m) => m.clone(),
        }
    }

    /// Maps a library error met while running `field`'s texts.
    pub fn from_library(err: girder::Error, field: &str) -> ApiError {
        use girder::Error;
        match err {
            Error::InputTooLong { index, tokens, max } => ApiError::InputTooLong {
                field: format!("{field}[{index}]"),
                tokens,
                max,
            },
            Error::EmptyInput => ApiError::Validation {
                field: field.into(),
                message: "must not be empty".into(),
            },
            Error::BadInput { index, reason } => ApiError::Validation {
                field: format!("{field}[{index}]"),
                message: reason,
            },
            Error::Tokenize { index, reason } => ApiError::Validation {
                field: format!("{field}[{index}]"),
                message: format!("tokenization failed: {reason}"),
            },
            Error::InvalidOption { option, reason } => ApiError::Validation {
                field: option,
                message: reason,
            },
            Error::TaskMismatch {
                model,
                task,
                reason,
            } => ApiError::BadInput(format!("{model} cannot run {task}: {reason}")),
            Error::BadAudio { file, reason } => ApiError::Validation {
                field: field.into(),
                message: format!("{}: cannot read audio: {reason}", file.display()),
            },
            Error::Unsupported { what } => ApiError::BadInput(format!("{what} is not supported")),
            other => ApiError::Internal(other.to_string()),
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        ApiError::Body {
            status: rejection.status(),
            message: rejection.body_text(),
        }
    }
}

impl ApiError {
    /// The JSON body: `{"error": {"message", "type", "code"}}`.
    pub fn body(&self) -> serde_json::Value {
        let (r#type, code) = self.kind();
        let message = self.message();
        serde_json::to_value(Body {
            error: Detail {
                message: &message,
                r#type,
                code,
            },
        })
        .unwrap_or_default()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut response = (status, axum::Json(self.body())).into_response();
        match self {
            ApiError::Overloaded { .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
            }
            ApiError::Unauthorized(_) => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn library_errors_map_to_statuses() {
        let too_long = girder::Error::InputTooLong {
            index: 2,
            tokens: Some(600),
            max: 512,
        };
        let e = ApiError::from_library(too_long, "input");
        assert_eq!(e.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert!(e.message().contains("input[2]"), "{}", e.message());
        let empty = ApiError::from_library(girder::Error::EmptyInput, "inputs");
        assert_eq!(empty.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let overloaded = ApiError::Overloaded { max_queue: 4 }.into_response();
        assert_eq!(overloaded.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(overloaded.headers().contains_key(header::RETRY_AFTER));
    }
}

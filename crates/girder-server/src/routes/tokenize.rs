//! `POST /tokenize`: text-embeddings-inference's tokenize API: `{"inputs", "truncate"}` → one
//! list of tokens per input, each `{id, text, special, start, stop}` (character offsets into
//! the input). Tokenization only: the model thread is not involved.

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use axum::extract::State;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

#[derive(Debug, Deserialize)]
pub struct Request {
    pub inputs: Texts,
    #[serde(default)]
    pub truncate: bool,
}

#[derive(Debug, Serialize)]
pub struct Token {
    pub id: u32,
    pub text: String,
    pub special: bool,
    pub start: Option<usize>,
    pub stop: Option<usize>,
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    ApiJson(request): ApiJson<Request>,
) -> Result<Json<Vec<Vec<Token>>>, ApiError> {
    let (_, encodings) = encode(&state, request.inputs, request.truncate, "inputs").await?;
    Ok(Json(
        encodings
            .into_iter()
            .map(|enc| {
                (0..enc.ids.len())
                    .map(|i| {
                        let special = enc.special_tokens_mask.get(i).is_some_and(|&s| s == 1);
                        let span = (!special).then(|| enc.offsets.get(i).copied()).flatten();
                        Token {
                            id: enc.ids[i],
                            text: enc.tokens.get(i).cloned().unwrap_or_default(),
                            special,
                            start: span.map(|s| s.0),
                            stop: span.map(|s| s.1),
                        }
                    })
                    .collect()
            })
            .collect(),
    ))
}

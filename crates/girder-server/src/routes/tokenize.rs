//! `POST /tokenize`: text-embeddings-inference's tokenize API: `{"inputs", "truncate"}` → one
//! list of tokens per input, each `{id, text, special, start, stop}` (character offsets into
//! the input). Tokenization only: the model thread is not involved. A generating model's
//! tokenizer adds what `tokenizer(prompt)` adds and never truncates (`truncate` is ignored).

use super::{encode, ApiJson, AppState, Texts};
use crate::error::ApiError;
use crate::generation::Generator;
use axum::extract::State;
use axum::Json;
use girder::tokenize::{encode_within, Keep, Within};
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
    if let Some(generator) = &state.generator {
        let count = match &request.inputs {
            Texts::One(_) => 1,
            Texts::Many(texts) => texts.len(),
        };
        super::check_count(count, "inputs", state.max_client_batch_size)?;
        return tokenize_prompts(generator, request.inputs).await.map(Json);
    }
    let encoder = state
        .encoder
        .as_ref()
        .ok_or_else(|| ApiError::Internal("the server runs no model".into()))?;
    let (_, encodings) = encode(encoder, request.inputs, request.truncate, "inputs").await?;
    let added = encoder.refusing.inner().get_added_vocabulary();
    Ok(Json(
        encodings
            .into_iter()
            .map(|enc| {
                (0..enc.ids.len())
                    .map(|i| {
                        let text = enc.tokens.get(i).cloned().unwrap_or_default();
                        let special = enc.special_tokens_mask.get(i).is_some_and(|&s| s == 1)
                            || added.is_special_token(&text);
                        let span = (!special).then(|| enc.offsets.get(i).copied()).flatten();
                        Token {
                            id: enc.ids[i],
                            text,
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

/// The tokens of each prompt, with the generating model's tokenizer.
async fn tokenize_prompts(
    generator: &Generator,
    inputs: Texts,
) -> Result<Vec<Vec<Token>>, ApiError> {
    let single = inputs.is_single();
    let texts = inputs.into_vec();
    if texts.is_empty() {
        return Err(ApiError::Validation {
            field: "inputs".into(),
            message: "must not be empty".into(),
        });
    }
    let model = generator.model().clone();
    // A text is tokenized only as far as the context: past it, it could not be a prompt.
    let context = model.model().context_length();
    tokio::task::spawn_blocking(move || {
        let tokenizer = model.text_tokenizer().counting();
        let field = |i: usize| {
            if single {
                "inputs".to_string()
            } else {
                format!("inputs[{i}]")
            }
        };
        texts
            .iter()
            .enumerate()
            .map(|(i, text)| {
                let within = encode_within(tokenizer, text, true, context, Keep::Start);
                let encoding = match within {
                    Ok(Within::Whole(encoding)) => Ok(encoding),
                    Ok(Within::Over { .. }) => Err(ApiError::InputTooLong {
                        field: field(i),
                        tokens: None,
                        max: context,
                    }),
                    Err(e) => Err(ApiError::Validation {
                        field: field(i),
                        message: format!("tokenization failed: {e}"),
                    }),
                }?;
                let added = tokenizer.get_added_vocabulary();
                Ok((0..encoding.len())
                    .map(|t| {
                        // The mask marks what the post-processor added; a special token
                        // written in the text (`<|im_end|>`) is special too.
                        let special = encoding.get_special_tokens_mask()[t] == 1
                            || added.is_special_token(&encoding.get_tokens()[t]);
                        let span = (!special).then(|| encoding.get_offsets()[t]);
                        Token {
                            id: encoding.get_ids()[t],
                            text: encoding.get_tokens()[t].clone(),
                            special,
                            start: span.map(|s| s.0),
                            stop: span.map(|s| s.1),
                        }
                    })
                    .collect())
            })
            .collect()
    })
    .await
    .map_err(|e| ApiError::Internal(format!("tokenization failed: {e}")))?
}

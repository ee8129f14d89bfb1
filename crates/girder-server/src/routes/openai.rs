//! What OpenAI's completions API (`/v1/completions`, [`super::completions`]) and chat API
//! (`/v1/chat/completions`, [`super::chat_completions`]) share: the request and its sampling
//! fields, the prompt's length check, and the answer, whole or streamed as server-sent events
//! ending in `data: [DONE]`.
//!
//! Fields: `prompt` (a string, or an array of one), `max_tokens` (default 16, as OpenAI),
//! `temperature` (default 1.0, as OpenAI; 0 is greedy), `top_p`, `stop` (a string or an
//! array), `seed` (default: random), `stream`, `stream_options.include_usage`, `n` (1 only).
//! girder's extensions: `top_k`, `ignore_eos` (generate exactly `max_tokens`) and `truncate`
//! (keep the end of a prompt that does not fit instead of answering 413). Any other field is
//! refused with 422 naming it, unless it asks for nothing (`user`, a penalty of 0, a text
//! `response_format`): an answer never silently ignores what a request asked for.

use super::{AppState, Texts};
use crate::error::ApiError;
use crate::generation::{Generator, Update};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use girder::generate::chat::Message;
use girder::generate::{FinishReason, Generation, Options, PromptIds, Sampling};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A completion or chat completion request: `prompt` for one, `messages` for the other.
#[derive(Debug, Deserialize)]
pub struct Request {
    #[serde(default)]
    pub prompt: Option<Texts>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    /// Echoed; any name is accepted (the server runs one model).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<usize>,
    /// The chat API's newer name for `max_tokens`.
    #[serde(default)]
    pub max_completion_tokens: Option<usize>,
    #[serde(default)]
    pub temperature: Option<f32>,
    #[serde(default)]
    pub top_p: Option<f32>,
    #[serde(default)]
    pub top_k: Option<usize>,
    #[serde(default)]
    pub stop: Option<Texts>,
    #[serde(default)]
    pub seed: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub n: Option<usize>,
    /// Not supported: refused when asked for.
    #[serde(default)]
    pub logprobs: Option<Value>,
    #[serde(default)]
    pub ignore_eos: bool,
    #[serde(default)]
    pub truncate: bool,
    /// Every other field: refused by [`Request::options`] unless it changes nothing.
    #[serde(flatten)]
    pub other: std::collections::BTreeMap<String, Value>,
}

/// Fields OpenAI's clients send that do not change an answer: accepted and not used.
const INERT_FIELDS: &[&str] = &["user", "metadata", "store", "service_tier"];

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
    pub fn to_message(&self, index: usize) -> Result<Message, ApiError> {
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

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// A last chunk with `usage` and no choices, before `[DONE]`.
    #[serde(default)]
    pub include_usage: bool,
}

/// Which OpenAI API answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Completions,
    Chat,
}

impl Request {
    /// The generation options the request asks for; `default_max_tokens` applies when it
    /// names none.
    pub fn options(&self, default_max_tokens: usize) -> Result<Options, ApiError> {
        self.refuse_unsupported_fields()?;
        if self.n.is_some_and(|n| n != 1) {
            return Err(invalid("n", "only 1 choice per request is supported"));
        }
        if self
            .logprobs
            .as_ref()
            .is_some_and(|v| !(v.is_null() || *v == json!(false)))
        {
            return Err(invalid("logprobs", "log probabilities are not supported"));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens);
        if max_tokens == Some(0) {
            return Err(invalid("max_tokens", "must be at least 1"));
        }
        let default = Sampling::default();
        let options = Options {
            max_new_tokens: Some(max_tokens.unwrap_or(default_max_tokens).max(1)),
            eos_token_ids: self.ignore_eos.then(Vec::new),
            stop: self.stop.clone().map(Texts::into_vec).unwrap_or_default(),
            sampling: Sampling {
                temperature: self.temperature.unwrap_or(1.0),
                top_k: self.top_k.unwrap_or(default.top_k),
                top_p: self.top_p.unwrap_or(default.top_p),
                seed: self.seed.unwrap_or_else(random_seed),
                ..default
            },
        };
        options.validate().map_err(|err| match err {
            girder::Error::InvalidOption { option, reason } => ApiError::Validation {
                field: if option == "max_new_tokens" {
                    "max_tokens".into()
                } else {
                    option
                },
                message: reason,
            },
            other => ApiError::from_library(other, "stop"),
        })?;
        Ok(options)
    }
}

impl Request {
    /// A field girder does not implement would be ignored silently (a JSON schema, tools,
    /// penalties): it is refused by name, unless its value asks for nothing (a penalty of 0,
    /// `response_format` text, `tool_choice` none, an empty list or null).
    pub fn refuse_unsupported_fields(&self) -> Result<(), ApiError> {
        for (field, value) in &self.other {
            let asks_nothing = match (field.as_str(), value) {
                (_, Value::Null) => true,
                (name, _) if INERT_FIELDS.contains(&name) => true,
                ("presence_penalty" | "frequency_penalty", v) => v.as_f64() == Some(0.0),
                ("response_format", v) => v.get("type") == Some(&json!("text")),
                ("tool_choice", v) => v == &json!("none"),
                ("tools" | "functions" | "logit_bias", v) => {
                    v.as_array().is_some_and(Vec::is_empty)
                        || v.as_object().is_some_and(|o| o.is_empty())
                }
                ("parallel_tool_calls", _) => self
                    .other
                    .get("tools")
                    .is_none_or(|t| t.is_null() || t.as_array().is_some_and(Vec::is_empty)),
                _ => false,
            };
            if !asks_nothing {
                let known = matches!(
                    field.as_str(),
                    "presence_penalty"
                        | "frequency_penalty"
                        | "response_format"
                        | "tools"
                        | "tool_choice"
                        | "functions"
                        | "function_call"
                        | "parallel_tool_calls"
                        | "logit_bias"
                        | "top_logprobs"
                        | "best_of"
                        | "echo"
                        | "suffix"
                        | "modalities"
                        | "audio"
                        | "prediction"
                        | "reasoning_effort"
                        | "web_search_options"
                );
                let message = if known {
                    "is not supported by girder: the answer would ignore it".to_string()
                } else {
                    "is not a field of the completions or chat completions API girder serves"
                        .to_string()
                };
                return Err(ApiError::Validation {
                    field: field.clone(),
                    message,
                });
            }
        }
        Ok(())
    }
}

pub(crate) fn invalid(field: &str, message: &str) -> ApiError {
    ApiError::Validation {
        field: field.into(),
        message: message.into(),
    }
}

/// A seed for requests that name none (OpenAI's sampling is not reproducible without one).
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    hasher.finish()
}

/// The longest prompt: the context less one position, which the first new token takes.
pub fn max_prompt_tokens(generator: &Generator) -> usize {
    generator
        .model()
        .model()
        .context_length()
        .saturating_sub(1)
        .max(1)
}

/// Checks the prompt's length, submits it and answers in the shape of `api`.
pub async fn generate(
    state: &AppState,
    generator: &Generator,
    request: &Request,
    api: Api,
    prompt: PromptIds,
    field: &str,
) -> Result<Response, ApiError> {
    let context = generator.model().model().context_length();
    let max_prompt = max_prompt_tokens(generator);
    let mut ids = prompt.ids;
    if ids.len() > max_prompt {
        if !request.truncate {
            return Err(ApiError::InputTooLong {
                field: field.into(),
                tokens: prompt.whole.then_some(ids.len()),
                max: max_prompt,
            });
        }
        ids.drain(..ids.len() - max_prompt);
    }
    let default_max_tokens = match api {
        Api::Completions => 16,
        // A chat reply runs until eos or a full context unless limited.
        Api::Chat => context - ids.len(),
    };
    let options = request.options(default_max_tokens)?;
    let mut updates = generator.submit(ids, options)?;
    let answer = Answer {
        api,
        id: next_id(api),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        model: request
            .model
            .clone()
            .unwrap_or_else(|| state.model_ref.clone()),
    };
    if request.stream {
        let include_usage = request
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
        return Ok(stream(answer, updates, include_usage).into_response());
    }
    loop {
        match updates.recv().await {
            Some(Update::Text(_)) => {}
            Some(Update::Done(generation)) => {
                return Ok(Json(answer.whole(&generation)).into_response())
            }
            Some(Update::Failed(err)) => return Err(err),
            None => {
                return Err(ApiError::Internal(
                    "the generation thread stopped before answering".into(),
                ))
            }
        }
    }
}

fn next_id(api: Api) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let prefix = match api {
        Api::Completions => "cmpl",
        Api::Chat => "chatcmpl",
    };
    format!("{prefix}-girder-{}-{n}", std::process::id())
}

/// What every response and chunk of one request repeats.
struct Answer {
    api: Api,
    id: String,
    created: u64,
    model: String,
}

/// OpenAI's `finish_reason`: an eos token and a stop string both are `stop`.
fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Eos | FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
        "total_tokens": g.prompt_tokens + g.completion_tokens,
    })
}

impl Answer {
    fn whole(&self, g: &Generation) -> Value {
        let choice = match self.api {
            Api::Completions => json!({
                "index": 0, "text": g.text, "logprobs": null,
                "finish_reason": finish_reason(g.finish_reason),
            }),
            Api::Chat => json!({
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": null,
                "finish_reason": finish_reason(g.finish_reason),
            }),
        };
        json!({
            "id": self.id,
            "object": match self.api { Api::Completions => "text_completion", Api::Chat => "chat.completion" },
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "usage": usage(g),
        })
    }

    /// One streamed chunk: `text` (None: the role announcement of a chat), and the finish
    /// reason on the last one.
    fn chunk(&self, text: Option<&str>, finish: Option<&str>) -> Value {
        let choice = match self.api {
            Api::Completions => json!({
                "index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish,
            }),
            Api::Chat => {
                let delta = match (text, finish) {
                    (None, None) => json!({"role": "assistant", "content": ""}),
                    (Some(t), _) if !t.is_empty() => json!({"content": t}),
                    _ => json!({}),
                };
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        self.wrap(vec![choice], None)
    }

    fn wrap(&self, choices: Vec<Value>, usage: Option<Value>) -> Value {
        let mut chunk = json!({
            "id": self.id,
            "object": match self.api { Api::Completions => "text_completion", Api::Chat => "chat.completion.chunk" },
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(usage) = usage {
            chunk["usage"] = usage;
        }
        chunk
    }
}

fn data(value: &Value) -> Event {
    Event::default().data(value.to_string())
}

struct Streaming {
    answer: Answer,
    updates: tokio::sync::mpsc::UnboundedReceiver<Update>,
    pending: VecDeque<Event>,
    include_usage: bool,
    done: bool,
}

/// Server-sent events: a chunk per piece of text, a last chunk with the finish reason,
/// optionally the usage, then `data: [DONE]`. An error after the stream started comes as
/// `data: {"error": ...}` (what the openai client raises). Dropping the stream (the client
/// hung up) drops the receiver, which stops the sequence.
fn stream(
    answer: Answer,
    updates: tokio::sync::mpsc::UnboundedReceiver<Update>,
    include_usage: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, Infallible>>> {
    let mut pending = VecDeque::new();
    if answer.api == Api::Chat {
        pending.push_back(data(&answer.chunk(None, None)));
    }
    let state = Streaming {
        answer,
        updates,
        pending,
        include_usage,
        done: false,
    };
    Sse::new(futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(event) = st.pending.pop_front() {
                return Some((Ok(event), st));
            }
            if st.done {
                return None;
            }
            match st.updates.recv().await {
                Some(Update::Text(text)) => {
                    let chunk = st.answer.chunk(Some(&text), None);
                    st.pending.push_back(data(&chunk));
                }
                Some(Update::Done(g)) => {
                    let last = st.answer.chunk(None, Some(finish_reason(g.finish_reason)));
                    st.pending.push_back(data(&last));
                    if st.include_usage {
                        let chunk = st.answer.wrap(vec![], Some(usage(&g)));
                        st.pending.push_back(data(&chunk));
                    }
                    st.pending.push_back(Event::default().data("[DONE]"));
                    st.done = true;
                }
                Some(Update::Failed(err)) => {
                    st.pending.push_back(data(&err.body()));
                    st.pending.push_back(Event::default().data("[DONE]"));
                    st.done = true;
                }
                None => {
                    let err =
                        ApiError::Internal("the generation thread stopped before answering".into());
                    st.pending.push_back(data(&err.body()));
                    st.pending.push_back(Event::default().data("[DONE]"));
                    st.done = true;
                }
            }
        }
    }))
}

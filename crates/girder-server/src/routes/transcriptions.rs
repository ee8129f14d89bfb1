//! `POST /v1/audio/transcriptions`: OpenAI's transcription API over a Whisper model, a
//! `multipart/form-data` body with `file` (WAV, FLAC, MP3, Ogg Vorbis) and optionally `model`
//! (any name: the server runs one model), `language`, `prompt`, `response_format` (`json`,
//! `text`, `srt`, `vtt`, `verbose_json`), `temperature` (0: beam search as the pipeline does;
//! above: sampling) and `timestamp_granularities[]` (`segment`). Any other field is a 422
//! naming it.
//!
//! The upload is decoded and cut into 30 s windows off the async threads, a group of windows
//! at a time, and each group joins the encoder-decoder engine's continuous batch with other
//! requests' work: a long file holds a few windows of features in memory, not its whole
//! length.

use super::AppState;
use crate::error::ApiError;
use crate::seq2seq::JobInput;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use girder::generate::Overrides;
use girder::pipelines::automatic_speech_recognition::{
    AudioInput, Chunk, Options, Transcriber, WindowReader, WindowTokens,
};
use girder::pipelines::Task;
use serde_json::json;
use std::sync::Arc;

/// Windows decoded, and sent to the engine, together.
const WINDOWS_PER_JOB: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
    Srt,
    Vtt,
    VerboseJson,
}

fn invalid(field: &str, message: impl Into<String>) -> ApiError {
    ApiError::Validation {
        field: field.into(),
        message: message.into(),
    }
}

pub async fn handler(
    State(state): State<Arc<AppState>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let engine =
        state.require_seq2seq(Task::AutomaticSpeechRecognition, "/v1/audio/transcriptions")?;
    let mut multipart = multipart.map_err(|e| ApiError::Body {
        status: e.status(),
        message: format!(
            "{}: the body must be multipart/form-data with a `file` field",
            e.body_text()
        ),
    })?;
    let mut file: Option<(String, Vec<u8>)> = None;
    let mut options = Options::default();
    let mut format = Format::Json;
    let mut temperature = 0.0f32;
    while let Some(field) = multipart.next_field().await.map_err(|e| ApiError::Body {
        status: e.status(),
        message: e.body_text(),
    })? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" {
            let filename = field.file_name().unwrap_or("upload").to_string();
            let bytes = field.bytes().await.map_err(|e| ApiError::Body {
                status: e.status(),
                message: e.body_text(),
            })?;
            file = Some((filename, bytes.to_vec()));
            continue;
        }
        let value = field.text().await.map_err(|e| ApiError::Body {
            status: e.status(),
            message: e.body_text(),
        })?;
        match name.as_str() {
            "model" => {}
            "language" => options.language = Some(value),
            "prompt" => options.prompt = Some(value).filter(|p| !p.trim().is_empty()),
            "response_format" => {
                format = match value.as_str() {
                    "json" => Format::Json,
                    "text" => Format::Text,
                    "srt" => Format::Srt,
                    "vtt" => Format::Vtt,
                    "verbose_json" => Format::VerboseJson,
                    other => {
                        return Err(invalid(
                            "response_format",
                            format!("`{other}`; one of json, text, srt, vtt, verbose_json"),
                        ))
                    }
                }
            }
            "temperature" => {
                temperature = value
                    .parse()
                    .ok()
                    .filter(|t: &f32| t.is_finite() && (0.0..=1.0).contains(t))
                    .ok_or_else(|| invalid("temperature", format!("`{value}`: a number in [0, 1]")))?;
            }
            "timestamp_granularities[]" | "timestamp_granularities" => {
                if value != "segment" {
                    return Err(invalid(
                        &name,
                        format!("`{value}`: girder returns segment timestamps only"),
                    ));
                }
            }
            other => {
                return Err(invalid(
                    other,
                    "is not a field of the transcription API girder serves (file, model, language, prompt, response_format, temperature, timestamp_granularities[])",
                ))
            }
        }
    }
    let Some((filename, bytes)) = file else {
        return Err(invalid("file", "is required"));
    };
    if bytes.is_empty() {
        return Err(invalid("file", "is empty"));
    }
    options.return_timestamps = matches!(format, Format::Srt | Format::Vtt | Format::VerboseJson);
    if temperature > 0.0 {
        options.generation = Overrides {
            do_sample: Some(true),
            temperature: Some(temperature),
            num_beams: Some(1),
            ..Overrides::default()
        };
    }
    let model = engine.model().clone();
    let options = Arc::new(options);
    // Opening the file checks it is audio before any window is computed.
    let opened = {
        let (model, options) = (model.clone(), options.clone());
        tokio::task::spawn_blocking(
            move || -> girder::Result<(WindowReader, girder::generate::GenerationConfig, u64)> {
                let transcriber = Transcriber::new(&model, &options)?;
                let reader = transcriber.open(&AudioInput::Bytes {
                    name: filename,
                    bytes,
                })?;
                Ok((reader, transcriber.config().clone(), transcriber.seed()))
            },
        )
        .await
        .map_err(|e| ApiError::Internal(format!("audio decoding failed: {e}")))?
        .map_err(|e| ApiError::from_library(e, "file"))?
    };
    let (mut reader, config, seed) = opened;
    let mut decoded: Vec<WindowTokens> = Vec::new();
    loop {
        // The next group of windows, and their first generation.
        let (shared_model, shared_options) = (model.clone(), options.clone());
        let step = tokio::task::spawn_blocking(move || {
            let transcriber = Transcriber::new(&shared_model, &shared_options)?;
            let windows = reader.next_windows(WINDOWS_PER_JOB)?;
            if windows.is_empty() {
                return Ok((reader, None));
            }
            let decoding = transcriber.start(&windows)?;
            let job = transcriber.next_job(&decoding)?;
            Ok((reader, Some((decoding, job))))
        })
        .await
        .map_err(|e| ApiError::Internal(format!("audio decoding failed: {e}")))?
        .map_err(|e: girder::Error| ApiError::from_library(e, "file"))?;
        let (back, work) = step;
        reader = back;
        let Some((mut decoding, mut job)) = work else {
            break;
        };
        // Generations until every window is done (more than one when a window's segments
        // close before its end, with timestamps).
        while let Some(current) = job {
            let outs = engine
                .run(
                    JobInput::Features(current.features.clone()),
                    current.prompts.clone(),
                    config.clone(),
                    seed,
                )
                .await?;
            decoding.absorb(&current, outs.into_iter().map(|o| o.token_ids).collect());
            let (shared_model, shared_options) = (model.clone(), options.clone());
            let (back, next) = tokio::task::spawn_blocking(move || {
                let transcriber = Transcriber::new(&shared_model, &shared_options)?;
                let next = transcriber.next_job(&decoding)?;
                Ok((decoding, next))
            })
            .await
            .map_err(|e| ApiError::Internal(format!("audio decoding failed: {e}")))?
            .map_err(|e: girder::Error| ApiError::from_library(e, "file"))?;
            decoding = back;
            job = next;
        }
        decoded.extend(decoding.finish());
    }
    let transcriber =
        Transcriber::new(&model, &options).map_err(|e| ApiError::from_library(e, "file"))?;
    let output = transcriber
        .output(&decoded, reader.seconds())
        .map_err(|e| ApiError::from_library(e, "file"))?;
    let text = output.text.trim().to_string();
    let chunks = output.chunks.unwrap_or_default();
    Ok(match format {
        Format::Json => Json(json!({ "text": text })).into_response(),
        Format::Text => text_response(text, "text/plain; charset=utf-8"),
        Format::Srt => text_response(subtitles(&chunks, output.audio_seconds, false), "application/x-subrip"),
        Format::Vtt => text_response(subtitles(&chunks, output.audio_seconds, true), "text/vtt"),
        Format::VerboseJson => Json(json!({
            "task": if options.task.as_deref() == Some("translate") { "translate" } else { "transcribe" },
            "language": options.language.clone().unwrap_or_else(|| "english".into()),
            "duration": output.audio_seconds,
            "text": text,
            "segments": chunks.iter().enumerate().map(|(i, c)| json!({
                "id": i,
                "start": c.timestamp.0.unwrap_or(0.0),
                "end": c.timestamp.1.unwrap_or(output.audio_seconds),
                "text": c.text,
            })).collect::<Vec<_>>(),
        }))
        .into_response(),
    })
}

fn text_response(body: String, content_type: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// SubRip (`srt`) or WebVTT (`vtt`) cues of the timed segments; a segment the model left
/// open ends with the audio.
fn subtitles(chunks: &[Chunk], audio_seconds: f64, vtt: bool) -> String {
    let time = |seconds: f64| {
        let ms = (seconds.max(0.0) * 1000.0).round() as u64;
        let (h, m, s, ms) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60, ms % 1000);
        if vtt {
            format!("{h:02}:{m:02}:{s:02}.{ms:03}")
        } else {
            format!("{h:02}:{m:02}:{s:02},{ms:03}")
        }
    };
    let mut out = String::new();
    if vtt {
        out.push_str("WEBVTT\n\n");
    }
    for (i, c) in chunks.iter().enumerate() {
        let (start, end) = (
            c.timestamp.0.unwrap_or(0.0),
            c.timestamp.1.unwrap_or(audio_seconds),
        );
        if !vtt {
            out.push_str(&format!("{}\n", i + 1));
        }
        out.push_str(&format!(
            "{} --> {}\n{}\n\n",
            time(start),
            time(end),
            c.text.trim()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtitles_in_both_formats() {
        let chunks = vec![
            Chunk {
                timestamp: (Some(0.0), Some(1.5)),
                text: " Hello.".into(),
            },
            Chunk {
                timestamp: (Some(61.25), None),
                text: " Bye.".into(),
            },
        ];
        assert_eq!(
            subtitles(&chunks, 62.0, false),
            "1\n00:00:00,000 --> 00:00:01,500\nHello.\n\n2\n00:01:01,250 --> 00:01:02,000\nBye.\n\n"
        );
        assert!(subtitles(&chunks, 62.0, true)
            .starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello."));
    }
}

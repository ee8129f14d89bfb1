//! The encoder-decoder endpoints over loopback with a real HTTP client, on the tiny fixtures:
//! `/translation`, `/summarization` and `/text2text-generation` answer what the library's
//! pipelines answer, concurrent requests batched continuously; `/v1/audio/transcriptions`
//! (OpenAI's multipart shape) transcribes WAV uploads in every response format; bad uploads
//! and fields are 422s naming them; a text model refuses the audio endpoint.

mod common;

use common::*;
use girder::generate::Seq2SeqGenerator;
use girder::pipelines::automatic_speech_recognition as asr;
use girder::pipelines::text2text_generation as t2t;
use girder::pipelines::Task;
use girder::LoadOptions;
use girder_server::{start, Running};
use serde_json::{json, Value};

fn generator(name: &str) -> Seq2SeqGenerator {
    girder::load(
        &fixture(name).display().to_string(),
        &LoadOptions::default(),
    )
    .unwrap_or_else(|e| panic!("cannot load fixture {name}: {e}"))
    .into_encoder_decoder()
    .unwrap()
}

async fn serve_seq2seq(name: &str) -> Running {
    start(generator(name).into(), options(name))
        .await
        .unwrap_or_else(|e| panic!("cannot start a server on {name}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn text_tasks_answer_as_the_pipelines() {
    let server = serve_seq2seq("t5-seq2seq").await;
    let library = generator("t5-seq2seq");
    let texts = [
        "the small dog sees a red ball in the park .",
        "a quiet mouse finds our key under the bridge .",
        "my teacher reads that old book .",
    ];
    for (path, task) in [
        ("/translation", Task::Translation),
        ("/summarization", Task::Summarization),
        ("/text2text-generation", Task::Text2TextGeneration),
    ] {
        let expected = t2t::run(&library, task, &texts, &t2t::Options::default()).unwrap();
        // One request per text, all at once: they share the engine's steps.
        let answers = futures_util::future::join_all(
            texts
                .iter()
                .map(|t| post(&server, path, json!({"inputs": t}))),
        )
        .await;
        let key = t2t::text_key(task);
        for ((status, body), want) in answers.iter().zip(&expected) {
            assert_eq!(*status, 200, "{path}: {body}");
            assert_eq!(body[0][key], want.text, "{path}");
        }
    }
    // A batch request with parameters; transformers' names.
    let (status, body) = post(
        &server,
        "/translation",
        json!({"inputs": texts, "parameters": {"num_beams": 1, "max_new_tokens": 3}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 3);
    assert_eq!(body[0]["finish_reason"], "length");
    // Bad fields are named.
    let (status, body) = post(&server, "/translation", json!({"inputs": []})).await;
    assert_eq!(status, 422, "{body}");
    let (status, body) = post(
        &server,
        "/summarization",
        json!({"inputs": "x", "parameters": {"num_beamz": 2}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("num_beamz"), "{body}");
    let (status, body) = post(
        &server,
        "/summarization",
        json!({"inputs": "x", "parameters": {"num_beams": 0}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(body.to_string().contains("num_beams"), "{body}");
    // A beam count that would hold the engine for minutes is refused at once.
    let (status, body) = post(
        &server,
        "/translation",
        json!({"inputs": "x", "parameters": {"num_beams": 100000}}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    assert!(error_message(&body).contains("at most 64"), "{body}");
    // A text model has no audio endpoint.
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![0u8; 10]).file_name("a.wav"),
    );
    let response = reqwest::Client::new()
        .post(url(&server, "/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    server.shutdown().await.unwrap();
}

async fn transcribe(server: &Running, fields: &[(&str, &str)], file: &str) -> (u16, String) {
    let bytes = std::fs::read(fixture("whisper-asr").join(file)).unwrap();
    let mut form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(file.to_string()),
    );
    for (name, value) in fields {
        form = form.text(name.to_string(), value.to_string());
    }
    let response = reqwest::Client::new()
        .post(url(server, "/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transcriptions_in_openai_shape() {
    let server = serve_seq2seq("whisper-asr").await;
    let health = reqwest::get(url(&server, "/health")).await.unwrap();
    assert_eq!(health.status(), 200, "{}", health.text().await.unwrap());
    // A JSON body where a multipart form belongs: a 400 in the API's error shape.
    let (status, body) = post(
        &server,
        "/v1/audio/transcriptions",
        json!({"file": "speech.wav"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        error_message(&body).contains("multipart/form-data"),
        "{body}"
    );
    let library = generator("whisper-asr");
    let file = "espeak-hello-cat.wav";
    let expected = asr::run(
        &library,
        &[asr::file(fixture("whisper-asr").join(file))],
        &asr::Options::default(),
    )
    .unwrap();
    let (status, body) = transcribe(&server, &[("model", "whisper-1")], file).await;
    assert_eq!(status, 200, "{body}");
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["text"], expected[0].text.trim());
    let (status, text) = transcribe(&server, &[("response_format", "text")], file).await;
    assert_eq!((status, text.as_str()), (200, expected[0].text.trim()));
    let (status, srt) = transcribe(&server, &[("response_format", "srt")], file).await;
    assert_eq!(status, 200, "{srt}");
    assert!(srt.starts_with("1\n00:00:00,"), "{srt}");
    assert!(srt.contains(" --> "), "{srt}");
    let (status, vtt) = transcribe(&server, &[("response_format", "vtt")], file).await;
    assert!(status == 200 && vtt.starts_with("WEBVTT"), "{vtt}");
    let (status, verbose) = transcribe(&server, &[("response_format", "verbose_json")], file).await;
    assert_eq!(status, 200, "{verbose}");
    let verbose: Value = serde_json::from_str(&verbose).unwrap();
    assert!(
        !verbose["segments"].as_array().unwrap().is_empty(),
        "{verbose}"
    );
    assert!(verbose["duration"].as_f64().unwrap() > 2.0);
    // Concurrent uploads share the engine.
    let all = futures_util::future::join_all(
        [
            "alsa-front-center.wav",
            "espeak-hello-cat.wav",
            "silence.wav",
        ]
        .iter()
        .map(|f| transcribe(&server, &[], f)),
    )
    .await;
    assert!(all.iter().all(|(s, _)| *s == 200), "{all:?}");
    // Errors name the field.
    let (status, body) = transcribe(&server, &[("response_format", "xml")], file).await;
    assert!(status == 422 && body.contains("response_format"), "{body}");
    let (status, body) = transcribe(&server, &[("voice", "x")], file).await;
    assert!(status == 422 && body.contains("voice"), "{body}");
    let (status, body) = transcribe(&server, &[("language", "fr")], file).await;
    assert!(status == 422 && body.contains("English-only"), "{body}");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"definitely not audio".to_vec()).file_name("notes.mp3"),
    );
    let response = reqwest::Client::new()
        .post(url(&server, "/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    let body = response.text().await.unwrap();
    assert!(body.contains("notes.mp3"), "{body}");
    let form = reqwest::multipart::Form::new().text("model", "whisper-1");
    let response = reqwest::Client::new()
        .post(url(&server, "/v1/audio/transcriptions"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    // The server still answers.
    let (status, _) = transcribe(&server, &[], file).await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

//! Mutated JSON request bodies never make the server answer 5xx or drop a connection: every
//! answer is a 2xx or a 4xx with a JSON body (a stream's events are JSON too), and the server
//! still answers `/health` afterwards. Three servers on tiny fixtures: embeddings
//! (`/v1/embeddings`, `/embed`, `/tokenize`), text classification (`/predict`, `/tokenize`)
//! and text generation (`/v1/completions`, `/v1/chat/completions`).
//!
//! The fuzzer is `crates/girder/tests/common/fuzz.rs` (settings there); an input is the
//! endpoint's path, a newline, and the body, so a saved crash replays as it was sent.

mod common;
#[path = "../../girder/tests/common/fuzz.rs"]
mod fuzzing;

use common::*;
use girder::generate::TextGenerator;
use girder::pipelines::Task;
use girder_server::{start, Running};
use serde_json::{json, Value};
use std::sync::Arc;

/// Bodies as clients send them, by endpoint; mutations start from these.
fn seeds() -> Vec<(&'static str, Value)> {
    vec![
        (
            "/v1/embeddings",
            json!({"input": ["A man is eating food.", "hi"], "model": "m", "encoding_format": "float", "truncate": true}),
        ),
        (
            "/v1/embeddings",
            json!({"input": "one sentence", "encoding_format": "base64"}),
        ),
        (
            "/embed",
            json!({"inputs": ["a", "b c"], "normalize": true, "truncate": false}),
        ),
        (
            "/tokenize",
            json!({"inputs": "Hello world", "truncate": true}),
        ),
        (
            "/predict",
            json!({"inputs": ["great", "bad"], "raw_scores": false, "truncate": true}),
        ),
        (
            "/v1/completions",
            json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0.7, "top_p": 0.9, "top_k": 5, "seed": 1, "stop": ["\n"], "stream": false, "n": 1}),
        ),
        (
            "/v1/completions",
            json!({"prompt": ["a", "b"], "max_tokens": 2, "stream": true, "stream_options": {"include_usage": true}}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "max_tokens": 3}),
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}], "max_completion_tokens": 2, "stream": true}),
        ),
    ]
}

/// The server that serves `path`.
fn server_for<'a>(path: &str, servers: &'a [(Task, Running)]) -> &'a Running {
    let task = match path {
        "/v1/embeddings" | "/embed" => Task::Embeddings,
        "/predict" => Task::TextClassification,
        "/tokenize" => Task::TextClassification,
        _ => Task::TextGeneration,
    };
    &servers.iter().find(|(t, _)| *t == task).unwrap().1
}

/// Sends one input; `Ok` names the status and error code, `Err` is a crash: a 5xx, a body
/// that is not JSON, a dropped connection or a time-out.
async fn send(client: &reqwest::Client, url: String, body: Vec<u8>) -> fuzzing::Outcome {
    let response = match client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
    {
        Ok(response) => response,
        Err(e) => panic!("no answer: {e}"),
    };
    let status = response.status().as_u16();
    let streamed = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => panic!("status {status}, then the body broke off: {e}"),
    };
    assert!(status < 500, "status {status}: {text}");
    if streamed {
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data != "[DONE]" {
                let event: Value = serde_json::from_str(data)
                    .unwrap_or_else(|e| panic!("a stream event is not JSON ({e}): {data}"));
                if let Some(code) = event["error"]["code"].as_str() {
                    return Err(format!("stream error {code}"));
                }
            }
        }
        return Ok(());
    }
    let value: Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}, the body is not JSON ({e}): {text}"));
    if status >= 400 {
        let code = value["error"]["code"].as_str().unwrap_or_else(|| {
            panic!("status {status} without error.code: {value}");
        });
        let message = value["error"]["message"].as_str().unwrap_or_default();
        return Err(format!("{status} {code}: {message}"));
    }
    Ok(())
}

#[test]
fn fuzz_request_bodies() {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap(),
    );
    let servers: Arc<Vec<(Task, Running)>> = Arc::new(runtime.block_on(async {
        let embeddings = serve("bert-st-mean").await;
        let classification = serve("bert-seqcls").await;
        let generator = TextGenerator::load(&fixture("qwen2-causal-lm").display().to_string())
            .unwrap_or_else(|e| panic!("cannot load qwen2-causal-lm: {e}"));
        let generation = start(generator.into(), options("qwen2-causal-lm"))
            .await
            .unwrap_or_else(|e| panic!("cannot start a server on qwen2-causal-lm: {e}"));
        vec![
            (Task::Embeddings, embeddings),
            (Task::TextClassification, classification),
            (Task::TextGeneration, generation),
        ]
    }));
    let seeds = seeds();
    let client = reqwest::Client::builder()
        .timeout(fuzzing::time_limit())
        .build()
        .unwrap();
    let (rt, servers_for_exec) = (runtime.clone(), servers.clone());
    let report = fuzzing::run(
        "http-bodies",
        fuzzing::iterations(fuzzing::DEFAULT_ITERS),
        &[],
        |rng, _| {
            let (path, body) = rng.pick(&seeds);
            let body = if rng.one_in(8) {
                let mut bytes = serde_json::to_vec(body).unwrap();
                fuzzing::mutate_bytes(rng, &mut bytes, &[b"{", b"}", b"\"", b"null"]);
                bytes
            } else {
                fuzzing::mutate_json_text(
                    rng,
                    body,
                    &[
                        "input",
                        "max_tokens",
                        "n",
                        "stop",
                        "messages",
                        "content",
                        "top",
                        "temperature",
                        "seed",
                        "stream",
                    ],
                )
            };
            let mut input = format!("{path}\n").into_bytes();
            input.extend(body);
            input
        },
        move |input| {
            let split = input
                .iter()
                .position(|&b| b == b'\n')
                .unwrap_or(input.len());
            let path = String::from_utf8_lossy(&input[..split]).into_owned();
            let body = input.get(split + 1..).unwrap_or_default().to_vec();
            let server = server_for(&path, &servers_for_exec);
            rt.block_on(send(&client, url(server, &path), body))
        },
    );
    report.print();
    runtime.block_on(async {
        for (task, server) in servers.iter() {
            let health = reqwest::get(url(server, "/health")).await.unwrap();
            assert_eq!(health.status(), 200, "{task:?} server after fuzzing");
        }
    });
    report.assert_no_crash();
    let servers = Arc::try_unwrap(servers).unwrap_or_else(|_| panic!("servers still shared"));
    runtime.block_on(async {
        for (_, server) in servers {
            server.shutdown().await.unwrap();
        }
    });
}

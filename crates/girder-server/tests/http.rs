//! Every endpoint over loopback with a real HTTP client, on the tiny fixtures.

mod common;

use base64::Engine as _;
use common::*;
use girder::pipelines::{embeddings, Task};
use serde_json::json;

fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_endpoints_match_the_library() {
    let server = serve("bert-st-mean").await;
    let texts = ["A man is eating food.", "A cat sleeps.", "Hello world"];
    let expected = embeddings::run(&load("bert-st-mean"), &texts, &Default::default()).unwrap();

    let (status, body) = post(
        &server,
        "/v1/embeddings",
        json!({"input": texts, "model": "m"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["model"], "m");
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 3);
    for (i, (row, want)) in data.iter().zip(&expected).enumerate() {
        assert_eq!(row["index"], i);
        assert_eq!(row["object"], "embedding");
        let got = floats(&row["embedding"]);
        assert_eq!(got.len(), want.embedding.len());
        for (a, b) in got.iter().zip(&want.embedding) {
            assert!((a - b).abs() < 1e-5, "row {i}: {a} vs {b}");
        }
    }
    let tokens = body["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 6);
    assert_eq!(body["usage"]["total_tokens"].as_u64().unwrap(), tokens);

    // A single string, base64: little-endian f32 of the same vector.
    let (status, body) = post(
        &server,
        "/v1/embeddings",
        json!({"input": texts[1], "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let b64 = body["data"][0]["embedding"]
        .as_str()
        .expect("a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, expected[1].embedding);

    // TEI's /embed: a list of lists, normalised by default.
    let (status, body) = post(&server, "/embed", json!({"inputs": texts[0]})).await;
    assert_eq!(status, 200, "{body}");
    let rows = body.as_array().unwrap();
    assert_eq!(rows.len(), 1);
    let norm: f32 = floats(&rows[0]).iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
    let (status, body) = post(
        &server,
        "/embed",
        json!({"inputs": texts, "normalize": false}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 3);

    // /tokenize: special tokens marked, offsets on the others.
    let (status, body) = post(&server, "/tokenize", json!({"inputs": "Hello world"})).await;
    assert_eq!(status, 200, "{body}");
    let tokens = body[0].as_array().unwrap();
    assert_eq!(tokens.first().unwrap()["special"], true);
    assert_eq!(tokens.last().unwrap()["special"], true);
    assert_eq!(tokens[1]["special"], false);
    assert_eq!(tokens[1]["start"], 0);

    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_info_and_metrics() {
    let server = serve("bert-st-mean").await;
    let client = reqwest::Client::new();
    let health = client.get(url(&server, "/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let info: serde_json::Value = client
        .get(url(&server, "/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["task"], "embeddings");
    assert_eq!(info["architecture"], "BertModel");
    assert_eq!(info["dtype"], "float32");
    assert!(info["max_input_length"].as_u64().unwrap() > 2);
    assert!(info["tokenizer_source"]
        .as_str()
        .unwrap()
        .ends_with("tokenizer.json"));
    // girder lock's fingerprint; no pre-flight was run by this test's caller.
    let model = load("bert-st-mean");
    assert_eq!(
        info["tokenizer_sha256"],
        girder::check::lock::fingerprint(&model.tokenizer).unwrap()
    );
    assert!(info["preflight"].is_null());

    let (status, _) = post(&server, "/embed", json!({"inputs": "hi"})).await;
    assert_eq!(status, 200);
    let (status, _) = post(&server, "/embed", json!({"inputs": []})).await;
    assert_eq!(status, 422);
    let metrics = client
        .get(url(&server, "/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "girder_requests_total{route=\"/embed\",status=\"200\"}",
        "girder_requests_total{route=\"/embed\",status=\"422\"}",
        "girder_request_duration_seconds_bucket{route=\"/embed\",status=\"200\"",
        "girder_batch_requests_bucket",
        "girder_batch_tokens_bucket",
        "girder_queue_depth",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_the_right_status_and_name_the_field() {
    let mut options = options("bert-st-mean");
    options.max_body_bytes = 4096;
    let server = serve_with("bert-st-mean", options).await;
    let client = reqwest::Client::new();

    // Malformed JSON: 400.
    let response = client
        .post(url(&server, "/v1/embeddings"))
        .header("content-type", "application/json")
        .body("{\"input\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    error_message(&response.json().await.unwrap());

    // No JSON content type: 415.
    let response = client
        .post(url(&server, "/v1/embeddings"))
        .body("{\"input\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 415);

    // Wrong types, missing and empty fields: 422 naming the field.
    for (body, field) in [
        (json!({"input": 5}), "input"),
        (json!({"input": ["a", 3]}), "input"),
        (json!({"model": "m"}), "input"),
        (json!({"input": []}), "input"),
        (json!({"input": ["a", ""]}), "input[1]"),
        (
            json!({"input": "a", "encoding_format": "int8"}),
            "encoding_format",
        ),
        (json!({"input": "a", "dimensions": 3}), "dimensions"),
    ] {
        let (status, answer) = post(&server, "/v1/embeddings", body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        let message = error_message(&answer);
        assert!(
            message.contains(field),
            "{body}: `{message}` does not name {field}"
        );
    }

    // Too long: 413 naming the input, unless truncation is asked for.
    let max = {
        let info: serde_json::Value = client
            .get(url(&server, "/info"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        info["max_input_length"].as_u64().unwrap() as usize
    };
    let long = "word ".repeat(max + 10);
    let (status, answer) = post(&server, "/embed", json!({"inputs": ["ok", long]})).await;
    assert_eq!(status, 413, "{answer}");
    assert!(error_message(&answer).contains("inputs[1]"));
    assert_eq!(answer["error"]["code"], "input_too_long");
    let (status, answer) = post(
        &server,
        "/embed",
        json!({"inputs": ["ok", long], "truncate": true}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");

    // A body over the limit: 413.
    let huge = "x".repeat(8192);
    let (status, answer) = post(&server, "/embed", json!({"inputs": huge})).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "body_too_large");

    // An endpoint of another task: 400.
    let (status, answer) = post(&server, "/predict", json!({"inputs": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "task_mismatch");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_with_retry_after() {
    let mut options = options("bert-st-mean");
    options.max_queue = 1;
    options.max_batch_tokens = 64;
    let server = serve_with("bert-st-mean", options).await;
    let client = reqwest::Client::new();
    let texts: Vec<String> = (0..32)
        .map(|i| format!("sentence number {i} about food and cats"))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..48 {
        let client = client.clone();
        let url = url(&server, "/embed");
        let body = json!({"inputs": texts});
        tasks.push(tokio::spawn(async move {
            let response = client.post(url).json(&body).send().await.unwrap();
            let retry = response.headers().get("retry-after").cloned();
            (response.status().as_u16(), retry)
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for task in tasks {
        match task.await.unwrap() {
            (200, _) => ok += 1,
            (429, retry) => {
                assert!(retry.is_some(), "429 without Retry-After");
                refused += 1;
            }
            (status, _) => panic!("unexpected status {status}"),
        }
    }
    assert!(ok >= 1 && refused >= 1, "{ok} answered, {refused} refused");
    // Still serving.
    let (status, _) = post(&server, "/embed", json!({"inputs": "after"})).await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_ranks_every_label() {
    let server = serve("bert-seqcls").await;
    assert_eq!(server.task, Task::TextClassification);
    let (status, body) = post(&server, "/predict", json!({"inputs": "I love this movie"})).await;
    assert_eq!(status, 200, "{body}");
    let labels = body.as_array().unwrap();
    assert_eq!(labels.len(), 3);
    let scores: Vec<f64> = labels
        .iter()
        .map(|l| l["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!((scores.iter().sum::<f64>() - 1.0).abs() < 1e-4);

    let (status, body) = post(
        &server,
        "/predict",
        json!({"inputs": ["good", "bad"], "raw_scores": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(body[0].as_array().unwrap().len(), 3);

    let (status, _) = post(&server, "/v1/embeddings", json!({"input": "x"})).await;
    assert_eq!(status, 400);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ner_aggregates_as_asked() {
    let server = serve("bert-tokcls").await;
    assert_eq!(server.task, Task::TokenClassification);
    for strategy in ["none", "simple", "FIRST", "average", "max"] {
        let body = json!({"inputs": "John lives in Paris", "aggregation_strategy": strategy, "ignore_labels": []});
        let (status, answer) = post(&server, "/ner", body).await;
        assert_eq!(status, 200, "{strategy}: {answer}");
        let entities = answer.as_array().unwrap();
        assert!(!entities.is_empty(), "{strategy}: no entities");
        let key = if strategy == "none" {
            "entity"
        } else {
            "entity_group"
        };
        assert!(entities[0].get(key).is_some(), "{strategy}: {answer}");
    }
    let (status, answer) = post(&server, "/ner", json!({"inputs": ["a b", "c d"]})).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer.as_array().unwrap().len(), 2);
    let (status, answer) = post(
        &server,
        "/ner",
        json!({"inputs": "x", "aggregation_strategy": "best"}),
    )
    .await;
    assert_eq!(status, 422);
    assert!(error_message(&answer).contains("aggregation_strategy"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fill_mask_predicts_each_mask() {
    let model = load("bert-mlm");
    let mask = model.tokenizer.mask_token().unwrap().to_string();
    drop(model);
    let server = serve("bert-mlm").await;
    assert_eq!(server.task, Task::FillMask);
    let (status, body) = post(
        &server,
        "/fill-mask",
        json!({"inputs": format!("Paris is the {mask} of France.")}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let predictions = body.as_array().unwrap();
    assert_eq!(predictions.len(), 5);
    assert!(predictions[0]["token_str"].is_string());
    assert!(predictions[0]["sequence"].is_string());

    let two = format!("{mask} is the {mask} of France.");
    let (status, body) = post(
        &server,
        "/fill-mask",
        json!({"inputs": [two, format!("a {mask}")], "top_k": 2}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_array().unwrap().len(), 2);
    assert_eq!(body[0].as_array().unwrap().len(), 2, "two masks: {body}");
    assert_eq!(body[0][0].as_array().unwrap().len(), 2, "top_k 2: {body}");

    let (status, answer) = post(
        &server,
        "/fill-mask",
        json!({"inputs": ["a [x]", "no mask here"]}),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(error_message(&answer).contains("inputs[0]"));
    let (status, _) = post(
        &server,
        "/fill-mask",
        json!({"inputs": format!("a {mask}"), "top_k": 0}),
    )
    .await;
    assert_eq!(status, 422);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_the_head_cannot_run_refuses_to_start() {
    let mut options = options("bert-st-mean");
    options.task = Some(Task::FillMask);
    let err = girder_server::start(load("bert-st-mean").into(), options)
        .await
        .err()
        .expect("it started");
    assert!(err.to_string().contains("fill-mask"), "{err}");
    // Any encoder can serve embeddings.
    let server = serve_task("bert-seqcls", Task::Embeddings).await;
    let (status, _) = post(&server, "/embed", json!({"inputs": "x"})).await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_finishes_in_flight_requests_then_stops_listening() {
    let mut options = options("bert-st-mean");
    options.max_client_batch_size = 256;
    let server = serve_with("bert-st-mean", options).await;
    let addr = server.addr;
    let texts: Vec<String> = (0..256)
        .map(|i| format!("text number {i} with a few words"))
        .collect();
    let client = reqwest::Client::new();
    let in_flight = {
        let client = client.clone();
        let url = url(&server, "/embed");
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"inputs": texts}))
                .send()
                .await
        })
    };
    // Let the request reach the server before shutting down.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let stopped = server.shutdown().await.unwrap();
    assert_eq!(
        stopped.cut, 0,
        "in-flight requests did not finish in the grace period"
    );
    let response = in_flight
        .await
        .unwrap()
        .expect("the in-flight request failed");
    assert_eq!(response.status(), 200);
    let rows: serde_json::Value = response.json().await.unwrap();
    assert_eq!(rows.as_array().unwrap().len(), 256);
    assert!(
        reqwest::Client::new()
            .get(format!("http://{addr}/health"))
            .send()
            .await
            .is_err(),
        "still listening after shutdown"
    );
}

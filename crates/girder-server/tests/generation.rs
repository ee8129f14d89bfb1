//! `/v1/completions` and `/v1/chat/completions` over loopback with a real HTTP client, on the
//! tiny causal-LM fixtures: results equal the library's, streaming, continuous batching,
//! every error status, a client that hangs up, and shutdown with a stream in flight.

mod common;

use common::*;
use girder::batch::RaggedBatch;
use girder::generate::{chat::Message, Options, Sampling, TextGenerator};
use girder::layers::KvCache;
use girder::models::{DecoderForward, Logits};
use girder_server::{start, Running, ServeOptions};
use serde_json::{json, Value};
use std::time::Duration;

fn generator(name: &str) -> TextGenerator {
    TextGenerator::load(&fixture(name).display().to_string())
        .unwrap_or_else(|e| panic!("cannot load fixture {name}: {e}"))
}

async fn serve_generator(name: &str, options: ServeOptions) -> Running {
    start(generator(name).into(), options)
        .await
        .unwrap_or_else(|e| panic!("cannot start a server on {name}: {e}"))
}

fn greedy(max_new_tokens: usize) -> Options {
    Options {
        max_new_tokens: Some(max_new_tokens),
        ..Options::default()
    }
}

/// Reads a server-sent event stream to its end; returns the JSON of each `data:` line and
/// whether the last one was `[DONE]`.
async fn read_events(response: reqwest::Response) -> (Vec<Value>, bool) {
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let body = response.text().await.unwrap();
    let data: Vec<&str> = body
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    let done = data.last() == Some(&"[DONE]");
    let events = data
        .iter()
        .filter(|d| **d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap_or_else(|e| panic!("{e}: {d}")))
        .collect();
    (events, done)
}

/// A metric's value in Prometheus text (0 when absent).
async fn metric(server: &Running, name: &str) -> f64 {
    let text = reqwest::get(url(server, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn completions_equal_the_library_while_batched_continuously() {
    let server = serve_generator("llama-causal-lm", options("llama-causal-lm")).await;
    let library = generator("llama-causal-lm");
    let prompts = [
        "Hello world",
        "The quick brown fox",
        "a",
        "Once upon a time there was",
    ];
    // Different lengths, sent together: they join and leave one running batch.
    let lengths = [40, 7, 25, 12];
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for round in 0..2 {
        for (prompt, max_tokens) in prompts.iter().zip(lengths) {
            let client = client.clone();
            let url = url(&server, "/v1/completions");
            let body = json!({
                "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "model": "tiny",
            });
            tasks.push(tokio::spawn(async move {
                let answer: Value = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (round, answer)
            }));
        }
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let (_, answer) = task.await.unwrap();
        let (prompt, max_tokens) = (prompts[i % 4], lengths[i % 4]);
        let expected = &library.generate(&[prompt], &greedy(max_tokens)).unwrap()[0];
        assert_eq!(answer["object"], "text_completion", "{answer}");
        assert_eq!(answer["model"], "tiny");
        let choice = &answer["choices"][0];
        assert_eq!(choice["text"], expected.text.as_str(), "{prompt}: {answer}");
        let reason = if expected.finish_reason == girder::generate::FinishReason::Length {
            "length"
        } else {
            "stop"
        };
        assert_eq!(choice["finish_reason"], reason, "{answer}");
        assert_eq!(answer["usage"]["prompt_tokens"], expected.prompt_tokens);
        assert_eq!(
            answer["usage"]["completion_tokens"],
            expected.completion_tokens
        );
        assert_eq!(
            answer["usage"]["total_tokens"],
            expected.prompt_tokens + expected.completion_tokens
        );
    }

    // Sampling: each sequence keeps its own settings and seed, as the library.
    let sampled = Options {
        max_new_tokens: Some(20),
        sampling: Sampling {
            temperature: 0.9,
            top_p: 0.8,
            top_k: 40,
            seed: 7,
            ..Sampling::default()
        },
        ..Options::default()
    };
    let expected = &library.generate(&["Hello world"], &sampled).unwrap()[0];
    let body = json!({
        "prompt": "Hello world", "max_tokens": 20, "temperature": 0.9, "top_p": 0.8,
        "top_k": 40, "seed": 7,
    });
    let (first, second) = tokio::join!(
        post(&server, "/v1/completions", body.clone()),
        post(&server, "/v1/completions", body)
    );
    assert_eq!(first.1["choices"][0]["text"], expected.text.as_str());
    assert_eq!(second.1["choices"][0]["text"], expected.text.as_str());

    // A stop string: the text ends before it, as the library's.
    let greedy_text = &library.generate(&["Hello world"], &greedy(30)).unwrap()[0].text;
    let stop: String = greedy_text.chars().skip(6).take(2).collect();
    let with_stop = Options {
        stop: vec![stop.clone()],
        ..greedy(30)
    };
    let expected = &library.generate(&["Hello world"], &with_stop).unwrap()[0];
    let (status, answer) = post(
        &server,
        "/v1/completions",
        json!({"prompt": ["Hello world"], "max_tokens": 30, "temperature": 0, "stop": stop}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["choices"][0]["text"], expected.text.as_str());
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");

    // The engine did run several sequences in one step.
    let text = reqwest::get(url(&server, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let single_steps = text
        .lines()
        .find_map(|l| l.strip_prefix("girder_decode_batch_sequences_bucket{le=\"1\"} "))
        .expect("no decode batch histogram");
    let all_steps = text
        .lines()
        .find_map(|l| l.strip_prefix("girder_decode_batch_sequences_count "))
        .unwrap();
    assert!(
        single_steps.parse::<u64>().unwrap() < all_steps.parse::<u64>().unwrap(),
        "every step ran one sequence"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_completions_and_chat_equal_the_whole_answer() {
    let server = serve_generator("qwen2-causal-lm", options("qwen2-causal-lm")).await;
    let library = generator("qwen2-causal-lm");
    let client = reqwest::Client::new();

    // Completions, streamed: the pieces add up to the library's text.
    let expected = &library.generate(&["Hello world"], &greedy(24)).unwrap()[0];
    let response = client
        .post(url(&server, "/v1/completions"))
        .json(
            &json!({"prompt": "Hello world", "max_tokens": 24, "temperature": 0,
                      "stream": true, "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    let (events, done) = read_events(response).await;
    assert!(done, "the stream did not end with [DONE]");
    let text: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, expected.text);
    let last_choice = &events[events.len() - 2]["choices"][0];
    assert!(last_choice["finish_reason"].is_string(), "{last_choice}");
    let usage = &events[events.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"]["completion_tokens"],
        expected.completion_tokens
    );

    // Chat: the template is applied as the library applies it.
    let messages = [Message::new("user", "What is the capital of France?")];
    let ids = library.encode_chat_messages(&messages).unwrap();
    let expected = &library
        .generate_from_ids(std::slice::from_ref(&ids), &greedy(20), &mut |_, _| {})
        .unwrap()[0];
    let body = json!({
        "model": "tiny", "temperature": 0, "max_tokens": 20,
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
    });
    let (status, answer) = post(&server, "/v1/chat/completions", body.clone()).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        answer["choices"][0]["message"]["content"],
        expected.text.as_str()
    );
    assert_eq!(answer["usage"]["prompt_tokens"], ids.len());

    // Content as text parts is the same message.
    let mut parts = body.clone();
    parts["messages"][0]["content"] =
        json!([{"type": "text", "text": "What is the capital of France?"}]);
    let (_, same) = post(&server, "/v1/chat/completions", parts).await;
    assert_eq!(
        same["choices"][0]["message"],
        answer["choices"][0]["message"]
    );

    let mut streamed = body;
    streamed["stream"] = json!(true);
    let response = client
        .post(url(&server, "/v1/chat/completions"))
        .json(&streamed)
        .send()
        .await
        .unwrap();
    let (events, done) = read_events(response).await;
    assert!(done);
    assert_eq!(events[0]["object"], "chat.completion.chunk");
    assert_eq!(events[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, expected.text);
    assert!(events.last().unwrap()["choices"][0]["finish_reason"].is_string());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_generation_requests_get_the_right_status_and_name_the_field() {
    let mut options = options("llama-causal-lm");
    options.max_body_bytes = 4096;
    let server = serve_generator("llama-causal-lm", options).await;
    let client = reqwest::Client::new();

    let response = client
        .post(url(&server, "/v1/completions"))
        .header("content-type", "application/json")
        .body("{\"prompt\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    error_message(&response.json().await.unwrap());

    for (path, body, field) in [
        ("/v1/completions", json!({"max_tokens": 3}), "prompt"),
        ("/v1/completions", json!({"prompt": ""}), "prompt"),
        ("/v1/completions", json!({"prompt": 3}), "prompt"),
        ("/v1/completions", json!({"prompt": ["a", "b"]}), "prompt"),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": "x"}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "max_tokens": 0}),
            "max_tokens",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "temperature": -1}),
            "temperature",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "top_p": 2}),
            "top_p",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "stop": [""]}),
            "stop",
        ),
        ("/v1/completions", json!({"prompt": "a", "n": 2}), "n"),
        (
            "/v1/completions",
            json!({"prompt": "a", "logprobs": 2}),
            "logprobs",
        ),
        ("/v1/chat/completions", json!({"messages": []}), "messages"),
        ("/v1/chat/completions", json!({"prompt": "a"}), "messages"),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            "messages[0].content[0]",
        ),
        // Fields an answer would silently ignore are refused by name.
        (
            "/v1/completions",
            json!({"prompt": "a", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
        (
            "/v1/chat/completions",
            json!({"messages": [{"role": "user", "content": "hi"}],
                   "tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "logit_bias": {"5": 100}}),
            "logit_bias",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "presence_penalty": 0.5}),
            "presence_penalty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "frequency_penalty": 1}),
            "frequency_penalty",
        ),
        (
            "/v1/completions",
            json!({"prompt": "a", "temprature": 0.5}),
            "temprature",
        ),
    ] {
        let (status, answer) = post(&server, path, body.clone()).await;
        assert_eq!(status, 422, "{body} → {answer}");
        let message = error_message(&answer);
        assert!(
            message.contains(field),
            "{body}: `{message}` does not name {field}"
        );
    }
    // Values that ask for nothing are accepted; a temperature too small to divide by is
    // greedy, as vLLM takes it (dividing logits by 1e-45 overflows and sampled token 0).
    let greedy_answer = |body: Value| {
        let server = &server;
        async move {
            let (status, answer) = post(server, "/v1/completions", body.clone()).await;
            assert_eq!(status, 200, "{body} → {answer}");
            answer["choices"][0]["text"].as_str().unwrap().to_string()
        }
    };
    let base = json!({"prompt": "Hello", "max_tokens": 6, "ignore_eos": true, "temperature": 0});
    let reference = greedy_answer(base.clone()).await;
    let mut inert = base.clone();
    for (k, v) in [
        ("presence_penalty", json!(0)),
        ("frequency_penalty", json!(0.0)),
        ("response_format", json!({"type": "text"})),
        ("user", json!("someone")),
        ("tools", json!([])),
        ("logit_bias", json!({})),
    ] {
        inert[k] = v;
    }
    assert_eq!(greedy_answer(inert).await, reference);
    let mut tiny = base.clone();
    tiny["temperature"] = json!(1e-45);
    tiny["seed"] = json!(7);
    assert_eq!(greedy_answer(tiny).await, reference);

    // The llama fixture has no chat template: named, 422.
    let (status, answer) = post(
        &server,
        "/v1/chat/completions",
        json!({"messages": [{"role": "user", "content": "hi"}]}),
    )
    .await;
    assert_eq!(status, 422, "{answer}");
    assert!(error_message(&answer).contains("chat template"), "{answer}");

    // A prompt over the context: 413, unless truncation is asked for.
    let long = "word ".repeat(100);
    let (status, answer) = post(&server, "/v1/completions", json!({"prompt": long})).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "input_too_long");
    assert!(error_message(&answer).contains("prompt"));
    let (status, answer) = post(
        &server,
        "/v1/completions",
        json!({"prompt": long, "truncate": true, "max_tokens": 2, "temperature": 0}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["usage"]["prompt_tokens"], 63);

    // A body over the limit: 413.
    let huge = "x".repeat(8192);
    let (status, answer) = post(&server, "/v1/completions", json!({"prompt": huge})).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"]["code"], "body_too_large");

    // Encoder endpoints on a generating server, and the reverse: 400.
    let (status, answer) = post(&server, "/v1/embeddings", json!({"input": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "task_mismatch");
    let encoder = serve("bert-st-mean").await;
    let (status, answer) = post(&encoder, "/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "task_mismatch");
    encoder.shutdown().await.unwrap();
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_generation_queue_answers_429_with_retry_after() {
    let mut options = options("qwen2-causal-lm");
    options.max_queue = 1;
    options.max_sequences = 1;
    let server = serve_generator("qwen2-causal-lm", options).await;
    let client = reqwest::Client::new();
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let client = client.clone();
        let url = url(&server, "/v1/completions");
        tasks.push(tokio::spawn(async move {
            let body = json!({"prompt": "Hi", "max_tokens": 100, "ignore_eos": true});
            let response = client.post(url).json(&body).send().await.unwrap();
            let retry = response.headers().get("retry-after").cloned();
            (response.status().as_u16(), retry)
        }));
    }
    let (mut ok, mut refused) = (0, 0);
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
    let (status, _) = post(&server, "/v1/completions", json!({"prompt": "after"})).await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

/// A real model that runs `before` ahead of each forward pass (to make it fail or slow it).
struct Hooked<F> {
    inner: Box<dyn DecoderForward>,
    before: F,
}

impl<F: Fn(&RaggedBatch) + Send + Sync> DecoderForward for Hooked<F> {
    fn forward(
        &self,
        batch: &RaggedBatch,
        caches: &mut [&mut KvCache],
        logits: Logits,
    ) -> girder::Result<candle_core::Tensor> {
        (self.before)(batch);
        self.inner.forward(batch, caches, logits)
    }
    fn new_cache(&self, capacity: usize) -> girder::Result<KvCache> {
        self.inner.new_cache(capacity)
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }
    fn input_embeddings(&self) -> &girder::layers::Embedding {
        self.inner.input_embeddings()
    }
}

/// `name`'s generator with `before` run ahead of each forward pass.
fn hooked(name: &str, before: impl Fn(&RaggedBatch) + Send + Sync + 'static) -> TextGenerator {
    generator(name).map_model(|model| model.map_inner(|inner| Box::new(Hooked { inner, before })))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_in_the_model_fails_its_requests_and_the_server_keeps_serving() {
    let plain = generator("qwen2-causal-lm");
    let trigger = *plain.encode_prompt(" boom", 0).unwrap().last().unwrap();
    let calm = "Hello there";
    assert!(!plain.encode_prompt(calm, 0).unwrap().contains(&trigger));
    // The forward pass panics when its batch holds the trigger.
    let g = hooked("qwen2-causal-lm", move |batch| {
        if batch.input_ids.contains(&trigger) {
            panic!("injected failure on token {trigger}");
        }
    });
    let server = start(g.into(), options("qwen2-causal-lm")).await.unwrap();
    let ask =
        |prompt: &str| json!({"model": "m", "prompt": prompt, "max_tokens": 6, "temperature": 0});
    let (status, before) = post(&server, "/v1/completions", ask(calm)).await;
    assert_eq!(status, 200, "{before}");
    let (status, failed) = post(&server, "/v1/completions", ask("It went boom")).await;
    assert_eq!(status, 500, "{failed}");
    let message = error_message(&failed);
    assert_eq!(failed["error"]["type"], "server_error");
    assert!(message.contains("injected failure"), "{message}");
    // A stream that hits the panic ends with an error event, not a hang.
    let response = reqwest::Client::new()
        .post(url(&server, "/v1/completions"))
        .json(&json!({"model": "m", "prompt": "boom again", "max_tokens": 4, "stream": true}))
        .send()
        .await
        .unwrap();
    let body = tokio::time::timeout(Duration::from_secs(30), response.text())
        .await
        .expect("the stream ended")
        .unwrap_or_default();
    assert!(
        body.contains("injected failure") || body.is_empty(),
        "{body}"
    );
    // The engine thread survived: the same request gets the same answer, and health is ok.
    let (status, after) = post(&server, "/v1/completions", ask(calm)).await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["choices"][0]["text"], before["choices"][0]["text"]);
    let health = reqwest::get(url(&server, "/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_stops_its_sequence() {
    // At least 2 ms per forward pass: 250 tokens last half a second whatever the machine, so
    // the client can hang up before the end (the tiny fixture alone answers 250 tokens in
    // under 30 ms). Its own passes are counted: the process-wide metrics also count the
    // other tests' tokens.
    let passes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = passes.clone();
    let g = hooked("qwen2-causal-lm", move |_| {
        std::thread::sleep(Duration::from_millis(2));
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    });
    let passes = move || passes.load(std::sync::atomic::Ordering::SeqCst);
    let server = start(g.into(), options("qwen2-causal-lm")).await.unwrap();
    let cancelled_before = metric(&server, "girder_generations_cancelled_total").await;
    let passes_before = passes();
    let mut response = reqwest::Client::new()
        .post(url(&server, "/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 250, "ignore_eos": true, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().expect("no first chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    drop(response);
    let mut waited = Duration::ZERO;
    while metric(&server, "girder_generations_cancelled_total").await <= cancelled_before {
        assert!(
            waited < Duration::from_secs(10),
            "the sequence was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let ran = passes() - passes_before;
    assert!(ran < 250, "{ran} forward passes: it ran to the end");

    // A client waiting for a whole answer that gives up: its connection closes and the
    // sequence stops too.
    let cancelled_before = metric(&server, "girder_generations_cancelled_total").await;
    let passes_before = passes();
    let waiting = reqwest::Client::new()
        .post(url(&server, "/v1/completions"))
        .json(&json!({"prompt": "Hi", "max_tokens": 250, "ignore_eos": true}))
        .send();
    let gave_up = tokio::time::timeout(Duration::from_millis(30), waiting).await;
    assert!(gave_up.is_err(), "the answer came within 30 ms");
    let mut waited = Duration::ZERO;
    while metric(&server, "girder_generations_cancelled_total").await <= cancelled_before {
        assert!(
            waited < Duration::from_secs(10),
            "the sequence was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        waited += Duration::from_millis(20);
    }
    let ran = passes() - passes_before;
    assert!(ran < 250, "{ran} forward passes: it ran to the end");
    // Still serving.
    let (status, _) = post(&server, "/v1/completions", json!({"prompt": "Hi"})).await;
    assert_eq!(status, 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_stream_in_flight_finish() {
    let server = serve_generator("qwen2-causal-lm", options("qwen2-causal-lm")).await;
    let addr = server.addr;
    let mut response = reqwest::Client::new()
        .post(url(&server, "/v1/completions"))
        .json(
            &json!({"prompt": "Hi", "max_tokens": 200, "ignore_eos": true, "stream": true,
                      "stream_options": {"include_usage": true}}),
        )
        .send()
        .await
        .unwrap();
    let mut body = String::from_utf8(response.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    let shutdown = tokio::spawn(server.shutdown());
    while let Some(chunk) = response.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("\"completion_tokens\":200"), "{body}");
    assert_eq!(
        shutdown.await.unwrap().unwrap().cut,
        0,
        "did not finish in time"
    );
    assert!(
        reqwest::get(format!("http://{addr}/health")).await.is_err(),
        "still listening after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_info_tokenize_and_metrics_of_a_generating_server() {
    let server = serve_generator("qwen2-causal-lm", options("qwen2-causal-lm")).await;
    assert_eq!(server.task.name(), "text-generation");
    let health = reqwest::get(url(&server, "/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    let info: Value = reqwest::get(url(&server, "/info"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["task"], "text-generation");
    assert_eq!(info["architecture"], "Qwen2ForCausalLM");
    assert_eq!(info["context_length"], 256);
    assert_eq!(info["max_input_length"], 255);

    let library = generator("qwen2-causal-lm");
    let (status, tokens) = post(&server, "/tokenize", json!({"inputs": "Hello world"})).await;
    assert_eq!(status, 200, "{tokens}");
    let ids: Vec<u64> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = library
        .encode_prompt("Hello world", 0)
        .unwrap()
        .into_iter()
        .map(u64::from)
        .collect();
    assert_eq!(ids, expected);
    // A special token written in the prompt is marked special, as the post-processor's are.
    let (status, tokens) = post(&server, "/tokenize", json!({"inputs": "Hi<|im_end|>"})).await;
    assert_eq!(status, 200, "{tokens}");
    let marks: Vec<(String, bool)> = tokens[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["text"].as_str().unwrap().to_string(),
                t["special"] == true,
            )
        })
        .collect();
    assert!(
        marks.contains(&("<|im_end|>".to_string(), true)),
        "{marks:?}"
    );
    assert!(
        marks
            .iter()
            .filter(|(t, _)| t != "<|im_end|>")
            .all(|(_, s)| !s),
        "{marks:?}"
    );

    let (status, _) = post(
        &server,
        "/v1/completions",
        json!({"prompt": "Hello", "max_tokens": 5, "ignore_eos": true}),
    )
    .await;
    assert_eq!(status, 200);
    let metrics = reqwest::get(url(&server, "/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "girder_requests_total{route=\"/v1/completions\",status=\"200\"}",
        "girder_request_duration_seconds_bucket{route=\"/v1/completions\",status=\"200\"",
        "girder_generated_tokens_total",
        "girder_prompt_tokens_total",
        "girder_reused_prompt_tokens_total",
        "girder_time_to_first_token_seconds_bucket",
        "girder_time_per_output_token_seconds_bucket",
        "girder_decode_batch_sequences_bucket",
        "girder_generation_step_seconds_bucket",
        "girder_queue_depth",
    ] {
        assert!(metrics.contains(needle), "no {needle} in\n{metrics}");
    }
    server.shutdown().await.unwrap();
}

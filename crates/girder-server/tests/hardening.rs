//! The server against hostile or careless clients: keys, origins, input counts and sizes,
//! idle and surplus connections, and shutdown while requests run.

mod common;

use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn raw_connect(server: &girder_server::Running) -> TcpStream {
    let stream = TcpStream::connect(server.addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection; what it sent.
fn read_to_close(mut stream: TcpStream) -> String {
    let mut out = Vec::new();
    let _ = stream.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_key_guards_every_path_but_the_public_ones() {
    let mut options = options("bert-st-mean");
    options.access.api_key = Some("s3cret-key".into());
    let server = serve_with("bert-st-mean", options).await;
    let client = reqwest::Client::new();
    let embed = |key: Option<&str>| {
        let mut request = client
            .post(url(&server, "/embed"))
            .json(&json!({"inputs": "hello"}));
        if let Some(key) = key {
            request = request.bearer_auth(key);
        }
        request.send()
    };
    let none = embed(None).await.unwrap();
    assert_eq!(none.status(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(embed(Some("s3cret-kez")).await.unwrap().status(), 401);
    assert_eq!(embed(Some("s3cret")).await.unwrap().status(), 401);
    assert_eq!(embed(Some("s3cret-key")).await.unwrap().status(), 200);
    let get = |path: &str| client.get(url(&server, path)).send();
    assert_eq!(get("/health").await.unwrap().status(), 200);
    assert_eq!(get("/metrics").await.unwrap().status(), 401);
    assert_eq!(get("/info").await.unwrap().status(), 401);
    server.shutdown().await.unwrap();

    let mut open_metrics = common::options("bert-st-mean");
    open_metrics.access.api_key = Some("s3cret-key".into());
    open_metrics.access.public_paths = vec!["/health".into(), "/metrics".into()];
    let server = serve_with("bert-st-mean", open_metrics).await;
    let metrics = client.get(url(&server, "/metrics")).send().await.unwrap();
    assert_eq!(metrics.status(), 200);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_answers_the_allowed_origins_only() {
    let mut options = options("bert-st-mean");
    options.access.cors_allow_origins = vec!["https://app.example".into()];
    options.access.api_key = Some("k".into());
    let server = serve_with("bert-st-mean", options).await;
    let client = reqwest::Client::new();
    let preflight = |origin: &'static str| {
        client
            .request(reqwest::Method::OPTIONS, url(&server, "/embed"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert!(allowed.status().is_success(), "{}", allowed.status());
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = preflight("https://evil.example").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
    server.shutdown().await.unwrap();
    // No origins: no CORS headers at all.
    let server = serve("bert-st-mean").await;
    let response = client
        .post(url(&server, "/embed"))
        .header("origin", "https://app.example")
        .json(&json!({"inputs": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(!response
        .headers()
        .contains_key("access-control-allow-origin"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_inputs_and_huge_inputs_are_refused_cheaply() {
    let server = serve("bert-st-mean").await;
    let texts: Vec<String> = (0..33).map(|i| format!("text {i}")).collect();
    let (status, body) = post(&server, "/embed", json!({"inputs": texts})).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "too_many_inputs");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("33 inputs"),
        "{body}"
    );
    let (status, _) = post(&server, "/embed", json!({"inputs": texts[..32]})).await;
    assert_eq!(status, 200);
    // 1.9 MB of text: refused, or truncated, after tokenizing a few kilobytes.
    let huge = "many words of text ".repeat(100_000);
    let started = Instant::now();
    let (status, body) = post(&server, "/v1/embeddings", json!({"input": huge})).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("more tokens than"),
        "{body}"
    );
    let (status, body) = post(
        &server,
        "/v1/embeddings",
        json!({"input": huge, "truncate": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let short = "many words of text ".repeat(200);
    let (_, want) = post(
        &server,
        "/v1/embeddings",
        json!({"input": short, "truncate": true}),
    )
    .await;
    assert_eq!(body["data"][0]["embedding"], want["data"][0]["embedding"]);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_surplus_ones_refused() {
    let mut options = options("bert-st-mean");
    options.limits.header_timeout = Duration::from_millis(600);
    options.limits.max_connections = 3;
    let server = serve_with("bert-st-mean", options).await;
    // A connection that sends nothing, or half a request head, is closed after the timeout.
    let started = Instant::now();
    let idle = raw_connect(&server);
    let mut slow = raw_connect(&server);
    slow.write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let third = raw_connect(&server);
    std::thread::sleep(Duration::from_millis(100));
    // The cap is reached: a fourth connection is closed without an answer.
    let surplus = raw_connect(&server);
    assert_eq!(read_to_close(surplus), "");
    let answered = read_to_close(slow);
    assert!(
        answered.is_empty() || answered.starts_with("HTTP/1.1 408"),
        "{answered}"
    );
    read_to_close(idle);
    read_to_close(third);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(500) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // Their slots are free again.
    let health = reqwest::get(url(&server, "/health")).await.unwrap();
    assert_eq!(health.status(), 200);
    server.shutdown().await.unwrap();
}

/// A request whose body stops arriving holds its slot until the grace period ends: while
/// the server drains, /health and new work answer 503; then the request is answered with a
/// 500 and the shutdown reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_reports_503_and_cuts_what_outlives_the_grace_period() {
    let mut options = options("bert-st-mean");
    options.shutdown_grace = Duration::from_millis(800);
    let server = serve_with("bert-st-mean", options).await;
    let addr = server.addr;
    let base = format!("http://{addr}");
    let mut stalled = raw_connect(&server);
    stalled
        .write_all(
            b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"inputs\": ",
        )
        .unwrap();
    // The request is in flight once its handler waits for the body.
    let mut waited = Duration::ZERO;
    while server.in_flight() == 0 {
        assert!(waited < Duration::from_secs(5), "the request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += Duration::from_millis(10);
    }
    let shutdown = tokio::spawn(server.shutdown());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = reqwest::Client::new();
    let health = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let work = client
        .post(format!("{base}/embed"))
        .json(&json!({"inputs": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(work.status(), 503);
    let stopped = shutdown.await.unwrap().unwrap();
    assert_eq!(stopped.cut, 1);
    let answer = read_to_close(stalled);
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(
        answer.contains("shut down before this request finished"),
        "{answer}"
    );
    assert!(reqwest::get(format!("{base}/health")).await.is_err());
}

//! `girder serve` end to end: it runs the pre-flight check before the port opens, prints its
//! address, answers over loopback (greedy completions equal `girder generate`'s), and on
//! SIGTERM finishes and exits 0 (1 when the grace period cuts requests).

mod common;

use common::fixture;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

/// Starts `girder serve --port 0 <args>`; returns the child, its stderr and the address from
/// the "listening on" line (the pre-flight findings come before it).
// The child is returned running: every caller signals it and waits (`sigterm_and_wait`).
#[allow(clippy::zombie_processes)]
fn start_serve(args: &[&str]) -> (Child, BufReader<ChildStderr>, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_girder"))
        .arg("serve")
        .args(args)
        .args(["--port", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut before = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).unwrap_or(0) == 0 {
            let status = child.wait();
            panic!("girder serve ended ({status:?}) before listening:\n{before}");
        }
        if let Some(addr) = line.trim().split("listening on http://").nth(1) {
            before.push_str(&line);
            return (child, stderr, addr.to_string(), before);
        }
        before.push_str(&line);
    }
}

fn post(addr: &str, path: &str, body: &str) -> String {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// The JSON body of an HTTP answer.
fn json_body(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).expect("no body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

fn sigterm_and_wait(mut child: Child) {
    // SAFETY: signals our own child process by its id.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
}

/// A bare HTTP/1.1 request (the CLI's tests need no HTTP client); returns the whole answer.
fn http(addr: &str, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("cannot connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    answer
}

#[cfg(unix)]
#[test]
fn serve_answers_and_exits_0_on_sigterm() {
    let model = fixture("bert-st-mean");
    let (mut child, mut stderr, addr, line) = start_serve(&["--model", model.to_str().unwrap()]);
    assert!(line.contains("(embeddings)"), "{line}");

    let body = r#"{"input": ["hello", "world"]}"#;
    let answer = http(
        &addr,
        &format!(
            "POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("\"embedding\""), "{answer}");

    // SAFETY: signals our own child process by its id.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "exit status {status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("shutting down"), "{rest}");
}

#[cfg(unix)]
#[test]
fn serve_quantized_reports_its_accuracy_in_info() {
    let minilm =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        minilm.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models` first",
        minilm.display()
    );
    let (child, _stderr, addr, before) =
        start_serve(&["--model", minilm.to_str().unwrap(), "--quantize", "q8_0"]);
    assert!(before.contains("accuracy report: q8_0"), "{before}");
    let info = json_body(&http(
        &addr,
        "GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert!(
        info["dtype"].as_str().unwrap().starts_with("q8_0"),
        "{info}"
    );
    assert_eq!(info["quantization"]["ok"], true, "{info}");
    assert!(
        info["quantization"]["figures"]["min_cosine"]
            .as_f64()
            .unwrap()
            > 0.995
    );
    let answer = post(
        &addr,
        "/v1/embeddings",
        r#"{"input": ["a quantized server"]}"#,
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    sigterm_and_wait(child);
}

#[cfg(unix)]
#[test]
fn serve_applies_a_peft_adapter_at_load() {
    // A base model without a head plus a classification adapter trained by PEFT: the server
    // serves text-classification with the adapter's three labels.
    let model = fixture("bert-base");
    let adapter = fixture("peft-lora-seqcls");
    let (child, _stderr, addr, line) = start_serve(&[
        "--model",
        model.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
    ]);
    assert!(line.contains("(text-classification)"), "{line}");
    let answer = post(&addr, "/predict", r#"{"inputs": "What a lovely film"}"#);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let labels = json_body(&answer);
    assert_eq!(labels.as_array().map(Vec::len), Some(3), "{labels}");
    sigterm_and_wait(child);
}

#[cfg(unix)]
#[test]
fn a_failed_preflight_refuses_to_start_unless_allowed() {
    // A lock pinned on RoBERTa's tokenizer: BERT's tokenizer drifts from it.
    let lock = std::env::temp_dir().join(format!("girder-serve-test-{}.lock", std::process::id()));
    let status = Command::new(env!("CARGO_BIN_EXE_girder"))
        .args(["lock", "--allow-mismatch", "--model"])
        .arg(fixture("roberta-base"))
        .arg("--out")
        .arg(&lock)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let model = fixture("bert-st-mean");
    let refused = Command::new(env!("CARGO_BIN_EXE_girder"))
        .args(["serve", "--port", "0", "--model"])
        .arg(&model)
        .arg("--lock")
        .arg(&lock)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("lock-ids-changed"), "{stderr}");
    assert!(stderr.contains("pre-flight check failed"), "{stderr}");
    assert!(!stderr.contains("listening"), "the port opened: {stderr}");

    let (child, _stderr, addr, before) = start_serve(&[
        "--model",
        model.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
        "--allow-mismatch",
    ]);
    assert!(before.contains("--allow-mismatch"), "{before}");
    let info = json_body(&http(
        &addr,
        "GET /info HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ));
    assert_eq!(info["preflight"]["ok"], false, "{info}");
    assert!(info["preflight"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f["code"] == "lock-ids-changed"));
    assert_eq!(info["tokenizer_sha256"].as_str().map(str::len), Some(64));
    sigterm_and_wait(child);
    let _ = std::fs::remove_file(lock);
}

#[cfg(unix)]
#[test]
fn greedy_completions_equal_girder_generate() {
    let model = fixture("llama-causal-lm");
    let generated = Command::new(env!("CARGO_BIN_EXE_girder"))
        .args(["generate", "--max-new-tokens", "12", "--model"])
        .arg(&model)
        .arg("Hello world")
        .output()
        .unwrap();
    assert!(
        generated.status.success(),
        "{}",
        String::from_utf8_lossy(&generated.stderr)
    );
    let line = String::from_utf8(generated.stdout).unwrap();
    let expected: serde_json::Value = serde_json::from_str(line.trim()).unwrap();

    let (child, _stderr, addr, line) = start_serve(&["--model", model.to_str().unwrap()]);
    assert!(line.contains("(text-generation)"), "{line}");
    let answer = json_body(&post(
        &addr,
        "/v1/completions",
        r#"{"prompt": "Hello world", "max_tokens": 12, "temperature": 0}"#,
    ));
    assert_eq!(answer["choices"][0]["text"], expected["text"], "{answer}");
    assert_eq!(
        answer["usage"]["completion_tokens"],
        expected["completion_tokens"]
    );
    sigterm_and_wait(child);
}

/// A request still running at the end of the grace period is answered with a 500 and the
/// exit code says so.
#[cfg(unix)]
#[test]
fn serve_exits_1_when_the_grace_period_cuts_requests() {
    let model = fixture("bert-st-mean");
    let (mut child, mut stderr, addr, _) = start_serve(&[
        "--model",
        model.to_str().unwrap(),
        "--shutdown-grace-s",
        "1",
    ]);
    // A body that never finishes arriving keeps its request in flight.
    let mut stalled = TcpStream::connect(&addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stalled
        .write_all(b"POST /embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n{\"inputs\": ")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: signals our own child process by its id.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "exit status {status:?}");
    let mut rest = String::new();
    stderr.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("1 requests were still running"), "{rest}");
}

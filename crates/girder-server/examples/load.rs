//! A load generator for `girder serve`, loopback only, bounded in time and count.
//!
//! Embeddings (default): N concurrent clients for T seconds (and at most `--max-requests`
//! requests) against /v1/embeddings, after `--warmup-seconds` (5) of the same load unmeasured.
//! Prints requests/s, texts/s, p50/p99 latency, errors by status, and the server's RSS idle,
//! at the start of the measured phase and at its end.
//!
//! Chat (`--chat`): first one stream alone for `--single-seconds`, then `--clients` concurrent
//! streams for `--warmup-seconds` unmeasured and for `--seconds` measured, each a streamed
//! /v1/chat/completions of `--max-tokens` tokens (`ignore_eos`, greedy). Prints the aggregate
//! tokens/s of both phases and their ratio, time to first token p50/p99, errors, and the
//! server's RSS after one request, at the start of the measured phase (the sequences' KV
//! caches and the kept prompts allocated) and at its end.
//!
//! It starts `girder serve` itself (so it can read the server's RSS and stop it with SIGTERM):
//!
//! ```text
//! cargo build --release -p girder-cli
//! cargo run --release -p girder-server --example load -- \
//!     --girder target/release/girder --model models/all-MiniLM-L6-v2 --clients 64 --seconds 60
//! cargo run --release -p girder-server --example load -- --chat \
//!     --girder target/release/girder --model models/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf \
//!     --clients 16 --seconds 60 --single-seconds 20 --max-tokens 64
//! ```
//!
//! or targets a running server with `--url http://127.0.0.1:8080 [--pid PID]`.
//! Exits 1 when any request failed. `--write-texts FILE --count N` writes the first N texts of
//! the embeddings workload as JSON Lines (for the offline `girder run embeddings --input FILE`
//! baseline) and exits.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    girder: Option<String>,
    model: String,
    url: Option<String>,
    pid: Option<u32>,
    clients: usize,
    seconds: u64,
    max_requests: usize,
    texts_per_request: usize,
    max_batch_tokens: Option<usize>,
    chat: bool,
    write_texts: Option<String>,
    count: usize,
    max_sequences: Option<usize>,
    single_seconds: u64,
    warmup_seconds: u64,
    max_tokens: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        girder: None,
        model: "models/all-MiniLM-L6-v2".into(),
        url: None,
        pid: None,
        clients: 64,
        seconds: 60,
        max_requests: 1_000_000,
        texts_per_request: 1,
        max_batch_tokens: None,
        chat: false,
        write_texts: None,
        count: 1024,
        max_sequences: None,
        single_seconds: 20,
        warmup_seconds: 5,
        max_tokens: 64,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--girder" => args.girder = Some(value()?),
            "--model" => args.model = value()?,
            "--url" => args.url = Some(value()?),
            "--pid" => args.pid = Some(number(value()?)? as u32),
            "--clients" => args.clients = number(value()?)?.max(1),
            "--seconds" => args.seconds = number(value()?)?.clamp(1, 600) as u64,
            "--max-requests" => args.max_requests = number(value()?)?.max(1),
            "--texts-per-request" => args.texts_per_request = number(value()?)?.max(1),
            "--max-batch-tokens" => args.max_batch_tokens = Some(number(value()?)?),
            "--chat" => args.chat = true,
            "--write-texts" => args.write_texts = Some(value()?),
            "--count" => args.count = number(value()?)?.max(1),
            "--max-sequences" => args.max_sequences = Some(number(value()?)?.max(1)),
            "--single-seconds" => args.single_seconds = number(value()?)?.clamp(1, 600) as u64,
            "--warmup-seconds" => args.warmup_seconds = number(value()?)?.min(600) as u64,
            "--max-tokens" => args.max_tokens = number(value()?)?.max(1),
            "--help" | "-h" => {
                return Err("usage: load [--girder BIN --model DIR | --url URL [--pid PID]] [--clients N] [--seconds T] [--warmup-seconds T] [--max-requests N] [--texts-per-request K] [--max-batch-tokens N] [--chat [--single-seconds T] [--max-tokens N] [--max-sequences N]] [--write-texts FILE --count N]".into())
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    if args.girder.is_none() && args.url.is_none() && args.write_texts.is_none() {
        return Err("give --girder BIN (to start a server) or --url URL".into());
    }
    Ok(args)
}

/// The server's resident set in MiB (Linux /proc).
fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Deterministic sentences of 4 to 40 words, as a varied workload.
fn texts(n: usize) -> Vec<String> {
    const WORDS: &[&str] = &[
        "the",
        "model",
        "server",
        "batch",
        "request",
        "cat",
        "sat",
        "on",
        "a",
        "warm",
        "mat",
        "while",
        "engineers",
        "measured",
        "latency",
        "under",
        "load",
        "and",
        "queues",
        "grew",
        "quickly",
        "every",
        "morning",
        "river",
        "mountain",
        "coffee",
        "tokens",
        "vectors",
    ];
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (0..n)
        .map(|_| {
            let len = 4 + (next() % 37) as usize;
            (0..len)
                .map(|_| WORDS[(next() % WORDS.len() as u64) as usize])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn start_server(girder: &str, args: &Args) -> Result<(Child, String), String> {
    let mut cmd = Command::new(girder);
    cmd.args([
        "serve",
        "--model",
        &args.model,
        "--host",
        "127.0.0.1",
        "--port",
        "0",
    ]);
    if let Some(n) = args.max_batch_tokens {
        cmd.args(["--max-batch-tokens", &n.to_string()]);
    }
    // Enough queue for every client: this measures throughput, not back-pressure.
    cmd.args(["--max-queue", &(args.clients * 2).to_string()]);
    if args.chat {
        let max_sequences = args.max_sequences.unwrap_or(args.clients);
        cmd.args(["--max-sequences", &max_sequences.to_string()]);
    }
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {girder}: {e}"))?;
    let stderr = child.stderr.take().ok_or("no stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    for line in lines.by_ref() {
        let line = line.map_err(|e| e.to_string())?;
        eprintln!("server: {line}");
        if let Some(addr) = line
            .rsplit("http://")
            .next()
            .filter(|_| line.contains("listening"))
        {
            let url = format!("http://{}", addr.trim());
            // Keep draining the server's stderr so it never blocks on a full pipe.
            std::thread::spawn(move || {
                lines.for_each(|l| eprintln!("server: {}", l.unwrap_or_default()))
            });
            return Ok((child, url));
        }
    }
    Err("the server exited before listening".into())
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if let Some(path) = &args.write_texts {
        // The pool the clients cycle through, repeated up to `count` texts.
        let pool = texts(1024);
        let lines: String = (0..args.count)
            .map(|i| format!("{}\n", serde_json::json!({"text": pool[i % pool.len()]})))
            .collect();
        if let Err(e) = std::fs::write(path, lines) {
            eprintln!("cannot write {path}: {e}");
            std::process::exit(2);
        }
        println!("wrote {} texts to {path}", args.count);
        return;
    }
    let (mut child, url, pid) = match (&args.girder, &args.url) {
        (Some(girder), _) => match start_server(girder, &args) {
            Ok((child, url)) => {
                let pid = child.id();
                (Some(child), url, Some(pid))
            }
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        (None, Some(url)) => (None, url.trim_end_matches('/').to_string(), args.pid),
        (None, None) => unreachable!("parse_args requires one"),
    };
    let loopback = ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"];
    if !loopback.iter().any(|p| url.starts_with(p)) {
        eprintln!("{url} is not a loopback address: this tool only loads local servers");
        std::process::exit(2);
    }
    if args.chat {
        let failed = chat_load(&args, &url, pid).await;
        stop_server(child.as_mut());
        if failed {
            std::process::exit(1);
        }
        return;
    }
    let endpoint = format!("{url}/v1/embeddings");
    let pool = Arc::new(texts(1024));
    let client = reqwest::Client::new();

    // Warm up (first allocations, caches) before measuring RSS and time.
    for i in 0..8 {
        let body = serde_json::json!({"input": pool[i % pool.len()], "model": "load"});
        if let Err(e) = client.post(&endpoint).json(&body).send().await {
            eprintln!("warm-up request failed: {e}");
            std::process::exit(1);
        }
    }
    let rss_idle = pid.and_then(rss_mib);
    // Then the same load for `--warmup-seconds`, unmeasured: the server's working set (the
    // activations of full batches, the allocator's pools) grows to its size under this load
    // here, so that start and end compare steady states and growth means a leak.
    if args.warmup_seconds > 0 {
        let _ = embeddings_phase(&args, &client, &endpoint, &pool, args.warmup_seconds).await;
    }
    let rss_start = pid.and_then(rss_mib);
    let started = Instant::now();
    let (mut latencies, errors) =
        embeddings_phase(&args, &client, &endpoint, &pool, args.seconds).await;
    let elapsed = started.elapsed().as_secs_f64();
    let rss_end = pid.and_then(rss_mib);
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
            .unwrap_or_else(|| "-".into())
    };
    let ok = latencies.len();
    println!("target: {endpoint} ({})", args.model);
    println!(
        "clients: {}, texts per request: {}, ran {elapsed:.1} s",
        args.clients, args.texts_per_request
    );
    println!(
        "requests: {ok} ok, {} failed {}",
        errors.len(),
        if errors.is_empty() {
            "(zero errors: ok)"
        } else {
            "(FAILED)"
        }
    );
    if !errors.is_empty() {
        let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in &errors {
            *kinds.entry(e.as_str()).or_default() += 1;
        }
        println!("errors: {kinds:?}");
    }
    println!(
        "throughput: {:.1} requests/s, {:.1} texts/s",
        ok as f64 / elapsed,
        (ok * args.texts_per_request) as f64 / elapsed
    );
    println!("latency: p50 {}, p99 {}", pct(0.50), pct(0.99));
    match (rss_idle, rss_start, rss_end) {
        (Some(idle), Some(a), Some(b)) => println!(
            "server RSS: {idle:.1} MiB idle, {a:.1} MiB at start (after {} s of warm-up load), {b:.1} MiB at end ({:+.1}%)",
            args.warmup_seconds,
            (b - a) / a * 100.0
        ),
        _ => println!("server RSS: unknown (give --girder, or --pid with --url)"),
    }
    stop_server(child.as_mut());
    if !errors.is_empty() {
        std::process::exit(1);
    }
}

/// SIGTERM, then wait: the server finishes in-flight requests and exits.
fn stop_server(child: Option<&mut Child>) {
    if let Some(child) = child {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        match child.wait() {
            Ok(s) => println!("server exit after SIGTERM: {s}"),
            Err(e) => println!("server exit: {e}"),
        }
    }
}

/// One streamed chat completion's figures.
struct Streamed {
    time_to_first_token: Duration,
    completion_tokens: usize,
}

/// Sends one streamed chat completion and reads it to `[DONE]`.
async fn one_chat(
    client: &reqwest::Client,
    endpoint: &str,
    text: &str,
    max_tokens: usize,
) -> Result<Streamed, String> {
    let body = serde_json::json!({
        "model": "load", "messages": [{"role": "user", "content": text}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true, "stream": true,
        "stream_options": {"include_usage": true},
    });
    let start = Instant::now();
    let mut response = client
        .post(endpoint)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("status {}", response.status().as_u16()));
    }
    let mut buffer = String::new();
    let mut first = None;
    let mut tokens = None;
    let mut done = false;
    while let Some(chunk) = response.chunk().await.map_err(|e| format!("body: {e}"))? {
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let event: String = buffer.drain(..end + 2).collect();
            let Some(data) = event.trim().strip_prefix("data: ") else {
                continue;
            };
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let value: serde_json::Value =
                serde_json::from_str(data).map_err(|e| format!("bad chunk: {e}"))?;
            if value.get("error").is_some() {
                return Err(format!("stream error: {}", value["error"]["code"]));
            }
            let has_token = value["choices"][0]["delta"]["content"]
                .as_str()
                .is_some_and(|c| !c.is_empty());
            if has_token && first.is_none() {
                first = Some(start.elapsed());
            }
            if let Some(n) = value["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    }
    match (done, tokens) {
        (true, Some(completion_tokens)) => Ok(Streamed {
            time_to_first_token: first.unwrap_or_else(|| start.elapsed()),
            completion_tokens,
        }),
        _ => Err("stream ended without usage and [DONE]".into()),
    }
}

/// `clients` streams for `seconds`: (tokens/s, time to first token of each, errors).
async fn chat_phase(
    endpoint: &str,
    pool: &Arc<Vec<String>>,
    clients: usize,
    seconds: u64,
    max_tokens: usize,
    max_requests: usize,
) -> (f64, Vec<Duration>, Vec<String>) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..clients {
        let (client, endpoint, pool, issued) = (
            client.clone(),
            endpoint.to_string(),
            pool.clone(),
            issued.clone(),
        );
        workers.push(tokio::spawn(async move {
            let (mut ttft, mut errors, mut tokens) = (Vec::new(), Vec::new(), 0usize);
            let mut i = c * 13;
            while Instant::now() < deadline
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max_requests
            {
                match one_chat(&client, &endpoint, &pool[i % pool.len()], max_tokens).await {
                    Ok(s) => {
                        ttft.push(s.time_to_first_token);
                        tokens += s.completion_tokens;
                    }
                    Err(e) => errors.push(e),
                }
                i += 1;
            }
            (ttft, errors, tokens)
        }));
    }
    let (mut ttft, mut errors, mut tokens) = (Vec::new(), Vec::new(), 0usize);
    for w in workers {
        if let Ok((t, e, n)) = w.await {
            ttft.extend(t);
            errors.extend(e);
            tokens += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    (tokens as f64 / elapsed, ttft, errors)
}

fn percentile(sorted: &[Duration], p: f64) -> String {
    sorted
        .get(((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .map(|d| format!("{:.1} ms", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

/// The chat load: one stream alone, then `--clients` streams; returns whether any failed.
async fn chat_load(args: &Args, url: &str, pid: Option<u32>) -> bool {
    let endpoint = format!("{url}/v1/chat/completions");
    let pool = Arc::new(texts(256));
    // Warm up.
    if let Err(e) = one_chat(&reqwest::Client::new(), &endpoint, &pool[0], 8).await {
        eprintln!("warm-up request failed: {e}");
        return true;
    }
    let rss_one_request = pid.and_then(rss_mib);
    let (single, mut single_ttft, single_errors) = chat_phase(
        &endpoint,
        &pool,
        1,
        args.single_seconds,
        args.max_tokens,
        args.max_requests,
    )
    .await;
    // The same load as measured, unmeasured first: every stream's KV cache and the kept
    // prompts exist before the start figure, so that growth over the measured phase is a leak.
    let (_, _, mut warmup_errors) = chat_phase(
        &endpoint,
        &pool,
        args.clients,
        args.warmup_seconds,
        args.max_tokens,
        args.max_requests,
    )
    .await;
    let rss_start = pid.and_then(rss_mib);
    let (many, mut ttft, errors) = chat_phase(
        &endpoint,
        &pool,
        args.clients,
        args.seconds,
        args.max_tokens,
        args.max_requests,
    )
    .await;
    let rss_end = pid.and_then(rss_mib);
    single_ttft.sort();
    ttft.sort();
    println!(
        "target: {endpoint} ({}), {} tokens per reply",
        args.model, args.max_tokens
    );
    println!(
        "1 stream for {} s: {single:.1} tokens/s, {} replies, time to first token p50 {}",
        args.single_seconds,
        single_ttft.len(),
        percentile(&single_ttft, 0.5)
    );
    println!(
        "{} streams for {} s: {many:.1} tokens/s aggregate, {} replies, {:.2}x one stream",
        args.clients,
        args.seconds,
        ttft.len(),
        many / single
    );
    println!(
        "time to first token under load: p50 {}, p99 {}",
        percentile(&ttft, 0.5),
        percentile(&ttft, 0.99)
    );
    warmup_errors.extend(errors);
    let all_errors: Vec<&String> = single_errors.iter().chain(&warmup_errors).collect();
    println!(
        "errors: {} {}",
        all_errors.len(),
        if all_errors.is_empty() {
            "(zero errors: ok)"
        } else {
            "(FAILED)"
        }
    );
    if !all_errors.is_empty() {
        let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
        for e in &all_errors {
            *kinds.entry(e.as_str()).or_default() += 1;
        }
        println!("errors: {kinds:?}");
    }
    match (rss_one_request, rss_start, rss_end) {
        (Some(one), Some(a), Some(b)) => println!(
            "server RSS: {one:.1} MiB after one request, {a:.1} MiB at start (after {} s of the {}-stream load), {b:.1} MiB at end ({:+.1}%)",
            args.warmup_seconds,
            args.clients,
            (b - a) / a * 100.0
        ),
        _ => println!("server RSS: unknown (give --girder, or --pid with --url)"),
    }
    !all_errors.is_empty()
}

/// `--clients` closed-loop clients posting to `endpoint` for `seconds`: each request's
/// latency, and the failures.
async fn embeddings_phase(
    args: &Args,
    client: &reqwest::Client,
    endpoint: &str,
    pool: &Arc<Vec<String>>,
    seconds: u64,
) -> (Vec<Duration>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let endpoint = endpoint.to_string();
        let pool = pool.clone();
        let issued = issued.clone();
        let k = args.texts_per_request;
        let max_requests = args.max_requests;
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors: Vec<String> = Vec::new();
            let mut i = c * 7;
            while Instant::now() < deadline
                && issued.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < max_requests
            {
                let input: Vec<&String> = (0..k).map(|j| &pool[(i + j) % pool.len()]).collect();
                i += k;
                let body = serde_json::json!({"input": input, "model": "load"});
                let t = Instant::now();
                match client.post(&endpoint).json(&body).send().await {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(_) => latencies.push(t.elapsed()),
                        Err(e) => errors.push(format!("body: {e}")),
                    },
                    Ok(r) => errors.push(format!("status {}", r.status().as_u16())),
                    Err(e) => errors.push(format!("transport: {e}")),
                }
            }
            (latencies, errors)
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors.extend(e);
        }
    }
    (latencies, errors)
}

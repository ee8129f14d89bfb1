//! A load generator for `girder serve`'s /v1/embeddings: N concurrent clients for T seconds
//! (and at most `--max-requests` requests), loopback only.
//!
//! It starts `girder serve` itself (so it can read the server's RSS and stop it with SIGTERM):
//!
//! ```text
//! cargo build --release -p girder-cli
//! cargo run --release -p girder-server --example load -- \
//!     --girder target/release/girder --model models/all-MiniLM-L6-v2 --clients 64 --seconds 60
//! ```
//!
//! or targets a running server with `--url http://127.0.0.1:8080 [--pid PID]`.
//! Prints requests/s, texts/s, p50/p99 latency, errors by status, and the server's RSS at
//! start and end; exits 1 when any request failed.

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
            "--help" | "-h" => {
                return Err("usage: load [--girder BIN --model DIR | --url URL [--pid PID]] [--clients N] [--seconds T] [--max-requests N] [--texts-per-request K] [--max-batch-tokens N]".into())
            }
            other => return Err(format!("unknown argument {other} (see --help)")),
        }
    }
    if args.girder.is_none() && args.url.is_none() {
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
    let rss_start = pid.and_then(rss_mib);
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let issued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for c in 0..args.clients {
        let client = client.clone();
        let endpoint = endpoint.clone();
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
    match (rss_start, rss_end) {
        (Some(a), Some(b)) => println!(
            "server RSS: {a:.1} MiB at start, {b:.1} MiB at end ({:+.1}%)",
            (b - a) / a * 100.0
        ),
        _ => println!("server RSS: unknown (give --girder, or --pid with --url)"),
    }
    if let Some(child) = child.as_mut() {
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        match child.wait() {
            Ok(s) => println!("server exit after SIGTERM: {s}"),
            Err(e) => println!("server exit: {e}"),
        }
    }
    if !errors.is_empty() {
        std::process::exit(1);
    }
}

//! The Hub client against a mock Hub on loopback that speaks the Hub's HTTP API: a fixture
//! repository with two revisions (a tag and a branch), LFS files behind a redirect to a CDN
//! host, a gated repository, a 404, a truncated response and a wrong sha256.

mod common;

use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use common::{fixture, girder_with, json_lines, one_line_error, scratch};
use girder::hub::{FileSelection, HubCache, HubClient};
use sha2::Digest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

const TOKEN: &str = "hf_secret_test_token";

/// One file of a commit: its bytes, whether it lives in LFS, and (to simulate a corrupt
/// store) a sha256 announced for it that is not its own.
#[derive(Clone)]
struct File {
    bytes: Vec<u8>,
    lfs: bool,
    announced_sha256: Option<String>,
}

#[derive(Clone, Default)]
struct Repo {
    commits: BTreeMap<String, BTreeMap<String, File>>,
    refs: BTreeMap<String, String>,
    gated: bool,
}

/// A request the mock saw: method, path, Range header, and whether a token came with it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    range: Option<String>,
    authorized: bool,
}

#[derive(Default)]
struct State {
    repos: BTreeMap<String, Repo>,
    cdn_origin: String,
    seen: Mutex<Vec<Seen>>,
    /// The next this many CDN downloads send half the file and drop the connection.
    truncate_next: AtomicUsize,
    /// Milliseconds each CDN chunk waits (to make two downloads overlap).
    cdn_delay_ms: AtomicUsize,
}

struct MockHub {
    endpoint: String,
    state: Arc<State>,
    _runtime: tokio::runtime::Runtime,
}

impl MockHub {
    fn start(repos: BTreeMap<String, Repo>) -> MockHub {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let hub = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let cdn = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        // The CDN is another host to the client: `localhost` against the hub's 127.0.0.1.
        let cdn_origin = format!("http://localhost:{}", cdn.local_addr().unwrap().port());
        let state = Arc::new(State {
            repos,
            cdn_origin,
            ..State::default()
        });
        let endpoint = format!("http://{}", hub.local_addr().unwrap());
        for (listener, is_cdn) in [(hub, false), (cdn, true)] {
            let state = state.clone();
            let app = axum::Router::new().fallback(
                move |method: Method, uri: Uri, headers: HeaderMap| {
                    let state = state.clone();
                    async move {
                        if is_cdn {
                            cdn_answer(&state, &uri, &headers).await
                        } else {
                            hub_answer(&state, &method, &uri, &headers)
                        }
                    }
                },
            );
            runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        }
        MockHub {
            endpoint,
            state,
            _runtime: runtime,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    fn client(&self, cache: &Path) -> HubClient {
        HubClient::new(&self.endpoint, HubCache::new(cache)).progress_bars(true)
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn git_sha1_hex(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn record(state: &State, method: &str, uri: &Uri, headers: &HeaderMap) {
    state.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        range: headers
            .get("range")
            .and_then(|v| v.to_str().ok())
            .map(String::from),
        authorized: headers.contains_key("authorization"),
    });
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    Response::builder()
        .status(status)
        .header("X-Error-Code", code)
        .header("X-Error-Message", message)
        .body(Body::from(format!("{{\"error\":\"{message}\"}}")))
        .unwrap()
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&text[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// The Hub's API: repository info, the file tree (for Python's snapshot_download) and
/// resolve URLs.
fn hub_answer(state: &State, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    record(state, method.as_str(), uri, headers);
    let path = uri.path();
    let authorized = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v == format!("Bearer {TOKEN}"));
    let (api, rest) = match path.strip_prefix("/api/models/") {
        Some(rest) => (true, rest),
        None => (false, path.trim_start_matches('/')),
    };
    let parts: Vec<&str> = rest.splitn(5, '/').collect();
    if parts.len() < 4 {
        return error(
            StatusCode::NOT_FOUND,
            "RepoNotFound",
            "Repository not found",
        );
    }
    let repo_id = format!("{}/{}", parts[0], parts[1]);
    let Some(repo) = state.repos.get(&repo_id) else {
        // The Hub answers 401 for a repository it does not show to an anonymous caller.
        return error(
            StatusCode::UNAUTHORIZED,
            "RepoNotFound",
            "Repository not found",
        );
    };
    if repo.gated && !authorized {
        return error(
            StatusCode::UNAUTHORIZED,
            "GatedRepo",
            "Access to this model is restricted: log in and accept its conditions",
        );
    }
    let revision = decode(parts[3]);
    let Some(commit) = repo.refs.get(&revision).cloned().or_else(|| {
        repo.commits
            .contains_key(&revision)
            .then(|| revision.clone())
    }) else {
        return error(StatusCode::NOT_FOUND, "RevisionNotFound", "Invalid rev id");
    };
    let files = &repo.commits[&commit];
    match (api, parts[2]) {
        (true, "revision") => {
            let siblings: Vec<_> = files
                .keys()
                .map(|f| serde_json::json!({ "rfilename": f }))
                .collect();
            let body = serde_json::json!({
                "id": repo_id, "modelId": repo_id, "sha": commit, "private": false,
                "gated": repo.gated, "disabled": false, "tags": [], "siblings": siblings,
            });
            json(body)
        }
        (true, "tree") => {
            let entries: Vec<_> = files
                .iter()
                .map(|(name, f)| {
                    let mut entry = serde_json::json!({
                        "type": "file", "path": name, "size": f.bytes.len(),
                        "oid": git_sha1_hex(&f.bytes),
                    });
                    if f.lfs {
                        entry["lfs"] = serde_json::json!({
                            "oid": sha256_hex(&f.bytes), "size": f.bytes.len(), "pointerSize": 134,
                        });
                    }
                    entry
                })
                .collect();
            json(serde_json::Value::Array(entries))
        }
        (false, "resolve") => {
            let name = decode(parts.get(4).copied().unwrap_or_default());
            let Some(file) = files.get(&name) else {
                return Response::builder()
                    .status(StatusCode::NOT_FOUND)
                    .header("X-Error-Code", "EntryNotFound")
                    .header("X-Repo-Commit", &commit)
                    .body(Body::empty())
                    .unwrap();
            };
            let builder = Response::builder().header("X-Repo-Commit", &commit);
            if file.lfs {
                let sha = file
                    .announced_sha256
                    .clone()
                    .unwrap_or_else(|| sha256_hex(&file.bytes));
                builder
                    .status(StatusCode::FOUND)
                    .header(
                        "Location",
                        format!(
                            "{}/blobs/{}/{}/{}",
                            state.cdn_origin,
                            repo_id.replace('/', "--"),
                            commit,
                            name
                        ),
                    )
                    .header("ETag", format!("\"{}\"", git_sha1_hex(b"pointer")))
                    .header("X-Linked-Etag", format!("\"{sha}\""))
                    .header("X-Linked-Size", file.bytes.len())
                    .body(Body::empty())
                    .unwrap()
            } else {
                let builder = builder
                    .status(StatusCode::OK)
                    .header("ETag", format!("\"{}\"", git_sha1_hex(&file.bytes)))
                    .header("Content-Length", file.bytes.len());
                let body = if method == Method::HEAD {
                    Body::empty()
                } else {
                    Body::from(file.bytes.clone())
                };
                builder.body(body).unwrap()
            }
        }
        _ => error(StatusCode::NOT_FOUND, "EntryNotFound", "not found"),
    }
}

fn json(value: serde_json::Value) -> Response {
    Response::builder()
        .header("Content-Type", "application/json")
        .body(Body::from(value.to_string()))
        .unwrap()
}

/// The CDN: `/blobs/<repo>/<commit>/<file>`, with `Range` requests.
async fn cdn_answer(state: &State, uri: &Uri, headers: &HeaderMap) -> Response {
    record(state, "GET-CDN", uri, headers);
    let parts: Vec<&str> = uri.path().trim_start_matches('/').splitn(4, '/').collect();
    let file = (parts.len() == 4)
        .then(|| {
            let repo = state.repos.get(&parts[1].replacen("--", "/", 1))?;
            repo.commits.get(parts[2])?.get(&decode(parts[3])).cloned()
        })
        .flatten();
    let Some(file) = file else {
        return Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::empty())
            .unwrap();
    };
    let start: usize = headers
        .get("range")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("bytes="))
        .and_then(|v| v.trim_end_matches('-').parse().ok())
        .unwrap_or(0);
    let bytes = file.bytes[start.min(file.bytes.len())..].to_vec();
    let truncate = state
        .truncate_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    let delay = state.cdn_delay_ms.load(Ordering::SeqCst) as u64;
    let total = file.bytes.len();
    let status = if start > 0 {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let length = bytes.len();
    // Sent in 4 pieces; a truncated answer sends the first half and then fails the stream,
    // which drops the connection before the announced length.
    let pieces: Vec<Vec<u8>> = bytes
        .chunks(length.div_ceil(4).max(1))
        .map(<[u8]>::to_vec)
        .collect();
    let stream = async_stream(pieces, truncate, delay);
    let mut builder = Response::builder()
        .status(status)
        .header("Content-Length", length);
    if start > 0 {
        builder = builder.header(
            "Content-Range",
            format!("bytes {start}-{}/{total}", total - 1),
        );
    }
    builder.body(Body::from_stream(stream)).unwrap()
}

/// The pieces in order, each after `delay_ms`; when truncating, an error after half of them,
/// which drops the connection before the announced length.
fn async_stream(
    pieces: Vec<Vec<u8>>,
    truncate: bool,
    delay_ms: u64,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    let fail_at = truncate.then_some(pieces.len() / 2);
    let pieces: std::collections::VecDeque<Vec<u8>> = pieces.into();
    futures_util::stream::unfold((pieces, 0usize), move |(mut pieces, sent)| async move {
        if delay_ms > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        }
        if fail_at == Some(sent) {
            return Some((Err(std::io::Error::other("dropped")), (pieces, usize::MAX)));
        }
        if sent == usize::MAX {
            return None;
        }
        let piece = pieces.pop_front()?;
        Some((Ok(piece), (pieces, sent + 1)))
    })
}

/// A folder's files by relative path; safetensors and GGUF files live in LFS.
fn folder_files(dir: &Path) -> BTreeMap<String, File> {
    let mut files = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let name = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if name.starts_with("expected") {
                continue;
            }
            files.insert(
                name.clone(),
                File {
                    bytes: std::fs::read(&path).unwrap(),
                    lfs: name.ends_with(".safetensors") || name.ends_with(".gguf"),
                    announced_sha256: None,
                },
            );
        }
    }
    files
}

fn plain(bytes: &[u8], lfs: bool) -> File {
    File {
        bytes: bytes.to_vec(),
        lfs,
        announced_sha256: None,
    }
}

/// A 40-digit commit hash made from a word.
fn commit(word: &str) -> String {
    git_sha1_hex(word.as_bytes())
}

/// The fixture Hub: `girder-test/tiny` (tag v1.0: a sentence embedder with a pickle, a README
/// and a GGUF beside it; branch main: a sequence classifier), a gated copy, one with a wrong
/// sha256, one with only pickles, and a sharded one.
fn fixture_hub() -> MockHub {
    let (a, b) = (commit("a"), commit("b"));
    let mut v1 = folder_files(&fixture("bert-st-mean"));
    v1.insert(
        "pytorch_model.bin".into(),
        plain(b"pickle, never fetched", true),
    );
    v1.insert("README.md".into(), plain(b"# tiny\n", false));
    v1.insert("small.gguf".into(), plain(&[7u8; 3000], true));
    let main = folder_files(&fixture("bert-seqcls"));
    let repo = |commits: Vec<(&String, BTreeMap<String, File>)>, refs: &[(&str, &String)]| Repo {
        commits: commits.into_iter().map(|(c, f)| (c.clone(), f)).collect(),
        refs: refs
            .iter()
            .map(|(r, c)| (r.to_string(), (*c).clone()))
            .collect(),
        gated: false,
    };
    let mut repos = BTreeMap::new();
    repos.insert(
        "girder-test/tiny".to_string(),
        repo(
            vec![(&a, v1.clone()), (&b, main)],
            &[("main", &b), ("v1.0", &a)],
        ),
    );
    let mut gated = repo(vec![(&a, v1.clone())], &[("main", &a)]);
    gated.gated = true;
    repos.insert("girder-test/gated".to_string(), gated);
    let mut corrupt = v1.clone();
    corrupt
        .get_mut("model.safetensors")
        .unwrap()
        .announced_sha256 = Some(sha256_hex(b"other"));
    repos.insert(
        "girder-test/corrupt".to_string(),
        repo(vec![(&a, corrupt)], &[("main", &a)]),
    );
    let mut pickles = BTreeMap::new();
    pickles.insert("config.json".to_string(), v1["config.json"].clone());
    pickles.insert("pytorch_model.bin".to_string(), plain(b"pickle", true));
    repos.insert(
        "girder-test/pickles".to_string(),
        repo(vec![(&a, pickles)], &[("main", &a)]),
    );
    let mut sharded = BTreeMap::new();
    let index = serde_json::json!({"metadata": {}, "weight_map": {
        "a.weight": "model-00001-of-00002.safetensors", "b.weight": "model-00002-of-00002.safetensors"}});
    sharded.insert("config.json".to_string(), v1["config.json"].clone());
    sharded.insert(
        "model.safetensors.index.json".to_string(),
        plain(index.to_string().as_bytes(), false),
    );
    for shard in ["model-00001-of-00002", "model-00002-of-00002", "model-fp16"] {
        sharded.insert(
            format!("{shard}.safetensors"),
            plain(shard.as_bytes(), true),
        );
    }
    repos.insert(
        "girder-test/sharded".to_string(),
        repo(vec![(&a, sharded)], &[("main", &a)]),
    );
    MockHub::start(repos)
}

/// `girder args` against the mock Hub and a cache folder, with `extra` variables.
fn girder_hub(
    hub: &MockHub,
    cache: &Path,
    args: &[&str],
    extra: &[(&str, &str)],
) -> std::process::Output {
    let mut env: Vec<(&str, &Path)> = vec![
        ("HF_ENDPOINT", Path::new(&hub.endpoint)),
        ("HF_HUB_CACHE", cache),
    ];
    env.extend(extra.iter().map(|(k, v)| (*k, Path::new(*v))));
    girder_with(args, None, &env)
}

fn stdout_path(out: &std::process::Output) -> PathBuf {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

#[test]
fn download_pins_branch_tag_and_sha_and_reuses_the_cache() {
    let hub = fixture_hub();
    let cache = scratch("pins");
    let token = [("HF_TOKEN", TOKEN)];
    let tagged = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny@v1.0"],
        &token,
    ));
    let repo = cache.join("models--girder-test--tiny");
    assert_eq!(tagged, repo.join("snapshots").join(commit("a")));
    for present in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "1_Pooling/config.json",
        "modules.json",
    ] {
        assert!(tagged.join(present).is_file(), "{present}");
    }
    for absent in ["pytorch_model.bin", "README.md", "small.gguf"] {
        assert!(
            !tagged.join(absent).exists(),
            "{absent} is not a file girder loads"
        );
    }
    let weights = std::fs::read(fixture("bert-st-mean/model.safetensors")).unwrap();
    assert_eq!(
        std::fs::read_link(tagged.join("model.safetensors")).unwrap(),
        PathBuf::from("../../blobs").join(sha256_hex(&weights))
    );
    assert_eq!(
        std::fs::read(tagged.join("model.safetensors")).unwrap(),
        weights
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/v1.0")).unwrap(),
        commit("a")
    );

    let main = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny"],
        &token,
    ));
    assert_eq!(main, repo.join("snapshots").join(commit("b")));
    assert_eq!(
        std::fs::read(main.join("config.json")).unwrap(),
        std::fs::read(fixture("bert-seqcls/config.json")).unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(repo.join("refs/main")).unwrap(),
        commit("b")
    );

    // By commit: the snapshot is complete, so only the revision is asked for.
    let before = hub.seen().len();
    let by_sha = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", &format!("girder-test/tiny@{}", commit("a"))],
        &token,
    ));
    assert_eq!(by_sha, tagged);
    let asked: Vec<Seen> = hub.seen()[before..].to_vec();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].path.contains("/revision/"));

    // The token goes to the Hub, never to the CDN host it redirects to.
    let seen = hub.seen();
    assert!(seen.iter().any(|s| s.method == "GET-CDN"));
    assert!(seen
        .iter()
        .filter(|s| s.method == "GET-CDN")
        .all(|s| !s.authorized));
    assert!(seen
        .iter()
        .filter(|s| s.method != "GET-CDN")
        .all(|s| s.authorized));

    // Patterns, one GGUF file, shards through the index.
    let patterned = stdout_path(&girder_hub(
        &hub,
        &cache,
        &[
            "download",
            "girder-test/tiny@v1.0",
            "--include",
            "*.md",
            "--include",
            "*.gguf",
        ],
        &[],
    ));
    assert!(patterned.join("README.md").is_file() && patterned.join("small.gguf").is_file());
    assert!(!patterned.join("pytorch_model.bin").exists());
    let gguf = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny@v1.0/small.gguf"],
        &[],
    ));
    assert_eq!(gguf, tagged.join("small.gguf"));
    assert_eq!(std::fs::read(&gguf).unwrap(), vec![7u8; 3000]);
    let sharded = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/sharded"],
        &[],
    ));
    let mut names: Vec<String> = std::fs::read_dir(&sharded)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "config.json",
            "model-00001-of-00002.safetensors",
            "model-00002-of-00002.safetensors",
            "model.safetensors.index.json"
        ]
    );
}

#[test]
fn run_downloads_on_first_use_and_then_works_offline() {
    let hub = fixture_hub();
    let cache = scratch("first-use");
    let local = json_lines(&girder_with(
        &[
            "run",
            "embeddings",
            "-m",
            fixture("bert-st-mean").to_str().unwrap(),
            "hello",
        ],
        None,
        &[],
    ));
    let args = ["run", "embeddings", "-m", "girder-test/tiny@v1.0", "hello"];
    assert_eq!(json_lines(&girder_hub(&hub, &cache, &args, &[])), local);

    // The Hub unreachable: the cached snapshot, with a warning.
    let unreachable = [
        ("HF_ENDPOINT", Path::new("http://127.0.0.1:9")),
        ("HF_HUB_CACHE", cache.as_path()),
    ];
    let out = girder_with(&args, None, &unreachable);
    assert_eq!(json_lines(&out), local);
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be reached"));

    // Offline, by flag or variable: no request at all.
    let before = hub.seen().len();
    let offline = [
        "--offline",
        "run",
        "embeddings",
        "-m",
        "girder-test/tiny@v1.0",
        "hello",
    ];
    assert_eq!(json_lines(&girder_hub(&hub, &cache, &offline, &[])), local);
    assert_eq!(
        json_lines(&girder_hub(&hub, &cache, &args, &[("HF_HUB_OFFLINE", "1")])),
        local
    );
    assert_eq!(hub.seen().len(), before);
    let err = one_line_error(&girder_hub(
        &hub,
        &cache,
        &["run", "embeddings", "-m", "girder-test/tiny@main", "x"],
        &[("HF_HUB_OFFLINE", "1")],
    ));
    assert!(
        err.contains("girder-test/tiny") && err.contains("offline mode"),
        "{err}"
    );
    let err = one_line_error(&girder_with(
        &["run", "embeddings", "-m", "girder-test/absent", "x"],
        None,
        &unreachable,
    ));
    assert!(
        err.contains("girder-test/absent")
            && err.contains("could not be reached")
            && err.contains("no folder `girder-test/absent` here"),
        "{err}"
    );
}

#[test]
fn hub_failures_are_clear_errors() {
    let hub = fixture_hub();
    let cache = scratch("failures");
    let fails = |args: &[&str], extra: &[(&str, &str)], wanted: &[&str]| {
        let err = one_line_error(&girder_hub(&hub, &cache, args, extra));
        eprintln!("girder {}: {}", args.join(" "), err.trim_end());
        for w in wanted {
            assert!(err.contains(w), "{w:?} not in {err}");
        }
    };
    fails(
        &["download", "girder-test/absent"],
        &[],
        &["`girder-test/absent` was not found", "HF_TOKEN"],
    );
    fails(
        &["download", "girder-test/tiny@nope"],
        &[],
        &["has no revision `nope`"],
    );
    fails(
        &["download", "girder-test/tiny/missing.gguf"],
        &[],
        &["has no file `missing.gguf`"],
    );
    fails(
        &["download", "girder-test/pickles"],
        &[],
        &["PyTorch pickles"],
    );
    fails(
        &["download", "girder-test/tiny", "--include", "*.onnx"],
        &[],
        &["--include"],
    );
    fails(
        &["download", "girder-test/gated"],
        &[],
        &["`girder-test/gated`", "needs access", "restricted"],
    );
    fails(
        &["download", "girder-test/gated"],
        &[("HF_TOKEN", "hf_wrong")],
        &["needs access"],
    );
    let gated = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/gated"],
        &[("HF_TOKEN", TOKEN)],
    ));
    assert!(gated.join("model.safetensors").is_file());
    // A token file, as `huggingface-cli login` writes it.
    let home = scratch("failures-home");
    std::fs::write(home.join("token"), format!("{TOKEN}\n")).unwrap();
    let cache2 = scratch("failures-cache2");
    let by_file = girder_with(
        &["download", "girder-test/gated"],
        None,
        &[
            ("HF_ENDPOINT", Path::new(&hub.endpoint)),
            ("HF_HUB_CACHE", &cache2),
            ("HF_HOME", &home),
        ],
    );
    stdout_path(&by_file);
    // Names that would leave the cache are not hub ids.
    fails(
        &["download", "girder-test/tiny@../../x"],
        &[],
        &["not a hub id"],
    );

    // A file whose bytes are not the announced sha256 never enters the cache.
    let weights = std::fs::read(fixture("bert-st-mean/model.safetensors")).unwrap();
    fails(
        &["download", "girder-test/corrupt"],
        &[],
        &[
            "model.safetensors",
            "sha256",
            &sha256_hex(&weights),
            &sha256_hex(b"other"),
            "deleted",
        ],
    );
    let repo = cache.join("models--girder-test--corrupt");
    let blobs: Vec<String> = std::fs::read_dir(repo.join("blobs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        blobs
            .iter()
            .all(|b| b != &sha256_hex(b"other") && !b.ends_with(".incomplete")),
        "{blobs:?}"
    );
    assert!(!repo
        .join("snapshots")
        .join(commit("a"))
        .join("model.safetensors")
        .exists());
}

#[test]
fn an_interrupted_download_resumes_with_range() {
    let hub = fixture_hub();
    let cache = scratch("resume");
    let weights = std::fs::read(fixture("bert-st-mean/model.safetensors")).unwrap();
    let blob = cache
        .join("models--girder-test--tiny/blobs")
        .join(sha256_hex(&weights));
    let partial = PathBuf::from(format!("{}.incomplete", blob.display()));

    // Every attempt of this run drops the connection halfway: the error says what arrived
    // and the partial file stays.
    hub.state.truncate_next.store(4, Ordering::SeqCst);
    let err = one_line_error(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny@v1.0"],
        &[],
    ));
    assert!(
        err.contains("model.safetensors") && err.contains("run the command again to resume"),
        "{err}"
    );
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept > 0 && kept < weights.len() as u64);
    assert!(!blob.exists());

    // The next run asks only for the rest.
    let before = hub.seen().len();
    let snapshot = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny@v1.0"],
        &[],
    ));
    let ranges: Vec<Option<String>> = hub.seen()[before..]
        .iter()
        .filter(|s| s.method == "GET-CDN")
        .map(|s| s.range.clone())
        .collect();
    assert_eq!(ranges, vec![Some(format!("bytes={kept}-"))]);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
    assert!(!partial.exists());

    // Within one run, a dropped connection is resumed at once.
    let cache = scratch("resume-in-process");
    hub.state.truncate_next.store(1, Ordering::SeqCst);
    let snapshot = hub
        .client(&cache)
        .snapshot("girder-test/tiny", "v1.0", &FileSelection::Model)
        .unwrap();
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        weights
    );
}

#[test]
fn two_downloads_of_one_file_at_once_write_one_blob() {
    let hub = fixture_hub();
    let weights = std::fs::read(fixture("bert-st-mean/model.safetensors")).unwrap();
    // Slow pieces from the CDN make the two downloads overlap.
    hub.state.cdn_delay_ms.store(100, Ordering::SeqCst);

    // Two processes.
    let cache = scratch("concurrent-processes");
    let before = hub.seen().len();
    let children: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new(env!("CARGO_BIN_EXE_girder"))
                .args(["download", "girder-test/tiny@v1.0"])
                .env("HF_ENDPOINT", &hub.endpoint)
                .env("HF_HUB_CACHE", &cache)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let paths: Vec<PathBuf> = children
        .into_iter()
        .map(|child| stdout_path(&child.wait_with_output().unwrap()))
        .collect();
    assert_eq!(paths[0], paths[1]);
    let cdn = hub.seen()[before..]
        .iter()
        .filter(|s| s.method == "GET-CDN")
        .count();
    assert_eq!(cdn, 1, "the second download waits for the first's blob");
    assert_eq!(
        std::fs::read(paths[0].join("model.safetensors")).unwrap(),
        weights
    );

    // Two threads of one process.
    let cache = scratch("concurrent-threads");
    let snapshots: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let client = hub.client(&cache);
                scope.spawn(move || {
                    client
                        .snapshot("girder-test/tiny", "v1.0", &FileSelection::Model)
                        .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(snapshots[0], snapshots[1]);
    assert_eq!(
        std::fs::read(snapshots[0].join("model.safetensors")).unwrap(),
        weights
    );
}

#[test]
fn cache_ls_and_rm_show_and_free_what_is_cached() {
    let hub = fixture_hub();
    let cache = scratch("ls-rm");
    stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny@v1.0"],
        &[],
    ));
    let main = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny"],
        &[],
    ));
    let ls = girder_hub(&hub, &cache, &["cache", "ls"], &[]);
    let listing = String::from_utf8_lossy(&ls.stdout).into_owned();
    assert!(ls.status.success());
    let line = listing
        .lines()
        .find(|l| l.starts_with("girder-test/tiny"))
        .unwrap();
    assert!(
        line.contains("model") && line.contains("main,v1.0"),
        "{listing}"
    );
    let revisions = girder_hub(&hub, &cache, &["cache", "ls", "--revisions"], &[]);
    let revisions = String::from_utf8_lossy(&revisions.stdout).into_owned();
    assert!(
        revisions.contains(&commit("a")) && revisions.contains(&commit("b")),
        "{revisions}"
    );

    let dry = girder_hub(
        &hub,
        &cache,
        &["cache", "rm", "girder-test/tiny@v1.0", "--dry-run"],
        &[],
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would delete"));
    let tagged = cache
        .join("models--girder-test--tiny/snapshots")
        .join(commit("a"));
    assert!(tagged.is_dir());
    let rm = girder_hub(&hub, &cache, &["cache", "rm", "girder-test/tiny@v1.0"], &[]);
    assert!(
        rm.status.success(),
        "{}",
        String::from_utf8_lossy(&rm.stderr)
    );
    assert!(!tagged.exists());
    assert!(!cache.join("models--girder-test--tiny/refs/v1.0").exists());
    // The blobs main shares with the removed tag (tokenizer, vocabulary) stay.
    assert!(std::fs::read(main.join("tokenizer.json")).is_ok());
    let classified = json_lines(&girder_hub(
        &hub,
        &cache,
        &[
            "--offline",
            "run",
            "text-classification",
            "-m",
            "girder-test/tiny",
            "good",
        ],
        &[],
    ));
    assert_eq!(classified.len(), 1);
    let rm = girder_hub(&hub, &cache, &["cache", "rm", "girder-test/tiny"], &[]);
    assert!(rm.status.success());
    assert!(!cache.join("models--girder-test--tiny").exists());
    let err = one_line_error(&girder_hub(
        &hub,
        &cache,
        &["cache", "rm", "girder-test/tiny"],
        &[],
    ));
    assert!(err.contains("nothing to remove"), "{err}");
}

#[test]
fn python_huggingface_hub_and_girder_share_one_cache() {
    let Some(python) = common::oracle_python("huggingface_hub") else {
        return;
    };
    let hub = fixture_hub();
    // girder downloads; Python finds it without the network.
    let cache = scratch("python-finds-girder");
    let snapshot = stdout_path(&girder_hub(
        &hub,
        &cache,
        &["download", "girder-test/tiny@v1.0"],
        &[],
    ));
    let script = "import sys; from huggingface_hub import snapshot_download as s; \
                  print(s(sys.argv[1], revision=sys.argv[2], cache_dir=sys.argv[3], local_files_only=True))";
    let found = std::process::Command::new(&python)
        .args([
            "-c",
            script,
            "girder-test/tiny",
            "v1.0",
            cache.to_str().unwrap(),
        ])
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .unwrap();
    assert!(
        found.status.success(),
        "{}",
        String::from_utf8_lossy(&found.stderr)
    );
    assert_eq!(
        PathBuf::from(String::from_utf8_lossy(&found.stdout).trim()),
        snapshot
    );

    // Python downloads from the same mock Hub; girder finds it offline.
    let cache = scratch("girder-finds-python");
    let script = "import sys; from huggingface_hub import snapshot_download as s; \
                  print(s(sys.argv[1], revision=sys.argv[2], cache_dir=sys.argv[3], allow_patterns=['*.json', '*.txt', '*.safetensors']))";
    let fetched = std::process::Command::new(&python)
        .args([
            "-c",
            script,
            "girder-test/tiny",
            "main",
            cache.to_str().unwrap(),
        ])
        .env("HF_ENDPOINT", &hub.endpoint)
        .env("HF_HUB_DISABLE_XET", "1")
        .env("HF_HUB_DISABLE_TELEMETRY", "1")
        .output()
        .unwrap();
    assert!(
        fetched.status.success(),
        "{}",
        String::from_utf8_lossy(&fetched.stderr)
    );
    let local = json_lines(&girder_with(
        &[
            "run",
            "text-classification",
            "-m",
            fixture("bert-seqcls").to_str().unwrap(),
            "good",
        ],
        None,
        &[],
    ));
    let from_python = json_lines(&girder_hub(
        &hub,
        &cache,
        &[
            "--offline",
            "run",
            "text-classification",
            "-m",
            "girder-test/tiny",
            "good",
        ],
        &[],
    ));
    assert_eq!(from_python, local);
    eprintln!("huggingface_hub and girder found each other's downloads in one cache");
}

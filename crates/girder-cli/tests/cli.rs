//! The `girder` binary end to end: inputs from arguments, stdin and JSON Lines, output in
//! input order, hub ids from the Hugging Face cache, one-line errors with exit code 1.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../girder/tests/fixtures")
        .join(name)
}

fn girder(args: &[&str], stdin: Option<&[u8]>, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_girder"));
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn one_line_error(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    stderr
}

#[test]
fn embeddings_from_arguments_stdin_and_jsonl_agree_and_keep_order() {
    let model = fixture("bert-st-mean");
    let m = model.to_str().unwrap();
    let from_args = json_lines(&girder(
        &["run", "embeddings", "-m", m, "first text", "", "third"],
        None,
        &[],
    ));
    let from_stdin = json_lines(&girder(
        &["run", "embeddings", "-m", m],
        Some(b"first text\n\nthird\n"),
        &[],
    ));
    let dir = std::env::temp_dir().join(format!("girder-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let jsonl = dir.join("in.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"first text\"}\n{\"text\": \"\"}\n{\"text\": \"third\", \"id\": 3}\n",
    )
    .unwrap();
    let from_file = json_lines(&girder(
        &[
            "run",
            "embeddings",
            "-m",
            m,
            "--input",
            jsonl.to_str().unwrap(),
        ],
        None,
        &[],
    ));
    assert_eq!(from_args.len(), 3);
    assert_eq!(from_args, from_stdin);
    assert_eq!(from_args, from_file);
    assert_ne!(from_args[0]["embedding"], from_args[2]["embedding"]);
    assert_eq!(from_args[0]["truncated"], false);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn every_task_runs_and_matches_the_library() {
    let cases = [
        (
            "text-classification",
            "bert-seqcls",
            vec!["--top-k", "2"],
            "labels",
        ),
        (
            "token-classification",
            "bert-tokcls",
            vec!["--aggregation", "simple"],
            "entities",
        ),
        ("fill-mask", "bert-mlm", vec!["--top-k", "3"], "predictions"),
        ("embeddings", "bert-st-cls", vec![], "embedding"),
    ];
    for (task, fx, extra, key) in cases {
        let dir = fixture(fx);
        let mut args = vec!["run", task, "-m", dir.to_str().unwrap()];
        args.extend(extra);
        args.push("Angela Merkel is the [MASK] of Paris.");
        let lines = json_lines(&girder(&args, None, &[]));
        assert_eq!(lines.len(), 1, "{task}");
        assert!(lines[0].get(key).is_some(), "{task}: {}", lines[0]);
    }
}

#[test]
fn hub_id_resolves_in_the_huggingface_cache() {
    let cache = std::env::temp_dir().join(format!("girder-hf-cache-{}", std::process::id()));
    let repo = cache.join("models--acme--tiny-st");
    let snapshot = repo.join("snapshots/0123456789abcdef");
    copy_dir(&fixture("bert-st-mean"), &snapshot);
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), "0123456789abcdef").unwrap();
    let by_id = json_lines(&girder(
        &["run", "embeddings", "-m", "acme/tiny-st", "hello"],
        None,
        &[("HF_HUB_CACHE", &cache)],
    ));
    let by_rev = json_lines(&girder(
        &[
            "run",
            "embeddings",
            "-m",
            "acme/tiny-st@0123456789abcdef",
            "hello",
        ],
        None,
        &[("HF_HUB_CACHE", &cache)],
    ));
    let by_path = json_lines(&girder(
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
    assert_eq!(by_id, by_path);
    assert_eq!(by_rev, by_path);
    let missing = girder(
        &["run", "embeddings", "-m", "acme/absent", "hello"],
        None,
        &[("HF_HUB_CACHE", &cache)],
    );
    let err = one_line_error(&missing);
    assert!(
        err.contains("acme/absent") && err.contains("Hugging Face cache"),
        "{err}"
    );
    std::fs::remove_dir_all(cache).unwrap();
}

#[test]
fn bad_inputs_exit_1_with_one_line() {
    let m = fixture("bert-st-mean");
    let m = m.to_str().unwrap();
    let err = one_line_error(&girder(
        &["run", "embeddings", "-m", m],
        Some(b"fine\n\xff\xfe bad\n"),
        &[],
    ));
    assert!(
        err.contains("stdin line 2") && err.contains("UTF-8"),
        "{err}"
    );
    let err = one_line_error(&girder(&["run", "embeddings", "-m", m], Some(b""), &[]));
    assert!(err.contains("no input texts"), "{err}");
    let err = one_line_error(&girder(
        &["run", "embeddings", "-m", "/no/such/model", "x"],
        None,
        &[],
    ));
    assert!(err.contains("/no/such/model"), "{err}");
    let long = "word ".repeat(100);
    let err = one_line_error(&girder(
        &["run", "embeddings", "-m", m, "--no-truncate", "ok", &long],
        None,
        &[],
    ));
    assert!(
        err.contains("input 1 has") && err.contains("limit of 48"),
        "{err}"
    );
    let err = one_line_error(&girder(
        &["run", "text-classification", "-m", m, "x"],
        None,
        &[],
    ));
    assert!(err.contains("sequence-classification head"), "{err}");
}

#[test]
fn truncation_is_reported() {
    let m = fixture("bert-st-mean");
    let long = "word ".repeat(100);
    let lines = json_lines(&girder(
        &[
            "run",
            "embeddings",
            "-m",
            m.to_str().unwrap(),
            "short",
            &long,
        ],
        None,
        &[],
    ));
    assert_eq!(lines[0]["truncated"], false);
    assert_eq!(lines[1]["truncated"], true);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

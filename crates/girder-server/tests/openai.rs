//! The official `openai` Python client, unmodified, against /v1/embeddings
//! (scripts/openai_embeddings_check.py) and /v1/chat/completions and /v1/completions, whole and
//! streamed (scripts/openai_chat_check.py). Dev-only: runs where .venv-oracle has `openai`
//! installed; elsewhere (CI without Python) each test is skipped with the reason printed.

mod common;

use common::*;
use girder::generate::{chat::Message, Options, TextGenerator};
use serde_json::json;
use std::path::PathBuf;
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The dev environment's Python when it has `openai`; otherwise prints why the test is skipped.
fn python_with_openai() -> Option<PathBuf> {
    let python = root().join(".venv-oracle/bin/python");
    if !python.exists() {
        println!(
            "skipped: {} does not exist (dev-only: create it and pip install -r scripts/oracle-requirements.txt)",
            python.display()
        );
        return None;
    }
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        println!("skipped: `openai` is not installed in .venv-oracle (see scripts/oracle-requirements.txt)");
        return None;
    }
    Some(python)
}

/// Runs a check script with `args`; fails the test with its output when it fails.
async fn run_script(python: PathBuf, script: &str, args: Vec<String>) {
    let script = root().join("scripts").join(script);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .args(args)
            .env("NO_PROXY", "127.0.0.1")
            .output()
    })
    .await
    .unwrap()
    .expect("cannot run the openai check");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "the openai client failed:\n{stdout}\n{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_works_unmodified_on_embeddings() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let server = serve("bert-st-mean").await;
    let base = format!("http://{}", server.addr);
    run_script(python, "openai_embeddings_check.py", vec![base]).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_works_unmodified_on_chat_and_completions() {
    let Some(python) = python_with_openai() else {
        return;
    };
    let path = fixture("qwen2-causal-lm").display().to_string();
    let library = TextGenerator::load(&path).unwrap();
    // What the client must receive: the library's greedy replies.
    let question = "What is the capital of France?";
    let ids = library
        .encode_chat_messages(&[Message::new("user", question)])
        .unwrap();
    let greedy = |n| Options {
        max_new_tokens: Some(n),
        ..Options::default()
    };
    let chat = &library
        .generate_from_ids(&[ids], &greedy(16), &mut |_, _| {})
        .unwrap()[0];
    let completion = &library.generate(&["Hello world"], &greedy(12)).unwrap()[0];
    let expected = json!({
        "chat": {"messages": [{"role": "user", "content": question}], "max_tokens": 16, "text": chat.text},
        "completion": {"prompt": "Hello world", "max_tokens": 12, "text": completion.text},
    });
    let expected_path = std::env::temp_dir().join(format!(
        "girder-openai-chat-expected-{}.json",
        std::process::id()
    ));
    std::fs::write(&expected_path, expected.to_string()).unwrap();

    let server = girder_server::start(library.into(), options("qwen2-causal-lm"))
        .await
        .unwrap();
    let base = format!("http://{}", server.addr);
    run_script(
        python,
        "openai_chat_check.py",
        vec![base, expected_path.display().to_string()],
    )
    .await;
    server.shutdown().await.unwrap();
    let _ = std::fs::remove_file(expected_path);
}

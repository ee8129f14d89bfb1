//! The official `openai` Python client against /v1/embeddings (scripts/openai_embeddings_check.py).
//! Runs where the dev-only .venv-oracle has `openai` installed; elsewhere (CI) it is skipped
//! with the reason printed.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_works_unmodified() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join(".venv-oracle/bin/python");
    if !python.exists() {
        println!(
            "skipped: {} does not exist (pip install -r scripts/oracle-requirements.txt into it)",
            python.display()
        );
        return;
    }
    let has_openai = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_openai {
        println!("skipped: `openai` is not installed in .venv-oracle (see scripts/oracle-requirements.txt)");
        return;
    }
    let server = serve("bert-st-mean").await;
    let base = format!("http://{}", server.addr);
    let script = root.join("scripts/openai_embeddings_check.py");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .arg(base)
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
    server.shutdown().await.unwrap();
}

//! Shared helpers: start a server on a tiny fixture over loopback.

#![allow(dead_code)]

use girder::pipelines::{Model, Task};
use girder::LoadOptions;
use girder_server::{start, Running, ServeOptions};
use std::path::PathBuf;

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../girder/tests/fixtures/{name}"))
}

pub fn load(name: &str) -> Model {
    let path = fixture(name);
    Model::load(&path.display().to_string(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("cannot load fixture {name}: {e}"))
}

pub fn options(name: &str) -> ServeOptions {
    ServeOptions::new(([127, 0, 0, 1], 0).into(), name)
}

pub async fn serve(name: &str) -> Running {
    serve_with(name, options(name)).await
}

pub async fn serve_with(name: &str, options: ServeOptions) -> Running {
    start(load(name).into(), options)
        .await
        .unwrap_or_else(|e| panic!("cannot start a server on {name}: {e}"))
}

pub async fn serve_task(name: &str, task: Task) -> Running {
    let mut options = options(name);
    options.task = Some(task);
    serve_with(name, options).await
}

pub fn url(server: &Running, path: &str) -> String {
    format!("http://{}{path}", server.addr)
}

/// POSTs `body` as JSON; returns the status and the JSON answer.
pub async fn post(
    server: &Running,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url(server, path))
        .json(&body)
        .send()
        .await
        .expect("request failed");
    let status = response.status().as_u16();
    let value = response.json().await.expect("the answer is not JSON");
    (status, value)
}

/// Asserts the error shape and returns the message.
pub fn error_message(value: &serde_json::Value) -> String {
    let error = &value["error"];
    assert!(error["type"].is_string(), "no error.type in {value}");
    assert!(error["code"].is_string(), "no error.code in {value}");
    error["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.message in {value}"))
        .to_string()
}

//! The `girder` binary end to end: inputs from arguments, stdin and JSON Lines, output in
//! input order, hub ids from the Hugging Face cache, one-line errors with exit code 1.

mod common;

use common::{copy_dir, fixture, girder_with, json_lines, one_line_error};

#[test]
fn embeddings_from_arguments_stdin_and_jsonl_agree_and_keep_order() {
    let model = fixture("bert-st-mean");
    let m = model.to_str().unwrap();
    let from_args = json_lines(&girder_with(
        &["run", "embeddings", "-m", m, "first text", "", "third"],
        None,
        &[],
    ));
    let from_stdin = json_lines(&girder_with(
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
    let from_file = json_lines(&girder_with(
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
        let lines = json_lines(&girder_with(&args, None, &[]));
        assert_eq!(lines.len(), 1, "{task}");
        assert!(lines[0].get(key).is_some(), "{task}: {}", lines[0]);
    }
}

#[test]
fn bad_inputs_exit_1_with_one_line() {
    let m = fixture("bert-st-mean");
    let m = m.to_str().unwrap();
    let err = one_line_error(&girder_with(
        &["run", "embeddings", "-m", m],
        Some(b"fine\n\xff\xfe bad\n"),
        &[],
    ));
    assert!(
        err.contains("stdin line 2") && err.contains("UTF-8"),
        "{err}"
    );
    let err = one_line_error(&girder_with(
        &["run", "embeddings", "-m", m],
        Some(b""),
        &[],
    ));
    assert!(err.contains("no input texts"), "{err}");
    let err = one_line_error(&girder_with(
        &["run", "embeddings", "-m", "/no/such/model", "x"],
        None,
        &[],
    ));
    assert!(err.contains("/no/such/model"), "{err}");
    let long = "word ".repeat(100);
    let err = one_line_error(&girder_with(
        &["run", "embeddings", "-m", m, "--no-truncate", "ok", &long],
        None,
        &[],
    ));
    assert!(
        err.contains("input 1 has") && err.contains("limit of 48"),
        "{err}"
    );
    let err = one_line_error(&girder_with(
        &["run", "text-classification", "-m", m, "x"],
        None,
        &[],
    ));
    assert!(err.contains("sequence-classification head"), "{err}");
    // A task of another kind names the classes that serve it.
    let llama = fixture("llama-causal-lm");
    let err = one_line_error(&girder_with(
        &["run", "fill-mask", "-m", llama.to_str().unwrap(), "x"],
        None,
        &[],
    ));
    assert!(
        err.contains("BertForMaskedLM") && err.contains("is a decoder"),
        "{err}"
    );
    let err = one_line_error(&girder_with(
        &["run", "text-generation", "-m", m, "x"],
        None,
        &[],
    ));
    assert!(
        err.contains("LlamaForCausalLM") && err.contains("is an encoder"),
        "{err}"
    );
    // An architecture the registry lacks is named, with the supported classes.
    let dir = common::scratch("unknown-architecture");
    copy_dir(&fixture("bert-st-mean"), &dir);
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("\"BertModel\"", "\"GPTJForCausalLM\"");
    std::fs::write(&config, text).unwrap();
    let err = one_line_error(&girder_with(
        &["run", "embeddings", "-m", dir.to_str().unwrap(), "x"],
        None,
        &[],
    ));
    assert!(
        err.contains("GPTJForCausalLM")
            && err.contains("MPNetModel")
            && err.contains("Qwen2ForCausalLM"),
        "{err}"
    );
}

#[test]
fn truncation_is_reported() {
    let m = fixture("bert-st-mean");
    let long = "word ".repeat(100);
    let lines = json_lines(&girder_with(
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

//! `girder generate` and `girder chat` end to end on the tiny causal-LM fixtures: JSON Lines
//! with transformers' greedy continuation, streaming, chat templates, one-line errors.

mod common;

use common::{fixture, girder, girder_with, json_lines};

fn expected(name: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(name).join("expected_generate.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn generate_prints_transformers_greedy_continuations() {
    let dir = fixture("llama-causal-lm");
    let exp = expected("llama-causal-lm");
    let prompts = exp["prompts"].as_array().unwrap();
    let texts: Vec<&str> = prompts
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    let mut args = vec![
        "generate",
        "--model",
        dir.to_str().unwrap(),
        "--max-new-tokens",
        "32",
    ];
    args.extend(&texts);
    let lines = json_lines(&girder(&args));
    assert_eq!(lines.len(), prompts.len());
    for (line, p) in lines.iter().zip(prompts) {
        assert_eq!(line["token_ids"], p["generated_ids"]);
        assert_eq!(line["text"], p["generated_text"]);
        assert_eq!(line["finish_reason"], p["finish_reason"]);
        assert_eq!(
            line["prompt_tokens"],
            p["input_ids"].as_array().unwrap().len()
        );
        assert_eq!(
            line["completion_tokens"],
            p["generated_ids"].as_array().unwrap().len()
        );
    }
}

#[test]
fn run_text_generation_is_the_pipeline_with_the_prompt() {
    let dir = fixture("qwen2-causal-lm");
    let exp = expected("qwen2-causal-lm");
    let prompts = exp["prompts"].as_array().unwrap();
    let texts: Vec<&str> = prompts
        .iter()
        .map(|p| p["text"].as_str().unwrap())
        .collect();
    let mut args = vec![
        "run",
        "text-generation",
        "--model",
        dir.to_str().unwrap(),
        "--max-new-tokens",
        "32",
        "--batch-size",
        "2",
    ];
    args.extend(&texts);
    let lines = json_lines(&girder(&args));
    assert_eq!(lines.len(), prompts.len());
    for (line, p) in lines.iter().zip(prompts) {
        // transformers' pipeline returns the prompt and its continuation.
        let full = format!(
            "{}{}",
            p["text"].as_str().unwrap(),
            p["generated_text"].as_str().unwrap()
        );
        assert_eq!(line["generated_text"], full.as_str());
        assert_eq!(line["finish_reason"], p["finish_reason"]);
    }
}

#[test]
fn stream_prints_the_text_and_chat_uses_the_template() {
    let dir = fixture("qwen2-causal-lm");
    let exp = expected("qwen2-causal-lm");
    let p = &exp["prompts"][0];
    let m = dir.to_str().unwrap();
    let out = girder(&[
        "generate",
        "--model",
        m,
        "--max-new-tokens",
        "32",
        "--stream",
        p["text"].as_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text, format!("{}\n", p["generated_text"].as_str().unwrap()));
    let out = girder_with(
        &["chat", "--model", m, "--max-new-tokens", "4"],
        Some(b"Hello\nHow are you?\n"),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2);
}

#[test]
fn bad_options_fail_with_one_line() {
    let dir = fixture("gpt2-causal-lm");
    let m = dir.to_str().unwrap();
    for (args, needle) in [
        (vec!["--temperature", "-1"], "temperature"),
        (vec!["--stop", ""], "stop string 0 is empty"),
        (vec!["--top-p", "0"], "top_p"),
    ] {
        let mut all = vec!["generate", "--model", m];
        all.extend(args);
        all.push("Hello");
        let out = girder(&all);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8(out.stderr).unwrap();
        assert!(err.contains(needle) && err.lines().count() == 1, "{err}");
    }
    // An encoder cannot generate; the error lists the decoders.
    let bert = fixture("bert-base");
    let out = girder(&["generate", "--model", bert.to_str().unwrap(), "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("LlamaForCausalLM"), "{err}");
    // A model without a chat template cannot chat.
    let out = girder_with(&["chat", "--model", m], Some(b"Hello\n"), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("no chat template"));
}

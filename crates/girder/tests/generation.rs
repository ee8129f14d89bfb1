//! Text generation against transformers: every folder under tests/fixtures with an
//! `expected_generate.json` was made by `scripts/make-gen-fixtures` (tiny random GPT-2,
//! LLaMA, Mistral, Qwen2). Prompt tokens must be identical, prompt logits within 1e-4, greedy
//! continuations identical to `model.generate(do_sample=False)`, and a batch of prompts must
//! give each prompt's unbatched result.

use candle_core::{DType, Device, Tensor};
use girder::batch::RaggedBatch;
use girder::generate::chat::Message;
use girder::generate::continuous::{ContinuousBatch, Event};
use girder::generate::{FinishReason, Options, Sampling, TextGenerator};
use girder::models::Logits;
use girder::Error;
use serde::Deserialize;
use std::path::{Path, PathBuf};

const TOLERANCE: f32 = 1e-4;

#[derive(Debug, Deserialize)]
struct ExpectedPrompt {
    text: String,
    input_ids: Vec<u32>,
    generated_ids: Vec<u32>,
    generated_text: String,
    finish_reason: FinishReason,
}

#[derive(Debug, Deserialize)]
struct ExpectedChat {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
    input_ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct Expected {
    #[serde(default)]
    chat: Vec<ExpectedChat>,
    architecture: String,
    max_new_tokens: usize,
    eos_token_ids: Vec<u32>,
    logits_head_columns: usize,
    prompts: Vec<ExpectedPrompt>,
}

struct Fixture {
    name: String,
    dir: PathBuf,
    expected: Expected,
    tensors: std::collections::HashMap<String, Tensor>,
    generator: TextGenerator,
}

fn fixture_dirs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .expect("tests/fixtures exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected_generate.json").is_file())
        .collect();
    dirs.sort();
    assert!(
        dirs.len() >= 4,
        "expected the 4 causal-LM fixtures under {}",
        root.display()
    );
    dirs
}

fn load(dir: &Path) -> Fixture {
    let text = std::fs::read_to_string(dir.join("expected_generate.json")).unwrap();
    let expected: Expected = serde_json::from_str(&text).unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("expected_generate.safetensors"), &Device::Cpu)
            .unwrap();
    let generator = TextGenerator::load(dir.to_str().unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    Fixture {
        name: dir.file_name().unwrap().to_string_lossy().into_owned(),
        dir: dir.to_path_buf(),
        expected,
        tensors,
        generator,
    }
}

fn fixtures() -> Vec<Fixture> {
    fixture_dirs().iter().map(|d| load(d)).collect()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// All-position logits of one prompt, in one prefill pass over a fresh cache.
fn prompt_logits(fx: &Fixture, ids: &[u32]) -> Tensor {
    let model = fx.generator.model();
    let mut cache = model.new_cache(ids.len()).unwrap();
    let mut batch = RaggedBatch::from_encodings([]);
    batch.push_from(ids, 0);
    model
        .forward(&batch, &mut [&mut cache], Logits::All)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap()
}

fn compare_logits(fx: &Fixture, i: usize, logits: &Tensor) -> f32 {
    let cols = fx.expected.logits_head_columns.min(logits.dim(1).unwrap());
    let head = &fx.tensors[&format!("prompt{i}.logits_head")];
    let last = &fx.tensors[&format!("prompt{i}.logits_last")];
    let t = logits.dim(0).unwrap();
    let d1 = max_abs_diff(&logits.narrow(1, 0, cols).unwrap(), head);
    let d2 = max_abs_diff(&logits.get(t - 1).unwrap(), last);
    d1.max(d2)
}

#[test]
fn prompt_tokens_and_logits_match_transformers() {
    let mut failures = Vec::new();
    for fx in fixtures() {
        let mut worst = 0f32;
        for (i, p) in fx.expected.prompts.iter().enumerate() {
            let ids = fx.generator.encode_prompt(&p.text, i).unwrap();
            if ids != p.input_ids {
                failures.push(format!(
                    "{} prompt {i}: tokens {ids:?} != {:?}",
                    fx.name, p.input_ids
                ));
                continue;
            }
            let diff = compare_logits(&fx, i, &prompt_logits(&fx, &ids));
            worst = worst.max(diff);
        }
        println!(
            "{:<20} {:<20} max |logits diff| {worst:.2e}",
            fx.name, fx.expected.architecture
        );
        if worst > TOLERANCE || worst.is_nan() {
            failures.push(format!(
                "{}: logits differ by {worst:.2e} > {TOLERANCE:.0e}",
                fx.name
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn decode_steps_give_the_prefill_logits() {
    // Feeding the prompt one token at a time through the cache must give, at every position,
    // the logits the one-pass prefill gives (transformers' values).
    for fx in fixtures() {
        let model = fx.generator.model();
        let p = &fx.expected.prompts[1];
        let mut cache = model.new_cache(2).unwrap(); // small on purpose: the cache must grow
        let mut rows = Vec::new();
        for (pos, &id) in p.input_ids.iter().enumerate() {
            let mut batch = RaggedBatch::from_encodings([]);
            batch.push_from(&[id], pos);
            rows.push(
                model
                    .forward(&batch, &mut [&mut cache], Logits::Last)
                    .unwrap(),
            );
        }
        let stepped = Tensor::cat(&rows, 0).unwrap();
        let diff = compare_logits(&fx, 1, &stepped);
        println!("{:<20} step-by-step max |logits diff| {diff:.2e}", fx.name);
        assert!(diff <= TOLERANCE, "{}: {diff:.2e}", fx.name);
        assert!(cache.capacity() >= p.input_ids.len());
    }
}

fn options(fx: &Fixture) -> Options {
    Options {
        max_new_tokens: Some(fx.expected.max_new_tokens),
        ..Options::default()
    }
}

#[test]
fn greedy_generation_matches_transformers() {
    let mut failures = Vec::new();
    for fx in fixtures() {
        assert_eq!(
            fx.generator.generation_config().eos_token_ids,
            fx.expected.eos_token_ids,
            "{}",
            fx.name
        );
        for (i, p) in fx.expected.prompts.iter().enumerate() {
            let out = fx
                .generator
                .generate(&[&p.text], &options(&fx))
                .unwrap()
                .remove(0);
            if out.token_ids != p.generated_ids
                || out.finish_reason != p.finish_reason
                || out.text != p.generated_text
            {
                failures.push(format!(
                    "{} prompt {i}:\n  girder       {:?} {:?} {:?}\n  transformers {:?} {:?} {:?}",
                    fx.name,
                    out.token_ids,
                    out.finish_reason,
                    out.text,
                    p.generated_ids,
                    p.finish_reason,
                    p.generated_text
                ));
            }
            assert_eq!(out.prompt_tokens, p.input_ids.len());
            assert_eq!(out.completion_tokens, out.token_ids.len());
        }
        println!(
            "{:<20} greedy: {} prompts identical",
            fx.name,
            fx.expected.prompts.len()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn batched_generation_equals_unbatched() {
    for fx in fixtures() {
        let prompts: Vec<&str> = fx
            .expected
            .prompts
            .iter()
            .map(|p| p.text.as_str())
            .collect();
        let batched = fx.generator.generate(&prompts, &options(&fx)).unwrap();
        for (out, p) in batched.iter().zip(&fx.expected.prompts) {
            assert_eq!(out.token_ids, p.generated_ids, "{}: {:?}", fx.name, p.text);
            assert_eq!(
                out.finish_reason, p.finish_reason,
                "{}: {:?}",
                fx.name, p.text
            );
        }
    }
}

/// Runs `batch` until sequence `id` finishes; its generation and the prompt tokens reused
/// from kept prompts on the way.
fn run_until_finished(
    batch: &mut ContinuousBatch,
    id: girder::generate::continuous::SequenceId,
) -> (girder::generate::Generation, usize) {
    let mut reused = 0;
    loop {
        let step = batch.step().unwrap();
        reused += step.reused_prompt_tokens;
        for event in step.events {
            if let Event::Finished {
                id: done,
                generation,
            } = event
            {
                if done == id {
                    return (generation, reused);
                }
            }
        }
    }
}

#[test]
fn prompts_sharing_a_beginning_reuse_it_and_continue_as_alone() {
    let preamble = "Answer briefly, please:";
    for fx in fixtures() {
        let options = options(&fx);
        let mut batch = ContinuousBatch::new(&fx.generator);
        for (round, p) in fx.expected.prompts.iter().enumerate() {
            let text = format!("{preamble} {}", p.text);
            let alone = fx.generator.generate(&[text.as_str()], &options).unwrap();
            let prompt = fx.generator.encode_prompt(&text, 0).unwrap();
            let id = batch.admit(prompt, &options).unwrap();
            let (generation, reused) = run_until_finished(&mut batch, id);
            assert_eq!(
                generation.token_ids, alone[0].token_ids,
                "{}: {text:?}",
                fx.name
            );
            if round == 0 {
                assert_eq!(reused, 0, "{}: nothing kept yet", fx.name);
            } else {
                assert!(reused >= 4, "{}: {reused} tokens reused", fx.name);
            }
        }
        // Kept nothing: every prompt computed in full, the same continuations.
        let mut plain = ContinuousBatch::new(&fx.generator).with_prefix_cache(0);
        for p in &fx.expected.prompts {
            let text = format!("{preamble} {}", p.text);
            let id = plain
                .admit(fx.generator.encode_prompt(&text, 0).unwrap(), &options)
                .unwrap();
            assert_eq!(run_until_finished(&mut plain, id).1, 0);
        }
    }
}

/// Prompts prefilled in chunks of any size, while others decode beside them, continue as
/// they do alone; a running sequence gets a token in every step of a long prefill.
#[test]
fn chunked_prefill_continues_as_a_whole_prefill() {
    for fx in fixtures() {
        let options = options(&fx);
        let prompts: Vec<String> = fx
            .expected
            .prompts
            .iter()
            .map(|p| format!("{} {}", p.text, p.text))
            .collect();
        let alone: Vec<_> = prompts
            .iter()
            .map(|t| fx.generator.generate(&[t.as_str()], &options).unwrap())
            .collect();
        for chunk in [1, 3, 7, 64] {
            let mut batch = ContinuousBatch::new(&fx.generator)
                .with_prefix_cache(0)
                .with_prefill_chunk(chunk);
            let ids: Vec<_> = prompts
                .iter()
                .map(|t| {
                    let id = batch
                        .admit(fx.generator.encode_prompt(t, 0).unwrap(), &options)
                        .unwrap();
                    // The next prompt joins while this one is prefilled or decodes.
                    let step = batch.step().unwrap();
                    assert!(step.prefill_tokens <= chunk, "{}: {chunk}", fx.name);
                    (id, step)
                })
                .collect();
            let mut finished = std::collections::HashMap::new();
            for (id, step) in &ids {
                for event in &step.events {
                    if let Event::Finished {
                        id: done,
                        generation,
                    } = event
                    {
                        finished.insert(*done, generation.clone());
                    }
                }
                let _ = id;
            }
            while !batch.is_empty() {
                let running = batch.len() - batch.prefilling();
                let step = batch.step().unwrap();
                assert!(step.prefill_tokens <= chunk, "{}: {chunk}", fx.name);
                assert!(step.new_tokens >= running, "{}: {chunk}", fx.name);
                for event in step.events {
                    if let Event::Finished { id, generation } = event {
                        finished.insert(id, generation);
                    }
                }
            }
            for ((id, _), want) in ids.iter().zip(&alone) {
                assert_eq!(
                    finished[id].token_ids, want[0].token_ids,
                    "{}: chunk {chunk}",
                    fx.name
                );
            }
        }
    }
}

#[test]
fn the_context_is_never_exceeded() {
    let fx = load(
        &fixture_dirs()
            .into_iter()
            .find(|d| d.ends_with("llama-causal-lm"))
            .unwrap(),
    );
    let context = fx.generator.model().context_length();
    assert_eq!(context, 64);
    let word = fx.generator.encode_prompt("river", 0).unwrap()[1];
    // A prompt that fills the context leaves no room: a clear error.
    let full = vec![word; context];
    match fx.generator.generate_ids(&[full], &Options::default()) {
        Err(Error::ContextLength {
            index: 0,
            tokens: 65,
            max: 64,
        }) => {}
        other => panic!("expected ContextLength, got {other:?}"),
    }
    // Text longer than the context is refused, naming the input.
    let long = "the river ".repeat(60);
    match fx
        .generator
        .generate(&["ok", long.as_str()], &Options::default())
    {
        Err(Error::ContextLength {
            index: 1, max: 64, ..
        }) => {}
        other => panic!("expected ContextLength, got {other:?}"),
    }
    // Generation stops with `length` when the context is full.
    let prompt = vec![word; context - 3];
    let out = fx
        .generator
        .generate_ids(
            &[prompt],
            &Options {
                max_new_tokens: Some(32),
                eos_token_ids: Some(vec![]),
                ..Options::default()
            },
        )
        .unwrap();
    assert_eq!(out[0].token_ids.len(), 3);
    assert_eq!(out[0].finish_reason, FinishReason::Length);
    let _ = fx.dir;
}

#[test]
fn chat_templates_render_as_transformers() {
    let mut checked = 0;
    for fx in fixtures() {
        for c in &fx.expected.chat {
            let template = fx
                .generator
                .chat_template()
                .expect("the fixture has a template");
            let rendered = template
                .render(&c.messages, c.add_generation_prompt)
                .unwrap();
            assert_eq!(rendered, c.rendered, "{}", fx.name);
            assert_eq!(fx.generator.encode_chat(&rendered).unwrap(), c.input_ids);
            checked += 1;
        }
    }
    assert!(checked >= 4, "no fixture with a chat template");
    // A role the template rejects: raise_exception's message comes back.
    let fx = load(
        &fixture_dirs()
            .into_iter()
            .find(|d| d.ends_with("qwen2-causal-lm"))
            .unwrap(),
    );
    let err = fx
        .generator
        .encode_chat_messages(&[Message::new("tool", "x")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("Unknown role: tool"), "{err}");
}

#[test]
fn streamed_text_equals_the_final_text() {
    for fx in fixtures() {
        let ids: Vec<Vec<u32>> = fx
            .expected
            .prompts
            .iter()
            .map(|p| p.input_ids.clone())
            .collect();
        let mut pieces = vec![String::new(); ids.len()];
        let outs = fx
            .generator
            .generate_from_ids(&ids, &options(&fx), &mut |i, text| pieces[i].push_str(text))
            .unwrap();
        for ((out, streamed), p) in outs.iter().zip(&pieces).zip(&fx.expected.prompts) {
            assert_eq!(out.text, p.generated_text, "{}", fx.name);
            assert_eq!(streamed, &out.text, "{}: {:?}", fx.name, p.text);
        }
    }
}

#[test]
fn stop_strings_end_the_text_before_them() {
    for fx in fixtures() {
        let p = &fx.expected.prompts[1];
        // A stop string taken from the middle of the greedy continuation.
        let chars: Vec<char> = p.generated_text.chars().collect();
        let Some(stop) = (4..chars.len().saturating_sub(3))
            .map(|i| chars[i..i + 3].iter().collect::<String>())
            .find(|s| !s.contains('\u{FFFD}') && !s.trim().is_empty())
        else {
            continue;
        };
        let at = p.generated_text.find(&stop).unwrap();
        let opts = Options {
            stop: vec![stop.clone()],
            ..options(&fx)
        };
        let mut streamed = String::new();
        let out = fx
            .generator
            .generate_from_ids(std::slice::from_ref(&p.input_ids), &opts, &mut |_, t| {
                streamed.push_str(t)
            })
            .unwrap()
            .remove(0);
        assert_eq!(
            out.finish_reason,
            FinishReason::Stop,
            "{}: stop {stop:?}",
            fx.name
        );
        assert_eq!(out.text, p.generated_text[..at], "{}", fx.name);
        assert_eq!(streamed, out.text, "{}", fx.name);
        assert!(p.generated_ids.starts_with(&out.token_ids));
    }
}

#[test]
fn sampling_is_reproducible_and_batch_independent() {
    let fx = load(
        &fixture_dirs()
            .into_iter()
            .find(|d| d.ends_with("llama-causal-lm"))
            .unwrap(),
    );
    let prompts: Vec<&str> = fx
        .expected
        .prompts
        .iter()
        .map(|p| p.text.as_str())
        .collect();
    let opts = |seed| Options {
        max_new_tokens: Some(16),
        eos_token_ids: Some(vec![]),
        sampling: Sampling {
            temperature: 0.8,
            top_k: 50,
            top_p: 0.95,
            min_p: 0.02,
            repetition_penalty: 1.1,
            seed,
        },
        ..Options::default()
    };
    let a = fx.generator.generate(&prompts, &opts(1)).unwrap();
    let b = fx.generator.generate(&prompts, &opts(1)).unwrap();
    assert_eq!(a, b);
    let c = fx.generator.generate(&prompts, &opts(2)).unwrap();
    assert_ne!(a, c);
    for (i, p) in prompts.iter().enumerate() {
        let alone = fx.generator.generate(&[p], &opts(1)).unwrap().remove(0);
        assert_eq!(alone, a[i]);
    }
    // Sampling differs from greedy.
    let greedy: Vec<Vec<u32>> = fx
        .expected
        .prompts
        .iter()
        .map(|p| p.generated_ids.clone())
        .collect();
    assert!(a
        .iter()
        .zip(&greedy)
        .any(|(s, g)| !g.starts_with(&s.token_ids)));
}

#[test]
fn bad_generation_options_are_named() {
    let fx = load(
        &fixture_dirs()
            .into_iter()
            .find(|d| d.ends_with("gpt2-causal-lm"))
            .unwrap(),
    );
    let cases = [
        (
            Options {
                sampling: Sampling {
                    temperature: -1.0,
                    ..Sampling::default()
                },
                ..Options::default()
            },
            "temperature",
        ),
        (
            Options {
                stop: vec![String::new()],
                ..Options::default()
            },
            "stop",
        ),
        (
            Options {
                max_new_tokens: Some(0),
                ..Options::default()
            },
            "max_new_tokens",
        ),
    ];
    for (opts, option) in cases {
        match fx.generator.generate(&["Hello"], &opts) {
            Err(Error::InvalidOption { option: o, .. }) if o == option => {}
            other => panic!("expected InvalidOption {option}, got {other:?}"),
        }
    }
}

/// Writes a GGUF file with one tensor of GGML type `ggml_type` and the given architecture.
fn write_gguf(path: &Path, architecture: &str, ggml_type: u32) {
    let mut b: Vec<u8> = Vec::new();
    let string = |b: &mut Vec<u8>, s: &str| {
        b.extend_from_slice(&(s.len() as u64).to_le_bytes());
        b.extend_from_slice(s.as_bytes());
    };
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes()); // tensors
    b.extend_from_slice(&2u64.to_le_bytes()); // metadata entries
    string(&mut b, "general.architecture");
    b.extend_from_slice(&8u32.to_le_bytes()); // string
    string(&mut b, architecture);
    string(&mut b, &format!("{architecture}.attention.head_count"));
    b.extend_from_slice(&4u32.to_le_bytes()); // u32
    b.extend_from_slice(&1u32.to_le_bytes());
    string(&mut b, "token_embd.weight");
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&256u64.to_le_bytes());
    b.extend_from_slice(&4u64.to_le_bytes());
    b.extend_from_slice(&ggml_type.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    while !b.len().is_multiple_of(32) {
        b.push(0);
    }
    b.extend(std::iter::repeat_n(0u8, 256 * 4 * 4));
    std::fs::write(path, b).unwrap();
}

#[test]
fn unsupported_gguf_files_are_named() {
    let dir = std::env::temp_dir().join(format!("girder-gguf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let arch = dir.join("gpt2.gguf");
    write_gguf(&arch, "gpt2", 0);
    let err = TextGenerator::load(arch.to_str().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedGguf { .. })
            && err.to_string().contains("architecture `gpt2`"),
        "{err}"
    );
    let quant = dir.join("iq2.gguf");
    write_gguf(&quant, "llama", 16); // IQ2_XXS
    let err = TextGenerator::load(quant.to_str().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedGguf { .. }) && err.to_string().contains("IQ2_XXS"),
        "{err}"
    );
    // A file cut inside a tensor's data names that tensor.
    let cut = dir.join("cut.gguf");
    write_gguf(&cut, "llama", 0);
    let bytes = std::fs::read(&cut).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let err = TextGenerator::load(cut.to_str().unwrap()).unwrap_err();
    assert!(
        matches!(err, Error::BadGguf { .. }) && err.to_string().contains("token_embd"),
        "{err}"
    );
    let garbage = dir.join("garbage.gguf");
    std::fs::write(&garbage, b"not a gguf file").unwrap();
    let err = TextGenerator::load(garbage.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::BadGguf { .. }), "{err}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[derive(Debug, Deserialize)]
struct ProcessorSettings {
    #[serde(default)]
    temperature: Option<f32>,
    #[serde(default)]
    top_k: Option<usize>,
    #[serde(default)]
    top_p: Option<f32>,
    #[serde(default)]
    min_p: Option<f32>,
    #[serde(default)]
    repetition_penalty: Option<f32>,
    #[serde(default)]
    do_sample: bool,
}

#[derive(Debug, Deserialize)]
struct ProcessorCase {
    settings: ProcessorSettings,
    processors: Vec<String>,
    seen: Vec<u32>,
    logits: Vec<f32>,
    /// `null` where transformers set the score to -inf.
    processed: Vec<Option<f32>>,
}

#[test]
fn logits_processors_match_transformers() {
    // tests/fixtures/logits-processors.json: transformers' own processor chain, as `generate`
    // builds it, applied to random rows (scripts/make-gen-fixtures processors).
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/logits-processors.json");
    #[derive(Deserialize)]
    struct File {
        cases: Vec<ProcessorCase>,
    }
    let file: File = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert!(file.cases.len() >= 5);
    for case in &file.cases {
        let s = &case.settings;
        let sampling = Sampling {
            temperature: if s.do_sample {
                s.temperature.unwrap_or(1.0)
            } else {
                0.0
            },
            top_k: s.top_k.unwrap_or(0),
            top_p: s.top_p.unwrap_or(1.0),
            min_p: s.min_p.unwrap_or(0.0),
            repetition_penalty: s.repetition_penalty.unwrap_or(1.0),
            seed: 0,
        };
        let mut logits = case.logits.clone();
        girder::generate::sampling::Sampler::new(sampling).process(&mut logits, &case.seen);
        for (i, (ours, theirs)) in logits.iter().zip(&case.processed).enumerate() {
            match theirs {
                None => assert_eq!(
                    *ours,
                    f32::NEG_INFINITY,
                    "{:?} token {i}: transformers removed it",
                    case.processors
                ),
                Some(v) => assert!(
                    (ours - v).abs() <= 1e-6 * v.abs().max(1.0),
                    "{:?} token {i}: girder {ours}, transformers {v}",
                    case.processors
                ),
            }
        }
        let kept = case.processed.iter().filter(|v| v.is_some()).count();
        println!("{:?}: {kept} tokens kept, as transformers", case.processors);
    }
}

//! Encoder-decoders against transformers (fixtures from `scripts/make-seq2seq-fixtures`): for
//! T5, T5 v1.1, BART and Marian, the source token ids are identical, the encoder's last hidden
//! state and the teacher-forced decoder logits are within 1e-4, every greedy and beam-search
//! output of `model.generate` (beams, length penalties, early stopping, n-gram blocking,
//! minimum lengths, forced BOS/EOS, repetition penalty) is the same token for token, and the
//! text2text, summarization and translation pipelines return the same texts. BART's sequence
//! classifier's logits are within 1e-4.

mod common;

use candle_core::{Device, Tensor};
use common::{fixtures_dir, max_abs_diff};
use girder::batch::RaggedBatch;
use girder::generate::{EarlyStopping, GenerationConfig, Seq2SeqGenerator};
use girder::models::{EncoderInput, Logits};
use girder::pipelines::{text2text_generation, translation_pair, Task};
use girder::LoadOptions;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;

const TOLERANCE: f32 = 1e-4;

#[derive(Debug, Deserialize)]
struct GenerateCase {
    options: serde_json::Map<String, Value>,
    outputs: Vec<ExpectedOutput>,
}

#[derive(Debug, Deserialize)]
struct ExpectedOutput {
    ids: Vec<u32>,
    text: String,
}

#[derive(Debug, Deserialize)]
struct PipelineCase {
    task: String,
    #[serde(default)]
    kwargs: serde_json::Map<String, Value>,
    inputs: Vec<String>,
    outputs: Vec<Vec<serde_json::Map<String, Value>>>,
}

#[derive(Debug, Deserialize)]
struct Expected {
    inputs: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    #[serde(default)]
    decoder_input_ids: Vec<Vec<u32>>,
    #[serde(default)]
    generate: Vec<GenerateCase>,
    #[serde(default)]
    pipeline: Vec<PipelineCase>,
}

struct Fixture {
    name: &'static str,
    expected: Expected,
    tensors: HashMap<String, Tensor>,
    generator: Seq2SeqGenerator,
}

fn fixture(name: &'static str) -> Fixture {
    let dir = fixtures_dir().join(name);
    let text = std::fs::read_to_string(dir.join("expected_seq2seq.json")).unwrap();
    let expected: Expected = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{name}: bad expected_seq2seq.json: {e}"));
    let tensors =
        candle_core::safetensors::load(dir.join("expected_seq2seq.safetensors"), &Device::Cpu)
            .unwrap();
    let generator = girder::load(dir.to_str().unwrap(), &LoadOptions::default())
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .into_encoder_decoder()
        .unwrap();
    Fixture {
        name,
        expected,
        tensors,
        generator,
    }
}

const TEXT_MODELS: &[&str] = &[
    "t5-seq2seq",
    "t5-v1_1-seq2seq",
    "bart-seq2seq",
    "marian-seq2seq",
];

#[test]
fn tokens_encoder_states_and_logits_match_transformers() {
    for name in TEXT_MODELS {
        let f = fixture(name);
        let tokenizer = f.generator.text_tokenizer();
        let mut batch = RaggedBatch::from_encodings([]);
        for (i, text) in f.expected.inputs.iter().enumerate() {
            let encoded = tokenizer.encode(text, i).unwrap();
            assert_eq!(
                encoded.ids, f.expected.input_ids[i],
                "{name}: ids of {text:?}"
            );
            batch.push(&encoded.ids, &[]);
        }
        let model = f.generator.model();
        // All inputs in one packed pass: each equals transformers' run of it alone.
        let (states, cross) = model.encode(EncoderInput::Tokens(&batch)).unwrap();
        let (mut encoder_max, mut logits_max) = (0f32, 0f32);
        for i in 0..f.expected.inputs.len() {
            let expected = &f.tensors[&format!("input{i}.encoder_hidden")];
            let diff = max_abs_diff(&states.rows(i).unwrap(), expected, name);
            assert!(
                diff < TOLERANCE,
                "{name}: input {i} encoder state off by {diff}"
            );
            encoder_max = encoder_max.max(diff);
        }
        // Teacher-forced decoder logits, every input's decoder tokens in one pass.
        let mut decoder = RaggedBatch::from_encodings([]);
        let mut caches = Vec::new();
        for (i, ids) in f.expected.decoder_input_ids.iter().enumerate() {
            decoder.push_from(ids, 0);
            caches.push(model.new_cache(cross[i].clone(), ids.len()).unwrap());
        }
        let mut refs: Vec<_> = caches.iter_mut().collect();
        let logits = model.decode(&decoder, &mut refs, Logits::All).unwrap();
        for i in 0..f.expected.decoder_input_ids.len() {
            let expected = &f.tensors[&format!("input{i}.logits")];
            let range = decoder.seq_range(i);
            let ours = logits.narrow(0, range.start, range.len()).unwrap();
            let ours = ours.narrow(1, 0, expected.dims()[1]).unwrap();
            let diff = max_abs_diff(&ours, expected, name);
            assert!(diff < TOLERANCE, "{name}: input {i} logits off by {diff}");
            logits_max = logits_max.max(diff);
        }
        // The parity table's row (`cargo test --test seq2seq -- --nocapture`).
        eprintln!(
            "{name}: {} inputs, token ids identical; encoder states max |diff| {encoder_max:.1e}, \
             decoder logits max |diff| {logits_max:.1e} ({} positions)",
            f.expected.inputs.len(),
            decoder.total_tokens()
        );
    }
}

/// The generation settings of a fixture case: the model's, with the case's kwargs on top.
fn settings(
    generator: &Seq2SeqGenerator,
    options: &serde_json::Map<String, Value>,
) -> GenerationConfig {
    let mut c = generator.generation_config().clone();
    for (key, value) in options {
        let int = || value.as_u64().map(|v| v as usize);
        match key.as_str() {
            "num_beams" => c.num_beams = int().unwrap(),
            "do_sample" => c.do_sample = value.as_bool().unwrap(),
            "max_new_tokens" => c.max_new_tokens = int(),
            "max_length" => c.max_length = int(),
            "min_length" => c.min_length = int().unwrap(),
            "min_new_tokens" => c.min_new_tokens = int(),
            "length_penalty" => c.length_penalty = value.as_f64().unwrap() as f32,
            "repetition_penalty" => c.repetition_penalty = value.as_f64().unwrap() as f32,
            "no_repeat_ngram_size" => c.no_repeat_ngram_size = int().unwrap(),
            "forced_bos_token_id" => c.forced_bos_token_id = value.as_u64().map(|v| v as u32),
            "forced_eos_token_id" => c.forced_eos_token_id = value.as_u64().map(|v| vec![v as u32]),
            "early_stopping" => {
                c.early_stopping = match value {
                    Value::Bool(true) => EarlyStopping::Finished,
                    Value::Bool(false) => EarlyStopping::Heuristic,
                    _ => EarlyStopping::Never,
                }
            }
            other => panic!("a fixture option girder's test does not map: {other}"),
        }
    }
    c
}

#[test]
fn greedy_and_beam_search_match_generate() {
    for name in TEXT_MODELS {
        let f = fixture(name);
        let encodings = f
            .generator
            .text_tokenizer()
            .encode_all(&f.expected.inputs)
            .unwrap();
        let mut checked = 0;
        for case in &f.expected.generate {
            let config = settings(&f.generator, &case.options);
            // Every input of the case in one batch: each output is what it is alone.
            let outs = f
                .generator
                .generate_encoded(&encodings, &config, 0)
                .unwrap();
            for (i, (out, expected)) in outs.iter().zip(&case.outputs).enumerate() {
                assert_eq!(
                    out.token_ids, expected.ids,
                    "{name}: input {i} with {:?}",
                    case.options
                );
                let text = f.generator.decode(&out.token_ids, i).unwrap();
                assert_eq!(text, expected.text, "{name}: input {i} text");
                checked += 1;
            }
        }
        assert!(checked >= 20, "{name}: only {checked} generations checked");
        eprintln!(
            "{name}: {checked} generations ({} settings) identical to generate",
            f.expected.generate.len()
        );
    }
}

#[test]
fn text2text_pipelines_match_transformers_4() {
    for name in TEXT_MODELS {
        let f = fixture(name);
        let mut checked = 0;
        for case in &f.expected.pipeline {
            let task = Task::parse(&case.task).unwrap();
            // The pipeline's kwargs are generation options.
            let generation = serde_json::from_value(Value::Object(case.kwargs.clone()))
                .unwrap_or_else(|e| panic!("{name}: pipeline kwargs {:?}: {e}", case.kwargs));
            let options = text2text_generation::Options {
                task_name: translation_pair(&case.task).map(|_| case.task.clone()),
                generation,
                ..Default::default()
            };
            let outs = text2text_generation::run(&f.generator, task, &case.inputs, &options)
                .unwrap_or_else(|e| panic!("{name} {}: {e}", case.task));
            for (out, expected) in outs.iter().zip(&case.outputs) {
                let ours = serde_json::to_value(out).unwrap();
                let key = text2text_generation::text_key(task);
                assert_eq!(
                    ours[key], expected[0][key],
                    "{name}: {} of {:?}",
                    case.task, out
                );
                checked += 1;
            }
        }
        eprintln!("{name}: {checked} pipeline outputs identical to transformers 4.57's");
    }
}

#[test]
fn bart_sequence_classifier_matches_transformers() {
    let dir = fixtures_dir().join("bart-seqcls");
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_seq2seq.json")).unwrap())
            .unwrap();
    let tensors =
        candle_core::safetensors::load(dir.join("expected_seq2seq.safetensors"), &Device::Cpu)
            .unwrap();
    let model =
        girder::pipelines::Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let encodings = model.encode_texts(&expected.inputs).unwrap();
    for (i, e) in encodings.iter().enumerate() {
        assert_eq!(e.ids, expected.input_ids[i], "ids of input {i}");
    }
    // All texts in one packed batch.
    let batch = RaggedBatch::from_encodings(encodings.iter());
    let out = model.encoder.encode(&batch).unwrap();
    let logits = model.encoder.head_logits(&out, &batch, None).unwrap();
    let mut logits_max = 0f32;
    for i in 0..expected.inputs.len() {
        let want = tensors[&format!("input{i}.logits")].unsqueeze(0).unwrap();
        let diff = max_abs_diff(&logits.narrow(0, i, 1).unwrap(), &want, "bart-seqcls");
        assert!(diff < TOLERANCE, "input {i} logits off by {diff}");
        logits_max = logits_max.max(diff);
    }
    eprintln!(
        "bart-seqcls: {} inputs, token ids identical; NLI logits max |diff| {logits_max:.1e}",
        expected.inputs.len()
    );
}

#[test]
fn a_text_model_refuses_audio_and_other_tasks() {
    let f = fixture("t5-seq2seq");
    let features = Tensor::zeros((1, 80, 3000), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = f
        .generator
        .model()
        .encode(EncoderInput::Features(&features))
        .unwrap_err()
        .to_string();
    assert!(err.contains("audio"), "{err}");
    let loaded = girder::load(
        fixtures_dir().join("t5-seq2seq").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let err = loaded.supports(Task::FillMask).unwrap_err().to_string();
    assert!(err.contains("encoder-decoder"), "{err}");
    let _ = Path::new(f.name);
}

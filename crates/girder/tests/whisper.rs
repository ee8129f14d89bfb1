//! Whisper against transformers (fixtures from `scripts/make-seq2seq-fixtures`): the
//! log-mel features of `WhisperFeatureExtractor` (80 and 128 bins, synthetic signals and the
//! fixture's WAV files) within 1e-4; on a small Whisper trained to transcribe its three clips
//! (with the real whisper tiny.en tokenizer), the encoder state and the teacher-forced logits
//! within 1e-4, `model.generate` token for token (greedy, 4 beams, timestamps, length limits),
//! and the automatic-speech-recognition pipeline's text and timed chunks.

mod common;

use candle_core::{Device, Tensor};
use common::{fixtures_dir, max_abs_diff};
use girder::audio::{self, WhisperFeatureExtractor};
use girder::batch::RaggedBatch;
use girder::generate::{Overrides, Seq2SeqGenerator};
use girder::models::{EncoderInput, Logits};
use girder::pipelines::automatic_speech_recognition::{self as asr, AudioInput, Transcriber};
use girder::LoadOptions;
use serde::Deserialize;
use serde_json::Value;
use std::collections::HashMap;

const TOLERANCE: f32 = 1e-4;

fn tensors(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures_dir().join(file), &Device::Cpu).unwrap()
}

#[test]
fn log_mel_features_match_the_feature_extractor() {
    let expected = tensors("whisper-features.safetensors");
    for i in 0..4 {
        let signal: Vec<f32> = expected[&format!("signal{i}")].to_vec1().unwrap();
        for bins in [80, 128] {
            let extractor = WhisperFeatureExtractor::new(bins);
            let frames = extractor.nb_max_frames();
            let ours = extractor.extract(&signal);
            let ours = Tensor::from_vec(ours, (bins, frames), &Device::Cpu).unwrap();
            let head = &expected[&format!("features{i}.mel{bins}")];
            let diff = max_abs_diff(
                &ours.narrow(1, 0, head.dims()[1]).unwrap(),
                head,
                "features",
            );
            assert!(diff < TOLERANCE, "signal {i}, {bins} bins: off by {diff}");
            let last = &expected[&format!("features{i}.mel{bins}_last")];
            let ours_last = ours.narrow(1, frames - 1, 1).unwrap().squeeze(1).unwrap();
            let diff = max_abs_diff(&ours_last, last, "last frame");
            assert!(
                diff < TOLERANCE,
                "signal {i}, {bins} bins, last frame: off by {diff}"
            );
        }
    }
}

#[derive(Debug, Deserialize)]
struct Expected {
    inputs: Vec<String>,
    decoder_input_ids: Vec<Vec<u32>>,
    generate: Vec<GenerateCase>,
    pipeline: Vec<PipelineCase>,
}

#[derive(Debug, Deserialize)]
struct GenerateCase {
    options: serde_json::Map<String, Value>,
    outputs: Vec<GenerateOutput>,
}

#[derive(Debug, Deserialize)]
struct GenerateOutput {
    ids: Vec<u32>,
}

#[derive(Debug, Deserialize)]
struct PipelineCase {
    kwargs: serde_json::Map<String, Value>,
    outputs: Vec<Value>,
}

struct Fixture {
    expected: Expected,
    tensors: HashMap<String, Tensor>,
    generator: Seq2SeqGenerator,
    /// Each clip's samples, as a reader of its WAV gets them.
    clips: Vec<Vec<f32>>,
}

fn fixture() -> Fixture {
    let dir = fixtures_dir().join("whisper-asr");
    let expected: Expected =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected_seq2seq.json")).unwrap())
            .unwrap();
    let generator = girder::load(dir.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .into_encoder_decoder()
        .unwrap();
    let clips = expected
        .inputs
        .iter()
        .map(|f| audio::read_file(&dir.join(f), 16000).unwrap())
        .collect();
    Fixture {
        expected,
        tensors: tensors("whisper-asr/expected_seq2seq.safetensors"),
        generator,
        clips,
    }
}

/// The clips' features `[clips, 80, 3000]`.
fn features(f: &Fixture) -> Tensor {
    let extractor = f.generator.feature_extractor().unwrap();
    let all: Vec<f32> = f.clips.iter().flat_map(|c| extractor.extract(c)).collect();
    Tensor::from_vec(all, (f.clips.len(), 80, 3000), &Device::Cpu).unwrap()
}

#[test]
fn features_encoder_and_logits_match_transformers() {
    let f = fixture();
    let features = features(&f);
    let model = f.generator.model();
    // Every clip in one encoder pass.
    let (states, cross) = model.encode(EncoderInput::Features(&features)).unwrap();
    let mut decoder = RaggedBatch::from_encodings([]);
    let mut caches = Vec::new();
    for (i, ids) in f.expected.decoder_input_ids.iter().enumerate() {
        let want = &f.tensors[&format!("input{i}.features")];
        let diff = max_abs_diff(&features.get(i).unwrap(), want, "features");
        assert!(diff < TOLERANCE, "clip {i}: features off by {diff}");
        let want = &f.tensors[&format!("input{i}.encoder_hidden")];
        let diff = max_abs_diff(&states.rows(i).unwrap(), want, "encoder");
        assert!(diff < TOLERANCE, "clip {i}: encoder state off by {diff}");
        decoder.push_from(ids, 0);
        caches.push(model.new_cache(cross[i].clone(), ids.len()).unwrap());
    }
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let logits = model.decode(&decoder, &mut refs, Logits::All).unwrap();
    for i in 0..f.expected.decoder_input_ids.len() {
        let range = decoder.seq_range(i);
        let rows = logits.narrow(0, range.start, range.len()).unwrap();
        let want = &f.tensors[&format!("input{i}.logits")];
        let diff = max_abs_diff(&rows.narrow(1, 0, 1024).unwrap(), want, "logits");
        assert!(diff < TOLERANCE, "clip {i}: logits off by {diff}");
        let last = rows.get(range.len() - 1).unwrap();
        let diff = max_abs_diff(&last, &f.tensors[&format!("input{i}.logits_last")], "last");
        assert!(diff < TOLERANCE, "clip {i}: last row off by {diff}");
    }
}

#[test]
fn generate_matches_whisper_generate() {
    let f = fixture();
    let features = features(&f);
    for case in &f.expected.generate {
        let get = |k: &str| case.options.get(k);
        let options = asr::Options {
            return_timestamps: get("return_timestamps")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            generation: Overrides {
                // model.generate's own default, not the pipeline's 5 beams.
                num_beams: Some(get("num_beams").and_then(Value::as_u64).unwrap_or(1) as usize),
                max_new_tokens: get("max_new_tokens")
                    .and_then(Value::as_u64)
                    .map(|n| n as usize),
                ..Overrides::default()
            },
            ..asr::Options::default()
        };
        let transcriber = Transcriber::new(&f.generator, &options).unwrap();
        let prompts = transcriber.prompts(&features).unwrap();
        // All clips in one batch.
        let outs = f
            .generator
            .generate_from(
                EncoderInput::Features(&features),
                &prompts,
                transcriber.config(),
                0,
            )
            .unwrap();
        for (i, (out, want)) in outs.iter().zip(&case.outputs).enumerate() {
            assert_eq!(out.token_ids, want.ids, "clip {i} with {:?}", case.options);
        }
    }
}

#[test]
fn the_pipeline_matches_transformers() {
    let f = fixture();
    let dir = fixtures_dir().join("whisper-asr");
    let inputs: Vec<AudioInput> = f
        .expected
        .inputs
        .iter()
        .map(|n| asr::file(dir.join(n)))
        .collect();
    for case in &f.expected.pipeline {
        let options = asr::Options {
            return_timestamps: case
                .kwargs
                .get("return_timestamps")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            ..asr::Options::default()
        };
        let outs = asr::run(&f.generator, &inputs, &options).unwrap();
        for (out, want) in outs.iter().zip(&case.outputs) {
            assert_eq!(out.text, want["text"].as_str().unwrap());
            match want.get("chunks") {
                None => assert!(out.chunks.is_none()),
                Some(chunks) => {
                    let ours = serde_json::to_value(out.chunks.as_ref().unwrap()).unwrap();
                    assert_eq!(&ours, chunks, "chunks of {:?}", out.text);
                }
            }
        }
    }
}

#[test]
fn long_audio_is_read_in_windows_with_strides() {
    // 70 s: the three clips repeated with silence between, far past one 30 s window.
    let f = fixture();
    let mut long = Vec::new();
    while long.len() < 70 * 16000 {
        for clip in &f.clips {
            long.extend_from_slice(clip);
            long.extend(std::iter::repeat_n(0.0, 16000));
        }
    }
    let options = asr::Options {
        generation: Overrides {
            num_beams: Some(1),
            ..Overrides::default()
        },
        ..asr::Options::default()
    };
    let transcriber = Transcriber::new(&f.generator, &options).unwrap();
    let mut reader = transcriber
        .open(&AudioInput::Samples {
            name: "long".into(),
            samples: long.clone(),
            sampling_rate: None,
        })
        .unwrap();
    let mut windows = Vec::new();
    while let Some(w) = reader.next_window().unwrap() {
        windows.push((w.samples.len(), w.stride_left, w.stride_right));
    }
    // 30 s windows stepping by 20 s with 5 s strides, as chunk_iter cuts them.
    let (chunk, stride) = (30 * 16000, 5 * 16000);
    assert_eq!(windows[0], (chunk, 0, stride));
    assert_eq!(windows[1], (chunk, stride, stride));
    let last = windows.last().unwrap();
    assert_eq!((last.1, last.2), (stride, 0));
    assert_eq!(
        windows.len(),
        (long.len() - chunk).div_ceil(chunk - 2 * stride) + 1
    );
    let out = asr::run(
        &f.generator,
        &[AudioInput::Samples {
            name: "long".into(),
            samples: long,
            sampling_rate: None,
        }],
        &options,
    )
    .unwrap();
    assert!(out[0].text.contains("Front center."), "{}", out[0].text);
    assert!((out[0].audio_seconds - 70.0).abs() < 10.0);
}

#[test]
fn bad_audio_is_named() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.wav");
    std::fs::write(&text, "not audio at all").unwrap();
    let err = asr::run(&f.generator, &[asr::file(&text)], &asr::Options::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("notes.wav"), "{err}");
    let missing = dir.path().join("missing.flac");
    let err = asr::run(
        &f.generator,
        &[asr::file(&missing)],
        &asr::Options::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("missing.flac"), "{err}");
    // An English-only model takes no language.
    let options = asr::Options {
        language: Some("fr".into()),
        ..asr::Options::default()
    };
    let err = asr::run(
        &f.generator,
        &[asr::file(fixtures_dir().join("whisper-asr/silence.wav"))],
        &options,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("English-only"), "{err}");
}

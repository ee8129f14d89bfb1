//! The real sentence-transformers models, all-MiniLM-L6-v2 (BERT) and all-mpnet-base-v2
//! (MPNet), against values sentence-transformers computed on the same files
//! (scripts/make-fixtures → tests/fixtures/real/). The weights are not committed:
//! `scripts/fetch-models` puts them in models/.

mod common;

use girder::batch::RaggedBatch;
use girder::pipelines::{embeddings, Model};
use girder::LoadOptions;
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize)]
struct Expected {
    max_length: usize,
    texts: Vec<String>,
    input_ids: Vec<Vec<u32>>,
    truncated: Vec<bool>,
    embeddings: Vec<Vec<f32>>,
    cosine_similarity: Vec<Vec<f32>>,
}

/// A real model: its folder under models/ and its expected values under fixtures/real/.
struct Real {
    folder: &'static str,
    expected: &'static str,
}

const MINILM: Real = Real {
    folder: "all-MiniLM-L6-v2",
    expected: "all-minilm-l6-v2.json",
};

const MPNET: Real = Real {
    folder: "all-mpnet-base-v2",
    expected: "all-mpnet-base-v2.json",
};

impl Real {
    fn load(&self) -> Model {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(self.folder);
        assert!(
            dir.join("model.safetensors").is_file(),
            "{} is missing: run `scripts/fetch-models` first",
            dir.display()
        );
        Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap()
    }

    fn expected(&self) -> Expected {
        let path = common::fixtures_dir().join("real").join(self.expected);
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn minilm_matches_sentence_transformers() {
    // tokenizer.json pads to 128 and truncates at 128; the real limit is sentence_bert_config's 256.
    matches_sentence_transformers(&MINILM, 256);
}

#[test]
fn mpnet_matches_sentence_transformers() {
    // tokenizer.json pads and truncates at 128 too; sentence_bert_config says 384, below the
    // 512 positions MPNet's 514-row table leaves after its padding offset.
    matches_sentence_transformers(&MPNET, 384);
}

fn matches_sentence_transformers(real: &Real, max_length: usize) {
    let exp = real.expected();
    let model = real.load();
    assert_eq!(model.tokenizer.max_length(), max_length);
    assert_eq!(model.tokenizer.max_length(), exp.max_length);
    for (i, text) in exp.texts.iter().enumerate() {
        let enc = model.tokenizer.encode(text, i).unwrap();
        assert_eq!(enc.ids, exp.input_ids[i], "token ids of text {i}");
        assert_eq!(
            enc.truncated, exp.truncated[i],
            "truncated flag of text {i}"
        );
    }
    // All texts in one ragged batch, as `girder run embeddings` does.
    let out = embeddings::run(&model, &exp.texts, &embeddings::Options::default()).unwrap();
    let mut worst = 0.0f32;
    for (got, want) in out.iter().zip(&exp.embeddings) {
        for (a, b) in got.embedding.iter().zip(want) {
            worst = worst.max((a - b).abs());
        }
    }
    let mut worst_cos = 0.0f32;
    for (i, row) in exp.cosine_similarity.iter().enumerate() {
        for (j, want) in row.iter().enumerate() {
            let cos = dot(&out[i].embedding, &out[j].embedding);
            worst_cos = worst_cos.max((cos - want).abs());
        }
    }
    println!(
        "{}: max |embedding diff| {worst:e}, max |cosine diff| {worst_cos:e}",
        real.folder
    );
    assert!(worst <= 1e-4, "embedding diff {worst}");
    assert!(worst_cos <= 1e-4, "cosine diff {worst_cos}");
    assert!(out[exp.texts.len() - 1]
        .embedding
        .iter()
        .all(|x| x.is_finite()));
}

#[test]
fn minilm_batch_equals_one_at_a_time() {
    batch_equals_one_at_a_time(&MINILM);
}

#[test]
fn mpnet_batch_equals_one_at_a_time() {
    batch_equals_one_at_a_time(&MPNET);
}

fn batch_equals_one_at_a_time(real: &Real) {
    let exp = real.expected();
    let model = real.load();
    let encodings = model.encode_texts(&exp.texts).unwrap();
    let packed = model
        .encoder
        .encode(&RaggedBatch::from_encodings(&encodings))
        .unwrap();
    let packed = packed.last_hidden_state.to_vec2::<f32>().unwrap();
    let mut row = 0;
    let mut worst = 0.0f32;
    for enc in &encodings {
        let single = model
            .encoder
            .encode(&RaggedBatch::from_encodings([enc]))
            .unwrap();
        for r in single.last_hidden_state.to_vec2::<f32>().unwrap() {
            for (a, b) in r.iter().zip(&packed[row]) {
                worst = worst.max((a - b).abs());
            }
            row += 1;
        }
    }
    println!(
        "{}: ragged batch vs one at a time: max diff {worst:e}",
        real.folder
    );
    assert!(worst <= 1e-5, "{worst}");
}

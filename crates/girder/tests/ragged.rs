//! A packed batch gives the same results as running each text alone (within 1e-5), for
//! every architecture and head, and the same as transformers' padded batch.

mod common;

use candle_core::Tensor;
use common::{fixture_folders, max_abs_diff, Fixture};
use girder::batch::RaggedBatch;
use girder::pipelines::Model;
use girder::LoadOptions;

/// The bound, for hidden states, pooler outputs and head outputs alike.
const TOLERANCE: f32 = 1e-5;

#[test]
fn batch_equals_one_at_a_time_for_every_fixture() {
    let mut failures = Vec::new();
    for dir in fixture_folders() {
        let fx = Fixture::load(&dir);
        let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let encodings = model.encode_texts(&fx.expected.texts).unwrap();
        let batch = RaggedBatch::from_encodings(&encodings);
        let packed = model.encoder.encode(&batch).unwrap();
        let has_head = model.encoder.head() != girder::models::Head::Base;
        let packed_head =
            has_head.then(|| model.encoder.head_logits(&packed, &batch, None).unwrap());
        let mut worst = 0.0f32;
        let mut worst_head = 0.0f32;
        for (i, enc) in encodings.iter().enumerate() {
            let single_batch = RaggedBatch::from_encodings([enc]);
            let single = model.encoder.encode(&single_batch).unwrap();
            let range = batch.seq_range(i);
            let rows = packed
                .last_hidden_state
                .narrow(0, range.start, range.len())
                .unwrap();
            worst = worst.max(max_abs_diff(&single.last_hidden_state, &rows, "hidden"));
            if let (Some(p), Some(s)) = (&packed.pooler_output, &single.pooler_output) {
                worst = worst.max(max_abs_diff(&p.narrow(0, i, 1).unwrap(), s, "pooler"));
            }
            if let Some(packed_head) = &packed_head {
                let single_head = model
                    .encoder
                    .head_logits(&single, &single_batch, None)
                    .unwrap();
                let rows: Tensor = if packed_head.dim(0).unwrap() == batch.num_seqs() {
                    packed_head.narrow(0, i, 1).unwrap()
                } else {
                    packed_head.narrow(0, range.start, range.len()).unwrap()
                };
                worst_head = worst_head.max(max_abs_diff(&single_head, &rows, "head"));
            }
        }
        println!(
            "{:<26} ragged vs single: hidden {worst:.2e}, head {worst_head:.2e}",
            fx.name
        );
        if worst > TOLERANCE || worst_head > TOLERANCE {
            failures.push(format!(
                "{}: hidden {worst:e}, head {worst_head:e}",
                fx.name
            ));
        }
        // The oracle's padded batch (attention mask), sliced to real lengths.
        for (i, _) in encodings.iter().enumerate() {
            if let Some(padded) = fx.tensor(&format!("batch.last_hidden_state_text{i}")) {
                let range = batch.seq_range(i);
                let rows = packed
                    .last_hidden_state
                    .narrow(0, range.start, range.len())
                    .unwrap();
                let d = max_abs_diff(padded, &rows, "padded");
                if d > 1e-4 {
                    failures.push(format!(
                        "{}: text {i} differs from transformers' padded batch by {d:e}",
                        fx.name
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn many_small_batches_give_the_same_results_in_input_order() {
    let dir = common::fixtures_dir().join("bert-st-mean");
    let fx = Fixture::load(&dir);
    let one_batch = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let small = LoadOptions {
        max_batch_tokens: 16,
        ..Default::default()
    };
    let many_batches = Model::load(dir.to_str().unwrap(), &small).unwrap();
    let opts = girder::pipelines::embeddings::Options::default();
    let a = girder::pipelines::embeddings::run(&one_batch, &fx.expected.texts, &opts).unwrap();
    let b = girder::pipelines::embeddings::run(&many_batches, &fx.expected.texts, &opts).unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        let d = x
            .embedding
            .iter()
            .zip(&y.embedding)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(d <= 1e-5, "{d}");
        assert_eq!(x.truncated, y.truncated);
    }
}

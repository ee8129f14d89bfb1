//! Parity with transformers: every fixture under tests/fixtures was made by
//! `scripts/make-fixtures` with transformers as the oracle. Tokens must be identical,
//! hidden states and logits within 1e-4 (f32).

mod common;

use candle_core::Tensor;
use common::{fixture_folders, max_abs_diff, Fixture};
use girder::batch::RaggedBatch;
use girder::pipelines::{embeddings, Model};
use girder::LoadOptions;

const TOLERANCE: f32 = 1e-4;

struct Report {
    fixture: String,
    hidden: f32,
    pooler: f32,
    head: f32,
    failures: Vec<String>,
}

fn check_fixture(fx: &Fixture) -> Report {
    let mut report = Report {
        fixture: fx.name.clone(),
        hidden: 0.0,
        pooler: 0.0,
        head: 0.0,
        failures: Vec::new(),
    };
    let model = match Model::load(fx.dir.to_str().unwrap(), &LoadOptions::default()) {
        Ok(m) => m,
        Err(e) => {
            report.failures.push(format!("load: {e}"));
            return report;
        }
    };
    let exp = &fx.expected;
    if model.tokenizer.max_length() != exp.max_length {
        report.failures.push(format!(
            "max_length {} != expected {}",
            model.tokenizer.max_length(),
            exp.max_length
        ));
    }
    if model.encoder.class_name() != exp.architecture {
        report.failures.push(format!(
            "class {} != {}",
            model.encoder.class_name(),
            exp.architecture
        ));
    }
    let mask_id = model.tokenizer.mask_token_id();
    for (i, text) in exp.texts.iter().enumerate() {
        let enc = match model.tokenizer.encode(text, i) {
            Ok(e) => e,
            Err(e) => {
                report.failures.push(format!("text {i}: encode: {e}"));
                continue;
            }
        };
        let want = &exp.encodings[i];
        let checks = [
            ("input_ids", enc.ids == want.input_ids),
            ("token_type_ids", enc.type_ids == want.token_type_ids),
            ("tokens", enc.tokens == want.tokens),
            ("offsets", enc.offsets == want.offsets),
            ("word_ids", enc.word_ids == want.word_ids),
            (
                "special_tokens_mask",
                enc.special_tokens_mask == want.special_tokens_mask,
            ),
            ("truncated", enc.truncated == want.truncated),
        ];
        for (what, ok) in checks {
            if !ok {
                report
                    .failures
                    .push(format!("text {i} ({text:?}): {what} differ"));
            }
        }
        if enc.ids != want.input_ids {
            continue;
        }
        let batch = RaggedBatch::from_encodings([&enc]);
        let out = model.encoder.encode(&batch).unwrap();
        let mut compare = |name: &str, actual: &Tensor, slot: &mut f32| {
            let key = format!("text{i}.{name}");
            if let Some(expected) = fx.tensor(&key) {
                let d = max_abs_diff(expected, actual, &key);
                *slot = slot.max(d);
                if d > TOLERANCE {
                    report.failures.push(format!("{key}: max abs diff {d:e}"));
                }
            }
        };
        compare(
            "last_hidden_state",
            &out.last_hidden_state,
            &mut report.hidden,
        );
        if let Some(p) = &out.pooler_output {
            compare("pooler_output", &p.squeeze(0).unwrap(), &mut report.pooler);
        }
        match exp.kind.as_str() {
            "seqcls" => {
                let logits = model.encoder.head_logits(&out, &batch, None).unwrap();
                compare("logits", &logits.squeeze(0).unwrap(), &mut report.head);
            }
            "tokcls" => {
                let logits = model.encoder.head_logits(&out, &batch, None).unwrap();
                compare("logits", &logits, &mut report.head);
            }
            "mlm" => {
                let logits = model.encoder.head_logits(&out, &batch, None).unwrap();
                let columns = logits.dim(1).unwrap().min(1024);
                compare(
                    "logits_slice",
                    &logits.narrow(1, 0, columns).unwrap(),
                    &mut report.head,
                );
                let rows: Vec<u32> = (0..enc.ids.len() as u32)
                    .filter(|&r| Some(enc.ids[r as usize]) == mask_id)
                    .collect();
                if !rows.is_empty() {
                    let mask_logits = model
                        .encoder
                        .head_logits(&out, &batch, Some(&rows))
                        .unwrap();
                    compare("mask_logits", &mask_logits, &mut report.head);
                }
            }
            "sentence-transformers" => {
                for (name, normalize) in [("embedding", None), ("embedding_normalized", Some(true))]
                {
                    let opts = embeddings::Options {
                        normalize,
                        ..Default::default()
                    };
                    let e = embeddings::run(&model, &[text], &opts).unwrap();
                    let t =
                        Tensor::new(e[0].embedding.as_slice(), &candle_core::Device::Cpu).unwrap();
                    compare(name, &t, &mut report.head);
                }
            }
            _ => {}
        }
    }
    report
}

#[test]
fn every_fixture_matches_transformers() {
    let mut failures = Vec::new();
    println!(
        "{:<26} {:>12} {:>12} {:>12}",
        "fixture", "hidden", "pooler", "head"
    );
    for dir in fixture_folders() {
        let fx = Fixture::load(&dir);
        let r = check_fixture(&fx);
        println!(
            "{:<26} {:>12.2e} {:>12.2e} {:>12.2e}",
            r.fixture, r.hidden, r.pooler, r.head
        );
        failures.extend(
            r.failures
                .into_iter()
                .map(|f| format!("{}: {f}", r.fixture)),
        );
    }
    assert!(
        failures.is_empty(),
        "{} parity failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// MPNet's relative position buckets equal transformers' `relative_position_bucket` for every
/// key − query offset the fixture's position table allows (recorded by scripts/make-fixtures).
#[test]
fn mpnet_buckets_match_transformers() {
    #[derive(serde::Deserialize)]
    struct Buckets {
        relative_position: Vec<i64>,
        bucket: Vec<u32>,
    }
    let path = common::fixtures_dir().join("mpnet-base/expected.json");
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let table: Buckets =
        serde_json::from_value(doc["mpnet"]["relative_position_bucket"].clone()).unwrap();
    assert!(table.relative_position.len() > 1000);
    for (&relative, &bucket) in table.relative_position.iter().zip(&table.bucket) {
        assert_eq!(
            girder::models::mpnet::relative_position_bucket(relative),
            bucket,
            "offset {relative}"
        );
    }
}

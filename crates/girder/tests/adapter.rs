//! LoRA adapters trained by PEFT (fixtures from `scripts/make-peft-fixture`) applied to the
//! tiny `bert-base` fixture at load: the logits equal PEFT's within 1e-4.

use girder::batch::RaggedBatch;
use girder::pipelines::{text_classification, Model};
use girder::LoadOptions;
use serde::Deserialize;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

#[derive(Deserialize)]
struct Expected {
    texts: Vec<String>,
    num_labels: usize,
    /// Per text: `[num_labels]` (sequence) or `[tokens][num_labels]` (token classification).
    logits: Vec<serde_json::Value>,
}

fn with_adapter(adapter: &str) -> (Model, Expected) {
    let options = LoadOptions {
        adapter: Some(fixture(adapter)),
        ..Default::default()
    };
    let model = Model::load(fixture("bert-base").to_str().unwrap(), &options).unwrap();
    let expected: Expected = serde_json::from_str(
        &std::fs::read_to_string(fixture(adapter).join("expected.json")).unwrap(),
    )
    .unwrap();
    (model, expected)
}

/// Each text's logits, flattened, one text per forward pass.
fn logits(model: &Model, text: &str) -> Vec<f32> {
    let enc = model.encode_texts(&[text]).unwrap();
    let batch = RaggedBatch::from_encodings(&enc);
    let out = model.encoder.encode(&batch).unwrap();
    model
        .encoder
        .head_logits(&out, &batch, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn flatten(v: &serde_json::Value) -> Vec<f32> {
    match v {
        serde_json::Value::Array(items) => items.iter().flat_map(flatten).collect(),
        serde_json::Value::Number(n) => vec![n.as_f64().unwrap() as f32],
        other => panic!("unexpected {other}"),
    }
}

fn worst_diff(model: &Model, expected: &Expected) -> f32 {
    let mut worst = 0f32;
    for (text, want) in expected.texts.iter().zip(&expected.logits) {
        let (got, want) = (logits(model, text), flatten(want));
        assert_eq!(got.len(), want.len(), "{text}");
        for (g, w) in got.iter().zip(&want) {
            worst = worst.max((g - w).abs());
        }
    }
    worst
}

#[test]
fn a_peft_sequence_classification_adapter_matches_peft() {
    let (model, expected) = with_adapter("peft-lora-seqcls");
    assert_eq!(model.encoder.class_name(), "BertForSequenceClassification");
    assert_eq!(model.config.id2label.len(), expected.num_labels);
    assert_eq!(model.config.id2label[2], "LABEL_2");
    let worst = worst_diff(&model, &expected);
    println!("peft-lora-seqcls: max |logit diff| vs PEFT {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
    // The base alone has no head; the adapter made it a classifier, so the pipeline runs.
    let out = text_classification::run(
        &model,
        &["What a lovely film"],
        &text_classification::Options::default(),
    )
    .unwrap();
    assert!(out[0].best.as_ref().unwrap().label.starts_with("LABEL_"));
}

#[test]
fn a_peft_token_classification_adapter_with_rslora_matches_peft() {
    let (model, expected) = with_adapter("peft-lora-tokcls");
    assert_eq!(model.encoder.class_name(), "BertForTokenClassification");
    let worst = worst_diff(&model, &expected);
    println!("peft-lora-tokcls: max |logit diff| vs PEFT {worst:.2e}");
    assert!(worst < 1e-4, "{worst}");
}

#[test]
fn an_adapter_that_does_not_fit_the_base_is_refused_by_name() {
    // bert-base's hidden size is not distilbert-base's: the merged shapes cannot match.
    let options = LoadOptions {
        adapter: Some(fixture("peft-lora-seqcls")),
        ..Default::default()
    };
    let err = Model::load(fixture("distilbert-base").to_str().unwrap(), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("encoder.layer.0.attention.self.query"),
        "{err}"
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        r#"{"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_dora": true}"#,
    )
    .unwrap();
    let options = LoadOptions {
        adapter: Some(dir.path().to_path_buf()),
        ..Default::default()
    };
    let err = Model::load(fixture("bert-base").to_str().unwrap(), &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("use_dora") && err.contains("adapter_config.json"),
        "{err}"
    );
}

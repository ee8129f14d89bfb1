//! Every kind of bad input gives its typed error, naming what is at fault, and never a panic.

mod common;

use common::ScratchModel;
use girder::pipelines::{embeddings, fill_mask, text_classification, Model};
use girder::tokenize::Truncation;
use girder::Error;
use girder::LoadOptions;

fn load(dir: &str) -> girder::Result<Model> {
    Model::load(dir, &LoadOptions::default())
}

fn edit_json(path: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

#[test]
fn missing_folder() {
    let err = load("/nonexistent/girder/model").unwrap_err();
    assert!(matches!(err, Error::FolderNotFound { .. }), "{err}");
    assert!(err.to_string().contains("/nonexistent/girder/model"));
}

#[test]
fn missing_files_say_what_a_folder_needs() {
    let m = ScratchModel::copy_of("bert-seqcls", "no-config");
    std::fs::remove_file(m.path("config.json")).unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { file, .. } if file == "config.json"),
        "{err}"
    );
    assert!(
        err.to_string().contains("tokenizer.json"),
        "lists what a folder needs: {err}"
    );

    let m = ScratchModel::copy_of("bert-seqcls", "no-weights");
    std::fs::remove_file(m.path("model.safetensors")).unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { file, .. } if file == "model.safetensors"),
        "{err}"
    );

    let m = ScratchModel::copy_of("roberta-seqcls", "no-tokenizer");
    std::fs::remove_file(m.path("tokenizer.json")).unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { file, .. } if file == "tokenizer.json"),
        "{err}"
    );

    let m = ScratchModel::copy_of("bert-base", "no-shard");
    std::fs::remove_file(m.path("model-00002-of-00002.safetensors")).unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingFile { file, .. } if file == "model-00002-of-00002.safetensors"),
        "{err}"
    );
}

#[test]
fn malformed_config_names_the_field() {
    let m = ScratchModel::copy_of("bert-seqcls", "bad-json");
    std::fs::write(m.path("config.json"), "{\"architectures\": [\"BertModel\",").unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(matches!(err, Error::BadConfig { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");

    let m = ScratchModel::copy_of("bert-seqcls", "bad-field");
    edit_json(&m.path("config.json"), |v| v["hidden_size"] = "big".into());
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::BadConfig { field, .. } if field == "hidden_size"),
        "{err}"
    );

    let m = ScratchModel::copy_of("bert-seqcls", "bad-labels");
    edit_json(&m.path("config.json"), |v| {
        v["id2label"] = serde_json::json!({"0": "a", "5": "b"})
    });
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::BadConfig { field, .. } if field == "id2label"),
        "{err}"
    );

    let m = ScratchModel::copy_of("bert-seqcls", "bad-act");
    edit_json(&m.path("config.json"), |v| {
        v["hidden_act"] = "swiglu9".into()
    });
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::BadConfig { field, .. } if field == "hidden_act"),
        "{err}"
    );
}

#[test]
fn unsupported_architecture_lists_supported_ones() {
    let m = ScratchModel::copy_of("bert-seqcls", "arch");
    edit_json(&m.path("config.json"), |v| {
        v["architectures"] = serde_json::json!(["MambaForCausalLM"])
    });
    let err = load(m.as_str()).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, Error::UnsupportedArchitecture { .. }),
        "{msg}"
    );
    assert!(
        msg.contains("MambaForCausalLM")
            && msg.contains("XLMRobertaForTokenClassification")
            && msg.contains("T5ForConditionalGeneration"),
        "{msg}"
    );
}

#[test]
fn truncated_or_corrupt_safetensors_names_the_file() {
    let m = ScratchModel::copy_of("bert-seqcls", "truncated");
    let bytes = std::fs::read(m.path("model.safetensors")).unwrap();
    std::fs::write(m.path("model.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::BadWeights { file, .. } if file.ends_with("model.safetensors")),
        "{err}"
    );

    let m = ScratchModel::copy_of("bert-seqcls", "garbage");
    std::fs::write(
        m.path("model.safetensors"),
        b"this is not a safetensors file",
    )
    .unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(matches!(err, Error::BadWeights { .. }), "{err}");
}

#[test]
fn missing_tensor_and_wrong_shape_are_named() {
    // A config asking for a third layer the checkpoint lacks.
    let m = ScratchModel::copy_of("bert-seqcls", "layers");
    edit_json(&m.path("config.json"), |v| {
        v["num_hidden_layers"] = 3.into()
    });
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::MissingTensor { name, .. } if name.contains("encoder.layer.2.")),
        "{err}"
    );
    // A config whose intermediate size disagrees with the weights.
    let m = ScratchModel::copy_of("bert-seqcls", "shape");
    edit_json(&m.path("config.json"), |v| {
        let n = v["intermediate_size"].as_u64().unwrap();
        v["intermediate_size"] = (n + 1).into();
    });
    let err = load(m.as_str()).unwrap_err();
    match &err {
        Error::ShapeMismatch {
            tensor,
            expected,
            actual,
        } => {
            assert!(tensor.contains("intermediate.dense.weight"), "{err}");
            assert_ne!(expected, actual);
        }
        other => panic!("expected ShapeMismatch, got {other}"),
    }
}

#[test]
fn unparsable_tokenizer_json() {
    let m = ScratchModel::copy_of("bert-seqcls", "tokenizer");
    std::fs::write(m.path("tokenizer.json"), "{\"model\": 42}").unwrap();
    let err = load(m.as_str()).unwrap_err();
    assert!(
        matches!(&err, Error::BadTokenizer { file, .. } if file.ends_with("tokenizer.json")),
        "{err}"
    );
}

#[test]
fn empty_input_and_too_long_input() {
    let dir = common::fixtures_dir().join("bert-st-mean");
    let model = load(dir.to_str().unwrap()).unwrap();
    let none: [&str; 0] = [];
    let err = embeddings::run(&model, &none, &Default::default()).unwrap_err();
    assert!(matches!(err, Error::EmptyInput), "{err}");

    let refuse = LoadOptions {
        truncation: Truncation::Refuse,
        ..Default::default()
    };
    let model = Model::load(dir.to_str().unwrap(), &refuse).unwrap();
    let long = "word ".repeat(200);
    let err = embeddings::run(&model, &["short", long.as_str()], &Default::default()).unwrap_err();
    assert!(
        matches!(
            err,
            Error::InputTooLong {
                index: 1,
                max: 48,
                ..
            }
        ),
        "{err}"
    );

    let too_far = LoadOptions {
        max_length: Some(4096),
        ..Default::default()
    };
    let err = Model::load(dir.to_str().unwrap(), &too_far).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidOption { option, .. } if option == "max_length"),
        "{err}"
    );
}

#[test]
fn task_needs_the_right_head() {
    let dir = common::fixtures_dir().join("bert-base");
    let model = load(dir.to_str().unwrap()).unwrap();
    let err = text_classification::run(&model, &["hi"], &Default::default()).unwrap_err();
    assert!(matches!(err, Error::TaskMismatch { .. }), "{err}");
    let dir = common::fixtures_dir().join("bert-mlm");
    let model = load(dir.to_str().unwrap()).unwrap();
    let err = fill_mask::run(&model, &["no mask here"], &Default::default()).unwrap_err();
    assert!(matches!(err, Error::BadInput { index: 0, .. }), "{err}");
}

#[test]
fn shard_paths_stay_inside_the_model_folder() {
    let m = ScratchModel::copy_of("bert-seqcls", "shard-escape");
    std::fs::rename(m.path("model.safetensors"), m.path("shard.safetensors")).unwrap();
    let outside = m.path("../outside.safetensors");
    std::fs::copy(m.path("shard.safetensors"), &outside).unwrap();
    // An existing file outside and an absent one get the same answer: nothing is opened and
    // nothing tells whether it exists.
    for shard in [
        outside.to_str().unwrap().to_string(),
        "../outside.safetensors".to_string(),
        "/no/such/shard.safetensors".to_string(),
        "sub/../../outside.safetensors".to_string(),
    ] {
        let index =
            serde_json::json!({"weight_map": {"bert.embeddings.word_embeddings.weight": shard}});
        std::fs::write(m.path("model.safetensors.index.json"), index.to_string()).unwrap();
        let err = load(m.as_str()).unwrap_err();
        assert!(
            matches!(&err, Error::BadConfig { field, .. } if field == "weight_map"),
            "{shard}: {err}"
        );
        assert!(
            err.to_string()
                .contains("not a file name inside the model folder"),
            "{err}"
        );
    }
    std::fs::remove_file(outside).unwrap();
}

#[test]
fn a_file_link_loop_or_fifo_is_named_for_what_it_is() {
    // A file given as the model folder.
    let m = ScratchModel::copy_of("bert-seqcls", "file-as-folder");
    let err = load(m.path("model.safetensors").to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::NotAFolder { .. }), "{err}");
    assert!(
        err.to_string().contains("is a file, not a model folder"),
        "{err}"
    );

    // A link loop where the folder should be.
    let looped = m.path("../loop-model");
    let _ = std::fs::remove_file(&looped);
    std::os::unix::fs::symlink(&looped, &looped).unwrap();
    let err = load(looped.to_str().unwrap()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err}");
    assert!(!err.to_string().contains("config.json"), "{err}");
    std::fs::remove_file(&looped).unwrap();

    // A FIFO where config.json should be: named, not read (reading would block).
    std::fs::remove_file(m.path("config.json")).unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(m.path("config.json"))
        .status();
    if status.is_ok_and(|s| s.success()) {
        let err = load(m.as_str()).unwrap_err();
        assert!(matches!(err, Error::Io { .. }), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}

/// The byte range of tensor `name`'s data in a safetensors file.
fn tensor_bytes(bytes: &[u8], name: &str) -> std::ops::Range<usize> {
    let tensors = safetensors::SafeTensors::deserialize(bytes).unwrap();
    let data = tensors.tensor(name).unwrap().data();
    let start = data.as_ptr() as usize - bytes.as_ptr() as usize;
    start..start + data.len()
}

#[test]
fn nan_weights_and_a_config_that_makes_nan_fail_the_check() {
    let check = |dir: &ScratchModel| {
        let model = girder::load(dir.as_str(), &LoadOptions::default()).unwrap();
        girder::check::check(&model, &girder::check::CheckOptions::default()).unwrap()
    };
    let clean = ScratchModel::copy_of("bert-seqcls", "finite");
    let report = check(&clean);
    assert!(
        !report.has("non-finite-weights") && !report.has("non-finite-outputs"),
        "{report:?}"
    );

    // A NaN in the word embeddings.
    let nan = ScratchModel::copy_of("bert-seqcls", "nan-weights");
    let mut bytes = std::fs::read(nan.path("model.safetensors")).unwrap();
    let range = tensor_bytes(&bytes, "bert.embeddings.word_embeddings.weight");
    bytes[range.start + 400..range.start + 404].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(nan.path("model.safetensors"), &bytes).unwrap();
    let report = check(&nan);
    assert!(!report.ok);
    let finding = report
        .get("non-finite-weights")
        .expect("non-finite-weights");
    assert!(
        finding
            .message
            .contains("embeddings.word_embeddings.weight"),
        "{finding:?}"
    );

    // A classifier weight that is infinite: the hidden states are fine, the scores are not.
    let inf = ScratchModel::copy_of("bert-seqcls", "inf-classifier");
    let mut bytes = std::fs::read(inf.path("model.safetensors")).unwrap();
    let range = tensor_bytes(&bytes, "classifier.weight");
    bytes[range.start..range.start + 4].copy_from_slice(&f32::INFINITY.to_le_bytes());
    std::fs::write(inf.path("model.safetensors"), &bytes).unwrap();
    let report = check(&inf);
    // The pipelines refuse to answer with such scores (JSON would carry them as null).
    let model = girder::pipelines::Model::load(inf.as_str(), &LoadOptions::default()).unwrap();
    let texts = ["fine".to_string(), "also fine".to_string()];
    let encodings = model.encode_texts(&texts).unwrap();
    let err = girder::pipelines::TaskOptions::TextClassification(Default::default())
        .run_encoded(&model, &texts, &encodings, &model.plan(&encodings))
        .unwrap_err();
    assert!(
        matches!(err, Error::NonFiniteOutput { index: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("NaN or infinity"), "{err}");
    let finding = report
        .get("non-finite-outputs")
        .expect("non-finite-outputs");
    assert!(
        finding.message.contains("classification scores"),
        "{finding:?}"
    );

    // A negative layer_norm_eps makes the square root of a negative variance.
    let eps = ScratchModel::copy_of("bert-seqcls", "negative-eps");
    edit_json(&eps.path("config.json"), |c| {
        c["layer_norm_eps"] = serde_json::json!(-1000.0)
    });
    match girder::load(eps.as_str(), &LoadOptions::default()) {
        // Refused at load, naming the field, is as good as caught by the check.
        Err(err) => assert!(err.to_string().contains("layer_norm_eps"), "{err}"),
        Ok(model) => {
            let report = girder::check::check(&model, &Default::default()).unwrap();
            let finding = report
                .get("non-finite-outputs")
                .expect("non-finite-outputs");
            assert!(finding.message.contains("hidden states"), "{finding:?}");
        }
    }
}

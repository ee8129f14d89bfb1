//! Fine-tuning end to end on the tiny BERT fixture: a head trained on frozen pooled features
//! is written as a model folder; girder loads it back as `BertForSequenceClassification`
//! with the training path's logits, and (where the dev-only .venv-oracle exists)
//! transformers loads it unchanged, with no missing or unexpected tensor, and the same
//! logits within 1e-4.

use girder::check::model_card;
use girder::pipelines::{text_classification as tc, Model};
use girder::train::bert::{Lora, TrainableBert};
use girder::train::data::{bio_tags, read_classification, read_conll, Columns};
use girder::train::export::{
    write_lora_adapter, write_sequence_classifier, ClassifierHead, LoraAdapter, SequenceClassifier,
};
use girder::train::full::{train_full, train_token_classifier, EncodedSet};
use girder::train::head::{pooled_features, predict, train_head, FeatureSet, Quiet};
use girder::train::metrics::ClassificationMetrics;
use girder::train::ner;
use girder::train::{Rng, TrainingArguments};
use girder::LoadOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const TRAIN: &str = "text\tlabel
what a lovely film\tgood
great acting and a great story\tgood
i loved every minute\tgood
wonderful, warm and funny\tgood
a delight from start to end\tgood
the best film this year\tgood
a dull and tedious mess\tbad
i hated every minute\tbad
boring, slow and far too long\tbad
the worst film this year\tbad
awful acting and a silly plot\tbad
a tedious waste of time\tbad
";

/// Logits of `model`'s classifier for `texts`, in input order.
fn girder_logits(model: &Model, texts: &[&str]) -> Vec<Vec<f32>> {
    let encodings = model.encode_texts(texts).unwrap();
    let mut rows = vec![Vec::new(); texts.len()];
    model
        .forward_batches(
            &encodings,
            &model.plan(&encodings),
            |indices, batch, out| {
                let logits = model
                    .encoder
                    .head_logits(out, batch, None)?
                    .to_vec2::<f32>()?;
                for (&i, row) in indices.iter().zip(logits) {
                    rows[i] = row;
                }
                Ok(())
            },
        )
        .unwrap();
    rows
}

fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .flatten()
        .zip(b.iter().flatten())
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn a_trained_head_is_a_folder_that_girder_and_transformers_load() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let base_path = root().join("crates/girder/tests/fixtures/bert-base");
    let base = Model::load(base_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let data = read_classification(&train_path, &Columns::default(), None).unwrap();
    assert_eq!(data.labels.names(), ["bad", "good"]);
    let texts = data.texts();
    let features = pooled_features(&base, &texts, &mut Quiet).unwrap();
    let labels = data.label_ids();
    let set = FeatureSet {
        features: &features,
        labels: &labels,
    };
    let args = TrainingArguments {
        num_train_epochs: 2,
        learning_rate: 1e-2,
        ..Default::default()
    };
    let trained = train_head(set, Some(set), 2, &args, &mut Quiet).unwrap();
    let kept = trained.epochs[trained.best_epoch - 1].eval.clone().unwrap();
    let out = dir.path().join("bert-tiny-sentiment");
    write_sequence_classifier(
        &SequenceClassifier {
            head: ClassifierHead::Sequence,
            ner_evaluation: None,
            base: &base.folder,
            base_reference: "tests/fixtures/bert-base",
            labels: &data.labels,
            trained: vec![
                ("classifier.weight".into(), trained.weight.clone()),
                ("classifier.bias".into(), trained.bias.clone()),
            ],
            datasets: vec!["train.tsv".into()],
            evaluation: Some(("train.tsv".into(), &kept)),
            method: "head",
            args: &args,
            best_epoch: trained.best_epoch,
        },
        &out,
    )
    .unwrap();

    // girder reads it as a classifier whose logits are the training path's.
    let classifier = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(
        classifier.encoder.class_name(),
        "BertForSequenceClassification"
    );
    assert_eq!(classifier.config.id2label, ["bad", "good"]);
    let logits = girder_logits(&classifier, &texts);
    let expected = features
        .matmul(&trained.weight.t().unwrap())
        .unwrap()
        .broadcast_add(&trained.bias)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let diff = max_abs_diff(&logits, &expected);
    assert!(diff < 1e-5, "exported logits differ by {diff}");
    let results = tc::run(&classifier, &texts, &tc::Options::default()).unwrap();
    let predicted: Vec<usize> = results
        .iter()
        .map(|r| usize::from(r.best.as_ref().unwrap().label == "good"))
        .collect();
    assert_eq!(
        predicted,
        predict(&features, &trained.weight, &trained.bias).unwrap()
    );
    assert_eq!(
        ClassificationMetrics::compute(&labels, &predicted, 2).accuracy,
        kept.accuracy
    );

    // The card's front matter parses and names the base and the data.
    let readme = out.join("README.md");
    let card = model_card::parse(&readme, &std::fs::read_to_string(&readme).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        card.base_model.unwrap().values(),
        ["tests/fixtures/bert-base"]
    );
    assert_eq!(card.datasets.unwrap().values(), ["train.tsv"]);
    assert_eq!(card.pipeline_tag.as_deref(), Some("text-classification"));

    transformers_agrees(&out, &texts, &logits);
}

#[test]
fn full_fine_tuning_exports_every_trained_weight() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let base_path = root().join("crates/girder/tests/fixtures/bert-base");
    let base = Model::load(base_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let data = read_classification(&train_path, &Columns::default(), None).unwrap();
    let texts = data.texts();
    let encodings = base.encode_texts(&texts).unwrap();
    let labels = data.label_ids();
    let args = TrainingArguments {
        num_train_epochs: 2,
        learning_rate: 1e-3,
        per_device_train_batch_size: 4,
        ..Default::default()
    };
    let mut bert =
        TrainableBert::load(&base.folder, &base.config, 2, &mut Rng::new(args.seed)).unwrap();
    // Copies: training updates the variables' storage in place.
    let before: Vec<(String, candle_core::Tensor)> = bert
        .checkpoint_tensors()
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.copy().unwrap()))
        .collect();
    let trained = train_full(
        &mut bert,
        EncodedSet {
            encodings: &encodings,
            labels: &labels,
        },
        None,
        2,
        &args,
        &mut Quiet,
    )
    .unwrap();
    assert_eq!(trained.best_epoch, 2);
    // The encoder moved, not only the classifier.
    let moved = |name: &str| {
        let a = &before.iter().find(|(n, _)| n == name).unwrap().1;
        let b = &trained.tensors.iter().find(|(n, _)| n == name).unwrap().1;
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    };
    assert!(moved("bert.encoder.layer.0.attention.self.query.weight"));
    assert!(moved("bert.embeddings.word_embeddings.weight"));

    let out = dir.path().join("bert-tiny-full");
    write_sequence_classifier(
        &SequenceClassifier {
            head: ClassifierHead::Sequence,
            ner_evaluation: None,
            base: &base.folder,
            base_reference: "tests/fixtures/bert-base",
            labels: &data.labels,
            trained: trained.tensors.clone(),
            datasets: vec!["train.tsv".into()],
            evaluation: None,
            method: "full",
            args: &args,
            best_epoch: trained.best_epoch,
        },
        &out,
    )
    .unwrap();
    let classifier = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let logits = girder_logits(&classifier, &texts);
    let batch = girder::batch::RaggedBatch::from_encodings(&encodings);
    let expected = bert
        .logits(&batch, &mut None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let diff = max_abs_diff(&logits, &expected);
    assert!(
        diff < 1e-5,
        "exported logits differ from the trained model's by {diff}"
    );
    transformers_agrees(&out, &texts, &logits);
}

#[test]
fn lora_trains_only_adapters_and_merges_into_a_plain_folder() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let base_path = root().join("crates/girder/tests/fixtures/bert-base");
    let base = Model::load(base_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let data = read_classification(&train_path, &Columns::default(), None).unwrap();
    let texts = data.texts();
    let encodings = base.encode_texts(&texts).unwrap();
    let labels = data.label_ids();
    let args = TrainingArguments {
        num_train_epochs: 2,
        learning_rate: 1e-2,
        per_device_train_batch_size: 4,
        ..Default::default()
    };
    let mut rng = Rng::new(args.seed);
    let mut bert = TrainableBert::load(&base.folder, &base.config, 2, &mut rng).unwrap();
    let batch = girder::batch::RaggedBatch::from_encodings(&encodings);
    let untouched = bert
        .pooled(&batch, &mut None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let adapted = bert.enable_lora(Lora::default(), &mut rng).unwrap();
    assert_eq!(
        adapted,
        [
            "encoder.layer.0.attention.self.query",
            "encoder.layer.0.attention.self.value",
            "encoder.layer.1.attention.self.query",
            "encoder.layer.1.attention.self.value",
        ]
    );
    // B starts at zero: the adapted model computes the base model's function.
    let start = bert
        .pooled(&batch, &mut None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(max_abs_diff(&untouched, &start) < 1e-6);
    let trainable: Vec<&String> = bert.vars().keys().collect();
    assert_eq!(trainable.len(), 4 * 2 + 2, "{trainable:?}");
    train_full(
        &mut bert,
        EncodedSet {
            encodings: &encodings,
            labels: &labels,
        },
        None,
        2,
        &args,
        &mut Quiet,
    )
    .unwrap();
    let moved = bert
        .pooled(&batch, &mut None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert!(
        max_abs_diff(&untouched, &moved) > 1e-6,
        "the adapters did not train"
    );

    // Merged weights in a plain folder give the adapted model's logits.
    let out = dir.path().join("bert-tiny-lora-merged");
    write_sequence_classifier(
        &SequenceClassifier {
            head: ClassifierHead::Sequence,
            ner_evaluation: None,
            base: &base.folder,
            base_reference: "tests/fixtures/bert-base",
            labels: &data.labels,
            trained: bert.checkpoint_tensors().unwrap(),
            datasets: vec!["train.tsv".into()],
            evaluation: None,
            method: "lora",
            args: &args,
            best_epoch: 2,
        },
        &out,
    )
    .unwrap();
    let classifier = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let logits = girder_logits(&classifier, &texts);
    let expected = bert
        .logits(&batch, &mut None)
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    let diff = max_abs_diff(&logits, &expected);
    assert!(
        diff < 1e-5,
        "merged logits differ from the adapted model's by {diff}"
    );
    transformers_agrees(&out, &texts, &logits);

    // The unmerged adapter, as PEFT writes it, gives the same logits in PEFT.
    let adapter_dir = dir.path().join("bert-tiny-lora");
    write_lora_adapter(
        &LoraAdapter {
            base_reference: base_path.canonicalize().unwrap().to_str().unwrap(),
            lora: bert.lora().unwrap(),
            tensors: bert.adapter_tensors(),
            datasets: vec!["train.tsv".into()],
            labels: data.labels.names(),
            head: ClassifierHead::Sequence,
        },
        &adapter_dir,
    )
    .unwrap();
    // girder applies the unmerged adapter at load (`--adapter`): same logits and labels.
    let adapted = Model::load(
        base_path.to_str().unwrap(),
        &LoadOptions {
            adapter: Some(adapter_dir.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(adapted.config.id2label, data.labels.names());
    let diff = max_abs_diff(&girder_logits(&adapted, &texts), &expected);
    assert!(diff < 1e-5, "the adapter applied at load differs by {diff}");
    peft_agrees(&adapter_dir, &texts, &expected);
}

/// Dev-only: PEFT's `AutoPeftModelForSequenceClassification` on an adapter folder.
fn peft_agrees(folder: &Path, texts: &[&str], girder: &[Vec<f32>]) {
    peft_agrees_as(folder, "SequenceClassification", 2, texts, girder);
}

/// Dev-only: PEFT's `AutoPeftModelFor{kind}` on an adapter folder, the base loaded with
/// `num_labels`; `girder` holds each text's logits (sequence) or one text's rows (token).
fn peft_agrees_as(
    folder: &Path,
    kind: &str,
    num_labels: usize,
    texts: &[&str],
    girder: &[Vec<f32>],
) {
    let python = root().join(".venv-oracle/bin/python");
    let has_peft = python.exists()
        && Command::new(&python)
            .args(["-c", "import peft"])
            .status()
            .is_ok_and(|s| s.success());
    if !has_peft {
        println!("skipped the PEFT comparison: `peft` is not importable from .venv-oracle");
        return;
    }
    const SCRIPT: &str = r#"
import json, sys, torch
import peft
from transformers import AutoTokenizer
folder, texts, kind, num_labels = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
auto = getattr(peft, "AutoPeftModelFor" + kind)
model = auto.from_pretrained(folder, num_labels=num_labels)
tok = AutoTokenizer.from_pretrained(model.peft_config["default"].base_model_name_or_path)
model.eval()
with torch.no_grad():
    logits = [model(**tok(t, return_tensors="pt")).logits[0].tolist() for t in texts]
if kind == "TokenClassification":
    logits = logits[0]
print(json.dumps({"logits": logits}))
"#;
    let output = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(folder)
        .arg(serde_json::to_string(texts).unwrap())
        .arg(kind)
        .arg(num_labels.to_string())
        .output()
        .expect("cannot run the oracle");
    assert!(
        output.status.success(),
        "PEFT failed to load {}:\n{}",
        folder.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reply: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    let theirs: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    let diff = max_abs_diff(girder, &theirs);
    println!("PEFT ({kind}) vs girder logits: max abs diff {diff:e}");
    assert!(diff < 1e-4, "logits differ from PEFT by {diff}");
}

#[test]
fn a_token_classifier_is_a_folder_that_girder_and_transformers_load() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("train.bio");
    std::fs::write(
        &data_path,
        "Angela\tB-PER\nMerkel\tI-PER\nvisited\tO\nParis\tB-LOC\n\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n",
    )
    .unwrap();
    let base_path = root().join("crates/girder/tests/fixtures/bert-base");
    let base = Model::load(base_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tags = bio_tags(&["PER".into(), "LOC".into()]).unwrap();
    let (sentences, _) = read_conll(&data_path, Some(&tags)).unwrap();
    let features = ner::word_features(&base, &sentences, &mut Quiet).unwrap();
    // One row per word (no word is split by truncation here).
    assert_eq!(features.labels, [1, 2, 0, 3, 1, 0, 0, 3, 4]);
    let args = TrainingArguments {
        num_train_epochs: 2,
        learning_rate: 1e-2,
        ..Default::default()
    };
    let set = FeatureSet {
        features: &features.features,
        labels: &features.labels,
    };
    let trained = train_head(set, None, tags.len(), &args, &mut Quiet).unwrap();
    let out = dir.path().join("bert-tiny-ner");
    write_sequence_classifier(
        &SequenceClassifier {
            head: ClassifierHead::Token,
            ner_evaluation: None,
            base: &base.folder,
            base_reference: "tests/fixtures/bert-base",
            labels: &tags,
            trained: vec![
                ("classifier.weight".into(), trained.weight.clone()),
                ("classifier.bias".into(), trained.bias.clone()),
            ],
            datasets: vec!["train.bio".into()],
            evaluation: None,
            method: "head",
            args: &args,
            best_epoch: trained.best_epoch,
        },
        &out,
    )
    .unwrap();
    let tagger = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    assert_eq!(tagger.encoder.class_name(), "BertForTokenClassification");
    // girder's logits on every token of "Angela Merkel visited Paris"
    let text = "Angela Merkel visited Paris";
    let logits = girder_logits_per_token(&tagger, text);
    token_transformers_agrees(&out, text, &logits);
}

#[test]
fn a_lora_token_classifier_is_an_adapter_that_girder_and_peft_load() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("train.bio");
    std::fs::write(
        &data_path,
        "Angela\tB-PER\nMerkel\tI-PER\nvisited\tO\nParis\tB-LOC\n\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n",
    )
    .unwrap();
    let base_path = root().join("crates/girder/tests/fixtures/bert-base");
    let base = Model::load(base_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let tags = bio_tags(&["PER".into(), "LOC".into()]).unwrap();
    let (sentences, _) = read_conll(&data_path, Some(&tags)).unwrap();
    let encoded = ner::encode_sentences(&base, &sentences).unwrap();
    let mut rng = Rng::new(3);
    let mut bert = TrainableBert::load(&base.folder, &base.config, tags.len(), &mut rng).unwrap();
    let lora = Lora {
        target_modules: vec!["query".into(), "value".into(), "dense".into()],
        ..Lora::default()
    };
    bert.enable_lora(lora, &mut rng).unwrap();
    let args = TrainingArguments {
        num_train_epochs: 3,
        learning_rate: 1e-2,
        ..Default::default()
    };
    let trained = train_token_classifier(
        &mut bert,
        &encoded,
        Some((&sentences, &encoded)),
        &tags,
        &args,
        &mut Quiet,
    )
    .unwrap();
    assert!(trained.epochs.iter().all(|e| e.entities.is_some()));
    // The kept epoch is the last here only if it scored best; compare with what was kept.
    let adapters = trained.adapters.clone().unwrap();
    let out = dir.path().join("bert-tiny-ner-lora");
    write_lora_adapter(
        &LoraAdapter {
            base_reference: base_path.canonicalize().unwrap().to_str().unwrap(),
            lora: bert.lora().unwrap(),
            tensors: adapters,
            datasets: vec!["train.bio".into()],
            labels: tags.names(),
            head: ClassifierHead::Token,
        },
        &out,
    )
    .unwrap();
    // The kept weights, merged, in girder's inference path: the adapter applied at load.
    let text = "Angela Merkel visited Paris";
    let adapted = Model::load(
        base_path.to_str().unwrap(),
        &LoadOptions {
            adapter: Some(out.clone()),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(adapted.encoder.class_name(), "BertForTokenClassification");
    assert_eq!(adapted.config.id2label, tags.names());
    let logits = girder_logits_per_token(&adapted, text);
    let merged_folder = dir.path().join("merged");
    write_sequence_classifier(
        &SequenceClassifier {
            head: ClassifierHead::Token,
            ner_evaluation: None,
            base: &base.folder,
            base_reference: "tests/fixtures/bert-base",
            labels: &tags,
            trained: trained.tensors.clone(),
            datasets: vec!["train.bio".into()],
            evaluation: None,
            method: "lora",
            args: &args,
            best_epoch: trained.best_epoch,
        },
        &merged_folder,
    )
    .unwrap();
    let merged = Model::load(merged_folder.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let diff = max_abs_diff(&logits, &girder_logits_per_token(&merged, text));
    assert!(diff < 1e-5, "adapter at load vs merged folder: {diff}");
    // The merged folder (every encoder weight written) loads in transformers too.
    token_transformers_agrees(&merged_folder, text, &logits);
    peft_agrees_as(&out, "TokenClassification", tags.len(), &[text], &logits);
}

fn girder_logits_per_token(model: &Model, text: &str) -> Vec<Vec<f32>> {
    let encodings = model.encode_texts(&[text]).unwrap();
    let mut rows = Vec::new();
    model
        .forward_batches(&encodings, &model.plan(&encodings), |_, batch, out| {
            rows = model
                .encoder
                .head_logits(out, batch, None)?
                .to_vec2::<f32>()?;
            Ok(())
        })
        .unwrap();
    rows
}

/// Dev-only: AutoModelForTokenClassification on the folder, no missing or unexpected tensor.
fn token_transformers_agrees(folder: &Path, text: &str, girder: &[Vec<f32>]) {
    let python = root().join(".venv-oracle/bin/python");
    if !python.exists() {
        println!(
            "skipped the transformers comparison: {} does not exist",
            python.display()
        );
        return;
    }
    const SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoTokenizer, AutoModelForTokenClassification
folder, text = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model, info = AutoModelForTokenClassification.from_pretrained(folder, output_loading_info=True)
model.eval()
with torch.no_grad():
    logits = model(**tok(text, return_tensors="pt")).logits[0].tolist()
print(json.dumps({"logits": logits, "info": {k: sorted(map(str, v)) for k, v in info.items()},
                  "class": type(model).__name__}))
"#;
    let output = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(folder)
        .arg(text)
        .output()
        .expect("cannot run the oracle");
    assert!(
        output.status.success(),
        "transformers failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reply: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(reply["class"], "BertForTokenClassification");
    for key in ["missing_keys", "unexpected_keys", "mismatched_keys"] {
        let list = &reply["info"][key];
        assert!(
            list.as_array().is_none_or(|a| a.is_empty()),
            "{key}: {list}"
        );
    }
    let theirs: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    let diff = max_abs_diff(girder, &theirs);
    println!("transformers vs girder token logits: max abs diff {diff:e}");
    assert!(
        diff < 1e-4,
        "token logits differ from transformers by {diff}"
    );
}

/// Dev-only: transformers' AutoModelForSequenceClassification on the folder.
fn transformers_agrees(folder: &Path, texts: &[&str], girder: &[Vec<f32>]) {
    let python = root().join(".venv-oracle/bin/python");
    if !python.exists() {
        println!(
            "skipped the transformers comparison: {} does not exist (scripts/setup-oracle)",
            python.display()
        );
        return;
    }
    const SCRIPT: &str = r#"
import json, sys, torch
from transformers import AutoTokenizer, AutoModelForSequenceClassification
folder, texts = sys.argv[1], json.loads(sys.argv[2])
tok = AutoTokenizer.from_pretrained(folder)
model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
model.eval()
with torch.no_grad():
    logits = [model(**tok(t, return_tensors="pt")).logits[0].tolist() for t in texts]
print(json.dumps({"logits": logits, "info": {k: sorted(map(str, v)) for k, v in info.items()},
                  "class": type(model).__name__, "id2label": model.config.id2label,
                  "problem_type": model.config.problem_type}))
"#;
    let output = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(folder)
        .arg(serde_json::to_string(texts).unwrap())
        .output()
        .expect("cannot run the oracle");
    assert!(
        output.status.success(),
        "transformers failed to load {}:\n{}",
        folder.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    let reply: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(reply["class"], "BertForSequenceClassification");
    assert_eq!(reply["problem_type"], "single_label_classification");
    assert_eq!(
        reply["id2label"],
        serde_json::json!({"0": "bad", "1": "good"})
    );
    for key in ["missing_keys", "unexpected_keys", "mismatched_keys"] {
        let list = &reply["info"][key];
        assert!(
            list.as_array().is_none_or(|a| a.is_empty()),
            "{key}: {list}"
        );
    }
    let theirs: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    let diff = max_abs_diff(girder, &theirs);
    println!("transformers vs girder logits: max abs diff {diff:e}");
    assert!(diff < 1e-4, "logits differ from transformers by {diff}");
}

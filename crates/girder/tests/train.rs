//! Fine-tuning end to end on the tiny fixture of every encoder family (BERT, DistilBERT,
//! RoBERTa, XLM-RoBERTa, MPNet): the inference model itself is trained, head-only, fully or
//! with LoRA, as a sequence and as a token classifier; the kept weights are written as a
//! model folder (or a PEFT adapter) that girder loads back with the trained model's logits,
//! and (where the dev-only .venv-oracle exists) that transformers and PEFT load unchanged,
//! with no missing or unexpected tensor, and the same logits within 1e-4.

use girder::check::model_card;
use girder::hub::Lora;
use girder::models::Head;
use girder::pipelines::{text_classification as tc, Model};
use girder::train::data::{bio_tags, read_classification, read_conll, Columns, LabelSet};
use girder::train::export::{write_classifier, write_lora_adapter, Classifier, LoraAdapter};
use girder::train::fit::{Quiet, TrainedModel};
use girder::train::full::{train_sequence_classifier, train_token_classifier, EncodedSet};
use girder::train::head::{sequence_features, token_features, train_head, train_token_head};
use girder::train::metrics::ClassificationMetrics;
use girder::train::ner;
use girder::train::top_layer;
use girder::train::trainable::Trainable;
use girder::train::{Method, TrainingArguments};
use girder::LoadOptions;
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture(name: &str) -> PathBuf {
    root().join("crates/girder/tests/fixtures").join(name)
}

/// The base fixture of every encoder family and its classes' prefix.
const FAMILIES: [(&str, &str); 5] = [
    ("bert-base", "Bert"),
    ("distilbert-base", "DistilBert"),
    ("roberta-base", "Roberta"),
    ("xlmr-base", "XLMRoberta"),
    ("mpnet-base", "MPNet"),
];

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

const NER: &str = "Angela\tB-PER\nMerkel\tI-PER\nvisited\tO\nParis\tB-LOC\n\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n";

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

fn args(method: Method) -> TrainingArguments {
    TrainingArguments {
        num_train_epochs: 2,
        learning_rate: match method {
            Method::Full | Method::TopLayer => 1e-3,
            _ => 1e-2,
        },
        per_device_train_batch_size: 4,
        ..Default::default()
    }
}

/// Trains `base` as a sequence classifier of "bad" / "good" with `method` on [`TRAIN`].
fn train_sequence(
    base: &Path,
    method: Method,
    lora: Option<Lora>,
    train_path: &Path,
) -> (Trainable, TrainedModel, LabelSet) {
    let data = read_classification(train_path, &Columns::default(), None).unwrap();
    assert_eq!(data.labels.names(), ["bad", "good"]);
    let args = args(method);
    let trainable = Trainable::load(
        base.to_str().unwrap(),
        Head::SequenceClassification,
        data.labels.names(),
        method,
        lora,
        &args,
        LoadOptions::default(),
    )
    .unwrap();
    let labels = data.label_ids();
    let model = &trainable.model;
    let trained = match method {
        Method::Head => {
            let features = sequence_features(model, &data.texts(), &labels, &mut Quiet).unwrap();
            train_head(&trainable, &features, Some(&features), &args, &mut Quiet).unwrap()
        }
        _ => {
            let encodings = model.encode_texts(&data.texts()).unwrap();
            let set = EncodedSet {
                encodings: &encodings,
                labels: &labels,
            };
            train_sequence_classifier(&trainable, set, Some(set), &args, &mut Quiet).unwrap()
        }
    };
    (trainable, trained, data.labels)
}

fn write(
    trainable: &Trainable,
    trained: &TrainedModel,
    labels: &LabelSet,
    out: &Path,
    method: Method,
) {
    let args = args(method);
    let kept = trained.epochs[trained.best_epoch - 1].eval.clone();
    write_classifier(
        &Classifier {
            model: &trainable.model,
            base_reference: "tests/fixtures/base",
            labels,
            tensors: trained.tensors.clone(),
            datasets: vec!["train.tsv".into()],
            evaluation: kept.as_ref().map(|m| ("train.tsv".to_string(), m)),
            ner_evaluation: None,
            method: method.name(),
            args: &args,
            best_epoch: trained.best_epoch,
        },
        out,
    )
    .unwrap();
}

#[test]
fn every_family_trains_with_every_method_into_a_folder_transformers_loads() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let texts: Vec<&str> = TRAIN
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let mut folders = Vec::new();
    for (name, prefix) in FAMILIES {
        let base = fixture(name);
        for method in [Method::Head, Method::Full, Method::Lora] {
            // The architecture's default targets (the attention's query and value).
            let lora = (method == Method::Lora).then(Lora::default);
            let (trainable, trained, labels) = train_sequence(&base, method, lora, &train_path);
            let class = format!("{prefix}ForSequenceClassification");
            assert_eq!(trainable.model.encoder.class_name(), class);
            // The head is new; nothing else of the base is.
            let new = trainable.new_tensors();
            assert!(
                !new.is_empty()
                    && new.iter().all(|n| n.starts_with("classifier")
                        || n.starts_with("pre_classifier")
                        || n.ends_with("pooler.dense.weight")
                        || n.ends_with("pooler.dense.bias")),
                "{name}: {new:?}"
            );
            // In memory, the model is the kept epoch's; the folder computes the same.
            let expected = girder_logits(&trainable.model, &texts);
            let out = dir.path().join(format!("{name}-{}", method.name()));
            write(&trainable, &trained, &labels, &out, method);
            let classifier = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
            assert_eq!(classifier.encoder.class_name(), class);
            assert_eq!(classifier.config.id2label, ["bad", "good"]);
            let logits = girder_logits(&classifier, &texts);
            let diff = max_abs_diff(&logits, &expected);
            println!(
                "{name:<16} {:<5} folder vs trained model: {diff:.2e}",
                method.name()
            );
            assert!(
                diff < 1e-5,
                "{name} {}: exported logits differ by {diff}",
                method.name()
            );
            if method == Method::Head {
                // Only the head moved: the encoder's tensors are the base's.
                let base = Model::load(base.to_str().unwrap(), &LoadOptions::default()).unwrap();
                let enc = base.encode_texts(&texts[..2]).unwrap();
                let batch = girder::batch::RaggedBatch::from_encodings(&enc);
                let a = base.encoder.encode(&batch).unwrap().last_hidden_state;
                let b = classifier.encoder.encode(&batch).unwrap().last_hidden_state;
                assert_eq!(
                    a.to_vec2::<f32>().unwrap(),
                    b.to_vec2::<f32>().unwrap(),
                    "{name}"
                );
            }
            folders.push((out, class, logits));
        }
    }
    // The card's front matter parses and names the base and the data.
    let readme = folders[0].0.join("README.md");
    let card = model_card::parse(&readme, &std::fs::read_to_string(&readme).unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(card.base_model.unwrap().values(), ["tests/fixtures/base"]);
    assert_eq!(card.datasets.unwrap().values(), ["train.tsv"]);
    assert_eq!(card.pipeline_tag.as_deref(), Some("text-classification"));
    transformers_agrees(&folders, &texts);
}

/// Top-layer training keeps the first `num_hidden_layers` layers: before training, the last
/// layer computed at the first tokens on the frozen layers' output gives the whole model's
/// logits; training moves only the last layer, the pooler and the head; the folder (a plain
/// `…ForSequenceClassification` with the layers kept) loads in girder and transformers with
/// the trained model's logits. Families without the first-token path are refused up front.
#[test]
fn top_layer_trains_the_last_kept_layer_into_a_folder_transformers_loads() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let data = read_classification(&train_path, &Columns::default(), None).unwrap();
    let texts = data.texts();
    let labels = data.label_ids();
    let all: Vec<usize> = (0..texts.len()).collect();
    let method = Method::TopLayer;
    let mut folders = Vec::new();
    // The fixtures have 2 layers: keep both, or the first only (the frozen part is then
    // the embeddings alone).
    for (name, prefix, keep) in [
        ("bert-base", "Bert", 2),
        ("bert-base", "Bert", 1),
        ("roberta-base", "Roberta", 1),
        ("xlmr-base", "XLMRoberta", 2),
    ] {
        let base = fixture(name);
        let base_ref = base.to_str().unwrap();
        assert_eq!(top_layer::base_num_hidden_layers(base_ref).unwrap(), 2);
        let options = LoadOptions {
            num_hidden_layers: Some(keep),
            ..LoadOptions::default()
        };
        let trainable = Trainable::load(
            base_ref,
            Head::SequenceClassification,
            data.labels.names(),
            method,
            None,
            &args(method),
            options.clone(),
        )
        .unwrap();
        let model = &trainable.model;
        let frozen = top_layer::load_frozen(base_ref, keep, &options).unwrap();
        let inputs = top_layer::layer_inputs(&frozen, &texts, &labels, &mut Quiet).unwrap();
        let first_tokens = inputs
            .logits(model, &all)
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let whole = girder_logits(model, &texts);
        let diff = max_abs_diff(&first_tokens, &whole);
        assert!(diff < 1e-5, "{name}: first-token path differs by {diff}");
        let layer = format!("encoder.layer.{}.", keep - 1);
        let trained_vars: Vec<String> = trainable
            .parameters()
            .trained()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            trained_vars.iter().all(|n| n.contains(&layer)
                || n.contains("pooler.")
                || n.starts_with("classifier")),
            "{name}: {trained_vars:?}"
        );
        assert!(trained_vars.iter().any(|n| n.contains(&layer)), "{name}");

        let trained = top_layer::train_top_layer(
            &trainable,
            &inputs,
            Some(&inputs),
            &args(method),
            &mut Quiet,
        )
        .unwrap();
        let kept = trained.epochs[trained.best_epoch - 1].eval.clone().unwrap();
        let expected = girder_logits(model, &texts);
        // The layers above the last kept one are gone.
        for (n, _) in &trained.tensors {
            assert!(
                !n.contains(&format!("encoder.layer.{keep}.")),
                "{name}: {n}"
            );
        }
        let out = dir.path().join(format!("{name}-top-layer-{keep}"));
        write(&trainable, &trained, &data.labels, &out, method);
        let classifier = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let class = format!("{prefix}ForSequenceClassification");
        assert_eq!(classifier.encoder.class_name(), class);
        assert_eq!(classifier.config.num_hidden_layers(), Some(keep));
        let logits = girder_logits(&classifier, &texts);
        let diff = max_abs_diff(&logits, &expected);
        println!("{name:<16} top-layer ({keep} kept) folder vs trained model: {diff:.2e}");
        assert!(diff < 1e-5, "{name}: exported logits differ by {diff}");
        // The kept epoch's accuracy is the folder's.
        let predicted: Vec<usize> = logits.iter().map(|r| usize::from(r[1] > r[0])).collect();
        assert_eq!(
            ClassificationMetrics::compute(&labels, &predicted, 2).accuracy,
            kept.accuracy
        );
        // Layers below the last kept one did not move.
        if keep > 1 {
            let enc = frozen.encode_texts(&texts[..2]).unwrap();
            let batch = girder::batch::RaggedBatch::from_encodings(&enc);
            let below = Model::load(
                out.to_str().unwrap(),
                &LoadOptions {
                    num_hidden_layers: Some(keep - 1),
                    ..LoadOptions::default()
                },
            )
            .unwrap();
            let a = frozen.encoder.encode(&batch).unwrap().last_hidden_state;
            let b = below.encoder.encode(&batch).unwrap().last_hidden_state;
            assert_eq!(
                a.to_vec2::<f32>().unwrap(),
                b.to_vec2::<f32>().unwrap(),
                "{name}"
            );
        }
        folders.push((out, class, logits));
    }
    // Keeping more layers than the base has, or a family without the first-token path.
    let too_many = LoadOptions {
        num_hidden_layers: Some(3),
        ..LoadOptions::default()
    };
    let err = Model::load(fixture("bert-base").to_str().unwrap(), &too_many).unwrap_err();
    assert!(err.to_string().contains("3 layers"), "{err}");
    let mpnet = Trainable::load(
        fixture("mpnet-base").to_str().unwrap(),
        Head::SequenceClassification,
        data.labels.names(),
        method,
        None,
        &args(method),
        LoadOptions {
            num_hidden_layers: Some(1),
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let err = top_layer::check_supported(&mpnet.model).unwrap_err();
    assert!(err.to_string().contains("top-layer"), "{err}");
    transformers_agrees(&folders, &texts);
}

#[test]
fn full_fine_tuning_moves_the_encoder_and_the_pipeline_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let base = fixture("mpnet-base");
    let before = Model::load(base.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let (trainable, trained, labels) = train_sequence(&base, Method::Full, None, &train_path);
    assert_eq!(
        trained.best_epoch,
        trained.epochs.len().min(trained.best_epoch)
    );
    // The encoder moved, not only the classifier: the exported word embeddings and a
    // layer's query differ from the base's.
    let exported = |name: &str| &trained.tensors.iter().find(|(n, _)| n == name).unwrap().1;
    let words = exported("mpnet.embeddings.word_embeddings.weight");
    let change = (words - before.encoder.word_embeddings().dense_table().unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(change > 0.0, "the word embeddings did not move");
    assert!(trained
        .tensors
        .iter()
        .any(|(n, _)| n == "mpnet.encoder.layer.0.attention.attn.q.weight"));
    let out = dir.path().join("mpnet-full");
    write(&trainable, &trained, &labels, &out, Method::Full);
    let classifier = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
    let texts = ["what a lovely film", "a tedious waste of time"];
    let results = tc::run(&classifier, &texts, &tc::Options::default()).unwrap();
    let logits = girder_logits(&classifier, &texts);
    for (r, row) in results.iter().zip(&logits) {
        let best = if row[1] > row[0] { "good" } else { "bad" };
        assert_eq!(r.best.as_ref().unwrap().label, best);
    }
    let kept = trained.epochs[trained.best_epoch - 1].eval.clone().unwrap();
    let all: Vec<&str> = TRAIN
        .lines()
        .skip(1)
        .map(|l| l.split('\t').next().unwrap())
        .collect();
    let predicted: Vec<usize> = tc::run(&classifier, &all, &tc::Options::default())
        .unwrap()
        .iter()
        .map(|r| usize::from(r.best.as_ref().unwrap().label == "good"))
        .collect();
    let gold: Vec<usize> = TRAIN
        .lines()
        .skip(1)
        .map(|l| usize::from(l.ends_with("good")))
        .collect();
    assert_eq!(
        ClassificationMetrics::compute(&gold, &predicted, 2).accuracy,
        kept.accuracy
    );
}

#[test]
fn lora_starts_from_the_base_and_its_adapter_loads_in_girder_and_peft() {
    let dir = tempfile::tempdir().unwrap();
    let train_path = dir.path().join("train.tsv");
    std::fs::write(&train_path, TRAIN).unwrap();
    let texts = [
        "what a lovely film",
        "a tedious waste of time",
        "i hated every minute",
    ];
    for (name, targets) in [
        ("bert-base", vec!["query", "value"]),
        ("roberta-base", vec!["query", "value", "dense"]),
    ] {
        let base_path = fixture(name);
        let lora = Lora {
            target_modules: targets.iter().map(|t| t.to_string()).collect(),
            ..Lora::default()
        };
        // B starts at zero: before training, the adapted encoder computes the base's function.
        let fresh = Trainable::load(
            base_path.to_str().unwrap(),
            Head::SequenceClassification,
            &["bad".into(), "good".into()],
            Method::Lora,
            Some(lora.clone()),
            &args(Method::Lora),
            LoadOptions::default(),
        )
        .unwrap();
        let base = Model::load(base_path.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let enc = base.encode_texts(&texts).unwrap();
        let batch = girder::batch::RaggedBatch::from_encodings(&enc);
        let plain = base
            .encoder
            .encode(&batch)
            .unwrap()
            .last_hidden_state
            .to_vec2::<f32>()
            .unwrap();
        let adapted = fresh
            .model
            .encoder
            .encode(&batch)
            .unwrap()
            .last_hidden_state
            .to_vec2::<f32>()
            .unwrap();
        assert!(max_abs_diff(&plain, &adapted) < 1e-6, "{name}");
        let trained_vars: Vec<String> = fresh
            .parameters()
            .trained()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert!(
            trained_vars
                .iter()
                .all(|n| n.contains(".lora_") || n.starts_with("classifier")),
            "{trained_vars:?}"
        );
        drop(fresh);

        let (trainable, trained, labels) =
            train_sequence(&base_path, Method::Lora, Some(lora.clone()), &train_path);
        let expected = girder_logits(&trainable.model, &texts);
        // The merged weights in a plain folder give the adapted model's logits.
        let merged = dir.path().join(format!("{name}-lora-merged"));
        write(&trainable, &trained, &labels, &merged, Method::Lora);
        let classifier = Model::load(merged.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let diff = max_abs_diff(&girder_logits(&classifier, &texts), &expected);
        assert!(diff < 1e-5, "{name}: merged logits differ by {diff}");
        // The unmerged adapter, as PEFT writes it: girder applies it at load.
        let adapter_dir = dir.path().join(format!("{name}-lora"));
        write_lora_adapter(
            &LoraAdapter {
                base_reference: base_path.canonicalize().unwrap().to_str().unwrap(),
                lora: &lora,
                tensors: trained.adapters.clone().unwrap(),
                modules_to_save: trainable.head_modules(),
                datasets: vec!["train.tsv".into()],
                labels: labels.names(),
                head: Head::SequenceClassification,
                quantized_base: None,
            },
            &adapter_dir,
        )
        .unwrap();
        let adapted = Model::load(
            base_path.to_str().unwrap(),
            &LoadOptions {
                adapter: Some(adapter_dir.clone()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(adapted.config.id2label, labels.names());
        let diff = max_abs_diff(&girder_logits(&adapted, &texts), &expected);
        assert!(
            diff < 1e-5,
            "{name}: the adapter applied at load differs by {diff}"
        );
        peft_agrees(&adapter_dir, &texts, &expected);
    }
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
fn token_classifiers_train_head_only_and_with_lora() {
    let dir = tempfile::tempdir().unwrap();
    let data_path = dir.path().join("train.bio");
    std::fs::write(&data_path, NER).unwrap();
    let tags = bio_tags(&["PER".into(), "LOC".into()]).unwrap();
    let (sentences, _) = read_conll(&data_path, Some(&tags)).unwrap();
    let text = "Angela Merkel visited Paris";
    for (name, prefix) in [
        ("bert-base", "Bert"),
        ("distilbert-base", "DistilBert"),
        ("xlmr-base", "XLMRoberta"),
    ] {
        let base_path = fixture(name);
        for method in [Method::Head, Method::Lora] {
            let lora = (method == Method::Lora).then(|| Lora {
                target_modules: match prefix {
                    "DistilBert" => vec!["q_lin".into(), "v_lin".into(), "lin1".into()],
                    _ => vec!["query".into(), "value".into(), "dense".into()],
                },
                ..Lora::default()
            });
            let args = TrainingArguments {
                num_train_epochs: 3,
                learning_rate: 1e-2,
                ..Default::default()
            };
            let trainable = Trainable::load(
                base_path.to_str().unwrap(),
                Head::TokenClassification,
                tags.names(),
                method,
                lora.clone(),
                &args,
                LoadOptions::default(),
            )
            .unwrap();
            let model = &trainable.model;
            let trained = if method == Method::Head {
                let features = token_features(model, &sentences, &mut Quiet).unwrap();
                if name == "bert-base" {
                    // One row per word (no word is split by truncation here).
                    assert_eq!(features.labels, [1, 2, 0, 3, 1, 0, 0, 3, 4]);
                }
                let trained = train_token_head(
                    &trainable,
                    &features,
                    Some((&features, &sentences)),
                    &tags,
                    &args,
                    &mut Quiet,
                )
                .unwrap();
                assert!(trained.epochs.iter().all(|e| e.entities.is_some()));
                trained
            } else {
                let encoded = ner::encode_sentences(model, &sentences).unwrap();
                let trained = train_token_classifier(
                    &trainable,
                    &encoded,
                    Some((&sentences, &encoded)),
                    &tags,
                    &args,
                    &mut Quiet,
                )
                .unwrap();
                assert!(trained.epochs.iter().all(|e| e.entities.is_some()));
                trained
            };
            let expected = girder_logits_per_token(model, text);
            let out = dir.path().join(format!("{name}-ner-{}", method.name()));
            write_classifier(
                &Classifier {
                    model,
                    base_reference: "tests/fixtures/base",
                    labels: &tags,
                    tensors: trained.tensors.clone(),
                    datasets: vec!["train.bio".into()],
                    evaluation: None,
                    ner_evaluation: None,
                    method: method.name(),
                    args: &args,
                    best_epoch: trained.best_epoch,
                },
                &out,
            )
            .unwrap();
            let tagger = Model::load(out.to_str().unwrap(), &LoadOptions::default()).unwrap();
            let class = format!("{prefix}ForTokenClassification");
            assert_eq!(tagger.encoder.class_name(), class);
            let logits = girder_logits_per_token(&tagger, text);
            let diff = max_abs_diff(&logits, &expected);
            assert!(
                diff < 1e-5,
                "{name} {}: folder vs trained model {diff}",
                method.name()
            );
            token_transformers_agrees(&out, &class, text, &logits);
            if let (Some(lora), Some(adapters)) = (lora, trained.adapters.clone()) {
                let adapter_dir = dir.path().join(format!("{name}-ner-adapter"));
                write_lora_adapter(
                    &LoraAdapter {
                        base_reference: base_path.canonicalize().unwrap().to_str().unwrap(),
                        lora: &lora,
                        tensors: adapters,
                        modules_to_save: trainable.head_modules(),
                        datasets: vec!["train.bio".into()],
                        labels: tags.names(),
                        head: Head::TokenClassification,
                        quantized_base: None,
                    },
                    &adapter_dir,
                )
                .unwrap();
                let adapted = Model::load(
                    base_path.to_str().unwrap(),
                    &LoadOptions {
                        adapter: Some(adapter_dir.clone()),
                        ..Default::default()
                    },
                )
                .unwrap();
                assert_eq!(adapted.encoder.class_name(), class);
                let diff = max_abs_diff(&girder_logits_per_token(&adapted, text), &expected);
                assert!(
                    diff < 1e-5,
                    "{name}: adapter at load vs trained model {diff}"
                );
                peft_agrees_as(
                    &adapter_dir,
                    "TokenClassification",
                    tags.len(),
                    &[text],
                    &expected,
                );
            }
        }
    }
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

/// Dev-only: AutoModelForTokenClassification on the folder: class `class`, no missing or
/// unexpected tensor, girder's token logits.
fn token_transformers_agrees(folder: &Path, class: &str, text: &str, girder: &[Vec<f32>]) {
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
    assert_eq!(reply["class"], class);
    for key in ["missing_keys", "unexpected_keys", "mismatched_keys"] {
        let list = &reply["info"][key];
        assert!(
            list.as_array().is_none_or(|a| a.is_empty()),
            "{}: {key}: {list}",
            folder.display()
        );
    }
    let theirs: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
    let diff = max_abs_diff(girder, &theirs);
    println!("transformers vs girder token logits ({class}): max abs diff {diff:e}");
    assert!(
        diff < 1e-4,
        "token logits differ from transformers by {diff}"
    );
}

/// Dev-only: transformers' AutoModelForSequenceClassification on each folder (one Python
/// process for all): the class named, single-label classification of "bad" / "good", no
/// missing or unexpected tensor, girder's logits for `texts`.
fn transformers_agrees(folders: &[(PathBuf, String, Vec<Vec<f32>>)], texts: &[&str]) {
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
folders, texts = json.loads(sys.argv[1]), json.loads(sys.argv[2])
replies = []
for folder in folders:
    tok = AutoTokenizer.from_pretrained(folder)
    model, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    model.eval()
    with torch.no_grad():
        logits = [model(**tok(t, return_tensors="pt")).logits[0].tolist() for t in texts]
    replies.append({"logits": logits, "info": {k: sorted(map(str, v)) for k, v in info.items()},
                    "class": type(model).__name__, "id2label": model.config.id2label,
                    "problem_type": model.config.problem_type})
print(json.dumps(replies))
"#;
    let paths: Vec<String> = folders.iter().map(|f| f.0.display().to_string()).collect();
    let output = Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(serde_json::to_string(&paths).unwrap())
        .arg(serde_json::to_string(texts).unwrap())
        .output()
        .expect("cannot run the oracle");
    assert!(
        output.status.success(),
        "transformers failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let replies: Vec<serde_json::Value> =
        serde_json::from_str(stdout.lines().last().unwrap_or_default()).unwrap();
    for ((folder, class, girder), reply) in folders.iter().zip(&replies) {
        assert_eq!(reply["class"], class.as_str(), "{}", folder.display());
        assert_eq!(reply["problem_type"], "single_label_classification");
        assert_eq!(
            reply["id2label"],
            serde_json::json!({"0": "bad", "1": "good"})
        );
        for key in ["missing_keys", "unexpected_keys", "mismatched_keys"] {
            let list = &reply["info"][key];
            assert!(
                list.as_array().is_none_or(|a| a.is_empty()),
                "{}: {key}: {list}",
                folder.display()
            );
        }
        let theirs: Vec<Vec<f32>> = serde_json::from_value(reply["logits"].clone()).unwrap();
        let diff = max_abs_diff(girder, &theirs);
        println!(
            "transformers vs girder logits, {}: max abs diff {diff:e}",
            folder.file_name().unwrap().to_string_lossy()
        );
        assert!(
            diff < 1e-4,
            "{}: logits differ from transformers by {diff}",
            folder.display()
        );
    }
}

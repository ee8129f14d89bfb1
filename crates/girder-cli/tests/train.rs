//! `girder train` and `girder eval` end to end on the tiny BERT fixture: a head is trained,
//! the folder runs under `girder run text-classification` and `girder eval` scores it;
//! bad data fails with one line naming the file, the line and the reason.

mod common;

use common::{fixture, girder, scratch};
use std::path::Path;

const TRAIN: &str = "text\tlabel
what a lovely film\tpositive
great acting and a great story\tpositive
i loved every minute\tpositive
a delight from start to end\tpositive
a dull and tedious mess\tnegative
i hated every minute\tnegative
boring, slow and far too long\tnegative
a tedious waste of time\tnegative
";

#[test]
fn train_then_run_then_eval() {
    let dir = scratch("roundtrip");
    let data = dir.join("train.tsv");
    std::fs::write(&data, TRAIN).unwrap();
    let out = dir.join("model");
    let base = fixture("bert-base");
    let trained = girder(&[
        "train",
        "text-classification",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--eval",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "2",
        "--learning-rate",
        "1e-2",
    ]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "{stderr}");
    assert!(stderr.contains("epoch 2: train loss"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(trained.stdout.trim_ascii_end()).unwrap();
    assert_eq!(summary["method"], "head");
    let accuracy = summary["eval"]["accuracy"].as_f64().unwrap();

    let run = girder(&[
        "run",
        "text-classification",
        "--model",
        out.to_str().unwrap(),
        "What a lovely film",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(run.stdout.trim_ascii_end()).unwrap();
    let label = result["label"].as_str().unwrap();
    assert!(label == "positive" || label == "negative", "{result}");

    let eval = girder(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(eval.stdout.trim_ascii_end()).unwrap();
    assert_eq!(metrics["count"], 8);
    assert_eq!(
        metrics["labels"],
        serde_json::json!(["negative", "positive"])
    );
    // The saved model is the kept epoch: eval through the inference path scores the same.
    assert!((metrics["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12);
}

/// `--method top-layer` on a sentence-transformers base (the quick start's method): the
/// folder is a `BertForSequenceClassification` with the base's layers (both of the
/// fixture's by default), it runs, and `girder eval` scores it as training's kept epoch did;
/// the method is refused where it does not apply.
#[test]
fn top_layer_trains_the_last_layer_then_runs_and_evals() {
    let dir = scratch("top-layer");
    let data = dir.join("train.tsv");
    std::fs::write(&data, TRAIN).unwrap();
    let out = dir.join("model");
    let base = fixture("bert-st-mean");
    let trained = girder(&[
        "train",
        "text-classification",
        "--method",
        "top-layer",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--eval",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--epochs",
        "2",
        "--batch-size",
        "4",
    ]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "{stderr}");
    assert!(
        stderr.contains("up to layer 2 (the last one trained)"),
        "{stderr}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(trained.stdout.trim_ascii_end()).unwrap();
    assert_eq!(summary["method"], "top-layer");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["num_hidden_layers"], 2);
    assert_eq!(
        config["architectures"],
        serde_json::json!(["BertForSequenceClassification"])
    );
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("--method top-layer"), "{card}");
    assert!(card.contains("kept up to layer 2"), "{card}");

    let run = girder(&[
        "run",
        "text-classification",
        "--model",
        out.to_str().unwrap(),
        "What a lovely film",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let eval = girder(&[
        "eval",
        "--model",
        out.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let metrics: serde_json::Value = serde_json::from_slice(eval.stdout.trim_ascii_end()).unwrap();
    let accuracy = summary["eval"]["accuracy"].as_f64().unwrap();
    assert!((metrics["accuracy"].as_f64().unwrap() - accuracy).abs() < 1e-12);

    // Token classification has no top-layer method; --num-hidden-layers needs it.
    let bio = dir.join("train.bio");
    std::fs::write(&bio, "Paris\tB-LOC\nis\tO\n").unwrap();
    let refused = girder(&[
        "train",
        "token-classification",
        "--method",
        "top-layer",
        "--base",
        base.to_str().unwrap(),
        "--data",
        bio.to_str().unwrap(),
        "--out",
        dir.join("ner").to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("top-layer trains sequence classifiers"),
        "{stderr}"
    );
    let refused = girder(&[
        "train",
        "text-classification",
        "--num-hidden-layers",
        "1",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.join("head").to_str().unwrap(),
    ]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--num-hidden-layers is for --method top-layer"),
        "{stderr}"
    );
}

#[test]
fn lora_writes_a_peft_adapter_or_a_merged_folder() {
    let dir = scratch("lora");
    let data = dir.join("train.tsv");
    std::fs::write(&data, TRAIN).unwrap();
    let base = fixture("bert-base");
    for merge in [false, true] {
        let out = dir.join(if merge { "merged" } else { "adapter" });
        let mut args = vec![
            "train",
            "text-classification",
            "--method",
            "lora",
            "--base",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "1",
        ];
        if merge {
            args.push("--merge");
        }
        let trained = girder(&args);
        assert!(
            trained.status.success(),
            "{}",
            String::from_utf8_lossy(&trained.stderr)
        );
        if merge {
            assert!(out.join("model.safetensors").is_file());
        } else {
            let config: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(out.join("adapter_config.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(config["peft_type"], "LORA");
            assert_eq!(config["task_type"], "SEQ_CLS");
            assert_eq!(
                config["target_modules"],
                serde_json::json!(["query", "value"])
            );
            assert!(out.join("adapter_model.safetensors").is_file());
        }
    }
    // The same training (same seed) twice: the merged folder and the base with the adapter
    // merged at load (`--adapter`) give the same labels and scores.
    let run = |args: &[&str]| -> Vec<serde_json::Value> {
        let mut all = vec!["run", "text-classification"];
        all.extend_from_slice(args);
        all.extend(["fine", "a tedious waste of time"]);
        let out = girder(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let merged = run(&["--model", dir.join("merged").to_str().unwrap()]);
    let adapted = run(&[
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        dir.join("adapter").to_str().unwrap(),
    ]);
    for (m, a) in merged.iter().zip(&adapted) {
        assert_eq!(m["label"], a["label"]);
        assert!(["positive", "negative"].contains(&a["label"].as_str().unwrap()));
        let (m, a) = (m["score"].as_f64().unwrap(), a["score"].as_f64().unwrap());
        assert!((m - a).abs() < 1e-5, "merged {m} vs adapter {a}");
    }
    // `girder eval --adapter` scores the adapted base as the merged folder.
    let eval = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["eval", "--data", data.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = girder(&all);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(out.stdout.trim_ascii_end()).unwrap()
    };
    let merged = eval(&["--model", dir.join("merged").to_str().unwrap()]);
    let adapted = eval(&[
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        dir.join("adapter").to_str().unwrap(),
    ]);
    assert_eq!(merged["confusion"], adapted["confusion"]);
}

#[test]
fn token_classification_trains_and_runs() {
    let dir = scratch("ner");
    let data = dir.join("train.bio");
    std::fs::write(
        &data,
        "Angela\tB-PER\nMerkel\tI-PER\nvisited\tO\nParis\tB-LOC\n\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n",
    )
    .unwrap();
    let out = dir.join("model");
    let base = fixture("bert-base");
    let trained = girder(&[
        "train",
        "token-classification",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--eval",
        data.to_str().unwrap(),
        "--labels",
        "PER,LOC",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "{stderr}");
    assert!(stderr.contains("micro avg  precision"), "{stderr}");
    let summary: serde_json::Value =
        serde_json::from_slice(trained.stdout.trim_ascii_end()).unwrap();
    assert_eq!(summary["entities"]["micro"]["support"], 4);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        config["id2label"],
        serde_json::json!({"0": "O", "1": "B-PER", "2": "I-PER", "3": "B-LOC", "4": "I-LOC"})
    );
    let run = girder(&[
        "run",
        "token-classification",
        "--model",
        out.to_str().unwrap(),
        "Angela Merkel visited Paris",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

#[test]
fn token_classification_full_and_lora_then_eval() {
    let dir = scratch("ner-encoder");
    let data = dir.join("train.bio");
    std::fs::write(
        &data,
        "Angela\tB-PER\nMerkel\tI-PER\nvisited\tO\nParis\tB-LOC\n\nJohn\tB-PER\nlives\tO\nin\tO\nNew\tB-LOC\nYork\tI-LOC\n",
    )
    .unwrap();
    let base = fixture("bert-base");
    let train = |method: &str, out: &Path| {
        let trained = girder(&[
            "train",
            "token-classification",
            "--method",
            method,
            "--base",
            base.to_str().unwrap(),
            "--data",
            data.to_str().unwrap(),
            "--eval",
            data.to_str().unwrap(),
            "--labels",
            "PER,LOC",
            "--out",
            out.to_str().unwrap(),
            "--epochs",
            "2",
        ]);
        let stderr = String::from_utf8_lossy(&trained.stderr).into_owned();
        assert!(trained.status.success(), "{stderr}");
        assert!(stderr.contains("eval entities precision"), "{stderr}");
        serde_json::from_slice::<serde_json::Value>(trained.stdout.trim_ascii_end()).unwrap()
    };
    // Full fine-tuning writes a token classifier that `girder eval` scores with seqeval; the
    // kept epoch's scores from training are the ones eval finds.
    let full = dir.join("full");
    let summary = train("full", &full);
    assert_eq!(summary["method"], "full");
    let eval = girder(&[
        "eval",
        "--model",
        full.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
    ]);
    assert!(
        eval.status.success(),
        "{}",
        String::from_utf8_lossy(&eval.stderr)
    );
    let scores: serde_json::Value = serde_json::from_slice(eval.stdout.trim_ascii_end()).unwrap();
    assert_eq!(scores["entities"]["micro"]["support"], 4);
    let (a, b) = (
        scores["entities"]["micro"]["f1"].as_f64().unwrap(),
        summary["entities"]["micro"]["f1"].as_f64().unwrap(),
    );
    assert!((a - b).abs() < 1e-9, "eval F1 {a} vs training's {b}");

    // LoRA writes a TOKEN_CLS adapter that `girder run --adapter` applies to the base.
    let adapter = dir.join("lora");
    let summary = train("lora", &adapter);
    assert_eq!(summary["adapter"], true);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["task_type"], "TOKEN_CLS");
    let run = girder(&[
        "run",
        "token-classification",
        "--model",
        base.to_str().unwrap(),
        "--adapter",
        adapter.to_str().unwrap(),
        "--aggregation",
        "none",
        "Angela Merkel visited Paris",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(run.stdout.trim_ascii_end()).unwrap();
    for entity in result["entities"].as_array().unwrap() {
        let tag = entity["entity"].as_str().unwrap();
        assert!(["B-PER", "I-PER", "B-LOC", "I-LOC"].contains(&tag), "{tag}");
    }
}

#[test]
fn bad_data_is_one_line_with_file_and_line() {
    let dir = scratch("bad");
    let data = dir.join("train.tsv");
    std::fs::write(&data, "text\tlabel\ngood\tpositive\nno label here\n").unwrap();
    let base = fixture("bert-base");
    let out = girder(&[
        "train",
        "text-classification",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        dir.join("model").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("train.tsv:3: 1 fields, but the header has 2"),
        "{stderr}"
    );

    let dev = dir.join("dev.tsv");
    std::fs::write(&dev, "text\tlabel\nmeh\tneutral\n").unwrap();
    std::fs::write(&data, "text\tlabel\ngood\tpositive\nbad\tnegative\n").unwrap();
    let out = girder(&[
        "train",
        "text-classification",
        "--base",
        base.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--eval",
        dev.to_str().unwrap(),
        "--out",
        dir.join("model").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("dev.tsv:2: unknown label `neutral`; the labels are: negative, positive"),
        "{stderr}"
    );
}

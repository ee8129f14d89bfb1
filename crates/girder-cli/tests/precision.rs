//! `--quantize` and `--dtype` on the command line: the accuracy report printed and written,
//! a drift above `--max-drift` refused (exit 1, naming the drift and the way out) unless
//! `--allow-drift`, and the refusals of what cannot be quantized or halved.
//! all-MiniLM-L6-v2 from models/ (`scripts/fetch-models`).

mod common;

use common::{fixture, girder, scratch};
use std::path::Path;

fn minilm() -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models` first",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

#[test]
fn quantized_run_prints_and_writes_its_accuracy_report() {
    let model = minilm();
    let dir = scratch("q8");
    let report = dir.join("report.json");
    let out = girder(&[
        "run",
        "embeddings",
        "-m",
        &model,
        "--quantize",
        "q8_0",
        "--drift-report",
        report.to_str().unwrap(),
        "A man is eating food.",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("accuracy report: q8_0 against f32"),
        "{stderr}"
    );
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(written["candidate"], "q8_0");
    assert_eq!(written["ok"], true);
    assert!(written["figures"]["min_cosine"].as_f64().unwrap() > 0.995);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["embedding"].as_array().unwrap().len(), 384);
}

#[test]
fn drift_above_the_limit_is_refused_unless_allowed() {
    let model = minilm();
    let args = [
        "run",
        "embeddings",
        "-m",
        &model,
        "--quantize",
        "q4_0",
        "--max-drift",
        "0.001",
        "A man is eating food.",
    ];
    let out = girder(&args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("q4_0 drifts") && stderr.contains("--allow-drift"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
    let mut allowed = args.to_vec();
    allowed.push("--allow-drift");
    let out = girder(&allowed);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("WARNING: q4_0 drifts"), "{stderr}");
}

#[test]
fn what_cannot_be_quantized_is_refused_by_name() {
    let seqcls = fixture("bert-seqcls");
    let out = girder(&[
        "run",
        "text-classification",
        "-m",
        seqcls.to_str().unwrap(),
        "--quantize",
        "nf4",
        "x",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("nf4") && stderr.contains("q8_0"),
        "{stderr}"
    );
    let out = girder(&[
        "run",
        "embeddings",
        "-m",
        &minilm(),
        "--max-drift",
        "0.1",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2), "--max-drift without --quantize");
    for wrong in [
        vec!["--dtype", "int8"],
        vec!["--dtype", "bf16", "--quantize", "q8_0"],
        vec!["--lm-head-f32"],
    ] {
        let mut args = vec!["run", "embeddings", "-m", seqcls.to_str().unwrap()];
        args.extend(wrong.iter().copied());
        args.push("x");
        let out = girder(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{wrong:?}: {stderr}");
        assert!(stderr.contains("--dtype"), "{stderr}");
    }
    let gguf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.is_file() {
        let out = girder(&[
            "run",
            "text-generation",
            "-m",
            gguf.to_str().unwrap(),
            "--quantize",
            "q8_0",
            "x",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("quantized already"), "{stderr}");
        let out = girder(&[
            "run",
            "text-generation",
            "-m",
            gguf.to_str().unwrap(),
            "--dtype",
            "bf16",
            "x",
        ]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains("keeps the types it was written in"),
            "{stderr}"
        );
    }
}

#[test]
fn half_precision_run_prints_its_accuracy_report() {
    let out = girder(&[
        "run",
        "embeddings",
        "-m",
        &minilm(),
        "--dtype",
        "bf16",
        "A man is eating food.",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("accuracy report: bf16 against f32") && stderr.contains("within"),
        "{stderr}"
    );
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["embedding"].as_array().unwrap().len(), 384);
    let gpt2 = fixture("gpt2-causal-lm");
    let out = girder(&[
        "run",
        "text-generation",
        "-m",
        gpt2.to_str().unwrap(),
        "--dtype",
        "bf16",
        "--lm-head-f32",
        "--max-new-tokens",
        "3",
        "hello",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("accuracy report: bf16 against f32"),
        "{stderr}"
    );
}

#[test]
fn qlora_trains_adapters_over_a_quantized_base() {
    let dir = scratch("qlora");
    let data = dir.join("train.tsv");
    std::fs::write(
        &data,
        "text\tlabel\nwhat a lovely film\tpositive\ni loved every minute\tpositive\na dull and tedious mess\tnegative\ni hated every minute\tnegative\n",
    )
    .unwrap();
    let out = dir.join("adapter");
    let model = minilm();
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "text-classification",
            "--base",
            &model,
            "--data",
            data.to_str().unwrap(),
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        girder(&args)
    };
    let trained = train(&["--method", "qlora", "--quantize", "q8_0"]);
    let stderr = String::from_utf8_lossy(&trained.stderr);
    assert!(trained.status.success(), "{stderr}");
    let summary: serde_json::Value = serde_json::from_slice(&trained.stdout).unwrap();
    assert_eq!(summary["method"], "qlora");
    assert_eq!(summary["adapter"], true);
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("quantized to q8_0"), "{card}");
    // The adapter applies to the f32 base.
    let run = girder(&[
        "run",
        "text-classification",
        "-m",
        &model,
        "--adapter",
        out.to_str().unwrap(),
        "what a lovely film",
    ]);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let merged = train(&["--method", "qlora", "--merge"]);
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert_eq!(merged.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--merge with --method qlora"), "{stderr}");
    let misplaced = train(&["--method", "lora", "--quantize", "q4_k"]);
    let stderr = String::from_utf8_lossy(&misplaced.stderr);
    assert_eq!(misplaced.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("is for --method qlora"), "{stderr}");
}

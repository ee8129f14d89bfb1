//! `girder check` and `girder lock` end to end: exit codes (0 ok, 1 error, 2 could not
//! run), the `--json` shape, lock drift, corrupt lock files, and the time on the real
//! all-MiniLM-L6-v2.

mod common;

use common::{copy_dir, fixture, girder, scratch, stdout_json};
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// `{"ok": bool, "findings": [{"severity", "code", "message", "fix"}]}` and nothing else.
fn assert_report_shape(report: &Value) {
    let keys: Vec<&String> = report.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["findings", "ok"], "{report}");
    assert!(report["ok"].is_boolean());
    for f in report["findings"].as_array().unwrap() {
        let keys: Vec<&String> = f.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["code", "fix", "message", "severity"], "{f}");
        assert!(["error", "warning", "info"].contains(&f["severity"].as_str().unwrap()));
        assert!(!f["code"].as_str().unwrap().is_empty());
        assert!(!f["message"].as_str().unwrap().is_empty());
    }
}

fn codes(report: &Value, severity: &str) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["severity"] == severity)
        .map(|f| f["code"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn matched_pair_exits_0_with_the_json_shape() {
    let model = fixture("bert-seqcls");
    let out = girder(&["check", "-m", model.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = stdout_json(&out);
    assert_report_shape(&report);
    assert_eq!(report["ok"], true);
    assert!(codes(&report, "error").is_empty());
}

#[test]
fn mismatched_tokenizer_exits_1() {
    let model = fixture("bert-base");
    let tokenizer = fixture("roberta-base");
    let out = girder(&[
        "check",
        "-m",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout_json(&out);
    assert_report_shape(&report);
    assert_eq!(report["ok"], false);
    assert!(
        codes(&report, "error").contains(&"vocab-overflow".to_string()),
        "{report}"
    );
    // The human report names the code and the fix.
    let out = girder(&[
        "check",
        "-m",
        model.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("vocab-overflow") && text.contains("fix: "),
        "{text}"
    );
    assert!(text.contains("FAILED"), "{text}");
}

#[test]
fn a_check_that_cannot_run_exits_2() {
    let out = girder(&["check", "-m", "/no/such/model", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("/no/such/model"), "{stderr}");
    let model = fixture("bert-base");
    let out = girder(&[
        "check",
        "-m",
        model.to_str().unwrap(),
        "--tokenizer",
        "/no/such/tokenizer",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn corrupt_or_unreadable_lock_is_a_clear_error_not_a_pass() {
    let dir = scratch("corrupt");
    let model = fixture("bert-seqcls");
    let m = model.to_str().unwrap();
    let lock = dir.join("girder.lock");
    let out = girder(&["lock", "-m", m, "--out", lock.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let good = std::fs::read_to_string(&lock).unwrap();
    let cases: Vec<(&str, String)> = vec![
        ("truncated", good[..good.len() / 2].to_string()),
        ("empty", String::new()),
        ("not json", "girder.lock\n".to_string()),
        (
            "wrong version",
            good.replacen("\"girder_lock\": 2", "\"girder_lock\": 99", 1),
        ),
        ("format 2 without its model section", {
            let mut v: Value = serde_json::from_str(&good).unwrap();
            v.as_object_mut().unwrap().remove("model");
            v.to_string()
        }),
        ("unknown field", {
            let mut v: Value = serde_json::from_str(&good).unwrap();
            v["model"]["extra"] = Value::from(1);
            v.to_string()
        }),
        ("bad fingerprint", {
            let v: Value = serde_json::from_str(&good).unwrap();
            let sha = v["tokenizer"]["sha256"].as_str().unwrap().to_string();
            good.replace(&sha, "nothex")
        }),
    ];
    for (what, text) in cases {
        std::fs::write(&lock, text).unwrap();
        let out = girder(&["check", "-m", m, "--lock", lock.to_str().unwrap(), "--json"]);
        assert_eq!(out.status.code(), Some(2), "{what}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert!(
            stderr.contains("lock file") && stderr.contains("girder.lock"),
            "{what}: {stderr}"
        );
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "{what}: one line: {stderr}"
        );
    }
    let missing = dir.join("absent.lock");
    let out = girder(&["check", "-m", m, "--lock", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("absent.lock"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn lock_then_check_reports_drift() {
    let dir = scratch("drift");
    let model = fixture("bert-seqcls");
    let m = model.to_str().unwrap();
    let lock = dir.join("girder.lock");
    let probe = dir.join("probe.txt");
    std::fs::write(
        &probe,
        "I loved it.\nThe Worst Film Ever.\n\nDas Wetter ist schön.\n",
    )
    .unwrap();
    let out = girder(&[
        "lock",
        "-m",
        m,
        "--probe",
        probe.to_str().unwrap(),
        "--out",
        lock.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pinned: Value = serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    assert_eq!(pinned["probe"].as_array().unwrap().len(), 3);
    assert!(pinned["classifier"]["distribution"].is_array());

    let out = girder(&["check", "-m", m, "--lock", lock.to_str().unwrap(), "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(codes(&stdout_json(&out), "info").contains(&"lock-ok".to_string()));

    // The same vocabulary without lowercasing: ids change for capitalised words.
    let tok = dir.join("cased-tokenizer");
    std::fs::create_dir_all(&tok).unwrap();
    let mut doc: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("tokenizer.json")).unwrap())
            .unwrap();
    doc["normalizer"]["lowercase"] = Value::Bool(false);
    std::fs::write(tok.join("tokenizer.json"), doc.to_string()).unwrap();
    let out = girder(&[
        "check",
        "-m",
        m,
        "--tokenizer",
        tok.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let report = stdout_json(&out);
    assert_report_shape(&report);
    let drift = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "lock-ids-changed")
        .unwrap_or_else(|| panic!("{report}"));
    let message = drift["message"].as_str().unwrap();
    assert!(
        message.contains("3 of the 3") && message.contains("\"I loved it.\""),
        "{message}"
    );
    assert!(
        message.contains("locked [101, 1045") && message.contains("now [101, 100,"),
        "{message}"
    );

    // `lock` refuses to pin a pair that fails the pre-flight check.
    let roberta = fixture("roberta-base");
    let out = girder(&[
        "lock",
        "-m",
        m,
        "--tokenizer",
        roberta.to_str().unwrap(),
        "--out",
        dir.join("bad.lock").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.join("bad.lock").exists());
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn license_policy_fails_the_check() {
    let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        minilm.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models` first",
        minilm.display()
    );
    let m = minilm.to_str().unwrap();
    let out = girder(&[
        "check",
        "-m",
        m,
        "--deny-license",
        "cc-by-nc-4.0,apache-2.0",
        "--json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(codes(&stdout_json(&out), "error").contains(&"license-denied".to_string()));
    let out = girder(&["check", "-m", m, "--require-language", "en", "--json"]);
    assert_eq!(out.status.code(), Some(0));
}

/// Not a timed assertion: the time is printed for the log (`--nocapture`).
#[test]
fn check_on_real_minilm_time() {
    let minilm = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        minilm.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models` first",
        minilm.display()
    );
    let m = minilm.to_str().unwrap();
    let _warm = girder(&["check", "-m", m]);
    let started = Instant::now();
    let out = girder(&["check", "-m", m]);
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    println!("girder check -m models/all-MiniLM-L6-v2: {seconds:.2} s (debug build)");
    println!("{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn run_refuses_a_mismatched_tokenizer_unless_allowed() {
    // A BERT classifier whose config.json names another pad id than its tokenizer.
    let dir = scratch("run-gate");
    let model = dir.join("model");
    copy_dir(&fixture("bert-seqcls"), &model);
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("config.json")).unwrap()).unwrap();
    config["pad_token_id"] = Value::from(5);
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let m = model.to_str().unwrap();
    let out = girder(&["run", "text-classification", "-m", m, "hello"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("pre-flight")
            && stderr.contains("special-token-mismatch")
            && stderr.contains("--allow-mismatch"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    let out = girder(&[
        "run",
        "text-classification",
        "-m",
        m,
        "--allow-mismatch",
        "hello",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("WARNING") && stderr.contains("special-token-mismatch"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 1);
    std::fs::remove_dir_all(dir).unwrap();
}

/// A lock of model A does not pass model B: exit 1, the message names both models (class,
/// folder, weight fingerprint) and the fix. A format 1 lock still passes with a warning.
#[test]
fn lock_of_another_model_exits_1_naming_both() {
    let dir = scratch("identity");
    let a = fixture("bert-seqcls");
    let b = fixture("roberta-seqcls");
    let lock = dir.join("girder.lock");
    let out = girder(&[
        "lock",
        "-m",
        a.to_str().unwrap(),
        "--out",
        lock.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.contains("BertForSequenceClassification (sequence-classification, weights sha256 "),
        "{said}"
    );
    let pinned: Value = serde_json::from_str(&std::fs::read_to_string(&lock).unwrap()).unwrap();
    assert_eq!(pinned["girder_lock"], 2);
    assert_eq!(pinned["model"]["head"], "sequence-classification");
    let weights = pinned["model"]["weights"]["sha256"].as_str().unwrap();

    let out = girder(&[
        "check",
        "-m",
        b.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("lock-model-mismatch"))
        .unwrap_or_else(|| panic!("{text}"));
    for part in [
        "BertForSequenceClassification",
        "RobertaForSequenceClassification",
        "fixtures/bert-seqcls",
        "fixtures/roberta-seqcls",
        &weights[..12],
    ] {
        assert!(line.contains(part), "{part}: {line}");
    }
    assert!(
        text.contains("fix: check the model the lock was made from"),
        "{text}"
    );

    // The same lock as format 1 (no model section): the same model passes, with a warning.
    let mut v1 = pinned.clone();
    v1["girder_lock"] = Value::from(1);
    v1.as_object_mut().unwrap().remove("model");
    std::fs::write(&lock, v1.to_string()).unwrap();
    let out = girder(&[
        "check",
        "-m",
        a.to_str().unwrap(),
        "--lock",
        lock.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = stdout_json(&out);
    assert!(
        codes(&report, "warning").contains(&"lock-identity-missing".to_string()),
        "{report}"
    );
    assert!(
        codes(&report, "info").contains(&"lock-ok".to_string()),
        "{report}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

/// A GGUF file with another tokenizer (`--tokenizer`): its own tokenizer.json passes and is
/// named as matching the file; a copy with two ids swapped is refused, naming the id.
#[test]
fn gguf_with_a_tokenizer_folder_is_compared_with_the_file() {
    let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
    let gguf = models.join("smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    let own = models.join("smollm2-tokenizer");
    assert!(
        gguf.is_file() && own.join("tokenizer.json").is_file(),
        "SmolLM2 is missing: run `scripts/fetch-models` first"
    );
    let check = |tokenizer: &Path| {
        girder(&[
            "check",
            "-m",
            gguf.to_str().unwrap(),
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--json",
        ])
    };
    let out = check(&own);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = stdout_json(&out);
    assert_report_shape(&report);
    assert!(codes(&report, "info").contains(&"tokenizer-matches-file".to_string()));

    let swapped = scratch("gguf-swapped-tokenizer");
    copy_dir(&own, &swapped);
    let path = swapped.join("tokenizer.json");
    let mut doc: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = doc["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = ("Ġthe", "Ġand");
    let (ia, ib) = (vocab[a].clone(), vocab[b].clone());
    let first = ia.as_u64().unwrap().min(ib.as_u64().unwrap());
    vocab.insert(a.into(), ib);
    vocab.insert(b.into(), ia);
    std::fs::write(&path, doc.to_string()).unwrap();
    let out = check(&swapped);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report = stdout_json(&out);
    assert!(codes(&report, "error").contains(&"tokenizer-differs-from-file".to_string()));
    let message = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "tokenizer-differs-from-file")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.starts_with("2 of the 49152 ids") && message.contains(&format!("id {first} ")),
        "{message}"
    );
}

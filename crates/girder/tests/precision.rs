//! Quantization at load (`LoadOptions::quantize`), weights kept in bf16 or f16
//! (`LoadOptions::dtype`), and their accuracy report (`check::drift`): all-MiniLM-L6-v2
//! against itself in f32, every architecture's fixture in bf16 and f16, and the refusals.
//! The real weights are not committed: `scripts/fetch-models` puts them in models/.

use candle_core::DType;
use girder::check::drift::{self, ProbeOutputs};
use girder::layers::Quantization;
use girder::{LoadOptions, Loaded};
use std::path::PathBuf;

fn minilm() -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/all-MiniLM-L6-v2");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: run `scripts/fetch-models` first",
        dir.display()
    );
    dir.to_string_lossy().into_owned()
}

/// A committed fixture's folder.
fn fixture(name: &str) -> String {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    dir.to_string_lossy().into_owned()
}

fn load(reference: &str, quantize: Option<Quantization>) -> Loaded {
    girder::load(
        reference,
        &LoadOptions {
            quantize,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn load_in(reference: &str, dtype: DType) -> Loaded {
    girder::load(
        reference,
        &LoadOptions {
            dtype,
            ..LoadOptions::default()
        },
    )
    .unwrap()
}

fn embeddings(outputs: &ProbeOutputs) -> &[Vec<f32>] {
    match outputs {
        ProbeOutputs::Embeddings(e) => e,
        other => panic!("expected embeddings, got {other:?}"),
    }
}

#[test]
fn minilm_quantized_in_place_keeps_its_embeddings_by_bits() {
    let reference = minilm();
    let texts = drift::probe_texts();
    let expected = drift::probe_outputs(&load(&reference, None), &texts).unwrap();
    let mut lowest = Vec::new();
    for q in [Quantization::Q8_0, Quantization::Q4K, Quantization::Q4_0] {
        let got = drift::probe_outputs(&load(&reference, Some(q)), &texts).unwrap();
        assert_eq!(embeddings(&got).len(), texts.len());
        let report = drift::compare(&expected, &got, q.name(), texts.len(), 0.02).unwrap();
        eprintln!("{}", report.summary());
        let min_cosine = report.figures["min_cosine"];
        // Quantized for real: the embeddings moved, by less than the bits allow.
        assert!(
            min_cosine < 1.0 - 1e-6,
            "{q:?} changed nothing: {min_cosine}"
        );
        lowest.push(min_cosine);
    }
    assert!(lowest[0] >= 0.995, "q8_0: lowest cosine {}", lowest[0]);
    assert!(lowest[1] >= 0.95, "q4_k: lowest cosine {}", lowest[1]);
    assert!(
        lowest[0] > lowest[1],
        "8 bits drift less than 4: {lowest:?}"
    );
}

#[test]
fn a_drift_above_the_limit_fails_the_report() {
    let reference = minilm();
    let texts: Vec<String> = drift::probe_texts().into_iter().take(8).collect();
    let expected = drift::probe_outputs(&load(&reference, None), &texts).unwrap();
    let got = drift::probe_outputs(&load(&reference, Some(Quantization::Q4_0)), &texts).unwrap();
    let report = drift::compare(&expected, &got, "q4_0", texts.len(), 1e-6).unwrap();
    assert!(!report.ok && report.drift > 1e-6, "{report:?}");
    let same = drift::compare(&expected, &expected, "f32", texts.len(), 0.0).unwrap();
    assert!(same.ok && same.drift.abs() < 1e-12, "{same:?}");
}

#[test]
fn quantize_is_refused_for_gguf_files_and_training() {
    let gguf = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../models/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf");
    if gguf.is_file() {
        let err = girder::load(
            gguf.to_str().unwrap(),
            &LoadOptions {
                quantize: Some(Quantization::Q8_0),
                ..LoadOptions::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("GGUF file, quantized already"), "{err}");
    }
    let err = girder::load(
        &fixture("bert-seqcls"),
        &LoadOptions {
            quantize: Some(Quantization::Q4K),
            training: Some(girder::pretrained::TrainingLoad {
                all_weights: false,
                lora: None,
                seed: 0,
                modules: Vec::new(),
            }),
            ..LoadOptions::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("--method qlora"), "{err}");
    let err = Quantization::parse("nf4").unwrap_err().to_string();
    assert!(err.contains("q8_0") && err.contains("nf4"), "{err}");
}

#[test]
fn every_head_of_the_fixtures_has_a_report() {
    // The fixtures' matrices are under MIN_QUANTIZED_ELEMENTS, so they load as f32 and the
    // report must say "no drift" for every head.
    let texts: Vec<String> = drift::probe_texts().into_iter().take(6).collect();
    for name in [
        "bert-seqcls",
        "bert-tokcls",
        "bert-mlm",
        "bert-st-mean",
        "llama-causal-lm",
        "t5-seq2seq",
    ] {
        let path = &fixture(name);
        let expected = drift::probe_outputs(&load(path, None), &texts).unwrap();
        let got = drift::probe_outputs(&load(path, Some(Quantization::Q8_0)), &texts).unwrap();
        let report = drift::compare(&expected, &got, "q8_0", texts.len(), 0.0).unwrap();
        assert!(report.ok && report.drift == 0.0, "{name}: {report:?}");
        assert!(!report.figures.is_empty(), "{name}: {report:?}");
    }
}

#[test]
fn minilm_in_bf16_and_f16_keeps_its_embeddings() {
    let reference = minilm();
    let texts = drift::probe_texts();
    let expected = drift::probe_outputs(&load(&reference, None), &texts).unwrap();
    for (dtype, name, lowest) in [(DType::BF16, "bf16", 0.999), (DType::F16, "f16", 0.9999)] {
        let got = drift::probe_outputs(&load_in(&reference, dtype), &texts).unwrap();
        let report = drift::compare(&expected, &got, name, texts.len(), 0.02).unwrap();
        eprintln!("{}", report.summary());
        let min_cosine = report.figures["min_cosine"];
        // Rounded for real (the embeddings moved), by less than the bits allow.
        assert!(
            min_cosine < 1.0 - 1e-9,
            "{name} changed nothing: {min_cosine}"
        );
        assert!(min_cosine >= lowest, "{name}: lowest cosine {min_cosine}");
    }
}

/// Every architecture loads in bf16 and f16 (embedding tables and tied output projections
/// in half precision; the fixtures' other matrices are small enough to stay f32) and its
/// outputs stay within the default drift of f32's. (The random causal LMs' next-token
/// distributions are near-uniform, so bf16 flips a few near-ties.)
#[test]
fn every_architecture_runs_in_bf16_and_f16() {
    let texts: Vec<String> = drift::probe_texts().into_iter().take(6).collect();
    for name in [
        "bert-seqcls",
        "bert-tokcls",
        "bert-mlm",
        "bert-st-mean",
        "distilbert-seqcls",
        "roberta-mlm",
        "mpnet-st-mean",
        "xlmr-tokcls",
        "gpt2-causal-lm",
        "llama-causal-lm",
        "qwen2-causal-lm",
        "gemma3-causal-lm",
        "t5-seq2seq",
        "bart-seq2seq",
        "marian-seq2seq",
    ] {
        let path = &fixture(name);
        let expected = drift::probe_outputs(&load(path, None), &texts).unwrap();
        for (dtype, dtype_name) in [(DType::BF16, "bf16"), (DType::F16, "f16")] {
            let got = drift::probe_outputs(&load_in(path, dtype), &texts).unwrap();
            let report = drift::compare(
                &expected,
                &got,
                dtype_name,
                texts.len(),
                drift::DEFAULT_MAX_DRIFT,
            )
            .unwrap();
            eprintln!("{name}: {}", report.summary());
            assert!(report.ok, "{name} in {dtype_name}: {}", report.summary());
        }
    }
}

#[test]
fn half_precision_is_refused_for_gguf_files_training_and_with_quantize() {
    let bert = &fixture("bert-seqcls");
    let refused = |reference: &str, options: LoadOptions| {
        girder::load(reference, &options).unwrap_err().to_string()
    };
    let err = refused(
        bert,
        LoadOptions {
            dtype: DType::BF16,
            quantize: Some(Quantization::Q8_0),
            ..LoadOptions::default()
        },
    );
    assert!(err.contains("--dtype bf16 and --quantize q8_0"), "{err}");
    let err = refused(
        bert,
        LoadOptions {
            dtype: DType::F16,
            training: Some(girder::pretrained::TrainingLoad {
                all_weights: true,
                lora: None,
                seed: 0,
                modules: Vec::new(),
            }),
            ..LoadOptions::default()
        },
    );
    assert!(err.contains("training in f16"), "{err}");
    let err = refused(
        bert,
        LoadOptions {
            dtype: DType::F64,
            ..LoadOptions::default()
        },
    );
    assert!(err.contains("f32, bf16 or f16"), "{err}");
    let err = refused(
        "models/some.gguf",
        LoadOptions {
            dtype: DType::BF16,
            ..LoadOptions::default()
        },
    );
    assert!(err.contains("GGUF file, which keeps the types"), "{err}");
}

/// QLoRA's load: the base's linear layers quantized and frozen outside the load's record of
/// tensors (no f32 copy kept), the adapters and the new head trained in f32.
#[test]
fn a_qlora_load_keeps_no_f32_copy_of_the_quantized_base() {
    let options = LoadOptions {
        quantize: Some(Quantization::Q4K),
        head: Some(girder::pretrained::NewHead {
            head: girder::models::Head::SequenceClassification,
            labels: vec!["negative".into(), "positive".into()],
            classifier_dropout: None,
        }),
        training: Some(girder::pretrained::TrainingLoad {
            all_weights: false,
            lora: Some(girder::hub::Lora::default()),
            seed: 0,
            modules: Vec::new(),
        }),
        ..LoadOptions::default()
    };
    let model = girder::load(&minilm(), &options)
        .unwrap()
        .into_encoder()
        .unwrap();
    let names: Vec<String> = model
        .parameters
        .as_ref()
        .expect("a training load")
        .tensors()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let has = |suffix: &str| names.iter().any(|n| n.ends_with(suffix));
    assert!(
        has("layer.0.attention.self.query.lora_A.weight"),
        "{names:?}"
    );
    assert!(has("classifier.weight"), "{names:?}");
    assert!(!has("layer.0.attention.self.query.weight"), "{names:?}");
    assert!(!has("layer.0.intermediate.dense.weight"), "{names:?}");
}

/// `output_in_f32` keeps a tied output projection in f32 under bf16: GPT-2's next-token
/// distributions move less than with the projection in bf16 too.
#[test]
fn the_output_projection_can_stay_f32() {
    let path = &fixture("gpt2-causal-lm");
    let texts: Vec<String> = drift::probe_texts().into_iter().take(6).collect();
    let expected = drift::probe_outputs(&load(path, None), &texts).unwrap();
    let change = |output_in_f32: bool| {
        let options = LoadOptions {
            dtype: DType::BF16,
            output_in_f32,
            ..LoadOptions::default()
        };
        let got = drift::probe_outputs(&girder::load(path, &options).unwrap(), &texts).unwrap();
        let report = drift::compare(&expected, &got, "bf16", texts.len(), 0.02).unwrap();
        eprintln!("output in f32 {output_in_f32}: {}", report.summary());
        report.figures["mean_kl"]
    };
    let (halved, kept) = (change(false), change(true));
    assert!(kept < halved, "f32 head {kept} vs bf16 head {halved}");
}

/// A lock pins the checkpoint, not the precision it is loaded in: the fingerprint of the
/// word embeddings is the same for f32, bf16 and q8_0 loads.
#[test]
fn the_lock_fingerprint_ignores_the_load_precision() {
    let reference = minilm();
    let fingerprint = |options: LoadOptions| {
        let model = girder::load(&reference, &options)
            .unwrap()
            .into_encoder()
            .unwrap();
        girder::check::lock::identity(&girder::check::Subject::of_encoder(&model))
            .unwrap()
            .weights
            .sha256
    };
    let f32 = fingerprint(LoadOptions::default());
    let bf16 = fingerprint(LoadOptions {
        dtype: DType::BF16,
        ..LoadOptions::default()
    });
    let q8 = fingerprint(LoadOptions {
        quantize: Some(Quantization::Q8_0),
        ..LoadOptions::default()
    });
    assert_eq!(bf16, f32);
    assert_eq!(q8, f32);
}

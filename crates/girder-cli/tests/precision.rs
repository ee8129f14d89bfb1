//! `--quantize` and `--dtype` on the command line: the accuracy report printed and written,
//! a drift above `--max-drift` refused (exit 1, naming the drift and the way out) unless
//! `--allow-drift`, and the refusals of what cannot be quantized or halved.
//! all-MiniLM-L6-v2 from models/ (`scripts/fetch-models`).

mod common;

use common::{copy_dir, fixture, girder, json_lines, one_line_error, scratch, stdout_json};
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

/// `girder quantize --model model --to to --out out` with `extra` arguments.
fn quantize(model: &str, to: &str, out: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["quantize", "--model", model, "--to", to, "--out", out];
    args.extend(extra);
    girder(&args)
}

/// A LLaMA decoder with random weights, wide enough for K-quant super-blocks (hidden 256,
/// MLP 512, 2 layers, 4 heads over 2 kv heads), on the llama fixture's tokenizer: written
/// here, as no checkpoint of that size is committed.
fn random_llama(dir: &Path, tied: bool) {
    std::fs::create_dir_all(dir).unwrap();
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture("llama-causal-lm").join(file), dir.join(file)).unwrap();
    }
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 384,
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": tied,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    // A fixed-seed generator: the same weights on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut tensor = |shape: &[usize], scale: f32| {
        let values: Vec<f32> = (0..shape.iter().product::<usize>())
            .map(|_| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * scale
            })
            .collect();
        candle_core::Tensor::from_vec(values, shape, &candle_core::Device::Cpu).unwrap()
    };
    let mut tensors = vec![
        (
            "model.embed_tokens.weight".to_string(),
            tensor(&[384, 256], 0.1),
        ),
        (
            "model.norm.weight".to_string(),
            tensor(&[256], 0.2).affine(1.0, 1.0).unwrap(),
        ),
    ];
    if !tied {
        tensors.push(("lm_head.weight".to_string(), tensor(&[384, 256], 0.1)));
    }
    for layer in 0..2 {
        let p = format!("model.layers.{layer}");
        for (name, shape) in [
            ("self_attn.q_proj", [256, 256]),
            ("self_attn.k_proj", [128, 256]),
            ("self_attn.v_proj", [128, 256]),
            ("self_attn.o_proj", [256, 256]),
            ("mlp.gate_proj", [512, 256]),
            ("mlp.up_proj", [512, 256]),
            ("mlp.down_proj", [256, 512]),
        ] {
            tensors.push((format!("{p}.{name}.weight"), tensor(&shape, 0.2)));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            tensors.push((
                format!("{p}.{norm}.weight"),
                tensor(&[256], 0.2).affine(1.0, 1.0).unwrap(),
            ));
        }
    }
    girder::hub::weights::write_safetensors(tensors, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn quantize_writes_a_gguf_that_reproduces_the_model_quantized_at_load() {
    let dir = scratch("gguf-q4k");
    let model = dir.join("llama");
    random_llama(&model, false);
    let out = dir.join("llama-q4_k.gguf");
    let args = [
        "quantize",
        "--model",
        model.to_str().unwrap(),
        "--to",
        "q4_k",
        "--out",
        out.to_str().unwrap(),
        "--max-drift",
        "1",
    ];
    let run = girder(&args);
    let written = stdout_json(&run);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // The matrices in Q4_K (rows of 256 and 512); norms, and k and v (under 65,536 values),
    // in f32, as at load.
    assert_eq!(
        written["tensor_types"],
        serde_json::json!({"Q4_K": 12, "F32": 9})
    );
    assert_eq!(written["architecture"], "llama");
    assert_eq!(written["largest_difference_from_load"], 0.0);
    assert!(written["tokenizer_texts_checked"].as_u64().unwrap() > 50);
    assert_eq!(written["report"]["candidate"], "q4_k");
    assert_eq!(
        written["bytes"].as_u64().unwrap(),
        std::fs::metadata(&out).unwrap().len()
    );
    // The file generates what the model quantized at load generates.
    let prompts = ["The capital of France is", "def fibonacci(n):"];
    let generate = |model: &str, extra: &[&str]| {
        let mut args = vec![
            "run",
            "text-generation",
            "-m",
            model,
            "--max-new-tokens",
            "8",
        ];
        args.extend(extra);
        args.extend(prompts);
        json_lines(&girder(&args))
    };
    let from_file = generate(out.to_str().unwrap(), &[]);
    let at_load = generate(
        model.to_str().unwrap(),
        &["--quantize", "q4_k", "--max-drift", "1"],
    );
    assert_eq!(from_file.len(), prompts.len());
    for (file, load) in from_file.iter().zip(&at_load) {
        assert_eq!(file["generated_text"], load["generated_text"]);
    }
    // An existing file is kept unless --force.
    let again = girder(&args);
    assert!(one_line_error(&again).contains("--force"));
    let mut forced = args.to_vec();
    forced.push("--force");
    assert!(girder(&forced).status.success());
}

#[test]
fn a_tied_head_kept_in_f32_is_written_as_its_own_output() {
    let dir = scratch("gguf-tied");
    let model = dir.join("llama-tied");
    random_llama(&model, true);
    let out = dir.join("tied.gguf");
    let run = quantize(
        model.to_str().unwrap(),
        "q8_0",
        out.to_str().unwrap(),
        &["--lm-head-f32", "--max-drift", "1"],
    );
    let written = stdout_json(&run);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    // q, o and the MLP of both layers, and the table, in Q8_0; norms, k and v (under
    // 65,536 values) and the separate output in f32.
    assert_eq!(
        written["tensor_types"],
        serde_json::json!({"Q8_0": 11, "F32": 10})
    );
    assert_eq!(written["largest_difference_from_load"], 0.0);
}

#[test]
fn what_gguf_cannot_say_is_refused_before_the_report() {
    let dir = scratch("gguf-refused");
    let out = dir.join("x.gguf");
    let qwen_digits = dir.join("qwen2-digits");
    copy_dir(&fixture("qwen2-causal-lm"), &qwen_digits);
    let tokenizer = qwen_digits.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&tokenizer).unwrap()).unwrap();
    json["pre_tokenizer"] = serde_json::json!({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": true},
        {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]});
    std::fs::write(&tokenizer, json.to_string()).unwrap();
    for (model, named) in [
        (fixture("mistral-causal-lm"), "`sliding_window`: 8 tokens"),
        (fixture("llama-causal-lm"), "`rope_scaling`: Llama3"),
        (
            fixture("gemma3-causal-lm"),
            "girder writes LLaMA, Mistral and Qwen2",
        ),
        (
            fixture("bert-base"),
            "girder writes LLaMA, Mistral and Qwen2",
        ),
        (qwen_digits, "`pre_tokenizer`"),
    ] {
        let run = quantize(model.to_str().unwrap(), "q8_0", out.to_str().unwrap(), &[]);
        let error = one_line_error(&run);
        assert!(error.contains(named), "{}: {error}", model.display());
        assert!(!out.exists(), "{}", model.display());
    }
    // Outputs that would overwrite the model, or that girder could not load back.
    let qwen = fixture("qwen2-causal-lm");
    for (to, out, named) in [
        ("q8_0", dir.join("x.bin"), "must end in .gguf"),
        ("bf16", qwen.join("bf16"), "inside the model's own folder"),
        ("q8_0", dir.join("missing/x.gguf"), "does not exist"),
    ] {
        let run = quantize(qwen.to_str().unwrap(), to, out.to_str().unwrap(), &[]);
        let error = one_line_error(&run);
        assert!(error.contains(named), "{error}");
        assert!(!out.exists());
    }
}

/// Dev-only (.venv-oracle with llama-cpp-python and transformers): llama.cpp loads what
/// `girder quantize` writes. The tiny fixtures' matrices are under 65,536 values and stay f32,
/// so llama.cpp (with an f32 KV cache) must give transformers' logits on the source folder.
#[test]
fn llama_cpp_loads_the_written_gguf() {
    let Some(python) = common::oracle_python("llama_cpp, transformers, torch") else {
        return;
    };
    let dir = scratch("gguf-llama-cpp");
    // The llama fixture without its Llama 3 RoPE scaling, which llama.cpp stores as a tensor.
    let llama = dir.join("llama");
    copy_dir(&fixture("llama-causal-lm"), &llama);
    let config_path = llama.join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let object = config.as_object_mut().unwrap();
    object.remove("rope_scaling");
    object.remove("rope_parameters");
    std::fs::write(&config_path, config.to_string()).unwrap();
    const SCRIPT: &str = r#"
import json, sys, numpy as np, torch
from llama_cpp import Llama
from transformers import AutoModelForCausalLM, AutoTokenizer
folder, gguf = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
llm = Llama(model_path=gguf, logits_all=True, verbose=False, n_ctx=64, n_threads=2, type_k=0, type_v=0)
out = []
for text in ["The capital of France is", "def fibonacci(n):\n    return n"]:
    ids = tok(text)["input_ids"]
    cpp_ids = llm.tokenize(text.encode(), add_bos=True, special=True)
    llm.reset(); llm.eval(ids)
    cpp = np.array(llm.scores[:len(ids)])
    with torch.no_grad():
        ref = model(torch.tensor([ids])).logits[0].numpy()
    out.append({"same_ids": ids == cpp_ids, "difference": float(np.abs(cpp - ref).max())})
print(json.dumps(out))
"#;
    for model in [llama, fixture("qwen2-causal-lm")] {
        let out = dir.join("model.gguf");
        let run = quantize(
            model.to_str().unwrap(),
            "q8_0",
            out.to_str().unwrap(),
            &["--force"],
        );
        assert_eq!(
            stdout_json(&run)["tensor_types"].as_object().unwrap().len(),
            1
        );
        let oracle = std::process::Command::new(&python)
            .args(["-c", SCRIPT])
            .arg(&model)
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            oracle.status.success(),
            "{}",
            String::from_utf8_lossy(&oracle.stderr)
        );
        let last = String::from_utf8_lossy(&oracle.stdout);
        let results: serde_json::Value =
            serde_json::from_str(last.lines().last().unwrap()).unwrap();
        for r in results.as_array().unwrap() {
            assert_eq!(r["same_ids"], true, "{}: {r}", model.display());
            assert!(
                r["difference"].as_f64().unwrap() < 1e-4,
                "{}: {r}",
                model.display()
            );
        }
    }
}

#[test]
fn quantize_to_bf16_writes_a_folder_that_reproduces_the_model_halved_at_load() {
    let model = minilm();
    let dir = scratch("bf16-folder");
    let out = dir.join("minilm-bf16");
    let args = [
        "quantize",
        "--model",
        &model,
        "--to",
        "bf16",
        "--out",
        out.to_str().unwrap(),
    ];
    let run = girder(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = stdout_json(&run);
    // The layers' 36 linear matrices, the pooler's, the word and position tables (not the
    // 2-row token-type table, nor norms and biases).
    assert_eq!(written["half_tensors"], 39);
    assert_eq!(
        written["dropped"],
        serde_json::json!(["embeddings.position_ids"])
    );
    assert_eq!(written["largest_difference_from_load"], 0.0);
    assert!(written["report"]["figures"]["min_cosine"].as_f64().unwrap() > 0.9999);
    let f32_bytes = std::fs::metadata(Path::new(&model).join("model.safetensors"))
        .unwrap()
        .len();
    let bytes = written["bytes"].as_u64().unwrap();
    assert!(bytes * 100 < f32_bytes * 51, "{bytes} of {f32_bytes}");
    // Everything but the weights is copied; the card records the report.
    for file in [
        "config.json",
        "tokenizer.json",
        "modules.json",
        "1_Pooling/config.json",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    let card = std::fs::read_to_string(out.join("README.md")).unwrap();
    assert!(card.contains("## Precision") && card.contains("\"candidate\": \"bf16\""));
    // The folder embeds as the f32 model halved at load does, and is not overwritten by
    // accident.
    let embed = |model: &str| {
        json_lines(&girder(&[
            "run",
            "embeddings",
            "-m",
            model,
            "--dtype",
            "bf16",
            "A man is eating food.",
        ]))[0]["embedding"]
            .clone()
    };
    let girder_embedding = embed(out.to_str().unwrap());
    assert_eq!(girder_embedding, embed(&model));
    assert!(one_line_error(&girder(&args)).contains("--force"));
    transformers_loads(&out, &girder_embedding);
}

/// Dev-only (.venv-oracle with sentence-transformers): the written folder loads with no
/// missing or unexpected tensor and embeds as girder's bf16 load does.
fn transformers_loads(folder: &Path, girder_embedding: &serde_json::Value) {
    let Some(python) = common::oracle_python("sentence_transformers, transformers") else {
        return;
    };
    const SCRIPT: &str = r#"
import json, sys
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
_, info = AutoModel.from_pretrained(sys.argv[1], output_loading_info=True)
embedding = SentenceTransformer(sys.argv[1], device="cpu").encode(["A man is eating food."])[0]
print(json.dumps({"missing": sorted(info["missing_keys"]), "unexpected": sorted(info["unexpected_keys"]),
                  "embedding": embedding.tolist()}))
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", SCRIPT])
        .arg(folder)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(result["missing"], serde_json::json!([]), "{result}");
    assert_eq!(result["unexpected"], serde_json::json!([]), "{result}");
    let (a, b) = (
        girder_embedding.as_array().unwrap(),
        result["embedding"].as_array().unwrap(),
    );
    let largest = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x.as_f64().unwrap() - y.as_f64().unwrap()).abs())
        .fold(0.0, f64::max);
    assert!(largest < 1e-4, "largest difference {largest}");
}

//! Malformed files never panic or hang the loaders: regression tests for the layouts that
//! are checked against the bytes (GGUF tensor tables, safetensors dtypes), and a mutation
//! fuzzer over six inputs a user hands girder: safetensors weights (an encoder's and a
//! decoder's), a GGUF file, config.json, tokenizer.json and chat templates.
//!
//! The suite runs a short pass of each target (`GIRDER_FUZZ_ITERS`, default 300);
//! `scripts/fuzz` runs a long one. See `common/fuzz.rs` for the settings and where crashes
//! are saved.

mod common;
#[path = "common/fuzz.rs"]
mod fuzzing;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use common::{fixtures_dir, ScratchModel};
use fuzzing::{Gguf, GgufTensor, GgufValue, Outcome, Rng};
use girder::generate::chat::{ChatTemplate, Message};
use girder::generate::Options;
use girder::pipelines::text_classification;
use girder::{Error, LoadOptions, Loaded};
use std::path::Path;

/// GGML type ids (ggml.h `enum ggml_type`).
const F32: u32 = 0;
const Q4_0: u32 = 2;
const Q4_1: u32 = 3;
const Q8_0: u32 = 8;

/// llama.cpp's `permute` of LLaMA's q/k rows for its interleaved RoPE
/// (`convert_hf_to_gguf.py`: `reshape(n_head, 2, half, cols).swapaxes(1, 2)`).
fn permute_rows(t: &Tensor, heads: usize) -> Tensor {
    let (rows, cols) = t.dims2().unwrap();
    t.reshape((heads, 2, rows / heads / 2, cols))
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((rows, cols))
        .unwrap()
}

/// The GGUF name of a transformers tensor of the llama fixture.
fn gguf_name(hf: &str) -> String {
    let names = &girder::models::llama::GGUF_TENSOR_NAMES;
    let (module, param) = hf.rsplit_once('.').unwrap();
    if let Some((gguf, _)) = names.whole.iter().find(|(_, h)| *h == module) {
        return format!("{gguf}.{param}");
    }
    let rest = module
        .strip_prefix(&format!("{}.", names.layer_prefix))
        .unwrap();
    let (layer, module) = rest.split_once('.').unwrap();
    let (gguf, _) = names.layer.iter().find(|(_, h)| *h == module).unwrap();
    format!("blk.{layer}.{gguf}.{param}")
}

/// The tiny LLaMA fixture (`llama-causal-lm`: hidden 32, 4 heads, 2 kv heads, 2 layers,
/// vocabulary 384) as llama.cpp would write it: q/k rows permuted, projections quantized
/// (Q4_1, Q4_0, Q8_0), norms and embeddings F32, the byte-level BPE tokenizer and a chat
/// template in the metadata.
fn tiny_llama_gguf() -> Gguf {
    let dir = fixtures_dir().join("llama-causal-lm");
    let tensors =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut names: Vec<&String> = tensors.keys().collect();
    // llama.cpp writes the embeddings first, then the layers in order.
    names.sort_by_key(|n| (!n.contains("embed_tokens"), n.to_string()));
    let mut out = Vec::new();
    for hf in names {
        let name = gguf_name(hf);
        let mut t = tensors[hf].clone();
        if name.ends_with("attn_q.weight") {
            t = permute_rows(&t, 4);
        } else if name.ends_with("attn_k.weight") {
            t = permute_rows(&t, 2);
        }
        let ggml_type = match name.rsplit('.').nth(1).unwrap() {
            "attn_q" | "ffn_up" | "ffn_down" => Q4_1,
            "attn_k" | "attn_output" => Q4_0,
            "attn_v" | "ffn_gate" | "output" => Q8_0,
            _ => F32,
        };
        let dtype = match ggml_type {
            Q4_1 => GgmlDType::Q4_1,
            Q4_0 => GgmlDType::Q4_0,
            Q8_0 => GgmlDType::Q8_0,
            _ => GgmlDType::F32,
        };
        let q = QTensor::quantize(&t, dtype).unwrap();
        out.push(GgufTensor {
            name,
            dims: t.dims().iter().rev().map(|&d| d as u64).collect(),
            ggml_type,
            data: q.data().unwrap().into_owned(),
        });
    }
    let tokenizer: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tokenizer.json")).unwrap()).unwrap();
    let vocab = tokenizer["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    let types = (0..tokens.len())
        .map(|i| if i < 3 { 3 } else { 1 })
        .collect();
    let merges = tokenizer["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            serde_json::Value::Array(pair) => {
                format!(
                    "{} {}",
                    pair[0].as_str().unwrap(),
                    pair[1].as_str().unwrap()
                )
            }
            other => other.as_str().unwrap().to_string(),
        })
        .collect();
    let template = "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}\
                    {% if add_generation_prompt %}<|assistant|>{% endif %}";
    let metadata = [
        ("general.architecture", GgufValue::Str("llama".into())),
        ("general.alignment", GgufValue::U32(32)),
        ("llama.context_length", GgufValue::U32(64)),
        ("llama.embedding_length", GgufValue::U32(32)),
        ("llama.block_count", GgufValue::U32(2)),
        ("llama.feed_forward_length", GgufValue::U32(64)),
        ("llama.attention.head_count", GgufValue::U32(4)),
        ("llama.attention.head_count_kv", GgufValue::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-6),
        ),
        ("llama.rope.freq_base", GgufValue::F32(10000.0)),
        ("tokenizer.ggml.model", GgufValue::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", GgufValue::Strs(tokens)),
        ("tokenizer.ggml.token_type", GgufValue::I32s(types)),
        ("tokenizer.ggml.merges", GgufValue::Strs(merges)),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.chat_template", GgufValue::Str(template.into())),
    ];
    fuzzing::write_gguf(&metadata, &out)
}

fn greedy(max_new_tokens: usize) -> Options {
    Options {
        max_new_tokens: Some(max_new_tokens),
        ..Options::default()
    }
}

/// Loads `path` and, when it loads, generates a couple of tokens (decoders) or classifies a
/// few texts (encoders), so that weights which load but cannot run are found too.
fn load_and_run(path: &Path) -> girder::Result<()> {
    match girder::load(path.to_str().unwrap(), &LoadOptions::default())? {
        Loaded::Decoder(generator) => {
            generator.generate(&["Hello world", "é😀"], &greedy(2))?;
            if generator.chat_template().is_some() {
                let ids = generator.encode_chat_messages(&[Message::new("user", "hi")])?;
                generator.generate_ids(&[ids], &greedy(1))?;
            }
        }
        Loaded::Encoder(model) => {
            text_classification::run(
                &model,
                &["This is great!", "", "[MASK] 😀 \u{301}"],
                &Default::default(),
            )?;
        }
        Loaded::EncoderDecoder(_) => {}
    }
    Ok(())
}

fn outcome(result: girder::Result<()>) -> Outcome {
    result.map_err(|e| format!("{}: {e}", variant(&e)))
}

/// The variant's name (`BadGguf`), from its Debug form.
fn variant(e: &Error) -> String {
    let debug = format!("{e:?}");
    debug
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or_default()
        .to_string()
}

fn scratch_file(tag: &str, name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::Builder::new()
        .prefix(&format!("girder-fuzz-{tag}"))
        .tempdir()
        .unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, bytes).unwrap();
    (dir, path)
}

fn set_u32(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

#[test]
fn the_tiny_gguf_loads_and_generates() {
    let gguf = tiny_llama_gguf();
    let (_dir, path) = scratch_file("ok", "tiny.gguf", &gguf.bytes);
    load_and_run(&path).unwrap();
}

#[test]
fn gguf_type_field_changed_is_refused() {
    let gguf = tiny_llama_gguf();
    // Q4_1 → Q4_0: 18 bytes a block instead of 20, so the tensor ends 64 bytes before the
    // next one starts. Q4_1 → F32: 4096 bytes instead of 640, over the next tensor.
    for (new_type, type_name) in [(Q4_0, "Q4_0"), (F32, "F32")] {
        let mut bytes = gguf.bytes.clone();
        set_u32(
            &mut bytes,
            gguf.type_fields["blk.0.attn_q.weight"],
            new_type,
        );
        let (_dir, path) = scratch_file("type", "edited.gguf", &bytes);
        let err = load_and_run(&path).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(err, Error::BadGguf { .. })
                && message.contains("edited.gguf")
                && message.contains("`blk.0.attn_q.weight`")
                && message.contains(type_name),
            "{message}"
        );
    }
    // The last tensor's type changed: it ends well before the end of the file.
    let last = gguf.type_fields.keys().last().unwrap().clone();
    let mut bytes = gguf.bytes.clone();
    set_u32(&mut bytes, gguf.type_fields["output.weight"], Q4_0);
    let (_dir, path) = scratch_file("type-last", "edited.gguf", &bytes);
    let err = load_and_run(&path).unwrap_err();
    assert!(
        matches!(err, Error::BadGguf { .. }) && err.to_string().contains("`output.weight`"),
        "{err} ({last})"
    );
}

#[test]
fn gguf_shape_field_changed_is_refused() {
    let gguf = tiny_llama_gguf();
    // blk.0.attn_q.weight is 32×32 (GGUF dims [32, 32]); its outer dim halved leaves 320
    // bytes of its 640 unexplained.
    let at = gguf.type_fields["blk.0.attn_q.weight"] - 8;
    let mut bytes = gguf.bytes.clone();
    bytes[at..at + 8].copy_from_slice(&16u64.to_le_bytes());
    let (_dir, path) = scratch_file("shape", "edited.gguf", &bytes);
    let err = load_and_run(&path).unwrap_err();
    assert!(
        matches!(err, Error::BadGguf { .. })
            && err
                .to_string()
                .contains("`blk.0.attn_q.weight` (Q4_1, 16×32)"),
        "{err}"
    );
}

#[test]
fn gguf_offset_field_changed_is_refused() {
    let gguf = tiny_llama_gguf();
    let offset_at = gguf.type_fields["blk.0.attn_q.weight"] + 4;
    let offset = u64::from_le_bytes(gguf.bytes[offset_at..offset_at + 8].try_into().unwrap());
    for (new, says) in [
        (offset + 1, "not a multiple of the alignment 32"),
        (
            offset + 64,
            "the next tensor (`blk.0.attn_q.weight`) starts 640 bytes later",
        ),
        (offset - 64, "they overlap"),
        (u64::MAX - 31, "past the end of the file"),
    ] {
        let mut bytes = gguf.bytes.clone();
        bytes[offset_at..offset_at + 8].copy_from_slice(&new.to_le_bytes());
        let (_dir, path) = scratch_file("offset", "edited.gguf", &bytes);
        let err = load_and_run(&path).unwrap_err();
        assert!(
            matches!(err, Error::BadGguf { .. })
                && err.to_string().contains("blk.0.attn_q.weight")
                && err.to_string().contains(says),
            "{new}: {err}"
        );
    }
}

/// Header fields that would make a reader allocate or divide by what the file does not
/// hold: each is refused with the field named, before anything is allocated for it.
#[test]
fn gguf_header_counts_and_lengths_are_bounded() {
    use fuzzing::FieldKind;
    let gguf = tiny_llama_gguf();
    let field = |kind: FieldKind, nth: usize| {
        *gguf
            .fields
            .iter()
            .filter(|f| f.kind == kind)
            .nth(nth)
            .unwrap()
    };
    let cases = [
        (field(FieldKind::TensorCount, 0), u64::MAX, "tensors"),
        (
            field(FieldKind::MetadataCount, 0),
            1 << 40,
            "metadata entries",
        ),
        // The vocabulary's length: 2^40 strings, more than the file holds.
        (
            field(FieldKind::ArrayLength, 0),
            1 << 40,
            "tokenizer.ggml.tokens",
        ),
        (
            field(FieldKind::ArrayLength, 0),
            1 << 23,
            "tokenizer.ggml.tokens",
        ),
        (field(FieldKind::StringLength, 0), u64::MAX, "metadata key"),
        (field(FieldKind::Dims, 0), 5, "5 dimensions"),
        (field(FieldKind::Dim, 0), 1 << 62, "larger than any file"),
        // candle divides by the alignment: 0 would panic there.
        (field(FieldKind::Alignment, 0), 0, "general.alignment"),
        (field(FieldKind::Alignment, 0), 48, "power of two"),
    ];
    for (f, value, says) in cases {
        let mut bytes = gguf.bytes.clone();
        bytes[f.at..f.at + f.width].copy_from_slice(&value.to_le_bytes()[..f.width]);
        let (_dir, path) = scratch_file("header", "edited.gguf", &bytes);
        let err = load_and_run(&path).unwrap_err();
        assert!(
            matches!(err, Error::BadGguf { .. }) && err.to_string().contains(says),
            "{f:?} = {value}: {err}"
        );
    }
}

/// Found by `fuzz_gguf`: `llama.block_count` edited to 4294967293 made the model's config
/// allocate a 64 GiB per-layer table (`vec![None; layers]` in `llama::Config::from_gguf`) and
/// abort the process; fewer blocks than the table holds would drop layers silently.
#[test]
fn gguf_block_count_other_than_the_tensor_table_is_refused() {
    let gguf = tiny_llama_gguf();
    let name = b"llama.block_count";
    let key = gguf
        .bytes
        .windows(name.len())
        .position(|w| w == name)
        .unwrap();
    // The key, its value type (u32), then the value.
    let at = key + name.len() + 4;
    assert_eq!(gguf.bytes[at..at + 4], 2u32.to_le_bytes());
    for count in [u32::MAX - 2, 3, 1] {
        let mut bytes = gguf.bytes.clone();
        bytes[at..at + 4].copy_from_slice(&count.to_le_bytes());
        let (_dir, path) = scratch_file("blocks", "edited.gguf", &bytes);
        let err = load_and_run(&path).unwrap_err();
        assert!(
            matches!(err, Error::BadGguf { .. })
                && err.to_string().contains(&format!(
                    "`llama.block_count` is {count}, but the tensor table holds 2 blocks"
                )),
            "{count}: {err}"
        );
    }
}

#[test]
fn gguf_tensor_listed_twice_is_refused() {
    let gguf = tiny_llama_gguf();
    // Rename blk.0.attn_k.weight to blk.0.attn_q.weight (the same length).
    let mut bytes = gguf.bytes.clone();
    let name = b"blk.0.attn_k.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    bytes[at..at + name.len()].copy_from_slice(b"blk.0.attn_q.weight");
    let (_dir, path) = scratch_file("twice", "edited.gguf", &bytes);
    let err = load_and_run(&path).unwrap_err();
    assert!(
        matches!(err, Error::BadGguf { .. }) && err.to_string().contains("listed twice"),
        "{err}"
    );
}

/// The llama fixture with its `model.safetensors` header edited by `edit`.
fn edited_llama(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> ScratchModel {
    let m = ScratchModel::copy_of("llama-causal-lm", tag);
    let bytes = std::fs::read(m.path("model.safetensors")).unwrap();
    let (mut header, data) = fuzzing::split_safetensors(&bytes);
    edit(&mut header);
    std::fs::write(
        m.path("model.safetensors"),
        fuzzing::join_safetensors(&header, &data),
    )
    .unwrap();
    m
}

#[test]
fn safetensors_integer_dtype_is_named() {
    // F32 → I32 keeps the byte size, so the file itself is valid safetensors.
    let name = "model.layers.0.self_attn.q_proj.weight";
    let m = edited_llama("dtype", |h| h[name]["dtype"] = "I32".into());
    let err = load_and_run(&m.dir).unwrap_err();
    match &err {
        Error::DtypeMismatch {
            file,
            tensor,
            actual,
            ..
        } => {
            assert!(file.ends_with("model.safetensors"), "{err}");
            assert_eq!(tensor, name);
            assert_eq!(actual, "I32");
        }
        other => panic!("expected DtypeMismatch, got {other:?}"),
    }
}

#[test]
fn safetensors_shape_field_changed_is_named() {
    // [32, 32] → [16, 64]: as many elements, so the offsets still add up.
    let name = "model.layers.0.self_attn.q_proj.weight";
    let m = edited_llama("shape", |h| h[name]["shape"] = serde_json::json!([16, 64]));
    let err = load_and_run(&m.dir).unwrap_err();
    match &err {
        Error::ShapeMismatch {
            tensor,
            expected,
            actual,
        } => {
            assert_eq!(tensor, name);
            assert_eq!(expected, &[32, 32]);
            assert_eq!(actual, &[16, 64]);
        }
        other => panic!("expected ShapeMismatch, got {other:?}"),
    }
}

/// The encoder fixture with its tokenizer.json edited by `edit`.
fn edited_tokenizer(tag: &str, edit: impl FnOnce(&mut serde_json::Value)) -> ScratchModel {
    let m = ScratchModel::copy_of("bert-seqcls", tag);
    let path = m.path("tokenizer.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    m
}

/// Found by `fuzz_tokenizer_json`: a `TemplateProcessing` post-processor whose `single`
/// template names a special token its `special_tokens` map lacks loads, then panics in
/// tokenizers' `TemplateProcessing::apply_template` (`processors/template.rs:563`, "no entry
/// found for key") at the first encode.
#[test]

fn tokenizer_template_naming_a_missing_special_token_is_refused() {
    let m = edited_tokenizer("missing-special", |v| {
        v["post_processor"]["special_tokens"]
            .as_object_mut()
            .unwrap()
            .remove("[SEP]");
    });
    let err = std::panic::catch_unwind(|| load_and_run(&m.dir))
        .expect("encoding panicked inside tokenizers")
        .unwrap_err();
    assert!(matches!(err, Error::BadTokenizer { .. }), "{err}");
}

/// Found by `fuzz_tokenizer_json`: any JSON error inside the `decoder` object (a file cut
/// there, a byte that is not UTF-8, nesting deeper than serde_json's limit of 128) makes
/// tokenizers' `DecoderWrapper` deserializer panic (`decoders/mod.rs:90`,
/// `.expect("Helper")`) instead of returning the parse error.
#[test]

fn tokenizer_json_damaged_inside_the_decoder_is_refused() {
    let original = read_fixture("llama-causal-lm", "tokenizer.json");
    let text = String::from_utf8(original).unwrap();
    let decoder = text.find("\"decoder\"").unwrap();
    let at = decoder + text[decoder..].find("\"type\"").unwrap();
    let cut = text[..at].to_string();
    let mut not_utf8 = text.clone().into_bytes();
    not_utf8[at + 1] = 0xff;
    let mut deep = "true".to_string();
    for _ in 0..200 {
        deep = format!("[{deep}]");
    }
    let nested = format!("{}\"fuzz\": {deep}, {}", &text[..at], &text[at..]);
    let mut failures = Vec::new();
    for (what, bytes) in [
        ("cut inside the decoder", cut.into_bytes()),
        ("a byte that is not UTF-8", not_utf8),
        ("nested 200 deep", nested.into_bytes()),
    ] {
        let m = ScratchModel::copy_of("llama-causal-lm", "damaged-decoder");
        std::fs::write(m.path("tokenizer.json"), bytes).unwrap();
        match std::panic::catch_unwind(|| load_and_run(&m.dir)) {
            Ok(Err(Error::BadTokenizer { .. })) => {}
            Ok(other) => failures.push(format!("{what}: {other:?}")),
            Err(_) => failures.push(format!("{what}: panicked inside tokenizers")),
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// Found by `fuzz_tokenizer_json`: a BPE model whose `continuing_subword_prefix` is longer
/// than the right part of a merge (`"[MASK]"` against the merge `Ġ a`) panics while
/// tokenizers builds the merge table (`models/bpe/model.rs:265`, `b.len() - prefix_len`
/// overflows; without overflow checks the slice after it is out of range).
#[test]

fn tokenizer_bpe_prefix_longer_than_a_merge_is_refused() {
    let m = ScratchModel::copy_of("llama-causal-lm", "bpe-prefix");
    let path = m.path("tokenizer.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["model"]["continuing_subword_prefix"] = "[MASK]".into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = std::panic::catch_unwind(|| load_and_run(&m.dir))
        .expect("loading panicked inside tokenizers")
        .unwrap_err();
    assert!(matches!(err, Error::BadTokenizer { .. }), "{err}");
}

/// Runs the test `test` again in a child process (this test binary, that test alone, the
/// address space capped by [`limit_memory`]), where `body` runs; the parent checks that the
/// child ended well. An allocation that fails aborts the process, which a panic handler
/// cannot catch: this way it fails one test instead of the whole binary.
fn in_child_process(test: &str, body: impl FnOnce()) {
    if std::env::var_os("GIRDER_FUZZ_CHILD").is_some() {
        limit_memory();
        body();
        return;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--include-ignored", "--test-threads=1"])
        .env("GIRDER_FUZZ_CHILD", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first_lines: Vec<&str> = stderr.lines().take(6).collect();
    assert!(
        out.status.success(),
        "{test}, run in a child process, ended with {}:\n{}",
        out.status,
        first_lines.join("\n")
    );
}

/// Found by `fuzz_gguf` (the same table built from config.json): a config.json whose
/// `num_hidden_layers` is 2^32 makes `llama::Config::from_common` allocate a per-layer table
/// of 64 GiB (`vec![None; num_hidden_layers]` for Mistral, a growing `collect` otherwise)
/// before the first tensor is looked up; the allocation fails and the process aborts.
#[test]

fn config_layer_count_beyond_the_checkpoint_is_refused() {
    in_child_process(
        "config_layer_count_beyond_the_checkpoint_is_refused",
        || {
            let m = ScratchModel::copy_of("llama-causal-lm", "layers");
            let path = m.path("config.json");
            let mut v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            v["model_type"] = "mistral".into();
            v["sliding_window"] = serde_json::Value::Null;
            v["num_hidden_layers"] = (1u64 << 32).into();
            std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
            let err = load_and_run(&m.dir).unwrap_err();
            assert!(
                matches!(err, Error::MissingTensor { .. } | Error::BadConfig { .. }),
                "{err}"
            );
        },
    );
}

/// Caps this process's address space at `GIRDER_FUZZ_MEMORY_MB` (default 8192), so that an
/// input which makes a loader allocate without bound aborts this test process (an
/// allocation failure is not a panic) instead of exhausting the machine's memory; the input
/// in flight is then in the target's work folder, printed when the target starts.
fn limit_memory() {
    let mb: u64 = std::env::var("GIRDER_FUZZ_MEMORY_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8192);
    let bytes = mb.saturating_mul(1 << 20) as libc::rlim_t;
    // SAFETY: getrlimit writes the struct it is given; setrlimit lowers this process's soft
    // limit only.
    unsafe {
        let mut old = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_AS, &mut old) == 0 && old.rlim_cur > bytes {
            let new = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: old.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_AS, &new);
        }
    }
}

/// A fuzz target's work folder holding a copy of `fixture`, whose `file` each input replaces.
fn fixture_copy(target: &str, fixture: &str) -> std::path::PathBuf {
    let dir = fuzzing::work_dir(&format!("{target}-{fixture}"));
    common::copy_dir(&fixtures_dir().join(fixture), &dir);
    eprintln!(
        "fuzz {target}: inputs are written to {}; if the process dies, the last one is there",
        dir.display()
    );
    dir
}

fn read_fixture(fixture: &str, file: &str) -> Vec<u8> {
    std::fs::read(fixtures_dir().join(fixture).join(file)).unwrap()
}

fn finish(report: fuzzing::Report, dirs: &[&Path]) {
    report.print();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    report.assert_no_crash();
}

/// Loads a folder whose `file` is the input: the encoder's folder (`bert-seqcls`) or the
/// decoder's (`llama-causal-lm`), chosen from the input's bytes so that a saved crash
/// replays in the same folder.
fn folder_target(
    name: &'static str,
    file: &'static str,
    known: &[fuzzing::Known],
    seeds: Vec<Vec<u8>>,
    decoder_marker: &'static [u8],
    mutate: impl Fn(&mut Rng, &[u8]) -> Vec<u8>,
) {
    limit_memory();
    let encoder = fixture_copy(name, "bert-seqcls");
    let decoder = fixture_copy(name, "llama-causal-lm");
    let (enc, dec) = (encoder.clone(), decoder.clone());
    let report = fuzzing::run(
        name,
        fuzzing::iterations(fuzzing::DEFAULT_ITERS),
        known,
        |rng, _| {
            let seed = rng.below(seeds.len());
            mutate(rng, &seeds[seed])
        },
        move |input| {
            let is_decoder = input
                .windows(decoder_marker.len())
                .any(|w| w == decoder_marker);
            let dir = if is_decoder { &dec } else { &enc };
            std::fs::write(dir.join(file), input).unwrap();
            outcome(load_and_run(dir))
        },
    );
    finish(report, &[&encoder, &decoder]);
}

#[test]
fn fuzz_safetensors() {
    let seeds = vec![
        read_fixture("bert-seqcls", "model.safetensors"),
        read_fixture("llama-causal-lm", "model.safetensors"),
    ];
    folder_target(
        "safetensors",
        "model.safetensors",
        &[],
        seeds,
        b"model.layers.",
        |rng, seed| {
            let (header, data) = fuzzing::split_safetensors(seed);
            fuzzing::mutate_safetensors(rng, &header, &data)
        },
    );
}

#[test]
fn fuzz_config_json() {
    let seeds = vec![
        read_fixture("bert-seqcls", "config.json"),
        read_fixture("llama-causal-lm", "config.json"),
    ];
    let focus = &[
        "size",
        "layers",
        "heads",
        "vocab",
        "position",
        "eps",
        "rope",
        "label",
        "architectures",
        "model_type",
        "dim",
        "type_vocab",
        "act",
        "window",
        "tie",
    ];
    folder_target("config", "config.json", &[], seeds, b"lama", |rng, seed| {
        let v: serde_json::Value = serde_json::from_slice(seed).unwrap();
        fuzzing::mutate_json_text(rng, &v, focus)
    });
}

#[test]
fn fuzz_tokenizer_json() {
    let seeds = vec![
        read_fixture("bert-seqcls", "tokenizer.json"),
        read_fixture("llama-causal-lm", "tokenizer.json"),
    ];
    let focus = &[
        "normalizer",
        "pre_tokenizer",
        "post_processor",
        "decoder",
        "added_tokens",
        "model/type",
        "unk_token",
        "merges",
        "continuing_subword_prefix",
        "max_input_chars_per_word",
        "truncation",
        "padding",
        "special_tokens",
    ];
    // Parsed once: the encoder's vocabulary is 30k entries.
    let parsed: Vec<serde_json::Value> = seeds
        .iter()
        .map(|s| serde_json::from_slice(s).unwrap())
        .collect();
    folder_target(
        "tokenizer",
        "tokenizer.json",
        &[],
        seeds,
        b"\"BPE\"",
        move |rng, seed| {
            let v = &parsed[usize::from(seed.windows(5).any(|w| w == b"\"BPE\""))];
            fuzzing::mutate_json_text(rng, v, focus)
        },
    );
}

#[test]
fn fuzz_gguf() {
    limit_memory();
    let seed = tiny_llama_gguf();
    let work = fuzzing::work_dir("gguf");
    let path = work.join("model.gguf");
    eprintln!(
        "fuzz gguf: inputs are written to {}; if the process dies, the last one is there",
        path.display()
    );
    let report = fuzzing::run(
        "gguf",
        fuzzing::iterations(fuzzing::DEFAULT_ITERS),
        &[],
        |rng, _| fuzzing::mutate_gguf(rng, &seed),
        move |input| {
            std::fs::write(&path, input).unwrap();
            outcome(load_and_run(&path))
        },
    );
    finish(report, &[&work]);
}

/// Chat templates as models ship them: ChatML, Llama 2's (system prompt folded into the
/// first turn, alternation enforced), Gemma's (a macro, a namespace), one that leans on
/// filters and Python string methods, and the qwen2 fixture's.
const TEMPLATES: &[&str] = &[
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "{{ bos_token }}{% set ns = namespace(turns=0) %}{% macro turn(role, text) %}<start_of_turn>{{ role }}\n{{ text | trim }}<end_of_turn>\n{% endmacro %}{% for m in messages %}{% if m.role == 'assistant' %}{{ turn('model', m.content) }}{% else %}{{ turn(m.role, m.content) }}{% endif %}{% set ns.turns = ns.turns + 1 %}{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}",
    "{%- for m in messages -%}{{ m | tojson }}|{{ m.content.upper()[:10] }}|{{ m.content.split(' ') | join('/') }}|{{ m.role.startswith('u') }}|{{ loop.index }}/{{ loop.length }}{%- if not loop.last %}\n{% endif -%}{%- endfor -%}{{ messages | map(attribute='role') | join(',') }}",
];

/// Pieces a mutation splices into a template: the constructs of real templates, and the
/// ones written to exhaust time or memory (loops, repetition, recursion, doubling).
const JINJA_FRAGMENTS: &[&str] = &[
    "{{ messages }}",
    "{{ messages[0].content }}",
    "{{ messages[-1] }}",
    "{{ messages[99] }}",
    "{{ message['content'] }}",
    "{% for message in messages %}",
    "{% endfor %}",
    "{% if add_generation_prompt %}",
    "{% if true %}",
    "{% endif %}",
    "{% else %}",
    "{% elif false %}",
    "{% set x = 1 %}",
    "{{ x }}",
    "{{ 1 / 0 }}",
    "{{ 1 // 0 }}",
    "{{ 1 % 0 }}",
    "{{ 2 ** 100000 }}",
    "{{ 9223372036854775807 + 1 }}",
    "{{ 'x' * 100000000 }}",
    "{{ ('x' * 100000) * 100000 }}",
    "{{ (range(100000) | list) * 100000 }}",
    "{{ range(100000000) | list | length }}",
    "{% for i in range(1000000) %}{{ i }}{% endfor %}",
    "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
    "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}",
    "{% set ns = namespace(s='xxxxxxxx') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s | length }}",
    "{% macro g(s, n) %}{% if n > 0 %}{{ g(s ~ s, n - 1) }}{% endif %}{% endmacro %}{{ g('xxxxxxxx', 60) }}",
    "{{ raise_exception('boom') }}",
    "{{ messages | tojson }}",
    "{{ messages | tojson(indent=100000) }}",
    "{{ bos_token }}",
    "{{ eos_token * 10 }}",
    "{{ message['content'].strip() }}",
    "{{ message['content'].split() }}",
    "{{ x.y.z }}",
    "{{ none.attr }}",
    "{{ undefined_function() }}",
    "{{ 'abc'[::-1] }}",
    "{{ 'abc'[1000000000:] }}",
    "{{ range(-5) | list }}",
    "{{ messages | map(attribute='role') | join(', ') }}",
    "{{ loop.index }}",
    "{% break %}",
    "{% continue %}",
    "{{ '%s' % messages }}",
    "{{ messages | sort(attribute='content') }}",
    "{{ messages | groupby('role') }}",
    "{{ 'a' | replace('', 'b') }}",
    "{{ 'x' | center(100000000) }}",
    "{{ 'x' | indent(100000000) }}",
    "{{ range(10) | batch(0) | list }}",
    "{{ range(10) | slice(0) | list }}",
    "{{ 'x'.ljust(100000000) }}",
    "{{ 'x'.zfill(100000000) }}",
    "{{ 'x'.center(100000000) }}",
    "{{ cycler(1, 2) }}",
    "{{ namespace() }}",
    "{{ self }}",
    "{% include 'x' %}",
    "{% extends 'x' %}",
    "{% import 'x' as y %}",
    "{% raw %}",
    "{% endraw %}",
    "{%- ",
    " -%}",
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "'",
    "\"",
    "(",
    ")",
    "[",
    "|",
];

fn char_boundary(s: &str, rng: &mut Rng) -> usize {
    let mut at = rng.below(s.len() + 1);
    while !s.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn mutate_template(rng: &mut Rng, seeds: &[String]) -> Vec<u8> {
    let mut t = rng.pick(seeds).clone();
    for _ in 0..1 + rng.below(3) {
        match rng.below(6) {
            0..=2 => {
                let at = char_boundary(&t, rng);
                let fragment = *rng.pick(JINJA_FRAGMENTS);
                t.insert_str(at, fragment);
            }
            3 => {
                let a = char_boundary(&t, rng);
                let b = char_boundary(&t, rng);
                t.replace_range(a.min(b)..a.max(b), "");
            }
            4 => {
                let other = rng.pick(seeds);
                let a = char_boundary(other, rng);
                let b = char_boundary(other, rng);
                let piece = other[a.min(b)..a.max(b)].to_string();
                let at = char_boundary(&t, rng);
                t.insert_str(at, &piece);
            }
            _ => {
                let mut bytes = t.into_bytes();
                fuzzing::mutate_bytes(rng, &mut bytes, &[b"{{", b"}}", b"{%", b"%}"]);
                t = String::from_utf8_lossy(&bytes).into_owned();
            }
        }
    }
    t.into_bytes()
}

#[test]
fn fuzz_chat_template() {
    limit_memory();
    let mut seeds: Vec<String> = TEMPLATES.iter().map(|t| t.to_string()).collect();
    seeds.push(String::from_utf8(read_fixture("qwen2-causal-lm", "chat_template.jinja")).unwrap());
    let work = fuzzing::work_dir("chat-template");
    let in_flight = work.join("chat_template.jinja");
    eprintln!(
        "fuzz chat-template: inputs are written to {}; if the process dies, the last one is there",
        in_flight.display()
    );
    let special_tokens: Vec<(String, String)> = [("bos_token", "<s>"), ("eos_token", "</s>")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let messages = vec![
        Message::new("system", "You are terse."),
        Message::new("user", "  Hello 😀 {{ not a tag }}  "),
        Message::new("assistant", "Hi.\u{301}"),
        Message::new("user", "What is 2 + 2?"),
    ];
    let report = fuzzing::run(
        "chat-template",
        fuzzing::iterations(fuzzing::DEFAULT_ITERS),
        &[],
        |rng, _| mutate_template(rng, &seeds),
        move |input| {
            std::fs::write(&in_flight, input).unwrap();
            let source = String::from_utf8_lossy(input);
            let t = ChatTemplate::new(&source, "fuzz.jinja", special_tokens.clone())
                .map_err(|e| format!("{}: {e}", variant(&e)))?;
            t.render(&messages, true)
                .map_err(|e| format!("{}: {e}", variant(&e)))?;
            t.render(&messages[1..2], false)
                .map_err(|e| format!("{}: {e}", variant(&e)))?;
            Ok(())
        },
    );
    finish(report, &[&work]);
}

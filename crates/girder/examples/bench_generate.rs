//! Generation throughput of a GGUF model, quantized and dequantized: prefill tokens/s (128-
//! and 512-token prompts), decode tokens/s at batch 1 and 8, the cost of one decode step at
//! position 32 and 512, and the memory-bandwidth bound. Prints one JSON object per
//! measurement.
//!
//! ```sh
//! cargo run --release --example bench_generate -- models/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf
//! ```
//! `scripts/bench-generate` runs it beside llama.cpp (llama-cpp-python) and prints ratios.

use candle_core::Tensor;
use girder::batch::RaggedBatch;
use girder::generate::TextGenerator;
use girder::layers::KvCache;
use girder::models::{DecoderModel, Logits};
use girder::pretrained::GgufMode;
use std::time::Instant;

const PROMPT: &str = "The history of the city begins long before the first written records, when small groups of farmers settled along the river banks and built wooden houses on raised platforms to escape the seasonal floods.";

fn forward(model: &DecoderModel, batch: &RaggedBatch, caches: &mut [&mut KvCache]) -> Tensor {
    model.forward(batch, caches, Logits::Last).unwrap()
}

/// Prompt ids of exactly `n` tokens (the text repeated).
fn prompt_ids(g: &TextGenerator, n: usize) -> Vec<u32> {
    let one = g.encode_prompt(PROMPT, 0).unwrap();
    one.iter().cycle().take(n).copied().collect()
}

/// Seconds for one prefill of `ids`, best of `reps`.
fn time_prefill(model: &DecoderModel, ids: &[u32], reps: usize) -> f64 {
    (0..reps)
        .map(|_| {
            let mut cache = model.new_cache(ids.len() + 1).unwrap();
            let mut batch = RaggedBatch::from_encodings([]);
            batch.push_from(ids, 0);
            let t = Instant::now();
            forward(model, &batch, &mut [&mut cache]);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

/// Seconds per decode step for `batch` sequences whose caches hold `position` tokens,
/// averaged over `steps` steps (greedy token choice on the CPU included).
fn time_decode(model: &DecoderModel, prompt: &[u32], batch: usize, steps: usize) -> f64 {
    let mut caches: Vec<KvCache> = (0..batch)
        .map(|_| model.new_cache(prompt.len() + steps + 1).unwrap())
        .collect();
    let mut b = RaggedBatch::from_encodings([]);
    for _ in 0..batch {
        b.push_from(prompt, 0);
    }
    let mut refs: Vec<&mut KvCache> = caches.iter_mut().collect();
    let mut logits = forward(model, &b, &mut refs);
    let t = Instant::now();
    for _ in 0..steps {
        let next: Vec<u32> = logits.argmax(1).unwrap().to_vec1().unwrap();
        let mut b = RaggedBatch::from_encodings([]);
        for (id, cache) in next.iter().zip(refs.iter()) {
            b.push_from(&[*id], cache.len());
        }
        logits = forward(model, &b, &mut refs);
    }
    t.elapsed().as_secs_f64() / steps as f64
}

/// Bytes per second read by summing a 256 MiB buffer on the rayon threads (best of 5): the
/// bandwidth the decode step's threads can draw on.
fn read_bandwidth() -> f64 {
    use rayon::prelude::*;
    let data: Vec<u64> = (0..(256usize << 20) / 8).map(|i| i as u64).collect();
    (0..5)
        .map(|_| {
            let t = Instant::now();
            let s: u64 = data
                .par_chunks(1 << 16)
                .map(|c| c.iter().fold(0u64, |a, &x| a.wrapping_add(x)))
                .reduce(|| 0, u64::wrapping_add);
            std::hint::black_box(s);
            (data.len() * 8) as f64 / t.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

/// Bytes one decode step reads, as the GGUF file stores its tensors and as f32: every tensor
/// once, but the embedding table, of which a step reads one row, when the file has a separate
/// output matrix (a tied table is read whole as the LM head).
fn weight_bytes(path: &str) -> (f64, f64) {
    let mut file = std::fs::File::open(path).unwrap();
    let content = candle_core::quantized::gguf_file::Content::read(&mut file).unwrap();
    let untied = content.tensor_infos.contains_key("output.weight");
    let (mut stored, mut f32_bytes) = (0usize, 0usize);
    for (name, info) in &content.tensor_infos {
        if untied && name == "token_embd.weight" {
            continue;
        }
        let elems = info.shape.elem_count();
        stored += elems / info.ggml_dtype.block_size() * info.ggml_dtype.type_size();
        f32_bytes += elems * 4;
    }
    (stored as f64, f32_bytes as f64)
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "models/smollm2-gguf/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let (stored_bytes, f32_bytes) = weight_bytes(&path);
    let bandwidth = read_bandwidth();
    println!(
        "{}",
        serde_json::json!({"measure": "read_bandwidth_gb_s", "value": bandwidth / 1e9})
    );
    for (mode, label) in [
        (GgufMode::Quantized, "quantized"),
        (GgufMode::Dequantized, "f32"),
    ] {
        // BENCH_WEIGHTS=quantized (or f32) measures one of the two.
        if std::env::var("BENCH_WEIGHTS").is_ok_and(|only| only != label) {
            continue;
        }
        let options = girder::LoadOptions {
            gguf: mode,
            ..Default::default()
        };
        let g = girder::load(&path, &options)
            .and_then(girder::Loaded::into_decoder)
            .unwrap();
        let model = g.model();
        let prompt = prompt_ids(&g, 128);
        // BENCH_ONLY=b16 (a comma list of prefill, prefill512, at32, at512, b1, b8, b16) skips
        // the rest,
        // for a profiler; skipped figures print as NaN.
        let only = std::env::var("BENCH_ONLY").ok();
        let wanted = |name: &str| {
            only.as_ref()
                .is_none_or(|o| o.split(',').any(|w| w == name))
        };
        let measure = |name: &str, f: &dyn Fn() -> f64| if wanted(name) { f() } else { f64::NAN };
        let prefill_s = measure("prefill", &|| time_prefill(model, &prompt, 3));
        let prefill512_s = measure("prefill512", &|| {
            time_prefill(model, &prompt_ids(&g, 512), 2)
        });
        let at32 = measure("at32", &|| time_decode(model, &prompt_ids(&g, 32), 1, 32));
        let at512 = measure("at512", &|| time_decode(model, &prompt_ids(&g, 512), 1, 32));
        let b1 = measure("b1", &|| time_decode(model, &prompt_ids(&g, 16), 1, 64));
        let b8 = measure("b8", &|| time_decode(model, &prompt_ids(&g, 16), 8, 32));
        let b16 = measure("b16", &|| time_decode(model, &prompt_ids(&g, 16), 16, 16));
        // Weights read per decoded token: the tensors as stored or as f32.
        let weight_bytes = match mode {
            GgufMode::Quantized => stored_bytes,
            GgufMode::Dequantized => f32_bytes,
        };
        let bound = bandwidth / weight_bytes;
        println!(
            "{}",
            serde_json::json!({
                "weights": label,
                "prefill_tokens": prompt.len(),
                "prefill_tok_s": prompt.len() as f64 / prefill_s,
                "prefill512_tok_s": 512.0 / prefill512_s,
                "decode_b1_tok_s": 1.0 / b1,
                "decode_b8_tok_s": 8.0 / b8,
                "decode_b16_tok_s": 16.0 / b16,
                "step_ms_at_32": at32 * 1e3,
                "step_ms_at_512": at512 * 1e3,
                "weight_bytes_per_token": weight_bytes,
                "bandwidth_bound_tok_s": bound,
                "decode_b1_of_bound": (1.0 / b1) / bound,
            })
        );
    }
}

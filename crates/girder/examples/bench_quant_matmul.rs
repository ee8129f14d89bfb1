//! The quantized kernel alone: `x Wᵀ` for SmolLM2's projection shapes (Q4_1 and Q8_0,
//! random weights) at 1 to 128 activation rows. Prints one JSON object per shape: the best
//! repetition's milliseconds and effective GOP/s (two operations per weight per activation row).
//!
//! ```sh
//! cargo run --release --example bench_quant_matmul
//! ```

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use girder::layers::cpu::quant_matmul::QuantMatrix;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let dev = Device::Cpu;
    let mut shapes = vec![
        (GgmlDType::Q4_1, 3072, 576),
        (GgmlDType::Q4_1, 576, 1536),
        (GgmlDType::Q8_0, 49152, 576),
    ];
    // BENCH_SHAPE=ROWS,COLS measures that shape in both formats instead.
    if let Ok(shape) = std::env::var("BENCH_SHAPE") {
        let (rows, cols) = shape.split_once(',').expect("BENCH_SHAPE=ROWS,COLS");
        let (rows, cols) = (rows.parse().unwrap(), cols.parse().unwrap());
        shapes = vec![(GgmlDType::Q4_1, rows, cols), (GgmlDType::Q8_0, rows, cols)];
    }
    for (format, rows, cols) in shapes {
        // BENCH_FORMAT=Q4_1 / Q8_0 and BENCH_ROWS=128 narrow the run (for a profiler).
        if std::env::var("BENCH_FORMAT").is_ok_and(|f| f != format!("{format:?}")) {
            continue;
        }
        let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
        // BENCH_COPIES=30 cycles through that many copies of the matrix, as a model's layers
        // do, so that the weights come from memory rather than cache.
        let copies: usize = std::env::var("BENCH_COPIES").map_or(1, |c| c.parse().unwrap());
        let ms: Vec<QuantMatrix> = (0..copies)
            .map(|_| {
                QuantMatrix::from_qtensor(&Arc::new(QTensor::quantize(&w, format).unwrap()))
                    .unwrap()
                    .unwrap()
            })
            .collect();
        for n in [1, 4, 8, 16, 32, 128] {
            if std::env::var("BENCH_ROWS").is_ok_and(|r| r != n.to_string()) {
                continue;
            }
            let x = Tensor::randn(0f32, 1.0, (n, cols), &dev).unwrap();
            let reps = (2_000_000_000 / (rows * cols * n))
                .clamp(3, 200)
                .max(3 * copies)
                * std::env::var("BENCH_REPEAT").map_or(1, |r| r.parse().unwrap_or(1));
            let times: Vec<f64> = (0..reps)
                .map(|r| {
                    let m = &ms[r % copies];
                    let t = Instant::now();
                    std::hint::black_box(m.forward(&x).unwrap());
                    t.elapsed().as_secs_f64()
                })
                .collect();
            // The best repetition: on a shared machine the others measure the neighbours.
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            println!(
                "{}",
                serde_json::json!({
                    "format": format!("{format:?}"), "rows": rows, "cols": cols, "n": n,
                    "ms": best * 1e3,
                    "mean_ms": times.iter().sum::<f64>() / times.len() as f64 * 1e3,
                    "gop_s": 2.0 * (rows * cols * n) as f64 / best / 1e9,
                })
            );
        }
    }
}

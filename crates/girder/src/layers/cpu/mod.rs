//! girder's CPU kernels, behind the device-neutral layers of [`super`]: each layer calls its
//! kernel here when its tensors are f32 on the CPU (and track no gradient), and candle's op
//! otherwise, so another device runs the same model files through candle (a GPU backend is
//! a sibling folder of this one).
//!
//! | module | what |
//! |---|---|
//! | [`team`] | the team of threads every kernel splits its work over (polling between regions) |
//! | [`kernels`] | GELU, softmax, SiLU·mul, bias and residual adds, in place and vectorized |
//! | [`skinny_matmul`] | `x W` for a few rows, streaming each weight once |
//! | [`half_matmul`] | `x W` with `W` in bf16 or f16, widened to f32 in the kernel |
//! | [`quant_matmul`] | GGUF matrices (legacy and k-quant types) times activations rounded to bytes (AVX-512 VNNI, AVX2, scalar) |
//! | [`attention`] | causal attention row by row over each sequence's cache |
//! | [`kv_cache`] | a step's keys and values copied into the cache's buffers |
//! | [`norm`] | LayerNorm and RMSNorm rows |
//! | [`rope`] | rotary embedding of heads where they lie |
//! | [`autograd`] | LayerNorm, softmax and GELU with closed-form backward passes (training) |

/// Whether girder's kernels use AVX-512 (F, BW, VL) on this CPU, detected once.
/// `GIRDER_NO_AVX512=1` says no, so that one machine measures the AVX2 paths of CPUs without
/// it (AMD Zen 2/3, older Intel). It covers girder's own kernels; the `gemm` crate behind
/// candle's matmul picks its kernel by itself.
pub fn avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw")
                && std::arch::is_x86_feature_detected!("avx512vl")
                && std::env::var_os("GIRDER_NO_AVX512").is_none()
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

pub(crate) mod attention;
pub mod autograd;
pub mod half_matmul;
pub(crate) mod kernels;
pub(crate) mod kv_cache;
pub(crate) mod norm;
pub mod quant_matmul;
pub(crate) mod rope;
pub mod skinny_matmul;
pub(crate) mod team;

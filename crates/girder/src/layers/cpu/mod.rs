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

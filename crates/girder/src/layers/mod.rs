//! Building blocks shared by every architecture, written once and device-neutral: linear
//! layers, norms, activations, embeddings, rotary embeddings, ragged attention, causal
//! attention over a key/value cache, and pooling. girder's own CPU kernels (and the team of
//! threads they split work over) live in [`cpu`]; each block falls back to candle's ops on
//! any other device.
//!
//! Every block works on packed `[total_tokens, hidden]` tensors (see [`crate::batch`]).

mod activation;
mod attention;
pub mod cpu;
mod embedding;
mod kv_cache;
mod linear;
mod norm;
pub mod pooling;
pub mod rope;
pub mod training;

pub use activation::Activation;
pub use attention::{
    causal_attention, cross_attention, packed_first_token_attention, packed_self_attention,
    ragged_causal_attention, varlen_attention, DistanceBias,
};
pub use cpu::kernels::{add_in_place, gelu_erf, gelu_tanh_mul, silu_mul, softmax_last_dim};
pub use embedding::Embedding;
pub use kv_cache::{CrossKv, KvCache, Seq2SeqCache};
pub use linear::{Linear, Quantization, MIN_QUANTIZED_ELEMENTS};
pub use norm::{layer_norm, LayerNorm, RmsNorm};
pub use training::Dropout;

/// Runs `f` (a forward pass) on a thread of rayon's global pool and returns its result.
///
/// Why: candle's matmul (the `gemm` crate, for products of many rows) splits its work with
/// rayon. Called from a thread outside the pool (the CLI's main thread, the server's model
/// thread), each call hands its job to the pool and sleeps on a futex until a worker has run
/// it: two context switches per operation, which cost 40% of a one-thread SmolLM2 decode
/// step whose products all ran on rayon. From a thread of the pool the same calls run inline
/// and share work by stealing. girder's own kernels run on the team (`layers/cpu/team.rs`).
///
/// The job runs outside any training pass the worker that takes it may be in
/// ([`training::outside_any_pass`]).
pub fn in_thread_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        f()
    } else {
        rayon::scope(|_| training::outside_any_pass(f))
    }
}

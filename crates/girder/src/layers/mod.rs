//! Building blocks shared by every architecture, written once: linear layers, norms,
//! activations, embeddings, rotary embeddings, ragged attention, causal attention over a
//! key/value cache, and pooling.
//!
//! Every block works on packed `[total_tokens, hidden]` tensors (see [`crate::batch`]).

mod activation;
mod attention;
mod kernels;
mod kv_cache;
mod linear;
mod norm;
pub mod pooling;
pub mod quant_matmul;
pub mod rope;

pub use activation::Activation;
pub use attention::{causal_attention, ragged_causal_attention, varlen_attention};
pub use kernels::{add_in_place, gelu_erf, softmax_last_dim};
pub use kv_cache::KvCache;
pub use linear::Linear;
pub use norm::{layer_norm, RmsNorm};

use crate::error::Result;
use crate::hub::Weights;
use candle_core::Tensor;

/// A lookup table `[rows, dim]`; `forward` gathers rows by id.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
}

impl Embedding {
    /// Loads `prefix.weight` with shape `[rows, dim]`.
    pub fn load(w: &Weights, rows: usize, dim: usize) -> Result<Self> {
        Ok(Embedding {
            table: w.get([rows, dim], "weight")?,
        })
    }

    /// `ids`: `[n]` u32 → `[n, dim]`.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.table.index_select(ids, 0)?)
    }

    /// The table itself (`[rows, dim]`), e.g. for a tied output projection.
    pub fn table(&self) -> &Tensor {
        &self.table
    }
}

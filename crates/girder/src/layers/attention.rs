use crate::error::Result;
use candle_core::Tensor;

/// Scaled dot-product attention of each sequence over its own tokens, on packed input.
///
/// `q`, `k`, `v`: `[total_tokens, heads, head_dim]` f32; `seqlens`: `[num_seqs]` u32.
/// Returns `[total_tokens, heads, head_dim]`. No padding exists, so no mask is needed for
/// encoders; `causal` masks future tokens for decoders.
pub fn varlen_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    seqlens: &Tensor,
    max_seqlen: usize,
    causal: bool,
) -> Result<Tensor> {
    let head_dim = q.dim(2)?;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let out = if q.device().is_cpu() {
        candle_nn::attention::flash_attn_varlen_cpu(
            q, k, v, None, seqlens, seqlens, max_seqlen, max_seqlen, scale, causal, None, None,
        )?
    } else {
        candle_nn::attention::flash_attn_varlen_unfused(
            q, k, v, None, seqlens, seqlens, max_seqlen, max_seqlen, scale, causal, None, None,
        )?
    };
    Ok(out)
}

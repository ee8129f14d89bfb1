//! Rotary embedding's kernel: the heads of each row rotated where they lie (a view of some
//! columns of a fused projection), written once into the result, rows split over the
//! [`team`]'s threads for prompts.

use super::kernels::{f32s, fast_path};
use super::team;
use candle_core::{CpuStorage, DType, Storage, Tensor};

/// [`RotaryEmbedding::apply_heads`](crate::layers::rope::RotaryEmbedding::apply_heads) on
/// the CPU: `x` `[n, heads · head_dim]` (rows of adjacent values, however far apart the rows
/// lie), `cos`/`sin` `[n, head_dim / 2]`; `None` where candle's `rope_thd` must run instead
/// (another device or dtype, gradients, a layout it cannot read).
pub(crate) fn rotate_heads(
    x: &Tensor,
    heads: usize,
    cos: &Tensor,
    sin: &Tensor,
) -> candle_core::Result<Option<Tensor>> {
    let (n, width) = x.dims2()?;
    let half = cos.dim(1)?;
    let head_dim = 2 * half;
    let readable =
        x.device().is_cpu() && x.dtype() == DType::F32 && !x.track_op() && x.stride()[1] == 1;
    if !(readable && fast_path(cos) && fast_path(sin)) {
        return Ok(None);
    }
    let (storage, layout) = x.storage_and_layout();
    let (cos_storage, cos_layout) = cos.storage_and_layout();
    let (sin_storage, sin_layout) = sin.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some(cos), Some(sin)) = (
        &*storage,
        f32s(&cos_storage, cos_layout),
        f32s(&sin_storage, sin_layout),
    ) else {
        return Ok(None);
    };
    let (start, row_stride) = (layout.start_offset(), layout.stride()[0]);
    // Rows split over the team's threads for prompts; a decode step's few rows in one
    // task, on this thread.
    let rows_per_task = if n * width >= 16 * 1024 {
        (8192 / width.max(1)).max(1)
    } else {
        n.max(1)
    };
    let out = team::collect_chunks(n * width, rows_per_task * width, |task, rows| {
        for (r, o) in rows.chunks_mut(width).enumerate() {
            let row = task * rows_per_task + r;
            let x = &data[start + row * row_stride..][..width];
            let (c, s) = (&cos[row * half..][..half], &sin[row * half..][..half]);
            for (x, o) in x.chunks_exact(head_dim).zip(o.chunks_mut(head_dim)) {
                let (low, high) = o.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x[i], x[i + half]);
                    // candle's `rope_thd`, term for term.
                    low[i].write(a * c[i] - b * s[i]);
                    high[i].write(a * s[i] + b * c[i]);
                }
            }
        }
    });
    drop((storage, cos_storage, sin_storage));
    Ok(Some(Tensor::from_vec(
        out,
        (n, heads, head_dim),
        x.device(),
    )?))
}

//! The KV cache's copy of a step's keys or values into its buffer, on the CPU: rows of
//! `[t, kv_heads, head_dim]` written where they go in `[kv_heads, capacity, head_dim]`, in
//! place.

use candle_core::{CpuStorage, DType, Layout, Tensor};

/// Copies `rows` `[t, kv_heads, head_dim]` into `buffer` `[kv_heads, capacity, head_dim]`
/// from position `at`, in place; `false` (nothing written) unless both are f32 on the CPU,
/// `rows` contiguous and without gradients: the caller then takes candle's `slice_set`.
pub(crate) fn write_rows(
    buffer: &Tensor,
    rows: &Tensor,
    at: usize,
    capacity: usize,
) -> candle_core::Result<bool> {
    let copy = WriteRows { rows, at, capacity };
    if !(buffer.device().is_cpu() && buffer.dtype() == DType::F32 && copy.copyable()) {
        return Ok(false);
    }
    buffer.inplace_op1(&copy)?;
    Ok(true)
}

/// Copies `rows` `[t, kv_heads, head_dim]` (contiguous f32) into a `[kv_heads, capacity,
/// head_dim]` buffer from position `at`.
struct WriteRows<'a> {
    rows: &'a Tensor,
    at: usize,
    capacity: usize,
}

impl WriteRows<'_> {
    /// Whether the rows are contiguous f32 on the CPU (what `cpu_fwd` copies).
    fn copyable(&self) -> bool {
        let (storage, layout) = self.rows.storage_and_layout();
        layout.is_contiguous()
            && matches!(&*storage, candle_core::Storage::Cpu(CpuStorage::F32(_)))
            && !self.rows.track_op()
    }
}

impl candle_core::InplaceOp1 for WriteRows<'_> {
    fn name(&self) -> &'static str {
        "kv-cache-write"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let (t, kv_heads, head_dim) = self.rows.dims3()?;
        let source = self.rows.storage_and_layout();
        let (candle_core::Storage::Cpu(CpuStorage::F32(src)), CpuStorage::F32(dst)) =
            (&*source.0, storage)
        else {
            candle_core::bail!("the kv cache copies f32 rows into an f32 buffer");
        };
        let src = &src[source.1.start_offset()..];
        let dst = &mut dst[layout.start_offset()..];
        for p in 0..t {
            for h in 0..kv_heads {
                let from = (p * kv_heads + h) * head_dim;
                let to = (h * self.capacity + self.at + p) * head_dim;
                dst[to..to + head_dim].copy_from_slice(&src[from..from + head_dim]);
            }
        }
        Ok(())
    }
}

//! The GGUF block types the kernels multiply, read into one canonical form.
//!
//! Every type stores a matrix row as blocks: the legacy ones (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0)
//! 32 weights with an f16 scale `d` (and a minimum `m`), the k-quants (Q4_K, Q5_K, Q6_K)
//! super-blocks of 256 with an f16 `d` (and `dmin`) and a small integer scale per 32 (Q6_K:
//! per 16) weights. Whatever the type, a block of 32 weights is then
//!
//! `w_j = s_h · (q_j − o) + m`, `q_j` an unsigned integer of 4, 5, 6 or 8 bits,
//!
//! with `s_h` one scale per half of 16 (the same for both halves but in Q6_K), `o` a power of
//! two (Q4_0: 8, Q5_0: 16, Q6_K: 32, Q8_0 stored as `q + 128`: 128) and `m` a minimum (Q4_1,
//! Q5_1, and Q4_K / Q5_K as `−dmin · m_j`). [`unpack_group`] reads a type's bytes into that
//! form (the `q_j` and the header and sub-block scales as stored: f16 bits and small
//! integers, never rounded), as llama.cpp's `dequantize_row_*` in `ggml-quants.c` reads them;
//! [`BlockScales`] turns them into `s`, `o` and `m`.

use super::BLOCK;
use candle_core::quantized::GgmlDType;

/// A block type the kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q4K,
    Q5K,
    Q6K,
}

/// How a block's integer dot product becomes its contribution (see [`BlockScales`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Combine {
    /// `s · e · Σ q a + m · e · Σ a`.
    Minimum,
    /// `s · e · (Σ q a − 2^shift · Σ a)`.
    Offset(u32),
    /// Q6_K: each half `s_h · e · (Σ q a − 32 · Σ a)` with its own scale.
    Halves,
}

impl Format {
    /// The type of a GGUF tensor, if the kernels read it.
    pub fn from_ggml(dtype: GgmlDType) -> Option<Format> {
        Some(match dtype {
            GgmlDType::Q4_0 => Format::Q4_0,
            GgmlDType::Q4_1 => Format::Q4_1,
            GgmlDType::Q5_0 => Format::Q5_0,
            GgmlDType::Q5_1 => Format::Q5_1,
            GgmlDType::Q8_0 => Format::Q8_0,
            GgmlDType::Q4K => Format::Q4K,
            GgmlDType::Q5K => Format::Q5K,
            GgmlDType::Q6K => Format::Q6K,
            _ => return None,
        })
    }

    /// Weights per block of the file (its smallest unit: a row's length is a multiple).
    pub(super) const fn file_block_weights(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 256,
            _ => BLOCK,
        }
    }

    /// Bytes per block of the file (`ggml_type_size`).
    pub(super) const fn file_block_bytes(self) -> usize {
        match self {
            Format::Q4_0 => 18,
            Format::Q4_1 => 20,
            Format::Q5_0 => 22,
            Format::Q5_1 => 24,
            Format::Q8_0 => 34,
            Format::Q4K => 144,
            Format::Q5K => 176,
            Format::Q6K => 210,
        }
    }

    /// Blocks of 32 per file block: the blocks that share its header.
    pub(super) const fn group_blocks(self) -> usize {
        self.file_block_weights() / BLOCK
    }

    /// f16 values in a file block's header: `d`, and `m` or `dmin` where the type has one.
    pub(super) const fn header_halves(self) -> usize {
        match self {
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => 2,
            _ => 1,
        }
    }

    /// Small integer scales per block of 32 (k-quants: scale and minimum, or Q6_K's two
    /// halves' scales).
    pub(super) const fn sub_scales(self) -> usize {
        match self {
            Format::Q4K | Format::Q5K | Format::Q6K => 2,
            _ => 0,
        }
    }

    /// Whether the weights fit in 4 bits plus [`high_bits`](Self::high_bits) (all but Q8_0).
    pub(super) const fn nibbles(self) -> bool {
        !matches!(self, Format::Q8_0)
    }

    /// Bits above the low nibble: 1 for the 5-bit types, 2 for Q6_K.
    pub(super) const fn high_bits(self) -> usize {
        match self {
            Format::Q5_0 | Format::Q5_1 | Format::Q5K => 1,
            Format::Q6K => 2,
            _ => 0,
        }
    }

    pub(super) const fn combine(self) -> Combine {
        match self {
            Format::Q4_1 | Format::Q5_1 | Format::Q4K | Format::Q5K => Combine::Minimum,
            Format::Q4_0 => Combine::Offset(3),
            Format::Q5_0 => Combine::Offset(4),
            Format::Q8_0 => Combine::Offset(7),
            Format::Q6K => Combine::Halves,
        }
    }
}

/// One block of 32 weights in canonical form.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Unpacked {
    /// The unsigned integers `q_j`.
    pub q: [u8; BLOCK],
    /// The block's small scales as stored ([`Format::sub_scales`] of them; Q6_K's are `i8`
    /// bits).
    pub sub: [u8; 2],
}

/// The f16 bits of a file block's header ([`Format::header_halves`] of them).
pub(super) type Header = [u16; 2];

fn half_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// Q4_K / Q5_K: the 6-bit scale and minimum of sub-block `j` from the 12 packed bytes
/// (`get_scale_min_k4`).
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// The f16 header of one file block: `d`, and `m` or `dmin` where the type has one.
pub(super) fn header(format: Format, b: &[u8]) -> Header {
    match format {
        Format::Q6K => [half_at(b, 208), 0],
        _ if format.header_halves() == 2 => [half_at(b, 0), half_at(b, 2)],
        _ => [half_at(b, 0), 0],
    }
}

/// The small scales of block `k` of one file block as stored (Q4_K / Q5_K: 6-bit scale and
/// minimum; Q6_K: the two halves' `i8` scales; none for the legacy types).
pub(super) fn sub_scales_of(format: Format, b: &[u8], k: usize) -> [u8; 2] {
    match format {
        Format::Q4K | Format::Q5K => {
            let (sc, m) = scale_min_k4(k, &b[4..16]);
            [sc, m]
        }
        Format::Q6K => [b[192 + 2 * k], b[192 + 2 * k + 1]],
        _ => [0, 0],
    }
}

/// Reads one file block (`format.file_block_bytes()` bytes) into its header and its
/// `format.group_blocks()` blocks of 32.
pub(super) fn unpack_group(format: Format, b: &[u8], header: &mut Header, out: &mut [Unpacked]) {
    assert!(b.len() >= format.file_block_bytes() && out.len() >= format.group_blocks());
    *header = self::header(format, b);
    for (k, block) in out.iter_mut().take(format.group_blocks()).enumerate() {
        block.sub = sub_scales_of(format, b, k);
    }
    // Legacy types: low nibble of byte j is weight j, high nibble weight j + 16.
    let nibbles = |qs: &[u8], q: &mut [u8; BLOCK]| {
        for j in 0..16 {
            q[j] = qs[j] & 0x0f;
            q[j + 16] = qs[j] >> 4;
        }
    };
    let fifth_bits = |qh: u32, q: &mut [u8; BLOCK]| {
        for (j, v) in q.iter_mut().enumerate() {
            *v |= (((qh >> j) & 1) as u8) << 4;
        }
    };
    let qh_at = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    match format {
        Format::Q4_0 => nibbles(&b[2..18], &mut out[0].q),
        Format::Q4_1 => nibbles(&b[4..20], &mut out[0].q),
        Format::Q5_0 => {
            nibbles(&b[6..22], &mut out[0].q);
            fifth_bits(qh_at(2), &mut out[0].q);
        }
        Format::Q5_1 => {
            nibbles(&b[8..24], &mut out[0].q);
            fifth_bits(qh_at(4), &mut out[0].q);
        }
        Format::Q8_0 => {
            for (q, &v) in out[0].q.iter_mut().zip(&b[2..34]) {
                *q = v ^ 0x80; // i8 + 128
            }
        }
        Format::Q4K | Format::Q5K => {
            let (qh, qs) = match format {
                Format::Q5K => (Some(&b[16..48]), &b[48..176]),
                _ => (None, &b[16..144]),
            };
            // Sub-blocks 2i and 2i + 1 share 32 bytes: low nibbles, then high nibbles; Q5_K's
            // fifth bit of sub-block j is bit j of the 32 `qh` bytes.
            for (j, block) in out.iter_mut().take(8).enumerate() {
                let bytes = &qs[32 * (j / 2)..32 * (j / 2) + 32];
                for l in 0..BLOCK {
                    let nibble = if j % 2 == 0 {
                        bytes[l] & 0x0f
                    } else {
                        bytes[l] >> 4
                    };
                    let high = qh.map_or(0, |qh| ((qh[l] >> j) & 1) << 4);
                    block.q[l] = nibble | high;
                }
            }
        }
        Format::Q6K => {
            let (ql, qh) = (&b[..128], &b[128..192]);
            // Weight y of 256: half n = y / 128 reads 64 bytes of `ql` (low nibbles for
            // y % 128 < 64, high ones above) and 32 of `qh` (2 bits per weight, group
            // (y % 128) / 32 at bits 2g..2g + 2); scale y / 16.
            for (j, block) in out.iter_mut().take(8).enumerate() {
                for (k, q) in block.q.iter_mut().enumerate() {
                    let y = 32 * j + k;
                    let (n, r) = (y / 128, y % 128);
                    let (g, l) = (r / 32, r % 32);
                    let low = ql[64 * n + l + 32 * (g % 2)];
                    let low = if g < 2 { low & 0x0f } else { low >> 4 };
                    let high = (qh[32 * n + l] >> (2 * g)) & 3;
                    *q = low | (high << 4);
                }
            }
        }
    }
}

/// A block's `w_j = s_h · (q_j − offset) + minimum` in f32.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct BlockScales {
    /// Scales of weights 0..16 and 16..32.
    pub s: [f32; 2],
    pub offset: i32,
    pub minimum: f32,
}

impl BlockScales {
    pub(super) fn new(format: Format, header: &Header, sub: [u8; 2]) -> BlockScales {
        let d = super::f16_to_f32(header[0]);
        let second = super::f16_to_f32(header[1]);
        let (s, minimum) = match format {
            Format::Q4_1 | Format::Q5_1 => ([d, d], second),
            Format::Q4K | Format::Q5K => {
                let s = d * sub[0] as f32;
                ([s, s], -(second * sub[1] as f32))
            }
            Format::Q6K => ([d * sub[0] as i8 as f32, d * sub[1] as i8 as f32], 0.0),
            Format::Q4_0 | Format::Q5_0 | Format::Q8_0 => ([d, d], 0.0),
        };
        let offset = match format.combine() {
            Combine::Offset(shift) => 1 << shift,
            Combine::Halves => 32,
            Combine::Minimum => 0,
        };
        BlockScales { s, offset, minimum }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::QTensor;
    use candle_core::{Device, Tensor};

    /// The canonical form, turned back into weights, equals candle's dequantization of the
    /// same bytes (ggml's `dequantize_row_*`) for every type.
    #[test]
    fn canonical_form_dequantizes_like_ggml() {
        let dev = Device::Cpu;
        for dtype in [
            GgmlDType::Q4_0,
            GgmlDType::Q4_1,
            GgmlDType::Q5_0,
            GgmlDType::Q5_1,
            GgmlDType::Q8_0,
            GgmlDType::Q4K,
            GgmlDType::Q5K,
            GgmlDType::Q6K,
        ] {
            let format = Format::from_ggml(dtype).unwrap();
            let (rows, cols) = (3, 512);
            let w = Tensor::randn(0f32, 1.0, (rows, cols), &dev).unwrap();
            let q = QTensor::quantize(&w, dtype).unwrap();
            let expected: Vec<f32> = q
                .dequantize(&dev)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            let data = q.data().unwrap();
            let mut got = Vec::new();
            let mut header = [0u16; 2];
            let mut blocks = vec![Unpacked::default(); format.group_blocks()];
            for file_block in data.chunks_exact(format.file_block_bytes()) {
                unpack_group(format, file_block, &mut header, &mut blocks);
                for block in &blocks {
                    let scales = BlockScales::new(format, &header, block.sub);
                    for (j, &qj) in block.q.iter().enumerate() {
                        let s = scales.s[j / 16];
                        got.push(s * (qj as i32 - scales.offset) as f32 + scales.minimum);
                    }
                }
            }
            assert_eq!(got.len(), expected.len(), "{dtype:?}");
            for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
                assert!(
                    (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{dtype:?} weight {i}: {g} vs {e}"
                );
            }
        }
    }
}

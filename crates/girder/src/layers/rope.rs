//! Rotary position embeddings (RoPE, Su et al. 2021, <https://arxiv.org/abs/2104.09864>), with
//! the frequency rescalings transformers names `rope_type`: `default`, `linear` and `llama3`
//! (transformers `modeling_rope_utils.py`: `_compute_default_rope_parameters`,
//! `_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`).
//!
//! The cos/sin rows are computed per batch from the tokens' positions (no table sized by the
//! context, which is 128k positions for Llama 3), in f32 as transformers does.

use super::cpu;
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::Deserialize;
use std::path::Path;

/// How the inverse frequencies are rescaled for longer contexts.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    /// `rope_type: "default"`: no rescaling.
    Default,
    /// `rope_type: "linear"`: every frequency divided by `factor` (positions interpolated).
    Linear { factor: f32 },
    /// `rope_type: "llama3"`: low frequencies divided by `factor`, high ones kept, a smooth
    /// ramp between (Llama 3.1).
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_max_position_embeddings: usize,
    },
}

/// `rope_parameters` (transformers 5) or `rope_scaling` (transformers 4) as written in
/// config.json; `type` is the pre-4.45 spelling of `rope_type`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RopeParameters {
    #[serde(default, alias = "type")]
    pub rope_type: Option<String>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub factor: Option<f32>,
    #[serde(default)]
    pub low_freq_factor: Option<f32>,
    #[serde(default)]
    pub high_freq_factor: Option<f32>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub partial_rotary_factor: Option<f32>,
}

impl RopeParameters {
    /// The scaling these parameters describe; `file` names config.json in errors.
    pub fn scaling(&self, file: &Path, field: &str) -> Result<RopeScaling> {
        let bad = |reason: String| Error::BadConfig {
            file: file.to_path_buf(),
            field: field.to_string(),
            reason,
        };
        if let Some(p) = self.partial_rotary_factor.filter(|&p| p != 1.0) {
            return Err(bad(format!(
                "partial_rotary_factor {p} is not supported (only 1.0)"
            )));
        }
        let factor = |name: &str| {
            self.factor
                .filter(|f| f.is_finite() && *f > 0.0)
                .ok_or_else(|| bad(format!("rope_type `{name}` needs a positive `factor`")))
        };
        match self.rope_type.as_deref().unwrap_or("default") {
            "default" => Ok(RopeScaling::Default),
            "linear" => Ok(RopeScaling::Linear {
                factor: factor("linear")?,
            }),
            "llama3" => {
                let need = |v: Option<f32>, name: &str| {
                    v.ok_or_else(|| bad(format!("rope_type `llama3` needs `{name}`")))
                };
                let low = need(self.low_freq_factor, "low_freq_factor")?;
                let high = need(self.high_freq_factor, "high_freq_factor")?;
                if high <= low {
                    return Err(bad(format!(
                        "high_freq_factor ({high}) must exceed low_freq_factor ({low})"
                    )));
                }
                Ok(RopeScaling::Llama3 {
                    factor: factor("llama3")?,
                    low_freq_factor: low,
                    high_freq_factor: high,
                    original_max_position_embeddings: self
                        .original_max_position_embeddings
                        .ok_or_else(|| {
                            bad(
                                "rope_type `llama3` needs `original_max_position_embeddings`"
                                    .into(),
                            )
                        })?,
                })
            }
            other => Err(bad(format!(
                "rope_type `{other}` is not supported (default, linear, llama3)"
            ))),
        }
    }
}

/// The rotary embedding of one attention layer: `head_dim / 2` inverse frequencies.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    inv_freq: Vec<f32>,
}

impl RotaryEmbedding {
    /// `theta` is `rope_theta` (10000 for Llama 2, 500000 for Llama 3).
    pub fn new(head_dim: usize, theta: f64, scaling: &RopeScaling) -> Self {
        // As torch: `1 / base ** (arange(0, dim, 2).float() / dim)`, all in f32.
        let base = theta as f32;
        let mut inv_freq: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / head_dim as f32))
            .collect();
        match *scaling {
            RopeScaling::Default => {}
            RopeScaling::Linear { factor } => inv_freq.iter_mut().for_each(|f| *f /= factor),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            } => {
                let old = original_max_position_embeddings as f32;
                let low_freq_wavelen = old / low_freq_factor;
                let high_freq_wavelen = old / high_freq_factor;
                for f in inv_freq.iter_mut() {
                    let wavelen = 2.0 * std::f32::consts::PI / *f;
                    let scaled = if wavelen > low_freq_wavelen {
                        *f / factor
                    } else {
                        *f
                    };
                    let medium = wavelen >= high_freq_wavelen && wavelen <= low_freq_wavelen;
                    *f = if medium {
                        let smooth = (old / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    } else {
                        scaled
                    };
                }
            }
        }
        RotaryEmbedding { inv_freq }
    }

    /// `cos` and `sin` rows `[n, head_dim / 2]` for the given positions.
    pub fn cos_sin(
        &self,
        positions: &[u32],
        device: &candle_core::Device,
    ) -> Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(positions.len() * half);
        let mut sin = Vec::with_capacity(positions.len() * half);
        for &p in positions {
            for &f in &self.inv_freq {
                // f32 product as torch's `inv_freq @ position_ids`; cos/sin in f64 then rounded.
                let angle = (p as f32 * f) as f64;
                cos.push(angle.cos() as f32);
                sin.push(angle.sin() as f32);
            }
        }
        let n = positions.len();
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }

    /// Rotates `x`: `[n, heads, head_dim]` f32 by `cos`/`sin` `[n, head_dim / 2]` from
    /// [`cos_sin`](Self::cos_sin) (the "rotate half" layout of transformers' Llama).
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let x = x.unsqueeze(0)?.contiguous()?; // [1, n, heads, head_dim]
        Ok(candle_nn::rotary_emb::rope_thd(&x, cos, sin)?.squeeze(0)?)
    }

    /// [`apply`](Self::apply) to the `heads` heads of each row of `x` `[n, heads · head_dim]`,
    /// which may be a view of some columns of a fused projection (rows further apart than
    /// their width): the heads are read where they lie, rotated with the same arithmetic,
    /// and written once into the `[n, heads, head_dim]` result, rows split over the team's
    /// threads when there are many (copying the view out and rotating it into a zeroed
    /// tensor on one thread costs a few percent of a prompt's prefill). On another device,
    /// or with gradients, candle's `rope_thd` on a copy.
    ///
    /// ```
    /// use candle_core::{Device, Tensor};
    /// use girder::layers::rope::{RopeScaling, RotaryEmbedding};
    /// let rope = RotaryEmbedding::new(4, 10000.0, &RopeScaling::Default);
    /// let (cos, sin) = rope.cos_sin(&[0, 1], &Device::Cpu)?;
    /// // Two rows of q (2 heads of 4) and k (1 head), side by side.
    /// let qk = Tensor::arange(0f32, 24.0, &Device::Cpu)?.reshape((2, 12))?;
    /// let k = RotaryEmbedding::apply_heads(&qk.narrow(1, 8, 4)?, 1, &cos, &sin)?;
    /// let copied = qk.narrow(1, 8, 4)?.reshape((2, 1, 4))?;
    /// let expected = RotaryEmbedding::apply(&copied, &cos, &sin)?;
    /// assert_eq!(k.flatten_all()?.to_vec1::<f32>()?, expected.flatten_all()?.to_vec1::<f32>()?);
    /// # Ok::<(), girder::Error>(())
    /// ```
    pub fn apply_heads(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (n, width) = x.dims2()?;
        let half = cos.dim(1)?;
        let head_dim = 2 * half;
        if width != heads * head_dim {
            return Err(candle_core::Error::Msg(format!(
                "rotary embedding: rows of {width} values are not {heads} heads of {head_dim}"
            ))
            .into());
        }
        match cpu::rope::rotate_heads(x, heads, cos, sin)? {
            Some(rotated) => Ok(rotated),
            None => Self::apply(&x.reshape((n, heads, head_dim))?, cos, sin),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Heads read from a view of a fused projection are rotated bit for bit as candle's
    /// `rope_thd` rotates the copied heads, serially and on the team.
    #[test]
    fn heads_rotate_in_place_of_the_view_as_candle_does() {
        let dev = Device::Cpu;
        let rope = RotaryEmbedding::new(64, 10000.0, &RopeScaling::Default);
        for n in [1, 3, 300] {
            let positions: Vec<u32> = (0..n as u32).map(|p| p * 7 + 2).collect();
            let (cos, sin) = rope.cos_sin(&positions, &dev).unwrap();
            // q: 9 heads, k: 3, v: 3, side by side.
            let qkv = Tensor::randn(0f32, 1.0, (n, 15 * 64), &dev).unwrap();
            for (first, heads) in [(0, 9), (9, 3)] {
                let view = qkv.narrow(1, first * 64, heads * 64).unwrap();
                let ours = RotaryEmbedding::apply_heads(&view, heads, &cos, &sin).unwrap();
                let copied = view.reshape((n, heads, 64)).unwrap();
                let candle = RotaryEmbedding::apply(&copied, &cos, &sin).unwrap();
                assert_eq!(ours.dims(), [n, heads, 64]);
                assert_eq!(
                    ours.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    candle.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    "{n} rows, heads from {first}"
                );
            }
        }
    }

    #[test]
    fn linear_scaling_divides_frequencies() {
        let plain = RotaryEmbedding::new(8, 10000.0, &RopeScaling::Default);
        let linear = RotaryEmbedding::new(8, 10000.0, &RopeScaling::Linear { factor: 2.0 });
        assert_eq!(plain.inv_freq[0], 1.0);
        for (a, b) in plain.inv_freq.iter().zip(&linear.inv_freq) {
            assert_eq!(*a / 2.0, *b);
        }
    }

    #[test]
    fn llama3_keeps_high_and_scales_low_frequencies() {
        let s = RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_max_position_embeddings: 8192,
        };
        let plain = RotaryEmbedding::new(128, 500000.0, &RopeScaling::Default);
        let scaled = RotaryEmbedding::new(128, 500000.0, &s);
        assert_eq!(plain.inv_freq[0], scaled.inv_freq[0]);
        let last = plain.inv_freq.len() - 1;
        assert_eq!(plain.inv_freq[last] / 8.0, scaled.inv_freq[last]);
    }

    #[test]
    fn unknown_rope_type_is_named() {
        let p = RopeParameters {
            rope_type: Some("yarn".into()),
            ..Default::default()
        };
        let err = p
            .scaling(Path::new("config.json"), "rope_parameters")
            .unwrap_err();
        assert!(err.to_string().contains("yarn"), "{err}");
    }
}

use crate::error::{Error, Result};
use candle_core::Tensor;
use std::path::Path;

/// The activation functions transformers names in `hidden_act` / `activation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with erf (`"gelu"`).
    Gelu,
    /// GELU's tanh approximation (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    GeluTanh,
    Relu,
    /// `x·σ(x)` (`"silu"`, `"swish"`).
    Silu,
    Tanh,
}

impl Activation {
    /// Parses a config value; `file` and `field` name it in the error.
    pub fn parse(name: &str, file: &Path, field: &str) -> Result<Self> {
        Ok(match name {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            "tanh" => Activation::Tanh,
            other => {
                return Err(Error::BadConfig {
                    file: file.to_path_buf(),
                    field: field.to_string(),
                    reason: format!(
                        "activation `{other}` is not supported (gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, relu, silu, swish, tanh)"
                    ),
                })
            }
        })
    }

    /// Applies the function to a tensor that was just computed and is not shared (a
    /// layer's output), overwriting it where a vectorized in-place kernel exists (GELU).
    pub fn forward_owned(&self, x: Tensor) -> Result<Tensor> {
        match self {
            Activation::Gelu => super::cpu::kernels::gelu_erf(x),
            _ => self.forward(&x),
        }
    }

    /// `act(gate) · up` for `gate_up` `[n, 2·width]` holding the gate and up projections side
    /// by side (a gated MLP's fused product): one pass for SiLU and GELU-tanh (SwiGLU, GeGLU),
    /// narrow, activate and multiply for the others.
    pub fn gated(&self, gate_up: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Silu => super::cpu::kernels::silu_mul(gate_up),
            Activation::GeluTanh => super::cpu::kernels::gelu_tanh_mul(gate_up),
            _ => {
                let width = gate_up.dim(1)? / 2;
                let gate = self.forward(&gate_up.narrow(1, 0, width)?)?;
                Ok((gate * gate_up.narrow(1, width, width)?)?)
            }
        }
    }

    /// Applies the function elementwise.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Relu => x.relu()?,
            Activation::Silu => x.silu()?,
            Activation::Tanh => x.tanh()?,
        })
    }
}

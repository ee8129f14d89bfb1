use crate::error::Result;
use crate::hub::Weights;
use candle_nn::LayerNorm;

/// Loads `prefix.weight` / `prefix.bias` `[dim]` as a LayerNorm (falling back to the
/// `gamma` / `beta` names of old TensorFlow-converted BERT checkpoints, as transformers does).
pub fn layer_norm(w: &Weights, dim: usize, eps: f64) -> Result<LayerNorm> {
    let weight = w.get_either([dim], "weight", "gamma")?;
    let bias = w.get_either([dim], "bias", "beta")?;
    Ok(LayerNorm::new(weight, bias, eps))
}

//! What a forward pass does differently when it trains, as transformers' `model.train()`:
//! dropout draws its masks, and a trainable embedding table hands the optimizer the rows a
//! batch looked up instead of a gradient for the whole table.
//!
//! A training pass is a scope ([`training_pass`]) on the thread that runs the forward pass,
//! not an argument threaded through every block: the model files read like their
//! transformers counterparts (`self.dropout(x)` where transformers has it), and outside a
//! pass (inference) every [`Dropout`] is the identity and costs one thread-local read.

use crate::error::Result;
use crate::rng::Rng;
use candle_core::{Tensor, Var};
use std::cell::RefCell;

thread_local! {
    static PASS: RefCell<Option<Pass>> = const { RefCell::new(None) };
}

/// The state of the training pass running on this thread.
struct Pass {
    rng: Rng,
    lookups: Vec<LookedUp>,
}

/// The rows of a trainable embedding table one pass looked up, as a leaf of their own: their
/// gradient is `[ids, width]` rather than the table's `[vocab, width]` (47 MB for MiniLM's
/// word embeddings, mostly zeros, allocated per step by `index_select`'s backward pass).
/// The optimizer applies it to the table's rows (`train::optim::SparseRows`).
pub struct LookedUp {
    /// The table.
    pub table: Var,
    /// Row `i` of `rows` is row `ids[i]` of the table.
    pub ids: Vec<u32>,
    /// `[ids.len(), width]`
    pub rows: Var,
}

/// Runs `f` (a forward pass) as a training pass drawing dropout masks from `rng`; returns
/// its result and the embedding rows it looked up. The pass runs on a thread of rayon's pool,
/// where the model's forward pass runs too ([`super::in_thread_pool`]), so that the blocks see
/// it. Passes do not nest.
pub fn training_pass<R: Send>(rng: &mut Rng, f: impl FnOnce() -> R + Send) -> (R, Vec<LookedUp>) {
    /// Ends the pass on the way out, hands the generator back, and when `f` panics leaves
    /// no pass behind on the thread.
    struct Guard<'a>(&'a mut Rng);
    impl Guard<'_> {
        fn end(&mut self) -> Vec<LookedUp> {
            match PASS.with(|p| p.borrow_mut().take()) {
                Some(pass) => {
                    *self.0 = pass.rng;
                    pass.lookups
                }
                None => Vec::new(),
            }
        }
    }
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.end();
        }
    }
    super::in_thread_pool(move || {
        PASS.with(|p| {
            *p.borrow_mut() = Some(Pass {
                rng: rng.clone(),
                lookups: Vec::new(),
            })
        });
        let mut guard = Guard(rng);
        let out = f();
        let lookups = guard.end();
        (out, lookups)
    })
}

/// Whether a training pass is running on this thread.
pub fn in_training_pass() -> bool {
    PASS.with(|p| p.borrow().is_some())
}

/// Records the rows a trainable table looked up (see [`LookedUp`]); `None` outside a pass.
pub(crate) fn record_lookup(table: &Tensor, ids: &Tensor) -> Result<Option<Tensor>> {
    if !table.is_variable() || !in_training_pass() {
        return Ok(None);
    }
    let rows = Var::from_tensor(&table.detach().index_select(ids, 0)?)?;
    let looked_up = LookedUp {
        table: Var::from_tensor(table)?,
        ids: ids.to_vec1::<u32>()?,
        rows: rows.clone(),
    };
    PASS.with(|p| {
        if let Some(pass) = p.borrow_mut().as_mut() {
            pass.lookups.push(looked_up);
        }
    });
    Ok(Some(rows.as_tensor().clone()))
}

/// Dropout with probability `p`: in a training pass each value is zeroed with probability
/// `p` and the others scaled by `1 / (1 - p)` (PyTorch's inverted dropout); otherwise the
/// identity.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    p: f64,
}

impl Dropout {
    /// Dropout with probability `p` (a config's `hidden_dropout_prob`, ...).
    pub fn new(p: f64) -> Self {
        Dropout { p }
    }

    /// `x` with dropout applied in a training pass; `x` itself otherwise.
    pub fn forward(&self, x: Tensor) -> Result<Tensor> {
        if self.p <= 0.0 {
            return Ok(x);
        }
        let keep = 1.0 - self.p;
        let mask = PASS.with(|p| {
            p.borrow_mut().as_mut().map(|pass| {
                (0..x.elem_count())
                    .map(|_| {
                        if pass.rng.uniform() < keep {
                            (1.0 / keep) as f32
                        } else {
                            0.0
                        }
                    })
                    .collect::<Vec<f32>>()
            })
        });
        match mask {
            Some(mask) => {
                let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
                Ok((x * mask)?)
            }
            None => Ok(x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn dropout_is_the_identity_outside_a_pass_and_seeded_inside() {
        let x = Tensor::ones(1000, candle_core::DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.25);
        let same = d.forward(x.clone()).unwrap();
        assert_eq!(same.to_vec1::<f32>().unwrap(), x.to_vec1::<f32>().unwrap());
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            training_pass(&mut rng, || d.forward(x.clone()).unwrap())
                .0
                .to_vec1::<f32>()
                .unwrap()
        };
        let (a, b) = (draw(1), draw(1));
        assert_eq!(a, b);
        let zeros = a.iter().filter(|&&v| v == 0.0).count();
        assert!((150..350).contains(&zeros), "{zeros} of 1000 dropped");
        assert!(a.iter().all(|&v| v == 0.0 || (v - 1.0 / 0.75).abs() < 1e-6));
        assert!(!in_training_pass());
    }

    #[test]
    fn the_generator_advances_across_passes() {
        let x = Tensor::ones(64, candle_core::DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.5);
        let mut rng = Rng::new(3);
        let first = training_pass(&mut rng, || d.forward(x.clone()).unwrap()).0;
        let second = training_pass(&mut rng, || d.forward(x.clone()).unwrap()).0;
        assert_ne!(
            first.to_vec1::<f32>().unwrap(),
            second.to_vec1::<f32>().unwrap()
        );
    }
}

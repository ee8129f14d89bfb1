//! What a forward pass does differently when it trains, as transformers' `model.train()`:
//! dropout draws its masks, and a trainable embedding table hands the optimizer the rows a
//! batch looked up instead of a gradient for the whole table.
//!
//! A training pass is a scope ([`training_pass`]) on the thread that runs the forward pass,
//! not an argument threaded through every block: the model files read like their
//! transformers counterparts (`self.dropout(x)` where transformers has it), and outside a
//! pass (inference) every [`Dropout`] is the identity and costs one thread-local read.
//!
//! The scopes form a stack per thread. A rayon worker waiting inside a pass (in a parallel
//! kernel) may run another job meanwhile: a job that entered the pool from outside runs in a
//! scope of its own ([`outside_any_pass`], which [`super::in_thread_pool`] opens), so another
//! caller's forward pass neither draws this pass's masks nor sees dropout on, and another
//! training pass keeps its own generator.

use crate::error::Result;
use crate::rng::Rng;
use candle_core::{Tensor, Var};
use std::cell::RefCell;

thread_local! {
    /// The innermost scope is last: `Some` a training pass, `None` a job outside any pass.
    static PASSES: RefCell<Vec<Option<Pass>>> = const { RefCell::new(Vec::new()) };
}

/// `f` on the innermost training pass of this thread, if one is running.
fn with_pass<R>(f: impl FnOnce(&mut Pass) -> R) -> Option<R> {
    PASSES.with(|p| p.borrow_mut().last_mut().and_then(Option::as_mut).map(f))
}

/// Runs `f` in a scope outside any training pass (a job that entered rayon's pool from
/// another thread), whatever this thread was doing when it took the job.
pub(crate) fn outside_any_pass<R>(f: impl FnOnce() -> R) -> R {
    struct Pop;
    impl Drop for Pop {
        fn drop(&mut self) {
            PASSES.with(|p| p.borrow_mut().pop());
        }
    }
    PASSES.with(|p| p.borrow_mut().push(None));
    let _pop = Pop;
    f()
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
    /// Ends the pass on the way out (when `f` panics too), handing the generator back.
    struct Guard<'a>(&'a mut Rng, bool);
    impl Guard<'_> {
        fn end(&mut self) -> Vec<LookedUp> {
            if std::mem::take(&mut self.1) {
                if let Some(Some(pass)) = PASSES.with(|p| p.borrow_mut().pop()) {
                    *self.0 = pass.rng;
                    return pass.lookups;
                }
            }
            Vec::new()
        }
    }
    impl Drop for Guard<'_> {
        fn drop(&mut self) {
            self.end();
        }
    }
    super::in_thread_pool(move || {
        PASSES.with(|p| {
            p.borrow_mut().push(Some(Pass {
                rng: rng.clone(),
                lookups: Vec::new(),
            }))
        });
        let mut guard = Guard(rng, true);
        let out = f();
        let lookups = guard.end();
        (out, lookups)
    })
}

/// Whether a training pass is running on this thread (in its innermost scope).
pub fn in_training_pass() -> bool {
    with_pass(|_| ()).is_some()
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
    with_pass(|pass| pass.lookups.push(looked_up));
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
        let mask = with_pass(|pass| {
            (0..x.elem_count())
                .map(|_| {
                    if pass.rng.uniform() < keep {
                        (1.0 / keep) as f32
                    } else {
                        0.0
                    }
                })
                .collect::<Vec<f32>>()
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
    fn a_job_from_outside_the_pool_runs_outside_the_pass() {
        let x = Tensor::ones(256, candle_core::DType::F32, &Device::Cpu).unwrap();
        let d = Dropout::new(0.5);
        let mut rng = Rng::new(9);
        let (inner, _) = training_pass(&mut rng, || {
            // As a job another thread put in the pool would run here, while this pass waits.
            outside_any_pass(|| (in_training_pass(), d.forward(x.clone()).unwrap()))
        });
        assert!(!inner.0);
        assert_eq!(
            inner.1.to_vec1::<f32>().unwrap(),
            x.to_vec1::<f32>().unwrap()
        );
        // A pass nested in it keeps its own generator and leaves the outer one intact.
        let (outer, _) = training_pass(&mut Rng::new(2), || {
            let nested = outside_any_pass(|| {
                let mut own = Rng::new(5);
                training_pass(&mut own, || d.forward(x.clone()).unwrap()).0
            });
            (in_training_pass(), nested)
        });
        assert!(outer.0, "the outer pass survives a nested one");
        let alone = training_pass(&mut Rng::new(5), || d.forward(x.clone()).unwrap()).0;
        assert_eq!(
            outer.1.to_vec1::<f32>().unwrap(),
            alone.to_vec1::<f32>().unwrap()
        );
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

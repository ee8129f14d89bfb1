//! AdamW (Loshchilov & Hutter, <https://arxiv.org/abs/1711.05101>) with PyTorch's update rule,
//! computed in place in one pass over each parameter.
//!
//! Why not `candle_nn::AdamW`: it builds about a dozen new tensors per parameter and step
//! (the moments, their bias-corrected copies, the square root, the decayed weight...). For
//! MiniLM's 47 MB word-embedding table that is over half a gigabyte of fresh memory per step,
//! which the allocator takes from the kernel page by page: `perf` on full fine-tuning showed
//! 24% of the time clearing pages. Here the moments live in buffers allocated once and the
//! weight is updated where it lies.
//!
//! The embedding table also gets a sparse gradient ([`SparseRows`]): a batch touches a few
//! hundred of its 30k rows, and candle's backward pass of `index_select` would materialise
//! the whole table's gradient, zeros included. The update itself still visits every row,
//! because AdamW's moments decay everywhere: the result is the dense update, bit for bit.

use crate::error::{Error, Result};
use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Tensor, Var};
use rayon::prelude::*;
use std::sync::Mutex;

/// AdamW's settings, with PyTorch's names and defaults apart from the learning rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWSettings {
    pub learning_rate: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
}

/// One trained parameter and its moments.
struct Param {
    name: String,
    var: Var,
    weight_decay: f64,
    /// First and second moments; a mutex because candle hands in-place ops `&self`.
    moments: Mutex<Moments>,
}

struct Moments {
    m: Vec<f32>,
    v: Vec<f32>,
}

/// The gradient of an embedding table as the rows a batch looked up: row `ids[i]` of the
/// table receives `grads` row `i` (repeated ids add up).
pub struct SparseRows<'a> {
    pub table: &'a Var,
    pub ids: &'a [u32],
    /// `[ids.len(), width]`
    pub grads: &'a Tensor,
}

/// AdamW over named variables, each with its own weight decay.
pub struct AdamW {
    params: Vec<Param>,
    settings: AdamWSettings,
    steps: i32,
}

impl AdamW {
    /// `params`: (name, variable, weight decay); the names appear in errors.
    pub fn new(params: Vec<(String, Var, f64)>, settings: AdamWSettings) -> Result<Self> {
        let params = params
            .into_iter()
            .map(|(name, var, weight_decay)| {
                let n = var.elem_count();
                if var.dtype() != candle_core::DType::F32 || !var.as_tensor().is_contiguous() {
                    return Err(Error::InvalidOption {
                        option: "optimizer".into(),
                        reason: format!("{name} is not a contiguous f32 tensor"),
                    });
                }
                Ok(Param {
                    name,
                    var,
                    weight_decay,
                    moments: Mutex::new(Moments {
                        m: vec![0.0; n],
                        v: vec![0.0; n],
                    }),
                })
            })
            .collect::<Result<_>>()?;
        Ok(AdamW {
            params,
            settings,
            steps: 0,
        })
    }

    pub fn set_learning_rate(&mut self, learning_rate: f64) {
        self.settings.learning_rate = learning_rate;
    }

    /// One update of every parameter: from `grads`, or from `sparse` for the tables it names.
    /// A parameter that received no gradient at all is left alone, as PyTorch skips one whose
    /// `.grad` is `None` (the pooler of a token classifier); a table's rows outside `sparse`
    /// are updated with a zero gradient, as PyTorch's dense embedding gradient would.
    pub fn step(&mut self, grads: &GradStore, sparse: &[SparseRows]) -> Result<()> {
        self.steps += 1;
        let s = self.settings;
        for p in &self.params {
            let update = Update {
                decay: (1.0 - s.learning_rate * p.weight_decay) as f32,
                beta1: s.beta1 as f32,
                beta2: s.beta2 as f32,
                step_size: (s.learning_rate / (1.0 - s.beta1.powi(self.steps))) as f32,
                inv_sqrt_bias2: (1.0 / (1.0 - s.beta2.powi(self.steps)).sqrt()) as f32,
                eps: s.eps as f32,
                moments: &p.moments,
                name: &p.name,
            };
            let theta = p.var.as_tensor();
            if let Some(rows) = sparse
                .iter()
                .find(|r| r.table.as_tensor().id() == theta.id())
            {
                let width = theta.dim(candle_core::D::Minus1)?;
                let grads = rows.grads.contiguous()?.to_vec2::<f32>()?;
                if grads.len() != rows.ids.len() {
                    return Err(Error::InvalidOption {
                        option: "optimizer".into(),
                        reason: format!(
                            "{}: {} gradient rows for {} ids",
                            p.name,
                            grads.len(),
                            rows.ids.len()
                        ),
                    });
                }
                theta.inplace_op1(&SparseUpdate {
                    update,
                    width,
                    summed: sum_rows(rows.ids, &grads, width),
                })?;
            } else if let Some(grad) = grads.get(theta) {
                theta.inplace_op2(&grad.contiguous()?, &update)?;
            }
        }
        Ok(())
    }
}

/// Gradient rows added up per table row, sorted by row.
fn sum_rows(ids: &[u32], grads: &[Vec<f32>], width: usize) -> Vec<(usize, Vec<f32>)> {
    let mut summed: std::collections::BTreeMap<usize, Vec<f32>> = Default::default();
    for (&id, g) in ids.iter().zip(grads) {
        let row = summed
            .entry(id as usize)
            .or_insert_with(|| vec![0.0; width]);
        row.iter_mut().zip(g).for_each(|(r, g)| *r += g);
    }
    summed.into_iter().collect()
}

/// The per-step constants of one parameter's update.
struct Update<'a> {
    decay: f32,
    beta1: f32,
    beta2: f32,
    /// `lr / (1 - beta1^t)`
    step_size: f32,
    /// `1 / sqrt(1 - beta2^t)`
    inv_sqrt_bias2: f32,
    eps: f32,
    moments: &'a Mutex<Moments>,
    name: &'a str,
}

const CHUNK: usize = 1 << 14;

impl Update<'_> {
    /// PyTorch's `_single_tensor_adamw`: decay the weight, update the moments, step along
    /// `m̂ / (√v̂ + eps)`. `grad` `None` is a zero gradient.
    fn apply(&self, theta: &mut [f32], m: &mut [f32], v: &mut [f32], grad: Option<&[f32]>) {
        // Zipped slices, no indexing: the loop vectorizes (square root and division
        // included) only without bounds checks.
        let step = |t: &mut f32, m: &mut f32, v: &mut f32, g: f32| {
            *m = self.beta1 * *m + (1.0 - self.beta1) * g;
            *v = self.beta2 * *v + (1.0 - self.beta2) * g * g;
            let denom = v.sqrt() * self.inv_sqrt_bias2 + self.eps;
            *t = *t * self.decay - self.step_size * *m / denom;
        };
        let moments = theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut());
        match grad {
            Some(grad) => moments
                .zip(grad)
                .for_each(|(((t, m), v), &g)| step(t, m, v, g)),
            None => moments.for_each(|((t, m), v)| step(t, m, v, 0.0)),
        }
    }

    fn moments(&self) -> candle_core::Result<std::sync::MutexGuard<'_, Moments>> {
        self.moments.lock().map_err(|_| {
            candle_core::Error::Msg(format!("{}: optimizer state poisoned", self.name))
        })
    }
}

fn f32_slice<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
) -> candle_core::Result<&'a mut [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(data), Some((start, end))) => Ok(&mut data[start..end]),
        _ => candle_core::bail!("adamw: contiguous f32 parameters only"),
    }
}

impl InplaceOp2 for Update<'_> {
    fn name(&self) -> &'static str {
        "girder-adamw"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let theta = f32_slice(s1, l1)?;
        let grad = match (s2, l2.contiguous_offsets()) {
            (CpuStorage::F32(g), Some((start, end))) if end - start == theta.len() => {
                &g[start..end]
            }
            _ => candle_core::bail!(
                "adamw: {}: the gradient does not match the weight",
                self.name
            ),
        };
        let mut moments = self.moments()?;
        let Moments { m, v } = &mut *moments;
        theta
            .par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(grad.par_chunks(CHUNK))
            .for_each(|(((t, m), v), g)| self.apply(t, m, v, Some(g)));
        Ok(())
    }
}

/// The update of a table whose gradient is zero outside `summed`'s rows.
struct SparseUpdate<'a> {
    update: Update<'a>,
    width: usize,
    summed: Vec<(usize, Vec<f32>)>,
}

impl InplaceOp1 for SparseUpdate<'_> {
    fn name(&self) -> &'static str {
        "girder-adamw-sparse"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> candle_core::Result<()> {
        let theta = f32_slice(storage, layout)?;
        let mut moments = self.update.moments()?;
        let Moments { m, v } = &mut *moments;
        let rows_per_task = (CHUNK / self.width).max(1);
        let task = rows_per_task * self.width;
        theta
            .par_chunks_mut(task)
            .zip(m.par_chunks_mut(task))
            .zip(v.par_chunks_mut(task))
            .enumerate()
            .for_each(|(index, ((t, m), v))| {
                let first_row = index * rows_per_task;
                let rows = t.len() / self.width;
                // The summed rows inside this task, in order.
                let start = self.summed.partition_point(|(r, _)| *r < first_row);
                let mut next = self.summed[start..].iter().peekable();
                for r in 0..rows {
                    let span = r * self.width..(r + 1) * self.width;
                    let grad = match next.peek() {
                        Some((row, g)) if *row == first_row + r => {
                            next.next();
                            Some(g.as_slice())
                        }
                        _ => None,
                    };
                    self.update.apply(
                        &mut t[span.clone()],
                        &mut m[span.clone()],
                        &mut v[span],
                        grad,
                    );
                }
            });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    fn settings() -> AdamWSettings {
        AdamWSettings {
            learning_rate: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }

    fn loss(w: &Tensor, table_rows: &Tensor) -> Tensor {
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0], [1.5, 0.25, -0.75]], &Device::Cpu).unwrap();
        (x.matmul(&w.t().unwrap())
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            + table_rows
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .affine(0.5, 0.0)
                .unwrap())
        .unwrap()
    }

    /// Ours (table gradient sparse, in place) against candle_nn's AdamW (dense, fresh
    /// tensors) over five steps with weight decay.
    #[test]
    fn matches_candle_nn_adamw_dense_and_sparse() {
        let dev = Device::Cpu;
        let w0 = Tensor::new(&[[0.1f32, 0.2, -0.3], [0.4, -0.5, 0.6]], &dev).unwrap();
        let table0 = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((4, 3))
            .unwrap();
        let ids = [2u32, 0, 2];
        let ids_t = Tensor::new(&ids, &dev).unwrap();

        let (w_ref, t_ref) = (
            Var::from_tensor(&w0).unwrap(),
            Var::from_tensor(&table0).unwrap(),
        );
        let mut reference = candle_nn::AdamW::new(
            vec![w_ref.clone(), t_ref.clone()],
            candle_nn::ParamsAdamW {
                lr: 1e-2,
                weight_decay: 0.1,
                ..Default::default()
            },
        )
        .unwrap();
        let (w, table) = (
            Var::from_tensor(&w0).unwrap(),
            Var::from_tensor(&table0).unwrap(),
        );
        let mut ours = AdamW::new(
            vec![
                ("w".into(), w.clone(), 0.1),
                ("table".into(), table.clone(), 0.1),
            ],
            settings(),
        )
        .unwrap();
        for _ in 0..5 {
            let rows = t_ref.as_tensor().index_select(&ids_t, 0).unwrap();
            reference
                .step(&loss(w_ref.as_tensor(), &rows).backward().unwrap())
                .unwrap();

            let rows =
                Var::from_tensor(&table.as_tensor().index_select(&ids_t, 0).unwrap()).unwrap();
            let grads = loss(w.as_tensor(), rows.as_tensor()).backward().unwrap();
            let row_grads = grads.get(rows.as_tensor()).unwrap().clone();
            let sparse = [SparseRows {
                table: &table,
                ids: &ids,
                grads: &row_grads,
            }];
            ours.step(&grads, &sparse).unwrap();
        }
        for (a, b) in [(&w, &w_ref), (&table, &t_ref)] {
            let diff = crate::test_support::max_diff(a.as_tensor(), b.as_tensor());
            assert!(diff < 1e-6, "parameters differ by {diff}");
        }
        // Row 1 and 3 never had a gradient: only the weight decay moved them.
        let row1 = table.as_tensor().get(1).unwrap().to_vec1::<f32>().unwrap();
        let decayed = (1.0f32 - 1e-3).powi(5) * 3.0;
        assert!((row1[0] - decayed).abs() < 1e-5, "{row1:?}");
    }
}

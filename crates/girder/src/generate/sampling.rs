//! Choosing the next token from a row of logits: greedy, or sampling after the logits
//! processors of transformers, in its order (`generation/utils.py`, `_get_logits_processor`):
//! repetition penalty, then temperature, top-k, top-p, min-p (`generation/logits_process.py`).
//!
//! Sampling is reproducible: every sequence draws from its own generator seeded with
//! [`Sampling::seed`], so a prompt's continuation does not depend on the other prompts of
//! its batch. The generator is xoshiro256** seeded through SplitMix64, written here so the
//! stream of draws cannot change under a dependency upgrade.

use crate::error::{Error, Result};

/// How the next token is chosen. `Default` is greedy decoding (transformers'
/// `do_sample=False`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Divides the logits; `0.0` means greedy (argmax). Must not be negative.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens (ties at the boundary kept); `0` turns it off.
    pub top_k: usize,
    /// Keep the smallest set of most likely tokens whose probability reaches `top_p`;
    /// `1.0` turns it off. In `(0, 1]`.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; `0.0` turns it off.
    /// In `[0, 1]`.
    pub min_p: f32,
    /// Divides positive (multiplies negative) logits of tokens already in the prompt or the
    /// continuation (CTRL, Keskar et al. 2019); `1.0` turns it off. Applies to greedy too.
    pub repetition_penalty: f32,
    /// Seed of each sequence's random generator.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
        }
    }
}

/// Temperatures below this are greedy, as vLLM treats them (its `_SAMPLING_EPS`).
pub const MIN_SAMPLING_TEMPERATURE: f32 = 1e-5;

impl Sampling {
    /// Greedy unless a temperature of at least [`MIN_SAMPLING_TEMPERATURE`] is set: logits
    /// divided by a smaller one overflow f32 and the distribution is NaN.
    pub fn is_greedy(&self) -> bool {
        self.temperature < MIN_SAMPLING_TEMPERATURE
    }

    /// Rejects values transformers rejects (negative temperature, top_p outside (0, 1], ...).
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &str, reason: String| {
            Err(Error::InvalidOption {
                option: option.into(),
                reason,
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                format!(
                    "{} must be a finite number >= 0 (0 means greedy)",
                    self.temperature
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", format!("{} must be in [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("{} must be a positive number", self.repetition_penalty),
            );
        }
        Ok(())
    }
}

/// Picks tokens for one sequence.
#[derive(Debug, Clone)]
pub struct Sampler {
    cfg: Sampling,
    rng: Xoshiro256,
}

impl Sampler {
    /// A sampler with its own generator seeded from `cfg.seed`.
    pub fn new(cfg: Sampling) -> Self {
        Sampler {
            cfg,
            rng: Xoshiro256::seed(cfg.seed),
        }
    }

    /// Applies transformers' logits processors in its order, in place: the repetition
    /// penalty (greedy too), then, when sampling, temperature, top-k, top-p and min-p; tokens
    /// they remove get `-inf`. What is left is the distribution [`next`](Self::next) draws
    /// from.
    pub fn process(&self, logits: &mut [f32], seen: &[u32]) {
        let penalty = self.cfg.repetition_penalty;
        if penalty != 1.0 {
            apply_repetition_penalty(logits, seen, penalty);
        }
        if self.cfg.is_greedy() {
            return;
        }
        let t = self.cfg.temperature;
        logits.iter_mut().for_each(|x| *x /= t);
        let vocab = logits.len();
        if self.cfg.top_k > 0 && self.cfg.top_k < vocab {
            let mut sorted: Vec<f32> = logits.to_vec();
            sorted.sort_unstable_by(|a, b| b.total_cmp(a));
            let kth = sorted[self.cfg.top_k - 1];
            logits
                .iter_mut()
                .filter(|x| **x < kth)
                .for_each(|x| *x = f32::NEG_INFINITY);
        }
        if self.cfg.top_p < 1.0 {
            let probs = softmax(logits);
            let mut order: Vec<usize> = (0..vocab).collect();
            order.sort_by(|&a, &b| logits[a].total_cmp(&logits[b])); // ascending
            let mut cumulative = 0f64;
            let threshold = 1.0 - self.cfg.top_p as f64;
            for (rank, &i) in order.iter().enumerate() {
                cumulative += probs[i];
                // Remove while the mass below stays within 1 - top_p; keep the best one.
                if cumulative <= threshold && rank + 1 < vocab {
                    logits[i] = f32::NEG_INFINITY;
                }
            }
        }
        if self.cfg.min_p > 0.0 {
            let probs = softmax(logits);
            let top = probs.iter().cloned().fold(0f64, f64::max);
            let floor = self.cfg.min_p as f64 * top;
            let best = argmax(logits) as usize;
            for (i, p) in probs.iter().enumerate() {
                if *p < floor && i != best {
                    logits[i] = f32::NEG_INFINITY;
                }
            }
        }
    }

    /// [`next`](Self::next) on logits it may not modify: greedy decoding without a
    /// repetition penalty reads them where they lie, other settings work on a copy in
    /// `scratch` (a batch step's logits are read in place, not copied out per step).
    pub fn next_from(&mut self, logits: &[f32], seen: &[u32], scratch: &mut Vec<f32>) -> u32 {
        if self.cfg.is_greedy() && self.cfg.repetition_penalty == 1.0 {
            return argmax(logits);
        }
        scratch.clear();
        scratch.extend_from_slice(logits);
        self.next(scratch, seen)
    }

    /// The next token given the logits of the last position (modified in place by
    /// [`process`](Self::process)) and every token of the sequence so far (prompt and
    /// continuation; for the repetition penalty).
    pub fn next(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        self.process(logits, seen);
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        let probs = softmax(logits);
        let u = self.rng.next_f64();
        let mut cumulative = 0f64;
        let mut last = 0;
        for (i, p) in probs.iter().enumerate() {
            if *p > 0.0 {
                cumulative += p;
                last = i;
                if u < cumulative {
                    return i as u32;
                }
            }
        }
        last as u32
    }
}

/// CTRL's repetition penalty (Keskar et al. 2019) as transformers'
/// `RepetitionPenaltyLogitsProcessor`: each distinct id of `seen` once, its logit divided by
/// `penalty` when positive and multiplied when negative.
pub(crate) fn apply_repetition_penalty(logits: &mut [f32], seen: &[u32], penalty: f32) {
    // Each distinct id once, as transformers' gather/scatter over input_ids.
    let mut ids: Vec<u32> = seen.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        if let Some(score) = logits.get_mut(id as usize) {
            *score = if *score < 0.0 {
                *score * penalty
            } else {
                *score / penalty
            };
        }
    }
}

/// Softmax in f64 (`-inf` → 0).
fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let exp: Vec<f64> = logits.iter().map(|&x| (x as f64 - max).exp()).collect();
    let sum: f64 = exp.iter().sum();
    exp.into_iter().map(|e| e / sum).collect()
}

/// The index of the largest value, the first one on ties (as `torch.argmax`); NaN never
/// wins, except a NaN first value, which is kept (index 0).
///
/// Two passes: the largest value in 16 lanes (vector code), then its first position. A
/// compare and branch per value scanned a 16-sequence step's 49152-wide rows one value at a
/// time on the step's serial path (perf: 2% of a chat server's samples).
pub fn argmax(row: &[f32]) -> u32 {
    const LANES: usize = 16;
    match row.first() {
        None => return 0,
        Some(first) if first.is_nan() => return 0,
        Some(_) => {}
    }
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(v); // the other operand when one is NaN
        }
    }
    let largest = chunks
        .remainder()
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    row.iter().position(|&v| v == largest).unwrap_or(0) as u32
}

/// xoshiro256** (Blackman & Vigna), seeded with SplitMix64.
#[derive(Debug, Clone)]
struct Xoshiro256 {
    s: [u64; 4],
}

impl Xoshiro256 {
    fn seed(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Xoshiro256 {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in `[0, 1)` with 53 bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> Sampling {
        Sampling {
            temperature: 1.0,
            ..Sampling::default()
        }
    }

    #[test]
    fn argmax_takes_the_first_maximum() {
        assert_eq!(argmax(&[0.0, 2.0, 2.0, 1.0]), 1);
        // The rule of a compare-and-branch scan, on rows longer than the lanes.
        let scan = |row: &[f32]| {
            let mut best = 0;
            for (i, &v) in row.iter().enumerate() {
                if v > row[best] {
                    best = i;
                }
            }
            best as u32
        };
        let mut row: Vec<f32> = (0..100).map(|i| ((i * 37) % 23) as f32).collect();
        assert_eq!(argmax(&row), scan(&row));
        row[70] = f32::NAN;
        row[90] = 30.0;
        row[95] = 30.0;
        assert_eq!((argmax(&row), scan(&row)), (90, 90));
        row[0] = f32::NAN;
        assert_eq!((argmax(&row), scan(&row)), (0, 0));
        assert_eq!(argmax(&[f32::NEG_INFINITY, -0.0, 0.0]), 1);
        assert_eq!(argmax(&[]), 0);
    }

    #[test]
    fn same_seed_same_draws() {
        let logits = vec![0.1f32, 0.5, 0.2, 0.9, 0.3];
        let draw = |seed| {
            let mut s = Sampler::new(Sampling { seed, ..sampling() });
            (0..50)
                .map(|_| s.next(&mut logits.clone(), &[]))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    /// Reading the logits in place draws what drawing from a copy draws: greedy, with a
    /// repetition penalty, and sampled.
    #[test]
    fn next_from_draws_as_next() {
        let logits = vec![0.1f32, 0.5, 0.2, 0.9, 0.3, 0.9];
        for cfg in [
            Sampling::default(),
            Sampling {
                repetition_penalty: 1.5,
                ..Sampling::default()
            },
            Sampling {
                seed: 3,
                ..sampling()
            },
        ] {
            let (mut a, mut b) = (Sampler::new(cfg), Sampler::new(cfg));
            let mut scratch = Vec::new();
            for _ in 0..20 {
                let seen = [3, 5];
                assert_eq!(
                    a.next_from(&logits, &seen, &mut scratch),
                    b.next(&mut logits.clone(), &seen)
                );
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut s = Sampler::new(Sampling {
            top_k: 1,
            ..sampling()
        });
        for _ in 0..20 {
            assert_eq!(s.next(&mut [0.1, 3.0, 2.9, -1.0], &[]), 1);
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // probabilities ≈ [0.64, 0.24, 0.09, 0.03]: top_p 0.7 keeps the first two.
        let logits = [3.0f32, 2.0, 1.0, 0.0];
        let mut s = Sampler::new(Sampling {
            top_p: 0.7,
            ..sampling()
        });
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            seen.insert(s.next(&mut logits.to_vec(), &[]));
        }
        assert_eq!(seen.into_iter().collect::<Vec<_>>(), [0, 1]);
    }

    #[test]
    fn min_p_drops_unlikely_tokens() {
        let logits = [3.0f32, 2.9, 0.0, -5.0];
        let mut s = Sampler::new(Sampling {
            min_p: 0.5,
            ..sampling()
        });
        for _ in 0..200 {
            assert!(s.next(&mut logits.to_vec(), &[]) < 2);
        }
    }

    #[test]
    fn repetition_penalty_follows_ctrl() {
        let mut s = Sampler::new(Sampling {
            repetition_penalty: 2.0,
            ..Sampling::default()
        });
        let mut logits = vec![4.0f32, 3.0, -1.0];
        // Token 0 was seen: 4 → 2, so greedy picks token 1.
        assert_eq!(s.next(&mut logits, &[0, 2]), 1);
        assert_eq!(logits, [2.0, 3.0, -2.0]);
    }

    #[test]
    fn bad_values_are_refused() {
        let bad = |s: Sampling| s.validate().unwrap_err().to_string();
        assert!(bad(Sampling {
            temperature: -0.5,
            ..Sampling::default()
        })
        .contains("temperature"));
        assert!(bad(Sampling {
            top_p: 0.0,
            ..Sampling::default()
        })
        .contains("top_p"));
        assert!(bad(Sampling {
            min_p: 1.5,
            ..Sampling::default()
        })
        .contains("min_p"));
    }
}

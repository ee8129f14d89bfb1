//! Beam search for one input, step by step, as transformers' `GenerationMixin._beam_search`
//! (`generation/utils.py`, v5) computes it, so that girder returns the same hypothesis.
//!
//! Each step takes the processed log-probabilities of every running beam's next token, adds
//! the beam's score, and keeps the `2 · num_beams` best continuations over all beams (more
//! when there are several eos ids). Of those, a continuation that ends (an eos id, or the
//! length limit) competes for the `num_beams` slots of finished hypotheses, scored by its
//! log-probability over `length ** length_penalty`; the best `num_beams` that go on become the
//! running beams. Scores are f32 and the constants (`-1e9` for a beam that may not be
//! chosen) are transformers', so ties and near-ties resolve the same way.
//!
//! The caller owns the model and the caches: [`BeamSearch::step`] says which running beam
//! each new running beam continues, and the caller gives it that beam's cache.

use super::config::EarlyStopping;

/// transformers' score of a beam that must not be chosen.
const EXCLUDED: f32 = -1.0e9;

/// A running beam: its tokens (decoder prompt included) and its summed log-probability.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    pub tokens: Vec<u32>,
    pub score: f32,
}

/// One of the `num_beams` slots of finished hypotheses (empty ones score [`EXCLUDED`]).
#[derive(Debug, Clone)]
struct Slot {
    tokens: Vec<u32>,
    score: f32,
    finished: bool,
}

/// What bounds a beam search.
#[derive(Debug, Clone, PartialEq)]
pub struct BeamSettings {
    pub num_beams: usize,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// Tokens of a hypothesis at most, decoder prompt included.
    pub max_length: usize,
    pub eos_token_ids: Vec<u32>,
}

/// The beams of one input.
#[derive(Debug, Clone)]
pub struct BeamSearch {
    settings: BeamSettings,
    prompt_len: usize,
    /// Continuations kept per step (transformers' `beams_to_keep`).
    beams_to_keep: usize,
    running: Vec<Hypothesis>,
    slots: Vec<Slot>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`: a running beam may still beat a
    /// finished one.
    improvable: bool,
    done: bool,
}

/// A continuation of a running beam, as ranked in a step.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    beam: usize,
    token: u32,
}

impl BeamSearch {
    /// `num_beams` beams starting from `prompt` (the decoder prompt): the first scores 0, the
    /// others [`EXCLUDED`], so the first step expands the first alone.
    pub fn new(prompt: Vec<u32>, settings: BeamSettings) -> Self {
        let n = settings.num_beams.max(1);
        let running = (0..n)
            .map(|i| Hypothesis {
                tokens: prompt.clone(),
                score: if i == 0 { 0.0 } else { EXCLUDED },
            })
            .collect();
        let slots = (0..n)
            .map(|_| Slot {
                tokens: Vec::new(),
                score: EXCLUDED,
                finished: false,
            })
            .collect();
        BeamSearch {
            beams_to_keep: 2.max(1 + settings.eos_token_ids.len()) * n,
            prompt_len: prompt.len(),
            settings,
            running,
            slots,
            improvable: true,
            done: false,
        }
    }

    /// The running beams, best first.
    pub fn running(&self) -> &[Hypothesis] {
        &self.running
    }

    /// No further step can change the result.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// One step. `log_probs[b]` is running beam `b`'s processed log-probabilities of the
    /// next token. Returns, for each new running beam, the index of the running beam it
    /// continues (whose cache it takes).
    pub fn step(&mut self, log_probs: &[&[f32]]) -> Vec<usize> {
        let n = self.settings.num_beams.max(1);
        let cur_len = self.running[0].tokens.len();
        let candidates = self.top_candidates(log_probs);
        let hits: Vec<bool> = candidates
            .iter()
            .map(|c| {
                self.settings.eos_token_ids.contains(&c.token)
                    || cur_len + 1 >= self.settings.max_length
            })
            .collect();

        // The best continuations that go on (an ended one only if too few go on).
        let running_scores: Vec<f32> = candidates
            .iter()
            .zip(&hits)
            .map(|(c, &hit)| c.score + if hit { EXCLUDED } else { -0.0 })
            .collect();
        let next = top_indices(&running_scores, n);
        let parents: Vec<usize> = next.iter().map(|&c| candidates[c].beam).collect();
        let continued = |c: usize| {
            let mut tokens = self.running[candidates[c].beam].tokens.clone();
            tokens.push(candidates[c].token);
            tokens
        };
        let running: Vec<Hypothesis> = next
            .iter()
            .map(|&c| Hypothesis {
                tokens: continued(c),
                score: running_scores[c],
            })
            .collect();

        // The ended continuations among the first `num_beams` compete for the slots.
        let length = (cur_len + 1 - self.prompt_len) as f64;
        let denominator = length.powf(self.settings.length_penalty as f64) as f32;
        let full = self.slots.iter().all(|s| s.finished)
            && self.settings.early_stopping == EarlyStopping::Finished;
        let mut merged: Vec<Slot> = std::mem::take(&mut self.slots);
        for (i, c) in candidates.iter().enumerate() {
            let just_finished = hits[i] && i < n;
            let mut score = c.score / denominator;
            if full {
                score += EXCLUDED;
            }
            if !self.improvable {
                score += EXCLUDED;
            }
            if !just_finished {
                score += EXCLUDED;
            }
            merged.push(Slot {
                tokens: if just_finished {
                    continued(i)
                } else {
                    Vec::new()
                },
                score,
                finished: just_finished,
            });
        }
        let scores: Vec<f32> = merged.iter().map(|s| s.score).collect();
        self.slots = top_indices(&scores, n)
            .into_iter()
            .map(|i| merged[i].clone())
            .collect();
        self.running = running;

        // Can a running beam still beat the finished ones?
        let new_len = cur_len + 1;
        let best_length = if self.settings.early_stopping == EarlyStopping::Never
            && self.settings.length_penalty > 0.0
        {
            self.settings.max_length - self.prompt_len
        } else {
            new_len - self.prompt_len
        };
        let best_running = self.running[0].score
            / (best_length as f64).powf(self.settings.length_penalty as f64) as f32;
        let worst = self
            .slots
            .iter()
            .map(|s| s.score)
            .fold(f32::INFINITY, f32::min);
        self.improvable &= self
            .slots
            .iter()
            .any(|s| best_running > if s.finished { worst } else { EXCLUDED });
        let all_finished = self.slots.iter().all(|s| s.finished);
        self.done = !self.improvable
            || (all_finished && self.settings.early_stopping == EarlyStopping::Finished)
            || hits.iter().all(|&h| h);
        parents
    }

    /// The best hypothesis's tokens after the decoder prompt, and its score.
    pub fn best(&self) -> (Vec<u32>, f32) {
        let slot = &self.slots[0];
        if slot.finished {
            (slot.tokens[self.prompt_len..].to_vec(), slot.score)
        } else {
            let beam = &self.running[0];
            (beam.tokens[self.prompt_len..].to_vec(), beam.score)
        }
    }

    /// The `beams_to_keep` best continuations over every running beam, best first (on equal
    /// scores the lower beam, then the lower token).
    fn top_candidates(&self, log_probs: &[&[f32]]) -> Vec<Candidate> {
        let k = self.beams_to_keep;
        let mut all = Vec::with_capacity(k * log_probs.len());
        for (beam, (row, hypothesis)) in log_probs.iter().zip(&self.running).enumerate() {
            let base = hypothesis.score;
            all.extend(
                top_of_row(row, base, k)
                    .into_iter()
                    .map(|(score, token)| Candidate { score, beam, token }),
            );
        }
        all.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then(a.beam.cmp(&b.beam))
                .then(a.token.cmp(&b.token))
        });
        all.truncate(k);
        all
    }
}

/// The `k` best `base + row[v]` (f32 sums, as transformers adds a beam's score to its row)
/// with their tokens, best first, the lower token first on equal scores.
fn top_of_row(row: &[f32], base: f32, k: usize) -> Vec<(f32, u32)> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (token, &lp) in row.iter().enumerate() {
        let score = lp + base;
        if best.len() == k {
            let last = best[k - 1].0;
            // NaN never enters; on a tie the earlier token stays.
            if score.is_nan() || score.total_cmp(&last).is_le() {
                continue;
            }
        }
        let at = best.partition_point(|&(s, _)| s.total_cmp(&score).is_ge());
        best.insert(at, (score, token as u32));
        best.truncate(k);
    }
    best
}

/// The indices of the `k` largest values, largest first, the lower index first on ties.
fn top_indices(values: &[f32], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]).then(a.cmp(&b)));
    order.truncate(k);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(num_beams: usize, max_length: usize) -> BeamSettings {
        BeamSettings {
            num_beams,
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            max_length,
            eos_token_ids: vec![0],
        }
    }

    #[test]
    fn rows_keep_their_best_in_order() {
        assert_eq!(
            top_of_row(&[0.1, 0.5, 0.5, -1.0, 0.3], 1.0, 3),
            [(1.5, 1), (1.5, 2), (1.3, 4)]
        );
        assert_eq!(top_indices(&[1.0, 3.0, 3.0, 2.0], 2), [1, 2]);
    }

    /// Two beams over a vocabulary of 3 (eos = 0), probabilities fixed per step: the search
    /// finds the sequence whose product of probabilities is largest, not the greedy one.
    #[test]
    fn finds_a_better_sequence_than_greedy() {
        let ln = |p: f32| p.ln();
        let mut search = BeamSearch::new(vec![9], settings(2, 4));
        // Step 1: token 1 (0.6) beats token 2 (0.4).
        let first = [f32::NEG_INFINITY, ln(0.6), ln(0.4)];
        let parents = search.step(&[&first, &first]);
        assert_eq!(parents, [0, 0]);
        assert_eq!(search.running()[0].tokens, [9, 1]);
        assert_eq!(search.running()[1].tokens, [9, 2]);
        // Step 2: after 1 every continuation is unlikely (eos 0.3); after 2, eos is 0.9.
        let after_1 = [ln(0.3), ln(0.35), ln(0.35)];
        let after_2 = [ln(0.9), ln(0.05), ln(0.05)];
        search.step(&[&after_1, &after_2]);
        // 0.4 · 0.9 = 0.36 ended beats 0.6 · 0.35 = 0.21 running, even at length 2.
        let (tokens, score) = search.best();
        assert_eq!(tokens, [2, 0]);
        assert!((score - (0.36f32).ln() / 2.0).abs() < 1e-6);
        // The remaining running beams cannot reach it at their length: done.
        let step3 = [ln(0.9), ln(0.05), ln(0.05)];
        search.step(&[&step3, &step3]);
        assert!(search.is_done());
        assert_eq!(search.best().0, [2, 0]);
    }

    #[test]
    fn the_length_limit_ends_every_beam() {
        let mut search = BeamSearch::new(vec![9], settings(2, 2));
        let row = [f32::NEG_INFINITY, -0.1, -2.0];
        search.step(&[&row, &row]);
        assert!(search.is_done());
        assert_eq!(search.best().0, [1]);
    }
}

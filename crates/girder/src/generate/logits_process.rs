//! The logits processors of encoder-decoder generation, in transformers' order
//! (`generation/utils.py`, `_get_logits_processor`; each processor as in
//! `generation/logits_process.py`): repetition penalty, no-repeat n-grams, bad words, minimum
//! length, minimum new tokens, forced BOS, forced EOS, suppressed tokens, tokens suppressed at
//! the start, for Whisper the timestamp rules ([`Timestamps`]), and last, when the config asks,
//! a renormalization (`LogitNormalization`).
//!
//! Greedy decoding and sampling run them on the logits of the last position; beam search on
//! their log-softmax, as transformers does. A token they remove gets `-inf`.

use super::config::GenerationConfig;
use super::sampling::apply_repetition_penalty;

/// Whisper's timestamp rules (transformers' `WhisperTimeStampLogitsProcessor`, after
/// OpenAI's `ApplyTimestampRules`): timestamps come in pairs, never go backwards, the first
/// one is at most `max_initial_timestamp_index`, and when the timestamps together are more
/// likely than any text token, a timestamp is forced.
#[derive(Debug, Clone, PartialEq)]
pub struct Timestamps {
    /// `<|notimestamps|>`, never generated in this mode.
    pub no_timestamps_token_id: u32,
    /// `<|0.00|>`: the first timestamp token; every later id is a timestamp.
    pub timestamp_begin: u32,
    /// Ends a sequence.
    pub eos_token_id: u32,
    /// The first timestamp token may be at most `timestamp_begin + this`.
    pub max_initial_timestamp_index: Option<usize>,
}

/// Every processor a generation runs, from its resolved settings.
#[derive(Debug, Clone)]
pub struct LogitsProcessors {
    repetition_penalty: f32,
    no_repeat_ngram_size: usize,
    /// Single tokens never generated.
    bad_tokens: Vec<u32>,
    /// Longer sequences whose last token is never generated after the rest.
    bad_sequences: Vec<Vec<u32>>,
    min_length: usize,
    /// `(decoder prompt length, new tokens)`.
    min_new_tokens: Option<(usize, usize)>,
    eos_token_ids: Vec<u32>,
    forced_bos_token_id: Option<u32>,
    /// `(max_length, ids)`.
    forced_eos: Option<(usize, Vec<u32>)>,
    suppress_tokens: Vec<u32>,
    /// `(position, ids)`: suppressed when the sequence has this many tokens.
    begin_suppress: Option<(usize, Vec<u32>)>,
    timestamps: Option<(Timestamps, usize)>,
    renormalize: bool,
}

impl LogitsProcessors {
    /// The processors of `config` for sequences whose decoder prompt has `prompt_len` tokens
    /// and which end at `max_length` tokens.
    pub fn new(config: &GenerationConfig, prompt_len: usize, max_length: usize) -> Self {
        let eos = &config.eos_token_ids;
        // As NoBadWordsLogitsProcessor: an eos id is never a bad word.
        let bad_words: Vec<&Vec<u32>> = config
            .bad_words_ids
            .iter()
            .filter(|w| !(w.is_empty() || w.len() == 1 && eos.contains(&w[0])))
            .collect();
        // As _get_logits_processor: the suppression happens at the first generated position,
        // or one later when a BOS token is forced there.
        let begin_index = if prompt_len > 1 || config.forced_bos_token_id.is_none() {
            prompt_len
        } else {
            prompt_len + 1
        };
        LogitsProcessors {
            repetition_penalty: config.repetition_penalty,
            no_repeat_ngram_size: config.no_repeat_ngram_size,
            bad_tokens: bad_words
                .iter()
                .filter(|w| w.len() == 1)
                .map(|w| w[0])
                .collect(),
            bad_sequences: bad_words
                .iter()
                .filter(|w| w.len() > 1)
                .map(|w| w.to_vec())
                .collect(),
            min_length: if eos.is_empty() { 0 } else { config.min_length },
            min_new_tokens: config
                .min_new_tokens
                .filter(|_| !eos.is_empty())
                .map(|n| (prompt_len, n)),
            eos_token_ids: eos.clone(),
            forced_bos_token_id: config.forced_bos_token_id,
            forced_eos: config
                .forced_eos_token_id
                .clone()
                .map(|ids| (max_length, ids)),
            suppress_tokens: config.suppress_tokens.clone(),
            begin_suppress: (!config.begin_suppress_tokens.is_empty())
                .then(|| (begin_index, config.begin_suppress_tokens.clone())),
            timestamps: None,
            renormalize: config.renormalize_logits,
        }
    }

    /// Adds Whisper's timestamp rules; `sample_begin` is the length of the decoder prompt.
    pub fn with_timestamps(mut self, rules: Timestamps, sample_begin: usize) -> Self {
        self.timestamps = Some((rules, sample_begin));
        self
    }

    /// Runs every processor on `scores`, the row of the next token of `sequence` (decoder
    /// prompt and the tokens generated so far), in place.
    pub fn apply(&self, scores: &mut [f32], sequence: &[u32]) {
        let cur_len = sequence.len();
        let remove = |scores: &mut [f32], id: u32| {
            if let Some(s) = scores.get_mut(id as usize) {
                *s = f32::NEG_INFINITY;
            }
        };
        if self.repetition_penalty != 1.0 {
            apply_repetition_penalty(scores, sequence, self.repetition_penalty);
        }
        if self.no_repeat_ngram_size > 0 {
            for id in banned_by_ngrams(sequence, self.no_repeat_ngram_size) {
                remove(scores, id);
            }
        }
        for &id in &self.bad_tokens {
            remove(scores, id);
        }
        for words in &self.bad_sequences {
            let (prefix, last) = words.split_at(words.len() - 1);
            if sequence.ends_with(prefix) {
                remove(scores, last[0]);
            }
        }
        if cur_len < self.min_length {
            for &id in &self.eos_token_ids {
                remove(scores, id);
            }
        }
        if let Some((prompt_len, n)) = self.min_new_tokens {
            if cur_len.saturating_sub(prompt_len) < n {
                for &id in &self.eos_token_ids {
                    remove(scores, id);
                }
            }
        }
        if let Some(bos) = self.forced_bos_token_id {
            if cur_len == 1 {
                force(scores, &[bos]);
            }
        }
        if let Some((max_length, ids)) = &self.forced_eos {
            if cur_len + 1 == *max_length {
                force(scores, ids);
            }
        }
        for &id in &self.suppress_tokens {
            remove(scores, id);
        }
        if let Some((position, ids)) = &self.begin_suppress {
            if cur_len == *position {
                for &id in ids {
                    remove(scores, id);
                }
            }
        }
        if let Some((rules, sample_begin)) = &self.timestamps {
            apply_timestamp_rules(rules, *sample_begin, scores, sequence);
        }
        if self.renormalize {
            let total = log_sum_exp(scores);
            scores.iter_mut().for_each(|s| *s -= total);
        }
    }
}

/// Every score `-inf` but those of `ids`, which become 0 (ForcedBOS/EOSTokenLogitsProcessor).
fn force(scores: &mut [f32], ids: &[u32]) {
    scores.iter_mut().for_each(|s| *s = f32::NEG_INFINITY);
    for &id in ids {
        if let Some(s) = scores.get_mut(id as usize) {
            *s = 0.0;
        }
    }
}

/// The tokens that would complete an n-gram already in `sequence` (NoRepeatNGramLogitsProcessor:
/// the last `n − 1` tokens as a prefix, every earlier n-gram with that prefix bans its last
/// token).
fn banned_by_ngrams(sequence: &[u32], n: usize) -> Vec<u32> {
    let cur_len = sequence.len();
    if cur_len + 1 < n {
        return Vec::new();
    }
    let prefix = &sequence[cur_len + 1 - n..];
    sequence
        .windows(n)
        .filter(|gram| &gram[..n - 1] == prefix)
        .map(|gram| gram[n - 1])
        .collect()
}

/// transformers' `WhisperTimeStampLogitsProcessor.__call__` for one row.
fn apply_timestamp_rules(rules: &Timestamps, sample_begin: usize, scores: &mut [f32], seq: &[u32]) {
    let n = scores.len();
    let begin = (rules.timestamp_begin as usize).min(n);
    if let Some(s) = scores.get_mut(rules.no_timestamps_token_id as usize) {
        *s = f32::NEG_INFINITY;
    }
    let generated = &seq[sample_begin.min(seq.len())..];
    let is_timestamp = |id: u32| id as usize >= begin;
    let last_was_timestamp = generated.last().is_some_and(|&id| is_timestamp(id));
    let penultimate_was_timestamp =
        generated.len() < 2 || is_timestamp(generated[generated.len() - 2]);
    if last_was_timestamp {
        if penultimate_was_timestamp {
            // A pair just closed: the next token is text (or eos), not a timestamp.
            scores[begin..]
                .iter_mut()
                .for_each(|s| *s = f32::NEG_INFINITY);
        } else {
            // A timestamp opened a pair: the next token closes it or it is text, never eos.
            scores[..(rules.eos_token_id as usize).min(n)]
                .iter_mut()
                .for_each(|s| *s = f32::NEG_INFINITY);
        }
    }
    // Timestamps never decrease; after a closed pair they must advance.
    let timestamps: Vec<u32> = generated
        .iter()
        .copied()
        .filter(|&id| is_timestamp(id))
        .collect();
    if let Some(&last) = timestamps.last() {
        let floor = if last_was_timestamp && !penultimate_was_timestamp {
            last as usize
        } else {
            last as usize + 1
        };
        scores[begin..floor.min(n).max(begin)]
            .iter_mut()
            .for_each(|s| *s = f32::NEG_INFINITY);
    }
    // The first generated token is a timestamp, at most max_initial_timestamp_index.
    if seq.len() == sample_begin {
        scores[..begin]
            .iter_mut()
            .for_each(|s| *s = f32::NEG_INFINITY);
        if let Some(max_initial) = rules.max_initial_timestamp_index {
            let last_allowed = begin + max_initial;
            if last_allowed + 1 < n {
                scores[last_allowed + 1..]
                    .iter_mut()
                    .for_each(|s| *s = f32::NEG_INFINITY);
            }
        }
    }
    // If the timestamps together are more likely than the likeliest text token, force one.
    let log_probs = log_softmax(scores);
    let timestamp_mass = log_sum_exp(&log_probs[begin..]);
    let best_text = log_probs[..begin]
        .iter()
        .cloned()
        .fold(f32::NEG_INFINITY, f32::max);
    if timestamp_mass > best_text {
        scores[..begin]
            .iter_mut()
            .for_each(|s| *s = f32::NEG_INFINITY);
    }
}

/// `x − logsumexp(x)` in f32, as `torch.log_softmax` (a row of `-inf` stays NaN-free: every
/// value `-inf`).
pub(crate) fn log_softmax(x: &[f32]) -> Vec<f32> {
    let total = log_sum_exp(x);
    x.iter().map(|v| v - total).collect()
}

/// `log Σ exp(x)` in f32, shifted by the maximum; `-inf` for an empty or all-`-inf` row.
pub(crate) fn log_sum_exp(x: &[f32]) -> f32 {
    let max = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    if max == f32::NEG_INFINITY {
        return f32::NEG_INFINITY;
    }
    let sum: f32 = x.iter().map(|v| (v - max).exp()).sum();
    max + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> GenerationConfig {
        GenerationConfig {
            eos_token_ids: vec![1],
            ..GenerationConfig::default()
        }
    }

    #[test]
    fn ngrams_ban_the_token_that_would_repeat_one() {
        // [0, 5, 6, 5]: the 2-gram (5, 6) exists, so after 5 the token 6 is banned.
        assert_eq!(banned_by_ngrams(&[0, 5, 6, 5], 2), [6]);
        assert_eq!(banned_by_ngrams(&[0, 5, 6, 5, 6], 3), [5]);
        assert!(banned_by_ngrams(&[0, 5], 3).is_empty());
    }

    #[test]
    fn min_length_forced_tokens_and_suppression() {
        let mut c = config();
        c.min_length = 3;
        c.forced_bos_token_id = Some(4);
        c.forced_eos_token_id = Some(vec![1]);
        c.suppress_tokens = vec![7];
        c.begin_suppress_tokens = vec![8];
        let p = LogitsProcessors::new(&c, 1, 5);
        let mut row = vec![0.5f32; 10];
        p.apply(&mut row, &[0]);
        // Position 1: BOS forced (everything else -inf).
        assert_eq!(row[4], 0.0);
        assert!(row
            .iter()
            .enumerate()
            .all(|(i, s)| i == 4 || *s == f32::NEG_INFINITY));
        let mut row = vec![0.5f32; 10];
        p.apply(&mut row, &[0, 4]);
        // Position 2 (< min_length 3): eos removed; 8 suppressed at the start (after BOS).
        assert_eq!(row[1], f32::NEG_INFINITY);
        assert_eq!(row[7], f32::NEG_INFINITY);
        assert_eq!(row[8], f32::NEG_INFINITY);
        assert_eq!(row[2], 0.5);
        let mut row = vec![0.5f32; 10];
        p.apply(&mut row, &[0, 4, 2, 3]);
        // Position 4 = max_length − 1: eos forced.
        assert_eq!(row[1], 0.0);
        assert_eq!(row[2], f32::NEG_INFINITY);
    }

    #[test]
    fn eos_is_never_a_bad_word() {
        let mut c = config();
        c.bad_words_ids = vec![vec![1], vec![9], vec![2, 3]];
        let p = LogitsProcessors::new(&c, 1, 20);
        let mut row = vec![0.0f32; 10];
        p.apply(&mut row, &[0, 2]);
        assert_eq!(row[1], 0.0);
        assert_eq!(row[9], f32::NEG_INFINITY);
        assert_eq!(row[3], f32::NEG_INFINITY);
        let mut row = vec![0.0f32; 10];
        p.apply(&mut row, &[0, 5]);
        assert_eq!(row[3], 0.0);
    }

    #[test]
    fn timestamps_pair_and_advance() {
        let rules = Timestamps {
            no_timestamps_token_id: 9,
            timestamp_begin: 10,
            eos_token_id: 5,
            max_initial_timestamp_index: Some(2),
        };
        let p = LogitsProcessors::new(&config(), 1, 50).with_timestamps(rules, 1);
        // First token: a timestamp of index at most 2.
        let mut row = vec![0.0f32; 20];
        p.apply(&mut row, &[0]);
        assert!(row[..10].iter().all(|s| *s == f32::NEG_INFINITY));
        assert!(row[10..13].iter().all(|s| *s == 0.0));
        assert!(row[13..].iter().all(|s| *s == f32::NEG_INFINITY));
        // After a timestamp (12) and text: later timestamps only (from 13 on); and the
        // timestamps, more likely together than any text token, are forced.
        let mut row = vec![0.0f32; 20];
        p.apply(&mut row, &[0, 12, 3]);
        assert!(row[10..13].iter().all(|s| *s == f32::NEG_INFINITY));
        assert_eq!(row[13], 0.0);
        assert!(row[..10].iter().all(|s| *s == f32::NEG_INFINITY));
        // A closing timestamp right after an opening one: no eos or text below eos.
        let mut row = vec![0.0f32; 20];
        p.apply(&mut row, &[0, 3, 12]);
        assert!(row[..5].iter().all(|s| *s == f32::NEG_INFINITY));
    }
}

//! Continuous batching: a decode batch that sequences join and leave between forward passes.
//!
//! [`TextGenerator::generate_from_ids`] takes a fixed set of prompts and returns when the
//! last one ends. A server cannot wait for that: requests arrive while others decode.
//! [`ContinuousBatch`] keeps the running sequences, each with its own [`KvCache`], sampler,
//! options and stop strings; every [`step`](ContinuousBatch::step) is one ragged forward pass
//! that holds prompt tokens of newly admitted sequences (their prefill) next to one token of
//! each running one. A long prompt is prefilled in chunks over several steps
//! ([`with_prefill_chunk`](ContinuousBatch::with_prefill_chunk), as vLLM's chunked prefill), so
//! the running sequences get a token every step instead of waiting for it whole. A sequence
//! leaves in the step that ends it, and
//! [`cancel`](ContinuousBatch::cancel) removes one at once (a client that hung up). Recent
//! prompts' keys and values are kept, so a prompt that begins as one of them did (a chat
//! template's system prompt) prefills only what follows
//! ([`with_prefix_cache`](ContinuousBatch::with_prefix_cache)).
//!
//! The stopping rules, the sampling and the text are those of the fixed-batch loop in
//! `generate/mod.rs`, so a sequence's continuation does not depend on who shares its steps:
//! greedy output equals [`TextGenerator::generate`]'s for the same prompt.

use super::{sampling, stream, FinishReason, Generation, Options, TextGenerator};
use crate::batch::RaggedBatch;
use crate::error::{Error, Result};
use crate::layers::KvCache;
use crate::models::Logits;

/// Names a sequence of a [`ContinuousBatch`] (unique within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

/// What a step produced for one sequence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Text that may be shown now: whole characters, never part of a stop string.
    Text { id: SequenceId, text: String },
    /// The sequence ended and left the batch; its whole result.
    Finished {
        id: SequenceId,
        generation: Generation,
    },
}

/// The outcome of one forward pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Step {
    /// In order of the batch; a sequence's `Text` events come before its `Finished`.
    pub events: Vec<Event>,
    /// Sequences that received a new token (one each).
    pub new_tokens: usize,
    /// Those sequences (a prompt still being prefilled gets none).
    pub sampled: Vec<SequenceId>,
    /// Prompt tokens prefilled in this pass.
    pub prefill_tokens: usize,
    /// Prompt tokens of this pass's new sequences taken from a kept prompt instead (their
    /// keys and values copied, not computed; see [`ContinuousBatch::with_prefix_cache`]).
    pub reused_prompt_tokens: usize,
}

/// Recent prompts' keys and values, kept so that a new prompt beginning the same way (a chat
/// template's system prompt, a few-shot preamble) computes only what follows.
///
/// Why it is exact: every row of the forward pass depends only on its own token and the
/// keys and values of the positions before it, and the quantized kernel and the attention
/// compute a row the same whatever else is in the batch, so copied positions hold what a
/// full prefill would have computed. (On f32 weights candle's matrix product may sum in
/// another order for other batch shapes: logits may differ in their last bits; the fixture
/// tests see the same tokens.)
struct PrefixCache {
    entries: Vec<KeptPrompt>,
    /// Positions all entries may hold together.
    budget: usize,
    clock: u64,
}

struct KeptPrompt {
    tokens: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

/// Fewer shared tokens than this are recomputed (copying costs about as much).
const MIN_REUSED_TOKENS: usize = 4;

impl PrefixCache {
    /// The kept prompt sharing the longest beginning with `tokens`, and that length (at most
    /// `tokens.len() - 1`: the last token is computed for its logits).
    fn longest(&mut self, tokens: &[u32]) -> Option<(&KvCache, usize)> {
        let limit = tokens.len().saturating_sub(1);
        let (best, shared) = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| {
                let shared = e
                    .tokens
                    .iter()
                    .zip(tokens)
                    .take_while(|(a, b)| a == b)
                    .count();
                (i, shared.min(limit))
            })
            .max_by_key(|&(_, shared)| shared)?;
        if shared < MIN_REUSED_TOKENS {
            return None;
        }
        self.clock += 1;
        let entry = &mut self.entries[best];
        entry.last_used = self.clock;
        Some((&entry.cache, shared))
    }

    /// Keeps `tokens`' cache (its first `tokens.len()` positions) unless a kept prompt
    /// already begins with all of them; the least recently used go when over budget.
    fn keep(&mut self, tokens: &[u32], cache: &KvCache) -> Result<()> {
        if tokens.len() > self.budget || self.entries.iter().any(|e| e.tokens.starts_with(tokens)) {
            return Ok(());
        }
        // A kept prompt that this one extends is no longer needed.
        self.entries.retain(|e| !tokens.starts_with(&e.tokens));
        while self.entries.iter().map(|e| e.tokens.len()).sum::<usize>() + tokens.len()
            > self.budget
        {
            let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used);
            match oldest {
                Some(i) => self.entries.swap_remove(i),
                None => break,
            };
        }
        self.clock += 1;
        self.entries.push(KeptPrompt {
            tokens: tokens.to_vec(),
            cache: cache.prefix(tokens.len())?,
            last_used: self.clock,
        });
        Ok(())
    }
}

struct Live {
    id: SequenceId,
    /// Prompt, then the continuation.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// The keys and values of the positions computed so far: fewer than `prompt_len` while
    /// the prompt is being prefilled.
    cache: KvCache,
    sampler: sampling::Sampler,
    stream: stream::TextStream,
    max_new_tokens: usize,
    eos: Vec<u32>,
}

/// Sequences decoding together; see the [module docs](self).
///
/// ```
/// # fn main() -> girder::Result<()> {
/// use girder::generate::continuous::{ContinuousBatch, Event};
/// use girder::generate::{Options, TextGenerator};
///
/// let generator = TextGenerator::load("tests/fixtures/llama-causal-lm")?;
/// let options = Options { max_new_tokens: Some(4), ..Options::default() };
/// let mut batch = ContinuousBatch::new(&generator);
/// let first = batch.admit(generator.encode_prompt("Hello", 0)?, &options)?;
/// batch.step()?; // `first` prefilled, one token
/// let second = batch.admit(generator.encode_prompt("world", 0)?, &options)?;
/// let mut finished = Vec::new();
/// while !batch.is_empty() {
///     for event in batch.step()?.events {
///         if let Event::Finished { id, generation } = event {
///             finished.push((id, generation));
///         }
///     }
/// }
/// // The late joiner's greedy text is what it would be alone.
/// let alone = generator.generate(&["world"], &options)?;
/// let (_, late) = finished.iter().find(|(id, _)| *id == second).unwrap();
/// assert_eq!(late.token_ids, alone[0].token_ids);
/// assert!(finished.iter().any(|(id, _)| *id == first));
/// # Ok(())
/// # }
/// ```
pub struct ContinuousBatch<'g> {
    generator: &'g TextGenerator,
    live: Vec<Live>,
    next_id: u64,
    prefixes: PrefixCache,
    /// Prompt tokens prefilled per step at most, over all sequences.
    prefill_chunk: usize,
}

/// Prompt positions a batch keeps for reuse by default (SmolLM2: 47 MB).
pub const DEFAULT_PREFIX_CACHE_TOKENS: usize = 1024;

/// Positions reserved for a sequence's continuation when it is admitted; the cache grows
/// past them as needed.
const INITIAL_NEW_POSITIONS: usize = 128;

/// The work one step may spend on prefill: that of a first chunk of `chunk` tokens, counting
/// `chunk` units for a token's projections and one per earlier position its attention reads.
fn prefill_work(chunk: usize) -> usize {
    chunk.saturating_mul(chunk).saturating_mul(3) / 2
}

/// How far a prompt whose positions up to `start` are computed is prefilled this step, and
/// the work that takes: tokens while their work fits in `work_left`, and at least one. A
/// token at position `p` costs `chunk + p`, so chunks shrink as the prompt grows: attention
/// over a long cache would otherwise make one step of a long prompt as slow as the whole
/// prefill of a short one.
fn prefill_span(start: usize, prompt_len: usize, chunk: usize, work_left: usize) -> (usize, usize) {
    let mut end = start;
    let mut work = 0;
    while end < prompt_len {
        let next = chunk + end;
        if end > start && work + next > work_left {
            break;
        }
        work += next;
        end += 1;
    }
    (end, work.min(work_left))
}

/// Prompt tokens prefilled per step by default: on two cores a step of 256 prompt tokens of a
/// 135M-parameter model takes under two seconds even deep into a long prompt, the most a
/// running stream waits for its next token, and a long prompt's time to its first token
/// stays within a few percent of a whole prefill's.
pub const DEFAULT_PREFILL_CHUNK: usize = 256;

impl<'g> ContinuousBatch<'g> {
    /// An empty batch over `generator`, keeping up to [`DEFAULT_PREFIX_CACHE_TOKENS`] prompt
    /// positions for reuse.
    pub fn new(generator: &'g TextGenerator) -> Self {
        ContinuousBatch {
            generator,
            live: Vec::new(),
            next_id: 0,
            prefixes: PrefixCache {
                entries: Vec::new(),
                budget: DEFAULT_PREFIX_CACHE_TOKENS,
                clock: 0,
            },
            prefill_chunk: DEFAULT_PREFILL_CHUNK,
        }
    }

    /// Prefills at most `tokens` prompt tokens per step (at least 1), over all the sequences
    /// being prefilled, first admitted first, and fewer deep into a long prompt, where each
    /// token's attention reads more positions (the step's work stays that of a first chunk);
    /// the rest of a prompt waits for the next steps while the running sequences decode. Outputs are those of a whole prefill (the keys
    /// and values of a chunk's positions are those a whole prefill computes); what changes
    /// is that no step is longer than a chunk's prefill.
    pub fn with_prefill_chunk(mut self, tokens: usize) -> Self {
        self.prefill_chunk = tokens.max(1);
        self
    }

    /// Keeps up to `positions` positions of recent prompts (0: none): a new prompt that
    /// begins as a kept one does (the same system prompt) has the shared positions' keys and
    /// values copied instead of computed, and only the rest prefilled. Outputs are those of
    /// a full prefill (bit for bit on GGUF models; on f32 weights up to the logits' last
    /// bits); the time to the first token is what changes.
    pub fn with_prefix_cache(mut self, positions: usize) -> Self {
        self.prefixes.budget = positions;
        self.prefixes.entries.clear();
        self
    }

    /// Sequences in the batch (admitted and not yet finished or cancelled).
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no sequence is running.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The running sequences.
    pub fn ids(&self) -> Vec<SequenceId> {
        self.live.iter().map(|s| s.id).collect()
    }

    /// Adds a prompt (token ids) with its own options; it is prefilled at the next step.
    /// Checks what [`TextGenerator::generate_from_ids`] checks (errors name index 0).
    pub fn admit(&mut self, prompt: Vec<u32>, options: &Options) -> Result<SequenceId> {
        options.validate()?;
        let model = self.generator.model();
        let context = model.context_length();
        let vocab = model.vocab_size();
        if prompt.is_empty() {
            return Err(Error::BadInput {
                index: 0,
                reason: "the prompt has no tokens".into(),
            });
        }
        if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::BadInput {
                index: 0,
                reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
            });
        }
        // One position must stay free for the first new token.
        if prompt.len() >= context {
            return Err(Error::ContextLength {
                index: 0,
                tokens: prompt.len() + 1,
                max: context,
            });
        }
        let max_new_tokens = options.max_new_tokens();
        let eos = options
            .eos_token_ids
            .clone()
            .unwrap_or_else(|| self.generator.generation_config().eos_token_ids.clone());
        let id = SequenceId(self.next_id);
        self.next_id += 1;
        self.live.push(Live {
            id,
            prompt_len: prompt.len(),
            // Room for the prompt and the first new tokens; the cache doubles as the
            // continuation grows. Reserving `max_new_tokens` at once would hold a whole
            // context per request (360 MB for SmolLM2's 8192 positions) for replies that
            // mostly end far sooner.
            cache: model.new_cache(
                (prompt.len() + max_new_tokens.min(INITIAL_NEW_POSITIONS)).min(context),
            )?,
            tokens: prompt,
            sampler: sampling::Sampler::new(options.sampling),
            stream: stream::TextStream::new(&options.stop),
            max_new_tokens,
            eos,
        });
        Ok(id)
    }

    /// Removes a sequence at once (its cache is freed). Returns whether it was running.
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        let before = self.live.len();
        self.live.retain(|s| s.id != id);
        self.live.len() != before
    }

    /// Sequences whose prompt is not yet wholly prefilled.
    pub fn prefilling(&self) -> usize {
        self.live
            .iter()
            .filter(|s| s.cache.len() < s.prompt_len)
            .count()
    }

    /// One forward pass: the next chunk of the prompts being prefilled (at most the prefill
    /// chunk's tokens in all, first admitted first), and the last token of every sequence
    /// past its prompt. Those whose prompt is complete get one new token; those that end
    /// leave the batch.
    ///
    /// On an error every sequence is dropped (their caches may hold half a step), so the
    /// caller fails all of them; the batch itself stays usable.
    pub fn step(&mut self) -> Result<Step> {
        if self.live.is_empty() {
            return Ok(Step::default());
        }
        match self.advance() {
            Ok(step) => Ok(step),
            Err(err) => {
                self.live.clear();
                Err(err)
            }
        }
    }

    fn advance(&mut self) -> Result<Step> {
        let generator = self.generator;
        let model = generator.model();
        let tokenizer = generator.tokenizer();
        let context = model.context_length();
        let mut step = Step::default();
        let mut batch = RaggedBatch::from_encodings([]);
        let mut prefilled = Vec::new();
        // Whether each sequence is in this pass, and whether its row gives a new token.
        let mut in_pass = vec![false; self.live.len()];
        let mut samples = vec![false; self.live.len()];
        let chunk = self.prefill_chunk;
        let mut work_left = prefill_work(chunk);
        for (i, seq) in self.live.iter_mut().enumerate() {
            if seq.cache.len() >= seq.prompt_len {
                batch.push_from(&seq.tokens[seq.tokens.len() - 1..], seq.cache.len());
                in_pass[i] = true;
                samples[i] = true;
                continue;
            }
            if work_left == 0 {
                continue;
            }
            if seq.cache.is_empty() {
                if let Some((kept, shared)) = self.prefixes.longest(&seq.tokens) {
                    seq.cache.start_from(kept, shared)?;
                    step.reused_prompt_tokens += shared;
                }
            }
            let start = seq.cache.len();
            let (end, work) = prefill_span(start, seq.prompt_len, chunk, work_left);
            work_left -= work;
            batch.push_from(&seq.tokens[start..end], start);
            step.prefill_tokens += end - start;
            in_pass[i] = true;
            samples[i] = end == seq.prompt_len;
            if samples[i] {
                prefilled.push(seq.id);
            }
        }
        let logits = {
            let mut caches: Vec<&mut KvCache> = self
                .live
                .iter_mut()
                .zip(&in_pass)
                .filter(|(_, &in_pass)| in_pass)
                .map(|(s, _)| &mut s.cache)
                .collect();
            model.forward(&batch, &mut caches, Logits::Last)?
        };
        if self.prefixes.budget > 0 {
            for seq in self.live.iter().filter(|s| prefilled.contains(&s.id)) {
                self.prefixes.keep(&seq.tokens, &seq.cache)?;
            }
        }
        let mut finished = Vec::new();
        let rows_in_pass = in_pass.iter().filter(|&&p| p).count();
        let sampled = self
            .live
            .iter_mut()
            .zip(&in_pass)
            .filter(|(_, &in_pass)| in_pass)
            .map(|(seq, _)| seq)
            .zip(
                samples
                    .iter()
                    .zip(&in_pass)
                    .filter(|(_, &p)| p)
                    .map(|(&s, _)| s),
            );
        super::read_logits(&logits, |rows| {
            let vocab = rows.len() / rows_in_pass.max(1);
            let mut scratch = Vec::new();
            for ((seq, samples), row) in sampled.zip(rows.chunks_exact(vocab)) {
                // A prompt whose prefill goes on next step: its last row is not the end of
                // the prompt.
                if !samples {
                    continue;
                }
                let next = seq.sampler.next_from(row, &seq.tokens, &mut scratch);
                seq.tokens.push(next);
                step.new_tokens += 1;
                step.sampled.push(seq.id);
                let (text, stopped) = seq.stream.push(tokenizer, next)?;
                if !text.is_empty() {
                    step.events.push(Event::Text { id: seq.id, text });
                }
                let generated = seq.tokens.len() - seq.prompt_len;
                let finish = if seq.eos.contains(&next) {
                    Some(FinishReason::Eos)
                } else if stopped {
                    Some(FinishReason::Stop)
                } else if generated >= seq.max_new_tokens || seq.tokens.len() >= context {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                if let Some(reason) = finish {
                    let rest = seq.stream.finish(tokenizer)?;
                    if !rest.is_empty() {
                        step.events.push(Event::Text {
                            id: seq.id,
                            text: rest,
                        });
                    }
                    let token_ids = seq.tokens[seq.prompt_len..].to_vec();
                    let text = if reason == FinishReason::Stop {
                        seq.stream.text().to_string()
                    } else {
                        // The whole continuation decoded at once, as the fixed-batch loop does.
                        generator.decode(&token_ids, 0)?
                    };
                    step.events.push(Event::Finished {
                        id: seq.id,
                        generation: Generation {
                            text,
                            completion_tokens: token_ids.len(),
                            prompt_tokens: seq.prompt_len,
                            token_ids,
                            finish_reason: reason,
                        },
                    });
                    finished.push(seq.id);
                }
            }
            Ok(())
        })?;
        self.live.retain(|s| !finished.contains(&s.id));
        Ok(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefill_chunks_shrink_as_the_prompt_grows() {
        let chunk = 512;
        let whole = prefill_work(chunk);
        assert_eq!(prefill_span(0, 10_000, chunk, whole).0, chunk);
        let (end, work) = prefill_span(6000, 10_000, chunk, whole);
        assert!((6060..6080).contains(&end), "{end}");
        assert!(work <= whole);
        // The end of a short prompt, and one token when nothing is left.
        assert_eq!(prefill_span(100, 120, chunk, whole).0, 120);
        assert_eq!(prefill_span(9000, 10_000, chunk, 1), (9001, 1));
    }
}

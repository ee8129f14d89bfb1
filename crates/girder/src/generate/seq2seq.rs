//! Generation with an encoder-decoder: each input is encoded once, its cross-attention keys
//! and values computed once, then its output is written token by token from a decoder prompt
//! (`decoder_start_token_id`, or Whisper's special tokens), greedily, by sampling, or by beam
//! search ([`super::beam_search`]), as transformers' `generate` does for
//! `is_encoder_decoder` models.
//!
//! Every input of a call is encoded in one packed pass, and every running sequence (every
//! beam of every input) advances in one decoder pass per step: no padding on either side,
//! so an input's output does not depend on the others of its batch. A beam that continues
//! another takes its cache, or a copy when several continue the same one.

use super::beam_search::{BeamSearch, BeamSettings};
use super::config::{GenerationConfig, Overrides};
use super::logits_process::{log_softmax, LogitsProcessors, Timestamps};
use super::sampling::{self, Sampler, Sampling};
use super::{read_logits, FinishReason, GeneratedIds, Generation};
use crate::audio::WhisperFeatureExtractor;
use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::ModelFolder;
use crate::layers::Seq2SeqCache;
/// What an encoder reads: packed token ids or log-mel features.
pub use crate::models::EncoderInput;
use crate::models::{Logits, Seq2SeqModel};
use crate::tokenize::{Encoded, TextTokenizer};

/// An encoder-decoder with its tokenizer and generation settings, built by [`crate::load`].
pub struct Seq2SeqGenerator {
    model: Seq2SeqModel,
    /// Encodes inputs (under girder's truncation policy) and decodes outputs.
    tokenizer: TextTokenizer,
    generation_config: GenerationConfig,
    folder: ModelFolder,
    config: CommonConfig,
    /// A speech model's feature extractor (preprocessor_config.json).
    features: Option<WhisperFeatureExtractor>,
    /// The tokenizer's special tokens (not text: a transcript skips them).
    special_ids: std::collections::HashSet<u32>,
}

impl std::fmt::Debug for Seq2SeqGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Seq2SeqGenerator")
            .field("model", &self.model)
            .field("tokenizer", &self.tokenizer.source())
            .finish()
    }
}

/// One input's decoding: its prompt and, for Whisper, its timestamp rules.
#[derive(Debug, Clone)]
pub struct DecoderPrompt {
    /// The tokens the output starts with (not part of the result).
    pub tokens: Vec<u32>,
    /// Whisper's timestamp rules, when timestamps are asked for.
    pub timestamps: Option<Timestamps>,
}

impl Seq2SeqGenerator {
    /// Puts a loaded model together with its tokenizer (whose policy the loader set).
    pub(crate) fn new(
        model: Seq2SeqModel,
        tokenizer: TextTokenizer,
        generation_config: GenerationConfig,
        folder: ModelFolder,
        config: CommonConfig,
        features: Option<WhisperFeatureExtractor>,
    ) -> Self {
        let special_ids = tokenizer
            .inner()
            .get_added_tokens_decoder()
            .into_iter()
            .filter(|(_, token)| token.special)
            .map(|(id, _)| id)
            .collect();
        Seq2SeqGenerator {
            model,
            tokenizer,
            generation_config,
            folder,
            config,
            features,
            special_ids,
        }
    }

    /// A speech model's feature extractor.
    pub fn feature_extractor(&self) -> Option<&WhisperFeatureExtractor> {
        self.features.as_ref()
    }

    /// Whether `id` is one of the tokenizer's special tokens.
    pub fn is_special_token(&self, id: u32) -> bool {
        self.special_ids.contains(&id)
    }

    /// The logits of the next token after `prompt` for the (single) input of `input`: one
    /// encoder and one decoder pass (Whisper's language detection).
    pub fn first_logits(&self, input: EncoderInput<'_>, prompt: &[u32]) -> Result<Vec<f32>> {
        if input.num_seqs() != 1 || prompt.is_empty() {
            return Err(Error::InvalidOption {
                option: "input".into(),
                reason: "first_logits reads one input and a non-empty prompt".into(),
            });
        }
        let (_, cross) = self.model.encode(input)?;
        let mut cache = self.model.new_cache(cross[0].clone(), prompt.len())?;
        let mut batch = RaggedBatch::from_encodings([]);
        batch.push_from(prompt, 0);
        let logits = self.model.decode(&batch, &mut [&mut cache], Logits::Last)?;
        read_logits(&logits, |row| Ok(row.to_vec()))
    }

    /// The model.
    pub fn model(&self) -> &Seq2SeqModel {
        &self.model
    }

    /// The tokenizer with girder's policy.
    pub fn text_tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The generation settings read from the folder.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation_config
    }

    /// The model folder and its config.json.
    pub fn files(&self) -> (&ModelFolder, &CommonConfig) {
        (&self.folder, &self.config)
    }

    /// The first decoder token: `decoder_start_token_id`, else `bos_token_id`.
    pub fn decoder_start_token_id(&self) -> Result<u32> {
        let c = &self.generation_config;
        c.decoder_start_token_id
            .or(c.bos_token_id)
            .ok_or_else(|| Error::BadConfig {
                file: self.config.path.clone(),
                field: "decoder_start_token_id".into(),
                reason: "an encoder-decoder needs decoder_start_token_id (or bos_token_id) to begin its output".into(),
            })
    }

    /// Decodes ids to text, special tokens skipped.
    pub fn decode(&self, ids: &[u32], index: usize) -> Result<String> {
        self.tokenizer.decode(ids, true, index)
    }

    /// Generates an output for every text, all in one batch: the texts tokenized under the
    /// policy, the model's generation settings with `overrides` on top.
    pub fn generate<S: AsRef<str>>(
        &self,
        texts: &[S],
        overrides: &Overrides,
    ) -> Result<Vec<(Generation, Encoded)>> {
        let encodings = self.tokenizer.encode_all(texts)?;
        let config = self.generation_config.with(overrides)?;
        let outs = self.generate_encoded(&encodings, &config, overrides.seed.unwrap_or(0))?;
        outs.into_iter()
            .zip(encodings)
            .enumerate()
            .map(|(i, (out, encoded))| {
                let generation = Generation {
                    text: self.decode(&out.token_ids, i)?,
                    completion_tokens: out.token_ids.len(),
                    prompt_tokens: encoded.len(),
                    token_ids: out.token_ids,
                    finish_reason: out.finish_reason,
                };
                Ok((generation, encoded))
            })
            .collect()
    }

    /// Generates from tokenized inputs with resolved settings (`seed` seeds sampling).
    pub fn generate_encoded(
        &self,
        encodings: &[Encoded],
        config: &GenerationConfig,
        seed: u64,
    ) -> Result<Vec<GeneratedIds>> {
        if encodings.is_empty() {
            return Err(Error::EmptyInput);
        }
        let vocab = self.model.vocab_size();
        let mut batch = RaggedBatch::from_encodings([]);
        for (index, encoded) in encodings.iter().enumerate() {
            if encoded.is_empty() {
                return Err(Error::BadInput {
                    index,
                    reason: "the input has no tokens".into(),
                });
            }
            if let Some(&bad) = encoded.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::BadInput {
                    index,
                    reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
                });
            }
            batch.push(&encoded.ids, &[]);
        }
        let start = self.decoder_start_token_id()?;
        let prompts: Vec<DecoderPrompt> = encodings
            .iter()
            .map(|_| DecoderPrompt {
                tokens: vec![start],
                timestamps: None,
            })
            .collect();
        self.generate_from(EncoderInput::Tokens(&batch), &prompts, config, seed)
    }

    /// The loop: encodes `input` (one input per prompt) in one pass, then decodes every input
    /// from its prompt under `config` (resolved; see [`GenerationConfig::with`]), all in one
    /// [`Seq2SeqBatch`].
    pub fn generate_from(
        &self,
        input: EncoderInput<'_>,
        prompts: &[DecoderPrompt],
        config: &GenerationConfig,
        seed: u64,
    ) -> Result<Vec<GeneratedIds>> {
        let mut batch = Seq2SeqBatch::new(self);
        let ids = batch.admit(input, prompts, config, seed)?;
        let mut results: Vec<Option<GeneratedIds>> = vec![None; ids.len()];
        while !batch.is_empty() {
            for (id, out) in batch.step()? {
                if let Some(i) = ids.iter().position(|&x| x == id) {
                    results[i] = Some(out);
                }
            }
        }
        Ok(results.into_iter().flatten().collect())
    }
}

/// Names a sequence of a [`Seq2SeqBatch`] (unique within it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SequenceId(pub u64);

/// Inputs decoding together, each greedily, by sampling or with its beams; inputs join
/// ([`admit`](Self::admit)) and leave ([`cancel`](Self::cancel), or when they finish) between
/// forward passes, so a server batches requests continuously.
///
/// Every [`step`](Self::step) is one decoder pass over every running sequence (every beam of
/// every input): an input's first step holds its whole decoder prompt, later steps one token
/// per sequence. What an input generates does not depend on who shares its steps.
pub struct Seq2SeqBatch<'g> {
    generator: &'g Seq2SeqGenerator,
    entries: Vec<Entry>,
    next_id: u64,
}

/// One input being decoded.
struct Entry {
    id: SequenceId,
    plan: Plan,
    eos_token_ids: Vec<u32>,
    decoding: Decoding,
}

enum Decoding {
    /// One sequence: prompt then output, its cache and sampler (greedy when not sampling).
    Single {
        tokens: Vec<u32>,
        cache: Seq2SeqCache,
        sampler: Sampler,
        do_sample: bool,
    },
    /// Beam search: its beams and one cache per running beam (a single one before the
    /// first step: every beam starts from the same prompt).
    Beams {
        search: BeamSearch,
        caches: Vec<Seq2SeqCache>,
    },
}

impl<'g> Seq2SeqBatch<'g> {
    /// An empty batch over `generator`.
    pub fn new(generator: &'g Seq2SeqGenerator) -> Self {
        Seq2SeqBatch {
            generator,
            entries: Vec::new(),
            next_id: 0,
        }
    }

    /// No input is running.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Inputs running.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Encodes `input` (one encoder pass over its inputs) and adds each input with its
    /// decoder prompt, to decode under `config` from the next step on.
    pub fn admit(
        &mut self,
        input: EncoderInput<'_>,
        prompts: &[DecoderPrompt],
        config: &GenerationConfig,
        seed: u64,
    ) -> Result<Vec<SequenceId>> {
        config.validate()?;
        if prompts.len() != input.num_seqs() {
            return Err(Error::InvalidOption {
                option: "prompts".into(),
                reason: format!(
                    "{} decoder prompts for {} inputs: each input needs one",
                    prompts.len(),
                    input.num_seqs()
                ),
            });
        }
        let model = self.generator.model();
        let limit = model.max_target_positions();
        let vocab = model.vocab_size();
        let mut plans = Vec::with_capacity(prompts.len());
        for (index, prompt) in prompts.iter().enumerate() {
            if prompt.tokens.is_empty() {
                return Err(Error::BadInput {
                    index,
                    reason: "the decoder prompt has no tokens".into(),
                });
            }
            if let Some(&bad) = prompt.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::BadInput {
                    index,
                    reason: format!("decoder token id {bad} is outside the vocabulary of {vocab}"),
                });
            }
            let mut max_length = config.max_length_for(prompt.tokens.len());
            if let Some(limit) = limit {
                max_length = max_length.min(limit);
            }
            if max_length <= prompt.tokens.len() {
                return Err(Error::InvalidOption {
                    option: "max_length".into(),
                    reason: format!(
                        "{max_length} leaves no room after the decoder prompt of {} tokens",
                        prompt.tokens.len()
                    ),
                });
            }
            let mut processors = LogitsProcessors::new(config, prompt.tokens.len(), max_length);
            if let Some(rules) = &prompt.timestamps {
                processors = processors.with_timestamps(rules.clone(), prompt.tokens.len());
            }
            plans.push(Plan {
                prompt: prompt.tokens.clone(),
                max_length,
                processors,
            });
        }
        let (_, cross) = model.encode(input)?;
        let sampling = Sampling {
            temperature: if config.do_sample {
                config.temperature
            } else {
                0.0
            },
            top_k: config.top_k,
            top_p: config.top_p,
            min_p: 0.0,
            // The processors apply it, in transformers' order.
            repetition_penalty: 1.0,
            seed,
        };
        let mut ids = Vec::with_capacity(plans.len());
        for (plan, cross) in plans.into_iter().zip(cross) {
            let cache = model.new_cache(cross, plan.max_length)?;
            let decoding = if config.num_beams > 1 {
                Decoding::Beams {
                    search: BeamSearch::new(
                        plan.prompt.clone(),
                        BeamSettings {
                            num_beams: config.num_beams,
                            length_penalty: config.length_penalty,
                            early_stopping: config.early_stopping,
                            max_length: plan.max_length,
                            eos_token_ids: config.eos_token_ids.clone(),
                        },
                    ),
                    caches: vec![cache],
                }
            } else {
                Decoding::Single {
                    tokens: plan.prompt.clone(),
                    cache,
                    sampler: Sampler::new(sampling),
                    do_sample: config.do_sample,
                }
            };
            let id = SequenceId(self.next_id);
            self.next_id += 1;
            self.entries.push(Entry {
                id,
                plan,
                eos_token_ids: config.eos_token_ids.clone(),
                decoding,
            });
            ids.push(id);
        }
        Ok(ids)
    }

    /// Removes an input (its client went away); `false` when it is not running.
    pub fn cancel(&mut self, id: SequenceId) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.id != id);
        self.entries.len() != before
    }

    /// One decoder pass over every running sequence; returns the inputs that finished in it,
    /// with their outputs (the tokens after the decoder prompt).
    pub fn step(&mut self) -> Result<Vec<(SequenceId, GeneratedIds)>> {
        if self.entries.is_empty() {
            return Ok(Vec::new());
        }
        let model = self.generator.model();
        // Each sequence's tokens not yet in its cache: the whole prompt at first, then one.
        let mut batch = RaggedBatch::from_encodings([]);
        for entry in &self.entries {
            match &entry.decoding {
                Decoding::Single { tokens, cache, .. } => {
                    batch.push_from(&tokens[cache.len()..], cache.len());
                }
                Decoding::Beams { search, caches } => {
                    for (beam, cache) in search.running().iter().zip(caches) {
                        batch.push_from(&beam.tokens[cache.len()..], cache.len());
                    }
                }
            }
        }
        let logits = {
            let mut caches: Vec<&mut Seq2SeqCache> = Vec::with_capacity(batch.num_seqs());
            for entry in self.entries.iter_mut() {
                match &mut entry.decoding {
                    Decoding::Single { cache, .. } => caches.push(cache),
                    Decoding::Beams { caches: c, .. } => caches.extend(c.iter_mut()),
                }
            }
            model.decode(&batch, &mut caches, Logits::Last)?
        };
        let vocab = model.vocab_size();
        let finished = read_logits(&logits, |rows| {
            let mut rows = rows.chunks_exact(vocab.max(1));
            let mut finished = Vec::new();
            let mut scratch = Vec::new();
            for entry in self.entries.iter_mut() {
                if let Some(out) = entry.advance(&mut rows, &mut scratch)? {
                    finished.push((entry.id, out));
                }
            }
            Ok(finished)
        })?;
        self.entries
            .retain(|e| !finished.iter().any(|(id, _)| *id == e.id));
        Ok(finished)
    }
}

impl Entry {
    /// Takes this entry's rows of a step's logits and chooses its next tokens; the output
    /// when it has finished.
    fn advance<'r>(
        &mut self,
        rows: &mut impl Iterator<Item = &'r [f32]>,
        scratch: &mut Vec<f32>,
    ) -> Result<Option<GeneratedIds>> {
        let missing = || Error::Unsupported {
            what: "a decoder pass with fewer rows than sequences".into(),
        };
        match &mut self.decoding {
            Decoding::Single {
                tokens,
                sampler,
                do_sample,
                ..
            } => {
                let row = rows.next().ok_or_else(missing)?;
                scratch.clear();
                scratch.extend_from_slice(row);
                self.plan.processors.apply(scratch, tokens);
                let next = if *do_sample {
                    sampler.next(scratch, &[])
                } else {
                    sampling::argmax(scratch)
                };
                tokens.push(next);
                let finish = if self.eos_token_ids.contains(&next) {
                    Some(FinishReason::Eos)
                } else if tokens.len() >= self.plan.max_length {
                    Some(FinishReason::Length)
                } else {
                    None
                };
                Ok(finish.map(|finish_reason| GeneratedIds {
                    token_ids: tokens[self.plan.prompt.len()..].to_vec(),
                    finish_reason,
                }))
            }
            Decoding::Beams { search, caches } => {
                let running = search.running();
                // Each computed row processed for its beam (at the first step one row serves
                // every beam: they are the same sequence).
                let processed = running
                    .iter()
                    .take(caches.len())
                    .map(|beam| {
                        let row = rows.next().ok_or_else(missing)?;
                        let mut scores = log_softmax(row);
                        self.plan.processors.apply(&mut scores, &beam.tokens);
                        Ok(scores)
                    })
                    .collect::<Result<Vec<_>>>()?;
                let views: Vec<&[f32]> = (0..running.len())
                    .map(|b| processed[b.min(processed.len() - 1)].as_slice())
                    .collect();
                let mut parents = search.step(&views);
                if caches.len() == 1 {
                    // After the first step every beam continues the one prompt computed.
                    parents.iter_mut().for_each(|p| *p = 0);
                }
                *caches = reorder(std::mem::take(caches), &parents)?;
                if !search.is_done() {
                    return Ok(None);
                }
                let (token_ids, _) = search.best();
                let finish_reason = match token_ids.last() {
                    Some(id) if self.eos_token_ids.contains(id) => FinishReason::Eos,
                    _ => FinishReason::Length,
                };
                Ok(Some(GeneratedIds {
                    token_ids,
                    finish_reason,
                }))
            }
        }
    }
}

/// What bounds one input's output.
struct Plan {
    prompt: Vec<u32>,
    /// Tokens of the output at most, prompt included.
    max_length: usize,
    processors: LogitsProcessors,
}

/// The caches of the new running beams: beam `i` continues `parents[i]`, taking its cache
/// when it is the last to continue it and a copy otherwise.
fn reorder(caches: Vec<Seq2SeqCache>, parents: &[usize]) -> Result<Vec<Seq2SeqCache>> {
    let mut remaining = vec![0usize; caches.len()];
    for &p in parents {
        remaining[p] += 1;
    }
    let mut slots: Vec<Option<Seq2SeqCache>> = caches.into_iter().map(Some).collect();
    parents
        .iter()
        .map(|&p| {
            remaining[p] -= 1;
            let slot = &mut slots[p];
            if remaining[p] == 0 {
                slot.take().ok_or_else(|| Error::Unsupported {
                    what: "a beam continuing a cache already handed on".into(),
                })
            } else {
                slot.as_ref()
                    .ok_or_else(|| Error::Unsupported {
                        what: "a beam continuing a cache already handed on".into(),
                    })?
                    .fork()
            }
        })
        .collect()
}

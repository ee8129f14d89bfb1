//! Text generation with a causal language model: the loop that turns prompts into
//! continuations, and when it stops.
//!
//! Each prompt gets its own [`KvCache`], sized once for `prompt + max_new_tokens` positions.
//! All prompts are processed in one forward pass (prefill, packed without padding), then
//! every unfinished sequence advances by one token per forward pass. Because batches are
//! ragged, there is no padding, no attention mask and no pad token that could be mistaken for
//! eos: a prompt's continuation does not depend on the other prompts of its batch.
//!
//! A sequence stops at an eos id (`eos_token_id` of generation_config.json, else config.json;
//! either may list several), after `max_new_tokens`, or when it fills the model's context.
//! Or at a stop string ([`stream`]). The next token is chosen greedily or sampled
//! ([`sampling`]). Follows transformers `generation/utils.py` (`GenerationMixin.generate`).

pub mod beam_search;
pub mod chat;
pub mod config;
pub mod continuous;
pub mod logits_process;
pub mod sampling;
pub mod seq2seq;
pub mod stream;

pub use config::{EarlyStopping, GenerationConfig, Overrides};
pub use sampling::Sampling;
pub use seq2seq::Seq2SeqGenerator;

use crate::batch::RaggedBatch;
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::hub::ModelFolder;
use crate::layers::KvCache;
use crate::models::{DecoderModel, Logits};
use crate::tokenize::{encode_within, Keep, TextTokenizer, Within};
use candle_core::DType;
use serde::{Deserialize, Serialize};

/// A prompt's ids, tokenized only as far as a limit needed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptIds {
    /// Every id of the prompt when `whole`; else the last ones of a prompt over the limit
    /// (more than the limit of them).
    pub ids: Vec<u32>,
    /// Whether the prompt was tokenized to its start.
    pub whole: bool,
}

/// How to generate. `Default` is greedy decoding of up to 256 new tokens (the default of
/// transformers' text-generation pipeline), stopping at the model's eos ids.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// New tokens per prompt, at most; `None`: 256.
    pub max_new_tokens: Option<usize>,
    /// Ids that end a sequence; `None`: the model's (generation_config.json / config.json).
    pub eos_token_ids: Option<Vec<u32>>,
    /// Strings that end a sequence; the text stops before them. None may be empty.
    pub stop: Vec<String>,
    /// Greedy (default) or sampling.
    pub sampling: Sampling,
}

impl Options {
    /// [`max_new_tokens`](Self::max_new_tokens) with its default.
    pub fn max_new_tokens(&self) -> usize {
        self.max_new_tokens.unwrap_or(256)
    }

    /// Checks every option; the first bad one is named.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == Some(0) {
            return Err(Error::InvalidOption {
                option: "max_new_tokens".into(),
                reason: "must be at least 1".into(),
            });
        }
        stream::validate_stops(&self.stop)?;
        self.sampling.validate()
    }
}

/// Why a sequence stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// `max_new_tokens` reached, or the model's context is full.
    Length,
    /// A stop string appeared in the text.
    Stop,
    /// An eos id was generated (it is the last of `token_ids`).
    Eos,
}

/// The continuation of one prompt, as token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedIds {
    /// The new tokens (an eos id that ended the sequence included, as transformers returns it).
    pub token_ids: Vec<u32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
}

/// The continuation of one prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Generation {
    /// The new tokens decoded, special tokens skipped.
    pub text: String,
    /// The new tokens.
    pub token_ids: Vec<u32>,
    /// Why generation stopped.
    pub finish_reason: FinishReason,
    /// Tokens of the prompt, special tokens included.
    pub prompt_tokens: usize,
    /// `token_ids.len()`.
    pub completion_tokens: usize,
}

struct Sequence {
    index: usize,
    /// Prompt, then the continuation.
    tokens: Vec<u32>,
    prompt_len: usize,
    cache: KvCache,
    sampler: sampling::Sampler,
    finish: Option<FinishReason>,
}

/// A causal language model with its tokenizer and generation settings, built by
/// [`crate::load`] (or its shorthand [`TextGenerator::load`]).
pub struct TextGenerator {
    model: DecoderModel,
    /// Padding and truncation off: a prompt is never cut silently.
    tokenizer: TextTokenizer,
    generation_config: GenerationConfig,
    chat_template: Option<chat::ChatTemplate>,
    /// The model folder and its config.json; `None` for a GGUF file.
    files: Option<(ModelFolder, CommonConfig)>,
    /// A GGUF file's own tokenizer, when another one was loaded in its place.
    file_tokenizer: Option<tokenizers::Tokenizer>,
}

impl std::fmt::Debug for TextGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextGenerator")
            .field("model", &self.model)
            .field("tokenizer", &self.tokenizer.source())
            .field("generation_config", &self.generation_config)
            .field("chat_template", &self.chat_template)
            .finish()
    }
}

impl TextGenerator {
    /// Puts a loaded model together with its tokenizer (whose policy the loader set) and
    /// settings.
    pub(crate) fn new(
        model: DecoderModel,
        tokenizer: TextTokenizer,
        generation_config: GenerationConfig,
        chat_template: Option<chat::ChatTemplate>,
        files: Option<(ModelFolder, CommonConfig)>,
    ) -> Self {
        TextGenerator {
            model,
            tokenizer,
            generation_config,
            chat_template,
            files,
            file_tokenizer: None,
        }
    }

    /// This generator, remembering `own` as its GGUF file's tokenizer (the one it runs with
    /// came from elsewhere).
    pub(crate) fn with_file_tokenizer(mut self, own: tokenizers::Tokenizer) -> Self {
        self.file_tokenizer = Some(own);
        self
    }

    /// The tokenizer the GGUF file carries, when another one was loaded in its place
    /// (`LoadOptions::tokenizer`); `None` otherwise.
    pub fn file_tokenizer(&self) -> Option<&tokenizers::Tokenizer> {
        self.file_tokenizer.as_ref()
    }

    /// The same generator over another network, built from this one's: `f` receives the
    /// loaded model and returns the one to use (to wrap, instrument or replace its forward
    /// pass; the tokenizer, chat template and generation settings stay).
    pub fn map_model(mut self, f: impl FnOnce(DecoderModel) -> DecoderModel) -> Self {
        self.model = f(self.model);
        self
    }

    /// The model.
    pub fn model(&self) -> &DecoderModel {
        &self.model
    }

    /// The tokenizer (padding and truncation off).
    pub fn tokenizer(&self) -> &tokenizers::Tokenizer {
        self.tokenizer.inner()
    }

    /// The tokenizer with girder's policy (it refuses prompts beyond the context).
    pub fn text_tokenizer(&self) -> &TextTokenizer {
        &self.tokenizer
    }

    /// The model folder and its config.json; `None` for a GGUF file.
    pub fn files(&self) -> Option<(&ModelFolder, &CommonConfig)> {
        self.files.as_ref().map(|(folder, config)| (folder, config))
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&chat::ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Renders a conversation with the model's chat template, ready for the assistant's
    /// reply, and tokenizes it (the template writes the special tokens).
    pub fn encode_chat_messages(&self, messages: &[chat::Message]) -> Result<Vec<u32>> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| self.no_chat_template())?;
        self.encode_chat(&template.render(messages, true)?)
    }

    /// [`encode_chat_messages`](Self::encode_chat_messages), tokenizing the rendered text
    /// only as far as a limit of `max_tokens` needs ([`encode_within`]).
    pub fn encode_chat_messages_within(
        &self,
        messages: &[chat::Message],
        max_tokens: usize,
    ) -> Result<PromptIds> {
        let template = self
            .chat_template
            .as_ref()
            .ok_or_else(|| self.no_chat_template())?;
        let rendered = template.render(messages, true)?;
        self.encode_within(&rendered, false, 0, max_tokens)
    }

    /// [`encode_prompt`](Self::encode_prompt), tokenizing only as far as a limit of
    /// `max_tokens` needs ([`encode_within`]).
    pub fn encode_prompt_within(
        &self,
        prompt: &str,
        index: usize,
        max_tokens: usize,
    ) -> Result<PromptIds> {
        self.encode_within(prompt, true, index, max_tokens)
    }

    fn encode_within(
        &self,
        text: &str,
        add_special_tokens: bool,
        index: usize,
        max_tokens: usize,
    ) -> Result<PromptIds> {
        let within = encode_within(
            self.tokenizer.counting(),
            text,
            add_special_tokens,
            max_tokens,
            Keep::End,
        )
        .map_err(|e| Error::Tokenize {
            index,
            reason: e.to_string(),
        })?;
        Ok(match within {
            Within::Whole(encoding) => PromptIds {
                ids: encoding.get_ids().to_vec(),
                whole: true,
            },
            Within::Over { encoding, .. } => PromptIds {
                ids: encoding.get_ids().to_vec(),
                whole: false,
            },
        })
    }

    fn no_chat_template(&self) -> Error {
        Error::InvalidOption {
            option: "chat".into(),
            reason: format!(
                "{} has no chat template (chat_template.jinja, or chat_template in tokenizer_config.json / GGUF metadata)",
                self.tokenizer.source().display()
            ),
        }
    }

    /// The generation settings read from the folder.
    pub fn generation_config(&self) -> &GenerationConfig {
        &self.generation_config
    }

    /// Tokenizes a prompt (special tokens added, as `tokenizer(prompt)` does); `index` names
    /// it in errors.
    pub fn encode_prompt(&self, prompt: &str, index: usize) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer()
            .encode(prompt, true)
            .map_err(|e| Error::Tokenize {
                index,
                reason: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Decodes ids to text, special tokens skipped.
    pub fn decode(&self, ids: &[u32], index: usize) -> Result<String> {
        self.tokenizer()
            .decode(ids, true)
            .map_err(|e| Error::Tokenize {
                index,
                reason: format!("cannot decode the generated ids: {e}"),
            })
    }

    /// Tokenizes a rendered chat (special tokens not added: the template wrote them, as
    /// transformers' `apply_chat_template(tokenize=True)` does).
    pub fn encode_chat(&self, rendered: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer()
            .encode(rendered, false)
            .map_err(|e| Error::Tokenize {
                index: 0,
                reason: e.to_string(),
            })?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Generates a continuation of every prompt, all in one batch.
    pub fn generate<S: AsRef<str>>(
        &self,
        prompts: &[S],
        options: &Options,
    ) -> Result<Vec<Generation>> {
        if prompts.is_empty() {
            return Err(Error::EmptyInput);
        }
        let ids = prompts
            .iter()
            .enumerate()
            .map(|(i, p)| self.encode_prompt(p.as_ref(), i))
            .collect::<Result<Vec<_>>>()?;
        self.generate_from_ids(&ids, options, &mut |_, _| {})
    }

    /// Generates from token ids, calling `on_text(prompt_index, text)` with each piece of
    /// text as soon as it is complete (whole characters, never part of a stop string).
    pub fn generate_from_ids(
        &self,
        prompts: &[Vec<u32>],
        options: &Options,
        on_text: &mut dyn FnMut(usize, &str),
    ) -> Result<Vec<Generation>> {
        let mut streams: Vec<stream::TextStream> = prompts
            .iter()
            .map(|_| stream::TextStream::new(&options.stop))
            .collect();
        let tokenizer = self.tokenizer();
        let outs = self.run(prompts, options, &mut |i, id| {
            let (text, stopped) = streams[i].push(tokenizer, id)?;
            if !text.is_empty() {
                on_text(i, &text);
            }
            Ok(stopped)
        })?;
        outs.into_iter()
            .zip(streams)
            .zip(prompts)
            .enumerate()
            .map(|(i, ((out, mut stream), prompt))| {
                let rest = stream.finish(tokenizer)?;
                if !rest.is_empty() {
                    on_text(i, &rest);
                }
                let text = if out.finish_reason == FinishReason::Stop {
                    stream.text().to_string()
                } else {
                    // The whole continuation decoded at once, as transformers' decode.
                    self.decode(&out.token_ids, i)?
                };
                Ok(Generation {
                    text,
                    completion_tokens: out.token_ids.len(),
                    prompt_tokens: prompt.len(),
                    token_ids: out.token_ids,
                    finish_reason: out.finish_reason,
                })
            })
            .collect()
    }

    /// Generates from token ids: one prefill pass over all prompts, then one token per pass.
    /// Stop strings need text; use [`generate_from_ids`](Self::generate_from_ids) for them.
    pub fn generate_ids(
        &self,
        prompts: &[Vec<u32>],
        options: &Options,
    ) -> Result<Vec<GeneratedIds>> {
        self.run(prompts, options, &mut |_, _| Ok(false))
    }

    /// The loop. `on_token(prompt_index, id)` sees every new token and returns whether a stop
    /// string ended the sequence.
    fn run(
        &self,
        prompts: &[Vec<u32>],
        options: &Options,
        on_token: &mut dyn FnMut(usize, u32) -> Result<bool>,
    ) -> Result<Vec<GeneratedIds>> {
        if prompts.is_empty() {
            return Err(Error::EmptyInput);
        }
        options.validate()?;
        let max_new_tokens = options.max_new_tokens();
        let eos = options
            .eos_token_ids
            .as_deref()
            .unwrap_or(&self.generation_config.eos_token_ids);
        let context = self.model.context_length();
        let vocab = self.model.vocab_size();
        let mut seqs = Vec::with_capacity(prompts.len());
        for (index, prompt) in prompts.iter().enumerate() {
            if prompt.is_empty() {
                return Err(Error::BadInput {
                    index,
                    reason: "the prompt has no tokens (the tokenizer adds no BOS token, so an empty prompt cannot be continued)".into(),
                });
            }
            if let Some(&bad) = prompt.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::BadInput {
                    index,
                    reason: format!("token id {bad} is outside the vocabulary of {vocab}"),
                });
            }
            // One position must stay free for the first new token.
            if prompt.len() >= context {
                return Err(Error::ContextLength {
                    index,
                    tokens: prompt.len() + 1,
                    max: context,
                });
            }
            let capacity = (prompt.len() + max_new_tokens).min(context);
            seqs.push(Sequence {
                index,
                tokens: prompt.clone(),
                prompt_len: prompt.len(),
                cache: self.model.new_cache(capacity)?,
                sampler: sampling::Sampler::new(options.sampling),
                finish: None,
            });
        }

        let mut batch = RaggedBatch::from_encodings([]);
        for prompt in prompts {
            batch.push_from(prompt, 0);
        }
        let mut active: Vec<&mut Sequence> = seqs.iter_mut().collect();
        loop {
            let logits = {
                let mut caches: Vec<&mut KvCache> =
                    active.iter_mut().map(|s| &mut s.cache).collect();
                self.model.forward(&batch, &mut caches, Logits::Last)?
            };
            read_logits(&logits, |rows| {
                let vocab = rows.len() / active.len().max(1);
                let mut scratch = Vec::new();
                for (seq, row) in active.iter_mut().zip(rows.chunks_exact(vocab)) {
                    let next = seq.sampler.next_from(row, &seq.tokens, &mut scratch);
                    seq.tokens.push(next);
                    let generated = seq.tokens.len() - seq.prompt_len;
                    let stopped = on_token(seq.index, next)?;
                    if eos.contains(&next) {
                        seq.finish = Some(FinishReason::Eos);
                    } else if stopped {
                        seq.finish = Some(FinishReason::Stop);
                    } else if generated >= max_new_tokens || seq.tokens.len() >= context {
                        seq.finish = Some(FinishReason::Length);
                    }
                }
                Ok(())
            })?;
            active.retain(|s| s.finish.is_none());
            if active.is_empty() {
                break;
            }
            batch = RaggedBatch::from_encodings([]);
            for seq in &active {
                let last = seq.tokens[seq.tokens.len() - 1];
                batch.push_from(&[last], seq.cache.len());
            }
        }
        seqs.sort_by_key(|s| s.index);
        Ok(seqs
            .into_iter()
            .map(|mut s| GeneratedIds {
                token_ids: s.tokens.split_off(s.prompt_len),
                finish_reason: s.finish.unwrap_or(FinishReason::Length),
            })
            .collect())
    }
}

/// `f` over the rows of `logits` `[n, vocab]` as f32, in place when they are a contiguous
/// f32 CPU tensor (a 16-sequence step's are 3 MB: copying them out was 1% of a chat
/// server's time, on the step's serial path), else copied.
pub(crate) fn read_logits<R>(
    logits: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> Result<R>,
) -> Result<R> {
    let logits = logits.to_dtype(DType::F32)?;
    {
        let (storage, layout) = logits.storage_and_layout();
        if let Some(rows) = crate::layers::cpu::kernels::f32s(&storage, layout) {
            return f(rows);
        }
    }
    f(&logits.flatten_all()?.to_vec1::<f32>()?)
}

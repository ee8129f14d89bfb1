//! `text-generation`: transformers' `TextGenerationPipeline` on a causal language model.
//!
//! Each prompt is tokenized (special tokens added, as `tokenizer(prompt)` does), continued
//! by [`crate::generate`] (greedy by default, up to 256 new tokens, stopping at the model's
//! eos ids), and returned as `generated_text`: the prompt followed by the continuation,
//! unless `return_full_text` is off (transformers' `return_full_text=False`). Prompts are
//! generated together in batches of `batch_size`, without padding.

use crate::error::{Error, Result};
use crate::generate::{self, FinishReason, TextGenerator};
use serde::Serialize;

/// How to generate, with transformers' defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Decoding: new tokens, eos ids, stop strings, sampling.
    pub generation: generate::Options,
    /// `generated_text` starts with the prompt (transformers' default, `True`).
    pub return_full_text: bool,
    /// Prompts generated together in one batch.
    pub batch_size: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            generation: generate::Options::default(),
            return_full_text: true,
            batch_size: 8,
        }
    }
}

/// One prompt's result: transformers' `generated_text`, with why generation stopped and the
/// token counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Output {
    pub generated_text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
}

/// Continues every prompt; one output per prompt, in order.
///
/// ```
/// # fn main() -> girder::Result<()> {
/// use girder::pipelines::text_generation::{self, Options};
/// let generator = girder::generate::TextGenerator::load("tests/fixtures/llama-causal-lm")?;
/// let mut options = Options::default();
/// options.generation.max_new_tokens = Some(4);
/// let out = text_generation::run(&generator, &["Hello"], &options)?;
/// assert!(out[0].generated_text.starts_with("Hello"));
/// assert_eq!(out[0].completion_tokens, 4);
/// # Ok(())
/// # }
/// ```
pub fn run<S: AsRef<str>>(
    generator: &TextGenerator,
    prompts: &[S],
    options: &Options,
) -> Result<Vec<Output>> {
    run_window(generator, prompts, 0, options)
}

/// [`run`] on a window of a longer input whose first prompt has index `first_index` (errors
/// name the index in the whole input).
pub fn run_window<S: AsRef<str>>(
    generator: &TextGenerator,
    prompts: &[S],
    first_index: usize,
    options: &Options,
) -> Result<Vec<Output>> {
    if prompts.is_empty() {
        return Err(Error::EmptyInput);
    }
    if options.batch_size == 0 {
        return Err(Error::InvalidOption {
            option: "batch_size".into(),
            reason: "must be at least 1".into(),
        });
    }
    let mut outputs = Vec::with_capacity(prompts.len());
    for (window, batch) in prompts.chunks(options.batch_size).enumerate() {
        let first = first_index + window * options.batch_size;
        let ids = batch
            .iter()
            .enumerate()
            .map(|(i, p)| generator.encode_prompt(p.as_ref(), first + i))
            .collect::<Result<Vec<_>>>()?;
        let generations = generator
            .generate_from_ids(&ids, &options.generation, &mut |_, _| {})
            .map_err(|e| e.offset_index(first))?;
        for (prompt, g) in batch.iter().zip(generations) {
            let generated_text = if options.return_full_text {
                format!("{}{}", prompt.as_ref(), g.text)
            } else {
                g.text
            };
            outputs.push(Output {
                generated_text,
                finish_reason: g.finish_reason,
                prompt_tokens: g.prompt_tokens,
                completion_tokens: g.completion_tokens,
            });
        }
    }
    Ok(outputs)
}

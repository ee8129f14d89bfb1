//! Text-to-text generation, summarization and translation with an encoder-decoder (T5, BART,
//! Marian): transformers 4.x's `Text2TextGenerationPipeline`, `SummarizationPipeline` and
//! `TranslationPipeline` (`pipelines/text2text_generation.py`, removed from transformers 5,
//! whose `generate` they call).
//!
//! Each text gets the task's prefix (config.json's `task_specific_params`: T5's `summarize: `,
//! `translate English to German: `), is tokenized under girder's policy, and generated from
//! with the model's generation settings (where the model sets none, the pipelines' defaults:
//! 4 beams, 256 new tokens at most), the task's `task_specific_params` on top, and the
//! caller's options on top of those. The output is the generated text, special tokens
//! skipped, under transformers' key for the task (`generated_text`, `summary_text`,
//! `translation_text`).

use super::Task;
use crate::batch::plan_batches;
use crate::error::{Error, Result};
use crate::generate::{FinishReason, GeneratedIds, GenerationConfig, Overrides, Seq2SeqGenerator};
use crate::tokenize::Encoded;
use serde::ser::SerializeMap;
use serde::{Serialize, Serializer};

/// The source tokens generated from together at most (one batch of the decoder loop).
const MAX_BATCH_TOKENS: usize = 8192;
/// Inputs generated from together at most.
const MAX_BATCH_INPUTS: usize = 32;

/// New tokens at most when neither the model nor the caller sets a length (the
/// pipelines' default; `max_new_tokens` then takes precedence over a `max_length` given
/// elsewhere, as in transformers).
const PIPELINE_MAX_NEW_TOKENS: usize = 256;

/// Beams when the model's generation settings name none (the pipelines' default).
const PIPELINE_NUM_BEAMS: usize = 4;

/// Options of the three tasks; `Default` is the model's own generation settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// Generation settings on top of the model's and the task's.
    pub generation: Overrides,
    /// The `task_specific_params` entry to apply: `translation_en_to_de`; `None` for the
    /// task's name (`summarization`), or for translation the first `translation_*` entry, as
    /// transformers' `pipeline("translation")` picks it.
    pub task_name: Option<String>,
    /// Put before each text instead of the task's prefix.
    pub prefix: Option<String>,
}

/// One text's output.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// The task, which names the text's key.
    pub task: Task,
    pub text: String,
    /// The generated ids, special tokens included.
    pub token_ids: Vec<u32>,
    pub finish_reason: FinishReason,
    /// The input had more tokens than the model reads and was cut.
    pub truncated: bool,
}

impl Serialize for Output {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry(text_key(self.task), &self.text)?;
        map.serialize_entry("finish_reason", &self.finish_reason)?;
        map.serialize_entry("truncated", &self.truncated)?;
        map.end()
    }
}

/// transformers' output key of the task.
pub fn text_key(task: Task) -> &'static str {
    match task {
        Task::Summarization => "summary_text",
        Task::Translation => "translation_text",
        _ => "generated_text",
    }
}

/// What a task's `task_specific_params` entry says: its prefix and generation settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TaskParams {
    pub prefix: String,
    pub generation: Overrides,
}

/// The `task_specific_params` entry of `task` in the model's config.json (see
/// [`Options::task_name`]); empty when there is none.
pub fn task_params(
    generator: &Seq2SeqGenerator,
    task: Task,
    task_name: Option<&str>,
) -> Result<TaskParams> {
    let (_, config) = generator.files();
    let Some(all) = config
        .raw
        .get("task_specific_params")
        .and_then(|p| p.as_object())
    else {
        return Ok(TaskParams::default());
    };
    let key = match (task_name, task) {
        (Some(name), _) => Some(name.to_string()),
        (None, Task::Translation) => all.keys().find(|k| k.starts_with("translation")).cloned(),
        (None, Task::Summarization) => Some("summarization".into()),
        _ => None,
    };
    let Some(entry) = key
        .as_ref()
        .and_then(|k| all.get(k))
        .and_then(|e| e.as_object())
    else {
        return Ok(TaskParams::default());
    };
    let prefix = entry
        .get("prefix")
        .and_then(|p| p.as_str())
        .unwrap_or_default()
        .to_string();
    // The entry's generation fields girder reads; others (prefix, model-specific keys) are
    // not generation settings.
    const KNOWN: &[&str] = &[
        "max_new_tokens",
        "max_length",
        "min_length",
        "min_new_tokens",
        "do_sample",
        "num_beams",
        "temperature",
        "top_k",
        "top_p",
        "repetition_penalty",
        "length_penalty",
        "early_stopping",
        "no_repeat_ngram_size",
    ];
    let known: serde_json::Map<String, serde_json::Value> = entry
        .iter()
        .filter(|(k, _)| KNOWN.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let generation =
        crate::config::parse_json(&config.path, &serde_json::Value::Object(known).to_string())
            .map_err(|e| match e {
                Error::BadConfig {
                    file,
                    field,
                    reason,
                } => Error::BadConfig {
                    file,
                    field: format!(
                        "task_specific_params.{}.{field}",
                        key.clone().unwrap_or_default()
                    ),
                    reason,
                },
                other => other,
            })?;
    Ok(TaskParams { prefix, generation })
}

/// Runs `task` (text2text-generation, summarization or translation) on every text; one
/// output per text, in input order.
pub fn run<S: AsRef<str>>(
    generator: &Seq2SeqGenerator,
    task: Task,
    texts: &[S],
    options: &Options,
) -> Result<Vec<Output>> {
    run_window(generator, task, texts, 0, options)
}

/// [`run`] on a window of a longer input whose first text has index `first_index` (errors
/// name the index in the whole input).
pub fn run_window<S: AsRef<str>>(
    generator: &Seq2SeqGenerator,
    task: Task,
    texts: &[S],
    first_index: usize,
    options: &Options,
) -> Result<Vec<Output>> {
    let prepared = prepare(generator, task, texts, first_index, options)?;
    let encodings = &prepared.encodings;
    let lengths: Vec<usize> = encodings.iter().map(|e| e.len()).collect();
    let mut generated: Vec<Option<GeneratedIds>> = vec![None; texts.len()];
    for plan in plan_batches(&lengths, MAX_BATCH_TOKENS) {
        for indices in plan.chunks(MAX_BATCH_INPUTS) {
            let batch: Vec<_> = indices.iter().map(|&i| encodings[i].clone()).collect();
            let outs = generator
                .generate_encoded(&batch, &prepared.config, prepared.seed)
                .map_err(|e| renumber(e, indices, first_index))?;
            for (&i, out) in indices.iter().zip(outs) {
                generated[i] = Some(out);
            }
        }
    }
    outputs(
        generator,
        &prepared,
        super::in_input_order(generated),
        first_index,
    )
}

/// A call's texts tokenized (with the task's prefix) and its settings resolved: what a
/// server hands its engine.
#[derive(Debug, Clone)]
pub struct Prepared {
    pub task: Task,
    pub encodings: Vec<Encoded>,
    pub config: GenerationConfig,
    pub seed: u64,
}

/// Tokenizes `texts` (the first of index `first_index` in the whole input) with the task's
/// prefix, and resolves the generation settings: the model's, the task's
/// `task_specific_params`, then `options`.
pub fn prepare<S: AsRef<str>>(
    generator: &Seq2SeqGenerator,
    task: Task,
    texts: &[S],
    first_index: usize,
    options: &Options,
) -> Result<Prepared> {
    if !matches!(
        task,
        Task::Text2TextGeneration | Task::Summarization | Task::Translation
    ) {
        return Err(Error::InvalidOption {
            option: "task".into(),
            reason: format!("{} is not a text-to-text task", task.name()),
        });
    }
    if texts.is_empty() {
        return Err(Error::EmptyInput);
    }
    let params = task_params(generator, task, options.task_name.as_deref())?;
    let prefix = options.prefix.as_deref().unwrap_or(&params.prefix);
    let mut model_config = generator.generation_config().clone();
    // The pipelines' defaults where the model sets nothing of its own (20 tokens and 1 beam
    // are transformers' global defaults, not the model's), as transformers 4.57 adds them.
    if model_config.max_new_tokens.is_none() && model_config.max_length.is_none_or(|m| m == 20) {
        model_config.max_new_tokens = Some(PIPELINE_MAX_NEW_TOKENS);
    }
    if model_config.num_beams == 1 {
        model_config.num_beams = PIPELINE_NUM_BEAMS;
    }
    let config = model_config
        .with(&params.generation)?
        .with(&options.generation)?;
    let prefixed: Vec<String> = texts
        .iter()
        .map(|t| format!("{prefix}{}", t.as_ref()))
        .collect();
    let encodings = generator
        .text_tokenizer()
        .encode_window(&prefixed, first_index)?;
    Ok(Prepared {
        task,
        encodings,
        config,
        seed: options.generation.seed.unwrap_or(0),
    })
}

/// The outputs of `prepared`'s texts from what was generated for each, in order.
pub fn outputs(
    generator: &Seq2SeqGenerator,
    prepared: &Prepared,
    generated: Vec<GeneratedIds>,
    first_index: usize,
) -> Result<Vec<Output>> {
    generated
        .into_iter()
        .zip(&prepared.encodings)
        .enumerate()
        .map(|(i, (out, encoded))| {
            Ok(Output {
                task: prepared.task,
                text: generator.decode(&out.token_ids, first_index + i)?,
                token_ids: out.token_ids,
                finish_reason: out.finish_reason,
                truncated: encoded.truncated,
            })
        })
        .collect()
}

/// An error about input `j` of a batch, renamed as input `first_index + indices[j]` of the
/// whole input.
fn renumber(error: Error, indices: &[usize], first_index: usize) -> Error {
    let whole = |index: usize| first_index + indices.get(index).copied().unwrap_or(index);
    match error {
        Error::BadInput { index, reason } => Error::BadInput {
            index: whole(index),
            reason,
        },
        Error::InputTooLong { index, tokens, max } => Error::InputTooLong {
            index: whole(index),
            tokens,
            max,
        },
        other => other,
    }
}

//! Tasks with the semantics of the transformers pipelines, and [`TASKS`], the one table of
//! them: names, aliases, the kind of model and the heads that serve each. The CLI's `girder
//! run <task>` and the server's routes are derived from it.
//!
//! [`Model`] is a loaded encoder: config, tokenizer (with girder's policy) and weights; a
//! causal language model is a [`TextGenerator`]. Both come from the one loader,
//! [`crate::load`]. Each task module takes the model, texts and a typed `Options` whose
//! `Default` is transformers' default, and returns one output per text, in input order.
//! [`TaskOptions`] and [`TaskOutput`] are any task's options and outputs, for callers that
//! run whichever task they were asked for.

pub mod automatic_speech_recognition;
pub mod embeddings;
pub mod fill_mask;
mod postprocess;
pub mod text2text_generation;
pub mod text_classification;
pub mod text_generation;
pub mod token_classification;

pub use postprocess::PostprocessError;

use crate::batch::{plan_batches, RaggedBatch};
use crate::config::CommonConfig;
use crate::error::{Error, Result};
use crate::generate::{Seq2SeqGenerator, TextGenerator};
use crate::hub::ModelFolder;
use crate::models::{EncoderModel, EncoderOutput, Head, Kind};
use crate::tokenize::{Encoded, TextTokenizer};
use serde::Serialize;

/// The tasks girder runs, with transformers' names (see [`TASKS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Task {
    TextClassification,
    TokenClassification,
    FillMask,
    /// One pooled vector per text.
    Embeddings,
    TextGeneration,
    Text2TextGeneration,
    Summarization,
    /// `translation`, and `translation_xx_to_yy` for models that translate several ways.
    Translation,
    AutomaticSpeechRecognition,
}

/// One row of the task table.
#[derive(Debug)]
pub struct TaskInfo {
    pub task: Task,
    /// transformers' task name.
    pub name: &'static str,
    /// Other names transformers (or sentence-transformers) accepts for it.
    pub aliases: &'static [&'static str],
    /// The kind of model that serves it.
    pub kind: Kind,
    /// The heads that serve it; empty: every model of the kind.
    pub heads: &'static [Head],
    /// One line for `--help`.
    pub summary: &'static str,
}

/// Every task, in the order `--help` lists them.
pub const TASKS: &[TaskInfo] = &[
    TaskInfo {
        task: Task::TextClassification,
        name: "text-classification",
        aliases: &["sentiment-analysis"],
        kind: Kind::Encoder,
        heads: &[Head::SequenceClassification],
        summary: "labels and scores for each text",
    },
    TaskInfo {
        task: Task::TokenClassification,
        name: "token-classification",
        aliases: &["ner"],
        kind: Kind::Encoder,
        heads: &[Head::TokenClassification],
        summary: "entities (labelled spans) in each text",
    },
    TaskInfo {
        task: Task::FillMask,
        name: "fill-mask",
        aliases: &[],
        kind: Kind::Encoder,
        heads: &[Head::MaskedLM],
        summary: "the likeliest tokens for each mask",
    },
    TaskInfo {
        task: Task::Embeddings,
        name: "embeddings",
        aliases: &["feature-extraction", "sentence-similarity"],
        kind: Kind::Encoder,
        // A model with a head still has hidden states to pool.
        heads: &[],
        summary: "one pooled vector per text",
    },
    TaskInfo {
        task: Task::TextGeneration,
        name: "text-generation",
        aliases: &[],
        kind: Kind::Decoder,
        heads: &[Head::CausalLM],
        summary: "a continuation of each prompt",
    },
    TaskInfo {
        task: Task::Text2TextGeneration,
        name: "text2text-generation",
        aliases: &[],
        kind: Kind::EncoderDecoder,
        heads: &[Head::Seq2SeqLM],
        summary: "a text generated from each text (T5's `question: ... context: ...`)",
    },
    TaskInfo {
        task: Task::Summarization,
        name: "summarization",
        aliases: &[],
        kind: Kind::EncoderDecoder,
        heads: &[Head::Seq2SeqLM],
        summary: "a summary of each text",
    },
    TaskInfo {
        task: Task::Translation,
        name: "translation",
        aliases: &[],
        kind: Kind::EncoderDecoder,
        heads: &[Head::Seq2SeqLM],
        summary: "a translation of each text (translation_xx_to_yy picks T5's pair)",
    },
    TaskInfo {
        task: Task::AutomaticSpeechRecognition,
        name: "automatic-speech-recognition",
        aliases: &["asr"],
        kind: Kind::EncoderDecoder,
        heads: &[Head::SpeechSeq2Seq],
        summary: "a transcript of each audio file (WAV, FLAC, MP3, OGG)",
    },
];

impl Task {
    /// Every task, in table order.
    pub fn all() -> impl Iterator<Item = Task> {
        TASKS.iter().map(|t| t.task)
    }

    /// The task's row.
    pub fn info(self) -> &'static TaskInfo {
        TASKS
            .iter()
            .find(|t| t.task == self)
            .expect("every task has a row in TASKS")
    }

    /// transformers' task name.
    pub fn name(self) -> &'static str {
        self.info().name
    }

    /// The kind of model that serves it.
    pub fn kind(self) -> Kind {
        self.info().kind
    }

    /// Parses a task name or one of its aliases.
    ///
    /// ```
    /// use girder::pipelines::Task;
    /// assert_eq!(Task::parse("ner").unwrap(), Task::TokenClassification);
    /// assert_eq!(Task::parse("translation_en_to_de").unwrap(), Task::Translation);
    /// assert!(Task::parse("zero-shot-classification").unwrap_err().to_string().contains("text-generation"));
    /// ```
    pub fn parse(name: &str) -> Result<Task> {
        if translation_pair(name).is_some() {
            return Ok(Task::Translation);
        }
        TASKS
            .iter()
            .find(|t| t.name == name || t.aliases.contains(&name))
            .map(|t| t.task)
            .ok_or_else(|| Error::InvalidOption {
                option: "task".into(),
                reason: format!(
                    "unknown task `{name}`; known: {}",
                    TASKS.iter().map(|t| t.name).collect::<Vec<_>>().join(", ")
                ),
            })
    }

    /// The task a head implies: the task that names it, else the task that every model of
    /// its kind serves (embeddings for a base encoder).
    pub fn for_head(head: Head) -> Task {
        let kind = head.kind();
        TASKS
            .iter()
            .find(|t| t.heads.contains(&head))
            .or_else(|| TASKS.iter().find(|t| t.kind == kind && t.heads.is_empty()))
            .map_or(Task::Embeddings, |t| t.task)
    }

    /// `Ok` when a model of `kind` with `head` (class `class_name`) serves this task;
    /// otherwise an error that names the kinds and heads that do.
    pub fn check(self, kind: Kind, head: Head, class_name: &str) -> Result<()> {
        let info = self.info();
        let mismatch = |reason: String| Error::TaskMismatch {
            model: class_name.to_string(),
            task: info.name.to_string(),
            reason,
        };
        // The registry's classes that serve the task (its families, when any head does).
        let served_by = || {
            let architectures = crate::models::registry::ARCHITECTURES
                .iter()
                .filter(|a| a.kind == info.kind);
            let (heads, names): (String, Vec<&str>) = if info.heads.is_empty() {
                (String::new(), architectures.map(|a| a.name).collect())
            } else {
                let heads: Vec<&str> = info.heads.iter().map(|h| h.name()).collect();
                (
                    format!(" with {}", heads.join(" or ")),
                    architectures
                        .flat_map(|a| a.classes.iter())
                        .filter(|(_, h)| info.heads.contains(h))
                        .map(|(class, _)| *class)
                        .collect(),
                )
            };
            format!(
                "{} is served by {}{heads} ({})",
                info.name,
                info.kind.plural(),
                names.join(", ")
            )
        };
        if kind != info.kind {
            return Err(mismatch(format!(
                "{}; {class_name} is {}",
                served_by(),
                kind.describe()
            )));
        }
        if !info.heads.is_empty() && !info.heads.contains(&head) {
            return Err(mismatch(format!(
                "{}; {class_name} ({}) serves {}",
                served_by(),
                head.name(),
                Task::for_head(head).name()
            )));
        }
        Ok(())
    }
}

/// The languages of a `translation_xx_to_yy` task name.
///
/// ```
/// use girder::pipelines::translation_pair;
/// assert_eq!(translation_pair("translation_en_to_de"), Some(("en", "de")));
/// assert_eq!(translation_pair("translation"), None);
/// ```
pub fn translation_pair(name: &str) -> Option<(&str, &str)> {
    let rest = name.strip_prefix("translation_")?;
    let (source, target) = rest.split_once("_to_")?;
    let valid = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    (valid(source) && valid(target)).then_some((source, target))
}

/// Any task's options: what `girder run` and the server's batcher execute.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOptions {
    TextClassification(text_classification::Options),
    TokenClassification(token_classification::Options),
    FillMask(fill_mask::Options),
    Embeddings(embeddings::Options),
    TextGeneration(text_generation::Options),
    /// text2text-generation, summarization or translation.
    Text2Text(Task, text2text_generation::Options),
    AutomaticSpeechRecognition(automatic_speech_recognition::Options),
}

impl TaskOptions {
    /// The task these options are for.
    pub fn task(&self) -> Task {
        match self {
            TaskOptions::TextClassification(_) => Task::TextClassification,
            TaskOptions::TokenClassification(_) => Task::TokenClassification,
            TaskOptions::FillMask(_) => Task::FillMask,
            TaskOptions::Embeddings(_) => Task::Embeddings,
            TaskOptions::TextGeneration(_) => Task::TextGeneration,
            TaskOptions::Text2Text(task, _) => *task,
            TaskOptions::AutomaticSpeechRecognition(_) => Task::AutomaticSpeechRecognition,
        }
    }

    /// Runs an encoder task on texts already tokenized by `model` (`texts[i]` into
    /// `encodings[i]`), in the forward passes of `plan` ([`Model::plan`]); one output per
    /// text, in order.
    pub fn run_encoded(
        &self,
        model: &Model,
        texts: &[String],
        encodings: &[Encoded],
        plan: &[Vec<usize>],
    ) -> Result<Vec<TaskOutput>> {
        let outputs: Vec<TaskOutput> = match self {
            TaskOptions::TextClassification(o) => {
                text_classification::run_encoded(model, encodings, plan, o)?
                    .into_iter()
                    .map(TaskOutput::TextClassification)
                    .collect()
            }
            TaskOptions::TokenClassification(o) => {
                token_classification::run_encoded(model, texts, encodings, plan, o)?
                    .into_iter()
                    .map(TaskOutput::TokenClassification)
                    .collect()
            }
            TaskOptions::FillMask(o) => fill_mask::run_encoded(model, encodings, plan, o)?
                .into_iter()
                .map(TaskOutput::FillMask)
                .collect(),
            TaskOptions::Embeddings(o) => embeddings::run_encoded(model, encodings, plan, o)?
                .into_iter()
                .map(TaskOutput::Embeddings)
                .collect(),
            other => {
                return other
                    .task()
                    .check(
                        Kind::Encoder,
                        model.encoder.head(),
                        model.encoder.class_name(),
                    )
                    .map(|()| Vec::new())
            }
        };
        // NaN serialises as JSON null: a broken model would answer nulls as if they were
        // scores.
        if let Some(index) = outputs.iter().position(|o| !o.is_finite()) {
            return Err(Error::NonFiniteOutput {
                index,
                model: model.folder.root().to_path_buf(),
            });
        }
        Ok(outputs)
    }

    /// Runs a text-to-text task on texts, the first of index `first_index` in the whole input
    /// (for errors); other tasks are refused with the kind that serves them.
    pub fn run_seq2seq(
        &self,
        generator: &Seq2SeqGenerator,
        texts: &[String],
        first_index: usize,
    ) -> Result<Vec<TaskOutput>> {
        match self {
            TaskOptions::Text2Text(task, o) => Ok(text2text_generation::run_window(
                generator,
                *task,
                texts,
                first_index,
                o,
            )?
            .into_iter()
            .map(TaskOutput::Text2Text)
            .collect()),
            TaskOptions::AutomaticSpeechRecognition(_) => Err(Error::InvalidOption {
                option: "inputs".into(),
                reason: "automatic-speech-recognition reads audio, not texts (pipelines::automatic_speech_recognition::run)".into(),
            }),
            other => other
                .task()
                .check(
                    Kind::EncoderDecoder,
                    generator.model().resolved().head,
                    generator.model().class_name(),
                )
                .map(|()| Vec::new()),
        }
    }

    /// Runs text generation on prompts, the first of index `first_index` in the whole input
    /// (for errors); the encoder tasks are refused with the kind that serves them.
    pub fn run_generation(
        &self,
        generator: &TextGenerator,
        prompts: &[String],
        first_index: usize,
    ) -> Result<Vec<TaskOutput>> {
        match self {
            TaskOptions::TextGeneration(o) => {
                Ok(
                    text_generation::run_window(generator, prompts, first_index, o)?
                        .into_iter()
                        .map(TaskOutput::TextGeneration)
                        .collect(),
                )
            }
            other => other
                .task()
                .check(
                    Kind::Decoder,
                    Head::CausalLM,
                    generator.model().class_name(),
                )
                .map(|()| Vec::new()),
        }
    }
}

/// Any task's output for one text; serialises as that task's output does.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum TaskOutput {
    TextClassification(text_classification::TextResult),
    TokenClassification(token_classification::TextResult),
    FillMask(fill_mask::TextResult),
    Embeddings(embeddings::Output),
    TextGeneration(text_generation::Output),
    Text2Text(text2text_generation::Output),
    AutomaticSpeechRecognition(automatic_speech_recognition::Output),
}

impl TaskOutput {
    /// Whether every score and every component of a vector is a finite number.
    pub fn is_finite(&self) -> bool {
        match self {
            TaskOutput::TextClassification(r) => r
                .best
                .iter()
                .chain(r.labels.iter().flatten())
                .all(|l| l.score.is_finite()),
            TaskOutput::TokenClassification(r) => r.entities.iter().all(|e| match e {
                token_classification::Entity::Token(t) => t.score.is_finite(),
                token_classification::Entity::Group(g) => g.score.is_finite(),
            }),
            TaskOutput::FillMask(r) => match &r.predictions {
                fill_mask::Output::Single(p) => p.iter().all(|p| p.score.is_finite()),
                fill_mask::Output::Multi(p) => p.iter().flatten().all(|p| p.score.is_finite()),
            },
            TaskOutput::Embeddings(o) => o.embedding.iter().all(|x| x.is_finite()),
            TaskOutput::TextGeneration(_)
            | TaskOutput::Text2Text(_)
            | TaskOutput::AutomaticSpeechRecognition(_) => true,
        }
    }
}

/// An encoder loaded for the pipelines: config, tokenizer and weights, built by
/// [`crate::load`] (or its shorthand [`Model::load`]).
#[derive(Debug)]
pub struct Model {
    pub folder: ModelFolder,
    pub config: CommonConfig,
    pub tokenizer: TextTokenizer,
    pub encoder: EncoderModel,
    /// sentence-transformers' configuration, when the folder has modules.json.
    pub sentence: Option<embeddings::SentenceConfig>,
    /// Tokens per forward pass at most.
    pub max_batch_tokens: usize,
    /// Set by a training load (`LoadOptions::training`): the model's tensors, the trained
    /// ones variables.
    pub parameters: Option<crate::hub::Parameters>,
}

impl Model {
    /// The task the model's head implies ([`Task::for_head`]).
    pub fn default_task(&self) -> Task {
        Task::for_head(self.encoder.head())
    }

    /// Tokenizes `texts` under the policy.
    pub fn encode_texts<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Encoded>> {
        self.tokenizer.encode_all(texts)
    }

    /// The forward passes for `encodings`: [`plan_batches`] under
    /// [`Model::max_batch_tokens`], each pass the input indices of its sequences. The one
    /// planner of encoder batches: the CLI plans each window with it, the server's engine
    /// each batch of requests, training each window of features.
    pub fn plan(&self, encodings: &[Encoded]) -> Vec<Vec<usize>> {
        let lengths: Vec<usize> = encodings.iter().map(Encoded::len).collect();
        self.plan_lengths(&lengths)
    }

    /// [`plan`](Self::plan) for sequences of these lengths.
    pub fn plan_lengths(&self, lengths: &[usize]) -> Vec<Vec<usize>> {
        plan_batches(lengths, self.max_batch_tokens)
    }

    /// Runs the base model over `encodings` in the packed batches of `plan` (from
    /// [`plan`](Self::plan)), calling `each` with the input indices of the batch's sequences
    /// (in batch order), the batch and the output. Batches come in the plan's order (by
    /// length), not input order: callers place results by index. An index outside
    /// `encodings` is an error.
    pub fn forward_batches(
        &self,
        encodings: &[Encoded],
        plan: &[Vec<usize>],
        mut each: impl FnMut(&[usize], &RaggedBatch, &EncoderOutput) -> Result<()>,
    ) -> Result<()> {
        for indices in plan {
            if let Some(&bad) = indices.iter().find(|&&i| i >= encodings.len()) {
                return Err(Error::InvalidOption {
                    option: "plan".into(),
                    reason: format!("index {bad} of {} inputs", encodings.len()),
                });
            }
            let batch = RaggedBatch::from_encodings(indices.iter().map(|&i| &encodings[i]));
            let out = self.encoder.encode(&batch)?;
            each(indices, &batch, &out)?;
        }
        Ok(())
    }
}

/// Puts per-index results back in input order.
pub(crate) fn in_input_order<T>(slots: Vec<Option<T>>) -> Vec<T> {
    slots.into_iter().flatten().collect()
}

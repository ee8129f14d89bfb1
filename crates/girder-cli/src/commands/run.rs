//! `girder run <task>`: load the model once, stream the texts through it, print JSON Lines.
//!
//! The tasks are the library's task table ([`TASKS`]); a model of a kind that does not
//! serve the task is refused with the kinds that do. Input is read in windows of
//! [`WINDOW_TEXTS`]; for an encoder a worker thread reads and tokenizes the next window while
//! the model computes the current one, and within a window the library sorts texts by length
//! into batches under `--max-batch-tokens`; text generation continues a window's prompts in
//! batches of `--batch-size`. Results are written in input order as each window completes,
//! so memory stays constant whatever the input size.

use super::generate::GenerationArgs;
use crate::input::TextSource;
use crate::output::JsonLines;
use anyhow::{bail, Context, Result};
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};
use girder::layers::pooling::Pooling;
use girder::pipelines::text_classification::{self as tc, FunctionToApply, TopK};
use girder::pipelines::token_classification::{self as tok, AggregationStrategy};
use girder::pipelines::{embeddings, fill_mask, text_generation, Model, Task, TaskOptions, TASKS};
use girder::pretrained::DEFAULT_MAX_BATCH_TOKENS;
use girder::tokenize::{Encoded, Truncation};
use girder::{LoadOptions, Loaded};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc;

/// Texts per window: enough for the length sort to form full batches, small enough that
/// a window's texts and results are a few megabytes.
const WINDOW_TEXTS: usize = 2048;

/// Every task name and alias of the library's task table.
fn task_names() -> PossibleValuesParser {
    PossibleValuesParser::new(TASKS.iter().flat_map(|t| {
        std::iter::once(clap::builder::PossibleValue::new(t.name).help(t.summary)).chain(
            t.aliases
                .iter()
                .map(|a| clap::builder::PossibleValue::new(*a).hide(true)),
        )
    }))
}

#[derive(Clone, Copy, ValueEnum)]
pub enum PoolingArg {
    Mean,
    Cls,
    Max,
    #[value(name = "lasttoken")]
    LastToken,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FunctionArg {
    Sigmoid,
    Softmax,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum AggregationArg {
    None,
    Simple,
    First,
    Average,
    Max,
}

#[derive(Args)]
pub struct RunArgs {
    /// The task (transformers' name or an alias).
    #[arg(value_parser = task_names())]
    task: String,
    /// A model folder, a hub id (`org/name[@revision]`) in the Hugging Face cache, or (for
    /// text-generation) a `.gguf` file.
    #[arg(long, short)]
    model: String,
    /// Texts; without them, `--input` or one text per line on stdin.
    texts: Vec<String>,
    /// A PEFT LoRA adapter folder (adapter_config.json, adapter_model.safetensors) merged
    /// into the model's weights at load; a classification adapter brings its head.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// A JSON Lines file with a `text` field per line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Pretty-print each result.
    #[arg(long)]
    pretty: bool,
    /// Input limit in tokens (special tokens included); default: the model's real limit.
    #[arg(long)]
    max_length: Option<usize>,
    /// Refuse inputs over the limit instead of truncating them.
    #[arg(long)]
    no_truncate: bool,
    /// Tokens per forward pass at most.
    #[arg(long, default_value_t = DEFAULT_MAX_BATCH_TOKENS)]
    max_batch_tokens: usize,
    /// Run even when the pre-flight check (`girder check`) finds that the tokenizer does not
    /// fit the model; every error is then printed as a warning.
    #[arg(long)]
    allow_mismatch: bool,
    /// text-classification: how many labels (a number, or `all`); default: the best one.
    /// fill-mask: predictions per mask (default 5). text-generation: sample from the k
    /// likeliest tokens.
    #[arg(long)]
    top_k: Option<String>,
    /// text-classification: sigmoid, softmax or none (default: by problem_type and label count).
    #[arg(long, value_enum)]
    function_to_apply: Option<FunctionArg>,
    /// token-classification: how subword predictions become entities.
    #[arg(long, value_enum, default_value = "none")]
    aggregation: AggregationArg,
    /// token-classification: labels to drop, comma-separated (default: O).
    #[arg(long, value_delimiter = ',')]
    ignore_labels: Option<Vec<String>>,
    /// fill-mask: restrict predictions to these words, comma-separated.
    #[arg(long, value_delimiter = ',')]
    targets: Option<Vec<String>>,
    /// embeddings: L2-normalise (default: as modules.json says).
    #[arg(long, conflicts_with = "no_normalize")]
    normalize: bool,
    /// embeddings: do not L2-normalise, even if modules.json says so.
    #[arg(long)]
    no_normalize: bool,
    /// embeddings: pooling (default: 1_Pooling/config.json, else mean).
    #[arg(long, value_enum)]
    pooling: Option<PoolingArg>,
    /// text-generation: `generated_text` without the prompt.
    #[arg(long)]
    no_full_text: bool,
    /// text-generation: prompts generated together in one batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    #[command(flatten)]
    generation: GenerationArgs,
}

/// The task's options from the command line.
fn task_options(task: Task, args: &RunArgs) -> Result<TaskOptions> {
    Ok(match task {
        Task::Embeddings => TaskOptions::Embeddings(embeddings::Options {
            pooling: args.pooling.map(|p| match p {
                PoolingArg::Mean => Pooling::Mean,
                PoolingArg::Cls => Pooling::Cls,
                PoolingArg::Max => Pooling::Max,
                PoolingArg::LastToken => Pooling::LastToken,
            }),
            normalize: match (args.normalize, args.no_normalize) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
        }),
        Task::TextClassification => TaskOptions::TextClassification(tc::Options {
            top_k: match args.top_k.as_deref() {
                None => TopK::NotGiven,
                Some("all") => TopK::All,
                Some(k) => TopK::K(parse_top_k(k)?),
            },
            function_to_apply: args.function_to_apply.map(|f| match f {
                FunctionArg::Sigmoid => FunctionToApply::Sigmoid,
                FunctionArg::Softmax => FunctionToApply::Softmax,
                FunctionArg::None => FunctionToApply::None,
            }),
        }),
        Task::TokenClassification => {
            let mut opts = tok::Options {
                aggregation_strategy: match args.aggregation {
                    AggregationArg::None => AggregationStrategy::None,
                    AggregationArg::Simple => AggregationStrategy::Simple,
                    AggregationArg::First => AggregationStrategy::First,
                    AggregationArg::Average => AggregationStrategy::Average,
                    AggregationArg::Max => AggregationStrategy::Max,
                },
                ..Default::default()
            };
            if let Some(labels) = &args.ignore_labels {
                opts.ignore_labels = labels.clone();
            }
            TaskOptions::TokenClassification(opts)
        }
        Task::FillMask => {
            let mut opts = fill_mask::Options {
                targets: args.targets.clone(),
                ..Default::default()
            };
            if let Some(k) = args.top_k.as_deref() {
                opts.top_k = parse_top_k(k)?;
            }
            TaskOptions::FillMask(opts)
        }
        Task::TextGeneration => {
            let top_k = args.top_k.as_deref().map(parse_top_k).transpose()?;
            TaskOptions::TextGeneration(text_generation::Options {
                generation: args.generation.options(top_k)?,
                return_full_text: !args.no_full_text,
                batch_size: args.batch_size,
            })
        }
    })
}

pub fn run(args: RunArgs) -> Result<()> {
    let task = Task::parse(&args.task)?;
    let task_options = task_options(task, &args)?;
    let options = LoadOptions {
        max_length: args.max_length,
        truncation: if args.no_truncate {
            Truncation::Refuse
        } else {
            Truncation::Truncate
        },
        max_batch_tokens: args.max_batch_tokens,
        adapter: args.adapter.clone(),
        ..LoadOptions::default()
    };
    let loaded = girder::load(&args.model, &options)
        .with_context(|| format!("cannot load model `{}`", args.model))?;
    loaded.supports(task)?;
    super::check::preflight_gate(&loaded, args.allow_mismatch)?;
    let source = TextSource::open(args.texts.clone(), args.input.as_deref())?;
    let out = JsonLines::new(std::io::stdout().lock(), args.pretty);
    match &loaded {
        Loaded::Encoder(model) => run_encoder(model, &task_options, source, out, &args),
        Loaded::Decoder(generator) => {
            let mut source = source;
            let mut out = out;
            let mut total = 0;
            loop {
                let prompts = source.next_window(WINDOW_TEXTS)?;
                if prompts.is_empty() {
                    break;
                }
                for result in task_options.run_generation(generator, &prompts, total)? {
                    out.write(&result)?;
                }
                total += prompts.len();
            }
            if total == 0 {
                bail!(NO_INPUT);
            }
            out.finish()
        }
    }
}

const NO_INPUT: &str =
    "no input texts: pass them as arguments, with --input file.jsonl, or one per line on stdin";

/// Streams windows of texts through an encoder task: a worker thread reads and tokenizes
/// the next window while the model computes the current one.
fn run_encoder<W: std::io::Write>(
    model: &Model,
    task_options: &TaskOptions,
    mut source: TextSource,
    mut out: JsonLines<W>,
    args: &RunArgs,
) -> Result<()> {
    let progress = Progress::new(args.max_batch_tokens);
    std::thread::scope(|scope| -> Result<()> {
        // Bounded: the reader stays at most one window ahead of the model.
        let (windows, ready) = mpsc::sync_channel::<Result<(Vec<String>, Vec<Encoded>)>>(1);
        let tokenizer = &model.tokenizer;
        scope.spawn(move || {
            let mut first_index = 0;
            loop {
                let window = source.next_window(WINDOW_TEXTS).and_then(|texts| {
                    let encodings = tokenizer.encode_window(&texts, first_index)?;
                    Ok((texts, encodings))
                });
                let done = matches!(&window, Ok((texts, _)) if texts.is_empty()) || window.is_err();
                if let Ok((texts, _)) = &window {
                    first_index += texts.len();
                }
                if windows.send(window).is_err() || done {
                    break;
                }
            }
        });
        let mut total = 0;
        for window in ready {
            let (texts, encodings) = window?;
            if texts.is_empty() {
                break;
            }
            progress.start_if_worth_it(&encodings, total > 0);
            for result in
                task_options.run_encoded(model, &texts, &encodings, &model.plan(&encodings))?
            {
                out.write(&result)?;
            }
            total += texts.len();
            progress.advance(texts.len());
        }
        if total == 0 {
            bail!(NO_INPUT);
        }
        Ok(())
    })?;
    progress.finish();
    out.finish()
}

/// A progress line on stderr, only for people (stderr is a terminal) and only when the
/// input takes more than one batch.
struct Progress {
    bar: ProgressBar,
    max_batch_tokens: usize,
}

impl Progress {
    fn new(max_batch_tokens: usize) -> Self {
        Progress {
            bar: ProgressBar::hidden(),
            max_batch_tokens,
        }
    }

    fn start_if_worth_it(&self, window: &[Encoded], more_than_one_window: bool) {
        let tokens: usize = window.iter().map(Encoded::len).sum();
        let visible = std::io::stderr().is_terminal()
            && (more_than_one_window || tokens > self.max_batch_tokens);
        if visible && self.bar.is_hidden() {
            self.bar
                .set_draw_target(indicatif::ProgressDrawTarget::stderr());
            self.bar.set_style(
                ProgressStyle::with_template("{spinner} {pos} texts, {per_sec}, {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
        }
    }

    fn advance(&self, n: usize) {
        self.bar.inc(n as u64);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

fn parse_top_k(value: &str) -> Result<usize> {
    value.parse().with_context(|| {
        format!("--top-k {value:?}: expected a whole number (or `all` for text-classification)")
    })
}

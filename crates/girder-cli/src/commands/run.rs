//! `girder run <task>`: load the model once, stream the texts through it, print JSON Lines.
//!
//! Input is read in windows of [`WINDOW_TEXTS`]; a worker thread reads and tokenizes the
//! next window while the model computes the current one; within a window the library sorts
//! texts by length into batches under `--max-batch-tokens`; results are written in input
//! order as each window completes, so memory stays constant whatever the input size.

use crate::input::TextSource;
use crate::output::JsonLines;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use girder::layers::pooling::Pooling;
use girder::pipelines::text_classification::{self as tc, FunctionToApply, TopK};
use girder::pipelines::token_classification::{self as tok, AggregationStrategy};
use girder::pipelines::{
    embeddings, fill_mask, LoadOptions, Model, Task, DEFAULT_MAX_BATCH_TOKENS,
};
use girder::tokenize::{Encoded, Truncation};
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::mpsc;

/// Texts per window: enough for the length sort to form full batches, small enough that
/// a window's texts and results are a few megabytes.
const WINDOW_TEXTS: usize = 2048;

#[derive(Clone, Copy, ValueEnum)]
pub enum TaskArg {
    #[value(name = "text-classification", alias = "sentiment-analysis")]
    TextClassification,
    #[value(name = "token-classification", alias = "ner")]
    TokenClassification,
    #[value(name = "fill-mask")]
    FillMask,
    #[value(name = "embeddings", alias = "feature-extraction")]
    Embeddings,
}

impl From<TaskArg> for Task {
    fn from(t: TaskArg) -> Task {
        match t {
            TaskArg::TextClassification => Task::TextClassification,
            TaskArg::TokenClassification => Task::TokenClassification,
            TaskArg::FillMask => Task::FillMask,
            TaskArg::Embeddings => Task::Embeddings,
        }
    }
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
    /// The task.
    task: TaskArg,
    /// A model folder, or a hub id (`org/name[@revision]`) in the Hugging Face cache.
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
    /// fill-mask: predictions per mask (default 5).
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
}

/// A task with its options, ready to run on windows of texts.
enum Runner {
    Embeddings(embeddings::Options),
    TextClassification(tc::Options),
    TokenClassification(tok::Options),
    FillMask(fill_mask::Options),
}

impl Runner {
    fn from_args(args: &RunArgs) -> Result<Self> {
        Ok(match Task::from(args.task) {
            Task::Embeddings => Runner::Embeddings(embeddings::Options {
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
            Task::TextClassification => Runner::TextClassification(tc::Options {
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
                Runner::TokenClassification(opts)
            }
            Task::FillMask => {
                let mut opts = fill_mask::Options {
                    targets: args.targets.clone(),
                    ..Default::default()
                };
                if let Some(k) = args.top_k.as_deref() {
                    opts.top_k = parse_top_k(k)?;
                }
                Runner::FillMask(opts)
            }
        })
    }

    /// Runs one window and writes its results in order.
    fn run<W: std::io::Write>(
        &self,
        model: &Model,
        texts: &[String],
        encodings: &[Encoded],
        out: &mut JsonLines<W>,
    ) -> Result<()> {
        match self {
            Runner::Embeddings(o) => embeddings::run_encoded(model, encodings, o)?
                .iter()
                .try_for_each(|r| out.write(r)),
            Runner::TextClassification(o) => tc::run_encoded(model, encodings, o)?
                .iter()
                .try_for_each(|r| out.write(r)),
            Runner::TokenClassification(o) => tok::run_encoded(model, texts, encodings, o)?
                .iter()
                .try_for_each(|r| out.write(r)),
            Runner::FillMask(o) => fill_mask::run_encoded(model, encodings, o)?
                .iter()
                .try_for_each(|r| out.write(r)),
        }
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let runner = Runner::from_args(&args)?;
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
    let model = Model::load(&args.model, &options)
        .with_context(|| format!("cannot load model `{}`", args.model))?;
    super::check::preflight_gate(&model, args.allow_mismatch)?;
    let mut source = TextSource::open(args.texts.clone(), args.input.as_deref())?;
    let mut out = JsonLines::new(std::io::stdout().lock(), args.pretty);
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
            runner.run(&model, &texts, &encodings, &mut out)?;
            total += texts.len();
            progress.advance(texts.len());
        }
        if total == 0 {
            bail!("no input texts: pass them as arguments, with --input file.jsonl, or one per line on stdin");
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

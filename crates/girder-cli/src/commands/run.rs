//! `girder run <task>`: load a model once, run the task over every text, print JSON Lines.

use crate::input::read_texts;
use crate::output::JsonLines;
use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use girder::layers::pooling::Pooling;
use girder::pipelines::text_classification::{self as tc, FunctionToApply, TopK};
use girder::pipelines::token_classification::{self as tok, AggregationStrategy};
use girder::pipelines::{embeddings, fill_mask, LoadOptions, Model, Task};
use girder::tokenize::Truncation;
use std::path::PathBuf;

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

pub fn run(args: RunArgs) -> Result<()> {
    let texts = read_texts(&args.texts, args.input.as_deref())?;
    let options = LoadOptions {
        max_length: args.max_length,
        truncation: if args.no_truncate {
            Truncation::Refuse
        } else {
            Truncation::Truncate
        },
        ..LoadOptions::default()
    };
    let model = Model::load(&args.model, &options)
        .with_context(|| format!("cannot load model `{}`", args.model))?;
    let mut out = JsonLines::new(std::io::stdout().lock(), args.pretty);
    match Task::from(args.task) {
        Task::Embeddings => {
            let opts = embeddings::Options {
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
            };
            for o in embeddings::run(&model, &texts, &opts)? {
                out.write(&o)?;
            }
        }
        Task::TextClassification => {
            let opts = tc::Options {
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
            };
            for o in tc::run(&model, &texts, &opts)? {
                out.write(&o)?;
            }
        }
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
            if let Some(labels) = args.ignore_labels {
                opts.ignore_labels = labels;
            }
            for o in tok::run(&model, &texts, &opts)? {
                out.write(&o)?;
            }
        }
        Task::FillMask => {
            let mut opts = fill_mask::Options {
                targets: args.targets,
                ..Default::default()
            };
            if let Some(k) = args.top_k.as_deref() {
                opts.top_k = parse_top_k(k)?;
            }
            for o in fill_mask::run(&model, &texts, &opts)? {
                out.write(&o)?;
            }
        }
    }
    out.finish()
}

fn parse_top_k(value: &str) -> Result<usize> {
    value.parse().with_context(|| {
        format!("--top-k {value:?}: expected a whole number (or `all` for text-classification)")
    })
}

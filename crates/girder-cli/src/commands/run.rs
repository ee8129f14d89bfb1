//! `girder run <task>`: load the model once, stream the texts through it, print JSON Lines.
//!
//! The tasks are the library's task table ([`TASKS`]); a model of a kind that does not
//! serve the task is refused with the kinds that do. Input is read in windows of
//! [`WINDOW_TEXTS`]; for an encoder a worker thread reads and tokenizes the next window while
//! the model computes the current one, and within a window the library sorts texts by length
//! into batches under `--max-batch-tokens`; text generation continues a window's prompts in
//! batches of `--batch-size`; an encoder-decoder's texts are generated from in batches the
//! library forms, and speech recognition reads each audio file in 30 s windows. Results are
//! written in input order as each window completes, so memory stays constant whatever the
//! input size.

use super::generate::GenerationArgs;
use super::precision::PrecisionArgs;
use crate::input::TextSource;
use crate::output::JsonLines;
use anyhow::{bail, Context, Result};
use clap::builder::PossibleValuesParser;
use clap::{Args, ValueEnum};
use girder::generate::{EarlyStopping, Overrides};
use girder::layers::pooling::Pooling;
use girder::pipelines::automatic_speech_recognition::{self as asr, AudioInput};
use girder::pipelines::text_classification::{self as tc, FunctionToApply, TopK};
use girder::pipelines::token_classification::{self as tok, AggregationStrategy};
use girder::pipelines::{
    embeddings, fill_mask, text2text_generation, text_generation, translation_pair, Model, Task,
    TaskOptions, TASKS,
};
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

/// A task name of the library's task table (an alias, or `translation_xx_to_yy`, is taken
/// too); `--help` lists the names.
#[derive(Clone)]
struct TaskName;

impl clap::builder::TypedValueParser for TaskName {
    type Value = String;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<String, clap::Error> {
        let name = value.to_string_lossy().to_string();
        if Task::parse(&name).is_ok() {
            return Ok(name);
        }
        // Not a task: clap's own error, listing the names.
        let names = PossibleValuesParser::new(TASKS.iter().map(|t| t.name));
        names.parse_ref(cmd, arg, value)
    }

    fn possible_values(
        &self,
    ) -> Option<Box<dyn Iterator<Item = clap::builder::PossibleValue> + '_>> {
        Some(Box::new(TASKS.iter().map(|t| {
            clap::builder::PossibleValue::new(t.name).help(t.summary)
        })))
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
    /// The task (transformers' name or an alias; translation_xx_to_yy picks a T5 language
    /// pair).
    #[arg(value_parser = TaskName)]
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
    precision: PrecisionArgs,
    #[command(flatten)]
    generation: GenerationArgs,
    #[command(flatten)]
    seq2seq: Seq2SeqArgs,
}

/// Options of the encoder-decoder tasks (translation, summarization, text2text-generation,
/// automatic-speech-recognition), with transformers' names; unset ones keep the model's
/// generation_config.json.
#[derive(Args)]
pub struct Seq2SeqArgs {
    /// Beams of beam search (1: greedy).
    #[arg(long)]
    num_beams: Option<usize>,
    /// A finished beam scores its log-probability over `length ** length_penalty`.
    #[arg(long, allow_negative_numbers = true)]
    length_penalty: Option<f32>,
    /// When beam search stops: true (num_beams hypotheses finished), false (transformers'
    /// heuristic) or never.
    #[arg(long)]
    early_stopping: Option<EarlyStopping>,
    /// No n-gram of this size is generated twice.
    #[arg(long)]
    no_repeat_ngram_size: Option<usize>,
    /// The output's minimum length in tokens (the decoder start token included).
    #[arg(long)]
    min_length: Option<usize>,
    /// The output's maximum length in tokens (the decoder start token included).
    #[arg(long)]
    max_output_length: Option<usize>,
    /// automatic-speech-recognition: segments with their start and end times.
    #[arg(long)]
    return_timestamps: bool,
    /// automatic-speech-recognition: the spoken language of a multilingual model (default:
    /// detected).
    #[arg(long)]
    language: Option<String>,
    /// automatic-speech-recognition: transcribe or translate (to English), multilingual models.
    #[arg(long = "task", id = "asr_task")]
    asr_task: Option<String>,
    /// automatic-speech-recognition: windows of this many seconds (default: 30 s windows for
    /// audio longer than 30 s).
    #[arg(long)]
    chunk_length_s: Option<f32>,
    /// automatic-speech-recognition: the overlap of windows in seconds, one value or
    /// left,right (default: chunk_length_s / 6).
    #[arg(long, value_delimiter = ',')]
    stride_length_s: Option<Vec<f32>>,
    /// text2text tasks: put this before each text instead of the task's prefix.
    #[arg(long)]
    prefix: Option<String>,
    /// automatic-speech-recognition: text the transcript continues (names, spellings), given
    /// to Whisper after <|startofprev|>.
    #[arg(long)]
    prompt: Option<String>,
}

impl Seq2SeqArgs {
    /// The generation overrides of these options and the shared generation ones.
    fn overrides(&self, generation: &GenerationArgs, top_k: Option<usize>) -> Result<Overrides> {
        if !generation.stop.is_empty() {
            bail!("--stop is for text-generation; encoder-decoder tasks end at eos or a length");
        }
        if generation.min_p.is_some() {
            bail!("--min-p is for text-generation; encoder-decoder tasks sample with --temperature, --top-k and --top-p");
        }
        let samples = top_k.is_some() || generation.top_p.is_some() || generation.seed.is_some();
        let temperature = generation
            .temperature
            .unwrap_or(if samples { 1.0 } else { 0.0 });
        Ok(Overrides {
            max_new_tokens: generation.max_new_tokens,
            max_length: self.max_output_length,
            min_length: self.min_length,
            num_beams: self.num_beams,
            length_penalty: self.length_penalty,
            early_stopping: self.early_stopping,
            no_repeat_ngram_size: self.no_repeat_ngram_size,
            repetition_penalty: generation.repetition_penalty,
            eos_token_ids: generation.eos_token_id.clone(),
            do_sample: (temperature > 0.0).then_some(true),
            temperature: (temperature > 0.0).then_some(temperature),
            top_k,
            top_p: generation.top_p,
            seed: generation.seed,
            ..Overrides::default()
        })
    }
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
        Task::Text2TextGeneration | Task::Summarization | Task::Translation => {
            let top_k = args.top_k.as_deref().map(parse_top_k).transpose()?;
            TaskOptions::Text2Text(
                task,
                text2text_generation::Options {
                    generation: args.seq2seq.overrides(&args.generation, top_k)?,
                    task_name: translation_pair(&args.task).map(|_| args.task.clone()),
                    prefix: args.seq2seq.prefix.clone(),
                },
            )
        }
        Task::AutomaticSpeechRecognition => {
            let top_k = args.top_k.as_deref().map(parse_top_k).transpose()?;
            let a = &args.seq2seq;
            TaskOptions::AutomaticSpeechRecognition(asr::Options {
                return_timestamps: a.return_timestamps,
                language: a.language.clone(),
                task: a.asr_task.clone(),
                chunk_length_s: a.chunk_length_s,
                stride_length_s: match a.stride_length_s.as_deref() {
                    None => None,
                    Some([both]) => Some((*both, *both)),
                    Some([left, right]) => Some((*left, *right)),
                    Some(_) => bail!("--stride-length-s takes one value or left,right"),
                },
                prompt: a.prompt.clone(),
                generation: a.overrides(&args.generation, top_k)?,
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
    let loaded = args.precision.load(&args.model, &options, "run")?;
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
        Loaded::EncoderDecoder(generator) => {
            let mut source = source;
            let mut out = out;
            let mut total = 0;
            loop {
                // Audio files are transcribed one at a time (each in windows); texts in
                // windows the library batches.
                let window = if task == Task::AutomaticSpeechRecognition {
                    1
                } else {
                    WINDOW_TEXTS
                };
                let texts = source.next_window(window)?;
                if texts.is_empty() {
                    break;
                }
                let results = match &task_options {
                    TaskOptions::AutomaticSpeechRecognition(options) => {
                        let inputs: Vec<AudioInput> = texts.iter().map(asr::file).collect();
                        asr::run(generator, &inputs, options)?
                            .into_iter()
                            .map(girder::pipelines::TaskOutput::AutomaticSpeechRecognition)
                            .collect()
                    }
                    other => other.run_seq2seq(generator, &texts, total)?,
                };
                for result in results {
                    out.write(&result)?;
                }
                total += texts.len();
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

//! `girder generate`: continue prompts with a causal language model, print JSON Lines (or
//! the text as it is generated, with `--stream`). `girder chat` shares the options.

use crate::input::read_texts;
use crate::output::JsonLines;
use anyhow::{Context, Result};
use clap::Args;
use girder::generate::{Options, Sampling, TextGenerator};
use girder::pretrained::GgufMode;
use girder::LoadOptions;
use std::io::Write;
use std::path::PathBuf;

/// How to decode: shared by `generate`, `chat` and `run text-generation`. `--top-k` is not
/// here: `run` gives it to the classification tasks too, so each command declares it.
#[derive(Args)]
pub struct GenerationArgs {
    /// New tokens per prompt, at most (default 256).
    #[arg(long)]
    pub max_new_tokens: Option<usize>,
    /// Token ids that end a sequence, comma-separated (default: the model's eos ids).
    #[arg(long, value_delimiter = ',')]
    pub eos_token_id: Option<Vec<u32>>,
    /// A string that ends generation (repeatable); the text stops before it.
    #[arg(long)]
    pub stop: Vec<String>,
    /// Sampling temperature; 0 (the default) is greedy. Giving --top-k, --top-p, --min-p or
    /// --seed without it samples at 1.0.
    #[arg(long, allow_negative_numbers = true)]
    pub temperature: Option<f32>,
    /// Sample from the smallest set of tokens whose probability reaches p.
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than min-p times the most likely one.
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalise tokens already present (1.0: off); applies to greedy decoding too.
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Seed of the sampler (default 0): the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
}

impl GenerationArgs {
    /// The options, with `top_k` (sample from the k likeliest tokens; 0: all).
    pub fn options(&self, top_k: Option<usize>) -> Result<Options> {
        let samples =
            top_k.is_some() || self.top_p.is_some() || self.min_p.is_some() || self.seed.is_some();
        let default = Sampling::default();
        let options = Options {
            max_new_tokens: self.max_new_tokens,
            eos_token_ids: self.eos_token_id.clone(),
            stop: self.stop.clone(),
            sampling: Sampling {
                temperature: self.temperature.unwrap_or(if samples { 1.0 } else { 0.0 }),
                top_k: top_k.unwrap_or(default.top_k),
                top_p: self.top_p.unwrap_or(default.top_p),
                min_p: self.min_p.unwrap_or(default.min_p),
                repetition_penalty: self
                    .repetition_penalty
                    .unwrap_or(default.repetition_penalty),
                seed: self.seed.unwrap_or(default.seed),
            },
        };
        options.validate()?;
        Ok(options)
    }
}

/// The model and how to decode: shared by `generate` and `chat`.
#[derive(Args)]
pub struct ModelArgs {
    /// A model folder, a hub id (`org/name[@revision]`) in the Hugging Face cache, or a
    /// `.gguf` file.
    #[arg(long, short)]
    pub model: String,
    /// GGUF: dequantize every tensor to f32 instead of multiplying quantized weights.
    #[arg(long)]
    pub dequantize: bool,
    /// Sample from the k most likely tokens (0: all).
    #[arg(long)]
    pub top_k: Option<usize>,
    #[command(flatten)]
    pub generation: GenerationArgs,
    #[command(flatten)]
    pub precision: super::precision::PrecisionArgs,
}

impl ModelArgs {
    /// Loads the model (after the accuracy report under `--dtype`/`--quantize`); `work`
    /// names the command in messages.
    pub fn load(&self, work: &str) -> Result<TextGenerator> {
        let options = LoadOptions {
            gguf: if self.dequantize {
                GgufMode::Dequantized
            } else {
                GgufMode::Quantized
            },
            ..LoadOptions::default()
        };
        let loaded = self.precision.load(&self.model, &options, work)?;
        anyhow::ensure!(
            !self.dequantize || loaded.files().is_none(),
            "--dequantize applies to .gguf files; `{}` is a model folder (its weights are f32)",
            self.model
        );
        loaded
            .into_decoder()
            .with_context(|| format!("cannot load model `{}`", self.model))
    }

    pub fn options(&self) -> Result<Options> {
        self.generation.options(self.top_k)
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompts; without them, `--input` or one prompt per line on stdin.
    prompts: Vec<String>,
    /// A JSON Lines file with a `text` field per line.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Prompts generated together in one batch.
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Print the text as it is generated (prompts one after another) instead of JSON Lines.
    #[arg(long)]
    stream: bool,
    /// Pretty-print each result.
    #[arg(long)]
    pretty: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let prompts = read_texts(&args.prompts, args.input.as_deref())?;
    let options = args.model.options()?;
    let generator = args.model.load("generate")?;
    if args.stream {
        let mut stdout = std::io::stdout().lock();
        for (i, prompt) in prompts.iter().enumerate() {
            let ids = generator.encode_prompt(prompt, i)?;
            let mut failed = None;
            generator.generate_from_ids(&[ids], &options, &mut |_, text| {
                if failed.is_none() {
                    failed = write!(stdout, "{text}").and_then(|_| stdout.flush()).err();
                }
            })?;
            if let Some(e) = failed {
                return Err(e).context("cannot write to stdout");
            }
            writeln!(stdout)?;
        }
        return Ok(());
    }
    let mut out = JsonLines::new(std::io::stdout().lock(), args.pretty);
    for window in prompts.chunks(args.batch_size) {
        for generation in generator.generate(window, &options)? {
            out.write(&generation)?;
        }
    }
    out.finish()
}

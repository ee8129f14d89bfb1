//! The `girder` command: run transformers pipelines on local or cached Hugging Face models.

mod commands;
mod input;
mod output;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

// glibc returns large freed tensors to the OS and page-faults them back on the next
// forward pass; mimalloc keeps them (issue 5 measured 38% of time in page faults).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` of mimalloc.h (the same index in mimalloc v2 and v3);
/// libmimalloc-sys names no constant for it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Runs a model load with freed pages handed back to the OS at once, then keeps pages again
/// (see `main`). A load frees more than it keeps: each weight is copied out of the file and
/// transposed or quantized, and the f32 model the accuracy report runs is dropped whole.
/// Kept, those pages would count in the process's memory for its lifetime (about 100 MiB
/// for all-mpnet-base-v2 quantized to Q8_0).
pub fn returning_freed_memory<T>(load: impl FnOnce() -> T) -> T {
    // SAFETY: process-wide allocator options, and a collection of mimalloc's own free lists.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    let loaded = load();
    unsafe {
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    loaded
}

#[derive(Parser)]
#[command(
    name = "girder",
    version,
    about = "Hugging Face transformers pipelines in Rust, with guard rails"
)]
struct Cli {
    /// Use only the Hugging Face cache: download nothing (as HF_HUB_OFFLINE=1).
    #[arg(long, global = true)]
    offline: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline over texts and print one JSON object per text (JSON Lines).
    Run(Box<commands::run::RunArgs>),
    /// Generate text with a causal language model (greedy by default).
    Generate(commands::generate::GenerateArgs),
    /// Chat with a model interactively: its chat template is applied and replies stream.
    Chat(commands::chat::ChatArgs),
    /// Time one workload of the encoder benchmark (see scripts/bench-encoders).
    Bench(commands::bench::BenchArgs),
    /// Check that a tokenizer fits its model (and, with --lock, that nothing drifted).
    /// Exit 0: no error; 1: an error; 2: the check could not run.
    Check(commands::check::CheckArgs),
    /// Pin the tokenizer and the probe's results for a later `girder check --lock`.
    Lock(commands::lock::LockArgs),
    /// Serve a model over HTTP: batched encoder endpoints, OpenAI /v1/embeddings and
    /// /v1/(chat/)completions with continuous batching, metrics.
    Serve(commands::serve::ServeArgs),
    /// Fine-tune a base model on labelled data and write a folder transformers loads.
    Train(commands::train::TrainArgs),
    /// Score a text-classification model on labelled data: accuracy, macro F1, confusion matrix.
    Eval(commands::train::EvalArgs),
    /// Write a model in fewer bits after the accuracy report against f32 accepts it: a
    /// LLaMA, Mistral or Qwen2 decoder quantized (q8_0 … q4_0) as a GGUF file llama.cpp and
    /// girder load, or any model as a bf16/f16 safetensors folder.
    Quantize(commands::quantize::QuantizeArgs),
    /// Convert a model from another engine's format (CTranslate2 Whisper) into a Hugging
    /// Face folder.
    Convert(commands::convert::ConvertArgs),
    /// Download a model from the Hugging Face Hub into the cache and print its folder.
    Download(commands::download::DownloadArgs),
    /// List or delete models in the Hugging Face cache.
    Cache(commands::cache::CacheArgs),
}

impl Command {
    fn is_server(&self) -> bool {
        matches!(self, Command::Serve(_))
    }
}

fn main() -> ExitCode {
    // mimalloc hands freed pages back to the OS after 10 ms by default, and every forward
    // pass then page-faults them in again (perf: 7,049 page faults against 1,897 without
    // purging, for 12 passes of 32 sentences). Keep them.
    // SAFETY: sets a process-wide allocator option before any model work starts.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    // candle asks for its thread count on every matmul and, unless RAYON_NUM_THREADS is set,
    // counts physical cores by reading /proc/cpuinfo each time (perf: 1-3% of a short
    // forward pass spent in the kernel formatting that file). Decide once.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var(
            "RAYON_NUM_THREADS",
            candle_core::utils::get_num_threads().to_string(),
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GIRDER_LOG")
                // symphonia logs its probe's failures as errors; girder reports the file's
                // error itself, once, naming the file.
                .unwrap_or_else(|_| "warn,symphonia_core=off,symphonia=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if cli.offline {
        // The library reads the switch huggingface_hub reads.
        // SAFETY: set before any thread is started.
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    if !cli.command.is_server() {
        // A command whose output is piped into `head` should end quietly when the pipe
        // closes, as Unix tools do; Rust ignores SIGPIPE and would panic in println! instead.
        // A server keeps ignoring it: a client hanging up must not end the process.
        // SAFETY: restores the default disposition before any thread is started.
        #[cfg(unix)]
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    let result = match cli.command {
        Command::Run(args) => commands::run::run(*args),
        Command::Generate(args) => commands::generate::run(args),
        Command::Chat(args) => commands::chat::run(args),
        Command::Bench(args) => commands::bench::run(args),
        Command::Check(args) => return commands::check::run(args),
        Command::Lock(args) => commands::lock::run(args),
        Command::Serve(args) => commands::serve::run(args),
        Command::Train(args) => commands::train::run(args),
        Command::Eval(args) => commands::train::eval(args),
        Command::Quantize(args) => commands::quantize::run(args),
        Command::Convert(args) => commands::convert::run(args),
        Command::Download(args) => commands::download::run(args),
        Command::Cache(args) => commands::cache::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line: the chain of causes joined, so the file/field/tensor at fault is visible.
            let mut message = err.to_string();
            for cause in err.chain().skip(1) {
                message.push_str(": ");
                message.push_str(&cause.to_string());
            }
            eprintln!("error: {}", message.replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}

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

#[derive(Parser)]
#[command(
    name = "girder",
    version,
    about = "Hugging Face transformers pipelines in Rust, with guard rails"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a pipeline over texts and print one JSON object per text (JSON Lines).
    Run(commands::run::RunArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GIRDER_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => commands::run::run(args),
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

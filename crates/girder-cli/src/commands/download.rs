//! `girder download`: fetch a hub repository (or one file of it) into the Hugging Face cache
//! and print where it lies. What `huggingface-cli download` does, with the same cache.

use anyhow::{bail, Result};
use clap::Args;
use girder::hub::{FileSelection, HubClient, ModelRef};

#[derive(Args)]
pub struct DownloadArgs {
    /// `org/name[@revision]` (a branch, tag or commit; `main` when absent), or
    /// `org/name[@revision]/file.gguf` for one GGUF file.
    reference: String,
    /// Only files matching this glob (repeatable; `*` also matches `/`). Without it, the
    /// files girder loads: config, tokenizer, safetensors weights.
    #[arg(long)]
    include: Vec<String>,
    /// Leave out files matching this glob (repeatable).
    #[arg(long)]
    exclude: Vec<String>,
}

pub fn run(args: DownloadArgs) -> Result<()> {
    let client = HubClient::from_env();
    let path = match ModelRef::parse(&args.reference) {
        ModelRef::Hub { repo_id, revision } => {
            let selection = if args.include.is_empty() && args.exclude.is_empty() {
                FileSelection::Model
            } else {
                FileSelection::Patterns {
                    include: args.include,
                    exclude: args.exclude,
                }
            };
            client.snapshot(&repo_id, revision.as_deref().unwrap_or("main"), &selection)?
        }
        ModelRef::HubFile {
            repo_id,
            revision,
            file,
        } => client.file(&repo_id, revision.as_deref().unwrap_or("main"), &file)?,
        ModelRef::Path(path) => bail!(
            "`{}` is not a hub id: expected org/name[@revision] or org/name[@revision]/file.gguf",
            path.display()
        ),
    };
    println!("{}", path.display());
    Ok(())
}

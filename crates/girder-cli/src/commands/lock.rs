//! `girder lock`: pin the model's identity (class, head, labels, weight fingerprint), the
//! tokenizer's fingerprint, the probe's token ids and (for classifiers) the label
//! distribution, for `girder check --lock` to compare with later.

use super::check::{gate, load, read_probe};
use anyhow::Result;
use clap::Args;
use girder::check::{self, lock, CheckOptions};
use std::path::PathBuf;

#[derive(Args)]
pub struct LockArgs {
    /// A model folder, or a hub id (`org/name[@revision]`) in the Hugging Face cache.
    #[arg(long, short)]
    model: String,
    /// Pin this tokenizer (a folder or hub id) instead of the model's own.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Probe texts: one per line (or a .jsonl file with a `text` field); default: built in.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Where to write the lock.
    #[arg(long, default_value = "girder.lock")]
    out: PathBuf,
    /// Pin even when the pre-flight check finds errors.
    #[arg(long)]
    allow_mismatch: bool,
}

pub fn run(args: LockArgs) -> Result<()> {
    let probe = read_probe(args.probe.as_deref())?;
    let loaded = load(&args.model, args.tokenizer.as_deref())?;
    let subject = check::lock_subject(&loaded)?;
    let options = CheckOptions {
        probe,
        ..CheckOptions::default()
    };
    let texts = check::probe_texts(&options);
    let report = check::preflight_subject(&subject, &texts)?;
    gate(&report, args.allow_mismatch, "pin", false)?;
    let pinned = lock::create(&subject, &texts)?;
    lock::write(&pinned, &args.out)?;
    println!(
        "wrote {}: {}{}, {} probe texts, tokenizer sha256 {}{}",
        args.out.display(),
        pinned.model_class,
        pinned
            .model
            .as_ref()
            .map(|m| format!(
                " ({}, weights sha256 {})",
                m.head,
                m.weights.sha256.get(..12).unwrap_or_default()
            ))
            .unwrap_or_default(),
        pinned.probe.len(),
        pinned.tokenizer.sha256.get(..12).unwrap_or_default(),
        pinned
            .classifier
            .as_ref()
            .map(|c| format!(", label distribution over {}", c.labels.join("/")))
            .unwrap_or_default()
    );
    Ok(())
}

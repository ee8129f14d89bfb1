//! `girder cache`: list and delete what the Hugging Face cache holds, as `hf cache ls` and
//! `hf cache rm` do, for models girder or Python downloaded.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use girder::hub::{HubCache, ModelRef};
use std::time::SystemTime;

#[derive(Args)]
pub struct CacheArgs {
    #[command(subcommand)]
    command: CacheCommand,
}

#[derive(Subcommand)]
enum CacheCommand {
    /// List the cached repositories: size, files, last change, refs, folder.
    Ls {
        /// One line per snapshot (commit) instead of per repository.
        #[arg(long)]
        revisions: bool,
    },
    /// Delete a cached model (`org/name`) or one of its revisions (`org/name@rev`, a branch,
    /// tag or commit): the snapshot, its refs, and the blobs no other snapshot uses.
    Rm {
        reference: String,
        /// Print what would be deleted and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(args: CacheArgs) -> Result<()> {
    let cache = HubCache::from_env();
    match args.command {
        CacheCommand::Ls { revisions } => list(&cache, revisions),
        CacheCommand::Rm { reference, dry_run } => {
            let ModelRef::Hub { repo_id, revision } = ModelRef::parse(&reference) else {
                bail!("`{reference}` is not a hub id: expected org/name or org/name@revision");
            };
            let removal = cache.remove(&repo_id, revision.as_deref(), dry_run)?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for path in &removal.paths {
                eprintln!("{verb} {}", path.display());
            }
            println!(
                "{verb} {} path(s) of {reference}, {} freed",
                removal.paths.len(),
                human_size(removal.freed)
            );
            Ok(())
        }
    }
}

fn list(cache: &HubCache, revisions: bool) -> Result<()> {
    let repos = cache.scan()?;
    let mut rows = vec![if revisions {
        ["REPO ID", "REVISION", "SIZE", "FILES", "REFS", "PATH"].map(String::from)
    } else {
        ["REPO ID", "TYPE", "SIZE", "FILES", "LAST MODIFIED", "REFS"].map(String::from)
    }];
    for repo in &repos {
        if revisions {
            for rev in &repo.revisions {
                rows.push([
                    repo.repo_id.clone(),
                    rev.commit.clone(),
                    human_size(rev.size),
                    rev.files.to_string(),
                    rev.refs.join(","),
                    rev.path.display().to_string(),
                ]);
            }
        } else {
            let mut refs: Vec<String> =
                repo.revisions.iter().flat_map(|r| r.refs.clone()).collect();
            refs.sort();
            rows.push([
                repo.repo_id.clone(),
                repo.repo_type.clone(),
                human_size(repo.size_on_disk),
                repo.files.to_string(),
                repo.last_modified.map(ago).unwrap_or_default(),
                refs.join(","),
            ]);
        }
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in &rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    let total: u64 = repos.iter().map(|r| r.size_on_disk).sum();
    eprintln!(
        "{} repo(s), {} on disk in {}",
        repos.len(),
        human_size(total),
        cache.root().display()
    );
    Ok(())
}

/// 827B, 1.2K, 3.4M, 5.6G: decimal units, as `hf cache ls` prints them.
fn human_size(bytes: u64) -> String {
    let units = ["", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.1}{}", units[unit])
    }
}

fn ago(time: SystemTime) -> String {
    let seconds = SystemTime::now()
        .duration_since(time)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (count, unit) = match seconds {
        0..60 => return "just now".into(),
        60..3600 => (seconds / 60, "minute"),
        3600..86400 => (seconds / 3600, "hour"),
        _ => (seconds / 86400, "day"),
    };
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural} ago")
}

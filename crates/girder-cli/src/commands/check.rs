//! `girder check`: the pre-flight guard. Prints the report (or `--json`), exits 0 when no
//! finding is an error, 1 when one is, 2 when the check could not run (a model that does
//! not load, an unreadable probe or lock file).

use anyhow::{Context, Result};
use clap::Args;
use girder::check::{self, lock, CheckOptions, Report, Severity};
use girder::{LoadOptions, Loaded};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

#[derive(Args)]
pub struct CheckArgs {
    /// A model folder, a hub id (`org/name[@revision]`) in the Hugging Face cache, or a
    /// `.gguf` file.
    #[arg(long, short)]
    model: String,
    /// Check this tokenizer (a folder or hub id) against the model instead of its own.
    #[arg(long)]
    tokenizer: Option<String>,
    /// Print `{"ok": bool, "findings": [{"severity", "code", "message", "fix"}]}`.
    #[arg(long)]
    json: bool,
    /// Probe texts: one per line (or a .jsonl file with a `text` field); default: built in.
    #[arg(long)]
    probe: Option<PathBuf>,
    /// Compare with a lock file written by `girder lock` and report any drift.
    #[arg(long)]
    lock: Option<PathBuf>,
    /// Licenses that fail the check, comma-separated (e.g. cc-by-nc-4.0,cc-by-nc-sa-4.0).
    #[arg(long, value_delimiter = ',')]
    deny_license: Vec<String>,
    /// Languages the model card must list, comma-separated (e.g. en).
    #[arg(long, value_delimiter = ',')]
    require_language: Vec<String>,
}

/// Exit code when the check could not run.
const COULD_NOT_RUN: u8 = 2;

pub fn run(args: CheckArgs) -> ExitCode {
    let started = Instant::now();
    match report(&args) {
        Ok((report, what)) => {
            let printed = if args.json {
                serde_json::to_string_pretty(&report).map(|s| println!("{s}"))
            } else {
                print_human(&report, &what, started.elapsed().as_secs_f64());
                Ok(())
            };
            if let Err(e) = printed {
                eprintln!("error: cannot print the report: {e}");
                return ExitCode::from(COULD_NOT_RUN);
            }
            if report.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(err) => {
            eprintln!("error: the check could not run: {}", one_line(&err));
            ExitCode::from(COULD_NOT_RUN)
        }
    }
}

/// The chain of causes on one line, as `main` prints errors.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut message = err.to_string();
    for cause in err.chain().skip(1) {
        message.push_str(": ");
        message.push_str(&cause.to_string());
    }
    message.replace('\n', " ")
}

/// Loads the model with the tokenizer to check (`--tokenizer`, else its own).
pub fn load(model: &str, tokenizer: Option<&str>) -> Result<Loaded> {
    let options = LoadOptions {
        tokenizer: tokenizer.map(String::from),
        ..LoadOptions::default()
    };
    girder::load(model, &options).with_context(|| match tokenizer {
        Some(t) => format!("cannot load model `{model}` with tokenizer `{t}`"),
        None => format!("cannot load model `{model}`"),
    })
}

/// Reads `--probe`: one text per line (empty lines skipped), or JSON Lines for `.jsonl`.
pub fn read_probe(path: Option<&Path>) -> Result<Option<Vec<String>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    let texts = if path.extension().is_some_and(|e| e == "jsonl") {
        crate::input::read_texts(&[], Some(path))?
    } else {
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read probe file {}", path.display()))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(String::from)
            .collect()
    };
    anyhow::ensure!(
        !texts.is_empty(),
        "probe file {} has no texts",
        path.display()
    );
    Ok(Some(texts))
}

fn report(args: &CheckArgs) -> Result<(Report, String)> {
    let probe = read_probe(args.probe.as_deref())?;
    // Read the lock before loading the model: a corrupt lock fails fast and clearly.
    let pinned = match &args.lock {
        Some(path) => Some(lock::read(path)?),
        None => None,
    };
    let loaded = load(&args.model, args.tokenizer.as_deref())?;
    let options = CheckOptions {
        probe,
        deny_licenses: args.deny_license.clone(),
        require_languages: args.require_language.clone(),
    };
    let mut report = check::check(&loaded, &options)?;
    if let Some(pinned) = &pinned {
        report.extend(lock::compare(pinned, &check::lock_subject(&loaded)?)?);
    }
    let what = format!(
        "{} ({}) with tokenizer {}",
        loaded
            .files()
            .map_or(args.model.clone(), |(folder, _)| folder
                .root()
                .display()
                .to_string()),
        loaded.class_name(),
        loaded.tokenizer().source().display()
    );
    Ok((report, what))
}

fn print_human(report: &Report, what: &str, seconds: f64) {
    println!("girder check: {what}");
    for f in &report.findings {
        println!("{:<8} {:<30} {}", f.severity.name(), f.code, f.message);
        if !f.fix.is_empty() {
            println!("{:<8} {:<30} fix: {}", "", "", f.fix);
        }
    }
    let count = |s| report.with_severity(s).count();
    println!(
        "{}: {} error(s), {} warning(s), {} info in {seconds:.2} s",
        if report.ok { "ok" } else { "FAILED" },
        count(Severity::Error),
        count(Severity::Warning),
        count(Severity::Info)
    );
}

/// The pre-flight gate of `girder run`: the checks of [`check::preflight`] at load.
pub fn preflight_gate(model: &Loaded, allow_mismatch: bool) -> Result<()> {
    gate(&check::preflight(model)?, allow_mismatch, "run", false)
}

/// The one gate before work starts (`girder run`, `serve`, `lock`): an error of `report`
/// refuses to `work` unless `allow_mismatch`, in which case every error is printed as a loud
/// warning on stderr; with `show_warnings` the warnings are printed too.
pub fn gate(report: &Report, allow_mismatch: bool, work: &str, show_warnings: bool) -> Result<()> {
    if show_warnings {
        for f in report.with_severity(Severity::Warning) {
            let fix = if f.fix.is_empty() {
                String::new()
            } else {
                format!(" (fix: {})", f.fix)
            };
            eprintln!(
                "girder {work}: pre-flight warning {}: {}{fix}",
                f.code, f.message
            );
        }
    }
    let errors: Vec<String> = report
        .with_severity(Severity::Error)
        .map(|f| format!("{}: {}", f.code, f.message))
        .collect();
    if errors.is_empty() {
        return Ok(());
    }
    if !allow_mismatch {
        anyhow::bail!(
            "pre-flight check failed ({}): not going to {work}; run `girder check` for the fixes, or pass --allow-mismatch to {work} anyway",
            errors.join("; ")
        );
    }
    for error in &errors {
        eprintln!(
            "WARNING: --allow-mismatch: going to {work} despite a failed pre-flight check: {error}"
        );
    }
    Ok(())
}

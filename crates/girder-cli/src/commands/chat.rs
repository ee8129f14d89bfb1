//! `girder chat`: an interactive conversation. Each user line is appended to the history,
//! the model's chat template renders it (with the generation prompt), and the reply streams.

use super::generate::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use girder::generate::chat::Message;
use std::io::{BufRead, Write};

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message that opens the conversation.
    #[arg(long)]
    system: Option<String>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let options = args.model.options()?;
    let generator = args.model.load("chat")?;
    anyhow::ensure!(
        generator.chat_template().is_some(),
        "model `{}` has no chat template; use `girder generate`",
        args.model.model
    );
    let mut messages: Vec<Message> = args
        .system
        .into_iter()
        .map(|s| Message::new("system", s))
        .collect();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let interactive = std::io::IsTerminal::is_terminal(&stdin);
    loop {
        if interactive {
            write!(stdout, "> ")?;
            stdout.flush()?;
        }
        let mut line = String::new();
        if stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read stdin")?
            == 0
        {
            return Ok(());
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.is_empty() {
            continue;
        }
        messages.push(Message::new("user", line));
        let ids = generator.encode_chat_messages(&messages)?;
        let mut failed = None;
        let reply = generator
            .generate_from_ids(&[ids], &options, &mut |_, text| {
                if failed.is_none() {
                    failed = write!(stdout, "{text}").and_then(|_| stdout.flush()).err();
                }
            })?
            .remove(0);
        if let Some(e) = failed {
            return Err(e).context("cannot write to stdout");
        }
        writeln!(stdout)?;
        messages.push(Message::new("assistant", reply.text));
    }
}

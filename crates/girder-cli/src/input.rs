//! Where texts come from: arguments, a JSON Lines file (`text` field), or stdin (one per line).

use anyhow::{bail, Context, Result};
use std::io::{BufRead, Read};
use std::path::Path;

/// Texts from the first source given: arguments, then `--input`, then stdin.
pub fn read_texts(args: &[String], input: Option<&Path>) -> Result<Vec<String>> {
    if !args.is_empty() {
        return Ok(args.to_vec());
    }
    let texts = match input {
        Some(path) => read_jsonl(path)?,
        None => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .read_to_end(&mut bytes)
                .context("cannot read stdin")?;
            lines_of(&bytes, "stdin")?
        }
    };
    if texts.is_empty() {
        bail!("no input texts: pass them as arguments, with --input file.jsonl, or one per line on stdin");
    }
    Ok(texts)
}

/// Splits bytes into lines, rejecting invalid UTF-8 with the line number.
fn lines_of(bytes: &[u8], source: &str) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    if bytes.is_empty() {
        return Ok(texts);
    }
    for (n, line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let text = std::str::from_utf8(line)
            .with_context(|| format!("{source} line {}: not valid UTF-8", n + 1))?;
        texts.push(text.to_string());
    }
    // A trailing newline ends the last line; it does not start an empty one.
    if bytes.ends_with(b"\n") {
        texts.pop();
    }
    Ok(texts)
}

fn read_jsonl(path: &Path) -> Result<Vec<String>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut texts = Vec::new();
    for (n, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let line = line.with_context(|| format!("cannot read {}", path.display()))?;
        let where_ = || format!("{} line {}", path.display(), n + 1);
        let line =
            std::str::from_utf8(&line).with_context(|| format!("{}: not valid UTF-8", where_()))?;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("{}: not valid JSON", where_()))?;
        match value.get("text") {
            Some(serde_json::Value::String(text)) => texts.push(text.clone()),
            Some(_) => bail!("{}: field `text` is not a string", where_()),
            None => bail!("{}: no `text` field", where_()),
        }
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_empty_ones_but_not_the_trailing_newline() {
        assert_eq!(lines_of(b"a\n\nb\n", "stdin").unwrap(), ["a", "", "b"]);
        assert_eq!(lines_of(b"a\r\nb", "stdin").unwrap(), ["a", "b"]);
        assert!(lines_of(b"", "stdin").unwrap().is_empty());
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = lines_of(b"ok\n\xff\xfe\n", "stdin").unwrap_err();
        assert!(err.to_string().contains("stdin line 2"), "{err}");
    }
}

//! Where texts come from: arguments, a JSON Lines file (`text` field), or stdin (one per
//! line). Files and stdin are read lazily, in windows, so input of any size streams through
//! in constant memory.

use anyhow::{bail, Context, Result};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// A lazy sequence of texts.
pub enum TextSource {
    Args(std::vec::IntoIter<String>),
    Lines {
        reader: Box<dyn BufRead + Send>,
        name: String,
        line: usize,
        jsonl: bool,
    },
}

impl TextSource {
    /// The first source given: arguments, then `--input`, then stdin.
    pub fn open(args: Vec<String>, input: Option<&Path>) -> Result<Self> {
        if !args.is_empty() {
            return Ok(TextSource::Args(args.into_iter()));
        }
        Ok(match input {
            Some(path) => {
                let file = std::fs::File::open(path)
                    .with_context(|| format!("cannot open {}", path.display()))?;
                TextSource::Lines {
                    reader: Box::new(std::io::BufReader::new(file)),
                    name: PathBuf::from(path).display().to_string(),
                    line: 0,
                    jsonl: true,
                }
            }
            None => TextSource::Lines {
                reader: Box::new(std::io::BufReader::new(std::io::stdin())),
                name: "stdin".into(),
                line: 0,
                jsonl: false,
            },
        })
    }

    /// Up to `n` more texts; an empty vector at the end of the input.
    pub fn next_window(&mut self, n: usize) -> Result<Vec<String>> {
        let mut texts = Vec::new();
        while texts.len() < n {
            match self.next_text()? {
                Some(t) => texts.push(t),
                None => break,
            }
        }
        Ok(texts)
    }

    fn next_text(&mut self) -> Result<Option<String>> {
        match self {
            TextSource::Args(args) => Ok(args.next()),
            TextSource::Lines {
                reader,
                name,
                line,
                jsonl,
            } => loop {
                let mut bytes = Vec::new();
                let read = reader
                    .read_until(b'\n', &mut bytes)
                    .with_context(|| format!("cannot read {name}"))?;
                if read == 0 {
                    return Ok(None);
                }
                *line += 1;
                if bytes.ends_with(b"\n") {
                    bytes.pop();
                    if bytes.ends_with(b"\r") {
                        bytes.pop();
                    }
                }
                let where_ = format!("{name} line {line}");
                let text = String::from_utf8(bytes)
                    .with_context(|| format!("{where_}: not valid UTF-8"))?;
                if !*jsonl {
                    return Ok(Some(text));
                }
                if text.trim().is_empty() {
                    continue;
                }
                return Ok(Some(text_field(&text).with_context(|| where_.clone())?));
            },
        }
    }
}

/// Every text of the first source given (for commands whose inputs are few, like prompts).
pub fn read_texts(args: &[String], input: Option<&Path>) -> Result<Vec<String>> {
    let mut source = TextSource::open(args.to_vec(), input)?;
    let mut texts = Vec::new();
    loop {
        let window = source.next_window(1024)?;
        if window.is_empty() {
            break;
        }
        texts.extend(window);
    }
    if texts.is_empty() {
        bail!("no input texts: pass them as arguments, with --input file.jsonl, or one per line on stdin");
    }
    Ok(texts)
}

fn text_field(line: &str) -> Result<String> {
    let value: serde_json::Value = serde_json::from_str(line).context("not valid JSON")?;
    match value.get("text") {
        Some(serde_json::Value::String(text)) => Ok(text.clone()),
        Some(_) => bail!("field `text` is not a string"),
        None => bail!("no `text` field"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &'static [u8], jsonl: bool) -> TextSource {
        TextSource::Lines {
            reader: Box::new(std::io::Cursor::new(bytes)),
            name: "stdin".into(),
            line: 0,
            jsonl,
        }
    }

    #[test]
    fn lines_keep_empty_ones_but_not_the_trailing_newline() {
        assert_eq!(
            lines(b"a\n\nb\n", false).next_window(10).unwrap(),
            ["a", "", "b"]
        );
        assert_eq!(lines(b"a\r\nb", false).next_window(10).unwrap(), ["a", "b"]);
        assert!(lines(b"", false).next_window(10).unwrap().is_empty());
        let mut src = lines(b"1\n2\n3\n", false);
        assert_eq!(src.next_window(2).unwrap(), ["1", "2"]);
        assert_eq!(src.next_window(2).unwrap(), ["3"]);
    }

    #[test]
    fn invalid_utf8_names_the_line() {
        let err = lines(b"ok\n\xff\xfe\n", false).next_window(10).unwrap_err();
        assert!(format!("{err:#}").contains("stdin line 2"), "{err:#}");
    }

    #[test]
    fn jsonl_reads_the_text_field() {
        let mut src = lines(b"{\"text\": \"a\"}\n\n{\"text\": \"b\", \"id\": 2}\n", true);
        assert_eq!(src.next_window(10).unwrap(), ["a", "b"]);
        let err = lines(b"{\"txt\": 1}\n", true).next_window(10).unwrap_err();
        assert!(
            format!("{err:#}").contains("line 1: no `text` field"),
            "{err:#}"
        );
    }
}

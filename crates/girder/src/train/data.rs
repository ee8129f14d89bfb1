//! Training and evaluation data: labelled texts from TSV, CSV or JSON Lines, and
//! word-tagged sentences from CoNLL/BIO files.
//!
//! Every row that cannot be used is an error naming the file, the line and the reason;
//! nothing is skipped silently.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// How a classification file is laid out, picked from its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataFormat {
    /// Tab-separated, with a header row naming the columns (`.tsv`, `.txt`).
    Tsv,
    /// Comma-separated (RFC 4180 quoting), with a header row (`.csv`).
    Csv,
    /// One JSON object per line (`.jsonl`, `.json`).
    JsonLines,
}

impl DataFormat {
    /// The format a file's extension implies.
    pub fn from_path(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .unwrap_or_default()
            .to_ascii_lowercase();
        Ok(match ext.as_str() {
            "tsv" | "txt" => DataFormat::Tsv,
            "csv" => DataFormat::Csv,
            "jsonl" | "json" | "ndjson" => DataFormat::JsonLines,
            _ => {
                return Err(Error::BadData {
                    file: path.to_path_buf(),
                    line: 0,
                    reason: "unknown format: name the file .tsv, .csv or .jsonl".into(),
                })
            }
        })
    }
}

/// Which columns (TSV/CSV header names) or keys (JSON Lines) hold the text and the label.
/// The defaults are transformers' `run_classification.py` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub text: String,
    pub label: String,
}

impl Default for Columns {
    fn default() -> Self {
        Columns {
            text: "text".into(),
            label: "label".into(),
        }
    }
}

/// The classes of a task, in id order (`id2label`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelSet {
    names: Vec<String>,
}

impl LabelSet {
    /// Labels in id order; duplicates and an empty set are refused.
    pub fn new(names: Vec<String>) -> Result<Self> {
        if names.is_empty() {
            return Err(Error::InvalidOption {
                option: "labels".into(),
                reason: "no labels".into(),
            });
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(Error::InvalidOption {
                    option: "labels".into(),
                    reason: format!("label `{name}` is listed twice"),
                });
            }
        }
        Ok(LabelSet { names })
    }

    /// The names, in id order.
    pub fn names(&self) -> &[String] {
        &self.names
    }

    /// Number of labels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Always false: a label set is never empty.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The id of a raw label value: its name, or else its id written as an integer.
    pub fn id_of(&self, raw: &str) -> Option<usize> {
        if let Some(i) = self.names.iter().position(|n| n == raw) {
            return Some(i);
        }
        raw.parse::<usize>().ok().filter(|&i| i < self.names.len())
    }

    /// The labels as `a, b, c` for error messages.
    pub fn listing(&self) -> String {
        self.names.join(", ")
    }

    /// The label set of raw values seen in a file, sorted as transformers' example scripts
    /// sort them (numerically when every value is an integer).
    fn inferred(mut raw: Vec<String>) -> Result<Self> {
        raw.sort();
        raw.dedup();
        if raw.iter().all(|r| r.parse::<i64>().is_ok()) {
            raw.sort_by_key(|r| r.parse::<i64>().unwrap_or_default());
        }
        LabelSet::new(raw)
    }
}

/// One labelled text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    /// Index into the [`LabelSet`].
    pub label: usize,
    /// 1-based line in the file.
    pub line: usize,
}

/// A classification file read against a label set.
#[derive(Debug, Clone)]
pub struct ClassificationData {
    pub file: PathBuf,
    pub examples: Vec<Example>,
    pub labels: LabelSet,
}

impl ClassificationData {
    /// The texts, in file order.
    pub fn texts(&self) -> Vec<&str> {
        self.examples.iter().map(|e| e.text.as_str()).collect()
    }

    /// The label ids, in file order.
    pub fn label_ids(&self) -> Vec<usize> {
        self.examples.iter().map(|e| e.label).collect()
    }
}

/// Reads labelled texts. With `labels`, every value must be one of its names or ids;
/// without, the label set is the sorted set of values in the file (a training file).
pub fn read_classification(
    path: &Path,
    columns: &Columns,
    labels: Option<&LabelSet>,
) -> Result<ClassificationData> {
    let format = DataFormat::from_path(path)?;
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, reason: String| Error::BadData {
        file: path.to_path_buf(),
        line,
        reason,
    };
    let rows = match format {
        DataFormat::JsonLines => json_rows(&text, columns, &bad)?,
        DataFormat::Tsv | DataFormat::Csv => delimited_rows(&text, format, columns, &bad)?,
    };
    if rows.is_empty() {
        return Err(bad(0, "no examples".into()));
    }
    let labels = match labels {
        Some(l) => l.clone(),
        None => LabelSet::inferred(rows.iter().map(|r| r.2.clone()).collect())?,
    };
    let examples = rows
        .into_iter()
        .map(|(line, text, raw)| match labels.id_of(&raw) {
            Some(label) => Ok(Example { text, label, line }),
            None => Err(Error::UnknownLabel {
                file: path.to_path_buf(),
                line,
                label: raw,
                known: labels.listing(),
            }),
        })
        .collect::<Result<_>>()?;
    Ok(ClassificationData {
        file: path.to_path_buf(),
        examples,
        labels,
    })
}

/// (line, text, raw label) of each non-blank data row.
type Row = (usize, String, String);

fn delimited_rows(
    text: &str,
    format: DataFormat,
    columns: &Columns,
    bad: &dyn Fn(usize, String) -> Error,
) -> Result<Vec<Row>> {
    let split = |line: &str, number: usize| -> Result<Vec<String>> {
        match format {
            DataFormat::Csv => split_csv(line).map_err(|reason| bad(number, reason)),
            _ => Ok(line.split('\t').map(str::to_string).collect()),
        }
    };
    let mut lines = text
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.strip_suffix('\r').unwrap_or(l)))
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((header_line, header)) = lines.next() else {
        return Ok(Vec::new());
    };
    let header = split(header, header_line)?;
    let find = |name: &str, flag: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            bad(
                header_line,
                format!(
                    "the header has no column `{name}` (columns: {}; choose one with {flag})",
                    header.join(", ")
                ),
            )
        })
    };
    let text_col = find(&columns.text, "--text-column")?;
    let label_col = find(&columns.label, "--label-column")?;
    lines
        .map(|(number, line)| {
            let fields = split(line, number)?;
            if fields.len() != header.len() {
                return Err(bad(
                    number,
                    format!(
                        "{} fields, but the header has {}",
                        fields.len(),
                        header.len()
                    ),
                ));
            }
            row(
                number,
                &fields[text_col],
                fields[label_col].trim(),
                columns,
                bad,
            )
        })
        .collect()
}

fn row(
    number: usize,
    text: &str,
    label: &str,
    columns: &Columns,
    bad: &dyn Fn(usize, String) -> Error,
) -> Result<Row> {
    if text.trim().is_empty() {
        return Err(bad(number, format!("empty `{}`", columns.text)));
    }
    if label.is_empty() {
        return Err(bad(number, format!("empty `{}`", columns.label)));
    }
    Ok((number, text.to_string(), label.to_string()))
}

/// One CSV record on one line: fields split on commas, `"…"` quoting with `""` for a quote.
fn split_csv(line: &str) -> std::result::Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut at_field_start = true;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '"') if at_field_start => quoted = true,
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => {
                quoted = false;
                if !matches!(chars.peek(), None | Some(',')) {
                    return Err("text after a closing quote".into());
                }
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                at_field_start = true;
                continue;
            }
            (_, c) => field.push(c),
        }
        at_field_start = false;
    }
    if quoted {
        return Err("unterminated quoted field (fields spanning lines are not supported)".into());
    }
    fields.push(field);
    Ok(fields)
}

fn json_rows(
    text: &str,
    columns: &Columns,
    bad: &dyn Fn(usize, String) -> Error,
) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(number, format!("not JSON: {e}")))?;
        let get = |key: &str| -> Result<String> {
            match value.get(key) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) if n.is_u64() => Ok(n.to_string()),
                Some(other) => Err(bad(
                    number,
                    format!("`{key}` is {other}, expected a string or a label id"),
                )),
                None => Err(bad(number, format!("no key `{key}`"))),
            }
        };
        let (text, label) = (get(&columns.text)?, get(&columns.label)?);
        rows.push(row(number, &text, label.trim(), columns, bad)?);
    }
    Ok(rows)
}

/// One sentence of a CoNLL/BIO file: its words and their tag ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    /// Index into the tag [`LabelSet`], one per word.
    pub tags: Vec<usize>,
    /// 1-based line of the first word.
    pub line: usize,
}

/// The tag set of entity types `types` in BIO: `O`, then `B-t`, `I-t` for each type.
pub fn bio_tags(types: &[String]) -> Result<LabelSet> {
    let mut names = vec!["O".to_string()];
    for t in types {
        names.push(format!("B-{t}"));
        names.push(format!("I-{t}"));
    }
    LabelSet::new(names)
}

/// Reads a CoNLL/BIO file: `token<TAB>tag` per line (the token is the first
/// whitespace-separated field and the tag the last, so CoNLL-2003's four columns also
/// read), a blank line between sentences, `-DOCSTART-` lines skipped. Without `tags`, the
/// tag set is `O` followed by the file's other tags, sorted.
pub fn read_conll(path: &Path, tags: Option<&LabelSet>) -> Result<(Vec<TaggedSentence>, LabelSet)> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let bad = |line: usize, reason: String| Error::BadData {
        file: path.to_path_buf(),
        line,
        reason,
    };
    // (line, word, raw tag) per sentence
    let mut sentences: Vec<Vec<(usize, String, String)>> = vec![Vec::new()];
    for (i, line) in text.lines().enumerate() {
        let number = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if line.trim().is_empty() {
            if !sentences.last().is_some_and(Vec::is_empty) {
                sentences.push(Vec::new());
            }
            continue;
        }
        if line.starts_with("-DOCSTART-") {
            continue;
        }
        let fields: Vec<&str> = if line.contains('\t') {
            line.split('\t').collect()
        } else {
            line.split_whitespace().collect()
        };
        if fields.len() < 2 || fields[0].is_empty() {
            return Err(bad(
                number,
                "expected `token<TAB>tag` (a blank line separates sentences)".into(),
            ));
        }
        let tag = fields[fields.len() - 1].trim();
        if tag.is_empty() {
            return Err(bad(number, "empty tag".into()));
        }
        if let Some(last) = sentences.last_mut() {
            last.push((number, fields[0].to_string(), tag.to_string()));
        }
    }
    sentences.retain(|s| !s.is_empty());
    if sentences.is_empty() {
        return Err(bad(0, "no sentences".into()));
    }
    let tags = match tags {
        Some(t) => t.clone(),
        None => {
            let mut seen: Vec<String> = sentences
                .iter()
                .flatten()
                .map(|(_, _, t)| t.clone())
                .filter(|t| t != "O")
                .collect();
            seen.sort();
            seen.dedup();
            seen.insert(0, "O".into());
            LabelSet::new(seen)?
        }
    };
    let sentences = sentences
        .into_iter()
        .map(|words| {
            let line = words[0].0;
            let mut sentence = TaggedSentence {
                words: Vec::with_capacity(words.len()),
                tags: Vec::with_capacity(words.len()),
                line,
            };
            for (number, word, raw) in words {
                let id = tags.names().iter().position(|n| *n == raw).ok_or_else(|| {
                    Error::UnknownLabel {
                        file: path.to_path_buf(),
                        line: number,
                        label: raw.clone(),
                        known: tags.listing(),
                    }
                })?;
                sentence.words.push(word);
                sentence.tags.push(id);
            }
            Ok(sentence)
        })
        .collect::<Result<_>>()?;
    Ok((sentences, tags))
}

/// The label of a token that the loss ignores (PyTorch's `CrossEntropyLoss` `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;

/// Word tags aligned to subword tokens through the tokenizer's word ids, as transformers'
/// token-classification recipe (`run_ner.py` with `label_all_tokens=False`): the first
/// subword of each word carries the word's tag; later subwords and special tokens
/// (`None`) get [`IGNORE_INDEX`]. A word cut off by truncation has no token and is dropped.
pub fn align_tags(word_ids: &[Option<u32>], word_tags: &[usize]) -> Result<Vec<i64>> {
    let mut previous = None;
    word_ids
        .iter()
        .map(|&word| {
            let label = match word {
                None => IGNORE_INDEX,
                Some(w) if Some(w) == previous => IGNORE_INDEX,
                Some(w) => match word_tags.get(w as usize) {
                    Some(&tag) => tag as i64,
                    None => {
                        return Err(Error::InvalidOption {
                            option: "word_ids".into(),
                            reason: format!(
                                "word id {w} but the sentence has {} words",
                                word_tags.len()
                            ),
                        })
                    }
                },
            };
            previous = word;
            Ok(label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, content: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        (dir, path)
    }

    #[test]
    fn tsv_with_named_columns_and_inferred_labels() {
        let (_dir, path) = write(
            "train.tsv",
            "id\tsentence\tsentiment\n1\tgreat film\tpositive\n\n2\tdull\tnegative\n",
        );
        let columns = Columns {
            text: "sentence".into(),
            label: "sentiment".into(),
        };
        let data = read_classification(&path, &columns, None).unwrap();
        assert_eq!(data.labels.names(), ["negative", "positive"]);
        assert_eq!(data.texts(), ["great film", "dull"]);
        assert_eq!(data.label_ids(), [1, 0]);
        assert_eq!(data.examples[1].line, 4);
    }

    #[test]
    fn csv_quoting_and_label_ids() {
        let (_dir, path) = write(
            "dev.csv",
            "text,label\n\"Good, \"\"really\"\"\",1\nbad,negative\n",
        );
        let labels = LabelSet::new(vec!["negative".into(), "positive".into()]).unwrap();
        let data = read_classification(&path, &Columns::default(), Some(&labels)).unwrap();
        assert_eq!(data.texts(), ["Good, \"really\"", "bad"]);
        assert_eq!(data.label_ids(), [1, 0]);
    }

    #[test]
    fn jsonl_numeric_labels_sort_numerically() {
        let (_dir, path) = write(
            "d.jsonl",
            "{\"text\":\"a\",\"label\":10}\n{\"text\":\"b\",\"label\":2}\n",
        );
        let data = read_classification(&path, &Columns::default(), None).unwrap();
        assert_eq!(data.labels.names(), ["2", "10"]);
        assert_eq!(data.label_ids(), [1, 0]);
    }

    #[test]
    fn malformed_rows_name_file_line_and_reason() {
        let (_dir, path) = write("t.tsv", "text\tlabel\nfine\tpos\nbroken row\n");
        let err = read_classification(&path, &Columns::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.tsv:3: 1 fields, but the header has 2"),
            "{err}"
        );

        let (_dir, path) = write("t.tsv", "sentence\tlabel\nfine\tpos\n");
        let err = read_classification(&path, &Columns::default(), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("t.tsv:1: the header has no column `text`"),
            "{err}"
        );

        let (_dir, path) = write(
            "t.jsonl",
            "{\"text\":\"a\",\"label\":\"x\"}\n{\"text\":\"b\"}\n",
        );
        let err = read_classification(&path, &Columns::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.jsonl:2: no key `label`"), "{err}");

        let (_dir, path) = write("t.csv", "text,label\n\"open,x\n");
        let err = read_classification(&path, &Columns::default(), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("t.csv:2: unterminated quoted field"), "{err}");
    }

    #[test]
    fn unknown_label_lists_the_label_set() {
        let (_dir, path) = write("dev.tsv", "text\tlabel\nok\tpositive\nhm\tneutral\n");
        let labels = LabelSet::new(vec!["negative".into(), "positive".into()]).unwrap();
        let err = read_classification(&path, &Columns::default(), Some(&labels))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            format!(
                "{}:3: unknown label `neutral`; the labels are: negative, positive",
                path.display()
            )
        );
        // An id past the set is unknown too.
        assert_eq!(labels.id_of("1"), Some(1));
        assert_eq!(labels.id_of("2"), None);
    }

    #[test]
    fn conll_sentences_and_tag_set() {
        let (_dir, path) = write(
            "n.bio",
            "-DOCSTART- O\n\n@paul\tO\nvisits\tO\nNew\tB-geo-loc\nYork\tI-geo-loc\n\n\nhi\tO\n",
        );
        let (sentences, tags) = read_conll(&path, None).unwrap();
        assert_eq!(tags.names(), ["O", "B-geo-loc", "I-geo-loc"]);
        assert_eq!(sentences.len(), 2);
        assert_eq!(sentences[0].words, ["@paul", "visits", "New", "York"]);
        assert_eq!(sentences[0].tags, [0, 0, 1, 2]);
        assert_eq!(sentences[0].line, 3);

        let fixed = bio_tags(&["PER".into()]).unwrap();
        let err = read_conll(&path, Some(&fixed)).unwrap_err().to_string();
        assert!(
            err.contains("n.bio:5: unknown label `B-geo-loc`; the labels are: O, B-PER, I-PER"),
            "{err}"
        );

        let (_dir, path) = write("bad.bio", "word\tO\nlonely\n");
        let err = read_conll(&path, None).unwrap_err().to_string();
        assert!(err.contains("bad.bio:2: expected `token<TAB>tag`"), "{err}");
    }

    #[test]
    fn tags_go_to_the_first_subword_only() {
        // [CLS] new york ##er [SEP]
        let word_ids = [None, Some(0), Some(1), Some(1), None];
        assert_eq!(
            align_tags(&word_ids, &[1, 2]).unwrap(),
            [IGNORE_INDEX, 1, 2, IGNORE_INDEX, IGNORE_INDEX]
        );
        assert!(align_tags(&[Some(3)], &[0]).is_err());
    }
}

//! Turning generated ids into text as they arrive, and stop strings.
//!
//! A byte-level BPE token may hold half of a UTF-8 character (an emoji spans several tokens)
//! and a SentencePiece token's leading space depends on the token before it, so decoding one
//! token at a time is wrong. [`IncrementalDecoder`] decodes a short window (from the token
//! before the last emitted text) and emits only what grew, and nothing while the text ends in
//! an incomplete character (U+FFFD), the method of TGI's `decode_token`.
//!
//! [`TextStream`] adds stop strings: text that could be the start of a stop string is held
//! back until it is known not to be one, so a stream never shows part of a stop string, and
//! the final text ends before the stop string (as OpenAI-style APIs return it).

use crate::error::{Error, Result};

/// Decodes a growing list of ids into text deltas that never split a character.
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl IncrementalDecoder {
    /// Appends `id` and returns the text it completes (often empty for a partial character).
    pub fn push(&mut self, tokenizer: &tokenizers::Tokenizer, id: u32) -> Result<String> {
        self.ids.push(id);
        let prefix = decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let text = decode(tokenizer, &self.ids[self.prefix_offset..])?;
        if text.len() > prefix.len() && !text.ends_with('\u{FFFD}') {
            if let Some(delta) = text.get(prefix.len()..) {
                let delta = delta.to_string();
                self.prefix_offset = self.read_offset;
                self.read_offset = self.ids.len();
                return Ok(delta);
            }
        }
        Ok(String::new())
    }

    /// What remains undecoded at the end (an incomplete character, as U+FFFD).
    pub fn flush(&mut self, tokenizer: &tokenizers::Tokenizer) -> Result<String> {
        let prefix = decode(tokenizer, &self.ids[self.prefix_offset..self.read_offset])?;
        let text = decode(tokenizer, &self.ids[self.prefix_offset..])?;
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        Ok(text.get(prefix.len()..).unwrap_or("").to_string())
    }
}

fn decode(tokenizer: &tokenizers::Tokenizer, ids: &[u32]) -> Result<String> {
    tokenizer.decode(ids, true).map_err(|e| Error::Tokenize {
        index: 0,
        reason: format!("cannot decode generated ids: {e}"),
    })
}

/// The text of one sequence as it is generated, with stop strings.
#[derive(Debug, Clone)]
pub struct TextStream {
    decoder: IncrementalDecoder,
    stops: Vec<String>,
    text: String,
    /// Bytes of `text` already handed out.
    emitted: usize,
    stopped: bool,
}

impl TextStream {
    /// A stream stopping at any of `stops` (each must be non-empty; see [`validate_stops`]).
    pub fn new(stops: &[String]) -> Self {
        TextStream {
            decoder: IncrementalDecoder::default(),
            stops: stops.to_vec(),
            text: String::new(),
            emitted: 0,
            stopped: false,
        }
    }

    /// Adds a token; returns the text that may be shown now and whether a stop string ended
    /// the sequence.
    pub fn push(&mut self, tokenizer: &tokenizers::Tokenizer, id: u32) -> Result<(String, bool)> {
        let before = self.text.len();
        let delta = self.decoder.push(tokenizer, id)?;
        self.text.push_str(&delta);
        let longest = self.stops.iter().map(String::len).max().unwrap_or(0);
        // A stop string completed by this delta starts at most `longest - 1` bytes earlier.
        let mut from = before.saturating_sub(longest.saturating_sub(1));
        while !self.text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.text[from..].find(s.as_str()).map(|at| from + at))
            .min();
        if let Some(at) = hit {
            self.text.truncate(at);
            self.stopped = true;
            return Ok((self.take(self.text.len()), true));
        }
        let safe = self.safe_end();
        Ok((self.take(safe), false))
    }

    /// Ends the stream (no stop string): everything left, incomplete characters included.
    pub fn finish(&mut self, tokenizer: &tokenizers::Tokenizer) -> Result<String> {
        if !self.stopped {
            let rest = self.decoder.flush(tokenizer)?;
            self.text.push_str(&rest);
        }
        Ok(self.take(self.text.len()))
    }

    /// The text so far (ending before the stop string, once one was found).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether a stop string ended the stream.
    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// End of the text that cannot be the start of a stop string.
    fn safe_end(&self) -> usize {
        let text = &self.text;
        (self.emitted..text.len())
            .filter(|&i| text.is_char_boundary(i))
            .find(|&i| self.stops.iter().any(|s| s.starts_with(&text[i..])))
            .unwrap_or(text.len())
    }

    fn take(&mut self, end: usize) -> String {
        let end = end.max(self.emitted);
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        out
    }
}

/// Rejects empty stop strings (they would stop before the first token).
pub fn validate_stops(stops: &[String]) -> Result<()> {
    if let Some(i) = stops.iter().position(String::is_empty) {
        return Err(Error::InvalidOption {
            option: "stop".into(),
            reason: format!("stop string {i} is empty; an empty string would match at once"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE whose tokens are single bytes: every character of more than one byte
    /// spans several tokens.
    fn byte_tokenizer() -> tokenizers::Tokenizer {
        let chars = tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet();
        let mut chars: Vec<char> = chars.into_iter().collect();
        chars.sort();
        let vocab: serde_json::Map<String, serde_json::Value> = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i.into()))
            .collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []}
        });
        tokenizers::Tokenizer::from_bytes(serde_json::to_vec(&json).unwrap()).unwrap()
    }

    fn ids(t: &tokenizers::Tokenizer, text: &str) -> Vec<u32> {
        t.encode(text, false).unwrap().get_ids().to_vec()
    }

    #[test]
    fn multibyte_characters_are_never_split() {
        let t = byte_tokenizer();
        let text = "naïve 🙂 ok";
        let mut d = IncrementalDecoder::default();
        let mut pieces = Vec::new();
        for id in ids(&t, text) {
            let piece = d.push(&t, id).unwrap();
            assert!(!piece.contains('\u{FFFD}'), "{piece:?}");
            pieces.push(piece);
        }
        pieces.push(d.flush(&t).unwrap());
        assert_eq!(pieces.concat(), text);
        // The emoji's 4 byte tokens produce text only at the last one.
        assert!(pieces.iter().any(|p| p == "🙂"));
    }

    #[test]
    fn stop_strings_are_held_back_and_cut() {
        let t = byte_tokenizer();
        let mut s = TextStream::new(&["\n\n".to_string(), "END".to_string()]);
        let mut shown = String::new();
        let mut stopped = false;
        for id in ids(&t, "one\ntwo EN\n\nrest") {
            let (piece, stop) = s.push(&t, id).unwrap();
            shown.push_str(&piece);
            if stop {
                stopped = true;
                break;
            }
        }
        assert!(stopped);
        assert_eq!(shown, "one\ntwo EN");
        assert_eq!(s.text(), "one\ntwo EN");
    }

    #[test]
    fn empty_stop_string_is_refused() {
        let err = validate_stops(&["ok".into(), String::new()]).unwrap_err();
        assert!(err.to_string().contains("stop string 1 is empty"), "{err}");
    }
}

//! SentencePiece models (`.spm` / `.model` files) and the Marian tokenizer built on them.
//!
//! transformers' `MarianTokenizer` has no fast version and no tokenizer.json: it segments the
//! source text with `source.spm` (a SentencePiece unigram model) and maps each piece to its id
//! in the joint `vocab.json`, then appends `</s>`. girder reads the `.spm` file (a
//! `sentencepiece.ModelProto` message) and builds the same tokenizer with the `tokenizers`
//! crate, as transformers' `SpmConverter` builds fast tokenizers of SentencePiece models: the
//! model's precompiled normalization, whitespace runs collapsed, `▁` for spaces and before the
//! text, a unigram model over the pieces with their scores. Its ids are vocab.json's; a piece
//! of vocab.json that the source model does not have (a target-language piece) is kept for
//! decoding and never chosen when encoding.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::{Precompiled, Replace, Sequence, Strip};
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

/// A piece's kind in a SentencePiece model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

/// One entry of a SentencePiece model.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

/// The parts of a `sentencepiece.ModelProto` girder uses.
#[derive(Debug, Clone, Default)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    /// `trainer_spec.model_type`: 1 unigram, 2 BPE, 3 word, 4 char.
    pub model_type: u64,
    /// `normalizer_spec.precompiled_charsmap`.
    pub precompiled_charsmap: Vec<u8>,
    /// `normalizer_spec.add_dummy_prefix` (a `▁` before the text).
    pub add_dummy_prefix: bool,
    /// `normalizer_spec.remove_extra_whitespaces`.
    pub remove_extra_whitespaces: bool,
}

/// A protobuf message's fields, read one by one (the wire format: a varint key of field number
/// and type, then a varint, a fixed 32 or 64 bits, or a length-prefixed payload).
struct Fields<'a> {
    bytes: &'a [u8],
    at: usize,
}

enum Value<'a> {
    Varint(u64),
    Fixed32(u32),
    Fixed64,
    Bytes(&'a [u8]),
}

impl<'a> Fields<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Fields { bytes, at: 0 }
    }

    fn varint(&mut self) -> std::result::Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *self
                .bytes
                .get(self.at)
                .ok_or("the message ends inside a number")?;
            self.at += 1;
            value |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("a field runs past the end of the message")?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    /// The next field's number and value, `None` at the end.
    fn next_field(&mut self) -> std::result::Result<Option<(u64, Value<'a>)>, String> {
        if self.at >= self.bytes.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = self.varint()? as usize;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(format!("wire type {other} is not one a model uses")),
        };
        Ok(Some((key >> 3, value)))
    }
}

impl SentencePieceModel {
    /// Parses the bytes of a `.spm` / `.model` file.
    pub fn parse(bytes: &[u8]) -> std::result::Result<Self, String> {
        let mut model = SentencePieceModel {
            add_dummy_prefix: true,
            remove_extra_whitespaces: true,
            model_type: 1,
            ..Default::default()
        };
        let mut fields = Fields::new(bytes);
        while let Some((number, value)) = fields.next_field()? {
            match (number, value) {
                (1, Value::Bytes(piece)) => model.pieces.push(parse_piece(piece)?),
                (2, Value::Bytes(trainer)) => {
                    let mut f = Fields::new(trainer);
                    while let Some((n, v)) = f.next_field()? {
                        if let (3, Value::Varint(t)) = (n, v) {
                            model.model_type = t;
                        }
                    }
                }
                (3, Value::Bytes(normalizer)) => {
                    let mut f = Fields::new(normalizer);
                    while let Some((n, v)) = f.next_field()? {
                        match (n, v) {
                            (2, Value::Bytes(map)) => model.precompiled_charsmap = map.to_vec(),
                            (3, Value::Varint(b)) => model.add_dummy_prefix = b != 0,
                            (4, Value::Varint(b)) => model.remove_extra_whitespaces = b != 0,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        if model.pieces.is_empty() {
            return Err("no pieces: not a SentencePiece model".into());
        }
        Ok(model)
    }

    /// Reads a `.spm` / `.model` file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&bytes).map_err(|reason| Error::BadTokenizer {
            file: path.to_path_buf(),
            reason: format!("not a SentencePiece model: {reason}"),
        })
    }
}

fn parse_piece(bytes: &[u8]) -> std::result::Result<Piece, String> {
    let mut piece = Piece {
        piece: String::new(),
        score: 0.0,
        kind: PieceType::Normal,
    };
    let mut f = Fields::new(bytes);
    while let Some((n, v)) = f.next_field()? {
        match (n, v) {
            (1, Value::Bytes(text)) => {
                piece.piece = String::from_utf8(text.to_vec())
                    .map_err(|_| "a piece that is not UTF-8".to_string())?
            }
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(t)) => {
                piece.kind = match t {
                    2 => PieceType::Unknown,
                    3 => PieceType::Control,
                    4 => PieceType::UserDefined,
                    5 => PieceType::Unused,
                    6 => PieceType::Byte,
                    _ => PieceType::Normal,
                }
            }
            _ => {}
        }
    }
    Ok(piece)
}

/// Builds a Marian model folder's tokenizer from `source.spm` and `vocab.json`: ids are
/// vocab.json's, `</s>` is appended to every text, and decoding joins the pieces.
pub fn marian_tokenizer(source_spm: &Path, vocab_json: &Path) -> Result<Tokenizer> {
    let spm = SentencePieceModel::from_file(source_spm)?;
    let bad = |reason: String| Error::BadTokenizer {
        file: source_spm.to_path_buf(),
        reason,
    };
    if spm.model_type != 1 {
        return Err(bad(format!(
            "a SentencePiece model of type {} (girder reads unigram models, type 1)",
            spm.model_type
        )));
    }
    let vocab: BTreeMap<String, u32> = crate::config::read_json(vocab_json)?;
    let size = vocab.values().max().map_or(0, |&m| m as usize + 1);
    let mut by_id: Vec<Option<String>> = vec![None; size];
    for (piece, &id) in &vocab {
        by_id[id as usize] = Some(piece.clone());
    }
    let scores: HashMap<&str, (f32, PieceType)> = spm
        .pieces
        .iter()
        .map(|p| (p.piece.as_str(), (p.score, p.kind)))
        .collect();
    let lowest = spm
        .pieces
        .iter()
        .filter(|p| p.kind == PieceType::Normal)
        .map(|p| p.score)
        .fold(0f32, f32::min);
    // Pieces the source model lacks (and ids vocab.json leaves out) score far below any
    // segmentation the source model allows: they decode, they are never chosen.
    let never = lowest as f64 - 1.0e6;
    let unigram_vocab: Vec<(String, f64)> = by_id
        .iter()
        .enumerate()
        .map(|(id, piece)| match piece {
            Some(p) => match scores.get(p.as_str()) {
                Some((score, PieceType::Normal | PieceType::UserDefined)) => {
                    (p.clone(), *score as f64)
                }
                _ => (p.clone(), never),
            },
            None => (format!("<unused {id}>"), never),
        })
        .collect();
    let unk = vocab
        .get("<unk>")
        .copied()
        .ok_or_else(|| bad(format!("{} has no <unk>", vocab_json.display())))?;
    let eos = vocab
        .get("</s>")
        .copied()
        .ok_or_else(|| bad(format!("{} has no </s>", vocab_json.display())))?;
    let model =
        Unigram::from(unigram_vocab, Some(unk as usize), false).map_err(|e| bad(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(model);
    let mut normalizers = Vec::new();
    if !spm.precompiled_charsmap.is_empty() {
        let precompiled = Precompiled::from(&spm.precompiled_charsmap)
            .map_err(|e| bad(format!("precompiled_charsmap: {e}")))?;
        normalizers.push(precompiled.into());
    }
    if spm.remove_extra_whitespaces {
        normalizers.push(Strip::new(false, true).into());
        normalizers.push(
            Replace::new(
                tokenizers::normalizers::replace::ReplacePattern::Regex(" {2,}".into()),
                "▁",
            )
            .map_err(|e| bad(e.to_string()))?
            .into(),
        );
    }
    tokenizer
        .with_normalizer(Some(Sequence::new(normalizers)))
        .map_err(|e| bad(e.to_string()))?;
    let scheme = if spm.add_dummy_prefix {
        PrependScheme::Always
    } else {
        PrependScheme::Never
    };
    tokenizer.with_pre_tokenizer(Some(Metaspace::new('▁', scheme, true)));
    tokenizer.with_decoder(Some(Metaspace::new('▁', scheme, true)));
    let processor = TemplateProcessing::builder()
        .try_single("$A </s>")
        .and_then(|b| b.try_pair("$A $B </s>"))
        .map_err(|e| bad(e.to_string()))?
        .special_tokens(vec![("</s>", eos)])
        .build()
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_post_processor(Some(processor));
    let specials: Vec<AddedToken> = ["</s>", "<unk>", "<pad>"]
        .iter()
        .filter(|t| vocab.contains_key(**t))
        .map(|t| AddedToken::from(t.to_string(), true))
        .collect();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(number: u64, wire: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![((number << 3) | wire) as u8];
        if wire == 2 {
            out.push(payload.len() as u8);
        }
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn reads_pieces_scores_types_and_normalizer() {
        let mut piece = field(1, 2, "▁hi".as_bytes());
        piece.extend(field(2, 5, &(-1.5f32).to_le_bytes()));
        let mut unk = field(1, 2, b"<unk>");
        unk.extend(field(3, 0, &[2]));
        let mut normalizer = field(3, 0, &[0]);
        normalizer.extend(field(2, 2, &[1, 2, 3]));
        let mut bytes = field(1, 2, &piece);
        bytes.extend(field(1, 2, &unk));
        bytes.extend(field(3, 2, &normalizer));
        let m = SentencePieceModel::parse(&bytes).unwrap();
        assert_eq!(m.pieces[0].piece, "▁hi");
        assert_eq!(m.pieces[0].score, -1.5);
        assert_eq!(m.pieces[1].kind, PieceType::Unknown);
        assert!(!m.add_dummy_prefix && m.remove_extra_whitespaces);
        assert_eq!(m.precompiled_charsmap, [1, 2, 3]);
        assert!(SentencePieceModel::parse(b"\x0a\x05ab").is_err());
        assert!(SentencePieceModel::parse(b"").is_err());
    }
}

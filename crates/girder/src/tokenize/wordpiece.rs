//! A BERT WordPiece tokenizer built from `vocab.txt` + `tokenizer_config.json`, for folders
//! that predate `tokenizer.json`. Mirrors what transformers' `BertConverter` builds when it
//! converts the slow `BertTokenizer` into a fast one.

use super::TokenizerConfig;
use crate::error::{Error, Result};
use std::path::Path;
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{AddedToken, Tokenizer};

pub(super) fn from_vocab(vocab: &Path, config: &TokenizerConfig) -> Result<Tokenizer> {
    let bad = |reason: String| Error::BadTokenizer {
        file: vocab.to_path_buf(),
        reason,
    };
    let token = |field: &Option<super::TokenField>, default: &str| {
        field
            .as_ref()
            .map(|t| t.content().to_string())
            .unwrap_or_else(|| default.to_string())
    };
    let unk = token(&config.unk_token, "[UNK]");
    let sep = token(&config.sep_token, "[SEP]");
    let cls = token(&config.cls_token, "[CLS]");
    let pad = token(&config.pad_token, "[PAD]");
    let mask = token(&config.mask_token, "[MASK]");

    let path = vocab
        .to_str()
        .ok_or_else(|| bad("the path is not valid UTF-8".into()))?;
    let model = WordPiece::from_file(path)
        .unk_token(unk.clone())
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut tokenizer = Tokenizer::new(model);
    let lowercase = config.do_lower_case.unwrap_or(true);
    tokenizer
        .with_normalizer(Some(BertNormalizer::new(
            true,
            config.tokenize_chinese_chars.unwrap_or(true),
            config.strip_accents,
            lowercase,
        )))
        .map_err(|e| bad(e.to_string()))?;
    tokenizer.with_pre_tokenizer(Some(BertPreTokenizer));
    let id = |t: &str| {
        tokenizer
            .token_to_id(t)
            .ok_or_else(|| bad(format!("special token `{t}` is not in the vocabulary")))
    };
    let (sep_id, cls_id) = (id(&sep)?, id(&cls)?);
    tokenizer.with_post_processor(Some(BertProcessing::new(
        (sep.clone(), sep_id),
        (cls.clone(), cls_id),
    )));
    tokenizer.with_decoder(Some(WordPieceDecoder::default()));
    let specials = [unk, sep, cls, pad, mask]
        .into_iter()
        .filter(|t| tokenizer.token_to_id(t).is_some())
        .map(|t| AddedToken::from(t, true))
        .collect::<Vec<_>>();
    tokenizer
        .add_special_tokens(specials)
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokenizer)
}

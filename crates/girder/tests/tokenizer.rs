//! The tokenizer policy: baked-in padding and truncation are overridden, the WordPiece
//! fallback (vocab.txt + tokenizer_config.json) equals tokenizer.json, truncation is reported.

mod common;

use common::{Fixture, ScratchModel};
use girder::pipelines::Model;
use girder::LoadOptions;

#[test]
fn vocab_txt_fallback_equals_tokenizer_json() {
    let fx = Fixture::load(&common::fixtures_dir().join("bert-seqcls"));
    let m = ScratchModel::copy_of("bert-seqcls", "wordpiece");
    std::fs::remove_file(m.path("tokenizer.json")).unwrap();
    let model = Model::load(m.as_str(), &LoadOptions::default()).unwrap();
    assert!(model.tokenizer.source().ends_with("vocab.txt"));
    for (i, text) in fx.expected.texts.iter().enumerate() {
        let enc = model.tokenizer.encode(text, i).unwrap();
        let want = &fx.expected.encodings[i];
        assert_eq!(enc.ids, want.input_ids, "text {i}");
        assert_eq!(enc.offsets, want.offsets, "text {i}");
        assert_eq!(enc.word_ids, want.word_ids, "text {i}");
        assert_eq!(enc.truncated, want.truncated, "text {i}");
    }
}

#[test]
fn baked_in_padding_is_ignored_and_user_limit_applies() {
    // The fixture's tokenizer.json (MiniLM's) pads to 128 and truncates at 128.
    let dir = common::fixtures_dir().join("bert-seqcls");
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenizer.json")).unwrap())
            .unwrap();
    assert!(
        !raw["padding"].is_null(),
        "the fixture is meant to carry baked-in padding"
    );
    let options = LoadOptions {
        max_length: Some(8),
        ..Default::default()
    };
    let model = Model::load(dir.to_str().unwrap(), &options).unwrap();
    let short = model.tokenizer.encode("hi", 0).unwrap();
    assert_eq!(short.len(), 3, "no padding: [CLS] hi [SEP]");
    assert!(!short.truncated);
    let long = model
        .tokenizer
        .encode("one two three four five six seven eight nine", 1)
        .unwrap();
    assert_eq!(long.len(), 8);
    assert!(long.truncated);
    assert_eq!(long.tokens.last().map(String::as_str), Some("[SEP]"));
}

/// A text of `words` pseudo-random words: ASCII, accents, CJK, emoji, punctuation, long
/// words and runs of whitespace, so cuts fall in every kind of place.
fn mixed_text(words: usize, seed: u64) -> String {
    const PIECES: [&str; 16] = [
        "the",
        "tokenizer",
        "café",
        "naïve",
        "東京",
        "世界は広い",
        "🙂",
        "don't",
        ",",
        ".",
        "supercalifragilisticexpialidocious",
        "12345",
        "\n",
        "   ",
        "\t",
        "x",
    ];
    let mut state = seed | 1;
    let mut text = String::new();
    for _ in 0..words {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
        if !state.is_multiple_of(3) {
            text.push(' ');
        }
    }
    text
}

/// A text far over the limit is tokenized only in part, and the kept end's ids are those of
/// the whole text's encoding, for every kind of tokenizer among the fixtures.
#[test]
fn long_texts_are_tokenized_only_as_far_as_the_limit() {
    use girder::tokenize::{encode_within, Keep, Within};
    for fixture in [
        "bert-base",
        "roberta-base",
        "xlmr-base",
        "mpnet-base",
        "gpt2-causal-lm",
        "qwen2-causal-lm",
        "t5-seq2seq",
    ] {
        let path = common::fixtures_dir().join(fixture).join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path).unwrap();
        tokenizer.with_padding(None);
        tokenizer.with_truncation(None).unwrap();
        for (max, words, seed) in [(8, 400, 1), (64, 3000, 2), (300, 20_000, 3), (40, 60, 4)] {
            let text = mixed_text(words, seed);
            let full = tokenizer.encode_char_offsets(text.as_str(), true).unwrap();
            let full = full.get_ids();
            for keep in [Keep::Start, Keep::End] {
                match encode_within(&tokenizer, &text, true, max, keep).unwrap() {
                    Within::Whole(encoding) => {
                        assert_eq!(encoding.get_ids(), full, "{fixture} {max} {keep:?}");
                        assert!(
                            text.len() <= 2 * (max + 16) * 8 || full.len() <= max + 16,
                            "{fixture} {max} {keep:?}: a long text was tokenized whole"
                        );
                    }
                    Within::Over { encoding, .. } => {
                        let part = encoding.get_ids();
                        assert!(part.len() > max, "{fixture} {max} {keep:?}");
                        assert!(part.len() < full.len(), "{fixture} {max} {keep:?}");
                        match keep {
                            Keep::Start => {
                                assert_eq!(&part[..max], &full[..max], "{fixture} {max}")
                            }
                            Keep::End => assert_eq!(
                                &part[part.len() - max..],
                                &full[full.len() - max..],
                                "{fixture} {max}"
                            ),
                        }
                    }
                }
            }
        }
    }
}

/// Through the model's tokenizer: a truncated long text equals the truncation of its whole
/// encoding, offsets and word ids included; a refused one says it was not counted whole.
#[test]
fn long_inputs_truncate_as_whole_ones_and_refusal_is_cheap() {
    let text = mixed_text(200_000, 7);
    assert!(text.len() > 1_000_000);
    let model = Model::load(
        common::fixtures_dir().join("bert-base").to_str().unwrap(),
        &LoadOptions::default(),
    )
    .unwrap();
    let max = model.tokenizer.max_length();
    let enc = model.tokenizer.encode(&text, 3).unwrap();
    let mut whole = model.tokenizer.inner().clone();
    whole.with_truncation(None).unwrap();
    let full = whole.encode_char_offsets(text.as_str(), true).unwrap();
    assert!(enc.truncated);
    assert_eq!(enc.len(), max);
    let content = max - 1; // [CLS] + content; [SEP] ends both
    assert_eq!(&enc.ids[..content], &full.get_ids()[..content]);
    assert_eq!(&enc.offsets[..content], &full.get_offsets()[..content]);
    assert_eq!(&enc.word_ids[..content], &full.get_word_ids()[..content]);
    let refusing = Model::load(
        common::fixtures_dir().join("bert-base").to_str().unwrap(),
        &LoadOptions {
            truncation: girder::tokenize::Truncation::Refuse,
            ..Default::default()
        },
    )
    .unwrap();
    let err = refusing.tokenizer.encode(&text, 3).unwrap_err();
    assert!(
        matches!(
            err,
            girder::Error::InputTooLong {
                index: 3,
                tokens: None,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("more tokens"), "{err}");
}

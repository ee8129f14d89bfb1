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

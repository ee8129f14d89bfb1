//! Post-processing of the `token-classification` (NER) pipeline, following
//! transformers' `pipelines/token_classification.py`
//! (`TokenClassificationPipeline.postprocess`, `gather_pre_entities`,
//! `aggregate`, `aggregate_words`, `aggregate_word`, `group_entities`,
//! `group_sub_entities`) of transformers 5.24.0, for one un-chunked text
//! (no `stride`, no `is_split_into_words`).
//!
//! Output shapes:
//! * `aggregation_strategy="none"` (default): one dict per non-special token,
//!   keys `entity, score, index, word, start, end`.
//! * any other strategy: grouped entities, keys
//!   `entity_group, score, word, start, end`.
//!
//! In both cases entities whose label is in `ignore_labels` (default `["O"]`)
//! are dropped after aggregation; `start`/`end` are character offsets, `null`
//! when the tokenizer gives no offsets.

use super::{in_input_order, Model};
use crate::error::{Error, Result};
use crate::models::Head;
use crate::tokenize::Encoded;
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use super::postprocess::{
    char_slice, continuing_subword_prefix, convert_tokens_to_string, np_argmax, np_max, np_nanmean,
    np_nanmean_axis0, np_softmax, unk_token_id, PostprocessError,
};

/// transformers' `AggregationStrategy` (serialised lowercase, as its values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregationStrategy {
    /// Raw per-token predictions, no grouping.
    #[default]
    None,
    /// Group adjacent tokens with the same tag (B-/I- aware).
    Simple,
    /// Words take the label of their first token, then `simple` grouping.
    First,
    /// Words take the label with the best average score over their tokens.
    Average,
    /// Words take the label of their most confident token.
    Max,
}

impl std::str::FromStr for AggregationStrategy {
    type Err = String;

    /// transformers accepts any case (`AggregationStrategy[s.upper()]`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_uppercase().as_str() {
            "NONE" => Ok(AggregationStrategy::None),
            "SIMPLE" => Ok(AggregationStrategy::Simple),
            "FIRST" => Ok(AggregationStrategy::First),
            "AVERAGE" => Ok(AggregationStrategy::Average),
            "MAX" => Ok(AggregationStrategy::Max),
            _ => Err(format!(
                "unknown aggregation_strategy {s:?} (expected none, simple, first, average or max)"
            )),
        }
    }
}

impl AggregationStrategy {
    fn works_on_words(self) -> bool {
        matches!(
            self,
            AggregationStrategy::First | AggregationStrategy::Average | AggregationStrategy::Max
        )
    }
}

/// Call parameters of the pipeline. `Default` is transformers' default call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub aggregation_strategy: AggregationStrategy,
    /// Labels (or entity groups) to drop; transformers defaults to `["O"]`.
    pub ignore_labels: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            aggregation_strategy: AggregationStrategy::None,
            ignore_labels: vec!["O".to_string()],
        }
    }
}

/// One token's prediction (`aggregation_strategy="none"`), keys in
/// transformers' order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenEntity {
    pub entity: String,
    /// `float32` score widened to `f64` (Python's `float(np.float32)`).
    pub score: f64,
    /// Position of the token in the encoding (special tokens included).
    pub index: usize,
    pub word: String,
    pub start: Option<usize>,
    pub end: Option<usize>,
}

/// One grouped entity (every strategy but `none`), keys in transformers' order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupEntity {
    pub entity_group: String,
    pub score: f64,
    pub word: String,
    pub start: Option<usize>,
    pub end: Option<usize>,
}

/// An element of the pipeline's output list.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Entity {
    Token(TokenEntity),
    Group(GroupEntity),
}

/// `pre_entity` dict of `gather_pre_entities`.
struct PreEntity<'a> {
    word: String,
    scores: &'a [f32],
    start: Option<usize>,
    end: Option<usize>,
    index: usize,
    is_subword: bool,
}

/// Ungrouped entity as `aggregate`/`aggregate_word` build it (score still `float32`;
/// `index` is absent for word-aggregated entities).
struct RawEntity {
    entity: String,
    score: f32,
    index: Option<usize>,
    word: String,
    start: Option<usize>,
    end: Option<usize>,
}

fn label(id2label: &[String], index: usize) -> Result<String, PostprocessError> {
    id2label
        .get(index)
        .cloned()
        .ok_or(PostprocessError::UnknownLabel {
            index,
            num_labels: id2label.len(),
        })
}

/// Best label and its score for one row of probabilities (`scores.argmax()`).
fn best(scores: &[f32], id2label: &[String]) -> Result<(String, f32), PostprocessError> {
    let index = np_argmax(scores).ok_or(PostprocessError::EmptyScores)?;
    Ok((label(id2label, index)?, scores[index]))
}

/// `TokenClassificationPipeline.postprocess` for one text.
///
/// `logits` is row-major `[enc.ids.len(), num_labels]`; the row width is
/// taken from the logits, labels are looked up in `id2label` (missing →
/// [`PostprocessError::UnknownLabel`], transformers' `KeyError`). An encoding
/// with empty `offsets` is treated like a slow tokenizer (no offsets): `start`
/// and `end` are `null`, no token is a subword, and `first`/`average`/`max`
/// are refused as transformers refuses them.
pub fn postprocess(
    text: &str,
    enc: &Encoded,
    logits: &[f32],
    id2label: &[String],
    tokenizer: &Tokenizer,
    opts: &Options,
) -> Result<Vec<Entity>, PostprocessError> {
    let strategy = opts.aggregation_strategy;
    let n = enc.ids.len();
    let has_offsets = !enc.offsets.is_empty();
    if strategy.works_on_words() && !has_offsets {
        return Err(PostprocessError::SubwordsWithoutOffsets);
    }
    if n == 0 {
        return Ok(Vec::new());
    }
    if !logits.len().is_multiple_of(n) {
        return Err(PostprocessError::ShapeMismatch {
            what: "token-classification logits (not a multiple of the token count)",
            expected: n,
            got: logits.len(),
        });
    }
    if enc.special_tokens_mask.len() != n {
        return Err(PostprocessError::ShapeMismatch {
            what: "special_tokens_mask length",
            expected: n,
            got: enc.special_tokens_mask.len(),
        });
    }
    if has_offsets && enc.offsets.len() != n {
        return Err(PostprocessError::ShapeMismatch {
            what: "offsets length",
            expected: n,
            got: enc.offsets.len(),
        });
    }
    let width = logits.len() / n;
    // Softmax row by row, as the numpy code does on the whole [tokens, labels] array.
    let scores: Vec<Vec<f32>> = if width == 0 {
        vec![Vec::new(); n]
    } else {
        logits.chunks(width).map(np_softmax).collect()
    };

    let pre_entities = gather_pre_entities(text, enc, &scores, tokenizer, has_offsets)?;
    let entities = aggregate(pre_entities, strategy, id2label, tokenizer)?;

    // `entity.get("entity") not in ignore_labels and entity.get("entity_group") not in ignore_labels`
    let ignored = |name: &str| opts.ignore_labels.iter().any(|l| l == name);
    Ok(entities
        .into_iter()
        .filter(|e| match e {
            Entity::Token(t) => !ignored(&t.entity),
            Entity::Group(g) => !ignored(&g.entity_group),
        })
        .collect())
}

/// `gather_pre_entities`: one pre-entity per non-special token, with the
/// token string as `word` (the original text for unknown tokens) and the
/// `is_subword` flag used by word aggregation.
fn gather_pre_entities<'a>(
    text: &str,
    enc: &Encoded,
    scores: &'a [Vec<f32>],
    tokenizer: &Tokenizer,
    has_offsets: bool,
) -> Result<Vec<PreEntity<'a>>, PostprocessError> {
    let chars: Vec<char> = text.chars().collect();
    // A word-aware model (WordPiece "##", BPE with a continuing-subword prefix)
    // lets transformers compare the token's length with the text it covers.
    let word_aware = continuing_subword_prefix(tokenizer).is_some();
    let unk = unk_token_id(tokenizer);

    let mut pre_entities = Vec::new();
    for (idx, token_scores) in scores.iter().enumerate() {
        if enc.special_tokens_mask.get(idx).copied().unwrap_or(0) != 0 {
            continue;
        }
        let id = enc.ids[idx];
        // `convert_ids_to_tokens(id)`
        let mut word = match enc.tokens.get(idx) {
            Some(t) => t.clone(),
            None => tokenizer.id_to_token(id).unwrap_or_default(),
        };
        let (start, end, is_subword) = if has_offsets {
            let (start, end) = enc.offsets[idx];
            let word_ref = char_slice(&chars, start, end);
            let mut is_subword = if word_aware {
                word.chars().count() != word_ref.chars().count()
            } else {
                // Fallback heuristic for tokenizers that are not word aware:
                // `start > 0 and " " not in sentence[start - 1 : start + 1]`.
                start > 0 && !char_slice(&chars, start - 1, start + 1).contains(' ')
            };
            if Some(id) == unk {
                word = word_ref;
                is_subword = false;
            }
            (Some(start), Some(end), is_subword)
        } else {
            (None, None, false)
        };
        pre_entities.push(PreEntity {
            word,
            scores: token_scores,
            start,
            end,
            index: idx,
            is_subword,
        });
    }
    Ok(pre_entities)
}

/// `aggregate`: per-token (none/simple) or per-word (first/average/max)
/// entities, then `group_entities` unless the strategy is `none`.
fn aggregate(
    pre_entities: Vec<PreEntity<'_>>,
    strategy: AggregationStrategy,
    id2label: &[String],
    tokenizer: &Tokenizer,
) -> Result<Vec<Entity>, PostprocessError> {
    let entities = if strategy.works_on_words() {
        aggregate_words(&pre_entities, strategy, id2label, tokenizer)?
    } else {
        pre_entities
            .into_iter()
            .map(|pre| {
                let (entity, score) = best(pre.scores, id2label)?;
                Ok(RawEntity {
                    entity,
                    score,
                    index: Some(pre.index),
                    word: pre.word,
                    start: pre.start,
                    end: pre.end,
                })
            })
            .collect::<Result<Vec<_>, PostprocessError>>()?
    };

    if strategy == AggregationStrategy::None {
        return Ok(entities
            .into_iter()
            .map(|e| {
                Entity::Token(TokenEntity {
                    entity: e.entity,
                    score: f64::from(e.score),
                    // Always set on this path (per-token entities).
                    index: e.index.unwrap_or_default(),
                    word: e.word,
                    start: e.start,
                    end: e.end,
                })
            })
            .collect());
    }
    group_entities(entities, tokenizer)
}

/// `aggregate_words`: a word is a token followed by its subword tokens; the
/// first pre-entity always opens a word, even when flagged as a subword.
fn aggregate_words(
    pre_entities: &[PreEntity<'_>],
    strategy: AggregationStrategy,
    id2label: &[String],
    tokenizer: &Tokenizer,
) -> Result<Vec<RawEntity>, PostprocessError> {
    let mut words = Vec::new();
    let mut group: Vec<&PreEntity<'_>> = Vec::new();
    for pre in pre_entities {
        if !group.is_empty() && !pre.is_subword {
            words.push(aggregate_word(&group, strategy, id2label, tokenizer)?);
            group.clear();
        }
        group.push(pre);
    }
    if !group.is_empty() {
        words.push(aggregate_word(&group, strategy, id2label, tokenizer)?);
    }
    Ok(words)
}

/// `aggregate_word` for a non-empty group of pre-entities.
fn aggregate_word(
    group: &[&PreEntity<'_>],
    strategy: AggregationStrategy,
    id2label: &[String],
    tokenizer: &Tokenizer,
) -> Result<RawEntity, PostprocessError> {
    let word = convert_tokens_to_string(tokenizer, group.iter().map(|p| p.word.clone()).collect())?;
    let (entity, score) = match strategy {
        AggregationStrategy::Max => {
            // Python's `max(entities, key=lambda e: e["scores"].max())`: the first
            // entity whose key is strictly greater than all before it.
            let mut chosen: Option<(&PreEntity<'_>, f32)> = None;
            for pre in group {
                let key = np_max(pre.scores).ok_or(PostprocessError::EmptyScores)?;
                let replace = match chosen {
                    None => true,
                    // NaN keys never compare greater (and a NaN leader is never replaced).
                    Some((_, best_key)) => key > best_key,
                };
                if replace {
                    chosen = Some((pre, key));
                }
            }
            let (pre, _) = chosen.ok_or(PostprocessError::EmptyScores)?;
            best(pre.scores, id2label)?
        }
        AggregationStrategy::Average => {
            let rows: Vec<&[f32]> = group.iter().map(|p| p.scores).collect();
            let average = np_nanmean_axis0(&rows);
            best(&average, id2label)?
        }
        // `first` (and, unreachably, none/simple, for which transformers raises).
        _ => {
            let first = group.first().ok_or(PostprocessError::EmptyScores)?;
            best(first.scores, id2label)?
        }
    };
    Ok(RawEntity {
        entity,
        score,
        index: None,
        word,
        start: group.first().and_then(|p| p.start),
        end: group.last().and_then(|p| p.end),
    })
}

/// `get_tag`: `("B", tag)` / `("I", tag)` for `B-`/`I-` prefixed labels,
/// `("I", label)` for anything else (continuation by default).
fn get_tag(entity_name: &str) -> (&'static str, &str) {
    if let Some(tag) = entity_name.strip_prefix("B-") {
        ("B", tag)
    } else if let Some(tag) = entity_name.strip_prefix("I-") {
        ("I", tag)
    } else {
        ("I", entity_name)
    }
}

/// `group_entities`: merge an entity into the running group when it has the
/// same tag and is not a `B-`; a `B-` always opens a new group.
fn group_entities(
    entities: Vec<RawEntity>,
    tokenizer: &Tokenizer,
) -> Result<Vec<Entity>, PostprocessError> {
    let mut groups = Vec::new();
    let mut current: Vec<RawEntity> = Vec::new();
    for entity in entities {
        if let Some(last) = current.last() {
            let (bi, tag) = get_tag(&entity.entity);
            let (_, last_tag) = get_tag(&last.entity);
            if !(tag == last_tag && bi != "B") {
                groups.push(group_sub_entities(&current, tokenizer)?);
                current.clear();
            }
        }
        current.push(entity);
    }
    if !current.is_empty() {
        groups.push(group_sub_entities(&current, tokenizer)?);
    }
    Ok(groups)
}

/// `group_sub_entities` for a non-empty group. The group's name is the first
/// entity's label after its first `-` (`"B-PER"` → `"PER"`, `"O"` → `"O"`,
/// `"B-geo-loc"` → `"geo-loc"`), which is not always `get_tag`'s tag; the
/// score is the `np.nanmean` of the entity scores; the word is
/// `convert_tokens_to_string` of their words.
fn group_sub_entities(
    entities: &[RawEntity],
    tokenizer: &Tokenizer,
) -> Result<Entity, PostprocessError> {
    let first = entities.first().ok_or(PostprocessError::EmptyScores)?;
    let entity_group = match first.entity.split_once('-') {
        Some((_, rest)) => rest.to_string(),
        None => first.entity.clone(),
    };
    let scores: Vec<f32> = entities.iter().map(|e| e.score).collect();
    // `np.mean(np.nanmean(...))` of a scalar is the scalar itself.
    let score = np_nanmean(&scores);
    let word =
        convert_tokens_to_string(tokenizer, entities.iter().map(|e| e.word.clone()).collect())?;
    Ok(Entity::Group(GroupEntity {
        entity_group,
        score: f64::from(score),
        word,
        start: first.start,
        end: entities.last().and_then(|e| e.end),
    }))
}

/// One text's entities, and whether it was truncated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextResult {
    pub entities: Vec<Entity>,
    pub truncated: bool,
}

/// Tags each text; one result per text, in order.
pub fn run<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    options: &Options,
) -> Result<Vec<TextResult>> {
    check_head(model)?;
    let encodings = model.encode_texts(texts)?;
    run_encoded(model, texts, &encodings, &model.plan(&encodings), options)
}

fn check_head(model: &Model) -> Result<()> {
    if model.encoder.head() != Head::TokenClassification {
        return Err(Error::TaskMismatch {
            model: model.encoder.class_name().to_string(),
            task: "token-classification".into(),
            reason: "it has no token-classification head (architectures must name a …ForTokenClassification class)".into(),
        });
    }
    Ok(())
}

/// [`run`] on texts already tokenized with `model.tokenizer` (the texts are needed for
/// the entities' words).
pub fn run_encoded<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    encodings: &[Encoded],
    plan: &[Vec<usize>],
    options: &Options,
) -> Result<Vec<TextResult>> {
    check_head(model)?;
    let tokenizer = model.tokenizer.inner();
    let labels = &model.config.id2label;
    let mut results = (0..encodings.len()).map(|_| None).collect::<Vec<_>>();
    model.forward_batches(encodings, plan, |indices, batch, out| {
        let logits = model.encoder.head_logits(out, batch, None)?;
        for (i, &index) in indices.iter().enumerate() {
            let range = batch.seq_range(i);
            let rows = logits
                .narrow(0, range.start, range.len())?
                .flatten_all()?
                .to_vec1::<f32>()?;
            let enc = &encodings[index];
            let entities = postprocess(
                texts[index].as_ref(),
                enc,
                &rows,
                labels,
                tokenizer,
                options,
            )
            .map_err(|e| Error::BadInput {
                index,
                reason: e.to_string(),
            })?;
            results[index] = Some(TextResult {
                entities,
                truncated: enc.truncated,
            });
        }
        Ok(())
    })?;
    Ok(in_input_order(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipelines::postprocess::test_support::{bert_like, encode};

    /// A tiny BERT-like (WordPiece, `##` subwords) tokenizer.
    fn wordpiece_tokenizer() -> Tokenizer {
        let vocab = [
            "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "my", "name", "is", "wolf", "##gang",
            "and", "i", "live", "in", "berlin", "new", "york", "micro", "##soft", ".",
        ];
        bert_like(&vocab)
    }

    fn labels() -> Vec<String> {
        ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// One logits row putting `hot` on label `winner`.
    fn row(winner: usize, hot: f32) -> Vec<f32> {
        (0..5)
            .map(|i| if i == winner { hot } else { 0.0 })
            .collect()
    }

    fn run(text: &str, rows: &[Vec<f32>], strategy: AggregationStrategy) -> Vec<Entity> {
        let tok = wordpiece_tokenizer();
        let enc = encode(&tok, text);
        assert_eq!(enc.ids.len(), rows.len(), "{:?}", enc.tokens);
        let logits: Vec<f32> = rows.concat();
        let opts = Options {
            aggregation_strategy: strategy,
            ..Options::default()
        };
        postprocess(text, &enc, &logits, &labels(), &tok, &opts).unwrap()
    }

    fn groups(out: &[Entity]) -> Vec<(String, String, usize, usize)> {
        out.iter()
            .map(|e| match e {
                Entity::Group(g) => (
                    g.entity_group.clone(),
                    g.word.clone(),
                    g.start.unwrap(),
                    g.end.unwrap(),
                ),
                Entity::Token(t) => panic!("ungrouped {t:?}"),
            })
            .collect()
    }

    #[test]
    fn none_strategy_lists_tokens_and_ignores_o() {
        // [CLS] my name is wolf ##gang [SEP]
        let rows = [
            row(0, 5.0),
            row(0, 5.0),
            row(0, 5.0),
            row(0, 5.0),
            row(1, 5.0),
            row(2, 5.0),
            row(0, 5.0),
        ];
        let out = run("My name is Wolfgang", &rows, AggregationStrategy::None);
        assert_eq!(out.len(), 2);
        let json = serde_json::to_string(&out[1]).unwrap();
        assert!(
            json.starts_with(r#"{"entity":"I-PER","score":0.9"#),
            "{json}"
        );
        assert!(json.ends_with(r###","index":5,"word":"##gang","start":15,"end":19}"###));
    }

    #[test]
    fn simple_grouping_with_mixed_tags() {
        // [CLS] wolf ##gang new york berlin [SEP]
        let rows = [
            row(0, 5.0),
            row(1, 5.0), // B-PER
            row(2, 5.0), // I-PER  -> joins
            row(3, 5.0), // B-LOC  -> new group
            row(4, 5.0), // I-LOC  -> joins
            row(3, 5.0), // B-LOC  -> B always starts a group
            row(0, 5.0),
        ];
        let out = run(
            "Wolfgang New York Berlin",
            &rows,
            AggregationStrategy::Simple,
        );
        assert_eq!(
            groups(&out),
            vec![
                ("PER".into(), "wolfgang".into(), 0, 8),
                ("LOC".into(), "new york".into(), 9, 17),
                ("LOC".into(), "berlin".into(), 18, 24),
            ]
        );
        let json = serde_json::to_string(&out[0]).unwrap();
        assert!(json.starts_with(r#"{"entity_group":"PER","score":0.9"#));
        assert!(json.ends_with(r#","word":"wolfgang","start":0,"end":8}"#));
    }

    #[test]
    fn i_tag_after_other_tag_starts_new_group_and_o_is_dropped() {
        // [CLS] berlin wolf ##gang [SEP]: I-LOC, I-PER(wolf), I-LOC(##gang)
        let rows = [
            row(0, 5.0),
            row(4, 5.0),
            row(2, 5.0),
            row(4, 5.0),
            row(0, 5.0),
        ];
        let out = run("Berlin Wolfgang", &rows, AggregationStrategy::Simple);
        assert_eq!(
            groups(&out),
            vec![
                ("LOC".into(), "berlin".into(), 0, 6),
                ("PER".into(), "wolf".into(), 7, 11),
                ("LOC".into(), "##gang".into(), 11, 15),
            ]
        );
    }

    #[test]
    fn first_average_max_agree_on_words() {
        // [CLS] micro ##soft [SEP]: micro says B-PER (weakly), ##soft says B-LOC strongly.
        let rows = [
            row(0, 5.0),
            vec![0.0, 2.0, 0.0, 1.5, 0.0],
            vec![0.0, 0.0, 0.0, 6.0, 0.0],
            row(0, 5.0),
        ];
        let first = run("Microsoft", &rows, AggregationStrategy::First);
        assert_eq!(
            groups(&first),
            vec![("PER".into(), "microsoft".into(), 0, 9)]
        );
        let max = run("Microsoft", &rows, AggregationStrategy::Max);
        assert_eq!(groups(&max), vec![("LOC".into(), "microsoft".into(), 0, 9)]);
        let average = run("Microsoft", &rows, AggregationStrategy::Average);
        assert_eq!(
            groups(&average),
            vec![("LOC".into(), "microsoft".into(), 0, 9)]
        );
        let simple = run("Microsoft", &rows, AggregationStrategy::Simple);
        assert_eq!(
            groups(&simple),
            vec![
                ("PER".into(), "micro".into(), 0, 5),
                ("LOC".into(), "##soft".into(), 5, 9),
            ]
        );
    }

    #[test]
    fn unknown_token_uses_original_text() {
        // [CLS] my [UNK] [SEP]
        let rows = [row(0, 5.0), row(1, 5.0), row(2, 5.0), row(0, 5.0)];
        let out = run("my Zoë", &rows, AggregationStrategy::None);
        match &out[1] {
            Entity::Token(t) => {
                assert_eq!((t.word.as_str(), t.start, t.end), ("Zoë", Some(3), Some(6)))
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn custom_ignore_labels_and_empty_inputs() {
        let tok = wordpiece_tokenizer();
        let enc = encode(&tok, "berlin");
        let logits: Vec<f32> = [row(0, 5.0), row(3, 5.0), row(0, 5.0)].concat();
        let keep_all = Options {
            aggregation_strategy: AggregationStrategy::Simple,
            ignore_labels: vec![],
        };
        let out = postprocess("berlin", &enc, &logits, &labels(), &tok, &keep_all).unwrap();
        assert_eq!(out.len(), 1);
        let drop_loc = Options {
            aggregation_strategy: AggregationStrategy::Simple,
            ignore_labels: vec!["LOC".into()],
        };
        assert!(
            postprocess("berlin", &enc, &logits, &labels(), &tok, &drop_loc)
                .unwrap()
                .is_empty()
        );

        let empty = Encoded::default();
        for strategy in [AggregationStrategy::None, AggregationStrategy::Simple] {
            let opts = Options {
                aggregation_strategy: strategy,
                ..Options::default()
            };
            assert_eq!(
                postprocess("", &empty, &[], &labels(), &tok, &opts),
                Ok(vec![])
            );
        }
        let enc = encode(&tok, "");
        let logits: Vec<f32> = [row(0, 1.0), row(0, 1.0)].concat();
        assert_eq!(
            postprocess("", &enc, &logits, &labels(), &tok, &Options::default()),
            Ok(vec![])
        );
        // Zero labels with real tokens: numpy's argmax of an empty row raises.
        let enc = encode(&tok, "berlin");
        assert_eq!(
            postprocess("berlin", &enc, &[], &[], &tok, &Options::default()),
            Err(PostprocessError::EmptyScores)
        );
        // Wrong logits shape.
        assert!(matches!(
            postprocess(
                "berlin",
                &enc,
                &[1.0; 4],
                &labels(),
                &tok,
                &Options::default()
            ),
            Err(PostprocessError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn odd_encodings_do_not_panic() {
        let tok = wordpiece_tokenizer();
        let enc = Encoded {
            ids: vec![5, 1, 999],
            tokens: vec![],
            offsets: vec![(10, 3), (100, 200), (0, 1)],
            special_tokens_mask: vec![0, 0, 0],
            ..Encoded::default()
        };
        let logits: Vec<f32> = [row(1, 1.0), row(2, f32::NAN), row(0, 1.0)].concat();
        for strategy in [
            AggregationStrategy::None,
            AggregationStrategy::Simple,
            AggregationStrategy::First,
            AggregationStrategy::Average,
            AggregationStrategy::Max,
        ] {
            let opts = Options {
                aggregation_strategy: strategy,
                ignore_labels: vec![],
            };
            let out = postprocess("ab", &enc, &logits, &labels(), &tok, &opts).unwrap();
            assert!(!out.is_empty());
        }
        let short = Encoded {
            special_tokens_mask: vec![0],
            ..enc
        };
        assert!(matches!(
            postprocess("ab", &short, &logits, &labels(), &tok, &Options::default()),
            Err(PostprocessError::ShapeMismatch { .. })
        ));
    }

    #[test]
    fn word_strategies_need_offsets() {
        let tok = wordpiece_tokenizer();
        let mut enc = encode(&tok, "berlin");
        enc.offsets.clear();
        let logits: Vec<f32> = [row(0, 5.0), row(3, 5.0), row(0, 5.0)].concat();
        for strategy in [
            AggregationStrategy::First,
            AggregationStrategy::Average,
            AggregationStrategy::Max,
        ] {
            let opts = Options {
                aggregation_strategy: strategy,
                ..Options::default()
            };
            assert_eq!(
                postprocess("berlin", &enc, &logits, &labels(), &tok, &opts),
                Err(PostprocessError::SubwordsWithoutOffsets)
            );
        }
        let out = postprocess(
            "berlin",
            &enc,
            &logits,
            &labels(),
            &tok,
            &Options::default(),
        )
        .unwrap();
        let json = serde_json::to_string(&out).unwrap();
        assert!(
            json.ends_with(r#""index":1,"word":"berlin","start":null,"end":null}]"#),
            "{json}"
        );
    }

    #[test]
    fn group_name_splits_on_first_dash() {
        assert_eq!(get_tag("B-geo-loc"), ("B", "geo-loc"));
        assert_eq!(get_tag("PER"), ("I", "PER"));
        assert_eq!(get_tag("LABEL_1"), ("I", "LABEL_1"));
    }

    #[test]
    fn serde_names() {
        assert_eq!(
            serde_json::to_string(&AggregationStrategy::Average).unwrap(),
            "\"average\""
        );
        let s: AggregationStrategy = serde_json::from_str("\"max\"").unwrap();
        assert_eq!(s, AggregationStrategy::Max);
        assert_eq!("First".parse(), Ok(AggregationStrategy::First));
        assert!("bogus".parse::<AggregationStrategy>().is_err());
    }
}

//! Post-processing of the `text-classification` pipeline, following
//! transformers' `pipelines/text_classification.py` (`TextClassificationPipeline`)
//! of transformers 5.24.0.
//!
//! transformers distinguishes three `top_k` states, and the output shape
//! depends on them:
//!
//! * `top_k` not passed (the default, "legacy" mode): `postprocess` returns one
//!   dict `{"label", "score"}` for the best class, and `__call__` wraps it in a
//!   list when the input was a single string, so `classifier("text")` gives
//!   `[{"label": ..., "score": ...}]`; for a list of strings the result is a
//!   flat list of dicts, one per text.
//! * `top_k=None`: every label, sorted by descending score (a list of dicts).
//! * `top_k=k`: the first `k` of that sorted list.
//!
//! The scoring function defaults by `config.problem_type` and `num_labels`
//! (see [`default_function`]).

use super::{in_input_order, Model};
use crate::error::{Error, Result};
use crate::models::Head;
use crate::tokenize::Encoded;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::postprocess::{np_argmax, np_max, np_sigmoid, np_softmax, PostprocessError};
pub use crate::config::ProblemType;

/// `ClassificationFunction` in transformers; names as transformers spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FunctionToApply {
    Sigmoid,
    Softmax,
    None,
}

impl FunctionToApply {
    /// transformers' lowercase name (`ClassificationFunction.value`).
    pub fn as_str(self) -> &'static str {
        match self {
            FunctionToApply::Sigmoid => "sigmoid",
            FunctionToApply::Softmax => "softmax",
            FunctionToApply::None => "none",
        }
    }
}

impl std::str::FromStr for FunctionToApply {
    type Err = String;

    /// transformers looks the string up as `ClassificationFunction[s.upper()]`,
    /// so any case is accepted; anything else (including the documented but
    /// unimplemented `"default"`) is a `KeyError` there.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_uppercase().as_str() {
            "SIGMOID" => Ok(FunctionToApply::Sigmoid),
            "SOFTMAX" => Ok(FunctionToApply::Softmax),
            "NONE" => Ok(FunctionToApply::None),
            _ => Err(format!(
                "unknown function_to_apply {s:?} (expected \"sigmoid\", \"softmax\" or \"none\")"
            )),
        }
    }
}

impl Serialize for FunctionToApply {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for FunctionToApply {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The three states of transformers' `top_k` argument. transformers uses the
/// sentinel `top_k=""` for "not passed" because `top_k=None` already means
/// "all labels".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TopK {
    /// `top_k` not passed: legacy mode, only the best label.
    #[default]
    NotGiven,
    /// `top_k=None`: all labels, sorted by descending score.
    All,
    /// `top_k=k`: the `k` best labels, sorted by descending score.
    K(usize),
}

/// Call parameters of the pipeline. `Default` is transformers' default call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Options {
    pub top_k: TopK,
    /// `None`: choose from the model config (see [`default_function`]).
    pub function_to_apply: Option<FunctionToApply>,
}

/// One `{"label": ..., "score": ...}` dict (keys in transformers' order).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelScore {
    pub label: String,
    /// The `float32` score widened to `f64`, as Python's `.item()` does.
    pub score: f64,
}

/// What `TextClassificationPipeline.postprocess` returns for one text: a single
/// dict in legacy mode (`top_k` not passed), a list of dicts otherwise. This is
/// the element shape of a batched call (`classifier([t1, t2])`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Output {
    Best(LabelScore),
    Ranked(Vec<LabelScore>),
}

impl Output {
    /// What `classifier("one string", ...)` returns: legacy mode wraps the
    /// single dict into a one-element list, the other modes already are lists.
    pub fn into_single_input(self) -> Vec<LabelScore> {
        match self {
            Output::Best(one) => vec![one],
            Output::Ranked(list) => list,
        }
    }
}

/// transformers' choice of scoring function when `function_to_apply` is not
/// given: regression → none; multi-label or exactly one label → sigmoid;
/// single-label or several labels → softmax; otherwise (zero labels, no
/// problem type) → none (the config's own `function_to_apply` attribute is
/// not a standard config field).
pub fn default_function(problem_type: Option<ProblemType>, num_labels: usize) -> FunctionToApply {
    match problem_type {
        Some(ProblemType::Regression) => FunctionToApply::None,
        Some(ProblemType::MultiLabelClassification) => FunctionToApply::Sigmoid,
        _ if num_labels == 1 => FunctionToApply::Sigmoid,
        Some(ProblemType::SingleLabelClassification) => FunctionToApply::Softmax,
        _ if num_labels > 1 => FunctionToApply::Softmax,
        _ => FunctionToApply::None,
    }
}

/// Scores of one text, in `float32` like transformers' numpy code.
pub fn scores(
    logits: &[f32],
    id2label: &[String],
    problem_type: Option<ProblemType>,
    function_to_apply: Option<FunctionToApply>,
) -> Vec<f32> {
    // `num_labels` comes from the config (= len(id2label)), not from the logits.
    let function =
        function_to_apply.unwrap_or_else(|| default_function(problem_type, id2label.len()));
    match function {
        FunctionToApply::Sigmoid => np_sigmoid(logits),
        FunctionToApply::Softmax => np_softmax(logits),
        FunctionToApply::None => logits.to_vec(),
    }
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

/// `TextClassificationPipeline.postprocess` for one text's logits (the element
/// shape of a batched call). Errors where transformers raises: an empty logits
/// row in legacy mode (numpy's argmax of an empty array) and a class index
/// missing from `id2label` (`KeyError`).
pub fn postprocess_item(
    logits: &[f32],
    id2label: &[String],
    problem_type: Option<ProblemType>,
    opts: &Options,
) -> Result<Output, PostprocessError> {
    let scores = scores(logits, id2label, problem_type, opts.function_to_apply);

    if opts.top_k == TopK::NotGiven {
        // `top_k == 1 and _legacy`: argmax / max, no sort.
        let index = np_argmax(&scores).ok_or(PostprocessError::EmptyScores)?;
        let score = np_max(&scores).ok_or(PostprocessError::EmptyScores)?;
        return Ok(Output::Best(LabelScore {
            label: label(id2label, index)?,
            score: f64::from(score),
        }));
    }

    let mut ranked = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| Ok((label(id2label, i)?, s)))
        .collect::<Result<Vec<_>, PostprocessError>>()?;
    // Python's `list.sort(key=score, reverse=True)` is stable: equal scores keep
    // label order. `sort_by` is stable too; the comparator must be a total order
    // (NaN is ordered by `total_cmp`, -0.0 == 0.0 as in Python).
    ranked.sort_by(|a, b| {
        if a.1 == b.1 {
            std::cmp::Ordering::Equal
        } else {
            b.1.total_cmp(&a.1)
        }
    });
    if let TopK::K(k) = opts.top_k {
        ranked.truncate(k);
    }
    Ok(Output::Ranked(
        ranked
            .into_iter()
            .map(|(label, s)| LabelScore {
                label,
                score: f64::from(s),
            })
            .collect(),
    ))
}

/// What `classifier("one string", **opts)` returns: always a list of
/// `{"label", "score"}` dicts (one element in legacy mode, `k` or all labels
/// sorted by score otherwise).
pub fn postprocess(
    logits: &[f32],
    id2label: &[String],
    problem_type: Option<ProblemType>,
    opts: &Options,
) -> Result<Vec<LabelScore>, PostprocessError> {
    postprocess_item(logits, id2label, problem_type, opts).map(Output::into_single_input)
}

/// One text's result: transformers' output for it, and whether it was truncated.
/// Serialises as `{"label", "score", "truncated"}` when `top_k` is not given and as
/// `{"labels": [...], "truncated"}` otherwise.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextResult {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub best: Option<LabelScore>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<LabelScore>>,
    pub truncated: bool,
}

impl TextResult {
    /// transformers' output for this text in a batched call (a dict or a list).
    pub fn output(&self) -> Output {
        match (&self.best, &self.labels) {
            (Some(best), _) => Output::Best(best.clone()),
            (None, labels) => Output::Ranked(labels.clone().unwrap_or_default()),
        }
    }
}

/// Classifies each text; one result per text, in order.
pub fn run<S: AsRef<str>>(
    model: &Model,
    texts: &[S],
    options: &Options,
) -> Result<Vec<TextResult>> {
    check_head(model)?;
    let encodings = model.encode_texts(texts)?;
    run_encoded(model, &encodings, &model.plan(&encodings), options)
}

fn check_head(model: &Model) -> Result<()> {
    if model.encoder.head() != Head::SequenceClassification {
        return Err(Error::TaskMismatch {
            model: model.encoder.class_name().to_string(),
            task: "text-classification".into(),
            reason: "it has no sequence-classification head (architectures must name a …ForSequenceClassification class)".into(),
        });
    }
    Ok(())
}

/// [`run`] on texts already tokenized with `model.tokenizer`.
pub fn run_encoded(
    model: &Model,
    encodings: &[Encoded],
    plan: &[Vec<usize>],
    options: &Options,
) -> Result<Vec<TextResult>> {
    check_head(model)?;
    let labels = &model.config.id2label;
    let mut results = (0..encodings.len()).map(|_| None).collect::<Vec<_>>();
    model.forward_batches(encodings, plan, |indices, batch, out| {
        let logits = model
            .encoder
            .head_logits(out, batch, None)?
            .to_vec2::<f32>()?;
        for (&index, row) in indices.iter().zip(&logits) {
            let output = postprocess_item(row, labels, model.config.problem_type, options)
                .map_err(|e| Error::BadInput {
                    index,
                    reason: e.to_string(),
                })?;
            let truncated = encodings[index].truncated;
            results[index] = Some(match output {
                Output::Best(best) => TextResult {
                    best: Some(best),
                    labels: None,
                    truncated,
                },
                Output::Ranked(list) => TextResult {
                    best: None,
                    labels: Some(list),
                    truncated,
                },
            });
        }
        Ok(())
    })?;
    Ok(in_input_order(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn default_is_best_label_wrapped_in_a_list() {
        let out = postprocess(
            &[-1.0, 2.0],
            &labels(&["NEGATIVE", "POSITIVE"]),
            None,
            &Options::default(),
        )
        .unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].label, "POSITIVE");
        assert!(close(out[0].score, 0.952_574_1));
        let json = serde_json::to_string(&out).unwrap();
        assert!(json.starts_with(r#"[{"label":"POSITIVE","score":0.95257"#));
    }

    #[test]
    fn batch_item_shape_differs_between_legacy_and_top_k() {
        let id2label = labels(&["a", "b", "c"]);
        let legacy = postprocess_item(&[0.0, 1.0, 2.0], &id2label, None, &Options::default());
        assert!(matches!(legacy, Ok(Output::Best(_))));
        let one = Options {
            top_k: TopK::K(1),
            ..Options::default()
        };
        let ranked = postprocess_item(&[0.0, 1.0, 2.0], &id2label, None, &one).unwrap();
        let json = serde_json::to_value(&ranked).unwrap();
        assert!(json.is_array());
        assert_eq!(json[0]["label"], "c");
    }

    #[test]
    fn top_k_none_sorts_all_labels_stably() {
        let id2label = labels(&["a", "b", "c", "d"]);
        let opts = Options {
            top_k: TopK::All,
            function_to_apply: Some(FunctionToApply::None),
        };
        let out = postprocess(&[1.0, 3.0, 1.0, 3.0], &id2label, None, &opts).unwrap();
        let order: Vec<&str> = out.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(order, ["b", "d", "a", "c"]);
        let two = Options {
            top_k: TopK::K(2),
            ..opts
        };
        assert_eq!(
            postprocess(&[1.0, 3.0, 1.0, 3.0], &id2label, None, &two)
                .unwrap()
                .len(),
            2
        );
        let zero = Options {
            top_k: TopK::K(0),
            ..opts
        };
        assert!(postprocess(&[1.0], &id2label, None, &zero)
            .unwrap()
            .is_empty());
        let many = Options {
            top_k: TopK::K(10),
            ..opts
        };
        assert_eq!(
            postprocess(&[1.0, 3.0, 1.0, 3.0], &id2label, None, &many)
                .unwrap()
                .len(),
            4
        );
    }

    #[test]
    fn function_defaults_follow_problem_type_and_num_labels() {
        use FunctionToApply as F;
        assert_eq!(default_function(Some(ProblemType::Regression), 1), F::None);
        assert_eq!(
            default_function(Some(ProblemType::MultiLabelClassification), 5),
            F::Sigmoid
        );
        assert_eq!(
            default_function(Some(ProblemType::SingleLabelClassification), 1),
            F::Sigmoid
        );
        assert_eq!(
            default_function(Some(ProblemType::SingleLabelClassification), 0),
            F::Softmax
        );
        assert_eq!(default_function(None, 1), F::Sigmoid);
        assert_eq!(default_function(None, 3), F::Softmax);
        assert_eq!(default_function(None, 0), F::None);

        let out = postprocess(&[0.0], &labels(&["LABEL_0"]), None, &Options::default()).unwrap();
        assert_eq!(out[0].score, 0.5);
        let reg = postprocess(
            &[3.25],
            &labels(&["LABEL_0"]),
            Some(ProblemType::Regression),
            &Options::default(),
        )
        .unwrap();
        assert_eq!(reg[0].score, 3.25);
        let multi = postprocess(
            &[0.0, 0.0],
            &labels(&["x", "y"]),
            Some(ProblemType::MultiLabelClassification),
            &Options {
                top_k: TopK::All,
                function_to_apply: None,
            },
        )
        .unwrap();
        assert_eq!(multi[0].score, 0.5);
        assert_eq!(multi[1].score, 0.5);
    }

    #[test]
    fn function_names_parse_like_transformers() {
        assert_eq!(
            "SoftMax".parse::<FunctionToApply>(),
            Ok(FunctionToApply::Softmax)
        );
        assert!("default".parse::<FunctionToApply>().is_err());
        assert_eq!(
            serde_json::to_string(&FunctionToApply::None).unwrap(),
            "\"none\""
        );
        let f: FunctionToApply = serde_json::from_str("\"sigmoid\"").unwrap();
        assert_eq!(f, FunctionToApply::Sigmoid);
    }

    #[test]
    fn zero_labels_and_short_id2label_do_not_panic() {
        let r = postprocess(&[], &[], None, &Options::default());
        assert_eq!(r, Err(PostprocessError::EmptyScores));
        let all = Options {
            top_k: TopK::All,
            function_to_apply: None,
        };
        assert_eq!(postprocess(&[], &[], None, &all), Ok(vec![]));
        let r = postprocess(&[0.0, 1.0], &labels(&["a"]), None, &Options::default());
        assert!(matches!(
            r,
            Err(PostprocessError::UnknownLabel { index: 1, .. })
        ));
    }
}

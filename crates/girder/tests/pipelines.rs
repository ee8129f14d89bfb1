//! Pipeline outputs equal transformers' (labels, entity spans, words exactly; scores
//! within 1e-4), for every pipeline case the oracle stored in the fixtures.

mod common;

use common::{fixture_folders, json_diff, Fixture};
use girder::pipelines::{fill_mask, text_classification as tc, token_classification as tok, Model};
use girder::LoadOptions;
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn text_classification_options(o: &Value) -> tc::Options {
    let top_k = match o.get("top_k") {
        None => tc::TopK::NotGiven,
        Some(Value::Null) => tc::TopK::All,
        Some(k) => tc::TopK::K(k.as_u64().unwrap() as usize),
    };
    let function_to_apply = o
        .get("function_to_apply")
        .map(|f| serde_json::from_value(f.clone()).unwrap());
    tc::Options {
        top_k,
        function_to_apply,
    }
}

fn token_classification_options(o: &Value) -> tok::Options {
    let mut opts = tok::Options::default();
    if let Some(s) = o.get("aggregation_strategy") {
        opts.aggregation_strategy = serde_json::from_value(s.clone()).unwrap();
    }
    if let Some(l) = o.get("ignore_labels") {
        opts.ignore_labels = serde_json::from_value(l.clone()).unwrap();
    }
    opts
}

fn fill_mask_options(o: &Value) -> fill_mask::Options {
    let mut opts = fill_mask::Options::default();
    if let Some(k) = o.get("top_k") {
        opts.top_k = k.as_u64().unwrap() as usize;
    }
    if let Some(t) = o.get("targets") {
        opts.targets = Some(serde_json::from_value(t.clone()).unwrap());
    }
    opts
}

/// Runs one pipeline case on one text; `Err` carries the library's error message.
fn run_one(
    model: &Model,
    task: &str,
    options: &Value,
    text: &str,
) -> Option<Result<Value, String>> {
    let texts = [text];
    let result = match task {
        "text-classification" => tc::run(model, &texts, &text_classification_options(options))
            .map(|r| serde_json::to_value(r[0].output().into_single_input()).unwrap()),
        "token-classification" => tok::run(model, &texts, &token_classification_options(options))
            .map(|r| serde_json::to_value(&r[0].entities).unwrap()),
        "fill-mask" => fill_mask::run(model, &texts, &fill_mask_options(options))
            .map(|r| serde_json::to_value(&r[0].predictions).unwrap()),
        _ => return None,
    };
    Some(result.map_err(|e| e.to_string()))
}

#[test]
fn pipeline_outputs_match_transformers() {
    let mut failures = Vec::new();
    let mut cases = 0;
    let mut worst = 0.0f64;
    for dir in fixture_folders() {
        let fx = Fixture::load(&dir);
        if fx.expected.pipelines.is_empty() {
            continue;
        }
        let model = Model::load(dir.to_str().unwrap(), &LoadOptions::default()).unwrap();
        for case in &fx.expected.pipelines {
            for (i, (text, expected)) in fx.expected.texts.iter().zip(&case.outputs).enumerate() {
                let Some(actual) = run_one(&model, &case.task, &case.options, text) else {
                    continue;
                };
                cases += 1;
                let label = format!("{} {} {} text {i}", fx.name, case.task, case.options);
                match (expected.get("error"), actual) {
                    (Some(_), Err(_)) => {}
                    (Some(err), Ok(got)) => {
                        failures.push(format!("{label}: expected error {err}, got {got}"))
                    }
                    (None, Err(e)) => failures.push(format!("{label}: error {e}")),
                    (None, Ok(got)) => match json_diff(expected, &got, "$") {
                        Ok(d) if d <= TOLERANCE => worst = worst.max(d),
                        Ok(d) => failures.push(format!("{label}: score diff {d:e}")),
                        Err(e) => failures.push(format!("{label}: {e}")),
                    },
                }
            }
        }
    }
    println!("{cases} pipeline cases, worst score diff {worst:e}");
    assert!(cases > 100, "too few pipeline cases ran: {cases}");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

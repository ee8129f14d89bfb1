//! Sentence embeddings, as sentence-transformers' `SentenceTransformer.encode`: the
//! transformer, then the modules listed in `modules.json` (Pooling, optional Normalize).
//! Folders without modules.json pool by mean and do not normalise unless asked.

use super::{in_input_order, Model};
use crate::error::{Error, Result};
use crate::hub::ModelFolder;
use crate::layers::pooling::{l2_normalize, pool, Pooling};
use crate::tokenize::Encoded;
use serde::{Deserialize, Serialize};

/// What `modules.json`, `1_Pooling/config.json` and `sentence_bert_config.json` say.
#[derive(Debug, Clone, PartialEq)]
pub struct SentenceConfig {
    pub pooling: Pooling,
    pub normalize: bool,
    /// `max_seq_length` of sentence_bert_config.json.
    pub max_seq_length: Option<usize>,
}

#[derive(Deserialize)]
struct ModuleEntry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct PoolingFile {
    #[serde(default)]
    pooling_mode: Option<String>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct SentenceBertFile {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

impl SentenceConfig {
    /// Reads the sentence-transformers files; `None` when the folder has no modules.json.
    pub fn from_folder(folder: &ModelFolder) -> Result<Option<Self>> {
        let Some(modules_path) = folder.file("modules.json") else {
            return Ok(None);
        };
        let modules: Vec<ModuleEntry> = crate::config::read_json(&modules_path)?;
        let mut pooling = None;
        let mut normalize = false;
        for module in &modules {
            let kind = module.kind.rsplit('.').next().unwrap_or(&module.kind);
            match kind {
                "Transformer" => {}
                "Pooling" => {
                    let file = format!("{}/config.json", module.path.trim_end_matches('/'));
                    let path = folder.require(&file, "modules.json lists a Pooling module here")?;
                    let cfg: PoolingFile = crate::config::read_json(&path)?;
                    pooling = Some(pooling_mode(&cfg).ok_or_else(|| Error::BadConfig {
                        file: path.clone(),
                        field: "pooling_mode".into(),
                        reason: "exactly one of cls, mean, max, lasttoken pooling must be set (mean_sqrt_len, weightedmean and combinations are not supported)".into(),
                    })?);
                }
                "Normalize" => normalize = true,
                other => {
                    return Err(Error::BadConfig {
                        file: modules_path.clone(),
                        field: "type".into(),
                        reason: format!("sentence-transformers module `{other}` is not supported (Transformer, Pooling, Normalize)"),
                    })
                }
            }
        }
        let max_seq_length = match folder.file("sentence_bert_config.json") {
            Some(path) => crate::config::read_json::<SentenceBertFile>(&path)?.max_seq_length,
            None => None,
        };
        Ok(Some(SentenceConfig {
            pooling: pooling.unwrap_or(Pooling::Mean),
            normalize,
            max_seq_length,
        }))
    }
}

fn pooling_mode(cfg: &PoolingFile) -> Option<Pooling> {
    if let Some(mode) = &cfg.pooling_mode {
        return match mode.as_str() {
            "mean" => Some(Pooling::Mean),
            "cls" => Some(Pooling::Cls),
            "max" => Some(Pooling::Max),
            "lasttoken" => Some(Pooling::LastToken),
            _ => None,
        };
    }
    let modes = [
        (cfg.pooling_mode_mean_tokens, Some(Pooling::Mean)),
        (cfg.pooling_mode_cls_token, Some(Pooling::Cls)),
        (cfg.pooling_mode_max_tokens, Some(Pooling::Max)),
        (cfg.pooling_mode_lasttoken, Some(Pooling::LastToken)),
        (cfg.pooling_mode_mean_sqrt_len_tokens, None),
        (cfg.pooling_mode_weightedmean_tokens, None),
    ];
    let mut chosen = modes.iter().filter(|(on, _)| *on);
    match (chosen.next(), chosen.next()) {
        (Some((_, mode)), None) => *mode,
        _ => None,
    }
}

/// Options of the embeddings task.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    /// Overrides the pooling of `1_Pooling/config.json` (mean when the folder has none).
    pub pooling: Option<Pooling>,
    /// `Some(true)` normalises even without a Normalize module; `None` follows modules.json.
    pub normalize: Option<bool>,
}

/// One text's embedding.
#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub embedding: Vec<f32>,
    /// The text was cut to the model's limit.
    pub truncated: bool,
}

/// Embeds each text; one output per text, in order.
pub fn run<S: AsRef<str>>(model: &Model, texts: &[S], options: &Options) -> Result<Vec<Output>> {
    let encodings = model.encode_texts(texts)?;
    run_encoded(model, &encodings, &model.plan(&encodings), options)
}

/// [`run`] on texts already tokenized with `model.tokenizer`.
pub fn run_encoded(
    model: &Model,
    encodings: &[Encoded],
    plan: &[Vec<usize>],
    options: &Options,
) -> Result<Vec<Output>> {
    let sentence = model.sentence.as_ref();
    let pooling = options
        .pooling
        .or(sentence.map(|s| s.pooling))
        .unwrap_or(Pooling::Mean);
    let normalize = options
        .normalize
        .unwrap_or(sentence.is_some_and(|s| s.normalize));
    let mut outputs = (0..encodings.len()).map(|_| None).collect::<Vec<_>>();
    model.forward_batches(encodings, plan, |indices, batch, out| {
        let mut pooled = pool(&out.last_hidden_state, batch, pooling)?;
        if normalize {
            pooled = l2_normalize(&pooled)?;
        }
        for (&index, row) in indices.iter().zip(pooled.to_vec2::<f32>()?) {
            outputs[index] = Some(Output {
                embedding: row,
                truncated: encodings[index].truncated,
            });
        }
        Ok(())
    })?;
    Ok(in_input_order(outputs))
}

//! `generation_config.json`: how a model generates by default, with transformers' defaults
//! (`generation/configuration_utils.py`, `GenerationConfig.__init__`) for what it omits, and
//! [`Overrides`], the options a caller sets on top, as `model.generate(**kwargs)` does.
//!
//! Each field is read from generation_config.json, else from config.json (where older
//! checkpoints keep `num_beams`, `max_length` and the special ids), else transformers' default.

use crate::config::{read_json, CommonConfig};
use crate::error::{Error, Result};
use crate::hub::ModelFolder;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The most beams one input may ask for: every beam is decoded at every step, with its own
/// cache, so the bound keeps one request's memory and time in proportion (transformers sets
/// none; beam searches of translation and speech models use 4-5).
pub const MAX_NUM_BEAMS: usize = 64;
/// New tokens generated when neither `max_new_tokens` nor `max_length` is set.
const DEFAULT_NEW_TOKENS: usize = 20;

/// One or several token ids, as `eos_token_id` is written in config files.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(id) => vec![id],
            OneOrMany::Many(ids) => ids,
        }
    }
}

/// When beam search stops (transformers' `early_stopping`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum EarlyStopping {
    /// `false`: stop when the best running beam, at its current length, cannot beat the
    /// worst finished one (transformers' default heuristic).
    #[default]
    Heuristic,
    /// `true`: stop as soon as `num_beams` hypotheses are finished.
    Finished,
    /// `"never"`: stop only when no running beam could ever beat the finished ones (the
    /// canonical beam search).
    Never,
}

impl TryFrom<serde_json::Value> for EarlyStopping {
    type Error = String;

    fn try_from(value: serde_json::Value) -> std::result::Result<Self, String> {
        match &value {
            serde_json::Value::Bool(true) => Ok(EarlyStopping::Finished),
            serde_json::Value::Bool(false) | serde_json::Value::Null => {
                Ok(EarlyStopping::Heuristic)
            }
            serde_json::Value::String(s) if s == "never" => Ok(EarlyStopping::Never),
            other => Err(format!("expected true, false or \"never\", got {other}")),
        }
    }
}

impl From<EarlyStopping> for serde_json::Value {
    fn from(value: EarlyStopping) -> Self {
        match value {
            EarlyStopping::Heuristic => false.into(),
            EarlyStopping::Finished => true.into(),
            EarlyStopping::Never => "never".into(),
        }
    }
}

impl std::str::FromStr for EarlyStopping {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "true" => Ok(EarlyStopping::Finished),
            "false" => Ok(EarlyStopping::Heuristic),
            "never" => Ok(EarlyStopping::Never),
            other => Err(format!("`{other}`: expected true, false or never")),
        }
    }
}

/// The fields of generation_config.json (and config.json) girder reads, as written there.
#[derive(Debug, Default, Deserialize)]
struct Fields {
    eos_token_id: Option<OneOrMany>,
    bos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    decoder_start_token_id: Option<u32>,
    max_length: Option<usize>,
    max_new_tokens: Option<usize>,
    min_length: Option<usize>,
    min_new_tokens: Option<usize>,
    do_sample: Option<bool>,
    num_beams: Option<usize>,
    temperature: Option<f32>,
    top_k: Option<usize>,
    top_p: Option<f32>,
    repetition_penalty: Option<f32>,
    length_penalty: Option<f32>,
    early_stopping: Option<EarlyStopping>,
    no_repeat_ngram_size: Option<usize>,
    forced_bos_token_id: Option<u32>,
    forced_eos_token_id: Option<OneOrMany>,
    bad_words_ids: Option<Vec<Vec<u32>>>,
    suppress_tokens: Option<Vec<u32>>,
    begin_suppress_tokens: Option<Vec<u32>>,
    renormalize_logits: Option<bool>,
    no_timestamps_token_id: Option<u32>,
    max_initial_timestamp_index: Option<usize>,
    forced_decoder_ids: Option<Vec<(usize, Option<u32>)>>,
    is_multilingual: Option<bool>,
    lang_to_id: Option<BTreeMap<String, u32>>,
    task_to_id: Option<BTreeMap<String, u32>>,
}

impl Fields {
    /// Each field of `self`, else `other`'s.
    fn or(self, other: Fields) -> Fields {
        macro_rules! either {
            ($($field:ident),*) => { Fields { $($field: self.$field.or(other.$field)),* } };
        }
        either!(
            eos_token_id,
            bos_token_id,
            pad_token_id,
            decoder_start_token_id,
            max_length,
            max_new_tokens,
            min_length,
            min_new_tokens,
            do_sample,
            num_beams,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            length_penalty,
            early_stopping,
            no_repeat_ngram_size,
            forced_bos_token_id,
            forced_eos_token_id,
            bad_words_ids,
            suppress_tokens,
            begin_suppress_tokens,
            renormalize_logits,
            no_timestamps_token_id,
            max_initial_timestamp_index,
            forced_decoder_ids,
            is_multilingual,
            lang_to_id,
            task_to_id
        )
    }
}

/// How a model generates: what generation_config.json (else config.json) says, with
/// transformers' defaults for the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    /// Ids that end a sequence.
    pub eos_token_ids: Vec<u32>,
    /// The id a tokenizer prepends, if any.
    pub bos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    /// The first token of an encoder-decoder's output (`bos_token_id` when unset).
    pub decoder_start_token_id: Option<u32>,
    /// Length of the output at most, counting an encoder-decoder's decoder prompt;
    /// `max_new_tokens` wins when set, and when neither is set 20 new tokens are generated
    /// (transformers' default).
    pub max_length: Option<usize>,
    /// New tokens at most.
    pub max_new_tokens: Option<usize>,
    /// eos is suppressed while the output (decoder prompt included) is shorter.
    pub min_length: usize,
    /// eos is suppressed for this many new tokens.
    pub min_new_tokens: Option<usize>,
    /// Sample (`temperature`, `top_k`, `top_p`) instead of taking the best token.
    pub do_sample: bool,
    /// Beams of beam search; 1 is greedy (or sampling).
    pub num_beams: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    /// CTRL's penalty on tokens already in the output (1.0: off).
    pub repetition_penalty: f32,
    /// A finished beam's score is its log-probability over `length ** length_penalty`.
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    /// No n-gram of this size occurs twice in the output (0: off).
    pub no_repeat_ngram_size: usize,
    /// Forced as the first generated token (BART's `<s>` after `</s>`).
    pub forced_bos_token_id: Option<u32>,
    /// Forced as the last token when `max_length` is reached.
    pub forced_eos_token_id: Option<Vec<u32>>,
    /// Token sequences never generated (Marian: the pad token).
    pub bad_words_ids: Vec<Vec<u32>>,
    /// Tokens never generated (Whisper's non-speech symbols).
    pub suppress_tokens: Vec<u32>,
    /// Tokens not generated first (Whisper: a space, eos).
    pub begin_suppress_tokens: Vec<u32>,
    /// The processed scores are normalized again (a log-softmax) after every processor
    /// (Marian's configs): beam search then ranks by the renormalized scores.
    pub renormalize_logits: bool,
    /// Whisper: `<|notimestamps|>`.
    pub no_timestamps_token_id: Option<u32>,
    /// Whisper: the first timestamp is at most this index (× 0.02 s).
    pub max_initial_timestamp_index: Option<usize>,
    /// Whisper's older configs: the tokens forced at decoder positions 1, 2, ... (a `None`
    /// leaves the language to be detected).
    pub forced_decoder_ids: Vec<(usize, Option<u32>)>,
    /// Whisper: the model knows languages besides English.
    pub is_multilingual: Option<bool>,
    /// Whisper: `<|en|>` and the other language tokens by tag.
    pub lang_to_id: BTreeMap<String, u32>,
    /// Whisper: `transcribe`, `translate`.
    pub task_to_id: BTreeMap<String, u32>,
}

impl Default for GenerationConfig {
    /// transformers' `GenerationConfig()`.
    fn default() -> Self {
        GenerationConfig::from_fields(Fields::default())
    }
}

impl GenerationConfig {
    /// Reads `generation_config.json` when present; config.json fills what it lacks.
    pub fn from_folder(folder: &ModelFolder, config: &CommonConfig) -> Result<Self> {
        let from_config: Fields = config.parse_as()?;
        let from_generation: Fields = match folder.file("generation_config.json") {
            Some(path) => read_json(&path)?,
            None => Fields::default(),
        };
        Ok(GenerationConfig::from_fields(
            from_generation.or(from_config),
        ))
    }

    fn from_fields(f: Fields) -> Self {
        let bos_token_id = f.bos_token_id.and_then(|b| b.into_vec().first().copied());
        GenerationConfig {
            eos_token_ids: f.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
            bos_token_id,
            pad_token_id: f.pad_token_id,
            decoder_start_token_id: f.decoder_start_token_id,
            max_length: f.max_length,
            max_new_tokens: f.max_new_tokens,
            min_length: f.min_length.unwrap_or(0),
            min_new_tokens: f.min_new_tokens,
            do_sample: f.do_sample.unwrap_or(false),
            num_beams: f.num_beams.unwrap_or(1),
            temperature: f.temperature.unwrap_or(1.0),
            top_k: f.top_k.unwrap_or(50),
            top_p: f.top_p.unwrap_or(1.0),
            repetition_penalty: f.repetition_penalty.unwrap_or(1.0),
            length_penalty: f.length_penalty.unwrap_or(1.0),
            early_stopping: f.early_stopping.unwrap_or_default(),
            no_repeat_ngram_size: f.no_repeat_ngram_size.unwrap_or(0),
            forced_bos_token_id: f.forced_bos_token_id,
            forced_eos_token_id: f.forced_eos_token_id.map(OneOrMany::into_vec),
            bad_words_ids: f.bad_words_ids.unwrap_or_default(),
            suppress_tokens: f.suppress_tokens.unwrap_or_default(),
            begin_suppress_tokens: f.begin_suppress_tokens.unwrap_or_default(),
            renormalize_logits: f.renormalize_logits.unwrap_or(false),
            no_timestamps_token_id: f.no_timestamps_token_id,
            max_initial_timestamp_index: f.max_initial_timestamp_index,
            forced_decoder_ids: f.forced_decoder_ids.unwrap_or_default(),
            is_multilingual: f.is_multilingual,
            lang_to_id: f.lang_to_id.unwrap_or_default(),
            task_to_id: f.task_to_id.unwrap_or_default(),
        }
    }

    /// The config with `overrides` applied (a field set there replaces this one's), checked.
    pub fn with(&self, overrides: &Overrides) -> Result<GenerationConfig> {
        let mut c = self.clone();
        let o = overrides;
        if let Some(v) = o.max_new_tokens {
            c.max_new_tokens = Some(v);
        }
        if let Some(v) = o.max_length {
            c.max_length = Some(v);
        }
        macro_rules! set {
            ($($field:ident),*) => { $(if let Some(v) = o.$field { c.$field = v; })* };
        }
        set!(
            min_length,
            do_sample,
            num_beams,
            temperature,
            top_k,
            top_p,
            repetition_penalty,
            length_penalty,
            early_stopping,
            no_repeat_ngram_size
        );
        if let Some(v) = o.min_new_tokens {
            c.min_new_tokens = Some(v);
        }
        if let Some(v) = &o.eos_token_ids {
            c.eos_token_ids = v.clone();
        }
        c.validate()?;
        Ok(c)
    }

    /// Refuses values transformers refuses, naming the option.
    pub fn validate(&self) -> Result<()> {
        let bad = |option: &str, reason: String| {
            Err(Error::InvalidOption {
                option: option.into(),
                reason,
            })
        };
        if self.num_beams == 0 {
            return bad("num_beams", "must be at least 1".into());
        }
        if self.num_beams > MAX_NUM_BEAMS {
            return bad(
                "num_beams",
                format!(
                    "{} beams: at most {MAX_NUM_BEAMS} (each beam is a sequence decoded at every step)",
                    self.num_beams
                ),
            );
        }
        if self.max_new_tokens == Some(0) {
            return bad("max_new_tokens", "must be at least 1".into());
        }
        if !self.length_penalty.is_finite() {
            return bad(
                "length_penalty",
                format!("{} must be a finite number", self.length_penalty),
            );
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                format!("{} must be a positive number", self.repetition_penalty),
            );
        }
        if self.do_sample {
            if !(self.temperature.is_finite() && self.temperature > 0.0) {
                return bad(
                    "temperature",
                    format!(
                        "{} must be a positive number when sampling",
                        self.temperature
                    ),
                );
            }
            if !(self.top_p > 0.0 && self.top_p <= 1.0) {
                return bad("top_p", format!("{} must be in (0, 1]", self.top_p));
            }
            if self.num_beams > 1 {
                return Err(Error::Unsupported {
                    what: "beam sampling (do_sample with num_beams > 1)".into(),
                });
            }
        }
        Ok(())
    }

    /// The output's length limit, counting a decoder prompt of `prompt_len` tokens:
    /// `prompt_len + max_new_tokens`, else `max_length`, else `prompt_len + 20`
    /// (`_prepare_generated_length`: max_new_tokens takes precedence over max_length).
    pub fn max_length_for(&self, prompt_len: usize) -> usize {
        match (self.max_new_tokens, self.max_length) {
            (Some(n), _) => prompt_len + n,
            (None, Some(max)) => max,
            (None, None) => prompt_len + DEFAULT_NEW_TOKENS,
        }
    }
}

/// Generation options a caller sets on top of a model's [`GenerationConfig`]
/// (`model.generate(**kwargs)`); `None` keeps the model's value. Field names are
/// transformers'.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    pub max_new_tokens: Option<usize>,
    pub max_length: Option<usize>,
    pub min_length: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub do_sample: Option<bool>,
    pub num_beams: Option<usize>,
    pub temperature: Option<f32>,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<EarlyStopping>,
    pub no_repeat_ngram_size: Option<usize>,
    /// Ids that end a sequence (an empty list: none, generate to the length limit).
    #[serde(rename = "eos_token_id")]
    pub eos_token_ids: Option<Vec<u32>>,
    /// Seeds sampling.
    pub seed: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eos_may_be_one_id_or_a_list() {
        let one: Fields = serde_json::from_str(r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(one.eos_token_id.unwrap().into_vec(), [2]);
        let many: Fields = serde_json::from_str(r#"{"eos_token_id": [2, 7]}"#).unwrap();
        assert_eq!(many.eos_token_id.unwrap().into_vec(), [2, 7]);
        let none: Fields = serde_json::from_str(r#"{"eos_token_id": null}"#).unwrap();
        assert!(none.eos_token_id.is_none());
    }

    #[test]
    fn defaults_are_transformers_and_overrides_win() {
        let c = GenerationConfig::default();
        assert_eq!((c.max_length_for(1), c.num_beams, c.top_k), (21, 1, 50));
        assert_eq!(c.early_stopping, EarlyStopping::Heuristic);
        let fields: Fields = serde_json::from_str(
            r#"{"num_beams": 4, "early_stopping": "never", "max_new_tokens": 9}"#,
        )
        .unwrap();
        let c = GenerationConfig::from_fields(fields);
        assert_eq!((c.num_beams, c.early_stopping), (4, EarlyStopping::Never));
        assert_eq!(c.max_length_for(1), 10);
        let o = Overrides {
            max_length: Some(7),
            num_beams: Some(1),
            ..Default::default()
        };
        let c = c.with(&o).unwrap();
        // max_new_tokens (from the config) takes precedence over a max_length option.
        assert_eq!((c.num_beams, c.max_length_for(1)), (1, 10));
        let bad = Overrides {
            num_beams: Some(0),
            ..Default::default()
        };
        assert!(c.with(&bad).unwrap_err().to_string().contains("num_beams"));
        let wrong: std::result::Result<Fields, _> =
            serde_json::from_str(r#"{"early_stopping": "sometimes"}"#);
        assert!(wrong.is_err());
    }
}

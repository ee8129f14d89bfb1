//! Behavioural probes: run the model on built-in texts under the tokenizer and ask whether
//! it behaves like a trained model reading its own tokens.
//!
//! The weight-based canary ([`super::canary`]) reads the embedding matrix; these probes read
//! what the whole network does with the tokenizer's ids, so damage the embedding statistics
//! average away (a few hundred ids swapped among frequent words) still shows:
//!
//! - a causal language model predicts the next token of ordinary English text well: its mean
//!   loss per token on [`LANGUAGE_PROBE`] is a few nats under its own tokenizer and rises
//!   towards `ln(vocabulary)` as the ids it reads and predicts stop meaning what they meant
//!   in training ([`MAX_NEXT_TOKEN_LOSS`]);
//! - a sentence embedder places a sentence nearest to its paraphrase among unrelated ones
//!   ([`PARAPHRASES`], written with few shared words, so that a wrong tokenizer, which maps
//!   equal words to equal wrong rows, cannot pass on word overlap alone;
//!   [`MIN_PARAPHRASE_ACCURACY`]).
//!
//! Calibration (tests/check.rs, `behavioural_probes_calibrate`): see the constants.
//! Untrained (random) weights carry no behaviour: the probes then report nothing.

use super::canary::{self, MIN_TRAINED_SPREAD};
use super::{Finding, Severity};
use crate::batch::RaggedBatch;
use crate::error::Result;
use crate::generate::TextGenerator;
use crate::models::Logits;
use crate::pipelines::{embeddings, Model};
use crate::pretrained::Loaded;
use candle_core::{DType, D};

/// Mean next-token loss (nats) above which a causal LM does not read its tokenizer's ids as
/// trained. Matched models here score 3.0 (Gemma 3 270M), 3.3 (Qwen2.5-Coder 0.5B) and 3.9
/// (SmolLM2-135M) on [`LANGUAGE_PROBE`]; SmolLM2 with 2,000 of its frequent ids permuted
/// among themselves 6.7.
pub const MAX_NEXT_TOKEN_LOSS: f64 = 5.5;
/// Share of [`PARAPHRASES`] sentences whose nearest neighbour must be their paraphrase.
/// all-MiniLM-L6-v2 and all-mpnet-base-v2 place all 32; MiniLM with its vocabulary permuted
/// 3 (0.09), with its 1,000 most frequent words permuted 19 (0.59).
pub const MIN_PARAPHRASE_ACCURACY: f64 = 0.75;

/// Ordinary English across registers, for the next-token loss.
pub const LANGUAGE_PROBE: &[&str] = &[
    "The quick brown fox jumps over the lazy dog.",
    "I loved this movie, but the ending was terrible and the actors seemed bored.",
    "The company reported higher revenue in the third quarter than analysts expected.",
    "Please send the documents to my office before Friday afternoon.",
    "Scientists discovered a new species of frog in the rainforests of Brazil.",
    "She was running late, so she took a taxi to the airport.",
    "The children played happily in the park while their parents talked.",
    "Our government announced new policies on education, health and housing.",
    "He works as a doctor at the hospital and teaches students at the university.",
    "The weather will be cold and rainy tomorrow, with strong winds in the north.",
    "This product is great, I would buy it again and recommend it to my friends.",
    "What time does the next train to London leave?",
];

/// Pairs of sentences that mean the same with few words in common.
pub const PARAPHRASES: &[(&str, &str)] = &[
    (
        "The movie was fantastic and I enjoyed every minute.",
        "I loved this film from start to finish.",
    ),
    (
        "How do I reset my password?",
        "What are the steps to change my login credentials?",
    ),
    (
        "The stock market fell sharply today.",
        "Share prices dropped steeply this afternoon.",
    ),
    (
        "She works as a doctor at the local hospital.",
        "Her job is treating patients in a nearby clinic.",
    ),
    (
        "It will rain heavily tomorrow.",
        "Expect a lot of precipitation the next day.",
    ),
    (
        "The cat is sleeping on the sofa.",
        "A kitten naps on the couch.",
    ),
    (
        "He bought a new car last week.",
        "Seven days ago he purchased a brand-new automobile.",
    ),
    (
        "The restaurant's food was terrible.",
        "We had an awful meal at that diner.",
    ),
    (
        "Children are playing football in the park.",
        "Kids kick a ball around on the green.",
    ),
    (
        "The train to London is delayed.",
        "Our railway service to the capital is running late.",
    ),
    (
        "Scientists found water on Mars.",
        "Researchers discovered H2O on the red planet.",
    ),
    (
        "Please close the window, it's cold.",
        "Shut that pane, I'm freezing.",
    ),
    (
        "The meeting has been moved to Friday.",
        "We rescheduled the appointment for the end of the week.",
    ),
    ("My phone battery died.", "The cell ran out of charge."),
    (
        "The company hired fifty new employees.",
        "The firm recruited 50 additional workers.",
    ),
    (
        "He is learning to play the guitar.",
        "He takes lessons on a six-string instrument.",
    ),
];

/// The behavioural probe that fits the loaded model: the next-token loss of a causal LM,
/// the paraphrase probe of a sentence embedder; nothing for other models.
pub fn check(model: &Loaded) -> Result<Vec<Finding>> {
    match model {
        Loaded::Encoder(m) => sentence_embedder(m),
        Loaded::Decoder(g) => language_model(g),
        Loaded::EncoderDecoder(_) => Ok(Vec::new()),
    }
}

/// The mean next-token loss (nats per predicted token) of `g` on `texts`, each encoded as a
/// prompt (with the model's BOS where it adds one) and scored in one pass.
pub fn next_token_loss(g: &TextGenerator, texts: &[&str]) -> Result<f64> {
    let (mut total, mut count) = (0f64, 0usize);
    for (index, text) in texts.iter().enumerate() {
        let Some((ids, log_probs)) = next_token_log_probs(g, text, index)? else {
            continue;
        };
        for (row, next) in log_probs.iter().zip(ids.iter().skip(1)) {
            total -= row
                .get(*next as usize)
                .copied()
                .unwrap_or(f32::NEG_INFINITY) as f64;
            count += 1;
        }
    }
    Ok(if count == 0 {
        0.0
    } else {
        total / count as f64
    })
}

/// A prompt's ids and the log-probabilities of the next token after each of its prefixes.
pub type ScoredPrompt = (Vec<u32>, Vec<Vec<f32>>);

/// `text` encoded as a prompt (its `index` naming it in errors) and `g`'s log-probabilities
/// of the next token after each prefix, one pass: a row per position but the last. `None`
/// for a text of fewer than two tokens.
pub fn next_token_log_probs(
    g: &TextGenerator,
    text: &str,
    index: usize,
) -> Result<Option<ScoredPrompt>> {
    let ids = g.encode_prompt(text, index)?;
    if ids.len() < 2 {
        return Ok(None);
    }
    let model = g.model();
    let mut cache = model.new_cache(ids.len())?;
    let mut batch = RaggedBatch::from_encodings([]);
    batch.push_from(&ids, 0);
    let logits = model
        .forward(&batch, &mut [&mut cache], Logits::All)?
        .to_dtype(DType::F32)?;
    let mut rows = candle_nn::ops::log_softmax(&logits, D::Minus1)?.to_vec2::<f32>()?;
    rows.truncate(ids.len() - 1);
    Ok(Some((ids, rows)))
}

/// `next-token-loss` for a causal LM with trained input embeddings: an error above
/// [`MAX_NEXT_TOKEN_LOSS`], else info with the figure.
pub fn language_model(g: &TextGenerator) -> Result<Vec<Finding>> {
    if canary::trained_spread(g.model().input_embeddings())? < MIN_TRAINED_SPREAD {
        return Ok(Vec::new());
    }
    let loss = next_token_loss(g, LANGUAGE_PROBE)?;
    let vocabulary = g.tokenizer().get_vocab_size(true).max(2) as f64;
    Ok(vec![if !loss.is_finite() || loss > MAX_NEXT_TOKEN_LOSS {
        Finding::new(
            Severity::Error,
            "next-token-loss",
            format!(
                "the model predicts ordinary English text under this tokenizer as if it were noise: mean next-token loss {loss:.2} nats on the {} built-in sentences (a matched tokenizer gives under {MAX_NEXT_TOKEN_LOSS}; guessing uniformly gives {:.2})",
                LANGUAGE_PROBE.len(),
                vocabulary.ln()
            ),
            "use the tokenizer the model was trained or converted with: its ids no longer mean what the model learned",
        )
    } else {
        Finding::new(
            Severity::Info,
            "next-token-loss",
            format!(
                "mean next-token loss {loss:.2} nats on the {} built-in sentences (threshold {MAX_NEXT_TOKEN_LOSS})",
                LANGUAGE_PROBE.len()
            ),
            "",
        )
    }])
}

/// The share of [`PARAPHRASES`] sentences whose nearest neighbour (cosine of the model's
/// sentence embeddings) is their paraphrase.
pub fn paraphrase_accuracy(model: &Model) -> Result<f64> {
    let texts: Vec<&str> = PARAPHRASES.iter().flat_map(|&(a, b)| [a, b]).collect();
    let outputs = embeddings::run(
        model,
        &texts,
        &embeddings::Options {
            normalize: Some(true),
            ..embeddings::Options::default()
        },
    )?;
    let vectors: Vec<&[f32]> = outputs.iter().map(|o| o.embedding.as_slice()).collect();
    let cosine = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    let hits = (0..vectors.len())
        .filter(|&i| {
            let nearest = (0..vectors.len()).filter(|&j| j != i).max_by(|&a, &b| {
                cosine(vectors[i], vectors[a]).total_cmp(&cosine(vectors[i], vectors[b]))
            });
            nearest == Some(i ^ 1)
        })
        .count();
    Ok(hits as f64 / vectors.len() as f64)
}

/// `paraphrase-probe` for a sentence embedder (a folder with sentence-transformers' modules)
/// with trained embeddings: an error below [`MIN_PARAPHRASE_ACCURACY`], else info.
pub fn sentence_embedder(model: &Model) -> Result<Vec<Finding>> {
    if model.sentence.is_none()
        || canary::trained_spread(model.encoder.word_embeddings())? < MIN_TRAINED_SPREAD
    {
        return Ok(Vec::new());
    }
    let accuracy = paraphrase_accuracy(model)?;
    let n = 2 * PARAPHRASES.len();
    let found = (accuracy * n as f64).round() as usize;
    Ok(vec![if accuracy < MIN_PARAPHRASE_ACCURACY {
        Finding::new(
            Severity::Error,
            "paraphrase-probe",
            format!(
                "only {found} of {n} built-in sentences have their paraphrase as nearest neighbour ({:.0}%, a matched tokenizer gives at least {:.0}%): the embeddings no longer carry meaning",
                100.0 * accuracy,
                100.0 * MIN_PARAPHRASE_ACCURACY
            ),
            "use the tokenizer the model was trained with: its ids no longer mean what the model learned",
        )
    } else {
        Finding::new(
            Severity::Info,
            "paraphrase-probe",
            format!("{found} of {n} built-in sentences have their paraphrase as nearest neighbour (threshold {:.0}%)", 100.0 * MIN_PARAPHRASE_ACCURACY),
            "",
        )
    }])
}

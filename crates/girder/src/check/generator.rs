//! Checks on a loaded causal language model, for what has no model folder (a GGUF file
//! carries its tokenizer in its metadata): the tokenizer's ids against the model's output
//! rows, the special tokens, the probe texts' round trip, the chat template.
//!
//! A GGUF file's tokenizer and tensors come from one conversion, so a mismatch is rarer
//! than with a folder whose tokenizer was swapped, but it happens (a vocabulary extended
//! after conversion, a file assembled from parts), and it corrupts generation silently:
//! an id past the output rows never gets a logit, one past the embedding reads garbage.

use super::canary::{self, EmbeddingMatrix};
use super::{Finding, Report, Severity};
use crate::error::Result;
use crate::generate::TextGenerator;

/// The checks of this module and what they find.
///
/// ```
/// # fn main() -> girder::Result<()> {
/// use girder::check::{self, CheckOptions};
/// use girder::generate::TextGenerator;
///
/// let g = TextGenerator::load("tests/fixtures/llama-causal-lm")?;
/// let report = check::generator::check(&g, &check::probe_texts(&CheckOptions::default()))?;
/// assert!(report.ok, "{report:?}");
/// # Ok(())
/// # }
/// ```
pub fn check(g: &TextGenerator, probe: &[String]) -> Result<Report> {
    let tokenizer = g.tokenizer();
    let rows = g.model().vocab_size();
    let ids = tokenizer.get_vocab_size(true);
    let mut findings = Vec::new();
    if ids > rows {
        findings.push(Finding::new(
            Severity::Error,
            "vocab-overflow",
            format!("the tokenizer has {ids} ids but the model has {rows} output rows: ids {rows}..{ids} have no embedding and no logit"),
            "use the tokenizer the model was converted with",
        ));
    } else if ids < rows {
        findings.push(Finding::new(
            Severity::Info,
            "vocab-smaller",
            format!("the model has {rows} output rows for the tokenizer's {ids} ids (rows padded to a round number are common)"),
            "if generations contain ids the tokenizer cannot decode, the model was trained with another tokenizer",
        ));
    }
    let config = g.generation_config();
    let specials = config
        .eos_token_ids
        .iter()
        .map(|&id| ("eos", id))
        .chain(config.bos_token_id.map(|id| ("bos", id)));
    for (name, id) in specials {
        if id as usize >= rows.min(ids) {
            findings.push(Finding::new(
                Severity::Error,
                "special-token-unknown",
                format!(
                    "the {name} token id {id} is past the vocabulary ({} ids, {rows} output rows)",
                    ids
                ),
                "fix the file's tokenizer.ggml.*_token_id metadata or use a matching tokenizer",
            ));
        }
    }
    if config.eos_token_ids.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            "eos-missing",
            "no end-of-sequence token is known: generation stops only at max_new_tokens or a stop string",
            "set eos_token_id in generation_config.json (or the GGUF metadata)",
        ));
    }
    // Every probe text must tokenize to ids the model has, and decode back to itself.
    let mut past = 0;
    let mut changed = Vec::new();
    for (index, text) in probe.iter().enumerate() {
        let ids = g.encode_prompt(text, index)?;
        past += ids.iter().filter(|&&id| id as usize >= rows).count();
        let back = g.decode(&ids, index)?;
        if back.trim() != text.trim() {
            changed.push(text.clone());
        }
    }
    if past > 0 {
        findings.push(Finding::new(
            Severity::Error,
            "vocab-overflow",
            format!(
                "{past} tokens of the probe texts have ids past the model's {rows} output rows"
            ),
            "use the tokenizer the model was converted with",
        ));
    }
    if !changed.is_empty() {
        findings.push(Finding::new(
            Severity::Warning,
            "round-trip",
            format!(
                "{} of {} probe texts do not decode back to themselves, e.g. {:?}",
                changed.len(),
                probe.len(),
                changed[0]
            ),
            "check the tokenizer's normalizer and decoder (a lossy tokenizer changes what the model reads)",
        ));
    }
    if let Some(own) = g.file_tokenizer() {
        findings.push(compare_with_file(own, tokenizer));
    }
    let embedding = EmbeddingMatrix::new(
        g.model().architecture().embedding_tensor,
        g.model().input_embeddings(),
    );
    findings.extend(canary::check_tokenizer(
        tokenizer,
        g.model().class_name(),
        Some(&embedding),
        probe,
    )?);
    findings.push(match g.chat_template() {
        Some(_) => Finding::new(
            Severity::Info,
            "chat-template",
            "a chat template is present",
            "",
        ),
        None => Finding::new(
            Severity::Warning,
            "chat-template-missing",
            "no chat template: /v1/chat/completions and `girder chat` cannot format messages",
            "serve /v1/completions only, or add chat_template to tokenizer_config.json",
        ),
    });
    Ok(Report::new(findings))
}

/// A tokenizer given in place of a GGUF file's own (`--tokenizer`) against the file's
/// vocabulary, id by id: the file's tokens are the ones its embedding rows were trained on.
fn compare_with_file(own: &tokenizers::Tokenizer, given: &tokenizers::Tokenizer) -> Finding {
    let (own_size, given_size) = (own.get_vocab_size(true), given.get_vocab_size(true));
    let shared = own_size.min(given_size) as u32;
    let mut differing = (0..shared).filter(|&id| own.id_to_token(id) != given.id_to_token(id));
    let first = differing.next();
    let count = first.map_or(0, |_| 1 + differing.count());
    match first {
        None if own_size == given_size => Finding::new(
            Severity::Info,
            "tokenizer-matches-file",
            format!("all {own_size} ids of the tokenizer name the tokens of the GGUF file's own vocabulary"),
            "",
        ),
        None => Finding::new(
            Severity::Error,
            "tokenizer-differs-from-file",
            format!(
                "the tokenizer has {given_size} ids and the GGUF file's own vocabulary {own_size}: the first {shared} agree, the rest {}",
                if given_size > own_size { "have no place in the file's vocabulary" } else { "are missing" }
            ),
            "use the GGUF file's own tokenizer (leave out --tokenizer), or the tokenizer of the model it was converted from",
        ),
        Some(id) => Finding::new(
            Severity::Error,
            "tokenizer-differs-from-file",
            format!(
                "{count} of the {shared} ids the tokenizer and the GGUF file's own vocabulary share name different tokens (first: id {id} is `{}` in the tokenizer, `{}` in the file); {given_size} ids against {own_size}",
                given.id_to_token(id).unwrap_or_default(),
                own.id_to_token(id).unwrap_or_default()
            ),
            "use the GGUF file's own tokenizer (leave out --tokenizer), or the tokenizer of the model it was converted from",
        ),
    }
}

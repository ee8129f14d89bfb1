//! The model card: README.md's YAML front matter (the Hub's metadata block), shown to the
//! user and held against a license and language policy (`--deny-license`,
//! `--require-language`). Parsed with serde-saphyr (a maintained, panic-free YAML
//! deserializer); the fields follow the Hub's model card spec (`license`, `language`,
//! `datasets`, `pipeline_tag`, `base_model`, `tags`).

use super::{Finding, Severity};
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// A field the card spec allows as one value or a list.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn values(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// The metadata block of a model card; unknown keys are ignored.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ModelCard {
    #[serde(default)]
    pub license: Option<OneOrMany>,
    #[serde(default)]
    pub language: Option<OneOrMany>,
    #[serde(default)]
    pub datasets: Option<OneOrMany>,
    #[serde(default)]
    pub pipeline_tag: Option<String>,
    #[serde(default)]
    pub base_model: Option<OneOrMany>,
    #[serde(default)]
    pub tags: Option<OneOrMany>,
}

/// The YAML between the leading `---` line and the next `---` line, if the text has one.
pub fn front_matter(text: &str) -> Option<&str> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let rest = text
        .strip_prefix("---\r\n")
        .or_else(|| text.strip_prefix("---\n"))?;
    let mut offset = 0;
    for line in rest.split_inclusive('\n') {
        if line.trim_end() == "---" {
            return Some(&rest[..offset]);
        }
        offset += line.len();
    }
    None
}

/// Parses a card's front matter; `Ok(None)` when the file has none.
pub fn parse(path: &Path, text: &str) -> Result<Option<ModelCard>> {
    let Some(yaml) = front_matter(text) else {
        return Ok(None);
    };
    if yaml.trim().is_empty() {
        return Ok(Some(ModelCard::default()));
    }
    serde_saphyr::from_str::<ModelCard>(yaml)
        .map(Some)
        .map_err(|e| Error::BadCard {
            file: path.to_path_buf(),
            reason: e.to_string().lines().next().unwrap_or_default().to_string(),
        })
}

/// The card's findings: what it says (info), a missing or unreadable card (warning), and
/// policy violations (error).
pub fn check(
    folder: &Path,
    deny_licenses: &[String],
    require_languages: &[String],
) -> Vec<Finding> {
    let path = folder.join("README.md");
    let no_card = |why: String| {
        let mut findings = vec![Finding::new(
            Severity::Warning,
            "card-missing",
            why,
            "add a README.md with the Hub's metadata block (license, language, datasets, pipeline_tag) so that users know what they run",
        )];
        findings.extend(policy(
            &ModelCard::default(),
            deny_licenses,
            require_languages,
        ));
        findings
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(_) if !path.exists() => {
            return no_card(format!("{} has no README.md model card", folder.display()))
        }
        Err(e) => return no_card(format!("{} cannot be read: {e}", path.display())),
    };
    let card = match parse(&path, &text) {
        Ok(Some(card)) => card,
        Ok(None) => {
            return no_card(format!(
                "{} has no YAML metadata block (--- … ---)",
                path.display()
            ))
        }
        Err(e) => {
            let mut findings = vec![Finding::new(
                Severity::Warning,
                "card-invalid",
                e.to_string(),
                "fix the YAML of the metadata block",
            )];
            findings.extend(policy(
                &ModelCard::default(),
                deny_licenses,
                require_languages,
            ));
            return findings;
        }
    };
    let show = |name: &str, v: &Option<OneOrMany>| {
        v.as_ref().map(|v| {
            let values = v.values();
            let more = values.len().saturating_sub(5);
            let mut shown = values.into_iter().take(5).collect::<Vec<_>>().join(", ");
            if more > 0 {
                shown.push_str(&format!(" (+{more} more)"));
            }
            format!("{name}: {shown}")
        })
    };
    let parts: Vec<String> = [
        show("license", &card.license),
        show("language", &card.language),
        card.pipeline_tag
            .as_ref()
            .map(|t| format!("pipeline_tag: {t}")),
        show("base_model", &card.base_model),
        show("datasets", &card.datasets),
        show("tags", &card.tags),
    ]
    .into_iter()
    .flatten()
    .collect();
    let mut findings = vec![Finding::new(
        Severity::Info,
        "card",
        if parts.is_empty() {
            "the model card's metadata block is empty".to_string()
        } else {
            format!("model card: {}", parts.join("; "))
        },
        "",
    )];
    findings.extend(policy(&card, deny_licenses, require_languages));
    findings
}

fn policy(
    card: &ModelCard,
    deny_licenses: &[String],
    require_languages: &[String],
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let licenses = card
        .license
        .as_ref()
        .map(OneOrMany::values)
        .unwrap_or_default();
    if !deny_licenses.is_empty() {
        for license in &licenses {
            if deny_licenses
                .iter()
                .any(|d| d.eq_ignore_ascii_case(license.trim()))
            {
                findings.push(Finding::new(
                    Severity::Error,
                    "license-denied",
                    format!("the model card's license is {license}, which --deny-license forbids"),
                    "use a model under an allowed license",
                ));
            }
        }
        if licenses.is_empty() {
            findings.push(Finding::new(
                Severity::Warning,
                "license-denied",
                "the model card names no license, so --deny-license cannot be checked",
                "find the model's license before using it",
            ));
        }
    }
    let languages = card
        .language
        .as_ref()
        .map(OneOrMany::values)
        .unwrap_or_default();
    for required in require_languages {
        if !languages
            .iter()
            .any(|l| l.trim().eq_ignore_ascii_case(required))
        {
            let have = if languages.is_empty() {
                "none".to_string()
            } else {
                languages.join(", ")
            };
            findings.push(Finding::new(
                Severity::Error,
                "language-missing",
                format!("--require-language {required}: the model card lists languages {have}"),
                "use a model whose card lists the language",
            ));
        }
    }
    findings
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn front_matter_is_parsed() {
        let text = "---\nlicense: apache-2.0\nlanguage:\n- en\n- fr\npipeline_tag: fill-mask\n---\n# Title\n";
        let card = parse(Path::new("README.md"), text).unwrap().unwrap();
        assert_eq!(card.license, Some(OneOrMany::One("apache-2.0".into())));
        assert_eq!(card.language.unwrap().values(), ["en", "fr"]);
        assert_eq!(card.pipeline_tag.as_deref(), Some("fill-mask"));
        assert!(parse(Path::new("README.md"), "# no card\n")
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_yaml_is_an_error_not_a_panic() {
        let err = parse(Path::new("README.md"), "---\nlicense: [a, b\n---\n").unwrap_err();
        assert!(matches!(err, Error::BadCard { .. }), "{err}");
    }

    #[test]
    fn policy_turns_violations_into_errors() {
        let card = ModelCard {
            license: Some(OneOrMany::One("cc-by-nc-4.0".into())),
            language: Some(OneOrMany::One("en".into())),
            ..Default::default()
        };
        let f = policy(&card, &["CC-BY-NC-4.0".into()], &["de".into(), "en".into()]);
        let codes: Vec<_> = f.iter().map(|f| f.code.as_str()).collect();
        assert_eq!(codes, ["license-denied", "language-missing"]);
        assert!(f.iter().all(|f| f.severity == Severity::Error));
    }
}

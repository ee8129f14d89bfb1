//! Finding a model on disk: a local folder, or a hub id in the Hugging Face cache layout.
//!
//! girder never downloads at run time; it reuses what `huggingface_hub` (Python) already
//! fetched. The cache layout is `models--{org}--{name}/snapshots/{commit}/`, with
//! `refs/{branch}` holding the commit a branch points to.

pub mod adapter;
pub mod ctranslate2;
pub mod gguf;
pub mod weights;

pub use adapter::LoraAdapter;
pub use gguf::GgufFile;
pub use weights::{Lora, LoraPair, Parameters, Trained, Training, Weights};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What the user named: a folder on disk or a hub id with an optional revision.
///
/// ```
/// use girder::hub::ModelRef;
/// let r = ModelRef::parse("sentence-transformers/all-MiniLM-L6-v2@main");
/// assert_eq!(
///     r,
///     ModelRef::Hub { repo_id: "sentence-transformers/all-MiniLM-L6-v2".into(), revision: Some("main".into()) }
/// );
/// assert!(matches!(ModelRef::parse("./models/minilm"), ModelRef::Path(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelRef {
    Path(PathBuf),
    Hub {
        repo_id: String,
        revision: Option<String>,
    },
}

impl ModelRef {
    /// Existing paths win; `org/name[@rev]` with exactly one slash is a hub id;
    /// anything else is taken as a path (and reported missing if it is not there).
    pub fn parse(reference: &str) -> ModelRef {
        let path = Path::new(reference);
        if path.exists() || reference.starts_with(['.', '/', '~']) {
            return ModelRef::Path(path.to_path_buf());
        }
        let (repo_id, revision) = match reference.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, Some(rev.to_string())),
            _ => (reference, None),
        };
        let parts: Vec<&str> = repo_id.split('/').collect();
        let looks_like_hub_id = parts.len() == 2
            && parts.iter().all(|p| {
                !p.is_empty()
                    && p.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            });
        if looks_like_hub_id {
            ModelRef::Hub {
                repo_id: repo_id.to_string(),
                revision,
            }
        } else {
            ModelRef::Path(path.to_path_buf())
        }
    }

    /// The folder holding the model's files.
    pub fn resolve(&self) -> Result<ModelFolder> {
        ModelFolder::open(self.locate()?)
    }

    /// The folder holding a tokenizer, which may lack config.json (a tokenizer-only repo,
    /// or a folder of tokenizer files to check against another model).
    pub fn resolve_tokenizer(&self) -> Result<ModelFolder> {
        ModelFolder::open_tokenizer(self.locate()?)
    }

    fn locate(&self) -> Result<PathBuf> {
        match self {
            ModelRef::Path(path) => Ok(path.clone()),
            ModelRef::Hub { repo_id, revision } => {
                let cache = hf_cache_dir();
                let revision = revision.clone().unwrap_or_else(|| "main".to_string());
                snapshot_dir(&cache, repo_id, &revision).ok_or_else(|| Error::NotInCache {
                    repo_id: repo_id.clone(),
                    revision: revision.clone(),
                    cache: cache.clone(),
                })
            }
        }
    }
}

/// The hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`,
/// the order `huggingface_hub` uses.
pub fn hf_cache_dir() -> PathBuf {
    cache_dir_from(|name| std::env::var_os(name).filter(|v| !v.is_empty()))
}

fn cache_dir_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> PathBuf {
    if let Some(dir) = var("HF_HUB_CACHE") {
        return PathBuf::from(dir);
    }
    if let Some(home) = var("HF_HOME") {
        return PathBuf::from(home).join("hub");
    }
    let home = var("HOME").map(PathBuf::from).unwrap_or_default();
    home.join(".cache").join("huggingface").join("hub")
}

/// `models--org--name/snapshots/<commit>` for a branch, tag or commit hash.
fn snapshot_dir(cache: &Path, repo_id: &str, revision: &str) -> Option<PathBuf> {
    let repo_dir = cache.join(format!("models--{}", repo_id.replace('/', "--")));
    let commit = std::fs::read_to_string(repo_dir.join("refs").join(revision))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| revision.to_string());
    let snapshot = repo_dir.join("snapshots").join(commit);
    snapshot.is_dir().then_some(snapshot)
}

/// A Hugging Face model folder: config.json, tokenizer files and weights.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    root: PathBuf,
}

impl ModelFolder {
    /// Opens a folder; fails when it does not exist or lacks config.json.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::FolderNotFound { folder: root });
        }
        let folder = ModelFolder { root };
        folder.require(
            "config.json",
            "a model folder needs config.json, tokenizer.json (or vocab.txt) and model.safetensors (or model.safetensors.index.json with its shards)",
        )?;
        Ok(folder)
    }

    /// Opens a folder of tokenizer files; unlike [`open`](Self::open) it needs no config.json.
    pub fn open_tokenizer(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        if !root.is_dir() {
            return Err(Error::FolderNotFound { folder: root });
        }
        Ok(ModelFolder { root })
    }

    /// The folder's path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/name` if that file exists.
    pub fn file(&self, name: &str) -> Option<PathBuf> {
        let path = self.root.join(name);
        path.is_file().then_some(path)
    }

    /// `root/name`, or a [`Error::MissingFile`] that says why it is needed.
    pub fn require(&self, name: &str, needs: &str) -> Result<PathBuf> {
        self.file(name).ok_or_else(|| Error::MissingFile {
            folder: self.root.clone(),
            file: name.to_string(),
            needs: needs.to_string(),
        })
    }

    /// The safetensors files: `model.safetensors`, or the shards named by
    /// `model.safetensors.index.json`.
    pub fn weight_files(&self) -> Result<Vec<PathBuf>> {
        if let Some(single) = self.file("model.safetensors") {
            return Ok(vec![single]);
        }
        let Some(index) = self.file("model.safetensors.index.json") else {
            let needs = if self.file("pytorch_model.bin").is_some() {
                "only pytorch_model.bin is here; girder reads safetensors (convert with `transformers` save_pretrained(safe_serialization=True))"
            } else {
                "the model's weights are needed as safetensors"
            };
            return Err(Error::MissingFile {
                folder: self.root.clone(),
                file: "model.safetensors".into(),
                needs: needs.into(),
            });
        };
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let index: Index = crate::config::read_json(&index)?;
        let mut files: Vec<String> = index.weight_map.into_values().collect();
        files.sort();
        files.dedup();
        files
            .iter()
            .map(|f| {
                self.require(
                    f,
                    "model.safetensors.index.json names this shard in its weight_map",
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn cache_dir_follows_huggingface_hub_precedence() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            cache_dir_from(env(&[("HF_HUB_CACHE", "/a"), ("HF_HOME", "/b")])),
            PathBuf::from("/a")
        );
        assert_eq!(
            cache_dir_from(env(&[("HF_HOME", "/b"), ("HOME", "/h")])),
            PathBuf::from("/b/hub")
        );
        assert_eq!(
            cache_dir_from(env(&[("HOME", "/h")])),
            PathBuf::from("/h/.cache/huggingface/hub")
        );
    }

    #[test]
    fn hub_ids_and_paths_are_told_apart() {
        assert_eq!(
            ModelRef::parse("org/name"),
            ModelRef::Hub {
                repo_id: "org/name".into(),
                revision: None
            }
        );
        assert!(matches!(ModelRef::parse("a/b/c"), ModelRef::Path(_)));
        assert!(matches!(ModelRef::parse("/abs/path"), ModelRef::Path(_)));
        assert!(matches!(ModelRef::parse("plainname"), ModelRef::Path(_)));
    }

    #[test]
    fn snapshot_follows_refs() {
        let dir = std::env::temp_dir().join(format!("girder-hub-test-{}", std::process::id()));
        let repo = dir.join("models--org--name");
        std::fs::create_dir_all(repo.join("snapshots/abc123")).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs/main"), "abc123\n").unwrap();
        assert_eq!(
            snapshot_dir(&dir, "org/name", "main"),
            Some(repo.join("snapshots/abc123"))
        );
        assert_eq!(
            snapshot_dir(&dir, "org/name", "abc123"),
            Some(repo.join("snapshots/abc123"))
        );
        assert_eq!(snapshot_dir(&dir, "org/name", "v2"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

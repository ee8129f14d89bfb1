//! Finding a model: a local folder, or a hub id fetched into the Hugging Face cache.
//!
//! A hub id (`org/name[@revision]`) is downloaded on first use into the cache Python's
//! `huggingface_hub` uses ([`cache`], [`download`]), so either finds what the other fetched;
//! offline (`HF_HUB_OFFLINE=1`), only the cache is read.

pub mod adapter;
pub mod cache;
pub mod ctranslate2;
pub mod download;
pub mod gguf;
pub mod gguf_write;
pub mod weights;

pub use adapter::LoraAdapter;
pub use cache::{CachedRepo, CachedRevision, HubCache, Removal};
pub use download::{FileSelection, HubClient};
pub use gguf::GgufFile;
pub use weights::{Lora, LoraPair, Parameters, Trained, Training, Weights};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// What the user named: a folder or file on disk, a hub repository, or one file of a hub
/// repository (a GGUF), each with an optional revision.
///
/// ```
/// use girder::hub::ModelRef;
/// let r = ModelRef::parse("sentence-transformers/all-MiniLM-L6-v2@main");
/// assert_eq!(
///     r,
///     ModelRef::Hub { repo_id: "sentence-transformers/all-MiniLM-L6-v2".into(), revision: Some("main".into()) }
/// );
/// assert_eq!(
///     ModelRef::parse("Qwen/Qwen2.5-0.5B-Instruct-GGUF/qwen2.5-0.5b-instruct-q4_k_m.gguf"),
///     ModelRef::HubFile {
///         repo_id: "Qwen/Qwen2.5-0.5B-Instruct-GGUF".into(),
///         revision: None,
///         file: "qwen2.5-0.5b-instruct-q4_k_m.gguf".into(),
///     }
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
    HubFile {
        repo_id: String,
        revision: Option<String>,
        file: String,
    },
}

impl ModelRef {
    /// Existing paths win; `org/name[@rev]` is a hub repository and `org/name[@rev]/file.gguf`
    /// one file of it; anything else is taken as a path (and reported missing if it is not
    /// there).
    pub fn parse(reference: &str) -> ModelRef {
        let path = Path::new(reference);
        if path.exists() || reference.starts_with(['.', '/', '~']) {
            return ModelRef::Path(path.to_path_buf());
        }
        let mut parts = reference.splitn(3, '/');
        let (Some(org), Some(name_rev)) = (parts.next(), parts.next()) else {
            return ModelRef::Path(path.to_path_buf());
        };
        let file = parts.next();
        let (name, revision) = match name_rev.split_once('@') {
            Some((name, rev)) if !rev.is_empty() => (name, Some(rev.to_string())),
            _ => (name_rev, None),
        };
        let repo_id = format!("{org}/{name}");
        let valid = cache::check_repo_id(&repo_id).is_ok()
            && revision
                .as_deref()
                .is_none_or(|r| cache::check_revision(r).is_ok());
        match file {
            _ if !valid => ModelRef::Path(path.to_path_buf()),
            None => ModelRef::Hub { repo_id, revision },
            Some(file)
                if file.to_ascii_lowercase().ends_with(".gguf")
                    && cache::check_file(file).is_ok() =>
            {
                ModelRef::HubFile {
                    repo_id,
                    revision,
                    file: file.to_string(),
                }
            }
            Some(_) => ModelRef::Path(path.to_path_buf()),
        }
    }

    /// The folder holding the model's files, downloaded first if it is a hub id.
    pub fn resolve(&self) -> Result<ModelFolder> {
        ModelFolder::open(self.locate(&FileSelection::Model)?)
    }

    /// The folder holding a tokenizer, which may lack config.json (a tokenizer-only repo,
    /// or a folder of tokenizer files to check against another model).
    pub fn resolve_tokenizer(&self) -> Result<ModelFolder> {
        ModelFolder::open_tokenizer(self.locate(&FileSelection::Tokenizer)?)
    }

    /// The path on disk: the folder or file named, or the hub snapshot (folder or file),
    /// downloaded with `selection` unless cached or offline.
    pub fn locate(&self, selection: &FileSelection) -> Result<PathBuf> {
        match self {
            ModelRef::Path(path) => Ok(path.clone()),
            ModelRef::Hub { repo_id, revision } => HubClient::from_env()
                .snapshot(repo_id, revision.as_deref().unwrap_or("main"), selection)
                .map_err(|e| not_a_folder_either(e, repo_id)),
            ModelRef::HubFile {
                repo_id,
                revision,
                file,
            } => HubClient::from_env().file(repo_id, revision.as_deref().unwrap_or("main"), file),
        }
    }
}

/// `org/name` may also have been meant as a folder: a hub error says there is none.
fn not_a_folder_either(error: Error, reference: &str) -> Error {
    let note = format!(" (and there is no folder `{reference}` here)");
    match error {
        Error::RepoNotFound {
            repo_id,
            endpoint,
            hint,
        } => Error::RepoNotFound {
            repo_id,
            endpoint,
            hint: format!("{hint}{note}"),
        },
        Error::NotInCache {
            repo_id,
            revision,
            cache,
            reason,
        } => Error::NotInCache {
            repo_id,
            revision,
            cache,
            reason: format!("{reason}{note}"),
        },
        other => other,
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

/// The shard files a `model.safetensors.index.json` names, sorted, each once. A shard is a
/// file of the index's folder: an absolute path or `..` (which would open files elsewhere,
/// and whose error would tell whether they exist) is refused naming the field.
pub(crate) fn shard_names(index: &Path) -> Result<Vec<String>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::BTreeMap<String, String>,
    }
    let parsed: Index = crate::config::read_json(index)?;
    let mut files: Vec<String> = parsed.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    if let Some(bad) = files.iter().find(|f| cache::check_file(f).is_err()) {
        return Err(Error::BadConfig {
            file: index.to_path_buf(),
            field: "weight_map".into(),
            reason: format!("shard `{bad}` is not a file name inside the model folder"),
        });
    }
    Ok(files)
}

/// A model folder that cannot be opened is named with the reason: absent, a file where a
/// folder is expected (a `.safetensors` or another file given as the model), a link loop,
/// or no permission to list it.
fn check_folder(root: &Path) -> Result<()> {
    match std::fs::metadata(root) {
        Ok(meta) if meta.is_dir() => {
            std::fs::read_dir(root)
                .map(|_| ())
                .map_err(|source| Error::Io {
                    path: root.to_path_buf(),
                    source,
                })
        }
        Ok(_) => Err(Error::NotAFolder {
            path: root.to_path_buf(),
        }),
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                && std::fs::symlink_metadata(root).is_err() =>
        {
            Err(Error::FolderNotFound {
                folder: root.to_path_buf(),
            })
        }
        Err(source) => Err(Error::Io {
            path: root.to_path_buf(),
            source,
        }),
    }
}

/// A Hugging Face model folder: config.json, tokenizer files and weights.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    root: PathBuf,
}

impl ModelFolder {
    /// Opens a folder; fails when it does not exist, cannot be read, or lacks config.json.
    pub fn open(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        check_folder(&root)?;
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
        check_folder(&root)?;
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

    /// `root/name`, or why it cannot be used: absent (a [`Error::MissingFile`] that says why
    /// it is needed), or there but not a readable regular file (a link loop, a FIFO, a folder,
    /// no permission: an [`Error::Io`] naming it).
    fn existing(&self, name: &str, needs: &str) -> Result<PathBuf> {
        let path = self.root.join(name);
        match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => match std::fs::File::open(&path) {
                Ok(_) => Ok(path),
                Err(source) => Err(Error::Io { path, source }),
            },
            Ok(_) => Err(Error::Io {
                path,
                source: std::io::Error::other("not a regular file"),
            }),
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    && std::fs::symlink_metadata(&path).is_err() =>
            {
                Err(Error::MissingFile {
                    folder: self.root.clone(),
                    file: name.to_string(),
                    needs: needs.to_string(),
                })
            }
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// `root/name`, or why not: a [`Error::MissingFile`] that says why it is needed, or an
    /// [`Error::Io`] when it is there but cannot be read.
    pub fn require(&self, name: &str, needs: &str) -> Result<PathBuf> {
        self.existing(name, needs)
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
        shard_names(&index)?
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
        assert!(matches!(ModelRef::parse("../x/y"), ModelRef::Path(_)));
        assert!(matches!(ModelRef::parse("x/..@main"), ModelRef::Path(_)));
        assert!(matches!(
            ModelRef::parse("org/name@v1/sub/m.gguf"),
            ModelRef::HubFile { .. }
        ));
        assert!(matches!(ModelRef::parse("/abs/path"), ModelRef::Path(_)));
        assert!(matches!(ModelRef::parse("plainname"), ModelRef::Path(_)));
    }
}

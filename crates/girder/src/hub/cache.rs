//! The Hugging Face cache on disk, in exactly the layout Python's `huggingface_hub` writes, so
//! that girder and Python share one cache both ways:
//!
//! ```text
//! <cache>/models--org--name/blobs/<etag>                   the file's bytes, named by its ETag
//! <cache>/models--org--name/refs/<branch or tag>           the commit it points to
//! <cache>/models--org--name/snapshots/<commit>/<file>      a relative link to ../../blobs/<etag>
//! <cache>/.locks/models--org--name/<etag>.lock             held while a blob is written
//! ```
//!
//! Every name that comes from a user or a server (repo id, revision, file, ETag, commit) is
//! checked before it becomes part of a path: none can leave its folder.

use crate::error::{Error, Result};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

/// The hub cache folder and what lies in it.
///
/// ```
/// use girder::hub::HubCache;
/// let cache = HubCache::new("/tmp/hf");
/// assert_eq!(
///     cache.repo_dir("org/name").unwrap(),
///     std::path::PathBuf::from("/tmp/hf/models--org--name")
/// );
/// assert!(cache.repo_dir("../escape").is_err());
/// ```
#[derive(Debug, Clone)]
pub struct HubCache {
    root: PathBuf,
}

/// One repository in the cache, as `girder cache ls` lists it.
#[derive(Debug, Clone)]
pub struct CachedRepo {
    /// `org/name`.
    pub repo_id: String,
    /// `model`, `dataset` or `space`.
    pub repo_type: String,
    /// `<cache>/models--org--name`.
    pub path: PathBuf,
    /// Bytes of all its blobs (each counted once, however many snapshots link to it).
    pub size_on_disk: u64,
    /// Number of blobs.
    pub files: usize,
    /// The newest modification time among its blobs.
    pub last_modified: Option<SystemTime>,
    /// Its snapshots, oldest commit folder first.
    pub revisions: Vec<CachedRevision>,
}

/// One snapshot (commit) of a cached repository.
#[derive(Debug, Clone)]
pub struct CachedRevision {
    /// The commit hash: the snapshot folder's name.
    pub commit: String,
    /// The branches and tags in `refs/` pointing to it.
    pub refs: Vec<String>,
    /// Files in the snapshot.
    pub files: usize,
    /// Bytes of the blobs the snapshot links to.
    pub size: u64,
    /// `<cache>/models--org--name/snapshots/<commit>`.
    pub path: PathBuf,
}

/// What [`HubCache::remove`] deleted (or, with `dry_run`, would delete).
#[derive(Debug, Clone, Default)]
pub struct Removal {
    /// Snapshot folders, blobs and refs removed.
    pub paths: Vec<PathBuf>,
    /// Bytes of the blobs removed.
    pub freed: u64,
}

impl HubCache {
    /// A cache rooted at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        HubCache { root: root.into() }
    }

    /// The cache `huggingface_hub` uses: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`.
    pub fn from_env() -> Self {
        HubCache::new(super::hf_cache_dir())
    }

    /// The cache folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<cache>/models--org--name`.
    pub fn repo_dir(&self, repo_id: &str) -> Result<PathBuf> {
        Ok(self.root.join(repo_folder_name(repo_id)?))
    }

    /// `<cache>/models--org--name/blobs/<etag>`.
    pub fn blob_path(&self, repo_id: &str, etag: &str) -> Result<PathBuf> {
        check_etag(etag)?;
        Ok(self.repo_dir(repo_id)?.join("blobs").join(etag))
    }

    /// `<cache>/.locks/models--org--name/<etag>.lock`, the file Python's `huggingface_hub`
    /// locks too (both take `flock` on it).
    pub fn lock_path(&self, repo_id: &str, etag: &str) -> Result<PathBuf> {
        check_etag(etag)?;
        Ok(self
            .root
            .join(".locks")
            .join(repo_folder_name(repo_id)?)
            .join(format!("{etag}.lock")))
    }

    /// `<cache>/models--org--name/snapshots/<commit>`.
    pub fn snapshot_dir(&self, repo_id: &str, commit: &str) -> Result<PathBuf> {
        check_commit(commit)?;
        Ok(self.repo_dir(repo_id)?.join("snapshots").join(commit))
    }

    /// The commit `revision` stands for: itself when it is a commit hash, else what
    /// `refs/<revision>` holds.
    pub fn read_ref(&self, repo_id: &str, revision: &str) -> Result<Option<String>> {
        check_revision(revision)?;
        if is_commit_hash(revision) {
            return Ok(Some(revision.to_string()));
        }
        let path = self.repo_dir(repo_id)?.join("refs").join(revision);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let commit = text.trim().to_string();
                check_commit(&commit).map_err(|_| Error::BadConfig {
                    file: path.clone(),
                    field: "commit".into(),
                    reason: "a ref file holds one commit hash".into(),
                })?;
                Ok(Some(commit))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(Error::Io { path, source }),
        }
    }

    /// Records that `revision` (a branch or tag) points to `commit`; nothing for a commit
    /// hash. Written to a temporary file and renamed, so a reader never sees half a ref.
    pub fn write_ref(&self, repo_id: &str, revision: &str, commit: &str) -> Result<()> {
        check_revision(revision)?;
        check_commit(commit)?;
        if revision == commit {
            return Ok(());
        }
        let path = self.repo_dir(repo_id)?.join("refs").join(revision);
        if std::fs::read_to_string(&path).is_ok_and(|old| old.trim() == commit) {
            return Ok(());
        }
        let parent = path.parent().expect("a ref has a parent folder");
        create_dir_all(parent)?;
        let tmp = parent.join(format!(
            ".{}.{}.tmp",
            path.file_name().unwrap_or_default().to_string_lossy(),
            unique_suffix()
        ));
        std::fs::write(&tmp, commit).map_err(|source| Error::Io {
            path: tmp.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &path).map_err(|source| Error::Io { path, source })
    }

    /// The snapshot folder for `revision` if it is in the cache.
    pub fn find_snapshot(&self, repo_id: &str, revision: &str) -> Result<Option<PathBuf>> {
        let Some(commit) = self.read_ref(repo_id, revision)? else {
            return Ok(None);
        };
        let dir = self.snapshot_dir(repo_id, &commit)?;
        Ok(dir.is_dir().then_some(dir))
    }

    /// Puts `file` into the snapshot of `commit` as a relative link to its blob, as
    /// `huggingface_hub` does (the cache stays valid when its folder is moved).
    pub fn link(&self, repo_id: &str, commit: &str, file: &str, etag: &str) -> Result<PathBuf> {
        let blob = self.blob_path(repo_id, etag)?;
        let target = self.snapshot_dir(repo_id, commit)?.join(check_file(file)?);
        let parent = target
            .parent()
            .expect("a snapshot file has a parent folder");
        create_dir_all(parent)?;
        // snapshots/<commit>/a/b.json -> ../../../blobs/<etag>: one `..` per folder below
        // the repository folder.
        let depth = Path::new(file).components().count() + 1;
        let mut relative = PathBuf::new();
        for _ in 0..depth {
            relative.push("..");
        }
        relative.push("blobs");
        relative.push(etag);
        if std::fs::read_link(&target).is_ok_and(|l| l == relative) {
            return Ok(target);
        }
        // Made under a unique name and renamed over the target: two processes linking the
        // same file at once both succeed, and a reader never sees the name missing.
        let file_name = target.file_name().unwrap_or_default().to_string_lossy();
        let tmp = parent.join(format!(".{file_name}.{}.tmp", unique_suffix()));
        symlink_or_copy(&relative, &blob, &tmp)?;
        std::fs::rename(&tmp, &target).map_err(|source| {
            let _ = std::fs::remove_file(&tmp);
            Error::Io {
                path: target.clone(),
                source,
            }
        })?;
        Ok(target)
    }

    /// Every repository in the cache, sorted by id.
    pub fn scan(&self) -> Result<Vec<CachedRepo>> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(Error::Io {
                    path: self.root.clone(),
                    source,
                })
            }
        };
        let mut repos = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((kind, id)) = name.split_once("--") else {
                continue; // .locks, version.txt, anything not a repository
            };
            let repo_type = match kind {
                "models" => "model",
                "datasets" => "dataset",
                "spaces" => "space",
                _ => continue,
            };
            if !entry.path().is_dir() {
                continue;
            }
            repos.push(scan_repo(
                entry.path(),
                repo_type,
                id.replacen("--", "/", 1),
            )?);
        }
        repos.sort_by(|a, b| (&a.repo_type, &a.repo_id).cmp(&(&b.repo_type, &b.repo_id)));
        Ok(repos)
    }

    /// Removes a whole model repository (`revision` None) or one snapshot: its folder, the
    /// refs pointing to it, and the blobs no other snapshot links to.
    pub fn remove(&self, repo_id: &str, revision: Option<&str>, dry_run: bool) -> Result<Removal> {
        let repo_dir = self.repo_dir(repo_id)?;
        if !repo_dir.is_dir() {
            return Err(Error::NotInCache {
                repo_id: repo_id.to_string(),
                revision: revision.unwrap_or("any").to_string(),
                cache: self.root.clone(),
                reason: "there is nothing to remove".into(),
            });
        }
        let repo = scan_repo(repo_dir.clone(), "model", repo_id.to_string())?;
        let mut removal = Removal::default();
        let Some(revision) = revision else {
            removal.freed = repo.size_on_disk;
            removal.paths.push(repo_dir.clone());
            if !dry_run {
                remove_dir_all(&repo_dir)?;
            }
            return Ok(removal);
        };
        let commit = self.read_ref(repo_id, revision)?;
        let Some(victim) = repo.revisions.iter().find(|r| {
            Some(&r.commit) == commit.as_ref()
                || (revision.len() >= 7
                    && revision.chars().all(|c| c.is_ascii_hexdigit())
                    && r.commit.starts_with(revision))
        }) else {
            return Err(Error::NotInCache {
                repo_id: repo_id.to_string(),
                revision: revision.to_string(),
                cache: self.root.clone(),
                reason: "there is nothing to remove".into(),
            });
        };
        let kept: std::collections::HashSet<PathBuf> = repo
            .revisions
            .iter()
            .filter(|r| r.commit != victim.commit)
            .flat_map(|r| snapshot_blobs(&r.path))
            .map(|(blob, _)| blob)
            .collect();
        for (blob, size) in snapshot_blobs(&victim.path) {
            if !kept.contains(&blob) && !removal.paths.contains(&blob) {
                removal.freed += size;
                removal.paths.push(blob);
            }
        }
        for name in &victim.refs {
            removal.paths.push(repo_dir.join("refs").join(name));
        }
        removal.paths.push(victim.path.clone());
        if !dry_run {
            for path in &removal.paths {
                if path.is_dir() {
                    remove_dir_all(path)?;
                } else {
                    std::fs::remove_file(path).map_err(|source| Error::Io {
                        path: path.clone(),
                        source,
                    })?;
                }
            }
        }
        Ok(removal)
    }
}

fn scan_repo(path: PathBuf, repo_type: &str, repo_id: String) -> Result<CachedRepo> {
    let mut size_on_disk = 0;
    let mut files = 0;
    let mut last_modified: Option<SystemTime> = None;
    if let Ok(blobs) = std::fs::read_dir(path.join("blobs")) {
        for blob in blobs.flatten() {
            let Ok(meta) = blob.metadata() else { continue };
            if !meta.is_file() || blob.file_name().to_string_lossy().ends_with(".incomplete") {
                continue;
            }
            size_on_disk += meta.len();
            files += 1;
            if let Ok(modified) = meta.modified() {
                last_modified = Some(last_modified.map_or(modified, |t| t.max(modified)));
            }
        }
    }
    let mut refs: Vec<(String, String)> = Vec::new();
    collect_refs(&path.join("refs"), "", &mut refs);
    let mut revisions = Vec::new();
    if let Ok(snapshots) = std::fs::read_dir(path.join("snapshots")) {
        for snapshot in snapshots.flatten() {
            let commit = snapshot.file_name().to_string_lossy().into_owned();
            let blobs = snapshot_blobs(&snapshot.path());
            let mut names: Vec<String> = refs
                .iter()
                .filter(|(_, c)| *c == commit)
                .map(|(name, _)| name.clone())
                .collect();
            names.sort();
            revisions.push(CachedRevision {
                files: blobs.len(),
                size: blobs.iter().map(|(_, size)| size).sum(),
                refs: names,
                path: snapshot.path(),
                commit,
            });
        }
    }
    revisions.sort_by(|a, b| a.commit.cmp(&b.commit));
    Ok(CachedRepo {
        repo_id,
        repo_type: repo_type.to_string(),
        path,
        size_on_disk,
        files,
        last_modified,
        revisions,
    })
}

/// `refs/` holds plain files, and folders for names with slashes (`refs/pr/1`).
fn collect_refs(dir: &Path, prefix: &str, out: &mut Vec<(String, String)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
        if name.ends_with(".tmp") || name.starts_with('.') {
            continue;
        }
        let path = entry.path();
        if path.is_dir() {
            collect_refs(&path, &format!("{name}/"), out);
        } else if let Ok(commit) = std::fs::read_to_string(&path) {
            out.push((name, commit.trim().to_string()));
        }
    }
}

/// The blobs a snapshot's links resolve to, with their sizes.
fn snapshot_blobs(snapshot: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![snapshot.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.is_dir() {
                stack.push(path);
            } else if let Ok(blob) = std::fs::canonicalize(&path) {
                let size = std::fs::metadata(&blob).map(|m| m.len()).unwrap_or(0);
                out.push((blob, size));
            }
        }
    }
    out
}

/// `org/name` → `models--org--name`, refusing ids that could name another folder.
fn repo_folder_name(repo_id: &str) -> Result<String> {
    check_repo_id(repo_id)?;
    Ok(format!("models--{}", repo_id.replace('/', "--")))
}

/// A hub id is `name` or `org/name`: letters, digits, `-`, `_`, `.`; no `--` or `..`, and no
/// part that starts or ends with `-` or `.` (the Hub's own rules).
pub(crate) fn check_repo_id(repo_id: &str) -> Result<()> {
    let parts: Vec<&str> = repo_id.split('/').collect();
    let ok = (1..=2).contains(&parts.len())
        && parts.iter().all(|part| {
            !part.is_empty()
                && part.len() <= 96
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && !part.contains("--")
                && !part.contains("..")
                && !part.starts_with(['-', '.'])
                && !part.ends_with(['-', '.'])
        });
    if ok {
        Ok(())
    } else {
        Err(Error::BadHubName {
            what: "repository id",
            name: repo_id.to_string(),
            rule: "`org/name` of letters, digits, `-`, `_` and `.`, without `--` or `..`",
        })
    }
}

/// A branch, tag or commit: relative, no `..` or empty parts (it becomes `refs/<revision>`).
pub(crate) fn check_revision(revision: &str) -> Result<()> {
    if check_relative(revision)
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
    {
        Ok(())
    } else {
        Err(Error::BadHubName {
            what: "revision",
            name: revision.to_string(),
            rule: "a branch, tag or commit hash of letters, digits, `-`, `_`, `.` and `/`",
        })
    }
}

/// A file in a repository: a relative path that stays inside the snapshot folder.
pub(crate) fn check_file(file: &str) -> Result<&str> {
    if check_relative(file) && !file.contains('\\') && !file.contains('\0') {
        Ok(file)
    } else {
        Err(Error::BadHubName {
            what: "file name",
            name: file.to_string(),
            rule: "a relative path inside the repository",
        })
    }
}

fn check_relative(path: &str) -> bool {
    !path.is_empty()
        && path.len() <= 1024
        && !path.starts_with('/')
        && Path::new(path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
        && !path
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
}

/// An ETag names a blob: hex digits (a git sha1 or an LFS sha256), or at most the
/// characters a file name can hold anywhere.
fn check_etag(etag: &str) -> Result<()> {
    if !etag.is_empty()
        && etag.len() <= 128
        && etag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    {
        Ok(())
    } else {
        Err(Error::BadHubName {
            what: "ETag",
            name: etag.to_string(),
            rule: "letters, digits, `-` and `_` (a blob's file name)",
        })
    }
}

fn check_commit(commit: &str) -> Result<()> {
    if is_commit_hash(commit) {
        Ok(())
    } else {
        Err(Error::BadHubName {
            what: "commit",
            name: commit.to_string(),
            rule: "40 hexadecimal digits",
        })
    }
}

/// A name no other process or thread uses at the same time: the process id and a counter.
fn unique_suffix() -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}-{n}", std::process::id())
}

/// A full commit hash: 40 hexadecimal digits.
pub fn is_commit_hash(revision: &str) -> bool {
    revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit())
}

pub(crate) fn create_dir_all(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

fn remove_dir_all(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).map_err(|source| Error::Io {
        path: dir.to_path_buf(),
        source,
    })
}

#[cfg(unix)]
fn symlink_or_copy(relative: &Path, _blob: &Path, target: &Path) -> Result<()> {
    std::os::unix::fs::symlink(relative, target).map_err(|source| Error::Io {
        path: target.to_path_buf(),
        source,
    })
}

#[cfg(not(unix))]
fn symlink_or_copy(_relative: &Path, blob: &Path, target: &Path) -> Result<()> {
    // Where links need privileges, the file is copied, as huggingface_hub does.
    std::fs::copy(blob, target)
        .map(|_| ())
        .map_err(|source| Error::Io {
            path: target.to_path_buf(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_cache_are_refused() {
        for id in [
            "..", "../x", "a/../b", "a/b/c", "a--b/c", "-a/b", "a/b.", "", "a//b",
        ] {
            assert!(check_repo_id(id).is_err(), "{id}");
        }
        for id in [
            "gpt2",
            "org/name",
            "sentence-transformers/all-MiniLM-L6-v2",
            "a_b/c.d",
        ] {
            assert!(check_repo_id(id).is_ok(), "{id}");
        }
        for file in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            "a\\..\\b",
            "",
        ] {
            assert!(check_file(file).is_err(), "{file}");
        }
        assert!(check_file("1_Pooling/config.json").is_ok());
        assert!(check_revision("refs/pr/1").is_ok());
        assert!(check_revision("../../etc").is_err());
        assert!(check_etag("../x").is_err());
        assert!(check_commit("abc").is_err());
    }

    #[test]
    fn links_are_relative_and_removal_keeps_shared_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let cache = HubCache::new(dir.path());
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        let blobs = cache.repo_dir("org/m").unwrap().join("blobs");
        std::fs::create_dir_all(&blobs).unwrap();
        std::fs::write(blobs.join("e1"), "shared").unwrap();
        std::fs::write(blobs.join("e2"), "only-in-a").unwrap();
        cache.link("org/m", &a, "config.json", "e1").unwrap();
        let nested = cache
            .link("org/m", &a, "1_Pooling/config.json", "e2")
            .unwrap();
        cache.link("org/m", &b, "config.json", "e1").unwrap();
        assert_eq!(
            std::fs::read_link(&nested).unwrap(),
            PathBuf::from("../../../blobs/e2")
        );
        assert_eq!(std::fs::read_to_string(&nested).unwrap(), "only-in-a");
        cache.write_ref("org/m", "v1", &a).unwrap();
        cache.write_ref("org/m", "main", &b).unwrap();
        assert_eq!(cache.read_ref("org/m", "v1").unwrap(), Some(a.clone()));

        let repos = cache.scan().unwrap();
        assert_eq!(repos.len(), 1);
        assert_eq!(repos[0].repo_id, "org/m");
        assert_eq!(repos[0].size_on_disk, 15);
        assert_eq!(repos[0].revisions[0].refs, vec!["v1".to_string()]);

        let removal = cache.remove("org/m", Some("v1"), false).unwrap();
        assert_eq!(removal.freed, 9, "only the blob no other snapshot uses");
        assert!(blobs.join("e1").is_file() && !blobs.join("e2").exists());
        assert_eq!(cache.read_ref("org/m", "v1").unwrap(), None);
        assert!(cache.find_snapshot("org/m", "main").unwrap().is_some());
        cache.remove("org/m", None, false).unwrap();
        assert!(cache.scan().unwrap().is_empty());
    }
}

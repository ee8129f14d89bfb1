//! A client of the Hugging Face Hub's HTTP API that downloads into the shared cache.
//!
//! It speaks the API `huggingface_hub` uses: `GET /api/models/{id}/revision/{rev}` for the
//! commit and the file list, `HEAD /{id}/resolve/{rev}/{file}` for a file's commit
//! (`X-Repo-Commit`), ETag (`X-Linked-Etag` for LFS files, the sha256 of the content) and size
//! (`X-Linked-Size`), and a `GET` of the location it redirects to (a CDN host, which never
//! sees the token). Every file is checked before it enters a snapshot: LFS files against the
//! sha256 of their ETag, git files against the git blob sha1 of theirs. A download that stops
//! early is kept as `blobs/<etag>.incomplete` and resumed with `Range`; a lock file per blob,
//! the one `huggingface_hub` locks too, keeps two processes from writing it at once.

use super::cache::{check_file, check_repo_id, check_revision, create_dir_all, HubCache};
use crate::error::{Error, Result};
use sha2::Digest;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The Hub's address when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Why a file is not fetched when offline.
const OFFLINE: &str = "offline mode (HF_HUB_OFFLINE or --offline) downloads nothing";

/// Attempts per file: a connection that drops mid-file is resumed where it stopped.
const ATTEMPTS: usize = 4;

/// Which files of a repository to fetch.
#[derive(Debug, Clone)]
pub enum FileSelection {
    /// What girder loads: config, tokenizer, generation and sentence-transformers files and
    /// the safetensors weights (the shards a `model.safetensors.index.json` names). Never
    /// PyTorch pickles (`*.bin`, `*.pt`), ONNX or other engines' files.
    Model,
    /// The tokenizer's files alone.
    Tokenizer,
    /// Files matching any `include` pattern (all when empty) and no `exclude` pattern, with
    /// `huggingface_hub`'s `fnmatch` rules (`*` also matches `/`).
    Patterns {
        include: Vec<String>,
        exclude: Vec<String>,
    },
}

/// Files a tokenizer may need, at the top of a repository.
const TOKENIZER_FILES: &[&str] = &[
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
    "source.spm",
    "target.spm",
    "chat_template.jinja",
    "chat_template.json",
];

/// Files besides the tokenizer's and the weights that girder reads from a model folder.
const MODEL_FILES: &[&str] = &[
    "config.json",
    "generation_config.json",
    "preprocessor_config.json",
    "modules.json",
    "sentence_bert_config.json",
    "config_sentence_transformers.json",
    "adapter_config.json",
    "adapter_model.safetensors",
];

/// The metadata a `HEAD` of a file's resolve URL answers.
#[derive(Debug, Clone)]
pub struct FileMetadata {
    /// The commit the revision resolved to.
    pub commit: String,
    /// The blob's name in the cache: the LFS sha256 or the git blob sha1.
    pub etag: String,
    /// Bytes, when the Hub said.
    pub size: Option<u64>,
    /// Where the bytes are (the resolve URL itself, or a CDN URL it redirects to).
    pub location: String,
}

/// A repository revision as the API describes it.
#[derive(Debug, Clone)]
pub struct RepoInfo {
    /// The commit hash of the revision.
    pub sha: String,
    /// Every file in the revision.
    pub files: Vec<String>,
}

/// Downloads from the Hub into a [`HubCache`].
///
/// ```no_run
/// use girder::hub::{FileSelection, HubClient};
/// let client = HubClient::from_env();
/// let folder = client.snapshot("sentence-transformers/all-MiniLM-L6-v2", "main", &FileSelection::Model)?;
/// println!("{}", folder.display());
/// # Ok::<(), girder::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct HubClient {
    endpoint: String,
    token: Option<String>,
    cache: HubCache,
    offline: bool,
    progress_bars: bool,
    agent: ureq::Agent,
}

impl HubClient {
    /// A client of `endpoint` writing into `cache`, without a token, online, quiet.
    pub fn new(endpoint: &str, cache: HubCache) -> Self {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed here: relative ones keep the token (a renamed
            // repository), ones to another host (the CDN) drop it.
            .max_redirects(0)
            // Sizes and hashes are of the stored bytes, never of a compressed transfer.
            .accept_encoding("identity")
            .user_agent(format!("girder/{}", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .build();
        HubClient {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token: None,
            cache,
            offline: false,
            progress_bars: false,
            agent: config.new_agent(),
        }
    }

    /// The client `huggingface_hub` would configure: `HF_ENDPOINT`, `HF_TOKEN` (else the
    /// token file at `HF_TOKEN_PATH` or `$HF_HOME/token`), `HF_HUB_CACHE` / `HF_HOME`,
    /// `HF_HUB_OFFLINE`, and progress bars on a terminal unless
    /// `HF_HUB_DISABLE_PROGRESS_BARS` is set.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string());
        let token = var("HF_TOKEN").or_else(|| {
            let path = var("HF_TOKEN_PATH").map(PathBuf::from).unwrap_or_else(|| {
                let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
                    PathBuf::from(var("HOME").unwrap_or_default()).join(".cache/huggingface")
                });
                home.join("token")
            });
            std::fs::read_to_string(path)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
        });
        let progress = !var("HF_HUB_DISABLE_PROGRESS_BARS").is_some_and(|v| truthy(&v))
            && std::io::IsTerminal::is_terminal(&std::io::stderr());
        HubClient::new(&endpoint, HubCache::from_env())
            .with_token(token)
            .offline(offline_from_env())
            .progress_bars(progress)
    }

    /// Sends `token` as a bearer token to the Hub (never to the hosts it redirects to).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// Offline: only what the cache holds, no request at all.
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// A progress bar per file on standard error.
    pub fn progress_bars(mut self, on: bool) -> Self {
        self.progress_bars = on;
        self
    }

    /// The cache this client writes.
    pub fn cache(&self) -> &HubCache {
        &self.cache
    }

    /// The snapshot folder of `revision` holding the `selection`'s files, downloading those
    /// it lacks. Offline, or when the Hub cannot be reached, the cached snapshot is used.
    pub fn snapshot(
        &self,
        repo_id: &str,
        revision: &str,
        selection: &FileSelection,
    ) -> Result<PathBuf> {
        check_repo_id(repo_id)?;
        check_revision(revision)?;
        if self.offline {
            return self.cached_snapshot(repo_id, revision, OFFLINE.into());
        }
        let info = match self.repo_info(repo_id, revision) {
            Ok(info) => info,
            Err(Error::HubRequest { url, reason }) => {
                let why = format!("the Hub could not be reached ({url}: {reason})");
                let cached = self.cached_snapshot(repo_id, revision, why.clone())?;
                tracing::warn!("{why}; using the cached snapshot {}", cached.display());
                return Ok(cached);
            }
            Err(e) => return Err(e),
        };
        self.cache.write_ref(repo_id, revision, &info.sha)?;
        let snapshot = self.cache.snapshot_dir(repo_id, &info.sha)?;
        for file in self.choose(repo_id, &info, selection)? {
            self.fetch_into_snapshot(repo_id, &info.sha, &file)?;
        }
        create_dir_all(&snapshot)?;
        Ok(snapshot)
    }

    /// One file of `revision` (a GGUF, say), downloaded unless cached; its path in the
    /// snapshot.
    pub fn file(&self, repo_id: &str, revision: &str, file: &str) -> Result<PathBuf> {
        check_repo_id(repo_id)?;
        check_revision(revision)?;
        check_file(file)?;
        let cached = self
            .cache
            .find_snapshot(repo_id, revision)?
            .map(|dir| dir.join(file))
            .filter(|path| path.is_file());
        if self.offline || super::cache::is_commit_hash(revision) {
            if let Some(path) = cached {
                return Ok(path);
            }
        }
        if self.offline {
            return Err(self.not_in_cache(repo_id, revision, OFFLINE.into()));
        }
        let meta = match self.file_metadata(repo_id, revision, file) {
            Ok(meta) => meta,
            Err(Error::HubRequest { url, reason }) => {
                let why = format!("the Hub could not be reached ({url}: {reason})");
                let path =
                    cached.ok_or_else(|| self.not_in_cache(repo_id, revision, why.clone()))?;
                tracing::warn!("{why}; using the cached {}", path.display());
                return Ok(path);
            }
            Err(e) => return Err(e),
        };
        self.cache.write_ref(repo_id, revision, &meta.commit)?;
        self.download_blob(repo_id, file, &meta)?;
        self.cache.link(repo_id, &meta.commit, file, &meta.etag)
    }

    /// The commit and file list of `revision`.
    pub fn repo_info(&self, repo_id: &str, revision: &str) -> Result<RepoInfo> {
        #[derive(serde::Deserialize)]
        struct Sibling {
            rfilename: String,
        }
        #[derive(serde::Deserialize)]
        struct Info {
            sha: Option<String>,
            #[serde(default)]
            siblings: Vec<Sibling>,
        }
        let url = format!(
            "{}/api/models/{repo_id}/revision/{}",
            self.endpoint,
            encode(revision, false)
        );
        let mut response = self.send(self.agent.get(&url), &url, true)?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(self.status_error(&response, &url, repo_id, revision, None));
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .map_err(|e| transport(&url, e))?;
        let info: Info = serde_json::from_str(&body).map_err(|e| Error::HubRequest {
            url: url.clone(),
            reason: format!("not a repository description: {e}"),
        })?;
        let sha = info.sha.ok_or_else(|| Error::HubRequest {
            url: url.clone(),
            reason: "the answer names no commit (`sha`)".into(),
        })?;
        if !super::cache::is_commit_hash(&sha) {
            return Err(Error::HubRequest {
                url,
                reason: format!("`sha` {sha:?} is not a commit hash"),
            });
        }
        let files = info.siblings.into_iter().map(|s| s.rfilename).collect();
        Ok(RepoInfo { sha, files })
    }

    /// What a `HEAD` of the file's resolve URL says, following relative redirects.
    pub fn file_metadata(&self, repo_id: &str, revision: &str, file: &str) -> Result<FileMetadata> {
        check_file(file)?;
        let mut url = format!(
            "{}/{repo_id}/resolve/{}/{}",
            self.endpoint,
            encode(revision, false),
            encode(file, true)
        );
        for _ in 0..5 {
            let response = self.send(self.agent.head(&url), &url, true)?;
            let status = response.status().as_u16();
            let header = |name: &str| header(&response, name);
            let location = header("location");
            if (300..400).contains(&status) {
                let Some(location) = location.clone() else {
                    return Err(Error::HubRequest {
                        url,
                        reason: format!("HTTP {status} without a Location"),
                    });
                };
                if location.starts_with('/') {
                    url = format!("{}{location}", origin(&self.endpoint));
                    continue;
                }
            } else if status != 200 {
                return Err(self.status_error(&response, &url, repo_id, revision, Some(file)));
            }
            let commit = header("x-repo-commit").ok_or_else(|| Error::HubRequest {
                url: url.clone(),
                reason: "the answer lacks X-Repo-Commit".into(),
            })?;
            let etag = header("x-linked-etag")
                .or_else(|| header("etag"))
                .map(|e| e.trim_start_matches("W/").trim_matches('"').to_string())
                .ok_or_else(|| Error::HubRequest {
                    url: url.clone(),
                    reason: "the answer lacks an ETag".into(),
                })?;
            let size = header("x-linked-size")
                .or_else(|| (status == 200).then(|| header("content-length")).flatten())
                .and_then(|s| s.parse().ok());
            // Names the cache builds paths from are checked before use.
            self.cache.snapshot_dir(repo_id, &commit)?;
            self.cache.blob_path(repo_id, &etag)?;
            return Ok(FileMetadata {
                commit,
                etag,
                size,
                location: if (300..400).contains(&status) {
                    location.unwrap_or_default()
                } else {
                    url
                },
            });
        }
        Err(Error::HubRequest {
            url,
            reason: "more than 5 redirects".into(),
        })
    }

    fn cached_snapshot(&self, repo_id: &str, revision: &str, reason: String) -> Result<PathBuf> {
        self.cache
            .find_snapshot(repo_id, revision)?
            .ok_or_else(|| self.not_in_cache(repo_id, revision, reason))
    }

    fn not_in_cache(&self, repo_id: &str, revision: &str, reason: String) -> Error {
        Error::NotInCache {
            repo_id: repo_id.to_string(),
            revision: revision.to_string(),
            cache: self.cache.root().to_path_buf(),
            reason,
        }
    }

    /// The files of `info` that `selection` asks for.
    fn choose(
        &self,
        repo_id: &str,
        info: &RepoInfo,
        selection: &FileSelection,
    ) -> Result<Vec<String>> {
        let has = |name: &str| info.files.iter().any(|f| f == name);
        let mut chosen: Vec<String> = match selection {
            FileSelection::Patterns { include, exclude } => {
                let include = glob_set(include)?;
                let exclude = glob_set(exclude)?;
                let chosen: Vec<String> = info
                    .files
                    .iter()
                    .filter(|f| include.as_ref().is_none_or(|g| g.is_match(f)))
                    .filter(|f| exclude.as_ref().is_none_or(|g| !g.is_match(f)))
                    .cloned()
                    .collect();
                if chosen.is_empty() {
                    return Err(Error::NothingToDownload {
                        repo_id: repo_id.to_string(),
                        revision: info.sha.clone(),
                        reason: format!(
                            "no file matches the --include/--exclude patterns; its files: {}",
                            list(&info.files)
                        ),
                    });
                }
                chosen
            }
            FileSelection::Tokenizer => TOKENIZER_FILES
                .iter()
                .filter(|f| has(f))
                .map(|f| f.to_string())
                .collect(),
            FileSelection::Model => {
                let mut chosen: Vec<String> = TOKENIZER_FILES
                    .iter()
                    .chain(MODEL_FILES)
                    .filter(|f| has(f))
                    .map(|f| f.to_string())
                    .collect();
                // sentence-transformers modules keep their settings in numbered folders.
                chosen.extend(
                    info.files
                        .iter()
                        .filter(|f| is_sentence_module_file(f))
                        .cloned(),
                );
                chosen.extend(self.weight_files(repo_id, info)?);
                chosen
            }
        };
        chosen.sort();
        chosen.dedup();
        Ok(chosen)
    }

    /// `model.safetensors`, or the index and the shards it names.
    fn weight_files(&self, repo_id: &str, info: &RepoInfo) -> Result<Vec<String>> {
        let has = |name: &str| info.files.iter().any(|f| f == name);
        if has("model.safetensors") {
            return Ok(vec!["model.safetensors".into()]);
        }
        const INDEX: &str = "model.safetensors.index.json";
        if has(INDEX) {
            let index = self.fetch_into_snapshot(repo_id, &info.sha, INDEX)?;
            let mut files = vec![INDEX.to_string()];
            for shard in super::shard_names(&index)? {
                if !has(&shard) {
                    return Err(Error::NothingToDownload {
                        repo_id: repo_id.to_string(),
                        revision: info.sha.clone(),
                        reason: format!("{INDEX} names the shard {shard}, which it does not hold"),
                    });
                }
                files.push(shard);
            }
            return Ok(files);
        }
        let ggufs: Vec<&String> = info.files.iter().filter(|f| f.ends_with(".gguf")).collect();
        let hint = if !ggufs.is_empty() {
            format!(
                "it holds GGUF files: name one as --model {repo_id}/<file> (e.g. {repo_id}/{})",
                ggufs[0]
            )
        } else if info
            .files
            .iter()
            .any(|f| f.ends_with(".bin") || f.ends_with(".pt"))
        {
            "its weights are PyTorch pickles only (*.bin), which girder does not load; convert them to safetensors".into()
        } else {
            "it has no model.safetensors or model.safetensors.index.json".into()
        };
        Err(Error::NothingToDownload {
            repo_id: repo_id.to_string(),
            revision: info.sha.clone(),
            reason: format!("no weights girder loads: {hint}"),
        })
    }

    /// Puts `file` of `commit` into the snapshot, downloading its blob unless the snapshot
    /// already holds it (a commit's files never change).
    fn fetch_into_snapshot(&self, repo_id: &str, commit: &str, file: &str) -> Result<PathBuf> {
        let target = self
            .cache
            .snapshot_dir(repo_id, commit)?
            .join(check_file(file)?);
        if target.is_file() {
            return Ok(target);
        }
        let meta = self.file_metadata(repo_id, commit, file)?;
        self.download_blob(repo_id, file, &meta)?;
        self.cache.link(repo_id, commit, file, &meta.etag)
    }

    /// The blob of `meta`, downloaded, checked and renamed into place under its lock.
    fn download_blob(&self, repo_id: &str, file: &str, meta: &FileMetadata) -> Result<PathBuf> {
        let blob = self.cache.blob_path(repo_id, &meta.etag)?;
        if blob.is_file() {
            return Ok(blob);
        }
        let _lock = BlobLock::acquire(&self.cache.lock_path(repo_id, &meta.etag)?)?;
        if blob.is_file() {
            return Ok(blob); // another process finished it while this one waited
        }
        create_dir_all(blob.parent().expect("a blob has a parent folder"))?;
        let partial = PathBuf::from(format!("{}.incomplete", blob.display()));
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&partial)
            .map_err(|source| Error::Io {
                path: partial.clone(),
                source,
            })?;
        let io = |source| Error::Io {
            path: partial.clone(),
            source,
        };
        let mut hasher = ContentHash::for_etag(&meta.etag, meta.size);
        let mut have = hash_existing(&mut out, &mut hasher).map_err(io)?;
        if meta.size.is_some_and(|size| have > size) {
            out.set_len(0).map_err(io)?;
            have = 0;
            hasher = ContentHash::for_etag(&meta.etag, meta.size);
        }
        let bar = self.progress_bar(file, meta.size, have);
        let mut last_reason = String::new();
        // Without an announced size, only a body that ended cleanly is the whole file.
        let mut ended_cleanly = false;
        for _ in 0..ATTEMPTS {
            if meta.size == Some(have) {
                break;
            }
            let same_host = origin(&meta.location) == origin(&self.endpoint);
            let mut request = self.agent.get(&meta.location);
            if have > 0 {
                request = request.header("Range", format!("bytes={have}-"));
            }
            let mut response = match self.send(request, &meta.location, same_host) {
                Ok(r) => r,
                Err(Error::HubRequest { reason, .. }) => {
                    last_reason = reason;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match response.status().as_u16() {
                206 => {}
                200 => {
                    // The server sent the whole file: start over.
                    out.set_len(0).map_err(io)?;
                    out.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
                    have = 0;
                    hasher = ContentHash::for_etag(&meta.etag, meta.size);
                    bar.set_position(0);
                }
                status => {
                    return Err(Error::HubRequest {
                        url: meta.location.clone(),
                        reason: format!("HTTP {status} for {file}"),
                    })
                }
            }
            out.seek(std::io::SeekFrom::End(0)).map_err(io)?;
            let mut reader = response.body_mut().with_config().limit(u64::MAX).reader();
            let mut buffer = vec![0u8; 1 << 20];
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) => {
                        last_reason = "the connection closed early".into();
                        break;
                    }
                    Ok(n) => {
                        out.write_all(&buffer[..n]).map_err(io)?;
                        hasher.update(&buffer[..n]);
                        have += n as u64;
                        bar.set_position(have);
                        if meta.size.is_some_and(|size| have > size) {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        last_reason = e.to_string();
                        break;
                    }
                }
            }
            if meta.size.is_none() && last_reason == "the connection closed early" {
                ended_cleanly = true;
                break;
            }
        }
        out.flush().map_err(io)?;
        drop(out);
        bar.finish_and_clear();
        match meta.size {
            Some(size) if have < size => {
                return Err(Error::DownloadIncomplete {
                    file: file.to_string(),
                    received: have,
                    expected: size,
                    reason: last_reason,
                })
            }
            None if !ended_cleanly => {
                return Err(Error::HubRequest {
                    url: meta.location.clone(),
                    reason: format!("{file}: the download stopped after {have} bytes ({last_reason}); run the command again to resume it"),
                })
            }
            _ => {}
        }
        if let Err((algorithm, actual)) = hasher.verify(&meta.etag) {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::DownloadCorrupt {
                file: file.to_string(),
                algorithm,
                expected: meta.etag.clone(),
                actual,
            });
        }
        if meta.size.is_some_and(|size| have != size) {
            let _ = std::fs::remove_file(&partial);
            return Err(Error::DownloadCorrupt {
                file: file.to_string(),
                algorithm: "size",
                expected: format!("{} bytes", meta.size.unwrap_or_default()),
                actual: format!("{have} bytes"),
            });
        }
        std::fs::rename(&partial, &blob).map_err(|source| Error::Io {
            path: blob.clone(),
            source,
        })?;
        Ok(blob)
    }

    fn progress_bar(&self, file: &str, size: Option<u64>, position: u64) -> indicatif::ProgressBar {
        if !self.progress_bars {
            return indicatif::ProgressBar::hidden();
        }
        let bar =
            indicatif::ProgressBar::with_draw_target(size, indicatif::ProgressDrawTarget::stderr());
        let template =
            "{msg:30!} {bar:30} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta}";
        if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_message(file.to_string());
        bar.set_position(position);
        bar
    }

    /// Sends `request`, with the token when `authorized` and one is set.
    fn send(
        &self,
        request: ureq::RequestBuilder<ureq::typestate::WithoutBody>,
        url: &str,
        authorized: bool,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let request = match (&self.token, authorized) {
            (Some(token), true) => request.header("Authorization", format!("Bearer {token}")),
            _ => request,
        };
        request.call().map_err(|e| transport(url, e))
    }

    /// The error an unsuccessful answer stands for, from the Hub's `X-Error-Code`.
    fn status_error(
        &self,
        response: &ureq::http::Response<ureq::Body>,
        url: &str,
        repo_id: &str,
        revision: &str,
        file: Option<&str>,
    ) -> Error {
        let status = response.status().as_u16();
        let header = |name: &str| header(response, name);
        let code = header("x-error-code").unwrap_or_default();
        let message = header("x-error-message").unwrap_or_default();
        let endpoint = self.endpoint.clone();
        match (code.as_str(), status) {
            ("GatedRepo", _) | (_, 403) => Error::GatedRepo {
                repo_id: repo_id.to_string(),
                endpoint,
                reason: if message.is_empty() {
                    format!("HTTP {status}; accept its conditions on the Hub and set HF_TOKEN")
                } else {
                    message
                },
            },
            ("RevisionNotFound", _) => Error::RevisionNotFound {
                repo_id: repo_id.to_string(),
                revision: revision.to_string(),
            },
            ("EntryNotFound", _) => Error::EntryNotFound {
                repo_id: repo_id.to_string(),
                revision: revision.to_string(),
                file: file.unwrap_or_default().to_string(),
            },
            ("RepoNotFound", _) | (_, 401) => Error::RepoNotFound {
                repo_id: repo_id.to_string(),
                endpoint,
                hint: if self.token.is_none() {
                    " (if it is private or gated, set HF_TOKEN or log in)".into()
                } else {
                    " (or the token cannot see it)".into()
                },
            },
            (_, 404) => match file {
                Some(file) => Error::EntryNotFound {
                    repo_id: repo_id.to_string(),
                    revision: revision.to_string(),
                    file: file.to_string(),
                },
                None => Error::RepoNotFound {
                    repo_id: repo_id.to_string(),
                    endpoint,
                    hint: String::new(),
                },
            },
            _ => Error::HubRequest {
                url: url.to_string(),
                reason: if message.is_empty() {
                    format!("HTTP {status}")
                } else {
                    format!("HTTP {status}: {message}")
                },
            },
        }
    }
}

/// A response header as text, when present and readable.
fn header(response: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// `HF_HUB_OFFLINE` as `huggingface_hub` reads it: 1, ON, YES or TRUE.
pub fn offline_from_env() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| truthy(&v))
}

fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_uppercase().as_str(),
        "1" | "ON" | "YES" | "TRUE"
    )
}

fn transport(url: &str, error: ureq::Error) -> Error {
    let reason = match error {
        ureq::Error::ConnectionFailed => "cannot connect".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::Timeout(what) => format!("timed out ({what})"),
        ureq::Error::Io(e) => e.to_string(),
        other => other.to_string(),
    };
    Error::HubRequest {
        url: url.to_string(),
        reason,
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Percent-encodes a revision (slashes too: `refs/pr/1`) or a file path (slashes kept).
fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric()
            || matches!(byte, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && byte == b'/')
        {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn glob_set(patterns: &[String]) -> Result<Option<globset::GlobSet>> {
    if patterns.is_empty() {
        return Ok(None);
    }
    let mut builder = globset::GlobSetBuilder::new();
    for pattern in patterns {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(false)
            .build()
            .map_err(|e| Error::BadHubName {
                what: "pattern",
                name: format!("{pattern} ({e})"),
                rule: "a glob: `*`, `?`, `[abc]`",
            })?;
        builder.add(glob);
    }
    builder.build().map(Some).map_err(|e| Error::BadHubName {
        what: "pattern set",
        name: e.to_string(),
        rule: "globs",
    })
}

/// `1_Pooling/config.json`, `2_Dense/model.safetensors`: sentence-transformers' modules.
fn is_sentence_module_file(file: &str) -> bool {
    let Some((folder, name)) = file.split_once('/') else {
        return false;
    };
    folder
        .split_once('_')
        .is_some_and(|(n, _)| n.parse::<u32>().is_ok())
        && !name.contains('/')
        && (name == "config.json" || name.ends_with(".safetensors"))
}

fn list(files: &[String]) -> String {
    let shown: Vec<&str> = files.iter().take(12).map(String::as_str).collect();
    let more = files.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{}, … {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The hash an ETag stands for: the sha256 of an LFS file's bytes, or the git blob sha1
/// (`"blob <size>\0"` then the bytes) of a file stored in git.
enum ContentHash {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
    Unknown,
}

impl ContentHash {
    fn for_etag(etag: &str, size: Option<u64>) -> Self {
        let hex = etag.chars().all(|c| c.is_ascii_hexdigit());
        match (etag.len(), size) {
            (64, _) if hex => ContentHash::Sha256(sha2::Sha256::new()),
            (40, Some(size)) if hex => {
                let mut sha1 = sha1::Sha1::new();
                sha1.update(format!("blob {size}\0").as_bytes());
                ContentHash::GitSha1(sha1)
            }
            _ => ContentHash::Unknown,
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            ContentHash::Sha256(h) => h.update(bytes),
            ContentHash::GitSha1(h) => h.update(bytes),
            ContentHash::Unknown => {}
        }
    }

    /// Ok when the content matches `etag` (or the ETag is of no known kind).
    fn verify(self, etag: &str) -> std::result::Result<(), (&'static str, String)> {
        let (algorithm, actual) = match self {
            ContentHash::Sha256(h) => ("sha256", hex(&h.finalize())),
            ContentHash::GitSha1(h) => ("git blob sha1", hex(&h.finalize())),
            ContentHash::Unknown => return Ok(()),
        };
        if actual.eq_ignore_ascii_case(etag) {
            Ok(())
        } else {
            Err((algorithm, actual))
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Feeds what a partial file already holds to the hash; its length.
fn hash_existing(file: &mut std::fs::File, hasher: &mut ContentHash) -> std::io::Result<u64> {
    file.seek(std::io::SeekFrom::Start(0))?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0;
    loop {
        let n = file.read(&mut buffer)?;
        if n == 0 {
            return Ok(total);
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
}

/// An exclusive `flock` on a blob's lock file, released when dropped (the file stays, as
/// `huggingface_hub` leaves it).
struct BlobLock {
    _file: std::fs::File,
}

impl BlobLock {
    fn acquire(path: &Path) -> Result<Self> {
        create_dir_all(path.parent().expect("a lock file has a parent folder"))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })?;
        // flock, as Python's `filelock` takes it, so girder and huggingface_hub exclude
        // each other.
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a file descriptor this struct owns for as long as the lock.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(Error::Io {
                    path: path.to_path_buf(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(BlobLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_encoded_and_origins_compared() {
        assert_eq!(encode("refs/pr/1", false), "refs%2Fpr%2F1");
        assert_eq!(
            encode("1_Pooling/config json", true),
            "1_Pooling/config%20json"
        );
        assert_eq!(origin("http://127.0.0.1:8080/a/b"), "http://127.0.0.1:8080");
        assert_eq!(origin("https://cdn.example"), "https://cdn.example");
    }

    #[test]
    fn git_and_lfs_etags_check_the_content() {
        // `git hash-object` of "hello\n" is ce0136250e….
        let mut git = ContentHash::for_etag("ce013625030ba8dba906f756967f9e9ca394464a", Some(6));
        git.update(b"hello\n");
        assert!(git
            .verify("ce013625030ba8dba906f756967f9e9ca394464a")
            .is_ok());
        let sha = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
        let mut lfs = ContentHash::for_etag(sha, None);
        lfs.update(b"hello\n");
        assert!(lfs.verify(sha).is_ok());
        let mut wrong = ContentHash::for_etag(sha, None);
        wrong.update(b"hullo\n");
        assert_eq!(wrong.verify(sha).unwrap_err().0, "sha256");
    }

    #[test]
    fn model_selection_reads_sentence_transformers_modules() {
        assert!(is_sentence_module_file("1_Pooling/config.json"));
        assert!(is_sentence_module_file("2_Dense/model.safetensors"));
        assert!(!is_sentence_module_file("onnx/model.onnx"));
        assert!(!is_sentence_module_file("1_Pooling/x/config.json"));
    }
}

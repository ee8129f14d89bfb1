//! The library's one error type.
//!
//! Every variant carries the facts a user needs to fix the problem: the file, the field,
//! the tensor, the input. Nothing read from a file or a request is unwrapped; it ends up here.

use std::path::PathBuf;

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading a model or running a pipeline.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The model reference names no folder on disk.
    #[error("model folder {folder} does not exist")]
    FolderNotFound { folder: PathBuf },

    /// A file named where a model folder is expected.
    #[error("{path} is a file, not a model folder: give the folder holding config.json (or, for text generation, a .gguf file)")]
    NotAFolder { path: PathBuf },

    /// A hub id that is not in the local Hugging Face cache, and cannot be downloaded now.
    #[error("model `{repo_id}` (revision {revision}) is not in the Hugging Face cache at {cache}: {reason}")]
    NotInCache {
        repo_id: String,
        revision: String,
        cache: PathBuf,
        reason: String,
    },

    /// A repository id, revision, file name or ETag that cannot name a place in the cache.
    #[error("{what} `{name}` is not valid: {rule}")]
    BadHubName {
        what: &'static str,
        name: String,
        rule: &'static str,
    },

    /// The Hub has no such repository, or hides it from this token.
    #[error("repository `{repo_id}` was not found on {endpoint}{hint}")]
    RepoNotFound {
        repo_id: String,
        endpoint: String,
        hint: String,
    },

    /// A gated or private repository that the token (or its absence) does not open.
    #[error("repository `{repo_id}` on {endpoint} needs access: {reason}")]
    GatedRepo {
        repo_id: String,
        endpoint: String,
        reason: String,
    },

    /// The repository exists but has no such branch, tag or commit.
    #[error("repository `{repo_id}` has no revision `{revision}`")]
    RevisionNotFound { repo_id: String, revision: String },

    /// The revision exists but has no such file.
    #[error("repository `{repo_id}` (revision {revision}) has no file `{file}`")]
    EntryNotFound {
        repo_id: String,
        revision: String,
        file: String,
    },

    /// The revision holds no files of what was asked for (no weights girder loads, nothing
    /// matching the patterns).
    #[error("repository `{repo_id}` (revision {revision}): {reason}")]
    NothingToDownload {
        repo_id: String,
        revision: String,
        reason: String,
    },

    /// The Hub (or the host it redirected to) could not be reached or answered an error.
    #[error("{url}: {reason}")]
    HubRequest { url: String, reason: String },

    /// A downloaded file whose content is not the one the Hub announced; it is deleted.
    #[error("{file}: downloaded content has {algorithm} {actual}, the Hub announced {expected}; the partial file was deleted")]
    DownloadCorrupt {
        file: String,
        algorithm: &'static str,
        expected: String,
        actual: String,
    },

    /// A download that ended early; what arrived is kept and the next attempt resumes it.
    #[error("{file}: the download stopped at {received} of {expected} bytes ({reason}); run the command again to resume it")]
    DownloadIncomplete {
        file: String,
        received: u64,
        expected: u64,
        reason: String,
    },

    /// A file a model folder needs is absent.
    #[error("{folder} has no {file}: {needs}")]
    MissingFile {
        folder: PathBuf,
        file: String,
        needs: String,
    },

    /// A file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A JSON configuration file is malformed or has a wrong field.
    #[error("{file}: field `{field}`: {reason}")]
    BadConfig {
        file: PathBuf,
        field: String,
        reason: String,
    },

    /// `architectures[0]` / `model_type` names a model girder does not implement.
    #[error("unsupported architecture `{name}`; supported: {supported}")]
    UnsupportedArchitecture { name: String, supported: String },

    /// A safetensors file that cannot be parsed (truncated, corrupt, not safetensors).
    #[error("{file}: not a valid safetensors file: {reason}")]
    BadWeights { file: PathBuf, reason: String },

    /// A CTranslate2 `model.bin` that cannot be parsed or converted.
    #[error("{file}: not a valid CTranslate2 model: {reason}")]
    BadCTranslate2 { file: PathBuf, reason: String },

    /// A GGUF file that cannot be parsed, or whose metadata is wrong.
    #[error("{file}: not a valid GGUF file: {reason}")]
    BadGguf { file: PathBuf, reason: String },

    /// A GGUF file of an architecture, tensor type or tokenizer girder does not read.
    #[error("{file}: unsupported GGUF {what}")]
    UnsupportedGguf { file: PathBuf, what: String },

    /// A model girder cannot write as GGUF: `file` is the source file at fault (config.json,
    /// tokenizer.json) or the GGUF being written.
    #[error("{file}: cannot write as GGUF: {reason}")]
    GgufExport { file: PathBuf, reason: String },

    /// A chat template that does not compile or fails to render.
    #[error("chat template from {origin}: {reason}")]
    ChatTemplate { origin: String, reason: String },

    /// The checkpoint lacks a tensor the architecture needs.
    #[error("tensor `{name}` is missing from the checkpoint ({files})")]
    MissingTensor { name: String, files: String },

    /// A tensor exists with another shape than the config implies.
    #[error("tensor `{tensor}` has shape {actual:?}, expected {expected:?}")]
    ShapeMismatch {
        tensor: String,
        expected: Vec<usize>,
        actual: Vec<usize>,
    },

    /// A checkpoint tensor whose dtype cannot serve as weights (an integer or boolean tensor
    /// where the model expects floating-point values).
    #[error("{file}: tensor `{tensor}` has dtype {actual}, expected {expected}")]
    DtypeMismatch {
        file: PathBuf,
        tensor: String,
        expected: String,
        actual: String,
    },

    /// A tokenizer file that does not parse, or a tokenizer that cannot be built.
    #[error("{file}: cannot load tokenizer: {reason}")]
    BadTokenizer { file: PathBuf, reason: String },

    /// Tokenization of one input failed.
    #[error("input {index}: tokenization failed: {reason}")]
    Tokenize { index: usize, reason: String },

    /// The model computed NaN or infinity for an input: its weights or configuration are
    /// broken (`girder check` names which).
    #[error("the model in {} computed NaN or infinity for input {index}: its weights or config are broken (run `girder check` on it)", model.display())]
    NonFiniteOutput { index: usize, model: PathBuf },

    /// An input is longer than the model accepts and truncation is off.
    #[error("input {index} has {}, more than the limit of {max}: shorten it, or allow truncation", token_count(*.tokens))]
    InputTooLong {
        index: usize,
        /// The count, when the input was tokenized whole; `None` when it was tokenized only
        /// far enough to know it is over ([`crate::tokenize::encode_within`]).
        tokens: Option<usize>,
        max: usize,
    },

    /// A sequence needs more positions than the model's context holds (decoders).
    #[error("input {index}: needs {tokens} positions (the prompt and at least one new token), more than the model's context of {max}: shorten the prompt (it is never cut silently)")]
    ContextLength {
        index: usize,
        tokens: usize,
        max: usize,
    },

    /// The caller passed no inputs at all.
    #[error("no input texts were given")]
    EmptyInput,

    /// A pipeline or tokenizer option that cannot be honoured.
    #[error("invalid option `{option}`: {reason}")]
    InvalidOption { option: String, reason: String },

    /// An input that the task cannot handle (e.g. fill-mask without a mask token).
    #[error("input {index}: {reason}")]
    BadInput { index: usize, reason: String },

    /// A feature girder does not implement (a dtype, a device, a head of an architecture).
    #[error("{what} is not supported")]
    Unsupported { what: String },

    /// The model cannot run the requested task (e.g. text-classification on a base model).
    #[error("{model} cannot run {task}: {reason}")]
    TaskMismatch {
        model: String,
        task: String,
        reason: String,
    },

    /// A lock file (`girder lock`) that cannot be read, parsed or trusted.
    #[error("lock file {path}: {reason}")]
    BadLock { path: PathBuf, reason: String },

    /// A model card (README.md) whose YAML front matter does not parse.
    #[error("{file}: YAML front matter: {reason}")]
    BadCard { file: PathBuf, reason: String },

    /// A row of a training or evaluation file that cannot be read.
    #[error("{file}:{line}: {reason}")]
    BadData {
        file: PathBuf,
        line: usize,
        reason: String,
    },

    /// A label that is not in the label set.
    #[error("{file}:{line}: unknown label `{label}`; the labels are: {known}")]
    UnknownLabel {
        file: PathBuf,
        line: usize,
        label: String,
        known: String,
    },

    /// An audio file (or upload) that cannot be decoded: not audio, corrupt, truncated, an
    /// unsupported codec, no samples, or a sample rate of 0.
    #[error("{file}: cannot read audio: {reason}")]
    BadAudio { file: PathBuf, reason: String },

    /// A tensor operation failed inside the model.
    #[error("tensor computation failed: {0}")]
    Compute(candle_core::Error),
}

/// candle attaches a backtrace to its errors when `RUST_BACKTRACE` is set and prints it
/// inside the message; the message stays one line and the backtrace goes to the debug log.
impl From<candle_core::Error> for Error {
    fn from(error: candle_core::Error) -> Self {
        let mut error = error;
        while let candle_core::Error::WithBacktrace { inner, backtrace } = error {
            tracing::debug!("backtrace of a tensor error: {backtrace}");
            error = *inner;
        }
        Error::Compute(error)
    }
}

impl Error {
    /// A head that an architecture's model file does not build (`head` as
    /// `models::Head::name` says it).
    pub(crate) fn unsupported_head(family: &str, head: &str) -> Self {
        Error::Unsupported {
            what: format!("{family} with {head}"),
        }
    }

    /// The same error with the input index it names moved by `by` (an error from a window of
    /// a longer input names the input's index in the whole).
    pub(crate) fn offset_index(self, by: usize) -> Self {
        self.map_index(|index| index + by)
    }

    /// The same error with the input index it names mapped by `f` (an error from a subset of
    /// the inputs names the input's index in the whole).
    pub fn map_index(self, f: impl Fn(usize) -> usize) -> Self {
        match self {
            Error::Tokenize { index, reason } => Error::Tokenize {
                index: f(index),
                reason,
            },
            Error::InputTooLong { index, tokens, max } => Error::InputTooLong {
                index: f(index),
                tokens,
                max,
            },
            Error::ContextLength { index, tokens, max } => Error::ContextLength {
                index: f(index),
                tokens,
                max,
            },
            Error::BadInput { index, reason } => Error::BadInput {
                index: f(index),
                reason,
            },
            Error::NonFiniteOutput { index, model } => Error::NonFiniteOutput {
                index: f(index),
                model,
            },
            other => other,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

/// The message a caught panic carries (`panic!` with a literal or a formatted string), or
/// "unknown panic".
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// "N tokens", or "more tokens" when an input was not counted to its end.
fn token_count(tokens: Option<usize>) -> String {
    match tokens {
        Some(n) => format!("{n} tokens"),
        None => "more tokens".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tensor_error_stays_one_line_with_a_backtrace_attached() {
        let candle = candle_core::Error::WithBacktrace {
            inner: Box::new(candle_core::Error::Msg("shape mismatch in matmul".into())),
            backtrace: Box::new(std::backtrace::Backtrace::force_capture()),
        };
        let message = Error::from(candle).to_string();
        assert_eq!(
            message,
            "tensor computation failed: shape mismatch in matmul"
        );
    }
}

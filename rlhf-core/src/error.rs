//! The one error type of the rlhf crates.

use std::path::PathBuf;

/// Everything a library crate of this workspace can fail with.
///
/// Data errors carry the file, the 1-based line and the field, so a user can open the file at the
/// bad record; nothing in the libraries panics on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read, written or renamed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file the operation was on.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A record of a data file is malformed.
    #[error("{}:{line}: field `{field}`: {message}", file.display())]
    Data {
        /// The data file.
        file: PathBuf,
        /// 1-based line number (0 when the error is about the file as a whole).
        line: usize,
        /// The field at fault (`-` when the whole record is at fault).
        field: String,
        /// What was expected and what was found.
        message: String,
    },
    /// A device string could not be parsed, or names a backend that was not compiled in.
    #[error("device: {0}")]
    Device(String),
    /// A configuration value is out of range or inconsistent with another.
    #[error("config: {0}")]
    Config(String),
    /// Tensor shapes that do not fit together.
    #[error("shape: {0}")]
    Shape(String),
    /// A checkpoint is missing, truncated or does not match what is being restored.
    #[error("checkpoint {}: {message}", path.display())]
    Checkpoint {
        /// The checkpoint directory or file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A record (model weights or optimizer state) could not be encoded or decoded.
    #[error("record: {0}")]
    Record(String),
    /// A loss or a gradient norm that is NaN or infinite.
    #[error("non-finite {what} at step {step}")]
    NonFinite {
        /// Which quantity (`loss`, `grad_norm`).
        what: &'static str,
        /// The optimizer step it happened at.
        step: u64,
    },
}

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

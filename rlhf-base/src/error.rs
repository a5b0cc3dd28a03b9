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
    /// Too many optimizer steps in a row had a NaN or infinite loss or gradient norm.
    #[error(
        "{streak} steps in a row up to step {step} had a non-finite loss or gradient norm; \
         stopped. {}",
        match last_checkpoint {
            Some(p) => format!("The last good checkpoint is {}", p.display()),
            None => "No checkpoint was written yet".to_string(),
        }
    )]
    NonFinite {
        /// The optimizer step of the last non-finite value.
        step: u64,
        /// How many steps in a row were skipped.
        streak: u32,
        /// The newest checkpoint of the run, to resume from (after lowering the LR, say).
        last_checkpoint: Option<PathBuf>,
    },
    /// The run stopped on SIGINT or SIGTERM after finishing a step and checkpointing it.
    #[error(
        "interrupted after step {step}; {}",
        match checkpoint {
            Some(p) => format!("checkpoint written to {}: run again to resume", p.display()),
            None => "the run has no output directory, so nothing was saved".to_string(),
        }
    )]
    Interrupted {
        /// The last step finished.
        step: u64,
        /// The checkpoint written for it.
        checkpoint: Option<PathBuf>,
    },
    /// A run would not fit in the memory available.
    #[error(
        "{what} needs about {:.1} GiB but {:.1} GiB is available to it, free memory and what the \
         process holds ({detail}); {hint}",
        *needed as f64 / (1u64 << 30) as f64,
        *available as f64 / (1u64 << 30) as f64
    )]
    OutOfMemory {
        /// The run.
        what: String,
        /// Estimated bytes.
        needed: u64,
        /// Bytes the run may use: the memory the system has available and what the process holds.
        available: u64,
        /// The estimate's parts.
        detail: String,
        /// What would make it fit.
        hint: String,
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

//! The library's error type: one enum wrapping each module's typed errors,
//! every variant carrying the file, field or flag it is about.

use std::path::PathBuf;

use crate::cache::CacheError;
use crate::data::DataError;

/// Any error the distill library returns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("model spec '{spec}': {message}")]
    Spec { spec: String, message: String },
    #[error("{path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error("invalid value for {field}: {message}")]
    Config { field: String, message: String },
    /// A setting of a configuration file (a sweep's TOML file), by its key.
    #[error("{}: {}{message}", path.display(), key.as_ref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    ConfigFile {
        path: PathBuf,
        key: Option<String>,
        message: String,
    },
    #[error("{context}: {message}")]
    Training { context: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("compute device: {0}")]
    Device(String),
}

/// Shorthand for results carrying [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<crate::fsutil::FsError> for Error {
    /// The step that failed stays in the message ("cannot sync directory:
    /// ..."), as the cache's errors keep it.
    fn from(e: crate::fsutil::FsError) -> Self {
        let message = format!("cannot {}: {}", e.action, e.source);
        Error::Io {
            path: e.path,
            source: std::io::Error::new(e.source.kind(), message),
        }
    }
}

/// A parser's message (serde's) with its backticks as quotes: in distill's
/// own messages a backticked name is a setting, which the CLI shows as its
/// flag, and a file's `spec` field is no flag.
pub fn parser_message(e: &impl std::fmt::Display) -> String {
    e.to_string().replace('`', "'")
}

impl Error {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_system_error_keeps_the_step_that_failed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("card.json");
        let e = Error::from(crate::fsutil::atomic_write(&path, b"x").unwrap_err());
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{}: cannot create its temporary copy: ",
                path.display()
            )),
            "{text}"
        );
        // The kind survives, for callers that branch on it.
        let Error::Io { source, .. } = e else {
            panic!("not an I/O error: {text}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    }
}

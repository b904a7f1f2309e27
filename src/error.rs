//! The library's error type: one enum wrapping each module's typed errors,
//! every variant carrying the file, field or flag it is about.

use std::path::{Path, PathBuf};

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

    /// The error told by the file the user asked for: where it names
    /// `written` (a temporary file or directory the bytes went to first),
    /// or a file inside it, it names `asked` (or the same file inside it)
    /// instead, with `note` (what the temporary copy was and what became
    /// of it) after its message. I/O errors keep their kind. Errors that
    /// name no such path pass through as they are.
    pub fn told_by(self, written: &Path, asked: &Path, note: &str) -> Error {
        let retarget = |path: &Path| {
            path.strip_prefix(written)
                .ok()
                .map(|inside| match inside.as_os_str().is_empty() {
                    true => asked.to_path_buf(),
                    false => asked.join(inside),
                })
        };
        match self {
            Error::Io { path, source } => match retarget(&path) {
                Some(to) => Error::io(
                    to,
                    std::io::Error::new(source.kind(), format!("{source} ({note})")),
                ),
                None => Error::Io { path, source },
            },
            Error::Model { path, message } => match retarget(&path) {
                Some(to) => Error::Model {
                    path: to,
                    message: format!("{message} ({note})"),
                },
                None => Error::Model { path, message },
            },
            other => other,
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

    #[test]
    fn an_error_on_a_temporary_copy_is_told_by_the_file_asked_for() {
        let tmp = Path::new("out/.curves.7.png");
        let asked = Path::new("out/curves.png");
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space");
        let e = Error::io(tmp, full).told_by(tmp, asked, "while drawing it");
        assert_eq!(e.to_string(), "out/curves.png: no space (while drawing it)");
        let Error::Io { source, .. } = &e else {
            panic!("{e}")
        };
        assert_eq!(source.kind(), std::io::ErrorKind::StorageFull);
        let e = Error::Model {
            path: tmp.into(),
            message: "cannot draw".into(),
        };
        assert_eq!(
            e.told_by(tmp, asked, "x").to_string(),
            "out/curves.png: cannot draw (x)"
        );
        // Inside a staging directory: the same file inside the output.
        let staged = Path::new("out/.pruned.7.tmp");
        let e = Error::io(
            staged.join("model.safetensors"),
            std::io::Error::other("full"),
        );
        assert_eq!(
            e.told_by(staged, Path::new("out/pruned"), "y").to_string(),
            "out/pruned/model.safetensors: full (y)"
        );
        // Other paths and other errors pass through.
        let e = Error::io("elsewhere", std::io::Error::other("full"));
        assert_eq!(e.told_by(tmp, asked, "z").to_string(), "elsewhere: full");
        let e = Error::Config {
            field: "out".into(),
            message: "m".into(),
        };
        assert_eq!(
            e.told_by(tmp, asked, "z").to_string(),
            "invalid value for out: m"
        );
    }
}

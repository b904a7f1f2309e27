//! How to read a dataset directory where the files cannot say it
//! themselves: the axis order of image arrays (`layout`) and which of
//! CIFAR-100's two labels to use (`labels`).
//!
//! The options are a property of the files, so they live beside them, in
//! [`OPTIONS_FILE`] (`distill-data.toml`) in the dataset directory, which
//! `distill data configure` writes:
//!
//! ```toml
//! layout = "nhwc"    # .npy/safetensors images stored [N, H, W, C]; default "nchw"
//! labels = "coarse"  # CIFAR-100: the 20 superclasses; default "fine" (100 classes)
//! ```
//!
//! Every command that opens the directory ([`super::Dataset::open`]) reads
//! it, so phase one, phase two, evaluation and pruning all see the same
//! samples and labels. Without the file every option has its default. An
//! option the directory's format does not read is refused, naming the file,
//! rather than silently ignored.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::DataError;

/// The options file's name inside a dataset directory.
pub const OPTIONS_FILE: &str = "distill-data.toml";
/// The largest options file read (it holds two short lines).
const MAX_OPTIONS_BYTES: u64 = 64 * 1024;

/// The axis order of a 4-D image array.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Layout {
    /// `[N, C, H, W]`, as PyTorch stores images (the default).
    #[default]
    Nchw,
    /// `[N, H, W, C]`, as NumPy image libraries and TensorFlow store them;
    /// converted to `[N, C, H, W]` on read.
    Nhwc,
}

/// Which label of a CIFAR-100 record to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LabelSet {
    /// The 100 classes (the default).
    #[default]
    Fine,
    /// The 20 superclasses.
    Coarse,
}

/// The reading options of a dataset directory; `None` is an option left at
/// its default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataOptions {
    pub layout: Option<Layout>,
    pub labels: Option<LabelSet>,
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        })
    }
}

impl FromStr for Layout {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" => Ok(Layout::Nhwc),
            _ => Err(DataError::Setting {
                field: "layout".into(),
                message: format!("'{s}' is not one of nchw, nhwc"),
            }),
        }
    }
}

impl fmt::Display for LabelSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LabelSet::Fine => "fine",
            LabelSet::Coarse => "coarse",
        })
    }
}

impl FromStr for LabelSet {
    type Err = DataError;
    fn from_str(s: &str) -> Result<Self, DataError> {
        match s {
            "fine" => Ok(LabelSet::Fine),
            "coarse" => Ok(LabelSet::Coarse),
            _ => Err(DataError::Setting {
                field: "labels".into(),
                message: format!("'{s}' is not one of fine, coarse"),
            }),
        }
    }
}

impl DataOptions {
    /// The options file of directory `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(OPTIONS_FILE)
    }

    /// Reads `dir`'s options file; all defaults when there is none.
    pub fn load(dir: &Path) -> Result<DataOptions, DataError> {
        let path = Self::path(dir);
        let read_err = |source| DataError::Read {
            path: path.clone(),
            field: "options".into(),
            source,
        };
        let meta = match std::fs::metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DataOptions::default()),
            Err(e) => return Err(read_err(e)),
        };
        if meta.len() > MAX_OPTIONS_BYTES {
            return Err(DataError::Format {
                path,
                field: "options".into(),
                message: format!(
                    "{} bytes is more than an options file holds (at most {MAX_OPTIONS_BYTES})",
                    meta.len()
                ),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(read_err)?;
        Self::parse(&text, &path)
    }

    /// Parses the text of an options file; `path` names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<DataOptions, DataError> {
        let format = |field: &str, message: String| DataError::Format {
            path: path.to_path_buf(),
            field: field.to_string(),
            message,
        };
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| format("options", format!("not valid TOML: {e}")))?;
        let mut options = DataOptions::default();
        for (key, value) in &table {
            if !["layout", "labels"].contains(&key.as_str()) {
                return Err(format(
                    key,
                    "unknown option; expected layout (nchw or nhwc) or labels (fine or coarse)"
                        .into(),
                ));
            }
            let Some(text) = value.as_str() else {
                let shown = match value {
                    toml::Value::Integer(i) => format!("integer {i}"),
                    toml::Value::Float(f) => format!("number {f}"),
                    toml::Value::Boolean(b) => format!("boolean {b}"),
                    other => format!("a {}", other.type_str()),
                };
                return Err(format(
                    key,
                    format!("{shown} is not a string; write the value in quotes"),
                ));
            };
            let named = |e: DataError| match e {
                DataError::Setting { message, .. } => format(key, message),
                other => other,
            };
            match key.as_str() {
                "layout" => options.layout = Some(text.parse().map_err(named)?),
                _ => options.labels = Some(text.parse().map_err(named)?),
            }
        }
        Ok(options)
    }

    /// The options as the text of an options file.
    pub fn to_toml(&self) -> String {
        let mut s =
            String::from("# How distill reads this directory (`distill data configure`).\n");
        if let Some(l) = self.layout {
            s.push_str(&format!("layout = \"{l}\"\n"));
        }
        if let Some(l) = self.labels {
            s.push_str(&format!("labels = \"{l}\"\n"));
        }
        s
    }

    /// Writes the options file of `dir` atomically, or removes it when
    /// every option is at its default.
    pub fn save(&self, dir: &Path) -> Result<(), DataError> {
        let path = Self::path(dir);
        if *self == DataOptions::default() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DataError::Write {
                    path,
                    field: "options".into(),
                    source: e,
                }),
                _ => Ok(()),
            };
        }
        crate::fsutil::atomic_write(&path, self.to_toml().as_bytes()).map_err(|e| {
            DataError::Write {
                path,
                field: "options".into(),
                source: e.source,
            }
        })
    }

    /// `over` laid over these options: each option `over` sets wins.
    pub fn overlaid(&self, over: &DataOptions) -> DataOptions {
        DataOptions {
            layout: over.layout.or(self.layout),
            labels: over.labels.or(self.labels),
        }
    }

    /// The layout to read with.
    pub fn layout(&self) -> Layout {
        self.layout.unwrap_or_default()
    }

    /// The CIFAR-100 label to read.
    pub fn label_set(&self) -> LabelSet {
        self.labels.unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_round_trips_through_a_file() {
        let p = Path::new("d/distill-data.toml");
        let o = DataOptions::parse("layout = \"nhwc\"\nlabels = \"coarse\"\n", p).unwrap();
        assert_eq!(
            o,
            DataOptions {
                layout: Some(Layout::Nhwc),
                labels: Some(LabelSet::Coarse)
            }
        );
        assert_eq!(DataOptions::parse(&o.to_toml(), p).unwrap(), o);
        assert_eq!(DataOptions::parse("", p).unwrap(), DataOptions::default());
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            DataOptions::load(dir.path()).unwrap(),
            DataOptions::default()
        );
        o.save(dir.path()).unwrap();
        assert_eq!(DataOptions::load(dir.path()).unwrap(), o);
        DataOptions::default().save(dir.path()).unwrap();
        assert!(!DataOptions::path(dir.path()).exists());
        let only = DataOptions {
            labels: Some(LabelSet::Fine),
            ..DataOptions::default()
        };
        assert_eq!(o.overlaid(&only).label_set(), LabelSet::Fine);
        assert_eq!(o.overlaid(&only).layout(), Layout::Nhwc);
    }

    #[test]
    fn bad_files_name_the_file_and_the_key() {
        let p = Path::new("d/distill-data.toml");
        for (text, needle) in [
            ("layout = \"hwc\"", "layout: 'hwc' is not one of nchw, nhwc"),
            ("labels = 3", "labels: integer 3 is not a string"),
            ("colour = \"rgb\"", "colour: unknown option"),
            ("bogus = 1", "bogus: unknown option"),
            ("layout = ", "not valid TOML"),
        ] {
            let e = DataOptions::parse(text, p).unwrap_err().to_string();
            assert!(
                e.contains("distill-data.toml") && e.contains(needle),
                "{text}: {e}"
            );
        }
    }
}

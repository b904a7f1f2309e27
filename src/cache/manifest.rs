//! `manifest.json`: what a cache holds, how it was built, and its shards.
//!
//! The manifest is written last and atomically; its presence is what makes a
//! cache exist (the commit point). It is parsed as hostile input: a size
//! bound, the format version checked before anything else (so a newer cache
//! gets "upgrade distill" rather than a serde error), unknown fields refused,
//! shard file names restricted to plain names, and shard ranges that must
//! tile `0..num_samples` exactly.
//!
//! Forward compatibility: fields added in a later format version without a
//! version bump must be `#[serde(default)]` and optional for readers; any
//! change an older reader must not ignore bumps `format_version`, which older
//! readers refuse with advice.

use std::path::Path;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use super::codec::Encoding;
#[cfg(test)]
use super::format::FORMAT_VERSION_CURRENT;
use super::{CacheError, Result};

/// File name of the manifest inside a cache directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Largest manifest accepted.
pub const MAX_MANIFEST_BYTES: u64 = 64 << 20;
/// Most shards a manifest may list.
pub const MAX_SHARDS: usize = 1 << 20;

/// The teacher that produced the outputs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherInfo {
    /// Model spec string (e.g. `mlp:784-1200-1200-10`).
    pub spec: String,
    /// Fingerprint of the teacher's weights.
    pub fingerprint: String,
    /// Where the weights came from (path or URL), informational.
    pub source: String,
    /// The input normalisation the teacher applied (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub normalization: Option<crate::data::Normalization>,
}

/// The data the teacher was run on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetInfo {
    /// Fingerprint of the dataset's samples (and order).
    pub fingerprint: String,
    /// Split name (`train`, `test`, ...).
    pub split: String,
    /// Number of samples; the cache holds samples `0..num_samples`.
    pub num_samples: u64,
    /// Set when the teacher saw augmented images: which view of each
    /// sample the outputs belong to (absent for the plain images).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<ViewInfo>,
}

/// One augmented view of a dataset: sample `i` was shown to the teacher as
/// [`crate::data::augment::Augment::params`]`(seed, view, i)` of `augment`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewInfo {
    /// The augmentation spec (`flip,shift=2`).
    pub augment: String,
    pub seed: u64,
    /// View number, `0..views`.
    pub view: u64,
    /// How many views the set this cache belongs to has.
    pub views: u64,
}

impl std::fmt::Display for ViewInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "view {} of {} of {} (seed {})",
            self.view, self.views, self.augment, self.seed
        )
    }
}

impl ViewInfo {
    /// A cache's view as messages name it: the view, or the plain images.
    pub fn describe(view: Option<&ViewInfo>) -> String {
        view.map_or_else(|| "the plain images".to_string(), ToString::to_string)
    }
}

/// How close the stored targets are to the teacher's exact outputs, measured while writing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fidelity {
    /// Mean over samples of KL(exact || decoded), nats.
    pub mean_kl: f64,
    /// Largest per-sample KL(exact || decoded), nats.
    pub max_kl: f64,
    /// Fraction of samples whose decoded top-1 class equals the exact one.
    pub top1_agreement: f64,
    /// Compressed bytes on disk per sample (all shards, headers included).
    pub bytes_per_sample: f64,
}

/// The teacher's quality on this data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherStats {
    /// Top-1 accuracy against the stored labels (`None` when unlabelled).
    pub accuracy: Option<f64>,
    /// Mean entropy of the teacher's distribution at the cache temperature, nats.
    pub mean_entropy: f64,
}

/// One shard file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardEntry {
    /// Plain file name inside the cache directory.
    pub file: String,
    pub first_sample: u64,
    pub num_samples: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// xxh3-64 of the whole file, 16 lowercase hex digits.
    pub xxh3: String,
}

/// The content of `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    /// Identifies the content: xxh3-128 of this manifest with `id` and
    /// `tool_version` blanked. Same inputs and settings give the same id.
    pub id: String,
    /// Version of distill that wrote it, informational.
    pub tool_version: String,
    pub teacher: TeacherInfo,
    pub dataset: DatasetInfo,
    pub num_classes: u64,
    pub has_labels: bool,
    /// Temperature T of the stored log-probabilities.
    pub temperature: f32,
    pub encoding: Encoding,
    pub zstd_level: i32,
    pub records_per_block: u32,
    pub records_per_shard: u64,
    pub fidelity: Fidelity,
    pub teacher_stats: TeacherStats,
    pub shards: Vec<ShardEntry>,
}

#[derive(Deserialize)]
struct VersionOnly {
    format_version: Option<u32>,
}

/// True for a plain file name: `[A-Za-z0-9._-]`, not starting with `.`, at most 255 bytes.
pub fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

impl Manifest {
    /// The content id of this manifest (see [`Manifest::id`]).
    pub fn compute_id(&self) -> String {
        let mut m = self.clone();
        m.id = String::new();
        m.tool_version = String::new();
        // Serialising plain structs and finite floats cannot fail.
        let bytes = serde_json::to_vec(&m).unwrap_or_default();
        format!("{:032x}", xxh3_128(&bytes))
    }

    /// Pretty JSON with a trailing newline, as written to disk.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let mut v = serde_json::to_vec_pretty(self)
            .map_err(|e| CacheError::input("manifest", format!("cannot serialise: {e}")))?;
        v.push(b'\n');
        Ok(v)
    }

    /// Parses and validates manifest bytes read from `path`.
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<Manifest> {
        let bad = |loc: &str, msg: String| CacheError::corrupt(path, loc, msg);
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(
                "manifest",
                format!(
                    "{} bytes is over the {MAX_MANIFEST_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let v: VersionOnly = serde_json::from_slice(bytes)
            .map_err(|e| bad("manifest", format!("not valid JSON: {e}")))?;
        let version = v
            .format_version
            .ok_or_else(|| bad("manifest", "missing field format_version".into()))?;
        super::format::check_version(path, version)?;
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad("manifest", format!("invalid: {e}")))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Structural checks: names, ranges, counts, settings.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |loc: String, msg: String| CacheError::corrupt(path, loc, msg);
        let classes = usize::try_from(self.num_classes).unwrap_or(usize::MAX);
        self.encoding
            .check_classes(classes)
            .map_err(|m| bad("field num_classes".into(), m))?;
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(bad(
                "field temperature".into(),
                format!("{} is not a positive finite number", self.temperature),
            ));
        }
        if self.dataset.num_samples == 0 {
            return Err(bad(
                "field dataset.num_samples".into(),
                "cache holds no samples".into(),
            ));
        }
        if let Some(v) = &self.dataset.view {
            if let Err(e) = crate::data::augment::Augment::parse(&v.augment) {
                return Err(bad("field dataset.view.augment".into(), e.to_string()));
            }
            if v.view >= v.views {
                return Err(bad(
                    "field dataset.view".into(),
                    format!("view {} of {} views", v.view, v.views),
                ));
            }
        }
        if self.shards.is_empty() || self.shards.len() > MAX_SHARDS {
            return Err(bad(
                "field shards".into(),
                format!(
                    "{} shards listed, expected 1..={MAX_SHARDS}",
                    self.shards.len()
                ),
            ));
        }
        let mut next = 0u64;
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.shards.iter().enumerate() {
            let loc = format!("shard {i} ({})", s.file);
            if !is_plain_file_name(&s.file) {
                return Err(bad(
                    format!("shard {i}"),
                    format!("file name {:?} is not a plain file name (no path separators, no leading dot, no '..')", s.file),
                ));
            }
            if !seen.insert(s.file.as_str()) {
                return Err(bad(loc, "file listed twice".into()));
            }
            if s.first_sample != next || s.num_samples == 0 {
                return Err(bad(
                    loc,
                    format!("covers samples {}+{}, expected to start at {next} with at least one sample", s.first_sample, s.num_samples),
                ));
            }
            next = next
                .checked_add(s.num_samples)
                .ok_or_else(|| bad(format!("shard {i}"), "sample count overflows".into()))?;
            if s.xxh3.len() != 16 || !s.xxh3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(
                    format!("shard {i} ({})", s.file),
                    format!("xxh3 {:?} is not 16 hex digits", s.xxh3),
                ));
            }
        }
        if self.id != self.compute_id() {
            return Err(bad(
                "field id".into(),
                format!(
                    "content does not match the id {:?} (the manifest was edited or damaged)",
                    self.id
                ),
            ));
        }
        if next != self.dataset.num_samples {
            return Err(bad(
                "field shards".into(),
                format!(
                    "shards cover {next} samples but dataset.num_samples is {}",
                    self.dataset.num_samples
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub fn sample() -> Manifest {
        let mut m = Manifest {
            format_version: FORMAT_VERSION_CURRENT,
            id: String::new(),
            tool_version: "0.1.0".into(),
            teacher: TeacherInfo {
                spec: "mlp".into(),
                fingerprint: "t".into(),
                source: "t.safetensors".into(),
                normalization: None,
            },
            dataset: DatasetInfo {
                fingerprint: "d".into(),
                split: "train".into(),
                num_samples: 10,
                view: None,
            },
            num_classes: 10,
            has_labels: true,
            temperature: 4.0,
            encoding: Encoding::Q8,
            zstd_level: 3,
            records_per_block: 4,
            records_per_shard: 8,
            fidelity: Fidelity {
                mean_kl: 1e-4,
                max_kl: 1e-3,
                top1_agreement: 1.0,
                bytes_per_sample: 20.0,
            },
            teacher_stats: TeacherStats {
                accuracy: Some(0.9),
                mean_entropy: 1.0,
            },
            shards: vec![
                ShardEntry {
                    file: "a.dsc".into(),
                    first_sample: 0,
                    num_samples: 8,
                    bytes: 100,
                    xxh3: "0123456789abcdef".into(),
                },
                ShardEntry {
                    file: "b.dsc".into(),
                    first_sample: 8,
                    num_samples: 2,
                    bytes: 100,
                    xxh3: "0123456789abcdef".into(),
                },
            ],
        };
        m.id = m.compute_id();
        m
    }

    #[test]
    fn roundtrip_and_id_stable() {
        let m = sample();
        let json = m.to_json().unwrap();
        let back = Manifest::parse(Path::new("manifest.json"), &json).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.compute_id(), m.id);
        let mut other = m.clone();
        other.tool_version = "9.9.9".into();
        assert_eq!(other.compute_id(), m.id, "tool version is not content");
        other.temperature = 2.0;
        assert_ne!(other.compute_id(), m.id);
    }

    #[test]
    fn refuses_path_names() {
        for name in [
            "../x",
            "..",
            "a/b",
            "/etc/passwd",
            "a\\b",
            ".hidden",
            "",
            "x\0y",
        ] {
            let mut m = sample();
            m.shards[0].file = name.into();
            let json = m.to_json().unwrap();
            let e = Manifest::parse(Path::new("manifest.json"), &json)
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a plain file name"), "{name}: {e}");
        }
    }

    #[test]
    fn refuses_bad_ranges_versions_unknown_fields() {
        let mut m = sample();
        m.shards[1].first_sample = 9;
        assert!(Manifest::parse(Path::new("m"), &m.to_json().unwrap())
            .unwrap_err()
            .to_string()
            .contains("shard 1"));
        let mut m = sample();
        m.format_version = 7;
        assert!(Manifest::parse(Path::new("m"), &m.to_json().unwrap())
            .unwrap_err()
            .to_string()
            .contains("upgrade distill"));
        let mut v: serde_json::Value =
            serde_json::from_slice(&sample().to_json().unwrap()).unwrap();
        v["surprise"] = serde_json::json!(1);
        let e = Manifest::parse(Path::new("m"), &serde_json::to_vec(&v).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("surprise"), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        #[test]
        fn random_and_truncated_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..2000) {
            prop_assert!(Manifest::parse(Path::new("m"), &bytes).is_err());
            let json = sample().to_json().unwrap();
            let c = cut.min(json.len() - 2); // "}\n" ends the file: dropping only the newline is still valid
            prop_assert!(Manifest::parse(Path::new("m"), &json[..c]).is_err());
        }
    }
}

//! The settings of a build ([`BuildSpec`]): what determines a cache's bytes.
//!
//! A build's settings are planned once from the caller's [`CacheMeta`] and
//! [`WriterOptions`] (records per block and per shard derived here), written
//! to `build.json` while the build runs, hashed into the shard names (the
//! build key), compared field by field when a build is resumed, a cache is
//! rebuilt, views are paired or parts are merged, and recorded in a part
//! manifest. The shard boundaries of a cache are a function of these
//! settings alone, which is what lets a build be cut into parts
//! (`part.rs`) and resumed byte for byte.

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_64;

use super::codec::Encoding;
use super::format::{
    raw_record_bytes, FORMAT_VERSION_CURRENT, MAX_BLOCKS_PER_SHARD, MAX_BLOCK_RAW_BYTES,
    MAX_RECORDS_PER_BLOCK,
};
use super::manifest::{DatasetInfo, Manifest, TeacherInfo};
use super::part::PartSpec;
use super::writer::{CacheMeta, WriterOptions};
use super::{CacheError, Result};

/// Everything that determines a cache's bytes: the content of `build.json`
/// and of a part manifest's `settings`. Hashed (without `part`) into the
/// shard names, so every part of a build names its shards as a single
/// build would.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSpec {
    pub format_version: u32,
    pub teacher: TeacherInfo,
    pub dataset: DatasetInfo,
    pub num_classes: u64,
    pub has_labels: bool,
    pub temperature: f32,
    pub encoding: Encoding,
    pub zstd_level: i32,
    pub records_per_block: u32,
    pub records_per_shard: u64,
    /// Set when this build writes one part of the cache (absent, and then
    /// not written, for a whole cache: plain `build.json` files are
    /// unchanged by its existence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<PartSpec>,
}

/// The first build setting (teacher, dataset, classes, labels, T, encoding,
/// layout) in which two manifests differ, as (name, in `a`, in `b`); the
/// check a resumed build applies, for callers that pair caches.
pub fn first_setting_difference(
    a: &Manifest,
    b: &Manifest,
) -> Option<(&'static str, String, String)> {
    BuildSpec::from_manifest(a).first_difference(&BuildSpec::from_manifest(b))
}

impl BuildSpec {
    /// Validates the build's settings and derives its layout: records per
    /// block (0 picks about 1 MiB of records, at most 4096) and per shard.
    pub fn plan(meta: &CacheMeta, opts: &WriterOptions) -> Result<BuildSpec> {
        meta.encoding
            .check_classes(meta.num_classes)
            .map_err(|m| CacheError::input("encoding", m))?;
        if !(meta.temperature.is_finite() && meta.temperature > 0.0) {
            return Err(CacheError::input(
                "temperature",
                format!("{} is not a positive finite number", meta.temperature),
            ));
        }
        if meta.dataset.num_samples == 0 {
            return Err(CacheError::input(
                "dataset.num_samples",
                "the dataset has no samples; nothing to cache",
            ));
        }
        let rec = raw_record_bytes(meta.encoding, meta.num_classes) as u64;
        let mut records_per_block = opts.records_per_block;
        if records_per_block == 0 {
            records_per_block = ((1u64 << 20) / rec).clamp(1, 4096) as u32;
        }
        if records_per_block > MAX_RECORDS_PER_BLOCK {
            return Err(CacheError::input(
                "records_per_block",
                format!("{records_per_block} is outside 1..={MAX_RECORDS_PER_BLOCK}"),
            ));
        }
        if !(-7..=22).contains(&opts.zstd_level) {
            return Err(CacheError::input(
                "zstd_level",
                format!("{} is outside -7..=22", opts.zstd_level),
            ));
        }
        if records_per_block as u64 * rec > MAX_BLOCK_RAW_BYTES {
            return Err(CacheError::input(
                "records_per_block",
                format!("{records_per_block} records of {rec} bytes exceed the {MAX_BLOCK_RAW_BYTES}-byte block limit; use fewer"),
            ));
        }
        let rpb = records_per_block as u64;
        let blocks_per_shard =
            (opts.shard_target_bytes / (rpb * rec)).clamp(1, MAX_BLOCKS_PER_SHARD as u64);
        Ok(BuildSpec {
            format_version: FORMAT_VERSION_CURRENT,
            teacher: meta.teacher.clone(),
            dataset: meta.dataset.clone(),
            num_classes: meta.num_classes as u64,
            has_labels: meta.has_labels,
            temperature: meta.temperature,
            encoding: meta.encoding,
            zstd_level: opts.zstd_level,
            records_per_block,
            records_per_shard: blocks_per_shard * rpb,
            part: None,
        })
    }

    /// The build key in shard names: xxh3-64 of the settings' compact JSON
    /// without `part`, 16 hex digits. A part's shards are named as the
    /// whole build's.
    pub fn key(&self) -> String {
        let mut whole = self.clone();
        whole.part = None;
        // Serialising plain structs and finite floats cannot fail.
        format!(
            "{:016x}",
            xxh3_64(&serde_json::to_vec(&whole).unwrap_or_default())
        )
    }

    /// File name of shard `n` (in the whole cache's numbering):
    /// `shard-<key>-<n, 6 digits>.dsc`.
    pub fn shard_name(&self, n: u64) -> String {
        format!("shard-{}-{n:06}.dsc", self.key())
    }

    /// These settings for the whole cache (`part` cleared).
    pub fn whole(&self) -> BuildSpec {
        BuildSpec {
            part: None,
            ..self.clone()
        }
    }

    /// Number of shards of the whole cache: `ceil(num_samples / records_per_shard)`.
    pub fn num_shards(&self) -> u64 {
        self.dataset
            .num_samples
            .div_ceil(self.records_per_shard.max(1))
    }

    /// The settings a committed manifest was built with.
    pub fn from_manifest(m: &Manifest) -> BuildSpec {
        BuildSpec {
            format_version: m.format_version,
            teacher: m.teacher.clone(),
            dataset: m.dataset.clone(),
            num_classes: m.num_classes,
            has_labels: m.has_labels,
            temperature: m.temperature,
            encoding: m.encoding,
            zstd_level: m.zstd_level,
            records_per_block: m.records_per_block,
            records_per_shard: m.records_per_shard,
            part: None,
        }
    }

    /// The first field that differs, as (name, self, other).
    pub fn first_difference(&self, o: &BuildSpec) -> Option<(&'static str, String, String)> {
        let part =
            |p: &Option<PartSpec>| p.map_or("the whole cache".to_string(), |p| format!("part {p}"));
        let fields: [(&'static str, String, String); 16] = [
            (
                "format version",
                self.format_version.to_string(),
                o.format_version.to_string(),
            ),
            (
                "teacher spec",
                self.teacher.spec.clone(),
                o.teacher.spec.clone(),
            ),
            (
                "teacher fingerprint",
                self.teacher.fingerprint.clone(),
                o.teacher.fingerprint.clone(),
            ),
            (
                "teacher source",
                self.teacher.source.clone(),
                o.teacher.source.clone(),
            ),
            // The split before the fingerprint: the other split's data has
            // another fingerprint too, and "train there, test requested"
            // says what happened.
            (
                "dataset split",
                self.dataset.split.clone(),
                o.dataset.split.clone(),
            ),
            (
                "dataset fingerprint",
                self.dataset.fingerprint.clone(),
                o.dataset.fingerprint.clone(),
            ),
            (
                "sample count",
                self.dataset.num_samples.to_string(),
                o.dataset.num_samples.to_string(),
            ),
            (
                "augmented view",
                super::manifest::ViewInfo::describe(self.dataset.view.as_ref()),
                super::manifest::ViewInfo::describe(o.dataset.view.as_ref()),
            ),
            (
                "number of classes",
                self.num_classes.to_string(),
                o.num_classes.to_string(),
            ),
            (
                "labels",
                self.has_labels.to_string(),
                o.has_labels.to_string(),
            ),
            (
                "temperature",
                self.temperature.to_string(),
                o.temperature.to_string(),
            ),
            (
                "encoding",
                self.encoding.to_string(),
                o.encoding.to_string(),
            ),
            (
                "zstd level",
                self.zstd_level.to_string(),
                o.zstd_level.to_string(),
            ),
            (
                "records per block",
                self.records_per_block.to_string(),
                o.records_per_block.to_string(),
            ),
            (
                "records per shard",
                self.records_per_shard.to_string(),
                o.records_per_shard.to_string(),
            ),
            ("part", part(&self.part), part(&o.part)),
        ];
        fields.into_iter().find(|(_, a, b)| a != b)
    }
}

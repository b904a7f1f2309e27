//! Parts of a cache: one build cut into `N` contiguous, shard-aligned
//! sample ranges, each built alone (a Slurm array task, a Kubernetes
//! indexed pod) and merged afterwards (`merge.rs`).
//!
//! A cache's shard boundaries depend only on its settings ([`BuildSpec`]),
//! so part `K` of `N` is simply shards `floor(K·S/N) .. floor((K+1)·S/N)` of
//! the `S` shards a single build would write, with the same names and bytes.
//! A part is built by [`CacheWriter::create_or_resume_part`] into a
//! directory of its own (by convention `OUT/part-K-of-N`, [`part_dir`]) with
//! the writer's whole protocol (lock, `build.json`, resume); its commit
//! point is `part.json` ([`PartManifest`], FORMAT.md "Parts and merge")
//! instead of `manifest.json`, so a part can never be opened as a cache.
//!
//! [`CacheWriter::create_or_resume_part`]: super::CacheWriter::create_or_resume_part

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use super::format::{check_version, MAX_RECORDS_PER_BLOCK};
use super::manifest::{is_plain_file_name, ShardEntry, MAX_MANIFEST_BYTES, MAX_SHARDS};
use super::settings::BuildSpec;
use super::{CacheError, Result};

/// File name of a part's manifest inside its directory (its commit point).
pub const PART_FILE: &str = "part.json";

/// Part `index` of `count` (written `K/N`), `index < count`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartSpec {
    pub index: u64,
    pub count: u64,
}

impl PartSpec {
    /// Part `index` of `count`; refuses `count == 0` and `index >= count`.
    pub fn new(index: u64, count: u64) -> std::result::Result<PartSpec, String> {
        if count == 0 {
            return Err("a cache is cut into at least 1 part".into());
        }
        if index >= count {
            return Err(format!(
                "part {index} of {count} does not exist: parts are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(PartSpec { index, count })
    }

    /// The directory name of this part: `part-K-of-N`.
    pub fn dir_name(&self) -> String {
        format!("part-{}-of-{}", self.index, self.count)
    }

    /// The part a directory name `part-K-of-N` ([`PartSpec::dir_name`])
    /// stands for; `None` for any other name.
    pub fn from_dir_name(name: &str) -> Option<PartSpec> {
        let (k, n) = name.strip_prefix("part-")?.split_once("-of-")?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(k) || !digits(n) {
            return None;
        }
        PartSpec::new(k.parse().ok()?, n.parse().ok()?).ok()
    }
}

impl fmt::Display for PartSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// Where part `part` of a build whose parts go to `parent` is written:
/// `parent/part-K-of-N`.
pub fn part_dir(parent: &Path, part: PartSpec) -> PathBuf {
    parent.join(part.dir_name())
}

/// The part directories (`part-K-of-N`, [`part_dir`]) directly inside
/// `parent`, in part order; empty when there are none or `parent` does not
/// read. Whether each holds a committed part is not looked at.
pub fn part_dirs_in(parent: &Path) -> Vec<PartSpec> {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return Vec::new();
    };
    let mut parts: Vec<PartSpec> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| PartSpec::from_dir_name(e.file_name().to_str()?))
        .collect();
    parts.sort_by_key(|p| (p.count, p.index));
    parts
}

/// The shards and samples one part (or a whole build) covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartRange {
    /// Index of the first shard (in the whole cache's numbering).
    pub first_shard: u64,
    /// One past the last shard.
    pub end_shard: u64,
    pub first_sample: u64,
    /// One past the last sample.
    pub end_sample: u64,
}

impl PartRange {
    /// Everything: the range of a single build.
    pub fn whole(spec: &BuildSpec) -> PartRange {
        PartRange {
            first_shard: 0,
            end_shard: spec.num_shards(),
            first_sample: 0,
            end_sample: spec.dataset.num_samples,
        }
    }

    /// The range of `part` of the build `spec`: shards
    /// `floor(K·S/N) .. floor((K+1)·S/N)`. Refuses more parts than shards
    /// (a part would be empty), with what to do.
    pub fn of(spec: &BuildSpec, part: PartSpec) -> std::result::Result<PartRange, String> {
        PartSpec::new(part.index, part.count)?;
        let shards = spec.num_shards();
        if part.count > shards {
            let plural = if shards == 1 { "" } else { "s" };
            return Err(format!(
                "{} parts, but this cache has only {shards} shard{plural} (of up to {} samples each): use at most {shards} part{plural}, or smaller shards: a lower `shard_kib` (a shard holds at least one block, of {} records here, so with few samples a lower `block_records` too)",
                part.count, spec.records_per_shard, spec.records_per_block
            ));
        }
        let cut = |k: u64| (k as u128 * shards as u128 / part.count as u128) as u64;
        let (first_shard, end_shard) = (cut(part.index), cut(part.index + 1));
        let rps = spec.records_per_shard;
        Ok(PartRange {
            first_shard,
            end_shard,
            first_sample: first_shard.saturating_mul(rps),
            end_sample: end_shard.saturating_mul(rps).min(spec.dataset.num_samples),
        })
    }

    /// `a..b` of samples, for messages.
    pub fn samples(&self) -> String {
        format!("samples {}..{}", self.first_sample, self.end_sample)
    }
}

/// The content of `part.json`: one committed part of a cache.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartManifest {
    pub format_version: u32,
    /// xxh3-128 of this manifest's compact JSON with `id` and
    /// `tool_version` blanked: the content's identity and checksum.
    pub id: String,
    /// Version of distill that wrote it, informational.
    pub tool_version: String,
    /// The whole build's settings, with `part` set to this part.
    pub settings: BuildSpec,
    /// `settings.key()`: the build key in the shard names.
    pub build_key: String,
    /// Index of this part's first shard in the whole cache.
    pub first_shard: u64,
    pub first_sample: u64,
    pub num_samples: u64,
    /// This part's shards, as the whole cache's manifest will list them.
    pub shards: Vec<ShardEntry>,
}

impl PartManifest {
    /// Which part this is.
    pub fn part(&self) -> PartSpec {
        self.settings
            .part
            .unwrap_or(PartSpec { index: 0, count: 1 })
    }

    /// The shards and samples this part covers.
    pub fn range(&self) -> PartRange {
        PartRange {
            first_shard: self.first_shard,
            end_shard: self.first_shard + self.shards.len() as u64,
            first_sample: self.first_sample,
            end_sample: self.first_sample + self.num_samples,
        }
    }

    /// The content id (see [`PartManifest::id`]).
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
            .map_err(|e| CacheError::input(PART_FILE, format!("cannot serialise: {e}")))?;
        v.push(b'\n');
        Ok(v)
    }

    /// Reads and validates `dir/part.json`.
    pub fn read(dir: &Path) -> Result<PartManifest> {
        let path = dir.join(PART_FILE);
        let len = std::fs::metadata(&path)
            .map_err(|e| CacheError::io(&path, "read", e))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(CacheError::corrupt(
                &path,
                "part manifest",
                format!("{len} bytes is over the {MAX_MANIFEST_BYTES}-byte limit"),
            ));
        }
        let bytes = std::fs::read(&path).map_err(|e| CacheError::io(&path, "read", e))?;
        PartManifest::parse(&path, &bytes)
    }

    /// Parses and validates part manifest bytes read from `path` (hostile
    /// input: size bound, version first, unknown fields refused).
    pub fn parse(path: &Path, bytes: &[u8]) -> Result<PartManifest> {
        let bad = |msg: String| CacheError::corrupt(path, "part manifest", msg);
        if bytes.len() as u64 > MAX_MANIFEST_BYTES {
            return Err(bad(format!(
                "{} bytes is over the {MAX_MANIFEST_BYTES}-byte limit",
                bytes.len()
            )));
        }
        #[derive(Deserialize)]
        struct VersionOnly {
            format_version: Option<u32>,
        }
        let v: VersionOnly =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not valid JSON: {e}")))?;
        let version = v
            .format_version
            .ok_or_else(|| bad("missing field format_version".into()))?;
        check_version(path, version)?;
        let m: PartManifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("invalid: {e}")))?;
        m.validate(path)?;
        Ok(m)
    }

    /// Structural checks: the settings, the part's range as the settings
    /// imply it, shard names and ranges, and the id.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |loc: String, msg: String| CacheError::corrupt(path, loc, msg);
        let field = |name: &str| format!("field {name}");
        if self.id != self.compute_id() {
            return Err(bad(
                field("id"),
                format!(
                    "content does not match the id {:?} (the part manifest was edited or damaged)",
                    self.id
                ),
            ));
        }
        let s = &self.settings;
        let Some(part) = s.part else {
            return Err(bad(field("settings.part"), "is absent".into()));
        };
        PartSpec::new(part.index, part.count).map_err(|m| bad(field("settings.part"), m))?;
        s.encoding
            .check_classes(usize::try_from(s.num_classes).unwrap_or(usize::MAX))
            .map_err(|m| bad(field("settings.num_classes"), m))?;
        if !(s.temperature.is_finite() && s.temperature > 0.0) {
            return Err(bad(
                field("settings.temperature"),
                format!("{} is not a positive finite number", s.temperature),
            ));
        }
        let rpb = s.records_per_block as u64;
        if rpb == 0
            || s.records_per_block > MAX_RECORDS_PER_BLOCK
            || s.records_per_shard == 0
            || !s.records_per_shard.is_multiple_of(rpb)
            || s.dataset.num_samples == 0
        {
            return Err(bad(
                field("settings"),
                format!(
                    "{} samples, {} records per block, {} per shard is not a layout a build writes",
                    s.dataset.num_samples, s.records_per_block, s.records_per_shard
                ),
            ));
        }
        if self.build_key != s.key() {
            return Err(bad(
                field("build_key"),
                format!(
                    "{:?} is not the key of the settings ({})",
                    self.build_key,
                    s.key()
                ),
            ));
        }
        let range = PartRange::of(s, part).map_err(|m| bad(field("settings.part"), m))?;
        if (self.first_shard, self.first_sample, self.num_samples)
            != (
                range.first_shard,
                range.first_sample,
                range.end_sample - range.first_sample,
            )
        {
            return Err(bad(
                field("first_shard"),
                format!(
                    "part {part} covers shards {}.. and samples {}+{} here, but shards {}.. and {} by its settings",
                    self.first_shard, self.first_sample, self.num_samples, range.first_shard, range.samples()
                ),
            ));
        }
        self.validate_shards(path, &range)
    }

    /// The listed shards are exactly the range's, named as a single build
    /// names them, each holding its full share of samples.
    fn validate_shards(&self, path: &Path, range: &PartRange) -> Result<()> {
        let want = range.end_shard - range.first_shard;
        if self.shards.len() as u64 != want || self.shards.len() > MAX_SHARDS {
            return Err(CacheError::corrupt(
                path,
                "field shards",
                format!("{} shards listed, expected {want}", self.shards.len()),
            ));
        }
        let mut next = range.first_sample;
        for (i, e) in self.shards.iter().enumerate() {
            let n = range.first_shard + i as u64;
            let loc = format!("shard {n} ({})", e.file);
            let name = self.settings.shard_name(n);
            if !is_plain_file_name(&e.file) || e.file != name {
                return Err(CacheError::corrupt(
                    path,
                    loc,
                    format!("file name should be {name}"),
                ));
            }
            let records = (range.end_sample - next).min(self.settings.records_per_shard);
            if e.first_sample != next || e.num_samples != records {
                return Err(CacheError::corrupt(
                    path,
                    loc,
                    format!(
                        "covers samples {}+{}, expected {next}+{records}",
                        e.first_sample, e.num_samples
                    ),
                ));
            }
            if e.xxh3.len() != 16 || !e.xxh3.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(CacheError::corrupt(
                    path,
                    loc,
                    format!("xxh3 {:?} is not 16 hex digits", e.xxh3),
                ));
            }
            next += records;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::codec::Encoding;
    use crate::cache::manifest::{DatasetInfo, TeacherInfo};
    use crate::cache::writer::{CacheMeta, WriterOptions};
    use proptest::prelude::*;

    /// Settings of `n` samples of 10 classes, f32, 16 records per block, 48 per shard.
    fn spec(n: u64) -> BuildSpec {
        let meta = CacheMeta {
            teacher: TeacherInfo {
                spec: "mlp:8-10".into(),
                fingerprint: "t".into(),
                source: "t.safetensors".into(),
                normalization: None,
            },
            dataset: DatasetInfo {
                fingerprint: "d".into(),
                split: "train".into(),
                num_samples: n,
                view: None,
            },
            num_classes: 10,
            has_labels: true,
            temperature: 4.0,
            encoding: Encoding::F32,
        };
        let opts = WriterOptions {
            shard_target_bytes: 3 * 16 * 52,
            records_per_block: 16,
            ..WriterOptions::default()
        };
        BuildSpec::plan(&meta, &opts).unwrap()
    }

    /// A valid part manifest of part `part` of `n` samples (shard bytes made up).
    fn sample(n: u64, part: PartSpec) -> PartManifest {
        let mut settings = spec(n);
        settings.part = Some(part);
        let r = PartRange::of(&settings, part).unwrap();
        let rps = settings.records_per_shard;
        let mut m = PartManifest {
            format_version: crate::cache::format::FORMAT_VERSION_CURRENT,
            id: String::new(),
            tool_version: "0.1.0".into(),
            build_key: settings.key(),
            first_shard: r.first_shard,
            first_sample: r.first_sample,
            num_samples: r.end_sample - r.first_sample,
            shards: (r.first_shard..r.end_shard)
                .map(|s| ShardEntry {
                    file: settings.shard_name(s),
                    first_sample: s * rps,
                    num_samples: rps.min(n - s * rps),
                    bytes: 100,
                    xxh3: "0123456789abcdef".into(),
                })
                .collect(),
            settings,
        };
        m.id = m.compute_id();
        m
    }

    #[test]
    fn part_specs_and_their_directories() {
        assert!(PartSpec::new(0, 0).unwrap_err().contains("at least 1"));
        assert!(PartSpec::new(3, 3).unwrap_err().contains("0 to 2"));
        let p = PartSpec::new(2, 8).unwrap();
        assert_eq!(p.to_string(), "2/8");
        assert_eq!(
            part_dir(Path::new("parts"), p),
            Path::new("parts/part-2-of-8")
        );
        // And back from the name.
        assert_eq!(PartSpec::from_dir_name("part-2-of-8"), Some(p));
        for other in [
            "part-8-of-8",
            "part-2-of-",
            "part--of-8",
            "part-+2-of-8",
            "view-0",
        ] {
            assert_eq!(PartSpec::from_dir_name(other), None, "{other}");
        }
        let tmp = tempfile::tempdir().unwrap();
        for name in ["part-1-of-2", "part-0-of-2", "other", "view-0"] {
            std::fs::create_dir(tmp.path().join(name)).unwrap();
        }
        std::fs::write(tmp.path().join("part-0-of-3"), b"a file").unwrap();
        assert_eq!(
            part_dirs_in(tmp.path()),
            [PartSpec::new(0, 2).unwrap(), PartSpec::new(1, 2).unwrap()]
        );
        assert!(part_dirs_in(&tmp.path().join("absent")).is_empty());
        // More parts than shards: refused with the most that works.
        let e = PartRange::of(&spec(100), PartSpec { index: 0, count: 4 }).unwrap_err();
        assert!(
            e.contains("only 3 shards") && e.contains("at most 3 parts"),
            "{e}"
        );
    }

    #[test]
    fn shard_names_do_not_depend_on_the_part() {
        let whole = spec(300);
        let mut part = whole.clone();
        part.part = Some(PartSpec { index: 1, count: 2 });
        assert_eq!(part.key(), whole.key());
        assert_eq!(part.shard_name(4), whole.shard_name(4));
        assert_eq!(
            whole.shard_name(4),
            format!("shard-{}-000004.dsc", whole.key())
        );
        // And build.json of a whole build is as before: no `part` field.
        assert!(!serde_json::to_string(&whole).unwrap().contains("part"));
    }

    proptest! {
        /// Whatever the sizes, the parts of a cut tile every shard and sample
        /// exactly once, in order, each part at least one shard.
        #[test]
        fn parts_tile_the_shards(shards in 1u64..300, short in 0u64..48, count_pick in 0u64..1000) {
            let n = shards * 48 - short.min(47);
            let s = spec(n);
            prop_assert_eq!(s.num_shards(), shards);
            let count = 1 + count_pick % shards;
            let mut next = (0u64, 0u64);
            for k in 0..count {
                let r = PartRange::of(&s, PartSpec { index: k, count }).unwrap();
                prop_assert_eq!((r.first_shard, r.first_sample), next);
                prop_assert!(r.end_shard > r.first_shard && r.end_sample > r.first_sample);
                next = (r.end_shard, r.end_sample);
            }
            prop_assert_eq!(next, (shards, n));
        }

        #[test]
        fn random_and_truncated_part_manifests_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400), cut in 0usize..4000) {
            prop_assert!(PartManifest::parse(Path::new("part.json"), &bytes).is_err());
            let json = sample(300, PartSpec { index: 1, count: 3 }).to_json().unwrap();
            let c = cut.min(json.len() - 2);
            prop_assert!(PartManifest::parse(Path::new("part.json"), &json[..c]).is_err());
        }
    }

    #[test]
    fn valid_part_manifest_round_trips() {
        let m = sample(300, PartSpec { index: 1, count: 3 });
        let back = PartManifest::parse(Path::new("part.json"), &m.to_json().unwrap()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.part(), PartSpec { index: 1, count: 3 });
        assert_eq!(back.range(), PartRange::of(&m.settings, m.part()).unwrap());
    }

    /// Edits re-sealed with a recomputed id (so only the structural checks
    /// can catch them) are refused, naming what is wrong.
    #[test]
    fn resealed_edits_are_refused() {
        type Edit = fn(&mut PartManifest);
        let edits: [(&str, Edit, &str); 9] = [
            (
                "shard renamed",
                |m| m.shards[0].file = "shard-0000000000000000-000002.dsc".into(),
                "file name should be",
            ),
            (
                "path in name",
                |m| m.shards[0].file = "../x.dsc".into(),
                "file name should be",
            ),
            (
                "range moved",
                |m| m.shards[1].first_sample += 1,
                "covers samples",
            ),
            (
                "shard dropped",
                |m| {
                    m.shards.pop();
                },
                "shards listed",
            ),
            ("first shard", |m| m.first_shard += 1, "by its settings"),
            (
                "part index",
                |m| m.settings.part = Some(PartSpec { index: 2, count: 3 }),
                "by its settings",
            ),
            ("no part", |m| m.settings.part = None, "settings.part"),
            (
                "build key",
                |m| m.build_key = "0123456789abcdef".into(),
                "build_key",
            ),
            (
                "bad checksum",
                |m| m.shards[0].xxh3 = "xyz".into(),
                "16 hex digits",
            ),
        ];
        for (what, edit, needle) in edits {
            let mut m = sample(300, PartSpec { index: 1, count: 3 });
            edit(&mut m);
            m.id = m.compute_id();
            let e = PartManifest::parse(Path::new("part.json"), &m.to_json().unwrap())
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle) && e.contains("part.json"), "{what}: {e}");
        }
        // Without re-sealing, any content edit is an id mismatch.
        let mut m = sample(300, PartSpec { index: 1, count: 3 });
        m.num_samples += 1;
        let e = PartManifest::parse(Path::new("part.json"), &m.to_json().unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains("field id"), "{e}");
    }
}

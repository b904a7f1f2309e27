//! Building a cache: [`CacheWriter`] (streaming, resumable) and [`import_logits`].
//!
//! Protocol (FORMAT.md, "Commit protocol"): an exclusive lock file is held
//! for the writer's lifetime; `build.json` records the settings of the build
//! in progress; each shard is written to `NAME.tmp`, fsynced and renamed
//! (shards are immutable once named); `manifest.json` is written last the
//! same way and the directory fsynced: that rename is the commit point. Only
//! after it are shards that the new manifest does not list removed, so a
//! failed rebuild never destroys a committed cache.
//!
//! A writer made by [`CacheWriter::create_or_resume_part`] builds one part
//! of a cache (`part.rs`): only its range of samples and shards, under the
//! same names and with the same bytes, committed by `part.json` instead of
//! `manifest.json`; `merge.rs` joins the parts.
//!
//! Shard boundaries depend only on the settings (records per shard is derived
//! from the target size and the raw record size), and each shard's build
//! statistics live in its header, so an interrupted build that is resumed
//! produces a cache byte-identical to an uninterrupted one.
//!
//! Cost: rows are validated, encoded and measured in parallel (rayon); full
//! blocks are compressed on the rayon pool while the caller runs the teacher
//! on the next batch, and only joined when their shard is written.

use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use fs2::FileExt;
use rayon::prelude::*;
use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use super::codec::{row_fidelity, Codec, Encoding};
use super::format::{
    align_up, parse_shard, BlockEntry, ShardHeader, ShardStats, FORMAT_VERSION_CURRENT,
    HEADER_BYTES, INDEX_ENTRY_BYTES,
};
use super::manifest::{
    DatasetInfo, Fidelity, Manifest, ShardEntry, TeacherInfo, TeacherStats, MANIFEST_FILE,
};
use super::part::{PartManifest, PartRange, PartSpec, PART_FILE};
pub use super::settings::first_setting_difference;
use super::settings::BuildSpec;
use super::views::SUMMARY_FILE;
use super::{log_softmax_tempered, CacheError, Result};

/// Name of the lock file held while writing.
pub const LOCK_FILE: &str = ".lock";
/// Name of the in-progress build description.
pub const BUILD_FILE: &str = "build.json";

/// What the cache holds: the teacher, the data and the stored representation.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheMeta {
    pub teacher: TeacherInfo,
    pub dataset: DatasetInfo,
    pub num_classes: usize,
    /// Whether `push_batch` receives labels.
    pub has_labels: bool,
    /// Temperature T of the log-probabilities passed to `push_batch`.
    pub temperature: f32,
    pub encoding: Encoding,
}

/// How the cache is laid out and what the writer may do to an existing one.
#[derive(Clone, Debug, PartialEq)]
pub struct WriterOptions {
    /// Target shard size, measured on decompressed records (compressed shards are smaller).
    pub shard_target_bytes: u64,
    /// Records per compressed block (the unit of checksums, decoding and
    /// shuffling). 0 (the default) picks about 1 MiB of decompressed records
    /// per block, at most 4096 records: large enough for zstd and for parallel
    /// decoding, small enough for random access and shuffle windows.
    pub records_per_block: u32,
    /// zstd level (1..=22; negative levels are faster).
    pub zstd_level: i32,
    /// Replace a cache (finished or not) built with other settings in the same directory.
    /// The old cache stays readable until the new manifest is committed.
    pub overwrite: bool,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            shard_target_bytes: 64 << 20,
            records_per_block: 0,
            zstd_level: 3,
            overwrite: false,
        }
    }
}

/// Per-row results of validation + encoding + measurement.
#[derive(Clone, Copy)]
struct RowStat {
    kl: f64,
    agree: bool,
    entropy: f64,
    correct: bool,
}

struct PendingBlock {
    records: u32,
    raw_len: u64,
    rx: mpsc::Receiver<std::result::Result<Vec<u8>, String>>,
}

/// A complete shard: its manifest entry and the statistics in its header.
pub(crate) struct Done {
    pub(crate) entry: ShardEntry,
    pub(crate) stats: ShardStats,
}

/// Streams the teacher's log-probabilities into a cache directory.
pub struct CacheWriter {
    dir: PathBuf,
    spec: BuildSpec,
    key: String,
    codec: Codec,
    num_samples: u64,
    /// What this writer builds: everything, or one part's shards and samples.
    range: PartRange,
    done: Vec<Done>,
    resume_from: u64,
    next: u64,
    // Current shard.
    stats: ShardStats,
    pending: Vec<PendingBlock>,
    // Current block, columnar.
    idx: Vec<u64>,
    labels: Vec<u32>,
    payload: Vec<u8>,
    // Held for the writer's lifetime; unlocked when dropped.
    _lock: File,
}

fn fsync_dir(dir: &Path) -> Result<()> {
    Ok(crate::fsutil::fsync_dir(dir)?)
}

/// Writes `bytes` to `dir/name` atomically ([`crate::fsutil::atomic_write`]).
fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    Ok(crate::fsutil::atomic_write(&dir.join(name), bytes)?)
}

pub(crate) fn is_shard_file(name: &str) -> bool {
    name.starts_with("shard-") && name.ends_with(".dsc")
}

/// Whether `name` is one of the files a cache or a view set writes: its
/// manifest, build and part descriptions, view-set summary, lock, shards,
/// view directories and temporary files.
fn is_cache_entry(name: &str) -> bool {
    [
        MANIFEST_FILE,
        PART_FILE,
        BUILD_FILE,
        SUMMARY_FILE,
        LOCK_FILE,
    ]
    .contains(&name)
        || name.starts_with("shard-")
        || name.starts_with("view-")
        || (name.starts_with('.') && name.ends_with(".tmp"))
}

/// Refuses an existing directory that holds anything a cache or view set
/// does not write (a model's files, a dataset, notes), so that a build
/// never adds shards beside them or clears them as stale. A missing or
/// empty directory, or one holding a (part of a) cache, passes.
pub(crate) fn refuse_foreign_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        return Err(CacheError::input(
            dir.display().to_string(),
            "is a file, not a directory; a cache is written into a directory of its own",
        ));
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CacheError::io(dir, "list directory", e)),
    };
    let mut foreign: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !is_cache_entry(name))
        .collect();
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    const SHOWN: usize = 3;
    let mut found = foreign[..foreign.len().min(SHOWN)].join(", ");
    if foreign.len() > SHOWN {
        found.push_str(&format!(" and {} more", foreign.len() - SHOWN));
    }
    Err(CacheError::NotACacheDir {
        path: dir.to_path_buf(),
        found,
    })
}

/// Creates `dir` and takes its exclusive lock, held by the returned file.
/// A directory holding files of something else is refused first
/// ([`refuse_foreign_dir`]).
pub(crate) fn lock_dir(dir: &Path) -> Result<File> {
    refuse_foreign_dir(dir)?;
    fs::create_dir_all(dir).map_err(|e| CacheError::io(dir, "create directory", e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&lock_path)
        .map_err(|e| CacheError::io(&lock_path, "open lock file", e))?;
    match lock.try_lock_exclusive() {
        Ok(()) => Ok(lock),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Err(CacheError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(e) => Err(lock_unsupported(&lock_path, e)),
    }
}

/// A lock that failed for another reason than another holder: the file
/// system does not lock (FORMAT.md and docs/shared-filesystems.md say
/// what a shared file system must provide).
pub(crate) fn lock_unsupported(lock_path: &Path, e: std::io::Error) -> CacheError {
    CacheError::input(
        lock_path.display().to_string(),
        format!("cannot take the lock: {e}; the file system does not support flock locks (e.g. Lustre mounted with noflock, NFS mounted with nolock or without a lock manager): mount it with locks, see docs/shared-filesystems.md"),
    )
}

/// Claims the locked `dir` for the build `spec`: refuses a committed cache
/// or part, or an unfinished build, with other settings unless `overwrite`,
/// then records `spec` in `build.json` (rewritten only when it changed).
///
/// A directory is a whole cache or one part, for good: a build of another
/// part (or of the whole) in it is refused even with `overwrite`, because
/// the shards such a build shares names with would be deleted before the
/// new build commits.
pub(crate) fn claim_dir(dir: &Path, spec: &BuildSpec, overwrite: bool) -> Result<()> {
    let differ = |what, field, existing, requested| CacheError::SettingsDiffer {
        path: dir.to_path_buf(),
        what,
        field,
        existing,
        requested,
    };
    // What is committed here: a cache, or a part. A damaged one is an
    // error unless it is to be overwritten anyway.
    let committed = match committed_spec(dir) {
        Err(_) if overwrite => None,
        other => other?,
    };
    // And what is unfinished.
    let previous = unfinished_spec(dir);
    for (what, existing) in [("committed", &committed), ("unfinished", &previous)] {
        let Some(existing) = existing else { continue };
        if existing.part != spec.part {
            return Err(wrong_part(dir, what, existing.part, spec.part));
        }
        // One view of a set replaced by a plain cache breaks the set (its
        // other views and views.json stay): refused even with `overwrite`,
        // which replaces a set only whole, from its own directory.
        if let (Some(view), None) = (&existing.dataset.view, &spec.dataset.view) {
            return Err(CacheError::input(
                dir.display().to_string(),
                format!(
                    "holds {view} of a view set ({what}), not a cache of the plain images: \
                     writing one here would break the set, with or without `--overwrite`; \
                     use another directory"
                ),
            ));
        }
        if !overwrite {
            if let Some((field, a, b)) = existing.first_difference(spec) {
                let held = match what {
                    "committed" => "a cache built",
                    _ => "an unfinished build (stopped before it committed)",
                };
                return Err(differ(held, field, a, b));
            }
        }
    }
    // Nothing to record for a rerun of what is committed here.
    if previous.as_ref() != Some(spec) && committed.as_ref() != Some(spec) {
        let json = serde_json::to_vec_pretty(spec)
            .map_err(|e| CacheError::input("build.json", e.to_string()))?;
        atomic_write(dir, BUILD_FILE, &json)?;
    }
    Ok(())
}

/// The settings committed in `dir`: its cache's manifest, else its part's
/// record (`None` when it holds neither).
pub(crate) fn committed_spec(dir: &Path) -> Result<Option<BuildSpec>> {
    let mpath = dir.join(MANIFEST_FILE);
    if mpath.exists() {
        let bytes = fs::read(&mpath).map_err(|e| CacheError::io(&mpath, "read", e))?;
        Ok(Some(BuildSpec::from_manifest(&Manifest::parse(
            &mpath, &bytes,
        )?)))
    } else if dir.join(PART_FILE).exists() {
        Ok(Some(PartManifest::read(dir)?.settings))
    } else {
        Ok(None)
    }
}

/// The settings of the unfinished build in `dir` (its `build.json`), when
/// there is one that reads.
pub(crate) fn unfinished_spec(dir: &Path) -> Option<BuildSpec> {
    fs::read(dir.join(BUILD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The error for a build of `requested` in a directory holding `existing`.
fn wrong_part(
    dir: &Path,
    what: &str,
    existing: Option<PartSpec>,
    requested: Option<PartSpec>,
) -> CacheError {
    let name = |p: Option<PartSpec>| {
        p.map_or("a whole cache".to_string(), |p| {
            format!("part {p} of a cache")
        })
    };
    CacheError::input(
        dir.display().to_string(),
        format!(
            "holds {} ({what}), not {}: each part, and the whole cache, is built in a directory of its own; use another directory",
            name(existing),
            name(requested)
        ),
    )
}

impl CacheWriter {
    /// Opens `dir` for building (creating it), taking the lock, keeping any
    /// complete shards of an interrupted build with the same settings
    /// (verified by checksum) and deleting partial temp files.
    ///
    /// Refuses a directory holding a cache (finished or not) built with other
    /// settings unless `opts.overwrite`; refuses while another writer holds the lock.
    pub fn create_or_resume(
        dir: &Path,
        meta: CacheMeta,
        opts: WriterOptions,
    ) -> Result<CacheWriter> {
        Self::open(dir, meta, opts, None)
    }

    /// Opens `dir` for building part `part` of the cache `meta` describes:
    /// only samples `range().first_sample .. range().end_sample`, in shards
    /// named and laid out as a single build's. Resumes like
    /// [`CacheWriter::create_or_resume`]; [`CacheWriter::finish_part`]
    /// commits it. Refuses more parts than the cache has shards, and a
    /// directory holding another part or a whole cache.
    pub fn create_or_resume_part(
        dir: &Path,
        meta: CacheMeta,
        opts: WriterOptions,
        part: PartSpec,
    ) -> Result<CacheWriter> {
        Self::open(dir, meta, opts, Some(part))
    }

    fn open(
        dir: &Path,
        meta: CacheMeta,
        opts: WriterOptions,
        part: Option<PartSpec>,
    ) -> Result<CacheWriter> {
        let mut spec = BuildSpec::plan(&meta, &opts)?;
        let range = match part {
            None => PartRange::whole(&spec),
            Some(p) => PartRange::of(&spec, p).map_err(|m| CacheError::input("part", m))?,
        };
        spec.part = part;
        let key = spec.key();
        let lock = lock_dir(dir)?;
        claim_dir(dir, &spec, opts.overwrite)?;
        let mut w = CacheWriter {
            dir: dir.to_path_buf(),
            codec: Codec::new(meta.encoding, meta.num_classes),
            num_samples: meta.dataset.num_samples,
            range,
            spec,
            key,
            done: Vec::new(),
            resume_from: 0,
            next: 0,
            stats: ShardStats::default(),
            pending: Vec::new(),
            idx: Vec::new(),
            labels: Vec::new(),
            payload: Vec::new(),
            _lock: lock,
        };
        w.recover()?;
        Ok(w)
    }

    /// Deletes temp files, keeps the longest run of valid shards of this build, deletes the rest of its shards.
    fn recover(&mut self) -> Result<()> {
        let entries =
            fs::read_dir(&self.dir).map_err(|e| CacheError::io(&self.dir, "list directory", e))?;
        let mut ours = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CacheError::io(&self.dir, "list directory", e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Shards are written to `NAME.tmp`, `fsutil::atomic_write` files
            // to `.NAME.PID.tmp`.
            let bare = name.strip_prefix('.').unwrap_or(&name);
            if name.ends_with(".tmp")
                && (bare.starts_with("shard-")
                    || bare.starts_with(MANIFEST_FILE)
                    || bare.starts_with(super::part::PART_FILE)
                    || bare.starts_with(BUILD_FILE))
            {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| CacheError::io(&p, "remove partial file", e))?;
            } else if name.starts_with(&format!("shard-{}-", self.key)) && name.ends_with(".dsc") {
                ours.push(name);
            }
        }
        self.resume_from = self.range.first_sample;
        let mut n = self.range.first_shard;
        while self.resume_from < self.range.end_sample {
            let name = self.spec.shard_name(n);
            let path = self.dir.join(&name);
            match self.check_existing_shard(&path, &name) {
                Some(done) => {
                    self.resume_from += done.entry.num_samples;
                    self.done.push(done);
                    n += 1;
                }
                None => break,
            }
        }
        let keep: std::collections::HashSet<String> =
            self.done.iter().map(|d| d.entry.file.clone()).collect();
        for name in ours.into_iter().filter(|n| !keep.contains(n)) {
            let p = self.dir.join(&name);
            fs::remove_file(&p).map_err(|e| CacheError::io(&p, "remove incomplete shard", e))?;
        }
        self.next = self.resume_from;
        Ok(())
    }

    /// A shard left by an earlier run is kept only if it is exactly what this build would write
    /// (structure, settings, range and every block checksum).
    fn check_existing_shard(&self, path: &Path, name: &str) -> Option<Done> {
        let bytes = fs::read(path).ok()?;
        let (h, blocks) = parse_shard(path, &bytes).ok()?;
        let s = &self.spec;
        let want_records = (self.range.end_sample - self.resume_from).min(s.records_per_shard);
        let ok = h.first_sample == self.resume_from
            && h.records == want_records
            && h.encoding == s.encoding
            && h.classes as u64 == s.num_classes
            && h.has_labels == s.has_labels
            && h.temperature.to_bits() == s.temperature.to_bits()
            && h.zstd_level == s.zstd_level
            && h.records_per_block == s.records_per_block
            && blocks.iter().all(|b| {
                let start = b.offset as usize;
                xxh3_64(&bytes[start..start + b.compressed_len as usize]) == b.checksum
            });
        ok.then(|| Done {
            entry: ShardEntry {
                file: name.to_string(),
                first_sample: h.first_sample,
                num_samples: h.records,
                bytes: bytes.len() as u64,
                xxh3: format!("{:016x}", xxh3_64(&bytes)),
            },
            stats: h.stats,
        })
    }

    /// First sample index not yet in a complete shard: the caller starts feeding here.
    pub fn resume_from(&self) -> u64 {
        self.resume_from
    }

    /// The shards and samples this writer builds (all of them, or a part's).
    pub fn range(&self) -> PartRange {
        self.range
    }

    /// Appends rows of `C` log-probabilities at temperature T for samples
    /// `first_index..first_index + rows`, in order. `labels` must be given
    /// exactly when the cache has labels. Rejects non-finite or unnormalised
    /// rows naming the sample, and gaps or repeats in the sample order.
    pub fn push_batch(
        &mut self,
        first_index: u64,
        labels: Option<&[u32]>,
        logprobs: &[f32],
    ) -> Result<()> {
        let c = self.codec.classes;
        if first_index != self.next {
            return Err(CacheError::input(
                "push_batch",
                format!(
                    "batch starts at sample {first_index}, but the next sample expected is {} (samples must arrive in order, starting at resume_from() = {})",
                    self.next, self.resume_from
                ),
            ));
        }
        if !logprobs.len().is_multiple_of(c) {
            return Err(CacheError::input(
                "push_batch",
                format!(
                    "{} log-probabilities is not a whole number of rows of {c} classes",
                    logprobs.len()
                ),
            ));
        }
        let rows = logprobs.len() / c;
        let end = first_index
            .checked_add(rows as u64)
            .filter(|&e| e <= self.range.end_sample)
            .ok_or_else(|| {
                let what = match self.spec.part {
                    None => format!("the dataset's {} samples", self.num_samples),
                    Some(p) => format!("part {p}, which ends at sample {}", self.range.end_sample),
                };
                CacheError::input(
                    "push_batch",
                    format!("batch of {rows} rows from sample {first_index} goes past {what}"),
                )
            })?;
        match (labels, self.spec.has_labels) {
            (Some(l), true) if l.len() == rows => {
                if let Some((i, &bad)) = l.iter().enumerate().find(|(_, &v)| v as usize >= c) {
                    return Err(CacheError::input(
                        format!("label of sample {}", first_index + i as u64),
                        format!("{bad} is not a class id below {c}"),
                    ));
                }
            }
            (Some(l), true) => {
                return Err(CacheError::input(
                    "push_batch",
                    format!("{} labels for {rows} rows", l.len()),
                ));
            }
            (None, false) => {}
            (Some(_), false) => {
                return Err(CacheError::input(
                    "push_batch",
                    "labels given, but the cache was created with has_labels = false",
                ))
            }
            (None, true) => {
                return Err(CacheError::input(
                    "push_batch",
                    "no labels given, but the cache was created with has_labels = true",
                ))
            }
        }

        // Validate, encode and measure in parallel; combine in order (deterministic).
        const CHUNK: usize = 512;
        let codec = &self.codec;
        let results: Vec<Result<(Vec<u8>, Vec<RowStat>)>> = logprobs
            .par_chunks(CHUNK * c)
            .enumerate()
            .map(|(ci, chunk)| {
                let mut bytes = Vec::with_capacity(chunk.len() / c * codec.payload);
                let mut stats = Vec::with_capacity(chunk.len() / c);
                let mut scratch = super::codec::EncodeScratch::default();
                let mut dec = vec![0.0f32; c];
                for (r, row) in chunk.chunks_exact(c).enumerate() {
                    let local = ci * CHUNK + r;
                    let sample = first_index + local as u64;
                    if let Some((class, &value)) = row.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                        return Err(CacheError::NonFinite { what: "sample", row: sample, class, value });
                    }
                    let mass: f64 = row.iter().map(|&v| (v as f64).exp()).sum();
                    if (mass - 1.0).abs() > 1e-3 {
                        return Err(CacheError::input(
                            format!("sample {sample}"),
                            format!("probabilities sum to {mass}, not 1: pass log-probabilities log_softmax(logits / T) (see log_softmax_tempered), not raw logits"),
                        ));
                    }
                    let start = bytes.len();
                    codec.encode_row(row, &mut bytes, &mut scratch);
                    codec.decode_rows(&bytes[start..], &mut dec).map_err(|m| CacheError::input(format!("sample {sample}"), m))?;
                    let (kl, agree, entropy) = row_fidelity(row, &dec);
                    let correct = labels.is_some_and(|l| super::codec::argmax(row) == l[local] as usize);
                    stats.push(RowStat { kl, agree, entropy, correct });
                }
                Ok((bytes, stats))
            })
            .collect();

        let pb = codec.payload;
        let mut row = 0usize;
        for r in results {
            let (bytes, stats) = r?;
            for (j, st) in stats.iter().enumerate() {
                let sample = first_index + row as u64;
                self.idx.push(sample);
                self.labels.push(labels.map_or(u32::MAX, |l| l[row]));
                self.payload.extend_from_slice(&bytes[j * pb..(j + 1) * pb]);
                self.stats.sum_kl += st.kl;
                self.stats.max_kl = self.stats.max_kl.max(st.kl);
                self.stats.top1_agree += st.agree as u64;
                self.stats.correct += st.correct as u64;
                self.stats.sum_entropy += st.entropy;
                self.next = sample + 1;
                row += 1;
                self.maybe_flush()?;
            }
        }
        debug_assert_eq!(self.next, end);
        Ok(())
    }

    fn shard_first(&self) -> u64 {
        self.done.last().map_or(self.range.first_sample, |d| {
            d.entry.first_sample + d.entry.num_samples
        })
    }

    /// Dispatches a full block; writes a full shard.
    fn maybe_flush(&mut self) -> Result<()> {
        let in_shard = self.next - self.shard_first();
        let shard_full =
            in_shard == self.spec.records_per_shard || self.next == self.range.end_sample;
        if self.idx.len() == self.spec.records_per_block as usize
            || (shard_full && !self.idx.is_empty())
        {
            self.dispatch_block();
        }
        if shard_full && !self.pending.is_empty() {
            self.write_shard()?;
        }
        Ok(())
    }

    fn dispatch_block(&mut self) {
        let n = self.idx.len();
        let mut raw = Vec::with_capacity(n * 12 + self.payload.len());
        for i in &self.idx {
            raw.extend_from_slice(&i.to_le_bytes());
        }
        for l in &self.labels {
            raw.extend_from_slice(&l.to_le_bytes());
        }
        super::format::shuffle_columns(&mut raw, n);
        raw.extend_from_slice(&self.payload);
        self.idx.clear();
        self.labels.clear();
        self.payload.clear();
        let level = self.spec.zstd_level;
        let (tx, rx) = mpsc::channel();
        let raw_len = raw.len() as u64;
        rayon::spawn(move || {
            let _ = tx.send(zstd::bulk::compress(&raw, level).map_err(|e| e.to_string()));
        });
        self.pending.push(PendingBlock {
            records: n as u32,
            raw_len,
            rx,
        });
    }

    fn write_shard(&mut self) -> Result<()> {
        let name = self
            .spec
            .shard_name(self.range.first_shard + self.done.len() as u64);
        let path = self.dir.join(&name);
        let first_sample = self.shard_first();
        let mut blocks = Vec::with_capacity(self.pending.len());
        for (i, p) in self.pending.drain(..).enumerate() {
            let data =
                p.rx.recv()
                    .map_err(|_| {
                        CacheError::input(format!("{name} block {i}"), "compression task was lost")
                    })?
                    .map_err(|m| {
                        CacheError::input(
                            format!("{name} block {i}"),
                            format!("zstd compression failed: {m}"),
                        )
                    })?;
            blocks.push((data, p.records, p.raw_len));
        }
        let index_end = (HEADER_BYTES + blocks.len() * INDEX_ENTRY_BYTES) as u64;
        let mut pos = index_end;
        let mut index = Vec::with_capacity(blocks.len() * INDEX_ENTRY_BYTES);
        let mut first_record = 0u64;
        for (data, records, raw_len) in &blocks {
            let e = BlockEntry {
                offset: pos,
                compressed_len: data.len() as u64,
                raw_len: *raw_len,
                first_record,
                record_count: *records,
                checksum: xxh3_64(data),
            };
            index.extend_from_slice(&e.to_bytes());
            first_record += *records as u64;
            pos = align_up(pos + data.len() as u64).unwrap_or(u64::MAX);
        }
        let header = ShardHeader {
            version: FORMAT_VERSION_CURRENT,
            encoding: self.spec.encoding,
            classes: self.spec.num_classes as u32,
            has_labels: self.spec.has_labels,
            first_sample,
            records: first_record,
            blocks: blocks.len() as u32,
            records_per_block: self.spec.records_per_block,
            temperature: self.spec.temperature,
            zstd_level: self.spec.zstd_level,
            index_checksum: xxh3_64(&index),
            stats: self.stats,
        };
        let mut hasher = Xxh3::new();
        write_shard_file(&path, |out| {
            let mut put = |bytes: &[u8]| -> std::io::Result<()> {
                hasher.update(bytes);
                out.write_all(bytes)
            };
            put(&header.to_bytes())?;
            put(&index)?;
            for (data, _, _) in &blocks {
                put(data)?;
                let pad = (8 - data.len() % 8) % 8;
                put(&[0u8; 8][..pad])?;
            }
            Ok(())
        })?;
        fsync_dir(&self.dir)?;
        self.done.push(Done {
            entry: ShardEntry {
                file: name,
                first_sample,
                num_samples: first_record,
                bytes: pos,
                xxh3: format!("{:016x}", hasher.digest()),
            },
            stats: self.stats,
        });
        self.stats = ShardStats::default();
        Ok(())
    }

    /// Writes the remaining shard and commits the manifest; returns it.
    /// Afterwards removes shards of replaced builds and `build.json`.
    /// Refuses a part's writer (see [`CacheWriter::finish_part`]).
    pub fn finish(mut self) -> Result<Manifest> {
        if let Some(p) = self.spec.part {
            return Err(CacheError::input(
                "finish",
                format!("this writer builds part {p} of a cache, committed by finish_part"),
            ));
        }
        self.seal()?;
        let m = manifest_of(&self.spec, &self.done)?;
        m.validate(&self.dir.join(MANIFEST_FILE))?;
        commit(&self.dir, MANIFEST_FILE, &m.to_json()?, &m.shards)?;
        Ok(m)
    }

    /// Writes the part's remaining shard and commits `part.json`; returns
    /// it. Afterwards removes shards of replaced builds and `build.json`.
    pub fn finish_part(mut self) -> Result<PartManifest> {
        if self.spec.part.is_none() {
            return Err(CacheError::input(
                "finish_part",
                "this writer builds a whole cache, committed by finish",
            ));
        }
        self.seal()?;
        let mut m = PartManifest {
            format_version: FORMAT_VERSION_CURRENT,
            id: String::new(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            settings: self.spec.clone(),
            build_key: self.key.clone(),
            first_shard: self.range.first_shard,
            first_sample: self.range.first_sample,
            num_samples: self.range.end_sample - self.range.first_sample,
            shards: self.done.iter().map(|d| d.entry.clone()).collect(),
        };
        m.id = m.compute_id();
        m.validate(&self.dir.join(PART_FILE))?;
        commit(&self.dir, PART_FILE, &m.to_json()?, &m.shards)?;
        Ok(m)
    }

    /// Checks that every sample of the range was pushed and writes the last shard.
    fn seal(&mut self) -> Result<()> {
        if self.next != self.range.end_sample {
            let pushed = match self.spec.part {
                None => format!(
                    "only {} of {} samples were pushed",
                    self.next, self.num_samples
                ),
                Some(p) => format!(
                    "part {p} holds samples {}..{}, but only those before {} were pushed",
                    self.range.first_sample, self.range.end_sample, self.next
                ),
            };
            return Err(CacheError::input(
                "finish",
                format!(
                    "{pushed}; push samples {}.. before finishing (the complete shards are kept for a rerun)",
                    self.next
                ),
            ));
        }
        if !self.idx.is_empty() {
            self.dispatch_block();
        }
        if !self.pending.is_empty() {
            self.write_shard()?;
        }
        Ok(())
    }
}

/// Writes a shard file (a new one, or a merge's copy) to `NAME.tmp` beside
/// `path` with `write`, syncs it and renames it onto `path`. A failure (a
/// full disk) removes the partial file, so its space is the disk's again and
/// a rerun finds only committed shards; the error names `path`, with the
/// step on its temporary copy that failed. The caller syncs the directory.
pub(crate) fn write_shard_file(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let written = (|| -> Result<()> {
        let file =
            File::create(&tmp).map_err(|e| CacheError::io(path, "create its temporary copy", e))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        write(&mut out).map_err(|e| CacheError::io(path, "write its temporary copy", e))?;
        let file = out
            .into_inner()
            .map_err(|e| CacheError::io(path, "write its temporary copy", e.into_error()))?;
        file.sync_all()
            .map_err(|e| CacheError::io(path, "sync its temporary copy", e))?;
        drop(file);
        fs::rename(&tmp, path).map_err(|e| CacheError::io(path, "rename temp file onto", e))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// The manifest of the whole cache `spec` made of the complete shards
/// `done` (in order, every sample once): fidelity and teacher statistics
/// summed from the shards' header statistics in shard order, so a build, a
/// resumed build and a merge of parts produce the same bytes.
pub(crate) fn manifest_of(spec: &BuildSpec, done: &[Done]) -> Result<Manifest> {
    let n = spec.dataset.num_samples as f64;
    let total_bytes: u64 = done.iter().map(|d| d.entry.bytes).sum();
    let mut sum_kl = 0.0;
    let mut max_kl = 0.0f64;
    let (mut agree, mut correct, mut entropy) = (0u64, 0u64, 0.0f64);
    for d in done {
        sum_kl += d.stats.sum_kl;
        max_kl = max_kl.max(d.stats.max_kl);
        agree += d.stats.top1_agree;
        correct += d.stats.correct;
        entropy += d.stats.sum_entropy;
    }
    let s = spec;
    let mut m = Manifest {
        format_version: FORMAT_VERSION_CURRENT,
        id: String::new(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        teacher: s.teacher.clone(),
        dataset: s.dataset.clone(),
        num_classes: s.num_classes,
        has_labels: s.has_labels,
        temperature: s.temperature,
        encoding: s.encoding,
        zstd_level: s.zstd_level,
        records_per_block: s.records_per_block,
        records_per_shard: s.records_per_shard,
        fidelity: Fidelity {
            mean_kl: sum_kl / n,
            max_kl,
            top1_agreement: agree as f64 / n,
            bytes_per_sample: total_bytes as f64 / n,
        },
        teacher_stats: TeacherStats {
            accuracy: s.has_labels.then(|| correct as f64 / n),
            mean_entropy: entropy / n,
        },
        shards: done.iter().map(|d| d.entry.clone()).collect(),
    };
    m.id = m.compute_id();
    Ok(m)
}

/// The commit point and what follows it: writes `file` (the manifest, or a
/// part's manifest) atomically into the locked `dir`, then removes the
/// shard files it does not list (a replaced build's) and `build.json`.
pub(crate) fn commit(dir: &Path, file: &str, bytes: &[u8], shards: &[ShardEntry]) -> Result<()> {
    // A rerun of a finished build commits the same bytes: nothing is written.
    crate::fsutil::write_if_changed(&dir.join(file), bytes)?;
    // Committed. Clean up what the new manifest does not reference.
    let keep: std::collections::HashSet<&str> = shards.iter().map(|s| s.file.as_str()).collect();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_shard_file(&name) && !keep.contains(name.as_str()) {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| CacheError::io(&p, "remove replaced shard", e))?;
            }
        }
    }
    let bpath = dir.join(BUILD_FILE);
    match fs::remove_file(&bpath) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(CacheError::io(&bpath, "remove", e)),
    }
}

/// Builds a cache from raw teacher logits `[N, C]` (row-major, `N` =
/// `meta.dataset.num_samples`): `log_softmax(logits / T)` then the writer.
/// Resumes an interrupted import like [`CacheWriter::create_or_resume`].
pub fn import_logits(
    dir: &Path,
    meta: CacheMeta,
    opts: WriterOptions,
    logits: &[f32],
    labels: Option<&[u32]>,
) -> Result<Manifest> {
    let c = meta.num_classes;
    let n = meta.dataset.num_samples;
    let want = usize::try_from(n).ok().and_then(|n| n.checked_mul(c));
    if c == 0 || want != Some(logits.len()) {
        return Err(CacheError::input(
            "import_logits",
            format!(
                "{} logits given, expected {n} samples x {c} classes",
                logits.len()
            ),
        ));
    }
    if let Some(l) = labels {
        if l.len() as u64 != n {
            return Err(CacheError::input(
                "import_logits",
                format!("{} labels given for {n} samples", l.len()),
            ));
        }
    }
    let t = meta.temperature;
    let mut w = CacheWriter::create_or_resume(dir, meta, opts)?;
    const ROWS: usize = 16_384;
    let mut lp = vec![0.0f32; ROWS * c];
    let mut start = w.resume_from() as usize;
    while start < n as usize {
        let end = (start + ROWS).min(n as usize);
        let x = &logits[start * c..end * c];
        let out = &mut lp[..x.len()];
        // 256-row tasks; report the first bad row globally.
        let res: Vec<Result<()>> = x
            .par_chunks(256 * c)
            .zip(out.par_chunks_mut(256 * c))
            .enumerate()
            .map(|(i, (x, o))| {
                log_softmax_tempered(x, c, t, o).map_err(|e| match e {
                    CacheError::NonFinite {
                        row, class, value, ..
                    } => CacheError::NonFinite {
                        what: "logits of sample",
                        row: (start + i * 256) as u64 + row,
                        class,
                        value,
                    },
                    other => other,
                })
            })
            .collect();
        res.into_iter().collect::<Result<()>>()?;
        w.push_batch(start as u64, labels.map(|l| &l[start..end]), out)?;
        start = end;
    }
    w.finish()
}

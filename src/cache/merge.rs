//! Joining the parts of a build into one cache: [`merge_parts`], and
//! [`verify_part`] for checking one part on its own.
//!
//! A merge first checks everything and writes nothing: each part directory
//! is locked (shared: a part being built holds the exclusive lock, so it is
//! refused) and its `part.json` read; every part must come from the same
//! build settings (teacher, data, split, T, encoding, view, layout), each
//! part may be given once, and the parts' ranges must tile the cache's
//! shards with no gap and no overlap (parts of different cuts may be mixed
//! where they tile: part 2/4 and 3/4 can stand in for part 1/2). Then every
//! shard is read once: size, whole-file xxh3, header and block index, header
//! against the settings, every block checksum.
//!
//! Only then is the output touched, with the writer's protocol: its lock
//! taken, `build.json` written, each shard hard-linked into it under its own
//! name (copied, with its checksum checked again, where the file system
//! cannot link, e.g. across devices), the directory fsynced, and
//! `manifest.json` committed atomically. Shards are never decoded or
//! re-encoded, and the manifest is assembled from the shard headers exactly
//! as a single build assembles it, so the merged cache is byte-identical to
//! a single build's. A refused merge changes nothing; an output holding any
//! other cache is refused, and one holding this very cache is left as it is.
//!
//! The parts of a view set (`PART/view-v`, one part of every view) merge
//! view by view into `OUT/view-v`; all views are checked before any is
//! written. Each view commits on its own, so a merge killed between two
//! views leaves a set that readers refuse until the merge is rerun.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_64;

use super::format::parse_shard;
use super::manifest::{Manifest, ShardEntry, MANIFEST_FILE};
use super::part::{part_dir, PartManifest, PartRange, PartSpec, PART_FILE};
use super::settings::BuildSpec;
use super::views::{holds_view_set, view_dir};
use super::writer::{
    claim_dir, commit, lock_dir, lock_unsupported, manifest_of, refuse_foreign_dir,
    write_shard_file, Done, BUILD_FILE, LOCK_FILE,
};
use super::{CacheError, Result};

/// What a merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// The merged cache (one) or view caches (one per view, in view
    /// order): directory and manifest.
    pub caches: Vec<(PathBuf, Manifest)>,
    /// Part directories merged.
    pub parts: usize,
    /// Shards in the merged cache (all views).
    pub shards: usize,
    /// Shards hard-linked from the parts.
    pub linked: usize,
    /// Shards copied (where linking failed).
    pub copied: usize,
    /// Shards already in place from an earlier, interrupted merge.
    pub kept: usize,
    /// Caches (views) that were already merged: left untouched.
    pub already_merged: usize,
}

/// What checking one part found.
#[derive(Debug, Clone)]
pub struct PartVerifyReport {
    /// The part's directory (a view's directory for a view set).
    pub dir: PathBuf,
    pub part: PartSpec,
    pub range: PartRange,
    pub blocks: usize,
    pub bytes: u64,
}

fn refuse(what: impl Into<String>, message: impl Into<String>) -> CacheError {
    CacheError::Merge {
        what: what.into(),
        message: message.into(),
    }
}

fn shown(p: &Path) -> String {
    p.display().to_string()
}

/// True for a directory holding a committed part (or the parts of a view set).
pub fn is_part_dir(dir: &Path) -> bool {
    dir.join(PART_FILE).exists() || view_dir(dir, 0).join(PART_FILE).exists()
}

/// One part directory, locked (shared) and its `part.json` read.
struct OpenPart {
    dir: PathBuf,
    manifest: PartManifest,
    _lock: Option<File>,
}

/// Locks `dir` against writers (shared, so merges may run side by side);
/// `None` where it has no lock file.
fn lock_shared(dir: &Path) -> Result<Option<File>> {
    let path = dir.join(LOCK_FILE);
    let file = match OpenOptions::new().read(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(CacheError::io(&path, "open lock file", e)),
    };
    match file.try_lock_shared() {
        Ok(()) => Ok(Some(file)),
        Err(std::fs::TryLockError::WouldBlock) => Err(refuse(
            shown(dir),
            "is being built (another process holds its lock); wait for its build to finish",
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(lock_unsupported(&path, e)),
    }
}

/// Opens one part: what is wrong with a directory that is not a committed
/// part is said in the part's terms (missing, unfinished, a whole cache).
fn open_part(dir: &Path) -> Result<OpenPart> {
    if !dir.is_dir() {
        return Err(refuse(shown(dir), "no such directory"));
    }
    let lock = lock_shared(dir)?;
    if !dir.join(PART_FILE).exists() {
        let why = if dir.join(MANIFEST_FILE).exists() {
            "holds a whole cache (manifest.json), not a part of one"
        } else if dir.join(BUILD_FILE).exists() {
            "is unfinished (build.json, no part.json): its build was interrupted; rerun this part's build (it resumes) and merge again"
        } else {
            "holds no part.json: not a part of a cache (or its build never started)"
        };
        return Err(refuse(shown(dir), why));
    }
    let manifest = PartManifest::read(dir).map_err(|e| {
        refuse(
            shown(dir),
            format!("{PART_FILE} is damaged: {}; rebuild this part (with overwrite set, so the damaged part manifest is replaced; its intact shards are kept)", plain(&e)),
        )
    })?;
    Ok(OpenPart {
        dir: dir.to_path_buf(),
        manifest,
        _lock: lock,
    })
}

/// An error's message without the whole-cache advice of `Corrupt`.
fn plain(e: &CacheError) -> String {
    match e {
        CacheError::Corrupt {
            path,
            location,
            message,
        } => format!("{}: {location}: {message}", path.display()),
        other => other.to_string(),
    }
}

/// Reads one shard of `part` whole and checks it against `part.json` and
/// the settings: size, file checksum, header, block index, every block
/// checksum. Returns its entry and header statistics.
fn check_shard(dir: &Path, spec: &BuildSpec, e: &ShardEntry) -> std::result::Result<Done, String> {
    let path = dir.join(&e.file);
    let bytes = fs::read(&path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => format!("shard {} listed in part.json is missing", e.file),
        _ => format!("{}: cannot read: {err}", path.display()),
    })?;
    let bad = |m: String| format!("shard {} is damaged: {m}", e.file);
    if bytes.len() as u64 != e.bytes {
        return Err(bad(format!(
            "{} bytes, part.json says {} (truncated or replaced)",
            bytes.len(),
            e.bytes
        )));
    }
    let sum = format!("{:016x}", xxh3_64(&bytes));
    if sum != e.xxh3 {
        return Err(bad(format!(
            "file checksum {sum} differs from part.json's {} (the file was replaced or damaged)",
            e.xxh3
        )));
    }
    let (h, blocks) = parse_shard(&path, &bytes).map_err(|err| bad(plain(&err)))?;
    let agrees = h.version == spec.format_version
        && h.first_sample == e.first_sample
        && h.records == e.num_samples
        && h.encoding == spec.encoding
        && h.classes as u64 == spec.num_classes
        && h.has_labels == spec.has_labels
        && h.temperature.to_bits() == spec.temperature.to_bits()
        && h.zstd_level == spec.zstd_level
        && h.records_per_block == spec.records_per_block;
    if !agrees {
        return Err(bad(format!(
            "its header (samples {}+{}, {} with {} classes, T {}) disagrees with part.json",
            h.first_sample, h.records, h.encoding, h.classes, h.temperature
        )));
    }
    for (i, b) in blocks.iter().enumerate() {
        let start = b.offset as usize;
        let data = &bytes[start..start + b.compressed_len as usize];
        if xxh3_64(data) != b.checksum {
            return Err(bad(format!("block {i} checksum mismatch")));
        }
    }
    Ok(Done {
        entry: e.clone(),
        stats: h.stats,
    })
}

/// Checks every shard of an open part; the error names the part.
fn check_part_shards(p: &OpenPart) -> Result<Vec<Done>> {
    let advice = "; rerun this part's build: it keeps the intact shards before the damaged one and rewrites the rest";
    p.manifest
        .shards
        .iter()
        .map(|e| {
            check_shard(&p.dir, &p.manifest.settings, e)
                .map_err(|m| refuse(shown(&p.dir), format!("{m}{advice}")))
        })
        .collect()
}

/// Checks one part directory (or the parts of every view in it) as a
/// merge would, without merging: `distill cache verify` of a part.
pub fn verify_part(dir: &Path) -> Result<Vec<PartVerifyReport>> {
    let dirs = match layout(dir)? {
        Layout::Plain => vec![dir.to_path_buf()],
        Layout::Views(k) => (0..k).map(|v| view_dir(dir, v)).collect(),
    };
    let mut out = Vec::with_capacity(dirs.len());
    for d in dirs {
        let p = open_part(&d)?;
        let done = check_part_shards(&p)?;
        out.push(PartVerifyReport {
            dir: d,
            part: p.manifest.part(),
            range: p.manifest.range(),
            blocks: done
                .iter()
                .map(|d| {
                    d.entry
                        .num_samples
                        .div_ceil(p.manifest.settings.records_per_block as u64)
                        as usize
                })
                .sum(),
            bytes: done.iter().map(|d| d.entry.bytes).sum(),
        });
    }
    Ok(out)
}

/// A part directory holds one part of a cache, or one part of each view of a set.
enum Layout {
    Plain,
    Views(u64),
}

fn layout(dir: &Path) -> Result<Layout> {
    if dir.join(PART_FILE).exists() || !view_dir(dir, 0).is_dir() {
        return Ok(Layout::Plain);
    }
    let first = open_part(&view_dir(dir, 0))?;
    match &first.manifest.settings.dataset.view {
        Some(v) => Ok(Layout::Views(v.views)),
        None => Err(refuse(
            shown(dir),
            "view-0 holds a part of a cache of the plain images, not of a view set",
        )),
    }
}

/// The checked parts of one cache (or one view): settings, every shard in
/// order with the directory it is in, and the manifest they make.
struct Plan {
    spec: BuildSpec,
    shards: Vec<(PathBuf, Done)>,
    manifest: Manifest,
}

/// Checks the parts of one cache: same settings, each once, tiling every
/// shard, every shard intact. Writes nothing.
fn plan_merge(dirs: &[PathBuf]) -> Result<Plan> {
    let mut parts = Vec::with_capacity(dirs.len());
    let mut seen: HashMap<PathBuf, PathBuf> = HashMap::new();
    for d in dirs {
        let canonical = fs::canonicalize(d).unwrap_or_else(|_| d.clone());
        if let Some(first) = seen.insert(canonical, d.clone()) {
            return Err(refuse(
                shown(d),
                format!(
                    "duplicated: this directory is given twice (also as {})",
                    first.display()
                ),
            ));
        }
        parts.push(open_part(d)?);
    }
    let first = parts
        .first()
        .ok_or_else(|| refuse("merge", "no part directories given"))?;
    let spec = first.manifest.settings.whole();
    let mut by_part: HashMap<PartSpec, &Path> = HashMap::new();
    for p in &parts {
        let s = p.manifest.settings.whole();
        if let Some((field, here, there)) = s.first_difference(&spec) {
            return Err(refuse(
                shown(&p.dir),
                format!(
                    "foreign part: its {field} is {here}, but {there} in {} (the first part given); the parts of a cache come from one build command, with the same settings",
                    first.dir.display()
                ),
            ));
        }
        if let Some(other) = by_part.insert(p.manifest.part(), &p.dir) {
            return Err(refuse(
                shown(&p.dir),
                format!(
                    "duplicated: part {} is given twice (also in {}); give each part once",
                    p.manifest.part(),
                    other.display()
                ),
            ));
        }
    }
    check_coverage(&parts, &spec)?;
    let mut order: Vec<&OpenPart> = parts.iter().collect();
    order.sort_by_key(|p| p.manifest.first_shard);
    let mut shards = Vec::new();
    for p in order {
        for done in check_part_shards(p)? {
            shards.push((p.dir.clone(), done));
        }
    }
    let done: Vec<Done> = shards
        .iter()
        .map(|(_, d)| Done {
            entry: d.entry.clone(),
            stats: d.stats,
        })
        .collect();
    let manifest = manifest_of(&spec, &done)?;
    manifest.validate(Path::new(MANIFEST_FILE))?;
    Ok(Plan {
        spec,
        shards,
        manifest,
    })
}

/// The parts' ranges must tile shards `0..S` exactly: a gap is a missing
/// part, a shard in two parts an overlap.
fn check_coverage(parts: &[OpenPart], spec: &BuildSpec) -> Result<()> {
    let mut order: Vec<&OpenPart> = parts.iter().collect();
    order.sort_by_key(|p| (p.manifest.first_shard, p.manifest.part().count));
    let total = spec.num_shards();
    let one_cut = order
        .iter()
        .all(|p| p.manifest.part().count == order[0].manifest.part().count);
    let missing = |from: u64, to: u64| -> CacheError {
        let samples = |shard: u64| (shard * spec.records_per_shard).min(spec.dataset.num_samples);
        let (a, b) = (samples(from), samples(to));
        let parent = order[0].dir.parent().unwrap_or(Path::new("."));
        let count = order[0].manifest.part().count;
        let named: Vec<String> = (0..count)
            .filter_map(|k| {
                let part = PartSpec { index: k, count };
                let r = PartRange::of(spec, part).ok()?;
                (r.first_shard >= from && r.end_shard <= to)
                    .then(|| format!("{part} (expected at {})", part_dir(parent, part).display()))
            })
            .collect();
        let what = if one_cut && !named.is_empty() {
            format!("part {}", named.join(", part "))
        } else {
            format!("samples {a}..{b}")
        };
        refuse(
            what,
            format!("missing: no part directory given holds samples {a}..{b} (shards {from}..{to} of {total}); build the missing part with the same settings and merge again"),
        )
    };
    // `next`: the first shard not yet covered; `cover`: the part reaching it.
    let mut next = 0u64;
    let mut cover: Option<&OpenPart> = None;
    for p in &order {
        let r = p.manifest.range();
        if r.first_shard > next {
            return Err(missing(next, r.first_shard));
        }
        if let (true, Some(q)) = (r.first_shard < next, cover) {
            let q_range = q.manifest.range();
            let end = r.end_sample.min(q_range.end_sample);
            return Err(refuse(
                shown(&p.dir),
                format!(
                    "overlapping: part {} ({}) overlaps part {} in {} ({}) on samples {}..{end}; give the parts of one cut, each sample in exactly one part",
                    p.manifest.part(),
                    r.samples(),
                    q.manifest.part(),
                    q.dir.display(),
                    q_range.samples(),
                    r.first_sample,
                ),
            ));
        }
        if r.end_shard > next {
            next = r.end_shard;
            cover = Some(p);
        }
    }
    if next < total {
        return Err(missing(next, total));
    }
    Ok(())
}

/// How a shard got into the output.
enum Placed {
    Linked,
    Copied,
    Kept,
}

/// Puts the shard `src` into `dir` under `e.file`: a hard link, or a
/// checked copy (temp file, fsync, rename) where linking fails. A file of
/// that name already there with the right bytes is kept; any other is
/// replaced (no committed manifest lists it: [`commit_plan`] checks that).
fn place(src: &Path, dir: &Path, e: &ShardEntry, links: bool) -> Result<Placed> {
    let dst = dir.join(&e.file);
    if holds_shard(src, dir, e) {
        return Ok(Placed::Kept);
    }
    if dst.exists() {
        fs::remove_file(&dst).map_err(|err| CacheError::io(&dst, "remove stale shard", err))?;
    }
    if links && fs::hard_link(src, &dst).is_ok() {
        return Ok(Placed::Linked);
    }
    let bytes = fs::read(src).map_err(|err| CacheError::io(src, "read", err))?;
    if format!("{:016x}", xxh3_64(&bytes)) != e.xxh3 {
        return Err(refuse(
            shown(src.parent().unwrap_or(src)),
            format!("shard {} changed while being merged", e.file),
        ));
    }
    write_shard_file(&dst, |f| f.write_all(&bytes))?;
    Ok(Placed::Copied)
}

/// Whether `out` holds the shard `e` with its recorded size and checksum:
/// the part's own file (hard-linked, and checked with the part), or a
/// copy with the right bytes.
fn holds_shard(src: &Path, out: &Path, e: &ShardEntry) -> bool {
    use std::os::unix::fs::MetadataExt;
    let dst = out.join(&e.file);
    let Ok(md) = fs::metadata(&dst) else {
        return false;
    };
    let linked = fs::metadata(src).is_ok_and(|s| s.dev() == md.dev() && s.ino() == md.ino());
    linked
        || (md.len() == e.bytes
            && fs::read(&dst).is_ok_and(|b| format!("{:016x}", xxh3_64(&b)) == e.xxh3))
}

/// Writes a checked plan into `out` and commits it; returns (linked,
/// copied, kept) or `None` when `out` already holds exactly this cache.
fn commit_plan(plan: &Plan, out: &Path, links: bool) -> Result<Option<(usize, usize, usize)>> {
    let outs = shown(out);
    if out.join(PART_FILE).exists() {
        return Err(refuse(
            &outs,
            "is a part's directory, not a place for the merged cache; merge into another directory",
        ));
    }
    let _lock = lock_dir(out)?;
    let mpath = out.join(MANIFEST_FILE);
    if mpath.exists() {
        let bytes = fs::read(&mpath).map_err(|e| CacheError::io(&mpath, "read", e))?;
        let existing = Manifest::parse(&mpath, &bytes).map_err(|e| {
            refuse(&outs, format!("holds a damaged cache ({}); it is left as it is: merge into another directory, or remove it first", plain(&e)))
        })?;
        if existing.id == plan.manifest.id {
            // The same merge: done, unless a shard has gone or changed
            // since; those are placed again from the (checked) parts.
            let damaged: Vec<_> = plan
                .shards
                .iter()
                .filter(|(dir, done)| !holds_shard(&dir.join(&done.entry.file), out, &done.entry))
                .collect();
            if damaged.is_empty() {
                return Ok(None);
            }
            let (mut linked, mut copied) = (0, 0);
            for (dir, done) in &damaged {
                match place(&dir.join(&done.entry.file), out, &done.entry, links)? {
                    Placed::Linked => linked += 1,
                    Placed::Copied | Placed::Kept => copied += 1,
                }
            }
            crate::fsutil::fsync_dir(out)?;
            return Ok(Some((linked, copied, plan.shards.len() - damaged.len())));
        }
        let why = match BuildSpec::from_manifest(&existing).first_difference(&plan.spec) {
            Some((field, there, here)) => format!("its {field} is {there}, the parts' {here}"),
            None => format!(
                "same settings, but its id {} is not the merge's {}",
                existing.id, plan.manifest.id
            ),
        };
        return Err(refuse(
            &outs,
            format!("holds another cache ({why}); it is left as it is: merge into another directory, or remove it first"),
        ));
    }
    let bpath = out.join(BUILD_FILE);
    if let Some(b) = fs::read(&bpath)
        .ok()
        .and_then(|b| serde_json::from_slice::<BuildSpec>(&b).ok())
    {
        if let Some((field, there, here)) = b.first_difference(&plan.spec) {
            return Err(refuse(
                &outs,
                format!("holds an unfinished build with other settings (its {field} is {there}, the parts' {here}); merge into another directory, or remove it first"),
            ));
        }
    }
    claim_dir(out, &plan.spec, false)?;
    // Temp files of a copy that an earlier, killed merge left.
    if let Ok(entries) = fs::read_dir(out) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("shard-") && name.ends_with(".tmp") {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| CacheError::io(&p, "remove partial file", e))?;
            }
        }
    }
    let (mut linked, mut copied, mut kept) = (0, 0, 0);
    for (dir, done) in &plan.shards {
        match place(&dir.join(&done.entry.file), out, &done.entry, links)? {
            Placed::Linked => linked += 1,
            Placed::Copied => copied += 1,
            Placed::Kept => kept += 1,
        }
    }
    crate::fsutil::fsync_dir(out)?;
    commit(
        out,
        MANIFEST_FILE,
        &plan.manifest.to_json()?,
        &plan.manifest.shards,
    )?;
    Ok(Some((linked, copied, kept)))
}

/// Merges the parts in `parts` (directories written by part builds) into
/// one cache at `out`; see the module documentation for the checks and the
/// protocol. Refuses missing, duplicated, overlapping, foreign, unfinished
/// or damaged parts, naming the part and what is wrong, and an `out`
/// holding any other cache; nothing is written before every check passed.
pub fn merge_parts(parts: &[PathBuf], out: &Path) -> Result<MergeReport> {
    merge_parts_with(parts, out, true)
}

/// [`merge_parts`], copying every shard when `links` is false (as it does
/// where the file system cannot link).
pub(crate) fn merge_parts_with(parts: &[PathBuf], out: &Path, links: bool) -> Result<MergeReport> {
    let first = parts
        .first()
        .ok_or_else(|| refuse("merge", "no part directories given"))?;
    let plans = match layout(first)? {
        Layout::Plain => {
            if holds_view_set(out)? {
                return Err(refuse(
                    shown(out),
                    "holds a view set; merge the cache of the plain images into another directory",
                ));
            }
            vec![(out.to_path_buf(), plan_merge(parts)?)]
        }
        Layout::Views(k) => {
            refuse_foreign_dir(out)?;
            plan_views(parts, out, k)?
        }
    };
    let mut report = MergeReport {
        caches: Vec::new(),
        parts: parts.len(),
        shards: 0,
        linked: 0,
        copied: 0,
        kept: 0,
        already_merged: 0,
    };
    for (dir, plan) in plans {
        match commit_plan(&plan, &dir, links)? {
            Some((l, c, k)) => {
                report.linked += l;
                report.copied += c;
                report.kept += k;
            }
            None => report.already_merged += 1,
        }
        report.shards += plan.manifest.shards.len();
        report.caches.push((dir, plan.manifest));
    }
    Ok(report)
}

/// Plans every view of a view set's parts (each part directory holding
/// `view-0` .. `view-{k-1}`), checking that the views agree with each other.
fn plan_views(parts: &[PathBuf], out: &Path, k: u64) -> Result<Vec<(PathBuf, Plan)>> {
    if out.join(MANIFEST_FILE).exists() {
        return Err(refuse(
            shown(out),
            "holds a cache of the plain images; merge the view set into another directory",
        ));
    }
    for p in parts {
        match layout(p)? {
            Layout::Views(n) if n == k => {}
            Layout::Views(n) => {
                return Err(refuse(
                    shown(p),
                    format!(
                        "foreign part: holds {n} views, but {} holds {k}",
                        parts[0].display()
                    ),
                ))
            }
            Layout::Plain => {
                return Err(refuse(
                    shown(p),
                    format!(
                        "holds a part of a cache of the plain images, but {} a part of a view set",
                        parts[0].display()
                    ),
                ))
            }
        }
    }
    let mut plans: Vec<(PathBuf, Plan)> = Vec::with_capacity(k as usize);
    for v in 0..k {
        let dirs: Vec<PathBuf> = parts.iter().map(|p| view_dir(p, v)).collect();
        let plan = plan_merge(&dirs)?;
        let view = plan.spec.dataset.view.as_ref().map(|i| (i.view, i.views));
        if view != Some((v, k)) {
            return Err(refuse(
                shown(&dirs[0]),
                format!("holds {view:?} as (view, views), expected ({v}, {k}): the directory of view {v} holds another view"),
            ));
        }
        if let Some((_, first)) = plans.first() {
            let mut same_view = plan.spec.clone();
            same_view.dataset.view = first.spec.dataset.view.clone();
            if let Some((field, here, there)) = same_view.first_difference(&first.spec) {
                return Err(refuse(
                    shown(&dirs[0]),
                    format!("foreign part: view {v}'s {field} is {here}, but view 0's is {there}; the views of a set come from one build"),
                ));
            }
        }
        plans.push((view_dir(out, v), plan));
    }
    Ok(plans)
}

#[cfg(test)]
mod tests;

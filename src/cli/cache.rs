//! `distill cache build|import|merge|ensemble|inspect|verify`: phase one on the command line.
//!
//! `build --part K/N` (or `auto/N`, the index from a scheduler's array
//! variable) builds one part of a cache into `OUT/part-K-of-N`; `merge`
//! joins the parts; `verify` checks a cache or a part; `import --view-set`
//! builds a view set from an external teacher's logits; `ensemble` combines
//! several teachers' caches into one.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use distill::cache::ensemble::{ensemble_caches, Combine, EnsembleOptions};
use distill::cache::merge::{is_part_dir, merge_parts, verify_part};
use distill::cache::part::part_dir;
use distill::cache::views::{view_dir, ViewSetSummary, ViewStats};
use distill::cache::{Encoding, PartSpec, WriterOptions};
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::Backend;
use distill::teacher::{
    build_cache, build_cache_part, build_view_set, build_view_set_part, import_logits_file,
    import_view_set, BuildOptions, LogitsImport, PartBuildReport, ViewSetSpec,
};
use distill::train::sources::open_views;
use distill::train::validation::held_out_by_teacher;

use super::device::DeviceArgs;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[
    ("batch_size", "--batch"),
    ("records_per_block", "--block-records"),
];

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Run a teacher over a dataset split once and write its outputs.
    Build(BuildArgs),
    /// Build a cache from teacher logits computed elsewhere (.npy or safetensors, [N, C]).
    Import(ImportArgs),
    /// Join the parts of a build (`cache build --part K/N`) into one cache:
    /// checks every part and shard, hard-links (or copies) the shards and
    /// commits one manifest; the result equals a single build byte for byte.
    Merge(MergeArgs),
    /// Combine several teachers' caches (or view sets) over the same data
    /// into one cache: the mean of their probabilities (or logits) at -T.
    Ensemble(EnsembleArgs),
    /// Print a cache's manifest in human terms.
    Inspect {
        /// Cache directory.
        cache: PathBuf,
    },
    /// Check every checksum; exits 2 naming the shard and block on a mismatch.
    Verify {
        /// Cache directory (or the directory of one part of a build).
        cache: PathBuf,
    },
}

#[derive(Args, Clone)]
pub struct StorageArgs {
    /// Temperature T of the stored log-probabilities.
    #[arg(long, alias = "t", short = 'T', allow_negative_numbers = true, value_parser = super::parse_temperature)]
    temperature: f32,
    /// f32, f16, q8, hq:N, topk:K, topkp:K, sampled:S or sampled:K+S (FORMAT.md).
    #[arg(long, default_value = "f16")]
    encoding: String,
    /// Output cache directory.
    #[arg(long)]
    out: PathBuf,
    /// Target shard size in KiB (default 64 MiB).
    #[arg(long, default_value_t = 65536)]
    shard_kib: u64,
    /// Records per compressed block (0: automatic, about 1 MiB of records
    /// and at most 4096). A shard holds whole blocks, so small shards (for
    /// --part on a small dataset) need small blocks too.
    #[arg(long, default_value_t = 0)]
    block_records: u32,
    /// zstd compression level, -7..=22 (negative: faster, larger).
    #[arg(long, default_value_t = 3, allow_negative_numbers = true)]
    zstd_level: i32,
    /// Replace an existing cache built with other settings, or a view set
    /// with a cache of the plain images (or the reverse), which is then
    /// removed once the new one has committed.
    #[arg(long)]
    overwrite: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Teacher model directory (model.safetensors, with model.json or
    /// prune.json beside it) or a .safetensors file.
    #[arg(long)]
    teacher: PathBuf,
    /// Dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// train or test.
    #[arg(long, default_value = "train", value_parser = super::parse_split)]
    split: Split,
    /// Teacher batch size.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Run the teacher on augmented images: flip, shift=N, crop=N, warp=A,
    /// cutout=S, noise=S, mixup=A, cutmix=A, comma-separated (e.g. flip,shift=2,mixup=0.2; README,
    /// "Augmentation").
    /// Writes a view set: OUT/view-0 ... OUT/view-{K-1}, one cache per view;
    /// `train --cache OUT` then shows the student the same augmented image
    /// the teacher saw, view `epoch % K` in each epoch.
    #[arg(long)]
    augment: Option<String>,
    /// Number of augmented views (with --augment).
    #[arg(long, default_value_t = 1)]
    views: u64,
    /// Seed of the augmentation draws (with --augment; default 0).
    #[arg(long, requires = "augment")]
    augment_seed: Option<u64>,
    /// Build only part K of N (K = 0..N-1): a contiguous range of whole
    /// shards, written to OUT/part-K-of-N; `cache merge` joins the parts.
    /// auto/N takes K from SLURM_ARRAY_TASK_ID (a Slurm job array) or
    /// JOB_COMPLETION_INDEX (a Kubernetes Indexed Job).
    #[arg(long, value_name = "K/N")]
    part: Option<String>,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
pub struct MergeArgs {
    /// The part directories (OUT/part-K-of-N of `cache build --part`), in any order.
    #[arg(required = true, value_name = "PART_DIR")]
    parts: Vec<PathBuf>,
    /// Where the merged cache goes: a new or empty directory, or one that
    /// already holds this merged cache (then nothing is written).
    #[arg(long)]
    out: PathBuf,
    /// Only the summary line.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct EnsembleArgs {
    /// The member caches or view sets (at least two), built over the same
    /// data (and, for view sets, the same views).
    #[arg(required = true, value_name = "CACHE")]
    members: Vec<PathBuf>,
    /// prob: mean of the probabilities (the classic ensemble); logit: mean
    /// of the logits, renormalised (commutes with re-tempering).
    #[arg(long, default_value = "prob")]
    combine: String,
    /// One weight per member, comma-separated, in order (default: equal).
    #[arg(long, value_delimiter = ',', allow_negative_numbers = true)]
    weights: Vec<f64>,
    /// Cross-fitting: each sample combines only the members whose teacher
    /// held it out of training (its validation split, e.g. `train
    /// --val-fold K/N`, read from the teacher's model.json); samples no
    /// teacher held out combine all members.
    #[arg(long)]
    out_of_fold: bool,
    /// The members' teacher directories, in member order (with
    /// --out-of-fold; default: each cache's recorded teacher source).
    #[arg(long, value_delimiter = ',', requires = "out_of_fold")]
    teacher_dirs: Vec<PathBuf>,
    #[command(flatten)]
    storage: StorageArgs,
}

#[derive(Args)]
pub struct ImportArgs {
    /// Raw teacher logits, [N, C] float (.npy or .safetensors); with
    /// --view-set, one file per view in view order (repeat the flag). A .npy
    /// file is memory-mapped while it is read: do not change it meanwhile.
    #[arg(long, required = true)]
    logits: Vec<PathBuf>,
    /// Build a view set (OUT/view-0 ...) from one logits file per view of
    /// the images `distill views export` wrote with the same --augment,
    /// --augment-seed and --views (the number of --logits files).
    #[arg(long, requires = "augment")]
    view_set: bool,
    /// The augmentation the views were drawn with (with --view-set).
    #[arg(long, requires = "view_set")]
    augment: Option<String>,
    /// Seed of the augmentation draws (with --view-set; default 0).
    #[arg(long, requires = "view_set")]
    augment_seed: Option<u64>,
    /// Tensor name inside a safetensors file (default: its only tensor).
    #[arg(long)]
    tensor: Option<String>,
    /// A description of the teacher, recorded in the manifest.
    #[arg(long, default_value = "imported")]
    teacher_spec: String,
    /// Dataset directory the logits were computed on.
    #[arg(long)]
    data: PathBuf,
    /// train or test.
    #[arg(long, default_value = "train", value_parser = super::parse_split)]
    split: Split,
    #[command(flatten)]
    storage: StorageArgs,
}

pub fn run(cmd: CacheCommand) -> Result<()> {
    match cmd {
        CacheCommand::Build(a) => {
            let dev = a.device.device.clone();
            super::device::with_device(&dev, super::device::Dispatch::CacheBuild(a))
        }
        CacheCommand::Import(a) => import(a),
        CacheCommand::Merge(a) => merge(a),
        CacheCommand::Ensemble(a) => ensemble(a),
        CacheCommand::Inspect { cache } => {
            let set = open_views(&cache)?;
            if let Some(v) = set.view_info() {
                println!(
                    "view set {}: {} views of augment {} (seed {})",
                    cache.display(),
                    v.views,
                    v.augment,
                    v.seed
                );
            }
            for (k, reader) in set.views().iter().enumerate() {
                match set.view_info() {
                    Some(_) => println!("view {k}: {}", view_dir(&cache, k as u64).display()),
                    None => println!("cache {}", cache.display()),
                }
                if let Some(n) = &reader.manifest().teacher.normalization {
                    println!(
                        "teacher input normalisation: mean {:?}, std {:?}",
                        n.mean(),
                        n.std()
                    );
                }
                println!("{}", reader.stats());
            }
            if let Some(summary) = set.summary() {
                println!("{}", summary.describe());
                if let Some(w) = summary.agreement_warning() {
                    println!("warning: {w}");
                }
            }
            Ok(())
        }
        CacheCommand::Verify { cache } if is_part_dir(&cache) => {
            for r in verify_part(&cache)? {
                println!(
                    "ok: part {} (samples {}..{}, shards {}..{}), {} blocks, {} bytes verified ({})",
                    r.part,
                    r.range.first_sample,
                    r.range.end_sample,
                    r.range.first_shard,
                    r.range.end_shard,
                    r.blocks,
                    r.bytes,
                    r.dir.display()
                );
            }
            Ok(())
        }
        CacheCommand::Verify { cache } => {
            let set = open_views(&cache)?;
            for (k, reader) in set.views().iter().enumerate() {
                let report = reader.verify()?;
                let dir = match set.view_info() {
                    Some(_) => view_dir(&cache, k as u64),
                    None => cache.clone(),
                };
                println!(
                    "ok: {} shards, {} blocks, {} samples, {} bytes verified ({})",
                    report.shards,
                    report.blocks,
                    report.samples,
                    report.bytes,
                    dir.display()
                );
            }
            Ok(())
        }
    }
}

/// The storage flags as the library's build options.
fn build_options(a: &StorageArgs, batch_size: usize, source: String) -> Result<BuildOptions> {
    let encoding: Encoding = a.encoding.parse().map_err(|e| Error::Config {
        field: "--encoding".into(),
        message: format!("{e}"),
    })?;
    if let Err(message) = distill::numeric::check_temperature(a.temperature) {
        return Err(Error::Config {
            field: "--temperature".into(),
            message,
        });
    }
    if a.shard_kib == 0 || a.shard_kib > 1 << 24 {
        return Err(Error::Config {
            field: "--shard-kib".into(),
            message: format!("{} must be between 1 and {}", a.shard_kib, 1 << 24),
        });
    }
    let writer = WriterOptions {
        shard_target_bytes: a.shard_kib << 10,
        records_per_block: a.block_records,
        zstd_level: a.zstd_level,
        overwrite: a.overwrite,
    };
    Ok(BuildOptions {
        temperature: a.temperature,
        encoding,
        writer,
        batch_size,
        teacher_source: source,
        progress: !a.quiet,
        view: None,
    })
}

fn report(manifest: &distill::cache::Manifest, dir: &Path, secs: f64, quiet: bool) {
    report_cache(manifest, dir, secs);
    if !quiet {
        if let Some(acc) = manifest.teacher_stats.accuracy {
            eprintln!(
                "teacher accuracy against the stored labels: {:.2}%",
                100.0 * acc
            );
        }
    }
}

/// One finished view of a view set: its cache line, and the teacher's
/// agreement with the labels on it, where a mixed image counts when the
/// teacher names either image's label (the stored label is each image's
/// own, so the plain accuracy would call a teacher that names the partner
/// wrong).
fn report_view(
    manifest: &distill::cache::Manifest,
    dir: &Path,
    secs: f64,
    quiet: bool,
    stats: &ViewStats,
) {
    report_cache(manifest, dir, secs);
    if let (false, Some(agreement)) = (quiet, stats.agreement) {
        eprintln!(
            "teacher agreement with the labels on view {}: {:.2}%",
            stats.view,
            100.0 * agreement
        );
    }
}

fn report_cache(manifest: &distill::cache::Manifest, dir: &Path, secs: f64) {
    let f = &manifest.fidelity;
    // A sparse record's forward KL is infinite; the writer records the reverse one.
    let kl = match manifest.encoding.is_sparse() {
        true => "KL(decoded || exact)",
        false => "KL(exact || decoded)",
    };
    println!(
        "cache {} ({} samples, {} classes, T {}, {}): {:.1} bytes/sample, mean {kl} {:.3e}, max {:.3e}, top-1 agreement {:.4}%, {:.1}s",
        dir.display(),
        manifest.dataset.num_samples,
        manifest.num_classes,
        manifest.temperature,
        manifest.encoding,
        f.bytes_per_sample,
        f.mean_kl,
        f.max_kl,
        100.0 * f.top1_agreement,
        secs
    );
}

/// `distill cache build` on a device.
pub fn build<D: Backend>(dev: D, a: BuildArgs) -> Result<()> {
    let split = a.split;
    let opts = build_options(&a.storage, a.batch, a.teacher.display().to_string())?;
    let augment = a.augment.as_deref().map(Augment::parse).transpose()?;
    if a.views == 0 || (augment.is_none() && a.views != 1) {
        return Err(Error::Config {
            field: "--views".into(),
            message: format!(
                "{} views: give --augment with --views K (K >= 1); without augmentation there is one view, the plain images",
                a.views
            ),
        });
    }
    let part = a.part.as_deref().map(parse_part).transpose()?;
    let data = Dataset::open(&a.data, split)?;
    let teacher = super::load_model(&a.teacher, dev)?;
    let quiet = a.storage.quiet;
    if let Some(part) = part {
        let dir = part_dir(&a.storage.out, part);
        let on_part = |dir: &Path, r: &PartBuildReport| report_part(r, dir);
        match augment {
            None => on_part(&dir, &build_cache_part(&teacher, &data, &dir, &opts, part)?),
            Some(augment) => {
                let set = ViewSetSpec {
                    augment,
                    seed: a.augment_seed.unwrap_or(0),
                    views: a.views,
                };
                build_view_set_part(&teacher, &data, &dir, &opts, &set, part, on_part)?;
            }
        }
        if !quiet {
            eprintln!(
                "when all {} parts are built: distill cache merge {}/part-*-of-{} --out CACHE",
                part.count,
                a.storage.out.display(),
                part.count
            );
        }
        return Ok(());
    }
    match augment {
        None => {
            let r = build_cache(&teacher, &data, &a.storage.out, &opts)?;
            report(&r.manifest, &a.storage.out, r.seconds, quiet);
        }
        Some(augment) => {
            let set = ViewSetSpec {
                augment,
                seed: a.augment_seed.unwrap_or(0),
                views: a.views,
            };
            let summary =
                build_view_set(&teacher, &data, &a.storage.out, &opts, &set, |dir, r, v| {
                    report_view(&r.manifest, dir, r.seconds, quiet, v)
                })?;
            report_view_set(&summary, &a.storage.out);
        }
    }
    Ok(())
}

/// The cost and readability of a view set, and the warning when its
/// teacher cannot read its views.
fn report_view_set(summary: &ViewSetSummary, out: &Path) {
    let pct = |a: Option<f64>| a.map_or("unknown".to_string(), |a| format!("{:.2}%", 100.0 * a));
    println!(
        "view set {} ({} views of {}): {:.1} bytes/sample/view, {}; teacher agreement with the labels {} on the plain images, {} mean over views",
        out.display(),
        summary.views,
        summary.augment,
        summary.bytes_per_sample_per_view(),
        summary
            .build_seconds()
            .map_or("imported".to_string(), |s| format!("built in {s:.1}s")),
        pct(summary.clean_agreement),
        pct(summary.mean_agreement()),
    );
    if let Some(w) = summary.agreement_warning() {
        eprintln!("warning: {w}");
    }
}

/// `--part K/N` or `auto/N` (K from the scheduler's array variable).
fn parse_part(s: &str) -> Result<PartSpec> {
    let bad = |message: String| Error::Config {
        field: "--part".into(),
        message,
    };
    let (k, n) = s
        .split_once('/')
        .ok_or_else(|| bad(format!("'{s}' is not K/N or auto/N (e.g. 3/8)")))?;
    let count: u64 = n
        .parse()
        .map_err(|_| bad(format!("'{n}' in '{s}' is not a number of parts")))?;
    let index = if k == "auto" {
        part_index_from_env(count).map_err(bad)?
    } else {
        k.parse()
            .map_err(|_| bad(format!("'{k}' in '{s}' is not a part index or auto")))?
    };
    PartSpec::new(index, count).map_err(bad)
}

/// The array variables `--part auto/N` reads, with how to set the range right.
const PART_INDEX_VARS: [(&str, &str); 2] = [
    (
        "SLURM_ARRAY_TASK_ID",
        "submit the array as --array=0-{last}",
    ),
    (
        "JOB_COMPLETION_INDEX",
        "give the Indexed Job completions: {count}",
    ),
];

/// The part index from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX.
fn part_index_from_env(count: u64) -> std::result::Result<u64, String> {
    let mut found: Option<(&str, u64)> = None;
    for (var, advice) in PART_INDEX_VARS {
        let Ok(value) = std::env::var(var) else {
            continue;
        };
        let index: u64 = value.trim().parse().map_err(|_| {
            format!(
                "auto/{count} reads the part index from {var}, which is '{value}', not a number"
            )
        })?;
        if index >= count {
            let advice = advice
                .replace("{last}", &count.saturating_sub(1).to_string())
                .replace("{count}", &count.to_string());
            return Err(format!(
                "{var} is {index}, but there are {count} parts (indices 0 to {}); {advice}",
                count.saturating_sub(1)
            ));
        }
        if let Some((other, i)) = found {
            if i != index {
                return Err(format!(
                    "{other} is {i} but {var} is {index}; unset the one that does not belong to this job"
                ));
            }
        }
        found = Some((var, index));
    }
    found.map(|(_, i)| i).ok_or_else(|| {
        format!(
            "auto/{count} reads the part index from SLURM_ARRAY_TASK_ID (a Slurm job array) or JOB_COMPLETION_INDEX (a Kubernetes Indexed Job), and neither is set; give the index as K/{count}"
        )
    })
}

fn report_part(r: &PartBuildReport, dir: &Path) {
    let range = r.part.range();
    let bytes: u64 = r.part.shards.iter().map(|s| s.bytes).sum();
    println!(
        "part {} of cache {} (samples {}..{}, shards {}..{} of {}): {} shards, {} bytes, {:.1}s",
        r.part.part(),
        dir.display(),
        range.first_sample,
        range.end_sample,
        range.first_shard,
        range.end_shard,
        r.part.settings.num_shards(),
        r.part.shards.len(),
        bytes,
        r.seconds
    );
}

fn merge(a: MergeArgs) -> Result<()> {
    let start = Instant::now();
    let r = merge_parts(&a.parts, &a.out)?;
    let secs = start.elapsed().as_secs_f64();
    if r.already_merged == r.caches.len() {
        println!(
            "{} already holds the merge of these {} parts; nothing to do",
            a.out.display(),
            r.parts
        );
        return Ok(());
    }
    println!(
        "merged {} parts into {}: {} shards ({} linked, {} copied, {} already there)",
        r.parts,
        a.out.display(),
        r.shards,
        r.linked,
        r.copied,
        r.kept
    );
    for (dir, manifest) in &r.caches {
        report(manifest, dir, secs, a.quiet);
    }
    Ok(())
}

fn ensemble(a: EnsembleArgs) -> Result<()> {
    let opts = build_options(&a.storage, 1, String::new())?;
    let combine: Combine = a.combine.parse().map_err(|message| Error::Config {
        field: "--combine".into(),
        message,
    })?;
    let opts = EnsembleOptions {
        temperature: opts.temperature,
        encoding: opts.encoding,
        writer: opts.writer,
        combine,
        weights: a.weights.clone(),
        held_out: match a.out_of_fold {
            true => Some(held_out_sets(&a.members, &a.teacher_dirs)?),
            false => None,
        },
    };
    let start = Instant::now();
    let quiet = a.storage.quiet;
    // SAFETY: the members are only read; the command's contract (as for
    // training) is that no one rewrites a cache while it is read.
    let r = unsafe {
        ensemble_caches(&a.members, &a.storage.out, &opts, |dir, m| {
            report(m, dir, start.elapsed().as_secs_f64(), quiet)
        })
    }?;
    if let Some(summary) = &r.summary {
        report_view_set(summary, &a.storage.out);
    }
    if a.out_of_fold {
        let by: Vec<String> = (a.members.iter().zip(&r.held_out_by_member))
            .map(|(m, k)| format!("{} {k}", m.display()))
            .collect();
        println!(
            "out of fold: samples held out by each member's teacher: {}; by none (combined from all): {}",
            by.join(", "),
            r.held_out_by_none
        );
    }
    if let Some(agree) = r.agreement {
        let members: Vec<String> = (a.members.iter().zip(&r.member_agreement))
            .map(|(m, g)| format!("{} {:.2}%", m.display(), 100.0 * g.unwrap_or(0.0)))
            .collect();
        println!(
            "ensemble agrees with the labels on {:.2}% of the records (members: {})",
            100.0 * agree,
            members.join(", ")
        );
    }
    Ok(())
}

/// Per member, the samples its teacher held out of training (--out-of-fold).
fn held_out_sets(members: &[PathBuf], teacher_dirs: &[PathBuf]) -> Result<Vec<Vec<bool>>> {
    if !teacher_dirs.is_empty() && teacher_dirs.len() != members.len() {
        return Err(Error::Config {
            field: "--teacher-dirs".into(),
            message: format!(
                "{} directories given for {} member caches: give one per member, in order",
                teacher_dirs.len(),
                members.len()
            ),
        });
    }
    let mut sets = Vec::with_capacity(members.len());
    for (k, member) in members.iter().enumerate() {
        let set = open_views(member)?;
        let m = set.first().manifest();
        if m.dataset.split != "train" {
            return Err(Error::Config {
                field: "--out-of-fold".into(),
                message: format!(
                    "{} covers the {} split; out-of-fold targets are for the training split a teacher was trained on",
                    member.display(),
                    m.dataset.split
                ),
            });
        }
        let dir = match teacher_dirs.get(k) {
            Some(d) => d.clone(),
            None => PathBuf::from(&m.teacher.source),
        };
        let n = usize::try_from(m.dataset.num_samples).map_err(|_| Error::Config {
            field: "--out-of-fold".into(),
            message: format!("{}: too many samples for this platform", member.display()),
        })?;
        let split = held_out_by_teacher(&dir, &m.teacher.fingerprint, &m.dataset.fingerprint, n)?;
        sets.push((0..n).map(|i| split.holds_out(i)).collect());
    }
    Ok(sets)
}

fn import(a: ImportArgs) -> Result<()> {
    let split = a.split;
    let opts = build_options(&a.storage, 1, String::new())?;
    let data = Dataset::open(&a.data, split)?;
    let what: Vec<LogitsImport> = (a.logits.iter())
        .map(|logits| LogitsImport {
            logits: logits.clone(),
            tensor: a.tensor.clone(),
            teacher_spec: a.teacher_spec.clone(),
        })
        .collect();
    let start = Instant::now();
    if let (true, Some(augment)) = (a.view_set, &a.augment) {
        let set = ViewSetSpec {
            augment: Augment::parse(augment)?,
            seed: a.augment_seed.unwrap_or(0),
            views: what.len() as u64,
        };
        let quiet = a.storage.quiet;
        // SAFETY: the logits files are not modified during the import (--logits' help).
        let summary = unsafe {
            import_view_set(&what, &data, &a.storage.out, &opts, &set, |dir, m, v| {
                report_view(m, dir, start.elapsed().as_secs_f64(), quiet, v)
            })
        }?;
        report_view_set(&summary, &a.storage.out);
        return Ok(());
    }
    let [what] = &what[..] else {
        return Err(Error::Config {
            field: "--logits".into(),
            message: format!(
                "{} files given; one builds a cache, several need --view-set",
                what.len()
            ),
        });
    };
    // SAFETY: the logits file is not modified during the import (--logits' help).
    let manifest = unsafe { import_logits_file(what, &data, &a.storage.out, &opts) }?;
    report(
        &manifest,
        &a.storage.out,
        start.elapsed().as_secs_f64(),
        a.storage.quiet,
    );
    Ok(())
}

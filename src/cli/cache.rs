//! `distill cache build|import|inspect|verify`: phase one on the command line
//! (`import --view-set` builds a view set from an external teacher's logits).

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Args, Subcommand};
use distill::cache::views::view_dir;
use distill::cache::{Encoding, WriterOptions};
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::Backend;
use distill::teacher::{
    build_cache, build_view_set, import_logits_file, import_view_set, BuildOptions, LogitsImport,
    ViewSetSpec,
};
use distill::train::sources::open_views;

use super::device::DeviceArgs;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[("batch_size", "--batch")];

#[derive(Subcommand)]
pub enum CacheCommand {
    /// Run a teacher over a dataset split once and write its outputs.
    Build(BuildArgs),
    /// Build a cache from teacher logits computed elsewhere (.npy or safetensors, [N, C]).
    Import(ImportArgs),
    /// Print a cache's manifest in human terms.
    Inspect {
        /// Cache directory.
        cache: PathBuf,
    },
    /// Check every checksum; exits 2 naming the shard and block on a mismatch.
    Verify {
        /// Cache directory.
        cache: PathBuf,
    },
}

#[derive(Args, Clone)]
pub struct StorageArgs {
    /// Temperature T of the stored log-probabilities.
    #[arg(long, alias = "t", short = 'T')]
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
    /// Records per compressed block (0: automatic, about 1 MiB of records).
    #[arg(long, default_value_t = 0)]
    block_records: u32,
    /// zstd compression level.
    #[arg(long, default_value_t = 3)]
    zstd_level: i32,
    /// Replace an existing cache built with other settings.
    #[arg(long)]
    overwrite: bool,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args)]
pub struct BuildArgs {
    /// Teacher model directory (model.safetensors + model.json).
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
    /// Run the teacher on augmented images: flip, shift=N or flip,shift=N.
    /// Writes a view set: OUT/view-0 ... OUT/view-{K-1}, one cache per view;
    /// `train --cache OUT` then shows the student the same augmented image
    /// the teacher saw, view `epoch % K` in each epoch.
    #[arg(long)]
    augment: Option<String>,
    /// Number of augmented views (with --augment).
    #[arg(long, default_value_t = 1)]
    views: u64,
    /// Seed of the augmentation draws (with --augment).
    #[arg(long, default_value_t = 0)]
    augment_seed: u64,
    #[command(flatten)]
    storage: StorageArgs,
    #[command(flatten)]
    device: DeviceArgs,
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
    /// Seed of the augmentation draws (with --view-set).
    #[arg(long, default_value_t = 0)]
    augment_seed: u64,
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
                println!("{}", reader.stats());
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
    if !(a.temperature.is_finite() && a.temperature > 0.0 && a.temperature <= 1000.0) {
        return Err(Error::Config {
            field: "--temperature".into(),
            message: format!("{} must be a number in (0, 1000]", a.temperature),
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
    if !quiet {
        if let Some(acc) = manifest.teacher_stats.accuracy {
            eprintln!(
                "teacher accuracy against the stored labels: {:.2}%",
                100.0 * acc
            );
        }
    }
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
    let data = Dataset::open(&a.data, split)?;
    let teacher = super::load_model(&a.teacher, dev)?;
    let quiet = a.storage.quiet;
    match augment {
        None => {
            let r = build_cache(&teacher, &data, &a.storage.out, &opts)?;
            report(&r.manifest, &a.storage.out, r.seconds, quiet);
        }
        Some(augment) => {
            let set = ViewSetSpec {
                augment,
                seed: a.augment_seed,
                views: a.views,
            };
            build_view_set(&teacher, &data, &a.storage.out, &opts, &set, |dir, r| {
                report(&r.manifest, dir, r.seconds, quiet)
            })?;
        }
    }
    Ok(())
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
            seed: a.augment_seed,
            views: what.len() as u64,
        };
        let quiet = a.storage.quiet;
        // SAFETY: the logits files are not modified during the import (--logits' help).
        return unsafe {
            import_view_set(&what, &data, &a.storage.out, &opts, &set, |dir, m| {
                report(m, dir, start.elapsed().as_secs_f64(), quiet)
            })
        };
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

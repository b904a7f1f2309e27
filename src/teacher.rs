//! Running the teacher: over a whole dataset split into a cache (phase one),
//! batched on the chosen device, resuming an interrupted build.
//!
//! The cache module knows nothing of models; this module joins the two: it
//! feeds batches of inputs to the teacher, turns logits into log-probabilities
//! at temperature T, and pushes them to a [`CacheWriter`] in sample order.
//!
//! - [`build_cache`]: one cache of a split (plain images, or one augmented view);
//! - [`build_view_set`]: a set of caches, one per augmented view;
//! - [`build_cache_part`], [`build_view_set_part`]: part `K` of `N` of
//!   either (a contiguous, shard-aligned range of samples; one task of a
//!   scheduler's array), joined by `cache::merge::merge_parts`;
//! - [`import_logits_file`]: a cache from logits computed elsewhere (an
//!   external teacher), read from `.npy` or safetensors;
//! - [`teacher_targets`]: the function every teacher target goes through,
//!   used here and by the trainer's online teacher, so the two agree.

use std::path::{Path, PathBuf};
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_128;

use crate::cache::manifest::MANIFEST_FILE;
use crate::cache::views::view_dir;
use crate::cache::{
    import_logits, log_softmax_tempered, BuildSpec, CacheMeta, CacheWriter, DatasetInfo, Encoding,
    Manifest, PartManifest, PartRange, PartSpec, TeacherInfo, ViewInfo, WriterOptions,
};
use crate::data::augment::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::compat::check_compatible;
use crate::model::{Backend, Network};

/// How to build a cache from a teacher.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub temperature: f32,
    pub encoding: Encoding,
    pub writer: WriterOptions,
    /// Teacher batch size.
    pub batch_size: usize,
    /// Where the teacher came from (recorded in the manifest).
    pub teacher_source: String,
    /// Print progress lines to stderr.
    pub progress: bool,
    /// Run the teacher on this augmented view of each sample instead of
    /// the plain image (recorded in the manifest).
    pub view: Option<ViewInfo>,
}

/// What a build did.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub manifest: Manifest,
    /// Samples already present from an interrupted build.
    pub resumed_from: u64,
    pub seconds: f64,
}

/// The manifest metadata for `teacher` over `data`.
pub fn cache_meta<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    opts: &BuildOptions,
) -> CacheMeta {
    CacheMeta {
        teacher: TeacherInfo {
            spec: teacher.spec().to_string(),
            fingerprint: teacher.fingerprint(),
            source: opts.teacher_source.clone(),
            normalization: teacher.normalization().cloned(),
        },
        dataset: DatasetInfo {
            fingerprint: data.fingerprint().0.clone(),
            split: data.split().to_string(),
            num_samples: data.len() as u64,
            view: opts.view.clone(),
        },
        num_classes: teacher.spec().num_classes(),
        has_labels: data.labels().is_some(),
        temperature: opts.temperature,
        encoding: opts.encoding,
    }
}

/// Runs `teacher` over every sample of `data` and writes the cache at `dir`
/// (resuming a build that was interrupted).
pub fn build_cache<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    dir: &Path,
    opts: &BuildOptions,
) -> Result<BuildReport> {
    check_build(teacher, data, opts)?;
    let start = Instant::now();
    let mut writer =
        CacheWriter::create_or_resume(dir, cache_meta(teacher, data, opts), opts.writer.clone())?;
    let resumed_from = run_teacher(teacher, data, &mut writer, opts)?;
    let manifest = writer.finish()?;
    Ok(BuildReport {
        manifest,
        resumed_from,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What a build of one part did.
#[derive(Debug, Clone)]
pub struct PartBuildReport {
    /// The committed part (its `part.json`).
    pub part: PartManifest,
    /// Samples already present from an interrupted build of this part.
    pub resumed_from: u64,
    pub seconds: f64,
}

/// Runs `teacher` over part `part` of `data` (a contiguous, shard-aligned
/// range of samples: [`PartRange::of`]) and writes that part at `dir`,
/// resuming a build of it that was interrupted. The shards are those a
/// whole build would write for that range, byte for byte;
/// `cache::merge::merge_parts` joins the parts. Refuses more parts than the
/// cache has shards (field `part`).
pub fn build_cache_part<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    dir: &Path,
    opts: &BuildOptions,
    part: PartSpec,
) -> Result<PartBuildReport> {
    check_build(teacher, data, opts)?;
    let meta = cache_meta(teacher, data, opts);
    let spec = BuildSpec::plan(&meta, &opts.writer)?;
    PartRange::of(&spec, part).map_err(|message| Error::Config {
        field: "part".into(),
        message,
    })?;
    let start = Instant::now();
    let mut writer = CacheWriter::create_or_resume_part(dir, meta, opts.writer.clone(), part)?;
    let resumed_from = run_teacher(teacher, data, &mut writer, opts)?;
    let part = writer.finish_part()?;
    Ok(PartBuildReport {
        part,
        resumed_from,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// What every build checks before it starts: the teacher fits the data, the
/// batch size, the augmentation against the sample shape.
fn check_build<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    opts: &BuildOptions,
) -> Result<()> {
    check_compatible(teacher, data)?;
    if opts.batch_size == 0 {
        return Err(Error::Config {
            field: "batch_size".into(),
            message: "must be at least 1".into(),
        });
    }
    if let Some(v) = &opts.view {
        Augment::parse(&v.augment)?.check_shape(data.sample_shape())?;
    }
    Ok(())
}

/// Feeds the writer's range of samples (from where it resumes) through the
/// teacher in batches; returns the sample it resumed from.
///
/// Batches lie on one grid for every build of a cache, `[j·B, (j+1)·B)`
/// over the whole dataset, whatever sample a build starts or ends at: a
/// part (or a resumed build) that starts inside a batch runs the teacher on
/// that whole batch and keeps only its own rows. A sample is thus always
/// computed in the same batch, and kernels whose rounding depends on the
/// batch's size cannot make a part or a resumed build differ from a single
/// build in the last bit.
fn run_teacher<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    writer: &mut CacheWriter,
    opts: &BuildOptions,
) -> Result<u64> {
    let augment = match &opts.view {
        Some(v) => Some((Augment::parse(&v.augment)?, v.seed, v.view)),
        None => None,
    };
    let classes = teacher.spec().num_classes();
    let start = Instant::now();
    let first = writer.resume_from() as usize;
    let range = writer.range();
    if first as u64 > range.first_sample && opts.progress {
        eprintln!(
            "resuming: {} samples already in complete shards",
            first as u64 - range.first_sample
        );
    }
    let end = range.end_sample as usize;
    let batch = opts.batch_size;
    let len = data.sample_len();
    let mut inputs = vec![0f32; batch * len];
    let mut lp = vec![0f32; batch * classes];
    let mut pos = first;
    let mut last_report = Instant::now();
    while pos < end {
        // The grid batch holding `pos`, whole; rows `pos..keep_end` of it are ours.
        let batch_start = pos / batch * batch;
        let b = batch.min(data.len() - batch_start);
        let keep_end = (batch_start + b).min(end);
        let idx: Vec<usize> = (batch_start..batch_start + b).collect();
        data.fill_inputs(&idx, &mut inputs[..b * len]);
        if let Some((a, seed, view)) = &augment {
            a.apply_batch(
                *seed,
                *view,
                &idx,
                data.sample_shape(),
                &mut inputs[..b * len],
            );
        }
        teacher_targets(
            teacher,
            &inputs[..b * len],
            b,
            opts.temperature,
            &mut lp[..b * classes],
        )
        .map_err(|e| Error::Training {
            context: format!(
                "teacher {} on samples {batch_start}..{}",
                opts.teacher_source,
                batch_start + b
            ),
            message: e.to_string(),
        })?;
        let rows = (pos - batch_start)..(keep_end - batch_start);
        let labels = data.labels().map(|y| &y[pos..keep_end]);
        writer.push_batch(
            pos as u64,
            labels,
            &lp[rows.start * classes..rows.end * classes],
        )?;
        pos = keep_end;
        if opts.progress && last_report.elapsed().as_secs_f64() > 5.0 {
            let rate = (pos - first) as f64 / start.elapsed().as_secs_f64();
            eprintln!("{pos}/{end} samples, {rate:.0} samples/s");
            last_report = Instant::now();
        }
    }
    Ok(first as u64)
}

/// The teacher's targets for a batch: `log_softmax(teacher(inputs) / T)`
/// per row, written to `out` (`batch * classes` values). Phase one's cache
/// records and the online teacher's targets both come from here.
pub fn teacher_targets<D: Backend>(
    teacher: &Network<D>,
    inputs: &[f32],
    batch: usize,
    temperature: f32,
    out: &mut [f32],
) -> std::result::Result<(), crate::cache::CacheError> {
    let logits = teacher.predict(inputs.to_vec(), batch).as_vec();
    log_softmax_tempered(&logits, teacher.spec().num_classes(), temperature, out)
}

/// A set of augmented views of a split: `views` caches, view `v` holding the
/// teacher's outputs on `augment` drawn from `(seed, v, sample)`.
#[derive(Debug, Clone)]
pub struct ViewSetSpec {
    pub augment: Augment,
    pub seed: u64,
    pub views: u64,
}

/// Builds a view set at `out` (`out/view-0` .. `out/view-{K-1}`), resuming
/// any view an interrupted build left; `on_view` hears of each finished view.
/// Refuses a directory that holds a cache of the plain images unless the
/// writer options allow overwriting.
pub fn build_view_set<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
    set: &ViewSetSpec,
    mut on_view: impl FnMut(&Path, &BuildReport),
) -> Result<()> {
    check_view_set(data, out, opts, set)?;
    for v in 0..set.views {
        let dir = view_dir(out, v);
        let report = build_cache(teacher, data, &dir, &view_options(opts, set, v))?;
        on_view(&dir, &report);
    }
    Ok(())
}

/// Part `part` of every view of a view set, at `dir` (`dir/view-0` ..
/// `dir/view-{K-1}`, each one part of that view's cache, as
/// [`build_cache_part`]); `cache::merge::merge_parts` joins the parts
/// into a view set.
pub fn build_view_set_part<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    dir: &Path,
    opts: &BuildOptions,
    set: &ViewSetSpec,
    part: PartSpec,
    mut on_view: impl FnMut(&Path, &PartBuildReport),
) -> Result<()> {
    check_view_set(data, dir, opts, set)?;
    for v in 0..set.views {
        let view = view_dir(dir, v);
        let report = build_cache_part(teacher, data, &view, &view_options(opts, set, v), part)?;
        on_view(&view, &report);
    }
    Ok(())
}

fn check_view_set(
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
    set: &ViewSetSpec,
) -> Result<()> {
    set.augment.check_shape(data.sample_shape())?;
    if set.views == 0 {
        return Err(Error::Config {
            field: "views".into(),
            message: "a view set needs at least one view".into(),
        });
    }
    if out.join(MANIFEST_FILE).exists() && !opts.writer.overwrite {
        return Err(Error::Config {
            field: "out".into(),
            message: format!(
                "{} holds a cache of the plain images; write the view set elsewhere",
                out.display()
            ),
        });
    }
    Ok(())
}

/// The build options of view `v` of `set`.
fn view_options(opts: &BuildOptions, set: &ViewSetSpec, v: u64) -> BuildOptions {
    BuildOptions {
        view: Some(ViewInfo {
            augment: set.augment.to_string(),
            seed: set.seed,
            view: v,
            views: set.views,
        }),
        ..opts.clone()
    }
}

/// Where an external teacher's logits are and what to record of them.
#[derive(Debug, Clone)]
pub struct LogitsImport {
    /// `[N, C]` float logits, `.npy` or safetensors.
    pub logits: PathBuf,
    /// The tensor's name inside a safetensors file (default: its only one).
    pub tensor: Option<String>,
    /// A description of the teacher, recorded in the manifest.
    pub teacher_spec: String,
}

/// Builds a cache at `out` from logits an external teacher computed on
/// `data`, checked to have one row per sample and a column per class.
pub fn import_logits_file(
    import: &LogitsImport,
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
) -> Result<Manifest> {
    let path = &import.logits;
    let (rows, cols, logits) = crate::data::read_float_matrix(path, import.tensor.as_deref())?;
    if rows != data.len() {
        return Err(Error::Config {
            field: "logits".into(),
            message: format!(
                "{} has {rows} rows but {} ({}) has {} samples",
                path.display(),
                data.source().display(),
                data.split(),
                data.len()
            ),
        });
    }
    if let Some(k) = data.num_classes() {
        if k > cols {
            return Err(Error::Config {
                field: "logits".into(),
                message: format!(
                    "{} has {cols} columns (classes) but the labels go up to {}",
                    path.display(),
                    k - 1
                ),
            });
        }
    }
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    let meta = CacheMeta {
        teacher: TeacherInfo {
            spec: import.teacher_spec.clone(),
            fingerprint: format!("{:032x}", xxh3_128(&bytes)),
            source: path.display().to_string(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: data.fingerprint().0.clone(),
            split: data.split().to_string(),
            num_samples: data.len() as u64,
            view: None,
        },
        num_classes: cols,
        has_labels: data.labels().is_some(),
        temperature: opts.temperature,
        encoding: opts.encoding,
    };
    Ok(import_logits(
        out,
        meta,
        opts.writer.clone(),
        &logits,
        data.labels(),
    )?)
}

/// The teacher's forward pass alone over `data` (inputs filled, logits
/// copied back to the host, nothing written): the floor a cache build is
/// measured against.
pub fn forward_only<D: Backend>(teacher: &Network<D>, data: &Dataset, batch: usize) -> Result<f64> {
    check_compatible(teacher, data)?;
    let len = data.sample_len();
    let mut inputs = vec![0f32; batch * len];
    let mut checksum = 0f64;
    let mut pos = 0;
    while pos < data.len() {
        let b = batch.min(data.len() - pos);
        let idx: Vec<usize> = (pos..pos + b).collect();
        data.fill_inputs(&idx, &mut inputs[..b * len]);
        let logits = teacher.predict(inputs[..b * len].to_vec(), b).as_vec();
        checksum += logits[0] as f64;
        pos += b;
    }
    Ok(checksum)
}

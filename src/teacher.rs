//! Running the teacher: over a whole dataset split into a cache (phase one),
//! batched on the chosen device, resuming an interrupted build.
//!
//! The cache module knows nothing of models; this module joins the two: it
//! feeds batches of inputs to the teacher, turns logits into log-probabilities
//! at temperature T, and pushes them to a [`CacheWriter`] in sample order.
//!
//! - [`build_cache`]: one cache of a split (plain images, or one augmented view);
//! - [`build_view_set`]: a set of caches, one per augmented view, with its
//!   summary (`views.json`: cost per view, the teacher's agreement with the
//!   labels on each view and on the plain images);
//! - [`build_cache_part`], [`build_view_set_part`]: part `K` of `N` of
//!   either (a contiguous, shard-aligned range of samples; one task of a
//!   scheduler's array), joined by `cache::merge::merge_parts`;
//! - [`import_logits_file`]: a cache from logits computed elsewhere (an
//!   external teacher), read from `.npy` (streamed through memory-mapped
//!   windows) or safetensors;
//! - [`export_views`] / [`import_view_set`]: the images of a view set for an
//!   external teacher, and the view set from its K logit files;
//! - [`teacher_targets`]: the function every teacher target goes through,
//!   used here and by the trainer's online teacher, so the two agree.

use std::path::{Path, PathBuf};
use std::time::Instant;

use xxhash_rust::xxh3::xxh3_128;

use crate::cache::manifest::MANIFEST_FILE;
use crate::cache::refuse_foreign_dir;
use crate::cache::views::{
    check_plain_root, check_view_set_root, remove_replaced_plain_cache, remove_replaced_view_set,
    view_dir, ViewSetSummary, ViewStats, SUMMARY_FILE,
};
use crate::cache::{
    log_softmax_tempered, BuildSpec, CacheMeta, CacheReader, CacheWriter, DatasetInfo, Encoding,
    Manifest, PartManifest, PartRange, PartSpec, TeacherInfo, ViewInfo, WriterOptions,
};
use crate::data::augment::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::model::compat::{check_batch_size, check_compatible};
use crate::model::{Backend, ModelDir, Network};

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
    let plain = opts.view.is_none();
    if plain {
        check_plain_root(dir, opts.writer.overwrite)?;
    }
    let start = Instant::now();
    let mut writer =
        CacheWriter::create_or_resume(dir, cache_meta(teacher, data, opts), opts.writer.clone())?;
    let resumed_from = run_teacher(teacher, data, &mut writer, opts)?;
    let manifest = writer.finish()?;
    if plain && opts.writer.overwrite {
        remove_replaced_view_set(dir)?;
    }
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
    check_batch_size("batch_size", opts.batch_size)?;
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
    // No larger than the samples left: a batch is held whole in memory.
    let batch = opts.batch_size.clamp(1, end.saturating_sub(first).max(1));
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
        match &augment {
            Some((a, seed, view)) => {
                a.fill_batch(data, *seed, *view, &idx, &mut inputs[..b * len]);
            }
            None => data.fill_inputs(&idx, &mut inputs[..b * len]),
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

/// The most views a view set may have: FKD's 500 crops an image fit, and a
/// mistyped count is refused before it fills a disk.
pub const MAX_VIEWS: u64 = 1024;

impl ViewSetSpec {
    /// Checks the augmentation against `data`'s samples and the number of
    /// views (1 to [`MAX_VIEWS`]).
    pub fn check(&self, data: &Dataset) -> Result<()> {
        self.augment.check_shape(data.sample_shape())?;
        if self.views == 0 || self.views > MAX_VIEWS {
            return Err(Error::Config {
                field: "views".into(),
                message: format!("{} views: a view set has 1 to {MAX_VIEWS}", self.views),
            });
        }
        Ok(())
    }
}

/// Builds a view set at `out` (`out/view-0` .. `out/view-{K-1}`), resuming
/// any view an interrupted build left; `on_view` hears of each finished view,
/// with its stats (the teacher's agreement with the labels on it).
/// Refuses a directory that holds a cache of the plain images unless the
/// writer options allow overwriting. Last, it runs the teacher over the
/// plain images and writes the set's summary (`out/views.json`: each
/// view's bytes per sample, build time and agreement with the labels,
/// beside the plain images' agreement), which it returns.
pub fn build_view_set<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
    set: &ViewSetSpec,
    mut on_view: impl FnMut(&Path, &BuildReport, &ViewStats),
) -> Result<ViewSetSummary> {
    check_view_set(data, out, opts, set)?;
    let info = view_options(opts, set, 0).view;
    // Build times of views finished by an earlier, interrupted run.
    let earlier = info
        .as_ref()
        .and_then(|i| ViewSetSummary::read(out, i).ok().flatten());
    let mut view_stats = Vec::with_capacity(set.views as usize);
    let mut all_built = true;
    let mut on_disk = None;
    for v in 0..set.views {
        if v > 0 {
            let on_disk = match &on_disk {
                Some(o) => o,
                None => {
                    let spec = set_build_spec(teacher, data, opts, set, None)?;
                    on_disk.insert(ViewsOnDisk::read(out, set.views, &spec))
                }
            };
            on_disk.check(out, v)?;
        }
        let dir = view_dir(out, v);
        let report = build_cache(teacher, data, &dir, &view_options(opts, set, v))?;
        let already_built = report.resumed_from == data.len() as u64;
        all_built &= already_built;
        let build_seconds = match (already_built, &earlier) {
            (true, Some(e)) => e.view_stats.get(v as usize).and_then(|s| s.build_seconds),
            _ => Some(report.seconds),
        };
        let stats = ViewStats {
            view: v,
            agreement: view_agreement(&dir, data, set, v)?,
            bytes_per_sample: report.manifest.fidelity.bytes_per_sample,
            build_seconds,
        };
        on_view(&dir, &report, &stats);
        view_stats.push(stats);
    }
    // A rerun of a finished set keeps the clean agreement it measured (the
    // same teacher and images give the same number), so it writes nothing.
    // The summary must be this teacher's: every view's agreement as read
    // back now (a set rebuilt under `--overwrite` and stopped before its
    // summary keeps the earlier teacher's).
    let same_views = |e: &ViewSetSummary| {
        e.view_stats
            .iter()
            .map(|s| s.agreement)
            .eq(view_stats.iter().map(|s| s.agreement))
    };
    let (clean_agreement, clean_seconds) = match &earlier {
        Some(e)
            if all_built
                && same_views(e)
                && e.clean_agreement.is_some() == data.labels().is_some() =>
        {
            (e.clean_agreement, e.clean_seconds)
        }
        _ => {
            let start = Instant::now();
            let agreement = clean_agreement(teacher, data, opts.batch_size)?;
            (agreement, agreement.map(|_| start.elapsed().as_secs_f64()))
        }
    };
    let summary = ViewSetSummary {
        augment: set.augment.to_string(),
        seed: set.seed,
        views: set.views,
        clean_agreement,
        clean_seconds,
        view_stats,
    };
    summary.write(out)?;
    if opts.writer.overwrite {
        remove_replaced_plain_cache(out, set.views)?;
    }
    Ok(summary)
}

/// The teacher's top-1 agreement with the labels on the plain images of
/// `data` (`None` when unlabelled).
pub fn clean_agreement<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    batch: usize,
) -> Result<Option<f64>> {
    let Some(labels) = data.labels() else {
        return Ok(None);
    };
    check_compatible(teacher, data)?;
    let (len, classes, batch) = (
        data.sample_len(),
        teacher.spec().num_classes(),
        batch.clamp(1, data.len().max(1)),
    );
    let mut inputs = vec![0f32; batch * len];
    let mut hits = 0usize;
    let mut pos = 0;
    while pos < data.len() {
        let b = batch.min(data.len() - pos);
        let idx: Vec<usize> = (pos..pos + b).collect();
        data.fill_inputs(&idx, &mut inputs[..b * len]);
        let logits = teacher.predict(inputs[..b * len].to_vec(), b).as_vec();
        let top = crate::numeric::argmax_rows(&logits, classes);
        hits += top
            .iter()
            .zip(&labels[pos..pos + b])
            .filter(|(k, y)| k == y)
            .count();
        pos += b;
    }
    Ok(Some(hits as f64 / data.len().max(1) as f64))
}

/// Whether a teacher's top-1 class `k` on view `v` of sample `i` reads
/// the view: it names the sample's label or, for a mixed image, either
/// image's label. (Mixup's weights crowd near 0 and 1 but a mixed image
/// shows two objects; counting only the dominant one marks a teacher that
/// names the other as confused, and every mixed set would warn.)
pub fn reads_view(
    data: &Dataset,
    labels: &[u32],
    set: &ViewSetSpec,
    v: u64,
    i: usize,
    k: u32,
) -> bool {
    k == labels[i]
        || set
            .augment
            .mix_params(data, set.seed, v, i)
            .is_some_and(|p| k == labels[p.partner])
}

/// The teacher's top-1 agreement with the labels on view `v` of `set`,
/// read back from the view's finished cache at `dir` (a mixed image counts
/// as read when the teacher names either image's label, [`reads_view`];
/// `None` when unlabelled).
fn view_agreement(dir: &Path, data: &Dataset, set: &ViewSetSpec, v: u64) -> Result<Option<f64>> {
    let Some(labels) = data.labels() else {
        return Ok(None);
    };
    // SAFETY: the view was committed by this build; distill never modifies
    // a committed shard, and nothing else writes the set while it builds.
    let reader = unsafe { CacheReader::open(dir) }?;
    let top = reader.teacher_predictions(data)?;
    let hits = top
        .iter()
        .enumerate()
        .filter(|&(i, &k)| reads_view(data, labels, set, v, i, k))
        .count();
    Ok(Some(hits as f64 / data.len().max(1) as f64))
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
    let mut on_disk = None;
    for v in 0..set.views {
        if v > 0 {
            let on_disk = match &on_disk {
                Some(o) => o,
                None => {
                    let spec = set_build_spec(teacher, data, opts, set, Some(part))?;
                    on_disk.insert(ViewsOnDisk::read(dir, set.views, &spec))
                }
            };
            on_disk.check(dir, v)?;
        }
        let view = view_dir(dir, v);
        let report = build_cache_part(teacher, data, &view, &view_options(opts, set, v), part)?;
        on_view(&view, &report);
    }
    Ok(())
}

/// The settings a build of view 0 of `set` (or its part `part`) records;
/// view `w`'s are the same with `w` as the view ([`view_build_spec`]).
fn set_build_spec<D: Backend>(
    teacher: &Network<D>,
    data: &Dataset,
    opts: &BuildOptions,
    set: &ViewSetSpec,
    part: Option<PartSpec>,
) -> Result<BuildSpec> {
    let view_opts = view_options(opts, set, 0);
    let mut spec = BuildSpec::plan(&cache_meta(teacher, data, &view_opts), &view_opts.writer)?;
    spec.part = part;
    Ok(spec)
}

/// View `w`'s settings, from view 0's.
fn view_build_spec(set_spec: &BuildSpec, w: u64) -> BuildSpec {
    let mut spec = set_spec.clone();
    if let Some(view) = spec.dataset.view.as_mut() {
        view.view = w;
    }
    spec
}

/// What a view's directory holds before the view is built, as the free
/// space check counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ViewOnDisk {
    /// Committed with this build's settings (a manifest, or a part's
    /// record): the build keeps it and writes nothing.
    Finished,
    /// To build. `resumable`: the bytes of this build's shards, which an
    /// interrupted build left and the build keeps; `replaced`: the bytes of
    /// other shards (a build with other settings, under `--overwrite`),
    /// removed when the view commits.
    ToBuild { resumable: u64, replaced: u64 },
}

/// Reads what `dir` holds against the settings `spec` (see [`ViewOnDisk`]).
fn view_on_disk(dir: &Path, spec: &BuildSpec) -> ViewOnDisk {
    use crate::cache::writer::{committed_spec, is_shard_file};
    if let Ok(Some(c)) = committed_spec(dir) {
        if c.first_difference(spec).is_none() {
            return ViewOnDisk::Finished;
        }
    }
    let ours = format!("shard-{}-", spec.key());
    let (mut resumable, mut replaced) = (0u64, 0u64);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_shard_file(&name) {
            continue;
        }
        let len = entry
            .metadata()
            .map_or(0, |m| crate::fsutil::disk_bytes(&m));
        if name.starts_with(&ours) {
            resumable = resumable.saturating_add(len);
        } else {
            replaced = replaced.saturating_add(len);
        }
    }
    ViewOnDisk::ToBuild {
        resumable,
        replaced,
    }
}

/// What every view of a set held when its build reached view 1, read once:
/// the build writes views in order, so views from `v` on are as read when
/// it reaches view `v`.
struct ViewsOnDisk(Vec<ViewOnDisk>);

impl ViewsOnDisk {
    /// Reads views `0..views` of the set at `set_dir` against the settings
    /// `spec` (view 0's; with `part` set for a part's views).
    fn read(set_dir: &Path, views: u64, spec: &BuildSpec) -> ViewsOnDisk {
        ViewsOnDisk(
            (0..views)
                .map(|w| view_on_disk(&view_dir(set_dir, w), &view_build_spec(spec, w)))
                .collect(),
        )
    }

    /// Before view `v` (at least 1) is built, refuses to go on when the
    /// views from `v` on that are not finished would not fit on the file
    /// system: each takes about what view `v - 1` took on disk, and
    /// [`VIEW_SLACK_BYTES`] more (the compressed size is only known once a
    /// view is written), less the shards an interrupted build of it left,
    /// and a view that replaces another build's shards (`--overwrite`)
    /// frees them once it commits. So a build stops after its first view,
    /// and a rerun with no more room stops before building anything. The
    /// views built stay, and a rerun resumes from them. Where the free
    /// space cannot be read, nothing is refused.
    ///
    /// Parts built at the same time on one file system each see the whole
    /// free space: the check is per build.
    fn check(&self, set_dir: &Path, v: u64) -> Result<()> {
        if self.0.get(v as usize) == Some(&ViewOnDisk::Finished) {
            return Ok(());
        }
        match crate::fsutil::available_space(set_dir) {
            Some(free) => self.fit(set_dir, v, free),
            None => Ok(()),
        }
    }

    /// [`ViewsOnDisk::check`] against `free` bytes on the file system at
    /// `fs_dir`.
    fn fit(&self, set_dir: &Path, v: u64, (fs_dir, free): (PathBuf, u64)) -> Result<()> {
        let left: Vec<(u64, u64)> = self
            .0
            .iter()
            .skip(v as usize)
            .filter_map(|state| match *state {
                ViewOnDisk::Finished => None,
                ViewOnDisk::ToBuild {
                    resumable,
                    replaced,
                } => Some((resumable, replaced)),
            })
            .collect();
        let sample = v.saturating_sub(1);
        let per_view = crate::fsutil::files_bytes(&view_dir(set_dir, sample));
        let need = views_space_need(per_view.saturating_add(VIEW_SLACK_BYTES), &left);
        if need <= free {
            return Ok(());
        }
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        Err(Error::Config {
            field: "views".into(),
            message: format!(
                "view {sample} took {:.2} MiB, so the {} views still to build need about {:.2} \
                 MiB more, and {} has {:.2} MiB free; {} in {}, and a rerun resumes from {} once \
                 there is room; or build fewer views",
                mib(per_view),
                left.len(),
                mib(need),
                fs_dir.display(),
                mib(free),
                match v {
                    1 => "the view built stays".to_string(),
                    _ => format!("the {v} views built stay"),
                },
                set_dir.display(),
                if v == 1 { "it" } else { "them" },
            ),
        })
    }
}

/// What a view takes beyond its finished files, in the space check: its
/// directory, and the temporary copy of its manifest while that is written.
const VIEW_SLACK_BYTES: u64 = 8 << 10;

/// The most bytes the views `left` (each as (bytes it already holds of
/// this build, bytes of another build it frees when it commits), in build
/// order) need on top of what the file system holds now, when each takes
/// `per_view`: the peak comes while a view is being written, before what
/// it replaces is removed.
fn views_space_need(per_view: u64, left: &[(u64, u64)]) -> u64 {
    let mut need = 0u64;
    let mut extra = 0i128;
    for &(resumable, replaced) in left {
        extra += i128::from(per_view.saturating_sub(resumable));
        need = need.max(u64::try_from(extra.max(0)).unwrap_or(u64::MAX));
        extra -= i128::from(replaced);
    }
    need
}

fn check_view_set(
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
    set: &ViewSetSpec,
) -> Result<()> {
    set.check(data)?;
    check_set_root(out, opts)?;
    Ok(())
}

/// Refuses `out` as a view set's root when it holds a cache of the plain
/// images (unless overwriting) or files of something else
/// ([`refuse_foreign_dir`]).
fn check_set_root(out: &Path, opts: &BuildOptions) -> Result<()> {
    check_view_set_root(out, opts.writer.overwrite)?;
    Ok(refuse_foreign_dir(out)?)
}

/// Refuses `out` as the directory of exported views when it holds a model
/// (its card or weights) or a cache: the images would sit beside files
/// they do not belong to, and a cache with them could no longer be resumed
/// ([`refuse_foreign_dir`]).
fn refuse_model_or_cache(out: &Path) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(Error::Config {
            field: "out".into(),
            message: format!(
                "{} is a file; the views are written into a directory of their own",
                out.display()
            ),
        });
    }
    let model = ModelDir::new(out);
    let found = [
        model.card(),
        model.weights().to_path_buf(),
        out.join(MANIFEST_FILE),
        out.join(SUMMARY_FILE),
    ]
    .into_iter()
    .find(|p| p.exists());
    match found {
        Some(p) => Err(Error::Config {
            field: "out".into(),
            message: format!(
                "{} holds {}: a model's or a cache's directory; export the views into a \
                 directory of their own",
                out.display(),
                p.file_name()
                    .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
            ),
        }),
        None => Ok(()),
    }
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

/// The teacher's forward pass alone over `data` (inputs filled, logits
/// copied back to the host, nothing written): the floor a cache build is
/// measured against.
pub fn forward_only<D: Backend>(teacher: &Network<D>, data: &Dataset, batch: usize) -> Result<f64> {
    check_compatible(teacher, data)?;
    let batch = batch.clamp(1, data.len().max(1));
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

// ---- External teachers: logit imports (streamed) and view sets ----

/// Rows of logits read for an import: a `.npy` matrix read through
/// memory-mapped windows of its data section, or a safetensors tensor read
/// whole (safetensors imports are not streamed; use `.npy` for large ones).
enum LogitsRows {
    Npy {
        path: PathBuf,
        file: std::fs::File,
        layout: crate::data::MatrixLayout,
    },
    Whole {
        cols: usize,
        values: Vec<f32>,
    },
}

/// Bytes of a `.npy` file mapped at a time (and of the f32 rows converted
/// from it); tests use a small window so that small files take many.
const IMPORT_WINDOW_BYTES: usize = if cfg!(test) { 4096 } else { 16 << 20 };

impl LogitsRows {
    fn open(path: &Path, tensor: Option<&str>) -> Result<LogitsRows> {
        if crate::data::MatrixFile::of(path)? == crate::data::MatrixFile::Neither {
            return Err(Error::Config {
                field: "logits".into(),
                message: format!(
                    "{} is neither a .npy nor a .safetensors file (not by its name's extension, \
                     nor by its first bytes: no .npy magic, no safetensors header); logits are read \
                     from a .npy or .safetensors file of [N, C] floats: save them as one \
                     (numpy.save, safetensors' save_file)",
                    path.display()
                ),
            });
        }
        let mut magic = [0u8; 6];
        let is_npy = std::fs::File::open(path)
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok()
            && &magic == b"\x93NUMPY";
        if !is_npy {
            let (_, cols, values) = crate::data::read_float_matrix(path, tensor)?;
            return Ok(LogitsRows::Whole { cols, values });
        }
        if let Some(name) = tensor {
            return Err(Error::Config {
                field: "tensor".into(),
                message: format!(
                    "'{name}' names a tensor inside a safetensors file, but {} is a .npy \
                     file of one array; leave it out",
                    path.display()
                ),
            });
        }
        let layout = crate::data::matrix_layout(path)?;
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        Ok(LogitsRows::Npy {
            path: path.to_path_buf(),
            file,
            layout,
        })
    }

    fn rows(&self) -> usize {
        match self {
            LogitsRows::Npy { layout, .. } => layout.rows,
            LogitsRows::Whole { cols, values } => values.len() / cols,
        }
    }

    fn cols(&self) -> usize {
        match self {
            LogitsRows::Npy { layout, .. } => layout.cols,
            LogitsRows::Whole { cols, .. } => *cols,
        }
    }

    /// `Some` for a `.npy` file of little-endian f32 values.
    fn as_f32_le(&self) -> Option<&LogitsRows> {
        matches!(self, LogitsRows::Npy { layout, .. } if layout.is_f32_le()).then_some(self)
    }

    /// Rows per step of a streamed pass: about [`IMPORT_WINDOW_BYTES`] of f32.
    fn step(&self) -> usize {
        (IMPORT_WINDOW_BYTES / (4 * self.cols())).max(1)
    }

    /// Rows `start..end` as f32, into `out` (cleared first).
    ///
    /// # Safety
    /// The `.npy` file is memory-mapped: it must not be truncated or
    /// modified while mapped (here, for the duration of this call).
    unsafe fn read_rows(&self, start: usize, end: usize, out: &mut Vec<f32>) -> Result<()> {
        out.clear();
        match self {
            LogitsRows::Whole { cols, values } => {
                out.extend_from_slice(&values[start * cols..end * cols]);
            }
            LogitsRows::Npy { path, file, layout } => {
                // SAFETY: forwarded from the caller.
                let map = unsafe { map_npy_rows(path, file, layout, start, end) }?;
                layout.extend_f32(&map, out);
            }
        }
        Ok(())
    }

    /// xxh3-128 of every value's f32 little-endian bytes, in one streamed
    /// pass (the value of `xxh3_128` over the whole matrix, so an import's
    /// fingerprint does not depend on how it was read). Refuses a
    /// non-finite value, naming `path` and the value's row, before anything
    /// is written.
    ///
    /// # Safety
    /// As [`LogitsRows::read_rows`].
    unsafe fn fingerprint(&self, path: &Path) -> Result<String> {
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        let mut rows = Vec::new();
        let mut bytes = Vec::new();
        let mut start = 0;
        let cols = self.cols();
        let non_finite = |index: usize, value: f32| {
            Error::Data(crate::data::DataError::NonFinite {
                path: path.to_path_buf(),
                field: "matrix".into(),
                index,
                row: index / cols,
                value,
            })
        };
        while start < self.rows() {
            let end = (start + self.step()).min(self.rows());
            if let Some(LogitsRows::Npy { path, file, layout }) = self.as_f32_le() {
                // The file's bytes are the values' f32 little-endian bytes.
                // SAFETY: forwarded from the caller.
                let map = unsafe { map_npy_rows(path, file, layout, start, end) }?;
                let value = |b: &[u8]| f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if let Some(i) = map.chunks_exact(4).position(|b| !value(b).is_finite()) {
                    return Err(non_finite(start * cols + i, value(&map[4 * i..])));
                }
                hasher.update(&map);
            } else {
                // SAFETY: forwarded from the caller.
                unsafe { self.read_rows(start, end, &mut rows) }?;
                if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
                    return Err(non_finite(start * cols + i, rows[i]));
                }
                bytes.clear();
                bytes.extend(rows.iter().flat_map(|v| v.to_le_bytes()));
                hasher.update(&bytes);
            }
            start = end;
        }
        Ok(format!("{:032x}", hasher.digest128()))
    }
}

/// The data-section bytes of rows `start..end` of a `.npy` file, mapped and
/// read ahead (`MAP_POPULATE`: one fault per window, not per page).
///
/// # Safety
/// The file must not be truncated or modified while the map lives.
unsafe fn map_npy_rows(
    path: &Path,
    file: &std::fs::File,
    layout: &crate::data::MatrixLayout,
    start: usize,
    end: usize,
) -> Result<memmap2::Mmap> {
    let row_bytes = layout.cols * layout.elem_size();
    let offset = layout.data_offset + (start * row_bytes) as u64;
    // SAFETY: the caller keeps the file unmodified while mapped; the window
    // lies inside the data section, whose length the header check matched
    // against the file's.
    unsafe {
        memmap2::MmapOptions::new()
            .offset(offset)
            .len((end - start) * row_bytes)
            .populate()
            .map(file)
    }
    .map_err(|e| Error::io(path, e))
}

/// Checks that a logits matrix of `rows` x `cols` fits `data`.
fn check_logits_shape(path: &Path, rows: usize, cols: usize, data: &Dataset) -> Result<()> {
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
    Ok(())
}

/// Streams `rows` into a cache at `out` described by `meta`, resuming an
/// interrupted import: windows of rows, `log_softmax(logits / T)`, the writer.
///
/// # Safety
/// As [`LogitsRows::read_rows`].
unsafe fn write_logits_cache(
    rows: &LogitsRows,
    source: &Path,
    meta: CacheMeta,
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
) -> Result<Manifest> {
    let (n, c, t) = (rows.rows(), rows.cols(), meta.temperature);
    let plain = opts.view.is_none();
    if plain {
        check_plain_root(out, opts.writer.overwrite)?;
    }
    let mut writer = CacheWriter::create_or_resume(out, meta, opts.writer.clone())?;
    let mut x = Vec::with_capacity(rows.step() * c);
    let mut lp = vec![0f32; rows.step() * c];
    let mut start = writer.resume_from() as usize;
    while start < n {
        let end = (start + rows.step()).min(n);
        // SAFETY: forwarded from the caller.
        unsafe { rows.read_rows(start, end, &mut x) }?;
        let lp = &mut lp[..x.len()];
        // 256-row tasks in parallel; the first bad row is named by its sample.
        use rayon::prelude::*;
        x.par_chunks(256 * c)
            .zip(lp.par_chunks_mut(256 * c))
            .enumerate()
            .map(|(i, (x, o))| {
                log_softmax_tempered(x, c, t, o).map_err(|e| match e {
                    // The values are finite (checked while fingerprinting):
                    // divided by T they overflow.
                    crate::cache::CacheError::NonFinite { row, class, .. } => {
                        let sample = (start + i * 256) as u64 + row;
                        Error::Model {
                            path: source.to_path_buf(),
                            message: format!(
                                "the logit of sample {sample}, class {class} ({}) divided by \
                                 --temperature {t} overflows f32; give a larger --temperature",
                                x[row as usize * c + class]
                            ),
                        }
                    }
                    other => other.into(),
                })
            })
            .collect::<Result<Vec<()>>>()?;
        writer.push_batch(start as u64, data.labels().map(|l| &l[start..end]), lp)?;
        start = end;
    }
    let manifest = writer.finish()?;
    if plain && opts.writer.overwrite {
        remove_replaced_view_set(out)?;
    }
    Ok(manifest)
}

/// Builds a cache at `out` from logits an external teacher computed on
/// `data` (one row per sample, a column per class). `.npy` logits are read
/// in memory-mapped windows of about 16 MiB and streamed to the writer, so
/// an import of any size holds a few windows, not the matrix (a 1M x 1,000
/// f32 import peaks at a few hundred MB; FORMAT.md). With `opts.view` the
/// cache is that view of a view set (see [`import_view_set`]).
///
/// # Safety
/// The `.npy` file is memory-mapped: it must not be truncated or modified
/// while the import runs (doing so is undefined behaviour, at best a SIGBUS).
pub unsafe fn import_logits_file(
    import: &LogitsImport,
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
) -> Result<Manifest> {
    let rows = LogitsRows::open(&import.logits, import.tensor.as_deref())?;
    check_logits_shape(&import.logits, rows.rows(), rows.cols(), data)?;
    // SAFETY: forwarded from the caller.
    let fingerprint = unsafe { rows.fingerprint(&import.logits) }?;
    let meta = imported_meta(
        import,
        fingerprint,
        import.logits.display().to_string(),
        &rows,
        data,
        opts,
    );
    // SAFETY: forwarded from the caller.
    unsafe { write_logits_cache(&rows, &import.logits, meta, data, out, opts) }
}

/// The manifest metadata of an imported cache.
fn imported_meta(
    import: &LogitsImport,
    fingerprint: String,
    source: String,
    rows: &LogitsRows,
    data: &Dataset,
    opts: &BuildOptions,
) -> CacheMeta {
    CacheMeta {
        teacher: TeacherInfo {
            spec: import.teacher_spec.clone(),
            fingerprint,
            source,
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: data.fingerprint().0.clone(),
            split: data.split().to_string(),
            num_samples: data.len() as u64,
            view: opts.view.clone(),
        },
        num_classes: rows.cols(),
        has_labels: data.labels().is_some(),
        temperature: opts.temperature,
        encoding: opts.encoding,
    }
}

/// Builds a view set at `out` (`out/view-0` .. `out/view-{K-1}`) from K
/// logit files, file `v` holding an external teacher's logits on view `v`
/// of `set` (the images [`export_views`] writes). Every view records the
/// same teacher: fingerprint xxh3-128 of the files' logit fingerprints
/// joined by commas, source the files' paths, so the set opens as one
/// build (`CacheViews`). Resumes like [`build_view_set`]; `on_view` hears
/// of each finished view, with its stats.
///
/// # Safety
/// As [`import_logits_file`], for every file.
pub unsafe fn import_view_set(
    files: &[LogitsImport],
    data: &Dataset,
    out: &Path,
    opts: &BuildOptions,
    set: &ViewSetSpec,
    mut on_view: impl FnMut(&Path, &Manifest, &ViewStats),
) -> Result<ViewSetSummary> {
    set.check(data)?;
    if files.is_empty() || files.len() as u64 != set.views {
        return Err(Error::Config {
            field: "logits".into(),
            message: format!(
                "a view set of {} views needs one logits file per view, in view order; {} given",
                set.views,
                files.len()
            ),
        });
    }
    check_set_root(out, opts)?;
    let mut opened = Vec::with_capacity(files.len());
    let mut prints = Vec::with_capacity(files.len());
    for f in files {
        let rows = LogitsRows::open(&f.logits, f.tensor.as_deref())?;
        check_logits_shape(&f.logits, rows.rows(), rows.cols(), data)?;
        if rows.cols()
            != opened
                .first()
                .map_or(rows.cols(), |r: &LogitsRows| r.cols())
        {
            return Err(Error::Config {
                field: "logits".into(),
                message: format!(
                    "{} has {} columns but {} has {}; every view needs the same classes",
                    f.logits.display(),
                    rows.cols(),
                    files[0].logits.display(),
                    opened[0].cols()
                ),
            });
        }
        // SAFETY: forwarded from the caller.
        prints.push(unsafe { rows.fingerprint(&f.logits) }?);
        opened.push(rows);
    }
    let fingerprint = format!("{:032x}", xxh3_128(prints.join(",").as_bytes()));
    let sources: Vec<String> = files
        .iter()
        .map(|f| f.logits.display().to_string())
        .collect();
    let mut opts = opts.clone();
    let mut view_stats = Vec::with_capacity(opened.len());
    for (v, rows) in opened.iter().enumerate() {
        opts.view = Some(ViewInfo {
            augment: set.augment.to_string(),
            seed: set.seed,
            view: v as u64,
            views: set.views,
        });
        let meta = imported_meta(
            &files[v],
            fingerprint.clone(),
            sources.join(","),
            rows,
            data,
            &opts,
        );
        let dir = view_dir(out, v as u64);
        // SAFETY: forwarded from the caller.
        let manifest =
            unsafe { write_logits_cache(rows, &files[v].logits, meta, data, &dir, &opts) }?;
        let stats = ViewStats {
            view: v as u64,
            agreement: view_agreement(&dir, data, set, v as u64)?,
            bytes_per_sample: manifest.fidelity.bytes_per_sample,
            build_seconds: None,
        };
        on_view(&dir, &manifest, &stats);
        view_stats.push(stats);
    }
    // The external teacher's plain-image outputs are not given: no clean
    // agreement, so no warning can compare with it.
    let summary = ViewSetSummary {
        augment: set.augment.to_string(),
        seed: set.seed,
        views: set.views,
        clean_agreement: None,
        clean_seconds: None,
        view_stats,
    };
    summary.write(out)?;
    if opts.writer.overwrite {
        remove_replaced_plain_cache(out, set.views)?;
    }
    Ok(summary)
}

/// The file [`export_views`] writes view `v`'s images to.
pub fn view_images_file(dir: &Path, v: u64) -> PathBuf {
    dir.join(format!("view-{v}-images.npy"))
}

/// The `.npy` (format 1.0) header of a C-order little-endian f32 array.
fn npy_f32_header(shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let mut dict = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}{}), }}",
        dims.join(", "),
        if shape.len() == 1 { "," } else { "" }
    );
    // numpy pads the header with spaces and a newline to a multiple of 64.
    while (10 + dict.len() + 1) % 64 != 0 {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// Writes, for every view `v` of `set`, the images a view-set cache's view
/// `v` holds the teacher's outputs on: `out/view-{v}-images.npy`, f32
/// `[N, C, H, W]` in sample order, exactly the inputs [`build_view_set`]
/// gives the teacher (`Augment::fill_batch`: the dataset's inputs drawn
/// through the geometric view of `(seed, v, sample)` and, with mixup or
/// cutmix, mixed with the partner's view). An external
/// teacher run on file `v` in order yields the logits file `v` that
/// [`import_view_set`] takes. Each file is written to a temporary name,
/// synced and renamed, batch by batch (`batch` samples held at a time).
/// Returns the files written.
///
/// `out/export.json` ([`ViewExport`]) records what was exported. A
/// directory holding images of another export is refused unless
/// `overwrite`; with it, files of views beyond this export's are removed
/// once it is written.
pub fn export_views(
    data: &Dataset,
    set: &ViewSetSpec,
    out: &Path,
    batch: usize,
    overwrite: bool,
    mut on_view: impl FnMut(&Path),
) -> Result<Vec<PathBuf>> {
    use std::io::Write;
    set.check(data)?;
    check_batch_size("batch_size", batch)?;
    let batch = batch.min(data.len().max(1));
    refuse_model_or_cache(out)?;
    let record = ViewExport {
        augment: set.augment.to_string(),
        seed: set.seed,
        views: set.views,
        split: data.split().to_string(),
        samples: data.len(),
        dataset_fingerprint: data.fingerprint().0.clone(),
        complete: false,
    };
    let earlier = exported_views(out)?;
    // The same export, finished or stopped part-way, is a rerun.
    let same = ViewExport::read(out).is_some_and(|e| {
        ViewExport {
            complete: false,
            ..e
        } == record
    });
    if !earlier.is_empty() && !overwrite && !same {
        return Err(Error::Config {
            field: "out".into(),
            message: format!(
                "{} holds views of another export ({} files, {}); export into another \
                 directory, or set `overwrite` to replace them",
                out.display(),
                earlier.len(),
                match ViewExport::read(out) {
                    Some(e) => format!(
                        "{} views of {} (seed {}) of the {} split",
                        e.views, e.augment, e.seed, e.split
                    ),
                    None => format!("no readable {EXPORT_FILE}"),
                }
            ),
        });
    }
    check_export_space(out, data, set, &earlier)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // Recorded before any image is written, as unfinished: stopped part-way,
    // the directory says which export its files belong to.
    record.write(out)?;
    let shape = data.sample_shape();
    let len = data.sample_len();
    let mut inputs = vec![0f32; batch * len];
    let mut bytes = Vec::with_capacity(batch * len * 4);
    let mut files = Vec::new();
    for v in 0..set.views {
        let path = view_images_file(out, v);
        let tmp = out.join(format!(".view-{v}-images.npy.{}.tmp", std::process::id()));
        let written = (|| -> std::io::Result<()> {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            w.write_all(&npy_f32_header(&[data.len(), shape[0], shape[1], shape[2]]))?;
            let mut pos = 0;
            while pos < data.len() {
                let b = batch.min(data.len() - pos);
                let idx: Vec<usize> = (pos..pos + b).collect();
                let x = &mut inputs[..b * len];
                set.augment.fill_batch(data, set.seed, v, &idx, x);
                bytes.clear();
                bytes.extend(x.iter().flat_map(|v| v.to_le_bytes()));
                w.write_all(&bytes)?;
                pos += b;
            }
            w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&path, e));
        }
        crate::fsutil::fsync_dir(out)?;
        on_view(&path);
        files.push(path);
    }
    ViewExport {
        complete: true,
        ..record
    }
    .write(out)?;
    for (v, path) in earlier {
        if v >= set.views {
            crate::fsutil::remove_if_present(&path)?;
        }
    }
    Ok(files)
}

/// Refuses an export whose images would not fit on `out`'s file system:
/// every view is `samples x sample_len` f32 values, and the files of an
/// earlier export there (`earlier`) are replaced one by one. Where the free
/// space cannot be read, nothing is refused.
fn check_export_space(
    out: &Path,
    data: &Dataset,
    set: &ViewSetSpec,
    earlier: &[(u64, PathBuf)],
) -> Result<()> {
    let per_view = (data.len() as u64)
        .saturating_mul(data.sample_len() as u64)
        .saturating_mul(4);
    let need = per_view.saturating_mul(set.views);
    let freed: u64 = earlier
        .iter()
        .filter_map(|(_, p)| std::fs::metadata(p).ok())
        .map(|m| crate::fsutil::disk_bytes(&m))
        .sum();
    let Some((existing, free)) = crate::fsutil::available_space(out) else {
        return Ok(());
    };
    // One view is written beside the file it replaces before that goes.
    if need
        > free
            .saturating_add(freed)
            .saturating_sub(per_view.min(freed))
    {
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        return Err(Error::Config {
            field: "views".into(),
            message: format!(
                "{} views of {} images need {:.1} MiB, and {} has {:.1} MiB free{}; export \
                 fewer views or into a larger file system",
                set.views,
                data.len(),
                mib(need),
                existing.display(),
                mib(free),
                if freed > 0 {
                    format!(
                        " (plus {:.1} MiB of the earlier export's images)",
                        mib(freed)
                    )
                } else {
                    String::new()
                }
            ),
        });
    }
    Ok(())
}

/// The record of an export, `export.json` beside its images.
pub const EXPORT_FILE: &str = "export.json";

/// What [`export_views`] wrote into a directory: the view set's settings
/// and the data its images were drawn from.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewExport {
    pub augment: String,
    pub seed: u64,
    pub views: u64,
    pub split: String,
    pub samples: usize,
    pub dataset_fingerprint: String,
    /// Whether every view's file was written (false while an export runs,
    /// and after one stopped part-way).
    #[serde(default)]
    pub complete: bool,
}

impl ViewExport {
    /// Writes the record into `dir` atomically.
    fn write(&self, dir: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|e| Error::Config {
            field: "out".into(),
            message: format!("cannot record the export: {e}"),
        })?;
        Ok(crate::fsutil::atomic_write(
            &dir.join(EXPORT_FILE),
            text.as_bytes(),
        )?)
    }

    /// The record in `dir` (`None` when absent or unreadable).
    pub fn read(dir: &Path) -> Option<ViewExport> {
        let text = std::fs::read_to_string(dir.join(EXPORT_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }
}

/// The exported image files in `dir` (`view-{v}-images.npy`) with their view
/// numbers; none when `dir` does not exist.
fn exported_views(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let v = name
            .strip_prefix("view-")
            .and_then(|r| r.strip_suffix("-images.npy"))
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(v) = v {
            found.push((v, entry.path()));
        }
    }
    found.sort();
    Ok(found)
}

#[cfg(test)]
mod external_teacher_tests {
    use super::*;
    use crate::cache::{import_logits, CacheReader};
    use crate::data::Split;

    fn npy(path: &Path, descr: &str, shape: &[usize], data: &[u8]) {
        let mut bytes = npy_f32_header(shape);
        // The header writer is for '<f4'; other dtypes patch the descr in place.
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap_or(0);
        bytes[at..at + 3].copy_from_slice(descr.as_bytes());
        bytes.extend_from_slice(data);
        std::fs::write(path, bytes).unwrap();
    }

    fn logits(n: usize, c: usize) -> Vec<f32> {
        (0..n * c)
            .map(|i| {
                ((i * 7919 % 1013) as f32 / 101.0 - 5.0)
                    * if i % c == i / c % c { 3.0 } else { 1.0 }
            })
            .collect()
    }

    fn options(enc: Encoding) -> BuildOptions {
        BuildOptions {
            temperature: 2.0,
            encoding: enc,
            writer: WriterOptions {
                shard_target_bytes: 8 << 10,
                records_per_block: 64,
                ..WriterOptions::default()
            },
            batch_size: 1,
            teacher_source: String::new(),
            progress: false,
            view: None,
        }
    }

    fn dataset(n: usize, c: usize) -> Dataset {
        let labels = (0..n as u32).map(|i| i % c as u32).collect();
        Dataset::from_u8(
            [1, 2, 2],
            (0..n * 4).map(|i| (i % 251) as u8).collect(),
            Some(labels),
            Split::Train,
        )
        .unwrap()
    }

    /// The streamed `.npy` import (many 4 KiB windows here) writes the cache
    /// the in-memory import writes, byte for byte, fingerprint included, from
    /// f32, f64 and big-endian f16 files.
    #[test]
    fn streamed_npy_import_equals_the_in_memory_import() {
        let (n, c) = (700usize, 13usize);
        let z = logits(n, c);
        let data = dataset(n, c);
        let tmp = tempfile::tempdir().unwrap();
        let f32_bytes: Vec<u8> = z.iter().flat_map(|v| v.to_le_bytes()).collect();
        let f64_bytes: Vec<u8> = z.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect();
        let f16_z: Vec<f32> = z.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
        let f16_bytes: Vec<u8> = z
            .iter()
            .flat_map(|&v| half::f16::from_f32(v).to_be_bytes())
            .collect();
        for (name, descr, bytes, values) in [
            ("f4", "<f4", &f32_bytes, &z),
            ("f8", "<f8", &f64_bytes, &z),
            ("f2", ">f2", &f16_bytes, &f16_z),
        ] {
            let file = tmp.path().join(format!("{name}.npy"));
            npy(&file, descr, &[n, c], bytes);
            let import = LogitsImport {
                logits: file.clone(),
                tensor: None,
                teacher_spec: "ext".into(),
            };
            let opts = options(Encoding::F16);
            let streamed = tmp.path().join(format!("streamed-{name}"));
            // SAFETY: the file is written above and not touched again.
            let m = unsafe { import_logits_file(&import, &data, &streamed, &opts) }.unwrap();
            let mut meta = imported_meta(
                &import,
                String::new(),
                file.display().to_string(),
                &LogitsRows::Whole {
                    cols: c,
                    values: Vec::new(),
                },
                &data,
                &opts,
            );
            meta.teacher.fingerprint = {
                let b: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
                format!("{:032x}", xxh3_128(&b))
            };
            let whole = tmp.path().join(format!("whole-{name}"));
            let m2 =
                import_logits(&whole, meta, opts.writer.clone(), values, data.labels()).unwrap();
            assert_eq!(m, m2, "{name}");
            assert!(m.shards.len() > 1, "{name}: {} shards", m.shards.len());
            // A tensor name means a safetensors file: refused for a .npy one.
            let named = LogitsImport {
                tensor: Some("logits".into()),
                ..import
            };
            let out = tmp.path().join(format!("named-{name}"));
            // SAFETY: as above.
            let e = unsafe { import_logits_file(&named, &data, &out, &opts) }.unwrap_err();
            assert!(e.to_string().contains("is a .npy file"), "{e}");
            for s in &m.shards {
                assert_eq!(
                    std::fs::read(streamed.join(&s.file)).unwrap(),
                    std::fs::read(whole.join(&s.file)).unwrap()
                );
            }
        }
    }

    /// A streamed import interrupted after some shards resumes to the same cache.
    #[test]
    fn streamed_import_resumes() {
        let (n, c) = (500usize, 10usize);
        let z = logits(n, c);
        let data = dataset(n, c);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("l.npy");
        npy(
            &file,
            "<f4",
            &[n, c],
            &z.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        );
        let import = LogitsImport {
            logits: file,
            tensor: None,
            teacher_spec: "ext".into(),
        };
        let opts = options(Encoding::hq(32));
        let once = tmp.path().join("once");
        // SAFETY: the file is not modified during the imports.
        let m = unsafe { import_logits_file(&import, &data, &once, &opts) }.unwrap();
        let twice = tmp.path().join("twice");
        let m1 = unsafe { import_logits_file(&import, &data, &twice, &opts) }.unwrap();
        // Drop the manifest and the last shard: an import killed before its commit.
        std::fs::remove_file(twice.join(MANIFEST_FILE)).unwrap();
        std::fs::remove_file(twice.join(&m1.shards.last().unwrap().file)).unwrap();
        let m2 = unsafe { import_logits_file(&import, &data, &twice, &opts) }.unwrap();
        assert_eq!(m, m2);
        // SAFETY: written above, read only.
        let r = unsafe { CacheReader::open(&twice) }.unwrap();
        assert_eq!(r.verify().unwrap().samples, n as u64);
    }

    /// Non-finite logits and mismatched shapes are refused with the sample or file named.
    #[test]
    fn bad_logit_files_are_refused() {
        let (n, c) = (300usize, 10usize);
        let mut z = logits(n, c);
        z[257 * c + 3] = f32::NAN;
        let data = dataset(n, c);
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("nan.npy");
        npy(
            &file,
            "<f4",
            &[n, c],
            &z.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
        );
        // The error of importing `logits` into a fresh cache `out`.
        let import_error = |logits: PathBuf, out: &str| {
            let import = LogitsImport {
                logits,
                tensor: None,
                teacher_spec: "ext".into(),
            };
            let out = tmp.path().join(out);
            // SAFETY: not modified during the import.
            unsafe { import_logits_file(&import, &data, &out, &options(Encoding::F16)) }
                .unwrap_err()
                .to_string()
        };
        let e = import_error(file, "a");
        assert!(e.contains("nan.npy") && e.contains("257"), "{e}");
        let short = tmp.path().join("short.npy");
        npy(&short, "<f4", &[n - 1, c], &vec![0u8; (n - 1) * c * 4]);
        let e = import_error(short, "b");
        assert!(e.contains("short.npy") && e.contains("299 rows"), "{e}");
    }

    /// K files become a view set that opens as one build; a wrong count is refused.
    #[test]
    fn view_set_import_opens_as_a_set() {
        let (n, c) = (200usize, 10usize);
        let data = dataset(n, c);
        let tmp = tempfile::tempdir().unwrap();
        let files: Vec<LogitsImport> = (0..3)
            .map(|v| {
                let z: Vec<f32> = logits(n, c)
                    .iter()
                    .map(|x| x + v as f32 * 0.1 * x.sin())
                    .collect();
                let f = tmp.path().join(format!("view-{v}.npy"));
                npy(
                    &f,
                    "<f4",
                    &[n, c],
                    &z.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
                );
                LogitsImport {
                    logits: f,
                    tensor: None,
                    teacher_spec: "ext".into(),
                }
            })
            .collect();
        let set = ViewSetSpec {
            augment: Augment::parse("flip").unwrap(),
            seed: 3,
            views: 3,
        };
        let out = tmp.path().join("set");
        let mut seen = Vec::new();
        // SAFETY: the files are not modified during the import.
        unsafe {
            import_view_set(
                &files,
                &data,
                &out,
                &options(Encoding::F16),
                &set,
                |d, _, v| seen.push((d.to_path_buf(), v.view)),
            )
        }
        .unwrap();
        let want: Vec<_> = (0..3).map(|v| (view_dir(&out, v), v)).collect();
        assert_eq!(seen, want);
        // SAFETY: written above, read only.
        let views = unsafe { crate::cache::CacheViews::open(&out) }.unwrap();
        assert_eq!(views.views().len(), 3);
        let info = views.view_info().unwrap();
        assert_eq!(
            (info.augment.as_str(), info.seed, info.views),
            ("flip", 3, 3)
        );
        let short = ViewSetSpec { views: 2, ..set };
        let e = unsafe {
            import_view_set(
                &files,
                &data,
                &tmp.path().join("x"),
                &options(Encoding::F16),
                &short,
                |_, _, _| {},
            )
        }
        .unwrap_err()
        .to_string();
        assert!(e.contains("one logits file per view"), "{e}");
    }

    #[test]
    fn npy_header_is_numpys() {
        let h = npy_f32_header(&[3, 1, 28, 28]);
        assert_eq!(h.len() % 64, 0);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(
            text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 1, 28, 28), }"),
            "{text}"
        );
        assert!(text.ends_with('\n'));
        assert!(std::str::from_utf8(&npy_f32_header(&[5])[10..])
            .unwrap()
            .contains("(5,)"));
    }
}

#[cfg(test)]
mod view_agreement_tests {
    use super::*;
    use crate::data::Split;

    /// A mixed image is read when the teacher names either image's label;
    /// a plain view only with the sample's own.
    #[test]
    fn a_mixed_view_reads_with_either_label() {
        let n = 40;
        let labels: Vec<u32> = (0..n as u32).map(|i| i % 10).collect();
        let data = Dataset::from_u8(
            [1, 6, 5],
            (0..n * 30).map(|i| ((i * 37) % 251) as u8).collect(),
            Some(labels.clone()),
            Split::Train,
        )
        .unwrap();
        let mixed = ViewSetSpec {
            augment: Augment::parse("mixup=0.2").unwrap(),
            seed: 5,
            views: 2,
        };
        let plain = ViewSetSpec {
            augment: Augment::parse("shift=1").unwrap(),
            ..mixed.clone()
        };
        for i in 0..n {
            let partner = mixed.augment.mix_params(&data, 5, 1, i).unwrap().partner;
            let (own, other) = (labels[i], labels[partner]);
            assert!(reads_view(&data, &labels, &mixed, 1, i, own));
            assert!(reads_view(&data, &labels, &mixed, 1, i, other));
            let neither = (0..10).find(|&k| k != own && k != other).unwrap();
            assert!(!reads_view(&data, &labels, &mixed, 1, i, neither));
            assert!(reads_view(&data, &labels, &plain, 1, i, own));
            assert_eq!(
                reads_view(&data, &labels, &plain, 1, i, other),
                other == own
            );
        }
    }
}

#[cfg(test)]
mod view_space_tests {
    use super::*;
    use crate::data::Split;
    use crate::model::ModelSpec;
    use dfdx::prelude::Cpu;

    #[test]
    fn the_need_is_the_peak_of_what_is_written_less_what_is_kept_and_freed() {
        // Three fresh views of 100 bytes.
        assert_eq!(views_space_need(100, &[(0, 0); 3]), 300);
        assert_eq!(views_space_need(100, &[]), 0);
        // An interrupted view that holds 60 bytes of this build's shards.
        assert_eq!(views_space_need(100, &[(60, 0), (0, 0)]), 140);
        assert_eq!(views_space_need(100, &[(500, 0)]), 0);
        // Views that replace another build's 100 bytes each free them once
        // they commit: the peak is one view's, or a growing one when the
        // new views are larger.
        assert_eq!(views_space_need(100, &[(0, 100); 3]), 100);
        assert_eq!(views_space_need(150, &[(0, 100); 3]), 250);
        assert_eq!(views_space_need(u64::MAX, &[(0, 0); 2]), u64::MAX);
    }

    fn options(temperature: f32) -> BuildOptions {
        BuildOptions {
            temperature,
            encoding: Encoding::F16,
            writer: WriterOptions {
                shard_target_bytes: 1 << 10,
                records_per_block: 16,
                ..WriterOptions::default()
            },
            batch_size: 8,
            teacher_source: String::new(),
            progress: false,
            view: None,
        }
    }

    /// A real view set of four views, its settings, and the teacher.
    fn built_set(dir: &Path) -> (Network<Cpu>, Dataset, ViewSetSpec) {
        let n = 300usize;
        let data = Dataset::from_u8(
            [1, 2, 2],
            (0..n * 4).map(|i| (i * 37 % 251) as u8).collect(),
            Some((0..n as u32).map(|i| i % 10).collect()),
            Split::Train,
        )
        .unwrap();
        let spec = ModelSpec::parse("mlp:4-8-10").unwrap();
        let teacher = Network::new(spec, Cpu::default(), 1);
        let set = ViewSetSpec {
            augment: Augment::parse("flip").unwrap(),
            seed: 3,
            views: 4,
        };
        build_view_set(&teacher, &data, dir, &options(2.0), &set, |_, _, _| {}).unwrap();
        (teacher, data, set)
    }

    /// Every file under `dir` with its modification time.
    fn files_and_times(dir: &Path) -> Vec<(PathBuf, std::time::SystemTime)> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                out.extend(files_and_times(&e.path()));
            } else {
                out.push((e.path(), m.modified().unwrap()));
            }
        }
        out.sort();
        out
    }

    /// A rerun of a finished set writes nothing (no manifest, build record
    /// or summary rewritten), so a requeued job succeeds on a full disk.
    #[test]
    fn a_rerun_of_a_finished_set_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        let (teacher, data, set) = built_set(&dir);
        let before = files_and_times(&dir);
        let summary = std::fs::read(dir.join(crate::cache::views::SUMMARY_FILE)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        build_view_set(&teacher, &data, &dir, &options(2.0), &set, |_, _, _| {}).unwrap();
        assert_eq!(files_and_times(&dir), before);
        assert_eq!(
            std::fs::read(dir.join(crate::cache::views::SUMMARY_FILE)).unwrap(),
            summary
        );
    }

    #[test]
    fn finished_views_count_nothing_and_interrupted_ones_what_they_lack() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("set");
        let (teacher, data, set) = built_set(&dir);
        let spec = set_build_spec(&teacher, &data, &options(2.0), &set, None).unwrap();
        let free = |bytes: u64| (dir.clone(), bytes);
        // All four finished: nothing left, whatever the room.
        for v in 1..4 {
            assert_eq!(
                view_on_disk(&view_dir(&dir, v), &view_build_spec(&spec, v)),
                ViewOnDisk::Finished
            );
        }
        ViewsOnDisk::read(&dir, 4, &spec)
            .fit(&dir, 1, free(0))
            .unwrap();
        ViewsOnDisk::read(&dir, 4, &spec).check(&dir, 2).unwrap();
        // View 2 interrupted (its shards kept, not committed), view 3 not
        // begun: view 2 needs what it lacks of view 1's size, view 3 all of it.
        let per_view = crate::fsutil::files_bytes(&view_dir(&dir, 1));
        let shards2 = crate::fsutil::files_bytes(&view_dir(&dir, 2))
            - crate::fsutil::disk_bytes(
                &std::fs::metadata(view_dir(&dir, 2).join(MANIFEST_FILE)).unwrap(),
            );
        std::fs::remove_file(view_dir(&dir, 2).join(MANIFEST_FILE)).unwrap();
        std::fs::remove_dir_all(view_dir(&dir, 3)).unwrap();
        assert_eq!(
            view_on_disk(&view_dir(&dir, 2), &view_build_spec(&spec, 2)),
            ViewOnDisk::ToBuild {
                resumable: shards2,
                replaced: 0
            }
        );
        let need = per_view - shards2 + 2 * VIEW_SLACK_BYTES + per_view;
        let on_disk = ViewsOnDisk::read(&dir, 4, &spec);
        on_disk.fit(&dir, 2, free(need)).unwrap();
        let e = on_disk
            .fit(&dir, 2, free(need - 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("view 1 took"), "{e}");
        assert!(e.contains("the 2 views still to build"), "{e}");
        assert!(e.contains("the 2 views built stay"), "{e}");
        // Built again with another temperature (--overwrite), every view is
        // to build and replaces its shards when it commits: the peak is about
        // one view, not four.
        let other = set_build_spec(&teacher, &data, &options(3.0), &set, None).unwrap();
        assert!(matches!(
            view_on_disk(&view_dir(&dir, 1), &view_build_spec(&other, 1)),
            ViewOnDisk::ToBuild { resumable: 0, replaced } if replaced > 0
        ));
        let on_disk = ViewsOnDisk::read(&dir, 4, &other);
        on_disk
            .fit(&dir, 1, free(2 * (per_view + VIEW_SLACK_BYTES)))
            .unwrap();
        let e = on_disk
            .fit(&dir, 1, free(per_view - 1))
            .unwrap_err()
            .to_string();
        assert!(e.contains("the 3 views still to build"), "{e}");
        assert!(e.contains("the view built stays"), "{e}");
        // A part's views are finished by their part record, which this
        // whole build's views are not.
        let part = PartSpec::new(0, 2).unwrap();
        let as_part = set_build_spec(&teacher, &data, &options(2.0), &set, Some(part)).unwrap();
        assert_ne!(
            view_on_disk(&view_dir(&dir, 1), &view_build_spec(&as_part, 1)),
            ViewOnDisk::Finished
        );
    }
}

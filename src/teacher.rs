//! Running the teacher: over a whole dataset split into a cache (phase one),
//! batched on the chosen device, resuming an interrupted build.
//!
//! The cache module knows nothing of models; this module joins the two: it
//! feeds batches of inputs to the teacher, turns logits into log-probabilities
//! at temperature T, and pushes them to a [`CacheWriter`] in sample order.

use std::path::Path;
use std::time::Instant;

use crate::cache::{
    log_softmax_tempered, CacheMeta, CacheWriter, DatasetInfo, Encoding, Manifest, TeacherInfo,
    ViewInfo, WriterOptions,
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
    pub batch: usize,
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
    check_compatible(teacher, data)?;
    if opts.batch == 0 {
        return Err(Error::Config {
            field: "--batch".into(),
            message: "must be at least 1".into(),
        });
    }
    let augment = match &opts.view {
        Some(v) => {
            let a = Augment::parse(&v.augment)?;
            a.check_shape(data.sample_shape())?;
            Some((a, v.seed, v.view))
        }
        None => None,
    };
    let classes = teacher.spec().num_classes();
    let start = Instant::now();
    let mut writer =
        CacheWriter::create_or_resume(dir, cache_meta(teacher, data, opts), opts.writer.clone())?;
    let first = writer.resume_from() as usize;
    if first > 0 && opts.progress {
        eprintln!("resuming: {first} samples already in complete shards");
    }
    let n = data.len();
    let len = data.sample_len();
    let mut inputs = vec![0f32; opts.batch * len];
    let mut lp = vec![0f32; opts.batch * classes];
    let mut pos = first;
    let mut last_report = Instant::now();
    while pos < n {
        let b = opts.batch.min(n - pos);
        let idx: Vec<usize> = (pos..pos + b).collect();
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
        let logits = teacher.predict(inputs[..b * len].to_vec(), b).as_vec();
        log_softmax_tempered(&logits, classes, opts.temperature, &mut lp[..b * classes]).map_err(
            |e| Error::Training {
                context: format!(
                    "teacher {} on samples {pos}..{}",
                    opts.teacher_source,
                    pos + b
                ),
                message: e.to_string(),
            },
        )?;
        let labels = data.labels().map(|y| &y[pos..pos + b]);
        writer.push_batch(pos as u64, labels, &lp[..b * classes])?;
        pos += b;
        if opts.progress && last_report.elapsed().as_secs_f64() > 5.0 {
            let rate = (pos - first) as f64 / start.elapsed().as_secs_f64();
            eprintln!("{pos}/{n} samples, {rate:.0} samples/s");
            last_report = Instant::now();
        }
    }
    let manifest = writer.finish()?;
    Ok(BuildReport {
        manifest,
        resumed_from: first as u64,
        seconds: start.elapsed().as_secs_f64(),
    })
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

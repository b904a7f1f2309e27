//! An ensemble of teachers as one cache: [`ensemble_caches`] combines the
//! stored outputs of several caches built over the same data into a new
//! cache, so that a student reads the ensemble's targets exactly as it
//! reads one teacher's, and no teacher runs again.
//!
//! Every member must cover the same samples: same dataset fingerprint,
//! split, sample count, class count and labels, and, for view sets, the same
//! augmentation, seed and view count (each view is combined with the same
//! view of the other members). Members may differ in teacher, temperature
//! and encoding: each is decoded at the output temperature `T` (re-tempered
//! where its own differs; a `topk` member must already be at `T`).
//!
//! Two ways to combine, with weights `w_i` (normalised to sum to 1) over
//! the members' log-probabilities `l_i` at `T`:
//! - [`Combine::Prob`], the classic ensemble (Hinton et al. 2015): the
//!   weighted mean of the probabilities, `log sum_i w_i exp(l_i)`.
//! - [`Combine::Logit`]: the weighted mean of the logits, renormalised,
//!   `log_softmax(sum_i w_i l_i)` (a weighted geometric mean of the
//!   probabilities). Unlike the probability mean it commutes with
//!   re-tempering: the ensemble re-tempered to `T'` is the ensemble of the
//!   members re-tempered to `T'`.
//!
//! **Out of fold.** With [`EnsembleOptions::held_out`], each member comes
//! with the training samples its teacher never saw (its validation fold),
//! and sample `i`'s record combines only the members that held `i` out
//! (weights renormalised among them): cross-fitting, so that every
//! training image gets a teacher's output as on unseen data, not the
//! confident output of a teacher that fitted its label. Samples no member
//! held out combine every member, and are counted in the report.
//!
//! The output is an ordinary cache (or view set) written by the cache
//! writer, with its protocol (lock, resume, atomic manifest). Its manifest
//! names the ensemble in `teacher.spec` (`ensemble:prob(w a, w b)`), its
//! fingerprint is a hash of the members' manifest ids, weights and rule, and
//! `teacher.source` lists the member directories. A view set's `views.json`
//! records the ensemble's agreement with the labels on each view.

use std::path::{Path, PathBuf};
use std::time::Instant;

use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_128;

use super::views::{
    check_plain_root, check_view_set_root, remove_replaced_plain_cache, remove_replaced_view_set,
    view_dir, ViewSetSummary, ViewStats,
};
use super::writer::{refuse_foreign_dir, CacheMeta, CacheWriter};
use super::{
    CacheError, CacheReader, CacheViews, Encoding, Manifest, Result, TeacherInfo, WriterOptions,
};

/// How the members' outputs are combined (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Weighted mean of the probabilities.
    Prob,
    /// Weighted mean of the logits (log-probabilities), renormalised.
    Logit,
}

impl Combine {
    /// The rule's name in specs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Combine::Prob => "prob",
            Combine::Logit => "logit",
        }
    }
}

impl std::str::FromStr for Combine {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "prob" => Ok(Combine::Prob),
            "logit" => Ok(Combine::Logit),
            other => Err(format!(
                "'{other}' is not a combining rule: use prob (mean of probabilities) or logit (mean of logits)"
            )),
        }
    }
}

/// What to build: the output's temperature, encoding, layout and rule.
#[derive(Clone, Debug)]
pub struct EnsembleOptions {
    /// Temperature of the members' outputs that are combined, and of the output.
    pub temperature: f32,
    pub encoding: Encoding,
    pub writer: WriterOptions,
    pub combine: Combine,
    /// One weight per member (any positive scale; normalised to sum to 1).
    /// Empty: equal weights.
    pub weights: Vec<f64>,
    /// Out of fold (module docs): per member, per sample, whether that
    /// member's teacher held the sample out of its training. `None`:
    /// every member counts for every sample.
    pub held_out: Option<Vec<Vec<bool>>>,
}

/// What [`ensemble_caches`] wrote.
#[derive(Clone, Debug)]
pub struct EnsembleReport {
    /// One manifest per output view (one for a plain cache).
    pub manifests: Vec<Manifest>,
    /// The view set's summary (`None` for a plain cache).
    pub summary: Option<ViewSetSummary>,
    /// The ensemble's top-1 agreement with the labels, over all views
    /// (`None` when unlabelled).
    pub agreement: Option<f64>,
    /// Each member's top-1 agreement with the labels, over all views.
    pub member_agreement: Vec<Option<f64>>,
    /// Out of fold: samples that no member held out (combined from every
    /// member), and samples held out by each member.
    pub held_out_by_none: u64,
    pub held_out_by_member: Vec<u64>,
}

/// Rows decoded and combined at a time.
const CHUNK_ROWS: usize = 16_384;

/// Combines the caches (or view sets) `members` into a new cache at `out`
/// (module docs). `on_view` hears of each finished output view.
///
/// # Safety
/// The members' files are memory-mapped ([`CacheReader::open`]) and must not
/// be modified while this runs.
pub unsafe fn ensemble_caches(
    members: &[PathBuf],
    out: &Path,
    opts: &EnsembleOptions,
    mut on_view: impl FnMut(&Path, &Manifest),
) -> Result<EnsembleReport> {
    if members.len() < 2 {
        return Err(CacheError::input(
            "ensemble",
            format!(
                "{} member cache given; an ensemble needs at least two",
                members.len()
            ),
        ));
    }
    let weights = normalised_weights(&opts.weights, members.len())?;
    for m in members {
        if same_dir(m, out) {
            return Err(CacheError::input(
                out.display().to_string(),
                "is also a member: write the ensemble to a new directory",
            ));
        }
    }
    // The root of a view set is checked here; every cache the ensemble
    // writes (the plain one, or each view's) is checked by its writer.
    refuse_foreign_dir(out)?;
    let sets: Vec<CacheViews> = members
        .iter()
        // SAFETY: forwarded from the caller.
        .map(|m| unsafe { CacheViews::open(m) })
        .collect::<Result<_>>()?;
    check_members(members, &sets)?;
    // A member that cannot be read at `T` is refused before any output
    // directory is made, not at its first read.
    for (path, set) in members.iter().zip(&sets) {
        for reader in set.views() {
            reader
                .check_temperature(opts.temperature, false)
                .map_err(|e| in_member(path, e))?;
        }
    }
    let first = sets[0].first().manifest();
    let n_all = first.dataset.num_samples;
    if let Some(masks) = &opts.held_out {
        if masks.len() != members.len() {
            return Err(CacheError::input(
                "ensemble",
                format!(
                    "{} held-out sets given for {} members",
                    masks.len(),
                    members.len()
                ),
            ));
        }
        for (mask, path) in masks.iter().zip(members) {
            if mask.len() as u64 != n_all {
                return Err(CacheError::input(
                    path.display().to_string(),
                    format!(
                        "its teacher's held-out set covers {} samples, the cache {n_all}",
                        mask.len()
                    ),
                ));
            }
        }
    }
    let masks = opts.held_out.as_deref();
    let held_out_by_member: Vec<u64> = match masks {
        Some(m) => m
            .iter()
            .map(|m| m.iter().filter(|&&h| h).count() as u64)
            .collect(),
        None => vec![0; members.len()],
    };
    let held_out_by_none = match masks {
        Some(m) => (0..n_all as usize)
            .filter(|&i| m.iter().all(|m| !m[i]))
            .count() as u64,
        None => 0,
    };
    let info = sets[0].view_info().cloned();
    let views = sets[0].views().len();
    // A directory holds a plain cache or a view set, never both: the other
    // is replaced only with `overwrite`, and removed once this one is written.
    match &info {
        Some(_) => check_view_set_root(out, opts.writer.overwrite)?,
        None => check_plain_root(out, opts.writer.overwrite)?,
    }
    let teacher = ensemble_teacher(members, &sets, &weights, opts.combine, masks);
    let has_labels = first.has_labels;
    let mut manifests = Vec::with_capacity(views);
    let mut view_stats = Vec::with_capacity(views);
    let mut agree_total = (0u64, 0u64);
    let mut member_total = vec![(0u64, 0u64); sets.len()];
    for v in 0..views {
        let start = Instant::now();
        let readers: Vec<&CacheReader> = sets.iter().map(|s| &s.views()[v]).collect();
        let m0 = readers[0].manifest();
        let dir = match &info {
            Some(_) => view_dir(out, v as u64),
            None => out.to_path_buf(),
        };
        let meta = CacheMeta {
            teacher: teacher.clone(),
            dataset: m0.dataset.clone(),
            num_classes: readers[0].num_classes(),
            has_labels,
            temperature: opts.temperature,
            encoding: opts.encoding,
        };
        let mut w = CacheWriter::create_or_resume(&dir, meta, opts.writer.clone())?;
        let n = readers[0].len();
        let c = readers[0].num_classes();
        // Agreement is counted over every row, including rows an earlier,
        // interrupted run already wrote, so every row is decoded.
        let mut view_agree = (0u64, 0u64);
        let mut row = 0u64;
        while row < n {
            let end = (row + CHUNK_ROWS as u64).min(n);
            let idx: Vec<u64> = (row..end).collect();
            let decoded: Vec<_> = readers
                .iter()
                .zip(members)
                .map(|(r, path)| {
                    r.read_samples(&idx, opts.temperature, false)
                        .map_err(|e| in_member(path, e))
                })
                .collect::<Result<_>>()?;
            let labels = decoded[0].labels.clone();
            for (d, path) in decoded.iter().zip(members).skip(1) {
                if d.labels != labels {
                    return Err(CacheError::input(
                        path.display().to_string(),
                        format!(
                            "its labels differ from {}'s in samples {row}..{end}: the members must be built over the same labelled data",
                            members[0].display()
                        ),
                    ));
                }
            }
            let lps: Vec<&[f32]> = decoded.iter().map(|d| &d.logprobs[..]).collect();
            let combined = combine_rows(&lps, &weights, c, opts.combine, row, masks)?;
            if let Some(l) = &labels {
                let (a, t) = agreement(&combined, l, c);
                view_agree.0 += a;
                view_agree.1 += t;
                for (k, d) in decoded.iter().enumerate() {
                    let (a, t) = agreement(&d.logprobs, l, c);
                    member_total[k].0 += a;
                    member_total[k].1 += t;
                }
            }
            let resume = w.resume_from();
            if end > resume {
                let skip = resume.saturating_sub(row) as usize;
                w.push_batch(
                    row + skip as u64,
                    labels.as_deref().map(|l| &l[skip..]),
                    &combined[skip * c..],
                )?;
            }
            row = end;
        }
        let manifest = w.finish()?;
        on_view(&dir, &manifest);
        agree_total.0 += view_agree.0;
        agree_total.1 += view_agree.1;
        view_stats.push(ViewStats {
            view: v as u64,
            agreement: has_labels.then(|| ratio(view_agree)),
            bytes_per_sample: manifest.fidelity.bytes_per_sample,
            build_seconds: Some(start.elapsed().as_secs_f64()),
        });
        manifests.push(manifest);
    }
    let summary = match info {
        Some(info) => {
            let s = ViewSetSummary {
                augment: info.augment.clone(),
                seed: info.seed,
                views: info.views,
                clean_agreement: None,
                clean_seconds: None,
                view_stats,
            };
            s.write(out)?;
            if opts.writer.overwrite {
                remove_replaced_plain_cache(out, s.views)?;
            }
            Some(s)
        }
        None => {
            if opts.writer.overwrite {
                remove_replaced_view_set(out)?;
            }
            None
        }
    };
    Ok(EnsembleReport {
        manifests,
        summary,
        agreement: has_labels.then(|| ratio(agree_total)),
        member_agreement: member_total
            .into_iter()
            .map(|t| has_labels.then(|| ratio(t)))
            .collect(),
        held_out_by_none,
        held_out_by_member,
    })
}

fn ratio((a, t): (u64, u64)) -> f64 {
    match t {
        0 => 0.0,
        t => a as f64 / t as f64,
    }
}

/// Rows of `lp` (`classes` wide) whose largest entry is the label: (agree, rows).
fn agreement(lp: &[f32], labels: &[u32], classes: usize) -> (u64, u64) {
    let agree = lp
        .chunks_exact(classes)
        .zip(labels)
        .filter(|(row, &l)| crate::numeric::argmax(row) == l as usize)
        .count();
    (agree as u64, labels.len() as u64)
}

/// True when `a` and `b` name the same existing directory.
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn in_member(path: &Path, e: CacheError) -> CacheError {
    match e {
        CacheError::InvalidInput { what, message } => CacheError::input(
            format!("ensemble member {}", path.display()),
            format!("{what}: {message}"),
        ),
        other => other,
    }
}

/// `weights` normalised to sum to 1; empty means equal weights.
pub fn normalised_weights(weights: &[f64], members: usize) -> Result<Vec<f64>> {
    if weights.is_empty() {
        return Ok(vec![1.0 / members as f64; members]);
    }
    if weights.len() != members {
        return Err(CacheError::input(
            "--weights",
            format!(
                "{} weights given for {members} member caches: give one per member, in order",
                weights.len()
            ),
        ));
    }
    if let Some(bad) = weights.iter().find(|w| !(w.is_finite() && **w > 0.0)) {
        return Err(CacheError::input(
            "--weights",
            format!("{bad} is not a positive number"),
        ));
    }
    let sum: f64 = weights.iter().sum();
    let normalised: Vec<f64> = weights.iter().map(|w| w / sum).collect();
    // Weights whose sum overflows, or so far apart that one vanishes.
    if !sum.is_finite() || normalised.iter().any(|&w| w.is_nan() || w <= 0.0) {
        return Err(CacheError::input(
            "--weights",
            format!(
                "{weights:?} cannot be normalised to sum to 1 with every weight above 0; give \
                 relative weights of a sensible size (e.g. 3,1)"
            ),
        ));
    }
    Ok(normalised)
}

/// Every member covers the same samples, classes, labels and views.
fn check_members(paths: &[PathBuf], sets: &[CacheViews]) -> Result<()> {
    for (i, (path, set)) in paths.iter().zip(sets).enumerate() {
        if let Some(j) = (0..i).find(|&j| same_dir(&paths[j], path) || sets[j].id() == set.id()) {
            return Err(CacheError::input(
                path.display().to_string(),
                format!(
                    "is the same cache as member {} ({}): an ensemble of a teacher with \
                     itself is that teacher; name each member once (give --weights to \
                     weigh one more)",
                    j + 1,
                    paths[j].display()
                ),
            ));
        }
    }
    let first = sets[0].first().manifest();
    for (path, set) in paths.iter().zip(sets).skip(1) {
        let m = set.first().manifest();
        let differs = |field: &str, here: String, there: String| {
            CacheError::input(
                path.display().to_string(),
                format!(
                    "{field} is {here} here but {there} in {}: the members of an ensemble must cover the same data",
                    paths[0].display()
                ),
            )
        };
        let (d, d0) = (&m.dataset, &first.dataset);
        let fields = [
            ("dataset.split", d.split.clone(), d0.split.clone()),
            (
                "dataset.num_samples",
                d.num_samples.to_string(),
                d0.num_samples.to_string(),
            ),
            (
                "dataset.fingerprint",
                d.fingerprint.clone(),
                d0.fingerprint.clone(),
            ),
            (
                "num_classes",
                m.num_classes.to_string(),
                first.num_classes.to_string(),
            ),
            (
                "has_labels",
                m.has_labels.to_string(),
                first.has_labels.to_string(),
            ),
        ];
        if let Some((field, here, there)) = fields.into_iter().find(|(_, a, b)| a != b) {
            return Err(differs(field, here, there));
        }
        let show = |s: &CacheViews| match s.view_info() {
            Some(v) => format!(
                "a view set of {} views of {} (seed {})",
                v.views, v.augment, v.seed
            ),
            None => "a cache of the plain images".to_string(),
        };
        let key = |s: &CacheViews| s.view_info().map(|v| (v.augment.clone(), v.seed, v.views));
        if key(set) != key(&sets[0]) {
            return Err(differs("the cache", show(set), show(&sets[0])));
        }
    }
    Ok(())
}

/// The manifest's teacher record of the ensemble.
fn ensemble_teacher(
    paths: &[PathBuf],
    sets: &[CacheViews],
    weights: &[f64],
    combine: Combine,
    held_out: Option<&[Vec<bool>]>,
) -> TeacherInfo {
    let parts: Vec<String> = sets
        .iter()
        .zip(weights)
        .map(|(s, w)| format!("{w:.4} {}", s.first().manifest().teacher.spec))
        .collect();
    let key: Vec<String> = sets
        .iter()
        .zip(weights)
        .map(|(s, w)| format!("{}*{w:e}", s.id()))
        .collect();
    let rule = match held_out {
        Some(_) => format!("{}-oof", combine.name()),
        None => combine.name().to_string(),
    };
    let mut key = format!("ensemble:{rule}:{}", key.join(","));
    if let Some(masks) = held_out {
        let bytes: Vec<u8> = masks.iter().flatten().map(|&h| h as u8).collect();
        key += &format!(":{:032x}", xxh3_128(&bytes));
    }
    let normalizations: Vec<_> = sets
        .iter()
        .map(|s| s.first().manifest().teacher.normalization.clone())
        .collect();
    let normalization = match normalizations.windows(2).all(|w| w[0] == w[1]) {
        true => normalizations[0].clone(),
        false => None,
    };
    TeacherInfo {
        spec: format!("ensemble:{rule}({})", parts.join(", ")),
        fingerprint: format!("{:032x}", xxh3_128(key.as_bytes())),
        source: paths
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        normalization,
    }
}

/// Combines the members' log-probability rows (`classes` wide) with
/// `weights`; the rows are samples `first_row..`. With `held_out`, a row
/// combines only the members holding its sample out (all, where none does).
pub fn combine_rows(
    members: &[&[f32]],
    weights: &[f64],
    classes: usize,
    combine: Combine,
    first_row: u64,
    held_out: Option<&[Vec<bool>]>,
) -> Result<Vec<f32>> {
    let len = members.first().map_or(0, |m| m.len());
    let mut out = vec![0.0f32; len];
    out.par_chunks_mut(256 * classes)
        .enumerate()
        .try_for_each(|(chunk, o)| {
            let base = chunk * 256 * classes;
            for (r, orow) in o.chunks_exact_mut(classes).enumerate() {
                let at = base + r * classes;
                let row = first_row + (base / classes + r) as u64;
                let take = |k: usize| held_out.is_none_or(|h| h[k][row as usize]);
                let any = (0..members.len()).any(take);
                let (rows, w): (Vec<&[f32]>, Vec<f64>) = (0..members.len())
                    .filter(|&k| !any || take(k))
                    .map(|k| (&members[k][at..at + classes], weights[k]))
                    .unzip();
                let sum: f64 = w.iter().sum();
                let w: Vec<f64> = w.iter().map(|x| x / sum).collect();
                combine_row(&rows, &w, combine, orow, row)?;
            }
            Ok::<(), CacheError>(())
        })?;
    Ok(out)
}

fn combine_row(
    rows: &[&[f32]],
    weights: &[f64],
    combine: Combine,
    out: &mut [f32],
    row: u64,
) -> Result<()> {
    let mut acc = vec![0.0f64; out.len()];
    match combine {
        Combine::Prob => {
            for (r, &w) in rows.iter().zip(weights) {
                for (a, &l) in acc.iter_mut().zip(r.iter()) {
                    *a += w * (l as f64).exp();
                }
            }
            let sum: f64 = acc.iter().sum();
            for (class, (o, a)) in out.iter_mut().zip(&acc).enumerate() {
                // The log of a weighted mean is at least the smallest member's
                // log: the floor keeps a row finite where exp underflowed.
                let floor = rows.iter().map(|r| r[class]).fold(f32::INFINITY, f32::min);
                *o = ((a / sum).ln() as f32).max(floor);
            }
        }
        Combine::Logit => {
            for (r, &w) in rows.iter().zip(weights) {
                for (class, (a, &l)) in acc.iter_mut().zip(r.iter()).enumerate() {
                    if !l.is_finite() {
                        return Err(CacheError::input(
                            "ensemble",
                            format!(
                                "sample {row}, class {class}: a member stores probability 0 (a sparse encoding?); the logit mean needs every class: use --combine prob"
                            ),
                        ));
                    }
                    *a += w * l as f64;
                }
            }
            let max = acc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = max + acc.iter().map(|a| (a - max).exp()).sum::<f64>().ln();
            for (o, a) in out.iter_mut().zip(&acc) {
                *o = (a - lse) as f32;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;

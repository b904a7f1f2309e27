//! Caches of augmented views: the teacher's outputs on `K` augmented copies
//! of a dataset, one ordinary cache per view, so that a student trained with
//! augmentation still reads targets computed on exactly the images it sees
//! (what FKD does with stored crop boxes; the augmentation here is a pure
//! function of `(seed, view, sample)`, so the manifest records the spec and
//! seed instead of per-sample parameters).
//!
//! On disk a view set is a directory of caches `view-0`, `view-1`, ...
//! (`view-{v}`), each a complete cache whose `manifest.json` names its view
//! in `dataset.view` (FORMAT.md). [`CacheViews::open`] accepts either a
//! single cache directory (one view, no augmentation) or a view set; it
//! checks that every view is present, finished, and built with the same
//! settings (teacher, data, temperature, encoding, layout, augmentation). The trainer reads view
//! `epoch % K` in epoch `epoch`.
//!
//! A set built or imported by this version also holds `views.json`, a
//! [`ViewSetSummary`] written after its last view: what the set cost
//! (bytes per sample of each view, each view's build time) and how well
//! the teacher reads the views (its agreement with the labels on each view
//! beside its agreement on the plain images). It is informational and
//! optional: sets without it open as before, and it is not part of the
//! set's id (build times differ between two builds of the same set).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::xxh3_128;

use super::manifest::MANIFEST_FILE;
use super::settings::first_setting_difference;
use super::{CacheError, CacheReader, Result, ViewInfo};
use crate::data::augment::Augment;

/// Name of the directory of view `v` inside a view set.
pub fn view_dir(set: &Path, v: u64) -> PathBuf {
    set.join(format!("view-{v}"))
}

/// File name of a view set's summary, beside its `view-N` directories.
pub const SUMMARY_FILE: &str = "views.json";

/// Whether `dir` holds a set of augmented views (its summary or its first
/// view, and no cache of its own) rather than a single cache; nothing is
/// opened or checked.
pub fn is_view_set(dir: &Path) -> bool {
    !dir.join(MANIFEST_FILE).exists()
        && (dir.join(SUMMARY_FILE).exists() || view_dir(dir, 0).is_dir())
}
/// Largest summary accepted (a few hundred bytes per view).
const MAX_SUMMARY_BYTES: u64 = 16 << 20;
/// How far (in percentage points) a view's agreement with the labels may
/// fall below the plain images' before the set is said to teach noise.
pub const UNREADABLE_POINTS: f64 = 5.0;

/// What a view set cost and how well its teacher reads its views
/// (`views.json`; FORMAT.md, "View sets").
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewSetSummary {
    /// The augmentation spec, seed and view count of the set.
    pub augment: String,
    pub seed: u64,
    pub views: u64,
    /// The teacher's top-1 agreement with the labels on the plain
    /// (unaugmented) images; absent for unlabelled data or an imported set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_agreement: Option<f64>,
    /// Seconds the plain-image pass for `clean_agreement` took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clean_seconds: Option<f64>,
    /// One entry per view, in view order.
    pub view_stats: Vec<ViewStats>,
}

/// One view of a [`ViewSetSummary`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewStats {
    pub view: u64,
    /// The teacher's top-1 agreement with the labels on this view's images
    /// (a mixed image counts when the teacher names either image's label);
    /// absent when unlabelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agreement: Option<f64>,
    /// Compressed bytes on disk per sample of this view (its manifest's
    /// `fidelity.bytes_per_sample`).
    pub bytes_per_sample: f64,
    /// Seconds the build of this view took (the run that finished it;
    /// absent for an imported view).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_seconds: Option<f64>,
}

impl ViewSetSummary {
    /// Mean over views of the bytes per sample: the disk cost of one view.
    pub fn bytes_per_sample_per_view(&self) -> f64 {
        mean(self.view_stats.iter().map(|v| v.bytes_per_sample)).unwrap_or(0.0)
    }

    /// Total build seconds of the views (and of the plain-image pass), if
    /// every view records one.
    pub fn build_seconds(&self) -> Option<f64> {
        let views: Option<Vec<f64>> = self.view_stats.iter().map(|v| v.build_seconds).collect();
        views.map(|v| v.iter().sum::<f64>() + self.clean_seconds.unwrap_or(0.0))
    }

    /// Mean over views of the teacher's agreement with the labels.
    pub fn mean_agreement(&self) -> Option<f64> {
        mean(self.view_stats.iter().filter_map(|v| v.agreement))
    }

    /// The views whose agreement lies more than [`UNREADABLE_POINTS`]
    /// below the clean agreement, as (view, agreement).
    pub fn unreadable_views(&self) -> Vec<(u64, f64)> {
        let Some(clean) = self.clean_agreement else {
            return Vec::new();
        };
        self.view_stats
            .iter()
            .filter_map(|v| Some((v.view, v.agreement?)))
            .filter(|(_, a)| 100.0 * (clean - a) > UNREADABLE_POINTS)
            .collect()
    }

    /// A warning when the teacher cannot read some views (more than
    /// [`UNREADABLE_POINTS`] below its clean agreement), with both numbers.
    pub fn agreement_warning(&self) -> Option<String> {
        let bad = self.unreadable_views();
        let clean = self.clean_agreement?;
        let (worst, worst_agreement) = bad.iter().copied().min_by(|a, b| a.1.total_cmp(&b.1))?;
        // A mixed image shows two objects, and near an even mix a teacher
        // that names a third class is not plainly confused: such views can
        // still teach (BENCHMARKS, "Function matching over 300 epochs"), so
        // the advice is to compare on validation, not to drop them.
        let mixed = Augment::parse(&self.augment).is_ok_and(|a| a.mix.is_some());
        let advice = match mixed {
            false => "so these views teach the teacher's confusion; use a milder augmentation or a teacher trained with it",
            true => "part of that is the mixing itself (a mixed image shows two objects), part the teacher's confusion; compare a student from these views with one from the clean cache on validation, or use milder mixing",
        };
        Some(format!(
            "on {} of the {} views of {} the teacher agrees with the labels on {:.1}% of the images (mean over those views; worst, view {worst}: {:.1}%) against {:.1}% on the plain images: more than {UNREADABLE_POINTS} points lower; {advice}",
            bad.len(),
            self.views,
            self.augment,
            100.0 * mean(bad.iter().map(|b| b.1)).unwrap_or(0.0),
            100.0 * worst_agreement,
            100.0 * clean,
        ))
    }

    /// Human lines for `cache inspect`.
    pub fn describe(&self) -> String {
        let pct =
            |a: Option<f64>| a.map_or("unknown".to_string(), |a| format!("{:.2}%", 100.0 * a));
        let mut out = format!(
            "views cost {:.1} bytes/sample/view ({:.1} bytes/sample in all), built in {}\nteacher agreement with the labels: {} on the plain images, {} mean over views",
            self.bytes_per_sample_per_view(),
            self.view_stats.iter().map(|v| v.bytes_per_sample).sum::<f64>(),
            self.build_seconds()
                .map_or("an unrecorded time (imported)".to_string(), |s| format!("{s:.1}s")),
            pct(self.clean_agreement),
            pct(self.mean_agreement()),
        );
        for v in &self.view_stats {
            out.push_str(&format!(
                "\n  view {}: agreement {}, {:.1} bytes/sample{}",
                v.view,
                pct(v.agreement),
                v.bytes_per_sample,
                v.build_seconds
                    .map_or(String::new(), |s| format!(", built in {s:.1}s"))
            ));
        }
        out
    }

    /// Writes the summary to `set/views.json` atomically.
    pub fn write(&self, set: &Path) -> Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| CacheError::input(SUMMARY_FILE, format!("cannot serialise: {e}")))?;
        bytes.push(b'\n');
        Ok(crate::fsutil::write_if_changed(
            &set.join(SUMMARY_FILE),
            &bytes,
        )?)
    }

    /// Reads `set/views.json` (`None` when absent), checked against `info`,
    /// the set's views.
    pub fn read(set: &Path, info: &ViewInfo) -> Result<Option<ViewSetSummary>> {
        let path = set.join(SUMMARY_FILE);
        let bad = |m: String| CacheError::corrupt(&path, "views.json", m);
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CacheError::io(&path, "stat", e)),
        };
        if len > MAX_SUMMARY_BYTES {
            return Err(bad(format!(
                "{len} bytes is over the {MAX_SUMMARY_BYTES}-byte limit"
            )));
        }
        let bytes = std::fs::read(&path).map_err(|e| CacheError::io(&path, "read", e))?;
        let s: ViewSetSummary = serde_json::from_slice(&bytes).map_err(|e| {
            bad(format!(
                "invalid: {e} (delete it to open the set without it)"
            ))
        })?;
        let fraction = |a: Option<f64>| a.is_none_or(|a| a.is_finite() && (0.0..=1.0).contains(&a));
        let seconds = |a: Option<f64>| a.is_none_or(|a| a.is_finite() && a >= 0.0);
        if (s.augment.as_str(), s.seed, s.views) != (info.augment.as_str(), info.seed, info.views) {
            return Err(bad(format!(
                "describes views of {} (seed {}, {} views) but the set holds {} (seed {}, {} views); delete it or rebuild the set",
                s.augment, s.seed, s.views, info.augment, info.seed, info.views
            )));
        }
        let well_formed = s.view_stats.len() as u64 == s.views
            && s.view_stats.iter().enumerate().all(|(v, st)| {
                st.view == v as u64
                    && fraction(st.agreement)
                    && seconds(st.build_seconds)
                    && st.bytes_per_sample.is_finite()
                    && st.bytes_per_sample >= 0.0
            })
            && fraction(s.clean_agreement)
            && seconds(s.clean_seconds);
        if !well_formed {
            return Err(bad(
                "view_stats must list views 0..views in order, agreements in [0, 1], sizes and seconds finite and >= 0 (delete it to open the set without it)"
                    .into(),
            ));
        }
        Ok(Some(s))
    }
}

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// One cache, or the caches of all views of an augmented view set.
pub struct CacheViews {
    dir: PathBuf,
    views: Vec<CacheReader>,
    summary: Option<ViewSetSummary>,
}

impl From<CacheReader> for CacheViews {
    /// One open cache as a set of one view.
    fn from(reader: CacheReader) -> Self {
        CacheViews {
            dir: reader.dir().to_path_buf(),
            views: vec![reader],
            summary: None,
        }
    }
}

impl CacheViews {
    /// Opens `dir`: a cache directory, or a view set of `view-N` caches.
    ///
    /// # Safety
    /// As [`CacheReader::open`]: the files are memory-mapped and must not be
    /// modified while open.
    pub unsafe fn open(dir: &Path) -> Result<CacheViews> {
        let plain = dir.join(MANIFEST_FILE).exists();
        let other_views = dir.join(SUMMARY_FILE).exists() || view_dir(dir, 1).exists();
        if !plain && !view_dir(dir, 0).exists() && other_views {
            return Err(CacheError::input(
                view_dir(dir, 0).display().to_string(),
                "is missing from this view set (other parts of the set are there); rebuild the \
                 set (the build resumes) or pass a complete one",
            ));
        }
        if plain || !view_dir(dir, 0).exists() {
            let single = CacheReader::open(dir)?;
            if let Some(v) = &single.manifest().dataset.view {
                if v.views > 1 {
                    return Err(CacheError::input(
                        dir.display().to_string(),
                        format!(
                            "is view {} of a set of {} augmented views; pass the set's directory (the parent) so that every view is used",
                            v.view, v.views
                        ),
                    ));
                }
            }
            return Ok(CacheViews {
                dir: dir.to_path_buf(),
                views: vec![single],
                summary: None,
            });
        }
        let first = CacheReader::open(&view_dir(dir, 0))?;
        let Some(info) = first.manifest().dataset.view.clone() else {
            return Err(CacheError::input(
                view_dir(dir, 0).display().to_string(),
                "holds no augmented view (manifest dataset.view is absent): not part of a view set",
            ));
        };
        let mut views = vec![first];
        for v in 1..info.views {
            let path = view_dir(dir, v);
            if !path.exists() {
                return Err(CacheError::input(
                    path.display().to_string(),
                    format!(
                        "view {v} of {} is missing; rerun the build (it resumes) to complete the set",
                        info.views
                    ),
                ));
            }
            views.push(CacheReader::open(&path)?);
        }
        let summary = ViewSetSummary::read(dir, &info)?;
        let set = CacheViews {
            dir: dir.to_path_buf(),
            views,
            summary,
        };
        set.check_consistent(&info)?;
        Ok(set)
    }

    fn check_consistent(&self, info: &ViewInfo) -> Result<()> {
        let m0 = self.views[0].manifest();
        for (v, r) in self.views.iter().enumerate() {
            let m = r.manifest();
            let path = view_dir(&self.dir, v as u64).join(MANIFEST_FILE);
            let want = ViewInfo {
                view: v as u64,
                ..info.clone()
            };
            let differs = |field: &str, a: String, b: String| {
                CacheError::input(
                    path.display().to_string(),
                    format!(
                        "{field} is {a} here but {b} in view 0; the views of a set must come from one build"
                    ),
                )
            };
            if m.dataset.view.as_ref() != Some(&want) {
                return Err(differs(
                    "dataset.view",
                    ViewInfo::describe(m.dataset.view.as_ref()),
                    format!("{want} expected"),
                ));
            }
            // Every other build setting must be view 0's.
            let mut same_view = m.clone();
            same_view.dataset.view = m0.dataset.view.clone();
            if let Some((field, a, b)) = first_setting_difference(&same_view, m0) {
                return Err(differs(field, a, b));
            }
        }
        Ok(())
    }

    /// The directory given to [`CacheViews::open`].
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The view read in `epoch`.
    pub fn for_epoch(&self, epoch: u64) -> &CacheReader {
        &self.views[(epoch % self.views.len() as u64) as usize]
    }

    /// View 0 (the only one of a plain cache): manifest-level facts.
    pub fn first(&self) -> &CacheReader {
        &self.views[0]
    }

    /// All views.
    pub fn views(&self) -> &[CacheReader] {
        &self.views
    }

    /// The augmentation and seed the views were drawn with (`None` for a
    /// cache of the plain images).
    pub fn view_info(&self) -> Option<&ViewInfo> {
        self.views[0].manifest().dataset.view.as_ref()
    }

    /// The set's `views.json` (`None` for a plain cache or a set without one).
    pub fn summary(&self) -> Option<&ViewSetSummary> {
        self.summary.as_ref()
    }

    /// The content id: the manifest's for one cache, a hash of all views'
    /// ids for a set.
    pub fn id(&self) -> String {
        if self.views.len() == 1 {
            return self.views[0].manifest().id.clone();
        }
        let joined: Vec<&str> = self
            .views
            .iter()
            .map(|r| r.manifest().id.as_str())
            .collect();
        format!("{:032x}", xxh3_128(joined.join(",").as_bytes()))
    }
}

/// The view directories (`view-N`) in `dir`, by view number; none when
/// `dir` does not exist.
pub fn view_dirs(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(CacheError::io(dir, "list directory", e)),
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("view-")?.parse::<u64>().ok()?;
            Some((v, e.path()))
        })
        .collect();
    found.sort();
    Ok(found)
}

/// Whether `dir` holds (part of) a view set: its summary or any view.
pub fn holds_view_set(dir: &Path) -> Result<bool> {
    Ok(dir.join(SUMMARY_FILE).exists() || !view_dirs(dir)?.is_empty())
}

/// Refuses `out` as the directory of a cache of the plain images when it
/// holds a view set, unless `overwrite`: the plain cache's manifest would be
/// read instead of the views. The error names the setting `out`.
pub(crate) fn check_plain_root(out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && holds_view_set(out)? {
        return Err(CacheError::input(
            "out",
            format!(
                "{} holds a view set; write the cache of the plain images elsewhere, or set \
                 `overwrite` to replace the view set",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// Refuses `out` as a view set's root when it holds a cache of the plain
/// images, unless `overwrite`. The error names the setting `out`.
pub(crate) fn check_view_set_root(out: &Path, overwrite: bool) -> Result<()> {
    if !overwrite && out.join(MANIFEST_FILE).exists() {
        return Err(CacheError::input(
            "out",
            format!(
                "{} holds a cache of the plain images; write the view set elsewhere, or set \
                 `overwrite` to replace the cache",
                out.display()
            ),
        ));
    }
    Ok(())
}

/// After a cache of the plain images written with `overwrite` has committed
/// in `out`, removes the view set it replaced there (its summary first, then
/// its view directories), which would otherwise sit beside it unread.
pub(crate) fn remove_replaced_view_set(out: &Path) -> Result<()> {
    crate::fsutil::remove_if_present(&out.join(SUMMARY_FILE))?;
    remove_views_from(out, 0)
}

/// After a view set of `views` views written with `overwrite` has committed
/// in `out`, removes what it replaced there: a cache of the plain images
/// (its manifest first, which readers would open instead of the views, then
/// its shards and build record) and the views of an earlier, larger set.
pub(crate) fn remove_replaced_plain_cache(out: &Path, views: u64) -> Result<()> {
    crate::fsutil::remove_if_present(&out.join(MANIFEST_FILE))?;
    let entries = std::fs::read_dir(out).map_err(|e| CacheError::io(out, "list directory", e))?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if super::writer::is_shard_file(&name) || name == super::writer::BUILD_FILE {
            crate::fsutil::remove_if_present(&entry.path())?;
        }
    }
    remove_views_from(out, views)
}

/// Removes every view directory `view-N` of `out` with `N >= first`, the
/// highest first (a removal stopped part-way leaves no gap before the rest).
fn remove_views_from(out: &Path, first: u64) -> Result<()> {
    for (v, dir) in view_dirs(out)?.into_iter().rev() {
        if v >= first {
            std::fs::remove_dir_all(&dir).map_err(|e| CacheError::io(&dir, "remove", e))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(clean: Option<f64>, agreements: &[f64]) -> ViewSetSummary {
        ViewSetSummary {
            augment: "flip,mixup=0.2".into(),
            seed: 2,
            views: agreements.len() as u64,
            clean_agreement: clean,
            clean_seconds: clean.map(|_| 0.5),
            view_stats: agreements
                .iter()
                .enumerate()
                .map(|(v, &a)| ViewStats {
                    view: v as u64,
                    agreement: Some(a),
                    bytes_per_sample: 20.0 + v as f64,
                    build_seconds: Some(1.0),
                })
                .collect(),
        }
    }

    fn info(views: u64) -> ViewInfo {
        ViewInfo {
            augment: "flip,mixup=0.2".into(),
            seed: 2,
            view: 0,
            views,
        }
    }

    #[test]
    fn costs_and_the_warning_come_from_the_views() {
        let s = summary(Some(0.95), &[0.93, 0.80, 0.89]);
        assert_eq!(s.bytes_per_sample_per_view(), 21.0);
        assert_eq!(s.build_seconds(), Some(3.5));
        assert_eq!(s.unreadable_views(), vec![(1, 0.80), (2, 0.89)]);
        let w = s.agreement_warning().unwrap();
        for needle in ["on 2 of the 3 views", "84.5%", "view 1: 80.0%", "95.0%"] {
            assert!(w.contains(needle), "{needle}: {w}");
        }
        // The summary's augmentation mixes: the advice says what the
        // measure cannot tell apart, and to compare on validation.
        assert!(
            w.contains("mixing itself") && w.contains("on validation"),
            "{w}"
        );
        let plain = ViewSetSummary {
            augment: "flip,shift=2".into(),
            ..s.clone()
        };
        let w = plain.agreement_warning().unwrap();
        assert!(
            w.contains("teach the teacher's confusion") && !w.contains("mixing"),
            "{w}"
        );
        // Within 5 points, or without a clean agreement: no warning.
        assert!(summary(Some(0.95), &[0.93, 0.91])
            .agreement_warning()
            .is_none());
        assert!(summary(None, &[0.1]).agreement_warning().is_none());
        let imported = ViewSetSummary {
            view_stats: vec![ViewStats {
                build_seconds: None,
                ..summary(None, &[0.5]).view_stats[0].clone()
            }],
            ..summary(None, &[0.5])
        };
        assert_eq!(imported.build_seconds(), None);
        assert!(imported.describe().contains("unrecorded time"));
    }

    #[test]
    fn the_summary_round_trips_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(ViewSetSummary::read(dir.path(), &info(2)).unwrap(), None);
        let s = summary(Some(0.9), &[0.7, 0.8]);
        s.write(dir.path()).unwrap();
        assert_eq!(
            ViewSetSummary::read(dir.path(), &info(2)).unwrap(),
            Some(s.clone())
        );
        let e = ViewSetSummary::read(dir.path(), &info(3)).unwrap_err();
        assert!(e.to_string().contains("views.json"), "{e}");
        let mut bad = s.clone();
        bad.view_stats[1].agreement = Some(1.5);
        bad.write(dir.path()).unwrap();
        let e = ViewSetSummary::read(dir.path(), &info(2)).unwrap_err();
        assert!(e.to_string().contains("agreements in [0, 1]"), "{e}");
        let mut bad = s.clone();
        bad.view_stats.swap(0, 1);
        bad.write(dir.path()).unwrap();
        assert!(ViewSetSummary::read(dir.path(), &info(2)).is_err());
        std::fs::write(dir.path().join(SUMMARY_FILE), b"{\"augment\": 1}").unwrap();
        let e = ViewSetSummary::read(dir.path(), &info(2)).unwrap_err();
        assert!(e.to_string().contains("invalid"), "{e}");
    }
}

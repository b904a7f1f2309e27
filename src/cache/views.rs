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

use std::path::{Path, PathBuf};

use xxhash_rust::xxh3::xxh3_128;

use super::manifest::MANIFEST_FILE;
use super::writer::first_setting_difference;
use super::{CacheError, CacheReader, Result, ViewInfo};

/// Name of the directory of view `v` inside a view set.
pub fn view_dir(set: &Path, v: u64) -> PathBuf {
    set.join(format!("view-{v}"))
}

/// One cache, or the caches of all views of an augmented view set.
pub struct CacheViews {
    dir: PathBuf,
    views: Vec<CacheReader>,
}

impl From<CacheReader> for CacheViews {
    /// One open cache as a set of one view.
    fn from(reader: CacheReader) -> Self {
        CacheViews {
            dir: reader.dir().to_path_buf(),
            views: vec![reader],
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
        if dir.join(MANIFEST_FILE).exists() || !view_dir(dir, 0).exists() {
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
        let set = CacheViews {
            dir: dir.to_path_buf(),
            views,
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
                    format!("{:?}", m.dataset.view),
                    format!("{want:?} expected"),
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

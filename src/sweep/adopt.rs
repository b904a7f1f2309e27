//! Runs an earlier sweep of the same folder made under another name.
//!
//! A run's name carries its batch size (`-bB`) only in a sweep of several
//! batch sizes, and its seed (`-sS`) only in a sweep of several seeds, so
//! that a sweep's names stay short. Widening a finished sweep (adding
//! `--seeds 0,1,2` or `--batches 32,64`) therefore renames every run it
//! already holds: `mlp-784-32-10_kd-T1-a0.1` becomes
//! `mlp-784-32-10_kd-T1-a0.1-s0`. Before training, a sweep looks for each
//! run it has not got under the names the same run had in a sweep with
//! fewer batch sizes or seeds ([`earlier_names`]) and moves a directory it
//! finds there into place, when its card (or, unfinished, its checkpoint)
//! records exactly this run's config: the same settings, seed and batch
//! size, so nothing trains twice. A directory whose config differs, one the
//! current plan names itself, and one whose lock another process holds (a
//! run training there now) stay where they are.

use std::collections::HashSet;
use std::fs;
use std::path::Path;

use super::plan::{run_dir, run_name, PlannedRun, RUNS_DIR};
use crate::error::{Error, Result};
use crate::fsutil::{sync_after_replacing, try_lock_exclusive, LockError};
use crate::model::ModelDir;
use crate::train::card::ModelCard;
use crate::train::config::TrainConfig;
use crate::train::loss::LossKind;

/// The names `run` had in a sweep of the same settings with one batch size
/// or one seed: its setting without the batch tag, with it, and each with
/// and without the seed, other than its own name.
pub fn earlier_names(run: &PlannedRun, loss: LossKind) -> Vec<String> {
    let batch = run.config.batch_size;
    let mut names = Vec::new();
    for tag in [None, Some(batch)] {
        let setting = run_name(&run.student, run.kind, loss, tag);
        for name in [format!("{setting}-s{}", run.config.seed), setting] {
            if name != run.name && !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// Moves into place each run of `runs` that `out` holds under an earlier
/// name (the module doc). Returns what it moved: (earlier name, name).
pub fn adopt_earlier_runs(
    out: &Path,
    runs: &[PlannedRun],
    loss: LossKind,
) -> Result<Vec<(String, String)>> {
    let planned: HashSet<&str> = runs.iter().map(|r| r.name.as_str()).collect();
    let mut moved = Vec::new();
    for run in runs {
        let dir = run_dir(out, run);
        if dir.exists() {
            continue;
        }
        for old in earlier_names(run, loss) {
            if planned.contains(old.as_str()) {
                continue;
            }
            let from = out.join(RUNS_DIR).join(&old);
            if !from.is_dir() || recorded_config(&from)?.as_ref() != Some(&run.config) {
                continue;
            }
            // Held while the directory moves: no run of the earlier sweep
            // is writing it.
            let lock = match try_lock_exclusive(&ModelDir::new(&from).lock()) {
                Ok(Some(lock)) => lock,
                Ok(None) => continue,
                Err(LockError::Open(e) | LockError::Lock(e)) => {
                    return Err(Error::io(ModelDir::new(&from).lock(), e))
                }
            };
            fs::rename(&from, &dir).map_err(|e| Error::io(&dir, e))?;
            sync_after_replacing(&dir)?;
            drop(lock);
            moved.push((old, run.name.clone()));
            break;
        }
    }
    Ok(moved)
}

/// The config a run directory records: its card's, else its checkpoint's
/// (an unfinished run); `None` where neither is there or reads.
fn recorded_config(dir: &Path) -> Result<Option<TrainConfig>> {
    let model = ModelDir::new(dir);
    if model.card().is_file() {
        return Ok(ModelCard::load(&model.card()).ok().and_then(|c| c.config));
    }
    if model.checkpoint().is_file() {
        return Ok(crate::train::checkpoint::recorded_config(&model.checkpoint()).unwrap_or(None));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::plan::plan;
    use crate::sweep::plan::tests::cfg;

    #[test]
    fn earlier_names_drop_the_batch_tag_and_the_seed() {
        let mut c = cfg();
        c.batch_sizes = vec![32, 64];
        c.seeds = vec![0, 1];
        let runs = plan(&c).unwrap();
        let run = runs
            .iter()
            .find(|r| r.name.ends_with("-b64-s1") && !r.kind.is_baseline())
            .unwrap();
        let setting = run.name.strip_suffix("-b64-s1").unwrap();
        assert_eq!(
            earlier_names(run, c.loss),
            [
                format!("{setting}-s1"),
                setting.to_string(),
                format!("{setting}-b64"),
            ]
        );
    }
}

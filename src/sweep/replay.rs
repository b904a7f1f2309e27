//! The chosen epoch's weights for every run of a chosen setting
//! (`distill sweep --chosen-weights`).
//!
//! Validation chooses each setting's epoch. A run keeps its last epoch's
//! weights and, in `best/`, those of its own best validation epoch, which
//! is the chosen one for a single run. A setting of several seeds is chosen
//! on the mean curve over its seeds, so a seed's own best epoch need not be
//! the chosen one, and its weights after the chosen epoch were not kept.
//!
//! A run repeats itself bit for bit (the same settings, seed and thread
//! count), so they can be had again without keeping every epoch: the run is
//! trained once more, in `runs/NAME/.replay-epoch-NNN/`, to the end of the
//! chosen epoch of its own schedule, and that epoch's model becomes the
//! snapshot `runs/NAME/epoch-NNN/` ([`crate::train::snapshot_dir`]), which
//! the report reads as it reads `best/`. It is kept only when its metrics
//! up to that epoch are the run's own, figure for figure; otherwise (another
//! thread count can change the bits) nothing is kept and the replay says
//! why. An interrupted replay continues from its checkpoint.
//!
//! The replays cover the runs of each student's chosen distilled setting and
//! of its strongest baseline: the two sides the report compares on the test
//! images ([`super::significance::test_comparisons`]).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::config::SweepConfig;
use super::plan::{run_dir, PlannedRun};
use super::results::{by_student, pool_seeds, RunResult};
use super::run::{run_options, run_sources, SweepInputs};
use super::significance::weights_after_choice;
use crate::error::{Error, Result};
use crate::fsutil::fsync_dir;
use crate::model::{Backend, ModelDir};
use crate::train::best::holds_epoch;
use crate::train::card::ModelCard;
use crate::train::metrics::{read_metrics, EpochMetrics};
use crate::train::snapshot_dir;
use crate::train::trainer;

/// Prefix of the directory a run is trained again in, inside its own.
const REPLAY_PREFIX: &str = ".replay-epoch-";

/// A run to train again to `epoch`, whose weights after it were not kept.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    pub run: PlannedRun,
    pub epoch: usize,
}

/// What a replay left.
#[derive(Debug, Clone, PartialEq)]
pub enum ReplayOutcome {
    /// The snapshot, `runs/NAME/epoch-NNN/`, and the seconds it took.
    Kept { path: PathBuf, seconds: f64 },
    /// The replay's metrics were not the run's: nothing kept, and why.
    Differs(String),
}

/// The runs of each student's chosen distilled setting and strongest
/// baseline (chosen on `results`, the finished runs of `planned`) that
/// kept no weights after their side's chosen epoch.
pub fn replays_needed(out: &Path, planned: &[PlannedRun], results: &[RunResult]) -> Vec<Replay> {
    let pooled = pool_seeds(results);
    let mut needed = Vec::new();
    for row in by_student(&pooled) {
        for choice in [row.chosen(), row.chosen_baseline()].into_iter().flatten() {
            if choice.on_test {
                continue;
            }
            for (r, weights) in weights_after_choice(out, &choice) {
                let run = planned.iter().find(|p| p.name == r.name);
                if let (None, Some(run)) = (weights, run) {
                    needed.push(Replay {
                        run: run.clone(),
                        epoch: choice.epoch,
                    });
                }
            }
        }
    }
    needed
}

/// Trains `r.run` again to the end of `r.epoch` and keeps that epoch's
/// model as its snapshot `epoch-NNN/`, if the replay's metrics up to it are
/// the run's own.
pub fn replay<D: Backend>(
    device: D,
    cfg: &SweepConfig,
    r: &Replay,
    inputs: &SweepInputs<'_>,
    command: &str,
    quiet: bool,
) -> Result<ReplayOutcome> {
    let start = Instant::now();
    let dir = run_dir(&cfg.out, &r.run);
    let target = snapshot_dir(&dir, r.epoch);
    if target.exists() {
        return Err(Error::Config {
            field: "chosen_weights".into(),
            message: format!(
                "{} is there but is not this run's model after epoch {}; move it away to keep that epoch's weights there",
                target.display(),
                r.epoch
            ),
        });
    }
    let work = replay_dir(&dir, r.epoch);
    let mut opts = run_options(cfg, &r.run, inputs, command, quiet)?;
    opts.keep_best = false;
    opts.snapshot_epochs = vec![r.epoch];
    opts.stop_after_epoch = Some(r.epoch);
    opts.command = format!(
        "{command} (run {}, trained again to epoch {})",
        r.run.name, r.epoch
    );
    let sources = run_sources::<D>(cfg, &r.run, inputs);
    let own = ModelCard::load(&ModelDir::new(&dir).card())?;
    let replayed = snapshot_dir(&work, r.epoch);
    trainer::train(device.clone(), &r.run.config, &sources, &work, &opts)?;
    if !holds_epoch(&replayed, &own, r.epoch) {
        // A checkpoint at the epoch without its snapshot (the snapshot
        // moved out, then removed): nothing left to resume; start over.
        remove_replay(&work)?;
        trainer::train(device, &r.run.config, &sources, &work, &opts)?;
    }
    if !holds_epoch(&replayed, &own, r.epoch) {
        return Err(Error::Training {
            context: r.run.name.clone(),
            message: format!(
                "trained again to epoch {}, it left no model of that epoch in {}",
                r.epoch,
                replayed.display()
            ),
        });
    }
    let ran = read_metrics(&ModelDir::new(&dir).metrics())?;
    let again = read_metrics(&ModelDir::new(&replayed).metrics())?;
    if let Some(why) = first_difference(&ran, &again, r.epoch) {
        remove_replay(&work)?;
        return Ok(ReplayOutcome::Differs(why));
    }
    fs::rename(&replayed, &target).map_err(|e| Error::io(&target, e))?;
    fsync_dir(&dir)?;
    remove_replay(&work)?;
    Ok(ReplayOutcome::Kept {
        path: target,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Removes what earlier replays left in the run directories of `runs`
/// (a replay stopped after its snapshot moved, or one of an epoch no
/// longer chosen): directories named `.replay-epoch-NNN`, but for one
/// another process is training in (its lock held).
pub fn clear_replays(out: &Path, runs: &[PlannedRun]) -> Result<()> {
    for run in runs {
        let dir = run_dir(out, run);
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            // One another process is training in is its own to finish.
            let busy = crate::fsutil::lock_is_held(&ModelDir::new(entry.path()).lock());
            if name.to_string_lossy().starts_with(REPLAY_PREFIX) && !busy {
                remove_replay(&entry.path())?;
            }
        }
    }
    Ok(())
}

/// Where `run` is trained again to `epoch`.
fn replay_dir(run: &Path, epoch: usize) -> PathBuf {
    run.join(format!("{REPLAY_PREFIX}{epoch:03}"))
}

fn remove_replay(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

/// The first figure in which the replay's metrics (`again`) differ from
/// the run's (`ran`) up to epoch `epoch`, if any: the training loss, the
/// validation and test figures and the agreement with the teacher; the
/// timings differ anyway.
fn first_difference(ran: &[EpochMetrics], again: &[EpochMetrics], epoch: usize) -> Option<String> {
    if ran.len() < epoch || again.len() < epoch {
        return Some(format!(
            "the run records {} epochs and the replay {}, short of epoch {epoch}",
            ran.len(),
            again.len()
        ));
    }
    for (a, b) in ran.iter().zip(again).take(epoch) {
        let figures = [
            ("training loss", Some(a.train_loss), Some(b.train_loss)),
            ("validation accuracy", a.val_accuracy, b.val_accuracy),
            ("validation loss", a.val_loss, b.val_loss),
            ("test accuracy", a.test_accuracy, b.test_accuracy),
            ("test loss", a.test_loss, b.test_loss),
            (
                "teacher agreement",
                a.teacher_agreement,
                b.teacher_agreement,
            ),
        ];
        for (what, x, y) in figures {
            if x != y {
                return Some(format!(
                    "its {what} after epoch {} is {} where the run's was {} (a run repeats itself only with the same thread count)",
                    a.epoch,
                    shown(y),
                    shown(x)
                ));
            }
        }
    }
    None
}

fn shown(x: Option<f64>) -> String {
    x.map_or("missing".into(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(e: usize, loss: f64, val: f64) -> EpochMetrics {
        EpochMetrics {
            epoch: e,
            train_loss: loss,
            test_loss: None,
            test_accuracy: None,
            val_loss: None,
            val_accuracy: Some(val),
            teacher_agreement: None,
            lr: 0.01,
            epoch_seconds: e as f64,
            train_samples_per_sec: 100.0,
            weight_sparsity: None,
        }
    }

    #[test]
    fn a_replay_is_compared_figure_by_figure_up_to_its_epoch() {
        let ran = vec![epoch(1, 0.5, 0.8), epoch(2, 0.4, 0.82), epoch(3, 0.3, 0.81)];
        // The timings differ and the epochs after the replay's are not read.
        let mut again = ran[..2].to_vec();
        again[1].epoch_seconds = 9.0;
        assert_eq!(first_difference(&ran, &again, 2), None);
        again[1].val_accuracy = Some(0.83);
        let why = first_difference(&ran, &again, 2).unwrap();
        assert!(
            why.contains("validation accuracy after epoch 2 is 0.83 where the run's was 0.82"),
            "{why}"
        );
        again[0].train_loss = 0.6;
        let why = first_difference(&ran, &again, 2).unwrap();
        assert!(why.contains("training loss after epoch 1"), "{why}");
        assert!(first_difference(&ran, &again[..1], 2)
            .unwrap()
            .contains("short of epoch 2"));
    }
}

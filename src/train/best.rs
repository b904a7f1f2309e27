//! The model of a run's best validation epoch (`train --keep-best`):
//! `OUT/best/`, a complete model directory whose card names the epoch
//! (`snapshot_epoch`), rewritten after every epoch whose validation accuracy
//! is above every earlier epoch's. Ties keep the earlier epoch, as
//! [`best_val_epoch`] (the card's `best_val_epoch`) and a sweep's choice do,
//! so the weights in `best/` are those of the epoch validation chooses.
//!
//! A run chooses its stopping epoch on validation; without `best/` it keeps
//! only its last epoch's weights, and the chosen epoch's are gone.
//!
//! `best/` is never half-written: the new model is written whole into the
//! staging directory `OUT/.best.partial/` (card last), which then takes
//! `best/`'s place in one step where the system can exchange two
//! directories, else by two renames with the earlier `best/` set aside as
//! `OUT/.best.old/` between them. A run killed on the way leaves the
//! earlier `best/` or the new one, whole; the next run under the directory's
//! lock clears what it left ([`clear_leftovers`]). A resumed run repeats
//! the epochs after its checkpoint bit for bit, so it rewrites `best/`
//! exactly where the uninterrupted run would have.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::fsutil::{exchange, sync_after_replacing};
use crate::model::ModelDir;

use super::card::ModelCard;
use super::config::TrainConfig;
use super::fit::snapshot_dir;
use super::metrics::{best_val_epoch, EpochMetrics};

/// The staging directory a new `best/` is written into.
const STAGING: &str = ".best.partial";
/// Where the earlier `best/` waits while the new one is renamed in, where
/// the two cannot be exchanged.
const ASIDE: &str = ".best.old";

/// Refuses to keep the best epoch of a run that holds out no validation
/// split (of `train_len` training samples) to choose it on.
pub fn check_split(cfg: &TrainConfig, train_len: usize) -> Result<()> {
    match cfg.validation_split(train_len)?.is_empty() {
        false => Ok(()),
        true => Err(Error::Config {
            field: "keep_best".into(),
            message: "there is no validation split to choose the best epoch on: hold one out \
                      (`val_fraction` above 0, or `val_fold`)"
                .into(),
        }),
    }
}

/// Whether the last epoch of `metrics` is the best so far on validation
/// (strictly above every earlier epoch; false without a validation figure).
pub fn is_new_best(metrics: &[EpochMetrics]) -> bool {
    match (metrics.last(), best_val_epoch(metrics)) {
        (Some(last), Some(best)) => last.epoch == best.epoch,
        _ => false,
    }
}

/// Puts a new model in `best/`: `write` fills a staging directory (a model
/// directory of its own), which then takes `best/`'s place. On an error
/// the staging directory is removed and `best/` is as it was.
pub fn replace(dir: &ModelDir, write: impl FnOnce(&ModelDir) -> Result<()>) -> Result<()> {
    let best = dir.best();
    match fs::symlink_metadata(&best) {
        Ok(m) if !m.is_dir() => {
            return Err(Error::Config {
                field: "keep_best".into(),
                message: format!(
                    "{} is not a directory a run wrote; move it away to keep the best epoch's model there",
                    best.display()
                ),
            })
        }
        _ => {}
    }
    let staging = dir.path().join(STAGING);
    remove_dir_if_present(&staging)?;
    fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    if let Err(e) = write(&ModelDir::new(&staging)) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    if !best.exists() {
        fs::rename(&staging, &best).map_err(|e| Error::io(&best, e))?;
        return Ok(sync_after_replacing(&best)?);
    }
    if exchange(&staging, &best).is_ok() {
        sync_after_replacing(&best)?;
        // The staging name now holds the earlier model; one left behind is
        // cleared by the next run.
        let _ = fs::remove_dir_all(&staging);
        return Ok(());
    }
    let aside = dir.path().join(ASIDE);
    remove_dir_if_present(&aside)?;
    fs::rename(&best, &aside).map_err(|e| Error::io(&best, e))?;
    if let Err(e) = fs::rename(&staging, &best) {
        let _ = fs::rename(&aside, &best);
        let _ = fs::remove_dir_all(&staging);
        return Err(Error::io(&best, e));
    }
    sync_after_replacing(&best)?;
    let _ = fs::remove_dir_all(&aside);
    Ok(())
}

/// What a run killed while replacing `best/` left, cleared by the next run
/// under the directory's lock: an earlier `best/` set aside is put back
/// where `best/` is missing (removed where the new one made it in), and a
/// staging directory is removed.
pub fn clear_leftovers(dir: &ModelDir) -> Result<()> {
    let best = dir.best();
    let aside = dir.path().join(ASIDE);
    if aside.is_dir() {
        if best.exists() {
            remove_dir_if_present(&aside)?;
        } else {
            fs::rename(&aside, &best).map_err(|e| Error::io(&best, e))?;
            sync_after_replacing(&best)?;
        }
    }
    remove_dir_if_present(&dir.path().join(STAGING))
}

/// The model directory holding a run's weights after epoch `epoch`: the
/// run's own directory when `epoch` is its last (`epochs`), else its
/// `best/` or its snapshot `epoch-NNN/` ([`snapshot_dir`]) when that holds
/// the epoch and was written by the same settings. `None` when none does.
pub fn weights_after(run: &Path, epoch: usize, epochs: usize) -> Option<PathBuf> {
    if epoch == epochs {
        return Some(run.to_path_buf());
    }
    let dir = ModelDir::new(run);
    let own = ModelCard::load(&dir.card()).ok()?;
    [dir.best(), snapshot_dir(run, epoch)]
        .into_iter()
        .find(|p| holds_epoch(p, &own, epoch))
}

/// Whether the model directory `path` holds the weights after epoch
/// `epoch` of the run whose card is `own` (the same settings).
pub fn holds_epoch(path: &Path, own: &ModelCard, epoch: usize) -> bool {
    let model = ModelDir::new(path);
    ModelCard::load(&model.card()).is_ok_and(|card| {
        card.config.is_some()
            && card.config == own.config
            && card.snapshot_epoch == Some(epoch)
            && model.has_weights()
    })
}

/// After a finished run that kept its best epoch: why `best/` does not hold
/// the epoch its metrics name, if it does not (a resumed run whose repeated
/// epochs differed from the first pass, say). `None` when it does.
pub fn mismatch(dir: &ModelDir, metrics: &[EpochMetrics]) -> Option<String> {
    let want = best_val_epoch(metrics)?.epoch;
    let best = ModelDir::new(dir.best());
    let held = ModelCard::load(&best.card())
        .ok()
        .and_then(|c| c.snapshot_epoch);
    match held {
        Some(e) if e == want => None,
        Some(e) => Some(format!(
            "{} holds epoch {e}, but validation's best is epoch {want}",
            best.path().display()
        )),
        None => Some(format!(
            "{} holds no model, but validation's best is epoch {want}",
            best.path().display()
        )),
    }
}

fn remove_dir_if_present(path: &Path) -> Result<()> {
    match fs::remove_dir_all(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(epoch: usize, val: Option<f64>) -> EpochMetrics {
        EpochMetrics {
            epoch,
            train_loss: 0.0,
            test_loss: None,
            test_accuracy: None,
            val_loss: None,
            val_accuracy: val,
            teacher_agreement: None,
            lr: 0.0,
            epoch_seconds: 0.0,
            train_samples_per_sec: 0.0,
            weight_sparsity: None,
        }
    }

    #[test]
    fn a_new_best_is_strictly_above_every_earlier_epoch() {
        let m = [epoch(1, Some(0.5)), epoch(2, Some(0.6))];
        assert!(is_new_best(&m));
        assert!(is_new_best(&m[..1]));
        // A tie keeps the earlier epoch.
        let m = [epoch(1, Some(0.6)), epoch(2, Some(0.6))];
        assert!(!is_new_best(&m));
        let m = [epoch(1, Some(0.6)), epoch(2, Some(0.5))];
        assert!(!is_new_best(&m));
        assert!(!is_new_best(&[epoch(1, None)]));
        assert!(!is_new_best(&[]));
    }

    fn marked(dir: &Path, text: &str) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("model.json"), text).unwrap();
    }

    fn read(dir: &Path) -> String {
        fs::read_to_string(dir.join("model.json")).unwrap()
    }

    #[test]
    fn replacing_puts_the_new_model_in_place_and_leaves_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        for text in ["first", "second"] {
            replace(&dir, |d| {
                fs::write(d.card(), text).map_err(|e| Error::io(d.card(), e))
            })
            .unwrap();
            assert_eq!(read(&dir.best()), text);
        }
        let names: Vec<_> = fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["best"]);
    }

    #[test]
    fn a_failed_write_leaves_the_earlier_model() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        marked(&dir.best(), "earlier");
        let e = replace(&dir, |d| {
            fs::write(d.card(), "half").unwrap();
            Err(Error::io(d.weights(), std::io::Error::other("disk full")))
        })
        .unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(read(&dir.best()), "earlier");
        assert!(!tmp.path().join(STAGING).exists());
    }

    #[test]
    fn a_file_named_best_is_not_written_over() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        fs::write(dir.best(), "mine").unwrap();
        let e = replace(&dir, |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("not a directory a run wrote"), "{e}");
        assert_eq!(fs::read_to_string(dir.best()).unwrap(), "mine");
    }

    #[test]
    fn leftovers_of_a_killed_replacement_are_cleared() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        // Killed between the two renames: the earlier model is set aside.
        marked(&tmp.path().join(ASIDE), "earlier");
        marked(&tmp.path().join(STAGING), "new");
        clear_leftovers(&dir).unwrap();
        assert_eq!(read(&dir.best()), "earlier");
        assert!(!tmp.path().join(ASIDE).exists());
        assert!(!tmp.path().join(STAGING).exists());
        // Killed after the new one went in: the set-aside one goes.
        marked(&tmp.path().join(ASIDE), "older");
        clear_leftovers(&dir).unwrap();
        assert_eq!(read(&dir.best()), "earlier");
        assert!(!tmp.path().join(ASIDE).exists());
        // Nothing left: nothing to do.
        clear_leftovers(&dir).unwrap();
        assert_eq!(read(&dir.best()), "earlier");
    }
}

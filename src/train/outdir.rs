//! What a run may write over: the output directory of a training run.
//!
//! A directory that holds a finished model is written over only by a run of
//! the same settings (its card records this run's config: a rerun, which
//! trains the same model again) or with
//! `overwrite`. The data and the teacher outputs are not settings: a rerun
//! after the cache was rebuilt from a new teacher trains the model again
//! from it, as a make target expects. A checkpoint of an unfinished run is continued with `resume`
//! or discarded with `overwrite`, never silently started over; `resume` on a
//! finished run of the same settings, data and cache has nothing to do
//! ([`finished_run`]).
//!
//! A run that starts over replaces the earlier model from its first step:
//! under the directory's lock, before the run writes anything, the earlier
//! model's files (weights, masks, pruning report, curves, `model.py`,
//! metrics, and the card last) move into `OUT/previous/`, a model directory
//! of its own, whose model files the run removes once it has written its
//! model. A run stopped early therefore leaves an unfinished run (its
//! checkpoint, where it wrote one, continues with `resume`) beside the
//! earlier model, whole in `previous/` (a move stopped half-way is finished
//! by the next run), never the earlier weights and card beside the new
//! run's metrics. Until a run finishes, the model in `previous/` is the one
//! the directory holds: a run of other settings needs `overwrite` as it
//! would for the model itself. Snapshots (`epoch-NNN/`) are complete models
//! with their own cards and stay until a run writes the same epoch. With
//! `overwrite`, stray masks and `prune.json` (which would be read as the new
//! model's) are removed, and without `resume` an unfinished run's
//! checkpoint.
//!
//! A run writes its model's card last (`train::fit`), and removes its
//! checkpoint after it: a card says the model beside it is whole, and a
//! checkpoint beside a card says the run stopped before it finished, which
//! `resume` continues (with no epoch left, it writes the same model again);
//! a rerun without `resume` sets that model aside like any other and
//! removes the checkpoint. Under the lock, once the claim is granted, a
//! run removes the temporary copies (`.NAME.PID.tmp`, `.curves.PID.png`)
//! that a run killed mid-write left, in the directory and its snapshots.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsutil::remove_if_present;
use crate::model::ModelDir;

use super::card::ModelCard;
use super::config::TrainConfig;

/// What [`claim_run_dir`] found under the directory's lock.
#[derive(Debug)]
pub enum Claimed {
    /// The run may write: the file holds the lock while it does.
    Locked(fs::File),
    /// With `resume`, a finished run of the same settings, data and cache
    /// ([`finished_run`]), written while this one waited (a requeued job
    /// beside its twin): nothing to do, and nothing was changed.
    Finished(Box<ModelCard>),
}

/// Where a run reads its samples and teacher outputs from, so that a
/// finished run of them is recognised ([`finished_run`]).
#[derive(Debug, Clone, Copy)]
pub struct RunInputs<'a> {
    pub train_fingerprint: &'a str,
    /// `None` for hard labels.
    pub cache_id: Option<&'a str>,
    /// The online teacher's weights fingerprint (`None` without one).
    pub online_teacher: Option<&'a str>,
}

/// Checks that a run of `cfg` may write into `dir`, takes the directory's
/// lock (`ModelDir::lock`, flock), removes what runs killed mid-write left
/// (`clear_dead_writes`) and sets aside the earlier model the run replaces
/// (the module doc). With `resume` (and without `overwrite`), a
/// finished run of `inputs` found under the lock is returned instead, with
/// nothing changed. A refused directory is left as it was, with no lock
/// file added. Errors name the field `out` and say which setting differs.
pub fn claim_run_dir(
    dir: &Path,
    cfg: &TrainConfig,
    inputs: RunInputs<'_>,
    resume: bool,
    overwrite: bool,
) -> Result<Claimed> {
    if let Err(e) = plan_claim(dir, cfg, resume, overwrite) {
        // A run writing there now (between its weights and its card, say)
        // is what to report, not the state it is passing through.
        return Err(if lock_is_held(dir) { busy(dir) } else { e });
    }
    let lock = lock_run_dir(dir)?;
    let model = ModelDir::new(dir);
    // Looked at again under the lock: a run that held it may have finished
    // in between.
    if resume && !overwrite {
        if let Some(card) = finished_run(&model, cfg, inputs) {
            return Ok(Claimed::Finished(Box::new(card)));
        }
    }
    let claim = plan_claim(dir, cfg, resume, overwrite)?;
    clear_dead_writes(&model)?;
    if claim.set_aside {
        set_aside_earlier_model(&model)?;
    }
    for path in claim.remove {
        remove_if_present(&path)?;
    }
    Ok(Claimed::Locked(lock))
}

/// Removes the temporary copies of the run's files (`.NAME.PID.tmp`,
/// `.curves.PID.png`) that a run killed while writing them left: under the
/// directory's lock no live run owns them.
fn clear_dead_writes(dir: &ModelDir) -> Result<()> {
    let mut paths = model_files(dir).to_vec();
    paths.push(dir.checkpoint());
    let names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    crate::fsutil::clear_dead_temporaries(dir.path(), &names)?;
    // The snapshots (`epoch-NNN/`) the run writes under the same lock.
    let entries = fs::read_dir(dir.path()).map_err(|e| Error::io(dir.path(), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir.path(), e))?;
        let name = entry.file_name();
        let snapshot = name
            .to_str()
            .and_then(|n| n.strip_prefix("epoch-"))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
        if snapshot && entry.file_type().is_ok_and(|t| t.is_dir()) {
            crate::fsutil::clear_dead_temporaries(&entry.path(), &names)?;
        }
    }
    Ok(())
}

/// Removes the model files of the earlier model that a run set aside
/// ([`claim_run_dir`]), once the run has written its own, and then
/// `previous/` itself if nothing else is in it. Anything but a directory
/// under that name (a link, a file) is not the run's and stays.
pub fn drop_earlier_model(dir: &ModelDir) -> Result<()> {
    let previous = ModelDir::new(dir.previous());
    match fs::symlink_metadata(previous.path()) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(previous.path(), e)),
    }
    for path in model_files(&previous) {
        remove_if_present(&path)?;
    }
    match fs::remove_dir(previous.path()) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::DirectoryNotEmpty
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(Error::io(previous.path(), e)),
    }
}

/// What a run does to its directory before it writes.
struct Claim {
    /// Move the earlier model's files into `previous/`.
    set_aside: bool,
    /// Files the run would otherwise leave stale.
    remove: Vec<PathBuf>,
}

/// What a run of `cfg` does to `dir` before it starts, or the error that
/// refuses the run; changes nothing.
fn plan_claim(dir: &Path, cfg: &TrainConfig, resume: bool, overwrite: bool) -> Result<Claim> {
    let mut claim = Claim {
        set_aside: false,
        remove: Vec::new(),
    };
    if dir.exists() && !dir.is_dir() {
        return Err(Error::Config {
            field: "out".into(),
            message: format!(
                "{} is a file; a run writes into a directory of its own",
                dir.display()
            ),
        });
    }
    // The run makes `dir` a directory whatever its name (`model.safetensors`
    // goes inside it); only an existing directory holds anything to protect.
    if !dir.is_dir() {
        return Ok(claim);
    }
    let dir = &ModelDir::new(dir);
    let refuse = |message: String| Error::Config {
        field: "out".into(),
        message,
    };
    if let Some(what) = other_commands_directory(dir.path()) {
        return Err(refuse(format!(
            "{} is {what}; a run writes into a directory of its own (`overwrite` does not change this)",
            dir.path().display()
        )));
    }
    if let Some(names) = files_of_no_run(dir) {
        if !overwrite {
            return Err(refuse(format!(
                "{} holds {names} but no run's model, checkpoint or lock: files a run would \
                 write over that no run wrote; use another directory, or set `overwrite` to \
                 replace them",
                dir.path().display()
            )));
        }
    }
    let holds_model = dir.card().exists() || dir.has_weights();
    let continues = resume && dir.checkpoint().exists();
    // Weights without a card beside a checkpoint: a finish stopped between
    // the two, which the checkpoint's run writes again.
    let half_finished = !dir.card().exists() && dir.has_weights() && dir.checkpoint().exists();
    let mut other = None;
    if holds_model && !(half_finished && continues) {
        other = other_run(dir, cfg);
        if let Some(why) = &other {
            if !overwrite && !dir.card().exists() && dir.checkpoint().exists() {
                return Err(refuse(format!(
                    "{} holds weights without their card (model.json) beside a checkpoint: a run \
                     stopped while it finished; set `resume` to finish it, or `overwrite` to \
                     train again",
                    dir.path().display()
                )));
            }
            if !overwrite && !dir.card().exists() {
                let previous = ModelDir::new(dir.previous());
                return Err(refuse(format!(
                    "{} holds weights without their card (model.json): a run stopped while it \
                     wrote its model{}; set `overwrite` to train again{}",
                    dir.path().display(),
                    match previous.card().exists() {
                        true => ", and the model before it is whole in previous/",
                        false => "",
                    },
                    match previous.card().exists() {
                        true => " (previous/ stays until the new run has written its model)",
                        false => "",
                    }
                )));
            }
            if !overwrite {
                return Err(refuse(format!(
                    "{} holds a model trained with other settings ({why}); use another directory, \
                     or set `overwrite` to replace it",
                    dir.path().display()
                )));
            }
        }
    } else if !holds_model {
        let previous = ModelDir::new(dir.previous());
        // A checkpoint that continues was allowed to replace it when its
        // run started.
        if previous.card().exists() && !overwrite && !continues {
            if let Some(why) = other_run(&previous, cfg) {
                return Err(refuse(format!(
                    "{} holds the model a stopped rerun set aside, trained with other settings \
                     ({why}); use another directory, or set `overwrite` to replace it",
                    previous.path().display()
                )));
            }
        }
        if dir.checkpoint().exists() && !resume && !overwrite {
            return Err(refuse(format!(
                "{} holds the checkpoint of an unfinished run; set `resume` to continue it, or \
                 `overwrite` to start over",
                dir.path().display()
            )));
        }
    }
    // A run that continues its checkpoint keeps a model of its own settings
    // (it replaces it when it finishes); any other run sets it aside first.
    claim.set_aside = holds_model && (!continues || other.is_some());
    if claim.set_aside {
        let previous = dir.previous();
        match fs::symlink_metadata(&previous) {
            Ok(m) if !m.is_dir() => {
                return Err(refuse(format!(
                    "{} is not a directory (a link or a file), and a run keeps the model it \
                     replaces there until it finishes; move it away",
                    previous.display()
                )))
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&previous, e)),
        }
    }
    if overwrite {
        // Strays a model set aside would have taken with it.
        claim.remove.extend([dir.masks(), dir.prune_report()]);
    }
    // Without `resume` the run starts over, and a checkpoint there is
    // stale: discarded with `overwrite`, or left beside the model this run
    // replaces by the run that wrote it (stopped after its card), which
    // would otherwise later be continued over this run's model.
    if !resume && (overwrite || holds_model) {
        claim.remove.push(dir.checkpoint());
    }
    Ok(claim)
}

/// A model's files in `dir`, the card last: a move stopped half-way
/// leaves the card behind, so the next run sees the model and finishes it.
/// What another command's directory `dir` is, if it is one, in words: a
/// teacher cache, a part of one, a set of views, a sweep's folder or a
/// dataset. A run's files would land among its own, and the command that
/// made it would no longer take it as its.
pub fn other_commands_directory(dir: &Path) -> Option<&'static str> {
    use crate::cache::{manifest::MANIFEST_FILE, part::PART_FILE, views::SUMMARY_FILE};
    let has = |name: &str| dir.join(name).exists();
    if has(MANIFEST_FILE) {
        Some("a teacher cache (it holds manifest.json)")
    } else if has(PART_FILE) {
        Some("a part of a cache build (it holds part.json)")
    } else if has(SUMMARY_FILE) {
        Some("a set of augmented views (it holds views.json)")
    } else if has("report.md") && dir.join("runs").is_dir() {
        Some("a sweep's folder (it holds report.md and runs/)")
    } else if crate::data::Dataset::is_in(dir) {
        Some("a dataset's directory")
    } else {
        None
    }
}

/// The names of the files a run writes that `dir` holds without any sign
/// of a run: no card, weights, checkpoint, lock, `previous/`, or
/// `metrics.jsonl` that reads as a run's metrics (what a run killed before
/// its first checkpoint leaves, a run of a version that wrote no lock among
/// them). `None` when there are none, or a run has been there.
fn files_of_no_run(dir: &ModelDir) -> Option<String> {
    let run_was_here = dir.card().exists()
        || dir.has_weights()
        || dir.checkpoint().exists()
        || dir.lock().exists()
        || dir.previous().exists()
        || super::metrics::read_metrics(&dir.metrics()).is_ok();
    if run_was_here {
        return None;
    }
    let found: Vec<String> = model_files(dir)
        .iter()
        .filter(|p| p.exists())
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    (!found.is_empty()).then(|| found.join(", "))
}

fn model_files(dir: &ModelDir) -> [PathBuf; 7] {
    [
        dir.weights().to_path_buf(),
        dir.masks(),
        dir.prune_report(),
        dir.curves(),
        dir.torch_module(),
        dir.metrics(),
        dir.card(),
    ]
}

/// Moves the model in `dir` into `dir/previous/` (renames, one file at a
/// time), so that nothing reads the new run's files as its and it survives
/// a run stopped early. A complete model (weights and card) replaces an
/// older `previous/`; the remains of a move that was itself stopped are
/// moved to join the rest; the remains of a finish that was stopped before
/// its card, beside a complete `previous/`, are removed.
fn set_aside_earlier_model(dir: &ModelDir) -> Result<()> {
    let previous = ModelDir::new(dir.previous());
    let complete = |d: &ModelDir| d.has_weights() && d.card().exists();
    if complete(dir) {
        drop_earlier_model(dir)?;
    } else if complete(&previous) {
        for path in model_files(dir) {
            remove_if_present(&path)?;
        }
        return Ok(());
    }
    fs::create_dir_all(previous.path()).map_err(|e| Error::io(previous.path(), e))?;
    for path in model_files(dir) {
        let Some(name) = path.file_name() else {
            continue;
        };
        let to = previous.path().join(name);
        match fs::rename(&path, &to) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&path, e)),
        }
    }
    Ok(())
}

/// The refusal of a directory another run holds the lock of.
fn busy(path: &Path) -> Error {
    Error::Config {
        field: "out".into(),
        message: format!(
            "{}: another run is writing this directory (it holds {}); wait for it to finish or \
             use another directory",
            path.display(),
            ModelDir::new(path).lock().display()
        ),
    }
}

/// Whether a run holds `path`'s lock now; asks only where the lock file
/// exists, so it never adds one.
fn lock_is_held(path: &Path) -> bool {
    let lock_path = ModelDir::new(path).lock();
    lock_path.is_file() && matches!(crate::fsutil::try_lock_exclusive(&lock_path), Ok(None))
}

/// Creates `dir` and takes its exclusive lock (`ModelDir::lock`), held by
/// the returned file while the run writes there: a second run into the
/// same directory is refused instead of interleaving its files with the
/// first's. The lock file stays (empty) when the run ends: a run that
/// removed it could leave a second run locking the unlinked file while a
/// third locks a new one, two writers at once.
fn lock_run_dir(path: &Path) -> Result<fs::File> {
    fs::create_dir_all(path).map_err(|e| Error::io(path, e))?;
    let lock_path = ModelDir::new(path).lock();
    match crate::fsutil::try_lock_exclusive(&lock_path) {
        Ok(Some(lock)) => Ok(lock),
        Ok(None) => Err(busy(path)),
        Err(crate::fsutil::LockError::Open(e)) => Err(Error::io(&lock_path, e)),
        Err(crate::fsutil::LockError::Lock(e)) => Err(Error::Config {
            field: "out".into(),
            message: format!(
                "{}: cannot take the lock: {e}; the file system does not support flock locks \
                 (NFS mounted with nolock, Lustre with noflock): see docs/shared-filesystems.md",
                lock_path.display()
            ),
        }),
    }
}

/// The card of a finished run of `cfg` in `dir`, trained on the same data
/// from the same teacher outputs (the same cache, or the same online
/// teacher; [`RunInputs`]): what `resume` has nothing left to do for. `None` when
/// anything differs, the card does not read, or a checkpoint says a rerun
/// is under way.
pub fn finished_run(dir: &ModelDir, cfg: &TrainConfig, inputs: RunInputs<'_>) -> Option<ModelCard> {
    if dir.checkpoint().exists() || !dir.has_weights() || dir.prune_report().exists() {
        return None;
    }
    let card = ModelCard::load(&dir.card()).ok()?;
    let same = card.config.as_ref() == Some(cfg)
        && card.snapshot_epoch.is_none()
        && card.data.as_ref().map(|d| d.train_fingerprint.as_str())
            == Some(inputs.train_fingerprint)
        && card.cache.as_ref().map(|c| c.id.as_str()) == inputs.cache_id
        && card
            .online_teacher
            .as_ref()
            .map(|t| t.weights_fingerprint.as_str())
            == inputs.online_teacher;
    same.then_some(card)
}

/// Why the model in `dir` is not an earlier run of `cfg`, or `None` when it
/// is one.
fn other_run(dir: &ModelDir, cfg: &TrainConfig) -> Option<String> {
    let card = match ModelCard::load(&dir.card()) {
        Ok(card) => card,
        Err(e) => return Some(format!("its card does not read: {e}")),
    };
    if dir.prune_report().exists() {
        return Some(format!("it is a pruned model, {}", card.spec));
    }
    if let Some(epoch) = card.snapshot_epoch {
        return Some(format!("it is the snapshot after epoch {epoch}"));
    }
    let Some(there) = &card.config else {
        return Some(format!("{} records no training config", card.spec));
    };
    if there == cfg {
        return None;
    }
    Some(first_difference(there, cfg))
}

/// The first setting in which two configs differ, as `name: A there, B
/// here` (the spec first, then the config's fields in name order).
pub fn first_difference(there: &TrainConfig, here: &TrainConfig) -> String {
    if there.spec != here.spec {
        return format!("spec {} there, {} here", there.spec, here.spec);
    }
    let as_value = |c: &TrainConfig| serde_json::to_value(c).unwrap_or(Value::Null);
    match differing_field(&as_value(there), &as_value(here), "") {
        Some((field, a, b)) => format!("{field}: {a} there, {b} here"),
        None => "the recorded config differs".into(),
    }
}

fn differing_field(a: &Value, b: &Value, prefix: &str) -> Option<(String, String, String)> {
    if a == b {
        return None;
    }
    let show = |v: Option<&Value>| v.map_or("unset".to_string(), shown);
    if let (Value::Object(x), Value::Object(y)) = (a, b) {
        let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
        for k in keys {
            let name = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match (x.get(k), y.get(k)) {
                (Some(p), Some(q)) => {
                    if let Some(found) = differing_field(p, q, &name) {
                        return Some(found);
                    }
                }
                (p, q) if p != q => return Some((name, show(p), show(q))),
                _ => {}
            }
        }
        return None;
    }
    let name = if prefix.is_empty() { "config" } else { prefix };
    Some((name.to_string(), shown(a), shown(b)))
}

/// A config value as the user wrote it: a number a setting holds as `f32`
/// (alpha, T) in its shortest form (0.1, not the 0.10000000149011612 its
/// widening to JSON's `f64` prints).
fn shown(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if v.is_f64() && f64::from(x as f32) == x => format!("{}", x as f32),
        _ => v.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUTS: RunInputs<'static> = RunInputs {
        train_fingerprint: "data",
        cache_id: None,
        online_teacher: None,
    };

    fn claim(dir: &Path, c: &TrainConfig, resume: bool, overwrite: bool) -> Result<Claimed> {
        claim_run_dir(dir, c, INPUTS, resume, overwrite)
    }

    fn cfg(spec: &str) -> TrainConfig {
        TrainConfig {
            spec: spec.into(),
            ..TrainConfig::default()
        }
    }

    #[test]
    fn names_the_first_setting_that_differs() {
        let a = cfg("mlp:784-16-10");
        assert_eq!(
            first_difference(&a, &cfg("mlp:784-32-10")),
            "spec mlp:784-16-10 there, mlp:784-32-10 here"
        );
        let mut b = a.clone();
        b.optimizer.lr = 0.5;
        let d = first_difference(&a, &b);
        assert!(
            d.starts_with("optimizer.lr: ") && d.ends_with("0.5 here"),
            "{d}"
        );
        let mut c = a.clone();
        c.val_seed = Some(3);
        assert_eq!(first_difference(&a, &c), "val_seed: unset there, 3 here");
        // An f32 setting reads as written, not widened.
        let mut d = a.clone();
        d.loss.alpha = 0.1;
        assert!(
            first_difference(&a, &d).ends_with(" there, 0.1 here"),
            "{}",
            first_difference(&a, &d)
        );
    }

    #[test]
    fn a_second_run_into_a_locked_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("run");
        let first = lock_run_dir(&dir).unwrap();
        let e = lock_run_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("another run is writing"), "{e}");
        // A run caught between its weights and its card: the refusal names
        // the run writing, not the card it has yet to write.
        fs::write(ModelDir::new(&dir).weights(), b"weights").unwrap();
        let c = cfg("mlp:784-16-10");
        let e = claim(&dir, &c, false, false).unwrap_err().to_string();
        assert!(e.contains("another run is writing"), "{e}");
        drop(first);
        let e = claim(&dir, &c, false, false).unwrap_err().to_string();
        assert!(e.contains("holds weights without their card"), "{e}");
        lock_run_dir(&dir).unwrap();
    }

    #[test]
    fn an_empty_or_absent_directory_is_free() {
        let tmp = tempfile::tempdir().unwrap();
        let c = cfg("mlp:784-16-10");
        claim(tmp.path(), &c, false, false).unwrap();
        claim(&tmp.path().join("new"), &c, false, false).unwrap();
        claim(&tmp.path().join("new.safetensors"), &c, false, false).unwrap();
    }

    #[test]
    fn a_claim_removes_what_killed_writers_left_and_nothing_else() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        fs::write(dir.checkpoint(), b"state").unwrap();
        let dead = [
            ".checkpoint.safetensors.17128.tmp",
            ".model.safetensors.3.tmp",
            ".model.json.3.tmp",
            ".curves.3.png",
        ];
        let kept = [".notes.3.tmp", "notes.txt"];
        for f in dead.iter().chain(&kept) {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        // A snapshot's, and a look-alike directory's that is not one.
        for d in ["epoch-003", "epoch-x"] {
            fs::create_dir(dir.path().join(d)).unwrap();
            fs::write(dir.path().join(d).join(".model.json.3.tmp"), b"x").unwrap();
        }
        // Refused claims change nothing.
        let c = cfg("mlp:784-16-10");
        claim(dir.path(), &c, false, false).unwrap_err();
        assert!(dead.iter().all(|f| dir.path().join(f).exists()));
        claim(dir.path(), &c, true, false).unwrap();
        for f in dead {
            assert!(!dir.path().join(f).exists(), "{f}");
        }
        for f in kept {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert!(!dir.path().join("epoch-003/.model.json.3.tmp").exists());
        assert!(dir.path().join("epoch-x/.model.json.3.tmp").exists());
        assert!(dir.checkpoint().exists());
    }

    #[test]
    fn a_checkpoint_needs_resume_or_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        fs::write(dir.checkpoint(), b"state").unwrap();
        let c = cfg("mlp:784-16-10");
        let e = claim(dir.path(), &c, false, false).unwrap_err().to_string();
        assert!(
            e.contains("unfinished run") && e.contains("`resume`"),
            "{e}"
        );
        claim(dir.path(), &c, true, false).unwrap();
        assert!(dir.checkpoint().exists());
        claim(dir.path(), &c, false, true).unwrap();
        assert!(!dir.checkpoint().exists());
    }

    #[test]
    fn a_model_without_a_readable_card_needs_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        fs::write(dir.card(), b"{ not json").unwrap();
        fs::write(dir.masks(), b"old masks").unwrap();
        let c = cfg("mlp:784-16-10");
        let e = claim(dir.path(), &c, false, false).unwrap_err().to_string();
        assert!(
            e.contains("card does not read") && e.contains("`overwrite`"),
            "{e}"
        );
        assert!(dir.masks().exists(), "a refusal removes nothing");
        assert!(!dir.lock().exists(), "a refusal adds no lock file");
        claim(dir.path(), &c, false, true).unwrap();
        assert!(!dir.masks().exists(), "stale masks are cleared");
    }

    /// A finished model's files as a run of `c` leaves them.
    fn finished_model(dir: &ModelDir, c: &TrainConfig) -> Vec<PathBuf> {
        let card = ModelCard {
            spec: c.spec.clone(),
            parameters: 0,
            flops_per_sample: 0,
            weights_fingerprint: String::new(),
            normalization: None,
            data: None,
            config: Some(c.clone()),
            cache: None,
            online_teacher: None,
            test_accuracy: Some(0.5),
            test_loss: None,
            val_accuracy: None,
            val_loss: None,
            best_val_epoch: None,
            best_val_epoch_test_accuracy: None,
            snapshot_epoch: None,
            teacher_agreement: None,
            train_seconds: 1.0,
            command: String::new(),
            pytorch: String::new(),
            distill_version: String::new(),
        };
        card.save(&dir.card()).unwrap();
        let files = [
            dir.weights().to_path_buf(),
            dir.curves(),
            dir.torch_module(),
        ];
        for f in &files {
            fs::write(f, b"earlier model").unwrap();
        }
        files.into_iter().chain([dir.card()]).collect()
    }

    #[test]
    fn a_rerun_sets_the_earlier_model_aside_before_it_writes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let previous = ModelDir::new(dir.previous());
        let c = cfg("mlp:784-16-10");
        let files = finished_model(&dir, &c);
        let card = fs::read(dir.card()).unwrap();
        let lock = claim(dir.path(), &c, false, false).unwrap();
        for f in &files {
            assert!(!f.exists(), "{} stayed beside the rerun", f.display());
            let kept = dir.previous().join(f.file_name().unwrap());
            assert!(kept.exists(), "{} was not set aside", f.display());
        }
        assert_eq!(fs::read(previous.card()).unwrap(), card);
        // Until the run ends, a second run into the directory is refused.
        let e = claim(dir.path(), &c, false, false).unwrap_err().to_string();
        assert!(e.contains("another run is writing"), "{e}");
        drop(lock);
        // Stopped before it wrote a model, the rerun leaves nothing to set
        // aside: the next one keeps `previous/` as it is.
        claim(dir.path(), &c, false, false).unwrap();
        assert_eq!(fs::read(previous.card()).unwrap(), card);
        // Once a run has written its model, `previous/` goes.
        finished_model(&dir, &c);
        drop_earlier_model(&dir).unwrap();
        assert!(!dir.previous().exists());
        drop_earlier_model(&dir).unwrap();
    }

    #[test]
    fn a_stopped_move_is_completed_and_a_stopped_finish_is_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let previous = ModelDir::new(dir.previous());
        let c = cfg("mlp:784-16-10");
        // Stopped after the weights moved: the card follows them.
        finished_model(&dir, &c);
        fs::create_dir(previous.path()).unwrap();
        fs::rename(dir.weights(), previous.weights()).unwrap();
        claim(dir.path(), &c, false, false).unwrap();
        assert!(previous.has_weights() && previous.card().exists());
        assert!(!dir.card().exists());
        // A finish stopped between its weights and its card, beside a
        // complete `previous/`: the half-written weights go, `previous/`
        // stays whole (`overwrite`, as weights without a card need).
        let kept = fs::read(previous.weights()).unwrap();
        fs::write(dir.weights(), b"half-finished").unwrap();
        claim(dir.path(), &c, false, true).unwrap();
        assert!(!dir.has_weights());
        assert_eq!(fs::read(previous.weights()).unwrap(), kept);
    }

    #[test]
    fn a_model_set_aside_is_protected_like_the_model_itself() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let c = cfg("mlp:784-16-10");
        finished_model(&dir, &c);
        // A rerun stopped before it wrote a checkpoint: only previous/.
        claim(dir.path(), &c, false, false).unwrap();
        let other = cfg("mlp:784-32-10");
        let e = claim(dir.path(), &other, false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("previous") && e.contains("`overwrite`"), "{e}");
        assert!(ModelDir::new(dir.previous()).has_weights());
        claim(dir.path(), &c, false, false).unwrap();
        claim(dir.path(), &other, false, true).unwrap();

        // A link or a file under the name is not the run's: refused, and
        // the model stays where it is.
        drop_earlier_model(&dir).unwrap();
        let files = finished_model(&dir, &c);
        fs::write(dir.previous(), b"a user's file").unwrap();
        let e = claim(dir.path(), &c, false, false).unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
        assert!(files.iter().all(|f| f.exists()));
        drop_earlier_model(&dir).unwrap();
        assert_eq!(fs::read(dir.previous()).unwrap(), b"a user's file");
        fs::remove_file(dir.previous()).unwrap();

        // Dropping it removes the model's files only.
        claim(dir.path(), &c, false, false).unwrap();
        fs::write(dir.previous().join("notes.txt"), b"mine").unwrap();
        drop_earlier_model(&dir).unwrap();
        assert!(!ModelDir::new(dir.previous()).card().exists());
        assert_eq!(fs::read(dir.previous().join("notes.txt")).unwrap(), b"mine");
    }

    #[test]
    fn a_finish_stopped_before_its_card_resumes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let c = cfg("mlp:784-16-10");
        fs::write(dir.weights(), b"new weights, no card yet").unwrap();
        fs::write(dir.checkpoint(), b"state").unwrap();
        claim(dir.path(), &c, true, false).unwrap();
        assert!(dir.has_weights() && dir.checkpoint().exists());
        let e = claim(dir.path(), &c, false, false).unwrap_err().to_string();
        assert!(
            e.contains("without their card (model.json) beside a checkpoint")
                && e.contains("`resume` to finish it"),
            "{e}"
        );
    }

    #[test]
    fn other_settings_are_set_aside_only_with_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let c = cfg("mlp:784-16-10");
        let files = finished_model(&dir, &c);
        let other = cfg("mlp:784-32-10");
        let e = claim(dir.path(), &other, false, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("other settings"), "{e}");
        assert!(files.iter().all(|f| f.exists()));
        assert!(!dir.previous().exists());
        claim(dir.path(), &other, false, true).unwrap();
        assert!(files.iter().all(|f| !f.exists()));
        assert!(ModelDir::new(dir.previous()).has_weights());
    }

    #[test]
    fn a_pruned_model_or_a_snapshot_is_not_taken_for_this_run() {
        let c = cfg("mlp:784-16-10");
        // A pruned model whose card records this very config, and a
        // snapshot of it: neither is this run's finished model.
        for (kind, reason) in [
            ("pruned", "it is a pruned model, mlp:784-16-10"),
            ("snapshot", "it is the snapshot after epoch 3"),
        ] {
            let tmp = tempfile::tempdir().unwrap();
            let dir = ModelDir::new(tmp.path());
            let mut files = finished_model(&dir, &c);
            if kind == "pruned" {
                fs::write(dir.prune_report(), b"{}").unwrap();
                files.push(dir.prune_report());
            } else {
                let mut card = ModelCard::load(&dir.card()).unwrap();
                card.snapshot_epoch = Some(3);
                card.save(&dir.card()).unwrap();
            }
            let before: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
            for resume in [false, true] {
                let e = claim(dir.path(), &c, resume, false)
                    .unwrap_err()
                    .to_string();
                assert!(
                    e.contains(reason) && e.contains("`overwrite`"),
                    "{kind}: {e}"
                );
                assert!(finished_run(&dir, &c, INPUTS).is_none(), "{kind}");
            }
            let after: Vec<Vec<u8>> = files.iter().map(|f| fs::read(f).unwrap()).collect();
            assert_eq!(before, after, "{kind}: a refusal changes nothing");
            assert!(!dir.previous().exists() && !dir.checkpoint().exists());
            claim(dir.path(), &c, false, true).unwrap();
            assert!(ModelDir::new(dir.previous()).has_weights(), "{kind}");
        }
    }

    #[test]
    fn a_resumed_run_keeps_what_it_continues() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let c = cfg("mlp:784-16-10");
        // A model of the run's settings beside its checkpoint stays while
        // the checkpoint continues; started over, the model is set aside.
        let files = finished_model(&dir, &c);
        fs::write(dir.checkpoint(), b"state").unwrap();
        claim(dir.path(), &c, true, false).unwrap();
        assert!(files.iter().all(|f| f.exists()) && dir.checkpoint().exists());
        claim(dir.path(), &c, false, true).unwrap();
        assert!(files.iter().all(|f| !f.exists()) && !dir.checkpoint().exists());
        // A rerun without `resume` (nor `overwrite`) over a model whose run
        // stopped after its card: the model is set aside, and its
        // checkpoint, which would later be continued over the rerun's
        // model, removed.
        fs::remove_dir_all(dir.previous()).unwrap();
        let files = finished_model(&dir, &c);
        fs::write(dir.checkpoint(), b"state").unwrap();
        claim(dir.path(), &c, false, false).unwrap();
        assert!(files.iter().all(|f| !f.exists()) && !dir.checkpoint().exists());
        assert!(ModelDir::new(dir.previous()).card().exists());
        // A model of other settings is set aside even when a checkpoint
        // continues (`overwrite` lets it be replaced).
        let files = finished_model(&dir, &cfg("mlp:784-32-10"));
        fs::write(dir.checkpoint(), b"state").unwrap();
        claim(dir.path(), &c, true, true).unwrap();
        assert!(files.iter().all(|f| !f.exists()) && dir.checkpoint().exists());
    }

    #[test]
    fn a_run_finished_while_this_one_waited_is_left_as_it_is() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let c = cfg("mlp:784-16-10");
        let files = finished_model(&dir, &c);
        let mut card = ModelCard::load(&dir.card()).unwrap();
        card.data = Some(crate::train::card::DataRef {
            dir: PathBuf::from("data"),
            train_fingerprint: INPUTS.train_fingerprint.into(),
            train_samples: 10,
            test_fingerprint: None,
            test_samples: None,
            val_samples: None,
            val_teacher_trained: None,
            trained_samples: None,
        });
        card.save(&dir.card()).unwrap();
        match claim(dir.path(), &c, true, false).unwrap() {
            Claimed::Finished(card) => assert_eq!(card.test_accuracy, Some(0.5)),
            Claimed::Locked(_) => panic!("a finished run was claimed for training"),
        }
        assert!(files.iter().all(|f| f.exists()));
        assert!(!dir.previous().exists());
        // Other data, or no `resume`: a rerun, which sets the model aside.
        let other_data = RunInputs {
            train_fingerprint: "other",
            cache_id: None,
            online_teacher: None,
        };
        let claimed = claim_run_dir(dir.path(), &c, other_data, true, false).unwrap();
        assert!(matches!(claimed, Claimed::Locked(_)));
        assert!(files.iter().all(|f| !f.exists()));
    }
}

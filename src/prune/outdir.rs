//! The output directory of `distill prune`: who may write there
//! ([`claim_out_dir`]) and how it is replaced whole ([`StagingDir`]).
//!
//! A pruned model is four files (weights, masks, the PyTorch module,
//! `prune.json`). They are written into a staging directory
//! `.NAME.PID.tmp` beside the output `NAME`, which then takes the output's
//! place in one step (an exchange of the two directories where the system
//! has one, else two renames that are undone on failure). A full disk or a
//! crash therefore leaves the earlier output as it was, never new weights
//! beside an old record. Staging directories of runs that died (their PID
//! is gone) are cleared by the next run, and an output a crash left set
//! aside between the two renames is put back.

use std::path::{Path, PathBuf};

use super::run::{PruneAmount, PruneConfig};
use crate::error::{Error, Result};
use crate::model::dir::{MASK_FILE, WEIGHTS_FILE};
use crate::model::ModelDir;

/// The files `distill prune` writes into its output directory, and a card
/// that pruning in place (now refused) once left beside them.
const PRUNE_FILES: &[&str] = &[
    WEIGHTS_FILE,
    MASK_FILE,
    "model.py",
    "prune.json",
    "model.json",
];

fn refuse(message: String) -> Error {
    Error::Config {
        field: "out".into(),
        message,
    }
}

/// Checks `cfg.out` and returns the directory to write: `cfg.out`, or the
/// directory it links to. Refuses a file, the model being pruned, a
/// directory holding a model `distill prune` did not write (no
/// `prune.json`) or other files, and (unless `overwrite`) an earlier pruned
/// model of other settings; a rerun of the same settings replaces its own
/// output. Clears what runs that died left beside the output first.
pub(super) fn claim_out_dir(source: &ModelDir, cfg: &PruneConfig) -> Result<PathBuf> {
    let out = resolve_link(&cfg.out)?;
    clear_dead_runs(&out)?;
    if out.exists() && !out.is_dir() {
        return Err(refuse(format!(
            "{} is a file; the pruned model is written into a directory of its own",
            cfg.out.display()
        )));
    }
    if !out.is_dir() {
        return Ok(out);
    }
    let dir = ModelDir::new(&out);
    let same = match (source.path().canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(refuse(format!(
            "{} is the model being pruned; write the pruned copy to another directory",
            cfg.out.display()
        )));
    }
    let holds_model = dir.has_weights() || dir.card().exists();
    if holds_model && !dir.prune_report().exists() {
        return Err(refuse(format!(
            "{} holds a model that `distill prune` did not write; prune into another \
             directory, or remove that model first",
            cfg.out.display()
        )));
    }
    let entries = std::fs::read_dir(&out).map_err(|e| Error::io(&out, e))?;
    let mut foreign: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|name| !PRUNE_FILES.contains(&name.as_str()))
        .collect();
    if !foreign.is_empty() {
        foreign.sort();
        return Err(refuse(format!(
            "{} holds files `distill prune` does not write ({}); the pruned model replaces \
             the whole directory: prune into another one",
            cfg.out.display(),
            foreign.join(", ")
        )));
    }
    if !dir.prune_report().exists() || cfg.overwrite {
        return Ok(out);
    }
    let earlier = std::fs::read(dir.prune_report())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let why = match &earlier {
        None => Some("its prune.json cannot be read".to_string()),
        Some(e) => first_difference(e, cfg),
    };
    match why {
        None => Ok(out),
        Some(why) => Err(refuse(format!(
            "{} holds an earlier pruned model of other settings ({why}); prune into another \
             directory, or set `overwrite` to replace it",
            cfg.out.display()
        ))),
    }
}

/// The first setting of `cfg` that the earlier run's `prune.json` (`e`)
/// records otherwise, as "its KEY is THERE, here HERE". The source counts
/// as the same when both paths name one directory, the layers when they
/// name the same set; a key an older record lacks reads as null.
fn first_difference(e: &serde_json::Value, cfg: &PruneConfig) -> Option<String> {
    use serde_json::{json, Value};
    let there = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
    let earlier_source = there("source");
    let same_source = match earlier_source.as_str() {
        Some(s) => {
            Path::new(s) == cfg.model
                || matches!(
                    (Path::new(s).canonicalize(), cfg.model.canonicalize()),
                    (Ok(a), Ok(b)) if a == b
                )
        }
        None => false,
    };
    if !same_source {
        return Some(format!(
            "its source is {earlier_source}, here {}",
            json!(cfg.model.display().to_string())
        ));
    }
    let layers = |v: &Value| v.as_str().map(layer_set);
    let mut here = vec![
        ("method", json!(cfg.method.as_str())),
        (
            "max_params",
            match cfg.amount {
                PruneAmount::MaxParams(n) => json!(n),
                PruneAmount::Sparsity(_) => Value::Null,
            },
        ),
        ("global", json!(cfg.global)),
    ];
    // A budget's sparsity is found, not set: only a given one is compared.
    if let PruneAmount::Sparsity(s) = cfg.amount {
        here.push(("sparsity", json!(s)));
    }
    if let Some((k, v)) = here.into_iter().find(|(k, v)| there(k) != *v) {
        return Some(format!("its {k} is {}, here {v}", there(k)));
    }
    let here_layers = json!(cfg.layers);
    (layers(&there("layers")) != layers(&here_layers))
        .then(|| format!("its layers is {}, here {here_layers}", there("layers")))
}

/// A `--layers` list as a set of layer names (`layers.0.weight` is
/// `layers.0`), whatever its spacing and order.
fn layer_set(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.strip_suffix(".weight")
                .unwrap_or(s)
                .trim_end_matches('.')
                .to_string()
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// `out`, or the path a symbolic link `out` points to (the output replaces
/// the directory, not the link).
fn resolve_link(out: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(out) {
        Ok(md) if md.file_type().is_symlink() => out.canonicalize().map_err(|_| {
            refuse(format!(
                "{} is a link to nothing; make it point to a directory, or name a directory",
                out.display()
            ))
        }),
        _ => Ok(out.to_path_buf()),
    }
}

/// The output's parent directory and its own name.
fn split_out(out: &Path) -> Result<(PathBuf, String)> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| refuse(format!("{} names no directory", out.display())))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok((parent, name))
}

/// `.NAME.PID.KIND` beside the output `NAME`.
fn beside(parent: &Path, name: &str, pid: u32, kind: &str) -> PathBuf {
    parent.join(format!(".{name}.{pid}.{kind}"))
}

/// Whether process `pid` is alive (`None`: this system cannot tell).
fn alive(pid: u32) -> Option<bool> {
    let proc_dir = Path::new("/proc");
    proc_dir
        .join("self")
        .exists()
        .then(|| proc_dir.join(pid.to_string()).exists())
}

/// Clears what pruning runs that died left beside `out`: staging
/// directories are removed, and an output set aside (`.NAME.PID.old`) is
/// put back when `out` is missing (a crash between the two renames of a
/// commit), else removed. Runs still alive, and systems that cannot tell,
/// are left alone.
fn clear_dead_runs(out: &Path) -> Result<()> {
    let (parent, name) = split_out(out)?;
    let Ok(entries) = std::fs::read_dir(&parent) else {
        return Ok(());
    };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = file.strip_prefix(&prefix) else {
            continue;
        };
        let Some((pid, kind)) = rest.split_once('.') else {
            continue;
        };
        let (Ok(pid), "tmp" | "old") = (pid.parse::<u32>(), kind) else {
            continue;
        };
        if pid == std::process::id() || alive(pid) != Some(false) {
            continue;
        }
        let path = entry.path();
        if kind == "old" && !out.exists() {
            std::fs::rename(&path, out).map_err(|e| Error::io(&path, e))?;
        } else {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// A directory `.NAME.PID.tmp` beside the output `NAME`, removed on drop
/// unless committed (put in the output's place).
pub(super) struct StagingDir {
    path: PathBuf,
    out: PathBuf,
    committed: bool,
}

impl StagingDir {
    pub(super) fn new(out: &Path) -> Result<StagingDir> {
        let (parent, name) = split_out(out)?;
        std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
        let path = beside(&parent, &name, std::process::id(), "tmp");
        if path.exists() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
        std::fs::create_dir(&path).map_err(|e| Error::io(&path, e))?;
        Ok(StagingDir {
            path,
            out: out.to_path_buf(),
            committed: false,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Puts the staged directory in the output's place: exchanged with the
    /// earlier output in one step where the system can (the earlier one is
    /// then removed from the staging name), else the earlier one is renamed
    /// aside, the staged one in, and the earlier one removed; a failed
    /// second rename puts the earlier one back.
    pub(super) fn commit(mut self) -> Result<()> {
        let (parent, name) = split_out(&self.out)?;
        if !self.out.is_dir() {
            std::fs::rename(&self.path, &self.out).map_err(|e| Error::io(&self.out, e))?;
            self.committed = true;
            return Ok(crate::fsutil::fsync_dir(&parent)?);
        }
        if crate::fsutil::exchange(&self.path, &self.out).is_ok() {
            self.committed = true;
            crate::fsutil::fsync_dir(&parent)?;
            // The staging name now holds the earlier output; a failure to
            // remove it leaves it for the next run's clearing.
            let _ = std::fs::remove_dir_all(&self.path);
            return Ok(());
        }
        let aside = beside(&parent, &name, std::process::id(), "old");
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
        }
        std::fs::rename(&self.out, &aside).map_err(|e| Error::io(&self.out, e))?;
        if let Err(e) = std::fs::rename(&self.path, &self.out) {
            let _ = std::fs::rename(&aside, &self.out);
            return Err(Error::io(&self.out, e));
        }
        self.committed = true;
        crate::fsutil::fsync_dir(&parent)?;
        let _ = std::fs::remove_dir_all(&aside);
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layer_lists_compare_as_sets() {
        assert_eq!(
            layer_set("layers.3, layers.0.weight,,layers.0"),
            layer_set("layers.0,layers.3")
        );
        assert_ne!(layer_set("layers.0"), layer_set("layers.3"));
    }

    #[test]
    fn staging_dirs_of_dead_runs_are_cleared_and_a_set_aside_output_put_back() {
        if alive(std::process::id()) != Some(true) {
            return; // no /proc: nothing is cleared, by design
        }
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p");
        // A PID far above any this system hands out: dead.
        let dead = 4_000_000_000u32;
        let stale = beside(tmp.path(), "p", dead, "tmp");
        std::fs::create_dir_all(stale.join("x")).unwrap();
        let aside = beside(tmp.path(), "p", dead, "old");
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join("prune.json"), b"{}").unwrap();
        clear_dead_runs(&out).unwrap();
        assert!(!stale.exists() && !aside.exists());
        assert_eq!(std::fs::read(out.join("prune.json")).unwrap(), b"{}");
        // With the output present, a set-aside copy is removed instead.
        std::fs::create_dir_all(&aside).unwrap();
        clear_dead_runs(&out).unwrap();
        assert!(!aside.exists() && out.join("prune.json").exists());
    }

    #[test]
    fn a_commit_replaces_the_output_whole() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p");
        for round in 0..2u8 {
            let staged = StagingDir::new(&out).unwrap();
            std::fs::write(staged.path().join("prune.json"), [round]).unwrap();
            staged.commit().unwrap();
            assert_eq!(std::fs::read(out.join("prune.json")).unwrap(), [round]);
        }
        // A staging directory dropped uncommitted is removed; the output stays.
        let staged = StagingDir::new(&out).unwrap();
        let path = staged.path().to_path_buf();
        drop(staged);
        assert!(!path.exists());
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["p"]);
    }
}

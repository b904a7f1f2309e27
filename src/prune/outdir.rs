//! The output directory of `distill prune`: who may write there
//! ([`claim_out_dir`]) and how it is replaced whole ([`StagingDir`]).
//!
//! A pruned model is four files (weights, masks, the PyTorch module,
//! `prune.json`). They are written into a staging directory
//! `.NAME.PID.tmp` beside the output `NAME`, which then takes the output's
//! place in one step (an exchange of the two directories where the system
//! has one, else two renames that are undone on failure). A full disk or a
//! crash therefore leaves the earlier output as it was, never new weights
//! beside an old record. A run holds an exclusive lock on `.NAME.lock`
//! beside the output from its checks to its commit, so two runs never
//! write one output at once, and whatever staging a run finds under the
//! lock was left by one that died: it is cleared, and an output a crash set
//! aside between the two renames is put back. The lock file exists only
//! while a run holds it ([`crate::fsutil::try_lock_transient`]): it is
//! removed when the run ends, refused or not, and one a killed run left is
//! taken over and removed by the next. The output is first checked without
//! the lock ([`check_out`]), so that a run refused for its arguments
//! creates nothing; [`claim_out_dir`] checks it again under the lock.
//!
//! Lock files (`.NAME.lock`, and a training run's `.train.lock`) inside an
//! output are distill's own, not foreign content: one that no process
//! holds is a dead run's and goes with the directory it is in; one that is
//! held means another command is writing there, and the output is refused.

use std::path::{Component, Path, PathBuf};

use super::run::{PruneAmount, PruneConfig};
use crate::error::{Error, Result};
use crate::fsutil::TransientLock;
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

/// The output a run has claimed: the directory to write (`cfg.out`, or
/// what it links to) and the lock beside it, held until the run ends (and
/// its file removed then).
pub(super) struct Claimed {
    pub(super) out: PathBuf,
    _lock: TransientLock,
}

/// Checks the output as [`claim_out_dir`] does, without its lock and
/// without clearing anything: a run refused here has created nothing. The
/// checks are made again under the lock, where they count.
pub(super) fn check_out(source: &ModelDir, source_hash: &str, cfg: &PruneConfig) -> Result<()> {
    let out = resolve_link(&normalized(&cfg.out))?;
    split_out(&out)?;
    check_out_dir(source, source_hash, cfg, &out)
}

/// Takes the lock beside `cfg.out` (refused while another run holds it),
/// clears what runs that died left there, and checks the output. Refuses a
/// file, a mount point (the output is replaced as a directory entry), the
/// model being pruned, a directory holding a model `distill prune` did not
/// write (no `prune.json`) or other files, one another command is writing
/// (a held lock file inside), and (unless `overwrite`) an earlier pruned
/// model of other settings; a rerun of the same settings replaces its own
/// output. `source_hash` identifies the source's weights (what
/// `prune.json` records as `source_weights_xxh3`). A refusal lets go of
/// the lock and removes its file.
pub(super) fn claim_out_dir(
    source: &ModelDir,
    source_hash: &str,
    cfg: &PruneConfig,
) -> Result<Claimed> {
    let out = resolve_link(&normalized(&cfg.out))?;
    let lock = lock_beside(&out)?;
    clear_dead_runs(&out)?;
    check_out_dir(source, source_hash, cfg, &out)?;
    Ok(Claimed { out, _lock: lock })
}

/// Whether `name`, an entry of an output directory, is one of distill's
/// lock files: `.NAME.lock` (a pruning run's, beside its output, or a
/// training run's `.train.lock`) or a cache's `.lock`.
fn is_lock_name(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".lock")
}

/// [`claim_out_dir`]'s checks of the directory itself.
fn check_out_dir(
    source: &ModelDir,
    source_hash: &str,
    cfg: &PruneConfig,
    out: &Path,
) -> Result<()> {
    if out.exists() && !out.is_dir() {
        return Err(refuse(format!(
            "{} is a file; the pruned model is written into a directory of its own",
            cfg.out.display()
        )));
    }
    if !out.is_dir() {
        return Ok(());
    }
    if is_mount_point(out) {
        return Err(refuse(format!(
            "{} is a mount point: the pruned model replaces the output directory whole, \
             which a mount point cannot be; prune into a directory inside it",
            cfg.out.display()
        )));
    }
    let dir = ModelDir::new(out);
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
    let entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    let mut foreign: Vec<String> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if PRUNE_FILES.contains(&name.as_str()) {
            continue;
        }
        let is_file = entry.file_type().is_ok_and(|t| t.is_file());
        if is_file && is_lock_name(&name) {
            let path = entry.path();
            if crate::fsutil::lock_is_held(&path) {
                return Err(refuse(format!(
                    "{} is being written by another distill command (it holds {}); wait for \
                     it, or prune into another directory",
                    cfg.out.display(),
                    path.display()
                )));
            }
            // A dead run's lock file: replaced with the directory.
            continue;
        }
        foreign.push(name);
    }
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
        return Ok(());
    }
    let earlier = std::fs::read(dir.prune_report())
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    let why = match &earlier {
        None => Some("its prune.json cannot be read".to_string()),
        Some(e) => first_difference(e, source_hash, cfg),
    };
    match why {
        None => Ok(()),
        Some(why) => Err(refuse(format!(
            "{} holds an earlier pruned model of other settings ({why}); prune into another \
             directory, or set `overwrite` to replace it",
            cfg.out.display()
        ))),
    }
}

/// The first setting of `cfg` that the earlier run's `prune.json` (`e`)
/// records otherwise, as "its KEY is THERE, here HERE". The source is the
/// same when its weights are (`source_weights_xxh3`; a record from before
/// that field: when both paths name one directory), the layers when they
/// name the same set; a key an older record lacks reads as null.
fn first_difference(e: &serde_json::Value, source_hash: &str, cfg: &PruneConfig) -> Option<String> {
    use serde_json::{json, Value};
    let there = |k: &str| e.get(k).cloned().unwrap_or(Value::Null);
    let earlier_source = there("source");
    let same_source = match (
        there("source_weights_xxh3").as_str(),
        earlier_source.as_str(),
    ) {
        (Some(hash), _) => hash == source_hash,
        (None, Some(s)) => matches!(
            (Path::new(s).canonicalize(), cfg.model.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        ),
        (None, None) => false,
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

/// `out` rebuilt from its parts: `p/` and `p/.` are `p`, so that the
/// output's name and parent are its own.
fn normalized(out: &Path) -> PathBuf {
    out.components()
        .filter(|c| !matches!(c, Component::CurDir))
        .collect::<PathBuf>()
        .components()
        .collect()
}

/// Whether `dir` sits on another device than its parent.
fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let parent = match dir
        .canonicalize()
        .ok()
        .and_then(|d| d.parent().map(Path::to_path_buf))
    {
        Some(p) => p,
        None => return false,
    };
    match (std::fs::metadata(dir), std::fs::metadata(parent)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Takes the exclusive lock `.NAME.lock` beside the output `NAME`; its
/// file is removed when the lock is dropped (or, after a crash, by the
/// next run that takes it).
fn lock_beside(out: &Path) -> Result<TransientLock> {
    let (parent, name) = split_out(out)?;
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let path = parent.join(format!(".{name}.lock"));
    match crate::fsutil::try_lock_transient(&path) {
        Ok(Some(file)) => Ok(file),
        Ok(None) => Err(refuse(format!(
            "another `distill prune` is writing {} (it holds {}); wait for it, or prune \
             into another directory",
            out.display(),
            path.display()
        ))),
        Err(crate::fsutil::LockError::Open(e) | crate::fsutil::LockError::Lock(e)) => {
            Err(Error::io(&path, e))
        }
    }
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
        .ok_or_else(|| no_directory_of_its_own(out))?;
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if name == ".." {
        return Err(no_directory_of_its_own(out));
    }
    Ok((parent, name))
}

/// The refusal of an output that names the current or a parent directory
/// (`.`, `..`, `./`), which holds more than a pruned model.
fn no_directory_of_its_own(out: &Path) -> Error {
    // `normalized` leaves the current directory as the empty path.
    let shown = match out.as_os_str().is_empty() {
        true => Path::new("."),
        false => out,
    };
    refuse(format!(
        "'{}' is the current or a parent directory, not one of the pruned model's own: name a new directory for it",
        shown.display()
    ))
}

/// `.NAME.PID.KIND` beside the output `NAME`.
fn beside(parent: &Path, name: &str, pid: u32, kind: &str) -> PathBuf {
    parent.join(format!(".{name}.{pid}.{kind}"))
}

/// Clears what runs that died left beside `out`. Called under the lock
/// beside it, so no run that is alive has anything there: staging
/// directories (`.NAME.PID.tmp`) are removed, and an output set aside
/// (`.NAME.PID.old`) is put back when `out` is missing (a crash between the
/// two renames of a commit), else removed. Entries that are not
/// directories are not ours (atomic writes use such names for files) and
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
        let (Ok(_), "tmp" | "old") = (pid.parse::<u32>(), kind) else {
            continue;
        };
        let path = entry.path();
        if !std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        let done = if kind == "old" && !out.exists() {
            std::fs::rename(&path, out)
        } else {
            std::fs::remove_dir_all(&path)
        };
        match done {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(Error::io(&path, e));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Gives `dir` the group of `like` where this user may (the owner of a
/// directory in a shared project's group, say), then its permission bits
/// (a change of group can clear set-group-id) with `extra` bits added
/// ([`staged_mode`]).
fn give_group_and_mode(dir: &Path, like: &std::fs::Metadata, extra: u32) -> Result<()> {
    let mut perms = like.permissions();
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let _ = std::os::unix::fs::chown(dir, None, Some(like.gid()));
        let group_given = std::fs::metadata(dir).is_ok_and(|m| m.gid() == like.gid());
        perms.set_mode(staged_mode(perms.mode(), extra, group_given));
    }
    #[cfg(not(unix))]
    let _ = extra;
    std::fs::set_permissions(dir, perms).map_err(|e| Error::io(dir, e))
}

/// The permission bits for a directory standing in for one of mode
/// `earlier`: those bits with `extra` added, and without the group's bits
/// and set-group-id where the earlier group could not be given (they would
/// open the directory to this user's own group instead).
fn staged_mode(earlier: u32, extra: u32, group_given: bool) -> u32 {
    let mode = earlier | extra;
    if group_given {
        mode
    } else {
        mode & !0o2070
    }
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
        // Owned from here, so that an error below removes it.
        let staging = StagingDir {
            path,
            out: out.to_path_buf(),
            committed: false,
        };
        // The earlier output's group from the start, with its set-group-id
        // bit, so that the files written inside take the group as the
        // earlier ones did (owner access kept for the writing).
        if let Ok(md) = std::fs::metadata(out) {
            give_group_and_mode(&staging.path, &md, 0o700)?;
        }
        Ok(staging)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// An error met while writing into the staging directory, told in the
    /// output's terms: the file as the output would have held it, the
    /// staging directory it was written in (removed again), and what became
    /// of the earlier output. Other errors pass through as they are.
    pub(super) fn in_output_terms(&self, e: Error) -> Error {
        let earlier = if self.out.is_dir() {
            "the earlier output is as it was"
        } else {
            "nothing was left behind"
        };
        let note = format!(
            "while writing it in the staging directory {}; {earlier}",
            self.path.display()
        );
        e.told_by(&self.path, &self.out, &note)
    }

    /// Puts the staged directory in the output's place: exchanged with the
    /// earlier output in one step where the system can (the earlier one is
    /// then removed from the staging name), else the earlier one is renamed
    /// aside, the staged one in, and the earlier one removed; a failed
    /// second rename puts the earlier one back.
    pub(super) fn commit(mut self) -> Result<()> {
        let (parent, name) = split_out(&self.out)?;
        // The output keeps its group and its permission bits exactly.
        if let Ok(md) = std::fs::metadata(&self.out) {
            give_group_and_mode(&self.path, &md, 0)?;
        }
        if !self.out.is_dir() {
            std::fs::rename(&self.path, &self.out).map_err(|e| Error::io(&self.out, e))?;
            self.committed = true;
            return Ok(crate::fsutil::sync_after_replacing(&self.out)?);
        }
        if crate::fsutil::exchange(&self.path, &self.out).is_ok() {
            self.committed = true;
            crate::fsutil::sync_after_replacing(&self.out)?;
            // The staging name now holds the earlier output; a failure to
            // remove it leaves it for the next run's clearing.
            let _ = std::fs::remove_dir_all(&self.path);
            return Ok(());
        }
        self.commit_by_renames(&parent, &name)
    }

    /// The commit where the two directories cannot be exchanged: the
    /// earlier output renamed aside (`.NAME.PID.old`), the staged one in,
    /// the earlier one removed. A failed second rename puts the earlier one
    /// back, and a crash between the two leaves it aside for the next run's
    /// clearing to restore.
    fn commit_by_renames(mut self, parent: &Path, name: &str) -> Result<()> {
        let aside = beside(parent, name, std::process::id(), "old");
        if aside.exists() {
            std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))?;
        }
        std::fs::rename(&self.out, &aside).map_err(|e| Error::io(&self.out, e))?;
        if let Err(e) = std::fs::rename(&self.path, &self.out) {
            let _ = std::fs::rename(&aside, &self.out);
            return Err(Error::io(&self.out, e));
        }
        self.committed = true;
        crate::fsutil::sync_after_replacing(&self.out)?;
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
    fn a_group_not_given_takes_no_group_bits() {
        assert_eq!(staged_mode(0o2770, 0o700, true), 0o2770);
        assert_eq!(staged_mode(0o2750, 0o700, true), 0o2750);
        assert_eq!(staged_mode(0o2055, 0o700, true), 0o2755);
        // Without the earlier group, its bits would go to this user's own.
        assert_eq!(staged_mode(0o2770, 0o700, false), 0o700);
        assert_eq!(staged_mode(0o755, 0, false), 0o705);
        assert_eq!(staged_mode(0o40775, 0, false), 0o40705);
    }

    #[test]
    fn layer_lists_compare_as_sets() {
        assert_eq!(
            layer_set("layers.3, layers.0.weight,,layers.0"),
            layer_set("layers.0,layers.3")
        );
        assert_ne!(layer_set("layers.0"), layer_set("layers.3"));
    }

    #[test]
    fn leftovers_are_cleared_and_a_set_aside_output_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p");
        let stale = beside(tmp.path(), "p", 123, "tmp");
        std::fs::create_dir_all(stale.join("x")).unwrap();
        let aside = beside(tmp.path(), "p", 123, "old");
        std::fs::create_dir_all(&aside).unwrap();
        std::fs::write(aside.join("prune.json"), b"{}").unwrap();
        // Not ours: a file under such a name, another output's leftover.
        let file = beside(tmp.path(), "p", 124, "tmp");
        std::fs::write(&file, b"an atomic write's").unwrap();
        let other = beside(tmp.path(), "p.x", 125, "tmp");
        std::fs::create_dir_all(&other).unwrap();
        clear_dead_runs(&out).unwrap();
        assert!(!stale.exists() && !aside.exists());
        assert!(file.exists() && other.exists());
        assert_eq!(std::fs::read(out.join("prune.json")).unwrap(), b"{}");
        // With the output present, a set-aside copy is removed instead.
        std::fs::create_dir_all(&aside).unwrap();
        clear_dead_runs(&out).unwrap();
        assert!(!aside.exists() && out.join("prune.json").exists());
    }

    #[test]
    fn one_run_at_a_time_and_outputs_by_their_own_name() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p");
        let held = lock_beside(&out).unwrap();
        let e = lock_beside(&out).unwrap_err().to_string();
        assert!(e.contains("another `distill prune` is writing"), "{e}");
        drop(held);
        // Its file goes with it: nothing is left beside the output.
        assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());
        lock_beside(&out).unwrap();
        assert_eq!(normalized(Path::new("a/p/")), Path::new("a/p"));
        assert_eq!(normalized(Path::new("a/p/.")), Path::new("a/p"));
        assert_eq!(normalized(Path::new("./p")), Path::new("p"));
    }

    #[test]
    fn a_write_error_in_staging_names_the_output_file() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p");
        let staging = StagingDir::new(&out).unwrap();
        let full = std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device");
        let e = staging.in_output_terms(Error::io(staging.path().join("model.safetensors"), full));
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "{}: No space left on device",
                out.join("model.safetensors").display()
            )),
            "{text}"
        );
        assert!(text.contains("nothing was left behind"), "{text}");
        std::fs::create_dir(&out).unwrap();
        let gone = std::io::Error::other("x");
        let text = staging
            .in_output_terms(Error::io(staging.path().join("prune.json"), gone))
            .to_string();
        assert!(text.contains("the earlier output is as it was"), "{text}");
        // A path outside the staging directory keeps its own name.
        let other = tmp.path().join("m/model.safetensors");
        let e = staging.in_output_terms(Error::io(&other, std::io::Error::other("y")));
        assert_eq!(e.to_string(), format!("{}: y", other.display()));
    }

    /// Where the file system cannot exchange two directories.
    #[test]
    fn the_two_rename_commit_replaces_the_output_or_puts_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("p");
        std::fs::create_dir(&out).unwrap();
        std::fs::write(out.join("prune.json"), b"earlier").unwrap();
        let names = || {
            let mut n: Vec<_> = std::fs::read_dir(tmp.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        // A failed second rename (the staged directory gone) puts the
        // earlier output back as it was.
        let staged = StagingDir::new(&out).unwrap();
        std::fs::remove_dir_all(staged.path()).unwrap();
        let e = staged.commit_by_renames(tmp.path(), "p").unwrap_err();
        assert!(e.to_string().starts_with(&out.display().to_string()), "{e}");
        assert_eq!(std::fs::read(out.join("prune.json")).unwrap(), b"earlier");
        assert_eq!(names(), ["p"]);
        // A whole commit: the new output in place, nothing aside.
        let staged = StagingDir::new(&out).unwrap();
        std::fs::write(staged.path().join("prune.json"), b"new").unwrap();
        staged.commit_by_renames(tmp.path(), "p").unwrap();
        assert_eq!(std::fs::read(out.join("prune.json")).unwrap(), b"new");
        assert_eq!(names(), ["p"]);
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
        // The output keeps its permission bits.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o2770)).unwrap();
        let staged = StagingDir::new(&out).unwrap();
        staged.commit().unwrap();
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o7777, 0o2770);
        // And its group, which the files written inside take too (the
        // set-group-id bit): given a group no one is in, which only root
        // may give.
        use std::os::unix::fs::MetadataExt;
        if std::os::unix::fs::chown(&out, None, Some(54_321)).is_err() {
            eprintln!("skipped: this user cannot give a directory another group");
            return;
        }
        let staged = StagingDir::new(&out).unwrap();
        std::fs::write(staged.path().join("prune.json"), b"{}").unwrap();
        staged.commit().unwrap();
        let md = std::fs::metadata(&out).unwrap();
        assert_eq!(md.gid(), 54_321);
        assert_eq!(md.permissions().mode() & 0o7777, 0o2770);
        assert_eq!(
            std::fs::metadata(out.join("prune.json")).unwrap().gid(),
            54_321
        );
    }
}

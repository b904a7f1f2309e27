//! File-system steps that keep data safe: [`atomic_write`] (temporary file,
//! fsync, rename, fsync of the directory), [`fsync_dir`] and
//! [`sync_after_replacing`] (the directory of what was renamed into place),
//! [`remove_if_present`] (a stale file removed, its absence not an error),
//! [`clear_dead_temporaries`] (what writers that died left behind),
//! [`write_if_changed`] (a rerun that would write the same bytes writes
//! nothing), [`exchange`] (two directories swapped in one step where the
//! system can), [`try_lock_exclusive`] (an output's lock file, left in
//! place), [`try_lock_transient`] (one that exists only while it is held),
//! [`lock_is_held`], and the
//! space a directory's files take and its file system has free
//! ([`files_bytes`], [`disk_bytes`], [`available_space`]).
//!
//! Every file distill replaces in place (a cache manifest, build settings,
//! weights, cards, reports) goes through [`atomic_write`] or the same steps
//! written out where the bytes are streamed (a cache's shards, exported
//! views, IDX files, merged shards) or drawn (`report::plot::write_atomically`), so a
//! crash leaves either the old file or the new one, never a torn one. A
//! pruned model is replaced as a whole directory (`prune`'s staging
//! directory, swapped in with [`exchange`]).

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An operating-system error, with the file and the step that failed.
#[derive(Debug, thiserror::Error)]
#[error("{}: cannot {action}: {source}", path.display())]
pub struct FsError {
    pub path: PathBuf,
    pub action: &'static str,
    #[source]
    pub source: std::io::Error,
}

fn fs_err<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(std::io::Error) -> FsError + 'a {
    move |source| FsError {
        path: path.to_path_buf(),
        action,
        source,
    }
}

/// Syncs a directory, so a rename inside it survives a crash (no-op where
/// directories cannot be opened for syncing).
pub fn fsync_dir(dir: &Path) -> Result<(), FsError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(fs_err(dir, "sync directory"))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

/// Swaps two existing paths in one step (Linux `renameat2` with
/// `RENAME_EXCHANGE`): a directory replaced this way is never missing, even
/// for a moment. `Err` with [`std::io::ErrorKind::Unsupported`] (or the
/// system's `EINVAL`) where the platform or file system cannot; callers fall
/// back to two renames.
pub fn exchange(a: &Path, b: &Path) -> std::io::Result<()> {
    #[cfg(all(target_os = "linux", any(target_env = "gnu", target_env = "musl")))]
    {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = |p: &Path| {
            CString::new(p.as_os_str().as_bytes())
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
        };
        let (ca, cb) = (c(a)?, c(b)?);
        // SAFETY: both are valid NUL-terminated paths that outlive the call.
        let rc = unsafe {
            libc::renameat2(
                libc::AT_FDCWD,
                ca.as_ptr(),
                libc::AT_FDCWD,
                cb.as_ptr(),
                libc::RENAME_EXCHANGE,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
    #[cfg(not(all(target_os = "linux", any(target_env = "gnu", target_env = "musl"))))]
    {
        let _ = (a, b);
        Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
    }
}

/// Opens (creating it, empty) the lock file `path` and takes an exclusive
/// `flock` on it without waiting: `Ok(None)` when another process holds it.
/// The lock goes with the returned file; the file stays in place.
pub fn try_lock_exclusive(path: &Path) -> Result<Option<File>, LockError> {
    use fs2::FileExt;
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .map_err(LockError::Open)?;
    match file.try_lock_exclusive() {
        Ok(()) => Ok(Some(file)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(LockError::Lock(e)),
    }
}

/// How often [`try_lock_transient`] tries again when the file it locked
/// was removed under it (its holder let go) before it reports the lock as
/// held: enough for any real turnover of holders.
const TRANSIENT_LOCK_TRIES: usize = 64;

/// An exclusive `flock` on a lock file that exists only while it is held
/// ([`try_lock_transient`]): dropping it removes the file, still locked,
/// and then lets go.
#[derive(Debug)]
pub struct TransientLock {
    path: PathBuf,
    _file: File,
}

impl TransientLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TransientLock {
    fn drop(&mut self) {
        // Removed before the lock goes (the file closes after this body):
        // a process waiting on this file finds it gone and takes a new one.
        let _ = fs::remove_file(&self.path);
    }
}

/// [`try_lock_exclusive`] on `path` for a lock that leaves no file behind:
/// once locked, the file at `path` must still be the one locked (a holder
/// that let go removed its file, and another process may have created a
/// new one in its place), else it tries again. So at most one process
/// holds a lock on the file that `path` names, although holders remove it:
/// `Ok(None)` while another holds it. The file is removed when the
/// returned lock is dropped; a process killed while holding it leaves the
/// empty file, which the next holder takes over and removes.
pub fn try_lock_transient(path: &Path) -> Result<Option<TransientLock>, LockError> {
    for _ in 0..TRANSIENT_LOCK_TRIES {
        let Some(file) = try_lock_exclusive(path)? else {
            return Ok(None);
        };
        if same_file(&file, path) {
            return Ok(Some(TransientLock {
                path: path.to_path_buf(),
                _file: file,
            }));
        }
    }
    Ok(None)
}

/// Whether the open `file` is the file `path` names now.
fn same_file(file: &File, path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (file.metadata(), fs::metadata(path)) {
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.is_file()
    }
}

/// Whether another process holds an exclusive lock on the existing lock
/// file `path` now (false where there is no such file, or it cannot be
/// opened or locked). Creates nothing.
pub fn lock_is_held(path: &Path) -> bool {
    use fs2::FileExt;
    let Ok(file) = fs::OpenOptions::new().read(true).write(true).open(path) else {
        return false;
    };
    matches!(file.try_lock_exclusive(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// Why [`try_lock_exclusive`] failed: the lock file could not be opened,
/// or the file system refused the lock itself (no `flock` support).
#[derive(Debug)]
pub enum LockError {
    Open(std::io::Error),
    Lock(std::io::Error),
}

/// The bytes free to this user on the file system that holds `path`, or
/// would hold it once created (its nearest existing ancestor): `None` where
/// that cannot be read.
pub fn available_space(path: &Path) -> Option<(PathBuf, u64)> {
    let existing = path
        .ancestors()
        .find(|p| p.is_dir())
        .unwrap_or(Path::new("."));
    fs2::available_space(existing)
        .ok()
        .map(|free| (existing.to_path_buf(), free))
}

/// The disk space the files directly inside `dir` take (0 where it cannot
/// be listed; [`disk_bytes`]): what a cache directory, which holds no
/// subdirectories, takes.
pub fn files_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .map(|m| disk_bytes(&m))
                .sum()
        })
        .unwrap_or(0)
}

/// The disk space a file takes: its allocated blocks on Unix (whole blocks,
/// as `du` counts them; a 43 KiB shard takes 44 KiB of 4 KiB blocks and an
/// empty file none), its length elsewhere.
pub fn disk_bytes(m: &fs::Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        m.blocks().saturating_mul(512)
    }
    #[cfg(not(unix))]
    {
        m.len()
    }
}

/// Removes the file at `path`; a file that is already gone is no error.
pub fn remove_if_present(path: &Path) -> Result<(), FsError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fs_err(path, "remove")(e)),
        _ => Ok(()),
    }
}

/// [`atomic_write`], unless `path` already holds exactly `bytes`: a rerun
/// that changes nothing writes nothing (so it also succeeds on a full disk).
pub fn write_if_changed(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let same = fs::metadata(path).is_ok_and(|m| m.len() == bytes.len() as u64)
        && fs::read(path).is_ok_and(|held| held == bytes);
    if same {
        return Ok(());
    }
    atomic_write(path, bytes)
}

/// Syncs the directory of `path` once `path` was renamed into place, so
/// the rename survives a crash; a failure names `path` and says that the
/// new file (or directory) is in place.
pub fn sync_after_replacing(path: &Path) -> Result<(), FsError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fsync_dir(dir).map_err(|e| FsError {
        path: path.to_path_buf(),
        action: "sync its directory after replacing it (the new one is in place, but may not \
                 survive a crash)",
        source: e.source,
    })
}

/// Removes from `dir` the temporary copies that writers of the files
/// `names` left when they died: `.NAME.PID.tmp` ([`atomic_write`]) and,
/// for a `.png`, `.STEM.PID.png` (`report::plot::write_atomically`), for
/// any process id. Only for a caller that holds the directory's lock, so no
/// live writer owns them. Returns what it removed.
pub fn clear_dead_temporaries(dir: &Path, names: &[&str]) -> Result<Vec<PathBuf>, FsError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(fs_err(dir, "list")(e)),
    };
    let mut removed = Vec::new();
    for entry in entries {
        let entry = entry.map_err(fs_err(dir, "list"))?;
        let file = entry.file_name();
        let Some(file) = file.to_str() else { continue };
        if names.iter().any(|n| is_dead_temporary(file, n)) {
            let path = entry.path();
            remove_if_present(&path)?;
            removed.push(path);
        }
    }
    Ok(removed)
}

/// Whether `file` is a temporary copy of `name` made by some process:
/// `.NAME.PID.tmp`, or `.STEM.PID.png` for a `.png` name.
fn is_dead_temporary(file: &str, name: &str) -> bool {
    let pid_then = |rest: &str, tail: &str| {
        rest.strip_suffix(tail)
            .is_some_and(|pid| !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()))
    };
    let Some(rest) = file.strip_prefix('.') else {
        return false;
    };
    if let Some(rest) = rest.strip_prefix(name).and_then(|r| r.strip_prefix('.')) {
        if pid_then(rest, ".tmp") {
            return true;
        }
    }
    match name.strip_suffix(".png") {
        Some(stem) => rest
            .strip_prefix(stem)
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|r| pid_then(r, ".png")),
        None => false,
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory
/// (`.NAME.PID.tmp`), synced, renamed into place, and the directory synced.
/// On a failure before the rename the temporary file is removed and `path`
/// is left as it was; the error names `path` (the file the user asked
/// for), with the step on its temporary copy that failed. Should only the
/// directory's sync after the rename fail, `path` holds the new bytes and
/// the error names `path` and says so.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = File::create(&tmp).map_err(fs_err(path, "create its temporary copy"))?;
        f.write_all(bytes)
            .map_err(fs_err(path, "write its temporary copy"))?;
        f.sync_all()
            .map_err(fs_err(path, "sync its temporary copy"))?;
        drop(f);
        fs::rename(&tmp, path).map_err(fs_err(path, "rename temp file onto"))?;
        sync_after_replacing(path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_transient_lock_is_exclusive_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".p.lock");
        let held = try_lock_transient(&path).unwrap().unwrap();
        assert_eq!(held.path(), path);
        assert!(path.is_file() && lock_is_held(&path));
        assert!(try_lock_transient(&path).unwrap().is_none());
        drop(held);
        assert!(!path.exists() && !lock_is_held(&path));
        // A file a killed holder left is taken over and removed in turn.
        fs::write(&path, b"").unwrap();
        assert!(!lock_is_held(&path));
        drop(try_lock_transient(&path).unwrap().unwrap());
        assert!(!path.exists());
        // A process that locked the file a holder then removed (it opened
        // it before the removal) does not hold the lock: the one on the
        // file that stands at the path now does.
        let first = try_lock_transient(&path).unwrap().unwrap();
        let stale = fs::File::open(&path).unwrap();
        drop(first);
        let second = try_lock_transient(&path).unwrap().unwrap();
        fs2::FileExt::try_lock_exclusive(&stale).unwrap();
        assert!(!same_file(&stale, &path));
        assert!(try_lock_transient(&path).unwrap().is_none());
        drop(second);
    }

    #[test]
    fn removes_a_file_and_accepts_one_already_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stale");
        fs::write(&path, b"x").unwrap();
        remove_if_present(&path).unwrap();
        assert!(!path.exists());
        remove_if_present(&path).unwrap();
        let e = remove_if_present(dir.path()).unwrap_err().to_string();
        assert!(e.contains("cannot remove"), "{e}");
    }

    #[test]
    fn clears_the_temporaries_of_the_named_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let keep = [
            "model.json",
            ".model.json.tmp",
            ".model.json.12x.tmp",
            ".other.json.12.tmp",
            "model.json.12.tmp",
            ".curves.12.tmp.png",
            ".train.lock",
        ];
        let gone = [
            ".model.json.12.tmp",
            ".checkpoint.safetensors.4077.tmp",
            ".curves.98.png",
            ".curves.png.98.tmp",
        ];
        for f in keep.iter().chain(&gone) {
            fs::write(dir.path().join(f), b"x").unwrap();
        }
        let names = ["model.json", "checkpoint.safetensors", "curves.png"];
        let mut removed: Vec<_> = clear_dead_temporaries(dir.path(), &names)
            .unwrap()
            .into_iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        removed.sort();
        let mut want: Vec<_> = gone.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(removed, want);
        for f in keep {
            assert!(dir.path().join(f).exists(), "{f}");
        }
        assert!(clear_dead_temporaries(&dir.path().join("absent"), &names)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        atomic_write(&path, b"one").unwrap();
        atomic_write(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn a_failed_write_names_the_file_and_keeps_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        atomic_write(&path, b"old").unwrap();
        // A directory in the way of the rename.
        let blocked = dir.path().join("sub");
        fs::create_dir(&blocked).unwrap();
        fs::write(blocked.join("x"), b"x").unwrap();
        let e = atomic_write(&blocked, b"new").unwrap_err();
        assert!(e.to_string().contains("sub"), "{e}");
        assert_eq!(fs::read(&path).unwrap(), b"old");
        let tmps = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .count();
        assert_eq!(tmps, 0);
    }

    #[test]
    fn a_temporary_copy_that_cannot_be_made_is_told_by_the_file_it_was_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing").join("card.json");
        let e = atomic_write(&path, b"x").unwrap_err();
        assert_eq!(e.path, path);
        assert_eq!(e.action, "create its temporary copy");
    }
}

//! Reliability end to end, with the real binary: `kill -9` during
//! `cache build` and `train` (the rerun ends byte-identical), environment
//! faults (disk full, read-only directory, a second writer, a cache replaced
//! under a running trainer), concurrent trainers, numbers at the edges, and
//! CLI spot checks of corruption.
//!
//! The disk-full and read-only faults mount a small tmpfs, which needs root
//! and `mount`; where those are unavailable that part says so loudly on
//! stderr ("FAULT NOT INJECTED") and, under `CI=true`, fails.
//! `DISTILL_STRESS=1` (`make stress`) runs the long variants.

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::reliability_lib::cases;
use crate::util::*;

fn assert_same_files(a: &Path, b: &Path, what: &str) {
    let (x, y) = (snapshot(a), snapshot(b));
    assert_eq!(
        x.keys().collect::<Vec<_>>(),
        y.keys().collect::<Vec<_>>(),
        "{what}: different file sets"
    );
    for (k, v) in &x {
        assert!(v == &y[k], "{what}: {k} differs");
    }
}

fn build_args<'a>(data: &'a str, teacher: &'a str, out: &'a str) -> Vec<&'a str> {
    let flags = [
        "--split",
        "test",
        "--encoding",
        "f32",
        "--shard-kib",
        "16",
        "--block-records",
        "64",
        "--batch",
        "100",
        "-q",
    ];
    cache_build_args(teacher, data, out, &flags)
}

/// Names of the complete (renamed, not `.tmp`) shard files in `dir`.
fn complete_shards(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("shard-") && n.ends_with(".dsc"))
        .collect();
    out.sort();
    out
}

/// `kill -9` at random points of `cache build`, rerun to completion: verify
/// passes and every file equals an uninterrupted build's, byte for byte.
/// Kills continue until enough of them landed while the build ran and the
/// last one left an unfinished build (`build.json`, no manifest) holding
/// complete shards, so the rerun resumes rather than builds afresh: it says
/// so ("resuming: N samples already in complete shards") and keeps those
/// shard files untouched (same inode and modification time) instead of
/// rewriting them.
#[test]
fn kill_during_cache_build_then_rerun_is_byte_identical() {
    use std::os::unix::fs::MetadataExt;
    let kills = cases(20, 120);
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    let t0 = Instant::now();
    ok(tmp.path(), &build_args(&data, &teacher, "ref"));
    let full = t0.elapsed();
    let crash = tmp.path().join("crash");
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut killed_mid = 0;
    let mut committed_seen = 0;
    let mut attempts = 0;
    let mut partial = false;
    while (killed_mid < kills || !partial) && attempts < 8 * kills {
        attempts += 1;
        let delay = full.mul_f64(rng.gen_range(0.0..0.6));
        let mut child = spawn(tmp.path(), &build_args(&data, &teacher, "crash"));
        std::thread::sleep(delay);
        let running = child.try_wait().unwrap().is_none();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        if running {
            killed_mid += 1;
        }
        // Whatever the kill point, a manifest that exists describes a whole cache.
        if crash.join("manifest.json").exists() {
            committed_seen += 1;
            ok(tmp.path(), &["cache", "verify", "crash"]);
            // Finished: start over so the next kill lands in a build again.
            fs::remove_dir_all(&crash).unwrap();
            partial = false;
            continue;
        }
        partial =
            running && crash.join("build.json").exists() && !complete_shards(&crash).is_empty();
    }
    assert!(
        killed_mid >= kills && partial,
        "{killed_mid} of {attempts} kills landed while the build ran (wanted {kills}), last state unfinished with shards: {partial}"
    );
    // The state the rerun starts from: unfinished, with complete shards.
    assert!(!crash.join("manifest.json").exists());
    assert!(crash.join("build.json").exists());
    let identity = |n: &str| {
        fs::metadata(crash.join(n))
            .ok()
            .map(|m| (m.ino(), m.modified().unwrap()))
    };
    let kept: Vec<(String, _)> = complete_shards(&crash)
        .into_iter()
        .map(|n| {
            let id = identity(&n);
            (n, id)
        })
        .collect();
    // The rerun without -q, to hear whether it resumes.
    let mut rerun = build_args(&data, &teacher, "crash");
    rerun.retain(|a| *a != "-q");
    let out = distill(tmp.path(), &rerun);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let resumed_from: u64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("resuming: "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the rerun did not resume the unfinished build:\n{stderr}"));
    assert!(resumed_from > 0, "{stderr}");
    ok(tmp.path(), &["cache", "verify", "crash"]);
    assert_same_files(&tmp.path().join("ref"), &crash, "killed build");
    let rewritten: Vec<&String> = kept
        .iter()
        .filter(|(n, id)| identity(n) != *id)
        .map(|(n, _)| n)
        .collect();
    assert!(
        rewritten.is_empty(),
        "the rerun rewrote shards of the unfinished build instead of keeping them: {rewritten:?}"
    );
    eprintln!(
        "crash build: {attempts} kill -9 at random delays in 0..0.6x of a {:.2}s build ({killed_mid} while running, manifest present {committed_seen} times, all verified); rerun resumed from sample {resumed_from} keeping {} shards, byte-identical",
        full.as_secs_f64(),
        kept.len()
    );
}

/// A synthetic teacher cache of the committed subset's training split (fast: no teacher run).
fn import_cache(cwd: &Path, out: &str) {
    let data = s(&small_data());
    let n = 2000;
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let logits: Vec<f32> = (0..n * 10).map(|_| rng.gen_range(-4.0f32..4.0)).collect();
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&cwd.join("logits.npy"), "<f4", &[n, 10], &bytes);
    let flags = [
        "--encoding",
        "f16",
        "--shard-kib",
        "16",
        "--block-records",
        "64",
        "-q",
    ];
    ok(
        cwd,
        &cache_import_args("logits.npy", &data, "train", "4", out, &flags),
    );
}

/// Three quiet, seeded epochs of the small MLP distilled from `cache` into
/// `out`, then `extra`.
fn kd_args<'a>(data: &'a str, cache: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let kd = ["--cache", cache, "--alpha", "0.5", "-T", "4"];
    let settings = ["--epochs", "3", "--batch", "64", "--seed", "5", "-q"];
    train_args(
        data,
        "mlp:784-32-10",
        out,
        &[&kd[..], &settings, extra].concat(),
    )
}

/// The synthetic cache `cache` and an undisturbed run on it into `out`;
/// returns the run's weights.
fn cache_and_reference_run(cwd: &Path, data: &str, out: &str) -> Vec<u8> {
    import_cache(cwd, "cache");
    ok(cwd, &kd_args(data, "cache", out, &[]));
    fs::read(cwd.join(out).join("model.safetensors")).unwrap()
}

/// `kill -9` at random points of `train --checkpoint-every N`, then
/// `--resume`: the final weights equal an uninterrupted run's. Kills
/// continue until enough of them landed while the run was going and the
/// last one left an unfinished run (a checkpoint, no weights) past its
/// second epoch. The last `--resume` must continue from that checkpoint,
/// not train afresh: the metrics of the epochs finished before the kill
/// (wall-clock timings included, which no fresh run reproduces) come back
/// unchanged. (The epoch just finished may be missing from the checkpoint
/// if the kill fell between the metrics line and the checkpoint, so all
/// but the last line are compared.)
#[test]
fn kill_during_train_then_resume_gives_identical_weights() {
    let kills = cases(8, 40);
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    import_cache(tmp.path(), "cache");
    let t0 = Instant::now();
    ok(tmp.path(), &kd_args(&data, "cache", "ref", &[]));
    let full = t0.elapsed();
    let want = fs::read(tmp.path().join("ref/model.safetensors")).unwrap();
    let resume = kd_args(
        &data,
        "cache",
        "run",
        &["--checkpoint-every", "4", "--resume"],
    );
    let run = tmp.path().join("run");
    let metrics = run.join("metrics.jsonl");
    let epochs_done = || fs::read_to_string(&metrics).map_or(0, |t| t.lines().count());
    let unfinished = || {
        run.join("checkpoint.safetensors").exists()
            && !run.join("model.safetensors").exists()
            && epochs_done() >= 2
    };
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut killed_mid = 0;
    let mut attempts = 0;
    let mut finished_seen = 0;
    while (killed_mid < kills || !unfinished()) && attempts < 8 * kills {
        attempts += 1;
        let delay = full.mul_f64(rng.gen_range(0.05..1.0));
        let mut child = spawn(tmp.path(), &resume);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid += 1;
        }
        child.kill().ok();
        child.wait().unwrap();
        if run.join("model.safetensors").exists() {
            // It finished before the kill: start over.
            finished_seen += 1;
            fs::remove_dir_all(&run).unwrap();
        }
    }
    assert!(
        killed_mid >= kills && unfinished(),
        "{killed_mid} of {attempts} kills landed while training ran (wanted {kills}); checkpoint without weights past epoch 2 before the last resume: {}",
        unfinished()
    );
    let before = fs::read_to_string(&metrics).unwrap();
    let kept: Vec<&str> = before.lines().collect();
    let kept = &kept[..kept.len() - 1];
    ok(tmp.path(), &resume);
    let after = fs::read_to_string(&metrics).unwrap();
    assert!(
        after.lines().take(kept.len()).eq(kept.iter().copied()),
        "the last --resume did not continue from the checkpoint: the finished epochs' metrics changed\nbefore:\n{before}\nafter:\n{after}"
    );
    let got = fs::read(run.join("model.safetensors")).unwrap();
    assert!(
        got == want,
        "resumed weights differ from the uninterrupted run"
    );
    assert!(
        !run.join("checkpoint.safetensors").exists(),
        "a finished run leaves no checkpoint"
    );
    eprintln!(
        "crash train: {attempts} kill -9 at random delays in a {:.2}s run ({killed_mid} while running, {finished_seen} finished first); --resume from a checkpoint byte-identical",
        full.as_secs_f64()
    );
}

/// Several trainers reading one cache at once get the weights of one alone.
#[test]
fn concurrent_trainers_on_one_cache_match_a_lone_trainer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let want = cache_and_reference_run(tmp.path(), &data, "alone");
    let outs: Vec<String> = (0..3).map(|i| format!("par{i}")).collect();
    let children: Vec<Child> = outs
        .iter()
        .map(|o| spawn(tmp.path(), &kd_args(&data, "cache", o, &[])))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for o in &outs {
        let got = fs::read(tmp.path().join(o).join("model.safetensors")).unwrap();
        assert!(got == want, "{o} differs from the lone run");
    }
}

/// A cache deleted, then rebuilt differently, while a trainer has it mapped:
/// the trainer finishes on the files it opened (same weights as an undisturbed
/// run), and the new cache is what the next open sees.
#[test]
fn cache_replaced_under_a_running_trainer() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let want = cache_and_reference_run(tmp.path(), &data, "ref");
    // A checkpoint taken on this cache, to resume after the replacement.
    ok(
        tmp.path(),
        &kd_args(
            &data,
            "cache",
            "ck",
            &["--checkpoint-every", "4", "--stop-after-steps", "10"],
        ),
    );
    // Checkpoints do not change a run's result; the first one shows that
    // the trainer has opened the cache and is reading it.
    let mut child = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(kd_args(&data, "cache", "run", &["--checkpoint-every", "4"]))
        .current_dir(tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let checkpoint = tmp.path().join("run/checkpoint.safetensors");
    let t0 = Instant::now();
    while !checkpoint.exists() {
        if t0.elapsed() > Duration::from_secs(120) || child.try_wait().unwrap().is_some() {
            child.kill().ok();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the trainer wrote no checkpoint (finished or stuck); stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    // Hold the trainer mid-run while its cache is replaced.
    let pid = child.id() as libc::pid_t;
    // SAFETY: signals to our own child, which has not been waited for.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGSTOP) },
        0,
        "the trainer exited before its cache could be replaced"
    );
    assert!(
        child.try_wait().unwrap().is_none() && checkpoint.exists(),
        "the trainer finished before its cache could be replaced"
    );
    // Replace it: delete every file, then build another cache (other T) in its place.
    fs::remove_dir_all(tmp.path().join("cache")).unwrap();
    let logits = tmp.path().join("logits.npy");
    ok(
        tmp.path(),
        &cache_import_args(&s(&logits), &data, "train", "2", "cache", &["-q"]),
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = fs::read(tmp.path().join("run/model.safetensors")).unwrap();
    assert!(
        got == want,
        "a trainer whose cache was replaced changed weights"
    );
    // Resuming the checkpoint on the replaced cache is refused.
    fails(
        tmp.path(),
        &kd_args(
            &data,
            "cache",
            "ck",
            &["--checkpoint-every", "4", "--resume"],
        ),
        &["checkpoint.safetensors", "replaced or rebuilt"],
    );
    let inspect = ok(tmp.path(), &["cache", "inspect", "cache"]);
    assert!(inspect.contains("temperature    2"), "{inspect}");
    // A manifest swapped in from another cache is refused at the next open.
    import_cache(tmp.path(), "other");
    fs::copy(
        tmp.path().join("other/manifest.json"),
        tmp.path().join("cache/manifest.json"),
    )
    .unwrap();
    fails(tmp.path(), &["cache", "verify", "cache"], &["cache/"]);
    fails(
        tmp.path(),
        &kd_args(&data, "cache", "run2", &[]),
        &["cache/"],
    );
}

/// The lock: a second writer is refused with a clear message, and two racing
/// builds end with one correct cache.
#[test]
fn second_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let n = 1000;
    let logits: Vec<u8> = (0..n * 10)
        .flat_map(|i| (((i * 7) % 11) as f32 - 5.0).to_le_bytes())
        .collect();
    write_npy(&tmp.path().join("l.npy"), "<f4", &[n, 10], &logits);
    let imp = |out: &'static str| cache_import_args("l.npy", &data, "test", "2", out, &["-q"]);
    // Hold the lock as another writer would.
    fs::create_dir_all(tmp.path().join("c")).unwrap();
    let lock = fs::File::create(tmp.path().join("c/.lock")).unwrap();
    fs2::FileExt::try_lock_exclusive(&lock).unwrap();
    let a = imp("c");
    fails(tmp.path(), &a, &["another process is writing this cache"]);
    assert!(!tmp.path().join("c/manifest.json").exists());
    fs2::FileExt::unlock(&lock).unwrap();
    ok(tmp.path(), &a);
    // Two racing writers.
    let b = imp("race");
    let kids: Vec<Child> = (0..2)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_distill"))
                .args(&b)
                .current_dir(tmp.path())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for k in kids {
        let o = k.wait_with_output().unwrap();
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("another process is writing"), "{e}");
        }
    }
    ok(tmp.path(), &["cache", "verify", "race"]);
    assert_same_files(
        &tmp.path().join("c"),
        &tmp.path().join("race"),
        "raced build",
    );
}

/// Says loudly that a fault could not be injected, so a skipped fault test
/// is never mistaken for a passed one: straight to the process's stderr,
/// which the test harness does not capture (`eprintln!` output of a passing
/// test is hidden). Under CI (`CI=true`) it fails the test instead, since CI
/// must run the fault tests (as root with mount(8)).
fn fault_unavailable(what: &str) {
    use std::io::Write;
    let line = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{line}\nFAULT NOT INJECTED: {what}.\nRun the tests as root with mount(8) to inject it.\n{line}\n"
    );
    let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
    assert!(!ci, "CI=true and a fault could not be injected: {what}");
}

/// A tmpfs of `kib` KiB mounted at `dir`, unmounted on drop: disk full
/// (ENOSPC) when it fills, read-only (EROFS) after a remount. Needs root and
/// mount(8); where mounting is not possible, None after
/// [`fault_unavailable`] (a failure under CI).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        fs::create_dir_all(dir).ok()?;
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(Stdio::null())
            .status();
        match st {
            Ok(s) if s.success() => Some(Tmpfs(dir.to_path_buf())),
            _ => {
                fault_unavailable(
                    "cannot mount a small tmpfs (needs root and mount), so disk full (ENOSPC) and read-only (EROFS) were not tested",
                );
                None
            }
        }
    }
    fn remount(&self, opt: &str) -> bool {
        Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn import_args<'a>(
    logits: &'a str,
    data: &'a str,
    split: &'a str,
    enc: &'a str,
    out: &'a str,
) -> Vec<&'a str> {
    // f32 shards are large (one 104 KB shard for the training split), q8 small.
    let kib = if enc == "f32" { "1024" } else { "16" };
    let flags = [
        "--encoding",
        enc,
        "--shard-kib",
        kib,
        "--block-records",
        "64",
        "-q",
        "--overwrite",
    ];
    cache_import_args(logits, data, split, "4", out, &flags)
}

/// Disk full (tmpfs, and RLIMIT_FSIZE without root) and a read-only output
/// directory: a clear error, and the earlier committed cache is untouched.
#[test]
fn disk_full_and_read_only_leave_the_committed_cache_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let data = s(&small_data());
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (name, n) in [("train.npy", 2000usize), ("test.npy", 1000)] {
        let l: Vec<u8> = (0..n * 10)
            .flat_map(|_| rng.gen_range(-4.0f32..4.0).to_le_bytes())
            .collect();
        write_npy(&tmp.path().join(name), "<f4", &[n, 10], &l);
    }
    let train_npy = s(&tmp.path().join("train.npy"));
    let test_npy = s(&tmp.path().join("test.npy"));
    let mut faults = 0;

    // RLIMIT_FSIZE: past 24 KiB per file the child gets SIGXFSZ, which the
    // binary ignores (the shell leaves its default action, death), so the
    // write fails with EFBIG.
    ok(
        tmp.path(),
        &import_args(&test_npy, &data, "test", "q8", "lim"),
    );
    let before = snapshot(&tmp.path().join("lim"));
    let big = import_args(&train_npy, &data, "train", "f32", "lim");
    let script = "ulimit -f 48; exec \"$0\" \"$@\"";
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_distill"))
        .args(&big)
        .current_dir(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("File too large") && !err.contains("panicked"),
        "{err}"
    );
    ok(tmp.path(), &["cache", "verify", "lim"]);
    let after = snapshot(&tmp.path().join("lim"));
    for (k, v) in &before {
        if k != "build.json" {
            assert!(after.get(k) == Some(v), "file-size limit: {k} changed");
        }
    }
    faults += 1;

    // A small tmpfs: the disk fills while building.
    let mnt = tmp.path().join("mnt");
    if let Some(fsys) = Tmpfs::mount(&mnt, 96) {
        let out_dir = s(&mnt.join("c"));
        let rebuild = import_args(&train_npy, &data, "train", "f32", &out_dir);
        ok(
            tmp.path(),
            &import_args(&test_npy, &data, "test", "q8", &out_dir),
        );
        let before = snapshot(&mnt.join("c"));
        fails(tmp.path(), &rebuild, &["No space left on device"]);
        // The partial shard is removed with the error: its space is free
        // again, and nothing half-written stays beside the cache.
        let partial: Vec<String> = fs::read_dir(mnt.join("c"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(partial.is_empty(), "left behind: {partial:?}");
        ok(tmp.path(), &["cache", "verify", &out_dir]);
        let after = snapshot(&mnt.join("c"));
        for (k, v) in &before {
            assert!(after.get(k) == Some(v), "disk full: {k} changed");
        }
        faults += 1;
        // An export that would not fit is refused up front: one view of the
        // 2,000 images is 6.0 MiB of f32, the file system 96 KiB.
        let vx = mnt.join("vx");
        let cache_before = snapshot(&mnt.join("c"));
        let e = fails(
            tmp.path(),
            &[
                "views",
                "export",
                "--data",
                &data,
                "--augment",
                "shift=1",
                "--views",
                "2",
                "--out",
                &s(&vx),
            ],
            &[
                "2 views of 2000 images need 12.0 MiB",
                "MiB free",
                "--views",
            ],
        );
        assert!(!e.contains("No space left"), "{e}");
        assert!(
            fs::read_dir(&vx).map_or(true, |mut d| d.next().is_none()),
            "a refused export writes nothing"
        );
        assert_eq!(
            cache_before,
            snapshot(&mnt.join("c")),
            "refused export: cache changed"
        );
        faults += 1;
        // Read-only: the same rebuild is refused, the cache untouched.
        // Clean the failed build's leftovers first (a rerun would resume them).
        let _ = Command::new("sh")
            .arg("-c")
            .arg(format!("rm -f {out_dir}/*.tmp"))
            .status();
        assert!(fsys.remount("ro"), "remount ro");
        let before = snapshot(&mnt.join("c"));
        fails(tmp.path(), &rebuild, &["Read-only file system"]);
        let new_dir = s(&mnt.join("new"));
        fails(
            tmp.path(),
            &import_args(&test_npy, &data, "test", "q8", &new_dir),
            &["Read-only file system"],
        );
        ok(tmp.path(), &["cache", "verify", &out_dir]);
        assert_eq!(before, snapshot(&mnt.join("c")), "read-only: cache changed");
        faults += 2;
        // Training that cannot write its output directory fails clearly too.
        fails(
            tmp.path(),
            &train_args(
                &data,
                "mlp:784-8-10",
                &s(&mnt.join("run")),
                &["--epochs", "1", "-q"],
            ),
            &["Read-only file system"],
        );
        faults += 1;
        assert!(fsys.remount("rw"));
    }
    eprintln!("environment faults injected: {faults} of 6 (plus the lock and replacement tests)");
}

fn import_one(cwd: &Path, logits: &[f32], n: usize, t: &str, out: &str) -> std::process::Output {
    let bytes: Vec<u8> = logits.iter().flat_map(|v| v.to_le_bytes()).collect();
    write_npy(&cwd.join(format!("{out}.npy")), "<f4", &[n, 10], &bytes);
    let data = s(&small_data());
    let logits = format!("{out}.npy");
    distill(
        cwd,
        &cache_import_args(&logits, &data, "test", t, out, &["--encoding", "f16", "-q"]),
    )
}

/// Teacher logits at the edges, temperatures and alphas out of range, empty
/// and one-sample datasets, a batch larger than the dataset.
#[test]
fn numbers_at_the_edges() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let data = s(&small_data());
    let n = 1000;
    // +-1e30: a valid, (nearly) one-hot cache whose decoded rows are finite and normalised.
    let huge: Vec<f32> = (0..n * 10)
        .map(|i| if i % 10 == (i / 10) % 10 { 1e30 } else { -1e30 })
        .collect();
    let o = import_one(cwd, &huge, n, "4", "huge");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    ok(cwd, &["cache", "verify", "huge"]);
    // SAFETY: nothing modifies the cache while it is open.
    let r = unsafe { distill::cache::CacheReader::open(&cwd.join("huge")) }.unwrap();
    for t in [4.0f32, 1.0, 20.0] {
        let all = r.read_all(t, false).unwrap();
        for (row, lp) in all.logprobs.chunks(10).enumerate() {
            assert!(lp.iter().all(|v| v.is_finite()), "row {row}: {lp:?}");
            let mass: f64 = lp.iter().map(|&v| (v as f64).exp()).sum();
            assert!((mass - 1.0).abs() < 1e-3, "row {row}: mass {mass}");
            assert_eq!(
                distill::train::loss::argmax_rows(lp, 10)[0] as usize,
                row % 10
            );
        }
    }
    // All equal: uniform.
    let o = import_one(cwd, &vec![3.5; n * 10], n, "4", "flat");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = unsafe { distill::cache::CacheReader::open(&cwd.join("flat")) }.unwrap();
    let all = r.read_all(4.0, false).unwrap();
    assert!(all.logprobs.iter().all(|&v| (v + 10f32.ln()).abs() < 1e-3));
    // NaN and infinity: refused, naming the file.
    for (name, v) in [("nan", f32::NAN), ("inf", f32::INFINITY)] {
        let mut l = vec![0.0f32; n * 10];
        l[123] = v;
        let o = import_one(cwd, &l, n, "4", name);
        assert_eq!(o.status.code(), Some(2));
        let e = String::from_utf8_lossy(&o.stderr);
        // Element 123 of 10 classes a row: sample 12.
        assert!(
            e.contains(&format!("{name}.npy"))
                && e.contains("element 123 (row 12)")
                && !e.contains("panicked"),
            "{e}"
        );
        assert!(!cwd.join(name).join("manifest.json").exists());
    }
    // Temperatures 0, negative, huge, non-finite: refused with the flag named.
    for t in ["0", "-1", "1e30", "inf", "NaN"] {
        let o = import_one(cwd, &huge, n, t, "badt");
        assert_eq!(o.status.code(), Some(2), "T={t}");
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(e.contains("--temperature"), "T={t}: {e}");
    }
    // Tiny T: refused with the range (below 0.01 a cache keeps nothing to
    // re-temper from).
    let o = import_one(cwd, &huge, n, "1e-9", "tiny");
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("--temperature") && e.contains("[0.01, 1000]"),
        "{e}"
    );
    // Logits near f32's limit divided by the smallest T overflow: a clear
    // error naming the file and the flag, not inf/NaN targets.
    let edge: Vec<f32> = huge.iter().map(|v| v.signum() * 3e38).collect();
    let o = import_one(cwd, &edge, n, "0.01", "edge");
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("edge.npy") && e.contains("overflows") && e.contains("--temperature"),
        "{e}"
    );
    assert!(!cwd.join("edge").join("manifest.json").exists());

    // Training: flags out of range are refused naming the flag.
    import_cache(cwd, "trc");
    let base = |extra: &[&'static str]| {
        let flags = [&["--epochs", "1", "-q", "--cache", "trc"][..], extra].concat();
        train_args(&data, "mlp:784-8-10", "run", &flags)
    };
    for (extra, flag) in [
        (&["--alpha=-0.1"][..], "--alpha"),
        (&["--alpha", "1.5"][..], "--alpha"),
        (&["--alpha", "NaN"][..], "--alpha"),
        (&["-T", "0"][..], "--temperature"),
        (&["--temperature=-2"][..], "--temperature"),
        (&["-T", "inf"][..], "--temperature"),
        (&["--batch", "0"][..], "--batch"),
        (&["--epochs", "0"][..], "--epochs"),
        // Past the caps: every epoch is planned before the first starts.
        (&["--epochs", "100001"][..], "--epochs"),
        (&["--epochs", "18446744073709551615"][..], "--epochs"),
        (&["--ema", "1"][..], "--ema"),
        (&["-T", "1e-30"][..], "--temperature"),
        // A std that scales the inputs past what training survives.
        (&["--normalize", "0/1e-40"][..], "--normalize"),
    ] {
        let e = fails(cwd, &base(extra), &[]);
        assert!(
            e.contains(flag) || e.contains(&flag.replace("--", "")),
            "{extra:?}: {e}"
        );
    }

    // Datasets: empty, one sample (batch larger than the dataset), and a batch
    // larger than the committed subset.
    let empty = cwd.join("empty");
    fs::create_dir_all(&empty).unwrap();
    write_npy(&empty.join("train-images.npy"), "|u1", &[0, 28, 28], &[]);
    write_npy(&empty.join("train-labels.npy"), "|u1", &[0], &[]);
    write_npy(&empty.join("test-images.npy"), "|u1", &[0, 28, 28], &[]);
    write_npy(&empty.join("test-labels.npy"), "|u1", &[0], &[]);
    let e = fails(
        cwd,
        &train_args("empty", "mlp:784-8-10", "r0", &["-q"]),
        &["empty/train-images.npy", "holds no samples"],
    );
    eprintln!("empty dataset: {}", e.trim());
    let one = cwd.join("one");
    fs::create_dir_all(&one).unwrap();
    for split in ["train", "test"] {
        write_npy(
            &one.join(format!("{split}-images.npy")),
            "|u1",
            &[1, 28, 28],
            &[9u8; 784],
        );
        write_npy(&one.join(format!("{split}-labels.npy")), "|u1", &[1], &[9]);
    }
    ok(
        cwd,
        &train_args(
            "one",
            "mlp:784-8-10",
            "r1",
            &["--epochs", "2", "--batch", "64", "-q"],
        ),
    );
    let l: Vec<u8> = (0..10).flat_map(|i| (i as f32).to_le_bytes()).collect();
    write_npy(&cwd.join("one.npy"), "<f4", &[1, 10], &l);
    ok(
        cwd,
        &cache_import_args("one.npy", "one", "train", "2", "c1", &["-q"]),
    );
    ok(cwd, &["cache", "verify", "c1"]);
    let kd = ["--epochs", "2", "--cache", "c1", "--alpha", "0.5", "-q"];
    ok(cwd, &train_args("one", "mlp:784-8-10", "r2", &kd));
    let card = model_card(&cwd.join("r2"));
    assert!(card["test_accuracy"].as_f64().is_some(), "{card}");
    ok(
        cwd,
        &train_args(
            &data,
            "mlp:784-8-10",
            "r3",
            &["--epochs", "1", "--batch", "5000", "-q"],
        ),
    );
}

/// CLI spot checks of the corruption campaign: a flipped bit in a block, the
/// header, the index and the manifest, and a truncated shard, each named.
#[test]
fn cli_reports_corruption_naming_file_and_block() {
    let tmp = tempfile::tempdir().unwrap();
    import_cache(tmp.path(), "c");
    let m: serde_json::Value =
        serde_json::from_slice(&fs::read(tmp.path().join("c/manifest.json")).unwrap()).unwrap();
    let shard = m["shards"][1]["file"].as_str().unwrap().to_string();
    let p = tmp.path().join("c").join(&shard);
    let orig = fs::read(&p).unwrap();
    let index_end = 128 + 48 * u32::from_le_bytes(orig[40..44].try_into().unwrap()) as usize;
    for (at, needle) in [
        (index_end + 9, "block 0"),
        (orig.len() - 9, "block"),
        (20, "header"),
        (140, "block index"),
    ] {
        let mut b = orig.clone();
        b[at] ^= 0x10;
        fs::write(&p, &b).unwrap();
        fails(tmp.path(), &["cache", "verify", "c"], &[&shard, needle]);
    }
    fs::write(&p, &orig[..index_end]).unwrap();
    fails(
        tmp.path(),
        &["cache", "verify", "c"],
        &[&shard, "truncated"],
    );
    fs::write(&p, &orig).unwrap();
    let mp = tmp.path().join("c/manifest.json");
    let mo = fs::read(&mp).unwrap();
    let mut mb = mo.clone();
    let at = mb.iter().position(|&c| c == b'"').unwrap() + 40;
    mb[at] ^= 0x01;
    fs::write(&mp, &mb).unwrap();
    fails(tmp.path(), &["cache", "verify", "c"], &["manifest.json"]);
    fs::write(&mp, &mo).unwrap();
    ok(tmp.path(), &["cache", "verify", "c"]);
}

/// An `--out` that is an existing file is refused by every command that
/// writes a directory, naming the flag, and the file is left as it was.
#[test]
fn an_output_that_is_a_file_is_refused_naming_the_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    fs::write(tmp.path().join("f.txt"), b"mine").unwrap();
    ok(tmp.path(), &cache_build_args(&teacher, &data, "c", &["-q"]));
    let build = format!("cache build --teacher {teacher} --data {data} -T 4 -q --out f.txt");
    for line in [
        format!("train --data {data} --student mlp:784-16-10 --epochs 1 -q --out f.txt"),
        build.clone(),
        format!("{build} --augment flip --views 2"),
        format!(
            "sweep --cache c --data {data} --students mlp:784-16-10 --temperatures 1 \
             --alphas 0.5 --epochs 1 -q --out f.txt"
        ),
        format!("prune --model {teacher} --method l1-structured --sparsity 0.5 --out f.txt"),
        format!("views export --data {data} --augment flip --views 1 --out f.txt"),
    ] {
        let args: Vec<&str> = line.split_whitespace().collect();
        let err = fails(tmp.path(), &args, &["f.txt", "is a file"]);
        assert!(!err.contains("os error"), "{line}: {err}");
        assert_eq!(fs::read(tmp.path().join("f.txt")).unwrap(), b"mine");
    }
    // As a model to read, the file is called what it is.
    fails(
        tmp.path(),
        &["eval", "--model", "f.txt", "--data", &data],
        &["f.txt", "neither a model directory nor a .safetensors file"],
    );
}

/// A trained model whose weights were replaced (another run's, of the same
/// spec) or damaged in place, without its card: every command that loads
/// the directory refuses it, naming both files, and writes nothing.
#[test]
fn every_command_refuses_weights_that_are_not_their_cards() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let data = s(&small_data());
    let quick = ["--epochs", "1", "-q"];
    ok(cwd, &train_args(&data, "mlp:784-8-10", "m", &quick));
    ok(
        cwd,
        &train_args(
            &data,
            "mlp:784-8-10",
            "other",
            &[&quick[..], &["--seed", "9"]].concat(),
        ),
    );
    let weights = cwd.join("m/model.safetensors");
    let good = fs::read(&weights).unwrap();
    let mut damaged = good.clone();
    let last = damaged.len() - 1;
    damaged[last] ^= 0x10; // a bit of the last weight: the file still parses
    for (what, bytes) in [
        (
            "replaced",
            fs::read(cwd.join("other/model.safetensors")).unwrap(),
        ),
        ("damaged", damaged),
    ] {
        fs::write(&weights, &bytes).unwrap();
        let m = s(&cwd.join("m"));
        let commands: [(&str, Vec<&str>); 5] = [
            ("eval", vec!["eval", "--data", &data, "--model", &m]),
            ("cache build", cache_build_args(&m, &data, "c", &["-q"])),
            (
                "--init-from",
                train_args(&data, "mlp:784-8-10", "r1", &["--init-from", &m, "-q"]),
            ),
            (
                "--online-teacher",
                train_args(&data, "mlp:784-8-10", "r2", &["--online-teacher", &m, "-q"]),
            ),
            (
                "prune",
                vec![
                    "prune",
                    "--model",
                    &m,
                    "--method",
                    "l1-unstructured",
                    "--sparsity",
                    "0.5",
                    "--out",
                    "p",
                ],
            ),
        ];
        for (name, args) in commands {
            let e = fails(cwd, &args, &["model.safetensors", "model.json"]);
            assert!(e.contains("damaged"), "{what}, {name}: {e}");
            for out in ["c", "r1", "r2", "p"] {
                assert!(!cwd.join(out).exists(), "{what}, {name}: {out} written");
            }
        }
        assert_eq!(
            fs::read(&weights).unwrap(),
            bytes,
            "{what}: the weights changed"
        );
    }
    // Put back, every command reads it again.
    fs::write(&weights, &good).unwrap();
    ok(cwd, &["eval", "--data", &data, "--model", "m"]);
}

/// `prune --overwrite` on a disk too small for the new output beside the
/// old: a clear error, the earlier pruned model byte for byte as it was,
/// and no staging directory left behind.
#[test]
fn prune_on_a_full_disk_leaves_the_earlier_output_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let data = s(&small_data());
    ok(
        cwd,
        &train_args(&data, "mlp:784-8-10", "m", &["--epochs", "1", "-q"]),
    );
    let mnt = cwd.join("mnt");
    // One pruned model of this size takes 64 KiB of a 96 KiB file system.
    let Some(_fsys) = Tmpfs::mount(&mnt, 96) else {
        return;
    };
    let out = s(&mnt.join("p"));
    let prune = |sparsity: &'static str| {
        let method = ["--method", "l1-unstructured", "--sparsity", sparsity];
        [&["prune", "--model", "m", "--out", &out][..], &method[..]].concat()
    };
    ok(cwd, &prune("0.5"));
    let before = snapshot(&mnt.join("p"));
    let err = fails(
        cwd,
        &[&prune("0.7")[..], &["--overwrite"]].concat(),
        &["No space left on device", "the earlier output is as it was"],
    );
    // The error names the output's file; the staging directory only as where it was written.
    assert!(err.contains(&format!("{out}/")), "{err}");
    assert_eq!(
        snapshot(&mnt.join("p")),
        before,
        "the earlier output changed"
    );
    let mut left: Vec<String> = fs::read_dir(&mnt)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".lock"))
        .collect();
    left.sort();
    assert_eq!(left, ["p"], "staging left behind");
}

/// `cache build --views --overwrite` over a plain cache removes the plain
/// cache only once the whole view set has committed: a build stopped by a
/// full disk leaves the plain cache readable byte for byte (and the views
/// built so far for a rerun), and the rerun with room finishes the set and
/// only then removes the plain cache's files.
#[test]
fn a_view_set_stopped_by_a_full_disk_leaves_the_plain_cache_it_replaces() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let (data, teacher) = (s(&small_data()), s(&teacher_dir()));
    let mnt = cwd.join("mnt");
    // The plain cache takes 48 KiB, each view about as much: the plain
    // cache and one view fit in 200 KiB, four views beside it do not.
    let Some(fsys) = Tmpfs::mount(&mnt, 200) else {
        return;
    };
    let out = s(&mnt.join("c"));
    ok(cwd, &cache_build_args(&teacher, &data, &out, &["-q"]));
    let plain = snapshot(&mnt.join("c"));
    let views = ["--augment", "shift=1", "--views", "4", "--overwrite"];
    let views_build = cache_build_args(&teacher, &data, &out, &[&["-q"][..], &views[..]].concat());
    fails(
        cwd,
        &views_build,
        &["--views", "3 views still to build", "MiB free"],
    );
    let after: std::collections::BTreeMap<_, _> = snapshot(&mnt.join("c"))
        .into_iter()
        .filter(|(k, _)| !k.starts_with("view-0"))
        .collect();
    assert_eq!(
        after, plain,
        "the plain cache changed before the view set committed"
    );
    ok(cwd, &["cache", "verify", &out]);
    assert!(fsys.remount("size=400k"), "tmpfs could not grow");
    ok(cwd, &views_build);
    let mut names: Vec<String> = fs::read_dir(mnt.join("c"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != ".lock")
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["view-0", "view-1", "view-2", "view-3", "views.json"]
    );
    ok(cwd, &["cache", "verify", &out]);
}

//! Phase one on many machines, end to end with the real binary: the bodies
//! of `examples/slurm/cache.sbatch` and `examples/kubernetes/cache-job.yaml`
//! run here for every index as concurrent processes (the index in
//! SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX, as the schedulers set it),
//! then their merge step; the merged cache verifies and equals a single
//! `cache build` byte for byte. One part is killed mid-way and rerun alone.
//! Hostile merges (missing, overlapping, duplicated, foreign, damaged
//! parts) are refused naming the part, with every part and an existing
//! output left as they were.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::util::*;

/// Parts of the examples' runs here.
const PARTS: u64 = 3;
/// 16 shards of 128 records over the 2,000 training images (f32 records of
/// 52 bytes, 64-record blocks, 8 KiB shards): parts of 5, 5 and 6 shards.
const EXTRA: &str = "--shard-kib 8 --block-records 64";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The settings every part and the single build get (the examples' variables).
fn settings(tmp: &Path) -> Vec<(&'static str, String)> {
    let bin = Path::new(env!("CARGO_BIN_EXE_distill")).parent().unwrap();
    vec![
        ("TEACHER", s(&teacher_dir())),
        ("DATA", s(&small_data())),
        ("SPLIT", "train".into()),
        ("T", "4".into()),
        ("ENCODING", "f32".into()),
        ("BATCH", "100".into()),
        ("DEVICE", "cpu".into()),
        ("PARTS", PARTS.to_string()),
        ("EXTRA", EXTRA.into()),
        ("PARTS_DIR", s(&tmp.join("parts"))),
        ("OUT", s(&tmp.join("cache"))),
        (
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        ),
    ]
}

/// A single `cache build` with the examples' settings, built once for all
/// tests (under Cargo's temporary directory for tests).
fn single_build() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_cache_parts");
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).unwrap();
        let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
        let mut args = cache_build_args(
            &teacher,
            &data,
            "single",
            &[
                "--split",
                "train",
                "--encoding",
                "f32",
                "--batch",
                "100",
                "-q",
            ],
        );
        args.extend(EXTRA.split_whitespace());
        ok(&tmp, &args);
        tmp.join("single")
    })
}

/// A shell running `script` (a file, or `-c` and a body) with the settings,
/// and no array variable but those in `index`.
fn shell(tmp: &Path, program: &str, script: &[&str], vars: &[(&str, String)]) -> Command {
    let mut c = Command::new(program);
    c.args(script)
        .current_dir(tmp)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .env_remove("SLURM_JOB_ID")
        .env_remove("DISTILL_STEP")
        .envs(settings(tmp))
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// The Slurm script run as sbatch runs it: step `step`, array task `index`.
fn slurm(tmp: &Path, step: &str, index: Option<u64>) -> Command {
    let script = repo().join("examples/slurm/cache.sbatch");
    let mut vars = vec![
        ("DISTILL_STEP", step.to_string()),
        ("SLURM_JOB_ID", "4242".into()),
    ];
    if let Some(k) = index {
        vars.push(("SLURM_ARRAY_TASK_ID", k.to_string()));
    }
    shell(tmp, "bash", &[&s(&script)], &vars)
}

fn finished(what: &str, out: Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout: {}\nstderr: {stderr}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    format!("{}{stderr}", String::from_utf8_lossy(&out.stdout))
}

/// The merged cache verifies and equals the single build, file for file.
fn assert_equals_single_build(cache: &Path, what: &str) {
    let out = ok(cache.parent().unwrap(), &["cache", "verify", &s(cache)]);
    assert!(out.starts_with("ok: 16 shards"), "{what}: {out}");
    let (merged, single) = (snapshot(cache), snapshot(single_build()));
    assert_eq!(
        merged.keys().collect::<Vec<_>>(),
        single.keys().collect::<Vec<_>>(),
        "{what}: other files than a single build's"
    );
    for (name, bytes) in &merged {
        assert!(
            bytes == &single[name],
            "{what}: {name} differs from a single build's"
        );
    }
}

fn shard_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with("shard-") && n.ends_with(".dsc"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Kills the process group of a part started with `process_group(0)`.
fn kill_group(child: &mut Child) {
    unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
    child.wait().unwrap();
}

/// Starts part `index`'s array task and kills it (`kill -9` of its process
/// group) once it has written a complete shard more than it had, but not
/// committed; `kills` times, each rerun resuming the last. Starts over
/// where the part committed before a kill could land. Returns the kills
/// that landed mid-way and the complete shards left by the last one.
fn kill_part_mid_way(tmp: &Path, index: u64, first: Option<Child>, kills: usize) -> (usize, usize) {
    use std::os::unix::process::CommandExt;
    let dir = tmp.join("parts").join(format!("part-{index}-of-{PARTS}"));
    let mut child = first;
    let mut landed = 0;
    for _attempt in 0..20 * kills {
        let had = shard_files(&dir).len();
        let mut c = child.take().unwrap_or_else(|| {
            let mut cmd = slurm(tmp, "part", Some(index));
            cmd.process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            cmd.spawn().unwrap()
        });
        loop {
            if shard_files(&dir).len() > had && !dir.join("part.json").exists() {
                kill_group(&mut c);
                break;
            }
            if c.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if dir.join("part.json").exists() {
            // It committed before the kill: start this part over.
            fs::remove_dir_all(&dir).unwrap();
            landed = 0;
            continue;
        }
        landed += 1;
        if landed == kills {
            return (landed, shard_files(&dir).len());
        }
    }
    panic!("part {index} could not be killed mid-way {kills} times");
}

/// The Slurm array's tasks for every index at once, part 1 killed mid-way
/// and rerun alone (it resumes, keeping its complete shards), then the merge
/// job; the submit step's two sbatch calls (fake sbatch on PATH).
#[test]
fn slurm_array_tasks_then_merge_equal_a_single_build() {
    use std::os::unix::fs::MetadataExt;
    use std::os::unix::process::CommandExt;
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    single_build();
    let started = Instant::now();
    let mut others = Vec::new();
    let mut victim = None;
    for k in 0..PARTS {
        let mut c = slurm(t, "part", Some(k));
        if k == 1 {
            c.process_group(0)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            victim = Some(c.spawn().unwrap());
        } else {
            others.push((k, c.spawn().unwrap()));
        }
    }
    let (kills, left) = kill_part_mid_way(t, 1, victim, crate::reliability_lib::cases(1, 4));
    for (k, c) in others {
        finished(&format!("array task {k}"), c.wait_with_output().unwrap());
    }
    // Killed: unfinished, with complete shards that the rerun must keep.
    let dir = t.join("parts/part-1-of-3");
    assert!(dir.join("build.json").exists() && !dir.join("part.json").exists());
    let identity = |n: &str| {
        fs::metadata(dir.join(n))
            .map(|m| (m.ino(), m.modified().unwrap()))
            .ok()
    };
    let kept: Vec<(String, _)> = shard_files(&dir)
        .into_iter()
        .map(|n| {
            let id = identity(&n);
            (n, id)
        })
        .collect();
    let others_before: Vec<_> = [0, 2]
        .map(|k| snapshot(&t.join(format!("parts/part-{k}-of-3"))))
        .into();
    let rerun = finished(
        "rerun of task 1",
        slurm(t, "part", Some(1)).output().unwrap(),
    );
    let resumed: u64 = rerun
        .lines()
        .find_map(|l| l.strip_prefix("resuming: "))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("the rerun did not resume:\n{rerun}"));
    assert_eq!(kept.len(), left);
    assert_eq!(resumed, 128 * left as u64, "{rerun}");
    for (n, id) in &kept {
        assert_eq!(&identity(n), id, "the rerun rewrote {n}");
    }
    let others_after: Vec<_> = [0, 2]
        .map(|k| snapshot(&t.join(format!("parts/part-{k}-of-3"))))
        .into();
    assert_eq!(others_before, others_after, "the rerun touched other parts");
    let merge = finished("merge job", slurm(t, "merge", None).output().unwrap());
    assert!(
        merge.contains("merged 3 parts") && merge.contains("16 linked"),
        "{merge}"
    );
    assert_equals_single_build(&t.join("cache"), "slurm");
    eprintln!(
        "slurm: {PARTS} array tasks at once, task 1 killed mid-way {kills} time(s) (kill -9, each after one more complete shard), rerun alone resumed from {left} of its 5 shards; merge byte-identical to a single build; {:.1}s",
        started.elapsed().as_secs_f64()
    );

    // The submit step: an array of PARTS tasks, then a merge after it.
    let bin = t.join("fake-bin");
    fs::create_dir(&bin).unwrap();
    let log = t.join("sbatch.log");
    fs::write(
        bin.join("sbatch"),
        "#!/bin/sh\necho \"$@\" >> \"$SBATCH_LOG\"\necho \"$((1000 + $(wc -l < \"$SBATCH_LOG\")));cluster0\"\n",
    )
    .unwrap();
    fs::set_permissions(
        bin.join("sbatch"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let script = s(&repo().join("examples/slurm/cache.sbatch"));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = shell(
        t,
        "bash",
        &[&script],
        &[
            ("PATH", path),
            ("SBATCH_LOG", s(&log)),
            ("MAX_RUNNING", "2".into()),
        ],
    )
    .output()
    .unwrap();
    let said = finished("submit step", out);
    let calls = fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[0].contains("--array=0-2%2")
            && calls[0].contains("--export=ALL,DISTILL_STEP=part")
            && calls[0].ends_with(&script),
        "{calls:?}"
    );
    assert!(
        calls[1].contains("--dependency=afterok:1001")
            && calls[1].contains("--export=ALL,DISTILL_STEP=merge"),
        "{calls:?}"
    );
    assert!(
        said.contains("job array 1001") && said.contains("merge: job 1002"),
        "{said}"
    );
}

/// The `- |` shell bodies of a YAML file's containers, by container name,
/// with the environment variables each Job document declares.
fn yaml_bodies(text: &str) -> Vec<(String, String, Vec<String>)> {
    let mut out = Vec::new();
    for doc in text.split("\n---\n") {
        let lines: Vec<&str> = doc.lines().collect();
        let declared: Vec<String> = lines
            .iter()
            .filter_map(|l| l.trim().strip_prefix("- name: "))
            .map(str::to_string)
            .collect();
        let mut name = String::new();
        let mut i = 0;
        while i < lines.len() {
            let l = lines[i];
            if let (Some(n), Some(next)) = (l.trim().strip_prefix("- name: "), lines.get(i + 1)) {
                if next.trim().starts_with("image:") {
                    name = n.to_string();
                }
            }
            if l.trim() == "- |" && i > 0 && lines[i - 1].trim() == "args:" {
                let indent = l.len() - l.trim_start().len();
                let mut body = String::new();
                i += 1;
                while i < lines.len()
                    && (lines[i].trim().is_empty()
                        || lines[i].len() - lines[i].trim_start().len() > indent)
                {
                    body.push_str(lines[i].get(indent + 2..).unwrap_or(""));
                    body.push('\n');
                    i += 1;
                }
                out.push((name.clone(), body, declared.clone()));
                continue;
            }
            i += 1;
        }
    }
    out
}

/// The Indexed Job's pod body for every completion index at once, the merge
/// Job's wait and merge bodies; and the YAML agrees with itself (each body's
/// variables declared in its Job, `completions` equal to PARTS).
#[test]
fn kubernetes_indexed_job_then_merge_equal_a_single_build() {
    let text = fs::read_to_string(repo().join("examples/kubernetes/cache-job.yaml")).unwrap();
    assert!(text.contains("completionMode: Indexed"));
    let bodies = yaml_bodies(&text);
    let names: Vec<&str> = bodies.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, ["part", "wait-for-parts", "merge"]);
    for (name, body, declared) in &bodies {
        for var in body.split('$').skip(1) {
            let var: String = var
                .trim_start_matches('{')
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || *c == '_')
                .collect();
            assert!(
                var.is_empty() || var == "JOB_COMPLETION_INDEX" || declared.contains(&var),
                "{name}: ${var} is not declared in its Job's env"
            );
        }
    }
    let parts_values: Vec<&str> = text
        .split("- name: PARTS\n")
        .skip(1)
        .filter_map(|rest| rest.lines().next()?.trim().strip_prefix("value: "))
        .collect();
    let completions = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("completions: "))
        .unwrap();
    assert!(
        parts_values.len() == 3
            && parts_values
                .iter()
                .all(|v| v.trim_matches('"') == completions),
        "PARTS {parts_values:?} and completions {completions} disagree"
    );

    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    single_build();
    let run = |name: &str, vars: &[(&str, String)]| {
        let body = &bodies.iter().find(|(n, _, _)| n == name).unwrap().1;
        shell(t, "sh", &["-c", body], vars)
    };
    let pods: Vec<(u64, Child)> = (0..PARTS)
        .map(|k| {
            (
                k,
                run("part", &[("JOB_COMPLETION_INDEX", k.to_string())])
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    for (k, pod) in pods {
        finished(&format!("index {k}"), pod.wait_with_output().unwrap());
    }
    let mut wait = run("wait-for-parts", &[("POLL_SECONDS", "1".into())])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while wait.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "the wait for parts did not end with every part built"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    finished("wait-for-parts", wait.wait_with_output().unwrap());
    let merge = finished("merge", run("merge", &[]).output().unwrap());
    assert!(merge.contains("merged 3 parts"), "{merge}");
    assert_equals_single_build(&t.join("cache"), "kubernetes");
    // The merge pod retried after success changes nothing.
    let again = finished("merge again", run("merge", &[]).output().unwrap());
    assert!(again.contains("nothing to do"), "{again}");
    assert_equals_single_build(&t.join("cache"), "kubernetes, merged twice");
}

/// `cache build --part` flags: a part index from neither variable, or out
/// of range, or two that disagree, is refused naming `--part`.
#[test]
fn part_index_errors_name_the_flag_and_the_variable() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let run = |part: &str, vars: &[(&str, &str)]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
        c.args([
            "cache",
            "build",
            "--teacher",
            &s(&teacher_dir()),
            "--data",
            &s(&small_data()),
            "-T",
            "4",
            "--out",
            "p",
            "--part",
            part,
        ])
        .current_dir(t)
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("JOB_COMPLETION_INDEX")
        .envs(vars.iter().copied());
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(2));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    type Vars<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Vars, &[&str]); 7] = [
        (
            "auto/3",
            &[],
            &[
                "--part",
                "SLURM_ARRAY_TASK_ID",
                "JOB_COMPLETION_INDEX",
                "neither is set",
            ],
        ),
        (
            "auto/3",
            &[("SLURM_ARRAY_TASK_ID", "3")],
            &["--part", "SLURM_ARRAY_TASK_ID is 3", "--array=0-2"],
        ),
        (
            "auto/3",
            &[("JOB_COMPLETION_INDEX", "x")],
            &["--part", "JOB_COMPLETION_INDEX", "'x'"],
        ),
        (
            "auto/3",
            &[("SLURM_ARRAY_TASK_ID", "1"), ("JOB_COMPLETION_INDEX", "2")],
            &[
                "--part",
                "SLURM_ARRAY_TASK_ID is 1 but JOB_COMPLETION_INDEX is 2",
            ],
        ),
        ("3/3", &[], &["--part", "0 to 2"]),
        ("1-3", &[], &["--part", "K/N"]),
        ("0/99", &[], &["--part", "99 parts", "only 1 shard "]),
    ];
    for (part, vars, needles) in cases {
        let e = run(part, vars);
        for n in needles {
            assert!(e.contains(n), "--part {part} {vars:?}: '{n}' not in {e}");
        }
    }
    assert!(!t.join("p").exists(), "a refused build wrote files");
}

/// Hostile merges on the command line: each exits 2 naming the part and
/// what is wrong, and leaves every part and the existing output as they were.
#[test]
fn hostile_merges_are_refused_naming_the_part_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
    let part = |p: &str, parent: &str, extra: &[&str]| {
        let mut a = cache_build_args(
            &teacher,
            &data,
            parent,
            &["--encoding", "f32", "--batch", "100", "-q", "--part", p],
        );
        a.extend(EXTRA.split_whitespace());
        a.extend_from_slice(extra);
        a.iter().map(|x| x.to_string()).collect::<Vec<String>>()
    };
    let builds = [
        part("0/3", "parts", &[]),
        part("1/3", "parts", &[]),
        part("2/3", "parts", &[]),
        part("1/2", "parts", &[]),
        part("1/3", "foreign", &["--zstd-level", "5"]),
    ];
    let children: Vec<Child> = builds
        .iter()
        .map(|a| spawn(t, &a.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    // An existing output: another cache, which no refused merge may touch.
    let mut other = cache_build_args(&teacher, &data, "out", &["--split", "test", "-q"]);
    other.extend(EXTRA.split_whitespace());
    ok(t, &other);
    let copy = |from: &str, to: &str| {
        fs::create_dir_all(t.join(to)).unwrap();
        for (name, bytes) in snapshot(&t.join(from)) {
            fs::write(t.join(to).join(name), bytes).unwrap();
        }
    };
    copy("parts/part-1-of-3", "dup/part-1-of-3");
    copy("parts/part-1-of-3", "bad-shard/part-1-of-3");
    let shard = shard_files(&t.join("bad-shard/part-1-of-3"))[2].clone();
    let flip = |file: PathBuf, at: usize| {
        let mut b = fs::read(&file).unwrap();
        b[at] ^= 0x04;
        fs::write(&file, b).unwrap();
    };
    flip(t.join("bad-shard/part-1-of-3").join(&shard), 4000);
    copy("parts/part-1-of-3", "bad-json/part-1-of-3");
    flip(t.join("bad-json/part-1-of-3/part.json"), 700);
    copy("parts/part-1-of-3", "cut-json/part-1-of-3");
    let j = fs::read(t.join("cut-json/part-1-of-3/part.json")).unwrap();
    fs::write(t.join("cut-json/part-1-of-3/part.json"), &j[..j.len() / 3]).unwrap();
    copy("parts/part-1-of-3", "no-shard/part-1-of-3");
    fs::remove_file(t.join("no-shard/part-1-of-3").join(&shard)).unwrap();

    let p = |k: u64| format!("parts/part-{k}-of-3");
    let cases: Vec<(&str, Vec<String>, Vec<String>)> = vec![
        (
            "missing part",
            vec![p(0), p(2)],
            vec![
                "part 1/3".into(),
                "missing".into(),
                "samples 640..1280".into(),
            ],
        ),
        (
            "overlapping parts",
            vec![p(0), p(1), p(2), "parts/part-1-of-2".into()],
            vec![
                "parts/part-1-of-2".into(),
                "overlapping".into(),
                "part-1-of-3".into(),
            ],
        ),
        (
            "duplicated part",
            vec![p(0), p(1), "dup/part-1-of-3".into(), p(2)],
            vec!["dup/part-1-of-3".into(), "duplicated".into()],
        ),
        (
            "same directory twice",
            vec![p(0), p(1), p(1), p(2)],
            vec![p(1), "given twice".into()],
        ),
        (
            "foreign part",
            vec![p(0), "foreign/part-1-of-3".into(), p(2)],
            vec![
                "foreign/part-1-of-3".into(),
                "foreign part".into(),
                "zstd level".into(),
            ],
        ),
        (
            "corrupt shard",
            vec![p(0), "bad-shard/part-1-of-3".into(), p(2)],
            vec![
                "bad-shard/part-1-of-3".into(),
                shard.clone(),
                "damaged".into(),
            ],
        ),
        (
            "missing shard",
            vec![p(0), "no-shard/part-1-of-3".into(), p(2)],
            vec![
                "no-shard/part-1-of-3".into(),
                shard.clone(),
                "missing".into(),
            ],
        ),
        (
            "corrupt part manifest",
            vec![p(0), "bad-json/part-1-of-3".into(), p(2)],
            vec!["bad-json/part-1-of-3".into(), "part.json is damaged".into()],
        ),
        (
            "truncated part manifest",
            vec![p(0), "cut-json/part-1-of-3".into(), p(2)],
            vec!["cut-json/part-1-of-3".into(), "part.json is damaged".into()],
        ),
        (
            "output holds another cache",
            vec![p(0), p(1), p(2)],
            vec![
                "out: cannot merge".into(),
                "holds another cache".into(),
                "its dataset split is test, the parts' train".into(),
            ],
        ),
    ];
    let before = snapshot(t);
    for (what, parts, needles) in &cases {
        let mut args = vec!["cache", "merge"];
        args.extend(parts.iter().map(String::as_str));
        args.extend(["--out", "out"]);
        let needles: Vec<&str> = needles.iter().map(String::as_str).collect();
        fails(t, &args, &needles);
        assert!(
            snapshot(t) == before,
            "{what}: a refused merge changed files"
        );
    }
    // The same parts merge into a new directory, and match a single build.
    ok(
        t,
        &["cache", "merge", &p(2), &p(0), &p(1), "--out", "cache"],
    );
    assert_equals_single_build(&t.join("cache"), "after refused merges");
    eprintln!(
        "hostile merges: {} refused on the command line (parts and output unchanged each time), then the good merge byte-identical",
        cases.len()
    );
}

/// A view set built in parts (`--augment --views 2 --part K/2`: each part
/// holds its range of every view) merges into the view set a single build
/// writes, file for file, and `cache verify` checks a part on its own.
#[test]
fn view_set_parts_merge_to_a_single_view_set_build() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let (teacher, data) = (s(&teacher_dir()), s(&small_data()));
    let args = |out: &'static str, part: Option<&'static str>| {
        let mut a: Vec<String> = cache_build_args(
            &teacher,
            &data,
            out,
            &[
                "--split",
                "test",
                "--encoding",
                "f16",
                "--batch",
                "100",
                "-q",
            ],
        )
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(
            [
                "--augment",
                "flip,shift=1",
                "--views",
                "2",
                "--shard-kib",
                "8",
                "--block-records",
                "64",
            ]
            .map(String::from),
        );
        if let Some(p) = part {
            a.extend(["--part".to_string(), p.to_string()]);
        }
        a
    };
    let run: Vec<Vec<String>> = vec![
        args("single", None),
        args("parts", Some("0/2")),
        args("parts", Some("1/2")),
    ];
    let children: Vec<Child> = run
        .iter()
        .map(|a| spawn(t, &a.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let verified = ok(t, &["cache", "verify", "parts/part-1-of-2"]);
    assert_eq!(verified.matches("ok: part 1/2").count(), 2, "{verified}");
    ok(
        t,
        &[
            "cache",
            "merge",
            "parts/part-0-of-2",
            "parts/part-1-of-2",
            "--out",
            "merged",
        ],
    );
    let verified = ok(t, &["cache", "verify", "merged"]);
    assert_eq!(verified.matches("ok: ").count(), 2, "{verified}");
    // The single build also writes the set's summary (build times, which
    // differ between builds); a merge writes none.
    let mut single = snapshot(&t.join("single"));
    assert!(single.remove("views.json").is_some());
    assert_eq!(snapshot(&t.join("merged")), single);
}

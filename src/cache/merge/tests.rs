//! Parts built by the writer and merged: byte-identical to a single build;
//! hostile merges (missing, duplicated, overlapping, foreign, unfinished,
//! damaged parts, an occupied output) refused without touching anything;
//! the part writer's directory rules; interrupted parts and merges.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};

use super::*;
use crate::cache::codec::tests::{lp_of, teacher_logits};
use crate::cache::codec::Encoding;
use crate::cache::manifest::{DatasetInfo, TeacherInfo, ViewInfo};
use crate::cache::writer::{CacheMeta, CacheWriter, WriterOptions};

fn meta(n: u64, enc: Encoding, labels: bool) -> CacheMeta {
    CacheMeta {
        teacher: TeacherInfo {
            spec: "mlp:8-10".into(),
            fingerprint: "teacher-fp".into(),
            source: "teacher.safetensors".into(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: "data-fp".into(),
            split: "train".into(),
            num_samples: n,
            view: None,
        },
        num_classes: C,
        has_labels: labels,
        temperature: 4.0,
        encoding: enc,
    }
}

const C: usize = 10;

/// 16 records per block; 48 per shard for f32 (fewer bytes per record give more).
fn opts() -> WriterOptions {
    WriterOptions {
        shard_target_bytes: 3 * 16 * 52,
        records_per_block: 16,
        zstd_level: 3,
        overwrite: false,
    }
}

/// The teacher's rows for a cache of `meta` (a function of the sample count
/// and T only, so every build of the same settings pushes the same rows).
fn rows(meta: &CacheMeta) -> (Vec<f32>, Vec<u32>) {
    let n = meta.dataset.num_samples as usize;
    let lp = lp_of(&teacher_logits(n, C, 3), C, meta.temperature);
    let labels = (0..n as u32).map(|i| (i * 7 + 1) % C as u32).collect();
    (lp, labels)
}

/// Pushes the writer's range from where it resumes, in batches of 37.
fn feed(w: &mut CacheWriter, meta: &CacheMeta, upto: Option<u64>) {
    let (lp, labels) = rows(meta);
    let end = upto.unwrap_or(w.range().end_sample) as usize;
    let mut s = w.resume_from() as usize;
    while s < end {
        let e = (s + 37).min(end);
        let l = meta.has_labels.then(|| &labels[s..e]);
        w.push_batch(s as u64, l, &lp[s * C..e * C]).unwrap();
        s = e;
    }
}

fn build_whole(dir: &Path, meta: &CacheMeta, o: WriterOptions) -> Manifest {
    let mut w = CacheWriter::create_or_resume(dir, meta.clone(), o).unwrap();
    feed(&mut w, meta, None);
    w.finish().unwrap()
}

fn build_part(parent: &Path, meta: &CacheMeta, o: WriterOptions, part: PartSpec) -> PathBuf {
    let dir = part_dir(parent, part);
    let mut w = CacheWriter::create_or_resume_part(&dir, meta.clone(), o, part).unwrap();
    feed(&mut w, meta, None);
    w.finish_part().unwrap();
    dir
}

fn build_parts(parent: &Path, meta: &CacheMeta, count: u64) -> Vec<PathBuf> {
    (0..count)
        .map(|index| build_part(parent, meta, opts(), PartSpec { index, count }))
        .collect()
}

/// Every file under `dir`, recursively, by relative path, with its bytes.
fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                out.insert(rel, fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// Every file under `dir` (its relative path) with its inode and
/// modification time: a file written again, in place or renamed over,
/// changes one of them.
fn stamps(dir: &Path) -> BTreeMap<String, (u64, std::time::SystemTime)> {
    use std::os::unix::fs::MetadataExt;
    tree(dir)
        .into_keys()
        .map(|rel| {
            let m = fs::metadata(dir.join(&rel)).unwrap();
            (rel, (m.ino(), m.modified().unwrap()))
        })
        .collect()
}

fn err(parts: &[PathBuf], out: &Path) -> String {
    merge_parts(parts, out).unwrap_err().to_string()
}

#[test]
fn merged_parts_equal_a_single_build_byte_for_byte() {
    use std::os::unix::fs::MetadataExt;
    let cases = [
        (300u64, Encoding::F32, true, 3u64),
        (300, Encoding::Q8, false, 4),
        (100, Encoding::top_k(3), true, 1),
        (130, Encoding::F16, true, 2),
        (1000, Encoding::F16, true, 4),
    ];
    for (n, enc, labels, count) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let m = meta(n, enc, labels);
        let whole = tmp.path().join("whole");
        let single = build_whole(&whole, &m, opts());
        let parts = build_parts(&tmp.path().join("parts"), &m, count);
        let before = tree(&tmp.path().join("parts"));
        let out = tmp.path().join("merged");
        let r = merge_parts(&parts, &out).unwrap();
        let what = format!("{n} samples, {enc}, {count} parts");
        assert_eq!(r.caches, vec![(out.clone(), single.clone())], "{what}");
        assert_eq!(
            (r.parts, r.shards, r.linked, r.copied, r.kept),
            (
                count as usize,
                single.shards.len(),
                single.shards.len(),
                0,
                0
            ),
            "{what}"
        );
        assert_eq!(tree(&out), tree(&whole), "{what}: merged files differ");
        assert_eq!(
            tree(&tmp.path().join("parts")),
            before,
            "{what}: parts changed"
        );
        // Hard links: the merged shards are the parts' files.
        for s in &single.shards {
            let a = fs::metadata(out.join(&s.file)).unwrap().ino();
            let part_has = parts
                .iter()
                .any(|p| fs::metadata(p.join(&s.file)).is_ok_and(|m| m.ino() == a));
            assert!(part_has, "{what}: {} is not linked", s.file);
        }
        // A rerun finds the cache merged and changes nothing: the same
        // bytes in the same files, none written again.
        let stamped = stamps(&out);
        let again = merge_parts(&parts, &out).unwrap();
        assert_eq!(again.already_merged, 1);
        assert_eq!(tree(&out), tree(&whole));
        assert_eq!(stamps(&out), stamped, "{what}: a rerun rewrote files");
    }
}

#[test]
fn copied_shards_and_mixed_cuts_give_the_same_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(1000, Encoding::F32, true);
    let whole = tmp.path().join("whole");
    build_whole(&whole, &m, opts());
    // Part 1/2 rebuilt as parts 2/4 and 3/4: they tile the same shards.
    let parent = tmp.path().join("parts");
    let parts = vec![
        build_part(&parent, &m, opts(), PartSpec { index: 3, count: 4 }),
        build_part(&parent, &m, opts(), PartSpec { index: 0, count: 2 }),
        build_part(&parent, &m, opts(), PartSpec { index: 2, count: 4 }),
    ];
    let out = tmp.path().join("copied");
    let r = merge_parts_with(&parts, &out, false).unwrap();
    assert_eq!((r.linked, r.copied), (0, r.shards));
    assert_eq!(tree(&out), tree(&whole));
}

#[test]
fn parts_of_view_sets_merge_view_by_view() {
    let tmp = tempfile::tempdir().unwrap();
    let view = |v: u64| {
        let mut m = meta(300, Encoding::Q8, true);
        m.dataset.view = Some(ViewInfo {
            augment: "flip".into(),
            seed: 5,
            view: v,
            views: 2,
        });
        m
    };
    let set = tmp.path().join("set");
    for v in 0..2 {
        build_whole(&view_dir(&set, v), &view(v), opts());
    }
    let parent = tmp.path().join("parts");
    let mut parts = Vec::new();
    for index in 0..3 {
        let part = PartSpec { index, count: 3 };
        for v in 0..2 {
            let dir = view_dir(&part_dir(&parent, part), v);
            let mut w = CacheWriter::create_or_resume_part(&dir, view(v), opts(), part).unwrap();
            feed(&mut w, &view(v), None);
            w.finish_part().unwrap();
        }
        parts.push(part_dir(&parent, part));
    }
    assert!(is_part_dir(&parts[0]));
    let out = tmp.path().join("merged");
    let r = merge_parts(&parts, &out).unwrap();
    assert_eq!(r.caches.len(), 2);
    assert_eq!(tree(&out), tree(&set));
    assert_eq!(verify_part(&parts[1]).unwrap().len(), 2);
    // A part without one of its views is refused, naming it.
    fs::remove_dir_all(view_dir(&parts[2], 1)).unwrap();
    let e = err(&parts, &tmp.path().join("other"));
    assert!(
        e.contains("part-2-of-3/view-1") && e.contains("no such directory"),
        "{e}"
    );
}

/// Each setting that makes a part foreign is named, with the part.
#[test]
fn foreign_parts_are_refused_naming_the_part_and_the_setting() {
    type Change = fn(&mut CacheMeta, &mut WriterOptions);
    let changes: [(&str, Change); 11] = [
        ("teacher spec", |m, _| m.teacher.spec = "mlp:8-20-10".into()),
        ("teacher fingerprint", |m, _| {
            m.teacher.fingerprint = "other".into()
        }),
        ("teacher source", |m, _| {
            m.teacher.source = "elsewhere".into()
        }),
        ("dataset fingerprint", |m, _| {
            m.dataset.fingerprint = "other".into()
        }),
        ("dataset split", |m, _| m.dataset.split = "test".into()),
        ("temperature", |m, _| m.temperature = 2.0),
        ("encoding", |m, _| m.encoding = Encoding::F16),
        ("labels", |m, _| m.has_labels = false),
        ("augmented view", |m, _| {
            m.dataset.view = Some(ViewInfo {
                augment: "flip".into(),
                seed: 0,
                view: 0,
                views: 1,
            })
        }),
        ("zstd level", |_, o| o.zstd_level = 5),
        ("records per block", |_, o| o.records_per_block = 8),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let parts = build_parts(&tmp.path().join("parts"), &m, 3);
    let before = tree(tmp.path());
    for (i, (field, change)) in changes.into_iter().enumerate() {
        let (mut fm, mut fo) = (m.clone(), opts());
        change(&mut fm, &mut fo);
        let parent = tmp.path().join(format!("foreign-{i}"));
        let foreign = build_part(&parent, &fm, fo, PartSpec { index: 1, count: 3 });
        let out = tmp.path().join("out");
        let e = err(&[parts[0].clone(), foreign.clone(), parts[2].clone()], &out);
        assert!(
            e.starts_with(&foreign.display().to_string())
                && e.contains("foreign part")
                && e.contains(field),
            "{field}: {e}"
        );
        assert!(!out.exists(), "{field}: the output was created");
        fs::remove_dir_all(&parent).unwrap();
    }
    assert_eq!(tree(tmp.path()), before, "the parts changed");
}

#[test]
fn missing_duplicated_overlapping_and_unfinished_parts_are_refused_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let parent = tmp.path().join("parts");
    let p = build_parts(&parent, &m, 3);
    let half = build_part(&parent, &m, opts(), PartSpec { index: 1, count: 2 });
    let copy = tmp.path().join("copy-of-part-1");
    fs::create_dir(&copy).unwrap();
    for (name, bytes) in tree(&p[1]) {
        fs::write(copy.join(name), bytes).unwrap();
    }
    let whole = tmp.path().join("whole");
    build_whole(&whole, &m, opts());
    let unfinished = tmp.path().join("unfinished");
    {
        let part = PartSpec { index: 1, count: 3 };
        let mut w =
            CacheWriter::create_or_resume_part(&unfinished, m.clone(), opts(), part).unwrap();
        feed(&mut w, &m, Some(150));
    }
    let before = tree(tmp.path());
    let out = tmp.path().join("out");
    let s = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, Vec<PathBuf>, Vec<String>)> = vec![
        (
            "missing",
            vec![p[0].clone(), p[2].clone()],
            vec![
                "part 1/3".into(),
                "missing".into(),
                "samples 96..192".into(),
            ],
        ),
        (
            "missing tail",
            vec![p[0].clone(), p[1].clone()],
            vec!["part 2/3".into(), "missing".into()],
        ),
        (
            "same directory twice",
            vec![p[0].clone(), p[1].clone(), p[2].clone(), p[1].clone()],
            vec![s(&p[1]), "duplicated".into()],
        ),
        (
            "a copy of a part",
            vec![p[0].clone(), p[1].clone(), copy.clone(), p[2].clone()],
            vec![s(&copy), "duplicated".into(), "part 1/3".into()],
        ),
        (
            "overlapping",
            vec![p[0].clone(), p[1].clone(), p[2].clone(), half.clone()],
            vec![s(&half), "overlapping".into()],
        ),
        (
            "unfinished",
            vec![p[0].clone(), unfinished.clone(), p[2].clone()],
            vec![s(&unfinished), "unfinished".into()],
        ),
        (
            "a whole cache",
            vec![whole.clone()],
            vec![s(&whole), "whole cache".into()],
        ),
        (
            "no such directory",
            vec![p[0].clone(), tmp.path().join("nowhere")],
            vec!["nowhere".into(), "no such directory".into()],
        ),
        ("nothing", vec![], vec!["no part directories".into()]),
    ];
    for (what, parts, needles) in cases {
        let e = err(&parts, &out);
        for n in &needles {
            assert!(e.contains(n.as_str()), "{what}: '{n}' not in: {e}");
        }
        assert!(!out.exists(), "{what}: the output was created");
        assert_eq!(tree(tmp.path()), before, "{what}: files changed");
    }
    // A part whose build is running (its lock held) is refused.
    let part = PartSpec { index: 1, count: 3 };
    let _w = CacheWriter::create_or_resume_part(&unfinished, m.clone(), opts(), part).unwrap();
    let e = err(&[p[0].clone(), unfinished.clone(), p[2].clone()], &out);
    assert!(e.contains("is being built"), "{e}");
}

/// Merges `parts` with part `victim` replaced by a damaged copy: the
/// merged files, or the error (which must name the copy). Either way the
/// parts are unchanged, and a refused merge creates no output.
fn damaged_merge(
    tmp: &Path,
    parts: &[PathBuf],
    victim: usize,
    damage: impl FnOnce(&Path),
) -> std::result::Result<BTreeMap<String, Vec<u8>>, String> {
    let copy = tmp.join("victim");
    let _ = fs::remove_dir_all(&copy);
    fs::create_dir(&copy).unwrap();
    for (name, bytes) in tree(&parts[victim]) {
        fs::write(copy.join(name), bytes).unwrap();
    }
    damage(&copy);
    let mut given = parts.to_vec();
    given[victim] = copy.clone();
    let before = tree(tmp);
    let out = tmp.join("out");
    let result = match merge_parts(&given, &out) {
        Ok(_) => {
            let merged = tree(&out);
            fs::remove_dir_all(&out).unwrap();
            Ok(merged)
        }
        Err(e) => {
            let e = e.to_string();
            assert!(!out.exists(), "a refused merge created its output: {e}");
            assert!(e.starts_with(&copy.display().to_string()), "{e}");
            Err(e)
        }
    };
    assert_eq!(tree(tmp), before, "a merge changed the parts");
    result
}

#[test]
fn damaged_parts_are_refused_naming_the_part_and_the_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let parts = build_parts(&tmp.path().join("parts"), &m, 3);
    let pm = PartManifest::read(&parts[1]).unwrap();
    let shard = pm.shards[1].file.clone();
    let flip = |name: String, at: usize| {
        move |d: &Path| {
            let p = d.join(&name);
            let mut b = fs::read(&p).unwrap();
            let i = at.min(b.len() - 1);
            b[i] ^= 0x10;
            fs::write(p, b).unwrap();
        }
    };
    type Damage = Box<dyn FnOnce(&Path)>;
    let cases: Vec<(&str, Damage, &str)> = vec![
        ("header byte", Box::new(flip(shard.clone(), 20)), "damaged"),
        ("index byte", Box::new(flip(shard.clone(), 140)), "damaged"),
        (
            "block byte",
            Box::new(flip(shard.clone(), usize::MAX)),
            "damaged",
        ),
        (
            "truncated shard",
            Box::new({
                let s = shard.clone();
                move |d: &Path| {
                    let b = fs::read(d.join(&s)).unwrap();
                    fs::write(d.join(&s), &b[..b.len() - 8]).unwrap();
                }
            }),
            "truncated",
        ),
        (
            "missing shard",
            Box::new({
                let s = shard.clone();
                move |d: &Path| fs::remove_file(d.join(&s)).unwrap()
            }),
            "missing",
        ),
        (
            "part.json byte",
            Box::new(flip(PART_FILE.into(), 300)),
            "part.json is damaged",
        ),
        (
            "part.json truncated",
            Box::new(|d: &Path| {
                let b = fs::read(d.join(PART_FILE)).unwrap();
                fs::write(d.join(PART_FILE), &b[..b.len() / 2]).unwrap();
            }),
            "part.json is damaged",
        ),
        (
            "part.json re-sealed with another checksum",
            Box::new(|d: &Path| {
                let mut pm = PartManifest::read(d).unwrap();
                pm.shards[0].xxh3 = "0000000000000000".into();
                pm.id = pm.compute_id();
                fs::write(d.join(PART_FILE), pm.to_json().unwrap()).unwrap();
            }),
            "file checksum",
        ),
    ];
    for (what, damage, needle) in cases {
        let e = damaged_merge(tmp.path(), &parts, 1, damage).unwrap_err();
        assert!(e.contains(needle), "{what}: {e}");
        if needle == "damaged" || needle == "truncated" {
            assert!(e.contains(&shard), "{what}: {e}");
        }
    }
}

/// Random single-bit flips in a part's shards and `part.json`: every flip
/// is refused, except flips in `part.json` that leave its content as it
/// was (the informational `tool_version`), after which the merge equals
/// the pristine one. Counts in RELIABILITY.md.
#[test]
fn bit_flips_in_parts_are_detected() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F16, true);
    let parts = build_parts(&tmp.path().join("parts"), &m, 3);
    let pristine = {
        let out = tmp.path().join("pristine");
        merge_parts(&parts, &out).unwrap();
        let t = tree(&out);
        fs::remove_dir_all(&out).unwrap();
        t
    };
    let files: Vec<String> = tree(&parts[1])
        .into_keys()
        .filter(|k| k != LOCK_FILE)
        .collect();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(16);
    // `make stress` (DISTILL_STRESS=1) runs ten times as many.
    let stress = std::env::var_os("DISTILL_STRESS").is_some_and(|v| v != "0");
    let flips = if stress { 2000 } else { 200 };
    let (mut detected, mut benign) = (0, 0);
    for _ in 0..flips {
        let name = files[rng.gen_range(0..files.len())].clone();
        let len = fs::metadata(parts[1].join(&name)).unwrap().len() as usize;
        let (at, bit) = (rng.gen_range(0..len), rng.gen_range(0..8));
        let merged = damaged_merge(tmp.path(), &parts, 1, |d: &Path| {
            let p = d.join(&name);
            let mut b = fs::read(&p).unwrap();
            b[at] ^= 1 << bit;
            fs::write(p, b).unwrap();
        });
        match merged {
            // Accepted: only in part.json, and the very same cache.
            Ok(merged) => {
                assert_eq!(name, PART_FILE, "a flip at {at} of {name} was not detected");
                assert!(
                    merged == pristine,
                    "an undetected flip at {at} of {name} changed the cache"
                );
                benign += 1;
            }
            Err(_) => detected += 1,
        }
    }
    eprintln!("part bit flips: {flips} ({} files of part 1/3), {detected} refused, {benign} benign (content unchanged)", files.len());
    assert_eq!(detected + benign, flips);
    assert!(detected >= flips * 9 / 10);
}

#[test]
fn an_occupied_output_is_left_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let parts = build_parts(&tmp.path().join("parts"), &m, 3);
    // Another cache (T = 2) at the output: refused, untouched.
    let other = tmp.path().join("other");
    let mut t2 = m.clone();
    t2.temperature = 2.0;
    build_whole(&other, &t2, opts());
    let before = tree(&other);
    let e = err(&parts, &other);
    assert!(
        e.contains("holds another cache") && e.contains("temperature"),
        "{e}"
    );
    assert_eq!(tree(&other), before);
    // A damaged cache at the output: refused, untouched.
    let mpath = other.join(MANIFEST_FILE);
    let mut b = fs::read(&mpath).unwrap();
    b[40] ^= 1;
    fs::write(&mpath, &b).unwrap();
    let before = tree(&other);
    assert!(err(&parts, &other).contains("damaged cache"));
    assert_eq!(tree(&other), before);
    // An unfinished build with other settings: refused, untouched.
    let unfinished = tmp.path().join("unfinished");
    {
        let mut w = CacheWriter::create_or_resume(&unfinished, t2.clone(), opts()).unwrap();
        feed(&mut w, &t2, Some(100));
    }
    let before = tree(&unfinished);
    assert!(err(&parts, &unfinished).contains("unfinished build"));
    assert_eq!(tree(&unfinished), before);
    // A part's directory is not an output.
    let before = tree(&parts[0]);
    assert!(err(&parts, &parts[0]).contains("part's directory"));
    assert_eq!(tree(&parts[0]), before);
    // Nor a view set: the merged manifest would hide its views.
    let set = tmp.path().join("set");
    let mut view = m.clone();
    view.dataset.view = Some(ViewInfo {
        augment: "flip".into(),
        seed: 5,
        view: 0,
        views: 1,
    });
    build_whole(&view_dir(&set, 0), &view, opts());
    let before = tree(&set);
    let e = err(&parts, &set);
    assert!(e.contains("holds a view set"), "{e}");
    assert_eq!(tree(&set), before);
}

/// A merge killed after placing some shards (a stale copy's temp file, a
/// wrong file under a shard's name, a missing one) is finished by a rerun.
#[test]
fn interrupted_merge_reruns_to_the_same_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let whole = tmp.path().join("whole");
    let single = build_whole(&whole, &m, opts());
    let parts = build_parts(&tmp.path().join("parts"), &m, 3);
    let out = tmp.path().join("out");
    merge_parts(&parts, &out).unwrap();
    // Back to a state a kill could leave: no manifest, build.json present.
    fs::remove_file(out.join(MANIFEST_FILE)).unwrap();
    let spec = BuildSpec::from_manifest(&single);
    fs::write(
        out.join(BUILD_FILE),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    fs::remove_file(out.join(&single.shards[6].file)).unwrap();
    fs::remove_file(out.join(&single.shards[2].file)).unwrap();
    fs::write(out.join(&single.shards[2].file), b"not this").unwrap();
    fs::write(
        out.join(format!("{}.tmp", single.shards[3].file)),
        b"partial",
    )
    .unwrap();
    let r = merge_parts(&parts, &out).unwrap();
    assert_eq!((r.linked, r.kept), (2, single.shards.len() - 2));
    assert_eq!(tree(&out), tree(&whole));
    // A finished merge whose shards went missing or changed since is not
    // "already merged": the rerun places them again from the parts.
    fs::remove_file(out.join(&single.shards[1].file)).unwrap();
    let mut flipped = fs::read(out.join(&single.shards[4].file)).unwrap();
    flipped[100] ^= 1;
    fs::remove_file(out.join(&single.shards[4].file)).unwrap();
    fs::write(out.join(&single.shards[4].file), &flipped).unwrap();
    let r = merge_parts(&parts, &out).unwrap();
    assert_eq!((r.already_merged, r.linked), (0, 2));
    assert_eq!(tree(&out), tree(&whole));
    let r = merge_parts(&parts, &out).unwrap();
    assert_eq!(r.already_merged, 1);
}

#[test]
fn a_directory_holds_one_part_or_one_cache_for_good() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let parts = build_parts(&tmp.path().join("parts"), &m, 3);
    let whole = tmp.path().join("whole");
    build_whole(&whole, &m, opts());
    let before = tree(tmp.path());
    let mut over = opts();
    over.overwrite = true;
    let e = |r: Result<CacheWriter>| r.err().map(|e| e.to_string()).unwrap_or_default();
    let p = |index| PartSpec { index, count: 3 };
    for o in [opts(), over.clone()] {
        let s = e(CacheWriter::create_or_resume(
            &parts[1],
            m.clone(),
            o.clone(),
        ));
        assert!(
            s.contains("holds part 1/3") && s.contains("not a whole cache"),
            "{s}"
        );
        let s = e(CacheWriter::create_or_resume_part(
            &whole,
            m.clone(),
            o.clone(),
            p(1),
        ));
        assert!(
            s.contains("holds a whole cache") && s.contains("not part 1/3"),
            "{s}"
        );
        let s = e(CacheWriter::create_or_resume_part(
            &parts[1],
            m.clone(),
            o.clone(),
            p(2),
        ));
        assert!(
            s.contains("holds part 1/3") && s.contains("not part 2/3"),
            "{s}"
        );
    }
    assert_eq!(tree(tmp.path()), before);
    // Too many parts for the shards.
    let s = e(CacheWriter::create_or_resume_part(
        &tmp.path().join("x"),
        m.clone(),
        opts(),
        PartSpec { index: 0, count: 8 },
    ));
    assert!(s.contains("only 7 shards"), "{s}");
    // Rebuilding a committed part is a no-op.
    let w = CacheWriter::create_or_resume_part(&parts[1], m.clone(), opts(), p(1)).unwrap();
    assert_eq!(w.resume_from(), w.range().end_sample);
    w.finish_part().unwrap();
    assert_eq!(tree(tmp.path()), before);
}

#[test]
fn part_writers_keep_to_their_range_and_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let m = meta(300, Encoding::F32, true);
    let part = PartSpec { index: 1, count: 3 };
    let reference = build_part(&tmp.path().join("ref"), &m, opts(), part);
    let dir = tmp.path().join("part");
    let (lp, labels) = rows(&m);
    {
        let mut w = CacheWriter::create_or_resume_part(&dir, m.clone(), opts(), part).unwrap();
        let r = w.range();
        assert_eq!((r.first_sample, r.end_sample), (96, 192));
        let e = w
            .push_batch(0, Some(&labels[..10]), &lp[..10 * C])
            .unwrap_err();
        assert!(e.to_string().contains("next sample expected is 96"), "{e}");
        let e = w
            .push_batch(96, Some(&labels[96..200]), &lp[96 * C..200 * C])
            .unwrap_err();
        assert!(
            e.to_string().contains("part 1/3, which ends at sample 192"),
            "{e}"
        );
        feed(&mut w, &m, Some(160)); // one full shard (96..144) and some
    }
    let mut w = CacheWriter::create_or_resume_part(&dir, m.clone(), opts(), part).unwrap();
    assert_eq!(w.resume_from(), 144);
    feed(&mut w, &m, None);
    w.finish_part().unwrap();
    let strip = |mut t: BTreeMap<String, Vec<u8>>| {
        t.remove(LOCK_FILE);
        t
    };
    assert_eq!(strip(tree(&dir)), strip(tree(&reference)));
    // finish and finish_part belong to their kind of writer.
    let w = CacheWriter::create_or_resume_part(&dir, m.clone(), opts(), part).unwrap();
    assert!(w.finish().unwrap_err().to_string().contains("finish_part"));
    let w = CacheWriter::create_or_resume(&tmp.path().join("w"), m.clone(), opts()).unwrap();
    assert!(w
        .finish_part()
        .unwrap_err()
        .to_string()
        .contains("whole cache"));
}

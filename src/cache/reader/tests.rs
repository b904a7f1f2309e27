//! Writer -> reader round trips, epochs, corruption and resume tests.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use super::*;
use crate::cache::codec::tests::{lp_of, teacher_logits};
use crate::cache::{
    import_logits, CacheMeta, CacheWriter, DatasetInfo, TeacherInfo, WriterOptions,
};

fn meta(n: u64, c: usize, enc: Encoding, labels: bool) -> CacheMeta {
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
        num_classes: c,
        has_labels: labels,
        temperature: 4.0,
        encoding: enc,
    }
}

/// 16 records per block, 3 blocks per shard for f32 with 10 classes.
fn small_opts() -> WriterOptions {
    WriterOptions {
        shard_target_bytes: 3 * 16 * 52,
        records_per_block: 16,
        zstd_level: 3,
        overwrite: false,
    }
}

struct Built {
    lp: Vec<f32>,
    labels: Vec<u32>,
    manifest: Manifest,
}

fn build_with(
    dir: &Path,
    n: u64,
    c: usize,
    enc: Encoding,
    opts: WriterOptions,
    batch: usize,
) -> Built {
    let lp = lp_of(&teacher_logits(n as usize, c, 3), c, 4.0);
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 1) % c as u32).collect();
    let mut w = CacheWriter::create_or_resume(dir, meta(n, c, enc, true), opts).unwrap();
    let mut s = w.resume_from() as usize;
    while s < n as usize {
        let e = (s + batch).min(n as usize);
        w.push_batch(s as u64, Some(&labels[s..e]), &lp[s * c..e * c])
            .unwrap();
        s = e;
    }
    let manifest = w.finish().unwrap();
    Built {
        lp,
        labels,
        manifest,
    }
}

fn build(dir: &Path, n: u64, c: usize, enc: Encoding) -> Built {
    build_with(dir, n, c, enc, small_opts(), 37)
}

fn open(dir: &Path) -> Result<CacheReader> {
    // SAFETY: tests do not modify cache files while a reader is alive.
    unsafe { CacheReader::open(dir) }
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                fs::read(e.path()).unwrap(),
            )
        })
        .collect()
}

fn first_shard(dir: &Path, m: &Manifest, i: usize) -> std::path::PathBuf {
    dir.join(&m.shards[i].file)
}

#[test]
fn reader_is_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<CacheReader>();
}

#[test]
fn roundtrip_every_encoding_several_shards_and_blocks() {
    let c = 10;
    for enc in [
        Encoding::F32,
        Encoding::F16,
        Encoding::Q8,
        Encoding::top_k(3),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), 300, c, enc);
        assert!(
            b.manifest.shards.len() > 3,
            "{enc}: {} shards",
            b.manifest.shards.len()
        );
        let r = open(dir.path()).unwrap();
        assert_eq!(r.len(), 300);
        assert_eq!(r.encoding(), enc);
        let all = r.read_all(4.0, false).unwrap();
        assert_eq!(all.indices, (0..300).collect::<Vec<_>>());
        assert_eq!(all.labels.as_ref().unwrap(), &b.labels);
        if enc == Encoding::F32 {
            assert!(all
                .logprobs
                .iter()
                .zip(&b.lp)
                .all(|(a, b)| a.to_bits() == b.to_bits()));
        } else {
            let (mean, _, top1) = crate::cache::codec::tests::fidelity(&b.lp, &all.logprobs, c);
            assert!(mean < 0.05 && top1 > 0.99, "{enc}: {mean} {top1}");
            assert!(
                (mean - b.manifest.fidelity.mean_kl).abs() < 1e-6,
                "manifest fidelity is what the reader sees"
            );
        }
        // Random access, any order, repeats.
        let want = [299u64, 0, 17, 17, 150, 48];
        let some = r.read_samples(&want, 4.0, false).unwrap();
        assert_eq!(some.indices, want);
        for (k, &s) in want.iter().enumerate() {
            let s = s as usize;
            assert_eq!(
                &some.logprobs[k * c..(k + 1) * c],
                &all.logprobs[s * c..(s + 1) * c]
            );
            assert_eq!(some.labels.as_ref().unwrap()[k], b.labels[s]);
        }
        assert!(r
            .read_samples(&[300], 4.0, false)
            .unwrap_err()
            .to_string()
            .contains("out of range"));
        let report = r.verify().unwrap();
        assert_eq!(report.samples, 300);
        let stats = r.stats().to_string();
        assert!(
            stats.contains("bytes/sample") && stats.contains(&enc.to_string()),
            "{stats}"
        );
    }
}

#[test]
fn unlabelled_cache_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let c = 5;
    let lp = lp_of(&teacher_logits(40, c, 1), c, 4.0);
    let mut w =
        CacheWriter::create_or_resume(dir.path(), meta(40, c, Encoding::F16, false), small_opts())
            .unwrap();
    assert!(w.push_batch(0, Some(&[0; 40]), &lp).is_err());
    w.push_batch(0, None, &lp).unwrap();
    let m = w.finish().unwrap();
    assert_eq!(m.teacher_stats.accuracy, None);
    let r = open(dir.path()).unwrap();
    let all = r.read_all(4.0, false).unwrap();
    assert!(all.labels.is_none());
    let batches: Vec<_> = r
        .epoch_batches(EpochPlan {
            seed: 1,
            epoch: 0,
            start: 0,
            batch_size: 7,
            window_blocks: 2,
            temperature: 4.0,
            allow_topk_retemper: false,
            drop_last: false,
        })
        .unwrap()
        .collect::<Result<_>>()
        .unwrap();
    assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 40);
}

#[test]
fn retempering_dense_exact_topk_refused_unless_allowed() {
    let c = 10;
    let dir = tempfile::tempdir().unwrap();
    let n = 100;
    let logits = teacher_logits(n, c, 3);
    build(dir.path(), n as u64, c, Encoding::F32);
    let r = open(dir.path()).unwrap();
    for t2 in [1.0f32, 2.5, 10.0] {
        let got = r.read_all(t2, false).unwrap().logprobs;
        let want = lp_of(&logits, c, t2);
        for (a, b) in got.iter().zip(&want) {
            assert!(
                (a - b).abs() < 1e-4 * (1.0 + b.abs()),
                "T'={t2}: {a} vs {b}"
            );
        }
    }
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), n as u64, c, Encoding::top_k(3));
    let r = open(dir.path()).unwrap();
    let e = r.read_all(2.0, false).unwrap_err().to_string();
    assert!(
        e.contains("top-3") && e.contains("--allow-topk-retemper") && e.contains("manifest.json"),
        "{e}"
    );
    let approx = r.read_all(2.0, true).unwrap().logprobs;
    for row in approx.chunks_exact(c) {
        let s: f32 = row.iter().map(|v| v.exp()).sum();
        assert!((s - 1.0).abs() < 1e-4);
    }
    assert!(r.read_all(4.0, false).is_ok());
    assert!(r.read_all(f32::NAN, true).is_err());
}

fn plan(seed: u64, epoch: u64, start: u64, bs: usize, w: usize) -> EpochPlan {
    EpochPlan {
        seed,
        epoch,
        start,
        batch_size: bs,
        window_blocks: w,
        temperature: 4.0,
        allow_topk_retemper: false,
        drop_last: false,
    }
}

#[test]
fn epoch_order_permutation_deterministic_resumable() {
    let dir = tempfile::tempdir().unwrap();
    let c = 10;
    build(dir.path(), 300, c, Encoding::Q8);
    let r = open(dir.path()).unwrap();
    let all = r.read_all(4.0, false).unwrap();
    for w in [1usize, 3, 1000] {
        let order = r.epoch_order(9, 2, w);
        let mut s = order.clone();
        s.sort_unstable();
        assert_eq!(s, (0..300).collect::<Vec<_>>());
        assert_eq!(order, r.epoch_order(9, 2, w));
        assert_ne!(order, r.epoch_order(9, 3, w));
        // The stream follows the order, batch by batch, and the data matches read_all.
        let batches: Vec<TargetBatch> = r
            .epoch_batches(plan(9, 2, 0, 32, w))
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        assert!(batches[..batches.len() - 1].iter().all(|b| b.len() == 32));
        let streamed: Vec<u64> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(streamed, order);
        for b in &batches {
            for (k, &s) in b.indices.iter().enumerate() {
                let s = s as usize;
                assert_eq!(
                    &b.logprobs[k * c..(k + 1) * c],
                    &all.logprobs[s * c..(s + 1) * c]
                );
                assert_eq!(
                    b.labels.as_ref().unwrap()[k],
                    all.labels.as_ref().unwrap()[s]
                );
            }
        }
        // Resuming at p yields the suffix.
        for p in [0u64, 1, 31, 32, 47, 48, 150, 299, 300] {
            let it = r.epoch_batches(plan(9, 2, p, 32, w)).unwrap();
            let rest: Vec<u64> = it.flat_map(|b| b.unwrap().indices).collect();
            assert_eq!(rest, order[p as usize..], "W={w} p={p}");
        }
        // position() tracks what was served.
        let mut it = r.epoch_batches(plan(9, 2, 0, 32, w)).unwrap();
        it.next();
        it.next();
        assert_eq!(it.position(), 64);
        // drop_last
        let mut p = plan(9, 2, 0, 32, w);
        p.drop_last = true;
        let n: usize = r.epoch_batches(p).unwrap().map(|b| b.unwrap().len()).sum();
        assert_eq!(n, 288);
    }
    assert!(r.epoch_batches(plan(0, 0, 301, 32, 1)).is_err());
    assert!(r.epoch_batches(plan(0, 0, 0, 0, 1)).is_err());
    assert!(r.epoch_batches(plan(0, 0, 0, 1, 0)).is_err());
}

// ---------------------------------------------------------------- corruption

fn flip(path: &Path, at: usize) {
    let mut b = fs::read(path).unwrap();
    b[at] ^= 0x10;
    fs::write(path, b).unwrap();
}

#[test]
fn flipped_bit_in_block_named_by_verify_and_read() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 300, 10, Encoding::F32);
    let shard = first_shard(dir.path(), &b.manifest, 1);
    let r = open(dir.path()).unwrap();
    let h = r.shards[1].blocks[2];
    drop(r);
    flip(&shard, (h.offset + h.compressed_len / 2) as usize);
    let r = open(dir.path()).unwrap(); // structure is intact
    let e = r.verify().unwrap_err().to_string();
    assert!(
        e.contains(&b.manifest.shards[1].file) && e.contains("block 2") && e.contains("checksum"),
        "{e}"
    );
    let e = r.read_all(4.0, false).unwrap_err().to_string();
    assert!(e.contains("block 2"), "{e}");
    let mut it = r.epoch_batches(plan(0, 0, 0, 1000, 1000)).unwrap();
    assert!(it.next().unwrap().is_err());
    assert!(it.next().is_none());
    // Other shards still read.
    assert!(r.read_samples(&[0], 4.0, false).is_ok());
}

#[test]
fn flipped_bit_in_header_index_or_manifest_refused_on_open() {
    for (what, at) in [("header", 30usize), ("block index", 128 + 20)] {
        let dir = tempfile::tempdir().unwrap();
        let b = build(dir.path(), 300, 10, Encoding::Q8);
        flip(&first_shard(dir.path(), &b.manifest, 0), at);
        let e = open(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains(&b.manifest.shards[0].file) && e.contains(what) && e.contains("checksum"),
            "{what}: {e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300, 10, Encoding::Q8);
    let mpath = dir.path().join("manifest.json");
    let text = fs::read_to_string(&mpath).unwrap();
    // A bit flip in a digit (0x30 ^ 0x01 = '1'), keeping the JSON valid.
    let at = text.find("\"num_samples\": 300").unwrap() + "\"num_samples\": ".len();
    let mut bytes = text.into_bytes();
    bytes[at] ^= 0x01; // '3' -> '2'
    fs::write(&mpath, &bytes).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("manifest.json"), "{e}");
    // And one that breaks the JSON.
    bytes[0] ^= 0x40;
    fs::write(&mpath, &bytes).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(e.contains("manifest.json") && e.contains("JSON"), "{e}");
}

/// A shard re-sealed at another format version (its header checksum
/// recomputed, so only the manifest can tell) is refused at open, naming
/// the shard and both versions.
#[test]
fn a_shard_of_another_format_version_than_its_manifest_is_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 300, 10, Encoding::F32);
    assert_eq!(b.manifest.format_version, 2);
    let p = first_shard(dir.path(), &b.manifest, 1);
    let mut bytes = fs::read(&p).unwrap();
    let (mut header, _) = parse_shard(&p, &bytes).unwrap();
    header.version = 1;
    bytes[..HEADER_BYTES].copy_from_slice(&header.to_bytes());
    // On its own the shard is a valid version-1 shard.
    parse_shard(&p, &bytes).unwrap();
    fs::write(&p, &bytes).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains(&b.manifest.shards[1].file)
            && e.contains("is format version 1, manifest.json says 2"),
        "{e}"
    );
}

#[test]
fn truncated_missing_and_swapped_shards() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 300, 10, Encoding::F16);
    let p = first_shard(dir.path(), &b.manifest, 2);
    let bytes = fs::read(&p).unwrap();
    fs::write(&p, &bytes[..bytes.len() - 9]).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains(&b.manifest.shards[2].file) && e.contains("truncated"),
        "{e}"
    );
    // Bytes appended: refused at open as well.
    fs::write(&p, [&bytes[..], &[0u8; 9][..]].concat()).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(e.contains(&b.manifest.shards[2].file), "{e}");
    fs::remove_file(&p).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains(&b.manifest.shards[2].file) && e.contains("missing"),
        "{e}"
    );
    // A directory in the shard's place is said to be one, not a short file.
    fs::create_dir(&p).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains(&b.manifest.shards[2].file)
            && e.contains("shard 2: is a directory, not the")
            && !e.contains("truncated"),
        "{e}"
    );
    fs::remove_dir(&p).unwrap();
    // A structurally valid shard of the right size but other content: only verify can tell.
    fs::write(&p, &bytes).unwrap();
    let q = first_shard(dir.path(), &b.manifest, 1);
    let other = fs::read(&q).unwrap();
    if other.len() == bytes.len() {
        fs::write(&p, &other).unwrap();
        assert!(open(dir.path()).is_err(), "sample range differs");
    }
}

#[test]
fn manifest_naming_parent_path_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 300, 10, Encoding::Q8);
    let mut m = b.manifest.clone();
    m.shards[0].file = "../x".into();
    m.id = m.compute_id();
    fs::write(dir.path().join("manifest.json"), m.to_json().unwrap()).unwrap();
    let e = open(dir.path()).err().unwrap().to_string();
    assert!(
        e.contains("not a plain file name") && e.contains("../x"),
        "{e}"
    );
}

#[test]
fn check_pairing_names_what_differs() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), 300, 10, Encoding::Q8);
    let r = open(dir.path()).unwrap();
    r.check_pairing("data-fp", 300, Some(10)).unwrap();
    // Labels below the cache's classes pair: a split without the last class.
    r.check_pairing("data-fp", 300, Some(9)).unwrap();
    let e = r
        .check_pairing("other-fp", 300, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("dataset fingerprint") && e.contains("split 'train'") && e.contains("other-fp"),
        "{e}"
    );
    let e = r
        .check_pairing("data-fp", 299, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("sample count") && e.contains("299"), "{e}");
    let e = r
        .check_pairing("data-fp", 300, Some(100))
        .unwrap_err()
        .to_string();
    assert!(e.contains("number of classes"), "{e}");
}

#[test]
fn non_finite_and_bad_inputs_rejected_at_build_and_import() {
    let dir = tempfile::tempdir().unwrap();
    let c = 4;
    let mut lp = lp_of(&teacher_logits(10, c, 1), c, 4.0);
    lp[6 * c + 2] = f32::NAN;
    let mut w =
        CacheWriter::create_or_resume(dir.path(), meta(10, c, Encoding::Q8, false), small_opts())
            .unwrap();
    let e = w.push_batch(0, None, &lp).unwrap_err().to_string();
    assert!(
        e.contains("sample 6") && e.contains("class 2") && e.contains("NaN"),
        "{e}"
    );
    lp[6 * c + 2] = f32::NEG_INFINITY;
    assert!(w
        .push_batch(0, None, &lp)
        .unwrap_err()
        .to_string()
        .contains("inf"));
    // Raw logits instead of log-probs.
    let e = w
        .push_batch(0, None, &teacher_logits(10, c, 1))
        .unwrap_err()
        .to_string();
    assert!(e.contains("log_softmax"), "{e}");
    // Continuity.
    let good = lp_of(&teacher_logits(10, c, 1), c, 4.0);
    let e = w.push_batch(3, None, &good[..c]).unwrap_err().to_string();
    assert!(e.contains("next sample expected is 0"), "{e}");
    w.push_batch(0, None, &good[..5 * c]).unwrap();
    assert!(w
        .push_batch(5, None, &good)
        .unwrap_err()
        .to_string()
        .contains("past the dataset"));
    let e = w.finish().err().unwrap().to_string();
    assert!(e.contains("only 5 of 10"), "{e}");
    drop(dir);

    let dir = tempfile::tempdir().unwrap();
    let mut logits = teacher_logits(10, c, 1);
    logits[9 * c] = f32::INFINITY;
    let e = import_logits(
        dir.path(),
        meta(10, c, Encoding::F32, false),
        small_opts(),
        &logits,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("logits of sample 9") && e.contains("class 0"),
        "{e}"
    );
    assert!(!dir.path().join("manifest.json").exists());
}

#[test]
fn import_logits_matches_writer() {
    let c = 10;
    let n = 200;
    let logits = teacher_logits(n, c, 3);
    let labels: Vec<u32> = (0..n as u32).map(|i| (i * 7 + 1) % c as u32).collect();
    let a = tempfile::tempdir().unwrap();
    let m1 = import_logits(
        a.path(),
        meta(n as u64, c, Encoding::Q8, true),
        small_opts(),
        &logits,
        Some(&labels),
    )
    .unwrap();
    let b = tempfile::tempdir().unwrap();
    let m2 = build(b.path(), n as u64, c, Encoding::Q8).manifest;
    assert_eq!(m1, m2);
    assert_eq!(files(a.path()), files(b.path()));
}

// ---------------------------------------------------------------- resume, lock, overwrite

#[test]
fn interrupted_build_resumes_to_byte_identical_cache() {
    let c = 10;
    let n = 300u64;
    let whole = tempfile::tempdir().unwrap();
    let b = build(whole.path(), n, c, Encoding::top_k(3));

    let dir = tempfile::tempdir().unwrap();
    {
        let mut w = CacheWriter::create_or_resume(
            dir.path(),
            meta(n, c, Encoding::top_k(3), true),
            small_opts(),
        )
        .unwrap();
        // 130 samples: some full shards plus a partial one.
        w.push_batch(0, Some(&b.labels[..130]), &b.lp[..130 * c])
            .unwrap();
        // Dropped without finish: interrupted.
    }
    assert!(!dir.path().join("manifest.json").exists());
    // A partial temp file as left by a crash mid-shard, and a damaged "complete" shard.
    fs::write(dir.path().join("shard-partial.dsc.tmp"), b"half a shard").unwrap();
    let complete: Vec<_> = b
        .manifest
        .shards
        .iter()
        .filter(|s| s.first_sample + s.num_samples <= 130)
        .collect();
    assert!(complete.len() >= 2);
    let names: Vec<String> = files(dir.path())
        .keys()
        .filter(|k| k.ends_with(".dsc"))
        .cloned()
        .collect();
    assert_eq!(names.len(), complete.len(), "{names:?}");
    let mut w = CacheWriter::create_or_resume(
        dir.path(),
        meta(n, c, Encoding::top_k(3), true),
        small_opts(),
    )
    .unwrap();
    let last = complete[complete.len() - 1];
    assert_eq!(w.resume_from(), last.first_sample + last.num_samples);
    assert!(!dir.path().join("shard-partial.dsc.tmp").exists());
    let s = w.resume_from() as usize;
    w.push_batch(s as u64, Some(&b.labels[s..]), &b.lp[s * c..])
        .unwrap();
    let m = w.finish().unwrap();
    assert_eq!(m, b.manifest);
    assert_eq!(files(dir.path()), files(whole.path()));

    // A damaged shard from an interrupted run is redone, not kept.
    let dir2 = tempfile::tempdir().unwrap();
    {
        let mut w = CacheWriter::create_or_resume(
            dir2.path(),
            meta(n, c, Encoding::top_k(3), true),
            small_opts(),
        )
        .unwrap();
        w.push_batch(0, Some(&b.labels[..130]), &b.lp[..130 * c])
            .unwrap();
    }
    let second = dir2.path().join(&b.manifest.shards[1].file);
    let len = fs::metadata(&second).unwrap().len() as usize;
    flip(&second, len - 12);
    let w = CacheWriter::create_or_resume(
        dir2.path(),
        meta(n, c, Encoding::top_k(3), true),
        small_opts(),
    )
    .unwrap();
    assert_eq!(w.resume_from(), b.manifest.shards[0].num_samples);
}

#[test]
fn second_writer_refused_while_first_holds_lock() {
    let dir = tempfile::tempdir().unwrap();
    let _w =
        CacheWriter::create_or_resume(dir.path(), meta(10, 4, Encoding::Q8, false), small_opts())
            .unwrap();
    let e =
        CacheWriter::create_or_resume(dir.path(), meta(10, 4, Encoding::Q8, false), small_opts())
            .err()
            .unwrap();
    assert!(matches!(e, CacheError::Locked { .. }), "{e}");
    assert!(e.to_string().contains("another process is writing"), "{e}");
}

#[test]
fn different_settings_refused_and_failed_rebuild_keeps_committed_cache() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 300, 10, Encoding::Q8);
    let mut other = meta(300, 10, Encoding::Q8, true);
    other.temperature = 2.0;
    let e = CacheWriter::create_or_resume(dir.path(), other.clone(), small_opts())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("temperature") && e.contains("overwrite"), "{e}");
    // The other split (of other data, so another fingerprint too) is named
    // as the split, not as a fingerprint.
    let mut test_split = meta(300, 10, Encoding::Q8, true);
    test_split.dataset.split = "test".into();
    test_split.dataset.fingerprint = "test-data-fp".into();
    let e = CacheWriter::create_or_resume(dir.path(), test_split, small_opts())
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("a cache built with a different dataset split (train there, test requested)"),
        "{e}"
    );
    // Overwrite, but fail midway: the committed cache still opens and verifies.
    {
        let mut o = small_opts();
        o.overwrite = true;
        let mut w = CacheWriter::create_or_resume(dir.path(), other.clone(), o).unwrap();
        let lp = lp_of(&teacher_logits(300, 10, 3), 10, 2.0);
        w.push_batch(0, Some(&b.labels[..200]), &lp[..2000])
            .unwrap();
    }
    let r = open(dir.path()).unwrap();
    assert_eq!(r.temperature(), 4.0);
    r.verify().unwrap();
    drop(r);
    // The unfinished build with other settings is protected too.
    let e =
        CacheWriter::create_or_resume(dir.path(), meta(300, 10, Encoding::Q8, true), small_opts())
            .err()
            .unwrap()
            .to_string();
    assert!(e.contains("temperature"), "{e}");
    // Finishing the overwrite replaces the cache and removes the old shards.
    let mut o = small_opts();
    o.overwrite = true;
    let m = build_with(dir.path(), 300, 10, Encoding::F16, o, 64).manifest;
    let names: Vec<String> = files(dir.path())
        .keys()
        .filter(|k| k.ends_with(".dsc"))
        .cloned()
        .collect();
    assert_eq!(names.len(), m.shards.len());
    assert!(!dir.path().join("build.json").exists());
    assert_eq!(open(dir.path()).unwrap().encoding(), Encoding::F16);
}

#[test]
fn rebuild_of_finished_cache_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), 300, 10, Encoding::Q8);
    let before = files(dir.path());
    let w =
        CacheWriter::create_or_resume(dir.path(), meta(300, 10, Encoding::Q8, true), small_opts())
            .unwrap();
    assert_eq!(w.resume_from(), 300);
    assert_eq!(w.finish().unwrap(), b.manifest);
    assert_eq!(files(dir.path()), before);
}

/// Writer-measured fidelity and size per encoding (numbers recorded in FORMAT.md).
#[test]
fn fidelity_report() {
    for (c, n) in [(10usize, 20_000u64), (1000, 2_000)] {
        let k = if c == 10 { 3 } else { 20 };
        for enc in [
            Encoding::F32,
            Encoding::F16,
            Encoding::Q8,
            Encoding::top_k(k),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let m = build_with(dir.path(), n, c, enc, WriterOptions::default(), 4096).manifest;
            let f = &m.fidelity;
            eprintln!(
                "C={c:4} {:8} mean KL {:.3e}  max KL {:.3e}  top1 {:.5}  bytes/sample {:8.2}  (f32 logits {} B)",
                enc.to_string(),
                f.mean_kl,
                f.max_kl,
                f.top1_agreement,
                f.bytes_per_sample,
                4 * c
            );
        }
    }
}

#[test]
fn resume_removes_temporary_files_of_a_killed_writer() {
    // A build killed while `fsutil::atomic_write` wrote `build.json` (or the
    // manifest) leaves `.NAME.PID.tmp`; one killed mid-shard leaves
    // `shard-...tmp`. The rerun removes them.
    let dir = tempfile::tempdir().unwrap();
    let left = [
        ".build.json.4242.tmp",
        ".manifest.json.4242.tmp",
        ".part.json.4242.tmp",
        "shard-0000000000000000-000000.dsc.tmp",
    ];
    for name in left {
        fs::write(dir.path().join(name), b"partial").unwrap();
    }
    let built = build(dir.path(), 40, 5, Encoding::F16);
    assert_eq!(built.manifest.dataset.num_samples, 40);
    for name in left {
        assert!(!dir.path().join(name).exists(), "{name} left behind");
    }
}

#[test]
fn a_directory_holding_other_files_is_refused_untouched() {
    // A model's directory (or a dataset's, or notes) is not a cache's: the
    // build refuses it before it takes a lock or writes anything there, and
    // names what it found.
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "model.json",
        "model.safetensors",
        "metrics.jsonl",
        "notes.tmp",
    ];
    for name in names {
        fs::write(dir.path().join(name), name.as_bytes()).unwrap();
    }
    let err =
        CacheWriter::create_or_resume(dir.path(), meta(10, 4, Encoding::F16, true), small_opts())
            .err()
            .expect("a model's directory is refused");
    let msg = err.to_string();
    assert!(matches!(err, CacheError::NotACacheDir { .. }), "{msg}");
    assert!(msg.contains("not a cache directory"), "{msg}");
    assert!(
        msg.contains("metrics.jsonl, model.json, model.safetensors and 1 more"),
        "{msg}"
    );
    let mut left: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [
            "metrics.jsonl",
            "model.json",
            "model.safetensors",
            "notes.tmp"
        ]
    );
    for name in names {
        assert_eq!(fs::read(dir.path().join(name)).unwrap(), name.as_bytes());
    }
    // A path that is a file is refused too, and left as it was.
    let file = dir.path().join("model.json");
    let err = CacheWriter::create_or_resume(&file, meta(10, 4, Encoding::F16, true), small_opts())
        .err()
        .expect("a file is refused");
    assert!(
        err.to_string().contains("is a file, not a directory"),
        "{err}"
    );
    assert_eq!(fs::read(&file).unwrap(), b"model.json");
}

/// A directory with no manifest.json is said to be what it is: nothing,
/// a file, the parent of a build's parts, a set of augmented views, or
/// (otherwise) no cache or an unfinished build.
#[test]
fn a_directory_without_a_manifest_is_named_for_what_it_holds() {
    let tmp = tempfile::tempdir().unwrap();
    let err = |dir: &Path| open(dir).err().expect("no cache there").to_string();

    let absent = tmp.path().join("absent");
    let e = err(&absent);
    assert!(
        e.starts_with(&format!("{}: no such directory", absent.display()))
            && e.contains("cache build --out")
            && !e.contains("manifest.json"),
        "{e}"
    );

    let file = tmp.path().join("file");
    fs::write(&file, b"x").unwrap();
    let e = err(&file);
    assert!(e.contains("is a file, not a cache directory"), "{e}");

    let parts = tmp.path().join("parts");
    for k in 0..2 {
        fs::create_dir_all(parts.join(format!("part-{k}-of-2"))).unwrap();
    }
    let e = err(&parts);
    assert!(
        e.contains("holds the parts of a build (part-0-of-2, part-1-of-2), not a cache")
            && e.contains(&format!(
                "distill cache merge {}/part-*-of-2 --out CACHE",
                parts.display()
            ))
            && !e.contains("never finished"),
        "{e}"
    );

    let views = tmp.path().join("views");
    fs::create_dir_all(views.join("view-0")).unwrap();
    fs::write(views.join("views.json"), b"{}").unwrap();
    let e = err(&views);
    assert!(
        e.contains(
            "holds a set of augmented views (views.json and view-N/ caches), not a single cache"
        ) && !e.contains("never finished"),
        "{e}"
    );

    let empty = tmp.path().join("empty");
    fs::create_dir(&empty).unwrap();
    let e = err(&empty);
    assert!(
        e.contains("no manifest.json") && e.contains("never finished"),
        "{e}"
    );
}

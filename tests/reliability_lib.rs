//! Reliability campaign at library level (fast): random bit flips and
//! truncations of a real cache (every one must be detected, or be shown to
//! change nothing observable), and fuzz-style hostile input for the shard
//! parser, the manifest parser, the reader on re-sealed (checksum-valid)
//! hostile shards, the IDX/npy/safetensors data readers and the safetensors
//! model loader: errors only, never a panic.
//!
//! `DISTILL_STRESS=1` (`make stress`) runs the long variant. Each test prints
//! its figures on stderr (`cargo test -- --nocapture` shows them); RELIABILITY.md
//! records them.

use std::fs;
use std::path::{Path, PathBuf};

use distill::cache::format::{align_up, parse_shard, BlockEntry, ShardHeader, HEADER_BYTES};
use distill::cache::{
    import_logits, CacheMeta, CacheReader, DatasetInfo, DecodedTargets, Encoding, Manifest,
    TeacherInfo, WriterOptions,
};
use distill::data::{read_float_matrix, write_idx, Dataset, Split};
use distill::model::io::{load_weights, read_safetensors, save_weights};
use distill::model::{ModelSpec, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use xxhash_rust::xxh3::xxh3_64;

/// True in the long variant (`make stress`).
pub fn stress() -> bool {
    std::env::var_os("DISTILL_STRESS").is_some_and(|v| v != "0")
}

/// `fast` cases normally, `long` under `DISTILL_STRESS`.
pub fn cases(fast: usize, long: usize) -> usize {
    if stress() {
        long
    } else {
        fast
    }
}

const C: usize = 10;
const T: f32 = 4.0;

/// Builds a labelled cache of `n` samples with small blocks and shards (many
/// of both), from seeded random logits.
fn build_cache(dir: &Path, enc: Encoding, n: usize) -> Manifest {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let logits: Vec<f32> = (0..n * C).map(|_| rng.gen_range(-8.0f32..8.0)).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i % C) as u32).collect();
    let meta = CacheMeta {
        teacher: TeacherInfo {
            spec: "synthetic".into(),
            fingerprint: "t0".into(),
            source: "seeded".into(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: "d0".into(),
            split: "train".into(),
            num_samples: n as u64,
            view: None,
        },
        num_classes: C,
        has_labels: true,
        temperature: T,
        encoding: enc,
    };
    let opts = WriterOptions {
        shard_target_bytes: 16 << 10,
        records_per_block: 64,
        ..WriterOptions::default()
    };
    import_logits(dir, meta, opts, &logits, Some(&labels)).expect("build the test cache")
}

fn open(dir: &Path) -> distill::cache::Result<CacheReader> {
    // SAFETY: the tests modify cache files only while no reader is alive.
    unsafe { CacheReader::open(dir) }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Header,
    Index,
    Block,
    Manifest,
}

/// A byte range of one file of the cache, by structure.
struct Region {
    file: String,
    start: usize,
    end: usize,
    kind: Kind,
    /// Block number within the shard, for `Kind::Block`.
    block: usize,
}

fn regions(dir: &Path, m: &Manifest) -> Vec<Region> {
    let mut out = Vec::new();
    for s in &m.shards {
        let bytes = fs::read(dir.join(&s.file)).unwrap();
        let (h, blocks) = parse_shard(Path::new(&s.file), &bytes).unwrap();
        let index_end = HEADER_BYTES + 48 * h.blocks as usize;
        out.push(Region {
            file: s.file.clone(),
            start: 0,
            end: HEADER_BYTES,
            kind: Kind::Header,
            block: 0,
        });
        out.push(Region {
            file: s.file.clone(),
            start: HEADER_BYTES,
            end: index_end,
            kind: Kind::Index,
            block: 0,
        });
        for (i, b) in blocks.iter().enumerate() {
            let end = align_up(b.offset + b.compressed_len).unwrap() as usize;
            out.push(Region {
                file: s.file.clone(),
                start: b.offset as usize,
                end,
                kind: Kind::Block,
                block: i,
            });
        }
    }
    let mlen = fs::read(dir.join("manifest.json")).unwrap().len();
    out.push(Region {
        file: "manifest.json".into(),
        start: 0,
        end: mlen,
        kind: Kind::Manifest,
        block: 0,
    });
    out
}

#[derive(Default, Debug)]
struct Tally {
    tried: u64,
    at_open: u64,
    at_read: u64,
    by_verify_only: u64,
    /// Manifest flips that parse to the same content (explained in RELIABILITY.md).
    benign: u64,
}

/// What one corrupted cache does: detected where, or benign.
fn check_corrupted(
    dir: &Path,
    pristine: &DecodedTargets,
    pristine_manifest: &Manifest,
    region: &Region,
    what: &str,
    t: &mut Tally,
) {
    t.tried += 1;
    let must_name = |e: &str| {
        assert!(
            e.contains(&region.file),
            "{what}: error does not name the file {}: {e}",
            region.file
        );
        if region.kind == Kind::Block {
            assert!(
                e.contains("block"),
                "{what}: error does not name the block: {e}"
            );
        }
    };
    let r = match open(dir) {
        Err(e) => {
            must_name(&e.to_string());
            t.at_open += 1;
            return;
        }
        Ok(r) => r,
    };
    match r.read_all(T, false) {
        Err(e) => {
            must_name(&e.to_string());
            if region.kind == Kind::Block {
                assert!(
                    e.to_string().contains(&format!("block {}", region.block)),
                    "{what}: wrong block named: {e}"
                );
            }
            t.at_read += 1;
            assert!(r.verify().is_err(), "{what}: read fails but verify passes");
            return;
        }
        Ok(got) => assert!(
            &got == pristine,
            "{what}: SILENT CORRUPTION: opened and decoded without error to different targets"
        ),
    }
    match r.verify() {
        Err(e) => {
            must_name(&e.to_string());
            t.by_verify_only += 1;
        }
        Ok(_) => {
            // Only a manifest flip that leaves its content unchanged (up to the
            // informational tool_version) may pass every check.
            assert_eq!(region.kind, Kind::Manifest, "{what}: undetected");
            let mut m = r.manifest().clone();
            m.tool_version = pristine_manifest.tool_version.clone();
            assert_eq!(&m, pristine_manifest, "{what}: undetected content change");
            t.benign += 1;
        }
    }
}

/// Random single-bit flips over every structural region of caches in each
/// encoding, plus truncation at every block boundary.
#[test]
fn corruption_campaign_every_flip_and_truncation_is_detected() {
    let trials = cases(1200, 24_000);
    let tmp = tempfile::tempdir().unwrap();
    let encs = [
        Encoding::F16,
        Encoding::Q8,
        Encoding::top_k(3),
        Encoding::F32,
    ];
    let mut tallies: Vec<(Kind, Tally)> = [Kind::Header, Kind::Index, Kind::Block, Kind::Manifest]
        .into_iter()
        .map(|k| (k, Tally::default()))
        .collect();
    let mut trunc = Tally::default();
    let mut rng = ChaCha8Rng::seed_from_u64(2024);
    let mut shards_seen = 0;
    let mut blocks_seen = 0;
    for (ei, &enc) in encs.iter().enumerate() {
        let dir = tmp.path().join(format!("c{ei}"));
        let m = build_cache(&dir, enc, 3000);
        let pristine = open(&dir).unwrap().read_all(T, false).unwrap();
        let regs = regions(&dir, &m);
        shards_seen += m.shards.len();
        blocks_seen += regs.iter().filter(|r| r.kind == Kind::Block).count();
        assert!(
            m.shards.len() >= 5,
            "want many shards, got {}",
            m.shards.len()
        );
        for trial in 0..trials / encs.len() {
            let kind = [Kind::Header, Kind::Index, Kind::Block, Kind::Manifest][trial % 4];
            let of_kind: Vec<&Region> = regs.iter().filter(|r| r.kind == kind).collect();
            let reg = of_kind[rng.gen_range(0..of_kind.len())];
            let path = dir.join(&reg.file);
            let orig = fs::read(&path).unwrap();
            let at = rng.gen_range(reg.start..reg.end);
            let bit = rng.gen_range(0..8);
            let mut bad = orig.clone();
            bad[at] ^= 1 << bit;
            fs::write(&path, &bad).unwrap();
            let what = format!("{enc} {kind:?} {} byte {at} bit {bit}", reg.file);
            let tally = &mut tallies.iter_mut().find(|(k, _)| *k == kind).unwrap().1;
            check_corrupted(&dir, &pristine, &m, reg, &what, tally);
            fs::write(&path, &orig).unwrap();
        }
        // Truncation at every block boundary (and inside the header and index).
        for s in &m.shards {
            let path = dir.join(&s.file);
            let orig = fs::read(&path).unwrap();
            let (_, blocks) = parse_shard(&path, &orig).unwrap();
            let mut cuts = vec![0, 1, 64, HEADER_BYTES, HEADER_BYTES + 20, orig.len() - 1];
            for b in &blocks {
                cuts.push(b.offset as usize);
                cuts.push((b.offset + b.compressed_len) as usize);
            }
            cuts.retain(|&c| c < orig.len());
            for cut in cuts {
                fs::write(&path, &orig[..cut]).unwrap();
                let reg = Region {
                    file: s.file.clone(),
                    start: cut,
                    end: cut + 1,
                    kind: Kind::Header,
                    block: 0,
                };
                check_corrupted(&dir, &pristine, &m, &reg, &format!("cut {cut}"), &mut trunc);
            }
            // One appended byte is refused too.
            let mut longer = orig.clone();
            longer.push(0);
            fs::write(&path, &longer).unwrap();
            let reg = Region {
                file: s.file.clone(),
                start: 0,
                end: 1,
                kind: Kind::Header,
                block: 0,
            };
            check_corrupted(&dir, &pristine, &m, &reg, "append", &mut trunc);
            fs::write(&path, &orig).unwrap();
        }
        let mpath = dir.join("manifest.json");
        let morig = fs::read(&mpath).unwrap();
        for k in 0..20 {
            let cut = morig.len() * k / 20;
            fs::write(&mpath, &morig[..cut]).unwrap();
            let reg = Region {
                file: "manifest.json".into(),
                start: 0,
                end: 1,
                kind: Kind::Manifest,
                block: 0,
            };
            check_corrupted(
                &dir,
                &pristine,
                &m,
                &reg,
                &format!("manifest cut {cut}"),
                &mut trunc,
            );
        }
        fs::write(&mpath, &morig).unwrap();
        open(&dir).unwrap().verify().unwrap();
    }
    let mut total = Tally::default();
    for (k, t) in &tallies {
        eprintln!(
            "corruption {k:?}: {} flips, detected at open {}, at read {}, by verify only {}, benign {}",
            t.tried, t.at_open, t.at_read, t.by_verify_only, t.benign
        );
        total.tried += t.tried;
        total.at_open += t.at_open;
        total.at_read += t.at_read;
        total.by_verify_only += t.by_verify_only;
        total.benign += t.benign;
    }
    eprintln!(
        "corruption total: {} flips over {} encodings, {shards_seen} shards, {blocks_seen} blocks: detected {} (open {}, read {}, verify only {}), benign {}",
        total.tried,
        encs.len(),
        total.at_open + total.at_read + total.by_verify_only,
        total.at_open,
        total.at_read,
        total.by_verify_only,
        total.benign
    );
    eprintln!(
        "truncation: {} cases, detected at open {}, at read {}, by verify only {}",
        trunc.tried, trunc.at_open, trunc.at_read, trunc.by_verify_only
    );
    assert!(total.tried >= 1000);
    assert_eq!(
        trunc.tried,
        trunc.at_open + trunc.at_read + trunc.by_verify_only
    );
}

/// Writes `m` (recomputing its id) as the cache's manifest.
fn write_manifest(dir: &Path, m: &mut Manifest) {
    m.id = m.compute_id();
    fs::write(dir.join("manifest.json"), m.to_json().unwrap()).unwrap();
}

/// A shard with the given compressed blocks, every checksum recomputed: what
/// a hostile (not a damaged) writer produces.
fn seal_shard(h: &ShardHeader, blocks: &[(Vec<u8>, BlockEntry)]) -> Vec<u8> {
    let mut pos = (HEADER_BYTES + 48 * blocks.len()) as u64;
    let mut index = Vec::new();
    let mut data = Vec::new();
    for (bytes, e) in blocks {
        let e = BlockEntry {
            offset: pos,
            compressed_len: bytes.len() as u64,
            checksum: xxh3_64(bytes),
            ..*e
        };
        index.extend_from_slice(&e.to_bytes());
        data.extend_from_slice(bytes);
        let next = align_up(pos + bytes.len() as u64).unwrap();
        data.resize(data.len() + (next - pos) as usize - bytes.len(), 0);
        pos = next;
    }
    let mut h = h.clone();
    h.index_checksum = xxh3_64(&index);
    let mut out = h.to_bytes().to_vec();
    out.extend(index);
    out.extend(data);
    out
}

fn mutate(rng: &mut ChaCha8Rng, bytes: &mut Vec<u8>) {
    let n = rng.gen_range(1..=4);
    for _ in 0..n {
        if bytes.is_empty() {
            bytes.push(rng.gen());
            continue;
        }
        let at = rng.gen_range(0..bytes.len());
        match rng.gen_range(0..6) {
            0 => bytes[at] ^= 1 << rng.gen_range(0..8),
            1 => bytes[at] = rng.gen(),
            2 => bytes[at] = [0, 0xff, 0x7f, 0x80][rng.gen_range(0..4)],
            3 => bytes.truncate(at),
            4 => {
                let k = rng.gen_range(1..16);
                bytes.splice(at..at, (0..k).map(|_| rng.gen::<u8>()));
            }
            _ => {
                // A 4-byte little-endian integer from the edge values.
                let v: u32 = [0, 1, u32::MAX, 1 << 31, 0xffff, 1 << 20][rng.gen_range(0..6)];
                let end = (at + 4).min(bytes.len());
                let le = v.to_le_bytes();
                bytes[at..end].copy_from_slice(&le[..end - at]);
            }
        }
    }
}

/// Shard parser, manifest parser and reader on random, mutated and re-sealed
/// (checksum-valid) hostile bytes: errors only, never a panic.
#[test]
fn hostile_cache_bytes_give_errors_never_panics() {
    let n_parse = cases(3000, 60_000);
    let n_sealed = cases(300, 10_000);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let m = build_cache(&dir, Encoding::Q8, 700);
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let shard0 = fs::read(dir.join(&m.shards[0].file)).unwrap();
    let manifest = fs::read(dir.join("manifest.json")).unwrap();
    let mut counts = [0u64; 3];
    for i in 0..n_parse {
        let mut b = if i % 4 == 0 {
            let len = rng.gen_range(0..700);
            let mut v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if i % 8 == 0 && v.len() >= 12 {
                v[..8].copy_from_slice(b"DSTLSHRD");
                v[8..12].copy_from_slice(&1u32.to_le_bytes());
            }
            v
        } else {
            shard0.clone()
        };
        mutate(&mut rng, &mut b);
        let _ = parse_shard(Path::new("s.dsc"), &b);
        let mut j = manifest.clone();
        mutate(&mut rng, &mut j);
        if let Ok(parsed) = Manifest::parse(Path::new("manifest.json"), &j) {
            // Only a content-preserving edit may parse (tool_version, float spelling).
            let mut p = parsed.clone();
            p.tool_version = m.tool_version.clone();
            assert_eq!(p, m, "a mutated manifest parsed to other content");
        }
        counts[0] += 2;
    }
    // Re-sealed shards: mutate compressed bytes or decompressed columns, recompress,
    // recompute every checksum and the manifest, then open and decode.
    let shard_path = dir.join(&m.shards[0].file);
    let (h, entries) = parse_shard(&shard_path, &shard0).unwrap();
    let blocks: Vec<(Vec<u8>, BlockEntry)> = entries
        .iter()
        .map(|e| {
            (
                shard0[e.offset as usize..(e.offset + e.compressed_len) as usize].to_vec(),
                *e,
            )
        })
        .collect();
    for i in 0..n_sealed {
        let mut bl = blocks.clone();
        let which = rng.gen_range(0..bl.len());
        if i % 2 == 0 {
            mutate(&mut rng, &mut bl[which].0);
            if bl[which].0.is_empty() {
                bl[which].0.push(0);
            }
        } else {
            let mut raw = zstd::bulk::decompress(&bl[which].0, 1 << 24).unwrap();
            let len = raw.len();
            mutate(&mut rng, &mut raw);
            raw.resize(len, 0); // keep raw_len; mutate the columns' values
            bl[which].0 = zstd::bulk::compress(&raw, 1).unwrap();
        }
        let bytes = seal_shard(&h, &bl);
        fs::write(&shard_path, &bytes).unwrap();
        let mut mm = m.clone();
        mm.shards[0].bytes = bytes.len() as u64;
        mm.shards[0].xxh3 = format!("{:016x}", xxh3_64(&bytes));
        write_manifest(&dir, &mut mm);
        match open(&dir) {
            Err(_) => counts[1] += 1,
            Ok(r) => {
                if r.read_all(T, false).is_err() {
                    counts[1] += 1;
                }
                let _ = r.read_all(2.0, false);
                let _ = r.verify();
            }
        }
        counts[2] += 1;
    }
    eprintln!(
        "fuzz cache: {} shard/manifest parser cases, {} re-sealed hostile shards opened and decoded ({} refused)",
        counts[0], counts[2], counts[1]
    );
}

/// Forged non-finite log-probabilities: a shard whose records decode to NaN
/// or an infinity, re-sealed with every checksum (and the manifest) valid,
/// so only the reader's own check stands between it and a trainer. The
/// writer refuses such values, so only a hostile or broken writer makes
/// one. Every read path refuses the block, naming the shard and block; the
/// other blocks stay readable.
#[test]
fn forged_non_finite_logprobs_are_refused() {
    let f16_inf = half::f16::INFINITY.to_bits().to_le_bytes();
    let f16_nan = half::f16::NAN.to_bits().to_le_bytes();
    let nan = f32::NAN.to_le_bytes();
    let inf = f32::INFINITY.to_le_bytes();
    let neg_inf = f32::NEG_INFINITY.to_le_bytes();
    // (encoding, byte offset in the record's payload, forged bytes): the
    // payload's leading f32 (value of class 0, offset, or log_rest) and a
    // value inside the row.
    let cases: Vec<(Encoding, usize, Vec<u8>)> = vec![
        (Encoding::F32, 0, nan.to_vec()),
        (Encoding::F32, 4 * 3, inf.to_vec()),
        (Encoding::F32, 4 * 9, neg_inf.to_vec()),
        (Encoding::F16, 0, nan.to_vec()),
        (Encoding::F16, 0, neg_inf.to_vec()),
        (Encoding::F16, 4 + 2 * 5, f16_inf.to_vec()),
        (Encoding::F16, 4 + 2 * 2, f16_nan.to_vec()),
        (Encoding::Q8, 0, inf.to_vec()),
        (Encoding::Q8, 4, nan.to_vec()),
        (Encoding::top_k(3), 0, nan.to_vec()),
        (Encoding::top_k(3), 4 + 4, neg_inf.to_vec()),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let n = 300;
    let (bad_block, bad_record) = (1usize, 5usize);
    for (enc, at, forged) in cases {
        let what = format!("{enc} payload byte {at} = {forged:02x?}");
        let dir = tmp.path().join(format!("c-{enc}-{at}").replace(':', ""));
        let m = build_cache(&dir, enc, n);
        let shard_path = dir.join(&m.shards[0].file);
        let shard = fs::read(&shard_path).unwrap();
        let (h, entries) = parse_shard(&shard_path, &shard).unwrap();
        let mut blocks: Vec<(Vec<u8>, BlockEntry)> = entries
            .iter()
            .map(|e| {
                (
                    shard[e.offset as usize..(e.offset + e.compressed_len) as usize].to_vec(),
                    *e,
                )
            })
            .collect();
        assert!(blocks.len() > bad_block, "{what}: too few blocks");
        let e = blocks[bad_block].1;
        let mut raw = zstd::bulk::decompress(&blocks[bad_block].0, e.raw_len as usize).unwrap();
        let count = e.record_count as usize;
        let payload = (raw.len() - 12 * count) / count;
        let start = 12 * count + bad_record * payload + at;
        raw[start..start + forged.len()].copy_from_slice(&forged);
        blocks[bad_block].0 = zstd::bulk::compress(&raw, 3).unwrap();
        let bytes = seal_shard(&h, &blocks);
        fs::write(&shard_path, &bytes).unwrap();
        let mut mm = m.clone();
        mm.shards[0].bytes = bytes.len() as u64;
        mm.shards[0].xxh3 = format!("{:016x}", xxh3_64(&bytes));
        write_manifest(&dir, &mut mm);

        // Open checks headers and the index only: the forgery passes it.
        let r = open(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        let bad_sample = h.first_sample + e.first_record + bad_record as u64;
        let refused = |res: distill::cache::Result<DecodedTargets>, path: &str| {
            let msg = match res {
                Ok(_) => panic!("{what}: {path} returned the forged record"),
                Err(e) => e.to_string(),
            };
            assert!(
                msg.contains("non-finite log-probability")
                    && msg.contains(&m.shards[0].file)
                    && msg.contains(&format!("block {bad_block}")),
                "{what}: {path}: {msg}"
            );
        };
        refused(r.read_all(T, false), "read_all");
        // Re-tempering must not launder the value either.
        refused(r.read_all(1.0, true), "read_all at T=1");
        refused(r.read_samples(&[bad_sample], T, false), "read_samples");
        let plan = distill::cache::EpochPlan {
            seed: 1,
            epoch: 0,
            start: 0,
            batch_size: 50,
            window_blocks: 2,
            temperature: T,
            allow_topk_retemper: true,
            drop_last: false,
        };
        let streamed: distill::cache::Result<Vec<DecodedTargets>> =
            r.epoch_batches(plan).unwrap().collect();
        refused(streamed.map(|_| DecodedTargets::default()), "epoch_batches");
        let v = r.verify().map(|_| DecodedTargets::default());
        refused(v, "verify");
        // A sample in an untouched block still decodes.
        let fine = r.read_samples(&[0], T, false).unwrap();
        assert!(fine.logprobs.iter().all(|v| v.is_finite()), "{what}");
    }
}

/// Manifest shard paths cannot leave the cache directory, even with a valid id.
#[test]
fn manifest_paths_cannot_escape_the_cache_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("c");
    let m = build_cache(&dir, Encoding::F16, 300);
    // A real shard outside the cache, reachable by each escape.
    fs::copy(
        dir.join(&m.shards[0].file),
        tmp.path().join(&m.shards[0].file),
    )
    .unwrap();
    let outside = s(&tmp.path().join(&m.shards[0].file));
    for name in [
        format!("../{}", m.shards[0].file),
        outside,
        format!("./{}", m.shards[0].file),
        format!("sub/../../{}", m.shards[0].file),
        "..".into(),
        "C:\\x.dsc".into(),
    ] {
        let mut mm = m.clone();
        mm.shards[0].file = name.clone();
        write_manifest(&dir, &mut mm);
        let e = open(&dir).err().unwrap_or_else(|| panic!("{name} opened"));
        assert!(
            e.to_string().contains("not a plain file name"),
            "{name}: {e}"
        );
    }
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// Data readers (IDX raw and gzip, npy, safetensors matrices) and the
/// safetensors model loader on mutated files: errors only, never a panic.
#[test]
fn hostile_data_and_weights_files_give_errors_never_panics() {
    let n = cases(1500, 45_000);
    // Many small files: prefer memory (/dev/shm) over a shared disk.
    let tmp = tempfile::tempdir_in("/dev/shm")
        .or_else(|_| tempfile::tempdir())
        .unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    // Valid seeds: a tiny IDX dataset (raw and gzip), npy files, a weights file.
    let ds = Dataset::from_u8(
        [1, 4, 4],
        (0..5 * 16).map(|i| i as u8).collect(),
        Some(vec![0, 1, 2, 1, 0]),
        Split::Test,
    )
    .unwrap();
    let raw_dir = tmp.path().join("idx");
    let gz_dir = tmp.path().join("gz");
    write_idx(&ds, &raw_dir, false).unwrap();
    write_idx(&ds, &gz_dir, true).unwrap();
    let seeds_of = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut v: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("t10k"))
            .map(|p| (p.clone(), fs::read(&p).unwrap()))
            .collect();
        v.sort();
        v
    };
    let idx_seeds = seeds_of(&raw_dir);
    let gz_seeds = seeds_of(&gz_dir);
    assert_eq!(idx_seeds.len(), 2, "{idx_seeds:?}");
    let npy_dir = tmp.path().join("npy");
    fs::create_dir_all(&npy_dir).unwrap();
    let npy = |descr: &str, shape: &[usize], data: &[u8]| -> Vec<u8> {
        let p = tmp.path().join("x.npy");
        crate::util::write_npy(&p, descr, shape, data);
        fs::read(p).unwrap()
    };
    let images = npy("|u1", &[5, 4, 4], &[7u8; 80]);
    let labels = npy("<i8", &[5], &[1u8, 0, 0, 0, 0, 0, 0, 0].repeat(5));
    let logits_f: Vec<u8> = (0..12).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let matrix = npy("<f4", &[3, 4], &logits_f);
    let net = Network::new(
        ModelSpec::parse("mlp:16-3-2").unwrap(),
        dfdx::prelude::Cpu::default(),
        1,
    );
    let wpath = tmp.path().join("w.safetensors");
    save_weights(&net, &wpath).unwrap();
    let weights = fs::read(&wpath).unwrap();
    let mut counts = [0u64; 5];
    for i in 0..n {
        // IDX, raw or gzip: mutate one of the two files.
        let seeds = if i % 2 == 0 { &idx_seeds } else { &gz_seeds };
        let dir = if i % 2 == 0 { &raw_dir } else { &gz_dir };
        let k = rng.gen_range(0..2);
        let mut b = seeds[k].1.clone();
        mutate(&mut rng, &mut b);
        fs::write(&seeds[k].0, &b).unwrap();
        if let Ok(d) = Dataset::open(dir, Split::Test) {
            assert!(!d.is_empty());
        }
        fs::write(&seeds[k].0, &seeds[k].1).unwrap();
        counts[0] += 1;
        // npy images + labels.
        let (mut im, mut lb) = (images.clone(), labels.clone());
        if i % 3 == 0 {
            mutate(&mut rng, &mut lb);
        } else {
            mutate(&mut rng, &mut im);
        }
        fs::write(npy_dir.join("test-images.npy"), &im).unwrap();
        fs::write(npy_dir.join("test-labels.npy"), &lb).unwrap();
        let _ = Dataset::open(&npy_dir, Split::Test);
        counts[1] += 1;
        // Float matrices: npy and safetensors.
        let mut mx = if i % 2 == 0 {
            matrix.clone()
        } else {
            weights.clone()
        };
        mutate(&mut rng, &mut mx);
        let mp = tmp.path().join("m.bin");
        fs::write(&mp, &mx).unwrap();
        if let Ok((r, c, v)) = read_float_matrix(&mp, None) {
            assert_eq!(r * c, v.len());
        }
        counts[2] += 1;
        // The weights loader.
        let mut w = weights.clone();
        mutate(&mut rng, &mut w);
        fs::write(&wpath, &w).unwrap();
        let _ = read_safetensors(&wpath);
        let _ = load_weights(&wpath, None, dfdx::prelude::Cpu::default());
        counts[3] += 1;
        // Random bytes into every reader.
        let len = rng.gen_range(0..200);
        let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        fs::write(&mp, &junk).unwrap();
        assert!(read_float_matrix(&mp, None).is_err());
        assert!(read_safetensors(&mp).is_err());
        counts[4] += 1;
    }
    eprintln!(
        "fuzz data: {} IDX (raw+gzip), {} npy datasets, {} float matrices, {} weights files, {} random-byte files; total {}",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        counts[4],
        counts.iter().sum::<u64>() + counts[3] // the weights case runs two readers
    );
}

/// A weights file whose metadata names a huge (but legal) spec and holds no
/// matching tensors is refused before the network is allocated.
#[test]
fn weights_with_a_huge_spec_are_refused_before_allocating() {
    let tmp = tempfile::tempdir().unwrap();
    let small = Network::new(
        ModelSpec::parse("mlp:16-3-2").unwrap(),
        dfdx::prelude::Cpu::default(),
        1,
    );
    let p = tmp.path().join("w.safetensors");
    save_weights(&small, &p).unwrap();
    let mut bytes = fs::read(&p).unwrap();
    // Rewrite the spec in the JSON header, keeping its length: 4.2e9 parameters (16 GiB).
    let hlen = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = String::from_utf8(bytes[8..8 + hlen].to_vec()).unwrap();
    let huge = "mlp:1048576-4000-10";
    let mut new_header = header.replace("\"mlp:16-3-2\"", &format!("\"{huge}\""));
    // Keep the header a multiple of 8 by trimming trailing spaces if present, else pad.
    while !(new_header.len() - hlen).is_multiple_of(8) {
        new_header.push(' ');
    }
    let mut out = (new_header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(new_header.as_bytes());
    out.extend_from_slice(&bytes[8 + hlen..]);
    bytes = out;
    fs::write(&p, &bytes).unwrap();
    let t = std::time::Instant::now();
    let e = load_weights(&p, None, dfdx::prelude::Cpu::default())
        .err()
        .expect("refused");
    assert!(e.to_string().contains("w.safetensors"), "{e}");
    assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
}

//! Format compatibility, the pattern of tantivy's `compat_tests.rs`: for
//! every cache format version there is a small cache written by that
//! version's writer under `tests/golden/cache-v{N}/`, committed with the
//! values it must decode to (`expected.json`). The current reader must open
//! each one, verify it, and decode the committed values, within each
//! encoding's error of the exact log-probabilities the writer was given.
//!
//! Every format change adds a golden directory (FORMAT.md, "Golden files"):
//! bump `FORMAT_VERSION_CURRENT`, then
//!
//! ```text
//! cargo test --locked --test tests compat::write_golden_cache -- --ignored
//! ```
//!
//! writes `tests/golden/cache-v{CURRENT}/` (it refuses to touch an existing
//! one: golden files are history).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use distill::cache::format::{
    raw_record_bytes, FORMAT_VERSION_CURRENT, FORMAT_VERSION_OLDEST_SUPPORTED,
};
use distill::cache::{
    log_softmax_tempered, CacheMeta, CacheReader, CacheWriter, DatasetInfo, Encoding, TeacherInfo,
    WriterOptions,
};
use serde_json::{json, Value};
use xxhash_rust::xxh3::xxh3_64;

const ROWS: usize = 40;
const CLASSES: usize = 10;
const T: f32 = 4.0;
const RECORDS_PER_BLOCK: u32 = 16;
/// Shuffle settings whose epoch order is recorded (the order is part of the format).
const ORDER: (u64, u64, usize) = (7, 1, 2);

fn golden_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The caches of one golden version: (directory, encoding, labelled); the
/// codecs of format version 2 join the golden set from `cache-v2` on.
fn variants() -> Vec<(&'static str, Encoding, bool)> {
    let mut v = vec![
        ("f32", Encoding::F32, true),
        ("f16", Encoding::F16, true),
        ("q8", Encoding::Q8, true),
        ("topk3", Encoding::top_k(3), true),
        ("f16-unlabelled", Encoding::F16, false),
    ];
    if FORMAT_VERSION_CURRENT >= 2 {
        v.extend([
            ("hq32", Encoding::hq(32), true),
            ("topkp3", Encoding::top_k_packed(3), true),
            ("sampled3", Encoding::sampled(0, 3), true),
            ("sampled1-3", Encoding::sampled(1, 3), false),
        ]);
    }
    v
}

/// Fixed teacher logits and labels, with the edge cases an encoder meets:
/// a row of ties, a three-way tie at the top (top-k keeps the lower ids), a
/// class far below q8's floor, and confident rows.
fn golden_logits() -> (Vec<f32>, Vec<u32>) {
    let labels: Vec<u32> = (0..ROWS).map(|i| ((i * 7 + 3) % CLASSES) as u32).collect();
    let mut z = Vec::with_capacity(ROWS * CLASSES);
    for (i, &y) in labels.iter().enumerate() {
        for c in 0..CLASSES {
            z.push(match i {
                0 => 0.0,
                1 if c < 3 => 2.0,
                1 => -1.0,
                2 if c == 4 => 10.0,
                2 if c == 9 => -90.0,
                2 => 0.0,
                _ => {
                    let h = ((i * 31 + c * 17) % 23) as f32;
                    (h - 11.0) * 0.5 + if c as u32 == y { 4.0 } else { 0.0 }
                }
            });
        }
    }
    (z, labels)
}

fn exact_logprobs(logits: &[f32], t: f32) -> Vec<f32> {
    let mut lp = vec![0f32; logits.len()];
    log_softmax_tempered(logits, CLASSES, t, &mut lp).unwrap();
    lp
}

/// Writes the golden caches of the current format version. Run by hand
/// after a format change (see the module docs); never rewrites a version.
#[test]
#[ignore = "writes tests/golden/cache-v{CURRENT}; run by hand after a format change"]
fn write_golden_cache() {
    let dir = golden_root().join(format!("cache-v{FORMAT_VERSION_CURRENT}"));
    assert!(
        !dir.exists(),
        "{} exists: golden files of a released format are never rewritten (delete it only if this version was never released)",
        dir.display()
    );
    let (logits, labels) = golden_logits();
    let lp = exact_logprobs(&logits, T);
    let mut caches = serde_json::Map::new();
    for (name, enc, labelled) in variants() {
        let out = dir.join(name);
        let meta = CacheMeta {
            teacher: TeacherInfo {
                spec: "mlp:10-10".into(),
                fingerprint: "golden-teacher".into(),
                source: "tests/compat.rs".into(),
                normalization: None,
            },
            dataset: DatasetInfo {
                fingerprint: "golden-data".into(),
                split: "train".into(),
                num_samples: ROWS as u64,
                view: None,
            },
            num_classes: CLASSES,
            has_labels: labelled,
            temperature: T,
            encoding: enc,
        };
        // Two shards (32 + 8 records), three blocks (16, 16, 8).
        let opts = WriterOptions {
            shard_target_bytes: 2
                * RECORDS_PER_BLOCK as u64
                * raw_record_bytes(enc, CLASSES) as u64,
            records_per_block: RECORDS_PER_BLOCK,
            zstd_level: 3,
            overwrite: false,
        };
        let mut w = CacheWriter::create_or_resume(&out, meta, opts).unwrap();
        let l = labelled.then_some(&labels[..]);
        w.push_batch(0, l.map(|l| &l[..25]), &lp[..25 * CLASSES])
            .unwrap();
        w.push_batch(25, l.map(|l| &l[25..]), &lp[25 * CLASSES..])
            .unwrap();
        let manifest = w.finish().unwrap();
        // The lock file is the writer's, not part of the cache.
        fs::remove_file(out.join(".lock")).unwrap();
        assert_eq!(manifest.shards.len(), 2, "{name}");
        // SAFETY: written just above; nothing else touches it.
        let r = unsafe { CacheReader::open(&out) }.unwrap();
        let decoded = r.read_all(T, false).unwrap();
        let (seed, epoch, window) = ORDER;
        caches.insert(
            name.into(),
            json!({
                "encoding": enc.to_string(),
                "has_labels": labelled,
                "id": manifest.id,
                "decoded": f32s(&decoded.logprobs),
                "epoch_order": r.epoch_order(seed, epoch, window),
            }),
        );
    }
    let (seed, epoch, window) = ORDER;
    let expected = json!({
        "format_version": FORMAT_VERSION_CURRENT,
        "classes": CLASSES,
        "rows": ROWS,
        "temperature": T,
        "labels": labels,
        "logits": f32s(&logits),
        "exact_logprobs": f32s(&lp),
        "epoch_order_of": {"seed": seed, "epoch": epoch, "window_blocks": window},
        "caches": caches,
    });
    fs::write(dir.join("expected.json"), json_text(&expected, 0) + "\n").unwrap();
}

/// f32 values as JSON numbers in their shortest round-trip spelling.
fn f32s(v: &[f32]) -> Value {
    Value::Array(
        v.iter()
            .map(|x| Value::Number(x.to_string().parse().unwrap()))
            .collect(),
    )
}

/// Pretty JSON with arrays of numbers on one line each (short diffs, short files).
fn json_text(v: &Value, indent: usize) -> String {
    let pad = "  ".repeat(indent + 1);
    match v {
        Value::Object(m) => {
            let items: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    format!(
                        "{pad}{}: {}",
                        Value::from(k.as_str()),
                        json_text(v, indent + 1)
                    )
                })
                .collect();
            format!("{{\n{}\n{}}}", items.join(",\n"), "  ".repeat(indent))
        }
        other => other.to_string(),
    }
}

/// Every file under `dir` with its xxh3, to show the reader wrote nothing.
fn hashes(dir: &Path) -> BTreeMap<PathBuf, u64> {
    let mut out = BTreeMap::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(hashes(&p));
        } else {
            out.insert(p.clone(), xxh3_64(&fs::read(&p).unwrap()));
        }
    }
    out
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// KL(exact || decoded) of one row, in f64.
fn kl(exact: &[f32], decoded: &[f32]) -> f64 {
    exact
        .iter()
        .zip(decoded)
        .map(|(&e, &d)| (e as f64).exp() * (e as f64 - d as f64))
        .sum()
}

fn argmax(row: &[f32]) -> usize {
    // Lowest index among ties, as the cache's statistics count them.
    let mut best = 0;
    for (j, v) in row.iter().enumerate() {
        if *v > row[best] {
            best = j;
        }
    }
    best
}

/// What "within the encoding's error" means for one decoded row (FORMAT.md,
/// "Record payloads" and "Fidelity measured").
fn check_row(enc: Encoding, exact: &[f32], got: &[f32], what: &str) {
    let mass: f64 = got.iter().map(|&v| (v as f64).exp()).sum();
    assert!((mass - 1.0).abs() < 1e-5, "{what}: mass {mass}");
    let kl = kl(exact, got);
    match enc {
        Encoding::F32 => assert_eq!(exact, got, "{what}"),
        Encoding::F16 => {
            // Gaps rounded to f16 (relative 2^-11), then renormalised.
            let hi = exact.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            for (&e, &d) in exact.iter().zip(got) {
                let tol = 2.0 * (hi - e) / 2048.0 + 1e-3 / 2048.0 + 1e-6;
                assert!((e - d).abs() <= tol, "{what}: {e} decoded as {d}");
            }
            assert!(kl < 1e-6, "{what}: KL {kl}");
        }
        Encoding::Q8 => assert!(kl < 5e-5, "{what}: KL {kl}"),
        _ if enc.to_string().starts_with("hq:") => check_hq_row(enc, exact, got, kl, what),
        _ if enc.to_string().starts_with("sampled:") => check_sampled_row(enc, exact, got, what),
        _ => {
            assert!(!enc.is_dense(), "{what}: no check for {enc}");
            let k = enc.param() as usize;
            let mut idx: Vec<usize> = (0..exact.len()).collect();
            idx.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]).then(a.cmp(&b)));
            let packed = enc.to_string().starts_with("topkp:");
            let hi = exact[idx[0]];
            for &i in &idx[..k] {
                if packed {
                    // f16 gaps below the top class, then the row renormalised.
                    let tol = (hi - exact[i]) * 4.9e-4 + 2e-4;
                    assert!((exact[i] - got[i]).abs() <= tol, "{what}: class {i}");
                } else {
                    assert_eq!(exact[i].to_bits(), got[i].to_bits(), "{what}: class {i}");
                }
            }
            let rest: f64 = idx[k..].iter().map(|&i| (exact[i] as f64).exp()).sum();
            let each = (rest / (exact.len() - k) as f64).ln();
            for &i in &idx[k..] {
                assert!(
                    (got[i] as f64 - each).abs() < 1e-4,
                    "{what}: tail class {i}: {} vs {each}",
                    got[i]
                );
            }
        }
    }
    let ties_possible =
        enc.to_string().starts_with("hq:") || enc.to_string().starts_with("sampled:");
    if !matches!(enc, Encoding::Q8) && !ties_possible {
        assert_eq!(argmax(exact), argmax(got), "{what}: top-1");
    }
}

/// hq:N: `sqrt(p/p_max)` within half a step plus the reconstruction's lift,
/// and the KL bound of `src/cache/codec/hq.rs`'s property test.
fn check_hq_row(enc: Encoding, exact: &[f32], got: &[f32], kl: f64, what: &str) {
    let n = enc.param() as f32;
    let hi = exact.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let ghi = got.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for (&e, &g) in exact.iter().zip(got) {
        let (u, z) = (((e - hi) * 0.5).exp(), ((g - ghi) * 0.5).exp());
        assert!(
            (u - z).abs() <= 0.79 / n + 1e-5,
            "{what}: {e} decoded as {g}"
        );
    }
    let bound = 2.0 * (exact.len() as f64 - 1.0) / (n as f64 * n as f64);
    assert!(kl <= bound, "{what}: KL {kl} over {bound}");
}

/// sampled:K+S: the top K exact, every other class a whole number of draws
/// out of S, the floor or the ceiling of its expected count.
fn check_sampled_row(enc: Encoding, exact: &[f32], got: &[f32], what: &str) {
    let (k, s) = ((enc.param() >> 8) as usize, (enc.param() & 0xff) as f64);
    let mut idx: Vec<usize> = (0..exact.len()).collect();
    idx.sort_by(|&a, &b| exact[b].total_cmp(&exact[a]).then(a.cmp(&b)));
    let top: f64 = idx[..k].iter().map(|&i| (exact[i] as f64).exp()).sum();
    for &i in &idx[..k] {
        assert_eq!(exact[i].to_bits(), got[i].to_bits(), "{what}: class {i}");
    }
    let r = 1.0 - top;
    let mut draws = 0.0;
    for &i in &idx[k..] {
        let expected = s * (exact[i] as f64).exp() / r;
        let n = (got[i] as f64).exp() / r * s;
        assert!(
            (n - n.round()).abs() < 1e-3,
            "{what}: class {i} holds {n} draws"
        );
        assert!(
            n.round() >= (expected - 1e-6).floor() && n.round() <= (expected + 1e-6).ceil(),
            "{what}: class {i}: {n} draws, expected {expected}"
        );
        draws += n.round();
    }
    assert_eq!(draws, s, "{what}");
}

/// The current reader opens every golden cache of every supported format
/// version, verifies it and decodes the committed values.
#[test]
fn golden_caches_of_every_format_version_decode() {
    let root = golden_root();
    let mut versions: Vec<u32> = fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().ok()?;
            name.strip_prefix("cache-v")?.parse().ok()
        })
        .collect();
    versions.sort_unstable();
    let supported: Vec<u32> = (FORMAT_VERSION_OLDEST_SUPPORTED..=FORMAT_VERSION_CURRENT).collect();
    // A format version without a golden cache is a format change that skipped
    // FORMAT.md's rule; a golden cache older than the oldest supported version
    // must be refused with advice, not misread.
    for v in &supported {
        assert!(
            versions.contains(v),
            "no tests/golden/cache-v{v}: every format version needs a golden cache (FORMAT.md, \"Golden files\")"
        );
    }
    let mut checked = 0;
    for v in versions {
        let dir = root.join(format!("cache-v{v}"));
        let before = hashes(&dir);
        let expected: Value =
            serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
        assert_eq!(expected["format_version"], v, "{}", dir.display());
        let classes = expected["classes"].as_u64().unwrap() as usize;
        let rows = expected["rows"].as_u64().unwrap() as usize;
        let t = expected["temperature"].as_f64().unwrap() as f32;
        let exact = floats(&expected["exact_logprobs"]);
        assert_eq!(exact.len(), rows * classes);
        let labels: Vec<u32> = expected["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let order_of = &expected["epoch_order_of"];
        let caches = expected["caches"].as_object().unwrap();
        assert!(!caches.is_empty());
        for (name, want) in caches {
            let what = format!("cache-v{v}/{name}");
            let path = dir.join(name);
            // SAFETY: committed files; nothing modifies them while mapped.
            let opened = unsafe { CacheReader::open(&path) };
            if !supported.contains(&v) {
                let e = opened.err().map(|e| e.to_string()).unwrap_or_default();
                assert!(e.contains("rebuild"), "{what}: {e}");
                continue;
            }
            let r = opened.unwrap_or_else(|e| panic!("{what}: {e}"));
            let report = r.verify().unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(report.samples, rows as u64, "{what}");
            let m = r.manifest();
            assert_eq!(m.format_version, v, "{what}");
            assert_eq!(m.id, want["id"].as_str().unwrap(), "{what}");
            let enc: Encoding = want["encoding"].as_str().unwrap().parse().unwrap();
            assert_eq!(r.encoding(), enc, "{what}");
            assert_eq!(r.num_classes(), classes, "{what}");
            assert_eq!(r.temperature(), t, "{what}");
            let all = r
                .read_all(t, false)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(all.indices, (0..rows as u64).collect::<Vec<_>>(), "{what}");
            if want["has_labels"].as_bool().unwrap() {
                assert_eq!(all.labels.as_deref(), Some(&labels[..]), "{what}");
            } else {
                assert!(all.labels.is_none(), "{what}");
            }
            // The committed decoded values, to float rounding...
            let committed = floats(&want["decoded"]);
            for (k, (&g, &c)) in all.logprobs.iter().zip(&committed).enumerate() {
                assert!(
                    (g - c).abs() <= 1e-6 * (1.0 + c.abs()),
                    "{what}: value {k} decodes to {g}, committed {c}"
                );
            }
            // ...which are the writer's input within the encoding's error.
            for (i, (e, g)) in exact
                .chunks_exact(classes)
                .zip(all.logprobs.chunks_exact(classes))
                .enumerate()
            {
                check_row(enc, e, g, &format!("{what} row {i}"));
            }
            let order: Vec<u64> = order_of_cache(&r, order_of);
            let want_order: Vec<u64> = want["epoch_order"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap())
                .collect();
            assert_eq!(order, want_order, "{what}: epoch order");
            checked += 1;
        }
        assert_eq!(
            hashes(&dir),
            before,
            "the reader changed files in {}",
            dir.display()
        );
    }
    assert!(checked >= 5 + 9, "{checked} golden caches checked");
}

fn order_of_cache(r: &CacheReader, of: &Value) -> Vec<u64> {
    r.epoch_order(
        of["seed"].as_u64().unwrap(),
        of["epoch"].as_u64().unwrap(),
        of["window_blocks"].as_u64().unwrap() as usize,
    )
}

/// The golden inputs are the ones this file generates: the committed
/// `exact_logprobs` are `log_softmax(logits / T)` of the committed logits,
/// and the generator still makes those logits (so a new version's golden
/// cache holds the same rows as the old ones).
#[test]
fn golden_inputs_are_reproducible() {
    let (logits, labels) = golden_logits();
    let dir = golden_root().join(format!("cache-v{FORMAT_VERSION_OLDEST_SUPPORTED}"));
    let expected: Value =
        serde_json::from_str(&fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    assert_eq!(floats(&expected["logits"]), logits);
    let labels_json: Vec<u32> = expected["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(labels_json, labels);
    let lp = exact_logprobs(&logits, T);
    for (a, b) in floats(&expected["exact_logprobs"]).iter().zip(&lp) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

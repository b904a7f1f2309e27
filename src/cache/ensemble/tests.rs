//! Unit tests of `cache ensemble`: members combined, checked and refused.

use super::*;
use crate::cache::manifest::MANIFEST_FILE;
use crate::cache::views::SUMMARY_FILE;
use crate::cache::{import_logits, log_softmax_tempered, DatasetInfo, ViewInfo};

const C: usize = 4;

/// Deterministic logits for `n` samples, different per `salt`.
fn logits(n: usize, salt: u32) -> Vec<f32> {
    (0..n * C)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(salt * 97_531);
            ((x >> 8) % 2000) as f32 / 200.0 - 5.0
        })
        .collect()
}

fn labels(n: usize) -> Vec<u32> {
    (0..n as u32).map(|i| (i * 7 + 1) % C as u32).collect()
}

fn meta(n: usize, t: f32, spec: &str, view: Option<ViewInfo>) -> CacheMeta {
    CacheMeta {
        teacher: TeacherInfo {
            spec: spec.into(),
            fingerprint: format!("fp-{spec}"),
            source: spec.into(),
            normalization: None,
        },
        dataset: DatasetInfo {
            fingerprint: "data".into(),
            split: "train".into(),
            num_samples: n as u64,
            view,
        },
        num_classes: C,
        has_labels: true,
        temperature: t,
        encoding: Encoding::F32,
    }
}

fn small_blocks() -> WriterOptions {
    WriterOptions {
        records_per_block: 16,
        shard_target_bytes: 4096,
        ..WriterOptions::default()
    }
}

fn cache(dir: &Path, z: &[f32], t: f32, spec: &str) {
    let n = z.len() / C;
    import_logits(
        dir,
        meta(n, t, spec, None),
        small_blocks(),
        z,
        Some(&labels(n)),
    )
    .unwrap();
}

fn opts(t: f32, combine: Combine, weights: Vec<f64>) -> EnsembleOptions {
    EnsembleOptions {
        temperature: t,
        encoding: Encoding::F32,
        writer: small_blocks(),
        combine,
        weights,
        held_out: None,
    }
}

fn read(dir: &Path, t: f32) -> Vec<f32> {
    // SAFETY: nothing modifies the test's cache while it is open.
    let r = unsafe { CacheReader::open(dir) }.unwrap();
    r.read_all(t, false).unwrap().logprobs
}

fn tempered(z: &[f32], t: f32) -> Vec<f32> {
    let mut out = vec![0.0; z.len()];
    log_softmax_tempered(z, C, t, &mut out).unwrap();
    out
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() <= tol, "value {i}: {x} against {y}");
    }
}

#[test]
fn probability_mean_of_two_teachers() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let n = 100;
    let (za, zb) = (logits(n, 1), logits(n, 2));
    cache(&a, &za, 2.0, "teacher-a");
    cache(&b, &zb, 2.0, "teacher-b");
    // SAFETY: the members are not modified while the ensemble is built.
    let report = unsafe {
        ensemble_caches(
            &[a.clone(), b.clone()],
            &out,
            &opts(2.0, Combine::Prob, vec![3.0, 1.0]),
            |_, _| {},
        )
    }
    .unwrap();
    let (la, lb) = (tempered(&za, 2.0), tempered(&zb, 2.0));
    let want: Vec<f32> = la
        .iter()
        .zip(&lb)
        .map(|(x, y)| (0.75 * (*x as f64).exp() + 0.25 * (*y as f64).exp()).ln() as f32)
        .collect();
    close(&read(&out, 2.0), &want, 1e-6);
    let m = &report.manifests[0];
    assert!(m
        .teacher
        .spec
        .starts_with("ensemble:prob(0.7500 teacher-a, 0.2500 teacher-b"));
    assert_eq!(m.temperature, 2.0);
    assert_eq!(m.dataset.num_samples, n as u64);
    assert!(report.summary.is_none());
    // Agreement: the ensemble's, and each member's, against the labels.
    let agree = |lp: &[f32]| {
        let (a, t) = agreement(lp, &labels(n), C);
        a as f64 / t as f64
    };
    assert_eq!(report.agreement, Some(agree(&want)));
    assert_eq!(
        report.member_agreement,
        vec![Some(agree(&la)), Some(agree(&lb))]
    );
}

#[test]
fn logit_mean_commutes_with_retempering_and_members_are_retempered() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let n = 40;
    let (za, zb) = (logits(n, 3), logits(n, 4));
    // Members at different temperatures; both decoded at the output's T 4.
    cache(&a, &za, 1.0, "a");
    cache(&b, &zb, 4.0, "b");
    // SAFETY: as above.
    unsafe { ensemble_caches(&[a, b], &out, &opts(4.0, Combine::Logit, vec![]), |_, _| {}) }
        .unwrap();
    let mean: Vec<f32> = za.iter().zip(&zb).map(|(x, y)| 0.5 * (x + y)).collect();
    close(&read(&out, 4.0), &tempered(&mean, 4.0), 1e-5);
    // Read at T 1: the ensemble of the members at T 1.
    close(&read(&out, 1.0), &tempered(&mean, 1.0), 1e-4);
}

#[test]
fn an_ensemble_of_one_teacher_twice_is_that_teacher() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let z = logits(50, 5);
    // Two teachers (by name) with the same outputs.
    cache(&a, &z, 3.0, "a");
    cache(&b, &z, 3.0, "b");
    // The same cache twice (by path, or a copy by id) is refused.
    let twice = |m: &[PathBuf]| {
        // SAFETY: as above.
        unsafe {
            ensemble_caches(
                m,
                &out.join("x"),
                &opts(3.0, Combine::Prob, vec![]),
                |_, _| {},
            )
        }
        .unwrap_err()
        .to_string()
    };
    let e = twice(&[a.clone(), dir.path().join("./a")]);
    assert!(e.contains("is the same cache as member 1"), "{e}");
    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&a).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
    }
    assert!(twice(&[a.clone(), copy]).contains("is the same cache as member 1"));
    for combine in [Combine::Prob, Combine::Logit] {
        let o = out.join(combine.name());
        // SAFETY: as above.
        unsafe {
            ensemble_caches(
                &[a.clone(), b.clone()],
                &o,
                &opts(3.0, combine, vec![]),
                |_, _| {},
            )
        }
        .unwrap();
        close(&read(&o, 3.0), &read(&a, 3.0), 1e-6);
    }
}

#[test]
fn members_over_other_data_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    cache(&a, &logits(30, 1), 2.0, "a");
    cache(&b, &logits(31, 2), 2.0, "b");
    // SAFETY: as above.
    let err = unsafe {
        ensemble_caches(
            &[a, b.clone()],
            &out,
            &opts(2.0, Combine::Prob, vec![]),
            |_, _| {},
        )
    }
    .unwrap_err()
    .to_string();
    assert!(err.contains(&b.display().to_string()), "{err}");
    assert!(
        err.contains("dataset.num_samples is 31 here but 30"),
        "{err}"
    );
    assert!(!out.exists(), "a refused ensemble writes nothing");
}

#[test]
fn bad_weights_one_member_and_member_as_output_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    cache(&a, &logits(20, 1), 2.0, "a");
    cache(&b, &logits(20, 2), 2.0, "b");
    let run = |members: &[PathBuf], out: &Path, w: Vec<f64>| {
        // SAFETY: as above.
        unsafe { ensemble_caches(members, out, &opts(2.0, Combine::Prob, w), |_, _| {}) }
            .unwrap_err()
            .to_string()
    };
    let both = [a.clone(), b.clone()];
    assert!(run(&both, &out, vec![1.0]).contains("1 weights given for 2 member caches"));
    assert!(run(&both, &out, vec![1.0, -1.0]).contains("-1 is not a positive number"));
    assert!(run(&both, &out, vec![1.0, f64::NAN]).contains("NaN is not a positive number"));
    assert!(run(&both[..1], &out, vec![]).contains("at least two"));
    assert!(run(&both, &a, vec![]).contains("is also a member"));
    // The member is untouched.
    close(&read(&a, 2.0), &tempered(&logits(20, 1), 2.0), 1e-6);
}

#[test]
fn labels_that_differ_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let n = 20;
    cache(&a, &logits(n, 1), 2.0, "a");
    let other: Vec<u32> = labels(n).iter().map(|l| (l + 1) % C as u32).collect();
    import_logits(
        &b,
        meta(n, 2.0, "b", None),
        small_blocks(),
        &logits(n, 2),
        Some(&other),
    )
    .unwrap();
    // SAFETY: as above.
    let err =
        unsafe { ensemble_caches(&[a, b], &out, &opts(2.0, Combine::Prob, vec![]), |_, _| {}) }
            .unwrap_err()
            .to_string();
    assert!(err.contains("labels differ"), "{err}");
}

/// A view set of `views` views, each imported from its own logits.
fn view_set(dir: &Path, n: usize, views: u64, salt: u32, augment: &str) -> Vec<Vec<f32>> {
    (0..views)
        .map(|v| {
            let z = logits(n, salt + 10 * v as u32);
            let info = ViewInfo {
                augment: augment.into(),
                seed: 0,
                view: v,
                views,
            };
            import_logits(
                &view_dir(dir, v),
                meta(n, 2.0, "t", Some(info)),
                small_blocks(),
                &z,
                Some(&labels(n)),
            )
            .unwrap();
            z
        })
        .collect()
}

#[test]
fn view_sets_are_combined_view_by_view() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let n = 24;
    let za = view_set(&a, n, 3, 1, "shift=1");
    let zb = view_set(&b, n, 3, 2, "shift=1");
    // SAFETY: as above.
    let report =
        unsafe { ensemble_caches(&[a, b], &out, &opts(2.0, Combine::Logit, vec![]), |_, _| {}) }
            .unwrap();
    let set = unsafe { CacheViews::open(&out) }.unwrap();
    assert_eq!(set.views().len(), 3);
    for v in 0..3 {
        let mean: Vec<f32> = za[v]
            .iter()
            .zip(&zb[v])
            .map(|(x, y)| 0.5 * (x + y))
            .collect();
        close(
            &read(&view_dir(&out, v as u64), 2.0),
            &tempered(&mean, 2.0),
            1e-5,
        );
    }
    let summary = report.summary.unwrap();
    assert_eq!(summary.views, 3);
    assert_eq!(set.summary(), Some(&summary));
    assert!(summary.view_stats.iter().all(|s| s.agreement.is_some()));
}

#[test]
fn a_view_set_and_a_plain_cache_do_not_mix() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
        dir.path().join("e"),
    );
    view_set(&a, 16, 2, 1, "flip");
    cache(&b, &logits(16, 2), 2.0, "b");
    view_set(&c, 16, 2, 3, "shift=1");
    let run = |m: [PathBuf; 2]| {
        // SAFETY: as above.
        unsafe { ensemble_caches(&m, &out, &opts(2.0, Combine::Prob, vec![]), |_, _| {}) }
            .unwrap_err()
            .to_string()
    };
    let err = run([a.clone(), b]);
    assert!(
        err.contains("a cache of the plain images here but a view set of 2 views of flip"),
        "{err}"
    );
    let err = run([a, c]);
    assert!(err.contains("views of shift=1"), "{err}");
}

#[test]
fn an_output_holds_a_plain_cache_or_a_view_set_never_both() {
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    let (out, sets, plains) = (p("e"), [p("va"), p("vb")], [p("pa"), p("pb")]);
    view_set(&sets[0], 16, 3, 1, "flip");
    view_set(&sets[1], 16, 3, 2, "flip");
    cache(&plains[0], &logits(16, 5), 2.0, "a");
    cache(&plains[1], &logits(16, 6), 2.0, "b");
    let run = |members: &[PathBuf], overwrite: bool| {
        let mut o = opts(2.0, Combine::Prob, vec![]);
        o.writer.overwrite = overwrite;
        // SAFETY: as above.
        unsafe { ensemble_caches(members, &out, &o, |_, _| {}) }
    };
    run(&sets, false).unwrap();
    // A plain ensemble over the view set: refused, the set left whole.
    let err = run(&plains, false).unwrap_err().to_string();
    assert!(
        err.contains("holds a view set") && err.contains("`overwrite`"),
        "{err}"
    );
    assert!(!out.join(MANIFEST_FILE).exists());
    assert_eq!(unsafe { CacheViews::open(&out) }.unwrap().views().len(), 3);
    // With overwrite the plain cache replaces the set, none of it left.
    run(&plains, true).unwrap();
    assert!(!out.join(SUMMARY_FILE).exists() && !view_dir(&out, 0).exists());
    let plain = unsafe { CacheViews::open(&out) }.unwrap();
    assert_eq!(plain.views().len(), 1);
    // And back: a view set over the plain cache needs overwrite too.
    let err = run(&sets, false).unwrap_err().to_string();
    assert!(err.contains("holds a cache of the plain images"), "{err}");
    assert!(!view_dir(&out, 0).exists());
    run(&sets, true).unwrap();
    assert!(!out.join(MANIFEST_FILE).exists());
    assert_eq!(unsafe { CacheViews::open(&out) }.unwrap().views().len(), 3);
    // A smaller set over a larger one leaves none of the larger's views.
    let small = [p("sa"), p("sb")];
    view_set(&small[0], 16, 2, 7, "shift=1");
    view_set(&small[1], 16, 2, 8, "shift=1");
    run(&small, true).unwrap();
    assert!(!view_dir(&out, 2).exists());
    assert_eq!(unsafe { CacheViews::open(&out) }.unwrap().views().len(), 2);
}

#[test]
fn an_interrupted_ensemble_resumes_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let n = 200;
    cache(&a, &logits(n, 1), 2.0, "a");
    cache(&b, &logits(n, 2), 2.0, "b");
    let whole = dir.path().join("whole");
    let o = opts(2.0, Combine::Prob, vec![]);
    // SAFETY: as above.
    unsafe { ensemble_caches(&[a.clone(), b.clone()], &whole, &o, |_, _| {}) }.unwrap();
    // Interrupt a second build after its first rows: write them, never finish.
    let part = dir.path().join("part");
    {
        // SAFETY: as above.
        let sets: Vec<CacheViews> = [&a, &b]
            .iter()
            .map(|m| unsafe { CacheViews::open(m) }.unwrap())
            .collect();
        let teacher = ensemble_teacher(
            &[a.clone(), b.clone()],
            &sets,
            &[0.5, 0.5],
            Combine::Prob,
            None,
        );
        let m0 = sets[0].first().manifest();
        let meta = CacheMeta {
            teacher,
            dataset: m0.dataset.clone(),
            num_classes: C,
            has_labels: true,
            temperature: 2.0,
            encoding: Encoding::F32,
        };
        let mut w = CacheWriter::create_or_resume(&part, meta, small_blocks()).unwrap();
        let full = read(&whole, 2.0);
        w.push_batch(0, Some(&labels(n)[..70]), &full[..70 * C])
            .unwrap();
        drop(w);
    }
    // SAFETY: as above.
    unsafe { ensemble_caches(&[a, b], &part, &o, |_, _| {}) }.unwrap();
    let bytes = |d: &Path| std::fs::read(d.join("manifest.json")).unwrap();
    let (mw, mp): (Manifest, Manifest) = (
        serde_json::from_slice(&bytes(&whole)).unwrap(),
        serde_json::from_slice(&bytes(&part)).unwrap(),
    );
    assert_eq!(mw.id, mp.id);
    assert_eq!(read(&whole, 2.0), read(&part, 2.0));
}

#[test]
fn combining_rules_by_name() {
    assert_eq!("prob".parse::<Combine>(), Ok(Combine::Prob));
    assert_eq!("logit".parse::<Combine>(), Ok(Combine::Logit));
    let err = "mean".parse::<Combine>().unwrap_err();
    assert!(err.contains("'mean' is not a combining rule"), "{err}");
}

#[test]
fn out_of_fold_rows_come_from_the_members_that_held_them_out() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let n = 60;
    let (za, zb) = (logits(n, 1), logits(n, 2));
    cache(&a, &za, 2.0, "a");
    cache(&b, &zb, 2.0, "b");
    // a held out the even samples, b the odd ones below 50; 50.. by none.
    let mask_a: Vec<bool> = (0..n).map(|i| i % 2 == 0 && i < 50).collect();
    let mask_b: Vec<bool> = (0..n).map(|i| i % 2 == 1 && i < 50).collect();
    let mut o = opts(2.0, Combine::Prob, vec![]);
    o.held_out = Some(vec![mask_a, mask_b]);
    // SAFETY: as above.
    let report = unsafe { ensemble_caches(&[a.clone(), b.clone()], &out, &o, |_, _| {}) }.unwrap();
    assert_eq!(report.held_out_by_member, vec![25, 25]);
    assert_eq!(report.held_out_by_none, 10);
    let got = read(&out, 2.0);
    let (la, lb) = (tempered(&za, 2.0), tempered(&zb, 2.0));
    for i in 0..n {
        let row = |v: &[f32]| v[i * C..(i + 1) * C].to_vec();
        let want = match i {
            i if i >= 50 => (0..C)
                .map(|k| {
                    (0.5 * (la[i * C + k] as f64).exp() + 0.5 * (lb[i * C + k] as f64).exp()).ln()
                        as f32
                })
                .collect(),
            i if i % 2 == 0 => row(&la),
            _ => row(&lb),
        };
        close(&row(&got), &want, 1e-6);
    }
    let m = &report.manifests[0];
    assert!(
        m.teacher.spec.starts_with("ensemble:prob-oof("),
        "{}",
        m.teacher.spec
    );
    // Another cut of the folds is another teacher.
    let other = dir.path().join("other");
    o.held_out = Some(vec![vec![true; n], vec![false; n]]);
    // SAFETY: as above.
    let r2 = unsafe { ensemble_caches(&[a, b], &other, &o, |_, _| {}) }.unwrap();
    assert_ne!(r2.manifests[0].teacher.fingerprint, m.teacher.fingerprint);
    close(&read(&other, 2.0), &la, 1e-6);
    // A held-out set of the wrong length is refused.
    o.held_out = Some(vec![vec![true; n - 1], vec![false; n]]);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    // SAFETY: as above.
    let err = unsafe { ensemble_caches(&[a, b], &dir.path().join("x"), &o, |_, _| {}) }
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("held-out set covers 59 samples, the cache 60"),
        "{err}"
    );
}

#[test]
fn weights_normalise_to_one_or_are_refused_by_flag() {
    let w = normalised_weights(&[3.0, 1.0], 2).unwrap();
    assert_eq!(w, vec![0.75, 0.25]);
    assert_eq!(normalised_weights(&[], 4).unwrap(), vec![0.25; 4]);
    for bad in [
        vec![1.0],
        vec![0.0, 1.0],
        vec![f64::NAN, 1.0],
        vec![1e308, 1e308],
        vec![1e-320, 1e300],
    ] {
        let e = normalised_weights(&bad, 2).unwrap_err().to_string();
        assert!(e.starts_with("--weights: "), "{bad:?}: {e}");
    }
}

#[test]
fn a_member_that_cannot_be_retempered_is_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("e"),
    );
    let n = 20;
    cache(&a, &logits(n, 1), 2.0, "a");
    let mut m = meta(n, 2.0, "b", None);
    m.encoding = "topk:2".parse().unwrap();
    import_logits(&b, m, small_blocks(), &logits(n, 2), Some(&labels(n))).unwrap();
    let members = [a, b.clone()];
    // SAFETY: as above.
    let err =
        unsafe { ensemble_caches(&members, &out, &opts(3.0, Combine::Prob, vec![]), |_, _| {}) }
            .unwrap_err()
            .to_string();
    assert!(err.contains(&b.display().to_string()), "{err}");
    assert!(
        err.contains("cannot be re-tempered exactly to T=3"),
        "{err}"
    );
    // No unfinished build at T 3 is left to block the next try.
    assert!(!out.exists(), "a refused ensemble writes nothing");
    // SAFETY: as above.
    unsafe { ensemble_caches(&members, &out, &opts(2.0, Combine::Prob, vec![]), |_, _| {}) }
        .unwrap();
}

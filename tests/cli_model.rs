//! `distill model info`.

use crate::util::*;

#[test]
fn model_info_reports_pytorch_parameter_counts() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["model", "info", "mlp:784-128-10"]);
    assert!(out.contains("total parameters 101770"), "{out}");
    assert!(out.contains("forward FLOPs per sample 203264"), "{out}");
    let out = ok(dir.path(), &["model", "info", "cnn:c32-p-c64-p-f128-10"]);
    assert!(out.contains("total parameters 421642"), "{out}");
    assert!(out.contains("nn.Conv2d(1, 32, 3, padding=1)"), "{out}");
    fails(
        dir.path(),
        &["model", "info", "cnn:c32-x-10"],
        &["cnn:c32-x-10", "unknown layer 'x'"],
    );
}

//! One test per bug found, named after what broke (as ripgrep's
//! `tests/regression.rs`); each runs the real binary.

use crate::util::*;

/// `cnn:p-10` (pooling, no convolution) passed the spec parser, then the
/// forward pass panicked in a dfdx matmul and the printed PyTorch module
/// lacked its `nn.Flatten`.
#[test]
fn pooling_only_cnn_trains_and_prints_its_flatten() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["model", "info", "cnn:p-10"]);
    assert!(
        out.contains("nn.MaxPool2d(2), nn.Flatten(), nn.Linear(196, 10)"),
        "{out}"
    );
    let run = dir.path().join("run");
    let (data, out_dir) = (s(&small_data()), s(&run));
    ok(
        dir.path(),
        &train_args(&data, "cnn:p-10", &out_dir, &["--epochs", "1", "-q"]),
    );
    assert_eq!(model_card(&run)["spec"], "cnn:p-10");
    fails(
        dir.path(),
        &["model", "info", "cnn:p-p-p-p-p-10"],
        &["cnn:p-p-p-p-p-10", "leaves nothing"],
    );
}

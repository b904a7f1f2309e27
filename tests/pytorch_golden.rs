//! distill against PyTorch's own numbers for the `model.py` it writes:
//! `scripts/pytorch_golden.py` executed the committed
//! `tests/golden/pytorch/NAME/model.py` (which distill must still write
//! byte for byte), gave the module seeded random weights (batch norms:
//! random affine parameters, running statistics and step count), and
//! recorded, for a batch of 4 inputs, the logits in eval mode and, for the
//! ResNet, in train mode (batch statistics) with every buffer after that
//! step. distill loads PyTorch's file (`strict` on both sides: the same
//! names and shapes) and must agree within 1e-4. Nothing here runs PyTorch.

use std::fs;
use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use distill::data::Normalization;
use distill::model::io::{load_weights, read_safetensors, HostTensor};
use distill::model::{pytorch, ModelSpec};

/// (directory, spec, normalisation) of each golden model, as the script has
/// them.
const MODELS: &[(&str, &str, Option<&str>)] = &[
    ("mlp", "mlp:12-8-5", None),
    (
        "cnn",
        "cnn:i3x8x6-c4-p-c6-f7-5",
        Some("0.5,0.4,0.3/0.25,0.2,0.1"),
    ),
    (
        "resnet8",
        "resnet:i3x12x12-8x1-16x1-32x1-10",
        Some("0.45,0.5,0.55/0.2,0.25,0.3"),
    ),
];

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/pytorch")
        .join(name)
}

fn tensor<'a>(tensors: &'a [HostTensor], name: &str) -> &'a HostTensor {
    tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn model_py_is_what_pytorch_ran() {
    for (name, spec, norm) in MODELS {
        let spec = ModelSpec::parse(spec).unwrap();
        let norm: Option<Normalization> = norm.map(|n| n.parse().unwrap());
        let text = pytorch::module_file(&spec, norm.as_ref());
        let file = dir(name).join("model.py");
        if std::env::var_os("DISTILL_BLESS").is_some() {
            fs::create_dir_all(dir(name)).unwrap();
            fs::write(&file, &text).unwrap();
        }
        assert_eq!(
            fs::read_to_string(&file).unwrap(),
            text,
            "{name}: distill's model.py changed; rerun scripts/pytorch_golden.py (see its docstring)"
        );
    }
}

#[test]
fn logits_equal_pytorch_in_eval_and_train_mode() {
    let dev = Cpu::default();
    for (name, spec, norm) in MODELS {
        let net = load_weights(&dir(name).join("model.safetensors"), None, dev.clone()).unwrap();
        assert_eq!(net.spec().as_str(), *spec);
        let norm: Option<Normalization> = norm.map(|n| n.parse().unwrap());
        assert_eq!(net.normalization(), norm.as_ref(), "{name}");
        let (_, golden) = read_safetensors(&dir(name).join("golden.safetensors")).unwrap();
        let x = tensor(&golden, "x");
        let batch = x.shape[0];
        let eval = net.predict(x.data.clone(), batch).as_vec();
        let diff = max_abs_diff(&eval, &tensor(&golden, "eval").data);
        assert!(diff <= 1e-4, "{name}: eval logits differ by {diff}");
        if !net.spec().has_buffers() {
            continue;
        }
        let input = dev.tensor_from_vec(x.data.clone(), (batch, net.spec().input_len()));
        let train = net.forward(input.traced(Gradients::leaky())).as_vec();
        let diff = max_abs_diff(&train, &tensor(&golden, "train").data);
        assert!(diff <= 1e-4, "{name}: train-mode logits differ by {diff}");
        for b in net.buffers() {
            let want = tensor(&golden, &format!("after.{}", b.name));
            let diff = max_abs_diff(&b.get(), &want.data);
            assert!(diff <= 1e-4, "{name}: buffer {} differs by {diff}", b.name);
        }
    }
}

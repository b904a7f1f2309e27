//! distill against PyTorch, with PyTorch's numbers committed: nothing here
//! runs PyTorch. `scripts/torch_reference.py` made every reference value
//! (the command is in its docstring); the files it wrote are under
//! `tests/golden/torch/`, and the optimizer values it printed are the
//! constants below, beside the code that made them.
//!
//! - The module `distill model info` prints has exactly the `state_dict`
//!   keys and shapes of the weights files distill writes, so the README's
//!   `model.load_state_dict(safetensors.torch.load_file("model.safetensors"))`
//!   loads strictly (checked here by reading the printed Python as PyTorch
//!   names parameters, and once for real by the script, strict=True).
//! - A CNN whose weights and logits PyTorch produced: distill loads the
//!   PyTorch-written file and predicts PyTorch's logits. This pins the conv
//!   layout and the flatten permutation of the first dense layer (channel,
//!   height, width in PyTorch; channels-last inside distill) to known
//!   values, which a save/load round trip cannot (any bijection passes one).
//! - The committed teacher's logits equal PyTorch's for the same file.
//! - AdamW, Adam with L2, SGD with momentum and the cosine schedule follow
//!   `torch.optim` step for step.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use dfdx::prelude::*;
use distill::data::{Dataset, Split};
use distill::model::io::{load_weights, read_safetensors, save_weights, HostTensor};
use distill::model::{ModelSpec, Network};
use distill::train::optim::{Optimizer, OptimizerConfig, OptimizerKind, Schedule};
use serde_json::Value;

use crate::util::*;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/torch")
        .join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&fs::read_to_string(golden(name)).unwrap()).unwrap()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The `pytorch: ` line of `distill model info SPEC`.
fn printed_module(spec: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(dir.path(), &["model", "info", spec]);
    out.lines()
        .find_map(|l| l.strip_prefix("pytorch: "))
        .unwrap_or_else(|| panic!("no pytorch line:\n{out}"))
        .to_string()
}

/// Splits `s` at commas outside parentheses.
fn top_level_args(s: &str) -> Vec<&str> {
    let (mut depth, mut start, mut out) = (0i32, 0, Vec::new());
    for (i, ch) in s.char_indices() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(s[start..i].trim());
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(s[start..].trim());
    out
}

/// The `state_dict` PyTorch gives the printed module, as name -> shape:
/// reads `model = nn.Sequential(OrderedDict(NAME=nn.Sequential(M0, M1, ...)))`
/// (or a bare `x = nn.Sequential(M0, ...)`) and names parameters as
/// `nn.Module.state_dict` does: the child's name if any, the index in the
/// inner `nn.Sequential` (every module takes one, ReLU, pooling and flatten
/// too), then `weight`/`bias`.
fn torch_state_dict(code: &str) -> BTreeMap<String, Vec<usize>> {
    // `NAME = nn.Sequential(M0, ...)` (the form before the fix) gives keys
    // without a child name, so a return to it fails on the keys.
    let (prefix, inner) = match code
        .strip_prefix("model = nn.Sequential(OrderedDict(")
        .and_then(|r| r.strip_suffix(")))"))
    {
        Some(rest) => {
            let (child, inner) = rest.split_once('=').unwrap();
            (format!("{child}."), inner)
        }
        None => {
            let rhs = code.split_once(" = ").map(|(_, r)| r);
            let inner = rhs.and_then(|r| r.strip_suffix(')'));
            (
                String::new(),
                inner.unwrap_or_else(|| panic!("unexpected module form: {code}")),
            )
        }
    };
    let inner = inner
        .strip_prefix("nn.Sequential(")
        .unwrap_or_else(|| panic!("unexpected module form: {code}"));
    let mut keys = BTreeMap::new();
    for (i, module) in top_level_args(inner).into_iter().enumerate() {
        let (name, args) = module.split_once('(').unwrap();
        let args: Vec<&str> = top_level_args(args.strip_suffix(')').unwrap());
        let num = |k: usize| -> usize { args[k].parse().unwrap() };
        let params = match name {
            "nn.Linear" => Some((vec![num(1), num(0)], num(1))),
            "nn.Conv2d" => {
                assert_eq!(args[2..], ["3", "padding=1"], "{module}");
                Some((vec![num(1), num(0), 3, 3], num(1)))
            }
            "nn.ReLU" | "nn.MaxPool2d" | "nn.Flatten" => None,
            other => panic!("unknown module {other} in {code}"),
        };
        if let Some((w, b)) = params {
            keys.insert(format!("{prefix}{i}.weight"), w);
            keys.insert(format!("{prefix}{i}.bias"), vec![b]);
        }
    }
    keys
}

fn file_keys(tensors: &[HostTensor]) -> BTreeMap<String, Vec<usize>> {
    tensors
        .iter()
        .map(|t| (t.name.clone(), t.shape.clone()))
        .collect()
}

/// The printed module's `state_dict` keys and shapes are exactly the
/// weights file's, for both families, odd shapes, and the committed
/// teachers; and the README's snippet uses the printed name.
#[test]
fn printed_pytorch_module_has_the_weights_files_keys() {
    let tmp = tempfile::tempdir().unwrap();
    for spec in [
        "mlp:784-128-10",
        "mlp:784-1200-1200-10",
        "cnn:c32-p-c64-p-f128-10",
        "cnn:i2x4x6-c3-p-f4-5",
        "cnn:i3x15x15-c8-p-p-4",
        "cnn:c4-c4-10",
    ] {
        let code = printed_module(spec);
        let path = tmp.path().join("model.safetensors");
        save_weights(
            &Network::new(ModelSpec::parse(spec).unwrap(), Cpu::default(), 0),
            &path,
        )
        .unwrap();
        let (_, tensors) = read_safetensors(&path).unwrap();
        assert_eq!(
            torch_state_dict(&code),
            file_keys(&tensors),
            "{spec}: {code}"
        );
    }
    let teachers = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/teachers");
    for t in [
        "fashion-cnn",
        "fashion-cnn-long",
        "fashion-cnn-long-val",
        "fashion-cnn-aug",
    ] {
        let (meta, tensors) =
            read_safetensors(&teachers.join(t).join("model.safetensors")).unwrap();
        let code = printed_module(&meta["distill.spec"]);
        assert_eq!(torch_state_dict(&code), file_keys(&tensors), "{t}: {code}");
    }
    // The README's instructions, as written, use what `model info` prints.
    let readme =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for line in [
        "from collections import OrderedDict",
        "from torch import nn",
        "model.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"))",
    ] {
        assert!(readme.contains(line), "README.md lacks `{line}`");
    }
    assert!(printed_module("mlp:784-10").starts_with("model = "));
}

/// A CNN with a non-square input whose weights PyTorch wrote (its own
/// `state_dict` names) and whose logits PyTorch computed: distill loads the
/// file and gives the same logits. A wrong conv layout or flatten order
/// (e.g. h and w swapped, or channels-last kept) changes them.
#[test]
fn pytorch_written_cnn_gives_pytorchs_logits() {
    let r = json("tiny-cnn.json");
    let spec = r["spec"].as_str().unwrap();
    assert_eq!(
        r["pytorch"].as_str().unwrap(),
        printed_module(spec),
        "model info prints another module than the one the reference was made with: rerun scripts/torch_reference.py"
    );
    let net = load_weights(&golden("tiny-cnn.safetensors"), None, Cpu::default()).unwrap();
    assert_eq!(net.spec().as_str(), spec);
    let batch = r["batch"].as_u64().unwrap() as usize;
    let got = net.predict(floats(&r["inputs"]), batch).as_vec();
    let want = floats(&r["logits"]);
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
            "logit {k}: {g} vs PyTorch {w}"
        );
    }
    // The file's names are the printed module's, as PyTorch saved them.
    let (_, tensors) = read_safetensors(&golden("tiny-cnn.safetensors")).unwrap();
    assert_eq!(
        torch_state_dict(r["pytorch"].as_str().unwrap()),
        file_keys(&tensors)
    );
}

/// The committed teacher, loaded into the printed module with
/// `load_state_dict(strict=True)` in PyTorch, gives the logits distill gives.
#[test]
fn committed_teacher_gives_pytorchs_logits() {
    let r = json("teacher-logits.json");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(r["model"].as_str().unwrap());
    let net = load_weights(&dir.join("model.safetensors"), None, Cpu::default()).unwrap();
    assert_eq!(r["pytorch"].as_str().unwrap(), net.spec().torch_code());
    let test = Dataset::open(&small_data(), Split::Test).unwrap();
    let idx: Vec<usize> = r["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as usize)
        .collect();
    let mut x = vec![0f32; idx.len() * test.sample_len()];
    test.fill_inputs(&idx, &mut x);
    let got = net.predict(x, idx.len()).as_vec();
    let want = floats(&r["logits"]);
    assert_eq!(got.len(), want.len());
    for (k, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-4 * (1.0 + w.abs()),
            "logit {k}: {g} vs PyTorch {w}"
        );
    }
}

// ---- optimizers and schedule ----
//
// From scripts/torch_reference.py (`optimizers()`): a Linear(3, 2) with
//   W0 = [[0.5, -0.25, 0.75], [-0.5, 1.0, 0.25]], b0 = [0.125, -0.25],
// five steps on loss = mean((W x + b)^2) over a 4x3 batch
//   x[i][j] = ((3*i + j + step) % 5) * 0.25 - 0.5,
// weights then bias after the fifth step, for
//   AdamW(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1) + CosineAnnealingLR(T_max=5)
//   Adam(lr=0.1, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1), constant
//   SGD(lr=0.1, momentum=0.9, dampening=0, nesterov=False, weight_decay=0.01) + CosineAnnealingLR(T_max=5)
// (scheduler.step() after each optimizer.step()), and the learning rate
// of each of 10 steps under CosineAnnealingLR(SGD(lr=0.1), T_max=10).
// torch 2.15.0:
const ADAMW_COSINE: [f32; 8] = [
    0.23207754,
    -0.034671966,
    0.43542093,
    -0.22777379,
    0.68461984,
    -0.023345746,
    -0.07304364,
    0.0026215313,
];
const ADAM_L2_CONSTANT: [f32; 8] = [
    0.066751204,
    0.09901412,
    0.25115708,
    -0.071649306,
    0.51526266,
    -0.1420079,
    -0.04393464,
    0.08738039,
];
const SGD_MOMENTUM_COSINE: [f32; 8] = [
    0.48642084,
    -0.22717951,
    0.71692944,
    -0.45031467,
    0.9162355,
    0.21191025,
    0.06131592,
    -0.102468446,
];
const COSINE_LR_10: [f64; 10] = [
    0.1,
    0.09755282581475769,
    0.09045084971874738,
    0.07938926261462367,
    0.06545084971874739,
    0.05000000000000001,
    0.03454915028125264,
    0.020610737385376353,
    0.009549150281252635,
    0.002447174185242324,
];

fn run_optimizer(
    kind: OptimizerKind,
    weight_decay: f64,
    momentum: f64,
    schedule: Schedule,
) -> Vec<f32> {
    let dev = Cpu::default();
    let mut net = Network::new(ModelSpec::parse("mlp:3-2").unwrap(), dev.clone(), 0);
    let init = vec![
        HostTensor {
            name: "layers.0.weight".into(),
            shape: vec![2, 3],
            data: vec![0.5, -0.25, 0.75, -0.5, 1.0, 0.25],
        },
        HostTensor {
            name: "layers.0.bias".into(),
            shape: vec![2],
            data: vec![0.125, -0.25],
        },
    ];
    net.load_host(&init, Path::new("init")).unwrap();
    let cfg = OptimizerConfig {
        kind,
        lr: 0.1,
        weight_decay,
        momentum,
        schedule,
    };
    let steps = 5;
    let mut opt = Optimizer::new(cfg, steps);
    for step in 0..steps as usize {
        let x: Vec<f32> = (0..4)
            .flat_map(|i| (0..3).map(move |j| ((3 * i + j + step) % 5) as f32 * 0.25 - 0.5))
            .collect();
        let x = dev.tensor_from_vec(x, (4, 3));
        let loss = net
            .forward(x.traced(Gradients::leaky()))
            .square()
            .mean::<Rank0, _>();
        let mut grads = loss.backward();
        opt.update(&mut net, &mut grads).unwrap();
    }
    net.to_host().into_iter().flat_map(|t| t.data).collect()
}

/// The values of `got` farther from `want` than f32 rounding allows.
fn mismatches(got: &[f32], want: &[f32], what: &str) -> Vec<String> {
    assert_eq!(got.len(), want.len(), "{what}");
    got.iter()
        .zip(want)
        .enumerate()
        .filter(|(_, (g, w))| (*g - *w).abs() > 2e-6 * (1.0 + w.abs()))
        .map(|(k, (g, w))| format!("{what}: value {k}: {g} vs torch {w}"))
        .collect()
}

#[test]
fn optimizers_follow_torch_optim_step_for_step() {
    // Every case is checked before failing, so a failure names all that differ.
    let bad: Vec<String> = [
        mismatches(
            &run_optimizer(OptimizerKind::AdamW, 0.1, 0.0, Schedule::Cosine),
            &ADAMW_COSINE,
            "AdamW + cosine",
        ),
        mismatches(
            &run_optimizer(OptimizerKind::Adam, 0.1, 0.0, Schedule::Constant),
            &ADAM_L2_CONSTANT,
            "Adam + L2",
        ),
        mismatches(
            &run_optimizer(OptimizerKind::Sgd, 0.01, 0.9, Schedule::Cosine),
            &SGD_MOMENTUM_COSINE,
            "SGD momentum + cosine",
        ),
    ]
    .concat();
    assert!(bad.is_empty(), "{bad:#?}");
}

#[test]
fn cosine_schedule_matches_cosine_annealing_lr() {
    let cfg = OptimizerConfig {
        kind: OptimizerKind::Sgd,
        lr: 0.1,
        weight_decay: 0.0,
        momentum: 0.0,
        schedule: Schedule::Cosine,
    };
    for (step, want) in COSINE_LR_10.iter().enumerate() {
        let got = cfg.lr_at(step as u64, 10);
        assert!(
            (got - want).abs() < 1e-12,
            "step {step}: {got} vs torch {want}"
        );
    }
}

// Logit-standardised KD (`--logit-standardize --soft-scale 9`), by
// `logit_standardized_kd()` of the script, in float64:
//   s = [[1, 2, 0.5], [0.1, -1, 2]], y = [1, 2], teacher logits
//   z = [[0.5, 3, 0], [0, 0, 4]], T = 2, alpha = 0.3, scale = 9,
//   std(x) = (x - x.mean(1)) / sqrt(x.var(1, unbiased=False) + 1e-7)
//   loss = alpha * cross_entropy(s, y) + (1 - alpha) * scale * T * T
//          * kl_div(log_softmax(std(s) / T), log_softmax(std(z) / T), batchmean)
// torch 2.15.0:
const LSKD_LOSS: [f32; 1] = [0.2711191];
const LSKD_GRAD: [f32; 6] = [
    0.32888648,
    -0.15378788,
    -0.1750986,
    0.31698018,
    -0.18268019,
    -0.13430001,
];

#[test]
fn logit_standardized_kd_matches_pytorch() {
    use distill::train::loss::{loss, LossConfig, LossKind, Targets};
    let dev = Cpu::seed_from_u64(0);
    let s = [1.0f32, 2.0, 0.5, 0.1, -1.0, 2.0];
    let z = [0.5f32, 3.0, 0.0, 0.0, 0.0, 4.0];
    let labels = [1u32, 2];
    let cfg = LossConfig {
        logit_standardize: true,
        soft_scale: 9.0,
        ..LossConfig::new(LossKind::Kd, 0.3, 2.0)
    };
    // The teacher arrives as a cache holds it: log-probabilities at the
    // cache's temperature (4 here, not the loss's 2), which standardising
    // makes irrelevant.
    let lp: Vec<f32> = z
        .chunks(3)
        .flat_map(|row| {
            let lse = row.iter().map(|v| (v / 4.0).exp()).sum::<f32>().ln();
            row.iter().map(move |v| v / 4.0 - lse).collect::<Vec<_>>()
        })
        .collect();
    let targets = Targets {
        classes: 3,
        labels: Some(&labels),
        teacher_logprobs: Some(&lp),
    };
    let logits = dev.tensor_from_vec(s.to_vec(), (2, 3));
    let l = loss(&cfg, logits.leaky_trace(), &targets).unwrap();
    let got = l.array();
    assert!(
        (got - LSKD_LOSS[0]).abs() < 1e-5,
        "loss {got} vs torch {}",
        LSKD_LOSS[0]
    );
    let grads = l.backward();
    let g = grads.get(&logits).as_vec();
    let bad = mismatches(&g, &LSKD_GRAD, "gradient");
    assert!(bad.is_empty(), "{bad:#?}");
}

// DIST (`--loss dist`), by `dist_loss()` of the script, in float64:
//   s = [[1, 2, 0.5], [0.1, -1, 2], [0.3, 0.3, -0.7]], y = [1, 2, 0],
//   teacher logits z = [[0.5, 3, 0], [0, 0, 4], [1, -1, 0.5]], T = 2, alpha = 0.3,
//   pearson(a, b) = cosine of the row-centred rows (eps 1e-8 on the norms' product)
//   loss = alpha * cross_entropy(s, y) + (1 - alpha) * T * T
//          * ((1 - pearson(q, p).mean()) + (1 - pearson(q.t(), p.t()).mean()))
//   with q = softmax(s / T), p = softmax(z / T)
// torch 2.15.0:
const DIST_LOSS: [f32; 1] = [1.5305783];
const DIST_GRAD: [f32; 9] = [
    0.29678324,
    -0.34819844,
    0.05141521,
    0.009169039,
    -0.038231555,
    0.029062515,
    -1.2172078,
    1.3258084,
    -0.108600624,
];

#[test]
fn dist_matches_pytorch() {
    use distill::train::loss::{loss, LossConfig, LossKind, Targets};
    let dev = Cpu::seed_from_u64(0);
    let s = [1.0f32, 2.0, 0.5, 0.1, -1.0, 2.0, 0.3, 0.3, -0.7];
    let z = [0.5f32, 3.0, 0.0, 0.0, 0.0, 4.0, 1.0, -1.0, 0.5];
    let labels = [1u32, 2, 0];
    let cfg = LossConfig::new(LossKind::Dist, 0.3, 2.0);
    // The teacher at the loss's temperature, as the loader hands it over.
    let lp: Vec<f32> = z
        .chunks(3)
        .flat_map(|row| {
            let lse = row.iter().map(|v| (v / 2.0).exp()).sum::<f32>().ln();
            row.iter().map(move |v| v / 2.0 - lse).collect::<Vec<_>>()
        })
        .collect();
    let targets = Targets {
        classes: 3,
        labels: Some(&labels),
        teacher_logprobs: Some(&lp),
    };
    let logits = dev.tensor_from_vec(s.to_vec(), (3, 3));
    let l = loss(&cfg, logits.leaky_trace(), &targets).unwrap();
    let got = l.array();
    assert!(
        (got - DIST_LOSS[0]).abs() < 1e-5,
        "loss {got} vs torch {}",
        DIST_LOSS[0]
    );
    let grads = l.backward();
    let g = grads.get(&logits).as_vec();
    let bad = mismatches(&g, &DIST_GRAD, "gradient");
    assert!(bad.is_empty(), "{bad:#?}");
}

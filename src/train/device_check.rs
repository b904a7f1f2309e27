//! A compute device checked against the CPU, op by op: what `make gpu-check`
//! runs on a GPU machine (`distill check-device --device cuda`).
//!
//! Every check feeds the same host inputs (fixed seeds) to the device under
//! test and to dfdx's CPU device, and compares outputs and gradients. On
//! CUDA each op below is one of distill's own kernels (src/model/cuda/):
//! - the 3x3 patch op (`im2col`, backward col2im) and 2x2 max-pool (argmax
//!   forward, scatter backward): forward, and the input gradient of
//!   `sum(op(x) * W)` for a random `W`;
//! - the convolution block (`conv3x3`: patches, cuBLAS matmul, the bias +
//!   ReLU (+ pool) epilogue), with and without its pool, including a
//!   one-channel input: forward, and the gradients of the input, weight and
//!   bias of `sum(op(x) * R)`;
//! - the dense layer (`linear`: cuBLAS matmul and the bias (+ ReLU)
//!   epilogue), with and without its ReLU: the same four comparisons;
//! - the fused KD loss (`kd_loss`) over a batch of logits, hard labels only,
//!   soft targets only, both, and mixed labels, at T 1 and 4: the loss and
//!   the logits' gradient;
//! - whole networks (an MLP and a CNN): logits, and every parameter's
//!   gradient of the distillation loss (alpha 0.5, T 4) against fixed labels
//!   and teacher log-probabilities.
//!
//! A check passes when `|device - cpu| <= tol * (1 + |cpu|)` everywhere. The
//! tolerances: 0 for values copied or selected (patches, pooled maxima),
//! 1e-5 for sums of a few terms in another order (col2im, the pool's
//! scatter, the KD loss's exp/log), 1e-4 where a matmul (cuBLAS against
//! gemm) sums hundreds of products in another order.

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use rand::{Rng, SeedableRng};

use super::loss::{loss, loss_mixed, LabelMix, LossConfig, LossKind, Targets};
use crate::error::Result;
use crate::model::conv::ConvOpts;
use crate::model::kernels::LinearOpts;
use crate::model::ops::{ImageGeom, Matrix};
use crate::model::{Backend, ModelSpec, Network, ParamValue};

/// One comparison of a device against the CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct OpCheck {
    /// What was compared, e.g. `im2col 2x3x5x4 grad`.
    pub what: String,
    /// The largest `|device - cpu| / (1 + |cpu|)`.
    pub max_rel_diff: f32,
    /// The largest difference allowed.
    pub tolerance: f32,
}

impl OpCheck {
    /// Whether the device agreed with the CPU within the tolerance.
    pub fn passed(&self) -> bool {
        self.max_rel_diff <= self.tolerance
    }

    fn new(what: String, device: &[f32], cpu: &[f32], tolerance: f32) -> OpCheck {
        let max_rel_diff = if device.len() != cpu.len() {
            f32::INFINITY
        } else {
            device
                .iter()
                .zip(cpu)
                .map(|(d, c)| {
                    let r = (d - c).abs() / (1.0 + c.abs());
                    if r.is_nan() {
                        f32::INFINITY
                    } else {
                        r
                    }
                })
                .fold(0.0, f32::max)
        };
        OpCheck {
            what,
            max_rel_diff,
            tolerance,
        }
    }
}

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect()
}

/// Output and input gradient of one image op on `dev`, from host inputs.
fn image_op<D: Backend>(
    dev: &D,
    pool: bool,
    g: ImageGeom,
    x: &[f32],
    w: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let xt: Matrix<D> = dev.tensor_from_vec(x.to_vec(), (g.rows(), g.channels));
    let apply = |t: Matrix<D, OwnedTape<f32, D>>| {
        if pool {
            dev.max_pool2(t, g)
        } else {
            dev.im2col(t, g)
        }
    };
    let out = apply(xt.leaky_trace());
    let shape = *out.shape();
    let values = out.retaped::<NoneTape>().as_vec();
    let wt: Matrix<D> = dev.tensor_from_vec(w[..shape.0 * shape.1].to_vec(), shape);
    let grads = (apply(xt.leaky_trace()) * wt).sum::<Rank0, _>().backward();
    (values, grads.get(&xt).as_vec())
}

/// Output and the gradients (input, weight, bias) of the convolution block
/// on `dev`, from host inputs, with `o` output channels.
fn conv_op<D: Backend>(dev: &D, pool: bool, g: ImageGeom, o: usize) -> [Vec<f32>; 4] {
    let x: Matrix<D> =
        dev.tensor_from_vec(random(g.rows() * g.channels, 5), (g.rows(), g.channels));
    let w: Matrix<D> = dev.tensor_from_vec(random(o * 9 * g.channels, 6), (o, 9 * g.channels));
    let b = dev.tensor_from_vec(random(o, 7), (o,));
    let opts = ConvOpts {
        pool,
        input_grad: true,
    };
    let out = dev.conv3x3(x.leaky_trace(), &w, &b, g, opts);
    let shape = *out.shape();
    let values = out.retaped::<NoneTape>().as_vec();
    let r: Matrix<D> = dev.tensor_from_vec(random(shape.0 * shape.1, 8), shape);
    let grads = (dev.conv3x3(x.leaky_trace(), &w, &b, g, opts) * r)
        .sum::<Rank0, _>()
        .backward();
    [
        values,
        grads.get(&x).as_vec(),
        grads.get(&w).as_vec(),
        grads.get(&b).as_vec(),
    ]
}

/// Output and the gradients (input, weight, bias) of the dense layer on
/// `dev` for a `(batch, inputs)` input and `outputs` units.
fn linear_op<D: Backend>(
    dev: &D,
    relu: bool,
    (batch, inputs, outputs): (usize, usize, usize),
) -> [Vec<f32>; 4] {
    let x: Matrix<D> = dev.tensor_from_vec(random(batch * inputs, 11), (batch, inputs));
    let w: Matrix<D> = dev.tensor_from_vec(random(outputs * inputs, 12), (outputs, inputs));
    let b = dev.tensor_from_vec(random(outputs, 13), (outputs,));
    let opts = LinearOpts {
        relu,
        input_grad: true,
    };
    let out = dev.linear(x.leaky_trace(), &w, &b, opts);
    let shape = *out.shape();
    let values = out.retaped::<NoneTape>().as_vec();
    let r: Matrix<D> = dev.tensor_from_vec(random(shape.0 * shape.1, 14), shape);
    let grads = (dev.linear(x.leaky_trace(), &w, &b, opts) * r)
        .sum::<Rank0, _>()
        .backward();
    [
        values,
        grads.get(&x).as_vec(),
        grads.get(&w).as_vec(),
        grads.get(&b).as_vec(),
    ]
}

/// The KD loss and the gradient of the logits on `dev` for fixed logits and
/// targets, with `mix` mixing the hard labels.
fn kd_op<D: Backend>(
    dev: &D,
    cfg: &LossConfig,
    logits: &[f32],
    targets: &Targets<'_>,
    mix: Option<&LabelMix>,
) -> Result<[Vec<f32>; 2]> {
    let batch = logits.len() / targets.classes;
    let s: Matrix<D> = dev.tensor_from_vec(logits.to_vec(), (batch, targets.classes));
    let l = loss_mixed(cfg, s.leaky_trace(), targets, mix)?;
    let value = l.retaped::<NoneTape>().as_vec();
    let grads = l.backward();
    Ok([value, grads.get(&s).as_vec()])
}

/// The KD loss checks: every combination of terms, two temperatures, and
/// mixed labels, on a batch of 37 rows (not a multiple of a warp).
fn kd_checks<D: Backend>(dev: &D, cpu: &Cpu, checks: &mut Vec<OpCheck>) -> Result<()> {
    let (batch, classes) = (37, 10);
    // Logits spread over [-8, 8], so the softmax is far from uniform.
    let logits: Vec<f32> = random(batch * classes, 21)
        .iter()
        .map(|v| 8.0 * v)
        .collect();
    let labels: Vec<u32> = (0..batch as u32)
        .map(|i| (i * 7) % classes as u32)
        .collect();
    let mut teacher = vec![0f32; batch * classes];
    let raw: Vec<f32> = random(batch * classes, 22)
        .iter()
        .map(|v| 4.0 * v)
        .collect();
    crate::numeric::log_softmax_tempered(&raw, classes, 1.0, &mut teacher)
        .map_err(crate::cache::CacheError::from)?;
    let targets = Targets {
        classes,
        labels: Some(&labels),
        teacher_logprobs: Some(&teacher),
    };
    let mix = LabelMix {
        partner_labels: labels.iter().rev().copied().collect(),
        lambdas: (0..batch)
            .map(|i| (i as f32 + 0.5) / batch as f32)
            .collect(),
    };
    let cases = [
        (1.0, 1.0, false),
        (0.0, 1.0, false),
        (0.0, 4.0, false),
        (0.5, 4.0, false),
        (0.3, 2.0, true),
    ];
    for (alpha, t, mixed) in cases {
        let cfg = LossConfig::new(LossKind::Kd, alpha, t);
        let mix = mixed.then_some(&mix);
        let device = kd_op(dev, &cfg, &logits, &targets, mix)?;
        let host = kd_op(cpu, &cfg, &logits, &targets, mix)?;
        let name = format!(
            "kd_loss alpha {alpha} T {t}{} {batch}x{classes}",
            if mixed { " mixed" } else { "" }
        );
        for (part, (d, c)) in ["loss", "grad"].iter().zip(device.iter().zip(&host)) {
            checks.push(OpCheck::new(format!("{name} {part}"), d, c, 1e-5));
        }
    }
    Ok(())
}

/// Logits and parameter gradients of `spec` (weights from `seed`) on a batch.
fn network_pass<D: Backend>(
    dev: &D,
    spec: &ModelSpec,
    inputs: &[f32],
    batch: usize,
    targets: &Targets<'_>,
) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
    let net = Network::new(spec.clone(), dev.clone(), 7);
    let x: Matrix<D> = dev.tensor_from_vec(inputs.to_vec(), (batch, spec.input_len()));
    let logits = net.forward(x.clone()).as_vec();
    let cfg = LossConfig::new(LossKind::Kd, 0.5, 4.0);
    let l = loss(&cfg, net.forward(x.traced(Gradients::leaky())), targets)?;
    let grads = l.backward();
    let per_param = net
        .params()
        .iter()
        .map(|p| match &p.value {
            ParamValue::Matrix(t) => grads.get(t).as_vec(),
            ParamValue::Vector(t) => grads.get(t).as_vec(),
        })
        .collect();
    Ok((logits, per_param))
}

/// Runs every check on `dev` against the CPU.
pub fn check_device<D: Backend>(dev: &D) -> Result<Vec<OpCheck>> {
    let cpu = Cpu::default();
    let mut checks = Vec::new();
    let geoms = [
        ImageGeom {
            batch: 2,
            channels: 3,
            height: 5,
            width: 4,
        },
        ImageGeom {
            batch: 4,
            channels: 16,
            height: 14,
            width: 14,
        },
    ];
    for g in geoms {
        let x = random(g.rows() * g.channels, 1);
        let w = random(g.rows() * 9 * g.channels, 2);
        for (pool, name) in [(false, "im2col"), (true, "max_pool2")] {
            let (dv, dg) = image_op(dev, pool, g, &x, &w);
            let (cv, cg) = image_op(&cpu, pool, g, &x, &w);
            let shape = format!("{}x{}x{}x{}", g.batch, g.channels, g.height, g.width);
            checks.push(OpCheck::new(format!("{name} {shape} out"), &dv, &cv, 0.0));
            checks.push(OpCheck::new(format!("{name} {shape} grad"), &dg, &cg, 1e-5));
        }
    }
    // The first layer of a Fashion-MNIST CNN (one channel) and two others.
    let first = ImageGeom {
        batch: 2,
        channels: 1,
        height: 28,
        width: 28,
    };
    for (g, o) in [(geoms[0], 8), (geoms[1], 8), (first, 16)] {
        for pool in [false, true] {
            let name = if pool { "conv3x3+pool" } else { "conv3x3" };
            let shape = format!("{}x{}x{}x{}->{o}", g.batch, g.channels, g.height, g.width);
            let device = conv_op(dev, pool, g, o);
            let host = conv_op(&cpu, pool, g, o);
            for (part, (d, c)) in ["out", "grad x", "grad w", "grad b"]
                .iter()
                .zip(device.iter().zip(&host))
            {
                checks.push(OpCheck::new(format!("{name} {shape} {part}"), d, c, 1e-4));
            }
        }
    }
    for shape in [(16, 784, 128), (33, 70, 10)] {
        for relu in [true, false] {
            let name = format!(
                "linear{} {}x{}->{}",
                if relu { "+relu" } else { "" },
                shape.0,
                shape.1,
                shape.2
            );
            let device = linear_op(dev, relu, shape);
            let host = linear_op(&cpu, relu, shape);
            for (part, (d, c)) in ["out", "grad x", "grad w", "grad b"]
                .iter()
                .zip(device.iter().zip(&host))
            {
                checks.push(OpCheck::new(format!("{name} {part}"), d, c, 1e-4));
            }
        }
    }
    kd_checks(dev, &cpu, &mut checks)?;
    let batch = 16;
    // The residual net covers the other convolution forms (stride 2, 1x1
    // projections, no bias) and batch norm with its residual add.
    for text in ["mlp:784-128-10", "cnn:c8-p-c16-p-10", "resnet:8x1-16x1-10"] {
        let spec = ModelSpec::parse(text)?;
        let classes = spec.num_classes();
        let inputs: Vec<f32> = random(batch * spec.input_len(), 3)
            .into_iter()
            .map(|v| 0.5 + 0.5 * v)
            .collect();
        let labels: Vec<u32> = (0..batch as u32).map(|i| i % classes as u32).collect();
        let mut teacher = vec![0f32; batch * classes];
        crate::numeric::log_softmax_tempered(
            &random(batch * classes, 4),
            classes,
            1.0,
            &mut teacher,
        )
        .map_err(crate::cache::CacheError::from)?;
        let targets = Targets {
            classes,
            labels: Some(&labels),
            teacher_logprobs: Some(&teacher),
        };
        let (dl, dg) = network_pass(dev, &spec, &inputs, batch, &targets)?;
        let (cl, cg) = network_pass(&cpu, &spec, &inputs, batch, &targets)?;
        checks.push(OpCheck::new(format!("{text} logits"), &dl, &cl, 1e-4));
        for (i, (d, c)) in dg.iter().zip(&cg).enumerate() {
            checks.push(OpCheck::new(format!("{text} param {i} grad"), d, c, 1e-4));
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cpu_agrees_with_itself_and_a_wrong_value_is_caught() {
        let checks = check_device(&Cpu::default()).unwrap();
        // Patches and pool, conv blocks, dense layers, KD losses, networks.
        assert!(checks.len() >= 8 + 24 + 16 + 10 + 2 * 5, "{}", checks.len());
        for c in &checks {
            assert!(c.passed(), "{c:?}");
        }
        let off = OpCheck::new("x".into(), &[1.0, 2.01], &[1.0, 2.0], 1e-4);
        assert!(!off.passed());
        let nan = OpCheck::new("x".into(), &[f32::NAN], &[1.0], 1e-4);
        assert!(!nan.passed());
    }
}

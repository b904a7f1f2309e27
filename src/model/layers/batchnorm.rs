//! Batch norm over the channels of an image (PyTorch's `nn.BatchNorm2d`,
//! eps 1e-5, momentum 0.1), optionally followed by a ReLU.
//!
//! - Training (a forward pass on a tape): each channel is normalised with
//!   the batch's mean and biased variance over (batch, height, width); the
//!   running statistics move towards the batch's, `r = 0.9 r + 0.1 b`,
//!   with the unbiased variance (`n / (n - 1)` times the biased one) for
//!   `running_var`, and `num_batches_tracked` counts the steps, as PyTorch.
//! - Evaluation (no tape): the running statistics normalise.
//!
//! Parameters `weight` (1) and `bias` (0); buffers `running_mean` (0),
//! `running_var` (1) and `num_batches_tracked` (0, a scalar PyTorch keeps
//! as int64, written so by [`crate::model::io`]). The normalisation is one
//! op, [`Backend::batch_norm`] ([`crate::model::batchnorm_op`]: a fused
//! kernel on the CPU, dfdx's ops elsewhere), which can also add a residual
//! before the ReLU (the end of a residual block).

use dfdx::prelude::*;

use super::{product, BufferDecl, Ctx, Features, Init, Mode, ParamDecl};
use crate::model::batchnorm_op::BatchNormOpts;
use crate::model::network::ParamKind;
use crate::model::ops::{Backend, Matrix};

/// PyTorch's default `eps`.
pub use crate::model::batchnorm_op::EPS;
/// PyTorch's default `momentum`.
pub const MOMENTUM: f32 = 0.1;
/// The buffer PyTorch stores as int64.
pub const COUNTER: &str = "num_batches_tracked";

/// Batch norm over `channels` of a `height x width` image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchNorm {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub relu: bool,
}

impl BatchNorm {
    pub fn input(&self) -> Features {
        Features::Image {
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    pub fn output(&self) -> Features {
        self.input()
    }

    /// A scale and a shift per value (the running statistics fold into
    /// them at inference).
    pub fn checked_flops(&self) -> Option<u64> {
        product(&[2, self.channels, self.height, self.width])
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        let c = self.channels;
        vec![
            ParamDecl::plain("weight", ParamKind::Weight, vec![c], Init::Constant(1.0)),
            ParamDecl::plain("bias", ParamKind::Bias, vec![c], Init::Constant(0.0)),
        ]
    }

    pub fn buffers(&self) -> Vec<BufferDecl> {
        let c = self.channels;
        let buf = |name: &str, torch_shape: Vec<usize>, init: f32| BufferDecl {
            name: name.into(),
            torch_shape,
            init,
        };
        vec![
            buf("running_mean", vec![c], 0.0),
            buf("running_var", vec![c], 1.0),
            buf(COUNTER, vec![], 0.0),
        ]
    }

    /// The `nn.BatchNorm2d` alone (a residual block names it as a child).
    pub fn torch_module(&self) -> String {
        format!("nn.BatchNorm2d({})", self.channels)
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        let mut m = vec![self.torch_module()];
        if self.relu {
            m.push("nn.ReLU()".into());
        }
        (m, 0)
    }

    pub fn describe(&self) -> String {
        format!(
            "batchnorm {}ch @{}x{}{}",
            self.channels,
            self.height,
            self.width,
            if self.relu { " +relu" } else { "" }
        )
    }

    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        self.forward_with(x, ctx, None, self.relu)
    }

    /// `relu?(bn(x) + residual?)` in one op (a residual block's end), with
    /// `relu` in place of the layer's own flag. In training, the running
    /// statistics move towards the batch's.
    pub fn forward_with<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
        residual: Option<&Matrix<D>>,
        relu: bool,
    ) -> Matrix<D, T> {
        let rows = x.shape().0;
        let (gamma, beta) = (ctx.vector(0), ctx.vector(1));
        let running = match ctx.mode {
            Mode::Train => None,
            Mode::Eval => Some((ctx.buffers[0].get(), ctx.buffers[1].get())),
        };
        let opts = BatchNormOpts {
            running: running.as_ref().map(|(m, v)| (m.as_slice(), v.as_slice())),
            relu,
        };
        let (y, moments) = ctx.device.batch_norm(x, gamma, beta, residual, opts);
        if let Some(m) = moments {
            self.track(ctx, m.mean, m.var, rows);
        }
        y
    }

    /// The running statistics' update after a batch of `rows` values per
    /// channel with (biased) variance `var`.
    pub fn track<D: Backend>(&self, ctx: &Ctx<'_, D>, mean: Vec<f32>, var: Vec<f32>, rows: usize) {
        let unbias = if rows > 1 {
            rows as f32 / (rows - 1) as f32
        } else {
            1.0
        };
        let step = |old: Vec<f32>, new: &[f32], scale: f32| -> Vec<f32> {
            old.iter()
                .zip(new)
                .map(|(o, n)| (1.0 - MOMENTUM) * o + MOMENTUM * n * scale)
                .collect()
        };
        let [rm, rv, count] = &ctx.buffers[..3] else {
            return;
        };
        rm.set(step(rm.get(), &mean, 1.0));
        rv.set(step(rv.get(), &var, unbias));
        count.set(count.get().iter().map(|c| c + 1.0).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::network::{Buffer, Param, ParamValue};

    /// A batch norm's weight and bias as a network's store holds them.
    fn params(dev: &Cpu, gamma: &[f32], beta: &[f32]) -> Vec<Param<Cpu>> {
        [
            ("weight", gamma, ParamKind::Weight),
            ("bias", beta, ParamKind::Bias),
        ]
        .into_iter()
        .map(|(name, v, kind)| Param {
            name: name.into(),
            layer: 0,
            kind,
            layout: super::super::Layout::Plain,
            value: ParamValue::Vector(dev.tensor_from_vec(v.to_vec(), (v.len(),))),
            host: Default::default(),
        })
        .collect()
    }

    #[test]
    fn training_updates_running_statistics_as_pytorch() {
        // bn = nn.BatchNorm2d(2); bn.train(); bn(x) with x of 2 images of
        // 2x1x2: per channel mean m and biased var v over 4 values; then
        // running_mean = 0.1 m, running_var = 0.9 + 0.1 * v * 4/3.
        let dev = Cpu::default();
        let bn = BatchNorm {
            channels: 2,
            height: 1,
            width: 2,
            relu: false,
        };
        let params = &params(&dev, &[1.0, 1.0], &[0.0, 0.0]);
        let buffers: Vec<Buffer> = bn
            .buffers()
            .into_iter()
            .enumerate()
            .map(|(i, b)| Buffer::new(&b, "bn", i))
            .collect();
        // channels-last rows: (image, pixel) x channel
        let x = vec![1.0, 10.0, 3.0, 20.0, 5.0, 30.0, 7.0, 40.0];
        let ctx = Ctx {
            device: &dev,
            batch: 2,
            mode: Mode::Train,
            input_grad: true,
            params,
            buffers: &buffers,
            seed: 0,
        };
        let xt = dev.tensor_from_vec(x, (4, 2));
        let y = bn.forward(xt.traced(Gradients::leaky()), &ctx).as_vec();
        // channel 0: 1,3,5,7 mean 4 var 5; channel 1: 10..40 mean 25 var 125
        let want0: Vec<f32> = [1.0f32, 3.0, 5.0, 7.0]
            .iter()
            .map(|v| (v - 4.0) / (5.0f32 + EPS).sqrt())
            .collect();
        for (k, w) in want0.iter().enumerate() {
            assert!((y[2 * k] - w).abs() < 1e-5, "{y:?}");
        }
        let rm = buffers[0].get();
        let rv = buffers[1].get();
        assert!((rm[0] - 0.4).abs() < 1e-6 && (rm[1] - 2.5).abs() < 1e-6);
        assert!(
            (rv[0] - (0.9 + 0.1 * 5.0 * 4.0 / 3.0)).abs() < 1e-5,
            "{rv:?}"
        );
        assert!(
            (rv[1] - (0.9 + 0.1 * 125.0 * 4.0 / 3.0)).abs() < 1e-4,
            "{rv:?}"
        );
        assert_eq!(buffers[2].get(), vec![1.0]);
        // Evaluation reads the running statistics and leaves them alone.
        let ctx = Ctx {
            mode: Mode::Eval,
            ..ctx
        };
        let y = bn
            .forward(dev.tensor_from_vec(vec![0.4, 2.5], (1, 2)), &ctx)
            .as_vec();
        assert!(y.iter().all(|v| v.abs() < 1e-6), "{y:?}");
        assert_eq!(buffers[2].get(), vec![1.0]);
    }

    #[test]
    fn batch_norm_gradients_match_finite_differences() {
        let dev = Cpu::default();
        let bn = BatchNorm {
            channels: 3,
            height: 2,
            width: 2,
            relu: false,
        };
        let buffers: Vec<Buffer> = bn
            .buffers()
            .into_iter()
            .enumerate()
            .map(|(i, b)| Buffer::new(&b, "bn", i))
            .collect();
        let params = &params(&dev, &[0.5, 1.5, -2.0], &[0.1, 0.2, 0.3]);
        let x: Vec<f32> = (0..24).map(|i| ((i * 7) % 11) as f32 / 5.0 - 1.0).collect();
        let r: Vec<f32> = (0..24).map(|i| ((i * 5) % 7) as f32 / 3.0 - 1.0).collect();
        let loss = |x: &[f32]| -> (f32, Vec<f32>) {
            let ctx = Ctx {
                device: &dev,
                batch: 2,
                mode: Mode::Train,
                input_grad: true,
                params,
                buffers: &buffers,
                seed: 0,
            };
            let xt = dev.tensor_from_vec(x.to_vec(), (8, 3));
            let rt = dev.tensor_from_vec(r.clone(), (8, 3));
            let y = bn.forward(xt.clone().traced(Gradients::leaky()), &ctx);
            let l = (y * rt).sum::<Rank0, _>();
            let v = l.as_vec()[0];
            let g = l.backward();
            (v, g.get(&xt).as_vec())
        };
        let (_, grad) = loss(&x);
        for i in [0, 5, 13, 23] {
            let (mut a, mut b) = (x.clone(), x.clone());
            a[i] += 1e-2;
            b[i] -= 1e-2;
            let fd = (loss(&a).0 - loss(&b).0) / 2e-2;
            assert!((fd - grad[i]).abs() < 2e-2, "{i}: {fd} vs {}", grad[i]);
        }
    }
}

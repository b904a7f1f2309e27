//! The residual basic block of He et al. (2016), as in PyTorch's CIFAR
//! ResNets: `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, where
//! `conv1` is 3x3 with the block's stride (1, or 2 to halve the image),
//! `conv2` 3x3 with stride 1, both without bias, and the shortcut the
//! identity, or, where the stride or the channel count changes, a 1x1
//! convolution with the stride followed by a batch norm (the projection
//! shortcut).
//!
//! The block is a small graph: the main path and the shortcut both read
//! the block's input and are summed. Its PyTorch module is `BasicBlock`
//! (defined in the `model.py` written beside every model) with children
//! `conv1`, `bn1`, `conv2`, `bn2` and `shortcut` (an `nn.Sequential` of
//! the 1x1 convolution and its batch norm, empty for the identity), so its
//! tensors are `conv1.weight`, `bn1.running_mean`, `shortcut.0.weight`,
//! `shortcut.1.bias` and so on.

use dfdx::prelude::*;

use super::{BatchNorm, BufferDecl, Conv, Ctx, Features, Mode, ParamDecl};
use crate::model::block_op::{BlockGeom, BlockNorm, BlockParams};
use crate::model::ops::{Backend, Matrix};

/// The PyTorch class of the block, for `model.py`.
pub const TORCH_CLASS: &str = "\
class BasicBlock(nn.Module):
    def __init__(self, inp, out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out)
        self.conv2 = nn.Conv2d(out, out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out)
        self.shortcut = nn.Sequential()
        if stride != 1 or inp != out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(inp, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))
";

/// A basic block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BasicBlock {
    pub conv1: Conv,
    pub bn1: BatchNorm,
    pub conv2: Conv,
    pub bn2: BatchNorm,
    /// The projection; `None` is the identity.
    pub shortcut: Option<(Conv, BatchNorm)>,
}

impl BasicBlock {
    /// A block from `in_channels` to `out_channels` on `height x width`
    /// images, with `stride` 1 or 2.
    pub fn new(
        in_channels: usize,
        out_channels: usize,
        height: usize,
        width: usize,
        stride: usize,
    ) -> Self {
        let conv = |inp, h, w, kernel, stride| Conv {
            in_channels: inp,
            out_channels,
            height: h,
            width: w,
            kernel,
            stride,
            bias: false,
            relu: false,
        };
        let conv1 = conv(in_channels, height, width, 3, stride);
        let (ho, wo) = conv1.out_size();
        let bn = |relu| BatchNorm {
            channels: out_channels,
            height: ho,
            width: wo,
            relu,
        };
        let projection = stride != 1 || in_channels != out_channels;
        BasicBlock {
            conv1,
            bn1: bn(true),
            conv2: conv(out_channels, ho, wo, 3, 1),
            bn2: bn(false),
            shortcut: projection.then(|| (conv(in_channels, height, width, 1, stride), bn(false))),
        }
    }

    /// The block's input channels.
    pub fn in_channels(&self) -> usize {
        self.conv1.in_channels
    }

    /// The block's output channels.
    pub fn out_channels(&self) -> usize {
        self.conv1.out_channels
    }

    /// 1 or 2.
    pub fn stride(&self) -> usize {
        self.conv1.stride
    }

    pub fn input(&self) -> Features {
        self.conv1.input()
    }

    pub fn output(&self) -> Features {
        self.bn2.output()
    }

    pub fn checked_flops(&self) -> Option<u64> {
        let mut sum = self.conv1.checked_flops()?;
        for f in [
            self.bn1.checked_flops(),
            self.conv2.checked_flops(),
            self.bn2.checked_flops(),
            self.shortcut.map_or(Some(0), |(c, _)| c.checked_flops()),
            self.shortcut.map_or(Some(0), |(_, b)| b.checked_flops()),
            Some(self.bn2.output().len() as u64), // the sum
        ] {
            sum = sum.checked_add(f?)?;
        }
        Some(sum)
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        let mut out = Vec::new();
        let with = |v: Vec<ParamDecl>, prefix: &str| {
            v.into_iter()
                .map(|p| p.prefixed(prefix))
                .collect::<Vec<_>>()
        };
        out.extend(with(self.conv1.params(), "conv1"));
        out.extend(with(self.bn1.params(), "bn1"));
        out.extend(with(self.conv2.params(), "conv2"));
        out.extend(with(self.bn2.params(), "bn2"));
        if let Some((c, b)) = &self.shortcut {
            out.extend(with(c.params(), "shortcut.0"));
            out.extend(with(b.params(), "shortcut.1"));
        }
        out
    }

    pub fn buffers(&self) -> Vec<BufferDecl> {
        let with = |v: Vec<BufferDecl>, prefix: &str| {
            v.into_iter()
                .map(|b| b.prefixed(prefix))
                .collect::<Vec<_>>()
        };
        let mut out = with(self.bn1.buffers(), "bn1");
        out.extend(with(self.bn2.buffers(), "bn2"));
        if let Some((_, b)) = &self.shortcut {
            out.extend(with(b.buffers(), "shortcut.1"));
        }
        out
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        (
            vec![format!(
                "BasicBlock({}, {}, {})",
                self.in_channels(),
                self.out_channels(),
                self.stride()
            )],
            0,
        )
    }

    pub fn describe(&self) -> String {
        let (h, w) = self.conv1.out_size();
        format!(
            "block {}->{} @{}x{}{}{}",
            self.in_channels(),
            self.out_channels(),
            self.conv1.height,
            self.conv1.width,
            if self.stride() != 1 {
                format!(" s{} ->{h}x{w}", self.stride())
            } else {
                String::new()
            },
            if self.shortcut.is_some() {
                " +proj"
            } else {
                ""
            }
        )
    }

    /// The block as one op where the device has one ([`Backend::basic_block`],
    /// the CPU), else composed from the layer ops ([`Self::forward_composed`]);
    /// both give the same bits. In training, the running statistics move
    /// towards the batch's.
    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        #[cfg(test)]
        if tests::COMPOSED.with(|c| c.get()) {
            return self.forward_composed(x, ctx);
        }
        let running = |at: usize| match ctx.mode {
            Mode::Train => None,
            Mode::Eval => Some((ctx.buffers[at].get(), ctx.buffers[at + 1].get())),
        };
        let (r1, r2) = (running(0), running(3));
        let rs = self.shortcut.and_then(|_| running(6));
        let norm = |at, r| block_norm(ctx, at, r);
        let params = BlockParams {
            conv1: ctx.matrix(0),
            bn1: norm(1, &r1),
            conv2: ctx.matrix(3),
            bn2: norm(4, &r2),
            shortcut: self.shortcut.map(|_| (ctx.matrix(6), norm(7, &rs))),
        };
        let geom = BlockGeom {
            input: self.conv1.geom(ctx.batch),
            out_channels: self.out_channels(),
            stride: self.stride(),
            input_grad: ctx.input_grad,
        };
        match ctx.device.basic_block(x, &params, geom) {
            Ok((y, moments)) => {
                if let Some(m) = moments {
                    let rows = geom.output().rows();
                    self.bn1
                        .track(&ctx.sub(1..3, 0..3), m.bn1.mean, m.bn1.var, rows);
                    self.bn2
                        .track(&ctx.sub(4..6, 3..6), m.bn2.mean, m.bn2.var, rows);
                    if let (Some((_, bn)), Some(s)) = (&self.shortcut, m.shortcut) {
                        bn.track(&ctx.sub(7..9, 6..9), s.mean, s.var, rows);
                    }
                }
                y
            }
            Err(x) => self.forward_composed(x, ctx),
        }
    }

    /// Shortcut, then main path, on one tape, from the layer ops; the last
    /// batch norm adds the shortcut and applies the ReLU in the same op (the
    /// shortcut enters it untaped, its gradient flows by id).
    pub fn forward_composed<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        let (x, tape) = x.split_tape();
        let (shortcut, tape) = match &self.shortcut {
            None => (x.clone(), tape),
            Some((conv, bn)) => {
                let s = conv.forward(x.clone().put_tape(tape), &ctx.sub(6..7, 0..0));
                bn.forward(s, &ctx.sub(7..9, 6..9)).split_tape()
            }
        };
        let h = self.conv1.forward(x.put_tape(tape), &ctx.sub(0..1, 0..0));
        let h = self.bn1.forward(h, &ctx.sub(1..3, 0..3));
        let h = self
            .conv2
            .forward(h, &ctx.sub(3..4, 0..0).with_input_grad());
        self.bn2
            .forward_with(h, &ctx.sub(4..6, 3..6), Some(&shortcut), true)
    }
}

/// The batch norm whose parameters are `at` and `at + 1` of `ctx`, with the
/// running statistics `r` (evaluation).
fn block_norm<'a: 'b, 'b, D: Backend>(
    ctx: &Ctx<'a, D>,
    at: usize,
    r: &'b Option<(Vec<f32>, Vec<f32>)>,
) -> BlockNorm<'b, D> {
    BlockNorm {
        gamma: ctx.vector(at),
        beta: ctx.vector(at + 1),
        running: r.as_ref().map(|(m, v)| (m.as_slice(), v.as_slice())),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use crate::model::network::{Network, ParamValue};
    use crate::model::spec::ModelSpec;
    use dfdx::prelude::*;
    use std::cell::Cell;

    thread_local! {
        /// Set: blocks run composed from the layer ops, not as one op.
        pub(super) static COMPOSED: Cell<bool> = const { Cell::new(false) };
    }

    /// A training step of a small ResNet (stride-2 blocks, projections, the
    /// fused batch norms): logits, every parameter's gradient and every
    /// buffer after the step, then the logits in evaluation.
    fn step(threads: usize) -> Vec<Vec<f32>> {
        step_with(threads, false)
    }

    /// [`step`], with the blocks composed from the layer ops if `composed`.
    fn step_with(threads: usize, composed: bool) -> Vec<Vec<f32>> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("thread pool");
        pool.install(|| {
            COMPOSED.with(|c| c.set(composed));
            let spec = ModelSpec::parse("resnet:i2x12x10-4x2-8x1-16x1-3").unwrap();
            let dev = Cpu::seed_from_u64(0);
            let net = Network::new(spec.clone(), dev.clone(), 7);
            let batch = 20;
            let n = batch * spec.input_len();
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let x = dev.tensor_from_vec(x, (batch, spec.input_len()));
            let y = net.forward_mode(x.leaky_trace(), Mode::Train);
            let shape = *y.shape();
            let r: Vec<f32> = (0..shape.0 * shape.1)
                .map(|i| (i % 7) as f32 - 3.0)
                .collect();
            let r = dev.tensor_from_vec(r, shape);
            let (logits, tape) = y.split_tape();
            let grads = (logits.clone().put_tape(tape) * r)
                .sum::<Rank0, _>()
                .backward();
            let mut out = vec![logits.as_vec()];
            for p in net.params() {
                out.push(match &p.value {
                    ParamValue::Matrix(m) => grads.get(m).as_vec(),
                    ParamValue::Vector(v) => grads.get(v).as_vec(),
                });
            }
            out.extend(net.buffers().iter().map(|b| b.get()));
            out.push(net.forward_mode(x, Mode::Eval).as_vec());
            out
        })
    }

    #[test]
    fn the_block_op_gives_the_composed_ops_bits() {
        for threads in [1, 2] {
            let (fused, composed) = (step_with(threads, false), step_with(threads, true));
            assert_eq!(fused.len(), composed.len());
            for (i, (a, b)) in fused.iter().zip(&composed).enumerate() {
                let same =
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "{threads} threads, output {i}: {a:?} vs {b:?}");
            }
        }
    }

    #[test]
    fn a_resnet_training_step_is_the_same_for_any_thread_count() {
        let one = step(1);
        assert!(one.iter().flatten().all(|v| v.is_finite()));
        assert!(one[1..].iter().flatten().any(|v| *v != 0.0));
        assert_eq!(one, step(2));
        assert_eq!(one, step(3));
    }
}

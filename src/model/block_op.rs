//! A residual basic block as one op on the CPU:
//! `relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`, the shortcut the
//! identity or `bn_s(conv_s(x))` (see [`crate::model::layers::residual`]).
//!
//! Composed from the layer ops, a block hands five or six activations to
//! dfdx and each next op copies its input back out of dfdx's private
//! buffers (dfdx 0.13 lends no slice of a tensor), while dfdx zero-fills a
//! gradient buffer for each of them in the backward pass. On a fast matmul
//! those memory passes were a fifth of a ResNet-8 step. [`basic_block_cpu`]
//! runs the same kernels (`HostConv`, `HostNorm`) on its own pooled
//! buffers instead: the block's input is copied once, the intermediates
//! never enter dfdx, and only the block's output and its parameters'
//! gradients do.
//!
//! Results: the same arithmetic in the same order as the composed ops,
//! including the order in which the two paths' gradients are added into the
//! input's (the identity shortcut's first, then the main path's; with a
//! projection, the main path's first), so the outputs, gradients and running
//! statistics are bit-identical to the composed path's for any thread count
//! (the block's batch norms write their input gradients where the composed
//! ops add them to zero, which can differ only in the sign of a zero).

use dfdx::prelude::*;
use dfdx::tensor::Gradients;

use super::batchnorm_op::{add_f64, add_into, BatchNormOpts, HostNorm, Moments};
use super::conv::{ConvSpec, HostConv};
use super::kernels::{host_copy, HostBuf};
use super::ops::{ImageGeom, Matrix};

/// A vector parameter.
type Vector<D> = Tensor<(usize,), f32, D>;

/// Values per parallel chunk of the gradient additions.
const ADD_SPAN: usize = 16 * 1024;

/// A batch norm of the block: its parameters and, in evaluation, the running
/// statistics that normalise.
pub struct BlockNorm<'a, D: Storage<f32>> {
    pub gamma: &'a Vector<D>,
    pub beta: &'a Vector<D>,
    /// `None`: the batch's statistics (training).
    pub running: Option<(&'a [f32], &'a [f32])>,
}

/// A block's parameters.
pub struct BlockParams<'a, D: Storage<f32>> {
    /// `(out, 9 * in)`.
    pub conv1: &'a Matrix<D>,
    pub bn1: BlockNorm<'a, D>,
    /// `(out, 9 * out)`.
    pub conv2: &'a Matrix<D>,
    pub bn2: BlockNorm<'a, D>,
    /// The projection, `(out, in)` and its batch norm; `None`: the identity.
    pub shortcut: Option<(&'a Matrix<D>, BlockNorm<'a, D>)>,
}

/// A block's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockGeom {
    /// The input images.
    pub input: ImageGeom,
    pub out_channels: usize,
    /// 1, or 2 to halve the image.
    pub stride: usize,
    /// Compute the gradient of the input.
    pub input_grad: bool,
}

impl BlockGeom {
    /// The output images.
    pub fn output(&self) -> ImageGeom {
        let (height, width) = self.spec(3).out_size(self.input.height, self.input.width);
        ImageGeom {
            channels: self.out_channels,
            height,
            width,
            ..self.input
        }
    }

    /// A convolution of the block reading its input (conv1, the projection).
    fn spec(&self, kernel: usize) -> ConvSpec {
        ConvSpec {
            kernel,
            stride: self.stride,
            relu: false,
            pool: false,
            input_grad: self.input_grad,
        }
    }
}

/// The batch's moments of each batch norm of a block (training).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockMoments {
    pub bn1: Moments,
    pub bn2: Moments,
    pub shortcut: Option<Moments>,
}

/// A host copy of a batch norm's parameters.
struct NormParams {
    gamma: HostBuf,
    beta: HostBuf,
}

impl NormParams {
    fn of(n: &BlockNorm<'_, Cpu>) -> Self {
        NormParams {
            gamma: host_copy(n.gamma),
            beta: host_copy(n.beta),
        }
    }
}

/// The batch norm op's options for `n`.
fn norm_opts<'a>(n: &BlockNorm<'a, Cpu>, relu: bool) -> BatchNormOpts<'a> {
    BatchNormOpts {
        running: n.running,
        relu,
    }
}

/// What the backward pass of the projection shortcut keeps.
struct Projection {
    conv: HostConv,
    weight: HostBuf,
    /// The convolution's output, the batch norm's input.
    conv_out: HostBuf,
    norm: HostNorm,
}

/// The block on the CPU (see the module doc): `x: (rows, in)` channels-last
/// of geometry `geom.input`, on a tape. Returns the output, `(rows', out)`,
/// and, with the batch's statistics, the moments of each batch norm.
/// Backward for `x` (if `geom.input_grad`) and every parameter.
pub fn basic_block_cpu<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Matrix<Cpu, T>,
    params: &BlockParams<'_, Cpu>,
    geom: BlockGeom,
) -> (Matrix<Cpu, T>, Option<BlockMoments>) {
    let (x, mut tape) = x.split_tape();
    let (g, o) = (geom.input, geom.out_channels);
    let go = geom.output();
    let c = g.channels;
    let norm_ok = |n: &BlockNorm<'_, Cpu>| {
        n.gamma.shape().0 == o
            && n.beta.shape().0 == o
            && n.running.is_none_or(|(m, v)| m.len() == o && v.len() == o)
    };
    assert!(
        *x.shape() == (g.rows(), c)
            && *params.conv1.shape() == (o, 9 * c)
            && *params.conv2.shape() == (o, 9 * o)
            && norm_ok(&params.bn1)
            && norm_ok(&params.bn2)
            && params
                .shortcut
                .as_ref()
                .is_none_or(|(w, n)| *w.shape() == (o, c) && norm_ok(n))
            && (params.shortcut.is_some() || (geom.stride == 1 && c == o)),
        "basic block: input {:?}, conv1 {:?}, conv2 {:?}, {geom:?}",
        x.shape(),
        params.conv1.shape(),
        params.conv2.shape(),
    );
    let train = T::OWNS_TAPE;
    let xs = host_copy(&x);

    // The shortcut.
    let projection = params.shortcut.as_ref().map(|(w, n)| {
        let conv = HostConv::new(g, o, false, geom.spec(1));
        let weight = host_copy(*w);
        let mut conv_out = HostBuf::take(conv.out_len());
        conv.forward(&xs, &weight, &[], &mut conv_out, &mut []);
        let np = NormParams::of(n);
        let mut out = HostBuf::take(conv.out_len());
        let norm = HostNorm::forward(
            (&conv_out, o),
            (&np.gamma, &np.beta),
            None,
            &norm_opts(n, false),
            train,
            &mut out,
        );
        (
            Projection {
                conv,
                weight,
                conv_out,
                norm,
            },
            out,
        )
    });

    // The main path.
    let conv1 = HostConv::new(g, o, false, geom.spec(3));
    let w1 = host_copy(params.conv1);
    let mut h1 = HostBuf::take(conv1.out_len());
    conv1.forward(&xs, &w1, &[], &mut h1, &mut []);
    let p1 = NormParams::of(&params.bn1);
    let mut a1 = HostBuf::take(h1.len());
    let norm1 = HostNorm::forward(
        (&h1, o),
        (&p1.gamma, &p1.beta),
        None,
        &norm_opts(&params.bn1, true),
        train,
        &mut a1,
    );
    let conv2 = HostConv::new(
        go,
        o,
        false,
        ConvSpec {
            kernel: 3,
            stride: 1,
            relu: false,
            pool: false,
            input_grad: true,
        },
    );
    let w2 = host_copy(params.conv2);
    let mut h2 = HostBuf::take(conv2.out_len());
    conv2.forward(&a1, &w2, &[], &mut h2, &mut []);
    let p2 = NormParams::of(&params.bn2);
    let mut out = vec![0f32; h2.len()];
    let residual: &[f32] = match &projection {
        Some((_, s)) => s,
        None => &xs,
    };
    let norm2 = HostNorm::forward(
        (&h2, o),
        (&p2.gamma, &p2.beta),
        Some(residual),
        &norm_opts(&params.bn2, true),
        train,
        &mut out,
    );
    let moments = match (norm1.moments(), norm2.moments()) {
        (Some(bn1), Some(bn2)) => Some(BlockMoments {
            bn1,
            bn2,
            shortcut: projection.as_ref().and_then(|(p, _)| p.norm.moments()),
        }),
        _ => None,
    };
    let out = dev.tensor_from_vec(out, (go.rows(), o));
    if !train {
        return (out.put_tape(tape), moments);
    }
    let projection = projection.map(|(p, _)| p);

    let ghost = |n: &BlockNorm<'_, Cpu>| (n.gamma.ghost(), n.beta.ghost());
    let (x_ghost, out_ghost) = (x.ghost(), out.ghost());
    let (w1_ghost, bn1_ghost) = (params.conv1.ghost(), ghost(&params.bn1));
    let (w2_ghost, bn2_ghost) = (params.conv2.ghost(), ghost(&params.bn2));
    let shortcut_ghosts = params.shortcut.as_ref().map(|(w, n)| (w.ghost(), ghost(n)));
    let input_grad = geom.input_grad;
    let dev = dev.clone();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        // This op made `out`, so every reader of its gradient has run: take
        // the buffer (and mask it in place).
        let empty = dev.try_alloc_len(0)?;
        let mut g = std::mem::replace(grads.get_or_alloc_mut(&out_ghost)?, empty);

        // bn2: `g` becomes the gradient after the ReLU, which is also the
        // shortcut's.
        let d2 = norm2.param_grads(&h2, &mut g);
        add_f64(grads.get_or_alloc_mut(&bn2_ghost.0)?, &d2.gamma);
        add_f64(grads.get_or_alloc_mut(&bn2_ghost.1)?, &d2.beta);
        let mut dh2 = HostBuf::take(h2.len());
        norm2.input_grad((&h2, &g), &d2, &mut dh2, false);
        if input_grad && projection.is_none() {
            add_into(grads.get_or_alloc_mut(&x_ghost)?, &g, ADD_SPAN);
        }

        // conv2, bn1, conv1.
        let mut da1 = HostBuf::zeroed(a1.len());
        let parts = conv2.backward((&a1, &w2), &dh2, &[], Some(&mut da1));
        conv2.add_weight_grad(&parts, grads.get_or_alloc_mut(&w2_ghost)?);
        let d1 = norm1.param_grads(&h1, &mut da1);
        add_f64(grads.get_or_alloc_mut(&bn1_ghost.0)?, &d1.gamma);
        add_f64(grads.get_or_alloc_mut(&bn1_ghost.1)?, &d1.beta);
        let mut dh1 = HostBuf::take(h1.len());
        norm1.input_grad((&h1, &da1), &d1, &mut dh1, false);
        let gx = match input_grad {
            true => Some(&mut grads.get_or_alloc_mut(&x_ghost)?[..]),
            false => None,
        };
        let parts = conv1.backward((&xs, &w1), &dh1, &[], gx);
        conv1.add_weight_grad(&parts, grads.get_or_alloc_mut(&w1_ghost)?);

        // The projection, from the same gradient `g`.
        if let (Some(p), Some((ws_ghost, bns_ghost))) = (&projection, &shortcut_ghosts) {
            let ds = p.norm.param_grads(&p.conv_out, &mut g);
            add_f64(grads.get_or_alloc_mut(&bns_ghost.0)?, &ds.gamma);
            add_f64(grads.get_or_alloc_mut(&bns_ghost.1)?, &ds.beta);
            let mut dhs = HostBuf::take(p.conv_out.len());
            p.norm.input_grad((&p.conv_out, &g), &ds, &mut dhs, false);
            let gx = match input_grad {
                true => Some(&mut grads.get_or_alloc_mut(&x_ghost)?[..]),
                false => None,
            };
            let parts = p.conv.backward((&xs, &p.weight), &dhs, &[], gx);
            p.conv
                .add_weight_grad(&parts, grads.get_or_alloc_mut(ws_ghost)?);
        }
        Ok(())
    });
    (out.put_tape(tape), moments)
}

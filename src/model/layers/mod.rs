//! The layer kinds, one file each. A layer owns everything about itself:
//! its input and output shapes, its parameters and buffers with their
//! PyTorch names, shapes and layouts, its FLOPs, its PyTorch module, and its
//! forward pass on the device (backward comes from the tape). The spec
//! grammar ([`super::spec`]) only parses text into these; the network
//! ([`super::network`]) only runs them in order.
//!
//! A network is a list of [`Layer`]s, and a layer can itself be a small
//! graph: [`residual::BasicBlock`] holds a main path and a shortcut and adds
//! them.
//!
//! | file | kind | PyTorch |
//! |---|---|---|
//! | [`conv`] | 3x3 or 1x1 convolution, stride 1 or 2, optional bias and ReLU | `nn.Conv2d` (+ `nn.ReLU`) |
//! | [`maxpool`] | 2x2 max-pool, stride 2 | `nn.MaxPool2d(2)` |
//! | [`dense`] | fully connected, optional ReLU | (`nn.Flatten`) `nn.Linear` (+ `nn.ReLU`) |
//! | [`batchnorm`] | batch norm over channels, optional ReLU | `nn.BatchNorm2d` (+ `nn.ReLU`) |
//! | [`residual`] | the basic block: two 3x3 conv+BN, identity or 1x1 conv+BN shortcut | `BasicBlock` (in `model.py`) |
//! | [`gap`] | global average pooling | `nn.AdaptiveAvgPool2d(1)`, `nn.Flatten` |
//! | [`dropout`](mod@dropout) | dropout, training only | `nn.Dropout(p)` |
//!
//! Adding a kind: a new file with a struct offering the methods the
//! [`Layer`] dispatch below calls, one variant here, and its token in the
//! grammar.

pub mod batchnorm;
pub mod conv;
pub mod dense;
pub mod dropout;
pub mod gap;
pub mod maxpool;
pub mod residual;

use dfdx::prelude::*;

use super::network::{Buffer, Param, ParamKind, ParamValue};
use super::ops::{Backend, Matrix};

pub use batchnorm::BatchNorm;
pub use conv::Conv;
pub use dense::Dense;
pub use dropout::Dropout;
pub use gap::GlobalAvgPool;
pub use maxpool::MaxPool;
pub use residual::BasicBlock;

/// What flows between layers, per sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Features {
    /// An image, `channels x height x width` (channels-last on the device:
    /// a matrix of `batch * height * width` pixel rows).
    Image {
        channels: usize,
        height: usize,
        width: usize,
    },
    /// A flat vector (a `(batch, n)` matrix on the device).
    Flat(usize),
}

impl Features {
    /// Values per sample.
    pub fn len(&self) -> usize {
        match *self {
            Features::Image {
                channels,
                height,
                width,
            } => channels * height * width,
            Features::Flat(n) => n,
        }
    }

    /// Whether a sample holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a parameter's values are laid out in the network's store compared
/// with PyTorch's tensor; the conversion is a permutation either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// The same order as PyTorch.
    Plain,
    /// A conv weight: store `[out, k*k*in]` with column `tap * in + c`,
    /// PyTorch `[out, in, k, k]`.
    Conv {
        out_channels: usize,
        in_channels: usize,
        taps: usize,
    },
    /// A dense weight reading a flattened image: store columns in (h, w, c)
    /// order (images travel channels-last), PyTorch's flatten order
    /// (c, h, w).
    FlattenedImage {
        outputs: usize,
        channels: usize,
        pixels: usize,
    },
}

impl Layout {
    /// `perm[store_index] = torch_index`, or `None` for [`Layout::Plain`].
    fn permutation(&self) -> Option<Vec<usize>> {
        match *self {
            Layout::Plain => None,
            Layout::Conv {
                out_channels,
                in_channels,
                taps,
            } => {
                let mut perm = vec![0usize; out_channels * in_channels * taps];
                for o in 0..out_channels {
                    for c in 0..in_channels {
                        for tap in 0..taps {
                            perm[(o * taps + tap) * in_channels + c] =
                                (o * in_channels + c) * taps + tap;
                        }
                    }
                }
                Some(perm)
            }
            Layout::FlattenedImage {
                outputs,
                channels,
                pixels,
            } => {
                let inputs = channels * pixels;
                let mut perm = vec![0usize; outputs * inputs];
                for o in 0..outputs {
                    for ch in 0..channels {
                        for p in 0..pixels {
                            perm[o * inputs + p * channels + ch] = o * inputs + ch * pixels + p;
                        }
                    }
                }
                Some(perm)
            }
        }
    }

    /// Store order to PyTorch order.
    pub fn to_torch(&self, values: &[f32]) -> Vec<f32> {
        match self.permutation() {
            Some(perm) => {
                let mut out = vec![0f32; values.len()];
                for (s, &t) in perm.iter().enumerate() {
                    out[t] = values[s];
                }
                out
            }
            None => values.to_vec(),
        }
    }

    /// PyTorch order to store order (also for masks, which share their
    /// weight's layout).
    pub fn from_torch(&self, values: &[f32]) -> Vec<f32> {
        match self.permutation() {
            Some(perm) => perm.iter().map(|&t| values[t]).collect(),
            None => values.to_vec(),
        }
    }
}

/// How a fresh parameter is filled.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in `±bound` (PyTorch's default for `nn.Linear` and
    /// `nn.Conv2d`: `bound = 1/sqrt(fan_in)`).
    Uniform(f32),
    /// Every value the same (batch norm: weight 1, bias 0).
    Constant(f32),
}

/// One learnable tensor a layer declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamDecl {
    /// Name relative to the layer's module, e.g. `weight` or `conv1.weight`.
    pub name: String,
    pub kind: ParamKind,
    /// PyTorch's shape.
    pub torch_shape: Vec<usize>,
    pub layout: Layout,
    pub init: Init,
}

impl ParamDecl {
    /// A tensor in PyTorch's own layout.
    pub fn plain(name: &str, kind: ParamKind, torch_shape: Vec<usize>, init: Init) -> Self {
        ParamDecl {
            name: name.to_string(),
            kind,
            torch_shape,
            layout: Layout::Plain,
            init,
        }
    }

    /// The same declaration under `prefix.` (a sub-module's).
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.name = format!("{prefix}.{}", self.name);
        self
    }

    /// The store's shape: a matrix for weights of rank 2 and more (conv
    /// weights `[out, k*k*in]`), a vector otherwise.
    pub fn store_dims(&self) -> Vec<usize> {
        match self.torch_shape.as_slice() {
            [] => vec![1],
            [n] => vec![*n],
            [rows, rest @ ..] => vec![*rows, rest.iter().product()],
        }
    }
}

/// One non-learnable tensor a layer keeps (batch norm's running
/// statistics), saved with the weights under its PyTorch name.
#[derive(Debug, Clone, PartialEq)]
pub struct BufferDecl {
    /// Name relative to the layer's module, e.g. `running_mean`.
    pub name: String,
    /// PyTorch's shape (`[]` for a scalar).
    pub torch_shape: Vec<usize>,
    /// The value of every element of a fresh buffer.
    pub init: f32,
}

impl BufferDecl {
    /// The same declaration under `prefix.`.
    pub fn prefixed(mut self, prefix: &str) -> Self {
        self.name = format!("{prefix}.{}", self.name);
        self
    }
}

/// Whether a forward pass trains (batch statistics, dropout) or evaluates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Train,
    Eval,
}

/// What one layer's forward pass reads besides its input.
pub struct Ctx<'a, D: Backend> {
    pub device: &'a D,
    pub batch: usize,
    pub mode: Mode,
    /// Whether the layer's input needs a gradient (the network's raw input
    /// needs none).
    pub input_grad: bool,
    /// This layer's parameters, in the order of its declarations.
    pub params: &'a [Param<D>],
    /// This layer's buffers, in the order of its declarations.
    pub buffers: &'a [Buffer],
    /// A seed for this layer's random draws in this step (dropout).
    pub seed: u64,
}

impl<'a, D: Backend> Ctx<'a, D> {
    /// The context of a sub-layer owning `params` and `buffers` of this one.
    pub fn sub(&self, params: std::ops::Range<usize>, buffers: std::ops::Range<usize>) -> Self {
        Ctx {
            device: self.device,
            batch: self.batch,
            mode: self.mode,
            input_grad: self.input_grad,
            params: &self.params[params],
            buffers: &self.buffers[buffers],
            seed: self.seed,
        }
    }

    /// The same context for a layer whose input needs a gradient.
    pub fn with_input_grad(&self) -> Self {
        Ctx {
            input_grad: true,
            ..self.sub(0..self.params.len(), 0..self.buffers.len())
        }
    }

    /// Parameter `i` as a matrix.
    pub fn matrix(&self, i: usize) -> &'a Matrix<D> {
        match &self.params[i].value {
            ParamValue::Matrix(m) => m,
            // Layers declare their weights of rank >= 2; the store builds
            // matrices for exactly those.
            ParamValue::Vector(_) => unreachable!("parameter {i} is not a matrix"),
        }
    }

    /// Parameter `i`'s host copy, when one is current (see
    /// [`HostMirror`](super::HostMirror)).
    pub fn host(&self, i: usize) -> Option<&'a std::sync::Arc<Vec<f32>>> {
        self.params[i].host.get()
    }

    /// Parameter `i` as a vector.
    pub fn vector(&self, i: usize) -> &'a Tensor<(usize,), f32, D> {
        match &self.params[i].value {
            ParamValue::Vector(v) => v,
            ParamValue::Matrix(_) => unreachable!("parameter {i} is not a vector"),
        }
    }
}

/// One layer of a resolved model.
// A block holds its sub-layers inline; a spec has a few dozen layers at
// most, so the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    Conv(Conv),
    MaxPool(MaxPool),
    Dense(Dense),
    BatchNorm(BatchNorm),
    Residual(BasicBlock),
    GlobalAvgPool(GlobalAvgPool),
    Dropout(Dropout),
}

/// Calls `$body` with `$l` bound to the layer's struct, whatever its kind.
macro_rules! each_kind {
    ($layer:expr, $l:ident => $body:expr) => {
        match $layer {
            Layer::Conv($l) => $body,
            Layer::MaxPool($l) => $body,
            Layer::Dense($l) => $body,
            Layer::BatchNorm($l) => $body,
            Layer::Residual($l) => $body,
            Layer::GlobalAvgPool($l) => $body,
            Layer::Dropout($l) => $body,
        }
    };
}

impl Layer {
    /// The shape the layer reads.
    pub fn input(&self) -> Features {
        each_kind!(self, l => l.input())
    }

    /// The shape the layer writes.
    pub fn output(&self) -> Features {
        each_kind!(self, l => l.output())
    }

    /// Number of learnable parameters, `None` on overflow.
    pub fn checked_param_count(&self) -> Option<u64> {
        self.params()
            .iter()
            .try_fold(0u64, |sum, p| sum.checked_add(product(&p.torch_shape)?))
    }

    /// Number of learnable parameters.
    pub fn param_count(&self) -> u64 {
        self.checked_param_count().unwrap_or(u64::MAX)
    }

    /// Forward FLOPs per sample (a multiply-add is two), `None` on overflow.
    pub fn checked_flops(&self) -> Option<u64> {
        each_kind!(self, l => l.checked_flops())
    }

    /// Forward FLOPs per sample, counting a multiply-add as two.
    pub fn flops(&self) -> u64 {
        self.checked_flops().unwrap_or(u64::MAX)
    }

    /// The learnable tensors, in PyTorch's `state_dict` order.
    pub fn params(&self) -> Vec<ParamDecl> {
        each_kind!(self, l => l.params())
    }

    /// The running statistics and counters, in `state_dict` order.
    pub fn buffers(&self) -> Vec<BufferDecl> {
        each_kind!(self, l => l.buffers())
    }

    /// The names (relative to the layer's module) of its weights that
    /// magnitude pruning masks: those of convolutions and dense layers, a
    /// block's included; not batch norm's per-channel scales.
    pub fn prunable_weights(&self) -> Vec<String> {
        self.params()
            .into_iter()
            .filter(|p| p.kind == ParamKind::Weight && p.torch_shape.len() >= 2)
            .map(|p| p.name)
            .collect()
    }

    /// Whether the layer owns learnable parameters.
    pub fn has_params(&self) -> bool {
        !self.params().is_empty()
    }

    /// The PyTorch modules the layer adds to the model's `nn.Sequential`,
    /// and the position among them of the one that owns the parameters (a
    /// flatten comes before a linear layer; a ReLU after it).
    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        each_kind!(self, l => l.torch_modules())
    }

    /// A short description for `distill model info`.
    pub fn describe(&self) -> String {
        each_kind!(self, l => l.describe())
    }

    /// Whether the layer works on images.
    pub fn is_spatial(&self) -> bool {
        !matches!(self, Layer::Dense(_) | Layer::Dropout(_))
    }

    /// The forward pass on `(rows, features)` activations.
    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        each_kind!(self, l => l.forward(x, ctx))
    }
}

/// The product of `dims` in u64, `None` on overflow.
pub fn product(dims: &[usize]) -> Option<u64> {
    dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64))
}

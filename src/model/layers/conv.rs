//! The convolution layer: a 3x3 (padding 1) or 1x1 (padding 0) kernel,
//! stride 1 or 2, with an optional bias and an optional ReLU.
//!
//! - `cnn:` specs' `cN` is 3x3, stride 1, bias and ReLU (and runs a
//!   following max-pool in the same op);
//! - `cNs2` is the same with stride 2;
//! - a residual block's convolutions have no bias and no ReLU (a batch
//!   norm follows), as PyTorch's ResNets (`bias=False`).
//!
//! Every form is one op, [`Backend::conv2d`] (on the CPU the chunked
//! patch-matrix gemm of [`crate::model::conv`], which builds only the
//! patches of the pixels a stride keeps, and none for a 1x1 stride-1
//! kernel).
//!
//! Output size: `(n - 1) / stride + 1` per side (PyTorch's
//! `(n + 2p - k) / s + 1` for both kernels). Store layout of the weight:
//! `[out, k*k*in]`, column `tap * in + c` ([`Layout::Conv`]).

use dfdx::prelude::*;

use super::{product, Ctx, Features, Init, Layout, ParamDecl};
use crate::model::conv::ConvSpec;
use crate::model::network::ParamKind;
use crate::model::ops::{Backend, ImageGeom, Matrix};

/// A convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Input height and width.
    pub height: usize,
    pub width: usize,
    /// 3 (padding 1) or 1 (padding 0).
    pub kernel: usize,
    /// 1 or 2.
    pub stride: usize,
    pub bias: bool,
    pub relu: bool,
}

impl Conv {
    /// The `cnn:` grammar's `cN`: 3x3, stride 1, bias, ReLU.
    pub fn classic(in_channels: usize, out_channels: usize, height: usize, width: usize) -> Self {
        Conv {
            in_channels,
            out_channels,
            height,
            width,
            kernel: 3,
            stride: 1,
            bias: true,
            relu: true,
        }
    }

    /// Output height and width.
    pub fn out_size(&self) -> (usize, usize) {
        (
            (self.height.max(1) - 1) / self.stride + 1,
            (self.width.max(1) - 1) / self.stride + 1,
        )
    }

    /// Whether this is the `cnn:` grammar's `cN` (3x3, stride 1, bias,
    /// ReLU), the one form whose op also runs a following max-pool.
    pub fn is_fused(&self) -> bool {
        self.kernel == 3 && self.stride == 1 && self.bias && self.relu
    }

    pub fn input(&self) -> Features {
        Features::Image {
            channels: self.in_channels,
            height: self.height,
            width: self.width,
        }
    }

    pub fn output(&self) -> Features {
        let (height, width) = self.out_size();
        Features::Image {
            channels: self.out_channels,
            height,
            width,
        }
    }

    pub fn checked_flops(&self) -> Option<u64> {
        let (h, w) = self.out_size();
        let taps = self.kernel * self.kernel;
        product(&[2, h, w, self.out_channels, self.in_channels, taps])
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        let (o, i, k) = (self.out_channels, self.in_channels, self.kernel);
        let bound = 1.0 / ((i * k * k) as f32).sqrt();
        let mut out = vec![ParamDecl {
            name: "weight".into(),
            kind: ParamKind::Weight,
            torch_shape: vec![o, i, k, k],
            layout: Layout::Conv {
                out_channels: o,
                in_channels: i,
                taps: k * k,
            },
            init: Init::Uniform(bound),
        }];
        if self.bias {
            out.push(ParamDecl::plain(
                "bias",
                ParamKind::Bias,
                vec![o],
                Init::Uniform(bound),
            ));
        }
        out
    }

    pub fn buffers(&self) -> Vec<super::BufferDecl> {
        Vec::new()
    }

    /// The `nn.Conv2d` alone (a residual block names it as a child).
    pub fn torch_module(&self) -> String {
        let (i, o, k) = (self.in_channels, self.out_channels, self.kernel);
        let mut args = format!("{i}, {o}, {k}");
        if self.stride != 1 {
            args.push_str(&format!(", stride={}", self.stride));
        }
        if k == 3 {
            args.push_str(", padding=1");
        }
        if !self.bias {
            args.push_str(", bias=False");
        }
        format!("nn.Conv2d({args})")
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        let mut m = vec![self.torch_module()];
        if self.relu {
            m.push("nn.ReLU()".into());
        }
        (m, 0)
    }

    pub fn describe(&self) -> String {
        let k = self.kernel;
        let (h, w) = self.out_size();
        let mut s = format!(
            "conv{k}x{k} {}->{} @{}x{}",
            self.in_channels, self.out_channels, self.height, self.width
        );
        if self.stride != 1 {
            s.push_str(&format!(" s{} ->{h}x{w}", self.stride));
        }
        if !self.bias {
            s.push_str(" nobias");
        }
        if self.relu {
            s.push_str(" +relu");
        }
        s
    }

    pub fn geom(&self, batch: usize) -> ImageGeom {
        ImageGeom {
            batch,
            channels: self.in_channels,
            height: self.height,
            width: self.width,
        }
    }

    /// The forward pass; `pool` runs a following 2x2 max-pool inside the
    /// op (only for [`Self::is_fused`] layers).
    pub fn forward_pooled<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
        pool: bool,
    ) -> Matrix<D, T> {
        debug_assert!(
            !pool || self.is_fused(),
            "only a cN convolution runs a pool"
        );
        let spec = ConvSpec {
            kernel: self.kernel,
            stride: self.stride,
            relu: self.relu,
            pool,
            input_grad: ctx.input_grad,
        };
        let bias = self.bias.then(|| ctx.vector(1));
        ctx.device
            .conv2d(x, ctx.matrix(0), bias, self.geom(ctx.batch), spec)
    }

    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        self.forward_pooled(x, ctx, false)
    }
}

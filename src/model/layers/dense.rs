//! The fully connected layer, `relu?(x W^T + b)`, on the fast affine op
//! [`Backend::linear`]. The first dense layer after image layers flattens
//! its input: an `nn.Flatten` before it in PyTorch, and, because images
//! travel channels-last, a weight whose columns the store keeps in
//! (h, w, c) order ([`Layout::FlattenedImage`]).

use dfdx::prelude::*;

use super::{product, BufferDecl, Ctx, Features, Init, Layout, ParamDecl};
use crate::model::kernels::LinearOpts;
use crate::model::network::ParamKind;
use crate::model::ops::{Backend, Matrix};

/// A fully connected layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dense {
    pub inputs: usize,
    pub outputs: usize,
    /// Followed by a ReLU (every dense layer but the last).
    pub relu: bool,
    /// `Some((channels, height, width))` when it flattens an image that
    /// travelled channels-last (the first dense layer after image layers).
    pub from_image: Option<(usize, usize, usize)>,
}

impl Dense {
    pub fn input(&self) -> Features {
        match self.from_image {
            Some((channels, height, width)) => Features::Image {
                channels,
                height,
                width,
            },
            None => Features::Flat(self.inputs),
        }
    }

    pub fn output(&self) -> Features {
        Features::Flat(self.outputs)
    }

    pub fn checked_flops(&self) -> Option<u64> {
        product(&[2, self.inputs, self.outputs])
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        let bound = 1.0 / (self.inputs as f32).sqrt();
        let layout = match self.from_image {
            Some((channels, h, w)) => Layout::FlattenedImage {
                outputs: self.outputs,
                channels,
                pixels: h * w,
            },
            None => Layout::Plain,
        };
        vec![
            ParamDecl {
                name: "weight".into(),
                kind: ParamKind::Weight,
                torch_shape: vec![self.outputs, self.inputs],
                layout,
                init: Init::Uniform(bound),
            },
            ParamDecl::plain(
                "bias",
                ParamKind::Bias,
                vec![self.outputs],
                Init::Uniform(bound),
            ),
        ]
    }

    pub fn buffers(&self) -> Vec<BufferDecl> {
        Vec::new()
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        let mut m = Vec::new();
        if self.from_image.is_some() {
            m.push("nn.Flatten()".to_string());
        }
        let owner = m.len();
        m.push(format!("nn.Linear({}, {})", self.inputs, self.outputs));
        if self.relu {
            m.push("nn.ReLU()".into());
        }
        (m, owner)
    }

    pub fn describe(&self) -> String {
        format!(
            "linear {}->{}{}",
            self.inputs,
            self.outputs,
            if self.relu { " +relu" } else { "" }
        )
    }

    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        let x = if self.from_image.is_some() {
            x.reshape_like(&(ctx.batch, self.inputs))
        } else {
            x
        };
        let opts = LinearOpts {
            relu: self.relu,
            input_grad: ctx.input_grad,
        };
        ctx.device
            .linear_with_host(x, ctx.matrix(0), ctx.host(0), ctx.vector(1), opts)
    }
}

//! The 2x2 max-pool, stride 2: `height x width` to half of each (odd sizes
//! floored, as PyTorch's `nn.MaxPool2d(2)`). After a fused convolution the
//! network runs it inside that op ([`super::Conv::forward_pooled`]);
//! otherwise [`Backend::max_pool2`].

use dfdx::prelude::*;

use super::{product, BufferDecl, Ctx, Features, ParamDecl};
use crate::model::ops::{Backend, ImageGeom, Matrix};

/// A 2x2 stride-2 max-pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl MaxPool {
    pub fn input(&self) -> Features {
        Features::Image {
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    pub fn output(&self) -> Features {
        Features::Image {
            channels: self.channels,
            height: self.height / 2,
            width: self.width / 2,
        }
    }

    pub fn checked_flops(&self) -> Option<u64> {
        product(&[self.height / 2, self.width / 2, self.channels, 3])
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        Vec::new()
    }

    pub fn buffers(&self) -> Vec<BufferDecl> {
        Vec::new()
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        (vec!["nn.MaxPool2d(2)".into()], 0)
    }

    pub fn describe(&self) -> String {
        format!(
            "maxpool2 {}ch {}x{}->{}x{}",
            self.channels,
            self.height,
            self.width,
            self.height / 2,
            self.width / 2
        )
    }

    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        let geom = ImageGeom {
            batch: ctx.batch,
            channels: self.channels,
            height: self.height,
            width: self.width,
        };
        ctx.device.max_pool2(x, geom)
    }
}

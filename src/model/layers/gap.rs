//! Global average pooling: each channel's mean over the image, from
//! `channels x height x width` to a flat vector of `channels`
//! (`nn.AdaptiveAvgPool2d(1)` and `nn.Flatten()` in PyTorch). A reshape of
//! the channels-last rows and dfdx's mean, on every device.

use dfdx::prelude::*;

use super::{product, BufferDecl, Ctx, Features, ParamDecl};
use crate::model::ops::{Backend, Matrix};

/// Global average pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GlobalAvgPool {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl GlobalAvgPool {
    pub fn input(&self) -> Features {
        Features::Image {
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    pub fn output(&self) -> Features {
        Features::Flat(self.channels)
    }

    pub fn checked_flops(&self) -> Option<u64> {
        product(&[self.channels, self.height, self.width])
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        Vec::new()
    }

    pub fn buffers(&self) -> Vec<BufferDecl> {
        Vec::new()
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        (
            vec!["nn.AdaptiveAvgPool2d(1)".into(), "nn.Flatten()".into()],
            0,
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "avgpool {}ch {}x{}->1x1",
            self.channels, self.height, self.width
        )
    }

    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        let pixels = self.height * self.width;
        let x: Tensor<(usize, usize, usize), f32, D, T> =
            x.reshape_like(&(ctx.batch, pixels, self.channels));
        x.mean::<(usize, usize), Axis<1>>()
    }
}

#[cfg(test)]
mod tests {
    use super::super::Mode;
    use super::*;

    #[test]
    fn averages_each_channel_of_each_image() {
        let dev = Cpu::default();
        let gap = GlobalAvgPool {
            channels: 2,
            height: 1,
            width: 2,
        };
        let ctx = Ctx {
            device: &dev,
            batch: 2,
            mode: Mode::Eval,
            input_grad: true,
            params: &[],
            buffers: &[],
            seed: 0,
        };
        // image 0: pixels (1, 10), (3, 20); image 1: (5, 30), (7, 40)
        let x = dev.tensor_from_vec(vec![1.0, 10.0, 3.0, 20.0, 5.0, 30.0, 7.0, 40.0], (4, 2));
        assert_eq!(gap.forward(x, &ctx).as_vec(), vec![2.0, 15.0, 6.0, 35.0]);
    }
}

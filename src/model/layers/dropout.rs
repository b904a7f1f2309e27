//! Dropout: in training, each value is zeroed with probability `p` and the
//! rest scaled by `1 / (1 - p)`; in evaluation, the identity (PyTorch's
//! `nn.Dropout(p)`). The mask is drawn from a ChaCha8 generator seeded by
//! the network from (its seed, the training step, the layer), so a run, and
//! a run resumed from a checkpoint, draws the same masks.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use super::{BufferDecl, Ctx, Features, Mode, ParamDecl};
use crate::model::ops::{Backend, Matrix};

/// Dropout with probability `p` on `features`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Dropout {
    pub p: f32,
    pub features: Features,
}

impl Dropout {
    pub fn input(&self) -> Features {
        self.features
    }

    pub fn output(&self) -> Features {
        self.features
    }

    pub fn checked_flops(&self) -> Option<u64> {
        Some(0)
    }

    pub fn params(&self) -> Vec<ParamDecl> {
        Vec::new()
    }

    pub fn buffers(&self) -> Vec<BufferDecl> {
        Vec::new()
    }

    pub fn torch_modules(&self) -> (Vec<String>, usize) {
        (vec![format!("nn.Dropout({:?})", self.p)], 0)
    }

    pub fn describe(&self) -> String {
        format!("dropout p={} (training only)", self.p)
    }

    pub fn forward<D: Backend, T: Tape<f32, D>>(
        &self,
        x: Matrix<D, T>,
        ctx: &Ctx<'_, D>,
    ) -> Matrix<D, T> {
        if ctx.mode == Mode::Eval || self.p <= 0.0 {
            return x;
        }
        let shape = *x.shape();
        let mask = drop_mask(ctx.seed, shape.0 * shape.1, self.p);
        x * ctx.device.tensor_from_vec(mask, shape)
    }
}

/// `n` values: 0 with probability `p`, else `1 / (1 - p)`; a pure function
/// of `(seed, n, p)`.
pub fn drop_mask(seed: u64, n: usize, p: f32) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let keep = 1.0 / (1.0 - p);
    (0..n)
        .map(|_| if rng.gen::<f32>() < p { 0.0 } else { keep })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_reproducible_and_keep_the_mean() {
        let a = drop_mask(7, 20_000, 0.25);
        assert_eq!(a, drop_mask(7, 20_000, 0.25));
        assert_ne!(a, drop_mask(8, 20_000, 0.25));
        let zeros = a.iter().filter(|v| **v == 0.0).count() as f64 / a.len() as f64;
        assert!((zeros - 0.25).abs() < 0.02, "{zeros}");
        let mean = a.iter().map(|v| *v as f64).sum::<f64>() / a.len() as f64;
        assert!((mean - 1.0).abs() < 0.03, "{mean}");
    }
}

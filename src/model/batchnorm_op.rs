//! Batch norm as one op: `relu?(gamma * (x - mean) / sqrt(var + eps) +
//! beta + residual?)` per channel of channels-last pixel rows `(rows, C)`,
//! with the batch's statistics (training) or given ones (evaluation: the running
//! statistics), and its backward pass.
//!
//! The composed form ([`batch_norm_generic`], dfdx's mean, square, sqrt and
//! broadcast ops) passes over the activations about ten times forward and as
//! many backward, and reduces columns of a tall matrix. On the CPU,
//! [`batch_norm_cpu`] instead:
//! - forward: one pass for the per-channel sums of `x - k` and `(x - k)^2`
//!   (`k`, the first row, keeps the variance free of cancellation; the sums
//!   are f64), then one pass that writes `(x - mean) * scale + beta`
//!   (`scale = gamma / sqrt(var + eps)`), adds the residual, applies the
//!   ReLU and keeps one byte per value saying where the ReLU let through;
//! - backward, the standard one: a pass for the per-channel sums of `g'`
//!   and `g' * xhat` (`g'` the output gradient masked by the ReLU, written
//!   in place; `xhat = (x - mean) / sqrt(var + eps)`), which are the
//!   gradients of `beta` and `gamma`, then a pass for
//!   `dx = scale * (g' - sum(g') / n - xhat * sum(g' xhat) / n)` (with given
//!   statistics `dx = scale * g'`); the residual's gradient is `g'`.
//!
//! Both split the rows into chunks of `CHUNK_ROWS` (a constant, never the
//! thread count), one rayon task per chunk, each writing its partial sums,
//! which are then added in chunk order: the results are bit-identical for any
//! number of threads.
//!
//! The running statistics are the caller's (the layer,
//! [`crate::model::layers::batchnorm`]): the op returns the batch's mean and
//! biased variance.

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use rayon::prelude::*;

use super::conv::with_channels;
use super::kernels::host_copy;
use super::ops::Matrix;
use crate::simd::wide_kernel;

/// PyTorch's default `eps`.
pub const EPS: f32 = 1e-5;

/// Rows per chunk of the CPU op (64 KiB of a 16-channel activation).
const CHUNK_ROWS: usize = 1024;

/// What [`crate::model::Backend::batch_norm`] computes besides the
/// normalisation.
#[derive(Debug, Clone, Copy)]
pub struct BatchNormOpts<'a> {
    /// `None`: normalise with the batch's own statistics (training);
    /// `Some((mean, var))`: with these (evaluation, the running statistics).
    pub running: Option<(&'a [f32], &'a [f32])>,
    /// Apply a ReLU last (after the residual, if any).
    pub relu: bool,
}

/// A batch's per-channel mean and biased variance.
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    pub mean: Vec<f32>,
    pub var: Vec<f32>,
}

/// Per-channel `(scale, mean)` of the normalisation and the moments it came
/// from (`None` for given statistics).
fn statistics(xs: &[f32], c: usize, gamma: &[f32], opts: &BatchNormOpts) -> Stats {
    let (mean, var, moments) = match opts.running {
        Some((mean, var)) => (mean.to_vec(), var.to_vec(), None),
        None => {
            let (mean, var) = moments(xs, c);
            let mean: Vec<f32> = mean.iter().map(|m| *m as f32).collect();
            let var: Vec<f32> = var.iter().map(|v| *v as f32).collect();
            let m = Moments {
                mean: mean.clone(),
                var: var.clone(),
            };
            (mean, var, Some(m))
        }
    };
    let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
    let scale = inv.iter().zip(gamma).map(|(i, g)| i * g).collect();
    Stats {
        mean,
        inv,
        scale,
        moments,
    }
}

/// The per-channel numbers of one call.
struct Stats {
    mean: Vec<f32>,
    /// `1 / sqrt(var + eps)`.
    inv: Vec<f32>,
    /// `gamma * inv`.
    scale: Vec<f32>,
    moments: Option<Moments>,
}

/// Per-channel mean and biased variance of the rows of `xs` (`c` values
/// each), in f64, from per-chunk sums added in chunk order.
fn moments(xs: &[f32], c: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = xs.len() / c.max(1);
    if rows == 0 {
        return (vec![0.0; c], vec![0.0; c]);
    }
    let pivot = &xs[..c];
    let mut partials = vec![0f64; rows.div_ceil(CHUNK_ROWS) * 2 * c];
    partials
        .par_chunks_mut(2 * c)
        .zip(xs.par_chunks(CHUNK_ROWS * c))
        .for_each(|(part, chunk)| shifted_sums_any(c, chunk, pivot, part));
    let (mut s1, mut s2) = (vec![0f64; c], vec![0f64; c]);
    for part in partials.chunks_exact(2 * c) {
        for ch in 0..c {
            s1[ch] += part[ch];
            s2[ch] += part[c + ch];
        }
    }
    let n = rows as f64;
    let mean = (0..c).map(|ch| pivot[ch] as f64 + s1[ch] / n).collect();
    let var = (0..c)
        .map(|ch| (s2[ch] / n - (s1[ch] / n).powi(2)).max(0.0))
        .collect();
    (mean, var)
}

wide_kernel! {
    /// [`shifted_sums`] for `c` channels, per vector level.
    fn shifted_sums_any(c: usize, chunk: &[f32], pivot: &[f32], part: &mut [f64]) {
        with_channels!(c, shifted_sums, chunk, pivot, c, part)
    }
}

wide_kernel! {
    /// [`normalise_chunk`] for `p.c` channels, per vector level.
    fn normalise_any(
        p: &Normalise,
        x: &[f32],
        r: Option<&[f32]>,
        out: &mut [f32],
        mask: Option<&mut [u8]>,
    ) {
        with_channels!(p.c, normalise_chunk, p, x, r, out, mask)
    }
}

wide_kernel! {
    /// [`grad_sums`] for `c` channels, per vector level.
    fn grad_sums_any(
        c: usize,
        xgm: (&[f32], &mut [f32], Option<&[u8]>),
        stats: (&[f32], &[f32]),
        part: &mut [f64],
    ) {
        with_channels!(c, grad_sums, c, xgm, stats, part)
    }
}

wide_kernel! {
    /// [`input_grad_chunk`] for `c` channels, adding to the gradient or
    /// (`add` false) writing it, per vector level.
    fn input_grad_any(
        c: usize,
        xgd: (&[f32], &[f32], &mut [f32]),
        coef: (&[f32], &[f32], &[f32]),
        means: (&[f32], &[f32]),
        add: bool,
    ) {
        match add {
            true => with_channels!(c, input_grad_add, c, xgd, coef, means),
            false => with_channels!(c, input_grad_set, c, xgd, coef, means),
        }
    }
}

/// [`input_grad_chunk`] adding to the gradient.
#[inline(always)]
fn input_grad_add<const C: usize>(
    c: usize,
    xgd: (&[f32], &[f32], &mut [f32]),
    coef: (&[f32], &[f32], &[f32]),
    means: (&[f32], &[f32]),
) {
    input_grad_chunk::<C, true>(c, xgd, coef, means)
}

/// [`input_grad_chunk`] writing the gradient.
#[inline(always)]
fn input_grad_set<const C: usize>(
    c: usize,
    xgd: (&[f32], &[f32], &mut [f32]),
    coef: (&[f32], &[f32], &[f32]),
    means: (&[f32], &[f32]),
) {
    input_grad_chunk::<C, false>(c, xgd, coef, means)
}

/// Adds, per channel, `sum(x - pivot)` to `part[..c]` and `sum((x -
/// pivot)^2)` to `part[c..]` over the rows of `chunk` (`C == 0`: `c` at run
/// time).
#[inline(always)]
fn shifted_sums<const C: usize>(chunk: &[f32], pivot: &[f32], c: usize, part: &mut [f64]) {
    if C > 0 {
        // The sums in local arrays the compiler keeps in vector registers
        // (the same order of additions per channel, from zero).
        let (mut s1, mut s2) = ([0f64; C], [0f64; C]);
        let pivot: &[f32; C] = pivot[..C].try_into().expect("C pivots");
        for row in chunk.chunks_exact(C) {
            let row: &[f32; C] = row.try_into().expect("rows of C values");
            for ch in 0..C {
                let d = (row[ch] - pivot[ch]) as f64;
                s1[ch] += d;
                s2[ch] += d * d;
            }
        }
        for ch in 0..C {
            part[ch] += s1[ch];
            part[C + ch] += s2[ch];
        }
        return;
    }
    let (s1, s2) = part.split_at_mut(c);
    let (s1, s2, pivot) = (&mut s1[..c], &mut s2[..c], &pivot[..c]);
    for row in chunk.chunks_exact(c) {
        for ch in 0..c {
            let d = (row[ch] - pivot[ch]) as f64;
            s1[ch] += d;
            s2[ch] += d * d;
        }
    }
}

/// The forward pass over one chunk: `out = relu?((x - mean) * scale + beta
/// + r)`, `mask` (if any) 1 where the ReLU let the value through.
struct Normalise<'a> {
    c: usize,
    mean: &'a [f32],
    scale: &'a [f32],
    beta: &'a [f32],
    relu: bool,
}

impl Normalise<'_> {
    fn chunk(&self, x: &[f32], r: Option<&[f32]>, out: &mut [f32], mask: Option<&mut [u8]>) {
        normalise_any(self, x, r, out, mask)
    }
}

/// [`Normalise::chunk`] for `C` channels (`C == 0`: at run time).
#[inline(always)]
fn normalise_chunk<const C: usize>(
    p: &Normalise,
    x: &[f32],
    r: Option<&[f32]>,
    out: &mut [f32],
    mask: Option<&mut [u8]>,
) {
    let c = if C == 0 { p.c } else { C };
    let (mean, scale, beta) = (&p.mean[..c], &p.scale[..c], &p.beta[..c]);
    for (i, (row, dst)) in x.chunks_exact(c).zip(out.chunks_exact_mut(c)).enumerate() {
        let dst = &mut dst[..c];
        for ch in 0..c {
            dst[ch] = (row[ch] - mean[ch]) * scale[ch] + beta[ch];
        }
        if let Some(r) = r {
            for (d, v) in dst.iter_mut().zip(&r[i * c..][..c]) {
                *d += *v;
            }
        }
    }
    if !p.relu {
        return;
    }
    match mask {
        Some(mask) => {
            for (v, m) in out.iter_mut().zip(mask) {
                *m = u8::from(*v > 0.0);
                *v = v.max(0.0);
            }
        }
        None => out.iter_mut().for_each(|v| *v = v.max(0.0)),
    }
}

/// Masks `g` by the ReLU's `mask` in place and adds, per channel, `sum(g')`
/// to `part[..c]` and `sum(g' * xhat)` to `part[c..]` (`C == 0`: `c` at run
/// time).
#[inline(always)]
fn grad_sums<const C: usize>(
    c: usize,
    (x, g, mask): (&[f32], &mut [f32], Option<&[u8]>),
    (mean, inv): (&[f32], &[f32]),
    part: &mut [f64],
) {
    let c = if C == 0 { c } else { C };
    if let Some(mask) = mask {
        for (v, m) in g.iter_mut().zip(mask) {
            *v = if *m != 0 { *v } else { 0.0 };
        }
    }
    if C > 0 {
        // As in `shifted_sums`: local sums in vector registers.
        let (mut s1, mut s2) = ([0f64; C], [0f64; C]);
        let mean: &[f32; C] = mean[..C].try_into().expect("C means");
        let inv: &[f32; C] = inv[..C].try_into().expect("C scales");
        for (row, gr) in x.chunks_exact(C).zip(g.chunks_exact(C)) {
            let row: &[f32; C] = row.try_into().expect("rows of C values");
            let gr: &[f32; C] = gr.try_into().expect("rows of C values");
            for ch in 0..C {
                let xhat = (row[ch] - mean[ch]) * inv[ch];
                s1[ch] += gr[ch] as f64;
                s2[ch] += (gr[ch] * xhat) as f64;
            }
        }
        for ch in 0..C {
            part[ch] += s1[ch];
            part[C + ch] += s2[ch];
        }
        return;
    }
    let (s1, s2) = part.split_at_mut(c);
    let (s1, s2, mean, inv) = (&mut s1[..c], &mut s2[..c], &mean[..c], &inv[..c]);
    for (row, gr) in x.chunks_exact(c).zip(g.chunks_exact(c)) {
        for ch in 0..c {
            let xhat = (row[ch] - mean[ch]) * inv[ch];
            s1[ch] += gr[ch] as f64;
            s2[ch] += (gr[ch] * xhat) as f64;
        }
    }
}

/// `gx += scale * (g' - mean_g - xhat * mean_gx)` (or `gx =` when not
/// `ADD`) over one chunk, with the
/// per-channel `mean_g = sum(g') / n` and `mean_gx = sum(g' xhat) / n` (both
/// zero for given statistics).
#[inline(always)]
fn input_grad_chunk<const C: usize, const ADD: bool>(
    c: usize,
    (x, g, gx): (&[f32], &[f32], &mut [f32]),
    (mean, inv, scale): (&[f32], &[f32], &[f32]),
    (mean_g, mean_gx): (&[f32], &[f32]),
) {
    let c = if C == 0 { c } else { C };
    let (mean, inv, scale) = (&mean[..c], &inv[..c], &scale[..c]);
    let (mean_g, mean_gx) = (&mean_g[..c], &mean_gx[..c]);
    for ((row, gr), dst) in x
        .chunks_exact(c)
        .zip(g.chunks_exact(c))
        .zip(gx.chunks_exact_mut(c))
    {
        let dst = &mut dst[..c];
        for ch in 0..c {
            let xhat = (row[ch] - mean[ch]) * inv[ch];
            let v = scale[ch] * (gr[ch] - mean_g[ch] - xhat * mean_gx[ch]);
            dst[ch] = if ADD { dst[ch] + v } else { v };
        }
    }
}

/// Batch norm on host slices: [`batch_norm_cpu`]'s forward and backward
/// passes for callers that keep their activations in their own buffers (the
/// residual block op, [`super::block_op`]). It holds what the backward pass
/// needs besides the input: the statistics and the ReLU's mask.
pub(super) struct HostNorm {
    c: usize,
    st: Stats,
    mask: Vec<u8>,
}

impl HostNorm {
    /// Writes `relu?((x - mean) * scale + beta + residual?)` for the rows of
    /// `xs` (`c` values each) into every value of `out`; keeps the ReLU's
    /// mask when `keep_mask` (for a backward pass).
    pub(super) fn forward(
        (xs, c): (&[f32], usize),
        (gamma, beta): (&[f32], &[f32]),
        residual: Option<&[f32]>,
        opts: &BatchNormOpts,
        keep_mask: bool,
        out: &mut [f32],
    ) -> Self {
        let st = statistics(xs, c, gamma, opts);
        let keep_mask = keep_mask && opts.relu;
        let rows = xs.len() / c.max(1);
        let mut mask = vec![0u8; if keep_mask { rows * c } else { 0 }];
        let pass = Normalise {
            c,
            mean: &st.mean,
            scale: &st.scale,
            beta,
            relu: opts.relu,
        };
        let span = CHUNK_ROWS * c.max(1);
        let mut masks: Vec<Option<&mut [u8]>> = match keep_mask {
            true => mask.chunks_mut(span).map(Some).collect(),
            false => Vec::new(),
        };
        masks.resize_with(rows.div_ceil(CHUNK_ROWS), || None);
        out.par_chunks_mut(span)
            .zip(xs.par_chunks(span))
            .zip(masks)
            .enumerate()
            .for_each(|(i, ((dst, src), m))| {
                let r = residual.map(|r| &r[i * span..][..src.len()]);
                pass.chunk(src, r, dst, m);
            });
        HostNorm { c, st, mask }
    }

    /// The batch's moments (`None` for given statistics).
    pub(super) fn moments(&self) -> Option<Moments> {
        self.st.moments.clone()
    }

    /// Masks the output gradient `g` by the ReLU in place and returns the
    /// gradients of `gamma` and `beta`, in f64.
    pub(super) fn param_grads(&self, xs: &[f32], g: &mut [f32]) -> ParamGrads {
        let c = self.c;
        let span = CHUNK_ROWS * c;
        let rows = xs.len() / c.max(1);
        let mut partials = vec![0f64; rows.div_ceil(CHUNK_ROWS) * 2 * c];
        let stats = (self.st.mean.as_slice(), self.st.inv.as_slice());
        let mask = &self.mask;
        g.par_chunks_mut(span)
            .zip(xs.par_chunks(span))
            .zip(partials.par_chunks_mut(2 * c))
            .enumerate()
            .for_each(|(i, ((g, x), part))| {
                let m = (!mask.is_empty()).then(|| &mask[i * span..][..x.len()]);
                grad_sums_any(c, (x, g, m), stats, part)
            });
        let (mut beta, mut gamma) = (vec![0f64; c], vec![0f64; c]);
        for part in partials.chunks_exact(2 * c) {
            for ch in 0..c {
                beta[ch] += part[ch];
                gamma[ch] += part[c + ch];
            }
        }
        ParamGrads { gamma, beta }
    }

    /// Adds the input's gradient to `gx` (writes it over `gx` when not
    /// `add`), from the masked output gradient `g` and the parameter
    /// gradients of [`HostNorm::param_grads`].
    pub(super) fn input_grad(
        &self,
        (xs, g): (&[f32], &[f32]),
        d: &ParamGrads,
        gx: &mut [f32],
        add: bool,
    ) {
        let (c, st) = (self.c, &self.st);
        let span = CHUNK_ROWS * c;
        let n = (xs.len() / c.max(1)) as f64;
        let (mean_g, mean_gx): (Vec<f32>, Vec<f32>) = match st.moments {
            Some(_) => (
                d.beta.iter().map(|v| (v / n) as f32).collect(),
                d.gamma.iter().map(|v| (v / n) as f32).collect(),
            ),
            None => (vec![0.0; c], vec![0.0; c]),
        };
        let coef = (st.mean.as_slice(), st.inv.as_slice(), st.scale.as_slice());
        gx.par_chunks_mut(span)
            .zip(xs.par_chunks(span))
            .zip(g.par_chunks(span))
            .for_each(|((gx, x), g)| {
                let means = (mean_g.as_slice(), mean_gx.as_slice());
                input_grad_any(c, (x, g, gx), coef, means, add)
            });
    }
}

/// The gradients of a batch norm's `gamma` and `beta`.
pub(super) struct ParamGrads {
    pub gamma: Vec<f64>,
    pub beta: Vec<f64>,
}

/// `dst += v`, rounding `v` to f32.
pub(super) fn add_f64(dst: &mut [f32], v: &[f64]) {
    dst.iter_mut().zip(v).for_each(|(a, b)| *a += *b as f32);
}

/// `dst += v`, in parallel chunks of `span`.
pub(super) fn add_into(dst: &mut [f32], v: &[f32], span: usize) {
    dst.par_chunks_mut(span.max(1))
        .zip(v.par_chunks(span.max(1)))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, b)| *a += *b));
}

/// Batch norm on the CPU (see the module doc): `x: (rows, C)` on a tape,
/// `gamma`, `beta: (C,)`, an optional `residual: (rows, C)` added before the
/// ReLU. Returns the output and, with the batch's statistics, its moments.
/// Backward for `x`, `gamma`, `beta` and the residual.
pub fn batch_norm_cpu<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Matrix<Cpu, T>,
    gamma: &Tensor<(usize,), f32, Cpu>,
    beta: &Tensor<(usize,), f32, Cpu>,
    residual: Option<&Matrix<Cpu>>,
    opts: BatchNormOpts,
) -> (Matrix<Cpu, T>, Option<Moments>) {
    let (x, mut tape) = x.split_tape();
    let (rows, c) = *x.shape();
    assert!(
        gamma.shape().0 == c
            && beta.shape().0 == c
            && residual.is_none_or(|r| *r.shape() == (rows, c))
            && opts
                .running
                .is_none_or(|(m, v)| m.len() == c && v.len() == c),
        "batch_norm: input {rows}x{c}, gamma {:?}, beta {:?}",
        gamma.shape(),
        beta.shape()
    );
    let xs = host_copy(&x);
    let (gs, bs) = (host_copy(gamma), host_copy(beta));
    let mut out = vec![0f32; rows * c];
    let norm = {
        let rs = residual.map(host_copy);
        let keep_mask = T::OWNS_TAPE;
        HostNorm::forward(
            (&xs, c),
            (&gs, &bs),
            rs.as_deref(),
            &opts,
            keep_mask,
            &mut out,
        )
    };
    let moments = norm.moments();
    let out = dev.tensor_from_vec(out, (rows, c));
    if !T::OWNS_TAPE || rows == 0 {
        return (out.put_tape(tape), moments);
    }
    let ghosts = (x.ghost(), gamma.ghost(), beta.ghost(), out.ghost());
    let r_ghost = residual.map(|r| r.ghost());
    let dev = dev.clone();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        let (x_ghost, gamma_ghost, beta_ghost, out_ghost) = &ghosts;
        // This op made `out`, so every reader of its gradient has run: take
        // the buffer (and mask it in place).
        let empty = dev.try_alloc_len(0)?;
        let mut g = std::mem::replace(grads.get_or_alloc_mut(out_ghost)?, empty);
        let d = norm.param_grads(&xs, &mut g);
        add_f64(grads.get_or_alloc_mut(gamma_ghost)?, &d.gamma);
        add_f64(grads.get_or_alloc_mut(beta_ghost)?, &d.beta);
        norm.input_grad((&xs, &g), &d, grads.get_or_alloc_mut(x_ghost)?, true);
        if let Some(r_ghost) = &r_ghost {
            add_into(grads.get_or_alloc_mut(r_ghost)?, &g, CHUNK_ROWS * c);
        }
        Ok(())
    });
    (out.put_tape(tape), moments)
}

/// [`batch_norm_cpu`]'s maths composed from dfdx's ops (so its backward is
/// dfdx's): works on every dfdx device.
pub fn batch_norm_generic<D: Device<f32>, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    gamma: &Tensor<(usize,), f32, D>,
    beta: &Tensor<(usize,), f32, D>,
    residual: Option<&Matrix<D>>,
    opts: BatchNormOpts,
) -> (Matrix<D, T>, Option<Moments>) {
    let shape = *x.shape();
    let (y, moments) = match opts.running {
        None => {
            let (y, m) = normalise_batch(x);
            (y, Some(m))
        }
        Some((mean, var)) => {
            let c = shape.1;
            let inv: Vec<f32> = var.iter().map(|v| 1.0 / (v + EPS).sqrt()).collect();
            let mean = dev.tensor_from_vec(mean.to_vec(), (c,));
            let inv = dev.tensor_from_vec(inv, (c,));
            let y = (x - mean.broadcast_like::<_, Axis<0>>(&shape))
                * inv.broadcast_like::<_, Axis<0>>(&shape);
            (y, None)
        }
    };
    let y = y * gamma.clone().broadcast_like::<_, Axis<0>>(&shape)
        + beta.clone().broadcast_like::<_, Axis<0>>(&shape);
    let y = match residual {
        Some(r) => y + r.clone(),
        None => y,
    };
    let y = if opts.relu { y.relu() } else { y };
    (y, moments)
}

/// `(x - mean) / sqrt(var + eps)` with the batch's statistics, and those
/// statistics. The tape threads through one chain; the statistics join it
/// untaped (their gradients still flow: dfdx records both operands of a
/// binary op, by id).
fn normalise_batch<D: Device<f32>, T: Tape<f32, D>>(x: Matrix<D, T>) -> (Matrix<D, T>, Moments) {
    let shape = *x.shape();
    let (x, tape) = x.split_tape();
    let (mean, tape) = x
        .clone()
        .put_tape(tape)
        .mean::<(usize,), Axis<0>>()
        .split_tape();
    let (centred, tape) =
        (x.put_tape(tape) - mean.clone().broadcast_like::<_, Axis<0>>(&shape)).split_tape();
    let (var, tape) = centred
        .clone()
        .put_tape(tape)
        .square()
        .mean::<(usize,), Axis<0>>()
        .split_tape();
    let (inv, tape) = (var.clone().put_tape(tape) + EPS)
        .sqrt()
        .recip()
        .split_tape();
    let moments = Moments {
        mean: mean.as_vec(),
        var: var.as_vec(),
    };
    let y = centred.put_tape(tape) * inv.broadcast_like::<_, Axis<0>>(&shape);
    (y, moments)
}

#[cfg(test)]
mod tests {
    use super::super::kernels::tests::{close, random};
    use super::*;

    /// One case: rows, channels, given statistics, ReLU, residual.
    #[derive(Clone, Copy, Debug)]
    struct Case {
        rows: usize,
        c: usize,
        eval: bool,
        relu: bool,
        residual: bool,
    }

    /// Output, moments and gradients (x, gamma, beta, residual) of
    /// `sum(bn(x) * r)`, by the CPU op or the composed one.
    fn pass(fused: bool, k: Case) -> Vec<Vec<f32>> {
        let dev = Cpu::seed_from_u64(0);
        let x = random(&dev, (k.rows, k.c), 1);
        // An offset, so the pivot of the shifted sums matters.
        let x = x + 3.0;
        let gamma = random(&dev, (k.c,), 2) + 1.0;
        let beta = random(&dev, (k.c,), 3);
        let res = random(&dev, (k.rows, k.c), 4);
        let weights = random(&dev, (k.rows, k.c), 5);
        let mean: Vec<f32> = (0..k.c).map(|i| 3.0 + i as f32 / 10.0).collect();
        let var: Vec<f32> = (0..k.c).map(|i| 0.2 + i as f32 / 7.0).collect();
        let opts = BatchNormOpts {
            running: k.eval.then_some((mean.as_slice(), var.as_slice())),
            relu: k.relu,
        };
        let r = k.residual.then_some(&res);
        let apply = |x: Matrix<Cpu, OwnedTape<f32, Cpu>>| match fused {
            true => batch_norm_cpu(&dev, x, &gamma, &beta, r, opts),
            false => batch_norm_generic(&dev, x, &gamma, &beta, r, opts),
        };
        let (y, moments) = apply(x.leaky_trace());
        let loss = (y * weights.clone()).sum::<Rank0, _>();
        let grads = loss.backward();
        let mut out = vec![];
        if let Some(m) = moments {
            out.extend([m.mean, m.var]);
        }
        let (y, _) = match fused {
            true => batch_norm_cpu(&dev, x.clone(), &gamma, &beta, r, opts),
            false => batch_norm_generic(&dev, x.clone(), &gamma, &beta, r, opts),
        };
        out.push(y.as_vec());
        out.push(grads.get(&x).as_vec());
        if k.residual {
            out.push(grads.get(&res).as_vec());
        }
        out.push(grads.get(&gamma).as_vec());
        out.push(grads.get(&beta).as_vec());
        out
    }

    #[test]
    fn cpu_batch_norm_matches_the_composed_ops() {
        // Tolerance: |a - b| <= 1e-4 (1 + max(|a|, |b|)); the two sum in
        // different orders and precisions (f64 chunk sums against f32).
        let shapes = [(6, 3), (2500, 16), (CHUNK_ROWS, 8), (300, 5), (1, 4)];
        for (rows, c) in shapes {
            for eval in [false, true] {
                for relu in [false, true] {
                    for residual in [false, true] {
                        let k = Case {
                            rows,
                            c,
                            eval,
                            relu,
                            residual,
                        };
                        if rows == 1 && !eval {
                            continue; // one value per channel: the gradient is 0/0-prone
                        }
                        let ours = pass(true, k);
                        let theirs = pass(false, k);
                        assert_eq!(ours.len(), theirs.len(), "{k:?}");
                        for (a, b) in ours.iter().zip(&theirs) {
                            close(a, b, 1e-4);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn cpu_batch_norm_is_the_same_for_any_thread_count() {
        let k = Case {
            rows: 5 * CHUNK_ROWS + 17,
            c: 16,
            eval: false,
            relu: true,
            residual: true,
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| pass(true, k))
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(2));
    }

    #[test]
    fn moments_known_values() {
        // Channel 0: 1, 3, 5, 7 (mean 4, var 5); channel 1: 1e4 + 0, 1, 2, 3
        // (mean 1e4 + 1.5, var 1.25, exact despite the large offset).
        let xs = [1.0, 1e4, 3.0, 1e4 + 1.0, 5.0, 1e4 + 2.0, 7.0, 1e4 + 3.0];
        let (mean, var) = moments(&xs, 2);
        assert_eq!(mean, vec![4.0, 1e4 + 1.5]);
        assert_eq!(var, vec![5.0, 1.25]);
    }
}

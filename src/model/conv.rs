//! The convolution block as one op: 3x3 convolution (padding 1) + bias +
//! ReLU, optionally followed by a 2x2 stride-2 max-pool.
//!
//! The unfused path (`im2col`, then the affine op, then the pool, see
//! [`super::ops`]) materialises a whole batch's patch matrix, `9 * C` floats
//! per pixel, its gradient and the full-size activations, and passes each
//! through memory several times. On the CPU, [`conv3x3_cpu`] instead works
//! through the batch in chunks of images whose patch matrix fits in the core's
//! cache, one chunk per rayon task:
//! - forward: build the chunk's patches in a per-thread scratch buffer, start
//!   the output from the bias rows, accumulate `patches W^T` with gemm on that
//!   thread, apply the ReLU, and pool into the output. It keeps, per output
//!   value, one byte for the backward pass: which of the four window positions
//!   won (or that the ReLU was off), so no activation is stored;
//! - backward: scatter the output gradient to the winning positions, rebuild
//!   the chunk's patches, accumulate `dW` and `db` into a per-chunk partial
//!   and, where the input needs a gradient, `dPatches = G W` folded back onto
//!   the chunk's own input pixels (`col2im`; chunks hold disjoint images).
//!   The partials are then summed in chunk order.
//!
//! The chunking depends on the geometry only, each chunk's gemm runs on one
//! thread, and the partial sums are reduced in a fixed order, so the result
//! is bit-identical for any thread count.
//!
//! [`conv3x3_generic`] is the same maths from the gather-based ops and dfdx's
//! matmul, for every other device.

use std::cell::RefCell;

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use rayon::prelude::*;

use super::kernels::{gemm_acc_with, host_copy, linear_generic, LinearOpts, Operand};
use super::ops::{im2col_gather, max_pool2_gather, Backend, ImageGeom, Matrix};

/// What [`crate::model::Backend::conv3x3`] computes besides conv + bias + ReLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvOpts {
    /// Follow the convolution with a 2x2 stride-2 max-pool (sizes floored).
    pub pool: bool,
    /// Compute the gradient of the input (the network's raw input needs none).
    pub input_grad: bool,
}

/// A chunk's patch matrix aims at this many floats (512 KiB), so it stays in
/// a core's L2 cache while gemm reads it.
const CHUNK_PATCH_FLOATS: usize = 128 * 1024;

/// The per-output-value code of a pooled output whose ReLU was off.
const RELU_OFF: u8 = u8::MAX;

/// Calls `$f::<N>` with the channel count `$c` as a constant for the common
/// counts (so the compiler turns the short per-pixel copies and loops into
/// fixed-size vector code instead of calls to `memcpy`), else `$f::<0>`,
/// which reads it at run time; the arguments follow.
macro_rules! with_channels {
    ($c:expr, $f:ident, $($arg:expr),*) => {
        match $c {
            1 => $f::<1>($($arg),*),
            3 => $f::<3>($($arg),*),
            4 => $f::<4>($($arg),*),
            8 => $f::<8>($($arg),*),
            16 => $f::<16>($($arg),*),
            32 => $f::<32>($($arg),*),
            64 => $f::<64>($($arg),*),
            _ => $f::<0>($($arg),*),
        }
    };
}

/// Images per chunk: a function of the geometry alone (never the thread
/// count), so the sums of partial gradients are the same on every machine.
fn images_per_chunk(g: &ImageGeom) -> usize {
    let per_image = g.height * g.width * 9 * g.channels;
    (CHUNK_PATCH_FLOATS / per_image.max(1)).clamp(1, g.batch.max(1))
}

thread_local! {
    /// Per-thread scratch for patches and chunk gradients, kept between
    /// calls (rayon's worker threads live for the whole run).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` on this thread's scratch buffer of at least `len` floats
/// (contents unspecified). `f` must not re-enter rayon.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    SCRATCH.with(|cell| {
        let mut buf = cell.borrow_mut();
        if buf.len() < len {
            buf.resize(len, 0.0);
        }
        f(&mut buf[..len])
    })
}

/// Writes the 3x3 patches (zero padding 1) of consecutive channels-last
/// `h x w x c` images in `src` into `dst`, one row of `9c` values per pixel,
/// column `tap * c + channel` with `tap = 3 dy + dx`.
fn fill_patches(src: &[f32], h: usize, w: usize, c: usize, dst: &mut [f32]) {
    with_channels!(c, fill_patches_for, src, h, w, c, dst)
}

/// [`fill_patches`] for `C` channels (`C == 0`: `c` at run time).
fn fill_patches_for<const C: usize>(src: &[f32], h: usize, w: usize, c: usize, dst: &mut [f32]) {
    let c = if C == 0 { c } else { C };
    let k = 9 * c;
    for (img, out) in src
        .chunks_exact(h * w * c)
        .zip(dst.chunks_exact_mut(h * w * k))
    {
        for y in 0..h {
            for x in 0..w {
                let row = &mut out[(y * w + x) * k..][..k];
                for dy in 0..3 {
                    let taps = &mut row[dy * 3 * c..][..3 * c];
                    // Source row in padded coordinates: valid for 1..=h.
                    let sy = y + dy;
                    if sy == 0 || sy > h {
                        taps.fill(0.0);
                        continue;
                    }
                    let line = &img[(sy - 1) * w * c..][..w * c];
                    if c == 1 && x >= 1 && x + 1 < w {
                        // Three scalar stores: a `memcpy` call per three
                        // floats would cost more than the copy.
                        taps[0] = line[x - 1];
                        taps[1] = line[x];
                        taps[2] = line[x + 1];
                        continue;
                    }
                    if x >= 1 && x + 1 < w {
                        // The three taps are three adjacent pixels.
                        taps.copy_from_slice(&line[(x - 1) * c..][..3 * c]);
                        continue;
                    }
                    for dx in 0..3 {
                        let tap = &mut taps[dx * c..][..c];
                        let sx = x + dx;
                        if sx == 0 || sx > w {
                            tap.fill(0.0);
                        } else if c == 1 {
                            tap[0] = line[sx - 1];
                        } else {
                            tap.copy_from_slice(&line[(sx - 1) * c..][..c]);
                        }
                    }
                }
            }
        }
    }
}

/// The adjoint of [`fill_patches`]: adds each patch value back onto the pixel
/// it was copied from (`gx += col2im(dpatches)`).
fn add_patches(dpatches: &[f32], h: usize, w: usize, c: usize, gx: &mut [f32]) {
    with_channels!(c, add_patches_for, dpatches, h, w, c, gx)
}

/// [`add_patches`] for `C` channels (`C == 0`: `c` at run time).
fn add_patches_for<const C: usize>(dpatches: &[f32], h: usize, w: usize, c: usize, gx: &mut [f32]) {
    let c = if C == 0 { c } else { C };
    let k = 9 * c;
    for (img, rows) in gx
        .chunks_exact_mut(h * w * c)
        .zip(dpatches.chunks_exact(h * w * k))
    {
        for y in 0..h {
            for x in 0..w {
                let row = &rows[(y * w + x) * k..][..k];
                for dy in 0..3 {
                    let sy = y + dy;
                    if sy == 0 || sy > h {
                        continue;
                    }
                    let line = &mut img[(sy - 1) * w * c..][..w * c];
                    for dx in 0..3 {
                        let sx = x + dx;
                        if sx == 0 || sx > w {
                            continue;
                        }
                        let tap = &row[(dy * 3 + dx) * c..][..c];
                        for (a, v) in line[(sx - 1) * c..][..c].iter_mut().zip(tap) {
                            *a += *v;
                        }
                    }
                }
            }
        }
    }
}

/// Geometry of one call, shared by the forward and backward passes.
#[derive(Clone, Copy)]
struct Plan {
    /// Input geometry.
    g: ImageGeom,
    /// Output channels.
    o: usize,
    /// Output pixels per image (after the pool, if any).
    out_hw: usize,
    /// Images per chunk.
    per: usize,
    pool: bool,
    /// A chunk's conv output (and its gradient) is stored channel-major,
    /// `o x rows`, rather than pixel-major, `rows x o`.
    channel_major: bool,
}

/// Below this many output channels a chunk's conv output is channel-major:
/// gemm's kernels run along the destination's long side, which is then the
/// pixels; with many channels the pixel-major layout pools and copies faster.
const CHANNEL_MAJOR_BELOW: usize = 32;

impl Plan {
    fn k(&self) -> usize {
        9 * self.g.channels
    }
    fn hw(&self) -> usize {
        self.g.height * self.g.width
    }
    fn chunks(&self) -> usize {
        self.g.batch.div_ceil(self.per)
    }
    /// Images in chunk `ci`.
    fn images(&self, ci: usize) -> usize {
        self.per.min(self.g.batch - ci * self.per)
    }
    /// Strides `(pixel, channel)` of a chunk's conv buffer of `rows` pixels.
    fn strides(&self, rows: usize) -> (usize, usize) {
        match self.channel_major {
            true => (1, rows),
            false => (self.o, 1),
        }
    }
    /// A chunk's conv buffer as the `rows x o` matrix it holds.
    fn conv_view<'a>(&self, buf: &'a [f32], rows: usize) -> Operand<'a> {
        match self.channel_major {
            true => Operand::transposed(buf, rows),
            false => Operand::rows(buf, self.o),
        }
    }
}

/// Pools one chunk's ReLU'd conv output (`n` images of `h x w x o`) into
/// `dst` and records the winning window position per output value.
fn pool_chunk(p: &Plan, n: usize, conv: &[f32], dst: &mut [f32], code: &mut [u8]) {
    with_channels!(p.o, pool_chunk_for, p, n, conv, dst, code)
}

/// [`pool_chunk`] for `O` output channels (`O == 0`: `p.o` at run time).
fn pool_chunk_for<const O: usize>(
    p: &Plan,
    n: usize,
    conv: &[f32],
    dst: &mut [f32],
    code: &mut [u8],
) {
    let (h, w) = (p.g.height, p.g.width);
    let o = if O == 0 { p.o } else { O };
    let (ho, wo) = (h / 2, w / 2);
    let (ps, cs) = p.strides(n * h * w);
    for i in 0..n {
        for y in 0..ho {
            for x in 0..wo {
                let top = i * h * w + 2 * y * w + 2 * x;
                // The window in the unfused pool's order.
                let at = [top, top + 1, top + w, top + w + 1].map(|px| px * ps);
                let od = ((i * ho + y) * wo + x) * o;
                let (dst, code) = (&mut dst[od..][..o], &mut code[od..][..o]);
                let window = |ch: usize| at.map(|a| conv[a + ch * cs]);
                if cs == 1 {
                    // Pixel-major: the four pixels' channels are contiguous.
                    let q = at.map(|a| &conv[a..][..o]);
                    for ch in 0..o {
                        (dst[ch], code[ch]) = pool_window([q[0][ch], q[1][ch], q[2][ch], q[3][ch]]);
                    }
                } else {
                    for ch in 0..o {
                        (dst[ch], code[ch]) = pool_window(window(ch));
                    }
                }
            }
        }
    }
}

/// The maximum of a window and its code: the position that won (the first
/// maximum wins, as in the unfused pool), or [`RELU_OFF`].
#[inline(always)]
fn pool_window(q: [f32; 4]) -> (f32, u8) {
    let (mut best, mut value) = (0u8, q[0]);
    for (k, v) in q.iter().enumerate().skip(1) {
        if *v > value {
            best = k as u8;
            value = *v;
        }
    }
    (value, if value > 0.0 { best } else { RELU_OFF })
}

/// The gradient of one chunk's conv output (`n * h * w x o`) from the
/// gradient of its (pooled) output and the forward's codes.
fn conv_grad_chunk(p: &Plan, n: usize, g_out: &[f32], code: &[u8], gconv: &mut [f32]) {
    with_channels!(p.o, conv_grad_chunk_for, p, n, g_out, code, gconv)
}

/// [`conv_grad_chunk`] for `O` output channels (`O == 0`: `p.o` at run time).
fn conv_grad_chunk_for<const O: usize>(
    p: &Plan,
    n: usize,
    g_out: &[f32],
    code: &[u8],
    gconv: &mut [f32],
) {
    let (h, w) = (p.g.height, p.g.width);
    let o = if O == 0 { p.o } else { O };
    let (ps, cs) = p.strides(n * h * w);
    if !p.pool {
        for px in 0..n * h * w {
            let (code, g_out) = (&code[px * o..][..o], &g_out[px * o..][..o]);
            for ch in 0..o {
                gconv[px * ps + ch * cs] = if code[ch] != 0 { g_out[ch] } else { 0.0 };
            }
        }
        return;
    }
    gconv.fill(0.0);
    let (ho, wo) = (h / 2, w / 2);
    for i in 0..n {
        for y in 0..ho {
            for x in 0..wo {
                let od = ((i * ho + y) * wo + x) * o;
                let (code, g_out) = (&code[od..][..o], &g_out[od..][..o]);
                let top = i * h * w + 2 * y * w + 2 * x;
                let at = [top, top + 1, top + w, top + w + 1].map(|px| px * ps);
                for ch in 0..o {
                    if let Some(a) = at.get(code[ch] as usize) {
                        gconv[a + ch * cs] = g_out[ch];
                    }
                }
            }
        }
    }
}

/// `pool?(relu(conv3x3(x) + b))` for channels-last `x: (rows, C)` with the
/// geometry `g`, `w: (O, 9C)` (column `tap * C + c`), `b: (O,)`; the result is
/// `(rows', O)` channels-last, `rows'` the (pooled) pixel count. Backward on
/// `x`'s tape for `x` (if `opts.input_grad`), `w` and `b`.
pub fn conv3x3_cpu<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Matrix<Cpu, T>,
    w: &Matrix<Cpu>,
    b: &Tensor<(usize,), f32, Cpu>,
    g: ImageGeom,
    opts: ConvOpts,
) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let (c, o) = (g.channels, w.shape().0);
    assert!(
        *x.shape() == (g.rows(), c) && w.shape().1 == 9 * c && b.shape().0 == o,
        "conv3x3: input {:?} for {g:?}, weight {:?}, bias {:?}",
        x.shape(),
        w.shape(),
        b.shape()
    );
    let out_g = if opts.pool { g.pooled() } else { g };
    let p = Plan {
        g,
        o,
        out_hw: out_g.height * out_g.width,
        per: images_per_chunk(&g),
        pool: opts.pool,
        channel_major: o < CHANNEL_MAJOR_BELOW,
    };
    let out_len = g.batch * p.out_hw * o;
    if out_len == 0 || g.rows() == 0 {
        let out = dev.tensor_from_vec(vec![0f32; out_len], (out_g.rows(), o));
        return out.put_tape(tape);
    }
    let (xs, ws, bias) = (host_copy(&x), host_copy(w), host_copy(b));
    let (k, hw) = (p.k(), p.hw());
    let mut out = vec![0f32; out_len];
    let mut code = vec![0u8; out_len];
    out.par_chunks_mut(p.per * p.out_hw * o)
        .zip(code.par_chunks_mut(p.per * p.out_hw * o))
        .zip(xs.par_chunks(p.per * hw * c))
        .for_each(|((dst, code), src)| {
            let n = src.len() / (hw * c);
            let rows = n * hw;
            with_scratch(rows * (k + o), |s| {
                let (patches, conv) = s.split_at_mut(rows * k);
                fill_patches(src, g.height, g.width, c, patches);
                if p.channel_major {
                    // `o x rows` = W patches^T.
                    for (plane, b) in conv.chunks_exact_mut(rows).zip(&bias) {
                        plane.fill(*b);
                    }
                    let (wa, pt) = (Operand::rows(&ws, k), Operand::transposed(patches, k));
                    gemm_acc_with(o, rows, k, conv, wa, pt, false);
                } else {
                    // `rows x o` = patches W^T.
                    for r in conv.chunks_exact_mut(o) {
                        r.copy_from_slice(&bias);
                    }
                    let (pa, wt) = (Operand::rows(patches, k), Operand::transposed(&ws, k));
                    gemm_acc_with(rows, o, k, conv, pa, wt, false);
                }
                conv.iter_mut().for_each(|v| *v = v.max(0.0));
                if p.pool {
                    pool_chunk(&p, n, conv, dst, code);
                } else {
                    let (ps, cs) = p.strides(rows);
                    for (px, (dst, code)) in dst
                        .chunks_exact_mut(o)
                        .zip(code.chunks_exact_mut(o))
                        .enumerate()
                    {
                        for ch in 0..o {
                            let v = conv[px * ps + ch * cs];
                            dst[ch] = v;
                            code[ch] = u8::from(v > 0.0);
                        }
                    }
                }
            });
        });
    let out = dev.tensor_from_vec(out, (out_g.rows(), o));
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (x_ghost, w_ghost, b_ghost, out_ghost) = (x.ghost(), w.ghost(), b.ghost(), out.ghost());
    let dev = dev.clone();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        // This op made `out`, so every reader of its gradient has run: take
        // the buffer instead of copying it.
        let empty = dev.try_alloc_len(0)?;
        let g_out = std::mem::replace(grads.get_or_alloc_mut(&out_ghost)?, empty);
        let mut partials = vec![0f32; p.chunks() * (o * k + o)];
        let gx: Option<&mut [f32]> = match opts.input_grad {
            true => Some(grads.get_or_alloc_mut(&x_ghost)?),
            false => None,
        };
        let gx_chunks: Vec<Option<&mut [f32]>> = match gx {
            Some(s) => s.chunks_mut(p.per * hw * c).map(Some).collect(),
            None => (0..p.chunks()).map(|_| None).collect(),
        };
        gx_chunks
            .into_par_iter()
            .zip(partials.par_chunks_mut(o * k + o))
            .enumerate()
            .for_each(|(ci, (gx, part))| {
                let n = p.images(ci);
                let rows = n * hw;
                let src = &xs[ci * p.per * hw * c..][..rows * c];
                let span = ci * p.per * p.out_hw * o..(ci * p.per + n) * p.out_hw * o;
                with_scratch(rows * (2 * k + o), |s| {
                    let (patches, rest) = s.split_at_mut(rows * k);
                    let (gconv, dpatches) = rest.split_at_mut(rows * o);
                    conv_grad_chunk(&p, n, &g_out[span.clone()], &code[span], gconv);
                    fill_patches(src, g.height, g.width, c, patches);
                    let view = p.conv_view(gconv, rows);
                    let (pw, pb) = part.split_at_mut(o * k);
                    gemm_acc_with(o, k, rows, pw, view.t(), Operand::rows(patches, k), false);
                    let (ps, cs) = p.strides(rows);
                    for px in 0..rows {
                        for (ch, b) in pb.iter_mut().enumerate() {
                            *b += gconv[px * ps + ch * cs];
                        }
                    }
                    if let Some(gx) = gx {
                        dpatches.fill(0.0);
                        let wb = Operand::rows(&ws, k);
                        gemm_acc_with(rows, k, o, dpatches, view, wb, false);
                        add_patches(dpatches, g.height, g.width, c, gx);
                    }
                });
            });
        let gw: &mut [f32] = grads.get_or_alloc_mut(&w_ghost)?;
        for part in partials.chunks_exact(o * k + o) {
            for (a, v) in gw.iter_mut().zip(&part[..o * k]) {
                *a += *v;
            }
        }
        let gb: &mut [f32] = grads.get_or_alloc_mut(&b_ghost)?;
        for part in partials.chunks_exact(o * k + o) {
            for (a, v) in gb.iter_mut().zip(&part[o * k..]) {
                *a += *v;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// [`conv3x3_cpu`]'s maths from the gather-based patches and pool and dfdx's
/// matmul: works on every dfdx device.
pub fn conv3x3_generic<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    w: &Matrix<D>,
    b: &Tensor<(usize,), f32, D>,
    g: ImageGeom,
    opts: ConvOpts,
) -> Matrix<D, T> {
    let patches = im2col_gather(dev, x, g);
    let linear = LinearOpts {
        relu: true,
        input_grad: opts.input_grad,
    };
    let y = linear_generic(patches, w, b, linear);
    if opts.pool {
        let channels = w.shape().0;
        max_pool2_gather(dev, y, ImageGeom { channels, ..g })
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::super::kernels::tests::{close, random};
    use super::*;

    /// Output and gradients (x, w, b) of sum(conv(x) * r), fused or generic.
    fn pass(fused: bool, g: ImageGeom, o: usize, opts: ConvOpts) -> [Vec<f32>; 4] {
        let dev = Cpu::seed_from_u64(0);
        let x = random(&dev, (g.rows(), g.channels), 1);
        let w = random(&dev, (o, 9 * g.channels), 2);
        let b = random(&dev, (o,), 3);
        let apply = |x: Matrix<Cpu, OwnedTape<f32, Cpu>>| {
            if fused {
                conv3x3_cpu(&dev, x, &w, &b, g, opts)
            } else {
                conv3x3_generic(&dev, x, &w, &b, g, opts)
            }
        };
        let y = apply(x.leaky_trace());
        let shape = *y.shape();
        let values = y.retaped::<NoneTape>().as_vec();
        let r = random(&dev, shape, 4);
        let grads = (apply(x.leaky_trace()) * r).sum::<Rank0, _>().backward();
        let gx = match opts.input_grad {
            true => grads.get(&x).as_vec(),
            false => Vec::new(),
        };
        [values, gx, grads.get(&w).as_vec(), grads.get(&b).as_vec()]
    }

    fn geom(batch: usize, channels: usize, height: usize, width: usize) -> ImageGeom {
        ImageGeom {
            batch,
            channels,
            height,
            width,
        }
    }

    #[test]
    fn fused_conv_matches_the_unfused_ops() {
        // Odd sizes (floored pools), one pixel wide, several chunks (the
        // 28x28x8 batch spans more than one), one channel, both layouts.
        let cases = [
            (geom(2, 3, 5, 4), 4),
            (geom(3, 1, 7, 7), 2),
            (geom(1, 2, 1, 3), 3),
            (geom(40, 8, 28, 28), 5),
            // Enough output channels for the pixel-major layout.
            (geom(3, 2, 6, 5), CHANNEL_MAJOR_BELOW + 1),
        ];
        for (g, o) in cases {
            for pool in [false, true] {
                if pool && (g.height < 2 || g.width < 2) {
                    continue;
                }
                for input_grad in [true, false] {
                    let opts = ConvOpts { pool, input_grad };
                    let ours = pass(true, g, o, opts);
                    let theirs = pass(false, g, o, opts);
                    for (a, b) in ours.iter().zip(&theirs) {
                        close(a, b, 1e-4);
                    }
                }
            }
        }
        assert!(
            images_per_chunk(&cases[3].0) < 40,
            "the last case spans chunks"
        );
    }

    #[test]
    fn fused_conv_is_the_same_for_any_thread_count() {
        let g = geom(24, 4, 12, 10);
        let opts = ConvOpts {
            pool: true,
            input_grad: true,
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool");
            pool.install(|| pass(true, g, 6, opts))
        };
        let one = run(1);
        assert_eq!(one, run(3));
        assert_eq!(one, run(1));
    }

    #[test]
    fn fused_conv_known_values() {
        // One 2x2 image, one channel, all-ones 3x3 kernel, bias -4: each
        // output pixel sums the whole image (10) minus 4 = 6; pooled: 6,
        // with the gradient of the pooled value going to the first pixel.
        let dev = Cpu::seed_from_u64(0);
        let x = dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0], (4, 1));
        let w = dev.tensor_from_vec(vec![1.0; 9], (1, 9));
        let b = dev.tensor_from_vec(vec![-4.0], (1,));
        let g = geom(1, 1, 2, 2);
        let plain = ConvOpts {
            pool: false,
            input_grad: true,
        };
        let y = conv3x3_cpu(&dev, x.clone(), &w, &b, g, plain).as_vec();
        assert_eq!(y, vec![6.0; 4]);
        let pooled = ConvOpts {
            pool: true,
            ..plain
        };
        let grads = conv3x3_cpu(&dev, x.leaky_trace(), &w, &b, g, pooled)
            .sum::<Rank0, _>()
            .backward();
        // d/dx of conv at pixel 0 = sum of the kernel taps that see each
        // pixel from pixel 0: every pixel is in pixel 0's window once.
        assert_eq!(grads.get(&x).as_vec(), vec![1.0; 4]);
        assert_eq!(
            grads.get(&w).as_vec(),
            vec![0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0]
        );
        assert_eq!(grads.get(&b).as_vec(), vec![1.0]);
    }
}

//! A convolution as one op: 3x3 (padding 1) or 1x1 (padding 0), stride 1 or
//! 2, with an optional bias and ReLU, the ReLU optionally followed by a 2x2
//! stride-2 max-pool (the `cnn:` block: 3x3 + bias + ReLU + pool; a residual
//! network's: no bias, no ReLU, a batch norm follows).
//!
//! The unfused path (`im2col`, then the affine op, then the pool, see
//! [`super::ops`]) materialises a whole batch's patch matrix, `9 * C` floats
//! per pixel, its gradient and the full-size activations, and passes each
//! through memory several times; with stride 2 it builds the patches of
//! every pixel and gathers the kept ones. On the CPU, [`conv_cpu`] instead works
//! through the batch in chunks of images whose patch matrix fits in the core's
//! cache, one chunk per rayon task:
//! - forward: build the chunk's patches (only the output pixels', a 1x1
//!   stride-1 kernel reads its input as they are) in a per-thread scratch
//!   buffer, start the output from the bias rows (or zeros), accumulate
//!   `patches W^T` with gemm on that thread, apply the ReLU, and pool into
//!   the output. With a ReLU it keeps, per output value, one byte for the
//!   backward pass: which of the four window positions won (or that the
//!   ReLU was off), so no activation is stored;
//! - backward: scatter the output gradient to the winning positions (without
//!   a ReLU gemm reads the output gradient as it is), rebuild
//!   the chunk's patches, accumulate `dW` and `db` into a per-chunk partial
//!   and, where the input needs a gradient, `dPatches = G W` folded back onto
//!   the chunk's own input pixels (`col2im`; chunks hold disjoint images).
//!   A 3x3 stride-1 kernel no wider than its input (a residual block's)
//!   instead gathers the patches of `G` into the same scratch and adds
//!   `patches(G) W_flip` to the input's gradient: one gemm over `9 O`
//!   columns where the scatter needed one over `O` columns, a second
//!   patch-sized buffer and a read-modify-write pass (a ResNet-8 step
//!   ran 11% faster). The partials are then summed in chunk order.
//!
//! The chunking depends on the geometry only, each chunk's gemm runs on one
//! thread, and the partial sums are reduced in a fixed order, so the result
//! is bit-identical for any thread count.
//!
//! [`conv_generic`] is the same maths from the gather-based ops and dfdx's
//! matmul, for every other device. [`conv3x3_cpu`] and [`conv3x3_generic`]
//! are the `cnn:` block's form of each.

use std::cell::RefCell;

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use rayon::prelude::*;

use super::kernels::{
    gemm_acc_with, gemm_set_with, host_copy, linear_generic, LinearOpts, Operand,
};
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
pub(super) use with_channels;

thread_local! {
    /// Per-thread scratch for patches and chunk gradients, kept between
    /// calls (rayon's worker threads live for the whole run).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Takes this thread's scratch buffer, grown to at least `len` floats
/// (contents unspecified); [`put_scratch`] gives it back. A buffer rather
/// than a closure, so the kernels that use it compile as one function per
/// vector level ([`crate::simd`]).
fn take_scratch(len: usize) -> Vec<f32> {
    let mut buf = SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    buf
}

/// Returns a buffer of [`take_scratch`] for the next call on this thread.
fn put_scratch(buf: Vec<f32>) {
    SCRATCH.with(|cell| *cell.borrow_mut() = buf);
}

/// Writes the 3x3 patches (zero padding 1) of consecutive channels-last
/// `h x w x c` images in `src` into `dst`, one row of `9c` values per pixel,
/// column `tap * c + channel` with `tap = 3 dy + dx`.
#[inline(always)]
pub(super) fn fill_patches(src: &[f32], h: usize, w: usize, c: usize, dst: &mut [f32]) {
    with_channels!(c, fill_patches_for, src, h, w, c, dst)
}

/// [`fill_patches`] for `C` channels (`C == 0`: `c` at run time).
#[inline(always)]
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
#[inline(always)]
pub(super) fn add_patches(dpatches: &[f32], h: usize, w: usize, c: usize, gx: &mut [f32]) {
    with_channels!(c, add_patches_for, dpatches, h, w, c, gx)
}

/// [`add_patches`] for `C` channels (`C == 0`: `c` at run time).
#[inline(always)]
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

/// The source pixel `(y, x)` of tap `(dy, dx)` of output pixel `(oy, ox)`
/// of plan `p`, `None` in the zero padding.
#[inline(always)]
fn tap_source(p: &Plan, (oy, ox): (usize, usize), (dy, dx): (usize, usize)) -> Option<usize> {
    let pad = p.kernel / 2;
    let sy = (oy * p.stride + dy).checked_sub(pad)?;
    let sx = (ox * p.stride + dx).checked_sub(pad)?;
    (sy < p.g.height && sx < p.g.width).then_some(sy * p.g.width + sx)
}

/// Writes the `kernel x kernel` patches (zero padding `kernel / 2`) of the
/// output pixels of plan `p`'s strided convolution over consecutive
/// channels-last images in `src` into `dst`, one row of `kernel^2 c` values
/// per output pixel, column `tap * c + channel` with `tap = kernel dy + dx`:
/// [`fill_patches`] for stride 2 and for 1x1 kernels.
#[inline(always)]
fn fill_patches_strided(src: &[f32], p: &Plan, dst: &mut [f32]) {
    with_channels!(p.g.channels, fill_patches_strided_for, src, p, dst)
}

/// [`fill_patches_strided`] for `C` channels (`C == 0`: at run time).
#[inline(always)]
fn fill_patches_strided_for<const C: usize>(src: &[f32], p: &Plan, dst: &mut [f32]) {
    let c = if C == 0 { p.g.channels } else { C };
    for (img, out) in src
        .chunks_exact(p.hw() * c)
        .zip(dst.chunks_exact_mut(p.conv_hw() * p.k()))
    {
        for_each_tap(p, |at, source| {
            let tap = &mut out[at * c..][..c];
            match source {
                Some(s) => tap.copy_from_slice(&img[s * c..][..c]),
                None => tap.fill(0.0),
            }
        });
    }
}

/// The adjoint of [`fill_patches_strided`]: adds each patch value back onto
/// the pixel it was copied from.
#[inline(always)]
fn add_patches_strided(dpatches: &[f32], p: &Plan, gx: &mut [f32]) {
    with_channels!(p.g.channels, add_patches_strided_for, dpatches, p, gx)
}

/// [`add_patches_strided`] for `C` channels (`C == 0`: at run time).
#[inline(always)]
fn add_patches_strided_for<const C: usize>(dpatches: &[f32], p: &Plan, gx: &mut [f32]) {
    let c = if C == 0 { p.g.channels } else { C };
    for (img, rows) in gx
        .chunks_exact_mut(p.hw() * c)
        .zip(dpatches.chunks_exact(p.conv_hw() * p.k()))
    {
        for_each_tap(p, |at, source| {
            if let Some(s) = source {
                let tap = &rows[at * c..][..c];
                for (a, v) in img[s * c..][..c].iter_mut().zip(tap) {
                    *a += *v;
                }
            }
        });
    }
}

/// Calls `f(tap, source)` for every tap of one image's patch matrix under
/// plan `p`, in row order: `tap` counts taps of `c` values from the matrix's
/// start (output pixel, then `dy`, then `dx`), `source` is the input pixel
/// it copies, or `None` in the padding.
#[inline(always)]
fn for_each_tap(p: &Plan, mut f: impl FnMut(usize, Option<usize>)) {
    let kk = p.kernel;
    for oy in 0..p.conv_h {
        for ox in 0..p.conv_w {
            let pixel = (oy * p.conv_w + ox) * kk * kk;
            for dy in 0..kk {
                for dx in 0..kk {
                    f(pixel + dy * kk + dx, tap_source(p, (oy, ox), (dy, dx)));
                }
            }
        }
    }
}

/// What [`crate::model::Backend::conv2d`] computes: any convolution of a
/// residual network or a `cnn:` spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    /// 3 (padding 1) or 1 (padding 0).
    pub kernel: usize,
    /// 1 or 2.
    pub stride: usize,
    /// Apply a ReLU to the output.
    pub relu: bool,
    /// Follow the ReLU with a 2x2 stride-2 max-pool (sizes floored; needs
    /// `relu`).
    pub pool: bool,
    /// Compute the gradient of the input (the network's raw input needs none).
    pub input_grad: bool,
}

impl ConvSpec {
    /// The `cnn:` block of [`crate::model::Backend::conv3x3`].
    pub fn classic(opts: ConvOpts) -> Self {
        ConvSpec {
            kernel: 3,
            stride: 1,
            relu: true,
            pool: opts.pool,
            input_grad: opts.input_grad,
        }
    }

    /// Output height and width on an `h x w` input, before any pool.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        (
            (h.max(1) - 1) / self.stride + 1,
            (w.max(1) - 1) / self.stride + 1,
        )
    }
}

/// Geometry of one call, shared by the forward and backward passes.
#[derive(Clone, Copy)]
struct Plan {
    /// Input geometry.
    g: ImageGeom,
    /// Output channels.
    o: usize,
    kernel: usize,
    stride: usize,
    /// The convolution's output height and width (before any pool).
    conv_h: usize,
    conv_w: usize,
    /// Output pixels per image (after the pool, if any).
    out_hw: usize,
    /// Images per chunk.
    per: usize,
    bias: bool,
    relu: bool,
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
    fn new(g: ImageGeom, o: usize, bias: bool, spec: ConvSpec) -> Self {
        let (conv_h, conv_w) = spec.out_size(g.height, g.width);
        let out_hw = match spec.pool {
            true => (conv_h / 2) * (conv_w / 2),
            false => conv_h * conv_w,
        };
        let mut p = Plan {
            g,
            o,
            kernel: spec.kernel,
            stride: spec.stride,
            conv_h,
            conv_w,
            out_hw,
            per: 1,
            bias,
            relu: spec.relu,
            pool: spec.pool,
            channel_major: o < CHANNEL_MAJOR_BELOW,
        };
        // Images per chunk: a function of the geometry alone (never the
        // thread count), so the sums of partial gradients are the same on
        // every machine.
        let per_image = p.conv_hw() * p.k().max(g.channels);
        p.per = (CHUNK_PATCH_FLOATS / per_image.max(1)).clamp(1, g.batch.max(1));
        p
    }
    /// Columns of the patch matrix, `kernel^2 * C`.
    fn k(&self) -> usize {
        self.kernel * self.kernel * self.g.channels
    }
    /// Input pixels per image.
    fn hw(&self) -> usize {
        self.g.height * self.g.width
    }
    /// Conv output pixels per image (before any pool).
    fn conv_hw(&self) -> usize {
        self.conv_h * self.conv_w
    }
    /// Whether the input is its own patch matrix (1x1, stride 1).
    fn direct(&self) -> bool {
        self.kernel == 1 && self.stride == 1
    }
    /// Whether the backward pass needs a code per output value (the ReLU's
    /// mask, the pool's winner).
    fn coded(&self) -> bool {
        self.relu || self.pool
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
    /// Writes the patches of the `n` images in `src` into `dst`; returns
    /// the patch matrix (`src` itself for a direct plan).
    #[inline(always)]
    fn patches<'a>(&self, src: &'a [f32], dst: &'a mut [f32]) -> &'a [f32] {
        if self.direct() {
            src
        } else if self.kernel == 3 && self.stride == 1 {
            fill_patches(src, self.g.height, self.g.width, self.g.channels, dst);
            dst
        } else {
            fill_patches_strided(src, self, dst);
            dst
        }
    }
    /// Whether the backward pass computes the input's gradient as a
    /// convolution of the output's gradient with the flipped weights
    /// (`gx += patches(G) W_flip`, a gather and one gemm over `9 O` columns)
    /// rather than `dPatches = G W` folded back with `col2im` (a gemm over
    /// only `O` columns, then a scatter-add through a second patch-sized
    /// buffer): for 3x3 stride-1 kernels whose output gradient is
    /// pixel-major, and no wider than the input (the gathered patches are
    /// `9 O` floats per pixel).
    fn gathers_input_grad(&self) -> bool {
        self.kernel == 3
            && self.stride == 1
            && !(self.coded() && self.channel_major)
            && self.o <= self.g.channels
    }
    /// Scratch floats a chunk of `rows` conv pixels needs for its patches
    /// (and, when it gathers the input's gradient, for the gradient's).
    fn backward_patch_len(&self, rows: usize) -> usize {
        match self.gathers_input_grad() {
            true => self.patch_len(rows).max(rows * 9 * self.o),
            false => self.patch_len(rows),
        }
    }
    /// Scratch floats a chunk of `rows` conv pixels needs for its patches.
    fn patch_len(&self, rows: usize) -> usize {
        if self.direct() {
            0
        } else {
            rows * self.k()
        }
    }
}

/// Pools one chunk's ReLU'd conv output (`n` images of `h x w x o`) into
/// `dst` and records the winning window position per output value.
#[inline(always)]
fn pool_chunk(p: &Plan, n: usize, conv: &[f32], dst: &mut [f32], code: &mut [u8]) {
    with_channels!(p.o, pool_chunk_for, p, n, conv, dst, code)
}

/// [`pool_chunk`] for `O` output channels (`O == 0`: `p.o` at run time).
#[inline(always)]
fn pool_chunk_for<const O: usize>(
    p: &Plan,
    n: usize,
    conv: &[f32],
    dst: &mut [f32],
    code: &mut [u8],
) {
    let (h, w) = (p.conv_h, p.conv_w);
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
#[inline(always)]
fn conv_grad_chunk(p: &Plan, n: usize, g_out: &[f32], code: &[u8], gconv: &mut [f32]) {
    with_channels!(p.o, conv_grad_chunk_for, p, n, g_out, code, gconv)
}

/// [`conv_grad_chunk`] for `O` output channels (`O == 0`: `p.o` at run time).
#[inline(always)]
fn conv_grad_chunk_for<const O: usize>(
    p: &Plan,
    n: usize,
    g_out: &[f32],
    code: &[u8],
    gconv: &mut [f32],
) {
    let (h, w) = (p.conv_h, p.conv_w);
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
/// `x`'s tape for `x` (if `opts.input_grad`), `w` and `b`. [`conv_cpu`]
/// with the classic block's spec.
pub fn conv3x3_cpu<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Matrix<Cpu, T>,
    w: &Matrix<Cpu>,
    b: &Tensor<(usize,), f32, Cpu>,
    g: ImageGeom,
    opts: ConvOpts,
) -> Matrix<Cpu, T> {
    conv_cpu(dev, x, w, Some(b), g, ConvSpec::classic(opts))
}

/// One slice per chunk of `span` values of `v`, or `None`s where `v` is
/// empty (a buffer the call does not need).
fn chunks_or_none<T>(v: &mut [T], span: usize, chunks: usize) -> Vec<Option<&mut [T]>> {
    let mut out: Vec<Option<&mut [T]>> = v.chunks_mut(span.max(1)).map(Some).collect();
    out.resize_with(chunks, || None);
    out
}

/// `conv = relu?(patches W^T + b)` for `rows` pixels, in the plan's layout.
#[inline(always)]
fn conv_rows(
    p: &Plan,
    (ws, bias): (&[f32], &[f32]),
    patches: &[f32],
    rows: usize,
    conv: &mut [f32],
) {
    let (k, o) = (p.k(), p.o);
    // Without a bias gemm overwrites the output (no zeroing pass first);
    // with one it adds onto the bias rows.
    if p.channel_major {
        // `o x rows` = W patches^T.
        let (wa, pt) = (Operand::rows(ws, k), Operand::transposed(patches, k));
        if p.bias {
            for (ch, plane) in conv.chunks_exact_mut(rows).enumerate() {
                plane.fill(bias[ch]);
            }
            gemm_acc_with(o, rows, k, conv, wa, pt, false);
        } else {
            gemm_set_with(o, rows, k, conv, wa, pt, false);
        }
    } else {
        // `rows x o` = patches W^T.
        let (pa, wt) = (Operand::rows(patches, k), Operand::transposed(ws, k));
        if p.bias {
            for r in conv.chunks_exact_mut(o) {
                r.copy_from_slice(bias);
            }
            gemm_acc_with(rows, o, k, conv, pa, wt, false);
        } else {
            gemm_set_with(rows, o, k, conv, pa, wt, false);
        }
    }
    if p.relu {
        conv.iter_mut().for_each(|v| *v = v.max(0.0));
    }
}

/// The forward pass of one chunk: `src` its input images, `dst` and `code`
/// its output and codes (see the module doc).
fn forward_chunk(
    p: &Plan,
    params: (&[f32], &[f32]),
    src: &[f32],
    dst: &mut [f32],
    code: Option<&mut [u8]>,
) {
    let n = src.len() / (p.hw() * p.g.channels);
    let rows = n * p.conv_hw();
    let mut s = take_scratch(p.patch_len(rows) + forward_conv_len(p, rows));
    forward_chunk_in(p, params, (src, n), dst, code, &mut s);
    put_scratch(s);
}

/// Scratch floats for a chunk's conv output before it is pooled or
/// transposed into the output (none when gemm writes the output in place).
fn forward_conv_len(p: &Plan, rows: usize) -> usize {
    match !p.pool && !p.channel_major {
        true => 0,
        false => rows * p.o,
    }
}

crate::simd::wide_kernel! {
    /// [`forward_chunk`] on the scratch `s`, per vector level.
    fn forward_chunk_in(
        p: &Plan,
        params: (&[f32], &[f32]),
        src_n: (&[f32], usize),
        dst: &mut [f32],
        code: Option<&mut [u8]>,
        s: &mut [f32],
    ) {
        let ((src, n), o) = (src_n, p.o);
        let rows = n * p.conv_hw();
        // Pixel-major without a pool: gemm writes the output in place.
        let in_place = forward_conv_len(p, rows) == 0;
        let (pbuf, rest) = s.split_at_mut(p.patch_len(rows));
        let conv = &mut rest[..forward_conv_len(p, rows)];
        let patches = p.patches(src, pbuf);
        if in_place {
            conv_rows(p, params, patches, rows, dst);
        } else {
            conv_rows(p, params, patches, rows, conv);
            if p.pool {
                let code = code.expect("a pooled convolution keeps codes");
                pool_chunk(p, n, conv, dst, code);
                return;
            }
            let (ps, cs) = p.strides(rows);
            for (px, dst) in dst.chunks_exact_mut(o).enumerate() {
                for (ch, v) in dst.iter_mut().enumerate() {
                    *v = conv[px * ps + ch * cs];
                }
            }
        }
        if let Some(code) = code {
            for (c, v) in code.iter_mut().zip(dst.iter()) {
                *c = u8::from(*v > 0.0);
            }
        }
    }
}

/// The backward pass of chunk `ci`: its partial `dW` (and `db`) into
/// `part`, and, where wanted, its input gradient added into `gx`.
struct ChunkGrad<'a> {
    p: &'a Plan,
    xs: &'a [f32],
    ws: &'a [f32],
    /// The flipped weights of [`Plan::gathers_input_grad`], `(9 O, C)` (empty
    /// when the plan scatters or no input gradient is wanted).
    flipped: &'a [f32],
    g_out: &'a [f32],
    code: &'a [u8],
}

impl ChunkGrad<'_> {
    fn run(&self, ci: usize, part: &mut [f32], gx: Option<&mut [f32]>) {
        let p = self.p;
        let rows = p.images(ci) * p.conv_hw();
        let gconv_len = if p.coded() { rows * p.o } else { 0 };
        let (patch_len, dpatch_len) = match (gx.is_some(), p.gathers_input_grad()) {
            (false, _) => (p.patch_len(rows), 0),
            (true, true) => (p.backward_patch_len(rows), 0),
            (true, false) => (p.patch_len(rows), p.patch_len(rows)),
        };
        let mut s = take_scratch(patch_len + gconv_len + dpatch_len);
        chunk_grad_in(self, ci, (part, gx), gconv_len, &mut s);
        put_scratch(s);
    }
}

crate::simd::wide_kernel! {
    /// [`ChunkGrad::run`] on the scratch `s` (`gconv_len` floats of it for
    /// the conv output's gradient), per vector level.
    fn chunk_grad_in(
        cg: &ChunkGrad,
        ci: usize,
        part_gx: (&mut [f32], Option<&mut [f32]>),
        gconv_len: usize,
        s: &mut [f32],
    ) {
        let (part, gx) = part_gx;
        let (p, c, o, k) = (cg.p, cg.p.g.channels, cg.p.o, cg.p.k());
        let n = p.images(ci);
        let rows = n * p.conv_hw();
        let src = &cg.xs[ci * p.per * p.hw() * c..][..n * p.hw() * c];
        let span = ci * p.per * p.out_hw * o..(ci * p.per + n) * p.out_hw * o;
        let g_out = &cg.g_out[span.clone()];
        let gathers = gx.is_some() && p.gathers_input_grad();
        let patch_len = match gathers {
            true => p.backward_patch_len(rows),
            false => p.patch_len(rows),
        };
        let (pbuf, rest) = s.split_at_mut(patch_len);
        let (gbuf, dpatches) = rest.split_at_mut(gconv_len);
        // The conv output's gradient: masked and unpooled into the
        // scratch, or the output gradient itself.
        let (view, gconv, (ps, cs)) = if p.coded() {
            conv_grad_chunk(p, n, g_out, &cg.code[span], gbuf);
            (p.conv_view(gbuf, rows), &*gbuf, p.strides(rows))
        } else {
            (Operand::rows(g_out, o), g_out, (o, 1))
        };
        let patches = p.patches(src, &mut pbuf[..p.patch_len(rows)]);
        let (pw, pb) = part.split_at_mut(o * k);
        gemm_acc_with(o, k, rows, pw, view.t(), Operand::rows(patches, k), false);
        if p.bias {
            for px in 0..rows {
                for (ch, b) in pb.iter_mut().enumerate() {
                    *b += gconv[px * ps + ch * cs];
                }
            }
        }
        let Some(gx) = gx else { return };
        if gathers {
            // The input patches are spent: the same scratch takes the
            // output gradient's (pixel-major here, `conv_hw` = `hw`).
            let kg = 9 * o;
            let gpatches = &mut pbuf[..rows * kg];
            fill_patches(gconv, p.g.height, p.g.width, o, gpatches);
            let (gp, wf) = (Operand::rows(gpatches, kg), Operand::rows(cg.flipped, c));
            gemm_acc_with(rows, c, kg, gx, gp, wf, false);
            return;
        }
        let wb = Operand::rows(cg.ws, k);
        if p.direct() {
            gemm_acc_with(rows, k, o, gx, view, wb, false);
            return;
        }
        let dpatches = &mut dpatches[..p.patch_len(rows)];
        gemm_set_with(rows, k, o, dpatches, view, wb, false);
        if p.kernel == 3 && p.stride == 1 {
            add_patches(dpatches, p.g.height, p.g.width, c, gx);
        } else {
            add_patches_strided(dpatches, p, gx);
        }
    }
}

/// The 3x3 weights `w: (O, 9 C)` (column `tap * C + channel`) as the
/// `(9 O, C)` matrix of the transposed convolution: row `(8 - tap) * O + o`
/// holds `w[o, tap * C ..][.. C]`, so that `patches(G) flipped` (patches of
/// `O` channels) is the input's gradient.
fn flip_taps(w: &[f32], o: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; 9 * o * c];
    for (oc, row) in w.chunks_exact(9 * c).enumerate().take(o) {
        for (tap, taps) in row.chunks_exact(c).enumerate() {
            out[((8 - tap) * o + oc) * c..][..c].copy_from_slice(taps);
        }
    }
    out
}

/// A convolution on host slices: [`conv_cpu`]'s forward and backward passes
/// for callers that keep their activations in their own buffers (the
/// residual block op, [`super::block_op`]).
#[derive(Clone, Copy)]
pub(super) struct HostConv {
    p: Plan,
}

impl HostConv {
    /// The convolution of `spec` on inputs of geometry `g` with `o` output
    /// channels, with or without a bias.
    pub(super) fn new(g: ImageGeom, o: usize, bias: bool, spec: ConvSpec) -> Self {
        HostConv {
            p: Plan::new(g, o, bias, spec),
        }
    }

    /// Values of the output, `(batch * out_hw, o)`.
    pub(super) fn out_len(&self) -> usize {
        self.p.g.batch * self.p.out_hw * self.p.o
    }

    /// Bytes of the codes the backward pass needs (none without a ReLU).
    pub(super) fn code_len(&self) -> usize {
        if self.p.coded() {
            self.out_len()
        } else {
            0
        }
    }

    /// Writes every value of `out` (and of `code`) from the input `xs`, the
    /// weights `ws` and the bias (empty without one).
    pub(super) fn forward(
        &self,
        xs: &[f32],
        ws: &[f32],
        bias: &[f32],
        out: &mut [f32],
        code: &mut [u8],
    ) {
        let (p, c, o) = (&self.p, self.p.g.channels, self.p.o);
        let span = p.per * p.out_hw * o;
        out.par_chunks_mut(span)
            .zip(chunks_or_none(code, span, p.chunks()))
            .zip(xs.par_chunks(p.per * p.hw() * c))
            .for_each(|((dst, code), src)| forward_chunk(p, (ws, bias), src, dst, code));
    }

    /// The backward pass from the output gradient `g_out`: adds the input's
    /// gradient into `gx` (when given) and returns the per-chunk partial
    /// `dW | db`, which [`HostConv::add_weight_grad`] and
    /// [`HostConv::add_bias_grad`] sum in chunk order.
    pub(super) fn backward(
        &self,
        (xs, ws): (&[f32], &[f32]),
        g_out: &[f32],
        code: &[u8],
        gx: Option<&mut [f32]>,
    ) -> Vec<f32> {
        let (p, c, o, k) = (&self.p, self.p.g.channels, self.p.o, self.p.k());
        let mut partials = vec![0f32; p.chunks() * (o * k + o)];
        let gx_chunks: Vec<Option<&mut [f32]>> = match gx {
            Some(s) => s.chunks_mut(p.per * p.hw() * c).map(Some).collect(),
            None => (0..p.chunks()).map(|_| None).collect(),
        };
        let flipped = match gx_chunks.first() {
            Some(Some(_)) if p.gathers_input_grad() => flip_taps(ws, o, c),
            _ => Vec::new(),
        };
        let chunk = ChunkGrad {
            p,
            xs,
            ws,
            flipped: &flipped,
            g_out,
            code,
        };
        gx_chunks
            .into_par_iter()
            .zip(partials.par_chunks_mut(o * k + o))
            .enumerate()
            .for_each(|(ci, (gx, part))| chunk.run(ci, part, gx));
        partials
    }

    /// Adds the weight gradient of [`HostConv::backward`]'s partials to `gw`.
    pub(super) fn add_weight_grad(&self, partials: &[f32], gw: &mut [f32]) {
        let ok = self.p.o * self.p.k();
        for part in partials.chunks_exact(ok + self.p.o) {
            for (a, v) in gw.iter_mut().zip(&part[..ok]) {
                *a += *v;
            }
        }
    }

    /// Adds the bias gradient of [`HostConv::backward`]'s partials to `gb`.
    pub(super) fn add_bias_grad(&self, partials: &[f32], gb: &mut [f32]) {
        let ok = self.p.o * self.p.k();
        for part in partials.chunks_exact(ok + self.p.o) {
            for (a, v) in gb.iter_mut().zip(&part[ok..]) {
                *a += *v;
            }
        }
    }
}

/// `pool?(relu?(conv(x) + b?))` for channels-last `x: (rows, C)` with the
/// geometry `g`, a `kernel x kernel` convolution with the stride of `spec`,
/// `w: (O, kernel^2 C)` (column `tap * C + c`), `b: (O,)` or none; the result
/// is `(rows', O)` channels-last, `rows'` the output pixel count. Backward on
/// `x`'s tape for `x` (if `spec.input_grad`), `w` and `b`.
pub fn conv_cpu<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Matrix<Cpu, T>,
    w: &Matrix<Cpu>,
    b: Option<&Tensor<(usize,), f32, Cpu>>,
    g: ImageGeom,
    spec: ConvSpec,
) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let (c, o) = (g.channels, w.shape().0);
    let conv = HostConv::new(g, o, b.is_some(), spec);
    let p = &conv.p;
    assert!(
        *x.shape() == (g.rows(), c)
            && w.shape().1 == p.k()
            && b.is_none_or(|b| b.shape().0 == o)
            && matches!((spec.kernel, spec.stride), (1 | 3, 1 | 2))
            && (spec.relu || !spec.pool),
        "conv: input {:?} for {g:?}, weight {:?}, {spec:?}",
        x.shape(),
        w.shape(),
    );
    let out_len = conv.out_len();
    let out_rows = g.batch * p.out_hw;
    if out_len == 0 || g.rows() == 0 {
        let out = dev.tensor_from_vec(vec![0f32; out_len], (out_rows, o));
        return out.put_tape(tape);
    }
    let (xs, ws) = (host_copy(&x), host_copy(w));
    let bias = b.map(host_copy).unwrap_or_default();
    let mut out = vec![0f32; out_len];
    let mut code = vec![0u8; conv.code_len()];
    conv.forward(&xs, &ws, &bias, &mut out, &mut code);
    let out = dev.tensor_from_vec(out, (out_rows, o));
    if !T::OWNS_TAPE {
        return out.put_tape(tape);
    }
    let (x_ghost, w_ghost, out_ghost) = (x.ghost(), w.ghost(), out.ghost());
    let b_ghost = b.map(|b| b.ghost());
    let dev = dev.clone();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        // This op made `out`, so every reader of its gradient has run: take
        // the buffer instead of copying it.
        let empty = dev.try_alloc_len(0)?;
        let g_out = std::mem::replace(grads.get_or_alloc_mut(&out_ghost)?, empty);
        let gx: Option<&mut [f32]> = match spec.input_grad {
            true => Some(grads.get_or_alloc_mut(&x_ghost)?),
            false => None,
        };
        let partials = conv.backward((&xs, &ws), &g_out, &code, gx);
        conv.add_weight_grad(&partials, grads.get_or_alloc_mut(&w_ghost)?);
        if let Some(b_ghost) = &b_ghost {
            conv.add_bias_grad(&partials, grads.get_or_alloc_mut(b_ghost)?);
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
    conv_generic(dev, x, w, Some(b), g, ConvSpec::classic(opts))
}

/// [`conv_cpu`]'s maths from the gather-based patches, strided rows and
/// pool, and dfdx's matmul: works on every dfdx device (no bias: a zero
/// bias that is not a parameter).
pub fn conv_generic<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    w: &Matrix<D>,
    b: Option<&Tensor<(usize,), f32, D>>,
    g: ImageGeom,
    spec: ConvSpec,
) -> Matrix<D, T> {
    conv_composed(dev, x, w, b, g, spec, false)
}

/// The same maths from the device's own ops ([`Backend::im2col`],
/// [`Backend::linear`], [`Backend::max_pool2`]; only the stride's row
/// selection is dfdx's gather): the path of a device whose kernels fuse
/// those steps but not a whole convolution of every form (CUDA).
pub fn conv_device_ops<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    w: &Matrix<D>,
    b: Option<&Tensor<(usize,), f32, D>>,
    g: ImageGeom,
    spec: ConvSpec,
) -> Matrix<D, T> {
    conv_composed(dev, x, w, b, g, spec, true)
}

/// A convolution composed of patches, strided rows, the affine op and the
/// pool: the gather-based reference ops, or the device's own (`own_ops`).
fn conv_composed<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    w: &Matrix<D>,
    b: Option<&Tensor<(usize,), f32, D>>,
    g: ImageGeom,
    spec: ConvSpec,
    own_ops: bool,
) -> Matrix<D, T> {
    let patches = match (spec.kernel, own_ops) {
        (3, true) => dev.im2col(x, g),
        (3, false) => im2col_gather(dev, x, g),
        _ => x,
    };
    let patches = match spec.stride {
        1 => patches,
        s => patches.gather(strided_rows(dev, g, s)),
    };
    let zeros;
    let bias = match b {
        Some(b) => b,
        None => {
            zeros = dev.zeros_like(&(w.shape().0,));
            &zeros
        }
    };
    let linear = LinearOpts {
        relu: spec.relu,
        input_grad: spec.input_grad,
    };
    let y = match own_ops {
        true => dev.linear(patches, w, bias, linear),
        false => linear_generic(patches, w, bias, linear),
    };
    if spec.pool {
        let (height, width) = spec.out_size(g.height, g.width);
        let channels = w.shape().0;
        let conv_g = ImageGeom {
            channels,
            height,
            width,
            ..g
        };
        match own_ops {
            true => dev.max_pool2(y, conv_g),
            false => max_pool2_gather(dev, y, conv_g),
        }
    } else {
        y
    }
}

/// The pixel rows a stride-`stride` convolution keeps: `(y, x)` with both
/// multiples of the stride, image by image, row-major.
pub fn strided_rows<D: Backend>(
    dev: &D,
    g: ImageGeom,
    stride: usize,
) -> Tensor<(usize,), usize, D> {
    let (h, w) = (g.height, g.width);
    let (ho, wo) = ((h.max(1) - 1) / stride + 1, (w.max(1) - 1) / stride + 1);
    let mut idx = Vec::with_capacity(g.batch * ho * wo);
    for b in 0..g.batch {
        for y in 0..ho {
            for x in 0..wo {
                idx.push(b * h * w + y * stride * w + x * stride);
            }
        }
    }
    let n = idx.len();
    dev.tensor_from_vec(idx, (n,))
}

#[cfg(test)]
mod tests {
    use super::super::kernels::tests::{close, random};
    use super::*;

    /// Output and gradients (x, w, b) of sum(conv(x) * r), fused or generic
    /// (no bias: its gradient is empty).
    fn pass(fused: bool, g: ImageGeom, o: usize, spec: ConvSpec, bias: bool) -> [Vec<f32>; 4] {
        let dev = Cpu::seed_from_u64(0);
        let x = random(&dev, (g.rows(), g.channels), 1);
        let taps = spec.kernel * spec.kernel;
        let w = random(&dev, (o, taps * g.channels), 2);
        let b = random(&dev, (o,), 3);
        let bias_ref = bias.then_some(&b);
        let apply = |x: Matrix<Cpu, OwnedTape<f32, Cpu>>| {
            if fused {
                conv_cpu(&dev, x, &w, bias_ref, g, spec)
            } else {
                conv_generic(&dev, x, &w, bias_ref, g, spec)
            }
        };
        let y = apply(x.leaky_trace());
        let shape = *y.shape();
        let values = y.retaped::<NoneTape>().as_vec();
        let r = random(&dev, shape, 4);
        let grads = (apply(x.leaky_trace()) * r).sum::<Rank0, _>().backward();
        let gx = match spec.input_grad {
            true => grads.get(&x).as_vec(),
            false => Vec::new(),
        };
        let gb = match bias {
            true => grads.get(&b).as_vec(),
            false => Vec::new(),
        };
        [values, gx, grads.get(&w).as_vec(), gb]
    }

    fn geom(batch: usize, channels: usize, height: usize, width: usize) -> ImageGeom {
        ImageGeom {
            batch,
            channels,
            height,
            width,
        }
    }

    fn classic(pool: bool, input_grad: bool) -> ConvSpec {
        ConvSpec::classic(ConvOpts { pool, input_grad })
    }

    /// Tolerance of the fused op against the generic one: `1e-4 (1 +
    /// max(|a|, |b|))` (the two sum the products in different orders).
    const TOL: f32 = 1e-4;

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
            // Pixel-major and no wider than the input: the input gradient
            // is gathered.
            (geom(2, 40, 6, 6), CHANNEL_MAJOR_BELOW + 1),
        ];
        for (g, o) in cases {
            for pool in [false, true] {
                if pool && (g.height < 2 || g.width < 2) {
                    continue;
                }
                for input_grad in [true, false] {
                    let spec = classic(pool, input_grad);
                    let ours = pass(true, g, o, spec, true);
                    let theirs = pass(false, g, o, spec, true);
                    for (a, b) in ours.iter().zip(&theirs) {
                        close(a, b, TOL);
                    }
                }
            }
        }
        let per = Plan::new(cases[3].0, 5, true, classic(false, true)).per;
        assert!(per < 40, "the 28x28x8 case spans chunks");
    }

    #[test]
    fn strided_1x1_and_bias_free_convs_match_the_unfused_ops() {
        // A residual network's convolutions: 3x3 and 1x1, stride 1 and 2
        // (odd and even sizes), with and without bias and ReLU, both
        // layouts, several chunks.
        let cases = [
            (geom(2, 3, 5, 4), 4),
            (geom(3, 1, 7, 7), 2),
            (geom(1, 2, 1, 3), 3),
            (geom(30, 16, 14, 14), 8),
            (geom(3, 4, 6, 5), CHANNEL_MAJOR_BELOW + 1),
            // As many output channels as input ones (a residual block's
            // convs), and a pixel-major output narrower than its input:
            // the stride-1 3x3 input gradient is gathered.
            (geom(4, 8, 9, 7), 8),
            (geom(2, 40, 5, 6), CHANNEL_MAJOR_BELOW + 1),
        ];
        for (g, o) in cases {
            for (kernel, stride) in [(3, 1), (3, 2), (1, 1), (1, 2)] {
                for (bias, relu) in [(false, false), (true, false), (false, true)] {
                    let spec = ConvSpec {
                        kernel,
                        stride,
                        relu,
                        pool: false,
                        input_grad: true,
                    };
                    let ours = pass(true, g, o, spec, bias);
                    let theirs = pass(false, g, o, spec, bias);
                    for (a, b) in ours.iter().zip(&theirs) {
                        close(a, b, TOL);
                    }
                }
            }
        }
        let spec = ConvSpec {
            kernel: 3,
            stride: 2,
            relu: false,
            pool: false,
            input_grad: true,
        };
        assert!(
            Plan::new(cases[3].0, 8, false, spec).per < 30,
            "spans chunks"
        );
    }

    #[test]
    fn fused_conv_is_the_same_for_any_thread_count() {
        let g = geom(24, 4, 12, 10);
        let strided = ConvSpec {
            kernel: 3,
            stride: 2,
            relu: false,
            pool: false,
            input_grad: true,
        };
        for (spec, bias) in [(classic(true, true), true), (strided, false)] {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .expect("thread pool");
                pool.install(|| pass(true, g, 6, spec, bias))
            };
            let one = run(1);
            assert_eq!(one, run(3));
            assert_eq!(one, run(1));
        }
    }

    #[test]
    fn strided_1x1_known_values() {
        // A 1x1 stride-2 conv of a 3x3 one-channel image keeps pixels
        // (0,0), (0,2), (2,0), (2,2), times the weight 2; each kept pixel
        // gets the gradient 2, the others none.
        let dev = Cpu::seed_from_u64(0);
        let x = dev.tensor_from_vec((1..=9).map(|v| v as f32).collect(), (9, 1));
        let w = dev.tensor_from_vec(vec![2.0], (1, 1));
        let spec = ConvSpec {
            kernel: 1,
            stride: 2,
            relu: false,
            pool: false,
            input_grad: true,
        };
        let g = geom(1, 1, 3, 3);
        let y = conv_cpu(&dev, x.leaky_trace(), &w, None, g, spec);
        assert_eq!(y.retaped::<NoneTape>().as_vec(), vec![2.0, 6.0, 14.0, 18.0]);
        let grads = conv_cpu(&dev, x.leaky_trace(), &w, None, g, spec)
            .sum::<Rank0, _>()
            .backward();
        let want = [2.0, 0.0, 2.0, 0.0, 0.0, 0.0, 2.0, 0.0, 2.0];
        assert_eq!(grads.get(&x).as_vec(), want);
        assert_eq!(grads.get(&w).as_vec(), vec![1.0 + 3.0 + 7.0 + 9.0]);
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

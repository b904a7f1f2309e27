//! The layers' matmuls on the CPU through a fast gemm kernel.
//!
//! dfdx 0.13 multiplies matrices with the `gemm` crate 0.15, which on stable
//! Rust never uses AVX-512. [`linear_cpu`] is a dfdx op (forward plus a
//! hand-written backward on the tape, like the convolution's `im2col`) that
//! calls `gemm` 0.19 instead, whose `x86-v4` kernels are picked at run time
//! where the CPU has AVX-512, with the AVX2/FMA ones as the fallback. It is
//! the whole affine layer `y = relu?(x W^T + b)`:
//! - forward: the output starts as the bias rows and gemm accumulates
//!   `x W^T` into it; the optional ReLU and its mask are one parallel pass.
//!   The weights are read from the optimizer's host copy when one is
//!   current ([`crate::model::HostMirror`]), else copied out of the tensor;
//! - backward: with `g` the output gradient (masked by the ReLU),
//!   `dX += g W`, `dW += g^T X` (both gemm, accumulated in place into the
//!   gradients), `db += colsum g`.
//!
//! [`crate::model::Backend::linear`] routes here on the CPU; other devices use
//! [`linear_generic`], the same maths from dfdx's `matmul` (cuBLAS on CUDA).
//!
//! Parallelism: a product with at least 256 output columns runs as two
//! column blocks, one single-threaded gemm each under `rayon::join`, so each
//! thread packs its own half of the weights (one gemm split by gemm itself
//! packs them all on the calling thread while the others wait); smaller
//! products run as one gemm over rayon's threads.
//!
//! Determinism: each output value sums over the inner dimension in a fixed
//! order whatever the split, so the bits do not depend on the thread count
//! (a 2-epoch `mlp:784-800-800-10` run writes the same weights on 1 and 2
//! threads, and as before the column split); the bias column sums run
//! sequentially.

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use rayon::prelude::*;
use std::sync::Arc;

use super::ops::Matrix;

/// What [`crate::model::Backend::linear`] computes besides `x W^T + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinearOpts {
    /// Apply a ReLU to the output.
    pub relu: bool,
    /// Compute the gradient of the input. The network's raw input needs none,
    /// which saves one of the three products of the first layer's backward.
    /// Only the CPU op honours it; others always compute it.
    pub input_grad: bool,
}

/// A read-only matrix operand: element `(i, j)` at `i * row_stride + j * col_stride`.
#[derive(Clone, Copy)]
pub(super) struct Operand<'a> {
    data: &'a [f32],
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major matrix with `cols` columns.
    pub(super) fn rows(data: &'a [f32], cols: usize) -> Self {
        Operand {
            data,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub(super) fn transposed(data: &'a [f32], cols: usize) -> Self {
        Operand {
            data,
            row_stride: 1,
            col_stride: cols,
        }
    }

    /// The transpose of this view.
    pub(super) fn t(self) -> Self {
        Operand {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// Whether every element of a `rows x cols` view lies inside `data`.
    fn covers(&self, rows: usize, cols: usize) -> bool {
        rows == 0
            || cols == 0
            || (rows - 1) * self.row_stride + (cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst += a b` for `a` of `m x k`, `b` of `k x n` and a row-major `m x n`
/// `dst`, on all of rayon's threads.
fn gemm_acc(m: usize, n: usize, k: usize, dst: &mut [f32], a: Operand, b: Operand) {
    gemm_acc_with(m, n, k, dst, a, b, true)
}

/// [`gemm_acc`] on the calling thread alone when `parallel` is false (for
/// callers that already split the work among rayon's threads).
pub(super) fn gemm_acc_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Operand,
    b: Operand,
    parallel: bool,
) {
    gemm_into(m, n, k, dst, a, b, parallel, true)
}

/// `dst = a b`, overwriting `dst` (whose old values are never read, so it
/// need not be zeroed first), on the calling thread alone when `parallel`
/// is false.
pub(super) fn gemm_set_with(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Operand,
    b: Operand,
    parallel: bool,
) {
    gemm_into(m, n, k, dst, a, b, parallel, false)
}

/// `dst = a b`, plus the old `dst` when `accumulate`.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    a: Operand,
    b: Operand,
    parallel: bool,
    accumulate: bool,
) {
    assert!(
        dst.len() == m * n && a.covers(m, k) && b.covers(k, n),
        "gemm operands do not match {m}x{k} times {k}x{n}"
    );
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst.fill(0.0);
        }
        return;
    }
    if parallel && n >= SPLIT_MIN_COLS {
        // Two column blocks, one gemm each on its own thread: each packs its
        // own half of `b`, where one parallel gemm packs all of it on the
        // calling thread while the others wait.
        let half = (n / 2).next_multiple_of(16);
        let dst = DstPtr(dst.as_mut_ptr());
        let block = |cols: std::ops::Range<usize>| {
            // SAFETY: the assert above covers every column of `dst` and `b`;
            // the two blocks write disjoint columns of `dst`, which aliases
            // neither operand.
            unsafe { gemm_block(m, n, k, dst, a, b, cols, accumulate) }
        };
        rayon::join(|| block(0..half), || block(half..n));
        return;
    }
    let dst = DstPtr(dst.as_mut_ptr());
    // SAFETY: the assert above keeps every index gemm forms, `i * rs + j * cs`
    // over the stated extents, inside the slices; `dst` is a unique borrow, so
    // it aliases neither operand.
    unsafe { gemm_block(m, n, k, dst, a, b, 0..n, accumulate) }
}

/// Below this many output columns a product runs as one gemm.
const SPLIT_MIN_COLS: usize = 256;

/// The output of a gemm, shared by the column blocks that write it.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: the blocks that share it write disjoint columns.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

/// Columns `cols` of `dst (m x n, row-major) (+)= a b`, on this thread.
///
/// # Safety
/// `dst` holds `m * n` values, `a` covers `m x k` and `b` covers `k x n`,
/// `cols` lies within `0..n`, and no other writer touches these columns.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_block(
    m: usize,
    n: usize,
    k: usize,
    dst: DstPtr,
    a: Operand,
    b: Operand,
    cols: std::ops::Range<usize>,
    accumulate: bool,
) {
    unsafe {
        gemm::gemm(
            m,
            cols.len(),
            k,
            dst.0.add(cols.start),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride as isize,
            a.row_stride as isize,
            b.data.as_ptr().add(cols.start * b.col_stride),
            b.col_stride as isize,
            b.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// The values of a contiguous tensor (the output of a previous op or a
/// parameter), by a plain copy into a [`HostBuf`].
pub(super) fn host_copy<S: Shape, T>(t: &Tensor<S, f32, Cpu, T>) -> HostBuf {
    let mut v = HostBuf::take(t.shape().num_elements());
    t.copy_into(&mut v.0);
    v
}

/// Most buffers a thread keeps for [`HostBuf::take`]: more than the copies a
/// ResNet-20 step holds at once (about 60), so a step reuses all of them.
const POOL_BUFFERS: usize = 96;

thread_local! {
    /// Buffers of dropped [`HostBuf`]s, for the next step's copies.
    static POOL: std::cell::RefCell<Vec<Vec<f32>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A host copy of a tensor that the ops keep for their backward pass. The
/// same copies are made every step, so a dropped buffer goes back to a
/// per-thread pool and the next copy of that size reuses it: no fresh
/// allocation, page faults or zeroing (which was 2-11% of a training step),
/// and the copy overwrites every value, so the results are the same bits.
#[derive(Default)]
pub(super) struct HostBuf(Vec<f32>);

impl HostBuf {
    /// A buffer of exactly `len` values, contents unspecified (a reused
    /// buffer keeps its old values): a pooled one of that length if there is
    /// one, else the smallest that is long enough, else a new one.
    pub(super) fn take(len: usize) -> Self {
        let pooled = POOL.with(|pool| {
            let mut pool = pool.borrow_mut();
            let pick = pool.iter().position(|v| v.len() == len).or_else(|| {
                (0..pool.len())
                    .filter(|&i| pool[i].len() > len)
                    .min_by_key(|&i| pool[i].len())
            });
            pick.map(|i| pool.swap_remove(i))
        });
        match pooled {
            Some(mut v) => {
                v.truncate(len);
                HostBuf(v)
            }
            None => HostBuf(vec![0f32; len]),
        }
    }
}

impl std::ops::Deref for HostBuf {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.0
    }
}

impl std::ops::DerefMut for HostBuf {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.0
    }
}

impl HostBuf {
    /// A buffer of `len` zeros (a pooled one, cleared).
    pub(super) fn zeroed(len: usize) -> Self {
        let mut b = Self::take(len);
        b.0.fill(0.0);
        b
    }
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        let v = std::mem::take(&mut self.0);
        if v.is_empty() {
            return;
        }
        // `try_with`: a buffer dropped while the thread exits is just freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL_BUFFERS {
                pool.push(v);
            }
        });
    }
}

/// A weight matrix on the host: the optimizer's shared copy or one made
/// for this op.
enum HostRows {
    Shared(Arc<Vec<f32>>),
    Copied(HostBuf),
}

impl std::ops::Deref for HostRows {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            HostRows::Shared(v) => v,
            HostRows::Copied(b) => b,
        }
    }
}

/// `relu?(x W^T + b)` for `x: (batch, in)`, `w: (out, in)`, `b: (out,)`,
/// with the backward pass on `x`'s tape (gradients for `w` and `b` too).
/// `x` must be contiguous, as every op of the network leaves it.
pub fn linear_cpu<T: Tape<f32, Cpu>>(
    dev: &Cpu,
    x: Matrix<Cpu, T>,
    w: &Matrix<Cpu>,
    w_host: Option<&Arc<Vec<f32>>>,
    b: &Tensor<(usize,), f32, Cpu>,
    opts: LinearOpts,
) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let (batch, inputs) = *x.shape();
    let outputs = w.shape().0;
    assert!(
        w.shape().1 == inputs && b.shape().0 == outputs,
        "linear: input {batch}x{inputs}, weight {:?}, bias {:?}",
        w.shape(),
        b.shape()
    );
    let xs = host_copy(&x);
    // The weights' host copy when the optimizer keeps one, else a copy now.
    let ws = match w_host {
        Some(h) if h.len() == outputs * inputs => HostRows::Shared(Arc::clone(h)),
        _ => HostRows::Copied(host_copy(w)),
    };
    let mut out = Vec::with_capacity(batch * outputs);
    let bias = host_copy(b);
    for _ in 0..batch {
        out.extend_from_slice(&bias);
    }
    gemm_acc(
        batch,
        outputs,
        inputs,
        &mut out,
        Operand::rows(&xs, inputs),
        Operand::transposed(&ws, inputs),
    );
    // With a ReLU the backward masks the gradient by where the output is
    // positive; inference (no tape) needs no mask.
    let mask: Option<Vec<bool>> = match (opts.relu, T::OWNS_TAPE) {
        (false, _) => None,
        (true, false) => {
            out.par_chunks_mut(outputs)
                .for_each(|row| row.iter_mut().for_each(|v| *v = v.max(0.0)));
            None
        }
        (true, true) => {
            let mut mask = vec![false; out.len()];
            out.par_chunks_mut(outputs)
                .zip(mask.par_chunks_mut(outputs))
                .for_each(|(row, keep)| {
                    for (v, k) in row.iter_mut().zip(keep) {
                        *k = *v > 0.0;
                        *v = v.max(0.0);
                    }
                });
            Some(mask)
        }
    };
    let out = dev.tensor_from_vec(out, (batch, outputs));
    let (x_ghost, w_ghost, b_ghost, out_ghost) = (x.ghost(), w.ghost(), b.ghost(), out.ghost());
    let dev = dev.clone();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        // This op made `out`, so every reader of its gradient has run: take
        // the buffer instead of copying it.
        let empty = dev.try_alloc_len(0)?;
        let mut g = std::mem::replace(grads.get_or_alloc_mut(&out_ghost)?, empty);
        if let Some(mask) = &mask {
            g.par_chunks_mut(outputs)
                .zip(mask.par_chunks(outputs))
                .for_each(|(row, keep)| {
                    for (v, k) in row.iter_mut().zip(keep) {
                        *v = if *k { *v } else { 0.0 };
                    }
                });
        }
        if opts.input_grad {
            let gx: &mut [f32] = grads.get_or_alloc_mut(&x_ghost)?;
            gemm_acc(
                batch,
                inputs,
                outputs,
                gx,
                Operand::rows(&g, outputs),
                Operand::rows(&ws, inputs),
            );
        }
        let gw: &mut [f32] = grads.get_or_alloc_mut(&w_ghost)?;
        gemm_acc(
            outputs,
            inputs,
            batch,
            gw,
            Operand::transposed(&g, outputs),
            Operand::rows(&xs, inputs),
        );
        let gb: &mut [f32] = grads.get_or_alloc_mut(&b_ghost)?;
        for row in g.chunks_exact(outputs) {
            for (a, v) in gb.iter_mut().zip(row) {
                *a += *v;
            }
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// [`linear_cpu`]'s maths from dfdx's `matmul`, broadcast add and `relu`:
/// works on every dfdx device (cuBLAS on CUDA). Computes the input gradient
/// whatever `opts.input_grad` says.
pub fn linear_generic<D, T>(
    x: Matrix<D, T>,
    w: &Matrix<D>,
    b: &Tensor<(usize,), f32, D>,
    opts: LinearOpts,
) -> Matrix<D, T>
where
    D: Device<f32>,
    T: Tape<f32, D>,
{
    let y = x.matmul(w.clone().permute());
    let shape = *y.shape();
    let y = y + b.clone().broadcast_like::<_, Axis<0>>(&shape);
    if opts.relu {
        y.relu()
    } else {
        y
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// Uniform values in [-1, 1) from a seeded generator (shared with the conv tests).
    pub(in crate::model) fn random<S: Shape>(
        dev: &Cpu,
        shape: S,
        seed: u64,
    ) -> Tensor<S, f32, Cpu> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n = shape.num_elements();
        let v: Vec<f32> = (0..n).map(|_| rng.gen_range(-1.0..1.0)).collect();
        dev.tensor_from_vec(v, shape)
    }

    /// Asserts `|a - b| <= tol * (1 + max(|a|, |b|))` everywhere.
    pub(in crate::model) fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
                "at {i}: {x} vs {y}"
            );
        }
    }

    /// Output and the gradients (x, w, b) of sum(linear(x) * r).
    fn pass(
        cpu_op: bool,
        (batch, inputs, outputs): (usize, usize, usize),
        opts: LinearOpts,
    ) -> [Vec<f32>; 4] {
        let dev = Cpu::seed_from_u64(0);
        let x = random(&dev, (batch, inputs), 1);
        let w = random(&dev, (outputs, inputs), 2);
        let b = random(&dev, (outputs,), 3);
        let r = random(&dev, (batch, outputs), 4);
        let apply = |x: Matrix<Cpu, OwnedTape<f32, Cpu>>| {
            if cpu_op {
                linear_cpu(&dev, x, &w, None, &b, opts)
            } else {
                linear_generic(x, &w, &b, opts)
            }
        };
        let y = apply(x.leaky_trace());
        let values = y.retaped::<NoneTape>().as_vec();
        let grads = (apply(x.leaky_trace()) * r).sum::<Rank0, _>().backward();
        // Without an input gradient, none is recorded (`get` would panic).
        let gx = match opts.input_grad {
            true => grads.get(&x).as_vec(),
            false => Vec::new(),
        };
        [values, gx, grads.get(&w).as_vec(), grads.get(&b).as_vec()]
    }

    /// The last runs every product as two column blocks (256 columns or more).
    const SHAPES: [(usize, usize, usize); 5] = [
        (3, 5, 4),
        (1, 1, 1),
        (17, 33, 9),
        (64, 70, 130),
        (40, 300, 270),
    ];

    #[test]
    fn linear_cpu_matches_dfdx_matmul() {
        for shape in SHAPES {
            for relu in [false, true] {
                let opts = LinearOpts {
                    relu,
                    input_grad: true,
                };
                let ours = pass(true, shape, opts);
                let theirs = pass(false, shape, opts);
                for (a, b) in ours.iter().zip(&theirs) {
                    close(a, b, 1e-5);
                }
            }
        }
    }

    #[test]
    fn linear_cpu_reads_a_host_copy_of_the_weights_to_the_same_bits() {
        let dev = Cpu::seed_from_u64(0);
        let (batch, inputs, outputs) = SHAPES[4];
        let x = random(&dev, (batch, inputs), 1);
        let w = random(&dev, (outputs, inputs), 2);
        let b = random(&dev, (outputs,), 3);
        let r = random(&dev, (batch, outputs), 4);
        let copy = Arc::new(w.as_vec());
        let opts = LinearOpts {
            relu: true,
            input_grad: true,
        };
        let run = |host: Option<&Arc<Vec<f32>>>| {
            let y = linear_cpu(&dev, x.leaky_trace(), &w, host, &b, opts);
            let values = y.retaped::<NoneTape>().as_vec();
            let y = linear_cpu(&dev, x.leaky_trace(), &w, host, &b, opts);
            let grads = (y * r.clone()).sum::<Rank0, _>().backward();
            let bits = |v: Vec<f32>| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            [
                bits(values),
                bits(grads.get(&x).as_vec()),
                bits(grads.get(&w).as_vec()),
                bits(grads.get(&b).as_vec()),
            ]
        };
        assert_eq!(run(Some(&copy)), run(None));
        // A copy of the wrong length is never read: the tensor is copied.
        let short = Arc::new(vec![0f32; 3]);
        assert_eq!(run(Some(&short)), run(None));
    }

    #[test]
    fn linear_cpu_without_input_grad_records_none() {
        let opts = LinearOpts {
            relu: true,
            input_grad: false,
        };
        let [_, gx, gw, gb] = pass(true, SHAPES[2], opts);
        let full = pass(false, SHAPES[2], opts);
        assert!(gx.is_empty());
        close(&gw, &full[2], 1e-5);
        close(&gb, &full[3], 1e-5);
    }

    #[test]
    fn host_copies_reuse_dropped_buffers_and_hold_exactly_the_values() {
        let dev = Cpu::seed_from_u64(0);
        let a = random(&dev, (4, 5), 11);
        let b = random(&dev, (4, 5), 12);
        let first = host_copy(&a);
        assert_eq!(&*first, a.as_vec().as_slice());
        let ptr = first.as_ptr();
        drop(first);
        // The same size again: the dropped buffer, overwritten.
        let second = host_copy(&b);
        assert_eq!(second.as_ptr(), ptr);
        assert_eq!(&*second, b.as_vec().as_slice());
        drop(second);
        // A smaller copy may take a longer buffer; it holds just its values.
        let small = random(&dev, (3,), 13);
        let third = host_copy(&small);
        assert_eq!(third.len(), 3);
        assert_eq!(&*third, small.as_vec().as_slice());
        // A buffer in use is never handed out twice.
        let fourth = host_copy(&a);
        assert_ne!(fourth.as_ptr(), third.as_ptr());
        assert_eq!(&*fourth, a.as_vec().as_slice());
    }

    #[test]
    fn column_split_products_give_the_same_bits_on_any_thread_count() {
        let opts = LinearOpts {
            relu: true,
            input_grad: true,
        };
        let on = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .expect("thread pool")
                .install(|| pass(true, SHAPES[4], opts))
        };
        let one = on(1);
        assert!(one.iter().all(|v| !v.is_empty()));
        assert_eq!(one, on(2));
        assert_eq!(one, on(3));
    }

    #[test]
    fn linear_cpu_is_deterministic() {
        let opts = LinearOpts {
            relu: true,
            input_grad: true,
        };
        assert_eq!(pass(true, SHAPES[3], opts), pass(true, SHAPES[3], opts));
    }

    #[test]
    fn linear_known_values() {
        // [[1, 2]] W^T + b with W = [[1, 0], [1, -1], [0, 3]], b = [0.5, 0, -10]:
        // [1.5, -1, -4]; the ReLU zeroes the last two.
        let dev = Cpu::seed_from_u64(0);
        let x = dev.tensor_from_vec(vec![1.0, 2.0], (1, 2));
        let w = dev.tensor_from_vec(vec![1.0, 0.0, 1.0, -1.0, 0.0, 3.0], (3, 2));
        let b = dev.tensor_from_vec(vec![0.5, 0.0, -10.0], (3,));
        let mut opts = LinearOpts {
            relu: false,
            input_grad: true,
        };
        let y = linear_cpu(&dev, x.clone(), &w, None, &b, opts).as_vec();
        assert_eq!(y, vec![1.5, -1.0, -4.0]);
        opts.relu = true;
        let y = linear_cpu(&dev, x, &w, None, &b, opts).as_vec();
        assert_eq!(y, vec![1.5, 0.0, 0.0]);
    }

    #[test]
    fn linear_gradients_match_finite_differences() {
        let (batch, inputs, outputs) = (4, 6, 5);
        let dev = Cpu::seed_from_u64(0);
        let x = random(&dev, (batch, inputs), 11);
        let w = random(&dev, (outputs, inputs), 12);
        let b = random(&dev, (outputs,), 13);
        let r = random(&dev, (batch, outputs), 14);
        // No ReLU: its kink makes finite differences unreliable; the ReLU's
        // mask is checked against dfdx above.
        let opts = LinearOpts {
            relu: false,
            input_grad: true,
        };
        let grads = (linear_cpu(&dev, x.leaky_trace(), &w, None, &b, opts) * r.clone())
            .sum::<Rank0, _>()
            .backward();
        let f = |x: &Matrix<Cpu>, w: &Matrix<Cpu>, b: &Tensor<(usize,), f32, Cpu>| {
            (linear_cpu(&dev, x.clone(), w, None, b, opts) * r.clone())
                .sum::<Rank0, _>()
                .array()
        };
        let eps = 1e-2f32;
        let check = |analytic: Vec<f32>, numeric: &dyn Fn(usize, f32) -> f32| {
            for (i, a) in analytic.iter().enumerate() {
                let n = (numeric(i, eps) - numeric(i, -eps)) / (2.0 * eps);
                assert!((n - a).abs() < 1e-2, "grad {i}: numeric {n} analytic {a}");
            }
        };
        let nudge = |base: Vec<f32>, i: usize, d: f32| {
            let mut v = base;
            v[i] += d;
            v
        };
        check(grads.get(&x).as_vec(), &|i, d| {
            let xv = dev.tensor_from_vec(nudge(x.as_vec(), i, d), (batch, inputs));
            f(&xv, &w, &b)
        });
        check(grads.get(&w).as_vec(), &|i, d| {
            let wv = dev.tensor_from_vec(nudge(w.as_vec(), i, d), (outputs, inputs));
            f(&x, &wv, &b)
        });
        check(grads.get(&b).as_vec(), &|i, d| {
            let bv = dev.tensor_from_vec(nudge(b.as_vec(), i, d), (outputs,));
            f(&x, &w, &bv)
        });
    }
}

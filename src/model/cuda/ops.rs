//! The CUDA ops behind `impl Backend for Cuda` (src/model/ops.rs): each one
//! launches kernels of `kernels.cu` on dfdx's device and stream and records
//! its backward pass on the tape, the pattern of the CPU ops (`split_tape`,
//! compute, `add_backward_op`).
//!
//! - [`im2col`]: 3x3 patches (padding 1); backward: col2im, gathered per
//!   input value (no atomics).
//! - [`max_pool2`]: 2x2 stride-2 max-pool recording the winning index;
//!   backward: a scatter to the winners (windows never overlap).
//! - [`bias_act`]: the epilogue `pool?(relu?(y + b))` of a matmul, recording
//!   one byte per output (the window position that won, or ReLU off);
//!   backward: the gradient of `y` gathered per value, and the bias gradient
//!   as column sums over the output rows in a fixed order.
//! - [`linear`] and [`conv3x3`]: dfdx's matmul (cuBLAS) between those.
//! - [`kd_loss`]: the KD loss and its logits gradient in one pass over the
//!   logits, one thread per row; the backward scales the stored gradient.
//!   Logit-standardised KD runs dfdx's ops instead (`kd_loss_generic`).
//!
//! Every sum runs in an order fixed by the shapes (`launch.rs`), so two runs
//! give the same bits. Tensors must be contiguous (every op of the network
//! leaves them so); sizes over `i32::MAX` values are refused with a message.

use std::fmt::Debug;

use dfdx::cudarc::driver::{CudaSlice, DevicePtr, DriverError, LaunchAsync, LaunchConfig};
use dfdx::prelude::*;
use dfdx::tensor::{CudaError, Gradients};

use super::function;
use super::launch::{grid_blocks, index_len, ColumnSumPlan, THREADS};
use crate::model::conv::ConvOpts;
use crate::model::kd::KdTerms;
use crate::model::kernels::LinearOpts;
use crate::model::ops::{ImageGeom, Matrix};

/// Launches kernel `name` with one thread per item of `n` (grid-stride).
///
/// # Safety
/// `params` must match the kernel's signature in `kernels.cu`, and every
/// pointer in it must address device memory of the sizes the kernel reads
/// and writes, alive until the stream reaches the kernel.
unsafe fn launch<P>(dev: &Cuda, name: &'static str, n: u32, params: P) -> Result<(), DriverError>
where
    dfdx::cudarc::driver::CudaFunction: LaunchAsync<P>,
{
    if n == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid_dim: (grid_blocks(n), 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    function(dev, name)?.launch(cfg, params)
}

/// A forward pass cannot return an error through dfdx's op signatures (nor
/// do dfdx's own ops): a driver failure there ends the run with its cause.
fn forward<R, E: Debug>(result: Result<R, E>, op: &str) -> R {
    result.unwrap_or_else(|e| panic!("cuda {op}: {e:?}"))
}

/// A kernel size, or the end of the run with a message naming `what`.
fn size(n: usize, what: &str) -> u32 {
    forward(index_len(n, what), what)
}

/// The device address of a slice, as a kernel argument.
fn ptr<T>(s: &CudaSlice<T>) -> u64 {
    *s.device_ptr()
}

/// `n` uninitialised values on `dev`, every one of which the next kernel
/// writes.
fn alloc<E: dfdx::cudarc::driver::DeviceRepr>(dev: &Cuda, n: usize, op: &str) -> CudaSlice<E> {
    // SAFETY: each caller launches a kernel that writes all `n` values
    // before anything reads them.
    forward(unsafe { dev.alloc_uninit::<E>(n) }, op)
}

/// Checks a tensor's shape and layout against what a kernel assumes.
fn check_input<S: Shape + PartialEq + Debug, T>(t: &Tensor<S, f32, Cuda, T>, shape: S, what: &str) {
    assert!(
        *t.shape() == shape && t.is_contiguous(),
        "cuda {what}: expected a contiguous {shape:?}, got {:?} (contiguous: {})",
        t.shape(),
        t.is_contiguous()
    );
}

/// An image geometry as kernel arguments.
#[derive(Clone, Copy)]
struct Dims {
    batch: u32,
    h: u32,
    w: u32,
    c: u32,
}

impl Dims {
    fn of(g: ImageGeom, what: &str) -> Dims {
        Dims {
            batch: size(g.batch, what),
            h: size(g.height, what),
            w: size(g.width, what),
            c: size(g.channels, what),
        }
    }
}

/// `out[j] = beta * out[j] + scale * sum_r src[(r, j)] + offset` over a
/// `rows x cols` matrix, skipping values whose `code` byte is RELU_OFF when
/// `code` is not 0 (null); the order of the sum depends on the shape only.
fn column_sums(
    dev: &Cuda,
    src: u64,
    code: u64,
    rows: u32,
    cols: u32,
    (scale, offset, beta): (f32, f32, f32),
    out: u64,
) -> Result<(), CudaError> {
    let plan = ColumnSumPlan::new(rows);
    let n = plan.parts * cols;
    // SAFETY: column_sums_partial writes all `parts * cols` values.
    let partial = unsafe { dev.alloc_uninit::<f32>(n as usize) }?;
    let part = (
        src,
        code,
        rows,
        cols,
        plan.rows_per_part,
        plan.parts,
        ptr(&partial),
    );
    // SAFETY: `src` (and `code`) hold `rows * cols` values, `partial`
    // `parts * cols`, `out` `cols`; `partial` is freed in stream order.
    unsafe {
        launch(dev, "column_sums_partial", n, part)?;
        let finish = (ptr(&partial), plan.parts, cols, scale, offset, beta, out);
        launch(dev, "column_sums_finish", cols, finish)?;
    }
    Ok(())
}

/// [`crate::model::Backend::im2col`] on CUDA.
pub fn im2col<T: Tape<f32, Cuda>>(dev: &Cuda, x: Matrix<Cuda, T>, g: ImageGeom) -> Matrix<Cuda, T> {
    im2col_with(dev, x, g, true)
}

/// [`im2col`], recording the input gradient only when `input_grad`.
fn im2col_with<T: Tape<f32, Cuda>>(
    dev: &Cuda,
    x: Matrix<Cuda, T>,
    g: ImageGeom,
    input_grad: bool,
) -> Matrix<Cuda, T> {
    let (x, mut tape) = x.split_tape();
    check_input(&x, (g.rows(), g.channels), "im2col input");
    let d = Dims::of(g, "im2col");
    let n_out = size(g.rows() * 9 * g.channels, "im2col output");
    let n_in = size(g.rows() * g.channels, "im2col input");
    let out = alloc::<f32>(dev, n_out as usize, "im2col");
    let args = (ptr(x.cuda_slice()), ptr(&out), d.batch, d.h, d.w, d.c);
    // SAFETY: x holds `rows * c` values and out `rows * 9c`, as the kernel
    // indexes them for these dims.
    forward(
        unsafe { launch(dev, "im2col3x3_fwd", n_out, args) },
        "im2col",
    );
    let out = dev.tensor_from_cuda_slice((g.rows(), 9 * g.channels), out);
    if input_grad {
        let (x_ghost, out_ghost, dev) = (x.ghost(), out.ghost(), dev.clone());
        tape.add_backward_op(move |grads: &mut Gradients<f32, Cuda>| {
            let g_out = *grads.get_or_alloc_mut(&out_ghost)?.device_ptr();
            let gx = *grads.get_or_alloc_mut(&x_ghost)?.device_ptr();
            // SAFETY: the gradients have the sizes of out and x.
            unsafe {
                launch(
                    &dev,
                    "col2im3x3_bwd",
                    n_in,
                    (g_out, gx, d.batch, d.h, d.w, d.c),
                )
            }?;
            Ok(())
        });
    }
    out.put_tape(tape)
}

/// [`crate::model::Backend::max_pool2`] on CUDA.
pub fn max_pool2<T: Tape<f32, Cuda>>(
    dev: &Cuda,
    x: Matrix<Cuda, T>,
    g: ImageGeom,
) -> Matrix<Cuda, T> {
    let (x, mut tape) = x.split_tape();
    check_input(&x, (g.rows(), g.channels), "max_pool2 input");
    let d = Dims::of(g, "max_pool2");
    let rows_out = g.pooled().rows();
    let n_out = size(rows_out * g.channels, "max_pool2 output");
    let out = alloc::<f32>(dev, n_out as usize, "max_pool2");
    let arg = alloc::<u32>(dev, n_out as usize, "max_pool2");
    let args = (
        ptr(x.cuda_slice()),
        ptr(&out),
        ptr(&arg),
        d.batch,
        d.h,
        d.w,
        d.c,
    );
    // SAFETY: x holds `rows * c` values; out and arg one per pooled value.
    forward(
        unsafe { launch(dev, "max_pool2_fwd", n_out, args) },
        "max_pool2",
    );
    let out = dev.tensor_from_cuda_slice((rows_out, g.channels), out);
    let (x_ghost, out_ghost, dev) = (x.ghost(), out.ghost(), dev.clone());
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cuda>| {
        let g_out = *grads.get_or_alloc_mut(&out_ghost)?.device_ptr();
        let gx = *grads.get_or_alloc_mut(&x_ghost)?.device_ptr();
        // SAFETY: arg holds indices into x's gradient, one per value of out's.
        unsafe { launch(&dev, "max_pool2_bwd", n_out, (g_out, ptr(&arg), gx, n_out)) }?;
        Ok(())
    });
    out.put_tape(tape)
}

/// The epilogue `pool?(relu?(y + b))` of a matmul `y: (rows, o)`, `b: (o,)`;
/// `pool` is `y`'s image geometry (channels `o`) when a 2x2 max-pool
/// follows. Backward for `y` (on the tape) and `b`.
pub fn bias_act<T: Tape<f32, Cuda>>(
    dev: &Cuda,
    y: Matrix<Cuda, T>,
    b: &Tensor<(usize,), f32, Cuda>,
    relu: bool,
    pool: Option<ImageGeom>,
) -> Matrix<Cuda, T> {
    let (y, mut tape) = y.split_tape();
    let (rows, o) = *y.shape();
    check_input(&y, (rows, o), "bias epilogue input");
    check_input(b, (o,), "bias");
    let n_in = size(rows * o, "bias epilogue input");
    let rows_out = match pool {
        Some(g) => {
            assert!(
                g.rows() == rows && g.channels == o,
                "cuda bias epilogue: {g:?} for {rows}x{o}"
            );
            g.pooled().rows()
        }
        None => rows,
    };
    let n_out = size(rows_out * o, "bias epilogue output");
    let out = alloc::<f32>(dev, n_out as usize, "bias epilogue");
    let code = alloc::<u8>(dev, n_out as usize, "bias epilogue");
    let (yp, bp, op, cp) = (
        ptr(y.cuda_slice()),
        ptr(b.cuda_slice()),
        ptr(&out),
        ptr(&code),
    );
    let (o32, relu32) = (size(o, "channels"), relu as u32);
    let pooled = pool.map(|g| Dims::of(g, "bias epilogue"));
    // SAFETY: y holds `rows * o` values, b `o`, out and code one per output.
    let launched = unsafe {
        match pooled {
            Some(d) => launch(
                dev,
                "bias_act_pool_fwd",
                n_out,
                (yp, bp, op, cp, d.batch, d.h, d.w, o32, relu32),
            ),
            None => launch(
                dev,
                "bias_act_fwd",
                n_out,
                (yp, bp, op, cp, size(rows, "rows"), o32, relu32),
            ),
        }
    };
    forward(launched, "bias epilogue");
    let out = dev.tensor_from_cuda_slice((rows_out, o), out);
    let (y_ghost, b_ghost, out_ghost) = (y.ghost(), b.ghost(), out.ghost());
    let (dev, rows_out) = (dev.clone(), size(rows_out, "rows"));
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cuda>| {
        let g_out = *grads.get_or_alloc_mut(&out_ghost)?.device_ptr();
        let gy = *grads.get_or_alloc_mut(&y_ghost)?.device_ptr();
        let code_p = ptr(&code);
        // SAFETY: the gradients have the sizes of out and y; code one byte
        // per output value.
        unsafe {
            match pooled {
                Some(d) => launch(
                    &dev,
                    "bias_act_pool_bwd",
                    n_in,
                    (g_out, code_p, gy, d.batch, d.h, d.w, d.c),
                ),
                None => launch(&dev, "bias_act_bwd", n_in, (g_out, code_p, gy, n_in)),
            }
        }?;
        // Each output's gradient reaches exactly one value of y (or none, where
        // the ReLU was off), so the bias gradient is the masked column sum of
        // the output gradient.
        let gb = *grads.get_or_alloc_mut(&b_ghost)?.device_ptr();
        column_sums(&dev, g_out, code_p, rows_out, o32, (1.0, 0.0, 1.0), gb)?;
        Ok(())
    });
    out.put_tape(tape)
}

/// [`crate::model::Backend::linear`] on CUDA: dfdx's matmul (cuBLAS), then
/// the bias epilogue. The input gradient is always computed (the matmul's).
pub fn linear<T: Tape<f32, Cuda>>(
    dev: &Cuda,
    x: Matrix<Cuda, T>,
    w: &Matrix<Cuda>,
    b: &Tensor<(usize,), f32, Cuda>,
    opts: LinearOpts,
) -> Matrix<Cuda, T> {
    let y = x.matmul(w.clone().permute());
    bias_act(dev, y, b, opts.relu, None)
}

/// [`crate::model::Backend::conv3x3`] on CUDA: patches, dfdx's matmul
/// (cuBLAS) with the weight, and the bias + ReLU (+ pool) epilogue.
pub fn conv3x3<T: Tape<f32, Cuda>>(
    dev: &Cuda,
    x: Matrix<Cuda, T>,
    w: &Matrix<Cuda>,
    b: &Tensor<(usize,), f32, Cuda>,
    g: ImageGeom,
    opts: ConvOpts,
) -> Matrix<Cuda, T> {
    let o = w.shape().0;
    let patches = im2col_with(dev, x, g, opts.input_grad);
    let y = patches.matmul(w.clone().permute());
    let pool = opts.pool.then_some(ImageGeom { channels: o, ..g });
    bias_act(dev, y, b, true, pool)
}

/// [`crate::model::Backend::kd_loss`] on CUDA: the loss and the gradient of
/// the logits in one kernel (one thread per row), the batch sum in a fixed
/// order; the backward adds the stored gradient times the loss's gradient.
pub fn kd_loss<T: Tape<f32, Cuda>>(
    dev: &Cuda,
    logits: Matrix<Cuda, T>,
    terms: KdTerms,
) -> Tensor<Rank0, f32, Cuda, T> {
    if terms.soft.as_ref().is_some_and(|s| s.standardize) {
        // Standardised logits: dfdx's ops on the device (normalize, then
        // the same loss), not the fused kernel.
        return crate::model::kd::kd_loss_generic(dev, logits, terms);
    }
    let (logits, mut tape) = logits.split_tape();
    let (batch, classes) = *logits.shape();
    check_input(&logits, (batch, classes), "kd loss logits");
    let n = size(batch * classes, "kd loss logits");
    let cu = dev.cudarc_device();
    let upload = |v: Vec<f32>, what: &str| {
        assert_eq!(
            v.len(),
            n as usize,
            "cuda kd loss: {what} for {batch}x{classes} logits"
        );
        forward(cu.htod_copy(v), "kd loss upload")
    };
    let hard = terms
        .hard
        .map(|h| (upload(h.rows, "target rows"), h.weight));
    let soft = terms.soft.map(|mut s| {
        let probs = std::mem::take(&mut s.probs);
        (upload(probs, "teacher probabilities"), s)
    });
    let inv_b = 1.0 / batch as f32;
    let (hard_p, hard_w) = hard.as_ref().map_or((0, 0.0), |(v, w)| (ptr(v), *w));
    let (probs_p, soft_w, t, entropy) = soft.as_ref().map_or((0, 0.0, 1.0, 0.0), |(v, s)| {
        (ptr(v), s.weight, s.temperature, s.entropy)
    });
    let rows = size(batch, "kd loss rows");
    let row_loss = alloc::<f32>(dev, batch, "kd loss");
    let grad = alloc::<f32>(dev, n as usize, "kd loss");
    let loss = alloc::<f32>(dev, 1, "kd loss");
    let args = (
        ptr(logits.cuda_slice()),
        hard_p,
        hard_w,
        probs_p,
        soft_w,
        t,
        rows,
        size(classes, "classes"),
        inv_b,
        ptr(&row_loss),
        ptr(&grad),
    );
    // SAFETY: logits, the target rows and probabilities hold `batch *
    // classes` values (or are null), row_loss `batch`, grad `batch * classes`.
    forward(
        unsafe { launch(dev, "kd_loss_rows", rows, args) },
        "kd loss",
    );
    let offset = soft_w * t * t * entropy * inv_b;
    let sum = column_sums(
        dev,
        ptr(&row_loss),
        0,
        rows,
        1,
        (inv_b, offset, 0.0),
        ptr(&loss),
    );
    forward(sum, "kd loss");
    let out = dev.tensor_from_cuda_slice((), loss);
    let (logits_ghost, out_ghost, dev) = (logits.ghost(), out.ghost(), dev.clone());
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cuda>| {
        let g_loss = *grads.get_or_alloc_mut(&out_ghost)?.device_ptr();
        let g_logits = *grads.get_or_alloc_mut(&logits_ghost)?.device_ptr();
        // SAFETY: the loss's gradient is one value; grad and the logits'
        // gradient hold `batch * classes`.
        unsafe { launch(&dev, "scaled_add", n, (g_loss, ptr(&grad), g_logits, n)) }?;
        Ok(())
    });
    out.put_tape(tape)
}

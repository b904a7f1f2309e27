//! distill's own CUDA kernels behind [`crate::model::Backend`] for dfdx's
//! `Cuda` device: the 3x3 patches (im2col, with its col2im backward), the
//! 2x2 max-pool (argmax forward, scatter backward), the bias + ReLU (+ pool)
//! epilogue of the convolution and dense layers around dfdx's cuBLAS matmul,
//! and the fused KD loss (loss and logits gradient in one pass).
//!
//! - `kernels.cu` holds the device code; `build.rs` compiles it to PTX when
//!   the `cuda` feature is on, and `function` loads that PTX once per
//!   device (cudarc keeps the module on the device) and hands out kernels.
//! - [`launch`] holds the host-side geometry (grid sizes, 32-bit limits, the
//!   fixed split of column sums), tested without a GPU.
//! - `ops.rs` wires each kernel into dfdx's tape the way the CPU ops are
//!   (`split_tape`, compute, `add_backward_op`).
//!
//! dfdx 0.13 keeps a tensor's device memory and its cudarc device private;
//! the `cuda` build therefore patches dfdx with three accessors
//! (`dfdx-0.13.0-access.patch`, applied by `scripts/cuda-build.sh`, which
//! `make build-cuda` runs).
//!
//! The gather-based ops in [`crate::model::ops`] stay as the reference;
//! `distill check-device --device cuda` compares these kernels with the CPU.

pub mod launch;

#[cfg(feature = "cuda")]
mod ops;
#[cfg(feature = "cuda")]
pub use ops::{bias_act, conv3x3, im2col, kd_loss, linear, max_pool2};

#[cfg(feature = "cuda")]
use dfdx::cudarc::driver::{CudaFunction, DriverError};
#[cfg(feature = "cuda")]
use dfdx::prelude::Cuda;

/// The PTX of `kernels.cu`, compiled by `build.rs`.
#[cfg(feature = "cuda")]
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));

/// The module name the kernels are loaded under on a device.
#[cfg(feature = "cuda")]
const MODULE: &str = "distill_kernels";

/// Every kernel of `kernels.cu`.
#[cfg(feature = "cuda")]
const KERNELS: [&str; 12] = [
    "im2col3x3_fwd",
    "col2im3x3_bwd",
    "max_pool2_fwd",
    "max_pool2_bwd",
    "bias_act_fwd",
    "bias_act_bwd",
    "bias_act_pool_fwd",
    "bias_act_pool_bwd",
    "column_sums_partial",
    "column_sums_finish",
    "kd_loss_rows",
    "scaled_add",
];

/// The kernel `name` on `dev`, loading the module the first time.
#[cfg(feature = "cuda")]
fn function(dev: &Cuda, name: &'static str) -> Result<CudaFunction, DriverError> {
    let cu = dev.cudarc_device();
    if !cu.has_func(MODULE, name) {
        cu.load_ptx(PTX.into(), MODULE, &KERNELS)?;
    }
    // Not found only if `name` is missing from KERNELS (a bug, caught by the
    // first check-device run).
    cu.get_func(MODULE, name).ok_or(DriverError(
        dfdx::cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_FOUND,
    ))
}

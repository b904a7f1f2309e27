//! Convolution and pooling building blocks on stable dfdx.
//!
//! dfdx 0.13 has `conv2d`/`pool2d` only behind its `nightly` feature, so the
//! network builds them itself. Images travel as a matrix of pixel rows,
//! `(batch * height * width, channels)` (channels-last), which turns both
//! operations into row gathers:
//! - [`Backend::im2col`] forms, for each output pixel, the 3x3 neighbourhood
//!   (zero padding 1) as one row of `9 * channels` values, column
//!   `tap * channels + c` with `tap = 3 * dy + dx`; a `matmul` with the weight
//!   then is the convolution.
//! - [`Backend::max_pool2`] takes the maximum over each 2x2 window (stride 2,
//!   odd sizes floored).
//!
//! Two implementations: on the CPU, custom ops with hand-written backward
//! passes (tight loops over contiguous memory, parallel over images with
//! rayon); on any other dfdx device, the same maths from dfdx's `gather`,
//! broadcast multiply and `max` ops, which have kernels everywhere. Tests check
//! both against each other and against finite differences.

use std::any::{Any, TypeId};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use dfdx::prelude::*;
use dfdx::tensor::Gradients;
use rayon::prelude::*;

use super::batchnorm_op::{self, BatchNormOpts, Moments};
use super::block_op::{self, BlockGeom, BlockMoments, BlockParams};
use super::conv::{self, ConvOpts, ConvSpec};
use super::kd::{self, KdTerms};
use super::kernels::{self, LinearOpts};

/// Geometry of a batch of channels-last images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageGeom {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl ImageGeom {
    /// Number of pixel rows, `batch * height * width`.
    pub fn rows(&self) -> usize {
        self.batch * self.height * self.width
    }

    /// The geometry after a 2x2 stride-2 pool.
    pub fn pooled(&self) -> ImageGeom {
        ImageGeom {
            height: self.height / 2,
            width: self.width / 2,
            ..*self
        }
    }
}

/// A residual block's output and, in training, its batch norms' moments;
/// `Err` hands the input back where the device has no block op.
pub type BlockResult<D, T> = Result<(Matrix<D, T>, Option<BlockMoments>), Matrix<D, T>>;

/// Matrix tensor with run-time dimensions.
pub type Matrix<D, T = NoneTape> = Tensor<(usize, usize), f32, D, T>;

/// The device-specific pieces the network needs beyond dfdx's own ops.
pub trait Backend: Device<f32> + Clone + 'static {
    /// Patches for a 3x3, padding-1 convolution: `(rows, C)` to `(rows, 9C)`.
    fn im2col<T: Tape<f32, Self>>(&self, x: Matrix<Self, T>, geom: ImageGeom) -> Matrix<Self, T>;
    /// 2x2 stride-2 max-pool: `(rows, C)` to `(rows / 4, C)` (floored sizes).
    fn max_pool2<T: Tape<f32, Self>>(&self, x: Matrix<Self, T>, geom: ImageGeom)
        -> Matrix<Self, T>;
    /// An affine layer, `relu?(x W^T + b)` for `x: (batch, in)`,
    /// `w: (out, in)`, `b: (out,)` (see [`kernels`]).
    fn linear<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: &Tensor<(usize,), f32, Self>,
        opts: LinearOpts,
    ) -> Matrix<Self, T>;
    /// [`Backend::linear`] given also the weight's host copy when one is
    /// current ([`crate::model::HostMirror`]): a device that computes on
    /// the host reads it instead of copying `w`; others ignore it.
    fn linear_with_host<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        _w_host: Option<&Arc<Vec<f32>>>,
        b: &Tensor<(usize,), f32, Self>,
        opts: LinearOpts,
    ) -> Matrix<Self, T> {
        self.linear(x, w, b, opts)
    }
    /// The convolution block `pool?(relu(conv3x3(x) + b))` for channels-last
    /// `x` of geometry `geom`, `w: (out, 9 * in)`, `b: (out,)` (see [`conv`]).
    fn conv3x3<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: &Tensor<(usize,), f32, Self>,
        geom: ImageGeom,
        opts: ConvOpts,
    ) -> Matrix<Self, T>;
    /// The KD loss of `terms` over `logits: (batch, classes)` (see
    /// [`kd`]): dfdx's ops by default; CUDA fuses loss and gradient.
    fn kd_loss<T: Tape<f32, Self>>(
        &self,
        logits: Matrix<Self, T>,
        terms: KdTerms,
    ) -> Tensor<Rank0, f32, Self, T> {
        kd::kd_loss_generic(self, logits, terms)
    }
    /// Any convolution of a network, `pool?(relu?(conv(x) + b?))`: 3x3
    /// (padding 1) or 1x1, stride 1 or 2, with or without a bias, for
    /// channels-last `x` of geometry `geom`, `w: (out, kernel^2 * in)`
    /// (see [`conv`]).
    fn conv2d<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: Option<&Tensor<(usize,), f32, Self>>,
        geom: ImageGeom,
        spec: ConvSpec,
    ) -> Matrix<Self, T>;
    /// Batch norm over the channels of `x: (rows, C)`,
    /// `relu?(gamma * (x - mean) / sqrt(var + eps) + beta + residual?)`, with
    /// the batch's statistics (returned as [`Moments`]) or the running ones
    /// in `opts` (see [`batchnorm_op`]). The residual's gradient flows by id.
    fn batch_norm<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        gamma: &Tensor<(usize,), f32, Self>,
        beta: &Tensor<(usize,), f32, Self>,
        residual: Option<&Matrix<Self>>,
        opts: BatchNormOpts<'_>,
    ) -> (Matrix<Self, T>, Option<Moments>);
    /// A residual basic block as one op (see [`block_op`]), or `Err(x)`
    /// where this device has none and the layer composes the block from the
    /// ops above (the default).
    fn basic_block<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        _params: &BlockParams<'_, Self>,
        _geom: BlockGeom,
    ) -> BlockResult<Self, T> {
        Err(x)
    }
    /// Human-readable device name.
    fn describe(&self) -> String;
    /// The bytes free where this device keeps its tensors (the memory the
    /// host has available for the CPU, the GPU's free memory for CUDA), for
    /// the memory check before a run; `None` where it cannot be read.
    fn memory_free(&self) -> Option<u128> {
        None
    }
    /// Opens this kind of device afresh (the first of its kind). A device
    /// handle need not cross threads (CUDA's holds a stream), so a worker
    /// thread opens its own with this instead of borrowing one.
    fn open_default() -> Result<Self, String>
    where
        Self: Sized;
}

impl Backend for Cpu {
    fn im2col<T: Tape<f32, Self>>(&self, x: Matrix<Self, T>, geom: ImageGeom) -> Matrix<Self, T> {
        im2col_cpu(self, x, geom)
    }
    fn max_pool2<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        geom: ImageGeom,
    ) -> Matrix<Self, T> {
        max_pool2_cpu(self, x, geom)
    }
    fn linear<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: &Tensor<(usize,), f32, Self>,
        opts: LinearOpts,
    ) -> Matrix<Self, T> {
        kernels::linear_cpu(self, x, w, None, b, opts)
    }
    fn linear_with_host<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        w_host: Option<&Arc<Vec<f32>>>,
        b: &Tensor<(usize,), f32, Self>,
        opts: LinearOpts,
    ) -> Matrix<Self, T> {
        kernels::linear_cpu(self, x, w, w_host, b, opts)
    }
    fn conv3x3<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: &Tensor<(usize,), f32, Self>,
        geom: ImageGeom,
        opts: ConvOpts,
    ) -> Matrix<Self, T> {
        conv::conv3x3_cpu(self, x, w, b, geom, opts)
    }
    fn conv2d<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: Option<&Tensor<(usize,), f32, Self>>,
        geom: ImageGeom,
        spec: ConvSpec,
    ) -> Matrix<Self, T> {
        conv::conv_cpu(self, x, w, b, geom, spec)
    }
    fn batch_norm<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        gamma: &Tensor<(usize,), f32, Self>,
        beta: &Tensor<(usize,), f32, Self>,
        residual: Option<&Matrix<Self>>,
        opts: BatchNormOpts<'_>,
    ) -> (Matrix<Self, T>, Option<Moments>) {
        batchnorm_op::batch_norm_cpu(self, x, gamma, beta, residual, opts)
    }
    fn basic_block<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        params: &BlockParams<'_, Self>,
        geom: BlockGeom,
    ) -> BlockResult<Self, T> {
        if geom.input.batch == 0 {
            return Err(x);
        }
        Ok(block_op::basic_block_cpu(self, x, params, geom))
    }
    fn describe(&self) -> String {
        format!(
            "cpu ({} threads, {} kernels)",
            rayon::current_num_threads(),
            crate::simd::level().name()
        )
    }
    fn memory_free(&self) -> Option<u128> {
        super::memory::available()
    }
    fn open_default() -> Result<Self, String> {
        Ok(Cpu::default())
    }
}

#[cfg(feature = "cuda")]
impl Backend for Cuda {
    // distill's own kernels (src/model/cuda/); the gather-based ops below
    // stay as the reference.
    fn im2col<T: Tape<f32, Self>>(&self, x: Matrix<Self, T>, geom: ImageGeom) -> Matrix<Self, T> {
        super::cuda::im2col(self, x, geom)
    }
    fn max_pool2<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        geom: ImageGeom,
    ) -> Matrix<Self, T> {
        super::cuda::max_pool2(self, x, geom)
    }
    fn linear<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: &Tensor<(usize,), f32, Self>,
        opts: LinearOpts,
    ) -> Matrix<Self, T> {
        super::cuda::linear(self, x, w, b, opts)
    }
    fn conv3x3<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: &Tensor<(usize,), f32, Self>,
        geom: ImageGeom,
        opts: ConvOpts,
    ) -> Matrix<Self, T> {
        super::cuda::conv3x3(self, x, w, b, geom, opts)
    }
    fn kd_loss<T: Tape<f32, Self>>(
        &self,
        logits: Matrix<Self, T>,
        terms: KdTerms,
    ) -> Tensor<Rank0, f32, Self, T> {
        super::cuda::kd_loss(self, logits, terms)
    }
    fn conv2d<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        w: &Matrix<Self>,
        b: Option<&Tensor<(usize,), f32, Self>>,
        geom: ImageGeom,
        spec: ConvSpec,
    ) -> Matrix<Self, T> {
        // The `cnn:` block has a fused CUDA epilogue; every other form is
        // the CUDA patches, affine op and pool in turn.
        match (spec.kernel, spec.stride, b, spec.relu) {
            (3, 1, Some(b), true) => {
                let opts = ConvOpts {
                    pool: spec.pool,
                    input_grad: spec.input_grad,
                };
                super::cuda::conv3x3(self, x, w, b, geom, opts)
            }
            _ => conv::conv_device_ops(self, x, w, b, geom, spec),
        }
    }
    fn batch_norm<T: Tape<f32, Self>>(
        &self,
        x: Matrix<Self, T>,
        gamma: &Tensor<(usize,), f32, Self>,
        beta: &Tensor<(usize,), f32, Self>,
        residual: Option<&Matrix<Self>>,
        opts: BatchNormOpts<'_>,
    ) -> (Matrix<Self, T>, Option<Moments>) {
        batchnorm_op::batch_norm_generic(self, x, gamma, beta, residual, opts)
    }
    fn describe(&self) -> String {
        "cuda:0".to_string()
    }
    fn memory_free(&self) -> Option<u128> {
        // cuMemGetInfo reads the context current on this thread.
        self.cudarc_device().bind_to_thread().ok()?;
        let (free, _total) = dfdx::cudarc::driver::result::mem_get_info().ok()?;
        Some(free as u128)
    }
    fn open_default() -> Result<Self, String> {
        Cuda::try_build(0, 0).map_err(|e| format!("cannot open cuda:0: {e:?}"))
    }
}

fn im2col_cpu<T: Tape<f32, Cpu>>(dev: &Cpu, x: Matrix<Cpu, T>, g: ImageGeom) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let c = g.channels;
    let (h, w) = (g.height, g.width);
    let img_in = h * w * c;
    let img_out = h * w * 9 * c;
    // `copy_into` is a plain memcpy (`as_vec` walks an index iterator); the
    // tensor is the contiguous output of the previous op.
    let mut src_vec = vec![0f32; x.shape().num_elements()];
    x.copy_into(&mut src_vec);
    let mut out = vec![0f32; g.rows() * 9 * c];
    // The convolution op's patch writer and its adjoint, one image per task.
    out.par_chunks_mut(img_out)
        .zip(src_vec.par_chunks(img_in))
        .for_each(|(dst, img)| conv::fill_patches(img, h, w, c, dst));
    let out = dev.tensor_from_vec(out, (g.rows(), 9 * c));
    let x_ghost = x.ghost();
    let out_ghost = out.ghost();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        let mut acc = vec![0f32; g.rows() * c];
        {
            let g_out: &[f32] = grads.get_or_alloc_mut(&out_ghost)?.as_slice();
            acc.par_chunks_mut(img_in)
                .zip(g_out.par_chunks(img_out))
                .for_each(|(gi, go)| conv::add_patches(go, h, w, c, gi));
        }
        let g_in = grads.get_or_alloc_mut(&x_ghost)?;
        for (a, b) in g_in.iter_mut().zip(&acc) {
            *a += *b;
        }
        Ok(())
    });
    out.put_tape(tape)
}

fn max_pool2_cpu<T: Tape<f32, Cpu>>(dev: &Cpu, x: Matrix<Cpu, T>, g: ImageGeom) -> Matrix<Cpu, T> {
    let (x, mut tape) = x.split_tape();
    let c = g.channels;
    let (h, w) = (g.height, g.width);
    let (ho, wo) = (h / 2, w / 2);
    // `copy_into` is a plain memcpy (`as_vec` walks an index iterator); the
    // tensor is the contiguous output of the previous op.
    let mut src_vec = vec![0f32; x.shape().num_elements()];
    x.copy_into(&mut src_vec);
    let src = src_vec.as_slice();
    let rows_out = g.batch * ho * wo;
    let mut out = vec![0f32; rows_out * c];
    // For each output value, the offset (within its image) of the input that won.
    let mut arg = vec![0u32; rows_out * c];
    out.par_chunks_mut(ho * wo * c)
        .zip(arg.par_chunks_mut(ho * wo * c))
        .zip(src.par_chunks(h * w * c))
        .for_each(|((dst, am), img)| {
            for y in 0..ho {
                for xx in 0..wo {
                    let o = (y * wo + xx) * c;
                    let base = [
                        (2 * y * w + 2 * xx) * c,
                        (2 * y * w + 2 * xx + 1) * c,
                        ((2 * y + 1) * w + 2 * xx) * c,
                        ((2 * y + 1) * w + 2 * xx + 1) * c,
                    ];
                    for ch in 0..c {
                        let mut best = base[0] + ch;
                        for b in &base[1..] {
                            if img[b + ch] > img[best] {
                                best = b + ch;
                            }
                        }
                        dst[o + ch] = img[best];
                        am[o + ch] = best as u32;
                    }
                }
            }
        });
    let out = dev.tensor_from_vec(out, (rows_out, c));
    let x_ghost = x.ghost();
    let out_ghost = out.ghost();
    tape.add_backward_op(move |grads: &mut Gradients<f32, Cpu>| {
        let mut acc = vec![0f32; g.rows() * c];
        {
            let g_out: &[f32] = grads.get_or_alloc_mut(&out_ghost)?.as_slice();
            acc.par_chunks_mut(h * w * c)
                .zip(g_out.par_chunks(ho * wo * c))
                .zip(arg.par_chunks(ho * wo * c))
                .for_each(|((gi, go), am)| {
                    for (gv, &a) in go.iter().zip(am) {
                        gi[a as usize] += *gv;
                    }
                });
        }
        let g_in = grads.get_or_alloc_mut(&x_ghost)?;
        for (a, b) in g_in.iter_mut().zip(&acc) {
            *a += *b;
        }
        Ok(())
    });
    out.put_tape(tape)
}

/// Index and mask tensors of the gather path, built once per geometry.
#[derive(Clone)]
struct GatherPlan<D: Storage<f32> + Storage<usize>> {
    idx: Tensor<(usize,), usize, D>,
    mask: Option<Tensor<(usize,), f32, D>>,
}

type PlanKey = (TypeId, ImageGeom, bool);

thread_local! {
    /// Gather plans by device type and geometry: a training run reuses a few.
    static PLANS: RefCell<HashMap<PlanKey, Box<dyn Any>>> = RefCell::new(HashMap::new());
}

fn cached_plan<D: Backend>(dev: &D, geom: ImageGeom, pool: bool) -> GatherPlan<D> {
    let key = (TypeId::of::<D>(), geom, pool);
    PLANS.with(|plans| {
        let mut map = plans.borrow_mut();
        if let Some(plan) = map
            .get(&key)
            .and_then(|b| b.downcast_ref::<GatherPlan<D>>())
        {
            return plan.clone();
        }
        let plan = if pool {
            pool_plan(dev, geom)
        } else {
            im2col_plan(dev, geom)
        };
        let out = plan.clone();
        if map.len() > 64 {
            map.clear();
        }
        map.insert(key, Box::new(plan));
        out
    })
}

fn im2col_plan<D: Backend>(dev: &D, g: ImageGeom) -> GatherPlan<D> {
    let (h, w) = (g.height, g.width);
    let mut idx = Vec::with_capacity(g.rows() * 9);
    let mut mask = Vec::with_capacity(g.rows() * 9);
    for b in 0..g.batch {
        for y in 0..h {
            for x in 0..w {
                for dy in 0..3 {
                    for dx in 0..3 {
                        let sy = y as isize + dy as isize - 1;
                        let sx = x as isize + dx as isize - 1;
                        if sy < 0 || sy >= h as isize || sx < 0 || sx >= w as isize {
                            idx.push(0);
                            mask.push(0.0);
                        } else {
                            idx.push(b * h * w + sy as usize * w + sx as usize);
                            mask.push(1.0);
                        }
                    }
                }
            }
        }
    }
    let n = idx.len();
    GatherPlan {
        idx: dev.tensor_from_vec(idx, (n,)),
        mask: Some(dev.tensor_from_vec(mask, (n,))),
    }
}

fn pool_plan<D: Backend>(dev: &D, g: ImageGeom) -> GatherPlan<D> {
    let (h, w) = (g.height, g.width);
    let (ho, wo) = (h / 2, w / 2);
    let mut idx = Vec::with_capacity(g.batch * ho * wo * 4);
    for b in 0..g.batch {
        for y in 0..ho {
            for x in 0..wo {
                for (dy, dx) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
                    idx.push(b * h * w + (2 * y + dy) * w + 2 * x + dx);
                }
            }
        }
    }
    let n = idx.len();
    GatherPlan {
        idx: dev.tensor_from_vec(idx, (n,)),
        mask: None,
    }
}

/// [`Backend::im2col`] from dfdx's `gather`, a broadcast multiply by the
/// padding mask, and a reshape: works on every dfdx device.
pub fn im2col_gather<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    g: ImageGeom,
) -> Matrix<D, T> {
    let GatherPlan { idx, mask } = cached_plan(dev, g, false);
    let c = g.channels;
    let n = g.rows() * 9;
    let patches: Matrix<D, T> = x.gather(idx);
    let patches = match mask {
        Some(m) => patches * m.broadcast_like::<_, Axis<1>>(&(n, c)),
        None => patches,
    };
    patches.reshape_like(&(g.rows(), 9 * c))
}

/// [`Backend::max_pool2`] from dfdx's `gather`, a reshape and `max`.
pub fn max_pool2_gather<D: Backend, T: Tape<f32, D>>(
    dev: &D,
    x: Matrix<D, T>,
    g: ImageGeom,
) -> Matrix<D, T> {
    let GatherPlan { idx, .. } = cached_plan(dev, g, true);
    let c = g.channels;
    let rows_out = g.pooled().rows();
    let windows: Matrix<D, T> = x.gather(idx);
    let windows: Tensor<(usize, usize, usize), f32, D, T> = windows.reshape_like(&(rows_out, 4, c));
    windows.max::<(usize, usize), Axis<1>>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn random(dev: &Cpu, rows: usize, cols: usize, seed: u64) -> Matrix<Cpu> {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let v: Vec<f32> = (0..rows * cols).map(|_| rng.gen_range(-1.0..1.0)).collect();
        dev.tensor_from_vec(v, (rows, cols))
    }

    fn close(a: &[f32], b: &[f32], tol: f32) {
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + x.abs().max(y.abs())),
                "at {i}: {x} vs {y}"
            );
        }
    }

    const GEOMS: [ImageGeom; 3] = [
        ImageGeom {
            batch: 2,
            channels: 3,
            height: 5,
            width: 4,
        },
        ImageGeom {
            batch: 1,
            channels: 1,
            height: 7,
            width: 7,
        },
        ImageGeom {
            batch: 3,
            channels: 2,
            height: 2,
            width: 3,
        },
    ];

    #[test]
    fn im2col_cpu_matches_gather_forward_and_backward() {
        let dev = Cpu::seed_from_u64(0);
        for g in GEOMS {
            let x = random(&dev, g.rows(), g.channels, 1);
            let weights = random(&dev, g.rows(), 9 * g.channels, 2);
            let a = dev.im2col(x.clone(), g);
            let b = im2col_gather(&dev, x.clone(), g);
            close(&a.as_vec(), &b.as_vec(), 0.0);
            // Backward: d/dx sum(im2col(x) * W) for both implementations.
            let ga = (dev.im2col(x.leaky_trace(), g) * weights.clone())
                .sum::<Rank0, _>()
                .backward();
            let gb = (im2col_gather(&dev, x.leaky_trace(), g) * weights.clone())
                .sum::<Rank0, _>()
                .backward();
            close(&ga.get(&x).as_vec(), &gb.get(&x).as_vec(), 1e-6);
        }
    }

    #[test]
    fn im2col_known_values() {
        // 1 image, 1 channel, 2x2 pixels [[1,2],[3,4]]; the patch of pixel (0,0)
        // sees zero padding above and left: taps (1,1)=1, (1,2)=2, (2,1)=3, (2,2)=4.
        let dev = Cpu::seed_from_u64(0);
        let x = dev.tensor_from_vec(vec![1.0, 2.0, 3.0, 4.0], (4, 1));
        let g = ImageGeom {
            batch: 1,
            channels: 1,
            height: 2,
            width: 2,
        };
        let p = dev.im2col(x, g).as_vec();
        assert_eq!(&p[0..9], &[0.0, 0.0, 0.0, 0.0, 1.0, 2.0, 0.0, 3.0, 4.0]);
        assert_eq!(&p[27..36], &[1.0, 2.0, 0.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]);
    }

    #[test]
    fn max_pool_cpu_matches_gather() {
        let dev = Cpu::seed_from_u64(0);
        for g in GEOMS {
            let x = random(&dev, g.rows(), g.channels, 3);
            let out_rows = g.pooled().rows();
            let weights = random(&dev, out_rows, g.channels, 4);
            let a = dev.max_pool2(x.clone(), g);
            let b = max_pool2_gather(&dev, x.clone(), g);
            close(&a.as_vec(), &b.as_vec(), 0.0);
            let ga = (dev.max_pool2(x.leaky_trace(), g) * weights.clone())
                .sum::<Rank0, _>()
                .backward();
            let gb = (max_pool2_gather(&dev, x.leaky_trace(), g) * weights.clone())
                .sum::<Rank0, _>()
                .backward();
            close(&ga.get(&x).as_vec(), &gb.get(&x).as_vec(), 1e-6);
        }
    }

    /// An op on a traced matrix, as the backward pass sees it.
    type TracedOp<'a> =
        &'a dyn Fn(Matrix<Cpu, OwnedTape<f32, Cpu>>) -> Matrix<Cpu, OwnedTape<f32, Cpu>>;

    /// Central finite differences of f(x) = sum(op(x) * W) against the
    /// hand-written backward pass.
    fn finite_difference_check(
        op: TracedOp<'_>,
        op0: &dyn Fn(Matrix<Cpu>) -> Matrix<Cpu>,
        rows: usize,
        cols: usize,
        out_shape: (usize, usize),
    ) {
        let dev = Cpu::seed_from_u64(0);
        let x = random(&dev, rows, cols, 5);
        let w = random(&dev, out_shape.0, out_shape.1, 6);
        let grads = (op(x.leaky_trace()) * w.clone())
            .sum::<Rank0, _>()
            .backward();
        let analytic = grads.get(&x).as_vec();
        let base = x.as_vec();
        let eps = 1e-3f32;
        for i in (0..base.len()).step_by(3) {
            let f = |delta: f32| {
                let mut v = base.clone();
                v[i] += delta;
                let xt = dev.tensor_from_vec(v, (rows, cols));
                (op0(xt) * w.clone()).sum::<Rank0, _>().array()
            };
            let numeric = (f(eps) - f(-eps)) / (2.0 * eps);
            assert!(
                (numeric - analytic[i]).abs() < 2e-2,
                "grad {i}: numeric {numeric} analytic {}",
                analytic[i]
            );
        }
    }

    #[test]
    fn im2col_gradient_matches_finite_differences() {
        let g = GEOMS[0];
        let dev = Cpu::seed_from_u64(0);
        let d2 = dev.clone();
        finite_difference_check(
            &move |x| dev.im2col(x, g),
            &move |x| d2.im2col(x, g),
            g.rows(),
            g.channels,
            (g.rows(), 9 * g.channels),
        );
    }

    #[test]
    fn max_pool_gradient_matches_finite_differences() {
        let g = GEOMS[1];
        let dev = Cpu::seed_from_u64(0);
        let d2 = dev.clone();
        finite_difference_check(
            &move |x| dev.max_pool2(x, g),
            &move |x| d2.max_pool2(x, g),
            g.rows(),
            g.channels,
            (g.pooled().rows(), g.channels),
        );
    }
}

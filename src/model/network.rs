//! The network: a [`ModelSpec`] built on dfdx tensors with run-time shapes.
//!
//! dfdx 0.13's layers are const-generic and its `TensorCollection` cannot
//! describe run-time shapes, so the network keeps its own parameter store: one
//! [`Param`] per learnable tensor, each a dfdx tensor, visited in one place
//! ([`Network::params`] / [`Network::params_mut`]) by the optimizer, the
//! safetensors I/O, pruning masks and checkpoints; and one [`Buffer`] per
//! running statistic (batch norm), on the host, saved and loaded with the
//! parameters but never touched by the optimizer.
//!
//! What each tensor is, its name and its layout in the store come from its
//! layer's declarations ([`super::layers`]): the network builds the store
//! from them and hands each layer its own slice of it in the forward pass.
//!
//! The forward pass takes a batch as `(batch, input_len)` rows in the
//! dataset's (channel, height, width) order, applies the network's input
//! normalisation if it has one ([`super::input_norm`]), turns images
//! channels-last, runs the layers in order (a residual block is one layer
//! with its own small graph inside), and returns `(batch, classes)` logits.
//! It is generic over the tape: a pass on a tape (`OwnedTape`) trains
//! (batch statistics, dropout), a pass without (`NoneTape`) evaluates. A
//! fused 3x3 convolution followed by a max-pool runs both in one op; the
//! first layer computes no gradient for the network's input, which nothing
//! reads.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::input_norm::InputNorm;
use super::layers::{BufferDecl, Ctx, Init, Layer, Layout, Mode};
use super::ops::{Backend, Matrix};
use super::spec::ModelSpec;
use crate::data::Normalization;

/// The value of one learnable tensor.
#[derive(Clone, Debug)]
pub enum ParamValue<D: Storage<f32>> {
    /// A weight matrix.
    Matrix(Tensor<(usize, usize), f32, D>),
    /// A bias vector.
    Vector(Tensor<(usize,), f32, D>),
}

impl<D: Backend> ParamValue<D> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            ParamValue::Matrix(t) => t.shape().num_elements(),
            ParamValue::Vector(t) => t.shape().num_elements(),
        }
    }

    /// Whether the tensor is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the values to the host, row-major.
    pub fn to_vec(&self) -> Vec<f32> {
        match self {
            ParamValue::Matrix(t) => t.as_vec(),
            ParamValue::Vector(t) => t.as_vec(),
        }
    }

    /// Overwrites the values from the host (row-major, same length).
    pub fn copy_from(&mut self, values: &[f32]) {
        match self {
            ParamValue::Matrix(t) => t.copy_from(values),
            ParamValue::Vector(t) => t.copy_from(values),
        }
    }

    /// The internal shape as a list of dimensions.
    pub fn dims(&self) -> Vec<usize> {
        match self {
            ParamValue::Matrix(t) => vec![t.shape().0, t.shape().1],
            ParamValue::Vector(t) => vec![t.shape().0],
        }
    }
}

/// What a parameter is, for I/O and pruning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    Weight,
    Bias,
}

/// One learnable tensor with its PyTorch name.
#[derive(Clone, Debug)]
pub struct Param<D: Storage<f32>> {
    /// PyTorch `state_dict` name, e.g. `layers.0.weight`.
    pub name: String,
    /// Index into [`ModelSpec::layers`] of the layer owning it.
    pub layer: usize,
    pub kind: ParamKind,
    /// The store's layout against PyTorch's.
    pub layout: Layout,
    pub value: ParamValue<D>,
    /// A host copy of `value` for the CPU ops, when one is current.
    pub(crate) host: HostMirror,
}

/// A host copy of a parameter's values, kept by the CPU optimizer so that
/// the CPU ops read the weights without copying them out of the tensor at
/// every step (for `mlp:784-800-800-10` that copy was 5 MB a step, on the
/// thread that runs the step's serial parts).
///
/// Only the optimizer's CPU update writes one, right after it writes the
/// tensor; [`Network::params_mut`], the way every other change reaches a
/// parameter, drops all of them. So a copy, when present, always holds the
/// tensor's values. An op that holds a copy for its backward pass shares
/// it; the optimizer then writes a new one instead of changing it.
#[derive(Clone, Debug, Default)]
pub struct HostMirror(Option<Arc<Vec<f32>>>);

impl HostMirror {
    /// The copy, when one is current.
    pub fn get(&self) -> Option<&Arc<Vec<f32>>> {
        self.0.as_ref()
    }

    /// Drops the copy.
    pub(crate) fn clear(&mut self) {
        self.0 = None;
    }

    /// Makes the copy equal to `value` (in place when no op shares it).
    pub(crate) fn refresh(&mut self, value: &ParamValue<Cpu>) {
        let n = value.len();
        let copy_into = |dst: &mut [f32]| match value {
            ParamValue::Matrix(t) => t.copy_into(dst),
            ParamValue::Vector(t) => t.copy_into(dst),
        };
        match self.0.as_mut().and_then(Arc::get_mut) {
            Some(v) if v.len() == n => copy_into(v),
            _ => {
                let mut v = vec![0f32; n];
                copy_into(&mut v);
                self.0 = Some(Arc::new(v));
            }
        }
    }
}

/// One non-learnable tensor (batch norm's running statistics), kept on the
/// host: the forward pass reads it and, in training, updates it, through
/// a shared reference.
#[derive(Debug)]
pub struct Buffer {
    /// PyTorch `state_dict` name, e.g. `layers.1.running_mean`.
    pub name: String,
    /// PyTorch's shape (`[]` for a scalar).
    pub shape: Vec<usize>,
    values: Mutex<Vec<f32>>,
}

impl Buffer {
    /// A fresh buffer of `decl` under the module `prefix`; `_index` is its
    /// position in its layer (kept for symmetry with parameters).
    pub fn new(decl: &BufferDecl, prefix: &str, _index: usize) -> Self {
        let len = decl.torch_shape.iter().product();
        Buffer {
            name: format!("{prefix}.{}", decl.name),
            shape: decl.torch_shape.clone(),
            values: Mutex::new(vec![decl.init; len]),
        }
    }

    /// The values.
    pub fn get(&self) -> Vec<f32> {
        match self.values.lock() {
            Ok(v) => v.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Overwrites the values (same length).
    pub fn set(&self, values: Vec<f32>) {
        match self.values.lock() {
            Ok(mut v) => *v = values,
            Err(poisoned) => *poisoned.into_inner() = values,
        }
    }
}

/// A model built from a spec on a dfdx device.
pub struct Network<D: Backend> {
    spec: ModelSpec,
    device: D,
    params: Vec<Param<D>>,
    /// For each layer, its range in `params`.
    param_range: Vec<Range<usize>>,
    buffers: Vec<Buffer>,
    /// For each layer, its range in `buffers`.
    buffer_range: Vec<Range<usize>>,
    /// Applied to the inputs first; `None` is the identity.
    input_norm: Option<InputNorm<D>>,
    /// The seed random draws of training (dropout) start from.
    seed: u64,
    /// The training step the next training forward pass is (dropout masks
    /// are drawn from the seed and the step).
    step: AtomicU64,
}

impl<D: Backend> Network<D> {
    /// A freshly initialised network, as PyTorch initialises `nn.Linear` and
    /// `nn.Conv2d` (weights and biases uniform in `±1/sqrt(fan_in)`) and
    /// `nn.BatchNorm2d` (weight 1, bias 0), drawn in layer order from a
    /// ChaCha8 generator seeded with `seed` (deterministic everywhere).
    pub fn new(spec: ModelSpec, device: D, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let mut param_range = Vec::new();
        let mut buffers = Vec::new();
        let mut buffer_range = Vec::new();
        for (li, (layer, prefix)) in spec.layers().iter().zip(spec.module_names()).enumerate() {
            let first = params.len();
            for decl in layer.params() {
                let dims = decl.store_dims();
                let len: usize = dims.iter().product();
                let values: Vec<f32> = match decl.init {
                    Init::Uniform(bound) => {
                        (0..len).map(|_| rng.gen_range(-bound..bound)).collect()
                    }
                    Init::Constant(v) => vec![v; len],
                };
                let value = match dims.as_slice() {
                    [rows, cols] => {
                        ParamValue::Matrix(device.tensor_from_vec(values, (*rows, *cols)))
                    }
                    _ => ParamValue::Vector(device.tensor_from_vec(values, (len,))),
                };
                params.push(Param {
                    name: format!("{prefix}.{}", decl.name),
                    layer: li,
                    kind: decl.kind,
                    layout: decl.layout,
                    value,
                    host: HostMirror::default(),
                });
            }
            param_range.push(first..params.len());
            let first = buffers.len();
            for (i, decl) in layer.buffers().iter().enumerate() {
                buffers.push(Buffer::new(decl, &prefix, i));
            }
            buffer_range.push(first..buffers.len());
        }
        Network {
            spec,
            device,
            params,
            param_range,
            buffers,
            buffer_range,
            input_norm: None,
            seed,
            step: AtomicU64::new(0),
        }
    }

    /// The input normalisation, if the network has one.
    pub fn normalization(&self) -> Option<&Normalization> {
        self.input_norm.as_ref().map(InputNorm::stats)
    }

    /// Sets (or with `None` removes) the input normalisation; the error
    /// says why it does not fit the spec's input.
    pub fn set_normalization(&mut self, stats: Option<Normalization>) -> Result<(), String> {
        self.input_norm = match stats {
            Some(s) => Some(InputNorm::new(s, &self.spec, &self.device)?),
            None => None,
        };
        Ok(())
    }

    /// The spec this network was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// The device the tensors live on.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The parameters, in layer order (each layer's in its declared order).
    pub fn params(&self) -> &[Param<D>] {
        &self.params
    }

    /// Mutable access to the parameters (loading, pruning, the optimizer
    /// off the CPU). Drops every parameter's [`HostMirror`], since the
    /// caller may change any value.
    pub fn params_mut(&mut self) -> &mut [Param<D>] {
        for p in &mut self.params {
            p.host.clear();
        }
        &mut self.params
    }

    /// Mutable access that keeps the host copies, for the CPU optimizer:
    /// the caller must refresh or clear the copy of every value it changes.
    pub(crate) fn params_mut_keeping_host(&mut self) -> &mut [Param<D>] {
        &mut self.params
    }

    /// The buffers (running statistics), in layer order.
    pub fn buffers(&self) -> &[Buffer] {
        &self.buffers
    }

    /// Sets the training step the next training forward pass is: dropout
    /// draws its masks from the network's seed and this step, so a resumed
    /// run draws those of the uninterrupted one.
    pub fn set_step(&self, step: u64) {
        self.step.store(step, Ordering::Relaxed);
    }

    /// Forward pass: `(batch, input_len)` inputs in (channel, height, width)
    /// order to `(batch, classes)` logits. A pass on a tape trains (batch
    /// norm uses and tracks the batch's statistics, dropout drops); a pass
    /// without one evaluates.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>) -> Matrix<D, T> {
        let mode = if T::OWNS_TAPE {
            Mode::Train
        } else {
            Mode::Eval
        };
        self.forward_mode(x, mode)
    }

    /// [`Self::forward`] in the given mode.
    pub fn forward_mode<T: Tape<f32, D>>(&self, x: Matrix<D, T>, mode: Mode) -> Matrix<D, T> {
        let batch = x.shape().0;
        let (c0, h0, w0) = self.spec.input_shape();
        let mut x = match &self.input_norm {
            Some(n) => n.apply(x),
            None => x,
        };
        // Images travel channels-last; a single-channel image is already so.
        if self.spec.is_convolutional() {
            x = if c0 == 1 {
                x.reshape_like(&(batch * h0 * w0, 1))
            } else {
                let t: Tensor<(usize, usize, usize), f32, D, T> =
                    x.reshape_like(&(batch, c0, h0 * w0));
                t.permute::<_, Axes3<0, 2, 1>>()
                    .reshape_like(&(batch * h0 * w0, c0))
            };
        }
        let step = match mode {
            Mode::Train => self.step.fetch_add(1, Ordering::Relaxed),
            Mode::Eval => 0,
        };
        let layers = self.spec.layers();
        let mut li = 0;
        while li < layers.len() {
            let ctx = Ctx {
                device: &self.device,
                batch,
                mode,
                input_grad: li > 0,
                params: &self.params[self.param_range[li].clone()],
                buffers: &self.buffers[self.buffer_range[li].clone()],
                seed: layer_seed(self.seed, step, li),
            };
            x = match &layers[li] {
                // A pool right after a fused convolution runs inside its op.
                Layer::Conv(conv) if conv.is_fused() => {
                    let pool = matches!(layers.get(li + 1), Some(Layer::MaxPool(_)));
                    let y = conv.forward_pooled(x, &ctx, pool);
                    li += usize::from(pool);
                    y
                }
                layer => layer.forward(x, &ctx),
            };
            li += 1;
        }
        x
    }

    /// Logits for a host batch, without a tape.
    pub fn predict(&self, inputs: Vec<f32>, batch: usize) -> Matrix<D> {
        let x = self
            .device
            .tensor_from_vec(inputs, (batch, self.spec.input_len()));
        self.forward(x)
    }
}

/// The seed of layer `layer`'s random draws at training step `step`.
fn layer_seed(seed: u64, step: u64, layer: usize) -> u64 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for v in [seed, step, layer as u64] {
        h.update(&v.to_le_bytes());
    }
    h.digest()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_shapes_and_determinism() {
        let dev = Cpu::seed_from_u64(0);
        for text in ["mlp:12-7-3", "cnn:i2x6x5-c4-p-f6-3", "cnn:c2-p-c3-p-4"] {
            let spec = ModelSpec::parse(text).unwrap();
            let n = spec.input_len();
            let a = Network::new(spec.clone(), dev.clone(), 7);
            let b = Network::new(spec.clone(), dev.clone(), 7);
            let x: Vec<f32> = (0..3 * n).map(|i| (i % 17) as f32 / 17.0).collect();
            let ya = a.predict(x.clone(), 3).as_vec();
            let yb = b.predict(x, 3).as_vec();
            assert_eq!(ya.len(), 3 * spec.num_classes());
            assert_eq!(ya, yb, "{text}");
            let count: usize = a.params().iter().map(|p| p.value.len()).sum();
            assert_eq!(count as u64, spec.param_count(), "{text}");
        }
    }

    #[test]
    fn cnn_forward_equals_direct_convolution() {
        // One 3x3 conv (padding 1) with 2 input channels computed by hand-rolled
        // loops on the (c, h, w) input, as torch.nn.functional.conv2d would.
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::parse("cnn:i2x4x3-c3-5").unwrap();
        let net = Network::new(spec, dev.clone(), 3);
        let (c, h, w) = (2usize, 4usize, 3usize);
        let x: Vec<f32> = (0..c * h * w)
            .map(|i| ((i * 7) % 11) as f32 / 11.0 - 0.4)
            .collect();
        let conv_w = net.params()[0].value.to_vec(); // [3, 9*2], column tap*2 + ch
        let conv_b = net.params()[1].value.to_vec();
        let fc_w = net.params()[2].value.to_vec(); // [5, 4*3*3] in (h, w, c) order
        let fc_b = net.params()[3].value.to_vec();
        let mut act = vec![0f32; h * w * 3];
        for y in 0..h {
            for xx in 0..w {
                for o in 0..3 {
                    let mut s = conv_b[o];
                    for ci in 0..c {
                        for dy in 0..3 {
                            for dx in 0..3 {
                                let (sy, sx) = (y as isize + dy - 1, xx as isize + dx - 1);
                                if sy < 0 || sx < 0 || sy >= h as isize || sx >= w as isize {
                                    continue;
                                }
                                let v = x[ci * h * w + sy as usize * w + sx as usize];
                                s += v * conv_w[o * 18 + (dy * 3 + dx) as usize * 2 + ci];
                            }
                        }
                    }
                    act[(y * w + xx) * 3 + o] = s.max(0.0);
                }
            }
        }
        let expected: Vec<f32> = (0..5)
            .map(|k| fc_b[k] + (0..36).map(|j| fc_w[k * 36 + j] * act[j]).sum::<f32>())
            .collect();
        let got = net.predict(x, 1).as_vec();
        for (a, b) in got.iter().zip(&expected) {
            assert!((a - b).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
    }

    #[test]
    fn residual_specs_run_and_count_as_pytorch() {
        let dev = Cpu::seed_from_u64(0);
        // ResNet-8 at 16/32/64: stem 16*3*9 + BN 32; stage 1 (identity):
        // 2 * (16*16*9 + 32); stage 2: 32*16*9 + 32*32*9 + 2*64 + 1x1 16*32
        // + 64; stage 3 likewise at 64; linear 64*10 + 10.
        let spec = ModelSpec::parse("resnet:i3x32x32-16x1-32x1-64x1-10").unwrap();
        let stage = |i: usize, o: usize| o * i * 9 + o * o * 9 + 4 * o + i * o + 2 * o;
        let want = 16 * 27 + 32 + 2 * (16 * 16 * 9 + 32) + stage(16, 32) + stage(32, 64) + 650;
        assert_eq!(spec.param_count(), want as u64);
        let net = Network::new(spec.clone(), dev.clone(), 1);
        let count: usize = net.params().iter().map(|p| p.value.len()).sum();
        assert_eq!(count as u64, spec.param_count());
        // 3 batch norms with shortcuts in 2 blocks + stem + 2 per block: 9
        assert_eq!(net.buffers().len(), 3 * 9);
        let x: Vec<f32> = (0..2 * spec.input_len())
            .map(|i| (i % 23) as f32 / 23.0)
            .collect();
        let y = net.predict(x, 2).as_vec();
        assert_eq!(y.len(), 20);
        assert!(y.iter().all(|v| v.is_finite()));
        let r20 = ModelSpec::parse("resnet:i3x32x32-16x3-32x3-64x3-10").unwrap();
        assert_eq!(
            r20.layers().len(),
            2 + 9 + 2,
            "stem conv and bn, 9 blocks, pooling and linear"
        );
    }

    #[test]
    fn residual_gradients_match_finite_differences() {
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::parse("cnn:i2x4x4-c3-bn-r3-r4s2-gap-d0.3-3").unwrap();
        let mut net = Network::new(spec.clone(), dev.clone(), 5);
        let x: Vec<f32> = (0..3 * spec.input_len())
            .map(|i| ((i * 7) % 13) as f32 / 6.0 - 1.0)
            .collect();
        let r: Vec<f32> = (0..9).map(|i| (i % 4) as f32 - 1.5).collect();
        // Train mode on a tape; the dropout mask is fixed by the step.
        let loss = |net: &Network<Cpu>| -> (f32, Vec<Vec<f32>>) {
            net.set_step(3);
            let xt = dev.tensor_from_vec(x.clone(), (3, spec.input_len()));
            let y = net.forward(xt.traced(Gradients::leaky()));
            let l = (y * dev.tensor_from_vec(r.clone(), (3, 3))).sum::<Rank0, _>();
            let v = l.as_vec()[0];
            let g = l.backward();
            let grads = net
                .params()
                .iter()
                .map(|p| match &p.value {
                    ParamValue::Matrix(t) => g.get(t).as_vec(),
                    ParamValue::Vector(t) => g.get(t).as_vec(),
                })
                .collect();
            (v, grads)
        };
        let (_, grads) = loss(&net);
        let names: Vec<String> = net.params().iter().map(|p| p.name.clone()).collect();
        for (pi, name) in names.iter().enumerate() {
            let n = net.params()[pi].value.len();
            for e in [0, n / 2, n - 1] {
                let base = net.params()[pi].value.to_vec();
                let mut probe = |delta: f32| {
                    let mut v = base.clone();
                    v[e] += delta;
                    net.params_mut()[pi].value.copy_from(&v);
                    let out = loss(&net).0;
                    net.params_mut()[pi].value.copy_from(&base);
                    out
                };
                // ReLU kinks near a probe spoil wide differences: the
                // gradient must match one of the narrower ones.
                let g = grads[pi][e];
                let fds: Vec<f32> = [1e-3f32, 3e-4, 1e-4, 3e-5]
                    .iter()
                    .map(|d| (probe(*d) - probe(-*d)) / (2.0 * d))
                    .collect();
                assert!(
                    fds.iter().any(|fd| (fd - g).abs() < 1e-2 * (1.0 + g.abs())),
                    "{name}[{e}]: finite differences {fds:?}, gradient {g}"
                );
            }
        }
    }
}

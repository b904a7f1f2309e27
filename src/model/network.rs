//! The network: a [`ModelSpec`] built on dfdx tensors with run-time shapes.
//!
//! dfdx 0.13's layers are const-generic and its `TensorCollection` cannot
//! describe run-time shapes, so the network keeps its own parameter store: one
//! [`Param`] per weight or bias, each a dfdx tensor, visited in one place
//! ([`Network::params`] / [`Network::params_mut`]) by the optimizer, the
//! safetensors I/O, pruning masks and checkpoints.
//!
//! Layouts inside the store (converted to PyTorch's on save and load, see
//! [`crate::model::io`]):
//! - dense weight `[out, in]` (as PyTorch); for the first dense layer after
//!   convolutions the input order is (height, width, channel), because images
//!   travel channels-last;
//! - conv weight `[out, 9 * in]`, column `tap * in + c` with `tap = 3*dy + dx`.
//!
//! The forward pass takes a batch as `(batch, input_len)` rows in the
//! dataset's (channel, height, width) order, applies the network's input
//! normalisation if it has one ([`super::input_norm`]), and returns `(batch, classes)`
//! logits; it is generic over the tape, so the same code serves training
//! (`OwnedTape`) and inference (`NoneTape`). Dense layers go through
//! [`Backend::linear`], convolutions (with the max-pool that follows, if any)
//! through [`Backend::conv3x3`]; the first layer computes no gradient for the
//! network's input, which nothing reads.

use dfdx::prelude::*;
use rand::{Rng, SeedableRng};

use super::conv::ConvOpts;
use super::input_norm::InputNorm;
use super::kernels::LinearOpts;
use super::ops::{Backend, ImageGeom, Matrix};
use super::spec::{Layer, ModelSpec};
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
    pub value: ParamValue<D>,
}

/// A model built from a spec on a dfdx device.
pub struct Network<D: Backend> {
    spec: ModelSpec,
    device: D,
    params: Vec<Param<D>>,
    /// For each layer, the index of its weight in `params` (bias follows).
    weight_of_layer: Vec<Option<usize>>,
    /// Applied to the inputs first; `None` is the identity.
    input_norm: Option<InputNorm<D>>,
}

impl<D: Backend> Network<D> {
    /// A freshly initialised network, as PyTorch initialises `nn.Linear` and
    /// `nn.Conv2d`: weights and biases uniform in `±1/sqrt(fan_in)`, drawn
    /// from a ChaCha8 generator seeded with `seed` (deterministic everywhere).
    pub fn new(spec: ModelSpec, device: D, seed: u64) -> Self {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut params = Vec::new();
        let mut weight_of_layer = Vec::new();
        let indices = spec.torch_indices();
        for (li, layer) in spec.layers().iter().enumerate() {
            let (rows, cols) = match *layer {
                Layer::Conv {
                    in_channels,
                    out_channels,
                    ..
                } => (out_channels, 9 * in_channels),
                Layer::Dense {
                    inputs, outputs, ..
                } => (outputs, inputs),
                Layer::MaxPool { .. } => {
                    weight_of_layer.push(None);
                    continue;
                }
            };
            let bound = 1.0 / (cols as f32).sqrt();
            let w: Vec<f32> = (0..rows * cols)
                .map(|_| rng.gen_range(-bound..bound))
                .collect();
            let b: Vec<f32> = (0..rows).map(|_| rng.gen_range(-bound..bound)).collect();
            weight_of_layer.push(Some(params.len()));
            params.push(Param {
                name: format!("layers.{}.weight", indices[li]),
                layer: li,
                kind: ParamKind::Weight,
                value: ParamValue::Matrix(device.tensor_from_vec(w, (rows, cols))),
            });
            params.push(Param {
                name: format!("layers.{}.bias", indices[li]),
                layer: li,
                kind: ParamKind::Bias,
                value: ParamValue::Vector(device.tensor_from_vec(b, (rows,))),
            });
        }
        Network {
            spec,
            device,
            params,
            weight_of_layer,
            input_norm: None,
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

    /// The parameters, in layer order (weight, then bias).
    pub fn params(&self) -> &[Param<D>] {
        &self.params
    }

    /// Mutable access to the parameters (optimizer, loading, pruning).
    pub fn params_mut(&mut self) -> &mut [Param<D>] {
        &mut self.params
    }

    fn weight_bias(
        &self,
        layer: usize,
    ) -> (&Tensor<(usize, usize), f32, D>, &Tensor<(usize,), f32, D>) {
        let wi = self.weight_of_layer[layer].unwrap_or(0);
        match (&self.params[wi].value, &self.params[wi + 1].value) {
            (ParamValue::Matrix(w), ParamValue::Vector(b)) => (w, b),
            // The store is built by `new` with weight/bias pairs in this order.
            _ => unreachable!("parameter store out of order"),
        }
    }

    /// Forward pass: `(batch, input_len)` inputs in (channel, height, width)
    /// order to `(batch, classes)` logits.
    pub fn forward<T: Tape<f32, D>>(&self, x: Matrix<D, T>) -> Matrix<D, T> {
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
        let layers = self.spec.layers();
        let mut li = 0;
        while li < layers.len() {
            x = match layers[li] {
                Layer::Conv {
                    in_channels,
                    height,
                    width,
                    ..
                } => {
                    let geom = ImageGeom {
                        batch,
                        channels: in_channels,
                        height,
                        width,
                    };
                    // A pool right after the convolution runs inside its op.
                    let pool = matches!(layers.get(li + 1), Some(Layer::MaxPool { .. }));
                    let (w, b) = self.weight_bias(li);
                    let opts = ConvOpts {
                        pool,
                        input_grad: li > 0,
                    };
                    let y = self.device.conv3x3(x, w, b, geom, opts);
                    li += usize::from(pool);
                    y
                }
                Layer::MaxPool {
                    channels,
                    height,
                    width,
                } => {
                    let geom = ImageGeom {
                        batch,
                        channels,
                        height,
                        width,
                    };
                    self.device.max_pool2(x, geom)
                }
                Layer::Dense {
                    inputs,
                    relu,
                    from_image,
                    ..
                } => {
                    if from_image.is_some() && self.spec.is_convolutional() {
                        x = x.reshape_like(&(batch, inputs));
                    }
                    let (w, b) = self.weight_bias(li);
                    let opts = LinearOpts {
                        relu,
                        input_grad: li > 0,
                    };
                    self.device.linear(x, w, b, opts)
                }
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
}

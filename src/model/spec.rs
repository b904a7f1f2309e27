//! Model specs: the run-time strings that describe a student or a teacher.
//! This file only parses; each layer kind lives in its own file under
//! [`super::layers`] and owns its shapes, names, FLOPs and forward pass.
//!
//! Three families:
//! - `mlp:784-1200-1200-10`: fully connected layers, ReLU between them. The
//!   first number is the input width, the last the number of classes.
//! - `cnn:c32-p-c64-p-f128-10`: a list of layers, the last bare number the
//!   class count. The input is 1x28x28 unless the spec starts with
//!   `iCxHxW`, as in `cnn:i3x32x32-c32-p-10`. Tokens ([`CNN_TOKENS`]):
//!   `cN` a 3x3 convolution with N output channels (padding 1) + bias +
//!   ReLU, `cNs2` the same with stride 2, `p` a 2x2 max-pool with stride 2
//!   (odd sizes floored, as PyTorch), `bn` a batch norm, `rN` a residual
//!   basic block to N channels, `rNs2` one with stride 2, `gap` global
//!   average pooling, `dP` dropout with probability P (training only), `fN`
//!   a fully connected layer with ReLU.
//! - `resnet:16x3-32x3-64x3-10`: the CIFAR ResNets of He et al. Each `WxN`
//!   is a stage of N basic blocks of width W; the first stage keeps the
//!   image size, each later one starts with a stride-2 block. Before the
//!   stages, a stem: a 3x3 convolution to the first stage's width (no
//!   bias), batch norm and ReLU; after them, global average pooling, an
//!   optional dropout `dP`, and a linear layer to the class count (the last
//!   number). `resnet:16x3-32x3-64x3-10` is ResNet-20,
//!   `resnet:16x1-32x1-64x1-10` ResNet-8. Input as for `cnn:`.
//!
//! A parsed [`ModelSpec`] resolves every layer's shape, so it can count
//! parameters and forward FLOPs and name each tensor as PyTorch would
//! (`layers.{k}.weight`, where `k` counts ReLU, pooling and flatten modules of
//! the equivalent `nn.Sequential` too; a block's tensors are
//! `layers.{k}.conv1.weight` and so on).

use std::fmt;
use std::str::FromStr;

use super::layers::{
    BasicBlock, BatchNorm, Conv, Dense, Dropout, Features, GlobalAvgPool, Layer, MaxPool,
};
use crate::error::{Error, Result};

/// The largest width, channel count or input side a spec may name; keeps
/// parameter counts and allocations far from overflow.
const MAX_DIM: usize = 1 << 20;
/// The largest parameter count a spec may describe (4 G floats = 16 GiB).
const MAX_PARAMS: u64 = 1 << 32;

/// The `cnn:` grammar's layer tokens, for help and error messages.
pub const CNN_TOKENS: &str = "cN, cNs2, p, bn, rN, rNs2, gap, dP, fN, and a final class count";

/// A parsed, fully resolved model spec.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    text: String,
    input: (usize, usize, usize),
    layers: Vec<Layer>,
}

/// Builds a layer list from its input on, tracking the shape between
/// layers; each method is one token of the grammar.
struct Builder<'a> {
    text: &'a str,
    features: Features,
    layers: Vec<Layer>,
}

impl<'a> Builder<'a> {
    fn err(&self, message: String) -> Error {
        Error::Spec {
            spec: self.text.to_string(),
            message,
        }
    }

    /// The current image, or an error naming `tok`.
    fn image(&self, tok: &str) -> Result<(usize, usize, usize)> {
        match self.features {
            Features::Image {
                channels,
                height,
                width,
            } => Ok((channels, height, width)),
            Features::Flat(_) => Err(self.err(format!(
                "'{tok}' reads an image, but it comes after a dense layer or global pooling"
            ))),
        }
    }

    fn push(&mut self, layer: Layer) {
        self.features = layer.output();
        self.layers.push(layer);
    }

    fn conv(&mut self, tok: &str, out: usize, stride: usize, bias_relu: bool) -> Result<()> {
        let (c, h, w) = self.image(tok)?;
        self.push(Layer::Conv(Conv {
            stride,
            bias: bias_relu,
            relu: bias_relu,
            ..Conv::classic(c, out, h, w)
        }));
        Ok(())
    }

    fn batch_norm(&mut self, tok: &str, relu: bool) -> Result<()> {
        let (channels, height, width) = self.image(tok)?;
        self.push(Layer::BatchNorm(BatchNorm {
            channels,
            height,
            width,
            relu,
        }));
        Ok(())
    }

    fn pool(&mut self, tok: &str) -> Result<()> {
        let (channels, height, width) = self.image(tok)?;
        if height < 2 || width < 2 {
            return Err(self.err(format!(
                "pooling '{tok}' on a {height}x{width} image leaves nothing"
            )));
        }
        self.push(Layer::MaxPool(MaxPool {
            channels,
            height,
            width,
        }));
        Ok(())
    }

    fn block(&mut self, tok: &str, out: usize, stride: usize) -> Result<()> {
        let (c, h, w) = self.image(tok)?;
        self.push(Layer::Residual(BasicBlock::new(c, out, h, w, stride)));
        Ok(())
    }

    fn gap(&mut self, tok: &str) -> Result<()> {
        let (channels, height, width) = self.image(tok)?;
        self.push(Layer::GlobalAvgPool(GlobalAvgPool {
            channels,
            height,
            width,
        }));
        Ok(())
    }

    fn dropout(&mut self, tok: &str, digits: &str) -> Result<()> {
        let p: f32 = digits
            .parse()
            .ok()
            .filter(|p: &f32| (0.0..1.0).contains(p))
            .ok_or_else(|| {
                self.err(format!(
                    "'{tok}': the dropout probability '{digits}' must be a number in [0, 1)"
                ))
            })?;
        self.push(Layer::Dropout(Dropout {
            p,
            features: self.features,
        }));
        Ok(())
    }

    fn dense(&mut self, out: usize, relu: bool) {
        let from_image = match self.features {
            Features::Image {
                channels,
                height,
                width,
            } => Some((channels, height, width)),
            Features::Flat(_) => None,
        };
        self.push(Layer::Dense(Dense {
            inputs: self.features.len(),
            outputs: out,
            relu,
            from_image,
        }));
    }

    /// The layers; a network with no image layer reads its input flat.
    fn finish(mut self) -> Vec<Layer> {
        if !self.layers.iter().any(Layer::is_spatial) {
            for l in &mut self.layers {
                match l {
                    Layer::Dense(d) => d.from_image = None,
                    Layer::Dropout(d) => d.features = Features::Flat(d.features.len()),
                    _ => {}
                }
            }
        }
        self.layers
    }
}

impl ModelSpec {
    /// Parses a spec string. Errors name the spec and the offending token.
    pub fn parse(text: &str) -> Result<Self> {
        let err = |message: String| Error::Spec {
            spec: text.to_string(),
            message,
        };
        let (family, body) = text
            .split_once(':')
            .ok_or_else(|| err("expected 'mlp:...', 'cnn:...' or 'resnet:...'".into()))?;
        let tokens: Vec<&str> = body.split('-').map(str::trim).collect();
        if tokens.iter().any(|t| t.is_empty()) {
            return Err(err("empty layer between '-' separators".into()));
        }
        let spec = match family.trim() {
            "mlp" => Self::parse_mlp(text, &tokens)?,
            "cnn" => Self::parse_image(text, &tokens, false)?,
            "resnet" => Self::parse_image(text, &tokens, true)?,
            other => {
                return Err(err(format!(
                    "unknown family '{other}' (use mlp, cnn or resnet)"
                )))
            }
        };
        let params = spec
            .layers
            .iter()
            .try_fold(0u64, |sum, l| sum.checked_add(l.checked_param_count()?));
        match params {
            Some(params) if params <= MAX_PARAMS => {}
            Some(params) => {
                return Err(err(format!(
                    "{params} parameters is more than the supported {MAX_PARAMS}"
                )))
            }
            None => {
                return Err(err(format!(
                    "the parameter count overflows; at most {MAX_PARAMS} parameters are supported"
                )))
            }
        }
        let flops = spec
            .layers
            .iter()
            .try_fold(0u64, |sum, l| sum.checked_add(l.checked_flops()?));
        if flops.is_none() {
            return Err(err(
                "the forward FLOPs per sample overflow a 64-bit count; use smaller images or fewer channels".into(),
            ));
        }
        Ok(spec)
    }

    /// Parses `text` for samples of `shape` (channels, height, width): a
    /// `cnn:` or `resnet:` spec that does not name its input (`iCxHxW`)
    /// reads images of the data's shape, so on 3x32x32 data `cnn:c32-p-10`
    /// is `cnn:i3x32x32-c32-p-10`, the text it then has (and is saved with).
    /// Flat data (`[1, 1, F]`), data of the default 1x28x28, and every
    /// other spec parse as [`Self::parse`] does.
    pub fn parse_for_input(text: &str, shape: [usize; 3]) -> Result<Self> {
        let [c, h, w] = shape;
        if let Some((family, body)) = text.split_once(':') {
            let body = body.trim_start();
            let names_input = body.starts_with('i');
            let family = family.trim();
            if (family == "cnn" || family == "resnet")
                && !names_input
                && h > 1
                && w > 1
                && (c, h, w) != (1, 28, 28)
            {
                return Self::parse(&format!("{family}:i{c}x{h}x{w}-{body}"));
            }
        }
        Self::parse(text)
    }

    fn parse_mlp(text: &str, tokens: &[&str]) -> Result<Self> {
        if tokens.len() < 2 {
            return Err(Error::Spec {
                spec: text.into(),
                message: "an mlp needs at least an input width and a class count".into(),
            });
        }
        let dims = tokens
            .iter()
            .map(|t| parse_dim(text, t, t))
            .collect::<Result<Vec<_>>>()?;
        let n = dims.len();
        let layers = dims
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                Layer::Dense(Dense {
                    inputs: w[0],
                    outputs: w[1],
                    relu: i + 2 < n,
                    from_image: None,
                })
            })
            .collect();
        Ok(ModelSpec {
            text: text.to_string(),
            input: (1, 1, dims[0]),
            layers,
        })
    }

    /// The `cnn:` and `resnet:` families: an optional input, layer tokens,
    /// the class count.
    fn parse_image(text: &str, tokens: &[&str], resnet: bool) -> Result<Self> {
        let err = |message: String| Error::Spec {
            spec: text.to_string(),
            message,
        };
        let mut rest = tokens;
        let mut input = (1usize, 28usize, 28usize);
        if let Some(first) = rest.first() {
            if let Some(dims) = first.strip_prefix('i') {
                let parts: Vec<&str> = dims.split('x').collect();
                if parts.len() != 3 {
                    return Err(err(format!(
                        "input '{first}' must be iCxHxW, for example i1x28x28"
                    )));
                }
                input = (
                    parse_dim(text, first, parts[0])?,
                    parse_dim(text, first, parts[1])?,
                    parse_dim(text, first, parts[2])?,
                );
                rest = &rest[1..];
            }
        }
        let Some((last, body)) = rest.split_last() else {
            return Err(err(format!(
                "a {} needs at least a class count",
                if resnet { "resnet" } else { "cnn" }
            )));
        };
        let classes = parse_dim(text, last, last).map_err(|_| {
            err(format!(
                "the last layer '{last}' must be the class count, a number"
            ))
        })?;
        let mut b = Builder {
            text,
            features: Features::Image {
                channels: input.0,
                height: input.1,
                width: input.2,
            },
            layers: Vec::new(),
        };
        if resnet {
            resnet_body(&mut b, body)?;
        } else {
            for tok in body {
                cnn_token(&mut b, tok)?;
            }
        }
        b.dense(classes, false);
        Ok(ModelSpec {
            text: text.to_string(),
            input,
            layers: b.finish(),
        })
    }
    /// The spec as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Input shape (channels, height, width); an MLP's is (1, 1, width).
    pub fn input_shape(&self) -> (usize, usize, usize) {
        self.input
    }

    /// Number of input features per sample.
    pub fn input_len(&self) -> usize {
        self.input.0 * self.input.1 * self.input.2
    }

    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        match self.layers.last() {
            Some(Layer::Dense(d)) => d.outputs,
            _ => 0,
        }
    }

    /// The resolved layers, in order.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }

    /// Whether the network works on images: it has an image layer
    /// (convolution, pooling, batch norm, residual block). Then images
    /// travel channels-last through those layers and the first dense layer
    /// flattens them: an `nn.Flatten` in PyTorch and a (channel, height,
    /// width) column order in the weights file. A `cnn:` spec with none
    /// (`cnn:10`) is a dense network on the flat image, as an `mlp:` is.
    pub fn is_convolutional(&self) -> bool {
        self.layers.iter().any(Layer::is_spatial)
    }

    /// Whether a layer keeps running statistics (batch norm), which the
    /// weights file then holds too.
    pub fn has_buffers(&self) -> bool {
        self.layers.iter().any(|l| !l.buffers().is_empty())
    }

    /// Total learnable parameters.
    pub fn param_count(&self) -> u64 {
        self.layers.iter().map(Layer::param_count).sum()
    }

    /// Forward FLOPs per sample (multiply-add = 2).
    pub fn flops(&self) -> u64 {
        self.layers.iter().map(Layer::flops).sum()
    }

    /// PyTorch `nn.Sequential` index of each layer's parameter-owning
    /// module (ReLU, pooling and flatten modules take indices too),
    /// aligned with [`Self::layers`].
    pub fn torch_indices(&self) -> Vec<usize> {
        let mut k = 0;
        let mut out = Vec::with_capacity(self.layers.len());
        for layer in &self.layers {
            let (modules, owner) = layer.torch_modules();
            out.push(k + owner);
            k += modules.len();
        }
        out
    }

    /// The module name of each layer (`layers.{k}`), the prefix of its
    /// tensors' names.
    pub fn module_names(&self) -> Vec<String> {
        self.torch_indices()
            .iter()
            .map(|k| format!("layers.{k}"))
            .collect()
    }

    /// The full names of layer `li`'s prunable weights
    /// ([`Layer::prunable_weights`]), e.g. `layers.3.weight` or
    /// `layers.4.conv1.weight`.
    pub fn prunable_weights(&self, li: usize) -> Vec<String> {
        let prefix = &self.module_names()[li];
        self.layers[li]
            .prunable_weights()
            .into_iter()
            .map(|n| format!("{prefix}.{n}"))
            .collect()
    }

    /// The full names of every buffer (running statistics and counters),
    /// e.g. `layers.1.running_mean` or `layers.4.bn1.num_batches_tracked`.
    pub fn buffer_names(&self) -> Vec<String> {
        self.module_names()
            .iter()
            .zip(&self.layers)
            .flat_map(|(prefix, l)| {
                l.buffers()
                    .into_iter()
                    .map(move |b| format!("{prefix}.{}", b.name))
            })
            .collect()
    }

    /// The equivalent PyTorch module, for users who load the weights there:
    /// Python that binds `model`, an `nn.Sequential` whose only child is
    /// named `layers`, so its `state_dict` keys are exactly the file's
    /// (`layers.{k}.weight`, see [`Self::torch_indices`]) and
    /// `model.load_state_dict(safetensors.torch.load_file("model.safetensors"))`
    /// loads a weights file strictly. One line for specs without residual
    /// blocks; with them, the `BasicBlock` class first. Needs `import
    /// torch`, `from collections import OrderedDict` and `from torch import
    /// nn`.
    pub fn torch_code(&self) -> String {
        let parts: Vec<String> = self
            .layers
            .iter()
            .flat_map(|l| l.torch_modules().0)
            .collect();
        let line = format!(
            "model = nn.Sequential(OrderedDict(layers=nn.Sequential({})))",
            parts.join(", ")
        );
        if self.layers.iter().any(|l| matches!(l, Layer::Residual(_))) {
            format!("{}\n{line}", super::layers::residual::TORCH_CLASS)
        } else {
            line
        }
    }

    /// A multi-line description: one row per layer with shapes, parameters
    /// and FLOPs, then totals.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let (c, h, w) = self.input;
        s.push_str(&format!("model {}\n", self.text));
        s.push_str(&format!("input {c}x{h}x{w}\n"));
        s.push_str(&format!(
            "{:<10} {:<40} {:>12} {:>14}\n",
            "layer", "shape", "parameters", "FLOPs/sample"
        ));
        for (name, layer) in self.module_names().iter().zip(&self.layers) {
            s.push_str(&format!(
                "{:<10} {:<40} {:>12} {:>14}\n",
                name,
                layer.describe(),
                layer.param_count(),
                layer.flops()
            ));
        }
        s.push_str(&format!(
            "total parameters {}\nforward FLOPs per sample {}\n",
            self.param_count(),
            self.flops()
        ));
        s
    }
}

/// One `cnn:` layer token (the grammar's table: [`CNN_TOKENS`]).
fn cnn_token(b: &mut Builder<'_>, tok: &str) -> Result<()> {
    let (head, stride) = match tok.strip_suffix("s2") {
        Some(h) if h.starts_with('c') || h.starts_with('r') => (h, 2),
        _ => (tok, 1),
    };
    match head {
        "p" => b.pool(tok),
        "bn" => b.batch_norm(tok, false),
        "gap" => b.gap(tok),
        _ => {
            if let Some(n) = head.strip_prefix('c') {
                let out = parse_dim(b.text, tok, n)?;
                b.conv(tok, out, stride, true)
            } else if let Some(n) = head.strip_prefix('r') {
                let out = parse_dim(b.text, tok, n)?;
                b.block(tok, out, stride)
            } else if let Some(p) = head.strip_prefix('d') {
                b.dropout(tok, p)
            } else if let Some(n) = head.strip_prefix('f') {
                let out = parse_dim(b.text, tok, n)?;
                b.dense(out, true);
                Ok(())
            } else {
                Err(b.err(format!("unknown layer '{tok}' (use {CNN_TOKENS})")))
            }
        }
    }
}

/// The `resnet:` body: stages `WxN` and an optional dropout `dP`.
fn resnet_body(b: &mut Builder<'_>, body: &[&str]) -> Result<()> {
    let (stages, dropout) = match body.split_last() {
        Some((last, stages)) if last.starts_with('d') => (stages, Some(*last)),
        _ => (body, None),
    };
    if stages.is_empty() {
        return Err(b.err("a resnet needs at least one stage WxN, as in 16x3".into()));
    }
    for (si, tok) in stages.iter().enumerate() {
        let (w, n) = tok.split_once('x').ok_or_else(|| {
            b.err(format!(
                "unknown stage '{tok}' (use WxN: N blocks of width W, as in 16x3; then an optional dP and the class count)"
            ))
        })?;
        let (width, blocks) = (parse_dim(b.text, tok, w)?, parse_dim(b.text, tok, n)?);
        if si == 0 {
            b.conv(tok, width, 1, false)?;
            b.batch_norm(tok, true)?;
        }
        for k in 0..blocks {
            let stride = if si > 0 && k == 0 { 2 } else { 1 };
            b.block(tok, width, stride)?;
        }
    }
    b.gap("gap")?;
    if let Some(tok) = dropout {
        b.dropout(tok, &tok[1..])?;
    }
    Ok(())
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for ModelSpec {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        ModelSpec::parse(s)
    }
}

fn parse_dim(spec: &str, token: &str, digits: &str) -> Result<usize> {
    let value: usize = digits.parse().map_err(|_| Error::Spec {
        spec: spec.to_string(),
        message: format!("'{token}': '{digits}' is not a positive whole number"),
    })?;
    if value == 0 || value > MAX_DIM {
        return Err(Error::Spec {
            spec: spec.to_string(),
            message: format!("'{token}': {value} must be between 1 and {MAX_DIM}"),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mlp_parameter_count_matches_pytorch() {
        // sum(p.numel() for p in nn.Sequential(nn.Linear(784,128), nn.ReLU(),
        //     nn.Linear(128,10)).parameters()) == 101770
        let spec = ModelSpec::parse("mlp:784-128-10").unwrap();
        assert_eq!(spec.param_count(), 101_770);
        assert_eq!(spec.num_classes(), 10);
        assert_eq!(spec.torch_indices(), vec![0, 2]);
        // 784-1200-1200-10 (Hinton's teacher): 2,395,210 parameters.
        let big = ModelSpec::parse("mlp:784-1200-1200-10").unwrap();
        assert_eq!(big.param_count(), 2_395_210);
        assert_eq!(big.flops(), 2 * (784 * 1200 + 1200 * 1200 + 1200 * 10));
    }

    #[test]
    fn cnn_shapes_and_torch_names() {
        let spec = ModelSpec::parse("cnn:c32-p-c64-p-f128-10").unwrap();
        // Conv(1,32): 320; Conv(32,64): 18496; Linear(3136,128): 401536; Linear(128,10): 1290.
        assert_eq!(spec.param_count(), 320 + 18_496 + 401_536 + 1_290);
        // Sequential: 0 conv, 1 relu, 2 pool, 3 conv, 4 relu, 5 pool, 6 flatten,
        // 7 linear, 8 relu, 9 linear
        assert_eq!(spec.torch_indices(), vec![0, 2, 3, 5, 7, 9]);
        match &spec.layers()[4] {
            Layer::Dense(d) => {
                assert_eq!(d.inputs, 64 * 7 * 7);
                assert_eq!(d.from_image, Some((64, 7, 7)));
            }
            ref other => panic!("expected dense, got {other:?}"),
        }
        let odd = ModelSpec::parse("cnn:i3x15x15-c8-p-p-4").unwrap();
        assert_eq!(odd.input_shape(), (3, 15, 15));
        assert_eq!(
            odd.layers().last().map(|l| l.param_count()),
            Some((8 * 3 * 3 + 1) * 4)
        );
    }

    #[test]
    fn torch_code_names_its_child_as_the_weights_files_do() {
        // state_dict keys of this module: layers.0.weight, layers.0.bias,
        // layers.2.weight, layers.2.bias (torch_indices above); the
        // end-to-end check against written files is tests/torch_reference.rs.
        assert_eq!(
            ModelSpec::parse("mlp:784-128-10").unwrap().torch_code(),
            "model = nn.Sequential(OrderedDict(layers=nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))))"
        );
        assert_eq!(
            ModelSpec::parse("cnn:i2x4x6-c3-p-f4-5").unwrap().torch_code(),
            "model = nn.Sequential(OrderedDict(layers=nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 4), nn.ReLU(), nn.Linear(4, 5))))"
        );
    }

    #[test]
    fn pooling_without_convolution_flattens_like_a_cnn() {
        // Regression: `cnn:p-10` was treated as a dense network on the raw
        // input, so the forward pass fed the pooled image to the linear layer
        // unflattened (a dfdx matmul shape panic) and the PyTorch module
        // lacked its nn.Flatten.
        let spec = ModelSpec::parse("cnn:p-10").unwrap();
        assert!(spec.is_convolutional());
        // Sequential: 0 pool, 1 flatten, 2 linear
        assert_eq!(spec.torch_indices(), vec![0, 2]);
        assert_eq!(
            spec.torch_code(),
            "model = nn.Sequential(OrderedDict(layers=nn.Sequential(nn.MaxPool2d(2), nn.Flatten(), nn.Linear(196, 10))))"
        );
        // A cnn without spatial layers stays a dense network on the flat
        // image, named and printed as before.
        let dense = ModelSpec::parse("cnn:10").unwrap();
        assert!(!dense.is_convolutional());
        assert_eq!(dense.torch_indices(), vec![0]);
        assert_eq!(
            dense.torch_code(),
            ModelSpec::parse("mlp:784-10").unwrap().torch_code()
        );
    }

    #[test]
    fn degenerate_specs_run_forward_or_are_refused() {
        use crate::model::network::Network;
        use dfdx::prelude::Cpu;
        let dev: Cpu = Default::default();
        for text in [
            "cnn:p-10",
            "cnn:i3x7x5-p-4",
            "cnn:i2x6x6-p-f5-3",
            "cnn:p-p-p-p-10",
            "cnn:10",
            "cnn:i3x4x4-10",
            "cnn:f8-10",
            "cnn:i1x1x1-c2-3",
            "mlp:784-10",
        ] {
            let spec = ModelSpec::parse(text).unwrap();
            let (n, classes) = (spec.input_len(), spec.num_classes());
            let net = Network::new(spec, dev.clone(), 1);
            let x: Vec<f32> = (0..2 * n).map(|i| (i % 13) as f32 / 13.0).collect();
            let y = net.predict(x, 2).as_vec();
            assert_eq!(y.len(), 2 * classes, "{text}");
            assert!(y.iter().all(|v| v.is_finite()), "{text}");
        }
        for (text, needle) in [
            ("cnn:p-p-p-p-p-10", "leaves nothing"),
            ("mlp:10", "at least"),
            ("cnn:i1048576x1048576x1048576-1048576", "overflows"),
            (
                "cnn:i1048576x1048576x1048576-f1048576-f1048576-10",
                "overflows",
            ),
            (
                "cnn:i1x1048576x1048576-c1024-c1024-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-p-10",
                "FLOPs",
            ),
        ] {
            let err = ModelSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
            assert!(err.contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn a_cnn_without_an_input_follows_the_data() {
        let rgb = ModelSpec::parse_for_input("cnn:c8-p-10", [3, 32, 32]).unwrap();
        assert_eq!(rgb.as_str(), "cnn:i3x32x32-c8-p-10");
        assert_eq!(rgb.input_shape(), (3, 32, 32));
        assert_eq!(rgb.param_count(), (8 * 3 * 9 + 8) + (8 * 16 * 16 * 10 + 10));
        // Named inputs, MLPs, flat data and the default shape are left alone.
        for (text, shape) in [
            ("cnn:i1x28x28-c8-10", [3, 32, 32]),
            ("mlp:3072-10", [3, 32, 32]),
            ("cnn:c8-10", [1, 1, 784]),
            ("cnn:c8-10", [1, 28, 28]),
        ] {
            let spec = ModelSpec::parse_for_input(text, shape).unwrap();
            assert_eq!(spec, ModelSpec::parse(text).unwrap(), "{text}");
        }
        let gray = ModelSpec::parse_for_input("cnn:c4-p-5", [1, 8, 6]).unwrap();
        assert_eq!(gray.as_str(), "cnn:i1x8x6-c4-p-5");
        assert!(ModelSpec::parse_for_input("cnn:c4-q-5", [3, 8, 8]).is_err());
    }

    #[test]
    fn bad_specs_name_the_token() {
        for (spec, needle) in [
            ("mlp:784", "at least"),
            ("mlp:784-x-10", "'x'"),
            ("mlp:784-0-10", "between 1"),
            ("rnn:1-2", "unknown family"),
            ("cnn:c32-q-10", "unknown layer 'q'"),
            ("cnn:c32-f10-c3-10", "after a dense"),
            ("cnn:i1x1x1-p-10", "leaves nothing"),
            ("cnn:c32-p", "class count"),
            ("mlp784-10", "expected"),
            ("mlp:784--10", "empty"),
        ] {
            let err = ModelSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains(spec), "{spec}: {err}");
        }
    }

    #[test]
    fn residual_grammar_resolves_shapes_and_names() {
        let spec = ModelSpec::parse("cnn:i3x9x9-c8s2-bn-r8-r16s2-gap-d0.5-10").unwrap();
        let out: Vec<Features> = spec.layers().iter().map(Layer::output).collect();
        let img = |channels, height, width| Features::Image {
            channels,
            height,
            width,
        };
        assert_eq!(
            out,
            vec![
                img(8, 5, 5),
                img(8, 5, 5),
                img(8, 5, 5),
                img(16, 3, 3),
                Features::Flat(16),
                Features::Flat(16),
                Features::Flat(10)
            ]
        );
        // conv, relu, bn, block, block, avgpool, flatten, dropout, linear
        assert_eq!(spec.torch_indices(), vec![0, 2, 3, 4, 5, 7, 8]);
        assert_eq!(
            spec.prunable_weights(3),
            vec![
                "layers.4.conv1.weight",
                "layers.4.conv2.weight",
                "layers.4.shortcut.0.weight"
            ]
        );
        assert!(spec.prunable_weights(1).is_empty(), "batch norm scales");
        assert!(spec.has_buffers());
        // resnet: the stem, stages with a stride-2 block first (but the
        // first), pooling, dropout, linear.
        let r = ModelSpec::parse("resnet:8x2-16x1-d0.1-4").unwrap();
        let kinds: Vec<String> = r.layers().iter().map(Layer::describe).collect();
        assert_eq!(
            kinds,
            vec![
                "conv3x3 1->8 @28x28 nobias",
                "batchnorm 8ch @28x28 +relu",
                "block 8->8 @28x28",
                "block 8->8 @28x28",
                "block 8->16 @28x28 s2 ->14x14 +proj",
                "avgpool 16ch 14x14->1x1",
                "dropout p=0.1 (training only)",
                "linear 16->4"
            ]
        );
        for (text, needle) in [
            ("resnet:16-10", "unknown stage '16'"),
            ("resnet:10", "at least one stage"),
            ("cnn:d1.5-10", "[0, 1)"),
            ("cnn:c8-gap-c8-10", "after a dense layer or global pooling"),
            ("cnn:r0-10", "between 1"),
        ] {
            let err = ModelSpec::parse(text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }
}

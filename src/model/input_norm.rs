//! A model's input normalisation: the per-channel mean and standard
//! deviation ([`Normalization`]) a network subtracts and divides by at the
//! start of its forward pass, stored with its weights.
//!
//! Where it lives: in the weights file's metadata under [`NORMALIZE_KEY`]
//! (`{"mean":[..],"std":[..]}`), beside the spec. Every consumer loads a
//! model through that file (evaluation, a cache build with the model as
//! teacher, an online teacher, `--init-from`, pruning), so every one applies
//! the same normalisation, and phase one and phase two cannot disagree. A
//! file without the key (every model written before normalisation existed,
//! such as the committed teachers) loads with none: the identity.
//!
//! How it applies: [`InputNorm::apply`] computes `(x - mean) / std` on the
//! device, on the input batch's values in (channel, height, width) order,
//! with the channel's statistics repeated over its plane. Nothing upstream
//! needs a gradient, so it is applied off the tape. On the CPU it is one
//! parallel pass over a host copy of the batch (dfdx's broadcast ops walk an
//! index per value, 2% of an `mlp:784-800-800-10` step on the step's own
//! thread), with the same two f32 operations per value, so the same bits.

use std::any::Any;

use dfdx::prelude::*;
use rayon::prelude::*;

use super::ops::{Backend, Matrix};
use super::spec::ModelSpec;
use crate::data::Normalization;

/// Metadata key holding the normalisation inside a weights file.
pub const NORMALIZE_KEY: &str = "distill.normalize";

/// A normalisation ready on a device.
#[derive(Clone, Debug)]
pub struct InputNorm<D: Backend> {
    stats: Normalization,
    /// The mean and std of each input value (its channel's), length
    /// `input_len`.
    mean: Tensor<(usize,), f32, D>,
    std: Tensor<(usize,), f32, D>,
    /// The same values on the host, for the CPU's pass.
    host_mean: Vec<f32>,
    host_std: Vec<f32>,
}

impl<D: Backend> InputNorm<D> {
    /// Puts `stats` on `device` for inputs of `spec`. A convolutional
    /// network's normalisation has its input's channels; a dense one's
    /// splits the flat input into equal planes, one per channel (so a
    /// 3-channel normalisation reads a 3072-wide input as three 32x32
    /// planes). The error says what does not fit.
    pub fn new(stats: Normalization, spec: &ModelSpec, device: &D) -> Result<Self, String> {
        let (c, h, w) = spec.input_shape();
        let len = spec.input_len();
        let k = stats.channels();
        let fits = if spec.is_convolutional() {
            k == c
        } else {
            len.is_multiple_of(k)
        };
        if !fits {
            return Err(format!(
                "the input normalisation has {k} channels, but {spec} reads {c}x{h}x{w} inputs{}",
                if spec.is_convolutional() {
                    format!(" ({c} channels)")
                } else {
                    format!(" ({len} values, not {k} equal planes)")
                }
            ));
        }
        let plane = len / k;
        let expand = |values: &[f32]| -> Vec<f32> {
            values
                .iter()
                .flat_map(|&v| std::iter::repeat_n(v, plane))
                .collect()
        };
        let (host_mean, host_std) = (expand(stats.mean()), expand(stats.std()));
        let mean = device.tensor_from_vec(host_mean.clone(), (len,));
        let std = device.tensor_from_vec(host_std.clone(), (len,));
        Ok(InputNorm {
            stats,
            mean,
            std,
            host_mean,
            host_std,
        })
    }

    /// The statistics.
    pub fn stats(&self) -> &Normalization {
        &self.stats
    }

    /// `(x - mean) / std` of a `(batch, input_len)` batch, off the tape:
    /// the tape passes through unchanged.
    pub fn apply<T: Tape<f32, D>>(&self, x: Matrix<D, T>) -> Matrix<D, T> {
        let (x, tape) = x.split_tape();
        let y = match self.apply_on_host(&x) {
            Some(y) => y,
            None => {
                let shape = *x.shape();
                let centred = x - self.mean.clone().broadcast_like::<_, Axis<0>>(&shape);
                centred / self.std.clone().broadcast_like::<_, Axis<0>>(&shape)
            }
        };
        y.put_tape(tape)
    }

    /// [`Self::apply`] on the CPU: `None` on other devices (or a batch
    /// whose width is not the normalisation's, which the device path
    /// reports).
    fn apply_on_host(&self, x: &Matrix<D>) -> Option<Matrix<D>> {
        let cpu = (x as &dyn Any).downcast_ref::<Matrix<Cpu>>()?;
        let (rows, cols) = *cpu.shape();
        if cols != self.host_mean.len() || cols == 0 {
            return None;
        }
        let mut values = cpu.as_vec();
        let (mean, std) = (&self.host_mean, &self.host_std);
        values.par_chunks_mut(cols).for_each(|row| {
            for ((v, m), s) in row.iter_mut().zip(mean).zip(std) {
                *v = (*v - m) / s;
            }
        });
        let y: Box<dyn Any> = Box::new(cpu.device().tensor_from_vec(values, (rows, cols)));
        y.downcast::<Matrix<D>>().ok().map(|y| *y)
    }
}

/// The metadata value of a normalisation.
pub fn to_metadata(stats: &Normalization) -> String {
    // Serialising two vectors of finite floats cannot fail.
    serde_json::to_string(stats).unwrap_or_default()
}

/// Reads a metadata value back; the error says what is wrong with it.
pub fn from_metadata(text: &str) -> Result<Normalization, String> {
    serde_json::from_str(text).map_err(|e| {
        format!(
            "metadata '{NORMALIZE_KEY}' is not a valid normalisation ({}): {text:.200}",
            crate::error::parser_message(&e)
        )
    })
}

/// The PyTorch module of a model: [`ModelSpec::torch_code`], with the
/// normalisation first when there is one. The normalisation holds no
/// `state_dict` entries (its buffers are not persistent), so the keys stay
/// exactly the weights file's and `load_state_dict(..., strict=True)` loads
/// it. Needs `import torch`, `from collections import OrderedDict` and
/// `from torch import nn`.
pub fn torch_code(spec: &ModelSpec, stats: Option<&Normalization>) -> String {
    let code = spec.torch_code();
    let Some(n) = stats else {
        return code;
    };
    let list = |v: &[f32]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let class = "class Normalize(nn.Module):\n    \
        def __init__(self, mean, std):\n        \
        super().__init__()\n        \
        self.register_buffer(\"mean\", torch.tensor(mean)[:, None], persistent=False)\n        \
        self.register_buffer(\"std\", torch.tensor(std)[:, None], persistent=False)\n    \
        def forward(self, x):\n        \
        # per channel, over (channel, height, width) inputs or their flat rows\n        \
        y = x.reshape(x.shape[0], self.mean.shape[0], -1)\n        \
        return ((y - self.mean) / self.std).reshape(x.shape)\n";
    let normalize = format!(
        "normalize=Normalize([{}], [{}]), layers=",
        list(n.mean()),
        list(n.std())
    );
    format!("{class}{}", code.replacen("layers=", &normalize, 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_normalisation_equals_the_host_reference() {
        let dev = Cpu::default();
        for (text, stats) in [
            ("cnn:i3x2x3-c2-4", "0.5,0.25,-1/2,0.5,4"),
            ("mlp:18-4", "0.5,0.25,-1/2,0.5,4"),
            ("mlp:18-4", "0.3/0.7"),
        ] {
            let spec = ModelSpec::parse(text).unwrap();
            let stats: Normalization = stats.parse().unwrap();
            let norm = InputNorm::new(stats.clone(), &spec, &dev).unwrap();
            let x: Vec<f32> = (0..2 * 18).map(|i| (i % 7) as f32 * 0.3 - 0.5).collect();
            let got = norm.apply(dev.tensor_from_vec(x.clone(), (2, 18))).as_vec();
            // dfdx's broadcast ops, the path of the other devices: same bits.
            let t = dev.tensor_from_vec(x.clone(), (2, 18));
            let shape = *t.shape();
            let ops = ((t - norm.mean.clone().broadcast_like::<_, Axis<0>>(&shape))
                / norm.std.clone().broadcast_like::<_, Axis<0>>(&shape))
            .as_vec();
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&ops), "{text}");
            let mut want = x;
            stats.apply(18, &mut want);
            assert_eq!(got, want, "{text}");
        }
    }

    #[test]
    fn channels_must_fit_the_spec_and_metadata_round_trips() {
        let dev = Cpu::default();
        let three: Normalization = "0,0,0/1,1,1".parse().unwrap();
        let e = InputNorm::new(three.clone(), &ModelSpec::parse("cnn:c4-10").unwrap(), &dev)
            .unwrap_err();
        assert!(e.contains("3 channels") && e.contains("1x28x28"), "{e}");
        let e = InputNorm::new(
            three.clone(),
            &ModelSpec::parse("mlp:784-10").unwrap(),
            &dev,
        )
        .unwrap_err();
        assert!(e.contains("784 values"), "{e}");
        let back = from_metadata(&to_metadata(&three)).unwrap();
        assert_eq!(back, three);
        for bad in [
            "",
            "{}",
            r#"{"mean":[0],"std":[0]}"#,
            r#"{"mean":[0],"std":[1],"x":1}"#,
        ] {
            assert!(from_metadata(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn torch_code_puts_the_normalisation_first_and_keeps_the_keys() {
        let spec = ModelSpec::parse("cnn:i3x4x4-c2-p-5").unwrap();
        assert_eq!(torch_code(&spec, None), spec.torch_code());
        let stats: Normalization = "0.5,0.25,0.125/1,2,4".parse().unwrap();
        let code = torch_code(&spec, Some(&stats));
        assert!(code.starts_with("class Normalize(nn.Module):"), "{code}");
        assert!(code.contains("persistent=False"), "{code}");
        assert!(
            code.ends_with(
                "model = nn.Sequential(OrderedDict(normalize=Normalize([0.5, 0.25, 0.125], [1.0, 2.0, 4.0]), \
                 layers=nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8, 5))))"
            ),
            "{code}"
        );
    }
}

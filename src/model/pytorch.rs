//! `model.py`: the PyTorch module of a model, written beside its weights
//! by [`super::io::save_weights`] and `distill prune`. It defines the
//! module ([`ModelSpec::torch_code`], with the input normalisation first
//! when the model has one, see [`super::input_norm::torch_code`]) and
//! binds it to `model`, in evaluation mode, so
//!
//! ```python
//! import safetensors.torch
//! from model import model
//! model.load_state_dict(safetensors.torch.load_file("model.safetensors"), strict=True)
//! logits = model(x)  # x: (N, C, H, W) images, or (N, features) for an mlp
//! ```
//!
//! gives distill's logits (checked against PyTorch's own numbers by
//! `tests/pytorch_golden.rs`).

use std::path::Path;

use super::input_norm;
use super::spec::ModelSpec;
use crate::data::Normalization;
use crate::error::Result;

/// The text of `model.py` for `spec` with the normalisation `stats`.
pub fn module_file(spec: &ModelSpec, stats: Option<&Normalization>) -> String {
    format!(
        "\"\"\"PyTorch module of the distill model {spec}.\n\n\
         Load the weights beside it with\n    \
         model.load_state_dict(safetensors.torch.load_file(\"model.safetensors\"), strict=True)\n\
         \"\"\"\n\
         from collections import OrderedDict\n\n\
         import torch\n\
         from torch import nn\n\n\
         {}\n\
         model.eval()\n",
        input_norm::torch_code(spec, stats)
    )
}

/// Writes `model.py` into the model directory of `weights` (atomically).
pub fn write_module_file(
    weights: &Path,
    spec: &ModelSpec,
    stats: Option<&Normalization>,
) -> Result<()> {
    let dir = super::ModelDir::new(weights);
    super::io::atomic_write(&dir.torch_module(), module_file(spec, stats).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_defines_the_module_and_binds_model() {
        let spec = ModelSpec::parse("resnet:i3x8x8-4x1-8x1-5").unwrap();
        let text = module_file(&spec, None);
        assert!(text.contains("class BasicBlock(nn.Module):"), "{text}");
        assert!(
            text.contains("BasicBlock(4, 4, 1), BasicBlock(4, 8, 2), nn.AdaptiveAvgPool2d(1)"),
            "{text}"
        );
        assert!(text.ends_with("model.eval()\n"), "{text}");
        let mlp = module_file(&ModelSpec::parse("mlp:4-3-2").unwrap(), None);
        assert!(!mlp.contains("BasicBlock"), "{mlp}");
    }
}

//! A model directory as host tensors, for pruning and parameter transfer:
//! [`read_model`] (the spec from the weights' metadata, the tensors checked
//! against it) and [`write_model`] (weights and masks). File names come from
//! [`ModelDir`].

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use dfdx::prelude::Cpu;

use super::masks::write_masks;
use crate::error::{Error, Result};
use crate::model::io::{read_safetensors, write_safetensors, HostTensor, SPEC_KEY};
use crate::model::{ModelDir, ModelSpec, Network};

/// Reads a model's spec and tensors (PyTorch layout, in the network's
/// parameter order), checking names and shapes against the spec.
pub fn read_model(dir: &ModelDir) -> Result<(ModelSpec, Vec<HostTensor>)> {
    let file = dir.weights();
    let (meta, tensors) = read_safetensors(file)?;
    let text = meta.get(SPEC_KEY).ok_or_else(|| Error::Model {
        path: file.to_path_buf(),
        message: format!("no '{SPEC_KEY}' metadata: not a distill model"),
    })?;
    let spec = ModelSpec::parse(text)?;
    // Validates names and shapes against the spec.
    let mut net = Network::new(spec.clone(), Cpu::default(), 0);
    net.load_host(&tensors, file)?;
    Ok((spec, net.to_host()))
}

/// Writes a model into the directory `out` (created if needed): its weights
/// with the spec in the metadata, and its masks, or no mask file when it
/// has none. Returns the directory's layout.
pub fn write_model(
    out: &Path,
    spec: &ModelSpec,
    weights: &[HostTensor],
    masks: Option<&[HostTensor]>,
) -> Result<ModelDir> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // After creating it: `out` is a directory even if its name ends in
    // `.safetensors`.
    let dir = ModelDir::new(out);
    let mut meta = HashMap::new();
    meta.insert(SPEC_KEY.to_string(), spec.to_string());
    write_safetensors(dir.weights(), weights, meta)?;
    write_masks(&dir, spec, masks)?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::host;
    use super::*;

    #[test]
    fn a_written_model_reads_back() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let w = host(&spec, |_, i| i as f32);
        let dir = write_model(&tmp.path().join("m"), &spec, &w, None).unwrap();
        assert!(dir.has_weights() && !dir.masks().exists());
        assert_eq!(read_model(&dir).unwrap(), (spec, w));
        let err = read_model(&ModelDir::new(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}

//! A model directory as host tensors, for pruning and parameter transfer:
//! [`read_model`] (the spec from the weights' metadata, the tensors checked
//! against it; [`read_model_normalized`] with the input normalisation) and
//! [`write_model`] (weights, normalisation and masks). Pruning and transfer
//! change layers, never the input, so a model's normalisation passes through
//! unchanged. File names come from [`ModelDir`].

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use dfdx::prelude::Cpu;

use super::masks::write_masks;
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::model::input_norm::{self, NORMALIZE_KEY};
use crate::model::io::{
    check_tensor_shapes, read_safetensors_hashed, stored_normalization, write_safetensors,
    HostTensor, SPEC_KEY,
};
use crate::model::{ModelDir, ModelSpec, Network};

/// Reads a model's spec and tensors (PyTorch layout, in the network's
/// parameter order), checking names and shapes against the spec.
pub fn read_model(dir: &ModelDir) -> Result<(ModelSpec, Vec<HostTensor>)> {
    read_model_normalized(dir).map(|(spec, tensors, _)| (spec, tensors))
}

/// [`read_model`], and the model's input normalisation (`None`: it has none).
pub fn read_model_normalized(
    dir: &ModelDir,
) -> Result<(ModelSpec, Vec<HostTensor>, Option<Normalization>)> {
    read_stored_model(dir).map(|m| (m.spec, m.tensors, m.normalization))
}

/// A model as [`read_stored_model`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredModel {
    pub spec: ModelSpec,
    /// PyTorch layout, in the network's parameter order.
    pub tensors: Vec<HostTensor>,
    pub normalization: Option<Normalization>,
    /// xxh3-128 of the weights file's bytes, from the read the tensors
    /// came from (32 hex digits).
    pub weights_xxh3: String,
}

/// [`read_model_normalized`], and the hash of the weights file: the file
/// is read once, so the hash names the weights read.
pub fn read_stored_model(dir: &ModelDir) -> Result<StoredModel> {
    let file = dir.weights();
    let (meta, tensors, weights_xxh3) = read_safetensors_hashed(file)?;
    let normalization = stored_normalization(&meta, file)?;
    let text = meta.get(SPEC_KEY).ok_or_else(|| Error::Model {
        path: file.to_path_buf(),
        message: format!("no '{SPEC_KEY}' metadata: not a distill model"),
    })?;
    let spec = ModelSpec::parse(text)?;
    // Names and shapes first: a small file must not allocate a huge network.
    check_tensor_shapes(&spec, &tensors, file)?;
    let mut net = Network::new(spec.clone(), Cpu::default(), 0);
    net.load_host(&tensors, file)?;
    net.set_normalization(normalization.clone())
        .map_err(|message| Error::Model {
            path: file.to_path_buf(),
            message,
        })?;
    dir.check_fingerprint(&net)?;
    Ok(StoredModel {
        spec,
        tensors: net.to_host(),
        normalization,
        weights_xxh3,
    })
}

/// Writes a model into the directory `out` (created if needed): its weights
/// with the spec and the input normalisation (if any) in the metadata, and
/// its masks, or no mask file when it has none. Returns the directory's
/// layout.
pub fn write_model(
    out: &Path,
    spec: &ModelSpec,
    weights: &[HostTensor],
    normalization: Option<&Normalization>,
    masks: Option<&[HostTensor]>,
) -> Result<ModelDir> {
    fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    // After creating it: `out` is a directory even if its name ends in
    // `.safetensors`.
    let dir = ModelDir::new(out);
    let mut meta = HashMap::new();
    meta.insert(SPEC_KEY.to_string(), spec.to_string());
    if let Some(n) = normalization {
        meta.insert(NORMALIZE_KEY.to_string(), input_norm::to_metadata(n));
    }
    write_safetensors(dir.weights(), weights, meta)?;
    write_masks(&dir, spec, masks)?;
    crate::model::pytorch::write_module_file(dir.weights(), spec, normalization)?;
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
        let dir = write_model(&tmp.path().join("m"), &spec, &w, None, None).unwrap();
        assert!(dir.has_weights() && !dir.masks().exists());
        assert_eq!(read_model(&dir).unwrap(), (spec.clone(), w.clone()));
        assert_eq!(read_model_normalized(&dir).unwrap().2, None);
        let n: Normalization = "0.5/0.25".parse().unwrap();
        let dir = write_model(&tmp.path().join("n"), &spec, &w, Some(&n), None).unwrap();
        assert_eq!(
            read_model_normalized(&dir).unwrap(),
            (spec, w.clone(), Some(n))
        );
        let err = read_model(&ModelDir::new(tmp.path())).unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
        // Weights that are not the ones their card records (pruning's and
        // --init-from's source) are refused.
        fs::write(
            tmp.path().join("m/model.json"),
            r#"{"weights_fingerprint": "0123"}"#,
        )
        .unwrap();
        let err = read_model(&ModelDir::new(tmp.path().join("m"))).unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
        // A small file whose metadata names a huge spec is refused on its
        // shapes, before a network of that spec is allocated (4e9 weights).
        let huge = tmp.path().join("h");
        fs::create_dir_all(&huge).unwrap();
        let meta = HashMap::from([(SPEC_KEY.to_string(), "mlp:1048576-4000-10".to_string())]);
        write_safetensors(&huge.join("model.safetensors"), &w, meta).unwrap();
        let err = read_model(&ModelDir::new(&huge)).unwrap_err().to_string();
        assert!(
            err.contains("layers.0.weight") && err.contains("needs"),
            "{err}"
        );
    }
}

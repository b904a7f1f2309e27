//! Pruning masks: 0/1 tensors named after their weights (1 keeps, 0
//! prunes), in PyTorch layout.
//!
//! [`StoreMasks`] applies masks to a [`Network`] after every optimizer step
//! (projected gradient descent): the forward pass then never sees a pruned
//! weight, so the remaining weights follow exactly the trajectory they
//! would with `w * mask` in the forward pass, on every device, and pruned
//! weights are exactly `0.0` after every step whatever the optimizer
//! (momentum, Adam moments and decoupled weight decay included).
//! [`grow_masks`] adds to a mask (masks only grow), [`zero_masked`] applies
//! one to host tensors, and [`read_masks`] / [`write_masks`] are the mask
//! file beside a model's weights ([`ModelDir::masks`]).

use std::collections::HashMap;
use std::path::Path;

use dfdx::prelude::Cpu;

use super::accounting::count_nonzero;
use super::selection::LayerSelection;
use super::unstructured::unstructured;
use crate::error::{Error, Result};
use crate::model::io::{read_safetensors, torch_shapes, write_safetensors, HostTensor, SPEC_KEY};
use crate::model::{Backend, ModelDir, ModelSpec, Network, ParamKind};

/// Unstructured pruning on top of existing masks: masks the
/// smallest-magnitude weights of the selected layers up to `sparsity` (per
/// layer, or with `global` one threshold), keeps every zero of `current`
/// (masks only grow; masks of unselected layers are kept as they are) and
/// zeroes the masked weights. Returns one mask per weight that has one.
pub fn grow_masks(
    spec: &ModelSpec,
    weights: &mut [HostTensor],
    current: Option<&[HostTensor]>,
    sparsity: f64,
    sel: &LayerSelection,
    global: bool,
) -> Result<Vec<HostTensor>> {
    // The current zeros first, so that they sort first.
    if let Some(cur) = current {
        zero_masked(weights, cur);
    }
    let mut masks = unstructured(spec, weights, sparsity, sel, global)?;
    if let Some(cur) = current {
        // 0/1 masks: zeroing the new one where the old is 0 is their union.
        zero_masked(&mut masks, cur);
        for c in cur {
            if !masks.iter().any(|m| m.name == c.name) {
                masks.push(c.clone());
            }
        }
    }
    Ok(masks)
}

/// Sets every weight whose mask entry is 0 to exactly +0.0 (host tensors,
/// matched by name; a mask without its weight is skipped).
pub fn zero_masked(weights: &mut [HostTensor], masks: &[HostTensor]) {
    for m in masks {
        if let Some(t) = weights.iter_mut().find(|t| t.name == m.name) {
            for (x, keep) in t.data.iter_mut().zip(&m.data) {
                if *keep == 0.0 {
                    *x = 0.0;
                }
            }
        }
    }
}

/// How many of a set of masks' values prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaskCount {
    /// Values that are 0 (pruned).
    pub pruned: u64,
    /// All values.
    pub total: u64,
}

impl MaskCount {
    /// Counts the zeros of `masks`.
    pub fn of(masks: &[HostTensor]) -> MaskCount {
        let total: usize = masks.iter().map(|t| t.data.len()).sum();
        MaskCount {
            pruned: total as u64 - count_nonzero(masks),
            total: total as u64,
        }
    }
}

/// The masks saved beside a model, if any (not checked against its spec:
/// see [`check_masks`]).
pub fn read_masks(dir: &ModelDir) -> Result<Option<Vec<HostTensor>>> {
    let file = dir.masks();
    if !file.exists() {
        return Ok(None);
    }
    Ok(Some(read_safetensors(&file)?.1))
}

/// Checks that every mask names a weight of `spec`, has its shape and holds
/// only 0s and 1s; `source` names the file in errors.
pub fn check_masks(spec: &ModelSpec, masks: &[HostTensor], source: &Path) -> Result<()> {
    StoreMasks::new(
        &Network::new(spec.clone(), Cpu::default(), 0),
        masks,
        source,
    )
    .map(|_| ())
}

/// Writes a model's masks beside its weights (with the spec in the
/// metadata, like the weights), or removes a stale mask file when there are
/// none: a directory never holds a mask that is not its model's.
pub fn write_masks(dir: &ModelDir, spec: &ModelSpec, masks: Option<&[HostTensor]>) -> Result<()> {
    let file = dir.masks();
    match masks {
        Some(m) => {
            let mut meta = HashMap::new();
            meta.insert(SPEC_KEY.to_string(), spec.to_string());
            write_safetensors(&file, m, meta)
        }
        None => Ok(crate::fsutil::remove_if_present(&file)?),
    }
}

/// Masks in the network's own layout, applied after every optimizer step so
/// pruned weights stay exactly zero.
pub struct StoreMasks {
    /// (index into `Network::params`, 0/1 values in store layout)
    entries: Vec<(usize, Vec<f32>)>,
}

impl StoreMasks {
    /// Converts PyTorch-layout masks for `net`; every mask must name one of
    /// its weights with that weight's shape. `source` names the file in errors.
    pub fn new<D: Backend>(net: &Network<D>, masks: &[HostTensor], source: &Path) -> Result<Self> {
        let shapes: HashMap<String, Vec<usize>> = torch_shapes(net.spec()).into_iter().collect();
        let mut entries = Vec::new();
        for m in masks {
            let bad = |message: String| Error::Model {
                path: source.to_path_buf(),
                message,
            };
            let pi = net
                .params()
                .iter()
                .position(|p| p.name == m.name && p.kind == ParamKind::Weight)
                .ok_or_else(|| {
                    bad(format!(
                        "mask '{}' names no weight of {}",
                        m.name,
                        net.spec()
                    ))
                })?;
            if shapes.get(&m.name) != Some(&m.shape) {
                return Err(bad(format!(
                    "mask '{}' has shape {:?}, the weight has {:?}",
                    m.name,
                    m.shape,
                    shapes.get(&m.name)
                )));
            }
            if m.data.iter().any(|v| *v != 0.0 && *v != 1.0) {
                return Err(bad(format!(
                    "mask '{}' holds values other than 0 and 1",
                    m.name
                )));
            }
            let store = net.params()[pi].layout.from_torch(&m.data);
            entries.push((pi, store));
        }
        Ok(StoreMasks { entries })
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Zeroes the masked weights of `net`.
    pub fn apply<D: Backend>(&self, net: &mut Network<D>) {
        let params = net.params_mut();
        for (pi, mask) in &self.entries {
            let p = &mut params[*pi];
            let mut v = p.value.to_vec();
            // Assign rather than multiply: -w * 0 is -0.0, and a pruned
            // weight must be exactly +0.0 (as written by `unstructured`).
            for (x, m) in v.iter_mut().zip(mask) {
                if *m == 0.0 {
                    *x = 0.0;
                }
            }
            p.value.copy_from(&v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::host;
    use super::*;

    #[test]
    fn mask_files_round_trip_are_checked_and_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        assert_eq!(read_masks(&dir).unwrap(), None);
        let mut masks = host(&spec, |_, i| (i % 2) as f32);
        masks.retain(|t| t.name.ends_with("weight"));
        write_masks(&dir, &spec, Some(&masks)).unwrap();
        let back = read_masks(&dir).unwrap().unwrap();
        assert_eq!(back, masks);
        check_masks(&spec, &back, &dir.masks()).unwrap();
        assert_eq!(
            MaskCount::of(&back),
            MaskCount {
                pruned: 10,
                total: 20
            }
        );
        let other = ModelSpec::parse("mlp:3-5-2").unwrap();
        let err = check_masks(&other, &back, &dir.masks()).unwrap_err();
        assert!(err.to_string().contains("mask.safetensors"), "{err}");
        write_masks(&dir, &spec, None).unwrap();
        assert!(!dir.masks().exists());
    }
}

//! Unstructured L1 (magnitude) pruning: the smallest weights zeroed, per
//! tensor or with one threshold over all selected layers, and the 0/1 masks
//! that say which. The model keeps its shape; [`super::grow_masks`] builds
//! on this to add to an existing mask.

use super::selection::{check_sparsity, LayerSelection};
use super::spec_err;
use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::model::ModelSpec;

/// Unstructured L1 (magnitude) pruning of the weights (not biases) of the
/// selected layers: per tensor, or with `global` one threshold over all of
/// them. Zeroes `round(sparsity * n)` weights in place and returns one 0/1
/// mask per pruned weight (same name and shape). Weights already zero (an
/// earlier mask) are the first to go, so masks only grow.
pub fn unstructured(
    spec: &ModelSpec,
    weights: &mut [HostTensor],
    sparsity: f64,
    sel: &LayerSelection,
    global: bool,
) -> Result<Vec<HostTensor>> {
    check_sparsity(sparsity)?;
    let names: Vec<String> = (0..spec.layers().len())
        .filter(|li| sel.contains(*li))
        .flat_map(|li| spec.prunable_weights(li))
        .collect();
    let mut targets: Vec<usize> = Vec::new();
    for n in &names {
        let k = weights
            .iter()
            .position(|t| &t.name == n)
            .ok_or_else(|| spec_err(spec, format!("the weights lack '{n}'")))?;
        targets.push(k);
    }
    let mut masks: Vec<HostTensor> = targets
        .iter()
        .map(|&k| HostTensor {
            name: weights[k].name.clone(),
            shape: weights[k].shape.clone(),
            data: vec![1.0; weights[k].data.len()],
        })
        .collect();
    // (tensor, element) sorted by magnitude; ties by position for determinism.
    let groups: Vec<Vec<usize>> = if global {
        vec![(0..targets.len()).collect()]
    } else {
        (0..targets.len()).map(|t| vec![t]).collect()
    };
    for group in groups {
        let mut all: Vec<(f32, usize, usize)> = Vec::new();
        for &t in &group {
            all.extend(
                weights[targets[t]]
                    .data
                    .iter()
                    .enumerate()
                    .map(|(e, v)| (v.abs(), t, e)),
            );
        }
        let k = ((all.len() as f64) * sparsity).round() as usize;
        all.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        for &(_, t, e) in all.iter().take(k) {
            masks[t].data[e] = 0.0;
            weights[targets[t]].data[e] = 0.0;
        }
    }
    // A layer with no weight left makes the network's output a constant.
    if let Some(m) = masks.iter().find(|m| m.data.iter().all(|&v| v == 0.0)) {
        let n = m.data.len();
        let message = if global {
            // The callers say what to change (a flag, or a schedule).
            format!(
                "{sparsity} removes all {n} weights of {} (one threshold over all layers)",
                m.name
            )
        } else {
            // round(n * s) < n  <=>  s < (n - 0.5) / n
            format!(
                "{sparsity} removes all {n} weights of {}: one below {:.6} keeps at least one",
                m.name,
                (n as f64 - 0.5) / n as f64
            )
        };
        return Err(Error::Config {
            field: "sparsity".into(),
            message,
        });
    }
    Ok(masks)
}

#[cfg(test)]
mod tests {
    use super::super::accounting::count_nonzero;
    use super::super::test_util::host;
    use super::*;

    #[test]
    fn unstructured_zeroes_smallest_per_layer_and_globally() {
        let spec = ModelSpec::parse("mlp:2-2-1").unwrap();
        let base = host(&spec, |name, i| match name {
            "layers.0.weight" => [0.5, -0.1, 0.3, -0.9][i],
            "layers.2.weight" => [0.05, 2.0][i],
            _ => 1.0,
        });
        let mut w = base.clone();
        let masks = unstructured(&spec, &mut w, 0.5, &LayerSelection::All, false).unwrap();
        assert_eq!(masks[0].data, vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(masks[1].data, vec![0.0, 1.0]);
        assert_eq!(w[0].data, vec![0.5, 0.0, 0.0, -0.9]);
        assert_eq!(w[1].data, vec![1.0, 1.0], "biases untouched");
        let mut g = base.clone();
        let masks = unstructured(&spec, &mut g, 0.5, &LayerSelection::All, true).unwrap();
        // 6 weights, 3 smallest globally: 0.05, -0.1, 0.3.
        assert_eq!(masks[0].data, vec![1.0, 0.0, 0.0, 1.0]);
        assert_eq!(masks[1].data, vec![0.0, 1.0]);
        assert_eq!(count_nonzero(&g[..1]), 2);
    }

    #[test]
    fn a_layer_is_never_emptied() {
        let spec = ModelSpec::parse("mlp:2-2-1").unwrap();
        let base = host(&spec, |_, i| 1.0 + i as f32);
        // layers.2 has 2 weights: 0.75 rounds to 2 of 2.
        let mut w = base.clone();
        let e = unstructured(&spec, &mut w, 0.75, &LayerSelection::All, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("removes all 2 weights of layers.2.weight") && e.contains("0.75"),
            "{e}"
        );
        assert!(unstructured(&spec, &mut base.clone(), 0.74, &LayerSelection::All, false).is_ok());
        // One threshold over both layers empties layers.2 (its weights are smallest).
        let small = host(&spec, |name, i| match name {
            "layers.2.weight" => 0.01 * (i + 1) as f32,
            _ => 1.0 + i as f32,
        });
        let e = unstructured(&spec, &mut small.clone(), 0.4, &LayerSelection::All, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("layers.2.weight") && e.contains("one threshold"),
            "{e}"
        );
    }
}

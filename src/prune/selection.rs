//! What a pruning method touches: the selected layers ([`LayerSelection`],
//! the `layers` field of a prune config) and the fraction removed (the
//! `sparsity` field, checked by [`check_sparsity`]).

use crate::error::{Error, Result};
use crate::model::ModelSpec;

/// Which layers a pruning method touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    /// Every layer with weights (structured: every layer but the output).
    All,
    /// These layer indices (into [`ModelSpec::layers`]).
    Some(Vec<usize>),
}

impl LayerSelection {
    /// Parses a list of layer names such as `layers.0,layers.3` against a
    /// spec; errors name the `layers` field and list the valid names.
    pub fn parse(text: &str, spec: &ModelSpec) -> Result<Self> {
        let idx = spec.torch_indices();
        let valid: Vec<String> = spec
            .layers()
            .iter()
            .zip(&idx)
            .filter(|(l, _)| l.has_params())
            .map(|(_, k)| format!("layers.{k}"))
            .collect();
        let mut out = Vec::new();
        for name in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let base = name
                .strip_suffix(".weight")
                .unwrap_or(name)
                .trim_end_matches('.');
            let pos = spec
                .layers()
                .iter()
                .zip(&idx)
                .position(|(l, k)| l.has_params() && format!("layers.{k}") == base);
            match pos {
                Some(p) => out.push(p),
                None => {
                    return Err(Error::Config {
                        field: "layers".into(),
                        message: format!(
                            "'{name}' is not a layer with weights in {spec}; use some of {}",
                            valid.join(", ")
                        ),
                    })
                }
            }
        }
        if out.is_empty() {
            return Err(Error::Config {
                field: "layers".into(),
                message: format!("names no layer; use some of {}", valid.join(", ")),
            });
        }
        out.sort_unstable();
        out.dedup();
        Ok(LayerSelection::Some(out))
    }

    /// Whether layer `layer` (an index into [`ModelSpec::layers`]) is selected.
    pub fn contains(&self, layer: usize) -> bool {
        match self {
            LayerSelection::All => true,
            LayerSelection::Some(v) => v.contains(&layer),
        }
    }
}

/// Checks a fraction to remove: in [0, 1). Errors name the `sparsity` field.
pub fn check_sparsity(sparsity: f64) -> Result<()> {
    if !(sparsity.is_finite() && (0.0..1.0).contains(&sparsity)) {
        return Err(Error::Config {
            field: "sparsity".into(),
            message: format!("{sparsity} must be in [0, 1) (0.5 removes half)"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_and_sparsities_name_their_fields() {
        let spec = ModelSpec::parse("cnn:c32-p-c64-p-f128-10").unwrap();
        assert_eq!(
            LayerSelection::parse("layers.3.weight, layers.0", &spec).unwrap(),
            LayerSelection::Some(vec![0, 2])
        );
        for text in ["layers.2", ","] {
            match LayerSelection::parse(text, &spec) {
                Err(Error::Config { field, message }) => {
                    assert_eq!(field, "layers");
                    assert!(message.contains("layers.0, layers.3"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(check_sparsity(0.0).is_ok());
        for s in [1.0, -0.1, f64::NAN] {
            match check_sparsity(s) {
                Err(Error::Config { field, .. }) => assert_eq!(field, "sparsity"),
                other => panic!("{other:?}"),
            }
        }
    }
}

//! Structured L1 pruning: whole units (rows) or conv channels removed, a
//! physically smaller model with fewer FLOPs. [`pruned_spec`] narrows the
//! spec; [`structured`] is a [`transfer`](super::transfer()) to it, which
//! keeps the units with the highest L1 norm. The output layer's units (the
//! classes) are never removed, so a model without hidden dense layers,
//! convolutions or residual blocks is refused rather than "pruned" into
//! itself. A mask of an earlier unstructured pruning is
//! sliced along with the weights and stays in force.

use super::masks::zero_masked;
use super::selection::{check_sparsity, LayerSelection};
use super::transfer::{transfer_with_masks, TransferReport};
use crate::error::{Error, Result};
use crate::model::io::{torch_shapes, HostTensor};
use crate::model::{Layer, ModelSpec};

/// Whether structured pruning narrows layer `li` of `spec`: a hidden
/// dense layer, convolution or residual block (the output layer's units
/// are the classes; other layers take their width from the layer before).
fn narrows(spec: &ModelSpec, li: usize) -> bool {
    li + 1 < spec.layers().len()
        && matches!(
            spec.layers()[li],
            Layer::Dense(_) | Layer::Conv(_) | Layer::Residual(_)
        )
}

/// Refuses what structured pruning cannot remove anything from: a model
/// with no hidden units or channels (the `method` field), and chosen
/// layers that have none of their own (the `layers` field: the output
/// layer, a normalisation).
fn check_structured_layers(spec: &ModelSpec, sel: &LayerSelection) -> Result<()> {
    let layers = spec.layers();
    let last = layers.len() - 1;
    if !(0..layers.len()).any(|li| narrows(spec, li)) {
        return Err(Error::Config {
            field: "method".into(),
            message: format!(
                "l1-structured removes hidden units and channels, and {spec} has none it can \
                 remove (no hidden dense layer, convolution or residual block; the output \
                 layer's units are the classes): nothing would be pruned; use l1-unstructured \
                 to zero its weights instead"
            ),
        });
    }
    if let LayerSelection::Some(v) = sel {
        let idx = spec.torch_indices();
        if v.contains(&last) {
            return Err(Error::Config {
                field: "layers".into(),
                message: format!(
                    "layers.{} is the output layer: its units are the classes and cannot be removed",
                    idx[last]
                ),
            });
        }
        if let Some(&li) = v.iter().find(|&&li| !narrows(spec, li)) {
            let valid: Vec<String> = (0..layers.len())
                .filter(|&li| narrows(spec, li))
                .map(|li| format!("layers.{}", idx[li]))
                .collect();
            return Err(Error::Config {
                field: "layers".into(),
                message: format!(
                    "layers.{} ({}) has no units or channels of its own that l1-structured \
                     removes; use some of {}",
                    idx[li],
                    layers[li].describe(),
                    valid.join(", ")
                ),
            });
        }
    }
    Ok(())
}

/// The spec with each selected hidden layer's width (units or channels)
/// reduced to `round(width * (1 - sparsity))` (at least 1). The output
/// layer is never narrowed; a model with no hidden layer to narrow, or a
/// selection of layers that cannot be, is refused
/// (`check_structured_layers`).
pub fn pruned_spec(spec: &ModelSpec, sparsity: f64, sel: &LayerSelection) -> Result<ModelSpec> {
    check_sparsity(sparsity)?;
    check_structured_layers(spec, sel)?;
    let layers = spec.layers();
    let last = layers.len() - 1;
    let keep = |n: usize, li: usize| -> usize {
        if li != last && sel.contains(li) {
            (((n as f64) * (1.0 - sparsity)).round() as usize).clamp(1, n)
        } else {
            n
        }
    };
    let residual = spec
        .layers()
        .iter()
        .any(|l| matches!(l, Layer::Residual(_)));
    if residual && *sel != LayerSelection::All {
        return Err(Error::Config {
            field: "layers".into(),
            message: format!(
                "{spec} has residual blocks, whose stream of channels is pruned as one; prune all layers"
            ),
        });
    }
    let family = spec.as_str().split(':').next().unwrap_or("").trim();
    let text = if family == "mlp" {
        let mut dims = vec![spec.input_len().to_string()];
        for (li, l) in layers.iter().enumerate() {
            if let Layer::Dense(d) = l {
                dims.push(keep(d.outputs, li).to_string());
            }
        }
        format!("mlp:{}", dims.join("-"))
    } else if family == "resnet" {
        // Stages `WxN` narrow to `keep(W)xN`; the input, dropout and class
        // count stay.
        let body = spec.as_str().split_once(':').map_or("", |(_, b)| b);
        let toks: Vec<String> = body
            .split('-')
            .map(|t| {
                let t = t.trim();
                match t.split_once('x') {
                    Some((w, n)) if !t.starts_with('i') => match w.parse::<usize>() {
                        Ok(w) => format!("{}x{n}", keep(w, 0)),
                        Err(_) => t.to_string(),
                    },
                    _ => t.to_string(),
                }
            })
            .collect();
        format!("resnet:{}", toks.join("-"))
    } else {
        let mut toks = Vec::new();
        let (c, h, w) = spec.input_shape();
        if (c, h, w) != (1, 28, 28) {
            toks.push(format!("i{c}x{h}x{w}"));
        }
        for (li, l) in layers.iter().enumerate() {
            let s2 = |stride: usize| if stride == 2 { "s2" } else { "" };
            toks.push(match l {
                Layer::Conv(c) if c.bias && c.relu && c.kernel == 3 => {
                    format!("c{}{}", keep(c.out_channels, li), s2(c.stride))
                }
                Layer::MaxPool(_) => "p".into(),
                Layer::BatchNorm(b) if !b.relu => "bn".into(),
                Layer::Residual(b) => format!("r{}{}", keep(b.out_channels(), li), s2(b.stride())),
                Layer::GlobalAvgPool(_) => "gap".into(),
                Layer::Dropout(d) => format!("d{}", d.p),
                Layer::Dense(d) if li == last => d.outputs.to_string(),
                Layer::Dense(d) => format!("f{}", keep(d.outputs, li)),
                other => {
                    return Err(super::spec_err(
                        spec,
                        format!(
                            "structured pruning does not handle a {} yet",
                            other.describe()
                        ),
                    ))
                }
            });
        }
        format!("cnn:{}", toks.join("-"))
    };
    ModelSpec::parse(&text)
}

/// The steps in which [`sparsity_for_budget`] searches: thousandths.
const BUDGET_STEPS: u32 = 1000;

/// The smallest sparsity, in thousandths, at which [`pruned_spec`] of `spec`
/// has at most `max_params` parameters, with that spec: a parameter budget
/// (`distill prune --max-params`) turned into the sparsity that meets it
/// while keeping as many units as it can. Widths only shrink as the
/// sparsity grows, so the first sparsity that meets the budget is the
/// least. Errors name the field `max_params` when no sparsity below 1 meets
/// it (every selected layer down to one unit is still too large).
pub fn sparsity_for_budget(
    spec: &ModelSpec,
    max_params: u64,
    sel: &LayerSelection,
) -> Result<(f64, ModelSpec)> {
    let mut smallest = None;
    for step in 0..BUDGET_STEPS {
        let sparsity = f64::from(step) / f64::from(BUDGET_STEPS);
        let small = pruned_spec(spec, sparsity, sel)?;
        if small.param_count() <= max_params {
            return Ok((sparsity, small));
        }
        smallest = Some(small);
    }
    let (params, text) = smallest.map_or((spec.param_count(), spec.to_string()), |s| {
        (s.param_count(), s.to_string())
    });
    Err(Error::Config {
        field: "max_params".into(),
        message: format!(
            "{max_params} is below what structured pruning of {spec} can reach: its smallest \
             pruned spec, {text}, has {params} parameters"
        ),
    })
}

/// The result of [`structured`].
#[derive(Debug, Clone)]
pub struct StructuredPrune {
    /// The smaller spec.
    pub spec: ModelSpec,
    /// Its weights (PyTorch layout).
    pub weights: Vec<HostTensor>,
    /// The source model's masks carried to the smaller shapes, if it had any.
    pub masks: Option<Vec<HostTensor>>,
    pub report: TransferReport,
}

/// Structured L1 pruning: removes `sparsity` of the units/channels of each
/// selected hidden layer (lowest L1 norm first) and the matching inputs of
/// the next layer. A model already pruned unstructured keeps its mask: the
/// mask is sliced like the weights, so its surviving zeros stay pruned.
pub fn structured(
    spec: &ModelSpec,
    weights: &[HostTensor],
    masks: Option<&[HostTensor]>,
    sparsity: f64,
    sel: &LayerSelection,
) -> Result<StructuredPrune> {
    let small = pruned_spec(spec, sparsity, sel)?;
    if sparsity > 0.0 && small.as_str() == spec.as_str() {
        // Every selected layer keeps round(width * (1 - sparsity)) = its
        // width: the "pruned" model would be the model itself.
        return Err(Error::Config {
            field: "sparsity".into(),
            message: format!(
                "{sparsity} removes no unit or channel of {spec}: each selected layer keeps \
                 round(width x (1 - sparsity)), which is its whole width (or it is 1 wide); \
                 raise the sparsity"
            ),
        });
    }
    let mut out: Vec<HostTensor> = torch_shapes(&small)
        .into_iter()
        .map(|(name, shape)| HostTensor {
            data: vec![0.0; shape.iter().product()],
            name,
            shape,
        })
        .collect();
    let (report, masks) = transfer_with_masks(spec, weights, masks, &small, &mut out)?;
    if let Some(m) = &masks {
        zero_masked(&mut out, m);
    }
    Ok(StructuredPrune {
        spec: small,
        weights: out,
        masks,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::host;
    use super::*;

    #[test]
    fn a_parameter_budget_is_met_with_the_least_sparsity() {
        // ResNet-20 to 10k parameters: widths 3, 6, 12 (9,937 parameters);
        // a thousandth less keeps 13 channels in the last stage.
        let spec = ModelSpec::parse("resnet:16x3-32x3-64x3-10").unwrap();
        let (s, small) = sparsity_for_budget(&spec, 10_000, &LayerSelection::All).unwrap();
        assert_eq!(small.as_str(), "resnet:3x3-6x3-12x3-10");
        assert_eq!(small.param_count(), 9937);
        assert!((s - 0.805).abs() < 1e-9, "{s}");
        let before = pruned_spec(&spec, s - 0.001, &LayerSelection::All).unwrap();
        assert!(before.param_count() > 10_000, "{before}");
        // A budget the model already meets removes nothing.
        let (s, same) = sparsity_for_budget(&spec, 300_000, &LayerSelection::All).unwrap();
        assert_eq!((s, same.as_str()), (0.0, spec.as_str()));
        // A budget below one unit per layer is refused, naming the field
        // and the smallest spec there is.
        let mlp = ModelSpec::parse("mlp:784-128-10").unwrap();
        let e = sparsity_for_budget(&mlp, 100, &LayerSelection::All)
            .unwrap_err()
            .to_string();
        assert!(e.contains("max_params"), "{e}");
        assert!(
            e.contains("mlp:784-1-10") && e.contains("805 parameters"),
            "{e}"
        );
    }

    #[test]
    fn structured_pruning_slices_a_mask_like_its_weights() {
        // mlp:3-4-2 with units 1 and 3 the largest (as below); the mask
        // prunes weight (1, 2) of layer 0 and column 3 of the output row 0.
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let mut w = host(&spec, |_, i| i as f32);
        w[0].data = vec![0.1, 0.1, 0.1, 5.0, -5.0, 0.0, 0.0, 0.2, 0.0, -3.0, 3.0, 3.0];
        w[2].data = vec![0.0, 1.0, 2.0, 0.0, 10.0, 11.0, 12.0, 13.0];
        let mut m0 = vec![1.0; 12];
        m0[5] = 0.0; // unit 1, input 2
        m0[0] = 0.0; // unit 0 (removed with its unit)
        let mut m2 = vec![1.0; 8];
        m2[3] = 0.0; // output 0, hidden unit 3
        let masks = vec![
            HostTensor {
                name: "layers.0.weight".into(),
                shape: vec![4, 3],
                data: m0,
            },
            HostTensor {
                name: "layers.2.weight".into(),
                shape: vec![2, 4],
                data: m2,
            },
        ];
        let out = structured(&spec, &w, Some(&masks), 0.5, &LayerSelection::All).unwrap();
        assert_eq!(out.spec.as_str(), "mlp:3-2-2");
        let sm = out.masks.unwrap();
        // Kept units 1 and 3: rows [1, 1, 0] and [1, 1, 1].
        assert_eq!(sm[0].shape, vec![2, 3]);
        assert_eq!(sm[0].data, vec![1.0, 1.0, 0.0, 1.0, 1.0, 1.0]);
        // Output layer columns 1 and 3: row 0 = [1, 0], row 1 = [1, 1].
        assert_eq!(sm[1].shape, vec![2, 2]);
        assert_eq!(sm[1].data, vec![1.0, 0.0, 1.0, 1.0]);
        assert_eq!(out.weights[0].data, vec![5.0, -5.0, 0.0, -3.0, 3.0, 3.0]);
        assert_eq!(out.weights[2].data, vec![1.0, 0.0, 11.0, 13.0]);
        // Without a mask there is none.
        let plain = structured(&spec, &w, None, 0.5, &LayerSelection::All).unwrap();
        assert!(plain.masks.is_none());
        // A sparsity too small to remove a unit is refused (0 removes
        // nothing on purpose: a budget the model meets already).
        let e = structured(&spec, &w, None, 0.1, &LayerSelection::All)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sparsity") && e.contains("removes no unit"),
            "{e}"
        );
        let same = structured(&spec, &w, None, 0.0, &LayerSelection::All).unwrap();
        assert_eq!(same.spec.as_str(), spec.as_str());
    }

    #[test]
    fn a_model_without_hidden_units_is_refused() {
        for text in ["mlp:784-10", "cnn:gap-10", "cnn:bn-10"] {
            let spec = ModelSpec::parse(text).unwrap();
            for e in [
                pruned_spec(&spec, 0.9, &LayerSelection::All).unwrap_err(),
                sparsity_for_budget(&spec, 5, &LayerSelection::All).unwrap_err(),
                sparsity_for_budget(&spec, 1_000_000, &LayerSelection::All).unwrap_err(),
            ] {
                let Error::Config { field, message } = &e else {
                    panic!("{e:?}")
                };
                assert_eq!(field, "method", "{text}");
                assert!(
                    message.contains(&format!("{text} has none it can remove"))
                        && message.contains("l1-unstructured"),
                    "{message}"
                );
            }
        }
        // A normalisation chosen alone, or beside a convolution, is refused
        // by name; the convolution alone is pruned.
        let spec = ModelSpec::parse("cnn:c8-bn-p-10").unwrap();
        let idx = spec.torch_indices();
        let bn = format!("layers.{}", idx[1]);
        for text in [bn.clone(), format!("layers.0,{bn}")] {
            let sel = LayerSelection::parse(&text, &spec).unwrap();
            let e = pruned_spec(&spec, 0.5, &sel).unwrap_err().to_string();
            assert!(
                e.contains("invalid value for layers:")
                    && e.contains(&format!("{bn} (batchnorm"))
                    && e.contains("use some of layers.0"),
                "{e}"
            );
        }
        let sel = LayerSelection::parse("layers.0", &spec).unwrap();
        assert_eq!(
            pruned_spec(&spec, 0.5, &sel).unwrap().as_str(),
            "cnn:c4-bn-p-10"
        );
    }

    #[test]
    fn pruned_spec_halves_hidden_layers_only() {
        let spec = ModelSpec::parse("cnn:c32-p-c64-p-f128-10").unwrap();
        let all = pruned_spec(&spec, 0.5, &LayerSelection::All).unwrap();
        assert_eq!(all.as_str(), "cnn:c16-p-c32-p-f64-10");
        let some = LayerSelection::parse("layers.3", &spec).unwrap();
        assert_eq!(
            pruned_spec(&spec, 0.5, &some).unwrap().as_str(),
            "cnn:c32-p-c32-p-f128-10"
        );
        let err = LayerSelection::parse("layers.2", &spec)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("invalid value for layers:") && err.contains("layers.0, layers.3"),
            "{err}"
        );
        let out = LayerSelection::parse("layers.9", &spec).unwrap();
        let err = pruned_spec(&spec, 0.5, &out).unwrap_err().to_string();
        assert!(
            err.contains("invalid value for layers:") && err.contains("output layer"),
            "{err}"
        );
        for s in [1.0, -0.1, f64::NAN] {
            let err = pruned_spec(&spec, s, &LayerSelection::All)
                .unwrap_err()
                .to_string();
            assert!(err.contains("invalid value for sparsity:"), "{err}");
        }
        let mlp = ModelSpec::parse("mlp:784-100-10").unwrap();
        assert_eq!(
            pruned_spec(&mlp, 0.25, &LayerSelection::All)
                .unwrap()
                .as_str(),
            "mlp:784-75-10"
        );
    }
}

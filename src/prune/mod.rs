//! Compression beyond response distillation: parameter transfer (a student
//! initialised from a teacher's weights), structured and unstructured
//! magnitude pruning, and the masks that keep pruned weights at zero while a
//! pruned model is fine-tuned.
//!
//! Everything here works on host tensors in PyTorch layout
//! ([`HostTensor`], conv weights `[out, in, 3, 3]`, the first dense layer
//! after convolutions with columns in flatten order (c, h, w)), which is what
//! users see in PyTorch and keeps the slicing logic simple.
//!
//! - [`transfer`] fills a student from a teacher of the same depth and layer
//!   types: tensors of equal shape are copied; where the student is narrower
//!   the teacher's units (rows, or conv filters) with the highest L1 norm are
//!   kept, and the selection is carried to the next layer's inputs (through
//!   max-pools, and through the flatten into the first dense layer, where a
//!   kept channel keeps its whole `h*w` block of columns). Where the student
//!   is wider, the teacher's units fill the first positions and the rest keep
//!   their random initialisation.
//! - [`structured`] is `transfer` to a narrower spec made by [`pruned_spec`]:
//!   a physically smaller model with fewer FLOPs. The output layer's units
//!   (the classes) are never removed. A mask of an earlier unstructured
//!   pruning is sliced along with the weights and stays in force.
//! - [`unstructured`] zeroes the smallest-magnitude weights per tensor or
//!   globally and returns 0/1 masks.
//! - [`StoreMasks`] applies masks to a [`Network`] after every optimizer step
//!   (projected gradient descent): the forward pass then never sees a pruned
//!   weight, so the remaining weights follow exactly the trajectory they
//!   would with `w * mask` in the forward pass, on every device, and pruned
//!   weights are exactly `0.0` after every step whatever the optimizer
//!   (momentum, Adam moments and decoupled weight decay included).
//!
//! Masks are saved beside the weights as `mask.safetensors` ([`MASK_FILE`]):
//! one f32 tensor of 0s and 1s per pruned weight, with the weight's own name
//! and PyTorch shape (`layers.0.weight`); in PyTorch,
//! `torch.nn.utils.prune.custom_from_mask(layers[0], "weight", mask)` takes it
//! as is.
//!
//! ```no_run
//! use distill::model::ModelSpec;
//! use distill::model::io::read_safetensors;
//! use distill::prune::{structured, LayerSelection};
//! # fn main() -> distill::Result<()> {
//! let (_, teacher) = read_safetensors("data/teachers/fashion-cnn/model.safetensors".as_ref())?;
//! let spec = ModelSpec::parse("cnn:c32-p-c64-p-f128-10")?;
//! let small = structured(&spec, &teacher, None, 0.5, &LayerSelection::All)?;
//! assert_eq!(small.spec.as_str(), "cnn:c16-p-c32-p-f64-10");
//! # Ok(())
//! # }
//! ```

pub mod schedule;

use std::collections::HashMap;
use std::fmt;

use crate::error::{Error, Result};
use crate::model::io::{torch_shapes, HostTensor};
use crate::model::{Backend, Layer, ModelSpec, Network, ParamKind};

/// File name of the masks saved beside `model.safetensors`.
pub use crate::model::dir::MASK_FILE;

/// How one student tensor was filled by [`transfer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// Same shape: copied whole.
    Copied,
    /// Every value comes from the teacher, a subset of its units/inputs.
    Sliced,
    /// Some values from the teacher, the rest left random (wider student).
    Partial { from_teacher: usize },
    /// Nothing from the teacher.
    Random,
}

/// One line of a transfer report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferLine {
    pub name: String,
    pub teacher_shape: Vec<usize>,
    pub student_shape: Vec<usize>,
    pub fill: Fill,
    /// The teacher units kept for this layer's outputs, when it was sliced.
    pub kept_units: Option<Vec<usize>>,
}

/// What [`transfer`] did, tensor by tensor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TransferReport {
    pub lines: Vec<TransferLine>,
}

impl fmt::Display for TransferReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            let what = match &l.fill {
                Fill::Copied => "copied".to_string(),
                Fill::Sliced => format!(
                    "sliced {:?} -> {:?}{}",
                    l.teacher_shape,
                    l.student_shape,
                    match &l.kept_units {
                        Some(k) => format!(" (kept {} of {} units by L1)", k.len(), l.teacher_shape[0]),
                        None => String::new(),
                    }
                ),
                Fill::Partial { from_teacher } => format!(
                    "partly copied: {from_teacher} of {} values from the teacher {:?}, the rest left random",
                    l.student_shape.iter().product::<usize>(),
                    l.teacher_shape
                ),
                Fill::Random => "left random".to_string(),
            };
            writeln!(f, "  {:<18} {}", l.name, what)?;
        }
        Ok(())
    }
}

fn kind_name(layer: &Layer) -> &'static str {
    match layer {
        Layer::Conv { .. } => "a 3x3 convolution",
        Layer::MaxPool { .. } => "a max-pool",
        Layer::Dense { .. } => "a linear layer",
    }
}

fn spec_err(spec: &ModelSpec, message: String) -> Error {
    Error::Spec {
        spec: spec.to_string(),
        message,
    }
}

/// Indices of the `keep` rows of a `[rows, cols]` matrix with the largest L1
/// norm, in ascending order (ties: the lower index wins).
pub fn top_l1_rows(data: &[f32], rows: usize, keep: usize) -> Vec<usize> {
    let cols = data.len().checked_div(rows).unwrap_or(0);
    let mut norms: Vec<(usize, f32)> = (0..rows)
        .map(|r| {
            let n = data[r * cols..(r + 1) * cols]
                .iter()
                .map(|v| v.abs())
                .sum::<f32>();
            (r, n)
        })
        .collect();
    norms.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let mut kept: Vec<usize> = norms.into_iter().take(keep).map(|(r, _)| r).collect();
    kept.sort_unstable();
    kept
}

/// Student unit -> teacher unit: identity when equal, the top-L1 units when
/// the student is narrower, the teacher's units first when it is wider.
fn unit_map(teacher_w: &[f32], teacher_units: usize, student_units: usize) -> Vec<Option<usize>> {
    if student_units < teacher_units {
        top_l1_rows(teacher_w, teacher_units, student_units)
            .into_iter()
            .map(Some)
            .collect()
    } else {
        (0..student_units)
            .map(|u| (u < teacher_units).then_some(u))
            .collect()
    }
}

/// Fills `student` (PyTorch-layout tensors of `student_spec`, already
/// initialised, e.g. randomly) from `teacher` (tensors of `teacher_spec`).
/// Both specs must have the same input shape, depth, layer types and classes;
/// errors name the first layer that differs.
pub fn transfer(
    teacher_spec: &ModelSpec,
    teacher: &[HostTensor],
    student_spec: &ModelSpec,
    student: &mut [HostTensor],
) -> Result<TransferReport> {
    transfer_with_masks(teacher_spec, teacher, None, student_spec, student).map(|(r, _)| r)
}

/// Copies the selected outputs (`out_map`) and inputs (`cols`, `taps` values
/// each) of one layer's tensor from `src` (teacher layout, `t_cols` values
/// per unit) into `dst` (`s_cols` per unit); a bias has one value per unit.
/// Returns how many values were filled.
#[allow(clippy::too_many_arguments)]
fn copy_units(
    src: &[f32],
    dst: &mut [f32],
    out_map: &[Option<usize>],
    cols: &[Option<usize>],
    taps: usize,
    t_cols: usize,
    s_cols: usize,
    is_weight: bool,
) -> usize {
    let mut filled = 0usize;
    for (so, to) in out_map.iter().enumerate() {
        let Some(to) = *to else { continue };
        if !is_weight {
            dst[so] = src[to];
            filled += 1;
            continue;
        }
        for (sc, tc) in cols.iter().enumerate() {
            let Some(tc) = *tc else { continue };
            for tap in 0..taps {
                dst[so * s_cols + sc * taps + tap] = src[to * t_cols + tc * taps + tap];
            }
            filled += taps;
        }
    }
    filled
}

/// [`transfer`] that also carries the teacher's pruning masks (0/1 tensors
/// named after their weights) through the same unit selection: the returned
/// masks have the student's shapes and mask exactly the values whose source
/// was masked (values left random are unmasked).
pub fn transfer_with_masks(
    teacher_spec: &ModelSpec,
    teacher: &[HostTensor],
    teacher_masks: Option<&[HostTensor]>,
    student_spec: &ModelSpec,
    student: &mut [HostTensor],
) -> Result<(TransferReport, Option<Vec<HostTensor>>)> {
    let mut student_masks: Option<Vec<HostTensor>> = teacher_masks.map(|_| Vec::new());
    if teacher_spec.input_shape() != student_spec.input_shape() {
        return Err(spec_err(
            student_spec,
            format!(
                "takes {:?} inputs but the teacher {teacher_spec} takes {:?}; both must read the same images",
                student_spec.input_shape(),
                teacher_spec.input_shape()
            ),
        ));
    }
    let (tl, sl) = (teacher_spec.layers(), student_spec.layers());
    let s_idx = student_spec.torch_indices();
    for (i, s) in sl.iter().enumerate() {
        let name = format!("layers.{}", s_idx[i]);
        match tl.get(i) {
            None => {
                return Err(spec_err(
                    student_spec,
                    format!(
                        "layer {name} ({}) has no counterpart: the teacher {teacher_spec} has {} layers, the student {}; parameter transfer needs the same depth",
                        kind_name(s),
                        tl.len(),
                        sl.len()
                    ),
                ))
            }
            Some(t) if std::mem::discriminant(t) != std::mem::discriminant(s) => {
                return Err(spec_err(
                    student_spec,
                    format!(
                        "layer {name} is {} but the teacher {teacher_spec} has {} there; parameter transfer needs the same layer types",
                        kind_name(s),
                        kind_name(t)
                    ),
                ))
            }
            _ => {}
        }
    }
    if tl.len() != sl.len() {
        return Err(spec_err(
            student_spec,
            format!(
                "has {} layers but the teacher {teacher_spec} has {} (its layer layers.{} has no counterpart); parameter transfer needs the same depth",
                sl.len(),
                tl.len(),
                teacher_spec.torch_indices()[sl.len()]
            ),
        ));
    }
    if teacher_spec.num_classes() != student_spec.num_classes() {
        return Err(spec_err(
            student_spec,
            format!(
                "has {} classes but the teacher {teacher_spec} has {}",
                student_spec.num_classes(),
                teacher_spec.num_classes()
            ),
        ));
    }
    let t_by_name: HashMap<&str, &HostTensor> =
        teacher.iter().map(|t| (t.name.as_str(), t)).collect();
    let t_idx = teacher_spec.torch_indices();
    fn lookup<'a>(
        map: &HashMap<&str, &'a HostTensor>,
        spec: &ModelSpec,
        name: String,
    ) -> Result<&'a HostTensor> {
        map.get(name.as_str())
            .copied()
            .ok_or_else(|| spec_err(spec, format!("the teacher's weights lack '{name}'")))
    }
    let mut s_pos: HashMap<String, usize> = HashMap::new();
    for (k, t) in student.iter().enumerate() {
        s_pos.insert(t.name.clone(), k);
    }
    let expected: HashMap<String, Vec<usize>> = torch_shapes(student_spec).into_iter().collect();
    let mut report = TransferReport::default();
    // Student input channel (or feature) -> teacher's.
    let (c0, _, _) = student_spec.input_shape();
    let mut in_map: Vec<Option<usize>> = if student_spec.is_convolutional() {
        (0..c0).map(Some).collect()
    } else {
        (0..student_spec.input_len()).map(Some).collect()
    };
    let last = sl.len() - 1;
    for li in 0..sl.len() {
        let (t_layer, s_layer) = (tl[li], sl[li]);
        // (teacher units, student units, columns map, taps per column)
        let (tu, su, cols, taps): (usize, usize, Vec<Option<usize>>, usize) = match (
            t_layer, s_layer,
        ) {
            (
                Layer::Conv {
                    in_channels: ti,
                    out_channels: to,
                    ..
                },
                Layer::Conv {
                    in_channels: si,
                    out_channels: so,
                    ..
                },
            ) => {
                debug_assert_eq!(in_map.len(), si);
                let _ = (ti, si);
                (to, so, in_map.clone(), 9)
            }
            (
                Layer::Dense {
                    outputs: to,
                    from_image: t_img,
                    ..
                },
                Layer::Dense {
                    outputs: so,
                    inputs: s_in,
                    from_image: s_img,
                    ..
                },
            ) => {
                let cols = match (t_img, s_img) {
                    (Some((_, th, tw)), Some((sc, sh, sw))) if student_spec.is_convolutional() => {
                        if (th, tw) != (sh, sw) {
                            return Err(spec_err(
                                    student_spec,
                                    format!(
                                        "layer layers.{} flattens {sh}x{sw} images but the teacher's flattens {th}x{tw}",
                                        s_idx[li]
                                    ),
                                ));
                        }
                        let hw = sh * sw;
                        (0..sc * hw)
                            .map(|j| {
                                in_map
                                    .get(j / hw)
                                    .copied()
                                    .flatten()
                                    .map(|tc| tc * hw + j % hw)
                            })
                            .collect()
                    }
                    _ => in_map.clone(),
                };
                debug_assert_eq!(cols.len(), s_in);
                (to, so, cols, 1)
            }
            _ => continue, // max-pool: channels pass through
        };
        let tw = lookup(
            &t_by_name,
            teacher_spec,
            format!("layers.{}.weight", t_idx[li]),
        )?;
        let tb = lookup(
            &t_by_name,
            teacher_spec,
            format!("layers.{}.bias", t_idx[li]),
        )?;
        let t_cols = tw.data.len().checked_div(tu).unwrap_or(0);
        let out_map = if li == last {
            (0..su).map(Some).collect()
        } else {
            unit_map(&tw.data, tu, su)
        };
        let s_cols = cols.len() * taps;
        for (what, is_w) in [("weight", true), ("bias", false)] {
            let name = format!("layers.{}.{what}", s_idx[li]);
            let k = *s_pos.get(&name).ok_or_else(|| {
                spec_err(student_spec, format!("the student's tensors lack '{name}'"))
            })?;
            let st = &mut student[k];
            if Some(&st.shape) != expected.get(&name) {
                return Err(spec_err(
                    student_spec,
                    format!(
                        "tensor '{name}' has shape {:?}, expected {:?}",
                        st.shape,
                        expected.get(&name)
                    ),
                ));
            }
            let t = if is_w { tw } else { tb };
            let filled = copy_units(
                &t.data,
                &mut st.data,
                &out_map,
                &cols,
                taps,
                t_cols,
                s_cols,
                is_w,
            );
            let t_mask = teacher_masks.and_then(|ms| ms.iter().find(|m| is_w && m.name == t.name));
            if let (Some(tm), Some(out)) = (t_mask, student_masks.as_mut()) {
                if tm.data.len() != t.data.len() {
                    return Err(spec_err(
                        teacher_spec,
                        format!(
                            "mask '{}' has {} values, its weight {}",
                            tm.name,
                            tm.data.len(),
                            t.data.len()
                        ),
                    ));
                }
                let mut data = vec![1.0; st.data.len()];
                copy_units(
                    &tm.data, &mut data, &out_map, &cols, taps, t_cols, s_cols, true,
                );
                out.push(HostTensor {
                    name: name.clone(),
                    shape: st.shape.clone(),
                    data,
                });
            }
            let total = st.data.len();
            let fill = if filled == 0 {
                Fill::Random
            } else if filled < total {
                Fill::Partial {
                    from_teacher: filled,
                }
            } else if st.shape == t.shape {
                Fill::Copied
            } else {
                Fill::Sliced
            };
            let sliced_units = su < tu && li != last;
            report.lines.push(TransferLine {
                name,
                teacher_shape: t.shape.clone(),
                student_shape: st.shape.clone(),
                fill,
                kept_units: (is_w && sliced_units)
                    .then(|| out_map.iter().flatten().copied().collect()),
            });
        }
        in_map = out_map;
    }
    Ok((report, student_masks))
}

/// Which layers a pruning method touches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    /// Every layer with weights (structured: every layer but the output).
    All,
    /// These layer indices (into [`ModelSpec::layers`]).
    Some(Vec<usize>),
}

impl LayerSelection {
    /// Parses `--layers layers.0,layers.3` against a spec; errors name the
    /// flag and list the valid names.
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
                        field: "--layers".into(),
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
                field: "--layers".into(),
                message: format!("names no layer; use some of {}", valid.join(", ")),
            });
        }
        out.sort_unstable();
        out.dedup();
        Ok(LayerSelection::Some(out))
    }

    fn contains(&self, layer: usize) -> bool {
        match self {
            LayerSelection::All => true,
            LayerSelection::Some(v) => v.contains(&layer),
        }
    }
}

fn check_sparsity(sparsity: f64) -> Result<()> {
    if !(sparsity.is_finite() && (0.0..1.0).contains(&sparsity)) {
        return Err(Error::Config {
            field: "--sparsity".into(),
            message: format!("{sparsity} must be in [0, 1) (0.5 removes half)"),
        });
    }
    Ok(())
}

/// The spec with each selected hidden layer's width (units or channels)
/// reduced to `round(width * (1 - sparsity))` (at least 1). The output
/// layer is never narrowed.
pub fn pruned_spec(spec: &ModelSpec, sparsity: f64, sel: &LayerSelection) -> Result<ModelSpec> {
    check_sparsity(sparsity)?;
    let layers = spec.layers();
    let last = layers.len() - 1;
    if let LayerSelection::Some(v) = sel {
        if v.contains(&last) {
            return Err(Error::Config {
                field: "--layers".into(),
                message: format!(
                    "layers.{} is the output layer: its units are the classes and cannot be removed",
                    spec.torch_indices()[last]
                ),
            });
        }
    }
    let keep = |n: usize, li: usize| -> usize {
        if li != last && sel.contains(li) {
            (((n as f64) * (1.0 - sparsity)).round() as usize).clamp(1, n)
        } else {
            n
        }
    };
    let text = if spec.as_str().trim_start().starts_with("mlp") {
        let mut dims = vec![spec.input_len().to_string()];
        for (li, l) in layers.iter().enumerate() {
            if let Layer::Dense { outputs, .. } = *l {
                dims.push(keep(outputs, li).to_string());
            }
        }
        format!("mlp:{}", dims.join("-"))
    } else {
        let mut toks = Vec::new();
        let (c, h, w) = spec.input_shape();
        if (c, h, w) != (1, 28, 28) {
            toks.push(format!("i{c}x{h}x{w}"));
        }
        for (li, l) in layers.iter().enumerate() {
            toks.push(match *l {
                Layer::Conv { out_channels, .. } => format!("c{}", keep(out_channels, li)),
                Layer::MaxPool { .. } => "p".into(),
                Layer::Dense { outputs, .. } if li == last => outputs.to_string(),
                Layer::Dense { outputs, .. } => format!("f{}", keep(outputs, li)),
            });
        }
        format!("cnn:{}", toks.join("-"))
    };
    ModelSpec::parse(&text)
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
    let idx = spec.torch_indices();
    let names: Vec<String> = spec
        .layers()
        .iter()
        .enumerate()
        .filter(|(li, l)| l.has_params() && sel.contains(*li))
        .map(|(li, _)| format!("layers.{}.weight", idx[li]))
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
    Ok(masks)
}

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

/// Non-zero values among all tensors.
pub fn count_nonzero(tensors: &[HostTensor]) -> u64 {
    tensors
        .iter()
        .map(|t| t.data.iter().filter(|v| **v != 0.0).count() as u64)
        .sum()
}

/// Forward FLOPs per sample counting only non-zero weights (what a sparse
/// kernel would do); equals [`ModelSpec::flops`] for a dense model.
pub fn effective_flops(spec: &ModelSpec, tensors: &[HostTensor]) -> u64 {
    let idx = spec.torch_indices();
    spec.layers()
        .iter()
        .enumerate()
        .map(|(li, l)| {
            let name = format!("layers.{}.weight", idx[li]);
            match tensors.iter().find(|t| t.name == name) {
                Some(t) if l.has_params() && !t.data.is_empty() => {
                    let nz = t.data.iter().filter(|v| **v != 0.0).count() as u64;
                    (l.flops() as u128 * nz as u128 / t.data.len() as u128) as u64
                }
                _ => l.flops(),
            }
        })
        .sum()
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
    pub fn new<D: Backend>(
        net: &Network<D>,
        masks: &[HostTensor],
        source: &std::path::Path,
    ) -> Result<Self> {
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
            let layer = net.params()[pi].layer;
            let store = crate::model::io::from_torch(net.spec(), layer, true, &m.data);
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
    use super::*;

    fn host(spec: &ModelSpec, f: impl Fn(&str, usize) -> f32) -> Vec<HostTensor> {
        torch_shapes(spec)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                HostTensor {
                    data: (0..n).map(|i| f(&name, i)).collect(),
                    name,
                    shape,
                }
            })
            .collect()
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
    }

    #[test]
    fn mlp_slicing_keeps_highest_l1_units_and_their_columns() {
        // Teacher mlp:3-4-2: hidden unit u has weights [u0, u1, u2]; units 1
        // and 3 have the largest L1 norms.
        let t_spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let mut teacher = host(&t_spec, |_, i| i as f32);
        teacher[0].data = vec![
            0.1, 0.1, 0.1, // unit 0: 0.3
            5.0, -5.0, 1.0, // unit 1: 11
            0.0, 0.2, 0.0, // unit 2: 0.2
            -3.0, 3.0, 3.0, // unit 3: 9
        ];
        teacher[1].data = vec![10.0, 11.0, 12.0, 13.0];
        // Output layer [2, 4]: row k = [k0, k1, k2, k3].
        teacher[2].data = vec![0.0, 1.0, 2.0, 3.0, 10.0, 11.0, 12.0, 13.0];
        teacher[3].data = vec![7.0, 8.0];
        let s_spec = ModelSpec::parse("mlp:3-2-2").unwrap();
        let mut student = host(&s_spec, |_, _| -1.0);
        let report = transfer(&t_spec, &teacher, &s_spec, &mut student).unwrap();
        assert_eq!(student[0].data, vec![5.0, -5.0, 1.0, -3.0, 3.0, 3.0]);
        assert_eq!(student[1].data, vec![11.0, 13.0]);
        assert_eq!(student[2].data, vec![1.0, 3.0, 11.0, 13.0]);
        assert_eq!(student[3].data, vec![7.0, 8.0]);
        assert_eq!(report.lines[0].fill, Fill::Sliced);
        assert_eq!(report.lines[0].kept_units, Some(vec![1, 3]));
        assert_eq!(report.lines[3].fill, Fill::Copied);
    }

    #[test]
    fn conv_slicing_carries_channels_through_pool_and_flatten() {
        // Teacher: 1 input channel, 3 conv channels on 4x4, pool to 2x2,
        // linear 12 -> 2. Channel 2 and 0 are the strongest.
        let t_spec = ModelSpec::parse("cnn:i1x4x4-c3-p-2").unwrap();
        let mut teacher = host(&t_spec, |name, i| {
            if name == "layers.0.weight" {
                // channel c: all 9 taps equal to [1, 0.1, 2][c]
                [1.0, 0.1, 2.0][i / 9]
            } else {
                i as f32
            }
        });
        teacher[1].data = vec![100.0, 101.0, 102.0];
        let s_spec = ModelSpec::parse("cnn:i1x4x4-c2-p-2").unwrap();
        let mut student = host(&s_spec, |_, _| f32::NAN);
        let report = transfer(&t_spec, &teacher, &s_spec, &mut student).unwrap();
        assert_eq!(report.lines[0].kept_units, Some(vec![0, 2]));
        let mut w0 = vec![1.0; 9];
        w0.extend(vec![2.0; 9]);
        assert_eq!(student[0].data, w0);
        assert_eq!(student[1].data, vec![100.0, 102.0]);
        // Dense [2, 3*4] in (c, h, w) order: channel 0 -> columns 0..4, channel
        // 2 -> columns 8..12 of the teacher, for both output rows.
        let expected: Vec<f32> = [0.0f32, 1.0]
            .iter()
            .flat_map(|&row| {
                let base = row * 12.0;
                (0..4)
                    .map(move |p| base + p as f32)
                    .chain((8..12).map(move |p| base + p as f32))
            })
            .collect();
        assert_eq!(student[2].data, expected);
        assert_eq!(report.lines[2].fill, Fill::Sliced);
    }

    #[test]
    fn wider_student_keeps_random_rest_and_mismatches_name_the_layer() {
        let t_spec = ModelSpec::parse("mlp:2-1-2").unwrap();
        let teacher = host(&t_spec, |_, i| i as f32 + 1.0);
        let s_spec = ModelSpec::parse("mlp:2-2-2").unwrap();
        let mut student = host(&s_spec, |_, _| -9.0);
        let report = transfer(&t_spec, &teacher, &s_spec, &mut student).unwrap();
        assert_eq!(student[0].data, vec![1.0, 2.0, -9.0, -9.0]);
        assert_eq!(report.lines[0].fill, Fill::Partial { from_teacher: 2 });
        let deeper = ModelSpec::parse("mlp:2-2-2-2").unwrap();
        let mut s = host(&deeper, |_, _| 0.0);
        let err = transfer(&t_spec, &teacher, &deeper, &mut s)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layers.4") && err.contains("same depth"),
            "{err}"
        );
        let cnn_t = ModelSpec::parse("cnn:c4-p-10").unwrap();
        let cnn_s = ModelSpec::parse("cnn:c4-c4-10").unwrap();
        let t = host(&cnn_t, |_, _| 0.0);
        let mut s = host(&cnn_s, |_, _| 0.0);
        let err = transfer(&cnn_t, &t, &cnn_s, &mut s)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("layers.2") && err.contains("max-pool"),
            "{err}"
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
            err.contains("--layers") && err.contains("layers.0, layers.3"),
            "{err}"
        );
        let out = LayerSelection::parse("layers.9", &spec).unwrap();
        let err = pruned_spec(&spec, 0.5, &out).unwrap_err().to_string();
        assert!(err.contains("output layer"), "{err}");
        for s in [1.0, -0.1, f64::NAN] {
            let err = pruned_spec(&spec, s, &LayerSelection::All)
                .unwrap_err()
                .to_string();
            assert!(err.contains("--sparsity"), "{err}");
        }
        let mlp = ModelSpec::parse("mlp:784-100-10").unwrap();
        assert_eq!(
            pruned_spec(&mlp, 0.25, &LayerSelection::All)
                .unwrap()
                .as_str(),
            "mlp:784-75-10"
        );
    }

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
}

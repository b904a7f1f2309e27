//! Parameter transfer: a student filled from a teacher of the same depth and
//! layer types, and the `train --init-from` loader built on it.
//!
//! Tensors of equal shape are copied; where the student is narrower the
//! teacher's units (rows, or conv filters) with the highest L1 norm are kept
//! ([`top_l1_rows`]; a convolution that a batch norm follows is ranked by
//! that batch norm's `|gamma|`, and a residual stream once for all its
//! blocks: `slice.rs`; the report names the [`Ranking`]), and the selection
//! is carried to the next layer's inputs (through max-pools, and through
//! the flatten into the first dense layer, where a kept channel keeps its
//! whole `h*w` block of columns). Where the student is wider, the
//! teacher's units fill the first positions and the rest keep their random
//! initialisation. [`transfer_with_masks`] carries a teacher's pruning
//! masks through the same selection; structured pruning
//! ([`super::structured()`]) is a transfer to a narrower spec.
//!
//! [`init_from`] reads a model directory and fills a freshly initialised
//! student from it, keeping the source's masks: what `distill train
//! --init-from DIR` starts from.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use dfdx::prelude::Cpu;

use super::io::read_model_normalized;
use super::masks::read_masks;
use super::slice::{channel_scores, Slicer};
use super::spec_err;
use crate::data::Normalization;
use crate::error::{Error, Result};
use crate::model::io::{torch_shapes, HostTensor};
use crate::model::{Layer, ModelDir, ModelSpec, Network};

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
    pub kept: Option<Kept>,
}

/// The teacher units a sliced layer kept, and what chose them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub units: Vec<usize>,
    pub by: Ranking,
}

/// What chose the teacher units a narrower student layer keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ranking {
    /// The L1 norm of each unit's own weights.
    L1,
    /// The `|gamma|` of the batch norm that follows the convolution (summed
    /// over every batch norm that writes into a residual stream).
    BatchNormScale,
    /// Chosen elsewhere and carried here: a residual stream's channels, which
    /// every block on it keeps.
    Carried,
}

impl fmt::Display for Ranking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ranking::L1 => "by L1",
            Ranking::BatchNormScale => "by batch-norm |gamma|",
            Ranking::Carried => "carried from the residual stream",
        })
    }
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
                    match &l.kept {
                        Some(k) => format!(
                            " (kept {} of {} units {})",
                            k.units.len(),
                            l.teacher_shape[0],
                            k.by
                        ),
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
        Layer::Conv(_) => "a convolution",
        Layer::MaxPool(_) => "a max-pool",
        Layer::Dense(_) => "a linear layer",
        Layer::BatchNorm(_) => "a batch norm",
        Layer::Residual(_) => "a residual block",
        Layer::GlobalAvgPool(_) => "a global average pool",
        Layer::Dropout(_) => "a dropout",
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
pub(super) fn unit_map(
    teacher_w: &[f32],
    teacher_units: usize,
    student_units: usize,
) -> Vec<Option<usize>> {
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

/// Which teacher values one student layer takes.
pub(super) struct UnitCopy<'a> {
    /// Student unit -> teacher unit.
    pub(super) out_map: &'a [Option<usize>],
    /// Student input column -> teacher input column.
    pub(super) cols: &'a [Option<usize>],
    /// Values per (unit, column): 9 for a 3x3 convolution, 1 for a dense layer.
    pub(super) taps: usize,
    /// Values per teacher unit.
    pub(super) t_cols: usize,
    /// What chose `out_map`, where it is a layer's own choice of units.
    pub(super) ranking: Option<Ranking>,
}

impl UnitCopy<'_> {
    /// Copies the selected outputs and inputs of one layer's tensor from
    /// `src` (teacher layout) into `dst` (student layout); a bias has one
    /// value per unit. Returns how many values were filled.
    pub(super) fn copy(&self, src: &[f32], dst: &mut [f32], is_weight: bool) -> usize {
        let (taps, t_cols) = (self.taps, self.t_cols);
        let s_cols = self.cols.len() * taps;
        let mut filled = 0usize;
        for (so, to) in self.out_map.iter().enumerate() {
            let Some(to) = *to else { continue };
            if !is_weight {
                dst[so] = src[to];
                filled += 1;
                continue;
            }
            for (sc, tc) in self.cols.iter().enumerate() {
                let Some(tc) = *tc else { continue };
                for tap in 0..taps {
                    dst[so * s_cols + sc * taps + tap] = src[to * t_cols + tc * taps + tap];
                }
                filled += taps;
            }
        }
        filled
    }
}

/// Checks that a student can take a teacher's parameters: the same inputs,
/// depth, layer types and classes. Errors name the first layer that differs.
fn check_transferable(teacher_spec: &ModelSpec, student_spec: &ModelSpec) -> Result<()> {
    if teacher_spec.input_shape() != student_spec.input_shape() {
        return Err(spec_err(
            student_spec,
            format!(
                "takes {:?} inputs but the source model {teacher_spec} takes {:?}; both must read the same images",
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
                        "layer {name} ({}) has no counterpart: the source model {teacher_spec} has {} layers, this model {}; parameter transfer needs the same depth",
                        kind_name(s),
                        tl.len(),
                        sl.len()
                    ),
                ))
            }
            Some(t) if std::mem::discriminant(t) != std::mem::discriminant(s) || !same_form(t, s) => {
                return Err(spec_err(
                    student_spec,
                    format!(
                        "layer {name} is {} but the source model {teacher_spec} has {} there; parameter transfer needs the same layer types",
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
                "has {} layers but the source model {teacher_spec} has {} (its layer layers.{} has no counterpart); parameter transfer needs the same depth",
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
                "has {} classes but the source model {teacher_spec} has {}",
                student_spec.num_classes(),
                teacher_spec.num_classes()
            ),
        ));
    }
    Ok(())
}

/// Whether two layers of one kind differ only in width (kernel, stride
/// and ReLU of a convolution, a block's stride, dropout's rate the same).
fn same_form(t: &Layer, s: &Layer) -> bool {
    match (t, s) {
        (Layer::Conv(t), Layer::Conv(s)) => {
            (t.kernel, t.stride, t.bias, t.relu) == (s.kernel, s.stride, s.bias, s.relu)
        }
        (Layer::Residual(t), Layer::Residual(s)) => t.stride() == s.stride(),
        (Layer::BatchNorm(t), Layer::BatchNorm(s)) => t.relu == s.relu,
        _ => true,
    }
}

/// How a student tensor of `filled` values from the teacher was filled.
pub(super) fn fill_kind(filled: usize, student: &HostTensor, teacher: &HostTensor) -> Fill {
    if filled == 0 {
        Fill::Random
    } else if filled < student.data.len() {
        Fill::Partial {
            from_teacher: filled,
        }
    } else if student.shape == teacher.shape {
        Fill::Copied
    } else {
        Fill::Sliced
    }
}

/// The student's mask for the weight `name`: the teacher's mask `tm` of
/// `teacher` carried through `copy` (values left random are unmasked).
pub(super) fn carry_mask(
    tm: &HostTensor,
    teacher: &HostTensor,
    teacher_spec: &ModelSpec,
    copy: &UnitCopy,
    name: &str,
    shape: &[usize],
) -> Result<HostTensor> {
    if tm.data.len() != teacher.data.len() {
        return Err(spec_err(
            teacher_spec,
            format!(
                "mask '{}' has {} values, its weight {}",
                tm.name,
                tm.data.len(),
                teacher.data.len()
            ),
        ));
    }
    let mut data = vec![1.0; shape.iter().product()];
    copy.copy(&tm.data, &mut data, true);
    Ok(HostTensor {
        name: name.to_string(),
        shape: shape.to_vec(),
        data,
    })
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
    check_transferable(teacher_spec, student_spec)?;
    let (tl, sl) = (teacher_spec.layers(), student_spec.layers());
    let (t_names, s_names) = (teacher_spec.module_names(), student_spec.module_names());
    let student_pos: HashMap<String, usize> = student
        .iter()
        .enumerate()
        .map(|(k, t)| (t.name.clone(), k))
        .collect();
    let mut slicer = Slicer {
        teacher_spec,
        student_spec,
        teacher: teacher.iter().map(|t| (t.name.as_str(), t)).collect(),
        teacher_masks,
        student,
        student_pos,
        expected: torch_shapes(student_spec).into_iter().collect(),
        student_masks: teacher_masks.map(|_| Vec::new()),
        report: TransferReport::default(),
        scores: channel_scores(teacher_spec, teacher),
    };
    // Student input channel (or feature) -> teacher's.
    let (c0, _, _) = student_spec.input_shape();
    let mut in_map: Vec<Option<usize>> = if student_spec.is_convolutional() {
        (0..c0).map(Some).collect()
    } else {
        (0..student_spec.input_len()).map(Some).collect()
    };
    let last = sl.len() - 1;
    for li in 0..sl.len() {
        let names = (t_names[li].as_str(), s_names[li].as_str());
        in_map = slicer.layer(names, &tl[li], &sl[li], &in_map, li == last)?;
    }
    Ok((slicer.report, slicer.student_masks))
}

/// A student initialised from another model (`train --init-from`).
#[derive(Debug, Clone)]
pub struct InitFrom {
    /// The student spec (the given one, or the source model's), as
    /// `TrainConfig::spec` takes it.
    pub spec: String,
    /// The source model's spec.
    pub source_spec: ModelSpec,
    /// The source model's input normalisation (`None`: it has none), which
    /// a student that keeps `normalize` at `auto` keeps.
    pub normalization: Option<Normalization>,
    /// The student's initial weights, PyTorch layout.
    pub tensors: Vec<HostTensor>,
    /// The source model's pruning masks, to keep fixed while training.
    pub masks: Option<Vec<HostTensor>>,
    /// How each student tensor was filled.
    pub report: TransferReport,
}

/// The initial weights of a student started from the model in `dir` (a
/// model directory or a weights file): the student (`student`, else the
/// source's own spec) drawn as the trainer would with `seed`, then filled
/// by [`transfer`]. The source's masks, if any, come along; a masked model
/// initialises only its own spec. Errors name the `init_from` field.
pub fn init_from(dir: &Path, student: Option<&str>, seed: u64) -> Result<InitFrom> {
    let source = ModelDir::new(dir);
    let (t_spec, teacher, normalization) = read_model_normalized(&source)?;
    let (c, h, w) = t_spec.input_shape();
    let s_spec = match student {
        // A cnn student that names no input reads the source's images.
        Some(s) => ModelSpec::parse_for_input(s, [c, h, w])?,
        None => t_spec.clone(),
    };
    // The same initialisation the trainer would draw, for what stays random.
    let mut tensors = Network::new(s_spec.clone(), Cpu::default(), seed).to_host();
    let report = transfer(&t_spec, &teacher, &s_spec, &mut tensors).map_err(|e| Error::Config {
        field: "init_from".into(),
        message: format!("{}: {e}", dir.display()),
    })?;
    let masks = read_masks(&source)?;
    if masks.is_some() && s_spec != t_spec {
        return Err(Error::Config {
            field: "init_from".into(),
            message: format!(
                "{} holds a pruning mask for {t_spec}; a masked model initialises only the same spec (give no student spec)",
                dir.display()
            ),
        });
    }
    if let Some(m) = &masks {
        // Validates the masks against the spec before training starts.
        super::masks::check_masks(&t_spec, m, &source.masks())?;
    }
    Ok(InitFrom {
        spec: s_spec.to_string(),
        source_spec: t_spec,
        normalization,
        tensors,
        masks,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::super::test_util::host;
    use super::*;

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
        assert_eq!(
            report.lines[0].kept.as_ref().map(|k| k.units.clone()),
            Some(vec![1, 3])
        );
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
        assert_eq!(
            report.lines[0].kept.as_ref().map(|k| k.units.clone()),
            Some(vec![0, 2])
        );
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
    fn init_from_carries_masks_and_names_its_field() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let weights = host(&spec, |_, i| 1.0 + i as f32);
        let mut mask = host(&spec, |_, _| 1.0);
        mask.retain(|t| t.name == "layers.0.weight");
        mask[0].data[0] = 0.0;
        super::super::io::write_model(tmp.path(), &spec, &weights, None, Some(&mask)).unwrap();
        let init = init_from(tmp.path(), None, 7).unwrap();
        assert_eq!(init.spec, "mlp:3-4-2");
        assert_eq!(init.tensors, weights);
        assert_eq!(init.masks, Some(mask));
        // A masked model initialises only its own spec.
        match init_from(tmp.path(), Some("mlp:3-2-2"), 7) {
            Err(Error::Config { field, message }) => {
                assert_eq!(field, "init_from");
                assert!(message.contains("pruning mask"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        match init_from(tmp.path(), Some("mlp:3-4-4-2"), 7) {
            Err(Error::Config { field, message }) => {
                assert_eq!(field, "init_from");
                assert!(message.contains("same depth"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}

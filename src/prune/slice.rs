//! How each layer kind is sliced when a student takes a teacher's
//! parameters (`--init-from`, structured pruning): the per-layer hook of
//! [`super::transfer_with_masks`].
//!
//! Every hook gets the map of its input channels (student channel ->
//! teacher channel, `None` where a wider student has a channel the teacher
//! lacks) and returns the map of its outputs:
//! - a convolution or dense layer keeps the teacher's output units with the
//!   highest L1 norm (or the first ones, for a wider student), unless its
//!   outputs are forced (the output layer: the classes; a residual block's
//!   main path, which must line up with its shortcut);
//! - a convolution followed by batch norm is ranked by the batch norm's
//!   scale instead, `|gamma|` (batch norm undoes the filters' own scale, so
//!   their L1 norm says little; "network slimming", Liu et al. 2017). The
//!   channels of a residual stream are ranked once, where the stream
//!   starts (the stem's convolution, or a block with a projection), by the
//!   sum of `|gamma|` over every batch norm that writes into it: the head's
//!   and each identity block's `bn2` that follows ([`channel_scores`]);
//! - batch norm's weight, bias and running statistics are sliced with the
//!   channels that reach it, and its step counter is copied;
//! - pooling and dropout pass the map through;
//! - a residual block slices `conv1`'s filters by L1, `bn1` and `conv2`'s
//!   inputs with them; its output channels are those of its input for an
//!   identity shortcut (the residual stream keeps its channels), or chosen
//!   by `conv2`'s L1 with a projection, whose 1x1 convolution and batch
//!   norm are then sliced to the same channels.

use std::collections::HashMap;

use super::spec_err;
use super::transfer::{
    carry_mask, fill_kind, top_l1_rows, unit_map, Kept, Ranking, TransferLine, TransferReport,
    UnitCopy,
};
use crate::error::Result;
use crate::model::io::HostTensor;
use crate::model::layers::{BasicBlock, BatchNorm, Conv, Dense};
use crate::model::{Layer, ModelSpec};

/// Student channel -> teacher channel.
pub type ChannelMap = Vec<Option<usize>>;

/// The state of one transfer: the teacher's tensors, the student's, the
/// masks carried, the report.
pub struct Slicer<'a> {
    pub teacher_spec: &'a ModelSpec,
    pub student_spec: &'a ModelSpec,
    pub teacher: HashMap<&'a str, &'a HostTensor>,
    pub teacher_masks: Option<&'a [HostTensor]>,
    pub student: &'a mut [HostTensor],
    pub student_pos: HashMap<String, usize>,
    pub expected: HashMap<String, Vec<usize>>,
    pub student_masks: Option<Vec<HostTensor>>,
    pub report: TransferReport,
    /// Per-channel scores that rank a convolution's outputs in place of its
    /// filters' L1 norms, by the teacher module name of the convolution
    /// ([`channel_scores`]).
    pub scores: HashMap<String, Vec<f32>>,
}

/// The channel scores of `spec`'s convolutions that a batch norm follows,
/// by the convolution's module name: `|gamma|` of that batch norm, and for
/// the head of a residual stream (the stem's convolution, or a block's
/// `conv2` where the block has a projection) the sum of `|gamma|` over the
/// stream's writers (the head's batch norms and each identity block's
/// `bn2` after it, until a layer that is not a block, pool or dropout).
pub fn channel_scores(spec: &ModelSpec, tensors: &[HostTensor]) -> HashMap<String, Vec<f32>> {
    let gamma = |module: &str| -> Option<Vec<f32>> {
        let name = format!("{module}.weight");
        let t = tensors.iter().find(|t| t.name == name)?;
        Some(t.data.iter().map(|v| v.abs()).collect())
    };
    let add = |into: &mut Vec<f32>, more: Option<Vec<f32>>| match more {
        Some(m) if m.len() == into.len() => into.iter_mut().zip(m).for_each(|(a, b)| *a += b),
        _ => {}
    };
    let names = spec.module_names();
    let layers = spec.layers();
    let mut scores: HashMap<String, Vec<f32>> = HashMap::new();
    // The stream's head, while identity blocks may add to it.
    let mut head: Option<String> = None;
    for (li, layer) in layers.iter().enumerate() {
        let name = &names[li];
        match layer {
            Layer::Conv(_) => {
                head = match (layers.get(li + 1), names.get(li + 1)) {
                    (Some(Layer::BatchNorm(_)), Some(bn)) => gamma(bn).map(|g| {
                        scores.insert(name.clone(), g);
                        name.clone()
                    }),
                    _ => None,
                };
            }
            Layer::Residual(b) => {
                if let Some(g) = gamma(&format!("{name}.bn1")) {
                    scores.insert(format!("{name}.conv1"), g);
                }
                let bn2 = gamma(&format!("{name}.bn2"));
                if b.shortcut.is_some() {
                    head = bn2.map(|mut g| {
                        add(&mut g, gamma(&format!("{name}.shortcut.1")));
                        let key = format!("{name}.conv2");
                        scores.insert(key.clone(), g);
                        key
                    });
                } else if let Some(stream) = head.as_ref().and_then(|h| scores.get_mut(h)) {
                    add(stream, bn2);
                }
            }
            Layer::BatchNorm(_) | Layer::MaxPool(_) | Layer::Dropout(_) => {}
            _ => head = None,
        }
    }
    scores
}

impl Slicer<'_> {
    fn teacher_tensor(&self, name: &str) -> Result<&HostTensor> {
        self.teacher.get(name).copied().ok_or_else(|| {
            spec_err(
                self.teacher_spec,
                format!("the teacher's weights lack '{name}'"),
            )
        })
    }

    /// Copies teacher tensor `t_name` into student tensor `s_name` through
    /// `copy`; `per_unit` for vectors (one value per output unit).
    fn tensor(
        &mut self,
        t_name: &str,
        s_name: &str,
        copy: &UnitCopy<'_>,
        per_unit: bool,
        sliced: bool,
    ) -> Result<()> {
        let t = self.teacher_tensor(t_name)?.clone();
        let k = *self.student_pos.get(s_name).ok_or_else(|| {
            spec_err(
                self.student_spec,
                format!("the student's tensors lack '{s_name}'"),
            )
        })?;
        let st = &mut self.student[k];
        if Some(&st.shape) != self.expected.get(s_name) {
            return Err(spec_err(
                self.student_spec,
                format!(
                    "tensor '{s_name}' has shape {:?}, expected {:?}",
                    st.shape,
                    self.expected.get(s_name)
                ),
            ));
        }
        let filled = copy.copy(&t.data, &mut st.data, !per_unit);
        let is_weight = !per_unit;
        let t_mask = self
            .teacher_masks
            .and_then(|ms| ms.iter().find(|m| is_weight && m.name == t.name));
        if let (Some(tm), Some(out)) = (t_mask, self.student_masks.as_mut()) {
            out.push(carry_mask(
                tm,
                &t,
                self.teacher_spec,
                copy,
                s_name,
                &st.shape,
            )?);
        }
        self.report.lines.push(TransferLine {
            fill: fill_kind(filled, st, &t),
            name: s_name.to_string(),
            teacher_shape: t.shape.clone(),
            student_shape: st.shape.clone(),
            kept: copy.ranking.filter(|_| is_weight && sliced).map(|by| Kept {
                units: copy.out_map.iter().flatten().copied().collect(),
                by,
            }),
        });
        Ok(())
    }

    /// A weight (rows of `cols.len() * taps` values) and its optional bias;
    /// returns the output map (`force`d, chosen by the batch norm's scale
    /// where [`channel_scores`] has one, else by L1).
    #[allow(clippy::too_many_arguments)]
    fn affine(
        &mut self,
        (tp, sp): (&str, &str),
        (tu, su): (usize, usize),
        cols: &[Option<usize>],
        taps: usize,
        bias: bool,
        force: Option<ChannelMap>,
    ) -> Result<ChannelMap> {
        let tw = self.teacher_tensor(&format!("{tp}.weight"))?;
        let t_cols = tw.data.len().checked_div(tu).unwrap_or(0);
        let (out_map, ranking) = match (force, self.scores.get(tp)) {
            (Some(map), _) => (map, Ranking::Carried),
            (None, Some(scores)) if su < tu && scores.len() == tu => (
                top_l1_rows(scores, tu, su).into_iter().map(Some).collect(),
                Ranking::BatchNormScale,
            ),
            (None, _) => (unit_map(&tw.data, tu, su), Ranking::L1),
        };
        let sliced = su < tu;
        let copy = UnitCopy {
            out_map: &out_map,
            cols,
            taps,
            t_cols,
            ranking: Some(ranking),
        };
        self.tensor(
            &format!("{tp}.weight"),
            &format!("{sp}.weight"),
            &copy,
            false,
            sliced,
        )?;
        if bias {
            self.tensor(
                &format!("{tp}.bias"),
                &format!("{sp}.bias"),
                &copy,
                true,
                sliced,
            )?;
        }
        Ok(out_map)
    }

    fn conv(
        &mut self,
        names: (&str, &str),
        t: &Conv,
        s: &Conv,
        in_map: &[Option<usize>],
        force: Option<ChannelMap>,
    ) -> Result<ChannelMap> {
        let units = (t.out_channels, s.out_channels);
        let taps = s.kernel * s.kernel;
        self.affine(names, units, in_map, taps, s.bias, force)
    }

    fn dense(
        &mut self,
        names: (&str, &str),
        t: &Dense,
        s: &Dense,
        in_map: &[Option<usize>],
        force: Option<ChannelMap>,
    ) -> Result<ChannelMap> {
        let cols: ChannelMap = match (t.from_image, s.from_image) {
            (Some((_, th, tw)), Some((sc, sh, sw))) => {
                if (th, tw) != (sh, sw) {
                    return Err(spec_err(
                        self.student_spec,
                        format!(
                            "layer {} flattens {sh}x{sw} images but the source model's flattens {th}x{tw}",
                            names.1
                        ),
                    ));
                }
                // A kept channel keeps its whole h*w block of columns.
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
            _ => in_map.to_vec(),
        };
        self.affine(names, (t.outputs, s.outputs), &cols, 1, true, force)
    }

    /// Batch norm: every tensor sliced with the channels that reach it.
    fn batch_norm(
        &mut self,
        (tp, sp): (&str, &str),
        s: &BatchNorm,
        in_map: &[Option<usize>],
    ) -> Result<ChannelMap> {
        let copy = UnitCopy {
            out_map: in_map,
            cols: &[],
            taps: 1,
            t_cols: 1,
            ranking: None,
        };
        for what in ["weight", "bias", "running_mean", "running_var"] {
            let (t, st) = (format!("{tp}.{what}"), format!("{sp}.{what}"));
            self.tensor(&t, &st, &copy, true, false)?;
        }
        let one = [Some(0)];
        let counter = UnitCopy {
            out_map: &one,
            ..copy
        };
        self.tensor(
            &format!("{tp}.num_batches_tracked"),
            &format!("{sp}.num_batches_tracked"),
            &counter,
            true,
            false,
        )?;
        debug_assert_eq!(in_map.len(), s.channels);
        Ok(in_map.to_vec())
    }

    fn block(
        &mut self,
        (tp, sp): (&str, &str),
        t: &BasicBlock,
        s: &BasicBlock,
        in_map: &[Option<usize>],
    ) -> Result<ChannelMap> {
        let n = |a: &str| (format!("{tp}.{a}"), format!("{sp}.{a}"));
        let (c1, b1, c2, b2) = (n("conv1"), n("bn1"), n("conv2"), n("bn2"));
        let inner = self.conv((&c1.0, &c1.1), &t.conv1, &s.conv1, in_map, None)?;
        let inner = self.batch_norm((&b1.0, &b1.1), &s.bn1, &inner)?;
        let force = match (&t.shortcut, &s.shortcut) {
            (None, None) => Some(in_map.to_vec()),
            _ => None,
        };
        let out = self.conv((&c2.0, &c2.1), &t.conv2, &s.conv2, &inner, force)?;
        let out = self.batch_norm((&b2.0, &b2.1), &s.bn2, &out)?;
        match (&t.shortcut, &s.shortcut) {
            (Some((tc, _)), Some((sc, sbn))) => {
                let (pc, pb) = (n("shortcut.0"), n("shortcut.1"));
                self.conv((&pc.0, &pc.1), tc, sc, in_map, Some(out.clone()))?;
                self.batch_norm((&pb.0, &pb.1), sbn, &out)
            }
            (None, None) => Ok(out),
            _ => Err(spec_err(
                self.student_spec,
                format!(
                    "block {sp} has {} shortcut but the source model's {tp} has {}; parameter transfer needs the same kind",
                    if s.shortcut.is_some() { "a projection" } else { "an identity" },
                    if t.shortcut.is_some() { "a projection" } else { "an identity" },
                ),
            )),
        }
    }

    /// The hook: slices layer `(t, s)` named `names` given its input map;
    /// `last` forces the output layer's units (the classes).
    pub fn layer(
        &mut self,
        names: (&str, &str),
        t: &Layer,
        s: &Layer,
        in_map: &[Option<usize>],
        last: bool,
    ) -> Result<ChannelMap> {
        let force = |units: usize| last.then(|| (0..units).map(Some).collect());
        match (t, s) {
            (Layer::Conv(t), Layer::Conv(s)) => {
                self.conv(names, t, s, in_map, force(s.out_channels))
            }
            (Layer::Dense(t), Layer::Dense(s)) => self.dense(names, t, s, in_map, force(s.outputs)),
            (Layer::BatchNorm(_), Layer::BatchNorm(s)) => self.batch_norm(names, s, in_map),
            (Layer::Residual(t), Layer::Residual(s)) => self.block(names, t, s, in_map),
            // Pooling and dropout keep the channels.
            _ => Ok(in_map.to_vec()),
        }
    }
}

#[cfg(test)]
mod tests {
    use dfdx::prelude::*;

    use super::super::{structured, LayerSelection, Ranking};
    use crate::model::io::HostTensor;
    use crate::model::{ModelSpec, Network};

    /// The teacher units a transfer kept for student tensor `name`.
    fn kept_units(report: &super::super::TransferReport, name: &str) -> Option<Vec<usize>> {
        report
            .lines
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.kept.as_ref().map(|k| k.units.clone()))
    }

    /// What chose the units a transfer kept for student tensor `name`.
    fn ranked_by(report: &super::super::TransferReport, name: &str) -> Option<Ranking> {
        report
            .lines
            .iter()
            .find(|l| l.name == name)
            .and_then(|l| l.kept.as_ref().map(|k| k.by))
    }

    /// Zeroes channel `ch` of the module `prefix`: a conv's filter, or a
    /// batch norm's weight, bias and running mean (its output is then 0).
    fn kill(tensors: &mut [HostTensor], prefix: &str, channels: &[usize]) {
        for t in tensors.iter_mut() {
            let Some(what) = t.name.strip_prefix(&format!("{prefix}.")) else {
                continue;
            };
            if what == "running_var" || what == "num_batches_tracked" {
                continue;
            }
            let per = t.data.len() / t.shape[0];
            for &c in channels {
                t.data[c * per..(c + 1) * per].fill(0.0);
            }
        }
    }

    #[test]
    fn a_resnet_pruned_of_its_dead_channels_gives_the_same_logits() {
        // Half the channels of every stage, its blocks' inner channels and
        // the projection are dead (zero filters, zero batch-norm affine and
        // mean): structured pruning at 50% must remove exactly those,
        // consistently across the residual stream, the shortcut and the
        // batch norms, and keep the logits.
        let dev = Cpu::default();
        let spec = ModelSpec::parse("resnet:i1x6x6-4x1-8x1-3").unwrap();
        let net = Network::new(spec.clone(), dev.clone(), 9);
        let mut w = net.to_host();
        // Random running statistics, so slicing them matters.
        for t in w.iter_mut() {
            if t.name.ends_with("running_mean") || t.name.ends_with("running_var") {
                for (i, v) in t.data.iter_mut().enumerate() {
                    *v = 0.5 + (i % 5) as f32 * 0.1;
                }
            }
        }
        let stream = [1, 3];
        for p in ["layers.0", "layers.1", "layers.3.conv2", "layers.3.bn2"] {
            kill(&mut w, p, &stream);
        }
        kill(&mut w, "layers.3.conv1", &[0, 2]);
        kill(&mut w, "layers.3.bn1", &[0, 2]);
        kill(&mut w, "layers.4.conv1", &[1, 2, 5, 6]);
        kill(&mut w, "layers.4.bn1", &[1, 2, 5, 6]);
        for p in [
            "layers.4.conv2",
            "layers.4.bn2",
            "layers.4.shortcut.0",
            "layers.4.shortcut.1",
        ] {
            kill(&mut w, p, &[0, 3, 4, 7]);
        }
        let mut full = Network::new(spec.clone(), dev.clone(), 0);
        full.load_host(&w, "full".as_ref()).unwrap();
        let small = structured(&spec, &w, None, 0.5, &LayerSelection::All).unwrap();
        assert_eq!(small.spec.as_str(), "resnet:i1x6x6-2x1-4x1-3");
        let mut pruned = Network::new(small.spec.clone(), dev.clone(), 0);
        pruned.load_host(&small.weights, "pruned".as_ref()).unwrap();
        let x: Vec<f32> = (0..2 * 36).map(|i| ((i * 7) % 11) as f32 / 11.0).collect();
        let (a, b) = (
            full.predict(x.clone(), 2).as_vec(),
            pruned.predict(x, 2).as_vec(),
        );
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() < 1e-5, "{a:?} vs {b:?}");
        }
        // The stem kept channels 0 and 2; the projection its live outputs.
        let kept = |name: &str| kept_units(&small.report, name);
        assert_eq!(kept("layers.0.weight"), Some(vec![0, 2]));
        assert_eq!(kept("layers.4.shortcut.0.weight"), Some(vec![1, 2, 5, 6]));
        // A partial selection would split the residual stream: refused.
        let err = structured(&spec, &w, None, 0.5, &LayerSelection::Some(vec![0]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("prune all layers"), "{err}");
    }

    /// With batch norm after a convolution, channels are ranked by the
    /// batch norm's `|gamma|`, not by the filters' L1 norm; a residual
    /// stream by the sum over every batch norm that writes into it.
    #[test]
    fn batch_norm_scales_rank_the_channels_of_a_residual_stream() {
        let spec = ModelSpec::parse("resnet:i1x6x6-4x2-8x1-3").unwrap();
        let mut w = Network::new(spec.clone(), Cpu::default(), 4).to_host();
        let set = |w: &mut [HostTensor], name: &str, v: &[f32]| {
            let t = w.iter_mut().find(|t| t.name == name).unwrap();
            t.data.copy_from_slice(v);
        };
        let scale_rows = |w: &mut [HostTensor], name: &str, rows: &[usize], by: f32| {
            let t = w.iter_mut().find(|t| t.name == name).unwrap();
            let per = t.data.len() / t.shape[0];
            for &r in rows {
                t.data[r * per..(r + 1) * per]
                    .iter_mut()
                    .for_each(|v| *v *= by);
            }
        };
        // The stem's own scales are level; the identity blocks' bn2 decide
        // (channels 1 and 3), although the stem's filters 0 and 2 are the
        // largest by far.
        set(&mut w, "layers.1.weight", &[1.0, 1.0, 1.0, 1.0]);
        set(&mut w, "layers.3.bn2.weight", &[0.1, 2.0, 0.1, 2.0]);
        set(&mut w, "layers.4.bn2.weight", &[0.2, -1.0, 0.3, 1.0]);
        scale_rows(&mut w, "layers.0.weight", &[0, 2], 100.0);
        // A block's inner channels follow bn1 (0 and 3), not conv1's L1.
        set(&mut w, "layers.3.bn1.weight", &[3.0, 0.1, -0.1, -3.0]);
        scale_rows(&mut w, "layers.3.conv1.weight", &[1, 2], 100.0);
        let small = structured(&spec, &w, None, 0.5, &LayerSelection::All).unwrap();
        assert_eq!(small.spec.as_str(), "resnet:i1x6x6-2x2-4x1-3");
        let kept = |name: &str| kept_units(&small.report, name);
        assert_eq!(kept("layers.0.weight"), Some(vec![1, 3]));
        assert_eq!(kept("layers.3.conv2.weight"), Some(vec![1, 3]));
        assert_eq!(kept("layers.4.conv2.weight"), Some(vec![1, 3]));
        assert_eq!(kept("layers.3.conv1.weight"), Some(vec![0, 3]));
        // The report says what chose them: the stem and a block's inner
        // channels by their batch norms, an identity block's output by the
        // stream it writes into.
        let by = |name: &str| ranked_by(&small.report, name);
        assert_eq!(by("layers.0.weight"), Some(Ranking::BatchNormScale));
        assert_eq!(by("layers.3.conv1.weight"), Some(Ranking::BatchNormScale));
        assert_eq!(by("layers.3.conv2.weight"), Some(Ranking::Carried));
        assert_eq!(by("layers.4.conv2.weight"), Some(Ranking::Carried));
        assert_eq!(by("layers.3.bn1.weight"), None);
        let text = small.report.to_string();
        assert!(
            text.contains("layers.0.weight    sliced [4, 1, 3, 3] -> [2, 1, 3, 3] (kept 2 of 4 units by batch-norm |gamma|)"),
            "{text}"
        );
        assert!(
            text.contains("(kept 2 of 4 units carried from the residual stream)"),
            "{text}"
        );
        // Without batch norm after it, a convolution keeps its L1 ranking.
        let plain = ModelSpec::parse("cnn:i1x6x6-c4-p-3").unwrap();
        let mut pw = Network::new(plain.clone(), Cpu::default(), 4).to_host();
        scale_rows(&mut pw, "layers.0.weight", &[0, 2], 100.0);
        let small = structured(&plain, &pw, None, 0.5, &LayerSelection::All).unwrap();
        assert_eq!(
            kept_units(&small.report, "layers.0.weight"),
            Some(vec![0, 2])
        );
        assert_eq!(
            ranked_by(&small.report, "layers.0.weight"),
            Some(Ranking::L1)
        );
        assert!(small
            .report
            .to_string()
            .contains("(kept 2 of 4 units by L1)"));
    }

    #[test]
    fn a_wider_residual_student_starts_from_a_narrower_teacher() {
        // --init-from the other way: the teacher's channels fill the first
        // positions; the student's extra channels keep their initialisation.
        let dev = Cpu::default();
        let t_spec = ModelSpec::parse("cnn:i1x6x6-c4-bn-r4-r6s2-gap-d0.1-3").unwrap();
        let s_spec = ModelSpec::parse("cnn:i1x6x6-c8-bn-r8-r8s2-gap-d0.1-3").unwrap();
        let teacher = Network::new(t_spec.clone(), dev.clone(), 1).to_host();
        let mut student = Network::new(s_spec.clone(), dev.clone(), 2).to_host();
        let before = student.clone();
        let report = super::super::transfer(&t_spec, &teacher, &s_spec, &mut student).unwrap();
        let get =
            |ts: &[HostTensor], n: &str| ts.iter().find(|t| t.name == n).unwrap().data.clone();
        // bn after the first conv: channels 0..4 from the teacher, 4..8 as they were.
        let s_bn = get(&student, "layers.2.running_var");
        assert_eq!(s_bn[..4], get(&teacher, "layers.2.running_var")[..]);
        assert_eq!(s_bn[4..], get(&before, "layers.2.running_var")[4..]);
        assert!(report.to_string().contains("layers.4.shortcut.0.weight"));
    }
}

//! Pruning during a run: the masks in force, and the gradual-pruning policy
//! hook that grows them along a schedule.
//!
//! A run may start from masks (a pruned model): masked weights are zeroed
//! at the start and after every optimizer step. With a
//! [`GradualSchedule`] the masks grow after `step` optimizer steps whenever
//! an update is due, to the schedule's sparsity: one ramp over all weights
//! (`global`), or one per layer from that layer's own starting sparsity.
//! The loop calls [`Pruning::after_step`] after each step; the masks in
//! force go into checkpoints and, at the end, beside the model. Masks only
//! grow, so a schedule whose final sparsity is below the starting masks'
//! (where it would mask no weight at all) is refused when the run starts
//! ([`check_final_not_below_start`]) rather than recorded as done.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::model::{Backend, ModelSpec, Network, ParamKind};
use crate::prune::schedule::GradualSchedule;
use crate::prune::{grow_masks, LayerSelection, StoreMasks};

/// The masks of a run and the schedule that grows them.
pub struct Pruning {
    spec: ModelSpec,
    schedule: Option<GradualSchedule>,
    total_steps: u64,
    /// All weights (not biases) of the network, for the sparsity figure.
    weight_count: usize,
    /// The starting masks' zeros among all weights.
    initial_sparsity: f64,
    /// Each layer with weights: its index into the spec's layers, and the
    /// fraction of its weights masked at the start.
    layer_start: Vec<(usize, f64)>,
    /// The masks in force, PyTorch layout.
    current: Option<Vec<HostTensor>>,
    /// The same masks in the network's layout.
    store: Option<StoreMasks>,
}

impl Pruning {
    /// The pruning state at the start of a run of `total_steps` steps:
    /// the starting `masks` (read from `source`, named in errors) and the
    /// config's schedule, if any. Does not touch the weights.
    pub fn new<D: Backend>(
        net: &Network<D>,
        schedule: Option<GradualSchedule>,
        total_steps: u64,
        masks: Option<Vec<HostTensor>>,
        source: &Path,
    ) -> Result<Self> {
        let spec = net.spec().clone();
        let weight_count = net
            .params()
            .iter()
            .filter(|p| p.kind == ParamKind::Weight)
            .map(|p| p.value.len())
            .sum();
        let store = match &masks {
            Some(m) => Some(StoreMasks::new(net, m, source)?),
            None => None,
        };
        if let Some(s) = schedule.as_ref().filter(|s| !s.global) {
            check_no_layer_emptied(net, s.final_sparsity)?;
        }
        if let Some(s) = &schedule {
            check_final_not_below_start(&spec, s, masks.as_deref())?;
        }
        let layer_start = layer_start(&spec, masks.as_deref());
        let mut p = Pruning {
            spec,
            schedule,
            total_steps,
            weight_count,
            initial_sparsity: 0.0,
            layer_start,
            current: masks,
            store,
        };
        p.initial_sparsity = p.sparsity().unwrap_or(0.0);
        Ok(p)
    }

    /// Zeroes the masked weights.
    pub fn apply<D: Backend>(&self, net: &mut Network<D>) {
        if let Some(m) = &self.store {
            m.apply(net);
        }
    }

    /// Puts `masks` in force (from a checkpoint, read from `source`). The
    /// schedule still ramps from the starting masks' sparsity.
    pub fn restore<D: Backend>(
        &mut self,
        net: &Network<D>,
        masks: Vec<HostTensor>,
        source: &Path,
    ) -> Result<()> {
        self.store = Some(StoreMasks::new(net, &masks, source)?);
        self.current = Some(masks);
        Ok(())
    }

    /// The masks in force, PyTorch layout.
    pub fn masks(&self) -> Option<&[HostTensor]> {
        self.current.as_deref()
    }

    /// Fraction of all weights held at zero by the masks in force.
    pub fn sparsity(&self) -> Option<f64> {
        self.current.as_ref().map(|m| {
            let zeros: usize = m
                .iter()
                .map(|t| t.data.iter().filter(|v| **v == 0.0).count())
                .sum();
            zeros as f64 / self.weight_count.max(1) as f64
        })
    }

    /// The policy hook, called after `step` optimizer steps (and with 0
    /// before the first): raises the masks to the schedule's sparsity if an
    /// update is due, and applies them. `source` names the masks in errors.
    pub fn after_step<D: Backend>(
        &mut self,
        step: u64,
        net: &mut Network<D>,
        source: &Path,
    ) -> Result<()> {
        let Some(s) = &self.schedule else {
            return Ok(());
        };
        if !s.is_update_step(step, self.total_steps) {
            return Ok(());
        }
        let mut host = net.to_host();
        let mut new = self.current.clone();
        if s.global {
            let target = s.sparsity_at(step, self.total_steps, self.initial_sparsity);
            let final_sparsity = s.final_sparsity;
            new = Some(
                grow_masks(
                    &self.spec,
                    &mut host,
                    new.as_deref(),
                    target,
                    &LayerSelection::All,
                    true,
                )
                .map_err(|e| match e {
                    Error::Config { field, message } if field == "sparsity" => Error::Config {
                        field: "prune_schedule".into(),
                        message: format!(
                            "final={final_sparsity},global empties a layer by step {step}: \
                             sparsity {message}; lower final"
                        ),
                    },
                    other => other,
                })?,
            );
        } else {
            for &(li, start) in &self.layer_start {
                let target = s.sparsity_at(step, self.total_steps, start);
                new = Some(grow_masks(
                    &self.spec,
                    &mut host,
                    new.as_deref(),
                    target,
                    &LayerSelection::Some(vec![li]),
                    false,
                )?);
            }
        }
        let Some(new) = new else {
            return Ok(());
        };
        let m = StoreMasks::new(net, &new, source)?;
        m.apply(net);
        self.store = Some(m);
        self.current = Some(new);
        Ok(())
    }
}

/// Refuses a per-layer schedule whose final sparsity removes every weight of
/// a layer (`round(n * final) == n`): the network's output would become a
/// constant part-way through the run.
fn check_no_layer_emptied<D: Backend>(net: &Network<D>, final_sparsity: f64) -> Result<()> {
    let spec = net.spec();
    let shapes = crate::model::io::torch_shapes(spec);
    for li in 0..spec.layers().len() {
        for name in spec.prunable_weights(li) {
            let Some((_, shape)) = shapes.iter().find(|(n, _)| *n == name) else {
                continue;
            };
            let n: usize = shape.iter().product();
            if ((n as f64) * final_sparsity).round() as usize >= n {
                return Err(Error::Config {
                    field: "prune_schedule".into(),
                    message: format!(
                        "final={final_sparsity} removes all {n} weights of {name}: one below \
                         {:.6} keeps at least one (or prune with one threshold: global)",
                        (n as f64 - 0.5) / n as f64
                    ),
                });
            }
        }
    }
    Ok(())
}

/// Refuses a schedule whose final sparsity is below the sparsity of the
/// masks the run starts from, where the schedule would then mask no
/// weight: masks only grow, so the run would stay at the starting masks'
/// sparsity while its card recorded the schedule's. With `global`, one
/// threshold over all prunable weights: fewer zeros at `final` than the
/// masks hold. Per layer (each layer ramps from its own start): no weight
/// that `final` would add zeros to, and one whose mask holds more. A final
/// sparsity that keeps the masks exactly as they are (the one they were
/// made with) is accepted. Errors name the `prune_schedule` field.
pub fn check_final_not_below_start(
    spec: &ModelSpec,
    schedule: &GradualSchedule,
    masks: Option<&[HostTensor]>,
) -> Result<()> {
    let Some(masks) = masks else {
        return Ok(());
    };
    let shapes = crate::model::io::torch_shapes(spec);
    // (weights, masked) of each prunable weight.
    let counts: Vec<(usize, usize)> = (0..spec.layers().len())
        .flat_map(|li| spec.prunable_weights(li))
        .filter_map(|name| {
            let (_, shape) = shapes.iter().find(|(n, _)| *n == name)?;
            let n: usize = shape.iter().product();
            let zeros = masks
                .iter()
                .find(|m| m.name == name)
                .map_or(0, |m| m.data.iter().filter(|v| **v == 0.0).count());
            Some((n, zeros))
        })
        .collect();
    let at_final = |n: usize| ((n as f64) * schedule.final_sparsity).round() as usize;
    let (total, masked) = counts
        .iter()
        .fold((0, 0), |(t, z), &(n, zeros)| (t + n, z + zeros));
    let (below, least) = if schedule.global {
        let start = masked as f64 / total.max(1) as f64;
        (at_final(total) < masked, start)
    } else {
        let grows = counts.iter().any(|&(n, zeros)| at_final(n) > zeros);
        let above = counts.iter().any(|&(n, zeros)| at_final(n) < zeros);
        let least = counts
            .iter()
            .map(|&(n, zeros)| zeros as f64 / n.max(1) as f64)
            .fold(f64::INFINITY, f64::min);
        (!grows && above, least)
    };
    if !below {
        return Ok(());
    }
    let pct = |x: f64| format!("{:.1}%", 100.0 * x);
    let (what, raise) = if schedule.global {
        ("global", format!("of at least {}", pct(least)))
    } else {
        (
            "per layer",
            format!("of at least {}, the least of any layer's mask", pct(least)),
        )
    };
    Err(Error::Config {
        field: "prune_schedule".into(),
        message: format!(
            "final={} is below the {} of the masks the run starts from ({masked} of {total} \
             weights masked; masks only grow): the schedule ({what}) would mask no weight and \
             the model would stay as sparse as it starts; give a final sparsity {raise}, or \
             start from a model pruned less",
            crate::numeric::display_number(schedule.final_sparsity),
            pct(masked as f64 / total.max(1) as f64),
        ),
    })
}

/// The starting sparsity of each layer with weights: (index into the spec's
/// layers, fraction of its weights masked by `masks`).
fn layer_start(spec: &ModelSpec, masks: Option<&[HostTensor]>) -> Vec<(usize, f64)> {
    spec.layers()
        .iter()
        .enumerate()
        .filter(|(_, l)| l.has_params())
        .map(|(li, _)| {
            let (mut zeros, mut len) = (0usize, 0usize);
            for name in spec.prunable_weights(li) {
                if let Some(m) = masks.into_iter().flatten().find(|m| m.name == name) {
                    zeros += m.data.iter().filter(|v| **v == 0.0).count();
                    len += m.data.len();
                }
            }
            (li, zeros as f64 / len.max(1) as f64)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::Cpu;

    /// Masks of `mlp:4-3-2` (12 and 6 weights) with the first `zeros[i]`
    /// entries of each weight's mask at 0.
    fn masks(spec: &ModelSpec, zeros: [usize; 2]) -> Vec<HostTensor> {
        crate::model::io::torch_shapes(spec)
            .into_iter()
            .filter(|(name, _)| name.ends_with("weight"))
            .zip(zeros)
            .map(|((name, shape), z)| HostTensor {
                data: (0..shape.iter().product::<usize>())
                    .map(|i| if i < z { 0.0 } else { 1.0 })
                    .collect(),
                name,
                shape,
            })
            .collect()
    }

    fn schedule(text: &str) -> GradualSchedule {
        GradualSchedule::parse(text).unwrap()
    }

    #[test]
    fn a_final_sparsity_below_the_starting_masks_is_refused() {
        let spec = ModelSpec::parse("mlp:4-3-2").unwrap();
        let half = masks(&spec, [6, 3]);
        let check = |text: &str, m: &[HostTensor]| {
            check_final_not_below_start(&spec, &schedule(text), Some(m))
        };
        // 50% in every layer: below it the schedule would mask nothing.
        for text in ["final=0.2", "final=0.2,global", "final=0,global"] {
            let e = check(text, &half).unwrap_err();
            let Error::Config { field, message } = &e else {
                panic!("{e:?}")
            };
            assert_eq!(field, "prune_schedule");
            let final_text = text.split(',').next().unwrap();
            assert!(
                message.starts_with(&format!(
                    "{final_text} is below the 50.0% of the masks the run starts from \
                     (9 of 18 weights masked; masks only grow)"
                )),
                "{message}"
            );
            assert!(message.contains("of at least 50.0%"), "{message}");
        }
        // The masks' own sparsity keeps them as they are; above it they grow.
        for text in [
            "final=0.5",
            "final=0.5,global",
            "final=0.6",
            "final=0.9,global",
        ] {
            check(text, &half).unwrap();
        }
        // Per layer, each layer ramps from its own start: a layer below
        // final still grows (layers.0 at 75%, layers.2 at 0%).
        let mixed = masks(&spec, [9, 0]);
        check("final=0.5", &mixed).unwrap();
        check("final=0.5,global", &mixed).unwrap();
        let e = check("final=0.4,global", &mixed).unwrap_err().to_string();
        assert!(
            e.contains("final=0.4 is below the 50.0%") && e.contains("(global)"),
            "{e}"
        );
        // Per layer, the least sparse layer sets what final must pass.
        let e = check("final=0.2", &masks(&spec, [9, 3]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the 66.7% of the masks") && e.contains("at least 50.0%, the least"),
            "{e}"
        );
        // Without masks every schedule starts from 0.
        check_final_not_below_start(&spec, &schedule("final=0"), None).unwrap();
        // The run refuses it when it starts, before any step.
        let net = Network::new(spec.clone(), Cpu::default(), 0);
        let e = Pruning::new(
            &net,
            Some(schedule("final=0.2")),
            10,
            Some(half),
            Path::new("m/mask.safetensors"),
        )
        .err()
        .unwrap()
        .to_string();
        assert!(
            e.contains("invalid value for prune_schedule: final=0.2"),
            "{e}"
        );
    }
}

//! Gradual magnitude pruning (Zhu and Gupta, "To prune, or not to prune",
//! 2017): instead of removing a fraction of the weights at once, the target
//! sparsity rises during training along the cubic
//!
//! ```text
//! s(t) = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3      t0 <= t <= t1
//! ```
//!
//! and every `every` steps the smallest-magnitude weights are masked until
//! that sparsity is reached. The network keeps learning between mask
//! updates, so the surviving weights compensate for the removed ones a
//! little at a time; after `t1` the mask is fixed and training fine-tunes.
//!
//! `s_i` is the sparsity the run starts with (that of the starting model's
//! mask, else 0): each layer's own with per-layer thresholds (each
//! layer ramps from where it is), all weights' together with `global`.
//! Masks only grow: a weight once pruned stays at zero. The schedule is
//! written as `final=0.9,start=0,end=0.75,every=100,global` (see
//! [`GradualSchedule::parse`]); `start` and `end` are fractions of the run's
//! optimizer steps. Errors name the `prune_schedule` field of the training
//! config.

use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::numeric::display_number;

/// A gradual (cubic) magnitude-pruning schedule over one training run.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GradualSchedule {
    /// Sparsity reached at `end` and kept afterwards, in [0, 1).
    pub final_sparsity: f64,
    /// Fraction of the run's steps at which pruning starts, in [0, 1].
    pub start: f64,
    /// Fraction of the run's steps at which `final_sparsity` is reached.
    pub end: f64,
    /// Steps between mask updates (at least 1).
    pub every: u64,
    /// One magnitude threshold over all layers, instead of one per layer.
    pub global: bool,
}

/// The training config's field that holds a schedule, named in errors.
const FIELD: &str = "prune_schedule";

fn field_err(message: String) -> Error {
    Error::Config {
        field: FIELD.into(),
        message,
    }
}

impl GradualSchedule {
    /// Parses `final=S[,start=F][,end=F][,every=N][,global]` (defaults:
    /// start 0, end 0.75, every 100, per-layer thresholds).
    pub fn parse(text: &str) -> Result<Self> {
        let mut final_sparsity: Option<f64> = None;
        let mut s = GradualSchedule {
            final_sparsity: 0.0,
            start: 0.0,
            end: 0.75,
            every: 100,
            global: false,
        };
        let mut seen: Vec<&str> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (item, None),
            };
            if seen.contains(&key) {
                return Err(field_err(format!(
                    "'{key}' is given twice in '{text}'; give each item once"
                )));
            }
            seen.push(key);
            let number = |v: Option<&str>| -> Result<f64> {
                let v = v.ok_or_else(|| field_err(format!("'{key}' needs a value: {key}=...")))?;
                v.parse::<f64>()
                    .map_err(|_| field_err(format!("{key}={v}: not a number")))
            };
            match key {
                "final" => final_sparsity = Some(number(value)?),
                "start" => s.start = number(value)?,
                "end" => s.end = number(value)?,
                "every" => {
                    let v =
                        value.ok_or_else(|| field_err("'every' needs a value: every=N".into()))?;
                    s.every = v.parse::<u64>().map_err(|_| {
                        field_err(format!("every={v}: not a whole number of steps"))
                    })?;
                }
                "global" if value.is_none() => s.global = true,
                _ => {
                    return Err(field_err(format!(
                        "unknown item '{item}'; expected final=S, start=F, end=F, every=N, global \
                         (e.g. final=0.9,end=0.75,global)"
                    )))
                }
            }
        }
        s.final_sparsity = final_sparsity.ok_or_else(|| {
            field_err(format!(
                "'{text}' does not say the final sparsity: add final=S (e.g. final=0.9)"
            ))
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Checks every field; errors name the `prune_schedule` field.
    ///
    /// Numbers far from 1 are written with an exponent (1e300, not 301
    /// digits).
    pub fn validate(&self) -> Result<()> {
        if !(self.final_sparsity.is_finite() && (0.0..1.0).contains(&self.final_sparsity)) {
            return Err(field_err(format!(
                "final={} must be in [0, 1)",
                display_number(self.final_sparsity)
            )));
        }
        for (k, v) in [("start", self.start), ("end", self.end)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(field_err(format!(
                    "{k}={} must be a fraction of the run in [0, 1]",
                    display_number(v)
                )));
            }
        }
        if self.start > self.end {
            return Err(field_err(format!(
                "start={} comes after end={}",
                self.start, self.end
            )));
        }
        if self.every == 0 {
            return Err(field_err(
                "every=0: masks are updated every N >= 1 steps".into(),
            ));
        }
        Ok(())
    }

    /// The first and last step (0 = before the first update) of the ramp in
    /// a run of `total_steps`.
    pub fn step_range(&self, total_steps: u64) -> (u64, u64) {
        let at = |f: f64| ((f * total_steps as f64).round() as u64).min(total_steps);
        (at(self.start), at(self.end))
    }

    /// The target sparsity after `step` optimizer steps when the run starts
    /// at `initial`.
    pub fn sparsity_at(&self, step: u64, total_steps: u64, initial: f64) -> f64 {
        let (t0, t1) = self.step_range(total_steps);
        let target = self.final_sparsity.max(initial);
        if step < t0 {
            return initial;
        }
        if step >= t1 {
            return target;
        }
        let progress = (step - t0) as f64 / (t1 - t0) as f64;
        target + (initial - target) * (1.0 - progress).powi(3)
    }

    /// Whether the mask is updated after `step` optimizer steps: every
    /// `every` steps from the ramp's start, and at its end.
    pub fn is_update_step(&self, step: u64, total_steps: u64) -> bool {
        let (t0, t1) = self.step_range(total_steps);
        step >= t0 && step <= t1 && ((step - t0).is_multiple_of(self.every) || step == t1)
    }
}

/// The fraction of zeros in a set of masks (0 for none).
pub fn mask_sparsity(masks: &[HostTensor]) -> f64 {
    let total: usize = masks.iter().map(|m| m.data.len()).sum();
    if total == 0 {
        return 0.0;
    }
    let zeros = masks
        .iter()
        .flat_map(|m| &m.data)
        .filter(|v| **v == 0.0)
        .count();
    zeros as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::io::torch_shapes;
    use crate::model::ModelSpec;
    use crate::prune::{grow_masks, LayerSelection};

    #[test]
    fn parses_defaults_and_every_key() {
        let s = GradualSchedule::parse("final=0.9").unwrap();
        assert_eq!(
            s,
            GradualSchedule {
                final_sparsity: 0.9,
                start: 0.0,
                end: 0.75,
                every: 100,
                global: false
            }
        );
        let s = GradualSchedule::parse(" final=0.5 , start=0.1,end=0.5,every=7,global").unwrap();
        assert_eq!((s.start, s.end, s.every, s.global), (0.1, 0.5, 7, true));
    }

    #[test]
    fn bad_schedules_name_the_field_and_the_item() {
        for (text, needle) in [
            ("start=0", "final=S"),
            ("final=1", "final=1 must be in [0, 1)"),
            ("final=-0.1", "[0, 1)"),
            ("final=nan", "[0, 1)"),
            ("final=0.5,start=0.6,end=0.5", "comes after"),
            ("final=0.5,end=1.5", "end=1.5"),
            ("final=0.5,end=1e300", "end=1e300 must be"),
            ("final=2e200", "final=2e200 must be"),
            ("final=0.5,every=0", "every=0"),
            ("final=0.5,every=1.5", "whole number"),
            ("final=0.5,speed=3", "unknown item 'speed=3'"),
            ("final=abc", "not a number"),
            ("final", "needs a value"),
            ("final=0.5,global=1", "unknown item"),
            ("final=0.5,final=0.7", "'final' is given twice"),
            ("global,final=0.5,global", "'global' is given twice"),
        ] {
            let e = GradualSchedule::parse(text).unwrap_err().to_string();
            assert!(
                e.contains("invalid value for prune_schedule:"),
                "{text}: {e}"
            );
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn cubic_ramp_from_initial_to_final() {
        let s = GradualSchedule::parse("final=0.8,start=0.2,end=0.6,every=10").unwrap();
        let total = 100;
        assert_eq!(s.step_range(total), (20, 60));
        assert_eq!(s.sparsity_at(0, total, 0.0), 0.0);
        assert_eq!(s.sparsity_at(20, total, 0.0), 0.0);
        // Halfway: 0.8 * (1 - 0.5^3) = 0.7.
        assert!((s.sparsity_at(40, total, 0.0) - 0.7).abs() < 1e-12);
        assert_eq!(s.sparsity_at(60, total, 0.0), 0.8);
        assert_eq!(s.sparsity_at(100, total, 0.0), 0.8);
        // Monotone, and starting from an earlier mask's sparsity.
        let mut last = 0.3;
        for t in 0..=total {
            let x = s.sparsity_at(t, total, 0.3);
            assert!(x >= last - 1e-12 && x <= 0.8);
            last = x;
        }
        // A start sparser than the target never lowers it.
        assert_eq!(s.sparsity_at(60, total, 0.9), 0.9);
        let updates: Vec<u64> = (0..=total)
            .filter(|&t| s.is_update_step(t, total))
            .collect();
        assert_eq!(updates, vec![20, 30, 40, 50, 60]);
        let odd = GradualSchedule::parse("final=0.8,start=0,end=0.55,every=20").unwrap();
        let updates: Vec<u64> = (0..=total)
            .filter(|&t| odd.is_update_step(t, total))
            .collect();
        assert_eq!(updates, vec![0, 20, 40, 55]);
        // start == end: one-shot pruning at that step.
        let once = GradualSchedule::parse("final=0.5,start=0.5,end=0.5").unwrap();
        let updates: Vec<u64> = (0..=total)
            .filter(|&t| once.is_update_step(t, total))
            .collect();
        assert_eq!(updates, vec![50]);
        assert_eq!(once.sparsity_at(50, total, 0.0), 0.5);
    }

    #[test]
    fn mask_updates_only_grow_and_zero_the_weights() {
        let spec = ModelSpec::parse("mlp:4-3-2").unwrap();
        let mut w: Vec<HostTensor> = torch_shapes(&spec)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                HostTensor {
                    data: (0..n).map(|i| 1.0 + i as f32).collect(),
                    name,
                    shape,
                }
            })
            .collect();
        // Mask the largest weight of layer 0 first: it must stay masked.
        let mut first = w.clone();
        let m1 = grow_masks(&spec, &mut first, None, 0.25, &LayerSelection::All, false).unwrap();
        // Per layer: round(12 * 0.25) = 3 and round(6 * 0.25) = 2 zeros.
        assert_eq!(mask_sparsity(&m1), 5.0 / 18.0);
        let mut cur = m1.clone();
        cur[0].data[11] = 0.0;
        let m2 = grow_masks(&spec, &mut w, Some(&cur), 0.5, &LayerSelection::All, false).unwrap();
        assert_eq!(m2[0].data[11], 0.0, "an earlier mask stays in force");
        for (m, t) in m2
            .iter()
            .zip(w.iter().filter(|t| t.name.ends_with("weight")))
        {
            for (keep, x) in m.data.iter().zip(&t.data) {
                assert_eq!(*keep == 0.0, *x == 0.0);
            }
        }
        for (a, b) in cur.iter().zip(&m2) {
            for (x, y) in a.data.iter().zip(&b.data) {
                assert!(*y <= *x, "masks only grow");
            }
        }
        // Layer 0: 12 weights at 0.5 -> 6 zeros (11 was already one);
        // layer 1: 6 weights -> 3 zeros.
        assert_eq!(m2[0].data.iter().filter(|v| **v == 0.0).count(), 6);
        assert_eq!(m2[1].data.iter().filter(|v| **v == 0.0).count(), 3);
    }
}

//! An exponential moving average of a run's weights (`train --ema DECAY`).
//!
//! After every optimizer step each parameter's average moves toward the
//! parameter's new value, `avg = d * avg + (1 - d) * w`, with
//! `d = min(DECAY, (1 + n) / (10 + n))` after `n` earlier updates: the
//! warm-up of TensorFlow's `ExponentialMovingAverage`, so that a short run's
//! average is not held near its random start. Batch norm's running
//! statistics are averaged the same way (as timm's `ModelEmaV2` averages
//! every tensor of the state dict). The average starts equal to the network
//! as training starts: random, or the given weights.
//!
//! The optimizer keeps stepping the live weights; the run evaluates,
//! snapshots and writes the averaged ones ([`WeightAverage::network`]). The
//! masks in force are applied to the averaged weights too, so a pruned
//! weight stays exactly zero. The parameters' averages live where the
//! parameters do and are updated there (dfdx's `axpy`: on a GPU no weight
//! leaves the device at a step); batch norm's statistics are host vectors
//! already, and so are their averages. A checkpoint holds the averages and the
//! number of updates ([`WeightAverage::to_host`], [`WeightAverage::restore`]),
//! so a resumed run ends with the same averaged weights as an uninterrupted
//! one.

use std::collections::HashMap;

use dfdx::prelude::HasShape;

use crate::error::{Error, Result};
use crate::model::io::HostTensor;
use crate::model::network::ParamValue;
use crate::model::{Backend, Network};

use super::pruning::Pruning;

/// Prefix of the averaged tensors' names in a checkpoint.
pub const CHECKPOINT_PREFIX: &str = "ema.";

/// Updates after which the warm-up no longer caps the decay, for a decay
/// `d`: `(1 + n) / (10 + n) >= d` from `n = (10 d - 1) / (1 - d)` on.
fn warm_decay(decay: f64, earlier_updates: u64) -> f64 {
    let n = earlier_updates as f64;
    decay.min((1.0 + n) / (10.0 + n))
}

/// The running average of every parameter and buffer of a network, in the
/// network's own layout and order: the parameters' on the network's device,
/// the buffers' on the host.
#[derive(Debug, Clone)]
pub struct WeightAverage<D: Backend> {
    decay: f64,
    updates: u64,
    params: Vec<ParamValue<D>>,
    buffers: Vec<Vec<f32>>,
}

impl<D: Backend> WeightAverage<D> {
    /// An average with decay `decay` (in (0, 1)), starting at `net`'s
    /// values.
    pub fn new(decay: f64, net: &Network<D>) -> Self {
        WeightAverage {
            decay,
            updates: 0,
            // Fresh tensors, not clones: a clone would share the live
            // parameter's tensor id, by which gradients are keyed.
            params: net
                .params()
                .iter()
                .map(|p| fresh_copy(net.device(), &p.value))
                .collect(),
            buffers: net.buffers().iter().map(|b| b.get()).collect(),
        }
    }

    /// How many steps the average has taken in.
    pub fn updates(&self) -> u64 {
        self.updates
    }

    /// The decay the next update uses.
    pub fn next_decay(&self) -> f64 {
        warm_decay(self.decay, self.updates)
    }

    /// Takes in `net`'s values after an optimizer step. Fails where the
    /// device reports an error for the update (a CUDA kernel that cannot
    /// launch), naming the parameter.
    pub fn update(&mut self, net: &Network<D>) -> Result<()> {
        let d = self.next_decay() as f32;
        // The factors rounded to f32 first, as the host-side average had
        // them (the CPU's averages are unchanged by the move to the device;
        // a GPU's may differ in the last bit where its kernel fuses the
        // multiply and add).
        let (keep, take) = (f64::from(d), f64::from(1.0 - d));
        for (avg, p) in self.params.iter_mut().zip(net.params()) {
            let done = match (avg, &p.value) {
                (ParamValue::Matrix(a), ParamValue::Matrix(w)) => a.try_axpy(keep, w, take),
                (ParamValue::Vector(a), ParamValue::Vector(w)) => a.try_axpy(keep, w, take),
                // `new` copied the network's own parameters, kind for kind.
                _ => unreachable!("an averaged parameter changed kind"),
            };
            done.map_err(|e| Error::Training {
                context: format!("the moving average of {}", p.name),
                message: format!("the device failed: {e:?}"),
            })?;
        }
        for (avg, b) in self.buffers.iter_mut().zip(net.buffers()) {
            for (a, w) in avg.iter_mut().zip(b.get()) {
                *a = d * *a + (1.0 - d) * w;
            }
        }
        self.updates += 1;
        Ok(())
    }

    /// A network of `live`'s spec, device and input normalisation holding
    /// the averaged values, with `pruning`'s masks applied.
    pub fn network(&self, live: &Network<D>, pruning: &Pruning) -> Network<D> {
        let mut net = Network::new(live.spec().clone(), live.device().clone(), 0);
        // The live network's normalisation already fits its spec.
        let _ = net.set_normalization(live.normalization().cloned());
        // Copied, not cloned: a clone would carry the tensor ids of the live
        // network's parameters (gradients are keyed by them). Once an
        // evaluation or a snapshot, so the trip through the host is cheap.
        for (p, avg) in net.params_mut().iter_mut().zip(&self.params) {
            p.value.copy_from(&avg.to_vec());
        }
        for (b, avg) in net.buffers().iter().zip(&self.buffers) {
            b.set(avg.clone());
        }
        pruning.apply(&mut net);
        net
    }

    /// The averages as checkpoint tensors, named `ema.` and the parameter's
    /// or buffer's name, in the network's own layout.
    pub fn to_host(&self, net: &Network<D>) -> Vec<HostTensor> {
        let params = net
            .params()
            .iter()
            .zip(&self.params)
            .map(|(p, avg)| HostTensor {
                name: format!("{CHECKPOINT_PREFIX}{}", p.name),
                shape: p.value.dims(),
                data: avg.to_vec(),
            });
        let buffers = net
            .buffers()
            .iter()
            .zip(&self.buffers)
            .map(|(b, avg)| HostTensor {
                name: format!("{CHECKPOINT_PREFIX}{}", b.name),
                shape: b.shape.clone(),
                data: avg.clone(),
            });
        params.chain(buffers).collect()
    }

    /// Takes the averages and the update count back from a checkpoint's
    /// tensors; the error says which tensor is missing or mis-sized.
    pub fn restore(
        &mut self,
        net: &Network<D>,
        tensors: &HashMap<&str, &HostTensor>,
        updates: u64,
    ) -> std::result::Result<(), String> {
        let names = net
            .params()
            .iter()
            .map(|p| &p.name)
            .chain(net.buffers().iter().map(|b| &b.name));
        let mut slots: Vec<Slot<'_, D>> = self.params.iter_mut().map(Slot::Param).collect();
        slots.extend(self.buffers.iter_mut().map(Slot::Buffer));
        // Every tensor is checked before any is taken: a bad checkpoint
        // leaves the average as it was.
        let mut found = Vec::with_capacity(slots.len());
        for (name, slot) in names.zip(&slots) {
            let key = format!("{CHECKPOINT_PREFIX}{name}");
            let len = slot.len();
            match tensors.get(key.as_str()) {
                Some(t) if t.data.len() == len => found.push(*t),
                Some(t) => {
                    return Err(format!(
                        "tensor '{key}' has {} values, expected {len}",
                        t.data.len(),
                    ))
                }
                None => {
                    return Err(format!(
                        "tensor '{key}' is missing (the run averages its weights, `ema`)"
                    ))
                }
            }
        }
        for (slot, t) in slots.into_iter().zip(found) {
            match slot {
                Slot::Param(avg) => avg.copy_from(&t.data),
                Slot::Buffer(avg) => avg.copy_from_slice(&t.data),
            }
        }
        self.updates = updates;
        Ok(())
    }
}

/// A tensor of its own (its own id and storage) on `device`, holding
/// `value`'s values.
fn fresh_copy<D: Backend>(device: &D, value: &ParamValue<D>) -> ParamValue<D> {
    match value {
        ParamValue::Matrix(t) => ParamValue::Matrix(device.tensor_from_vec(t.as_vec(), *t.shape())),
        ParamValue::Vector(t) => ParamValue::Vector(device.tensor_from_vec(t.as_vec(), *t.shape())),
    }
}

/// One averaged tensor, as a checkpoint restores it.
enum Slot<'a, D: Backend> {
    Param(&'a mut ParamValue<D>),
    Buffer(&'a mut Vec<f32>),
}

impl<D: Backend> Slot<'_, D> {
    fn len(&self) -> usize {
        match self {
            Slot::Param(p) => p.len(),
            Slot::Buffer(b) => b.len(),
        }
    }
}

/// Checks an `ema` decay: strictly between 0 and 1.
pub fn check_decay(decay: f64) -> Result<()> {
    if decay.is_finite() && decay > 0.0 && decay < 1.0 {
        return Ok(());
    }
    Err(Error::Config {
        field: "ema".into(),
        message: format!(
            "{decay} is not a decay: give one strictly between 0 and 1 (0.999 averages over \
             about the last 1,000 steps)"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use dfdx::prelude::Cpu;

    fn net(seed: u64) -> Network<Cpu> {
        Network::new(ModelSpec::parse("mlp:4-3-2").unwrap(), Cpu::default(), seed)
    }

    fn no_masks(net: &Network<Cpu>) -> Pruning {
        Pruning::new(net, None, 10, None, std::path::Path::new("masks")).unwrap()
    }

    #[test]
    fn masked_weights_stay_exactly_zero_in_the_average() {
        let start = net(1);
        let mut avg = WeightAverage::new(0.9, &start);
        avg.update(&net(2)).unwrap();
        let masks: Vec<HostTensor> = crate::model::io::torch_shapes(start.spec())
            .into_iter()
            .filter(|(name, _)| name.ends_with("weight"))
            .map(|(name, shape)| HostTensor {
                data: (0..shape.iter().product::<usize>())
                    .map(|i| (i % 2) as f32)
                    .collect(),
                name,
                shape,
            })
            .collect();
        let pruning =
            Pruning::new(&start, None, 10, Some(masks), std::path::Path::new("m")).unwrap();
        let out = avg.network(&start, &pruning);
        let zeros: usize = out
            .params()
            .iter()
            .map(|p| p.value.to_vec().iter().filter(|v| v.to_bits() == 0).count())
            .sum();
        assert_eq!(
            zeros,
            pruning
                .masks()
                .unwrap()
                .iter()
                .map(|m| m.data.len() / 2)
                .sum::<usize>()
        );
    }

    #[test]
    fn the_warm_up_caps_the_decay_and_then_lets_it_be() {
        assert!((warm_decay(0.999, 0) - 0.1).abs() < 1e-12);
        assert!((warm_decay(0.999, 10) - 11.0 / 20.0).abs() < 1e-12);
        assert_eq!(warm_decay(0.5, 100), 0.5);
        // From n = (10 d - 1) / (1 - d) on, the decay itself.
        assert_eq!(warm_decay(0.9, 80), 0.9);
        assert!(warm_decay(0.9, 79) < 0.9);
    }

    #[test]
    fn updates_blend_toward_the_live_weights() {
        let start = net(1);
        let moved = net(2);
        let mut avg = WeightAverage::new(0.5, &start);
        let d = avg.next_decay() as f32;
        avg.update(&moved).unwrap();
        assert_eq!(avg.updates(), 1);
        let out = avg.network(&moved, &no_masks(&moved));
        for ((a, s), m) in out.params().iter().zip(start.params()).zip(moved.params()) {
            let (a, s, m) = (a.value.to_vec(), s.value.to_vec(), m.value.to_vec());
            for i in 0..a.len() {
                let want = d * s[i] + (1.0 - d) * m[i];
                assert!((a[i] - want).abs() < 1e-7, "{} vs {want}", a[i]);
            }
        }
        // Many updates toward the same weights converge on them.
        for _ in 0..200 {
            avg.update(&moved).unwrap();
        }
        let out = avg.network(&moved, &no_masks(&moved));
        for (a, m) in out.params().iter().zip(moved.params()) {
            for (x, y) in a.value.to_vec().iter().zip(m.value.to_vec()) {
                assert!((x - y).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn checkpoint_tensors_round_trip_and_bad_ones_are_named() {
        let start = net(1);
        let mut avg = WeightAverage::new(0.9, &start);
        avg.update(&net(2)).unwrap();
        avg.update(&net(3)).unwrap();
        let saved = avg.to_host(&start);
        let by_name: HashMap<&str, &HostTensor> =
            saved.iter().map(|t| (t.name.as_str(), t)).collect();
        let mut back = WeightAverage::new(0.9, &start);
        back.restore(&start, &by_name, avg.updates()).unwrap();
        assert_eq!(back.updates(), 2);
        let values = |a: &WeightAverage<Cpu>| -> Vec<Vec<f32>> {
            a.params.iter().map(|p| p.to_vec()).collect()
        };
        assert_eq!(values(&back), values(&avg));
        assert_eq!(back.buffers, avg.buffers);
        let mut partial = by_name.clone();
        partial.remove("ema.layers.0.weight");
        let mut other = WeightAverage::new(0.9, &net(4));
        let before = values(&other);
        let err = other.restore(&start, &partial, 2).unwrap_err();
        assert!(err.contains("'ema.layers.0.weight' is missing"), "{err}");
        assert_eq!(values(&other), before);
        // The last tensor mis-sized: refused whole, with the earlier,
        // well-formed tensors not taken either.
        let last = format!("ema.{}", start.params().last().unwrap().name);
        let short = HostTensor {
            name: last.clone(),
            shape: vec![1],
            data: vec![0.0],
        };
        let mut bad = by_name.clone();
        bad.insert(last.as_str(), &short);
        let err = other.restore(&start, &bad, 2).unwrap_err();
        assert!(err.contains(&format!("'{last}' has 1 values")), "{err}");
        assert_eq!(values(&other), before);
        assert_eq!(other.updates(), 0);
    }

    #[test]
    fn decays_outside_zero_to_one_name_the_field() {
        for bad in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let err = check_decay(bad).unwrap_err().to_string();
            assert!(err.contains("ema"), "{err}");
        }
        check_decay(0.999).unwrap();
    }
}

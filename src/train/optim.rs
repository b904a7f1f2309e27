//! Optimizers over the network's parameter store: SGD (with momentum), Adam
//! and AdamW, with a constant or cosine learning-rate schedule.
//!
//! The update itself is dfdx's fused kernel (`AdamConfig::try_update`,
//! `SgdConfig::try_update`), which works on any shape once given the
//! gradient buffer. Optimizer state (momenta) lives in [`Gradients`] maps
//! keyed by the parameter tensors, one map per state slot, so that it can be
//! read back as tensors for checkpoints ([`Optimizer::state_to_host`]) and
//! restored exactly ([`Optimizer::restore_state`]).

use std::any::Any;
use std::fmt;
use std::str::FromStr;

use dfdx::optim::{AdamConfig, Momentum, SgdConfig, WeightDecay};
use dfdx::prelude::*;
use dfdx::tensor::{CpuError, Gradients};
use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::model::{Backend, Network, ParamValue};

/// Which update rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// SGD with classic momentum; weight decay as L2.
    Sgd,
    /// Adam; weight decay as L2 (PyTorch `Adam(weight_decay=...)`).
    Adam,
    /// Adam with decoupled weight decay (PyTorch `AdamW`).
    AdamW,
}

impl FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sgd" => Ok(Self::Sgd),
            "adam" => Ok(Self::Adam),
            "adamw" => Ok(Self::AdamW),
            other => Err(Error::Config {
                field: "optimizer.kind".into(),
                message: format!("'{other}' is not one of sgd, adam, adamw"),
            }),
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sgd => "sgd",
            Self::Adam => "adam",
            Self::AdamW => "adamw",
        })
    }
}

/// Learning-rate schedule over the whole run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Schedule {
    Constant,
    /// Cosine decay from the base rate to zero over all steps.
    Cosine,
}

impl FromStr for Schedule {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Self::Constant),
            "cosine" => Ok(Self::Cosine),
            other => Err(Error::Config {
                field: "optimizer.schedule".into(),
                message: format!("'{other}' is not one of constant, cosine"),
            }),
        }
    }
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Constant => "constant",
            Self::Cosine => "cosine",
        })
    }
}

/// Hyperparameters of the optimizer.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct OptimizerConfig {
    pub kind: OptimizerKind,
    pub lr: f64,
    pub weight_decay: f64,
    /// SGD momentum (ignored by Adam).
    pub momentum: f64,
    pub schedule: Schedule,
}

impl Default for OptimizerConfig {
    /// Adam at learning rate 1e-3 with a cosine schedule and no weight
    /// decay (momentum 0.9 applies to SGD only).
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adam,
            lr: 1e-3,
            weight_decay: 0.0,
            momentum: 0.9,
            schedule: Schedule::Cosine,
        }
    }
}

/// The smallest learning rate a run takes.
pub const MIN_LR: f64 = 1e-12;

impl OptimizerConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: String| {
            Err(Error::Config {
                field: field.into(),
                message,
            })
        };
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(
                "optimizer.lr",
                format!("{} must be a positive number", self.lr),
            );
        }
        // An f32 weight moves by about lr a step; far below its rounding
        // step it never moves, and the run would train nothing.
        if self.lr < MIN_LR {
            return bad(
                "optimizer.lr",
                format!(
                    "{:e} is below {MIN_LR:e}: no f32 weight would change",
                    self.lr
                ),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "optimizer.weight_decay",
                format!("{} must be zero or positive", self.weight_decay),
            );
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(
                "optimizer.momentum",
                format!("{} must be in [0, 1)", self.momentum),
            );
        }
        Ok(())
    }

    /// The learning rate at `step` (0-based) of `total` steps.
    pub fn lr_at(&self, step: u64, total: u64) -> f64 {
        match self.schedule {
            Schedule::Constant => self.lr,
            Schedule::Cosine => {
                let t = (step as f64 / total.max(1) as f64).min(1.0);
                self.lr * 0.5 * (1.0 + (std::f64::consts::PI * t).cos())
            }
        }
    }
}

/// Optimizer state for one network.
pub struct Optimizer<D: Backend> {
    cfg: OptimizerConfig,
    /// Updates applied so far.
    step: u64,
    total_steps: u64,
    /// First moment (Adam) or velocity (SGD), keyed by parameter.
    slot1: Gradients<f32, D>,
    /// Second moment (Adam).
    slot2: Gradients<f32, D>,
}

impl<D: Backend> Optimizer<D> {
    /// A fresh optimizer for a run of `total_steps` updates.
    pub fn new(cfg: OptimizerConfig, total_steps: u64) -> Self {
        Optimizer {
            cfg,
            step: 0,
            total_steps,
            slot1: Gradients::leaky(),
            slot2: Gradients::leaky(),
        }
    }

    /// Updates applied so far.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The configuration.
    pub fn config(&self) -> &OptimizerConfig {
        &self.cfg
    }

    /// Applies one update to every parameter from `grads` (which the caller
    /// then drops: a fresh gradient map is made each step).
    ///
    /// On the CPU the parameters are updated in parallel, each tensor by
    /// dfdx's kernel on one thread, so the bits do not depend on the thread
    /// count; elsewhere one after another.
    pub fn update(&mut self, net: &mut Network<D>, grads: &mut Gradients<f32, D>) -> Result<()> {
        let lr = self.cfg.lr_at(self.step, self.total_steps);
        self.step += 1;
        let t = self.step as i32;
        if let Some(cpu) = (self as &mut dyn Any).downcast_mut::<Optimizer<Cpu>>() {
            let net = (net as &mut dyn Any).downcast_mut::<Network<Cpu>>();
            let grads = (grads as &mut dyn Any).downcast_mut::<Gradients<f32, Cpu>>();
            if let (Some(net), Some(grads)) = (net, grads) {
                return cpu.update_in_parallel(net, grads, lr, t);
            }
        }
        let cfg = self.cfg;
        for p in net.params_mut() {
            let res = match &mut p.value {
                ParamValue::Matrix(w) => self.update_one(&cfg, w, grads, lr, t),
                ParamValue::Vector(b) => self.update_one(&cfg, b, grads, lr, t),
            };
            res.map_err(|e| update_failed(&p.name, e))?;
        }
        Ok(())
    }

    fn update_one<S: Shape>(
        &mut self,
        cfg: &OptimizerConfig,
        param: &mut Tensor<S, f32, D>,
        grads: &mut Gradients<f32, D>,
        lr: f64,
        t: i32,
    ) -> std::result::Result<(), D::Err> {
        let g = grads.get_or_alloc_mut(param)?;
        let m = self.slot1.get_or_alloc_mut(param)?;
        match cfg.kind {
            OptimizerKind::Sgd => apply_rule(cfg, lr, t, param, g, m, None),
            OptimizerKind::Adam | OptimizerKind::AdamW => {
                let v = self.slot2.get_or_alloc_mut(param)?;
                apply_rule(cfg, lr, t, param, g, m, Some(v))
            }
        }
    }

    /// The state as host vectors, one `(slot1, slot2)` pair per parameter in
    /// store order (empty vectors where a slot is unused).
    pub fn state_to_host(&self, net: &Network<D>) -> Vec<(Vec<f32>, Vec<f32>)> {
        fn get<S: Shape, D: Backend>(g: &Gradients<f32, D>, t: &Tensor<S, f32, D>) -> Vec<f32> {
            g.get(t).as_vec()
        }
        if self.step == 0 {
            // No update yet: the slots are not allocated (empty state, which
            // `restore_state` reads back as a fresh optimizer).
            return vec![(Vec::new(), Vec::new()); net.params().len()];
        }
        net.params()
            .iter()
            .map(|p| {
                let sgd = self.cfg.kind == OptimizerKind::Sgd;
                match &p.value {
                    ParamValue::Matrix(w) => (
                        get(&self.slot1, w),
                        if sgd { Vec::new() } else { get(&self.slot2, w) },
                    ),
                    ParamValue::Vector(b) => (
                        get(&self.slot1, b),
                        if sgd { Vec::new() } else { get(&self.slot2, b) },
                    ),
                }
            })
            .collect()
    }

    /// Restores the state saved by [`Self::state_to_host`] and the step count.
    ///
    /// dfdx gives no way to write host values into a raw device buffer, but
    /// a backward pass does: the gradient of `sum(p * s)` with respect to `p`
    /// is exactly `s` (a product with 1.0 and a sum with 0.0 are exact in
    /// IEEE arithmetic), so each slot map is rebuilt from such a pass.
    pub fn restore_state(
        &mut self,
        net: &Network<D>,
        state: &[(Vec<f32>, Vec<f32>)],
        step: u64,
    ) -> Result<()> {
        if state.len() != net.params().len() {
            return Err(Error::Training {
                context: "checkpoint".into(),
                message: format!(
                    "optimizer state has {} tensors, the model {}",
                    state.len(),
                    net.params().len()
                ),
            });
        }
        let dev = net.device().clone();
        let mut slot1 = Gradients::leaky();
        let mut slot2 = Gradients::leaky();
        for (p, (s1, s2)) in net.params().iter().zip(state) {
            let n = p.value.len();
            let check = |s: &Vec<f32>, which: &str| {
                if s.len() != n && !s.is_empty() {
                    Err(Error::Training {
                        context: "checkpoint".into(),
                        message: format!(
                            "optimizer {which} of '{}' has {} values, expected {n}",
                            p.name,
                            s.len()
                        ),
                    })
                } else {
                    Ok(())
                }
            };
            check(s1, "slot 1")?;
            check(s2, "slot 2")?;
            match &p.value {
                ParamValue::Matrix(w) => {
                    let shape = *w.shape();
                    if !s1.is_empty() {
                        let s = dev.tensor_from_vec(s1.clone(), shape);
                        slot1 = (w.clone().traced(slot1) * s).sum::<Rank0, _>().backward();
                    }
                    if !s2.is_empty() {
                        let s = dev.tensor_from_vec(s2.clone(), shape);
                        slot2 = (w.clone().traced(slot2) * s).sum::<Rank0, _>().backward();
                    }
                }
                ParamValue::Vector(b) => {
                    let shape = *b.shape();
                    if !s1.is_empty() {
                        let s = dev.tensor_from_vec(s1.clone(), shape);
                        slot1 = (b.clone().traced(slot1) * s).sum::<Rank0, _>().backward();
                    }
                    if !s2.is_empty() {
                        let s = dev.tensor_from_vec(s2.clone(), shape);
                        slot2 = (b.clone().traced(slot2) * s).sum::<Rank0, _>().backward();
                    }
                }
            }
        }
        self.slot1 = slot1;
        self.slot2 = slot2;
        self.step = step;
        Ok(())
    }
}

/// A host buffer of the CPU device (a gradient or a state slot).
type CpuVec = <Cpu as Storage<f32>>::Vec;

impl Optimizer<Cpu> {
    /// [`Optimizer::update`] on the CPU: each parameter's gradient and state
    /// buffers are moved out of their maps (no copy), the tensors are updated
    /// in parallel, each with its host copy ([`crate::model::HostMirror`]),
    /// and the state buffers are moved back.
    fn update_in_parallel(
        &mut self,
        net: &mut Network<Cpu>,
        grads: &mut Gradients<f32, Cpu>,
        lr: f64,
        t: i32,
    ) -> Result<()> {
        let dev = net.device().clone();
        let adam = self.cfg.kind != OptimizerKind::Sgd;
        let mut work: Vec<(CpuVec, CpuVec, Option<CpuVec>)> = Vec::new();
        for p in net.params() {
            let taken = (|| -> std::result::Result<_, CpuError> {
                let g = take_slot(&dev, grads, &p.value)?;
                let m = take_slot(&dev, &mut self.slot1, &p.value)?;
                let v = match adam {
                    true => Some(take_slot(&dev, &mut self.slot2, &p.value)?),
                    false => None,
                };
                Ok((g, m, v))
            })();
            work.push(taken.map_err(|e| update_failed(&p.name, e))?);
        }
        let cfg = &self.cfg;
        // Each task also refreshes its parameter's host copy, which the ops
        // read in the next step instead of copying the tensor on the step's
        // own thread.
        net.params_mut_keeping_host()
            .par_iter_mut()
            .zip(work.par_iter_mut())
            .try_for_each(|(p, (g, m, v))| {
                let res = match &mut p.value {
                    ParamValue::Matrix(w) => apply_rule(cfg, lr, t, w, g, m, v.as_mut()),
                    ParamValue::Vector(b) => apply_rule(cfg, lr, t, b, g, m, v.as_mut()),
                };
                match res {
                    Ok(()) => {
                        p.host.refresh(&p.value);
                        Ok(())
                    }
                    Err(e) => {
                        p.host.clear();
                        Err(update_failed(&p.name, e))
                    }
                }
            })?;
        for (p, (_, m, v)) in net.params().iter().zip(work) {
            put_slot(&mut self.slot1, &p.value, m).map_err(|e| update_failed(&p.name, e))?;
            if let Some(v) = v {
                put_slot(&mut self.slot2, &p.value, v).map_err(|e| update_failed(&p.name, e))?;
            }
        }
        Ok(())
    }
}

/// Moves the buffer of `param`'s entry out of `map` (allocating a zeroed one
/// first if the entry is new), leaving an empty one.
fn take_slot(
    dev: &Cpu,
    map: &mut Gradients<f32, Cpu>,
    param: &ParamValue<Cpu>,
) -> std::result::Result<CpuVec, CpuError> {
    let empty = dev.try_alloc_len(0)?;
    let slot = match param {
        ParamValue::Matrix(w) => map.get_or_alloc_mut(w)?,
        ParamValue::Vector(b) => map.get_or_alloc_mut(b)?,
    };
    Ok(std::mem::replace(slot, empty))
}

/// Puts a buffer taken by [`take_slot`] back into `param`'s entry.
fn put_slot(
    map: &mut Gradients<f32, Cpu>,
    param: &ParamValue<Cpu>,
    buf: CpuVec,
) -> std::result::Result<(), CpuError> {
    let slot = match param {
        ParamValue::Matrix(w) => map.get_or_alloc_mut(w)?,
        ParamValue::Vector(b) => map.get_or_alloc_mut(b)?,
    };
    *slot = buf;
    Ok(())
}

/// One update of `param` by the configured rule with dfdx's fused kernel;
/// `v` (the second moment) is required by Adam and AdamW.
fn apply_rule<S: Shape, D: Backend>(
    cfg: &OptimizerConfig,
    lr: f64,
    t: i32,
    param: &mut Tensor<S, f32, D>,
    g: &<D as Storage<f32>>::Vec,
    m: &mut <D as Storage<f32>>::Vec,
    v: Option<&mut <D as Storage<f32>>::Vec>,
) -> std::result::Result<(), D::Err> {
    let wd = cfg.weight_decay;
    match (cfg.kind, v) {
        (OptimizerKind::Sgd, _) => {
            let sgd = SgdConfig {
                lr,
                momentum: (cfg.momentum > 0.0).then_some(Momentum::Classic(cfg.momentum)),
                weight_decay: (wd > 0.0).then_some(WeightDecay::L2(wd)),
            };
            sgd.try_update(param, m, g)
        }
        (kind, Some(v)) => {
            let decay = match kind {
                OptimizerKind::AdamW => WeightDecay::Decoupled(wd),
                _ => WeightDecay::L2(wd),
            };
            let adam = AdamConfig {
                lr,
                betas: [0.9, 0.999],
                eps: 1e-8,
                weight_decay: (wd > 0.0).then_some(decay),
            };
            adam.try_update(t, param, m, v, g)
        }
        (_, None) => unreachable!("Adam is always given its second moment"),
    }
}

fn update_failed(name: &str, e: impl fmt::Debug) -> Error {
    Error::Device(format!("optimizer update of '{name}': {e:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;

    fn cfg(kind: OptimizerKind) -> OptimizerConfig {
        OptimizerConfig {
            kind,
            lr: 0.01,
            weight_decay: 0.001,
            momentum: 0.9,
            schedule: Schedule::Cosine,
        }
    }

    fn train_steps(net: &mut Network<Cpu>, opt: &mut Optimizer<Cpu>, steps: usize) {
        let dev = net.device().clone();
        for s in 0..steps {
            let x: Vec<f32> = (0..4 * 6).map(|i| ((i + s) % 7) as f32 / 7.0).collect();
            let x = dev.tensor_from_vec(x, (4, 6));
            let logits = net.forward(x.traced(Gradients::leaky()));
            let loss = logits.square().mean::<Rank0, _>();
            let mut grads = loss.backward();
            opt.update(net, &mut grads).unwrap();
        }
    }

    #[test]
    fn cpu_updates_keep_each_host_copy_equal_to_its_tensor() {
        for kind in [OptimizerKind::Sgd, OptimizerKind::Adam] {
            let dev = Cpu::seed_from_u64(0);
            let mut net = Network::new(ModelSpec::parse("mlp:6-5-3").unwrap(), dev, 2);
            // No copy before the first update: the ops copy the tensors.
            assert!(net.params().iter().all(|p| p.host.get().is_none()));
            let mut opt = Optimizer::new(cfg(kind), 10);
            for step in 0..3 {
                train_steps(&mut net, &mut opt, 1);
                for p in net.params() {
                    let copy = p.host.get().expect("a host copy after an update");
                    assert_eq!(**copy, p.value.to_vec(), "{kind:?} step {step}: {}", p.name);
                }
            }
            // A copy an op still shares is replaced, not written.
            let shared = net.params()[0].host.get().cloned().unwrap();
            let before = shared.to_vec();
            train_steps(&mut net, &mut opt, 1);
            assert_eq!(*shared, before);
            assert_eq!(
                **net.params()[0].host.get().unwrap(),
                net.params()[0].value.to_vec()
            );
            // Any other mutable access may change the values: every copy goes.
            net.params_mut()[0].value.copy_from(&[0.5; 30]);
            assert!(net.params().iter().all(|p| p.host.get().is_none()));
        }
    }

    #[test]
    fn adam_matches_reference_first_step() {
        // torch: p = 1.0, g = 2p*x ... here a single step on a known gradient:
        // Adam step 1 moves each weight by lr * sign(g) (bias-corrected m/sqrt(v)).
        let dev = Cpu::seed_from_u64(0);
        let mut net = Network::new(ModelSpec::parse("mlp:2-1").unwrap(), dev.clone(), 0);
        net.params_mut()[0].value.copy_from(&[1.0, -1.0]);
        net.params_mut()[1].value.copy_from(&[0.0]);
        let mut opt = Optimizer::new(
            OptimizerConfig {
                kind: OptimizerKind::Adam,
                lr: 0.1,
                weight_decay: 0.0,
                momentum: 0.0,
                schedule: Schedule::Constant,
            },
            1,
        );
        let x = dev.tensor_from_vec(vec![1.0f32, 1.0], (1, 2));
        // loss = y = w0 - w1 + b: gradient (1, 1, 1)
        let y = net.forward(x.traced(Gradients::leaky())).sum::<Rank0, _>();
        let mut grads = y.backward();
        opt.update(&mut net, &mut grads).unwrap();
        let w = net.params()[0].value.to_vec();
        assert!(
            (w[0] - 0.9).abs() < 1e-6 && (w[1] + 1.1).abs() < 1e-6,
            "{w:?}"
        );
    }

    #[test]
    fn restored_state_continues_identically() {
        for kind in [
            OptimizerKind::Sgd,
            OptimizerKind::Adam,
            OptimizerKind::AdamW,
        ] {
            let dev = Cpu::seed_from_u64(0);
            let spec = ModelSpec::parse("mlp:6-5-3").unwrap();
            let mut a = Network::new(spec.clone(), dev.clone(), 1);
            let mut opt_a = Optimizer::new(cfg(kind), 10);
            train_steps(&mut a, &mut opt_a, 3);
            // Snapshot, restore into a fresh network and optimizer.
            let mut b = Network::new(spec, dev.clone(), 99);
            b.load_host(&a.to_host(), std::path::Path::new("mem"))
                .unwrap();
            let mut opt_b = Optimizer::new(cfg(kind), 10);
            opt_b
                .restore_state(&b, &opt_a.state_to_host(&a), opt_a.step())
                .unwrap();
            train_steps(&mut a, &mut opt_a, 3);
            train_steps(&mut b, &mut opt_b, 3);
            let wa: Vec<Vec<f32>> = a.params().iter().map(|p| p.value.to_vec()).collect();
            let wb: Vec<Vec<f32>> = b.params().iter().map(|p| p.value.to_vec()).collect();
            assert_eq!(wa, wb, "{kind}");
        }
    }

    #[test]
    fn bad_hyperparameters_name_the_field() {
        let mut c = cfg(OptimizerKind::Adam);
        c.lr = -1.0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("optimizer.lr"));
        let mut c = cfg(OptimizerKind::Adam);
        c.lr = 1e-300;
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("optimizer.lr") && e.contains("below 1e-12"),
            "{e}"
        );
        let mut c = cfg(OptimizerKind::Adam);
        c.momentum = 1.5;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("optimizer.momentum"));
        assert!("rmsprop"
            .parse::<OptimizerKind>()
            .unwrap_err()
            .to_string()
            .contains("optimizer.kind"));
    }
}

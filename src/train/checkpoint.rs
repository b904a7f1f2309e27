//! The checkpoint a killed run resumes from (`checkpoint.safetensors` in the
//! run's directory, see [`ModelDir::checkpoint`](crate::model::ModelDir::checkpoint)).
//!
//! One safetensors file holds everything an uninterrupted run would still
//! have in memory, so that resuming finishes with the same weights:
//!
//! | what | where |
//! |---|---|
//! | weights, the network's own layout | tensors named as the network's parameters |
//! | optimizer state | tensors `optimizer.slot1.NAME`, `optimizer.slot2.NAME` |
//! | pruning masks in force | tensors `mask.NAME` (PyTorch layout) |
//! | the averaged weights and buffers (`ema`) | tensors `ema.NAME`, metadata `ema_updates` |
//! | the spec | metadata `distill.spec` (as in a weights file) |
//! | the run's config, as JSON | metadata `config` |
//! | the cache's content id | metadata `cache_id` (empty without a cache) |
//! | the training split's fingerprint | metadata `train_fingerprint` |
//! | the online teacher's weights fingerprint | metadata `online_teacher` (empty without one) |
//! | epoch, position in its order, optimizer step | metadata `epoch`, `position`, `step` |
//! | the epoch's partial loss sum and count | metadata `loss_sum`, `loss_count` |
//! | finished epochs' metrics, training time | metadata `metrics`, `train_seconds` |
//!
//! | xxh3-64 of all of the above | metadata `checksum_xxh3` |
//!
//! A checkpoint resumes only the same run: [`load`] refuses one written with
//! another config, from another cache (a replaced or rebuilt cache has
//! another id), on other data or with another online teacher, and one whose tensors or metadata no longer match the
//! checksum written with them (a checkpoint from before the checksum has
//! none to check).

use std::collections::HashMap;
use std::path::Path;

use xxhash_rust::xxh3::Xxh3;

use crate::error::{Error, Result};
use crate::model::io::{read_safetensors, write_safetensors, HostTensor, SPEC_KEY};
use crate::model::{Backend, Network};

use super::average::WeightAverage;
use super::config::TrainConfig;
use super::metrics::EpochMetrics;
use super::optim::Optimizer;
use super::outdir::first_difference;

/// Prefix of the pruning masks' tensors in a checkpoint.
const MASK_PREFIX: &str = "mask.";

/// Metadata key of the checksum over every other key and every tensor.
const CHECKSUM_KEY: &str = "checksum_xxh3";
/// The training split's fingerprint (checkpoints from before it have none).
const TRAIN_DATA_KEY: &str = "train_fingerprint";
/// The online teacher's weights fingerprint, empty without one (checkpoints
/// from before it have none).
const ONLINE_TEACHER_KEY: &str = "online_teacher";

/// xxh3-64 over the metadata (but the checksum itself) in key order and
/// the tensors in name order: names, shapes and f32 bits.
fn checksum(meta: &HashMap<String, String>, tensors: &[HostTensor]) -> String {
    let mut h = Xxh3::new();
    let mut keys: Vec<&String> = meta.keys().filter(|k| *k != CHECKSUM_KEY).collect();
    keys.sort();
    for k in keys {
        for part in [k.as_bytes(), &[0], meta[k].as_bytes(), &[0]] {
            h.update(part);
        }
    }
    let mut sorted: Vec<&HostTensor> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for t in sorted {
        h.update(t.name.as_bytes());
        h.update(&[0]);
        for d in &t.shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        let bytes: Vec<u8> = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
        h.update(&bytes);
    }
    format!("{:016x}", h.digest())
}

/// Where a run stands: what a checkpoint records besides the tensors and
/// the finished epochs' metrics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Progress {
    /// The epoch under way (0-based); the number of finished epochs.
    pub epoch: usize,
    /// Samples of the epoch's order already trained on.
    pub position: usize,
    /// The epoch's loss summed over those samples, and their count.
    pub loss_sum: f64,
    pub loss_count: usize,
    /// Training time so far, seconds.
    pub train_seconds: f64,
}

/// A checkpoint read back.
pub struct Checkpoint {
    pub progress: Progress,
    /// The finished epochs' metrics.
    pub metrics: Vec<EpochMetrics>,
    /// The masks in force when it was written (PyTorch layout), if any.
    pub masks: Option<Vec<HostTensor>>,
}

/// Which run a checkpoint belongs to: its config, the data it trains on and
/// its teacher outputs.
#[derive(Clone, Copy)]
pub struct RunIdentity<'a> {
    pub cfg: &'a TrainConfig,
    /// The cache's content id (empty without a cache).
    pub cache_id: &'a str,
    /// The training split's fingerprint.
    pub train_fingerprint: &'a str,
    /// The online teacher's weights fingerprint (empty without one).
    pub online_teacher: &'a str,
}

/// The updates of the run's weight average, in a checkpoint's metadata.
const EMA_UPDATES_KEY: &str = "ema_updates";

/// What a checkpoint holds besides the network and the optimizer.
pub struct RunState<'a, D: Backend> {
    pub progress: Progress,
    /// The finished epochs' metrics.
    pub metrics: &'a [EpochMetrics],
    /// The masks in force (PyTorch layout), if any.
    pub masks: Option<&'a [HostTensor]>,
    /// The weight average, if the run keeps one.
    pub average: Option<&'a WeightAverage<D>>,
}

/// Writes a checkpoint (atomically: a killed write leaves the previous one).
pub fn save<D: Backend>(
    path: &Path,
    run: RunIdentity<'_>,
    net: &Network<D>,
    opt: &Optimizer<D>,
    state: RunState<'_, D>,
) -> Result<()> {
    let RunState {
        progress,
        metrics,
        masks,
        average,
    } = state;
    let mut tensors: Vec<HostTensor> = net
        .params()
        .iter()
        .map(|p| HostTensor {
            name: p.name.clone(),
            shape: p.value.dims(),
            data: p.value.to_vec(),
        })
        .collect();
    tensors.extend(net.buffers().iter().map(|b| HostTensor {
        name: b.name.clone(),
        shape: b.shape.clone(),
        data: b.get(),
    }));
    for (p, (s1, s2)) in net.params().iter().zip(opt.state_to_host(net)) {
        for (slot, data) in [("slot1", s1), ("slot2", s2)] {
            if !data.is_empty() {
                tensors.push(HostTensor {
                    name: format!("optimizer.{slot}.{}", p.name),
                    shape: vec![data.len()],
                    data,
                });
            }
        }
    }
    for m in masks.unwrap_or_default() {
        tensors.push(HostTensor {
            name: format!("{MASK_PREFIX}{}", m.name),
            shape: m.shape.clone(),
            data: m.data.clone(),
        });
    }
    let mut meta = HashMap::new();
    if let Some(a) = average {
        tensors.extend(a.to_host(net));
        meta.insert(EMA_UPDATES_KEY.into(), a.updates().to_string());
    }
    meta.insert(SPEC_KEY.into(), net.spec().to_string());
    meta.insert(
        "config".into(),
        serde_json::to_string(run.cfg).unwrap_or_default(),
    );
    meta.insert("cache_id".into(), run.cache_id.to_string());
    meta.insert(TRAIN_DATA_KEY.into(), run.train_fingerprint.to_string());
    meta.insert(ONLINE_TEACHER_KEY.into(), run.online_teacher.to_string());
    meta.insert("epoch".into(), progress.epoch.to_string());
    meta.insert("position".into(), progress.position.to_string());
    meta.insert("step".into(), opt.step().to_string());
    meta.insert("loss_sum".into(), format!("{:e}", progress.loss_sum));
    meta.insert("loss_count".into(), progress.loss_count.to_string());
    meta.insert("train_seconds".into(), progress.train_seconds.to_string());
    meta.insert(
        "metrics".into(),
        serde_json::to_string(metrics).unwrap_or_default(),
    );
    let sum = checksum(&meta, &tensors);
    meta.insert(CHECKSUM_KEY.into(), sum);
    write_safetensors(path, &tensors, meta)
}

/// The config a checkpoint records (`None` when it records none that
/// reads), without loading it into a network.
pub fn recorded_config(path: &Path) -> Result<Option<TrainConfig>> {
    let (meta, _) = read_safetensors(path)?;
    Ok(meta
        .get("config")
        .and_then(|c| serde_json::from_str(c).ok()))
}

/// Reads a checkpoint of the same run into `net`, `opt` and `average` (the
/// run's weight average, if it keeps one); refuses one of another run
/// (config or cache).
pub fn load<D: Backend>(
    path: &Path,
    run: RunIdentity<'_>,
    net: &mut Network<D>,
    opt: &mut Optimizer<D>,
    average: Option<&mut WeightAverage<D>>,
) -> Result<Checkpoint> {
    let (meta, tensors) = read_safetensors(path)?;
    let bad = |message: String| Error::Model {
        path: path.to_path_buf(),
        message,
    };
    if let Some(recorded) = meta.get(CHECKSUM_KEY) {
        let now = checksum(&meta, &tensors);
        if &now != recorded {
            return Err(bad(format!(
                "is damaged: its contents no longer match the checksum written with them \
                 ({recorded} recorded, {now} now: bit rot or a partial copy); start over \
                 (without `resume`, with `overwrite`)"
            )));
        }
    }
    check_identity(&meta, run).map_err(bad)?;
    let field = |k: &str| -> Result<&String> {
        meta.get(k)
            .ok_or_else(|| bad(format!("metadata '{k}' is missing")))
    };
    let num = |k: &str| -> Result<u64> {
        field(k)?
            .parse::<u64>()
            .map_err(|_| bad(format!("metadata '{k}' is not a number")))
    };
    let by_name: HashMap<&str, &HostTensor> =
        tensors.iter().map(|t| (t.name.as_str(), t)).collect();
    // Weights are stored in the network's own layout.
    for p in net.params_mut() {
        let t = by_name
            .get(p.name.as_str())
            .ok_or_else(|| bad(format!("tensor '{}' is missing", p.name)))?;
        if t.data.len() != p.value.len() {
            return Err(bad(format!(
                "tensor '{}' has {} values, expected {}",
                p.name,
                t.data.len(),
                p.value.len()
            )));
        }
        p.value.copy_from(&t.data);
    }
    for b in net.buffers() {
        match by_name.get(b.name.as_str()) {
            Some(t) if t.data.len() == b.get().len() => b.set(t.data.clone()),
            _ => return Err(bad(format!("buffer '{}' is missing or mis-sized", b.name))),
        }
    }
    let state: Vec<(Vec<f32>, Vec<f32>)> = net
        .params()
        .iter()
        .map(|p| {
            let get = |slot: &str| {
                by_name
                    .get(format!("optimizer.{slot}.{}", p.name).as_str())
                    .map(|t| t.data.clone())
                    .unwrap_or_default()
            };
            (get("slot1"), get("slot2"))
        })
        .collect();
    opt.restore_state(net, &state, num("step")?)?;
    if let Some(a) = average {
        a.restore(net, &by_name, num(EMA_UPDATES_KEY)?)
            .map_err(bad)?;
    }
    let metrics: Vec<EpochMetrics> = serde_json::from_str(field("metrics")?).map_err(|e| {
        bad(format!(
            "metadata 'metrics': {}",
            crate::error::parser_message(&e)
        ))
    })?;
    let masks: Vec<HostTensor> = tensors
        .iter()
        .filter_map(|t| {
            t.name.strip_prefix(MASK_PREFIX).map(|name| HostTensor {
                name: name.to_string(),
                shape: t.shape.clone(),
                data: t.data.clone(),
            })
        })
        .collect();
    Ok(Checkpoint {
        masks: (!masks.is_empty()).then_some(masks),
        metrics,
        progress: Progress {
            epoch: num("epoch")? as usize,
            position: num("position")? as usize,
            loss_sum: field("loss_sum")?
                .parse()
                .map_err(|_| bad("metadata 'loss_sum' is not a number".into()))?,
            loss_count: num("loss_count")? as usize,
            train_seconds: field("train_seconds")?.parse().unwrap_or(0.0),
        },
    })
}

/// Whether a checkpoint's metadata names this run; the reason if not.
fn check_identity(
    meta: &HashMap<String, String>,
    run: RunIdentity<'_>,
) -> std::result::Result<(), String> {
    let saved_cfg = meta
        .get("config")
        .ok_or("no 'config' metadata: not a distill checkpoint")?;
    let ours = serde_json::to_string(run.cfg).unwrap_or_default();
    if saved_cfg != &ours {
        match serde_json::from_str::<TrainConfig>(saved_cfg) {
            Ok(theirs) if &theirs == run.cfg => {}
            Ok(theirs) => {
                return Err(format!(
                    "was written by a run with other settings ({}); resume with the same \
                     settings, train into another directory, or start over (without resume, \
                     with overwrite)",
                    first_difference(&theirs, run.cfg)
                ))
            }
            Err(e) => {
                return Err(format!(
                    "is damaged: the settings it records do not read ({}); start over \
                     (without `resume`, with `overwrite`)",
                    crate::error::parser_message(&e)
                ))
            }
        }
    }
    let saved_cache = meta.get("cache_id").map_or("", |s| s.as_str());
    if saved_cache != run.cache_id {
        return Err(format!(
            "was written while training from cache '{saved_cache}', but the cache given now is '{}' (replaced or rebuilt); resume with the same cache or train into another directory",
            run.cache_id
        ));
    }
    if let Some(saved) = meta.get(TRAIN_DATA_KEY) {
        if saved != run.train_fingerprint {
            return Err(format!(
                "was written while training on data with fingerprint {saved}, but the data \
                 given now (`data`) reads as {} (other files, or read with other options); \
                 resume with the same data or train into another directory",
                run.train_fingerprint
            ));
        }
    }
    if let Some(saved) = meta.get(ONLINE_TEACHER_KEY) {
        if saved != run.online_teacher {
            let what = |fp: &str| match fp {
                "" => "no online teacher".to_string(),
                fp => format!("an online teacher with weights {fp}"),
            };
            return Err(format!(
                "was written by a run with {}, but this run has {} (`online_teacher`); resume \
                 with the same teacher or train into another directory",
                what(saved),
                what(run.online_teacher)
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelSpec;
    use dfdx::prelude::Cpu;

    #[test]
    fn the_checksum_catches_a_changed_value_and_older_checkpoints_still_resume() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("checkpoint.safetensors");
        let cfg = TrainConfig {
            spec: "mlp:4-3-2".into(),
            ..TrainConfig::default()
        };
        let spec = ModelSpec::parse(&cfg.spec).unwrap();
        let net = Network::new(spec.clone(), Cpu::default(), 0);
        let run = RunIdentity {
            cfg: &cfg,
            cache_id: "",
            train_fingerprint: "data",
            online_teacher: "",
        };
        let progress = Progress {
            epoch: 1,
            position: 7,
            ..Progress::default()
        };
        let opt = Optimizer::new(cfg.optimizer, 10);
        let state = RunState {
            progress,
            metrics: &[],
            masks: None,
            average: None,
        };
        save(&path, run, &net, &opt, state).unwrap();
        let resume = || {
            let mut into = Network::new(spec.clone(), Cpu::default(), 1);
            let mut opt = Optimizer::new(cfg.optimizer, 10);
            load(&path, run, &mut into, &mut opt, None).map(|ck| (ck.progress, into.fingerprint()))
        };
        let (back, fingerprint) = resume().unwrap();
        assert_eq!((back.epoch, back.position), (1, 7));
        assert_eq!(fingerprint, net.fingerprint());

        // Written before the checksum existed: nothing to check, resumes.
        let (mut meta, tensors) = read_safetensors(&path).unwrap();
        assert!(meta.remove(CHECKSUM_KEY).is_some());
        write_safetensors(&path, &tensors, meta.clone()).unwrap();
        resume().unwrap();

        // One weight or one number of the metadata changed under the checksum.
        meta.insert(CHECKSUM_KEY.into(), checksum(&meta, &tensors));
        let mut changed = tensors.clone();
        changed[0].data[0] += 1e-3;
        write_safetensors(&path, &changed, meta.clone()).unwrap();
        let e = resume().err().unwrap().to_string();
        assert!(e.contains("is damaged") && e.contains("checksum"), "{e}");
        let mut moved = meta.clone();
        moved.insert("position".into(), "8".into());
        write_safetensors(&path, &tensors, moved).unwrap();
        assert!(resume().is_err());
        write_safetensors(&path, &tensors, meta).unwrap();
        resume().unwrap();
    }
}

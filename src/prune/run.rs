//! One pruning run as `distill prune` does it, as a library call: a typed
//! [`PruneConfig`] in; a pruned model directory out (weights, masks and
//! `prune.json`, each written atomically); the numbers before and after
//! ([`PruneRun`]) back for the caller to print.
//!
//! Test accuracy is measured by the caller's function (`distill` passes
//! `train::compare::test_accuracy`): evaluation sits above pruning in the
//! layers.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use dfdx::prelude::Cpu;

use super::accounting::Summary;
use super::io::{read_model_normalized, write_model};
use super::masks::{check_masks, grow_masks, read_masks, MaskCount};
use super::selection::{check_sparsity, LayerSelection};
use super::structured::{sparsity_for_budget, structured};
use super::transfer::TransferReport;
use crate::data::{Dataset, Split};
use crate::error::{Error, Result};
use crate::model::io::{atomic_write, HostTensor};
use crate::model::{ModelDir, ModelSpec, Network};

/// How to prune.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `l1-unstructured`: zero the smallest weights, keep a mask.
    Unstructured,
    /// `l1-structured`: remove whole units/channels, a smaller spec.
    Structured,
}

impl Method {
    /// The method's name, as written in `prune.json`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Unstructured => "l1-unstructured",
            Method::Structured => "l1-structured",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Method {
    type Err = Error;

    /// Parses a method name; errors name the `method` field.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "l1-unstructured" => Ok(Method::Unstructured),
            "l1-structured" => Ok(Method::Structured),
            other => Err(Error::Config {
                field: "method".into(),
                message: format!("'{other}' is not one of l1-unstructured, l1-structured"),
            }),
        }
    }
}

/// How much a [`PruneConfig`] removes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PruneAmount {
    /// `sparsity`: the fraction to remove, in [0, 1): of each selected
    /// layer's weights (unstructured; of all of them with `global`), or of
    /// each selected hidden layer's units/channels (structured).
    Sparsity(f64),
    /// `max_params`, structured only: the least sparsity (in thousandths)
    /// whose smaller spec has at most this many parameters
    /// ([`sparsity_for_budget`]).
    MaxParams(u64),
}

/// What to prune and where to put the result.
#[derive(Debug, Clone, PartialEq)]
pub struct PruneConfig {
    /// The model directory (or weights file) to prune; a mask beside it
    /// stays in force.
    pub model: PathBuf,
    pub method: Method,
    /// How much to remove: a sparsity, or (structured) a parameter budget.
    pub amount: PruneAmount,
    /// Layers to prune, e.g. `layers.0,layers.3` (None: all with weights;
    /// structured never prunes the output layer).
    pub layers: Option<String>,
    /// Unstructured only: one magnitude threshold over all selected layers.
    pub global: bool,
    /// The output model directory.
    pub out: PathBuf,
    /// A dataset directory whose test split measures accuracy before and after.
    pub data: Option<PathBuf>,
    /// The command line, recorded in `prune.json`.
    pub command: String,
}

impl PruneConfig {
    /// Checks the fields that need no files; errors name the field.
    pub fn validate(&self) -> Result<()> {
        match self.amount {
            PruneAmount::Sparsity(s) => check_sparsity(s)?,
            PruneAmount::MaxParams(_) if self.method == Method::Unstructured => {
                return Err(Error::Config {
                    field: "max_params".into(),
                    message: "applies to l1-structured only: unstructured pruning zeroes weights \
                              but keeps them in the model; give `sparsity` instead"
                        .into(),
                })
            }
            PruneAmount::MaxParams(_) => {}
        }
        if self.global && self.method == Method::Structured {
            return Err(Error::Config {
                field: "global".into(),
                message: "applies to l1-unstructured only".into(),
            });
        }
        Ok(())
    }
}

/// What [`prune_model`] did.
#[derive(Debug, Clone)]
pub struct PruneRun {
    /// The source model's spec.
    pub source_spec: ModelSpec,
    /// The pruned model's spec (smaller after structured pruning).
    pub spec: ModelSpec,
    /// The sparsity applied (the one a parameter budget came to).
    pub sparsity: f64,
    /// The source model's numbers.
    pub before: Summary,
    /// The pruned model's numbers.
    pub after: Summary,
    /// Structured pruning: how each tensor of the smaller model was filled.
    pub report: Option<TransferReport>,
    /// Structured pruning of a masked model: the carried mask's zeros.
    pub carried_mask: Option<MaskCount>,
    /// Where the pruned model was written.
    pub out: ModelDir,
}

/// Refuses an output directory that is the model being pruned, or that
/// holds a model `distill prune` did not write (no `prune.json`): writing
/// there would replace that model's weights and leave its card describing
/// other weights. An earlier pruned model is replaced (a rerun); a card
/// beside it (left by pruning in place, which is now refused) describes
/// other weights and is removed.
fn claim_out_dir(source: &ModelDir, out: &Path) -> Result<()> {
    // `write_model` makes `out` a directory whatever its name; only an
    // existing directory can hold anything to protect.
    if !out.is_dir() {
        return Ok(());
    }
    let out = ModelDir::new(out);
    let refuse = |message: String| Error::Config {
        field: "out".into(),
        message,
    };
    let same = match (source.path().canonicalize(), out.path().canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if same {
        return Err(refuse(format!(
            "{} is the model being pruned; write the pruned copy to another directory",
            out.path().display()
        )));
    }
    let holds_model = out.has_weights() || out.card().exists();
    if holds_model && !out.prune_report().exists() {
        return Err(refuse(format!(
            "{} holds a model that `distill prune` did not write; prune into another \
             directory, or remove that model first",
            out.path().display()
        )));
    }
    Ok(crate::fsutil::remove_if_present(&out.card())?)
}

/// Prunes the model of `cfg.model` into `cfg.out` and records what was done
/// in `prune.json` there. `accuracy` measures a network on the test split
/// of `cfg.data`, when given.
pub fn prune_model<F>(cfg: &PruneConfig, accuracy: F) -> Result<PruneRun>
where
    F: Fn(&Network<Cpu>, &Dataset) -> Result<Option<f64>>,
{
    cfg.validate()?;
    let source = ModelDir::new(&cfg.model);
    claim_out_dir(&source, &cfg.out)?;
    let (spec, weights, normalization) = read_model_normalized(&source)?;
    let old_masks = read_masks(&source)?;
    if let Some(m) = &old_masks {
        check_masks(&spec, m, &source.masks())?;
    }
    let sel = match &cfg.layers {
        Some(text) => LayerSelection::parse(text, &spec)?,
        None => LayerSelection::All,
    };
    let sparsity = match cfg.amount {
        PruneAmount::Sparsity(s) => s,
        PruneAmount::MaxParams(n) => sparsity_for_budget(&spec, n, &sel)?.0,
    };
    let test = match &cfg.data {
        Some(dir) => Some(Dataset::open(dir, Split::Test)?),
        None => None,
    };
    let measure = |spec: &ModelSpec, tensors: &[HostTensor], file: &Path| -> Result<Summary> {
        let acc = match &test {
            Some(d) => {
                let mut net = Network::new(spec.clone(), Cpu::default(), 0);
                net.load_host(tensors, file)?;
                net.set_normalization(normalization.clone())
                    .map_err(|message| Error::Model {
                        path: file.to_path_buf(),
                        message,
                    })?;
                accuracy(&net, d)?
            }
            None => None,
        };
        Summary::of(spec, tensors, file, acc)
    };
    let before = measure(&spec, &weights, source.weights())?;
    let (new_spec, new_weights, masks, report) = match cfg.method {
        Method::Unstructured => {
            let mut w = weights.clone();
            // An earlier mask stays in force.
            let masks = grow_masks(
                &spec,
                &mut w,
                old_masks.as_deref(),
                sparsity,
                &sel,
                cfg.global,
            )?;
            (spec.clone(), w, Some(masks), None)
        }
        Method::Structured => {
            let small = structured(&spec, &weights, old_masks.as_deref(), sparsity, &sel)?;
            (small.spec, small.weights, small.masks, Some(small.report))
        }
    };
    let out = write_model(
        &cfg.out,
        &new_spec,
        &new_weights,
        normalization.as_ref(),
        masks.as_deref(),
    )?;
    let after = measure(&new_spec, &new_weights, out.weights())?;
    let run = PruneRun {
        carried_mask: match cfg.method {
            Method::Structured => masks.as_deref().map(MaskCount::of),
            Method::Unstructured => None,
        },
        source_spec: spec,
        spec: new_spec,
        sparsity,
        before,
        after,
        report,
        out,
    };
    write_record(cfg, &run)?;
    Ok(run)
}

/// Writes `prune.json`: the config, the source and the numbers after.
fn write_record(cfg: &PruneConfig, run: &PruneRun) -> Result<()> {
    let record = serde_json::json!({
        "source": cfg.model.display().to_string(),
        "source_spec": run.source_spec.to_string(),
        "method": cfg.method.as_str(),
        "sparsity": run.sparsity,
        "max_params": match cfg.amount {
            PruneAmount::MaxParams(n) => Some(n),
            PruneAmount::Sparsity(_) => None,
        },
        "layers": cfg.layers,
        "global": cfg.global,
        "spec": run.spec.to_string(),
        "parameters": run.after.params,
        "nonzero": run.after.nonzero,
        "flops_per_sample": run.after.flops,
        "nonzero_flops_per_sample": run.after.nz_flops,
        "test_accuracy_before": run.before.accuracy,
        "test_accuracy_after": run.after.accuracy,
        "command": cfg.command,
    });
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    atomic_write(&run.out.prune_report(), text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::io::write_model;
    use super::super::test_util::host;
    use super::*;

    fn config(model: &Path, method: Method, out: &Path) -> PruneConfig {
        PruneConfig {
            model: model.to_path_buf(),
            method,
            amount: PruneAmount::Sparsity(0.5),
            layers: None,
            global: false,
            out: out.to_path_buf(),
            data: None,
            command: "test".into(),
        }
    }

    #[test]
    fn never_writes_over_its_source_or_a_model_it_did_not_write() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let w = host(&spec, |_, i| 1.0 + i as f32);
        let m = tmp.path().join("m");
        write_model(&m, &spec, &w, None, None).unwrap();
        write_model(&tmp.path().join("other"), &spec, &w, None, None).unwrap();
        let before = std::fs::read(m.join("model.safetensors")).unwrap();
        let no_accuracy = |_: &Network<Cpu>, _: &Dataset| -> Result<Option<f64>> { Ok(None) };
        for out in [
            m.clone(),
            tmp.path().join("m/../m"),
            tmp.path().join("other"),
        ] {
            let cfg = config(&m, Method::Unstructured, &out);
            let e = prune_model(&cfg, no_accuracy).unwrap_err().to_string();
            assert!(e.starts_with("invalid value for out: "), "{e}");
            assert!(
                e.contains("being pruned") || e.contains("did not write"),
                "{e}"
            );
        }
        assert_eq!(std::fs::read(m.join("model.safetensors")).unwrap(), before);
        assert!(!m.join("mask.safetensors").exists());
        // An earlier pruned model is replaced by a rerun, and a stale card
        // beside it removed.
        let cfg = config(&m, Method::Unstructured, &tmp.path().join("p"));
        prune_model(&cfg, no_accuracy).unwrap();
        std::fs::write(tmp.path().join("p/model.json"), b"{}").unwrap();
        prune_model(&cfg, no_accuracy).unwrap();
        assert!(!tmp.path().join("p/model.json").exists());
        // An output named like a weights file is a new directory all the same.
        let cfg = config(&m, Method::Unstructured, &tmp.path().join("q.safetensors"));
        prune_model(&cfg, no_accuracy).unwrap();
        assert!(tmp.path().join("q.safetensors/model.safetensors").exists());
    }

    #[test]
    fn prunes_into_a_model_directory_with_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let w = host(&spec, |_, i| 1.0 + i as f32);
        write_model(&tmp.path().join("m"), &spec, &w, None, None).unwrap();
        let no_accuracy = |_: &Network<Cpu>, _: &Dataset| -> Result<Option<f64>> { Ok(None) };
        let cfg = config(
            &tmp.path().join("m"),
            Method::Unstructured,
            &tmp.path().join("u"),
        );
        let u = prune_model(&cfg, no_accuracy).unwrap();
        assert_eq!(u.spec, spec);
        assert_eq!(u.after.nonzero, u.before.nonzero - 10);
        assert!(u.out.masks().exists() && u.carried_mask.is_none());
        let cfg = config(
            &tmp.path().join("u"),
            Method::Structured,
            &tmp.path().join("s"),
        );
        let s = prune_model(&cfg, no_accuracy).unwrap();
        assert_eq!(s.spec.as_str(), "mlp:3-2-2");
        assert!(s.carried_mask.is_some() && s.report.is_some());
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(s.out.prune_report()).unwrap()).unwrap();
        assert_eq!(record["method"], "l1-structured");
        assert_eq!(record["source_spec"], "mlp:3-4-2");
        assert_eq!(record["test_accuracy_after"], serde_json::Value::Null);
        // Errors name the config's fields.
        let mut bad = config(
            &tmp.path().join("m"),
            Method::Structured,
            &tmp.path().join("x"),
        );
        bad.global = true;
        let field = |e: Error| match e {
            Error::Config { field, .. } => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(prune_model(&bad, no_accuracy).unwrap_err()), "global");
        bad.global = false;
        bad.layers = Some("layers.2".into());
        assert_eq!(field(prune_model(&bad, no_accuracy).unwrap_err()), "layers");
        assert_eq!(field("l2".parse::<Method>().unwrap_err()), "method");
        assert!(!tmp.path().join("x").exists());
    }
}

//! One pruning run as `distill prune` does it, as a library call: a typed
//! [`PruneConfig`] in; a pruned model directory out (weights, masks, `model.py`
//! and `prune.json`, staged and put in place whole by the
//! module `outdir`); the numbers before and after
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
use super::io::{read_stored_model, write_model, StoredModel};
use super::masks::{check_masks, grow_masks, read_masks, MaskCount};
use super::outdir::{check_out, claim_out_dir, StagingDir};
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
    /// Replace an earlier pruned model in `out` that other settings wrote
    /// (a rerun of the same settings replaces it regardless).
    pub overwrite: bool,
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

/// Prunes the model of `cfg.model` into `cfg.out` and records what was done
/// in `prune.json` there. `accuracy` measures a network on the test split
/// of `cfg.data`, when given.
pub fn prune_model<F>(cfg: &PruneConfig, accuracy: F) -> Result<PruneRun>
where
    F: Fn(&Network<Cpu>, &Dataset) -> Result<Option<f64>>,
{
    cfg.validate()?;
    let source = ModelDir::new(&cfg.model);
    let StoredModel {
        spec,
        tensors: weights,
        normalization,
        weights_xxh3: source_hash,
    } = read_stored_model(&source)?;
    // Every refusal of the arguments comes before the output's lock is
    // taken (below), so that a refused run creates nothing.
    check_out(&source, &source_hash, cfg)?;
    let old_masks = read_masks(&source)?;
    if let Some(m) = &old_masks {
        check_masks(&spec, m, &source.masks())?;
    }
    let sel = match &cfg.layers {
        Some(text) => LayerSelection::parse(text, &spec)?,
        None => LayerSelection::All,
    };
    if cfg.method == Method::Unstructured {
        check_unstructured_layers(&spec, &sel)?;
    }
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
            )
            .map_err(|e| match e {
                Error::Config { field, message } if cfg.global && field == "sparsity" => {
                    Error::Config {
                        field,
                        message: format!(
                            "{message}: lower it, or leave that layer out with `layers`"
                        ),
                    }
                }
                other => other,
            })?;
            (spec.clone(), w, Some(masks), None)
        }
        Method::Structured => {
            let small = structured(&spec, &weights, old_masks.as_deref(), sparsity, &sel)?;
            (small.spec, small.weights, small.masks, Some(small.report))
        }
    };
    // Held until the pruned model is committed; its file goes with it.
    let claimed = claim_out_dir(&source, &source_hash, cfg)?;
    let out_path = claimed.out.clone();
    // Everything is written into a temporary directory beside `out`, which
    // then replaces `out` whole: a failure (a full disk) leaves `out` as it
    // was, never new weights beside an old record.
    let staging = StagingDir::new(&out_path)?;
    let written = write_model(
        staging.path(),
        &new_spec,
        &new_weights,
        normalization.as_ref(),
        masks.as_deref(),
    )
    .map_err(|e| staging.in_output_terms(e))?;
    let after = measure(&new_spec, &new_weights, written.weights())?;
    let mut run = PruneRun {
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
        out: ModelDir::new(&out_path),
    };
    write_record(cfg, &run, &source_hash, &written).map_err(|e| staging.in_output_terms(e))?;
    staging.commit()?;
    drop(claimed);
    // After the commit: an output named like a weights file is a directory.
    run.out = ModelDir::new(&out_path);
    Ok(run)
}

/// Refuses, for unstructured pruning, chosen layers with no weight it
/// prunes (a normalisation's scale and shift): nothing would be pruned
/// while the record said otherwise.
fn check_unstructured_layers(spec: &ModelSpec, sel: &LayerSelection) -> Result<()> {
    if let LayerSelection::Some(chosen) = sel {
        let idx = spec.torch_indices();
        if let Some(&li) = chosen
            .iter()
            .find(|&&li| spec.prunable_weights(li).is_empty())
        {
            return Err(Error::Config {
                field: "layers".into(),
                message: format!(
                    "layers.{} has no weights l1-unstructured prunes (a normalisation's scale \
                     and shift are not pruned); name layers with weight matrices or kernels",
                    idx[li]
                ),
            });
        }
    }
    Ok(())
}

/// Writes `prune.json` into `dir`: the config, the source and the numbers
/// after.
fn write_record(
    cfg: &PruneConfig,
    run: &PruneRun,
    source_hash: &str,
    dir: &ModelDir,
) -> Result<()> {
    let record = serde_json::json!({
        "source": cfg.model.display().to_string(),
        "source_spec": run.source_spec.to_string(),
        "source_weights_xxh3": source_hash,
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
    atomic_write(&dir.prune_report(), text.as_bytes())
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
            overwrite: false,
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
        // The source is its weights: a copy elsewhere is the same source,
        // other weights are not.
        let copy = tmp.path().join("copy");
        write_model(&copy, &spec, &w, None, None).unwrap();
        prune_model(
            &config(&copy, Method::Unstructured, &tmp.path().join("p")),
            no_accuracy,
        )
        .unwrap();
        let other_weights = tmp.path().join("m3");
        write_model(
            &other_weights,
            &spec,
            &host(&spec, |_, i| 2.0 + i as f32),
            None,
            None,
        )
        .unwrap();
        let e = prune_model(
            &config(&other_weights, Method::Unstructured, &tmp.path().join("p")),
            no_accuracy,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("its source is"), "{e}");
        // Other settings need `overwrite`; the earlier model is kept until then.
        let p = tmp.path().join("p");
        let mut other = config(&m, Method::Structured, &p);
        let kept = std::fs::read(p.join("mask.safetensors")).unwrap();
        let e = prune_model(&other, no_accuracy).unwrap_err().to_string();
        assert!(
            e.contains("earlier pruned model of other settings")
                && e.contains("its method is \"l1-unstructured\", here \"l1-structured\"")
                && e.contains("`overwrite`"),
            "{e}"
        );
        assert_eq!(std::fs::read(p.join("mask.safetensors")).unwrap(), kept);
        other.overwrite = true;
        prune_model(&other, no_accuracy).unwrap();
        assert!(!p.join("mask.safetensors").exists());
        // Nothing staged is left beside the output.
        let names: Vec<String> = std::fs::read_dir(tmp.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "{names:?}");
        // Files prune does not write, and a file as the output, are refused.
        std::fs::write(p.join("notes.txt"), b"mine").unwrap();
        let e = prune_model(&other, no_accuracy).unwrap_err().to_string();
        assert!(e.contains("notes.txt"), "{e}");
        assert_eq!(std::fs::read(p.join("notes.txt")).unwrap(), b"mine");
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        let e = prune_model(
            &config(&m, Method::Unstructured, &tmp.path().join("f")),
            no_accuracy,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("is a file"), "{e}");
        // An output named like a weights file is a new directory all the same.
        let cfg = config(&m, Method::Unstructured, &tmp.path().join("q.safetensors"));
        prune_model(&cfg, no_accuracy).unwrap();
        assert!(tmp.path().join("q.safetensors/model.safetensors").exists());
    }

    /// The lock beside an output exists only while a run holds it: a run
    /// refused for its arguments creates nothing, a finished one leaves its
    /// output alone, and lock files are not taken for foreign content.
    #[test]
    fn runs_leave_no_lock_behind_and_lock_files_are_not_foreign() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("mlp:3-4-2").unwrap();
        let w = host(&spec, |_, i| 1.0 + i as f32);
        let m = tmp.path().join("m");
        write_model(&m, &spec, &w, None, None).unwrap();
        let no_accuracy = |_: &Network<Cpu>, _: &Dataset| -> Result<Option<f64>> { Ok(None) };
        let names = |dir: &Path| {
            let mut n: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            n.sort();
            n
        };
        // Refused: the source as the output, a sparsity that empties a layer
        // (8 weights in layers.2), structured pruning of the output layer.
        let mut empties = config(&m, Method::Unstructured, &tmp.path().join("p"));
        empties.amount = PruneAmount::Sparsity(0.99);
        let mut output_layer = config(&m, Method::Structured, &tmp.path().join("p"));
        output_layer.layers = Some("layers.2".into());
        for cfg in [config(&m, Method::Unstructured, &m), empties, output_layer] {
            prune_model(&cfg, no_accuracy).unwrap_err();
            assert_eq!(names(tmp.path()), ["m"]);
        }
        let cfg = config(&m, Method::Unstructured, &tmp.path().join("sub/p"));
        prune_model(&cfg, no_accuracy).unwrap();
        assert_eq!(names(tmp.path()), ["m", "sub"]);
        assert_eq!(names(&tmp.path().join("sub")), ["p"]);
        // A lock file a killed run left beside the output is taken over and
        // removed; one inside the output is a dead run's, not foreign.
        std::fs::write(tmp.path().join("sub/.p.lock"), b"").unwrap();
        std::fs::write(tmp.path().join("sub/p/.x.lock"), b"").unwrap();
        prune_model(&cfg, no_accuracy).unwrap();
        assert_eq!(names(&tmp.path().join("sub")), ["p"]);
        assert!(!tmp.path().join("sub/p/.x.lock").exists());
        // The parent as an output: its lock files are not listed, the model
        // directory is.
        std::fs::write(tmp.path().join("sub/.p.lock"), b"").unwrap();
        let parent = config(&m, Method::Unstructured, &tmp.path().join("sub"));
        let e = prune_model(&parent, no_accuracy).unwrap_err().to_string();
        assert!(e.contains("does not write (p)"), "{e}");
        // A lock file another process holds inside the output: refused.
        let held = crate::fsutil::try_lock_exclusive(&tmp.path().join("sub/p/.x.lock"))
            .unwrap()
            .unwrap();
        let e = prune_model(&cfg, no_accuracy).unwrap_err().to_string();
        assert!(
            e.contains("being written by another distill command") && e.contains(".x.lock"),
            "{e}"
        );
        drop(held);
        prune_model(&cfg, no_accuracy).unwrap();
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

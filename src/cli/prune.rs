//! The compression commands of the CLI: `distill prune`, the `--init-from`
//! part of `distill train` (parameter transfer, and fine-tuning of pruned
//! models with their masks), and the comparison table of `distill eval`.
//! The logic lives in [`distill::prune`]; this file reads and writes model
//! directories and prints.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::Args;
use dfdx::prelude::*;

use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::io::{read_safetensors, write_safetensors, HostTensor, SPEC_KEY};
use distill::model::{Backend, ModelSpec, Network};
use distill::prune::{self, LayerSelection, MASK_FILE};

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

/// `distill prune`.
#[derive(Args)]
pub struct PruneArgs {
    /// Model directory (model.safetensors, and mask.safetensors if already pruned).
    #[arg(long)]
    model: PathBuf,
    /// l1-unstructured (zero the smallest weights, save a mask) or
    /// l1-structured (remove whole units/channels: a smaller spec).
    #[arg(long)]
    method: String,
    /// Fraction to remove, in [0, 1): of each layer's weights (unstructured,
    /// or of all selected weights with --global), or of each hidden layer's
    /// units/channels (structured).
    #[arg(long)]
    sparsity: f64,
    /// Comma-separated layers to prune, e.g. layers.0,layers.3 (default: all
    /// with weights; structured never prunes the output layer).
    #[arg(long)]
    layers: Option<String>,
    /// Unstructured: one magnitude threshold over all selected layers.
    #[arg(long)]
    global: bool,
    /// Output directory (model.safetensors, mask.safetensors, prune.json).
    #[arg(long)]
    out: PathBuf,
    /// Dataset directory: report test accuracy before and after.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print only the summary table.
    #[arg(long, short)]
    quiet: bool,
}

/// A student initialised from another model (`train --init-from`).
pub struct InitFrom {
    /// The student spec (the given one, or the source model's).
    pub spec: String,
    /// Its initial weights, PyTorch layout.
    pub tensors: Vec<HostTensor>,
    /// The source model's pruning masks, to keep fixed while training.
    pub masks: Option<Vec<HostTensor>>,
}

fn weights_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("model.safetensors")
    } else {
        path.to_path_buf()
    }
}

/// Reads a model directory's spec and tensors (PyTorch layout).
fn read_model(path: &Path) -> Result<(ModelSpec, Vec<HostTensor>)> {
    let file = weights_file(path);
    let (meta, tensors) = read_safetensors(&file)?;
    let text = meta.get(SPEC_KEY).ok_or_else(|| Error::Model {
        path: file.clone(),
        message: format!("no '{SPEC_KEY}' metadata: not a distill model"),
    })?;
    let spec = ModelSpec::parse(text)?;
    // Validates names and shapes against the spec.
    let mut net = Network::new(spec.clone(), Cpu::default(), 0);
    net.load_host(&tensors, &file)?;
    Ok((spec, net.to_host()))
}

/// The masks saved beside a model, if any.
fn read_masks(path: &Path) -> Result<Option<Vec<HostTensor>>> {
    let file = if path.is_dir() {
        path.join(MASK_FILE)
    } else {
        path.with_file_name(MASK_FILE)
    };
    if !file.exists() {
        return Ok(None);
    }
    Ok(Some(read_safetensors(&file)?.1))
}

/// Builds the initial weights of `train --init-from DIR`.
pub fn init_from(dir: &Path, student: Option<&str>, seed: u64, quiet: bool) -> Result<InitFrom> {
    let (t_spec, teacher) = read_model(dir)?;
    let s_spec = match student {
        Some(s) => ModelSpec::parse(s)?,
        None => t_spec.clone(),
    };
    // The same initialisation the trainer would draw, for what stays random.
    let mut tensors = Network::new(s_spec.clone(), Cpu::default(), seed).to_host();
    let report =
        prune::transfer(&t_spec, &teacher, &s_spec, &mut tensors).map_err(|e| Error::Config {
            field: "--init-from".into(),
            message: format!("{}: {e}", dir.display()),
        })?;
    let masks = read_masks(dir)?;
    if let Some(m) = &masks {
        if s_spec != t_spec {
            return Err(Error::Config {
                field: "--init-from".into(),
                message: format!(
                    "{} holds a pruning mask for {t_spec}; a masked model initialises only the same spec (omit --student)",
                    dir.display()
                ),
            });
        }
        // Validates the masks against the spec before training starts.
        prune::StoreMasks::new(
            &Network::new(s_spec.clone(), Cpu::default(), 0),
            m,
            &dir.join(MASK_FILE),
        )?;
    }
    if !quiet {
        eprintln!(
            "initialising {s_spec} from {} ({t_spec}):\n{report}",
            dir.display()
        );
        if let Some(m) = &masks {
            let total: usize = m.iter().map(|t| t.data.len()).sum();
            let pruned = total as u64 - prune::count_nonzero(m);
            eprintln!("  mask: {pruned} of {total} weights pruned, kept at zero while training");
        }
    }
    Ok(InitFrom {
        spec: s_spec.to_string(),
        tensors,
        masks,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Unstructured,
    Structured,
}

/// One column of the before/after table.
struct Summary {
    params: u64,
    nonzero: u64,
    bytes: u64,
    flops: u64,
    nz_flops: u64,
    accuracy: Option<f64>,
}

fn summarize(
    spec: &ModelSpec,
    tensors: &[HostTensor],
    file: &Path,
    test: Option<&Dataset>,
) -> Result<Summary> {
    let accuracy = match test {
        Some(d) => {
            let mut net = Network::new(spec.clone(), Cpu::default(), 0);
            net.load_host(tensors, file)?;
            distill::train::eval::evaluate(&net, d, 1000)?.accuracy
        }
        None => None,
    };
    Ok(Summary {
        params: spec.param_count(),
        nonzero: prune::count_nonzero(tensors),
        bytes: fs::metadata(file).map_err(|e| Error::io(file, e))?.len(),
        flops: spec.flops(),
        nz_flops: prune::effective_flops(spec, tensors),
        accuracy,
    })
}

/// `distill prune`.
pub fn run(a: PruneArgs) -> Result<()> {
    let method = match a.method.as_str() {
        "l1-unstructured" => Method::Unstructured,
        "l1-structured" => Method::Structured,
        other => {
            return Err(Error::Config {
                field: "--method".into(),
                message: format!("'{other}' is not one of l1-unstructured, l1-structured"),
            })
        }
    };
    if !(a.sparsity.is_finite() && (0.0..1.0).contains(&a.sparsity)) {
        return Err(Error::Config {
            field: "--sparsity".into(),
            message: format!("{} must be in [0, 1) (0.5 removes half)", a.sparsity),
        });
    }
    if a.global && method == Method::Structured {
        return Err(Error::Config {
            field: "--global".into(),
            message: "applies to l1-unstructured only".into(),
        });
    }
    let (spec, weights) = read_model(&a.model)?;
    let old_masks = read_masks(&a.model)?;
    if let Some(m) = &old_masks {
        let file = weights_file(&a.model).with_file_name(MASK_FILE);
        prune::StoreMasks::new(&Network::new(spec.clone(), Cpu::default(), 0), m, &file)?;
    }
    let sel = match &a.layers {
        Some(text) => LayerSelection::parse(text, &spec)?,
        None => LayerSelection::All,
    };
    let test = match &a.data {
        Some(dir) => Some(Dataset::open(dir, Split::Test)?),
        None => None,
    };
    let before = summarize(&spec, &weights, &weights_file(&a.model), test.as_ref())?;
    let (new_spec, new_weights, masks) = match method {
        Method::Unstructured => {
            let mut w = weights.clone();
            // An earlier mask stays in force.
            let masks = prune::grow_masks(
                &spec,
                &mut w,
                old_masks.as_deref(),
                a.sparsity,
                &sel,
                a.global,
            )?;
            (spec.clone(), w, Some(masks))
        }
        Method::Structured => {
            let small = prune::structured(&spec, &weights, old_masks.as_deref(), a.sparsity, &sel)?;
            if !a.quiet {
                eprintln!(
                    "structured pruning {spec} -> {}:\n{}",
                    small.spec, small.report
                );
                if let Some(m) = &small.masks {
                    let total: usize = m.iter().map(|t| t.data.len()).sum();
                    let kept = prune::count_nonzero(m);
                    eprintln!(
                        "  the source's mask is carried over: {} of {total} remaining weights stay pruned",
                        total as u64 - kept
                    );
                }
            }
            (small.spec, small.weights, small.masks)
        }
    };
    fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let file = a.out.join("model.safetensors");
    let mut meta = HashMap::new();
    meta.insert(SPEC_KEY.to_string(), new_spec.to_string());
    write_safetensors(&file, &new_weights, meta.clone())?;
    let mask_file = a.out.join(MASK_FILE);
    match &masks {
        Some(m) => write_safetensors(&mask_file, m, meta)?,
        None if mask_file.exists() => {
            fs::remove_file(&mask_file).map_err(|e| Error::io(&mask_file, e))?
        }
        None => {}
    }
    let after = summarize(&new_spec, &new_weights, &file, test.as_ref())?;
    let record = serde_json::json!({
        "source": a.model.display().to_string(),
        "source_spec": spec.to_string(),
        "method": a.method,
        "sparsity": a.sparsity,
        "layers": a.layers,
        "global": a.global,
        "spec": new_spec.to_string(),
        "parameters": after.params,
        "nonzero": after.nonzero,
        "flops_per_sample": after.flops,
        "nonzero_flops_per_sample": after.nz_flops,
        "test_accuracy_before": before.accuracy,
        "test_accuracy_after": after.accuracy,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
    });
    let text = serde_json::to_string_pretty(&record).unwrap_or_default();
    distill::model::io::atomic_write(&a.out.join("prune.json"), text.as_bytes())?;
    let acc = |s: &Summary| {
        s.accuracy
            .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
    };
    println!("{:<22} {:>14} {:>14}", "", "before", "after");
    println!("{:<22} {:>14} {:>14}", "spec", "", new_spec.to_string());
    for (label, b, f) in [
        ("parameters", before.params, after.params),
        ("non-zero parameters", before.nonzero, after.nonzero),
        ("size on disk (bytes)", before.bytes, after.bytes),
        ("FLOPs/sample", before.flops, after.flops),
        ("non-zero FLOPs/sample", before.nz_flops, after.nz_flops),
    ] {
        println!("{label:<22} {b:>14} {f:>14}");
    }
    println!(
        "{:<22} {:>14} {:>14}",
        "test accuracy",
        acc(&before),
        acc(&after)
    );
    println!("written to {}", a.out.display());
    Ok(())
}

/// Seconds per sample of `net` at batch size `batch` (`reps` timed passes
/// after one warm-up), on the first samples of `data`.
fn latency<D: Backend>(net: &Network<D>, data: &Dataset, batch: usize, reps: usize) -> f64 {
    let b = batch.min(data.len()).max(1);
    let idx: Vec<usize> = (0..b).map(|i| i % data.len().max(1)).collect();
    let mut buf = vec![0f32; b * data.sample_len()];
    if !data.is_empty() {
        data.fill_inputs(&idx, &mut buf);
    }
    let _ = net.predict(buf.clone(), b).as_vec();
    let start = Instant::now();
    for _ in 0..reps {
        let _ = net.predict(buf.clone(), b).as_vec();
    }
    start.elapsed().as_secs_f64() / (reps * b) as f64
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// `distill eval --model A --model B ...`: one row per model.
pub fn eval_table<D: Backend>(
    dev: D,
    models: &[PathBuf],
    data: &Dataset,
    batch: usize,
) -> Result<()> {
    println!(
        "{:<36} {:>9} {:>8} {:>11} {:>11} {:>10} {:>12} {:>10} {:>11}",
        "model",
        "accuracy",
        "loss",
        "parameters",
        "non-zeros",
        "size",
        "FLOPs",
        "ms/smp@1",
        "ms/smp@256"
    );
    for m in models {
        let file = weights_file(m);
        let net = super::load_model(m, dev.clone())?;
        let r = distill::train::eval::evaluate(&net, data, batch)?;
        let nonzero = prune::count_nonzero(&net.to_host());
        let bytes = fs::metadata(&file).map_err(|e| Error::io(&file, e))?.len();
        let l1 = latency(&net, data, 1, 200);
        let l256 = latency(&net, data, 256, 4);
        println!(
            "{:<36} {:>9} {:>8} {:>11} {:>11} {:>10} {:>12} {:>10.4} {:>11.4}",
            m.display().to_string(),
            r.accuracy
                .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x)),
            r.loss.map_or("-".into(), |x| format!("{x:.4}")),
            net.spec().param_count(),
            nonzero,
            human_bytes(bytes),
            net.spec().flops(),
            1e3 * l1,
            1e3 * l256
        );
    }
    Ok(())
}

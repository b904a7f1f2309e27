//! The compression commands of the CLI: `distill prune`, and the
//! `--init-from` part of `distill train` (parameter transfer, and
//! fine-tuning of pruned models with their masks).
//! The work lives in [`distill::prune`] and [`distill::train::compare`]; this
//! file turns flags into a [`PruneConfig`] and prints.

use std::path::{Path, PathBuf};

use clap::{ArgGroup, Args};

use distill::error::Result;
use distill::prune::{self, InitFrom, MaskCount, PruneAmount, PruneConfig, Summary};
use distill::train::compare;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

/// `distill prune`.
#[derive(Args)]
#[command(group(ArgGroup::new("amount").required(true).args(["sparsity", "max_params"])))]
pub struct PruneArgs {
    /// Model directory (model.safetensors, and mask.safetensors if already pruned).
    #[arg(long)]
    model: PathBuf,
    /// l1-unstructured (zero the smallest weights, save a mask) or
    /// l1-structured (remove whole units/channels of hidden layers: a
    /// smaller spec; a model without hidden layers is refused).
    #[arg(long)]
    method: String,
    /// Fraction to remove, in [0, 1): of each layer's weights (unstructured,
    /// or of all selected weights with --global), or of each hidden layer's
    /// units/channels (structured).
    #[arg(long, allow_negative_numbers = true)]
    sparsity: Option<f64>,
    /// Structured, instead of --sparsity: a parameter budget. The least
    /// sparsity (in thousandths) whose smaller spec has at most this many
    /// parameters, e.g. --max-params 10000.
    #[arg(long)]
    max_params: Option<u64>,
    /// Comma-separated layers to prune, e.g. layers.0,layers.3 (default: all
    /// with weights; structured prunes hidden dense layers, convolutions and
    /// residual blocks only, never the output layer).
    #[arg(long)]
    layers: Option<String>,
    /// Unstructured: one magnitude threshold over all selected layers.
    #[arg(long)]
    global: bool,
    /// Output directory (model.safetensors, mask.safetensors, model.py,
    /// prune.json), written whole or not at all. A rerun of the same
    /// settings replaces it; an earlier pruned model of other settings there
    /// is kept unless --overwrite.
    #[arg(long)]
    out: PathBuf,
    /// Replace an earlier pruned model of other settings in --out.
    #[arg(long)]
    overwrite: bool,
    /// Dataset directory: report test accuracy before and after.
    #[arg(long)]
    data: Option<PathBuf>,
    /// Print only the summary table.
    #[arg(long, short)]
    quiet: bool,
}

/// Builds the initial weights of `train --init-from DIR`, and says how
/// unless `quiet`.
pub fn init_from(dir: &Path, student: Option<&str>, seed: u64, quiet: bool) -> Result<InitFrom> {
    let init = prune::init_from(dir, student, seed)?;
    if !quiet {
        eprintln!(
            "initialising {} from {} ({}):\n{}",
            init.spec,
            dir.display(),
            init.source_spec,
            init.report
        );
        if let Some(m) = &init.masks {
            let c = MaskCount::of(m);
            eprintln!(
                "  mask: {} of {} weights pruned, kept at zero while training",
                c.pruned, c.total
            );
        }
    }
    Ok(init)
}

/// `distill prune`.
pub fn run(a: PruneArgs) -> Result<()> {
    let cfg = PruneConfig {
        method: a.method.parse()?,
        model: a.model,
        amount: match (a.max_params, a.sparsity) {
            (Some(n), _) => PruneAmount::MaxParams(n),
            // clap requires exactly one of the two (the group `amount`).
            (None, s) => PruneAmount::Sparsity(s.unwrap_or(f64::NAN)),
        },
        layers: a.layers,
        global: a.global,
        out: a.out,
        data: a.data,
        command: super::command_line(),
        overwrite: a.overwrite,
    };
    let done = prune::prune_model(&cfg, compare::test_accuracy)?;
    if let (PruneAmount::MaxParams(n), false) = (cfg.amount, a.quiet) {
        eprintln!(
            "sparsity {:.3}: the least that brings {} to at most {n} parameters",
            done.sparsity, done.source_spec
        );
    }
    if let (Some(report), false) = (&done.report, a.quiet) {
        eprintln!(
            "structured pruning {} -> {}:\n{report}",
            done.source_spec, done.spec
        );
        if let Some(c) = done.carried_mask {
            eprintln!(
                "  the source's mask is carried over: {} of {} remaining weights stay pruned",
                c.pruned, c.total
            );
        }
    }
    let (before, after) = (&done.before, &done.after);
    let acc = |s: &Summary| {
        s.accuracy
            .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x))
    };
    println!("{:<22} {:>14} {:>14}", "", "before", "after");
    println!("{:<22} {:>14} {:>14}", "spec", "", done.spec.to_string());
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
        acc(before),
        acc(after)
    );
    println!("written to {}", cfg.out.display());
    Ok(())
}

//! `distill eval`: accuracy, loss and speed of one or more models, on a
//! split or on the validation images the models held out, and with two or
//! more models each against the first, image by image (McNemar's test).

use std::path::PathBuf;

use clap::Args;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::compat::check_compatible;
use distill::model::{Backend, ModelDir};
use distill::train::compare;
use distill::train::paired::PairedComparison;
use distill::train::validation::held_out_by_model;

use super::device::DeviceArgs;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (model.safetensors + model.json); repeat to compare.
    #[arg(long, required = true)]
    model: Vec<PathBuf>,
    /// Dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// train, test, or val: the validation images of the training split the
    /// models held out (their cards' --val-fraction or --val-fold and seed;
    /// every model must have held out the same images).
    #[arg(long, default_value = "test", value_parser = parse_eval_split)]
    split: EvalSplit,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

/// The images `distill eval` scores.
#[derive(Clone, Copy, Debug)]
enum EvalSplit {
    /// A whole split of the dataset.
    Whole(Split),
    /// The training images the models held out.
    Val,
}

fn parse_eval_split(s: &str) -> std::result::Result<EvalSplit, String> {
    match s {
        "val" => Ok(EvalSplit::Val),
        _ => s
            .parse()
            .map(EvalSplit::Whole)
            .map_err(|_| format!("'{s}' is not one of train, test, val")),
    }
}

pub fn eval<D: Backend>(dev: D, a: EvalArgs) -> Result<()> {
    let (data, indices, heading) = match a.split {
        EvalSplit::Whole(split) => {
            let data = Dataset::open(&a.data, split)?;
            let all: Vec<usize> = (0..data.len()).collect();
            (data, all, None)
        }
        EvalSplit::Val => {
            let data = Dataset::open(&a.data, Split::Train)?;
            let indices = shared_validation(&a.model, &data)?;
            let heading = format!(
                "validation: the {} training images {} held out",
                indices.len(),
                if a.model.len() > 1 {
                    "these models"
                } else {
                    "the model"
                }
            );
            (data, indices, Some(heading))
        }
    };
    eval_table(dev, &a.model, &data, &indices, heading, a.batch)
}

/// The validation images every model in `models` held out of `data` (the
/// training split), from their cards; a model that held out other images,
/// or none, is refused by name.
fn shared_validation(models: &[PathBuf], data: &Dataset) -> Result<Vec<usize>> {
    let fingerprint = &data.fingerprint().0;
    let mut shared: Option<(&PathBuf, Vec<usize>)> = None;
    for m in models {
        let split = held_out_by_model(m, fingerprint, data.len())?;
        match &shared {
            None => shared = Some((m, split.indices().to_vec())),
            Some((first, indices)) if indices.as_slice() != split.indices() => {
                return Err(Error::Model {
                    path: ModelDir::new(m).card(),
                    message: format!(
                        "held out other validation images than {} ({} against {} images, or another seed): --split val compares models on the same held-out images; train them with the same --val-seed and --val-fraction",
                        first.display(),
                        split.len(),
                        indices.len()
                    ),
                });
            }
            Some(_) => {}
        }
    }
    Ok(shared.map(|(_, i)| i).unwrap_or_default())
}

/// One row per model (under `heading`, when given), printed as each is
/// measured, then each model against the first, image by image. Every model is loaded and checked against the
/// data first, so a missing or unfit model is an error before any table is
/// printed.
fn eval_table<D: Backend>(
    dev: D,
    models: &[PathBuf],
    data: &Dataset,
    indices: &[usize],
    heading: Option<String>,
    batch: usize,
) -> Result<()> {
    let mut loaded = Vec::with_capacity(models.len());
    for m in models {
        let dir = ModelDir::new(m);
        let net = dir.load(dev.clone())?;
        check_compatible(&net, data)?;
        loaded.push((m, dir, net));
    }
    if let Some(h) = heading {
        println!("{h}");
    }
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
    let mut predictions = Vec::with_capacity(loaded.len());
    for (m, dir, net) in &loaded {
        let r = compare::measure_samples(dir, net, data, indices, batch)?;
        println!(
            "{:<36} {:>9} {:>8} {:>11} {:>11} {:>10} {:>12} {:>10.4} {:>11.4}",
            m.display().to_string(),
            r.accuracy
                .map_or("-".into(), |x| format!("{:.2}%", 100.0 * x)),
            r.loss.map_or("-".into(), |x| format!("{x:.4}")),
            r.params,
            r.nonzero,
            human_bytes(r.bytes),
            r.flops,
            1e3 * r.latency_1,
            1e3 * r.latency_256
        );
        predictions.push(r.predictions);
    }
    if let (Some(labels), Some(first)) = (data.labels(), predictions.first()) {
        if loaded.len() > 1 {
            let labels: Vec<u32> = indices.iter().map(|&i| labels[i]).collect();
            print_paired(models, first, &predictions[1..], &labels)?;
        }
    }
    Ok(())
}

/// Each model against the first on the same images: the difference in
/// accuracy, the images only one of the two gets right, the difference's
/// 95% interval and McNemar's exact p-value.
fn print_paired(
    models: &[PathBuf],
    first: &[u32],
    others: &[Vec<u32>],
    labels: &[u32],
) -> Result<()> {
    println!();
    println!(
        "against {} on the same {} images (difference in points; McNemar's exact test; interval: normal approximation):",
        models[0].display(),
        labels.len()
    );
    println!(
        "{:<36} {:>10} {:>13} {:>13} {:>20} {:>10}",
        "model", "difference", "only it right", "only first", "95% interval", "p"
    );
    for (m, p) in models[1..].iter().zip(others) {
        let c = PairedComparison::of(first, p, labels)?;
        let (lo, hi) = c.ci95();
        println!(
            "{:<36} {:>+10.2} {:>13} {:>13} {:>20} {:>10.4}",
            m.display().to_string(),
            100.0 * c.difference(),
            c.only_b,
            c.only_a,
            format!("[{:+.2}, {:+.2}]", 100.0 * lo, 100.0 * hi),
            c.mcnemar_p()
        );
    }
    Ok(())
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

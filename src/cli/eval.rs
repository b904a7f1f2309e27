//! `distill eval`: accuracy, loss and speed of one or more models, on a
//! split or on the validation images the models held out, and with two or
//! more models each against the first, image by image (McNemar's test).
//! With `--arm NAME=RUN,RUN,...` the models are the runs (seeds) of
//! recipes, and each recipe is compared with each one listed before it, over
//! images and over seeds ([`distill::train::paired::PooledComparison`]).

use std::path::PathBuf;

use clap::Args;
use distill::data::{Dataset, Split};
use distill::error::{Error, Result};
use distill::model::compat::check_compatible;
use distill::model::{Backend, ModelDir};
use distill::train::card::ModelCard;
use distill::train::compare;
use distill::train::paired::{self, PairedComparison};
use distill::train::recipes::{seed_order, RunScores};
use distill::train::validation::held_out_by_model;

use super::device::DeviceArgs;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

#[derive(Args)]
pub struct EvalArgs {
    /// Model directory (model.safetensors, with model.json or prune.json
    /// beside it) or a .safetensors file; repeat to compare.
    #[arg(long, required_unless_present = "arm", conflicts_with = "arm")]
    model: Vec<PathBuf>,
    /// A recipe's runs (its seeds) as NAME=RUN,RUN,...; repeat for each
    /// recipe. Every run is scored, and each recipe is compared with each
    /// one listed before it: over images, and over seeds when both have the
    /// same seeds.
    #[arg(long, value_parser = parse_arm)]
    arm: Vec<Arm>,
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

/// One recipe's runs, from `--arm NAME=RUN,RUN,...`.
#[derive(Clone, Debug)]
struct Arm {
    name: String,
    runs: Vec<PathBuf>,
}

fn parse_arm(s: &str) -> std::result::Result<Arm, String> {
    let (name, runs) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}' is not NAME=RUN,RUN,... (no '=')"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err(format!("'{s}' has no recipe name before '='"));
    }
    let runs: Vec<PathBuf> = runs
        .split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .map(PathBuf::from)
        .collect();
    if runs.is_empty() {
        return Err(format!("recipe '{name}' lists no runs after '='"));
    }
    Ok(Arm {
        name: name.to_string(),
        runs,
    })
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
    distill::model::compat::check_batch_size("--batch", a.batch)?;
    if let Some(dup) = a
        .arm
        .iter()
        .enumerate()
        .find(|(i, x)| a.arm[..*i].iter().any(|y| y.name == x.name))
    {
        return Err(Error::Config {
            field: "--arm".into(),
            message: format!("recipe '{}' is named twice", dup.1.name),
        });
    }
    // A run listed twice would count as two seeds of agreeing results.
    let mut seen: Vec<(PathBuf, &str)> = Vec::new();
    for arm in &a.arm {
        for run in &arm.runs {
            let key = run.canonicalize().unwrap_or_else(|_| run.clone());
            if let Some((_, first)) = seen.iter().find(|(k, _)| *k == key) {
                return Err(Error::Config {
                    field: "--arm".into(),
                    message: format!(
                        "{} is listed twice (in recipe '{first}' and '{}'): each run is one seed \
                         of one recipe",
                        run.display(),
                        arm.name
                    ),
                });
            }
            seen.push((key, &arm.name));
        }
    }
    // Each run's seed, from its card: read before any model is scored, so a
    // damaged card is refused before the work, not after it.
    let seeds: Vec<Vec<Option<u64>>> = a
        .arm
        .iter()
        .map(|x| x.runs.iter().map(|r| card_seed(r)).collect())
        .collect::<Result<_>>()?;
    let models: Vec<PathBuf> = if a.arm.is_empty() {
        a.model.clone()
    } else {
        a.arm.iter().flat_map(|x| x.runs.iter().cloned()).collect()
    };
    let (data, images, heading) = match a.split {
        EvalSplit::Whole(split) => {
            let data = Dataset::open(&a.data, split)?;
            let all: Vec<usize> = (0..data.len()).collect();
            (data, Images::Same(all), None)
        }
        EvalSplit::Val => {
            let data = Dataset::open(&a.data, Split::Train)?;
            let held = held_out_each(&models, &data)?;
            match shared_validation(&models, &held) {
                Ok(indices) => {
                    let heading = format!(
                        "validation: the {} training images {} held out",
                        indices.len(),
                        if models.len() > 1 {
                            "these models"
                        } else {
                            "the model"
                        }
                    );
                    (data, Images::Same(indices), Some(heading))
                }
                // Recipes whose seeds each held out their own images are
                // still compared over seeds.
                Err(_) if !a.arm.is_empty() => (
                    data,
                    Images::Own(held),
                    Some(
                        "validation: each run on the training images it held out (these runs held out different images; recipes are compared over seeds only, between runs that held out the same ones)"
                            .to_string(),
                    ),
                ),
                Err(e) => return Err(e),
            }
        }
    };
    let per_model: Vec<&[usize]> = match &images {
        Images::Same(i) => vec![i.as_slice(); models.len()],
        Images::Own(h) => h.iter().map(Vec::as_slice).collect(),
    };
    let predictions = eval_table(dev, &models, &data, &per_model, heading, a.batch)?;
    let Some(all_labels) = data.labels() else {
        return Ok(());
    };
    let labels_of = |idx: &[usize]| -> Vec<u32> { idx.iter().map(|&i| all_labels[i]).collect() };
    if a.arm.is_empty() {
        if models.len() > 1 {
            let labels = labels_of(per_model[0]);
            print_paired(&models, &predictions[0], &predictions[1..], &labels)?;
        }
        return Ok(());
    }
    // Split the runs back into their recipes.
    let mut runs = predictions.into_iter().zip(per_model);
    let by_arm: Vec<Vec<(Vec<u32>, &[usize])>> = a
        .arm
        .iter()
        .map(|x| runs.by_ref().take(x.runs.len()).collect())
        .collect();
    let scores = match &images {
        Images::Same(indices) => RunScores::SameImages {
            predictions: by_arm
                .into_iter()
                .map(|r| r.into_iter().map(|(p, _)| p).collect())
                .collect(),
            labels: labels_of(indices),
        },
        Images::Own(_) => RunScores::OwnImages {
            accuracy: by_arm
                .iter()
                .map(|r| {
                    r.iter()
                        .map(|(p, idx)| paired::accuracy(p, &labels_of(idx)))
                        .collect()
                })
                .collect(),
            images: by_arm
                .iter()
                .map(|r| r.iter().map(|(_, idx)| idx.to_vec()).collect())
                .collect(),
        },
    };
    print_arms(&a.arm, &seeds, &scores)
}

/// The images the models are scored on.
enum Images {
    /// The same images for every model.
    Same(Vec<usize>),
    /// Each model's own (the validation images it held out).
    Own(Vec<Vec<usize>>),
}

/// The validation images each model held out of `data` (the training
/// split), from their cards; a model that held out none is refused by name.
fn held_out_each(models: &[PathBuf], data: &Dataset) -> Result<Vec<Vec<usize>>> {
    let fingerprint = &data.fingerprint().0;
    models
        .iter()
        .map(|m| {
            Ok(held_out_by_model(m, fingerprint, data.len())?
                .indices()
                .to_vec())
        })
        .collect()
}

/// The validation images every model in `models` held out (`held`, in the
/// same order), when they are the same images; a model that held out other
/// images is refused by name.
fn shared_validation(models: &[PathBuf], held: &[Vec<usize>]) -> Result<Vec<usize>> {
    let Some(first) = held.first() else {
        return Ok(Vec::new());
    };
    if let Some((m, other)) = models.iter().zip(held).find(|(_, h)| *h != first) {
        return Err(Error::Model {
            path: ModelDir::new(m).card(),
            message: format!(
                "held out other validation images than {} ({} against {} images, or another seed): --split val compares models on the same held-out images; train them with the same --val-seed and --val-fraction",
                models[0].display(),
                other.len(),
                first.len()
            ),
        });
    }
    Ok(first.clone())
}

/// One row per model (under `heading`, when given), printed as each is
/// measured on its `indices` (one list per model); returns each model's
/// predictions. Every model is
/// loaded and checked against the data first, so a missing or unfit model is
/// an error before any table is printed.
fn eval_table<D: Backend>(
    dev: D,
    models: &[PathBuf],
    data: &Dataset,
    indices: &[&[usize]],
    heading: Option<String>,
    batch: usize,
) -> Result<Vec<Vec<u32>>> {
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
    for ((m, dir, net), indices) in loaded.iter().zip(indices) {
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
    Ok(predictions)
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

/// Each recipe's runs summarised, then each recipe against each one listed
/// before it: the difference of the runs' mean accuracies, its interval and
/// p-value over images (runs scored on the same images), and, with the runs
/// paired by seed, each seed's difference and the interval over seeds.
fn print_arms(arms: &[Arm], seeds: &[Vec<Option<u64>>], scores: &RunScores) -> Result<()> {
    println!();
    match scores {
        RunScores::SameImages { labels, .. } => println!(
            "recipes on the same {} images (accuracy: the mean of the runs; sd: between the runs):",
            labels.len()
        ),
        RunScores::OwnImages { .. } => println!(
            "recipes, each run on its own held-out images (accuracy: the mean of the runs; sd: between the runs):"
        ),
    }
    println!(
        "{:<24} {:>5} {:>9} {:>6}   seeds",
        "recipe", "runs", "accuracy", "sd"
    );
    for (k, (x, s)) in arms.iter().zip(seeds).enumerate() {
        let accuracy = scores.accuracy(k);
        let sd = paired::sample_variance(&accuracy).map(f64::sqrt);
        println!(
            "{:<24} {:>5} {:>8.2}% {:>6}   {}",
            x.name,
            x.runs.len(),
            100.0 * paired::mean(&accuracy),
            sd.map_or("-".into(), |v| format!("{:.2}", 100.0 * v)),
            s.iter()
                .map(|s| s.map_or("?".into(), |s| s.to_string()))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    if arms.len() < 2 {
        return Ok(());
    }
    println!();
    println!(
        "each recipe against each listed before it (difference in points; over images: each image's share of runs right, normal approximation; over seeds: runs paired by seed, Student's t, or recipes of other seeds, Welch's t):"
    );
    println!(
        "{:<24} {:<24} {:>10} {:>20} {:>8}   {:<24} {:>20}",
        "recipe", "against", "difference", "95% over images", "p", "per seed", "95% over seeds"
    );
    for (j, x) in arms.iter().enumerate() {
        for i in 0..j {
            let order = seed_order(&seeds[i], &seeds[j]);
            let c = scores.compare(i, j, order.as_deref())?;
            let (per_seed, over_seeds) = match c.seed_differences() {
                Some(d) => (
                    d.iter()
                        .map(|d| format!("{:+.2}", 100.0 * d))
                        .collect::<Vec<_>>()
                        .join(" "),
                    c.ci95_over_seeds(),
                ),
                None => match c.ci95_over_seeds_unpaired() {
                    Some(ci) => ("not paired by seed: Welch".into(), Some(ci)),
                    None => ("not paired by seed".into(), None),
                },
            };
            let interval = |ci: Option<(f64, f64)>| {
                ci.map_or("-".into(), |(lo, hi)| {
                    format!("[{:+.2}, {:+.2}]", 100.0 * lo, 100.0 * hi)
                })
            };
            println!(
                "{:<24} {:<24} {:>+10.2} {:>20} {:>8}   {:<24} {:>20}",
                x.name,
                arms[i].name,
                100.0 * c.difference(),
                interval(c.ci95_over_images()),
                c.p_over_images().map_or("-".into(), |p| format!("{p:.4}")),
                per_seed,
                interval(over_seeds)
            );
        }
    }
    Ok(())
}

/// The seed a run's card says it trained with (`None`: no card, as beside
/// a bare weights file, or a card without a training config, such as an
/// imported model's).
fn card_seed(run: &std::path::Path) -> Result<Option<u64>> {
    let path = ModelDir::new(run).card();
    if !path.exists() {
        return Ok(None);
    }
    let card = ModelCard::load(&path)?;
    Ok(card.config.map(|c| c.seed))
}

fn human_bytes(n: u64) -> String {
    if n >= 1 << 20 {
        format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

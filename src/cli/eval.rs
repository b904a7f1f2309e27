//! `distill eval`: accuracy, loss and speed of one or more models.

use std::path::PathBuf;

use clap::Args;
use distill::data::{Dataset, Split};
use distill::error::Result;
use distill::model::compat::check_compatible;
use distill::model::{Backend, ModelDir};
use distill::train::compare;

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
    /// train or test.
    #[arg(long, default_value = "test", value_parser = super::parse_split)]
    split: Split,
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    #[command(flatten)]
    pub device: DeviceArgs,
}

pub fn eval<D: Backend>(dev: D, a: EvalArgs) -> Result<()> {
    let data = Dataset::open(&a.data, a.split)?;
    eval_table(dev, &a.model, &data, a.batch)
}

/// One row per model, printed as each is measured. Every model is loaded
/// and checked against the data first, so a missing or unfit model is an
/// error before any table is printed.
fn eval_table<D: Backend>(dev: D, models: &[PathBuf], data: &Dataset, batch: usize) -> Result<()> {
    let mut loaded = Vec::with_capacity(models.len());
    for m in models {
        let dir = ModelDir::new(m);
        let net = dir.load(dev.clone())?;
        check_compatible(&net, data)?;
        loaded.push((m, dir, net));
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
    for (m, dir, net) in &loaded {
        let r = compare::measure_loaded(dir, net, data, batch)?;
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

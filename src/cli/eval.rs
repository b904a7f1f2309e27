//! `distill eval`: accuracy, loss and speed of one or more models.

use std::path::PathBuf;

use clap::Args;
use distill::data::{Dataset, Split};
use distill::error::Result;
use distill::model::Backend;

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
    super::prune::eval_table(dev, &a.model, &data, a.batch)
}

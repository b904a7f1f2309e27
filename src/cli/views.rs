//! `distill views export`: the augmented images of a view set, for a
//! teacher that runs outside distill (PyTorch, JAX, a remote service).
//!
//! The round trip: `views export` writes `OUT/view-{v}-images.npy` (f32,
//! `[N, C, H, W]`, sample order) for every view; the external teacher writes
//! one `[N, classes]` logits `.npy` per view in the same order; `cache import
//! --view-set --augment SPEC --augment-seed S --logits l0.npy --logits
//! l1.npy ...` builds the view set `train --cache` reads
//! (`examples/pytorch_teacher.py`).

use std::path::PathBuf;

use clap::{Args, Subcommand};
use distill::data::augment::Augment;
use distill::data::{Dataset, Split};
use distill::error::Result;
use distill::teacher::{export_views, ViewSetSpec};

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[("batch_size", "--batch")];

#[derive(Subcommand)]
pub enum ViewsCommand {
    /// Write the images of every augmented view as .npy, in the order a
    /// view-set cache holds them: OUT/view-{v}-images.npy, f32 [N, C, H, W].
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Dataset directory.
    #[arg(long)]
    data: PathBuf,
    /// train or test.
    #[arg(long, default_value = "train", value_parser = super::parse_split)]
    split: Split,
    /// The augmentation: flip, shift=N, crop=N, warp=A, cutout=S, noise=S, mixup=A,
    /// cutmix=A, comma-separated (as `cache build --augment`).
    #[arg(long)]
    augment: String,
    /// Number of augmented views.
    #[arg(long, default_value_t = 1)]
    views: u64,
    /// Seed of the augmentation draws.
    #[arg(long, default_value_t = 0)]
    augment_seed: u64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Samples held in memory at a time.
    #[arg(long, default_value_t = 500)]
    batch: usize,
    /// Replace the images of another export in --out (and remove its views
    /// beyond --views).
    #[arg(long)]
    overwrite: bool,
}

pub fn run(cmd: ViewsCommand) -> Result<()> {
    match cmd {
        ViewsCommand::Export(a) => {
            let set = ViewSetSpec {
                augment: Augment::parse(&a.augment)?,
                seed: a.augment_seed,
                views: a.views,
            };
            let data = Dataset::open(&a.data, a.split)?;
            let shape = data.sample_shape();
            export_views(&data, &set, &a.out, a.batch, a.overwrite, |path| {
                println!(
                    "{}: {} images of {:?}, augment {} (seed {})",
                    path.display(),
                    data.len(),
                    shape,
                    set.augment,
                    set.seed
                )
            })?;
            Ok(())
        }
    }
}

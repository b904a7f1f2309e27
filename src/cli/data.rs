//! `distill data`: describe a dataset directory.

use std::path::PathBuf;

use clap::Subcommand;
use distill::data::{Dataset, Split};
use distill::error::Result;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

#[derive(Subcommand)]
pub enum DataCommand {
    /// Print each split's size, shape, classes and fingerprint.
    Info {
        /// Dataset directory (IDX, .npy or safetensors files).
        #[arg(long)]
        data: PathBuf,
    },
}

pub fn run(command: DataCommand) -> Result<()> {
    let DataCommand::Info { data } = command;
    for split in [Split::Train, Split::Test] {
        match Dataset::open(&data, split) {
            Ok(ds) => {
                let [c, h, w] = ds.sample_shape();
                println!(
                    "{split}: {} samples of {c}x{h}x{w}, {} classes, fingerprint {} ({})",
                    ds.len(),
                    ds.num_classes()
                        .map_or("no labels".to_string(), |k| k.to_string()),
                    ds.fingerprint(),
                    ds.source().display()
                );
            }
            Err(e) => println!("{split}: {e}"),
        }
    }
    Ok(())
}

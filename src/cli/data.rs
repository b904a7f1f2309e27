//! `distill data`: describe a dataset directory, and record how it is read.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use distill::data::{DataError, DataOptions, Dataset, Split};
use distill::error::Result;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

#[derive(Subcommand)]
pub enum DataCommand {
    /// Print each split's size, shape, classes and fingerprint.
    Info {
        /// Dataset directory (IDX, .npy, safetensors or CIFAR binary files).
        #[arg(long)]
        data: PathBuf,
        /// Read it with these options instead of its distill-data.toml's.
        #[command(flatten)]
        options: OptionArgs,
    },
    /// Record how every command reads a dataset directory: writes
    /// DIR/distill-data.toml with exactly the options given (none given:
    /// removes it), after checking that the splits open with them.
    Configure {
        /// Dataset directory.
        #[arg(long)]
        data: PathBuf,
        #[command(flatten)]
        options: OptionArgs,
    },
}

#[derive(Args)]
pub struct OptionArgs {
    /// Axis order of 4-D .npy/safetensors images: nchw (the default) or
    /// nhwc ([N, H, W, C], converted on read).
    #[arg(long)]
    layout: Option<String>,
    /// CIFAR-100's labels: fine (100 classes, the default) or coarse (20).
    #[arg(long)]
    labels: Option<String>,
}

impl OptionArgs {
    fn parse(&self) -> Result<DataOptions> {
        Ok(DataOptions {
            layout: self.layout.as_deref().map(str::parse).transpose()?,
            labels: self.labels.as_deref().map(str::parse).transpose()?,
        })
    }
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::Info { data, options } => {
            let options = DataOptions::load(&data)?.overlaid(&options.parse()?);
            describe(&data, &options)
        }
        DataCommand::Configure { data, options } => {
            let options = options.parse()?;
            let opened = Split::ALL.map(|split| Dataset::open_with(&data, split, &options));
            if opened
                .iter()
                .all(|r| matches!(r, Err(DataError::NotFound { .. })))
            {
                let [train, _] = opened;
                train?;
            } else {
                for r in opened {
                    match r {
                        Ok(_) | Err(DataError::NotFound { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            options.save(&data)?;
            if options == DataOptions::default() {
                println!(
                    "{}: every option at its default (no options file)",
                    data.display()
                );
            } else {
                println!("wrote {}", DataOptions::path(&data).display());
            }
            describe(&data, &options)
        }
    }
}

/// Prints the options in force and each split as read with them. A split
/// that is absent is said so; a split that is there but does not read is
/// the command's error (exit 2), as is a directory with no split at all.
fn describe(data: &std::path::Path, options: &DataOptions) -> Result<()> {
    if let Some(l) = options.layout {
        println!("layout: {l}");
    }
    if let Some(l) = options.labels {
        println!("labels: {l}");
    }
    let opened = Split::ALL.map(|split| (split, Dataset::open_with(data, split, options)));
    if opened
        .iter()
        .all(|(_, r)| matches!(r, Err(DataError::NotFound { .. })))
    {
        let [(_, train), _] = opened;
        return train.map(|_| ()).map_err(Into::into);
    }
    let mut broken = None;
    for (split, opened) in opened {
        match opened {
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
            Err(e @ DataError::NotFound { .. }) => println!("{split}: {e}"),
            Err(e) => {
                println!("{split}: does not read (below)");
                broken.get_or_insert(e);
            }
        }
    }
    match broken {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

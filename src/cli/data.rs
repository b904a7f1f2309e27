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
    /// Axis order of 4-D .npy/safetensors images: nchw or nhwc ([N, H, W,
    /// C], converted on read). Not given: nchw (`data info`: as the
    /// directory's distill-data.toml says, else nchw).
    #[arg(long)]
    layout: Option<String>,
    /// CIFAR-100's labels: fine (100 classes) or coarse (20). Not given:
    /// fine (`data info`: as the directory's distill-data.toml says, else
    /// fine).
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
            Dataset::check_dir(&data)?;
            let options = DataOptions::load(&data)?.overlaid(&options.parse()?);
            describe(&data, &options)
        }
        DataCommand::Configure { data, options } => {
            let options = options.parse()?;
            Dataset::check_dir(&data)?;
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
                    "{split}: {} samples of {c}x{h}x{w}, {}, fingerprint {} ({})",
                    ds.len(),
                    ds.class_counts()
                        .map_or("no labels".to_string(), |k| describe_classes(&k)),
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

/// `10 classes (200 each)`, or the smallest and largest class and the labels
/// below the largest that no sample carries: a class count read from the
/// largest label says nothing of those.
fn describe_classes(counts: &[usize]) -> String {
    let k = counts.len();
    let (Some(&min), Some(&max)) = (counts.iter().min(), counts.iter().max()) else {
        return "0 classes".to_string();
    };
    if min == max {
        return format!("{k} classes ({min} each)");
    }
    let class_of = |n: usize| counts.iter().position(|&c| c == n).unwrap_or(0);
    let mut out = format!(
        "{k} classes ({min} of class {} to {max} of class {}",
        class_of(min),
        class_of(max)
    );
    let empty: Vec<String> = (0..k)
        .filter(|&i| counts[i] == 0)
        .map(|i| i.to_string())
        .collect();
    if !empty.is_empty() {
        let shown = empty.len().min(8);
        out += &format!("; no sample of class {}", empty[..shown].join(", "));
        if empty.len() > shown {
            out += &format!(" and {} more", empty.len() - shown);
        }
    }
    out + ")"
}

#[cfg(test)]
mod tests {
    use super::describe_classes;

    #[test]
    fn class_descriptions() {
        assert_eq!(describe_classes(&[]), "0 classes");
        assert_eq!(describe_classes(&[200; 10]), "10 classes (200 each)");
        assert_eq!(
            describe_classes(&[3, 5, 4]),
            "3 classes (3 of class 0 to 5 of class 1)"
        );
        assert_eq!(
            describe_classes(&[2, 0, 1, 0]),
            "4 classes (0 of class 1 to 2 of class 0; no sample of class 1, 3)"
        );
        let mut sparse = vec![0; 12];
        sparse[11] = 1;
        assert_eq!(
            describe_classes(&sparse),
            "12 classes (0 of class 0 to 1 of class 11; no sample of class 0, 1, 2, 3, 4, 5, 6, 7 and 3 more)"
        );
    }
}

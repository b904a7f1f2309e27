//! `distill model`: describe a model spec.

use clap::Subcommand;
use distill::error::Result;
use distill::model::ModelSpec;

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the layers, parameter count and forward FLOPs of a spec.
    Info {
        /// e.g. mlp:784-128-10 or cnn:c32-p-c64-p-f128-10
        spec: String,
    },
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        ModelCommand::Info { spec } => {
            let spec = ModelSpec::parse(&spec)?;
            print!("{}", spec.describe());
            println!("pytorch: {}", spec.torch_code());
        }
    }
    Ok(())
}

//! `distill model`: describe a model spec, or a saved model.

use std::path::Path;

use clap::Subcommand;
use distill::error::Result;
use distill::model::{input_norm, ModelSpec};

/// Config fields whose flag is not their name (see [`super::name_flags`]).
pub const RENAMES: &[(&str, &str)] = &[];

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Print the layers, parameter count and forward FLOPs of a spec, or of
    /// a saved model with its input normalisation.
    Info {
        /// A spec, e.g. mlp:784-128-10 or cnn:c32-p-c64-p-f128-10, or a
        /// model directory (or its .safetensors file).
        spec: String,
    },
}

pub fn run(command: ModelCommand) -> Result<()> {
    match command {
        // A spec always has a family before ':'; anything else is a path.
        ModelCommand::Info { spec } if !spec.contains(':') || Path::new(&spec).exists() => {
            if !Path::new(&spec).exists() {
                return Err(distill::Error::Spec {
                    spec: spec.clone(),
                    message: "is neither a spec (FAMILY:LAYERS, e.g. mlp:784-128-10, \
                              cnn:c8-p-c16-p-10, resnet:16x3-32x3-64x3-10) nor a model directory \
                              or .safetensors file that exists"
                        .into(),
                });
            }
            let net = super::load_model(Path::new(&spec), dfdx::prelude::Cpu::default())?;
            print!("{}", net.spec().describe());
            match net.normalization() {
                Some(n) => println!(
                    "input normalisation: mean {:?}, std {:?}",
                    n.mean(),
                    n.std()
                ),
                None => println!("input normalisation: none"),
            }
            println!(
                "pytorch: {}",
                input_norm::torch_code(net.spec(), net.normalization())
            );
        }
        ModelCommand::Info { spec } => {
            let spec = ModelSpec::parse(&spec)?;
            print!("{}", spec.describe());
            println!("pytorch: {}", spec.torch_code());
        }
    }
    Ok(())
}

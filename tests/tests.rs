//! End-to-end tests: each runs the real `distill` binary in a temporary
//! directory on the committed Fashion-MNIST subset or on generated data.

mod util;

mod cli_cache;
mod cli_data;
mod cli_model;
mod cli_prune;
mod cli_sweep;
mod cli_train;
mod compat;
mod layers;
mod reliability_cli;
mod reliability_lib;
mod retemper;
mod torch_reference;

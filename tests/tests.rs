//! End-to-end tests: most run the real `distill` binary in a temporary
//! directory on the committed Fashion-MNIST subset or on generated data;
//! `compat` opens the committed golden caches of every format version, and
//! `torch_reference` compares with numbers PyTorch computed
//! (`scripts/torch_reference.py`).

mod util;

mod cli_cache;
mod cli_cache_parts;
mod cli_cifar;
mod cli_data;
mod cli_mix;
mod cli_model;
mod cli_prune;
mod cli_resnet;
mod cli_sweep;
mod cli_train;
mod cli_views;
mod codec_fidelity;
mod compat;
mod determinism;
mod layers;
mod pytorch_golden;
mod regression;
mod reliability_cli;
mod reliability_lib;
mod retemper;
mod sampled_kd;
mod torch_reference;

//! Reports: PNG plots of a training run ([`plot`]) and of a sweep
//! ([`sweep_plot`]). Model cards and metrics files belong to training
//! (`train::card`, `train::metrics`).

pub mod plot;
pub mod sweep_plot;

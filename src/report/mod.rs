//! Reports: PNG plots of a training run ([`plot`]). Model cards and metrics
//! files belong to training (`train::card`, `train::metrics`); sweep plots to
//! the sweep (`sweep::plot`).

pub mod plot;

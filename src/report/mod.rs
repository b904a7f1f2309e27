//! Reports: model cards and metrics files ([`card`]), PNG plots ([`plot`]),
//! and the plots of a sweep ([`sweep_plot`]).

pub mod card;
pub mod plot;
pub mod sweep_plot;

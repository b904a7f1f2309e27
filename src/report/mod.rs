//! Reports: model cards and metrics files ([`card`]) and PNG plots ([`plot`]).

pub mod card;
pub mod plot;

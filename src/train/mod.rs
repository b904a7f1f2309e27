//! Training: optimizers ([`optim`]), losses ([`loss`]), batches and the loader
//! thread ([`loader`]), evaluation ([`eval`]) and the training loop
//! ([`trainer`]).

pub mod optim;
pub mod loss;

//! Training: optimizers ([`optim`]), losses ([`loss`]), evaluation
//! ([`eval`]) and the training loop with its loader thread and checkpoints
//! ([`trainer`]).

pub mod compare;
pub mod eval;
pub mod loss;
pub mod optim;
pub mod trainer;

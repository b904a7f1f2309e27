//! Models from run-time specs.

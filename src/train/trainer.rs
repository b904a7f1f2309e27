//! The paths the training loop's types had when it was one file, kept so
//! that callers written against them still compile. New code uses the
//! modules that own each concept: [`config`](super::config),
//! [`sources`](super::sources), [`fit`](super::fit) and
//! [`loader`](super::loader) (or the re-exports in [`train`](super)).

pub use super::config::{RunOptions, TrainConfig};
pub use super::fit::{train, TrainOutcome};
pub use super::loader::{epoch_augmentation, shuffled_order};
pub use super::sources::{check_cache, TrainSources};

//! The loader: one epoch's batches of inputs and targets, in the run's
//! deterministic order, produced on a thread of its own.
//!
//! ```text
//!  loader thread                                      training thread
//!  epoch order (seed, epoch) ──► batch indices
//!  cache reader: decode targets ─┐                    upload ─► forward ─► loss
//!  dataset: fill inputs ─────────┴─► bounded channel ─► backward ─► optimizer update
//! ```
//!
//! Only host data crosses to the loader thread: a [`Loader`] borrows the
//! dataset, the cache and the config, and holds nothing of a compute device
//! (a CUDA device is neither `Send` nor `Sync`); the batches it sends back
//! are plain vectors that the training thread uploads.
//!
//! The order of an epoch: with a cache, the cache's windowed shuffle
//! ([`CacheReader::epoch_batches`](crate::cache::CacheReader::epoch_batches));
//! without one, a permutation of all samples ([`shuffled_order`]). Both
//! start at any position of the epoch, which is how a resumed run continues
//! mid-epoch. With a set of augmented views, epoch `e` reads view `e % K`
//! and augments the inputs exactly as the teacher saw them.

use std::sync::mpsc;
use std::thread::Scope;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cache::{CacheViews, EpochBatches, EpochPlan};
use crate::data::augment::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};

use super::config::TrainConfig;

/// How many batches the loader thread runs ahead of the training step.
pub const PREFETCH: usize = 4;

/// One batch, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The samples' indices in the dataset.
    pub indices: Vec<usize>,
    /// Their inputs (augmented when the run or the view set says so),
    /// `indices.len() * sample_len` values.
    pub inputs: Vec<f32>,
    /// Their labels, from the dataset or else the cache, if either has them.
    pub labels: Option<Vec<u32>>,
    /// The teacher's log-probabilities at the run's temperature, from the
    /// cache (distillation from a cache), `indices.len() * classes` values.
    pub logprobs: Option<Vec<f32>>,
}

/// What the loader reads: host data only, so it may cross threads.
#[derive(Clone, Copy)]
pub struct Loader<'a> {
    train: &'a Dataset,
    cache: Option<&'a CacheViews>,
    cfg: &'a TrainConfig,
}

// The loader must be movable to its thread whatever the compute device.
const _: fn() = || {
    fn send<T: Send>() {}
    send::<Loader<'static>>();
    send::<Batch>();
};

/// The hard-label epoch order: a permutation of all samples from (seed, epoch).
pub fn shuffled_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng =
        rand_chacha::ChaCha8Rng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    order.shuffle(&mut rng);
    order
}

/// How the training inputs of `epoch` are augmented, as (augmentation,
/// seed, view) for [`Augment::apply_batch`]: with a set of augmented views,
/// the view the teacher saw (`epoch % K`, the set's seed); else with the
/// config's `augment`, a fresh view per epoch under the run's seed; else none.
pub fn epoch_augmentation(
    cfg: &TrainConfig,
    cache: Option<&CacheViews>,
    epoch: u64,
) -> Result<Option<(Augment, u64, u64)>> {
    let view = cache.and_then(|c| c.for_epoch(epoch).manifest().dataset.view.as_ref());
    Ok(match view {
        Some(v) => Some((Augment::parse(&v.augment)?, v.seed, v.view)),
        None => cfg.augment.map(|a| (a, cfg.seed, epoch)),
    })
}

impl<'a> Loader<'a> {
    /// A loader over the training split and, for distillation, its cache.
    pub fn new(train: &'a Dataset, cache: Option<&'a CacheViews>, cfg: &'a TrainConfig) -> Self {
        Loader { train, cache, cfg }
    }

    /// The batches of `epoch` from position `first` of its order on. The
    /// last batch holds what is left (it may be smaller than the batch size).
    pub fn batches(&self, epoch: u64, first: usize) -> Result<Batches<'a>> {
        let augment = epoch_augmentation(self.cfg, self.cache, epoch)?;
        let order = match self.cache.map(|c| c.for_epoch(epoch)) {
            None => {
                let order = shuffled_order(self.train.len(), self.cfg.seed, epoch);
                Order::Shuffled {
                    next: first.min(order.len()),
                    order,
                }
            }
            Some(cache) => Order::Cache(cache.epoch_batches(EpochPlan {
                seed: self.cfg.seed,
                epoch,
                start: first as u64,
                batch_size: self.cfg.batch_size,
                window_blocks: self.cfg.window_blocks,
                temperature: self.cfg.loss.temperature,
                allow_topk_retemper: self.cfg.allow_topk_retemper,
                drop_last: false,
            })?),
        };
        Ok(Batches {
            loader: *self,
            augment,
            order,
            failed: false,
        })
    }

    /// Produces the batches of `epoch` from `first` on a thread of `scope`;
    /// the receiver yields them in order, [`PREFETCH`] ahead at most. The
    /// thread stops after the first error (sent on) or when the receiver is
    /// dropped.
    pub fn spawn<'scope>(
        self,
        scope: &'scope Scope<'scope, '_>,
        epoch: u64,
        first: usize,
    ) -> mpsc::Receiver<Result<Batch>>
    where
        'a: 'scope,
    {
        let (tx, rx) = mpsc::sync_channel::<Result<Batch>>(PREFETCH);
        scope.spawn(move || {
            let batches = match self.batches(epoch, first) {
                Ok(b) => b,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            };
            for batch in batches {
                if tx.send(batch).is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// Fills the inputs of `indices` (augmented as the epoch says) and their
    /// labels: the dataset's if it has them, else the cache's.
    fn batch(
        &self,
        augment: &Option<(Augment, u64, u64)>,
        indices: Vec<usize>,
        cache_labels: Option<Vec<u32>>,
        logprobs: Option<Vec<f32>>,
    ) -> Batch {
        let train = self.train;
        let mut inputs = vec![0f32; indices.len() * train.sample_len()];
        train.fill_inputs(&indices, &mut inputs);
        if let Some((a, seed, view)) = augment {
            a.apply_batch(*seed, *view, &indices, train.sample_shape(), &mut inputs);
        }
        let labels = train
            .labels()
            .map(|y| indices.iter().map(|&i| y[i]).collect())
            .or(cache_labels);
        Batch {
            indices,
            inputs,
            labels,
            logprobs,
        }
    }
}

/// Where an epoch's sample order comes from.
enum Order<'a> {
    /// Hard labels: a permutation of all samples, and the next position.
    Shuffled { order: Vec<usize>, next: usize },
    /// The cache's windowed shuffle, decoding targets as it goes.
    Cache(EpochBatches<'a>),
}

/// One epoch's batches; see [`Loader::batches`]. Ends after the first error.
pub struct Batches<'a> {
    loader: Loader<'a>,
    augment: Option<(Augment, u64, u64)>,
    order: Order<'a>,
    failed: bool,
}

impl Iterator for Batches<'_> {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.failed {
            return None;
        }
        let item = match &mut self.order {
            Order::Shuffled { order, next } => {
                if *next >= order.len() {
                    return None;
                }
                let end = (*next + self.loader.cfg.batch_size).min(order.len());
                let indices = order[*next..end].to_vec();
                *next = end;
                Ok(self.loader.batch(&self.augment, indices, None, None))
            }
            Order::Cache(batches) => match batches.next()? {
                Ok(tb) => {
                    let indices = tb.indices.iter().map(|&i| i as usize).collect();
                    Ok(self
                        .loader
                        .batch(&self.augment, indices, tb.labels, Some(tb.logprobs)))
                }
                Err(e) => Err(Error::from(e)),
            },
        };
        self.failed = item.is_err();
        Some(item)
    }
}

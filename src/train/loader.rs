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
//!
//! With `mixup` or `cutmix` in the augmentation each image is mixed with a
//! partner sample drawn from `(seed, view, sample)` (the function the
//! teacher's build calls, [`Augment::fill_batch`]), and the batch carries
//! the label mixing ([`LabelMix`]) for the hard-label term.
//!
//! A run's [validation split](super::validation) is skipped: its samples
//! are dropped from either order (the cache still holds their records), the
//! rest are batched in the same order, and a position counts trained
//! samples only. Without a split the batches are exactly those of the
//! orders above. In a mixed epoch a sample whose partner is held out is
//! skipped too: its image shows a validation sample (and a cached target
//! of it cannot be recomputed without that sample), so validation stays
//! unseen.

use std::sync::mpsc;
use std::thread::Scope;

use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::cache::{CacheViews, EpochBatches, EpochPlan, TargetBatch};
use crate::data::augment::Augment;
use crate::data::Dataset;
use crate::error::{Error, Result};

use super::config::TrainConfig;
use super::loss::LabelMix;
use super::validation::ValidationSplit;

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
    /// The partners' labels and the mixing weights of mixed images
    /// (`mixup`, `cutmix`; `None` when unmixed or unlabelled).
    pub mix: Option<LabelMix>,
}

/// What the loader reads: host data only, so it may cross threads.
#[derive(Clone, Copy)]
pub struct Loader<'a> {
    train: &'a Dataset,
    cache: Option<&'a CacheViews>,
    cfg: &'a TrainConfig,
    /// Samples never trained on.
    validation: Option<&'a ValidationSplit>,
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
        Loader {
            train,
            cache,
            cfg,
            validation: None,
        }
    }

    /// The same loader, skipping the samples `validation` holds out.
    pub fn holding_out(self, validation: &'a ValidationSplit) -> Self {
        Loader {
            validation: (!validation.is_empty()).then_some(validation),
            ..self
        }
    }

    /// Whether sample `i` trains.
    fn trains(&self, i: usize) -> bool {
        self.validation.is_none_or(|v| !v.holds_out(i))
    }

    /// Whether sample `i` trains in an epoch augmented by `augment`: it is
    /// not held out, nor (in a mixed epoch) is its partner.
    fn trains_in(&self, augment: &Option<(Augment, u64, u64)>, i: usize) -> bool {
        if !self.trains(i) {
            return false;
        }
        match augment {
            Some((a, seed, view)) if self.validation.is_some() => a
                .mix_params(self.train, *seed, *view, i)
                .is_none_or(|p| self.trains(p.partner)),
            _ => true,
        }
    }

    /// How many samples epoch `epoch` trains: every sample not held out,
    /// less, in a mixed epoch, those whose partner is held out. The
    /// learning-rate schedule's length and an epoch's end are counted
    /// from this.
    pub fn epoch_len(&self, epoch: u64) -> Result<usize> {
        let Some(validation) = self.validation else {
            return Ok(self.train.len());
        };
        let augment = epoch_augmentation(self.cfg, self.cache, epoch)?;
        Ok(match &augment {
            Some((a, _, _)) if a.mix.is_some() => (0..self.train.len())
                .filter(|&i| self.trains_in(&augment, i))
                .count(),
            _ => validation.train_len(),
        })
    }

    /// The batches of `epoch` from position `first` of its order (counting
    /// trained samples only) on. The last batch holds what is left (it may
    /// be smaller than the batch size).
    pub fn batches(&self, epoch: u64, first: usize) -> Result<Batches<'a>> {
        let augment = epoch_augmentation(self.cfg, self.cache, epoch)?;
        let order = match self.cache.map(|c| c.for_epoch(epoch)) {
            None => {
                let mut order = shuffled_order(self.train.len(), self.cfg.seed, epoch);
                if self.validation.is_some() {
                    order.retain(|&i| self.trains_in(&augment, i));
                }
                Order::Shuffled {
                    next: first.min(order.len()),
                    order,
                }
            }
            Some(cache) => {
                // The position in the cache's order of the `first`-th
                // trained sample: held-out samples before it count there.
                let start = match self.validation {
                    Some(_) if first > 0 => {
                        let order = cache.epoch_order(self.cfg.seed, epoch, self.cfg.window_blocks);
                        order
                            .iter()
                            .enumerate()
                            .filter(|(_, &i)| self.trains_in(&augment, i as usize))
                            .nth(first)
                            .map_or(order.len(), |(p, _)| p)
                    }
                    _ => first,
                };
                Order::Cache {
                    batches: Box::new(cache.epoch_batches(EpochPlan {
                        seed: self.cfg.seed,
                        epoch,
                        start: start as u64,
                        batch_size: self.cfg.batch_size,
                        window_blocks: self.cfg.window_blocks,
                        temperature: self.cfg.loss.temperature,
                        allow_topk_retemper: self.cfg.allow_topk_retemper,
                        drop_last: false,
                    })?),
                    pending: None,
                }
            }
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
        let mixing = match augment {
            Some((a, seed, view)) => a.fill_batch(train, *seed, *view, &indices, &mut inputs),
            None => {
                train.fill_inputs(&indices, &mut inputs);
                None
            }
        };
        // A mixed image's hard target needs its partner's label, which
        // only the dataset holds: cache labels alone would be wrong targets
        // for it, so a mixed batch of unlabelled data has none.
        let mixed = mixing.is_some();
        let mix = match (mixing, train.labels()) {
            (Some(params), Some(y)) => Some(LabelMix {
                partner_labels: params.iter().map(|p| y[p.partner]).collect(),
                lambdas: params.iter().map(|p| p.lambda).collect(),
            }),
            _ => None,
        };
        let labels = train
            .labels()
            .map(|y| indices.iter().map(|&i| y[i]).collect())
            .or(cache_labels.filter(|_| !mixed));
        Batch {
            indices,
            inputs,
            labels,
            logprobs,
            mix,
        }
    }
}

/// Where an epoch's sample order comes from.
enum Order<'a> {
    /// Hard labels: a permutation of the trained samples, and the next position.
    Shuffled { order: Vec<usize>, next: usize },
    /// The cache's windowed shuffle, decoding targets as it goes; with a
    /// validation split, the trained rows not yet served.
    Cache {
        batches: Box<EpochBatches<'a>>,
        pending: Option<TargetBatch>,
    },
}

/// The next batch of up to `batch_size` trained rows from the cache's
/// stream: its batches with held-out rows dropped, joined and cut again.
/// `None` at the end of the epoch.
fn next_trained_rows(
    batches: &mut EpochBatches<'_>,
    pending: &mut Option<TargetBatch>,
    batch_size: usize,
    trains: impl Fn(usize) -> bool,
) -> Option<std::result::Result<TargetBatch, crate::cache::CacheError>> {
    loop {
        let have = pending.as_ref().map_or(0, |p| p.indices.len());
        if have >= batch_size {
            break;
        }
        let tb = match batches.next() {
            None => break,
            Some(Err(e)) => return Some(Err(e)),
            Some(Ok(tb)) => tb,
        };
        let classes = tb.logprobs.len() / tb.indices.len().max(1);
        let acc = pending.get_or_insert_with(|| TargetBatch {
            indices: Vec::with_capacity(batch_size),
            labels: tb.labels.as_ref().map(|_| Vec::with_capacity(batch_size)),
            logprobs: Vec::with_capacity(batch_size * classes),
        });
        for (r, &i) in tb.indices.iter().enumerate() {
            if !trains(i as usize) {
                continue;
            }
            acc.indices.push(i);
            if let (Some(out), Some(y)) = (acc.labels.as_mut(), tb.labels.as_ref()) {
                out.push(y[r]);
            }
            acc.logprobs
                .extend_from_slice(&tb.logprobs[r * classes..(r + 1) * classes]);
        }
    }
    let mut all = pending.take()?;
    if all.indices.is_empty() {
        return None;
    }
    if all.indices.len() > batch_size {
        let classes = all.logprobs.len() / all.indices.len();
        let rest = TargetBatch {
            indices: all.indices.split_off(batch_size),
            labels: all.labels.as_mut().map(|y| y.split_off(batch_size)),
            logprobs: all.logprobs.split_off(batch_size * classes),
        };
        *pending = Some(rest);
    }
    Some(Ok(all))
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
            Order::Cache { batches, pending } => {
                let next = match self.loader.validation {
                    // Without a split the cache's batches are the run's.
                    None => batches.next(),
                    Some(_) => {
                        let (loader, augment) = (self.loader, &self.augment);
                        next_trained_rows(batches, pending, loader.cfg.batch_size, |i| {
                            loader.trains_in(augment, i)
                        })
                    }
                };
                match next? {
                    Ok(tb) => {
                        let indices = tb.indices.iter().map(|&i| i as usize).collect();
                        Ok(self
                            .loader
                            .batch(&self.augment, indices, tb.labels, Some(tb.logprobs)))
                    }
                    Err(e) => Err(Error::from(e)),
                }
            }
        };
        self.failed = item.is_err();
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    //! The loader against the teacher itself: a cache built by the committed
    //! teacher on the committed Fashion-MNIST subset, then every batch's
    //! targets compared with `log_softmax(teacher(inputs) / T)` of exactly
    //! that batch's inputs, so a target that drifts from its image (a shifted
    //! row, a wrong view, a wrong resume position) fails.
    //!
    //! Tolerance, f16 (the default encoding): a row is stored as gaps
    //! `g_c = max(lp) - lp_c` in f16 (relative error <= 2^-11) plus an offset
    //! recomputed over the rounded gaps (off by at most the largest gap's
    //! error), so each value is within `2^-10 * max_c g_c`; 1e-4 more covers
    //! the teacher's own float noise between batch compositions. Re-tempered
    //! from T to T' (`T/T' * lp` renormalised), the bound grows by `2 T/T'`.

    use std::path::{Path, PathBuf};

    use dfdx::prelude::*;

    use super::*;
    use crate::cache::views::view_dir;
    use crate::cache::{
        log_softmax_tempered, CacheReader, CacheViews, Encoding, ViewInfo, WriterOptions,
    };
    use crate::data::Split;
    use crate::model::{ModelDir, Network};
    use crate::teacher::{build_cache, BuildOptions};
    use crate::train::loss::{LossConfig, LossKind};

    /// Samples used: not a multiple of the batch, of the block or of a window.
    const N: usize = 517;
    const BATCH: usize = 64;
    /// Records per block, and blocks per shuffle window: several windows.
    const BLOCK: u32 = 32;
    const WINDOW: usize = 3;
    /// The cache's temperature.
    const T: f32 = 4.0;

    fn root() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    }

    fn teacher() -> Network<Cpu> {
        ModelDir::new(root().join("data/teachers/fashion-cnn"))
            .load(Cpu::default())
            .expect("the committed teacher loads")
    }

    fn data() -> Dataset {
        Dataset::open(&root().join("data/fashion-mnist-small"), Split::Train)
            .expect("the committed subset opens")
            .head(N)
    }

    /// The tests' cache build options (f16 at `T`, small blocks).
    fn build_options(view: Option<ViewInfo>) -> BuildOptions {
        BuildOptions {
            temperature: T,
            encoding: Encoding::F16,
            writer: WriterOptions {
                records_per_block: BLOCK,
                ..WriterOptions::default()
            },
            batch_size: 100,
            teacher_source: "data/teachers/fashion-cnn".into(),
            progress: false,
            view,
        }
    }

    fn build(teacher: &Network<Cpu>, data: &Dataset, dir: &Path, view: Option<ViewInfo>) {
        build_cache(teacher, data, dir, &build_options(view)).expect("cache build");
    }

    fn config(temperature: f32) -> TrainConfig {
        TrainConfig {
            spec: "mlp:784-32-10".into(),
            batch_size: BATCH,
            seed: 3,
            window_blocks: WINDOW,
            loss: LossConfig::new(LossKind::Kd, 0.5, temperature),
            ..TrainConfig::default()
        }
    }

    /// Asserts that `batch`'s targets are the teacher's outputs at `t` on
    /// its inputs, within the f16 bound (see the module doc).
    fn assert_targets(teacher: &Network<Cpu>, batch: &Batch, t: f32, what: &str) {
        let b = batch.indices.len();
        let logits = teacher.predict(batch.inputs.clone(), b).as_vec();
        let classes = logits.len() / b;
        let mut stored = vec![0f32; logits.len()];
        log_softmax_tempered(&logits, classes, T, &mut stored).unwrap();
        let mut want = vec![0f32; logits.len()];
        log_softmax_tempered(&logits, classes, t, &mut want).unwrap();
        let got = batch.logprobs.as_ref().expect("a cache batch has targets");
        assert_eq!(got.len(), want.len(), "{what}");
        for (r, &i) in batch.indices.iter().enumerate() {
            let row = r * classes..(r + 1) * classes;
            let s = &stored[row.clone()];
            let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let max_gap = s.iter().map(|v| hi - v).fold(0f32, f32::max);
            let retempered = if t == T { 1.0 } else { 2.0 * T / t };
            let tol = retempered * 2f32.powi(-10) * max_gap + 1e-4;
            for (c, (g, w)) in got[row.clone()].iter().zip(&want[row]).enumerate() {
                assert!(
                    (g - w).abs() <= tol,
                    "{what}: sample {i} class {c}: loaded {g}, teacher {w} (tolerance {tol})"
                );
            }
        }
    }

    /// Asserts a whole epoch from `first`: batch sizes (the last one partial),
    /// labels, and targets; returns the indices in the order served.
    fn walk(
        loader: &Loader<'_>,
        teacher: &Network<Cpu>,
        epoch: u64,
        first: usize,
        t: f32,
    ) -> Vec<usize> {
        let batches: Vec<Batch> = loader
            .batches(epoch, first)
            .unwrap()
            .collect::<Result<_>>()
            .unwrap();
        let rest = N - first;
        assert_eq!(
            batches.len(),
            rest.div_ceil(BATCH),
            "epoch {epoch} from {first}"
        );
        let labels = loader.train.labels().unwrap();
        for (k, b) in batches.iter().enumerate() {
            let want = if k + 1 < batches.len() {
                BATCH
            } else {
                rest - k * BATCH
            };
            assert_eq!(b.indices.len(), want, "epoch {epoch} batch {k}");
            let y: Vec<u32> = b.indices.iter().map(|&i| labels[i]).collect();
            assert_eq!(b.labels.as_deref(), Some(&y[..]));
            assert_targets(
                teacher,
                b,
                t,
                &format!("epoch {epoch} from {first} batch {k}"),
            );
        }
        batches.into_iter().flat_map(|b| b.indices).collect()
    }

    #[test]
    fn every_batch_holds_the_teachers_outputs_on_exactly_its_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        let (teacher, data) = (teacher(), data());
        build(&teacher, &data, &tmp.path().join("c"), None);
        // SAFETY: written above by this test; nothing modifies it.
        let cache = CacheViews::from(unsafe { CacheReader::open(&tmp.path().join("c")) }.unwrap());
        let cfg = config(T);
        let loader = Loader::new(&data, Some(&cache), &cfg);

        // A whole epoch: the windowed shuffle, each sample once, the last
        // batch partial (517 = 8 * 64 + 5).
        let order = walk(&loader, &teacher, 0, 0, T);
        let want: Vec<usize> = cache
            .first()
            .epoch_order(cfg.seed, 0, WINDOW)
            .into_iter()
            .map(|i| i as usize)
            .collect();
        assert_eq!(order, want, "the order is the cache's windowed shuffle");
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..N).collect::<Vec<_>>());
        assert_ne!(order, sorted, "the epoch is shuffled");
        let next = walk(&loader, &teacher, 1, 0, T);
        assert_ne!(order, next, "each epoch has its own order");

        // Resumed mid-epoch, mid-window and off a batch boundary: the rest of
        // the same order, batched from the resume position.
        let resumed = walk(&loader, &teacher, 1, 200, T);
        assert_eq!(resumed, next[200..]);

        // The loader thread serves the very same batches.
        let direct: Vec<Batch> = loader
            .batches(1, 200)
            .unwrap()
            .map(|b| b.unwrap())
            .collect();
        let threaded: Vec<Batch> = std::thread::scope(|s| {
            loader
                .spawn(s, 1, 200)
                .into_iter()
                .map(|b| b.unwrap())
                .collect()
        });
        assert_eq!(direct, threaded);

        // Re-tempered to T = 1, the default for students of a T = 4 cache.
        let cold = config(1.0);
        let loader = Loader::new(&data, Some(&cache), &cold);
        walk(&loader, &teacher, 0, 0, 1.0);
    }

    /// Flips and shifts, a warp after a shift, and a cutout.
    #[test]
    fn a_view_set_serves_the_view_the_teacher_saw_with_its_augmented_inputs() {
        let tmp = tempfile::tempdir().unwrap();
        let (teacher, data) = (teacher(), data());
        for (k, spec) in ["flip,shift=2", "shift=1,warp=1", "cutout=8"]
            .iter()
            .enumerate()
        {
            let set = tmp.path().join(format!("set-{k}"));
            for v in 0..2 {
                let view = ViewInfo {
                    augment: spec.to_string(),
                    seed: 5,
                    view: v,
                    views: 2,
                };
                build(&teacher, &data, &view_dir(&set, v), Some(view));
            }
            // SAFETY: written above by this test; nothing modifies it.
            let views = unsafe { CacheViews::open(&set) }.unwrap();
            let cfg = config(T);
            let loader = Loader::new(&data, Some(&views), &cfg);
            for epoch in 0..3 {
                walk(&loader, &teacher, epoch, 0, T);
            }
            // The inputs are augmented (else the teacher check above would
            // be comparing plain images with plain outputs).
            let b = loader.batches(1, 0).unwrap().next().unwrap().unwrap();
            let mut plain = vec![0f32; b.inputs.len()];
            data.fill_inputs(&b.indices, &mut plain);
            assert_ne!(b.inputs, plain, "{spec}");
            walk(&loader, &teacher, 1, 333, T);
        }
    }

    /// The round trip of a mixed view set: `build_view_set` runs the
    /// teacher on mixed images (mixup with flips and shifts, cutmix), and
    /// every batch the loader serves holds the teacher's outputs on exactly
    /// the mixed inputs it recreates, with the partners' labels and
    /// weights for label mixing; the set's summary records each view.
    #[test]
    fn a_mixed_view_set_serves_the_teachers_outputs_on_the_recreated_mixed_images() {
        use crate::data::mix::Mix;
        use crate::teacher::{build_view_set, ViewSetSpec};
        let tmp = tempfile::tempdir().unwrap();
        let (teacher, data) = (teacher(), data());
        for (k, spec) in ["flip,shift=1,mixup=0.4", "cutmix=1"].iter().enumerate() {
            let set = tmp.path().join(format!("set-{k}"));
            let opts = build_options(None);
            let augment = Augment::parse(spec).unwrap();
            let vs = ViewSetSpec {
                augment,
                seed: 11,
                views: 2,
            };
            let summary = build_view_set(&teacher, &data, &set, &opts, &vs, |_, _, _| {}).unwrap();
            // SAFETY: written above by this test; nothing modifies it.
            let views = unsafe { CacheViews::open(&set) }.unwrap();
            assert_eq!(views.summary(), Some(&summary));
            assert_eq!(summary.view_stats.len(), 2);
            assert!(summary.clean_agreement.unwrap() > 0.8, "{summary:?}");
            for v in &summary.view_stats {
                assert!(v.bytes_per_sample > 0.0 && v.build_seconds.unwrap() > 0.0);
                assert!((0.0..=1.0).contains(&v.agreement.unwrap()));
            }
            let cfg = config(T);
            let loader = Loader::new(&data, Some(&views), &cfg);
            for epoch in 0..3 {
                walk(&loader, &teacher, epoch, 0, T);
            }
            walk(&loader, &teacher, 1, 130, T);
            // The batch carries each row's partner label and weight, as
            // the mixing function draws them for the epoch's view.
            let b = loader.batches(3, 0).unwrap().next().unwrap().unwrap();
            let mix = b
                .mix
                .as_ref()
                .expect("a mixed batch carries its label mixing");
            let labels = data.labels().unwrap();
            let mut lambdas = Vec::new();
            for (r, &i) in b.indices.iter().enumerate() {
                let p = augment.mix_params(&data, 11, 1, i).unwrap();
                assert_ne!(p.partner, i);
                assert_eq!(mix.partner_labels[r], labels[p.partner]);
                assert_eq!(mix.lambdas[r], p.lambda);
                lambdas.push(p.lambda);
            }
            let mut plain = vec![0f32; b.inputs.len()];
            data.fill_inputs(&b.indices, &mut plain);
            assert_ne!(b.inputs, plain);
            if matches!(augment.mix, Some(Mix::Cutmix { .. })) {
                assert!(lambdas.iter().any(|&l| l < 1.0));
            }
        }
    }

    /// In a mixed epoch with a validation split, a sample whose partner is
    /// held out is skipped (its image would show a validation sample);
    /// the rest keep their order, from any position.
    #[test]
    fn a_mixed_epoch_never_shows_a_held_out_sample() {
        let data = data();
        let cfg = TrainConfig {
            augment: Some(Augment::parse("mixup=0.2").unwrap()),
            ..config(T)
        };
        let split = ValidationSplit::new(0.2, cfg.seed, N).unwrap();
        let loader = Loader::new(&data, None, &cfg).holding_out(&split);
        let a = cfg.augment.unwrap();
        let want: Vec<usize> = shuffled_order(N, cfg.seed, 2)
            .into_iter()
            .filter(|&i| {
                !split.holds_out(i)
                    && !split.holds_out(a.mix_params(&data, cfg.seed, 2, i).unwrap().partner)
            })
            .collect();
        assert!(want.len() < split.train_len() && want.len() > split.train_len() * 7 / 10);
        let batches: Vec<Batch> = loader.batches(2, 0).unwrap().map(|b| b.unwrap()).collect();
        let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(order, want);
        // The schedule's length counts exactly these samples.
        assert_eq!(loader.epoch_len(2).unwrap(), want.len());
        for b in &batches {
            assert_eq!(b.mix.as_ref().unwrap().lambdas.len(), b.indices.len());
        }
        let rest: Vec<usize> = loader
            .batches(2, 70)
            .unwrap()
            .flat_map(|b| b.unwrap().indices)
            .collect();
        assert_eq!(rest, want[70..]);
    }

    #[test]
    fn a_validation_split_is_never_served_and_the_rest_keeps_the_order() {
        let tmp = tempfile::tempdir().unwrap();
        let (teacher, data) = (teacher(), data());
        build(&teacher, &data, &tmp.path().join("c"), None);
        // SAFETY: written above by this test; nothing modifies it.
        let cache = CacheViews::from(unsafe { CacheReader::open(&tmp.path().join("c")) }.unwrap());
        let cfg = config(T);
        let split = ValidationSplit::new(0.2, cfg.seed, N).unwrap();
        let trained = split.train_len();
        assert_eq!(trained, N - 103);
        for with_cache in [true, false] {
            let loader = Loader::new(&data, with_cache.then_some(&cache), &cfg).holding_out(&split);
            let full = match with_cache {
                true => cache
                    .first()
                    .epoch_order(cfg.seed, 1, WINDOW)
                    .into_iter()
                    .map(|i| i as usize)
                    .collect(),
                false => shuffled_order(N, cfg.seed, 1),
            };
            let want: Vec<usize> = full.into_iter().filter(|&i| !split.holds_out(i)).collect();
            let batches: Vec<Batch> = loader.batches(1, 0).unwrap().map(|b| b.unwrap()).collect();
            // Whole batches but the last, the order of the whole split less
            // the held-out samples, each trained sample once.
            assert_eq!(batches.len(), trained.div_ceil(BATCH));
            for b in &batches[..batches.len() - 1] {
                assert_eq!(b.indices.len(), BATCH);
            }
            let order: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
            assert_eq!(order, want, "cache {with_cache}");
            assert_eq!(loader.epoch_len(1).unwrap(), want.len());
            let labels = data.labels().unwrap();
            for (k, b) in batches.iter().enumerate() {
                let y: Vec<u32> = b.indices.iter().map(|&i| labels[i]).collect();
                assert_eq!(b.labels.as_deref(), Some(&y[..]));
                if with_cache {
                    assert_targets(&teacher, b, T, &format!("batch {k} with a split"));
                }
            }
            // Resumed at a trained position (one held out lies before it in
            // the cache's order): the rest of the same order.
            for first in [BATCH, 3 * BATCH + 7] {
                let rest: Vec<usize> = loader
                    .batches(1, first)
                    .unwrap()
                    .flat_map(|b| b.unwrap().indices)
                    .collect();
                assert_eq!(rest, want[first..], "cache {with_cache} from {first}");
            }
        }
        // An empty split changes nothing.
        let none = ValidationSplit::none(N);
        let loader = Loader::new(&data, Some(&cache), &cfg).holding_out(&none);
        let plain = Loader::new(&data, Some(&cache), &cfg);
        let a: Vec<Batch> = loader.batches(0, 0).unwrap().map(|b| b.unwrap()).collect();
        let b: Vec<Batch> = plain.batches(0, 0).unwrap().map(|b| b.unwrap()).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn without_a_cache_an_epoch_is_a_permutation_from_any_position() {
        let data = data();
        let cfg = TrainConfig {
            augment: Some(Augment::parse("flip").unwrap()),
            ..config(T)
        };
        let loader = Loader::new(&data, None, &cfg);
        let all: Vec<Batch> = loader.batches(2, 0).unwrap().map(|b| b.unwrap()).collect();
        let order: Vec<usize> = all.iter().flat_map(|b| b.indices.clone()).collect();
        assert_eq!(order, shuffled_order(N, cfg.seed, 2));
        assert_eq!(all.last().map(|b| b.indices.len()), Some(N % BATCH));
        for b in &all {
            assert!(b.logprobs.is_none());
            let mut x = vec![0f32; b.inputs.len()];
            data.fill_inputs(&b.indices, &mut x);
            Augment::parse("flip").unwrap().apply_batch(
                cfg.seed,
                2,
                &b.indices,
                data.sample_shape(),
                &mut x,
            );
            assert_eq!(b.inputs, x);
        }
        let rest: Vec<usize> = loader
            .batches(2, 100)
            .unwrap()
            .flat_map(|b| b.unwrap().indices)
            .collect();
        assert_eq!(rest, order[100..]);
    }
}

//! Reading a cache: [`CacheReader`] (memory-mapped, validated on open),
//! bulk decoding, random access, deterministic shuffled epochs, verification
//! and statistics.
//!
//! Opening checks the manifest and every shard's header and block index;
//! each block's checksum is checked every time the block is decoded, before
//! any of its bytes are decompressed, so unchecked bytes are never decoded.
//! Decoding is parallel over blocks (rayon) and writes straight into the
//! output buffers; each worker thread reuses one zstd context and one scratch
//! buffer.

use std::cell::RefCell;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use rayon::prelude::*;
use xxhash_rust::xxh3::xxh3_64;

use super::codec::{retemper_rows, Codec, Encoding};
use super::format::{
    parse_shard, unshuffle_columns, BlockEntry, ShardHeader, COLUMN_BYTES, HEADER_BYTES,
};
use super::manifest::{Fidelity, Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES};
use super::order::{block_permutation, epoch_order, window_positions, BlockSpan};
use super::part::PART_FILE;
use super::{CacheError, Result};

/// Decoded targets: sample indices, labels (when the cache has them) and
/// dense log-probabilities, `indices.len() * num_classes` values, row-major.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecodedTargets {
    pub indices: Vec<u64>,
    pub labels: Option<Vec<u32>>,
    pub logprobs: Vec<f32>,
}

/// One training batch from [`CacheReader::epoch_batches`].
pub type TargetBatch = DecodedTargets;

impl DecodedTargets {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.indices.len()
    }
    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}

/// What one epoch streams; see [`CacheReader::epoch_batches`].
#[derive(Clone, Debug, PartialEq)]
pub struct EpochPlan {
    pub seed: u64,
    pub epoch: u64,
    /// Position in the epoch order to start at (0 for a fresh epoch; the
    /// `position()` of an interrupted run to resume it).
    pub start: u64,
    pub batch_size: usize,
    /// Blocks shuffled together (memory: `window_blocks * records_per_block * classes * 4` bytes).
    pub window_blocks: usize,
    /// Temperature of the returned log-probabilities.
    pub temperature: f32,
    pub allow_topk_retemper: bool,
    /// Drop the last, smaller batch.
    pub drop_last: bool,
}

/// Result of [`CacheReader::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifyReport {
    pub shards: usize,
    pub blocks: usize,
    pub samples: u64,
    pub bytes: u64,
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ok: {} shards, {} blocks, {} samples, {} bytes checked",
            self.shards, self.blocks, self.samples, self.bytes
        )
    }
}

/// Summary for `distill cache inspect`; `Display` renders it for humans.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheStats {
    pub id: String,
    pub samples: u64,
    pub classes: usize,
    pub temperature: f32,
    pub encoding: Encoding,
    pub shards: usize,
    pub blocks: usize,
    pub bytes_on_disk: u64,
    pub bytes_per_sample: f64,
    /// Size of the raw f32 logits (`samples * classes * 4`) over the size on disk.
    pub compression_ratio: f64,
    pub teacher_accuracy: Option<f64>,
    pub mean_entropy: f64,
    pub fidelity: Fidelity,
    pub teacher_spec: String,
    pub dataset_split: String,
}

impl fmt::Display for CacheStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cache {}", self.id)?;
        writeln!(f, "  teacher        {}", self.teacher_spec)?;
        writeln!(
            f,
            "  samples        {} ({} split), {} classes",
            self.samples, self.dataset_split, self.classes
        )?;
        writeln!(f, "  temperature    {}", self.temperature)?;
        writeln!(f, "  encoding       {}", self.encoding)?;
        writeln!(
            f,
            "  on disk        {} bytes in {} shards, {} blocks",
            self.bytes_on_disk, self.shards, self.blocks
        )?;
        writeln!(
            f,
            "  bytes/sample   {:.2} ({:.2}x smaller than f32 logits)",
            self.bytes_per_sample, self.compression_ratio
        )?;
        match self.teacher_accuracy {
            Some(a) => writeln!(
                f,
                "  teacher acc.   {:.2}% (top-1 vs stored labels)",
                a * 100.0
            )?,
            None => writeln!(f, "  teacher acc.   n/a (unlabelled)")?,
        }
        writeln!(
            f,
            "  mean entropy   {:.4} nats at T={}",
            self.mean_entropy, self.temperature
        )?;
        write!(
            f,
            "  fidelity       mean KL {:.3e}, max KL {:.3e}, top-1 agreement {:.4}%",
            self.fidelity.mean_kl,
            self.fidelity.max_kl,
            self.fidelity.top1_agreement * 100.0
        )
    }
}

/// Why `dir` has no `manifest.json` to open, said in the terms of what it
/// is: nothing, a file, one part of a build, the parent of a build's parts,
/// a set of augmented views, or an unfinished build (or no cache at all).
fn no_manifest(dir: &Path) -> CacheError {
    let shown = dir.display().to_string();
    if !dir.exists() {
        return CacheError::input(
            shown,
            "no such directory: give the directory a cache was built into (cache build --out)",
        );
    }
    if !dir.is_dir() {
        return CacheError::input(
            shown,
            "is a file, not a cache directory: give the directory a cache was built into (cache build --out)",
        );
    }
    if dir.join(PART_FILE).exists() {
        return CacheError::input(
            shown,
            "holds one part of a cache (part.json), not a whole cache: merge the parts into one cache (distill cache merge) and use that",
        );
    }
    let parts = super::part::part_dirs_in(dir);
    if let Some(first) = parts.first() {
        const LISTED: usize = 4;
        let mut names: Vec<String> = parts.iter().take(LISTED).map(|p| p.dir_name()).collect();
        if parts.len() > LISTED {
            names.push(format!("and {} more", parts.len() - LISTED));
        }
        let pattern = match parts.iter().all(|p| p.count == first.count) {
            true => format!("part-*-of-{}", first.count),
            false => "part-*-of-N".to_string(),
        };
        return CacheError::input(
            shown,
            format!(
                "holds the parts of a build ({}), not a cache: when every part is built, merge them into one cache (distill cache merge {}/{pattern} --out CACHE) and use that",
                names.join(", "),
                dir.display()
            ),
        );
    }
    if super::views::is_view_set(dir) {
        return CacheError::input(
            shown,
            format!(
                "holds a set of augmented views ({} and view-N/ caches), not a single cache: \
                 give a plain cache here (one built without --augment)",
                super::views::SUMMARY_FILE
            ),
        );
    }
    CacheError::input(
        dir.join(MANIFEST_FILE).display().to_string(),
        "no manifest.json: this is not a cache directory, or its build never finished (rerun the build to resume it)",
    )
}

/// Zeroed (indices, labels, log-probs) buffers.
type Outputs = (Vec<u64>, Option<Vec<u32>>, Vec<f32>);

struct Shard {
    path: PathBuf,
    map: Mmap,
    header: ShardHeader,
    blocks: Vec<BlockEntry>,
}

#[derive(Clone, Copy, Debug)]
struct GlobalBlock {
    shard: usize,
    block: usize,
    first_sample: u64,
    count: usize,
}

/// An open cache. `Send + Sync`: share it with a loader thread by reference or `Arc`.
pub struct CacheReader {
    dir: PathBuf,
    manifest: Manifest,
    codec: Codec,
    shards: Vec<Shard>,
    blocks: Vec<GlobalBlock>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = const { RefCell::new(Scratch { buf: Vec::new(), dctx: None }) };
}

struct Scratch {
    buf: Vec<u64>,
    dctx: Option<zstd::bulk::Decompressor<'static>>,
}

/// Output slices for one block.
struct BlockOut<'a> {
    g: usize,
    idx: &'a mut [u64],
    labels: Option<&'a mut [u32]>,
    lp: &'a mut [f32],
}

impl CacheReader {
    /// Opens the cache in `dir`: reads and validates `manifest.json`, maps
    /// every shard and validates its header and block index against the manifest.
    ///
    /// # Safety
    ///
    /// The shard files are memory-mapped. They must not be modified or
    /// truncated (by this or another process) while the reader is alive;
    /// doing so is undefined behaviour (at best a SIGBUS). distill never
    /// modifies a shard after it is named; a rebuild writes new files and only
    /// deletes old ones after committing, so do not rebuild into a directory
    /// that a live reader uses.
    pub unsafe fn open(dir: &Path) -> Result<CacheReader> {
        let mpath = dir.join(MANIFEST_FILE);
        let mfile = File::open(&mpath).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound || !dir.is_dir() {
                no_manifest(dir)
            } else {
                CacheError::io(&mpath, "open", e)
            }
        })?;
        let mlen = mfile
            .metadata()
            .map_err(|e| CacheError::io(&mpath, "stat", e))?
            .len();
        if mlen > MAX_MANIFEST_BYTES {
            return Err(CacheError::corrupt(
                &mpath,
                "manifest",
                format!("{mlen} bytes is over the {MAX_MANIFEST_BYTES}-byte limit"),
            ));
        }
        let bytes = std::fs::read(&mpath).map_err(|e| CacheError::io(&mpath, "read", e))?;
        let manifest = Manifest::parse(&mpath, &bytes)?;
        let classes = manifest.num_classes as usize; // checked by validate (<= MAX_CLASSES)
        let codec = Codec::new(manifest.encoding, classes);

        let mut shards = Vec::with_capacity(manifest.shards.len());
        let mut blocks = Vec::new();
        for (si, entry) in manifest.shards.iter().enumerate() {
            let path = dir.join(&entry.file);
            let file = File::open(&path).map_err(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    CacheError::corrupt(
                        &path,
                        format!("shard {si}"),
                        "file listed in manifest.json is missing",
                    )
                } else {
                    CacheError::io(&path, "open", e)
                }
            })?;
            let meta = file
                .metadata()
                .map_err(|e| CacheError::io(&path, "stat", e))?;
            if meta.is_dir() {
                return Err(CacheError::corrupt(
                    &path,
                    format!("shard {si}"),
                    format!(
                        "is a directory, not the {}-byte shard file manifest.json lists (the file was replaced)",
                        entry.bytes
                    ),
                ));
            }
            let len = meta.len();
            if len != entry.bytes || len < HEADER_BYTES as u64 {
                return Err(CacheError::corrupt(
                    &path,
                    format!("shard {si}"),
                    format!(
                        "file is {len} bytes but manifest.json says {} (truncated or replaced)",
                        entry.bytes
                    ),
                ));
            }
            // SAFETY: the caller guarantees the file is not modified while mapped (see `# Safety`).
            let map =
                unsafe { Mmap::map(&file) }.map_err(|e| CacheError::io(&path, "memory-map", e))?;
            let (header, entries) = parse_shard(&path, &map)?;
            let m = &manifest;
            let mismatch = if header.first_sample != entry.first_sample
                || header.records != entry.num_samples
            {
                Some(format!(
                    "holds samples {}+{}, manifest.json says {}+{}",
                    header.first_sample, header.records, entry.first_sample, entry.num_samples
                ))
            } else if header.version != m.format_version {
                Some(format!(
                    "is format version {}, manifest.json says {}",
                    header.version, m.format_version
                ))
            } else if header.encoding != m.encoding || header.classes as u64 != m.num_classes {
                Some(format!(
                    "holds {} with {} classes, manifest.json says {} with {}",
                    header.encoding, header.classes, m.encoding, m.num_classes
                ))
            } else if header.temperature.to_bits() != m.temperature.to_bits()
                || header.has_labels != m.has_labels
            {
                Some(format!(
                    "temperature {} / labels {} differ from manifest.json",
                    header.temperature, header.has_labels
                ))
            } else if header.records_per_block != m.records_per_block {
                Some(format!(
                    "{} records per block, manifest.json says {}",
                    header.records_per_block, m.records_per_block
                ))
            } else {
                None
            };
            if let Some(msg) = mismatch {
                return Err(CacheError::corrupt(&path, "header", msg));
            }
            for (bi, b) in entries.iter().enumerate() {
                blocks.push(GlobalBlock {
                    shard: si,
                    block: bi,
                    first_sample: header.first_sample + b.first_record,
                    count: b.record_count as usize,
                });
            }
            shards.push(Shard {
                path,
                map,
                header,
                blocks: entries,
            });
        }
        Ok(CacheReader {
            dir: dir.to_path_buf(),
            manifest,
            codec,
            shards,
            blocks,
        })
    }

    /// The validated manifest.
    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.manifest.dataset.num_samples
    }
    /// Always false: an empty cache cannot be built.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Number of classes `C`.
    pub fn num_classes(&self) -> usize {
        self.codec.classes
    }
    /// Temperature of the stored log-probabilities.
    pub fn temperature(&self) -> f32 {
        self.manifest.temperature
    }
    /// How the log-probabilities are stored.
    pub fn encoding(&self) -> Encoding {
        self.manifest.encoding
    }
    /// Whether labels are stored.
    pub fn has_labels(&self) -> bool {
        self.manifest.has_labels
    }
    /// The cache directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Refuses to pair the cache with other data, naming what differs; the
    /// data's classes (its largest label + 1) must be within the cache's (a
    /// split without samples of the last classes pairs with a teacher of
    /// them all).
    pub fn check_pairing(
        &self,
        dataset_fingerprint: &str,
        num_samples: u64,
        num_classes: Option<usize>,
    ) -> Result<()> {
        let d = &self.manifest.dataset;
        let path = self.dir.join(MANIFEST_FILE);
        if d.fingerprint != dataset_fingerprint {
            return Err(CacheError::Mismatch {
                path,
                field: "dataset fingerprint",
                cached: format!(
                    "{} (split '{}', {} samples)",
                    d.fingerprint, d.split, d.num_samples
                ),
                given: dataset_fingerprint.to_string(),
            });
        }
        if d.num_samples != num_samples {
            return Err(CacheError::Mismatch {
                path,
                field: "sample count",
                cached: d.num_samples.to_string(),
                given: num_samples.to_string(),
            });
        }
        if let Some(c) = num_classes {
            if c > self.num_classes() {
                return Err(CacheError::Mismatch {
                    path,
                    field: "number of classes",
                    cached: self.num_classes().to_string(),
                    given: c.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Refuses decoding at `t` where it cannot be done (a sparse encoding
    /// at another temperature without `allow_topk`), as every read would:
    /// for a caller that must know before it writes anything.
    pub fn check_temperature(&self, t: f32, allow_topk: bool) -> Result<()> {
        self.retemper_needed(t, allow_topk).map(|_| ())
    }

    /// Whether decoding at `t` needs re-tempering; refuses what cannot be done.
    fn retemper_needed(&self, t: f32, allow_topk: bool) -> Result<bool> {
        if !(t.is_finite() && t > 0.0) {
            return Err(CacheError::input(
                "temperature",
                format!("{t} is not a positive finite number"),
            ));
        }
        let stored = self.temperature();
        if t.to_bits() == stored.to_bits() {
            return Ok(false);
        }
        let encoding = self.encoding();
        if !encoding.is_dense() && !allow_topk {
            return Err(CacheError::TopKRetemper {
                path: self.dir.join(MANIFEST_FILE),
                stored_values: encoding.describe(),
                stored,
                requested: t,
            });
        }
        Ok(true)
    }

    /// Checks, decompresses and decodes global block `o.g` into `o`.
    fn decode_block(&self, o: BlockOut<'_>, retemper_to: Option<f32>) -> Result<()> {
        let gb = self.blocks[o.g];
        let shard = &self.shards[gb.shard];
        let entry = &shard.blocks[gb.block];
        let loc = || format!("block {}", gb.block);
        let bad = |msg: String| CacheError::corrupt(&shard.path, loc(), msg);
        // Offsets were validated against the file length on open.
        let data =
            &shard.map[entry.offset as usize..(entry.offset + entry.compressed_len) as usize];
        let sum = xxh3_64(data);
        if sum != entry.checksum {
            return Err(bad(format!(
                "checksum mismatch (stored {:016x}, computed {sum:016x})",
                entry.checksum
            )));
        }
        let n = gb.count;
        let c = self.codec.classes;
        let raw_len = entry.raw_len as usize;
        SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let Scratch { buf, dctx } = &mut *s;
            if dctx.is_none() {
                *dctx = Some(
                    zstd::bulk::Decompressor::new()
                        .map_err(|e| bad(format!("cannot create zstd context: {e}")))?,
                );
            }
            let words = raw_len.div_ceil(8);
            if buf.len() < words {
                buf.resize(words, 0);
            }
            // SAFETY: u8 has alignment 1 and no invalid bit patterns; the slice
            // covers `raw_len <= words * 8` bytes of `buf`'s allocation.
            let raw: &mut [u8] =
                unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr().cast::<u8>(), raw_len) };
            let dctx = dctx
                .as_mut()
                .ok_or_else(|| bad("zstd context missing".into()))?;
            let got = dctx
                .decompress_to_buffer(data, raw)
                .map_err(|e| bad(format!("zstd decompression failed: {e}")))?;
            if got != raw_len {
                return Err(bad(format!(
                    "decompressed to {got} bytes, expected {raw_len}"
                )));
            }
            if shard.header.has_shuffled_columns() {
                unshuffle_columns(&mut raw[..COLUMN_BYTES * n], n);
            }
            let raw: &[u8] = raw;
            let (idx_col, rest) = raw.split_at(8 * n);
            let (lab_col, payload) = rest.split_at(4 * n);
            for (i, (o, b)) in o.idx.iter_mut().zip(idx_col.chunks_exact(8)).enumerate() {
                let v = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
                if v != gb.first_sample + i as u64 {
                    return Err(bad(format!(
                        "record {i} is sample {v}, expected {}",
                        gb.first_sample + i as u64
                    )));
                }
                *o = v;
            }
            let labelled = self.manifest.has_labels;
            let mut bad_label = None;
            match o.labels {
                Some(out) => {
                    for (o, b) in out.iter_mut().zip(lab_col.chunks_exact(4)) {
                        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                        if v as usize >= c {
                            bad_label = Some(v);
                        }
                        *o = v;
                    }
                }
                None => {
                    if !labelled && lab_col.chunks_exact(4).any(|b| b != [0xff; 4]) {
                        bad_label = Some(0);
                    }
                }
            }
            if let Some(v) = bad_label {
                return Err(bad(format!(
                    "label {v} is invalid for a cache with {c} classes (labelled: {labelled})"
                )));
            }
            self.codec.decode_rows(payload, o.lp).map_err(bad)?;
            // The writer refuses non-finite values, so one here means a shard
            // forged with valid checksums: never hand it to a trainer.
            if let Some(i) = o.lp.iter().position(|v| !v.is_finite()) {
                return Err(bad(format!(
                    "record {} decodes to a non-finite log-probability ({})",
                    i / c,
                    o.lp[i]
                )));
            }
            Ok(())
        })?;
        if let Some(t) = retemper_to {
            retemper_rows(o.lp, c, self.temperature(), t);
        }
        Ok(())
    }

    /// Decodes global blocks `which` (in that order) into the concatenated outputs, in parallel.
    fn decode_blocks(
        &self,
        which: &[usize],
        retemper_to: Option<f32>,
        mut idx: &mut [u64],
        mut labels: Option<&mut [u32]>,
        mut lp: &mut [f32],
    ) -> Result<()> {
        let c = self.codec.classes;
        let mut outs = Vec::with_capacity(which.len());
        for &g in which {
            let n = self.blocks[g].count;
            let (i, ri) = std::mem::take(&mut idx).split_at_mut(n);
            idx = ri;
            let l = match labels.take() {
                Some(all) => {
                    let (l, rl) = all.split_at_mut(n);
                    labels = Some(rl);
                    Some(l)
                }
                None => None,
            };
            let (p, rp) = std::mem::take(&mut lp).split_at_mut(n * c);
            lp = rp;
            outs.push(BlockOut {
                g,
                idx: i,
                labels: l,
                lp: p,
            });
        }
        outs.into_par_iter()
            .with_max_len(1)
            .try_for_each(|o| self.decode_block(o, retemper_to))
    }

    fn outputs(&self, rows: usize) -> Result<Outputs> {
        let total = rows
            .checked_mul(self.codec.classes)
            .ok_or_else(|| CacheError::input("read", "output size overflows"))?;
        Ok((
            vec![0; rows],
            self.has_labels().then(|| vec![0; rows]),
            vec![0.0; total],
        ))
    }

    /// The teacher's top class for every sample of `data` (checked to be
    /// the data this cache was built on), with the tie rule of
    /// [`crate::numeric::argmax`].
    pub fn teacher_predictions(&self, data: &crate::data::Dataset) -> Result<Vec<u32>> {
        self.check_pairing(&data.fingerprint().0, data.len() as u64, data.num_classes())?;
        let all = self.read_all(self.temperature(), true)?;
        Ok(crate::numeric::argmax_rows(
            &all.logprobs,
            self.num_classes(),
        ))
    }

    /// Decodes every record into (labels, dense log-probs at temperature `t`),
    /// in sample order, in parallel over blocks.
    pub fn read_all(&self, t: f32, allow_topk_retemper: bool) -> Result<DecodedTargets> {
        let re = self.retemper_needed(t, allow_topk_retemper)?.then_some(t);
        let rows = usize::try_from(self.len())
            .map_err(|_| CacheError::input("read_all", "cache too large for this platform"))?;
        let (mut idx, mut labels, mut lp) = self.outputs(rows)?;
        let all: Vec<usize> = (0..self.blocks.len()).collect();
        self.decode_blocks(&all, re, &mut idx, labels.as_deref_mut(), &mut lp)?;
        Ok(DecodedTargets {
            indices: idx,
            labels,
            logprobs: lp,
        })
    }

    /// Global block holding `sample` (< len).
    fn block_of(&self, sample: u64) -> usize {
        self.blocks
            .partition_point(|b| b.first_sample + b.count as u64 <= sample)
    }

    /// Decodes the given samples (any order, repeats allowed), decoding each needed block once.
    pub fn read_samples(
        &self,
        indices: &[u64],
        t: f32,
        allow_topk_retemper: bool,
    ) -> Result<DecodedTargets> {
        let re = self.retemper_needed(t, allow_topk_retemper)?.then_some(t);
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(CacheError::input(
                "read_samples",
                format!(
                    "sample {bad} is out of range: the cache holds {} samples",
                    self.len()
                ),
            ));
        }
        let c = self.codec.classes;
        let mut need: Vec<usize> = indices.iter().map(|&i| self.block_of(i)).collect();
        need.sort_unstable();
        need.dedup();
        let rows: usize = need.iter().map(|&g| self.blocks[g].count).sum();
        let (mut bidx, mut blabels, mut blp) = self.outputs(rows)?;
        self.decode_blocks(&need, re, &mut bidx, blabels.as_deref_mut(), &mut blp)?;
        // Row of each needed block's first record in the decoded buffers.
        let mut starts = Vec::with_capacity(need.len());
        let mut acc = 0;
        for &g in &need {
            starts.push(acc);
            acc += self.blocks[g].count;
        }
        let (mut idx, mut labels, mut lp) = self.outputs(indices.len())?;
        for (k, &s) in indices.iter().enumerate() {
            let g = self.block_of(s);
            let pos = need.binary_search(&g).unwrap_or(0);
            let row = starts[pos] + (s - self.blocks[g].first_sample) as usize;
            idx[k] = bidx[row];
            if let (Some(l), Some(bl)) = (labels.as_mut(), blabels.as_ref()) {
                l[k] = bl[row];
            }
            lp[k * c..(k + 1) * c].copy_from_slice(&blp[row * c..(row + 1) * c]);
        }
        Ok(DecodedTargets {
            indices: idx,
            labels,
            logprobs: lp,
        })
    }

    fn spans(&self) -> Vec<BlockSpan> {
        self.blocks
            .iter()
            .map(|b| BlockSpan {
                first_sample: b.first_sample,
                count: b.count as u64,
            })
            .collect()
    }

    /// The exact sample order [`epoch_batches`](Self::epoch_batches) follows for `(seed, epoch, window_blocks)`.
    pub fn epoch_order(&self, seed: u64, epoch: u64, window_blocks: usize) -> Vec<u64> {
        epoch_order(&self.spans(), seed, epoch, window_blocks)
    }

    /// Streams one epoch in the deterministic order of
    /// [`epoch_order`](Self::epoch_order), starting at position `plan.start`.
    /// Each window of `plan.window_blocks` blocks is decoded in parallel, then
    /// served in its shuffled order; batches may span windows, so every batch
    /// but the last has `batch_size` samples whatever the window size.
    pub fn epoch_batches(&self, plan: EpochPlan) -> Result<EpochBatches<'_>> {
        if plan.batch_size == 0 {
            return Err(CacheError::input("batch_size", "must be at least 1"));
        }
        if plan.window_blocks == 0 {
            return Err(CacheError::input("window_blocks", "must be at least 1"));
        }
        if plan.start > self.len() {
            return Err(CacheError::input(
                "start",
                format!(
                    "position {} is past the end of the {}-sample epoch",
                    plan.start,
                    self.len()
                ),
            ));
        }
        let retemper_to = self
            .retemper_needed(plan.temperature, plan.allow_topk_retemper)?
            .then_some(plan.temperature);
        let perm = block_permutation(self.blocks.len(), plan.seed, plan.epoch);
        let windows: Vec<Vec<usize>> = perm
            .chunks(plan.window_blocks)
            .map(|w| w.to_vec())
            .collect();
        for w in &windows {
            let rows: usize = w.iter().map(|&g| self.blocks[g].count).sum();
            if rows > u32::MAX as usize {
                return Err(CacheError::input(
                    "window_blocks",
                    format!(
                        "{} blocks hold {rows} samples, over 2^32; use fewer",
                        plan.window_blocks
                    ),
                ));
            }
        }
        // Skip whole windows before `start` without decoding or shuffling them.
        let mut first_window = 0;
        let mut skipped = 0u64;
        while first_window < windows.len() {
            let rows: u64 = windows[first_window]
                .iter()
                .map(|&g| self.blocks[g].count as u64)
                .sum();
            if skipped + rows > plan.start {
                break;
            }
            skipped += rows;
            first_window += 1;
        }
        let c = self.num_classes();
        Ok(EpochBatches {
            reader: self,
            retemper_to,
            skip_in_window: (plan.start - skipped) as usize,
            position: plan.start,
            plan,
            windows,
            next_window: first_window,
            order: Vec::new(),
            cursor: 0,
            idx: Vec::new(),
            labels: None,
            lp: Vec::new(),
            classes: c,
            finished: false,
        })
    }

    /// Checks every block (checksum, decompression, structure) and every
    /// shard's whole-file xxh3 against the manifest. Errors name the shard
    /// file and block.
    pub fn verify(&self) -> Result<VerifyReport> {
        let c = self.codec.classes;
        (0..self.blocks.len())
            .into_par_iter()
            .with_max_len(1)
            .try_for_each(|g| {
                let n = self.blocks[g].count;
                let mut idx = vec![0u64; n];
                let mut labels = vec![0u32; if self.has_labels() { n } else { 0 }];
                let mut lp = vec![0.0f32; n * c];
                let l = self.has_labels().then_some(&mut labels[..]);
                self.decode_block(
                    BlockOut {
                        g,
                        idx: &mut idx,
                        labels: l,
                        lp: &mut lp,
                    },
                    None,
                )
            })?;
        self.shards.par_iter().zip(&self.manifest.shards).enumerate().try_for_each(|(si, (s, e))| {
            let sum = format!("{:016x}", xxh3_64(&s.map));
            if sum != e.xxh3 {
                return Err(CacheError::corrupt(
                    &s.path,
                    format!("shard {si}"),
                    format!("file checksum {sum} differs from manifest.json's {} (the file was replaced or damaged)", e.xxh3),
                ));
            }
            Ok(())
        })?;
        Ok(VerifyReport {
            shards: self.shards.len(),
            blocks: self.blocks.len(),
            samples: self.len(),
            bytes: self.shards.iter().map(|s| s.map.len() as u64).sum(),
        })
    }

    /// Summary numbers for `cache inspect`.
    pub fn stats(&self) -> CacheStats {
        let m = &self.manifest;
        let bytes: u64 = m.shards.iter().map(|s| s.bytes).sum();
        let raw = self.len() as f64 * self.num_classes() as f64 * 4.0;
        CacheStats {
            id: m.id.clone(),
            samples: self.len(),
            classes: self.num_classes(),
            temperature: m.temperature,
            encoding: m.encoding,
            shards: self.shards.len(),
            blocks: self.blocks.len(),
            bytes_on_disk: bytes,
            bytes_per_sample: bytes as f64 / self.len() as f64,
            compression_ratio: raw / bytes as f64,
            teacher_accuracy: m.teacher_stats.accuracy,
            mean_entropy: m.teacher_stats.mean_entropy,
            fidelity: m.fidelity.clone(),
            teacher_spec: m.teacher.spec.clone(),
            dataset_split: m.dataset.split.clone(),
        }
    }

    /// The header of shard `i` (for tools).
    pub fn shard_header(&self, i: usize) -> Option<&ShardHeader> {
        self.shards.get(i).map(|s| &s.header)
    }
}

/// Iterator over one epoch's batches; see [`CacheReader::epoch_batches`].
pub struct EpochBatches<'a> {
    reader: &'a CacheReader,
    plan: EpochPlan,
    retemper_to: Option<f32>,
    windows: Vec<Vec<usize>>,
    next_window: usize,
    skip_in_window: usize,
    /// Current window: shuffled positions into the decoded buffers, and the next one to serve.
    order: Vec<u32>,
    cursor: usize,
    idx: Vec<u64>,
    labels: Option<Vec<u32>>,
    lp: Vec<f32>,
    classes: usize,
    position: u64,
    finished: bool,
}

impl EpochBatches<'_> {
    /// Position in the epoch order of the next sample to be served: pass it as
    /// `EpochPlan::start` to resume after the batches already consumed.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn load_window(&mut self) -> Result<()> {
        let r = self.reader;
        let w = &self.windows[self.next_window];
        let rows: usize = w.iter().map(|&g| r.blocks[g].count).sum();
        self.idx.resize(rows, 0);
        self.lp.resize(rows * self.classes, 0.0);
        let mut labels = self.labels.take().unwrap_or_default();
        if r.has_labels() {
            labels.resize(rows, 0);
        }
        let res = r.decode_blocks(
            w,
            self.retemper_to,
            &mut self.idx,
            r.has_labels().then_some(&mut labels[..]),
            &mut self.lp,
        );
        self.labels = Some(labels);
        res?;
        self.order = window_positions(
            rows,
            self.plan.seed,
            self.plan.epoch,
            self.next_window as u64,
        );
        self.cursor = std::mem::take(&mut self.skip_in_window);
        self.next_window += 1;
        Ok(())
    }
}

impl Iterator for EpochBatches<'_> {
    type Item = Result<TargetBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.finished {
            return None;
        }
        let bs = self.plan.batch_size;
        let c = self.classes;
        let labelled = self.reader.has_labels();
        let mut batch = TargetBatch {
            indices: Vec::with_capacity(bs),
            labels: labelled.then(|| Vec::with_capacity(bs)),
            logprobs: Vec::with_capacity(bs * c),
        };
        while batch.indices.len() < bs {
            if self.cursor >= self.order.len() {
                if self.next_window >= self.windows.len() {
                    self.finished = true;
                    break;
                }
                if let Err(e) = self.load_window() {
                    self.finished = true;
                    return Some(Err(e));
                }
                continue;
            }
            let take = (bs - batch.indices.len()).min(self.order.len() - self.cursor);
            for &p in &self.order[self.cursor..self.cursor + take] {
                let p = p as usize;
                batch.indices.push(self.idx[p]);
                if let (Some(l), Some(src)) = (batch.labels.as_mut(), self.labels.as_ref()) {
                    l.push(src[p]);
                }
                batch
                    .logprobs
                    .extend_from_slice(&self.lp[p * c..(p + 1) * c]);
            }
            self.cursor += take;
        }
        if batch.indices.is_empty() || (batch.indices.len() < bs && self.plan.drop_last) {
            self.finished = true;
            return None;
        }
        self.position += batch.indices.len() as u64;
        Some(Ok(batch))
    }
}

#[cfg(test)]
mod tests;

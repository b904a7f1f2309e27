//! The shard byte layout: header, block index, block columns, limits.
//!
//! A shard is one immutable file (see `FORMAT.md` for the diagram):
//! a 128-byte little-endian header, a block index of 48-byte entries, then
//! zstd-compressed blocks, each starting on an 8-byte boundary and followed by
//! zero padding; the last block's padding ends the file. Everything here
//! treats bytes as hostile: sizes are bounded, arithmetic is checked, and the
//! blocks must tile the file exactly.
//!
//! Format versions: 1 stores a block's index and label columns as plain
//! little-endian integers; 2 stores them as byte planes
//! ([`shuffle_columns`]: 1.2 to 1.9 bytes per sample less after zstd on
//! the Fashion-MNIST teacher's caches) and adds the
//! codecs whose [`Encoding::since_version`] is 2. The writer writes
//! [`FORMAT_VERSION_CURRENT`]; the reader reads every version from
//! [`FORMAT_VERSION_OLDEST_SUPPORTED`] and undoes the shuffle by the shard's
//! own version ([`unshuffle_columns`]).

use std::path::Path;

use xxhash_rust::xxh3::xxh3_64;

use super::codec::Encoding;
use super::{CacheError, Result};

/// The first eight bytes of every shard.
pub const MAGIC: [u8; 8] = *b"DSTLSHRD";
/// The format version this build writes (shards and manifest).
pub const FORMAT_VERSION_CURRENT: u32 = 2;
/// The first format version whose blocks hold byte-plane shuffled index and
/// label columns ([`shuffle_columns`]).
pub const FORMAT_VERSION_SHUFFLED_COLUMNS: u32 = 2;
/// The oldest format version this build still reads.
pub const FORMAT_VERSION_OLDEST_SUPPORTED: u32 = 1;
/// Size of the fixed shard header.
pub const HEADER_BYTES: usize = 128;
/// Size of one block-index entry.
pub const INDEX_ENTRY_BYTES: usize = 48;
/// Alignment of every block's start.
pub const ALIGN: u64 = 8;
/// Most blocks one shard may have.
pub const MAX_BLOCKS_PER_SHARD: u32 = 1 << 20;
/// Most records one block may have.
pub const MAX_RECORDS_PER_BLOCK: u32 = 1 << 20;
/// Largest decompressed block.
pub const MAX_BLOCK_RAW_BYTES: u64 = 1 << 30;

/// Bytes of one record in a decompressed block: index (8) + label (4) + payload.
pub fn raw_record_bytes(enc: Encoding, classes: usize) -> usize {
    12 + enc.payload_bytes(classes)
}

/// Bytes of a block's index (u64) and label (u32) columns per record.
pub const COLUMN_BYTES: usize = 12;

/// Rearranges the index (`n` x u64) and label (`n` x u32) columns at the
/// start of a raw block (`cols`, exactly `12 n` bytes, plain little-endian)
/// into byte planes: byte `b` of every index, for `b` = 0..8, then byte `b`
/// of every label, for `b` = 0..4. The index column is an arithmetic
/// sequence and labels are small, so most planes are constant and zstd
/// stores them in a few bytes (the Blosc shuffle). Format version 2 and later.
pub fn shuffle_columns(cols: &mut [u8], n: usize) {
    debug_assert_eq!(cols.len(), COLUMN_BYTES * n);
    let plain = cols.to_vec();
    for (width, start) in [(8usize, 0usize), (4, 8 * n)] {
        for i in 0..n {
            for b in 0..width {
                cols[start + b * n + i] = plain[start + width * i + b];
            }
        }
    }
}

/// Inverse of [`shuffle_columns`]: byte planes back to plain little-endian columns.
pub fn unshuffle_columns(cols: &mut [u8], n: usize) {
    debug_assert_eq!(cols.len(), COLUMN_BYTES * n);
    let planes = cols.to_vec();
    for (width, start) in [(8usize, 0usize), (4, 8 * n)] {
        for i in 0..n {
            for b in 0..width {
                cols[start + width * i + b] = planes[start + b * n + i];
            }
        }
    }
}

/// Whether a shard of format `version` stores shuffled columns.
pub fn has_shuffled_columns(version: u32) -> bool {
    version >= FORMAT_VERSION_SHUFFLED_COLUMNS
}

/// Rounds `x` up to the next multiple of [`ALIGN`]; `None` on overflow.
pub fn align_up(x: u64) -> Option<u64> {
    x.checked_add(ALIGN - 1).map(|v| v / ALIGN * ALIGN)
}

/// Build statistics of one shard, stored in its header so a resumed build
/// reproduces the manifest byte for byte without the teacher's outputs.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardStats {
    /// Sum over records of KL(exact || decoded), nats.
    pub sum_kl: f64,
    /// Largest per-record KL(exact || decoded), nats.
    pub max_kl: f64,
    /// Records whose decoded top-1 class equals the exact one.
    pub top1_agree: u64,
    /// Records whose teacher top-1 class equals the stored label (0 when unlabelled).
    pub correct: u64,
    /// Sum over records of the teacher's entropy at T, nats.
    pub sum_entropy: f64,
}

/// The fixed shard header (FORMAT.md, "Shard header").
#[derive(Clone, Debug, PartialEq)]
pub struct ShardHeader {
    pub version: u32,
    pub encoding: Encoding,
    pub classes: u32,
    pub has_labels: bool,
    pub first_sample: u64,
    pub records: u64,
    pub blocks: u32,
    pub records_per_block: u32,
    pub temperature: f32,
    pub zstd_level: i32,
    pub index_checksum: u64,
    pub stats: ShardStats,
}

/// One block-index entry (FORMAT.md, "Block index").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockEntry {
    /// Byte offset of the compressed block in the shard file.
    pub offset: u64,
    pub compressed_len: u64,
    pub raw_len: u64,
    /// Index of the block's first record within the shard.
    pub first_record: u64,
    pub record_count: u32,
    /// xxh3-64 of the compressed bytes.
    pub checksum: u64,
}

impl ShardHeader {
    /// Serialises the header, computing its checksum.
    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut b = [0u8; HEADER_BYTES];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..14].copy_from_slice(&self.encoding.tag().to_le_bytes());
        b[14..16].copy_from_slice(&self.encoding.param().to_le_bytes());
        b[16..20].copy_from_slice(&self.classes.to_le_bytes());
        b[20..24].copy_from_slice(&(self.has_labels as u32).to_le_bytes());
        b[24..32].copy_from_slice(&self.first_sample.to_le_bytes());
        b[32..40].copy_from_slice(&self.records.to_le_bytes());
        b[40..44].copy_from_slice(&self.blocks.to_le_bytes());
        b[44..48].copy_from_slice(&self.records_per_block.to_le_bytes());
        b[48..52].copy_from_slice(&self.temperature.to_le_bytes());
        b[52..56].copy_from_slice(&self.zstd_level.to_le_bytes());
        b[56..64].copy_from_slice(&self.index_checksum.to_le_bytes());
        b[64..72].copy_from_slice(&self.stats.sum_kl.to_le_bytes());
        b[72..80].copy_from_slice(&self.stats.max_kl.to_le_bytes());
        b[80..88].copy_from_slice(&self.stats.top1_agree.to_le_bytes());
        b[88..96].copy_from_slice(&self.stats.correct.to_le_bytes());
        b[96..104].copy_from_slice(&self.stats.sum_entropy.to_le_bytes());
        // 104..120 reserved, zero.
        let sum = xxh3_64(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
        b
    }

    /// Whether this shard's blocks hold shuffled index and label columns.
    pub fn has_shuffled_columns(&self) -> bool {
        has_shuffled_columns(self.version)
    }

    /// Bytes of one decompressed record.
    pub fn record_bytes(&self) -> usize {
        raw_record_bytes(self.encoding, self.classes as usize)
    }
}

impl BlockEntry {
    /// Serialises one index entry.
    pub fn to_bytes(&self) -> [u8; INDEX_ENTRY_BYTES] {
        let mut b = [0u8; INDEX_ENTRY_BYTES];
        b[0..8].copy_from_slice(&self.offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.raw_len.to_le_bytes());
        b[24..32].copy_from_slice(&self.first_record.to_le_bytes());
        b[32..36].copy_from_slice(&self.record_count.to_le_bytes());
        // 36..40 reserved, zero.
        b[40..48].copy_from_slice(&self.checksum.to_le_bytes());
        b
    }
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
fn f64_at(b: &[u8], at: usize) -> f64 {
    f64::from_bits(u64_at(b, at))
}

/// Refuses a format version (of a shard or a manifest at `path`) outside
/// `FORMAT_VERSION_OLDEST_SUPPORTED..=FORMAT_VERSION_CURRENT`, with advice.
pub(crate) fn check_version(path: &Path, version: u32) -> Result<()> {
    if (FORMAT_VERSION_OLDEST_SUPPORTED..=FORMAT_VERSION_CURRENT).contains(&version) {
        return Ok(());
    }
    Err(CacheError::UnsupportedVersion {
        path: path.to_path_buf(),
        found: version,
        oldest: FORMAT_VERSION_OLDEST_SUPPORTED,
        current: FORMAT_VERSION_CURRENT,
        advice: if version > FORMAT_VERSION_CURRENT {
            "upgrade distill to read this cache"
        } else {
            "rebuild the cache with this version of distill"
        },
    })
}

/// Parses and validates a whole shard's header and block index (not the
/// block contents: each block's checksum is checked when it is decoded).
pub fn parse_shard(path: &Path, bytes: &[u8]) -> Result<(ShardHeader, Vec<BlockEntry>)> {
    let header = parse_header(path, bytes)?;
    check_header_counts(path, &header)?;
    let entries = parse_block_index(path, bytes, &header)?;
    Ok((header, entries))
}

/// Reads the fixed header: length, magic, version, checksum, then the
/// fields whose values are checked on their own (encoding, classes, flags,
/// reserved bytes).
fn parse_header(path: &Path, bytes: &[u8]) -> Result<ShardHeader> {
    let bad = |loc: &str, msg: String| CacheError::corrupt(path, loc, msg);
    let len = bytes.len() as u64;
    if bytes.len() < HEADER_BYTES {
        return Err(bad(
            "header",
            format!("file is {len} bytes, shorter than the {HEADER_BYTES}-byte shard header"),
        ));
    }
    let h = &bytes[..HEADER_BYTES];
    if h[0..8] != MAGIC {
        return Err(bad(
            "header",
            "bad magic bytes: this is not a distill cache shard".into(),
        ));
    }
    let version = u32_at(h, 8);
    check_version(path, version)?;
    let stored = u64_at(h, 120);
    let actual = xxh3_64(&h[..120]);
    if stored != actual {
        return Err(bad(
            "header",
            format!("header checksum mismatch (stored {stored:016x}, computed {actual:016x})"),
        ));
    }
    let (tag, k) = (u16_at(h, 12), u16_at(h, 14));
    let encoding = Encoding::from_tag(tag, k).ok_or_else(|| {
        bad(
            "header field encoding",
            format!("unknown encoding tag {tag} with k {k}"),
        )
    })?;
    if encoding.since_version() > version {
        return Err(bad(
            "header field encoding",
            format!(
                "encoding {encoding} needs format version {} or later, but the shard is version {version}",
                encoding.since_version()
            ),
        ));
    }
    let classes = u32_at(h, 16);
    encoding
        .check_classes(classes as usize)
        .map_err(|m| bad("header field classes", m))?;
    let flags = u32_at(h, 20);
    if flags > 1 {
        return Err(bad(
            "header field flags",
            format!("unknown flag bits {flags:#x}"),
        ));
    }
    if h[104..120].iter().any(|&x| x != 0) {
        return Err(bad("header", "reserved bytes 104..120 are not zero".into()));
    }
    Ok(ShardHeader {
        version,
        encoding,
        classes,
        has_labels: flags & 1 == 1,
        first_sample: u64_at(h, 24),
        records: u64_at(h, 32),
        blocks: u32_at(h, 40),
        records_per_block: u32_at(h, 44),
        temperature: f32::from_le_bytes([h[48], h[49], h[50], h[51]]),
        zstd_level: i32::from_le_bytes([h[52], h[53], h[54], h[55]]),
        index_checksum: u64_at(h, 56),
        stats: ShardStats {
            sum_kl: f64_at(h, 64),
            max_kl: f64_at(h, 72),
            top1_agree: u64_at(h, 80),
            correct: u64_at(h, 88),
            sum_entropy: f64_at(h, 96),
        },
    })
}

/// Checks the header fields that depend on each other: temperature,
/// records per block, records, and the block count they imply.
fn check_header_counts(path: &Path, header: &ShardHeader) -> Result<()> {
    let bad = |loc: &str, msg: String| CacheError::corrupt(path, loc, msg);
    if !(header.temperature.is_finite() && header.temperature > 0.0) {
        return Err(bad(
            "header field temperature",
            format!("{} is not a positive finite number", header.temperature),
        ));
    }
    if header.records_per_block == 0 || header.records_per_block > MAX_RECORDS_PER_BLOCK {
        return Err(bad(
            "header field records_per_block",
            format!(
                "{} is outside 1..={MAX_RECORDS_PER_BLOCK}",
                header.records_per_block
            ),
        ));
    }
    if header.records == 0 {
        return Err(bad("header field records", "shard holds no records".into()));
    }
    header
        .first_sample
        .checked_add(header.records)
        .ok_or_else(|| {
            bad(
                "header field records",
                "first_sample + records overflows".into(),
            )
        })?;
    let want_blocks = header.records.div_ceil(header.records_per_block as u64);
    if header.blocks as u64 != want_blocks || header.blocks > MAX_BLOCKS_PER_SHARD {
        return Err(bad(
            "header field blocks",
            format!(
                "{} blocks for {} records of {} per block (expected {want_blocks}, at most {MAX_BLOCKS_PER_SHARD})",
                header.blocks, header.records, header.records_per_block
            ),
        ));
    }
    Ok(())
}

/// Reads the block index after a validated header: its bounds and checksum,
/// then each entry in turn; the blocks must tile the rest of the file.
fn parse_block_index(path: &Path, bytes: &[u8], header: &ShardHeader) -> Result<Vec<BlockEntry>> {
    let bad = |loc: &str, msg: String| CacheError::corrupt(path, loc, msg);
    let len = bytes.len() as u64;
    let index_len = header.blocks as u64 * INDEX_ENTRY_BYTES as u64; // <= 2^20 * 48, no overflow
    let index_end = HEADER_BYTES as u64 + index_len;
    if index_end > len {
        return Err(bad(
            "block index",
            format!(
                "index of {} entries ends at byte {index_end}, past the end of the {len}-byte file",
                header.blocks
            ),
        ));
    }
    let index = &bytes[HEADER_BYTES..index_end as usize];
    let actual = xxh3_64(index);
    if actual != header.index_checksum {
        return Err(bad(
            "block index",
            format!(
                "index checksum mismatch (stored {:016x}, computed {actual:016x})",
                header.index_checksum
            ),
        ));
    }
    let mut entries = Vec::with_capacity(header.blocks as usize);
    let mut pos = index_end; // a multiple of 8: 128 + 48n
    for i in 0..header.blocks as usize {
        let e = &index[i * INDEX_ENTRY_BYTES..(i + 1) * INDEX_ENTRY_BYTES];
        let (entry, next) = parse_block_entry(path, bytes, header, i, e, pos)?;
        pos = next;
        entries.push(entry);
    }
    if pos != len {
        return Err(bad("file", format!("file is {len} bytes but its blocks end at byte {pos} (truncated or trailing bytes)")));
    }
    Ok(entries)
}

/// Decodes index entry `i` (bytes `e`) and checks what it covers: reserved
/// bytes, its records, its start at `pos`, its lengths and its zero padding.
/// Returns the entry and the offset where the next block must start.
fn parse_block_entry(
    path: &Path,
    bytes: &[u8],
    header: &ShardHeader,
    i: usize,
    e: &[u8],
    pos: u64,
) -> Result<(BlockEntry, u64)> {
    let loc = format!("block index entry {i}");
    let bad = |msg: String| CacheError::corrupt(path, &loc, msg);
    let len = bytes.len() as u64;
    let entry = BlockEntry {
        offset: u64_at(e, 0),
        compressed_len: u64_at(e, 8),
        raw_len: u64_at(e, 16),
        first_record: u64_at(e, 24),
        record_count: u32_at(e, 32),
        checksum: u64_at(e, 40),
    };
    if u32_at(e, 36) != 0 {
        return Err(bad("reserved bytes are not zero".into()));
    }
    let first = i as u64 * header.records_per_block as u64;
    let count = (header.records - first).min(header.records_per_block as u64);
    if entry.first_record != first || entry.record_count as u64 != count {
        return Err(bad(format!(
            "covers records {}+{}, expected {first}+{count}",
            entry.first_record, entry.record_count
        )));
    }
    if entry.offset != pos {
        return Err(bad(format!(
            "starts at byte {}, expected {pos} (blocks must tile the file)",
            entry.offset
        )));
    }
    let raw = count * header.record_bytes() as u64; // <= 2^20 * (12 + 4 * 2^24 + ...) fits in u64
    if entry.raw_len != raw || raw > MAX_BLOCK_RAW_BYTES {
        return Err(bad(format!(
            "raw length {} bytes, expected {raw} (at most {MAX_BLOCK_RAW_BYTES})",
            entry.raw_len
        )));
    }
    if entry.compressed_len == 0 {
        return Err(bad("compressed length is zero".into()));
    }
    let end = entry
        .offset
        .checked_add(entry.compressed_len)
        .filter(|&e| e <= len)
        .ok_or_else(|| {
            bad(format!(
                "block of {} bytes at {} runs past the end of the {len}-byte file",
                entry.compressed_len, entry.offset
            ))
        })?;
    let next = align_up(end)
        .filter(|&n| n <= len)
        .ok_or_else(|| bad("block padding runs past the end of the file".into()))?;
    if bytes[end as usize..next as usize].iter().any(|&b| b != 0) {
        return Err(bad("padding after the block is not zero".into()));
    }
    Ok((entry, next))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample_shard() -> Vec<u8> {
        // Two blocks of fake compressed bytes; the parser checks structure only.
        let blocks = [vec![1u8; 13], vec![2u8; 8]];
        let mut h = ShardHeader {
            version: FORMAT_VERSION_CURRENT,
            encoding: Encoding::Q8,
            classes: 10,
            has_labels: true,
            first_sample: 5,
            records: 5,
            blocks: 2,
            records_per_block: 3,
            temperature: 2.0,
            zstd_level: 3,
            index_checksum: 0,
            stats: ShardStats::default(),
        };
        let rb = h.record_bytes() as u64;
        let mut pos = (HEADER_BYTES + 2 * INDEX_ENTRY_BYTES) as u64;
        let mut index = Vec::new();
        let mut data = Vec::new();
        for (i, b) in blocks.iter().enumerate() {
            let count = if i == 0 { 3 } else { 2 };
            let e = BlockEntry {
                offset: pos,
                compressed_len: b.len() as u64,
                raw_len: count * rb,
                first_record: i as u64 * 3,
                record_count: count as u32,
                checksum: xxh3_64(b),
            };
            index.extend_from_slice(&e.to_bytes());
            data.extend_from_slice(b);
            let next = align_up(pos + b.len() as u64).unwrap();
            data.resize(data.len() + (next - pos - b.len() as u64) as usize, 0);
            pos = next;
        }
        h.index_checksum = xxh3_64(&index);
        let mut out = h.to_bytes().to_vec();
        out.extend(index);
        out.extend(data);
        out
    }

    #[test]
    fn parses_valid_shard() {
        let b = sample_shard();
        let (h, e) = parse_shard(Path::new("s"), &b).unwrap();
        assert_eq!(h.records, 5);
        assert_eq!(e.len(), 2);
        assert_eq!(e[1].offset % 8, 0);
    }

    #[test]
    fn rejects_every_single_bit_flip_in_header_and_index() {
        let b = sample_shard();
        for byte in 0..HEADER_BYTES + 2 * INDEX_ENTRY_BYTES {
            for bit in 0..8 {
                let mut c = b.clone();
                c[byte] ^= 1 << bit;
                let err = parse_shard(Path::new("shard-x.dsc"), &c)
                    .unwrap_err()
                    .to_string();
                assert!(err.starts_with("shard-x.dsc:"), "{err}");
            }
        }
    }

    #[test]
    fn rejects_truncation_and_trailing_bytes() {
        let b = sample_shard();
        for cut in 0..b.len() {
            assert!(parse_shard(Path::new("s"), &b[..cut]).is_err(), "cut {cut}");
        }
        let mut c = b.clone();
        c.extend_from_slice(&[0; 8]);
        assert!(parse_shard(Path::new("s"), &c)
            .unwrap_err()
            .to_string()
            .contains("trailing"));
    }

    #[test]
    fn refuses_future_version_with_advice() {
        let mut b = sample_shard();
        b[8..12].copy_from_slice(&99u32.to_le_bytes());
        let e = parse_shard(Path::new("s"), &b).unwrap_err().to_string();
        assert!(e.contains("upgrade distill"), "{e}");
    }

    #[test]
    fn refuses_a_new_encoding_in_an_old_version() {
        let mut b = sample_shard();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        // hq:32 (tag 4) exists from version 2 on.
        b[12..14].copy_from_slice(&4u16.to_le_bytes());
        b[14..16].copy_from_slice(&32u16.to_le_bytes());
        let sum = xxh3_64(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
        let e = parse_shard(Path::new("s"), &b).unwrap_err().to_string();
        assert!(e.contains("needs format version 2"), "{e}");
        // The same header at version 2 parses.
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let sum = xxh3_64(&b[..120]);
        b[120..128].copy_from_slice(&sum.to_le_bytes());
        let e = parse_shard(Path::new("s"), &b).err().map(|e| e.to_string());
        // (The block raw lengths were computed for q8, so only the index may differ.)
        assert!(e.is_none_or(|e| e.contains("raw length")));
    }

    #[test]
    fn shuffled_columns_are_byte_planes() {
        let n = 3;
        let mut cols = Vec::new();
        for i in 0..n as u64 {
            cols.extend_from_slice(&(0x0102_0304_0506_0700 + i).to_le_bytes());
        }
        for l in [7u32, 8, 9] {
            cols.extend_from_slice(&l.to_le_bytes());
        }
        let plain = cols.clone();
        shuffle_columns(&mut cols, n);
        assert_eq!(&cols[..3], &[0, 1, 2]); // byte 0 of each index
        assert_eq!(&cols[3..6], &[7, 7, 7]); // byte 1
        assert_eq!(&cols[24..27], &[7, 8, 9]); // byte 0 of each label
        assert_eq!(&cols[27..36], &[0; 9]);
        unshuffle_columns(&mut cols, n);
        assert_eq!(cols, plain);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn column_shuffle_round_trips(n in 0usize..40, seed in any::<u64>()) {
            let mut cols: Vec<u8> = (0..12 * n).map(|i| (seed.wrapping_mul(i as u64 + 1) >> 13) as u8).collect();
            let plain = cols.clone();
            shuffle_columns(&mut cols, n);
            unshuffle_columns(&mut cols, n);
            prop_assert_eq!(cols, plain);
        }

        #[test]
        fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
            prop_assert!(parse_shard(Path::new("s"), &bytes).is_err());
        }

        #[test]
        fn random_bytes_with_valid_magic_never_panic(tail in prop::collection::vec(any::<u8>(), 0..600)) {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&1u32.to_le_bytes());
            b.extend(tail);
            prop_assert!(parse_shard(Path::new("s"), &b).is_err());
        }

        #[test]
        fn mutated_valid_shards_never_panic(pos in 0usize..300, val in any::<u8>(), cut in 0usize..400) {
            let mut b = sample_shard();
            let p = pos % b.len();
            b[p] = val;
            b.truncate(cut.min(b.len()));
            let _ = parse_shard(Path::new("s"), &b);
        }
    }
}

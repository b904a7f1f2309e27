//! Host-side launch geometry of the CUDA kernels (`kernels.cu`): plain
//! arithmetic, compiled and tested with or without the `cuda` feature.
//!
//! Every kernel walks its index space with a grid-stride loop and checks
//! bounds, so a grid only has to be non-empty; [`grid_blocks`] sizes it to
//! cover the work once, capped at [`MAX_BLOCKS`]. Sizes travel as `u32`
//! ([`index_len`] refuses more than `i32::MAX` values, so a thread's index
//! plus the grid's stride cannot wrap). Column sums are split into parts of
//! a fixed number of rows ([`ColumnSumPlan`]), a function of the shape
//! alone, so their rounding never depends on the grid or the GPU.

/// Threads per block of every kernel.
pub const THREADS: u32 = 256;

/// The most blocks a launch uses; grid-stride loops cover the rest.
pub const MAX_BLOCKS: u32 = 8192;

/// Rows summed sequentially by one thread of a column-sum part.
pub const ROWS_PER_PART: u32 = 256;

/// Blocks of [`THREADS`] for `n` work items: enough to give each item its
/// own thread, at least 1 and at most [`MAX_BLOCKS`].
pub fn grid_blocks(n: u32) -> u32 {
    n.div_ceil(THREADS).clamp(1, MAX_BLOCKS)
}

/// `n` as a kernel size, or a message naming `what` when it exceeds the
/// kernels' 32-bit indexing (`i32::MAX` values).
pub fn index_len(n: usize, what: &str) -> Result<u32, String> {
    match u32::try_from(n) {
        Ok(v) if v <= i32::MAX as u32 => Ok(v),
        _ => Err(format!(
            "{what}: {n} values exceed the cuda kernels' limit of {} per tensor; use a smaller batch",
            i32::MAX
        )),
    }
}

/// How a `rows x cols` column sum is split: `parts` blocks of
/// `rows_per_part` rows (the last may be short), each summed in row order by
/// one thread per column, then the parts summed in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnSumPlan {
    pub rows_per_part: u32,
    pub parts: u32,
}

impl ColumnSumPlan {
    /// The plan for `rows` rows; at least one part, so an empty matrix sums
    /// to zeros.
    pub fn new(rows: u32) -> Self {
        ColumnSumPlan {
            rows_per_part: ROWS_PER_PART,
            parts: rows.div_ceil(ROWS_PER_PART).max(1),
        }
    }

    /// The rows `[start, end)` of part `p` of a matrix of `rows` rows.
    pub fn rows_of(&self, p: u32, rows: u32) -> (u32, u32) {
        let start = p * self.rows_per_part;
        (start.min(rows), (start + self.rows_per_part).min(rows))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_cover_the_work_and_stay_bounded() {
        assert_eq!(grid_blocks(0), 1);
        assert_eq!(grid_blocks(1), 1);
        assert_eq!(grid_blocks(THREADS), 1);
        assert_eq!(grid_blocks(THREADS + 1), 2);
        assert_eq!(grid_blocks(u32::MAX), MAX_BLOCKS);
        for n in [1u32, 255, 256, 257, 100_352, 2_000_000, i32::MAX as u32] {
            let threads = grid_blocks(n) as u64 * THREADS as u64;
            // One pass covers the work, or the grid is at its cap and the
            // grid-stride loop covers the rest without wrapping a u32.
            assert!(threads >= n as u64 || grid_blocks(n) == MAX_BLOCKS, "{n}");
            assert!(n as u64 + threads <= u32::MAX as u64 + 1, "{n}");
        }
    }

    #[test]
    fn index_lengths_are_checked() {
        assert_eq!(index_len(0, "x"), Ok(0));
        assert_eq!(index_len(i32::MAX as usize, "x"), Ok(i32::MAX as u32));
        let err = index_len(i32::MAX as usize + 1, "im2col output").unwrap_err();
        assert!(
            err.contains("im2col output") && err.contains("smaller batch"),
            "{err}"
        );
        assert!(index_len(usize::MAX, "x").is_err());
    }

    #[test]
    fn column_sum_parts_tile_the_rows_exactly_once() {
        assert_eq!(ColumnSumPlan::new(0).parts, 1);
        assert_eq!(ColumnSumPlan::new(1).parts, 1);
        assert_eq!(ColumnSumPlan::new(ROWS_PER_PART).parts, 1);
        assert_eq!(ColumnSumPlan::new(ROWS_PER_PART + 1).parts, 2);
        for rows in [0u32, 1, 7, 255, 256, 257, 4096, 100_352] {
            let plan = ColumnSumPlan::new(rows);
            let mut next = 0;
            for p in 0..plan.parts {
                let (start, end) = plan.rows_of(p, rows);
                assert_eq!(start, next, "rows {rows} part {p}");
                assert!(end >= start);
                next = end;
            }
            assert_eq!(next, rows);
        }
    }
}

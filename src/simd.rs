//! Hot loops compiled for the widest vector instructions the CPU has.
//!
//! The crate is built for the baseline x86-64 target, so one binary runs on
//! every x86-64 machine, and its own loops (batch norm's sums, patches,
//! pools, masks) would be vectorised for SSE2 only: 4 floats at a time, on
//! machines whose cores take 16. A kernel defined inside `wide_kernel!`
//! is compiled three times, for AVX-512 (F, BW, DQ, VL: x86-64-v4), for
//! AVX2 with FMA and for the baseline, and the widest level the CPU has is
//! picked at run time ([`level`], detected once). The kernel's body and the
//! helpers it calls, marked `#[inline(always)]`, are compiled inside each
//! version.
//!
//! The results are the same bits on every level. A wider vector only
//! processes more independent lanes at once: the loops keep each lane's
//! accumulation in its order (the compiler does not reassociate floating
//! point), and Rust never contracts a multiply and an add into an FMA. A
//! test below holds the wide and the baseline versions of a kernel to the
//! same bits; the ops' own tests compare them with the composed ops.

use std::sync::atomic::{AtomicU8, Ordering};

/// A vector level `wide_kernel!` compiles for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// AVX-512 F, BW, DQ and VL.
    V4,
    /// AVX2 with FMA.
    V3,
    /// The build's baseline.
    Base,
}

impl Level {
    pub fn name(self) -> &'static str {
        match self {
            Level::V4 => "avx512",
            Level::V3 => "avx2",
            Level::Base => "baseline",
        }
    }
}

/// The detected level, `0` before the first call.
static LEVEL: AtomicU8 = AtomicU8::new(0);

/// The widest level this CPU runs (detected on the first call).
#[inline]
pub fn level() -> Level {
    match LEVEL.load(Ordering::Relaxed) {
        1 => Level::V4,
        2 => Level::V3,
        3 => Level::Base,
        _ => {
            let l = detect();
            LEVEL.store(
                match l {
                    Level::V4 => 1,
                    Level::V3 => 2,
                    Level::Base => 3,
                },
                Ordering::Relaxed,
            );
            l
        }
    }
}

fn detect() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512dq")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
        {
            return Level::V4;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Level::V3;
        }
    }
    Level::Base
}

/// Defines `fn name(args)` (no return value, arguments bound to plain
/// names) compiled per vector level and dispatched on [`level`] (see the
/// module doc). Inside the crate: `crate::simd::wide_kernel! { fn ... }`.
macro_rules! wide_kernel {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) {
            #[inline(always)]
            fn body($($arg: $ty),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma")]
                fn v4($($arg: $ty),*) {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn v3($($arg: $ty),*) {
                    body($($arg),*)
                }
                match $crate::simd::level() {
                    // SAFETY: `level` detected the features each version is
                    // compiled for.
                    $crate::simd::Level::V4 => return unsafe { v4($($arg),*) },
                    $crate::simd::Level::V3 => return unsafe { v3($($arg),*) },
                    $crate::simd::Level::Base => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use wide_kernel;

#[cfg(test)]
mod tests {
    use super::*;

    /// Per-lane sums of `x * k` over rows of `out.len()` values.
    #[inline(always)]
    fn scaled_sums_plain(x: &[f32], k: f32, out: &mut [f64]) {
        for row in x.chunks_exact(out.len()) {
            for (o, v) in out.iter_mut().zip(row) {
                *o += (*v * k) as f64;
            }
        }
    }

    wide_kernel! {
        fn scaled_sums(x: &[f32], k: f32, out: &mut [f64]) {
            scaled_sums_plain(x, k, out)
        }
    }

    #[test]
    fn a_wide_kernel_gives_the_baseline_bits() {
        let x: Vec<f32> = (0..16 * 999)
            .map(|i| ((i * 37) % 101) as f32 / 7.0 - 5.0)
            .collect();
        let mut wide = vec![0f64; 16];
        scaled_sums(&x, 0.3, &mut wide);
        let mut plain = vec![0f64; 16];
        scaled_sums_plain(&x, 0.3, &mut plain);
        assert_eq!(wide, plain);
        assert_eq!(level(), detect());
        assert!(["avx512", "avx2", "baseline"].contains(&level().name()));
    }
}

//! Input augmentation for image datasets: random horizontal flips and
//! translations, the ones that keep a Fashion-MNIST item what it is.
//!
//! Every augmented image is a pure function of `(seed, view, sample)`: the
//! flip and the shift are drawn from an xxh3 hash of the three numbers, never
//! from a running random generator. Two consequences:
//! - a run resumed mid-epoch sees exactly the images it would have seen;
//! - a teacher and a student given the same `(seed, view, sample)` see the
//!   same view of the image. Teacher outputs are only valid targets for the
//!   view they were computed on (Beyer et al. 2022, "a good teacher is
//!   patient and consistent"), so distillation with augmentation either runs
//!   the teacher on the augmented batch (`--online-teacher`) or reads a cache
//!   built from the same views (`cache build --augment`).
//!
//! The spec is written `flip`, `shift=2` or `flip,shift=2` (`--augment`).
//! Shifted-in pixels are 0 (the background of Fashion-MNIST).

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use super::DataError;

type Result<T, E = DataError> = std::result::Result<T, E>;

/// Which augmentations to draw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Translate by up to this many pixels in each direction (uniform in
    /// `-shift..=shift` for x and y independently).
    pub shift: u32,
}

/// The augmentation drawn for one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViewParams {
    pub flip: bool,
    /// Content moves right by `dx` and down by `dy` pixels.
    pub dx: i32,
    pub dy: i32,
}

/// The config field augmentation settings come from (`TrainConfig::augment`).
const FIELD: &str = "augment";
/// Largest shift accepted: more than this erases a 28x28 item.
pub const MAX_SHIFT: u32 = 8;

impl Augment {
    /// Parses `flip`, `shift=N` or both, comma-separated.
    pub fn parse(text: &str) -> Result<Self> {
        let err = |message: String| DataError::Setting {
            field: FIELD.into(),
            message,
        };
        let mut a = Augment {
            flip: false,
            shift: 0,
        };
        let mut any = false;
        for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            any = true;
            match item.split_once('=') {
                None if item == "flip" => a.flip = true,
                Some((k, v)) if k.trim() == "shift" => {
                    a.shift = v
                        .trim()
                        .parse::<u32>()
                        .map_err(|_| err(format!("shift={v}: not a whole number of pixels")))?;
                    if a.shift > MAX_SHIFT {
                        return Err(err(format!(
                            "shift={} is more than {MAX_SHIFT} pixels",
                            a.shift
                        )));
                    }
                }
                _ => {
                    return Err(err(format!(
                        "unknown item '{item}'; expected flip and/or shift=N (e.g. flip,shift=2)"
                    )))
                }
            }
        }
        if !any || a.is_identity() {
            return Err(err(format!(
                "'{text}' augments nothing; use flip, shift=N (N >= 1) or both"
            )));
        }
        Ok(a)
    }

    /// Whether it leaves every image unchanged.
    pub fn is_identity(&self) -> bool {
        !self.flip && self.shift == 0
    }

    /// Checks that images of `shape` (C, H, W) can be augmented.
    pub fn check_shape(&self, shape: [usize; 3]) -> Result<()> {
        let [_, h, w] = shape;
        if h < 2 || w < 2 || (self.shift as usize) >= h.min(w) {
            return Err(DataError::Setting {
                field: FIELD.into(),
                message: format!(
                    "samples of shape {shape:?} are not images this augmentation fits (flat features cannot be flipped or shifted)"
                ),
            });
        }
        Ok(())
    }

    /// The flip and shift of image `sample` in view `view` under `seed`.
    pub fn params(&self, seed: u64, view: u64, sample: u64) -> ViewParams {
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&view.to_le_bytes());
        key[16..].copy_from_slice(&sample.to_le_bytes());
        let h = xxh3_64(&key);
        let span = 2 * self.shift as u64 + 1;
        let draw = |bits: u64| (bits % span) as i32 - self.shift as i32;
        ViewParams {
            flip: self.flip && h & 1 == 1,
            dx: draw((h >> 1) & 0xFFFF),
            dy: draw((h >> 17) & 0xFFFF),
        }
    }

    /// Writes the view `p` of one image `src` (C, H, W, row-major) to `dst`.
    pub fn apply(p: ViewParams, shape: [usize; 3], src: &[f32], dst: &mut [f32]) {
        let [c, h, w] = shape;
        debug_assert_eq!(src.len(), c * h * w);
        debug_assert_eq!(dst.len(), c * h * w);
        for ch in 0..c {
            let plane = ch * h * w;
            for y in 0..h {
                let sy = y as i64 - p.dy as i64;
                for x in 0..w {
                    let sx0 = x as i64 - p.dx as i64;
                    let sx = if p.flip { w as i64 - 1 - sx0 } else { sx0 };
                    dst[plane + y * w + x] =
                        if (0..h as i64).contains(&sy) && (0..w as i64).contains(&sx) {
                            src[plane + sy as usize * w + sx as usize]
                        } else {
                            0.0
                        };
                }
            }
        }
    }

    /// Augments a filled batch in place: sample `k` of `inputs` is dataset
    /// sample `indices[k]`, shown in view `view` under `seed`.
    pub fn apply_batch(
        &self,
        seed: u64,
        view: u64,
        indices: &[usize],
        shape: [usize; 3],
        inputs: &mut [f32],
    ) {
        let len = shape.iter().product::<usize>().max(1);
        let mut tmp = vec![0f32; len];
        for (&i, x) in indices.iter().zip(inputs.chunks_exact_mut(len)) {
            let p = self.params(seed, view, i as u64);
            tmp.copy_from_slice(x);
            Self::apply(p, shape, &tmp, x);
        }
    }
}

impl fmt::Display for Augment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.flip, self.shift) {
            (true, 0) => write!(f, "flip"),
            (true, s) => write!(f, "flip,shift={s}"),
            (false, s) => write!(f, "shift={s}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(h: usize, w: usize) -> Vec<f32> {
        (0..h * w).map(|i| 1.0 + i as f32).collect()
    }

    #[test]
    fn parses_and_prints_and_names_the_flag() {
        assert_eq!(
            Augment::parse("flip,shift=2").unwrap(),
            Augment {
                flip: true,
                shift: 2
            }
        );
        for t in ["flip", "shift=3", "flip,shift=1"] {
            assert_eq!(Augment::parse(t).unwrap().to_string(), t);
        }
        for (t, needle) in [
            ("", "augments nothing"),
            ("shift=0", "augments nothing"),
            ("rotate", "unknown item 'rotate'"),
            ("shift=x", "not a whole number"),
            ("shift=9", "more than 8"),
        ] {
            let e = Augment::parse(t).unwrap_err().to_string();
            assert!(e.contains("augment") && e.contains(needle), "{t}: {e}");
        }
    }

    #[test]
    fn flip_and_shift_move_pixels_where_they_should() {
        let shape = [1, 3, 4];
        let src = image(3, 4);
        let mut dst = vec![0.0; 12];
        // Identity.
        Augment::apply(
            ViewParams {
                flip: false,
                dx: 0,
                dy: 0,
            },
            shape,
            &src,
            &mut dst,
        );
        assert_eq!(dst, src);
        // Mirror: each row reversed.
        Augment::apply(
            ViewParams {
                flip: true,
                dx: 0,
                dy: 0,
            },
            shape,
            &src,
            &mut dst,
        );
        assert_eq!(dst[..4], [4.0, 3.0, 2.0, 1.0]);
        // Right by 1, up by 1: row 0 is old row 1 shifted, zeros come in.
        Augment::apply(
            ViewParams {
                flip: false,
                dx: 1,
                dy: -1,
            },
            shape,
            &src,
            &mut dst,
        );
        assert_eq!(
            dst,
            vec![0.0, 5.0, 6.0, 7.0, 0.0, 9.0, 10.0, 11.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn views_are_deterministic_varied_and_within_bounds() {
        let a = Augment::parse("flip,shift=2").unwrap();
        assert_eq!(a.params(7, 3, 11), a.params(7, 3, 11));
        let mut flips = 0;
        let mut seen = std::collections::HashSet::new();
        for s in 0..2000u64 {
            let p = a.params(0, 0, s);
            assert!(p.dx.abs() <= 2 && p.dy.abs() <= 2);
            flips += p.flip as u32;
            seen.insert((p.dx, p.dy));
        }
        assert!((900..1100).contains(&flips), "{flips} flips of 2000");
        assert_eq!(seen.len(), 25, "every shift occurs");
        // Another view or seed draws other parameters for most samples.
        let differ = (0..200u64)
            .filter(|&s| a.params(0, 0, s) != a.params(0, 1, s))
            .count();
        assert!(differ > 150, "{differ}");
        let no_flip = Augment::parse("shift=1").unwrap();
        assert!((0..100).all(|s| !no_flip.params(0, 0, s).flip));
    }

    #[test]
    fn batch_augmentation_matches_one_image_at_a_time() {
        let a = Augment::parse("flip,shift=1").unwrap();
        let shape = [2, 3, 3];
        let one: Vec<f32> = (0..18).map(|i| i as f32).collect();
        let mut batch = [one.clone(), one.clone()].concat();
        a.apply_batch(5, 2, &[10, 20], shape, &mut batch);
        for (k, s) in [10usize, 20].iter().enumerate() {
            let mut want = vec![0.0; 18];
            Augment::apply(a.params(5, 2, *s as u64), shape, &one, &mut want);
            assert_eq!(batch[k * 18..(k + 1) * 18], want[..]);
        }
        assert!(a.check_shape([1, 1, 784]).is_err());
        assert!(a.check_shape([1, 28, 28]).is_ok());
    }
}

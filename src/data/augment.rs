//! Input augmentation for image datasets: random horizontal flips,
//! translations, padded crops, smooth warps and cutout, the ones that keep
//! a Fashion-MNIST item or a CIFAR image what it is.
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
//! The spec is written `flip`, `shift=2`, `flip,shift=2`, or the CIFAR
//! augmentation `crop=4,flip` (`--augment`). Shifted-in pixels are 0 (the
//! background of Fashion-MNIST, black in an RGB image), in every channel.
//!
//! `mixup=A` and `cutmix=A` (with or without the geometric items, e.g.
//! `flip,shift=2,mixup=0.2`) mix each image with a partner sample, both
//! drawn from the same hash ([`super::mix`]); [`Augment::fill_batch`]
//! fetches the partner's image from the dataset, so it is the one function
//! the teacher's view-set build, `views export` and the training loader
//! call.
//!
//! `warp=A` bends each image by a smooth random displacement field of
//! standard deviation `A` pixels ([`super::warp`]), after the flip and the
//! shift or crop and before any mixing. `cutout=S` then sets a random
//! square of `S` by `S` pixels to 0 ([`super::cutout`]). `noise=S` last adds
//! Gaussian noise of standard deviation `S` to every input value
//! ([`super::noise`]); it needs no image shape, so flat features take it
//! too.
//!
//! `crop=P` is torchvision's `RandomCrop(size, padding=P)`: the image is
//! padded with P zero pixels on every side and the original size is cut
//! out at an offset drawn uniformly from `0..=2P` in each direction, then
//! (with `flip`) mirrored, as `RandomHorizontalFlip` after it would. A crop
//! moves the content as a shift of the same size does, so the two are not
//! combined.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64;

use super::cutout::CutoutBox;
use super::mix::{Mix, MixParams, MAX_MIX_ALPHA};
use super::noise::{add_noise, MAX_NOISE};
use super::warp::{WarpField, MAX_WARP};
use super::{DataError, Dataset};

type Result<T, E = DataError> = std::result::Result<T, E>;

/// Which augmentations to draw.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Translate by up to this many pixels in each direction (uniform in
    /// `-shift..=shift` for x and y independently).
    pub shift: u32,
    /// Pad by this many zero pixels on each side and crop the original size
    /// at a uniform offset (0 = no crop).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub crop: u32,
    /// Bend by a smooth random field of this standard deviation in pixels
    /// (0 = no warp).
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub warp: f32,
    /// Set a square of this many pixels a side to 0 at a random place
    /// (0 = no cutout).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub cutout: u32,
    /// Add Gaussian noise of this standard deviation to every input value
    /// (0 = no noise).
    #[serde(default, skip_serializing_if = "is_zero_f32")]
    pub noise: f32,
    /// Mix each image with a partner sample (mixup or cutmix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn is_zero_f32(x: &f32) -> bool {
    *x == 0.0
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
/// Largest shift or crop padding accepted: more than this erases a 28x28 item.
pub const MAX_SHIFT: u32 = 8;
/// Largest cutout side accepted, in pixels: one less than a CIFAR image's
/// side (`check_shape` also wants it smaller than the images at hand).
pub const MAX_CUTOUT: u32 = 31;

impl Augment {
    /// Parses `flip`, `shift=N`, `crop=N` (not both of the last two),
    /// `warp=A`, `cutout=S`, `noise=S`, `mixup=A` or `cutmix=A` (one of
    /// the last two), comma-separated.
    pub fn parse(text: &str) -> Result<Self> {
        let err = |message: String| DataError::Setting {
            field: FIELD.into(),
            message,
        };
        let mut a = Augment {
            flip: false,
            shift: 0,
            crop: 0,
            warp: 0.0,
            cutout: 0,
            noise: 0.0,
            mix: None,
        };
        let mut any = false;
        let mut named: Vec<&str> = Vec::new();
        for item in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            any = true;
            // An item given twice would silently keep the last.
            let name = item.split_once('=').map_or(item, |(k, _)| k.trim());
            if named.contains(&name) {
                return Err(err(format!(
                    "'{text}' names {name} twice; give each item once"
                )));
            }
            named.push(name);
            match item.split_once('=').map(|(k, v)| (k.trim(), v.trim())) {
                None if item == "flip" => a.flip = true,
                Some((k, v)) if k == "shift" || k == "crop" => {
                    let n = v
                        .parse::<u32>()
                        .map_err(|_| err(format!("{k}={v}: not a whole number of pixels")))?;
                    if n > MAX_SHIFT {
                        return Err(err(format!("{k}={n} is more than {MAX_SHIFT} pixels")));
                    }
                    if k == "shift" {
                        a.shift = n;
                    } else {
                        a.crop = n;
                    }
                }
                Some(("warp", v)) => {
                    a.warp = v
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0 && *x <= MAX_WARP)
                        .ok_or_else(|| {
                            err(format!(
                                "warp={v}: the displacement's standard deviation must be a number of pixels in (0, {MAX_WARP}] (e.g. warp=1)"
                            ))
                        })?;
                }
                Some(("noise", v)) => {
                    a.noise = v
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0 && *x <= MAX_NOISE)
                        .ok_or_else(|| {
                            err(format!(
                                "noise={v}: the noise's standard deviation must be a number in (0, {MAX_NOISE}], in the inputs' units (pixels in 0..1; e.g. noise=0.1)"
                            ))
                        })?;
                }
                Some(("cutout", v)) => {
                    a.cutout = v
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=MAX_CUTOUT).contains(n))
                        .ok_or_else(|| {
                            err(format!(
                                "cutout={v}: the square's side must be a whole number of pixels in 1..={MAX_CUTOUT} (e.g. cutout=8)"
                            ))
                        })?;
                }
                Some((k, v)) if k == "mixup" || k == "cutmix" => {
                    let alpha = v
                        .parse::<f32>()
                        .ok()
                        .filter(|x| x.is_finite() && *x > 0.0 && *x <= MAX_MIX_ALPHA)
                        .ok_or_else(|| {
                            err(format!(
                                "{k}={v}: the Beta(a, a) parameter a must be a number in (0, {MAX_MIX_ALPHA}] (e.g. {k}=0.2)"
                            ))
                        })?;
                    if a.mix.is_some() {
                        return Err(err(format!(
                            "'{text}' mixes twice; use one of mixup=A or cutmix=A"
                        )));
                    }
                    a.mix = Some(match k {
                        "mixup" => Mix::Mixup { alpha },
                        _ => Mix::Cutmix { alpha },
                    });
                }
                _ => {
                    return Err(err(format!(
                        "unknown item '{item}'; expected flip, shift=N, crop=N, warp=A, cutout=S, noise=S, mixup=A or cutmix=A (e.g. flip,shift=2 or crop=4,flip or flip,mixup=0.2)"
                    )))
                }
            }
        }
        if a.shift > 0 && a.crop > 0 {
            return Err(err(format!(
                "'{text}' both shifts and crops; a padded crop moves the image as a shift does, use one"
            )));
        }
        if !any || a.is_identity() {
            return Err(err(format!(
                "'{text}' augments nothing; use flip, shift=N or crop=N (N >= 1), warp=A, cutout=S, noise=S, mixup=A or cutmix=A, or several"
            )));
        }
        Ok(a)
    }

    /// Whether it leaves every image unchanged.
    pub fn is_identity(&self) -> bool {
        self.is_single_image_identity() && self.mix.is_none()
    }

    /// Whether it changes no image on its own: no pixel moves, is erased or
    /// gets noise (it may still mix images).
    fn is_single_image_identity(&self) -> bool {
        self.is_rigid_identity() && self.warp == 0.0 && self.cutout == 0 && self.noise == 0.0
    }

    /// Whether it moves or erases pixels, which needs images (noise and
    /// mixup need none).
    fn needs_images(&self) -> bool {
        !self.is_rigid_identity() || self.warp > 0.0 || self.cutout > 0
    }

    /// Whether it neither flips, shifts nor crops (it may still warp or mix).
    fn is_rigid_identity(&self) -> bool {
        !self.flip && self.shift == 0 && self.crop == 0
    }

    /// Checks that images of `shape` (C, H, W) can be augmented.
    pub fn check_shape(&self, shape: [usize; 3]) -> Result<()> {
        let [_, h, w] = shape;
        let moves = self.needs_images() || self.mix.is_some_and(|m| m.needs_images());
        let reach = self.shift.max(self.crop) as usize;
        if moves && (h < 2 || w < 2 || reach >= h.min(w)) {
            return Err(DataError::Setting {
                field: FIELD.into(),
                message: format!(
                    "samples of shape {shape:?} are not images this augmentation fits (flat features cannot be flipped, shifted, warped, erased or cut; noise=S and mixup=A fit them)"
                ),
            });
        }
        if self.cutout as usize >= h.min(w) {
            return Err(DataError::Setting {
                field: FIELD.into(),
                message: format!(
                    "cutout={} needs images taller and wider than {} pixels; samples are {h}x{w} (use cutout={} or less)",
                    self.cutout,
                    self.cutout,
                    h.min(w) - 1
                ),
            });
        }
        Ok(())
    }

    /// The flip and shift (or crop) of image `sample` in view `view` under
    /// `seed`: a pure function of the three numbers.
    pub fn params(&self, seed: u64, view: u64, sample: u64) -> ViewParams {
        let mut key = [0u8; 24];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..16].copy_from_slice(&view.to_le_bytes());
        key[16..].copy_from_slice(&sample.to_le_bytes());
        let h = xxh3_64(&key);
        let flip = self.flip && h & 1 == 1;
        let reach = self.shift.max(self.crop);
        let span = 2 * reach as u64 + 1;
        // An offset in 0..=2*reach for each direction.
        let draw = |bits: u64| (bits % span) as i32;
        let (ox, oy) = (draw((h >> 1) & 0xFFFF), draw((h >> 17) & 0xFFFF));
        let r = reach as i32;
        if self.crop > 0 {
            // Cut at (ox, oy) from the padded image: pixel (x, y) is source
            // pixel (x + ox - r, y + oy - r), mirrored afterwards; `apply`
            // mirrors first, so the mirrored crop moves the other way.
            ViewParams {
                flip,
                dx: if flip { ox - r } else { r - ox },
                dy: r - oy,
            }
        } else {
            ViewParams {
                flip,
                dx: ox - r,
                dy: oy - r,
            }
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
        if self.is_single_image_identity() {
            return;
        }
        let rigid = !self.is_rigid_identity();
        let [_, h, w] = shape;
        let len = shape.iter().product::<usize>().max(1);
        let mut tmp = vec![0f32; len];
        for (&i, x) in indices.iter().zip(inputs.chunks_exact_mut(len)) {
            if rigid {
                let p = self.params(seed, view, i as u64);
                tmp.copy_from_slice(x);
                Self::apply(p, shape, &tmp, x);
            }
            if self.warp > 0.0 {
                tmp.copy_from_slice(x);
                WarpField::draw(self.warp, seed, view, i as u64, h, w).apply(shape, &tmp, x);
            }
            if self.cutout > 0 {
                CutoutBox::draw(self.cutout, seed, view, i as u64, h, w).apply(shape, x);
            }
            if self.noise > 0.0 {
                add_noise(self.noise, seed, view, i as u64, x);
            }
        }
    }
}

/// The mixing of a batch's rows (`None` without `mixup` or `cutmix`).
pub type BatchMixing = Option<Vec<MixParams>>;

impl Augment {
    /// The mixing drawn for `sample` of `data` in `view` under `seed`
    /// (`None` without `mixup` or `cutmix`).
    pub fn mix_params(
        &self,
        data: &Dataset,
        seed: u64,
        view: u64,
        sample: usize,
    ) -> Option<MixParams> {
        self.mix
            .map(|m| m.params(seed, view, sample as u64, data.len(), data.sample_shape()))
    }

    /// The inputs of samples `indices` of `data` in view `view` under
    /// `seed`, into `out` (`indices.len() * sample_len` values): each
    /// sample's image in its geometric view, then, with `mixup` or
    /// `cutmix`, mixed with its partner's image in the partner's own
    /// geometric view. Returns the rows' mixing. Every row is a pure
    /// function of `(data, seed, view, sample)`, whatever else the batch
    /// holds: the teacher's build, `views export` and the loader call this
    /// one function, so a cached target belongs to the image a student sees.
    pub fn fill_batch(
        &self,
        data: &Dataset,
        seed: u64,
        view: u64,
        indices: &[usize],
        out: &mut [f32],
    ) -> BatchMixing {
        let shape = data.sample_shape();
        data.fill_inputs(indices, out);
        self.apply_batch(seed, view, indices, shape, out);
        let mix = self.mix?;
        let params: Vec<MixParams> = indices
            .iter()
            .map(|&i| mix.params(seed, view, i as u64, data.len(), shape))
            .collect();
        let partners: Vec<usize> = params.iter().map(|p| p.partner).collect();
        let mut other = vec![0f32; out.len()];
        data.fill_inputs(&partners, &mut other);
        self.apply_batch(seed, view, &partners, shape, &mut other);
        let len = data.sample_len().max(1);
        for ((p, x), y) in params
            .iter()
            .zip(out.chunks_exact_mut(len))
            .zip(other.chunks_exact(len))
        {
            Mix::blend(p, shape, x, y);
        }
        Some(params)
    }
}

impl fmt::Display for Augment {
    /// The items in the order they act: a flip before a shift, a crop
    /// before a flip, a warp after both, a cutout after it, noise after
    /// that and a mix last.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut items = Vec::new();
        if self.crop > 0 {
            items.push(format!("crop={}", self.crop));
        }
        if self.flip {
            items.push("flip".to_string());
        }
        if self.shift > 0 {
            items.push(format!("shift={}", self.shift));
        }
        if self.warp > 0.0 {
            items.push(format!("warp={}", self.warp));
        }
        if self.cutout > 0 {
            items.push(format!("cutout={}", self.cutout));
        }
        if self.noise > 0.0 {
            items.push(format!("noise={}", self.noise));
        }
        if let Some(m) = self.mix {
            items.push(m.to_string());
        }
        f.write_str(&items.join(","))
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
                shift: 2,
                crop: 0,
                warp: 0.0,
                cutout: 0,
                noise: 0.0,
                mix: None,
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

    /// Each of `printed` parses and prints back as written; each of
    /// `refused` is refused with an error naming the flag and the needle.
    fn prints_back_and_refuses(printed: &[&str], refused: &[(&str, &str)]) {
        for t in printed {
            assert_eq!(Augment::parse(t).unwrap().to_string(), *t);
        }
        for (t, needle) in refused {
            let e = Augment::parse(t).unwrap_err().to_string();
            assert!(e.contains("augment") && e.contains(needle), "{t}: {e}");
        }
    }

    /// A 28x28 `image` shifted by `a`'s draw for `(seed, view, sample)`,
    /// then warped by its field: what `apply_batch` makes before a cutout.
    fn shifted_then_warped(
        a: &Augment,
        image: &[f32],
        seed: u64,
        view: u64,
        sample: u64,
    ) -> Vec<f32> {
        let shape = [1, 28, 28];
        let mut shifted = vec![0.0; 784];
        Augment::apply(a.params(seed, view, sample), shape, image, &mut shifted);
        let mut want = vec![0.0; 784];
        WarpField::draw(a.warp, seed, view, sample, 28, 28).apply(shape, &shifted, &mut want);
        want
    }

    #[test]
    fn warp_parses_prints_records_and_warps_after_the_shift() {
        let a = Augment::parse("shift=1, warp=1.5").unwrap();
        assert_eq!((a.shift, a.warp), (1, 1.5));
        prints_back_and_refuses(
            &["warp=1", "flip,shift=1,warp=0.5", "crop=2,warp=2,mixup=0.2"],
            &[
                ("warp=0", "warp=0: the displacement"),
                ("warp=5", "in (0, 4]"),
                ("warp=x", "warp=x"),
                ("warp=nan", "warp=nan"),
            ],
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"flip":false,"shift":1,"warp":1.5}"#);
        assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        assert!(a.check_shape([1, 1, 784]).is_err());
        // A batch is shifted first, then warped by each sample's own field.
        let shape = [1, 28, 28];
        let one: Vec<f32> = (0..784).map(|i| (i % 29) as f32).collect();
        let mut batch = [one.clone(), one.clone()].concat();
        a.apply_batch(4, 1, &[3, 8], shape, &mut batch);
        for (k, s) in [3u64, 8].iter().enumerate() {
            let want = shifted_then_warped(&a, &one, 4, 1, *s);
            assert_eq!(batch[k * 784..(k + 1) * 784], want[..]);
        }
        assert_ne!(batch[..784], batch[784..]);
        // Warp alone moves pixels; it does not draw a shift.
        let w = Augment::parse("warp=1").unwrap();
        let mut b = one.clone();
        w.apply_batch(0, 0, &[5], shape, &mut b);
        let mut want = vec![0.0; 784];
        WarpField::draw(1.0, 0, 0, 5, 28, 28).apply(shape, &one, &mut want);
        assert_eq!(b, want);
    }

    #[test]
    fn cutout_parses_prints_records_and_erases_after_the_warp() {
        let a = Augment::parse("shift=1, cutout=8, warp=1").unwrap();
        assert_eq!((a.shift, a.warp, a.cutout), (1, 1.0, 8));
        assert_eq!(a.to_string(), "shift=1,warp=1,cutout=8");
        prints_back_and_refuses(
            &[
                "cutout=8",
                "crop=4,flip,cutout=16",
                "shift=1,cutout=4,mixup=0.2",
            ],
            &[
                ("cutout=0", "cutout=0: the square's side"),
                ("cutout=32", "1..=31"),
                ("cutout=1.5", "cutout=1.5"),
            ],
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"flip":false,"shift":1,"warp":1.0,"cutout":8}"#);
        assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        assert!(a.check_shape([1, 1, 784]).is_err());
        let alone = Augment::parse("cutout=4").unwrap();
        assert!(alone.check_shape([1, 1, 784]).is_err());
        assert!(alone.check_shape([1, 28, 28]).is_ok());
        let big = Augment::parse("cutout=28").unwrap();
        let e = big.check_shape([1, 28, 28]).unwrap_err().to_string();
        assert!(
            e.contains("augment") && e.contains("cutout=28") && e.contains("cutout=27 or less"),
            "{e}"
        );
        assert!(big.check_shape([3, 32, 32]).is_ok());
        // Shifted, warped, then erased, each sample by its own draws.
        let shape = [1, 28, 28];
        let one: Vec<f32> = (0..784).map(|i| 1.0 + (i % 29) as f32).collect();
        let mut batch = [one.clone(), one.clone()].concat();
        a.apply_batch(4, 1, &[3, 8], shape, &mut batch);
        for (k, s) in [3u64, 8].iter().enumerate() {
            let mut want = shifted_then_warped(&a, &one, 4, 1, *s);
            let cut = CutoutBox::draw(8, 4, 1, *s, 28, 28);
            cut.apply(shape, &mut want);
            assert_eq!(batch[k * 784..(k + 1) * 784], want[..]);
            assert!(cut.area() >= 16, "{cut:?}");
        }
        // Cutout alone erases its square and leaves every other pixel.
        let c = Augment::parse("cutout=8").unwrap();
        let mut b = one.clone();
        c.apply_batch(0, 2, &[5], shape, &mut b);
        let cut = CutoutBox::draw(8, 0, 2, 5, 28, 28);
        let zeros = b.iter().filter(|&&x| x == 0.0).count();
        assert_eq!(zeros, cut.area());
        for (i, (&got, &was)) in b.iter().zip(&one).enumerate() {
            let (x, y) = (i % 28, i / 28);
            let inside = (cut.x0..cut.x1).contains(&x) && (cut.y0..cut.y1).contains(&y);
            assert_eq!(got, if inside { 0.0 } else { was }, "({x},{y})");
        }
    }

    #[test]
    fn noise_parses_prints_records_and_comes_after_the_cutout() {
        let a = Augment::parse("noise=0.1, cutout=8, shift=1").unwrap();
        assert_eq!((a.shift, a.cutout, a.noise), (1, 8, 0.1));
        assert_eq!(a.to_string(), "shift=1,cutout=8,noise=0.1");
        prints_back_and_refuses(
            &[
                "noise=0.2",
                "flip,shift=1,noise=0.05",
                "noise=0.1,mixup=0.2",
            ],
            &[
                ("noise=0", "noise=0: the noise's standard deviation"),
                ("noise=1.5", "(0, 1]"),
                ("noise=x", "noise=x"),
                ("noise=0.1,noise=0.2", "names noise twice"),
            ],
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, r#"{"flip":false,"shift":1,"cutout":8,"noise":0.1}"#);
        assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        // Noise alone needs no image: flat features take it.
        let alone = Augment::parse("noise=0.1").unwrap();
        assert!(alone.check_shape([1, 1, 784]).is_ok());
        assert!(a.check_shape([1, 1, 784]).is_err());
        // Shifted, erased, then noised, each sample by its own draws.
        let shape = [1, 28, 28];
        let one: Vec<f32> = (0..784).map(|i| 1.0 + (i % 29) as f32).collect();
        let mut batch = [one.clone(), one.clone()].concat();
        a.apply_batch(4, 1, &[3, 8], shape, &mut batch);
        for (k, s) in [3u64, 8].iter().enumerate() {
            let mut want = vec![0f32; 784];
            Augment::apply(a.params(4, 1, *s), shape, &one, &mut want);
            CutoutBox::draw(8, 4, 1, *s, 28, 28).apply(shape, &mut want);
            add_noise(0.1, 4, 1, *s, &mut want);
            assert_eq!(batch[k * 784..(k + 1) * 784], want[..]);
        }
        // Noise alone moves every value, by about its standard deviation.
        let mut b = one.clone();
        alone.apply_batch(0, 2, &[5], shape, &mut b);
        let d: Vec<f32> = b.iter().zip(&one).map(|(x, y)| x - y).collect();
        assert!(d.iter().all(|&x| x != 0.0));
        let rms = (d.iter().map(|x| x * x).sum::<f32>() / d.len() as f32).sqrt();
        assert!((rms - 0.1).abs() < 0.01, "rms {rms}");
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

    /// torchvision's `RandomCrop(size, padding=p)` then
    /// `RandomHorizontalFlip`, written out: pad every channel with `p` zeros,
    /// cut the original size at `(ox, oy)`, mirror if `flip`.
    fn padded_crop(
        src: &[f32],
        [c, h, w]: [usize; 3],
        p: usize,
        ox: usize,
        oy: usize,
        flip: bool,
    ) -> Vec<f32> {
        let (ph, pw) = (h + 2 * p, w + 2 * p);
        let mut padded = vec![0f32; c * ph * pw];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    padded[ch * ph * pw + (y + p) * pw + x + p] = src[ch * h * w + y * w + x];
                }
            }
        }
        let mut out = vec![0f32; c * h * w];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let cx = if flip { w - 1 - x } else { x };
                    out[ch * h * w + y * w + x] = padded[ch * ph * pw + (y + oy) * pw + cx + ox];
                }
            }
        }
        out
    }

    #[test]
    fn crop_parses_prints_and_refuses_a_shift_beside_it() {
        let a = Augment::parse("crop=4,flip").unwrap();
        assert_eq!(
            a,
            Augment {
                flip: true,
                shift: 0,
                crop: 4,
                warp: 0.0,
                cutout: 0,
                noise: 0.0,
                mix: None,
            }
        );
        assert_eq!(Augment::parse("flip, crop=4").unwrap(), a);
        for t in ["crop=4,flip", "crop=2"] {
            assert_eq!(Augment::parse(t).unwrap().to_string(), t);
        }
        for (t, needle) in [
            ("crop=0", "augments nothing"),
            ("crop=9", "crop=9 is more than 8"),
            ("crop=x", "crop=x: not a whole number"),
            ("shift=1,crop=4", "both shifts and crops"),
        ] {
            let e = Augment::parse(t).unwrap_err().to_string();
            assert!(e.contains("augment") && e.contains(needle), "{t}: {e}");
        }
        // Configs written before crops existed read back; a crop is recorded.
        let old: Augment = serde_json::from_str(r#"{"flip":true,"shift":2}"#).unwrap();
        assert_eq!(old, Augment::parse("flip,shift=2").unwrap());
        assert_eq!(
            serde_json::to_string(&old).unwrap(),
            r#"{"flip":true,"shift":2}"#
        );
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        assert!(a.check_shape([3, 32, 32]).is_ok());
        assert!(a.check_shape([3, 4, 4]).is_err());
    }

    #[test]
    fn crops_are_pure_functions_of_seed_view_and_sample_within_bounds() {
        let a = Augment::parse("crop=4,flip").unwrap();
        assert_eq!(a.params(7, 3, 11), a.params(7, 3, 11));
        let mut flips = 0;
        let mut offsets = std::collections::HashSet::new();
        for s in 0..4000u64 {
            let p = a.params(1, 0, s);
            assert!(p.dx.abs() <= 4 && p.dy.abs() <= 4, "{p:?}");
            flips += p.flip as u32;
            let ox = if p.flip { p.dx + 4 } else { 4 - p.dx };
            offsets.insert((ox, 4 - p.dy));
        }
        assert!((1800..2200).contains(&flips), "{flips} flips of 4000");
        assert_eq!(offsets.len(), 81, "every offset in 0..=8 x 0..=8 occurs");
        assert!(offsets
            .iter()
            .all(|&(x, y)| (0..=8).contains(&x) && (0..=8).contains(&y)));
        let differ = |f: &dyn Fn(u64) -> (ViewParams, ViewParams)| {
            (0..200u64)
                .filter(|&s| {
                    let (p, q) = f(s);
                    p != q
                })
                .count()
        };
        assert!(
            differ(&|s| (a.params(1, 0, s), a.params(1, 1, s))) > 150,
            "views differ"
        );
        assert!(
            differ(&|s| (a.params(1, 0, s), a.params(2, 0, s))) > 150,
            "seeds differ"
        );
        assert!(
            differ(&|s| (a.params(1, 0, s), a.params(1, 0, s + 1))) > 150,
            "samples differ"
        );
    }

    #[test]
    fn a_crop_of_an_rgb_image_is_torchvisions_padded_crop_then_flip() {
        let a = Augment::parse("crop=4,flip").unwrap();
        let shape = [3, 8, 6];
        // Distinct values in every channel: 1 + index, so a zero is padding.
        let src: Vec<f32> = (0..3 * 8 * 6).map(|i| 1.0 + i as f32).collect();
        let mut dst = vec![0f32; src.len()];
        let mut seen_flip = [false; 2];
        for s in 0..64u64 {
            let p = a.params(9, 2, s);
            seen_flip[p.flip as usize] = true;
            let ox = if p.flip { p.dx + 4 } else { 4 - p.dx };
            let oy = 4 - p.dy;
            Augment::apply(p, shape, &src, &mut dst);
            let want = padded_crop(&src, shape, 4, ox as usize, oy as usize, p.flip);
            assert_eq!(dst, want, "sample {s}: {p:?}");
            // Every channel moved the same way: zeros at the same pixels.
            let zeros = |ch: usize| -> Vec<bool> {
                dst[ch * 48..(ch + 1) * 48]
                    .iter()
                    .map(|&v| v == 0.0)
                    .collect()
            };
            assert_eq!(zeros(0), zeros(1));
            assert_eq!(zeros(0), zeros(2));
        }
        assert_eq!(seen_flip, [true, true]);
    }

    #[test]
    fn mixup_and_cutmix_parse_print_and_are_checked() {
        let a = Augment::parse("flip,shift=2,mixup=0.2").unwrap();
        assert_eq!(a.mix, Some(Mix::Mixup { alpha: 0.2 }));
        assert!(a.flip && a.shift == 2);
        for t in [
            "flip,shift=2,mixup=0.2",
            "cutmix=1",
            "crop=4,flip,cutmix=0.5",
            "mixup=0.4",
        ] {
            assert_eq!(Augment::parse(t).unwrap().to_string(), t);
        }
        assert_eq!(
            Augment::parse(" mixup = 1.0 ").unwrap().to_string(),
            "mixup=1"
        );
        for (t, needle) in [
            ("mixup=0", "must be a number in (0, 100]"),
            ("cutmix=-1", "must be a number in (0, 100]"),
            ("mixup=x", "mixup=x"),
            ("mixup=nan", "must be a number"),
            ("mixup=0.2,cutmix=1", "mixes twice"),
            ("mixup=0.2,mixup=1", "names mixup twice"),
            ("flip,shift=1,flip", "names flip twice"),
            ("shift=1, shift = 2", "names shift twice"),
            ("mixup", "unknown item 'mixup'"),
        ] {
            let e = Augment::parse(t).unwrap_err().to_string();
            assert!(e.contains("augment") && e.contains(needle), "{t}: {e}");
        }
        // Mixup blends flat features; cutmix and moves need images.
        let flat = [1, 1, 784];
        assert!(Augment::parse("mixup=0.2")
            .unwrap()
            .check_shape(flat)
            .is_ok());
        assert!(Augment::parse("cutmix=1")
            .unwrap()
            .check_shape(flat)
            .is_err());
        assert!(Augment::parse("flip,mixup=1")
            .unwrap()
            .check_shape(flat)
            .is_err());
        // Configs record the mix and read back; old ones read as unmixed.
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Augment>(&json).unwrap(), a);
        assert!(!serde_json::to_string(&Augment::parse("flip").unwrap())
            .unwrap()
            .contains("mix"));
    }

    fn small_data(n: usize) -> Dataset {
        let labels = (0..n as u32).map(|i| i % 10).collect();
        Dataset::from_u8(
            [1, 6, 5],
            (0..n * 30).map(|i| ((i * 37) % 251) as u8).collect(),
            Some(labels),
            super::super::Split::Train,
        )
        .unwrap()
    }

    /// A mixed row is its own geometric view blended with its partner's
    /// geometric view, the same in any batch.
    #[test]
    fn fill_batch_mixes_each_row_with_its_partners_view() {
        let data = small_data(40);
        let shape = data.sample_shape();
        for spec in ["flip,shift=1,mixup=0.5", "flip,cutmix=1", "shift=2"] {
            let a = Augment::parse(spec).unwrap();
            let idx = [3usize, 17, 3, 39, 0];
            let mut out = vec![0f32; idx.len() * 30];
            let mix = a.fill_batch(&data, 9, 4, &idx, &mut out);
            assert_eq!(mix.is_some(), a.mix.is_some(), "{spec}");
            for (r, &i) in idx.iter().enumerate() {
                let mut own = vec![0f32; 30];
                data.fill_inputs(&[i], &mut own);
                a.apply_batch(9, 4, &[i], shape, &mut own);
                if let Some(m) = a.mix {
                    let p = m.params(9, 4, i as u64, 40, shape);
                    assert_eq!(mix.as_ref().unwrap()[r], p);
                    assert_ne!(p.partner, i);
                    let mut other = vec![0f32; 30];
                    data.fill_inputs(&[p.partner], &mut other);
                    a.apply_batch(9, 4, &[p.partner], shape, &mut other);
                    Mix::blend(&p, shape, &mut own, &other);
                }
                assert_eq!(out[r * 30..(r + 1) * 30], own[..], "{spec} row {r}");
                // Alone in a batch, the same row.
                let mut alone = vec![0f32; 30];
                a.fill_batch(&data, 9, 4, &[i], &mut alone);
                assert_eq!(alone, own);
            }
        }
    }
}

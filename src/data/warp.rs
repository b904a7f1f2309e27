//! A smooth random warp of an image (`--augment warp=A`): the jitter that
//! lets a network without translation-invariant layers (an MLP) learn the
//! shapes of a class rather than its pixels (Simard et al. 2003's elastic
//! distortions; Hinton et al. 2015 distilled MNIST with jittered inputs).
//!
//! Each image gets its own displacement field. The field is drawn on a grid
//! of control points spaced a quarter of the image's smaller side apart
//! (7 pixels on a 28x28 item, 8 on a 32x32 CIFAR image), both ends included.
//! Each control point moves by an independent normal draw of standard
//! deviation `A` pixels in x and in y. Between the points the field is
//! interpolated bilinearly. Output pixel `(x, y)` then reads the input at
//! `(x - u(x, y), y - v(x, y))`, bilinearly, with 0 outside the image (the
//! background, as a shift brings in). Every channel moves alike.
//!
//! This is a cheap variant of torchvision's `ElasticTransform`, whose
//! field is white noise under a Gaussian blur: a coarse grid of ~25 draws
//! per image instead of one per pixel. `A` is the displacement's standard
//! deviation at the control points, in pixels; the two are not the same
//! parameter as torchvision's `alpha` and `sigma`.
//!
//! Like every other augmentation here, the field is a pure function of
//! `(seed, view, sample)`: its draws come from numbered xxh3 hashes in a
//! domain of their own ([`super::mix`]'s draws), so a teacher's view-set
//! build and the student's loader warp an image identically.

use super::mix::Draws;

/// Largest standard deviation accepted, in pixels: beyond it a 28x28 item
/// is torn rather than bent.
pub const MAX_WARP: f32 = 4.0;

/// Domain of the warp's hashes, apart from the mix's and the geometric
/// draw's.
const WARP_DOMAIN: u64 = 0x7761_7270_6772_6964; // "warpgrid"

/// The displacement field of one image: control points every `step`
/// pixels, `nx` by `ny` of them, moving by `(u, v)` each.
#[derive(Debug, Clone, PartialEq)]
pub struct WarpField {
    step: usize,
    nx: usize,
    ny: usize,
    /// Horizontal displacement of each control point, row-major.
    u: Vec<f32>,
    /// Vertical displacement of each control point, row-major.
    v: Vec<f32>,
}

/// `x.floor()` as an integer, without the library call `f32::floor` is
/// on a CPU target without SSE4.1; exact for the `|x| < 2^23` a warp
/// reads at.
fn floor(x: f32) -> i64 {
    let t = x as i64;
    t - ((t as f32) > x) as i64
}

/// Control points on one axis of `len` pixels, `step` apart, covering both
/// ends.
fn points(len: usize, step: usize) -> usize {
    len.saturating_sub(1).div_ceil(step) + 1
}

impl WarpField {
    /// The field of `sample` in `view` under `seed`, for an image `h` by
    /// `w` pixels, with displacements of standard deviation `sd` pixels.
    pub fn draw(sd: f32, seed: u64, view: u64, sample: u64, h: usize, w: usize) -> Self {
        let step = (h.min(w) / 4).max(1);
        let (nx, ny) = (points(w, step), points(h, step));
        let mut draws = Draws::in_domain(seed, view, sample, WARP_DOMAIN);
        let mut take = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| (draws.normal() * sd as f64) as f32)
                .collect()
        };
        let u = take(nx * ny);
        let v = take(nx * ny);
        WarpField { step, nx, ny, u, v }
    }

    /// The cell of pixel `p` on an axis of `n` control points: the points
    /// before and after it and how far along it lies.
    fn cell(&self, p: usize, n: usize) -> (usize, usize, f32) {
        let i = (p / self.step).min(n - 1);
        let t = (p - i * self.step) as f32 / self.step as f32;
        (i, (i + 1).min(n - 1), t)
    }

    /// The displacement `(u, v)` at pixel `(x, y)`: the bilinear mix of the
    /// four control points around it.
    pub fn at(&self, x: usize, y: usize) -> (f32, f32) {
        self.at_cells(self.cell(x, self.nx), self.cell(y, self.ny))
    }

    fn at_cells(
        &self,
        (x0, x1, tx): (usize, usize, f32),
        (y0, y1, ty): (usize, usize, f32),
    ) -> (f32, f32) {
        let mix = |f: &[f32]| {
            let top = f[y0 * self.nx + x0] * (1.0 - tx) + f[y0 * self.nx + x1] * tx;
            let bottom = f[y1 * self.nx + x0] * (1.0 - tx) + f[y1 * self.nx + x1] * tx;
            top * (1.0 - ty) + bottom * ty
        };
        (mix(&self.u), mix(&self.v))
    }

    /// Writes `src` (C, H, W, row-major) warped by the field to `dst`.
    pub fn apply(&self, shape: [usize; 3], src: &[f32], dst: &mut [f32]) {
        let [c, h, w] = shape;
        debug_assert_eq!(src.len(), c * h * w);
        debug_assert_eq!(dst.len(), c * h * w);
        let pixel = |plane: usize, x: i64, y: i64| -> f32 {
            if (0..w as i64).contains(&x) && (0..h as i64).contains(&y) {
                src[plane + y as usize * w + x as usize]
            } else {
                0.0
            }
        };
        let columns: Vec<_> = (0..w).map(|x| self.cell(x, self.nx)).collect();
        for y in 0..h {
            let row = self.cell(y, self.ny);
            for (x, &column) in columns.iter().enumerate() {
                let (u, v) = self.at_cells(column, row);
                let (sx, sy) = (x as f32 - u, y as f32 - v);
                let (ix, iy) = (floor(sx), floor(sy));
                let (tx, ty) = (sx - ix as f32, sy - iy as f32);
                let inside = ix >= 0 && iy >= 0 && ix + 1 < w as i64 && iy + 1 < h as i64;
                for ch in 0..c {
                    let plane = ch * h * w;
                    let (p00, p10, p01, p11) = if inside {
                        let at = plane + iy as usize * w + ix as usize;
                        (src[at], src[at + 1], src[at + w], src[at + w + 1])
                    } else {
                        (
                            pixel(plane, ix, iy),
                            pixel(plane, ix + 1, iy),
                            pixel(plane, ix, iy + 1),
                            pixel(plane, ix + 1, iy + 1),
                        )
                    };
                    let top = p00 * (1.0 - tx) + p10 * tx;
                    let bottom = p01 * (1.0 - tx) + p11 * tx;
                    dst[plane + y * w + x] = top * (1.0 - ty) + bottom * ty;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn constant_field(step: usize, nx: usize, ny: usize, u: f32, v: f32) -> WarpField {
        WarpField {
            step,
            nx,
            ny,
            u: vec![u; nx * ny],
            v: vec![v; nx * ny],
        }
    }

    #[test]
    fn floor_is_the_floor() {
        for x in [
            -3.5f32, -3.0, -0.25, -0.0, 0.0, 0.25, 2.0, 2.999, 27.5, -1e-7,
        ] {
            assert_eq!(floor(x), x.floor() as i64, "{x}");
        }
    }

    #[test]
    fn a_constant_whole_pixel_field_is_a_shift() {
        // Right by 1 and up by 2 on a 2-channel 6x5 image: pixel (x, y)
        // reads (x - 1, y + 2), 0 outside.
        let (c, h, w) = (2, 5, 6);
        let src: Vec<f32> = (0..c * h * w).map(|i| 1.0 + i as f32).collect();
        let f = constant_field(1, w, h, 1.0, -2.0);
        let mut dst = vec![0.0; src.len()];
        f.apply([c, h, w], &src, &mut dst);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let want = if x >= 1 && y + 2 < h {
                        src[ch * h * w + (y + 2) * w + x - 1]
                    } else {
                        0.0
                    };
                    assert_eq!(dst[ch * h * w + y * w + x], want, "({ch},{x},{y})");
                }
            }
        }
    }

    #[test]
    fn half_pixel_moves_average_neighbours_and_the_zero_field_is_the_identity() {
        let (h, w) = (4, 4);
        let src: Vec<f32> = (0..h * w).map(|i| i as f32).collect();
        let mut dst = vec![0.0; h * w];
        constant_field(1, w, h, 0.0, 0.0).apply([1, h, w], &src, &mut dst);
        assert_eq!(dst, src);
        constant_field(1, w, h, -0.5, 0.0).apply([1, h, w], &src, &mut dst);
        // Pixel (x, y) reads halfway between (x, y) and (x + 1, y).
        assert_eq!(dst[0], 0.5);
        assert_eq!(dst[5], 5.5);
        // The last column reads halfway into the zero border.
        assert_eq!(dst[3], 1.5);
    }

    #[test]
    fn the_field_interpolates_between_control_points() {
        let mut f = constant_field(4, 2, 2, 0.0, 0.0);
        f.u = vec![0.0, 4.0, 8.0, 12.0];
        f.v = vec![1.0, 1.0, 3.0, 3.0];
        assert_eq!(f.at(0, 0), (0.0, 1.0));
        assert_eq!(f.at(4, 0), (4.0, 1.0));
        assert_eq!(f.at(2, 0), (2.0, 1.0));
        assert_eq!(f.at(2, 2), (6.0, 2.0));
        assert_eq!(f.at(4, 4), (12.0, 3.0));
    }

    #[test]
    fn fields_are_pure_functions_with_the_asked_spread() {
        assert_eq!(
            WarpField::draw(1.5, 3, 1, 9, 28, 28),
            WarpField::draw(1.5, 3, 1, 9, 28, 28)
        );
        let f = WarpField::draw(1.5, 3, 1, 9, 28, 28);
        assert_eq!((f.step, f.nx, f.ny), (7, 5, 5));
        let g = WarpField::draw(1.0, 0, 0, 0, 32, 32);
        assert_eq!((g.step, g.nx, g.ny), (8, 5, 5));
        assert_ne!(f, WarpField::draw(1.5, 3, 2, 9, 28, 28), "views differ");
        assert_ne!(f, WarpField::draw(1.5, 3, 1, 10, 28, 28), "samples differ");
        assert_ne!(f, WarpField::draw(1.5, 4, 1, 9, 28, 28), "seeds differ");
        // The control points' displacements have the asked deviation.
        let all: Vec<f32> = (0..400u64)
            .flat_map(|s| {
                let f = WarpField::draw(2.0, 0, 0, s, 28, 28);
                f.u.into_iter().chain(f.v)
            })
            .collect();
        let n = all.len() as f64;
        let mean = all.iter().map(|&x| x as f64).sum::<f64>() / n;
        let sd = (all.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        assert!(mean.abs() < 0.05, "{mean}");
        assert!((sd - 2.0).abs() < 0.05, "{sd}");
    }

    /// The draws FORMAT.md specifies, pinned: a view set's targets belong
    /// to exactly these images, so changing them breaks every warped set.
    /// The values were computed from FORMAT.md's words alone, in Python
    /// with the `xxhash` package: 0.16506113283958812, 1.333945531441083,
    /// -2.228837332106016, -0.19823228390649458, 0.6946871640760448.
    #[test]
    fn draws_match_the_format_documents() {
        let f = WarpField::draw(1.0, 0, 0, 0, 28, 28);
        let got = [f.u[0], f.u[1], f.u[24], f.v[0], f.v[24]];
        let want = [
            0.165_061_13,
            1.333_945_5,
            -2.228_837_3,
            -0.198_232_28,
            0.694_687_2,
        ];
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-6, "{got:?}");
        }
    }

    #[test]
    fn a_warp_keeps_most_of_an_item_and_moves_it_a_little() {
        // A bright 8x8 square in the middle of a 28x28 image is stretched
        // or squeezed (its mass changes with the local area) but stays
        // where it was, and every warp changes it.
        let (h, w) = (28, 28);
        let mut src = vec![0f32; h * w];
        for y in 10..18 {
            for x in 10..18 {
                src[y * w + x] = 1.0;
            }
        }
        let mut dst = vec![0f32; h * w];
        let mut changed = 0;
        for s in 0..20 {
            WarpField::draw(1.0, 0, 0, s, h, w).apply([1, h, w], &src, &mut dst);
            let mass: f32 = dst.iter().sum();
            assert!((mass - 64.0).abs() < 32.0, "sample {s}: mass {mass}");
            let centre = |axis: fn(usize) -> usize| {
                dst.iter()
                    .enumerate()
                    .map(|(i, &p)| p * axis(i) as f32)
                    .sum::<f32>()
                    / mass
            };
            let (cx, cy) = (centre(|i| i % 28), centre(|i| i / 28));
            assert!(
                (cx - 13.5).abs() < 3.0 && (cy - 13.5).abs() < 3.0,
                "({cx}, {cy})"
            );
            changed += (dst != src) as usize;
        }
        assert_eq!(changed, 20);
    }
}

//! Cutout (`--augment cutout=S`): a square of `S` by `S` pixels of every
//! image set to 0, at a random place (DeVries & Taylor 2017, "Improved
//! regularization of convolutional neural networks with cutout"; Zhong et
//! al. 2017's random erasing is the same idea with random sizes).
//!
//! Hard labels say an image is still its class when part of it is hidden,
//! even when the hidden part was the only thing that told a shirt from a
//! T-shirt. A teacher's output on the same occluded image says how much of
//! the class is left, so occlusion is where a consistent cache could teach
//! what labels cannot.
//!
//! The square's centre is uniform over the image's pixels and the square is
//! clipped at the border, as in the paper, so an image near its edge loses
//! less. Every channel is erased alike, to 0: the background of a
//! Fashion-MNIST item, black in an RGB image, the value a shift brings in.
//!
//! The centre is a pure function of `(seed, view, sample)`, drawn from
//! numbered xxh3 hashes in a domain of its own ([`super::mix`]'s draws), so a
//! teacher's view-set build and the student's loader erase the same pixels.

use super::mix::Draws;

/// Domain of the cutout's hashes, apart from the mix's, the warp's and the
/// geometric draw's.
const CUTOUT_DOMAIN: u64 = 0x6375_746f_7574_7371; // "cutoutsq"

/// The erased square of one image: columns `x0..x1`, rows `y0..y1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CutoutBox {
    pub x0: usize,
    pub x1: usize,
    pub y0: usize,
    pub y1: usize,
}

impl CutoutBox {
    /// The square of side `side` for `sample` in `view` under `seed`, on an
    /// image `h` by `w` pixels: centre `(floor(u w), floor(u' h))` from the
    /// domain's first two uniform draws (kept inside the image should a
    /// draw round to 1), covering `centre - floor(side / 2)` onwards for
    /// `side` pixels, clipped to the image.
    pub fn draw(side: u32, seed: u64, view: u64, sample: u64, h: usize, w: usize) -> Self {
        let mut draws = Draws::in_domain(seed, view, sample, CUTOUT_DOMAIN);
        let cx = ((draws.uniform() * w as f64) as usize).min(w.saturating_sub(1));
        let cy = ((draws.uniform() * h as f64) as usize).min(h.saturating_sub(1));
        let (side, half) = (side as usize, side as usize / 2);
        let span = |c: usize, len: usize| {
            let start = c.saturating_sub(half);
            let end = (c + side - half).min(len);
            (start, end)
        };
        let (x0, x1) = span(cx, w);
        let (y0, y1) = span(cy, h);
        CutoutBox { x0, x1, y0, y1 }
    }

    /// How many pixels of each channel it erases.
    pub fn area(&self) -> usize {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }

    /// Sets the square to 0 in every channel of `image` (C, H, W, row-major).
    pub fn apply(&self, shape: [usize; 3], image: &mut [f32]) {
        let [c, h, w] = shape;
        debug_assert_eq!(image.len(), c * h * w);
        for ch in 0..c {
            for y in self.y0..self.y1 {
                let row = ch * h * w + y * w;
                image[row + self.x0..row + self.x1].fill(0.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_are_pure_functions_of_the_draw_and_clipped_to_the_image() {
        let b = CutoutBox::draw(8, 3, 1, 9, 28, 28);
        assert_eq!(b, CutoutBox::draw(8, 3, 1, 9, 28, 28));
        let differ = |f: &dyn Fn(u64) -> CutoutBox| (0..20).any(|k| f(k) != f(k + 1));
        assert!(differ(&|k| CutoutBox::draw(8, 3, k, 9, 28, 28)), "views");
        assert!(differ(&|k| CutoutBox::draw(8, 3, 1, k, 28, 28)), "samples");
        assert!(differ(&|k| CutoutBox::draw(8, k, 1, 9, 28, 28)), "seeds");
        let (mut full, mut clipped) = (0, 0);
        let mut centres = [[0usize; 28]; 2];
        for s in 0..2000 {
            let b = CutoutBox::draw(8, 0, 0, s, 28, 28);
            assert!(
                b.x0 < b.x1 && b.x1 <= 28 && b.y0 < b.y1 && b.y1 <= 28,
                "{b:?}"
            );
            assert!(b.x1 - b.x0 <= 8 && b.y1 - b.y0 <= 8, "{b:?}");
            // Away from the border the square is whole.
            let whole = b.x1 - b.x0 == 8 && b.y1 - b.y0 == 8;
            if whole {
                full += 1;
                centres[0][b.x0 + 4] += 1;
                centres[1][b.y0 + 4] += 1;
            } else {
                clipped += 1;
            }
        }
        // The square covers centre - 4 .. centre + 4, so a centre in 4..=24
        // on both axes keeps it whole: (21/28)^2 of the draws.
        let expect = 2000.0 * (21.0f64 / 28.0).powi(2);
        assert!(
            (full as f64 - expect).abs() < 80.0,
            "{full} whole, {clipped} clipped"
        );
        // Uniform centres: every inner position turns up.
        for axis in centres {
            assert!(axis[4..=24].iter().all(|&n| n > 20), "{axis:?}");
        }
    }

    #[test]
    fn a_cutout_zeroes_its_square_in_every_channel_and_nothing_else() {
        let (c, h, w) = (3, 6, 5);
        let src: Vec<f32> = (0..c * h * w).map(|i| 1.0 + i as f32).collect();
        let b = CutoutBox {
            x0: 1,
            x1: 3,
            y0: 4,
            y1: 6,
        };
        assert_eq!(b.area(), 4);
        let mut dst = src.clone();
        b.apply([c, h, w], &mut dst);
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let i = ch * h * w + y * w + x;
                    let inside = (1..3).contains(&x) && (4..6).contains(&y);
                    assert_eq!(dst[i], if inside { 0.0 } else { src[i] }, "({ch},{x},{y})");
                }
            }
        }
    }

    /// The draws FORMAT.md specifies, pinned: a view set's targets belong
    /// to exactly these images. The boxes were computed from FORMAT.md's
    /// words alone, in Python with the `xxhash` package (the first case's
    /// uniforms are 0.6087485494921554 and 0.7912855035735318).
    #[test]
    fn draws_match_the_format_documents() {
        for ((side, seed, view, sample, h, w), want) in [
            ((8, 0, 0, 0, 28, 28), (13, 21, 18, 26)),
            ((8, 0, 0, 1, 28, 28), (7, 15, 9, 17)),
            ((16, 7, 3, 12345, 32, 32), (22, 32, 22, 32)),
        ] {
            let b = CutoutBox::draw(side, seed, view, sample, h, w);
            assert_eq!((b.x0, b.x1, b.y0, b.y1), want, "sample {sample}");
        }
    }

    #[test]
    fn a_square_twice_the_image_side_erases_it_all() {
        let b = CutoutBox::draw(64, 5, 0, 1, 28, 28);
        assert_eq!((b.x0, b.x1, b.y0, b.y1), (0, 28, 0, 28));
    }
}

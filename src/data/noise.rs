//! Gaussian noise (`--augment noise=S`): every input value of every image
//! moved by an independent normal draw of standard deviation `S`, in the
//! units of the inputs as the dataset gives them (pixels in 0..1), before
//! the model's input normalisation. Values are not clipped: a pixel of the
//! background (0) moves down as often as up, so the noise has mean 0
//! everywhere.
//!
//! Matching a teacher's outputs on inputs perturbed by small Gaussian noise
//! is, to first order, matching its input gradients as well as its outputs
//! (Srinivas & Fleuret 2018, "Knowledge transfer with Jacobian matching"):
//! a view set of noisy images hands the student the teacher's local shape,
//! which hard labels on the same images cannot.
//!
//! The draws are a pure function of `(seed, view, sample)` and the value's
//! position, from numbered xxh3 hashes in a domain of their own
//! ([`super::mix`]'s draws), so a teacher's view-set build and the
//! student's loader add the same noise. Each pair of values takes one pair
//! of uniforms through Box-Muller (cosine and sine).

use super::mix::Draws;

/// Domain of the noise's hashes, apart from the other augmentations'.
const NOISE_DOMAIN: u64 = 0x6e6f_6973_6567_6175; // "noisegau"

/// Largest standard deviation accepted: the whole range of a pixel.
pub const MAX_NOISE: f32 = 1.0;

/// Adds the noise of `sample` in `view` under `seed`, standard deviation
/// `std`, to the image `x` (every channel, row-major).
pub fn add_noise(std: f32, seed: u64, view: u64, sample: u64, x: &mut [f32]) {
    let mut draws = Draws::in_domain(seed, view, sample, NOISE_DOMAIN);
    for pair in x.chunks_mut(2) {
        let (u, v) = (draws.uniform(), draws.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let (sin, cos) = (std::f64::consts::TAU * v).sin_cos();
        pair[0] += std * (r * cos) as f32;
        if let Some(second) = pair.get_mut(1) {
            *second += std * (r * sin) as f32;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_noise_is_a_pure_function_of_seed_view_and_sample() {
        let base = vec![0.5f32; 785];
        let noisy = |seed, view, sample| {
            let mut x = base.clone();
            add_noise(0.1, seed, view, sample, &mut x);
            x
        };
        assert_eq!(noisy(1, 2, 3), noisy(1, 2, 3));
        for other in [noisy(0, 2, 3), noisy(1, 0, 3), noisy(1, 2, 0)] {
            assert_ne!(other, noisy(1, 2, 3));
        }
    }

    #[test]
    fn the_noise_has_the_asked_spread_and_no_bias() {
        // 100 images of 785 values (an odd length: the last value takes the
        // cosine of its pair alone).
        let mut d = Vec::new();
        for sample in 0..100 {
            let mut x = vec![0f32; 785];
            add_noise(0.2, 7, 0, sample, &mut x);
            d.extend(x.iter().map(|&v| v as f64));
        }
        let n = d.len() as f64;
        let mean = d.iter().sum::<f64>() / n;
        let sd = (d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        // Standard errors: 0.2 / sqrt(78,500) = 0.0007 for the mean, about
        // 0.0005 for the standard deviation.
        assert!(mean.abs() < 0.003, "mean {mean}");
        assert!((sd - 0.2).abs() < 0.003, "sd {sd}");
        // Neighbouring values (the two halves of a Box-Muller pair) do not
        // move together.
        let corr = d.chunks_exact(2).map(|p| p[0] * p[1]).sum::<f64>() / (n / 2.0) / (sd * sd);
        assert!(corr.abs() < 0.03, "correlation {corr}");
    }
}

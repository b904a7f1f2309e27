//! Per-channel input normalisation: `(x - mean[c]) / std[c]` for every
//! value `x` of channel `c`, with `x` as [`Dataset::fill_inputs`] gives it
//! (bytes already scaled to `[0, 1]`).
//!
//! A [`Normalization`] is measured on a training split
//! ([`Normalization::of_dataset`]) or given (`M1,M2,M3/S1,S2,S3`), and is
//! stored with a model, which applies it at the start of its forward pass
//! (`crate::model`): the teacher filling a cache, a student in training,
//! evaluation and pruning all apply the model's own. Augmentations work on
//! the raw images, before it, so a zero-padded pixel is black whatever the
//! statistics.
//!
//! [`NormalizeSetting`] is what a training run asks for (`auto`, `none` or
//! given values) and [`NormalizeSetting::resolve`] turns it into the
//! normalisation the run's model gets.

use std::fmt;
use std::str::FromStr;

use super::{DataError, Dataset, Inputs};

/// The config field a setting comes from (`TrainConfig::normalize`).
const FIELD: &str = "normalize";
/// The most channels a normalisation may have.
pub const MAX_CHANNELS: usize = 1 << 16;
/// A measured standard deviation below this (a constant channel) is
/// stored as 1, so the channel is only centred.
const MIN_STD: f64 = 1e-6;

/// Per-channel mean and standard deviation. Invariants: as many of each,
/// at least one, every mean finite, every std finite and positive (so
/// equality is reflexive, and `Eq` holds).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "Stats", into = "Stats")]
pub struct Normalization {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl Eq for Normalization {}

/// The serialised form, checked into a [`Normalization`] on the way in.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Stats {
    mean: Vec<f32>,
    std: Vec<f32>,
}

impl TryFrom<Stats> for Normalization {
    type Error = String;
    fn try_from(s: Stats) -> Result<Self, String> {
        Normalization::new(s.mean, s.std)
    }
}

impl From<Normalization> for Stats {
    fn from(n: Normalization) -> Stats {
        Stats {
            mean: n.mean,
            std: n.std,
        }
    }
}

impl Normalization {
    /// Checks and builds a normalisation; the error says what is wrong.
    pub fn new(mean: Vec<f32>, std: Vec<f32>) -> Result<Self, String> {
        if mean.len() != std.len() {
            return Err(format!(
                "{} means but {} standard deviations; give one of each per channel",
                mean.len(),
                std.len()
            ));
        }
        if mean.is_empty() || mean.len() > MAX_CHANNELS {
            return Err(format!(
                "{} channels; expected 1 to {MAX_CHANNELS}",
                mean.len()
            ));
        }
        if let Some(m) = mean.iter().find(|m| !m.is_finite()) {
            return Err(format!("mean {m} is not a finite number"));
        }
        if let Some(s) = std.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(format!(
                "standard deviation {s} is not a positive finite number"
            ));
        }
        // A measured one this small is stored as 1 ([`MIN_STD`]); a given one
        // would scale the inputs past what training survives (NaN weights).
        if let Some(s) = std.iter().find(|s| (**s as f64) < MIN_STD) {
            return Err(format!(
                "standard deviation {s:e} is below {MIN_STD:e}: it would multiply the inputs by \
                 more than a million"
            ));
        }
        Ok(Normalization { mean, std })
    }

    /// The mean and standard deviation of each channel of `data`'s inputs
    /// (population statistics over every sample and pixel, computed in f64;
    /// bytes exactly, from their histogram). An empty dataset gives the
    /// identity (mean 0, std 1).
    pub fn of_dataset(data: &Dataset) -> Normalization {
        Normalization::of_samples(data, |_| true)
    }

    /// As [`Normalization::of_dataset`], over the samples `i` of `data`
    /// for which `keep(i)` holds (a run's training samples, its
    /// validation images left out).
    pub fn of_samples(data: &Dataset, keep: impl Fn(usize) -> bool) -> Normalization {
        let [c, h, w] = data.sample_shape();
        let plane = h * w;
        let (mut mean, mut std) = (vec![0f32; c], vec![1f32; c]);
        let kept = (0..data.len()).filter(|&i| keep(i)).count();
        let count = (kept * plane) as f64;
        if count == 0.0 {
            return Normalization { mean, std };
        }
        for ch in 0..c {
            let (m, var) = match &data.inputs {
                Inputs::U8(v) => {
                    let mut hist = [0u64; 256];
                    let samples = v.chunks_exact(c * plane).enumerate();
                    for (_, sample) in samples.filter(|(i, _)| keep(*i)) {
                        for &x in &sample[ch * plane..(ch + 1) * plane] {
                            hist[x as usize] += 1;
                        }
                    }
                    let value = |b: usize| b as f64 / 255.0;
                    let m = (0..256).map(|b| value(b) * hist[b] as f64).sum::<f64>() / count;
                    let var = (0..256)
                        .map(|b| (value(b) - m).powi(2) * hist[b] as f64)
                        .sum::<f64>()
                        / count;
                    (m, var)
                }
                Inputs::F32(v) => {
                    let channel = || {
                        v.chunks_exact(c * plane)
                            .enumerate()
                            .filter(|(i, _)| keep(*i))
                            .flat_map(move |(_, s)| &s[ch * plane..(ch + 1) * plane])
                            .map(|&x| f64::from(x))
                    };
                    let m = channel().sum::<f64>() / count;
                    let var = channel().map(|x| (x - m).powi(2)).sum::<f64>() / count;
                    (m, var)
                }
            };
            mean[ch] = m as f32;
            let s = var.sqrt();
            std[ch] = if s >= MIN_STD && s.is_finite() {
                s as f32
            } else {
                1.0
            };
        }
        Normalization { mean, std }
    }

    /// The number of channels.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// Each channel's mean.
    pub fn mean(&self) -> &[f32] {
        &self.mean
    }

    /// Each channel's standard deviation.
    pub fn std(&self) -> &[f32] {
        &self.std
    }

    /// Normalises host inputs in place: `x` holds whole samples of
    /// `sample_len` values in (channel, height, width) order, whose
    /// channels are this normalisation's (`sample_len` a multiple of
    /// [`Self::channels`]). The reference for the model's device version.
    pub fn apply(&self, sample_len: usize, x: &mut [f32]) {
        let plane = sample_len / self.channels();
        for sample in x.chunks_exact_mut(sample_len.max(1)) {
            for (ch, values) in sample.chunks_exact_mut(plane.max(1)).enumerate() {
                let (m, s) = (self.mean[ch], self.std[ch]);
                for v in values {
                    *v = (*v - m) / s;
                }
            }
        }
    }
}

fn join(values: &[f32]) -> String {
    values
        .iter()
        .map(f32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Display for Normalization {
    /// `M1,M2,M3/S1,S2,S3`, each number written to round-trip exactly.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", join(&self.mean), join(&self.std))
    }
}

impl FromStr for Normalization {
    type Err = DataError;
    fn from_str(text: &str) -> Result<Self, DataError> {
        let err = |message: String| DataError::Setting {
            field: FIELD.into(),
            message,
        };
        let (m, s) = text.split_once('/').ok_or_else(|| {
            err(format!(
                "'{text}' is not auto, none or MEANS/STDS (e.g. 0.49,0.48,0.45/0.25,0.24,0.26)"
            ))
        })?;
        let numbers = |part: &str| -> Result<Vec<f32>, DataError> {
            part.split(',')
                .map(|t| {
                    t.trim()
                        .parse::<f32>()
                        .map_err(|_| err(format!("'{}' in '{text}' is not a number", t.trim())))
                })
                .collect()
        };
        Normalization::new(numbers(m)?, numbers(s)?).map_err(|m| err(format!("'{text}': {m}")))
    }
}

/// What a training run asks for.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum NormalizeSetting {
    /// The training split's per-channel statistics; a run that starts from
    /// another model's weights keeps that model's normalisation instead.
    #[default]
    Auto,
    /// No normalisation: the model sees the inputs as they are.
    Off,
    /// These statistics.
    Given(Normalization),
}

impl NormalizeSetting {
    /// The normalisation of a run on `train`, which never trains on the
    /// samples `held_out(i)` holds for (its validation images: `auto`
    /// measures the others); `start` is `Some(its own)` when the run
    /// starts from another model's weights (`Some(None)`: a model without
    /// one). `Given` values must have the data's channels.
    pub fn resolve(
        &self,
        train: &Dataset,
        held_out: impl Fn(usize) -> bool,
        start: Option<Option<&Normalization>>,
    ) -> Result<Option<Normalization>, DataError> {
        Ok(match (self, start) {
            (NormalizeSetting::Auto, Some(own)) => own.cloned(),
            (NormalizeSetting::Auto, None) => {
                Some(Normalization::of_samples(train, |i| !held_out(i)))
            }
            (NormalizeSetting::Off, _) => None,
            (NormalizeSetting::Given(n), _) => {
                let [c, h, w] = train.sample_shape();
                if n.channels() != c {
                    return Err(DataError::Setting {
                        field: FIELD.into(),
                        message: format!(
                            "{n} has {} channels, but the samples of {} are {c}x{h}x{w} ({c} channels)",
                            n.channels(),
                            train.source().display()
                        ),
                    });
                }
                Some(n.clone())
            }
        })
    }
}

impl fmt::Display for NormalizeSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NormalizeSetting::Auto => f.write_str("auto"),
            NormalizeSetting::Off => f.write_str("none"),
            NormalizeSetting::Given(n) => write!(f, "{n}"),
        }
    }
}

impl FromStr for NormalizeSetting {
    type Err = DataError;
    fn from_str(text: &str) -> Result<Self, DataError> {
        match text.trim() {
            "auto" => Ok(NormalizeSetting::Auto),
            "none" => Ok(NormalizeSetting::Off),
            other => Ok(NormalizeSetting::Given(other.parse()?)),
        }
    }
}

impl serde::Serialize for NormalizeSetting {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for NormalizeSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Split;

    /// Two RGB images of 2x2 pixels: channel c of image k holds
    /// `base[c] + k`, plus 0..3 across the pixels.
    fn rgb() -> Dataset {
        let base = [10u8, 100, 200];
        let mut bytes = Vec::new();
        for k in 0..2u8 {
            for b in base {
                bytes.extend((0..4u8).map(|p| b + k + p));
            }
        }
        Dataset::from_u8([3, 2, 2], bytes, Some(vec![0, 1]), Split::Train).unwrap()
    }

    #[test]
    fn measures_each_channel_of_rgb_data() {
        let d = rgb();
        let n = Normalization::of_dataset(&d);
        assert_eq!(n.channels(), 3);
        // Channel values base + {0,1,2,3} and base + {1,2,3,4}: mean base + 2,
        // population variance 1.5 (in pixel units), divided by 255.
        for (c, base) in [10f64, 100.0, 200.0].iter().enumerate() {
            let m = (base + 2.0) / 255.0;
            let s = 1.5f64.sqrt() / 255.0;
            assert!((f64::from(n.mean()[c]) - m).abs() < 1e-7, "{c}: {n}");
            assert!((f64::from(n.std()[c]) - s).abs() < 1e-7, "{c}: {n}");
        }
        // The same images as floats measure the same.
        let mut x = vec![0f32; 2 * 12];
        d.fill_inputs(&[0, 1], &mut x);
        let f = Dataset::from_f32([3, 2, 2], x.clone(), None, Split::Train).unwrap();
        let nf = Normalization::of_dataset(&f);
        for c in 0..3 {
            assert!((nf.mean()[c] - n.mean()[c]).abs() < 1e-6);
            assert!((nf.std()[c] - n.std()[c]).abs() < 1e-6);
        }
        // Applied, each channel has mean 0 and std 1.
        n.apply(12, &mut x);
        for c in 0..3 {
            let vals: Vec<f64> = (0..2)
                .flat_map(|k| x[k * 12 + c * 4..k * 12 + c * 4 + 4].to_vec())
                .map(f64::from)
                .collect();
            let m = vals.iter().sum::<f64>() / 8.0;
            let v = vals.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 8.0;
            assert!(
                m.abs() < 1e-5 && (v - 1.0).abs() < 1e-4,
                "channel {c}: {m} {v}"
            );
        }
        // A constant channel is centred, not divided by zero.
        let flat = Dataset::from_u8([1, 1, 3], vec![9; 6], None, Split::Train).unwrap();
        let n = Normalization::of_dataset(&flat);
        assert_eq!((n.mean()[0], n.std()[0]), (9.0 / 255.0, 1.0));
    }

    #[test]
    fn apply_is_per_channel_and_pure() {
        let n: Normalization = "1,2,3/2,4,8".parse().unwrap();
        let mut x: Vec<f32> = vec![
            3.0, 5.0, 6.0, 10.0, 11.0, 19.0, 3.0, 5.0, 6.0, 10.0, 11.0, 19.0,
        ];
        let again = x.clone();
        n.apply(6, &mut x);
        assert_eq!(x[..6], [1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        assert_eq!(x[..6], x[6..]);
        let mut y = again;
        n.apply(6, &mut y);
        assert_eq!(x, y, "same inputs, same outputs");
    }

    #[test]
    fn settings_parse_print_and_resolve() {
        for t in [
            "auto",
            "none",
            "0.5/0.25",
            "0.4914,0.4822,0.4465/0.247,0.2435,0.2616",
        ] {
            let s: NormalizeSetting = t.parse().unwrap();
            assert_eq!(s.to_string(), t);
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(serde_json::from_str::<NormalizeSetting>(&json).unwrap(), s);
        }
        for (t, needle) in [
            ("mean", "not auto, none or MEANS/STDS"),
            ("1,2/3", "2 means but 1 standard deviations"),
            ("1/0", "standard deviation 0"),
            ("0/1e-40", "below 1e-6"),
            ("0.5/1e-7", "below 1e-6"),
            ("x/1", "'x'"),
            ("inf/1", "mean inf"),
        ] {
            let e = t.parse::<NormalizeSetting>().unwrap_err().to_string();
            assert!(e.contains("normalize") && e.contains(needle), "{t}: {e}");
        }
        let d = rgb();
        let auto = NormalizeSetting::Auto;
        assert_eq!(
            auto.resolve(&d, |_| false, None).unwrap(),
            Some(Normalization::of_dataset(&d))
        );
        // Held-out samples are not measured: sample 1 alone is sample 0
        // plus one grey level in every pixel.
        let second = auto.resolve(&d, |i| i == 0, None).unwrap().unwrap();
        let first = auto.resolve(&d, |i| i == 1, None).unwrap().unwrap();
        for ch in 0..3 {
            let shift = second.mean()[ch] - first.mean()[ch];
            assert!((shift - 1.0 / 255.0).abs() < 1e-6, "{shift}");
            assert!((second.std()[ch] - first.std()[ch]).abs() < 1e-6);
        }
        let own: Normalization = "0/1".parse().unwrap();
        assert_eq!(
            auto.resolve(&d, |_| false, Some(Some(&own))).unwrap(),
            Some(own)
        );
        assert_eq!(auto.resolve(&d, |_| false, Some(None)).unwrap(), None);
        assert_eq!(
            NormalizeSetting::Off.resolve(&d, |_| false, None).unwrap(),
            None
        );
        let given: NormalizeSetting = "0.1,0.2,0.3/1,1,1".parse().unwrap();
        assert!(given.resolve(&d, |_| false, None).unwrap().is_some());
        let e = "0.5/0.2"
            .parse::<NormalizeSetting>()
            .unwrap()
            .resolve(&d, |_| false, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("1 channels") && e.contains("3x2x2"), "{e}");
        // Stored values are checked when read back.
        let bad = r#"{"mean":[0.5],"std":[-1.0]}"#;
        assert!(serde_json::from_str::<Normalization>(bad).is_err());
    }
}

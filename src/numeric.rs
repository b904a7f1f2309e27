//! Numerics shared by both phases: row-wise `log_softmax` at a temperature,
//! `logsumexp`, and `argmax` with one tie rule (the first maximum wins).
//!
//! The cache writer, the online teacher, the losses and evaluation all call
//! these, so a cached target, an online target, the cache's teacher accuracy
//! and eval's agreement are computed the same way.

/// The smallest temperature distill takes wherever one is given (`-T`, a
/// sweep's `temperatures`). Below it a teacher's logit gaps, divided by T,
/// outgrow what the encodings store (f16 holds gaps up to 65,504): a cache
/// built there keeps no information to re-temper from (read at T 1, its
/// targets come out uniform), and the losses lose the gradient in
/// rounding. No distillation recipe uses one.
pub const MIN_TEMPERATURE: f32 = 0.01;
/// The largest temperature distill takes.
pub const MAX_TEMPERATURE: f32 = 1000.0;

/// Checks a temperature given by a user: finite, in
/// [`MIN_TEMPERATURE`, `MAX_TEMPERATURE`]; the error says the range.
pub fn check_temperature(t: f32) -> Result<(), String> {
    if t.is_finite() && (MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
        return Ok(());
    }
    Err(format!("{t} must be {}", temperature_range()))
}

/// `v` as an error message shows it: plainly near 1, with an exponent far
/// from it (`1e-50`, not 52 digits).
pub fn display_number(v: f64) -> String {
    if v != 0.0 && v.is_finite() && !(1e-4..1e6).contains(&v.abs()) {
        format!("{v:e}")
    } else {
        v.to_string()
    }
}

/// A temperature read as an f64 (from a file or a flag), checked before it
/// becomes the f32 distill computes with: a positive value too small for an
/// f32 would otherwise turn into 0 and be reported as "0".
pub fn temperature_from_f64(t: f64) -> Result<f32, String> {
    if t.is_finite() && (f64::from(MIN_TEMPERATURE)..=f64::from(MAX_TEMPERATURE)).contains(&t) {
        return Ok(t as f32);
    }
    Err(format!(
        "{} must be {}",
        display_number(t),
        temperature_range()
    ))
}

/// The temperatures distill takes, in words, for error messages.
pub fn temperature_range() -> String {
    format!(
        "a number in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}] (below {MIN_TEMPERATURE} the \
         tempered logits outgrow what a cache stores)"
    )
}

/// An input these functions cannot compute on.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NumericError {
    /// A non-finite value (or one that overflows once divided by T).
    #[error("row {row}, class {class}: value is {value}, not finite")]
    NonFinite { row: u64, class: usize, value: f32 },
    /// Lengths, class counts or temperatures that break the contract.
    #[error("{what}: {message}")]
    Invalid { what: &'static str, message: String },
}

/// Row-wise, numerically stable `log_softmax(logits / temperature)`.
///
/// `logits` and `out` hold rows of `classes` values. Non-finite logits (or a
/// temperature so small that `logits / T` overflows) are reported with the
/// row and class; nothing is written past the failing row's start.
pub fn log_softmax_tempered(
    logits: &[f32],
    classes: usize,
    temperature: f32,
    out: &mut [f32],
) -> Result<(), NumericError> {
    if classes == 0 {
        return Err(NumericError::Invalid {
            what: "log_softmax_tempered",
            message: "classes must be at least 1".into(),
        });
    }
    if !(temperature.is_finite() && temperature > 0.0) {
        return Err(NumericError::Invalid {
            what: "temperature",
            message: format!("{temperature} is not a positive finite number"),
        });
    }
    if !logits.len().is_multiple_of(classes) || out.len() != logits.len() {
        return Err(NumericError::Invalid {
            what: "log_softmax_tempered",
            message: format!(
                "logits hold {} values and out {} values; both must be the same whole number of rows of {classes} classes",
                logits.len(),
                out.len()
            ),
        });
    }
    let inv_t = 1.0 / temperature;
    for (row, (x, o)) in logits
        .chunks_exact(classes)
        .zip(out.chunks_exact_mut(classes))
        .enumerate()
    {
        let mut max = f32::NEG_INFINITY;
        for (c, &v) in x.iter().enumerate() {
            let s = v * inv_t;
            if !s.is_finite() {
                return Err(NumericError::NonFinite {
                    row: row as u64,
                    class: c,
                    value: v,
                });
            }
            max = max.max(s);
        }
        let mut sum = 0.0f32;
        for (o, &v) in o.iter_mut().zip(x) {
            let s = v * inv_t - max;
            *o = s;
            sum += s.exp();
        }
        let lse = sum.ln();
        for o in o.iter_mut() {
            *o -= lse;
        }
    }
    Ok(())
}

/// `log(sum(exp(x)))`, stable; `-inf` for no values (or all `-inf`).
pub fn logsumexp(x: impl Iterator<Item = f32> + Clone) -> f32 {
    let max = x.clone().fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        return max;
    }
    let sum: f32 = x.map(|v| (v - max).exp()).sum();
    max + sum.ln()
}

/// Index of the largest value; the first one on ties (0 for an empty row).
pub fn argmax(x: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best
}

/// [`argmax`] of each row of `classes` values.
pub fn argmax_rows(values: &[f32], classes: usize) -> Vec<u32> {
    values
        .chunks_exact(classes.max(1))
        .map(|row| argmax(row) as u32)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_matches_reference() {
        // Reference (python): x = [0.5, 1, 1.5] (= [1, 2, 3] / T, T = 2)
        //   l = max(x) + math.log(sum(math.exp(v - max(x)) for v in x)); [v - l for v in x]
        // -> [-1.6802696706417346, -1.1802696706417346, -0.6802696706417346]
        let mut out = [0.0f32; 3];
        log_softmax_tempered(&[1.0, 2.0, 3.0], 3, 2.0, &mut out).unwrap();
        let want = [-1.680_269_7f32, -1.180_269_7, -0.680_269_7];
        for (a, b) in out.iter().zip(want) {
            assert!((a - b).abs() < 1e-5, "{out:?}");
        }
    }

    #[test]
    fn log_softmax_reports_non_finite_row() {
        let mut out = [0.0f32; 6];
        let err = log_softmax_tempered(&[0.0, 1.0, 2.0, 0.0, f32::NAN, 1.0], 3, 1.0, &mut out)
            .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("row 1") && msg.contains("class 1"), "{msg}");
        let err = log_softmax_tempered(&[1e30, 0.0, 0.0], 3, 1e-10, &mut out[..3]).unwrap_err();
        assert!(
            matches!(
                err,
                NumericError::NonFinite {
                    row: 0,
                    class: 0,
                    ..
                }
            ),
            "{err}"
        );
        assert!(log_softmax_tempered(&[1.0], 1, 0.0, &mut out[..1]).is_err());
    }

    #[test]
    fn log_softmax_stable_for_large_logits() {
        let mut out = [0.0f32; 2];
        log_softmax_tempered(&[1e30, 1e30], 2, 1.0, &mut out).unwrap();
        assert!((out[0] + std::f32::consts::LN_2).abs() < 1e-6);
    }
}

#[cfg(test)]
mod argmax_tests {
    use super::*;

    #[test]
    fn first_maximum_wins_ties() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, 2.0]), 1);
        assert_eq!(argmax(&[]), 0);
        assert_eq!(argmax_rows(&[0.0, 0.0, 1.0, 2.0, 2.0, 0.0], 3), vec![2, 0]);
        assert!((logsumexp([0.0f32, 0.0].into_iter()) - std::f32::consts::LN_2).abs() < 1e-6);
        assert_eq!(logsumexp(std::iter::empty::<f32>()), f32::NEG_INFINITY);
    }
}

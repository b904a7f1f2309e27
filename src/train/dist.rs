//! DIST, distillation by correlation (Huang et al., NeurIPS 2022,
//! "Knowledge distillation from a stronger teacher"): the student matches
//! the *relations* in the teacher's probabilities instead of their values.
//!
//! With the student's probabilities `q = softmax(s / T)` and the teacher's
//! `p` at the same `T`, both `(batch, classes)`:
//! - the inter-class term is `1 - mean_i pearson(q_i, p_i)`, the Pearson
//!   correlation of each image's row (how the classes rank for it);
//! - the intra-class term is `1 - mean_j pearson(q_:j, p_:j)`, the same per
//!   class across the batch (which images a class fits best);
//! - the relation loss is `T^2 * (inter + intra)`.
//!
//! `pearson(a, b) = <a - mean a, b - mean b> / (|a - mean a| |b - mean b| + 1e-8)`,
//! the paper's code. A correlation ignores a row's (or a column's) scale
//! and offset, so a student that cannot be as confident as a strong teacher
//! is not pushed to be: the paper's answer to "a stronger teacher teaches a
//! small student less". The intra-class term reads the whole batch, so the
//! loss of a batch is not the mean of its images' losses.
//!
//! The student's side runs on dfdx tensors (any device); the teacher's side
//! is a batch constant, centred and measured on the host.

use dfdx::prelude::*;

use crate::model::ops::Matrix;
use crate::model::Backend;

/// The correlation's guard against a zero norm: added to the product of
/// the two norms, as in the paper's code.
pub const PEARSON_EPSILON: f32 = 1e-8;

/// Added under the square root of the student's norms, so that a column
/// without spread (one image, or a class every image scores alike) has a
/// finite gradient instead of `0 / 0`.
const NORM_FLOOR: f32 = 1e-12;

/// The teacher's side of one batch: its probabilities centred per row and
/// per column, with the norms of the centred rows and columns.
struct TeacherRelations {
    rows_centred: Vec<f32>,
    row_norms: Vec<f32>,
    cols_centred: Vec<f32>,
    col_norms: Vec<f32>,
}

impl TeacherRelations {
    fn new(probs: &[f32], batch: usize, classes: usize) -> Self {
        let mut rows_centred = probs.to_vec();
        let mut row_norms = Vec::with_capacity(batch);
        for row in rows_centred.chunks_exact_mut(classes) {
            let mean = row.iter().map(|&v| v as f64).sum::<f64>() / classes as f64;
            row.iter_mut().for_each(|v| *v = (*v as f64 - mean) as f32);
            row_norms.push(row.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt() as f32);
        }
        let mut cols_centred = probs.to_vec();
        let mut col_norms = Vec::with_capacity(classes);
        for j in 0..classes {
            let mean = (0..batch)
                .map(|i| probs[i * classes + j] as f64)
                .sum::<f64>()
                / batch as f64;
            let mut sq = 0f64;
            for i in 0..batch {
                let c = probs[i * classes + j] as f64 - mean;
                cols_centred[i * classes + j] = c as f32;
                sq += c * c;
            }
            col_norms.push(sq.sqrt() as f32);
        }
        TeacherRelations {
            rows_centred,
            row_norms,
            cols_centred,
            col_norms,
        }
    }
}

/// `T^2 * (inter + intra)` for student logits `(batch, classes)` against the
/// teacher's probabilities at `temperature` (`batch * classes`, row-major).
pub fn relation_loss<D: Backend, T: Tape<f32, D>>(
    logits: Matrix<D, T>,
    teacher_probs: &[f32],
    temperature: f32,
) -> Tensor<Rank0, f32, D, T> {
    let dev = logits.device().clone();
    let (batch, classes) = *logits.shape();
    let shape = (batch, classes);
    let t = TeacherRelations::new(teacher_probs, batch, classes);
    let q = (logits * (1.0 / temperature)).softmax::<Axis<1>>();

    // Inter-class: a softmax row sums to 1, so its mean is 1 / classes.
    let rows = q.with_empty_tape() - (1.0 / classes as f32);
    let row_dot =
        (rows.with_empty_tape() * dev.tensor_from_vec(t.rows_centred, shape)).sum::<_, Axis<1>>();
    let row_norm = (rows.square().sum::<_, Axis<1>>() + NORM_FLOOR).sqrt();
    let row_corr =
        row_dot / (row_norm * dev.tensor_from_vec(t.row_norms, (batch,)) + PEARSON_EPSILON);
    let inter = row_corr.mean::<Rank0, _>().negate() + 1.0;

    // Intra-class: each column centred on its batch mean.
    let col_mean = q
        .with_empty_tape()
        .mean::<_, Axis<0>>()
        .broadcast_like::<_, Axis<0>>(&shape);
    let cols = q - col_mean;
    let col_dot =
        (cols.with_empty_tape() * dev.tensor_from_vec(t.cols_centred, shape)).sum::<_, Axis<0>>();
    let col_norm = (cols.square().sum::<_, Axis<0>>() + NORM_FLOOR).sqrt();
    let col_corr =
        col_dot / (col_norm * dev.tensor_from_vec(t.col_norms, (classes,)) + PEARSON_EPSILON);
    let intra = col_corr.mean::<Rank0, _>().negate() + 1.0;

    (inter + intra) * (temperature * temperature)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The relation loss computed directly in f64 from its definition.
    fn reference(s: &[f64], p: &[f64], batch: usize, classes: usize, t: f64) -> f64 {
        let mut q = vec![0f64; s.len()];
        for i in 0..batch {
            let row = &s[i * classes..(i + 1) * classes];
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = row.iter().map(|v| ((v - m) / t).exp()).sum();
            for j in 0..classes {
                q[i * classes + j] = ((row[j] - m) / t).exp() / z;
            }
        }
        let pearson = |a: &[f64], b: &[f64]| {
            let n = a.len() as f64;
            let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
            let dot: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
            let na = a.iter().map(|x| (x - ma).powi(2)).sum::<f64>().sqrt();
            let nb = b.iter().map(|y| (y - mb).powi(2)).sum::<f64>().sqrt();
            dot / (na * nb + 1e-8)
        };
        let inter = 1.0
            - (0..batch)
                .map(|i| {
                    let r = i * classes..(i + 1) * classes;
                    pearson(&q[r.clone()], &p[r])
                })
                .sum::<f64>()
                / batch as f64;
        let col = |v: &[f64], j: usize| (0..batch).map(|i| v[i * classes + j]).collect::<Vec<_>>();
        let intra = 1.0
            - (0..classes)
                .map(|j| pearson(&col(&q, j), &col(p, j)))
                .sum::<f64>()
                / classes as f64;
        t * t * (inter + intra)
    }

    fn teacher(batch: usize, classes: usize) -> Vec<f32> {
        let mut p = Vec::new();
        for i in 0..batch {
            let z: Vec<f64> = (0..classes)
                .map(|j| ((i * 7 + j * 3) % 5) as f64 * 0.8 - 1.0)
                .collect();
            let sum: f64 = z.iter().map(|v| v.exp()).sum();
            p.extend(z.iter().map(|v| (v.exp() / sum) as f32));
        }
        p
    }

    #[test]
    fn matches_the_definition_and_its_gradient() {
        let dev = Cpu::seed_from_u64(0);
        let (batch, classes, t) = (4, 5, 2.0f32);
        let s: Vec<f32> = (0..batch * classes)
            .map(|k| ((k * 11) % 7) as f32 * 0.6 - 1.5)
            .collect();
        let p = teacher(batch, classes);
        let s64: Vec<f64> = s.iter().map(|&v| v as f64).collect();
        let p64: Vec<f64> = p.iter().map(|&v| v as f64).collect();
        let logits = dev.tensor_from_vec(s.clone(), (batch, classes));
        let loss = relation_loss(logits.leaky_trace(), &p, t);
        let want = reference(&s64, &p64, batch, classes, t as f64);
        let got = loss.array();
        assert!((got as f64 - want).abs() < 1e-5, "{got} vs {want}");
        let g = loss.backward().get(&logits).as_vec();
        for k in 0..s.len() {
            let h = 1e-4;
            let (mut up, mut down) = (s64.clone(), s64.clone());
            up[k] += h;
            down[k] -= h;
            let fd = (reference(&up, &p64, batch, classes, t as f64)
                - reference(&down, &p64, batch, classes, t as f64))
                / (2.0 * h);
            assert!(
                (g[k] as f64 - fd).abs() < 1e-3 * (1.0 + fd.abs()),
                "logit {k}: {} vs finite difference {fd}",
                g[k]
            );
        }
    }

    #[test]
    fn a_student_with_the_teachers_relations_pays_nothing() {
        // Student logits that are the teacher's log-probabilities give
        // q = p at T 1: every correlation is 1.
        let dev = Cpu::seed_from_u64(0);
        let (batch, classes) = (3, 4);
        let p = teacher(batch, classes);
        let logits: Vec<f32> = p.iter().map(|v| v.ln()).collect();
        let loss = relation_loss(dev.tensor_from_vec(logits, (batch, classes)), &p, 1.0);
        assert!(loss.array().abs() < 1e-5, "{}", loss.array());
        // Correlation ignores scale: a sharper student (logits doubled)
        // keeps the ranking and pays far less than a shuffled one.
        let sharper: Vec<f32> = p.iter().map(|v| 2.0 * v.ln()).collect();
        let shuffled: Vec<f32> = p
            .chunks(classes)
            .flat_map(|r| r.iter().rev().map(|v| v.ln()).collect::<Vec<_>>())
            .collect();
        let a = relation_loss(dev.tensor_from_vec(sharper, (batch, classes)), &p, 1.0).array();
        let b = relation_loss(dev.tensor_from_vec(shuffled, (batch, classes)), &p, 1.0).array();
        assert!(a < 0.2 && b > 1.0, "sharper {a}, shuffled {b}");
    }

    #[test]
    fn one_image_batches_stay_finite() {
        // One image: every column has no spread, its correlation is 0.
        let dev = Cpu::seed_from_u64(0);
        let p = teacher(1, 3);
        let logits = dev.tensor_from_vec(vec![0.5f32, -1.0, 2.0], (1, 3));
        let loss = relation_loss(logits.leaky_trace(), &p, 2.0);
        assert!(loss.array().is_finite());
        let g = loss.backward().get(&logits).as_vec();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
    }
}

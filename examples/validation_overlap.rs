//! How much a validation split the teacher trained on flatters a distilled
//! student: each run's accuracy on its own validation split, apart on the
//! images its teacher trained on and on those the teacher held out.
//!
//! ```sh
//! cargo run --release --example validation_overlap -- DATA TEACHER RUN...
//! ```
//!
//! `DATA` is the dataset directory the runs trained on, `TEACHER` the
//! teacher's model directory (its card records the split it held out), and
//! each `RUN` a model directory written by `distill train` (its card records
//! its own split). Prints one tab-separated line per run. The figures of
//! BENCHMARKS.md, "Validation images the teacher trained on", came from it.

use std::error::Error;
use std::path::Path;

use distill::data::{Dataset, Split};
use distill::model::dir::ModelDir;
use distill::train::card::ModelCard;
use distill::train::eval::evaluate_samples;
use distill::train::validation::held_out_by_model;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [data, teacher, runs @ ..] = &args[..] else {
        return Err("usage: validation_overlap DATA TEACHER RUN...".into());
    };
    let data = Dataset::open(Path::new(data), Split::Train)?;
    let n = data.len();
    let labels = data.labels().ok_or("the training split has no labels")?;
    let teacher_held = held_out_by_model(Path::new(teacher), &data.fingerprint().0, n)?;
    println!(
        "run\tvalidation %\tteacher held out: right/images = %\tteacher trained: right/images = %"
    );
    for run in runs {
        let dir = ModelDir::new(run);
        let card = ModelCard::load(&dir.card())?;
        let cfg = card
            .config
            .ok_or(format!("{run}: the card records no training run"))?;
        let split = cfg.validation_split(n)?;
        if split.is_empty() {
            return Err(format!("{run} held nothing out").into());
        }
        let net = dir.load(dfdx::prelude::Cpu::default())?;
        let result = evaluate_samples(&net, &data, split.indices(), 500)?;
        // [held out by the teacher, trained on by it]: (right, images)
        let mut parts = [(0usize, 0usize); 2];
        for (&i, &p) in split.indices().iter().zip(&result.predictions) {
            let part = &mut parts[usize::from(!teacher_held.holds_out(i))];
            part.1 += 1;
            part.0 += usize::from(p == labels[i]);
        }
        let pct = |(r, m): (usize, usize)| 100.0 * r as f64 / m.max(1) as f64;
        println!(
            "{run}\t{:.2}\t{}/{} = {:.2}\t{}/{} = {:.2}",
            100.0 * result.accuracy.unwrap_or(0.0),
            parts[0].0,
            parts[0].1,
            pct(parts[0]),
            parts[1].0,
            parts[1].1,
            pct(parts[1]),
        );
    }
    Ok(())
}

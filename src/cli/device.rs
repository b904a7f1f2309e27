//! The one place that opens a compute device and runs a command on it.

use clap::Args;
use distill::error::{Error, Result};
use distill::model::Backend;

#[derive(Args, Clone)]
pub struct DeviceArgs {
    /// Compute device: cpu, or cuda (needs a binary built with --features cuda).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub(crate) enum Dispatch {
    Train(Box<super::train::TrainArgs>),
    Eval(super::eval::EvalArgs),
    CacheBuild(super::cache::BuildArgs),
    Sweep(Box<super::sweep::SweepJob>),
    CheckDevice,
}

/// Runs a command on the device named by `--device`.
pub(crate) fn with_device(name: &str, what: Dispatch) -> Result<()> {
    match name {
        "cpu" => match what {
            // A sweep trains on job threads of its own; its command must not
            // hold one of the pool's threads while they run.
            Dispatch::Sweep(_) => dispatch(dfdx::prelude::Cpu::default(), what),
            // Any other command runs on one of rayon's threads when the pool
            // has two or more, so the thread that runs the serial parts of a
            // step is one of the pool's: each parallel region starts on it and
            // hands the other half to a worker, where from outside the pool
            // every region would wake the workers and block the caller until
            // they are done. With one thread that thread would be the whole
            // pool, and a command that waits on pool work from another thread
            // (the training loader's cache decoding, a cache build's
            // compression) would wait for ever.
            _ if rayon::current_num_threads() >= 2 => {
                rayon::scope(move |_| dispatch(dfdx::prelude::Cpu::default(), what))
            }
            _ => dispatch(dfdx::prelude::Cpu::default(), what),
        },
        "cuda" => {
            #[cfg(feature = "cuda")]
            {
                let dev = dfdx::prelude::Cuda::try_build(0, 0)
                    .map_err(|e| Error::Device(format!("cannot open cuda:0: {e:?}")))?;
                dispatch(dev, what)
            }
            #[cfg(not(feature = "cuda"))]
            {
                Err(Error::Config {
                    field: "--device".into(),
                    message:
                        "cuda: this binary was built without the cuda feature (cargo's --features \
                              cuda); rebuild with make build-cuda (see README.md, \"GPU\")"
                            .into(),
                })
            }
        }
        other => Err(Error::Config {
            field: "--device".into(),
            message: format!("'{other}' is not one of cpu, cuda"),
        }),
    }
}

fn dispatch<D: Backend>(dev: D, what: Dispatch) -> Result<()> {
    match what {
        Dispatch::Train(args) => super::train::train(dev, *args),
        Dispatch::Eval(args) => super::eval::eval(dev, args),
        Dispatch::CacheBuild(args) => super::cache::build(dev, args),
        Dispatch::CheckDevice => check_device(&dev),
        Dispatch::Sweep(job) => super::sweep::run_job(dev, *job),
    }
}

/// Prints each op check against the CPU; an error when any fails.
fn check_device<D: Backend>(dev: &D) -> Result<()> {
    let checks = distill::train::device_check::check_device(dev)?;
    println!("device check: {} against cpu", dev.describe());
    for c in &checks {
        println!(
            "{:<4} {:<40} max rel diff {:.2e} (tolerance {:.0e})",
            if c.passed() { "ok" } else { "FAIL" },
            c.what,
            c.max_rel_diff,
            c.tolerance
        );
    }
    let failed = checks.iter().filter(|c| !c.passed()).count();
    println!(
        "device check: {} of {} agree with the cpu",
        checks.len() - failed,
        checks.len()
    );
    if failed > 0 {
        return Err(Error::Device(format!(
            "{failed} of {} checks differ from the cpu",
            checks.len()
        )));
    }
    Ok(())
}

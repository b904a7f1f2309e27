//! The `distill` command line: parses arguments, validates them into the
//! library's typed configs, and calls the library. One file per verb;
//! `device.rs` is the one place that opens a compute device.

use std::process::ExitCode;

use std::path::Path;

use clap::{Parser, Subcommand};
use distill::cache::CacheError;
use distill::data::DataError;
use distill::error::Result;
use distill::model::{Backend, ModelDir, Network};

mod cache;
mod data;
mod device;
mod eval;
mod model;
mod prune;
mod sweep;
mod train;
mod views;

/// Offline knowledge distillation: run the teacher once, cache its soft
/// labels, train many students from the cache.
#[derive(Parser)]
#[command(name = "distill", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model on hard labels, or distil it from a teacher cache.
    Train(Box<train::TrainArgs>),
    /// Evaluate one or more models on a dataset split.
    Eval(eval::EvalArgs),
    /// Model specs: `distill model info SPEC`.
    Model {
        #[command(subcommand)]
        command: model::ModelCommand,
    },
    /// Datasets: `distill data info --data DIR`, `distill data configure` (how a directory is read).
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// The teacher-output cache: build, import, inspect, verify, merge (parts), ensemble (of caches).
    Cache {
        #[command(subcommand)]
        command: cache::CacheCommand,
    },
    /// Train many students from one cache (every T and alpha, with
    /// baselines) and write a report comparing them.
    Sweep(Box<sweep::SweepArgs>),
    /// Prune a model: l1-unstructured (masks) or l1-structured (a smaller spec).
    Prune(prune::PruneArgs),
    /// Augmented views for an external teacher: `distill views export`.
    Views {
        #[command(subcommand)]
        command: views::ViewsCommand,
    },
    /// Compare a compute device's ops and gradients with the CPU's (exit 2
    /// on a mismatch); `make gpu-check` runs it with `--device cuda`.
    CheckDevice(device::DeviceArgs),
}

/// Parses the command line, runs it, and maps an error to exit code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    use device::{with_device, Dispatch};
    match cli.command {
        Command::Model { command } => {
            model::run(command).map_err(|e| name_flags(e, model::RENAMES))
        }
        Command::Data { command } => data::run(command).map_err(|e| name_flags(e, data::RENAMES)),
        Command::Train(args) => with_device(&args.device.device.clone(), Dispatch::Train(args))
            .map_err(|e| name_flags(e, train::RENAMES)),
        Command::Eval(args) => with_device(&args.device.device.clone(), Dispatch::Eval(args))
            .map_err(|e| name_flags(e, eval::RENAMES)),
        Command::Cache { command } => {
            cache::run(command).map_err(|e| name_flags(e, cache::RENAMES))
        }
        Command::Sweep(args) => sweep::run(*args).map_err(|e| name_flags(e, sweep::RENAMES)),
        Command::Prune(args) => prune::run(args).map_err(|e| name_flags(e, prune::RENAMES)),
        Command::Views { command } => {
            views::run(command).map_err(|e| name_flags(e, views::RENAMES))
        }
        Command::CheckDevice(args) => with_device(&args.device, Dispatch::CheckDevice),
    }
}

/// `--split`: train or test (clap reports a bad value naming the flag).
pub fn parse_split(s: &str) -> std::result::Result<distill::data::Split, String> {
    s.parse()
        .map_err(|_| format!("'{s}' is not one of train, test"))
}

/// Parses a temperature as a number that f32 holds: a positive value too
/// small for it would otherwise become 0 and be refused as "0".
pub fn parse_temperature(s: &str) -> std::result::Result<f32, String> {
    let v: f64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    let t = v as f32;
    if v > 0.0 && v.is_finite() && v < distill::numeric::MIN_TEMPERATURE as f64 {
        // Said here, with the number as typed: as an f32 it may print as 0.
        return Err(format!(
            "{s} is too small for a temperature: T must be {}",
            distill::numeric::temperature_range()
        ));
    }
    Ok(t)
}

/// The command line as typed, recorded in model cards.
pub fn command_line() -> String {
    std::env::args().collect::<Vec<_>>().join(" ")
}

/// Loads a model directory (or a .safetensors file).
pub fn load_model<D: Backend>(path: &Path, dev: D) -> Result<Network<D>> {
    ModelDir::new(path).load(dev)
}

/// Renames the config field in a library error to the flag that sets it,
/// and the fields a message names in backticks likewise.
///
/// Library errors name the typed config's fields (`loss.alpha`,
/// `batch_size`); a command-line user wants the flag. By convention a field's
/// last path segment is its flag (`loss.alpha` -> `--alpha`, `weight_decay`
/// -> `--weight-decay`); `renames` lists the fields whose flag is spelled
/// otherwise, as `(field, flag)`. A message that points at another field to
/// change writes its name in backticks (`use \`loss.alpha\` 0`), which
/// reads as the flag here (`use --alpha 0`).
pub fn name_flags(e: distill::Error, renames: &[(&str, &str)]) -> distill::Error {
    // The cache's settings among the names its input errors give (others
    // name files or calls, not flags).
    const CACHE_SETTINGS: &[&str] = &[
        "encoding",
        "temperature",
        "zstd_level",
        "batch_size",
        "window_blocks",
        "records_per_block",
        "out",
        "part",
    ];
    let flag_of = |field: &str| match renames.iter().find(|(f, _)| *f == field) {
        Some((_, flag)) => flag.to_string(),
        None if field.starts_with('-') => field.to_string(),
        None => {
            let last = field.rsplit('.').next().unwrap_or(field);
            format!("--{}", last.replace('_', "-"))
        }
    };
    match e {
        distill::Error::Config { field, message }
        | distill::Error::Data(DataError::Setting { field, message }) => distill::Error::Config {
            field: flag_of(&field),
            message: flags_in(&message, flag_of),
        },
        distill::Error::Training { context, message } => distill::Error::Training {
            context,
            message: flags_in(&message, flag_of),
        },
        distill::Error::Model { path, message } => distill::Error::Model {
            path,
            message: flags_in(&message, flag_of),
        },
        distill::Error::Cache(CacheError::InvalidInput { what, message })
            if CACHE_SETTINGS.contains(&what.as_str()) =>
        {
            distill::Error::Config {
                field: flag_of(&what),
                message: flags_in(&message, flag_of),
            }
        }
        other => other,
    }
}

/// `message` with each backticked field name replaced by its flag.
fn flags_in(message: &str, flag_of: impl Fn(&str) -> String) -> String {
    let is_field = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
    };
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(i) = rest.find('`') {
        let after = &rest[i + 1..];
        match after.find('`') {
            Some(j) if is_field(&after[..j]) => {
                out.push_str(&rest[..i]);
                out.push_str(&flag_of(&after[..j]));
                rest = &after[j + 1..];
            }
            _ => {
                out.push_str(&rest[..=i]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::name_flags;

    #[test]
    fn backticked_fields_in_messages_read_as_flags() {
        let message = |m: &str| {
            let e = distill::Error::Config {
                field: "loss.alpha".into(),
                message: m.into(),
            };
            name_flags(e, super::train::RENAMES).to_string()
        };
        assert_eq!(
            message("use `loss.alpha` 0 or `loss.kind` pseudo"),
            "invalid value for --alpha: use --alpha 0 or --loss pseudo"
        );
        assert!(message("a teacher run on every batch (`online_teacher`)")
            .ends_with("a teacher run on every batch (--online-teacher)"));
        // Code that is not a field name, and a lone backtick, stay as they are.
        assert!(message("run `distill cache build` or ` here")
            .ends_with("run `distill cache build` or ` here"));
        // Training errors too.
        let e = distill::Error::Training {
            context: "epoch 3".into(),
            message: "lower `optimizer.lr`".into(),
        };
        assert!(name_flags(e, &[]).to_string().ends_with("lower --lr"));
    }

    #[test]
    fn fields_become_flags() {
        let e = |field: &str| distill::Error::Config {
            field: field.into(),
            message: "m".into(),
        };
        let renames = [("batch_size", "--batch")];
        assert_eq!(
            name_flags(e("loss.alpha"), &renames).to_string(),
            "invalid value for --alpha: m"
        );
        assert_eq!(
            name_flags(e("optimizer.weight_decay"), &renames).to_string(),
            "invalid value for --weight-decay: m"
        );
        assert_eq!(
            name_flags(e("batch_size"), &renames).to_string(),
            "invalid value for --batch: m"
        );
    }
}

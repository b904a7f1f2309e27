//! A model directory's layout: the names of its files. The names of the
//! directories a run keeps inside it live with the code that writes them:
//! `epoch-NNN/` in `train::fit::snapshot_dir`, `best/` and its `.best.*`
//! transients in `train::best`, `.replay-epoch-NNN/` in `sweep::replay`.
//!
//! `distill train`, `distill prune` and `distill sweep` write a directory per
//! model:
//!
//! | file | what |
//! |---|---|
//! | `model.safetensors` | the weights, PyTorch `state_dict` names and layouts |
//! | `mask.safetensors` | pruning masks (1 keeps, 0 prunes), when the model has them |
//! | `model.json` | the model card: spec, settings, accuracy, timings |
//! | `model.py` | the PyTorch module that loads the weights (see [`super::pytorch`]) |
//! | `metrics.jsonl` | one line of metrics per epoch |
//! | `curves.png` | training curves |
//! | `checkpoint.safetensors` | the state a killed run resumes from |
//! | `prune.json` | what `distill prune` did |
//! | `.train.lock` | held (flock) while a training run writes the directory; empty, and left in place |
//! | `epoch-NNN/` | a model directory of its own: the weights after epoch NNN (`train --snapshot-epochs`) |
//! | `best/` | a model directory of its own: the weights after the best validation epoch (`train --keep-best`) |
//! | `previous/` | the earlier model a rerun set aside until it has written its own (`train`) |
//!
//! Anywhere a model is read, a path may also name a `.safetensors` file
//! directly; the other files are then looked up beside it.

use std::path::{Path, PathBuf};

use super::network::Network;
use super::ops::Backend;
use crate::error::{Error, Result};

/// The weights file's name inside a model directory.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// The masks file's name inside a model directory.
pub const MASK_FILE: &str = "mask.safetensors";

/// A model directory (which need not exist yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelDir {
    dir: PathBuf,
    weights: PathBuf,
}

impl ModelDir {
    /// A model directory, or the directory of a weights file given directly.
    pub fn new(path: impl AsRef<Path>) -> ModelDir {
        let path = path.as_ref();
        if path.extension().is_some_and(|e| e == "safetensors") && !path.is_dir() {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."))
                .to_path_buf();
            ModelDir {
                dir,
                weights: path.to_path_buf(),
            }
        } else {
            ModelDir {
                dir: path.to_path_buf(),
                weights: path.join(WEIGHTS_FILE),
            }
        }
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The weights file.
    pub fn weights(&self) -> &Path {
        &self.weights
    }

    /// The pruning masks file.
    pub fn masks(&self) -> PathBuf {
        self.dir.join(MASK_FILE)
    }

    /// The model card.
    pub fn card(&self) -> PathBuf {
        self.dir.join("model.json")
    }

    /// The PyTorch module definition written beside the weights.
    pub fn torch_module(&self) -> PathBuf {
        self.dir.join("model.py")
    }

    /// The per-epoch metrics.
    pub fn metrics(&self) -> PathBuf {
        self.dir.join("metrics.jsonl")
    }

    /// The training-curves plot.
    pub fn curves(&self) -> PathBuf {
        self.dir.join("curves.png")
    }

    /// The checkpoint a killed run resumes from.
    pub fn checkpoint(&self) -> PathBuf {
        self.dir.join("checkpoint.safetensors")
    }

    /// The lock a training run holds while it writes here.
    pub fn lock(&self) -> PathBuf {
        self.dir.join(".train.lock")
    }

    /// Where a training run keeps the model it replaces until it has
    /// written its own (`train::outdir`).
    pub fn previous(&self) -> PathBuf {
        self.dir.join("previous")
    }

    /// The model of the run's best validation epoch (`train --keep-best`,
    /// [`crate::train::best`]), a model directory of its own.
    pub fn best(&self) -> PathBuf {
        self.dir.join("best")
    }

    /// What `distill prune` did to make this model.
    pub fn prune_report(&self) -> PathBuf {
        self.dir.join("prune.json")
    }

    /// Whether finished weights are there.
    pub fn has_weights(&self) -> bool {
        self.weights.is_file()
    }

    /// Loads the network from the weights file (its spec is inside it).
    /// Where the directory's card records the weights' fingerprint (a
    /// trained model's `model.json` beside its `model.safetensors`), the
    /// loaded weights must have it: damaged weights, or weights replaced
    /// without their card, are refused rather than used as the card says.
    pub fn load<D: Backend>(&self, device: D) -> Result<Network<D>> {
        let net = super::io::load_weights(&self.weights, None, device)?;
        self.check_fingerprint(&net)?;
        Ok(net)
    }

    /// Checks a network read from this directory's weights against the
    /// fingerprint its card records, if it records one ([`Self::load`]).
    pub fn check_fingerprint<D: Backend>(&self, net: &Network<D>) -> Result<()> {
        if let Some(recorded) = self.recorded_fingerprint()? {
            let now = net.fingerprint();
            if now != recorded {
                return Err(Error::Model {
                    path: self.weights.clone(),
                    message: format!(
                        "does not match the weights fingerprint in {} ({recorded} there, {now} \
                         here): the weights are damaged, or were replaced without their card; \
                         restore them, or remove the card if these weights are meant",
                        self.card().display()
                    ),
                });
            }
        }
        Ok(())
    }

    /// The weights fingerprint the card records, for the directory's own
    /// weights file only; `None` without a card or the field (cards before
    /// the field). A card that cannot be read, or whose field is not a
    /// string, is an error: it must not switch the check off.
    fn recorded_fingerprint(&self) -> Result<Option<String>> {
        if self.weights != self.dir.join(WEIGHTS_FILE) {
            return Ok(None);
        }
        let card_path = self.card();
        let text = match std::fs::read_to_string(&card_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&card_path, e)),
        };
        let damaged = |why: String| Error::Model {
            path: card_path.clone(),
            message: format!(
                "is damaged ({why}), so the weights beside it cannot be checked against it; \
                 restore it, or remove it if these weights are meant"
            ),
        };
        let card: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| damaged(format!("not JSON: {e}")))?;
        let Some(fields) = card.as_object() else {
            return Err(damaged("not a JSON object".into()));
        };
        match fields.get("weights_fingerprint") {
            None => Ok(None),
            Some(serde_json::Value::String(f)) => Ok(Some(f.clone())),
            Some(other) => Err(damaged(format!(
                "weights_fingerprint is {other}, not a string"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_or_a_weights_file() {
        let d = ModelDir::new("runs/a");
        assert_eq!(d.weights(), Path::new("runs/a/model.safetensors"));
        assert_eq!(d.masks(), Path::new("runs/a/mask.safetensors"));
        assert_eq!(d.card(), Path::new("runs/a/model.json"));
        let f = ModelDir::new("runs/b/pruned.safetensors");
        assert_eq!(f.path(), Path::new("runs/b"));
        assert_eq!(f.weights(), Path::new("runs/b/pruned.safetensors"));
        assert_eq!(f.masks(), Path::new("runs/b/mask.safetensors"));
        let bare = ModelDir::new("w.safetensors");
        assert_eq!(bare.path(), Path::new("."));
    }

    #[test]
    fn weights_that_do_not_match_their_card_are_refused() {
        use crate::model::io::save_weights;
        use crate::model::ModelSpec;
        use dfdx::prelude::Cpu;
        let tmp = tempfile::tempdir().unwrap();
        let dir = ModelDir::new(tmp.path());
        let spec = ModelSpec::parse("mlp:4-3-2").unwrap();
        let net = Network::new(spec.clone(), Cpu::default(), 0);
        save_weights(&net, dir.weights()).unwrap();
        let card = |fp: &str| {
            let text = format!("{{\"spec\": \"mlp:4-3-2\", \"weights_fingerprint\": \"{fp}\"}}");
            std::fs::write(dir.card(), text).unwrap();
        };
        // No card, or a card that records the weights: loads.
        dir.load(Cpu::default()).unwrap();
        card(&net.fingerprint());
        dir.load(Cpu::default()).unwrap();
        // Other weights under the same card: refused, naming both files.
        let other = Network::new(spec, Cpu::default(), 1);
        save_weights(&other, dir.weights()).unwrap();
        let e = dir.load(Cpu::default()).err().unwrap().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("model.json") && e.contains("damaged"),
            "{e}"
        );
        // A card that cannot be read does not switch the check off; one
        // without the field (written before it) does.
        save_weights(&net, dir.weights()).unwrap();
        for (text, why) in [
            ("{not json", "not JSON"),
            ("", "not JSON"),
            ("[]", "not a JSON object"),
            ("{\"weights_fingerprint\": 12345}", "12345, not a string"),
        ] {
            std::fs::write(dir.card(), text).unwrap();
            let e = dir.load(Cpu::default()).err().unwrap().to_string();
            assert!(e.contains("model.json") && e.contains(why), "{text}: {e}");
        }
        std::fs::write(dir.card(), "{\"spec\": \"mlp:4-3-2\"}").unwrap();
        dir.load(Cpu::default()).unwrap();
        // A weights file named directly is not the card's: not checked.
        let renamed = tmp.path().join("other.safetensors");
        std::fs::rename(dir.weights(), &renamed).unwrap();
        ModelDir::new(&renamed).load(Cpu::default()).unwrap();
    }
}

//! Compression beyond response distillation: parameter transfer (a student
//! initialised from a teacher's weights), structured and unstructured
//! magnitude pruning, and the masks that keep pruned weights at zero while a
//! pruned model is fine-tuned.
//!
//! Everything here works on host tensors in PyTorch layout
//! ([`HostTensor`](crate::model::io::HostTensor), conv weights `[out, in, 3, 3]`, the first dense layer
//! after convolutions with columns in flatten order (c, h, w)), which is what
//! users see in PyTorch and keeps the slicing logic simple.
//!
//! One file per concept:
//! - `transfer.rs`: [`transfer()`] fills a student from a teacher of the
//!   same depth and layer types: tensors of equal shape are copied; where
//!   the student is narrower the teacher's units (rows, or conv filters)
//!   with the highest L1 norm are kept, and the selection is carried to the
//!   next layer's inputs. [`init_from`] builds `train --init-from` on it.
//! - `structured.rs`: [`structured()`] is `transfer` to a narrower spec made
//!   by [`pruned_spec`]: a physically smaller model with fewer FLOPs. The
//!   output layer's units (the classes) are never removed. A mask of an
//!   earlier unstructured pruning is sliced along with the weights and stays
//!   in force.
//! - `unstructured.rs`: [`unstructured()`] zeroes the smallest-magnitude
//!   weights per tensor or globally and returns 0/1 masks.
//! - `masks.rs`: [`StoreMasks`] applies masks to a [`Network`](crate::model::Network)
//!   after every optimizer step, so pruned weights are exactly `0.0` after
//!   every step whatever the optimizer; [`grow_masks`] adds to a mask; the
//!   mask file beside a model.
//! - `selection.rs`: [`LayerSelection`], which layers a method touches.
//! - `slice.rs`: how each layer kind is sliced by a transfer (the per-layer
//!   hook: convolutions and dense layers by L1, batch norms with their
//!   channels, residual blocks with their shortcut).
//! - `accounting.rs`: non-zero parameters and FLOPs, size on disk ([`Summary`]).
//! - `io.rs`: a model directory as host tensors ([`read_model`], [`write_model`]).
//! - `run.rs`: one `distill prune` as a library call ([`prune_model`]);
//!   `outdir.rs`: its output directory, claimed and replaced whole.
//! - [`schedule`]: gradual magnitude pruning during training.
//!
//! Masks are saved beside the weights as `mask.safetensors` ([`MASK_FILE`]):
//! one f32 tensor of 0s and 1s per pruned weight, with the weight's own name
//! and PyTorch shape (`layers.0.weight`); in PyTorch,
//! `torch.nn.utils.prune.custom_from_mask(layers[0], "weight", mask)` takes it
//! as is.
//!
//! ```no_run
//! use distill::model::ModelSpec;
//! use distill::model::io::read_safetensors;
//! use distill::prune::{structured, LayerSelection};
//! # fn main() -> distill::Result<()> {
//! let (_, teacher) = read_safetensors("data/teachers/fashion-cnn/model.safetensors".as_ref())?;
//! let spec = ModelSpec::parse("cnn:c32-p-c64-p-f128-10")?;
//! let small = structured(&spec, &teacher, None, 0.5, &LayerSelection::All)?;
//! assert_eq!(small.spec.as_str(), "cnn:c16-p-c32-p-f64-10");
//! # Ok(())
//! # }
//! ```

mod accounting;
mod io;
mod masks;
mod outdir;
mod run;
pub mod schedule;
mod selection;
mod slice;
mod structured;
mod transfer;
mod unstructured;

pub use accounting::{count_nonzero, count_nonzero_params, effective_flops, Summary};
pub use io::{read_model, read_model_normalized, read_stored_model, write_model, StoredModel};
pub use masks::{
    check_masks, grow_masks, read_masks, write_masks, zero_masked, MaskCount, StoreMasks,
};
pub use run::{prune_model, Method, PruneAmount, PruneConfig, PruneRun};
pub use selection::LayerSelection;
pub use structured::{pruned_spec, sparsity_for_budget, structured, StructuredPrune};
pub use transfer::{
    init_from, top_l1_rows, transfer, transfer_with_masks, Fill, InitFrom, Kept, Ranking,
    TransferLine, TransferReport,
};
pub use unstructured::unstructured;

/// File name of the masks saved beside `model.safetensors`.
pub use crate::model::dir::MASK_FILE;

use crate::error::Error;
use crate::model::ModelSpec;

/// An error about `spec` (a spec's shape does not fit what pruning needs).
fn spec_err(spec: &ModelSpec, message: String) -> Error {
    Error::Spec {
        spec: spec.to_string(),
        message,
    }
}

#[cfg(test)]
mod test_util {
    use crate::model::io::{torch_shapes, HostTensor};
    use crate::model::ModelSpec;

    /// The tensors of `spec`, value `f(name, index)`.
    pub fn host(spec: &ModelSpec, f: impl Fn(&str, usize) -> f32) -> Vec<HostTensor> {
        torch_shapes(spec)
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                HostTensor {
                    data: (0..n).map(|i| f(&name, i)).collect(),
                    name,
                    shape,
                }
            })
            .collect()
    }
}

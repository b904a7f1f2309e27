//! Models from run-time specs: parsing ([`spec`]), the layer kinds, one
//! file each ([`layers`]), the dfdx network and its
//! parameter store ([`network`]), the `model.py` written beside a model
//! ([`pytorch`]), the device ops behind [`Backend`]
//! (patches and pooling in [`ops`], the fused convolution block in [`conv`],
//! batch norm in [`batchnorm_op`], a residual block as one op in [`block_op`],
//! matmuls in [`kernels`], the KD loss in [`kd`], and the CUDA kernels of
//! the fused ops in [`cuda`]), safetensors I/O with PyTorch names and layouts
//! ([`io`]), the input normalisation stored with a model ([`input_norm`]), a
//! model directory's layout
//! ([`dir`]), a spec checked against a dataset ([`compat`]) and a run's
//! memory against what its device has free ([`memory`]).

pub mod batchnorm_op;
pub mod block_op;
pub mod compat;
pub mod conv;
pub mod cuda;
pub mod dir;
pub mod input_norm;
pub mod io;
pub mod kd;
pub mod kernels;
pub mod layers;
pub mod memory;
pub mod network;
pub mod ops;
pub mod pytorch;
pub mod spec;

pub use dir::ModelDir;
pub use layers::Layer;
pub use network::{Buffer, HostMirror, Network, Param, ParamKind, ParamValue};
pub use ops::Backend;
pub use spec::ModelSpec;

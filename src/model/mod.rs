//! Models from run-time specs: parsing ([`spec`]), the dfdx network and its
//! parameter store ([`network`]), convolution and pooling ops ([`ops`]), and
//! safetensors I/O with PyTorch names and layouts ([`io`]), and a model
//! directory's layout ([`dir`]).

pub mod compat;
pub mod dir;
pub mod io;
pub mod kernels;
pub mod network;
pub mod ops;
pub mod spec;

pub use dir::ModelDir;
pub use network::{Network, Param, ParamKind, ParamValue};
pub use ops::Backend;
pub use spec::{Layer, ModelSpec};

//! Weights on disk: safetensors files with PyTorch `state_dict` names and
//! layouts, so `model.load_state_dict(safetensors.torch.load_file(...))`
//! works on the module printed by [`ModelSpec::torch_code`].
//!
//! Layout conversions: each parameter carries its store layout
//! ([`Layout`], declared by its layer): conv weights `[out, k*k*in]` to
//! PyTorch's `[out, in, k, k]`, the first dense layer after image layers
//! from (h, w, c) columns to PyTorch's flatten order (c, h, w); everything
//! else is already PyTorch's layout. Buffers (batch norm's running
//! statistics) are saved beside the parameters under their PyTorch names;
//! `num_batches_tracked` as int64, as PyTorch keeps it.
//!
//! The metadata holds the spec ([`SPEC_KEY`]) and, for a model that
//! normalises its inputs, the normalisation
//! ([`NORMALIZE_KEY`]); its keys are
//! written in sorted order, so the same model gives the same bytes.
//!
//! Files are written to a temporary name in the same directory, synced and
//! renamed, so a crash never leaves a half-written weights file behind.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::Path;

use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use xxhash_rust::xxh3::Xxh3;

use super::input_norm::{self, NORMALIZE_KEY};
use super::layers::{batchnorm, Layout};
use super::network::{Network, ParamValue};
use super::ops::Backend;
use super::spec::ModelSpec;
use crate::error::{Error, Result};

/// Metadata key holding the model spec inside a weights file.
pub const SPEC_KEY: &str = "distill.spec";

/// Largest weights file read (guards allocations on hostile input).
const MAX_WEIGHTS_BYTES: u64 = 16 << 30;

/// A named f32 tensor in PyTorch layout, on the host.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The expected PyTorch shape of each tensor (parameters, then buffers such
/// as batch norm's running statistics), by name.
pub fn torch_shapes(spec: &ModelSpec) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    let mut buffers = Vec::new();
    for (prefix, layer) in spec.module_names().iter().zip(spec.layers()) {
        for p in layer.params() {
            out.push((format!("{prefix}.{}", p.name), p.torch_shape));
        }
        for b in layer.buffers() {
            buffers.push((format!("{prefix}.{}", b.name), b.torch_shape));
        }
    }
    out.extend(buffers);
    out
}

/// The store layout of each weight, by PyTorch name (also the layout of
/// its pruning mask).
pub fn weight_layout(spec: &ModelSpec, name: &str) -> Option<Layout> {
    spec.module_names()
        .iter()
        .zip(spec.layers())
        .flat_map(|(prefix, layer)| {
            layer
                .params()
                .into_iter()
                .map(move |p| (format!("{prefix}.{}", p.name), p.layout))
        })
        .find_map(|(n, layout)| (n == name).then_some(layout))
}

impl<D: Backend> Network<D> {
    /// The parameters in PyTorch layout, then the buffers, on the host.
    pub fn to_host(&self) -> Vec<HostTensor> {
        let params = self.params().iter().map(|p| {
            let mut shape = p.value.dims();
            if let Layout::Conv {
                out_channels,
                in_channels,
                taps,
            } = p.layout
            {
                let k = (taps as f64).sqrt().round() as usize;
                shape = vec![out_channels, in_channels, k, k];
            }
            HostTensor {
                name: p.name.clone(),
                shape,
                data: p.layout.to_torch(&p.value.to_vec()),
            }
        });
        let buffers = self.buffers().iter().map(|b| HostTensor {
            name: b.name.clone(),
            shape: b.shape.clone(),
            data: b.get(),
        });
        params.chain(buffers).collect()
    }

    /// Overwrites the parameters and buffers from tensors in PyTorch
    /// layout. Every one must be present with its exact shape; `source`
    /// names the file in errors.
    pub fn load_host(&mut self, tensors: &[HostTensor], source: &Path) -> Result<()> {
        let by_name: HashMap<&str, &HostTensor> =
            tensors.iter().map(|t| (t.name.as_str(), t)).collect();
        let spec = self.spec().clone();
        let expected: HashMap<String, Vec<usize>> = torch_shapes(&spec).into_iter().collect();
        let find = |name: &str| -> Result<&HostTensor> {
            let shape = expected.get(name).cloned().unwrap_or_default();
            let t = by_name.get(name).ok_or_else(|| Error::Model {
                path: source.to_path_buf(),
                message: format!(
                    "tensor '{name}' is missing (spec {spec} needs it with shape {shape:?})"
                ),
            })?;
            if t.shape != shape {
                return Err(Error::Model {
                    path: source.to_path_buf(),
                    message: format!(
                        "tensor '{name}' has shape {:?}, but spec {spec} needs {shape:?}",
                        t.shape
                    ),
                });
            }
            if let Some(i) = t.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Model {
                    path: source.to_path_buf(),
                    message: format!("tensor '{name}' holds a non-finite value at element {i}"),
                });
            }
            Ok(t)
        };
        for param in self.params_mut() {
            let t = find(&param.name)?;
            param.value.copy_from(&param.layout.from_torch(&t.data));
        }
        for b in self.buffers() {
            b.set(find(&b.name)?.data.clone());
        }
        Ok(())
    }

    /// A content fingerprint of the spec, the input normalisation (when
    /// there is one) and the weights (xxh3-128, hex): the same model gives
    /// the same fingerprint however it was saved.
    pub fn fingerprint(&self) -> String {
        let mut h = Xxh3::new();
        h.update(self.spec().as_str().as_bytes());
        if let Some(n) = self.normalization() {
            h.update(NORMALIZE_KEY.as_bytes());
            for v in n.mean().iter().chain(n.std()) {
                h.update(&v.to_le_bytes());
            }
        }
        for p in self.params() {
            h.update(p.name.as_bytes());
            for v in p.value.to_vec() {
                h.update(&v.to_le_bytes());
            }
        }
        // Buffers only where there are some: older models keep their
        // fingerprints.
        for b in self.buffers() {
            h.update(b.name.as_bytes());
            for v in b.get() {
                h.update(&v.to_le_bytes());
            }
        }
        format!("{:032x}", h.digest128())
    }
}

/// Writes tensors (and string metadata) to a safetensors file atomically.
pub fn write_safetensors(
    path: &Path,
    tensors: &[HostTensor],
    metadata: HashMap<String, String>,
) -> Result<()> {
    let bytes: Vec<(Dtype, Vec<u8>)> = tensors
        .iter()
        .map(|t| match is_counter(&t.name) {
            true => (
                Dtype::I64,
                t.data
                    .iter()
                    .flat_map(|v| (v.round() as i64).to_le_bytes())
                    .collect(),
            ),
            false => (
                Dtype::F32,
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            ),
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, (dtype, b))| {
            TensorView::new(*dtype, t.shape.clone(), b)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Model {
                    path: path.to_path_buf(),
                    message: format!("tensor '{}': {e}", t.name),
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut buf = safetensors::tensor::serialize(views, &Some(metadata.clone())).map_err(|e| {
        Error::Model {
            path: path.to_path_buf(),
            message: format!("cannot serialise: {e}"),
        }
    })?;
    sort_metadata(&mut buf, &metadata);
    atomic_write(path, &buf)
}

/// Rewrites the `__metadata__` object of serialised safetensors bytes with
/// its keys sorted. The crate writes a `HashMap` in its (random) iteration
/// order; the sorted object has the same length, so nothing else moves.
/// Leaves the bytes alone if they are not laid out as expected.
fn sort_metadata(buf: &mut [u8], metadata: &HashMap<String, String>) {
    const PREFIX: &[u8] = b"{\"__metadata__\":";
    let (Ok(as_written), Ok(sorted)) = (
        serde_json::to_string(metadata),
        serde_json::to_string(&metadata.iter().collect::<BTreeMap<_, _>>()),
    ) else {
        return;
    };
    let start = 8 + PREFIX.len();
    let end = start + as_written.len();
    if buf.get(8..start) == Some(PREFIX)
        && buf.get(start..end) == Some(as_written.as_bytes())
        && sorted.len() == as_written.len()
    {
        buf[start..end].copy_from_slice(sorted.as_bytes());
    }
}

/// What is wrong with a safetensors file, in words a user can act on.
fn safetensors_fault(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer => {
            "its size does not match what its header lists (truncated, or extended after writing)"
                .into()
        }
        E::HeaderTooSmall | E::InvalidHeaderLength => {
            "it is too short to hold its header (truncated, or not a safetensors file)".into()
        }
        E::InvalidHeader | E::InvalidHeaderStart | E::InvalidHeaderDeserialization => {
            "its header is not the JSON a safetensors file starts with (damaged, or another format)"
                .into()
        }
        other => format!("{other}"),
    }
}

/// Reads every f32 tensor and the metadata of a safetensors file. Errors
/// name the file and the tensor.
pub fn read_safetensors(path: &Path) -> Result<(HashMap<String, String>, Vec<HostTensor>)> {
    parse_safetensors(path, &read_weights_file(path)?)
}

/// [`read_safetensors`], and the xxh3-128 of the file's bytes (32 hex
/// digits) from the same read: the hash names the very bytes the tensors
/// came from.
pub fn read_safetensors_hashed(
    path: &Path,
) -> Result<(HashMap<String, String>, Vec<HostTensor>, String)> {
    let buf = read_weights_file(path)?;
    let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&buf));
    let (meta, tensors) = parse_safetensors(path, &buf)?;
    Ok((meta, tensors, hash))
}

/// The bytes of the weights file `path`, refused past
/// [`MAX_WEIGHTS_BYTES`] or where `path` lies under a file.
fn read_weights_file(path: &Path) -> Result<Vec<u8>> {
    // `FILE/model.safetensors` where FILE is a file: a model named by a
    // path that is neither a model directory nor a `.safetensors` file.
    if let Some(parent) = path.parent().filter(|p| p.is_file()) {
        return Err(Error::Model {
            path: parent.to_path_buf(),
            message: "is a file, but neither a model directory nor a .safetensors file; name \
                      the model's directory or its weights file"
                .into(),
        });
    }
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(no_weights(path, e)),
        Err(e) => return Err(Error::io(path, e)),
    };
    if len > MAX_WEIGHTS_BYTES {
        return Err(Error::Model {
            path: path.to_path_buf(),
            message: format!("{len} bytes is larger than the {MAX_WEIGHTS_BYTES}-byte limit"),
        });
    }
    fs::read(path).map_err(|e| Error::io(path, e))
}

/// The weights file `path` is not there (`e`): what its directory holds
/// instead, where that tells the user what they named (a cache, an
/// unfinished run, no model at all), or else the file-system error.
fn no_weights(path: &Path, e: std::io::Error) -> Error {
    // A .safetensors file named directly: the file itself is missing.
    let Some(dir) = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .filter(|_| path.file_name() == Some(std::ffi::OsStr::new(super::dir::WEIGHTS_FILE)))
    else {
        return Error::io(path, e);
    };
    let holds = |name: &str| dir.join(name).exists();
    let name_one = "name a model directory or its .safetensors file";
    let message = if !dir.exists() {
        format!("does not exist; {name_one}")
    } else if !dir.is_dir() {
        return Error::io(path, e);
    } else if holds("manifest.json") || holds("views.json") {
        format!("holds a teacher cache (manifest.json or views.json), not a model; {name_one}")
    } else if holds("checkpoint.safetensors") {
        "holds an unfinished run (a checkpoint, no model.safetensors yet): continue it with \
         `distill train --resume`, or name a finished model's directory or .safetensors file"
            .to_string()
    } else {
        format!("holds no {}; {name_one}", super::dir::WEIGHTS_FILE)
    };
    Error::Model {
        path: dir.to_path_buf(),
        message,
    }
}

/// The metadata and every f32 tensor of `buf`, the safetensors file
/// `path` (named in errors).
fn parse_safetensors(
    path: &Path,
    buf: &[u8],
) -> Result<(HashMap<String, String>, Vec<HostTensor>)> {
    let invalid = |e: safetensors::SafeTensorError| Error::Model {
        path: path.to_path_buf(),
        message: format!("not a valid safetensors file: {}", safetensors_fault(&e)),
    };
    let st = SafeTensors::deserialize(buf).map_err(invalid)?;
    let (_, header) = SafeTensors::read_metadata(buf).map_err(invalid)?;
    let metadata = header.metadata().clone().unwrap_or_default();
    let mut out = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| Error::Model {
            path: path.to_path_buf(),
            message: format!("tensor '{name}': {e}"),
        })?;
        let data = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            // PyTorch's batch-norm step counter.
            Dtype::I64 if is_counter(&name) => view
                .data()
                .chunks_exact(8)
                .map(|c| {
                    i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32
                })
                .collect(),
            other => {
                return Err(Error::Model {
                    path: path.to_path_buf(),
                    message: format!(
                    "tensor '{name}' is {other:?}; distill reads float32 weights (and int64 {})",
                    batchnorm::COUNTER
                ),
                })
            }
        };
        out.push(HostTensor {
            name,
            shape: view.shape().to_vec(),
            data,
        });
    }
    Ok((metadata, out))
}

/// Whether a tensor is batch norm's step counter, which PyTorch keeps as
/// int64 (and distill writes so).
fn is_counter(name: &str) -> bool {
    name.rsplit('.').next() == Some(batchnorm::COUNTER)
}

/// Saves a network's weights, recording its spec and its input
/// normalisation (when it has one) in the file's metadata, and writes
/// `model.py` beside them.
pub fn save_weights<D: Backend>(net: &Network<D>, path: &Path) -> Result<()> {
    let mut meta = HashMap::new();
    meta.insert(SPEC_KEY.to_string(), net.spec().as_str().to_string());
    if let Some(n) = net.normalization() {
        meta.insert(NORMALIZE_KEY.to_string(), input_norm::to_metadata(n));
    }
    write_safetensors(path, &net.to_host(), meta)?;
    super::pytorch::write_module_file(path, net.spec(), net.normalization())
}

/// The input normalisation recorded in a weights file's metadata (`None`
/// when it has none: the identity); errors name the file.
pub fn stored_normalization(
    meta: &HashMap<String, String>,
    path: &Path,
) -> Result<Option<crate::data::Normalization>> {
    meta.get(NORMALIZE_KEY)
        .map(|text| input_norm::from_metadata(text))
        .transpose()
        .map_err(|message| Error::Model {
            path: path.to_path_buf(),
            message,
        })
}

/// Checks that `tensors` (read from `path`) hold every tensor `spec` needs,
/// with its shape, before a network of that spec is allocated: the spec may
/// come from the file itself, and a small file must not make us allocate a
/// huge network.
pub fn check_tensor_shapes(spec: &ModelSpec, tensors: &[HostTensor], path: &Path) -> Result<()> {
    for (name, shape) in torch_shapes(spec) {
        match tensors.iter().find(|t| t.name == name) {
            Some(t) if t.shape == shape => {}
            Some(t) => {
                return Err(Error::Model {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor '{name}' has shape {:?}, but spec {spec} needs {shape:?}",
                        t.shape
                    ),
                })
            }
            None => {
                return Err(Error::Model {
                    path: path.to_path_buf(),
                    message: format!(
                        "tensor '{name}' is missing (spec {spec} needs it with shape {shape:?})"
                    ),
                })
            }
        }
    }
    Ok(())
}

/// Loads a weights file into a new network. The spec comes from `spec`
/// when given, else from the file's metadata.
pub fn load_weights<D: Backend>(
    path: &Path,
    spec: Option<&ModelSpec>,
    device: D,
) -> Result<Network<D>> {
    let (meta, tensors) = read_safetensors(path)?;
    let spec = match (spec, meta.get(SPEC_KEY)) {
        (Some(s), _) => s.clone(),
        (None, Some(text)) => ModelSpec::parse(text)?,
        (None, None) => {
            return Err(Error::Model {
                path: path.to_path_buf(),
                message: format!(
                    "no '{SPEC_KEY}' metadata, so the model these weights are for is unknown: \
                     distill saves a model's spec there (FORMAT.md, model.safetensors); for \
                     weights saved elsewhere, add it to the file's metadata (e.g. \
                     {SPEC_KEY} = mlp:784-128-10)"
                ),
            })
        }
    };
    // Check names and shapes before allocating: the spec may come from the
    // file itself, and a small file must not make us allocate a huge network.
    check_tensor_shapes(&spec, &tensors, path)?;
    let normalization = stored_normalization(&meta, path)?;
    let mut net = Network::new(spec, device, 0);
    net.load_host(&tensors, path)?;
    net.set_normalization(normalization)
        .map_err(|message| Error::Model {
            path: path.to_path_buf(),
            message,
        })?;
    Ok(net)
}

/// Writes `bytes` to `path` atomically ([`crate::fsutil::atomic_write`]).
pub fn atomic_write(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(crate::fsutil::atomic_write(path, bytes)?)
}

/// Returns the values of a parameter as stored (for tests and tools).
pub fn param_values<D: Backend>(value: &ParamValue<D>) -> Vec<f32> {
    value.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use dfdx::prelude::*;

    #[test]
    fn round_trip_preserves_outputs_and_torch_layout() {
        let dev = Cpu::seed_from_u64(0);
        let dir = tempfile::tempdir().unwrap();
        for text in ["mlp:10-6-3", "cnn:i2x5x4-c3-p-f5-4"] {
            let spec = ModelSpec::parse(text).unwrap();
            let net = Network::new(spec.clone(), dev.clone(), 11);
            let path = dir.path().join("m.safetensors");
            save_weights(&net, &path).unwrap();
            let back = load_weights(&path, None, dev.clone()).unwrap();
            let x: Vec<f32> = (0..2 * spec.input_len())
                .map(|i| (i % 5) as f32 * 0.3)
                .collect();
            assert_eq!(
                net.predict(x.clone(), 2).as_vec(),
                back.predict(x, 2).as_vec()
            );
            assert_eq!(net.fingerprint(), back.fingerprint());
            let (meta, tensors) = read_safetensors(&path).unwrap();
            assert_eq!(meta.get(SPEC_KEY).map(String::as_str), Some(text));
            let shapes: Vec<(String, Vec<usize>)> = tensors
                .iter()
                .map(|t| (t.name.clone(), t.shape.clone()))
                .collect();
            let mut expected = torch_shapes(&spec);
            expected.sort();
            assert_eq!(shapes, expected);
        }
    }

    #[test]
    fn conv_weight_layout_is_pytorch_order() {
        // Store column tap*in + c maps to PyTorch [o][c][dy][dx].
        let dev = Cpu::seed_from_u64(0);
        let spec = ModelSpec::parse("cnn:i2x3x3-c1-2").unwrap();
        let mut net = Network::new(spec, dev, 0);
        let vals: Vec<f32> = (0..18).map(|i| i as f32).collect();
        net.params_mut()[0].value.copy_from(&vals);
        let host = net.to_host();
        assert_eq!(host[0].shape, vec![1, 2, 3, 3]);
        // PyTorch element [0][c=1][tap=4] is store column 4*2+1 = 9.
        assert_eq!(host[0].data[9 + 4], 9.0);
        assert_eq!(host[0].data[4], 8.0);
    }

    #[test]
    fn wrong_shapes_and_missing_tensors_are_named() {
        let dev = Cpu::seed_from_u64(0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        save_weights(
            &Network::new(ModelSpec::parse("mlp:4-3-2").unwrap(), dev.clone(), 0),
            &path,
        )
        .unwrap();
        let other = ModelSpec::parse("mlp:4-5-2").unwrap();
        let err = load_weights(&path, Some(&other), dev.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("layers.0.weight") && err.contains("[3, 4]"),
            "{err}"
        );
        let deeper = ModelSpec::parse("mlp:4-3-3-2").unwrap();
        let err = load_weights(&path, Some(&deeper), dev.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("missing") || err.contains("shape"), "{err}");
        // Truncated after its header: said in those words.
        let whole = fs::read(&path).unwrap();
        fs::write(&path, &whole[..whole.len() - 4]).unwrap();
        let err = load_weights(&path, None, dev.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("truncated"),
            "{err}"
        );
        fs::write(&path, b"not a safetensors file").unwrap();
        let err = load_weights(&path, None, dev).err().unwrap().to_string();
        assert!(
            err.contains("m.safetensors") && err.contains("not a valid"),
            "{err}"
        );
    }

    #[test]
    fn normalisation_is_stored_with_the_weights_and_read_back() {
        use crate::data::Normalization;
        let dev = Cpu::seed_from_u64(0);
        let dir = tempfile::tempdir().unwrap();
        let spec = ModelSpec::parse("cnn:i3x4x4-c2-p-3").unwrap();
        let mut net = Network::new(spec.clone(), dev.clone(), 5);
        let plain_fingerprint = net.fingerprint();
        let x: Vec<f32> = (0..2 * 48).map(|i| (i % 11) as f32 / 11.0).collect();
        let plain = net.predict(x.clone(), 2).as_vec();
        let stats: Normalization = "0.5,0.4,0.3/0.25,0.2,0.1".parse().unwrap();
        net.set_normalization(Some(stats.clone())).unwrap();
        assert_ne!(net.fingerprint(), plain_fingerprint);
        // The forward pass is the plain network on the normalised inputs.
        let mut normalised = x.clone();
        stats.apply(48, &mut normalised);
        let got = net.predict(x.clone(), 2).as_vec();
        let mut reference = Network::new(spec, dev.clone(), 5);
        reference.set_normalization(None).unwrap();
        assert_eq!(got, reference.predict(normalised, 2).as_vec());
        assert_ne!(got, plain);
        // Saved and loaded: the same outputs and fingerprint, the same
        // bytes every time (two metadata keys, written sorted).
        let path = dir.path().join("m.safetensors");
        save_weights(&net, &path).unwrap();
        let bytes = fs::read(&path).unwrap();
        for _ in 0..8 {
            save_weights(&net, &path).unwrap();
            assert_eq!(fs::read(&path).unwrap(), bytes);
        }
        let header = String::from_utf8_lossy(&bytes[8..200]).to_string();
        let (n, s) = (
            header.find(NORMALIZE_KEY).unwrap(),
            header.find(SPEC_KEY).unwrap(),
        );
        assert!(n < s, "sorted keys: {header}");
        let back = load_weights(&path, None, dev.clone()).unwrap();
        assert_eq!(back.normalization(), Some(&stats));
        assert_eq!(back.fingerprint(), net.fingerprint());
        assert_eq!(back.predict(x, 2).as_vec(), got);
        // A bad value names the file and the key.
        let (mut meta, tensors) = read_safetensors(&path).unwrap();
        meta.insert(NORMALIZE_KEY.into(), r#"{"mean":[0.5],"std":[1]}"#.into());
        write_safetensors(&path, &tensors, meta.clone()).unwrap();
        let e = load_weights(&path, None, dev.clone())
            .err()
            .unwrap()
            .to_string();
        assert!(
            e.contains("m.safetensors") && e.contains("1 channels"),
            "{e}"
        );
        meta.insert(NORMALIZE_KEY.into(), "{".into());
        write_safetensors(&path, &tensors, meta).unwrap();
        let e = load_weights(&path, None, dev).err().unwrap().to_string();
        assert!(
            e.contains("m.safetensors") && e.contains(NORMALIZE_KEY),
            "{e}"
        );
    }

    #[test]
    fn the_committed_residual_teacher_loads_with_its_normalisation_and_unchanged() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/teachers/fashion-resnet20");
        let net = load_weights(&root.join("model.safetensors"), None, Cpu::default()).unwrap();
        let card: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(root.join("model.json")).unwrap()).unwrap();
        assert_eq!(net.spec().as_str(), card["spec"].as_str().unwrap());
        assert_eq!(
            card["weights_fingerprint"].as_str(),
            Some(net.fingerprint().as_str())
        );
        // The training split's statistics, stored in the weights file and the card.
        let norm = net
            .normalization()
            .expect("the teacher normalises its input");
        let card_norm: crate::data::Normalization =
            serde_json::from_value(card["normalization"].clone()).unwrap();
        assert_eq!(norm, &card_norm);
    }

    #[test]
    fn the_committed_teachers_load_without_normalisation_and_unchanged() {
        let dev = Cpu::seed_from_u64(0);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/teachers");
        for name in ["fashion-cnn", "fashion-cnn-long"] {
            let file = root.join(name).join("model.safetensors");
            let net = load_weights(&file, None, dev.clone()).unwrap();
            assert_eq!(net.normalization(), None, "{name}");
            // The fingerprint its card recorded when it was trained.
            let card: serde_json::Value = serde_json::from_str(
                &fs::read_to_string(root.join(name).join("model.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(
                card["weights_fingerprint"].as_str(),
                Some(net.fingerprint().as_str()),
                "{name}"
            );
            // The same logits as the bare parameters give.
            let (_, tensors) = read_safetensors(&file).unwrap();
            let mut bare = Network::new(net.spec().clone(), dev.clone(), 0);
            bare.load_host(&tensors, &file).unwrap();
            let x: Vec<f32> = (0..3 * 784).map(|i| (i % 255) as f32 / 255.0).collect();
            assert_eq!(
                net.predict(x.clone(), 3).as_vec(),
                bare.predict(x, 3).as_vec(),
                "{name}"
            );
        }
    }

    #[test]
    fn a_missing_model_is_told_by_what_its_directory_holds() {
        let dev = Cpu::seed_from_u64(0);
        let tmp = tempfile::tempdir().unwrap();
        let err = |dir: &Path| {
            load_weights(&dir.join("model.safetensors"), None, dev.clone())
                .err()
                .expect("refused")
                .to_string()
        };
        let e = err(&tmp.path().join("absent"));
        assert!(
            e.contains("absent: does not exist; name a model directory"),
            "{e}"
        );
        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let e = err(&empty);
        assert!(
            e.contains("empty: holds no model.safetensors; name a model"),
            "{e}"
        );
        let cache = tmp.path().join("cache");
        fs::create_dir(&cache).unwrap();
        fs::write(cache.join("manifest.json"), "{}").unwrap();
        let e = err(&cache);
        assert!(e.contains("cache: holds a teacher cache"), "{e}");
        assert!(e.contains("not a model"), "{e}");
        let run = tmp.path().join("run");
        fs::create_dir(&run).unwrap();
        fs::write(run.join("checkpoint.safetensors"), "").unwrap();
        let e = err(&run);
        assert!(e.contains("run: holds an unfinished run"), "{e}");
        assert!(e.contains("--resume"), "{e}");
        // A weights file named directly is missing itself.
        let e = load_weights(&empty.join("other.safetensors"), None, dev.clone())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("other.safetensors") && e.contains("os error"),
            "{e}"
        );
        for e in [&err(&empty), &err(&cache), &err(&run)] {
            assert!(!e.contains("os error"), "{e}");
        }
    }

    #[test]
    fn weights_without_a_spec_say_how_to_give_one() {
        let dev = Cpu::seed_from_u64(0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let net = Network::new(ModelSpec::parse("mlp:4-3-2").unwrap(), dev.clone(), 0);
        save_weights(&net, &path).unwrap();
        let (mut meta, tensors) = read_safetensors(&path).unwrap();
        meta.remove(SPEC_KEY);
        write_safetensors(&path, &tensors, meta).unwrap();
        let e = load_weights(&path, None, dev.clone())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("m.safetensors: no 'distill.spec' metadata")
                && e.contains("add it to the file's metadata")
                && !e.contains("explicitly"),
            "{e}"
        );
        // The library's caller may still give the spec.
        load_weights(&path, Some(net.spec()), dev).unwrap();
    }
}

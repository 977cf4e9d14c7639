//! Saving and loading parameters as [safetensors](https://github.com/huggingface/safetensors)
//! files, the standard tensor format read by PyTorch (`safetensors.torch.load_file`),
//! JAX/Flax and Hugging Face tooling.
//!
//! A file holds named tensors (here the entries of a [`Params`]) with their dtype and
//! shape, plus optional string-to-string metadata. Tensors are written as `F32` or `F64`
//! (little-endian, row-major), matching the element type they are saved from.
//!
//! **Dtype policy.** [`load_params`] is strict ([`DtypePolicy::Exact`]): every tensor
//! must have the dtype of the requested element type (`F32` for `f32`, `F64` for `f64`),
//! and values round-trip bit for bit. [`load_params_with`] and [`DtypePolicy::Convert`]
//! accept any floating-point dtype among `F64`, `F32`, `F16` and `BF16` and convert each
//! value to the requested type (exact when widening, rounded to nearest when narrowing
//! `F64` to `f32`). Integer, boolean and 8-bit-or-smaller float dtypes are always
//! rejected.
//!
//! Every failure to read or parse a file is an [`Error::File`] whose `reason` names the
//! offending part: the header length, the header, `__metadata__`, or
//! ``tensor `name`: field `dtype` / `shape` / `data_offsets` `` and what is wrong.
//!
//! **Loading for a model.** [`load_params_like`] (and [`decode_params_like`]) also check
//! a well-formed file against the parameters of the model that will use it: the same
//! tensor names, each with the model's shape and the dtype of `F`. A difference is an
//! [`Error::Params`] naming the first offending tensor in name order, with a reason that
//! names the file; use it to load a checkpoint, so that a file saved for another model
//! configuration fails at load time rather than deep inside the model.
//!
//! ```
//! use datarater::{Params, Tensor, io::{load_params, save_params}};
//! let mut p = Params::new();
//! p.insert("layer.w", Tensor::<f32>::from_vec(&[2, 2], vec![1.0, -2.0, 0.5, 3.25])?);
//! let path = std::env::temp_dir().join("datarater-io-doc.safetensors");
//! save_params(&path, &p, &[("step", "100")])?;
//! let (q, meta) = load_params::<f32>(&path)?;
//! assert_eq!(q, p);
//! assert_eq!(meta["step"], "100");
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), datarater::Error>(())
//! ```

use crate::autodiff::{Float, Params, Tensor};
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, View};
use serde_json::Value as Json;
use std::any::Any;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// String-to-string metadata stored in a file's `__metadata__` header entry.
pub type Metadata = BTreeMap<String, String>;

/// Name of the header entry that holds metadata; no tensor may be called this.
pub const METADATA_KEY: &str = "__metadata__";

/// Where [`decode_params`] errors say the bytes came from.
const IN_MEMORY: &str = "<in-memory safetensors>";

/// How to treat a tensor whose dtype differs from the requested element type.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DtypePolicy {
    /// The dtype must be exactly `F32` for `f32` or `F64` for `f64`; otherwise loading
    /// fails naming the tensor. Values round-trip bit for bit.
    #[default]
    Exact,
    /// Any of `F64`, `F32`, `F16`, `BF16` is converted to the requested type.
    Convert,
}

/// Dtype of the element type `F` (`f32` or `f64`).
fn dtype_of<F: Float>() -> Dtype {
    match std::mem::size_of::<F>() {
        4 => Dtype::F32,
        8 => Dtype::F64,
        n => unreachable!("Float is implemented for f32 and f64 only, got {n}-byte type"),
    }
}

/// A tensor's raw little-endian bytes, as handed to the safetensors writer.
struct Raw {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Raw {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn to_le_bytes<F: Float>(t: &Tensor<F>) -> Vec<u8> {
    let v: Box<dyn Any> = Box::new(t.to_vec());
    match v.downcast::<Vec<f32>>() {
        Ok(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Err(v) => match v.downcast::<Vec<f64>>() {
            Ok(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Err(_) => unreachable!("Float is implemented for f32 and f64 only"),
        },
    }
}

/// Serializes `params` and `metadata` to safetensors bytes (what [`save_params`] writes).
///
/// # Errors
/// [`Error::Params`] if a tensor is named [`METADATA_KEY`] (reserved by the format).
pub fn encode_params<F: Float>(
    params: &Params<Tensor<F>>,
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    let mut raws = Vec::with_capacity(params.len());
    for (name, t) in params.iter() {
        if name == METADATA_KEY {
            return Err(Error::Params {
                name: name.to_string(),
                reason: "this name is reserved for metadata by the safetensors format".into(),
            });
        }
        raws.push((
            name.to_string(),
            Raw {
                dtype: dtype_of::<F>(),
                shape: t.shape().to_vec(),
                bytes: to_le_bytes(t),
            },
        ));
    }
    let bytes = safetensors::serialize(raws.iter().map(|(n, r)| (n.as_str(), r)), None)
        .map_err(|e| Error::Usage(format!("safetensors serialization failed: {e}")))?;
    let metadata: Metadata = metadata
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Ok(with_metadata(bytes, &metadata))
}

/// Adds `metadata` to safetensors `bytes` written without it, in key order: the
/// safetensors writer takes a `HashMap`, whose order varies from map to map, and equal
/// states must give byte-identical files. The header gains a leading `__metadata__`
/// entry (where the safetensors writer puts it) and is re-padded with spaces to a
/// multiple of 8 bytes; the data section is unchanged.
fn with_metadata(bytes: Vec<u8>, metadata: &Metadata) -> Vec<u8> {
    if metadata.is_empty() {
        return bytes;
    }
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n])
        .expect("safetensors writes a UTF-8 header")
        .trim_end_matches(' ');
    let tensors = header
        .strip_prefix('{')
        .and_then(|h| h.strip_suffix('}'))
        .expect("safetensors writes a JSON object");
    let meta = serde_json::to_string(metadata).expect("strings serialize");
    let mut new = format!("{{\"{METADATA_KEY}\":{meta}");
    if !tensors.is_empty() {
        new.push(',');
        new.push_str(tensors);
    }
    new.push('}');
    let mut new = new.into_bytes();
    new.resize(new.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + new.len() + bytes.len() - 8 - n);
    out.extend((new.len() as u64).to_le_bytes());
    out.extend(new);
    out.extend(&bytes[8 + n..]);
    out
}

/// `v` as compact JSON with every object's keys in sorted order, whatever the map type
/// behind `serde_json` (its `preserve_order` feature keeps insertion order), so that
/// equal values always give equal bytes in a file's metadata.
pub fn canonical_json(v: &Json) -> String {
    fn write(v: &Json, out: &mut String) {
        match v {
            Json::Object(m) => {
                let mut entries: Vec<_> = m.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (k, x)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&Json::String(k.clone()).to_string());
                    out.push(':');
                    write(x, out);
                }
                out.push('}');
            }
            Json::Array(a) => {
                out.push('[');
                for (i, x) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(x, out);
                }
                out.push(']');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// Writes `params` to a safetensors file at `path`, with string metadata (for a
/// repeated key the last value wins). Each tensor is stored as `F32` or `F64` to match
/// `F`. The output is byte-for-byte a function of `params` and `metadata` (metadata is
/// written in key order), so equal states give identical files.
///
/// # Errors
/// [`Error::Params`] if a tensor is named [`METADATA_KEY`]; [`Error::File`] if the
/// file cannot be written.
pub fn save_params<F: Float>(
    path: impl AsRef<Path>,
    params: &Params<Tensor<F>>,
    metadata: &[(&str, &str)],
) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_params(params, metadata)?;
    std::fs::write(path, bytes).map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    })
}

/// Reads a safetensors file written by [`save_params`] (or any tool), requiring every
/// tensor's dtype to match `F` exactly ([`DtypePolicy::Exact`]).
///
/// # Errors
/// [`Error::File`] naming the path and, for a malformed file, the offending tensor or
/// field and the reason; a dtype mismatch is reported the same way.
pub fn load_params<F: Float>(path: impl AsRef<Path>) -> Result<(Params<Tensor<F>>, Metadata)> {
    load_params_with(path, DtypePolicy::Exact)
}

/// Reads a safetensors file with an explicit [`DtypePolicy`].
///
/// # Errors
/// As for [`load_params`].
///
/// ```
/// use datarater::{Params, Tensor, io::{DtypePolicy, load_params, load_params_with, save_params}};
/// let mut p = Params::new();
/// p.insert("w", Tensor::<f64>::from_vec(&[2], vec![0.1, 2.0])?);
/// let path = std::env::temp_dir().join("datarater-io-policy-doc.safetensors");
/// save_params(&path, &p, &[])?;
/// assert!(load_params::<f32>(&path).is_err()); // F64 on disk, f32 requested
/// let (q, _) = load_params_with::<f32>(&path, DtypePolicy::Convert)?;
/// assert_eq!(q["w"].to_vec(), vec![0.1f32, 2.0]);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn load_params_with<F: Float>(
    path: impl AsRef<Path>,
    policy: DtypePolicy,
) -> Result<(Params<Tensor<F>>, Metadata)> {
    let (bytes, source) = read(path.as_ref())?;
    decode(&bytes, &source, policy, None)
}

/// Reads a safetensors file that must fit `template`, typically the freshly initialised
/// parameters of the model that will use it (`rater.init(rng)`, `inner.init(rng)`), so
/// a file saved for another model configuration is rejected here instead of failing
/// later inside the model.
///
/// The file must hold exactly the template's tensor names, each with the template's
/// shape and stored with the dtype of `F` ([`DtypePolicy::Exact`]). Only the names and
/// shapes of `template` are read, never its values.
///
/// # Errors
/// - [`Error::File`] naming the path if the file cannot be read or is not a valid
///   safetensors file (as for [`load_params`]); this is checked first.
/// - Otherwise [`Error::Params`] for the first mismatch in name order, with `name` the
///   tensor and a `reason` that names the path and says which of these it is: missing
///   from the file, not in the model (unexpected), stored with another dtype, or of
///   another shape (dtype is checked before shape for the same tensor).
///
/// ```
/// use datarater::{Error, Params, Tensor, io::{load_params_like, save_params}};
/// let mut model = Params::new();
/// model.insert("w", Tensor::<f32>::zeros(&[3, 2])?);
/// let mut other = Params::new();
/// other.insert("w", Tensor::<f32>::zeros(&[4, 2])?); // another configuration
/// let path = std::env::temp_dir().join("datarater-io-like-doc.safetensors");
/// save_params(&path, &other, &[])?;
/// match load_params_like(&path, &model) {
///     Err(Error::Params { name, reason }) => {
///         assert_eq!(name, "w");
///         assert!(reason.contains("[4, 2]") && reason.contains("[3, 2]"));
///     }
///     r => panic!("expected a shape mismatch, got {r:?}"),
/// }
/// save_params(&path, &model, &[])?;
/// let (w, _) = load_params_like(&path, &model)?;
/// assert_eq!(w, model);
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), datarater::Error>(())
/// ```
pub fn load_params_like<F: Float>(
    path: impl AsRef<Path>,
    template: &Params<Tensor<F>>,
) -> Result<(Params<Tensor<F>>, Metadata)> {
    let (bytes, source) = read(path.as_ref())?;
    decode(&bytes, &source, DtypePolicy::Exact, Some(template))
}

/// Parses safetensors bytes (what [`load_params_with`] does after reading the file).
/// Errors are [`Error::File`] with path `"<in-memory safetensors>"`.
///
/// # Errors
/// As for [`load_params`].
pub fn decode_params<F: Float>(
    bytes: &[u8],
    policy: DtypePolicy,
) -> Result<(Params<Tensor<F>>, Metadata)> {
    decode(bytes, IN_MEMORY, policy, None)
}

/// Parses safetensors bytes that must fit `template` (what [`load_params_like`] does
/// after reading the file); errors name the source `"<in-memory safetensors>"`.
///
/// # Errors
/// As for [`load_params_like`].
pub fn decode_params_like<F: Float>(
    bytes: &[u8],
    template: &Params<Tensor<F>>,
) -> Result<(Params<Tensor<F>>, Metadata)> {
    decode(bytes, IN_MEMORY, DtypePolicy::Exact, Some(template))
}

/// The file's bytes and its display name for errors.
fn read(path: &Path) -> Result<(Vec<u8>, String)> {
    let source = path.display().to_string();
    match std::fs::read(path) {
        Ok(bytes) => Ok((bytes, source)),
        Err(e) => Err(Error::File {
            path: source,
            reason: format!("cannot read: {e}"),
        }),
    }
}

/// Upper bound on the header size, as in the reference implementation.
const MAX_HEADER: u64 = 100_000_000;

/// Validates the header with precise messages, checks it against `template` if given,
/// then reads the tensors through the safetensors crate. `source` names the file in
/// errors.
fn decode<F: Float>(
    bytes: &[u8],
    source: &str,
    policy: DtypePolicy,
    template: Option<&Params<Tensor<F>>>,
) -> Result<(Params<Tensor<F>>, Metadata)> {
    let file_err = |reason| Error::File {
        path: source.to_string(),
        reason,
    };
    let header = validate_header(bytes).map_err(file_err)?;
    if let Some(template) = template {
        check_against(&header.tensors, template, source)?;
    }
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| file_err(format!("invalid safetensors file: {e}")))?;
    let mut params = Params::new();
    // Name order, so the first offending tensor reported is deterministic.
    let mut tensors = st.tensors();
    tensors.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (name, view) in tensors {
        let tensor = decode_tensor::<F>(&name, view.dtype(), view.shape(), view.data(), policy)
            .map_err(file_err)?;
        params.insert(name, tensor);
    }
    Ok((params, header.metadata))
}

/// The first difference, in name order, between the file's tensors and `template`.
fn check_against<F: Float>(
    file: &BTreeMap<String, (Dtype, Vec<u64>)>,
    template: &Params<Tensor<F>>,
    source: &str,
) -> Result<()> {
    let names: BTreeSet<&str> = file
        .keys()
        .map(String::as_str)
        .chain(template.names())
        .collect();
    let want = dtype_of::<F>();
    for name in names {
        let reason = match (file.get(name), template.get(name)) {
            (None, Some(t)) => format!(
                "missing from {source}: the model has a tensor of this name with shape {:?}",
                t.shape()
            ),
            (Some(_), None) => {
                format!("unexpected: {source} has a tensor of this name but the model does not")
            }
            (Some((dtype, _)), Some(_)) if *dtype != want => format!(
                "{source} stores it as {dtype:?} but the model uses {want:?} \
                 (load_params_with with DtypePolicy::Convert converts)"
            ),
            (Some((_, shape)), Some(t))
                if !shape
                    .iter()
                    .copied()
                    .eq(t.shape().iter().map(|&d| d as u64)) =>
            {
                format!(
                    "{source} has shape {shape:?} but the model expects {:?}",
                    t.shape()
                )
            }
            _ => continue,
        };
        return Err(Error::Params {
            name: name.to_string(),
            reason,
        });
    }
    Ok(())
}

fn decode_tensor<F: Float>(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
    policy: DtypePolicy,
) -> std::result::Result<Tensor<F>, String> {
    let want = dtype_of::<F>();
    if dtype != want && policy == DtypePolicy::Exact {
        return Err(format!(
            "tensor `{name}`: field `dtype` is {dtype:?} but {want:?} was requested \
             (use DtypePolicy::Convert to convert)"
        ));
    }
    let values: Vec<F> = if dtype == want {
        // Bit-exact: decode as the stored type, which is F itself.
        let v: Box<dyn Any> = if want == Dtype::F32 {
            Box::new(
                le_chunks::<4>(data)
                    .map(f32::from_le_bytes)
                    .collect::<Vec<f32>>(),
            )
        } else {
            Box::new(
                le_chunks::<8>(data)
                    .map(f64::from_le_bytes)
                    .collect::<Vec<f64>>(),
            )
        };
        *v.downcast::<Vec<F>>()
            .expect("dtype_of::<F>() matches the decoded element type")
    } else {
        match dtype {
            Dtype::F64 => le_chunks::<8>(data)
                .map(|b| F::c(f64::from_le_bytes(b)))
                .collect(),
            Dtype::F32 => le_chunks::<4>(data)
                .map(|b| F::c(f32::from_le_bytes(b) as f64))
                .collect(),
            Dtype::F16 => le_chunks::<2>(data)
                .map(|b| F::c(f16_to_f32(u16::from_le_bytes(b)) as f64))
                .collect(),
            Dtype::BF16 => le_chunks::<2>(data)
                .map(|b| F::c(f32::from_bits((u16::from_le_bytes(b) as u32) << 16) as f64))
                .collect(),
            other => {
                return Err(format!(
                    "tensor `{name}`: field `dtype` is {other:?}, which cannot be converted to \
                     {want:?} (supported: F64, F32, F16, BF16)"
                ));
            }
        }
    };
    Tensor::from_vec(shape, values)
        .map_err(|e| format!("tensor `{name}`: data does not match field `shape`: {e}"))
}

fn le_chunks<const N: usize>(data: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    data.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

/// IEEE 754 binary16 to binary32 (exact).
fn f16_to_f32(h: u16) -> f32 {
    let sign = if h & 0x8000 != 0 { -1.0f32 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let man = f32::from(h & 0x3ff);
    match exp {
        0 => sign * man * 2f32.powi(-24),
        31 if man == 0.0 => sign * f32::INFINITY,
        31 => f32::NAN,
        e => sign * (1.0 + man / 1024.0) * 2f32.powi(e - 15),
    }
}

/// What a validated header holds.
struct Header {
    metadata: Metadata,
    /// Each tensor's dtype and shape, by name.
    tensors: BTreeMap<String, (Dtype, Vec<u64>)>,
}

/// Checks the length prefix, header JSON, metadata and every tensor entry, naming the
/// offending field.
fn validate_header(bytes: &[u8]) -> std::result::Result<Header, String> {
    let Some(prefix) = bytes.get(..8) else {
        return Err(format!(
            "file is {} bytes, too short for the 8-byte header length that starts a \
             safetensors file (truncated or not safetensors)",
            bytes.len()
        ));
    };
    let n = u64::from_le_bytes(prefix.try_into().expect("8 bytes"));
    let available = (bytes.len() - 8) as u64;
    if n > MAX_HEADER {
        return Err(format!(
            "header length field says {n} bytes, over the {MAX_HEADER}-byte limit \
             (corrupt or not safetensors)"
        ));
    }
    if n > available {
        return Err(format!(
            "header length field says {n} bytes but only {available} bytes follow \
             (truncated or not safetensors)"
        ));
    }
    let n = n as usize;
    let header = std::str::from_utf8(&bytes[8..8 + n])
        .map_err(|e| format!("header is not UTF-8: {e} (corrupt or not safetensors)"))?;
    let header: Json = serde_json::from_str(header)
        .map_err(|e| format!("header is not valid JSON: {e} (corrupt or not safetensors)"))?;
    let Json::Object(entries) = header else {
        return Err("header is not a JSON object".into());
    };
    let data_len = bytes.len() - 8 - n;
    let mut metadata = Metadata::new();
    let mut tensors = BTreeMap::new();
    let mut spans = Vec::new();
    for (name, entry) in &entries {
        if name == METADATA_KEY {
            let Json::Object(m) = entry else {
                return Err(format!("field `{METADATA_KEY}` is not a JSON object"));
            };
            for (k, v) in m {
                let Json::String(v) = v else {
                    return Err(format!(
                        "field `{METADATA_KEY}`: value of key `{k}` is not a string"
                    ));
                };
                metadata.insert(k.clone(), v.clone());
            }
            continue;
        }
        let field = |f: &str| {
            entry
                .get(f)
                .ok_or_else(|| format!("tensor `{name}`: field `{f}` is missing"))
        };
        if !entry.is_object() {
            return Err(format!("tensor `{name}`: entry is not a JSON object"));
        }
        let dtype_json = field("dtype")?;
        let dtype: Dtype = serde_json::from_value(dtype_json.clone()).map_err(|_| {
            format!("tensor `{name}`: field `dtype` has unknown value {dtype_json}")
        })?;
        let shape = uint_array(field("shape")?).ok_or_else(|| {
            format!("tensor `{name}`: field `shape` is not an array of non-negative integers")
        })?;
        let offsets = uint_array(field("data_offsets")?)
            .filter(|o| o.len() == 2)
            .ok_or_else(|| {
                format!(
                    "tensor `{name}`: field `data_offsets` is not a pair of non-negative integers"
                )
            })?;
        // ndarray indexes with `isize`: the product of the non-zero axes must fit, even
        // for an empty tensor (e.g. shape [0, 2^32, 2^32]).
        let indexable = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .is_some_and(|n| n <= isize::MAX as u64);
        if !indexable {
            return Err(format!(
                "tensor `{name}`: field `shape` {shape:?} is too large to index on this platform"
            ));
        }
        let (begin, end) = (offsets[0], offsets[1]);
        if begin > end {
            return Err(format!(
                "tensor `{name}`: field `data_offsets` [{begin}, {end}] has begin after end"
            ));
        }
        let need = shape
            .iter()
            .try_fold(dtype.bitsize() as u64, |acc, &d| acc.checked_mul(d))
            .map(|bits| bits.div_ceil(8));
        if need != Some(end - begin) {
            let need = need.map_or("more than 2^64".to_string(), |b| b.to_string());
            return Err(format!(
                "tensor `{name}`: field `data_offsets` [{begin}, {end}] spans {} bytes but \
                 field `shape` {shape:?} of dtype {dtype:?} needs {need} bytes",
                end - begin
            ));
        }
        if end > data_len as u64 {
            return Err(format!(
                "tensor `{name}`: field `data_offsets` [{begin}, {end}] runs past the end of \
                 the {data_len}-byte data section (truncated file?)"
            ));
        }
        spans.push((begin, end, name));
        tensors.insert(name.clone(), (dtype, shape));
    }
    // The data section must be tiled by the tensors, without gaps or overlaps.
    spans.sort();
    let mut pos = 0;
    for &(begin, end, name) in &spans {
        if begin != pos {
            return Err(format!(
                "tensor `{name}`: field `data_offsets` [{begin}, {end}] {} the previous \
                 tensor, which ends at {pos}",
                if begin < pos {
                    "overlaps"
                } else {
                    "leaves a gap after"
                }
            ));
        }
        pos = end;
    }
    if pos != data_len as u64 {
        return Err(format!(
            "the data section is {data_len} bytes but the tensors cover {pos} \
             (trailing bytes after the last tensor)"
        ));
    }
    Ok(Header { metadata, tensors })
}

fn uint_array(v: &Json) -> Option<Vec<u64>> {
    v.as_array()?.iter().map(Json::as_u64).collect()
}

/// Metadata key of the checksum written by [`encode_checked`].
pub const CHECKSUM_KEY: &str = "checksum";

/// FNV-1a (64-bit) over the data section (the bytes after the header) and every
/// metadata entry except the checksum itself, as 16 hex digits. Detects truncation and
/// corruption (it is not a cryptographic hash).
fn checksum_of(bytes: &[u8], metadata: &Metadata) -> std::result::Result<String, String> {
    let n = bytes
        .get(..8)
        .map(|p| u64::from_le_bytes(p.try_into().expect("8 bytes")) as usize)
        .ok_or("file too short for a safetensors header")?;
    let data = bytes
        .get(8usize.saturating_add(n)..)
        .ok_or("header runs past the end of the file")?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: &[u8]| {
        for &x in b {
            h = (h ^ u64::from(x)).wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(data);
    for (k, v) in metadata.iter().filter(|(k, _)| *k != CHECKSUM_KEY) {
        eat(k.as_bytes());
        eat(&[0]);
        eat(v.as_bytes());
        eat(&[0]);
    }
    Ok(format!("{h:016x}"))
}

/// Like [`encode_params`], plus a [`CHECKSUM_KEY`] metadata entry covering the tensor
/// data and the other metadata, which [`decode_checked`] verifies.
///
/// # Errors
/// As [`encode_params`]; [`Error::Params`] if `metadata` already has a `checksum` key.
pub fn encode_checked<F: Float>(
    params: &Params<Tensor<F>>,
    metadata: &[(&str, &str)],
) -> Result<Vec<u8>> {
    if metadata.iter().any(|(k, _)| *k == CHECKSUM_KEY) {
        return Err(Error::Params {
            name: CHECKSUM_KEY.into(),
            reason: "this metadata key is reserved for the checksum".into(),
        });
    }
    let plain = encode_params(params, metadata)?;
    let meta: Metadata = metadata
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let sum = checksum_of(&plain, &meta).map_err(Error::Usage)?;
    let mut with_sum = metadata.to_vec();
    with_sum.push((CHECKSUM_KEY, &sum));
    encode_params(params, &with_sum)
}

/// Parses bytes written by [`encode_checked`], refusing a file whose checksum is
/// missing or does not match (truncated or corrupted). `path` names the file in errors.
///
/// # Errors
/// [`Error::File`] naming `path` and what is wrong.
pub fn decode_checked<F: Float>(
    path: &str,
    bytes: &[u8],
    policy: DtypePolicy,
) -> Result<(Params<Tensor<F>>, Metadata)> {
    let err = |reason: String| Error::File {
        path: path.to_string(),
        reason,
    };
    let (params, metadata) = decode(bytes, path, policy, None)?;
    let Some(stored) = metadata.get(CHECKSUM_KEY) else {
        return Err(err(format!(
            "no `{CHECKSUM_KEY}` metadata entry (not written by datarater, or damaged)"
        )));
    };
    let actual = checksum_of(bytes, &metadata).map_err(err)?;
    if *stored != actual {
        return Err(err(format!(
            "checksum mismatch (stored {stored}, computed {actual}): the file is corrupted"
        )));
    }
    Ok((params, metadata))
}

/// Writes `bytes` to `path` atomically: to a temporary file in the same directory,
/// flushed to disk (fsync), then renamed over `path`. A reader (or a process killed at
/// any moment) sees the old file or the new one, never part of one.
///
/// # Errors
/// [`Error::File`] naming the path if any step fails (the temporary file is removed).
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let path = path.as_ref();
    let err = |e: std::io::Error| Error::File {
        path: path.display().to_string(),
        reason: format!("cannot write: {e}"),
    };
    let name = path.file_name().ok_or_else(|| Error::File {
        path: path.display().to_string(),
        reason: "not a file path".into(),
    })?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        // Make the rename itself durable (best effort: not every platform can open a
        // directory for syncing).
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Ok(d) = std::fs::File::open(dir.unwrap_or(Path::new("."))) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

//! Checkpoints of meta-training: the whole [`TrainerState`] plus the run's configs, in
//! one checksummed safetensors file, written atomically.
//!
//! * **Tensors**: the rater `eta.*`; for member `i`, its parameters
//!   `member.{i}.theta.*`, its optimiser slots `member.{i}.opt.{j}.*` and its
//!   meta-optimiser state under `member.{i}.meta.*` (see [`StateTensors`]).
//! * **Metadata** (strings): `format` = `datarater-checkpoint`, `version`, `configs`
//!   (a JSON object the caller chooses: model shapes, training settings; checked on
//!   load), `state` (JSON: the outer step, and per member its age, RNG state,
//!   optimiser step count and meta-optimiser scalars), and a `checksum`
//!   ([`crate::io::encode_checked`]).
//!
//! A file is written to a temporary name, fsynced and renamed ([`write_atomic`]), so a
//! process killed at any moment leaves the previous complete checkpoint; a truncated
//! or corrupted file is refused by its checksum. Values round-trip bit for bit, and so
//! does each member's random stream, so a resumed run continues exactly as the
//! uninterrupted one would have.

use crate::autodiff::{Float, Params, Tensor};
use crate::error::{Error, Result};
use crate::io::{DtypePolicy, canonical_json, decode_checked, encode_checked, write_atomic};
use crate::optim::OptState;
use crate::rng::Rng;
use crate::trainer::{Member, MetaAdamState, TrainerState};
use serde_json::{Value as Json, json};
use std::path::Path;

/// Value of the `format` metadata entry.
pub const FORMAT: &str = "datarater-checkpoint";
/// Value of the `version` metadata entry.
pub const VERSION: &str = "1";

/// A piece of training state that a checkpoint can hold: tensors stored under a name
/// prefix, plus scalars as JSON.
pub trait StateTensors<F: Float>: Sized {
    /// Adds this state's tensors to `out` under `prefix.` and returns its scalars.
    fn store(&self, prefix: &str, out: &mut Params<Tensor<F>>) -> Json;
    /// Rebuilds the state from the tensors under `prefix.` and the scalars `store` returned.
    ///
    /// # Errors
    /// [`Error::Config`] (`checkpoint`) if a scalar is missing or malformed.
    fn restore(prefix: &str, tensors: &Params<Tensor<F>>, scalars: &Json) -> Result<Self>;
}

fn bad(reason: String) -> Error {
    Error::Config {
        field: "checkpoint",
        reason,
    }
}

fn uint(v: &Json, key: &str, at: &str) -> Result<usize> {
    v.get(key)
        .and_then(Json::as_u64)
        .map(|x| x as usize)
        .ok_or_else(|| bad(format!("{at}: `{key}` is missing or not a whole number")))
}

/// A stateless meta-optimiser's state.
impl<F: Float> StateTensors<F> for () {
    fn store(&self, _: &str, _: &mut Params<Tensor<F>>) -> Json {
        Json::Null
    }
    fn restore(_: &str, _: &Params<Tensor<F>>, _: &Json) -> Result<Self> {
        Ok(())
    }
}

impl<F: Float> StateTensors<F> for OptState<Tensor<F>> {
    fn store(&self, prefix: &str, out: &mut Params<Tensor<F>>) -> Json {
        for (j, slot) in self.slots.iter().enumerate() {
            out.extend_scoped(&format!("{prefix}.{j}"), slot.clone());
        }
        json!({"step": self.step, "slots": self.slots.len()})
    }
    fn restore(prefix: &str, tensors: &Params<Tensor<F>>, scalars: &Json) -> Result<Self> {
        let slots = uint(scalars, "slots", prefix)?;
        Ok(OptState {
            step: uint(scalars, "step", prefix)?,
            slots: (0..slots)
                .map(|j| tensors.scope(&format!("{prefix}.{j}")))
                .collect(),
        })
    }
}

impl<F: Float> StateTensors<F> for MetaAdamState<F> {
    fn store(&self, prefix: &str, out: &mut Params<Tensor<F>>) -> Json {
        out.extend_scoped(&format!("{prefix}.m"), self.m.clone());
        out.extend_scoped(&format!("{prefix}.v"), self.v.clone());
        json!({"t": self.t})
    }
    fn restore(prefix: &str, tensors: &Params<Tensor<F>>, scalars: &Json) -> Result<Self> {
        Ok(MetaAdamState {
            m: tensors.scope(&format!("{prefix}.m")),
            v: tensors.scope(&format!("{prefix}.v")),
            t: uint(scalars, "t", prefix)?,
        })
    }
}

/// The checkpoint's bytes: `state` and the caller's `configs` (a JSON object).
///
/// # Errors
/// [`Error::Config`] (`configs`) if `configs` is not a JSON object.
pub fn encode_checkpoint<F: Float, M: StateTensors<F>>(
    state: &TrainerState<F, M>,
    configs: &Json,
) -> Result<Vec<u8>> {
    if !configs.is_object() {
        return Err(Error::Config {
            field: "configs",
            reason: "must be a JSON object".into(),
        });
    }
    let mut tensors = Params::new();
    tensors.extend_scoped("eta", state.eta.clone());
    let mut members = Vec::with_capacity(state.members.len());
    for (i, m) in state.members.iter().enumerate() {
        let p = format!("member.{i}");
        tensors.extend_scoped(&format!("{p}.theta"), m.theta.clone());
        let opt = m.opt_state.store(&format!("{p}.opt"), &mut tensors);
        let meta = m.meta_state.store(&format!("{p}.meta"), &mut tensors);
        members.push(json!({
            "age": m.age,
            "rng": format!("{:016x}", m.rng.state()),
            "opt": opt,
            "meta": meta,
        }));
    }
    let scalars = canonical_json(&json!({"step": state.step, "members": members}));
    let configs = canonical_json(configs);
    encode_checked(
        &tensors,
        &[
            ("format", FORMAT),
            ("version", VERSION),
            ("configs", &configs),
            ("state", &scalars),
        ],
    )
}

/// Writes a checkpoint atomically (see the module docs).
///
/// # Errors
/// As [`encode_checkpoint`] and [`write_atomic`].
pub fn save_checkpoint<F: Float, M: StateTensors<F>>(
    path: impl AsRef<Path>,
    state: &TrainerState<F, M>,
    configs: &Json,
) -> Result<()> {
    write_atomic(path, &encode_checkpoint(state, configs)?)
}

/// The configs recorded in a checkpoint, without decoding its state (to rebuild the
/// models before [`load_checkpoint`]).
///
/// # Errors
/// [`Error::File`] as for [`load_checkpoint`].
pub fn read_checkpoint_configs(path: impl AsRef<Path>) -> Result<Json> {
    let (name, bytes) = read(path.as_ref())?;
    let (_, meta) = decode_checked::<f64>(&name, &bytes, DtypePolicy::Convert)?;
    header(&name, &meta).map(|(configs, _)| configs)
}

fn read(path: &Path) -> Result<(String, Vec<u8>)> {
    let name = path.display().to_string();
    let bytes = std::fs::read(path).map_err(|e| Error::File {
        path: name.clone(),
        reason: format!("cannot read checkpoint: {e}"),
    })?;
    Ok((name, bytes))
}

fn header(name: &str, meta: &crate::io::Metadata) -> Result<(Json, Json)> {
    let err = |reason: String| Error::File {
        path: name.to_string(),
        reason,
    };
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| err(format!("not a datarater checkpoint: no `{k}` metadata")))
    };
    if get("format")? != FORMAT {
        return Err(err(format!("metadata `format` is not `{FORMAT}`")));
    }
    if get("version")? != VERSION {
        return Err(err(format!(
            "checkpoint version {} is not supported (this build reads {VERSION})",
            get("version")?
        )));
    }
    let parse = |k: &str| {
        serde_json::from_str::<Json>(get(k)?)
            .map_err(|e| err(format!("metadata `{k}` is not valid JSON: {e}")))
    };
    Ok((parse("configs")?, parse("state")?))
}

/// Every difference between two config objects, as `key: A (checkpoint) vs B
/// (requested)` phrases (nested keys joined with `.`).
pub fn config_differences(found: &Json, expected: &Json) -> Vec<String> {
    fn walk(path: &str, a: &Json, b: &Json, out: &mut Vec<String>) {
        match (a, b) {
            (Json::Object(x), Json::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                for k in keys {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        &p,
                        x.get(k).unwrap_or(&Json::Null),
                        y.get(k).unwrap_or(&Json::Null),
                        out,
                    );
                }
            }
            _ if a != b => out.push(format!("{path}: {a} (checkpoint) vs {b} (requested)")),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk("", found, expected, &mut out);
    out
}

/// Reads a checkpoint written by [`save_checkpoint`], refusing it unless its configs
/// equal `expected` (every difference is named) and its tensors are intact.
///
/// # Errors
/// [`Error::File`] naming the path: unreadable, not a checkpoint, truncated or
/// corrupted (checksum), or configs that differ from `expected`.
pub fn load_checkpoint<F: Float, M: StateTensors<F>>(
    path: impl AsRef<Path>,
    expected: &Json,
) -> Result<TrainerState<F, M>> {
    let (name, bytes) = read(path.as_ref())?;
    decode_checkpoint(&name, &bytes, expected)
}

/// Parses checkpoint bytes (what [`load_checkpoint`] does after reading the file;
/// errors name `name` as the file), so a checkpoint can also travel in memory, for
/// example from the process that read it to the others of a distributed run.
///
/// # Errors
/// As for [`load_checkpoint`].
pub fn decode_checkpoint<F: Float, M: StateTensors<F>>(
    name: &str,
    bytes: &[u8],
    expected: &Json,
) -> Result<TrainerState<F, M>> {
    let name = name.to_string();
    let (tensors, meta) = decode_checked::<F>(&name, bytes, DtypePolicy::Exact)?;
    let (configs, scalars) = header(&name, &meta)?;
    let diffs = config_differences(&configs, expected);
    if !diffs.is_empty() {
        return Err(Error::File {
            path: name,
            reason: format!(
                "the checkpoint was written with other settings: {}",
                diffs.join("; ")
            ),
        });
    }
    let in_file = |e: Error| Error::File {
        path: name.clone(),
        reason: e.to_string(),
    };
    let step = uint(&scalars, "step", "state").map_err(in_file)?;
    let entries = scalars
        .get("members")
        .and_then(Json::as_array)
        .ok_or_else(|| in_file(bad("state: `members` is missing".into())))?;
    let mut members = Vec::with_capacity(entries.len());
    for (i, m) in entries.iter().enumerate() {
        let p = format!("member.{i}");
        let rng = m
            .get("rng")
            .and_then(Json::as_str)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| in_file(bad(format!("{p}: `rng` is missing or malformed"))))?;
        let null = Json::Null;
        members.push(Member {
            theta: tensors.scope(&format!("{p}.theta")),
            opt_state: StateTensors::restore(
                &format!("{p}.opt"),
                &tensors,
                m.get("opt").unwrap_or(&null),
            )
            .map_err(in_file)?,
            meta_state: M::restore(
                &format!("{p}.meta"),
                &tensors,
                m.get("meta").unwrap_or(&null),
            )
            .map_err(in_file)?,
            age: uint(m, "age", &p).map_err(in_file)?,
            rng: Rng::from_state(rng),
        });
    }
    Ok(TrainerState {
        eta: tensors.scope("eta"),
        members,
        step,
    })
}

//! The rater file: a trained rater's parameters together with everything needed to use
//! it, in one safetensors file.
//!
//! Tensors: the [`SequenceScorer`]'s parameters. Metadata (strings):
//!
//! | key | value |
//! | --- | --- |
//! | `format` | `datarater-rater` |
//! | `version` | `1` |
//! | `rater_config` | the scorer's [`TransformerConfig`] as JSON (`vocab`, `d_model`, `n_layers`, `n_heads`, `d_ff`, `max_len`) |
//! | `seq_len` | the sequence length the rater was trained on (documents are cut into sequences of this many bytes) |
//! | `training` | the training settings as a JSON object (free-form, for the record) |
//! | `checksum` | see [`crate::io::encode_checked`] |
//!
//! Loading checks every tensor against the recorded config and names the first
//! mismatch, so a file of another shape is a clear error, never a panic.
//!
//! ```
//! use datarater::Rng;
//! use datarater::curate::rater_file::RaterFile;
//! use datarater::nn::{SequenceScorer, TransformerConfig};
//! let scorer = SequenceScorer::new(TransformerConfig::new(8, 1, 2, 16).with_d_ff(16))?;
//! let file = RaterFile {
//!     eta: scorer.init::<f32>(&mut Rng::new(0)),
//!     scorer,
//!     seq_len: 16,
//!     training: serde_json::json!({"outer_steps": 0}),
//! };
//! let path = std::env::temp_dir().join("datarater-rater-file-doc.safetensors");
//! file.save(&path)?;
//! let back = RaterFile::<f32>::load(&path)?;
//! assert_eq!(back.eta, file.eta);
//! assert_eq!(back.seq_len, 16);
//! # std::fs::remove_file(&path).unwrap();
//! # Ok::<(), datarater::Error>(())
//! ```

use super::documents::{Aggregate, DocumentScorer};
use crate::autodiff::{Float, Params, Tensor};
use crate::error::{Error, Result};
use crate::io::{
    DtypePolicy, Metadata, canonical_json, decode_checked, encode_checked, write_atomic,
};
use crate::nn::{SequenceScorer, TransformerConfig};
use crate::rng::Rng;
use serde_json::{Value as Json, json};
use std::path::Path;

/// Value of the `format` metadata entry.
pub const FORMAT: &str = "datarater-rater";
/// Value of the `version` metadata entry.
pub const VERSION: &str = "1";

/// A trained rater and what is needed to use it.
#[derive(Clone, Debug, PartialEq)]
pub struct RaterFile<F: Float> {
    /// The model.
    pub scorer: SequenceScorer,
    /// Bytes per sequence the rater was trained on.
    pub seq_len: usize,
    /// Training settings, for the record (a JSON object).
    pub training: Json,
    /// The parameters.
    pub eta: Params<Tensor<F>>,
}

/// A transformer config as a JSON object (`causal` is implied by the model kind and
/// not stored).
pub fn config_to_json(cfg: &TransformerConfig) -> Json {
    json!({
        "vocab": cfg.vocab,
        "d_model": cfg.d_model,
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "d_ff": cfg.d_ff,
        "max_len": cfg.max_len,
    })
}

/// Parses [`config_to_json`]'s output, naming a missing or malformed field.
///
/// # Errors
/// [`Error::Config`] (`config`) naming the field.
pub fn config_from_json(v: &Json, causal: bool) -> Result<TransformerConfig> {
    let field = |name: &str| {
        v.get(name)
            .and_then(Json::as_u64)
            .map(|x| x as usize)
            .ok_or_else(|| Error::Config {
                field: "config",
                reason: format!("field `{name}` is missing or not a whole number"),
            })
    };
    Ok(TransformerConfig {
        vocab: field("vocab")?,
        d_model: field("d_model")?,
        n_layers: field("n_layers")?,
        n_heads: field("n_heads")?,
        d_ff: field("d_ff")?,
        max_len: field("max_len")?,
        causal,
    })
}

/// The fields in which two configs differ, as `"d_model 32 (file) vs 64 (expected)"`
/// phrases joined by `, `; `None` when they agree.
pub fn config_mismatch(found: &TransformerConfig, expected: &TransformerConfig) -> Option<String> {
    let pairs = [
        ("vocab", found.vocab, expected.vocab),
        ("d_model", found.d_model, expected.d_model),
        ("n_layers", found.n_layers, expected.n_layers),
        ("n_heads", found.n_heads, expected.n_heads),
        ("d_ff", found.d_ff, expected.d_ff),
        ("max_len", found.max_len, expected.max_len),
    ];
    let diffs: Vec<String> = pairs
        .iter()
        .filter(|(_, a, b)| a != b)
        .map(|(n, a, b)| format!("{n} {a} (file) vs {b} (expected)"))
        .collect();
    (!diffs.is_empty()).then(|| diffs.join(", "))
}

/// Checks that `params` has exactly the tensors, with the shapes, that `scorer` needs.
///
/// # Errors
/// [`Error::Params`] naming the first missing, extra or wrongly shaped tensor.
pub fn check_params<F: Float>(scorer: &SequenceScorer, params: &Params<Tensor<F>>) -> Result<()> {
    scorer.init::<F>(&mut Rng::new(0)).check_like(params)
}

impl<F: Float> RaterFile<F> {
    /// The file's bytes (safetensors with metadata and checksum).
    ///
    /// # Errors
    /// [`Error::Params`] if `eta` does not fit the scorer.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        check_params(&self.scorer, &self.eta)?;
        let cfg = canonical_json(&config_to_json(&self.scorer.cfg));
        let seq_len = self.seq_len.to_string();
        let training = canonical_json(&self.training);
        encode_checked(
            &self.eta,
            &[
                ("format", FORMAT),
                ("version", VERSION),
                ("rater_config", &cfg),
                ("seq_len", &seq_len),
                ("training", &training),
            ],
        )
    }

    /// Writes the file atomically (see [`write_atomic`]).
    ///
    /// # Errors
    /// As [`RaterFile::to_bytes`] and [`write_atomic`].
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, &self.to_bytes()?)
    }

    /// Reads a rater file, converting the tensors to `F` if they were saved in another
    /// float type.
    ///
    /// # Errors
    /// [`Error::File`] naming the path and the problem: unreadable, not safetensors,
    /// not a rater file, corrupted (checksum), or tensors that do not fit the recorded
    /// config.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|e| Error::File {
            path: name.clone(),
            reason: format!("cannot read: {e}"),
        })?;
        Self::from_bytes(&name, &bytes)
    }

    /// Parses a rater file's bytes; `name` is used in errors.
    ///
    /// # Errors
    /// As [`RaterFile::load`].
    pub fn from_bytes(name: &str, bytes: &[u8]) -> Result<Self> {
        let err = |reason: String| Error::File {
            path: name.to_string(),
            reason,
        };
        let (eta, meta) =
            decode_checked::<F>(name, bytes, DtypePolicy::Convert).map_err(|e| match e {
                Error::File { reason, .. } => err(format!("not a usable rater file: {reason}")),
                other => other,
            })?;
        let get = |key: &str, m: &Metadata| {
            m.get(key).cloned().ok_or_else(|| {
                err(format!(
                    "not a datarater rater file: metadata entry `{key}` is missing"
                ))
            })
        };
        let format = get("format", &meta)?;
        if format != FORMAT {
            return Err(err(format!(
                "metadata `format` is `{format}`, expected `{FORMAT}`"
            )));
        }
        let version = get("version", &meta)?;
        if version != VERSION {
            return Err(err(format!(
                "rater file version {version} is not supported (this build reads version {VERSION})"
            )));
        }
        let parse = |key: &str, text: String| {
            serde_json::from_str::<Json>(&text)
                .map_err(|e| err(format!("metadata `{key}` is not valid JSON: {e}")))
        };
        let cfg = parse("rater_config", get("rater_config", &meta)?)?;
        let cfg = config_from_json(&cfg, false)
            .map_err(|e| err(format!("metadata `rater_config`: {e}")))?;
        let scorer =
            SequenceScorer::new(cfg).map_err(|e| err(format!("metadata `rater_config`: {e}")))?;
        let seq_len: usize = get("seq_len", &meta)?
            .parse()
            .map_err(|_| err("metadata `seq_len` is not a whole number".into()))?;
        if seq_len == 0 || seq_len > scorer.cfg.max_len {
            return Err(err(format!(
                "metadata `seq_len` {seq_len} is not in 1..={} (the rater's max_len)",
                scorer.cfg.max_len
            )));
        }
        let training = parse("training", get("training", &meta)?)?;
        check_params(&scorer, &eta).map_err(|e| {
            err(format!(
                "the tensors do not fit the rater config recorded in the file ({}): {e}",
                config_to_json(&scorer.cfg)
            ))
        })?;
        Ok(RaterFile {
            scorer,
            seq_len,
            training,
            eta,
        })
    }

    /// Refuses the file unless its rater has the `expected` shape.
    ///
    /// # Errors
    /// [`Error::Config`] (`rater_config`) listing every differing field.
    pub fn expect_config(&self, expected: &TransformerConfig) -> Result<()> {
        match config_mismatch(&self.scorer.cfg, expected) {
            None => Ok(()),
            Some(diff) => Err(Error::Config {
                field: "rater_config",
                reason: format!("the rater file's model differs: {diff}"),
            }),
        }
    }

    /// A [`DocumentScorer`] over this rater at its training sequence length.
    ///
    /// # Errors
    /// As [`DocumentScorer::new`].
    pub fn document_scorer(
        &self,
        aggregate: Aggregate,
        batch_size: usize,
    ) -> Result<DocumentScorer<F>> {
        DocumentScorer::new(&self.scorer, &self.eta, self.seq_len, aggregate, batch_size)
    }
}

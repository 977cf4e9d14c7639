//! Output shards that make a run resumable: each is written under a temporary name
//! and renamed when complete, and just before the rename a record of what produced it
//! is written beside it (`DIR/.datarater/NAME.json`: the input shard's size and
//! checksum, the settings with the rater's checksum, the output's size and checksum).
//!
//! A rerun finds each output shard [`Done`](ShardState::Done) (its record matches the
//! settings and input, and the file its recorded checksum: skipped) or to do (no file,
//! or a file that was being replaced when the run stopped). A record of other settings
//! or another input, or a file with no record, is refused unless `--force`.

use crate::error::{CliError, Result, io_error};
use crate::fail;
use crate::input::Shard;
use crate::output::{Digest, write_atomic};
use datarater::distributed::Communicator;
use serde_json::{Value as Json, json};
use std::path::{Path, PathBuf};

/// The record of `out`: `.datarater/NAME.json` in its directory.
pub fn record_path(out: &Path) -> PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".json");
    out.with_file_name(".datarater").join(name)
}

/// Whether an output shard must be written.
#[derive(Clone, Debug, PartialEq)]
pub enum ShardState {
    /// Complete from an earlier run with the same settings; its recorded counts.
    Done(Json),
    /// To write.
    Todo,
}

/// What a record says about the run that wrote it.
fn record(input: Digest, settings: &Json, output: Digest, counts: &Json) -> Json {
    json!({
        "datarater": "shard-record",
        "version": 1,
        "input": input.to_json(),
        "settings": settings,
        "output": output.to_json(),
        "counts": counts,
    })
}

/// Writes the record of `out` (before `out` is renamed into place).
///
/// # Errors
/// The record cannot be written.
pub fn write_record(
    out: &Path,
    input: Digest,
    settings: &Json,
    output: Digest,
    counts: &Json,
) -> Result<()> {
    let text = serde_json::to_string_pretty(&record(input, settings, output, counts))
        .expect("JSON values serialise");
    write_atomic(&record_path(out), format!("{text}\n").as_bytes())
}

/// The first key whose value differs between two settings objects, with both values.
fn first_difference(recorded: &Json, now: &Json) -> String {
    let empty = serde_json::Map::new();
    let (a, b) = (
        recorded.as_object().unwrap_or(&empty),
        now.as_object().unwrap_or(&empty),
    );
    for (k, v) in b {
        let r = a.get(k).unwrap_or(&Json::Null);
        if r != v {
            return format!("{k}: {r} then, {v} now");
        }
    }
    a.keys()
        .find(|k| !b.contains_key(*k))
        .map_or("the record's format".into(), |k| {
            format!("{k} (no longer set)")
        })
}

/// The state of output shard `out` for input `input` under `settings` (see the module
/// docs).
///
/// # Errors
/// `out` exists without a record, or its record is of other settings or another
/// input, and `force` is not set; or a record cannot be read.
pub fn state(out: &Path, input: Digest, settings: &Json, force: bool) -> Result<ShardState> {
    let rec_path = record_path(out);
    let exists = out.exists();
    if !rec_path.exists() {
        if exists && !force {
            fail!(
                "{}: the output file exists and was not written by a datarater run with a record (pass --force to overwrite it)",
                out.display()
            );
        }
        return Ok(ShardState::Todo);
    }
    let text =
        std::fs::read_to_string(&rec_path).map_err(|e| io_error(&rec_path, "cannot read", e))?;
    let rec: Json = serde_json::from_str(&text)
        .map_err(|e| CliError(format!("{}: not a shard record: {e}", rec_path.display())))?;
    if force {
        return Ok(ShardState::Todo);
    }
    if rec["settings"] != *settings {
        fail!(
            "{}: was written with other settings ({}); rerun with the same settings and rater to continue that run, or pass --force to redo it",
            out.display(),
            first_difference(&rec["settings"], settings)
        );
    }
    if rec["input"] != input.to_json() {
        fail!(
            "{}: was written from another version of its input shard (size and checksum {} then, {} now); pass --force to redo it",
            out.display(),
            rec["input"],
            input.to_json()
        );
    }
    if exists && rec["output"] == Digest::of_file(out)?.to_json() {
        return Ok(ShardState::Done(rec["counts"].clone()));
    }
    // The run stopped between writing the record and renaming the shard.
    Ok(ShardState::Todo)
}

/// The digests of `shards` and the states of their outputs `outs`, found by rank 0
/// and shared with every rank. Collective.
///
/// # Errors
/// As [`state`], on every rank.
pub fn plan(
    shards: &[Shard],
    outs: &[PathBuf],
    settings: &Json,
    force: bool,
    comm: &dyn Communicator,
) -> Result<(Vec<Digest>, Vec<ShardState>)> {
    let local = if comm.rank() == 0 {
        (|| {
            let mut v = Vec::with_capacity(shards.len());
            for (s, out) in shards.iter().zip(outs) {
                let d = Digest::of_file(&s.path)?;
                let st = match state(out, d, settings, force)? {
                    ShardState::Done(c) => c,
                    ShardState::Todo => Json::Null,
                };
                v.push(json!([d.bytes, d.xxh64, st]));
            }
            Ok(serde_json::to_vec(&v).expect("JSON values serialise"))
        })()
        .map_err(|e: CliError| datarater::Error::Usage(e.0))
    } else {
        Ok(Vec::new())
    };
    let bytes = comm.broadcast_result(local, 0)?;
    let v: Vec<(u64, u64, Json)> =
        serde_json::from_slice(&bytes).map_err(|e| CliError(format!("bad plan: {e}")))?;
    Ok(v.into_iter()
        .map(|(bytes, xxh64, st)| {
            (
                Digest { bytes, xxh64 },
                if st.is_null() {
                    ShardState::Todo
                } else {
                    ShardState::Done(st)
                },
            )
        })
        .unzip())
}

/// Tests only: `DATARATER_TEST_SHARD_DELAY_MS` makes every shard written take at least
/// that long, so that a test can kill a run between shards (or in one).
pub fn test_delay() {
    if let Some(ms) = std::env::var_os("DATARATER_TEST_SHARD_DELAY_MS")
        .and_then(|v| v.to_str().and_then(|s| s.parse::<u64>().ok()))
    {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

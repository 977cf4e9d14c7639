//! Output files that are safe to write: an existing file is refused without `--force`,
//! the directory is checked for writing before any work (by creating the temporary
//! file there at once), and the file appears under its name only when complete
//! (temporary file, fsync, rename).
//!
//! Every file the command line writes goes through [`OutputFile`]: the outputs of
//! `score` and `filter`, and `train`'s checkpoint and rater file ([`replace`]). That
//! makes it the one place for the test-only fault injection: with
//! `DATARATER_FAULT_AFTER_BYTES=N` in the environment, the process aborts
//! (`std::process::abort`, like a crash) in the middle of the write that passes `N`
//! bytes in total, after writing the bytes up to `N`; the tests use it to show that a
//! crash while writing leaves the previous file (or none) and that a rerun completes.
//!
//! In a run on several MPI ranks, rank 0 alone writes: the other ranks hold a sink that
//! discards what is written, and creating and committing are agreed on, so every rank
//! sees rank 0's error (and no rank creates a file).

use crate::error::{Result, io_error};
use crate::input::compress::{Compression, Encoder};
use crate::{agree, fail, on_root};
use datarater::distributed::Communicator;
use std::fs::File;
use std::hash::Hasher;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use twox_hash::XxHash64;

/// The test-only fault injection's environment variable (see the module docs).
pub const FAULT_AFTER_BYTES: &str = "DATARATER_FAULT_AFTER_BYTES";

/// A file being written (or, on a rank other than 0, a sink); dropped without
/// [`OutputFile::commit`], it leaves nothing.
pub struct OutputFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<Encoder<Hashing<BufWriter<File>>>>,
}

/// The size and XXH64 checksum of a file's bytes: what resumption compares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    /// Size in bytes.
    pub bytes: u64,
    /// XXH64 (seed 0) of the bytes.
    pub xxh64: u64,
}

impl Digest {
    /// As JSON: `{"bytes": n, "xxh64": "16 hex digits"}`.
    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({"bytes": self.bytes, "xxh64": format!("{:016x}", self.xxh64)})
    }

    /// The digest of the file at `path`, read as a stream.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn of_file(path: &Path) -> Result<Digest> {
        let mut f = File::open(path).map_err(|e| io_error(path, "cannot read", e))?;
        let mut h = Hashing::new(std::io::sink());
        std::io::copy(&mut f, &mut h).map_err(|e| io_error(path, "cannot read", e))?;
        Ok(h.digest())
    }
}

/// A writer that hashes and counts what passes through it.
pub struct Hashing<W> {
    inner: W,
    hasher: XxHash64,
    bytes: u64,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            hasher: XxHash64::with_seed(0),
            bytes: 0,
        }
    }

    fn digest(&self) -> Digest {
        Digest {
            bytes: self.bytes,
            xxh64: self.hasher.finish(),
        }
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Refuses `path` if it exists and `force` is not set.
pub fn check_absent(path: &Path, force: bool) -> Result<()> {
    if !force && path.exists() {
        fail!(
            "{}: the output file exists (pass --force to overwrite it)",
            path.display()
        );
    }
    Ok(())
}

impl OutputFile {
    /// Starts writing `path` on rank 0 of `comm`, a sink on the other ranks (see the
    /// module docs). Collective.
    ///
    /// # Errors
    /// On every rank: `path` exists without `force`, is a directory, or its directory
    /// is missing or not writable.
    pub fn create(path: &Path, force: bool, comm: &dyn Communicator) -> Result<OutputFile> {
        let file = on_root(comm, || {
            check_absent(path, force)?;
            Self::open(path, Compression::None)
        })?;
        Ok(file.unwrap_or_else(|| OutputFile {
            path: path.to_path_buf(),
            tmp: PathBuf::new(),
            writer: None,
        }))
    }

    /// Starts writing an output shard at `path` (compressed), creating its directory
    /// and removing the temporary files of earlier runs that were killed; whether
    /// `path` may be replaced was decided by the caller. Collective, as
    /// [`OutputFile::create`].
    ///
    /// # Errors
    /// On every rank: `path` is a directory, or its directory cannot be created or
    /// written.
    pub fn create_shard(
        path: &Path,
        compression: Compression,
        comm: &dyn Communicator,
    ) -> Result<OutputFile> {
        let file = on_root(comm, || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| io_error(dir, "cannot write the output directory", e))?;
                remove_stale_temporaries(path);
            }
            Self::open(path, compression)
        })?;
        Ok(file.unwrap_or_else(|| OutputFile {
            path: path.to_path_buf(),
            tmp: PathBuf::new(),
            writer: None,
        }))
    }

    fn open(path: &Path, compression: Compression) -> Result<OutputFile> {
        if path.is_dir() {
            fail!("{}: is a directory, not an output file", path.display());
        }
        let Some(name) = path.file_name() else {
            fail!("{}: not a file name", path.display());
        };
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let file = File::create(&tmp)
            .map_err(|e| io_error(dir, "cannot write the output file's directory", e))?;
        let writer = compression
            .encoder(Hashing::new(BufWriter::with_capacity(1 << 16, file)))
            .map_err(|e| io_error(path, "cannot write", e))?;
        Ok(OutputFile {
            path: path.to_path_buf(),
            tmp,
            writer: Some(writer),
        })
    }

    /// Appends bytes (a sink drops them).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => {
                fault_injection(w, bytes);
                w.write_all(bytes)
                    .map_err(|e| io_error(&self.path, "cannot write", e))
            }
            None => Ok(()),
        }
    }

    /// Flushes, syncs and renames the file into place (on rank 0). Collective.
    ///
    /// # Errors
    /// Rank 0's failure to write, on every rank.
    pub fn commit(self, comm: &dyn Communicator) -> Result<()> {
        self.commit_with(comm, |_| Ok(()))
    }

    /// As [`OutputFile::commit`], calling `before_rename` with the digest of the
    /// complete file (on rank 0) between syncing it and renaming it into place: a
    /// record written there exists whenever the file does.
    ///
    /// # Errors
    /// Rank 0's failure to write (or `before_rename`'s), on every rank.
    pub fn commit_with(
        mut self,
        comm: &dyn Communicator,
        before_rename: impl FnOnce(Digest) -> Result<()>,
    ) -> Result<()> {
        let written = match self.writer.take() {
            Some(w) => self.finish(w, before_rename),
            None => Ok(()), // a sink
        };
        agree(comm, written)
    }

    fn finish(
        &self,
        w: Encoder<Hashing<BufWriter<File>>>,
        before_rename: impl FnOnce(Digest) -> Result<()>,
    ) -> Result<()> {
        let hashing = w
            .finish()
            .map_err(|e| io_error(&self.path, "cannot write", e))?;
        let digest = hashing.digest();
        let file = hashing
            .inner
            .into_inner()
            .map_err(|e| io_error(&self.path, "cannot write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_error(&self.path, "cannot write", e))?;
        before_rename(digest)?;
        std::fs::rename(&self.tmp, &self.path)
            .map_err(|e| io_error(&self.path, "cannot write", e))?;
        // Make the rename itself durable (best effort: not every platform can open a
        // directory for syncing).
        let dir = self.path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Ok(d) = File::open(dir.unwrap_or(Path::new("."))) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// Replaces `path` atomically with `bytes` (rank 0's; the other ranks pass `None`):
/// readers, and a process killed at any moment, see the old file or the new one.
/// Collective.
///
/// # Errors
/// Rank 0's failure to write, on every rank.
pub fn replace(path: &Path, bytes: Option<&[u8]>, comm: &dyn Communicator) -> Result<()> {
    let mut file = OutputFile::create(path, true, comm)?;
    let written = bytes.map_or(Ok(()), |b| file.write(b));
    agree(comm, written)?;
    file.commit(comm)
}

/// Test-only fault injection (see the module docs): if this write passes the limit,
/// writes the bytes up to it, flushes them and aborts the process.
fn fault_injection(w: &mut impl Write, bytes: &[u8]) {
    static LIMIT: OnceLock<Option<u64>> = OnceLock::new();
    static WRITTEN: AtomicU64 = AtomicU64::new(0);
    let limit = *LIMIT.get_or_init(|| {
        std::env::var(FAULT_AFTER_BYTES)
            .ok()
            .and_then(|v| v.parse().ok())
    });
    let Some(limit) = limit else { return };
    let len = bytes.len() as u64;
    let before = WRITTEN.fetch_add(len, Ordering::SeqCst);
    if before.saturating_add(len) > limit {
        let keep = limit.saturating_sub(before) as usize;
        let _ = w.write_all(&bytes[..keep]);
        let _ = w.flush();
        eprintln!("{FAULT_AFTER_BYTES}={limit}: aborting after writing {limit} bytes");
        std::process::abort();
    }
}

impl Write for OutputFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.writer.as_mut() {
            Some(w) => {
                fault_injection(w, buf);
                w.write(buf)
            }
            None => Ok(buf.len()),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self.writer.as_mut() {
            Some(w) => w.flush(),
            None => Ok(()),
        }
    }
}

/// Removes `.NAME.tmp-PID` files beside `path` left by runs that were killed.
fn remove_stale_temporaries(path: &Path) {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
///
/// # Errors
/// The file cannot be written.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot write", e))?;
    }
    let mut f = OutputFile::open(path, Compression::None)?;
    f.write(bytes)?;
    let w = f.writer.take().expect("opened");
    f.finish(w, |_| Ok(()))
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Not committed, or the commit failed: no trace (after a commit, no such file).
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

//! Output files that are safe to write: an existing file is refused without `--force`,
//! the directory is checked for writing before any work (by creating the temporary
//! file there at once), and the file appears under its name only when complete
//! (temporary file, fsync, rename).
//!
//! In a run on several MPI ranks, rank 0 alone writes: the other ranks hold a sink that
//! discards what is written, and creating and committing are agreed on, so every rank
//! sees rank 0's error (and no rank creates a file).

use crate::error::{Result, io_error};
use crate::{agree, fail, on_root};
use datarater::distributed::Communicator;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written (or, on a rank other than 0, a sink); dropped without
/// [`OutputFile::commit`], it leaves nothing.
pub struct OutputFile {
    path: PathBuf,
    tmp: PathBuf,
    writer: Option<BufWriter<File>>,
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
        let file = on_root(comm, || Self::open(path, force))?;
        Ok(file.unwrap_or_else(|| OutputFile {
            path: path.to_path_buf(),
            tmp: PathBuf::new(),
            writer: None,
        }))
    }

    fn open(path: &Path, force: bool) -> Result<OutputFile> {
        check_absent(path, force)?;
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
        Ok(OutputFile {
            path: path.to_path_buf(),
            tmp,
            writer: Some(BufWriter::with_capacity(1 << 16, file)),
        })
    }

    /// Appends bytes (a sink drops them).
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        match self.writer.as_mut() {
            Some(w) => w
                .write_all(bytes)
                .map_err(|e| io_error(&self.path, "cannot write", e)),
            None => Ok(()),
        }
    }

    /// Flushes, syncs and renames the file into place (on rank 0). Collective.
    ///
    /// # Errors
    /// Rank 0's failure to write, on every rank.
    pub fn commit(mut self, comm: &dyn Communicator) -> Result<()> {
        let written = match self.writer.take() {
            Some(w) => self.finish(w),
            None => Ok(()), // a sink
        };
        agree(comm, written)
    }

    fn finish(&self, w: BufWriter<File>) -> Result<()> {
        let file = w
            .into_inner()
            .map_err(|e| io_error(&self.path, "cannot write", e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_error(&self.path, "cannot write", e))?;
        std::fs::rename(&self.tmp, &self.path).map_err(|e| io_error(&self.path, "cannot write", e))
    }
}

impl Drop for OutputFile {
    fn drop(&mut self) {
        // Not committed, or the commit failed: no trace (after a commit, no such file).
        if !self.tmp.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

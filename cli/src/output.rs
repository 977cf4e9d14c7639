//! Output files that are safe to write: an existing file is refused without `--force`,
//! the directory is checked for writing before any work (by creating the temporary
//! file there at once), and the file appears under its name only when complete
//! (temporary file, fsync, rename).

use crate::error::{Result, io_error};
use crate::fail;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// A file being written; dropped without [`OutputFile::commit`], it leaves nothing.
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
    /// Starts writing `path` (see the module docs).
    ///
    /// # Errors
    /// If `path` exists without `force`, is a directory, or its directory is missing or
    /// not writable.
    pub fn create(path: &Path, force: bool) -> Result<OutputFile> {
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

    /// Appends bytes.
    pub fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let w = self.writer.as_mut().expect("not committed yet");
        w.write_all(bytes)
            .map_err(|e| io_error(&self.path, "cannot write", e))
    }

    /// Flushes, syncs and renames the file into place.
    pub fn commit(mut self) -> Result<()> {
        let w = self.writer.take().expect("committed once");
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
        if self.writer.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

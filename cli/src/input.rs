//! Streaming document readers: plain lines, blank-line-separated paragraphs and JSON
//! Lines, each optionally gzip-compressed (detected by its magic bytes), from a file or
//! a directory of files.
//!
//! A [`Document`] keeps its bytes exactly as they are in the input (`raw`, without the
//! separator that ends it) for writing back, the text the rater reads (`text`), the
//! file it came from and the 1-based line of its first byte. Only one document (one
//! line, one paragraph) is held at a time.

use crate::error::{CliError, Result, io_error};
use crate::fail;
use flate2::read::MultiGzDecoder;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// How a file is cut into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// From the file name, ignoring a `.gz` suffix: `.jsonl`, `.ndjson` and `.json` are
    /// JSON Lines, anything else is `lines`.
    Auto,
    /// One document per line (empty lines are not documents).
    Lines,
    /// Documents separated by one or more blank lines.
    Paragraphs,
    /// JSON Lines: one JSON object per line, the text in a string field.
    Jsonl,
}

impl Format {
    /// The format of `path` under `Auto`.
    pub fn detect(path: &Path) -> Format {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let name = name.strip_suffix(".gz").unwrap_or(&name);
        if [".jsonl", ".ndjson", ".json"]
            .iter()
            .any(|e| name.ends_with(e))
        {
            Format::Jsonl
        } else {
            Format::Lines
        }
    }

    /// The bytes written between two kept documents of this format.
    pub fn separator(self) -> &'static [u8] {
        match self {
            Format::Paragraphs => b"\n\n",
            _ => b"\n",
        }
    }
}

/// How to read an input.
#[derive(Clone, Debug)]
pub struct InputOptions {
    /// The format (per file under `Auto`).
    pub format: Format,
    /// The JSON field holding the text.
    pub text_field: String,
    /// Skip (and count) invalid JSON Lines instead of failing.
    pub skip_invalid: bool,
}

/// One document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// Index of its file in [`Input::sources`].
    pub source: usize,
    /// 1-based line of its first byte in the (decompressed) file.
    pub line: u64,
    /// Its bytes exactly as in the input, without the separator that ends it.
    pub raw: Vec<u8>,
    /// For JSON Lines, the text field's UTF-8 bytes; `None` when the text is `raw`.
    pub field: Option<Vec<u8>>,
}

impl Document {
    /// The text the rater reads.
    pub fn text(&self) -> &[u8] {
        self.field.as_deref().unwrap_or(&self.raw)
    }
}

/// A resolved input: its files (one, or a directory's, in name order) and their formats.
#[derive(Clone, Debug)]
pub struct Input {
    files: Vec<(PathBuf, Format)>,
    sources: Vec<String>,
    opts: InputOptions,
    total_bytes: u64,
}

/// Counts of a pass over the input.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadStats {
    /// Documents read.
    pub documents: u64,
    /// Invalid lines skipped (`--skip-invalid`).
    pub skipped: u64,
    /// Where the first skipped line was and why.
    pub first_skipped: Option<String>,
}

impl Input {
    /// Resolves `path` (a file or a directory, read recursively in name order, hidden
    /// files skipped) without reading documents; every file must open.
    ///
    /// # Errors
    /// A missing path, an unreadable file, or a directory with no files.
    pub fn open(path: &Path, opts: InputOptions) -> Result<Input> {
        let meta = std::fs::metadata(path).map_err(|e| io_error(path, "cannot open input", e))?;
        let mut files = Vec::new();
        if meta.is_dir() {
            list_files(path, &mut files)?;
            if files.is_empty() {
                fail!(
                    "{}: the directory contains no readable files (hidden files are skipped)",
                    path.display()
                );
            }
        } else {
            files.push(path.to_path_buf());
        }
        let mut total_bytes = 0;
        for f in &files {
            File::open(f).map_err(|e| io_error(f, "cannot open input", e))?;
            total_bytes += std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
        }
        let sources = files.iter().map(|f| f.display().to_string()).collect();
        let files = files
            .into_iter()
            .map(|f| {
                let fmt = match opts.format {
                    Format::Auto => Format::detect(&f),
                    other => other,
                };
                (f, fmt)
            })
            .collect();
        Ok(Input {
            files,
            sources,
            opts,
            total_bytes,
        })
    }

    /// The files, as they appear in `source` fields.
    pub fn sources(&self) -> &[String] {
        &self.sources
    }

    /// The format of source `i`.
    pub fn format_of(&self, i: usize) -> Format {
        self.files[i].1
    }

    /// Total size of the files on disk (compressed size for gzip files).
    pub fn total_bytes(&self) -> u64 {
        self.total_bytes
    }

    /// A new streaming pass over the documents. `progress` counts on-disk bytes read.
    pub fn documents(&self, progress: Arc<AtomicU64>) -> Documents<'_> {
        Documents {
            input: self,
            next_file: 0,
            reader: None,
            line: 0,
            buf: Vec::new(),
            stats: ReadStats::default(),
            progress,
            done: false,
        }
    }
}

fn list_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| io_error(dir, "cannot list directory", e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_files(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// Counts bytes read from the file on disk, for progress.
struct Counted<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The documents of an [`Input`], in order; see [`Input::documents`].
pub struct Documents<'a> {
    input: &'a Input,
    next_file: usize,
    reader: Option<Box<dyn BufRead + Send + 'a>>,
    line: u64,
    buf: Vec<u8>,
    /// Counts so far.
    pub stats: ReadStats,
    progress: Arc<AtomicU64>,
    done: bool,
}

/// `line` without its terminator (`\n` or `\r\n`).
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

impl Documents<'_> {
    fn source(&self) -> &str {
        &self.input.sources[self.next_file - 1]
    }

    fn open_next(&mut self) -> Result<bool> {
        let Some((path, _)) = self.input.files.get(self.next_file) else {
            return Ok(false);
        };
        let file = File::open(path).map_err(|e| io_error(path, "cannot open input", e))?;
        let mut raw = BufReader::with_capacity(
            1 << 16,
            Counted {
                inner: file,
                count: self.progress.clone(),
            },
        );
        let head = raw
            .fill_buf()
            .map_err(|e| io_error(path, "cannot read", e))?;
        let gz = head.starts_with(&[0x1f, 0x8b]);
        self.reader = Some(if gz {
            Box::new(BufReader::with_capacity(1 << 16, MultiGzDecoder::new(raw)))
        } else {
            Box::new(raw)
        });
        self.next_file += 1;
        self.line = 0;
        Ok(true)
    }

    /// Reads the next line (with its terminator) into `self.buf`; false at end of file.
    fn read_line(&mut self) -> Result<bool> {
        self.buf.clear();
        // No file open: nothing to read (`next` opens one before reading).
        let Some(reader) = self.reader.as_mut() else {
            return Ok(false);
        };
        let n = reader.read_until(b'\n', &mut self.buf).map_err(|e| {
            let path = &self.input.files[self.next_file - 1].0;
            io_error(path, "cannot read", e)
        })?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        Ok(true)
    }

    /// The next document of the open file, or `None` at its end.
    fn next_in_file(&mut self) -> Result<Option<Document>> {
        let source = self.next_file - 1;
        match self.input.files[source].1 {
            Format::Lines | Format::Auto => loop {
                if !self.read_line()? {
                    return Ok(None);
                }
                let raw = strip_eol(&self.buf);
                if !raw.is_empty() {
                    return Ok(Some(Document {
                        source,
                        line: self.line,
                        raw: raw.to_vec(),
                        field: None,
                    }));
                }
            },
            Format::Paragraphs => {
                let mut raw = Vec::new();
                let mut first = 0;
                loop {
                    let more = self.read_line()?;
                    if !more || is_blank(&self.buf) {
                        if !raw.is_empty() {
                            let len = strip_eol(&raw).len();
                            raw.truncate(len);
                            return Ok(Some(Document {
                                source,
                                line: first,
                                raw,
                                field: None,
                            }));
                        }
                        if !more {
                            return Ok(None);
                        }
                        continue;
                    }
                    if raw.is_empty() {
                        first = self.line;
                    }
                    raw.extend_from_slice(&self.buf);
                }
            }
            Format::Jsonl => loop {
                if !self.read_line()? {
                    return Ok(None);
                }
                if is_blank(&self.buf) {
                    continue;
                }
                let raw = strip_eol(&self.buf);
                match parse_jsonl(raw, &self.input.opts.text_field) {
                    Ok(text) => {
                        return Ok(Some(Document {
                            source,
                            line: self.line,
                            raw: raw.to_vec(),
                            field: Some(text),
                        }));
                    }
                    Err(reason) => {
                        let at = format!("{}:{}: {reason}", self.source(), self.line);
                        if !self.input.opts.skip_invalid {
                            fail!("{at} (use --skip-invalid to skip and count such lines)");
                        }
                        self.stats.skipped += 1;
                        self.stats.first_skipped.get_or_insert(at);
                    }
                }
            },
        }
    }
}

/// The text field of one JSON Lines record, or why the line is invalid.
fn parse_jsonl(raw: &[u8], field: &str) -> std::result::Result<Vec<u8>, String> {
    let line = std::str::from_utf8(raw)
        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
    let v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    match v.get(field) {
        Some(serde_json::Value::String(s)) => Ok(s.clone().into_bytes()),
        Some(_) => Err(format!("field `{field}` is not a string")),
        None => Err(format!(
            "no `{field}` field (choose the text field with --text-field)"
        )),
    }
}

impl Iterator for Documents<'_> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if self.done {
            return None;
        }
        loop {
            if self.reader.is_none() {
                match self.open_next() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        if self.stats.documents == 0 {
                            let what = match self.input.files.as_slice() {
                                [(f, _)] => f.display().to_string(),
                                _ => format!("{} input files", self.input.files.len()),
                            };
                            let skipped = if self.stats.skipped > 0 {
                                format!(" ({} invalid lines skipped)", self.stats.skipped)
                            } else {
                                String::new()
                            };
                            return Some(Err(CliError(format!(
                                "{what}: no documents found{skipped} (is the file empty, or is --format wrong?)"
                            ))));
                        }
                        return None;
                    }
                    Err(e) => {
                        self.done = true;
                        return Some(Err(e));
                    }
                }
            }
            match self.next_in_file() {
                Ok(Some(doc)) => {
                    self.stats.documents += 1;
                    return Some(Ok(doc));
                }
                Ok(None) => self.reader = None,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn read(content: &[u8], name: &str, format: Format) -> Result<Vec<Document>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let input = Input::open(
            &p,
            InputOptions {
                format,
                text_field: "text".into(),
                skip_invalid: false,
            },
        )?;
        input.documents(Arc::default()).collect()
    }

    #[test]
    fn lines_keep_bytes_and_line_numbers() {
        let docs = read(b"one\n\ntwo\r\nthree", "a.txt", Format::Auto).unwrap();
        let got: Vec<(&[u8], u64)> = docs.iter().map(|d| (&d.raw[..], d.line)).collect();
        assert_eq!(
            got,
            vec![(&b"one"[..], 1), (&b"two"[..], 3), (&b"three"[..], 4)]
        );
    }

    #[test]
    fn paragraphs_span_lines_exactly() {
        let docs = read(
            b"\n\nfirst para\r\nline two\n \n\nsecond\n",
            "p.txt",
            Format::Paragraphs,
        )
        .unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].raw, b"first para\r\nline two");
        assert_eq!(docs[0].line, 3);
        assert_eq!((&docs[1].raw[..], docs[1].line), (&b"second"[..], 7));
    }

    #[test]
    fn jsonl_reads_the_field_and_keeps_the_line() {
        let docs = read(
            b"{\"id\":1,\"text\":\"caf\\u00e9\"}\n\n{\"text\":\"x\"}\n",
            "d.jsonl",
            Format::Auto,
        )
        .unwrap();
        assert_eq!(docs[0].raw, b"{\"id\":1,\"text\":\"caf\\u00e9\"}");
        assert_eq!(docs[0].text(), "café".as_bytes());
        assert_eq!(docs[1].line, 3);
    }

    #[test]
    fn gzip_is_detected_by_magic_bytes() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"alpha\nbeta\n").unwrap();
        let bytes = gz.finish().unwrap();
        let docs = read(&bytes, "no-extension", Format::Lines).unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[1].raw, b"beta");
    }

    #[test]
    fn malformed_json_names_file_and_line() {
        let e = read(b"{\"text\":\"a\"}\n{oops\n", "bad.jsonl", Format::Jsonl).unwrap_err();
        assert!(e.0.contains("bad.jsonl:2: malformed JSON"), "{e}");
    }
}

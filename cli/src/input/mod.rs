//! Corpora as trees of shards, and one room per shard format: plain lines, blank-line
//! separated paragraphs and JSON Lines ([`text`]), Parquet ([`parquet`]); compression
//! (gzip, zstd) is a layer under the text formats ([`compress`]), detected by magic
//! bytes.
//!
//! Every shard's format is found on its own: magic bytes first (Parquet's `PAR1`, gzip,
//! zstd, and a list of formats we refuse by name: bzip2, xz, zip, ELF, ...), then the
//! extension. Bytes that are none of the supported formats are refused, never read as
//! text.
//!
//! A [`Document`] keeps its bytes exactly as they are in the input (`raw`, without the
//! separator that ends it; empty for Parquet, whose rows are copied by the Parquet
//! writer), the text the rater reads, its position and its id if the input has one.
//! Only one document (or one Parquet record batch) is held at a time.

pub mod compress;
pub mod parquet;
pub mod text;

use crate::error::{CliError, Result, io_error};
use crate::fail;
pub use compress::Compression;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

/// How a shard is cut into documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Per shard, from its magic bytes, then its extension (`.parquet` -> parquet;
    /// `.jsonl`, `.ndjson`, `.json` -> jsonl; other text -> lines), under a `.gz` or
    /// `.zst` suffix.
    Auto,
    /// One document per line (empty lines are not documents).
    Lines,
    /// Documents separated by one or more blank lines.
    Paragraphs,
    /// JSON Lines: one JSON object per line, the text in a string field.
    Jsonl,
    /// Apache Parquet: one document per row, the text in a string column.
    Parquet,
}

impl Format {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Lines => "lines",
            Format::Paragraphs => "paragraphs",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
        }
    }

    /// The format named `name` (as [`Format::name`] spells it).
    pub fn from_name(name: &str) -> Option<Format> {
        [
            Format::Auto,
            Format::Lines,
            Format::Paragraphs,
            Format::Jsonl,
            Format::Parquet,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }

    /// The bytes written between two kept documents of a text format.
    pub fn separator(self) -> &'static [u8] {
        match self {
            Format::Paragraphs => b"\n\n",
            _ => b"\n",
        }
    }
}

/// Magic bytes of formats that are not supported, with their names: such files are
/// refused by name instead of being read as text.
const REFUSED: &[(&[u8], &str)] = &[
    (b"BZh", "bzip2-compressed data"),
    (b"\xfd7zXZ\x00", "xz-compressed data"),
    (b"\x04\x22\x4d\x18", "lz4-compressed data"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"PK\x03\x04", "a zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"\x7fELF", "an ELF executable"),
    (b"MZ", "a Windows executable"),
    (b"\xcf\xfa\xed\xfe", "a Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "a Mach-O or Java class file"),
    (b"ARROW1", "an Arrow IPC file"),
    (b"ORC", "an ORC file"),
    (b"Obj\x01", "an Avro file"),
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"SQLite format 3", "an SQLite database"),
    (b"\x93NUMPY", "a NumPy array"),
];

/// Bytes of a file (after decompression) looked at to tell text from binary data.
const SNIFF: usize = 8192;

/// What `head` (a file's first bytes after any decompression) is if it is refused:
/// a known binary format, or binary data (a NUL byte).
fn refused(head: &[u8]) -> Option<&'static str> {
    REFUSED
        .iter()
        .find(|(magic, _)| head.starts_with(magic))
        .map(|(_, name)| *name)
        .or_else(|| {
            head.contains(&0)
                .then_some("binary data (it holds NUL bytes)")
        })
}

/// How to read an input.
#[derive(Clone, Debug)]
pub struct InputOptions {
    /// The format (per shard under `Auto`).
    pub format: Format,
    /// The JSON field or Parquet column holding the text.
    pub text_field: String,
    /// The JSON field or Parquet column holding a document id (copied into score
    /// records when present).
    pub id_field: String,
    /// Skip (and count) invalid records and corrupt shards instead of failing.
    pub skip_invalid: bool,
    /// Documents whose text is longer are skipped and counted (0: no limit).
    pub max_document_bytes: u64,
}

impl InputOptions {
    /// Options with the given format and every other setting at its default.
    pub fn with_format(format: Format) -> InputOptions {
        InputOptions {
            format,
            text_field: "text".into(),
            id_field: "id".into(),
            skip_invalid: false,
            max_document_bytes: 0,
        }
    }
}

/// One document.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// 1-based line of its first byte in the (decompressed) file; for Parquet, the
    /// 1-based row.
    pub line: u64,
    /// Its bytes exactly as in the input, without the separator that ends it (empty for
    /// Parquet).
    pub raw: Vec<u8>,
    /// For JSON Lines and Parquet, the text field's UTF-8 bytes; `None` when the text
    /// is `raw`.
    pub field: Option<Vec<u8>>,
    /// The id field's value, if the record has one.
    pub id: Option<serde_json::Value>,
}

impl Document {
    /// The text the rater reads.
    pub fn text(&self) -> &[u8] {
        self.field.as_deref().unwrap_or(&self.raw)
    }
}

/// One shard of a corpus: a file, its path relative to the corpus root, and its
/// detected format and compression.
#[derive(Clone, Debug)]
pub struct Shard {
    /// The file.
    pub path: PathBuf,
    /// Its path under the corpus root (its file name for a single-file corpus): the
    /// path of its output shard under an output directory.
    pub rel: PathBuf,
    /// Its format (never `Auto`).
    pub format: Format,
    /// Its compression (always `None` for Parquet, whose pages carry their own).
    pub compression: Compression,
    /// Its size on disk.
    pub bytes: u64,
}

/// Counts of a pass over a shard.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReadStats {
    /// Documents read.
    pub documents: u64,
    /// Invalid records skipped (`--skip-invalid`).
    pub skipped: u64,
    /// Documents skipped for being longer than `--max-document-bytes`.
    pub too_long: u64,
    /// Where the first skipped record was and why.
    pub first_skipped: Option<String>,
}

impl ReadStats {
    /// Adds another pass's counts.
    pub fn add(&mut self, o: &ReadStats) {
        self.documents += o.documents;
        self.skipped += o.skipped;
        self.too_long += o.too_long;
        if self.first_skipped.is_none() {
            self.first_skipped.clone_from(&o.first_skipped);
        }
    }
}

impl Shard {
    /// Detects the format and compression of `path` (see the module docs); `format`
    /// other than `Auto` overrides the extension (it cannot make Parquet of text or
    /// text of Parquet).
    ///
    /// # Errors
    /// The file cannot be read, or is none of the supported formats (named).
    pub fn detect(path: &Path, rel: PathBuf, format: Format) -> Result<Shard> {
        let mut file = File::open(path).map_err(|e| io_error(path, "cannot open input", e))?;
        let bytes = file
            .metadata()
            .map_err(|e| io_error(path, "cannot open input", e))?
            .len();
        let mut head = Vec::with_capacity(SNIFF);
        (&mut file)
            .take(SNIFF as u64)
            .read_to_end(&mut head)
            .map_err(|e| io_error(path, "cannot read", e))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().to_lowercase())
            .unwrap_or_default();
        let refuse = |what: &str| -> CliError {
            CliError(format!(
                "{}: is {what}, which is not a supported input (supported: text lines, paragraphs or JSON Lines, optionally gzip- or zstd-compressed, and Parquet)",
                path.display()
            ))
        };
        if head.starts_with(b"PAR1") {
            if !matches!(format, Format::Auto | Format::Parquet) {
                fail!(
                    "{}: is a Parquet file, but --format {} was given for it",
                    path.display(),
                    format.name()
                );
            }
            return Ok(Shard {
                path: path.to_path_buf(),
                rel,
                format: Format::Parquet,
                compression: Compression::None,
                bytes,
            });
        }
        if format == Format::Parquet || name.ends_with(".parquet") {
            fail!(
                "{}: is not a Parquet file (it does not start with the magic bytes PAR1)",
                path.display()
            );
        }
        let compression = Compression::detect(&head);
        // What the text reader will see: the decompressed head.
        let text_head = match compression {
            Compression::None => head,
            c => {
                let mut out = Vec::with_capacity(SNIFF);
                let reader = c
                    .decoder(std::io::BufReader::new(
                        File::open(path).map_err(|e| io_error(path, "cannot open input", e))?,
                    ))
                    .map_err(|e| io_error(path, "cannot read", e))?;
                reader
                    .take(SNIFF as u64)
                    .read_to_end(&mut out)
                    .map_err(|e| {
                        CliError(format!(
                            "{}: corrupt {} data: {e}",
                            path.display(),
                            c.name()
                        ))
                    })?;
                out
            }
        };
        if text_head.starts_with(b"PAR1") {
            return Err(refuse(&format!(
                "a {}-compressed Parquet file",
                compression.name()
            )));
        }
        if let Some(what) = refused(&text_head) {
            let what = match compression {
                Compression::None => what.to_string(),
                c => format!("{what} under {} compression", c.name()),
            };
            return Err(refuse(&what));
        }
        let format = match format {
            Format::Auto => {
                let base = compression.strip_suffix(&name);
                if [".jsonl", ".ndjson", ".json"]
                    .iter()
                    .any(|e| base.ends_with(e))
                {
                    Format::Jsonl
                } else {
                    Format::Lines
                }
            }
            f => f,
        };
        Ok(Shard {
            path: path.to_path_buf(),
            rel,
            format,
            compression,
            bytes,
        })
    }

    /// A new streaming pass over the shard's documents. `progress` counts on-disk bytes
    /// read.
    ///
    /// # Errors
    /// The shard cannot be opened (a Parquet footer that cannot be read, a missing text
    /// column, ...).
    pub fn documents<'a>(
        &'a self,
        opts: &'a InputOptions,
        progress: Arc<AtomicU64>,
    ) -> Result<Documents<'a>> {
        let inner = match self.format {
            Format::Parquet => Inner::Parquet(parquet::ParquetDocs::open(self, opts)?),
            _ => Inner::Text(text::TextDocs::open(self, opts, progress.clone())?),
        };
        Ok(Documents {
            shard: self,
            opts,
            inner,
            stats: ReadStats::default(),
            progress,
            done: false,
        })
    }
}

enum Inner<'a> {
    Text(text::TextDocs<'a>),
    Parquet(parquet::ParquetDocs),
}

/// The documents of a [`Shard`], in order; see [`Shard::documents`].
pub struct Documents<'a> {
    shard: &'a Shard,
    opts: &'a InputOptions,
    inner: Inner<'a>,
    /// Counts so far.
    pub stats: ReadStats,
    progress: Arc<AtomicU64>,
    done: bool,
}

/// What a format reader gives: a document, or an invalid record (with why), or the end.
pub(crate) enum Record {
    /// A document.
    Doc(Document),
    /// An invalid record at `line`, and why.
    Invalid(u64, String),
}

impl Iterator for Documents<'_> {
    type Item = Result<Document>;

    fn next(&mut self) -> Option<Result<Document>> {
        if self.done {
            return None;
        }
        loop {
            let next = match &mut self.inner {
                Inner::Text(t) => t.next_record(),
                Inner::Parquet(p) => p.next_record(&self.progress),
            };
            let at = |line: u64| format!("{}:{line}", self.shard.path.display());
            match next {
                Ok(Some(Record::Doc(doc))) => {
                    let limit = self.opts.max_document_bytes;
                    if limit > 0 && doc.text().len() as u64 > limit {
                        self.stats.too_long += 1;
                        continue;
                    }
                    self.stats.documents += 1;
                    return Some(Ok(doc));
                }
                Ok(Some(Record::Invalid(line, reason))) => {
                    let at = format!("{}: {reason}", at(line));
                    if !self.opts.skip_invalid {
                        self.done = true;
                        return Some(Err(CliError(format!(
                            "{at} (use --skip-invalid to skip and count such records)"
                        ))));
                    }
                    self.stats.skipped += 1;
                    self.stats.first_skipped.get_or_insert(at);
                }
                Ok(None) => {
                    self.done = true;
                    return None;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

/// A corpus: its shards in path order, and whether it was given as a single file.
#[derive(Clone, Debug)]
pub struct Corpus {
    /// The shards.
    pub shards: Vec<Shard>,
    /// One file given by name (its output is one file too).
    pub single_file: bool,
    /// With `--skip-invalid`, the files left out (relative path, why).
    pub invalid: Vec<(PathBuf, String)>,
}

impl Corpus {
    /// Resolves `spec`: a file, a directory (read recursively in name order, hidden
    /// files and directories skipped) or a glob pattern (`shards/*.jsonl.zst`), and
    /// detects each shard's format.
    ///
    /// # Errors
    /// A missing path, a pattern or directory matching no file, an unreadable file or
    /// one of an unsupported format (with `--skip-invalid`, listed in
    /// [`Corpus::invalid`] instead, unless it is the only file).
    pub fn open(spec: &Path, opts: &InputOptions) -> Result<Corpus> {
        let (root, files, single_file) = resolve(spec)?;
        let (mut shards, mut invalid) = (Vec::new(), Vec::new());
        for f in files {
            let rel = if single_file {
                PathBuf::from(f.file_name().unwrap_or_default())
            } else {
                f.strip_prefix(&root).unwrap_or(&f).to_path_buf()
            };
            match Shard::detect(&f, rel.clone(), opts.format) {
                Ok(s) => shards.push(s),
                Err(e) if opts.skip_invalid && !single_file => invalid.push((rel, e.0)),
                Err(e) => return Err(e),
            }
        }
        if shards.is_empty() {
            fail!(
                "{}: none of its {} files can be read (the first: {})",
                spec.display(),
                invalid.len(),
                invalid.first().map_or("", |(_, why)| why.as_str())
            );
        }
        Ok(Corpus {
            shards,
            single_file,
            invalid,
        })
    }

    /// Total size of the shards on disk.
    pub fn total_bytes(&self) -> u64 {
        self.shards.iter().map(|s| s.bytes).sum()
    }
}

/// The files of `spec` and the root their relative paths start from.
fn resolve(spec: &Path) -> Result<(PathBuf, Vec<PathBuf>, bool)> {
    let text = spec.to_string_lossy();
    let is_glob = text.contains(['*', '?', '[']) && !spec.exists();
    if is_glob {
        let paths = glob::glob(&text)
            .map_err(|e| CliError(format!("{text}: not a valid glob pattern: {e}")))?;
        let mut files = Vec::new();
        for p in paths {
            let p = p.map_err(|e| CliError(format!("{text}: {e}")))?;
            if p.is_file() {
                files.push(p);
            }
        }
        files.sort();
        if files.is_empty() {
            fail!("{text}: the pattern matches no file");
        }
        // Relative paths start at the pattern's longest directory without a wildcard.
        let mut root = PathBuf::new();
        for c in spec.components() {
            if c.as_os_str().to_string_lossy().contains(['*', '?', '[']) {
                break;
            }
            root.push(c);
        }
        return Ok((root, files, false));
    }
    let meta = std::fs::metadata(spec).map_err(|e| io_error(spec, "cannot open input", e))?;
    if meta.is_dir() {
        let mut files = Vec::new();
        list_files(spec, &mut files)?;
        if files.is_empty() {
            fail!(
                "{}: the directory contains no readable files (hidden files are skipped)",
                spec.display()
            );
        }
        Ok((spec.to_path_buf(), files, false))
    } else {
        Ok((PathBuf::new(), vec![spec.to_path_buf()], true))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn detect(content: &[u8], name: &str, format: Format) -> Result<Shard> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        Shard::detect(&p, name.into(), format)
    }

    #[test]
    fn formats_are_detected_by_magic_bytes_then_extension() {
        let s = detect(b"{\"text\":\"a\"}\n", "a.jsonl", Format::Auto).unwrap();
        assert_eq!(
            (s.format, s.compression),
            (Format::Jsonl, Compression::None)
        );
        let s = detect(b"plain\n", "a.txt", Format::Auto).unwrap();
        assert_eq!(s.format, Format::Lines);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(b"{}\n").unwrap();
        let s = detect(&gz.finish().unwrap(), "b.ndjson.gz", Format::Auto).unwrap();
        assert_eq!(
            (s.format, s.compression),
            (Format::Jsonl, Compression::Gzip)
        );
        let z = zstd::encode_all(&b"x\ny\n"[..], 3).unwrap();
        // zstd is found by content whatever the name says.
        let s = detect(&z, "c.jsonl", Format::Auto).unwrap();
        assert_eq!(
            (s.format, s.compression),
            (Format::Jsonl, Compression::Zstd)
        );
        let s = detect(&z, "noext", Format::Paragraphs).unwrap();
        assert_eq!(
            (s.format, s.compression),
            (Format::Paragraphs, Compression::Zstd)
        );
    }

    #[test]
    fn unsupported_formats_are_refused_by_name() {
        for (bytes, name, what) in [
            (&b"BZh91AY&SY"[..], "x.bz2", "bzip2"),
            (b"\x7fELF\x02\x01\x01", "prog", "ELF executable"),
            (b"PK\x03\x04rest", "x.zip", "zip archive"),
            (b"\xfd7zXZ\x00\x00", "x.jsonl.xz", "xz"),
            (b"text\x00with nul", "x.txt", "binary data"),
            (b"not parquet", "x.parquet", "not a Parquet file"),
        ] {
            let e = detect(bytes, name, Format::Auto).unwrap_err();
            assert!(e.0.contains(what) && e.0.contains(name), "{e}");
        }
        let z = zstd::encode_all(&b"\x7fELF\x02\x01"[..], 3).unwrap();
        let e = detect(&z, "x.zst", Format::Auto).unwrap_err();
        assert!(e.0.contains("ELF executable under zstd"), "{e}");
        let e = detect(b"PAR1....", "x.bin", Format::Jsonl).unwrap_err();
        assert!(e.0.contains("is a Parquet file"), "{e}");
    }
}

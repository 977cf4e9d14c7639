//! The text formats: one document per line, blank-line-separated paragraphs, and JSON
//! Lines (the text in a string field), over any [`Compression`](super::Compression).

use super::{Document, InputOptions, Record, Shard};
use crate::error::{Result, io_error};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// The documents of a text shard, in order.
pub(crate) struct TextDocs<'a> {
    shard: &'a Shard,
    opts: &'a InputOptions,
    reader: BufReader<Box<dyn Read + Send + 'a>>,
    line: u64,
    buf: Vec<u8>,
}

/// `line` without its terminator (`\n` or `\r\n`).
fn strip_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| b.is_ascii_whitespace())
}

impl<'a> TextDocs<'a> {
    /// Opens `shard` (decompressing it as detected); `progress` counts on-disk bytes.
    pub(crate) fn open(
        shard: &'a Shard,
        opts: &'a InputOptions,
        progress: Arc<AtomicU64>,
    ) -> Result<TextDocs<'a>> {
        let path = &shard.path;
        let file = File::open(path).map_err(|e| io_error(path, "cannot open input", e))?;
        let raw = BufReader::with_capacity(
            1 << 16,
            Counted {
                inner: file,
                count: progress,
            },
        );
        let decoded = shard
            .compression
            .decoder(raw)
            .map_err(|e| io_error(path, "cannot read", e))?;
        Ok(TextDocs {
            shard,
            opts,
            reader: BufReader::with_capacity(1 << 16, decoded),
            line: 0,
            buf: Vec::new(),
        })
    }

    /// Reads the next line (with its terminator) into `self.buf`; false at end of file.
    fn read_line(&mut self) -> Result<bool> {
        self.buf.clear();
        let n = self.reader.read_until(b'\n', &mut self.buf).map_err(|e| {
            let what = match self.shard.compression {
                super::Compression::None => "cannot read".to_string(),
                c => format!(
                    "corrupt or truncated {} data after line {}",
                    c.name(),
                    self.line
                ),
            };
            io_error(&self.shard.path, &what, e)
        })?;
        if n == 0 {
            return Ok(false);
        }
        self.line += 1;
        Ok(true)
    }

    /// The next record of the shard, or `None` at its end.
    pub(crate) fn next_record(&mut self) -> Result<Option<Record>> {
        match self.shard.format {
            super::Format::Paragraphs => {
                let mut raw = Vec::new();
                let mut first = 0;
                loop {
                    let more = self.read_line()?;
                    if !more || is_blank(&self.buf) {
                        if !raw.is_empty() {
                            let len = strip_eol(&raw).len();
                            raw.truncate(len);
                            return Ok(Some(Record::Doc(Document {
                                line: first,
                                raw,
                                field: None,
                                id: None,
                            })));
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
            super::Format::Jsonl => loop {
                if !self.read_line()? {
                    return Ok(None);
                }
                if is_blank(&self.buf) {
                    continue;
                }
                let raw = strip_eol(&self.buf);
                return Ok(Some(
                    match parse_jsonl(raw, &self.opts.text_field, &self.opts.id_field) {
                        Ok((text, id)) => Record::Doc(Document {
                            line: self.line,
                            raw: raw.to_vec(),
                            field: Some(text),
                            id,
                        }),
                        Err(reason) => Record::Invalid(self.line, reason),
                    },
                ));
            },
            _ => loop {
                if !self.read_line()? {
                    return Ok(None);
                }
                let raw = strip_eol(&self.buf);
                if !raw.is_empty() {
                    return Ok(Some(Record::Doc(Document {
                        line: self.line,
                        raw: raw.to_vec(),
                        field: None,
                        id: None,
                    })));
                }
            },
        }
    }
}

/// The text field (and id field, if any) of one JSON Lines record, or why the line is
/// invalid.
fn parse_jsonl(
    raw: &[u8],
    field: &str,
    id_field: &str,
) -> std::result::Result<(Vec<u8>, Option<serde_json::Value>), String> {
    let line = std::str::from_utf8(raw)
        .map_err(|e| format!("invalid UTF-8 at byte {} of the line", e.valid_up_to()))?;
    let mut v: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let id = v.get_mut(id_field).map(serde_json::Value::take);
    match v.get_mut(field).map(serde_json::Value::take) {
        Some(serde_json::Value::String(s)) => Ok((s.into_bytes(), id)),
        Some(_) => Err(format!("field `{field}` is not a string")),
        None => Err(format!(
            "no `{field}` field (choose the text field with --text-field)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::super::Format;
    use super::*;
    use std::io::Write;

    fn read(content: &[u8], name: &str, format: Format) -> Result<Vec<Document>> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join(name);
        std::fs::write(&p, content).unwrap();
        let shard = Shard::detect(&p, name.into(), format)?;
        let opts = InputOptions::with_format(format);
        shard.documents(&opts, Arc::default())?.collect()
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

//! Compression, a layer under the text formats: gzip and zstd, found by their magic
//! bytes whatever the file is called, read as a stream of concatenated members/frames,
//! and written back in the same way (deterministically: gzip without a time stamp,
//! zstd single-threaded).

use std::io::{self, BufRead, Read, Write};

/// A text shard's compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Compression {
    /// Uncompressed.
    None,
    /// gzip (`.gz`).
    Gzip,
    /// Zstandard (`.zst`).
    Zstd,
}

/// Level of written zstd (zstd's default: fast, and about gzip -6's ratio).
const ZSTD_LEVEL: i32 = 3;

impl Compression {
    /// The compression whose magic bytes start `head`.
    pub fn detect(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The compression a file name's suffix (`.gz`, `.zst`) says.
    pub fn detect_name(name: &str) -> Compression {
        let name = name.to_lowercase();
        if name.ends_with(".gz") {
            Compression::Gzip
        } else if name.ends_with(".zst") || name.ends_with(".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// Its name in messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// Its file name suffix (`""` for none).
    pub fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Gzip => ".gz",
            Compression::Zstd => ".zst",
        }
    }

    /// `name` without a compression suffix (`.gz`, `.zst`), if it has one.
    pub fn strip_suffix(self, name: &str) -> &str {
        [".gz", ".zst", ".zstd"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name)
    }

    /// Decompresses `raw` (itself unchanged for `None`).
    ///
    /// # Errors
    /// zstd's decoder could not be created.
    pub fn decoder<'a, R: BufRead + Send + 'a>(
        self,
        raw: R,
    ) -> io::Result<Box<dyn Read + Send + 'a>> {
        Ok(match self {
            Compression::None => Box::new(raw),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(raw)?),
        })
    }

    /// Compresses what is written into `sink`.
    ///
    /// # Errors
    /// zstd's encoder could not be created.
    pub fn encoder<W: Write>(self, sink: W) -> io::Result<Encoder<W>> {
        Ok(match self {
            Compression::None => Encoder::None(sink),
            Compression::Gzip => Encoder::Gzip(flate2::write::GzEncoder::new(
                sink,
                flate2::Compression::default(),
            )),
            Compression::Zstd => {
                Encoder::Zstd(zstd::stream::write::Encoder::new(sink, ZSTD_LEVEL)?)
            }
        })
    }
}

/// A compressing writer; [`Encoder::finish`] writes the trailer and returns the sink.
pub enum Encoder<W: Write> {
    /// Uncompressed.
    None(W),
    /// gzip.
    Gzip(flate2::write::GzEncoder<W>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// Ends the stream and returns the sink.
    ///
    /// # Errors
    /// Writing the trailer failed.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::None(w) => Ok(w),
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::None(w) => w.write(buf),
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::None(w) => w.flush(),
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
        }
    }
}

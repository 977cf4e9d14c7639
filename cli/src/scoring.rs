//! Streaming passes that pair each document with its score, computed with a rater
//! (in blocks of documents, each block scored in parallel) or read back from a score
//! file written by `datarater score`.
//!
//! Under `mpirun` every rank reads the whole input (and the score file) and builds the
//! same blocks; the ranks check that they read the same documents, a block's rater
//! batches are shared over the ranks ([`DocumentScorer::score_on`]), and every rank
//! visits every document with every score, so the passes make the same decisions on
//! every rank (rank 0 alone writes, see [`crate::output`]). A failure on any rank
//! (reading, scoring, visiting) is agreed on at the end of its block: every rank
//! returns the failing rank's message.

use crate::error::{CliError, Result, io_error};
use crate::input::{Document, Documents, Input, ReadStats};
use crate::progress::{Progress, Unit};
use crate::{agree, fail};
use datarater::curate::documents::{DocumentScore, DocumentScorer};
use datarater::distributed::Communicator;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where the scores come from.
pub enum ScoreSource<'a> {
    /// Computed by a rater.
    Rater(DocumentScorer<'a, f32>),
    /// Read from a score file (JSON Lines with `doc`, `source`, `line`, `chunks`, `score`).
    File(PathBuf),
}

/// Documents per scored block; bounds memory to one block of documents.
const BLOCK_DOCS: usize = 4096;
/// Sequences per scored block (enough to keep every core busy).
const BLOCK_SEQS: usize = 2048;

/// What a pass saw.
#[derive(Clone, Debug, Default)]
pub struct PassStats {
    /// Reader counts (documents, skipped invalid lines).
    pub read: ReadStats,
    /// Documents too short to score.
    pub short: u64,
    /// Bytes of text scored.
    pub text_bytes: u64,
}

/// Calls `f(index, document, score)` for every document in input order, until `f`
/// breaks, on every rank of `comm` (see the module docs). Rank 0 shows progress
/// labelled `label`. Collective.
///
/// # Errors
/// The first failure on any rank, on every rank.
pub fn for_each_scored(
    input: &Input,
    source: &ScoreSource<'_>,
    label: &'static str,
    comm: &dyn Communicator,
    mut f: impl FnMut(u64, &Document, DocumentScore) -> Result<ControlFlow<()>>,
) -> Result<PassStats> {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut progress =
        (comm.rank() == 0).then(|| Progress::new(label, Unit::Bytes, input.total_bytes(), 0));
    let mut docs = input.documents(bytes_read.clone());
    // The source, opened.
    enum Open<'s, 'a> {
        Rater(&'s DocumentScorer<'a, f32>),
        File(ScoreFile),
    }
    let mut open = match source {
        ScoreSource::Rater(scorer) => Open::Rater(scorer),
        ScoreSource::File(path) => Open::File(agree(comm, ScoreFile::open(path))?),
    };
    let seq_len = match &open {
        Open::Rater(scorer) => Some(scorer.seq_len()),
        Open::File(_) => None,
    };
    let mut stats = PassStats::default();
    let mut index = 0u64;
    let mut block: Vec<Document> = Vec::new();
    loop {
        let read = read_block(&mut docs, &mut block, seq_len);
        let ended = agree_on_block(comm, read, &block)?;
        let scores = match &mut open {
            Open::Rater(scorer) => {
                let texts: Vec<&[u8]> = block.iter().map(Document::text).collect();
                scorer.score_on(&texts, comm, |i| {
                    format!("{}:{}", input.sources()[block[i].source], block[i].line)
                })?
            }
            Open::File(file) => agree(comm, file.scores_for(&block, index, input, ended))?,
        };
        let visit = || -> Result<bool> {
            for (doc, s) in block.iter().zip(scores) {
                if s.score.is_none() {
                    stats.short += 1;
                }
                stats.text_bytes += doc.text().len() as u64;
                let flow = f(index, doc, s)?;
                index += 1;
                if flow.is_break() {
                    return Ok(true);
                }
            }
            Ok(ended)
        };
        let stop = agree(comm, visit())?;
        block.clear();
        let message = format!("{index} documents, {} too short", stats.short);
        if let Some(p) = progress.as_mut() {
            if stop {
                p.finish(&message);
            } else {
                p.set(bytes_read.load(Ordering::Relaxed), &message);
            }
        }
        if stop {
            break;
        }
    }
    stats.read = docs.stats.clone();
    Ok(stats)
}

/// Reads the next block into `block` (at most [`BLOCK_DOCS`] documents, and with a
/// rater's `seq_len`, about [`BLOCK_SEQS`] sequences); whether the input ended.
fn read_block(
    docs: &mut Documents<'_>,
    block: &mut Vec<Document>,
    seq_len: Option<usize>,
) -> Result<bool> {
    let mut seqs = 0;
    while block.len() < BLOCK_DOCS && seqs < BLOCK_SEQS {
        let Some(doc) = docs.next() else {
            return Ok(true);
        };
        let doc = doc?;
        if let Some(l) = seq_len {
            seqs += doc.text().len().div_ceil(l);
        }
        block.push(doc);
    }
    Ok(false)
}

/// Whether the input ended, agreed by every rank; fails on every rank if any rank
/// failed to read or the ranks read different blocks (an input that differs between
/// nodes would otherwise mix different documents' scores).
fn agree_on_block(comm: &dyn Communicator, read: Result<bool>, block: &[Document]) -> Result<bool> {
    let summary = read.map(|ended| {
        // FNV-1a of the texts, with the count and the end flag.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for doc in block {
            for &b in doc.text().iter().chain(&[0xff]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        let mut bytes = vec![u8::from(ended)];
        bytes.extend_from_slice(&(block.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&h.to_le_bytes());
        bytes
    });
    let all = comm.all_gather_result(summary.map_err(|e| datarater::Error::Usage(e.0)))?;
    if all.iter().any(|s| s != &all[0]) {
        fail!(
            "the ranks read different documents (every rank reads the input: it must be the same at the same path on every node)"
        );
    }
    Ok(all[0][0] == 1)
}

/// One record of a score file.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRecord {
    /// 0-based document index.
    pub doc: u64,
    /// The input file.
    pub source: String,
    /// 1-based line of the document's first byte.
    pub line: u64,
    /// Sequences scored.
    pub chunks: usize,
    /// The score (`None`: too short).
    pub score: Option<f64>,
}

impl ScoreRecord {
    /// The record as one JSON line (with its newline).
    pub fn to_json_line(&self, bytes: usize) -> String {
        let score = match self.score {
            Some(s) => serde_json::Value::from(s),
            None => serde_json::Value::Null,
        };
        format!(
            "{{\"doc\":{},\"source\":{},\"line\":{},\"bytes\":{bytes},\"chunks\":{},\"score\":{score}}}\n",
            self.doc,
            serde_json::Value::from(self.source.as_str()),
            self.line,
            self.chunks
        )
    }
}

/// A score file read line by line.
pub struct ScoreFile {
    path: PathBuf,
    reader: BufReader<std::fs::File>,
    buf: String,
    line: u64,
}

impl ScoreFile {
    /// Opens a score file.
    pub fn open(path: &Path) -> Result<ScoreFile> {
        let f =
            std::fs::File::open(path).map_err(|e| io_error(path, "cannot open score file", e))?;
        Ok(ScoreFile {
            path: path.to_path_buf(),
            reader: BufReader::new(f),
            buf: String::new(),
            line: 0,
        })
    }

    /// The next record, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<ScoreRecord>> {
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_line(&mut self.buf)
                .map_err(|e| io_error(&self.path, "cannot read score file", e))?;
            if n == 0 {
                return Ok(None);
            }
            self.line += 1;
            if !self.buf.trim().is_empty() {
                break;
            }
        }
        let at = || format!("{}:{}", self.path.display(), self.line);
        let v: serde_json::Value = serde_json::from_str(&self.buf)
            .map_err(|e| CliError(format!("{}: malformed score record: {e}", at())))?;
        let uint = |k: &str| {
            v.get(k).and_then(serde_json::Value::as_u64).ok_or_else(|| {
                CliError(format!(
                    "{}: score record has no whole-number `{k}` field",
                    at()
                ))
            })
        };
        let score = match v.get("score") {
            Some(serde_json::Value::Null) => None,
            Some(x) => Some(x.as_f64().ok_or_else(|| {
                CliError(format!("{}: `score` is neither a number nor null", at()))
            })?),
            None => fail!("{}: score record has no `score` field", at()),
        };
        Ok(Some(ScoreRecord {
            doc: uint("doc")?,
            source: v
                .get("source")
                .and_then(serde_json::Value::as_str)
                .ok_or_else(|| CliError(format!("{}: score record has no `source` field", at())))?
                .to_string(),
            line: uint("line")?,
            chunks: uint("chunks")? as usize,
            score,
        }))
    }

    /// The next `block.len()` records, checked against the block's documents (the
    /// first is document `first` of the input); at the `end` of the input, also
    /// checks that no record is left.
    fn scores_for(
        &mut self,
        block: &[Document],
        first: u64,
        input: &Input,
        end: bool,
    ) -> Result<Vec<DocumentScore>> {
        let mut scores = Vec::with_capacity(block.len());
        for (index, doc) in (first..).zip(block) {
            let Some(rec) = self.next_record()? else {
                fail!(
                    "{}: has scores for {index} documents but the input has more (was it written for another input?)",
                    self.path.display()
                );
            };
            let src = &input.sources()[doc.source];
            if rec.doc != index || rec.source != *src || rec.line != doc.line {
                fail!(
                    "{}:{}: the score record is for document {} ({}:{}) but document {index} of the input is {src}:{} (was the score file written for another input?)",
                    self.path.display(),
                    self.line,
                    rec.doc,
                    rec.source,
                    rec.line,
                    doc.line
                );
            }
            scores.push(DocumentScore {
                chunks: rec.chunks,
                score: rec.score,
            });
        }
        if end && self.next_record()?.is_some() {
            fail!(
                "{}: has more score records than the input has documents ({}) (was it written for another input?)",
                self.path.display(),
                first + block.len() as u64
            );
        }
        Ok(scores)
    }
}

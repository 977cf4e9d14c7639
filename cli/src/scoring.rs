//! Streaming passes that pair each document with its score, computed with a rater
//! (in blocks of documents, each block scored in parallel) or read back from a score
//! file written by `datarater score`.

use crate::error::{CliError, Result, io_error};
use crate::fail;
use crate::input::{Document, Input, ReadStats};
use crate::progress::{Progress, Unit};
use datarater::curate::documents::{DocumentScore, DocumentScorer};
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
/// breaks. Shows progress labelled `label`.
pub fn for_each_scored(
    input: &Input,
    source: &ScoreSource<'_>,
    label: &'static str,
    mut f: impl FnMut(u64, &Document, DocumentScore) -> Result<ControlFlow<()>>,
) -> Result<PassStats> {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let mut progress = Progress::new(label, Unit::Bytes, input.total_bytes(), 0);
    let mut docs = input.documents(bytes_read.clone());
    let mut stats = PassStats::default();
    let mut index = 0u64;
    let mut visit = |index: &mut u64, doc: &Document, s: DocumentScore, stats: &mut PassStats| {
        if s.score.is_none() {
            stats.short += 1;
        }
        stats.text_bytes += doc.text().len() as u64;
        let flow = f(*index, doc, s)?;
        *index += 1;
        Ok::<_, CliError>(flow)
    };
    let message = |n: u64, stats: &PassStats| format!("{n} documents, {} too short", stats.short);
    match source {
        ScoreSource::Rater(scorer) => {
            let seq_len = scorer.seq_len();
            let mut block: Vec<Document> = Vec::new();
            let mut seqs = 0;
            let mut ended = false;
            while !ended {
                match docs.next() {
                    Some(doc) => {
                        let doc = doc?;
                        seqs += doc.text().len().div_ceil(seq_len);
                        block.push(doc);
                        if block.len() < BLOCK_DOCS && seqs < BLOCK_SEQS {
                            continue;
                        }
                    }
                    None => ended = true,
                }
                let texts: Vec<&[u8]> = block.iter().map(Document::text).collect();
                let scores = scorer.score(&texts)?;
                for (doc, s) in block.iter().zip(scores) {
                    if let Some(x) = s.score {
                        if !x.is_finite() {
                            fail!(
                                "{}:{}: the rater gave a non-finite score ({x}); is the rater file damaged?",
                                input.sources()[doc.source],
                                doc.line
                            );
                        }
                    }
                    if visit(&mut index, doc, s, &mut stats)?.is_break() {
                        progress.finish(&message(index, &stats));
                        stats.read = docs.stats.clone();
                        return Ok(stats);
                    }
                }
                block.clear();
                seqs = 0;
                progress.set(bytes_read.load(Ordering::Relaxed), &message(index, &stats));
            }
        }
        ScoreSource::File(path) => {
            let mut scores = ScoreFile::open(path)?;
            let mut stopped = false;
            for doc in docs.by_ref() {
                let doc = doc?;
                let Some(rec) = scores.next_record()? else {
                    fail!(
                        "{}: has scores for {index} documents but the input has more (was it written for another input?)",
                        path.display()
                    );
                };
                let src = &input.sources()[doc.source];
                if rec.doc != index || rec.source != *src || rec.line != doc.line {
                    fail!(
                        "{}:{}: the score record is for document {} ({}:{}) but document {index} of the input is {src}:{} (was the score file written for another input?)",
                        path.display(),
                        scores.line,
                        rec.doc,
                        rec.source,
                        rec.line,
                        doc.line
                    );
                }
                let s = DocumentScore {
                    chunks: rec.chunks,
                    score: rec.score,
                };
                if visit(&mut index, &doc, s, &mut stats)?.is_break() {
                    stopped = true;
                    break;
                }
                if index % 4096 == 0 {
                    progress.set(bytes_read.load(Ordering::Relaxed), &message(index, &stats));
                }
            }
            if !stopped && scores.next_record()?.is_some() {
                fail!(
                    "{}: has more score records than the input has documents ({index}) (was it written for another input?)",
                    path.display()
                );
            }
        }
    }
    progress.finish(&message(index, &stats));
    stats.read = docs.stats.clone();
    Ok(stats)
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
}

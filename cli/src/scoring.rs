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
use crate::input::{Compression, Document, Documents, InputOptions, ReadStats, Shard};
use crate::progress::{Progress, Unit};
use crate::{agree, fail};
use datarater::curate::documents::{DocumentScore, DocumentScorer};
use datarater::distributed::Communicator;
use std::io::{BufRead, BufReader};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// The short-document rule of raters trained by this version, as recorded in their
/// `training` metadata: a document shorter than the sequence length (but not empty)
/// is one sequence, padded at its end with NUL bytes ([`padded`]). `train` cuts its
/// data so, so the rater learns to score such sequences; `score` and `filter` apply
/// it for raters that record it (others leave short documents unscored).
pub const SHORT_RULE: &str = "pad-with-nul";

/// `text` padded with NUL bytes to `seq_len` if it is shorter and not empty.
pub fn padded(text: &[u8], seq_len: usize) -> Option<Vec<u8>> {
    (!text.is_empty() && text.len() < seq_len).then(|| {
        let mut v = text.to_vec();
        v.resize(seq_len, 0);
        v
    })
}

/// Whether a rater's training metadata records [`SHORT_RULE`].
pub fn pads_short(training: &serde_json::Value) -> bool {
    training["short_documents"] == SHORT_RULE
}

/// Scores in-memory documents by the command line's rule: with `pad` (a rater that
/// records [`SHORT_RULE`]), a short document is scored [`padded`]; the rest as
/// [`DocumentScorer::score_on`] does (a non-finite score names document `i` as
/// `name(i)`). The scores do not depend on how documents are grouped into calls.
/// Collective.
///
/// # Errors
/// As [`DocumentScorer::score_on`].
pub fn score_texts<D: AsRef<[u8]> + Sync>(
    scorer: &DocumentScorer<f32>,
    pad: bool,
    texts: &[D],
    comm: &dyn Communicator,
    name: impl Fn(usize) -> String,
) -> datarater::Result<Vec<DocumentScore>> {
    let pads: Vec<Option<Vec<u8>>> = texts
        .iter()
        .map(|d| pad.then(|| padded(d.as_ref(), scorer.seq_len())).flatten())
        .collect();
    let texts: Vec<&[u8]> = texts
        .iter()
        .zip(&pads)
        .map(|(d, p)| p.as_deref().unwrap_or(d.as_ref()))
        .collect();
    scorer.score_on(&texts, comm, name)
}

/// Where the scores of a shard come from.
pub enum ScoreSource<'a> {
    /// Computed by a rater; with `true`, short documents are padded ([`SHORT_RULE`]).
    Rater(&'a DocumentScorer<f32>, bool),
    /// Read from an attribute shard written by `datarater score`.
    File(PathBuf),
}

/// Documents per scored block; bounds memory to two blocks of documents (one scored,
/// one read ahead).
pub const BLOCK_DOCS: usize = 4096;
/// Sequences per scored block (enough to keep every core busy).
pub const BLOCK_SEQS: usize = 2048;

/// What a pass saw.
#[derive(Clone, Debug, Default)]
pub struct PassStats {
    /// Reader counts (documents, skipped invalid records, too long).
    pub read: ReadStats,
    /// Documents too short to score.
    pub short: u64,
    /// Documents shorter than the rater's sequence length scored padded.
    pub padded: u64,
    /// Bytes of text scored.
    pub text_bytes: u64,
}

impl PassStats {
    /// As JSON (to gather the counts of several ranks).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "documents": self.read.documents, "skipped": self.read.skipped,
            "too_long": self.read.too_long, "first_skipped": self.read.first_skipped,
            "short": self.short, "padded": self.padded, "text_bytes": self.text_bytes,
        })
    }

    /// From [`PassStats::to_json`]'s form.
    pub fn from_json(v: &serde_json::Value) -> PassStats {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        PassStats {
            read: ReadStats {
                documents: n("documents"),
                skipped: n("skipped"),
                too_long: n("too_long"),
                first_skipped: v["first_skipped"].as_str().map(String::from),
            },
            short: n("short"),
            padded: n("padded"),
            text_bytes: n("text_bytes"),
        }
    }

    /// Adds another pass's counts.
    pub fn add(&mut self, o: &PassStats) {
        self.read.add(&o.read);
        self.short += o.short;
        self.padded += o.padded;
        self.text_bytes += o.text_bytes;
    }
}

/// Progress over a whole corpus, shown by rank 0 only: the position is the on-disk
/// bytes of the shards done plus the current one's (the one total known before
/// reading), the message the shard and the documents and text bytes so far.
pub struct CorpusProgress {
    progress: Option<Progress>,
    total_bytes: u64,
    done_bytes: u64,
    shards: usize,
    shards_done: usize,
    /// Documents so far (all shards).
    pub documents: u64,
    /// Too short so far.
    pub short: u64,
    /// Text bytes so far.
    pub text_bytes: u64,
}

impl CorpusProgress {
    /// Progress of the stage `label` over `shards` shards of `total_bytes` on disk.
    pub fn new(
        label: &'static str,
        shards: usize,
        total_bytes: u64,
        comm: &dyn Communicator,
    ) -> CorpusProgress {
        CorpusProgress {
            progress: (comm.rank() == 0).then(|| Progress::new(label, Unit::Bytes, total_bytes, 0)),
            total_bytes,
            done_bytes: 0,
            shards,
            shards_done: 0,
            documents: 0,
            short: 0,
            text_bytes: 0,
        }
    }

    fn message(&self) -> String {
        format!(
            "{} documents ({:.2} MB of text), {} too short",
            self.documents,
            self.text_bytes as f64 / 1e6,
            self.short
        )
    }

    fn show(&mut self, shard_bytes: u64, what: &str) {
        let msg = format!(
            "shard {}/{} {what}: {}",
            (self.shards_done + 1).min(self.shards),
            self.shards,
            self.message()
        );
        if let Some(p) = self.progress.as_mut() {
            p.set(self.done_bytes + shard_bytes, &msg);
        }
    }

    /// Counts a whole shard as done (skipped as complete, or not readable).
    pub fn shard_done(&mut self, shard: &Shard, documents: u64, short: u64, text_bytes: u64) {
        self.done_bytes += shard.bytes;
        self.shards_done += 1;
        self.documents += documents;
        self.short += short;
        self.text_bytes += text_bytes;
        self.show(0, &shard.rel.display().to_string());
    }

    /// Ends the display at 100%: the stage is complete (for the shards this progress
    /// was made for: under MPI with shards shared by rank, rank 0's own).
    pub fn finish(&mut self) {
        let msg = format!("{} shards, {}", self.shards, self.message());
        if let Some(p) = self.progress.as_mut() {
            p.set(self.total_bytes, &msg);
            p.finish(&msg);
        }
    }
}

/// Calls `f(index, document, score)` for every document of `shard` in order, until
/// `f` breaks, on every rank of `comm` (see the module docs), checking for Ctrl-C
/// between blocks. A thread reads (and decompresses and parses) the next block while
/// this one is scored and visited, so the serial reading does not leave the cores idle.
/// Collective.
///
/// # Errors
/// The first failure on any rank, on every rank.
pub fn for_each_scored(
    shard: &Shard,
    opts: &InputOptions,
    source: &ScoreSource<'_>,
    comm: &dyn Communicator,
    progress: &mut CorpusProgress,
    mut f: impl FnMut(u64, &Document, DocumentScore) -> Result<ControlFlow<()>>,
) -> Result<PassStats> {
    let bytes_read = Arc::new(AtomicU64::new(0));
    let docs = agree(comm, shard.documents(opts, bytes_read.clone()))?;
    // The source, opened.
    enum Open<'s> {
        Rater(&'s DocumentScorer<f32>, bool),
        File(ScoreFile),
    }
    let mut open = match source {
        ScoreSource::Rater(scorer, pad) => Open::Rater(scorer, *pad),
        ScoreSource::File(path) => Open::File(agree(comm, ScoreFile::open(path))?),
    };
    let seq_len = match &open {
        Open::Rater(scorer, _) => Some(scorer.seq_len()),
        Open::File(_) => None,
    };
    let mut stats = PassStats::default();
    let name = shard.rel.display().to_string();
    std::thread::scope(|s| {
        // One block ahead: the reader stops after the last block (or a failed read),
        // or when this side hangs up.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Result<bool>, Vec<Document>)>(1);
        let reader = s.spawn(move || {
            let mut docs = docs;
            loop {
                let mut block = Vec::new();
                let read = read_block(&mut docs, &mut block, seq_len);
                let last = !matches!(read, Ok(false));
                if tx.send((read, block)).is_err() || last {
                    return docs.stats;
                }
            }
        });
        let mut index = 0u64;
        let mut pass = || -> Result<()> {
            loop {
                let (read, block) = match crate::interrupt::check() {
                    Err(e) => (Err(e), Vec::new()),
                    // A closed channel means the reader panicked; `join` below says so.
                    Ok(()) => rx.recv().unwrap_or_else(|_| {
                        (Err(CliError("the reader stopped".into())), Vec::new())
                    }),
                };
                let ended = agree_on_block(comm, read, &block)?;
                let scores = match &mut open {
                    Open::Rater(scorer, pad) => {
                        let texts: Vec<&[u8]> = block.iter().map(Document::text).collect();
                        score_texts(scorer, *pad, &texts, comm, |i| {
                            format!("{}:{}", shard.path.display(), block[i].line)
                        })?
                    }
                    Open::File(file) => agree(comm, file.scores_for(&block, index, shard, ended))?,
                };
                let visit = || -> Result<bool> {
                    for (doc, s) in block.iter().zip(scores) {
                        if s.score.is_none() {
                            stats.short += 1;
                            progress.short += 1;
                        } else if seq_len.is_some_and(|l| doc.text().len() < l) {
                            stats.padded += 1;
                        }
                        progress.documents += 1;
                        progress.text_bytes += doc.text().len() as u64;
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
                progress.show(bytes_read.load(Ordering::Relaxed).min(shard.bytes), &name);
                if stop {
                    return Ok(());
                }
            }
        };
        let result = pass();
        drop(rx);
        match reader.join() {
            Ok(read) => stats.read = read,
            Err(panic) => std::panic::resume_unwind(panic),
        }
        result
    })?;
    progress.done_bytes += shard.bytes;
    progress.shards_done += 1;
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

/// One record of an attribute shard (a score file): the document's position in its
/// shard, its line (row for Parquet), its id if it has one, its text's length, the
/// sequences scored and the score.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRecord {
    /// 0-based position of the document in its shard.
    pub doc: u64,
    /// 1-based line of the document's first byte (row for Parquet).
    pub line: u64,
    /// The document's id field, if it has one.
    pub id: Option<serde_json::Value>,
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
        let id = match &self.id {
            Some(id) => format!("\"id\":{id},"),
            None => String::new(),
        };
        format!(
            "{{\"doc\":{},\"line\":{},{id}\"bytes\":{bytes},\"chunks\":{},\"score\":{score}}}\n",
            self.doc, self.line, self.chunks
        )
    }
}

/// A score file read line by line.
pub struct ScoreFile {
    path: PathBuf,
    reader: BufReader<Box<dyn std::io::Read + Send>>,
    buf: String,
    line: u64,
}

impl ScoreFile {
    /// Opens a score file.
    pub fn open(path: &Path) -> Result<ScoreFile> {
        let f =
            std::fs::File::open(path).map_err(|e| io_error(path, "cannot open score file", e))?;
        let mut raw = BufReader::new(f);
        let head = raw
            .fill_buf()
            .map_err(|e| io_error(path, "cannot read score file", e))?;
        let decoded = Compression::detect(head)
            .decoder(raw)
            .map_err(|e| io_error(path, "cannot read score file", e))?;
        Ok(ScoreFile {
            path: path.to_path_buf(),
            reader: BufReader::new(decoded),
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
            line: uint("line")?,
            id: v.get("id").cloned(),
            chunks: uint("chunks")? as usize,
            score,
        }))
    }

    /// The next `block.len()` records, checked against the block's documents (the
    /// first is document `first` of `shard`); at the `end` of the shard, also checks
    /// that no record is left.
    fn scores_for(
        &mut self,
        block: &[Document],
        first: u64,
        shard: &Shard,
        end: bool,
    ) -> Result<Vec<DocumentScore>> {
        let mut scores = Vec::with_capacity(block.len());
        for (index, doc) in (first..).zip(block) {
            let Some(rec) = self.next_record()? else {
                fail!(
                    "{}: has scores for {index} documents but {} has more (was it written for another input?)",
                    self.path.display(),
                    shard.path.display()
                );
            };
            if rec.doc != index || rec.line != doc.line {
                fail!(
                    "{}:{}: the score record is for document {} (line {}) but document {index} of {} is at line {} (was the score file written for another input?)",
                    self.path.display(),
                    self.line,
                    rec.doc,
                    rec.line,
                    shard.path.display(),
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
                "{}: has more score records than {} has documents ({}) (was it written for another input?)",
                self.path.display(),
                shard.path.display(),
                first + block.len() as u64
            );
        }
        Ok(scores)
    }
}

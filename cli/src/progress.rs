//! Progress on stderr: an indicatif bar when stderr is a terminal, plain lines every
//! few seconds otherwise (logs, CI, pipes).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

/// What the position counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of input.
    Bytes,
    /// Outer training steps.
    Steps,
}

/// A progress display.
pub struct Progress {
    bar: Option<ProgressBar>,
    label: &'static str,
    unit: Unit,
    total: u64,
    start: Instant,
    start_pos: u64,
    last_line: Instant,
    pos: u64,
}

const PLAIN_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    /// Progress towards `total` (bytes or steps), starting at `start_pos`.
    pub fn new(label: &'static str, unit: Unit, total: u64, start_pos: u64) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let template = match unit {
                Unit::Bytes => {
                    "{prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta} {msg}"
                }
                Unit::Steps => {
                    "{prefix} [{elapsed_precise}] {wide_bar} step {pos}/{len} {per_sec} ETA {eta} {msg}"
                }
            };
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(template)
                    // A constant: it fails only if mistyped, on every run with a terminal.
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_prefix(label);
            bar.set_position(start_pos);
            bar.reset_eta();
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            label,
            unit,
            total,
            start: now,
            start_pos,
            last_line: now,
            pos: start_pos,
        }
    }

    /// Moves to `pos` with a message (documents so far, loss, ...).
    pub fn set(&mut self, pos: u64, msg: &str) {
        self.pos = pos;
        match &self.bar {
            Some(bar) => {
                bar.set_position(pos);
                bar.set_message(msg.to_string());
            }
            None => {
                if self.last_line.elapsed() >= PLAIN_EVERY {
                    self.last_line = Instant::now();
                    eprint_line(&self.line(msg));
                }
            }
        }
    }

    /// One plain status line.
    fn line(&self, msg: &str) -> String {
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        let done = self.pos.saturating_sub(self.start_pos) as f64;
        let rate = done / secs;
        let left = self.total.saturating_sub(self.pos) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0}s", left / rate)
        } else {
            "?".into()
        };
        let pct = 100.0 * self.pos as f64 / self.total.max(1) as f64;
        match self.unit {
            Unit::Bytes => format!(
                "{}: {:.1}/{:.1} MB on disk ({pct:.0}%), {:.2} MB/s, ETA {eta}, {msg}",
                self.label,
                self.pos as f64 / 1e6,
                self.total as f64 / 1e6,
                rate / 1e6
            ),
            Unit::Steps => format!(
                "{}: step {}/{} ({pct:.0}%), {:.2} s/step, ETA {eta}, {msg}",
                self.label,
                self.pos,
                self.total,
                if rate > 0.0 { 1.0 / rate } else { 0.0 }
            ),
        }
    }

    /// Clears the bar (or prints a final plain line).
    pub fn finish(&mut self, msg: &str) {
        match self.bar.take() {
            Some(bar) => bar.finish_and_clear(),
            None => eprint_line(&self.line(msg)),
        }
    }
}

/// Writes `line` and its newline to stderr in one call. `eprintln!` writes them
/// separately (stderr is unbuffered), and under `mpirun`, which forwards a rank's stdout
/// and stderr through separate pipes, a stdout line could land between the two: a
/// summary line then no longer starts a line of the combined log.
fn eprint_line(line: &str) {
    use std::io::Write;
    // Progress is best effort: a closed stderr must not stop the work.
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// `n` and `noun`, plural unless `n` is 1 (`1 shard`, `2 shards`).
pub fn count(n: impl Into<u64>, noun: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

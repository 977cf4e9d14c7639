//! The engine's speed in a process that leaves the allocator alone, as a crate that
//! depends on the library would: the reference meta-gradient workload (f32, inner
//! causal LM width 64, 2 layers, 4 heads, 128-byte sequences, batch 16, Adam; rater
//! width 32, 1 layer; T = 16 inner steps, mixed mode), timed with glibc's default
//! `malloc` settings, and, with `--tune`, after `mallopt` has told glibc to keep freed
//! memory (mmap threshold 32 MiB, trim threshold 64 MiB: what the crate's binaries did
//! before the engine reused its own buffers).
//!
//! No counting allocator and no `mallopt` unless asked: the process is set up as a
//! downstream binary's would be. Run it both ways (two processes, since `mallopt`
//! cannot be undone) and compare the medians:
//!
//! ```text
//! cargo run --release --example downstream_speed -- [--tune] [--reps 5] [--steps 16]
//! ```
//!
//! It also prints the minor page faults the timed runs took (from `getrusage`), the
//! cost the engine's buffer reuse removes (see docs/meta-gradients.md, "Buffer reuse").

use datarater::data::Corpus;
use datarater::meta::{DataRaterProblem, InnerLoop, MeanLoss, MetaRequest, Mode, Rater, Sampler};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{Sequences, TextBatch, TextLm, TextPool, TextRater};
use datarater::{Error, Params, Result, Rng, Tensor};
use std::time::Instant;

fn flag(args: &[String], name: &'static str, default: usize) -> Result<usize> {
    match args.iter().position(|a| a == name) {
        None => Ok(default),
        Some(i) => args
            .get(i + 1)
            .and_then(|s| s.parse().ok())
            .filter(|&v| v > 0)
            .ok_or(Error::Config {
                field: name,
                reason: "needs a positive integer".into(),
            }),
    }
}

/// Minor page faults of the process so far (Linux: field 10 of /proc/self/stat; 0
/// elsewhere).
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) may hold spaces; count from after its ')'.
            let rest = &s[s.rfind(')')? + 2..];
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

/// glibc only: keep freed blocks up to 32 MiB in the heap, and up to 64 MiB of free
/// heap top, instead of returning them to the kernel.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // From glibc's <malloc.h>.
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_MMAP_THRESHOLD: i32 = -3;
        // SAFETY: mallopt only sets allocator parameters (glibc serialises it with the
        // arenas' locks); called before any thread is started.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20);
            mallopt(M_TRIM_THRESHOLD, 64 << 20);
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let tune = args.iter().any(|a| a == "--tune");
    if tune {
        keep_freed_memory();
    }
    let (reps, steps) = (flag(args, "--reps", 5)?, flag(args, "--steps", 16)?);
    let (seq, batch) = (128, 16);
    let cfg = |d, layers, heads, causal| {
        TransformerConfig::new(d, layers, heads, seq).with_causal(causal)
    };
    let inner = TextLm::new(CausalLm::new(cfg(64, 2, 4, true))?, Adam::<f32>::new(1e-3))?;
    let rater = TextRater {
        scorer: SequenceScorer::new(cfg(32, 1, 2, false))?,
    };
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    let pool = TextPool::new(
        Sequences::from_rows(&Corpus::embedded().sequences(seq)?)?,
        batch,
    )?;
    let mut rng = Rng::new(0);
    let theta: Params<Tensor<f32>> = inner.init(&mut rng);
    let eta: Params<Tensor<f32>> = rater.init(&mut rng);
    let state = inner.opt.init(&theta);
    let batches: Vec<TextBatch> = (0..steps)
        .map(|_| pool.sample(&mut rng))
        .collect::<Result<_>>()?;
    let outer = pool.sample(&mut rng)?;
    let request =
        MetaRequest::new(&problem, &eta, &theta, &state, &batches, &outer).mode(Mode::Mixed);
    request.run()?; // warm-up
    let faults = minor_faults();
    let mut secs = Vec::new();
    for _ in 0..reps {
        let start = Instant::now();
        request.run()?;
        secs.push(start.elapsed().as_secs_f64());
    }
    let faults = (minor_faults() - faults) / reps as u64;
    secs.sort_by(|a, b| a.total_cmp(b));
    println!(
        "reference meta-gradient (d64, 2 layers, T = {steps}, mixed, f32, {} threads), mallopt {}: median {:.3} s (range {:.3}-{:.3} s over {reps}), {faults} minor page faults per run",
        rayon::current_num_threads(),
        if tune { "called" } else { "not called" },
        secs[secs.len() / 2],
        secs[0],
        secs[secs.len() - 1],
    );
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Err(e) = run(&args) {
        eprintln!("downstream_speed: {e}");
        std::process::exit(2);
    }
}

//! Peak memory, wall time and FLOPs of one meta-gradient, unrolled reverse-over-reverse
//! vs mixed mode vs checkpointed mixed mode, for a range of window lengths T.
//!
//! Default workload (the reference one, f32): inner model a byte-level causal pre-LN
//! transformer (vocabulary 256, width 64, 2 layers, 4 heads, MLP 4x, GELU, learned
//! positions) on sequences of 128 bytes (127 next-byte predictions), batch 16, Adam
//! (lr 1e-3); rater a bidirectional transformer (width 32, 1 layer, 2 heads) mean-pooled
//! to one score; outer batch = batch. Every part of it is a flag:
//!
//! ```text
//! --d 64 --layers 2 --heads 4 --seq 128 --batch 16     inner LM (MLP 4 x d)
//! --rater-d 32 --rater-layers 1 --rater-heads 2        rater
//! --steps 1,2,4,8,16,32 --modes unrolled,mixed,ckpt --reps 3 --f64
//! --snapshots N    states ckpt stores at once (default 0: chosen from T, see Mode)
//! --budget-mib N   memory budget per meta-gradient (default: 90% of MemAvailable)
//! --no-check       skip the f64 reference (the error column)
//! --warmup         one untimed run per mode first (as a JIT's first call)
//! --json FILE      one object per T and mode: peak bytes, seconds, FLOPs, ...
//! --plot FILE.svg  peak memory and time against T, log-log, one line per mode
//! ```
//!
//! Peak bytes are real heap bytes from the counting global allocator, measured around
//! the meta-gradient call (the model, data and trajectory inputs are excluded: they are
//! the same for every mode). A run whose tapes and trajectory would pass the budget
//! stops with `Error::MemoryBudget` (see `MetaRequest::memory_budget`); its row says
//! "over budget" and where it stopped, instead of the machine swapping.
//!
//! FLOPs are counted by the engine (`autodiff::flops`): matmul FLOPs (`2 m n k` each)
//! and, separately, the elements written by every other op; GFLOP/s counts matmul FLOPs.
//!
//! Threads: the mixed and checkpointed modes split each inner step's passes over the
//! batch's examples, 4 slices run in parallel ([`MetaProblem::split_batch`]); the
//! unrolled mode is one tape, recorded and swept in order (only its large products use
//! several threads). Set `RAYON_NUM_THREADS=1` to compare them on one thread.
//!
//! ```text
//! cargo run --release --example memory_vs_bptt
//! cargo run --release --example memory_vs_bptt -- --d 256 --layers 4 --heads 4 --seq 256 \
//!     --batch 8 --rater-d 64 --steps 1,2,4,8,16 --reps 1 --no-check --json scale.json --plot scale.svg
//! ```
//!
//! [`MetaProblem::split_batch`]: datarater::meta::MetaProblem::split_batch

use datarater::alloc::{CountingAlloc, measure_peak};
use datarater::autodiff::flops;
use datarater::data::Corpus;
use datarater::meta::{
    DataRaterProblem, InnerLoop, MeanLoss, MetaRequest, MetaStats, Mode, Rater, Sampler, Snapshots,
};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{Sequences, TextBatch, TextLm, TextPool, TextRater};
use datarater::{Error, Float, Params, Result, Rng, Tensor};
use plotters::prelude::*;
use std::time::Instant;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// The command line.
struct Args {
    d: usize,
    layers: usize,
    heads: usize,
    seq: usize,
    batch: usize,
    rater_d: usize,
    rater_layers: usize,
    rater_heads: usize,
    steps: Vec<usize>,
    modes: Vec<(&'static str, Mode)>,
    reps: usize,
    warmup: bool,
    f64: bool,
    budget: Option<usize>,
    check: bool,
    json: Option<String>,
    plot: Option<String>,
}

fn bad(field: &'static str, reason: impl Into<String>) -> Error {
    Error::Config {
        field,
        reason: reason.into(),
    }
}

/// Bytes available to new processes, from `/proc/meminfo` (Linux), if readable.
fn mem_available() -> Option<usize> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

fn parse_args() -> Result<Args> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let known = [
        "--d",
        "--layers",
        "--heads",
        "--seq",
        "--batch",
        "--rater-d",
        "--rater-layers",
        "--rater-heads",
        "--steps",
        "--modes",
        "--snapshots",
        "--reps",
        "--budget-mib",
        "--json",
        "--plot",
    ];
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--f64" | "--no-check" | "--warmup" => i += 1,
            a if known.contains(&a) => {
                if i + 1 >= args.len() {
                    let flag = known[known.iter().position(|k| *k == a).unwrap_or(0)];
                    return Err(bad(flag, "needs a value"));
                }
                i += 2
            }
            a => return Err(bad("arguments", format!("unknown argument `{a}`"))),
        }
    }
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let count = |flag: &'static str, default: usize| -> Result<usize> {
        match value(flag) {
            None => Ok(default),
            Some(s) => match s.parse::<usize>() {
                Ok(0) => Err(bad(flag, "must be at least 1")),
                Ok(v) => Ok(v),
                Err(_) => Err(bad(flag, format!("`{s}` is not a number"))),
            },
        }
    };
    let steps = value("--steps")
        .unwrap_or_else(|| "1,2,4,8,16,32".into())
        .split(',')
        .map(|s| match s.trim().parse::<usize>() {
            Ok(0) => Err(bad("--steps", "a window has at least 1 step")),
            Ok(v) => Ok(v),
            Err(_) => Err(bad("--steps", format!("`{s}` is not a number"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let snapshots = match value("--snapshots") {
        None => Snapshots::Auto,
        Some(s) => match s.parse::<usize>() {
            Ok(0) => Snapshots::Auto,
            Ok(n) => Snapshots::AtMost(n),
            Err(_) => return Err(bad("--snapshots", format!("`{s}` is not a number"))),
        },
    };
    let modes = value("--modes")
        .unwrap_or_else(|| "unrolled,mixed,ckpt".into())
        .split(',')
        .map(|s| match s.trim() {
            "unrolled" => Ok(("unrolled", Mode::Unrolled)),
            "mixed" => Ok(("mixed", Mode::Mixed)),
            "ckpt" => Ok(("ckpt", Mode::Checkpointed { snapshots })),
            other => Err(bad(
                "--modes",
                format!("`{other}` is not one of unrolled, mixed, ckpt"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let budget = match value("--budget-mib") {
        Some(s) => Some(
            s.parse::<usize>()
                .map_err(|_| bad("--budget-mib", format!("`{s}` is not a number")))?
                << 20,
        ),
        None => mem_available().map(|b| b / 10 * 9),
    };
    Ok(Args {
        d: count("--d", 64)?,
        layers: count("--layers", 2)?,
        heads: count("--heads", 4)?,
        seq: count("--seq", 128)?,
        batch: count("--batch", 16)?,
        rater_d: count("--rater-d", 32)?,
        rater_layers: count("--rater-layers", 1)?,
        rater_heads: count("--rater-heads", 2)?,
        steps,
        modes,
        reps: count("--reps", 3)?,
        warmup: args.iter().any(|a| a == "--warmup"),
        f64: args.iter().any(|a| a == "--f64"),
        budget,
        check: !args.iter().any(|a| a == "--no-check"),
        json: value("--json"),
        plot: value("--plot"),
    })
}

fn mib(b: usize) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// One (T, mode) measurement.
struct Row {
    t: usize,
    mode: &'static str,
    /// `Err(message)` when the run passed the memory budget.
    outcome: std::result::Result<Measured, String>,
}

struct Measured {
    peak: usize,
    secs: f64,
    work: flops::FlopCount,
    rel_error: Option<f64>,
    /// The engine's own account (stored states, recomputed steps, tape bytes).
    stats: MetaStats,
}

fn transformer(
    d: usize,
    layers: usize,
    heads: usize,
    seq: usize,
    causal: bool,
) -> TransformerConfig {
    TransformerConfig::new(d, layers, heads, seq).with_causal(causal)
}

fn run<F: Float>(a: &Args) -> Result<Vec<Row>> {
    let corpus = Corpus::embedded();
    let pool = Sequences::from_rows(&corpus.sequences(a.seq)?)?;
    let lm = CausalLm::new(transformer(a.d, a.layers, a.heads, a.seq, true))?;
    let scorer = SequenceScorer::new(transformer(
        a.rater_d,
        a.rater_layers,
        a.rater_heads,
        a.seq,
        false,
    ))?;
    let inner = TextLm::new(lm.clone(), Adam::<F>::new(F::c(1e-3)))?;
    let pool = TextPool::new(pool, a.batch)?;
    let rater = TextRater { scorer };
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
    };
    // The reference the modes' accuracy is measured against: mixed mode in f64 on one
    // thread, from the same starting point.
    let inner64 = TextLm::new(lm, Adam::<f64>::new(1e-3))?;
    let problem64 = DataRaterProblem {
        inner: &inner64,
        rater: &rater,
        outer: &MeanLoss,
    };
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| Error::Usage(e.to_string()))?;
    let mut rng = Rng::new(0);
    let theta: Params<Tensor<F>> = inner.init(&mut rng);
    let eta: Params<Tensor<F>> = rater.init(&mut rng);
    let state = inner.opt.init(&theta);
    println!(
        "precision {}; inner params {} ({:.2} MiB), rater params {}; budget {}",
        std::any::type_name::<F>(),
        theta.numel(),
        mib(theta.nbytes()),
        eta.numel(),
        a.budget
            .map_or("none".into(), |b| format!("{:.0} MiB", mib(b)))
    );
    let names: Vec<&str> = a.modes.iter().map(|m| m.0).collect();
    let head = |unit: &str| {
        names
            .iter()
            .map(|n| format!(" {:>13}", format!("{n} {unit}")))
            .collect::<String>()
    };
    println!(
        "{:>3} |{} |{} |{} | ratios; rel. error vs f64 per mode",
        "T",
        head("MiB"),
        head("s"),
        head("GF/s")
    );
    let mut rows = Vec::new();
    for &t in &a.steps {
        let batches: Vec<TextBatch> = (0..t)
            .map(|_| pool.sample(&mut rng))
            .collect::<Result<_>>()?;
        let outer = pool.sample(&mut rng)?;
        let exact = if a.check {
            let (theta64, eta64) = (theta.cast(), eta.cast());
            let state64 = inner64.opt.init(&theta64);
            Some(
                one_thread
                    .install(|| {
                        MetaRequest::new(&problem64, &eta64, &theta64, &state64, &batches, &outer)
                            .run()
                    })?
                    .grad,
            )
        } else {
            None
        };
        for &(name, mode) in &a.modes {
            let mut request =
                MetaRequest::new(&problem, &eta, &theta, &state, &batches, &outer).mode(mode);
            request.memory_budget = a.budget;
            let (mut peak, mut secs, mut work, mut grad) = (0, Vec::new(), None, None);
            let mut stats = None;
            let mut over = None;
            if a.warmup {
                // Untimed, as a JIT's first call: the process's heap, its pages and
                // rayon's threads are then warm for the timed runs (which report an
                // over-budget window themselves).
                match request.run() {
                    Ok(_) | Err(Error::MemoryBudget { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
            for _ in 0..a.reps {
                let start = Instant::now();
                let ((r, w), p) = measure_peak(|| flops::count(|| request.run()));
                secs.push(start.elapsed().as_secs_f64());
                peak = peak.max(p);
                match r {
                    Ok(r) => {
                        work.get_or_insert(w);
                        stats.get_or_insert(r.stats);
                        grad.get_or_insert(r.grad);
                    }
                    Err(e @ Error::MemoryBudget { .. }) => {
                        over = Some(e.to_string());
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            let outcome = match (over, work, grad, stats) {
                (Some(e), ..) => Err(e),
                (None, Some(work), Some(grad), Some(stats)) => {
                    let rel_error = match &exact {
                        Some(x) => Some(datarater::autodiff::check::compare(&grad.cast(), x)?.rel),
                        None => None,
                    };
                    Ok(Measured {
                        peak,
                        secs: median(secs),
                        work,
                        rel_error,
                        stats,
                    })
                }
                _ => unreachable!("reps >= 1 is checked by parse_args"),
            };
            rows.push(Row {
                t,
                mode: name,
                outcome,
            });
        }
        let mine: Vec<&Row> = rows.iter().filter(|r| r.t == t).collect();
        let cell = |f: &dyn Fn(&Measured) -> String| -> String {
            mine.iter()
                .map(|r| {
                    format!(
                        " {:>13}",
                        r.outcome.as_ref().map_or("over budget".into(), f)
                    )
                })
                .collect()
        };
        let get = |mode: &str| {
            mine.iter()
                .find(|r| r.mode == mode)
                .and_then(|r| r.outcome.as_ref().ok())
        };
        let mut notes = Vec::new();
        if let (Some(u), Some(m)) = (get("unrolled"), get("mixed")) {
            notes.push(format!(
                "unr/mix {:.1}x MiB, {:.2}x s",
                u.peak as f64 / m.peak as f64,
                u.secs / m.secs
            ));
        }
        if let (Some(u), Some(c)) = (get("unrolled"), get("ckpt")) {
            notes.push(format!(
                "unr/ckpt {:.1}x MiB",
                u.peak as f64 / c.peak as f64
            ));
        }
        if let Some(m) = get("mixed") {
            notes.push(format!(
                "mixed stores {} states, replays {} updates",
                m.stats.stored_states, m.stats.replayed_updates
            ));
        }
        if let Some(c) = get("ckpt") {
            notes.push(format!(
                "ckpt stores {} states, recomputes {} steps",
                c.stats.stored_states, c.stats.recomputed_steps
            ));
        }
        let errs: Vec<String> = mine
            .iter()
            .filter_map(|r| {
                r.outcome
                    .as_ref()
                    .ok()?
                    .rel_error
                    .map(|e| format!("{e:.1e}"))
            })
            .collect();
        if !errs.is_empty() {
            notes.push(format!("err {}", errs.join(" ")));
        }
        println!(
            "{t:>3} |{} |{} |{} | {}",
            cell(&|m| format!("{:.1}", mib(m.peak))),
            cell(&|m| format!("{:.3}", m.secs)),
            cell(&|m| format!("{:.1}", m.work.matmul as f64 / m.secs / 1e9)),
            notes.join("; ")
        );
        for r in &mine {
            if let Err(e) = &r.outcome {
                println!("      {}: {e}", r.mode);
            }
        }
    }
    Ok(rows)
}

fn write_json(path: &str, a: &Args, rows: &[Row]) -> Result<()> {
    let objects: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            let mut o = serde_json::json!({ "T": r.t, "mode": r.mode });
            match &r.outcome {
                Ok(m) => {
                    o["fits"] = true.into();
                    o["peak_bytes"] = m.peak.into();
                    o["seconds"] = m.secs.into();
                    o["matmul_flops"] = m.work.matmul.into();
                    o["other_elements"] = m.work.other.into();
                    o["gflops_per_s"] = (m.work.matmul as f64 / m.secs / 1e9).into();
                    o["rel_error_vs_f64"] = m.rel_error.into();
                    o["stored_states"] = m.stats.stored_states.into();
                    o["recomputed_steps"] = m.stats.recomputed_steps.into();
                    o["replayed_updates"] = m.stats.replayed_updates.into();
                    o["trajectory_bytes"] = m.stats.trajectory_bytes.into();
                    o["peak_tape_bytes"] = m.stats.peak_tape_bytes.into();
                }
                Err(e) => {
                    o["fits"] = false.into();
                    o["error"] = e.clone().into();
                }
            }
            o
        })
        .collect();
    let doc = serde_json::json!({
        "workload": {
            "d": a.d, "layers": a.layers, "heads": a.heads, "seq": a.seq, "batch": a.batch,
            "rater_d": a.rater_d, "rater_layers": a.rater_layers, "rater_heads": a.rater_heads,
            "precision": if a.f64 { "f64" } else { "f32" },
            "threads": rayon::current_num_threads(), "reps": a.reps, "budget_bytes": a.budget,
        },
        "rows": objects,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| Error::Usage(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| Error::File {
        path: path.into(),
        reason: e.to_string(),
    })
}

/// What a plot panel shows of a measurement.
type Metric = fn(&Measured) -> f64;

/// Two log-log panels, peak MiB and seconds against T, one line per mode (rows over
/// budget are left out).
fn write_plot(path: &str, rows: &[Row], modes: &[(&'static str, Mode)]) -> Result<()> {
    let err = |e: String| Error::File {
        path: path.into(),
        reason: e,
    };
    let root = SVGBackend::new(path, (1100, 460)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let panels = root.split_evenly((1, 2));
    let metrics: [(&str, Metric); 2] = [
        ("peak heap (MiB)", |m| mib(m.peak)),
        ("time (s)", |m| m.secs),
    ];
    for (panel, (label, metric)) in panels.iter().zip(metrics) {
        let series: Vec<(&str, Vec<(f64, f64)>)> = modes
            .iter()
            .map(|(name, _)| {
                let pts = rows
                    .iter()
                    .filter(|r| r.mode == *name)
                    .filter_map(|r| r.outcome.as_ref().ok().map(|m| (r.t as f64, metric(m))))
                    .collect();
                (*name, pts)
            })
            .collect();
        let all: Vec<(f64, f64)> = series.iter().flat_map(|(_, p)| p.clone()).collect();
        if all.is_empty() {
            continue;
        }
        let (x0, x1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
        let (y0, y1) = all
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.1), b.max(p.1)));
        let mut chart = ChartBuilder::on(panel)
            .caption(format!("{label} vs T"), ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(
                (x0..x1.max(x0 * 2.0)).log_scale(),
                (y0 / 1.3..y1 * 1.3).log_scale(),
            )
            .map_err(|e| err(e.to_string()))?;
        chart
            .configure_mesh()
            .x_desc("T (inner steps)")
            .y_desc(label)
            .draw()
            .map_err(|e| err(e.to_string()))?;
        for (i, (name, pts)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(e.to_string()))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| err(e.to_string()))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(e.to_string()))?;
    }
    root.present().map_err(|e| err(e.to_string()))
}

fn main() {
    if let Err(e) = run_main() {
        eprintln!("memory_vs_bptt: {e}");
        std::process::exit(2);
    }
}

fn run_main() -> Result<()> {
    let a = parse_args()?;
    println!(
        "memory_vs_bptt: one meta-gradient of the held-out loss w.r.t. the rater, through T Adam steps"
    );
    println!(
        "inner: causal pre-LN transformer, vocab 256, width {}, {} layers, {} heads, MLP {}, GELU, learned positions; {}-byte sequences, batch {}, Adam lr 1e-3",
        a.d,
        a.layers,
        a.heads,
        4 * a.d,
        a.seq,
        a.batch
    );
    println!(
        "rater: bidirectional transformer, width {}, {} layer(s), {} heads, mean-pooled; outer batch {}",
        a.rater_d, a.rater_layers, a.rater_heads, a.batch
    );
    if let Some((_, mode)) = a.modes.iter().find(|m| m.0 == "ckpt") {
        println!("ckpt: {mode}, binomial checkpointing (0 = the least s with C(s + 3, 3) >= T)");
    }
    println!(
        "peak = real heap bytes (counting allocator) above the live bytes at the call; seconds = median of {} runs",
        a.reps
    );
    println!(
        "GFLOP = matmul FLOPs (2mnk) counted by the engine; Melem = elements written by other ops"
    );
    println!(
        "threads: {} (mixed/ckpt split each step's passes over the examples; unrolled is one tape)",
        rayon::current_num_threads()
    );
    println!("rel.err: max-norm relative distance from an f64 mixed-mode reference\n");
    let rows = if a.f64 {
        run::<f64>(&a)?
    } else {
        run::<f32>(&a)?
    };
    if let Some(path) = &a.json {
        write_json(path, &a, &rows)?;
        println!("wrote {path}");
    }
    if let Some(path) = &a.plot {
        write_plot(path, &rows, &a.modes)?;
        println!("wrote {path}");
    }
    Ok(())
}

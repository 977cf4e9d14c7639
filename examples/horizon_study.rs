//! Horizon study (issue 19): how old the inner models are when the meta-gradient is
//! taken decides what the rater values. Shuffled words and repeated runs help a young
//! byte LM about as much as clean text; they hurt one trained for ~1000 steps.
//!
//! On the demo's data (the shipped corpus or `--corpus PATH`, the demo's corruptions),
//! each setting meta-trains a rater, then reports each corruption's mean weight
//! relative to clean text on labelled test sequences, the share of each among what
//! dataset-level discard of 50% keeps, and the test loss after `--eval-steps` steps of
//! the demo's small LM trained on what it keeps; with the meta-training work (matrix
//! product FLOPs counted by `autodiff::flops`, warm start included), time and peak
//! heap (counted by `alloc::CountingAlloc`). The settings vary the reset period, the
//! target age (`TrainerConfig::target_steps`: warm start + staggered ages +
//! age-based resets, with or without plain steps between windows), the inner LM's
//! size, the window T and the rater's size.
//!
//! ```text
//! cargo run --release --example horizon_study -- [--corpus PATH] [--out DIR]
//!     [--outer-steps K] [--eval-steps S] [--population N] [--seed S] [--only a,b,..]
//! ```
//!
//! Writes `horizon.svg` and `horizon.json` to DIR (default `out/horizon`).

use datarater::alloc::{CountingAlloc, measure_peak};
use datarater::autodiff::flops;
use datarater::curate::discard_bottom;
use datarater::data::{LabeledSequence, default_mix};
use datarater::meta::{InnerLoop, MeanLoss, Mode};
use datarater::nn::{CausalLm, SequenceScorer};
use datarater::optim::Adam;
use datarater::trainer::{
    MetaAdam, Sequences, Setup, TextLm, TextPool, TextRater, Trainer, TrainerConfig,
    score_sequences,
};
use datarater::{Error, Params, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::*;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// One way of meta-training the rater.
#[derive(Clone, Debug)]
struct Setting {
    name: &'static str,
    reset_every: usize,
    target_steps: Option<usize>,
    plain_steps: usize,
    inner_steps: usize,
    lm_width: usize,
    rater_width: usize,
    rater_layers: usize,
}

const DEMO: Setting = Setting {
    name: "demo (reset every 50)",
    reset_every: 50,
    target_steps: None,
    plain_steps: 0,
    inner_steps: 2,
    lm_width: 32,
    rater_width: 32,
    rater_layers: 1,
};

fn settings() -> Vec<Setting> {
    // `TrainerConfig::for_target(n)` is the "plain" rows' setting: ceil(n / 125) - T plain steps.
    let t1000 = Setting {
        name: "target 1000",
        target_steps: Some(1000),
        ..DEMO
    };
    vec![
        DEMO,
        Setting {
            name: "never reset",
            reset_every: 0,
            ..DEMO
        },
        Setting {
            name: "target 300",
            target_steps: Some(300),
            ..DEMO
        },
        t1000.clone(),
        Setting {
            name: "target 1000, plain 6",
            plain_steps: 6,
            ..t1000.clone()
        },
        Setting {
            name: "target 1000, LM width 64",
            lm_width: 64,
            ..t1000.clone()
        },
        Setting {
            name: "target 1000, T = 4",
            inner_steps: 4,
            ..t1000.clone()
        },
        Setting {
            name: "target 1000, rater 64x2",
            rater_width: 64,
            rater_layers: 2,
            ..t1000
        },
        Setting {
            name: "target 3000, plain 22",
            target_steps: Some(3000),
            plain_steps: 22,
            ..DEMO
        },
    ]
}

struct Args {
    corpus: Option<PathBuf>,
    out: PathBuf,
    outer_steps: usize,
    eval_steps: usize,
    population: usize,
    seed: u64,
    only: Option<Vec<usize>>,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        corpus: None,
        out: PathBuf::from("out/horizon"),
        outer_steps: 300,
        eval_steps: 1000,
        population: 2,
        seed: 0,
        only: None,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    let bad = |field: &'static str, v: &str| Error::Config {
        field,
        reason: format!("`{v}` is not a whole number"),
    };
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(Error::Config {
            field: "arguments",
            reason: format!("`{flag}` needs a value"),
        })?;
        let num = |field| value.parse::<usize>().map_err(|_| bad(field, value));
        match flag.as_str() {
            "--corpus" => a.corpus = Some(PathBuf::from(value)),
            "--out" => a.out = PathBuf::from(value),
            "--outer-steps" => a.outer_steps = num("--outer-steps")?,
            "--eval-steps" => a.eval_steps = num("--eval-steps")?,
            "--population" => a.population = num("--population")?,
            "--seed" => a.seed = num("--seed")? as u64,
            "--only" => {
                a.only = Some(
                    value
                        .split(',')
                        .map(|v| v.trim().parse().map_err(|_| bad("--only", v)))
                        .collect::<Result<_>>()?,
                )
            }
            other => {
                return Err(Error::Config {
                    field: "arguments",
                    reason: format!("unknown flag `{other}`"),
                });
            }
        }
    }
    Ok(a)
}

/// What one setting gave.
struct Outcome {
    vs_clean: BTreeMap<String, f64>,
    kept: BTreeMap<String, f64>,
    test_loss: f64,
    meta_seconds: f64,
    meta_gflop: f64,
    peak_bytes: usize,
}

/// The data every setting shares.
struct Data {
    pool: Vec<LabeledSequence>,
    train_bytes: Arc<Sequences>,
    meta_held_out: Vec<Vec<u8>>,
    test: Vec<Vec<u8>>,
    eval: Vec<LabeledSequence>,
    eval_labels: Vec<String>,
}

/// Test loss after `args.eval_steps` steps of the demo's LM trained on `rows`.
fn lm_loss(args: &Args, data: &Data, rows: Vec<usize>) -> Result<f64> {
    let lm = TextLm::new(CausalLm::new(lm_config())?, Adam::new(3e-3f32))?;
    let init: Params<Tensor<f32>> = lm.init(&mut Rng::new(args.seed ^ 0xfeed));
    let steps = args.eval_steps;
    let curve = train_curve(
        &lm,
        &init,
        steps,
        steps,
        &data.test,
        args.seed,
        uniform(data.train_bytes.clone(), Arc::new(rows)),
    )?;
    Ok(curve.last().expect("non-empty").1)
}

fn run(args: &Args, data: &Data, s: &Setting) -> Result<Outcome> {
    let lm_cfg = lm_config()
        .with_d_model(s.lm_width)
        .with_d_ff(4 * s.lm_width);
    let rater_cfg = rater_config()
        .with_d_model(s.rater_width)
        .with_d_ff(2 * s.rater_width)
        .with_n_layers(s.rater_layers);
    let inner = TextLm::new(CausalLm::new(lm_cfg)?, Adam::new(3e-3f32))?;
    let rater = TextRater {
        scorer: SequenceScorer::new(rater_cfg)?,
    };
    let meta = MetaAdam::default()
        .with_lr(3e-3)
        .with_weight_decay(0.01)
        .with_warmup_steps(20)
        .with_clip_norm(1.0);
    let train_pool = TextPool::new(data.train_bytes.clone(), BATCH)?;
    let held_out_pool = TextPool::new(Sequences::from_rows(&data.meta_held_out)?, BATCH)?;
    let config = TrainerConfig::default()
        .with_outer_steps(args.outer_steps)
        .with_inner_steps(s.inner_steps)
        .with_population(args.population)
        .with_reset_every(s.reset_every)
        .with_mode(Mode::Mixed)
        .with_seed(args.seed)
        .with_target_steps(s.target_steps)
        .with_plain_steps(s.plain_steps);
    let setup = Setup {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
        meta_opt: &meta,
        train: &train_pool,
        held_out: &held_out_pool,
    };
    let trainer = Trainer::new(setup, config)?;
    let start = Instant::now();
    // Warm start included: it is part of what the setting costs.
    let ((eta, work), peak_bytes) = measure_peak(|| {
        flops::count(|| -> Result<Params<Tensor<f32>>> {
            let mut state = trainer.init(None)?;
            trainer.run(&mut state, |_, _| {})?;
            Ok(state.eta)
        })
    });
    let eta = eta?;
    let meta_seconds = start.elapsed().as_secs_f64();
    let weights = relative_weights(
        &score_sequences(&rater, &eta, &data.eval, 128)?,
        &data.eval_labels,
    );
    let pool_scores = score_sequences(&rater, &eta, &data.pool, 128)?;
    let kept = kept_shares(&data.pool, &pool_scores, 0.5)?;
    let test_loss = lm_loss(args, data, discard_bottom(&pool_scores, 0.5)?)?;
    Ok(Outcome {
        vs_clean: relative_to_clean(&weights),
        kept,
        test_loss,
        meta_seconds,
        meta_gflop: work.matmul as f64 / 1e9,
        peak_bytes,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let t0 = Instant::now();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::File {
        path: args.out.display().to_string(),
        reason: e.to_string(),
    })?;
    // The demo's split, corruptions and labelled evaluation set, from the same seed.
    let mut rng = Rng::new(args.seed);
    let DemoData {
        pool,
        meta_held_out,
        test,
        ..
    } = demo_data(args.corpus.as_deref(), &mut rng)?;
    let mix = default_mix();
    let mut eval_rng = rng.fork(7);
    let mut eval = vec![];
    for (c, _) in &mix {
        for s in test.iter().take(100) {
            eval.push(LabeledSequence {
                bytes: c.apply(s, &mut eval_rng)?,
                kind: c.kind(),
                level: c.level(),
            });
        }
    }
    let data = Data {
        train_bytes: Arc::new(Sequences::from_rows(
            &pool.iter().map(|s| &s.bytes[..]).collect::<Vec<_>>(),
        )?),
        eval_labels: eval.iter().map(|s| label(s.kind, s.level)).collect(),
        pool,
        meta_held_out,
        test,
        eval,
    };
    let columns: Vec<String> = mix
        .iter()
        .map(|(c, _)| label(c.kind(), c.level()))
        .collect();
    let all: Vec<usize> = (0..data.pool.len()).collect();
    let clean: Vec<usize> = all
        .iter()
        .copied()
        .filter(|&i| data.pool[i].kind == "clean")
        .collect();
    let (unfiltered, clean_only) = (lm_loss(&args, &data, all)?, lm_loss(&args, &data, clean)?);
    println!(
        "horizon study: {} outer steps, population {}, pool {} sequences; the demo's LM trained {} steps: unfiltered test loss {unfiltered:.4}, clean rows only {clean_only:.4}",
        args.outer_steps,
        args.population,
        data.pool.len(),
        args.eval_steps
    );
    println!(
        "weight relative to clean text (target <= 0.5 for shuffled and repeats) | share of the kept 50% | test loss after {} steps on the kept 50% | meta-training matmul GFLOP (counted), seconds (shared machine) | peak heap",
        args.eval_steps
    );
    let short = [
        "bytes 0.1",
        "bytes 1",
        "shuffled 0.5",
        "repeats 0.05",
        "all caps",
    ];
    println!(
        "{:<3} {:<26} {}  {:>8} {:>8} {:>8}  {:>8} {:>8} {:>8} {:>8}",
        "#",
        "setting",
        short.iter().map(|c| format!("{c:>13}")).collect::<String>(),
        "clean%",
        "shuf%",
        "rep%",
        "loss",
        "GFLOP",
        "meta s",
        "peak MB"
    );
    let mut rows = vec![];
    for (i, s) in settings().iter().enumerate() {
        if args.only.as_ref().is_some_and(|o| !o.contains(&i)) {
            continue;
        }
        let o = run(&args, &data, s)?;
        let share = |c: &str| 100.0 * o.kept.get(c).copied().unwrap_or(0.0);
        println!(
            "{i:<3} {:<26} {}  {:>7.1}% {:>7.1}% {:>7.1}%  {:>8.4} {:>8.0} {:>8.1} {:>8.1}",
            s.name,
            short
                .iter()
                .map(|c| format!("{:>13.3}", o.vs_clean[*c]))
                .collect::<String>(),
            share("clean"),
            share("shuffled 0.5"),
            share("repeats 0.05"),
            o.test_loss,
            o.meta_gflop,
            o.meta_seconds,
            o.peak_bytes as f64 / 1e6
        );
        rows.push((i, s.clone(), o));
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = columns
        .iter()
        .filter(|c| *c != "clean")
        .map(|c| {
            (
                c.clone(),
                rows.iter()
                    .map(|(i, _, o)| (*i as f64, o.vs_clean[c].max(1e-3).log10()))
                    .collect(),
            )
        })
        .collect();
    plot_lines(
        &args.out.join("horizon.svg"),
        "Weight relative to clean text, per setting (see horizon.json)",
        "setting #",
        "log10(weight / clean weight)",
        &series,
    )?;
    let json = serde_json::json!({
        "outer_steps": args.outer_steps,
        "population": args.population,
        "eval_steps": args.eval_steps,
        "seed": args.seed,
        "unfiltered_test_loss": unfiltered,
        "clean_only_test_loss": clean_only,
        "settings": rows.iter().map(|(i, s, o)| serde_json::json!({
            "index": i,
            "name": s.name,
            "reset_every": s.reset_every,
            "target_steps": s.target_steps,
            "plain_steps": s.plain_steps,
            "inner_steps": s.inner_steps,
            "lm_width": s.lm_width,
            "rater_width": s.rater_width,
            "rater_layers": s.rater_layers,
            "weight_relative_to_clean": o.vs_clean,
            "share_kept_by_discard_0_5": o.kept,
            "test_loss_on_kept": o.test_loss,
            "meta_training_seconds": o.meta_seconds,
            "meta_training_matmul_gflop": o.meta_gflop,
            "peak_heap_bytes": o.peak_bytes,
        })).collect::<Vec<_>>(),
        "total_seconds": t0.elapsed().as_secs_f64(),
    });
    let path = args.out.join("horizon.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&json).expect("valid json"),
    )
    .map_err(|e| Error::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    println!(
        "wrote {}/{{horizon.svg, horizon.json}} in {:.0}s",
        args.out.display(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

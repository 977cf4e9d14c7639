//! The end-to-end DataRater demo on real text.
//!
//! 1. Cut a corpus (the shipped Devil's Dictionary by default, or `--corpus PATH`) into
//!    64-byte sequences; split them into training, meta-held-out and test sets.
//! 2. Corrupt 80% of the training sequences (byte replacement at five levels, shuffled
//!    words, runs of repeated characters, all caps).
//! 3. Meta-train a bidirectional-transformer rater with Algorithm 1 (a population of
//!    byte-level causal LMs, exact mixed-mode meta-gradients through T Adam steps),
//!    printing the mean weight the rater gives each corruption level as it learns.
//!    `--target-steps N` meta-trains it for a model trained about N steps
//!    (`TrainerConfig::for_target`; default 0 = fresh members reset every 50 outer
//!    steps, see docs/guide.md for the trade-off).
//!    Then each corruption's mean weight relative to clean text and its share of what
//!    50% dataset-level discard keeps.
//! 4. Curate: sweep dataset-level discard fractions on a small model, then train fresh
//!    LMs without filtering, with dataset-level discard and with online batch-level
//!    filtering, and compare their test-loss curves.
//! 5. Transfer: train a 4x wider, twice as deep LM on the unfiltered pool and on the
//!    pool the small-model rater kept, and account for the compute: FLOPs of
//!    meta-training and scoring (counted by `autodiff::flops`) against the FLOPs the
//!    larger LM saves by reaching its baseline's final loss sooner.
//!    `--transfer-steps 0` skips it.
//!
//! ```text
//! cargo run --release --example datarater -- [--corpus PATH] [--out DIR] [--outer-steps K]
//!     [--population N] [--inner-steps T] [--final-steps S] [--sweep-steps S]
//!     [--transfer-steps S] [--target-steps N] [--seed S]
//! ```
//!
//! Writes to DIR (default `out/`): `weights.svg`, `loss.svg`, `transfer.svg` (unless
//! skipped), `scores.csv` (`kind,level,score` per scored test sequence), `summary.json`
//! and `rater.safetensors`.

use datarater::autodiff::flops::{self, FlopCount};
use datarater::curate::rater_file::RaterFile;
use datarater::curate::{
    auc, discard_bottom, draw_size, filter_batch, spearman, sweep_discard_fractions,
};
use datarater::data::{Corruption, LabeledSequence, default_mix};
use datarater::meta::{InnerLoop, MeanLoss, Mode};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{
    MetaAdam, Sequences, Setup, TextBatch, TextLm, TextPool, TextRater, Trainer, TrainerConfig,
    score_sequences, train_step,
};
use datarater::{Error, Params, Result, Rng, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

mod common;
use common::*;

struct Args {
    corpus: Option<PathBuf>,
    out: PathBuf,
    outer_steps: usize,
    population: usize,
    inner_steps: usize,
    final_steps: usize,
    sweep_steps: usize,
    transfer_steps: usize,
    target_steps: usize,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        corpus: None,
        out: PathBuf::from("out"),
        outer_steps: 300,
        population: 2,
        inner_steps: 2,
        final_steps: 600,
        sweep_steps: 200,
        transfer_steps: 1200,
        target_steps: 0,
        seed: 0,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = |field: &'static str| {
            it.next().cloned().ok_or(Error::Config {
                field,
                reason: "missing value".into(),
            })
        };
        let num = |field: &'static str, v: String| {
            v.parse::<usize>().map_err(|_| Error::Config {
                field,
                reason: format!("`{v}` is not a whole number"),
            })
        };
        match flag.as_str() {
            "--corpus" => a.corpus = Some(PathBuf::from(value("--corpus")?)),
            "--out" => a.out = PathBuf::from(value("--out")?),
            "--outer-steps" => a.outer_steps = num("--outer-steps", value("--outer-steps")?)?,
            "--population" => a.population = num("--population", value("--population")?)?,
            "--inner-steps" => a.inner_steps = num("--inner-steps", value("--inner-steps")?)?,
            "--final-steps" => a.final_steps = num("--final-steps", value("--final-steps")?)?,
            "--sweep-steps" => a.sweep_steps = num("--sweep-steps", value("--sweep-steps")?)?,
            "--transfer-steps" => {
                a.transfer_steps = num("--transfer-steps", value("--transfer-steps")?)?
            }
            "--target-steps" => a.target_steps = num("--target-steps", value("--target-steps")?)?,
            "--seed" => a.seed = num("--seed", value("--seed")?)? as u64,
            other => {
                return Err(Error::Config {
                    field: "arguments",
                    reason: format!("unknown flag `{other}`"),
                });
            }
        }
    }
    if a.final_steps < 25 {
        return Err(Error::Config {
            field: "--final-steps",
            reason: "must be at least 25".into(),
        });
    }
    if a.transfer_steps != 0 && a.transfer_steps < 24 {
        return Err(Error::Config {
            field: "--transfer-steps",
            reason: "must be 0 (skip the transfer study) or at least 24".into(),
        });
    }
    Ok(a)
}

/// The transfer study's LM: 4x the width (and MLP), 2x the layers, heads scaled so each
/// head keeps the small LM's width (16).
fn large_lm_config() -> TransformerConfig {
    let s = lm_config();
    let (d_model, n_layers, n_heads, d_ff) = (s.d_model, s.n_layers, s.n_heads, s.d_ff);
    s.with_d_model(4 * d_model)
        .with_n_layers(2 * n_layers)
        .with_n_heads(4 * n_heads)
        .with_d_ff(4 * d_ff)
}

/// What the rater cost, in counted work.
struct Costs {
    meta_training: FlopCount,
    scoring: FlopCount,
    sweep: FlopCount,
}

/// Trains the larger LM ([`large_lm_config`]) from one initialisation, with one seed, on
/// the whole corrupted pool (the baseline) and on the rows the rater kept, evaluating
/// both on the same test sequences; prints and returns the steps the curated run needs
/// to reach the baseline's final loss and the compute accounting.
fn transfer(
    args: &Args,
    train_bytes: &Arc<Sequences>,
    all: &Arc<Vec<usize>>,
    kept: &Arc<Vec<usize>>,
    frac: f64,
    test: &[Vec<u8>],
    costs: &Costs,
) -> Result<serde_json::Value> {
    let steps = args.transfer_steps;
    let cfg = large_lm_config();
    let lm = TextLm::new(CausalLm::new(cfg.clone())?, Adam::new(3e-3f32))?;
    let init: Params<Tensor<f32>> = lm.init(&mut Rng::new(args.seed ^ 0xbeef));
    // Every training step has the same shapes, so one counted step times the number of
    // steps is the run's training work (the two runs overlap in time below, so their
    // work cannot be told apart on the process-wide counter).
    let probe = TextBatch::from_pool(&**train_bytes, (0..BATCH).collect())?;
    let (mut th, mut st) = (init.clone(), lm.opt.init(&init));
    let (r, step_flops) = flops::count(|| train_step(&lm, &mut th, &mut st, &probe));
    r?;
    let every = steps / 24;
    println!(
        "\ntransfer: a 4x wider, 2x deeper LM (width {}, {} layers, {} heads, MLP {}; {} parameters, {:.2} GFLOP per training step) for {steps} steps: no filtering / the rater's dataset-level discard {:.0}%",
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.d_ff,
        init.numel(),
        step_flops.matmul as f64 / 1e9,
        frac * 100.0
    );
    let draw = |rows: Arc<Vec<usize>>| uniform(train_bytes.clone(), rows);
    let start = Instant::now();
    let (baseline, curated) = rayon::join(
        || train_curve(&lm, &init, steps, every, test, args.seed, draw(all.clone())),
        || {
            train_curve(
                &lm,
                &init,
                steps,
                every,
                test,
                args.seed,
                draw(kept.clone()),
            )
        },
    );
    let (baseline, curated) = (baseline?, curated?);
    let seconds = start.elapsed().as_secs_f64();
    println!("{:>6} {:>12} {:>12}", "step", "baseline", "discard");
    for (b, c) in baseline.iter().zip(&curated) {
        if b.0 % (4 * every) == 0 || b.0 == steps {
            println!("{:>6} {:>12.4} {:>12.4}", b.0, b.1, c.1);
        }
    }
    let target = baseline.last().expect("non-empty").1;
    let reach = curated.iter().find(|p| p.1 <= target).map(|p| p.0);
    let ratio = reach.map(|s| s as f64 / steps as f64);
    println!(
        "baseline final test loss {target:.4} after {steps} steps; the curated run reaches it in {}   (target <= 75%)",
        match (reach, ratio) {
            (Some(s), Some(r)) => format!("{s} steps ({:.0}% of baseline)", 100.0 * r),
            _ => "never".into(),
        }
    );
    // The paper's accounting, in matmul FLOPs (2mnk per product, as counted); other
    // primitives' element counts (a few percent of that) are recorded in summary.json
    // but not added in.
    let baseline_flops = step_flops.matmul * steps as u64;
    let cost = costs.meta_training.matmul + costs.scoring.matmul;
    let saved = ratio.map(|r| (1.0 - r) * baseline_flops as f64);
    let net = saved.map(|s| s - cost as f64);
    let net_with_sweep = net.map(|n| n - costs.sweep.matmul as f64);
    let break_even = ratio
        .filter(|&r| r < 1.0)
        .map(|r| (cost as f64 / ((1.0 - r) * step_flops.matmul as f64)).ceil() as usize);
    let row = |label: String, flops: Option<f64>, note: &str| {
        let v = flops.map_or("n/a".to_string(), |v| format!("{:.1}", v / 1e9));
        println!("  {label:<62} {v:>8}{note}");
    };
    let some = |f: u64| Some(f as f64);
    println!("compute (GFLOP of matrix products, counted by autodiff::flops):");
    row(
        format!(
            "meta-training the rater ({} outer steps x population {} x T = {})",
            args.outer_steps, args.population, args.inner_steps
        ),
        some(costs.meta_training.matmul),
        "",
    );
    row(
        format!(
            "scoring the training pool ({} sequences)",
            train_bytes.len()
        ),
        some(costs.scoring.matmul),
        "",
    );
    row(
        format!("larger LM, baseline run ({steps} steps)"),
        some(baseline_flops),
        "",
    );
    row(
        "saved by curation: (1 - ratio) x baseline".into(),
        saved,
        "",
    );
    row(
        "net gain = saved - (meta-training + scoring)".into(),
        net,
        "   (target > 0)",
    );
    row(
        "discard-fraction sweep (not in the paper's accounting)".into(),
        some(costs.sweep.matmul),
        "",
    );
    row("net gain counting the sweep too".into(), net_with_sweep, "");
    if let Some(b) = break_even {
        println!(
            "  break-even: the net gain is positive for baseline runs longer than {b} steps at this ratio"
        );
    }
    let count =
        |f: &FlopCount| serde_json::json!({"matmul_flops": f.matmul, "other_elements": f.other});
    let to_f = |c: &[(usize, f64)]| c.iter().map(|&(s, l)| (s as f64, l)).collect::<Vec<_>>();
    plot_lines(
        &args.out.join("transfer.svg"),
        &format!(
            "Larger LM (width {}, {} layers): test loss",
            cfg.d_model, cfg.n_layers
        ),
        "step",
        "test loss (nats/byte)",
        &[
            ("no filtering".into(), to_f(&baseline)),
            (format!("discard {:.0}%", frac * 100.0), to_f(&curated)),
        ],
    )?;
    Ok(serde_json::json!({
        "lm": {"d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_ff": cfg.d_ff, "parameters": init.numel()},
        "steps": steps,
        "eval_every": every,
        "test_sequences": test.len(),
        "discard_fraction": frac,
        "seconds": seconds,
        "baseline_curve": baseline,
        "curated_curve": curated,
        "baseline_final_test_loss": target,
        "curated_final_test_loss": curated.last().map(|p| p.1),
        "curated_steps_to_baseline_loss": reach,
        "curated_steps_fraction_of_baseline": ratio,
        "flops": {
            "unit": "matmul FLOPs (2mnk per product) counted by datarater::autodiff::flops; other_elements = elements written by other primitives, not added in",
            "meta_training": count(&costs.meta_training),
            "scoring_training_pool": count(&costs.scoring),
            "discard_fraction_sweep": count(&costs.sweep),
            "large_lm_training_step": count(&step_flops),
            "large_lm_baseline_run": baseline_flops,
            "saved": saved,
            "net_gain": net,
            "net_gain_counting_sweep": net_with_sweep,
            "break_even_baseline_steps": break_even,
        },
    }))
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let t0 = Instant::now();
    std::fs::create_dir_all(&args.out).map_err(|e| Error::File {
        path: args.out.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut rng = Rng::new(args.seed);
    let DemoData {
        corpus_bytes,
        pool,
        meta_held_out,
        test,
    } = demo_data(args.corpus.as_deref(), &mut rng)?;
    let (meta_held_out, test) = (&meta_held_out[..], &test[..]);
    let mix = default_mix();
    let train_bytes = Arc::new(Sequences::from_rows(
        &pool.iter().map(|s| &s.bytes[..]).collect::<Vec<_>>(),
    )?);
    println!("datarater demo: {corpus_bytes} bytes of text, {SEQ_LEN}-byte sequences");
    println!(
        "  training pool {} sequences ({}% clean; byte replacement at 0.1/0.25/0.5/0.75/1.0, shuffled words, repeated runs, all caps)",
        pool.len(),
        (100.0 * pool.iter().filter(|s| s.kind == "clean").count() as f64 / pool.len() as f64)
            .round()
    );
    println!(
        "  meta-held-out {} clean sequences, test {} clean sequences",
        meta_held_out.len(),
        test.len()
    );

    // Labelled evaluation set: up to 100 test sequences, each under every corruption.
    let mut eval_rng = rng.fork(7);
    let eval: Vec<LabeledSequence> = mix
        .iter()
        .flat_map(|(c, _)| test.iter().take(100).map(move |s| (*c, s)))
        .map(|(c, s): (Corruption, &Vec<u8>)| {
            Ok(LabeledSequence {
                bytes: c.apply(s, &mut eval_rng)?,
                kind: c.kind(),
                level: c.level(),
            })
        })
        .collect::<Result<_>>()?;
    let eval_labels: Vec<String> = eval.iter().map(|s| label(s.kind, s.level)).collect();

    let lm = CausalLm::new(lm_config())?;
    let inner = TextLm::new(lm, Adam::new(3e-3f32))?;
    let train_pool = TextPool::new(train_bytes.clone(), BATCH)?;
    let rater = TextRater {
        scorer: SequenceScorer::new(rater_config())?,
    };
    let meta = MetaAdam::default()
        .with_lr(3e-3)
        .with_weight_decay(0.01)
        .with_warmup_steps(20)
        .with_clip_norm(1.0);
    let held_out_pool = TextPool::new(Sequences::from_rows(meta_held_out)?, BATCH)?;
    let config = TrainerConfig::default()
        .with_outer_steps(args.outer_steps)
        .with_inner_steps(args.inner_steps)
        .with_population(args.population)
        .with_reset_every(50)
        .with_mode(Mode::Mixed)
        .with_seed(args.seed);
    // Off by default: on this corpus it costs 1.9x the meta-training work and does not
    // pay off for the 600- and 1200-step LMs below (docs/guide.md, "Valuing data for
    // the model you will train").
    let config = match args.target_steps {
        0 => config,
        n => config.for_target(n),
    };
    let population = match config.target_steps {
        Some(n) => format!(
            "target {n} steps: warm-started to staggered ages, {} plain steps per outer step, reset at age {n}",
            config.plain_steps
        ),
        None => format!("reset every {}, staggered", config.reset_every),
    };
    println!(
        "meta-training: K = {} outer steps, population {} ({population}), T = {} inner Adam steps, batch {}, mixed-mode meta-gradients",
        config.outer_steps, config.population, config.inner_steps, BATCH
    );
    let setup = Setup {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
        meta_opt: &meta,
        train: &train_pool,
        held_out: &held_out_pool,
    };
    let trainer = Trainer::new(setup, config.clone())?;
    // The warm start (with --target-steps) is part of meta-training's time and work.
    let init_start = Instant::now();
    let (state, init_flops) = flops::count(|| trainer.init(None));
    let (mut state, init_seconds) = (state?, init_start.elapsed().as_secs_f64());

    let columns: Vec<String> = mix
        .iter()
        .map(|(c, _)| label(c.kind(), c.level()))
        .collect();
    let mut history: Vec<(usize, BTreeMap<String, f64>)> = Vec::new();
    let snapshot = |eta: &Params<Tensor<f32>>| -> Result<BTreeMap<String, f64>> {
        Ok(relative_weights(
            &score_sequences(&rater, eta, &eval, 128)?,
            &eval_labels,
        ))
    };
    println!(
        "\nmean relative weight per corruption on held-out sequences (softmax over all of them x count; 1 = average)"
    );
    let header: Vec<String> = columns.iter().map(|c| format!("{c:>13}")).collect();
    println!("{:>6} {}", "step", header.join(""));
    let print_row = |step: usize, w: &BTreeMap<String, f64>| {
        let cells: Vec<String> = columns.iter().map(|c| format!("{:>13.3}", w[c])).collect();
        println!("{step:>6} {}", cells.join(""));
    };
    let w0 = snapshot(&state.eta)?;
    print_row(0, &w0);
    history.push((0, w0));
    let every = (args.outer_steps / 6).max(1);
    let meta_start = Instant::now();
    let mut last_loss = f64::NAN;
    // FLOPs of meta-training: everything counted while the trainer runs, minus the
    // progress snapshots (scoring the labelled set is monitoring, not training).
    let mut monitor = FlopCount::default();
    let meta_before = flops::snapshot();
    trainer.run(&mut state, |r, s| {
        last_loss = r.mean_outer_loss();
        if s.step % 10 == 0 {
            eprintln!(
                "  outer step {:>4}/{} held-out loss {:.3} |meta-grad| {:.2e} ({:.2}s/step{})",
                s.step,
                args.outer_steps,
                last_loss,
                r.grad_norms.iter().sum::<f64>() / r.grad_norms.len() as f64,
                r.seconds,
                if r.resets.is_empty() {
                    String::new()
                } else {
                    format!(", reset {:?}", r.resets)
                }
            );
        }
        if s.step % every == 0 || s.step == args.outer_steps {
            let (w, work) = flops::count(|| snapshot(&s.eta));
            (monitor.matmul, monitor.other) =
                (monitor.matmul + work.matmul, monitor.other + work.other);
            if let Ok(w) = w {
                print_row(s.step, &w);
                history.push((s.step, w));
            }
        }
    })?;
    let run_flops = flops::snapshot() - meta_before - monitor;
    let meta_flops = FlopCount {
        matmul: run_flops.matmul + init_flops.matmul,
        other: run_flops.other + init_flops.other,
    };
    let meta_seconds = meta_start.elapsed().as_secs_f64() + init_seconds;
    println!("meta-training took {meta_seconds:.1}s");
    // A rater file the command line can use: `datarater score --rater OUT/rater.safetensors`.
    RaterFile {
        scorer: rater.scorer.clone(),
        seq_len: SEQ_LEN,
        training: serde_json::json!({
            "source": "examples/datarater.rs",
            "outer_steps": config.outer_steps,
            "inner_steps": config.inner_steps,
            "population": config.population,
            "target_steps": config.target_steps,
            "plain_steps": config.plain_steps,
            "seed": config.seed,
        }),
        eta: state.eta.clone(),
    }
    .save(args.out.join("rater.safetensors"))?;

    // Final scores of the labelled evaluation set.
    let scores = score_sequences(&rater, &state.eta, &eval, 128)?;
    let mut csv = String::from("kind,level,score\n");
    for (s, sc) in eval.iter().zip(&scores) {
        csv.push_str(&format!("{},{},{}\n", s.kind, s.level, sc));
    }
    let write = |name: &str, text: &str| {
        let p = args.out.join(name);
        std::fs::write(&p, text).map_err(|e| Error::File {
            path: p.display().to_string(),
            reason: e.to_string(),
        })
    };
    write("scores.csv", &csv)?;
    let byte_rows: Vec<(f64, f64)> = eval
        .iter()
        .zip(&scores)
        .filter(|(s, _)| s.kind == "clean" || s.kind == "byte_replace")
        .map(|(s, &sc)| (s.level, sc))
        .collect();
    let rho = spearman(
        &byte_rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        &byte_rows.iter().map(|r| r.1).collect::<Vec<_>>(),
    );
    let clean: Vec<f64> = byte_rows
        .iter()
        .filter(|r| r.0 == 0.0)
        .map(|r| r.1)
        .collect();
    let noisy: Vec<f64> = byte_rows
        .iter()
        .filter(|r| r.0 >= 0.5)
        .map(|r| r.1)
        .collect();
    let auc_clean = auc(&clean, &noisy);
    let mean_by_level: Vec<(f64, f64)> = [0.0, 0.1, 0.25, 0.5, 0.75, 1.0]
        .iter()
        .map(|&l| {
            let v: Vec<f64> = byte_rows.iter().filter(|r| r.0 == l).map(|r| r.1).collect();
            (l, v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();
    let monotone = mean_by_level.windows(2).all(|w| w[1].1 < w[0].1);
    println!("\nrater on held-out sequences:");
    for (l, m) in &mean_by_level {
        println!("  byte replacement {l:>4}: mean score {m:+.3}");
    }
    println!("  mean score decreases monotonically with the level: {monotone}");
    println!(
        "  Spearman(level, score) over {} sequences: {rho:.3}   (target <= -0.9)",
        byte_rows.len()
    );
    println!("  AUC clean vs byte replacement >= 0.5: {auc_clean:.3}   (target >= 0.95)");

    // Curation.
    let lm_small = TextLm::new(CausalLm::new(lm_config())?, Adam::new(3e-3f32))?;
    let init: Params<Tensor<f32>> = lm_small.init(&mut Rng::new(args.seed ^ 0xfeed));
    let (pool_scores, scoring_flops) =
        flops::count(|| score_sequences(&rater, &state.eta, &pool, 128));
    let pool_scores = pool_scores?;
    // How each corruption fares against clean text: its mean weight on the labelled
    // test sequences relative to clean's, and its share of what 50% discard keeps.
    let final_weights = snapshot(&state.eta)?;
    let vs_clean = relative_to_clean(&final_weights);
    let kept_at_half = kept_shares(&pool, &pool_scores, 0.5)?;
    println!(
        "\nper corruption: mean weight relative to clean text (target <= 0.5 for shuffled words and repeated runs), share of the pool, share of what 50% discard keeps:"
    );
    let pool_shares = kept_shares(&pool, &pool_scores, 0.0)?;
    for c in &columns {
        println!(
            "  {c:<14} {:>8.3} {:>7.1}% {:>7.1}%",
            vs_clean[c],
            100.0 * pool_shares.get(c).copied().unwrap_or(0.0),
            100.0 * kept_at_half.get(c).copied().unwrap_or(0.0)
        );
    }
    let draw = |rows: Arc<Vec<usize>>| uniform(train_bytes.clone(), rows);
    println!(
        "\nsweep over dataset-level discard fractions ({} steps each, loss on the meta-held-out set):",
        args.sweep_steps
    );
    let (sweep, sweep_flops) = flops::count(|| {
        sweep_discard_fractions(
            &pool_scores,
            &datarater::curate::DEFAULT_DISCARD_FRACTIONS,
            |kept| {
                let curve = train_curve(
                    &lm_small,
                    &init,
                    args.sweep_steps,
                    args.sweep_steps,
                    meta_held_out,
                    args.seed,
                    draw(Arc::new(kept.to_vec())),
                )?;
                Ok(curve.last().expect("non-empty").1)
            },
        )
    });
    let sweep = sweep?;
    for p in &sweep.points {
        let kept = discard_bottom(&pool_scores, p.fraction)?;
        let clean_kept = kept.iter().filter(|&&i| pool[i].kind == "clean").count();
        println!(
            "  discard {:>3.0}%: keep {:>5} ({:>4.1}% clean) -> loss {:.4}",
            p.fraction * 100.0,
            p.kept,
            100.0 * clean_kept as f64 / kept.len() as f64,
            p.loss
        );
    }
    let frac = sweep.best_fraction();
    println!("  best discard fraction: {:.0}%", frac * 100.0);

    let kept = Arc::new(discard_bottom(&pool_scores, frac)?);
    let all = Arc::new((0..pool.len()).collect::<Vec<_>>());
    let every_eval = 25;
    let n_draw = draw_size(BATCH, frac)?;
    println!(
        "\nfresh LMs for {} steps: no filtering / dataset-level discard {:.0}% / online batch filtering (draw {n_draw}, keep top {BATCH})",
        args.final_steps,
        frac * 100.0
    );
    let (baseline, (filtered, batch_filtered)) = rayon::join(
        || {
            train_curve(
                &lm_small,
                &init,
                args.final_steps,
                every_eval,
                test,
                args.seed,
                draw(all.clone()),
            )
        },
        || {
            rayon::join(
                || {
                    train_curve(
                        &lm_small,
                        &init,
                        args.final_steps,
                        every_eval,
                        test,
                        args.seed,
                        draw(kept.clone()),
                    )
                },
                || {
                    train_curve(
                        &lm_small,
                        &init,
                        args.final_steps,
                        every_eval,
                        test,
                        args.seed,
                        |r: &mut Rng| {
                            let cand: Vec<usize> =
                                (0..n_draw).map(|_| r.below(pool.len())).collect();
                            let s = score_sequences(
                                &rater,
                                &state.eta,
                                &cand.iter().map(|&i| &pool[i]).collect::<Vec<_>>(),
                                n_draw,
                            )?;
                            let keep = filter_batch(&s, BATCH)?;
                            TextBatch::from_pool(
                                &*train_bytes,
                                keep.into_iter().map(|k| cand[k]).collect(),
                            )
                        },
                    )
                },
            )
        },
    );
    let (baseline, filtered, batch_filtered) = (baseline?, filtered?, batch_filtered?);
    let target = baseline.last().expect("non-empty").1;
    let reach = |c: &[(usize, f64)]| c.iter().find(|p| p.1 <= target).map(|p| p.0);
    println!(
        "{:>6} {:>12} {:>12} {:>12}",
        "step", "baseline", "discard", "batch filter"
    );
    for ((b, f), g) in baseline.iter().zip(&filtered).zip(&batch_filtered) {
        if b.0 % 100 == 0 || b.0 == args.final_steps {
            println!("{:>6} {:>12.4} {:>12.4} {:>12.4}", b.0, b.1, f.1, g.1);
        }
    }
    let (r_f, r_b) = (reach(&filtered), reach(&batch_filtered));
    let pct = |r: Option<usize>| {
        r.map_or("never".to_string(), |s| {
            format!(
                "{s} steps ({:.0}% of baseline)",
                100.0 * s as f64 / args.final_steps as f64
            )
        })
    };
    println!(
        "baseline final test loss {target:.4} after {} steps",
        args.final_steps
    );
    println!(
        "  dataset-level discard reaches it in {}   (target <= 80%)",
        pct(r_f)
    );
    println!("  online batch filtering reaches it in {}", pct(r_b));

    let transfer_summary = if args.transfer_steps == 0 {
        serde_json::Value::Null
    } else {
        let costs = Costs {
            meta_training: meta_flops,
            scoring: scoring_flops,
            sweep: sweep_flops,
        };
        transfer(&args, &train_bytes, &all, &kept, frac, test, &costs)?
    };

    // Plots and summary.
    let weight_series: Vec<(String, Vec<(f64, f64)>)> = columns
        .iter()
        .map(|c| {
            (
                c.clone(),
                history.iter().map(|(s, w)| (*s as f64, w[c])).collect(),
            )
        })
        .collect();
    plot_lines(
        &args.out.join("weights.svg"),
        "DataRater: mean relative weight per corruption",
        "outer step",
        "relative weight",
        &weight_series,
    )?;
    let to_f = |c: &[(usize, f64)]| c.iter().map(|&(s, l)| (s as f64, l)).collect::<Vec<_>>();
    plot_lines(
        &args.out.join("loss.svg"),
        "Fresh LM: test loss",
        "step",
        "test loss (nats/byte)",
        &[
            ("no filtering".into(), to_f(&baseline)),
            (format!("discard {:.0}%", frac * 100.0), to_f(&filtered)),
            ("online batch filtering".into(), to_f(&batch_filtered)),
        ],
    )?;
    let summary = serde_json::json!({
        "corpus_bytes": corpus_bytes,
        "seq_len": SEQ_LEN,
        "outer_steps": args.outer_steps,
        "inner_steps": args.inner_steps,
        "population": args.population,
        "target_steps": config.target_steps,
        "plain_steps": config.plain_steps,
        "seed": args.seed,
        "meta_training_seconds": meta_seconds,
        "final_meta_held_out_loss": last_loss,
        "spearman_level_score": rho,
        "mean_score_monotone_in_level": monotone,
        "mean_score_by_level": mean_by_level.iter().map(|(l, m)| serde_json::json!({"level": l, "mean_score": m})).collect::<Vec<_>>(),
        "auc_clean_vs_level_ge_0_5": auc_clean,
        "weight_relative_to_clean": vs_clean,
        "share_kept_by_discard_0_5": kept_at_half,
        "sweep": sweep.points.iter().map(|p| serde_json::json!({"discard_fraction": p.fraction, "loss": p.loss})).collect::<Vec<_>>(),
        "best_discard_fraction": frac,
        "final_steps": args.final_steps,
        "baseline_final_test_loss": target,
        "discard_final_test_loss": filtered.last().map(|p| p.1),
        "batch_filter_final_test_loss": batch_filtered.last().map(|p| p.1),
        "discard_steps_to_baseline_loss": r_f,
        "discard_steps_fraction_of_baseline": r_f.map(|s| s as f64 / args.final_steps as f64),
        "batch_filter_steps_to_baseline_loss": r_b,
        "batch_filter_steps_fraction_of_baseline": r_b.map(|s| s as f64 / args.final_steps as f64),
        "transfer": transfer_summary,
        "total_seconds": t0.elapsed().as_secs_f64(),
    });
    write(
        "summary.json",
        &serde_json::to_string_pretty(&summary).expect("valid json"),
    )?;
    println!(
        "\nwrote {}/{{weights.svg, loss.svg{}, scores.csv, summary.json, rater.safetensors}} in {:.0}s total",
        args.out.display(),
        if args.transfer_steps == 0 {
            ""
        } else {
            ", transfer.svg"
        },
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

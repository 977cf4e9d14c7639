//! `datarater evaluate`: did the curation help? Trains a fresh language model of one
//! size on each corpus, from the same initialisation and with the same seed, for the
//! same number of steps, and compares their held-out loss curves: each corpus's final
//! loss, and the steps it needs to reach the first corpus's final loss (the paper's
//! measure). Writes a table (stdout), `OUT.json` and `OUT.svg`.

use crate::args::EvaluateArgs;
use crate::error::Result;
use crate::fail;
use crate::output::write_atomic;
use crate::progress::{Progress, Unit};
use crate::train::{f32s, mul, refuse_oversized, sample, transformer_params};
use datarater::Rng;
use datarater::nn::CausalLm;
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{TextBatch, TextLm, evaluate as held_out_loss, train_step};
use serde_json::json;
use std::fmt::Write;
use std::path::Path;

/// Seed streams (xor `--seed`): the corpora's samples, the held-out sample, the batches.
const SAMPLE_STREAM: u64 = 0x6576_616c_0001;
const HELD_STREAM: u64 = 0x6576_616c_0002;
const BATCH_STREAM: u64 = 0x6576_616c_0003;

/// One corpus's run.
struct Curve {
    corpus: String,
    sequences: usize,
    points: Vec<(usize, f64)>,
}

impl Curve {
    fn final_loss(&self) -> f64 {
        self.points.last().map_or(f64::NAN, |p| p.1)
    }

    /// The first evaluated step at which the loss is at most `target`.
    fn steps_to(&self, target: f64) -> Option<usize> {
        self.points.iter().find(|p| p.1 <= target).map(|p| p.0)
    }
}

/// `datarater evaluate` (one process).
///
/// # Errors
/// Unreadable inputs, a corpus or held-out set too small, bad settings, a non-finite
/// loss.
pub fn evaluate(args: &EvaluateArgs) -> Result<()> {
    if args.corpora.is_empty() {
        fail!("evaluate needs at least one corpus");
    }
    if args.steps == 0 || args.eval_every == 0 {
        fail!("--steps and --eval-every must be at least 1");
    }
    if args.seq_len < 2 {
        fail!("--seq-len must be at least 2 (an input byte and the byte that follows it)");
    }
    let lm_config = args.lm_config()?;
    let n = |x: usize| Some(x as u128);
    let lm_params = transformer_params(&lm_config, lm_config.vocab);
    refuse_oversized(&[
        (
            "the language model and its Adam state (--lm-width, --lm-layers, --seq-len)",
            f32s(mul(lm_params, n(3))),
        ),
        (
            "a batch (--batch-size, --seq-len)",
            mul(n(args.batch_size), n(args.seq_len)),
        ),
        (
            "the held-out sequences (--eval-sequences, --seq-len)",
            mul(n(args.eval_sequences), n(args.seq_len)),
        ),
    ])?;
    let opts = args.input_args.options();
    let held = sample(
        &args.held_out,
        &opts,
        args.seq_len,
        (args.eval_sequences * args.seq_len) as u64, // checked above
        args.seed ^ HELD_STREAM,
    )?;
    if held.seqs.is_empty() {
        fail!("{}: no held-out sequences", args.held_out.display());
    }
    let lm = TextLm::new(CausalLm::new(lm_config.clone())?, Adam::new(args.lr as f32))?;
    let init = lm.lm.init::<f32>(&mut Rng::new(args.seed));
    let mut curves = Vec::new();
    for corpus in &args.corpora {
        let pool = sample(
            corpus,
            &opts,
            args.seq_len,
            args.sample_bytes,
            args.seed ^ SAMPLE_STREAM,
        )?;
        if pool.seqs.is_empty() {
            fail!("{}: no document to train on", corpus.display());
        }
        let mut progress = Progress::new("evaluate", Unit::Steps, args.steps as u64, 0);
        let (mut theta, mut state) = (init.clone(), lm.opt.init(&init));
        let mut rng = Rng::new(args.seed ^ BATCH_STREAM);
        let eval = |theta: &_| held_out_loss(&lm, theta, &held.seqs, 64);
        let mut points = vec![(0, eval(&theta)?)];
        for step in 1..=args.steps {
            let rows = (0..args.batch_size)
                .map(|_| rng.below(pool.seqs.len()))
                .collect();
            let batch = TextBatch::from_pool(&pool.seqs, rows)?;
            train_step(&lm, &mut theta, &mut state, &batch)?;
            if step % args.eval_every == 0 || step == args.steps {
                let loss = eval(&theta)?;
                if !loss.is_finite() {
                    fail!(
                        "{}: the held-out loss is {loss} at step {step}",
                        corpus.display()
                    );
                }
                points.push((step, loss));
                progress.set(
                    step as u64,
                    &format!("{}: held-out loss {loss:.4}", corpus.display()),
                );
            }
        }
        progress.finish(&format!("{}: done", corpus.display()));
        curves.push(Curve {
            corpus: corpus.display().to_string(),
            sequences: pool.seqs.len(),
            points,
        });
    }
    let target = curves[0].final_loss();
    println!(
        "{:<40} {:>10} {:>12} {:>24}",
        "corpus", "sequences", "final loss", "steps to reach the first"
    );
    for c in &curves {
        let steps = c
            .steps_to(target)
            .map_or_else(|| "not reached".to_string(), |s| s.to_string());
        println!(
            "{:<40} {:>10} {:>12.4} {:>24}",
            c.corpus,
            c.sequences,
            c.final_loss(),
            steps
        );
    }
    let report = json!({
        "held_out": args.held_out.display().to_string(),
        "held_out_sequences": held.seqs.len(),
        "settings": {
            "steps": args.steps, "eval_every": args.eval_every, "seed": args.seed,
            "lr": args.lr, "batch_size": args.batch_size, "seq_len": args.seq_len,
            "lm": datarater::curate::rater_file::config_to_json(&lm_config),
            "sample_bytes": args.sample_bytes,
        },
        "reference_final_loss": target,
        "corpora": curves.iter().map(|c| json!({
            "corpus": c.corpus, "sequences": c.sequences, "curve": c.points,
            "final_loss": c.final_loss(), "steps_to_reference": c.steps_to(target),
        })).collect::<Vec<_>>(),
    });
    let json_path = with_suffix(&args.out, "json");
    let svg_path = with_suffix(&args.out, "svg");
    write_atomic(
        &json_path,
        (serde_json::to_string_pretty(&report).expect("JSON values serialise") + "\n").as_bytes(),
    )?;
    write_atomic(&svg_path, svg(&curves, target).as_bytes())?;
    println!("wrote {} and {}", json_path.display(), svg_path.display());
    Ok(())
}

fn with_suffix(out: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = out.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    out.with_file_name(name)
}

/// The loss curves as a small hand-made SVG line plot, with the first corpus's final
/// loss as a dashed line.
fn svg(curves: &[Curve], target: f64) -> String {
    const COLOURS: [&str; 6] = [
        "#4f81bd", "#c0504d", "#9bbb59", "#8064a2", "#f79646", "#4bacc6",
    ];
    let (w, h, left, right, top, bottom) = (720.0, 420.0, 70.0, 20.0, 40.0, 90.0);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let pts = curves.iter().flat_map(|c| c.points.iter());
    let max_step = pts.clone().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let (lo, hi) = pts.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
        (a.min(p.1), b.max(p.1))
    });
    let (lo, hi) = if hi > lo {
        (lo, hi)
    } else {
        (lo - 0.5, lo + 0.5)
    };
    let x = |s: usize| left + pw * s as f64 / max_step;
    let y = |l: f64| top + ph * (hi - l) / (hi - lo);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" text-anchor="middle" font-size="15">Held-out loss of a fresh LM trained on each corpus</text>"#,
        w / 2.0
    );
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{:.2}" x2="{:.2}" y2="{:.2}" stroke="#888" stroke-dasharray="4 3"/>"##,
        y(target),
        left + pw,
        y(target)
    );
    for (i, c) in curves.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let line: Vec<String> = c
            .points
            .iter()
            .map(|p| format!("{:.2},{:.2}", x(p.0), y(p.1)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
            line.join(" ")
        );
        let ly = h - bottom + 40.0 + 16.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<rect x="{left}" y="{:.1}" width="12" height="4" fill="{colour}"/><text x="{}" y="{ly:.1}">{} (final {:.4})</text>"#,
            ly - 5.0,
            left + 18.0,
            crate::histogram::escape(&c.corpus),
            c.final_loss()
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{left}" y1="{}" x2="{}" y2="{}" stroke="black"/><line x1="{left}" y1="{top}" x2="{left}" y2="{}" stroke="black"/>"##,
        top + ph,
        left + pw,
        top + ph,
        top + ph
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">step (0 to {max_step})</text><text x="{}" y="{:.1}" text-anchor="end">{hi:.3}</text><text x="{}" y="{:.1}" text-anchor="end">{lo:.3}</text>"#,
        left + pw / 2.0,
        top + ph + 20.0,
        left - 4.0,
        top + 4.0,
        left - 4.0,
        top + ph
    );
    s.push_str("</svg>\n");
    s
}

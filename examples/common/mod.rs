//! What the demo (`datarater.rs`) and the horizon study (`horizon_study.rs`) share: the
//! sequence and model settings, corruption labels, the relative-weight measures, LM
//! training curves and line plots.
#![allow(dead_code)] // each example uses a different part

use datarater::curate::discard_bottom;
use datarater::data::{Corpus, LabeledSequence, SplitConfig, corrupted_pool, default_mix};
use datarater::nn::TransformerConfig;
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{Sequences, TextBatch, TextLm, evaluate, train_step};
use datarater::{Error, Params, Result, Rng, Tensor};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub const SEQ_LEN: usize = 64;
pub const BATCH: usize = 16;

pub fn lm_config() -> TransformerConfig {
    TransformerConfig::new(32, 2, 2, SEQ_LEN).with_d_ff(128)
}

pub fn rater_config() -> TransformerConfig {
    TransformerConfig::new(32, 1, 2, SEQ_LEN)
        .with_d_ff(64)
        .with_causal(false)
}

/// Label of a corruption for tables and plots.
pub fn label(kind: &str, level: f64) -> String {
    match kind {
        "clean" => "clean".into(),
        "byte_replace" => format!("bytes {level}"),
        "all_caps" => "all caps".into(),
        "shuffle_words" => format!("shuffled {level}"),
        "repeat_runs" => format!("repeats {level}"),
        other => format!("{other} {level}"),
    }
}

/// Mean relative weight per label: softmax over all scores, times their number (1 = average).
pub fn relative_weights(scores: &[f64], labels: &[String]) -> BTreeMap<String, f64> {
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut acc: BTreeMap<String, (f64, usize)> = BTreeMap::new();
    for (w, l) in e.iter().zip(labels) {
        let a = acc.entry(l.clone()).or_default();
        a.0 += w / z * scores.len() as f64;
        a.1 += 1;
    }
    acc.into_iter()
        .map(|(k, (s, n))| (k, s / n as f64))
        .collect()
}

/// Draws batches of `BATCH` rows of `bytes` uniformly (with replacement) from `rows`.
pub fn uniform(
    bytes: Arc<Sequences>,
    rows: Arc<Vec<usize>>,
) -> impl FnMut(&mut Rng) -> Result<TextBatch> {
    move |r: &mut Rng| {
        let pick = (0..BATCH).map(|_| rows[r.below(rows.len())]).collect();
        TextBatch::from_pool(&*bytes, pick)
    }
}

/// Trains a fresh LM for `steps`, drawing each batch with `draw`, evaluating on `test`
/// every `every` steps. Returns `(step, test loss)` pairs.
pub fn train_curve(
    lm: &TextLm<Adam<f32>>,
    init: &Params<Tensor<f32>>,
    steps: usize,
    every: usize,
    test: &[Vec<u8>],
    seed: u64,
    mut draw: impl FnMut(&mut Rng) -> Result<TextBatch>,
) -> Result<Vec<(usize, f64)>> {
    let mut rng = Rng::new(seed);
    let (mut theta, mut state) = (init.clone(), lm.opt.init(init));
    let mut curve = vec![(0, evaluate(lm, &theta, test, 64)?)];
    for s in 1..=steps {
        let b = draw(&mut rng)?;
        train_step(lm, &mut theta, &mut state, &b)?;
        if s % every == 0 {
            curve.push((s, evaluate(lm, &theta, test, 64)?));
        }
    }
    Ok(curve)
}

pub fn plot_lines(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let err = |e: String| Error::File {
        path: path.display().to_string(),
        reason: e,
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (_, pts) in series {
        for &(x, y) in pts {
            (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
        }
    }
    let pad = (y1 - y0).max(1e-9) * 0.05;
    let root = SVGBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(e.to_string()))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1.max(x0 + 1.0), (y0 - pad)..(y1 + pad))
        .map_err(|e| err(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    for (i, (name, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(e.to_string()))?
            .label(name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| err(e.to_string()))?;
    root.present().map_err(|e| err(e.to_string()))
}

/// Each label's mean relative weight divided by clean text's (1 = as much as clean).
pub fn relative_to_clean(weights: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let clean = weights.get("clean").copied().unwrap_or(f64::NAN);
    weights
        .iter()
        .map(|(k, w)| (k.clone(), w / clean))
        .collect()
}

/// The share of each label among the pool rows that dataset-level discard of
/// `fraction` keeps (by the rater's `scores` of the pool).
pub fn kept_shares(
    pool: &[LabeledSequence],
    scores: &[f64],
    fraction: f64,
) -> Result<BTreeMap<String, f64>> {
    let kept = discard_bottom(scores, fraction)?;
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    for &i in &kept {
        *shares
            .entry(label(pool[i].kind, pool[i].level))
            .or_default() += 1.0 / kept.len() as f64;
    }
    Ok(shares)
}

/// The demo's data: the corpus at `path` (or the shipped one) cut into `SEQ_LEN`-byte
/// sequences and split with `rng`; the held-out half that drives the meta-objective, the
/// test half, and the training sequences under the default corruption mix.
pub struct DemoData {
    /// Bytes of text in the corpus.
    pub corpus_bytes: usize,
    pub pool: Vec<LabeledSequence>,
    pub meta_held_out: Vec<Vec<u8>>,
    pub test: Vec<Vec<u8>>,
}

pub fn demo_data(path: Option<&Path>, rng: &mut Rng) -> Result<DemoData> {
    let corpus = match path {
        Some(p) => Corpus::from_file(p)?,
        None => Corpus::embedded(),
    };
    let split = corpus.split(
        &SplitConfig::default()
            .with_seq_len(SEQ_LEN)
            .with_held_out_fraction(0.15),
        rng,
    )?;
    // Held-out sequences: half drive the meta-objective, half are the test set.
    let (meta_held_out, test) = split.held_out.split_at(split.held_out.len() / 2);
    if meta_held_out.is_empty() || test.len() < 8 {
        return Err(Error::Config {
            field: "--corpus",
            reason: "too small: need at least ~100 sequences of 64 bytes".into(),
        });
    }
    let pool = corrupted_pool(&split.train, &default_mix(), rng)?;
    Ok(DemoData {
        corpus_bytes: corpus.len(),
        pool,
        meta_held_out: meta_held_out.to_vec(),
        test: test.to_vec(),
    })
}

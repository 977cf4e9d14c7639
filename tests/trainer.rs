//! Algorithm 1: averaging of per-model updates, staggered resets that re-initialise,
//! reproducibility, the meta-optimiser, keeping the last good rater on failure, saving
//! the rater, meta-training that learns, and errors for bad input.

use datarater::data::Corpus;
use datarater::io::{load_params, save_params};
use datarater::meta::{
    DataRaterProblem, InnerLoop, MeanLoss, MetaOptimizer, MetaRequest, Mode, Rater, Sampler,
    Snapshots,
};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig, normal};
use datarater::optim::{Adam, Momentum, Optimizer, Sgd};
use datarater::trainer::{
    MetaAdam, MetaAdamState, MetaSgd, Sequences, Setup, TextBatch, TextLm, TextPool, TextRater,
    Trainer, TrainerConfig, evaluate, score_sequences,
};
use datarater::{Error, Params, Result, Rng, Tensor, Value};

fn cfg(causal: bool) -> TransformerConfig {
    TransformerConfig::new(8, 1, 2, 12)
        .with_d_ff(16)
        .with_causal(causal)
}

/// The text setting's parts: inner LM, rater, training and held-out pools.
struct Text {
    inner: TextLm<Adam<f64>>,
    rater: TextRater,
    train: TextPool,
    held: TextPool,
}

fn text() -> Text {
    let seqs = Corpus::embedded().sequences(12).unwrap();
    Text {
        inner: TextLm::new(CausalLm::new(cfg(true)).unwrap(), Adam::new(1e-2)).unwrap(),
        rater: TextRater {
            scorer: SequenceScorer::new(cfg(false)).unwrap(),
        },
        train: TextPool::new(Sequences::from_rows(&seqs[..200]).unwrap(), 4).unwrap(),
        held: TextPool::new(Sequences::from_rows(&seqs[200..260]).unwrap(), 4).unwrap(),
    }
}

impl Text {
    fn setup<'a, M>(
        &'a self,
        meta_opt: &'a M,
    ) -> Setup<'a, TextBatch, TextLm<Adam<f64>>, TextRater, MeanLoss, M> {
        Setup {
            inner: &self.inner,
            rater: &self.rater,
            outer: &MeanLoss,
            meta_opt,
            train: &self.train,
            held_out: &self.held,
        }
    }
}

fn config(seed: u64) -> TrainerConfig {
    TrainerConfig::default()
        .with_outer_steps(4)
        .with_inner_steps(2)
        .with_population(3)
        .with_reset_every(3)
        .with_mode(Mode::Mixed)
        .with_seed(seed)
}

#[test]
fn new_rater_is_the_mean_of_the_per_model_updated_raters() {
    let t = text();
    // A stateful meta-optimiser with warm-up and clipping off, so that "mean of the
    // per-model Adam updates" and "one Adam update with the mean gradient" differ.
    let meta = MetaAdam::default()
        .with_lr(1e-2)
        .with_warmup_steps(0)
        .with_clip_norm(0.0)
        .with_weight_decay(0.1);
    // No resets: a reset draws a new initialisation from the model's stream first.
    let config = config(1).with_reset_every(0);
    let trainer = Trainer::new(t.setup(&meta), config).unwrap();
    let mut state = trainer.init(None).unwrap();
    for _ in 0..3 {
        trainer.step(&mut state).unwrap();
    }
    let before = state.clone();
    // Every model's Adam state differs from the others'.
    let m = &before.members;
    assert_ne!(m[0].meta_state.m, m[1].meta_state.m);
    assert_ne!(m[1].meta_state.v, m[2].meta_state.v);
    trainer.step(&mut state).unwrap();

    // Recompute each model's meta-gradient independently from its saved state and stream.
    let problem = DataRaterProblem {
        inner: &t.inner,
        rater: &t.rater,
        outer: &MeanLoss,
    };
    let mut updated = Vec::new();
    let mut grads = Vec::new();
    for m in &before.members {
        let mut rng = m.rng.clone();
        let batches: Vec<_> = (0..2)
            .map(|_| t.train.sample(&mut rng))
            .collect::<Result<_>>()
            .unwrap();
        let held_out = t.held.sample(&mut rng).unwrap();
        let r = MetaRequest::new(
            &problem,
            &before.eta,
            &m.theta,
            &m.opt_state,
            &batches,
            &held_out,
        )
        .run()
        .unwrap();
        let mut s: MetaAdamState<f64> = m.meta_state.clone();
        updated.push(
            meta.update(&before.eta, &r.grad, &mut s, before.step)
                .unwrap(),
        );
        grads.push(r.grad);
    }
    let mean = |ps: &[Params<Tensor<f64>>]| {
        ps[1..].iter().fold(ps[0].scaled(1.0 / 3.0), |acc, p| {
            acc.add_scaled(p, 1.0 / 3.0).unwrap()
        })
    };
    let right = mean(&updated);
    let diff = datarater::autodiff::check::compare(&state.eta, &right).unwrap();
    assert!(diff.max_abs < 1e-12, "{diff:?}");
    // The other rule, one update with the mean gradient (from model 0's state), is a
    // different rater: the test tells the two apart.
    let mut s0 = before.members[0].meta_state.clone();
    let wrong = meta
        .update(&before.eta, &mean(&grads), &mut s0, before.step)
        .unwrap();
    let gap = datarater::autodiff::check::compare(&state.eta, &wrong).unwrap();
    assert!(gap.max_abs > 1e3 * diff.max_abs.max(1e-15), "{gap:?}");
}

#[test]
fn resets_are_staggered_and_re_initialise_parameters_and_optimiser_state() {
    let c = config(0).with_population(4).with_reset_every(8);
    let offsets: Vec<usize> = (0..4).map(|i| c.reset_offset(i)).collect();
    assert_eq!(offsets, vec![0, 2, 4, 6]);
    for (i, offset) in offsets.iter().enumerate() {
        let resets: Vec<usize> = (0..40).filter(|&k| c.resets_at(i, k)).collect();
        assert!(!resets.contains(&0));
        assert!(
            resets.windows(2).all(|w| w[1] - w[0] == 8),
            "model {i}: {resets:?}"
        );
        assert_eq!(resets[0], 8 - offset, "model {i}");
    }
    let t = text();
    let meta = MetaAdam::default();
    let trainer = Trainer::new(t.setup(&meta), config(2)).unwrap();
    let problem = DataRaterProblem {
        inner: &t.inner,
        rater: &t.rater,
        outer: &MeanLoss,
    };
    let mut state = trainer.init(None).unwrap();
    let mut seen = Vec::new();
    for _ in 0..4 {
        let before = state.clone();
        let r = trainer.step(&mut state).unwrap();
        for &i in &r.resets {
            assert_eq!(r.ages[i], 2, "a reset model has run exactly T steps");
            // The model restarted from a fresh initialisation drawn from its own stream,
            // with a fresh optimiser state: replaying that gives its new parameters.
            let m = &before.members[i];
            let mut rng = m.rng.clone();
            let theta0: Params<Tensor<f64>> = t.inner.init(&mut rng);
            assert_ne!(theta0, m.theta);
            let state0 = t.inner.opt.init(&theta0);
            let batches: Vec<_> = (0..2)
                .map(|_| t.train.sample(&mut rng))
                .collect::<Result<_>>()
                .unwrap();
            let held_out = t.held.sample(&mut rng).unwrap();
            let replay =
                MetaRequest::new(&problem, &before.eta, &theta0, &state0, &batches, &held_out)
                    .run()
                    .unwrap();
            let now = &state.members[i];
            assert_eq!(
                now.theta, replay.theta,
                "model {i}: parameters re-initialised"
            );
            assert_eq!(
                now.opt_state, replay.state,
                "model {i}: optimiser state re-initialised"
            );
            assert_eq!(now.opt_state.step, 2);
        }
        seen.push(r.resets.clone());
    }
    // reset_every 3, population 3: offsets 0, 1, 2 -> model 2 resets at k=1, model 1 at k=2, model 0 at k=3.
    assert_eq!(seen, vec![vec![], vec![2], vec![1], vec![0]]);
}

#[test]
fn training_is_reproducible_from_the_seed() {
    let t = text();
    let meta = MetaAdam::default();
    let run = |seed| {
        let trainer = Trainer::new(t.setup(&meta), config(seed)).unwrap();
        let mut state = trainer.init(None).unwrap();
        trainer.run(&mut state, |_, _| {}).unwrap();
        state.eta
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// A meta-optimiser whose update blows up at outer step 2.
struct BlowsUpAt2;

impl MetaOptimizer<f64> for BlowsUpAt2 {
    type State = ();
    fn init_state(&self, _: &Params<Tensor<f64>>) {}
    fn update(
        &self,
        eta: &Params<Tensor<f64>>,
        g: &Params<Tensor<f64>>,
        _: &mut (),
        step: usize,
    ) -> Result<Params<Tensor<f64>>> {
        eta.add_scaled(g, if step == 2 { f64::NAN } else { -0.1 })
    }
}

#[test]
fn a_non_finite_update_is_reported_and_the_last_good_rater_kept() {
    let t = text();
    let trainer = Trainer::new(t.setup(&BlowsUpAt2), config(3)).unwrap();
    let mut state = trainer.init(None).unwrap();
    trainer.step(&mut state).unwrap();
    trainer.step(&mut state).unwrap();
    let good = state.clone();
    match trainer.step(&mut state) {
        Err(Error::NonFinite { step, quantity }) => {
            assert_eq!(step, 2);
            assert!(quantity.contains("outer step 2"), "{quantity}");
        }
        other => panic!("expected NonFinite, got {other:?}"),
    }
    assert_eq!(state.eta, good.eta);
    assert_eq!(state.step, 2);
    assert_eq!(state.members[0].theta, good.members[0].theta);
}

#[test]
fn meta_adam_warms_up_clips_and_decays() {
    let meta = MetaAdam::default()
        .with_lr(0.1)
        .with_weight_decay(0.5)
        .with_warmup_steps(4)
        .with_clip_norm(1.0);
    assert!((meta.lr_at(0) - 0.025).abs() < 1e-15);
    assert!((meta.lr_at(3) - 0.1).abs() < 1e-15);
    assert!((meta.lr_at(100) - 0.1).abs() < 1e-15);
    let p =
        |v: Vec<f64>| Params::from_iter([("w".to_string(), Tensor::from_vec(&[2], v).unwrap())]);
    let eta = p(vec![1.0, -2.0]);
    // A huge gradient is clipped to norm 1; Adam's first step is then lr * g/|g| elementwise
    // sign (m_hat / sqrt(v_hat) = sign), plus decoupled decay lr * wd * eta.
    let g = p(vec![300.0, -400.0]);
    let mut st: MetaAdamState<f64> = meta.init_state(&eta);
    let new = meta.update(&eta, &g, &mut st, 0).unwrap();
    let lr = 0.025;
    let expect = [
        1.0 - lr * (1.0 + 0.5 * 1.0),
        -2.0 - lr * (-1.0 + 0.5 * -2.0),
    ];
    for (a, b) in new["w"].to_vec().iter().zip(expect) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    assert_eq!(st.t, 1);
    // The clipped gradient, not the raw one, is in the moments.
    assert!((st.m["w"].to_vec()[0] - 0.1 * 0.6).abs() < 1e-12);
    assert!(matches!(
        meta.clone().with_lr(-1.0).validate(),
        Err(Error::Config {
            field: "meta lr",
            ..
        })
    ));
    // A gradient for other parameters is an error, and the state is untouched.
    let other = Params::from_iter([("v".to_string(), Tensor::zeros(&[2]).unwrap())]);
    let before = st.clone();
    assert!(matches!(
        meta.update(&eta, &other, &mut st, 1),
        Err(Error::Params { .. })
    ));
    assert_eq!(st, before);
}

#[test]
fn rater_round_trips_through_a_file_and_a_mismatched_one_is_refused() {
    let t = text();
    let meta = MetaAdam::default();
    let trainer = Trainer::new(t.setup(&meta), config(4)).unwrap();
    let mut state = trainer.init(None).unwrap();
    trainer.step(&mut state).unwrap();
    let dir = std::env::temp_dir().join(format!("datarater-trainer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rater.safetensors");
    save_params(&path, &state.eta, &[("model", "SequenceScorer")]).unwrap();
    let (loaded, meta_data) = load_params::<f64>(&path).unwrap();
    assert_eq!(loaded, state.eta);
    assert_eq!(
        meta_data.get("model").map(String::as_str),
        Some("SequenceScorer")
    );
    let held: Vec<&[u8]> = t.held.seqs().iter().take(10).collect();
    let a = score_sequences(&t.rater, &state.eta, &held, 4).unwrap();
    let b = score_sequences(&t.rater, &loaded, &held, 4).unwrap();
    assert_eq!(a, b);
    // Continuing from the loaded rater is the same as continuing from memory.
    let resumed = trainer.init(Some(loaded)).unwrap();
    assert_eq!(resumed.eta, state.eta);
    // A rater for another model config is refused, naming the first mismatch.
    let wide = SequenceScorer::new(cfg(false).with_d_model(16)).unwrap();
    let other: Params<Tensor<f64>> = wide.init(&mut Rng::new(0));
    match trainer.init(Some(other)) {
        Err(Error::Params { name, reason }) => {
            assert!(reason.contains("shape"), "{name}: {reason}")
        }
        other => panic!("expected a params error, got {other:?}"),
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_settings_name_the_field() {
    let t = text();
    let meta = MetaAdam::default();
    let bad = config(0).with_population(0);
    let field = |r: Result<_>| match r {
        Err(Error::Config { field, .. }) => field,
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("expected a config error"),
    };
    assert_eq!(
        field(Trainer::new(t.setup(&meta), bad).map(|_| ())),
        "population"
    );
    let bad = config(0).with_mode(Mode::Checkpointed {
        snapshots: Snapshots::AtMost(5),
    });
    assert_eq!(field(Trainer::new(t.setup(&meta), bad).map(|_| ())), "mode");
    // The meta-optimiser and the inner optimiser are validated too.
    let bad_meta = MetaAdam::default().with_eps(0.0);
    assert_eq!(
        field(Trainer::new(t.setup(&bad_meta), config(0)).map(|_| ())),
        "meta eps"
    );
    let bad_inner = Text {
        inner: TextLm {
            lm: t.inner.lm.clone(),
            opt: Adam::new(-1.0),
        },
        ..text()
    };
    assert_eq!(
        field(Trainer::new(bad_inner.setup(&meta), config(0)).map(|_| ())),
        "lr"
    );
    assert_eq!(
        field(
            TextLm::new(
                t.inner.lm.clone(),
                Adam::<f64>::new(0.1).with_eps(0.0).with_eps_root(0.0)
            )
            .map(|_| ())
        ),
        "eps"
    );
    assert_eq!(
        field(TextLm::new(t.inner.lm.clone(), Momentum::<f64>::new(0.1, 1.5)).map(|_| ())),
        "beta"
    );
    assert_eq!(
        field(TextLm::new(t.inner.lm.clone(), Sgd::<f64>::new(f64::NAN)).map(|_| ())),
        "lr"
    );
}

#[test]
fn text_pools_check_every_sequence() {
    let pool = |seqs: Vec<Vec<u8>>| {
        Sequences::from_rows(&seqs)
            .and_then(|s| TextPool::new(s, 2))
            .map(|_| ())
    };
    let reason = |r: Result<()>| match r {
        Err(Error::Config { field, reason }) => format!("{field}: {reason}"),
        other => panic!("expected a config error, got {other:?}"),
    };
    assert!(reason(pool(vec![])).starts_with("pool"));
    // Uneven lengths are found wherever they are, not only in the first sequence.
    let r = reason(pool(vec![vec![1, 2, 3], vec![4, 5, 6], vec![7, 8]]));
    assert!(r.contains("sequence 2 has 2 bytes"), "{r}");
    assert!(reason(pool(vec![vec![1], vec![2]])).contains("at least 2"));
    assert!(
        reason(TextPool::new(Sequences::from_rows(&[[1, 2]]).unwrap(), 0).map(|_| ()))
            .starts_with("batch_size")
    );
    // A pool smaller than a batch draws with replacement.
    let small = TextPool::new(Sequences::from_rows(&[[1, 2, 3]]).unwrap(), 4).unwrap();
    assert_eq!(small.sample(&mut Rng::new(0)).unwrap().rows, vec![0; 4]);
}

#[test]
fn evaluating_on_nothing_is_an_error() {
    let t = text();
    let theta: Params<Tensor<f64>> = t.inner.init(&mut Rng::new(0));
    let none: [Vec<u8>; 0] = [];
    assert!(matches!(
        evaluate(&t.inner, &theta, &none[..], 8),
        Err(Error::Config { field: "seqs", .. })
    ));
    let some = evaluate(
        &t.inner,
        &theta,
        &t.held.seqs().iter().take(3).collect::<Vec<_>>(),
        2,
    )
    .unwrap();
    assert!(some.is_finite() && some > 0.0);
}

#[test]
fn a_text_batch_slice_is_the_batch_of_those_rows() {
    let pool: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i, i + 1, i + 2, i + 3]).collect();
    let b = TextBatch::from_pool(&pool, vec![5, 0, 3, 2]).unwrap();
    let expected = TextBatch::from_pool(&pool, vec![0, 3]).unwrap();
    assert_eq!(b.slice(1..3).unwrap(), expected);
    assert!(matches!(
        b.slice(2..5),
        Err(Error::Index {
            index: 5,
            size: 4,
            ..
        })
    ));
}

// ---- meta-training learns -------------------------------------------------------------

/// Linear regression `y = <w*, x>` with a third of the training labels replaced by noise
/// (the problem of `examples/custom_problem.rs`, smaller).
const DIM: usize = 4;

#[derive(Clone)]
struct Xy {
    x: Tensor<f64>,
    y: Tensor<f64>,
    noisy: Vec<bool>,
}

fn draw(w: &Tensor<f64>, n: usize, noise: f64, rng: &mut Rng) -> Xy {
    let x = normal::<f64>(rng, &[n, DIM], 1.0);
    let mut y = x.matmul(&w.reshape(&[DIM, 1])).to_vec();
    let mut noisy = vec![false; n];
    for (yi, flag) in y.iter_mut().zip(&mut noisy) {
        if rng.uniform() < noise {
            *flag = true;
            *yi = 5.0 * rng.normal();
        }
    }
    Xy {
        x,
        y: Tensor::from_vec(&[n, 1], y).unwrap(),
        noisy,
    }
}

struct Linear(Sgd<f64>);

impl InnerLoop<f64> for Linear {
    type Batch = Xy;
    type Opt = Sgd<f64>;
    fn init(&self, _: &mut Rng) -> Params<Tensor<f64>> {
        Params::from_iter([("w".to_string(), Tensor::zeros(&[DIM, 1]).unwrap())])
    }
    fn optimizer(&self) -> &Sgd<f64> {
        &self.0
    }
    fn per_example_loss<V: Value<F = f64>>(&self, theta: &Params<V>, b: &Xy) -> Result<V> {
        let pred = V::constant(b.x.clone()).matmul(&theta["w"]);
        Ok(pred
            .sub(&V::constant(b.y.clone()))
            .square()
            .reshape(&[b.noisy.len()]))
    }
}

/// Scores `tanh([x | y] A) c`.
struct PairRater;

impl Rater<f64, Xy> for PairRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        Params::from_iter([
            ("A".to_string(), normal(rng, &[DIM + 1, 8], 0.3)),
            ("c".to_string(), normal(rng, &[8, 1], 0.3)),
        ])
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &Xy) -> Result<V> {
        let xy = V::constant(Tensor::concat(&[&b.x, &b.y], 1));
        Ok(xy
            .matmul(&eta["A"])
            .tanh()
            .matmul(&eta["c"])
            .reshape(&[b.noisy.len()]))
    }
}

#[test]
fn meta_training_learns_to_down_weight_corrupted_examples() {
    let w_star = normal::<f64>(&mut Rng::new(42), &[DIM], 1.0);
    let inner = Linear(Sgd::new(0.05));
    let train = |rng: &mut Rng| Ok(draw(&w_star, 24, 1.0 / 3.0, rng));
    let held_out = |rng: &mut Rng| Ok(draw(&w_star, 48, 0.0, rng));
    let setup = Setup {
        inner: &inner,
        rater: &PairRater,
        outer: &MeanLoss,
        meta_opt: &MetaSgd::new(0.5),
        train: &train,
        held_out: &held_out,
    };
    let config = TrainerConfig::default()
        .with_outer_steps(120)
        .with_inner_steps(3)
        .with_population(2)
        .with_reset_every(10)
        .with_mode(Mode::Mixed)
        .with_seed(1);
    let trainer = Trainer::new(setup, config).unwrap();
    let mut state = trainer.init(None).unwrap();
    // Mean softmax weight (times the batch size) of clean and noisy examples.
    let weights = |eta: &Params<Tensor<f64>>| {
        let mut rng = Rng::new(7);
        let (mut clean, mut noisy) = (vec![], vec![]);
        for _ in 0..20 {
            let b = draw(&w_star, 24, 1.0 / 3.0, &mut rng);
            let w = datarater::meta::weights(&PairRater, eta, &b)
                .unwrap()
                .to_vec();
            for (wi, &n) in w.iter().zip(&b.noisy) {
                (if n { &mut noisy } else { &mut clean }).push(wi * 24.0);
            }
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        (mean(&clean), mean(&noisy))
    };
    // Held-out loss of a fresh model trained for 30 steps on rater-weighted batches.
    let curated_loss = |eta: &Params<Tensor<f64>>| {
        let mut rng = Rng::new(11);
        let mut theta = inner.init(&mut rng);
        let mut st = inner.0.init(&theta);
        let problem = DataRaterProblem {
            inner: &inner,
            rater: &PairRater,
            outer: &MeanLoss,
        };
        for _ in 0..30 {
            let b = draw(&w_star, 24, 1.0 / 3.0, &mut rng);
            let eta_c = eta.map(|e| datarater::Var::constant_of(e.clone()));
            let (_, g) = datarater::transforms::value_and_grad(
                |th| datarater::meta::MetaProblem::inner_loss(&problem, th, &eta_c, &b),
                &theta,
            )
            .unwrap();
            (theta, st) = inner.0.update(&theta, &st, &g);
        }
        let test = draw(&w_star, 500, 0.0, &mut rng);
        inner
            .per_example_loss(&theta, &test)
            .unwrap()
            .mean_all()
            .item()
    };
    let (c0, n0) = weights(&state.eta);
    let loss0 = curated_loss(&state.eta);
    let mut first = None;
    let mut last = 0.0;
    trainer
        .run(&mut state, |r, _| {
            first.get_or_insert(r.mean_outer_loss());
            last = r.mean_outer_loss();
        })
        .unwrap();
    let (c1, n1) = weights(&state.eta);
    let loss1 = curated_loss(&state.eta);
    assert!(
        (c0 - n0).abs() < 0.3,
        "untrained rater is near uniform: {c0} {n0}"
    );
    assert!(
        n1 < 0.5 * c1,
        "corrupted examples end with lower weight: clean {c1}, noisy {n1}"
    );
    assert!(
        loss1 < 0.7 * loss0,
        "held-out loss of a curated model falls: {loss0} -> {loss1}"
    );
    let first = first.unwrap();
    assert!(last.is_finite() && first.is_finite());
}

//! `TrainerConfig::target_steps`: a rater values data for a model of the age it is
//! meta-trained with. A toy regression whose "shortcut" examples (loud inputs,
//! shrunken labels) speed up a young model but bias a trained one: meta-trained with
//! young inner models the rater weights them at least as high as clean examples;
//! meta-trained for a 200-step target it weights them lower. Also the mechanism's
//! bookkeeping: warm-start ages, age-based resets, determinism.

use datarater::meta::{InnerLoop, MeanLoss, Mode, Rater};
use datarater::optim::{Optimizer, Sgd};
use datarater::trainer::{MetaAdam, Setup, Trainer, TrainerConfig, train_step};
use datarater::{Error, Params, Result, Rng, Tensor, Value};

const DIM: usize = 4;
const W_STAR: [f64; DIM] = [1.0, -0.5, 0.8, -1.2];
/// Shortcut examples: inputs this many times louder, labels shrunk by `SHRINK`.
const LOUD: f64 = 2.0;
const SHRINK: f64 = 0.6;

#[derive(Clone)]
struct Xy {
    x: Tensor<f64>,
    y: Tensor<f64>,
    shortcut: Vec<bool>,
}

/// `n` examples, each a shortcut with probability `p_shortcut`.
fn draw(n: usize, p_shortcut: f64, rng: &mut Rng) -> Xy {
    let (mut x, mut y, mut shortcut) = (vec![], vec![], vec![]);
    for _ in 0..n {
        let s = rng.uniform() < p_shortcut;
        let (scale, shrink) = if s { (LOUD, SHRINK) } else { (1.0, 1.0) };
        let xi: Vec<f64> = (0..DIM).map(|_| scale * rng.normal()).collect();
        let dot: f64 = xi.iter().zip(W_STAR).map(|(a, b)| a * b).sum();
        y.push(shrink * dot + 0.1 * rng.normal());
        x.extend(xi);
        shortcut.push(s);
    }
    Xy {
        x: Tensor::from_vec(&[n, DIM], x).unwrap(),
        y: Tensor::from_vec(&[n, 1], y).unwrap(),
        shortcut,
    }
}

/// Linear regression from zero, squared error, SGD.
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
            .reshape(&[b.shortcut.len()]))
    }
}

/// One learned score per kind of example (clean, shortcut), starting equal: what the
/// rater learns is then exactly the meta-gradient's verdict on the kind.
struct KindRater;

impl Rater<f64, Xy> for KindRater {
    fn init(&self, _: &mut Rng) -> Params<Tensor<f64>> {
        Params::from_iter([("a".to_string(), Tensor::zeros(&[2, 1]).unwrap())])
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &Xy) -> Result<V> {
        let onehot: Vec<f64> = b
            .shortcut
            .iter()
            .flat_map(|&s| if s { [0.0, 1.0] } else { [1.0, 0.0] })
            .collect();
        let onehot = Tensor::from_vec(&[b.shortcut.len(), 2], onehot)?;
        Ok(V::constant(onehot)
            .matmul(&eta["a"])
            .reshape(&[b.shortcut.len()]))
    }
}

const LR: f64 = 0.01;
const BATCH: usize = 16;

fn train(rng: &mut Rng) -> Result<Xy> {
    Ok(draw(BATCH, 0.5, rng))
}
fn held_out(rng: &mut Rng) -> Result<Xy> {
    Ok(draw(64, 0.0, rng))
}

fn config(target_steps: usize, seed: u64) -> TrainerConfig {
    TrainerConfig::default()
        .with_outer_steps(100)
        .with_inner_steps(2)
        .with_population(2)
        .with_mode(Mode::Mixed)
        .with_seed(seed)
        .with_target_steps(Some(target_steps))
}

/// Meta-trains with `config` and returns the rater's weight on a shortcut example
/// relative to a clean one (`exp(a_shortcut - a_clean)`, 1 = the same).
fn shortcut_weight(config: TrainerConfig) -> f64 {
    let inner = Linear(Sgd::new(LR));
    let meta = MetaAdam::default()
        .with_lr(0.02)
        .with_warmup_steps(0)
        .with_weight_decay(0.0);
    let setup = Setup {
        inner: &inner,
        rater: &KindRater,
        outer: &MeanLoss,
        meta_opt: &meta,
        train: &train,
        held_out: &held_out,
    };
    let trainer = Trainer::new(setup, config).unwrap();
    let mut state = trainer.init(None).unwrap();
    trainer.run(&mut state, |_, _| {}).unwrap();
    let a = state.eta["a"].to_vec();
    (a[1] - a[0]).exp()
}

/// Held-out loss of a model trained `steps` plain steps on clean-only or
/// shortcut-only batches.
fn plain_loss(steps: usize, p_shortcut: f64) -> f64 {
    let inner = Linear(Sgd::new(LR));
    let mut rng = Rng::new(3);
    let mut theta = inner.init(&mut rng);
    let mut st = inner.0.init(&theta);
    for _ in 0..steps {
        train_step(
            &inner,
            &mut theta,
            &mut st,
            &draw(BATCH, p_shortcut, &mut rng),
        )
        .unwrap();
    }
    let test = draw(2000, 0.0, &mut Rng::new(4));
    inner
        .per_example_loss(&theta, &test)
        .unwrap()
        .mean_all()
        .item()
}

#[test]
fn the_shortcut_helps_a_young_model_and_hurts_a_trained_one() {
    // The premise of the next test, checked rather than assumed.
    let (clean_young, short_young) = (plain_loss(5, 0.0), plain_loss(5, 1.0));
    let (clean_old, short_old) = (plain_loss(200, 0.0), plain_loss(200, 1.0));
    assert!(
        short_young < 0.8 * clean_young,
        "after 5 steps shortcut-only {short_young} vs clean-only {clean_young}"
    );
    assert!(
        short_old > 2.0 * clean_old,
        "after 200 steps shortcut-only {short_old} vs clean-only {clean_old}"
    );
}

#[test]
fn the_rater_values_data_for_the_target_age() {
    for seed in [0, 1] {
        let young = shortcut_weight(config(4, seed));
        let old = shortcut_weight(config(200, seed));
        eprintln!(
            "seed {seed}: shortcut weight / clean weight: young {young:.3}, 200-step target {old:.3}"
        );
        assert!(
            young >= 1.0,
            "seed {seed}: meta-trained with young models, the shortcut keeps at least clean weight: {young}"
        );
        assert!(
            old < 0.8,
            "seed {seed}: meta-trained for a 200-step target, the shortcut loses weight: {old}"
        );
    }
}

/// A small trainer for the bookkeeping tests.
fn bookkeeping<'a>(
    inner: &'a Linear,
    meta: &'a MetaAdam,
    config: TrainerConfig,
) -> Trainer<'a, f64, Linear, KindRater, MeanLoss, MetaAdam> {
    let setup = Setup {
        inner,
        rater: &KindRater,
        outer: &MeanLoss,
        meta_opt: meta,
        train: &train,
        held_out: &held_out,
    };
    Trainer::new(setup, config).unwrap()
}

#[test]
fn members_are_warm_started_to_staggered_ages_and_reset_at_the_target() {
    let (inner, meta) = (Linear(Sgd::new(LR)), MetaAdam::default());
    let config = config(20, 0)
        .with_outer_steps(6)
        .with_population(4)
        .with_plain_steps(3);
    let t = bookkeeping(&inner, &meta, config);
    let mut state = t.init(None).unwrap();
    // Warm start: member i at age i * 20 / 4, trained (not at the zero init) except member 0.
    let ages: Vec<usize> = state.members.iter().map(|m| m.age).collect();
    assert_eq!(ages, vec![0, 5, 10, 15]);
    assert_eq!(state.members[0].theta["w"].to_vec(), vec![0.0; DIM]);
    for m in &state.members[1..] {
        assert!(m.theta["w"].to_vec().iter().any(|&w| w != 0.0));
        assert_eq!(m.opt_state.step, m.age);
    }
    // Each outer step ages a member by plain_steps + T = 5; one that has reached 20
    // is re-initialised first.
    let mut resets = vec![];
    t.run(&mut state, |r, _| {
        resets.push((r.ages.clone(), r.resets.clone()))
    })
    .unwrap();
    assert_eq!(resets[0], (vec![5, 10, 15, 20], vec![]));
    assert_eq!(resets[1], (vec![10, 15, 20, 5], vec![3]));
    assert_eq!(resets[2], (vec![15, 20, 5, 10], vec![2]));
    // The same run from the same seed is bitwise the same, on any thread count.
    let again = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| {
            let mut s = t.init(None).unwrap();
            t.run(&mut s, |_, _| {}).unwrap();
            s
        });
    assert_eq!(again.eta, state.eta);
    for (a, b) in again.members.iter().zip(&state.members) {
        assert_eq!(a.theta, b.theta);
        assert_eq!((a.age, a.rng.state()), (b.age, b.rng.state()));
    }
}

#[test]
fn a_zero_target_is_refused_by_name() {
    let (inner, meta) = (Linear(Sgd::new(LR)), MetaAdam::default());
    let setup = Setup {
        inner: &inner,
        rater: &KindRater,
        outer: &MeanLoss,
        meta_opt: &meta,
        train: &train,
        held_out: &held_out,
    };
    match Trainer::new(setup, config(0, 0)) {
        Err(Error::Config { field, .. }) => assert_eq!(field, "target_steps"),
        Err(e) => panic!("expected a config error, got {e}"),
        Ok(_) => panic!("a zero target was accepted"),
    }
}

#[test]
fn for_target_spreads_a_life_over_about_125_outer_steps() {
    let base = TrainerConfig::default().with_inner_steps(2);
    let c = base.clone().for_target(1000);
    assert_eq!((c.target_steps, c.plain_steps), (Some(1000), 6));
    // A short target needs no plain steps: T alone covers it.
    assert_eq!(base.clone().for_target(100).plain_steps, 0);
    assert_eq!(base.for_target(4000).plain_steps, 30);
}

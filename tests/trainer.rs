//! Algorithm 1: averaging of per-model updates, staggered resets, reproducibility, the
//! meta-optimiser, keeping the last good rater on failure, and saving the rater.

use datarater::data::Corpus;
use datarater::io::{load_params, save_params};
use datarater::meta::{DataRaterProblem, InnerLoop, Mode, OuterLoop, meta_gradient};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::Adam;
use datarater::trainer::{
    HeldOutText, MetaAdam, MetaAdamState, TextLm, TextRater, Trainer, TrainerConfig,
    score_sequences,
};
use datarater::{Error, Params, Result, Rng, Tensor};
use std::sync::Arc;

fn cfg(causal: bool) -> TransformerConfig {
    TransformerConfig {
        vocab: 256,
        d_model: 8,
        n_layers: 1,
        n_heads: 2,
        d_ff: 16,
        max_len: 12,
        causal,
    }
}

type Setup = (TextLm<Adam<f64>>, TextRater, Arc<Vec<Vec<u8>>>);

fn setup() -> Setup {
    let seqs = Corpus::embedded().sequences(12).unwrap();
    let train = Arc::new(seqs[..200].to_vec());
    let held = Arc::new(seqs[200..260].to_vec());
    let inner = TextLm::new(CausalLm::new(cfg(true)).unwrap(), Adam::new(1e-2), train, 4).unwrap();
    let rater = TextRater {
        scorer: SequenceScorer::new(cfg(false)).unwrap(),
    };
    (inner, rater, held)
}

fn config(seed: u64) -> TrainerConfig {
    TrainerConfig {
        outer_steps: 4,
        inner_steps: 2,
        population: 3,
        reset_every: 3,
        mode: Mode::Mixed,
        seed,
    }
}

/// Meta-update `eta + meta_grad` (so the rater's new value reveals the gradient).
struct AddGradient(Arc<Vec<Vec<u8>>>);

impl OuterLoop<f64, TextLm<Adam<f64>>> for AddGradient {
    type MetaState = ();
    fn sample_batch(&self, rng: &mut Rng) -> datarater::trainer::TextBatch {
        let rows = (0..4).map(|_| rng.below(self.0.len())).collect();
        datarater::trainer::TextBatch::from_pool(&self.0, rows).unwrap()
    }
    fn init_state(&self, _: &Params<Tensor<f64>>) {}
    fn update(
        &self,
        eta: &Params<Tensor<f64>>,
        g: &Params<Tensor<f64>>,
        _: &mut (),
        _: usize,
    ) -> Result<Params<Tensor<f64>>> {
        eta.add_scaled(g, 1.0)
    }
}

#[test]
fn new_rater_is_the_mean_of_the_per_model_updates() {
    let (inner, rater, held) = setup();
    let outer = AddGradient(held);
    // No resets here: a reset draws a new initialisation from the model's stream first.
    let trainer = Trainer::new(
        &inner,
        &rater,
        &outer,
        TrainerConfig {
            reset_every: 0,
            ..config(1)
        },
    )
    .unwrap();
    let mut state = trainer.init(None);
    trainer.step(&mut state).unwrap();
    let before = state.clone();
    trainer.step(&mut state).unwrap();
    // Recompute each model's meta-gradient independently from its saved state and stream.
    let problem = DataRaterProblem {
        inner: &inner,
        rater: &rater,
        outer: &outer,
    };
    let mut expect = before.eta.clone();
    for m in &before.members {
        let mut rng = m.rng.clone();
        let batches: Vec<_> = (0..2).map(|_| inner.sample_batch(&mut rng)).collect();
        let held_out = outer.sample_batch(&mut rng);
        let r = meta_gradient(
            Mode::Mixed,
            &problem,
            &inner.opt,
            &before.eta,
            &m.theta,
            &m.opt_state,
            &batches,
            &held_out,
        )
        .unwrap();
        expect = expect.add_scaled(&r.grad, 1.0 / 3.0).unwrap();
    }
    let diff = datarater::autodiff::check::compare(&state.eta, &expect).unwrap();
    assert!(diff.max_abs < 1e-12, "{diff:?}");
    assert_ne!(state.eta, before.eta, "the rater moved");
}

#[test]
fn resets_are_staggered_across_the_population() {
    let c = TrainerConfig {
        population: 4,
        reset_every: 8,
        ..config(0)
    };
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
    // And the trainer applies the schedule: ages restart at each model's own reset.
    let (inner, rater, held) = setup();
    let outer = HeldOutText::new(held, 4, MetaAdam::default()).unwrap();
    let trainer = Trainer::new(&inner, &rater, &outer, config(2)).unwrap();
    let mut state = trainer.init(None);
    let mut seen = Vec::new();
    for _ in 0..4 {
        let r = trainer.step(&mut state).unwrap();
        for &i in &r.resets {
            assert_eq!(r.ages[i], 2, "a reset model has run exactly T steps");
        }
        seen.push(r.resets.clone());
    }
    // reset_every 3, population 3: offsets 0, 1, 2 -> model 2 resets at k=1, model 1 at k=2, model 0 at k=3.
    assert_eq!(seen, vec![vec![], vec![2], vec![1], vec![0]]);
}

#[test]
fn training_is_reproducible_from_the_seed() {
    let (inner, rater, held) = setup();
    let outer = HeldOutText::new(held, 4, MetaAdam::default()).unwrap();
    let run = |seed| {
        let trainer = Trainer::new(&inner, &rater, &outer, config(seed)).unwrap();
        let mut state = trainer.init(None);
        trainer.run(&mut state, |_, _| {}).unwrap();
        state.eta
    };
    let (a, b, c) = (run(5), run(5), run(6));
    assert_eq!(a, b);
    assert_ne!(a, c);
}

/// An outer loop whose meta-update blows up at outer step 2.
struct BlowsUpAt2(Arc<Vec<Vec<u8>>>);

impl OuterLoop<f64, TextLm<Adam<f64>>> for BlowsUpAt2 {
    type MetaState = ();
    fn sample_batch(&self, rng: &mut Rng) -> datarater::trainer::TextBatch {
        AddGradient(self.0.clone()).sample_batch(rng)
    }
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
    let (inner, rater, held) = setup();
    let outer = BlowsUpAt2(held);
    let trainer = Trainer::new(&inner, &rater, &outer, config(3)).unwrap();
    let mut state = trainer.init(None);
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
    let meta = MetaAdam {
        lr: 0.1,
        weight_decay: 0.5,
        warmup_steps: 4,
        clip_norm: 1.0,
        ..MetaAdam::default()
    };
    assert!((meta.lr_at(0) - 0.025).abs() < 1e-15);
    assert!((meta.lr_at(3) - 0.1).abs() < 1e-15);
    assert!((meta.lr_at(100) - 0.1).abs() < 1e-15);
    let p =
        |v: Vec<f64>| Params::from_iter([("w".to_string(), Tensor::from_vec(&[2], v).unwrap())]);
    let eta = p(vec![1.0, -2.0]);
    // A huge gradient is clipped to norm 1; Adam's first step is then lr * g/|g| elementwise
    // sign (m_hat / sqrt(v_hat) = sign), plus decoupled decay lr * wd * eta.
    let g = p(vec![300.0, -400.0]);
    let mut st: MetaAdamState<f64> = meta.init(&eta);
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
        MetaAdam {
            lr: -1.0,
            ..meta.clone()
        }
        .validate(),
        Err(Error::Config {
            field: "meta lr",
            ..
        })
    ));
}

#[test]
fn rater_round_trips_through_a_file() {
    let (inner, rater, held) = setup();
    let outer = HeldOutText::new(held.clone(), 4, MetaAdam::default()).unwrap();
    let trainer = Trainer::new(&inner, &rater, &outer, config(4)).unwrap();
    let mut state = trainer.init(None);
    trainer.step(&mut state).unwrap();
    let dir = std::env::temp_dir().join(format!("datarater-trainer-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("rater.safetensors");
    save_params(&path, &state.eta, &[("model", "SequenceScorer")]).unwrap();
    let (loaded, meta) = load_params::<f64>(&path).unwrap();
    assert_eq!(loaded, state.eta);
    assert_eq!(
        meta.get("model").map(String::as_str),
        Some("SequenceScorer")
    );
    let a = score_sequences(&rater, &state.eta, &held[..10], 4).unwrap();
    let b = score_sequences(&rater, &loaded, &held[..10], 4).unwrap();
    assert_eq!(a, b);
    // Continuing from the loaded rater is the same as continuing from memory.
    let resumed = trainer.init(Some(loaded));
    assert_eq!(resumed.eta, state.eta);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_config_names_the_field() {
    let (inner, rater, held) = setup();
    let outer = HeldOutText::new(held.clone(), 4, MetaAdam::default()).unwrap();
    let bad = TrainerConfig {
        population: 0,
        ..config(0)
    };
    assert!(matches!(
        Trainer::new(&inner, &rater, &outer, bad),
        Err(Error::Config {
            field: "population",
            ..
        })
    ));
    let bad = TrainerConfig {
        mode: Mode::Checkpointed { every: 5 },
        ..config(0)
    };
    assert!(matches!(
        Trainer::new(&inner, &rater, &outer, bad),
        Err(Error::Config { field: "mode", .. })
    ));
    assert!(matches!(
        HeldOutText::new(Arc::new(vec![]), 4, MetaAdam::default()),
        Err(Error::Config {
            field: "held_out",
            ..
        })
    ));
}

#[test]
fn a_text_batch_slice_is_the_batch_of_those_rows() {
    let pool: Vec<Vec<u8>> = (0..6u8).map(|i| vec![i, i + 1, i + 2, i + 3]).collect();
    let b = datarater::trainer::TextBatch::from_pool(&pool, vec![5, 0, 3, 2]).unwrap();
    let expected = datarater::trainer::TextBatch::from_pool(&pool, vec![0, 3]).unwrap();
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

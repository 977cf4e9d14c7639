//! Checkpoint files: bit-exact round trips, config checks, damage detection.

use datarater::checkpoint::{load_checkpoint, read_checkpoint_configs, save_checkpoint};
use datarater::optim::OptState;
use datarater::trainer::{Member, MetaAdamState, TrainerState};
use datarater::{Params, Rng, Tensor};
use serde_json::json;

fn random(rng: &mut Rng, names: &[(&str, &[usize])]) -> Params<Tensor<f64>> {
    let mut p = Params::new();
    for (n, shape) in names {
        let len = shape.iter().product();
        p.insert(
            *n,
            Tensor::from_vec(shape, (0..len).map(|_| rng.normal()).collect()).unwrap(),
        );
    }
    p
}

fn state() -> TrainerState<f64, MetaAdamState<f64>> {
    let mut rng = Rng::new(7);
    let eta_names: &[(&str, &[usize])] = &[("w", &[3, 2]), ("b", &[2])];
    let theta_names: &[(&str, &[usize])] = &[("layer.w", &[2, 2]), ("layer.b", &[2])];
    let eta = random(&mut rng, eta_names);
    let members = (0..3)
        .map(|i| {
            let mut r = Rng::new(100 + i);
            r.next_u64();
            Member {
                theta: random(&mut rng, theta_names),
                opt_state: OptState {
                    step: 5 + i as usize,
                    slots: vec![random(&mut rng, theta_names), random(&mut rng, theta_names)],
                },
                meta_state: MetaAdamState {
                    m: random(&mut rng, eta_names),
                    v: random(&mut rng, eta_names),
                    t: 11,
                },
                age: 4 * i as usize,
                rng: r,
            }
        })
        .collect();
    TrainerState {
        eta,
        members,
        step: 12,
    }
}

fn assert_same(
    a: &TrainerState<f64, MetaAdamState<f64>>,
    b: &TrainerState<f64, MetaAdamState<f64>>,
) {
    assert_eq!(a.eta, b.eta);
    assert_eq!(a.step, b.step);
    assert_eq!(a.members.len(), b.members.len());
    for (x, y) in a.members.iter().zip(&b.members) {
        assert_eq!(x.theta, y.theta);
        assert_eq!(x.opt_state, y.opt_state);
        assert_eq!(x.meta_state, y.meta_state);
        assert_eq!(x.age, y.age);
        assert_eq!(x.rng.state(), y.rng.state());
    }
}

#[test]
fn round_trip_is_bit_exact_and_checks_configs() {
    let dir = std::env::temp_dir().join(format!("datarater-ckpt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("checkpoint.safetensors");
    let configs = json!({"lm": {"d_model": 32}, "train": {"seed": 3}});
    let s = state();
    save_checkpoint(&path, &s, &configs).unwrap();
    let back = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &configs).unwrap();
    assert_same(&s, &back);
    assert_eq!(read_checkpoint_configs(&path).unwrap(), configs);
    // The restored random streams continue identically.
    let (mut a, mut b) = (s.members[1].rng.clone(), back.members[1].rng.clone());
    assert_eq!(a.next_u64(), b.next_u64());

    // Another config is refused, naming every difference.
    let other = json!({"lm": {"d_model": 64}, "train": {"seed": 3}});
    let e = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("lm.d_model: 32 (checkpoint) vs 64 (requested)"),
        "{e}"
    );

    // Damage: truncation and a flipped byte are refused.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
    let e = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &configs).unwrap_err();
    assert!(e.to_string().contains("checkpoint.safetensors"), "{e}");
    // A flipped byte in the tensor data (the last bytes of the file).
    let mut flipped = bytes.clone();
    let n = flipped.len();
    flipped[n - 5] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    let e = load_checkpoint::<f64, MetaAdamState<f64>>(&path, &configs).unwrap_err();
    assert!(e.to_string().contains("checksum mismatch"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Equal states give byte-identical files, whatever order the configs were built in:
/// the metadata (a hash map inside the safetensors writer) and the JSON inside it are
/// written in key order. Before that, two saves of one state differed in the order of
/// the metadata keys.
#[test]
fn equal_states_give_byte_identical_files() {
    let dir = std::env::temp_dir().join(format!("datarater-ckpt-same-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The same configs built in two key orders (fresh maps each time).
    let configs = |reversed: bool| {
        let mut keys = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
        if reversed {
            keys.reverse();
        }
        let mut m = serde_json::Map::new();
        for (i, k) in keys.iter().enumerate() {
            let v = if reversed { keys.len() - 1 - i } else { i };
            m.insert(
                k.to_string(),
                json!({"value": v, "nested": {"b": 1, "a": 2}}),
            );
        }
        serde_json::Value::Object(m)
    };
    let first = dir.join("first.safetensors");
    save_checkpoint(&first, &state(), &configs(false)).unwrap();
    let first = std::fs::read(&first).unwrap();
    for i in 0..8 {
        let path = dir.join(format!("again-{i}.safetensors"));
        save_checkpoint(&path, &state(), &configs(i % 2 == 1)).unwrap();
        assert!(std::fs::read(&path).unwrap() == first, "save {i} differs");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

// Save, load and continue == uninterrupted, bitwise: the text trainer and a user problem.

use datarater::autodiff::Value;
use datarater::checkpoint::StateTensors;
use datarater::meta::{InnerLoop, MeanLoss, MetaOptimizer, Mode, Rater};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig, normal};
use datarater::optim::{Adam, Momentum};
use datarater::trainer::{
    MetaAdam, Sequences, Setup, TextLm, TextPool, TextRater, Trainer, TrainerConfig,
};

/// Runs `k` steps, checkpoints to a file, loads into a fresh state, runs the rest; and
/// compares with running all `total` steps without stopping.
fn resume_equals_uninterrupted<F, I, R, M>(
    trainer: &Trainer<'_, F, I, R, MeanLoss, M>,
    k: usize,
    name: &str,
) where
    F: datarater::Float,
    I: InnerLoop<F>,
    R: Rater<F, I::Batch>,
    M: MetaOptimizer<F>,
    M::State: StateTensors<F> + PartialEq + std::fmt::Debug,
    MeanLoss: datarater::meta::OuterLoop<F, I>,
{
    let mut full = trainer.init(None).unwrap();
    trainer.run(&mut full, |_, _| {}).unwrap();

    let mut part = trainer.init(None).unwrap();
    for _ in 0..k {
        trainer.step(&mut part).unwrap();
    }
    let path = std::env::temp_dir().join(format!("datarater-{name}-{}.ckpt", std::process::id()));
    let configs = json!({"problem": name});
    save_checkpoint(&path, &part, &configs).unwrap();
    drop(part);
    let mut resumed = load_checkpoint::<F, M::State>(&path, &configs).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(resumed.step, k);
    trainer.run(&mut resumed, |_, _| {}).unwrap();
    assert_eq!(resumed.eta, full.eta, "{name}: rater");
    assert_eq!(resumed.members.len(), full.members.len(), "{name}: members");
    for (a, b) in resumed.members.iter().zip(&full.members) {
        assert_eq!(a.theta, b.theta);
        assert_eq!(a.opt_state, b.opt_state);
        assert_eq!(a.meta_state, b.meta_state);
        assert_eq!((a.age, a.rng.state()), (b.age, b.rng.state()));
    }
}

#[test]
fn text_trainer_resumes_bitwise() {
    let cfg = |causal, max_len| {
        TransformerConfig::new(8, 1, 2, max_len)
            .with_d_ff(16)
            .with_causal(causal)
    };
    let text = b"the quick brown fox jumps over the lazy dog; a rater learns what to keep. ";
    let seqs: Vec<Vec<u8>> = (0..40)
        .map(|i| text.iter().cycle().skip(i * 3).take(12).copied().collect())
        .collect();
    let inner = TextLm::new(CausalLm::new(cfg(true, 11)).unwrap(), Adam::new(1e-2f32)).unwrap();
    let rater = TextRater {
        scorer: SequenceScorer::new(cfg(false, 12)).unwrap(),
    };
    let pool = TextPool::new(Sequences::from_rows(&seqs[..30]).unwrap(), 4).unwrap();
    let held = TextPool::new(Sequences::from_rows(&seqs[30..]).unwrap(), 4).unwrap();
    let meta = MetaAdam::default();
    let fixed = TrainerConfig::default()
        .with_outer_steps(7)
        .with_inner_steps(2)
        .with_population(3)
        .with_reset_every(3)
        .with_mode(Mode::Mixed)
        .with_seed(5);
    // With a target age: warm-started members, plain steps and age-based resets (at
    // age 9, members age 3 per outer step) before and after the checkpoint.
    let aged = fixed.clone().with_target_steps(Some(9)).with_plain_steps(1);
    for (name, config) in [("text", fixed), ("text-target", aged)] {
        let setup = Setup {
            inner: &inner,
            rater: &rater,
            outer: &MeanLoss,
            meta_opt: &meta,
            train: &pool,
            held_out: &held,
        };
        let trainer = Trainer::new(setup, config).unwrap();
        resume_equals_uninterrupted(&trainer, 4, name);
    }
}

/// A user's problem, as in `examples/custom_problem.rs`: linear regression, a small
/// rater over `[x | y]`, and a meta-optimiser with state of its own type.
#[derive(Clone)]
struct Xy {
    x: Tensor<f64>,
    y: Tensor<f64>,
}

struct Regression {
    opt: Momentum<f64>,
}

impl InnerLoop<f64> for Regression {
    type Batch = Xy;
    type Opt = Momentum<f64>;
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        Params::from_iter([
            ("w".to_string(), normal(rng, &[3, 1], 0.1)),
            ("b".to_string(), Tensor::zeros(&[1]).unwrap()),
        ])
    }
    fn optimizer(&self) -> &Momentum<f64> {
        &self.opt
    }
    fn per_example_loss<V: Value<F = f64>>(&self, t: &Params<V>, b: &Xy) -> datarater::Result<V> {
        let n = b.x.shape()[0];
        let pred = V::constant(b.x.clone()).matmul(&t["w"]).add(&t["b"]);
        Ok(pred.sub(&V::constant(b.y.clone())).square().reshape(&[n]))
    }
}

struct PairRater;

impl Rater<f64, Xy> for PairRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        Params::from_iter([
            ("A".to_string(), normal(rng, &[4, 5], 0.3)),
            ("c".to_string(), normal(rng, &[5, 1], 0.3)),
        ])
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &Xy) -> datarater::Result<V> {
        let xy = Tensor::concat(&[&b.x, &b.y], 1);
        let h = V::constant(xy).matmul(&eta["A"]).tanh();
        Ok(h.matmul(&eta["c"]).reshape(&[b.x.shape()[0]]))
    }
}

/// Heavy-ball meta-optimiser: its state (a velocity and a counter) is the user's type.
struct MetaMomentum;

#[derive(Clone, Debug, PartialEq)]
struct Velocity {
    v: Params<Tensor<f64>>,
    updates: usize,
}

impl StateTensors<f64> for Velocity {
    fn store(&self, prefix: &str, out: &mut Params<Tensor<f64>>) -> serde_json::Value {
        out.extend_scoped(&format!("{prefix}.v"), self.v.clone());
        json!({"updates": self.updates})
    }
    fn restore(
        prefix: &str,
        tensors: &Params<Tensor<f64>>,
        scalars: &serde_json::Value,
    ) -> datarater::Result<Self> {
        Ok(Velocity {
            v: tensors.scope(&format!("{prefix}.v")),
            updates: scalars["updates"].as_u64().unwrap_or(0) as usize,
        })
    }
}

impl MetaOptimizer<f64> for MetaMomentum {
    type State = Velocity;
    fn init_state(&self, eta: &Params<Tensor<f64>>) -> Velocity {
        Velocity {
            v: eta.zeros_like(),
            updates: 0,
        }
    }
    fn update(
        &self,
        eta: &Params<Tensor<f64>>,
        g: &Params<Tensor<f64>>,
        s: &mut Velocity,
        _: usize,
    ) -> datarater::Result<Params<Tensor<f64>>> {
        s.v = s.v.scaled(0.9).add_scaled(g, 1.0)?;
        s.updates += 1;
        eta.add_scaled(&s.v, -0.1)
    }
}

#[test]
fn user_problem_resumes_bitwise() {
    let draw = |n: usize, noisy: bool, rng: &mut Rng| {
        let x = normal::<f64>(rng, &[n, 3], 1.0);
        let mut y = x.matmul(&Tensor::from_vec(&[3, 1], vec![1.0, -2.0, 0.5]).unwrap());
        if noisy {
            y = y.add(&normal::<f64>(rng, &[n, 1], 2.0));
        }
        Ok(Xy { x, y })
    };
    let train = |rng: &mut Rng| draw(8, true, rng);
    let held_out = |rng: &mut Rng| draw(16, false, rng);
    let inner = Regression {
        opt: Momentum::new(0.05, 0.5),
    };
    let trainer = Trainer::new(
        Setup {
            inner: &inner,
            rater: &PairRater,
            outer: &MeanLoss,
            meta_opt: &MetaMomentum,
            train: &train,
            held_out: &held_out,
        },
        TrainerConfig::default()
            .with_outer_steps(9)
            .with_inner_steps(3)
            .with_population(2)
            .with_reset_every(4)
            .with_mode(Mode::Mixed)
            .with_seed(11),
    )
    .unwrap();
    resume_equals_uninterrupted(&trainer, 5, "user");
}

//! Plugging your own model, rater and objective into datarater through its public
//! traits only, as a downstream crate would.
//!
//! The problem: linear regression `y = <w*, x>` where a third of the training labels
//! are replaced by noise. The inner model is our own linear regressor (trained with
//! momentum SGD), the rater our own two-layer network on `(x, y)`, the held-out
//! objective the mean squared error on clean data (the ready-made `MeanLoss`), the
//! meta-optimiser a plain SGD step of our own, and the batches come from two closures.
//! Algorithm 1 then learns to down-weight the examples with corrupted labels.
//!
//! ```text
//! cargo run --release --example custom_problem
//! ```

use datarater::Result;
use datarater::nn::normal;
use datarater::prelude::*;

const DIM: usize = 8;

/// A batch: inputs, targets, and (for reporting only) which labels were corrupted.
#[derive(Clone)]
struct Batch {
    x: Tensor<f64>,
    y: Tensor<f64>,
    noisy: Vec<bool>,
}

/// Draws `n` examples; with `noise_rate > 0` that fraction of labels is replaced by noise.
fn draw(w_star: &Tensor<f64>, n: usize, noise_rate: f64, rng: &mut Rng) -> Batch {
    let x = normal::<f64>(rng, &[n, DIM], 1.0);
    let mut y = x.matmul(&w_star.reshape(&[DIM, 1])).to_owned_array();
    let mut noisy = vec![false; n];
    for (i, flag) in noisy.iter_mut().enumerate() {
        if rng.uniform() < noise_rate {
            *flag = true;
            y[[i, 0]] = 5.0 * rng.normal();
        }
    }
    Batch {
        x,
        y: Tensor::from_array(y),
        noisy,
    }
}

/// The inner model: `y_hat = x w + b`, squared error per example.
struct Regression {
    opt: Momentum<f64>,
}

impl InnerLoop<f64> for Regression {
    type Batch = Batch;
    type Opt = Momentum<f64>;
    fn init(&self, _: &mut Rng) -> Params<Tensor<f64>> {
        Params::from_iter([
            ("w".to_string(), Tensor::zeros(&[DIM, 1]).unwrap()),
            ("b".to_string(), Tensor::zeros(&[1]).unwrap()),
        ])
    }
    fn optimizer(&self) -> &Momentum<f64> {
        &self.opt
    }
    fn per_example_loss<V: Value<F = f64>>(&self, theta: &Params<V>, b: &Batch) -> Result<V> {
        let pred = V::constant(b.x.clone())
            .matmul(&theta["w"])
            .add(&theta["b"]);
        Ok(pred
            .sub(&V::constant(b.y.clone()))
            .square()
            .reshape(&[b.noisy.len()]))
    }
}

/// The rater: `tanh([x | y] A + a) c`, one score per example.
struct PairRater;

impl Rater<f64, Batch> for PairRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<f64>> {
        let mut p = Params::new();
        p.insert("A", normal(rng, &[DIM + 1, 16], 0.3));
        p.insert("a", Tensor::zeros(&[16]).unwrap());
        p.insert("c", normal(rng, &[16, 1], 0.3));
        p
    }
    fn scores<V: Value<F = f64>>(&self, eta: &Params<V>, b: &Batch) -> Result<V> {
        let xy = Tensor::concat(&[&b.x, &b.y], 1);
        let h = V::constant(xy).matmul(&eta["A"]).add(&eta["a"]).tanh();
        Ok(h.matmul(&eta["c"]).reshape(&[b.noisy.len()]))
    }
}

/// The meta-optimiser: one SGD step on the rater, no state.
struct MetaStep {
    lr: f64,
}

impl MetaOptimizer<f64> for MetaStep {
    type State = ();
    fn init_state(&self, _: &Params<Tensor<f64>>) {}
    fn update(
        &self,
        eta: &Params<Tensor<f64>>,
        g: &Params<Tensor<f64>>,
        _: &mut (),
        _: usize,
    ) -> Result<Params<Tensor<f64>>> {
        eta.add_scaled(g, -self.lr)
    }
}

/// Mean softmax weight (times batch size) of clean and of noisy examples over fresh batches.
fn weights(
    rater: &PairRater,
    eta: &Params<Tensor<f64>>,
    w_star: &Tensor<f64>,
    rng: &mut Rng,
) -> Result<(f64, f64)> {
    let (mut clean, mut noisy) = (Vec::new(), Vec::new());
    for _ in 0..20 {
        let b = draw(w_star, 32, 1.0 / 3.0, rng);
        let w = rater.scores(eta, &b)?.softmax(0).to_vec();
        for (wi, &n) in w.iter().zip(&b.noisy) {
            (if n { &mut noisy } else { &mut clean }).push(wi * b.noisy.len() as f64);
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    Ok((mean(&clean), mean(&noisy)))
}

fn main() -> Result<()> {
    let w_star = normal::<f64>(&mut Rng::new(42), &[DIM], 1.0);
    let inner = Regression {
        opt: Momentum::new(0.02, 0.5),
    };
    let rater = PairRater;
    // Training batches have a third of their labels corrupted; held-out ones are clean.
    let train = |rng: &mut Rng| Ok(draw(&w_star, 32, 1.0 / 3.0, rng));
    let held_out = |rng: &mut Rng| Ok(draw(&w_star, 64, 0.0, rng));
    let config = TrainerConfig::default()
        .with_outer_steps(200)
        .with_inner_steps(4)
        .with_population(2)
        .with_reset_every(20)
        .with_mode(Mode::Mixed)
        .with_seed(1);
    let setup = Setup {
        inner: &inner,
        rater: &rater,
        outer: &MeanLoss,
        meta_opt: &MetaStep { lr: 0.5 },
        train: &train,
        held_out: &held_out,
    };
    let trainer = Trainer::new(setup, config)?;
    let mut state = trainer.init(None)?;
    let mut rng = Rng::new(7);
    println!(
        "{:>5} {:>14} {:>14} {:>14}",
        "step", "held-out MSE", "clean weight", "noisy weight"
    );
    let (c, n) = weights(&rater, &state.eta, &w_star, &mut rng)?;
    println!("{:>5} {:>14} {c:>14.3} {n:>14.3}", 0, "-");
    let mut err = None;
    trainer.run(&mut state, |r, s| {
        if s.step % 40 == 0 {
            match weights(&rater, &s.eta, &w_star, &mut rng) {
                Ok((c, n)) => println!(
                    "{:>5} {:>14.4} {c:>14.3} {n:>14.3}",
                    s.step,
                    r.mean_outer_loss()
                ),
                Err(e) => err = Some(e),
            }
        }
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    println!("(weights are softmax weights within a batch times the batch size: 1 = uniform)");
    Ok(())
}

//! Algorithm 1 of Calian et al. (2025): a population of inner models, each advancing
//! `T` steps per outer step on DataRater-weighted batches; each model's meta-gradient
//! goes through its own meta-optimiser state; the new rater is the average of the
//! per-model updates.

use crate::autodiff::{Float, Params, Tensor};
use crate::error::{Error, Result};
use crate::meta::{DataRaterProblem, InnerLoop, Mode, OuterLoop, Rater, meta_gradient};
use crate::optim::{OptState, Optimizer};
use crate::rng::Rng;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::time::Instant;

/// Settings of Algorithm 1.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainerConfig {
    /// Outer (meta) steps `K`.
    pub outer_steps: usize,
    /// Inner steps per outer step `T`.
    pub inner_steps: usize,
    /// Number of inner models `N`, run in parallel.
    pub population: usize,
    /// Each inner model is re-initialised every `reset_every` outer steps, staggered
    /// across the population so it covers different stages of training (`0` = never).
    pub reset_every: usize,
    /// Meta-gradient engine.
    pub mode: Mode,
    /// Seed for every random choice (initialisations, batches).
    pub seed: u64,
}

impl Default for TrainerConfig {
    fn default() -> Self {
        TrainerConfig {
            outer_steps: 100,
            inner_steps: 2,
            population: 2,
            reset_every: 50,
            mode: Mode::Mixed,
            seed: 0,
        }
    }
}

impl TrainerConfig {
    /// Checks every field, naming the first bad one.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("inner_steps", self.inner_steps),
            ("population", self.population),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config {
                field,
                reason: "must be positive".into(),
            });
        }
        if let Mode::Checkpointed { every } = self.mode {
            if every > self.inner_steps {
                return Err(Error::Config {
                    field: "mode",
                    reason: format!("checkpoint distance {every} exceeds inner_steps"),
                });
            }
        }
        Ok(())
    }

    /// Outer-step offset of model `i`'s reset schedule (resets spread evenly over the
    /// period).
    pub fn reset_offset(&self, i: usize) -> usize {
        if self.reset_every == 0 {
            0
        } else {
            i * self.reset_every / self.population
        }
    }

    /// Whether model `i` is re-initialised before outer step `k` (never at `k = 0`, where
    /// every model is fresh anyway). Model `i`'s first reset comes `offset_i` steps
    /// early, which staggers the population's ages from then on.
    pub fn resets_at(&self, i: usize, k: usize) -> bool {
        self.reset_every > 0 && k > 0 && (k + self.reset_offset(i)) % self.reset_every == 0
    }
}

/// One inner model of the population.
#[derive(Clone, Debug)]
pub struct Member<F: Float, M> {
    /// Inner parameters.
    pub theta: Params<Tensor<F>>,
    /// Inner optimiser state.
    pub opt_state: OptState<Tensor<F>>,
    /// This model's meta-optimiser state.
    pub meta_state: M,
    /// Inner steps since its last (re-)initialisation.
    pub age: usize,
    /// Its own random stream (batches, re-initialisations).
    pub rng: Rng,
}

/// The state of meta-training: the rater and the population.
#[derive(Clone, Debug)]
pub struct TrainerState<F: Float, M> {
    /// Rater parameters `eta_k`.
    pub eta: Params<Tensor<F>>,
    /// The inner models.
    pub members: Vec<Member<F, M>>,
    /// Outer steps completed.
    pub step: usize,
}

/// What one outer step did.
#[derive(Clone, Debug, PartialEq)]
pub struct StepReport {
    /// The outer step (0-based).
    pub step: usize,
    /// Held-out loss of each inner model after its `T` inner steps.
    pub outer_losses: Vec<f64>,
    /// Global norm of each model's meta-gradient.
    pub grad_norms: Vec<f64>,
    /// Inner steps since re-initialisation of each model.
    pub ages: Vec<usize>,
    /// Models re-initialised at this step.
    pub resets: Vec<usize>,
    /// Wall time of the step in seconds.
    pub seconds: f64,
}

impl StepReport {
    /// Mean held-out loss over the population.
    pub fn mean_outer_loss(&self) -> f64 {
        self.outer_losses.iter().sum::<f64>() / self.outer_losses.len() as f64
    }
}

/// Algorithm 1 over any inner loop, rater and outer loop, in precision `F`.
pub struct Trainer<'a, F, I, R, O> {
    /// The inner problem.
    pub inner: &'a I,
    /// The rater.
    pub rater: &'a R,
    /// The outer problem and meta-optimiser.
    pub outer: &'a O,
    /// Settings.
    pub config: TrainerConfig,
    precision: PhantomData<fn() -> F>,
}

impl<'a, F, I, R, O> Trainer<'a, F, I, R, O>
where
    F: Float,
    I: InnerLoop<F>,
    R: Rater<F, I::Batch>,
    O: OuterLoop<F, I>,
    O::MetaState: Sync,
{
    /// Validates the config.
    pub fn new(inner: &'a I, rater: &'a R, outer: &'a O, config: TrainerConfig) -> Result<Self> {
        config.validate()?;
        Ok(Trainer {
            inner,
            rater,
            outer,
            config,
            precision: PhantomData,
        })
    }

    /// Fresh state from the seed: a new rater (or `eta`, to continue from saved
    /// parameters) and a freshly initialised population.
    pub fn init(&self, eta: Option<Params<Tensor<F>>>) -> TrainerState<F, O::MetaState> {
        let root = Rng::new(self.config.seed);
        let eta = match eta {
            Some(e) => e,
            None => self.rater.init(&mut root.fork(0)),
        };
        let members = (0..self.config.population)
            .into_par_iter()
            .map(|i| {
                let mut rng = root.fork(1 + i as u64);
                let theta = self.inner.init(&mut rng);
                let opt_state = self.inner.optimizer().init(&theta);
                Member {
                    theta,
                    opt_state,
                    meta_state: self.outer.init_state(&eta),
                    age: 0,
                    rng,
                }
            })
            .collect();
        TrainerState {
            eta,
            members,
            step: 0,
        }
    }

    /// One outer step of Algorithm 1. On error (for example a non-finite
    /// meta-gradient) `state` is left exactly as it was: the last good rater is kept.
    pub fn step(&self, state: &mut TrainerState<F, O::MetaState>) -> Result<StepReport> {
        let start = Instant::now();
        let k = state.step;
        let problem = DataRaterProblem {
            inner: self.inner,
            rater: self.rater,
            outer: self.outer,
        };
        let eta = &state.eta;
        let results = state
            .members
            .par_iter()
            .enumerate()
            .map(|(i, m)| {
                let mut m = m.clone();
                let reset = self.config.resets_at(i, k);
                if reset {
                    m.theta = self.inner.init(&mut m.rng);
                    m.opt_state = self.inner.optimizer().init(&m.theta);
                    m.age = 0;
                }
                let batches: Vec<I::Batch> = (0..self.config.inner_steps)
                    .map(|_| self.inner.sample_batch(&mut m.rng))
                    .collect();
                let held_out = self.outer.sample_batch(&mut m.rng);
                let r = meta_gradient(
                    self.config.mode,
                    &problem,
                    self.inner.optimizer(),
                    eta,
                    &m.theta,
                    &m.opt_state,
                    &batches,
                    &held_out,
                )
                .map_err(|e| at_outer_step(e, k, i))?;
                let norm = r.grad.norm().f64();
                let eta_i = self
                    .outer
                    .update(eta, &r.grad, &mut m.meta_state, k)
                    .map_err(|e| at_outer_step(e, k, i))?;
                if let Some(name) = eta_i.first_non_finite() {
                    return Err(Error::NonFinite {
                        step: k,
                        quantity: format!("rater update `{name}` (outer step {k}, model {i})"),
                    });
                }
                (m.theta, m.opt_state, m.age) = (r.theta, r.state, m.age + self.config.inner_steps);
                Ok((m, eta_i, r.outer_loss.f64(), norm, reset))
            })
            .collect::<Result<Vec<_>>>()?;
        // Everything succeeded: commit. eta_{k+1} is the mean of the per-model updates.
        let n = F::c(1.0 / results.len() as f64);
        let mut mean = results[0].1.scaled(n);
        for r in &results[1..] {
            mean = mean.add_scaled(&r.1, n)?;
        }
        let mut report = StepReport {
            step: k,
            outer_losses: vec![],
            grad_norms: vec![],
            ages: vec![],
            resets: vec![],
            seconds: 0.0,
        };
        state.members = results
            .into_iter()
            .enumerate()
            .map(|(i, (m, _, loss, norm, reset))| {
                report.outer_losses.push(loss);
                report.grad_norms.push(norm);
                report.ages.push(m.age);
                if reset {
                    report.resets.push(i);
                }
                m
            })
            .collect();
        state.eta = mean;
        state.step += 1;
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Runs the remaining outer steps, calling `on_step` after each (for progress).
    pub fn run(
        &self,
        state: &mut TrainerState<F, O::MetaState>,
        mut on_step: impl FnMut(&StepReport, &TrainerState<F, O::MetaState>),
    ) -> Result<()> {
        while state.step < self.config.outer_steps {
            let report = self.step(state)?;
            on_step(&report, state);
        }
        Ok(())
    }
}

fn at_outer_step(e: Error, k: usize, i: usize) -> Error {
    match e {
        Error::NonFinite { step, quantity } => Error::NonFinite {
            step,
            quantity: format!("{quantity} (outer step {k}, model {i})"),
        },
        other => other,
    }
}

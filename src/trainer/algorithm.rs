//! Algorithm 1 of Calian et al. (2025): a population of inner models, each advancing
//! `T` steps per outer step on DataRater-weighted batches; each model's meta-gradient
//! goes through its own meta-optimiser state; the new rater is the average of the
//! per-model updates.

use crate::autodiff::{Float, Params, Tensor};
use crate::error::{Error, Result};
use crate::meta::{
    DataRaterProblem, InnerLoop, MetaOptimizer, MetaRequest, Mode, OuterLoop, Rater, Sampler,
    Snapshots,
};
use crate::optim::{OptState, Optimizer};
use crate::rng::Rng;
use rayon::prelude::*;
use std::marker::PhantomData;
use std::time::Instant;

/// Settings of Algorithm 1. Build it from [`Default`] with the `with_*` methods:
///
/// ```
/// use datarater::trainer::TrainerConfig;
/// let config = TrainerConfig::default().with_outer_steps(300).with_population(4);
/// assert_eq!((config.outer_steps, config.inner_steps), (300, 2));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
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

with_fields!(TrainerConfig {
    /// Sets [`outer_steps`](TrainerConfig::outer_steps) (`K`).
    with_outer_steps => outer_steps: usize,
    /// Sets [`inner_steps`](TrainerConfig::inner_steps) (`T`).
    with_inner_steps => inner_steps: usize,
    /// Sets [`population`](TrainerConfig::population) (`N`).
    with_population => population: usize,
    /// Sets [`reset_every`](TrainerConfig::reset_every).
    with_reset_every => reset_every: usize,
    /// Sets [`mode`](TrainerConfig::mode).
    with_mode => mode: Mode,
    /// Sets [`seed`](TrainerConfig::seed).
    with_seed => seed: u64,
});

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
        if let Mode::Checkpointed {
            snapshots: Snapshots::AtMost(snapshots),
        } = self.mode
        {
            if snapshots == 0 {
                return Err(Error::Config {
                    field: "mode",
                    reason: "Snapshots::AtMost(0): at least the window's start is stored; \
                             use Snapshots::Auto to let the engine choose"
                        .into(),
                });
            }
            if snapshots > self.inner_steps {
                return Err(Error::Config {
                    field: "mode",
                    reason: format!(
                        "{snapshots} snapshots exceed inner_steps ({}): a window never stores more states than it has steps",
                        self.inner_steps
                    ),
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
    /// An empty report for outer step `step`.
    pub(crate) fn new(step: usize) -> Self {
        StepReport {
            step,
            outer_losses: vec![],
            grad_norms: vec![],
            ages: vec![],
            resets: vec![],
            seconds: 0.0,
        }
    }

    /// Appends member `i`'s figures (members must come in order).
    pub(crate) fn push(
        &mut self,
        i: usize,
        outer_loss: f64,
        grad_norm: f64,
        age: usize,
        reset: bool,
    ) {
        self.outer_losses.push(outer_loss);
        self.grad_norms.push(grad_norm);
        self.ages.push(age);
        if reset {
            self.resets.push(i);
        }
    }

    /// Mean held-out loss over the population.
    pub fn mean_outer_loss(&self) -> f64 {
        self.outer_losses.iter().sum::<f64>() / self.outer_losses.len() as f64
    }
}

/// The parts Algorithm 1 is made of. Each is a trait of [`crate::meta`], so a
/// downstream crate can supply any of them.
pub struct Setup<'a, B, I, R, O, M> {
    /// The inner model, its per-example loss and its optimiser.
    pub inner: &'a I,
    /// The rater.
    pub rater: &'a R,
    /// The held-out objective ([`MeanLoss`](crate::meta::MeanLoss) for the mean
    /// per-example loss).
    pub outer: &'a O,
    /// The meta-optimiser (one state per inner model).
    pub meta_opt: &'a M,
    /// Draws each inner model's training batches.
    pub train: &'a dyn Sampler<B>,
    /// Draws held-out batches for the outer objective.
    pub held_out: &'a dyn Sampler<B>,
}

/// One inner model's part of an outer step, computed by [`Trainer::advance`]: the
/// model after its `T` inner steps and the rater it proposes.
#[derive(Clone, Debug)]
pub struct Advanced<F: Float, M> {
    /// The member after its inner steps (and reset, if one was due).
    pub member: Member<F, M>,
    /// Its updated rater parameters `eta_bar^i`.
    pub eta: Params<Tensor<F>>,
    /// Its held-out loss after the inner steps.
    pub outer_loss: f64,
    /// Global norm of its meta-gradient.
    pub grad_norm: f64,
    /// Whether it was re-initialised at this step.
    pub reset: bool,
}

/// Algorithm 1 over any inner loop, rater, objective and meta-optimiser, in precision `F`.
pub struct Trainer<'a, F: Float, I: InnerLoop<F>, R, O, M> {
    /// The parts.
    pub setup: Setup<'a, I::Batch, I, R, O, M>,
    /// Settings, validated by [`Trainer::new`] (read them with [`Trainer::config`]).
    config: TrainerConfig,
    precision: PhantomData<fn() -> F>,
}

impl<'a, F, I, R, O, M> Trainer<'a, F, I, R, O, M>
where
    F: Float,
    I: InnerLoop<F>,
    R: Rater<F, I::Batch>,
    O: OuterLoop<F, I>,
    M: MetaOptimizer<F>,
{
    /// Checks the config, the inner optimiser and the meta-optimiser.
    ///
    /// # Errors
    /// [`Error::Config`] naming the first invalid setting.
    pub fn new(setup: Setup<'a, I::Batch, I, R, O, M>, config: TrainerConfig) -> Result<Self> {
        config.validate()?;
        setup.inner.optimizer().validate()?;
        setup.meta_opt.validate()?;
        Ok(Trainer {
            setup,
            config,
            precision: PhantomData,
        })
    }

    /// The settings this trainer was built with (read-only: they were validated by
    /// [`Trainer::new`]).
    pub fn config(&self) -> &TrainerConfig {
        &self.config
    }

    /// Fresh state from the seed: a new rater (or `eta`, to continue from saved
    /// parameters) and a freshly initialised population.
    ///
    /// # Errors
    /// [`Error::Params`] when `eta` does not have the names and shapes of this rater's
    /// parameters (for example a rater saved for another model config), naming the
    /// first mismatch.
    pub fn init(&self, eta: Option<Params<Tensor<F>>>) -> Result<TrainerState<F, M::State>> {
        let eta = self.init_rater(eta)?;
        let members = self.init_members(&eta, 0..self.config.population);
        Ok(TrainerState {
            eta,
            members,
            step: 0,
        })
    }

    /// The initial rater of [`init`](Self::init): `eta` checked against this rater's
    /// parameters, or fresh ones from random stream 0 of the seed.
    ///
    /// # Errors
    /// As for [`init`](Self::init).
    pub fn init_rater(&self, eta: Option<Params<Tensor<F>>>) -> Result<Params<Tensor<F>>> {
        let fresh = self
            .setup
            .rater
            .init(&mut Rng::new(self.config.seed).fork(0));
        match eta {
            Some(e) => {
                fresh.check_like(&e)?;
                Ok(e)
            }
            None => Ok(fresh),
        }
    }

    /// Fresh members `range` of the population (what [`init`](Self::init) makes for
    /// all of them): member `i` comes from random stream `1 + i` of the seed, whatever
    /// else is initialised, so a process can make only the members it runs.
    pub fn init_members(
        &self,
        eta: &Params<Tensor<F>>,
        range: std::ops::Range<usize>,
    ) -> Vec<Member<F, M::State>> {
        let root = Rng::new(self.config.seed);
        range
            .into_par_iter()
            .map(|i| {
                let mut rng = root.fork(1 + i as u64);
                let theta = self.setup.inner.init(&mut rng);
                let opt_state = self.setup.inner.optimizer().init(&theta);
                Member {
                    theta,
                    opt_state,
                    meta_state: self.setup.meta_opt.init_state(eta),
                    age: 0,
                    rng,
                }
            })
            .collect()
    }

    /// Member `i`'s part of outer step `k` with rater `eta`: reset if due, draw `T`
    /// training batches and one held-out batch from its own stream, compute its
    /// meta-gradient and apply its meta-optimiser. A pure function of its inputs, so
    /// members can be advanced on any thread or process, in any order.
    ///
    /// # Errors
    /// Whatever the parts report; a non-finite meta-gradient or update is
    /// [`Error::NonFinite`] naming the outer step and the member.
    pub fn advance(
        &self,
        eta: &Params<Tensor<F>>,
        member: &Member<F, M::State>,
        i: usize,
        k: usize,
    ) -> Result<Advanced<F, M::State>> {
        let Setup {
            inner,
            rater,
            outer,
            meta_opt,
            train,
            held_out,
        } = self.setup;
        let mut m = member.clone();
        let reset = self.config.resets_at(i, k);
        if reset {
            m.theta = inner.init(&mut m.rng);
            m.opt_state = inner.optimizer().init(&m.theta);
            m.age = 0;
        }
        let batches: Vec<I::Batch> = (0..self.config.inner_steps)
            .map(|_| train.sample(&mut m.rng))
            .collect::<Result<_>>()?;
        let outer_batch = held_out.sample(&mut m.rng)?;
        let problem = DataRaterProblem {
            inner,
            rater,
            outer,
        };
        let r = MetaRequest::new(
            &problem,
            eta,
            &m.theta,
            &m.opt_state,
            &batches,
            &outer_batch,
        )
        .mode(self.config.mode)
        .run()
        .map_err(|e| at_outer_step(e, k, i))?;
        let grad_norm = r.grad.norm().f64();
        let eta_i = meta_opt
            .update(eta, &r.grad, &mut m.meta_state, k)
            .map_err(|e| at_outer_step(e, k, i))?;
        if let Some(name) = eta_i.first_non_finite() {
            return Err(Error::NonFinite {
                step: k,
                quantity: format!("rater update `{name}` (outer step {k}, model {i})"),
            });
        }
        (m.theta, m.opt_state, m.age) = (r.theta, r.state, m.age + self.config.inner_steps);
        Ok(Advanced {
            member: m,
            eta: eta_i,
            outer_loss: r.outer_loss.f64(),
            grad_norm,
            reset,
        })
    }

    /// One outer step of Algorithm 1: every member advanced in parallel, then
    /// [`commit`](Self::commit). On error (for example a non-finite meta-gradient)
    /// `state` is left exactly as it was: the last good rater is kept.
    pub fn step(&self, state: &mut TrainerState<F, M::State>) -> Result<StepReport> {
        let start = Instant::now();
        let (k, eta) = (state.step, &state.eta);
        let advanced = state
            .members
            .par_iter()
            .enumerate()
            .map(|(i, m)| self.advance(eta, m, i, k))
            .collect::<Result<Vec<_>>>()?;
        let mut report = Self::commit(state, advanced)?;
        report.seconds = start.elapsed().as_secs_f64();
        Ok(report)
    }

    /// Completes an outer step from every member's [`Advanced`] result, in member
    /// order: `eta_{k+1}` is the mean of the per-member updated raters, summed in that
    /// order (so the result does not depend on where the members ran), and the members
    /// are replaced. `seconds` in the report is left at 0.
    ///
    /// # Errors
    /// [`Error::Config`] if `advanced` does not hold one result per member; `state` is
    /// then unchanged.
    pub fn commit(
        state: &mut TrainerState<F, M::State>,
        advanced: Vec<Advanced<F, M::State>>,
    ) -> Result<StepReport> {
        if advanced.len() != state.members.len() || advanced.is_empty() {
            return Err(Error::Config {
                field: "population",
                reason: format!(
                    "{} member results for a population of {}",
                    advanced.len(),
                    state.members.len()
                ),
            });
        }
        let mean = mean_in_order(advanced.iter().map(|a| &a.eta))?;
        let mut report = StepReport::new(state.step);
        state.members = advanced
            .into_iter()
            .enumerate()
            .map(|(i, a)| {
                report.push(i, a.outer_loss, a.grad_norm, a.member.age, a.reset);
                a.member
            })
            .collect();
        state.eta = mean;
        state.step += 1;
        Ok(report)
    }

    /// Runs the remaining outer steps, calling `on_step` after each (for progress).
    pub fn run(
        &self,
        state: &mut TrainerState<F, M::State>,
        mut on_step: impl FnMut(&StepReport, &TrainerState<F, M::State>),
    ) -> Result<()> {
        while state.step < self.config.outer_steps {
            let report = self.step(state)?;
            on_step(&report, state);
        }
        Ok(())
    }
}

/// The mean of the members' updated raters, summed in the order given: the one
/// definition of `eta_{k+1}`, shared by [`Trainer::commit`] and the distributed step
/// ([`crate::distributed`]) so that both give bitwise the same rater.
pub(crate) fn mean_in_order<'e, F: Float>(
    mut etas: impl ExactSizeIterator<Item = &'e Params<Tensor<F>>>,
) -> Result<Params<Tensor<F>>> {
    let n = F::c(1.0 / etas.len() as f64);
    let Some(first) = etas.next() else {
        return Err(Error::Config {
            field: "population",
            reason: "no member results to average".into(),
        });
    };
    let mut mean = first.scaled(n);
    for eta in etas {
        mean = mean.add_scaled(eta, n)?;
    }
    Ok(mean)
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

//! The inner optimisers: the hand-written adjoint of each update against reverse-mode
//! autodiff of the update itself and against central finite differences; the update
//! against plain hand computations; finiteness of Adam's adjoint at `v = 0`; config
//! validation.

use datarater::autodiff::check::{compare, fd_gradient};
use datarater::optim::{
    self, Adam, Adjoint, DEFAULT_EPS_ROOT, Momentum, OptState, Optimizer, Sgd, taped_adjoint,
};
use datarater::transforms::{grad, value_and_grad};
use datarater::{Error, Params, Rng, Tape, Tensor, Value, Var};
use proptest::prelude::*;

type P = Params<Tensor<f64>>;

// ---- helpers -------------------------------------------------------------------------

/// Parameter shapes used throughout: a matrix, a vector and a scalar.
const SHAPES: [(&str, &[usize]); 3] = [("a.w", &[3, 4]), ("b", &[5]), ("s", &[])];

fn normal_params(rng: &mut Rng, scale: f64) -> P {
    SHAPES
        .iter()
        .map(|(k, sh)| {
            let n: usize = sh.iter().product();
            let data = (0..n).map(|_| scale * rng.normal()).collect();
            (k.to_string(), Tensor::from_vec(sh, data).unwrap())
        })
        .collect()
}

/// Gradients bounded away from zero (`|g|` in `[0.3, 2]`, random sign), so second
/// moments built from them stay away from the kink of `sqrt` at 0 and finite
/// differences are accurate.
fn away_from_zero(rng: &mut Rng) -> P {
    normal_params(rng, 1.0).map(|t| {
        t.map(|x| {
            let mag = 0.3 + 1.7 * (x.abs().min(3.0) / 3.0);
            if x < 0.0 { -mag } else { mag }
        })
    })
}

/// Runs `steps` updates from `init` with random gradients, returning `(theta, state)`.
fn run<O: Optimizer<f64>>(opt: &O, rng: &mut Rng, steps: usize) -> (P, OptState<Tensor<f64>>) {
    let mut theta = normal_params(rng, 1.0);
    let mut state = opt.init(&theta);
    for _ in 0..steps {
        let g = away_from_zero(rng);
        (theta, state) = opt.update(&theta, &state, &g);
    }
    (theta, state)
}

/// Cotangents for every output of one update: `(theta_bar', slot_bars')`.
fn cotangents(rng: &mut Rng, n_slots: usize) -> (P, Vec<P>) {
    let tb = normal_params(rng, 1.0);
    let sb = (0..n_slots).map(|_| normal_params(rng, 1.0)).collect();
    (tb, sb)
}

/// `<theta_bar', theta'> + sum_i <s_bar'_i, s'_i>` in any algebra.
fn pairing<V: Value<F = f64>>(theta2: &Params<V>, state2: &OptState<V>, tb: &P, sb: &[P]) -> V {
    let dot = |x: &Params<V>, c: &P| {
        x.iter()
            .map(|(k, v)| v.mul(&V::constant(c[k].clone())).sum_all())
            .reduce(|a, b| a.add(&b))
            .expect("non-empty")
    };
    let mut total = dot(theta2, tb);
    for (s, c) in state2.slots.iter().zip(sb) {
        total = total.add(&dot(s, c));
    }
    total
}

/// The VJP of `update` by reverse-mode autodiff (the library's `taped_adjoint`).
fn tape_vjp<O: Optimizer<f64>>(
    opt: &O,
    theta: &P,
    state: &OptState<Tensor<f64>>,
    g: &P,
    tb: &P,
    sb: &[P],
) -> Adjoint<f64> {
    let a = taped_adjoint(opt, theta, state, g, tb, sb).unwrap();
    assert_eq!(a.state.len(), state.slots.len());
    a
}

/// All inputs of one update in one group (`theta.*`, `s0.*`, `s1.*`, `g.*`).
fn pack(theta: &P, slots: &[P], g: &P) -> P {
    let mut all = Params::new();
    all.extend_scoped("theta", theta.clone());
    for (i, s) in slots.iter().enumerate() {
        all.extend_scoped(&format!("s{i}"), s.clone());
    }
    all.extend_scoped("g", g.clone());
    all
}

fn pack_adjoint(a: &Adjoint<f64>) -> P {
    pack(&a.theta, &a.state, &a.grad)
}

/// Finite-difference step for each input group (`theta`, `s0`, `s1`, `g`).
type FdSteps<'a> = &'a dyn Fn(&str) -> f64;

/// The same step for every group.
fn uniform_steps(_: &str) -> f64 {
    1e-6
}

/// For Adam, the second moment enters the update as `v_hat = c2 * v'` with `c2` up to
/// `1 / (1 - beta2)`: step `v` by `1e-6 / c2` so `v_hat` moves by `1e-6` (a uniform step
/// would move it by up to 1e-3 at `t = 1`, and the truncation error with it).
fn adam_steps(opt: &Adam<f64>, step: usize) -> impl Fn(&str) -> f64 {
    let (_, c2) = opt.bias_corrections(step);
    move |group| if group == "s1" { 1e-6 / c2 } else { 1e-6 }
}

/// The VJP of `update` by central finite differences of the pairing, one group at a
/// time with that group's step.
fn fd_vjp<O: Optimizer<f64>>(
    opt: &O,
    theta: &P,
    state: &OptState<Tensor<f64>>,
    g: &P,
    tb: &P,
    sb: &[P],
    fd_steps: FdSteps,
) -> P {
    let n_slots = state.slots.len();
    let f = |all: &P| {
        let st = OptState {
            step: state.step,
            slots: (0..n_slots).map(|i| all.scope(&format!("s{i}"))).collect(),
        };
        let (t2, s2) = opt.update(&all.scope("theta"), &st, &all.scope("g"));
        pairing(&t2, &s2, tb, sb).item()
    };
    let all = pack(theta, &state.slots, g);
    let mut out = Params::new();
    for group in groups(&all) {
        let with = |sub: &P| {
            let mut q = all.clone();
            q.extend_scoped(group, sub.clone());
            f(&q)
        };
        out.extend_scoped(group, fd_gradient(with, &all.scope(group), fd_steps(group)));
    }
    out
}

/// The input groups (`theta`, `s0`, ...) of a packed parameter set.
fn groups(all: &P) -> std::collections::BTreeSet<&str> {
    all.names().map(|k| k.split('.').next().unwrap()).collect()
}

/// Checks `adjoint` against the tape VJP with the public `check_adjoint` (each group
/// relative to its own scale), and optionally against finite differences.
fn check_adjoint<O: Optimizer<f64>>(
    opt: &O,
    theta: &P,
    state: &OptState<Tensor<f64>>,
    g: &P,
    rng: &mut Rng,
    fd_steps: Option<FdSteps>,
) {
    let (tb, sb) = cotangents(rng, state.slots.len());
    let err = optim::check_adjoint(opt, theta, state, g, &tb, &sb, 1e-12)
        .unwrap_or_else(|e| panic!("at step {}: {e}", state.step));
    assert!(err < 1e-12);
    if let Some(fd_steps) = fd_steps {
        let hand = pack_adjoint(&opt.adjoint(theta, state, g, &tb, &sb));
        let fd = fd_vjp(opt, theta, state, g, &tb, &sb, fd_steps);
        let r = compare(&hand, &fd).unwrap();
        assert!(
            r.rel < 1e-6,
            "vs finite differences at step {}: {r:?}",
            state.step
        );
    }
}

fn max_abs_diff(a: &P, b: &P) -> f64 {
    compare(a, b).unwrap().max_abs
}

// ---- adjoint vs tape and finite differences (proptest) --------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sgd_adjoint(seed in any::<u64>(), steps in 0usize..5, lr in 1e-3f64..1.0) {
        let opt = Sgd::new(lr);
        let mut rng = Rng::new(seed);
        let (theta, state) = run(&opt, &mut rng, steps);
        let g = normal_params(&mut rng, 1.0);
        check_adjoint(&opt, &theta, &state, &g, &mut rng, Some(&uniform_steps));
    }

    #[test]
    fn momentum_adjoint(
        seed in any::<u64>(),
        steps in 0usize..20,
        lr in 1e-3f64..1.0,
        beta in 0.0f64..0.99,
        nesterov in any::<bool>(),
    ) {
        let opt = if nesterov { Momentum::nesterov(lr, beta) } else { Momentum::new(lr, beta) };
        let mut rng = Rng::new(seed);
        let (theta, state) = run(&opt, &mut rng, steps);
        let g = normal_params(&mut rng, 1.0);
        check_adjoint(&opt, &theta, &state, &g, &mut rng, Some(&uniform_steps));
    }

    #[test]
    fn adam_adjoint_after_steps(
        seed in any::<u64>(),
        steps in 0usize..30,
        lr in 1e-4f64..0.1,
        beta1 in 0.0f64..0.99,
        beta2 in 0.9f64..0.9999,
        weight_decay in prop_oneof![Just(0.0), 1e-3f64..0.5],
    ) {
        let opt = Adam::adamw(lr, weight_decay).with_betas(beta1, beta2);
        opt.validate().unwrap();
        let mut rng = Rng::new(seed);
        let (theta, state) = run(&opt, &mut rng, steps);
        prop_assert_eq!(state.step, steps);
        let g = away_from_zero(&mut rng);
        let fd_steps = adam_steps(&opt, state.step);
        check_adjoint(&opt, &theta, &state, &g, &mut rng, Some(&fd_steps));
    }

    /// Arbitrary moments and late steps (bias correction near 1); gradients of any size,
    /// including tiny ones (tape only: FD is not meaningful next to the sqrt kink).
    #[test]
    fn adam_adjoint_arbitrary_state(
        seed in any::<u64>(),
        step in 0usize..2000,
        weight_decay in prop_oneof![Just(0.0), 1e-3f64..0.5],
        g_scale in prop_oneof![Just(1.0), Just(1e-3), Just(1e-7)],
    ) {
        let opt = Adam::adamw(1e-2, weight_decay);
        let mut rng = Rng::new(seed);
        let theta = normal_params(&mut rng, 1.0);
        let m = normal_params(&mut rng, g_scale);
        let v = normal_params(&mut rng, g_scale).map(|t| t.map(|x| x * x));
        let state = OptState { step, slots: vec![m, v] };
        let g = normal_params(&mut rng, g_scale);
        check_adjoint(&opt, &theta, &state, &g, &mut rng, None);
    }
}

/// The named cases of the brief, deterministically, each over several states.
#[test]
fn every_optimiser_matches_tape_and_fd_over_several_states() {
    let sgd = Sgd::new(0.1);
    let mom = Momentum::new(0.1, 0.9);
    let nes = Momentum::nesterov(0.1, 0.9);
    let adam = Adam::new(1e-2);
    let adamw = Adam::adamw(1e-2, 0.1);
    for seed in 0..4u64 {
        for steps in [0, 1, 3, 10] {
            let mut rng = Rng::new(seed * 100 + steps as u64);
            macro_rules! go {
                ($opt:expr, $fd_steps:expr) => {{
                    let (theta, state) = run(&$opt, &mut rng, steps);
                    let g = away_from_zero(&mut rng);
                    let fd_steps = $fd_steps(state.step);
                    check_adjoint(&$opt, &theta, &state, &g, &mut rng, Some(&fd_steps));
                }};
            }
            let uniform = |_| uniform_steps;
            go!(sgd, uniform);
            go!(mom, uniform);
            go!(nes, uniform);
            go!(adam, |t| adam_steps(&adam, t));
            go!(adamw, |t| adam_steps(&adamw, t));
        }
    }
}

#[test]
fn empty_state_bar_means_zero_slot_cotangents() {
    let mut rng = Rng::new(7);
    let adam = Adam::adamw(1e-2, 0.05);
    let (theta, state) = run(&adam, &mut rng, 4);
    let g = away_from_zero(&mut rng);
    let tb = normal_params(&mut rng, 1.0);
    let zeros = vec![theta.zeros_like(), theta.zeros_like()];
    let a = pack_adjoint(&adam.adjoint(&theta, &state, &g, &tb, &[]));
    let b = pack_adjoint(&adam.adjoint(&theta, &state, &g, &tb, &zeros));
    assert_eq!(a, b);
    // And the zero cotangent really is what the tape sees with only theta' paired.
    let t = pack_adjoint(&tape_vjp(&adam, &theta, &state, &g, &tb, &[]));
    assert!(compare(&a, &t).unwrap().rel < 1e-12);

    let mom = Momentum::nesterov(0.1, 0.8);
    let (theta, state) = run(&mom, &mut rng, 3);
    let a = pack_adjoint(&mom.adjoint(&theta, &state, &g, &tb, &[]));
    let b = pack_adjoint(&mom.adjoint(&theta, &state, &g, &tb, &[theta.zeros_like()]));
    assert_eq!(a, b);
}

#[test]
fn adjoint_handles_non_contiguous_tensors() {
    let mut rng = Rng::new(3);
    let adam = Adam::adamw(1e-2, 0.1);
    let (theta, state) = run(&adam, &mut rng, 2);
    // Replace every [3, 4] tensor of the state and gradient by a transposed view
    // of a [4, 3] array holding the same logical values.
    let transposed = |t: &Tensor<f64>| {
        if t.shape().len() == 2 {
            let a = t
                .to_owned_array()
                .reversed_axes()
                .as_standard_layout()
                .into_owned();
            let tt = Tensor::from_array(a.reversed_axes());
            assert!(!tt.array().is_standard_layout());
            assert_eq!(&tt, t);
            tt
        } else {
            t.clone()
        }
    };
    let g = away_from_zero(&mut rng);
    let (tb, sb) = cotangents(&mut rng, 2);
    let reference = pack_adjoint(&adam.adjoint(&theta, &state, &g, &tb, &sb));
    let state_t = OptState {
        step: state.step,
        slots: state.slots.iter().map(|s| s.map(transposed)).collect(),
    };
    let sb_t: Vec<P> = sb.iter().map(|s| s.map(transposed)).collect();
    let got = pack_adjoint(&adam.adjoint(
        &theta.map(transposed),
        &state_t,
        &g.map(transposed),
        &tb.map(transposed),
        &sb_t,
    ));
    assert_eq!(got, reference);
}

// ---- check_adjoint catches a wrong adjoint ---------------------------------------------

/// A downstream optimiser with a subtly wrong adjoint: heavy-ball momentum whose
/// adjoint is right except for one slot or one parameter's gradient cotangent.
#[derive(Clone)]
struct Faulty {
    inner: Momentum<f64>,
    /// Which cotangent is wrong: the momentum slot (`true`) or `grad` of parameter `b`.
    in_slot: bool,
}

impl Optimizer<f64> for Faulty {
    fn init(&self, p: &P) -> OptState<Tensor<f64>> {
        self.inner.init(p)
    }
    fn update<V: Value<F = f64>>(
        &self,
        theta: &Params<V>,
        state: &OptState<V>,
        g: &Params<V>,
    ) -> (Params<V>, OptState<V>) {
        self.inner.update(theta, state, g)
    }
    fn adjoint(
        &self,
        theta: &P,
        state: &OptState<Tensor<f64>>,
        g: &P,
        theta_bar: &P,
        state_bar: &[P],
    ) -> Adjoint<f64> {
        let mut a = self.inner.adjoint(theta, state, g, theta_bar, state_bar);
        if self.in_slot {
            // Forgets the decay of the buffer: buf_bar = b instead of beta * b.
            a.state[0] = a.state[0].map(|t| t.map(|x| x / self.inner.beta));
        } else {
            // A one-part-in-a-million error in one tensor.
            let b = a.grad["b"].map(|x| x * (1.0 + 1e-6));
            a.grad.insert("b", b);
        }
        a
    }
}

#[test]
fn check_adjoint_names_the_slot_or_parameter_of_a_wrong_adjoint() {
    let mut rng = Rng::new(4);
    let good = Momentum::new(0.1, 0.9);
    let (theta, state) = run(&good, &mut rng, 3);
    let g = sparse_grad(&mut rng); // with exact zeros
    let (tb, sb) = cotangents(&mut rng, 1);
    let err = optim::check_adjoint(&good, &theta, &state, &g, &tb, &sb, 1e-12).unwrap();
    assert!(err < 1e-12);
    let reject = |opt: &Faulty| match optim::check_adjoint(opt, &theta, &state, &g, &tb, &sb, 1e-10)
    {
        Err(Error::Params { name, reason }) => {
            assert!(reason.contains("relative error"), "{reason}");
            name
        }
        r => panic!("a wrong adjoint passed: {r:?}"),
    };
    let slot = reject(&Faulty {
        inner: good,
        in_slot: true,
    });
    assert!(slot.starts_with("state[0]."), "{slot}");
    let grad = reject(&Faulty {
        inner: good,
        in_slot: false,
    });
    assert!(grad.starts_with("grad.b["), "{grad}");
    // The same wrong adjoint is within a loose enough tolerance, which is the point of
    // reporting the error: 1e-6 relative.
    let loose = optim::check_adjoint(
        &Faulty {
            inner: good,
            in_slot: false,
        },
        &theta,
        &state,
        &g,
        &tb,
        &sb,
        1e-5,
    )
    .unwrap();
    assert!(loose > 1e-8 && loose < 1e-5, "{loose}");
    // Inputs that do not fit are typed errors naming the group.
    let mut short = g.clone();
    short.insert("b", Tensor::zeros(&[4]).unwrap());
    match optim::check_adjoint(&good, &theta, &state, &short, &tb, &sb, 1e-12) {
        Err(Error::Params { name, .. }) => assert_eq!(name, "g.b"),
        r => panic!("{r:?}"),
    }
    match optim::check_adjoint(
        &good,
        &theta,
        &state,
        &g,
        &tb,
        &[tb.clone(), tb.clone()],
        1e-12,
    ) {
        Err(Error::Params { name, .. }) => assert_eq!(name, "state_bar"),
        r => panic!("{r:?}"),
    }
}

// ---- Adam at v = 0 ------------------------------------------------------------------

/// A gradient with exact zeros in a fixed pattern (every third element) and normal
/// values elsewhere.
fn sparse_grad(rng: &mut Rng) -> P {
    normal_params(rng, 1.0).map(|t| {
        let mut a = t.to_owned_array();
        for (i, x) in a.iter_mut().enumerate() {
            if i % 3 == 0 {
                *x = 0.0;
            }
        }
        Tensor::from_array(a)
    })
}

#[test]
fn adam_adjoint_is_finite_at_zero_second_moment() {
    let mut rng = Rng::new(11);
    for opt in [Adam::new(1e-3), Adam::adamw(1e-3, 0.01)] {
        let theta = normal_params(&mut rng, 1.0);
        let mut state = opt.init(&theta);
        let mut th = theta;
        // Several steps with the same zero pattern: v stays exactly 0 there.
        for _ in 0..3 {
            let g = sparse_grad(&mut rng);
            let (tb, sb) = cotangents(&mut rng, 2);
            let adj = opt.adjoint(&th, &state, &g, &tb, &sb);
            for p in [&adj.theta, &adj.grad, &adj.state[0], &adj.state[1]] {
                assert_eq!(p.first_non_finite(), None, "at step {}", state.step);
            }
            // Still the exact VJP of the update, at a gradient with exact zeros.
            let err = optim::check_adjoint(&opt, &th, &state, &g, &tb, &sb, 1e-12).unwrap();
            assert!(err < 1e-12);
            // At a zero-gradient coordinate with m = v = 0, g_bar is the first-order
            // sensitivity of a step that divides by sqrt(eps_root) + eps:
            // g_bar = (1 - b1) * (m_bar' - tb * lr * c1 / d) with d = 1e-6 + 1e-8.
            let (c1, _) = opt.bias_corrections(state.step);
            let d = DEFAULT_EPS_ROOT.sqrt() + opt.eps;
            let (tb0, mb0) = (tb["b"].to_vec()[0], sb[0]["b"].to_vec()[0]);
            if state.step == 0 {
                let expect = (1.0 - opt.beta1) * (mb0 - tb0 * opt.lr * c1 / d);
                let got = adj.grad["b"].to_vec()[0];
                assert!(
                    (got - expect).abs() <= 1e-12 * expect.abs(),
                    "{got} vs {expect}"
                );
            }
            (th, state) = opt.update(&th, &state, &g);
            assert_eq!(state.slots[1]["b"].to_vec()[0], 0.0);
        }
    }
}

#[test]
fn adam_without_eps_root_has_a_nan_adjoint_at_zero_second_moment() {
    // The failure `eps_root` exists to prevent, shown on both the tape and the hand adjoint.
    let mut rng = Rng::new(5);
    let opt = Adam::new(1e-3).with_eps_root(0.0);
    opt.validate().unwrap();
    let theta = normal_params(&mut rng, 1.0);
    let state = opt.init(&theta);
    let g = sparse_grad(&mut rng);
    let (tb, sb) = cotangents(&mut rng, 2);
    let hand = opt.adjoint(&theta, &state, &g, &tb, &sb);
    let tape = tape_vjp(&opt, &theta, &state, &g, &tb, &sb);
    assert!(hand.grad["b"].to_vec()[0].is_nan());
    assert!(tape.grad["b"].to_vec()[0].is_nan());
    // Coordinates with a non-zero gradient are unaffected.
    assert!(hand.grad["b"].to_vec()[1].is_finite());
}

#[test]
fn adam_adjoint_is_finite_in_f32_for_zero_and_tiny_gradients() {
    let opt = Adam::<f32>::adamw(1e-3, 0.01);
    opt.validate().unwrap();
    let vals: Vec<f32> = vec![0.0, 1e-30, -1e-20, 1e-12, -1e-7, 1e-3, 0.0, 2.0];
    let mut theta = Params::new();
    theta.insert("w", Tensor::<f32>::from_vec(&[8], vec![0.5; 8]).unwrap());
    let g = theta.map(|_| Tensor::from_vec(&[8], vals.clone()).unwrap());
    let ones = theta.map(|_| Tensor::full(&[8], 1.0f32).unwrap());
    let mut state = opt.init(&theta);
    for _ in 0..5 {
        let adj = opt.adjoint(&theta, &state, &g, &ones, &[ones.clone(), ones.clone()]);
        for p in [&adj.theta, &adj.grad, &adj.state[0], &adj.state[1]] {
            assert_eq!(p.first_non_finite(), None, "f32 step {}", state.step);
        }
        (theta, state) = opt.update(&theta, &state, &g);
        assert_eq!(theta.first_non_finite(), None);
    }
}

// ---- update vs plain hand computation -------------------------------------------------

#[test]
fn sgd_update_is_theta_minus_lr_g() {
    let mut rng = Rng::new(1);
    let theta = normal_params(&mut rng, 1.0);
    let g = normal_params(&mut rng, 1.0);
    let opt = Sgd::new(0.3);
    let (t2, s2) = opt.update(&theta, &opt.init(&theta), &g);
    assert!(s2.slots.is_empty());
    assert_eq!(s2.step, 1);
    let expect = theta.add_scaled(&g, -0.3).unwrap();
    assert!(max_abs_diff(&t2, &expect) < 1e-15);
}

/// Scalar reference implementations (one coordinate), written directly from the formulas.
fn momentum_ref(lr: f64, beta: f64, nesterov: bool, theta: f64, gs: &[f64]) -> (f64, f64) {
    let (mut th, mut buf) = (theta, 0.0);
    for &g in gs {
        buf = beta * buf + g;
        th -= lr * if nesterov { g + beta * buf } else { buf };
    }
    (th, buf)
}

fn adam_ref(o: &Adam<f64>, theta: f64, gs: &[f64]) -> (f64, f64, f64) {
    let (mut th, mut m, mut v) = (theta, 0.0, 0.0);
    for (i, &g) in gs.iter().enumerate() {
        let t = (i + 1) as i32;
        m = o.beta1 * m + (1.0 - o.beta1) * g;
        v = o.beta2 * v + (1.0 - o.beta2) * g * g;
        let m_hat = m / (1.0 - o.beta1.powi(t));
        let v_hat = v / (1.0 - o.beta2.powi(t));
        th -= o.lr * (m_hat / ((v_hat + o.eps_root).sqrt() + o.eps) + o.weight_decay * th);
    }
    (th, m, v)
}

fn scalar_param(x: f64) -> P {
    Params::from_iter([("x".to_string(), Tensor::scalar(x))])
}

#[test]
fn momentum_update_matches_hand_computation() {
    let gs = [0.5, -1.0, 2.0, 0.25];
    for nesterov in [false, true] {
        let opt = if nesterov {
            Momentum::nesterov(0.1, 0.9)
        } else {
            Momentum::new(0.1, 0.9)
        };
        let mut theta = scalar_param(1.0);
        let mut state = opt.init(&theta);
        for &g in &gs {
            (theta, state) = opt.update(&theta, &state, &scalar_param(g));
        }
        let (th, buf) = momentum_ref(0.1, 0.9, nesterov, 1.0, &gs);
        assert!(
            (theta["x"].item() - th).abs() < 1e-14,
            "nesterov={nesterov}"
        );
        assert!((state.slots[0]["x"].item() - buf).abs() < 1e-14);
        assert_eq!(state.step, 4);
    }
    // One step by hand: buf = g, heavy ball theta - lr g, Nesterov theta - lr (1 + beta) g.
    let (th, _) = momentum_ref(0.1, 0.9, false, 1.0, &[2.0]);
    assert!((th - 0.8).abs() < 1e-15);
    let (th, _) = momentum_ref(0.1, 0.9, true, 1.0, &[2.0]);
    assert!((th - 0.62).abs() < 1e-15);
}

#[test]
fn adam_first_step_moves_each_param_by_lr_sign_g() {
    let mut rng = Rng::new(2);
    let theta = normal_params(&mut rng, 1.0);
    let g = away_from_zero(&mut rng);
    let lr = 1e-3;
    let opt = Adam::new(lr);
    let (t2, s2) = opt.update(&theta, &opt.init(&theta), &g);
    let expect = theta
        .zip_map(&g, |t, g| {
            Tensor::from_array(t.array() - &g.array().mapv(|x| lr * x.signum()))
        })
        .unwrap();
    // |step| = lr |g| / (sqrt(g^2 + eps_root) + eps): within lr * 1e-7 of lr for |g| >= 0.3.
    assert!(max_abs_diff(&t2, &expect) < lr * 1e-7);
    // Moments after one step: m = (1 - b1) g, v = (1 - b2) g^2.
    assert!(max_abs_diff(&s2.slots[0], &g.scaled(0.1)) < 1e-15);
    let g2 = g.map(|t| t.map(|x| x * x));
    assert!(max_abs_diff(&s2.slots[1], &g2.scaled(1e-3)) < 1e-15);
    assert_eq!(s2.step, 1);

    // A zero gradient leaves Adam's parameters unchanged and AdamW decays them.
    let zero = theta.zeros_like();
    let (t3, _) = opt.update(&theta, &opt.init(&theta), &zero);
    assert_eq!(t3, theta);
    let w = Adam::adamw(lr, 0.5);
    let (t4, _) = w.update(&theta, &w.init(&theta), &zero);
    assert!(max_abs_diff(&t4, &theta.scaled(1.0 - lr * 0.5)) < 1e-15);
}

#[test]
fn adam_and_adamw_updates_match_hand_computation() {
    let gs = [0.3, -1.2, 0.0, 2.5, -0.01, 0.7];
    for opt in [
        Adam::new(0.05),
        Adam::adamw(0.05, 0.1),
        Adam::adamw(0.2, 0.01)
            .with_betas(0.5, 0.9)
            .with_eps(1e-3)
            .with_eps_root(1e-4),
    ] {
        let mut theta = scalar_param(0.7);
        let mut state = opt.init(&theta);
        for &g in &gs {
            (theta, state) = opt.update(&theta, &state, &scalar_param(g));
        }
        let (th, m, v) = adam_ref(&opt, 0.7, &gs);
        assert!((theta["x"].item() - th).abs() < 1e-14, "{opt:?}");
        assert!((state.slots[0]["x"].item() - m).abs() < 1e-15);
        assert!((state.slots[1]["x"].item() - v).abs() < 1e-15);
        assert_eq!(state.step, gs.len());
    }
}

#[test]
fn update_runs_in_every_algebra_with_the_same_primal() {
    let mut rng = Rng::new(9);
    let opt = Adam::adamw(1e-2, 0.1);
    let (theta, state) = run(&opt, &mut rng, 3);
    let g = away_from_zero(&mut rng);
    let (t_ref, s_ref) = opt.update(&theta, &state, &g);
    let tape = Tape::<Tensor<f64>>::new();
    let lift = |p: &P| p.map(|t| tape.var(t.clone()));
    let sv = OptState {
        step: state.step,
        slots: state.slots.iter().map(lift).collect(),
    };
    let (t2, s2) = opt.update(&lift(&theta), &sv, &lift(&g));
    assert_eq!(t2.map(|v| v.primal()), t_ref);
    assert_eq!(s2.slots[1].map(|v| v.primal()), s_ref.slots[1]);
}

// ---- validation and misuse ------------------------------------------------------------

fn bad_field(r: datarater::Result<()>) -> &'static str {
    match r {
        Err(Error::Config { field, .. }) => field,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn validation_rejects_bad_hyper_parameters() {
    assert!(Sgd::new(0.1).validate().is_ok());
    assert!(Momentum::nesterov(0.1, 0.0).validate().is_ok());
    assert!(Adam::new(1e-3).validate().is_ok());
    assert!(Adam::<f32>::adamw(1e-3, 0.1).validate().is_ok());
    assert!(Adam::new(1e-3).with_eps(0.0).validate().is_ok());

    for lr in [0.0, -1.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert_eq!(bad_field(Sgd::new(lr).validate()), "lr");
        assert_eq!(bad_field(Optimizer::validate(&Sgd::new(lr))), "lr");
        assert_eq!(bad_field(Momentum::new(lr, 0.9).validate()), "lr");
        assert_eq!(bad_field(Momentum::nesterov(lr, 0.9).validate()), "lr");
        assert_eq!(
            bad_field(Optimizer::validate(&Momentum::new(lr, 0.9))),
            "lr"
        );
        assert_eq!(bad_field(Adam::new(lr).validate()), "lr");
        // Through the trait as well.
        assert_eq!(bad_field(Optimizer::validate(&Adam::new(lr))), "lr");
    }
    for beta in [1.0, 1.5, -0.1, f64::NAN, f64::INFINITY] {
        assert_eq!(bad_field(Momentum::new(0.1, beta).validate()), "beta");
        assert_eq!(bad_field(Momentum::nesterov(0.1, beta).validate()), "beta");
        let a = Adam::new(1e-3);
        assert_eq!(bad_field(a.with_betas(beta, a.beta2).validate()), "beta1");
        assert_eq!(bad_field(a.with_betas(a.beta1, beta).validate()), "beta2");
    }
    let a = Adam::new(1e-3);
    assert_eq!(bad_field(a.with_eps(-1e-8).validate()), "eps");
    assert_eq!(bad_field(a.with_eps_root(-1e-12).validate()), "eps_root");
    assert_eq!(bad_field(a.with_eps_root(f64::NAN).validate()), "eps_root");
    assert_eq!(
        bad_field(Adam::adamw(1e-3, -0.1).validate()),
        "weight_decay"
    );
    assert_eq!(
        bad_field(Adam::adamw(1e-3, f64::INFINITY).validate()),
        "weight_decay"
    );
    assert_eq!(
        bad_field(a.with_eps(0.0).with_eps_root(0.0).validate()),
        "eps"
    );
}

#[test]
#[should_panic(expected = "no tensor named `b`")]
fn update_panics_naming_a_missing_gradient() {
    let mut rng = Rng::new(0);
    let theta = normal_params(&mut rng, 1.0);
    let mut g = Params::new();
    g.insert("a.w", theta["a.w"].clone());
    let opt = Sgd::new(0.1);
    let _ = opt.update(&theta, &opt.init(&theta), &g);
}

#[test]
#[should_panic(expected = "slots")]
fn adjoint_panics_on_a_state_of_the_wrong_optimiser() {
    let mut rng = Rng::new(0);
    let theta = normal_params(&mut rng, 1.0);
    let mom_state = Momentum::new(0.1, 0.9).init(&theta);
    let _ = Adam::new(1e-3).adjoint(&theta, &mom_state, &theta, &theta, &[]);
}

// ---- builders and the eps_root default ----------------------------------------------

#[test]
fn adam_builders_set_one_field_each() {
    let base = Adam::new(0.01);
    let opt = base
        .with_eps_root(1e-20)
        .with_weight_decay(0.1)
        .with_betas(0.8, 0.95)
        .with_eps(1e-6);
    assert_eq!(
        (
            opt.lr,
            opt.beta1,
            opt.beta2,
            opt.eps,
            opt.eps_root,
            opt.weight_decay
        ),
        (0.01, 0.8, 0.95, 1e-6, 1e-20, 0.1)
    );
    assert_eq!(base.with_weight_decay(0.1), Adam::adamw(0.01, 0.1));
    assert_eq!(base.eps_root, DEFAULT_EPS_ROOT);
    assert_eq!(bad_field(base.with_betas(0.9, 1.0).validate()), "beta2");
    assert_eq!(bad_field(base.with_eps(f64::NAN).validate()), "eps");
}

/// `dJ/d eta` for a small weighted regression, by reverse-over-reverse autodiff through
/// `steps` Adam steps: inner loss `sum_i softmax(x eta)_i (x_i . w - y_i)^2`, outer loss
/// the mean squared error on held-out rows. Feature 3 is zero in every training row, so
/// its gradient is exactly zero at every step (`v_hat = 0`, where `eps_root` matters).
fn adam_meta_gradient(opt: Adam<f64>, steps: usize) -> P {
    let mut rng = Rng::new(5);
    let (n, d) = (8, 4);
    let rows = |rng: &mut Rng, dead: bool| {
        let x: Vec<f64> = (0..n * d)
            .map(|i| {
                if dead && i % d == 3 {
                    0.0
                } else {
                    rng.normal()
                }
            })
            .collect();
        let y: Vec<f64> = (0..n).map(|_| rng.normal()).collect();
        (
            Tensor::from_vec(&[n, d], x).unwrap(),
            Tensor::from_vec(&[n, 1], y).unwrap(),
        )
    };
    let (x, y) = rows(&mut rng, true);
    let (xo, yo) = rows(&mut rng, false);
    let mut eta = Params::new();
    eta.insert(
        "e",
        Tensor::from_vec(&[d, 1], vec![0.3, -0.2, 0.5, 0.1]).unwrap(),
    );
    let mut theta0 = Params::new();
    theta0.insert(
        "w",
        Tensor::from_vec(&[d, 1], vec![0.1, 0.2, -0.1, 0.4]).unwrap(),
    );
    let state0 = opt.init(&theta0);
    let (_, g) = value_and_grad(
        |eta: &Params<Var<Tensor<f64>>>| -> datarater::Result<Var<Tensor<f64>>> {
            let c = |t: &Tensor<f64>| Var::constant(t.clone());
            let mut theta = theta0.map(c);
            let mut state = OptState {
                step: state0.step,
                slots: state0.slots.iter().map(|s| s.map(c)).collect(),
            };
            for _ in 0..steps {
                // Differentiate the inner loss with respect to theta and eta together
                // (so eta stays live on the outer tape), then keep theta's part.
                let mut both = Params::new();
                both.extend_scoped("theta", theta.clone());
                both.extend_scoped("eta", eta.clone());
                let g_all = grad(
                    |p| {
                        let cc = |t: &Tensor<f64>| Var::<Var<Tensor<f64>>>::constant(t.clone());
                        let w = p.scope("eta")["e"].clone();
                        let weights = cc(&x).matmul(&w).softmax(0);
                        let r = cc(&x).matmul(&p.scope("theta")["w"]).sub(&cc(&y));
                        weights.mul(&r.square()).sum_all()
                    },
                    &both,
                )?;
                (theta, state) = opt.update(&theta, &state, &g_all.scope("theta"));
            }
            let r = c(&xo).matmul(&theta["w"]).sub(&c(&yo));
            Ok(r.square().mean_all())
        },
        &eta,
    )
    .unwrap();
    g
}

/// optax's `adam` has `eps_root = 0`; ours defaults to 1e-12. Measures what that does to
/// a meta-gradient (quoted in the docs of `Adam::with_eps_root`): with a dead feature,
/// exactly 0 gives NaN, while 1e-12 and a tiny 1e-30 agree closely.
#[test]
fn eps_root_default_barely_moves_a_meta_gradient() {
    let opt = Adam::new(0.1);
    let ours = adam_meta_gradient(opt, 3);
    let tiny = adam_meta_gradient(opt.with_eps_root(1e-30), 3);
    let zero = adam_meta_gradient(opt.with_eps_root(0.0), 3);
    assert!(ours["e"].is_finite() && tiny["e"].is_finite());
    assert!(
        !zero["e"].is_finite(),
        "textbook Adam's adjoint is NaN at v = 0"
    );
    let (a, b) = (ours["e"].to_vec(), tiny["e"].to_vec());
    let max_abs = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    let diff: Vec<f64> = a.iter().zip(&b).map(|(p, q)| p - q).collect();
    let rel = max_abs(&diff) / max_abs(&b);
    println!("meta-gradient, eps_root 1e-12: {a:?}");
    println!("meta-gradient, eps_root 1e-30: {b:?}");
    println!("relative difference (max norm): {rel:.3e}");
    assert!(
        max_abs(&b) > 1e-3,
        "the meta-gradient is not trivially zero"
    );
    assert!(rel > 0.0 && rel < 1e-6, "relative difference {rel:e}");
}

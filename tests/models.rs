//! Cross-mode checks on the two reference models: gradients against finite differences,
//! HVP by forward-over-reverse == reverse-over-reverse == reverse-over-forward == finite
//! differences of the gradient, and `u . H v == v . H u`.

use datarater::autodiff::check::{ScalarFn, check_gradient, check_hvp, check_jvp, compare};
use datarater::nn::{Activation, CausalLm, Mlp, SequenceScorer, TransformerConfig};
use datarater::transforms::{grad_tangents_with, hvp, hvp_rev_fwd, hvp_rev_rev, jvp_grad_with};
use datarater::{Dual, Indices, Params, Rng, Tensor, Value, Var};

struct MlpLoss {
    mlp: Mlp,
    x: Tensor<f64>,
    y: Tensor<f64>,
}

impl ScalarFn for MlpLoss {
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        let out = self.mlp.forward(p, &V::constant(self.x.clone())).unwrap();
        out.sub(&V::constant(self.y.clone())).square().mean_all()
    }
}

struct LmLoss {
    lm: CausalLm,
    inputs: Indices,
    targets: Indices,
}

impl ScalarFn for LmLoss {
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        self.lm
            .per_example_loss(p, &self.inputs, &self.targets)
            .unwrap()
            .mean_all()
    }
}

struct ScorerLoss {
    scorer: SequenceScorer,
    tokens: Indices,
}

impl ScalarFn for ScorerLoss {
    fn eval<V: Value<F = f64>>(&self, p: &Params<V>) -> V {
        let s = self.scorer.scores(p, &self.tokens).unwrap();
        s.softmax(0).mul(&s.tanh()).sum_all()
    }
}

fn random_like(p: &Params<Tensor<f64>>, rng: &mut Rng) -> Params<Tensor<f64>> {
    p.map(|t| datarater::nn::normal(rng, t.shape(), 1.0))
}

fn tokens(rng: &mut Rng, b: usize, t: usize, vocab: usize) -> Indices {
    Indices::new(&[b, t], (0..b * t).map(|_| rng.below(vocab)).collect()).unwrap()
}

fn small_cfg() -> TransformerConfig {
    TransformerConfig::new(8, 2, 2, 6)
        .with_vocab(11)
        .with_d_ff(16)
}

fn mlp_problem(rng: &mut Rng) -> (MlpLoss, Params<Tensor<f64>>) {
    let mlp = Mlp::new(&[3, 5, 4, 2], Activation::Tanh).unwrap();
    let p = mlp.init(rng);
    let x = datarater::nn::normal(rng, &[6, 3], 1.0);
    let y = datarater::nn::normal(rng, &[6, 2], 1.0);
    (MlpLoss { mlp, x, y }, p)
}

fn lm_problem(rng: &mut Rng) -> (LmLoss, Params<Tensor<f64>>) {
    let lm = CausalLm::new(small_cfg()).unwrap();
    let mut p = lm.init(rng);
    // Non-trivial layer-norm gains and biases so their derivatives are exercised.
    p = p.map(|t| {
        Tensor::from_array(
            t.array()
                + &datarater::nn::normal::<f64>(rng, t.shape(), 0.1)
                    .array()
                    .view(),
        )
    });
    let inputs = tokens(rng, 3, 5, 11);
    let targets = tokens(rng, 3, 5, 11);
    (
        LmLoss {
            lm,
            inputs,
            targets,
        },
        p,
    )
}

fn check_all_hvps<S: ScalarFn>(f: &S, p: &Params<Tensor<f64>>, rng: &mut Rng) {
    let (u, v) = (random_like(p, rng), random_like(p, rng));
    let (_, _, hv) = hvp(|q| f.eval(q), p, &v).unwrap();
    let (_, _, hu) = hvp(|q| f.eval(q), p, &u).unwrap();
    let rr = hvp_rev_rev(|q| f.eval(q), p, &v).unwrap();
    let rf = hvp_rev_fwd(|q| f.eval(q), p, &v).unwrap();
    let r1 = compare(&rr, &hv).unwrap();
    let r2 = compare(&rf, &hv).unwrap();
    assert!(r1.ok(1e-10), "fwd-over-rev vs rev-over-rev: {r1:?}");
    assert!(r2.ok(1e-10), "fwd-over-rev vs rev-over-fwd: {r2:?}");
    let fd = check_hvp(f, p, &v, 1e-6).unwrap();
    assert!(
        fd.ok(1e-6),
        "HVP vs finite differences of the gradient: {fd:?}"
    );
    let (a, b) = (u.dot(&hv).unwrap(), v.dot(&hu).unwrap());
    assert!(
        (a - b).abs() <= 1e-10 * a.abs().max(b.abs()).max(1.0),
        "u.Hv = {a} but v.Hu = {b}"
    );
    // Without the gradient (the weights' cotangents as tangents alone): the same bits.
    let bits = |t: &Tensor<f64>| t.array().iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let g = |q: &[Params<Var<Dual<Tensor<f64>>>>]| Ok(f.eval(&q[0]));
    for remat in [true, false] {
        let both = jvp_grad_with(g, &[p], &[Some(&v)], remat).unwrap();
        let only = grad_tangents_with(g, &[p], &[Some(&v)], remat).unwrap();
        assert!(only.grads.is_empty());
        for (k, t) in both.tangents[0].iter() {
            assert_eq!(bits(&only.tangents[0][k]), bits(t), "{k}, remat {remat}");
        }
    }
}

#[test]
fn mlp_gradient_jvp_and_hvp() {
    let mut rng = Rng::new(1);
    let (f, p) = mlp_problem(&mut rng);
    let g = check_gradient(&f, &p, 1e-6).unwrap();
    assert!(g.ok(1e-7), "{g:?}");
    let d = random_like(&p, &mut rng);
    let j = check_jvp(&f, &p, &d, 1e-6).unwrap();
    assert!(j.ok(1e-7), "{j:?}");
    check_all_hvps(&f, &p, &mut rng);
}

#[test]
fn transformer_lm_gradient_matches_finite_differences() {
    let mut rng = Rng::new(2);
    let (f, p) = lm_problem(&mut rng);
    let g = check_gradient(&f, &p, 1e-6).unwrap();
    assert!(g.ok(1e-6), "{g:?}");
    let d = random_like(&p, &mut rng);
    let j = check_jvp(&f, &p, &d, 1e-6).unwrap();
    assert!(j.ok(1e-6), "{j:?}");
}

#[test]
fn transformer_lm_hvp_all_modes_agree() {
    let mut rng = Rng::new(3);
    let (f, p) = lm_problem(&mut rng);
    check_all_hvps(&f, &p, &mut rng);
}

#[test]
fn bidirectional_scorer_hvp_all_modes_agree() {
    let mut rng = Rng::new(4);
    let scorer = SequenceScorer::new(small_cfg()).unwrap();
    let p = scorer.init(&mut rng);
    let f = ScorerLoss {
        scorer,
        tokens: tokens(&mut rng, 4, 6, 11),
    };
    let g = check_gradient(&f, &p, 1e-6).unwrap();
    assert!(g.ok(1e-6), "{g:?}");
    check_all_hvps(&f, &p, &mut rng);
}

#[test]
fn causal_lm_ignores_the_future() {
    let mut rng = Rng::new(5);
    let lm = CausalLm::new(small_cfg()).unwrap();
    let p = lm.init::<f64>(&mut rng);
    let a = tokens(&mut rng, 1, 5, 11);
    let mut changed = a.data().to_vec();
    changed[4] = (changed[4] + 1) % 11;
    let b = Indices::new(&[1, 5], changed).unwrap();
    let (la, lb) = (lm.logits(&p, &a).unwrap(), lm.logits(&p, &b).unwrap());
    let (la, lb) = (la.slice(1, 0, 4).to_vec(), lb.slice(1, 0, 4).to_vec());
    assert_eq!(la, lb, "positions before the change must not see it");
    let (ka, kb) = (
        lm.logits(&p, &a).unwrap().slice(1, 4, 5).to_vec(),
        lm.logits(&p, &b).unwrap().slice(1, 4, 5).to_vec(),
    );
    assert_ne!(ka, kb, "the changed position itself must see it");
}

#[test]
fn bad_tokens_are_typed_errors() {
    let mut rng = Rng::new(6);
    let lm = CausalLm::new(small_cfg()).unwrap();
    let p = lm.init::<f64>(&mut rng);
    let bad = Indices::new(&[1, 3], vec![1, 2, 11]).unwrap();
    let ok = Indices::new(&[1, 3], vec![1, 2, 3]).unwrap();
    assert!(matches!(
        lm.per_example_loss(&p, &bad, &ok),
        Err(datarater::Error::Index {
            index: 11,
            size: 11,
            ..
        })
    ));
    assert!(matches!(
        lm.per_example_loss(&p, &ok, &bad),
        Err(datarater::Error::Index { index: 11, .. })
    ));
    let long = Indices::new(&[1, 7], vec![0; 7]).unwrap();
    assert!(lm.per_example_loss(&p, &long, &long).is_err());
    let cfg = small_cfg().with_n_heads(3);
    assert!(matches!(
        CausalLm::new(cfg),
        Err(datarater::Error::Config {
            field: "n_heads",
            ..
        })
    ));
}

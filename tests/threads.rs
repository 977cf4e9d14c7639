//! Results are a function of the data and the settings only: meta-gradients (every
//! mode, f32 and f64), a meta-trained rater and the scores it gives are bitwise the
//! same on 1, 2, 3 and 8 threads. The shapes are large enough that the kernels split
//! their work over threads too (more than 2^16 elements per activation).

use datarater::data::Corpus;
use datarater::meta::{
    DataRaterProblem, InnerLoop, MeanLoss, MetaGradient, MetaRequest, Mode, Rater, Sampler,
    Snapshots,
};
use datarater::nn::{CausalLm, SequenceScorer, TransformerConfig};
use datarater::optim::{Adam, Optimizer};
use datarater::trainer::{
    MetaAdam, Sequences, Setup, TextBatch, TextLm, TextPool, TextRater, Trainer, TrainerConfig,
    score_sequences,
};
use datarater::{Float, Params, Rng, Tensor};

const THREADS: [usize; 4] = [1, 2, 3, 8];

fn cfg(causal: bool, d_model: usize, seq: usize) -> TransformerConfig {
    TransformerConfig::new(d_model, 2, 4, seq)
        .with_d_ff(2 * d_model)
        .with_causal(causal)
}

/// Runs `f` on a pool of `threads` threads.
fn on<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

struct Text<F: Float> {
    inner: TextLm<Adam<F>>,
    rater: TextRater,
    train: TextPool,
    held: TextPool,
}

/// A byte LM of width 32 on 64-byte sequences, batches of 10 (logits: 10 x 64 x 256
/// elements), and a rater of width 16.
fn text<F: Float>() -> Text<F> {
    let seqs = Corpus::embedded().sequences(64).unwrap();
    Text {
        inner: TextLm::new(
            CausalLm::new(cfg(true, 32, 64)).unwrap(),
            Adam::new(F::c(1e-3)),
        )
        .unwrap(),
        rater: TextRater {
            scorer: SequenceScorer::new(cfg(false, 16, 64)).unwrap(),
        },
        train: TextPool::new(Sequences::from_rows(&seqs[..100]).unwrap(), 10).unwrap(),
        held: TextPool::new(Sequences::from_rows(&seqs[100..140]).unwrap(), 10).unwrap(),
    }
}

fn meta_gradients_agree_on_every_thread_count<F: Float>() {
    let t = text::<F>();
    let problem = DataRaterProblem {
        inner: &t.inner,
        rater: &t.rater,
        outer: &MeanLoss,
    };
    let mut rng = Rng::new(3);
    let theta: Params<Tensor<F>> = t.inner.init(&mut rng);
    let eta: Params<Tensor<F>> = t.rater.init(&mut rng);
    let state = t.inner.opt.init(&theta);
    let batches: Vec<TextBatch> = (0..3).map(|_| t.train.sample(&mut rng).unwrap()).collect();
    let outer = t.held.sample(&mut rng).unwrap();
    for mode in [
        Mode::Mixed,
        Mode::Checkpointed {
            snapshots: Snapshots::Auto,
        },
        Mode::Unrolled,
    ] {
        let run = |threads| -> MetaGradient<F> {
            on(threads, || {
                MetaRequest::new(&problem, &eta, &theta, &state, &batches, &outer)
                    .mode(mode)
                    .run()
                    .unwrap()
            })
        };
        let first = run(THREADS[0]);
        for threads in &THREADS[1..] {
            let r = run(*threads);
            let label = format!("{mode}, {threads} threads");
            assert_eq!(r.grad, first.grad, "{label}: meta-gradient");
            assert_eq!(r.theta, first.theta, "{label}: theta_T");
            assert_eq!(
                r.outer_loss.to_bits_u64(),
                first.outer_loss.to_bits_u64(),
                "{label}"
            );
            assert_eq!(r.inner_losses, first.inner_losses, "{label}");
        }
    }
}

trait Bits {
    fn to_bits_u64(self) -> u64;
}

impl<F: Float> Bits for F {
    fn to_bits_u64(self) -> u64 {
        self.f64().to_bits()
    }
}

#[test]
fn meta_gradients_are_bitwise_equal_on_1_2_3_and_8_threads_f64() {
    meta_gradients_agree_on_every_thread_count::<f64>();
}

#[test]
fn meta_gradients_are_bitwise_equal_on_1_2_3_and_8_threads_f32() {
    meta_gradients_agree_on_every_thread_count::<f32>();
}

#[test]
fn a_trained_rater_and_its_scores_are_bitwise_equal_on_1_2_3_and_8_threads() {
    let t = text::<f32>();
    let meta = MetaAdam::default();
    let config = TrainerConfig::default()
        .with_outer_steps(2)
        .with_inner_steps(2)
        .with_population(3)
        .with_reset_every(0)
        .with_seed(7);
    let probe: Vec<Vec<u8>> = Corpus::embedded().sequences(64).unwrap()[140..150].to_vec();
    let run = |threads| {
        on(threads, || {
            let setup = Setup {
                inner: &t.inner,
                rater: &t.rater,
                outer: &MeanLoss,
                meta_opt: &meta,
                train: &t.train,
                held_out: &t.held,
            };
            let trainer = Trainer::new(setup, config.clone()).unwrap();
            let mut state = trainer.init(None).unwrap();
            trainer.run(&mut state, |_, _| {}).unwrap();
            let scores = score_sequences(&t.rater, &state.eta, &probe, 4).unwrap();
            (state.eta, scores)
        })
    };
    let (eta, scores) = run(THREADS[0]);
    for threads in &THREADS[1..] {
        let (e, s) = run(*threads);
        assert_eq!(e, eta, "{threads} threads: rater");
        assert_eq!(s, scores, "{threads} threads: scores");
    }
}

/// The fused attention op: output, gradient and forward-over-reverse H v bitwise the
/// same on 1 and 3 threads (32 (batch, head) items of 100 x 100 scores: the parallel
/// path), causal or not, in f32 and f64.
#[test]
fn fused_attention_is_bitwise_equal_on_1_and_3_threads() {
    use datarater::Value;
    use datarater::autodiff::ops::attention::Attention;
    use datarater::transforms::hvp;
    fn run<F: Float>(causal: bool) {
        let (b, t, heads, dh) = (8, 100, 4, 16);
        let mut rng = Rng::new(5);
        let mut p = Params::new();
        for name in ["q", "k", "v", "w"] {
            let x: Vec<F> = (0..b * t * heads * dh)
                .map(|_| F::c(rng.normal()))
                .collect();
            p.insert(name, Tensor::from_vec(&[b, t, heads * dh], x).unwrap());
        }
        let dir = p.map(|x| x.scale(F::c(0.5)));
        let once = || {
            let op = Attention { heads, causal };
            let o = Tensor::apply(op, &[&p["q"], &p["k"], &p["v"]]);
            let (_, g, h) = hvp(
                |q: &Params<_>| {
                    let o = Value::apply(op, &[&q["q"], &q["k"], &q["v"]]);
                    o.mul(&q["w"]).sum_all()
                },
                &p,
                &dir,
            )
            .unwrap();
            (o, g, h)
        };
        let first = on(1, once);
        let again = on(3, once);
        assert_eq!(again.0, first.0, "causal {causal}: output");
        assert_eq!(again.1, first.1, "causal {causal}: gradient");
        assert_eq!(again.2, first.2, "causal {causal}: H v");
    }
    for causal in [false, true] {
        run::<f64>(causal);
        run::<f32>(causal);
    }
}

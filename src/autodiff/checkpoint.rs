//! Rematerialisation: a [`Block`] recorded on a tape as ONE node that keeps only its
//! inputs; its inside is recomputed during the backward sweep. This is the
//! "block-level rematerialisation" that keeps a forward-over-reverse step's working
//! set to one block's activations.

use super::dual::Dual;
use super::float::Float;
use super::tape::{Tape, Var};
use super::tensor::Tensor;
use super::value::{Ctx, Op, Saves, Value};

/// A sub-computation written generically over the algebra, with its inputs passed
/// explicitly (activations and the parameters it uses).
pub trait Block<F: Float>: Clone + 'static {
    /// Name used in error messages.
    fn name(&self) -> &'static str {
        "checkpoint"
    }
    /// Runs the block.
    fn apply<V: Value<F = F>>(&self, xs: &[&V]) -> V;
}

/// The op recorded for a checkpointed block: its rules run the block itself, in forward
/// mode for the JVP and on a fresh inner tape for the VJP.
#[derive(Clone, Debug)]
pub struct Remat<B>(pub B);

impl<F: Float, B: Block<F>> Op<F> for Remat<B> {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    fn saves(&self) -> Saves {
        Saves::INPUTS
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        self.0.apply(xs)
    }
    fn primal_and_tangent<V: Value<F = F>>(&self, xs: &[&V], dxs: &[Option<&V>]) -> Option<(V, V)> {
        let duals: Vec<Dual<V>> = xs
            .iter()
            .zip(dxs)
            .map(|(x, t)| Dual {
                primal: (*x).clone(),
                tangent: t.cloned(),
            })
            .collect();
        let y = self.0.apply(&duals.iter().collect::<Vec<_>>());
        let t = y.tangent_or_zeros();
        Some((y.primal, t))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dxs: &[Option<&V>]) -> V {
        let xs: Vec<&V> = (0..dxs.len()).map(|i| ctx.x(i)).collect();
        self.primal_and_tangent(&xs, dxs).expect("always Some").1
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let tape = Tape::<V>::new();
        let n = ctx.shapes.len();
        let vars: Vec<Var<V>> = (0..n)
            .map(|i| {
                if ctx.needs(i) {
                    tape.var(ctx.x(i).clone())
                } else {
                    Var::constant_of(ctx.x(i).clone())
                }
            })
            .collect();
        let y = self.0.apply(&vars.iter().collect::<Vec<_>>());
        let wrt: Vec<&Var<V>> = vars.iter().collect();
        let grads = tape
            .backward(&y, dy.clone(), &wrt)
            .expect("block output has the shape of dy");
        grads
            .into_iter()
            .enumerate()
            .map(|(i, g)| ctx.needs(i).then_some(g))
            .collect()
    }
}

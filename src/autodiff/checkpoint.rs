//! Rematerialisation: a [`Block`] recorded on a tape as ONE node. The node keeps the
//! block's inputs; the block's inside is kept only while it is the most recent block
//! on its tape, and is recomputed in the backward sweep otherwise. This is the
//! "block-level rematerialisation" that keeps a forward-over-reverse step's working set
//! to about one block's activations, without recomputing the last block (whose
//! activations are alive at the start of the backward sweep anyway).

use super::float::Float;
use super::tape::{Tape, Var};
use super::value::{Ctx, Value};

/// A sub-computation written generically over the algebra, with its inputs passed
/// explicitly (activations and the parameters it uses).
pub trait Block<F: Float>: Clone + 'static {
    /// Runs the block.
    fn apply<V: Value<F = F>>(&self, xs: &[&V]) -> V;
}

/// A block's recorded inside: its own tape, its input variables and its output.
pub(crate) struct Recorded<V: Value> {
    pub(crate) tape: Tape<V>,
    pub(crate) inputs: Vec<Var<V>>,
    pub(crate) output: Var<V>,
}

impl<V: Value> Recorded<V> {
    /// Records `block` on a fresh tape; inputs that need no cotangent stay constants, and
    /// those whose cotangent is read for its tangent only are leaves of that kind.
    pub(crate) fn run<B: Block<V::F>>(
        block: &B,
        xs: &[V],
        needs: &[bool],
        tangent_only: &[bool],
    ) -> Self {
        let tape = Tape::with_checkpointing(false);
        let inputs: Vec<Var<V>> = xs
            .iter()
            .zip(needs.iter().zip(tangent_only))
            .map(|(x, need)| match need {
                (false, _) => Var::constant_of(x.clone()),
                (true, false) => tape.var(x.clone()),
                (true, true) => tape.var_for_tangent(x.clone()),
            })
            .collect();
        let output = block.apply(&inputs.iter().collect::<Vec<_>>());
        Recorded {
            tape,
            inputs,
            output,
        }
    }

    /// Input cotangents (`None` where not needed) for output cotangent `dy`.
    pub(crate) fn backward(self, dy: &V, needs: &[bool]) -> Vec<Option<V>> {
        let wrt: Vec<&Var<V>> = self.inputs.iter().collect();
        let grads = self
            .tape
            .backward(&self.output, dy.clone(), &wrt)
            .expect("block output has the shape of dy");
        grads
            .into_iter()
            .zip(needs)
            .map(|(g, &n)| n.then_some(g))
            .collect()
    }
}

/// The VJP of a block whose inside was dropped: run it again on the saved inputs.
pub(crate) fn recompute_vjp<V: Value, B: Block<V::F>>(
    block: &B,
    ctx: &Ctx<V>,
    dy: &V,
) -> Vec<Option<V>> {
    let xs: Vec<V> = (0..ctx.shapes.len()).map(|i| ctx.x(i).clone()).collect();
    Recorded::run(block, &xs, &ctx.needs, &ctx.tangent_only).backward(dy, &ctx.needs)
}

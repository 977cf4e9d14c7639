//! Reverse mode: a `Tape<V>` records ops on values of any algebra `V`; `Var<V>` is a
//! handle into it. Each recorded VJP rule runs with `V`'s own ops, so when `V` is itself
//! a dual or a variable of an outer tape, the backward pass is differentiable.

use super::checkpoint::{Block, Recorded, recompute_vjp};
use super::tensor::Tensor;
use super::value::{Ctx, Op, Value};
use crate::error::{Error, Result};
use std::cell::RefCell;
use std::collections::HashSet;
use std::rc::Rc;

type VjpFn<V> = Box<dyn Fn(&Ctx<V>, &V) -> Vec<Option<V>>>;

struct Node<V: Value> {
    parents: Vec<Option<usize>>,
    ctx: Ctx<V>,
    vjp: VjpFn<V>,
}

#[derive(Default)]
struct Inner<V: Value> {
    /// `None` for leaves and for nodes already consumed by a backward pass.
    nodes: Vec<Option<Node<V>>>,
    consumed: bool,
    checkpointing: bool,
    /// The leaves whose cotangents will be read for their tangents only
    /// ([`Ctx::tangent_only`]).
    tangent_only: HashSet<usize>,
    /// The inside of the most recent checkpointed block, while it is still kept.
    live_block: Option<LiveBlock<V>>,
}

type LiveBlock<V> = Rc<RefCell<Option<Recorded<V>>>>;

/// A reverse-mode tape over algebra `V`. Dropping the tape (and its variables) frees
/// everything it recorded; it holds no reference cycles.
pub struct Tape<V: Value>(Rc<RefCell<Inner<V>>>);

impl<V: Value> Clone for Tape<V> {
    fn clone(&self) -> Self {
        Tape(self.0.clone())
    }
}

impl<V: Value> Default for Tape<V> {
    fn default() -> Self {
        Self::new()
    }
}

/// A value recorded on a [`Tape`] (or a constant, which is recorded nowhere).
#[derive(Clone)]
pub struct Var<V: Value> {
    value: V,
    node: Option<(Tape<V>, usize)>,
}

impl<V: Value> std::fmt::Debug for Var<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Var")
            .field("shape", &self.value.shape())
            .field("node", &self.node.as_ref().map(|(_, i)| *i))
            .finish()
    }
}

impl<V: Value> Tape<V> {
    /// An empty tape that records [`checkpoint`](Value::checkpoint)ed blocks as one
    /// rematerialised node each (memory-lean; the block runs again in the backward sweep).
    pub fn new() -> Self {
        Self::with_checkpointing(true)
    }

    /// An empty tape; with `checkpointing = false` checkpointed blocks are recorded op by
    /// op like any other code (faster, more memory).
    pub fn with_checkpointing(checkpointing: bool) -> Self {
        Tape(Rc::new(RefCell::new(Inner {
            nodes: Vec::new(),
            consumed: false,
            checkpointing,
            tangent_only: HashSet::new(),
            live_block: None,
        })))
    }

    fn checkpointing(&self) -> bool {
        self.0.borrow().checkpointing
    }

    /// For each parent, whether it is a leaf whose cotangent is read for its tangent only.
    fn tangent_only(&self, parents: &[Option<usize>]) -> Vec<bool> {
        let inner = self.0.borrow();
        parents
            .iter()
            .map(|p| p.is_some_and(|id| inner.tangent_only.contains(&id)))
            .collect()
    }

    /// A new input variable (a leaf) holding `value`.
    pub fn var(&self, value: V) -> Var<V> {
        let mut inner = self.0.borrow_mut();
        inner.nodes.push(None);
        Var {
            value,
            node: Some((self.clone(), inner.nodes.len() - 1)),
        }
    }

    /// A leaf whose cotangent will be read for its tangent only (its primal part is left
    /// unspecified): rules may skip the primal half of its cotangent
    /// ([`Ctx::tangent_only`]).
    pub(crate) fn var_for_tangent(&self, value: V) -> Var<V> {
        let v = self.var(value);
        if let Some((_, id)) = &v.node {
            self.0.borrow_mut().tangent_only.insert(*id);
        }
        v
    }

    /// Number of recorded nodes (leaves included).
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of distinct buffers the tape keeps alive for its VJP rules (including the
    /// inside of a checkpointed block it still keeps).
    pub fn bytes(&self) -> usize {
        let mut seen = HashSet::new();
        let mut total = 0;
        self.visit_saved(&mut |addr, n| {
            if seen.insert(addr) {
                total += n;
            }
        });
        total
    }

    /// [`bytes`](Self::bytes) plus each node's bookkeeping (its rule, parents and
    /// shapes): a visible share of a tape of many small ops, which a memory budget
    /// must count.
    pub(crate) fn held_bytes(&self) -> usize {
        let inner = self.0.borrow();
        let words = |n: usize| n * std::mem::size_of::<usize>();
        let nodes = inner.nodes.capacity() * std::mem::size_of::<Option<Node<V>>>()
            + inner
                .nodes
                .iter()
                .flatten()
                .map(|node| {
                    let c = &node.ctx;
                    std::mem::size_of_val(&*node.vjp)
                        + words(2 * node.parents.capacity())
                        + c.xs.capacity() * std::mem::size_of::<Option<V>>()
                        + c.shapes
                            .iter()
                            .map(|s| words(s.capacity() + 3))
                            .sum::<usize>()
                        + words(c.out_shape.capacity())
                        + c.needs.capacity()
                })
                .sum::<usize>();
        drop(inner);
        nodes + self.bytes()
    }

    fn visit_saved(&self, visit: &mut dyn FnMut(usize, usize)) {
        let inner = self.0.borrow();
        for node in inner.nodes.iter().flatten() {
            for x in node.ctx.xs.iter().flatten() {
                x.visit_buffers(visit);
            }
            if let Some(y) = &node.ctx.y {
                y.visit_buffers(visit);
            }
        }
        if let Some(rec) = inner
            .live_block
            .as_ref()
            .and_then(|b| b.borrow().as_ref().map(|r| r.tape.clone()))
        {
            rec.visit_saved(visit);
        }
    }

    /// Records `block` as one node. Its inside is kept until the next block is recorded
    /// on this tape, then dropped and recomputed by the backward sweep.
    fn record_block<B: Block<V::F>>(&self, block: &B, xs: &[&Var<V>]) -> Var<V> {
        let previous = self.0.borrow_mut().live_block.take();
        if let Some(prev) = previous {
            prev.borrow_mut().take();
        }
        let values: Vec<V> = xs.iter().map(|x| x.value.clone()).collect();
        let needs: Vec<bool> = xs.iter().map(|x| x.node.is_some()).collect();
        let parents: Vec<Option<usize>> = xs
            .iter()
            .map(|x| x.node.as_ref().map(|(_, id)| *id))
            .collect();
        let tangent_only = self.tangent_only(&parents);
        let rec = Recorded::run(block, &values, &needs, &tangent_only);
        let y = rec.output.value.clone();
        let kept: LiveBlock<V> = Rc::new(RefCell::new(Some(rec)));
        self.0.borrow_mut().live_block = Some(kept.clone());
        let ctx = Ctx {
            shapes: values.iter().map(Value::shape).collect(),
            xs: values.into_iter().map(Some).collect(),
            out_shape: y.shape(),
            y: None,
            needs,
            tangent_only,
        };
        let block = block.clone();
        let vjp = move |c: &Ctx<V>, dy: &V| match kept.borrow_mut().take() {
            Some(rec) => rec.backward(dy, &c.needs),
            None => recompute_vjp(&block, c, dy),
        };
        let id = self.push(Node {
            parents,
            ctx,
            vjp: Box::new(vjp),
        });
        Var {
            value: y,
            node: Some((self.clone(), id)),
        }
    }

    fn push(&self, node: Node<V>) -> usize {
        let mut inner = self.0.borrow_mut();
        inner.nodes.push(Some(node));
        inner.nodes.len() - 1
    }

    /// Runs the backward sweep from `output` seeded with `seed` (same shape as the
    /// output) and returns the cotangent of each of `wrt` (zeros where unreached).
    /// A tape supports one backward sweep: nodes are freed as the sweep passes them.
    pub fn backward(&self, output: &Var<V>, seed: V, wrt: &[&Var<V>]) -> Result<Vec<V>> {
        self.backward_within(output, seed, wrt, None)
            .map(|(grads, _)| grads)
    }

    /// [`backward`](Self::backward), also returning the most bytes of cotangents alive
    /// at once during the sweep. With `limit`, the sweep stops before the tape's bytes
    /// (as at its start) plus the cotangents alive would pass `limit`, with
    /// [`Error::MemoryBudget`] (its `mode` and `step` for the caller to fill in).
    pub(crate) fn backward_within(
        &self,
        output: &Var<V>,
        seed: V,
        wrt: &[&Var<V>],
        limit: Option<usize>,
    ) -> Result<(Vec<V>, usize)> {
        if output.shape() != seed.shape() {
            return Err(Error::Shape {
                op: "backward seed",
                lhs: output.shape(),
                rhs: seed.shape(),
            });
        }
        let zeros = |w: &Var<V>| w.value.zeros_like();
        let Some((otape, oid)) = &output.node else {
            return Ok((wrt.iter().map(|w| zeros(w)).collect(), 0));
        };
        for w in wrt.iter().chain([&output]) {
            if let Some((t, _)) = &w.node {
                if !Rc::ptr_eq(&t.0, &self.0) {
                    return Err(Error::Usage(
                        "backward: variable belongs to another tape".into(),
                    ));
                }
            }
        }
        if !Rc::ptr_eq(&otape.0, &self.0) {
            return Err(Error::Usage(
                "backward: output belongs to another tape".into(),
            ));
        }
        let held = match limit {
            Some(_) => self.held_bytes(),
            None => 0,
        };
        let mut nodes = {
            let mut inner = self.0.borrow_mut();
            if inner.consumed {
                return Err(Error::Usage(
                    "backward: this tape was already swept once".into(),
                ));
            }
            inner.consumed = true;
            std::mem::take(&mut inner.nodes)
        };
        let size = |v: &V| {
            let mut n = 0;
            v.visit_buffers(&mut |_, b| n += b);
            n
        };
        let mut alive = size(&seed);
        let mut peak = alive;
        let mut cot: Vec<Option<V>> = (0..nodes.len()).map(|_| None).collect();
        cot[*oid] = Some(seed);
        // Recorded (non-leaf) variables in `wrt` keep their cotangent past the sweep.
        let keep: HashSet<usize> = wrt
            .iter()
            .filter_map(|w| w.node.as_ref().map(|(_, id)| *id))
            .collect();
        for i in (0..=*oid).rev() {
            let Some(node) = nodes[i].take() else {
                continue;
            };
            let g = if keep.contains(&i) {
                cot[i].clone()
            } else {
                cot[i].take().inspect(|g| alive -= size(g))
            };
            let Some(g) = g else { continue };
            let grads = (node.vjp)(&node.ctx, &g);
            drop(node.ctx);
            // The node's cotangents are alive beside the accumulated ones, and each sum
            // is a new buffer beside its two terms (the rule's own temporaries are
            // about as large): counted twice.
            let fresh: usize = grads.iter().flatten().map(size).sum();
            peak = peak.max(alive + 2 * fresh);
            for (p, gp) in node.parents.iter().zip(grads) {
                if let (Some(p), Some(gp)) = (p, gp) {
                    let acc = match cot[*p].take() {
                        Some(acc) => {
                            alive -= size(&acc);
                            acc.accumulate(&gp)
                        }
                        None => gp,
                    };
                    alive += size(&acc);
                    cot[*p] = Some(acc);
                }
            }
            peak = peak.max(alive);
            if let Some(limit) = limit {
                if held + peak > limit {
                    return Err(Error::MemoryBudget {
                        budget: limit,
                        in_use: held + peak,
                        mode: crate::meta::Mode::Unrolled,
                        step: 0,
                    });
                }
            }
        }
        let grads = wrt
            .iter()
            .map(|w| match &w.node {
                Some((_, id)) => cot[*id].clone().unwrap_or_else(|| zeros(w)),
                None => zeros(w),
            })
            .collect();
        Ok((grads, peak))
    }
}

impl<V: Value> Var<V> {
    /// The value held.
    pub fn value(&self) -> &V {
        &self.value
    }
    /// Consumes the handle, returning the value.
    pub fn into_value(self) -> V {
        self.value
    }
    /// A constant (recorded on no tape).
    pub fn constant_of(value: V) -> Self {
        Var { value, node: None }
    }
    /// True when this variable is recorded on a tape.
    pub fn is_tracked(&self) -> bool {
        self.node.is_some()
    }
}

impl<V: Value> Value for Var<V> {
    type F = V::F;

    fn shape(&self) -> Vec<usize> {
        self.value.shape()
    }

    fn primal(&self) -> Tensor<V::F> {
        self.value.primal()
    }

    fn constant(t: Tensor<V::F>) -> Self {
        Var::constant_of(V::constant(t))
    }

    fn apply<O: Op<V::F>>(op: O, xs: &[&Self]) -> Self {
        let values: Vec<&V> = xs.iter().map(|x| &x.value).collect();
        let y = V::apply(op.clone(), &values);
        let Some(tape) = xs
            .iter()
            .find_map(|x| x.node.as_ref().map(|(t, _)| t.clone()))
        else {
            return Var::constant_of(y);
        };
        let parents: Vec<Option<usize>> = xs
            .iter()
            .map(|x| {
                x.node.as_ref().map(|(t, id)| {
                    assert!(
                        Rc::ptr_eq(&t.0, &tape.0),
                        "{}: operands recorded on two different tapes",
                        op.name()
                    );
                    *id
                })
            })
            .collect();
        let saves = op.saves();
        let ctx = Ctx {
            xs: values
                .iter()
                .map(|&v| saves.inputs.then(|| v.clone()))
                .collect(),
            out_shape: y.shape(),
            y: saves.output.then(|| y.clone()),
            shapes: values.iter().map(|v| v.shape()).collect(),
            needs: parents.iter().map(Option::is_some).collect(),
            tangent_only: tape.tangent_only(&parents),
        };
        let id = tape.push(Node {
            parents,
            ctx,
            vjp: Box::new(move |c, dy| op.vjp(c, dy)),
        });
        Var {
            value: y,
            node: Some((tape, id)),
        }
    }

    const RECORDED: bool = true;

    fn visit_buffers(&self, f: &mut dyn FnMut(usize, usize)) {
        self.value.visit_buffers(f);
    }

    /// Records one rematerialised node when the tape asks for it and its values are not
    /// themselves recorded (recomputing on an outer tape would save nothing).
    fn checkpoint<B: Block<V::F>>(block: &B, xs: &[&Self]) -> Self {
        let tape = xs
            .iter()
            .find_map(|x| x.node.as_ref().map(|(t, _)| t.clone()));
        match tape {
            Some(t) if !V::RECORDED && t.checkpointing() => t.record_block(block, xs),
            _ => block.apply(xs),
        }
    }
}

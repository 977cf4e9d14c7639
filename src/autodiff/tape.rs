//! Reverse mode: a `Tape<V>` records ops on values of any algebra `V`; `Var<V>` is a
//! handle into it. Each recorded VJP rule runs with `V`'s own ops, so when `V` is itself
//! a dual or a variable of an outer tape, the backward pass is differentiable.

use super::checkpoint::{Block, Remat};
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
}

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
    /// An empty tape.
    pub fn new() -> Self {
        Tape(Rc::new(RefCell::new(Inner {
            nodes: Vec::new(),
            consumed: false,
        })))
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

    /// Number of recorded nodes (leaves included).
    pub fn len(&self) -> usize {
        self.0.borrow().nodes.len()
    }

    /// True when nothing is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of distinct buffers the tape keeps alive for its VJP rules.
    pub fn bytes(&self) -> usize {
        let inner = self.0.borrow();
        let mut seen = HashSet::new();
        let mut total = 0;
        let mut visit = |addr: usize, n: usize| {
            if seen.insert(addr) {
                total += n;
            }
        };
        for node in inner.nodes.iter().flatten() {
            for x in node.ctx.xs.iter().flatten() {
                x.visit_buffers(&mut visit);
            }
            if let Some(y) = &node.ctx.y {
                y.visit_buffers(&mut visit);
            }
        }
        total
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
        if output.shape() != seed.shape() {
            return Err(Error::Shape {
                op: "backward seed",
                lhs: output.shape(),
                rhs: seed.shape(),
            });
        }
        let zeros = |w: &Var<V>| w.value.zeros_like();
        let Some((otape, oid)) = &output.node else {
            return Ok(wrt.iter().map(|w| zeros(w)).collect());
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
        let mut cot: Vec<Option<V>> = (0..nodes.len()).map(|_| None).collect();
        cot[*oid] = Some(seed);
        for i in (0..=*oid).rev() {
            let Some(node) = nodes[i].take() else {
                continue;
            };
            let Some(g) = cot[i].take() else { continue };
            let grads = (node.vjp)(&node.ctx, &g);
            drop(node.ctx);
            for (p, gp) in node.parents.iter().zip(grads) {
                if let (Some(p), Some(gp)) = (p, gp) {
                    cot[*p] = Some(match cot[*p].take() {
                        Some(acc) => acc.accumulate(&gp),
                        None => gp,
                    });
                }
            }
        }
        Ok(wrt
            .iter()
            .map(|w| match &w.node {
                Some((_, id)) => cot[*id].clone().unwrap_or_else(|| zeros(w)),
                None => zeros(w),
            })
            .collect())
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

    fn checkpoint<B: Block<V::F>>(block: &B, xs: &[&Self]) -> Self {
        if V::RECORDED {
            block.apply(xs)
        } else {
            Self::apply(Remat(block.clone()), xs)
        }
    }
}

//! Forward mode: `Dual<V>` carries a primal and an optional tangent, both of type `V`.

use super::tensor::Tensor;
use super::value::{Op, Value};

/// A dual number over any algebra `V`: `primal + eps * tangent`, stored as a struct of
/// arrays so a dual matmul is ordinary matmuls on `V`. A missing tangent (`None`) is an
/// exact zero and costs nothing.
#[derive(Clone, Debug)]
pub struct Dual<V: Value> {
    /// The value.
    pub primal: V,
    /// Its directional derivative, `None` for zero.
    pub tangent: Option<V>,
}

impl<V: Value> Dual<V> {
    /// A dual with the given tangent.
    pub fn new(primal: V, tangent: V) -> Self {
        Dual {
            primal,
            tangent: Some(tangent),
        }
    }
    /// A dual with zero tangent.
    pub fn constant_of(primal: V) -> Self {
        Dual {
            primal,
            tangent: None,
        }
    }
    /// The tangent, materialising zeros when it is absent.
    pub fn tangent_or_zeros(&self) -> V {
        self.tangent
            .clone()
            .unwrap_or_else(|| self.primal.zeros_like())
    }
}

impl<V: Value> Value for Dual<V> {
    type F = V::F;

    fn shape(&self) -> Vec<usize> {
        self.primal.shape()
    }

    fn primal(&self) -> Tensor<V::F> {
        self.primal.primal()
    }

    fn constant(t: Tensor<V::F>) -> Self {
        Dual::constant_of(V::constant(t))
    }

    fn apply<O: Op<V::F>>(op: O, xs: &[&Self]) -> Self {
        let (primals, dxs) = parts(xs);
        if dxs.iter().all(Option::is_none) {
            return Dual::constant_of(V::apply(op, &primals));
        }
        let (y, t) = V::apply_jvp(op, &primals, &dxs);
        Dual::new(y, t)
    }

    /// The tangent alone, with zeros as the primal (which will not be read).
    fn apply_for_tangent<O: Op<V::F>>(op: O, xs: &[&Self]) -> Self {
        let (primals, dxs) = parts(xs);
        if dxs.iter().all(Option::is_none) {
            return Dual::constant_of(V::apply(op, &primals));
        }
        let t = V::apply_jvp_tangent(op, &primals, &dxs);
        Dual::new(t.zeros_like(), t)
    }

    /// In place on both parts (through `V::accumulate`), an absent tangent being zero.
    fn accumulate(self, other: &Self) -> Self {
        if self.primal.shape() != other.primal.shape() {
            return self.add(other);
        }
        let tangent = match (self.tangent, &other.tangent) {
            (Some(a), Some(b)) => Some(a.accumulate(b)),
            (a, None) => a,
            (None, Some(b)) => Some(b.clone()),
        };
        Dual {
            primal: self.primal.accumulate(&other.primal),
            tangent,
        }
    }

    const RECORDED: bool = V::RECORDED;

    fn visit_buffers(&self, f: &mut dyn FnMut(usize, usize)) {
        self.primal.visit_buffers(f);
        if let Some(t) = &self.tangent {
            t.visit_buffers(f);
        }
    }
}

/// The primal parts of `xs` and their tangents.
fn parts<'a, V: Value>(xs: &[&'a Dual<V>]) -> (Vec<&'a V>, Vec<Option<&'a V>>) {
    let primals = xs.iter().map(|x| &x.primal).collect();
    let tangents = xs.iter().map(|x| x.tangent.as_ref()).collect();
    (primals, tangents)
}

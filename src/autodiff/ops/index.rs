//! Integer indexing (embedding lookup, picking a class per row) and masking. Each
//! indexing op is paired with its transpose, which is its VJP.

use super::super::float::Float;
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::binary::broadcast_shape;
use super::shape_panic;
use crate::error::{Error, Result};
use ndarray::{ArcArray, ArrayD, IxDyn, Zip};
use std::sync::Arc;

/// An n-d array of integer indices (tokens, classes, rows), cheap to clone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Indices {
    shape: Vec<usize>,
    data: Arc<Vec<usize>>,
}

impl Indices {
    /// Indices with a shape and row-major data.
    pub fn new(shape: &[usize], data: Vec<usize>) -> Result<Self> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::Shape {
                op: "Indices::new",
                lhs: shape.to_vec(),
                rhs: vec![data.len()],
            });
        }
        Ok(Indices {
            shape: shape.to_vec(),
            data: Arc::new(data),
        })
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    /// Row-major data.
    pub fn data(&self) -> &[usize] {
        &self.data
    }
    /// The rows `range` (along axis 0), e.g. some sequences of a `[batch, len]` batch.
    pub fn rows(&self, range: std::ops::Range<usize>) -> Result<Self> {
        let n = self.shape.first().copied().unwrap_or(0);
        if self.shape.is_empty() || range.start > range.end || range.end > n {
            return Err(Error::Index {
                op: "Indices::rows",
                index: range.end.max(range.start),
                size: n,
            });
        }
        let row: usize = self.shape[1..].iter().product();
        let mut shape = self.shape.clone();
        shape[0] = range.len();
        Ok(Indices {
            shape,
            data: Arc::new(self.data[range.start * row..range.end * row].to_vec()),
        })
    }
    pub(crate) fn check(&self, op: &'static str, size: usize) -> Result<()> {
        match self.data.iter().find(|&&i| i >= size) {
            Some(&index) => Err(Error::Index { op, index, size }),
            None => Ok(()),
        }
    }
}

/// A boolean mask, broadcast against the tensor it is applied to.
#[derive(Clone, Debug, PartialEq)]
pub struct Mask(ArcArray<bool, IxDyn>);

impl Mask {
    /// A mask with a shape and row-major data.
    pub fn new(shape: &[usize], data: Vec<bool>) -> Result<Self> {
        ArrayD::from_shape_vec(IxDyn(shape), data)
            .map(|a| Mask(a.into_shared()))
            .map_err(|_| Error::Shape {
                op: "Mask::new",
                lhs: shape.to_vec(),
                rhs: vec![],
            })
    }
    /// The `[n, n]` causal mask: true where key position `j` is after query position `i`.
    pub fn causal(n: usize) -> Self {
        // Row by row (a dynamic-rank `from_shape_fn` cost 1% of a meta-gradient).
        let mut m = vec![false; n * n];
        for (i, row) in m.chunks_exact_mut(n.max(1)).enumerate() {
            row[i + 1..].fill(true);
        }
        Mask(
            ArrayD::from_shape_vec(IxDyn(&[n, n]), m)
                .expect("n * n elements")
                .into_shared(),
        )
    }
    /// The elementwise negation.
    pub fn not(&self) -> Self {
        Mask(self.0.map(|&b| !b).into_shared())
    }
    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.0.shape()
    }
    pub(crate) fn array(&self) -> &ArcArray<bool, IxDyn> {
        &self.0
    }
}

/// Rows of a `[rows, d]` table: output `idx.shape() + [d]`. VJP: [`ScatterRows`].
#[derive(Clone, Debug)]
pub struct GatherRows {
    idx: Indices,
    rows: usize,
}

impl GatherRows {
    /// Checks the table is 2-D and every index is a valid row.
    pub fn new(idx: &Indices, table: &[usize]) -> Result<Self> {
        if table.len() != 2 {
            return Err(Error::Shape {
                op: "gather_rows",
                lhs: table.to_vec(),
                rhs: idx.shape.clone(),
            });
        }
        idx.check("gather_rows", table[0])?;
        Ok(GatherRows {
            idx: idx.clone(),
            rows: table[0],
        })
    }
}

impl<F: Float> Op<F> for GatherRows {
    fn name(&self) -> &'static str {
        "gather_rows"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let t = xs[0];
        if t.shape().len() != 2 || t.shape()[0] != self.rows {
            shape_panic("gather_rows", t.shape(), &[self.rows]);
        }
        let d = t.shape()[1];
        let mut shape = self.idx.shape.clone();
        shape.push(d);
        // Row by row (ndarray's `select` grows its output one row at a time), each
        // copied by a plain loop: rows are short, and a `memcpy` call each cost more
        // than the copy.
        let table = t.array().as_standard_layout();
        let table = table.as_slice().expect("standard layout");
        let idx = &self.idx.data;
        let out = kernels::par_rows_overwrite(
            idx.len() * d,
            d.max(1),
            #[inline(always)]
            |first, rows| {
                for (&i, row) in idx[first..].iter().zip(rows.chunks_exact_mut(d)) {
                    for (o, &v) in row.iter_mut().zip(&table[i * d..(i + 1) * d]) {
                        *o = v;
                    }
                }
            },
        );
        Tensor::from_vec(&shape, out).expect("one row per index")
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        V::apply(self.clone(), &[d[0].expect("one tangent")])
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(V::apply(
            ScatterRows {
                idx: self.idx.clone(),
                rows: self.rows,
            },
            &[dy],
        ))]
    }
}

/// Adds slices `[idx.shape().., d]` into rows of a zero `[rows, d]` table: the transpose
/// of [`GatherRows`].
#[derive(Clone, Debug)]
pub struct ScatterRows {
    idx: Indices,
    rows: usize,
}

impl<F: Float> Op<F> for ScatterRows {
    fn name(&self) -> &'static str {
        "scatter_rows"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let s = xs[0].shape();
        if s.len() != self.idx.shape.len() + 1 || s[..s.len() - 1] != self.idx.shape[..] {
            shape_panic("scatter_rows", s, &self.idx.shape);
        }
        let d = s[s.len() - 1];
        let src = xs[0].array().as_standard_layout();
        let src = src
            .view()
            .into_shape_with_order((self.idx.data.len(), d))
            .expect("contiguous");
        let mut out =
            ndarray::Array2::from_shape_vec((self.rows, d), kernels::zeros(self.rows * d))
                .expect("rows * d elements");
        for (&i, row) in self.idx.data.iter().zip(src.outer_iter()) {
            let mut o = out.row_mut(i);
            o += &row;
        }
        Tensor::from_array(out)
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        V::apply(self.clone(), &[d[0].expect("one tangent")])
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(V::apply(
            GatherRows {
                idx: self.idx.clone(),
                rows: self.rows,
            },
            &[dy],
        ))]
    }
}

/// `x[.., idx[..]]`: one element of the last axis per leading position. VJP: [`PlaceLast`].
#[derive(Clone, Debug)]
pub struct PickLast {
    idx: Indices,
    classes: usize,
}

impl PickLast {
    /// Checks the leading shape matches `idx` and every index is a valid class.
    pub fn new(idx: &Indices, x: &[usize]) -> Result<Self> {
        if x.is_empty() || x[..x.len() - 1] != idx.shape[..] {
            return Err(Error::Shape {
                op: "pick_last",
                lhs: x.to_vec(),
                rhs: idx.shape.clone(),
            });
        }
        let classes = x[x.len() - 1];
        idx.check("pick_last", classes)?;
        Ok(PickLast {
            idx: idx.clone(),
            classes,
        })
    }
}

impl<F: Float> Op<F> for PickLast {
    fn name(&self) -> &'static str {
        "pick_last"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let x = xs[0].array().as_standard_layout();
        let x2 = x
            .view()
            .into_shape_with_order((self.idx.data.len(), self.classes))
            .expect("checked in new");
        let v: Vec<F> = self
            .idx
            .data
            .iter()
            .zip(x2.outer_iter())
            .map(|(&i, r)| r[i])
            .collect();
        Tensor::from_vec(&self.idx.shape, v).expect("same size")
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        V::apply(self.clone(), &[d[0].expect("one tangent")])
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(V::apply(
            PlaceLast {
                idx: self.idx.clone(),
                classes: self.classes,
            },
            &[dy],
        ))]
    }
}

/// Places `v[..]` at `[.., idx[..]]` of a zero `[.., classes]` array: the transpose of
/// [`PickLast`].
#[derive(Clone, Debug)]
pub struct PlaceLast {
    idx: Indices,
    classes: usize,
}

impl<F: Float> Op<F> for PlaceLast {
    fn name(&self) -> &'static str {
        "place_last"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        if xs[0].shape() != &self.idx.shape[..] {
            shape_panic("place_last", xs[0].shape(), &self.idx.shape);
        }
        let (rows, classes) = (self.idx.data.len(), self.classes);
        let mut out =
            ndarray::Array2::from_shape_vec((rows, classes), kernels::zeros(rows * classes))
                .expect("rows * classes elements");
        for ((&i, &v), mut row) in self
            .idx
            .data
            .iter()
            .zip(xs[0].array().iter())
            .zip(out.outer_iter_mut())
        {
            row[i] = v;
        }
        let mut shape = self.idx.shape.clone();
        shape.push(self.classes);
        Tensor::from_array(out.into_shape_with_order(IxDyn(&shape)).expect("same size"))
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        V::apply(self.clone(), &[d[0].expect("one tangent")])
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(V::apply(
            PickLast {
                idx: self.idx.clone(),
                classes: self.classes,
            },
            &[dy],
        ))]
    }
}

/// Sets elements where the mask is true to a constant. Linear in the input with the
/// value's contribution constant, so JVP and VJP both zero the masked positions.
#[derive(Clone, Debug)]
pub struct MaskedFill<F> {
    mask: Mask,
    value: F,
}

impl<F: Float> MaskedFill<F> {
    /// Panics (naming both shapes) when the mask does not broadcast to `shape`.
    pub fn new(mask: &Mask, value: F, shape: &[usize]) -> Self {
        if broadcast_shape("masked_fill", mask.shape(), shape) != shape {
            shape_panic("masked_fill", mask.shape(), shape);
        }
        MaskedFill {
            mask: mask.clone(),
            value,
        }
    }
}

impl<F: Float> Op<F> for MaskedFill<F> {
    fn name(&self) -> &'static str {
        "masked_fill"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let mut out = xs[0].to_owned_array();
        let m = self
            .mask
            .0
            .broadcast(out.raw_dim())
            .unwrap_or_else(|| shape_panic("masked_fill", self.mask.shape(), xs[0].shape()));
        Zip::from(&mut out).and(&m).for_each(|o, &b| {
            if b {
                *o = self.value;
            }
        });
        Tensor::from_array(out)
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent")
            .masked_fill(&self.mask, F::zero())
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.masked_fill(&self.mask, F::zero()))]
    }
}

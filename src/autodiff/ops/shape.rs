//! Shape ops: reshape, permute, slice, concat. All linear: JVP applies the op to the
//! tangent, VJP applies its transpose to the cotangent.

use super::super::float::Float;
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::shape_panic;
use ndarray::{Axis, Slice as NdSlice};

/// Reshape to a shape with the same number of elements.
#[derive(Clone, Debug)]
pub struct Reshape(pub Vec<usize>);

impl<F: Float> Op<F> for Reshape {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        if xs[0].len() != self.0.iter().product::<usize>() {
            shape_panic("reshape", xs[0].shape(), &self.0);
        }
        xs[0].reshaped(&self.0)
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent").reshape(&self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.reshape(ctx.shape(0)))]
    }
}

/// Axis permutation; the output is stored contiguously.
#[derive(Clone, Debug)]
pub struct Permute(pub Vec<usize>);

impl<F: Float> Op<F> for Permute {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let n = xs[0].shape().len();
        let mut seen = vec![false; n];
        if self.0.len() != n
            || self
                .0
                .iter()
                .any(|&p| p >= n || std::mem::replace(&mut seen[p], true))
        {
            shape_panic("permute", xs[0].shape(), &self.0);
        }
        let x = xs[0].array().as_standard_layout();
        let out = permuted(x.as_slice().expect("standard layout"), x.shape(), &self.0);
        let shape: Vec<usize> = self.0.iter().map(|&p| x.shape()[p]).collect();
        Tensor::from_vec(&shape, out).expect("same size")
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent").permute(&self.0)
    }
    fn vjp<V: Value<F = F>>(&self, _: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let mut inv = vec![0; self.0.len()];
        for (i, &p) in self.0.iter().enumerate() {
            inv[p] = i;
        }
        vec![Some(dy.permute(&inv))]
    }
}

/// The elements of a standard-layout array of `shape` with its axes reordered by `perm`,
/// in standard layout: one run along the output's last axis at a time (a slice copy
/// when that axis is also the input's last; ndarray's copy of a permuted dynamic-rank
/// view steps element by element), the runs split over threads when there are many
/// ([`kernels::par_rows_overwrite`]).
fn permuted<F: Float>(src: &[F], shape: &[usize], perm: &[usize]) -> Vec<F> {
    let n = shape.len();
    if n == 0 || src.is_empty() {
        return src.to_vec();
    }
    let mut stride = vec![1; n];
    for i in (0..n - 1).rev() {
        stride[i] = stride[i + 1] * shape[i + 1];
    }
    // Extent and source stride of each output axis.
    let ext: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let step: Vec<usize> = perm.iter().map(|&p| stride[p]).collect();
    let (len, inner) = (ext[n - 1], step[n - 1]);
    kernels::par_rows_overwrite(src.len(), len, |first, rows| {
        // The source offset of output run `first`, from its index over the outer axes.
        let (mut idx, mut at, mut r) = (vec![0; n - 1], 0, first);
        for ax in (0..n - 1).rev() {
            idx[ax] = r % ext[ax];
            r /= ext[ax];
            at += idx[ax] * step[ax];
        }
        for run in rows.chunks_exact_mut(len) {
            if inner == 1 {
                run.copy_from_slice(&src[at..at + len]);
            } else {
                for (j, o) in run.iter_mut().enumerate() {
                    *o = src[at + j * inner];
                }
            }
            // Advance the outer axes like an odometer.
            for ax in (0..n - 1).rev() {
                idx[ax] += 1;
                at += step[ax];
                if idx[ax] < ext[ax] {
                    break;
                }
                at -= idx[ax] * step[ax];
                idx[ax] = 0;
            }
        }
    })
}

/// `x[.., start..end, ..]` along `axis`.
#[derive(Clone, Debug)]
pub struct Slice {
    /// The axis.
    pub axis: usize,
    /// First index kept.
    pub start: usize,
    /// One past the last index kept.
    pub end: usize,
}

impl<F: Float> Op<F> for Slice {
    fn name(&self) -> &'static str {
        "slice"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let s = xs[0].shape();
        if self.axis >= s.len() || self.start > self.end || self.end > s[self.axis] {
            shape_panic("slice", s, &[self.axis, self.start, self.end]);
        }
        let v = xs[0]
            .view()
            .slice_axis(Axis(self.axis), NdSlice::from(self.start..self.end))
            .to_owned();
        Tensor::from_array(v)
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent")
            .slice(self.axis, self.start, self.end)
    }
    /// The transpose pads `dy` with zeros back to the input's extent.
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let full = ctx.shape(0);
        let zeros = |len: usize| {
            let mut s = full.to_vec();
            s[self.axis] = len;
            V::constant(Tensor::filled(&s, F::zero()))
        };
        let (before, after) = (zeros(self.start), zeros(full[self.axis] - self.end));
        let mut parts = Vec::with_capacity(3);
        if self.start > 0 {
            parts.push(&before);
        }
        parts.push(dy);
        if self.end < full[self.axis] {
            parts.push(&after);
        }
        vec![Some(if parts.len() == 1 {
            dy.clone()
        } else {
            V::concat(&parts, self.axis)
        })]
    }
}

/// Concatenation along an axis.
#[derive(Clone, Debug)]
pub struct Concat(pub usize);

impl<F: Float> Op<F> for Concat {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let first = xs[0].shape();
        for x in &xs[1..] {
            let s = x.shape();
            let ok = s.len() == first.len()
                && self.0 < s.len()
                && s.iter()
                    .zip(first)
                    .enumerate()
                    .all(|(i, (a, b))| i == self.0 || a == b);
            if !ok {
                shape_panic("concat", first, s);
            }
        }
        let views: Vec<_> = xs.iter().map(|x| x.view()).collect();
        Tensor::from_array(ndarray::concatenate(Axis(self.0), &views).expect("checked shapes"))
    }
    fn jvp<V: Value<F = F>>(&self, ctx: &Ctx<V>, d: &[Option<&V>]) -> V {
        let filled: Vec<V> = d
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.cloned()
                    .unwrap_or_else(|| V::constant(Tensor::filled(ctx.shape(i), F::zero())))
            })
            .collect();
        V::concat(&filled.iter().collect::<Vec<_>>(), self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        let mut start = 0;
        (0..ctx.shapes.len())
            .map(|i| {
                let len = ctx.shape(i)[self.0];
                start += len;
                ctx.needs(i).then(|| dy.slice(self.0, start - len, start))
            })
            .collect()
    }
}

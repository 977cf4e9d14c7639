//! `Tensor`: the concrete algebra, an n-d array of `f32`/`f64` with shared storage.

use super::float::Float;
use super::value::{Op, Value};
use crate::error::{Error, Result};
use crate::rng::Rng;
use ndarray::{ArcArray, ArrayD, IxDyn};

/// A concrete n-dimensional array. Cloning is cheap (the buffer is reference counted),
/// so a tape can keep a value alive without copying it.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor<F: Float>(ArcArray<F, IxDyn>);

impl<F: Float> Tensor<F> {
    /// Wraps an owned array.
    pub fn from_array<D: ndarray::Dimension>(a: ndarray::Array<F, D>) -> Self {
        Tensor(a.into_dyn().into_shared())
    }

    /// Builds a tensor from a shape and row-major data.
    ///
    /// ```
    /// use datarater::Tensor;
    /// let t = Tensor::<f64>::from_vec(&[2, 2], vec![1.0, 2.0, 3.0, 4.0]).unwrap();
    /// assert_eq!(t.shape(), &[2, 2]);
    /// assert!(Tensor::<f64>::from_vec(&[3], vec![1.0]).is_err());
    /// assert!(Tensor::<f64>::from_vec(&[0, 1 << 32, 1 << 32], vec![]).is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::Shape`] (shape first, then `[data.len()]`) if the element count differs
    /// or the shape is too large to index (ndarray needs the product of the non-zero axis
    /// lengths to fit in `isize`, even for an empty tensor such as `[0, 2^32, 2^32]`).
    pub fn from_vec(shape: &[usize], data: Vec<F>) -> Result<Self> {
        let len = data.len();
        let err = || Error::Shape {
            op: "from_vec",
            lhs: shape.to_vec(),
            rhs: vec![len],
        };
        let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(len) {
            return Err(err());
        }
        let a = ArrayD::from_shape_vec(IxDyn(shape), data).map_err(|_| err())?;
        Ok(Self::from_array(a))
    }

    /// A rank-0 tensor.
    pub fn scalar(x: F) -> Self {
        Self::from_array(ndarray::arr0(x))
    }

    /// All zeros.
    ///
    /// ```
    /// use datarater::Tensor;
    /// let t = Tensor::<f32>::zeros(&[2, 3])?;
    /// assert_eq!(t.to_vec(), vec![0.0; 6]);
    /// assert!(Tensor::<f32>::zeros(&[1 << 40, 1 << 40]).is_err());
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeExpected`] if a buffer of that shape could not exist (its byte size
    /// overflows `isize`); see [`Tensor::full`].
    pub fn zeros(shape: &[usize]) -> Result<Self> {
        Self::full_checked("Tensor::zeros", shape, F::zero())
    }

    /// All `x`.
    ///
    /// ```
    /// use datarater::Tensor;
    /// assert_eq!(Tensor::<f64>::full(&[2], 0.5)?.to_vec(), vec![0.5, 0.5]);
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::ShapeExpected`] if the element count, or the product of the non-zero
    /// axis lengths (what ndarray indexes with, even for an empty tensor), times the
    /// element size does not fit in `isize`.
    pub fn full(shape: &[usize], x: F) -> Result<Self> {
        Self::full_checked("Tensor::full", shape, x)
    }

    /// Independent standard normal draws (mean 0, standard deviation 1) from `rng`, in
    /// row-major order: the same seed gives the same tensor.
    ///
    /// ```
    /// use datarater::{Rng, Tensor};
    /// let w = Tensor::<f32>::randn(&[64, 32], &mut Rng::new(7))?;
    /// assert_eq!(w.shape(), &[64, 32]);
    /// assert_eq!(w, Tensor::randn(&[64, 32], &mut Rng::new(7))?); // reproducible
    /// let mean = w.to_vec().iter().sum::<f32>() / w.len() as f32;
    /// assert!(mean.abs() < 0.1);
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`Tensor::full`].
    pub fn randn(shape: &[usize], rng: &mut Rng) -> Result<Self> {
        Self::from_draws("Tensor::randn", shape, || rng.normal())
    }

    /// Independent draws uniform in `[lo, hi)` from `rng`, in row-major order (all `lo`
    /// when `lo == hi`).
    ///
    /// ```
    /// use datarater::{Rng, Tensor};
    /// let x = Tensor::<f64>::uniform(&[100], -1.0, 1.0, &mut Rng::new(0))?;
    /// assert!(x.to_vec().iter().all(|&v| (-1.0..1.0).contains(&v)));
    /// assert!(Tensor::<f64>::uniform(&[2], 1.0, 0.0, &mut Rng::new(0)).is_err());
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Config`] (`hi`) unless `lo` and `hi` are finite with `lo <= hi`; as
    /// [`Tensor::full`] for the shape.
    pub fn uniform(shape: &[usize], lo: F, hi: F, rng: &mut Rng) -> Result<Self> {
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return Err(Error::Config {
                field: "hi",
                reason: format!("Tensor::uniform needs finite bounds lo <= hi, got [{lo}, {hi})"),
            });
        }
        let (lo_f, width) = (lo.f64(), hi.f64() - lo.f64());
        // Redraw the rare value that rounds up to `hi` (in f64 or in `F`).
        Self::from_draws("Tensor::uniform", shape, || {
            loop {
                let y = lo_f + width * rng.uniform();
                if F::c(y) < hi || lo == hi {
                    return y;
                }
            }
        })
    }

    /// A tensor of `shape` filled by `draw`, one call per element in row-major order.
    pub(crate) fn from_draws(
        op: &'static str,
        shape: &[usize],
        mut draw: impl FnMut() -> f64,
    ) -> Result<Self> {
        let n = Self::checked_len(op, shape)?;
        let data = (0..n).map(|_| F::c(draw())).collect();
        Ok(Self::from_array(
            ArrayD::from_shape_vec(IxDyn(shape), data).expect("size checked"),
        ))
    }

    fn full_checked(op: &'static str, shape: &[usize], x: F) -> Result<Self> {
        Self::checked_len(op, shape)?;
        Ok(Self::filled(shape, x))
    }

    /// All `x`, for a shape known to be valid because an existing tensor has it.
    ///
    /// # Panics
    /// If the shape is too large (see [`Tensor::full`]); never for an existing
    /// tensor's shape.
    pub(crate) fn filled(shape: &[usize], x: F) -> Self {
        Self::from_array(ArrayD::from_elem(IxDyn(shape), x))
    }

    /// The element count of `shape`, if a buffer of `F` of that shape can exist:
    /// ndarray needs the product of the non-zero axis lengths to fit in `isize`, and
    /// the allocator the byte size.
    fn checked_len(op: &'static str, shape: &[usize]) -> Result<usize> {
        let bytes = shape
            .iter()
            .filter(|&&d| d != 0)
            .try_fold(std::mem::size_of::<F>(), |a, &d| a.checked_mul(d));
        match bytes {
            Some(b) if b <= isize::MAX as usize => Ok(shape.iter().product()),
            _ => Err(Error::ShapeExpected {
                op,
                shape: shape.to_vec(),
                expected: format!(
                    "a shape whose byte size ({} bytes per element) fits in isize",
                    std::mem::size_of::<F>()
                ),
            }),
        }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        self.0.shape()
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when the tensor has no elements.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The underlying array.
    pub fn array(&self) -> &ArcArray<F, IxDyn> {
        &self.0
    }

    /// A read-only view.
    pub fn view(&self) -> ndarray::ArrayViewD<'_, F> {
        self.0.view()
    }

    /// An owned copy of the data as a standard-layout array.
    pub fn to_owned_array(&self) -> ArrayD<F> {
        self.0.to_owned()
    }

    /// Elements in row-major order.
    pub fn to_vec(&self) -> Vec<F> {
        self.0.iter().copied().collect()
    }

    /// The single element of a rank-0 or one-element tensor.
    ///
    /// # Panics
    /// If the tensor has more than one element.
    pub fn item(&self) -> F {
        assert_eq!(
            self.len(),
            1,
            "item: tensor of shape {:?} is not a scalar",
            self.shape()
        );
        *self.0.iter().next().expect("one element")
    }

    /// True when every element is finite.
    pub fn is_finite(&self) -> bool {
        match self.0.as_slice_memory_order() {
            // A block at a time, without stopping inside one, so that the test vectorises.
            Some(s) => super::kernels::with_simd(
                #[inline(always)]
                || {
                    s.chunks(1024)
                        .all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()))
                },
            ),
            None => self.0.iter().all(|x| x.is_finite()),
        }
    }

    /// Sum of `a * b` over all elements (shapes must match).
    pub fn dot_all(&self, other: &Self) -> F {
        assert_eq!(self.shape(), other.shape(), "dot_all: shapes differ");
        self.0
            .iter()
            .zip(other.0.iter())
            .fold(F::zero(), |s, (&a, &b)| s + a * b)
    }

    /// Elementwise map into a new tensor.
    pub fn map(&self, f: impl Fn(F) -> F + Sync) -> Self {
        match self.0.as_slice() {
            Some(x) => {
                Tensor::from_vec(self.shape(), super::kernels::map(x, f)).expect("same size")
            }
            None => Tensor(self.0.map(|&x| f(x)).into_shared()),
        }
    }

    /// Converts the element type.
    pub fn cast<G: Float>(&self) -> Tensor<G> {
        Tensor(self.0.map(|&x| G::c(x.f64())).into_shared())
    }

    /// Bytes held by the buffer.
    pub fn nbytes(&self) -> usize {
        self.len() * std::mem::size_of::<F>()
    }

    // ---- checked helpers for preparing data -------------------------------------
    //
    // The differentiable shape ops (`Value::concat`, `Value::slice`,
    // `Value::gather_rows`) are model code: a bad shape there is a bug and panics. These
    // build plain tensors from user data, so bad input is a typed error.

    /// Concatenates plain tensors along `axis` (all other axes must agree): the checked
    /// form of [`Value::concat`] for data preparation.
    ///
    /// ```
    /// use datarater::Tensor;
    /// let a = Tensor::<f32>::from_vec(&[1, 2], vec![1.0, 2.0])?;
    /// let b = Tensor::<f32>::from_vec(&[2, 2], vec![3.0, 4.0, 5.0, 6.0])?;
    /// let c = Tensor::try_concat(&[&a, &b], 0)?;
    /// assert_eq!(c.shape(), &[3, 2]);
    /// assert_eq!(c.to_vec(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    /// assert!(Tensor::try_concat(&[&a, &b], 1).is_err()); // 1 row vs 2 rows
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Usage`] for no parts; [`Error::Index`] if `axis` is not an axis of the
    /// first part; [`Error::Shape`] (first part, offending part) if a part's rank or
    /// another axis differs.
    pub fn try_concat(parts: &[&Self], axis: usize) -> Result<Self> {
        const OP: &str = "Tensor::try_concat";
        let Some(first) = parts.first() else {
            return Err(Error::Usage(format!("{OP}: no tensors to concatenate")));
        };
        let rank = first.shape().len();
        if axis >= rank {
            return Err(Error::Index {
                op: OP,
                index: axis,
                size: rank,
            });
        }
        for p in parts {
            let agree = p.shape().len() == rank
                && (0..rank).all(|i| i == axis || p.shape()[i] == first.shape()[i]);
            if !agree {
                return Err(Error::Shape {
                    op: OP,
                    lhs: first.shape().to_vec(),
                    rhs: p.shape().to_vec(),
                });
            }
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(ndarray::Axis(axis), &views)
            .map(Self::from_array)
            .map_err(|e| Error::Usage(format!("{OP}: {e}")))
    }

    /// The rows `range` (along axis 0), e.g. a mini-batch of examples.
    ///
    /// ```
    /// use datarater::Tensor;
    /// let x = Tensor::<f64>::from_vec(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    /// assert_eq!(x.rows(1..3)?.to_vec(), vec![3.0, 4.0, 5.0, 6.0]);
    /// assert!(x.rows(2..4).is_err());
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Index`] (index `max(start, end)`, size the row count) if the range is
    /// reversed or runs past the last row, or the tensor is rank 0 (size 0).
    pub fn rows(&self, range: std::ops::Range<usize>) -> Result<Self> {
        let n = self.shape().first().copied().unwrap_or(0);
        if self.shape().is_empty() || range.start > range.end || range.end > n {
            return Err(Error::Index {
                op: "Tensor::rows",
                index: range.end.max(range.start),
                size: n,
            });
        }
        let r = self
            .0
            .slice_axis(ndarray::Axis(0), (range.start..range.end).into());
        Ok(Self::from_array(r.to_owned()))
    }

    /// The rows at `index` (along axis 0), in that order and with repeats allowed: a
    /// tensor of shape `[index.len(), ..]`, e.g. a shuffled or resampled batch.
    ///
    /// ```
    /// use datarater::Tensor;
    /// let x = Tensor::<f64>::from_vec(&[3, 2], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
    /// let y = x.select_rows(&[2, 0, 2])?;
    /// assert_eq!(y.shape(), &[3, 2]);
    /// assert_eq!(y.to_vec(), vec![5.0, 6.0, 1.0, 2.0, 5.0, 6.0]);
    /// assert!(x.select_rows(&[3]).is_err());
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Index`] naming the first index that is not a row (for a rank-0
    /// tensor, which has no rows, always an error with size 0).
    pub fn select_rows(&self, index: &[usize]) -> Result<Self> {
        let n = self.shape().first().copied().unwrap_or(0);
        let bad = match self.shape() {
            [] => Some(index.first().copied().unwrap_or(0)),
            _ => index.iter().copied().find(|&i| i >= n),
        };
        if let Some(index) = bad {
            return Err(Error::Index {
                op: "Tensor::select_rows",
                index,
                size: n,
            });
        }
        Ok(Self::from_array(self.0.select(ndarray::Axis(0), index)))
    }

    /// One-hot rows: shape `[indices.len(), classes]`, with a one at `(i, indices[i])`
    /// and zeros elsewhere (e.g. class labels as regression targets or features).
    ///
    /// ```
    /// use datarater::Tensor;
    /// let t = Tensor::<f32>::one_hot(&[2, 0], 3)?;
    /// assert_eq!(t.shape(), &[2, 3]);
    /// assert_eq!(t.to_vec(), vec![0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
    /// assert!(Tensor::<f32>::one_hot(&[3], 3).is_err());
    /// # Ok::<(), datarater::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Index`] naming the first index `>= classes`.
    pub fn one_hot(indices: &[usize], classes: usize) -> Result<Self> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= classes) {
            return Err(Error::Index {
                op: "Tensor::one_hot",
                index: bad,
                size: classes,
            });
        }
        let shape = [indices.len(), classes];
        let mut a = ArrayD::zeros(IxDyn(&shape));
        for (row, &c) in indices.iter().enumerate() {
            a[[row, c]] = F::one();
        }
        Ok(Self::from_array(a))
    }

    /// A new tensor of `shape` whose every element `fill` writes, through a view of its
    /// buffer in standard layout: a pooled buffer when a pass has one of that length
    /// free ([`pool`](super::pool)), so its values before `fill` are unspecified.
    pub(crate) fn overwritten(
        shape: &[usize],
        fill: impl FnOnce(ndarray::ArrayViewMutD<'_, F>),
    ) -> Self {
        let len = shape.iter().product();
        let mut data = super::pool::take(len).unwrap_or_else(|| {
            let v = vec![F::zero(); len];
            super::pool::adopt(&v);
            v
        });
        fill(ndarray::ArrayViewMutD::from_shape(IxDyn(shape), &mut data).expect("len elements"));
        Self::from_vec(shape, data).expect("len elements")
    }

    /// Reshapes without copying when the data is contiguous.
    pub(crate) fn reshaped(&self, shape: &[usize]) -> Self {
        let a = if self.0.is_standard_layout() {
            self.0.clone()
        } else {
            self.0.as_standard_layout().into_owned().into_shared()
        };
        Tensor(
            a.into_shape_with_order(IxDyn(shape))
                .expect("reshape: element count checked by caller"),
        )
    }
}

/// Counts a primitive's written elements as "other" work; matrix products count their
/// FLOPs themselves, inside the gemm routine.
fn count_other<F: Float, O: Op<F>>(op: &O, elements: usize) {
    if !super::flops::GEMM_OPS.contains(&op.name()) {
        super::flops::add_other(elements);
    }
}

/// The last owner of a large buffer hands it to the pass's buffer pool (see
/// [`alloc::reuse_buffers`](crate::alloc::reuse_buffers)) instead of freeing it, when a
/// pass is running.
impl<F: Float> Drop for Tensor<F> {
    fn drop(&mut self) {
        if super::pool::wants::<F>(self.0.len()) {
            let a = std::mem::replace(&mut self.0, ArcArray::from_vec(Vec::new()).into_dyn());
            if let Ok(a) = a.try_into_owned_nocopy() {
                super::pool::give(a.into_raw_vec_and_offset().0);
            }
        }
    }
}

impl<F: Float> From<ArrayD<F>> for Tensor<F> {
    fn from(a: ArrayD<F>) -> Self {
        Self::from_array(a)
    }
}

impl<F: Float> Value for Tensor<F> {
    type F = F;

    fn shape(&self) -> Vec<usize> {
        self.0.shape().to_vec()
    }

    fn primal(&self) -> Tensor<F> {
        self.clone()
    }

    fn constant(t: Tensor<F>) -> Self {
        t
    }

    fn apply<O: Op<F>>(op: O, xs: &[&Self]) -> Self {
        let y = op.forward(xs);
        count_other(&op, y.len());
        y
    }

    fn apply_jvp<O: Op<F>>(op: O, xs: &[&Self], dxs: &[Option<&Self>]) -> (Self, Self) {
        match op.forward_jvp(xs, dxs) {
            Some(fused) => {
                count_other(&op, fused.0.len() + fused.1.len());
                fused
            }
            None => super::value::apply_then_jvp(op, xs, dxs),
        }
    }

    fn apply_jvp_tangent<O: Op<F>>(op: O, xs: &[&Self], dxs: &[Option<&Self>]) -> Self {
        match op.forward_tangent(xs, dxs) {
            Some(t) => {
                count_other(&op, t.len());
                t
            }
            None => Self::apply_jvp(op, xs, dxs).1,
        }
    }

    fn accumulate(mut self, other: &Self) -> Self {
        if self.shape() == other.shape() {
            self.0 += &other.0;
            self
        } else {
            self.add(other)
        }
    }

    const RECORDED: bool = false;

    fn visit_buffers(&self, f: &mut dyn FnMut(usize, usize)) {
        f(self.0.as_ptr() as usize, self.nbytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A NaN or an infinity anywhere (in the first block, past it, in the tail) is
    /// found: in standard layout, transposed (the memory-order pass) and strided (the
    /// element-by-element one).
    #[test]
    fn is_finite_finds_any_non_finite_element() {
        use ndarray::s;
        let n = 3000;
        assert!(
            Tensor::<f32>::from_vec(&[3, 1000], vec![0.5; n])
                .unwrap()
                .is_finite()
        );
        for at in [0, 1022, 1024, 2500, n - 2] {
            for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
                let mut v = vec![0.5; n];
                v[at] = bad;
                let t = Tensor::from_vec(&[3, 1000], v).unwrap();
                let transposed = Tensor::from_array(t.array().t().to_owned());
                let strided = Tensor(t.array().clone().slice_move(s![.., ..;2]).into_dyn());
                assert!(!t.is_finite(), "{bad} at {at}");
                assert!(!transposed.is_finite(), "{bad} at {at}, transposed");
                assert!(!strided.is_finite(), "{bad} at {at}, strided");
            }
        }
    }
}

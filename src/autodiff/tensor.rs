//! `Tensor`: the concrete algebra, an n-d array of `f32`/`f64` with shared storage.

use super::float::Float;
use super::ops::linalg::MatMul;
use super::value::{Op, Value};
use crate::error::{Error, Result};
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
    /// ```
    pub fn from_vec(shape: &[usize], data: Vec<F>) -> Result<Self> {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(Error::Shape {
                op: "from_vec",
                lhs: shape.to_vec(),
                rhs: vec![data.len()],
            });
        }
        Ok(Self::from_array(
            ArrayD::from_shape_vec(IxDyn(shape), data).expect("checked length"),
        ))
    }

    /// A rank-0 tensor.
    pub fn scalar(x: F) -> Self {
        Self::from_array(ndarray::arr0(x))
    }

    /// All zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self::from_array(ArrayD::zeros(IxDyn(shape)))
    }

    /// All `x`.
    pub fn full(shape: &[usize], x: F) -> Self {
        Self::from_array(ArrayD::from_elem(IxDyn(shape), x))
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
        self.0.iter().all(|x| x.is_finite())
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
    pub fn map(&self, f: impl Fn(F) -> F) -> Self {
        Tensor(self.0.map(|&x| f(x)).into_shared())
    }

    /// Converts the element type.
    pub fn cast<G: Float>(&self) -> Tensor<G> {
        Tensor(self.0.map(|&x| G::c(x.f64())).into_shared())
    }

    /// Bytes held by the buffer.
    pub fn nbytes(&self) -> usize {
        self.len() * std::mem::size_of::<F>()
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
    if op.name() != MatMul::NAME {
        super::flops::add_other(elements);
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

    fn accumulate(self, other: &Self) -> Self {
        if self.shape() == other.shape() {
            let mut a = self.0;
            a += &other.0;
            Tensor(a)
        } else {
            self.add(other)
        }
    }

    const RECORDED: bool = false;

    fn visit_buffers(&self, f: &mut dyn FnMut(usize, usize)) {
        f(self.0.as_ptr() as usize, self.nbytes());
    }
}

//! The vector-data setting: batches of feature vectors with targets, and a small MLP
//! rater that scores each example from its features and target (so it can learn to
//! spot, for example, corrupted labels).

use crate::autodiff::{Float, Params, Tensor, Value};
use crate::error::{Error, Result};
use crate::meta::Rater;
use crate::nn::{Activation, Mlp};
use crate::rng::Rng;

/// `N` examples: inputs `x` `[N, d_in]` and targets `y` `[N, d_out]`.
#[derive(Clone, Debug, PartialEq)]
pub struct VectorBatch<F: Float> {
    /// Inputs.
    pub x: Tensor<F>,
    /// Targets.
    pub y: Tensor<F>,
}

impl<F: Float> VectorBatch<F> {
    /// Checks both are 2-D with the same number of rows.
    pub fn new(x: Tensor<F>, y: Tensor<F>) -> Result<Self> {
        if x.shape().len() != 2 || y.shape().len() != 2 || x.shape()[0] != y.shape()[0] {
            return Err(Error::Shape {
                op: "VectorBatch::new",
                lhs: x.shape().to_vec(),
                rhs: y.shape().to_vec(),
            });
        }
        Ok(VectorBatch { x, y })
    }
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.x.shape()[0]
    }
    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[x | y]`, `[N, d_in + d_out]`.
    pub fn features(&self) -> Tensor<F> {
        Tensor::from_array(
            ndarray::concatenate(ndarray::Axis(1), &[self.x.view(), self.y.view()])
                .expect("same rows"),
        )
    }
}

/// An MLP over `[x | y]` giving one score per example.
///
/// ```
/// use datarater::meta::Rater;
/// use datarater::trainer::{MlpRater, VectorBatch};
/// use datarater::{Rng, Tensor};
/// let rater = MlpRater::new(3, 1, 16).unwrap();
/// let eta = Rater::<f64, _>::init(&rater, &mut Rng::new(0));
/// let b = VectorBatch::new(Tensor::zeros(&[5, 3])?, Tensor::zeros(&[5, 1])?)?;
/// assert_eq!(rater.scores(&eta, &b).unwrap().shape(), &[5]);
/// # Ok::<(), datarater::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct MlpRater {
    /// The network `[d_in + d_out, hidden, 1]`.
    pub mlp: Mlp,
}

impl MlpRater {
    /// A rater for `d_in`-dimensional inputs with `d_out`-dimensional targets.
    pub fn new(d_in: usize, d_out: usize, hidden: usize) -> Result<Self> {
        Ok(MlpRater {
            mlp: Mlp::new(&[d_in + d_out, hidden, 1], Activation::Tanh)?,
        })
    }
}

impl<F: Float> Rater<F, VectorBatch<F>> for MlpRater {
    fn init(&self, rng: &mut Rng) -> Params<Tensor<F>> {
        self.mlp.init(rng)
    }
    fn scores<V: Value<F = F>>(&self, eta: &Params<V>, b: &VectorBatch<F>) -> Result<V> {
        Ok(self
            .mlp
            .forward(eta, &V::constant(b.features()))?
            .reshape(&[b.len()]))
    }
}

//! Broadcasting and its transpose, summing to a shape. Every reduction (sum over
//! axes, over everything, mean) is built on `SumTo`.

use super::super::float::Float;
use super::super::kernels;
use super::super::tensor::Tensor;
use super::super::value::{Ctx, Op, Saves, Value};
use super::binary::broadcast_shape;
use super::shape_panic;
use ndarray::{Axis, IxDyn};

/// Broadcast to a shape (numpy rules).
#[derive(Clone, Debug)]
pub struct BroadcastTo(pub Vec<usize>);

impl<F: Float> Op<F> for BroadcastTo {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let x = xs[0];
        if broadcast_shape("broadcast_to", x.shape(), &self.0) != self.0 {
            shape_panic("broadcast_to", x.shape(), &self.0);
        }
        let view = x
            .array()
            .broadcast(IxDyn(&self.0))
            .expect("checked broadcast");
        Tensor::from_array(view.to_owned())
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent").broadcast_to(&self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.sum_to(ctx.shape(0)))]
    }
}

/// Sum over the axes that broadcasting `shape` to the input's shape would create or
/// stretch; the result has exactly `shape`.
#[derive(Clone, Debug)]
pub struct SumTo(pub Vec<usize>);

impl<F: Float> Op<F> for SumTo {
    fn name(&self) -> &'static str {
        "sum_to"
    }
    fn saves(&self) -> Saves {
        Saves::NONE
    }
    fn forward(&self, xs: &[&Tensor<F>]) -> Tensor<F> {
        let x = xs[0];
        let (src, dst) = (x.shape(), &self.0[..]);
        if dst.len() > src.len() || broadcast_shape("sum_to", src, dst) != src {
            shape_panic("sum_to", src, dst);
        }
        let lead = src.len() - dst.len();
        let stretched = dst
            .iter()
            .enumerate()
            .filter(|&(i, &d)| d == 1 && src[i + lead] != 1);
        let axes: Vec<usize> = (0..lead).chain(stretched.map(|(i, _)| i + lead)).collect();
        // Summing a run of axes before the last of a standard-layout array: sums of
        // rows (a sum over the last axis keeps ndarray's unrolled lane sums).
        let run = axes.windows(2).all(|w| w[1] == w[0] + 1);
        if let (true, Some(&a0), Some(data)) = (run, axes.first(), x.array().as_slice()) {
            let a1 = a0 + axes.len();
            let size = |axes: &[usize]| axes.iter().product::<usize>();
            let dims = (size(&src[..a0]), size(&src[a0..a1]), size(&src[a1..]));
            if a1 < src.len() && dims.2 > 0 {
                let out = kernels::sum_rows(data, dims);
                return Tensor::from_vec(dst, out).expect("the kept elements");
            }
        }
        let mut out: Option<ndarray::ArrayD<F>> = None;
        for &ax in axes.iter().rev() {
            out = Some(match out {
                None => x.array().sum_axis(Axis(ax)),
                Some(a) => a.sum_axis(Axis(ax)),
            });
        }
        let out = out.unwrap_or_else(|| x.to_owned_array());
        Tensor::from_array(
            out.into_shape_with_order(IxDyn(dst))
                .expect("same element count"),
        )
    }
    fn jvp<V: Value<F = F>>(&self, _: &Ctx<V>, d: &[Option<&V>]) -> V {
        d[0].expect("one tangent").sum_to(&self.0)
    }
    fn vjp<V: Value<F = F>>(&self, ctx: &Ctx<V>, dy: &V) -> Vec<Option<V>> {
        vec![Some(dy.broadcast_to(ctx.shape(0)))]
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::tensor::Tensor;
    use super::super::super::value::Value;
    use ndarray::Axis;

    /// The sums-of-rows path and the general one against ndarray's own sums.
    #[test]
    fn sum_to_matches_summing_the_axes_one_by_one() {
        let x: Vec<f64> = (0..24).map(|i| (i * i % 7) as f64 - 2.5).collect();
        let x = Tensor::from_vec(&[2, 3, 4], x).unwrap();
        let a = x.array();
        let cases = [
            (vec![4], a.sum_axis(Axis(0)).sum_axis(Axis(0))),
            (vec![3, 4], a.sum_axis(Axis(0))),
            (vec![1, 4], a.sum_axis(Axis(0)).sum_axis(Axis(0))),
            (vec![2, 1, 4], a.sum_axis(Axis(1))),
            (vec![2, 3, 1], a.sum_axis(Axis(2))),
            (vec![2, 3, 4], a.to_owned()),
        ];
        for (shape, want) in cases {
            assert_eq!(
                x.sum_to(&shape).to_vec(),
                want.iter().copied().collect::<Vec<_>>()
            );
        }
        // A non-standard layout takes the general path.
        let t = x.permute(&[1, 0, 2]);
        let want: Vec<f64> = t
            .array()
            .sum_axis(Axis(0))
            .sum_axis(Axis(0))
            .iter()
            .copied()
            .collect();
        assert_eq!(t.sum_to(&[4]).to_vec(), want);
        let empty = Tensor::<f64>::from_vec(&[0, 3], vec![]).unwrap();
        assert_eq!(empty.sum_to(&[3]).to_vec(), vec![0.0; 3]);
        let empty = Tensor::<f64>::from_vec(&[2, 0, 3], vec![]).unwrap();
        assert_eq!(empty.sum_to(&[2, 1, 3]).to_vec(), vec![0.0; 6]);
        // Big enough to be split over threads: by columns of one sum, and by blocks.
        let big: Vec<f64> = (0..3 * 70_000).map(|i| (i % 13) as f64).collect();
        let big = Tensor::from_vec(&[3, 70_000], big).unwrap();
        let want: Vec<f64> = big.array().sum_axis(Axis(0)).iter().copied().collect();
        assert_eq!(big.sum_to(&[70_000]).to_vec(), want);
        let big: Vec<f64> = (0..3 * 7 * 30_000).map(|i| (i % 11) as f64).collect();
        let big = Tensor::from_vec(&[3, 7, 30_000], big).unwrap();
        let want: Vec<f64> = big.array().sum_axis(Axis(1)).iter().copied().collect();
        assert_eq!(big.sum_to(&[3, 1, 30_000]).to_vec(), want);
    }
}

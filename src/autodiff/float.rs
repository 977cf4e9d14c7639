//! The scalar types the engine runs on: `f32` and `f64`.

use std::fmt::{Debug, Display};
use std::iter::Sum;
use std::ops::{AddAssign, DivAssign, MulAssign, SubAssign};

/// A floating-point element type (`f32` or `f64`).
pub trait Float:
    num_traits::Float
    + num_traits::FromPrimitive
    + ndarray::LinalgScalar
    + ndarray::ScalarOperand
    + Sum
    + AddAssign
    + SubAssign
    + MulAssign
    + DivAssign
    + Default
    + Debug
    + Display
    + Send
    + Sync
    + 'static
{
    /// Converts an `f64` constant to this type.
    fn c(x: f64) -> Self;
    /// Converts to `f64`.
    fn f64(self) -> f64;
    /// `e^self`, the engine's exponential: branch-free (Cody-Waite reduction, a Taylor
    /// polynomial, the exponent written into the bits), so loops over slices vectorise
    /// where a call into libm would not. Within 2 ulp of the correctly rounded result
    /// for normal outputs; `+inf` above the largest finite result, `0` below `2^-125.5`
    /// in `f32` and `2^-1021.5` in `f64` (just above the smallest normal numbers: no
    /// subnormals), NaN for NaN.
    fn vexp(self) -> Self;
}

/// The bits of `2^(n - 1)`, `n` being in the low bits of `t_bits` (`t = x log2(e) + 1.5 *
/// 2^mant`): shifting them up by the mantissa width writes `n` into the exponent field
/// (the shifter's own bits shift out), and `bias - 1` is added to it. The exponential
/// multiplies `2 e^r` by it: one multiplication where two were needed to cover the
/// range, exact (so the same bits) while `2^(n - 1)` is a normal number, which `n >=
/// 2 - bias` ensures (hence `LO`).
macro_rules! pow2_bits {
    ($t_bits:expr, $mant:expr, $bias:expr) => {
        ($t_bits << $mant).wrapping_add(($bias - 1) << $mant)
    };
}

impl Float for f32 {
    #[inline]
    fn c(x: f64) -> Self {
        x as f32
    }
    #[inline]
    fn f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn vexp(self) -> f32 {
        const HI: f32 = 88.722_83; // ln(f32::MAX)
        const LO: f32 = -86.989; // just above -125.5 ln 2: n >= -125
        const LN2_HI: f32 = f32::from_bits(0x3f31_7180); // ln 2 with its low bits zero: n * LN2_HI is exact
        const LN2_LO: f32 = f32::from_bits(0x3717_f7d1); // ln 2 - LN2_HI
        const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
        let x = self.clamp(LO, HI);
        let t = x * std::f32::consts::LOG2_E + SHIFTER; // its low bits hold n
        let nf = t - SHIFTER;
        let r = x - nf * LN2_HI - nf * LN2_LO; // |r| <= ln2 / 2
        // 2 e^r, Taylor to r^7 with the coefficients doubled (exactly): the remainder is
        // below 3e-9 relative.
        let mut p = 2.0 / 5040.0;
        for c in [
            2.0 / 720.0,
            2.0 / 120.0,
            2.0 / 24.0,
            2.0 / 6.0,
            1.0,
            2.0,
            2.0,
        ] {
            p = p * r + c;
        }
        let y = p * f32::from_bits(pow2_bits!(t.to_bits(), 23, 127));
        if self > HI {
            f32::INFINITY
        } else if self < LO {
            0.0
        } else {
            y
        }
    }
}

impl Float for f64 {
    #[inline]
    fn c(x: f64) -> Self {
        x
    }
    #[inline]
    fn f64(self) -> f64 {
        self
    }
    #[inline(always)]
    fn vexp(self) -> f64 {
        const HI: f64 = 709.782_712_893_383_9; // ln(f64::MAX)
        const LO: f64 = -708.049; // just above -1021.5 ln 2: n >= -1021
        const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // fdlibm's: n * LN2_HI is exact
        const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // ln 2 - LN2_HI
        const SHIFTER: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
        let x = self.clamp(LO, HI);
        let t = x * std::f64::consts::LOG2_E + SHIFTER; // its low bits hold n
        let nf = t - SHIFTER;
        let r = x - nf * LN2_HI - nf * LN2_LO; // |r| <= ln2 / 2
        // 2 e^r, Taylor to r^13 with the coefficients doubled (exactly): the remainder
        // is below 5e-18 relative.
        let mut p = 2.0 / 6_227_020_800.0;
        for k in (0..13).rev() {
            p = p * r + 2.0 * INV_FACT[k];
        }
        let y = p * f64::from_bits(pow2_bits!(t.to_bits(), 52, 1023));
        if self > HI {
            f64::INFINITY
        } else if self < LO {
            0.0
        } else {
            y
        }
    }
}

/// `1 / k!` for `k` in `0..13`.
const INV_FACT: [f64; 13] = [
    1.0,
    1.0,
    0.5,
    1.0 / 6.0,
    1.0 / 24.0,
    1.0 / 120.0,
    1.0 / 720.0,
    1.0 / 5040.0,
    1.0 / 40_320.0,
    1.0 / 362_880.0,
    1.0 / 3_628_800.0,
    1.0 / 39_916_800.0,
    1.0 / 479_001_600.0,
];

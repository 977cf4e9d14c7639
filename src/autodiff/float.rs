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
    /// for normal outputs; `+inf` above the largest finite result, `0` below the smallest
    /// normal one (no subnormals), NaN for NaN.
    fn vexp(self) -> Self;
}

/// `p * 2^n` for `|n|` up to twice the exponent range, as two exact power-of-two
/// factors (one alone would overflow at the top of the range). `bits(e)` is `2^e`.
macro_rules! scale2 {
    ($p:expr, $n:expr, $bits:expr) => {{
        let half = $n >> 1;
        $p * $bits(half) * $bits($n - half)
    }};
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
        const LO: f32 = -87.336_55; // ln(f32::MIN_POSITIVE)
        const LN2_HI: f32 = f32::from_bits(0x3f31_7180); // ln 2 with its low bits zero: n * LN2_HI is exact
        const LN2_LO: f32 = f32::from_bits(0x3717_f7d1); // ln 2 - LN2_HI
        const SHIFTER: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
        let x = self.clamp(LO, HI);
        let t = x * std::f32::consts::LOG2_E + SHIFTER;
        let n = t.to_bits() as i32 - SHIFTER.to_bits() as i32;
        let nf = t - SHIFTER;
        let r = x - nf * LN2_HI - nf * LN2_LO; // |r| <= ln2 / 2
        // Taylor to r^7: the remainder is below 3e-9 relative.
        let mut p = 1.0 / 5040.0;
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = p * r + c;
        }
        let bits = |e: i32| f32::from_bits(((e + 127) as u32) << 23);
        let y = scale2!(p, n, bits);
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
        const LO: f64 = -708.396_418_532_264_1; // ln(f64::MIN_POSITIVE)
        const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000); // fdlibm's: n * LN2_HI is exact
        const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76); // ln 2 - LN2_HI
        const SHIFTER: f64 = 6_755_399_441_055_744.0; // 1.5 * 2^52
        let x = self.clamp(LO, HI);
        let t = x * std::f64::consts::LOG2_E + SHIFTER;
        let n = (t.to_bits() as i64 - SHIFTER.to_bits() as i64) as i32;
        let nf = t - SHIFTER;
        let r = x - nf * LN2_HI - nf * LN2_LO; // |r| <= ln2 / 2
        // Taylor to r^13: the remainder is below 5e-18 relative.
        let mut p = 1.0 / 6_227_020_800.0;
        for k in (0..13).rev() {
            p = p * r + INV_FACT[k];
        }
        let bits = |e: i32| f64::from_bits(((e + 1023) as u64) << 52);
        let y = scale2!(p, n, bits);
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

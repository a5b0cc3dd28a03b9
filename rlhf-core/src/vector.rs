//! Elementwise f32 math for loops that the compiler vectorises: `exp` without a libm call, and
//! the dispatch that compiles a loop for AVX-512 and for AVX2 with FMA and runs the CPU's best.
//! burn-flex applies its unary functions through per-element closures around libm, which are
//! neither inlined nor vectorised; the token log-probabilities' pass ([`crate::logprobs`]) and
//! rlhf-models' GELU, attention softmax and rotary embedding are written on these instead.

/// `eˣ` in f32 without a libm call: `x = n·ln 2 + r` with `|r| ≤ ln 2 / 2`, `e^r` by its Taylor
/// polynomial to degree 7 (relative error below 2e-7), `2ⁿ` built in the exponent bits. Below
/// −87 it is 0 (where `eˣ` < 1.7e-38 leaves the normal numbers); above 88 it stays at `e⁸⁸`.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let c = x.clamp(-87.0, 88.0);
    // round to nearest through the 2²³ + 2²² shift, which vectorises where `round` does not
    let shifted = c * std::f32::consts::LOG2_E + 12_582_912.0;
    let n = shifted - 12_582_912.0;
    // ln 2 in two parts, so that `n·ln 2` is subtracted without rounding (Cody and Waite)
    let r = (c - n * 0.693_145_75) - n * 1.428_606_8e-6;
    let mut e = 1.0 / 5040.0;
    for k in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        e = e * r + k;
    }
    // `shifted`'s bits are those of 2²³ + 2²² plus n, so n + 127, the biased exponent of 2ⁿ, is
    // integer arithmetic on them: `n as i32` would saturate, which the compiler does lane by lane
    let biased = shifted
        .to_bits()
        .wrapping_sub(0x4B40_0000)
        .wrapping_add(127);
    let e = e * f32::from_bits(biased << 23);
    if x < -87.0 { 0.0 } else { e }
}

/// Lanes of the partial maxima and sums below (a whole AVX-512 register).
const LANES: usize = 16;

/// The largest value (−∞ for none; NaN is passed over, as `f32::max` does), in `LANES` partial
/// maxima.
#[inline(always)]
pub fn max_of(v: &[f32]) -> f32 {
    let mut top = [f32::NEG_INFINITY; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (t, &x) in top.iter_mut().zip(c) {
            *t = t.max(x);
        }
    }
    rest.iter()
        .chain(&top)
        .fold(f32::NEG_INFINITY, |a, &x| a.max(x))
}

/// The sum, in `LANES` partial sums.
#[inline(always)]
pub fn sum_of(v: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let chunks = v.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += x;
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// `Σ aᵢ·bᵢ`, in `LANES` partial sums.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let rest: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *s += x * y;
        }
    }
    rest + acc.iter().sum::<f32>()
}

/// Defines `$name`, which runs `$body` compiled for AVX-512 or AVX2 + FMA when the CPU has
/// them, and for the baseline otherwise.
#[doc(hidden)]
#[macro_export]
macro_rules! widest {
    ($name:ident, ($($arg:ident: $ty:ty),*), $body:ident) => {
        pub fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512($($arg: $ty),*) {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2($($arg: $ty),*) {
                    $body($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has just been seen to support AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: the CPU has just been seen to support AVX2 and FMA.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}

pub use crate::widest;

/// `t` with contiguous f32 storage that this tensor alone owns (copied when it is strided or
/// shared), and the range of its elements in that storage: the slice a pass may write.
#[cfg(feature = "flex")]
pub fn owned(
    t: burn::backend::flex::FlexTensor,
) -> (burn::backend::flex::FlexTensor, std::ops::Range<usize>) {
    let mut t = if t.is_contiguous() {
        t
    } else {
        t.to_contiguous()
    };
    // copy on write: afterwards no other tensor sees what the pass writes
    let _ = t.storage_mut::<f32>();
    let (start, end) = t
        .layout()
        .contiguous_offsets()
        .expect("a contiguous tensor");
    (t, start..end)
}

//! Plain `f64` summaries of a series of values: the mean, the sample standard deviation and the
//! standard error of the mean.

use std::borrow::Borrow;

/// The mean of `values` (a slice or an iterator of `f64`); 0 when there are none.
pub fn mean<I>(values: I) -> f64
where
    I: IntoIterator,
    I::Item: Borrow<f64>,
{
    let (sum, n) = values
        .into_iter()
        .fold((0.0, 0usize), |(s, n), x| (s + *x.borrow(), n + 1));
    sum / n.max(1) as f64
}

/// The sample standard deviation (Bessel-corrected, as torch's `std` and TRL's `nanstd`); NaN for
/// fewer than two values, where it is undefined.
pub fn sample_std(v: &[f64]) -> f64 {
    if v.len() < 2 {
        return f64::NAN;
    }
    let mean = mean(v);
    let squares: f64 = v.iter().map(|x| (x - mean).powi(2)).sum();
    (squares / (v.len() - 1) as f64).sqrt()
}

/// The mean and the standard error of the mean (sample standard deviation / √n; 0 for fewer
/// than two values).
pub fn mean_se(v: &[f64]) -> (f64, f64) {
    let mean = mean(v);
    if v.len() < 2 {
        return (mean, 0.0);
    }
    (mean, sample_std(v) / (v.len() as f64).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_and_standard_error_match_the_textbook_values() {
        assert_eq!(mean([1.0, 2.0, 6.0]), 3.0);
        assert_eq!(mean(&[] as &[f64]), 0.0);
        assert_eq!(mean([2.0f32, 4.0].iter().map(|&x| f64::from(x))), 3.0);
        // sample sd of 1, 2, 6 is √7; se = √7 / √3
        assert!((sample_std(&[1.0, 2.0, 6.0]) - 7f64.sqrt()).abs() < 1e-12);
        assert!(sample_std(&[1.0]).is_nan());
        let (m, se) = mean_se(&[1.0, 2.0, 6.0]);
        assert_eq!(m, 3.0);
        assert!((se - (7.0f64 / 3.0).sqrt()).abs() < 1e-15);
        assert_eq!(mean_se(&[5.0]), (5.0, 0.0));
        assert_eq!(mean_se(&[]), (0.0, 0.0));
    }
}

//! Curves and fits: linear interpolation along a curve (gold at a matched KL or a matched
//! compute), least-squares slopes on a log scale, and Gao et al.'s over-optimisation forms.
//!
//! A fit is only ever reported with more points than parameters, and with its quality.

/// `y` at `x` by linear interpolation between the nearest points of `curve` on either side
/// (sorted by `x` here; equal `x` averaged). `None` outside the curve's range.
pub fn interpolate(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let mut pts: Vec<(f64, f64)> = curve
        .iter()
        .copied()
        .filter(|(a, b)| a.is_finite() && b.is_finite())
        .collect();
    pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    // average equal x
    let mut merged: Vec<(f64, f64, usize)> = Vec::new();
    for (a, b) in pts {
        match merged.last_mut() {
            Some(last) if last.0 == a => {
                last.1 += b;
                last.2 += 1;
            }
            _ => merged.push((a, b, 1)),
        }
    }
    let pts: Vec<(f64, f64)> = merged
        .into_iter()
        .map(|(a, b, n)| (a, b / n as f64))
        .collect();
    if !x.is_finite() || pts.is_empty() || x < pts[0].0 || x > pts[pts.len() - 1].0 {
        return None;
    }
    for w in pts.windows(2) {
        let ((x0, y0), (x1, y1)) = (w[0], w[1]);
        if x <= x1 {
            return Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0));
        }
    }
    Some(pts[pts.len() - 1].1)
}

/// A least-squares line `y = a + b·x`: its slope, intercept, R² and the number of points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// Slope.
    pub slope: f64,
    /// Intercept.
    pub intercept: f64,
    /// Coefficient of determination (1 when y is constant and fitted exactly).
    pub r2: f64,
    /// Points.
    pub n: usize,
}

/// Least squares of `y` on `x` over the finite points. `None` with fewer than three points (a
/// line through two points tests nothing) or no spread in `x`.
pub fn line(points: &[(f64, f64)]) -> Option<Line> {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .collect();
    if pts.len() < 3 {
        return None;
    }
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some(Line {
        slope,
        intercept: my - slope * mx,
        r2: if syy > 0.0 {
            (sxy * sxy) / (sxx * syy)
        } else {
            1.0
        },
        n: pts.len(),
    })
}

/// [`line`] of `y` on `log2 x` (points with `x > 0`): the change of `y` per doubling of `x`.
pub fn per_doubling(points: &[(f64, f64)]) -> Option<Line> {
    let logged: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, _)| *x > 0.0)
        .map(|&(x, y)| (x.log2(), y))
        .collect();
    line(&logged)
}

/// A fit of one of Gao et al. (2022)'s over-optimisation forms to `(KL, gold gain)` points,
/// with `d = √KL`: best-of-n `gain = d·(α − β·d)`, RL `gain = d·(α − β·ln d)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GaoFit {
    /// α.
    pub alpha: f64,
    /// β.
    pub beta: f64,
    /// R² of the fit (through the origin, against the points' mean).
    pub r2: f64,
    /// Points at KL > 0.
    pub n: usize,
    /// The KL at which the fitted gain peaks (`None` when β ≤ 0: it keeps rising).
    pub peak_kl: Option<f64>,
    /// The smallest and the largest KL > 0 of the points.
    pub kl_range: (f64, f64),
}

impl GaoFit {
    /// Whether the peak lies within the measured KL range: between the smallest and the largest
    /// KL > 0 of the points, not merely below the largest (the SFT policy's KL 0 is the form's
    /// origin, not a measurement of where the gain turns).
    pub fn peak_inside(&self) -> bool {
        let (lo, hi) = self.kl_range;
        self.peak_kl.is_some_and(|k| (lo..=hi).contains(&k))
    }
}

/// The fewest points at KL > 0 a [`gao_fit`] accepts: more than its two parameters, with room
/// to test the form.
pub const GAO_MIN_POINTS: usize = 5;

/// Least squares of a Gao form through the origin. `None` with fewer than [`GAO_MIN_POINTS`]
/// points at KL > 0, or a singular system.
pub fn gao_fit(points: &[(f64, f64)], rl: bool) -> Option<GaoFit> {
    let measured: Vec<(f64, f64)> = points
        .iter()
        .copied()
        .filter(|(kl, y)| kl.is_finite() && *kl > 0.0 && y.is_finite())
        .collect();
    let rows: Vec<(f64, f64, f64)> = measured
        .iter()
        .map(|&(kl, y)| {
            let d = kl.sqrt();
            let g = if rl { d * d.ln() } else { d * d };
            (d, -g, y)
        })
        .collect();
    if rows.len() < GAO_MIN_POINTS {
        return None;
    }
    let (mut s11, mut s12, mut s22, mut s1y, mut s2y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x1, x2, y) in &rows {
        s11 += x1 * x1;
        s12 += x1 * x2;
        s22 += x2 * x2;
        s1y += x1 * y;
        s2y += x2 * y;
    }
    let det = s11 * s22 - s12 * s12;
    if det.abs() <= 1e-12 * (s11 * s22).max(f64::MIN_POSITIVE) {
        return None;
    }
    let alpha = (s22 * s1y - s12 * s2y) / det;
    let beta = (s11 * s2y - s12 * s1y) / det;
    let mean = rows.iter().map(|r| r.2).sum::<f64>() / rows.len() as f64;
    let ss_tot: f64 = rows.iter().map(|r| (r.2 - mean).powi(2)).sum();
    let ss_res: f64 = rows
        .iter()
        .map(|r| (r.2 - alpha * r.0 - beta * r.1).powi(2))
        .sum();
    // best-of-n's d·(α − β·d) peaks at d = α/2β only when that d is positive
    let peak_kl = (beta > 0.0 && (rl || alpha > 0.0)).then(|| {
        let d = if rl {
            (alpha / beta - 1.0).exp()
        } else {
            alpha / (2.0 * beta)
        };
        d * d
    });
    let min_kl = measured.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
    let max_kl = measured.iter().map(|p| p.0).fold(0.0, f64::max);
    Some(GaoFit {
        alpha,
        beta,
        r2: if ss_tot > 0.0 {
            1.0 - ss_res / ss_tot
        } else {
            f64::NAN
        },
        n: rows.len(),
        peak_kl,
        kl_range: (min_kl, max_kl),
    })
}

/// The `x` of the highest `y` of a curve, and whether it is an interior peak: it lies past
/// `x = 0` and some point after it (in `x`) lies lower by more than `margin`. `None` for an
/// empty curve.
pub fn peak(curve: &[(f64, f64)], margin: f64) -> Option<(f64, bool)> {
    let best = curve
        .iter()
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .max_by(|a, b| a.1.total_cmp(&b.1))?;
    let falls = curve
        .iter()
        .any(|(x, y)| *x > best.0 && *y < best.1 - margin);
    Some((best.0, falls && best.0 > 0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_is_linear_inside_and_refuses_outside() {
        let c = [(0.0, 0.0), (2.0, 1.0), (1.0, 1.0), (1.0, 0.0)];
        // x = 1 holds two points, averaged to 0.5
        assert_eq!(interpolate(&c, 1.0), Some(0.5));
        assert_eq!(interpolate(&c, 0.5), Some(0.25));
        assert_eq!(interpolate(&c, 1.5), Some(0.75));
        assert_eq!(interpolate(&c, 2.0), Some(1.0));
        assert_eq!(interpolate(&c, 2.1), None);
        assert_eq!(interpolate(&c, -0.1), None);
    }

    #[test]
    fn fits_need_more_points_than_parameters() {
        assert!(line(&[(1.0, 1.0), (2.0, 2.0)]).is_none());
        let l = per_doubling(&[(1.0, 0.0), (2.0, 1.0), (4.0, 2.0), (8.0, 3.0)]).unwrap();
        assert!((l.slope - 1.0).abs() < 1e-12 && (l.r2 - 1.0).abs() < 1e-12);
        let pts: Vec<(f64, f64)> = [0.5, 1.0, 2.0, 4.0]
            .iter()
            .map(|&kl: &f64| (kl, kl.sqrt() * (1.0 - 0.2 * kl.sqrt())))
            .collect();
        assert!(gao_fit(&pts, false).is_none(), "four points");
    }

    /// Exact points of Gao's RL form, gain = d(α − β ln d) with d = √KL, at `kls`.
    fn rl_points(a: f64, b: f64, kls: &[f64]) -> Vec<(f64, f64)> {
        kls.iter()
            .map(|&kl| (kl, kl.sqrt() * (a - b * kl.sqrt().ln())))
            .collect()
    }

    #[test]
    fn gao_fits_recover_their_coefficients_and_place_the_peak() {
        // best-of-n: gain = d(α − βd), peak at d = α/2β
        let (a, b) = (1.0, 0.25);
        let pts: Vec<(f64, f64)> = [0.5, 1.0, 2.0, 4.0, 6.0, 9.0]
            .iter()
            .map(|&kl: &f64| (kl, kl.sqrt() * (a - b * kl.sqrt())))
            .collect();
        let f = gao_fit(&pts, false).unwrap();
        assert!((f.alpha - a).abs() < 1e-9 && (f.beta - b).abs() < 1e-9);
        assert!((f.peak_kl.unwrap() - 4.0).abs() < 1e-9 && f.peak_inside());
        assert!((f.r2 - 1.0).abs() < 1e-9);
        // RL: gain = d(α − β ln d), peak at d = exp(α/β − 1)
        let (a, b) = (0.6, 0.3);
        let f = gao_fit(&rl_points(a, b, &[0.5, 1.0, 2.0, 4.0, 8.0]), true).unwrap();
        assert!((f.alpha - a).abs() < 1e-9 && (f.beta - b).abs() < 1e-9);
        let peak = (a / b - 1.0f64).exp().powi(2);
        assert!((f.peak_kl.unwrap() - peak).abs() < 1e-9);
        assert_eq!(f.peak_inside(), (0.5..=8.0).contains(&peak));
        assert_eq!(f.kl_range, (0.5, 8.0));
    }

    #[test]
    fn a_peak_below_the_smallest_measured_kl_is_not_inside() {
        // RL form peaking at KL exp(2·(α/β − 1)) = exp(-0.4) ≈ 0.67, measured from KL 1.5 on
        let (a, b) = (0.32, 0.4);
        let f = gao_fit(&rl_points(a, b, &[1.5, 2.0, 3.0, 4.0, 6.0]), true).unwrap();
        let peak = f.peak_kl.unwrap();
        assert!((peak - (-0.4f64).exp()).abs() < 1e-9, "{peak}");
        assert!(!f.peak_inside());
        // the same form measured across its peak places it inside
        let across = rl_points(a, b, &[0.25, 0.5, 1.0, 2.0, 4.0]);
        assert!(gao_fit(&across, true).unwrap().peak_inside());
    }

    #[test]
    fn a_peak_is_interior_only_when_the_curve_falls_after_it() {
        let rising = [(0.0, 0.0), (1.0, 0.5), (2.0, 0.9)];
        assert_eq!(peak(&rising, 0.05), Some((2.0, false)));
        let peaked = [(0.0, 0.0), (1.0, 0.9), (2.0, 0.5)];
        assert_eq!(peak(&peaked, 0.05), Some((1.0, true)));
        // a fall inside the margin is no peak
        assert_eq!(
            peak(&[(0.0, 0.0), (1.0, 0.9), (2.0, 0.88)], 0.05),
            Some((1.0, false))
        );
        // the SFT policy at KL 0 is the origin, not a peak of training
        assert_eq!(
            peak(&[(0.0, 0.9), (1.0, 0.5), (2.0, 0.4)], 0.05),
            Some((0.0, false))
        );
    }

    #[test]
    fn a_best_of_n_fit_that_only_falls_has_no_peak() {
        // gain = d(α − βd) with α < 0: falling from d = 0, so α/2β < 0 is no peak
        let (a, b) = (-0.2, 0.1);
        let pts: Vec<(f64, f64)> = [0.5, 1.0, 2.0, 4.0, 6.0]
            .iter()
            .map(|&kl: &f64| (kl, kl.sqrt() * (a - b * kl.sqrt())))
            .collect();
        let f = gao_fit(&pts, false).unwrap();
        assert!(f.beta > 0.0 && f.alpha < 0.0);
        assert_eq!(f.peak_kl, None);
        assert!(!f.peak_inside());
    }
}

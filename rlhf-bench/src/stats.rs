//! The statistics behind every verdict: an interval over seeds, and what it says.
//!
//! Every seed of a sweep draws its own held-out prompts and trains its own SFT models, reward
//! models and policies, so whatever a finding measures on one seed's points — a paired difference
//! between two of its points averaged over its prompts, a slope, the KL of a peak — is one
//! independent draw per seed, carrying both the seed-to-seed spread of training and the sampling
//! of prompts. The 95% interval of the effect is Student's t over those draws:
//! `mean ± t(0.975, S − 1) · sd / √S` for `S` seeds.
//!
//! Where a draw is a mean over prompts, its prompt-sampling variance is known (its standard
//! error squared, `se²ₛ`), and a draw's variance is at least that. Three draws can agree by
//! chance far more closely than their prompts allow — an effect counted on a few hundred prompts
//! takes few values, and three seeds that each differ by the same two prompts give `sd = 0` —
//! so the `sd²` above is floored by the mean `se²ₛ`: the interval is never narrower than the
//! prompts alone make it. The quantile stays `t(0.975, S − 1)`: where the floor binds, that is
//! conservative (the prompts' variance rests on hundreds of prompts), and a verdict needs the
//! seeds' spread to be small as well as the effect to be large.
//!
//! A finding is **reproduced** only when its interval lies above zero (the finding's direction),
//! **contradicted** when it lies below, and **inconclusive** otherwise. With one seed the
//! interval is over the prompts alone (t over the per-prompt values, when the effect has them):
//! it ignores the seed-to-seed spread, which the first edition of the report showed to be the
//! larger part, so one seed never gives a verdict.

pub use rlhf_core::stats::{mean, mean_se};
use serde::{Deserialize, Serialize};
use statrs::distribution::{ContinuousCDF, StudentsT};

/// The two-sided level of every interval.
pub const LEVEL: f64 = 0.95;

/// An estimate and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// The mean of the draws.
    pub mean: f64,
    /// Lower end.
    pub lo: f64,
    /// Upper end.
    pub hi: f64,
    /// Seeds behind it (1: the interval is over prompts only).
    pub seeds: usize,
}

/// `t(1 − (1 − LEVEL)/2, df)`.
pub fn t_quantile(df: f64) -> f64 {
    StudentsT::new(0.0, 1.0, df)
        .map(|t| t.inverse_cdf(1.0 - (1.0 - LEVEL) / 2.0))
        .unwrap_or(f64::NAN)
}

impl Interval {
    /// Student's t interval of the mean of `draws`, one per seed. `None` with fewer than two
    /// finite draws.
    pub fn over_seeds(draws: &[f64]) -> Option<Interval> {
        Self::t_interval(draws, draws.len())
    }

    /// Student's t interval of the mean of `draws`, one per seed, each the mean over a seed's
    /// prompts with the squared standard error `within[s]`: the draws' variance is floored by
    /// the mean of `within` (see the module documentation). `None` with fewer than two finite
    /// draws, or when `within` does not hold one finite value per draw.
    pub fn over_seeds_floored(draws: &[f64], within: &[f64]) -> Option<Interval> {
        if within.len() != draws.len() || within.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return None;
        }
        let plain = Self::over_seeds(draws)?;
        // the half-width the mean se² alone gives: t · √(mean se² / S)
        let s = draws.len() as f64;
        let floor = t_quantile(s - 1.0) * (within.iter().sum::<f64>() / s / s).sqrt();
        if floor <= plain.hi - plain.mean {
            return Some(plain);
        }
        Some(Interval {
            lo: plain.mean - floor,
            hi: plain.mean + floor,
            ..plain
        })
    }

    /// One seed's interval over its per-prompt values (prompt sampling only; see the module
    /// documentation). `None` with fewer than two finite values.
    pub fn over_items(items: &[f64]) -> Option<Interval> {
        Self::t_interval(items, 1)
    }

    fn t_interval(values: &[f64], seeds: usize) -> Option<Interval> {
        let v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.len() < 2 || v.len() != values.len() {
            return None;
        }
        let (mean, se) = mean_se(&v);
        let half = t_quantile((v.len() - 1) as f64) * se;
        Some(Interval {
            mean,
            lo: mean - half,
            hi: mean + half,
            seeds,
        })
    }

    /// Whether `x` lies inside.
    pub fn covers(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// `+0.123 [+0.045, +0.201]` (`+0.123 (one seed)` without bounds).
    pub fn show(&self) -> String {
        if self.lo.is_finite() && self.hi.is_finite() {
            format!("{:+.3} [{:+.3}, {:+.3}]", self.mean, self.lo, self.hi)
        } else {
            format!("{:+.3} (one seed)", self.mean)
        }
    }
}

/// What an interval says about a finding whose effect is signed so that positive goes the
/// finding's way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The interval lies above zero, from two or more seeds.
    Reproduced,
    /// The interval lies below zero, from two or more seeds.
    Contradicted,
    /// The interval covers zero, or one seed.
    Inconclusive,
    /// The points it needs were not run.
    NotRun,
}

impl Verdict {
    /// The verdict of `interval` (see the module documentation).
    pub fn of(interval: Option<&Interval>) -> Verdict {
        match interval {
            None => Verdict::NotRun,
            Some(i) if i.seeds < 2 => Verdict::Inconclusive,
            Some(i) if i.lo > 0.0 => Verdict::Reproduced,
            Some(i) if i.hi < 0.0 => Verdict::Contradicted,
            Some(_) => Verdict::Inconclusive,
        }
    }

    /// The word in the findings table.
    pub fn word(self) -> &'static str {
        match self {
            Verdict::Reproduced => "reproduced",
            Verdict::Contradicted => "contradicted",
            Verdict::Inconclusive => "inconclusive",
            Verdict::NotRun => "not run",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_t_quantiles_are_the_tables() {
        // two-sided 95%: t(0.975, df)
        for (df, t) in [(1.0, 12.706), (2.0, 4.303), (4.0, 2.776), (30.0, 2.042)] {
            assert!(
                (t_quantile(df) - t).abs() < 1e-3,
                "df {df}: {}",
                t_quantile(df)
            );
        }
    }

    #[test]
    fn an_interval_needs_two_finite_draws_and_one_seed_gives_no_verdict() {
        assert_eq!(Interval::over_seeds(&[1.0]), None);
        assert_eq!(Interval::over_seeds(&[1.0, f64::NAN]), None);
        let i = Interval::over_seeds(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(i.mean, 2.0);
        // sd 1, se 1/√3, t(2) = 4.303
        assert!((i.hi - 2.0 - 4.302_652_7 / 3f64.sqrt()).abs() < 1e-6);
        // 2 ± 2.48 covers zero
        assert_eq!(Verdict::of(Some(&i)), Verdict::Inconclusive);
        let clear = Interval::over_seeds(&[1.0, 1.1, 1.2]).unwrap();
        assert_eq!(Verdict::of(Some(&clear)), Verdict::Reproduced);
        let one_seed = Interval::over_items(&[1.0, 1.1, 0.9, 1.0]).unwrap();
        assert!(one_seed.lo > 0.0);
        assert_eq!(Verdict::of(Some(&one_seed)), Verdict::Inconclusive);
        let neg = Interval::over_seeds(&[-1.0, -1.2, -0.9]).unwrap();
        assert_eq!(Verdict::of(Some(&neg)), Verdict::Contradicted);
        assert_eq!(Verdict::of(None), Verdict::NotRun);
    }

    #[test]
    fn the_prompts_floor_an_interval_over_seeds() {
        // three equal draws: no spread over seeds, but each has its prompts' se² = 0.04
        let i = Interval::over_seeds_floored(&[0.25; 3], &[0.04; 3]).unwrap();
        assert_eq!(i.mean, 0.25);
        // floor sd 0.2, se 0.2/√3, t(2) = 4.303
        assert!(
            (i.hi - 0.25 - 4.302_652_7 * 0.2 / 3f64.sqrt()).abs() < 1e-6,
            "{i:?}"
        );
        assert_eq!(Verdict::of(Some(&i)), Verdict::Inconclusive);
        // the plain interval has no width
        let plain = Interval::over_seeds(&[0.25; 3]).unwrap();
        assert_eq!((plain.lo, plain.hi), (0.25, 0.25));
        // a spread over seeds above the floor is kept as it is
        let wide = Interval::over_seeds(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!(
            Interval::over_seeds_floored(&[1.0, 2.0, 3.0], &[0.01, 0.02, 0.03]),
            Some(wide)
        );
        // one se² per draw, each finite and not negative
        assert_eq!(Interval::over_seeds_floored(&[1.0, 2.0], &[0.1]), None);
        assert_eq!(
            Interval::over_seeds_floored(&[1.0, 2.0], &[0.1, f64::NAN]),
            None
        );
        assert_eq!(
            Interval::over_seeds_floored(&[1.0, 2.0], &[0.1, -0.1]),
            None
        );
        assert_eq!(Interval::over_seeds_floored(&[1.0], &[0.1]), None);
    }
}

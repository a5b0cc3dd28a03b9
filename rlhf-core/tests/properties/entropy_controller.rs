//! Skywork-OR1's adaptive entropy control against a plain `f64` reading of the rule in
//! `docs/algorithms.md` (TRL's `use_adaptive_entropy`), and its invariants.

use proptest::prelude::*;
use rlhf_core::{AdaptiveEntropy, EntropyController};

/// The rule, step by step: each step applies `c` when the last step's entropy was at most the
/// target (nothing before the first), then moves `c` by `δ` toward more bonus when this step's
/// entropy is at most the target and toward less otherwise, clamped to `[c_min, c_max]`.
fn reference(c0: f32, a: AdaptiveEntropy, entropies: &[f64]) -> (Vec<f64>, f64) {
    let w = f64::from;
    let (target, delta, min, max) = (w(a.target), w(a.delta), w(a.min), w(a.max));
    let (mut c, mut last): (f64, Option<f64>) = (w(c0), None);
    let mut applied = Vec::new();
    for &h in entropies {
        applied.push(match last {
            Some(l) if l <= target => c,
            _ => 0.0,
        });
        c = if h <= target {
            f64::min(c + delta, max)
        } else {
            f64::max(c - delta, min)
        };
        last = Some(h);
    }
    (applied, c)
}

/// Settings and an initial coefficient in `[c_min, c_max]`, sometimes on a bound.
fn settings() -> impl Strategy<Value = (f32, AdaptiveEntropy)> {
    let at = prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..1.0];
    (0.01f32..3.0, 0.0f32..0.3, 0.0f32..0.5, 0.0f32..1.0, at).prop_map(
        |(target, delta, min, span, at)| {
            let a = AdaptiveEntropy {
                target,
                delta,
                min,
                max: min + span,
            };
            let c0 = if at == 1.0 { a.max } else { a.min + at * span };
            (c0.clamp(a.min, a.max), a)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn adaptive_control_matches_the_reference_and_stays_in_its_bounds(
        (c0, a) in settings(),
        entropies in prop::collection::vec(prop_oneof![0.0f64..3.0, Just(f64::NAN), Just(1e30)], 0..40),
    ) {
        let mut ctl = EntropyController::new(c0, Some(a));
        prop_assert!(ctl.validate().is_ok());
        prop_assert!(ctl.active());
        let (want_applied, want_c) = reference(c0, a, &entropies);
        let (min, max) = (f64::from(a.min), f64::from(a.max));
        for (h, want) in entropies.iter().zip(&want_applied) {
            let applied = ctl.applied();
            prop_assert_eq!(applied.to_bits(), want.to_bits());
            prop_assert!(applied == 0.0 || applied == ctl.coef());
            ctl.update(*h);
            prop_assert!(min <= ctl.coef() && ctl.coef() <= max, "c {} out of [{min}, {max}]", ctl.coef());
            // the state a checkpoint keeps gives a resumed run the same next coefficient (a NaN
            // entropy, which JSON writes as null, included)
            let saved: EntropyController =
                serde_json::from_value(serde_json::to_value(&ctl).unwrap()).unwrap();
            let resumed = EntropyController::new(c0, Some(a)).resume_from(&saved);
            prop_assert_eq!(resumed.applied().to_bits(), ctl.applied().to_bits());
            prop_assert_eq!(resumed.coef().to_bits(), ctl.coef().to_bits());
        }
        prop_assert_eq!(ctl.coef().to_bits(), want_c.to_bits());
    }

    #[test]
    fn a_fixed_coefficient_is_always_applied_and_never_moves(
        c in -1.0f32..1.0,
        entropies in prop::collection::vec(0.0f64..10.0, 0..20),
    ) {
        let mut ctl = EntropyController::new(c, None);
        for h in entropies {
            prop_assert_eq!(ctl.applied(), f64::from(c));
            ctl.update(h);
        }
        prop_assert_eq!(ctl.coef(), f64::from(c));
        prop_assert_eq!(ctl.active(), c != 0.0);
        // a resumed fixed run keeps its own coefficient
        prop_assert_eq!(EntropyController::new(0.5, None).resume_from(&ctl).coef(), 0.5);
    }
}

/// Below the target `c` climbs `δ` a step to `c_max`, applied from the second step on; above it
/// `c` falls to `c_min` and nothing is applied.
#[test]
fn the_coefficient_climbs_below_the_target_and_falls_above_it() {
    let a = AdaptiveEntropy {
        target: 0.5,
        delta: 0.1,
        min: 0.05,
        max: 0.3,
    };
    let mut ctl = EntropyController::new(0.1, Some(a));
    assert!(ctl.validate().is_ok());
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push((ctl.applied(), ctl.coef()));
        ctl.update(0.2);
    }
    let close = |x: f64, y: f64| (x - y).abs() < 1e-7;
    let want = [(0.0, 0.1), (0.2, 0.2), (0.3, 0.3), (0.3, 0.3)];
    assert!(
        seen.iter()
            .zip(want)
            .all(|(s, w)| close(s.0, w.0) && close(s.1, w.1)),
        "{seen:?}"
    );
    ctl.update(0.9);
    assert_eq!(ctl.applied(), 0.0);
    for _ in 0..5 {
        ctl.update(0.9);
    }
    assert!(close(ctl.coef(), 0.05) && ctl.applied() == 0.0);
    // the gate is "at most": an entropy equal to the target applies
    ctl.update(0.5);
    assert!(close(ctl.applied(), 0.15));
}

/// Settings outside their ranges are refused by name; a coefficient on a bound is inside it.
#[test]
fn bad_settings_are_refused() {
    let ok = AdaptiveEntropy::default();
    let with = |f: &dyn Fn(&mut AdaptiveEntropy)| {
        let mut a = ok;
        f(&mut a);
        a
    };
    for (c, a, says) in [
        (0.0, with(&|a| a.target = 0.0), "entropy_target"),
        (0.0, with(&|a| a.target = f32::NAN), "entropy_target"),
        (0.0, with(&|a| a.delta = -0.1), "entropy_coef_delta"),
        (
            0.0,
            with(&|a| (a.min, a.max) = (0.5, 0.2)),
            "entropy_coef_min",
        ),
        (0.0, with(&|a| a.min = -0.1), "entropy_coef_min"),
        (2.0, ok, "initial entropy_coef"),
        (f32::INFINITY, ok, "entropy_coef must be finite"),
    ] {
        let e = EntropyController::new(c, Some(a)).validate().unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    assert!(EntropyController::new(-0.5, None).validate().is_ok());
    for c in [0.1f32, 0.7, 0.3] {
        let on = with(&|a| (a.min, a.max) = (c, c));
        assert!(
            EntropyController::new(c, Some(on)).validate().is_ok(),
            "{c}"
        );
    }
}

/// A settings table that names some takes TRL's defaults for the others.
#[test]
fn partial_settings_take_the_defaults() {
    let a: AdaptiveEntropy = serde_json::from_str(r#"{"target": 0.5}"#).unwrap();
    assert_eq!(
        a,
        AdaptiveEntropy {
            target: 0.5,
            ..AdaptiveEntropy::default()
        }
    );
}

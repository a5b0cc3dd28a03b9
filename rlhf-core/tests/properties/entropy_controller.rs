//! Skywork-OR1's adaptive entropy control against a plain `f64` reading of the rule in
//! `docs/algorithms.md` (TRL's `use_adaptive_entropy`), and its invariants.

use proptest::prelude::*;
use rlhf_core::{AdaptiveEntropy, EntropyController};

/// The rule, step by step: each step applies `c` when the last step's entropy was at most the
/// target (nothing before the first), then moves `c` by `δ` toward more bonus when this step's
/// entropy is at most the target and toward less otherwise, clamped to `[c_min, c_max]`.
fn reference(c0: f64, a: AdaptiveEntropy, entropies: &[f64]) -> (Vec<f64>, f64) {
    let (mut c, mut last): (f64, Option<f64>) = (c0, None);
    let mut applied = Vec::new();
    for &h in entropies {
        applied.push(match last {
            Some(l) if l <= a.target => c,
            _ => 0.0,
        });
        c = if h <= a.target {
            f64::min(c + a.delta, a.max)
        } else {
            f64::max(c - a.delta, a.min)
        };
        last = Some(h);
    }
    (applied, c)
}

fn settings() -> impl Strategy<Value = (f64, AdaptiveEntropy)> {
    (
        0.01f64..3.0,
        0.0f64..0.3,
        0.0f64..0.5,
        0.0f64..1.0,
        0.0f64..1.0,
    )
        .prop_map(|(target, delta, min, span, at)| {
            let a = AdaptiveEntropy {
                target,
                delta,
                min,
                max: min + span,
            };
            (a.min + at * span, a)
        })
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
        for (h, want) in entropies.iter().zip(&want_applied) {
            let applied = ctl.applied();
            prop_assert_eq!(applied.to_bits(), want.to_bits());
            prop_assert!(applied == 0.0 || applied == ctl.coef());
            ctl.update(*h);
            prop_assert!(a.min <= ctl.coef() && ctl.coef() <= a.max, "c {} out of [{}, {}]", ctl.coef(), a.min, a.max);
            // the state a checkpoint keeps gives the same next coefficient (a NaN entropy, which
            // JSON writes as null, included)
            let saved: EntropyController =
                serde_json::from_value(serde_json::to_value(&ctl).unwrap()).unwrap();
            prop_assert_eq!(saved.applied().to_bits(), ctl.applied().to_bits());
            prop_assert_eq!(saved.coef().to_bits(), ctl.coef().to_bits());
        }
        prop_assert_eq!(ctl.coef().to_bits(), want_c.to_bits());
    }

    #[test]
    fn a_fixed_coefficient_is_always_applied_and_never_moves(
        c in -1.0f64..1.0,
        entropies in prop::collection::vec(0.0f64..10.0, 0..20),
    ) {
        let mut ctl = EntropyController::new(c, None);
        for h in entropies {
            prop_assert_eq!(ctl.applied(), c);
            ctl.update(h);
        }
        prop_assert_eq!(ctl.coef(), c);
        prop_assert_eq!(ctl.active(), c != 0.0);
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
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push((ctl.applied(), ctl.coef()));
        ctl.update(0.2);
    }
    let close = |x: f64, y: f64| (x - y).abs() < 1e-12;
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

/// Settings outside their ranges are refused by name.
#[test]
fn bad_settings_are_refused() {
    let ok = AdaptiveEntropy::default();
    for (c, a, says) in [
        (0.0, AdaptiveEntropy { target: 0.0, ..ok }, "entropy_target"),
        (
            0.0,
            AdaptiveEntropy {
                target: f64::NAN,
                ..ok
            },
            "entropy_target",
        ),
        (
            0.0,
            AdaptiveEntropy { delta: -0.1, ..ok },
            "entropy_coef_delta",
        ),
        (
            0.0,
            AdaptiveEntropy {
                min: 0.5,
                max: 0.2,
                ..ok
            },
            "entropy_coef_min",
        ),
        (0.0, AdaptiveEntropy { min: -0.1, ..ok }, "entropy_coef_min"),
        (2.0, ok, "initial entropy_coef"),
        (f64::INFINITY, ok, "entropy_coef must be finite"),
    ] {
        let e = EntropyController::new(c, Some(a)).validate().unwrap_err();
        assert!(e.to_string().contains(says), "{e}");
    }
    assert!(EntropyController::new(-0.5, None).validate().is_ok());
}

//! The report holds the points' numbers: fabricated points (two seeds per value, no training)
//! are written, the report is generated, and its tables, trend, findings and CSV are checked
//! against values computed here by hand; `verify_report` accepts it and rejects it once a point
//! changes.

use std::collections::BTreeMap;

use rlhf_bench::report::{gao_fit, gao_peak_kl, log2_fit, rows, verify_report};
use rlhf_bench::{Point, PointRecord, RunConfig, RunResult, read_points, write_report};

fn point(axis: &str, label: &str, x: f64, seed: u64, metrics: &[(&str, f64)]) -> PointRecord {
    PointRecord {
        point: Point {
            axis: axis.into(),
            label: label.into(),
            x,
            config: RunConfig {
                seed,
                ..RunConfig::default()
            },
        },
        git_revision: "test".into(),
        result: RunResult {
            metrics: metrics
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect::<BTreeMap<_, _>>(),
            curve: Vec::new(),
            wall_seconds: 1.0,
        },
    }
}

fn store(dir: &std::path::Path, points: &[PointRecord]) {
    std::fs::create_dir_all(dir.join("points")).unwrap();
    for p in points {
        std::fs::write(
            dir.join("points").join(p.point.file_name()),
            serde_json::to_string(p).unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn the_report_states_the_points_numbers() {
    let mut points = Vec::new();
    // RM accuracy: 0.60/0.62 at 250 pairs, 0.70/0.74 at 1000, 0.80/0.80 at 4000
    for (pairs, accs) in [
        (250.0, [0.60, 0.62]),
        (1000.0, [0.70, 0.74]),
        (4000.0, [0.80, 0.80]),
    ] {
        for (seed, acc) in accs.iter().enumerate() {
            points.push(point(
                "rm_volume",
                &format!("{pairs}"),
                pairs,
                seed as u64,
                &[
                    ("rm/gold_accuracy", *acc),
                    ("rm/accuracy", 0.6),
                    ("gold/mean", -1.0),
                ],
            ));
        }
    }
    for (label, x, gains) in [
        ("rm", 0.0, [0.40, 0.50]),
        // the seeds disagree: seed 1's length-only reward loses gold
        ("length-only", 1.0, [0.10, -0.05]),
    ] {
        for (seed, g) in gains.iter().enumerate() {
            points.push(point(
                "length_control",
                label,
                x,
                seed as u64,
                &[("gold/gain", *g)],
            ));
        }
    }
    // outcome vs process verifiers: best-of-n accuracy 0.31 → 0.41 and 0.35 → 0.56 (means)
    for (kind, x, accs) in [
        ("outcome", 750.0, [0.30, 0.32]),
        ("outcome", 3000.0, [0.40, 0.42]),
        ("process", 750.0, [0.35, 0.35]),
        ("process", 3000.0, [0.55, 0.57]),
    ] {
        for (seed, a) in accs.iter().enumerate() {
            points.push(point(
                "supervision",
                &format!("{kind}-{x}"),
                x,
                seed as u64,
                &[
                    ("bon/accuracy", *a),
                    ("bon/random", 0.5),
                    ("bon/random_distinct", 0.3),
                ],
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), &points);
    let stored = read_points(dir.path()).unwrap();
    assert_eq!(stored.len(), points.len());
    write_report(dir.path(), &stored, "test").unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();

    // mean ± sample sd over the two seeds, by hand
    let sd = |a: f64, b: f64| ((a - (a + b) / 2.0).powi(2) * 2.0).sqrt();
    assert!(
        md.contains(&format!("| 250 | 0.610 ± {:.3} |", sd(0.60, 0.62))),
        "{md}"
    );
    assert!(md.contains(&format!("| 1000 | 0.720 ± {:.3} |", sd(0.70, 0.74))));
    assert!(md.contains("| 4000 | 0.800 ± 0.000 |"));
    // the trend: least squares of the means on log2(pairs), by hand
    let xs = [250f64.log2(), 1000f64.log2(), 4000f64.log2()];
    let ys = [0.61, 0.72, 0.80];
    let (mx, my) = (xs.iter().sum::<f64>() / 3.0, ys.iter().sum::<f64>() / 3.0);
    let slope = xs
        .iter()
        .zip(&ys)
        .map(|(x, y)| (x - mx) * (y - my))
        .sum::<f64>()
        / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>();
    let (fit, _) = log2_fit(&rows(&stored, "rm_volume"), "rm/gold_accuracy").unwrap();
    assert!((fit - slope).abs() < 1e-12);
    assert!(md.contains(&format!("changes by {slope:+.4} per doubling of rm_volume")));
    // the findings: on the means, then seed by seed (each seed's own slope, their mean ± sd)
    let seed_slope = |ys: [f64; 3]| {
        let my = ys.iter().sum::<f64>() / 3.0;
        xs.iter()
            .zip(&ys)
            .map(|(x, y)| (x - mx) * (y - my))
            .sum::<f64>()
            / xs.iter().map(|x| (x - mx).powi(2)).sum::<f64>()
    };
    let (s0, s1) = (
        seed_slope([0.60, 0.70, 0.80]),
        seed_slope([0.62, 0.74, 0.80]),
    );
    assert!(
        md.contains(&format!(
            "| rm_volume | more comparison data makes the RM more accurate | yes | 2 of 2 | {:+.3} ± {:.3} (accuracy per doubling) | gold-order accuracy 0.610 at 250 pairs → 0.800 at 4000;",
            (s0 + s1) / 2.0,
            sd(s0, s1)
        )),
        "{md}"
    );
    // length-only gains +0.10 and −0.05: the mean (+0.025) says yes, one seed of two does
    assert!(
        md.contains(&format!(
            "| length_control | part of RLHF's gain is length alone (A Long Way to Go) | yes | 1 of 2 | +0.025 ± {:.3} (gold gain of the length-only reward) | gold gain with the RM +0.450, with a length-only reward +0.025: length alone gives 6% of the RM's gain |",
            sd(0.10, -0.05)
        )),
        "{md}"
    );
    // per kind: (0.41 − 0.31) / log2(3000 / 750) = +0.050 and (0.56 − 0.35) / 2 = +0.105; seed by
    // seed the process − outcome slopes are 0.10 − 0.05 and 0.11 − 0.05: +0.055 ± 0.007
    assert!(
        md.contains(
            "| supervision | process supervision scales better than outcome supervision in-domain | yes | 2 of 2 | +0.055 ± 0.007 (accuracy per doubling, process − outcome) | best-of-4 final-answer accuracy from 750 to 3000 labelled solutions: outcome RM 0.310 → 0.410 (+0.050 per doubling), process RM 0.350 → 0.560 (+0.105 per doubling); process ≥ outcome at 2 of 2 volumes; a random pick 0.500, a random pick among the distinct solutions 0.300 |"
        ),
        "{md}"
    );
    assert!(md.contains("Trend, process RM: `bon/accuracy` changes by +0.1050 per doubling"));
    let svg = std::fs::read_to_string(dir.path().join("plots/supervision.svg")).unwrap();
    assert!(svg.contains("outcome RM") && svg.contains("process RM"));
    // plots exist and are SVG
    let svg = std::fs::read_to_string(dir.path().join("plots/rm_volume.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    // the CSV has every point with its numbers
    let csv = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), points.len() + 1);
    assert!(
        csv.contains("rm_volume,1000,1000,1,1.000,,,,,-1,0.6,0.74\n"),
        "{csv}"
    );

    assert!(verify_report(dir.path()).unwrap() > points.len());
    // a point that changes after the report was written is caught
    let mut changed = points[0].clone();
    changed
        .result
        .metrics
        .insert("rm/gold_accuracy".into(), 0.99);
    store(dir.path(), &[changed]);
    let err = verify_report(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("report.md lacks") || err.contains("summary.csv"),
        "{err}"
    );
}

#[test]
fn the_shipped_configs_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let cfg = RunConfig::from_file(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if cfg.task.name == "preferences" {
            // the example's data ships beside it
            let data = std::path::Path::new(&cfg.task.data.preferences);
            assert!(data.is_file(), "{}: no {}", path.display(), data.display());
        }
        n += 1;
    }
    assert!(n >= 4);
    let grpo = RunConfig::from_file(&dir.join("tldr-grpo-n4.toml")).unwrap();
    // keys not given keep the bench's defaults
    assert_eq!(
        (
            grpo.method.ppo.samples_per_prompt,
            grpo.method.ppo.iterations
        ),
        (4, 15)
    );
}

/// `docs/scaling-report.md` (the last `quick` sweep, committed) states the numbers of the points
/// committed beside it in `docs/scaling-report/points/`.
#[test]
fn the_committed_report_matches_its_points() {
    let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let n = rlhf_bench::report::verify_report_files(
        &docs.join("scaling-report"),
        &docs.join("scaling-report.md"),
        &docs.join("scaling-report/summary.csv"),
    )
    .unwrap();
    assert!(n > 30, "{n} rows checked");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

    /// A shipped config with lines replaced by hostile values, dropped, or cut short is read or
    /// refused with a message that names the file; it never panics.
    #[test]
    fn damaged_run_configs_never_panic(
        which in proptest::sample::select(vec!["tldr-ppo.toml", "tldr-grpo-n4.toml", "tldr-dpo.toml", "tldr-best-of-16.toml"]),
        edits in proptest::collection::vec((proptest::prelude::any::<proptest::sample::Index>(), proptest::sample::select(vec![
            "-1", "0", "1e400", "nan", "-inf", "18446744073709551615", "\"x\"", "[", "{ kind = \"adaptive\" }",
            "{ kind = \"fixed\", value = -5 }", "true", "\"m\"", "\"pythia-6.9b\"", "0.5", "1.0", "",
        ])), 0..6),
        cut in proptest::prelude::any::<Option<proptest::sample::Index>>(),
    ) {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs").join(which);
        let mut lines: Vec<String> = std::fs::read_to_string(src).unwrap().lines().map(String::from).collect();
        for (at, value) in edits {
            let i = at.index(lines.len());
            lines[i] = match lines[i].split_once('=') {
                Some((key, _)) => format!("{key}= {value}"),
                None => value.to_string(),
            };
        }
        let mut text = lines.join("\n");
        if let Some(c) = cut {
            let mut end = c.index(text.len() + 1);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text.truncate(end);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.toml");
        std::fs::write(&path, &text).unwrap();
        if let Err(e) = RunConfig::from_file(&path) {
            proptest::prop_assert!(e.to_string().contains("damaged.toml"), "{}", e);
        }
    }
}

/// Found by `damaged_run_configs_never_panic`: a size whose product overflowed (a panic in
/// `PpoConfig::batch_size`) is refused by name.
#[test]
fn sizes_that_would_overflow_are_refused() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let text = std::fs::read_to_string(dir.join("tldr-grpo-n4.toml")).unwrap();
    let text = text.replace(
        "samples_per_prompt = 4",
        "samples_per_prompt = 18446744073709551615",
    );
    assert!(text.contains("18446744073709551615"));
    let err = RunConfig::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("samples_per_prompt"), "{err}");
}

proptest::proptest! {
    /// Gain values made exactly by Gao et al.'s forms at a few KLs give back their α and β, with
    /// R² = 1, and the peak of the best-of-n form is where its derivative in d vanishes.
    #[test]
    fn gao_fits_recover_the_forms_coefficients(
        alpha in 0.1f64..2.0,
        beta in 0.01f64..1.0,
        kls in proptest::collection::btree_set(1u32..4000, 3..7),
        rl in proptest::bool::ANY,
    ) {
        let pts: Vec<(f64, f64)> = kls
            .iter()
            .map(|&k| {
                let kl = f64::from(k) / 100.0;
                let d = kl.sqrt();
                (kl, if rl { d * (alpha - beta * d.ln()) } else { d * (alpha - beta * d) })
            })
            .chain(std::iter::once((0.0, 0.0)))
            .collect();
        let (a, b, r2) = gao_fit(&pts, rl).unwrap();
        proptest::prop_assert!((a - alpha).abs() < 1e-6 * (1.0 + alpha), "α {a} vs {alpha}");
        proptest::prop_assert!((b - beta).abs() < 1e-6 * (1.0 + beta), "β {b} vs {beta}");
        proptest::prop_assert!(r2 > 1.0 - 1e-9, "R² {r2}");
        let peak = gao_peak_kl(a, b, rl).unwrap().sqrt();
        let slope = if rl { alpha - beta * (peak.ln() + 1.0) } else { alpha - 2.0 * beta * peak };
        proptest::prop_assert!(slope.abs() < 1e-5, "derivative {slope} at the peak");
    }
}

#[test]
fn a_gao_fit_needs_two_points_at_positive_kl() {
    assert!(gao_fit(&[(0.0, 0.0), (1.0, 0.5)], false).is_none());
    assert!(gao_peak_kl(1.0, -0.1, true).is_none());
}

/// `rlhf-bench run` resumes its own checkpoints only: the run directory remembers its
/// configuration, takes the same one again, and refuses another with a message naming it.
#[test]
fn a_run_directory_holds_one_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let a = RunConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/arith-prm-best-of-8.toml"),
    )
    .unwrap();
    rlhf_bench::pipeline::claim_run_dir(&out, &a).unwrap();
    rlhf_bench::pipeline::claim_run_dir(&out, &a).unwrap();
    let mut b = a.clone();
    b.rm.pairs += 1;
    let err = rlhf_bench::pipeline::claim_run_dir(&out, &b)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another configuration") && err.contains(&out.display().to_string()),
        "{err}"
    );
    // the first configuration is still the directory's
    rlhf_bench::pipeline::claim_run_dir(&out, &a).unwrap();
}

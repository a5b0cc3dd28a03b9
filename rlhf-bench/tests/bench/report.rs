//! The report holds the points' numbers: fabricated points (three seeds per value, no
//! training) are written, the report is generated, and its tables, findings and CSV are
//! checked against values computed here by hand; `verify_report` accepts it and rejects it once
//! a point changes.

use std::collections::BTreeMap;

use rlhf_bench::fits::{gao_fit, per_doubling};
use rlhf_bench::metrics::names;
use rlhf_bench::stats::t_quantile;
use rlhf_bench::verify::verify_report;
use rlhf_bench::{Axis, Point, PointRecord, RunConfig, RunResult, read_points, write_report};

fn point(axis: Axis, label: &str, x: f64, seed: u64, metrics: &[(&str, f64)]) -> PointRecord {
    PointRecord {
        point: Point {
            axis,
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
            items: BTreeMap::new(),
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

/// Mean and t interval over three values, by hand.
fn by_hand(v: [f64; 3]) -> (f64, f64, f64) {
    let m = v.iter().sum::<f64>() / 3.0;
    let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / 2.0).sqrt();
    let half = 4.302_652_729_911_275 * sd / 3f64.sqrt();
    (m, m - half, m + half)
}

#[test]
fn the_report_states_the_points_numbers() {
    assert!((t_quantile(2.0) - 4.302_652_729_911_275).abs() < 1e-9);
    let mut points = Vec::new();
    // RM accuracy by volume, three seeds
    let acc = [
        (250.0, [0.60, 0.62, 0.61]),
        (1000.0, [0.70, 0.74, 0.69]),
        (4000.0, [0.80, 0.80, 0.83]),
    ];
    for (pairs, accs) in acc {
        for (seed, a) in accs.iter().enumerate() {
            points.push(point(
                Axis::RmVolume,
                &format!("{pairs}"),
                pairs,
                seed as u64,
                &[(names::RM_GOLD_ACCURACY, *a), (names::RM_ACCURACY, 0.6)],
            ));
        }
    }
    // length control: the length-only reward's gain +0.10, +0.06, +0.08; the RM's +0.4
    for (label, x, gains) in [
        ("rm", 0.0, [0.40, 0.40, 0.40]),
        ("length-only", 1.0, [0.10, 0.06, 0.08]),
    ] {
        for (seed, g) in gains.iter().enumerate() {
            points.push(point(
                Axis::LengthControl,
                label,
                x,
                seed as u64,
                &[
                    (names::GOLD_GAIN, *g),
                    (names::LENGTH, 10.0),
                    (names::LENGTH_SFT, 12.0),
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

    // the axis tables: mean [t interval over seeds]
    let (m, lo, hi) = by_hand([0.70, 0.74, 0.69]);
    assert!(
        md.contains(&format!(
            "| 1000 | {m:.3} [{lo:.3}, {hi:.3}] | 0.600 [0.600, 0.600] |"
        )),
        "{md}"
    );
    // the RM-volume finding: each seed's own slope per doubling, then the interval over seeds
    let slope = |seed: usize| per_doubling(&acc.map(|(x, a)| (x, a[seed]))).unwrap().slope;
    let (m, lo, hi) = by_hand([slope(0), slope(1), slope(2)]);
    assert!(lo > 0.0);
    assert!(
        md.contains(&format!(
            "| rm_volume | more comparison data makes the RM more accurate | **reproduced** | {m:+.3} [{lo:+.3}, {hi:+.3}] (3 seeds) |"
        )),
        "{md}"
    );
    // length only: +0.08 [t interval], a share of the RM's gain of 0.2
    let (m, lo, hi) = by_hand([0.10, 0.06, 0.08]);
    assert!(lo > 0.0);
    assert!(
        md.contains(&format!(
            "| length_control | part of RLHF's gain is length alone (A Long Way to Go) | **reproduced** | {m:+.3} [{lo:+.3}, {hi:+.3}] (3 seeds) |"
        )),
        "{md}"
    );
    // the share: the mean length-only gain over the mean RM gain, 0.08 / 0.4
    assert!(
        md.contains(&format!(
            "on 3 of 3 seeds; on those, PPO against it changed gold by {m:+.3} [{lo:+.3}, {hi:+.3}] over SFT, 20% of the RM's own gain"
        )),
        "{md}"
    );
    // claims without points say so
    assert!(md.contains(
        "| best_of_n | best-of-n reranking by the RM raises the gold score | **not run** |"
    ));
    // plots exist and are SVG
    let svg = std::fs::read_to_string(dir.path().join("plots/rm_volume.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    // the CSV has every point with its numbers
    let csv = std::fs::read_to_string(dir.path().join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), points.len() + 1);
    assert!(
        csv.contains("rm_volume,1000,1000,1,1.000,,,,0.6,0.74\n"),
        "{csv}"
    );

    assert!(verify_report(dir.path()).unwrap() > points.len());
    // a point that changes after the report was written is caught
    let mut changed = points[0].clone();
    changed
        .result
        .metrics
        .insert(names::RM_GOLD_ACCURACY.into(), 0.99);
    store(dir.path(), &[changed]);
    let err = verify_report(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("report.md lacks") || err.contains("summary.csv"),
        "{err}"
    );
}

#[test]
fn the_calibration_sets_the_rms_best_of_n_beside_the_gold_scores_own_pick() {
    let mut points = Vec::new();
    for seed in 0..3u64 {
        points.push(point(
            Axis::PolicySize,
            "xs",
            1.0,
            seed,
            &[
                (names::PARAMS_POLICY, 1000.0),
                (names::SFT_WIN_VS_REFERENCES, 0.2),
                (names::WIN_VS_REFERENCES, 0.25),
            ],
        ));
    }
    // per seed: the SFT policy's win rate, the RM's best-of-n pick's, the gold score's pick's
    let (sft, by_rm, by_gold) = ([0.20, 0.22, 0.21], [0.25, 0.28, 0.24], [0.50, 0.55, 0.52]);
    for (label, x) in [("1", 1.0), ("16", 16.0)] {
        for seed in 0..3 {
            let rm = if label == "1" { sft[seed] } else { by_rm[seed] };
            let gold = if label == "1" {
                sft[seed]
            } else {
                by_gold[seed]
            };
            points.push(point(
                Axis::BestOfN,
                label,
                x,
                seed as u64,
                &[
                    (names::SFT_WIN_VS_REFERENCES, sft[seed]),
                    (names::WIN_VS_REFERENCES, rm),
                    (names::GOLD_PICK_WIN_VS_REFERENCES, gold),
                ],
            ));
        }
    }
    let dir = tempfile::tempdir().unwrap();
    store(dir.path(), &points);
    write_report(dir.path(), &read_points(dir.path()).unwrap(), "test").unwrap();
    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    // the largest n, in points over SFT, paired within seeds
    let points_over_sft = |v: [f64; 3]| [0, 1, 2].map(|i| 100.0 * (v[i] - sft[i]));
    let (g, r) = (points_over_sft(by_gold), points_over_sft(by_rm));
    let show = |v: [f64; 3]| {
        let (m, lo, hi) = by_hand(v);
        format!("{m:.3} [{lo:.3}, {hi:.3}]")
    };
    let expected = format!(
        "among the same candidates, best-of-16 by the gold score itself (a reward model without error) adds {} points of win rate against the references over SFT, and best-of-16 by the RM {}: a difference of {}.",
        show(g),
        show(r),
        show([0, 1, 2].map(|i| g[i] - r[i]))
    );
    assert!(md.contains(&expected), "{expected}\n{md}");
    // the best-of-n table shows both picks
    let table = md
        .lines()
        .find(|l| l.starts_with("| 16 |"))
        .expect("a best-of-16 row");
    assert!(table.contains("0.523 [0.461, 0.586]"), "{table}");
    assert!(verify_report(dir.path()).is_ok());
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
    let n = rlhf_bench::verify::verify_report_files(
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
        kls in proptest::collection::btree_set(1u32..4000, 5..9),
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
        let f = gao_fit(&pts, rl).unwrap();
        let (a, b) = (f.alpha, f.beta);
        proptest::prop_assert!((a - alpha).abs() < 1e-6 * (1.0 + alpha), "α {a} vs {alpha}");
        proptest::prop_assert!((b - beta).abs() < 1e-6 * (1.0 + beta), "β {b} vs {beta}");
        proptest::prop_assert!(f.r2 > 1.0 - 1e-9, "R² {}", f.r2);
        let peak = f.peak_kl.unwrap().sqrt();
        let slope = if rl { alpha - beta * (peak.ln() + 1.0) } else { alpha - 2.0 * beta * peak };
        proptest::prop_assert!(slope.abs() < 1e-5, "derivative {slope} at the peak");
    }
}

#[test]
fn a_gao_fit_needs_five_points_at_positive_kl() {
    let four: Vec<(f64, f64)> = [0.0, 1.0, 2.0, 3.0, 4.0]
        .iter()
        .map(|&k: &f64| (k, k.sqrt() * (1.0 - 0.1 * k.sqrt())))
        .collect();
    assert!(gao_fit(&four, false).is_none(), "four points at KL > 0");
    let mut five = four.clone();
    five.push((5.0, 5f64.sqrt() * (1.0 - 0.1 * 5f64.sqrt())));
    assert!(gao_fit(&five, false).is_some());
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

/// Sweeps sharing one output directory, as on several machines: three at once store every point
/// exactly once (each point is claimed before it runs, identical runs are copied), and a point
/// whose lock another sweep holds is left to it, then run by the next sweep once that one has
/// let it go unfinished.
#[test]
fn sweeps_sharing_a_directory_store_every_point_exactly_once() {
    use std::path::Path;
    use std::sync::Mutex;

    use rlhf_bench::study::{SweepReport, all_stored, sweep_with};

    let points = rlhf_bench::preset_points("smoke", &[], &[1, 2], "flex").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let runs = Mutex::new(0usize);
    let runner = |cfg: &RunConfig, _: &Path, _: &Path| -> rlhf_core::Result<RunResult> {
        *runs.lock().unwrap() += 1;
        std::thread::sleep(std::time::Duration::from_millis(20));
        Ok(RunResult {
            metrics: BTreeMap::from([(names::GOLD.to_string(), cfg.seed as f64)]),
            items: BTreeMap::new(),
            curve: Vec::new(),
            wall_seconds: 0.0,
        })
    };

    // a sweep elsewhere holds the first point
    let held = &points[0];
    let lock_path = dir
        .path()
        .join("points")
        .join(held.file_name().replace(".json", ".lock"));
    std::fs::create_dir_all(dir.path().join("points")).unwrap();
    let lock = std::fs::File::create(&lock_path).unwrap();
    lock.lock().unwrap();

    let reports: Vec<SweepReport> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| sweep_with(&points, dir.path(), false, &runner).unwrap()))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let sum = |f: fn(&SweepReport) -> usize| reports.iter().map(f).sum::<usize>();
    assert_eq!(
        sum(|r| r.ran) + sum(|r| r.copied),
        points.len() - 1,
        "{reports:?}"
    );
    assert_eq!(sum(|r| r.ran), *runs.lock().unwrap());
    assert!(
        sum(|r| r.copied) > 0,
        "the smoke preset repeats its base run"
    );
    // each sweep left the held point (and maybe points a sibling was still running)
    assert!(sum(|r| r.elsewhere) >= 3, "{reports:?}");
    assert!(!all_stored(&points, dir.path()));
    assert_eq!(read_points(dir.path()).unwrap().len(), points.len() - 1);

    // the holder dies without storing it: the next sweep runs it, and only it
    drop(lock);
    let r = sweep_with(&points, dir.path(), false, &runner).unwrap();
    assert_eq!(
        (r.ran + r.copied, r.skipped, r.elsewhere),
        (1, points.len() - 1, 0)
    );
    assert!(all_stored(&points, dir.path()));
    let names: Vec<String> = std::fs::read_dir(dir.path().join("points"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".json"))
        .collect();
    assert!(names.is_empty(), "lock files left behind: {names:?}");
}

/// `rlhf-bench diff`: two sweeps' RM-volume findings side by side. A slope that rises on every
/// seed against one that falls on every seed changed sign; against one whose seeds disagree it
/// moved (to inconclusive); against itself it is the same.
#[test]
fn a_diff_of_two_sweeps_names_each_verdict_that_moved() {
    use rlhf_bench::diff::{Change, FindingsDiff};
    let sweep = |accs: [[f64; 3]; 3]| -> Vec<PointRecord> {
        let mut points = Vec::new();
        for (pairs, by_seed) in [250.0, 1000.0, 4000.0].into_iter().zip(accs) {
            for (seed, a) in by_seed.iter().enumerate() {
                points.push(point(
                    Axis::RmVolume,
                    &format!("{pairs}"),
                    pairs,
                    seed as u64,
                    &[(names::RM_GOLD_ACCURACY, *a)],
                ));
            }
        }
        points
    };
    let rising = sweep([[0.60, 0.62, 0.61], [0.70, 0.74, 0.69], [0.80, 0.80, 0.83]]);
    let falling = sweep([[0.80, 0.80, 0.83], [0.70, 0.74, 0.69], [0.60, 0.62, 0.61]]);
    let mixed = sweep([[0.60, 0.80, 0.70], [0.70, 0.70, 0.70], [0.80, 0.60, 0.71]]);
    let claim = "more comparison data makes the RM more accurate";
    for (other, change, word) in [
        (&rising, Change::Same, "reproduced"),
        (&falling, Change::SignChanged, "contradicted"),
        (&mixed, Change::Moved, "inconclusive"),
    ] {
        let diff = FindingsDiff::of(&rising, other);
        let (a, b) = diff
            .pairs
            .iter()
            .find(|(a, _)| a.claim == claim)
            .expect("the RM-volume finding in both");
        assert_eq!(Change::of(a.verdict, b.verdict), change, "{b:?}");
        let md = diff.markdown();
        let row = md
            .lines()
            .find(|l| l.contains(claim))
            .expect("the claim's row");
        assert!(
            row.contains("| reproduced +") && row.contains(&format!("| {word} ")),
            "{row}"
        );
        assert!(row.ends_with(&format!("| {} |", change.word())), "{row}");
        let moved = diff.count(Change::Moved) + diff.count(Change::SignChanged);
        assert_eq!(moved, usize::from(change != Change::Same), "{md}");
        assert!(md.contains(&format!(
            "claims: {} with the same verdict",
            diff.pairs.len() - moved
        )));
    }
}

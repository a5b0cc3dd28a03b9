//! The `rlhf-data` binary: exit codes, counts, stats and task export, run as a user would.

use std::process::Command;

use crate::data;

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rlhf-data"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_counts_records_and_fails_on_bad_ones_unless_skipping() {
    let hh = data("hh_rlhf.jsonl");
    let (code, out) = run(&["check", hh.to_str().unwrap(), "--kind", "preference"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("read 3 records, kept 3, rejected 0"), "{out}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"p\"}\n{\"prompt\": 5}\n").unwrap();
    let (code, out) = run(&["check", bad.to_str().unwrap(), "--kind", "prompt"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad.jsonl:2: field `prompt`"), "{out}");
    let (code, out) = run(&[
        "check",
        bad.to_str().unwrap(),
        "--kind",
        "prompt",
        "--skip-bad",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("read 2 records, kept 1, rejected 1"), "{out}");
    // renamed fields
    let renamed = dir.path().join("renamed.jsonl");
    std::fs::write(&renamed, "{\"question\": \"q\"}\n").unwrap();
    let (code, _) = run(&[
        "check",
        renamed.to_str().unwrap(),
        "--kind",
        "prompt",
        "--prompt-key",
        "question",
    ]);
    assert_eq!(code, 0);
    // without --kind, the kind is read off the first record; fields it cannot place are
    // named, with the flag to use
    let (code, out) = run(&["check", hh.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("read 3 records, kept 3, rejected 0"), "{out}");
    let (code, out) = run(&["check", renamed.to_str().unwrap()]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("[\"question\"]") && out.contains("--kind"),
        "{out}"
    );
    // usage errors
    assert_eq!(
        run(&["check", renamed.to_str().unwrap(), "--kind", "nope"]).0,
        2
    );
    assert_eq!(run(&["frobnicate"]).0, 2);
}

#[test]
fn export_task_then_check_and_stats_read_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("arith");
    let (code, out) = run(&[
        "export-task",
        "arith-steps",
        "--out",
        out_dir.to_str().unwrap(),
        "--n",
        "200",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("\"labeller_tau\""), "{out}");
    for (file, kind) in [
        ("sft.jsonl", "sft"),
        ("preference.jsonl", "preference"),
        ("prompts.jsonl", "prompt"),
        ("steps.jsonl", "steps"),
    ] {
        let (code, out) = run(&[
            "check",
            out_dir.join(file).to_str().unwrap(),
            "--kind",
            kind,
        ]);
        assert_eq!(code, 0, "{out}");
        assert!(
            out.contains("read 200 records, kept 200, rejected 0"),
            "{file}: {out}"
        );
    }
    let tok = out_dir.join("tokenizer.json");
    let (code, out) = run(&[
        "stats",
        out_dir.join("sft.jsonl").to_str().unwrap(),
        "--kind",
        "sft",
        "--tokenizer",
        tok.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("prompt") && out.contains("response") && out.contains("p99"),
        "{out}"
    );
}

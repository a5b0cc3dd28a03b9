//! Malformed input gives the documented error — file, line, field, what was expected — and never
//! a panic; with `skip_bad`, records read = kept + rejected.

use proptest::prelude::*;
use rlhf_data::*;

fn read_text<R: Record>(
    contents: &[u8],
    skip_bad: bool,
) -> (rlhf_base::Result<Loaded<R>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    std::fs::write(&path, contents).unwrap();
    (
        read_records::<R>(
            &path,
            &ReadOptions {
                skip_bad,
                ..ReadOptions::default()
            },
        ),
        dir,
    )
}

/// The error of a one-record file whose record is `line` (placed on line 2 after a good record).
fn error_for(line: &str) -> String {
    let good = r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#;
    let (res, _dir) = read_text::<PreferenceRecord>(format!("{good}\n{line}\n").as_bytes(), false);
    res.unwrap_err().to_string()
}

#[test]
fn each_kind_of_damage_names_line_field_and_expectation() {
    for (line, field, expect) in [
        (
            r#"{"prompt": "p", "chosen": "c", "rejected": "#,
            "-",
            "invalid JSON",
        ),
        (
            r#"{"prompt": "p", "chosen": 7, "rejected": "r"}"#,
            "chosen",
            "found a number",
        ),
        (r#"{"prompt": "p", "chosen": "c"}"#, "rejected", "missing"),
        (
            r#"{"prompt": "p", "chosen": "", "rejected": "r"}"#,
            "chosen",
            "is empty",
        ),
        (
            r#"{"prompt": "", "chosen": "c", "rejected": "r"}"#,
            "prompt",
            "is empty",
        ),
        (
            r#"["p", "c", "r"]"#,
            "-",
            "expected a JSON object, found an array",
        ),
        (
            r#"{"prompt": "p", "chosen": [{"role": "assistant"}], "rejected": "r"}"#,
            "chosen[0].content",
            "missing",
        ),
        (
            r#"{"prompt": "p", "chosen": "c", "rejected": "r", "score_chosen": "high"}"#,
            "score_chosen",
            "expected a number",
        ),
        (
            r#"{"chosen": "no tags here", "rejected": "none here either"}"#,
            "chosen",
            "share no `Assistant:` turn",
        ),
        (
            r#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "c"}], "rejected": "r"}"#,
            "chosen",
            "a list of messages after a plain-text prompt",
        ),
    ] {
        let e = error_for(line);
        assert!(e.contains("bad.jsonl:2: "), "{e}");
        assert!(e.contains(&format!("field `{field}`")), "{line} → {e}");
        assert!(e.contains(expect), "{line} → {e}");
    }
}

/// A conversation after a plain-text prompt is refused in every record that pairs them.
#[test]
fn a_conversation_after_a_plain_text_prompt_is_refused() {
    let reply = r#"[{"role": "assistant", "content": "c"}]"#;
    let sft = format!(r#"{{"prompt": "p", "completion": {reply}}}"#);
    let (res, _d) = read_text::<SftRecord>(sft.as_bytes(), false);
    let e = res.unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:1: ") && e.contains("field `completion`"),
        "{e}"
    );
    let kto = format!(r#"{{"prompt": "p", "completion": {reply}, "label": true}}"#);
    let (res, _d) = read_text::<UnpairedRecord>(kto.as_bytes(), false);
    assert!(res.unwrap_err().to_string().contains("field `completion`"));
    let kwise = format!(r#"{{"prompt": "p", "completions": ["a", {reply}], "rewards": [1, 0]}}"#);
    let (res, _d) = read_text::<KwiseRecord>(kwise.as_bytes(), false);
    assert!(
        res.unwrap_err()
            .to_string()
            .contains("field `completions[1]`")
    );
    let text = format!(r#"{{"text": {reply}}}"#);
    let (res, _d) = read_text::<SftRecord>(text.as_bytes(), false);
    assert!(res.unwrap_err().to_string().contains("field `text`"));
    // a conversation with a plain-text reply is read: the reply follows the assistant's opening
    let fine = r#"{"prompt": [{"role": "user", "content": "p"}], "completion": "c"}"#;
    let (res, _d) = read_text::<SftRecord>(fine.as_bytes(), false);
    assert_eq!(res.unwrap().records.len(), 1);
}

#[test]
fn invalid_utf8_and_overlong_lines() {
    let (res, _d) =
        read_text::<PromptRecord>(b"{\"prompt\": \"ok\"}\n{\"prompt\": \"\xff\xfe\"}\n", false);
    let e = res.unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:2:") && e.contains("invalid UTF-8 at byte 12"),
        "{e}"
    );

    let long = format!(
        "{{\"prompt\": \"{}\"}}\n{{\"prompt\": \"fine\"}}\n",
        "x".repeat(10 << 20)
    );
    let (res, _d) = read_text::<PromptRecord>(long.as_bytes(), false);
    let e = res.unwrap_err().to_string();
    assert!(
        e.contains("bad.jsonl:1:") && e.contains("over the 8388608-byte limit"),
        "{e}"
    );
    // skipping it, the reader finds the next line intact
    let (res, _d) = read_text::<PromptRecord>(long.as_bytes(), true);
    let l = res.unwrap();
    assert_eq!((l.report.read, l.report.kept, l.report.rejected), (2, 1, 1));
    assert_eq!(l.records[0].prompt, Turns::from("fine"));
}

#[test]
fn kwise_and_steps_check_their_lengths() {
    let (res, _d) = read_text::<KwiseRecord>(
        br#"{"prompt": "p", "completions": ["a", "b"], "rewards": [1.0]}"#,
        false,
    );
    assert!(
        res.unwrap_err()
            .to_string()
            .contains("field `rewards`: has 1 rewards for 2 responses")
    );
    let (res, _d) = read_text::<KwiseRecord>(
        br#"{"prompt": "p", "completions": ["a"], "rewards": [1.0]}"#,
        false,
    );
    assert!(
        res.unwrap_err()
            .to_string()
            .contains("needs at least 2 responses")
    );
    let (res, _d) = read_text::<StepRecord>(
        br#"{"prompt": "p", "completions": ["a"], "labels": ["yes"]}"#,
        false,
    );
    assert!(
        res.unwrap_err()
            .to_string()
            .contains("field `labels[0]`: expected a boolean, found a string")
    );
}

/// TRL reads a `margin` column for the whole dataset: a file where some pairs have one and
/// others do not is refused at the first record that differs from the first record, and a
/// file where all or none have one reads.
#[test]
fn a_margin_on_some_pairs_only_is_refused_where_the_pattern_breaks() {
    let with = r#"{"prompt": "p", "chosen": "c", "rejected": "r", "margin": 1.5}"#;
    let without = r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#;
    for (lines, expect) in [
        ([with, with, without], "is missing"),
        ([without, without, with], "is here"),
    ] {
        let (res, _d) = read_text::<PreferenceRecord>(lines.join("\n").as_bytes(), false);
        let e = res.unwrap_err().to_string();
        assert!(
            e.contains("bad.jsonl:3: ") && e.contains("field `margin`") && e.contains(expect),
            "{e}"
        );
    }
    let (res, _d) =
        read_text::<PreferenceRecord>([with, without, with].join("\n").as_bytes(), true);
    let loaded = res.unwrap();
    assert_eq!((loaded.report.kept, loaded.report.rejected), (2, 1));
    assert!(loaded.records.iter().all(|r| r.margin == Some(1.5)));
    let (res, _d) = read_text::<PreferenceRecord>([without, without].join("\n").as_bytes(), false);
    assert!(res.unwrap().records.iter().all(|r| r.margin.is_none()));
    let bad = r#"{"prompt": "p", "chosen": "c", "rejected": "r", "margin": "wide"}"#;
    let (res, _d) = read_text::<PreferenceRecord>(bad.as_bytes(), false);
    assert!(res.unwrap_err().to_string().contains("field `margin`"));
}

#[test]
fn skip_bad_counts_and_keeps_the_first_errors() {
    let mut text = String::new();
    for i in 0..30 {
        if i % 3 == 0 {
            text.push_str("{not json\n");
        } else {
            text.push_str(&format!("{{\"prompt\": \"p{i}\"}}\n"));
        }
    }
    text.push('\n'); // a blank line is not a record
    let (res, _d) = read_text::<PromptRecord>(text.as_bytes(), true);
    let l = res.unwrap();
    assert_eq!(
        (l.report.read, l.report.kept, l.report.rejected),
        (30, 20, 10)
    );
    assert_eq!(l.report.errors.len(), 10);
    assert!(l.report.errors[1].to_string().contains("bad.jsonl:4:"));
}

#[test]
fn a_missing_file_is_an_io_error_with_its_path() {
    let e = read_records::<PromptRecord>(
        std::path::Path::new("/nonexistent/x.jsonl"),
        &ReadOptions::default(),
    )
    .unwrap_err();
    assert!(e.to_string().starts_with("/nonexistent/x.jsonl: "), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes never panic the reader, and the counts always add up.
    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048), lines in prop::collection::vec(prop::sample::select(vec![
        r#"{"prompt": "p", "chosen": "c", "rejected": "r"}"#,
        r#"{"prompt": "p", "chosen": [{"role": "assistant", "content": "x"}], "rejected": "r"}"#,
        r#"{"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: a\n\nAssistant: c"}"#,
        r#"{"prompt": null}"#, "[]", "{", "\u{0}",
    ]), 0..8)) {
        let mut contents = lines.join("\n").into_bytes();
        let cut = bytes.len() / 2;
        contents.extend_from_slice(&bytes[..cut]);
        contents.push(b'\n');
        contents.extend_from_slice(&bytes[cut..]);
        let (res, _d) = read_text::<PreferenceRecord>(&contents, true);
        let l = res.unwrap();
        prop_assert_eq!(l.report.read, l.report.kept + l.report.rejected);
        prop_assert_eq!(l.records.len(), l.report.kept);
        let (strict, _d) = read_text::<PreferenceRecord>(&contents, false);
        if l.report.rejected > 0 {
            prop_assert!(strict.is_err());
        } else {
            prop_assert!(strict.is_ok());
        }
    }

    /// A real parquet file (pyarrow's) with bytes flipped and its tail cut never panics the
    /// reader: it reads, or the error names the file.
    #[cfg(feature = "parquet")]
    #[test]
    fn damaged_parquet_never_panics(
        which in prop::sample::select(vec!["preference.parquet", "sft_messages.parquet"]),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        keep in any::<prop::sample::Index>(),
    ) {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(which);
        let mut bytes = std::fs::read(src).unwrap();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        bytes.truncate(keep.index(bytes.len() + 1).max(bytes.len() / 2));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("damaged.parquet");
        std::fs::write(&path, &bytes).unwrap();
        for skip_bad in [false, true] {
            let opts = ReadOptions { skip_bad, ..ReadOptions::default() };
            match read_records::<PreferenceRecord>(&path, &opts) {
                Ok(l) => prop_assert_eq!(l.report.read, l.report.kept + l.report.rejected),
                Err(e) => prop_assert!(e.to_string().contains("damaged.parquet"), "{}", e),
            }
            match read_records::<SftRecord>(&path, &opts) {
                Ok(l) => prop_assert_eq!(l.report.read, l.report.kept + l.report.rejected),
                Err(e) => prop_assert!(e.to_string().contains("damaged.parquet"), "{}", e),
            }
        }
    }
}

/// Regression cases found by `cargo fuzz run parquet` (fuzz/README.md), each once a hang or a
/// panic: now read to an error that names the file, with and without `skip_bad`.
#[cfg(feature = "parquet")]
#[test]
fn parquet_regressions_found_by_the_fuzzer() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/fuzz");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "parquet") {
            continue;
        }
        n += 1;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        for skip_bad in [false, true] {
            let opts = ReadOptions {
                skip_bad,
                ..ReadOptions::default()
            };
            match read_records::<SftRecord>(&path, &opts) {
                Ok(l) => {
                    assert!(skip_bad, "{name}: a damaged file read without errors");
                    assert_eq!(l.report.read, l.report.kept + l.report.rejected);
                    assert!(l.report.rejected > 0, "{name}");
                }
                Err(e) => assert!(e.to_string().contains(&name), "{e}"),
            }
            let _ = read_records::<PreferenceRecord>(&path, &opts);
        }
    }
    assert!(n >= 1);
}

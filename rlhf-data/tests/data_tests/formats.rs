//! Every layout: the golden file reads as expected, and write → read gives identical records.

use rlhf_data::*;

use crate::data;

fn read<R: Record>(name: &str) -> Vec<R> {
    let loaded = read_records::<R>(&data(name), &ReadOptions::default()).unwrap();
    assert_eq!(loaded.report.read, loaded.report.kept);
    assert_eq!(loaded.report.rejected, 0);
    loaded.records
}

/// Writes `records` in the standard layout, reads them back, and requires equality.
fn round_trip<R: Record + PartialEq + std::fmt::Debug>(records: &[R]) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.jsonl");
    write_records(&path, records, &FieldNames::default()).unwrap();
    let back = read_records::<R>(&path, &ReadOptions::default())
        .unwrap()
        .records;
    assert_eq!(back, records);
}

fn msg(role: &str, content: &str) -> Message {
    Message {
        role: role.into(),
        content: content.into(),
    }
}

#[test]
fn standard_preference() {
    let r: Vec<PreferenceRecord> = read("preference.jsonl");
    assert_eq!(r.len(), 2);
    assert_eq!(r[0].chosen, Turns::from(" Paris."));
    assert_eq!(
        (r[1].score_chosen, r[1].score_rejected),
        (Some(9.0), Some(2.5))
    );
    round_trip(&r);
}

#[test]
fn hh_rlhf_implicit_prompt() {
    let r: Vec<PreferenceRecord> = read("hh_rlhf.jsonl");
    assert_eq!(r.len(), 3);
    // multi-turn: the prompt runs to the last shared `Assistant:` tag
    let p = r[0].prompt.as_text().unwrap();
    assert!(
        p.ends_with("What's your favorite one?\n\nAssistant:"),
        "{p}"
    );
    assert_eq!(r[0].rejected, Turns::from(" Ass."));
    // responses that share their first word still split at the tag
    assert_eq!(r[2].chosen, Turns::from(" Sure, what do you need?"));
    assert_eq!(
        r[2].rejected,
        Turns::from(" Sure thing — but only tomorrow.")
    );
    round_trip(&r);
}

#[test]
fn ultrafeedback_binarized_conversations() {
    let r: Vec<PreferenceRecord> = read("ultrafeedback_binarized.jsonl");
    assert_eq!(
        r[0].prompt,
        Turns::Messages(vec![msg("user", "Write a haiku about rain.")])
    );
    assert_eq!(
        r[0].rejected,
        Turns::Messages(vec![msg("assistant", "Rain is wet.")])
    );
    assert_eq!(r[1].score_chosen, Some(10.0));
    round_trip(&r);
}

/// TRL's reward-modelling `margin` column is read and written back.
#[test]
fn a_margin_column_is_kept() {
    let r = PreferenceRecord {
        prompt: Turns::from("q"),
        chosen: Turns::from(" a"),
        rejected: Turns::from(" b"),
        score_chosen: None,
        score_rejected: None,
        margin: Some(2.5),
    };
    let obj = r.to_object(&FieldNames::default());
    assert_eq!(obj["margin"], serde_json::json!(2.5));
    round_trip(&[r]);
}

#[test]
fn tldr_preference_and_conversational_preference() {
    let r: Vec<PreferenceRecord> = read("tldr_preference.jsonl");
    assert!(r[0].prompt.as_text().unwrap().ends_with("TL;DR:"));
    round_trip(&r);
    let c: Vec<PreferenceRecord> = read("conversational_preference.jsonl");
    assert_eq!(
        c[0].chosen,
        Turns::Messages(vec![msg("assistant", "Blue.")])
    );
    let t = ChatTemplate::default();
    assert_eq!(
        t.prompt(&c[0].prompt),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    );
    round_trip(&c);
}

#[test]
fn sft_layouts() {
    let pc: Vec<SftRecord> = read("sft_prompt_completion.jsonl");
    assert_eq!(pc[1].completion, Turns::from(" chien"));
    round_trip(&pc);
    let m: Vec<SftRecord> = read("sft_messages.jsonl");
    assert_eq!(
        m[1].prompt,
        Turns::Messages(vec![msg("system", "You are terse."), msg("user", "Time?")])
    );
    assert_eq!(
        m[1].completion,
        Turns::Messages(vec![msg("assistant", "Noon.")])
    );
    round_trip(&m);
    let t: Vec<SftRecord> = read("sft_text.jsonl");
    assert_eq!(t[0].prompt, Turns::from(""));
    round_trip(&t);
}

#[test]
fn prompt_kwise_and_step_layouts() {
    let p: Vec<PromptRecord> = read("prompts.jsonl");
    assert_eq!(
        p[1].prompt,
        Turns::Messages(vec![msg("user", "Tell me a joke.")])
    );
    round_trip(&p);
    let k: Vec<KwiseRecord> = read("kwise.jsonl");
    assert_eq!((k[0].completions.len(), k[0].rewards[2]), (3, -1.5));
    round_trip(&k);
    let s: Vec<StepRecord> = read("steps.jsonl");
    assert_eq!(s[1].labels, vec![false, false]);
    round_trip(&s);
}

#[test]
fn custom_field_names_and_gzip() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::default(),
    );
    writeln!(gz, r#"{{"question": "q", "good": " a", "bad": " b"}}"#).unwrap();
    gz.finish().unwrap();
    let fields = FieldNames {
        prompt: "question".into(),
        chosen: "good".into(),
        rejected: "bad".into(),
        ..FieldNames::default()
    };
    let r = read_records::<PreferenceRecord>(
        &path,
        &ReadOptions {
            fields,
            ..ReadOptions::default()
        },
    )
    .unwrap();
    assert_eq!(r.records[0].chosen, Turns::from(" a"));
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_reads_the_same_records_as_jsonl() {
    use parquet::data_type::{ByteArray, ByteArrayType, DoubleType};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;
    use std::sync::Arc;

    let records: Vec<PreferenceRecord> = read("preference.jsonl");
    let schema = Arc::new(
        parquet::schema::parser::parse_message_type(
            "message schema { REQUIRED BYTE_ARRAY prompt (UTF8); REQUIRED BYTE_ARRAY chosen (UTF8); REQUIRED BYTE_ARRAY rejected (UTF8); OPTIONAL DOUBLE score_chosen; OPTIONAL DOUBLE score_rejected; }",
        )
        .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pref.parquet");
    let props = Arc::new(
        WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build(),
    );
    let mut writer =
        SerializedFileWriter::new(std::fs::File::create(&path).unwrap(), schema, props).unwrap();
    let mut group = writer.next_row_group().unwrap();
    for field in ["prompt", "chosen", "rejected"] {
        let values: Vec<ByteArray> = records
            .iter()
            .map(|r| {
                let t = match field {
                    "prompt" => &r.prompt,
                    "chosen" => &r.chosen,
                    _ => &r.rejected,
                };
                ByteArray::from(t.as_text().unwrap())
            })
            .collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<ByteArrayType>()
            .write_batch(&values, None, None)
            .unwrap();
        col.close().unwrap();
    }
    for field in ["score_chosen", "score_rejected"] {
        let scores: Vec<Option<f64>> = records
            .iter()
            .map(|r| {
                if field == "score_chosen" {
                    r.score_chosen
                } else {
                    r.score_rejected
                }
            })
            .collect();
        let values: Vec<f64> = scores.iter().flatten().copied().collect();
        let def: Vec<i16> = scores.iter().map(|s| i16::from(s.is_some())).collect();
        let mut col = group.next_column().unwrap().unwrap();
        col.typed::<DoubleType>()
            .write_batch(&values, Some(&def), None)
            .unwrap();
        col.close().unwrap();
    }
    group.close().unwrap();
    writer.close().unwrap();
    let back = read_records::<PreferenceRecord>(&path, &ReadOptions::default()).unwrap();
    assert_eq!(back.records, records);
    assert_eq!(back.report.read, 2);
}

#[cfg(feature = "parquet")]
#[test]
fn parquet_files_written_by_pyarrow_read_like_their_jsonl() {
    // written by xtask/fixtures/make_parquet_fixtures.py with pyarrow, as the hub's files are:
    // snappy pages, an optional score column with a null, nested lists of structs for messages
    let pref: Vec<PreferenceRecord> = read("preference.parquet");
    assert_eq!(pref, read::<PreferenceRecord>("preference.jsonl"));
    assert_eq!(pref[1].score_chosen, Some(9.0));
    let sft: Vec<SftRecord> = read("sft_messages.parquet");
    assert_eq!(sft, read::<SftRecord>("sft_messages.jsonl"));
}

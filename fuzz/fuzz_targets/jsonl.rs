//! JSONL records of every kind, plain and gzip-compressed.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use rlhf_data::{
    KwiseRecord, PreferenceRecord, PromptRecord, SftRecord, StepRecord, UnpairedRecord,
};

fuzz_target!(|data: &[u8]| {
    for name in ["input.jsonl", "input.jsonl.gz"] {
        let path = common::scratch().join(name);
        std::fs::write(&path, data).unwrap();
        common::read_all::<PreferenceRecord>(&path);
        common::read_all::<SftRecord>(&path);
        common::read_all::<PromptRecord>(&path);
        common::read_all::<KwiseRecord>(&path);
        common::read_all::<StepRecord>(&path);
        common::read_all::<UnpairedRecord>(&path);
    }
});

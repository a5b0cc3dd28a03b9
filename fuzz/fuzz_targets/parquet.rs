//! Parquet files of preference and SFT records.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use rlhf_data::{PreferenceRecord, SftRecord};

fuzz_target!(|data: &[u8]| {
    // The reader turns the parquet crate's panics on damaged files into errors (catch_unwind);
    // libfuzzer-sys's hook would abort at the panic first, so restore the default hook. A panic
    // the reader does not catch still reaches libfuzzer-sys's own catch_unwind, which aborts.
    static DEFAULT_HOOK: std::sync::Once = std::sync::Once::new();
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let path = common::scratch().join("input.parquet");
    std::fs::write(&path, data).unwrap();
    common::read_all::<PreferenceRecord>(&path);
    common::read_all::<SftRecord>(&path);
});

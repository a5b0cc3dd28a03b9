//! The bench's TOML run config: parsed and validated, or refused with a message.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(cfg) = rlhf_bench::RunConfig::from_toml(text)
    {
        let _ = cfg.validate();
    }
});

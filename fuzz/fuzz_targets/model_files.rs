//! A Hugging Face model directory: the input is `config.json`, a 0xFF byte (which UTF-8 text
//! never holds), then `model.safetensors`. Loading it as a causal LM and as a scalar model must
//! give a model or an error naming a file of the directory, never a panic or a huge allocation.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0xFF).unwrap_or(data.len());
    let dir = common::scratch().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), &data[..split]).unwrap();
    std::fs::write(
        dir.join("model.safetensors"),
        data.get(split + 1..).unwrap_or(&[]),
    )
    .unwrap();
    let device = rlhf_core::parse_device("flex").unwrap();
    let dir_name = dir.to_string_lossy().into_owned();
    if let Err(e) = rlhf_models::load_pretrained(&dir, &device) {
        assert!(e.to_string().contains(&dir_name), "error without the file: {e}");
    }
    if let Err(e) = rlhf_models::load_scalar_pretrained(&dir, &device) {
        assert!(e.to_string().contains(&dir_name), "error without the file: {e}");
    }
});

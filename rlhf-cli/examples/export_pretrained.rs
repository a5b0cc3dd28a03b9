//! Loads a Hugging Face model directory and exports it again with `save_pretrained`:
//! `cargo run -p rlhf-cli --example export_pretrained -- IN_DIR OUT_DIR`.
//! `cargo xtask fixtures` uses it to check that `transformers` loads what rlhf-models writes (an example of rlhf-cli, whose build of burn is the workspace's).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, output] = args.as_slice() else {
        return Err("usage: export_pretrained IN_DIR OUT_DIR".into());
    };
    let device = rlhf_core::device_from_env()?;
    let (config, model) = rlhf_models::load_pretrained(input.as_ref(), &device)?;
    rlhf_models::save_pretrained(&model, &config, output.as_ref())?;
    println!("exported {input} to {output}");
    Ok(())
}

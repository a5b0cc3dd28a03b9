//! `rlhf serve`: this machine's devices for trainers elsewhere (feature `remote`). A trainer
//! uses them with `--device ws://HOST:PORT` (or one replica per server with
//! `--devices ws://A:P,ws://B:P`); the tensors' work runs here.

use std::net::TcpListener;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// The address to listen on (`0.0.0.0:PORT` for every interface).
    #[arg(long, default_value = "127.0.0.1:3000")]
    pub bind: String,
    /// The local devices to serve (comma-separated; the first is a client's `ws://` device).
    #[arg(long, value_delimiter = ',', default_value = "flex")]
    pub device: Vec<String>,
}

/// Serves until SIGINT or SIGTERM.
pub fn run(args: &ServeArgs) -> Result<()> {
    let devices = args
        .device
        .iter()
        .map(|d| rlhf_core::parse_device(d))
        .collect::<rlhf_core::Result<Vec<_>>>()?;
    let listener =
        TcpListener::bind(&args.bind).with_context(|| format!("listening on {}", args.bind))?;
    tracing::info!(
        "serving {} on ws://{}",
        args.device.join(", "),
        listener.local_addr()?
    );
    rlhf_core::remote::serve(devices, listener)?;
    Ok(())
}

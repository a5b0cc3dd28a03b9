//! Devices on another machine, through burn-remote over WebSocket (feature `remote`).
//!
//! A machine with the hardware serves its devices ([`serve`], or `rlhf serve`); a trainer
//! anywhere uses one by its address, `--device ws://HOST:PORT` ([`crate::parse_device`]). The
//! client keeps the autodiff graph and the optimizer; every tensor operation runs on the server.
//! Data-parallel replicas may each live on a different server (`--devices ws://A,ws://B`): each
//! replica's gradients come back through the client, which sums them on the first device before
//! the one optimizer step. Collectives between servers (gradients reduced server to server) are
//! not in burn 0.22.

use std::net::TcpListener;

use burn::remote::RemoteHost;
use burn::server::{RemoteServer, WebSocketTransport};
use burn::tensor::Device;

use crate::{Error, Result};

/// The first device of the burn-remote server at `address` (`ws://HOST:PORT`). Waits for the
/// server while burn's client retries its connection, then fails naming the address.
pub fn connect(address: &str) -> Result<Device> {
    Device::remote_options(&RemoteHost::websocket(address))
        .init()
        .map_err(|e| Error::Device(format!("`{address}`: {e}")))
}

/// Serves `devices` (local devices, without autodiff) to remote clients on `listener` until the
/// process is told to stop (SIGINT or SIGTERM). Blocks the calling thread.
pub fn serve(devices: Vec<Device>, listener: TcpListener) -> Result<()> {
    let devices: Vec<Device> = devices.into_iter().map(Device::without_autodiff).collect();
    RemoteServer::new(devices)
        .serve(WebSocketTransport::from_listener(listener))
        .map_err(|e| Error::Device(format!("serving remote devices: {e}")))
}

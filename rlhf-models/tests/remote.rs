// A binary of its own: it needs the `remote` feature (a separate build of burn), and it serves
// devices from this process.
//! Training on burn-remote servers: one SFT step on a server's device ends at the weights of the
//! same step on the local device, and two data-parallel replicas, one on each of two servers, end
//! at the weights of one local replica. The servers are flex servers on 127.0.0.1, each on a
//! thread of this process; the client keeps the autodiff graph and the optimizer.
//!
//! `cargo test --workspace --features rlhf-models/remote --test remote`

use std::net::TcpListener;
use std::sync::OnceLock;

use burn::module::Module;
use burn::tensor::Device;
use rlhf_core::train::checkpoint::parameter_values;
use rlhf_core::train::{Replicas, RunOptions};
use rlhf_models::sft::Example;
use rlhf_models::{CausalLm, SftConfig, train_sft};

/// Serves a flex device on a free port of 127.0.0.1 from a thread of its own; its address.
fn serve_flex() -> String {
    // warnings only: without a subscriber of the process's own, the server installs one that
    // logs every transfer
    let _ = tracing_subscriber::fmt().with_env_filter("warn").try_init();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = format!("ws://{}", listener.local_addr().unwrap());
    let flex = rlhf_core::parse_device("flex").unwrap();
    std::thread::spawn(move || rlhf_core::remote::serve(vec![flex], listener).unwrap());
    address
}

/// The two servers of the binary, started by the first test that asks.
fn servers() -> &'static [String; 2] {
    static SERVERS: OnceLock<[String; 2]> = OnceLock::new();
    SERVERS.get_or_init(|| [serve_flex(), serve_flex()])
}

/// The test kit's tiny Llama, initialised on `local` (the servers' generator is this process's
/// flex generator too, so weights are made in one place and sent).
fn model(local: &Device) -> CausalLm {
    rlhf_testkit::tiny_llama(local)
}

/// The first 8 of the test kit's SFT examples.
fn data() -> Vec<Example> {
    rlhf_testkit::sft_examples().into_iter().take(8).collect()
}

/// The weights after one SFT step (the whole data as one batch) from `init` on `device` (with
/// autodiff) and `replicas`.
fn one_step(init: &CausalLm, device: &Device, replicas: Replicas) -> Vec<f32> {
    let train = data();
    let cfg = SftConfig {
        epochs: 1,
        batch_size: train.len(),
        optimizer: rlhf_testkit::replicas::gradient_revealing_optimizer(),
        seed: 3,
        ..SftConfig::default()
    };
    let options = RunOptions {
        replicas,
        ..RunOptions::quiet()
    };
    let start = init.clone().fork(device);
    let (trained, report) = train_sft(start, &train, &[], &cfg, &options, device).unwrap();
    assert_eq!(report.steps, 1);
    parameter_values(&trained)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn an_sft_step_on_a_remote_server_is_the_local_step() {
    let local = rlhf_core::parse_device("flex").unwrap().autodiff();
    let init = model(&local);
    let remote = rlhf_core::parse_device(&servers()[0]).unwrap().autodiff();
    let here = one_step(&init, &local, Replicas::new(vec![local.clone()]));
    let there = one_step(&init, &remote, Replicas::new(vec![remote.clone()]));
    let moved = max_diff(&parameter_values(&init), &here);
    let diff = max_diff(&here, &there);
    eprintln!("remote step: moved {moved:.3e}, remote − local {diff:.3e}");
    assert!(moved > 1e-2, "the step moved the weights by {moved} only");
    assert!(
        diff <= 1e-6,
        "the remote step differs from the local one by {diff}"
    );
}

#[test]
fn replicas_on_two_servers_take_the_step_of_one_local_replica() {
    let local = rlhf_core::parse_device("flex").unwrap().autodiff();
    let init = model(&local);
    let [a, b] = servers()
        .each_ref()
        .map(|s| rlhf_core::parse_device(s).unwrap().autodiff());
    let one = one_step(&init, &local, Replicas::new(vec![local.clone()]));
    let two = one_step(&init, &a, Replicas::new(vec![a.clone(), b]));
    let diff = max_diff(&one, &two);
    eprintln!("two remote replicas − one local: {diff:.3e}");
    assert!(
        diff <= 1e-5,
        "two remote replicas differ from one local by {diff}"
    );
}

//! The reference cache is keyed by the reference's weights, the data and how log-probs are read
//! (truncation, temperature): the same weights loaded twice share a key, a changed weight, token,
//! truncation or temperature does not, and a stale file is never read.

use rlhf_dpo::{Group, LogpSpec, RefCache, data_hash, weights_hash};
use rlhf_models::CausalLm;

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlhf-models/tests/fixtures/hf/tiny-neox")
}

/// The fixture's weights (every load gets fresh parameter ids).
fn loaded() -> CausalLm {
    rlhf_models::load_pretrained(&fixture(), &rlhf_core::device_from_env().unwrap())
        .unwrap()
        .1
}

/// Random weights of the same shape.
fn random() -> CausalLm {
    let device = rlhf_core::device_from_env().unwrap();
    let c = rlhf_models::config_from_json(&fixture().join("config.json")).unwrap();
    CausalLm::init(&c, &device).unwrap()
}

fn groups(last: u32) -> Vec<Group> {
    vec![
        Group {
            prompt: vec![1, 2],
            responses: vec![vec![3, 0], vec![4, 0]],
            rewards: None,
        },
        Group {
            prompt: vec![5],
            responses: vec![vec![6, 0], vec![7, last]],
            rewards: None,
        },
    ]
}

#[test]
fn keys_follow_weights_and_data() {
    let (a, a_again, b) = (loaded(), loaded(), random());
    assert_eq!(
        weights_hash(&a),
        weights_hash(&a_again),
        "same values, different parameter ids"
    );
    assert_ne!(weights_hash(&a), weights_hash(&b));
    assert_eq!(data_hash(&groups(0)), data_hash(&groups(0)));
    assert_ne!(data_hash(&groups(0)), data_hash(&groups(1)));

    let dir = tempfile::tempdir().unwrap();
    let cache = RefCache::new(Some(dir.path()));
    let fake = |v: f32| move || Ok(vec![vec![v, v], vec![v, v]]);
    let spec = LogpSpec {
        truncation: None,
        temperature: 1.0,
        ld_alpha: None,
    };
    // without LD-DPO the key's bytes are those of the caches written before it had a field
    assert_eq!(
        serde_json::to_string(&spec).unwrap(),
        r#"{"truncation":null,"temperature":1.0}"#
    );
    let (first, computed) = cache
        .get_or_compute(&a, &groups(0), &spec, fake(1.0))
        .unwrap();
    assert!(computed && first[0][0] == 1.0);
    let (again, computed) = cache
        .get_or_compute(&a_again, &groups(0), &spec, fake(2.0))
        .unwrap();
    assert!(!computed && again[0][0] == 1.0, "reused");
    let (other, computed) = cache
        .get_or_compute(&b, &groups(0), &spec, fake(3.0))
        .unwrap();
    assert!(computed && other[0][0] == 3.0, "new weights, new key");
    let (other, computed) = cache
        .get_or_compute(&a, &groups(1), &spec, fake(4.0))
        .unwrap();
    assert!(computed && other[0][0] == 4.0, "new data, new key");
    for (what, other_spec) in [
        (
            "truncation",
            LogpSpec {
                truncation: Some((8, 1)),
                ..spec
            },
        ),
        (
            "temperature",
            LogpSpec {
                temperature: 0.7,
                ..spec
            },
        ),
        (
            "ld_alpha",
            LogpSpec {
                ld_alpha: Some(0.5),
                ..spec
            },
        ),
    ] {
        let (other, computed) = cache
            .get_or_compute(&a, &groups(0), &other_spec, fake(6.0))
            .unwrap();
        assert!(computed && other[0][0] == 6.0, "new {what}, new key");
    }
    // a corrupt cache file is an error that says how to recover, not a silent reuse
    for e in std::fs::read_dir(dir.path()).unwrap() {
        std::fs::write(e.unwrap().path(), b"{ torn").unwrap();
    }
    let err = cache
        .get_or_compute(&a, &groups(0), &spec, fake(5.0))
        .unwrap_err()
        .to_string();
    assert!(err.contains("delete it"), "{err}");
}

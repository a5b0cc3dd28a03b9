//! The pipeline on a user's own preference file (`task.name = "preferences"`): read, split,
//! SFT, reward model, DPO and the RM's judgement, end to end on a file written here.

use std::io::Write;
use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rlhf_bench::{RunConfig, run};

const WORDS: [&str; 12] = [
    "apples", "rivers", "trains", "clocks", "gardens", "violins", "maps", "lanterns", "bridges",
    "kettles", "owls", "tulips",
];

/// A preference file whose labels follow one rule a model can learn: the chosen reply answers
/// the question politely and names its topic, the rejected one brushes it off. The
/// demonstrations are half one kind and half the other, so the SFT policy is a coin flip
/// between them and a method that learns the labels has room to improve on it.
fn write_data(dir: &Path, records: usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut prefs = std::fs::File::create(dir.join("prefs.jsonl")).unwrap();
    let mut demos = std::fs::File::create(dir.join("demos.jsonl")).unwrap();
    for i in 0..records {
        let (a, b) = (
            WORDS[rng.random_range(0..WORDS.len())],
            WORDS[rng.random_range(0..WORDS.len())],
        );
        let prompt = format!("Question {i}: what about {a} and {b}?\nAnswer:");
        let polite = format!(" {a} and {b} are lovely, thank you.");
        let rude = " go away.".to_string();
        let line = serde_json::json!({"prompt": prompt, "chosen": polite, "rejected": rude});
        writeln!(prefs, "{line}").unwrap();
        let completion = if i % 2 == 0 { polite } else { rude };
        let demo = serde_json::json!({"prompt": prompt, "completion": completion});
        writeln!(demos, "{demo}").unwrap();
    }
}

fn config(dir: &Path, extra: &str) -> RunConfig {
    let text = format!(
        r#"
seed = 0
[task]
name = "preferences"
vocab_size = 320
eval_prompts = 48
[task.data]
preferences = "prefs.jsonl"
demonstrations = "demos.jsonl"
eval_share = 0.2
max_prompt_tokens = 24
max_response_tokens = 16
[sft]
policy_size = "xs"
epochs = 4
[rm]
size = "xs"
epochs = 2
lr = 2e-3
[judge]
max_new_tokens = 16
{extra}
"#
    );
    let path = dir.join("run.toml");
    std::fs::write(&path, text).unwrap();
    RunConfig::from_file(&path).unwrap()
}

/// DPO on the file's pairs: the reward model learns the labels, DPO's implicit reward orders the
/// held-out pairs, and the policy's replies beat the SFT policy's by the RM's judgement. A
/// broken loss (a flipped sign, a reward read at a padded position) fails all three.
#[test]
fn dpo_on_a_preference_file_learns_its_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path(), 300);
    let cfg = config(
        dir.path(),
        "[method]\nkind = \"dpo\"\ndpo_epochs = 4\ndpo_lr = 1e-3\ndpo_beta = 0.1\n",
    );
    let result = run(&cfg, &dir.path().join("cache"), &dir.path().join("work")).unwrap();
    let m = &result.metrics;
    for (k, v) in m {
        println!("{k:32} {v}");
    }
    // every record is accounted for
    assert_eq!(m["data/records"], 300.0);
    assert_eq!(
        m["data/train_pairs"] + m["data/eval_pairs"] + m["data/pairs_dropped"],
        300.0
    );
    assert!(m["data/eval_pairs"] >= 30.0, "{}", m["data/eval_pairs"]);
    assert_eq!(m["data/demos"], 300.0);
    // every stage reports the tokens it trained on
    for stage in ["sft", "rm", "method"] {
        assert!(m[&format!("tokens/{stage}")] > 0.0, "tokens/{stage}");
    }
    // the labels are learnable: a reward model that learns nothing is at 0.5
    assert!(m["rm/accuracy"] > 0.9, "rm/accuracy {}", m["rm/accuracy"]);
    assert!(
        m["method/eval_reward_accuracy"] > 0.8,
        "DPO's held-out reward accuracy {}",
        m["method/eval_reward_accuracy"]
    );
    // the SFT policy is half rude; the DPO policy must be judged better on most prompts
    assert!(
        m["proxy/win_rate_vs_sft"] > 0.6,
        "win rate vs SFT {}",
        m["proxy/win_rate_vs_sft"]
    );
    assert!(m["proxy/gain"] > 0.0, "proxy gain {}", m["proxy/gain"]);
    assert!(m["kl"] > 0.0 && m["kl"].is_finite(), "kl {}", m["kl"]);

    // and by the rule itself, independent of the labels' plumbing: the policy answers politely
    // far more often than the SFT policy (a pipeline that swapped chosen and rejected
    // everywhere would pass every check above and fail this one)
    let judged = std::fs::read_to_string(dir.path().join("work/judged.jsonl")).unwrap();
    let (mut polite, mut sft_polite, mut n) = (0.0, 0.0, 0.0);
    for line in judged.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let is_polite = |k: &str| f64::from(u8::from(v[k].as_str().unwrap().contains("lovely")));
        polite += is_polite("response");
        sft_polite += is_polite("sft_response");
        n += 1.0;
    }
    assert_eq!(n, 48.0);
    println!(
        "polite replies: policy {}, SFT {}",
        polite / n,
        sft_polite / n
    );
    assert!(
        polite / n > 0.6 && polite / n > sft_polite / n + 0.3,
        "polite replies: policy {}, SFT {}",
        polite / n,
        sft_polite / n
    );
}

/// A bad record stops the run before any training, naming the file, the line and the field; a
/// config's data paths are read from its own directory.
#[test]
fn a_bad_record_names_its_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    write_data(dir.path(), 20);
    let cfg = config(dir.path(), "");
    let prefs = dir.path().join("prefs.jsonl");
    assert_eq!(Path::new(&cfg.task.data.preferences), prefs);
    let mut text = std::fs::read_to_string(&prefs).unwrap();
    text.push_str("{\"prompt\": \"Q?\", \"chosen\": \" yes\"}\n");
    std::fs::write(&prefs, text).unwrap();
    let err = run(&cfg, &dir.path().join("cache"), &dir.path().join("work"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&format!("{}:21", prefs.display())) && err.contains("rejected"),
        "{err}"
    );
    assert!(!dir.path().join("cache").exists(), "nothing is trained");

    // a missing file is an error naming it, not a panic
    let mut gone = cfg.clone();
    gone.task.data.preferences = dir.path().join("nope.jsonl").display().to_string();
    let err = run(&gone, &dir.path().join("cache"), &dir.path().join("work"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope.jsonl"), "{err}");
}

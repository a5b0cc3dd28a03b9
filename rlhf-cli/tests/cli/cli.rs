//! The `rlhf` command run as a user runs it, on the committed tiny checkpoints (`tiny-pythia`:
//! GPT-NeoX with Pythia's tokenizer conventions; `tiny-qwen2-chat`: a Qwen2 chat model with its
//! ChatML template and EOS `<|im_end|>`; `tiny-llama3-chat`: Llama 3's BOS before every text, EOS
//! `<|eot_id|>`, no PAD) and the shipped TL;DR-shaped sample: every subcommand
//! end to end, outputs that load and differ from their inputs, learning where it should happen,
//! exact resume after a SIGKILL, and the option handling (help, misspelled flags and keys).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use burn::module::Module;
use rlhf_core::host::to_f32_vec;
use rlhf_core::train::metrics::read_metrics;
use serde_json::{Value, json};

fn rlhf<S: AsRef<str>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args.iter().map(AsRef::as_ref))
        .output()
        .unwrap()
}

/// The command line, for a failure's message.
fn line<S: AsRef<str>>(args: &[S]) -> String {
    args.iter().map(AsRef::as_ref).collect::<Vec<_>>().join(" ")
}

/// Runs `rlhf` and asserts it succeeded, returning stdout.
fn ok<S: AsRef<str>>(args: &[S]) -> String {
    let out = rlhf(args);
    assert!(
        out.status.success(),
        "rlhf {}\n{}",
        line(args),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `rlhf` and asserts it failed, saying `says` on stderr.
fn refused<S: AsRef<str>>(args: &[S], says: &str) {
    let out = rlhf(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains(says),
        "rlhf {}: {err}",
        line(args)
    );
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(name: &str) -> String {
    root()
        .join("rlhf-models/tests/fixtures/hf")
        .join(name)
        .display()
        .to_string()
}

fn sample(name: &str) -> String {
    root()
        .join("rlhf-cli/data/tldr")
        .join(name)
        .display()
        .to_string()
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The first `n` lines of a sample file, in `dir`.
fn head(name: &str, n: usize, dir: &Path) -> String {
    let text = std::fs::read_to_string(sample(name)).unwrap();
    let path = dir.join(name);
    let lines: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    s(&path)
}

fn metric(dir: &Path, name: &str) -> Vec<f64> {
    read_metrics(&dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .iter()
        .filter_map(|l| l.get(name)?.as_f64())
        .collect()
}

/// `completions.jsonl` in `dir`: its text, its rows and their steps.
fn completions(dir: &Path) -> (String, Vec<Value>, Vec<u64>) {
    let text = std::fs::read_to_string(dir.join("completions.jsonl")).unwrap();
    let rows: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    (text, rows, steps)
}

/// Logits of a fixed probe under the checkpoint in `dir`.
fn probe(dir: &str) -> Vec<f32> {
    let device = rlhf_core::parse_device("flex").unwrap();
    let (_, m) = rlhf_models::load_pretrained(Path::new(dir), &device).unwrap();
    let ids: Vec<u32> = (1..13).collect();
    to_f32_vec(
        m.valid()
            .forward(&m.input(&ids, &[1; 12], 2).unwrap(), None),
    )
}

fn differ(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-4)
}

/// TR-DPO's flags: the reference moves to α·policy + (1 − α)·reference every τ optimizer steps.
fn sync(alpha: &'static str, steps: &'static str) -> [&'static str; 5] {
    [
        "--sync-ref-model",
        "--ref-model-mixup-alpha",
        alpha,
        "--ref-model-sync-steps",
        steps,
    ]
}

/// Runs `rlhf args` (whose output directory is `out`), SIGKILLs it once `metrics.jsonl` has
/// `steps` lines, checks that it had not finished, and runs it again to the end (it resumes).
fn kill_then_resume(args: &[String], out: &Path, steps: usize) {
    kill_then_resume_at(args, out, "loss", steps);
}

/// [`kill_then_resume`], counting the lines that log `metric_name`.
fn kill_then_resume_at(args: &[String], out: &Path, metric_name: &str, steps: usize) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rlhf"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while metric(out, metric_name).len() < steps {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it was killed"
        );
        assert!(
            Instant::now() < deadline,
            "the run did not reach step {steps}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !out.join("model.safetensors").exists(),
        "killed before the end"
    );
    ok(args);
}

#[test]
fn help_lists_every_option_and_mistakes_are_named() {
    for (sub, flags) in [
        (
            "sft",
            &[
                "--model",
                "--data",
                "--out",
                "--learning-rate",
                "--packing",
                "--packing-strategy",
                "--config",
                "--print-config",
            ][..],
        ),
        (
            "rm",
            &[
                "--center-rewards-coefficient",
                "--step-separator",
                "--per-device-train-batch-size",
            ],
        ),
        (
            "dpo",
            &[
                "--loss",
                "--beta",
                "--ref",
                "--ref-cache",
                "--gradient-accumulation-steps",
                "--lora-rank",
                "--lora-target-modules",
                "--save-adapter",
            ],
        ),
        (
            "ppo",
            &[
                "--prompts",
                "--reward",
                "--critic",
                "--kl-estimator",
                "--num-ppo-epochs",
                "--vf-coef",
            ],
        ),
        (
            "kto",
            &[
                "--desirable-weight",
                "--undesirable-weight",
                "--beta",
                "--ref-cache",
                "--per-device-train-batch-size",
            ],
        ),
        (
            "online-dpo",
            &[
                "--prompts",
                "--reward",
                "--num-generations",
                "--missing-eos-penalty",
                "--loss",
                "--rounds",
            ],
        ),
        (
            "distill",
            &[
                "--teacher",
                "--prompts",
                "--beta",
                "--temperature",
                "--max-completion-length",
            ],
        ),
        (
            "grpo",
            &[
                "--num-generations",
                "--beta",
                "--cliprange",
                "--sapo-temperature-pos",
                "--vespo-lambda-neg",
                "--off-policy-mask-threshold",
            ],
        ),
        ("rloo", &["--samples-per-prompt"]),
        ("reinforce-pp", &["--gamma"]),
        (
            "dapo",
            &[
                "--epsilon-high",
                "--loss-type",
                "--dynamic-sampling",
                "--overlong-buffer",
            ],
        ),
        ("gspo", &["--importance-sampling-level"]),
        ("cispo", &["--rollout-is-cap", "--overlong-penalty"]),
        (
            "generate",
            &["--prompt", "--temperature", "--top-p", "--json"],
        ),
        ("eval", &["--reward", "--ref", "--samples-per-prompt"]),
        ("check", &["--kind", "--skip-bad"]),
        ("plot", &["--out"]),
    ] {
        let help = ok(&[sub, "--help"]);
        for f in flags {
            assert!(help.contains(f), "rlhf {sub} --help lacks {f}:\n{help}");
        }
        // every option shows its default, where it has one
        if ["sft", "rm", "dpo", "kto", "online-dpo", "distill"].contains(&sub) {
            assert!(help.contains("[default: 8]"), "{help}");
        }
    }
    // a misspelled flag is refused with the closest one (clap's usage error: exit 2)
    let out = rlhf(&["sft", "--lerning-rate", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--learning-rate"), "{err}");
    // TRL's spelling is the same flag
    let text = ok(&[
        "dpo",
        "--model_name_or_path",
        "m",
        "--learning_rate",
        "0.5",
        "--print-config",
    ]);
    assert!(
        text.contains("learning_rate = 0.5") && text.contains("model = \"m\""),
        "{text}"
    );
    // a boolean option bare is true, and takes the values TRL's parser takes (True, yes, 0, …)
    let text = ok(&[
        "sft",
        "--model_name_or_path",
        "m",
        "--assistant_only_loss",
        "--completion_only_loss",
        "False",
        "--gradient_checkpointing",
        "--use_peft",
        "yes",
        "--print-config",
    ]);
    for line in [
        "assistant_only_loss = true",
        "completion_only_loss = false",
        "gradient_checkpointing = true",
        "use_peft = true",
    ] {
        assert!(text.contains(line), "{line}: {text}");
    }
    // a misspelled key of a config file too, and a flag wins over the file
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("dpo.toml");
    std::fs::write(&cfg, "beta = 0.3\nlabel_smothing = 0.1\n").unwrap();
    let out = rlhf(&["dpo", "--config", &s(&cfg), "--print-config"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("did you mean `label_smoothing`"),
        "{err}"
    );
    std::fs::write(&cfg, "beta = 0.3\nloss = \"ipo\"\n").unwrap();
    let text = ok(&[
        "dpo",
        "--config",
        &s(&cfg),
        "--beta",
        "0.2",
        "--print-config",
    ]);
    assert!(
        text.contains("beta = 0.2") && text.contains("loss = \"ipo\""),
        "{text}"
    );
    // TRL's `--scale_rewards false` is Dr. GRPO's unscaled advantage; a method whose
    // advantages are not group-normalised refuses the flag
    let text = ok(&["grpo", "--scale_rewards", "false", "--print-config"]);
    assert!(text.contains("scale_rewards = \"none\""), "{text}");
    refused(
        &[
            "rloo",
            "--model",
            &fixture("tiny-pythia"),
            "--prompts",
            &sample("prompts.jsonl"),
            "--reward",
            "length",
            "--out",
            &s(&dir.path().join("rloo")),
            "--scale-rewards",
            "none",
        ],
        "--scale-rewards scales group-normalised",
    );
}

/// `rlhf sft` from the `tiny-pythia` fixture on `data` into `out`, with `extra` options.
fn sft_on_pythia(data: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let model = fixture("tiny-pythia");
    argv(
        &["sft", "--model", &model, "--data", data, "--out", &s(out)],
        extra,
    )
}

/// With `--packing` the learning-rate schedule counts the packed rows, which are far fewer than
/// the examples: the linear decay reaches its end at the run's last step (counted from the 64
/// examples, it would stop at half the peak), under each strategy.
#[test]
fn a_packed_run_decays_its_learning_rate_over_its_own_steps() {
    let dir = tempfile::tempdir().unwrap();
    let data = head("sft.jsonl", 64, dir.path());
    for strategy in ["bfd", "bfd_split", "wrapped"] {
        let out = dir.path().join(strategy);
        ok(&sft_on_pythia(
            &data,
            &out,
            &[
                "--packing",
                "256",
                "--packing-strategy",
                strategy,
                "--per-device-train-batch-size",
                "4",
                "--learning-rate",
                "1e-3",
                "--max-length",
                "256",
            ],
        ));
        let lr = metric(&out, "learning_rate");
        let (steps, last) = (lr.len(), *lr.last().unwrap());
        assert!(
            (2..16).contains(&steps),
            "{strategy}: {steps} steps: {lr:?}"
        );
        assert!(last <= 1e-3 / steps as f64 + 1e-12, "{strategy}: {lr:?}");
    }
}

/// With `--packing`, training examples are not cut to `--max-length` first (TRL does not truncate
/// what it packs): at `--max-length 24` a `bfd_split` run trains on every target token, as many
/// as an unpacked run whose `--max-length` cuts nothing, where an unpacked run at 24 trains on
/// fewer; a `bfd` run whose rows the prompts fill warns that it trains on no response.
#[test]
fn packed_examples_are_not_cut_to_max_length() {
    let dir = tempfile::tempdir().unwrap();
    let data = head("sft.jsonl", 16, dir.path());
    let tokens = |name: &str, extra: &[&str]| -> u64 {
        let args = [&["--eval-share", "0"][..], extra].concat();
        let run = rlhf(&sft_on_pythia(&data, &dir.path().join(name), &args));
        let log = String::from_utf8_lossy(&run.stderr).to_string();
        assert!(run.status.success(), "{log}");
        let line = log
            .lines()
            .find(|l| l.contains(" target tokens"))
            .expect(&log);
        let words: Vec<&str> = line.split_whitespace().collect();
        let at = words.iter().position(|w| *w == "target").unwrap();
        words[at - 1].parse().unwrap()
    };
    let whole = tokens("whole", &["--max-length", "4096"]);
    let cut = tokens("cut", &["--max-length", "24"]);
    let packing = ["--packing", "512", "--packing-strategy", "bfd_split"];
    let packed = tokens("packed", &[&["--max-length", "24"][..], &packing].concat());
    assert!(cut < whole, "{cut} against {whole}");
    assert_eq!(packed, whole);
    // best-fit packing keeps an example's first --packing tokens: prompts that fill them leave
    // no response token to train on, and the run says so
    let bfd = [
        "--eval-share",
        "0",
        "--packing",
        "24",
        "--packing-strategy",
        "bfd",
    ];
    let run = rlhf(&sft_on_pythia(&data, &dir.path().join("bfd"), &bfd));
    let log = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success() && log.contains("16 of 16 training examples have prompts"),
        "{log}"
    );
}

/// `--max-steps` overrides `--num-train-epochs`, as in transformers: 12 records in batches of 4
/// are 3 steps an epoch, and `--max-steps 7` takes 7, into a third epoch, with the linear
/// schedule spanning those 7 (its last step at `lr/7`); `-1`, transformers' default, is off.
#[test]
fn max_steps_overrides_the_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let data = head("sft.jsonl", 12, dir.path());
    let run = |name: &str, max_steps: &str| -> PathBuf {
        let out = dir.path().join(name);
        ok(&sft_on_pythia(
            &data,
            &out,
            &[
                "--eval-share",
                "0",
                "--per-device-train-batch-size",
                "4",
                "--num-train-epochs",
                "2",
                "--learning-rate",
                "7e-4",
                "--logging-steps",
                "1",
                &format!("--max-steps={max_steps}"),
            ],
        ));
        out
    };
    let capped = run("capped", "7");
    let lr = metric(&capped, "learning_rate");
    assert_eq!(lr.len(), 7, "{lr:?}");
    assert!((lr[6] - 1e-4).abs() < 1e-9, "{lr:?}");
    let epochs = run("epochs", "-1");
    assert_eq!(metric(&epochs, "learning_rate").len(), 6);
}

/// `rlhf sft` on both checkpoints: the held-out loss falls, the output is a Hugging Face
/// directory that loads and differs from its input. The chat model trains on `messages`
/// records through its own template and afterwards writes `<|im_end|>` once a reply is complete,
/// not before.
#[test]
fn sft_lowers_the_eval_loss_and_writes_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    // the TL;DR sample as conversations, for the chat model
    let chat = dir.path().join("chat.jsonl");
    let text = std::fs::read_to_string(sample("sft.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            json!({"messages": [
                {"role": "user", "content": r["prompt"]},
                {"role": "assistant", "content": r["completion"].as_str().unwrap().trim()},
            ]})
            .to_string()
        })
        .collect();
    std::fs::write(&chat, lines.join("\n")).unwrap();
    for (model, data) in [
        ("tiny-pythia", sample("sft.jsonl")),
        ("tiny-qwen2-chat", s(&chat)),
        ("tiny-llama3-chat", sample("sft.jsonl")),
    ] {
        let out = dir.path().join(model);
        ok(&[
            "sft",
            "--model",
            &fixture(model),
            "--data",
            &data,
            "--out",
            &s(&out),
            "--learning-rate",
            "3e-3",
            "--num-train-epochs",
            "3",
            "--eval-share",
            "0.1",
            "--eval-steps",
            "1",
            "--max-length",
            "256",
        ]);
        let eval = metric(&out, "eval_loss");
        let (first, last) = (eval[0], *eval.last().unwrap());
        assert!(last < 0.8 * first, "{model}: eval loss {first} → {last}");
        assert!(
            differ(&probe(&fixture(model)), &probe(&s(&out))),
            "{model}: unchanged"
        );
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
        ] {
            assert!(out.join(f).is_file(), "{model}: no {f}");
        }
    }
    // plain-text records, in a field named as --dataset-text-field says, are split by their
    // text: some are held out, the rest trained on
    let plain = dir.path().join("text.jsonl");
    let lines: Vec<String> = text
        .lines()
        .map(|l| {
            let r: Value = serde_json::from_str(l).unwrap();
            let (p, c) = (
                r["prompt"].as_str().unwrap(),
                r["completion"].as_str().unwrap(),
            );
            json!({ "content": format!("{p}{c}") }).to_string()
        })
        .collect();
    std::fs::write(&plain, lines.join("\n")).unwrap();
    let out = dir.path().join("text");
    let plain_run = |field: &[&str]| {
        let mut args = vec![
            "sft".to_string(),
            "--model".into(),
            fixture("tiny-pythia"),
            "--data".into(),
            s(&plain),
            "--eval-share".into(),
            "0.1".into(),
            "--max-length".into(),
            "256".into(),
        ];
        args.extend(field.iter().map(|f| f.to_string()));
        args
    };
    let field = ["--dataset-text-field", "content"];
    let (to, dora) = (["--out", &s(&out)], dir.path().join("dora"));
    refused(
        &plain_run(&to),
        "expected `prompt` + `completion`, `messages` or `text`",
    );
    assert!(ok(&["check", &s(&plain), field[0], field[1]]).contains("rejected 0"));
    // DoRA shapes LoRA's adapters: without a rank it is refused, not ignored
    refused(
        &plain_run(&[&field[..], &["--out", &s(&dora), "--use-dora"]].concat()),
        "--use-dora shapes LoRA adapters: it needs --lora-rank R",
    );
    ok(&plain_run(&[&field[..], &to[..]].concat()));
    assert!(!metric(&out, "eval_loss").is_empty(), "nothing held out");
    // the chat model learned to end its replies with its EOS, `<|im_end|>`, once a reply is
    // written, and not before: its reply to a post does not start with EOS, and after a reply
    // (the template written out by hand) the next token is EOS. (A response that ended in
    // `<|im_end|>\n<|im_end|>` taught it to answer nothing: EOS right after the template's `\n`.)
    let chat = s(&dir.path().join("tiny-qwen2-chat"));
    let posts = [
        (
            "SUBREDDIT: r/advice\nTITLE: uma and me\nPOST: uma lives in oslo. it is a long story.\nTL;DR:",
            "uma lives in oslo.",
        ),
        (
            "SUBREDDIT: r/legaladvice\nTITLE: update on victor\nPOST: victor owns the red car.\nTL;DR:",
            "victor owns red car.",
        ),
    ];
    let greedy = |extra: &[&str], prompts: Vec<String>| {
        let mut args = vec!["generate", "--model", &chat, "--json", "--temperature", "0"];
        args.extend_from_slice(extra);
        for p in &prompts {
            args.extend(["--prompt", p.as_str()]);
        }
        json_lines(&ok(&args))
    };
    let replies = greedy(
        &["--chat", "--max-new-tokens", "8"],
        posts.iter().map(|(post, _)| post.to_string()).collect(),
    );
    let after = greedy(
        &["--max-new-tokens", "1"],
        posts
            .iter()
            .map(|(post, reply)| {
                format!("<|im_start|>user\n{post}<|im_end|>\n<|im_start|>assistant\n{reply}")
            })
            .collect(),
    );
    for (r, a) in replies.iter().zip(&after) {
        assert!(
            r["completion"].as_str().is_some_and(|c| !c.is_empty()),
            "{r}"
        );
        assert_eq!(a["stopped_at_eos"], true, "{a}");
    }
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("tiny-qwen2-chat/tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["eos_token"], "<|im_end|>");
}

/// `rlhf dpo` raises the implicit-reward margin of chosen over rejected on its own training
/// pairs (it starts at exactly 0: the policy is the reference), with DPO and with each of TRL's
/// other pair losses; `rlhf rm` learns the same pairs and writes a sequence-classification
/// checkpoint.
#[test]
fn dpo_raises_the_margin_and_rm_orders_its_pairs() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 48, dir.path());
    // 4 epochs on the pairs into OUT/`name`, with `loss` (TRL's spelling: the loss types, then
    // any other flags)
    let args = |name: &str, loss: &[&str]| -> (PathBuf, Vec<String>) {
        let out = dir.path().join(name);
        let mut a: Vec<String> = [
            "dpo",
            "--model",
            &fixture("tiny-pythia"),
            "--data",
            &pairs,
            "--eval-data",
            &pairs,
            "--out",
            &s(&out),
            "--learning-rate",
            "2e-3",
            "--num-train-epochs",
            "4",
            "--beta",
            "0.5",
            "--max-length",
            "256",
            "--loss_type",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(loss.iter().map(|x| x.to_string()));
        (out, a)
    };
    // the held-out margin and accuracy after training with `loss`
    let train = |loss: &[&str]| -> (PathBuf, f64, f64) {
        let (out, a) = args(&loss.join("-"), loss);
        ok(&a);
        let last = |name: &str| *metric(&out, name).last().unwrap();
        let (m, a) = (
            last("eval_rewards/margins"),
            last("eval_rewards/accuracies"),
        );
        (out, m, a)
    };
    let (dpo, m, a) = train(&["sigmoid"]);
    assert!(m > 0.5 && a >= 0.8, "held-out margin {m}, accuracy {a}");
    assert!(differ(&probe(&fixture("tiny-pythia")), &probe(&s(&dpo))));
    // the reference's log-probs were computed once and kept, under its config's checksum
    let by_config: Vec<_> = std::fs::read_dir(dpo.join("ref-cache"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(by_config.len(), 1, "{by_config:?}");
    assert!(std::fs::read_dir(&by_config[0]).unwrap().count() >= 1);
    // label smoothing on a loss without ε is refused (TRL's sigmoid ignores it; cDPO is cdpo)
    refused(
        &[
            "dpo",
            "--model",
            &fixture("tiny-pythia"),
            "--data",
            &pairs,
            "--out",
            &s(&dir.path().join("refused")),
            "--label-smoothing",
            "0.1",
        ],
        "--loss cdpo",
    );

    // TRL's other pair losses, in TRL's spelling, each raise the eval margin from 0 (less than
    // DPO's: sigmoid_norm's implicit rewards are of averaged log-probs, and SPPO regresses each
    // log-ratio to ±1/(2β) instead of pushing their difference)
    for loss in [
        "sigmoid_norm",
        "nca_pair",
        "bco_pair",
        "sppo_hard",
        "apo_zero",
        "apo_down",
        "discopop",
        "exo_pair",
        "aot",
        "aot_unpaired",
    ] {
        let (_, m, a) = train(&[loss]);
        assert!(
            m > 0.1 && a >= 0.65,
            "{loss}: eval margin {m}, accuracy {a}"
        );
    }
    // f-DPO: DPO under the Jensen–Shannon divergence learns too; a loss on each response's own
    // log-ratio has no f-divergence form and is refused before training
    let (_, m, a) = train(&["sigmoid", "--f_divergence_type", "js_divergence"]);
    assert!(
        m > 0.1 && a >= 0.65,
        "f-DPO (JS): eval margin {m}, accuracy {a}"
    );
    let (_, nca) = args(
        "nca-forward",
        &["nca_pair", "--f-divergence-type", "forward_kl"],
    );
    refused(&nca, "holds the policy to the reverse KL only");
    // LD-DPO: the tokens past the shorter response at half weight
    let (_, m, a) = train(&["sigmoid", "--ld_alpha", "0.5"]);
    assert!(
        m > 0.1 && a >= 0.65,
        "LD-DPO: eval margin {m}, accuracy {a}"
    );
    let (_, ld) = args("ld-bad", &["sigmoid", "--ld-alpha", "1.5"]);
    refused(&ld, "ld_alpha must be in [0, 1]");

    // several losses, TRL's way (RPO: DPO and the chosen responses' NLL, weighted); a config of one
    // loss reads and prints as before, of several as a list; weights of another count are refused
    let (_, short) = args("short", &["sigmoid", "sft", "--loss_weights", "1"]);
    refused(&short, "got 1 weights for 2 losses");
    let (rpo, m, _) = train(&["sigmoid", "sft", "--loss_weights", "1", "0.5"]);
    assert!(m > 0.5, "RPO's eval margin {m}");
    // the NLL term holds the chosen responses' likelihood above DPO's alone
    let chosen = |dir: &Path| *metric(dir, "logps/chosen").last().unwrap();
    assert!(
        chosen(&rpo) > chosen(&dpo),
        "{} against {}",
        chosen(&rpo),
        chosen(&dpo)
    );
    let recorded = std::fs::read_to_string(rpo.join("rlhf.toml")).unwrap();
    assert!(
        recorded.contains(r#"loss = ["sigmoid", "sft"]"#),
        "{recorded}"
    );
    let single = ok(&["dpo", "--model", "m", "--print-config"]);
    assert!(single.contains(r#"loss = "sigmoid""#), "{single}");

    let rm = dir.path().join("rm");
    ok(&[
        "rm",
        "--model",
        &fixture("tiny-qwen2-chat"),
        "--data",
        &pairs,
        "--eval-data",
        &pairs,
        "--out",
        &s(&rm),
        "--learning-rate",
        "2e-3",
        "--num-train-epochs",
        "4",
        "--max-length",
        "256",
    ]);
    let acc = metric(&rm, "eval_accuracy");
    assert!(
        *acc.last().unwrap() >= 0.8,
        "RM accuracy on its training pairs {acc:?}"
    );
    // TRL's training metrics of each step
    for name in [
        "accuracy",
        "margin",
        "min_reward",
        "mean_reward",
        "max_reward",
    ] {
        assert_eq!(metric(&rm, name).len(), metric(&rm, "loss").len(), "{name}");
    }
    let device = rlhf_core::parse_device("flex").unwrap();
    let (_, scalar, extra, head) = rlhf_models::load_scalar_pretrained(&rm, &device).unwrap();
    assert!(head && extra["normalisation"]["bias"].is_number());
    assert!(scalar.score.bias.is_none());
}

/// A preference file with TRL's `margin` column trains the reward model on
/// `−log σ(r_chosen − r_rejected − margin)` without a flag: with a margin of 4 the first step's
/// loss (taken before any update, from the same seeded head) lies 2–4 above the plain pairs'.
/// A file where only some pairs have a margin is refused at the first that differs, and
/// `--use-margin` on pairs without scores or margins is refused.
#[test]
fn rm_reads_a_margin_column() {
    let dir = tempfile::tempdir().unwrap();
    let plain = head("preference.jsonl", 8, dir.path());
    let lines: Vec<Value> = std::fs::read_to_string(&plain)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let write = |name: &str, margin: &dyn Fn(usize) -> Option<f64>| -> String {
        let text: Vec<String> = lines
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let mut v = v.clone();
                if let Some(m) = margin(i) {
                    v["margin"] = json!(m);
                }
                v.to_string()
            })
            .collect();
        let path = dir.path().join(name);
        std::fs::write(&path, text.join("\n") + "\n").unwrap();
        s(&path)
    };
    let with = write("margin.jsonl", &|_| Some(4.0));
    let mixed = write("mixed.jsonl", &|i| (i == 0).then_some(4.0));
    let run = |data: &str, name: &str, extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "rm",
            "--model",
            &fixture("tiny-qwen2-chat"),
            "--data",
            data,
            "--out",
            &s(&dir.path().join(name)),
            "--per-device-train-batch-size",
            "8",
            "--max-length",
            "256",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    ok(&run(&plain, "plain", &[]));
    ok(&run(&with, "with", &[]));
    let first = |name: &str| metric(&dir.path().join(name), "loss")[0];
    let (p, w) = (first("plain"), first("with"));
    assert!(
        w - p > 2.0 && w - p < 4.0,
        "first loss {w} with margin 4, {p} without"
    );
    refused(&run(&mixed, "mixed", &[]), "mixed.jsonl:2: field `margin`");
    refused(
        &run(&plain, "flag", &["--use-margin"]),
        "--use-margin: no training example has a margin",
    );
}

/// `rlhf kto` on TRL's unpaired layout (the sample's pairs as `{prompt, completion, label}`):
/// the held-out implicit-reward margin of desirable over undesirable responses rises from 0 (the
/// policy starts as the reference), the metrics carry TRL's KTO names, the reference's
/// log-probs are cached, the output differs from its input; a preference file is unpaired and
/// trains too, and so does the unpaired APO-zero; a bad record is reported with its file, line
/// and field.
#[test]
fn kto_raises_the_margin_and_reports_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 24, dir.path());
    let unpaired = dir.path().join("unpaired.jsonl");
    let lines: Vec<String> = std::fs::read_to_string(&pairs)
        .unwrap()
        .lines()
        .flat_map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            [
                json!({"prompt": v["prompt"], "completion": v["chosen"], "label": true}),
                json!({"prompt": v["prompt"], "completion": v["rejected"], "label": false}),
            ]
        })
        .map(|v| v.to_string())
        .collect();
    std::fs::write(&unpaired, lines.join("\n") + "\n").unwrap();
    let kto = dir.path().join("kto");
    let args = |data: &str, out: &Path| -> Vec<String> {
        [
            "kto",
            "--model",
            &fixture("tiny-pythia"),
            "--data",
            data,
            "--eval-data",
            data,
            "--out",
            &s(out),
            "--learning-rate",
            "2e-3",
            "--num-train-epochs",
            "4",
            "--beta",
            "0.5",
            "--max-length",
            "256",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let a = args(&s(&unpaired), &kto);
    ok(&a);
    let margins = metric(&kto, "eval_rewards/margins");
    let m = *margins.last().unwrap();
    assert!(m > 0.5, "held-out margin {margins:?}");
    assert!(!metric(&kto, "kl").is_empty() && !metric(&kto, "rewards/chosen").is_empty());
    assert!(metric(&kto, "kl").iter().all(|&k| k >= 0.0));
    assert!(differ(&probe(&fixture("tiny-pythia")), &probe(&s(&kto))));
    assert!(std::fs::read_dir(kto.join("ref-cache")).unwrap().count() >= 1);

    // preference pairs are unpaired and train the same way
    let from_pairs = dir.path().join("kto-pairs");
    let b = args(&pairs, &from_pairs);
    ok(&b);
    assert!(*metric(&from_pairs, "eval_rewards/margins").last().unwrap() > 0.5);

    // the unpaired APO-zero raises the margin too, with no reference point (`kl` 0, where KTO's
    // run above read one above 0)
    assert!(
        metric(&kto, "kl").iter().any(|&k| k > 0.0),
        "{:?}",
        metric(&kto, "kl")
    );
    let apo = dir.path().join("kto-apo");
    let mut e = args(&s(&unpaired), &apo);
    e.extend(["--loss-type", "apo_zero_unpaired"].map(String::from));
    ok(&e);
    assert!(*metric(&apo, "eval_rewards/margins").last().unwrap() > 0.5);
    let (kl, eval_kl) = (metric(&apo, "kl"), metric(&apo, "eval_kl"));
    assert!(!kl.is_empty() && !eval_kl.is_empty());
    assert!(
        kl.iter().chain(&eval_kl).all(|&k| k == 0.0),
        "{kl:?} {eval_kl:?}"
    );

    // a label that is not a boolean: the file, the line and the field
    let mut bad_lines = lines.clone();
    bad_lines[2] = bad_lines[2].replace("\"label\":true", "\"label\":\"yes\"");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, bad_lines.join("\n") + "\n").unwrap();
    let c = args(&s(&bad), &dir.path().join("kto-bad"));
    let out = rlhf(&c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("{}:3: field `label`", bad.display())) && err.contains("boolean"),
        "{err}"
    );

    // an example without prompt tokens is left out and counted, and the others train: a prompt of
    // one space, whose token the reply's first word absorbs (" a"), as TRL tokenises the two
    // together (Pythia's tokenizer adds no BOS)
    let mut no_prompt = lines[..8].to_vec();
    no_prompt.push(json!({"prompt": " ", "completion": "a reply", "label": true}).to_string());
    let empty = dir.path().join("empty-prompt.jsonl");
    std::fs::write(&empty, no_prompt.join("\n") + "\n").unwrap();
    let d = args(&s(&empty), &dir.path().join("kto-empty"));
    let out = rlhf(&d);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success()
            && err.contains("training examples: left out 1 example (no prompt tokens)"),
        "{err}"
    );
}

/// `rlhf online-dpo` with a rule reward runs its rounds, logs TRL's online-DPO metrics once per
/// round, writes a policy that differs from its input, and, run again in the same directory,
/// resumes to the end with the same weights.
#[test]
fn online_dpo_runs_its_rounds_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 16, dir.path());
    let out = dir.path().join("online-dpo");
    let args = [
        "online-dpo",
        "--model",
        &fixture("tiny-pythia"),
        "--prompts",
        &prompts,
        "--reward",
        "length:0.1",
        "--out",
        &s(&out),
        "--rounds",
        "3",
        "--prompts-per-batch",
        "4",
        "--num-generations",
        "3",
        "--max-completion-length",
        "8",
        "--learning-rate",
        "1e-3",
        "--save-steps",
        "1",
    ];
    ok(&args);
    for k in [
        "objective/scores",
        "val/contain_eos_token",
        "online/pair_share",
        "beta",
    ] {
        assert_eq!(metric(&out, k).len(), 3, "{k}");
    }
    assert!(!metric(&out, "rewards/margins").is_empty());
    assert!(differ(&probe(&fixture("tiny-pythia")), &probe(&s(&out))));
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    ok(&args);
    assert_eq!(
        weights,
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
    assert_eq!(metric(&out, "objective/scores").len(), 3);
}

/// `rlhf distill` across families and widths: a Qwen2 student of width 32 learns, on its own
/// samples, the next-token distributions of a Llama 3 teacher of width 40 that shares its
/// tokenizer (whose PAD lies past the vocabulary). The divergence per response token falls, on
/// the training samples and on held-out prompts, the run logs TRL's metrics, a finished run
/// started again trains no step and keeps its weights, and mistakes are refused by name (a killed
/// run's resume is the next test's).
#[test]
fn distill_learns_the_teacher_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 16, dir.path());
    let held_out = dir.path().join("held-out.jsonl");
    let text = std::fs::read_to_string(sample("prompts.jsonl")).unwrap();
    let lines: Vec<&str> = text.lines().skip(16).take(8).collect();
    std::fs::write(&held_out, lines.join("\n")).unwrap();
    let out = dir.path().join("distill");
    let args = [
        "distill",
        "--model",
        &fixture("tiny-qwen2"),
        "--teacher",
        &fixture("tiny-llama3"),
        "--prompts",
        &prompts,
        "--out",
        &s(&out),
        "--num-train-epochs",
        "4",
        "--per-device-train-batch-size",
        "4",
        "--max-completion-length",
        "8",
        "--learning-rate",
        "1e-2",
        "--save-steps",
        "4",
        "--eval-prompts",
        &s(&held_out),
        "--eval-steps",
        "8",
    ];
    ok(&args);
    let eval = metric(&out, "eval_loss");
    assert_eq!(eval.len(), 2, "after steps 8 and 16");
    assert!(eval[1] < eval[0], "held-out divergence {eval:?}");
    for k in [
        "eval_entropy",
        "eval_completions/mean_length",
        "eval_completions/clipped_ratio",
    ] {
        assert_eq!(metric(&out, k).len(), 2, "{k}");
    }
    let lengths = metric(&out, "eval_completions/mean_length");
    assert!(
        lengths.iter().all(|&l| (1.0..=8.0).contains(&l)),
        "{lengths:?}"
    );
    let loss = metric(&out, "loss");
    assert_eq!(loss.len(), 16);
    for k in [
        "entropy",
        "completions/mean_length",
        "completions/clipped_ratio",
    ] {
        assert_eq!(metric(&out, k).len(), 16, "{k}");
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        mean(&loss[12..]) < 0.75 * mean(&loss[..4]),
        "the divergence per token did not fall: {loss:?}"
    );
    assert!(differ(&probe(&fixture("tiny-qwen2")), &probe(&s(&out))));
    let weights = std::fs::read(out.join("model.safetensors")).unwrap();
    ok(&args);
    assert_eq!(
        weights,
        std::fs::read(out.join("model.safetensors")).unwrap()
    );
    assert_eq!(metric(&out, "loss").len(), 16);

    let with = |extra: &[&str]| -> Vec<String> {
        let other = dir.path().join("refused");
        let mut a: Vec<String> = args.iter().map(|x| x.to_string()).collect();
        let at = a.iter().position(|x| x == "--out").unwrap() + 1;
        a[at] = s(&other);
        a.extend(extra.iter().map(|x| x.to_string()));
        a
    };
    let mut other_tokenizer = with(&[]);
    other_tokenizer[4] = fixture("tiny-pythia");
    refused(&other_tokenizer, "another tokenizer than the student");
    refused(&with(&["--beta", "1.5"]), "beta chooses the divergence");
    refused(&with(&["--devices", "flex,flex"]), "--devices");
    let mut no_held_out = with(&[]);
    let at = no_held_out
        .iter()
        .position(|x| x == "--eval-prompts")
        .unwrap();
    no_held_out.drain(at..at + 2);
    refused(&no_held_out, "give them with --eval-prompts");
}

/// A `rlhf distill` killed (SIGKILL) after its seventh step and started again ends with the
/// weights, the losses and the logged samples (`--log-completions`, TRL's: the prompt as the
/// student read it and its completion, here one a step) of a run that was never interrupted:
/// the samples of each micro-batch are drawn from the seed and its number, not from a stream the
/// kill would cut.
#[test]
fn a_killed_distill_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 48, dir.path());
    let args = |out: &Path| -> Vec<String> {
        [
            "distill",
            "--model",
            &fixture("tiny-qwen2"),
            "--teacher",
            &fixture("tiny-llama3"),
            "--prompts",
            &prompts,
            "--out",
            &s(out),
            "--num-train-epochs",
            "2",
            "--per-device-train-batch-size",
            "2",
            "--max-completion-length",
            "16",
            "--learning-rate",
            "1e-2",
            "--save-steps",
            "2",
            "--save-total-limit",
            "100",
            "--logging-steps",
            "1",
            "--log-completions",
            "--num-completions-to-print",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let straight = dir.path().join("straight");
    ok(&args(&straight));
    let broken = dir.path().join("broken");
    kill_then_resume(&args(&broken), &broken, 7);
    assert_eq!(
        std::fs::read(straight.join("model.safetensors")).unwrap(),
        std::fs::read(broken.join("model.safetensors")).unwrap(),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(metric(&straight, "loss"), metric(&broken, "loss"));
    assert_eq!(metric(&straight, "loss").len(), 48);
    let (text, rows, steps) = completions(&straight);
    assert_eq!(steps, (1..=48).collect::<Vec<u64>>(), "one sample a step");
    // the prompts as the student read them (this tokenizer reads some letters as <unk>): one of
    // the two of each step, so about half of the 48 prompts an epoch
    let seen: std::collections::HashSet<&str> =
        rows.iter().map(|r| r["prompt"].as_str().unwrap()).collect();
    assert!(seen.len() >= 16, "{} prompts", seen.len());
    assert!(rows.iter().all(|r| r["completion"].is_string()));
    assert!(
        rows.iter()
            .any(|r| !r["completion"].as_str().unwrap().is_empty())
    );
    assert_eq!(
        std::fs::read_to_string(broken.join("completions.jsonl")).unwrap(),
        text,
        "the resumed run's completions differ"
    );
}

/// The words of the toy task: whose city is it? Each prompt has one right answer.
const PEOPLE: [(&str, &str); 8] = [
    ("uma", "cairo"),
    ("victor", "oslo"),
    ("erin", "lima"),
    ("carol", "dakar"),
    ("peggy", "tokyo"),
    ("heidi", "quito"),
    ("sybil", "perth"),
    ("frank", "paris"),
];

/// A model taught by demonstrations that are right only 60% of the time where each of the
/// `PEOPLE` lives (the others name another person's city), and the prompts with their answers:
/// `(model, prompts)` in `dir`.
fn people_sft(dir: &Path) -> (PathBuf, PathBuf) {
    let (mut demos, mut prompts) = (Vec::new(), Vec::new());
    for (i, (who, city)) in PEOPLE.iter().enumerate() {
        let prompt = format!("where does {who} live? {who} lives in");
        for k in 0..10 {
            // 6 of 10 demonstrations right, the others another person's city
            let answer = if k < 6 { city } else { PEOPLE[(i + k) % 8].1 };
            demos.push(json!({"prompt": prompt, "completion": format!(" {answer}")}).to_string());
        }
        prompts.push(json!({"prompt": prompt, "answer": city}).to_string());
    }
    let (demo_file, prompt_file) = (dir.join("demos.jsonl"), dir.join("prompts.jsonl"));
    std::fs::write(&demo_file, demos.join("\n")).unwrap();
    std::fs::write(&prompt_file, prompts.join("\n")).unwrap();
    let sft = dir.join("sft");
    ok(&[
        "sft",
        "--model",
        &fixture("tiny-pythia"),
        "--data",
        &s(&demo_file),
        "--out",
        &s(&sft),
        "--learning-rate",
        "3e-3",
        "--num-train-epochs",
        "12",
        "--seed",
        "1",
    ]);
    (sft, prompt_file)
}

/// `rlhf eval`'s mean `reward` of `model`'s answers to `prompts`, 16 samples each at
/// temperature 1.
fn mean_reward(model: &Path, prompts: &Path, reward: &str) -> f64 {
    let text = ok(&[
        "eval",
        "--model",
        &s(model),
        "--prompts",
        &s(prompts),
        "--reward",
        reward,
        "--samples-per-prompt",
        "16",
        "--temperature",
        "1",
        "--max-new-tokens",
        "6",
        "--seed",
        "3",
    ]);
    let line = text.lines().find(|l| l.starts_with("reward")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// `base` then `extra`, as the command line's arguments.
fn argv(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|a| a.to_string()).collect()
}

/// `rlhf grpo` on `PEOPLE`'s prompts from `model`, 40 iterations of 8 prompts × 8 samples, with
/// `extra` options.
fn grpo_on_people(model: &Path, prompts: &Path, out: &Path, extra: &[&str]) {
    let args = [
        "grpo",
        "--model",
        &s(model),
        "--prompts",
        &s(prompts),
        "--out",
        &s(out),
        "--iterations",
        "40",
        "--prompts-per-batch",
        "8",
        "--num-generations",
        "8",
        "--max-completion-length",
        "6",
        "--learning-rate",
        "3e-3",
    ];
    ok(&argv(&args, extra));
}

/// `rlhf grpo` with the exact-match verifier raises the share of right answers: a model taught
/// by demonstrations that are right only 60% of the time answers right about as often; GRPO,
/// rewarded 1 for the right city and 0 otherwise, makes it answer right far more often. Its
/// evaluation during training (`--eval-prompts`, 16 samples each as `rlhf eval` takes them) runs
/// every `--eval-steps` iterations and after the last, and measures what `rlhf eval` of the
/// trained model measures: on the training prompts, and on a file of two trained people (the
/// same records) and two held out of training, whose answers the verifier reads from the
/// held-out file (trained on the other six, the policy names their cities for these two, and
/// their share falls to 0), with the reward function's own scores and the samples' KL to the
/// reference. A held-out prompt that repeats an earlier one with another answer is refused, and
/// so are the eval options without the file.
#[test]
fn grpo_with_an_exact_match_verifier_raises_the_verifiers_mean() {
    let dir = tempfile::tempdir().unwrap();
    let (sft, prompts) = people_sft(dir.path());
    let before = mean_reward(&sft, &prompts, "exact-match");
    let grpo = dir.path().join("grpo");
    let evals = [
        "--eval-prompts",
        &s(&prompts),
        "--eval-steps",
        "10",
        "--num-generations-eval",
        "16",
    ];
    let options = [&["--reward", "exact-match", "--seed", "2"][..], &evals].concat();
    grpo_on_people(&sft, &prompts, &grpo, &options);
    let after = mean_reward(&grpo, &prompts, "exact-match");
    assert!(
        (0.1..0.6).contains(&before) && after > before + 0.2,
        "exact-match rate {before} → {after}"
    );
    assert!(!metric(&grpo, "reward_std").is_empty() && !metric(&grpo, "kl").is_empty());
    let held_out = metric(&grpo, "eval_reward");
    let last = *held_out.last().unwrap();
    eprintln!("exact-match rate {before} → {after}; eval_reward along the run {held_out:?}");
    assert!(
        held_out.len() == 4 && (last - after).abs() < 0.15 && last > before + 0.2,
        "eval_reward {held_out:?}; rlhf eval {before} → {after}"
    );

    // six people trained on; evaluated on the last two of them and two held out (their answers
    // only in the held-out file)
    let lines: Vec<String> = std::fs::read_to_string(&prompts)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let (train6, held4) = (
        dir.path().join("train6.jsonl"),
        dir.path().join("held4.jsonl"),
    );
    std::fs::write(&train6, lines[..6].join("\n")).unwrap();
    std::fs::write(&held4, lines[4..].join("\n")).unwrap();
    let apart = dir.path().join("apart");
    let evals = [
        "--eval-prompts",
        &s(&held4),
        "--eval-steps",
        "15",
        "--num-generations-eval",
        "16",
    ];
    let options = [&["--reward", "exact-match", "--seed", "2"][..], &evals].concat();
    grpo_on_people(&sft, &train6, &apart, &options);
    let held_out = metric(&apart, "eval_reward");
    let measured = mean_reward(&apart, &held4, "exact-match");
    eprintln!("held out: eval_reward along the run {held_out:?}; rlhf eval {measured}");
    assert!(
        held_out.len() == 3 && (held_out[2] - measured).abs() < 0.2,
        "eval_reward {held_out:?}, rlhf eval {measured}"
    );
    for name in [
        "eval_reward_std",
        "eval_completions/mean_length",
        "eval_completions/clipped_ratio",
        "eval_rewards/exact-match/std",
    ] {
        assert_eq!(metric(&apart, name).len(), 3, "{name}");
    }
    // the one reward function's own scores are the reward; the policy has moved off the SFT
    // model it started from, the reference
    assert_eq!(metric(&apart, "eval_rewards/exact-match/mean"), held_out);
    let kl = metric(&apart, "eval_kl");
    assert!(
        kl.len() == 3 && kl.iter().all(|&k| k > 0.0),
        "eval_kl {kl:?}"
    );

    let out = dir.path().join("refused");
    let args = [
        "grpo",
        "--model",
        &s(&sft),
        "--prompts",
        &s(&prompts),
        "--reward",
        "length",
    ];
    let other_answer = dir.path().join("other.jsonl");
    std::fs::write(
        &other_answer,
        lines[0].replace("\"answer\":", "\"answer\":\"x\",\"was\":"),
    )
    .unwrap();
    for (extra, says) in [
        (&["--eval-steps", "5"][..], "give them with --eval-prompts"),
        (
            &["--num-generations-eval", "4"],
            "give them with --eval-prompts",
        ),
        (
            &["--eval-prompts", &s(&other_answer)],
            "repeats an earlier prompt",
        ),
    ] {
        refused(
            &argv(&args, &[&["--out", &s(&out)][..], extra].concat()),
            says,
        );
    }
}

/// GDPO's normalisation keeps the priorities the weights give, whatever the rewards' scales: the
/// right city (0 or 1) weighted 1, and the word count at 5 points a word weighted 0.2, so that in
/// the weighted sum each extra word is worth the right city, and a longer answer is never the
/// right city. Summed first, GRPO trades the right answers for length, whether the sum is scaled
/// by each group's spread (GRPO's) or the batch's (as GDPO ends); each function normalised within
/// its group first, the right city counts five times as much as the length, and GRPO raises the
/// share of right answers as it does on the verifier alone, the answers staying one word long.
#[test]
fn grpo_with_gdpo_weighs_each_reward_function_apart() {
    let dir = tempfile::tempdir().unwrap();
    let (sft, prompts) = people_sft(dir.path());
    let before = mean_reward(&sft, &prompts, "exact-match");
    let run = |options: &[&str]| {
        let out = dir.path().join(options.join("-"));
        let mut args = vec![
            "--reward",
            "sum(exact-match,length:5)",
            "--reward-weights",
            "1",
            "0.2",
            "--seed",
            "2",
        ];
        args.extend(options);
        grpo_on_people(&sft, &prompts, &out, &args);
        (
            mean_reward(&out, &prompts, "exact-match"),
            mean_reward(&out, &prompts, "length:1"),
        )
    };
    let (gdpo, words) = run(&["--multi-objective-aggregation", "normalize_then_sum"]);
    assert!(
        gdpo > before + 0.2 && words < 2.0,
        "GDPO: exact-match rate {before} → {gdpo}, {words} words"
    );
    for scale in ["group", "batch"] {
        let (summed, words) = run(&["--scale-rewards", scale]);
        assert!(
            summed < before && words > 4.0,
            "summed, scaled by the {scale}: exact-match rate {before} → {summed}, {words} words"
        );
    }
}

/// Several reward functions as TRL writes them: `--reward_weights` (a negative weight too, and
/// ended by the next flag) weights the terms of the `sum`, each term's own scores are logged as `rewards/{name}/mean` and `/std`, and the score
/// is the weighted sum of the terms; a bare `--mask_truncated_completions` parses, and the
/// truncated share is logged. Weights that do not fit the spec are refused.
#[test]
fn several_reward_functions_are_weighted_and_logged_each() {
    let dir = tempfile::tempdir().unwrap();
    let prompts: Vec<String> = PEOPLE
        .iter()
        .map(|(who, city)| {
            json!({"prompt": format!("where does {who} live?"), "answer": city}).to_string()
        })
        .collect();
    let prompt_file = dir.path().join("prompts.jsonl");
    std::fs::write(&prompt_file, prompts.join("\n")).unwrap();
    let out = dir.path().join("grpo");
    let args = |weights: &[&str], reward: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "grpo",
            "--model",
            &fixture("tiny-pythia"),
            "--prompts",
            &s(&prompt_file),
            "--reward",
            reward,
            "--out",
            &s(&out),
            "--iterations",
            "2",
            "--prompts-per-batch",
            "4",
            "--num-generations",
            "4",
            "--max-completion-length",
            "6",
            "--mask_truncated_completions",
            "--reward_weights",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect();
        a.extend(weights.iter().map(|w| w.to_string()));
        // a flag after the weights ends them, as in TRL's parser
        a.extend(["--seed".to_string(), "3".to_string()]);
        a
    };
    ok(&args(&["1", "-0.5"], "sum(exact-match,length:0.1)"));
    let exact = metric(&out, "rewards/exact-match/mean");
    let length = metric(&out, "rewards/length/mean");
    let scores = metric(&out, "objective/scores");
    assert_eq!((exact.len(), length.len(), scores.len()), (2, 2, 2));
    assert_eq!(metric(&out, "rewards/length/std").len(), 2);
    for i in 0..2 {
        // GRPO's recipe has no missing-EOS penalty: the score is the weighted sum itself
        let want = exact[i] - 0.5 * length[i];
        assert!(
            (scores[i] - want).abs() < 1e-5,
            "{} against {want}",
            scores[i]
        );
        assert!(length[i] > 0.0, "six new tokens hold words");
    }
    let clipped = metric(&out, "completions/clipped_ratio");
    assert!(clipped.len() == 2 && clipped.iter().all(|c| (0.0..=1.0).contains(c)));
    refused(
        &args(&["1"], "sum(exact-match,length:0.1)"),
        "number of reward weights (1) must match number of reward functions (2)",
    );
    refused(
        &args(&["1", "2"], "mean(exact-match,length)"),
        "weights the terms of sum",
    );
    // GDPO's normalisation of each reward function, as TRL spells it: the same parts are logged
    let mut gdpo = args(&["1", "-0.5"], "sum(exact-match,length:0.1)");
    gdpo.extend(["--multi_objective_aggregation", "normalize_then_sum"].map(String::from));
    std::fs::remove_dir_all(&out).unwrap();
    ok(&gdpo);
    // the first iteration samples from the same policy: the same parts
    assert_eq!(metric(&out, "rewards/exact-match/mean")[0], exact[0]);
    assert_eq!(metric(&out, "rewards/length/mean")[0], length[0]);
    let config = std::fs::read_to_string(out.join("rlhf.toml")).unwrap();
    assert!(
        config.contains("multi_objective_aggregation = \"normalize_then_sum\""),
        "{config}"
    );
    // without weights (they weight a sum only), a mean of the two
    let weights_at = gdpo.iter().position(|a| a == "--reward_weights").unwrap();
    let mut mean = gdpo.clone();
    mean.drain(weights_at..weights_at + 3);
    let reward_at = mean.iter().position(|a| a == "--reward").unwrap() + 1;
    mean[reward_at] = "mean(exact-match,length)".into();
    refused(&mean, "use sum(…)");
    let mut rloo = gdpo.clone();
    rloo[0] = "rloo".into();
    refused(&rloo, "normalize_then_sum is GRPO's");
}

/// The on-policy commands run end to end with a reward model (PPO's critic from it), a verifier,
/// and an ensemble (with the reference and the reward model in bf16), PPO and GSPO with LoRA
/// policies (PPO's reward model in bf16, its reference the LoRA base in f32), CISPO with the
/// batch's reward scaling; `eval`, `check` and `plot` read what they wrote.
#[test]
fn every_on_policy_command_runs_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 24, dir.path());
    let prompts = head("prompts.jsonl", 16, dir.path());
    let rm = dir.path().join("rm");
    ok(&[
        "rm",
        "--model",
        &fixture("tiny-pythia"),
        "--data",
        &pairs,
        "--out",
        &s(&rm),
        "--learning-rate",
        "1e-3",
        "--max-length",
        "256",
    ]);
    let start = probe(&fixture("tiny-pythia"));
    for (cmd, reward, extra) in [
        (
            "ppo",
            s(&rm),
            &["--lora-rank", "4", "--frozen-dtype", "bf16"][..],
        ),
        (
            "grpo",
            format!("mean(rm:{},length:0.05)", s(&rm)),
            &["--frozen-dtype", "bf16"],
        ),
        ("rloo", "length:0.1".to_string(), &["--loss-type", "vespo"]),
        (
            "reinforce-pp",
            "regex:e".to_string(),
            &["--loss-type", "sapo"],
        ),
        (
            "dapo",
            format!("judge:{}", fixture("tiny-pythia")),
            &["--off-policy-mask-threshold", "0.5"],
        ),
        ("gspo", "length:0.1".to_string(), &["--use-peft"]),
        (
            "cispo",
            "regex:e".to_string(),
            &["--scale-rewards", "batch"],
        ),
    ] {
        let out = dir.path().join(cmd);
        let (model, out_arg) = (fixture("tiny-pythia"), s(&out));
        let mut args = vec![
            cmd,
            "--model",
            &model,
            "--prompts",
            &prompts,
            "--reward",
            &reward,
            "--out",
            &out_arg,
            "--iterations",
            "2",
            "--prompts-per-batch",
            "4",
            "--max-completion-length",
            "8",
            "--learning-rate",
            "1e-3",
        ];
        args.extend(extra);
        ok(&args);
        assert!(
            differ(&start, &probe(&s(&out))),
            "{cmd}: the policy did not move"
        );
        assert_eq!(metric(&out, "objective/scores").len(), 2, "{cmd}");
        // a combination's terms are logged each (the reward model by its directory's name); RLOO
        // logs the token mean of its reward's KL, as TRL's
        if cmd == "grpo" {
            for name in ["rewards/rm/mean", "rewards/length/mean", "rewards/rm/std"] {
                assert_eq!(metric(&out, name).len(), 2, "{name}");
            }
        }
        if cmd == "rloo" {
            assert!(
                metric(&out, "kl").iter().all(|k| k.is_finite()) && metric(&out, "kl").len() == 2
            );
            // a single reward is logged by name too, as TRL logs every reward function
            assert_eq!(metric(&out, "rewards/length/mean").len(), 2);
        }
        // VESPO logs its mean weight (1 on-policy); the off-policy mask logs the share it drops
        if cmd == "rloo" {
            let phi = metric(&out, "vespo/phi_seq_mean");
            assert!(
                phi.len() == 2 && phi.iter().all(|&p| (p - 1.0).abs() < 1e-3),
                "{phi:?}"
            );
        }
        if cmd == "dapo" {
            let dropped = metric(&out, "off_policy_mask/masked_ratio");
            assert!(
                dropped.len() == 2 && dropped.iter().all(|d| (0.0..=1.0).contains(d)),
                "{dropped:?}"
            );
        }
    }
    // a reward model of another tokenizer reads the text with its own; PPO's critic, which reads
    // the policy's ids, cannot start from it
    let qwen = fixture("tiny-qwen2-chat");
    for (cmd, works) in [("grpo", true), ("ppo", false)] {
        let out = s(&dir.path().join(format!("{cmd}-qwen")));
        let args = [
            cmd,
            "--model",
            &qwen,
            "--prompts",
            &prompts,
            "--reward",
            &s(&rm),
            "--out",
            &out,
            "--iterations",
            "1",
            "--prompts-per-batch",
            "4",
            "--max-completion-length",
            "8",
        ];
        let run = rlhf(&args);
        let err = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.success(), works, "{cmd}: {err}");
        assert!(err.contains("its own tokenizer"), "{cmd}: {err}");
        if !works {
            assert!(err.contains("its tokenizer is not the policy's"), "{err}");
        }
    }
    let samples = dir.path().join("samples.jsonl");
    let text = ok(&[
        "eval",
        "--model",
        &s(&dir.path().join("ppo")),
        "--prompts",
        &prompts,
        "--reward",
        &s(&rm),
        "--ref",
        &fixture("tiny-pythia"),
        "--max-new-tokens",
        "8",
        "--out",
        &s(&samples),
    ]);
    assert!(
        text.contains("kl to the reference") && text.contains("stopped at EOS"),
        "{text}"
    );
    assert_eq!(
        std::fs::read_to_string(&samples).unwrap().lines().count(),
        16
    );
    assert!(ok(&["check", &pairs]).contains("read 24 records, kept 24, rejected 0"));
    let plots = ok(&["plot", &s(&dir.path().join("ppo"))]);
    assert!(plots.contains("objective_scores.svg"), "{plots}");
}

/// `rlhf grpo` from tiny-pythia on `prompts` into `out` for `iterations`, rewarding 0.1 a word:
/// 4 prompts × 2 samples of at most 8 new tokens an iteration, with `extra` options.
fn grpo_on_length(prompts: &str, out: &Path, iterations: &str, extra: &[&str]) -> Vec<String> {
    let args = [
        "grpo",
        "--model",
        &fixture("tiny-pythia"),
        "--prompts",
        prompts,
        "--reward",
        "length:0.1",
        "--out",
        &s(out),
        "--iterations",
        iterations,
        "--prompts-per-batch",
        "4",
        "--num-generations",
        "2",
        "--max-completion-length",
        "8",
    ];
    argv(&args, extra)
}

/// `--chat-template-kwargs` (TRL's): the JSON object's variables reach the chat template, here a
/// template that writes `NOTHINK` before the reply when `enable_thinking` is false (Qwen3's
/// switch), which every prompt that `rlhf grpo --log-completions` shows then holds, and none
/// without the variables; `rlhf generate --chat` and `rlhf eval` render with them too. What is
/// not an object is refused, and so are variables for a checkpoint without a Jinja template.
#[test]
fn chat_template_kwargs_reach_the_template() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = dir.path().join("chats.jsonl");
    let lines: Vec<String> = ["the cat", "a dog", "the sun", "a tree"]
        .iter()
        .map(|t| format!(r#"{{"prompt": [{{"role": "user", "content": "{t}"}}]}}"#))
        .collect();
    std::fs::write(&prompts, lines.join("\n")).unwrap();
    let template = dir.path().join("chat.jinja");
    std::fs::write(
        &template,
        "{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}{% if enable_thinking is defined and not enable_thinking %}NOTHINK {% endif %}assistant:{% endif %}",
    )
    .unwrap();
    let run = |name: &str, extra: &[&str]| -> Vec<String> {
        let out = dir.path().join(name);
        let mut flags = vec![
            "--chat-template",
            template.to_str().unwrap(),
            "--log-completions",
        ];
        flags.extend_from_slice(extra);
        grpo_on_length(&s(&prompts), &out, "2", &flags)
    };
    let prompts_of = |name: &str| -> Vec<String> {
        let (_, rows, _) = completions(&dir.path().join(name));
        rows.iter()
            .map(|r| r["prompt"].as_str().unwrap().to_string())
            .collect()
    };
    ok(&run(
        "off",
        &["--chat-template-kwargs", r#"{"enable_thinking": false}"#],
    ));
    ok(&run("plain", &[]));
    let (off, plain) = (prompts_of("off"), prompts_of("plain"));
    assert_eq!((off.len(), plain.len()), (16, 16));
    assert!(
        off.iter().all(|p| p.contains("NOTHINK assistant:")),
        "{off:?}"
    );
    assert!(
        plain
            .iter()
            .all(|p| !p.contains("NOTHINK") && p.ends_with("assistant:")),
        "{plain:?}"
    );
    // generate and eval: the same template and variables
    let off = ["--chat-template-kwargs", r#"{"enable_thinking": false}"#];
    let model = fixture("tiny-pythia");
    let sample = ["--max-new-tokens", "2", "--json"];
    let generate = |extra: &[&str]| {
        let base = [
            "generate", "--model", &model, "--chat", "--prompt", "the cat",
        ];
        let template = ["--chat-template", template.to_str().unwrap()];
        json_lines(&ok(&[&base[..], &template, &sample, extra].concat()))[0]["prompt"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert!(generate(&off).ends_with("NOTHINK assistant:"));
    assert!(generate(&[]).ends_with("user: the cat\nassistant:"));
    let eval = |name: &str, extra: &[&str]| -> Vec<String> {
        let out = dir.path().join(name);
        let base = ["eval", "--model", &model, "--prompts", &s(&prompts)];
        let rest = [
            "--reward",
            "length:0.1",
            "--max-new-tokens",
            "2",
            "--out",
            &s(&out),
        ];
        let template = ["--chat-template", template.to_str().unwrap()];
        ok(&[&base[..], &rest, &template, extra].concat());
        json_lines(&std::fs::read_to_string(&out).unwrap())
            .iter()
            .map(|r| r["prompt"].as_str().unwrap().to_string())
            .collect()
    };
    let (off, plain) = (eval("eval-off.jsonl", &off), eval("eval-plain.jsonl", &[]));
    assert_eq!((off.len(), plain.len()), (4, 4));
    assert!(
        off.iter().all(|p| p.ends_with("NOTHINK assistant:")),
        "{off:?}"
    );
    assert!(plain.iter().all(|p| !p.contains("NOTHINK")), "{plain:?}");
    refused(
        &run("array", &["--chat-template-kwargs", "[1]"]),
        "must be a JSON object",
    );
    let mut no_template = grpo_on_length(&s(&prompts), &dir.path().join("none"), "1", &[]);
    no_template.extend(["--chat-template-kwargs".into(), "{}".into()]);
    refused(&no_template, "this checkpoint has none");
}

/// The on-policy commands' `--lr-scheduler-type` and warm-up (transformers' names): `rlhf grpo`
/// takes one optimizer step an iteration, and each iteration logs its step's rate, which follows
/// a cosine over the 8 steps after 2 of warm-up; without them the recipe anneals linearly.
#[test]
fn grpo_follows_a_cosine_schedule_with_warmup() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 16, dir.path());
    let rates = |name: &str, extra: &[&str]| -> Vec<f64> {
        let out = dir.path().join(name);
        let fast = ["--learning-rate", "1e-3", "--logging-steps", "1"];
        ok(
            &grpo_on_length(&prompts, &out, "8", &[&fast[..], extra].concat())
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        metric(&out, "learning_rate")
    };
    let want = |schedule: rlhf_core::train::LrSchedule| -> Vec<f64> {
        (0..8).map(|s| schedule.lr_at(1e-3, s)).collect()
    };
    let close = |got: &[f64], want: &[f64]| {
        got.len() == want.len() && got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-12)
    };
    let cosine = rates(
        "cosine",
        &["--lr-scheduler-type", "cosine", "--warmup-steps", "2"],
    );
    let planned = want(rlhf_core::train::LrSchedule::Cosine {
        warmup: 2,
        total: 8,
        min_ratio: 0.0,
    });
    assert!(close(&cosine, &planned), "{cosine:?} vs {planned:?}");
    let linear = rates("linear", &[]);
    let annealed = want(rlhf_core::train::LrSchedule::Linear {
        warmup: 0,
        total: 8,
    });
    assert!(close(&linear, &annealed), "{linear:?} vs {annealed:?}");
    assert!(!close(&cosine, &annealed));
}

/// The on-policy commands' `--sync-ref-model` (TRL's, for GRPO and RLOO): with α = 1 and τ = 1
/// the KL term's reference is the policy after every iteration (one optimizer step each), so
/// every rollout starts at KL 0 from it; with τ = 2 every other one does; with a frozen
/// reference the first only. A τ that is not a multiple of an iteration's optimizer steps, β 0
/// and a LoRA policy are refused. A run killed after a checkpoint resumes to the weights of an
/// uninterrupted one (the checkpoints hold the reference).
#[test]
fn grpo_with_a_synced_reference_starts_each_synced_rollout_at_kl_0() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 16, dir.path());
    let args = |out: &Path, iterations: &str, extra: &[&str]| -> Vec<String> {
        let fast = ["--learning-rate", "1e-3", "--logging-steps", "1"];
        grpo_on_length(&prompts, out, iterations, &[&fast[..], extra].concat())
    };
    let kl = |name: &str, extra: &[&str]| -> Vec<f64> {
        let out = dir.path().join(name);
        ok(&args(&out, "8", extra));
        metric(&out, "objective/kl")
    };
    let sync = |steps: &'static str| sync("1", steps);
    let (every, second, frozen) = (
        kl("every", &sync("1")),
        kl("second", &sync("2")),
        kl("frozen", &[]),
    );
    // two epochs an iteration: τ counts optimizer steps, so τ 2 moves the reference after every
    // iteration and τ 4 after every other
    let epochs = ["--num-ppo-epochs", "2"];
    let by_steps = kl("by-steps", &[&sync("2")[..], &epochs].concat());
    let every_other = kl("every-other", &[&sync("4")[..], &epochs].concat());
    assert!(every.len() == 8 && second.len() == 8 && frozen.len() == 8);
    let zero = |x: f64| x.abs() < 1e-6;
    for i in 0..8 {
        let it = i + 1;
        assert!(zero(every[i]), "τ 1, iteration {it}: {}", every[i]);
        assert_eq!(
            zero(second[i]),
            it % 2 == 1,
            "τ 2, iteration {it}: {}",
            second[i]
        );
        assert_eq!(
            zero(frozen[i]),
            it == 1,
            "frozen, iteration {it}: {}",
            frozen[i]
        );
        assert!(zero(by_steps[i]), "τ 2 of 2 steps, iteration {it}");
        assert_eq!(
            zero(every_other[i]),
            it % 2 == 1,
            "τ 4 of 2 steps, iteration {it}"
        );
    }
    let out = dir.path().join("refused");
    for (extra, says) in [
        (
            &["--num-ppo-epochs", "3"][..],
            "multiple of an iteration's 3",
        ),
        (&["--beta", "0"], "β is 0"),
        (&["--lora-rank", "4"], "LoRA"),
    ] {
        refused(&args(&out, "8", &[&sync("1")[..], extra].concat()), says);
    }
    let resumable = [&self::sync("0.5", "3")[..], &["--save-steps", "2"]].concat();
    let straight = dir.path().join("straight");
    ok(&args(&straight, "24", &resumable));
    let broken = dir.path().join("broken");
    kill_then_resume_at(
        &args(&broken, "24", &resumable),
        &broken,
        "objective/kl",
        11,
    );
    assert!(
        std::fs::read(straight.join("model.safetensors")).unwrap()
            == std::fs::read(broken.join("model.safetensors")).unwrap(),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(
        metric(&straight, "objective/kl"),
        metric(&broken, "objective/kl")
    );
}

/// `--use-adaptive-entropy` (TRL's, Skywork-OR1's control): with the target above any entropy
/// the logged `entropy_coef` climbs by `--entropy-coef-delta` an optimizer step to
/// `--entropy-coef-max`; with it below, it falls to `--entropy-coef-min`. Runs of both kinds
/// killed after a checkpoint resume to the weights and the coefficients of uninterrupted ones
/// (the checkpoints hold the controller): the climbing one before it reaches `c_max`, the
/// falling one with its gate closed.
#[test]
fn grpo_with_adaptive_entropy_logs_its_coefficient_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 16, dir.path());
    let args = |out: &Path, target: &str, extra: &[&str]| -> Vec<String> {
        let control = [
            "--learning-rate",
            "1e-3",
            "--logging-steps",
            "1",
            "--num-ppo-epochs",
            "1",
            "--num-mini-batches",
            "1",
            "--use-adaptive-entropy",
            "--entropy-coef",
            "0.1",
            "--entropy-coef-delta",
            "0.02",
            "--entropy-coef-min",
            "0.02",
            "--entropy-coef-max",
            "0.3",
            "--entropy-target",
            target,
        ];
        grpo_on_length(&prompts, out, "16", &[&control[..], extra].concat())
    };
    let checkpoints = ["--save-steps", "2"];
    let climbs = dir.path().join("climbs");
    ok(&args(&climbs, "100", &checkpoints));
    let falls = dir.path().join("falls");
    ok(&args(&falls, "0.001", &checkpoints));
    let (up, down) = (
        metric(&climbs, "entropy_coef"),
        metric(&falls, "entropy_coef"),
    );
    assert!(up.len() == 16 && down.len() == 16);
    for (i, (u, d)) in up.iter().zip(&down).enumerate() {
        let k = (i + 1) as f64;
        let (want_up, want_down) = ((0.1 + 0.02 * k).min(0.3), (0.1 - 0.02 * k).max(0.02));
        assert!(
            (u - want_up).abs() < 1e-6,
            "iteration {k}: c {u}, want {want_up}"
        );
        assert!(
            (d - want_down).abs() < 1e-6,
            "iteration {k}: c {d}, want {want_down}"
        );
    }
    refused(
        &grpo_on_length(
            &prompts,
            &dir.path().join("bad"),
            "16",
            &[
                "--use-adaptive-entropy",
                "--entropy-coef",
                "0.5",
                "--entropy-coef-max",
                "0.3",
            ],
        ),
        "must lie in [entropy_coef_min, entropy_coef_max]",
    );
    // killed after 9 iterations, resumed from the checkpoint of the 8th
    for (straight, target) in [(&climbs, "100"), (&falls, "0.001")] {
        let broken = dir.path().join(format!("broken-{target}"));
        let resumable = args(&broken, target, &checkpoints);
        kill_then_resume_at(&resumable, &broken, "entropy_coef", 9);
        assert!(
            std::fs::read(straight.join("model.safetensors")).unwrap()
                == std::fs::read(broken.join("model.safetensors")).unwrap(),
            "target {target}: the resumed run's weights differ from the uninterrupted run's"
        );
        assert_eq!(
            metric(straight, "entropy_coef"),
            metric(&broken, "entropy_coef")
        );
    }
}

/// `--log-completions` (TRL's): each logged iteration's first `--num-completions-to-print`
/// samples go to completions.jsonl, with the prompt as the policy read it, the completion, its
/// score and advantage; a run killed after its checkpoint and resumed writes the same file as an
/// uninterrupted one, and a finished run started again without the flags is the same run.
#[test]
fn grpo_logs_its_completions_and_a_resumed_run_writes_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let prompts = head("prompts.jsonl", 16, dir.path());
    let args = |out: &Path| -> Vec<String> {
        let logging = [
            "--save-steps",
            "4",
            "--logging-steps",
            "5",
            "--log-completions",
            "--num-completions-to-print",
            "3",
        ];
        grpo_on_length(&prompts, out, "40", &logging)
    };
    let whole = dir.path().join("whole");
    let argv = args(&whole);
    ok(&argv.iter().map(String::as_str).collect::<Vec<_>>());
    let (text, rows, steps) = completions(&whole);
    let every_fifth: Vec<u64> = (1..=8).flat_map(|s| [5 * s; 3]).collect();
    assert_eq!(steps, every_fifth, "three samples every fifth iteration");
    let raw: Vec<String> = std::fs::read_to_string(&prompts)
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["prompt"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    for row in &rows {
        let prompt = row["prompt"].as_str().unwrap();
        assert!(raw.iter().any(|p| prompt.ends_with(p.as_str())), "{prompt}");
        assert!(
            row["score"].as_f64().is_some() && row["advantage"].as_f64().is_some(),
            "{row}"
        );
        // the length reward: 0.1 a token (… at most 8 new tokens)
        assert!(
            (0.0..=0.8 + 1e-6).contains(&row["score"].as_f64().unwrap()),
            "{row}"
        );
        assert!(row["completion"].is_string(), "{row}");
    }
    // a group of two: the two advantages of a prompt are opposite (or both 0)
    let adv = |i: usize| rows[i]["advantage"].as_f64().unwrap();
    assert!((adv(0) + adv(1)).abs() < 1e-4, "{} {}", adv(0), adv(1));

    let killed = dir.path().join("killed");
    // killed after iteration 15 (whose samples are logged) and before 16 (a checkpoint): the
    // resumed run starts from 12 and logs 15 again
    kill_then_resume_at(&args(&killed), &killed, "objective/scores", 15);
    // the logging is no part of what is trained: the finished run, started again without it, is
    // the same run (not refused as one with other options)
    let without: Vec<&str> = argv[..argv.len() - 3].iter().map(String::as_str).collect();
    assert_eq!(argv[argv.len() - 3], "--log-completions");
    ok(&without);
    assert_eq!(
        std::fs::read_to_string(killed.join("completions.jsonl")).unwrap(),
        text,
        "the resumed run's completions differ"
    );
}

/// `rlhf dpo` on `pairs` from tiny-pythia into `out` (learning rate 1e-3, 4 pairs a step, the
/// loss logged every step), with `extra` options.
fn dpo_args(pairs: &str, out: &Path, extra: &[&str]) -> Vec<String> {
    let args = [
        "dpo",
        "--model",
        &fixture("tiny-pythia"),
        "--data",
        pairs,
        "--out",
        &s(out),
        "--learning-rate",
        "1e-3",
        "--per-device-train-batch-size",
        "4",
        "--max-length",
        "256",
        "--logging-steps",
        "1",
    ];
    argv(&args, extra)
}

/// A killed `rlhf dpo` run resumes to the weights and the losses of an uninterrupted one, with
/// a frozen reference and with TR-DPO's synced one (whose weights the checkpoints keep); and
/// the directory belongs to its run.
#[test]
fn a_killed_dpo_run_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 64, dir.path());
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let checkpoints = ["--save-steps", "2", "--save-total-limit", "100"];
        dpo_args(&pairs, out, &[&checkpoints[..], extra].concat())
    };
    // τ 5: the checkpoint of step 6 that the killed run resumes from holds the reference moved
    // at step 5, and the next move is at step 10, not 5 steps after the resume
    let synced = sync("0.5", "5");
    for (name, extra) in [("frozen", &[][..]), ("synced", &synced)] {
        let straight = dir.path().join(format!("{name}-straight"));
        ok(&args(&straight, extra));
        let broken = dir.path().join(format!("{name}-broken"));
        kill_then_resume(&args(&broken, extra), &broken, 7);
        assert!(
            std::fs::read(straight.join("model.safetensors")).unwrap()
                == std::fs::read(broken.join("model.safetensors")).unwrap(),
            "{name}: the resumed run's weights differ from the uninterrupted run's"
        );
        assert_eq!(metric(&straight, "loss"), metric(&broken, "loss"), "{name}");
    }
    // the directory belongs to this run
    let mut other = args(&dir.path().join("frozen-broken"), &[]);
    other.extend(["--beta".to_string(), "0.3".to_string()]);
    let out = rlhf(&other);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("`beta`"), "{err}");
}

/// Runs (`run(name, extra flags)`, giving its output directory) of TR-DPO at α = 1 start at
/// `start`, the loss of a policy against itself: with τ 1 and an eval every step, every step and
/// every eval; with τ 2 and two micro-batches a step, the odd steps; with a frozen reference, the
/// first only. Gives the first run's directory.
fn synced_runs_start_at(run: &dyn Fn(&str, &[&str]) -> PathBuf, start: f64) -> PathBuf {
    let held_out = ["--eval-share", "0.25", "--eval-steps", "1"];
    let every = run("every", &[&sync("1", "1")[..], &held_out].concat());
    let second = run(
        "second",
        &[&sync("1", "2")[..], &["--gradient-accumulation-steps", "2"]].concat(),
    );
    let frozen = metric(&run("frozen", &held_out), "loss");
    let (every_loss, second_loss) = (metric(&every, "loss"), metric(&second, "loss"));
    let at_start = |x: f64| (x - start).abs() < 1e-5;
    assert!(every_loss.len() >= 6 && second_loss.len() >= 3 && frozen.len() >= every_loss.len());
    for (i, (&e, &f)) in every_loss.iter().zip(&frozen).enumerate() {
        let step = i + 1;
        assert!(at_start(e), "τ 1, step {step}: {e}");
        assert_eq!(at_start(f), step == 1, "frozen, step {step}: {f}");
    }
    let evals = metric(&every, "eval_loss");
    assert!(
        evals.len() == every_loss.len() && evals.iter().all(|&e| at_start(e)),
        "{evals:?}"
    );
    for (i, &s) in second_loss.iter().enumerate() {
        let step = i + 1;
        assert_eq!(at_start(s), step % 2 == 1, "τ 2, step {step}: {s}");
    }
    every
}

/// TR-DPO (`--sync-ref-model`): with α = 1 and τ = 1 the reference is the policy after every
/// optimizer step, before the step's eval, so each step and each eval starts with the policy
/// equal to its reference and DPO's loss at log 2; with τ = 2 and two micro-batches a step, the
/// odd optimizer steps do; with a frozen reference the first step only; with α = ½ the second
/// step does not (the reference moved half way). A LoRA policy is refused (its reference is its
/// base, as TRL's PEFT models have none to sync).
#[test]
fn dpo_with_a_synced_reference_starts_each_synced_step_at_log_2() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 48, dir.path());
    let args = |name: &str, extra: &[&str]| -> (Vec<String>, PathBuf) {
        let out = dir.path().join(name);
        (dpo_args(&pairs, &out, extra), out)
    };
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let (a, out) = args(name, extra);
        ok(&a);
        out
    };
    synced_runs_start_at(&run, 2f64.ln());
    let half = metric(&run("half", &sync("0.5", "1")), "loss");
    let at_log_2 = |x: f64| (x - 2f64.ln()).abs() < 1e-5;
    assert!(at_log_2(half[0]) && !at_log_2(half[1]), "α ½: {half:?}");
    let (lora, _) = args(
        "lora",
        &[&sync("1", "1")[..], &["--lora-rank", "4"]].concat(),
    );
    refused(&lora, "LoRA");
}

/// TR-DPO's reference for KTO (`rlhf kto --sync-ref-model`): with α = 1 and τ = 1 the reference
/// is the policy after every optimizer step, before the step's eval, so each step's examples and
/// its mismatched pairs start with the policy equal to its reference: every log-ratio and `z_ref`
/// are 0, and the loss is `σ(0) = ½` (λ_D = λ_U = 1), at every step and every eval; with τ = 2
/// and two micro-batches a step, the odd steps; with a frozen reference the first step only. A
/// LoRA policy is refused. A run killed after a checkpoint resumes to the weights of an
/// uninterrupted one (the checkpoints hold the reference).
#[test]
fn kto_with_a_synced_reference_starts_each_synced_step_at_one_half() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 24, dir.path());
    let args = |out: &Path, extra: &[&str]| -> Vec<String> {
        let base = [
            "kto",
            "--model",
            &fixture("tiny-pythia"),
            "--data",
            &pairs,
            "--out",
            &s(out),
            "--learning-rate",
            "2e-3",
            "--num-train-epochs",
            "2",
            "--per-device-train-batch-size",
            "4",
            "--beta",
            "0.5",
            "--max-length",
            "256",
            "--logging-steps",
            "1",
        ];
        argv(&base, extra)
    };
    let run = |name: &str, extra: &[&str]| -> PathBuf {
        let out = dir.path().join(name);
        ok(&args(&out, extra));
        out
    };
    let every = synced_runs_start_at(&run, 0.5);
    // z_ref, of the mismatched pairs, is 0 too, in training and at every eval (the eval's
    // batches are balanced, so its loss alone would not show it), where against the frozen
    // reference it rises above 0
    for name in ["kl", "eval_kl"] {
        let kl = metric(&every, name);
        assert!(
            !kl.is_empty() && kl.iter().all(|k| k.abs() < 1e-5),
            "{name} {kl:?}"
        );
        let frozen = metric(&dir.path().join("frozen"), name);
        assert!(
            frozen.iter().any(|&k| k > 1e-3),
            "frozen: {name} {frozen:?}"
        );
    }
    refused(
        &args(
            &dir.path().join("lora"),
            &[&sync("1", "1")[..], &["--lora-rank", "4"]].concat(),
        ),
        "LoRA",
    );
    // τ 3: the checkpoint of step 4 that the killed run resumes from holds the reference moved
    // at step 3
    let resumable = [&sync("0.5", "3")[..], &["--save-steps", "2"]].concat();
    let straight = run("straight", &resumable);
    let broken = dir.path().join("broken");
    kill_then_resume(&args(&broken, &resumable), &broken, 5);
    assert!(
        std::fs::read(straight.join("model.safetensors")).unwrap()
            == std::fs::read(broken.join("model.safetensors")).unwrap(),
        "the resumed run's weights differ from the uninterrupted run's"
    );
    assert_eq!(metric(&straight, "loss"), metric(&broken, "loss"));
}

/// `rlhf dpo --devices flex,flex`: two data-parallel replicas learn, a killed run resumes to the
/// same bytes, and the commands whose work is not split by replicas (KTO, online DPO) refuse them
/// by name.
#[test]
fn two_replicas_learn_resume_after_a_kill_bit_for_bit_and_are_refused_where_unsupported() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 24, dir.path());
    let args = |out: &Path| -> Vec<String> {
        [
            "dpo",
            "--model",
            &fixture("tiny-pythia"),
            "--data",
            &pairs,
            "--eval-data",
            &pairs,
            "--out",
            &s(out),
            "--devices",
            "flex,flex",
            "--learning-rate",
            "1e-3",
            "--num-train-epochs",
            "3",
            "--per-device-train-batch-size",
            "5",
            "--beta",
            "0.5",
            "--save-steps",
            "2",
            "--max-length",
            "256",
            "--logging-steps",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let straight = dir.path().join("straight");
    ok(&args(&straight));
    let accuracy = *metric(&straight, "eval_rewards/accuracies").last().unwrap();
    assert!(accuracy >= 0.75, "held-out accuracy {accuracy}");
    let broken = dir.path().join("broken");
    kill_then_resume(&args(&broken), &broken, 7);
    assert_eq!(
        std::fs::read(straight.join("model.safetensors")).unwrap(),
        std::fs::read(broken.join("model.safetensors")).unwrap(),
        "the resumed two-replica run differs from the uninterrupted one"
    );

    // KTO's reference point, online DPO's generation and GRPO's entropy quantile are whole-batch
    // work: refused by name
    let prompts = head("prompts.jsonl", 8, dir.path());
    for (command, data_flag, data, extra, why) in [
        ("kto", "--data", &pairs, &[][..], "z₀"),
        (
            "grpo",
            "--prompts",
            &prompts,
            &["--reward", "length", "--top-entropy-quantile", "0.5"][..],
            "top_entropy_quantile",
        ),
        (
            "online-dpo",
            "--dataset-name",
            &prompts,
            &["--reward", "length"][..],
            "--devices",
        ),
    ] {
        let (model, out_dir) = (fixture("tiny-pythia"), s(&dir.path().join(command)));
        let mut argv = vec![
            command,
            "--model",
            &model,
            data_flag,
            data,
            "--out",
            &out_dir,
            "--devices",
            "flex,flex",
        ];
        argv.extend(extra);
        let out = rlhf(&argv);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(why),
            "{command}: {err}"
        );
    }
    // without --devices, the entropy quantile's run takes one replica where flex's default is two
    ok(&[
        "grpo",
        "--model",
        &fixture("tiny-pythia"),
        "--prompts",
        &prompts,
        "--reward",
        "length",
        "--out",
        &s(&dir.path().join("grpo-one-replica")),
        "--iterations",
        "1",
        "--prompts-per-batch",
        "4",
        "--max-completion-length",
        "8",
        "--top-entropy-quantile",
        "0.5",
    ]);
}

/// `rlhf dpo --lora-rank`: under 5% of the parameters train, the held-out margin rises, the output
/// is a plain Hugging Face checkpoint (adapters merged) with PEFT's adapter files beside it, a
/// killed run resumes to the same bytes, and `--save-adapter` without LoRA is refused; a reward
/// model trains with LoRA on every linear layer and its whole score head, and the same command
/// gives the same model.
#[test]
fn dpo_with_lora_trains_the_adapters_only_and_resumes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = head("preference.jsonl", 48, dir.path());
    let args = |out: &Path| -> Vec<String> {
        [
            "dpo",
            "--model",
            &fixture("tiny-pythia"),
            "--data",
            &pairs,
            "--eval-data",
            &pairs,
            "--out",
            &s(out),
            "--lora-rank",
            "8",
            "--lora-alpha",
            "16",
            "--save-adapter",
            "--learning-rate",
            "1e-2",
            "--num-train-epochs",
            "3",
            "--per-device-train-batch-size",
            "4",
            "--beta",
            "0.5",
            "--save-steps",
            "3",
            "--max-length",
            "256",
            "--logging-steps",
            "1",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let straight = dir.path().join("straight");
    let a = args(&straight);
    let out = rlhf(&a);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let share: f64 = log
        .split("parameters train (")
        .nth(1)
        .and_then(|t| t.split('%').next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no LoRA line in\n{log}"));
    assert!(share < 5.0, "{share}% of the parameters train");
    let margins = metric(&straight, "eval_rewards/margins");
    let accuracy = metric(&straight, "eval_rewards/accuracies");
    let (m, acc) = (*margins.last().unwrap(), *accuracy.last().unwrap());
    assert!(
        m > 0.3 && acc >= 0.75,
        "held-out margin {m}, accuracy {acc}"
    );
    // a plain checkpoint (the loader refuses tensors the model does not have) that moved
    assert!(differ(
        &probe(&fixture("tiny-pythia")),
        &probe(&s(&straight))
    ));
    for f in ["adapter_model.safetensors", "adapter_config.json"] {
        assert!(straight.join("adapter").join(f).is_file(), "adapter/{f}");
    }

    let broken = dir.path().join("broken");
    kill_then_resume(&args(&broken), &broken, 20);
    for f in ["model.safetensors", "adapter/adapter_model.safetensors"] {
        assert_eq!(
            std::fs::read(straight.join(f)).unwrap(),
            std::fs::read(broken.join(f)).unwrap(),
            "{f}: the resumed run differs from the uninterrupted run"
        );
    }

    let out = rlhf(&[
        "dpo",
        "--model",
        &fixture("tiny-pythia"),
        "--data",
        &pairs,
        "--out",
        &s(&dir.path().join("full")),
        "--save-adapter",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--lora-rank"),
        "{err}"
    );

    // a reward model with LoRA on every linear layer: the adapters and the whole score head
    // train; the fresh head and the adapters are drawn from --seed, so a second run is the same
    let rm_args = |out: &Path| -> Vec<String> {
        [
            "rm",
            "--model",
            &fixture("tiny-qwen2-chat"),
            "--data",
            &pairs,
            "--eval-data",
            &pairs,
            "--out",
            &s(out),
            "--lora-rank",
            "8",
            "--lora-target-modules",
            "all-linear",
            "--learning-rate",
            "5e-3",
            "--num-train-epochs",
            "8",
            "--max-length",
            "256",
        ]
        .iter()
        .map(|x| x.to_string())
        .collect()
    };
    let (rm, again) = (dir.path().join("rm"), dir.path().join("rm-again"));
    for out in [&rm, &again] {
        ok(&rm_args(out));
    }
    assert_eq!(
        std::fs::read(rm.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap(),
        "the same rm command gave two models"
    );
    let acc = metric(&rm, "eval_accuracy");
    assert!(
        *acc.last().unwrap() >= 0.8,
        "RM accuracy on its training pairs {acc:?}"
    );
    let device = rlhf_core::parse_device("flex").unwrap();
    let (_, _, _, head) = rlhf_models::load_scalar_pretrained(&rm, &device).unwrap();
    assert!(head, "the score head was written");
    // its settings say it reads a chat reply as the template renders it, as it was trained
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(rm.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["rlhf_scalar"]["chat_reading"], "rendered");
}

/// The leaves of a configuration as JSON: `optimizer.lr`, …; an enum or a pair is one leaf.
fn leaves(v: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    match v {
        Value::Object(o) if prefix.is_empty() || prefix == "optimizer" => {
            for (k, x) in o {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(x, &key, out);
            }
        }
        other => out.push((prefix.to_string(), other.clone())),
    }
}

/// For each library configuration field: the flags that set it, or why none does.
type Mapping<'a> = &'a [(&'a str, &'a [&'a str])];

/// Every field of every trainer's library configuration is reachable from a flag: setting the
/// flags of the table changes exactly that field, and no field is missing from the table (a new
/// field of a library config fails this test until it has its flag).
#[test]
fn every_field_of_every_trainer_config_is_a_flag() {
    use clap::Parser;
    use rlhf_cli::commands::{
        distill::DistillArgs, dpo::DpoArgs, kto::KtoArgs, online_dpo::OnlineDpoArgs, onpolicy,
        rm::RmArgs, sft::SftArgs,
    };

    const OPTIMIZER: Mapping<'static> = &[
        ("optimizer.lr", &["--learning-rate", "0.5"]),
        ("optimizer.beta1", &["--adam-beta1", "0.5"]),
        ("optimizer.beta2", &["--adam-beta2", "0.5"]),
        ("optimizer.eps", &["--adam-epsilon", "0.5"]),
        ("optimizer.weight_decay", &["--weight-decay", "0.5"]),
        ("optimizer.max_grad_norm", &["--max-grad-norm", "0.5"]),
    ];
    const TRAIN: Mapping<'static> = &[
        // three epochs of the 100 steps `config(100)` gives one: the schedule spans 300
        ("epochs+schedule", &["--num-train-epochs", "3"]),
        // 250 steps of epochs of 100 (`config(100)`): 3 epochs, the schedule spanning 250
        ("epochs+max_steps+schedule", &["--max-steps", "250"]),
        ("batch_size", &["--per-device-train-batch-size", "3"]),
        ("grad_accum", &["--gradient-accumulation-steps", "3"]),
        ("schedule", &["--lr-scheduler-type", "cosine"]),
        ("eval_every", &["--eval-steps", "3"]),
        ("seed", &["--seed", "3"]),
        // `--max-length`/`--max-prompt-length` cut the data as it is read: the library's own
        // truncation is never needed
        ("truncation", &[]),
    ];
    fn check<T: clap::Args + clap::FromArgMatches>(
        name: &str,
        mappings: &[Mapping],
        config: impl Fn(&T) -> Value,
    ) {
        #[derive(clap::Parser)]
        struct W<A: clap::Args + clap::FromArgMatches> {
            #[command(flatten)]
            a: A,
        }
        let parse = |flags: &[&str]| -> Value {
            let w = W::<T>::try_parse_from(std::iter::once("x").chain(flags.iter().copied()))
                .unwrap_or_else(|e| panic!("{name} {flags:?}: {e}"));
            config(&w.a)
        };
        let mut base = Vec::new();
        leaves(&parse(&[]), "", &mut base);
        let table: Vec<&(&str, &[&str])> = mappings.iter().flat_map(|m| m.iter()).collect();
        // a key `a+b` names two fields that one flag sets together
        let fields = |k: &str| -> Vec<String> {
            let mut f: Vec<String> = k.split('+').map(str::to_string).collect();
            f.sort();
            f
        };
        for (key, _) in &base {
            assert!(
                table.iter().any(|(k, _)| fields(k).contains(key)),
                "{name}: the library field `{key}` has no flag"
            );
        }
        for (key, flags) in table {
            if flags.is_empty() {
                continue;
            }
            let mut changed = Vec::new();
            leaves(&parse(flags), "", &mut changed);
            let mut diff: Vec<String> = base
                .iter()
                .zip(&changed)
                .filter(|(a, b)| a.1 != b.1)
                .map(|(a, _)| a.0.clone())
                .collect();
            diff.sort();
            assert_eq!(diff, fields(key), "{name}: {flags:?}");
        }
    }
    check::<SftArgs>(
        "sft",
        &[
            OPTIMIZER,
            TRAIN,
            &[
                ("packing", &["--packing", "64"]),
                ("packing_strategy", &["--packing-strategy", "wrapped"]),
                ("loss_type", &["--loss-type", "dft"]),
            ],
        ],
        |a| serde_json::to_value(a.clone().completed().config(100)).unwrap(),
    );
    check::<RmArgs>(
        "rm",
        &[
            OPTIMIZER,
            TRAIN,
            &[
                ("center_eta", &["--center-rewards-coefficient", "0.5"]),
                ("use_margin", &["--use-margin"]),
                // the within-prompt loss constrains each step position's logits only against
                // the same position's, while the served `--step-aggregate` compares positions
                // (and a scalar head's bias gets no gradient): `rlhf rm` trains with BCE
                ("step_loss", &[]),
                ("disable_dropout", &["--disable-dropout", "false"]),
            ],
        ],
        |a| serde_json::to_value(a.clone().completed().config(100)).unwrap(),
    );
    check::<DpoArgs>(
        "dpo",
        &[
            OPTIMIZER,
            TRAIN,
            &[
                ("loss", &["--loss", "ipo"]),
                ("loss_weight", &["--loss-weights", "2"]),
                ("extra_losses", &["--loss", "sigmoid,sft"]),
                ("beta", &["--beta", "0.5"]),
                ("f_divergence", &["--f-divergence-type", "js_divergence"]),
                ("ld_alpha", &["--ld-alpha", "0.5"]),
                ("use_weighting", &["--use-weighting"]),
                ("disable_dropout", &["--disable-dropout", "false"]),
            ],
        ],
        |a| serde_json::to_value(a.clone().completed().config(100)).unwrap(),
    );
    check::<KtoArgs>(
        "kto",
        &[
            OPTIMIZER,
            TRAIN,
            &[
                ("loss_type", &["--loss-type", "apo_zero_unpaired"]),
                ("beta", &["--beta", "0.5"]),
                ("desirable_weight", &["--desirable-weight", "0.5"]),
                ("undesirable_weight", &["--undesirable-weight", "0.5"]),
                ("max_length", &["--max-length", "300"]),
                ("disable_dropout", &["--disable-dropout", "false"]),
            ],
        ],
        |a| serde_json::to_value(a.clone().completed().config(100)).unwrap(),
    );
    check::<OnlineDpoArgs>(
        "online-dpo",
        &[
            OPTIMIZER,
            &[
                ("rounds", &["--rounds", "7"]),
                ("prompts_per_round", &["--prompts-per-batch", "7"]),
                ("samples_per_prompt", &["--num-generations", "7"]),
                ("max_prompt_length", &["--max-prompt-length", "7"]),
                // the sampling settings that have flags: temperature and the token filters
                ("sampling", &["--temperature", "0.5"]),
                ("sampling", &["--top-k", "5"]),
                ("sampling", &["--top-p", "0.5"]),
                ("sampling", &["--min-p", "0.5"]),
                ("sampling", &["--repetition-penalty", "1.5"]),
                ("missing_eos_penalty", &["--missing-eos-penalty", "0.5"]),
                ("loss", &["--loss", "ipo"]),
                ("beta", &["--beta", "0.5"]),
                ("epochs", &["--epochs-per-round", "7"]),
                ("minibatches", &["--num-mini-batches", "7"]),
                ("schedule", &["--lr-scheduler-type", "cosine"]),
                ("disable_dropout", &["--disable-dropout", "false"]),
                ("seed", &["--seed", "7"]),
            ],
        ],
        |a| serde_json::to_value(a.clone().completed().config(100)).unwrap(),
    );
    check::<DistillArgs>(
        "distill",
        &[
            OPTIMIZER,
            &[
                ("epochs+schedule", &["--num-train-epochs", "3"]),
                ("epochs+max_steps+schedule", &["--max-steps", "250"]),
                ("batch_size", &["--per-device-train-batch-size", "3"]),
                ("grad_accum", &["--gradient-accumulation-steps", "3"]),
                ("max_prompt_length", &["--max-prompt-length", "7"]),
                // the sampling settings that have flags: length, temperature, the token filters
                ("sampling", &["--max-completion-length", "7"]),
                ("sampling", &["--temperature", "0.5"]),
                ("sampling", &["--top-k", "5"]),
                ("sampling", &["--top-p", "0.5"]),
                ("sampling", &["--min-p", "0.5"]),
                ("sampling", &["--repetition-penalty", "1.5"]),
                ("beta", &["--beta", "0.5"]),
                ("schedule", &["--lr-scheduler-type", "cosine"]),
                ("disable_dropout", &["--disable-dropout", "true"]),
                ("eval_every", &["--eval-steps", "3"]),
                ("seed", &["--seed", "3"]),
            ],
        ],
        |a| serde_json::to_value(a.clone().completed().config(100)).unwrap(),
    );
    for method in [
        onpolicy::Method::Ppo,
        onpolicy::Method::Grpo,
        onpolicy::Method::Rloo,
        onpolicy::Method::ReinforcePp,
        onpolicy::Method::Dapo,
        onpolicy::Method::Gspo,
        onpolicy::Method::Cispo,
    ] {
        let flip = [
            "--kl-in-reward",
            if method.preset().kl_in_reward {
                "false"
            } else {
                "true"
            },
        ];
        // DAPO's overlong buffer follows the length limit unless it is given
        let length: &[&str] = if method == onpolicy::Method::Dapo {
            &["--max-completion-length", "7", "--overlong-buffer", "10"]
        } else {
            &["--max-completion-length", "7"]
        };
        check::<onpolicy::OnPolicyArgs>(
            method.name(),
            &[
                OPTIMIZER,
                &[
                    ("iterations", &["--iterations", "7"]),
                    ("seed", &["--seed", "7"]),
                    ("samples_per_prompt", &["--samples-per-prompt", "7"]),
                    ("prompts_per_batch", &["--prompts-per-batch", "7"]),
                    ("query_length", &["--max-prompt-length", "7"]),
                    ("response_length", length),
                    ("temperature", &["--temperature", "0.5"]),
                    ("top_k", &["--top-k", "5"]),
                    ("top_p", &["--top-p", "0.5"]),
                    ("min_p", &["--min-p", "0.5"]),
                    ("repetition_penalty", &["--repetition-penalty", "1.5"]),
                    ("missing_eos_penalty", &["--missing-eos-penalty", "-3"]),
                    (
                        "mask_truncated_completions",
                        &["--mask-truncated-completions"],
                    ),
                    ("disable_dropout", &["--disable-dropout", "false"]),
                    (
                        "value_from_reward_model",
                        &["--value-from-reward-model", "false"],
                    ),
                    ("kl", &["--beta", "0.5"]),
                    ("kl_estimator", &["--kl-estimator", "k2"]),
                    ("kl_in_reward", &flip),
                    (
                        "kl_bias_correction",
                        match method {
                            onpolicy::Method::Grpo
                            | onpolicy::Method::Dapo
                            | onpolicy::Method::Gspo
                            | onpolicy::Method::Cispo => &["--use-bias-correction-kl", "false"],
                            _ => &["--use-bias-correction-kl"],
                        },
                    ),
                    // the subcommand: ppo (GAE), grpo, rloo, reinforce-pp; the
                    // group-normalised ones scale by the group's std or not
                    (
                        "advantage",
                        match method {
                            onpolicy::Method::Grpo
                            | onpolicy::Method::Dapo
                            | onpolicy::Method::Gspo
                            | onpolicy::Method::Cispo => &["--scale-rewards", "false"],
                            _ => &[],
                        },
                    ),
                    (
                        "multi_objective_aggregation",
                        &["--multi-objective-aggregation", "normalize_then_sum"],
                    ),
                    ("gamma", &["--gamma", "0.5"]),
                    ("lam", &["--lam", "0.5"]),
                    ("whiten_advantages", &["--whiten-advantages", "false"]),
                    ("normalize_advantages", &["--normalize-advantages"]),
                    ("lr_schedule", &["--lr-scheduler-type", "cosine"]),
                    ("reward_clip_range", &["--reward-clip-range", "-1", "1"]),
                    ("whiten_rewards", &["--whiten-rewards", "true"]),
                    ("ppo_epochs", &["--num-ppo-epochs", "7"]),
                    ("num_minibatches", &["--num-mini-batches", "7"]),
                    ("grad_accum", &["--gradient-accumulation-steps", "7"]),
                    ("clip_eps", &["--cliprange", "0.5"]),
                    ("clip_eps_high", &["--epsilon-high", "0.5"]),
                    ("delta", &["--delta", "2"]),
                    // one field, τ_pos and τ_neg, each set by its own flag
                    ("sapo_temperatures", &["--sapo-temperature-pos", "2"]),
                    ("sapo_temperatures", &["--sapo-temperature-neg", "3"]),
                    ("vespo_shape", &["--vespo-k-pos", "1"]),
                    ("vespo_shape", &["--vespo-lambda-pos", "1"]),
                    ("vespo_shape", &["--vespo-k-neg", "1"]),
                    ("vespo_shape", &["--vespo-lambda-neg", "1"]),
                    (
                        "off_policy_mask_threshold",
                        &["--off-policy-mask-threshold", "0.5"],
                    ),
                    ("top_entropy_quantile", &["--top-entropy-quantile", "0.2"]),
                    ("entropy_coef", &["--entropy-coef", "0.01"]),
                    (
                        "policy_objective",
                        match method {
                            onpolicy::Method::Gspo => &["--importance-sampling-level", "token"],
                            // `--loss-type cispo` is CISPO's surrogate with the token mean
                            onpolicy::Method::Cispo => &[
                                "--loss-type",
                                "dapo",
                                "--cliprange",
                                "1",
                                "--epsilon-high",
                                "4",
                            ],
                            _ => &["--importance-sampling-level", "sequence"],
                        },
                    ),
                    (
                        "loss_aggregation",
                        match method {
                            onpolicy::Method::Gspo => &["--loss-type", "dr_grpo"],
                            // every other loss type leaves CISPO's surrogate
                            onpolicy::Method::Cispo => &[],
                            _ => &["--loss-type", "grpo"],
                        },
                    ),
                    ("dynamic_sampling", &["--dynamic-sampling", "7"]),
                    ("overlong_buffer", &["--overlong-buffer", "3"]),
                    ("overlong_penalty", &["--overlong-penalty", "0.5"]),
                    ("rollout_is_cap", &["--rollout-is-cap", "2"]),
                    ("value_clip", &["--cliprange-value", "0.5"]),
                    ("vf_coef", &["--vf-coef", "0.5"]),
                    (
                        "anneal_lr",
                        if method.preset().anneal_lr {
                            &["--anneal-lr", "false"]
                        } else {
                            &["--anneal-lr", "true"]
                        },
                    ),
                    ("ptx_coef", &["--ptx-coef", "0.5"]),
                    ("ptx_batch_size", &["--ptx-batch-size", "7"]),
                    ("score_baseline", &["--score-baseline", "true"]),
                    ("length_bucket_width", &["--length-bucket-width", "7"]),
                ],
            ],
            |a| serde_json::to_value(a.clone().completed(method).config(method, 64)).unwrap(),
        );
    }
}

fn json_lines(text: &str) -> Vec<Value> {
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A checkpoint whose `generation_config.json` lists another end token besides the tokenizer's
/// EOS (as Qwen2.5-Instruct lists `<|endoftext|>` besides `<|im_end|>`): `rlhf generate` stops a
/// greedy row at that token, as `transformers` does, reports it stopped, and prints the text
/// before it.
#[test]
fn generation_stops_at_every_end_token_of_generation_config() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let source = PathBuf::from(fixture("tiny-qwen2-chat"));
    for f in std::fs::read_dir(&source).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    let run = || {
        json_lines(&ok(&[
            "generate",
            "--model",
            &s(&model),
            "--prompt",
            "the cat sat on",
            "--max-new-tokens",
            "8",
            "--temperature",
            "0",
            "--json",
        ]))
        .remove(0)
    };
    let ids = |v: &Value| -> Vec<u64> {
        v["completion_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap())
            .collect()
    };
    let free = ids(&run());
    // the tokenizer's EOS is <|im_end|>, id 2; stop at a token the greedy row emits instead
    let at = (1..free.len())
        .find(|&i| free[i] != 2)
        .expect("a greedy token other than EOS");
    let stop = free[at];
    let at = free.iter().position(|&t| t == stop).unwrap();
    std::fs::write(
        model.join("generation_config.json"),
        format!(r#"{{"eos_token_id": [2, {stop}]}}"#),
    )
    .unwrap();
    let stopped = run();
    assert_eq!(ids(&stopped), free[..=at], "{stopped}");
    assert_eq!(stopped["stopped_at_eos"], true, "{stopped}");
    let before = run_text(&model, &free[..at]);
    assert_eq!(stopped["completion"], before.as_str(), "{stopped}");
}

/// The text of `ids` under the tokenizer in `dir`.
fn run_text(dir: &Path, ids: &[u64]) -> String {
    let tok = rlhf_data::Tokenizer::from_dir(dir).unwrap();
    let ids: Vec<u32> = ids.iter().map(|&x| x as u32).collect();
    tok.decode(&ids).unwrap()
}

/// `rlhf generate` (which replaces rlhf-models' `generate` command): greedy JSON output, the
/// same greedy tokens alone and in a batch (the tokenizer's PAD lies past the vocabulary), a
/// seed reproduces a sample, a repetition penalty steers greedy decoding, and mistakes are
/// reported.
#[test]
fn generate_samples_reproducibly_and_reports_mistakes() {
    let model = fixture("tiny-llama");
    let args = [
        "generate",
        "--model",
        &model,
        "--prompt",
        "the cat sat",
        "--prompt",
        "numbers 0 1",
        "--max-new-tokens",
        "6",
        "--json",
    ];
    let greedy = json_lines(&ok(&[&args[..], &["--temperature", "0"]].concat()));
    assert_eq!(greedy.len(), 2);
    for line in &greedy {
        assert_eq!(line["completion_ids"].as_array().unwrap().len(), 6);
        assert!(
            line["logprobs"]
                .as_array()
                .unwrap()
                .iter()
                .all(|l| l.as_f64().unwrap() <= 0.0)
        );
    }
    let one = json_lines(&ok(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "numbers 0 1",
        "--max-new-tokens",
        "6",
        "--json",
        "--temperature",
        "0",
    ]));
    assert_eq!(one[0]["completion_ids"], greedy[1]["completion_ids"]);
    let sample = || ok(&[&args[..], &["--seed", "4", "--top-k", "20"]].concat());
    assert_eq!(sample(), sample(), "a seed reproduces a sample");
    let out = rlhf(&["generate", "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--model"));
    for (flag, value, field) in [
        ("--top-p", "1.5", "top_p"),
        ("--min-p", "1.5", "min_p"),
        ("--repetition-penalty", "0", "repetition_penalty"),
        ("--temperature=-1", "", "temperature"),
    ] {
        let flags: Vec<&str> = [flag, value]
            .into_iter()
            .filter(|f| !f.is_empty())
            .collect();
        let out = rlhf(
            &[
                &["generate", "--model", &model, "--prompt", "x"][..],
                &flags,
            ]
            .concat(),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(field),
            "{flag} {value}: {err}"
        );
    }
    // a repetition penalty steers greedy decoding away from the prompt's and its own tokens:
    // the plain greedy continuation repeats tokens, the penalised one fewer
    let repeats = |line: &Value| {
        let ids: Vec<u64> = line["completion_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        let distinct: std::collections::BTreeSet<_> = ids.iter().collect();
        ids.len() - distinct.len()
    };
    let long = ["--max-new-tokens", "12", "--temperature", "0"];
    let plain = json_lines(&ok(&[&args[..5], &long, &["--json"]].concat()));
    let penalised = json_lines(&ok(&[
        &args[..5],
        &long,
        &["--json", "--repetition-penalty", "5"],
    ]
    .concat()));
    assert!(
        repeats(&penalised[0]) < repeats(&plain[0]),
        "{} against {}",
        penalised[0]["completion_ids"],
        plain[0]["completion_ids"]
    );
    let out = rlhf(&[
        "generate",
        "--model",
        "/nonexistent-model-dir",
        "--prompt",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent-model-dir"));
}

/// A GPT-NeoX checkpoint of `hidden` × `layers` with fresh weights and tiny-pythia's tokenizer,
/// written to `dir`: large enough that the tensors, not the process, fill the memory.
fn fresh_neox(dir: &Path, hidden: usize, layers: usize) -> String {
    let tiny = PathBuf::from(fixture("tiny-pythia"));
    let mut config = rlhf_models::hf::config_from_json(&tiny.join("config.json")).unwrap();
    config.hidden_size = hidden;
    config.intermediate_size = 4 * hidden;
    config.num_hidden_layers = layers;
    config.num_attention_heads = hidden / 64;
    config.num_key_value_heads = hidden / 64;
    let device = rlhf_core::parse_device("flex").unwrap();
    let model = rlhf_models::CausalLm::init(&config, &device).unwrap();
    rlhf_models::save_pretrained(&model, &config, dir).unwrap();
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(tiny.join(file), dir.join(file)).unwrap();
    }
    s(dir)
}

/// The number of MiB after `prefix` on a line of `log`.
fn mib_after(log: &str, prefix: &str) -> f64 {
    let line = log
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no `{prefix}` in\n{log}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// The memory estimate a training run states before its first step holds within a quarter of the
/// peak resident memory the operating system measured for the run (VmHWM, which the command
/// reports at its end): SFT and DPO, each with full fine-tuning and LoRA, each with and without
/// gradient checkpointing, DPO with its reference held in bf16, and SFT on one short row on one
/// replica, whose peak is the writing of a checkpoint (streamed part by part). The
/// shapes are chosen so that every part counts: 25 M parameters (weights, gradients, AdamW
/// moments, checkpoints and the export), and sequences of 256 tokens (activations that gradient
/// checkpointing visibly cuts).
#[test]
fn the_memory_estimate_holds_within_a_quarter_of_the_measured_peak() {
    let dir = tempfile::tempdir().unwrap();
    let model = fresh_neox(&dir.path().join("model"), 512, 8);
    // records long enough that every sequence is cut to 256 tokens (128 prompt, 128 response),
    // and two steps at least: the AdamW moments exist from the second step on
    let text = std::fs::read_to_string(sample("preference.jsonl")).unwrap();
    let (mut sft, mut pairs) = (String::new(), String::new());
    for (k, line) in text.lines().take(16).enumerate() {
        let v: Value = serde_json::from_str(line).unwrap();
        let long = |key: &str| v[key].as_str().unwrap().repeat(12);
        let (prompt, chosen, rejected) = (long("prompt"), long("chosen"), long("rejected"));
        sft += &json!({ "prompt": prompt, "completion": chosen }).to_string();
        sft += "\n";
        if k < 8 {
            pairs +=
                &json!({ "prompt": prompt, "chosen": chosen, "rejected": rejected }).to_string();
            pairs += "\n";
        }
    }
    let (sft_data, pair_data) = (dir.path().join("sft.jsonl"), dir.path().join("pairs.jsonl"));
    std::fs::write(&sft_data, sft).unwrap();
    std::fs::write(&pair_data, pairs).unwrap();
    let (full, ckpt) = (&[][..], &["--gradient-checkpointing"][..]);
    let (lora, lora_ckpt) = (
        &["--lora-rank", "8"][..],
        &["--lora-rank", "8", "--gradient-checkpointing"][..],
    );
    let bf16 = &["--frozen-dtype", "bf16"][..];
    let one_replica = &["--devices", "flex"][..];
    let mut peaks = std::collections::BTreeMap::new();
    for (command, (batch, length), name, options) in [
        ("sft", ("8", "256"), "full", full),
        ("sft", ("8", "256"), "full, checkpointing", ckpt),
        ("sft", ("8", "256"), "lora", lora),
        ("sft", ("8", "256"), "lora, checkpointing", lora_ckpt),
        ("sft", ("1", "64"), "full, 1 row, 1 replica", one_replica),
        ("dpo", ("4", "256"), "full", full),
        ("dpo", ("4", "256"), "full, checkpointing", ckpt),
        ("dpo", ("4", "256"), "lora", lora),
        ("dpo", ("4", "256"), "lora, checkpointing", lora_ckpt),
        ("dpo", ("4", "256"), "full, bf16 reference", bf16),
    ] {
        let out = dir.path().join(format!("{command}-{}", peaks.len()));
        let data = s(if command == "sft" {
            &sft_data
        } else {
            &pair_data
        });
        let mut args = vec![
            command,
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            out.to_str().unwrap(),
            "--max-length",
            length,
            "--per-device-train-batch-size",
            batch,
            "--learning-rate",
            "1e-5",
        ];
        args.extend(options);
        let run = rlhf(&args);
        let log = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "rlhf {}\n{log}", args.join(" "));
        let estimate = mib_after(&log, "memory: estimated peak ");
        let peak = mib_after(&log, "memory: peak resident ");
        println!("{command} {name}: estimated {estimate:.0} MiB, measured {peak:.0} MiB");
        assert!(
            (estimate - peak).abs() <= 0.25 * peak,
            "{command} ({name}): estimated {estimate:.0} MiB, measured {peak:.0} MiB\n{log}"
        );
        peaks.insert((command, name), (peak, log.into_owned()));
    }
    // the options the estimate counts change the measured peak in the direction it counts them
    // (under LoRA the estimate counts checkpointing as nothing: on burn-flex, whose fused softmax
    // keeps one s² tensor per head where checkpointing keeps two, it does not lower the peak,
    // and only the bound above holds it)
    for command in ["sft", "dpo"] {
        let peak = |name| peaks[&(command, name)].0;
        assert!(peak("lora") < 0.8 * peak("full"), "{command}");
        assert!(
            peak("full, checkpointing") < 0.95 * peak("full"),
            "{command}"
        );
    }
    // the reference in bf16 holds half its f32 bytes: at least half of that saving shows
    let saving = std::fs::metadata(Path::new(&model).join("model.safetensors"))
        .unwrap()
        .len() as f64
        / 2.0
        / (1 << 20) as f64;
    let dpo = |name| peaks[&("dpo", name)].0;
    assert!(
        dpo("full, bf16 reference") < dpo("full") - 0.5 * saving,
        "bf16 reference: {} MiB, f32: {} MiB, expected saving {saving:.0} MiB",
        dpo("full, bf16 reference"),
        dpo("full")
    );
    // one short row on one replica: the estimate's largest phase is writing the checkpoint
    let log = &peaks[&("sft", "full, 1 row, 1 replica")].1;
    let steps = mib_after(log, "; steps ");
    let checkpoints = mib_after(log, ", checkpoints ");
    assert!(checkpoints > steps, "{log}");
}

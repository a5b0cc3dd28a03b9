//! The tokenizer: training, saving, loading, PAD and EOS.

use rlhf_data::tasks::{Task, TldrSynth, with_eos};
use rlhf_data::{Split, Tokenizer};

fn corpus() -> Vec<String> {
    let t = TldrSynth::default();
    (0..300)
        .flat_map(|i| {
            let p = t.prompt(Split::Train, i);
            let r = t.reference(&p);
            [p, r]
        })
        .collect()
}

#[test]
fn trained_bpe_round_trips_text_and_knows_eos_and_pad() {
    let texts = corpus();
    let tok = Tokenizer::train_bpe(texts.iter().map(String::as_str), 600).unwrap();
    assert!(
        tok.vocab_size() <= 600 && tok.vocab_size() > 300,
        "{}",
        tok.vocab_size()
    );
    for s in texts
        .iter()
        .take(20)
        .chain([&"émoji 🎉 and ünïcode".to_string()])
    {
        let ids = tok.encode(s).unwrap();
        assert_eq!(&tok.decode(&ids).unwrap(), s);
    }
    // the EOS text maps to the EOS id, and decodes back visibly
    let ids = tok.encode(&with_eos(" alice owns the red car.")).unwrap();
    assert_eq!(*ids.last().unwrap(), tok.eos_id());
    assert!(tok.decode(&ids).unwrap().ends_with("<|endoftext|>"));
    assert_ne!(tok.pad_id(), tok.eos_id());
    // BPE merges: the corpus's words take fewer tokens than bytes
    let p = &texts[0];
    assert!(tok.encode(p).unwrap().len() * 2 < p.len());

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    tok.save(&path).unwrap();
    let back = Tokenizer::from_file(&path, None).unwrap();
    assert_eq!(back.encode(p).unwrap(), tok.encode(p).unwrap());
    assert_eq!((back.eos_id(), back.pad_id()), (tok.eos_id(), tok.pad_id()));
}

#[test]
fn a_tokenizer_without_pad_gets_one_outside_its_vocabulary() {
    // a minimal word-level tokenizer.json, as a user might have: EOS but no PAD
    let json = r#"{"version":"1.0","truncation":null,"padding":null,"added_tokens":[{"id":2,"content":"</s>","single_word":false,"lstrip":false,"rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"Whitespace"},"post_processor":null,"decoder":null,"model":{"type":"WordLevel","vocab":{"hello":0,"world":1,"</s>":2,"[UNK]":3},"unk_token":"[UNK]"}}"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let tok = Tokenizer::from_file(&path, None).unwrap();
    assert_eq!(tok.eos_id(), 2);
    assert_eq!(
        tok.pad_id(),
        4,
        "PAD takes the next free id; the model's 4 embeddings stay as they are"
    );
    assert_eq!(tok.encode("hello world").unwrap(), vec![0, 1]);
    // a broken file is a data error naming it
    std::fs::write(&path, "{ not a tokenizer").unwrap();
    let e = Tokenizer::from_file(&path, None).unwrap_err().to_string();
    assert!(
        e.contains("tokenizer.json") && e.contains("not a valid tokenizer.json"),
        "{e}"
    );
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlhf-models/tests/fixtures/hf")
        .join(name)
}

/// Llama 3's tokenizer puts BOS before every text; `encode_start` gives the ids `transformers`'
/// tokenizer gives (what TRL's trainers read for plain text), and a conversation rendered by the
/// chat template, which writes BOS itself, keeps exactly one (what `apply_chat_template` gives).
#[test]
fn a_text_begins_with_the_bos_that_transformers_puts_before_it() {
    let dir = fixture("tiny-llama3-chat");
    let tok = Tokenizer::from_dir(&dir).unwrap();
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("tokenization.json")).unwrap())
            .unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u32> { serde_json::from_value(v.clone()).unwrap() };
    assert_eq!(tok.start(), [0]);
    assert_eq!(tok.eos_text(), "<|eot_id|>");
    for case in expected["texts"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            tok.encode_start(text).unwrap(),
            ids(&case["input_ids"]),
            "{text:?}"
        );
        // without the start, a continuation's ids
        assert_eq!(
            tok.encode(text).unwrap(),
            ids(&case["input_ids"])[1..],
            "{text:?}"
        );
    }
    let messages: Vec<rlhf_data::Message> =
        serde_json::from_value(expected["messages"].clone()).unwrap();
    let format = tok.config().chat_format().unwrap();
    let prompt = format
        .prompt(&rlhf_data::Turns::Messages(messages))
        .unwrap();
    assert_eq!(
        tok.encode_start(&prompt).unwrap(),
        ids(&expected["chat_prompt_ids"])
    );
    // a prompt cut to its last tokens keeps its BOS
    let long = expected["texts"][0]["text"].as_str().unwrap();
    let all = tok.encode_start(long).unwrap();
    let cut = tok.encode_prompt(long, 5).unwrap();
    assert_eq!(cut[0], 0);
    assert_eq!(cut[1..], all[all.len() - 4..]);
    assert_eq!(tok.encode_prompt(long, 1).unwrap(), [0]);
    assert_eq!(tok.encode_prompt(long, 100).unwrap(), all);

    // tokenizers that put nothing before a text: Pythia's, Qwen2's, and one trained here
    for name in ["tiny-pythia", "tiny-qwen2-chat"] {
        let tok = Tokenizer::from_dir(&fixture(name)).unwrap();
        assert!(tok.start().is_empty(), "{name}");
        assert_eq!(
            tok.encode_start("hello").unwrap(),
            tok.encode("hello").unwrap()
        );
    }
    let trained = Tokenizer::train_bpe(corpus().iter(), 400).unwrap();
    assert!(trained.start().is_empty());
}

/// What comes before a text is the post-processor's, as `transformers` 5 loads a checkpoint:
/// `tokenizer_config.json`'s `add_bos_token` is not read when there is a `tokenizer.json` (5.25
/// gives `[0, …]` with `add_bos_token: false`, and no BOS for a file without a post-processor
/// even with `add_bos_token: true`).
#[test]
fn the_post_processor_decides_what_comes_before_a_text() {
    let source = fixture("tiny-llama3-chat");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(source.join("tokenizer_config.json")).unwrap(),
    )
    .unwrap();
    let tokenizer: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("tokenizer.json")).unwrap())
            .unwrap();
    let with = |add_bos_token: bool, post_processor: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut t = tokenizer.clone();
        if !post_processor {
            t["post_processor"] = serde_json::Value::Null;
        }
        std::fs::write(dir.path().join("tokenizer.json"), t.to_string()).unwrap();
        let mut c = config.clone();
        c["add_bos_token"] = add_bos_token.into();
        std::fs::write(dir.path().join("tokenizer_config.json"), c.to_string()).unwrap();
        Tokenizer::from_dir(dir.path()).unwrap().start().to_vec()
    };
    assert_eq!(with(false, true), [0]);
    assert_eq!(with(true, false), Vec::<u32>::new());
    assert_eq!(with(true, true), [0]);
}

/// A chat template kept beside the config (`chat_template.jinja`, as `transformers` 5 saves it)
/// is written with the tokenizer, and one set for a run replaces the checkpoint's: a trained model
/// keeps the template it was trained with.
#[test]
fn the_chat_template_goes_with_the_tokenizer() {
    let src = fixture("tiny-qwen2-chat");
    let tmp = tempfile::tempdir().unwrap();
    let (apart, out) = (tmp.path().join("apart"), tmp.path().join("out"));
    std::fs::create_dir_all(&apart).unwrap();
    std::fs::copy(src.join("tokenizer.json"), apart.join("tokenizer.json")).unwrap();
    let mut config: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(src.join("tokenizer_config.json")).unwrap())
            .unwrap();
    let template = config.remove("chat_template").unwrap();
    let template = template.as_str().unwrap();
    std::fs::write(
        apart.join("tokenizer_config.json"),
        serde_json::to_string(&config).unwrap(),
    )
    .unwrap();
    std::fs::write(apart.join("chat_template.jinja"), template).unwrap();
    let tok = Tokenizer::from_dir(&apart).unwrap();
    assert_eq!(tok.config().chat_template.as_deref(), Some(template));
    tok.save_dir(&out).unwrap();
    let saved = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(saved.config().chat_template.as_deref(), Some(template));
    // a run's own template replaces the checkpoint's, in the config's place too
    let mut tok = Tokenizer::from_dir(&src).unwrap();
    tok.set_chat_template("{{ messages[0]['content'] }}");
    tok.save_dir(&out).unwrap();
    let saved = Tokenizer::from_dir(&out).unwrap();
    assert_eq!(
        saved.config().chat_template.as_deref(),
        Some("{{ messages[0]['content'] }}")
    );
}

/// A checkpoint whose `generation_config.json` lists end tokens besides the tokenizer's EOS (as
/// Qwen2.5-Instruct lists `<|im_end|>` and `<|endoftext|>`): the others are stop ids, a response
/// ending with one decodes as one ending with EOS, and a malformed list is refused by file.
#[test]
fn generation_config_end_tokens_are_stop_ids() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../rlhf-models/tests/fixtures/hf/tiny-qwen2-chat");
    let dir = tempfile::tempdir().unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
    }
    let plain = Tokenizer::from_dir(dir.path()).unwrap();
    assert!(plain.stop_ids().is_empty(), "no generation_config.json");
    let write = |text: &str| std::fs::write(dir.path().join("generation_config.json"), text);
    write(r#"{"eos_token_id": [0, 2, 0]}"#).unwrap();
    let tok = Tokenizer::from_dir(dir.path()).unwrap();
    assert_eq!(tok.eos_text(), "<|im_end|>");
    assert_eq!(tok.eos_id(), 2);
    assert_eq!(
        tok.stop_ids(),
        &[0],
        "EOS itself and repeats are not listed"
    );
    let body = tok.encode("it sat.").unwrap();
    let with = |end: u32| body.iter().copied().chain([end]).collect::<Vec<_>>();
    assert_eq!(tok.decode_response(&with(0)).unwrap(), "it sat.<|im_end|>");
    assert_eq!(tok.decode_response(&with(2)).unwrap(), "it sat.<|im_end|>");
    assert_eq!(tok.decode_response(&body).unwrap(), "it sat.");
    assert_eq!(tok.decode(&with(0)).unwrap(), "it sat.<|endoftext|>");
    write(r#"{"eos_token_id": "<|endoftext|>"}"#).unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("generation_config.json") && err.contains("eos_token_id"),
        "{err}"
    );
    // without generation_config.json, config.json's list (transformers builds from it then)
    std::fs::remove_file(dir.path().join("generation_config.json")).unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        r#"{"eos_token_id": [2, 1]}"#,
    )
    .unwrap();
    assert_eq!(Tokenizer::from_dir(dir.path()).unwrap().stop_ids(), &[1]);
}

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

#!/usr/bin/env python3
"""Peer baseline: the same workloads as the project's `bench-perf`, run through Hugging Face TRL on
PyTorch (CPU), so that throughput can be compared side by side on one machine in one run.

Set-up (once, a few GB):  python3 -m venv .peer-venv && .peer-venv/bin/pip install torch trl transformers datasets
Run:  .peer-venv/bin/python trl_peer.py --trainer dpo --hidden 256 --layers 4 --heads 4 --examples 128

`rlhf-perf --peer PYTHON` (what `cargo xtask bench-perf --peer PYTHON` runs) calls it once per run.
Trainers: sft, reward, dpo (the reference model run beside the policy at every batch), dpo-ref-cache
(TRL's `precompute_ref_log_probs=True`: the reference pass runs when the trainer is built, before
the timed `train()`), rloo, generate.

Prints one JSON line: trainer, parameter count, examples, seconds, examples/s, tokens/s, threads.
Model: a randomly initialised GPT-NeoX (Pythia architecture) with dropout off; tokenizer: a byte-level
BPE trained on the synthetic corpus; data: synthetic word strings of fixed lengths.
"""
import argparse, copy, json, os, random, tempfile, time

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification, PreTrainedTokenizerFast

WORDS = ("the cat dog ran sat on mat big small red blue quick lazy fox jumped over under tree house river "
         "alice bob paris london apple car book green old new").split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


def tokenizer(rng, vocab):
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [sentence(rng, 24) for _ in range(4000)]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["[PAD]", "[EOS]", "[UNK]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")


def config(a, vocab):
    return GPTNeoXConfig(vocab_size=vocab, hidden_size=a.hidden, num_hidden_layers=a.layers,
                         num_attention_heads=a.heads, intermediate_size=4 * a.hidden, max_position_embeddings=1024,
                         hidden_dropout=0.0, attention_dropout=0.0, rotary_pct=0.25, use_parallel_residual=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--trainer", choices=["sft", "reward", "dpo", "dpo-ref-cache", "rloo", "generate"], required=True)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--vocab", type=int, default=512)
    p.add_argument("--examples", type=int, default=256)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--prompt-words", type=int, default=32)
    p.add_argument("--response-words", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=48)
    p.add_argument("--samples-per-prompt", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    # TRL 1.16 turns on bf16 autocast by default, even with use_cpu=True; the project trains in f32,
    # so the peer does too unless asked. On CPUs with avx512_bf16 bf16 is ~4x faster; without, emulated and slow.
    p.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    a = p.parse_args()
    rng = random.Random(a.seed)
    torch.manual_seed(a.seed)
    tok = tokenizer(rng, a.vocab)
    cfg = config(a, len(tok))
    out = tempfile.mkdtemp(prefix="trl-peer-")
    common = dict(output_dir=out, per_device_train_batch_size=a.batch, num_train_epochs=1, learning_rate=1e-4,
                  logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
                  bf16=a.precision == "bf16")
    P, R = a.prompt_words, a.response_words
    n = a.examples
    tokens = 0
    if a.trainer == "generate":
        model = GPTNeoXForCausalLM(cfg).eval()
        prompts = [sentence(rng, P) for _ in range(n)]
        tok.padding_side = "left"
        t = time.time()
        with torch.no_grad():
            for i in range(0, n, a.batch):
                enc = tok(prompts[i:i + a.batch], return_tensors="pt", padding=True)
                model.generate(**enc, max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=True,
                               temperature=0.7, top_k=0, top_p=1.0, pad_token_id=tok.pad_token_id)
                tokens += enc["input_ids"].shape[0] * a.new_tokens
        dt = time.time() - t
    else:
        if a.trainer == "sft":
            from trl import SFTConfig, SFTTrainer
            ds = Dataset.from_list([{"prompt": sentence(rng, P), "completion": sentence(rng, R)} for _ in range(n)])
            tr = SFTTrainer(model=GPTNeoXForCausalLM(cfg), args=SFTConfig(max_length=1024, **common),
                            train_dataset=ds, processing_class=tok)
        elif a.trainer == "reward":
            from trl import RewardConfig, RewardTrainer
            cfg.num_labels = 1
            cfg.pad_token_id = tok.pad_token_id
            ds = Dataset.from_list([{"prompt": sentence(rng, P), "chosen": sentence(rng, R), "rejected": sentence(rng, R)}
                                    for _ in range(n)])
            tr = RewardTrainer(model=GPTNeoXForSequenceClassification(cfg), args=RewardConfig(max_length=1024, **common),
                               train_dataset=ds, processing_class=tok)
        elif a.trainer in ("dpo", "dpo-ref-cache"):
            from trl import DPOConfig, DPOTrainer
            ds = Dataset.from_list([{"prompt": sentence(rng, P), "chosen": sentence(rng, R), "rejected": sentence(rng, R)}
                                    for _ in range(n)])
            policy = GPTNeoXForCausalLM(cfg)
            reference = copy.deepcopy(policy).eval()
            precompute = a.trainer == "dpo-ref-cache"
            tr = DPOTrainer(model=policy, ref_model=reference, train_dataset=ds, processing_class=tok,
                            args=DPOConfig(max_length=1024, beta=0.1, precompute_ref_log_probs=precompute, **common))
        else:  # rloo: online RL with generation, a rule reward (share of the word 'cat')
            from trl import RLOOConfig, RLOOTrainer

            def reward(completions, **kw):
                return [c.split().count("cat") / max(1, len(c.split())) for c in completions]

            ds = Dataset.from_list([{"prompt": sentence(rng, P)} for _ in range(n)])
            k = a.samples_per_prompt
            path = os.path.join(out, "init-model")  # RLOO builds its reference from a path
            GPTNeoXForCausalLM(cfg).save_pretrained(path)
            tok.save_pretrained(path)
            tr = RLOOTrainer(model=path, reward_funcs=reward, train_dataset=ds, processing_class=tok,
                             args=RLOOConfig(num_generations=k, max_completion_length=a.new_tokens, temperature=0.7,
                                             generation_batch_size=a.batch * k, **common))
        t = time.time()
        tr.train()
        dt = time.time() - t
        tokens = n * (P + R) * (2 if a.trainer in ("reward", "dpo", "dpo-ref-cache") else 1)
    nparams = sum(p.numel() for p in GPTNeoXForCausalLM(cfg).parameters())
    print(json.dumps({"peer": "trl", "trainer": a.trainer, "params": nparams, "examples": n, "seconds": round(dt, 3),
                      "examples_per_s": round(n / dt, 3), "approx_words_per_s": round(tokens / dt, 1),
                      "threads": torch.get_num_threads(), "torch": torch.__version__, "precision": a.precision}))


if __name__ == "__main__":
    main()

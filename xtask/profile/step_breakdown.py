#!/usr/bin/env python3
"""PyTorch's twin of `cargo run -p rlhf-bench --example step_breakdown`: one SFT step of the
`bench-perf` GPT-NeoX models (same config as rlhf-bench/peer/trl_peer.py), 16 sequences of 65
tokens, loss on the last 33; forward, backward and the AdamW update timed separately, medians of
10 steps after 3 warm-up steps, two threads.

    /path/to/venv/bin/python xtask/profile/step_breakdown.py
"""
import json
import statistics
import time

import torch
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

torch.set_num_threads(2)
torch.manual_seed(0)
ROWS, PROMPT, SEQ, VOCAB = 16, 32, 65, 512

for name, hidden, layers, heads in [("small", 256, 4, 4), ("25m", 512, 8, 8)]:
    cfg = GPTNeoXConfig(vocab_size=VOCAB, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=1024, hidden_dropout=0.0, attention_dropout=0.0,
                        rotary_pct=0.25, use_parallel_residual=True)
    model = GPTNeoXForCausalLM(cfg).train()
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(3, VOCAB, (ROWS, SEQ))
    labels = ids.clone()
    labels[:, :PROMPT] = -100
    fwd, bwd, upd = [], [], []
    for step in range(13):
        t0 = time.perf_counter()
        loss = model(input_ids=ids, labels=labels).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optim.step()
        optim.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if step >= 3:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            upd.append((t3 - t2) * 1e3)
    f, b, u = (statistics.median(v) for v in (fwd, bwd, upd))
    print(json.dumps({"size": name, "forward_ms": round(f, 1), "backward_ms": round(b, 1),
                      "optimizer_ms": round(u, 1), "step_ms": round(f + b + u, 1),
                      "attention": model.config._attn_implementation}))

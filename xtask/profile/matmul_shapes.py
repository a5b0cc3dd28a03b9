#!/usr/bin/env python3
"""PyTorch's f32 matmul rate at the products of a `bench-perf` training step: the twin of
`cargo run -p rlhf-bench --example matmul_shapes` (same shapes, same timing rule: the median of
20 products after one warm-up, transposes as views). Two threads, like the peer.

    /path/to/venv/bin/python xtask/profile/matmul_shapes.py
"""
import json
import time

import torch

torch.set_num_threads(2)
SIZES = [("small", 256, 512), ("25m", 512, 512)]
M = 16 * 65
REPS = 20


def rate(a, b):
    m, k = a.shape[-2:]
    n = b.shape[-1]
    batch = a.numel() // (m * k)
    (a @ b).sum()
    times = []
    for _ in range(REPS):
        s = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - s)
    times.sort()
    return 2.0 * batch * m * k * n / times[REPS // 2]


with torch.no_grad():
    for size, d, vocab in SIZES:
        for layer, k, n in [("qkv", d, 3 * d), ("attn_out", d, d), ("mlp_up", d, 4 * d),
                            ("mlp_down", 4 * d, d), ("lm_head", d, vocab)]:
            x, w, dy = torch.randn(M, k), torch.randn(k, n), torch.randn(M, n)
            print(json.dumps({
                "size": size, "layer": layer, "m": M, "k": k, "n": n,
                "forward": round(rate(x, w) / 1e9, 1),
                "grad_input": round(rate(dy, w.t()) / 1e9, 1),
                "grad_weight": round(rate(x.t(), dy) / 1e9, 1),
            }))
        heads, t, dh = d // 64, 65, 64
        q, k, p = torch.randn(16 * heads, t, dh), torch.randn(16 * heads, t, dh), torch.randn(16 * heads, t, t)
        print(json.dumps({"size": size, "layer": "attention", "batch": 16 * heads, "t": t, "dh": dh,
                          "scores": round(rate(q, k.transpose(1, 2)) / 1e9, 1),
                          "weighted_sum": round(rate(p, k) / 1e9, 1)}))

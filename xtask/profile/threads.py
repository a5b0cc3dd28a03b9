#!/usr/bin/env python3
"""Splits a `perf record` profile by thread: how much of the wall time one core worked alone.

    perf record -e cpu-clock -F 999 -o sft.data -- target/debug/rlhf-perf one sft small 256
    python3 xtask/profile/threads.py sft.data [more.data ...]

burn-flex runs its elementwise operations on the calling thread and its matmuls (the `gemm`
crate) on rayon's workers while the caller waits. The caller is the thread with the most samples
outside `gemm`; the others are workers. With the two phases taking turns, the wall time is about
the caller's samples plus the busiest worker's, and the caller's share of that sum is the share of
the run during which only one core worked. Setup (tokenizer, data) also runs on the caller, so
the share is an upper bound for the training loop itself.
"""
import collections
import re
import subprocess
import sys

for path in sys.argv[1:]:
    out = subprocess.run(
        ["perf", "report", "-i", path, "--stdio", "--no-children", "--sort", "pid,symbol"],
        capture_output=True, text=True, check=True,
    ).stdout
    per = collections.defaultdict(lambda: [0.0, 0.0])  # pid -> [gemm %, other %]
    for line in out.splitlines():
        m = re.match(r"\s*([\d.]+)%\s+(\d+):\S+\s+\[(.)\]\s+(.*)", line)
        if m:
            per[m.group(2)][0 if "gemm" in m.group(4) else 1] += float(m.group(1))
    if not per:
        print(f"{path}: no samples")
        continue
    caller = max(per, key=lambda p: per[p][1])
    caller_busy = sum(per[caller])
    workers = sorted((sum(v) for p, v in per.items() if p != caller), reverse=True)
    wall = caller_busy + (workers[0] if workers else 0.0)
    print(f"{path}: caller {caller_busy:.1f}% of samples ({per[caller][0]:.1f}% of them in gemm), "
          f"workers {', '.join(f'{w:.1f}%' for w in workers)}; "
          f"one core alone for about {100 * caller_busy / wall:.0f}% of the wall time")

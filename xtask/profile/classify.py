#!/usr/bin/env python3
"""Groups a flat `perf report` by where the time goes.

    perf record -e cpu-clock -F 999 -o perf.data -- target/debug/rlhf-perf one sft small 64
    perf report -i perf.data --stdio --no-children --sort dso,symbol | python3 xtask/profile/classify.py

Prints the share of samples per class (matrix multiply, elementwise and reductions, memory
copies, allocation, autodiff bookkeeping, thread pool, kernel, the project's own code, other)
and the top symbols of each.
"""
import re
import sys
from collections import defaultdict

CLASSES = [
    ("matmul (gemm)", re.compile(r"gemm")),
    ("memory copy", re.compile(r"memcpy|memmove|memset|copy_from_slice|clone_from|to_vec")),
    ("allocation", re.compile(r"malloc|free|_int_|realloc|calloc|alloc::|__rust_alloc|__rust_dealloc|mmap|munmap|brk")),
    ("thread pool (rayon)", re.compile(r"rayon|crossbeam|sched_yield|futex|pthread")),
    ("autodiff bookkeeping", re.compile(r"burn_autodiff")),
    ("elementwise / reductions (burn-flex)", re.compile(r"burn_flex|macerator|burn_backend|burn_tensor|burn_dispatch|burn_std|burn_ir")),
    ("project code", re.compile(r"rlhf_")),
    ("math (libm)", re.compile(r"expf|logf|exp|log|tanh|erf")),
]

rows = []
for line in sys.stdin:
    m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*)", line)
    if m:
        rows.append((float(m.group(1)), m.group(2), m.group(3), m.group(4).strip()))

by_class = defaultdict(float)
top = defaultdict(list)
for pct, dso, kind, sym in rows:
    name = "kernel" if kind == "k" else None
    if name is None:
        for cls, rx in CLASSES:
            if rx.search(sym):
                name = cls
                break
    name = name or "other"
    by_class[name] += pct
    top[name].append((pct, sym[:110]))

for cls, pct in sorted(by_class.items(), key=lambda kv: -kv[1]):
    print(f"{pct:6.1f}%  {cls}")
    for p, s in sorted(top[cls], reverse=True)[:3]:
        print(f"          {p:5.1f}%  {s}")

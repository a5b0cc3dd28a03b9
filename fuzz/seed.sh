#!/usr/bin/env bash
# Fills corpus/<target>/ with the project's own valid inputs, the starting points of the fuzzers:
# the JSONL fixtures (plain and gzipped), the pyarrow parquet fixtures, the transformers-written
# model directories (config.json, 0xFF, model.safetensors) and the bench's run configs.
set -euo pipefail
cd "$(dirname "$0")"
root=..
mkdir -p corpus/jsonl corpus/parquet corpus/model_files corpus/run_config
for f in "$root"/rlhf-data/tests/data/*.jsonl; do
    cp "$f" corpus/jsonl/
    gzip -c "$f" > "corpus/jsonl/$(basename "$f").gz"
done
cp "$root"/rlhf-data/tests/data/*.parquet corpus/parquet/
for d in "$root"/rlhf-models/tests/fixtures/hf/tiny-*; do
    [ -f "$d/model.safetensors" ] || continue
    { cat "$d/config.json"; printf '\xff'; cat "$d/model.safetensors"; } > "corpus/model_files/$(basename "$d")"
done
cp "$root"/rlhf-bench/configs/*.toml corpus/run_config/
echo "seeded: $(ls corpus/jsonl | wc -l) jsonl, $(ls corpus/parquet | wc -l) parquet, $(ls corpus/model_files | wc -l) model dirs, $(ls corpus/run_config | wc -l) run configs"

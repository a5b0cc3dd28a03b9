#!/usr/bin/env bash
# The TL;DR summarisation recipe of "The N+ Implementation Details of RLHF with PPO" (Huang et al.
# 2024, reproducing Stiennon et al. 2020), as three `rlhf` commands:
#
#   1. SFT on prompt/completion demonstrations;
#   2. a reward model from the SFT model on the comparisons (one epoch, Bradley–Terry), its served
#      bias the mean score of the demonstrations (detail 5);
#   3. PPO from the SFT model (also the reference) against the reward model, the critic started
#      from the reward model (detail 6), with the reproduction's settings (53 new tokens at
#      temperature 0.7, missing-EOS penalty −1, β = 0.05, GAE γ = 1 λ = 0.95, 4 epochs,
#      clip 0.2, value clip 0.2, vf_coef 0.1, learning rate 3e-6 annealed to 0).
#
# usage: rlhf-cli/recipes/tldr.sh MODEL_DIR DATA_DIR OUT_DIR [tiny|paper] [extra flags for every stage]
#
# DATA_DIR holds sft.jsonl ({prompt, completion}), preference.jsonl ({prompt, chosen, rejected})
# and prompts.jsonl ({prompt}); rlhf-cli/data/tldr is a small TL;DR-shaped sample of each.
# `tiny` trains a few steps (CI runs it on rlhf-models/tests/fixtures/hf/tiny-pythia); `paper`
# uses the reproduction's batch sizes for Pythia 1B–6.9B (add `--device cuda:0` on a GPU build).
# Set RLHF to the command to run (default: `cargo run -q -p rlhf-cli --bin rlhf --`).
set -euo pipefail

if [ $# -lt 3 ]; then
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
model=$1 data=$2 out=$3 profile=${4:-tiny}
shift $(( $# < 4 ? $# : 4 ))
read -r -a rlhf <<<"${RLHF:-cargo run -q -p rlhf-cli --bin rlhf --}"

case $profile in
    tiny)
        sft=(--learning-rate 3e-3 --num-train-epochs 2 --per-device-train-batch-size 16 --max-length 256)
        rm=(--learning-rate 1e-3 --num-train-epochs 1 --per-device-train-batch-size 16 --max-length 256)
        ppo=(--learning-rate 1e-4 --iterations 3 --prompts-per-batch 8 --max-prompt-length 160)
        ;;
    paper)
        # effective batches: SFT 128 sequences, RM 64 pairs, PPO 512 episodes per iteration
        sft=(--learning-rate 3e-6 --num-train-epochs 1 --per-device-train-batch-size 16
             --gradient-accumulation-steps 8 --lr-scheduler-type cosine --max-length 615
             --max-prompt-length 562)
        rm=(--learning-rate 3e-6 --num-train-epochs 1 --per-device-train-batch-size 8
            --gradient-accumulation-steps 8 --lr-scheduler-type cosine --max-length 615
            --max-prompt-length 562)
        ppo=(--learning-rate 3e-6 --iterations 1953 --prompts-per-batch 512 --num-mini-batches 8
             --max-prompt-length 512)
        ;;
    *)
        echo "tldr.sh: the profile is tiny or paper, not \`$profile\`" >&2
        exit 2
        ;;
esac

set -x
"${rlhf[@]}" sft --model "$model" --data "$data/sft.jsonl" --out "$out/sft" "${sft[@]}" "$@"
"${rlhf[@]}" rm --model "$out/sft" --data "$data/preference.jsonl" --out "$out/rm" \
    --normalize-on "$data/sft.jsonl" "${rm[@]}" "$@"
"${rlhf[@]}" ppo --model "$out/sft" --prompts "$data/prompts.jsonl" --reward "$out/rm" \
    --out "$out/ppo" --max-completion-length 53 --temperature 0.7 --missing-eos-penalty -1 \
    --beta 0.05 "${ppo[@]}" "$@"
"${rlhf[@]}" eval --model "$out/ppo" --prompts "$data/prompts.jsonl" --reward "$out/rm" \
    --ref "$out/sft" --limit 64 --max-new-tokens 53 --temperature 0.7 --out "$out/ppo-samples.jsonl"

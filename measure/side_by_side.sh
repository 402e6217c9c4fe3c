#!/bin/bash
# Side by side on this machine: the PyTorch original's training step
# (original_step.py) and ours (bench.ts on wasm), back to back, ROUNDS times,
# the order reversed every other round, each model at --config=cpu plus any
# extra train flags; then each model's medians and the ratio ours ÷ PyTorch
# taken round by round (machines here drift: a ratio from one round is
# fairer than two medians from different minutes). With NO_BOUNDS_CHECKS=1,
# a third run each round is ours under V8's test-only --no-wasm-bounds-checks
# (see README, "Deno's bounds checks"): a measurement, never a way to train.
#
#   measure/side_by_side.sh ORIGINAL_SIMPLELM_DIR ROUNDS OUT.jsonl [MODEL ...] [-- TRAIN_FLAGS ...]
#   measure/side_by_side.sh ../baby-llm/simpleLM 8 rounds.jsonl gptLM moa_moeLM
#   measure/side_by_side.sh ../baby-llm/simpleLM 4 wide.jsonl gptLM -- --n_embd=256
#
# Needs a python3 with torch (Debian's python3-torch and libopenblas0-pthread;
# PYTHON=/usr/bin/python3 picks that one where another python3 comes first).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 3 ] || { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
original=$1 rounds=$2 out=$3
shift 3
models=() flags=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; flags=("$@"); break; fi
  models+=("$1"); shift
done
[ ${#models[@]} -gt 0 ] || models=(gptLM block_wise_scaling_gptLM moeLM moa_moeLM)
python=${PYTHON:-python3}
# original_step.py takes train.py's globals as key=value after the model's spec.
overrides=""
for f in "${flags[@]+"${flags[@]}"}"; do overrides+=",${f#--}"; done
runners=(original ours)
[ "${NO_BOUNDS_CHECKS:-0}" = 1 ] && runners+=(ours_unchecked)
: > "$out"
for round in $(seq 1 "$rounds"); do
  for model in "${models[@]}"; do
    order=("${runners[@]}")
    if [ $((round % 2)) = 0 ]; then order=($(printf '%s\n' "${runners[@]}" | tac)); fi
    for who in "${order[@]}"; do
      tag="{\"who\":\"$who\",\"round\":$round,\"model\":\"$model\","
      case $who in
        original)
          "$python" measure/original_step.py "$original" datas/tinyshakespeare.txt \
            "r$round:$model,10,3,cpu$overrides" ;;
        ours)
          deno run --no-prompt -A bench.ts --model_name="$model" --config=cpu --backend=wasm \
            --steps=10 --warmup=3 --json "${flags[@]+"${flags[@]}"}" ;;
        ours_unchecked)
          deno run --no-prompt -A --v8-flags=--no-wasm-bounds-checks bench.ts \
            --model_name="$model" --config=cpu --backend=wasm --steps=10 --warmup=3 --json \
            "${flags[@]+"${flags[@]}"}" ;;
      esac 2>/dev/null | grep '^{' | sed "s/^{/$tag/" >> "$out"
    done
  done
  echo "round $round of $rounds done" >&2
done
"$python" - "$out" <<'PY'
import json, statistics, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
ms = lambda r: r.get("ms_median", r.get("ms_per_step_median"))
by = {}
for r in runs:
    by.setdefault(r["model"], {}).setdefault(r["round"], {})[r["who"]] = ms(r)
for model, rounds in by.items():
    full = [v for v in rounds.values() if "original" in v and "ours" in v]
    line = f"{model:26} PyTorch {statistics.median(v['original'] for v in full):8.1f} ms"
    for who in ("ours", "ours_unchecked"):
        both = [v for v in full if who in v]
        if not both:
            continue
        ratios = [v[who] / v["original"] for v in both]
        line += (f"  {who} {statistics.median(v[who] for v in both):8.1f} ms,"
                 f" ÷ PyTorch {statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})")
    print(line + f"  [{len(full)} rounds]")
PY

#!/bin/bash
# The real-GPU check of the WebGPU work (README, Performance, WebGPU): our bench on
# webgpu (fast paths and --plain) and the PyTorch original's step on CUDA at the same
# configs, one session. Written for a lent machine that reaches no registry, so what
# it needs travels with it:
#   deno bundle --platform=deno bench.ts -o BUNDLE   # tfjs inside; webgpu runs need nothing else
#   the deno binary (xz: ~30 MB), the original's simpleLM folder, Vulkan's loader
#   (libvulkan1) where the machine lacks it
# usage: bash measure/real_gpu.sh DENO BUNDLE ORIGINAL_SIMPLELM_DIR OUTDIR [quick]
D=$1; B=$2; ORIG=$3; O=$4; Q=$5
mkdir -p "$O"
S=20; W=5; SD=10; WD=3; T=150
[ -n "$Q" ] && { S=1; W=0; SD=1; WD=0; T=600; }
t0=$(date +%s)
stamp() { echo "== $(( $(date +%s) - t0 ))s: $*"; }
ours() { # label, args...
  local label=$1; shift
  stamp "ours $label: $*"
  timeout $T "$D" run -A "$B" --backend=webgpu --json "$@" 2>&1 |
    sed "s/^{/{\"label\":\"$label\",/" | tee -a "$O/ours.jsonl"
}
stamp "adapter"
"$D" eval 'const a = await navigator.gpu.requestAdapter({powerPreference: "high-performance"}); const i = a?.info; console.log(JSON.stringify({vendor: i?.vendor, architecture: i?.architecture, device: i?.device, description: i?.description, features: [...(a?.features ?? [])], maxStorageBuffersPerShaderStage: a?.limits.maxStorageBuffersPerShaderStage}))' 2>&1 | tee "$O/adapter.json"
ours suite --steps=$S --warmup=$W
stamp "pytorch"
PYTHONUNBUFFERED=1 timeout 240 python3 "$(dirname "$0")/original_step.py" "$ORIG" datas/tinyshakespeare.txt \
  "suite:bigramLM,$S,$W" "suite:mlpLM,$S,$W" "suite:gptLM,$S,$W,cpu" \
  "suite:block_wise_scaling_gptLM,$S,$W,cpu" "suite:moeLM,$S,$W,cpu" "suite:moa_moeLM,$S,$W,cpu" \
  "default:gptLM,$SD,$WD" \
  "tiny:bigramLM,$S,$W,batch_size=2,block_size=16" "tiny:mlpLM,$S,$W,batch_size=2,block_size=16" \
  "tiny:gptLM,$S,$W,cpu,batch_size=2,block_size=16" 2>&1 | grep -v "^Overriding\|permutations value" |
  tee "$O/torch.jsonl"
ours default --model_name=gptLM --steps=$SD --warmup=$WD
ours tiny --batch_size=2 --block_size=16 --steps=$S --warmup=$W
ours suite_plain --plain --steps=$S --warmup=$W
ours tiny_plain --plain --batch_size=2 --block_size=16 --steps=$S --warmup=$W
ours default_plain --plain --model_name=gptLM --steps=2 --warmup=1 # over 10 s a step on the H200
ours sample --sample=200
ours sample_plain --plain --sample=200
stamp "done"

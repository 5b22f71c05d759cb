#!/usr/bin/env bash
# Three LoRA steps on the embedded SmolLM2-135M through the shipped multi-GPU launch configs (DeepSpeed ZeRO-2 and
# FSDP2), on a machine with one or more CUDA GPUs: one process per visible GPU. A run passes when it exits 0, its
# summary says 3 steps on that many processes, and the saved adapter holds real weights that moved (a save of
# sharded weights would write empty or untrained tensors). Prints PASS / FAIL / SKIP per run; exits 1 on a FAIL.
#
#   bash scripts/gpu_multi_check.sh          (from anywhere; PYTHON=/path/to/python for an environment with CUDA
#                                             torch, default .venv/bin/python; OUT=folder, default outputs/gpu-multi-check)
set -uo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-.venv/bin/python}
OUT=${OUT:-outputs/gpu-multi-check}
mkdir -p "$OUT"

GPUS=$("$PYTHON" -c "import torch; print(torch.cuda.device_count())") || exit 1
if [ "$GPUS" -lt 1 ]; then
    echo "no CUDA GPU visible to $PYTHON (a CPU-only torch?): nothing to check"
    exit 1
fi
# bf16 as the shipped model configs use it, where the GPU has it (the DeepSpeed JSON's "auto" follows it).
PRECISION=$("$PYTHON" -c "import torch; print('bf16=true' if torch.cuda.is_bf16_supported() else '')")
echo "GPUs: $GPUS; precision: ${PRECISION:-fp32}"

# Convert the embedded GGUF model once, in one process: otherwise every rank would convert it at the same time.
"$PYTHON" -c "from llm_dojo.models.embedded import embedded_model_path; print('model:', embedded_model_path())" || exit 1

# Passes when the run's outputs show 3 steps on $GPUS processes and a non-empty adapter whose lora_B moved off 0.
verify() {
    "$PYTHON" - "$1" "$GPUS" <<'EOF'
import json, sys
from safetensors.torch import load_file

folder, gpus = sys.argv[1], int(sys.argv[2])
summary = json.load(open(f"{folder}/training_summary.json"))
assert summary["steps"] == 3 and summary["processes"] == gpus, (summary["steps"], summary["processes"])
adapter = load_file(f"{folder}/adapter_model.safetensors")
assert adapter and all(t.numel() > 0 for t in adapter.values()), "empty adapter tensors"
moved = [name for name, t in adapter.items() if "lora_B" in name and t.abs().max() > 0]
assert moved, "every lora_B is still zero: the adapter did not train (or was saved before gathering)"
print(f"  {len(adapter)} tensors, {len(moved)} lora_B moved, final loss {summary['train_loss']:.4f}")
EOF
}

FAILED=0
run() {
    local name=$1 config=$2 folder="$OUT/$1" log="$OUT/$1.log"
    if [ "$name" = zero2 ] && ! "$PYTHON" -c "import deepspeed" 2>/dev/null; then
        echo "SKIP $name: DeepSpeed is not installed (pip install deepspeed)"
        return
    fi
    # --main_process_port 0: a free port, so a run left over from before cannot block this one.
    if timeout 1200 "$PYTHON" -m accelerate.commands.launch --config_file "$config" --num_processes "$GPUS" \
            --main_process_port 0 main_train.py train_args/demo_identity.yaml max_steps=3 \
            output_dir="$folder" overwrite_output_dir=true logging_steps=1 $PRECISION >"$log" 2>&1 \
        && verify "$folder" >>"$log" 2>&1; then
        echo "PASS $name ($config)"
        tail -n 1 "$log"
    else
        echo "FAIL $name ($config): last lines of $log:"
        tail -n 25 "$log"
        FAILED=1
    fi
}

run zero2 train_args/launch/deepspeed_zero2.yaml
run fsdp2 train_args/launch/fsdp2.yaml
exit $FAILED

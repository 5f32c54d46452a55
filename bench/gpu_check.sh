#!/usr/bin/env bash
# The GPU checks in one run, under 8 minutes on one GPU: the CUDA tests (`-m gpu`, and the tests that once built CPU
# tensors against a CUDA model), then bench/speed.py's GPU section (1b and 8b, with a compiled row; 8b again with
# gradient checkpointing). Results go to $OUT/results.md (default /tmp/atwu-gpu-check), logs beside it.
#
#   bash bench/gpu_check.sh              # on a GPU machine
#   DEVICE=cpu bash bench/gpu_check.sh   # the same steps on a CPU, with the tiny shape (a dry run, ~2 minutes)
#
# A machine without rouge-score, nltk or defusedxml (atwu_core.metrics needs them) gets them from wheels in .whl/.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python -m pip install -q --no-index --no-deps --no-compile --target /tmp/atwu-site .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:/tmp/atwu-site"
fi
OUT="${OUT:-/tmp/atwu-gpu-check}"
DEVICE="${DEVICE:-cuda}"
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then
    python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU here; use DEVICE=cpu for a dry run'"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
    SPEED=(--device cuda --compile)
    CKPT=(--device cuda --gpu-config 8b --gradient-checkpointing --steps 5)
    LIMIT=1
else
    SPEED=(--device cpu --gpu-config tiny --quick --steps 1)
    CKPT=(--device cpu --gpu-config tiny --quick --steps 1 --gradient-checkpointing)
    LIMIT=5  # a shared CPU is slower; the limits only guard the GPU run's 8 minutes
fi

status=0  # a failed part is reported and the next one still runs: a GPU machine's minutes are few
start=$SECONDS
timeout $((180 * LIMIT)) python -m pytest -q -p no:cacheprovider -m gpu tests/ 2>&1 | tee "$OUT/tests-gpu.log" || status=1
timeout $((180 * LIMIT)) python -m pytest -q -p no:cacheprovider \
    "tests/test_forward.py::test_lean_forward_equals_full_logits_on_the_plain_model" \
    "tests/test_forward.py::test_lean_forward_equals_full_logits_with_lora_values_and_gradients" \
    "tests/test_job.py::test_adapter_reloads_with_peft_and_changes_the_model" \
    "tests/test_job.py::test_an_adapter_can_be_merged_in_at_load_time" \
    "tests/test_engine.py::test_a_saved_scorer_reproduces_the_final_pass" \
    "tests/test_step.py::test_a_training_step_syncs_the_host_once" 2>&1 | tee "$OUT/tests-device.log" || status=1
echo "tests: $((SECONDS - start)) s"
timeout $((300 * LIMIT)) python bench/speed.py "${SPEED[@]}" --out "$OUT" 2>&1 | tee "$OUT/speed.log" || status=1
timeout $((120 * LIMIT)) python bench/speed.py "${CKPT[@]}" --out "$OUT" 2>&1 | tee "$OUT/speed-checkpointing.log" \
    || status=1
echo "gpu_check: $((SECONDS - start)) s in all, status $status; results in $OUT/results.md"
exit $status

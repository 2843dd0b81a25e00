#!/usr/bin/env bash
# The second GPU call, after bench/gpu_compare.sh: what the run of 2026-11-28 (bench/gpu_2026-11-28/)
# left open, most telling first. Same set-up and carry:
#   run(command="DEADLINE_S=360 bash bench/gpu_levers.sh", carry=[".whl", ".bench"], timeout_s=390)
# (bench/gpu_2026-11-27c/levers/ ran the version committed in 65c9731; the levers it left, the
# zero-fill patch, scan_unroll 5/20, ResNet-1001's kernels traced without graphs, are in that version.)
# Plumbing check without a GPU:
#   OURS_EXTRA="--config.batch_size=8 --steps=1 --warmup=0" DEADLINE_S=900 bash bench/gpu_levers.sh
# (the cifar1001_b128 line fails at batch 8, whose BN groups are 64 images).
# shellcheck source=bench/gpu_lib.sh
source "$(dirname "$0")/gpu_lib.sh"
CIFAR_FLAGS=$(python3 -c "from resnet_v2_jax.config import CIFAR_XLA_FLAGS; print(CIFAR_XLA_FLAGS)")
ALWAYS=$(python3 -c "from resnet_v2_jax import config as c; print(c.known_xla_flags(c.COMMAND_BUFFERS, c.CONCURRENT_GRAPHS))")

# 1. The CIFAR goals once more and what 2026-11-28 could not compile, one process (the CIFAR flags):
#    ResNet-1001 at batch 64 (1,534 img/s back to back there, 2% over the goal: a second process's
#    figure), then model.conv1x1_fusion for ResNet-1001 and -164, whose weight gradient is now a
#    product per BN group (cuDNN compiled no candidate for the product over (groups, rows) at once),
#    then ResNet-1001 at the paper's batch 128 (the memory goal: XLA's allocation for the step).
ours 200 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.conv1x1_fusion=True" \
  "--also=--config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --config.model.conv1x1_fusion=True" \
  "--also=--config=experiments/cifar1001_b128.py --config.batch_size=128 --steps=10 --warmup=2"
# 2. ResNet-50 (8,286 img/s back to back against 9,000): model.conv1x1_fusion, then the default once
#    more, one process.
ours 100 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  --config.model.conv1x1_fusion=True \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3"
# 3. Update-free CUDA graphs (config.UPDATE_FREE_GRAPHS, in the CIFAR flags) must compute what
#    updated graphs compute. Their losses so far agreed within what two processes differ by anyway
#    (0.06% for ResNet-110, 0.6% for ResNet-1001; each compile autotunes its own convolutions). Here
#    the same 13 steps of ResNet-110, fed two batches in turn, in two processes with XLA's
#    deterministic ops and no autotuning: the losses must be equal.
DET=""
for f in --xla_gpu_exclude_nondeterministic_ops=true --xla_gpu_deterministic_ops=true; do
  xla_knows "$f" && { DET="$f"; break; }
done
xla_knows "--xla_gpu_autotune_level=0" && DET="$DET --xla_gpu_autotune_level=0"
ours 70 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=10 --warmup=2 --distinct_batches=2 \
  "--config.xla_flags=$CIFAR_FLAGS $DET"
ours 70 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=10 --warmup=2 --distinct_batches=2 \
  "--config.xla_flags=$ALWAYS $DET"
python3 - "$OUT/ours.jsonl" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l and '"cifar110"' in l][-2:]
if len(lines) == 2:
    print("update-free vs updated graphs, deterministic, 13 steps:", [r["loss"] for r in lines],
          "equal" if lines[0]["loss"] == lines[1]["loss"] else "DIFFERENT")
PY
# 4. If the deadline leaves time: ResNet-50 under the latency-hiding scheduler (cut four times).
ours 90 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  --config.xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true

finish

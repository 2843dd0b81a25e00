#!/usr/bin/env bash
# What the run of 2026-11-28 (bench/gpu_2026-11-28/) left open, most telling first (ResNet-50, the one
# goal not met). Since session 19 the FIRST call of a GPU session (its ResNet-50 process and BN's
# sums alone take ~410 s); gpu_compare.sh after it, with what is left, and with any lever that paid
# made the default first. Same set-up and carry as gpu_compare.sh:
#   run(command="DEADLINE_S=420 bash bench/gpu_levers.sh", carry=[".whl", ".bench"], timeout_s=450)
# (bench/gpu_2026-11-28/levers/ ran the version committed in 73f9508; bench/gpu_2026-11-27c/levers/
# the one in 65c9731, whose other levers, scan_unroll 5/20 and ResNet-1001's kernels traced without
# graphs, are in that version.)
# Plumbing check without a GPU:
#   OURS_EXTRA="--config.batch_size=8 --steps=1 --warmup=0" DEADLINE_S=900 bash bench/gpu_levers.sh
# (the cifar1001_b128 line fails at batch 8, whose BN groups are 64 images).
# shellcheck source=bench/gpu_lib.sh
source "$(dirname "$0")/gpu_lib.sh"
CIFAR_FLAGS=$(python3 -c "from resnet_v2_jax.config import CIFAR_XLA_FLAGS; print(CIFAR_XLA_FLAGS)")

# 0. ResNet-50 (8,286 and 8,344 img/s on 2026-11-28, against 9,000), in one process: as configured
#    (since then the global norms sum large leaves alone, a614e50), then with the levers prepared
#    without a GPU on 2026-11-28 (session 19): model.bn_pallas_sums (BN's forward and backward sums in
#    column_sums.py's Triton kernel; XLA's reductions ran them at 0.6-3.5 TB/s) profiled, so that
#    the profile's `bn_column_sums` kernels can be set against XLA's reductions, and
#    model.stem_align_channels (the blocked stem's 12 channels padded to 16, where cuDNN padded them
#    itself in four kernels, 0.25 ms, and ran one sm80 CUTLASS convolution, 0.44 ms), and
#    config.auto_param_layouts (the state's conv kernels in layouts XLA picks, where it transposed them
#    into cuDNN's every step: 85 kernels, 0.76 ms; counted without a GPU, 950 -> 856 launches).
#    Last, all three together (counted without a GPU: 857 launches, 78.9 GB; as configured 950, 85.8 GB).
ours 290 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.model.bn_pallas_sums=True --profile_steps=3 --profile_dir=$PROFILES" \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.model.stem_align_channels=True" \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.auto_param_layouts=True" \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.auto_param_layouts=True --config.model.bn_pallas_sums=True --config.model.stem_align_channels=True"
# 0b. BN's sums alone, per ResNet-50 shape: XLA's reductions against the Pallas kernel and one other
#     tile shape (bench/bn_sums_check.py: microseconds, TB/s, and the kernel's sums against XLA's),
#     so that the kernel can be tuned from this run's numbers. The shapes XLA lost most on come first.
t=$(budget 120)
if [ "$t" -gt 0 ]; then
  echo "+ bn_sums_check [at ${SECONDS} s]" | tee -a "$OUT/log.txt"
  timeout "$t" python3 bench/bn_sums_check.py --deadline_s=$((t - 25)) >>"$OUT/bn_sums.jsonl" 2>>"$OUT/log.txt" \
    || echo '{"failed": "bn_sums_check"}' >>"$OUT/bn_sums.jsonl"
fi
# 1. Update-free CUDA graphs (config.UPDATE_FREE_GRAPHS, in the CIFAR flags) must compute what the
#    step computes without graphs. Their losses so far agreed within what two processes differ by
#    anyway (0.06% for ResNet-110, 0.6% for ResNet-1001; each compile autotunes its own
#    convolutions). Here the same 13 steps of ResNet-110, fed two batches in turn, in two processes
#    with XLA's deterministic ops and no autotuning, update-free graphs against no graphs at all: the
#    losses must be equal. (On 2026-11-28 the other side was updated graphs, whose process failed
#    under these flags: "Failed to destroy CUDA graph", cudnn status 5003.)
DET=""
for f in --xla_gpu_exclude_nondeterministic_ops=true --xla_gpu_deterministic_ops=true; do
  xla_knows "$f" && { DET="$f"; break; }
done
xla_knows "--xla_gpu_autotune_level=0" && DET="$DET --xla_gpu_autotune_level=0"
ours 70 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=10 --warmup=2 --distinct_batches=2 \
  "--config.xla_flags=$CIFAR_FLAGS $DET"
ours 70 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=10 --warmup=2 --distinct_batches=2 \
  "--config.xla_flags=$DET"
python3 - "$OUT/ours.jsonl" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l and '"cifar110"' in l][-2:]
if len(lines) == 2:
    print("update-free graphs vs no graphs, deterministic, 13 steps:", [r["loss"] for r in lines],
          "equal" if lines[0]["loss"] == lines[1]["loss"] else "DIFFERENT")
PY
# 2. ResNet-1001 (1,534 and 1,546 img/s on 2026-11-28: 2-3% over its goal) without the zero-fill of
#    scan's stacked residuals (bench/scan_empty_check.py; the 2026-11-28 profile's once-a-step
#    broadcast kernels took 0.55 + 0.27 + 0.14 + 0.10 ms of its 41.7), then as configured right after
#    (its own process: the patch changes JAX for the whole process).
BENCH="python3 bench/scan_empty_check.py" ours 150 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3
ours 90 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3
# 3. ResNet-50 (8,286 and 8,344 img/s on 2026-11-28, against 9,000) under the latency-hiding scheduler
#    (cut by the deadline five times), then torch.compile on ResNet-110 (never timed by us).
ours 90 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  --config.xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true
peer 120 cifar110 128 30 compile

finish

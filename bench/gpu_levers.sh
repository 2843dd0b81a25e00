#!/usr/bin/env bash
# The second GPU call, after bench/gpu_compare.sh on the same warm machine: what the third run of
# 2026-11-27 (bench/gpu_2026-11-27c/) left open, most telling first. Same set-up and carry:
#   run(command="DEADLINE_S=300 bash bench/gpu_levers.sh", carry=[".whl", ".bench"], timeout_s=330)
# (bench/gpu_2026-11-27c/levers/ ran the previous version of this file, as committed in 65c9731.)
# Plumbing check without a GPU:
#   OURS_EXTRA="--config.batch_size=8 --steps=1 --warmup=0" DEADLINE_S=900 bash bench/gpu_levers.sh
# (the cifar1001_b128 line fails at batch 8, whose BN groups are 64 images).
# shellcheck source=bench/gpu_lib.sh
source "$(dirname "$0")/gpu_lib.sh"
CIFAR_FLAGS=$(python3 -c "from resnet_v2_jax.config import CIFAR_XLA_FLAGS; print(CIFAR_XLA_FLAGS)")
ALWAYS=$(python3 -c "from resnet_v2_jax import config as c; print(c.known_xla_flags(c.COMMAND_BUFFERS, c.CONCURRENT_GRAPHS))")

# 1. Update-free CUDA graphs (config.UPDATE_FREE_GRAPHS, in the CIFAR flags since the third run) must
#    compute what updated graphs compute. Their losses so far agreed within what two processes
#    differ by anyway (0.06% for ResNet-110, 0.6% for ResNet-1001; each compile autotunes its own
#    convolutions). Here the same 13 steps of ResNet-110, fed two batches in turn, in two processes
#    with XLA's deterministic ops and no autotuning: the losses must be equal.
DET=""
for f in --xla_gpu_exclude_nondeterministic_ops=true --xla_gpu_deterministic_ops=true; do
  xla_knows "$f" && { DET="$f"; break; }
done
xla_knows "--xla_gpu_autotune_level=0" && DET="$DET --xla_gpu_autotune_level=0"
ours 90 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=10 --warmup=2 --distinct_batches=2 \
  "--config.xla_flags=$CIFAR_FLAGS $DET"
ours 90 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=10 --warmup=2 --distinct_batches=2 \
  "--config.xla_flags=$ALWAYS $DET"
python3 - "$OUT/ours.jsonl" <<'PY' | tee -a "$OUT/log.txt"
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1]) if '"loss"' in l][-2:]
if len(lines) == 2:
    print("update-free vs updated graphs, deterministic, 13 steps:", [r["loss"] for r in lines],
          "equal" if lines[0]["loss"] == lines[1]["loss"] else "DIFFERENT")
PY
# 1b. Does cuDNN take a BN-ReLU as a convolution's prologue? (bench/conv_region_check.py, session 16:
#    one op at a time, XLA's way against a cuDNN-fusion region, 1x1 and 3x3; model.conv1x1_fusion
#    uses the 1x1 form, timed in whole steps by gpu_compare.sh; a 3x3 region would reach every unit.)
#    One JSON line per shape and way into $OUT/regions.jsonl.
t=$(budget 90)
if [ "$t" -gt 0 ]; then
  echo "+ conv_region_check [at ${SECONDS} s]" | tee -a "$OUT/log.txt"
  timeout "$t" python3 bench/conv_region_check.py >>"$OUT/regions.jsonl" 2>>"$OUT/log.txt" \
    || echo '{"failed": "bench/conv_region_check.py"}' >>"$OUT/regions.jsonl"
fi
# 2. The memory goal not yet measured under concurrent graphs: ResNet-1001 at batch 128 (one process:
#    the device's peak is the process's; ResNet-200 at batch 128 peaked at 8.99 GiB in the third run).
ours 90 --config=experiments/cifar1001_b128.py --config.batch_size=128 --steps=10 --warmup=2
# 3. ResNet-1001 (1,395 img/s with update-free graphs against 1,500): its call now returns after 6 of
#    46 ms, so the GPU bounds it, at ~4 us per kernel of ~10,900. First without the zero-fill of
#    scan's stacked residuals (bench/scan_empty_check.py: 2.49 GB a step in XLA's count, once-a-step
#    kernels of 0.14-0.55 ms in the profile), then fewer loop iterations (20 units each; compile
#    time?) and fewer, larger kernels (BN partial sums, in gpu_compare.sh). The zero-fill patch also
#    with model.scan_unit_reads (timed alone in gpu_compare.sh): the two combine (BENCHMARKS.md).
BENCH="python3 bench/scan_empty_check.py" ours 150 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.scan_unit_reads=True"
ours 150 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.scan_unroll=20 \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.scan_unroll=5"
# 4. ResNet-50 (7,544 img/s with the stem on 2x2 blocks against 9,000; its device busy 30.8 of 31.4 ms
#    a step: convolutions 16.9, fusions 7.4, BN reductions 6.7 ms): the latency-hiding scheduler
#    (cut by the deadline three times) and BN-ReLU's masks recomputed once more (its profile, saved,
#    is gpu_compare.sh's).
ours 90 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  --config.xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true
ours 90 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.model.bn_recompute_mask=True"
# 5. ResNet-1001's kernels one by one: under concurrent graphs the profiler saw 1,468 of its ~10,900
#    kernels a step (third run). Traced without graphs ($RESNET_V2_PROFILE_XLA_FLAGS empty: XLA then
#    launches each kernel from the host while the profiler runs), every kernel's own time is in the
#    saved table, for bench/kernel_bandwidth.py (XLA's H200 code for some of its largest fusions,
#    several units' ReLU masks and recomputed BN-ReLU outputs at once, loads one element at a time),
#    then the same with model.scan_unit_reads, whose code loads vectors there: the same kernels'
#    times side by side.
RESNET_V2_PROFILE_XLA_FLAGS="" ours 150 --config=experiments/cifar1001.py --config.batch_size=64 --steps=5 --warmup=2 \
  --profile_steps=2 "--profile_dir=$PROFILES" \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=5 --warmup=2 --profile_steps=2 --profile_dir=$PROFILES --config.model.scan_unit_reads=True"
# 6. The rest, if the deadline leaves time: the plain Flax ResNet-164 (never measured by us),
#    torch.compile on ResNet-110, ResNet-1001's compile cold then warm from the persistent cache.
ours 120 --config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --baseline
peer 120 cifar110 128 30 compile
ours 60 --config=experiments/cifar1001.py --compile_only --compilation_cache_dir=/tmp/xla_cache_bench
ours 60 --config=experiments/cifar1001.py --compile_only --compilation_cache_dir=/tmp/xla_cache_bench

finish

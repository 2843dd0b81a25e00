#!/usr/bin/env bash
# What the run of 2026-11-28, session 21 (bench/gpu_2026-11-28b/) left open, most telling first
# (ResNet-50, the one goal not met: 8,916-8,964 img/s against 9,000). The FIRST call of a GPU
# session (~420 s; the deadline may cut torch.compile); `PARTS=in50 gpu_compare.sh` after it, with what is left.
# Same set-up and carry as gpu_compare.sh:
#   run(command="DEADLINE_S=420 bash bench/gpu_levers.sh", carry=[".whl", ".bench"], kind="nvidia-h200", timeout_s=450)
# (bench/gpu_2026-11-28b/levers/ ran the version committed in 44d78a1: the three ImageNet levers,
# update-free graphs bitwise, ResNet-1001 without zero-fills, the latency-hiding scheduler;
# bench/gpu_2026-11-28/levers/ the one in 73f9508.)
# Plumbing check without a GPU:
#   OURS_EXTRA="--config.batch_size=8 --steps=1 --warmup=0" BN_SUMS_ARGS="--batch=2 --reps=2 --shapes=7x64" \
#     DEADLINE_S=900 bash bench/gpu_levers.sh
# shellcheck source=bench/gpu_lib.sh
source "$(dirname "$0")/gpu_lib.sh"
R50="--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=30 --warmup=3"
# 0. ResNet-50 as configured (since session 21 bn_pallas_sums, stem_align_channels and
#    auto_param_layouts; and BN's backward sums in 8192-value tiles of 8 warps, column_sums.BACKWARD,
#    untimed in the step) against two other tilings of BN's sums (bench/tiling_check.py): `sm132`,
#    both passes' plans balanced over the 132 multiprocessors (Tiling.sms, session 22, untimed), and
#    `bwd_tile4k`, the backward in the forward's tiling as until session 21 (~0.5 ms a step slower
#    by bn_sums_check's per-shape times). Five processes, A B C A B: the processes differ by their
#    autotuning (8,916-8,964 in four before). The first profiled, so that the `bn_column_sums`
#    kernels can be read against the 2026-11-28 profile (5.04 ms in 98 launches, both passes).
# shellcheck disable=SC2086  # $R50 is a list of flags
ours 75 $R50 --profile_steps=3 --profile_dir="$PROFILES"
# shellcheck disable=SC2086
BENCH="python3 bench/tiling_check.py sm132" ours 60 $R50
# shellcheck disable=SC2086
BENCH="python3 bench/tiling_check.py bwd_tile4k" ours 60 $R50
# shellcheck disable=SC2086
ours 60 $R50
# shellcheck disable=SC2086
BENCH="python3 bench/tiling_check.py sm132" ours 60 $R50
# 0b. ResNet-50 with the CIFAR experiments' CUDA graphs (config.CIFAR_XLA_FLAGS: concurrent and
#     update-free since the second and third runs of 2026-11-27). Serial graphs that updated their
#     addresses cost ResNet-50 8% (first run, 2026-11-27), so imagenet() clears the flags; these
#     never ran on ResNet-50. One process (the flags are the process's).
CIFAR_FLAGS=$(python3 -c "from resnet_v2_jax.config import CIFAR_XLA_FLAGS; print(CIFAR_XLA_FLAGS)")
# shellcheck disable=SC2086
ours 60 $R50 "--config.xla_flags=$CIFAR_FLAGS"
# 0c. BN's sums alone per ResNet-50 shape: XLA against the kernel in five tilings (which each pass
#     uses is marked "default"; each line has its program count and its busiest multiprocessor's
#     share against an even one): 4096 values of 4 warps and 8192 of 8 as now, both balanced over
#     132 multiprocessors, and 8192 of 8 with ~1056 programs. The `best_per_shape` summaries bound
#     what a per-shape table could gain.
t=$(budget 100)
if [ "$t" -gt 0 ]; then
  echo "+ bn_sums_check [at ${SECONDS} s]" | tee -a "$OUT/log.txt"
  # BN_SUMS_ARGS: the plumbing check's small sizes (Pallas's CPU interpreter does not finish batch 256 in 100 s)
  # shellcheck disable=SC2086  # a list of flags
  timeout "$t" python3 bench/bn_sums_check.py --deadline_s=$((t - 25)) ${BN_SUMS_ARGS:-} >>"$OUT/bn_sums.jsonl" 2>>"$OUT/log.txt" \
    || echo '{"failed": "bn_sums_check"}' >>"$OUT/bn_sums.jsonl"
fi
# 1. torch.compile on ResNet-50 (cut by the deadline at 57 s and on ResNet-110 at 64 s, 2026-11-28).
#    (ResNet-1001 without scan's zero-fills was timed twice in session 21: +3.8%, a private-JAX patch
#    not adopted; dropped here.)
peer 150 in50 256 20 compile

finish

#!/usr/bin/env bash
# The second GPU call, after bench/gpu_compare.sh on the same warm machine: the levers not yet
# measured, most promising first, and the memory goals. Same set-up and carry as gpu_compare.sh:
#   run(command="DEADLINE_S=270 bash bench/gpu_levers.sh", carry=[".whl", ".bench"], timeout_s=300)
# (The 2026-11-26 second call, bench/gpu_2026-11-26/levers/, ran this file as committed in 083b0e4;
# bench/gpu_2026-11-27b/levers/ ran it as committed in c7319cd, with DEADLINE_S=345.)
# Plumbing check without a GPU:
#   OURS_EXTRA="--config.batch_size=8 --steps=1 --warmup=0" DEADLINE_S=900 bash bench/gpu_levers.sh
# (the cifar1001_b128 line fails at batch 8, whose BN groups are 64 images).
# shellcheck source=bench/gpu_lib.sh
source "$(dirname "$0")/gpu_lib.sh"
CIFAR_FLAGS=$(python3 -c "from resnet_v2_jax.config import CIFAR_XLA_FLAGS; print(CIFAR_XLA_FLAGS)")

# 1. Concurrent CUDA graphs (config.CIFAR_XLA_FLAGS since 2026-11-27, second run) took ResNet-110
#    to 8.3 ms and ResNet-1001 to 51.8 ms a step, and left every CIFAR step's call as long as the
#    step (dispatch_ms = step_ms). Still short: ResNet-1001 (1,236 img/s against 1,500) and
#    ResNet-164 (8,575 against 10,000, serial graphs). Here: ResNet-1001 profiled, then with BN
#    partial sums (+9.5% with serial graphs, untimed with concurrent ones); ResNet-164 under
#    concurrent graphs scanned (one unit per iteration) and with BN partial sums. (On 2026-11-27 a
#    process of six such runs took 251 s; more units per loop iteration, which compile for minutes,
#    wait: XLA counts ~3% of ResNet-1001's kernels in its loops.)
SERIAL="--config.xla_flags=$(python3 -c "from resnet_v2_jax.config import COMMAND_BUFFERS; print(COMMAND_BUFFERS)")"
#    ResNet-1001 as configured now keeps no BN-ReLU output for its backward (model.bn_recompute_output,
#    session 12: on a CPU 10-25% faster, in XLA's count for an H200 12% fewer bytes); the third run
#    is the step without it, the reference for that change.
ours 270 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --profile_steps=3 \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.bn_partial_sums=True" \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.bn_recompute_output=False" \
  "--also=--config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --config.model.scan_unroll=1 '--config.xla_flags=$CIFAR_FLAGS'" \
  "--also=--config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --config.model.bn_partial_sums=True '--config.xla_flags=$CIFAR_FLAGS'"
# 2. ResNet-50 (GPU-bound, 7,157 img/s against 9,000 on 2026-11-27, second run), profiled as now
#    configured: the max pool's backward as a phase-by-phase gather (session 12; the old one was a
#    1.26 ms kernel, ~0.45 TB/s, in that run's profile), then the stem computed on 2x2 blocks of the
#    image (`model.stem_space_to_depth`: its 7x7 convolution on 3 channels took 1.5 ms forward and
#    0.9 ms for the weight gradient), the same with BN-ReLU's masks recomputed (same speed, 2 GiB
#    less on 2026-11-27), and without the on-device colour ops (+0.2% then).
ours 150 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --profile_steps=3 \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --profile_steps=3 --config.model.stem_space_to_depth=True" \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.model.stem_space_to_depth=True --config.model.bn_recompute_mask=True" \
  "--also=--config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.augment=False"
#    The ResNet-50 eager peer in this same call (22 s on 2026-11-27); torch.compile comes after item 3.
peer 40 in50 256 20 eager
# 3. With concurrent graphs the step call lasts as long as the step (dispatch 8.0 of 8.3 ms for
#    ResNet-110): if that is XLA updating the graphs' buffer addresses before each launch (the profiles
#    above list the host's events, `host_top`), update-free graphs remove it. XLA's mode names changed
#    over 2026 (0.10.2 knows NEVER_UPDATE and CAPTURE_CMD_NEVER_UPDATE; later XLA SKIP_TEMP and
#    SKIP_PROFILED), and XLA aborts on a value it does not know, so the first one this XLA takes.
for mode in SKIP_PROFILED SKIP_TEMP NEVER_UPDATE; do
  if xla_knows "--xla_gpu_command_buffer_update_mode=$mode"; then
    UPD="--config.xla_flags=$CIFAR_FLAGS --xla_gpu_command_buffer_update_mode=$mode"
    ours 180 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=30 --warmup=3 --profile_steps=3 "$UPD" \
      "--also=--config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=30 --warmup=3 --distinct_batches=2 '$UPD'" \
      "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 '$UPD'"
    break
  fi
  echo "this XLA does not take --xla_gpu_command_buffer_update_mode=$mode" | tee -a "$OUT/log.txt"
done
#    torch.compile on ResNet-50, which the deadline cut in all three earlier runs (the issue cites
#    7,308 img/s for it).
peer 150 in50 256 20 compile
#    Then ResNet-110 fed two batches in turn (--distinct_batches=2), as training feeds a new one each
#    step: what updating the CUDA graphs' input addresses costs a call (concurrent graphs).
ours 90 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=30 --warmup=3 --distinct_batches=2
# 4. ResNet-50 with XLA's experimental cuDNN fusions of convolutions with their elementwise
#    neighbours (fewer passes over the activations; cut by the deadline on 2026-11-27) and with the
#    latency-hiding scheduler; then the serial-graph ResNet-110, this call's reference for items 1, 3.
ours 90 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  --config.xla_flags=--xla_gpu_experimental_enable_conv_fusion=true
ours 60 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 \
  --config.xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true
ours 90 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=30 --warmup=3 "$SERIAL"
# 5. The memory goals (met 2026-11-26 with the earlier BN: 20.7 and 31.5 GiB; XLA's allocation now
#    says 9.5 and 15.5): one process each, since the device's peak is the process's.
ours 90  --config=experiments/cifar1001_b128.py --config.batch_size=128 --steps=10 --warmup=2
ours 120 --config=experiments/imagenet_resnet200.py --config.batch_size=128 --steps=10 --warmup=2
# 6. The rest, if the deadline leaves time: the plain Flax CIFAR baselines with our command buffers
#    (how much of our lead is the flag), ResNet-164 scanned, remat on ResNet-1001, torch.compile on
#    ResNet-110, the peers at batch 128, ResNet-1001's compile cold then warm from the persistent cache.
ours 150 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=30 --warmup=3 --baseline \
  "--also=--config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --baseline" \
  "--also=--config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --config.model.scan_unroll=1" \
  "--also=--config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.remat=True"
peer 120 cifar110 128 30 compile
peer 60 cifar1001 128 10 eager
peer 60 in200 128 10 eager
ours 60 --config=experiments/cifar1001.py --compile_only --compilation_cache_dir=/tmp/xla_cache_bench
ours 60 --config=experiments/cifar1001.py --compile_only --compilation_cache_dir=/tmp/xla_cache_bench
# XLA's own count of the bytes the ImageNet step's colour jitter + normalisation touch, on the GPU.
[ "$(budget 30)" -gt 0 ] && timeout 30 python3 bench/colour_cost.py >"$OUT/colour_cost.jsonl" 2>>"$OUT/log.txt"

finish

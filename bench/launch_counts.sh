#!/usr/bin/env bash
# Launches per training step on an H200, counted on this CPU machine (bench/gpu_launches.py; its
# docstring has the one-time set-up of /tmp/gpuenv): the goal models as configured, the levers, and
# the plain Flax baseline. One JSON line each to $OUT (default bench/launch_counts.jsonl), tagged with
# the commit. About 12 minutes on 2 cores.
#   PYTHON=/tmp/gpuenv/bin/python bash bench/launch_counts.sh
set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-bench/launch_counts.jsonl}
PY=${PYTHON:-/tmp/gpuenv/bin/python}
COMMIT=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- resnet_v2_jax || echo "+changes")
count() {  # count ARGS...: one line, or a failure marker
  local line
  line=$(JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=. timeout 900 "$PY" bench/gpu_launches.py "$@" \
    --config.model.dtype=bfloat16 2>/dev/null | grep '^{') || line="{\"failed\": \"$*\"}"
  echo "${line%\}}, \"commit\": \"$COMMIT\"}" | tee -a "$OUT"
}
count --config=experiments/imagenet_resnet50.py --config.batch_size=256
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.model.scan=True
count --config=experiments/cifar10_resnet164.py --config.batch_size=128
count --config=experiments/cifar10_resnet164.py --config.batch_size=128 --config.model.scan_unroll=6
count --config=experiments/cifar10_resnet164.py --config.batch_size=128 --config.model.scan_unroll=17
count --config=experiments/cifar10_resnet110.py --config.batch_size=128
count --config=experiments/cifar10_resnet110.py --config.batch_size=128 --config.model.scan=True
count --config=experiments/cifar1001.py --config.batch_size=64 --config.model.scan_unroll=1
count --config=experiments/cifar1001.py --config.batch_size=64
count --config=experiments/cifar1001.py --config.batch_size=64 --config.model.scan_unroll=22
count --config=experiments/cifar1001.py --config.batch_size=64 --config.model.scan_unit_reads=True
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.model.conv1x1_fusion=True  # jaxlib >= 0.11.2
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.model.bn_pallas_sums=True  # Triton kernels
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.model.stem_align_channels=True
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.auto_param_layouts=True
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.auto_param_layouts=True \
  --config.model.bn_pallas_sums=True --config.model.stem_align_channels=True  # the three session-19 levers
for f in cifar10_resnet110 cifar10_resnet164; do  # BN partial sums (model.bn_partial_sums)
  count --config=experiments/$f.py --config.batch_size=128 --config.model.bn_partial_sums=True
done
count --config=experiments/cifar1001.py --config.batch_size=64 --config.model.bn_partial_sums=True
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --config.model.bn_partial_sums=True
count --config=experiments/imagenet_resnet50.py --config.batch_size=256 --baseline
count --config=experiments/cifar10_resnet164.py --config.batch_size=128 --baseline
count --config=experiments/cifar10_resnet110.py --config.batch_size=128 --baseline

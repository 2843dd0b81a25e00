#!/usr/bin/env bash
# The CPU measurements of BENCHMARKS.md, one after another (never two at once: 2 cores).
# Usage: bash bench/run_cpu.sh [results.jsonl]   (about 15-25 minutes on a 2-core x86-64 CPU)
set -u
cd "$(dirname "$0")/.." || exit 1
R=${1:-bench/cpu_results.jsonl}
B="python -m resnet_v2_jax.benchmark --json"
run() { echo "+ $*" >&2; "$@" >>"$R" || echo "{\"failed\": \"$*\"}" >>"$R"; }
# 1. CIFAR ResNet-110 batch 32: ours vs the plain jit Flax step, same process.
run $B --compare --config=experiments/cifar10_resnet110.py --config.batch_size=32 --steps=7 --warmup=2
# 2. ResNet-1001 batch 64 compile with scan (goal < 60 s), ResNet-164 scan vs unrolled.
run $B --config=experiments/cifar1001.py --steps=1 --warmup=0
run $B --config=experiments/cifar10_resnet164.py --config.batch_size=64 --steps=3 --warmup=1
run $B --config=experiments/cifar10_resnet164.py --config.batch_size=64 --config.model.scan=False --steps=3 --warmup=1
# 3. What the custom conv VJP buys on CPU (ResNet-110 batch 32, scan on, plain lax conv gradient).
run python bench/scan_conv_check.py --json --config=experiments/cifar10_resnet110.py --config.batch_size=32 --steps=2 --warmup=0
# 4. ResNet-1001 unrolled: stopped after 300 s if it has not finished.
echo "+ cifar1001 unrolled (timeout 300 s)" >&2
# shellcheck disable=SC2086  # $B is a command with its flags, split on purpose
timeout 300 $B --config=experiments/cifar1001.py --config.model.scan=False --steps=1 --warmup=0 >>"$R" \
  || echo '{"impl": "ours", "model": "cifar1001", "scan": false, "batch": 64, "did_not_finish_s": 300}' >>"$R"
# 5. ResNet-110 batch 32 again with --compare's alternating steps (A B A B), 9 steps each.
run $B --compare --config=experiments/cifar10_resnet110.py --config.batch_size=32 --steps=9 --warmup=1

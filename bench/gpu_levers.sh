#!/usr/bin/env bash
# The second GPU call of 2026-11-26 (under 4 minutes): what bench/gpu_compare.sh's numbers pointed at.
# There every scanned stage's step was host-bound (`dispatch_ms` ~ `step_ms`: the GPU runtime reads
# each while-loop condition back on the host), and 10 units per iteration made ResNet-1001 1.9x
# faster. Here: no loop at all (unroll = the stage's scanned units), the loop in a CUDA graph on top
# of unroll 10, ResNet-50 unrolled, and the plain Flax ResNet-50 in the same call.
#   run(command="DEADLINE_S=195 bash bench/gpu_levers.sh", carry=[".whl"], timeout_s=210)
# shellcheck source=bench/gpu_lib.sh
source "$(dirname "$0")/gpu_lib.sh"
CMDBUF="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL"

ours 60 --config=experiments/cifar10_resnet164.py --config.batch_size=128 --steps=30 --warmup=3 --config.model.scan_unroll=17
XLA_FLAGS=$CMDBUF ours 60 --config=experiments/cifar1001.py --config.batch_size=64 --steps=20 --warmup=3 --config.model.scan_unroll=10
ours 60 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --config.model.scan=False
ours 60 --config=experiments/imagenet_resnet50.py --config.batch_size=256 --steps=20 --warmup=3 --baseline
ours 60 --config=experiments/cifar10_resnet110.py --config.batch_size=128 --steps=30 --warmup=3 --config.model.scan=True --config.model.scan_unroll=17
finish

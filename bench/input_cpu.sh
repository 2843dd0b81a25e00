#!/usr/bin/env bash
# The ImageNet input-pipeline numbers of BENCHMARKS.md: host images/s and images per CPU-second,
# on the sample imagenet2012 of resnet_v2_jax.sample_imagenet (6,400 training JPEGs of ImageNet's
# sizes, prepared by TFDS's builder; about 1 minute the first time, 300 MB).
# Usage: bash bench/input_cpu.sh [results.jsonl] [sample_dir]   (about 5 minutes on 2 cores)
set -u
cd "$(dirname "$0")/.." || exit 1
R=${1:-bench/input_results.jsonl}
S=${2:-/tmp/resnet_v2_jax_imagenet_sample}
I="python -m resnet_v2_jax.input_benchmark --json --sample_dir=$S --threads=1,2"
run() { echo "+ $*" >&2; "$@" >>"$R" || echo "{\"failed\": \"$*\"}" >>"$R"; }
# Training batches (256, 20 timed after 3 warm-up, within one epoch): both augmentations.
run $I --config=experiments/imagenet_resnet50.py --batches=20 --warmup=3
run $I --config=experiments/imagenet_resnet50.py --config.imagenet_augment=scale --batches=20 --warmup=3
# Evaluation batches (250, 5 timed after 1, within one pass of the 1,600): the 224 centre crop and ResNet-200's full 320 crop.
run $I --config=experiments/imagenet_resnet50.py --split=test --batches=5 --warmup=1
run $I --config=experiments/imagenet_resnet200.py --split=test --batches=5 --warmup=1

#!/usr/bin/env bash
# Ours beside the PyTorch peer on this CPU, one command after another (never two at once: 2 cores).
# Needs torch (pip install torch) and ../shared/bench/peer_torch.py copied to .bench/ (git-ignored).
# Usage: bash bench/cpu_peers.sh [results.jsonl]   (about 25 minutes on a 2-core x86-64 CPU)
set -u
cd "$(dirname "$0")/.." || exit 1
R=${1:-bench/cpu_peers.jsonl}
B=(python -m resnet_v2_jax.benchmark --json)
PEER=.bench/peer_torch.py
run() {  # run TIMEOUT_S CMD...: one JSON line into $R, a marker line if it fails or runs out of time
  local t=$1; shift
  echo "+ $*" >&2
  timeout "$t" "$@" >>"$R" || echo "{\"failed\": \"$*\", \"timeout_s\": $t}" >>"$R"
}
python -c "import torch; print('torch', torch.__version__, torch.get_num_threads(), 'threads')" >&2 || exit 1
# CIFAR ResNet-110 batch 32: float32 (the CPU default) and bf16, ours against PyTorch eager.
run 300 "${B[@]}" --config=experiments/cifar10_resnet110.py --config.batch_size=32 --steps=7 --warmup=2
run 120 python bench/peer_f32.py $PEER cifar110 32 7 eager
run 300 "${B[@]}" --config=experiments/cifar10_resnet110.py --config.batch_size=32 --steps=7 --warmup=2 --config.model.dtype=bfloat16
run 120 python $PEER cifar110 32 7 eager
# torch.compile (bf16, as the peer runs it); its warmup_s holds the compile, cold: a fresh Inductor
# cache dir (Inductor keeps compiled kernels in /tmp/torchinductor_$USER across runs otherwise).
run 400 env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" python $PEER cifar110 32 7 compile
# ResNet-1001 batch 64: one step each; then torch.compile, stopped after 300 s (ours compiles in 7 s).
run 300 "${B[@]}" --config=experiments/cifar1001.py --steps=1 --warmup=0
run 300 python bench/peer_f32.py $PEER cifar1001 64 1 eager
run 300 env TORCHINDUCTOR_CACHE_DIR="$(mktemp -d)" python $PEER cifar1001 64 1 compile
# ImageNet ResNet-50 batch 8, float32 (the experiment file says bf16): ours as training feeds it (uint8 + colour on device), ours
# with normalisation only (the closest to the peer's float batch), PyTorch eager.
run 300 "${B[@]}" --config=experiments/imagenet_resnet50.py --config.batch_size=8 --steps=5 --warmup=1 --config.model.dtype=float32
run 300 "${B[@]}" --config=experiments/imagenet_resnet50.py --config.batch_size=8 --steps=5 --warmup=1 --config.augment=False --config.model.dtype=float32
run 300 python bench/peer_f32.py $PEER in50 8 5 eager

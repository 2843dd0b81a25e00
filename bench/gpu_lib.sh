# shellcheck shell=bash
# Sourced by bench/gpu_compare.sh and bench/gpu_levers.sh: the wheel install, the GPU and JAX
# versions into $OUT/gpu.txt, and `ours` / `peer` / `finish`, each run under its own timeout within
# the DEADLINE_S seconds the calling script gets, so one slow or failing model never costs the others.
set -u
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
OUT=${OUT:-/tmp/gpu_compare_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
  echo "wheel install failed" >&2; exit 1
fi
# The repository too: the GPU image does not install it, and `python3 bench/X.py` puts only bench/ on the path.
export PYTHONPATH=/tmp/site:$PWD:${PYTHONPATH:-}
PEAK=${PEAK_TFLOPS:-989}  # H100/H200 SXM dense bf16 peak, spec sheet; the matmul seen here ran ~790
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader >"$OUT/gpu.txt"
# The benchmark's profiled runs add this XLA flag (benchmark.PROFILE_XLA_FLAGS), and XLA aborts a process
# on a flag it does not know: check it once here, and profile without it rather than lose the runs.
versions="import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
if ! XLA_FLAGS="${XLA_FLAGS:-} --xla_enable_command_buffers_during_profiling=true" python3 -c "$versions" \
    >>"$OUT/gpu.txt" 2>>"$OUT/log.txt"; then
  echo "this XLA does not know --xla_enable_command_buffers_during_profiling: profiles run without graphs" \
    >>"$OUT/gpu.txt"
  export RESNET_V2_PROFILE_XLA_FLAGS=""
  python3 -c "$versions" >>"$OUT/gpu.txt"
fi
cat "$OUT/gpu.txt"

xla_knows() {  # xla_knows FLAG: whether this XLA starts with FLAG (it aborts on a flag or value it does not know)
  XLA_FLAGS="$1" timeout 60 python3 -c "import jax; jax.devices()" >/dev/null 2>&1
}

DEADLINE=${DEADLINE_S:-450}  # seconds for everything below: the whole call stays under 8 minutes
budget() {  # budget WANTED: the seconds this command may take, 0 when the deadline leaves under 20
  local left=$((DEADLINE - SECONDS)); [ "$left" -lt 20 ] && { echo 0; return; }
  [ "$1" -lt "$left" ] && echo "$1" || echo "$left"
}
ours() {  # ours TIMEOUT_S ARGS...: one JSON line per run into ours.jsonl, a failure marker otherwise
  local t s=$SECONDS; t=$(budget "$1"); shift
  [ "$t" -eq 0 ] && { echo "{\"impl\": \"ours\", \"skipped\": \"$*\"}" >>"$OUT/ours.jsonl"; return; }
  echo "+ ours${BENCH:+ ($BENCH)} $* [at ${SECONDS} s]" | tee -a "$OUT/log.txt"
  # Each run gets bf16 and OURS_EXTRA (a list of flags, last flags win), the --also runs too; "$@"
  # first: ml_collections wants --config=FILE before any --config.field override.
  local extra="--config.model.dtype=bfloat16 ${OURS_EXTRA:-}" args=() a
  for a in "$@"; do [[ $a == --also=* ]] && args+=("$a $extra") || args+=("$a"); done
  # BENCH: another command that takes the benchmark's flags (bench/scan_empty_check.py).
  # shellcheck disable=SC2086  # $extra is a list of flags, $BENCH a command line: split on purpose
  timeout "$t" ${BENCH:-python3 -m resnet_v2_jax.benchmark} "${args[@]}" --json --peak_tflops="$PEAK" $extra \
    >>"$OUT/ours.jsonl" 2>>"$OUT/log.txt" || echo "{\"impl\": \"ours\", \"failed\": \"$*\"}" >>"$OUT/ours.jsonl"
  echo "  ($((SECONDS - s)) s)" | tee -a "$OUT/log.txt"
}
peer() {  # peer TIMEOUT_S MODEL BATCH STEPS MODE
  local t s=$SECONDS; t=$(budget "$1"); shift
  [ "$t" -eq 0 ] && { echo "{\"peer\": \"torch\", \"skipped\": \"$*\"}" >>"$OUT/peer.jsonl"; return; }
  echo "+ peer $* [at ${SECONDS} s]" | tee -a "$OUT/log.txt"
  timeout "$t" python3 .bench/peer_torch.py "$@" >>"$OUT/peer.jsonl" 2>>"$OUT/log.txt" \
    || echo "{\"peer\": \"torch\", \"failed\": \"$*\"}" >>"$OUT/peer.jsonl"
  echo "  ($((SECONDS - s)) s)" | tee -a "$OUT/log.txt"
}

PROFILES="$OUT/profiles"  # benchmark --profile_dir: kernel tables and compiled HLO, for bench/kernel_bandwidth.py
finish() {  # the chart and table of everything measured, printed last (the reply shows the end)
  touch "$OUT/ours.jsonl" "$OUT/peer.jsonl"
  # At most 8 files come back from a device call: the saved profiles travel as one archive.
  if [ -d "$PROFILES" ]; then tar czf "$OUT/profiles.tgz" -C "$OUT" profiles && rm -rf "$PROFILES"; fi
  python3 bench/chart.py "$OUT/ours.jsonl" "$OUT/peer.jsonl" --png "$OUT/throughput.png" --md "$OUT/table.md" \
    --title "bf16 training step, $(head -1 "$OUT/gpu.txt" | cut -d, -f1)" || true
  cat "$OUT/table.md" 2>/dev/null
}

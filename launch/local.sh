#!/usr/bin/env bash
# Try multi-host training on one machine: N processes, each with its own CPU devices,
# joined through jax.distributed exactly as N TPU/GPU hosts would be.
#
# Usage:
#   launch/local.sh [--dry-run] N [MAIN_ARGS...]
#   e.g. launch/local.sh 2 --config=experiments/cifar10_resnet164.py --workdir=/tmp/rn
#
# Process i runs (from the current directory, so run it from the repo root or after
# `pip install -e .`):
#   JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS \
#     python -m resnet_v2_jax.main MAIN_ARGS --coordinator_address=127.0.0.1:$PORT \
#     --num_processes=N --process_id=i
# Process 0 writes to this terminal; process i > 0 writes to $LOG_DIR/local_proc_i.log.
# All N start in the background and the script waits for them. As soon as one exits
# non-zero the others are killed and the script exits with that process's status;
# Ctrl-C kills them all.
#
# Environment:
#   DEVICES_PER_PROCESS  CPU devices per process (default 2); added to any XLA_FLAGS you set.
#   PORT                 coordinator port (default: a free port picked with python).
#   LOG_DIR              where the logs of processes 1..N-1 go (default /tmp).
#   PYTHON               interpreter (default: python, or python3 when there is no python).
#   --dry-run            print the N commands, with their environment, instead of running them.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/local.sh [--dry-run] N [MAIN_ARGS...]
  N: number of processes (a positive integer). Env: DEVICES_PER_PROCESS (2), PORT, LOG_DIR (/tmp), PYTHON.
EOF
}

die_usage() {
  echo "local.sh: error: $*" >&2
  usage
  exit 2
}

# shellcheck source=shell_quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/shell_quote.sh"

DRY_RUN=0
case ${1:-} in
  -h|--help) usage; exit 0 ;;
  --dry-run) DRY_RUN=1; shift ;;
esac
[[ $# -gt 0 ]] || die_usage "missing N (the number of processes)"
N=$1
shift
[[ $N =~ ^[1-9][0-9]*$ ]] || die_usage "N must be a positive integer, got '$N'"

DEVICES_PER_PROCESS=${DEVICES_PER_PROCESS:-2}
[[ $DEVICES_PER_PROCESS =~ ^[1-9][0-9]*$ ]] ||
  die_usage "DEVICES_PER_PROCESS must be a positive integer, got '$DEVICES_PER_PROCESS'"
LOG_DIR=${LOG_DIR:-/tmp}
if [[ -z ${PYTHON:-} ]]; then
  if command -v python >/dev/null 2>&1; then PYTHON=python; else PYTHON=python3; fi
fi
if [[ -z ${PORT:-} ]]; then
  # Free now; there is a small window for another program to take it before process 0 binds it.
  # (With the system's python, not $PYTHON, which may be a wrapper.)
  port_python=$(command -v python3 || command -v python)
  PORT=$("$port_python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi
[[ $PORT =~ ^[0-9]+$ ]] || die_usage "PORT must be a number, got '$PORT'"

XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS"
ENV_VARS=(JAX_PLATFORMS=cpu "XLA_FLAGS=$XLA_FLAGS")

# The command of process $1 (without its environment).
proc_cmd() {
  CMD=("$PYTHON" -m resnet_v2_jax.main ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"}
    --coordinator_address="127.0.0.1:$PORT" --num_processes="$N" --process_id="$1")
}
log_of() { printf '%s/local_proc_%s.log' "$LOG_DIR" "$1"; }

MAIN_ARGS=("$@")

if [[ $DRY_RUN == 1 ]]; then
  for ((i = 0; i < N; i++)); do
    proc_cmd "$i"
    line="$(shell_join "${ENV_VARS[@]}" "${CMD[@]}")"
    [[ $i == 0 ]] || line+=" > $(shell_quote "$(log_of "$i")") 2>&1"
    printf '%s\n' "$line"
  done
  exit 0
fi

mkdir -p "$LOG_DIR"
export JAX_PLATFORMS=cpu XLA_FLAGS
PIDS=()
# Stop whatever still runs (each process with its children): SIGTERM, then SIGKILL after 10 s.
kill_all() {
  local pid alive t
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for ((t = 0; t < 100; t++)); do
    alive=0
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do
      if kill -0 -- "-$pid" 2>/dev/null; then alive=1; fi
    done
    [[ $alive == 1 ]] || return 0
    sleep 0.1
  done
  for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill -KILL -- "-$pid" 2>/dev/null || true; done
}
trap 'echo "local.sh: interrupted, stopping all processes" >&2; kill_all; exit 130' INT TERM

# Job control puts each process in its own process group, so that stopping a process also
# stops anything it started (kill -- -PID). Ctrl-C then reaches only this script, whose trap
# stops them all.
set -m
for ((i = 0; i < N; i++)); do
  proc_cmd "$i"
  if [[ $i == 0 ]]; then
    "${CMD[@]}" </dev/null &
  else
    "${CMD[@]}" </dev/null >"$(log_of "$i")" 2>&1 &
  fi
  PIDS+=("$!")
done
set +m  # groups are made; without job control bash prints no "Terminated" notices
if [[ $N -gt 1 ]]; then
  echo "local.sh: $N processes, coordinator 127.0.0.1:$PORT; process 0 writes here," \
    "process i = 1..$((N - 1)) to $(log_of i)" >&2
fi

# Poll instead of `wait -n`, which older bash (macOS) lacks and which cannot tell which
# process ended. `wait PID` on a finished child returns its exit status.
FINISHED=()
remaining=$N
while [[ $remaining -gt 0 ]]; do
  for ((i = 0; i < N; i++)); do
    [[ -z ${FINISHED[i]:-} ]] || continue
    kill -0 "${PIDS[i]}" 2>/dev/null && continue
    rc=0
    wait "${PIDS[i]}" || rc=$?
    FINISHED[i]=1
    remaining=$((remaining - 1))
    if [[ $rc != 0 ]]; then
      where="this terminal"
      [[ $i == 0 ]] || where=$(log_of "$i")
      echo "local.sh: process $i exited with status $rc (output: $where); stopping the others" >&2
      kill_all
      wait 2>/dev/null || true
      exit "$rc"
    fi
  done
  [[ $remaining == 0 ]] || sleep 0.2
done
echo "local.sh: all $N processes finished successfully" >&2

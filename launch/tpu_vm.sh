#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice), install resnet_v2_jax on
# every worker, and train on all workers at once.
#
# Usage:
#   launch/tpu_vm.sh [--dry-run] SUBCOMMAND --name=NAME --zone=ZONE [options] [-- MAIN_ARGS...]
#
# Subcommands:
#   create   gcloud compute tpus tpu-vm create (or, with --queued, a queued resource).
#   setup    Copy (or git clone) the repo to ~/resnet_v2_jax on every worker and pip
#            install 'jax[tpu]', the package (editable), tensorflow-cpu, tensorflow-datasets.
#   run      Start the SAME command on every worker, in the background (nohup):
#              python3 -m resnet_v2_jax.main --config=CONFIG --workdir=BUCKET/runs/RUN_NAME MAIN_ARGS
#            with TFDS_DATA_DIR=BUCKET/tensorflow_datasets. Output: ~/train.log on each worker.
#            jax.distributed.initialize() finds the other workers by itself on a TPU VM.
#   logs     tail -f ~/train.log of worker 0.
#   stop     Kill the training processes on every worker (e.g. before `run` with new args).
#   delete   Delete the TPU VM (with --queued: the queued resource and its TPU VM).
#
# Options (each --opt VALUE may also be written --opt=VALUE; env var in brackets is the default):
#   --name NAME               TPU name, required                      [TPU_NAME]
#   --zone ZONE               e.g. us-central2-b, required            [TPU_ZONE]
#   --project PROJECT         passed as --project=PROJECT             [TPU_PROJECT]
#   --accelerator-type TYPE   default v4-32                           [TPU_ACCELERATOR_TYPE]
#   --version RUNTIME         default tpu-ubuntu2204-base             [TPU_VERSION]
#   --spot                    create a Spot TPU                       [TPU_SPOT=1]
#   --queued                  create/delete through queued resources  [TPU_QUEUED=1]
#                             (the queued resource is named NAME-qr)
#   --repo URL|PATH           git URL to clone, or local dir to scp   [TPU_REPO]
#                             default: this repo's root, copied with scp
#                             (everything in it is copied, so keep big files elsewhere)
#   --bucket gs://BUCKET      required for run: TFDS_DATA_DIR=BUCKET/tensorflow_datasets,
#                             workdir BUCKET/runs/RUN_NAME            [TPU_BUCKET]
#   --config experiments/X.py required for run                        [TPU_CONFIG]
#   --run-name RUN_NAME       default: the config's file name without .py  [TPU_RUN_NAME]
#   --dry-run                 print each command (one per line, shell-quoted,
#                             exactly as it would run) instead of running it
#   -h, --help                this help
#   -- MAIN_ARGS...           (run only) extra flags for main, e.g. --config.batch_size=1024
#
# Example (v4-32 = 4 workers):
#   launch/tpu_vm.sh create --name=rn --zone=us-central2-b --spot
#   launch/tpu_vm.sh setup  --name=rn --zone=us-central2-b
#   launch/tpu_vm.sh run    --name=rn --zone=us-central2-b --bucket=gs://my-bucket \
#       --config=experiments/cifar10_resnet164.py -- --config.batch_size=1024
#   launch/tpu_vm.sh logs   --name=rn --zone=us-central2-b
#   launch/tpu_vm.sh delete --name=rn --zone=us-central2-b
#
# Preemption: a Spot TPU can be preempted at any time. Recreate it if it is gone
# (create + setup) and simply rerun `run` with the same --bucket/--config/--run-name:
# the workdir is the same gs:// directory, so main resumes from the last Orbax
# checkpoint there instead of starting over.
#
# Exit status: 2 on a usage error (usage goes to stderr), else that of the failing command.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The repo's home on every worker. The ~ is meant literally here: it goes into the
# command lines sent over ssh and is expanded by the shell on the TPU VM.
# shellcheck disable=SC2088
REMOTE_DIR='~/resnet_v2_jax'

usage() {
  cat <<'EOF'
usage: launch/tpu_vm.sh [--dry-run] {create|setup|run|logs|stop|delete} --name=NAME --zone=ZONE
                        [--project=P] [--accelerator-type=v4-32] [--version=tpu-ubuntu2204-base]
                        [--spot] [--queued] [--repo=URL|PATH] [--bucket=gs://B]
                        [--config=experiments/X.py] [--run-name=R] [-- MAIN_ARGS...]
Run `launch/tpu_vm.sh --help` for details.
EOF
}

die_usage() {
  echo "tpu_vm.sh: error: $*" >&2
  usage >&2
  exit 2
}

# shellcheck source=shell_quote.sh
source "$(dirname "${BASH_SOURCE[0]}")/shell_quote.sh"

# Run a command, or print it under --dry-run. The same argv is used either way.
run_cmd() {
  if [[ $DRY_RUN == 1 ]]; then
    shell_join "$@"
    printf '\n'
  else
    printf '+ %s\n' "$(shell_join "$@")" >&2
    "$@"
  fi
}

# ---------------------------------------------------------------- arguments
DRY_RUN=0
SUBCOMMAND=""
NAME="${TPU_NAME:-}"
ZONE="${TPU_ZONE:-}"
PROJECT="${TPU_PROJECT:-}"
ACCELERATOR_TYPE="${TPU_ACCELERATOR_TYPE:-v4-32}"
VERSION="${TPU_VERSION:-tpu-ubuntu2204-base}"
SPOT="${TPU_SPOT:-0}"
QUEUED="${TPU_QUEUED:-0}"
REPO="${TPU_REPO:-$REPO_ROOT}"
BUCKET="${TPU_BUCKET:-}"
CONFIG="${TPU_CONFIG:-}"
RUN_NAME="${TPU_RUN_NAME:-}"
MAIN_ARGS=()
HAVE_MAIN_ARGS=0

while [[ $# -gt 0 ]]; do
  arg=$1
  shift
  case $arg in
    --) MAIN_ARGS=("$@"); HAVE_MAIN_ARGS=1; break ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    --dry-run) DRY_RUN=1 ;;
    --spot) SPOT=1 ;;
    --queued) QUEUED=1 ;;
    --name|--zone|--project|--accelerator-type|--version|--repo|--bucket|--config|--run-name|\
    --name=*|--zone=*|--project=*|--accelerator-type=*|--version=*|--repo=*|--bucket=*|--config=*|--run-name=*)
      if [[ $arg == *=* ]]; then
        value=${arg#*=}
        arg=${arg%%=*}
      else
        [[ $# -gt 0 ]] || die_usage "$arg needs a value"
        value=$1
        shift
      fi
      case $arg in
        --name) NAME=$value ;;
        --zone) ZONE=$value ;;
        --project) PROJECT=$value ;;
        --accelerator-type) ACCELERATOR_TYPE=$value ;;
        --version) VERSION=$value ;;
        --repo) REPO=$value ;;
        --bucket) BUCKET=$value ;;
        --config) CONFIG=$value ;;
        --run-name) RUN_NAME=$value ;;
      esac
      ;;
    -*) die_usage "unknown flag: $arg" ;;
    create|setup|run|logs|stop|delete)
      [[ -z $SUBCOMMAND ]] || die_usage "more than one subcommand: $SUBCOMMAND, $arg"
      SUBCOMMAND=$arg
      ;;
    *) die_usage "unknown subcommand: $arg" ;;
  esac
done

[[ -n $SUBCOMMAND ]] || die_usage "no subcommand given"
[[ -n $NAME ]] || die_usage "--name is required"
[[ -n $ZONE ]] || die_usage "--zone is required"
[[ $SPOT == 0 || $SPOT == 1 ]] || die_usage "TPU_SPOT must be 0 or 1"
[[ $QUEUED == 0 || $QUEUED == 1 ]] || die_usage "TPU_QUEUED must be 0 or 1"
if [[ $HAVE_MAIN_ARGS == 1 && $SUBCOMMAND != run ]]; then
  die_usage "arguments after -- are only for 'run'"
fi

QR_NAME="$NAME-qr"
ZONE_FLAG="--zone=$ZONE"
SPOT_FLAG=""
[[ $SPOT == 0 ]] || SPOT_FLAG="--spot"

# gcloud compute tpus ARGS..., with --project=PROJECT at the end when one is given.
tpus() {
  run_cmd gcloud compute tpus "$@" ${PROJECT:+"--project=$PROJECT"}
}

# Run a shell command line on TPU workers: on_workers WORKER(S) COMMAND_LINE.
on_workers() {
  tpus tpu-vm ssh "$NAME" "$ZONE_FLAG" --worker="$1" --command="$2"
}

# ---------------------------------------------------------------- subcommands
cmd_create() {
  if [[ $QUEUED == 1 ]]; then
    # Returns at once; the TPU VM NAME appears when the request is ACTIVE:
    #   gcloud compute tpus queued-resources describe NAME-qr --zone=ZONE
    tpus queued-resources create "$QR_NAME" --node-id="$NAME" "$ZONE_FLAG" \
      --accelerator-type="$ACCELERATOR_TYPE" --runtime-version="$VERSION" ${SPOT_FLAG:+"$SPOT_FLAG"}
  else
    tpus tpu-vm create "$NAME" "$ZONE_FLAG" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$VERSION" ${SPOT_FLAG:+"$SPOT_FLAG"}
  fi
}

is_git_url() {
  [[ $1 =~ ^(https?|ssh|git|file):// || $1 =~ ^[A-Za-z0-9._-]+@[^:/]+: ]]
}

cmd_setup() {
  local fetch
  if [[ -d $REPO ]]; then
    # Fresh copy of the local tree on every worker.
    on_workers all "rm -rf $REMOTE_DIR"
    tpus tpu-vm scp --recurse "$REPO" "$NAME:resnet_v2_jax" "$ZONE_FLAG" --worker=all
    fetch=""
  elif is_git_url "$REPO"; then
    local url
    url=$(shell_quote "$REPO")
    fetch="if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR pull --ff-only; else git clone $url $REMOTE_DIR; fi && "
  else
    die_usage "--repo is neither a directory nor a git URL: $REPO"
  fi
  on_workers all "set -e; ${fetch}python3 -m pip install -U pip && python3 -m pip install -U \"jax[tpu]\" && python3 -m pip install -e $REMOTE_DIR tensorflow-cpu tensorflow-datasets"
}

cmd_run() {
  [[ -n $BUCKET ]] || die_usage "--bucket is required for run"
  [[ $BUCKET == gs://?* ]] || die_usage "--bucket must look like gs://BUCKET, got: $BUCKET"
  [[ -n $CONFIG ]] || die_usage "--config is required for run"
  BUCKET=${BUCKET%/}
  local run_name=${RUN_NAME:-$(basename "$CONFIG" .py)}
  local workdir="$BUCKET/runs/$run_name"
  local main_cmd
  main_cmd=$(shell_join python3 -m resnet_v2_jax.main --config="$CONFIG" --workdir="$workdir" \
    ${MAIN_ARGS[@]+"${MAIN_ARGS[@]}"})
  # The config path is relative to the repo root, hence the cd. stdin/stdout/stderr are all
  # redirected so that ssh returns right away and the job survives the session.
  on_workers all "cd $REMOTE_DIR || exit 1; export TFDS_DATA_DIR=$(shell_quote "$BUCKET/tensorflow_datasets"); nohup $main_cmd > ~/train.log 2>&1 < /dev/null &"
}

cmd_logs() {
  on_workers 0 "tail -n 100 -f ~/train.log"
}

cmd_stop() {
  on_workers all "pkill -f 'python3 -m resnet_v2_jax[.]main' || true"
}

cmd_delete() {
  if [[ $QUEUED == 1 ]]; then
    # --force deletes the TPU VM of the queued resource first, then the request itself.
    tpus queued-resources delete "$QR_NAME" "$ZONE_FLAG" --force --quiet
  else
    tpus tpu-vm delete "$NAME" "$ZONE_FLAG" --quiet
  fi
}

"cmd_$SUBCOMMAND"

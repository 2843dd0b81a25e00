"""`python -m resnet_v2_jax.main --config=experiments/X.py --workdir=DIR [--config.a.b=v]`.

The same command on one GPU, a GPU node, every SLURM task or every worker of a TPU pod.
All logic lives in `train.train_and_evaluate`, which a notebook can call too.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging

from resnet_v2_jax import cli

cli.define_config_flag()
flags.DEFINE_string("workdir", None, "Directory (or gs:// path) for checkpoints, metrics and results.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for multi-process runs elsewhere "
                    "than Cloud TPU or SLURM (where it is found automatically).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")


def _initialize_distributed(timeout_s: int) -> None:
    import jax

    if flags.FLAGS.coordinator_address:
        if flags.FLAGS.num_processes is None or flags.FLAGS.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                                   flags.FLAGS.process_id, initialization_timeout=timeout_s,
                                   heartbeat_timeout_seconds=min(timeout_s, 100))
    elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 or (
            "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]):
        jax.distributed.initialize(initialization_timeout=timeout_s)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    config = flags.FLAGS.config
    if not flags.FLAGS.workdir:
        print("error: --workdir is required", file=sys.stderr)
        sys.exit(2)
    from resnet_v2_jax import config as config_lib

    try:  # bad fields fail here, before JAX starts or the workdir is touched
        config_lib.validate(config)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    _initialize_distributed(config.collective_timeout_s)
    from resnet_v2_jax import checkpoint, train

    logging.set_verbosity(logging.WARNING)
    try:
        results = train.train_and_evaluate(config, flags.FLAGS.workdir)
    except (ValueError, checkpoint.CheckpointMismatch, FileNotFoundError, train.WorkdirError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except train.TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    if results["status"] == "interrupted":
        sys.exit(130)
    if results["final_test_error"] is not None and results["status"] == "ok":
        print(f"final test error {100 * results['final_test_error']:.2f}% (best "
              f"{100 * results['best_test_error']:.2f}%) after {results['steps']} steps; results in "
              f"{flags.FLAGS.workdir}/results.json")


if __name__ == "__main__":
    cli.run(main)

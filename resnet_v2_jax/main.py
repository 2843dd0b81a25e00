"""`python -m resnet_v2_jax.main --config=experiments/X.py --workdir=DIR [--config.a.b=v]`.

The same command on one GPU, a GPU node, every SLURM task or every worker of a TPU pod.
All logic lives in `train.train_and_evaluate`, which a notebook can call too.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

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
        if flags.FLAGS.num_processes == 1:
            return
        with _join_deadline(timeout_s, f"{flags.FLAGS.num_processes} processes at {flags.FLAGS.coordinator_address}"):
            # XLA aborts the process (a C++ stack dump) at its own timeout: ours fires first.
            jax.distributed.initialize(flags.FLAGS.coordinator_address, flags.FLAGS.num_processes,
                                       flags.FLAGS.process_id, initialization_timeout=timeout_s + 10,
                                       heartbeat_timeout_seconds=min(timeout_s, 100))
    elif "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 or (
            "TPU_WORKER_HOSTNAMES" in os.environ and "," in os.environ["TPU_WORKER_HOSTNAMES"]):
        with _join_deadline(timeout_s, "the processes of this SLURM job / TPU pod"):
            jax.distributed.initialize(initialization_timeout=timeout_s + 10,
                                       heartbeat_timeout_seconds=min(timeout_s, 100))


@contextlib.contextmanager
def _join_deadline(timeout_s: int, who: str):
    """Exits 1 with one clear line when not every process has joined within `timeout_s`."""

    def expire():
        print(f"error: not all of the {who} joined within collective_timeout_s={timeout_s}s; start every "
              "process (same --coordinator_address and --num_processes, each its own --process_id), or "
              "check that the coordinator address is reachable", file=sys.stderr, flush=True)
        os._exit(1)

    timer = threading.Timer(timeout_s, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


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
    try:
        _initialize_distributed(config.collective_timeout_s)
    except app.UsageError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. the coordinator address is wrong
        print(f"error: joining the multi-process run failed ({_reason(e)}); start every process (same "
              "--coordinator_address and --num_processes, each its own --process_id)", file=sys.stderr)
        sys.exit(1)
    from resnet_v2_jax import checkpoint, train

    logging.set_verbosity(logging.WARNING)
    try:
        results = train.train_and_evaluate(config, flags.FLAGS.workdir)
    except (ValueError, checkpoint.CheckpointMismatch, FileNotFoundError, train.WorkdirError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (train.TrainingDiverged, train.CheckpointSaveError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:
        import jax

        if jax.process_count() == 1:
            raise
        # A collective failed: almost always another process of the run died. Exit at once:
        # the orderly shutdown would wait on that process at a barrier.
        print(f"error: process {jax.process_index()} of {jax.process_count()}: a collective operation "
              f"failed, most likely because another process of the run died ({_reason(e)}); the newest "
              "complete checkpoint is kept: restart every process to resume", file=sys.stderr, flush=True)
        os._exit(1)
    if results["status"] == "interrupted":
        sys.exit(130)
    if results["final_test_error"] is not None and results["status"] == "ok":
        print(f"final test error {100 * results['final_test_error']:.2f}% (best "
              f"{100 * results['best_test_error']:.2f}%) after {results['steps']} steps; results in "
              f"{flags.FLAGS.workdir}/results.json")


def _reason(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"


if __name__ == "__main__":
    cli.run(main)

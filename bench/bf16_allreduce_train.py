"""Does a bfloat16 all-reduce of the conv weight gradients change training? Emulated on CPU devices.

Why: in the default sharded step XLA's GPU compiler sums each conv's weight gradient across
devices in bfloat16 (BENCHMARKS.md, "bf16 gradient sums"); `bench/bf16_grad_sum_check.py` measured
what that does to one gradient, not to a run. A CPU's XLA sums in float32, so this trains a config
(the quick start by default, in bfloat16 as the experiments train on a GPU) with
config.explicit_data_parallel on N fake CPU devices through `train.train_and_evaluate`, three
times from the same seed and data order:

- `float32`: the step's own float32 all-reduce (`jax.lax.pmean` in `step.train_step`);
- `bf16_ring`: the same, except that each conv kernel's gradient (leaves of 4 and more dimensions)
  is rounded to bfloat16 on each device and summed around a ring of bfloat16 adds, N - 1 in
  sequence (`ring_mean`; the `sharded` path of bf16_grad_sum_check, every device getting device 0's
  sum). BN parameters, the classifier and the statistics keep the float32 mean.
- `f32_ring`: the same ring in float32, the control: it differs from `float32` only in the order
  of float32 adds, so its distance from that run is what training makes of last-bit differences
  (SGD amplifies any perturbation), against which `bf16_ring`'s is read.

One JSON line per run: the final and best test error, the mean train loss of the last
`--tail` logged steps, and the final parameters' relative L2 distance from the float32 run's
(`params_apart`). The test batches are padded to a multiple of N (masked, so every example counts
once). For
scale, `--seed_baseline` adds a float32 run from seed 1 (the distance two seeds put between runs).

    python bench/bf16_allreduce_train.py [--config=experiments/quickstart.py] [--devices=8,32]
        [--seed_baseline] [--config.model.depth=8 ...]

Each device count runs in a process of its own (XLA fixes the CPU device count when it starts),
with the same flags.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ring_mean(x, axis_name: str, devices: int, dtype="bfloat16"):
    """The mean over `axis_name` of `x` rounded to `dtype` and summed in a ring of `dtype` adds, as
    float32. Device d ends with ((x[d-N+1] + x[d-N+2]) + ...) + x[d], each add rounded; all take
    device 0's, whose order is shares 1, 2, ..., N-1, 0."""
    import jax
    import jax.numpy as jnp

    share = x.astype(dtype)
    acc = share
    perm = [(i, (i + 1) % devices) for i in range(devices)]
    for _ in range(devices - 1):
        acc = (jax.lax.ppermute(acc, axis_name, perm).astype(jnp.float32) + share.astype(jnp.float32)).astype(dtype)
    mine = jnp.where(jax.lax.axis_index(axis_name) == 0, acc.astype(jnp.float32), 0.0)
    return jax.lax.psum(mine, axis_name) / devices


def ring_pmean(devices: int, dtype: str):
    """A stand-in for `jax.lax.pmean` in `step.train_step`'s one call, pmean((grads, batch_stats,
    loss, error)): the conv kernels' gradients through `ring_mean` in `dtype`, the rest as before.
    The kernels go round the ring as one vector (rounding is per value, so the sums are those of
    a ring per kernel): one chain of N - 1 transfers a step, not one per kernel, which 64 CPU
    devices on 2 cores could not keep within XLA's 40 s rendezvous timeout."""
    import jax
    import jax.numpy as jnp

    real = jax.lax.pmean

    def pmean(tree, axis_name):
        grads, *rest = tree
        leaves, treedef = jax.tree.flatten(grads)
        conv = [i for i, g in enumerate(leaves) if g.ndim >= 4]
        summed = ring_mean(jnp.concatenate([leaves[i].ravel() for i in conv]), axis_name, devices, dtype)
        out = list(real([g for i, g in enumerate(leaves) if i not in conv], axis_name))
        offset = 0
        for i in conv:
            out.insert(i, summed[offset:offset + leaves[i].size].reshape(leaves[i].shape))
            offset += leaves[i].size
        return (jax.tree.unflatten(treedef, out), *real(tuple(rest), axis_name))

    return pmean


def run_one(devices: int, flag_config, tail: int, seed_baseline: bool) -> None:
    """This process's runs, on its `devices` CPU devices, of the --config it was given."""
    import jax

    from resnet_v2_jax import train

    assert jax.device_count() == devices, jax.devices()
    runs = [("float32", 0), ("bf16_ring", 0), ("f32_ring", 0)] + ([("float32", 1)] if seed_baseline else [])
    reference = None
    for sums, seed in runs:
        config = copy.deepcopy(flag_config)
        config.model.dtype, config.explicit_data_parallel, config.seed = "bfloat16", True, seed
        config.compilation_cache_dir = "off"
        # every device its share of each test batch; the masks count the padded last one exactly
        config.eval_batch_size = -(-config.eval_batch_size // devices) * devices
        with tempfile.TemporaryDirectory() as workdir:
            t = time.time()
            patch = None if sums == "float32" else mock.patch.object(
                jax.lax, "pmean", ring_pmean(devices, {"bf16_ring": "bfloat16", "f32_ring": "float32"}[sums]))
            if patch:
                patch.start()
            try:  # the run's progress lines to stderr: stdout is the JSON lines
                with contextlib.redirect_stdout(sys.stderr):
                    results = train.train_and_evaluate(config, workdir)
            finally:
                if patch:
                    patch.stop()
            records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
            losses = [r["loss"] for r in records if r["split"] == "train"]
            params = _final_params(workdir, results["steps"])
        line = {"devices": devices, "sums": sums, "seed": seed, "final_test_error": results["final_test_error"],
                "best_test_error": results["best_test_error"], "steps": results["steps"],
                "eval_batch_size": config.eval_batch_size,
                "tail_train_loss": float(np.mean(losses[-tail:])), "tail": min(tail, len(losses)),
                "seconds": round(time.time() - t, 1)}
        if reference is None:
            reference = params
        else:
            line["params_apart"] = float(np.linalg.norm(params - reference) / np.linalg.norm(reference))
        print(json.dumps(line | {"experiment": config.experiment, "depth": config.model.depth,
                                 "batch": config.batch_size, "jax": jax.__version__}), flush=True)


def _final_params(workdir: str, step: int) -> np.ndarray:
    """The saved parameters at `step`, one float64 vector. Shapes from the checkpoint's metadata: the
    project's restore path (`Checkpointer.restore_latest`) needs the abstract state, whose stem
    depends on the dataset's channels, which only the input pipeline knows."""
    import jax
    import orbax.checkpoint as ocp

    path = Path(workdir, "checkpoints", str(step), "state").resolve()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              checkpointer.metadata(path).item_metadata)
        state = checkpointer.restore(path, target)
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(state["params"])])


def main(argv) -> int:
    from absl import flags

    f = flags.FLAGS
    if f.child:
        run_one(f.child, f.config, f.tail, f.seed_baseline)
        return 0
    passed = [a for a in sys.argv[1:] if not a.startswith("--devices")]  # --config, its overrides, the rest
    for devices in map(int, f.devices.split(",")):
        env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=(
            os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip())
        r = subprocess.run([sys.executable, __file__, *passed, f"--child={devices}"], env=env, stdout=subprocess.PIPE,
                           text=True)
        sys.stdout.write(r.stdout)
        if r.returncode:
            print(json.dumps({"devices": devices, "failed": r.returncode}), flush=True)
            return r.returncode
    return 0


if __name__ == "__main__":
    from absl import app, flags

    from resnet_v2_jax import cli

    cli.define_config_flag()
    flags.FLAGS.set_default("config", str(ROOT / "experiments" / "quickstart.py"))
    flags.DEFINE_string("devices", "8,32", "CPU device counts, one process each.")
    flags.DEFINE_integer("tail", 4, "The mean train loss over the last TAIL logged steps.")
    flags.DEFINE_bool("seed_baseline", False, "Also a float32 run from seed 1, for scale.")
    flags.DEFINE_integer("child", 0, "(internal) this process's device count: run, do not spawn.")
    app.run(main)

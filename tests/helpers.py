"""Helpers several test modules share (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import os
import socket
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np


def random_fill(shapes, seed=0):
    """Random values for abstract variables, drawn with numpy (no jax.random compile on CPU).

    Kernels He fan-in normal (activations stay O(1)); BN gamma/beta and running statistics random
    too, so every op's place shows in the values.
    """
    rng = np.random.default_rng(seed)

    def fill(path, s):
        name = path[-1].key
        if name == "kernel":
            fan_in = np.prod(s.shape[-4:-1]) if s.ndim >= 4 else s.shape[-2]
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), s.shape)
        elif name in ("scale", "var"):
            v = rng.uniform(0.5, 1.5, s.shape)
        elif name in ("bias", "mean"):
            v = rng.normal(0.0, 0.3, s.shape)
        else:
            raise AssertionError(f"unexpected variable {path}")
        return jnp.asarray(v, s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes)


def fake_prepared(name, data_dir, sizes):
    """Writes the split metadata TFDS reads for a prepared dataset; `mock_data` supplies records."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    builder.info.set_splits(tfds.core.SplitDict(
        [tfds.core.SplitInfo(name=k, shard_lengths=[n], num_bytes=0) for k, n in sizes.items()]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)


class _RealFs:
    """Stands in for tfds' MockFs inside `mock_data`: the data_dir is real (fake_prepared), so no fake
    file system is needed. MockFs patches file access process-wide while it is open, and the
    pipeline opens the next epoch (`as_dataset`) in a background thread, so a builder made meanwhile
    in the main thread read its labels file through the fake one and failed (once, 2026-11-27)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_file(self, path, content=None):
        pass


@contextlib.contextmanager
def mock_data(data_dir, num_examples):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.testing import mocking

    with tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_FILES,
                                data_dir=data_dir), mock.patch.object(mocking.test_utils, "MockFs", _RealFs):
        yield


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_loss_step(model):
    """(jit value_and_grad of a training-mode loss over params, params) for `model` on 4 random 8x8
    images: the tests that compare two ways of compiling a network's step."""
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 3))
    variables = jax.jit(model.init, static_argnames="train")(jax.random.PRNGKey(1), x, train=False)

    def loss(params):
        out, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x, train=True,
                             mutable=["batch_stats"])
        return jnp.sum(out.astype(jnp.float32) ** 2)

    return jax.jit(jax.value_and_grad(loss)), variables["params"]


MULTI_DEVICE_STEP = """
import json, sys
import jax
import numpy as np
from resnet_v2_jax import column_sums, layers
from resnet_v2_jax import config as config_lib
from resnet_v2_jax import step as step_lib

lever, block, depth = sys.argv[1], sys.argv[2], int(sys.argv[3])
column_sums.PLATFORMS.add("cpu")  # the Pallas kernel under Pallas's interpreter
layers.GEMM_FUSION_PLATFORMS.add("cpu")  # the fused products' arithmetic, as plain products
mesh = step_lib.make_mesh()
out = {}
for group in (0, 4, 1):  # the batch one group; 2 groups, each over 2 devices; 8 groups, 2 a device
    results = []
    for on in (False, True):
        c = config_lib.default()
        c.dataset, c.image_size, c.batch_size = "synthetic", 8, 8
        c.model.depth, c.model.block, c.model.width = depth, block, 0.25
        c.model[lever], c.bn_group_size = on, group
        config_lib.validate(c, num_devices=mesh.size)
        task = step_lib.make_task(c, (8, 8, 3))
        train_fn, _ = step_lib.compile_steps(task, mesh)
        state = step_lib.init_state(task, 0, mesh)
        batch = step_lib.synthetic_batch(task, mesh, c.batch_size)
        jaxpr = str(train_fn.trace(state, batch, None).jaxpr)
        state, metrics = train_fn(state, batch, None)
        results.append((jaxpr.count("pallas_call"), jaxpr.count("shard_map"), float(metrics["loss"]),
                        [np.asarray(x) for x in jax.tree.leaves((state.params, state.batch_stats))]))
    (_, maps_off, loss_off, leaves_off), (kernels, maps, loss_on, leaves_on) = results
    assert maps_off == 0, maps_off
    diff = max(float(np.max(np.abs(a - b)) / np.max(np.abs(a))) for a, b in zip(leaves_off, leaves_on))
    out[group] = {"kernels": kernels, "shard_maps": maps, "losses": [loss_off, loss_on], "max_rel_diff": diff}
print(json.dumps(out))
"""


def multi_device_step(lever: str, block: str, depth: int) -> dict:
    """One train step on 4 CPU devices of a `block` network of `depth` layers with model.`lever` off
    and on, for three ways the BN groups lie across the devices (bn_group_size 0, 4 and 1 of a batch
    of 8): {group: kernels (Pallas calls traced), shard_maps, the two losses, and the largest
    difference between the updated parameters and statistics, relative to each leaf's largest value}."""
    import json
    import subprocess
    import sys

    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-c", MULTI_DEVICE_STEP, lever, block, str(depth)], env=env,
                       capture_output=True, text=True, timeout=600,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])

"""Helpers several test modules share (imported as `helpers`: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np

# XLA flags every test process compiles with (conftest.py puts them in $XLA_FLAGS; `xla_flags` adds
# them to a child's). LLVM at -O1 instead of -O2 on the host: compiling dominates the suite (each
# test compiles tiny programs and runs them a few steps), and jax.random's threefry is what -O2 is
# slow on: a depth-8 net's init compiled in 4.5-9 s at -O2 and in 1.0 s at -O1, to the same bits
# (2026-11-28, this 2-core CPU). The suite went from 795-816 s to 536-625 s here. Float results may move
# in the last bits (the quick start's steps do), so tests compare paths within these flags, and
# the product's own runs keep XLA's default.
TEST_XLA_FLAGS = "--xla_backend_optimization_level=1"


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_file(relative_path: str, name: str | None = None):
    """A module of the repository that is not in the package (experiments/X.py, bench/X.py), imported
    from its path as `name` (by default its file name)."""
    name = name or os.path.splitext(os.path.basename(relative_path))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, relative_path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xla_flags(devices: int | None = None) -> str:
    """$XLA_FLAGS for a child process of the tests, with `devices` fake CPU devices."""
    return (f"--xla_force_host_platform_device_count={devices} " if devices else "") + TEST_XLA_FLAGS


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


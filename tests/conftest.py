"""Shared fixtures. Keep each one small and clearly named: several test modules use this file."""

from __future__ import annotations

import os
import tempfile

import pytest
from helpers import TEST_XLA_FLAGS

# Before any test starts JAX's backends, which read $XLA_FLAGS once (see helpers.TEST_XLA_FLAGS).
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {TEST_XLA_FLAGS}".strip()

# Runs turn on JAX's persistent compilation cache (config.compilation_cache_dir, default under
# ~/.cache). Tests keep it in a temporary dir of their own, shared by the session's processes
# (they inherit the environment), so nothing is written to the home dir.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="resnet_v2_jax_xla_cache_"))


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A TFDS data dir for the session; the digits dataset is prepared there on first use (~1 s)."""
    return str(tmp_path_factory.mktemp("tfds_digits"))

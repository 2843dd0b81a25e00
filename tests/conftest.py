"""Shared fixtures. Keep each one small and clearly named: several test modules use this file."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A TFDS data dir for the session; the digits dataset is prepared there on first use (~1 s)."""
    return str(tmp_path_factory.mktemp("tfds_digits"))

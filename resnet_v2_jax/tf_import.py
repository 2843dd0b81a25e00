"""TensorFlow and TFDS for the data pipeline, imported without TensorFlow's start-up notices.

TensorFlow's C++ side logs "oneDNN custom operations are on ..." (twice, one per library, each
after absl's "All log messages before absl::InitializeLog() is called ...") while it loads, before
its logging reads TF_CPP_MIN_LOG_LEVEL, so every run that reads data began with four lines of
noise, also right before a one-line `error:` about a missing dataset. The import runs with
file descriptor 2 captured; whatever else it wrote is written back, so nothing else is lost.

TensorFlow only feeds data here: it never sees the accelerators, which belong to JAX.
"""

from __future__ import annotations

import importlib
import os
import sys
import tempfile

NOISE = ("oneDNN custom operations are on", "All log messages before absl::InitializeLog() is called")


def quiet_import(name: str):
    """`importlib.import_module(name)` with the NOISE lines it writes to file descriptor 2 dropped."""
    if name in sys.modules:
        return sys.modules[name]
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            module = importlib.import_module(name)
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                    if not any(n in line for n in NOISE)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()
    return module


tf = quiet_import("tensorflow")
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # TF's devices were already initialised by someone else; too late to hide.
    pass

import tensorflow_datasets as tfds  # noqa: E402  (after TensorFlow's quiet import, which it would repeat)

__all__ = ["tf", "tfds"]

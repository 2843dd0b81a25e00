"""`notebooks/explore.ipynb` runs top to bottom offline, and the facts its probes rest on.

The notebook runs in its small setting (`EXPLORE_SMALL=1`) with a fresh `TFDS_DATA_DIR`, so the
digits are prepared offline from scikit-learn; it is executed once per session by nbclient in a
`python3` kernel with `notebooks/` as its working directory, as Jupyter or Colab would.
The probes of `resnet_v2_jax.explore` are checked on small CIFAR nets (8x8 inputs).
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import explore

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "explore.ipynb"


def small_config(unit="full_preact", block="basic", depth=20, **model):
    c = explore.variant_config(unit, "identity", block, depth)
    c.image_size = 8
    c.model.width = 0.25
    for k, v in model.items():
        c.model[k] = v
    return c


# ----------------------------------------------------------------------------- explore.py


def test_zero_init_full_preact_passes_the_signal_unchanged():
    """Eq. 4-5 with F = 0: within a stage every unit outputs its input, and every unit after the
    first sees the same gradient (the first unit projects, so it differs)."""
    c = small_config(zero_init_last=True)  # ResNet-20: 3 units per stage
    r = explore.unit_norms(c, batch_size=4)
    assert len(r["forward"]) == len(r["backward"]) == len(r["names"]) == 9
    assert r["names"][:3] == ["stage1_unit1", "stage1_units[0]", "stage1_units[1]"]
    assert r["stage"] == [1, 1, 1, 2, 2, 2, 3, 3, 3]
    f, b = np.array(r["forward"]), np.array(r["backward"])
    for s in range(3):
        np.testing.assert_allclose(f[3 * s : 3 * s + 3], f[3 * s], rtol=1e-5)
        np.testing.assert_allclose(b[3 * s + 1 : 3 * s + 3], b[3 * s + 1], rtol=1e-5)
        # ... and the last unit of a stage passes its gradient on to the next stage's first unit.
        if s < 2:
            np.testing.assert_allclose(b[3 * s + 2], b[3 * s + 3], rtol=1e-5)
    assert np.all(f > 0) and np.all(b > 0) and np.isfinite(r["loss"])


def test_probes_do_not_depend_on_scan_and_see_every_unit():
    """The same numbers with the stage scanned or unrolled; one entry per unit in network order."""
    c = small_config(unit="original", depth=20)  # 3 units per stage
    scanned = explore.unit_norms(c, batch_size=4)
    c.model.scan = False
    unrolled = explore.unit_norms(c, batch_size=4)
    assert scanned["names"] == unrolled["names"]
    _, stages = config_lib.stage_units(c.model)
    assert len(scanned["forward"]) == sum(stages) == 9
    np.testing.assert_allclose(scanned["forward"], unrolled["forward"], rtol=1e-4)
    np.testing.assert_allclose(scanned["backward"], unrolled["backward"], rtol=1e-4)
    # Without zero-init the units differ: the probe reads each one, not one unit repeated.
    assert len(set(np.round(scanned["forward"], 6))) > 3


def test_unit_table_covers_every_variant():
    rows = explore.unit_table(blocks=("basic",), depths={"basic": 20})
    assert len(rows) == len(config_lib.UNITS) * len(config_lib.SHORTCUTS)
    by = {(r["unit"], r["shortcut"]): r for r in rows}
    # Only the weighted shortcuts add parameters (gating: 1x1 conv + bias; conv1x1 on every unit).
    base = by["full_preact", "identity"]["params"]
    assert by["full_preact", "constant_scaling"]["params"] == by["full_preact", "dropout"]["params"] == base
    assert by["full_preact", "exclusive_gating"]["params"] > by["full_preact", "conv1x1"]["params"] > base
    text = explore.format_unit_table(rows)
    assert "full_preact" in text and "shortcut_only_gating" in text


# ----------------------------------------------------------------------------- the notebook


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    tmp = tmp_path_factory.mktemp("explore")
    env = {"EXPLORE_SMALL": "1", "TFDS_DATA_DIR": str(tmp / "tfds"), "EXPLORE_WORKDIR": str(tmp / "workdir"),
           "JAX_PLATFORMS": "cpu", "MPLBACKEND": "module://matplotlib_inline.backend_inline"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                         resources={"metadata": {"path": str(NOTEBOOK.parent)}})
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb, tmp


def _stdout(cell) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream"
                   and o.get("name") == "stdout")


def _images(cell) -> int:
    return sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))


def test_notebook_runs_offline_and_shows_each_section(executed):
    nb, tmp = executed
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    text = "\n".join(_stdout(c) for c in code)
    assert "SMALL settings" in text
    # a. the unit table
    assert "full_preact" in text and "exclusive_gating" in text and "variants built" in text
    # b. the probes: both units at the small depth (one, to keep the test short), and its plot
    for unit in ("original", "full_preact"):
        assert f"{unit:12s} ResNet-56 " in text
    assert text.count("  18 units") == 2
    probe_plots = [c for c in code if "plot_unit_norms" in c.source]
    assert probe_plots and _images(probe_plots[0]) == 1
    # c. training wrote a complete workdir
    assert "status ok" in text
    for name in ("config.json", "metrics.jsonl", "results.json", "checkpoints"):
        assert (tmp / "workdir" / name).exists(), name
    # d. the restored checkpoint was evaluated on the 360 test digits
    assert "restored step 30" in text and "over 360 digits" in text
    # e. curves and the final table; the last cell prints the restored test accuracy
    assert _images(code[-1]) == 1 and "quickstart" in _stdout(code[-1])
    last = _stdout(code[-1])
    assert "test accuracy" in last
    accuracy = float(last.split("test accuracy")[1].split("%")[0])
    assert 10.0 < accuracy <= 100.0

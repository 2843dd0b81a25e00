"""A bad model config fails before tracing, with a one-line message naming the field and the choices."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import networks

ROOT = Path(__file__).resolve().parents[1]


def model(**overrides):
    m = config_lib.default().model
    for k, v in overrides.items():
        m[k] = v
    return m


def build_error(**overrides) -> str:
    with pytest.raises(ValueError) as e:
        networks.build(model(**overrides))
    message = str(e.value)
    assert "\n" not in message
    return message


def test_the_default_builds():
    assert networks.build(model()).stage_sizes == (18, 18, 18)


def test_unknown_unit_names_the_field_and_the_choices():
    message = build_error(unit="preact")
    assert "model.unit" in message and "'preact'" in message
    for choice in config_lib.UNITS:
        assert choice in message


def test_unknown_shortcut_names_the_field_and_the_choices():
    message = build_error(shortcut="gated")
    assert "model.shortcut" in message and "'gated'" in message
    for choice in config_lib.SHORTCUTS:
        assert choice in message


@pytest.mark.parametrize("field,value", [("shortcut_type", "D"), ("stride_on", "5x5"), ("dtype", "float16"),
                                         ("remat_policy", "all"), ("block", "wide"), ("family", "svhn")])
def test_other_unknown_choices(field, value):
    message = build_error(**{field: value})
    assert f"model.{field}" in message and repr(value) in message and "choose one of" in message


@pytest.mark.parametrize("depth,block,form", [(1000, "bottleneck", "9n+2"), (21, "basic", "6n+2"),
                                              (2, "basic", "6n+2"), (165, "bottleneck", "9n+2"),
                                              (111, "single", "3n+2")])
def test_cifar_depth_must_fit_the_unit_form(depth, block, form):
    message = build_error(family="cifar", depth=depth, block=block)
    assert "model.depth" in message and str(depth) in message and form in message


@pytest.mark.parametrize("depth,block", [(110, "basic"), (110, "bottleneck"), (164, "basic"),
                                         (164, "bottleneck"), (1001, "bottleneck"), (1202, "basic")])
def test_cifar_depths_that_fit_build(depth, block):
    layers = {"basic": 2, "bottleneck": 3}[block]
    n = (depth - 2) // (3 * layers)
    assert networks.build(model(depth=depth, block=block)).stage_sizes == (n, n, n)


def test_imagenet_depth_must_be_in_the_table():
    message = build_error(family="imagenet", depth=77, block="bottleneck")
    assert "model.depth" in message and "77" in message
    for depth in (18, 34, 50, 101, 152, 200):
        assert str(depth) in message


@pytest.mark.parametrize("width", [0, 0.0, -1.0])
def test_width_must_be_positive(width):
    message = build_error(width=width)
    assert "model.width" in message and "positive" in message


def test_bottleneck_block_with_imagenet_18_is_rejected():
    message = build_error(family="imagenet", depth=18, block="bottleneck")
    assert "model.block" in message and "'bottleneck'" in message and "'basic'" in message


def test_basic_block_with_imagenet_50_is_rejected():
    message = build_error(family="imagenet", depth=50, block="basic")
    assert "model.block" in message and "'bottleneck'" in message


def test_shortcut_dropout_must_be_a_rate():
    assert "model.shortcut_dropout" in build_error(shortcut_dropout=1.0)


# ---------------------------------------------------------------------------------------------
# The summary CLI.


def summary_cli(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "resnet_v2_jax.summary", "--config=experiments/cifar10_resnet164.py", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_cli_bad_unit_is_one_line_and_exit_2():
    r = summary_cli("--config.model.unit=foo")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "model.unit" in lines[0] and "full_preact" in lines[0] and "foo" in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_cli_unknown_override_names_the_field_and_exits_2():
    r = summary_cli("--config.model.foo=1")
    assert r.returncode == 2, r.stderr
    assert "foo" in r.stderr and "Traceback" not in r.stderr
    assert r.stdout == ""


def test_cli_json_is_one_object_with_the_paper_count():
    r = summary_cli("--json")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1
    s = json.loads(lines[0])
    assert {"params", "macs", "depth", "unit", "shortcut", "stages"} <= set(s)
    assert s["params"] == 1703258 and round(s["params"] / 1e6, 2) == 1.70
    assert s["depth"] == 164 and s["unit"] == "full_preact" and s["shortcut"] == "identity"
    assert abs(s["macs"] - 248e6) / 248e6 < 0.02
    assert s["stages"] == {"stage1": [32, 32, 64], "stage2": [16, 16, 128], "stage3": [8, 8, 256]}


def test_summary_and_networks_do_not_import_tensorflow():
    code = "import sys, resnet_v2_jax.summary, resnet_v2_jax.networks; assert 'tensorflow' not in sys.modules"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       check=False)
    assert r.returncode == 0, r.stderr

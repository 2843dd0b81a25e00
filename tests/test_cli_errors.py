"""Bad input to `python -m resnet_v2_jax.main`: one `error:` line on stderr naming the field or
file and what is valid, exit code 2, nothing written to the workdir, and before any compilation
(each case returns in seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config=experiments/quickstart.py", "--config.model.depth=8", "--config.model.width=0.25",
        "--config.batch_size=16", "--config.eval_batch_size=120", "--config.num_train_steps=20"]


def run_main(args, tmp_path, extra_env=None, timeout=120):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": str(tmp_path / "tfds")}
    env.update(extra_env or {})
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "resnet_v2_jax.main", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=timeout, check=False)
    return r, time.time() - t


def assert_usage_error(r, elapsed, workdir: Path, *needles, limit_s=25):
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert len(errors) == 1, r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not workdir.exists() or not any(workdir.iterdir()), sorted(workdir.rglob("*"))
    assert elapsed < limit_s, f"took {elapsed:.1f}s: something was built or compiled first"
    return errors[0]


CASES = {
    "dataset": (["--config.dataset=mnist"], ["dataset='mnist'", "cifar10", "imagenet2012"]),
    "unit": (["--config.model.unit=preact"], ["model.unit='preact'", "full_preact"]),
    "shortcut": (["--config.model.shortcut=gated"], ["model.shortcut='gated'", "exclusive_gating"]),
    "schedule": (["--config.schedule=linear"], ["schedule='linear'", "cosine"]),
    "optimizer": (["--config.optimizer=adam"], ["optimizer='adam'", "sgd"]),
    "cifar_depth": (["--config.model.depth=21"], ["model.depth=21", "6n+2"]),
    "imagenet_depth": (["--config.model.family=imagenet", "--config.model.depth=42"],
                       ["model.depth=42", "ImageNet", "50"]),
    "lr_zero": (["--config.learning_rate=0"], ["learning_rate=0", "positive"]),
    "lr_negative": (["--config.learning_rate=-0.1"], ["learning_rate=-0.1", "positive"]),
    "steps": (["--config.num_train_steps=0"], ["num_train_steps=0", "positive"]),
    "batch": (["--config.batch_size=0"], ["batch_size=0", "positive"]),
    "unknown_override": (["--config.modle.depth=8"],
                         ["error: unknown config field 'modle' in --config.modle.depth (did you mean \"model\"?); "]),
    "unknown_nested_override": (["--config.model.dpth=8"],
                                ["error: unknown config field 'dpth' in --config.model.dpth (did you mean \"depth\"?); "]),
    # XLA itself would abort with a C++ fatal error, after JAX started
    "xla_flags": (["--config.xla_flags=gpu_enable_command_buffer="], ["xla_flags=", "not an XLA flag"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_config_field(case, tmp_path):
    args, needles = CASES[case]
    workdir = tmp_path / "work"
    r, elapsed = run_main([*TINY, *args, f"--workdir={workdir}"], tmp_path)
    assert_usage_error(r, elapsed, workdir, *needles, limit_s=15)


def test_missing_config_file(tmp_path):
    workdir = tmp_path / "work"
    r, elapsed = run_main(["--config=experiments/no_such_file.py", f"--workdir={workdir}"], tmp_path)
    assert_usage_error(r, elapsed, workdir, "no_such_file.py", "--config", limit_s=15)


def test_missing_config_flag(tmp_path):
    workdir = tmp_path / "work"
    r, elapsed = run_main([f"--workdir={workdir}"], tmp_path)
    assert_usage_error(r, elapsed, workdir, "--config is required", limit_s=15)


def test_missing_workdir(tmp_path):
    r, elapsed = run_main(TINY, tmp_path)
    assert_usage_error(r, elapsed, tmp_path / "none", "--workdir is required", limit_s=15)


def test_batch_not_divisible_by_devices(tmp_path):
    workdir = tmp_path / "work"
    r, elapsed = run_main([*TINY, f"--workdir={workdir}"], tmp_path,
                          {"XLA_FLAGS": "--xla_force_host_platform_device_count=3"})
    assert_usage_error(r, elapsed, workdir, "batch_size=16", "3 devices", "multiple of 3")


@pytest.mark.parametrize("group, ok", [(0, True), (2, True), (4, True), (8, True), (64, True), (3, False), (6, False)])
def test_bn_groups_may_span_whole_devices_or_exceed_the_batch(group, ok):
    """Batch 8 on 4 devices (2 each): a group of 2 is one device's, 4 and 8 are whole devices' (XLA
    sums across them), 64 is the whole batch; 3 splits a device's examples, 6 does not divide the batch."""
    from resnet_v2_jax import config as config_lib

    c = config_lib.default()
    c.batch_size, c.eval_batch_size, c.bn_group_size = 8, 8, group
    if ok:
        config_lib.validate(c, num_devices=4)
    else:
        with pytest.raises(ValueError, match=f"bn_group_size={group} does not divide the per-device batch 2"):
            config_lib.validate(c, num_devices=4)


def test_bn_group_size_not_dividing_per_device_batch(tmp_path):
    workdir = tmp_path / "work"
    r, elapsed = run_main([*TINY, "--config.bn_group_size=5", f"--workdir={workdir}"], tmp_path,
                          {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert_usage_error(r, elapsed, workdir, "bn_group_size=5", "per-device batch 8")


def test_missing_imagenet_names_the_preparation_steps(tmp_path):
    workdir = tmp_path / "work"
    empty = tmp_path / "empty_data"
    empty.mkdir()
    r, elapsed = run_main(["--config=experiments/imagenet_resnet50.py", f"--config.data_dir={empty}",
                           f"--workdir={workdir}"], tmp_path, timeout=180)
    line = assert_usage_error(r, elapsed, workdir, "imagenet2012", "manual", "tfds build", limit_s=60)
    assert str(empty) in line


def test_unwritable_workdir_is_refused_at_start(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    workdir = blocker / "work"  # a path under a regular file: not creatable, even as root
    r, elapsed = run_main([*TINY, "--config.dataset=synthetic", "--config.image_size=8",
                           f"--workdir={workdir}"], tmp_path)
    assert_usage_error(r, elapsed, workdir, "not writable", str(workdir), limit_s=30)
    assert blocker.read_text() == "not a directory"


def test_a_data_dir_it_cannot_write_is_refused_before_the_workdir(tmp_path):
    """config.data_dir where the digits cannot be prepared (here under a file): one line, not TFDS's
    traceback, and the workdir untouched."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    workdir = tmp_path / "work"
    r, elapsed = run_main([*TINY, f"--config.data_dir={blocker / 'tfds'}", f"--workdir={workdir}"], tmp_path)
    assert_usage_error(r, elapsed, workdir, f"cannot prepare digits in the TFDS data dir {blocker / 'tfds'} "
                       "(NotADirectoryError: Not a directory); set config.data_dir")

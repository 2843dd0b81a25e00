"""Facts about the training system: full runs on TFDS mock data and the real digits, equality
across device and process counts, BN groups, resuming (checkpoint and SIGTERM), config overrides
reaching the model, the learning-rate schedules and the optimizer.

Multi-device and multi-process runs happen in subprocesses (the device count is fixed once JAX
starts); single-device runs happen in this process. Networks are tiny (CIFAR family depth 8,
width 0.25) so compile time, not training, dominates.
"""

from __future__ import annotations

import configparser
import json
import logging
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fake_prepared, free_port, mock_data, xla_flags

from resnet_v2_jax import checkpoint as ckpt_lib
from resnet_v2_jax import config as config_lib
from resnet_v2_jax import networks, optim, summary, train
from resnet_v2_jax import step as step_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "experiments", "quickstart.py")

# The tiny digits network every subprocess run uses, as main's --config overrides.
TINY = {
    "model.depth": 8,
    "model.width": 0.25,
    "batch_size": 16,
    "eval_batch_size": 120,
    "log_every_steps": 1,
    "eval_every_steps": 1000,
    "checkpoint_every_steps": 1000,
}
RESULT_FIELDS = {"status", "message", "final_test_error", "final_test_top5_error", "best_test_error", "steps",
                 "train_seconds", "images_per_second", "paper_error", "config"}


# ----------------------------------------------------------------------------- helpers


def quickstart_config(data_dir, **overrides):
    """experiments/quickstart.py with `overrides` ({'a.b': v}), as main's --config.a.b=v would set them."""
    sys.path.insert(0, os.path.dirname(QUICKSTART))
    try:
        import quickstart  # noqa: PLC0415
    finally:
        sys.path.pop(0)
    config = quickstart.get_config()
    config.data_dir = data_dir
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = value
    return config


def child_env(devices: int = 1) -> dict:
    env = dict(os.environ)
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
               XLA_FLAGS=xla_flags(devices))
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def main_args(workdir, data_dir, **overrides) -> list[str]:
    flags = {**TINY, **overrides}
    return [f"--config={QUICKSTART}", f"--workdir={workdir}", f"--config.data_dir={data_dir}",
            *(f"--config.{k}={v}" for k, v in flags.items())]


def run_main(workdir, data_dir, devices=1, **overrides) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "resnet_v2_jax.main", *main_args(workdir, data_dir, **overrides)]
    return subprocess.Popen(cmd, cwd=REPO, env=child_env(devices), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout=240) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.terminate()  # local.sh stops its processes on SIGTERM
        out, _ = proc.communicate(timeout=30)
        pytest.fail(f"{proc.args[:3]} did not finish within {timeout} s; output:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return out


def read_metrics(workdir, split="train") -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return [m for m in lines if split is None or m["split"] == split]


def restore_state(workdir, config):
    """(state, step) of the newest checkpoint in `workdir`, restored onto this process's devices."""
    task = step_lib.make_task(config, train.image_shape(config) if config.dataset != "digits" else (8, 8, 1))
    mesh = step_lib.make_mesh()
    abstract = ckpt_lib.abstract_with_sharding(step_lib.abstract_state(task, config.seed),
                                               step_lib.replicated(mesh))
    checkpointer = ckpt_lib.Checkpointer(workdir, config)
    try:
        return checkpointer.restore_latest(abstract)
    finally:
        checkpointer.close()


def num_params(tree) -> int:
    return int(sum(np.size(a) for a in jax.tree.leaves(tree)))


class EvalCounts:
    """Wraps train.evaluate to record how many test examples each evaluation counted."""

    def __init__(self, monkeypatch):
        self.counts = []
        original = train.evaluate

        def evaluate(*args, **kwargs):
            out = original(*args, **kwargs)
            self.counts.append(int(out["count"]))
            return out

        monkeypatch.setattr(train, "evaluate", evaluate)


@pytest.fixture(scope="module")
def digits_dir(digits_data_dir):
    """The session's data dir with digits prepared, before several processes read it at once."""
    from resnet_v2_jax import digits

    builder = digits.Digits(data_dir=digits_data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return digits_data_dir


# ----------------------------------------------------------------------------- TFDS mock data


def assert_results(results, workdir, steps):
    on_disk = json.loads(open(os.path.join(workdir, "results.json")).read())
    assert set(on_disk) >= RESULT_FIELDS and on_disk == json.loads(json.dumps(results))
    assert on_disk["status"] == "ok" and on_disk["message"] == ""
    assert on_disk["steps"] == steps
    assert 0.0 <= on_disk["final_test_error"] <= 1.0 and 0.0 <= on_disk["final_test_top5_error"] <= 1.0
    assert on_disk["best_test_error"] <= on_disk["final_test_error"]
    assert on_disk["train_seconds"] > 0 and on_disk["images_per_second"] > 0
    for name in ("config.json", "metrics.jsonl", "tb"):
        assert os.path.exists(os.path.join(workdir, name)), name
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(steps)]
    train_lines = read_metrics(workdir, "train")
    assert [m["step"] for m in train_lines] == list(range(1, steps + 1))
    assert all({"loss", "error", "grad_norm", "learning_rate"} <= set(m) for m in train_lines)
    # The wait for each batch is timed inside the step's wall-clock window, so it can't exceed it.
    assert all(0 < m["input_ms"] <= 1e3 * m["step_time_s"] for m in train_lines)
    tests = read_metrics(workdir, "test")
    assert [m["step"] for m in tests] == [steps]
    assert tests[0]["error"] == pytest.approx(on_disk["final_test_error"])
    return on_disk


def test_cifar10_mock_data_trains_and_evaluates_every_test_example_once(tmp_path, monkeypatch):
    data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    fake_prepared("cifar10", data_dir, {"train": 40, "test": 40})
    config = config_lib.default()
    config.dataset, config.data_dir = "cifar10", data_dir
    config.model.depth, config.model.block, config.model.width = 8, "basic", 0.25
    config.batch_size, config.eval_batch_size, config.num_train_steps = 8, 16, 3  # 40 = 16 + 16 + 8 padded
    config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 1, 1000, 1000
    counts = EvalCounts(monkeypatch)
    with mock_data(data_dir, 40):
        results = train.train_and_evaluate(config, workdir)
    assert_results(results, workdir, 3)
    assert counts.counts == [40]
    assert results["config"]["dataset"] == "cifar10" and results["config"]["model"]["depth"] == 8


@pytest.mark.parametrize("imagenet_augment", ["scale", "inception"])  # inception: colour on device
def test_imagenet_mock_data_trains_and_evaluates_every_validation_example_once(tmp_path, monkeypatch,
                                                                               imagenet_augment):
    # The train crop could be smaller, but evaluation is 224 or 320 only: 224 throughout, batch 2.
    # (mock_data makes `num_examples` records per split, so the validation split holds 5 too.)
    data_dir, workdir = str(tmp_path / "tfds"), str(tmp_path / "run")
    fake_prepared("imagenet2012", data_dir, {"train": 5, "validation": 5})
    config = config_lib.default()
    config.dataset, config.data_dir = "imagenet2012", data_dir
    config.model.family, config.model.depth, config.model.block = "imagenet", 18, "basic"
    config.model.width, config.model.num_classes = 0.125, 1000
    config.batch_size, config.eval_batch_size, config.num_train_steps = 2, 4, 2  # 5 = 4 + 1 padded
    config.shuffle_buffer, config.imagenet_augment = 8, imagenet_augment
    config.log_every_steps, config.eval_every_steps, config.checkpoint_every_steps = 1, 1000, 1000
    counts = EvalCounts(monkeypatch)
    with mock_data(data_dir, 5):
        results = train.train_and_evaluate(config, workdir)
    assert_results(results, workdir, 2)
    assert counts.counts == [5]


# ----------------------------------------------------------------------------- compilation cache

CACHE_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from jax import monitoring
    from resnet_v2_jax import config as config_lib, train

    hits = []
    monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name == "/jax/compilation_cache/cache_hits" else None)
    c = config_lib.default()
    c.dataset, c.image_size, c.num_train_steps = "synthetic", 8, 2
    c.model.depth, c.model.block, c.model.width = 8, "basic", 0.25
    c.batch_size = c.eval_batch_size = 8
    c.compilation_cache_dir = sys.argv[1]
    train.train_and_evaluate(c, sys.argv[2])
    print(json.dumps({"hits": len(hits), "xla_flags": os.environ.get("XLA_FLAGS", "")}))
""")


def test_a_second_run_loads_its_steps_from_the_compilation_cache(tmp_path):
    """config.compilation_cache_dir: the first run stores the train step, a fresh process running the
    same config in another workdir loads it (JAX's cache-hit event); "off" stores nothing.

    The same runs check config.xla_flags: a CIFAR config's command-buffer flag reaches $XLA_FLAGS
    before JAX starts, and XLA accepts it on a CPU (a flag it rejects aborts the process); a value
    the user set in $XLA_FLAGS for the same flag is kept."""
    def run(cache, name, flags=xla_flags(1)):
        # Store every compile, however quick (the default is those over 1 s): a fast machine too.
        env = dict(child_env(), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", XLA_FLAGS=flags)
        p = subprocess.run([sys.executable, "-c", CACHE_SCRIPT, cache, str(tmp_path / name)], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-2000:]
        return json.loads(p.stdout.strip().splitlines()[-1])

    cache = tmp_path / "xla"
    first = run(str(cache), "first")  # a helper jit compiled twice in one run may already hit
    assert first["xla_flags"] == f"{xla_flags(1)} {config_lib.CIFAR_XLA_FLAGS}"
    stored = [f.name for f in cache.iterdir()]
    assert any(n.startswith("jit_train_step") for n in stored) and any(n.startswith("jit_eval_step") for n in stored)
    second = run(str(cache), "second")
    assert second["hits"] >= first["hits"] + 2, (first, second)  # at least the train and eval steps were loaded
    mine = "--xla_gpu_enable_command_buffer=FUSION"
    third = run("off", "third", flags=mine)  # the user's command buffers, the config's scheduling mode
    assert third["hits"] == 0 and third["xla_flags"] == config_lib.CIFAR_XLA_FLAGS.replace(config_lib.COMMAND_BUFFERS, mine)


def test_a_compilation_cache_it_cannot_write_is_one_warning_and_no_cache(tmp_path):
    """JAX would warn at every compile that it cannot write the cache: one line instead, and none."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    probe = ("import sys, jax; from resnet_v2_jax import step; "
             "print(step.use_compilation_cache(sys.argv[1]), jax.config.jax_enable_compilation_cache)")
    p = subprocess.run([sys.executable, "-c", probe, str(blocker / "xla")], cwd=REPO, env=child_env(),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout.split() == ["None", "False"], p.stderr[-2000:]
    assert [line for line in p.stderr.splitlines() if "warning" in line.lower()] == [
        f"warning: the compilation cache {blocker / 'xla'} is not writable (NotADirectoryError: Not a "
        "directory); compiling without it (set config.compilation_cache_dir)"]


def test_a_flag_older_jaxlibs_do_not_know_is_refused_with_the_version_it_needs(monkeypatch):
    """XLA aborts the process on a flag it does not know: on jaxlib 0.7.0 the CIFAR configs' concurrent
    CUDA graphs would, so validate names the jaxlib they need. setup.cfg's jax floor covers them."""
    config_lib.validate_xla_flags(config_lib.CIFAR_XLA_FLAGS)  # the installed jaxlib knows it
    monkeypatch.setattr(config_lib, "_jaxlib_version", lambda: (0, 7, 0))
    with pytest.raises(ValueError, match=r"--xla_gpu_command_buffer_scheduling_mode=CONCURRENT needs "
                                         r"jaxlib >= 0\.7\.1 \(installed: 0\.7\.0\)"):
        config_lib.validate_xla_flags(config_lib.CIFAR_XLA_FLAGS)
    config_lib.validate_xla_flags(config_lib.COMMAND_BUFFERS)  # known since before 0.6
    # setup.cfg's floor knows the concurrent graphs, so every supported jaxlib sets them.
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(REPO, "setup.cfg"))
    (floor,) = [r.split(">=")[1] for r in cfg["options"]["install_requires"].split() if r.startswith("jax>=")]
    floor = tuple(int(p) for p in floor.split("."))
    assert floor >= config_lib.XLA_FLAG_MIN_JAXLIB["--xla_gpu_command_buffer_scheduling_mode"]
    monkeypatch.setattr(config_lib, "_jaxlib_version", lambda: floor)
    assert config_lib.known_xla_flags(config_lib.COMMAND_BUFFERS, config_lib.CONCURRENT_GRAPHS) == (
        f"{config_lib.COMMAND_BUFFERS} {config_lib.CONCURRENT_GRAPHS}")


def test_update_free_graphs_are_set_only_where_the_jaxlib_knows_the_value(monkeypatch):
    """The update mode's value SKIP_PROFILED is newer than its flag: jaxlib 0.10.2's XLA aborts on it
    (tried here, 2026-11-27), 0.11.2's takes it (the H200), so the CIFAR flags add it from 0.11.2 on
    and validate refuses it, naming that jaxlib, before."""
    flags = (config_lib.COMMAND_BUFFERS, config_lib.CONCURRENT_GRAPHS, config_lib.UPDATE_FREE_GRAPHS)
    monkeypatch.setattr(config_lib, "_jaxlib_version", lambda: (0, 11, 2))
    assert config_lib.known_xla_flags(*flags) == " ".join(flags)
    config_lib.validate_xla_flags(" ".join(flags))
    monkeypatch.setattr(config_lib, "_jaxlib_version", lambda: (0, 10, 2))
    assert config_lib.known_xla_flags(*flags) == " ".join(flags[:2])
    with pytest.raises(ValueError, match=r"--xla_gpu_command_buffer_update_mode=SKIP_PROFILED needs "
                                         r"jaxlib >= 0\.11\.2 \(installed: 0\.10\.2\)"):
        config_lib.validate_xla_flags(" ".join(flags))
    config_lib.validate_xla_flags("--xla_gpu_command_buffer_update_mode=ALWAYS_UPDATE")  # the flag itself is older


def test_xla_flags_after_jax_started_are_reported_not_applied(monkeypatch, caplog):
    """XLA reads $XLA_FLAGS once: in a process (this one, a notebook) whose backends already run,
    setting it would silently do nothing, so apply_xla_flags warns and leaves it alone."""
    jax.devices()
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    with caplog.at_level("WARNING"):
        assert step_lib.apply_xla_flags("--xla_cpu_use_thunk_runtime=true") == "--xla_force_host_platform_device_count=1"
    assert "config.xla_flags not applied (--xla_cpu_use_thunk_runtime=true)" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # GPU flags missed on a CPU: nothing lost, nothing to warn about
        step_lib.apply_xla_flags(config_lib.CIFAR_XLA_FLAGS)
    assert caplog.text == ""
    with caplog.at_level("INFO"):
        step_lib.apply_xla_flags(config_lib.CIFAR_XLA_FLAGS)
    assert "config.xla_flags not applied (--xla_gpu_enable_command_buffer=" in caplog.text
    caplog.clear()
    with pytest.raises(ValueError, match="'gpu_autotune_level=0' is not an XLA flag"):  # XLA would abort
        step_lib.apply_xla_flags("gpu_autotune_level=0")
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=1"
    with caplog.at_level("WARNING"):  # flags already in effect: nothing to say
        step_lib.apply_xla_flags("--xla_force_host_platform_device_count=4")
    assert caplog.text == ""


# ----------------------------------------------------------------------------- quick start


def test_quickstart_reaches_95_percent_on_real_digits(tmp_path, digits_dir, monkeypatch):
    """The headline: experiments/quickstart.py as shipped (400 steps), >= 95% test accuracy."""
    config = quickstart_config(digits_dir)
    assert config.num_train_steps == 400
    counts = EvalCounts(monkeypatch)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["status"] == "ok" and results["steps"] == 400
    assert results["final_test_error"] <= 0.05, results["final_test_error"]
    assert counts.counts == [360, 360]  # evaluations at 200, 400 over the whole test split
    assert [m["step"] for m in read_metrics(str(tmp_path), "test")] == [200, 400]


# ----------------------------------------------------------------------------- devices and BN groups

STEP_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from resnet_v2_jax import augment, column_sums, config as config_lib, layers, step

    assert jax.device_count() == 4, jax.devices()
    column_sums.PLATFORMS.add("cpu")  # model.bn_pallas_sums: the Pallas kernel under Pallas's interpreter
    layers.GEMM_FUSION_PLATFORMS.add("cpu")  # model.conv1x1_fusion: the fused products as plain products

    def run(devices, group, steps=3, auto_layouts=False, explicit=False, augmented=False, lever=None,
            block="basic", depth=8):
        c = config_lib.default()
        c.dataset, c.image_size = "synthetic", 8
        c.model.depth, c.model.block, c.model.width = depth, block, 0.25
        c.batch_size, c.bn_group_size, c.explicit_data_parallel = 8, group, explicit
        if lever:
            c.model[lever] = True
        config_lib.validate(c, num_devices=len(devices))
        # augmented: CIFAR's path, images gathered from an on-device train set and pad-cropped, flipped
        task = step.make_task(c, (8, 8, 3), augment.MEAN_STD["cifar10"] if augmented else None, augmented)
        mesh = step.make_mesh(devices)
        state = step.init_state(task, 0, mesh)
        train_fn, _ = step.compile_steps(task, mesh, auto_layouts, explicit)
        rng = np.random.default_rng(0)
        train_images = jax.device_put(rng.integers(0, 256, (32, 8, 8, 3)).astype(np.uint8), step.replicated(mesh))
        losses = []
        for i in range(steps):
            batch = {"image": rng.normal(size=(8, 8, 8, 3)).astype(np.float32),
                     "label": rng.integers(0, 10, 8).astype(np.int32)}
            if augmented:
                batch = {"index": rng.integers(0, 32, 8).astype(np.int32), "label": batch["label"]}
            batch = jax.device_put(batch, step.batch_sharding(mesh))
            images = train_images if augmented else None
            if auto_layouts and i == 0:
                train_fn, state = step.compile_train(train_fn, state, batch, images)
            state, metrics = train_fn(state, batch, images)
            losses.append(float(metrics["loss"]))
        leaves = [np.asarray(x).ravel() for x in jax.tree.leaves(jax.device_get((state.params, state.batch_stats)))]
        program = str(train_fn.trace(state, batch, images).jaxpr) if lever else ""
        return {"losses": losses, "state": np.concatenate(leaves).tolist(),
                "kernels": program.count("pallas_call"), "shard_maps": program.count("shard_map")}

    one, four = jax.devices()[:1], jax.devices()
    out = {"1dev": run(one, 0), "4dev": run(four, 0), "1dev_g8": run(one, 8), "1dev_g2": run(one, 2),
           "4dev_g2": run(four, 2), "1dev_g4": run(one, 4), "4dev_g4": run(four, 4), "4dev_g64": run(four, 64),
           "4dev_auto": run(four, 0, auto_layouts=True), "4dev_g2_explicit": run(four, 2, explicit=True),
           "4dev_explicit": run(four, 0, explicit=True), "4dev_g4_explicit": run(four, 4, explicit=True),
           "4dev_g1_aug": run(four, 1, augmented=True), "4dev_g1_aug_explicit": run(four, 1, explicit=True, augmented=True),
           "4dev_g1": run(four, 1)}
    # the hand-placed kernels, each BN group layout: the batch one group, 2 across 2 devices, 2 a device
    for suffix, group in (("", 0), ("_g4", 4), ("_g1", 1)):
        out[f"4dev{suffix}_pallas"] = run(four, group, lever="bn_pallas_sums")
        out[f"4dev{suffix}_bottleneck"] = run(four, group, block="bottleneck", depth=11)
        out[f"4dev{suffix}_fusion"] = run(four, group, lever="conv1x1_fusion", block="bottleneck", depth=11)
    json.dump(out, open(sys.argv[1], "w"))
""")


@pytest.fixture(scope="module")
def step_runs(tmp_path_factory):
    """Losses and final state after 3 train steps, global batch 8, on meshes of 1 and 4 CPU devices."""
    path = tmp_path_factory.mktemp("steps") / "out.json"
    subprocess.run([sys.executable, "-c", STEP_SCRIPT, str(path)], cwd=REPO, env=child_env(4), check=True,
                   timeout=600)
    return json.loads(path.read_text())


def test_one_device_and_four_devices_give_the_same_steps(step_runs):
    # Tolerance: rtol 1e-4 on the per-step losses and on every parameter/BN statistic after 3 steps
    # (the 4-device reductions sum in a different order).
    np.testing.assert_allclose(step_runs["4dev"]["losses"], step_runs["1dev"]["losses"], rtol=1e-4)
    np.testing.assert_allclose(step_runs["4dev"]["state"], step_runs["1dev"]["state"], rtol=1e-4, atol=1e-6)
    assert len(set(step_runs["1dev"]["losses"])) == 3  # the steps really change the state


def test_explicit_data_parallel_gives_the_sharded_steps(step_runs):
    """config.explicit_data_parallel (each device its share of the batch in a shard_map, one float32
    all-reduce of the gradients and BN statistics): the sharded step's losses and state, with BN
    groups within a device (2 examples), across two devices (4) and over all four (the batch), on
    plain float batches, and on CIFAR's augmented path (each device's crops and flips its rows of
    the whole batch's draws: drawn per device, they would differ from the sharded step's)."""
    for sharded, explicit in (("4dev_g2", "4dev_g2_explicit"), ("4dev_g4", "4dev_g4_explicit"),
                              ("4dev", "4dev_explicit"), ("4dev_g1_aug", "4dev_g1_aug_explicit")):
        np.testing.assert_allclose(step_runs[explicit]["losses"], step_runs[sharded]["losses"], rtol=1e-5,
                                   err_msg=explicit)
        np.testing.assert_allclose(step_runs[explicit]["state"], step_runs[sharded]["state"], rtol=1e-4, atol=1e-6,
                                   err_msg=explicit)
    assert len(set(step_runs["4dev_g1_aug"]["losses"])) == 3


@pytest.mark.parametrize("lever,baseline,shard_maps", [
    ("pallas", "", 14),  # model.bn_pallas_sums: 7 BNs, forward and backward sums
    ("fusion", "_bottleneck", 6),  # model.conv1x1_fusion: 3 fused 1x1 convs, forward and weight gradient
])
def test_hand_placed_kernels_on_four_devices_run_per_device_and_train_as_without(step_runs, lever, baseline,
                                                                                  shard_maps):
    """model.bn_pallas_sums and model.conv1x1_fusion on 4 devices: each kernel runs in a shard_map
    over the batch (layers._per_device; XLA's partitioner cannot split a custom call and would
    gather the batch onto every device), each device on its own rows and its own groups' factors or
    its group's, and 3 steps give the losses and state of the network without the lever, whichever
    way the BN groups lie across the devices."""
    for suffix in ("", "_g4", "_g1"):
        got, want = step_runs[f"4dev{suffix}_{lever}"], step_runs[f"4dev{suffix}{baseline or ''}"]
        assert got["shard_maps"] == shard_maps and got["kernels"] == (shard_maps if lever == "pallas" else 0)
        np.testing.assert_allclose(got["losses"], want["losses"], rtol=1e-5, err_msg=suffix)
        np.testing.assert_allclose(got["state"], want["state"], rtol=1e-4, atol=1e-6, err_msg=suffix)


def test_auto_param_layouts_on_four_devices_give_the_same_steps(step_runs):
    """config.auto_param_layouts with the state replicated over 4 devices (step.compile_train puts
    it into the compiled step's formats): the same steps as without it."""
    np.testing.assert_allclose(step_runs["4dev_auto"]["losses"], step_runs["4dev"]["losses"], rtol=1e-6)
    np.testing.assert_allclose(step_runs["4dev_auto"]["state"], step_runs["4dev"]["state"], rtol=1e-6, atol=1e-7)


def test_bn_group_of_the_global_batch_equals_the_default(step_runs):
    np.testing.assert_allclose(step_runs["1dev_g8"]["losses"], step_runs["1dev"]["losses"], rtol=1e-5)


def test_smaller_bn_group_changes_the_losses_but_not_with_the_device_count(step_runs):
    g2, g0 = np.array(step_runs["1dev_g2"]["losses"]), np.array(step_runs["1dev"]["losses"])
    assert np.max(np.abs(g2 - g0) / g0) > 1e-3
    np.testing.assert_allclose(step_runs["4dev_g2"]["losses"], g2, rtol=1e-4)


def test_bn_groups_spanning_devices_and_groups_beyond_the_batch(step_runs):
    """Groups of 4 over 4 devices of 2 examples each: the same steps as on one device (XLA sums
    each group across its two devices). A group of 64 at batch 8 is the whole batch, as the
    paper's 64-image groups (experiments/) are when a smaller batch is asked for."""
    g4 = np.array(step_runs["1dev_g4"]["losses"])
    assert np.max(np.abs(g4 - np.array(step_runs["1dev"]["losses"])) / g4) > 1e-3
    np.testing.assert_allclose(step_runs["4dev_g4"]["losses"], g4, rtol=1e-4)
    np.testing.assert_allclose(step_runs["4dev_g4"]["state"], step_runs["1dev_g4"]["state"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(step_runs["4dev_g64"]["losses"], step_runs["1dev"]["losses"], rtol=1e-4)


# ----------------------------------------------------------------------------- two processes


@pytest.fixture(scope="module")
def multiprocess_runs(tmp_path_factory, digits_dir):
    """main for 4 steps: 2 processes x 2 CPU devices (launch/local.sh), the same with
    config.explicit_data_parallel and config.auto_param_layouts together (a multi-GPU user's
    ImageNet run with the explicit step: layouts are an ImageNet default), and 1 process x 4 devices.
    Why together: each launcher is 2 more processes on CI's 2 cores; apart, they cost ~30 s."""
    root = tmp_path_factory.mktemp("multiprocess")
    two, explicit, one = root / "two", root / "explicit", root / "one"

    def launch(workdir, **overrides):
        env = child_env(1)
        env["XLA_FLAGS"] = xla_flags()  # launch/local.sh adds the device count
        env.update(DEVICES_PER_PROCESS="2", LOG_DIR=str(workdir) + "_logs", PORT=str(free_port()),
                   PYTHON=sys.executable)
        return subprocess.Popen(["bash", os.path.join(REPO, "launch", "local.sh"), "2",
                                 *main_args(workdir, digits_dir, num_train_steps=4, **overrides)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    launchers = [launch(two), launch(explicit, explicit_data_parallel=True, auto_param_layouts=True,
                                     checkpoint_every_steps=2)]
    single = run_main(one, digits_dir, devices=4, num_train_steps=4)
    out_two, out_explicit = (finish(p) for p in launchers)
    finish(single)
    return {"two": str(two), "explicit": str(explicit), "one": str(one), "data_dir": digits_dir,
            "out_two": out_two, "out_explicit": out_explicit}


def test_two_processes_match_one_process_with_four_devices(multiprocess_runs):
    two = read_metrics(multiprocess_runs["two"])
    one = read_metrics(multiprocess_runs["one"])
    assert [m["step"] for m in two] == [m["step"] for m in one] == [1, 2, 3, 4]
    np.testing.assert_allclose([m["loss"] for m in two], [m["loss"] for m in one], rtol=1e-4)
    test_two, test_one = read_metrics(multiprocess_runs["two"], "test"), read_metrics(multiprocess_runs["one"], "test")
    np.testing.assert_allclose(test_two[0]["loss"], test_one[0]["loss"], rtol=1e-4)


def test_explicit_data_parallel_across_two_processes_matches_the_sharded_step(multiprocess_runs):
    """config.explicit_data_parallel over 2 processes x 2 devices: each device's share of the batch,
    BN over the whole batch (quickstart's bn_group_size 0) through an all-gather that crosses the
    processes, one pmean of the gradients: the sharded step's losses on one process x 4 devices."""
    explicit, one = read_metrics(multiprocess_runs["explicit"]), read_metrics(multiprocess_runs["one"])
    assert [m["step"] for m in explicit] == [1, 2, 3, 4], multiprocess_runs["out_explicit"][-3000:]
    np.testing.assert_allclose([m["loss"] for m in explicit], [m["loss"] for m in one], rtol=1e-4)
    test_explicit = read_metrics(multiprocess_runs["explicit"], "test")
    np.testing.assert_allclose(test_explicit[0]["loss"], read_metrics(multiprocess_runs["one"], "test")[0]["loss"],
                               rtol=1e-4)


def test_auto_param_layouts_across_two_processes_checkpoint_as_without(multiprocess_runs):
    """config.auto_param_layouts (on for the ImageNet experiments) over 2 processes x 2 devices, in
    the explicit run above: the state put into the compiled step's layouts (step.compile_train) and
    checkpointed from them at steps 2 and 4, whose last checkpoint holds the same parameters as the
    plain two-process run's."""
    assert sorted(os.listdir(os.path.join(multiprocess_runs["explicit"], "checkpoints"))) == ["2", "4"]
    config = quickstart_config(multiprocess_runs["data_dir"], **{**TINY, "num_train_steps": 4})
    (a, step_a), (b, step_b) = (restore_state(multiprocess_runs[k], config) for k in ("explicit", "two"))
    assert step_a == step_b == 4
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_only_process_zero_writes_metrics_and_results(multiprocess_runs):
    lines = read_metrics(multiprocess_runs["two"], None)
    keys = [(m["step"], m["split"]) for m in lines]
    assert len(keys) == len(set(keys)) == 5  # 4 train lines and 1 test line, none twice
    results = json.loads(open(os.path.join(multiprocess_runs["two"], "results.json")).read())
    assert results["status"] == "ok" and results["steps"] == 4
    assert "all 2 processes finished successfully" in multiprocess_runs["out_two"]
    assert os.listdir(os.path.join(multiprocess_runs["two"], "checkpoints")) == ["4"]


# ----------------------------------------------------------------------------- resuming


def tiny_config(data_dir, **overrides):
    # A constant learning rate, so the step count alone does not change the schedule.
    return quickstart_config(data_dir, **{**TINY, "schedule": "constant", "warmup_steps": 0, **overrides})


def test_interrupt_and_resume_equals_uninterrupted(tmp_path, digits_dir, monkeypatch):
    """The interrupted run also trains with config.auto_param_layouts, its conv kernels held output
    channels first, as an H200's XLA picks (`(3, 0, 1, 2)`; a CPU's picks row-major, so the test fixes
    the layout): its
    steps compiled through step.compile_train, its checkpoints saved from those layouts and restored
    into them. The same numbers as the straight run, row-major throughout."""
    from jax.experimental.layout import Layout

    monkeypatch.setattr(step_lib, "param_layout", lambda ndim: Layout((ndim - 1,) + tuple(range(ndim - 1))))
    placed = []
    compile_train = step_lib.compile_train

    def recording(*args):
        compiled, state = compile_train(*args)
        placed.extend(leaf.format.layout.major_to_minor for leaf in jax.tree.leaves(state.params) if leaf.ndim == 4)
        return compiled, state

    monkeypatch.setattr(step_lib, "compile_train", recording)
    straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
    train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=6), straight)
    assert placed == []
    auto = {"auto_param_layouts": True}
    train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=3, **auto), resumed)  # checkpoint at 3
    assert os.listdir(os.path.join(resumed, "checkpoints")) == ["3"]
    results = train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=6, **auto), resumed)
    assert placed and set(placed) == {(3, 0, 1, 2)}  # both runs trained with O-first conv kernels
    assert results["steps"] == 6
    a, b = read_metrics(straight), read_metrics(resumed)
    assert [m["step"] for m in b] == [1, 2, 3, 4, 5, 6]  # resumed at 4, not restarted from 1
    np.testing.assert_allclose([m["loss"] for m in b], [m["loss"] for m in a], rtol=1e-6)
    config = tiny_config(digits_dir, num_train_steps=6)
    (sa, step_a), (sb, step_b) = restore_state(straight, config), restore_state(resumed, config)
    assert step_a == step_b == 6 and int(sa.step) == int(sb.step) == 6
    for x, y in zip(jax.tree.leaves((sa.params, sa.batch_stats, sa.opt_state)),
                    jax.tree.leaves((sb.params, sb.batch_stats, sb.opt_state)), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def sigterm_run(tmp_path_factory, digits_dir):
    """main with 100k steps, the original unit and depth 8 overridden on the command line, SIGTERMed
    once metrics.jsonl has 3 lines."""
    workdir = str(tmp_path_factory.mktemp("sigterm") / "run")
    proc = run_main(workdir, digits_dir, num_train_steps=100000, **{"model.unit": "original"})
    deadline = time.time() + 180
    while len(read_metrics(workdir)) < 3:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.time() < deadline, "no metrics within 180 s"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    return {"workdir": workdir, "rc": proc.returncode, "out": out,
            "metrics": read_metrics(workdir), "checkpoints": os.listdir(os.path.join(workdir, "checkpoints"))}


def test_a_slow_input_pipeline_is_reported(tmp_path, digits_dir, monkeypatch, caplog):
    # Each batch takes 0.3 s to arrive, far longer than the tiny step: windows 2 and 3 (log every step)
    # are starved in a row, so the loop must say so, once.
    from resnet_v2_jax import input_pipeline

    original = input_pipeline._InMemoryData.train_batches

    def slow(self, start_step=0):
        for batch in original(self, start_step):
            time.sleep(0.3)
            yield batch

    monkeypatch.setattr(input_pipeline._InMemoryData, "train_batches", slow)
    workdir = str(tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        train.train_and_evaluate(tiny_config(digits_dir, num_train_steps=3), workdir)
    lines = read_metrics(workdir)
    assert all(m["input_ms"] >= 300 for m in lines)
    assert sum("the input pipeline sets the pace" in r.getMessage() for r in caplog.records) == 1


def test_sigterm_saves_the_step_reached_and_exits_zero(sigterm_run, digits_dir):
    """No checkpoint was due (every 1000 steps): the one there is SIGTERM's. Resuming from such a
    checkpoint, to the same end as an uninterrupted run, is test_reliability's kill -9/SIGTERM/SIGINT test."""
    assert sigterm_run["rc"] == 0, sigterm_run["out"][-3000:]
    assert len(sigterm_run["checkpoints"]) == 1
    saved = int(sigterm_run["checkpoints"][0])
    assert saved >= 3 and sigterm_run["metrics"][-1]["step"] == saved  # a last line at the stop step
    assert not os.path.exists(os.path.join(sigterm_run["workdir"], "results.json"))  # preempted: no results
    config = tiny_config(digits_dir, **{"model.unit": "original"})
    state, step = restore_state(sigterm_run["workdir"], config)
    assert step == saved and int(state.step) == saved


def test_config_overrides_reach_the_model(sigterm_run, digits_dir):
    saved = json.loads(open(os.path.join(sigterm_run["workdir"], "config.json")).read())
    assert saved["model"]["unit"] == "original" and saved["model"]["depth"] == 8
    assert saved["model"]["width"] == 0.25 and saved["batch_size"] == 16
    config = tiny_config(digits_dir, **{"model.unit": "original"})
    state, _ = restore_state(sigterm_run["workdir"], config)
    assert any(k.startswith("conv1_bn") for k in state.params)  # the original unit: BN after conv1
    count = num_params(state.params)
    assert count == summary.analyse(config)["params"]
    assert count != summary.analyse(quickstart_config(digits_dir, **{"model.unit": "original"}))["params"]
    full_preact = tiny_config(digits_dir).model
    variables = jax.eval_shape(lambda: networks.build(full_preact).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False))
    assert not any(k.startswith("conv1_bn") for k in variables["params"])  # pre-activation: none


# ----------------------------------------------------------------------------- schedule, optimizer


def schedule_config(**overrides):
    c = config_lib.default()  # paper_steps: 0.01 warm-up for 400, 0.1, /10 at 32k and 48k
    for key, value in overrides.items():
        c[key] = value
    return c


def lr_at(config, steps):
    fn = optim.schedule(config)
    return [float(fn(s)) for s in steps]


def test_paper_steps_schedule_boundaries():
    steps = [0, 399, 400, 31999, 32000, 47999, 48000, 63999]
    np.testing.assert_allclose(lr_at(schedule_config(), steps),
                               [0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-5)


def test_epochs_step_boundaries_are_in_epochs():
    config = schedule_config(schedule="epochs_step", lr_boundaries=(81, 122), batch_size=64, warmup_steps=0)
    b1, b2 = round(81 * 50000 / 64), round(122 * 50000 / 64)
    assert (b1, b2) == (63281, 95312)
    np.testing.assert_allclose(lr_at(config, [0, b1 - 1, b1, b2 - 1, b2]), [0.1, 0.1, 0.01, 0.01, 0.001],
                               rtol=1e-5)


def test_cosine_warms_up_then_ends_near_zero():
    config = schedule_config(schedule="cosine", num_train_steps=1000, warmup_steps=50)
    start, peak, end = lr_at(config, [0, 50, 1000])
    assert start == pytest.approx(0.01) and peak == pytest.approx(0.1) and end < 1e-6
    values = lr_at(config, range(50, 1001, 50))
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_lr_base_batch_scales_linearly():
    base = schedule_config(warmup_steps=0, lr_base_batch=256, batch_size=256)
    double = schedule_config(warmup_steps=0, lr_base_batch=256, batch_size=512)
    assert optim.peak_learning_rate(base) == pytest.approx(0.1)
    assert optim.peak_learning_rate(double) == pytest.approx(0.2)
    np.testing.assert_allclose(lr_at(double, [0, 32000]), [0.2, 0.02], rtol=1e-5)
    assert optim.peak_learning_rate(schedule_config(batch_size=512)) == 0.1  # 0: no scaling


def toy_params():
    return {"conv": {"kernel": jnp.ones((3, 3, 2, 4))}, "bn": {"scale": jnp.ones((4,)), "bias": jnp.ones((4,))},
            "fc": {"kernel": jnp.ones((4, 10)), "bias": jnp.ones((10,))}}


def one_update(config, grads_value=0.0):
    params = toy_params()
    tx = optim.optimizer(config)
    grads = jax.tree.map(lambda p: jnp.full_like(p, grads_value), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_weight_decay_mask_spares_1d_params_when_asked():
    config = schedule_config(warmup_steps=0, decay_bn_and_bias=False)
    updates = one_update(config)
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        name = jax.tree_util.keystr(path)
        if u.ndim > 1:
            np.testing.assert_allclose(u, -0.1 * 1e-4, rtol=1e-5, err_msg=name)  # -lr * wd * w
        else:
            assert not np.any(u), name
    coupled = one_update(schedule_config(warmup_steps=0))  # default: decay on every parameter
    assert all(np.all(np.asarray(u) != 0) for u in jax.tree.leaves(coupled))


def test_nesterov_switch_changes_the_update():
    plain = one_update(schedule_config(warmup_steps=0, weight_decay=0.0), 1.0)
    nesterov = one_update(schedule_config(warmup_steps=0, weight_decay=0.0, nesterov=True), 1.0)
    np.testing.assert_allclose(plain["fc"]["bias"], -0.1, rtol=1e-6)  # v = g; update -lr v
    np.testing.assert_allclose(nesterov["fc"]["bias"], -0.1 * 1.9, rtol=1e-6)  # -lr (g + m v)
    assert not math.isclose(float(plain["conv"]["kernel"][0, 0, 0, 0]), float(nesterov["conv"]["kernel"][0, 0, 0, 0]))


@pytest.mark.parametrize("scan, unroll, remat", [(True, 2, False), (False, 1, False), (True, 1, True)])
def test_the_state_is_initialised_to_the_configured_models_own_parameters(scan, unroll, remat):
    """create_state initialises through one scanned unit per iteration without remat (quicker to
    compile); the values must be, bit for bit, what the configured form's own init gives."""
    c = config_lib.default()
    c.model.depth, c.model.block, c.model.width = 20, "basic", 0.25  # 3 units a stage: a scan of 2
    c.model.scan, c.model.scan_unroll, c.model.remat = scan, unroll, remat
    task = step_lib.make_task(c, (8, 8, 3))
    state = jax.jit(lambda: step_lib.create_state(task, 0))()
    init_rng, _ = jax.random.split(jax.random.PRNGKey(0))
    own = jax.jit(lambda: task.model.init(init_rng, jnp.zeros((1, 8, 8, 3), jnp.float32), train=False))()
    assert jax.tree.structure(own["params"]) == jax.tree.structure(state.params)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(own["params"]), jax.tree.leaves(state.params)))
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(own["batch_stats"]),
                                                      jax.tree.leaves(state.batch_stats)))


INIT_OPTIONS_SCRIPT = textwrap.dedent("""
    import functools, importlib.util, json
    import jax, numpy as np
    from resnet_v2_jax import step

    def experiment(name):
        spec = importlib.util.spec_from_file_location("e", f"experiments/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.get_config()

    tiny50 = experiment("imagenet_resnet50")
    tiny50.model.width = 0.125
    out = {}
    for name, c, shape in (("quickstart", experiment("quickstart"), (8, 8, 3)), ("resnet50", tiny50, (32, 32, 3))):
        task, mesh = step.make_task(c, shape), step.make_mesh()
        ours = step.state_initializer(task, 0, mesh)()  # compiled at step.CPU_INIT_OPTIONS
        default = jax.jit(functools.partial(step.create_state, task, 0))()  # at XLA's default
        out[name] = all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(default)))
    print(json.dumps(out))
""")


def test_the_cpu_initialiser_at_o1_makes_the_same_bits_as_at_o2():
    """step.state_initializer compiles at LLVM -O1 on a CPU (step.CPU_INIT_OPTIONS); the state it
    makes equals, bit for bit, the one compiled at XLA's default -O2, for the quick start and a
    narrow ImageNet ResNet-50 (its stem, bottlenecks and classifier). In a process without the
    tests' own -O1 flag (helpers.TEST_XLA_FLAGS), so that the default is -O2."""
    env = dict(child_env(1), XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_ENABLE_COMPILATION_CACHE="false")
    r = subprocess.run([sys.executable, "-c", INIT_OPTIONS_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"quickstart": True, "resnet50": True}


@pytest.mark.parametrize("own_sum_min", [1 << 18, 20, 1])
def test_global_norm_is_optax_tree_norm(monkeypatch, own_sum_min):
    """step.global_norm (the gradient-norm metric and the NaN guard) equals optax.tree.norm on a tree of
    mixed shapes and dtypes, and is infinite when a leaf is, whether the leaves are summed as one
    concatenation (all small), alone (all large) or both ("a" alone, 60 values, at 20)."""
    import jax
    import jax.numpy as jnp
    import optax

    from resnet_v2_jax import step as step_lib

    monkeypatch.setattr(step_lib, "NORM_OWN_SUM_MIN", own_sum_min)
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    tree = {"a": jax.random.normal(k[0], (3, 4, 5)), "b": [jax.random.normal(k[1], (7,)).astype(jnp.bfloat16),
                                                           jnp.float32(2.5)], "c": jax.random.normal(k[2], (2, 2))}
    want = float(optax.tree.norm(jax.tree.map(lambda x: x.astype(jnp.float32), tree)))
    assert float(step_lib.global_norm(tree)) == pytest.approx(want, rel=1e-6)
    # (a new function each time: make_jaxpr caches a function's trace, and the threshold is a global)
    sums = str(jax.make_jaxpr(lambda t: step_lib.global_norm(t))(tree)).count("reduce_sum[")
    assert sums == {1 << 18: 1, 20: 2, 1: 4}[own_sum_min]  # one per large leaf, one for the rest
    for leaf in ("a", "c"):  # a large leaf at 20, a small one
        bad = dict(tree, **{leaf: tree[leaf].at[(0,) * tree[leaf].ndim].set(jnp.nan)})
        assert not bool(jnp.isfinite(step_lib.global_norm(bad)))
    assert float(step_lib.global_norm({})) == 0.0

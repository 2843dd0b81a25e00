"""Faults during training: kill -9 (also mid-save), a corrupted newest checkpoint, SIGTERM and
SIGINT, NaN/Inf, an unwritable workdir or failing saves, another run's checkpoints, and a
process of a multi-process run dying. Tiny nets on the digits, in subprocesses of main unless
the fault has to be injected in-process."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, xla_flags

ROOT = Path(__file__).resolve().parents[1]
STEPS = 60
TINY = ["--config=experiments/quickstart.py", "--config.model.depth=8", "--config.model.width=0.25",
        "--config.batch_size=16", "--config.eval_batch_size=120", f"--config.num_train_steps={STEPS}",
        "--config.log_every_steps=5", f"--config.eval_every_steps={STEPS}", "--config.checkpoint_every_steps=5"]


def env_for(data_dir, **extra):
    return {**os.environ, "JAX_PLATFORMS": "cpu", "TFDS_DATA_DIR": str(data_dir), **extra}


def main_cmd(workdir, *args):
    return [sys.executable, "-m", "resnet_v2_jax.main", *TINY, f"--workdir={workdir}", *args]


def run(data_dir, workdir, *args, timeout=240, **env):
    cmd = main_cmd(workdir, f"--config.data_dir={data_dir}", *args)
    return subprocess.run(cmd, cwd=ROOT, env=env_for(data_dir, **env), capture_output=True, text=True,
                          timeout=timeout, check=False)


def start(data_dir, workdir, *args, **env):
    cmd = main_cmd(workdir, f"--config.data_dir={data_dir}", *args)
    return subprocess.Popen(cmd, cwd=ROOT, env=env_for(data_dir, **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def complete_steps(workdir) -> list[int]:
    d = Path(workdir) / "checkpoints"
    return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.exists() else []


def wait_for(predicate, proc, timeout=180, poll=0.005):
    t = time.time()
    while time.time() - t < timeout:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def tree_hash(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        h.update(str(p.relative_to(path)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def final_test(workdir) -> dict:
    records = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["split"] == "test" and r["step"] == STEPS][-1]


def load_state(workdir, step):
    """The saved state on one device. The target names the sharding, so Orbax neither reads it
    from the checkpoint nor warns that doing so is unsafe across topologies."""
    import jax
    import orbax.checkpoint as ocp

    path = (Path(workdir) / "checkpoints" / str(step) / "state").resolve()
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    with ocp.StandardCheckpointer() as checkpointer:
        target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                              checkpointer.metadata(path).item_metadata)
        return checkpointer.restore(path, target)


def assert_same_params(a, b):
    import jax

    for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"]), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.fixture(scope="module")
def reference(digits_data_dir, tmp_path_factory):
    """One uninterrupted run: the results every interrupted-and-resumed run must reproduce."""
    workdir = tmp_path_factory.mktemp("reference") / "work"
    r = run(digits_data_dir, workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    return workdir


def test_kill9_sigterm_sigint_then_resume_gives_identical_results(digits_data_dir, reference, tmp_path):
    """kill -9 right when an async save's temporary dir appears, then SIGTERM, then SIGINT, each on a
    resumed run; every restart takes the newest complete checkpoint and the end equals `reference`."""
    workdir = tmp_path / "work"
    ckpt = workdir / "checkpoints"
    every2 = "--config.checkpoint_every_steps=2"

    # 1. SIGKILL while a checkpoint is being written.
    p = start(digits_data_dir, workdir, every2)
    def mid_save():  # a save in progress, with at least one complete checkpoint before it
        return ckpt.exists() and complete_steps(workdir) and any("tmp" in q.name for q in ckpt.iterdir())

    assert wait_for(mid_save, p), p.communicate()[1][-3000:]
    p.kill()
    p.wait()
    killed_at = complete_steps(workdir)
    assert killed_at and max(killed_at) < STEPS

    # 2. Resume, then SIGTERM once it has saved a newer step: save, exit 0.
    p = start(digits_data_dir, workdir, every2)
    assert wait_for(lambda: complete_steps(workdir) and max(complete_steps(workdir)) > max(killed_at), p)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    assert f"resumed from the checkpoint at step {max(killed_at)}" in out
    term_step = max(complete_steps(workdir))
    assert not any("tmp" in q.name for q in ckpt.iterdir())  # the save finished before the exit
    assert int(load_state(workdir, term_step)["step"]) == term_step  # restorable, at the step reached
    assert not (workdir / "results.json").exists() or json.loads((workdir / "results.json").read_text())

    # 3. Resume, then SIGINT (Ctrl-C): save, exit 130.
    p = start(digits_data_dir, workdir, every2)
    assert wait_for(lambda: max(complete_steps(workdir)) > term_step, p)
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert f"resumed from the checkpoint at step {term_step}" in out
    int_step = max(complete_steps(workdir))
    assert int(load_state(workdir, int_step)["step"]) == int_step

    # 4. Resume to the end: identical to the uninterrupted run.
    r = run(digits_data_dir, workdir, every2)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from the checkpoint at step {int_step}" in r.stdout
    assert final_test(workdir) == final_test(reference)
    assert_same_params(load_state(workdir, STEPS), load_state(reference, STEPS))


def test_corrupted_newest_checkpoint_falls_back_with_a_warning(digits_data_dir, reference, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(reference, workdir)
    for name in ("results.json", "metrics.jsonl"):
        (workdir / name).unlink()
    assert complete_steps(workdir)[-2:] == [STEPS - 5, STEPS]
    files = sorted((p for p in (workdir / "checkpoints" / str(STEPS) / "state").rglob("*") if p.is_file()),
                   key=lambda p: p.stat().st_size)
    with open(files[-1], "r+b") as f:  # truncate the largest data file of the newest checkpoint
        f.truncate(files[-1].stat().st_size // 3)
    r = run(digits_data_dir, workdir)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"warning: the checkpoint at step {STEPS}" in r.stderr and "falling back" in r.stderr
    assert f"resumed from the checkpoint at step {STEPS - 5}" in r.stdout
    # Before the first step, which compiles, the run says so; then how long that took.
    lines = r.stdout.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.endswith("compiling the train step ...")]
    assert lines[at].startswith(f"quickstart: 5 steps from step {STEPS - 5}, batch 16 on 1 x cpu;"), lines[at]
    assert re.fullmatch(r"compiled; the first step took \d+\.\d s", lines[at + 1]), lines[at + 1]
    assert [p.name.split(".")[0] for p in (workdir / "corrupt_checkpoints").iterdir()] == [str(STEPS)]
    assert final_test(workdir) == final_test(reference)


def test_a_checkpoint_resumes_under_another_scan_unroll_or_remat(digits_data_dir, reference, tmp_path):
    """scan, scan_unroll, remat, the two BN levers, scan_unit_reads and conv1x1_fusion change how the
    step compiles, not the parameters."""
    workdir = tmp_path / "work"
    shutil.copytree(reference, workdir)
    (workdir / "results.json").unlink()
    r = run(digits_data_dir, workdir, "--config.model.scan=False", "--config.model.scan_unroll=2",
            "--config.model.remat=True", "--config.model.remat_policy=nothing",
            "--config.model.bn_recompute_mask=True", "--config.model.bn_partial_sums=True",
            "--config.model.scan_unit_reads=True", "--config.model.conv1x1_fusion=True")
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed from the checkpoint at step {STEPS}" in r.stdout
    assert final_test(workdir) == final_test(reference)


def test_checkpoints_written_before_the_compile_only_fields_were_dropped_still_resume():
    """Older checkpoints' fingerprints hold scan/remat: those fields are ignored on both sides."""
    from resnet_v2_jax import checkpoint
    from resnet_v2_jax import config as config_lib

    c = config_lib.default()
    old = {"model": json.loads(c.model.to_json()), "dataset": c.dataset}
    assert old["model"]["scan"] is True and "scan" not in checkpoint.fingerprint(c)["model"]
    c.model.scan, c.model.scan_unroll = False, 10
    assert checkpoint._differences(checkpoint._without_compile_only(old), checkpoint.fingerprint(c)) == []
    c.model.depth = 20
    assert checkpoint._differences(checkpoint._without_compile_only(old), checkpoint.fingerprint(c)) == [
        "model.depth: checkpoint 164 vs config 20"]


@pytest.mark.parametrize("override,field", [("--config.model.depth=14", "depth"),
                                            ("--config.model.unit=original", "unit")])
def test_other_runs_checkpoints_are_refused_never_overwritten(digits_data_dir, reference, override, field):
    before = tree_hash(reference / "checkpoints")
    r = run(digits_data_dir, reference, override)
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(errors) == 1 and f"model.{field}" in errors[0] and "refusing" in errors[0], r.stderr[-2000:]
    assert tree_hash(reference / "checkpoints") == before


def test_other_datasets_checkpoints_are_refused(digits_data_dir, reference):
    before = tree_hash(reference / "checkpoints")
    r = run(digits_data_dir, reference, "--config.dataset=synthetic", "--config.image_size=8")
    assert r.returncode == 2, r.stderr[-3000:]
    assert "dataset: checkpoint 'digits' vs config 'synthetic'" in r.stderr
    assert tree_hash(reference / "checkpoints") == before


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(digits_data_dir, tmp_path):
    workdir = tmp_path / "work"
    r = run(digits_data_dir, workdir, "--config.learning_rate=1e30", "--config.checkpoint_every_steps=1")
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "NaN/Inf at step" in errors[0], r.stderr[-2000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["status"] == "nan"
    bad_step = int(results["message"].split("at step ")[1].split()[0])
    assert errors[0].startswith(f"error: {results['message']}")
    steps = complete_steps(workdir)
    assert steps and max(steps) < bad_step  # nothing written after the last good step
    assert f"the last good checkpoint (step {max(steps)}) is kept in" in errors[0]
    import jax

    state = load_state(workdir, max(steps))
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state["params"]))


def test_nan_rollback_gives_up_after_three(digits_data_dir, tmp_path):
    """Also under config.auto_param_layouts: each rollback puts the replaced state back into the
    compiled step's layouts (a compiled step refuses others)."""
    workdir = tmp_path / "work"  # lr grows to 1e40 during warm-up: every step from the second is bad
    r = run(digits_data_dir, workdir, "--config.learning_rate=1e40", "--config.nan_policy=rollback",
            "--config.auto_param_layouts=True")
    assert r.returncode == 1, r.stderr[-3000:]
    assert r.stderr.count("rollback") >= 3 and "(after 3 rollbacks)" in r.stderr, r.stderr[-3000:]
    assert json.loads((workdir / "results.json").read_text())["status"] == "nan"


# ---------------------------------------------------------------- in-process fault injection


def tiny_synthetic(**overrides):
    from resnet_v2_jax import config as config_lib

    c = config_lib.default()
    c.dataset, c.image_size = "synthetic", 8
    c.model.depth, c.model.block, c.model.width = 8, "basic", 0.25
    c.batch_size, c.eval_batch_size, c.num_train_steps = 8, 8, 12
    c.log_every_steps = c.eval_every_steps = c.checkpoint_every_steps = 4
    c.schedule, c.warmup_steps = "constant", 0
    for k, v in overrides.items():
        c[k] = v
    return c


def _wrap_train_step(monkeypatch, before_call):
    """The compiled train step, preceded by `before_call(n, batch) -> batch` (n: the 1-based call,
    as the progress lines count steps)."""
    from resnet_v2_jax import step as step_lib

    compile_steps = step_lib.compile_steps

    def wrapped(task, mesh, **kw):
        (fn, eval_fn), calls = compile_steps(task, mesh, **kw), [0]

        def step(state, batch, images):
            calls[0] += 1
            return fn(state, before_call(calls[0], batch), images)
        return step, eval_fn

    monkeypatch.setattr(step_lib, "compile_steps", wrapped)


def _poison(monkeypatch, bad_calls):
    """An infinite batch on the listed calls."""
    import jax.numpy as jnp

    _wrap_train_step(monkeypatch, lambda n, batch: dict(batch, image=batch["image"] * jnp.inf)
                     if n in bad_calls else batch)


def test_rollback_skips_one_bad_batch_and_continues(tmp_path, monkeypatch):
    from resnet_v2_jax import train

    _poison(monkeypatch, {6})
    results = train.train_and_evaluate(tiny_synthetic(nan_policy="rollback"), str(tmp_path / "w"))
    assert results["status"] == "ok" and results["steps"] == 12
    assert complete_steps(tmp_path / "w") == [4, 8, 12]  # step 8's save came after the rollback


@pytest.mark.parametrize("bad, kept", [(1, "no checkpoint had been written yet"),
                                       (6, "the last good checkpoint (step 4) is kept in")])
def test_a_nan_names_its_step_as_the_progress_lines_count_and_the_checkpoint_kept(tmp_path, monkeypatch, bad, kept):
    from resnet_v2_jax import train

    _poison(monkeypatch, {bad})
    with pytest.raises(train.TrainingDiverged) as e:
        train.train_and_evaluate(tiny_synthetic(), str(tmp_path / "w"))
    assert str(e.value).startswith(f"loss or gradient became NaN/Inf at step {bad}; stopped, and {kept}")
    assert complete_steps(tmp_path / "w") == ([] if bad == 1 else [4])


def test_a_resumed_run_keeps_its_best_error_its_time_and_one_record_per_step(tmp_path, monkeypatch):
    """Stopped by SIGTERM at step 9 (evaluations at 4 and 8), then resumed to 12 (evaluation at 12):
    the best test error is step 8's, the training time covers both runs, and the records a killed
    run logged after its checkpoint (here a stray step-11 line) are dropped on resume."""
    import os

    from resnet_v2_jax import step as step_lib
    from resnet_v2_jax import train

    errors = {4: 0.5, 8: 0.1, 12: 0.3}
    real_evaluate = train.evaluate

    def scripted(eval_fn, state, *args):
        result = real_evaluate(eval_fn, state, *args)
        return dict(result, error=errors[int(state.step)])

    monkeypatch.setattr(train, "evaluate", scripted)
    compile_steps = step_lib.compile_steps

    def sigterm_at_9(n, batch):
        if n == 9:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler sets a flag; the loop saves and stops
        return batch

    _wrap_train_step(monkeypatch, sigterm_at_9)
    workdir = tmp_path / "w"
    first = train.train_and_evaluate(tiny_synthetic(), str(workdir))
    assert first["status"] == "preempted" and complete_steps(workdir) == [4, 8, 9]
    with (workdir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": 11, "split": "train", "loss": 9.0}) + "\n" + '{"step": 1')  # cut short

    monkeypatch.setattr(step_lib, "compile_steps", compile_steps)
    results = train.train_and_evaluate(tiny_synthetic(), str(workdir))
    assert results["status"] == "ok" and results["steps"] == 12
    assert results["best_test_error"] == 0.1 and results["final_test_error"] == 0.3
    assert results["train_seconds"] > first["train_seconds"] > 0
    assert results["images_per_second"] == pytest.approx(12 * 8 / results["train_seconds"])
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [
        (4, "train"), (4, "test"), (8, "train"), (8, "test"), (9, "train"), (12, "train"), (12, "test")]


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_over(tmp_path):
    from resnet_v2_jax import train

    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": 3, "split": "train", "loss": 9.0}) + "\n")
    train.train_and_evaluate(tiny_synthetic(), str(workdir))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["split"]) for r in records] == [(s, split) for s in (4, 8, 12) for split in ("train", "test")]


def test_failing_saves_keep_training_and_the_final_failure_exits(tmp_path, monkeypatch, capfd):
    from resnet_v2_jax import checkpoint, train

    real_save = checkpoint.Checkpointer.save

    def flaky(self, step, state, extra=None, force=False):
        if step < 12:
            raise OSError(28, "No space left on device")
        return real_save(self, step, state, extra, force)

    monkeypatch.setattr(checkpoint.Checkpointer, "save", flaky)
    results = train.train_and_evaluate(tiny_synthetic(), str(tmp_path / "w"))
    err = capfd.readouterr().err
    assert "error: checkpoint save at step 4 failed" in err and "No space left" in err
    assert "retries at the next checkpoint" in err
    assert results["status"] == "ok" and complete_steps(tmp_path / "w") == [12]

    def broken(self, step, state, extra=None, force=False):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint.Checkpointer, "save", broken)
    with pytest.raises(train.CheckpointSaveError, match="step 12 could not be written"):
        train.train_and_evaluate(tiny_synthetic(), str(tmp_path / "w2"))


def test_full_disk_at_start_is_a_workdir_error(tmp_path, monkeypatch):
    from etils import epath

    from resnet_v2_jax import train

    def full(self, *a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(epath.Path, "write_text", full)
    with pytest.raises(train.WorkdirError, match="not writable.*No space left"):
        train.train_and_evaluate(tiny_synthetic(), str(tmp_path / "w"))


# ---------------------------------------------------------------- multi-process


def mp_start(tmp_path, port, pid, n=2, steps=100000, timeout_s=20):
    workdir = tmp_path / "mp"
    cmd = [sys.executable, "-m", "resnet_v2_jax.main", *TINY, f"--workdir={workdir}",
           "--config.dataset=synthetic", "--config.image_size=8", f"--config.num_train_steps={steps}",
           "--config.eval_every_steps=100000", "--config.checkpoint_every_steps=100000",
           f"--config.collective_timeout_s={timeout_s}", f"--coordinator_address=127.0.0.1:{port}",
           f"--num_processes={n}", f"--process_id={pid}"]
    env = env_for(tmp_path, XLA_FLAGS=xla_flags(2))
    log = open(tmp_path / f"proc{pid}.log", "w")  # noqa: SIM115
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("dies", [1, 0])  # 0 is the coordinator (it hosts jax.distributed's service)
def test_a_dying_process_makes_the_others_fail_fast(tmp_path, dies):
    port = free_port()
    procs = [mp_start(tmp_path, port, i) for i in range(2)]
    survivor = 1 - dies
    try:
        log0, log = tmp_path / "proc0.log", tmp_path / f"proc{survivor}.log"
        assert wait_for(lambda: "step 10/" in log0.read_text(), procs[0], timeout=180, poll=0.2), \
            log0.read_text()[-3000:]
        procs[dies].kill()
        t = time.time()
        rc = procs[survivor].wait(timeout=120)
        assert rc != 0
        # Ours when a collective fails; JAX's own when the coordination service goes (it aborts, rc -6).
        out = log.read_text()
        assert "another process of the run died" in out or "another task died" in out, out[-3000:]
        print(f"survivor exited {rc} {time.time() - t:.1f}s after its peer was killed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_a_missing_process_fails_within_the_init_timeout(tmp_path):
    t = time.time()
    p = mp_start(tmp_path, free_port(), 0, timeout_s=5)  # alone, it can only wait out the timeout
    rc = p.wait(timeout=120)
    out = (tmp_path / "proc0.log").read_text()
    assert rc == 1, out[-3000:]
    assert "error: not all of the 2 processes at 127.0.0.1:" in out and "joined within collective_timeout_s=5s" in out, \
        out[-3000:]
    assert time.time() - t < 60
    assert not (tmp_path / "mp").exists()


def test_relative_workdir_and_rerunning_a_finished_run(tmp_path, monkeypatch, capsys):
    """README's quick start passes a relative --workdir (Orbax needs absolute paths); running a
    finished run again returns its results.json unchanged instead of training or clobbering it."""
    from resnet_v2_jax import train

    monkeypatch.chdir(tmp_path)
    first = train.train_and_evaluate(tiny_synthetic(), "relative/work")
    assert first["status"] == "ok" and (tmp_path / "relative/work/results.json").exists()
    before = (tmp_path / "relative/work/results.json").read_text()
    again = train.train_and_evaluate(tiny_synthetic(), "relative/work")
    assert again == json.loads(before)
    assert (tmp_path / "relative/work/results.json").read_text() == before
    assert "already holds a finished run (12 steps)" in capsys.readouterr().out

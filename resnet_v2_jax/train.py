"""`train_and_evaluate(config, workdir)`: the whole training run, resumable at any step.

Flow: validate the config (one-line errors, nothing written) -> probe the workdir -> refuse
another run's checkpoints -> data (input_pipeline, the only TF user; `synthetic` needs none) ->
state restored from the newest good checkpoint or created on the devices -> the jitted steps ->
loop (metrics fetched only at log points, evaluation, async checkpoints, SIGTERM/SIGINT) ->
`results.json`.

Data order and every random draw are functions of the step, so a run interrupted and resumed
reaches the same state as one that ran straight through.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

from resnet_v2_jax import checkpoint as ckpt_lib
from resnet_v2_jax import config as config_lib
from resnet_v2_jax import optim
from resnet_v2_jax import step as step_lib


class TrainingDiverged(RuntimeError):
    """The loss or gradient became NaN or Inf."""


class WorkdirError(OSError):
    """The workdir cannot be written."""


class CheckpointSaveError(RuntimeError):
    """The final (or a signal-forced) checkpoint could not be written."""


def _probe_workdir(workdir: epath.Path) -> None:
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe_{jax.process_index()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise WorkdirError(f"workdir {workdir} is not writable ({type(e).__name__}: {e}); "
                           "choose another --workdir or fix its permissions/free space") from None


class MetricWriter:
    """metrics.jsonl (the source of truth for plot/report) + TensorBoard events + console."""

    def __init__(self, workdir: epath.Path, enabled: bool, resumed_step: int = 0):
        self.enabled = enabled
        self.path = workdir / "metrics.jsonl"
        self.tb = None
        if enabled:
            self._drop_after(resumed_step)  # 0: a run killed before its first checkpoint starts over
            try:
                from tensorboardX import SummaryWriter

                # purge_step: TensorBoard hides the events a killed run logged after the checkpoint.
                self.tb = SummaryWriter(str(workdir / "tb"), purge_step=resumed_step + 1)
            except Exception as e:  # noqa: BLE001 - TensorBoard is optional output
                logging.warning("TensorBoard events disabled: %s", e)

    def _drop_after(self, step: int) -> None:
        """Removes the records of steps after `step`: a run killed after its newest checkpoint logged
        steps that the resumed run computes again, so the log stays one record per step and split."""
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        kept = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (ValueError, KeyError, TypeError):  # a line cut short by the kill
                continue
        if len(kept) < len(lines):
            tmp = self.path.parent / (self.path.name + ".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.path)

    def write(self, step: int, split: str, values: dict) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "split": split, **{k: float(v) for k, v in values.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"{split}/{k}", float(v), int(step))
            self.tb.flush()

    def close(self):
        if self.tb is not None:
            self.tb.close()


class _Signals:
    """SIGTERM (preemption) and SIGINT set a flag; the loop saves and stops at the next step."""

    def __init__(self):
        self.received: int | None = None
        self._old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handlers
                pass

    def _handle(self, signum, frame):
        del frame
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        self.received = signum
        logging.warning("received signal %d: saving a checkpoint, then stopping", signum)

    def restore(self):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _format_eta(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def image_shape(config, data=None) -> tuple[int, int, int]:
    if data is not None:
        return (data.image_size, data.image_size, data.channels)
    size = config.image_size or config_lib.DATASET_INFO[config.dataset]["image_size"]
    return (size, size, 3)


def _global(local: dict, sharding) -> dict:
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}


def evaluate(eval_fn, state, data, mesh, config, task) -> dict:
    """Loss, top-1 and top-5 error over every test example exactly once (padded batches masked)."""
    sharding = step_lib.batch_sharding(mesh)
    totals = None
    if data is None:  # synthetic: one random batch, all real
        batch = dict(step_lib.synthetic_batch(task, mesh, config.eval_batch_size, seed=config.seed + 1))
        batch["mask"] = jnp.ones((config.eval_batch_size,), jnp.float32)
        batches = [batch]
    else:
        batches = (_global(b, sharding) for b in data.test_batches())
    for batch in batches:
        out = eval_fn(state, batch)
        totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
    totals = jax.device_get(totals)
    n = float(totals["count"])
    return {"loss": totals["loss"] / n, "error": totals["errors"] / n,
            "top5_error": totals["top5_errors"] / n, "count": n}


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
    """Trains `config` in `workdir` (resuming if it holds checkpoints); returns results.json."""
    step_lib.apply_xla_flags(config.xla_flags)  # before JAX starts its backends; a bad value is a ValueError
    config_lib.validate(config, num_devices=jax.device_count())
    step_lib.use_compilation_cache(config.compilation_cache_dir)
    # Orbax needs absolute paths; gs:// and other URLs already are.
    workdir = epath.Path(workdir if "://" in str(workdir) else os.path.abspath(workdir))
    # Everything that can reject the run comes before the first write to the workdir: the
    # config, the data (a missing dataset names its preparation steps), then the probe write,
    # then another run's checkpoints (read-only: they are refused, never overwritten).
    data = None
    if config.dataset != "synthetic":
        from resnet_v2_jax import input_pipeline  # the only TensorFlow import

        data = input_pipeline.create(config, jax.process_index(), jax.process_count())
        if data.num_classes != config.model.num_classes:
            raise ValueError(f"model.num_classes={config.model.num_classes} but {config.dataset} has "
                             f"{data.num_classes} classes; set --config.model.num_classes={data.num_classes}")
    _probe_workdir(workdir)
    is_lead = jax.process_index() == 0
    checkpointer = ckpt_lib.Checkpointer(workdir, config, config.collective_timeout_s)
    checkpointer.check_compatible()
    steps = checkpointer.steps()
    if steps and steps[-1] >= config.num_train_steps and (workdir / "results.json").exists():
        if is_lead:
            print(f"{workdir} already holds a finished run ({steps[-1]} steps); nothing to do", flush=True)
        checkpointer.close()
        return json.loads((workdir / "results.json").read_text())
    shape = image_shape(config, data)
    task = step_lib.make_task(config, shape, None if data is None else data.norm,
                              data is not None and bool(data.device_augment),
                              data is not None and bool(data.device_colour))
    mesh = step_lib.make_mesh()
    rep = step_lib.replicated(mesh)

    if is_lead:
        (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    abstract = ckpt_lib.abstract_with_sharding(step_lib.abstract_state(task, config.seed), rep)
    state, start = checkpointer.restore_latest(abstract)
    if state is None:
        state = step_lib.init_state(task, config.seed, mesh)
        logging.info("starting from scratch")
    elif is_lead:
        print(f"resumed from the checkpoint at step {start} in {checkpointer.directory}", flush=True)
    train_fn, eval_fn = step_lib.compile_steps(task, mesh, auto_layouts=bool(config.auto_param_layouts),
                                               explicit=bool(config.explicit_data_parallel))
    compiled = not config.auto_param_layouts  # else compile_train at the first batch (it needs its shapes)
    train_images = None
    if data is not None and data.train_arrays is not None:
        train_images = jax.device_put(data.train_arrays["image"], rep)

    writer = MetricWriter(workdir, is_lead, start)
    signals = _Signals()
    lr_fn = optim.schedule(config)
    sharding = step_lib.batch_sharding(mesh)
    total = config.num_train_steps
    synthetic = None if data is not None else step_lib.synthetic_batch(task, mesh, config.batch_size, config.seed)
    batches = iter(()) if data is None else data.train_batches(start)

    # A resumed run carries on the best test error and the training time of the steps before its
    # checkpoint (kept in the checkpoint's meta); a checkpoint without them times this run's steps only.
    resumed = checkpointer.restored_meta if start else {}
    best = math.inf if resumed.get("best_test_error") is None else float(resumed["best_test_error"])
    train_seconds = float(resumed.get("train_seconds", 0.0))
    timed_from = 0 if "train_seconds" in resumed else start
    last_eval, status, message = None, "ok", ""
    pending: list = []
    t_log = time.time()
    step, log_step, rollbacks = start, start, 0
    input_seconds = 0.0  # host seconds waiting for the next batch since the last log
    starved_windows = 0  # log windows in a row whose input wait neared the step time
    if is_lead and step < total:  # the first step compiles: ResNet-1001's takes ~30 s, say so first
        device = jax.devices()[0]
        print(f"{config.experiment}: {total - step} steps from step {step}, batch "
              f"{config.batch_size} on {jax.device_count()} x {device.device_kind}; compiling the train "
              "step ...", flush=True)
    try:
        while step < total:
            t0 = time.perf_counter()
            batch = synthetic if data is None else _global(next(batches), sharding)
            input_seconds += time.perf_counter() - t0
            if not compiled:
                train_fn, state = step_lib.compile_train(train_fn, state, batch, train_images)
                compiled = True
            state, metrics = train_fn(state, batch, train_images)
            pending.append(metrics)
            step += 1
            if step == start + 1 and is_lead:  # one wait for the device, once, to say the compile is done
                jax.block_until_ready(metrics)
                print(f"compiled; the first step took {time.perf_counter() - t0:.1f} s", flush=True)
            at_log = step % config.log_every_steps == 0 or step == total
            at_eval = step % config.eval_every_steps == 0 or step == total
            at_ckpt = step % config.checkpoint_every_steps == 0 or step == total
            stop = signals.received is not None
            if jax.process_count() > 1:  # every process must stop (and save) at the same step
                stop = at_log and bool(np.any(multihost_utils.process_allgather(np.array(stop))))
            # nan_step is read before every log, evaluation and checkpoint, so no checkpoint is
            # ever written after a non-finite step: the newest one always holds good parameters.
            if at_log or stop or at_eval or at_ckpt:
                nan_step = int(jax.device_get(state.nan_step))  # the state's step count before the bad update
                if nan_step >= 0:
                    msg = f"loss or gradient became NaN/Inf at step {nan_step + 1}"  # as the progress lines count
                    if config.nan_policy == "rollback" and rollbacks < 3:
                        rollbacks += 1
                        logging.warning("%s: skipping that batch and continuing from the last good state "
                                        "(rollback %d of 3)", msg, rollbacks)
                        state = state.replace(step=jnp.asarray(nan_step + 1, jnp.int32),
                                              nan_step=jnp.asarray(-1, jnp.int32))
                        if config.auto_param_layouts:  # a compiled step takes exactly its formats
                            state = jax.device_put(state, train_fn.input_formats[0][0])
                        step, pending = nan_step + 1, []  # the bad steps' metrics are dropped too
                        batches = iter(()) if data is None else data.train_batches(step)
                        continue
                    status, message = "nan", msg + (" (after 3 rollbacks)" if rollbacks else "")
                    newest = checkpointer.last_requested if checkpointer.last_requested is not None else start
                    kept = (f"the last good checkpoint (step {newest}) is kept in {checkpointer.directory}"
                            if newest else "no checkpoint had been written yet")
                    raise TrainingDiverged(f"{message}; stopped, and {kept} (set --config.nan_policy=rollback "
                                           "to skip the offending batch)")
            if at_log or stop:
                fetched = jax.device_get(pending)
                pending = []
                now = time.time()
                elapsed = now - t_log
                n_steps = step - log_step
                train_seconds += elapsed
                values = {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0]}
                values.update(learning_rate=float(lr_fn(step - 1)),
                              images_per_second=n_steps * config.batch_size / max(elapsed, 1e-9),
                              step_time_s=elapsed / max(n_steps, 1),
                              # Host time waiting for the next batch, per step (it may overlap
                              # device work still queued): near step_time_s, the input pipeline,
                              # not the device, sets the pace.
                              input_ms=1e3 * input_seconds / max(n_steps, 1))
                input_seconds = 0.0
                # Warned once per streak of two or more windows, the first window after a
                # (re)start not counted (it also holds the compile and the pipeline's warm-up):
                # a single slow window (a load spike) is no reason to warn. The host waits for each
                # batch while the device may still run queued steps, so input_ms approaches
                # step_time_s only when the pipeline is the slower of the two.
                starved = log_step > start and values["input_ms"] > 800 * values["step_time_s"]
                starved_windows = starved_windows + 1 if starved else 0
                if is_lead and starved_windows == 2:
                    logging.warning(
                        "the input pipeline sets the pace: %.1f ms of each %.1f ms step went to waiting "
                        "for the next batch; give it more CPU cores (--config.data_threads) or move "
                        "augmentation to the device", values["input_ms"], 1e3 * values["step_time_s"])
                writer.write(step, "train", values)
                if is_lead:
                    rate = values["step_time_s"]
                    print(f"step {step}/{total} ({100 * step / total:.1f}%)  loss {values['loss']:.4f}  "
                          f"train error {100 * values['error']:.2f}%  lr {values['learning_rate']:.4g}  "
                          f"{values['images_per_second']:.0f} img/s  {rate:.3f} s/step "
                          f"(input {values['input_ms']:.1f} ms)  "
                          f"ETA {_format_eta((total - step) * rate)}", flush=True)
                t_log, log_step = time.time(), step
            if at_eval:
                last_eval = evaluate(eval_fn, state, data, mesh, config, task)
                best = min(best, last_eval["error"])
                writer.write(step, "test", {k: v for k, v in last_eval.items() if k != "count"})
                if is_lead:
                    print(f"step {step}: test error {100 * last_eval['error']:.2f}% (top-5 "
                          f"{100 * last_eval['top5_error']:.2f}%) loss {last_eval['loss']:.4f} over "
                          f"{int(last_eval['count'])} examples", flush=True)
                t_log = time.time()
            if at_ckpt or stop:
                meta = {"train_seconds": train_seconds + time.time() - t_log,
                        "best_test_error": None if best == math.inf else float(best)}
                _save(checkpointer, step, state, meta, force=stop or step == total)
            if stop:
                status = "preempted" if signals.received == signal.SIGTERM else "interrupted"
                break
    except TrainingDiverged:
        _write_results(workdir, is_lead, config, status, message, step, step - timed_from, train_seconds, best, last_eval)
        raise
    finally:
        signals.restore()
        writer.close()
        try:
            checkpointer.wait()
        except Exception as e:  # an asynchronous save failed after it started
            reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
            raise CheckpointSaveError(f"the checkpoint at step {checkpointer.last_requested} could not be "
                                      f"written to {checkpointer.directory} ({reason})") from e
        finally:
            checkpointer.close()
    return _write_results(workdir, is_lead, config, status, message, step, step - timed_from, train_seconds, best, last_eval)


def _save(checkpointer, step, state, meta, force):
    try:
        checkpointer.save(step, state, meta, force=force)
    except Exception as e:
        reason = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        if force:
            raise CheckpointSaveError(f"the checkpoint at step {step} could not be written to "
                                      f"{checkpointer.directory} ({reason})") from e
        print(f"error: checkpoint save at step {step} failed ({reason}); training continues with the state "
              "in memory and retries at the next checkpoint", file=sys.stderr, flush=True)


def _write_results(workdir, is_lead, config, status, message, step, trained, train_seconds, best, last_eval):
    results = {
        "status": status,
        "message": message,
        "final_test_error": None if last_eval is None else float(last_eval["error"]),
        "final_test_top5_error": None if last_eval is None else float(last_eval["top5_error"]),
        "best_test_error": None if best == math.inf else float(best),
        "steps": int(step),
        "train_seconds": float(train_seconds),
        "images_per_second": float(trained * config.batch_size / train_seconds) if train_seconds else 0.0,
        "paper_error": config.paper_error,
        "config": json.loads(config.to_json_best_effort()),
    }
    if is_lead and status != "interrupted" and status != "preempted":
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results

"""Read a training workdir back: the one loader that `plot` and `report` share.

A workdir written by the trainer holds (the contract this module reads):

- `config.json`: the resolved config; used here: `experiment`, `paper_error` (the paper's test
  error in %, -1 when none), `seed`, `dataset`, `model`.
- `metrics.jsonl`: one JSON object per line, `{"step", "split": "train"|"test", ...}`. A resumed
  run may append lines for steps it already logged; the LATEST line for a (split, step) wins.
  A line that does not parse (say, cut short by a crash) is skipped and counted in
  `Run.bad_lines`.
- `results.json`: written only when training finished: `final_test_error`, `best_test_error`
  (fractions), `steps`, `train_seconds`, `images_per_second`, `config`, maybe `status`.

`metrics.jsonl` is the source of truth for curves; the TensorBoard files under `tb/` hold the
same numbers and are not read. Nothing here imports jax or tensorflow.

Errors in a `Run` are fractions (0..1), as the trainer writes them, except `paper_error`, which
is in % as the config stores it; the printing code converts to %.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from typing import Any, NoReturn

import numpy as np

CONFIG = "config.json"
METRICS = "metrics.jsonl"
RESULTS = "results.json"
# `results.json` statuses that mean "trained to the end, numbers usable"; absent means "ok".
OK_STATUSES = ("ok", "done", "finished", "completed")


class RunError(ValueError):
    """A workdir that cannot be read; the message names it and fits on one line."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One training workdir, read back.

    `train` and `test` map a metric name ("step", "loss", "error", ...) to a numpy array sorted
    by step, one entry per logged step (duplicates resolved, latest line wins); a metric that a
    line lacks is NaN there.
    """

    workdir: str
    config: dict[str, Any]
    train: dict[str, np.ndarray]
    test: dict[str, np.ndarray]
    results: dict[str, Any] | None
    bad_lines: int = 0

    @property
    def experiment(self) -> str:
        """The config's `experiment` name, or the directory's name when there is none."""
        name = self.config.get("experiment")
        if isinstance(name, str) and name:
            return name
        return os.path.basename(os.path.normpath(self.workdir))

    @property
    def seed(self) -> int | None:
        seed = self.config.get("seed")
        return seed if isinstance(seed, int) else None

    @property
    def paper_error(self) -> float | None:
        """The paper's test error in % for this config; None when the config has none (-1)."""
        value = self.config.get("paper_error")
        if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
            return float(value)
        return None

    @property
    def finished(self) -> bool:
        """Whether training wrote `results.json`."""
        return self.results is not None

    @property
    def status(self) -> str:
        """'unfinished' without `results.json`; else its `status` ('ok' when absent)."""
        if self.results is None:
            return "unfinished"
        return str(self.results.get("status", "ok"))

    @property
    def ok(self) -> bool:
        """Finished with an OK status and a finite final test error: counts in statistics."""
        return (
            self.finished
            and self.status.lower() in OK_STATUSES
            and _finite(self.results.get("final_test_error"))
        )

    @property
    def final_test_error(self) -> float | None:
        """Fraction. From `results.json` when finished, else the last logged evaluation."""
        if self.results is not None and _finite(self.results.get("final_test_error")):
            return float(self.results["final_test_error"])
        errors = self.test.get("error")
        if errors is not None and errors.size:
            return float(errors[-1])
        return None

    @property
    def best_test_error(self) -> float | None:
        """Fraction. From `results.json` when finished, else the lowest logged evaluation."""
        if self.results is not None and _finite(self.results.get("best_test_error")):
            return float(self.results["best_test_error"])
        errors = self.test.get("error")
        if errors is not None and np.isfinite(errors).any():
            return float(np.nanmin(errors))
        return None

    @property
    def steps(self) -> int | None:
        """Steps trained: `results.json`'s `steps`, else the last step logged in either split."""
        if self.results is not None and isinstance(self.results.get("steps"), int):
            return int(self.results["steps"])
        last = [int(s["step"][-1]) for s in (self.train, self.test) if s["step"].size]
        return max(last) if last else None


def load_run(workdir: str, require_metrics: bool = True) -> Run:
    """Reads `workdir`; raises `RunError` when it is missing or has no `metrics.jsonl`.

    With `require_metrics=False` a workdir without `metrics.jsonl` (a run that has not logged
    yet, or only its `results.json` was kept) loads with empty curves, as long as it holds at
    least one of the three files.
    """
    if not os.path.isdir(workdir):
        raise RunError(f"workdir {workdir!r} does not exist or is not a directory")
    metrics_path = os.path.join(workdir, METRICS)
    has_metrics = os.path.isfile(metrics_path)
    if require_metrics and not has_metrics:
        raise RunError(f"workdir {workdir!r} has no {METRICS}")
    config = _read_json(workdir, CONFIG)
    results = _read_json(workdir, RESULTS)
    if not has_metrics and config is None and results is None:
        raise RunError(f"workdir {workdir!r} has none of {CONFIG}, {METRICS}, {RESULTS}")
    if config is None and results is not None and isinstance(results.get("config"), dict):
        config = results["config"]
    records, bad_lines = _read_metrics(metrics_path) if has_metrics else ({}, 0)
    return Run(
        workdir=workdir,
        config=config or {},
        train=_columns(records, "train"),
        test=_columns(records, "test"),
        results=results,
        bad_lines=bad_lines,
    )


def split_workdirs(values: list[str]) -> list[str]:
    """Flattens `['a,b', 'c']` to `['a', 'b', 'c']`, dropping empties and repeats, in order."""
    out: list[str] = []
    for value in values:
        for part in value.split(","):
            part = part.strip()
            if part and part not in out:
                out.append(part)
    return out


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_json(workdir: str, name: str) -> dict[str, Any] | None:
    path = os.path.join(workdir, name)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise RunError(f"workdir {workdir!r}: cannot read {name}: {e}") from e
    if not isinstance(data, dict):
        raise RunError(f"workdir {workdir!r}: {name} is not a JSON object")
    return data


def _read_metrics(path: str) -> tuple[dict[tuple[str, int], dict[str, Any]], int]:
    """Returns {(split, step): latest record} and the number of lines that did not parse."""
    records: dict[tuple[str, int], dict[str, Any]] = {}
    bad = 0
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                record = json.loads(line)
                key = (str(record["split"]), int(record["step"]))
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                bad += 1
                continue
            records.pop(key, None)  # so that dict order is "last written" order too
            records[key] = record
    return records, bad


def _columns(records: dict[tuple[str, int], dict[str, Any]], split: str) -> dict[str, np.ndarray]:
    rows = sorted(((step, r) for (s, step), r in records.items() if s == split), key=lambda t: t[0])
    names: list[str] = []
    for _, r in rows:
        names.extend(k for k in r if k not in ("step", "split") and k not in names)
    columns = {"step": np.array([step for step, _ in rows], dtype=np.int64)}
    for name in names:
        columns[name] = np.array([_as_float(r.get(name)) for _, r in rows], dtype=np.float64)
    return columns


def _as_float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def fail(message: str) -> NoReturn:
    """For the command-line tools: one line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def load_runs_or_exit(workdirs: list[str], require_metrics: bool = True) -> list[Run]:
    """`load_run` for each workdir; the first that cannot be read ends the program (status 2)."""
    if not workdirs:
        fail("no workdirs given (--workdirs DIR [DIR ...])")
    runs = []
    for workdir in workdirs:
        try:
            runs.append(load_run(workdir, require_metrics=require_metrics))
        except RunError as e:
            fail(str(e))
    return runs

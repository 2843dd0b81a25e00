r"""Final test errors over seeds, per experiment, in the paper's Table 4 form.

    python -m resnet_v2_jax.report --workdirs DIR [DIR ...] [--json]

Runs are grouped by the `experiment` name in their `config.json` (the directory name when there
is none); runs of one experiment differ in seed. Per experiment it prints the number of runs and
the final test error in % with two decimals as "median (mean+-std)", the way He et al. 2016
report "4.62 (4.69+-0.20)" for ResNet-1001 over 5 runs, with the paper's number (the config's
`paper_error`, blank when -1) and median minus paper beside it.

The paper does not say which standard deviation it uses; this is the SAMPLE standard deviation
(numpy ddof=1). With a single run there is none: the line shows only the error and `std` is
null in JSON.

Only runs that finished count: `results.json` present, its `status` absent or ok, a finite
`final_test_error`. A run without `results.json` is listed as unfinished (with the step it
reached); one whose `results.json` says e.g. `"status": "nan"` is listed as failed. A group
whose runs' configs differ in more than the seed is flagged (`config_mismatch`): it then mixes
two recipes under one name.

`--json` prints one JSON object: `{"std": "sample (ddof=1)", "experiments": [summary, ...]}`
with the dicts `summarize()` returns. `--workdirs` takes the same forms as in `plot`
(`--workdirs a --workdirs b`, `--workdirs a,b`, `--workdirs a b`). A workdir that does not
exist is a one-line error naming it, exit status 2. Numbers come from `results.json` and
`metrics.jsonl`; the TensorBoard files are not read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from resnet_v2_jax.runs import Run, load_run, load_runs_or_exit, split_workdirs

__all__ = ["format_stats", "summarize", "summarize_runs", "summary_table"]

STD = "sample (ddof=1)"
# Config fields that may differ between runs of one experiment.
PER_RUN_FIELDS = ("seed", "workdir")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Only when run as a program, so that importing this module (and `plot`) defines none."""
    flags.DEFINE_multi_string(
        "workdirs", [], "Training workdirs: repeat the flag, separate with commas, or list them."
    )
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")


def summarize(workdirs: Sequence[str]) -> list[dict[str, Any]]:
    """Loads each workdir (raising `RunError` for a bad one) and summarizes per experiment."""
    return summarize_runs([load_run(w, require_metrics=False) for w in workdirs])


def summarize_runs(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """One dict per experiment, in order of first appearance. Errors are in %.

    Keys: experiment, n (runs counted), final_test_errors (their errors), median, mean, std
    (sample; None when n < 2), formatted ("4.62 (4.69+-0.20)"), paper_error (None when the
    config has none), difference (median - paper), runs (every run: workdir, seed, status,
    steps, final_test_error), unfinished (workdirs), failed (workdir + status),
    config_mismatch (dotted config keys, other than the seed, that differ inside the group).
    """
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.experiment, []).append(run)
    summaries = []
    for name, members in groups.items():
        counted = [r for r in members if r.ok]
        errors = [100 * r.final_test_error for r in counted]
        median, mean, std = _stats(errors)
        papers = sorted({r.paper_error for r in members if r.paper_error is not None})
        paper = papers[0] if len(papers) == 1 else None
        summaries.append(
            {
                "experiment": name,
                "n": len(counted),
                "final_test_errors": errors,
                "median": median,
                "mean": mean,
                "std": std,
                "formatted": format_stats(median, mean, std),
                "paper_error": paper,
                "paper_errors_disagree": papers if len(papers) > 1 else [],
                "difference": None if median is None or paper is None else median - paper,
                "runs": [_run_entry(r) for r in members],
                "unfinished": [r.workdir for r in members if not r.finished],
                "failed": [
                    {"workdir": r.workdir, "status": r.status} for r in members if r.finished and not r.ok
                ],
                "config_mismatch": _config_mismatch(members),
            }
        )
    return summaries


def format_stats(median: float | None, mean: float | None, std: float | None) -> str:
    """'4.62 (4.69+-0.20)'; '4.62' for a single run; '' for none."""
    if median is None:
        return ""
    if std is None:
        return f"{median:.2f}"
    return f"{median:.2f} ({mean:.2f}+-{std:.2f})"


def summary_table(summaries: Sequence[dict[str, Any]]) -> str:
    """The plain-text report of `summarize_runs`' output."""
    header = ["experiment", "runs", "test error % median (mean+-std)", "paper %", "difference"]
    rows = [
        [
            s["experiment"],
            str(s["n"]),
            s["formatted"] or "-",
            "" if s["paper_error"] is None else f"{s['paper_error']:.2f}",
            "" if s["difference"] is None else f"{s['difference']:+.2f}",
        ]
        for s in summaries
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    aligns = [str.ljust, str.rjust, str.ljust, str.rjust, str.rjust]

    def line(cells: list[str]) -> str:
        return "  ".join(a(c, w) for a, c, w in zip(aligns, cells, widths)).rstrip()

    lines = [line(header), line(["-" * w for w in widths])]
    for summary, row in zip(summaries, rows):
        lines.append(line(row))
        for entry in summary["runs"]:
            if entry["status"] == "unfinished":
                reached = "" if entry["steps"] is None else f" (step {entry['steps']})"
                lines.append(f"    unfinished{reached}: {entry['workdir']}")
        for entry in summary["failed"]:
            lines.append(f"    failed (status {entry['status']!r}): {entry['workdir']}")
        if summary["paper_errors_disagree"]:
            lines.append(f"    runs disagree on paper_error: {summary['paper_errors_disagree']}")
        if summary["config_mismatch"]:
            lines.append(f"    configs differ in: {', '.join(summary['config_mismatch'])}")
    lines.append(f"std: {STD} over finished runs; errors in %.")
    return "\n".join(lines)


def _stats(errors: list[float]) -> tuple[float | None, float | None, float | None]:
    if not errors:
        return None, None, None
    values = np.asarray(errors, dtype=np.float64)
    std = float(np.std(values, ddof=1)) if values.size > 1 else None
    return float(np.median(values)), float(np.mean(values)), std


def _run_entry(run: Run) -> dict[str, Any]:
    final = run.final_test_error
    return {
        "workdir": run.workdir,
        "seed": run.seed,
        "status": run.status,
        "steps": run.steps,
        "final_test_error": None if final is None or not math.isfinite(final) else 100 * final,
    }


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _config_mismatch(runs: Sequence[Run]) -> list[str]:
    flats = [_flatten(r.config) for r in runs if r.config]
    keys = sorted({k for flat in flats for k in flat})
    return [
        k
        for k in keys
        if k.rsplit(".", 1)[-1] not in PER_RUN_FIELDS
        and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1
    ]


def main(argv: Sequence[str]) -> None:
    runs = load_runs_or_exit(split_workdirs([*FLAGS.workdirs, *argv[1:]]), require_metrics=False)
    summaries = summarize_runs(runs)
    if FLAGS.json:
        print(json.dumps({"std": STD, "experiments": summaries}))
    else:
        print(summary_table(summaries))


if __name__ == "__main__":
    _define_flags()
    app.run(main)

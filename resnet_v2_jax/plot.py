r"""Paper-style training curves and a table of final errors for one or more training workdirs.

    python -m resnet_v2_jax.plot --workdirs DIR [DIR ...] --out curves.png [--title T]

As in He et al. 2016 (Fig. 1 and 6): against iterations, test error (%) as solid lines and
training loss as dashed lines, one colour per run, labelled by the config's `experiment` name
(the directory name when there is none; the seed is added when two runs share a name). The
paper's number, when the config has one, is a dotted line in the run's colour. `--layout panels`
(default) puts test error on a left panel and training loss on a right one; `--layout twin` puts
both on one axes with test error on the left y axis and loss on the right one, as in the paper.

It also prints a table: run, steps, final and best test error (%), the paper's error (%, blank
when the config has none) and final minus paper. A run without `results.json` (still training,
or crashed) is marked with `*` and its numbers come from its last logged evaluation.

`--workdirs` takes `--workdirs a --workdirs b`, `--workdirs a,b` and `--workdirs a b` (extra
positional arguments are workdirs too). The curves come from `metrics.jsonl`, the source of
truth; the TensorBoard files under `tb/` are not read. A workdir that does not exist or has no
`metrics.jsonl` is a one-line error naming it, exit status 2.

From a notebook: `runs = [load_run(d) for d in dirs]; plot_runs(runs, "c.png");
print(final_table(runs))`. `plot_runs` draws on a bare `matplotlib.figure.Figure` (Agg canvas),
so it never changes pyplot's backend, and returns the figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from absl import app, flags
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from resnet_v2_jax.runs import Run, RunError, fail, load_run, load_runs_or_exit, split_workdirs

__all__ = ["Run", "RunError", "final_table", "load_run", "plot_runs", "run_labels"]

LAYOUTS = ("panels", "twin")

FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Only when run as a program, so that importing this module (and `report`) defines none."""
    flags.DEFINE_multi_string(
        "workdirs", [], "Training workdirs: repeat the flag, separate with commas, or list them."
    )
    flags.DEFINE_string("out", None, "Where to write the figure (PNG, PDF, SVG: by extension).")
    flags.DEFINE_string("title", None, "Figure title.")
    flags.DEFINE_enum("layout", "panels", LAYOUTS, "Two panels, or one axes with two y axes.")
    flags.DEFINE_float("error_ymax", None, "Top of the test error axis in %; default: automatic.")
    flags.DEFINE_float("loss_ymax", None, "Top of the training loss axis; default: automatic.")
    flags.mark_flag_as_required("out")


def run_labels(runs: Sequence[Run]) -> list[str]:
    """The experiment name per run; seed (else directory) added where names repeat."""
    names = [r.experiment for r in runs]
    labels = []
    for run, name in zip(runs, names):
        if names.count(name) > 1:
            name = f"{name} seed={run.seed}" if run.seed is not None else f"{name} ({run.workdir})"
        labels.append(name)
    return labels


def plot_runs(
    runs: Sequence[Run],
    out_path: str | None,
    title: str | None = None,
    layout: str = "panels",
    error_ymax: float | None = None,
    loss_ymax: float | None = None,
) -> Figure:
    """Draws the curves of `runs`, writes them to `out_path` (unless None), returns the figure.

    The default y limits start at 0 and cut off the first iterations' large values so the part
    that matters stays readable (paper Fig. 1 shows test error 0-20% on CIFAR-10): the error axis
    tops at max(20%, 3 x the largest final error), the loss axis at max(1, 5 x the largest
    final loss), never above the largest value logged.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    labels = run_labels(runs)
    colors = _colors(len(runs))
    if layout == "panels":
        fig = Figure(figsize=(13, 4.8), layout="constrained")
        ax_err, ax_loss = fig.subplots(1, 2, sharex=True)
    else:
        fig = Figure(figsize=(8, 5.2), layout="constrained")
        ax_err = fig.subplots()
        ax_loss = ax_err.twinx()

    for run, label, color in zip(runs, labels, colors):
        test, train = run.test, run.train
        if test["step"].size and "error" in test:
            ax_err.plot(test["step"], 100 * test["error"], "-", color=color, lw=1.8, label=label)
        if train["step"].size and "loss" in train:
            loss_label = label if layout == "panels" else None
            ax_loss.plot(train["step"], train["loss"], "--", color=color, lw=1.0, label=loss_label)
        if run.paper_error is not None:
            ax_err.axhline(run.paper_error, color=color, ls=":", lw=1.0)

    ax_err.set_ylim(0, error_ymax or _error_top(runs))
    ax_loss.set_ylim(0, loss_ymax or _loss_top(runs))
    ax_err.set_ylabel("test error (%)")
    ax_loss.set_ylabel("training loss")
    for ax in {ax_err, ax_loss}:
        ax.set_xlabel("iterations")
        ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    ax_err.grid(True, alpha=0.3)

    style = [
        Line2D([], [], color="0.3", ls="-", lw=1.8, label="test error"),
        Line2D([], [], color="0.3", ls="--", lw=1.0, label="training loss"),
    ]
    if any(r.paper_error is not None for r in runs):
        style.append(Line2D([], [], color="0.3", ls=":", lw=1.0, label="paper test error"))
    if layout == "panels":
        ax_loss.grid(True, alpha=0.3)
        ax_err.set_title("test error (solid; dotted: paper)")
        ax_loss.set_title("training loss (dashed)")
        ax_err.legend(loc="upper right", fontsize="small")
    else:
        handles = ax_err.get_legend_handles_labels()[0] + style
        ax_err.legend(handles=handles, loc="upper right", fontsize="small")
    if title:
        fig.suptitle(title)
    if out_path:
        fig.savefig(out_path, dpi=120)
    return fig


def final_table(runs: Sequence[Run]) -> str:
    """A plain-text table: run, steps, final/best test error %, paper error %, difference."""
    header = ["run", "steps", "final test err %", "best test err %", "paper err %", "difference"]
    rows = []
    for run, label in zip(runs, run_labels(runs)):
        final, best, paper = run.final_test_error, run.best_test_error, run.paper_error
        final_pct = None if final is None else 100 * final
        diff = "" if final_pct is None or paper is None else f"{final_pct - paper:+.2f}"
        rows.append(
            [
                label if run.finished else f"{label} *",
                "" if run.steps is None else str(run.steps),
                _pct(final),
                _pct(best),
                "" if paper is None else f"{paper:.2f}",
                diff,
            ]
        )
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]).rstrip()

    lines = [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]
    unfinished = [r for r in runs if not r.finished]
    if unfinished:
        lines.append("* no results.json (unfinished): numbers from the last logged evaluation")
    for run in runs:
        if run.finished and run.status.lower() != "ok":
            lines.append(f"status {run.status!r}: {run.workdir}")
    return "\n".join(lines)


def _pct(fraction: float | None) -> str:
    return "" if fraction is None or not math.isfinite(fraction) else f"{100 * fraction:.2f}"


def _colors(n: int) -> list:
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _finite_max(arrays: list[np.ndarray]) -> float | None:
    values = [a[np.isfinite(a)] for a in arrays]
    values = [v for v in values if v.size]
    return float(max(v.max() for v in values)) if values else None


def _error_top(runs: Sequence[Run]) -> float:
    seen = _finite_max([100 * r.test["error"] for r in runs if "error" in r.test])
    finals = [100 * r.final_test_error for r in runs if r.final_test_error is not None]
    papers = [r.paper_error for r in runs if r.paper_error is not None]
    if seen is None:
        return max([*papers, 20.0]) * 1.1
    top = min(seen, max([20.0, 3 * max(finals, default=0.0)]))
    return max([top, *papers]) * 1.05


def _loss_top(runs: Sequence[Run]) -> float:
    losses = [r.train["loss"] for r in runs if "loss" in r.train]
    seen = _finite_max(losses)
    if seen is None:
        return 1.0
    lasts = []
    for loss in losses:
        tail = loss[np.isfinite(loss)]
        if tail.size:
            lasts.append(float(np.median(tail[-max(1, tail.size // 20) :])))
    return min(seen, max(1.0, 5 * max(lasts))) * 1.05


def main(argv: Sequence[str]) -> None:
    runs = load_runs_or_exit(split_workdirs([*FLAGS.workdirs, *argv[1:]]))
    print(final_table(runs))
    try:  # `--out figures/curves.png` makes figures/, as a user expects of an output path
        folder = os.path.dirname(os.path.abspath(FLAGS.out))
        if not os.path.exists(folder):  # (a file in its place: savefig's error says "Not a directory")
            os.makedirs(folder)
        plot_runs(runs, FLAGS.out, FLAGS.title, FLAGS.layout, FLAGS.error_ymax, FLAGS.loss_ymax)
    except OSError as e:
        fail(f"cannot write --out {FLAGS.out!r}: {e.strerror or e}")
    print(f"wrote {FLAGS.out}")


if __name__ == "__main__":
    _define_flags()
    app.run(main)

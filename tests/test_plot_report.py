"""plot and report read fake workdirs written to the trainer's contract; no jax, no tensorflow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from resnet_v2_jax import plot, report
from resnet_v2_jax.runs import RunError, load_run, split_workdirs

ROOT = Path(__file__).resolve().parents[1]
# The paper's Table 4 row for ResNet-1001 is "4.62 (4.69+-0.20)"; five seeds around it.
SEED_ERRORS_PCT = [4.62, 4.50, 4.80, 4.95, 4.58]
PAPER = 4.62


def make_workdir(
    root: Path,
    name: str,
    experiment: str = "cifar1001",
    seed: int = 0,
    paper_error: float = PAPER,
    final_pct: float | None = 4.62,
    steps: int = 1000,
    status: str | None = None,
) -> Path:
    """A workdir as the trainer leaves it; no results.json when `final_pct` is None."""
    d = root / name
    d.mkdir()
    config = {
        "experiment": experiment,
        "paper_error": paper_error,
        "seed": seed,
        "dataset": "cifar10",
        "model": {"depth": 1001, "unit": "full_preact", "shortcut": "identity", "block": "bottleneck"},
    }
    (d / "config.json").write_text(json.dumps(config))
    last = steps if final_pct is not None else steps // 2
    final = (final_pct if final_pct is not None else 30.0) / 100
    lines = []
    for step in range(0, last + 1, 50):
        frac = step / steps
        lines.append({
            "step": step, "split": "train", "loss": 2.3 * (1 - frac) + 0.05, "error": 0.9 * (1 - frac),
            "learning_rate": 0.1, "images_per_second": 1000.0, "step_time_s": 0.1,
        })  # fmt: skip
        if step % 250 == 0:
            err = final + (0.9 - final) * (1 - frac) ** 2
            lines.append({"step": step, "split": "test", "loss": 1.0, "error": err, "top5_error": err / 5})
    (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if final_pct is not None:
        results = {
            "final_test_error": final,
            "best_test_error": final - 0.001,
            "steps": steps,
            "train_seconds": 100.0,
            "images_per_second": 1000.0,
            "config": config,
        }
        if status is not None:
            results["status"] = status
        (d / "results.json").write_text(json.dumps(results))
    return d


def run_cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"resnet_v2_jax.{module}", *args],
        cwd=ROOT,
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def seeds(tmp_path) -> list[Path]:
    return [make_workdir(tmp_path, f"s{i}", seed=i, final_pct=e) for i, e in enumerate(SEED_ERRORS_PCT)]


def expected_line() -> str:
    values = np.array(SEED_ERRORS_PCT)
    return f"{np.median(values):.2f} ({np.mean(values):.2f}+-{np.std(values, ddof=1):.2f})"


def test_report_median_mean_sample_std(seeds):
    (s,) = report.summarize([str(d) for d in seeds])
    values = np.array(SEED_ERRORS_PCT)
    assert s["experiment"] == "cifar1001" and s["n"] == 5
    assert s["median"] == pytest.approx(np.median(values))
    assert s["mean"] == pytest.approx(np.mean(values))
    assert s["std"] == pytest.approx(np.std(values, ddof=1))
    assert s["std"] != pytest.approx(np.std(values, ddof=0))
    assert s["formatted"] == expected_line()
    assert s["formatted"].startswith("4.62 (4.69+-")
    assert s["paper_error"] == PAPER
    assert s["difference"] == pytest.approx(np.median(values) - PAPER)
    assert s["unfinished"] == [] and s["failed"] == [] and s["config_mismatch"] == []


def test_report_cli_text_and_json(seeds):
    text = run_cli("report", "--workdirs", ",".join(str(d) for d in seeds))
    assert text.returncode == 0, text.stderr
    (row,) = [line for line in text.stdout.splitlines() if line.startswith("cifar1001")]
    assert expected_line() in row and f"{PAPER:.2f}" in row and "ddof=1" in text.stdout
    as_json = run_cli("report", "--json", "--workdirs", str(seeds[0]), "--workdirs", *map(str, seeds[1:]))
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    (s,) = data["experiments"]
    assert s["n"] == 5 and s["formatted"] == expected_line()


def test_report_unfinished_and_failed_not_counted(tmp_path, seeds):
    unfinished = make_workdir(tmp_path, "running", seed=7, final_pct=None)
    failed = make_workdir(tmp_path, "diverged", seed=8, final_pct=4.0, status="nan")
    other = make_workdir(tmp_path, "r110", experiment="cifar110", paper_error=-1, final_pct=6.5)
    dirs = [str(d) for d in [*seeds, unfinished, failed, other]]
    s1001, s110 = report.summarize(dirs)
    assert s1001["n"] == 5 and s1001["formatted"] == expected_line()
    assert s1001["unfinished"] == [str(unfinished)]
    assert s1001["failed"] == [{"workdir": str(failed), "status": "nan"}]
    assert s110["n"] == 1 and s110["std"] is None and s110["formatted"] == "6.50"
    assert s110["paper_error"] is None and s110["difference"] is None
    text = report.summary_table([s1001, s110])
    assert f"unfinished (step 500): {unfinished}" in text
    assert f"failed (status 'nan'): {failed}" in text


def test_duplicate_split_step_latest_wins(tmp_path):
    d = tmp_path / "resumed"
    d.mkdir()
    lines = [
        {"step": 100, "split": "train", "loss": 9.0, "error": 0.9},
        {"step": 100, "split": "test", "loss": 9.0, "error": 0.8},
        {"step": 200, "split": "train", "loss": 8.0, "error": 0.7},
        # The run crashed here and resumed from step 0: it logs 100 and 200 again.
        {"step": 100, "split": "train", "loss": 1.0, "error": 0.3},
        {"step": 100, "split": "test", "loss": 1.0, "error": 0.25, "top5_error": 0.05},
        {"step": 200, "split": "train", "loss": 0.5, "error": 0.2},
    ]
    text = "".join(json.dumps(x) + "\n" for x in lines) + '{"step": 300, "split": "tr'  # cut short
    (d / "metrics.jsonl").write_text(text)
    run = load_run(str(d))
    assert run.train["step"].tolist() == [100, 200]
    assert run.train["loss"].tolist() == [1.0, 0.5]
    assert run.test["error"].tolist() == [0.25]
    assert run.test["top5_error"].tolist() == [0.05]
    assert run.bad_lines == 1
    assert not run.finished and run.final_test_error == 0.25 and run.steps == 200
    assert run.experiment == "resumed" and run.paper_error is None


def test_plot_writes_png_and_table(tmp_path, seeds):
    other = make_workdir(tmp_path, "r110", experiment="cifar110", paper_error=-1, final_pct=6.5)
    running = make_workdir(tmp_path, "running", experiment="cifar164", paper_error=5.46, final_pct=None)
    runs = [load_run(str(d)) for d in [seeds[3], other, running]]
    for layout in plot.LAYOUTS:
        out = tmp_path / f"curves_{layout}.png"
        plot.plot_runs(runs, str(out), title="test", layout=layout)
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    rows = {line.split()[0]: line.split() for line in plot.final_table(runs).splitlines()}
    # run, steps, final %, best %, paper %, final - paper
    assert rows["cifar1001"] == ["cifar1001", "1000", "4.95", "4.85", "4.62", f"{4.95 - 4.62:+.2f}"]
    assert rows["cifar110"] == ["cifar110", "1000", "6.50", "6.40"]  # no paper number: blank
    assert rows["cifar164"][:3] == ["cifar164", "*", "500"]  # unfinished, marked


def test_plot_cli_workdir_forms(tmp_path, seeds):
    out = tmp_path / "c.png"
    a, b, c = (str(d) for d in seeds[:3])
    proc = run_cli("plot", "--workdirs", a, b, "--workdirs", c, "--out", str(out), "--title", "t")
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    # Same experiment name three times: the seed tells the rows apart.
    assert all(f"cifar1001 seed={i}" in proc.stdout for i in range(3))
    assert split_workdirs(["a,b", "c", "a", " ,d"]) == ["a", "b", "c", "d"]


@pytest.mark.parametrize("module", ["plot", "report"])
def test_missing_workdir_exits_2(tmp_path, seeds, module):
    missing = tmp_path / "no_such_run"
    out = ["--out", str(tmp_path / "x.png")] if module == "plot" else []
    proc = run_cli(module, "--workdirs", f"{seeds[0]},{missing}", *out)
    assert proc.returncode == 2
    assert str(missing) in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "x.png").exists()


def test_plot_makes_the_out_folder_and_an_unwritable_out_is_one_error_line(tmp_path, seeds):
    """`--out figures/curves.png` makes figures/; an --out it cannot write (here under a file) is one
    `error:` line and status 2, where it was matplotlib's traceback after the plotting."""
    out = tmp_path / "figures" / "sub" / "curves.png"
    proc = run_cli("plot", "--workdirs", str(seeds[0]), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:4] == b"\x89PNG"
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    proc = run_cli("plot", "--workdirs", str(seeds[0]), "--out", str(blocker / "curves.png"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: cannot write --out '{blocker / 'curves.png'}': Not a directory"]


def test_plot_needs_metrics(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps({"experiment": "x"}))
    proc = run_cli("plot", "--workdirs", str(empty), "--out", str(tmp_path / "x.png"))
    assert proc.returncode == 2 and str(empty) in proc.stderr and "metrics.jsonl" in proc.stderr
    with pytest.raises(RunError, match="metrics.jsonl"):
        load_run(str(empty))
    # report lists a run that has not logged yet as unfinished instead.
    (s,) = report.summarize([str(empty)])
    assert s["n"] == 0 and s["unfinished"] == [str(empty)] and s["formatted"] == ""

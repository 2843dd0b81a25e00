"""The benchmark CLI on a tiny network: one JSON object with the documented keys and consistent values,
no TensorFlow imported, `--eval` and the plain Flax baseline, and a bad config as a usage error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from helpers import load_file, xla_flags

from resnet_v2_jax import benchmark, summary
from resnet_v2_jax import config as config_lib

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config=experiments/cifar10_resnet110.py", "--config.model.depth=8", "--config.batch_size=8",
        "--steps=2", "--warmup=1", "--json"]
# The CLI as `python -m resnet_v2_jax.benchmark` runs it; at exit it says whether TensorFlow was imported.
PROBE = ("import atexit, sys; atexit.register(lambda: print('TF_LOADED', 'tensorflow' in sys.modules)); "
         "from resnet_v2_jax import benchmark; benchmark.cli_main()")


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def json_lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def tiny_macs() -> int:
    c = config_lib.default()
    c.model.depth, c.model.block, c.model.shortcut_type = 8, "basic", "A"  # as cifar10_resnet110
    c.dataset, c.image_size = "synthetic", 32
    return summary.analyse(c)["macs"]


def check_result(r: dict, mode: str) -> None:
    assert set(benchmark.KEYS) <= set(r)
    assert r["mode"] == mode and r["batch"] == 8 and r["model"] == "cifar8" and r["depth"] == 8
    assert r["compile_s"] > 0 and r["step_ms"] > 0
    assert r["step_ms_min"] <= r["step_ms"] <= r["step_ms_max"]
    assert 0 < r["dispatch_ms"] <= r["step_ms_max"]  # launching a step is part of its blocked time
    assert r["images_per_second"] == pytest.approx(8 / (r["step_ms"] / 1000), rel=1e-3)
    assert r["loop_ms"] > 0 and r["loop_images_per_second"] == pytest.approx(8 / (r["loop_ms"] / 1000), rel=1e-3)
    factor = 6 if mode == "train" else 2
    assert r["macs_per_image"] == tiny_macs()
    assert r["tflops"] == pytest.approx(factor * r["macs_per_image"] * 8 / (r["step_ms"] / 1000) / 1e12, rel=1e-3)
    assert r["jax_version"] and r["device_kind"] and r["num_devices"] >= 1
    assert r["dtype"] == "float32" and r["date"]


class FakeRunner:
    """Records what time_runners asks of a runner; a blocked step takes 3 s, a back-to-back one 2 s."""

    def __init__(self, name, log):
        self.name, self.log = name, log

    def step(self):
        self.log.append(f"{self.name}.step")
        return 3.0

    def loop(self, steps):
        self.log.append(f"{self.name}.loop({steps})")
        return 2.0


def test_back_to_back_steps_follow_the_blocked_ones_and_are_reported_apart():
    """The blocked median and the back-to-back mean are two figures of the same step: the loop runs
    once, after every blocked step (alternating A B), and --timing=loop reports it for both."""
    log = []
    firsts, times, loops = benchmark.time_runners([FakeRunner("a", log), FakeRunner("b", log)], steps=2, warmup=1)
    assert log == ["a.step", "b.step"] * 4 + ["a.loop(2)", "b.loop(2)"]
    assert firsts == [3.0, 3.0] and times == [[3.0, 3.0]] * 2 and loops == [2.0, 2.0]
    log.clear()
    firsts, times, loops = benchmark.time_runners([FakeRunner("a", log)], steps=2, warmup=1, timing="loop")
    assert log == ["a.step", "a.step", "a.loop(2)"] and times == [[2.0, 2.0]] and loops == [2.0]


def test_train_step_json_and_no_tensorflow(tmp_path):
    also = ("--config=experiments/cifar10_resnet110.py --config.model.depth=14 --config.batch_size=8 --steps=1 --eval"
            " --config.model.bn_partial_sums=True --config.bn_group_size=4")
    p = run_cli(*TINY, "--peak_tflops=1.0", "--profile_steps=1", "--distinct_batches=2", f"--also={also}",
                f"--profile_dir={tmp_path}")
    assert p.returncode == 0, p.stderr
    r, second = json_lines(p.stdout)
    assert r["distinct_batches"] == 2 and second["distinct_batches"] == 1
    # The --also run: its own flags and overrides, in the same process (the device's peak is the process's).
    assert (second["depth"], second["mode"], second["steps"], second["warmup"]) == (14, "eval", 1, 2)
    # Each run says on stderr what comes before its compile, the long silent part.
    said = [line for line in p.stderr.splitlines() if "compiling, then" in line]
    assert said == [f"{r['experiment']}: compiling, then {r['warmup']} warm-up and {r['steps']} timed steps ...",
                    "cifar10_resnet110: compiling, then 2 warm-up and 1 timed steps ..."]
    assert second["bn_partial_sums"] is True and r["bn_partial_sums"] is False and r["bn_recompute_mask"] is False
    # The experiment's BN groups of 64 (the paper's two GPUs) are the whole batch of 8; 4 are 4.
    assert (r["bn_group"], second["bn_group"]) == (8, 4)
    assert second["xla_flags"] == r["xla_flags"] and second["peak_bytes_in_use"] is None and "profile" not in second
    check_result(r, "train")
    assert r["setup_s"] >= r["compile_s"]  # config to compiled step includes the compile
    # The real profiler trace of one more step, read back: a CPU has no device events, only the host's.
    assert r["profile"]["device_events"] == 0 and "/host:CPU" in r["profile"]["processes"]
    # --profile_dir: every kernel's time (none on a CPU) and the compiled step that ran, read back by
    # bench/kernel_bandwidth.py's loader and gpu_launches' HLO reader.
    kernels_path, hlo_path = r["profile"]["saved"]
    assert re.fullmatch(re.escape(str(tmp_path)) + r"/cifar8_b8_[0-9a-f]{8}\.kernels\.json", kernels_path)
    prefix = kernels_path.removesuffix(".kernels.json")
    assert hlo_path == prefix + ".hlo.gz"
    kernels, hlo = _bench_module("kernel_bandwidth").load(prefix)
    assert kernels == [] and "ENTRY" in hlo and _gpu_launches().kernel_rows(hlo)
    assert r["xla_flags"].endswith(config_lib.CIFAR_XLA_FLAGS)  # the CIFAR config's flags, set by main
    # A profiling process keeps XLA's CUDA graphs while traced, so the profiled steps are the timed ones.
    assert benchmark.PROFILE_XLA_FLAGS in r["xla_flags"].split()
    assert r["impl"] == "ours" and r["scan"] is False  # cifar10_resnet110.py runs unrolled
    assert r["input"] == "rows+augment"  # as training: CIFAR rows gathered and augmented on device
    assert r["peak_fraction"] == pytest.approx(r["tflops"] / 1.0, rel=1e-3)
    assert r["loss"] is not None and r["loss"] == r["loss"]  # finite, not NaN
    assert "TF_LOADED False" in p.stdout


def tiny_config():
    c = _load("cifar10_resnet110")
    c.model.depth, c.batch_size = 8, 8
    return c


def test_eval_step():
    check_result(benchmark.run(tiny_config(), steps=2, warmup=0, eval_mode=True), "eval")


def test_compile_only_reports_xla_peak_memory_and_runs_nothing():
    r = benchmark.run(tiny_config(), compile_only=True)
    assert set(benchmark.KEYS) <= set(r) and r["compile_s"] > 0
    assert r["step_ms"] is None and r["images_per_second"] is None and r["steps"] == 0
    # One step holds at least its arguments: float32 params and SGD momentum (2 x 4 bytes each).
    assert r["compiled_peak_bytes"] >= 8 * r["params"]
    assert "XLA's peak memory" in benchmark.format_result(r)


@pytest.mark.parametrize("augment, expected", [(True, "uint8+colour"), (False, "uint8")])
def test_imagenet_steps_get_uint8_pixels_as_in_training(augment, expected):
    c = _load("imagenet_resnet50")  # the inception recipe: colour jitter and lighting on device
    c.model.depth, c.model.block, c.model.width = 18, "basic", 0.125
    c.batch_size, c.image_size, c.augment = 2, 32, augment
    r = benchmark.run(c, compile_only=True)
    assert r["input"] == expected and r["family"] == "imagenet"


def test_compare_with_the_plain_flax_baseline():
    ours, plain = benchmark.compare(tiny_config(), steps=2, warmup=0)
    check_result(ours, "train")
    check_result(plain, "train")
    assert ours["impl"] == "ours" and plain["impl"] == "plain_flax" and plain["params"] == ours["params"]


@pytest.mark.parametrize("name, overrides", [
    ("cifar10_resnet110", {}),  # basic units, option A shortcuts
    ("cifar10_resnet164", {}),  # bottleneck units, option B projections
    ("cifar1001", {"model.depth": 164}),  # stride on the first 1x1, as resnet-1k-layers
    ("imagenet_resnet50", {}),
])
def test_plain_flax_is_the_same_network(name, overrides):
    """The same architecture, so the same parameter count as summary.analyse counts for ours."""
    c = _load(name)
    for k, v in overrides.items():
        c.model[k.split(".")[1]] = v
    c = benchmark.prepare(c)
    plain = benchmark.load_plain_flax()
    assert plain.param_count(c, (c.image_size, c.image_size, 3)) == summary.analyse(c)["params"]


def _tiny(name):
    c = _load(name)
    if name == "imagenet_resnet50":  # uint8 pixels, colour jitter and lighting on device
        c.model.depth, c.model.block, c.model.width, c.image_size = 18, "basic", 0.125, 32
    else:  # a 50,000-row uint8 train set on device, gathered, pad-cropped and flipped in the step
        c.model.depth = 8
    c.batch_size = 4
    return c


@pytest.mark.parametrize("name, baseline", [("cifar10_resnet110", False), ("imagenet_resnet50", False),
                                            ("cifar10_resnet110", True)])
def test_lower_step_from_shapes_compiles_to_the_program_setup_times(name, baseline):
    """bench/gpu_launches.py counts the program of benchmark.lower_step, built from shapes alone: the
    same program, to the character, as the one `setup` compiles from arrays on the devices."""
    from resnet_v2_jax import step as step_lib

    runner, _ = benchmark.setup(_tiny(name), baseline=baseline)
    lowered = benchmark.lower_step(_tiny(name), step_lib.make_mesh(), baseline=baseline)
    assert _instructions(lowered.compile().as_text()) == _instructions(runner.compiled.as_text())


def _instructions(hlo: str) -> list[str]:
    """The compiled program's instructions without source locations, sharding annotations (the
    baseline's arrays carry none in `setup`, the shapes do here) or names, in a canonical order."""
    lines = [line for line in hlo.splitlines() if line.startswith("  ")]
    lines = [re.sub(r", (sharding|frontend_attributes)=.*$", "", re.sub(r", metadata=\{[^}]*\}", "", line))
             for line in lines]
    return sorted(re.sub(r"%[\w.\-]+", "%x", line) for line in lines)


def _bench_module(name: str):
    """bench/NAME.py, imported as scripts there run (bench/ on the path)."""
    sys.path.insert(0, str(ROOT / "bench"))
    return load_file(f"bench/{name}.py")


def _gpu_launches():
    return _bench_module("gpu_launches")


LAUNCH_HLO = """HloModule m

%body (p: (s32[], f32[8])) -> (s32[], f32[8]) {
  %p = (s32[], f32[8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %x = f32[8] get-tuple-element(%p), index=1
  %f1 = f32[8] fusion(%x), kind=kLoop, calls=%fused_a
  %cc = f32[8] custom-call(%f1), custom_call_target="__cudnn$convForward"
  %fs = ((f32[8]), f32[8]) fusion-start(%cc), kind=kLoop, calls=%fused_a
  %fd = f32[8] fusion-done(%fs)
  %one = s32[] constant(1)
  %n = s32[] fusion(%i), kind=kLoop, calls=%fused_b
  ROOT %t = (s32[], f32[8]) tuple(%n, %fd)
}

%cond (q: (s32[], f32[8])) -> pred[] {
  %q = (s32[], f32[8]) parameter(0)
  ROOT %c = pred[] fusion(%q), kind=kLoop, calls=%fused_c
}

%command_buffer (r: f32[8]) -> f32[8] {
  %r = f32[8] parameter(0)
  %g1 = f32[8] fusion(%r), kind=kLoop, calls=%fused_a
  ROOT %g2 = f32[8] fusion(%g1), kind=kLoop, calls=%fused_a
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %a = f32[8] parameter(0)
  %z = s32[] constant(0)
  %t0 = (s32[], f32[8]) tuple(%z, %a)
  %w = (s32[], f32[8]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"17"}}
  %w2 = (s32[], f32[8]) while(%w), condition=%cond, body=%body
  %y = f32[8] get-tuple-element(%w2), index=1
  %cb = f32[8] call(%y), to_apply=%command_buffer
  ROOT %out = f32[8] copy(%cb)
}
"""


def test_count_launches_reads_loops_command_buffers_and_kinds():
    """17 iterations of 4 launches (known trip count; an async fusion's start launches, its done waits);
    an unknown trip count costs its condition and the predicate's read-back each time, counted once
    here; a command buffer is one launch; plus the copy."""
    got = _gpu_launches().count_launches(LAUNCH_HLO)
    assert got["loops"] == [{"trip_count": 17, "launches_per_iteration": 4},
                            {"trip_count": None, "launches_per_iteration": 6}]
    assert got["launches"] == 17 * 4 + 6 + 1 + 1
    assert got["by_kind"] == {"fusion": 17 * 2 + 3, "custom-call __cudnn$convForward": 18, "fusion-start": 18,
                              "fusion-done": 18, "command_buffer": 1, "copy": 1}



BYTES_HLO = """HloModule m

%slice_unit (s: f32[3,8], i: s32[]) -> f32[8] {
  %s = f32[3,8] parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = f32[1,8] dynamic-slice(%s, %i, %z), dynamic_slice_sizes={1,8}
  %b = f32[8] bitcast(%ds)
  ROOT %e = f32[8] exponential(%b)
}

%store_unit (buf: f32[3,8], x: f32[8], i: s32[]) -> f32[3,8] {
  %buf = f32[3,8] parameter(0)
  %x = f32[8] parameter(1)
  %i = s32[] parameter(2)
  %z = s32[] constant(0)
  %n = f32[8] negate(%x)
  %u = f32[1,8] bitcast(%n)
  ROOT %d = f32[3,8] dynamic-update-slice(%buf, %u, %i, %z)
}

%whole (w: f32[8]) -> f32[8] {
  %w = f32[8] parameter(0)
  ROOT %r = f32[8] negate(%w)
}

%body (p: (s32[], f32[3,8], f32[3,8])) -> (s32[], f32[3,8], f32[3,8]) {
  %p = (s32[], f32[3,8], f32[3,8]) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %stack = f32[3,8] get-tuple-element(%p), index=1
  %out = f32[3,8] get-tuple-element(%p), index=2
  %unit = f32[8] fusion(%stack, %i), kind=kLoop, calls=%slice_unit
  %conv = (f32[8], u8[1000]) custom-call(%unit), custom_call_target="__cudnn$convForward"
  %y = f32[8] get-tuple-element(%conv), index=0
  %stored = f32[3,8] fusion(%out, %y, %i), kind=kLoop, calls=%store_unit
  ROOT %t = (s32[], f32[3,8], f32[3,8]) tuple(%i, %stack, %stored)
}

%cond (q: (s32[], f32[3,8], f32[3,8])) -> pred[] {
  %q = (s32[], f32[3,8], f32[3,8]) parameter(0)
  ROOT %c = pred[] constant(true)
}

%command_buffer (r: f32[8]) -> f32[8] {
  %r = f32[8] parameter(0)
  ROOT %g = f32[8] fusion(%r), kind=kLoop, calls=%whole
}

ENTRY %main (a: f32[3,8], v: f32[8]) -> f32[8] {
  %a = f32[3,8] parameter(0)
  %v = f32[8] parameter(1)
  %z = s32[] constant(0)
  %t0 = (s32[], f32[3,8], f32[3,8]) tuple(%z, %a, %a)
  %w = (s32[], f32[3,8], f32[3,8]) while(%t0), condition=%cond, body=%body, backend_config={"known_trip_count":{"n":"3"}}
  %cb = f32[8] call(%v), to_apply=%command_buffer
  ROOT %out = f32[8] copy(%cb)
}
"""


def test_kernel_bytes_counts_views_in_place_updates_and_workspaces():
    """3 iterations of: a fusion taking one f32[8] row of a stacked f32[3,8] (32 bytes read, not 96,
    plus the s32 index; 32 written); a cuDNN call (32 read, 32 written, its u8 workspace not counted);
    a fusion storing a row into a stacked buffer in place (the row's 32 read and 32 written, the
    buffer not read). Then a command buffer's kernel and a copy, 64 bytes each."""
    got = _gpu_launches().kernel_bytes(BYTES_HLO)
    assert got["bytes_by_kind"] == {"unit": 3 * (32 + 4 + 32), "stored": 3 * (32 + 4 + 32),
                                    "custom-call __cudnn$convForward": 3 * 64, "g": 64, "copy": 64}
    assert got["kernel_bytes"] == 728


def test_kernel_bytes_see_through_a_cast_between_views():
    """JAX 0.11.2's XLA casts a loop iteration's block of 4 units, then slices one unit out of it: the
    fusion reads that unit's 8 bf16 (16 bytes) of the stacked bf16[3,4,8], not the block's 64."""
    body = [(op, line) for op, line in _gpu_launches().parse_hlo("""HloModule m

%unit_of_block (s: bf16[3,4,8], i: s32[]) -> f32[8] {
  %s = bf16[3,4,8] parameter(0)
  %i = s32[] parameter(1)
  %z = s32[] constant(0)
  %ds = bf16[1,4,8] dynamic-slice(%s, %i, %z, %z), dynamic_slice_sizes={1,4,8}
  %c = f32[1,4,8] convert(%ds)
  %sl = f32[1,1,8] slice(%c), slice={[0:1], [3:4], [0:8]}
  %b = f32[8] bitcast(%sl)
  ROOT %e = f32[8] exponential(%b)
}

ENTRY %main (a: bf16[3,4,8], j: s32[]) -> f32[8] {
  %a = bf16[3,4,8] parameter(0)
  %j = s32[] parameter(1)
  ROOT %f = f32[8] fusion(%a, %j), kind=kLoop, calls=%unit_of_block
}
""")[0]["unit_of_block"]]
    reads, written = _gpu_launches()._fusion_traffic(body)
    assert reads == {0: 16} and written is None


def test_kernel_bandwidth_sets_each_fusion_time_beside_its_bytes(tmp_path):
    """bench/kernel_bandwidth.py on BYTES_HLO and a profile of its kernels: `unit` runs 3 times a step,
    68 bytes each, in 2.04e-7 ms a step (1 TB/s); `g` once, 64 bytes in 1.6e-8 ms (4 TB/s); the cuDNN
    kernel has a library name, so it is summed by kind. At 2 TB/s `unit` is 1.02e-7 ms too slow and
    `g` faster than needed (never counted as a saving)."""
    import gzip

    kb = _bench_module("kernel_bandwidth")
    rows = _gpu_launches().kernel_rows(BYTES_HLO)
    assert rows["unit"] == {"kind": "unit", "calls": 3, "bytes": 68} and rows["g"]["calls"] == 1
    kernels = [{"name": "unit", "ms": 2.04e-7, "count": 3.0}, {"name": "sm90_xmma_fprop_implicit_gemm",
               "ms": 0.5, "count": 3.0}, {"name": "g", "ms": 1.6e-8, "count": 1.0}]
    r = kb.join(kernels, BYTES_HLO, tbps=2.0)
    assert [row["name"] for row in r["rows"]] == ["unit", "g"] and r["unmatched_ms"] == {"convolution": 0.5}
    unit, g = r["rows"]
    assert unit["gb"] == pytest.approx(204e-9) and unit["tbps"] == pytest.approx(1.0)
    assert unit["above_ms"] == pytest.approx(1.02e-7) and g["tbps"] == pytest.approx(4.0)
    assert r["above_ms"] == pytest.approx(1.02e-7) and r["matched"] == 2
    # The CLI on saved files, as benchmark --profile_dir writes them; a wrong prefix is one line.
    (tmp_path / "p.kernels.json").write_text(json.dumps(kernels))
    with gzip.open(tmp_path / "p.hlo.gz", "wt") as f:
        f.write(BYTES_HLO)
    p = subprocess.run([sys.executable, "bench/kernel_bandwidth.py", str(tmp_path / "p"), "--tbps=2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "2 kernels matched to the HLO" in p.stdout and "convolution 0.500 ms" in p.stdout
    assert "| unit | unit | 0.000 | 3 | 0.000 | 1.00 | 0.000 |" in p.stdout
    p = subprocess.run([sys.executable, "bench/kernel_bandwidth.py", str(tmp_path / "q")], cwd=ROOT,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.startswith("error: No such file or directory") and "Traceback" not in p.stderr


PTX = """//
.visible .entry unit(
\t.param .u64 .ptr .align 16 unit_param_0
)
{
\tld.global.nc.v4.b16 \t{%rs1, %rs2, %rs3, %rs4}, [%rd1];
\tld.global.nc.b8 \t%rs5, [%rd2];
\t@%p1 bra \t$L__BB0_2;
\tst.global.v2.b32 \t[%rd3], {%r1, %r2};
}
.visible .entry g(
\t.param .u64 .ptr .align 16 g_param_0
)
{
\tld.global.nc.b16 \t%rs1, [%rd1];
\tld.global.nc.b16 \t%rs2, [%rd2];
}
"""


def test_kernel_code_reads_branches_and_loads_from_ptx():
    """gpu_launches --code: each kernel's PTX facts beside its bytes, largest first; a fusion that XLA
    gives another's kernel (`deduplicated_name`) gets that kernel's facts; library calls none."""
    g = _gpu_launches()
    ptx = g.ptx_kernels(PTX)
    assert ptx == {"unit": {"lines": 7, "branches": 1, "scalar_loads": 1, "vector_loads": 1},
                   "g": {"lines": 5, "branches": 0, "scalar_loads": 2, "vector_loads": 0}}
    hlo = BYTES_HLO.replace("%stored = f32[3,8] fusion(%out, %y, %i), kind=kLoop, calls=%store_unit",
                            '%stored = f32[3,8] fusion(%out, %y, %i), kind=kLoop, calls=%store_unit, '
                            'metadata={op_name="x" deduplicated_name="unit"}')  # as XLA writes it
    table = g.code_table(hlo, ptx, top=5)
    assert [(r["name"], r["bytes"]) for r in table] == [("unit", 204), ("stored", 204), ("conv", 192), ("g", 64),
                                                        ("out", 64)]
    assert table[1]["scalar_loads"] == 1 and table[3]["scalar_loads"] == 2 and "lines" not in table[2]


def test_kernel_bytes_of_cpu_compiled_programs():
    """On XLA's own programs: an elementwise function of 1,000 floats reads and writes 4,000 bytes;
    a scan over 10 rows of a 10 x 1,000 array reads and writes each row once (XLA also zero-fills
    the stacked result, 40,000 bytes), never the whole array per iteration (800,000 bytes)."""
    import jax
    import jax.numpy as jnp

    g = _gpu_launches()
    x, xs = jnp.zeros(1000), jnp.zeros((10, 1000))
    assert g.kernel_bytes(jax.jit(lambda x: jnp.exp(x) + 1).lower(x).compile().as_text())["kernel_bytes"] == 8000
    scan = jax.jit(lambda xs: jax.lax.scan(lambda c, x: (c + x.sum(), jnp.exp(x)), 0.0, xs))
    got = g.kernel_bytes(scan.lower(xs).compile().as_text())["kernel_bytes"]
    assert 10 * 8000 + 40_000 <= got < 4 * 10 * 8000


def test_by_op_groups_kernels_by_the_jax_operation_that_made_them():
    """On a CPU-compiled program: each kernel under the named scope of the JAX code that made it, with
    its bytes, and counted as small below 1 MiB (2,400,000 bytes are not, 80 are)."""
    import jax
    import jax.numpy as jnp

    def f(x, y):
        with jax.named_scope("first"):
            a = jnp.exp(x)
        with jax.named_scope("second"):
            b = jnp.sin(y) * 2
        return a, b

    text = jax.jit(f).lower(jnp.zeros(300_000), jnp.zeros(10)).compile().as_text()
    got = {group["op"]: group for group in _gpu_launches().by_op(text, top=5)}
    assert set(got) == {"first/exp", "second/mul"}
    assert [(got[op]["launches"], got[op]["bytes"], got[op]["small_launches"]) for op in sorted(got)] == [
        (1, 2_400_000, 0), (1, 80, 1)]
    assert len(_gpu_launches().by_op(text, top=1)) == 1


def test_count_launches_sees_a_scanned_stage_run_once_per_unit():
    """On a CPU-compiled step: the scanned ResNet-20 (two scanned units a stage) has loops of trip count 2;
    unrolled it has none and launches fewer operations (no slicing of stacked parameters)."""
    from resnet_v2_jax import step as step_lib

    counts = {}
    for scan in (True, False):
        c = _tiny("cifar10_resnet110")
        c.model.depth, c.model.scan = 20, scan
        counts[scan] = _gpu_launches().count_launches(
            benchmark.lower_step(c, step_lib.make_mesh()).compile().as_text())
    def unit_loops(scan):  # the CPU's random-bits loops have 5 iterations
        return [loop for loop in counts[scan]["loops"] if loop["trip_count"] == 2]

    assert len(unit_loops(True)) == 6  # 3 stages, forward and backward
    assert unit_loops(False) == []
    assert counts[True]["launches"] > counts[False]["launches"] > 0


def _load(name):
    return load_file(f"experiments/{name}.py").get_config()


BAD = [
    ["--config=experiments/cifar10_resnet110.py", "--config.model.depth=9"],
    ["--config=experiments/cifar10_resnet110.py", "--config.model.unit=nope"],
    ["--config=experiments/no_such.py"],
    ["--config=experiments/cifar10_resnet110.py", "--config.no_such_field=1"],
    ["--config=experiments/cifar10_resnet110.py", "--steps=0"],
    ["--config=experiments/cifar10_resnet110.py", "--distinct_batches=0"],
    ["--config=experiments/cifar10_resnet110.py", "--peak_tflops=-1"],  # a negative share of the peak
    ["--config=experiments/cifar10_resnet110.py", "--config.xla_flags=gpu_autotune_level=0"],
    ["--config=experiments/cifar10_resnet110.py", "--profile_steps=2", "--compare"],
    ["--config=experiments/cifar10_resnet110.py", "--profile_dir=/tmp/x"],  # saves a profile it does not take
    # --also runs share the process, so its XLA flags: ImageNet's differ from CIFAR's.
    ["--config=experiments/cifar10_resnet110.py", "--also=--config=experiments/imagenet_resnet50.py"],
    ["--config=experiments/cifar10_resnet110.py", "--also=--config=experiments/cifar10_resnet110.py --steps=0"],
    ["--config=experiments/cifar10_resnet110.py", "--also=--config=experiments/cifar10_resnet110.py --config.nope=1"],
    ["--config=experiments/cifar10_resnet110.py",
     "--also=--config=experiments/cifar10_resnet110.py --compilation_cache_dir=/tmp/x"],
    ["--config=experiments/cifar10_resnet110.py", "--also=--config=experiments/cifar10_resnet110.py --also=x"],
]


def test_bad_config_is_a_usage_error():
    procs = [subprocess.Popen([sys.executable, "-c", PROBE, *args, "--json"], cwd=ROOT, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for args in BAD]
    for args, p in zip(BAD, procs):
        out, err = p.communicate(timeout=300)
        assert p.returncode == 2, (args, out, err)
        assert err.strip().startswith("error:") and "Traceback" not in err, (args, err)


def test_chart_separates_measured_compile_only_and_failed_lines(tmp_path):
    """bench/chart.py, which turns the GPU call's JSONL into the table and PNG: measured rows are
    labelled by how they were fed, compile-only and failed lines are listed, never drawn."""
    chart = load_file("bench/chart.py")
    base = {"impl": "ours", "mode": "train", "model": "in50", "batch": 256, "dtype": "bfloat16", "scan": True,
            "step_ms": 25.0, "images_per_second": 10240.0, "compile_s": 30.0, "peak_bytes_in_use": 2**34,
            "device_kind": "NVIDIA H200"}
    lines = [dict(base, input="uint8+colour"), dict(base, input="uint8+colour", xla_gpu_perf_flags=True),
             dict(base, input="uint8+colour", remat=True, remat_policy="conv"),
             dict(base, model="cifar1001", batch=64, input="rows+augment", scan_unroll=10,  # profiled: same label
                  xla_flags=f"{benchmark.PROFILE_XLA_FLAGS} --xla_gpu_enable_command_buffer=WHILE"),
             dict(base, model="cifar110", batch=128, scan=False, input="rows+augment"),
             dict(base, model="cifar110", batch=128, scan=False, input="rows+augment", distinct_batches=2),
             dict(base, model="cifar110", batch=128, scan=False, input="rows+augment", bn_partial_sums=True),
             dict(base, input="uint8+colour", bn_recompute_mask=True),
             dict(base, model="cifar1001", batch=64, input="rows+augment", scan_unroll=10, scan_unit_reads=True),
             dict(base, input="uint8+colour", conv1x1_fusion=True),
             dict(base, model="cifar110", batch=128, input="rows+augment", loop_ms=20.0, loop_images_per_second=6400.0),
             dict(base, model="cifar164", batch=128, input="rows+augment", peak_bytes_in_use=None,
                  compiled_peak_bytes=2**31),  # an --also run: XLA's allocation stands in
             {"peer": "torch-eager", "model": "in50", "batch": 256, "img_s": 5000.0},
             dict(dict.fromkeys(benchmark.KEYS), impl="ours", model="cifar1001", batch=64, timing="compile only",
                  compile_s=20.0, compiled_peak_bytes=2**33),
             {"impl": "ours", "failed": "--config=experiments/cifar1001_b128.py"},
             {"compare": "cifar110", "ratio": 0.9}]
    path = tmp_path / "r.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    rows, compiled, missing = chart.load([path])
    assert sorted(r["impl"] for r in rows) == sorted([
        "ours (uint8+colour input)", "ours (uint8+colour input) +XLA GPU flags",
        "ours (uint8+colour input) +remat(conv)",
        "ours (rows+augment input) +unroll10 +enable_command_buffer",
        "ours-unrolled (rows+augment input)", "ours-unrolled (rows+augment input) +2 batches",
        "ours-unrolled (rows+augment input) +BN partial sums", "ours (uint8+colour input) +BN mask recomputed",
        "ours (rows+augment input) +unroll10 +unit reads", "ours (uint8+colour input) +BN-ReLU in 1x1 GEMMs",
        "ours (rows+augment input)", "ours (rows+augment input)", "torch-eager"])
    assert [r["model"] for r in compiled] == ["cifar1001"] and len(missing) == 1
    table = chart.markdown(rows, missing, compiled)
    assert "| in50 | 256 | train | ours (uint8+colour input) | bfloat16 | 25.0 | 10240.0 | blocked median | 30.0 | 16.00 |" in table
    # A line with back-to-back steps is drawn with them, as the peer is timed; its blocked median is named.
    assert ("| cifar110 | 128 | train | ours (rows+augment input) | bfloat16 | 20.0 | 6400.0 | back to back (blocked "
            "median 25.0 ms) | 30.0 | 16.00 |") in table
    assert "| in50 | 256 | train | torch-eager | bf16-autocast |  | 5000.0 | back to back |" in table
    assert "Compile only: cifar1001 batch 64" in table and "8.00 GiB" in table
    assert "| cifar164 | 128 | train | ours (rows+augment input) | bfloat16 | 25.0 | 10240.0 | blocked median | 30.0 | 2.00 (XLA's) |" in table
    assert "Not measured: " in table and "cifar1001_b128" in table
    chart.chart(rows, str(tmp_path / "t.png"), "test")
    assert (tmp_path / "t.png").stat().st_size > 1000
    # One dtype: bars are named by implementation. Two (a CPU float32 and bf16 comparison): by both.
    assert "torch-eager" in chart.bars(rows)[1]
    cpu = [dict(base, model="cifar110", batch=32, dtype=d, images_per_second=v) for d, v in
           (("float32", 50.0), ("bfloat16", 40.0))]
    cpu += [{"peer": "torch-eager", "model": "cifar110", "batch": 32, "img_s": 160.0},
            {"peer": "torch-eager", "model": "cifar110", "batch": 32, "img_s": 88.0, "dtype": "float32"}]
    path.write_text("\n".join(json.dumps(x) for x in cpu) + "\n")
    groups, labels, value = chart.bars(chart.load([path])[0])
    assert labels == ["ours bf16", "ours f32", "torch-eager bf16",
                      "torch-eager f32"]
    assert value[("cifar110", 32, "train", "torch-eager f32")] == 88.0 and len(value) == 4
    # --short_labels: one bar per implementation as configured; two lines for one bar are refused.
    short = chart.short_labels(chart.load([path])[0])
    assert sorted(r["impl"] for r in short) == ["ours", "ours", "torch-eager", "torch-eager"]
    with pytest.raises(SystemExit, match="more than one line for"):
        chart.short_labels(chart.load([path])[0] * 2)


def test_scan_empty_check_allocates_scan_outputs_uninitialised_on_gpu_and_changes_no_number(monkeypatch):
    """bench/scan_empty_check.py, the GPU measurement of scan's zero-filled stacked outputs: after its
    patch a scan lowered for CUDA allocates its stacked output (AllocateBuffer) where JAX zero-fills
    it, and on this CPU its benchmark line reports the loss of the unpatched step."""

    import jax
    import jax.numpy as jnp
    from jax._src.lax.control_flow import loops

    check = load_file("bench/scan_empty_check.py")

    def cuda_text():  # a new function each time: jit caches lowerings per function
        def f(x):
            return jax.lax.scan(lambda c, _: (c * 2, c), x, None, length=4)[1]
        return jax.jit(f).trace(jnp.ones(3)).lower(lowering_platforms=("cuda",)).as_text()

    assert "AllocateBuffer" not in cuda_text()
    monkeypatch.setattr(loops, "_empty_array", loops._empty_array)  # restored after the test
    check.patch_scan()
    assert "AllocateBuffer" in cuda_text()
    args = ["--config=experiments/cifar1001.py", "--config.model.depth=11", "--config.batch_size=8", "--steps=1",
            "--warmup=0", "--json"]
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scan_empty_check.py"), *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    (line,) = json_lines(p.stdout)
    (plain,) = json_lines(run_cli(*args).stdout)
    assert line["impl"] == "ours_scan_empty" and line["scan"] is True and line["loss"] == plain["loss"]


def test_bn_sums_check_weights_each_shape_by_resnet50s_bns():
    """bn_sums_check's step estimate: ResNet-50's 16 bottleneck units have 3 BNs each, plus the final
    one, 49, over the 11 shapes the check times; a shape's time counts once per BN of that shape."""
    check = _bench_module("bn_sums_check")
    counts = check.resnet50_bn_shapes()
    assert sum(counts.values()) == 3 * 16 + 1 and set(counts) == set(check.SHAPES)
    assert (counts["56x64"], counts["14x256"], counts["14x1024"], counts["7x2048"]) == (7, 11, 6, 3)
    rows = [{"shape": "256x14x1024", "pass": "backward", "impl": "xla", "us": 10.0},
            {"shape": "256x7x2048", "pass": "backward", "impl": "xla", "us": 2.5},
            {"shape": "256x7x2048", "pass": "backward", "impl": "pallas:x", "error": "no plan"}]
    (line, best) = check.summaries(rows, counts)
    assert line["step_us"] == 6 * 10.0 + 3 * 2.5 and len(line["missing"]) == 9
    assert best["impl"] == "best_per_shape" and best["step_us"] == line["step_us"]
    rows += [{"shape": "256x14x1024", "pass": "backward", "impl": "pallas:x", "us": 4.0},
             {"shape": "256x7x64", "pass": "backward", "impl": "pallas:x", "us": 0.5}]  # no ResNet-50 shape
    *_, best = check.summaries(rows, counts)
    assert best["step_us"] == 6 * 4.0 + 3 * 2.5 and best["choices"] == {"14x1024": "pallas:x", "7x2048": "xla"}


def test_tiling_check_runs_the_benchmark_with_the_variants_tilings(monkeypatch):
    """bench/tiling_check.py, the whole-step timing of a column_sums.Tiling: it runs the benchmark
    (scan_empty_check.run_marked) after giving BN's sums the variant's tilings, which plan
    ResNet-50's 56x56x256 differently, marks its lines, and leaves the benchmark its flags."""
    from resnet_v2_jax import column_sums

    check = _bench_module("tiling_check")
    import scan_empty_check

    seen = []
    monkeypatch.setattr(scan_empty_check, "run_marked",
                        lambda impl: seen.append((impl, column_sums.FORWARD, column_sums.BACKWARD)))
    for name in ("FORWARD", "BACKWARD"):
        monkeypatch.setattr(column_sums, name, getattr(column_sums, name))  # restored after the test
    forward, backward = column_sums.FORWARD, column_sums.BACKWARD
    argv = ["tiling_check.py", "bwd_tile4k", "--steps=2"]
    check.main(argv)
    assert argv == ["tiling_check.py", "--steps=2"] and seen == [("ours_bwd_tile4k", forward, forward)]
    for variant in ("sm132", "p1k"):  # each variant patches a fresh process's defaults
        column_sums.FORWARD, column_sums.BACKWARD = forward, backward
        check.main(["tiling_check.py", variant])
    assert seen[1] == ("ours_sm132", forward._replace(sms=132), backward._replace(sms=132))
    assert seen[2] == ("ours_p1k", forward._replace(programs=1056), backward._replace(programs=1056))
    rows = 256 * 56 * 56
    assert column_sums.plan(rows, 256, 1, forward) == (128, 32, 98)  # bn_sums.jsonl's plans
    assert column_sums.plan(rows, 256, 1, backward) == (128, 64, 49)
    assert column_sums.plan(rows, 256, 1, seen[1][2]) == (128, 64, 64)
    with pytest.raises(SystemExit, match="VARIANT one of bwd_tile4k, sm132, p1k"):
        check.main(["tiling_check.py", "--steps=2"])


def test_colour_cost_counts_at_least_the_bytes_the_input_work_must_move():
    """bench/colour_cost.py, the GPU-time estimate of the ImageNet step's on-device input work:
    normalising reads n uint8 bytes and writes 4n float32 bytes; the colour jitter adds passes."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "colour_cost.py"), "--batch=2", "--size=32"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    colour, norm = json_lines(p.stdout)
    n = 2 * 32 * 32 * 3
    assert colour["work"] == "colour+normalise" and norm["work"] == "normalise"
    assert 5 * n <= norm["bytes_accessed"] < colour["bytes_accessed"]


def test_peer_f32_runs_the_peer_without_autocast_and_labels_its_line(tmp_path):
    """bench/peer_f32.py, the float32 CPU run of the PyTorch peer, tried on a stand-in torch (CI has
    none): the peer must see `torch.autocast` as a no-op, and its JSON line gains dtype float32."""
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("def autocast(*a, **k):\n    raise RuntimeError('autocast used')\n")
    peer = tmp_path / "peer.py"
    peer.write_text(textwrap.dedent("""\
        import json, sys, torch
        with torch.autocast(device_type="cpu"):
            pass
        print("a warning line")
        print(json.dumps({"peer": "torch-eager", "model": sys.argv[1], "img_s": 1.0}))
    """))
    env = dict(os.environ, PYTHONPATH=str(fake.parent))
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "peer_f32.py"), str(peer), "cifar110"],
                       capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0] == "a warning line"
    (line,) = json_lines(p.stdout)
    assert line == {"peer": "torch-eager", "model": "cifar110", "img_s": 1.0, "dtype": "float32"}


def test_cpu_conv_parts_times_every_part_at_the_three_cifar_shapes():
    """bench/cpu_conv_parts.py, which BENCHMARKS.md cites for the CPU gap to PyTorch."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "cpu_conv_parts.py"), "--batch=2", "--calls=1"],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    rows = json_lines(p.stdout)
    assert [r["shape"] for r in rows] == ["2x32x32x16", "2x16x16x32", "2x8x8x64"]
    assert all(r[f"xla_{part}_ms"] > 0 for r in rows for part in ("fwd", "dx", "dw"))


def test_trace_summary_per_step_device_time_of_a_known_trace():
    """trace_summary.summarize on a hand-made trace of two steps: a GPU process with two streams
    (one overlap), host events that must not count, and the categories the kernel names give."""
    from resnet_v2_jax import trace_summary

    def meta(pid, name):
        return {"ph": "M", "name": "process_name", "pid": pid, "args": {"name": name}}

    def x(pid, tid, name, ts, dur, **args):
        return {"ph": "X", "pid": pid, "tid": tid, "name": name, "ts": ts, "dur": dur, "args": args}

    def thread(pid, tid, name):
        return {"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": name}}

    events = [meta(1, "/host:CPU"), meta(7, "/device:GPU:0"), thread(7, 1, "Stream #13(Compute)"),
              thread(7, 2, "Stream #14"), thread(7, 9, "XLA Modules"),
              x(7, 9, "jit_train_step(123)", 50, 2700),  # the device's module row: spans the kernels, ignored
              x(1, 1, "ThunkExecutor::Execute", 0, 5000),  # host: ignored
              x(7, 1, "sm90_xmma_fprop_implicit_gemm", 100, 400),  # convolution
              x(7, 2, "input_reduce_fusion.3", 300, 300),  # reduction, overlapping the conv by 200 us
              x(7, 1, "loop_maximum_fusion.1", 1000, 100),  # fusion
              x(7, 1, "Memcpy DtoD", 1200, 50, hlo_op="copy.1"),  # copy
              x(7, 1, "sm90_xmma_fprop_implicit_gemm", 2100, 400),  # second step
              x(7, 1, "nvjet_tst_weird_kernel", 2600, 100),  # other
              {}]  # JAX's perfetto JSON ends with an empty event (google/perfetto issue 6251)
    s = trace_summary.summarize({"traceEvents": events}, steps=2)
    assert s["device_events"] == 6 and s["kernels_per_step"] == 3.0
    assert s["processes"] == ["/device:GPU:0", "/host:CPU"]
    assert s["device_threads"] == ["Stream #13(Compute)", "Stream #14", "XLA Modules"]
    assert s["span_ms"] == pytest.approx((2700 - 100) / 2e3)
    assert s["busy_ms"] == pytest.approx((500 + 100 + 50 + 400 + 100) / 2e3)  # the overlap counted once
    assert s["kernel_ms"] == pytest.approx((400 + 300 + 100 + 50 + 400 + 100) / 2e3)
    assert s["idle_ms"] == pytest.approx(s["span_ms"] - s["busy_ms"])
    assert {k: v["count"] for k, v in s["by_category"].items()} == {
        "convolution": 1.0, "reduction": 0.5, "fusion": 0.5, "copy": 0.5, "other": 0.5}
    assert s["by_category"]["convolution"]["ms"] == pytest.approx(0.4)
    assert s["top"][0] == {"name": "sm90_xmma_fprop_implicit_gemm", "ms": 0.4, "count": 1.0}
    assert trace_summary.kernel_table({"traceEvents": events}, steps=2) == [  # every kernel, uncut
        {"name": "sm90_xmma_fprop_implicit_gemm", "ms": 0.4, "count": 1.0},
        {"name": "input_reduce_fusion.3", "ms": 0.15, "count": 0.5},
        {"name": "loop_maximum_fusion.1", "ms": 0.05, "count": 0.5},
        {"name": "nvjet_tst_weird_kernel", "ms": 0.05, "count": 0.5},
        {"name": "Memcpy DtoD", "ms": 0.025, "count": 0.5}]
    assert s["by_duration"] == {  # 400, 300, 400 us; 100, 100; 50 (two steps)
        "0-3us": {"ms": 0.0, "count": 0.0}, "3-10us": {"ms": 0.0, "count": 0.0},
        "10-30us": {"ms": 0.0, "count": 0.0}, ">=30us": {"ms": 0.675, "count": 3.0}}
    line = dict(dict.fromkeys(benchmark.KEYS, 1.0), impl="ours", mode="train", model="cifar8", experiment="x",
                dtype="bfloat16", scan=False, device_kind="NVIDIA H200", jax_version="0", profile=s)
    assert ("3 kernels: convolution 0.40 ms (1), reduction 0.15 ms (0.5)" in benchmark.format_result(line)
            and "kernels by duration: 0-3us 0.00 ms (0), 3-10us 0.00 ms (0), 10-30us 0.00 ms (0), >=30us 0.68 ms (3)"
            in benchmark.format_result(line)
            and "host, per step (inclusive): ThunkExecutor::Execute 2.50 ms (0.5)" in benchmark.format_result(line))
    tiny = [meta(7, "/device:GPU:0"), thread(7, 1, "Stream #1")] + [
        x(7, 1, "fusion", 10 * i, d) for i, d in enumerate((1.5, 2.9, 3.0, 9.9, 10, 29.9, 30, 250))]
    assert {k: v["count"] for k, v in trace_summary.summarize({"traceEvents": tiny}, steps=1)["by_duration"].items()} == {
        "0-3us": 2.0, "3-10us": 2.0, "10-30us": 2.0, ">=30us": 2.0}
    assert s["host_top"] == [{"name": "ThunkExecutor::Execute", "ms": 2.5, "count": 0.5}]  # host events only
    assert trace_summary.summarize({"traceEvents": events[:2] + events[6:7]}, steps=2) == {
        "steps": 2, "device_events": 0, "processes": ["/device:GPU:0", "/host:CPU"], "device_threads": [],
        "host_top": [{"name": "ThunkExecutor::Execute", "ms": 2.5, "count": 0.5}]}
    nested = [meta(1, "/host:CPU"), x(1, 1, "Execute", 0, 900), x(1, 1, "CommandBuffer::Update", 100, 600),
              x(1, 1, "Execute", 1000, 700), x(1, 1, "CommandBuffer::Update", 1100, 500), x(1, 1, "Launch", 1650, 20),
              x(1, 2, "$benchmark.py:129 loop", 0, 1700)]  # the Python tracer's: left out
    assert trace_summary.summarize({"traceEvents": nested}, steps=2, top=2)["host_top"] == [
        {"name": "Execute", "ms": 0.8, "count": 1.0}, {"name": "CommandBuffer::Update", "ms": 0.55, "count": 1.0}]
    # A device process whose threads are not named as streams: all of them count.
    other = [meta(7, "/device:TPU:0"), thread(7, 1, "TensorCore"), x(7, 1, "fusion.1", 0, 10)]
    assert trace_summary.summarize({"traceEvents": other}, steps=1)["kernels_per_step"] == 1.0


def test_a_failing_profile_is_reported_in_the_line_not_raised(monkeypatch):
    """The profile never ran on a GPU yet: a trace it cannot read must not cost the timed line."""
    from resnet_v2_jax import trace_summary

    def unreadable(log_dir):
        raise ValueError("no perfetto trace under " + log_dir)

    class Idle:  # stands in for a Runner: the profiler traces whatever runs, here nothing
        def loop(self, steps):
            return 0.0

    monkeypatch.setattr(trace_summary, "load_perfetto", unreadable)
    out = benchmark.profile(Idle(), 1)
    assert set(out) == {"error"} and out["error"].startswith("ValueError: no perfetto trace under ")
    line = dict(dict.fromkeys(benchmark.KEYS, 1.0), impl="ours", mode="train", model="cifar8", experiment="x",
                dtype="float32", scan=False, device_kind="cpu", jax_version="0", distinct_batches=2, profile=out)
    text = benchmark.format_result(line)
    assert "profile failed: ValueError: no perfetto trace under " in text and "fed 2 batches in turn" in text


def test_a_run_that_fails_on_the_device_is_one_line_and_the_next_run_goes_on():
    """An --also run after one that fails (here a stand-in for XLA's out-of-memory error): one line on
    stderr naming the experiment, the next run's JSON, exit status 1."""
    code = textwrap.dedent("""
        from resnet_v2_jax import benchmark
        real = benchmark.run
        def run(config, **kw):
            if config.model.depth == 14:
                raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 99 bytes.\\nthe rest")
            return real(config, **kw)
        benchmark.run = run
        benchmark.cli_main()
    """)
    also = "--also=" + " ".join(TINY[:4]) + " --steps=1 --warmup=0"
    p = subprocess.run([sys.executable, "-c", code, *TINY[:1], "--config.model.depth=14", *TINY[2:], also],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1, p.stderr
    assert "error: cifar10_resnet110: RuntimeError: RESOURCE_EXHAUSTED: Out of memory allocating 99 bytes." in p.stderr
    assert "Traceback" not in p.stderr and "the rest" not in p.stderr
    (r,) = json_lines(p.stdout)
    assert r["depth"] == 8 and r["steps"] == 1
    assert benchmark.PROFILE_XLA_FLAGS not in (r["xla_flags"] or "")  # set only where a run profiles


def test_an_xla_without_the_profiling_flag_profiles_without_it():
    """bench/gpu_lib.sh sets $RESNET_V2_PROFILE_XLA_FLAGS empty where the GPU's XLA does not know
    the flag (XLA would abort the process): the run then profiles with the config's flags alone."""
    env = dict(os.environ, RESNET_V2_PROFILE_XLA_FLAGS="")
    p = subprocess.run([sys.executable, "-m", "resnet_v2_jax.benchmark", *TINY, "--steps=1", "--warmup=0",
                        "--profile_steps=1"], cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr
    (r,) = json_lines(p.stdout)
    ran = r["xla_flags"].split()
    assert set(config_lib.CIFAR_XLA_FLAGS.split()) <= set(ran) and not any("during_profiling" in f for f in ran)
    # A CPU trace has no device events, but the host's are there: XLA's executor ran the step.
    assert any(e["name"].startswith("ThunkExecutor::Execute") for e in r["profile"]["host_top"]), r["profile"]


def test_distinct_batches_are_the_batch_rolled_into_buffers_of_their_own():
    """What --distinct_batches feeds in turn: same shapes, dtypes and shardings, other contents and
    other device buffers (a graph replayed with new input addresses, as in training)."""
    import jax.numpy as jnp

    batch = {"index": jnp.arange(8, dtype=jnp.int32), "label": 2 * jnp.arange(8, dtype=jnp.int32)}
    a, b, c = benchmark.distinct_batches(batch, 3)
    assert a is batch
    assert b["index"].tolist() == [7, 0, 1, 2, 3, 4, 5, 6] and c["label"].tolist() == [12, 14, 0, 2, 4, 6, 8, 10]
    assert len({x["index"].unsafe_buffer_pointer() for x in (a, b, c)}) == 3
    assert b["index"].sharding == batch["index"].sharding and b["index"].dtype == jnp.int32
    with pytest.raises(ValueError, match="distinct_batches=0 must be >= 1"):
        benchmark.distinct_batches(batch, 0)


def test_runs_that_differ_in_how_the_step_compiles_share_one_compiled_init():
    """A process that times one model several ways (--also) compiles its initial state once: the
    runs whose configs differ only in compile-only fields (checkpoint.COMPILE_ONLY_FIELDS) reuse it
    and start from the same state; a model with other parameters gets its own."""
    import jax
    import numpy as np

    def tiny(**model):
        c = config_lib.default()
        c.model.depth, c.model.block, c.model.width = 8, "basic", 0.25
        c.dataset, c.image_size, c.batch_size = "synthetic", 16, 4
        for k, v in model.items():
            c.model[k] = v
        return c

    from resnet_v2_jax import step as step_lib

    mesh = step_lib.make_mesh()

    def init(config):
        return benchmark._init_state(step_lib.make_task(config, (16, 16, 3)), config, 0, mesh)

    benchmark._INITS.clear()
    states = [init(tiny(**kw)) for kw in (dict(), dict(bn_recompute_output=False, scan_unroll=2), dict(remat=True))]
    assert len(benchmark._INITS) == 1
    own = step_lib.init_state(step_lib.make_task(tiny(remat=True), (16, 16, 3)), 0, mesh)
    for a, b, c in zip(jax.tree.leaves(states[0]), jax.tree.leaves(states[2]), jax.tree.leaves(own)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    init(tiny(depth=14))
    assert len(benchmark._INITS) == 2


def test_bn_sums_check_times_xla_and_the_pallas_kernel_and_checks_their_sums(capsys):
    """bench/bn_sums_check.py, the GPU timing of BN's sums alone (model.bn_pallas_sums): on this CPU
    (the kernel under Pallas's interpreter) one line per (pass, implementation), the kernel's sums
    equal to XLA's to float32 rounding, and a shape with no plan said as such."""
    from resnet_v2_jax import column_sums

    check = _bench_module("bn_sums_check")
    platforms = column_sums.PLATFORMS
    try:
        assert check.main(["--batch=2", "--reps=2", "--shapes=7x64,7x48", "--variants=tile4k_w4,tile8k_w8"]) == 0
    finally:
        column_sums.PLATFORMS = platforms
    out = json_lines(capsys.readouterr().out)
    lines, summary = [r for r in out if "shape" in r], [r for r in out if "summary" in r]
    assert [(r["shape"], r["pass"], r["impl"]) for r in lines] == [
        (s, p, i) for s in ("2x7x64", "2x7x48") for p in ("forward", "backward")
        for i in ("xla", "pallas:tile4k_w4", "pallas:tile8k_w8")]
    # one summary per (pass, implementation) timed and a best per pass; 7x64 is no ResNet-50 shape,
    # so all 11 are missing
    assert len(summary) == 8 and all(r["step_us"] == 0 and len(r["missing"]) == 11 for r in summary), summary
    kernel = [r for r in lines if r["impl"] != "xla" and r["channels"] == 64]
    assert len(kernel) == 4 and all(r["max_rel_diff"] < 1e-5 and r["us"] >= 0 for r in kernel), kernel
    assert all(r["error"] == "no plan" for r in lines if r["impl"] != "xla" and r["channels"] == 48)
    # each pass's own tiling is marked: 4096 values for the forward, 8192 for the backward
    assert [(r["pass"], r["impl"]) for r in kernel if r["default"]] == [
        ("forward", "pallas:tile4k_w4"), ("backward", "pallas:tile8k_w8")]


def test_auto_layouts_and_explicit_data_parallel_run_the_step_with_the_same_loss():
    """config.auto_param_layouts: the benchmark compiles the step with XLA-chosen state layouts and
    puts the state into them (step.compile_train); on a CPU XLA keeps them row-major, so the same
    loss as the plain step in the same process, and the line says which ran."""
    also = " ".join(TINY) + " --config.auto_param_layouts=True"
    explicit = " ".join(TINY) + " --config.explicit_data_parallel=True"
    p = run_cli(*TINY, f"--also={also}", f"--also={explicit}")
    assert p.returncode == 0, p.stderr
    r, second, third = json_lines(p.stdout)
    assert (r["auto_param_layouts"], second["auto_param_layouts"]) == (False, True)
    assert second["loss"] == r["loss"] and second["images_per_second"] > 0
    # config.explicit_data_parallel: the step in a shard_map, here over this one device
    assert (r["explicit_data_parallel"], third["explicit_data_parallel"]) == (False, True)
    assert abs(third["loss"] - r["loss"]) <= 1e-6 * abs(r["loss"])


def test_bf16_grad_sum_check_models_the_three_ways_to_sum_device_shares(capsys):
    """bench/bf16_grad_sum_check.py: 512 shares of 1.0 summed in bfloat16 one add at a time stall
    at 256 (256 + 1 rounds back to 256: an 8-bit significand), the float32 sum of the rounded
    shares is 512, one rounding of the exact sum 512. Above 1 bfloat16's values are 2^-7 apart:
    1 + 2^-9 rounds down, 1 + 3 x 2^-9 up, and the ties 1 + 2^-8 and 1 + 3 x 2^-8 to the even
    neighbour (1, 1 + 2^-6). One value moves by at most 2^-8 of itself; on a small network's real
    shares one rounding's relative L2 error stays under 2^-9, as it does over many values, and the
    bfloat16 all-reduce over 4 devices loses more than the float32 one; the bfloat16 network, and
    the float32 one on images rounded to bfloat16, move the gradient by more than one rounding
    (were the dtype or the rounding not applied, they would be 0)."""
    check = _bench_module("bf16_grad_sum_check")
    sums = check.paths(np.ones((512, 3)))
    assert sums["sharded"].tolist() == [256.0] * 3
    assert sums["explicit"].tolist() == sums["one_device"].tolist() == [512.0] * 3
    assert check.bf16(np.array([1 + 2**-9, 1 + 3 * 2**-9, 1 + 2**-8, 1 + 3 * 2**-8])).tolist() == [
        1.0, 1 + 2**-7, 1.0, 1 + 2**-6]
    assert check.main(["--depth=8", "--batch=32", "--group=8", "--devices=4,3"]) == 0
    four, three = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert four["kernels"] == 7 and three == {"devices": 3, "error": "4 groups do not divide among 3"}
    assert four["one_device"]["max"] < 2**-9 and four["explicit"]["max"] < 2**-9
    assert four["sharded"]["all"] > 1.5 * four["explicit"]["all"]
    assert four["bf16_network"] > 2**-9 and four["bf16_images"] > 2**-9


RING_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import PartitionSpec as P
    sys.path.insert(0, "bench")
    import bf16_allreduce_train as train_check, bf16_grad_sum_check as sum_check

    n = jax.device_count()
    shares = np.random.default_rng(0).normal(size=(n, 3, 5)).astype(np.float32) * 10.0 ** np.arange(5)
    mesh = jax.make_mesh((n,), ("d",))
    ring = jax.jit(jax.shard_map(lambda x: train_check.ring_mean(x[0], "d", n)[None], mesh=mesh,
                                 in_specs=P("d"), out_specs=P("d"), check_vma=False))
    got = np.asarray(ring(jax.device_put(shares, jax.sharding.NamedSharding(mesh, P("d")))), np.float64)
    want = sum_check.paths(shares[[*range(1, n), 0]].astype(np.float64))["sharded"] / n
    print(json.dumps({"same_on_every_device": bool((got == got[0]).all()), "equal": bool((got[0] == want).all()),
                      "float32_mean_apart": float(np.abs(got[0] - shares.mean(0)).max())}))
""")


def test_bf16_allreduce_train_sums_a_bfloat16_ring_and_trains_both_ways(tmp_path):
    """bench/bf16_allreduce_train.py: `ring_mean` on 4 CPU devices gives every device the value of
    bf16_grad_sum_check's `sharded` model (shares 1, 2, 3, 0, each add rounded to bfloat16) over 4,
    which is not the float32 mean; a 5-step run of each kind on 4 devices (the quick start's digits,
    depth 8) trains through main's path, and the bfloat16 ring moves the parameters (the stand-in
    for the step's pmean took effect) by far less than the run itself does, and further than the
    float32 ring, whose sums differ from the step's only in their order."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=xla_flags(4), PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", RING_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ring = json.loads(r.stdout.strip().splitlines()[-1])
    assert ring["same_on_every_device"] and ring["equal"] and ring["float32_mean_apart"] > 0, ring
    r = subprocess.run([sys.executable, "bench/bf16_allreduce_train.py", "--devices=4", "--tail=2",
                        f"--config.data_dir={tmp_path}", *(f"--config.{k}={v}" for k, v in (
                            ("model.depth", 8), ("num_train_steps", 5), ("log_every_steps", 1),
                            ("eval_every_steps", 5), ("checkpoint_every_steps", 5)))],
                       cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    f32, ring_run, control = (json.loads(line) for line in r.stdout.strip().splitlines())
    assert (f32["sums"], ring_run["sums"], control["sums"]) == ("float32", "bf16_ring", "f32_ring")
    assert {f32["devices"], ring_run["devices"], control["devices"]} == {4} and f32["steps"] == 5
    assert 0 < control["params_apart"] < ring_run["params_apart"] < 0.05, (ring_run, control)

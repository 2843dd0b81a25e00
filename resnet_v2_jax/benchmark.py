"""`python -m resnet_v2_jax.benchmark --config=experiments/X.py [--steps=N] [--json]`: step speed.

Times the real training step of `step.compile_steps` (forward, backward, SGD update, BN
statistics, the NaN guard; the state donated and replicated, the batch sharded over every device
of `step.make_mesh()`) on `step.synthetic_batch` data made on the devices. The dataset is forced to
`synthetic` at the experiment's image size (32 for the CIFAR family, 224 for ImageNet), so no
TensorFlow, TFDS or data is needed. `--eval` times `eval_step` instead.

Timing: `compile_s` is the ahead-of-time `lower(...).compile()` of the step (tracing + XLA),
`first_step_s` the first call after it. Then `--warmup` untimed steps and `--steps` timed steps,
each step blocked on (`jax.block_until_ready` of the new state and metrics) before the clock
stops: `step_ms` is the median, with min and max, of those per-step times. Blocking each step
costs one host round trip per step (the next step is not queued while one runs) and gives the
distribution; `--timing=loop` instead runs the steps back to back with one block at the end
and reports their mean (min = max = mean). `dispatch_ms` is the median host time for a timed
step's call to return, before the block: the most that launching several steps at once could save.
After the blocked steps, the same number of steps run back to back once more, with one block at
the end: `loop_ms` and `loop_images_per_second` are their mean, the way training runs the step (it
fetches metrics every N steps) and the way bench/peer_torch.py times PyTorch, so the figure to set
beside the peer's. On the H200 (2026-11-27) ResNet-50's blocked median was 35.0 ms where its
profiled back-to-back steps spanned 32.6 ms each on the device.

Throughput: `images_per_second` = batch / step time; model TFLOP/s counts 6 x forward
multiply-adds per image for training (2 for the forward pass, 4 for the backward) and 2 x for
`--eval`, from `summary.analyse`; `--peak_tflops` adds the fraction of that peak.

`--baseline` times `bench/plain_flax.py` (the plain jit-compiled Flax ResNet of the same network)
the same way; `--compare` compiles ours and the baseline in one process, then alternates their timed steps
(A B A B ...: a load change on a shared machine hits both alike) and ends with a line saying
whether ours is no slower.

XLA flags come from the config (`config.xla_flags`, set before JAX starts, as training sets them:
command buffers for the CIFAR family), so the benchmark times the step that training runs; the
baseline in the same process gets them too. `--config.xla_flags=` times XLA's defaults, and e.g.
`--config.xla_flags=--xla_gpu_enable_latency_hiding_scheduler=true` tries another flag. Each line
records the XLA_FLAGS it ran with (`xla_flags`). A process that profiles (`--profile_steps`, here or
in an --also run) also gets `PROFILE_XLA_FLAGS`: while a profiler is on, XLA otherwise runs each CUDA
graph's commands one by one from the host, and the profiled steps would not be the timed ones.

`--also='--config=... [flags]'` (repeatable) times more configurations in the same process, one after
the other, each parsed like its own command line before anything compiles. They share the start-up
(on the H200, 2026-11-27, each benchmark process took 80-90 s of the call, its compile 17-48 s) and so
the XLA flags: a config whose `xla_flags` differ is a usage error. The device's peak memory is per
process, so runs after the first report `compiled_peak_bytes` only.
"""

from __future__ import annotations

import datetime
import gc
import gzip
import hashlib
import importlib.util
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging

from resnet_v2_jax import augment, layers, scan_reads, summary, trace_summary
from resnet_v2_jax import config as config_lib
from resnet_v2_jax import step as step_lib

KEYS = ("impl", "mode", "model", "experiment", "family", "depth", "block", "batch", "distinct_batches", "dtype", "scan", "scan_unroll", "remat",
        "remat_policy", "bn_recompute_mask", "bn_partial_sums", "bn_pallas_sums", "stem_space_to_depth", "stem_align_channels", "auto_param_layouts", "explicit_data_parallel", "bn_recompute_output", "scan_unit_reads", "conv1x1_fusion", "bn_group", "params", "macs_per_image", "input", "compile_s", "first_step_s", "timing", "steps", "warmup", "step_ms",
        "step_ms_min", "step_ms_max", "dispatch_ms", "setup_s", "images_per_second", "loop_ms", "loop_images_per_second", "tflops", "peak_fraction", "peak_bytes_in_use", "compiled_peak_bytes",
        "device_kind", "num_devices", "jax_version", "loss", "date")

DATASET_ROWS = 50_000  # CIFAR's training set, held on device with augment_on_device

PLAIN_FLAX_PATH = Path(__file__).resolve().parents[1] / "bench" / "plain_flax.py"


def prepare(config):
    """The config forced to synthetic data at the family's image size; ValueError if invalid."""
    config_lib.validate_model(config.model)
    config.dataset = "synthetic"
    config.image_size = config.image_size or (224 if config.model.family == "imagenet" else 32)
    config_lib.validate(config, num_devices=len(jax.devices()))
    return config


def model_name(config) -> str:
    """cifar110, cifar1001, in50, ...: the names bench/peer_torch.py uses."""
    return ("in" if config.model.family == "imagenet" else "cifar") + str(config.model.depth)


def load_plain_flax():
    if "plain_flax" in sys.modules:
        return sys.modules["plain_flax"]
    spec = importlib.util.spec_from_file_location("plain_flax", PLAIN_FLAX_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["plain_flax"] = module  # flax modules are dataclasses: their module must be importable
    spec.loader.exec_module(module)
    return module


class Runner:
    """One compiled step and its state: `compile_s` at construction, then `step()` per blocked call."""

    def __init__(self, fn, state, batches: list, donates: bool = True, extra=(), auto_layouts: bool = False):
        self.state, self.batches, self.donates, self.extra = state, batches, donates, extra
        t0 = time.perf_counter()
        if auto_layouts:  # the state copied into the layouts XLA picked (config.auto_param_layouts)
            self.compiled, self.state = step_lib.compile_train(fn, state, batches[0], *extra)
        else:
            self.compiled = fn.lower(state, batches[0], *extra).compile()
        self.compile_s = time.perf_counter() - t0
        self.compiled_peak_bytes = compiled_peak_bytes(self.compiled)
        self.metrics = None
        self.calls = 0
        self.dispatch_s = []  # per blocked step: seconds until the call returned, before the block

    def call(self):
        batch = self.batches[self.calls % len(self.batches)]  # in turn, as training feeds a new one each step
        self.calls += 1
        out = self.compiled(self.state, batch, *self.extra)
        if self.donates:
            self.state, self.metrics = out
        else:
            self.metrics = out

    def step(self) -> float:
        """Seconds of one call, blocked on the new state and metrics."""
        t0 = time.perf_counter()
        self.call()
        self.dispatch_s.append(time.perf_counter() - t0)
        jax.block_until_ready((self.state, self.metrics))
        return time.perf_counter() - t0

    def loop(self, steps: int) -> float:
        """Mean seconds per step of `steps` calls with one block at the end."""
        t0 = time.perf_counter()
        for _ in range(steps):
            self.call()
        jax.block_until_ready((self.state, self.metrics))
        return (time.perf_counter() - t0) / steps


def time_runners(runners, steps: int, warmup: int, timing: str = "step"):
    """(first-call seconds, per-step seconds, back-to-back seconds per step) for each runner. With
    several runners the blocked steps alternate between them (A B A B ...), so a load change on a
    shared machine hits both alike; then each runs `steps` steps back to back (`Runner.loop`)."""
    firsts = [r.step() for r in runners]
    for _ in range(warmup):
        for r in runners:
            r.step()
    times = [[] for _ in runners]
    if timing == "loop":
        for i, r in enumerate(runners):
            times[i] = [r.loop(steps)] * steps
        return firsts, times, [t[0] for t in times]
    for _ in range(steps):
        for i, r in enumerate(runners):
            times[i].append(r.step())
    return firsts, times, [r.loop(steps) for r in runners]


def compiled_peak_bytes(compiled) -> int | None:
    """What XLA's buffer assignment allocates for one call of a compiled step, per device:
    arguments + outputs + temporaries - aliased (donated) buffers. Known before anything runs, so it
    answers "does this fit?" without the device; on another backend than the target it is an
    estimate (fusion and layouts differ). `peak_memory_in_bytes` is not used: on the CPU backend
    (JAX 0.10.2) it leaves the temporaries out."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements it
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)


def _peak_bytes():
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats()
        except Exception:  # noqa: BLE001 - backends without memory stats raise or return None
            stats = None
        if stats and "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def _inputs(config, eval_mode: bool = False):
    """(pixels, colour, rows, device_augment): what the experiment's input pipeline hands the step
    (see `setup`), decided before `prepare` forces the dataset to synthetic."""
    pixels = config.dataset == "imagenet2012"
    colour = pixels and config.augment and not eval_mode
    on_device = config.dataset in ("cifar10", "cifar100") and config.augment_on_device and not eval_mode
    return pixels, colour, DATASET_ROWS if on_device else 0, on_device and config.augment


def lower_step(config, mesh, *, baseline: bool = False, seed: int = 0):
    """`setup`'s training step lowered from shapes alone for `mesh`, whose devices need not be attached:
    bench/gpu_launches.py compiles it for an H100/H200 on a machine without a GPU. The function,
    shapes, dtypes, shardings and donation are `setup`'s (tests/test_benchmark.py compiles both and
    compares the programs)."""
    pixels, colour, rows, device_augment = _inputs(config)
    config = prepare(config)
    image_shape = (config.image_size, config.image_size, 3)
    rep, data = step_lib.replicated(mesh), step_lib.batch_sharding(mesh)

    def shaped(shape, dtype, sharding):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)

    labels = shaped((config.batch_size,), jnp.int32, data)
    if baseline:
        init, train_step, _ = load_plain_flax().step_fns(config, image_shape, seed)
        state = jax.tree.map(lambda a: shaped(a.shape, a.dtype, rep), jax.eval_shape(init))
        batch = {"image": shaped((config.batch_size,) + image_shape, jnp.float32, data), "label": labels}
        return jax.jit(train_step, donate_argnums=0).lower(state, batch)  # placed by its arguments' shardings
    norm = augment.MEAN_STD["imagenet2012" if pixels else "cifar10"] if pixels or rows else None
    task = step_lib.make_task(config, image_shape, norm, device_augment, colour)
    state = jax.tree.map(lambda a: shaped(a.shape, a.dtype, rep), step_lib.abstract_state(task, seed))
    train_images = None
    if rows:
        batch = {"index": shaped((config.batch_size,), jnp.int32, data), "label": labels}
        train_images = shaped((rows,) + image_shape, jnp.uint8, rep)
    else:
        batch = {"image": shaped((config.batch_size,) + image_shape, jnp.uint8 if pixels else jnp.float32, data),
                 "label": labels}
    return step_lib.compile_steps(task, mesh, bool(config.auto_param_layouts),
                                  bool(config.explicit_data_parallel))[0].lower(state, batch, train_images)


def distinct_batches(batch: dict, n: int) -> list[dict]:
    """`batch` and n - 1 more in buffers of their own, the examples rolled by 1..n-1 places (same
    shapes, shardings and dtypes, other contents). A training step gets a new batch each call, so
    its inputs sit at new addresses; with command buffers (CUDA graphs) XLA then updates the graph
    before it runs, a cost one batch fed again and again never shows."""
    if n < 1:
        raise ValueError(f"distinct_batches={n} must be >= 1")
    return [batch] + [jax.tree.map(lambda a, k=k: jax.device_put(jnp.roll(a, k, axis=0), a.sharding), batch)
                      for k in range(1, n)]


# The compiled init of each state this process has made. Runs whose configs differ only in how the
# step compiles (checkpoint.COMPILE_ONLY_FIELDS: the same parameters, tested) call it again instead
# of compiling their own: on 2 CPU cores that init took 4-7 s a run for ResNet-110, ResNet-50 and
# ResNet-1001 (2026-11-27), and on the H200 a process runs a model several ways (`--also`).
_INITS: dict[str, Any] = {}


def _init_state(task, config, seed: int, mesh):
    from resnet_v2_jax import checkpoint  # noqa: PLC0415  (orbax, only where a state is made)

    fields = json.loads(config.to_json())
    fields["model"] = checkpoint.fingerprint(config)["model"]
    key = json.dumps([fields, seed, task.image_shape, [d.id for d in mesh.devices.flat]], sort_keys=True)
    if key not in _INITS:
        # compiled ahead of time: an executable held here survives jax.clear_caches() between runs
        _INITS[key] = step_lib.state_initializer(task, seed, mesh).lower().compile()
    return _INITS[key]()


def setup(config, *, eval_mode: bool = False, baseline: bool = False, seed: int = 0, batches: int = 1):
    """(Runner, description) for one configuration: state, on-device batch, compiled step.

    Each experiment's training step gets what its real input pipeline hands it. ImageNet: uint8
    pixels that the step colour-augments (while training) and normalises on device. CIFAR with
    `augment_on_device` (the default): a 50,000-image uint8 train set held on the devices and a
    batch of row indices, gathered, normalised and pad-crop-flipped in the step. Evaluation and
    the plain Flax baseline get float32 images.
    """
    t0 = time.perf_counter()
    pixels, colour, rows, device_augment = _inputs(config, eval_mode)
    config = prepare(config)
    batch_size = config.batch_size
    image_shape = (config.image_size, config.image_size, 3)
    analysis = summary.analyse(config)
    mesh = step_lib.make_mesh()
    auto_layouts = bool(config.auto_param_layouts) and not baseline and not eval_mode
    explicit = bool(config.explicit_data_parallel) and not baseline and not eval_mode
    if baseline:
        plain = load_plain_flax()
        state, train_fn, eval_fn = plain.make(config, image_shape, seed)
        batch = {
            "image": jax.random.normal(jax.random.PRNGKey(seed), (batch_size,) + image_shape, jnp.float32),
            "label": jax.random.randint(jax.random.PRNGKey(seed + 1), (batch_size,), 0,
                                        config.model.num_classes, jnp.int32),
        }
        params = plain.param_count(config, image_shape)
        extra = ()
    else:
        norm = augment.MEAN_STD["imagenet2012" if pixels else "cifar10"] if pixels or rows else None
        task = step_lib.make_task(config, image_shape, norm, device_augment, colour)
        state = _init_state(task, config, seed, mesh)
        batch = step_lib.synthetic_batch(task, mesh, batch_size, seed, jnp.uint8 if pixels else jnp.float32)
        train_fn, eval_fn = step_lib.compile_steps(task, mesh, auto_layouts=auto_layouts, explicit=explicit)
        train_images = None  # train_step's on-device train set: none when the batch holds images
        if rows:
            # Made on the host: threefry for 150 M values took 4.9 s on 2 idle CPU cores, numpy 0.5 s.
            pixels_np = np.random.default_rng(seed + 2).integers(0, 256, (rows,) + image_shape, np.uint8)
            train_images = jax.device_put(pixels_np, step_lib.replicated(mesh))
            index = jax.random.randint(jax.random.PRNGKey(seed + 3), (batch_size,), 0, rows, jnp.int32)
            batch = {"index": jax.device_put(index, step_lib.batch_sharding(mesh)), "label": batch["label"]}
        if eval_mode:
            batch = dict(batch, mask=jax.device_put(jnp.ones((batch_size,), jnp.float32),
                                                    step_lib.batch_sharding(mesh)))
        params = analysis["params"]
        extra = () if eval_mode else (train_images,)
    runner = Runner(eval_fn if eval_mode else train_fn, state, distinct_batches(batch, batches),
                    donates=not eval_mode, extra=extra, auto_layouts=auto_layouts)
    desc = {
        "impl": "plain_flax" if baseline else "ours",
        "mode": "eval" if eval_mode else "train",
        "model": model_name(config),
        "experiment": config.experiment,
        "family": config.model.family,
        "depth": config.model.depth,
        "block": config.model.block,
        "batch": batch_size,
        "distinct_batches": batches,
        "dtype": config.model.dtype,
        "scan": bool(config.model.scan) and not baseline,
        "scan_unroll": config.model.scan_unroll if config.model.scan and not baseline else None,
        "remat": bool(config.model.remat) and not baseline,
        "remat_policy": config.model.remat_policy if config.model.remat and not baseline else None,
        "bn_recompute_mask": bool(config.model.bn_recompute_mask) and not baseline,
        "bn_partial_sums": bool(config.model.bn_partial_sums) and not baseline,
        # what the compile got: on where the platform compiles the kernel (a GPU)
        "bn_pallas_sums": bool(config.model.bn_pallas_sums) and layers.pallas_sums_available() and not baseline,
        "stem_space_to_depth": bool(config.model.stem_space_to_depth) and not baseline,
        "stem_align_channels": bool(config.model.stem_space_to_depth and config.model.stem_align_channels)
        and config.model.family == "imagenet" and not baseline,  # a CIFAR network has no stem to align
        "auto_param_layouts": auto_layouts,
        "explicit_data_parallel": explicit,
        "bn_recompute_output": bool(config.model.bn_recompute_output) and not baseline,
        # what the compile got, not what was asked: off on a CPU, or where this JAX's scan is another
        "scan_unit_reads": scan_reads.in_effect() and bool(config.model.scan) and not baseline,
        # the same: on where this platform compiles the fused products (a CUDA GPU)
        "conv1x1_fusion": bool(config.model.conv1x1_fusion) and layers.gemm_fusion_available() and not baseline,
        # the images each BN statistic is over (the CIFAR experiments: 64 of 128, the paper's GPUs)
        "bn_group": batch_size if baseline or not 0 < config.bn_group_size < batch_size else config.bn_group_size,
        "params": params,
        "macs_per_image": analysis["macs"],
        "input": ("float32" if baseline or not (pixels or rows) else "uint8+colour" if colour
                  else "uint8" if pixels else "rows+augment" if device_augment else "rows"),
        # Seconds from the config to a compiled step (analysis, state init, data, compile_s): what a
        # run waits before its first step (on the H200, 2026-11-27, each benchmark process took ~90 s).
        "setup_s": round(time.perf_counter() - t0, 3),
    }
    return runner, desc


def result(runner: Runner, desc: dict, first: float, times: list[float], loop_s: float, warmup: int,
           timing: str, peak_tflops: float = 0.0) -> dict:
    step_s = statistics.median(times)
    batch_size = desc["batch"]
    flops = (2 if desc["mode"] == "eval" else 6) * desc["macs_per_image"] * batch_size
    tflops = flops / step_s / 1e12
    loss = (runner.metrics or {}).get("loss")
    return dict(desc, **{
        "compile_s": round(runner.compile_s, 3),
        "first_step_s": round(first, 3),
        "timing": "median of per-step blocked steps" if timing == "step" else "mean of an unblocked loop",
        "steps": len(times),
        "warmup": warmup,
        "step_ms": round(step_s * 1e3, 3),
        "step_ms_min": round(min(times) * 1e3, 3),
        "step_ms_max": round(max(times) * 1e3, 3),
        # Host time to launch one step (median over the timed blocked steps; None for --timing=loop).
        # JAX dispatches asynchronously, so while it stays well under step_ms the host queues the next
        # step before the device is free: several steps per dispatch would save at most this.
        "dispatch_ms": (round(statistics.median(runner.dispatch_s[-len(times):]) * 1e3, 3)
                        if timing == "step" else None),
        "images_per_second": round(batch_size / step_s, 2),
        "loop_ms": round(loop_s * 1e3, 3),
        "loop_images_per_second": round(batch_size / loop_s, 2),
        "tflops": round(tflops, 6),
        "peak_fraction": round(tflops / peak_tflops, 6) if peak_tflops else None,
        "peak_bytes_in_use": _peak_bytes(),
        "compiled_peak_bytes": runner.compiled_peak_bytes,
        "device_kind": jax.devices()[0].device_kind,
        "num_devices": len(jax.devices()),
        "jax_version": jax.__version__,
        "loss": None if loss is None else float(loss),
        "date": datetime.date.today().isoformat(),
    })


def run(config, *, steps: int = 10, warmup: int = 2, eval_mode: bool = False, baseline: bool = False,
        peak_tflops: float = 0.0, timing: str = "step", seed: int = 0, compile_only: bool = False,
        profile_steps: int = 0, batches: int = 1, profile_dir: str = "") -> dict:
    """Times one configuration; returns the result dict (the KEYS above). `compile_only`: compile,
    report `compile_s` and XLA's `compiled_peak_bytes`, run nothing (step fields None). `profile_steps`:
    after the timed steps, that many more back to back under JAX's profiler, summarised as `profile`
    (`trace_summary.summarize`: device busy and idle time, kernels, where the time goes); with
    `profile_dir`, also saved there in full (`save_profile`)."""
    runner, desc = setup(config, eval_mode=eval_mode, baseline=baseline, seed=seed, batches=batches)
    if compile_only:
        return dict(dict.fromkeys(KEYS), **desc, **{
            "compile_s": round(runner.compile_s, 3), "compiled_peak_bytes": runner.compiled_peak_bytes,
            "steps": 0, "warmup": 0, "timing": "compile only", "device_kind": jax.devices()[0].device_kind,
            "num_devices": len(jax.devices()), "jax_version": jax.__version__,
            "date": datetime.date.today().isoformat()})
    (first,), (times,), (loop_s,) = time_runners([runner], steps, warmup, timing)
    out = result(runner, desc, first, times, loop_s, warmup, timing, peak_tflops)
    if not profile_steps:
        return out
    save = ""
    if profile_dir:  # MODEL_bBATCH_HASH: runs of one process that differ in their config differ in name
        digest = hashlib.sha1(config.to_json_best_effort().encode()).hexdigest()[:8]
        save = os.path.join(profile_dir, f"{out['model']}_b{out['batch']}_{digest}")
    return dict(out, profile=profile(runner, profile_steps, save))


# XLA's GPU runtime leaves its command buffers (CUDA graphs) while a profiler is active unless this is set
# (CommandBufferThunk, `xla_enable_command_buffers_during_profiling`, default false); it changes nothing
# while no profiler runs, so a process that profiles sets it for all its runs. XLA aborts on a flag it
# does not know, so $RESNET_V2_PROFILE_XLA_FLAGS (empty: none) replaces it for an XLA without this one.
PROFILE_XLA_FLAGS = os.environ.get("RESNET_V2_PROFILE_XLA_FLAGS",
                                   "--xla_enable_command_buffers_during_profiling=true")


def profile(runner: Runner, steps: int, save: str = "") -> dict:
    """`trace_summary.summarize` of `steps` back-to-back calls traced by JAX's profiler, or
    {"error": ...}: the profile is an extra, and a profiler or trace format this code has not met
    must not cost the timed line or the --also runs after it. `save`: a path prefix for
    `save_profile`, whose files the summary then names (`saved`)."""
    try:
        with tempfile.TemporaryDirectory() as log_dir:
            with jax.profiler.trace(log_dir, create_perfetto_trace=True):
                runner.loop(steps)
            trace = trace_summary.load_perfetto(log_dir)
        out = trace_summary.summarize(trace, steps)
        return dict(out, saved=save_profile(save, trace, steps, runner.compiled.as_text())) if save else out
    except Exception as e:  # noqa: BLE001 - reported in the line instead
        return {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def save_profile(prefix: str, trace, steps: int, hlo: str) -> list[str]:
    """PREFIX.kernels.json (every kernel's time per step, `trace_summary.kernel_table`) and PREFIX.hlo.gz
    (the compiled step's HLO text); returns their paths. Why: the summary keeps a dozen kernels, and
    a kernel's time says little without what it moves. `bench/kernel_bandwidth.py PREFIX` joins the
    two, so a GPU call's profile can be read here afterwards, kernel by kernel: which run far below
    the card's bandwidth (the H200's ResNet-50 max-pool backward moved 0.57 GB in 0.94 ms)."""
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    paths = [prefix + ".kernels.json", prefix + ".hlo.gz"]
    Path(paths[0]).write_text(json.dumps(trace_summary.kernel_table(trace, steps)))
    with gzip.open(paths[1], "wt") as f:
        f.write(hlo)
    return paths


def compare(config, *, steps: int = 10, warmup: int = 2, eval_mode: bool = False, peak_tflops: float = 0.0,
            timing: str = "step", seed: int = 0, batches: int = 1) -> list[dict]:
    """Ours and the plain Flax baseline, compiled one after the other, timed with alternating steps."""
    pairs = [setup(config.copy_and_resolve_references(), eval_mode=eval_mode, baseline=b, seed=seed, batches=batches)
             for b in (False, True)]
    firsts, times, loops = time_runners([r for r, _ in pairs], steps, warmup, timing)
    # Peak memory is per process: with both in one process it is the larger of the two.
    return [result(r, d, f, t, lp, warmup, timing, peak_tflops) for (r, d), f, t, lp in zip(pairs, firsts, times, loops)]


def _size(n: int | None) -> str:
    return "n/a" if n is None else f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _ms(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f} ms"


def format_result(r: dict) -> str:
    mem, xla = _size(r["peak_bytes_in_use"]), _size(r["compiled_peak_bytes"])
    fed = f" (fed {r['distinct_batches']} batches in turn)" if (r.get("distinct_batches") or 1) > 1 else ""
    head = (f"{r['impl']} {r['mode']} {r['model']} ({r['experiment']}) batch {r['batch']}{fed} {r['dtype']} "
            f"scan={r['scan']} on {r['num_devices']} x {r['device_kind']}, JAX {r['jax_version']}\n"
            f"  compile {r['compile_s']:.2f} s; XLA's peak memory for one step {xla} per device")
    if r["step_ms"] is None:
        return head
    peak = f" ({100 * r['peak_fraction']:.1f}% of peak)" if r["peak_fraction"] is not None else ""
    prof = r.get("profile")
    host = ""
    if prof and prof.get("host_top"):  # where the host's time per step call goes (nested: inclusive)
        host = "\n  host, per step (inclusive): " + ", ".join(
            f"{e['name'][:60]} {e['ms']:.2f} ms ({e['count']:g})" for e in prof["host_top"][:6])
    if prof and prof.get("saved"):
        host += "\n  profile saved: " + ", ".join(prof["saved"])
    if prof and prof.get("busy_ms") is not None:
        cats = ", ".join(f"{k} {v['ms']:.2f} ms ({v['count']:g})" for k, v in prof["by_category"].items())
        durations = ", ".join(f"{k} {v['ms']:.2f} ms ({v['count']:g})" for k, v in prof["by_duration"].items())
        prof = (f"\n  device, per step: busy {prof['busy_ms']:.2f} ms, idle {prof['idle_ms']:.2f} ms, "
                f"{prof['kernels_per_step']:g} kernels: {cats}\n  kernels by duration: {durations}{host}")
    elif prof and "error" in prof:
        prof = f"\n  profile failed: {prof['error']}"
    elif prof:
        prof = f"\n  profile: no device events (processes: {', '.join(prof['processes'])}){host}"
    return (f"{head}, first step {r['first_step_s']:.3f} s\n"
            f"  step {r['step_ms']:.2f} ms median (min {r['step_ms_min']:.2f}, max {r['step_ms_max']:.2f}; "
            f"{r['steps']} steps after {r['warmup']} warm-up; host dispatch {_ms(r['dispatch_ms'])})\n"
            f"  {r['images_per_second']:.1f} images/s, {r['tflops']:.4f} model TFLOP/s{peak}, peak memory {mem}\n"
            f"  back to back (as training runs and the PyTorch peer is timed): {r['loop_ms']:.2f} ms a step, "
            f"{r['loop_images_per_second']:.1f} images/s{prof or ''}")


def _usage_error(f) -> str | None:
    """What is wrong with one run's flags (`f`: the process's or an --also run's), else None."""
    if f.steps < 1 or f.warmup < 0 or f.distinct_batches < 1:
        return "--steps and --distinct_batches must be >= 1 and --warmup >= 0"
    if f.profile_steps < 0 or f.profile_steps and (f.compile_only or f.compare):
        return "--profile_steps must be >= 0 and goes with one timed run (not --compile_only or --compare)"
    if f.profile_dir and not f.profile_steps:
        return "--profile_dir saves a profile: it needs --profile_steps"
    if f.compile_only and f.compare:
        return "--compile_only times nothing, so it cannot --compare"
    return None


def _also_runs(f) -> list:
    """Each --also string parsed as a command line of its own (a fresh set of this module's flags),
    all before anything compiles, so a typo in the last one costs no device time."""
    from resnet_v2_jax import cli

    runs = []
    for args in f.also:
        argv = ["benchmark"] + shlex.split(args)
        fv = flags.FlagValues()
        define_flags(fv, argv)
        try:
            rest = cli.parse_flags(argv, fv)
            problem = (f"unexpected arguments {rest[1:]}" if rest[1:] else _usage_error(fv) or (
                None if fv.config.xla_flags == f.config.xla_flags else
                f"its config.xla_flags {fv.config.xla_flags!r} differ from this process's "
                f"{f.config.xla_flags!r}: XLA reads its flags once per process, so run it on its own") or (
                "--compilation_cache_dir is the process's: set it outside --also"
                if fv["compilation_cache_dir"].present else "--also does not nest" if fv.also else None))
        except SystemExit:
            problem = "see the line above"
        if problem:
            print(f"error: in --also={args!r}: {problem}", file=sys.stderr)
            sys.exit(2)
        runs.append(fv)
    return runs


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    f = flags.FLAGS
    problem = _usage_error(f)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    runs = [f] + _also_runs(f)  # parsing configs starts no backend: the flags below still apply
    profiling = any(fv.profile_steps for fv in runs)
    try:
        xla_flags = step_lib.apply_xla_flags(" ".join([PROFILE_XLA_FLAGS] * profiling + [f.config.xla_flags]).strip())
    except ValueError as e:  # a malformed flag: XLA itself would abort the process
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    cache = step_lib.use_compilation_cache(f.compilation_cache_dir)
    rc = 0
    for i, fv in enumerate(runs):
        if i:  # free the previous run's executables (and their device memory) before the next compiles
            jax.clear_caches()
            gc.collect()
        kwargs = dict(steps=fv.steps, warmup=fv.warmup, eval_mode=fv.eval, peak_tflops=fv.peak_tflops,
                      timing=fv.timing, batches=fv.distinct_batches)
        try:
            prepare(fv.config.copy_and_resolve_references())  # a config it cannot run fails here, not after the line
            # The compile is the long silent part (ResNet-1001: ~30 s on an H200): say what is coming.
            print(f"{fv.config.experiment}: compiling, then {fv.warmup} warm-up and {fv.steps} timed steps"
                  + (" of each step, alternating" if fv.compare else "") + " ...", file=sys.stderr, flush=True)
            if fv.compare:
                results = compare(fv.config, **kwargs)
            else:
                results = [run(fv.config, baseline=fv.baseline, compile_only=fv.compile_only,
                               profile_steps=fv.profile_steps, profile_dir=fv.profile_dir, **kwargs)]
        except ValueError as e:  # a config this step cannot run: a usage error
            print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
            rc = max(rc, 2)
            continue
        except Exception as e:  # noqa: BLE001 - e.g. XLA out of memory: said in one line, the next run goes on
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            print(f"error: {fv.config.experiment}: {type(e).__name__}: {first}", file=sys.stderr)
            rc = max(rc, 1)
            continue
        for r in results:
            r["compilation_cache"] = cache
            r["xla_flags"] = xla_flags  # what XLA ran with: the config's flags and the user's $XLA_FLAGS
            if i:  # the device's peak is the process's, so far; compiled_peak_bytes is this step's own
                r["peak_bytes_in_use"] = None
            print(json.dumps(r) if f.json else format_result(r), flush=True)
        if fv.compare:
            ours, plain = results
            verdict = {"compare": ours["model"], "batch": ours["batch"], "ours_step_ms": ours["step_ms"],
                       "plain_flax_step_ms": plain["step_ms"],
                       "ratio": round(ours["step_ms"] / plain["step_ms"], 3),
                       "no_slower": ours["step_ms"] <= plain["step_ms"]}
            print(json.dumps(verdict) if f.json else
                  f"ours / plain Flax step time = {verdict['ratio']:.3f} "
                  f"({'no slower' if verdict['no_slower'] else 'SLOWER'})")
    if rc:
        sys.exit(rc)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, argv: list[str] | None = None) -> None:
    """This module's flags in `flag_values`; `argv`: the command line they will parse, when not sys.argv."""
    from resnet_v2_jax import cli

    fv = flag_values
    cli.define_config_flag(fv, argv)
    flags.DEFINE_integer("steps", 10, "Timed steps (median reported).", flag_values=fv)
    flags.DEFINE_integer("warmup", 2, "Untimed steps after the first call.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON object per run instead of text.", flag_values=fv)
    flags.DEFINE_float("peak_tflops", 0.0, "Device peak TFLOP/s for the dtype; adds peak_fraction.", lower_bound=0.0,
                      flag_values=fv)
    flags.DEFINE_bool("eval", False, "Time the inference step (eval_step) instead of the training step.",
                      flag_values=fv)
    flags.DEFINE_bool("baseline", False, "Time the plain jit Flax ResNet of bench/plain_flax.py instead.",
                      flag_values=fv)
    flags.DEFINE_bool("compare", False, "Time ours, then the plain Flax baseline, and compare.", flag_values=fv)
    flags.DEFINE_bool("compile_only", False, "Compile and report compile_s and XLA's compiled_peak_bytes; "
                      "run no step (memory fit without the device's time).", flag_values=fv)
    flags.DEFINE_integer("profile_steps", 0, "After timing, trace this many more steps with JAX's profiler and "
                         "add a `profile` summary (device busy/idle ms, kernels per step, time by kind and by "
                         "kernel duration, top kernels).",
                         flag_values=fv)
    flags.DEFINE_string("profile_dir", "", "With --profile_steps: also write every kernel's time and the compiled "
                        "step's HLO there (MODEL_bBATCH_HASH.kernels.json, .hlo.gz), for "
                        "bench/kernel_bandwidth.py.", flag_values=fv)
    flags.DEFINE_enum("timing", "step", ["step", "loop"], "step: block each step, median; loop: one block.",
                      flag_values=fv)
    flags.DEFINE_integer("distinct_batches", 1, "Feed the steps N batches in turn, each in its own device buffers, "
                         "as training feeds a new batch each step (with command buffers XLA then updates the "
                         "graphs' input addresses at each call); 1: the same batch every step.", flag_values=fv)
    flags.DEFINE_string("compilation_cache_dir", "off",
                        "JAX persistent compilation cache for this run: 'off' (compile_s is a cold compile), "
                        "'' (the training default dir) or a path; a warm cache shows what a restart pays.",
                        flag_values=fv)
    flags.DEFINE_multi_string(
        "also", [], "Another run in this process, after this one: a quoted command line of this module's flags "
        "(e.g. --also='--config=experiments/cifar1001.py --config.batch_size=64 --steps=20'; shell quoting "
        "inside), repeatable. "
        "They share the process's start-up, XLA flags (each config's must match) and --json/--compilation_cache_dir; "
        "runs after the first report peak_bytes_in_use as null (the device's peak is per process).",
        flag_values=fv)


def cli_main(argv=None) -> None:
    from resnet_v2_jax import cli

    cli.run(main, define_flags, argv)


if __name__ == "__main__":
    cli_main()

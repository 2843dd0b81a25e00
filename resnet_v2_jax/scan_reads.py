"""lax.scan's unrolled loops lowered for GPUs so that each unit reads its own rows of a stacked input.

Why. JAX lowers `scan(unroll=k)` by reshaping every stacked input [n, ...] to [n/k, k, ...], taking
iteration i's block [k, ...] with one dynamic slice, then unit j's rows with a static slice of it.
The backward of a scanned stage reads its units' saved tensors that way, and XLA's multi-output
fusion computes several units' work in one kernel (the ReLU masks of 8 units at once, say). XLA's
GPU code for a fusion that reads two or more static slices of one dynamically sliced block loads
one element at a time; with one slice, or with each unit's rows taken by a dynamic slice of its
own, it loads 4-8 elements per instruction (reproduced alone, compiled for an H200 by the XLA of
JAX 0.10.2 and of 0.11.2). In ResNet-1001 at batch 64 (10 units per loop iteration, bf16, JAX
0.11.2's H200 code compiled on a CPU, BENCHMARKS.md) 24 of the 400 largest kernels, 8.65 GB of the
57.8 a step, are such scalar-load kernels; with this lowering 1 (0.14 GB), and the step moves
57.5 GB in 10,897 kernels instead of 10,908.

How. The rule is JAX's own `_scan_impl` with its reads changed: unit j of iteration i reads row
i*k + j of the flat stacked input by its own dynamic index (the stacked outputs, the carry and the
remainder are JAX's). It is built from the installed JAX's source at first use; where that source
is not the one the change expects (another JAX version), `use` warns and JAX's lowering stays. It
is registered for GPU platforms only and switched by `model.scan_unit_reads`: same values, same
parameters, a different program.
"""

from __future__ import annotations

import functools
import inspect
import textwrap

import jax

GPU_PLATFORMS = ("cuda", "rocm")

# (JAX's line, its replacement): the five places where `_scan_impl` reads a stacked input per unit.
_EDITS = (
    ("      xss = [lax.reshape(x, (num_trips, unroll, *x.shape[1:])) for x in xs_]\n",
     "      xss = list(xs_)  # flat: each unit indexes its own row\n"),
    ("  def inner(n, carry, xs):\n",
     "  def inner(n, carry, xs, trip=None):\n"),
    ("      x = [slicing.index_in_dim(x, i, keepdims=False) for x in xs]\n",
     "      x = [slicing.index_in_dim(x, i, keepdims=False) if trip is None else _row(x, trip * n + i) for x in xs]\n"),
    ("    xs = []\n    for x in xss:\n",
     "    xs = []\n    for x in (xss if unroll == 1 else []):\n"),
    ("    carry, ys = inner(unroll, carry, xs)\n",
     "    carry, ys = (inner(unroll, carry, xs) if unroll == 1 else inner(unroll, carry, xss, trip=i))\n"),
)

# Unit rows are read as JAX's body reads an iteration's block: under the stacked input's mesh.
_ROW = """
def _row(x, index):
  with use_abstract_mesh(core.typeof(x).sharding.mesh):
    return slicing.dynamic_index_in_dim(x, index, keepdims=False, allow_negative_indices=False)
"""

_state: dict = {"on": set(), "rules": None}  # the platforms whose scans get the per-unit reads


def edited_source(source: str) -> str:
    """`_scan_impl`'s source with the per-unit reads, or ValueError naming the line it lacks."""
    for old, new in _EDITS:
        if source.count(old) != 1:
            raise ValueError(f"lax.scan's lowering is not the one scan_reads edits (no single {old.strip()!r})")
        source = source.replace(old, new)
    return _ROW + source


def _rules():
    """(JAX's scan lowering, the per-unit-reads one), built once."""
    if _state["rules"] is None:
        from jax._src.interpreters import mlir
        from jax._src.lax.control_flow import loops

        namespace = dict(vars(loops))
        exec(compile(edited_source(textwrap.dedent(inspect.getsource(loops._scan_impl))),  # noqa: S102
                     "<resnet_v2_jax.scan_reads _scan_impl>", "exec"), namespace)
        _state["rules"] = (mlir.lower_fun(loops._scan_impl, multiple_results=True),
                           mlir.lower_fun(namespace["_scan_impl"], multiple_results=True))
    return _state["rules"]


def _lower(platform, ctx, *args, **params):
    jax_rule, unit_reads = _rules()
    return (unit_reads if platform in _state["on"] else jax_rule)(ctx, *args, **params)


def in_effect() -> bool:
    """Whether a step compiled now for JAX's default backend gets the per-unit reads (not on a CPU,
    unless turned on there; not where `use` fell back to JAX's lowering)."""
    from jax._src import xla_bridge

    return any(p in _state["on"] for p in xla_bridge.expand_platform_alias(jax.default_backend()))


def use(on: bool, platforms: tuple[str, ...] = GPU_PLATFORMS) -> bool:
    """Lowers scans on `platforms` with per-unit reads (`on`) or as JAX does; returns whether they are on.

    Process-wide, like XLA flags: steps compiled after the call follow it (a change clears JAX's
    caches, so no step compiled the other way is reused)."""
    if not on and not _state["on"] & set(platforms):
        return False
    from absl import logging
    from jax._src.interpreters import mlir
    from jax._src.lax.control_flow import loops

    if on:
        try:
            _rules()
        except Exception as e:  # noqa: BLE001 - another JAX: its own lowering, which is correct, never a crash
            logging.warning("model.scan_unit_reads ignored: %s", e)
            on = False
    now = _state["on"] | set(platforms) if on else _state["on"] - set(platforms)
    for platform in now - _state["on"]:
        mlir.register_lowering(loops.scan_p, functools.partial(_lower, platform), platform=platform)
    if now != _state["on"]:
        _state["on"] = now
        jax.clear_caches()
    return on

"""Times our step with JAX's scan allocating its stacked outputs uninitialised instead of zero-filled.

`python bench/scan_empty_check.py --config=experiments/X.py [benchmark flags]`: the benchmark's own
`main` (same flags, --also runs, XLA flags, output), every line with impl "ours_scan_empty".

Why: a scanned stage hands its backward the residuals of every unit as stacked buffers, which
JAX's scan creates as broadcast zeros (`loops._empty_array`: `lax.empty2`, a zero constant, with a
TODO to use `lax.empty` "once AllocateBuffer issues are fixed") and then overwrites slice by slice.
XLA's count for an H200 (bench/gpu_launches.py, ResNet-1001 at batch 64, bf16, 2026-11-27) puts
2.49 GB a step in those zero-fills (`loop_broadcast_fusion`), and the H200's profile showed such
once-a-step kernels of 0.14-0.55 ms. Here the stacked outputs come from `lax.empty`, which lowers
to XLA's AllocateBuffer custom call on GPU and TPU (no kernel) and to zeros elsewhere, so on a CPU
this runs the same program and gives the same numbers (tested). It patches a private JAX function,
so it is a measurement, not a lever the package uses: if it pays on a GPU, the fix belongs in JAX.
"""

from __future__ import annotations

import sys
from pathlib import Path


def patch_scan() -> None:
    """Makes lax.scan's stacked outputs `lax.empty` arrays (this JAX's `_empty_array` signature)."""
    from jax._src.lax import lax
    from jax._src.lax.control_flow import loops

    def empty_array(prefix, length_spec, aval):
        spec = aval.sharding.spec.update(partitions=(*length_spec, *aval.sharding.spec.partitions))
        return lax.empty((*prefix, *aval.shape), aval.dtype, out_sharding=aval.sharding.update(spec=spec))

    loops._empty_array = empty_array


def run_marked(impl: str) -> None:
    """The benchmark's own main on this process's flags, every line's impl set to `impl`: for a
    measurement that patches the process first (here and bench/tiling_check.py)."""
    from resnet_v2_jax import benchmark, cli

    result = benchmark.result

    def marked(*args, **kwargs):
        return dict(result(*args, **kwargs), impl=impl)

    benchmark.result = marked
    benchmark.define_flags()
    cli.run(benchmark.main)


def main() -> None:
    patch_scan()
    run_marked("ours_scan_empty")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, where the package is not installed
    main()

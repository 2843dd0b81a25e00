"""Times our step with BN's backward sums in the forward's tiling, the one column_sums used for both
until session 21: the whole-step side of the backward's 8192-value tiles.

`python bench/bwd_tiling_check.py --config=experiments/imagenet_resnet50.py [benchmark flags]`: the
benchmark's own `main` (same flags, --also runs, output), every line with impl "ours_bwd_tile4k".

Why: bench/bn_sums_check.py timed BN's sums alone on one H200 (2026-11-28, session 21), where the
backward's two arrays ran faster as 8192-value tiles of 8 warps in 9 of ResNet-50's 11 shapes,
~0.5 ms a step summed over the network; `column_sums.BACKWARD` took that tiling untimed in the
whole step. This line, beside the benchmark's as configured in the same device call, times it.
Off a GPU BN keeps XLA's sums, so there the two lines are the same program.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    from scan_empty_check import run_marked

    from resnet_v2_jax import column_sums

    column_sums.BACKWARD = column_sums.FORWARD
    run_marked("ours_bwd_tile4k")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, where the package is not installed
    main()

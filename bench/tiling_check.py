"""Times our step with BN's sums in another `column_sums.Tiling`: the whole-step side of
bench/bn_sums_check.py, which times the sums alone.

`python bench/tiling_check.py VARIANT --config=experiments/imagenet_resnet50.py [benchmark flags]`:
the benchmark's own `main` (same flags, --also runs, output), every line with impl "ours_VARIANT".
VARIANT, one of `VARIANTS`:
- `bwd_tile4k`: the backward in the forward's tiling, as until session 21. bn_sums_check on one
  H200 (2026-11-28, session 21) ran the backward's two arrays faster as 8192-value tiles of 8 warps
  in 9 of ResNet-50's 11 shapes, ~0.5 ms a step summed over the network; `column_sums.BACKWARD`
  took that tiling untimed in the whole step.
- `sm132`: both passes planned balanced over an H200's 132 multiprocessors (`Tiling.sms`): 392 or
  784 programs where the plain plans give 448, 18% above an even share on the busiest one.
- `p1k`: both passes at ~1056 programs (784-896 for ResNet-50, also within 3% of even): for when
  bn_sums_check's `tile8k_w8_p1k` beats the balanced 392.
Beside the benchmark's line as configured, in the same device call. Off a GPU BN keeps XLA's sums,
so there every variant is the same program.
"""

from __future__ import annotations

import sys
from pathlib import Path

VARIANTS = {
    "bwd_tile4k": lambda cs: {"BACKWARD": cs.FORWARD},
    "sm132": lambda cs: {"FORWARD": cs.FORWARD._replace(sms=132), "BACKWARD": cs.BACKWARD._replace(sms=132)},
    "p1k": lambda cs: {"FORWARD": cs.FORWARD._replace(programs=1056), "BACKWARD": cs.BACKWARD._replace(programs=1056)},
}


def main(argv: list[str]) -> None:
    """argv: this process's, VARIANT first; the benchmark parses the rest."""
    from scan_empty_check import run_marked

    from resnet_v2_jax import column_sums

    if len(argv) < 2 or argv[1] not in VARIANTS:
        sys.exit(f"usage: tiling_check.py VARIANT [benchmark flags]; VARIANT one of {', '.join(VARIANTS)}")
    variant = argv.pop(1)
    for name, tiling in VARIANTS[variant](column_sums).items():
        setattr(column_sums, name, tiling)
    run_marked(f"ours_{variant}")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, where the package is not installed
    main(sys.argv)

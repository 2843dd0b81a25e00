"""Times our step with `layers.scan_friendly_conv` swapped for plain `lax.conv_general_dilated`.

`python bench/scan_conv_check.py --config=experiments/X.py [benchmark flags]`: the same output as
`python -m resnet_v2_jax.benchmark`, with impl "ours_no_custom_conv_vjp". It shows what the
custom VJP buys on the CPU backend, where XLA's own conv-gradient rule inside a while loop (scan)
falls to a slow path. On a GPU the custom VJP is not used at all (scan_friendly_conv checks
the backend), so this check is for CPU only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
from absl import flags


def main(argv):
    del argv
    from resnet_v2_jax import benchmark, networks, units

    f = flags.FLAGS
    networks.scan_friendly_conv = units.scan_friendly_conv = jax.lax.conv_general_dilated
    r = benchmark.run(f.config, steps=f.steps, warmup=f.warmup, timing=f.timing)
    r["impl"] = "ours_no_custom_conv_vjp"
    print(json.dumps(r) if f.json else benchmark.format_result(r), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, where the package is not installed
    from resnet_v2_jax import benchmark, cli

    benchmark.define_flags()
    cli.run(main)

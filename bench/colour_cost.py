"""XLA's cost analysis of the ImageNet step's on-device input work, for a GPU-time estimate.

    python bench/colour_cost.py [--batch=256] [--size=224]

Compiles (on whatever backend is present) the colour jitter + lighting + normalisation that the
training step applies to uint8 ImageNet crops (`imagenet_augment='inception'`), and normalisation
alone, and prints the bytes they touch and the time those bytes take at a given HBM bandwidth:
a lower bound on their cost per step on a GPU (the work is memory-bound).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp

BANDWIDTH_TB_S = {"H200": 4.8, "H100 SXM": 3.35}  # spec sheets (cited)


def cost(fn, *args) -> dict:
    analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return {"bytes_accessed": analysis["bytes accessed"], "flops": analysis["flops"]}


def main() -> None:
    from resnet_v2_jax import augment

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--size", type=int, default=224)
    a = p.parse_args()
    mean, std = augment.MEAN_STD["imagenet2012"]
    images = jax.ShapeDtypeStruct((a.batch, a.size, a.size, 3), jnp.uint8)
    rows = {
        "colour+normalise": cost(lambda rng, x: augment.normalize(augment.colour_lighting(rng, x), mean, std),
                                 jax.random.PRNGKey(0), images),
        "normalise": cost(lambda x: augment.normalize(x, mean, std), images),
    }
    for name, r in rows.items():
        r.update(work=name, batch=a.batch, size=a.size, backend=jax.default_backend(), jax_version=jax.__version__,
                 **{f"ms_at_{card.replace(' ', '_')}": round(r["bytes_accessed"] / (tb * 1e12) * 1e3, 3)
                    for card, tb in BANDWIDTH_TB_S.items()})
        print(json.dumps(r))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the checkout, where the package is not installed
    main()

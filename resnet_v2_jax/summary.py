"""`python -m resnet_v2_jax.summary --config=experiments/X.py [--json]`: the network at a glance.

Parameters, forward multiply-adds per image and each stage's output shape, from abstract
evaluation only (`jax.eval_shape`): nothing is allocated or compiled, so ResNet-1001 and
ResNet-200 summarise in seconds on a laptop. Multiply-adds are counted per conv/dense call
by intercepting Flax modules; a call inside a scanned stage is counted once per unit of it.
"""

from __future__ import annotations

import json
import math
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging

from resnet_v2_jax import config as config_lib
from resnet_v2_jax import networks


def _image_shape(config) -> tuple[int, int, int]:
    info = config_lib.DATASET_INFO[config.dataset]
    size = config.image_size or (224 if config.model.family == "imagenet" and config.dataset == "synthetic"
                                 else info["image_size"])
    channels = 1 if config.dataset == "digits" else 3
    return size, size, channels


def analyse(config) -> dict:
    """Params, MACs and stage shapes of `config.model` on the config's input shape."""
    config_lib.validate_model(config.model)
    model = networks.build(config.model)
    _, stages = config_lib.stage_units(config.model)
    calls: dict[tuple, int] = {}
    outputs: dict[str, tuple] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        path = tuple(module.scope.path) if module.scope else ()
        if isinstance(module, (nn.Conv, nn.Dense)):
            kernel = module.variables["params"]["kernel"]
            spatial = math.prod(out.shape[1:-1]) if out.ndim > 2 else 1
            calls[path] = spatial * math.prod(kernel.shape)
        top = next((p for p in path if p.startswith("stage")), None)
        if top and len(path) >= 1:
            outputs[top.split("_")[0]] = tuple(out.shape[1:]) if hasattr(out, "shape") else tuple(out[0].shape[1:])
        return out

    x = jnp.zeros((1,) + _image_shape(config), jnp.float32)
    with nn.intercept_methods(interceptor):
        variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))

    def repeats(path):
        for p in path:
            if p.startswith("stage") and p.endswith("_units"):
                return stages[int(p[len("stage"):-len("_units")]) - 1] - 1
        return 1

    macs = sum(m * repeats(p) for p, m in calls.items())
    stage_macs = {}
    for p, m in calls.items():
        key = next((q.split("_")[0] for q in p if q.startswith("stage")), "conv1" if "conv1" in p else "fc")
        stage_macs[key] = stage_macs.get(key, 0) + m * repeats(p)
    params = variables["params"]
    stage_params = {}
    for key, tree in params.items():
        name = key.split("_")[0]
        stage_params[name] = stage_params.get(name, 0) + sum(a.size for a in jax.tree.leaves(tree))
    m = config.model
    return {
        "experiment": config.experiment,
        "family": m.family,
        "depth": m.depth,
        "block": m.block,
        "unit": m.unit,
        "shortcut": m.shortcut,
        "shortcut_type": m.shortcut_type,
        "width": m.width,
        "input": list(_image_shape(config)),
        "params": int(sum(a.size for a in jax.tree.leaves(params))),
        "batch_stats": int(sum(a.size for a in jax.tree.leaves(variables.get("batch_stats", {})))),
        "macs": int(macs),
        "stages": {k: list(v) for k, v in sorted(outputs.items())},
        "units_per_stage": list(stages),
        "stage_params": stage_params,
        "stage_macs": stage_macs,
    }


def format_table(s: dict) -> str:
    rows = [("layer", "output (HxWxC)", "params", "MACs")]
    for name in ["conv1"] + sorted(s["stages"]) + ["final", "fc"]:
        shape = "x".join(map(str, s["stages"][name])) if name in s["stages"] else ""
        units = ""
        if name in s["stages"]:
            units = f" ({s['units_per_stage'][int(name[5:]) - 1]} units)"
        rows.append((name + units, shape, f"{s['stage_params'].get(name, 0):,}", f"{s['stage_macs'].get(name, 0):,}"))
    rows.append(("total", "", f"{s['params']:,}", f"{s['macs']:,}"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [
        f"ResNet-{s['depth']} ({s['family']}, {s['block']} units, unit={s['unit']}, shortcut={s['shortcut']}, "
        f"type {s['shortcut_type']}, width x{s['width']}), input {'x'.join(map(str, s['input']))}",
    ]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0 or i == len(rows) - 2:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"{s['params'] / 1e6:.2f}M parameters, {s['macs'] / 1e9:.3f}G multiply-adds per image (forward)")
    return "\n".join(lines)


def main(argv):
    from absl import flags

    del argv
    logging.set_verbosity(logging.WARNING)
    cfg = flags.FLAGS.config
    try:
        s = analyse(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(json.dumps(s) if flags.FLAGS.json else format_table(s))


if __name__ == "__main__":
    from absl import flags

    from resnet_v2_jax import cli

    cli.define_config_flag()
    flags.DEFINE_bool("json", False, "Print one JSON object instead of the table.")
    cli.run(main)

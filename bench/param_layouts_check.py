"""ResNet-50's training step for an H200, compiled on this machine (as bench/gpu_launches.py does),
with the state's 4-D and 5-D leaves (convolution kernels, stacked or not, and their momentum) in layouts XLA chooses
(`jax.experimental.layout.Layout.AUTO`) against the default row-major ones: launches, transposes,
bytes, and whether XLA gives the updated state the layouts it takes (a training loop feeds one
step's output state to the next).

Why: in the H200's profile of ResNet-50 (2026-11-28) 85 kernels that cast and transpose the conv
kernels to cuDNN's layout took 0.76 ms a step at 1.3 TB/s. Not a lever yet: see BENCHMARKS.md.
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 /tmp/jax112/bin/python bench/param_layouts_check.py
"""

from __future__ import annotations

import collections
import functools
import importlib.util
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def main() -> None:
    import gpu_launches
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.experimental import topologies
    from jax.experimental.layout import Format, Layout

    from resnet_v2_jax import augment, benchmark, layers
    from resnet_v2_jax import step as step_lib

    spec = importlib.util.spec_from_file_location("experiment", ROOT / "experiments" / "imagenet_resnet50.py")
    experiment = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(experiment)
    config = experiment.get_config()
    config.model.dtype = "bfloat16"
    topology = topologies.get_topology_desc("layouts", "cuda", target_config=gpu_launches.TARGET.read_text(),
                                            topology="1x1x1")
    mesh = step_lib.make_mesh(np.asarray(topology.devices))
    layers.TARGET_PLATFORM = "gpu"
    _, colour, _, device_augment = benchmark._inputs(config)
    config = benchmark.prepare(config)
    image_shape = (config.image_size, config.image_size, 3)
    rep, data = step_lib.replicated(mesh), step_lib.batch_sharding(mesh)
    task = step_lib.make_task(config, image_shape, augment.MEAN_STD["imagenet2012"], device_augment, colour)
    abstract = step_lib.abstract_state(task, 0)
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), abstract)
    batch = {"image": jax.ShapeDtypeStruct((config.batch_size,) + image_shape, jnp.uint8, sharding=data),
             "label": jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=data)}
    for auto in (False, True):
        formats = jax.tree.map(lambda a, auto=auto: Format(Layout.AUTO, rep) if auto and a.ndim >= 4 else rep,
                               abstract)
        train = jax.jit(functools.partial(step_lib.train_step, task), in_shardings=(formats, data, rep),
                        out_shardings=(formats, rep), donate_argnums=0)
        with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
            compiled = train.lower(state, batch, None).compile()
        text = compiled.as_text()
        kinds = collections.Counter()
        for row in gpu_launches.kernel_rows(text).values():
            kinds[row["kind"]] += row["calls"]
        line = {"layouts": "auto" if auto else "default", "launches": gpu_launches.count_launches(text)["launches"],
                "transpose_kernels": sum(v for k, v in kinds.items() if "transpose" in k),
                "kernel_bytes": gpu_launches.kernel_bytes(text)["kernel_bytes"], "jax_version": jax.__version__}
        if auto:
            def leaves(tree):
                return jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, Format))
            ins, outs = leaves(compiled.input_formats[0][0]), leaves(compiled.output_formats[0])
            kernels = [i for i, a in zip(ins, jax.tree.leaves(abstract)) if a.ndim >= 4]
            line |= {"kernel_leaves": len(kernels),
                     "not_row_major": sum(list(i.layout.major_to_minor) != sorted(i.layout.major_to_minor)
                                          for i in kernels),
                     "output_layout_differs": sum(str(i.layout) != str(o.layout) for i, o in zip(ins, outs))}
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()

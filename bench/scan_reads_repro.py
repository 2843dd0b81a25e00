"""XLA's H200 code for one fusion that reads K units of a stacked array, as a scan's backward does.

The cause behind `resnet_v2_jax/scan_reads.py`, alone: from a bf16 stack [iterations=11, units=10,
N, H, W, C], compute `x * mul + add > 0` (a ReLU mask of a BN output) for K units of iteration `i`
in one jitted function, which XLA compiles to one multi-output fusion. Two ways to read the units:
- `block`: JAX's lowering of scan(unroll=10): iteration i's block by one dynamic slice, then unit
  k's rows by a static slice of the block;
- `unit`: scan_reads' lowering: unit k's rows by one dynamic index into the flat stack [110, ...].
Prints one JSON line per (way, K): the fusion's PTX facts (lines, branches, scalar and vector
global loads; `gpu_launches.ptx_kernels`). Compiled for an H200 on a machine without a GPU, in the
CUDA plugin's environment (`bench/gpu_launches.py` docstring has its set-up):
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 /tmp/gpuenv/bin/python bench/scan_reads_repro.py
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (11, 10, 64, 16, 16, 32)  # ResNet-1001's 16x16 stage at batch 64, bottleneck width 32


def reads(way: str, k: int):
    import jax
    import jax.numpy as jnp

    def f(x, i, mul, add):
        if way == "block":
            block = jax.lax.dynamic_index_in_dim(x, 10 - i, keepdims=False)
            units = [block[j] for j in range(k)]
        else:
            flat = x.reshape(-1, *x.shape[2:])
            units = [jax.lax.dynamic_index_in_dim(flat, (10 - i) * 10 + j, keepdims=False) for j in range(k)]
        return [u.astype(jnp.float32) * mul + add > 0 for u in units]

    return f


def main() -> None:
    dump = tempfile.mkdtemp(prefix="scan_reads_repro_")
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={dump} --xla_gpu_dump_llvmir=true --xla_dump_emitter_re=.*".strip()
    import jax
    import jax.numpy as jnp
    from jax.experimental import topologies
    from jax.sharding import SingleDeviceSharding

    sys.path.insert(0, str(ROOT))
    from bench.gpu_launches import TARGET, ptx_kernels

    device = topologies.get_topology_desc("repro", "cuda", target_config=TARGET.read_text(),
                                          topology="1x1x1").devices[0]
    placed = SingleDeviceSharding(device)
    args = (jax.ShapeDtypeStruct(SHAPE, jnp.bfloat16, sharding=placed),
            jax.ShapeDtypeStruct((), jnp.int32, sharding=placed),
            jax.ShapeDtypeStruct(SHAPE[-1:], jnp.float32, sharding=placed),
            jax.ShapeDtypeStruct(SHAPE[-1:], jnp.float32, sharding=placed))
    for way in ("block", "unit"):
        for k in (1, 2, 8):
            for old in Path(dump).iterdir():
                old.unlink()
            jax.jit(reads(way, k)).lower(*args).compile()
            ptx = {}
            for path in Path(dump).glob("*.ptx"):
                ptx.update(ptx_kernels(path.read_text()))
            print(json.dumps({"way": way, "units": k, "target": device.device_kind, "jax_version": jax.__version__,
                              "kernels": ptx}), flush=True)
    shutil.rmtree(dump, ignore_errors=True)


if __name__ == "__main__":
    main()

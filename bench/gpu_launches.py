"""How many device operations the host launches per training step on an H100/H200, on a machine with no GPU.

On the H200 our CIFAR steps are bound by the host, not the GPU: XLA's runtime launches each kernel,
cuDNN call and copy from the host, about 5 microseconds apiece (BENCHMARKS.md, "Launch counts").
So the number of launches per step predicts the step time of those networks, and it can be had
without a GPU: XLA compiles for a GPU it does not see (deviceless AOT, through the CUDA PJRT plugin
and a target description, bench/h200_target_config.txtpb). The compiled program's HLO then lists
every fusion, custom call (cuDNN convolutions) and copy; while loops count their body once per
iteration (XLA annotates the known trip count) and a command buffer (CUDA graph) counts once.

Not counted: autotuning (needs the GPU; the algorithm choice does not change the count), host work
outside the step. The GPU compiler here is the plugin matching this machine's jaxlib, which may be
older than the GPU machine's.

Set-up, once (about 5 GB, in its own environment so the project's tests never load CUDA):
    python -m venv --system-site-packages /tmp/gpuenv
    V=$(python -c 'import jaxlib; print(jaxlib.__version__)')
    /tmp/gpuenv/bin/pip install "jax-cuda12-plugin[with-cuda]==$V" "jax-cuda12-pjrt==$V"
The H200's own compiler, JAX 0.11.2, needs Python >= 3.12 (its packages, no project install):
    python3.12 -m venv /tmp/jax112 && /tmp/jax112/bin/pip install jax==0.11.2 jaxlib==0.11.2 flax optax \
        ml_collections absl-py "jax-cuda12-plugin[with-cuda]==0.11.2" jax-cuda12-pjrt==0.11.2
and runs this script the same way with /tmp/jax112/bin/python.
Then, from the repository root:
    JAX_PLATFORMS=cpu JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1 PYTHONPATH=. /tmp/gpuenv/bin/python \
        bench/gpu_launches.py --config=experiments/cifar10_resnet164.py --config.batch_size=128 [--baseline]
One JSON line: launches per step, the loops' trip counts and launches per iteration, launches by kind,
`compiled_peak_bytes`, what XLA's buffer assignment for the GPU allocates for one step, and
`kernel_bytes`, what the launched kernels read and write in one step (by kind in `bytes_by_kind`):
at the card's memory bandwidth, a floor on the step's GPU time that the kernel count does not give.
`--by_op=N` adds the N groups of kernels with the most launches, grouped by the JAX operation that
made them (`by_op`), one JSON line each. `count_launches`, `kernel_bytes` and `by_op` (the HLO
reading) are tested in tests/test_benchmark.py, on hand-written HLO and on CPU-compiled programs.
"""

from __future__ import annotations

import collections
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "bench" / "h200_target_config.txtpb"

# HLO ops that launch nothing: views, tuples, constants, parameters, scheduling markers.
NO_LAUNCH = {"parameter", "tuple", "get-tuple-element", "bitcast", "constant", "after-all", "partition-id",
             "replica-id", "opt-barrier", "add-dependency", "domain"}
_COMPUTATION = re.compile(r"^(ENTRY )?%?([\w.\-]+) .*\{\s*$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([\w\-]+)\((.*)$")


def parse_hlo(text: str) -> tuple[dict[str, list[tuple[str, str]]], str]:
    """({computation: [(opcode, line)]}, entry name) of an HLO module's text."""
    computations, current, entry = {}, None, None
    for line in text.splitlines():
        m = _COMPUTATION.match(line)
        if m and not line.startswith(" "):
            current = m.group(2)
            computations[current] = []
            entry = current if m.group(1) else entry
        elif line.startswith("}"):
            current = None
        elif current is not None:
            m = _INSTRUCTION.match(line)
            if m:
                computations[current].append((m.group(2), line))
    if entry is None:
        raise ValueError("no ENTRY computation in this HLO text")
    return computations, entry


def _called(line: str, key: str) -> str:
    return re.search(key + r"=%?([\w.\-]+)", line).group(1)


def count_launches(text: str) -> dict:
    """Launches per call of the module in `text`, with the loops and a count by kind.

    A while loop with a known trip count runs its body that many times; without one, its condition too,
    plus the predicate's copy to the host. A conditional counts itself and its largest branch; a call
    into a command buffer (`command_buffer` computations) counts once; other calls are inlined. An
    async pair (`fusion-start`, `fusion-done`) is one launch; the `-done` waits are listed, not counted."""
    computations, entry = parse_hlo(text)
    kinds: collections.Counter = collections.Counter()
    loops: list[dict] = []

    def count(name: str, times: int) -> int:
        total = 0
        for op, line in computations[name]:
            if op in NO_LAUNCH:
                continue
            if op.endswith("-done"):  # the wait for an async op (XLA 0.11 runs some fusions so): no kernel
                kinds[op] += times
                continue
            if op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                n = int(trips.group(1)) if trips else 1
                per = count(_called(line, "body"), times * n)
                if not trips:
                    per += count(_called(line, "condition"), times * n) + 1
                loops.append({"trip_count": int(trips.group(1)) if trips else None, "launches_per_iteration": per})
                total += n * per
            elif op == "conditional":
                branches = re.findall(r"%?([\w.\-]+)", line.split("branch_computations={")[1].split("}")[0])
                kinds["conditional"] += times
                total += 1 + max(count(b, 0) for b in branches)
            elif op == "call" and "command_buffer" in _called(line, "to_apply"):
                kinds["command_buffer"] += times
                total += 1
            elif op == "call":
                total += count(_called(line, "to_apply"), times)
            else:
                target = re.search(r'custom_call_target="([^"]+)"', line) if op == "custom-call" else None
                kinds[f"custom-call {target.group(1)}" if target else op] += times
                total += 1
        return total

    return {"launches": count(entry, 1), "loops": loops, "by_kind": dict(kinds.most_common())}


_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4, "s32": 4, "u32": 4,
                "f64": 8, "s64": 8, "u64": 8}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
_VIEWS = {"dynamic-slice", "slice", "bitcast", "reshape", "gather"}  # read at their result's size


def _shape_bytes(shape: str) -> int:
    """Bytes of every array in an HLO shape (a tuple's elements summed)."""
    return sum(_DTYPE_BYTES[dt] * math.prod(int(d) for d in dims.split(",") if d)
               for dt, dims in _ARRAY.findall(shape))


def _parts(line: str) -> tuple[str, str, list[str]]:
    """(name, result shape, operand names) of one HLO instruction line."""
    name, rest = line.split(" = ", 1)
    shape, call = rest.split(f" {re.match(_INSTRUCTION, line).group(2)}(", 1)
    return name.strip().removeprefix("ROOT ").lstrip("%"), shape, re.findall(r"%([\w.\-]+)", call.split("), ")[0])


def _fusion_traffic(body: list[tuple[str, str]]) -> tuple[dict[int, int], int | None]:
    """What a fused computation reads of its parameters and writes as its result, where that is less
    than the whole arrays: ({parameter: bytes}, result bytes or None for the whole result).

    A parameter that reaches its uses only through views (dynamic-slice, slice, bitcast, reshape,
    or the rows a gather takes; a convert between them scales their size to its input's type) is
    read at the size of the views it is cut to; the buffer a
    dynamic-update-slice updates in place is not read, and such a result writes only its updates. So a loop body that takes one unit's
    tensors out of a stacked buffer, or stores them into one, counts that unit's bytes."""
    shapes, params, users, root = {}, {}, collections.defaultdict(list), None
    for op, line in body:
        name, shape, operands = _parts(line)
        shapes[name] = (op, _shape_bytes(shape), operands)
        if op == "parameter":
            params[name] = int(re.search(r"parameter\((\d+)\)", line).group(1))
        if line.lstrip().startswith("ROOT"):
            root = name
        for i, operand in enumerate(operands):
            users[operand].append((name, op, i))

    def viewed(name: str) -> int | None:  # bytes read through views, or None: read whole
        if not users[name] or name == root:
            return None
        total = 0
        for user, op, i in users[name]:
            if op == "dynamic-update-slice" and i == 0:
                continue
            if op == "convert":  # a cast between views (JAX 0.11.2's XLA casts a block, then slices it)
                inner, whole = viewed(user), shapes[name][1]
                total += whole if inner is None else min(whole, inner * whole // max(shapes[user][1], 1))
                continue
            if op not in _VIEWS or i != 0:
                return None
            inner = viewed(user)
            total += shapes[user][1] if inner is None else min(shapes[user][1], inner)
        return total

    reads = {index: v for name, index in params.items() if (v := viewed(name)) is not None}
    outputs = shapes[root][2] if root and shapes[root][0] == "tuple" else [root]
    if not any(shapes[o][0] == "dynamic-update-slice" for o in outputs if o in shapes):
        return reads, None
    written = sum(shapes[shapes[o][2][1]][1] if shapes[o][0] == "dynamic-update-slice" else shapes[o][1]
                  for o in outputs)
    return reads, written


def kernel_rows(text: str) -> dict[str, dict]:
    """Each launched kernel of one call of the module in `text`, by its HLO name: {"kind" (fusion
    kind, cuDNN call, copy), "calls" (per call of the module: loops times their trip counts), "bytes"
    (what one launch reads and writes)}. `kernel_bytes` sums them; `bench/kernel_bandwidth.py` sets
    them beside a profile's kernel times, whose fusion kernels carry these names.

    Each kernel counts its result and its operands once (an upper bound where a kernel reads an
    operand partly, such as a convolution's padding; a lower one where it reads twice), a fusion's
    views and in-place updates at their size (`_fusion_traffic`), a cuDNN call without its u8
    workspace; command buffers count the kernels they hold. Only the operands' sizes are read, so an
    operand defined outside the computation (a loop's parameters come through get-tuple-element)
    counts at the shape its get-tuple-element names."""
    computations, entry = parse_hlo(text)
    rows: dict[str, dict] = {}

    def walk(name: str, times: int) -> None:
        sizes = {}
        for op, line in computations[name]:
            result, shape, operands = _parts(line)
            sizes[result] = _shape_bytes(shape)
            if op in NO_LAUNCH or op.endswith("-done"):
                continue
            if op == "while":
                trips = re.search(r'"known_trip_count":\{"n":"(\d+)"', line)
                walk(_called(line, "body"), times * (int(trips.group(1)) if trips else 1))
            elif op == "conditional":
                continue  # a branch runs at most once a step here (the NaN guard's); not counted
            elif op == "call":
                walk(_called(line, "to_apply"), times)
            else:
                reads = [sizes.get(o, 0) for o in operands]
                written = sizes[result]
                kind = op
                if op in ("fusion", "fusion-start"):
                    partial, out = _fusion_traffic(computations.get(_called(line, "calls"), []))
                    reads = [min(r, partial.get(i, r)) for i, r in enumerate(reads)]
                    written = written if out is None else out
                    kind = re.sub(r"[._0-9]+$", "", result) or op
                elif op in ("dynamic-slice", "gather"):
                    reads[0] = min(reads[0], written)
                elif op == "dynamic-update-slice":
                    reads[0], written = 0, reads[1]
                elif op == "custom-call":
                    target = re.search(r'custom_call_target="([^"]+)"', line)
                    kind = f"custom-call {target.group(1)}" if target else op
                    written = _shape_bytes(re.sub(r"u8\[[0-9,]*\]", "", shape))  # without the workspace
                row = rows.setdefault(result, {"kind": kind, "calls": 0, "bytes": written + sum(reads)})
                row["calls"] += times

    walk(entry, 1)
    return rows


def kernel_bytes(text: str) -> dict:
    """Bytes the launched kernels of one call of the module read and write (`kernel_rows`), loops
    times their trip counts, in total and by kind (fusion kind, cuDNN call, copy): a floor on the
    step's GPU time at the card's memory bandwidth, beside `count_launches`' kernels."""
    by_kind: collections.Counter = collections.Counter()
    for row in kernel_rows(text).values():
        by_kind[row["kind"]] += row["calls"] * row["bytes"]
    return {"kernel_bytes": sum(by_kind.values()), "bytes_by_kind": dict(by_kind.most_common())}


SMALL_KERNEL_BYTES = 1 << 20


def by_op(text: str, top: int, parts: int = 2) -> list[dict]:
    """The launched kernels (`kernel_rows`) grouped by kind and by the JAX operation XLA names as
    their origin (the last `parts` parts of the root instruction's `op_name`, without shapes):
    launches and bytes per call of the module, and `small_launches`, those of kernels that move
    under 1 MiB a launch: each takes a GPU a few microseconds, mostly fixed cost (ResNet-50 on an
    H200, 2026-11-28: 541 kernels under 3 us, 0.85 ms a step). The `top` groups with the most
    launches. Why: a launch count says how many kernels there are, this says which code makes them
    (the NaN guard's selects, an optimizer's per-leaf updates, BN's partial sums)."""
    origin = {}
    for line in text.splitlines():
        m = _INSTRUCTION.match(line)
        op_name = re.search(r'op_name="([^"]+)"', line) if m else None
        if op_name:
            origin[m.group(1)] = "/".join(re.sub(r"\[.*?\]", "", op_name.group(1)).split("/")[-parts:])
    groups: dict[tuple[str, str], dict] = {}
    for name, row in kernel_rows(text).items():
        key = (row["kind"], origin.get(name, "?"))
        group = groups.setdefault(key, {"kind": key[0], "op": key[1], "launches": 0, "bytes": 0, "small_launches": 0})
        group["launches"] += row["calls"]
        group["bytes"] += row["calls"] * row["bytes"]
        group["small_launches"] += row["calls"] if row["bytes"] < SMALL_KERNEL_BYTES else 0
    return sorted(groups.values(), key=lambda g: (-g["launches"], -g["bytes"]))[:top]


def kernel_name(hlo_name: str) -> str:
    """The GPU kernel XLA emits for a fusion, as PTX and profiles name it ("input_reduce_fusion_9"
    for the HLO's "input_reduce_fusion.9")."""
    return hlo_name.replace(".", "_")


_ENTRY = re.compile(r"\.entry (\w+)\((.*?)\n\}", re.S)


def ptx_kernels(text: str) -> dict[str, dict]:
    """What each kernel's GPU code does, from PTX text: {kernel: {"lines", "branches", "scalar_loads",
    "vector_loads"}} (global loads; `.v2`/`.v4` ones are vector loads). Why: without a GPU the
    code says which memory-bound kernels cannot reach the card's bandwidth. A kernel whose
    loads are scalar, or whose branches split a warp, moves its bytes far slower (the ResNet-50
    max-pool backward: 36 + 36 scalar loads and 60 branches, 0.6 TB/s on the H200)."""
    out = {}
    for name, body in _ENTRY.findall(text):
        loads = re.findall(r"\bld\.global[.\w]*", body)
        vector = sum(1 for op in loads if ".v2." in op or ".v4." in op or ".v8." in op)
        out[name] = {"lines": body.count("\n"), "branches": len(re.findall(r"\bbra\b", body)),
                     "scalar_loads": len(loads) - vector, "vector_loads": vector}
    return out


def code_table(hlo: str, ptx: dict[str, dict], top: int) -> list[dict]:
    """The `top` kernels that move the most bytes a step (`kernel_rows`), each with its PTX facts
    (`ptx_kernels`; a fusion's kernel is `kernel_name` of it; fusions that XLA gives one
    kernel share a `deduplicated_name`, and the kernel is named after one of them); library calls
    have none."""
    group = dict(re.findall(r'%([\w.\-]+) = [^\n]*?deduplicated_name="([\w.\-]+)"', hlo))
    members = collections.defaultdict(list)
    for name, canonical in group.items():
        members[canonical].append(name)

    def code(name: str) -> dict:
        canonical = group.get(name, name)
        for candidate in [name, canonical, *members[canonical]]:
            if kernel_name(candidate) in ptx:
                return ptx[kernel_name(candidate)]
        return {}

    rows = sorted(kernel_rows(hlo).items(), key=lambda kv: -kv[1]["calls"] * kv[1]["bytes"])
    return [{"name": name, "kind": row["kind"], "bytes": row["calls"] * row["bytes"], "calls": row["calls"],
             **code(name)} for name, row in rows[:top]]


def main(argv):
    del argv
    import jax
    import numpy as np
    from absl import flags
    from jax.experimental import topologies

    from resnet_v2_jax import benchmark, column_sums, layers
    from resnet_v2_jax import step as step_lib

    f = flags.FLAGS
    xla_flags = step_lib.apply_xla_flags(f.config.xla_flags)  # as training and the benchmark run the config
    dump = tempfile.mkdtemp(prefix="gpu_launches_") if f.code else None
    if dump:  # XLA reads its flags when the plugin starts, below: the step's PTX, one file per kernel group
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_dump_to={dump} --xla_dump_hlo_module_re=.*train_step.*"
                                   + " --xla_gpu_dump_llvmir=true --xla_dump_emitter_re=.*").strip()  # newer XLAs dump PTX only with both
    topology = topologies.get_topology_desc("gpu_launches", "cuda", target_config=Path(f.target_config).read_text(),
                                            topology=f"1x1x{f.devices}")
    mesh = step_lib.make_mesh(np.asarray(topology.devices))
    layers.TARGET_PLATFORM = "gpu"  # the network as it is traced on a GPU (no CPU-only conv gradient)
    for name in ("FORWARD", "BACKWARD"):  # Tiling.sms=DEVICE would read this CPU's device: the target's count
        if getattr(column_sums, name).sms == column_sums.DEVICE:
            setattr(column_sums, name, getattr(column_sums, name)._replace(sms=topology.devices[0].core_count))
    config = f.config
    t0 = time.perf_counter()
    # Pallas's Triton lowering (model.bn_pallas_sums) asks for the GPU it compiles for: the abstract
    # mesh names the target's device kind.
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        compiled = benchmark.lower_step(config, mesh, baseline=f.baseline).compile()
    compile_s = time.perf_counter() - t0
    text = compiled.as_text()
    if f.dump_hlo:
        Path(f.dump_hlo).write_text(text)
    print(json.dumps({
        "impl": "plain_flax" if f.baseline else "ours", "model": benchmark.model_name(config),
        "experiment": config.experiment, "batch": config.batch_size, "dtype": config.model.dtype,
        "scan": bool(config.model.scan) and not f.baseline,
        "scan_unroll": config.model.scan_unroll if config.model.scan and not f.baseline else None,
        "bn_group_size": 0 if f.baseline else config.bn_group_size,
        # the model's kernel levers that are on (lines before 2026-11-27, session 12, lack this)
        "levers": [] if f.baseline else [k for k in ("bn_recompute_mask", "bn_partial_sums", "bn_pallas_sums",
                                                                  "stem_space_to_depth",
                                                                  "stem_align_channels", "bn_recompute_output",
                                                                  "scan_unit_reads", "conv1x1_fusion")
                                         if config.model.get(k)]
        + [k for k in ("auto_param_layouts", "explicit_data_parallel") if config.get(k) and not f.baseline],
        "target": topology.devices[0].device_kind, "devices": len(topology.devices), "jax_version": jax.__version__,
        "xla_flags": xla_flags, "compile_s": round(compile_s, 1),
        "compiled_peak_bytes": benchmark.compiled_peak_bytes(compiled), **count_launches(text),
        **kernel_bytes(text)}), flush=True)
    if dump:
        ptx = {}
        for path in Path(dump).glob("*.ptx"):
            ptx.update(ptx_kernels(path.read_text()))
        shutil.rmtree(dump, ignore_errors=True)
        for row in code_table(text, ptx, f.code):
            print(json.dumps(row), flush=True)
    for group in by_op(text, f.by_op):
        print(json.dumps({"by_op": group}), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    from absl import app, flags

    from resnet_v2_jax import cli

    cli.define_config_flag()
    flags.DEFINE_bool("baseline", False, "Count the plain jit Flax baseline (bench/plain_flax.py) instead of ours.")
    flags.DEFINE_string("target_config", str(TARGET), "GpuTargetConfigProto text of the GPU to compile for.")
    flags.DEFINE_integer("devices", 1, "GPUs of the target on one host: the step as compiled for one of them, "
                         "the batch sharded over all (collectives are counted as launches).")
    flags.DEFINE_string("dump_hlo", "", "Also write the compiled HLO text here.")
    flags.DEFINE_integer("by_op", 0, "Also print the N groups of kernels (by kind and the JAX operation that made them) "
                         "with the most launches, one JSON line each, with their bytes and launches under 1 MiB.")
    flags.DEFINE_integer("code", 0, "Also print the N kernels that move the most bytes, one JSON line each, with "
                         "what their PTX does (lines, branches, scalar and vector global loads).")
    app.run(main)

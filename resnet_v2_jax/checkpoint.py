"""Orbax checkpoints of the train state, with the checks that make resuming safe.

Each checkpoint holds the state (params, BN statistics, optimizer state, step, RNG) and a small
JSON record of the model and dataset it belongs to. Orbax writes a step into a temporary
directory and renames it when complete (or marks it with a commit file on GCS), so a process
killed mid-save leaves nothing that `all_steps()` lists. A complete but damaged newest
checkpoint (a truncated or deleted file) fails to restore; we then fall back to the previous
one with a warning. A workdir holding another model's checkpoints is refused, never
overwritten.
"""

from __future__ import annotations

import json
import sys
import time

import jax
import orbax.checkpoint as ocp
from etils import epath


class CheckpointMismatch(ValueError):
    """The workdir's checkpoints belong to a different model or dataset."""


# How the step is compiled, not what it computes: the parameter layout is the same under each and the
# numbers agree to float rounding (tests/test_networks.py, tests/test_layers.py), so a checkpoint
# resumes under any of them, e.g. unrolled on a GPU after a scanned start on a CPU.
COMPILE_ONLY_FIELDS = ("scan", "scan_unroll", "remat", "remat_policy", "bn_recompute_mask", "bn_partial_sums", "bn_pallas_sums",
                       "stem_space_to_depth", "stem_align_channels", "bn_recompute_output", "scan_unit_reads", "conv1x1_fusion")


def _without_compile_only(fp: dict) -> dict:
    return {**fp, "model": {k: v for k, v in fp.get("model", {}).items() if k not in COMPILE_ONLY_FIELDS}}


def fingerprint(config) -> dict:
    """The fields a checkpoint must agree on to be resumed: the model and the dataset."""
    return _without_compile_only({"model": json.loads(config.model.to_json()), "dataset": config.dataset})


def _differences(a: dict, b: dict, prefix="") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{key}.")
        elif va != vb:
            out.append(f"{prefix}{key}: checkpoint {va!r} vs config {vb!r}")
    return out


class Checkpointer:
    def __init__(self, workdir, config, timeout_s: int = 300):
        self.directory = epath.Path(workdir) / "checkpoints"
        self.config = config
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp.checkpoint_managers.LatestN(config.keep_checkpoints),
            enable_async_checkpointing=True,
            async_options=ocp.AsyncOptions(timeout_secs=timeout_s),
            create=False,
            cleanup_tmp_directories=True,  # a save cut short by kill -9 leaves a tmp dir: removed at start
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("state", "meta"))
        self.last_requested: int | None = None  # the step of the newest save() call
        self.restored_meta: dict = {}  # the `meta` item of the checkpoint restore_latest took

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def check_compatible(self) -> None:
        """Raises CheckpointMismatch naming the differing fields; reads only the small JSON."""
        steps = self.steps()
        if not steps:
            return
        path = self.directory / str(steps[-1]) / "meta" / "metadata"
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            return  # a damaged newest checkpoint: restore() falls back and checks the one it takes
        self._compare(meta, steps[-1])

    def _compare(self, meta: dict, step: int) -> None:
        # Checkpoints written before COMPILE_ONLY_FIELDS existed hold those fields too.
        diff = _differences(_without_compile_only(meta.get("fingerprint", {})), fingerprint(self.config))
        if diff:
            raise CheckpointMismatch(
                f"{self.directory} holds checkpoints (step {step}) of a different run; refusing to "
                f"resume or overwrite them ({'; '.join(diff[:4])}). Use a new --workdir.")

    def save(self, step: int, state, extra: dict | None = None, force: bool = False) -> bool:
        meta = {"fingerprint": fingerprint(self.config), "step": int(step), **(extra or {})}
        self.last_requested = int(step)
        self.directory.mkdir(parents=True, exist_ok=True)
        return self.manager.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
            force=force,
        )

    def restore_latest(self, abstract_state):
        """(state, step) from the newest checkpoint that restores, or (None, 0) when none does.

        Damaged checkpoints newer than the one taken are moved (not deleted) to
        `<workdir>/corrupt_checkpoints/<step>`, so that the run can write those steps again.
        """
        bad = []
        try:
            return self._restore_latest(abstract_state, bad)
        finally:
            if bad:
                self._set_aside(bad)

    def _set_aside(self, steps: list[int]) -> None:
        aside = self.directory.parent / "corrupt_checkpoints"
        if jax.process_index() == 0:
            aside.mkdir(parents=True, exist_ok=True)
            for step in steps:
                target = aside / f"{step}.{int(time.time())}"
                (self.directory / str(step)).rename(target)
                print(f"warning: moved the damaged checkpoint at step {step} to {target}", file=sys.stderr,
                      flush=True)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("resnet_v2_jax: damaged checkpoints set aside")
        self.manager.reload()

    def _restore_latest(self, abstract_state, bad: list[int]):
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(
                    step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                                  meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure means this step is unusable
                reason = (str(e).strip().splitlines() or [""])[0][:200]
                print(f"warning: the checkpoint at step {step} in {self.directory} cannot be restored "
                      f"({type(e).__name__}: {reason}); falling back to the previous one",
                      file=sys.stderr, flush=True)
                bad.append(step)
                continue
            self._compare(restored["meta"], step)
            self.restored_meta = dict(restored["meta"])
            return restored["state"], step
        return None, 0

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def abstract_with_sharding(abstract_state, sharding):
    """ShapeDtypeStructs carrying the sharding the restored arrays should have."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), abstract_state)

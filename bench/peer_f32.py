"""Runs the PyTorch peer (`../shared/bench/peer_torch.py`, copied to `.bench/`) in float32.

    python bench/peer_f32.py .bench/peer_torch.py MODEL BATCH STEPS [eager|compile]

The peer always wraps its step in bf16 autocast, which is what a GPU comparison wants. On a CPU
our step is float32 by default, so a like-for-like CPU comparison needs the peer in float32 too:
this replaces `torch.autocast` with a no-op context before the peer runs, and adds
`"dtype": "float32"` to the JSON line it prints (lines without it are bf16 autocast).
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys


def main() -> None:
    import torch

    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    torch.autocast = lambda *args, **kwargs: contextlib.nullcontext()
    sys.argv = sys.argv[1:]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(sys.argv[0], run_name="__main__")
    for line in out.getvalue().splitlines():
        if line.startswith("{"):
            line = json.dumps(dict(json.loads(line), dtype="float32"))
        print(line, flush=True)


if __name__ == "__main__":
    main()

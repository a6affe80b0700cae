#!/usr/bin/env python3
"""Regenerate the tiny example model in ``examples/tiny-model/``.

The files are ours (a seeded, randomly initialised two-layer MLP), a few KB each, and committed so
``safeload scan examples/`` has something real to scan right after ``pip install -e .``:

* ``model.pt``: ``torch.save`` of the module's ``state_dict`` (a real PyTorch zip checkpoint),
* ``model.safetensors``: the same tensors written by ``safetensors.torch.save_file``,
* ``config.json``: the shape of the module (a text file the scanner skips).

``tests/test_examples.py`` regenerates them and checks the bytes are identical, so the committed
binaries are exactly what this script writes. Usage: ``python examples/make_examples.py [OUTDIR]``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save as st_save
from torch import nn

SEED = 20240601
CONFIG = {"architectures": ["TinyMLP"], "in_features": 8, "hidden": 16, "out_features": 4}


def build_module() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(
        nn.Linear(CONFIG["in_features"], CONFIG["hidden"]),
        nn.ReLU(),
        nn.Linear(CONFIG["hidden"], CONFIG["out_features"]),
    )


def make(outdir: Path) -> list[Path]:
    """Write the three files into ``outdir``; returns their paths."""
    outdir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in build_module().state_dict().items()}
    # torch.save names the zip's root folder after the file; saving to a buffer under a fixed
    # name keeps the bytes independent of where the file is written.
    buffer = io.BytesIO()
    torch.save(state, buffer)
    pt = outdir / "model.pt"
    pt.write_bytes(buffer.getvalue())
    st = outdir / "model.safetensors"
    st.write_bytes(st_save(state, metadata={"format": "pt"}))
    cfg = outdir / "config.json"
    cfg.write_text(json.dumps(CONFIG, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return [cfg, pt, st]


def main(argv: list[str]) -> int:
    outdir = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "tiny-model"
    for path in make(outdir):
        print(f"wrote {path} ({path.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""What ``safeload.to_safetensors`` costs against the naive ``torch.load`` + ``save_file``.

Builds a real checkpoint (``torch.save`` of a stack of ``nn.TransformerEncoderLayer``s, ~256 MiB
by default), then converts it in a fresh subprocess per measurement so each peak RSS is its own.
Modes, interleaved round-robin after a warm-up read that puts the input in the page cache:

    naive             torch.load(path, weights_only=True) + safetensors.torch.save_file
                      (no check, no fsync, no atomic rename: what most convert scripts do)
    safeload          safeload.to_safetensors(path, out, sandbox=False)
    safeload_sandbox  safeload.to_safetensors(path, out, sandbox=True)

safeload's modes also fsync, hash, read back and compare every tensor; the ratio says what that
safety costs. Imports (torch, safetensors, safeload) happen before the clock starts. Printed:
median wall time of the conversion call, its ratio to ``naive``, peak RSS and its growth during
the call. Nothing is asserted. Run it under ``nice``::

    nice python benchmarks/bench_convert.py [--size-mib 256] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

MODES = ("naive", "safeload", "safeload_sandbox")
_MiB = 1 << 20

_BUILD = """
import sys, torch
from torch import nn
path, target = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
def layer():
    return nn.TransformerEncoderLayer(512, 8, 2048, batch_first=True)
layer_bytes = 4 * sum(p.numel() for p in layer().parameters())
n = max(1, round(target / layer_bytes))
model = nn.Sequential(*[layer() for _ in range(n)])
torch.save({"state_dict": model.state_dict(), "epoch": 1}, path)
"""

_CHILD = """
import json, os, resource, sys, time
import torch
import safeload
from safetensors.torch import save_file
import safeload.convert, safeload.integrations._load, safeload.policy  # imports are not timed
mode, path, out = sys.argv[1], sys.argv[2], sys.argv[3]

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

before = rss_kib()
t0 = time.perf_counter()
if mode == "naive":
    ckpt = torch.load(path, weights_only=True)
    save_file({k: v.contiguous() for k, v in ckpt["state_dict"].items()}, out,
              metadata={"format": "pt"})
elif mode == "safeload":
    safeload.to_safetensors(path, out, sandbox=False)
elif mode == "safeload_sandbox":
    safeload.to_safetensors(path, out, sandbox=True)
else:
    raise SystemExit(f"unknown mode {mode}")
seconds = time.perf_counter() - t0
size = os.path.getsize(out)
os.unlink(out)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "seconds": seconds, "rss_before_kib": before,
                  "peak_kib": peak, "out_bytes": size}))
"""


def build(path: Path, size_mib: int) -> None:
    if path.exists():
        return
    print(f"building ~{size_mib} MiB checkpoint at {path} ...", flush=True)
    subprocess.run([sys.executable, "-c", _BUILD, str(path), str(size_mib * _MiB)], check=True)


def warm(path: Path) -> None:
    with path.open("rb") as f:
        while f.read(64 * _MiB):
            pass


def measure(mode: str, path: Path, out: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def report(runs: dict[str, list[dict[str, float]]], size: int) -> None:
    rows = {}
    for mode, results in runs.items():
        rows[mode] = {
            "seconds": statistics.median(r["seconds"] for r in results),
            "peak_mib": statistics.median(r["peak_kib"] for r in results) / 1024,
            "growth_mib": statistics.median(r["peak_kib"] - r["rss_before_kib"] for r in results)
            / 1024,
            "out_mib": results[0]["out_bytes"] / _MiB,
        }
    base = rows.get("naive")
    size_mib = size / _MiB
    print(
        f"\ncheckpoint: {size_mib:.0f} MiB, {os.cpu_count()} CPUs, median of "
        f"{len(next(iter(runs.values())))} runs per mode"
    )
    print(
        f"{'mode':<18}{'time s':>9}{'x naive':>9}{'peak RSS MiB':>14}{'growth MiB':>12}"
        f"{'growth/size':>13}{'out MiB':>9}"
    )
    for mode, row in rows.items():
        ratio = row["seconds"] / base["seconds"] if base else float("nan")
        print(
            f"{mode:<18}{row['seconds']:>9.3f}{ratio:>9.2f}{row['peak_mib']:>14.0f}"
            f"{row['growth_mib']:>12.0f}{row['growth_mib'] / size_mib:>13.2f}"
            f"{row['out_mib']:>9.0f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the checkpoint here")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = parser.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="safeload-bench-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
        workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"transformer_{args.size_mib}MiB.pt"
    out = workdir / "out.safetensors"
    try:
        build(path, args.size_mib)
        warm(path)
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in args.modes}
        for i in range(args.repeats):
            for mode in args.modes:
                runs[mode].append(measure(mode, path, out))
            print(f"round {i + 1}/{args.repeats} done", flush=True)
        report(runs, path.stat().st_size)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())

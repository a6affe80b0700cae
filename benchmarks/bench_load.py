#!/usr/bin/env python3
"""How ``safeload.load`` compares with ``torch.load(weights_only=True)`` on a ~1 GiB checkpoint.

Builds a real checkpoint (``torch.save`` of a stack of ``nn.TransformerEncoderLayer``s), then
loads it in a fresh subprocess per measurement so each peak RSS (``ru_maxrss`` of the child) is
its own. Modes, interleaved round-robin so drift hits all of them alike, each after a warm-up
read that puts the file in the page cache:

    torch          torch.load(path, weights_only=True)
    torch_mmap     torch.load(path, weights_only=True, mmap=True)
    safeload       safeload.load(path)
    safeload_mmap  safeload.load(path, mmap=True)

Printed per mode: median wall time of the load call, peak RSS, and the peak RSS growth during the
load (peak minus the RSS right before it, i.e. without the interpreter and torch import). Ratios
are against ``torch``; the targets are a time ratio <= 1.0 and peak RSS growth <= 1.1x the
checkpoint size. Run it under ``nice`` on a shared machine::

    nice python benchmarks/bench_load.py [--size-mib 1024] [--repeats 3] [--workdir DIR]
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

MODES = ("torch", "torch_mmap", "safeload", "safeload_mmap")
_MiB = 1 << 20

_BUILD = """
import sys, torch
from torch import nn
path, target = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
def layer():
    return nn.TransformerEncoderLayer(1024, 16, 4096, batch_first=True)
layer_bytes = 4 * sum(p.numel() for p in layer().parameters())
n = max(1, round(target / layer_bytes))
model = nn.Sequential(*[layer() for _ in range(n)])
torch.save(model.state_dict(), path)
print(n)
"""

_CHILD = """
import json, resource, sys, time
import torch
import safeload
mode, path = sys.argv[1], sys.argv[2]

def rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

before = rss_kib()
t0 = time.perf_counter()
if mode == "torch":
    obj = torch.load(path, weights_only=True)
elif mode == "torch_mmap":
    obj = torch.load(path, weights_only=True, mmap=True)
elif mode == "safeload":
    obj = safeload.load(path)
elif mode == "safeload_mmap":
    obj = safeload.load(path, mmap=True)
else:
    raise SystemExit(f"unknown mode {mode}")
seconds = time.perf_counter() - t0
count = len(obj)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"mode": mode, "seconds": seconds, "rss_before_kib": before,
                  "peak_kib": peak, "tensors": count}))
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


def measure(mode: str, path: Path) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} failed:\n{proc.stderr[-2000:]}")
    result: dict[str, float] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
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
    try:
        build(path, args.size_mib)
        size = path.stat().st_size
        warm(path)
        runs: dict[str, list[dict[str, float]]] = {m: [] for m in args.modes}
        for i in range(args.repeats):
            for mode in args.modes:
                runs[mode].append(measure(mode, path))
            print(f"round {i + 1}/{args.repeats} done", flush=True)
        report(runs, size)
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 0


def report(runs: dict[str, list[dict[str, float]]], size: int) -> None:
    rows = {}
    for mode, results in runs.items():
        rows[mode] = {
            "seconds": statistics.median(r["seconds"] for r in results),
            "peak_mib": statistics.median(r["peak_kib"] for r in results) / 1024,
            "growth_mib": statistics.median(r["peak_kib"] - r["rss_before_kib"] for r in results)
            / 1024,
            "tensors": results[0]["tensors"],
        }
    base = rows.get("torch")
    size_mib = size / _MiB
    print(f"\ncheckpoint: {size_mib:.0f} MiB, {os.cpu_count()} CPUs, median of "
          f"{len(next(iter(runs.values())))} runs per mode")
    print(f"{'mode':<14}{'time s':>9}{'x torch':>9}{'peak RSS MiB':>14}{'growth MiB':>12}"
          f"{'growth/size':>13}{'entries':>9}")
    for mode, row in rows.items():
        ratio = row["seconds"] / base["seconds"] if base else float("nan")
        print(f"{mode:<14}{row['seconds']:>9.3f}{ratio:>9.2f}{row['peak_mib']:>14.0f}"
              f"{row['growth_mib']:>12.0f}{row['growth_mib'] / size_mib:>13.2f}"
              f"{int(row['tensors']):>9}")
    for mine, theirs in (("safeload", "torch"), ("safeload_mmap", "torch_mmap")):
        if mine in rows and theirs in rows:
            t = rows[mine]["seconds"] / rows[theirs]["seconds"]
            g = rows[mine]["growth_mib"] / size_mib
            print(f"{mine} vs {theirs}: time ratio {t:.2f} (target <= 1.0: "
                  f"{'ok' if t <= 1.0 else 'MISSED'}), RSS growth {g:.2f}x checkpoint "
                  f"(target <= 1.1: {'ok' if g <= 1.1 else 'MISSED'})")


if __name__ == "__main__":
    sys.exit(main())

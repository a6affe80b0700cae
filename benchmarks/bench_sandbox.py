"""Sandbox cost: worker start-up, and a 1 GiB checkpoint loaded in the sandbox vs in-process.

Run: ``nice python benchmarks/bench_sandbox.py [--gib 1.0] [--repeat 3]``. Prints ratios, never
asserts. What is compared is what a user calls: ``safeload.load(path, sandbox=True)`` against
``safeload.load(path, sandbox=False)``, and the same pair with ``mmap=True``. Each load runs in
a fresh interpreter so peak RSS (``ru_maxrss``) belongs to that load alone; one more run reports
the worker's own peak RSS (``VmHWM``, which the worker reads for itself: ``wait4``'s figure
includes the parent's peak at spawn) and its anonymous (non file-backed) memory at the end,
where a copy of tensor data would show. Every load ends by reading every tensor element, so
lazily mapped pages are counted.

Modes: ``sandbox`` is a process's first sandboxed load (it starts the fork server, on the other
core while the parent reads); ``sandbox-warm`` runs after ``prewarm()`` had time to finish;
``sandbox-2nd`` is a second load right after a first one in the same process (a fork of the
server the first load started), compared with ``inprocess-2nd``, a second in-process load.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import torch
import safeload
from safeload.sandbox import prewarm

mode, path, use_mmap = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == "mmap"
sandboxed = mode.startswith("sandbox")
if mode == "inprocess-2nd":  # the fair baseline for a second load: same warm process
    safeload.load(path, sandbox=False, mmap=use_mmap)
if mode == "sandbox-warm":
    prewarm()  # an application does this at start-up, long before its first load
if mode in ("inprocess", "sandbox", "sandbox-warm"):
    # The same pause before every first load: this VM hands freed memory back to its host a
    # moment after a process exits, and faulting it in again is slower; a pause in one mode
    # only would charge that to the mode.
    time.sleep(3)
if mode == "sandbox-2nd":  # back to back: the spare started after this load is the next worker
    safeload.load(path, sandbox=True, mmap=use_mmap)
t0 = time.perf_counter()
value = safeload.load(path, sandbox=sandboxed, mmap=use_mmap)
loaded = time.perf_counter() - t0
total = 0.0
for t in value.values():
    total += float(t.sum())
wall = time.perf_counter() - t0
print(json.dumps({
    "loaded_s": loaded,
    "wall_s": wall,
    "rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
"""

_WORKER_MEMORY = r"""
import json, sys
from safeload.integrations._load import _sandbox_input
from safeload.policy import Limits
from safeload.sandbox import run_in_sandbox
# What safeload.load(sandbox=True) sends: the parent's descriptor, buffer and CRC hints.
with _sandbox_input(sys.argv[1], use_mmap=False, limits=Limits()) as (item, data, _):
    r = run_in_sandbox("read", [item], limits=Limits(), framework="torch")
print(json.dumps({"worker_rss": r.worker_memory.get("VmHWM", 0),
                  "worker_anon": r.worker_memory.get("RssAnon", 0)}))
"""


def _run(mode: str, path: Path, how: str = "read") -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode, str(path), how],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


_IMPORTS = r"""
import sys
from pathlib import Path
how, boot = sys.argv[1], Path(sys.argv[2])
if how != "package":
    import importlib.util
    spec = importlib.util.spec_from_file_location("_boot", boot)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if how == "bootstrap":
        module.bare_packages(boot.parent.parent)
    else:  # what a lazy safeload/__init__ alone would give: skip only the two package inits
        module._package("safeload", boot.parent.parent)
        module._package("safeload.sandbox", boot.parent)
import safeload.sandbox._worker as worker
worker._preload()
"""


def _imports(repeat: int) -> dict[str, float]:
    """The worker's own start-up (interpreter + imports, no layers) three ways."""
    from safeload.sandbox import _forkserver

    times: dict[str, list[float]] = {"package": [], "lazy-init": [], "bootstrap": []}
    for _ in range(repeat):
        for how, out in times.items():
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-I", "-c", _IMPORTS, how, _forkserver._BOOTSTRAP],
                           check=True)  # fmt: skip
            out.append(time.perf_counter() - t0)
    return {how: statistics.median(v) for how, v in times.items()}


_FIRST_JOB = r"""
import time
from safeload.policy import Limits
from safeload.sandbox import run_in_sandbox
t0 = time.perf_counter()
run_in_sandbox("probe", [], limits=Limits())
print(time.perf_counter() - t0)
"""


def _startup(repeat: int) -> tuple[float, float, float]:
    """-> a process's first job (fork server start-up included), a later job, bare python."""
    from safeload.policy import Limits
    from safeload.sandbox import prewarm, run_in_sandbox

    first = []
    for _ in range(repeat):
        out = subprocess.run([sys.executable, "-c", _FIRST_JOB], check=True, capture_output=True,
                             text=True)  # fmt: skip
        first.append(float(out.stdout.strip().splitlines()[-1]))
    prewarm()
    later = []
    for _ in range(max(repeat, 10)):
        t0 = time.perf_counter()
        run_in_sandbox("probe", [], limits=Limits())
        later.append(time.perf_counter() - t0)
    bare = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-I", "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t0)
    return statistics.median(first), statistics.median(later), statistics.median(bare)


def _make_checkpoint(path: Path, gib: float) -> int:
    import torch

    n_tensors = 16
    per = int(gib * (1 << 30)) // n_tensors // 4
    state = {f"layer{i}.weight": torch.randn(per) for i in range(n_tensors)}
    torch.save(state, path)
    return n_tensors * per * 4


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    first, later, bare = _startup(max(3, args.repeat))
    print(f"worker start-up (probe job, all five layers, request to validated reply): a "
          f"process's first job {first * 1000:.0f} ms (starts the fork server), every later "
          f"job {later * 1000:.1f} ms (a fork); bare `python -I -c pass`: "
          f"{bare * 1000:.0f} ms")  # fmt: skip
    imports = _imports(max(3, args.repeat))
    print("worker imports: " + ", ".join(f"{how} {t * 1000:.0f} ms" for how, t in imports.items())
          + " (package: `import safeload` runs every __init__; lazy-init: only safeload/ and "
          "sandbox/ inits skipped; bootstrap: what the worker does)")  # fmt: skip

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pt"
        size = _make_checkpoint(path, args.gib)
        print(f"checkpoint: {size / (1 << 30):.2f} GiB of float32 in 16 tensors (torch.save zip)")
        _run("inprocess", path)  # warm the page cache once so both sides read from memory
        out = subprocess.run([sys.executable, "-c", _WORKER_MEMORY, str(path)], check=True,
                             capture_output=True, text=True)  # fmt: skip
        worker = json.loads(out.stdout.strip().splitlines()[-1])
        modes = ("inprocess", "inprocess-2nd", "sandbox", "sandbox-warm", "sandbox-2nd")
        rows: dict[tuple[str, str], list[dict[str, float]]] = {
            (how, mode): [] for how in ("read", "mmap") for mode in modes
        }
        order = list(rows)
        shuffle = random.Random(0).shuffle  # a new order each round, the same on every run:
        for _ in range(args.repeat):  # no mode always follows the same neighbour
            shuffle(order)
            for how, mode in order:
                rows[how, mode].append(_run(mode, path, how))

    def med(key: tuple[str, str], field: str) -> float:
        return statistics.median(r[field] for r in rows[key])

    gib = float(1 << 30)
    print(f"worker's own memory while parsing it: peak {worker['worker_rss'] / gib:.3f} GiB, "
          f"anonymous {worker['worker_anon'] / gib:.3f} GiB (no tensor data copied)")  # fmt: skip
    for how in ("read", "mmap"):
        label = "safeload.load(path" + (", mmap=True" if how == "mmap" else "") + ")"
        print(f"{label}, sandbox=False vs True, median of {args.repeat} fresh processes:")
        for mode in modes:
            key = (how, mode)
            walls = [r["wall_s"] for r in rows[key]]
            print(f"  {mode:>13}: load {med(key, 'loaded_s'):.3f} s, load+touch "
                  f"{med(key, 'wall_s'):.3f} s (range {min(walls):.3f}-{max(walls):.3f}), "
                  f"peak RSS {med(key, 'rss') / gib:.2f} GiB")  # fmt: skip
        for mode in modes[2:]:
            base = "inprocess-2nd" if mode == "sandbox-2nd" else "inprocess"
            ratio = med((how, mode), "wall_s") / med((how, base), "wall_s")
            rss_ratio = med((how, mode), "rss") / med((how, base), "rss")
            print(f"  {mode} / {base}: wall {ratio:.2f}x (target <= 1.1x), peak RSS "
                  f"{rss_ratio:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

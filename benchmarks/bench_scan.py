#!/usr/bin/env python3
"""``safeload scan`` throughput and detection against picklescan, modelscan, fickling, modelaudit.

The other scanners live in their own venv so they never touch the project's environment::

    python -m venv /tmp/bench-tools-venv
    /tmp/bench-tools-venv/bin/pip install picklescan modelscan fickling modelaudit
    nice python benchmarks/bench_scan.py --tools-venv /tmp/bench-tools-venv

A tool that is not installed there is skipped. Measured, on the same files for every tool:

* throughput: one run of each tool over the shared corpus folder and over a folder of a few big
  ``torch.save`` checkpoints (wall time including start-up; files/s and MB/s). fickling has no
  folder mode, so it is run once per file and its start-up is paid per file.
* detection (context, not a race): each tool run per file over the malicious corpus (flagged =
  the tool's "found something" exit code) and over the benign core files (false alarms).
  After the runs the corpus marker folder is checked: no tool, safeload included, may have run a
  payload.

modelaudit's telemetry is switched off through its documented environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CORPUS_SCRIPT = REPO.parent / "shared" / "corpus" / "make_corpus.py"
_MiB = 1 << 20
# Tools run in a throw-away folder: some (fickling) drop result files into their working directory.
_TOOL_CWD = tempfile.mkdtemp(prefix="safeload-bench-tools-")
_ENV = {
    **os.environ,
    "NO_COLOR": "1",
    "PROMPTFOO_DISABLE_TELEMETRY": "1",
    "NO_ANALYTICS": "1",
    "DO_NOT_TRACK": "1",
}


@dataclass(frozen=True)
class Tool:
    name: str
    folder: Callable[[Path], list[str]] | None
    """Command to scan a whole folder, or None if the tool only takes files."""
    file: Callable[[Path], list[str]]
    flagged: Callable[[int], bool]
    """Whether an exit code means "found something unsafe"."""


def tools(venv: Path) -> list[Tool]:
    bin_ = venv / "bin"
    found = [
        Tool(
            "safeload",
            lambda d: [sys.executable, "-m", "safeload", "scan", str(d), "--format", "json"],
            lambda f: [sys.executable, "-m", "safeload", "scan", str(f), "--format", "json"],
            lambda rc: rc == 1,
        )
    ]
    candidates = [
        Tool(
            "picklescan",
            lambda d: [str(bin_ / "picklescan"), "--path", str(d)],
            lambda f: [str(bin_ / "picklescan"), "--path", str(f)],
            lambda rc: rc == 1,
        ),
        Tool(
            "modelscan",
            lambda d: [str(bin_ / "modelscan"), "-p", str(d)],
            lambda f: [str(bin_ / "modelscan"), "-p", str(f)],
            lambda rc: rc == 1,
        ),
        Tool(
            "fickling",
            None,
            lambda f: [str(bin_ / "fickling"), "--check-safety", str(f)],
            lambda rc: rc == 1,
        ),
        Tool(
            "modelaudit",
            lambda d: [str(bin_ / "modelaudit"), "scan", str(d)],
            lambda f: [str(bin_ / "modelaudit"), "scan", str(f)],
            lambda rc: rc == 1,
        ),
    ]
    for tool in candidates:
        if (bin_ / tool.name).exists():
            found.append(tool)
        else:
            print(f"skipping {tool.name}: not installed in {venv}")
    return found


def run(cmd: list[str], timeout: float = 900) -> tuple[int, float]:
    started = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, env=_ENV, timeout=timeout, check=False, cwd=_TOOL_CWD
        )
    except subprocess.TimeoutExpired:
        return -9, time.perf_counter() - started
    return proc.returncode, time.perf_counter() - started


def files_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != "manifest.json")


def throughput(tool: Tool, folder: Path) -> tuple[float, int]:
    """Seconds for the tool to cover every file in ``folder``, and its worst exit code."""
    if tool.folder is not None:
        rc, seconds = run(tool.folder(folder))
        return seconds, rc
    total, worst = 0.0, 0
    for path in files_in(folder):
        rc, seconds = run(tool.file(path))
        total += seconds
        worst = max(worst, rc)
    return total, worst


def build_big(folder: Path, count: int, size_mib: int) -> None:
    code = (
        "import sys, torch\nfrom torch import nn\n"
        "torch.manual_seed(int(sys.argv[3]))\n"
        "n = max(1, int(sys.argv[2]) // 64)\n"
        "m = nn.Sequential(*[nn.Linear(4096, 4096, bias=False) for _ in range(n)])\n"
        "torch.save(m.state_dict(), sys.argv[1])\n"
    )
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        path = folder / f"big_{i}.pt"
        if not path.exists():
            cmd = [sys.executable, "-c", code, str(path), str(size_mib), str(i)]
            subprocess.run(cmd, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools-venv", type=Path, default=Path("/tmp/bench-tools-venv"))
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--big", type=int, default=2, help="number of big checkpoints")
    parser.add_argument("--big-mib", type=int, default=256)
    parser.add_argument("--no-detection", action="store_true")
    args = parser.parse_args()

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="safeload-bench-scan-")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir
    try:
        return bench(args, workdir)
    finally:
        if tmp is not None:
            tmp.cleanup()


def bench(args: argparse.Namespace, workdir: Path) -> int:
    corpus, markers, big = workdir / "corpus", workdir / "markers", workdir / "big"
    if not (corpus / "manifest.json").exists():
        markers.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [sys.executable, str(CORPUS_SCRIPT), str(corpus), "--marker-dir", str(markers)],
            check=True, capture_output=True,
        )  # fmt: skip
    build_big(big, args.big, args.big_mib)
    manifest = json.loads((corpus / "manifest.json").read_text())["samples"]
    malicious = [corpus / s["label"] / s["file"] for s in manifest if s["label"] == "malicious"]
    benign = [
        corpus / s["label"] / s["file"]
        for s in manifest
        if s["label"] == "benign" and s.get("tier") == "core"
    ]
    found = tools(args.tools_venv)

    print("\n== throughput (one run per tool and folder, wall time incl. start-up)")
    print(f"{'tool':<12}{'folder':<8}{'files':>6}{'MB':>9}{'seconds':>10}{'files/s':>10}"
          f"{'MB/s':>9}{'x safeload':>12}{'exit':>6}")
    base: dict[str, float] = {}
    for folder_name, folder in (("corpus", corpus), ("big", big)):
        files = files_in(folder)
        mb = sum(p.stat().st_size for p in files) / 1e6
        for tool in found:
            seconds, rc = throughput(tool, folder)
            if tool.name == "safeload":
                base[folder_name] = seconds
            rel = seconds / base[folder_name] if folder_name in base else float("nan")
            print(f"{tool.name:<12}{folder_name:<8}{len(files):>6}{mb:>9.1f}{seconds:>10.2f}"
                  f"{len(files) / seconds:>10.1f}{mb / seconds:>9.1f}{rel:>12.2f}{rc:>6}",
                  flush=True)

    if not args.no_detection:
        print("\n== detection, one run per file (flagged = the tool's 'unsafe' exit code)")
        print(f"{'tool':<12}{'malicious flagged':>20}{'benign core flagged':>22}{'other exit':>12}")
        for tool in found:
            mal = [run(tool.file(p), timeout=300)[0] for p in malicious]
            ben = [run(tool.file(p), timeout=300)[0] for p in benign]
            other = sum(1 for rc in mal + ben if rc not in (0, 1))
            hit = sum(tool.flagged(rc) for rc in mal)
            fp = sum(tool.flagged(rc) for rc in ben)
            print(f"{tool.name:<12}{f'{hit}/{len(mal)} ({hit / len(mal):.0%})':>20}"
                  f"{f'{fp}/{len(ben)}':>22}{other:>12}", flush=True)

    fired = sorted(p.name for p in markers.iterdir()) if markers.exists() else []
    print(f"\npayload markers created during the benchmark: {len(fired)} {fired if fired else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

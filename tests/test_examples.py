"""The shipped example model: regenerating it gives the committed bytes, and it scans clean.

``examples/tiny-model`` is what a new user scans first (the README's first command), so it must
stay exactly what ``examples/make_examples.py`` writes, and ``safeload scan examples/`` must exit 0.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import safeload

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
FILES = ("config.json", "model.pt", "model.safetensors")

pytestmark = pytest.mark.torch


def test_regenerating_gives_identical_bytes(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    subprocess.run(
        [sys.executable, str(EXAMPLES / "make_examples.py"), str(tmp_path)],
        check=True,
        capture_output=True,
    )
    for name in FILES:
        committed = (EXAMPLES / "tiny-model" / name).read_bytes()
        assert (tmp_path / name).read_bytes() == committed, f"{name} differs from its generator"


def test_examples_are_tiny() -> None:
    for name in FILES:
        assert (EXAMPLES / "tiny-model" / name).stat().st_size < 16 * 1024


def test_scan_examples_is_clean() -> None:
    report = safeload.scan([EXAMPLES])
    assert report.exit_code == 0
    verdicts = {Path(r.path).name: r.verdict for r in report.results}
    assert verdicts == {
        "config.json": "skipped",
        "make_examples.py": "skipped",
        "model.pt": "clean",
        "model.safetensors": "clean",
    }
    tensors = {Path(r.path).name: r.tensor_count for r in report.clean}
    assert tensors == {"model.pt": 4, "model.safetensors": 4}


def test_readme_starts_with_the_scan_command() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    first_block = readme.split("```", 2)[1]
    assert "pip install -e . && safeload scan examples/" in first_block


def test_cli_entry_point_scans_examples() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "safeload", "scan", str(EXAMPLES)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr

"""``safeload inspect``: the tensor table of real files, and refusals that explain themselves.

Tensor names, dtypes and shapes are checked against what the generator wrote (the examples'
``state_dict`` and the safetensors header), and byte offsets against the bytes themselves: the
offset printed for a safetensors tensor must point at that tensor's data in the file.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result

from safeload._cli import cli

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "examples" / "tiny-model"
EXPECTED = {
    "0.weight": ("float32", [16, 8]),
    "0.bias": ("float32", [16]),
    "2.weight": ("float32", [4, 16]),
    "2.bias": ("float32", [4]),
}


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["inspect", *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def table(path: Path) -> dict[str, Any]:
    result = run(str(path), "--format", "json")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.output)
    return doc


def test_torch_checkpoint_table() -> None:
    doc = table(TINY / "model.pt")
    assert doc["format"] == "torch_zip"
    rows = {t["name"]: (t["dtype"], t["shape"]) for t in doc["tensors"]}
    assert rows == EXPECTED
    assert all(t["nbytes"] == 4 * _prod(t["shape"]) for t in doc["tensors"])


def test_safetensors_offsets_point_at_the_data() -> None:
    path = TINY / "model.safetensors"
    raw = path.read_bytes()
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    doc = table(path)
    assert {t["name"]: (t["dtype"], t["shape"]) for t in doc["tensors"]} == EXPECTED
    for t in doc["tensors"]:
        start, _ = header[t["name"]]["data_offsets"]
        assert t["offset"] == 8 + header_len + start


def test_text_table_lists_every_tensor() -> None:
    result = run(str(TINY / "model.pt"))
    assert result.exit_code == 0
    for name in EXPECTED:
        assert name in result.output
    assert "4 tensors, 848 bytes" in result.output


def test_benign_corpus_files_inspect(corpus: Any) -> None:
    for name in ("linear_sd.pt", "legacy_linear_sd.pt", "np_multi.npz", "model.safetensors"):
        doc = table(corpus.root / "benign" / name)
        assert doc["tensors"], name


def test_malicious_file_is_refused_with_exit_1(corpus: Any) -> None:
    result = run(str(corpus.root / "malicious" / "p1_posix_system.pkl"), "--format", "json")
    assert result.exit_code == 1
    error = json.loads(result.output.split("safeload: error:")[0])["error"]
    assert error["code"].startswith("SL1")
    assert "system" in error["message"]
    assert sorted(p.name for p in corpus.markers.iterdir()) == []


def test_missing_file_and_folder_exit_2(tmp_path: Path) -> None:
    assert run(str(tmp_path / "missing.pt")).exit_code == 2
    assert run(str(tmp_path)).exit_code == 2


def test_subprocess_refusal_has_no_traceback(corpus: Any) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "safeload", "inspect",
         str(corpus.root / "malicious" / "tz_reduce_system.pt")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "safeload: error:" in proc.stderr


def _prod(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n

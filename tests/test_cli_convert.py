"""``safeload convert``: exit codes (0 written, 1 input refused, 2 error), text and JSON output,
and never a traceback or a file left behind on failure."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from safeload._cli import cli

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["convert", *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "model.pt"
    emb = torch.randn(6, 2)
    torch.save({"model": {"emb": emb, "head": emb, "b": torch.ones(2)}, "epoch": 4}, path)
    return path


def test_text_output_and_exit_zero(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = run(str(ckpt), "-o", str(out), "--no-sandbox")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert f"output: {out}" in lines
    assert f"sha256: {hashlib.sha256(out.read_bytes()).hexdigest()}" in lines
    assert "tensors checked: 2/2" in lines and "sandbox: no" in lines
    assert "note: took the state dict under 'model'" in lines
    assert any(line.startswith("note: 1 tied tensors") for line in lines)
    assert sorted(st.load_file(out)) == ["b", "emb"]


@pytest.mark.skipif(sys.platform != "linux", reason="the sandbox worker needs Linux")
def test_json_output_sandboxed_by_default(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = run(str(ckpt), "-o", str(out), "--format", "json")
    assert result.exit_code == 0, result.output
    doc: dict[str, Any] = json.loads(result.stdout)
    assert doc["sandboxed"] is True and doc["layers"]
    assert doc["target"] == "safetensors" and doc["source_format"] == "torch_zip"
    assert doc["tensors"] == doc["checked"] == 2
    assert doc["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_existing_output_is_exit_two_and_kept(ckpt: Path, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    out.write_bytes(b"keep")
    result = run(str(ckpt), "-o", str(out), "--no-sandbox", "--format", "json")
    assert result.exit_code == 2
    assert json.loads(result.stdout)["error"]["rule"] == "convert.overwrite"
    assert out.read_bytes() == b"keep"
    result = run(str(ckpt), "-o", str(out), "--no-sandbox", "--overwrite")
    assert result.exit_code == 0, result.output
    assert "emb" in st.load_file(out)


def test_refused_input_is_exit_one_with_nothing_written(tmp_path: Path) -> None:
    from _pickle_asm import asm, call, glob, ustr

    # A pickle that names a non-allowlisted callable: refused, never imported or called.
    src = tmp_path / "evil.pt"
    src.write_bytes(asm(("PROTO", 2), call(glob("os", "system"), ustr("echo hi")), "STOP"))
    out = tmp_path / "evil.safetensors"
    result = run(str(src), "-o", str(out), "--no-sandbox")
    assert result.exit_code == 1
    assert "safeload: error:" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.pt"]


def test_policy_requiring_the_sandbox_refuses_no_sandbox(ckpt: Path, tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('version = 1\n[sandbox]\nmode = "always"\n')
    out = tmp_path / "model.safetensors"
    result = run(str(ckpt), "-o", str(out), "--no-sandbox", "--policy", str(policy))
    assert result.exit_code == 1
    assert "sandbox.mode" in result.stderr
    assert not out.exists()


def test_unconvertible_value_is_exit_two(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2), "blob": b"raw"}, src)
    result = run(str(src), "-o", str(tmp_path / "m.safetensors"), "--no-sandbox")
    assert result.exit_code == 2
    assert "convert.unsupported_value" in result.stderr


def test_onnx_options_are_checked(ckpt: Path, tmp_path: Path) -> None:
    out = str(tmp_path / "m.onnx")
    assert run(str(ckpt), "-o", out, "--to", "onnx").exit_code == 2  # no --model
    result = run(str(ckpt), "-o", out, "--model", "pkg:make", "--no-sandbox")
    assert result.exit_code == 2 and "--to onnx" in result.output
    result = run(str(ckpt), "-o", out, "--to", "onnx", "--model", "m:f", "--input-shape", "1,x")
    assert result.exit_code == 2 and "1,3,224,224" in result.output

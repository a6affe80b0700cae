"""``safeload.load`` / ``inspect`` / ``get_unsafe_globals``: torch.load's call shape, honest
refusals of the options that would run code, and the input kinds it accepts."""

from __future__ import annotations

import io
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import safeload
from safeload import UsageError

torch = pytest.importorskip("torch")


class _Payload:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))  # never executed: the file is only ever refused


@pytest.fixture
def ckpt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.bin"
    lin = torch.nn.Linear(4, 3)
    torch.save({"sd": lin.state_dict(), "p": lin.weight, "step": 7}, path)
    return path


@pytest.fixture
def evil(tmp_path: Path) -> Path:
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(2), "x": _Payload()}, path)
    return path


def _want(path: Path) -> Any:
    return torch.load(path, weights_only=True)


def test_accepts_path_pathlike_fileobj_bytes(ckpt: Path, assert_same: Any) -> None:
    want = _want(ckpt)
    assert_same(safeload.load(str(ckpt)), want)
    assert_same(safeload.load(ckpt), want)
    with ckpt.open("rb") as f:
        assert_same(safeload.load(f), want)
    assert_same(safeload.load(ckpt.read_bytes()), want)
    assert_same(safeload.load(io.BytesIO(ckpt.read_bytes())), want)
    assert_same(safeload.load(ckpt, mmap=True), want)
    assert isinstance(safeload.load(ckpt)["p"], torch.nn.Parameter)


def test_verified_file_is_read_from_its_buffer_never_its_path(ckpt: Path, assert_same: Any) -> None:
    data = ckpt.read_bytes()
    vf = safeload.VerifiedFile(
        name="model.bin", path=str(ckpt.parent / "gone.bin"), digest="sha256:x", size=len(data),
        data=memoryview(data).toreadonly(),
    )  # fmt: skip
    assert_same(safeload.load(vf), _want(ckpt))
    assert safeload.load(vf, framework="numpy")["step"] == 7


def test_mmap_tensors_are_writable_private_copies(ckpt: Path) -> None:
    before = ckpt.read_bytes()
    out = safeload.load(ckpt, mmap=True)
    out["sd"]["bias"].add_(1.0)  # copy-on-write: the file must not change
    assert ckpt.read_bytes() == before


def test_numpy_framework(ckpt: Path) -> None:
    out = safeload.load(ckpt, framework="numpy")
    want = _want(ckpt)
    assert isinstance(out["sd"]["weight"], np.ndarray)
    assert out["sd"]["weight"].tobytes() == want["sd"]["weight"].numpy().tobytes()


def test_numpy_framework_works_without_torch(tmp_path: Path, ckpt: Path) -> None:
    np.save(tmp_path / "a.npy", np.arange(3))
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import safeload\n"
        f"v = safeload.load({str(ckpt)!r}, framework='numpy')\n"
        "assert v['sd']['weight'].shape == (3, 4), v\n"
        f"assert list(safeload.load({str(tmp_path / 'a.npy')!r})) == [0, 1, 2]\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_import_safeload_does_not_import_torch() -> None:
    code = "import sys, safeload; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.mark.parametrize(
    "kwargs",
    [
        {"weights_only": False},
        {"pickle_module": pickle},
        {"encoding": "latin1"},
        {"map_location": lambda storage, loc: storage},
        {"map_location": {"cuda:0": "cuda:1"}},
    ],
    ids=["weights_only_false", "pickle_module", "pickle_load_args", "callable_map", "dict_to_gpu"],
)
def test_code_running_options_are_refused(ckpt: Path, kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        safeload.load(ckpt, **kwargs)


CPU_LOCATIONS: dict[str, Any] = {
    "none": None,
    "cpu": "cpu",
    "device": torch.device("cpu"),
    "dict": {"cuda:0": "cpu"},
}


@pytest.mark.parametrize("where", sorted(CPU_LOCATIONS))
def test_cpu_map_locations_are_accepted(ckpt: Path, where: str, assert_same: Any) -> None:
    assert_same(safeload.load(ckpt, map_location=CPU_LOCATIONS[where]), _want(ckpt))


def test_other_devices_move_tensors_after_loading(ckpt: Path) -> None:
    out = safeload.load(ckpt, map_location="meta")
    assert out["sd"]["weight"].device.type == "meta"
    assert isinstance(out["p"], torch.nn.Parameter) and out["p"].device.type == "meta"


def test_unavailable_device_is_a_usage_error(ckpt: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(UsageError):
        safeload.load(ckpt, map_location="cuda:0")


def test_force_no_weights_only_env_is_refused_loudly(
    ckpt: Path, evil: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with caplog.at_level(logging.WARNING, logger="safeload"):
        safeload.load(ckpt)
    assert any("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in r.getMessage() for r in caplog.records)
    with pytest.raises(safeload.UnsafeModelError):
        safeload.load(evil)


def test_refusal_names_the_file_and_rule(evil: Path, no_torch_load: None) -> None:
    with pytest.raises(safeload.UnsafeModelError) as info:
        safeload.load(evil)
    assert info.value.path is not None and str(evil) in info.value.path
    assert info.value.rule == "pickle.globals"


def test_get_unsafe_globals_lists_without_running(
    evil: Path, ckpt: Path, no_torch_load: None
) -> None:
    assert safeload.get_unsafe_globals(evil) == [f"{os.system.__module__}.system"]
    assert safeload.get_unsafe_globals(ckpt) == []


def test_inspect_reads_the_table_without_tensor_data(ckpt: Path) -> None:
    info = safeload.inspect(ckpt)
    assert info.format == "torch_zip" and info.size == ckpt.stat().st_size
    rows = {t.name: t for t in info.tensors}
    assert set(rows) == {"sd.weight", "sd.bias", "p"}
    w = rows["sd.weight"]
    assert (w.dtype, w.shape, w.nbytes) == ("float32", (3, 4), 48)
    raw = ckpt.read_bytes()[w.offset : w.offset + w.nbytes]
    assert raw == _want(ckpt)["sd"]["weight"].numpy().tobytes()
    json.dumps(info.to_dict())


def test_safe_globals_api_is_reexported() -> None:
    for name in ("add_safe_globals", "safe_globals", "get_safe_globals", "clear_safe_globals"):
        assert callable(getattr(safeload, name))


def test_unknown_input_type_is_a_usage_error() -> None:
    with pytest.raises(UsageError):
        safeload.load(12345)
    with pytest.raises(safeload.SourceError):
        safeload.load("/nonexistent/model.pt")


def test_directories_and_devices_are_not_model_files(tmp_path: Path) -> None:
    for target in (tmp_path, Path("/dev/null")):
        with pytest.raises(safeload.SourceError):
            safeload.load(target)


_ENTRIES = {
    "load": lambda p: safeload.load(p),
    "load_mmap": lambda p: safeload.load(p, mmap=True),
    "load_numpy": lambda p: safeload.load(p, framework="numpy"),
    "inspect": safeload.inspect,
    "get_unsafe_globals": safeload.get_unsafe_globals,
}


@pytest.mark.parametrize("kind", ["folder", "missing", "fifo"])
@pytest.mark.parametrize("entry", sorted(_ENTRIES))
def test_every_entry_refuses_non_files_with_a_source_error(
    tmp_path: Path, entry: str, kind: str
) -> None:
    """Never a raw OSError, and a FIFO is refused at once instead of blocking in open()."""
    target = tmp_path / "model.pt"
    if kind == "folder":
        target.mkdir()
    elif kind == "fifo":
        os.mkfifo(target)
    for form in (target, str(target)):
        with pytest.raises(safeload.SourceError) as info:
            _ENTRIES[entry](form)
        assert info.value.path == str(target)
        assert info.value.rule in ("source.open", "source.file")


def test_inspect_does_not_read_tensor_data(tmp_path: Path) -> None:
    """A flipped byte inside a storage is invisible to inspect (no CRC pass over tensor data)
    but refused by load and by the scanner's full analyze."""
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(256)}, path)
    row = safeload.inspect(path).tensors[0]
    assert row.offset is not None
    data = bytearray(path.read_bytes())
    data[row.offset + 7] ^= 0xFF
    path.write_bytes(bytes(data))
    assert safeload.inspect(path).tensors[0] == row
    with pytest.raises(safeload.FormatError):
        safeload.load(path)
    with pytest.raises(safeload.FormatError):
        safeload.formats.analyze(path.read_bytes())
    npz = tmp_path / "a.npz"
    np.savez_compressed(npz, a=np.arange(100))
    (arow,) = safeload.inspect(npz).tensors
    assert (arow.name, arow.shape, arow.nbytes) == ("a", (100,), 800)

"""A sandboxed read gives exactly what the in-process read gives, from real ``torch.save`` files.

The worker reads with NumPy (torch never loads there); the parent builds torch tensors over
the result memfd. Both paths must agree on structure, dtypes, shapes and every byte.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from safeload.errors import UnsafeModelError
from safeload.formats import read
from safeload.policy import Limits
from safeload.sandbox import sandboxed_read

LIMITS = Limits()
torch = pytest.importorskip("torch")
pytestmark = pytest.mark.torch


def _bytes(t: Any) -> bytes:
    if isinstance(t, np.ndarray):
        return np.ascontiguousarray(t).tobytes()
    return bytes(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def assert_same(a: Any, b: Any, where: str = "value") -> None:
    """Same structure and container types, same tensors bit for bit."""
    if isinstance(a, torch.Tensor | np.ndarray):
        assert type(b) is type(a) or isinstance(b, torch.Tensor), where
        assert a.dtype == b.dtype, where
        assert tuple(a.shape) == tuple(b.shape), where
        assert _bytes(a) == _bytes(b), where
        return
    assert type(a) is type(b), f"{where}: {type(a).__name__} != {type(b).__name__}"
    if isinstance(a, dict):
        assert list(a) == list(b), where
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, where
    else:
        assert a == b, where


def _checkpoint() -> dict[str, Any]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Linear(8, 2))  # fmt: skip
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 16)).sum().backward()
    opt.step()
    return {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "epoch": 7,
        "transposed": torch.arange(6, dtype=torch.int32).view(2, 3).t(),
        "half": torch.randn(5).to(torch.bfloat16),
        "mask": torch.tensor([True, False, True]),
    }


@pytest.mark.parametrize("zipfile", [True, False], ids=["torch_zip", "torch_legacy"])
@pytest.mark.parametrize("framework", ["torch", "numpy"])
def test_sandboxed_read_is_bit_identical(tmp_path: Path, zipfile: bool, framework: str) -> None:
    path = tmp_path / "checkpoint.pt"
    torch.save(_checkpoint(), path, _use_new_zipfile_serialization=zipfile)
    expected = read(bytearray(path.read_bytes()), name=path.name, limits=LIMITS,
                    framework=framework)  # type: ignore[arg-type]  # fmt: skip
    got = sandboxed_read(path, limits=LIMITS, framework=framework)  # type: ignore[arg-type]
    assert_same(expected.value, got)
    assert isinstance(got, dict)
    assert isinstance(got["model"], collections.OrderedDict)


def test_sandboxed_read_of_npy_and_npz(tmp_path: Path) -> None:
    arr = np.arange(24, dtype=">f8").reshape(2, 3, 4)
    np.save(tmp_path / "a.npy", arr)
    np.savez_compressed(tmp_path / "b.npz", x=arr, y=np.ones(3, dtype=np.uint16))
    for name in ("a.npy", "b.npz"):
        path = tmp_path / name
        expected = read(path.read_bytes(), name=name, limits=LIMITS, framework="numpy").value
        got = sandboxed_read(path, limits=LIMITS, framework="numpy")
        if isinstance(expected, np.ndarray):
            expected = {"": expected}
            got = {"": got}
        assert isinstance(got, dict)
        for key, ref in expected.items():
            assert np.array_equal(got[key], ref) and got[key].dtype.kind == ref.dtype.kind


def test_malicious_pickle_is_refused_in_the_worker_with_the_same_error(tmp_path: Path) -> None:
    # PROTO 2, GLOBAL os.system, BINUNICODE "ls", TUPLE1, REDUCE, STOP: built from opcodes.
    payload = b"\x80\x02cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03."
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    with pytest.raises(UnsafeModelError) as info:
        sandboxed_read(path, limits=LIMITS)
    assert info.value.rule == "pickle.globals"
    assert "os.system" in info.value.message


@pytest.mark.slow
def test_corpus_reads_the_same_in_and_out_of_the_sandbox(corpus: Any) -> None:
    """Every corpus file: same value, or the same refusal, with and without the sandbox."""
    from safeload.errors import SafeloadError

    for sample in corpus.manifest:
        path = corpus.path(sample)
        try:
            expected: Any = read(bytearray(path.read_bytes()), name=path.name, limits=LIMITS,
                                 framework="numpy").value  # fmt: skip
        except SafeloadError as exc:
            expected = exc
        try:
            got: Any = sandboxed_read(path, limits=LIMITS, framework="numpy")
        except SafeloadError as exc:
            got = exc
        where = sample["file"]
        if isinstance(expected, SafeloadError):
            assert type(got) is type(expected), f"{where}: {got!r} {getattr(got, 'detail', '')}"
            assert (got.rule, got.code) == (expected.rule, expected.code), where
        else:
            assert_same(expected, got, where)
    assert list(corpus.markers.iterdir()) == [], "a corpus payload ran"


def _tensors(value: Any) -> list[Any]:
    """Every tensor in a value tree, in a fixed walk order (dict values, then items)."""
    out: list[Any] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            out.append(v)
        elif isinstance(v, dict):
            stack.extend(reversed(list(v.values())))
        elif isinstance(v, list | tuple):
            stack.extend(reversed(v))
    return out


def _partition(keys: list[Any]) -> list[int]:
    """Which earlier item each item equals: the shape of a sharing relation, not its values."""
    first: dict[Any, int] = {}
    return [first.setdefault(k, i) for i, k in enumerate(keys)]


def assert_same_kinds_and_sharing(a: Any, b: Any) -> None:
    """Same tensor classes, grad flags, object identity and storage sharing (and offsets)."""
    ta, tb = _tensors(a), _tensors(b)
    assert len(ta) == len(tb) and ta
    assert [type(t) for t in ta] == [type(t) for t in tb]
    assert [t.requires_grad for t in ta] == [t.requires_grad for t in tb]
    assert _partition([id(t) for t in ta]) == _partition([id(t) for t in tb])
    storages_a = [t.untyped_storage().data_ptr() for t in ta]
    storages_b = [t.untyped_storage().data_ptr() for t in tb]
    assert _partition(storages_a) == _partition(storages_b)
    assert [t.storage_offset() for t in ta] == [t.storage_offset() for t in tb]
    assert [t.stride() for t in ta] == [t.stride() for t in tb]


def _tied_checkpoint() -> dict[str, Any]:
    """Tied weights, live Parameters, views over one storage, and optimizer state."""
    torch.manual_seed(1)
    emb = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = emb.weight  # tied: one Parameter under two names
    model = torch.nn.Sequential(emb, head)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.tensor([1, 2, 3])).sum().backward()
    opt.step()
    base = torch.arange(24, dtype=torch.float32)
    return {
        "state": model.state_dict(),
        "params": dict(model.named_parameters(remove_duplicate=False)),
        "frozen": torch.nn.Parameter(torch.ones(3), requires_grad=False),
        "optimizer": opt.state_dict(),
        "views": [base, base[4:10].view(2, 3), base.view(4, 6).t(), base[::5]],
    }


def _deflated_copy(src: Path, dst: Path) -> None:
    """The same torch.save archive with every member deflated (storages are then not file views)."""
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))


@pytest.mark.parametrize("layout", ["torch_zip", "torch_legacy", "deflated_zip"])
def test_sandboxed_read_keeps_parameters_and_shared_storages(tmp_path: Path, layout: str) -> None:
    path = tmp_path / "tied.pt"
    torch.save(_tied_checkpoint(), path, _use_new_zipfile_serialization=layout != "torch_legacy")
    if layout == "deflated_zip":
        _deflated_copy(path, tmp_path / "deflated.pt")
        path = tmp_path / "deflated.pt"
    expected = read(bytearray(path.read_bytes()), name=path.name, limits=LIMITS).value
    got = sandboxed_read(path, limits=LIMITS)
    assert_same(expected, got)
    assert_same_kinds_and_sharing(expected, got)
    assert isinstance(got, dict)
    params = got["params"]
    assert type(params["0.weight"]) is torch.nn.Parameter
    assert params["0.weight"] is params["1.weight"]  # tied weights stay one object
    assert got["state"]["0.weight"].data_ptr() == got["state"]["1.weight"].data_ptr()
    assert type(got["frozen"]) is torch.nn.Parameter and not got["frozen"].requires_grad
    base, window = got["views"][0], got["views"][1]
    window[0, 0] = -1.0  # views share memory in the result, as after torch.load
    assert base[4].item() == -1.0


def test_sandboxed_read_matches_torch_load(tmp_path: Path) -> None:
    """The reference is torch.load itself (our own file, so weights_only is safe to run here)."""
    path = tmp_path / "tied.pt"
    torch.save(_tied_checkpoint(), path)
    reference = torch.load(path, weights_only=True)
    got = sandboxed_read(path, limits=LIMITS)
    assert_same_kinds_and_sharing(reference, got)


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation:UserWarning")
def test_sandboxed_read_of_quantized_and_plain_pickled_tensors(tmp_path: Path) -> None:
    """Quantizer parameters and storages embedded with _load_from_bytes cross the boundary."""
    import pickle

    q = torch.quantize_per_tensor(torch.randn(6), scale=0.5, zero_point=3, dtype=torch.qint8)
    torch.save({"q": q, "w": torch.nn.Parameter(torch.ones(2))}, tmp_path / "q.pt")
    plain = torch.arange(5, dtype=torch.float32)
    (tmp_path / "plain.pkl").write_bytes(pickle.dumps({"a": plain, "b": plain[1:3]}))
    for name in ("q.pt", "plain.pkl"):
        path = tmp_path / name
        expected = read(bytearray(path.read_bytes()), name=name, limits=LIMITS).value
        got = sandboxed_read(path, limits=LIMITS)
        assert_same_kinds_and_sharing(expected, got)
        assert isinstance(got, dict)
        for key in expected:
            assert torch.equal(expected[key], got[key]), f"{name}[{key}]"
            if expected[key].is_quantized:
                assert got[key].q_scale() == 0.5 and got[key].q_zero_point() == 3


def test_the_worker_holds_no_copy_of_tensor_data(tmp_path: Path) -> None:
    """Tensor bytes stay in the page cache: the worker's anonymous memory stays small."""
    from safeload.sandbox import run_in_sandbox

    path = tmp_path / "big.pt"
    size = 96 << 20
    torch.save({"w": torch.ones(size // 4), "v": torch.zeros(size // 8)}, path)
    result = run_in_sandbox("read", [path], limits=LIMITS, framework="torch")
    anon = result.worker_memory.get("RssAnon")
    if anon is None:
        pytest.skip("this kernel's /proc/self/status has no RssAnon")
    assert anon < size // 2, f"worker anonymous memory {anon >> 20} MiB"
    assert isinstance(result.value, dict) and float(result.value["w"].sum()) == size // 4

"""The parent treats the worker's result as hostile: every malformed answer is a SandboxError.

These results are written by hand (a compromised worker could write anything) into a real
memfd, sealed, and decoded exactly as ``run_in_sandbox`` does.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from safeload.errors import SandboxError
from safeload.policy import Limits
from safeload.sandbox._transport import decode_result, encode_result, seal

LIMITS = Limits()


def _safetensors(tensors: dict[str, Any], skeleton: object, meta: object = None,
                 refs: object = (), specs: object = None,
                 storages: object = None) -> bytes:  # fmt: skip
    header: dict[str, Any] = {}
    data = b""
    for name, spec in tensors.items():
        header[name] = spec
    header["__metadata__"] = {
        "safeload.skeleton": json.dumps(skeleton),
        "safeload.meta": json.dumps({} if meta is None else meta),
        "safeload.filerefs": json.dumps(list(refs) if isinstance(refs, tuple) else refs),
    }
    if specs is not None:
        header["__metadata__"]["safeload.specs"] = json.dumps(specs)
    if storages is not None:
        header["__metadata__"]["safeload.storages"] = json.dumps(storages)
    raw = json.dumps(header).encode()
    size = max((s["data_offsets"][1] for s in tensors.values()), default=0)
    data = bytes(size)
    return len(raw).to_bytes(8, "little") + raw + data


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("test-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    yield fd
    os.close(fd)


def decode(fd: int, payload: bytes, framework: str = "numpy", inputs: tuple[int, ...] = ()) -> Any:
    os.write(fd, payload)
    seal(fd)
    return decode_result(fd, limits=LIMITS, framework=framework,  # type: ignore[arg-type]
                         max_bytes=1 << 20, inputs=inputs)  # fmt: skip


F32x2 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


def test_valid_result_decodes(memfd: int) -> None:
    value, _, meta = decode(memfd, _safetensors({"t0": F32x2}, {"$d": [["w", {"$t": "t0"}]]}))
    assert isinstance(value, dict) and value["w"].tolist() == [0.0, 0.0]
    assert meta == {}


@pytest.mark.parametrize(
    ("tensors", "skeleton", "why"),
    [
        ({"t0": F32x2, "t1": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}},
         [{"$t": "t0"}, {"$t": "t1"}], "overlap"),
        ({"t0": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, {"$t": "t0"}, "size"),
        ({"t0": {"dtype": "X9", "shape": [2], "data_offsets": [0, 8]}}, {"$t": "t0"}, "dtype"),
        ({"t0": F32x2}, {"$t": "t9"}, "dangling reference"),
        ({"t0": F32x2}, None, "unused tensor"),
        ({}, {"$pickle": "gASV"}, "unknown tag"),
        ({}, {"$d": [[["unhashable"], 1]]}, "unhashable key"),
        ({"n0": {"dtype": "U8", "shape": [8], "data_offsets": [0, 8]}},
         {"$np": ["n0", "|O", [1]]}, "object dtype"),
        ({"t0": F32x2}, {"$np": ["t0", "<f4", [2]]}, "raw reference to a typed tensor"),
        ({}, {"$b": "not base64!"}, "bad base64"),
        ({}, {"$dt": "float32", "$dev": "cpu"}, "two-key node"),
    ],
)  # fmt: skip
def test_malformed_results_are_refused(memfd: int, tensors: dict[str, Any], skeleton: object,
                                       why: str) -> None:  # fmt: skip
    with pytest.raises(SandboxError) as info:
        decode(memfd, _safetensors(tensors, skeleton))
    assert info.value.rule == "sandbox.result", why


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ([0, 0, "float32", [5], [1]], "past the end of the 16-byte input"),
        ([0, 4, "float32", [2], [3]], "strided past the end"),
        ([1, 0, "float32", [1], [1]], "no such input"),
        ([0, 2, "float32", [1], [1]], "misaligned"),
        ([0, -4, "float32", [1], [1]], "negative offset"),
        ([0, 0, "object", [1], [1]], "unknown dtype"),
        ([0, 0, "float32", [2], [-1]], "negative stride"),
        ([0, 0, "float32", [2, 2], [1]], "rank mismatch"),
        ("0,0", "not a list"),
    ],
)
def test_bad_file_references_are_refused(memfd: int, tmp_path: Any, ref: object, why: str) -> None:
    model = tmp_path / "model.bin"
    model.write_bytes(bytes(range(16)))
    fd = os.open(model, os.O_RDONLY)
    try:
        with pytest.raises(SandboxError) as info:
            decode(memfd, _safetensors({}, {"$fr": 0}, refs=[ref]), inputs=(fd,))
    finally:
        os.close(fd)
    assert info.value.rule == "sandbox.result", why


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_file_references_map_the_parents_own_descriptor(memfd: int, tmp_path: Any,
                                                        framework: str) -> None:  # fmt: skip
    data = np.arange(8, dtype=np.float32)
    model = tmp_path / "model.bin"
    model.write_bytes(data.tobytes())
    fd = os.open(model, os.O_RDONLY)
    try:
        # a transposed 2x2 view starting at element 2: strides (1, 2) in elements
        value, _, _ = decode(memfd, _safetensors({}, {"$fr": 0}, refs=[[0, 8, "float32", [2, 2],
                             [1, 2]]]), framework=framework, inputs=(fd,))  # fmt: skip
    finally:
        os.close(fd)
    expected = data[2:6].reshape(2, 2).T
    got = value if framework == "numpy" else value.numpy()
    assert np.array_equal(got, expected)


def test_nesting_beyond_the_limit_is_refused(memfd: int) -> None:
    skeleton: object = 1
    for _ in range(LIMITS.max_nesting_depth + 2):
        skeleton = [skeleton]
    with pytest.raises(SandboxError):
        decode(memfd, _safetensors({}, skeleton))


def test_truncated_result_is_refused(memfd: int) -> None:
    payload = _safetensors({"t0": F32x2}, {"$t": "t0"})
    with pytest.raises(SandboxError):
        decode(memfd, payload[:-3])


def test_sealed_result_cannot_change_under_the_tensors(memfd: int) -> None:
    value, _, _ = decode(memfd, _safetensors({"t0": F32x2}, {"$t": "t0"}))
    with pytest.raises(PermissionError):
        os.pwrite(memfd, b"\x01", 20)
    value[0] = 5.0  # a private mapping: the caller may write, the memfd stays as sealed
    assert os.pread(memfd, 4, os.fstat(memfd).st_size - 8) == bytes(4)


def test_encode_then_decode_round_trips(memfd: int) -> None:
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    encode_result(memfd, {"a": arr, "b": [arr, 1.5]}, {"format": "x"})
    seal(memfd)
    value, tensors, meta = decode_result(memfd, limits=LIMITS, framework="numpy",
                                         max_bytes=1 << 20)  # fmt: skip
    assert isinstance(value, dict)
    assert value["a"] is value["b"][0] and np.array_equal(value["a"], arr)
    assert len(tensors) == 1 and meta == {"format": "x"}


def _plain() -> Any:
    from hypothesis import strategies as st

    scalars = (
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
        | st.binary(max_size=16)
    )  # fmt: skip
    keys = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(keys, inner, max_size=4)
        ),
        max_leaves=20,
    )


def test_any_plain_structure_round_trips() -> None:
    from hypothesis import given, settings

    @settings(max_examples=60, deadline=None)
    @given(_plain())
    def check(value: Any) -> None:
        fd = os.memfd_create("prop", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            encode_result(fd, value, {})
            seal(fd)
            got, _, _ = decode_result(fd, limits=LIMITS, framework="numpy", max_bytes=1 << 20)
        finally:
            os.close(fd)
        assert got == value and type(got) is type(value)

    check()


# --- tensor views over storages (the reader path) ---------------------------------------------

U8x16 = {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]}


def _view(storage: str = "s0", offset: int = 0, shape: object = (2,), stride: object = (1,),
          dtype: object = "float32", kind: object = "tensor", grad: object = False,
          extra: object = None) -> list[Any]:  # fmt: skip
    return [storage, offset, list(shape), list(stride), dtype, kind, grad,  # type: ignore[call-overload]
            {"$d": []} if extra is None else extra]  # fmt: skip


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_views_over_one_storage_share_memory(memfd: int, framework: str) -> None:
    specs = [_view(shape=(4,)), _view(offset=2, shape=(2, 1), stride=(1, 1)),
             _view(kind="parameter")]  # fmt: skip
    skeleton = [{"$ts": 0}, {"$ts": 1}, {"$ts": 2}, {"$ts": 0}]
    value, _, _ = decode(memfd, _safetensors({"s0": U8x16}, skeleton, specs=specs),
                         framework=framework)  # fmt: skip
    a, b, p, again = value
    assert a is again  # one view object, however often the skeleton names it
    assert tuple(b.shape) == (2, 1)
    a[0] = 7.0
    b[0, 0] = 5.0
    assert p[0] == 7.0 and a[2] == 5.0  # all three view the same storage
    if framework == "torch":
        import torch

        assert type(p) is torch.nn.Parameter and type(a) is torch.Tensor


@pytest.mark.parametrize(
    ("specs", "skeleton", "storage", "why"),
    [
        ([_view(dtype="object")], {"$ts": 0}, U8x16, "unknown dtype"),
        ([_view(kind="module")], {"$ts": 0}, U8x16, "unknown kind"),
        ([_view(grad=1)], {"$ts": 0}, U8x16, "requires_grad not a bool"),
        ([_view(storage="s9")], {"$ts": 0}, U8x16, "dangling storage"),
        ([_view(offset=-1)], {"$ts": 0}, U8x16, "negative offset"),
        ([_view(stride=(-1,))], {"$ts": 0}, U8x16, "negative stride"),
        ([_view(extra=[1])], {"$ts": 0}, U8x16, "extras not a dict"),
        ([_view()], {"$ts": 1}, U8x16, "view index out of range"),
        ([_view(), _view()], {"$ts": 0}, U8x16, "unused view"),
        ([_view()], {"$ts": 0}, {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
         "storage not flat bytes"),
        ([[0, 1]], {"$ts": 0}, U8x16, "short view"),
        ("[]", {"$ts": 0}, U8x16, "views not a list"),
    ],
)  # fmt: skip
def test_malformed_views_are_refused(memfd: int, specs: object, skeleton: object,
                                     storage: dict[str, Any], why: str) -> None:  # fmt: skip
    with pytest.raises(SandboxError) as info:
        decode(memfd, _safetensors({"s0": storage}, skeleton, specs=specs))
    assert info.value.rule == "sandbox.result", why


def test_a_view_outside_its_storage_is_refused_by_the_parent(memfd: int) -> None:
    from safeload.errors import FormatError

    with pytest.raises(FormatError) as info:  # the materialiser re-checks every view
        decode(memfd, _safetensors({"s0": U8x16}, {"$ts": 0}, specs=[_view(offset=3)]))
    assert info.value.rule == "tensor.view"


@pytest.mark.parametrize(
    ("ref", "why"),
    [
        ([0, 8, 16], "past the end of the 16-byte input"),
        ([1, 0, 4], "no such input"),
        ([0, 0, 0], "empty"),
        ([0, -4, 4], "negative offset"),
        ([0, 0], "short"),
    ],
)
def test_bad_storage_references_are_refused(memfd: int, tmp_path: Any, ref: object,
                                            why: str) -> None:  # fmt: skip
    model = tmp_path / "model.bin"
    model.write_bytes(bytes(range(16)))
    fd = os.open(model, os.O_RDONLY)
    try:
        with pytest.raises(SandboxError) as info:
            decode(memfd, _safetensors({}, {"$ts": 0}, specs=[_view(storage="r0")],
                                       storages=[ref]), inputs=(fd,))  # fmt: skip
    finally:
        os.close(fd)
    assert info.value.rule == "sandbox.result", why


def test_storage_references_map_the_parents_own_descriptor(memfd: int, tmp_path: Any) -> None:
    data = np.arange(4, dtype=np.float32)
    model = tmp_path / "model.bin"
    model.write_bytes(data.tobytes())
    fd = os.open(model, os.O_RDONLY)
    try:
        value, _, _ = decode(memfd, _safetensors({}, {"$ts": 0}, specs=[_view(storage="r0")],
                                                 storages=[[0, 4, 12]]), inputs=(fd,))  # fmt: skip
    finally:
        os.close(fd)
    assert value.tolist() == [1.0, 2.0]
    value[0] = 9.0  # private mapping: the caller's writes never reach the file
    assert model.read_bytes() == data.tobytes()


def test_a_reference_into_an_empty_input_is_refused(memfd: int, tmp_path: Any) -> None:
    model = tmp_path / "empty.bin"
    model.write_bytes(b"")
    fd = os.open(model, os.O_RDONLY)
    try:
        with pytest.raises(SandboxError) as info:
            decode(memfd, _safetensors({}, {"$ts": 0}, specs=[_view(storage="r0")],
                                       storages=[[0, 0, 4]]), inputs=(fd,))  # fmt: skip
    finally:
        os.close(fd)
    assert info.value.rule == "sandbox.result"


def test_prefetch_stops_when_told_and_decode_maps_the_rest(memfd: int, tmp_path: Any) -> None:
    import threading

    from safeload.sandbox._transport import InputMaps

    data = np.arange(1 << 20, dtype=np.float32)  # 4 MiB
    model = tmp_path / "model.bin"
    model.write_bytes(data.tobytes())
    fd = os.open(model, os.O_RDONLY)
    try:
        maps = InputMaps([fd])
        stop = threading.Event()
        stop.set()  # the worker already answered: nothing more is populated in the background
        maps.prefetch(stop)
        os.write(memfd, _safetensors({}, {"$ts": 0}, specs=[_view(storage="r0", shape=(1 << 20,))],
                                     storages=[[0, 0, data.nbytes]]))  # fmt: skip
        seal(memfd)
        value, _, _ = decode_result(memfd, limits=LIMITS, framework="numpy", max_bytes=1 << 20,
                                    inputs=(fd,), maps=maps)  # fmt: skip
        assert np.array_equal(value, data)  # type: ignore[arg-type]
        other = InputMaps([fd])
        other.prefetch(threading.Event())  # not stopped: maps and populates every input
        assert other.map(0)[:8] == data.tobytes()[:8]
    finally:
        os.close(fd)

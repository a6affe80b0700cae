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
                 refs: object = ()) -> bytes:  # fmt: skip
    header: dict[str, Any] = {}
    data = b""
    for name, spec in tensors.items():
        header[name] = spec
    header["__metadata__"] = {
        "safeload.skeleton": json.dumps(skeleton),
        "safeload.meta": json.dumps({} if meta is None else meta),
        "safeload.filerefs": json.dumps(list(refs) if isinstance(refs, tuple) else refs),
    }
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

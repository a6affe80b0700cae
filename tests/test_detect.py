"""Detection by content: every format, every wrapper, and names that lie."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import pickle
import struct
import tarfile
import warnings
import zipfile
import zlib
from collections.abc import Callable

import numpy as np
import pytest

from safeload import FormatError, LimitExceededError, Limits, UnsupportedFormatError
from safeload.formats import Format, analyze, detect, read

torch = pytest.importorskip("torch")


def _torch(obj: object, **kw: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def _safetensors() -> bytes:
    from safetensors.torch import save

    return save({"w": torch.ones(2, 3), "b": torch.zeros(3, dtype=torch.bfloat16)})


def _npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(6.0).reshape(2, 3))
    return buf.getvalue()


def _npz() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, a=np.ones(3), b=np.arange(4))
    return buf.getvalue()


def _onnx() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    return bytes(onnx.helper.make_model(graph).SerializeToString())


def _gguf() -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, 0, 0)


def _joblib() -> bytes:
    joblib = pytest.importorskip("joblib")
    buf = io.BytesIO()
    joblib.dump({"coef": np.arange(10.0)}, buf)
    return buf.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _keras() -> bytes:
    return _zip({"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": b""})


def _hdf5() -> bytes:
    return b"\x89HDF\r\n\x1a\n" + b"\x00" * 100


def _torchscript() -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buf)
    return buf.getvalue()


def _tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:", format=tarfile.PAX_FORMAT) as tf:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            data = pickle.dumps(0, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PLAIN = {"a": [1, 2.5, "x", None], "b": (True, b"\x00")}

CASES: dict[str, tuple[Callable[[], bytes], Format]] = {
    "safetensors": (_safetensors, Format.SAFETENSORS),
    "torch_zip": (lambda: _torch({"w": torch.ones(2)}), Format.TORCH_ZIP),
    "torch_zip_proto4": (lambda: _torch({"w": torch.ones(2)}, pickle_protocol=4), Format.TORCH_ZIP),
    "torch_legacy": (
        lambda: _torch({"w": torch.ones(2)}, _use_new_zipfile_serialization=False),
        Format.TORCH_LEGACY,
    ),
    "torch_tar": (_tar, Format.TORCH_TAR),
    **{
        f"pickle_p{p}": ((lambda p=p: pickle.dumps(PLAIN, protocol=p)), Format.PICKLE)  # type: ignore[misc]
        for p in range(6)
    },
    "pickle_p0_list": (lambda: pickle.dumps([1, 2], protocol=0), Format.PICKLE),
    "pickle_p1_int": (lambda: pickle.dumps(7, protocol=1), Format.PICKLE),
    "numpy": (_npy, Format.NUMPY),
    "npz": (_npz, Format.NPZ),
    "onnx": (_onnx, Format.ONNX),
    "gguf": (_gguf, Format.GGUF),
    "joblib": (_joblib, Format.JOBLIB),
    "keras": (_keras, Format.KERAS),
    "hdf5": (_hdf5, Format.HDF5),
    "torchscript": (_torchscript, Format.TORCHSCRIPT),
}

READABLE = {
    Format.SAFETENSORS,
    Format.TORCH_ZIP,
    Format.TORCH_LEGACY,
    Format.PICKLE,
    Format.NUMPY,
    Format.NPZ,
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_detection_table(case: str) -> None:
    make, fmt = CASES[case]
    data = make()
    det = detect(data)
    assert det.format == fmt and det.wrappers == ()
    if fmt in READABLE:
        assert analyze(data).format == fmt
        read(data, framework="numpy")
    else:
        with pytest.raises(UnsupportedFormatError) as info:
            read(data)
        assert info.value.rule == "formats.supported"
        assert fmt.value in str(info.value)


@pytest.mark.parametrize(
    "name", ["model.safetensors", "weights.npy", "x.onnx", "data.json", "pytorch_model.bin"]
)
def test_names_never_decide(name: str) -> None:
    data = _torch({"w": torch.ones(2)})
    assert detect(data, name=name).format == Format.TORCH_ZIP
    assert detect(pickle.dumps(PLAIN, protocol=2), name=name).format == Format.PICKLE


WRAPPERS: dict[str, Callable[[bytes], bytes]] = {
    "gzip": gzip.compress,
    "bz2": bz2.compress,
    "lzma": lzma.compress,
    "zlib": zlib.compress,
}


@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("inner", ["torch_zip", "pickle_p2", "numpy", "safetensors"])
def test_wrappers_are_peeled_and_redetected(wrapper: str, inner: str) -> None:
    make, fmt = CASES[inner]
    raw = make()
    det = detect(WRAPPERS[wrapper](raw))
    assert det == type(det)(fmt, (wrapper,), det.detail)
    a = analyze(WRAPPERS[wrapper](raw))
    assert a.format == fmt and a.wrappers == (wrapper,)
    assert all(t.offset is None for t in a.tensors)  # offsets refer to the unwrapped bytes


def test_lzma_alone_and_nested_wrappers() -> None:
    raw = pickle.dumps(PLAIN, protocol=2)
    alone = lzma.compress(raw, format=lzma.FORMAT_ALONE)
    assert detect(alone).wrappers == ("lzma",)
    nested = gzip.compress(bz2.compress(raw))
    det = detect(nested)
    assert det.format == Format.PICKLE and det.wrappers == ("gzip", "bz2")
    assert read(nested).value == PLAIN


def test_too_many_wrappers_are_refused() -> None:
    data = pickle.dumps(PLAIN, protocol=2)
    for _ in range(5):
        data = gzip.compress(data)
    with pytest.raises(FormatError) as info:
        detect(data)
    assert info.value.rule == "formats.wrapper"


def test_decompression_bomb_is_refused_at_the_limit() -> None:
    bomb = gzip.compress(b"\x00" * (8 << 20))
    with pytest.raises(LimitExceededError) as info:
        detect(bomb, limits=Limits(max_decompressed_bytes=1 << 20))
    assert info.value.rule == "limits.max_decompressed_bytes"


def test_truncated_and_trailing_wrapper_data_are_refused() -> None:
    data = gzip.compress(pickle.dumps(PLAIN, protocol=2))
    with pytest.raises(FormatError):
        detect(data[:-10])
    with pytest.raises(FormatError):
        detect(data + b"junk")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"\x00" * 64,
        json.dumps({"a": 1}).encode(),
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 32,
    ],
    ids=["empty", "text", "zeros", "json", "png"],
)
def test_unknown_bytes_are_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError) as info:
        detect(data)
    assert info.value.rule == "formats.detect"
    assert type(info.value) is FormatError


def test_unknown_zip_layout_is_refused() -> None:
    data = _zip({"readme.txt": b"hi"})
    assert detect(data).format == Format.UNKNOWN
    with pytest.raises(UnsupportedFormatError):
        read(data)


def test_safetensors_header_lies_are_refused() -> None:
    good = _safetensors()
    (n,) = struct.unpack_from("<Q", good)
    header = json.loads(good[8 : 8 + n])
    body = good[8 + n :]

    def remake(h: dict[str, object], data: bytes = body) -> bytes:
        raw = json.dumps(h).encode()
        return struct.pack("<Q", len(raw)) + raw + data

    overlap = json.loads(json.dumps(header))
    overlap["b"]["data_offsets"] = overlap["w"]["data_offsets"][:]
    overlap["b"]["shape"] = [12]
    overlap["b"]["dtype"] = "BF16"
    bad_dtype = json.loads(json.dumps(header))
    bad_dtype["w"]["dtype"] = "OBJECT"
    wrong_shape = json.loads(json.dumps(header))
    wrong_shape["w"]["shape"] = [2, 4]
    for h in (overlap, bad_dtype, wrong_shape):
        with pytest.raises(FormatError):
            read(remake(h))
    with pytest.raises(FormatError):
        read(remake(header, body + b"extra"))
    dup = good[:8] + good[8 : 8 + n].replace(b'"w"', b'"b"') + body
    with pytest.raises(FormatError):
        read(dup)


def test_npy_object_dtype_and_size_lies() -> None:
    buf = io.BytesIO()
    np.save(buf, np.array([1, "x"], dtype=object), allow_pickle=True)
    from safeload import UnsafeModelError

    with pytest.raises(UnsafeModelError):
        read(buf.getvalue())
    with pytest.raises(FormatError):
        read(_npy()[:-8])

"""Container readers against hostile archives: zip desync and bombs, lying storages and views.

Every hostile file here is built in the test from a real ``torch.save`` output plus a small,
readable edit (a rewritten record, a hand-assembled ``data.pkl``, a crafted zip directory), so
each test names the one thing that is wrong and the rule that must refuse it.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import struct
import zlib
from typing import Any

import numpy as np
import pytest

from safeload import FormatError, LimitExceededError, Limits, UnsupportedFormatError
from safeload.formats import analyze, read
from safeload.formats._zip import ZipArchive

torch = pytest.importorskip("torch")


# -- builders ------------------------------------------------------------------------------------
def torch_bytes(obj: Any, **kw: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, **kw)
    return buf.getvalue()


def entries(data: bytes) -> list[tuple[str, bytes]]:
    import zipfile

    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i.filename)) for i in z.infolist()]


def write_zip(
    members: list[tuple[str, bytes]],
    *,
    deflate: tuple[str, ...] = (),
    crc_of: dict[str, bytes] | None = None,
    size_of: dict[str, int] | None = None,
    offsets: dict[str, int] | None = None,
    prefix: bytes = b"",
    suffix: bytes = b"",
) -> bytes:
    """A plain zip writer whose central directory can be told to lie."""
    out = io.BytesIO()
    out.write(prefix)
    central = []
    for name, data in members:
        nb = name.encode()
        method, payload = 0, data
        if name in deflate:
            c = zlib.compressobj(6, zlib.DEFLATED, -15)
            payload, method = c.compress(data) + c.flush(), 8
        crc = zlib.crc32((crc_of or {}).get(name, data)) & 0xFFFFFFFF
        usize = (size_of or {}).get(name, len(data))
        off = out.tell()
        out.write(
            struct.pack(
                "<4s5H3L2H",
                b"PK\x03\x04",
                20,
                0,
                method,
                0,
                0,
                crc,
                len(payload),
                usize,
                len(nb),
                0,
            )
        )
        out.write(nb + payload)
        off = (offsets or {}).get(name, off)
        central.append(
            struct.pack(
                "<4s6H3L5H2L",
                b"PK\x01\x02",
                20,
                20,
                0,
                method,
                0,
                0,
                crc,
                len(payload),
                usize,
                len(nb),
                0,
                0,
                0,
                0,
                0,
                off,
            )
            + nb
        )
    cd = out.tell()
    for c in central:
        out.write(c)
    out.write(
        struct.pack(
            "<4s4H2LH", b"PK\x05\x06", 0, 0, len(central), len(central), out.tell() - cd, cd, 0
        )
    )
    return out.getvalue() + suffix


def small_zip() -> list[tuple[str, bytes]]:
    return entries(torch_bytes({"w": torch.arange(4, dtype=torch.float32)}))


def with_pickle(pkl: bytes, storage: bytes = b"\x00" * 16) -> bytes:
    return write_zip([("a/data.pkl", pkl), ("a/byteorder", b"little"), ("a/data/0", storage)])


def rebuild(
    size: tuple[int, ...], stride: tuple[int, ...], numel: int = 4, offset: int = 0
) -> bytes:
    """data.pkl: _rebuild_tensor_v2 over FloatStorage '0' of ``numel`` elements."""

    def tup(vals: tuple[int, ...]) -> bytes:
        return (
            b"("
            + b"".join(
                b"J" + struct.pack("<i", v) if v < 2**31 else b"\x8a\x08" + struct.pack("<q", v)
                for v in vals
            )
            + b"t"
        )

    pid = (
        b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpuJ"
        + struct.pack("<i", numel)
        + b"tQ"
    )
    return (
        b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n("
        + pid
        + b"J"
        + struct.pack("<i", offset)
        + tup(size)
        + tup(stride)
        + b"\x89ccollections\nOrderedDict\n)RtR."
    )


# -- the happy path: zero copy, sharing -----------------------------------------------------
def address(buf: bytearray) -> int:
    return ctypes.addressof((ctypes.c_char * len(buf)).from_buffer(buf))


def test_tensors_are_views_of_the_callers_buffer() -> None:
    t = torch.randn(6, 4)
    buf = bytearray(torch_bytes({"a": t, "b": t[2:], "c": t.t()}))
    out = read(buf, name="x.pt").value
    base = address(buf)
    ptr = out["a"].untyped_storage().data_ptr()
    assert base <= ptr < base + len(buf)  # zero-copy: the storage is inside our buffer
    assert out["b"].untyped_storage().data_ptr() == ptr == out["c"].untyped_storage().data_ptr()
    assert out["c"].stride() == (1, 4) and torch.equal(out["c"], t.t())
    arrays = read(buf, name="x.pt", framework="numpy").value
    assert np.shares_memory(arrays["a"], arrays["b"]) and np.shares_memory(arrays["a"], arrays["c"])
    assert arrays["c"].strides == (4, 16)


def test_legacy_format_shares_storages_and_reads_every_dtype(assert_same: Any) -> None:
    t = torch.randn(4, 4)
    obj = {
        "a": t, "b": t[1:], "t": t.t(), "bf": torch.randn(3).bfloat16(), "e": torch.empty(0),
        "i8": torch.arange(5).to(torch.int8), "c": torch.randn(2, dtype=torch.complex64),
        "p": torch.nn.Parameter(torch.ones(2)),
    }  # fmt: skip
    data = torch_bytes(obj, _use_new_zipfile_serialization=False)
    got = read(data, name="legacy.pt").value
    assert_same(got, torch.load(io.BytesIO(data), weights_only=True))
    assert got["a"].untyped_storage().data_ptr() == got["t"].untyped_storage().data_ptr()
    assert analyze(data).format == "torch_legacy"


# -- zip attacks ------------------------------------------------------------------------------
def test_duplicate_member_names_are_refused() -> None:
    ents = small_zip()
    pkl = next(d for n, d in ents if n.endswith("data.pkl"))
    root = ents[0][0].split("/")[0]
    with pytest.raises(FormatError) as info:
        read(write_zip([*ents, (f"{root}/data.pkl", pkl)]))
    assert info.value.rule == "zip.duplicate_name"


@pytest.mark.parametrize(
    "bad", ["a/../data.pkl", "/a/data.pkl", "a\\data.pkl", "a//data.pkl", "C:/x"]
)
def test_unsafe_member_names_are_refused(bad: str) -> None:
    with pytest.raises(FormatError) as info:
        ZipArchive(write_zip([(bad, b"x")]), limits=Limits())
    assert info.value.rule == "zip.name"


def test_overlapping_members_are_refused() -> None:
    # b's local header sits inside a's data: two names for overlapping bytes.
    inner = (
        struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 0, 0, 0, zlib.crc32(b"zz"), 2, 2, 1, 0)
        + b"bzz"
    )
    data = write_zip([("a", inner), ("b", b"zz")], offsets={"b": 30 + 1})
    with pytest.raises(FormatError) as info:
        ZipArchive(data, limits=Limits())
    assert info.value.rule in ("zip.overlap", "zip.gap", "zip.desync")


def test_bad_crc_is_refused_when_read() -> None:
    ents = small_zip()
    pkl_name = next(n for n, _ in ents if n.endswith("data.pkl"))
    data = write_zip(ents, crc_of={pkl_name: b"something else"})
    with pytest.raises(FormatError) as info:
        read(data)
    assert info.value.rule == "zip.crc"


def test_deflate_bomb_is_refused_before_decompressing() -> None:
    bomb = b"\x00" * (4 << 20)
    with pytest.raises(LimitExceededError):
        ZipArchive(
            write_zip([("x.npy", bomb)], deflate=("x.npy",)),
            limits=Limits(max_decompressed_bytes=1 << 20),
        )


def test_deflate_size_lie_is_refused() -> None:
    data = write_zip([("x.npy", b"\x00" * 100_000)], deflate=("x.npy",), size_of={"x.npy": 10})
    archive = ZipArchive(data, limits=Limits())
    with pytest.raises(FormatError) as info:
        archive.read("x.npy")
    assert info.value.rule == "zip.deflate"


def test_data_after_end_and_before_start_are_refused() -> None:
    ents = small_zip()
    with pytest.raises(FormatError) as info:
        read(write_zip(ents, suffix=b"trailing payload"))
    assert info.value.rule == "zip.trailing_data"
    with pytest.raises(FormatError) as info:
        read(write_zip(ents, prefix=b"\x80\x02K\x01."))
    assert info.value.rule in ("zip.gap", "pickle.trailing_data")  # a pickle+zip polyglot


def test_member_count_is_bounded() -> None:
    data = write_zip([(f"a/{i}", b"") for i in range(20)])
    with pytest.raises(LimitExceededError):
        ZipArchive(data, limits=Limits(max_zip_members=10))


def test_two_top_level_folders_are_refused() -> None:
    ents = small_zip()
    data = write_zip([*ents, ("other/data.pkl", b"\x80\x02K\x01.")])
    with pytest.raises(FormatError):
        read(data)


def test_big_endian_checkpoint_is_refused() -> None:
    ents = [(n, b"big" if n.endswith("/byteorder") else d) for n, d in small_zip()]
    with pytest.raises(UnsupportedFormatError) as info:
        read(write_zip(ents))
    assert info.value.rule == "torch.byteorder"


# -- storages and views -------------------------------------------------------------------------
def test_storage_record_size_must_match_the_pickle() -> None:
    ents = [(n, d[:-4] if "/data/" in n else d) for n, d in small_zip()]
    with pytest.raises(FormatError) as info:
        read(write_zip(ents))
    assert info.value.rule == "torch.storage_size"


def test_missing_storage_record_is_refused() -> None:
    ents = [(n, d) for n, d in small_zip() if "/data/" not in n]
    with pytest.raises(FormatError) as info:
        read(write_zip(ents))
    assert info.value.rule == "torch.storage"


def test_handmade_checkpoint_reads() -> None:
    out = read(with_pickle(rebuild((2, 2), (2, 1))), framework="numpy").value
    assert out.shape == (2, 2) and out.dtype == np.float32


def test_view_outside_its_storage_is_refused() -> None:
    with pytest.raises(FormatError):
        read(with_pickle(rebuild((100,), (1,))))
    with pytest.raises(FormatError):
        read(with_pickle(rebuild((2,), (1,), offset=3)))


def test_stride_zero_huge_view_is_refused_by_limit() -> None:
    with pytest.raises(LimitExceededError):
        read(with_pickle(rebuild((2**41,), (0,))))
    with pytest.raises(LimitExceededError):
        read(with_pickle(rebuild((10**6,), (0,))), limits=Limits(max_tensor_elements=1000))


def test_stride_zero_small_view_is_fine() -> None:
    out = read(with_pickle(rebuild((3, 4), (0, 1)))).value
    assert out.shape == (3, 4) and out.stride() == (0, 1)


def test_trailing_bytes_after_data_pkl_are_refused() -> None:
    with pytest.raises(FormatError):
        read(with_pickle(rebuild((2,), (1,)) + b"junk"))


def test_legacy_storage_count_mismatch_and_trailing_bytes() -> None:
    data = bytearray(torch_bytes({"w": torch.arange(4.0)}, _use_new_zipfile_serialization=False))
    tail = len(data) - 16 - 8
    assert struct.unpack_from("<q", data, tail)[0] == 4
    bad = bytearray(data)
    struct.pack_into("<q", bad, tail, 3)
    with pytest.raises(FormatError) as info:
        read(bytes(bad))
    assert info.value.rule == "torch.storage_size"
    with pytest.raises(FormatError):
        read(bytes(data) + b"x")
    with pytest.raises(FormatError):
        read(bytes(data[:-1]))


@pytest.mark.parametrize("protocol", [2, 4])
def test_analyze_lists_globals_and_tensors_without_materialising(protocol: int) -> None:
    data = torch_bytes({"w": torch.ones(2, 3), "n": torch.Size([2])}, pickle_protocol=protocol)
    a = analyze(data)
    assert a.format == "torch_zip"
    assert a.globals == (
        "collections.OrderedDict",
        "torch.FloatStorage",
        "torch.Size",
        "torch._utils._rebuild_tensor_v2",
    )
    (row,) = a.tensors
    assert (row.name, row.dtype, row.shape, row.nbytes) == ("w", "float32", (2, 3), 24)
    assert row.offset is not None
    assert data[row.offset : row.offset + 24] == torch.ones(2, 3).numpy().tobytes()


def test_crc_computed_while_reading_still_refuses_a_flipped_byte(tmp_path: Any) -> None:
    """Files over the pipelining threshold get their CRCs during the read; a bad byte in a
    storage must still be refused, and a good file must load with no second CRC pass needed."""
    import safeload

    tensors = {f"w{i}": torch.full((1024, 1024), float(i)) for i in range(6)}  # ~24 MiB
    path = tmp_path / "big.pt"
    torch.save(tensors, path)
    out = safeload.load(path)
    assert all(torch.equal(out[k], tensors[k]) for k in tensors)
    data = bytearray(path.read_bytes())
    info = safeload.inspect(path)
    row = next(t for t in info.tensors if t.name == "w3")
    assert row.offset is not None
    data[row.offset + 12345] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(FormatError) as err:
        safeload.load(path)
    assert err.value.rule == "zip.crc"


def _seed_files() -> dict[str, bytes]:
    import gzip
    import pickle

    from safetensors.torch import save as st_save

    t = torch.randn(3, 4)
    npy, npz = io.BytesIO(), io.BytesIO()
    np.save(npy, np.arange(6.0))
    np.savez_compressed(npz, a=np.arange(6.0))
    return {
        "zip": torch_bytes({"a": t, "b": t[1:], "h": torch.ones(2).half()}),
        "legacy": torch_bytes({"a": t, "b": t[1:]}, _use_new_zipfile_serialization=False),
        "safetensors": st_save({"a": t, "b": torch.zeros(2)}),
        "npy": npy.getvalue(),
        "npz": npz.getvalue(),
        "pickle": pickle.dumps({"a": [1, 2.5, "x"], "b": (None, True)}, protocol=2),
        "gzip": gzip.compress(pickle.dumps([1, 2, 3], protocol=0)),
    }


@pytest.mark.parametrize("kind", sorted(_seed_files()))
def test_mutated_files_fail_closed(kind: str) -> None:
    """Random byte edits of real files: every outcome is a value or a SafeloadError, never a
    bare exception (fixed seed, so a failure reproduces)."""
    import random

    from safeload import SafeloadError

    seed = _seed_files()[kind]
    rng = random.Random(kind)
    for _ in range(150):
        d = bytearray(seed)
        for _ in range(rng.choice([1, 2, 4])):
            pos = rng.randrange(len(d) or 1)
            roll = rng.random()
            if roll < 0.6:
                d[pos : pos + 1] = bytes([rng.randrange(256)])
            elif roll < 0.8:
                del d[pos : pos + rng.randrange(1, 16)]
            else:
                d[pos:pos] = rng.randbytes(rng.randrange(1, 8))
        for run in (lambda b: read(b, framework="numpy"), analyze):
            with contextlib.suppress(SafeloadError):
                run(bytes(d))


def test_quantized_spec_materialises_per_tensor_affine() -> None:
    """The contract with the pickle reader for ``_rebuild_qtensor``: a qint8 TensorSpec whose
    ``extra["quantizer"]`` is ``("per_tensor_affine", scale, zero_point)``."""
    import warnings

    from safeload.formats._materialize import Materializer
    from safeload.formats._types import StorageRef, TensorSpec

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = torch.quantize_per_tensor(torch.randn(8), 0.1, 3, torch.qint8)
    raw = want.int_repr().numpy().tobytes()
    ref = StorageRef("0", "qint8", 8)
    spec = TensorSpec(
        ref, 0, (8,), (1,), "qint8", extra={"quantizer": ("per_tensor_affine", 0.1, 3)}
    )
    got = Materializer(
        {"0": memoryview(bytearray(raw))}, framework="torch", limits=Limits()
    ).tensor(spec)
    assert got.is_quantized and got.q_scale() == 0.1 and got.q_zero_point() == 3
    assert torch.equal(got.int_repr(), want.int_repr())
    with pytest.raises(UnsupportedFormatError):  # bare integers would be different numbers
        Materializer({"0": memoryview(bytearray(raw))}, framework="numpy", limits=Limits()).tensor(
            spec
        )
    bare = TensorSpec(ref, 0, (8,), (1,), "qint8")
    with pytest.raises(FormatError):
        Materializer({"0": memoryview(bytearray(raw))}, framework="torch", limits=Limits()).tensor(
            bare
        )


# -- quantized tensors and checkpoints embedded in plain pickles ----------------------------------
def _quantized(qdtype: Any, zero_point: int) -> Any:
    import warnings

    with warnings.catch_warnings():  # torch deprecates quantized tensor creation
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        return torch.quantize_per_tensor(torch.randn(3, 4), 0.25, zero_point, qdtype)


@pytest.mark.parametrize("legacy", [False, True])
@pytest.mark.parametrize(("qname", "zero_point"), [("qint8", -3), ("quint8", 7), ("qint32", 11)])
def test_per_tensor_quantized_tensors_load_exactly(
    legacy: bool, qname: str, zero_point: int
) -> None:
    want = _quantized(getattr(torch, qname), zero_point)
    data = torch_bytes({"q": want, "view": want[1:]}, _use_new_zipfile_serialization=not legacy)
    got = read(data).value
    for key in ("q", "view"):
        ref = want if key == "q" else want[1:]
        assert got[key].dtype == ref.dtype and got[key].is_quantized
        assert (got[key].q_scale(), got[key].q_zero_point()) == (0.25, zero_point)
        assert torch.equal(got[key].int_repr(), ref.int_repr())
    assert got["q"].untyped_storage().data_ptr() == got["view"].untyped_storage().data_ptr()
    with pytest.raises(UnsupportedFormatError) as info:  # NumPy has no quantized dtype
        read(data, framework="numpy")
    assert info.value.rule == "tensor.quantized"


def test_per_channel_quantized_tensor_is_refused_by_name() -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_channel(
            torch.randn(2, 3), torch.tensor([0.1, 0.2]), torch.tensor([0, 1]), 0, torch.qint8
        )
    with pytest.raises(UnsupportedFormatError) as info:
        read(torch_bytes({"q": q}))
    assert info.value.rule == "pickle.quantizer"
    assert "per_channel_affine" in str(info.value)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_quantizer_scale_must_be_a_finite_float(bad: float) -> None:
    data = torch_bytes({"q": _quantized(torch.qint8, 0)}, _use_new_zipfile_serialization=False)
    scale = b"G" + struct.pack(">d", 0.25)  # BINFLOAT 0.25 inside the (inline) legacy pickle
    assert data.count(scale) == 1
    with pytest.raises(FormatError) as info:
        read(data.replace(scale, b"G" + struct.pack(">d", bad)))
    assert info.value.rule == "pickle.reconstruct"
    assert "finite" in str(info.value)


def test_quantized_storage_is_only_usable_by_rebuild_qtensor() -> None:
    data = torch_bytes({"q": _quantized(torch.qint8, 0)}, _use_new_zipfile_serialization=False)
    rebuild = b"ctorch._utils\n_rebuild_qtensor\n"
    assert data.count(rebuild) == 1
    with pytest.raises(FormatError):  # _rebuild_tensor_v2 over a QInt8Storage: 7 args, no dtype
        read(data.replace(rebuild, b"ctorch._utils\n_rebuild_tensor_v2\n"))


def test_plain_pickle_of_tensors_reads_embedded_storages(assert_same: Any) -> None:
    import pickle

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    want = {
        "w": base,
        "row": base[1],
        "half": torch.ones(5, dtype=torch.float16),
        "ids": torch.arange(7),
        "bf16": torch.full((2, 2), 1.5, dtype=torch.bfloat16),
    }
    for protocol in (2, 4, 5):
        data = pickle.dumps(want, protocol=protocol)  # only dumped; never unpickled here
        got = read(data)
        assert_same(got.value, want)
        analysis = analyze(data)
        assert "torch.storage._load_from_bytes" in analysis.globals
        assert all("/" in row.storage for row in analysis.tensors)  # namespaced keys


class _Embed:
    """Pickles as ``torch.storage._load_from_bytes(blob)`` (dumped only, never loaded)."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return (torch.storage._load_from_bytes, (self.blob,))


def _legacy_around(main_pickle: bytes) -> bytes:
    """A legacy checkpoint whose main object is ``main_pickle`` and which holds no storages."""
    import pickle

    head = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
    return b"".join(pickle.dumps(x, protocol=2) for x in head) + main_pickle + pickle.dumps([])


def test_embedded_checkpoints_nest_one_level_only() -> None:
    import pickle

    from safeload import UnsafeModelError

    inner = _legacy_around(pickle.dumps(torch.arange(2.0), protocol=2))
    with pytest.raises(UnsafeModelError) as info:
        read(pickle.dumps({"t": _Embed(inner)}, protocol=2))
    assert info.value.rule == "pickle.nested"


def test_embedded_checkpoint_must_be_one_storage() -> None:
    import pickle

    not_a_storage = torch_bytes({"a": torch.ones(2)}, _use_new_zipfile_serialization=False)
    with pytest.raises(FormatError) as info:
        read(pickle.dumps({"t": _Embed(not_a_storage)}, protocol=2))
    assert info.value.rule == "pickle.nested"
    with pytest.raises(FormatError):  # a zip checkpoint is not what Storage.__reduce__ writes
        read(pickle.dumps({"t": _Embed(torch_bytes(torch.ones(2)))}, protocol=2))


def test_embedded_checkpoint_outside_a_reader_is_refused() -> None:
    import pickle

    from safeload import UnsafeModelError
    from safeload.formats._pickle_vm import run_pickle

    with pytest.raises(UnsafeModelError) as info:
        run_pickle(pickle.dumps(torch.arange(2.0), protocol=2), limits=Limits())
    assert info.value.rule == "pickle.nested"


def test_embedded_checkpoint_obeys_the_same_limits() -> None:
    import pickle

    data = pickle.dumps({"t": torch.arange(4.0)}, protocol=2)
    refused_in: set[str] = set()
    for budget in range(1, 400, 3):  # the budget at which reading stops moves through the file
        try:
            assert read(data, limits=Limits(max_pickle_opcodes=budget)).value["t"].tolist() == [
                0,
                1,
                2,
                3,
            ]
            break
        except LimitExceededError as exc:
            refused_in.add(exc.path or "")
    else:
        pytest.fail("never read within 400 opcodes")
    assert any("<bytes0>" in where for where in refused_in), refused_in  # nested pickles count


def test_tensor_state_cannot_smuggle_quantizer_parameters() -> None:
    from safeload import UnsafeModelError

    t = torch.arange(4.0)
    t.quantizer = ("per_tensor_affine", float("nan"), 0)  # saved as _rebuild_from_type_v2 state
    with pytest.raises(UnsafeModelError) as info:
        read(torch_bytes({"t": t}))
    assert info.value.rule == "pickle.build"


def test_chunked_crc_matches_zlib_for_every_member_whatever_the_chunking() -> None:
    """The reader threads' per-chunk CRCs, combined, equal one CRC over each member's range,
    including members that span many chunks, empty members and overlapping (hostile) ranges."""
    import random
    import zlib

    from safeload.formats._zip import ChunkedCrc

    rng = random.Random(7)
    buf = memoryview(bytes(rng.getrandbits(8) for _ in range(200_000)))
    ranges = [(0, 0), (10, 1), (100, 150_000), (5_000, 70_000), (150_100, 49_900), (199_999, 1)]
    for chunk in (1, 7, 4096, 65_536, 200_000):
        crc = ChunkedCrc(ranges)
        starts = list(range(0, len(buf), chunk))
        random.Random(chunk).shuffle(starts)  # threads finish in any order
        for start in starts:
            crc.feed(buf, start, min(len(buf), start + chunk))
        got = crc.result()
        assert got == {(s, n): zlib.crc32(buf[s : s + n]) for s, n in ranges}, chunk


def test_chunked_crc_leaves_a_member_with_a_gap_to_the_archive() -> None:
    import zlib

    from safeload.formats._zip import ChunkedCrc

    buf = memoryview(bytes(range(256)) * 64)
    crc = ChunkedCrc([(0, 1000)])
    crc.feed(buf, 0, 400)
    crc.feed(buf, 600, 1000)  # bytes 400..600 never folded
    assert crc.result() == {}
    crc.feed(buf, 400, 600)
    assert crc.result() == {(0, 1000): zlib.crc32(buf[:1000])}

"""Red-team findings in the container readers and the pickle VM, each with the fix it forced.

Every payload is built byte by byte (``_pickle_asm`` for pickles, hand-written headers for
safetensors and ``.npy``); nothing is ever unpickled. Each test states the weakness it pins.
"""

from __future__ import annotations

import contextlib
import json
import struct
import tracemalloc

import pytest
from _pickle_asm import asm

from safeload import FormatError, LimitExceededError, Limits, SafeloadError
from safeload.formats import Format, analyze, detect, read
from safeload.formats._detect import _is_pickle
from safeload.formats._pickle_vm import run_pickle

LIMITS = Limits()


def _st(header: dict[str, object] | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _npy(header: str, data: bytes = b"") -> bytes:
    h = header.encode()
    h += b" " * (64 - (10 + len(h) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + data


_ONE = {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}


# --- ints the rest of the program cannot print ------------------------------------------------
@pytest.mark.parametrize("fn", [analyze, read])
def test_binary_long_past_printable_digits_is_refused_in_the_vm(fn: object) -> None:
    """A LONG4 int of 10**5000 sailed through the VM; ``analyze`` then raised a bare
    ``ValueError`` formatting it into a tensor name (int_max_str_digits). Refused at the
    opcode now, so nothing downstream ever holds an unprintable int."""
    data = asm([("PROTO", 2), "EMPTY_DICT", ("LONG4", 10**5000), "NONE", "SETITEM", "STOP"])
    with pytest.raises(FormatError, match="integer"):
        fn(data)  # type: ignore[operator]


def test_largest_printable_binary_long_still_reads() -> None:
    v = -(10**4290)
    value, _ = run_pickle(asm([("PROTO", 2), ("LONG4", v), "STOP"]), limits=LIMITS)
    assert value == v
    assert len(str(value)) <= 4300


def test_decimal_long_is_capped_whatever_the_interpreter_allows() -> None:
    """``sys.set_int_max_str_digits(0)`` in the host must not turn a 4 GiB ``L`` line into a
    quadratic parse: the VM has its own cap."""
    import sys

    old = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)
    try:
        with pytest.raises(FormatError, match="too long"):
            run_pickle(b"L" + b"9" * 5000 + b"L\n.", limits=LIMITS)
    finally:
        sys.set_int_max_str_digits(old)


# --- safetensors header -----------------------------------------------------------------------
@pytest.mark.parametrize("meta", [[], False, "", 0])
def test_safetensors_metadata_must_be_an_object_or_null(meta: object) -> None:
    """``header.pop("__metadata__") or {}`` turned ``[]``/``false``/``""``/``0`` into "no
    metadata": a file the safetensors library refuses was accepted (a parser differential)."""
    with pytest.raises(FormatError, match="__metadata__"):
        analyze(_st({"__metadata__": meta, "a": _ONE}, b"\0" * 4))


def test_safetensors_null_metadata_is_still_no_metadata() -> None:
    assert analyze(_st({"__metadata__": None, "a": _ONE}, b"\0" * 4)).tensors[0].name == "a"


@pytest.mark.parametrize("dims", [[0, 10**4000], [0, 2**64 + 1], [0, 2**40, 2**40]])
def test_safetensors_empty_tensor_with_unbuildable_dims_is_refused_by_analyze(
    dims: list[int],
) -> None:
    """Zero elements passed every check, so ``analyze``/``scan`` said clean while ``read``
    failed building strides no framework can hold: the scan must refuse what load refuses."""
    raw = b'{"a": {"dtype": "F32", "shape": %s, "data_offsets": [0, 0]}}' % (
        json.dumps(dims).encode()
    )
    with pytest.raises(LimitExceededError):
        analyze(_st(raw))
    with pytest.raises(LimitExceededError):
        read(_st(raw), framework="numpy")


def test_safetensors_ordinary_empty_tensor_still_reads() -> None:
    out = read(_st({"a": {"dtype": "F32", "shape": [0, 3], "data_offsets": [0, 0]}}))
    assert tuple(out.value["a"].shape) == (0, 3)


# --- .npy header ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("shape", "data"),
    [("(-1, -4)", b"\0" * 16), ("(True,)", b"\0" * 4), (f"(0, {10**30})", b"")],
)
def test_npy_shapes_numpy_cannot_build_are_refused_by_analyze(shape: str, data: bytes) -> None:
    """numpy's header reader takes any int: ``(-1, -4)`` "holds" 4 elements, so the size
    check passed and ``analyze`` said clean; only ``np.ndarray`` later refused it."""
    blob = _npy(f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}", data)
    with pytest.raises(SafeloadError, match="shape"):
        analyze(blob)


def test_npy_empty_fortran_array_still_reads() -> None:
    blob = _npy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 0), }")
    assert read(blob).value.shape == (2, 3, 0)


# --- tensor names built from attacker keys ----------------------------------------------------
def test_tensor_names_cannot_amplify_a_shared_key_into_gigabytes() -> None:
    """One 100 kB string used as the key at 200 nesting levels (memo references cost 2 bytes)
    makes every dotted name 20 MB; ``iter_specs`` materialises one per child, so a 1 MB file
    costs gigabytes. Fix: cap each name (e.g. 256 chars with a hash suffix) or build it only
    for tensors, from a parent pointer, when yielded."""
    ops: list[object] = [("PROTO", 4), ("BINUNICODE8", "k" * 100_000), ("BINPUT", 0), "POP"]
    ops += ["EMPTY_DICT", "MARK"] + [x for i in range(8) for x in (("BININT1", i), "NONE")]
    ops += ["SETITEMS"]
    for _ in range(200):
        ops += [("BINPUT", 1), "POP", "EMPTY_DICT", ("BINGET", 0), ("BINGET", 1), "SETITEM"]
    data = asm([*ops, "STOP"])
    tracemalloc.start()
    try:
        with contextlib.suppress(SafeloadError):  # refusing it is a fine fix too
            analyze(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * len(data), f"{peak} bytes traced for a {len(data)}-byte file"


# --- embedded checkpoints share the outer pickle's budget -------------------------------------
def _embedded_bomb(calls: int) -> bytes:
    """A plain pickle calling ``torch.storage._load_from_bytes`` ``calls`` times on ONE memoised
    legacy checkpoint whose magic-number pickle first hashes a 10**6-element tuple key."""
    import io
    import pickletools

    torch = pytest.importorskip("torch")
    from safeload.formats._torch_legacy import LEGACY_MAGIC

    buf = io.BytesIO()
    torch.save(torch.zeros(2).untyped_storage(), buf, _use_new_zipfile_serialization=False)
    real = buf.getvalue()
    end = next(p + 1 for op, _, p in pickletools.genops(io.BytesIO(real)) if op.name == "STOP")
    ops: list[object] = [("PROTO", 2), ("BININT1", 1)]
    for level in range(2):
        ops += [("BINPUT", level), "POP", "MARK", *[("BINGET", level)] * 1000, "TUPLE"]
    ops += [("BINPUT", 9), "POP", "EMPTY_DICT", ("BINGET", 9), "NONE", "SETITEM", "POP"]
    inner = asm([*ops, ("LONG1", LEGACY_MAGIC), "STOP"]) + real[end:]
    outer: list[object] = [("PROTO", 2), ("BINBYTES", inner), ("BINPUT", 0), "POP", "EMPTY_LIST"]
    outer += [("GLOBAL", ("torch.storage", "_load_from_bytes")), ("BINPUT", 1), "POP"]
    outer += [("BINGET", 1), ("BINGET", 0), "TUPLE1", "REDUCE", "APPEND"] * calls
    return asm([*outer, "STOP"])


def test_embedded_checkpoints_spend_the_outer_budget_not_a_fresh_one_each() -> None:
    """Each ``_load_from_bytes`` ran its pickles on a fresh budget, so 5 opcodes of the outer
    pickle (BINGET, BINGET, TUPLE1, REDUCE, APPEND) bought a whole new ``max_pickle_opcodes``:
    a 4 kB file re-reading one memoised blob costed ~0.7 s per call, without bound. Nested
    runs now spend from the running pickle's budget."""
    limits = Limits(max_pickle_opcodes=2_500_000)
    analyze(_embedded_bomb(2), limits=limits)  # ~2 * 10**6 hashing steps: fits
    with pytest.raises(LimitExceededError, match="opcodes"):
        analyze(_embedded_bomb(3), limits=limits)


# --- state stored as attributes, mutated through the memo after it was checked ----------------
_GLOBAL_INTO_M1 = [
    ("BINGET", 1),
    ("BINUNICODE", "x"),
    ("GLOBAL", ("torch._utils", "_rebuild_tensor_v2")),
    "SETITEM",
    "POP",
]


def test_global_smuggled_into_ordereddict_metadata_after_build_is_refused() -> None:
    """BUILD checks ``_metadata`` is plain data, but the dict stays in the memo: SETITEM after
    BUILD put an allowlisted callable into ``state_dict._metadata``, where the end-of-stream
    check (which walked container items only) never looked."""
    ops = [
        ("PROTO", 2),
        ("GLOBAL", ("collections", "OrderedDict")),
        "EMPTY_TUPLE",
        "REDUCE",
        "EMPTY_DICT",
        ("BINPUT", 1),
        "POP",
        "EMPTY_DICT",
        ("BINUNICODE", "_metadata"),
        ("BINGET", 1),
        "SETITEM",
        "BUILD",
        *_GLOBAL_INTO_M1,
        "STOP",
    ]
    with pytest.raises(SafeloadError, match="returned as a value"):
        read(asm(ops), framework="numpy")


def test_global_smuggled_into_tensor_state_after_build_is_refused() -> None:
    from safeload.formats._types import StorageRef

    ops = [
        ("PROTO", 2),
        ("GLOBAL", ("torch._utils", "_rebuild_tensor_v2")),
        "MARK",
        ("BINUNICODE", "0"),
        "BINPERSID",
        ("BININT1", 0),
        ("BININT1", 4),
        "TUPLE1",
        ("BININT1", 1),
        "TUPLE1",
        "NEWFALSE",
        "NONE",
        "TUPLE",
        "REDUCE",
        "EMPTY_DICT",
        ("BINPUT", 1),
        "POP",
        "EMPTY_DICT",
        ("BINUNICODE", "meta"),
        ("BINGET", 1),
        "SETITEM",
        "BUILD",
        *_GLOBAL_INTO_M1,
        "STOP",
    ]

    def storage(pid: object) -> object:
        return StorageRef("0", "float32", 4)

    with pytest.raises(SafeloadError, match="returned as a value"):
        run_pickle(asm(ops), limits=LIMITS, persistent_load=storage, safe_globals={})


def test_plain_tensor_state_and_metadata_still_read() -> None:
    import collections
    import io

    torch = pytest.importorskip("torch")
    sd = collections.OrderedDict(w=torch.ones(2))
    sd._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    buf = io.BytesIO()
    torch.save(sd, buf)
    out = read(buf.getvalue())
    assert out.value._metadata == {"": {"version": 1}}


# --- compression wrappers ---------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["gzip", "bz2", "lzma"])
def test_many_concatenated_empty_members_are_refused(kind: str) -> None:
    """Each member's tail was re-copied (``unused_data + bytes(rest)``), so N tiny members cost
    O(N * file size): 200k empty gzip members (4 MB) took ~15 s, 40 MB would take hours. Now
    offsets, input fed from 1 KiB up, and at most one member per 4 KiB on average."""
    import bz2
    import gzip
    import lzma

    from safeload.formats._compression import decompress

    empty = {
        "gzip": gzip.compress(b"", mtime=0),
        "bz2": bz2.compress(b""),
        "lzma": lzma.compress(b""),
    }
    with pytest.raises(FormatError, match="too many concatenated"):
        decompress(empty[kind] * 20_000, kind, limits=LIMITS)


@pytest.mark.parametrize("kind", ["gzip", "bz2", "lzma"])
def test_ordinary_multi_member_and_large_streams_still_decompress(kind: str) -> None:
    import bz2
    import gzip
    import lzma

    from safeload.formats._compression import decompress

    comp = {"gzip": gzip.compress, "bz2": bz2.compress, "lzma": lzma.compress}[kind]
    big = bytes(range(256)) * 20_000
    assert bytes(decompress(comp(big) + comp(b"tail"), kind, limits=LIMITS)) == big + b"tail"
    assert bytes(decompress(comp(b"a") * 10, kind, limits=LIMITS)) == b"a" * 10


# --- the report pass after the VM -------------------------------------------------------------
@pytest.mark.parametrize("data", [b"\x80\x02K\x05p00\n.", b"(lp01\ng01\n0."])
def test_memo_index_spelled_like_a_protocol0_bool_is_not_a_crash(data: bytes) -> None:
    """``p00`` is memo slot 0 to CPython and to the VM, but ``pickletools`` reads a decimal
    argument of ``00``/``01`` as a bool, so the report pass's ``int(str(False))`` raised a bare
    ``ValueError`` out of ``analyze`` (the scanner's and ``inspect``'s entry) on a file the VM
    had accepted. Fix: ``int(arg)`` (bools are ints), and run ``_globals_in`` inside the
    guard that turns reader slips into ``FormatError``."""
    assert analyze(data).globals == ()


# --- scanner/loader desync: a pickle that is also a tar -----------------------------------------
def _tar_pickle_polyglot(members: dict[str, bytes], benign: object) -> bytes:
    """An old-style (v7, no "ustar" magic) tar whose first header block is also the start of
    a pickle: PROTO 2, BINBYTES swallowing the whole archive, POP, then a benign value."""
    import io
    import pickle
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in {"pad": b"", **members}.items():  # "pad" is renamed by the pickle
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    t = bytearray(buf.getvalue())
    t[0:7] = b"\x80\x02B" + struct.pack("<I", len(t) - 7)
    t[257:265] = bytes(8)  # no magic: tarfile reads it as a v7 header
    t[148:156] = b"%06o\0 " % (sum(t[:148]) + 8 * 32 + sum(t[156:512]))
    return bytes(t) + b"0" + pickle.dumps(benign, protocol=2)[2:]


def test_pickle_that_tarfile_also_accepts_is_judged_as_the_tar() -> None:
    """Detection looked for tar only by the "ustar" magic, so this file was a clean pickle to
    ``analyze``/``scan``. ``torch.load`` tries every non-zip file as a legacy *tar* checkpoint
    first (``tarfile.open``, which accepts magic-less v7 headers) and would unpickle its
    ``pickle`` member with ``weights_only=False``: the scan vouched for bytes torch reads
    differently. Detection now asks ``tarfile``'s own header check, before any other format."""
    import io
    import tarfile

    payload = {"sys_info": b"x", "pickle": b"cos\nsystem\n(S'true'\ntR.", "storages": b"x"}
    data = _tar_pickle_polyglot(payload, {"w": [1.0]})
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:  # what torch.load would see
        assert {"sys_info", "pickle", "storages"} <= set(tar.getnames())
    assert detect(data).format in (Format.TORCH_TAR, Format.UNKNOWN)
    with pytest.raises(SafeloadError):
        analyze(data)


def test_real_tar_with_ustar_magic_is_still_a_torch_tar() -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("sys_info", "pickle", "storages", "tensors"):
            info = tarfile.TarInfo(name)
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    assert detect(buf.getvalue()).format is Format.TORCH_TAR


def test_npy_header_length_is_capped_before_the_header_is_copied() -> None:
    """A 2.0 header length is a u32: the header was copied (up to the whole file) before
    numpy's own 10 000-byte cap refused it. Refused from the length alone now."""
    blob = b"\x93NUMPY\x02\x00" + struct.pack("<I", 1 << 20) + b" " * (1 << 20)
    with pytest.raises(LimitExceededError, match="header"):
        analyze(blob)


# --- protocol 0 detection follows CPython, not pickletools --------------------------------------
_GADGET = b"cos\nsystem\n(S'echo pwned'\ntR."  # never unpickled: only detected and refused


@pytest.mark.parametrize("opening", [b"I0x1\n0", b"I010\n0", b"I1_000\n0", b"L0x10L\n0"])
def test_protocol0_pickle_opening_with_a_base0_int_is_still_a_pickle(opening: bytes) -> None:
    """``_pickle.c`` reads INT with ``strtol(s, 0)`` and LONG with base 0, so ``I0x1`` is a
    valid opening; ``pickletools`` (base 10) failed on it, detection said "not a pickle", and
    the scanner skipped ``notes.txt`` holding this gadget as a text file."""
    assert detect(opening + _GADGET).format is Format.PICKLE
    with pytest.raises(SafeloadError):
        analyze(opening + _GADGET)


def test_protocol0_gadget_named_like_text_is_not_skipped_by_scan(tmp_path: object) -> None:
    from pathlib import Path

    from safeload.integrations._scan import scan

    folder = Path(str(tmp_path))
    (folder / "notes.txt").write_bytes(b"I0x1\n0" + _GADGET)
    report = scan(folder)
    (result,) = report.results
    assert result.verdict == "unsafe"


@pytest.mark.parametrize(
    "text",
    [
        b"Llama 2 Community License Agreement\n" * 200,  # 7 kB, opens with 'L' (LONG)
        b"The model was trained on... " * 300,  # opens with 'T' (BINSTRING)
        b"Index of /files\n" * 300,  # opens with 'I' (INT)
    ],
)
def test_long_text_files_opening_like_an_opcode_are_not_pickles(text: bytes) -> None:
    """Any decode error in the first 4 kB counted as "ran off the window" for larger files, so a
    7 kB LICENSE starting with "Llama" was a malformed pickle, reported unsafe by scan."""
    assert not _is_pickle(memoryview(text))


@pytest.mark.parametrize("protocol", [0, 1])
def test_real_protocol0_and_1_pickles_are_still_detected(protocol: int) -> None:
    import pickle

    for value in ({"a": [1, 2.5, "x", None, True, (1, 2)], "b": b"xx"}, [1] * 5000, "x" * 9000):
        assert _is_pickle(memoryview(pickle.dumps(value, protocol=protocol)))


def test_global_used_as_a_dict_key_is_refused() -> None:
    """The end-of-stream walk visited dict *values* only: ``{<allowlisted callable>: 1}``
    handed safeload's reconstruction object to the caller as a key."""
    ops = [
        ("PROTO", 2),
        "EMPTY_DICT",
        ("GLOBAL", ("torch._utils", "_rebuild_tensor_v2")),
        ("BININT1", 1),
        "SETITEM",
        "STOP",
    ]
    with pytest.raises(SafeloadError, match="returned as a value"):
        read(asm(ops), framework="numpy")

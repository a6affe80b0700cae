"""The allowlist-only pickle VM on real pickles, every refusal rule and every limit.

Real inputs come from ``pickle.dumps`` / ``torch.save`` of plain values and are compared with
the *original* value; nothing here ever unpickles with the stock unpickler. Hostile inputs are
built from opcodes with ``_pickle_asm``.
"""

from __future__ import annotations

import collections
import io
import pickle
import threading
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from _pickle_asm import asm, call, glob, sglobal, ustr

from safeload import (
    FormatError,
    LimitExceededError,
    Limits,
    SafeloadError,
    UnsafeModelError,
    UsageError,
    add_safe_globals,
    clear_safe_globals,
    get_safe_globals,
    safe_globals,
)
from safeload.formats._allowlist import ALLOWLIST
from safeload.formats._pickle_vm import Opaque, run_pickle
from safeload.formats._types import StorageRef, StorageType, TensorSpec, TorchDevice, TorchDType

LIMITS = Limits()


def run(data: bytes, **kw: Any) -> Any:
    kw.setdefault("limits", LIMITS)
    return run_pickle(data, **kw)[0]


def storage_pl(pid: object) -> StorageRef:
    """What the torch zip reader does with a storage persistent id (kept minimal here)."""
    assert type(pid) is tuple and pid[0] == "storage" and type(pid[1]) is StorageType
    return StorageRef(key=pid[2], dtype=pid[1].dtype, numel=pid[4], location=pid[3])


# --- plain values -------------------------------------------------------------------------

_shared = [1, 2]
PLAIN: list[object] = [
    None,
    True,
    False,
    0,
    1,
    -1,
    255,
    256,
    65535,
    65536,
    -(2**31),
    2**31,
    2**64,
    -(2**200),
    0.0,
    -1.5,
    1e300,
    float("inf"),
    "",
    "ascii",
    "h\u00e9llo \u2603 \U0001f600",
    "\n\\'\"",
    b"",
    b"\x00\xff" * 200,
    bytearray(b"ab"),
    bytearray(),
    [],
    [1, [2, [3]]],
    (),
    (1,),
    (1, 2),
    (1, 2, 3),
    (1, 2, 3, 4),
    {},
    {"a": {1: 2}, 3: [None]},
    {1, 2, "x"},
    frozenset({3, (4,)}),
    frozenset(),
    1 + 2j,
    slice(1, 10, 2),
    collections.OrderedDict([("b", 1), ("a", 2)]),
    "x" * 1000,
    list(range(2500)),
    {str(i): i for i in range(1500)},
    [_shared, _shared],
]


@pytest.mark.parametrize("protocol", range(6))
@pytest.mark.parametrize("value", PLAIN, ids=lambda v: type(v).__name__)
def test_plain_values_round_trip(protocol: int, value: object) -> None:
    data = pickle.dumps(value, protocol=protocol)
    got, end = run_pickle(data, limits=LIMITS)
    assert end == len(data)
    assert type(got) is type(value)
    if isinstance(value, float) and value != value:
        assert got != got
    else:
        assert got == value


@pytest.mark.parametrize("protocol", range(6))
def test_memo_keeps_sharing_and_cycles(protocol: int) -> None:
    inner = [1]
    cyc: list[object] = []
    cyc.append(cyc)
    got = run(pickle.dumps({"a": inner, "b": inner, "c": cyc}, protocol=protocol))
    assert got["a"] is got["b"]
    assert got["c"][0] is got["c"]


def test_returns_offset_after_stop_and_starts_anywhere() -> None:
    one, two = pickle.dumps(1, 2), pickle.dumps([2], 4)
    data = b"junk" + one + two
    v1, end1 = run_pickle(data, limits=LIMITS, start=4)
    v2, end2 = run_pickle(data, limits=LIMITS, start=end1)
    assert (v1, end1, v2, end2) == (1, 4 + len(one), [2], len(data))
    with pytest.raises(FormatError) as ei:
        run_pickle(data, limits=LIMITS, start=4, expect_end=True)
    assert ei.value.rule == "pickle.trailing_data" and ei.value.offset == end1


def test_memoryview_input_is_read_in_place() -> None:
    data = pickle.dumps({"k": [1.5, "v"]}, protocol=0)
    assert run(memoryview(bytearray(data))) == {"k": [1.5, "v"]}


def test_python2_strings_follow_the_encoding() -> None:
    data = asm(("SHORT_BINSTRING", b"caf\xe9"), "STOP")
    assert run(data, encoding="latin1") == "caf\xe9"
    assert run(data, encoding="bytes") == b"caf\xe9"
    with pytest.raises(FormatError):
        run(data)  # ascii by default, like pickle
    assert run(asm(("STRING", b"'a\\nb'"), "STOP")) == "a\nb"
    with pytest.raises(UsageError):
        run(data, encoding="rot13")


# --- numpy --------------------------------------------------------------------------------

ARRAYS = [
    np.arange(6, dtype=np.float32).reshape(2, 3),
    np.asfortranarray(np.arange(6, dtype=np.int64).reshape(2, 3)),
    np.array([True, False]),
    np.array(["ab", "c"]),
    np.array([1 + 2j], dtype=np.complex64),
    np.zeros((0, 4), dtype=np.uint16),
    np.arange(3, dtype=">i4"),
]


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("arr", ARRAYS, ids=lambda a: str(a.dtype))
def test_numpy_arrays_become_real_arrays(protocol: int, arr: np.ndarray) -> None:
    got = run(pickle.dumps({"a": arr, "s": arr.dtype.type(0) if arr.size else 0}, protocol))
    assert type(got["a"]) is np.ndarray
    assert got["a"].shape == arr.shape and got["a"].dtype.kind == arr.dtype.kind
    np.testing.assert_array_equal(got["a"], arr)


def test_numpy_object_arrays_are_refused() -> None:
    data = pickle.dumps(np.array([1, "x"], dtype=object), protocol=2)
    with pytest.raises(UnsafeModelError) as ei:
        run(data)
    assert ei.value.rule == "pickle.numpy_dtype"


def _py2_numpy_array() -> bytes:
    """What Python 2's numpy wrote for ``np.array([1, 2, 255], dtype='u1')``: py2 str data."""
    return asm(
        ("PROTO", 2),
        glob("numpy.core.multiarray", "_reconstruct"),
        glob("numpy", "ndarray"),
        ("BININT1", 0),
        "TUPLE1",
        ("SHORT_BINSTRING", b"b"),
        "TUPLE3",
        "REDUCE",
        "MARK",
        ("BININT1", 1),
        ("BININT1", 3),
        "TUPLE1",
        call(glob("numpy", "dtype"), ("SHORT_BINSTRING", b"u1"), "NEWFALSE", "NEWTRUE"),
        "MARK",
        ("BININT1", 3),
        ("SHORT_BINSTRING", b"|"),
        "NONE",
        "NONE",
        "NONE",
        ("BININT", -1),
        ("BININT", -1),
        ("BININT1", 0),
        "TUPLE",
        "BUILD",
        "NEWFALSE",
        ("SHORT_BINSTRING", b"\x01\x02\xff"),
        "TUPLE",
        "BUILD",
        "STOP",
    )


@pytest.mark.parametrize("encoding", ["latin1", "bytes"])
def test_python2_numpy_arrays(encoding: str) -> None:
    got = run(_py2_numpy_array(), encoding=encoding)
    np.testing.assert_array_equal(got, np.array([1, 2, 255], dtype=np.uint8))


def test_numpy_scalar_and_dtype() -> None:
    got = run(pickle.dumps([np.float64(2.5), np.dtype("<u2")], protocol=2))
    assert got[0] == 2.5 and isinstance(got[0], np.floating)
    assert got[1] == np.dtype("<u2")


# --- torch --------------------------------------------------------------------------------


def _torch_pickle(obj: object, legacy: bool = False) -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    if legacy:
        return buf.getvalue()
    with zipfile.ZipFile(io.BytesIO(buf.getvalue())) as zf:
        return zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))


def _check_spec(spec: object, t: Any) -> None:
    assert type(spec) is TensorSpec
    assert spec.shape == tuple(t.shape)
    assert spec.stride == tuple(t.stride())
    assert spec.offset == t.storage_offset()
    assert spec.dtype == str(t.dtype).removeprefix("torch.")


@pytest.mark.torch
def test_torch_state_dict_of_real_modules() -> None:
    torch = pytest.importorskip("torch")
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.LazyLinear(2),
    )
    model(torch.zeros(1, 3, 5, 5))
    sd = model.state_dict()
    got = run(_torch_pickle(sd), persistent_load=storage_pl, expect_end=True)
    assert type(got) is collections.OrderedDict
    assert list(got) == list(sd)
    for k, t in sd.items():
        _check_spec(got[k], t)
    assert got._metadata == sd._metadata


@pytest.mark.torch
def test_torch_optimizer_state_dicts() -> None:
    torch = pytest.importorskip("torch")
    lin = torch.nn.Linear(3, 2)
    for opt in (torch.optim.Adam(lin.parameters()), torch.optim.SGD(lin.parameters(), 0.1, 0.9)):
        lin(torch.ones(2, 3)).sum().backward()
        opt.step()
        sd = opt.state_dict()
        got = run(_torch_pickle(sd), persistent_load=storage_pl)
        assert got["param_groups"] == sd["param_groups"]
        for pid, st in sd["state"].items():
            for k, v in st.items():
                _check_spec(got["state"][pid][k], v)


@pytest.mark.torch
def test_torch_views_dtypes_parameters_and_markers() -> None:
    torch = pytest.importorskip("torch")
    base = torch.arange(24.0).reshape(4, 6)
    tensors = {
        "base": base,
        "t": base.t(),
        "slice": base[1:, ::2],
        "zero": torch.zeros(0, 3),
        "scalar": torch.tensor(3.0),
    }
    for dt in (
        "float16",
        "bfloat16",
        "float64",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "bool",
        "complex64",
        "complex128",
        "float8_e4m3fn",
        "float8_e5m2",
        "uint16",
        "uint32",
        "uint64",
    ):
        tensors[dt] = torch.zeros(3, dtype=getattr(torch, dt))
    obj = {
        **tensors,
        "param": torch.nn.Parameter(torch.ones(2)),
        "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
        "dtype": torch.float16,
        "device": torch.device("cpu"),
        "size": torch.Size([2, 3]),
    }
    got = run(_torch_pickle(obj), persistent_load=storage_pl)
    for k, t in tensors.items():
        _check_spec(got[k], t)
    assert got["base"].storage == got["t"].storage == got["slice"].storage
    assert got["param"].kind == "parameter" and got["param"].requires_grad is True
    assert got["frozen"].requires_grad is False
    assert got["dtype"] == TorchDType("float16")
    assert got["device"] == TorchDevice("cpu")
    assert got["size"] == (2, 3)


@pytest.mark.torch
def test_torch_legacy_format_records() -> None:
    torch = pytest.importorskip("torch")
    data = _torch_pickle({"w": torch.ones(2, 2), "p": torch.nn.Parameter(torch.ones(3))}, True)
    pos, values = 0, []
    for _ in range(3):  # magic number, protocol version, sys info
        v, pos = run_pickle(data, limits=LIMITS, start=pos)
        values.append(v)
    keys: list[str] = []

    def legacy_pl(pid: object) -> StorageRef:
        assert type(pid) is tuple and len(pid) == 6
        keys.append(pid[2])
        return storage_pl(pid[:5])

    value, pos = run_pickle(data, limits=LIMITS, start=pos, persistent_load=legacy_pl)
    assert values[1] == 1001 and values[2]["little_endian"] is True
    assert value["w"].shape == (2, 2) and value["p"].kind == "parameter"
    assert len(keys) == 2


# --- refusals -----------------------------------------------------------------------------


def refused(data: bytes, cls: type[SafeloadError], rule: str, **kw: Any) -> SafeloadError:
    with pytest.raises(cls) as ei:
        run(data, name="model.pkl", **kw)
    err = ei.value
    assert err.rule == rule, err.diagnostics()
    assert err.path == "model.pkl"
    assert err.offset is not None
    return err


def test_unknown_global_names_the_global_and_offset() -> None:
    data = asm(("PROTO", 2), glob("os", "system"), "STOP")
    err = refused(data, UnsafeModelError, "pickle.globals")
    assert err.code == "SL101" and "os.system" in err.message and err.offset == 2


@pytest.mark.parametrize(
    ("ops", "rule"),
    [
        ([("EXT1", 1)], "pickle.opcodes"),
        ([("EXT2", 1)], "pickle.opcodes"),
        ([("EXT4", 1)], "pickle.opcodes"),
        (["NEXT_BUFFER"], "pickle.opcodes"),
        (["NONE", "READONLY_BUFFER"], "pickle.opcodes"),
        ([("RAW", b"\xff")], "pickle.opcodes"),
        ([("BINGET", 3)], "pickle.memo"),
        ([("LONG_BINGET", 7)], "pickle.memo"),
        ([("GET", 1)], "pickle.memo"),
        (["NONE", "BINPERSID"], "pickle.persistent_id"),
        ([("PERSID", "0")], "pickle.persistent_id"),
        (["NONE", "EMPTY_TUPLE", "REDUCE"], "pickle.reduce"),
        (["EMPTY_DICT", "EMPTY_TUPLE", "NEWOBJ"], "pickle.reduce"),
        ([glob("torch", "Tensor"), "EMPTY_TUPLE", "REDUCE"], "pickle.reduce"),
        ([glob("torch._utils", "_rebuild_tensor_v2"), "EMPTY_TUPLE", "NEWOBJ"], "pickle.reduce"),
        (
            [
                "MARK",
                glob("collections", "OrderedDict"),
                "OBJ",
                "EMPTY_DICT",
                "EMPTY_DICT",
                ustr("x"),
                ("BININT1", 1),
                "SETITEM",
                "TUPLE2",
                "EMPTY_DICT",
                "NEWOBJ_EX",
            ],
            "pickle.reduce",
        ),
        (["EMPTY_DICT", "EMPTY_DICT", "BUILD"], "pickle.build"),
        (["EMPTY_LIST", "EMPTY_DICT", "BUILD"], "pickle.build"),
        ([glob("torch", "float32"), "EMPTY_DICT", "BUILD"], "pickle.build"),
        (["EMPTY_DICT", "NONE", "APPEND"], "pickle.opcodes"),
        (["EMPTY_LIST", "NONE", "NONE", "SETITEM"], "pickle.opcodes"),
        (["EMPTY_LIST", "MARK", "NONE", "ADDITEMS"], "pickle.opcodes"),
    ],
)
def test_refusals(ops: list[Any], rule: str) -> None:
    refused(asm(("PROTO", 4), *ops, "STOP"), UnsafeModelError, rule)


def test_build_on_ordered_dict_cannot_shadow_methods() -> None:
    od = [glob("collections", "OrderedDict"), "EMPTY_TUPLE", "REDUCE"]
    ok = asm(*od, "EMPTY_DICT", ustr("_metadata"), "EMPTY_DICT", "SETITEM", "BUILD", "STOP")
    assert run(ok)._metadata == {}
    for attr in ("keys", "__class__", "__setitem__"):
        bad = asm(*od, "EMPTY_DICT", ustr(attr), "NONE", "SETITEM", "BUILD", "STOP")
        refused(bad, UnsafeModelError, "pickle.build")
    twice = asm(*od, "EMPTY_DICT", "BUILD", "EMPTY_DICT", "BUILD", "STOP")
    refused(twice, UnsafeModelError, "pickle.build")


@pytest.mark.parametrize(
    ("ops", "rule"),
    [
        ([], "pickle.truncated"),
        ([("RAW", b"X\x05\x00\x00\x00ab")], "pickle.truncated"),
        ([("RAW", b"\x8e" + (2**62).to_bytes(8, "little"))], "pickle.truncated"),
        ([("RAW", b"Ino-newline")], "pickle.truncated"),
        ([("RAW", b"I12x\n")], "pickle.malformed"),
        ([("RAW", b"F1.5.5\n")], "pickle.malformed"),
        ([("RAW", b"I" + b"9" * 5000 + b"\n")], "pickle.malformed"),
        ([("RAW", b"X\x02\x00\x00\x00\xc3\x28")], "pickle.malformed"),
        ([("STRING", b"'unterminated")], "pickle.malformed"),
        (["STOP"], "pickle.stack"),
        (["NONE", "NONE", "STOP"], "pickle.stack"),
        (["MARK", "NONE", "STOP"], "pickle.stack"),
        (["APPENDS"], "pickle.stack"),
        (["TUPLE3"], "pickle.stack"),
        (["EMPTY_DICT", "MARK", "NONE", "SETITEMS"], "pickle.malformed"),
        ([("PROTO", 9)], "pickle.protocol"),
        ([("FRAME", 1000), "NONE"], "pickle.truncated"),
        (["EMPTY_DICT", "EMPTY_LIST", "NONE", "SETITEM"], "pickle.malformed"),
    ],
)
def test_format_errors(ops: list[Any], rule: str) -> None:
    refused(asm(*ops), FormatError, rule)


def test_every_prefix_of_a_real_pickle_is_a_truncation() -> None:
    data = pickle.dumps({"a": [1, 2.5, "x" * 300], "b": (b"y", None)}, protocol=2)
    for cut in range(len(data)):
        with pytest.raises(FormatError):
            run(data[:cut])


# --- tensor argument checks ---------------------------------------------------------------


def _tensor(
    storage_numel: int,
    offset: int,
    size: tuple[Any, ...],
    stride: tuple[Any, ...],
    hooks: list[Any] | None = None,
    dtype: str = "FloatStorage",
) -> bytes:
    pid = [
        "MARK",
        ustr("storage"),
        glob("torch", dtype),
        ustr("0"),
        ustr("cpu"),
        ("BININT", storage_numel),
        "TUPLE",
        "BINPERSID",
    ]

    def tup(xs: tuple[Any, ...]) -> list[Any]:
        return ["MARK", *[("BININT", x) if isinstance(x, int) else x for x in xs], "TUPLE"]

    hooks_ops = hooks if hooks is not None else ["NONE"]
    return asm(
        call(
            glob("torch._utils", "_rebuild_tensor_v2"),
            pid,
            ("BININT", offset),
            tup(size),
            tup(stride),
            "NEWFALSE",
            hooks_ops,
        ),
        "STOP",
    )


def test_tensor_checks_accept_a_good_view() -> None:
    spec = run(_tensor(12, 2, (2, 5), (5, 1)), persistent_load=storage_pl)
    assert spec.shape == (2, 5) and spec.offset == 2
    empty = run(_tensor(0, 0, (0, 1000), (1000, 1)), persistent_load=storage_pl)
    assert empty.shape == (0, 1000)


@pytest.mark.parametrize(
    ("args", "cls", "rule"),
    [
        ((12, 3, (2, 5), (5, 1)), FormatError, "pickle.tensor_bounds"),
        ((12, 0, (13,), (1,)), FormatError, "pickle.tensor_bounds"),
        ((4, 0, (2**21, 2**20), (0, 0)), LimitExceededError, "limits.max_tensor_elements"),
        ((12, 0, (2, 3), (3,)), FormatError, "pickle.reconstruct"),
        ((12, 0, (-1,), (1,)), FormatError, "pickle.reconstruct"),
        ((12, 0, (2,), ("NONE",)), FormatError, "pickle.reconstruct"),
        ((12, -1, (2,), (1,)), FormatError, "pickle.reconstruct"),
        ((12, 0, (1,) * 70, (1,) * 70), LimitExceededError, "limits.max_tensor_dims"),
    ],
)
def test_tensor_checks_refuse_bad_views(args: tuple[Any, ...], cls: type, rule: str) -> None:
    with pytest.raises(cls) as ei:
        run(_tensor(*args), persistent_load=storage_pl)
    assert ei.value.rule == rule


def _tensor_v3(storage_bytes: int, offset: int, n: int, dtype: str) -> bytes:
    pid = [
        "MARK",
        ustr("storage"),
        glob("torch.storage", "UntypedStorage"),
        ustr("0"),
        ustr("cpu"),
        ("BININT", storage_bytes),
        "TUPLE",
        "BINPERSID",
    ]
    return asm(
        call(
            glob("torch._utils", "_rebuild_tensor_v3"),
            pid,
            ("BININT", offset),
            ["MARK", ("BININT", n), "TUPLE"],
            ["MARK", ("BININT1", 1), "TUPLE"],
            "NEWFALSE",
            "NONE",
            glob("torch", dtype),
        ),
        "STOP",
    )


def test_tensor_v3_bounds_are_checked_in_bytes() -> None:
    ok = run(_tensor_v3(8, 2, 2, "uint16"), persistent_load=storage_pl)
    assert (ok.dtype, ok.offset, ok.storage.dtype) == ("uint16", 2, "uint8")
    for args in [(8, 3, 2, "uint16"), (7, 0, 4, "uint16"), (8, 0, 2, "float64")]:
        with pytest.raises(FormatError) as ei:
            run(_tensor_v3(*args), persistent_load=storage_pl)
        assert ei.value.rule == "pickle.tensor_bounds"


def test_tensor_ints_must_fit_int64() -> None:
    with pytest.raises(FormatError):
        run(_tensor(12, 0, (2,), (("LONG1", 2**70),)), persistent_load=storage_pl)
    with pytest.raises(FormatError):
        run(_tensor(12, 0, (("LONG1", 2**64),), (1,)), persistent_load=storage_pl)


def test_parameter_state_as_dict_or_slots_pair() -> None:
    pid = [
        "MARK",
        ustr("storage"),
        glob("torch", "FloatStorage"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 2),
        "TUPLE",
        "BINPERSID",
    ]
    tensor = call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        ("BININT1", 0),
        ["MARK", ("BININT1", 2), "TUPLE"],
        ["MARK", ("BININT1", 1), "TUPLE"],
        "NEWFALSE",
        "NONE",
    )
    rebuild = glob("torch._utils", "_rebuild_parameter_with_state")
    state = ["NONE", "EMPTY_DICT", ustr("a"), ("BININT1", 1), "SETITEM", "TUPLE2"]
    spec = run(
        asm(call(rebuild, tensor, "NEWTRUE", "NONE", state), "STOP"), persistent_load=storage_pl
    )
    assert spec.kind == "parameter" and spec.extra == {"a": 1}
    dunder = ["EMPTY_DICT", ustr("__class__"), "NONE", "SETITEM"]
    with pytest.raises(FormatError):
        run(
            asm(call(rebuild, tensor, "NEWTRUE", "NONE", dunder), "STOP"),
            persistent_load=storage_pl,
        )


def test_tensor_hooks_must_be_empty_and_storage_must_be_a_storage() -> None:
    hooks = [
        glob("collections", "OrderedDict"),
        "EMPTY_TUPLE",
        "REDUCE",
        ustr("h"),
        "NONE",
        "SETITEM",
    ]
    with pytest.raises(UnsafeModelError) as ei:
        run(_tensor(4, 0, (2,), (1,), hooks), persistent_load=storage_pl)
    assert ei.value.rule == "pickle.tensor_hooks"
    with pytest.raises(FormatError):
        run(_tensor(4, 0, (2,), (1,)), persistent_load=lambda pid: "not a storage")


def test_persistent_load_errors_are_wrapped() -> None:
    def boom(pid: object) -> object:
        raise KeyError(pid)

    err = refused(
        asm(ustr("x"), "BINPERSID", "STOP"),
        FormatError,
        "pickle.persistent_id",
        persistent_load=boom,
    )
    assert "KeyError" in (err.detail or "")


# --- limits -------------------------------------------------------------------------------


def limited(data: bytes, field: str, value: int, **kw: Any) -> None:
    with pytest.raises(LimitExceededError) as ei:
        run(data, limits=Limits(**{field: value}), **kw)
    assert ei.value.rule == f"limits.{field}"


def test_limit_opcodes() -> None:
    limited(asm(["NONE", "POP"] * 600, "NONE", "STOP"), "max_pickle_opcodes", 1000)


def test_limit_memo_entries() -> None:
    limited(asm(["NONE", "MEMOIZE", "POP"] * 20, "NONE", "STOP"), "max_memo_entries", 10)


def test_limit_mark_nesting() -> None:
    limited(asm(["MARK"] * 300), "max_nesting_depth", 256)


def test_limit_container_nesting_through_memo() -> None:
    # [[[[...]]]] built bottom-up, never holding more than three values on the stack.
    body: list[Any] = ["EMPTY_LIST"]
    for _ in range(300):
        body += [("BINPUT", 0), "POP", "EMPTY_LIST", ("BINGET", 0), "APPEND"]
    limited(asm(*body, "STOP"), "max_nesting_depth", 100)
    value = run(asm(*body[: 1 + 5 * 50], "STOP"))
    depth = 0
    while value:
        value, depth = value[0], depth + 1
    assert depth == 50


def test_limit_nesting_built_top_down_through_the_memo() -> None:
    """Each list is placed in its parent *before* it gets a child, so depth tracked while
    building stays at 2; the final walk measures what recursive readers would face."""
    ops: list[Any] = ["EMPTY_LIST", ("BINPUT", 0)]
    for i in range(300):
        ops += [("LONG_BINGET", i), "EMPTY_LIST", ("LONG_BINPUT", i + 1), "APPEND", "POP"]
    ops += ["STOP"]
    limited(asm(*ops), "max_nesting_depth", 100)
    value = run(asm(*ops[: 2 + 5 * 50], "STOP"))
    depth = 0
    while value:
        value, depth = value[0], depth + 1
    assert depth == 50


def test_uncalled_globals_are_not_returned_as_values() -> None:
    for ops in (
        [glob("collections", "OrderedDict")],
        ["EMPTY_DICT", ustr("f"), glob("torch._utils", "_rebuild_tensor_v2"), "SETITEM"],
        [glob("numpy", "ndarray"), "TUPLE1"],
    ):
        refused(asm(*ops, "STOP"), UnsafeModelError, "pickle.globals")
    found: list[str] = []
    run(asm(glob("os", "system"), "STOP"), collect_unsafe=found)
    assert found == ["os.system"]


def test_limit_container_items_counts_shared_appends() -> None:
    # One list appended to itself via DUP: every APPENDS adds references, not memory.
    ops = ["EMPTY_LIST", ("BINPUT", 0)] + [["MARK"] + [("BINGET", 0)] * 50 + ["APPENDS"]] * 30
    limited(asm(*ops, "STOP"), "max_container_items", 1000)


def test_limit_alloc_bytes() -> None:
    big = asm(("BINUNICODE", "x" * 5000), "STOP")
    limited(big, "max_pickle_alloc_bytes", 4096)
    many = asm(["MARK"] + [("SHORT_BINBYTES", b"y" * 200)] * 30 + ["TUPLE", "STOP"])
    limited(many, "max_pickle_alloc_bytes", 4096)
    limited(asm(("LONG4", b"\x01" * 10000), "STOP"), "max_pickle_alloc_bytes", 4096)


def test_limit_hashing_cost_of_nested_shared_tuples() -> None:
    """A tuple of 1000 references to a 1000-tuple to a 1000-tuple is ~3000 opcodes to build
    but 10^9 steps to hash; using it as a dict key or set member is charged in full."""
    ops: list[Any] = [("BININT1", 1)]
    for level in range(3):
        ops += [("BINPUT", level), "POP", "MARK", *[("BINGET", level)] * 1000, "TUPLE"]
    bomb = [("BINPUT", 3), "POP"]
    as_key = asm(*ops, *bomb, "EMPTY_DICT", ("BINGET", 3), "NONE", "SETITEM", "STOP")
    as_member = asm(*ops, *bomb, "MARK", ("BINGET", 3), "FROZENSET", "STOP")
    as_set = asm(
        *ops,
        *bomb,
        glob("builtins", "set"),
        "MARK",
        ("BINGET", 3),
        "LIST",
        "TUPLE1",
        "REDUCE",
        "STOP",
    )
    for data in (as_key, as_member, as_set):
        with pytest.raises(LimitExceededError) as ei:
            run(data)
        assert ei.value.rule == "limits.max_pickle_opcodes"
    small = asm(("BININT1", 1), "TUPLE1", "EMPTY_DICT", "POP", "STOP")
    assert run(small) == (1,)


def test_hash_flooding_keys_are_refused() -> None:
    """ints hash modulo 2**61 - 1, so k * (2**61 - 1) + 7 all share hash 7: inserting n of
    them is quadratic. Strings are salted per process and are not affected."""
    p = (1 << 61) - 1
    keys = [("LONG1", i * p + 7) for i in range(100)]
    as_dict = asm("EMPTY_DICT", "MARK", *[x for k in keys for x in (k, "NONE")], "SETITEMS", "STOP")
    as_set = asm("EMPTY_SET", "MARK", *keys, "ADDITEMS", "STOP")
    as_frozenset = asm("MARK", *keys, "FROZENSET", "STOP")
    as_reduce = asm(call(glob("builtins", "set"), ["MARK", *keys, "LIST"]), "STOP")
    pairs = [["MARK", k, "NONE", "TUPLE"] for k in keys]
    as_od = asm(call(glob("collections", "OrderedDict"), ["MARK", *pairs, "LIST"]), "STOP")
    for data in (as_dict, as_set, as_frozenset, as_reduce, as_od):
        with pytest.raises(LimitExceededError) as ei:
            run(data)
        assert "hash flooding" in ei.value.message
    ok = asm(
        "EMPTY_DICT",
        "MARK",
        *[x for i in range(100) for x in (("LONG1", 7), "NONE")],
        "SETITEMS",
        "STOP",
    )
    assert run(ok) == {7: None}  # the same key many times is not a flood
    assert len(run(pickle.dumps(set(range(5000)), 4))) == 5000


def test_long_numeric_lines_parse_in_linear_time() -> None:
    digits = b"1" * 200_000
    for op in (b"F", b"I", b"L", b"g", b"p"):
        with pytest.raises(FormatError):
            run(op + digits + b"x\n.")


def test_limit_alloc_counts_fresh_objects() -> None:
    limited(asm(["EMPTY_LIST"] * 5000, "STOP"), "max_pickle_alloc_bytes", 100_000)
    limited(
        asm(["EMPTY_DICT", "MEMOIZE", "POP"] * 5000, "NONE", "STOP"),
        "max_pickle_alloc_bytes",
        100_000,
    )


def test_limit_reconstructions_that_copy_memoised_inputs() -> None:
    """One charged input, many copies: each reconstruction's output is charged again."""
    big_str = [ustr("x" * 200), ("BINPUT", 0), "POP"]
    encode = call(glob("_codecs", "encode"), ("BINGET", 0), ustr("latin1"))
    limited(
        asm(*big_str, "MARK", *[encode] * 100, "TUPLE", "STOP"), "max_pickle_alloc_bytes", 10_000
    )
    big_list = ["MARK", *[("BININT1", i) for i in range(100)], "LIST", ("BINPUT", 0), "POP"]
    to_set = call(glob("builtins", "set"), ("BINGET", 0))
    limited(asm(*big_list, "MARK", *[to_set] * 100, "TUPLE", "STOP"), "max_container_items", 5_000)
    raw = [("SHORT_BINBYTES", b"\0" * 200), ("BINPUT", 0), "POP"]
    array = [
        glob("numpy", "ndarray"),
        ("BINPUT", 1),
        "POP",
        call(glob("numpy", "dtype"), ustr("u1"), "NEWFALSE", "NEWTRUE"),
        ("BINPUT", 2),
        "POP",
        call(
            glob("numpy.core.multiarray", "_reconstruct"),
            ("BINGET", 1),
            ["MARK", ("BININT1", 0), "TUPLE"],
            ("SHORT_BINBYTES", b"b"),
        ),
        "MARK",
        ("BININT1", 1),
        ["MARK", ("BININT1", 200), "TUPLE"],
        ("BINGET", 2),
        "NEWFALSE",
        ("BINGET", 0),
        "TUPLE",
        "BUILD",
    ]
    one = asm(*raw, *array, "STOP")
    assert run(one).nbytes == 200
    limited(asm(*raw, "MARK", *[array] * 60, "TUPLE", "STOP"), "max_pickle_alloc_bytes", 10_000)


def test_giant_length_is_truncation_not_allocation() -> None:
    data = asm(("RAW", b"\x8e" + (2**63 - 1).to_bytes(8, "little")), "STOP")
    with pytest.raises(FormatError) as ei:
        run(data)
    assert ei.value.rule == "pickle.truncated"


def test_limit_tensor_dims_and_elements_via_numpy() -> None:
    arr = np.zeros((2, 2, 2, 2))
    limited(pickle.dumps(arr, 2), "max_tensor_dims", 3)
    limited(pickle.dumps(arr, 5), "max_tensor_elements", 8)


# --- collect_unsafe -----------------------------------------------------------------------


def test_collect_unsafe_lists_every_global_and_keeps_going() -> None:
    hidden = [ustr("o" + "s"), ("BINPUT", 1), "POP", ustr("sys" + "tem"), ("BINPUT", 2), "POP"]
    data = asm(
        ("PROTO", 4),
        hidden,
        "EMPTY_DICT",
        ustr("a"),
        call(glob("builtins", "eval"), ustr("1")),
        "SETITEM",
        ustr("b"),
        ("BINGET", 1),
        ("BINGET", 2),
        "STACK_GLOBAL",
        ustr("rm"),
        "TUPLE1",
        "REDUCE",
        "SETITEM",
        ustr("c"),
        sglobal("subprocess", "Popen"),
        "EMPTY_TUPLE",
        "NEWOBJ",
        "EMPTY_DICT",
        "BUILD",
        "SETITEM",
        ustr("d"),
        ("BININT1", 5),
        "SETITEM",
        "STOP",
    )
    found: list[str] = []
    value = run(data, collect_unsafe=found)
    assert found == ["builtins.eval", "os.system", "subprocess.Popen"]
    assert value["d"] == 5
    assert all(type(value[k]) is Opaque for k in "abc")
    with pytest.raises(UnsafeModelError):
        run(data)


def test_collect_unsafe_continues_past_persistent_ids_built_from_refused_globals() -> None:
    data = asm(
        "MARK",
        ustr("storage"),
        glob("evil", "Storage"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 1),
        "TUPLE",
        "BINPERSID",
        "POP",
        glob("os", "system"),
        "POP",
        "NONE",
        "STOP",
    )
    found: list[str] = []
    run(data, collect_unsafe=found, persistent_load=storage_pl)
    assert found == ["evil.Storage", "os.system"]


def test_collect_unsafe_goes_on_past_refused_reconstructions() -> None:
    bad_tensor = call(glob("torch._utils", "_rebuild_tensor_v2"), "NONE")
    data = asm(
        bad_tensor,
        "POP",
        "EMPTY_DICT",
        "EMPTY_DICT",
        "BUILD",
        "POP",
        glob("os", "system"),
        "POP",
        "NONE",
        "STOP",
    )
    found: list[str] = []
    assert run(data, collect_unsafe=found) is None
    assert found == ["os.system"]
    with pytest.raises(FormatError):
        run(data)


def test_collect_unsafe_escapes_names_that_could_drive_a_terminal() -> None:
    found: list[str] = []
    run(asm(sglobal("os\x1b[2J", "system\n"), "POP", "NONE", "STOP"), collect_unsafe=found)
    assert found == [ascii("os\x1b[2J.system\n")]
    assert found[0].isprintable()


def test_collect_unsafe_non_string_stack_global() -> None:
    found: list[str] = []
    run(asm(("BININT1", 42), ustr("os"), "STACK_GLOBAL", "STOP"), collect_unsafe=found)
    assert found == ["<STACK_GLOBAL with non-string operands>"]


# --- user safe globals --------------------------------------------------------------------


class Point:
    """A user data class; its __init__ and __setstate__ would leave a trace if ever called."""

    trace: ClassVar[list[str]] = []

    def __init__(self, x: int = 0) -> None:
        Point.trace.append("init")
        self.x = x

    def __setstate__(self, state: object) -> None:
        Point.trace.append("setstate")


class Slotted:
    __slots__ = ("a", "b")


POINT = f"{__name__}.Point"


@pytest.fixture(autouse=True)
def _clean_registry() -> Any:
    clear_safe_globals()
    Point.trace.clear()
    yield
    clear_safe_globals()


def test_safe_globals_need_reasons_and_classes() -> None:
    for bad in [
        (type, "metaclass"),
        (object, "builtin"),
        (property, "builtin"),
        (Point, ""),
        (Point, "  "),
        (Point,),
        (len, "builtin"),
        (print, "x"),
        (lambda: 0, "fn"),
        (Point, 3),
        (Point, "a.b", ""),
    ]:
        with pytest.raises(UsageError):
            add_safe_globals([bad])  # type: ignore[list-item]
    with pytest.raises(UsageError):
        add_safe_globals([(collections.OrderedDict, "override a built-in")])
    with pytest.raises(UsageError):
        add_safe_globals((Point, "not a list"))  # type: ignore[arg-type]
    assert get_safe_globals() == {}


def test_user_class_is_built_without_init_or_setstate() -> None:
    data = pickle.dumps([Point(3), Point(4)], protocol=2)
    with pytest.raises(UnsafeModelError):
        run(data)
    Point.trace.clear()
    with safe_globals([(Point, "data")]):
        refused(pickle.dumps(Point, protocol=2), UnsafeModelError, "pickle.globals")
    add_safe_globals([(Point, "a pair of ints, no behaviour at load")])
    assert get_safe_globals()[POINT].reason == "a pair of ints, no behaviour at load"
    got = run(data)
    assert [type(p) for p in got] == [Point, Point] and [p.x for p in got] == [3, 4]
    assert Point.trace == []


def test_user_class_with_slots_and_explicit_name() -> None:
    s = Slotted()
    s.a, s.b = 1, [2]
    data = pickle.dumps(s, protocol=4)
    with safe_globals([(Slotted, f"{__name__}.Slotted", "two data slots")]):
        got = run(data)
    assert (got.a, got.b) == (1, [2])
    with pytest.raises(UnsafeModelError):
        run(data)


def test_user_class_state_must_be_plain() -> None:
    add_safe_globals([(Point, "data")])
    new = [glob(__name__, "Point"), "EMPTY_TUPLE", "NEWOBJ"]
    bad_state = asm(
        *new,
        "EMPTY_DICT",
        ustr("x"),
        glob("torch._utils", "_rebuild_tensor_v2"),
        "SETITEM",
        "BUILD",
        "STOP",
    )
    refused(bad_state, UnsafeModelError, "pickle.build")
    dunder = asm(*new, "EMPTY_DICT", ustr("__class__"), "NONE", "SETITEM", "BUILD", "STOP")
    refused(dunder, UnsafeModelError, "pickle.build")
    twice = asm(*new, "EMPTY_DICT", "BUILD", "EMPTY_DICT", "BUILD", "STOP")
    refused(twice, UnsafeModelError, "pickle.build")


def test_scoped_safe_globals_are_per_thread() -> None:
    data = pickle.dumps(Point(1), protocol=2)
    seen: dict[str, object] = {}

    def other() -> None:
        try:
            run(data)
            seen["other"] = "loaded"
        except UnsafeModelError:
            seen["other"] = "refused"

    with safe_globals([(Point, "data")]):
        assert run(data).x == 1
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert seen["other"] == "refused"
    with pytest.raises(UnsafeModelError):
        run(data)


def test_explicit_safe_globals_mapping_replaces_registry() -> None:
    add_safe_globals([(Point, "data")])
    with pytest.raises(UnsafeModelError):
        run(pickle.dumps(Point(1), protocol=2), safe_globals={})


# --- the allowlist itself -----------------------------------------------------------------


def test_every_allowlist_entry_has_a_reason_and_exact_name() -> None:
    for name, entry in ALLOWLIST.items():
        assert entry.name == name and "." in name and entry.reason.strip()
        assert entry.reduce or entry.newobj or entry.has_value or entry.tag, name


def test_no_stock_unpickler_is_used(no_torch_load: None, tmp_path: Path) -> None:
    data = pickle.dumps({"a": np.arange(3), "b": collections.OrderedDict(x=1)}, protocol=2)
    got = run(data)
    assert got["b"] == {"x": 1}


def test_every_pickletools_opcode_has_a_handler() -> None:
    import pickletools

    from safeload.formats._pickle_vm import _DISPATCH

    codes = {op.code.encode("latin-1")[0] for op in pickletools.opcodes}
    assert codes <= set(_DISPATCH)
    assert set(_DISPATCH) <= codes  # and nothing beyond the protocol

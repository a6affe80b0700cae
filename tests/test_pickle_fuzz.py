"""Fuzzing the pickle VM: any input either returns a value or raises a SafeloadError.

Never another exception, never a hang: limits are tight so every example finishes in
milliseconds, and the example counts are bounded so the whole file runs in seconds.
"""

from __future__ import annotations

import collections
import contextlib
import pickle
import pickletools
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeload import Limits, SafeloadError
from safeload.formats._pickle_vm import run_pickle
from safeload.formats._types import StorageRef, StorageType

TIGHT = Limits(
    max_pickle_opcodes=20_000,
    max_memo_entries=2_000,
    max_nesting_depth=32,
    max_container_items=20_000,
    max_pickle_alloc_bytes=1 << 20,
    max_tensor_dims=8,
    max_tensor_elements=1 << 20,
)
FUZZ = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def storage_pl(pid: object) -> StorageRef:
    if type(pid) is not tuple or len(pid) != 5 or type(pid[1]) is not StorageType:
        raise ValueError("not a storage id")
    if type(pid[2]) is not str or type(pid[3]) is not str or type(pid[4]) is not int:
        raise ValueError("not a storage id")
    return StorageRef(pid[2], pid[1].dtype, pid[4], pid[3])


def check(data: bytes, **kw: Any) -> None:
    with contextlib.suppress(SafeloadError):
        run_pickle(data, limits=TIGHT, safe_globals={}, persistent_load=storage_pl, **kw)


def _seeds() -> list[bytes]:
    values: list[object] = [
        {"a": [1, 2.5, "x", b"y", None, True], "b": (1, (2, 3)), "c": {1, 2}},
        collections.OrderedDict(w=[1] * 20, v=frozenset({"q"})),
        np.arange(6, dtype=np.float32).reshape(2, 3),
        [np.int64(3), np.dtype("<u2"), bytearray(b"ab"), 1 + 2j, slice(1, 2)],
    ]
    seeds = [pickle.dumps(v, protocol=p) for v in values for p in range(6)]
    # A torch-shaped stream: storage persistent id, rebuild call, hooks OrderedDict.
    seeds.append(
        b"\x80\x02ccollections\nOrderedDict\nq\x00)Rq\x01X\x01\x00\x00\x00wctorch._utils\n"
        b"_rebuild_tensor_v2\nq\x02((X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00"
        b"\x00\x000X\x03\x00\x00\x00cpuK\x06tQK\x00K\x02K\x03\x86K\x03K\x01\x86\x89h\x00)Rtq"
        b"\x03Rs."
    )
    return seeds


SEEDS = _seeds()


def test_seeds_are_valid_pickles() -> None:
    for s in SEEDS:
        pickletools.dis(s, out=_Null())
        run_pickle(s, limits=Limits(), safe_globals={}, persistent_load=storage_pl)


class _Null:
    def write(self, _: str) -> int:
        return 0


@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes(data: bytes) -> None:
    check(data)
    check(data, collect_unsafe=[])


@FUZZ
@given(
    st.sampled_from(SEEDS),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=8),
)
def test_mutated_real_pickles(seed: bytes, flips: list[tuple[int, int]]) -> None:
    data = bytearray(seed)
    for pos, byte in flips:
        data[pos % len(data)] = byte
    check(bytes(data))
    check(bytes(data), collect_unsafe=[], encoding="bytes")


@FUZZ
@given(
    st.sampled_from(SEEDS), st.integers(0, 10_000), st.integers(0, 10_000), st.binary(max_size=64)
)
def test_spliced_real_pickles(seed: bytes, a: int, b: int, insert: bytes) -> None:
    """Cut, duplicate and splice spans: exercises truncation and stray opcodes."""
    a, b = sorted((a % len(seed), b % len(seed)))
    check(seed[:a] + insert + seed[b:])
    check(seed[:b] + seed[a:])


_OPCODE_BYTES = sorted({op.code.encode("latin-1") for op in pickletools.opcodes})


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(_OPCODE_BYTES), st.binary(max_size=6)), max_size=60))
def test_opcode_soup(parts: list[tuple[bytes, bytes]]) -> None:
    """Random sequences of *valid* opcodes with random arguments reach deeper handlers."""
    check(b"".join(code + arg for code, arg in parts) + b".")


@pytest.mark.parametrize("seed", SEEDS[:6])
def test_every_single_byte_truncation_and_flip(seed: bytes) -> None:
    for cut in range(len(seed)):
        check(seed[:cut])
        flipped = bytearray(seed)
        flipped[cut] ^= 0xFF
        check(bytes(flipped))

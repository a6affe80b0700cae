"""Red-team findings in the sandbox's result channel: what a compromised worker can do to the
parent. Results are written by hand into a real memfd, as a hostile worker could write them."""

from __future__ import annotations

import json
import mmap
import os
from collections.abc import Iterator

import pytest

from safeload.errors import SafeloadError, SandboxError
from safeload.policy import Limits
from safeload.sandbox._transport import decode_result, seal

_P = (1 << 61) - 1  # hash(k * _P + c) == c for ints: every key lands in one bucket


def _result(skeleton: object) -> bytes:
    header = {
        "__metadata__": {
            "safeload.skeleton": json.dumps(skeleton),
            "safeload.meta": "{}",
            "safeload.filerefs": "[]",
        }
    }
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw


@pytest.fixture
def memfd() -> Iterator[int]:
    fd = os.memfd_create("redteam-result", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    yield fd
    os.close(fd)


def _decode(fd: int, payload: bytes) -> object:
    os.write(fd, payload)
    seal(fd)
    value, _, _ = decode_result(fd, limits=Limits(), framework="numpy", max_bytes=1 << 24)
    return value


@pytest.mark.parametrize("tag", ["$d", "$set"])
def test_skeleton_keys_crafted_to_collide_are_refused(memfd: int, tag: str) -> None:
    """The in-process VM refuses more than 32 distinct keys sharing one hash; the parent's
    skeleton decoder does not, so a compromised worker sends 10**6 int keys ``k * (2**61 - 1)``
    (one hash bucket, ~17 MB of JSON) and the parent spends ~10**12 comparisons building the
    dict: a hang the worker's deadline no longer covers. 2000 keys keep this test fast."""
    keys = [k * _P for k in range(2000)]
    body = [[k, None] for k in keys] if tag == "$d" else keys
    with pytest.raises(SandboxError):
        _decode(memfd, _result({tag: body}))


def test_result_still_mapped_writable_elsewhere_is_a_sandbox_error(memfd: int) -> None:
    """A worker child that survives with a shared writable mapping of the result memfd makes
    ``F_SEAL_WRITE`` fail with EBUSY: a bare ``OSError`` escapes ``run_in_sandbox`` instead of a
    ``SandboxError`` (still a refusal, but not one the CLI and callers catch)."""
    os.write(memfd, _result(None))
    mm = mmap.mmap(memfd, os.fstat(memfd).st_size, flags=mmap.MAP_SHARED)
    try:
        with pytest.raises(SafeloadError):
            seal(memfd)
    finally:
        mm.close()

"""Red-team findings in ``Limits``: values a policy may set that turn a refusal into a crash."""

from __future__ import annotations

import pydantic
import pytest

from safeload.policy import Limits


def test_nesting_depth_cannot_be_raised_to_where_hashing_segfaults() -> None:
    """``max_nesting_depth`` had no upper bound. With it at 10**6, ``TUPLE1`` repeated builds a
    tuple nested 10**6 deep for ~2 bytes per level; using it as a dict key makes CPython's
    recursive ``tuplehash`` overflow the C stack: a segfault of the loading process, which no
    ``except`` catches. (Not reproduced here: it would kill the test run.)"""
    with pytest.raises(pydantic.ValidationError):
        Limits(max_nesting_depth=1_000_000)
    assert Limits(max_nesting_depth=1000).max_nesting_depth == 1000

"""What one pickle stream may spend, counted *before* Python spends it.

An attacker controls every opcode, so each resource the VM hands out is metered here:
opcodes (plus extra steps such as walking values or hashing keys), bytes of strings and
bytes, container items, container nesting, and the cost of hashing tuples. The last is the
subtle one: a tuple holding 1000 references to a 1000-tuple is 2000 opcodes to build but a
million steps to hash, so every dict key and set member is charged its full hashing cost.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any, NoReturn

from safeload.errors import LimitExceededError, UnsafeModelError
from safeload.formats._types import TensorSpec
from safeload.policy._limits import Limits

__all__ = ["OBJECT_BYTES", "Budget", "check_result"]

_SCALAR_TYPES = (type(None), bool, int, float, str, bytes)
_HASHED_CONTAINERS = (tuple, frozenset)
_WALKED = (list, tuple, dict, set, frozenset, collections.OrderedDict)
_COUNTED = _WALKED
_MAX_COLLISIONS = 32
OBJECT_BYTES = 64
"""What one new container, memo slot or rebuilt value costs, roughly, in the alloc budget."""


class Budget:
    """Counters for one run; raises :class:`LimitExceededError` naming the ``limits.`` field."""

    __slots__ = ("alloc", "collisions", "depth", "items", "limits", "ops", "weights")

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.ops = 0
        self.alloc = 0
        self.items = 0
        # id -> (container kept alive so the id stays unique, nesting depth); only containers
        # that hold containers are recorded.
        self.depth: dict[int, tuple[object, int]] = {}
        # id -> (dict/set kept alive, hash -> distinct non-str keys seen with that hash).
        self.collisions: dict[int, tuple[object, dict[int, list[Any]]]] = {}
        # id -> (tuple/frozenset kept alive, elements hashing it visits); filled lazily.
        self.weights: dict[int, tuple[object, int]] = {}

    def over(self, field: str, what: str) -> NoReturn:
        value = getattr(self.limits, field)
        raise LimitExceededError(f"{what} exceeds the limit of {value}", rule=f"limits.{field}")

    def spend(self, n: int) -> None:
        self.ops += n
        if self.ops > self.limits.max_pickle_opcodes:
            self.over("max_pickle_opcodes", "pickle opcodes executed")

    def charge(self, n: int) -> None:
        self.alloc += n
        if self.alloc > self.limits.max_pickle_alloc_bytes:
            self.over("max_pickle_alloc_bytes", "string and bytes data")

    def account(self, value: Any) -> Any:
        """Charge what a reconstruction returned: called again on the same memoised input,
        ``set(big_list)`` or ``_codecs.encode(big_str)`` would otherwise copy for free."""
        self.charge(OBJECT_BYTES)
        t = type(value)
        if t in (bytes, bytearray, str):
            self.charge(len(value))
        elif t in _COUNTED:
            self.items += len(value)
            self.charge(8 * len(value))
            if self.items > self.limits.max_container_items:
                self.over("max_container_items", "items added to containers")
        elif hasattr(value, "nbytes") and type(value).__module__ == "numpy":
            self.charge(int(value.nbytes))
        return value

    def nest(self, parent: object, children: list[Any] | tuple[Any, ...]) -> None:
        """Account items added to ``parent``; track nesting for containers of containers.

        Depth is tracked bottom-up as items are added, which is how pickles build values. A
        stream that fills a child after placing it can under-report depth; the VM itself is
        iterative, so that only matters to recursive code downstream.
        """
        self.items += len(children)
        self.charge(8 * len(children))  # one reference each
        if self.items > self.limits.max_container_items:
            self.over("max_container_items", "items added to containers")
        if len(parent) > self.limits.max_container_items:  # type: ignore[arg-type]
            self.over("max_container_items", "one container's item count")
        best = 0
        for c in children:
            if type(c) not in _SCALAR_TYPES:
                rec = self.depth.get(id(c))
                best = max(best, rec[1] if rec else 1)
        if best:
            rec = self.depth.get(id(parent))
            if rec is None or rec[1] <= best:
                if best + 1 > self.limits.max_nesting_depth:
                    self.over("max_nesting_depth", "container nesting")
                self.depth[id(parent)] = (parent, best + 1)

    def weight(self, items: Iterable[Any]) -> int:
        """Elements hashing ``items`` visits; tuples and frozensets hash all they hold.

        Computed lazily (only for values about to be hashed) and cached per object. Tuples
        and frozensets are immutable and built from existing values, so the walk is acyclic.
        """
        total = 0
        for c in items:
            total += self._weight_of(c) if type(c) in _HASHED_CONTAINERS else 1
        return total

    def _weight_of(self, root: tuple[Any, ...] | frozenset[Any]) -> int:
        cache = self.weights
        todo: list[tuple[Any, bool]] = [(root, False)]
        while todo:
            node, ready = todo.pop()
            if id(node) in cache:
                continue
            kids = [c for c in node if type(c) in _HASHED_CONTAINERS and id(c) not in cache]
            if ready or not kids:
                w = 1
                for c in node:
                    w += cache[id(c)][1] if type(c) in _HASHED_CONTAINERS else 1
                cache[id(node)] = (node, min(w, 1 << 62))
            else:
                todo.append((node, True))
                todo.extend((c, False) for c in kids)
        return cache[id(root)][1]

    def distinct_hashes(self, container: object | None, keys: Iterable[Any]) -> None:
        """Refuse hash flooding: many *different* keys sharing one hash make every insert walk
        a collision chain (quadratic time). ``str``/``bytes`` hashes are salted per process,
        but ints, floats and tuples hash predictably (``hash(k * (2**61 - 1) + c) == c``).
        Up to ``_MAX_COLLISIONS`` distinct keys per hash value and container are allowed.
        """
        table: dict[int, list[Any]]
        if container is None:
            table = {}
        else:
            rec = self.collisions.get(id(container))
            if rec is None:
                rec = self.collisions[id(container)] = (container, {})
            table = rec[1]
        for k in keys:
            if type(k) in (str, bytes):
                continue
            reps = table.setdefault(hash(k), [])
            if any(k is r or k == r for r in reps):
                continue
            reps.append(k)
            if len(reps) > _MAX_COLLISIONS:
                raise LimitExceededError(
                    "keys crafted to share one hash value (hash flooding)",
                    rule="limits.max_pickle_opcodes",
                    detail=f"more than {_MAX_COLLISIONS} distinct keys hash to {hash(k)}",
                )

    def hashing(self, keys: Iterable[Any]) -> None:
        """Charge hashing ``keys`` to the opcode budget before Python pays for it."""
        self.spend(self.weight(keys))


def check_result(value: object, limits: Limits, forbidden: tuple[type, ...]) -> None:
    """Walk the finished value the way readers later will, and refuse what they cannot take.

    Containers can be filled after they were placed inside others (through the memo), so
    the depth tracked while building can under-report. This walk visits each container once
    in natural order, as the memoised recursive walkers downstream do, and measures the
    depth they would reach. It also refuses ``forbidden`` objects (callables that were named
    but never used to rebuild anything) anywhere in the value.
    """
    seen: set[int] = set()
    todo: list[tuple[Any, int]] = [(value, 1)]
    while todo:
        node, depth = todo.pop()
        t = type(node)
        if t in forbidden:
            raise UnsafeModelError(
                f"global {getattr(node, 'name', t.__name__)!r} is returned as a value",
                rule="pickle.globals",
                code="SL103",
                detail="safeload rebuilds data; a callable is only usable as a reconstruction",
            )
        if t in _SCALAR_TYPES or id(node) in seen:
            continue
        children: list[Any] = []
        if t in _WALKED:  # dict keys too: a global used as a key is still a global
            children.extend([*node.keys(), *node.values()] if isinstance(node, dict) else node)
        # State BUILD stored outside the container protocol (``OrderedDict._metadata``, a
        # user instance's attributes, ``TensorSpec.extra``) was checked when it was set, but
        # the memo can still reach it afterwards: walk it like any other child.
        attrs = node.extra if t is TensorSpec else getattr(node, "__dict__", None)
        if type(attrs) is dict:
            children.extend(attrs.values())
        if t not in _WALKED and not children:
            continue
        seen.add(id(node))
        if depth > limits.max_nesting_depth:
            raise LimitExceededError(
                f"value nesting exceeds the limit of {limits.max_nesting_depth}",
                rule="limits.max_nesting_depth",
            )
        todo.extend((c, depth + 1) for c in reversed(children))

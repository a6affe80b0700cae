"""An allowlist-only interpreter of the pickle opcode stream (protocols 0-5).

Threat model: every byte of ``data`` is chosen by an attacker. The VM therefore never imports
a module, never looks up an attribute by a name from the stream, and never calls anything the
stream names: a global is an exact-string lookup in :data:`~._allowlist.ALLOWLIST` or the
user's safe globals, and "calling" it runs a reconstruction function safeload wrote. The stock
``pickle`` unpicklers never see model bytes; only ``pickletools`` opcode constants are used.

The loop is iterative (MARK is a stack of stacks, never recursion) and every resource an
attacker could inflate is counted against :class:`~safeload.policy.Limits` *before* it is
spent: opcodes, memo slots, MARK depth, container nesting and items, string/bytes bytes.
Lengths that point past the end of the data are truncation errors, never allocations.
"""

from __future__ import annotations

import codecs
import collections
import logging
import re
import struct
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NoReturn

from safeload.errors import (
    FormatError,
    LimitExceededError,
    SafeloadError,
    UnsafeModelError,
    UsageError,
)
from safeload.formats._allowlist import ALLOWLIST, AllowedGlobal, Ctx, build_tensor_spec
from safeload.formats._pickle_budget import OBJECT_BYTES, Budget, check_result
from safeload.formats._safe_globals import SafeGlobal, build_instance, get_safe_globals, instantiate
from safeload.formats._types import TensorSpec
from safeload.policy._limits import Limits

__all__ = ["Opaque", "run_pickle"]

_log = logging.getLogger(__name__)
_U16, _I32, _U32, _U64, _F64 = map(struct.Struct, ("<H", "<i", "<I", "<Q", ">d"))

_ENCODINGS = ("ascii", "latin1", "utf-8", "bytes")
_ADVICE = "nothing a file names is imported; allowlist your own data classes, with a reason"
_DECIMAL = re.compile(rb"[+-]?[0-9]+")
_FLOAT_CHARS = re.compile(rb"[-+.0-9eEinfatyINFATY]{1,64}")  # a charset, so no backtracking
_MAX_INT_DIGITS = 4300
"""CPython's default ``int_max_str_digits``, fixed here whatever the interpreter's setting, so
every int the VM hands out can be printed, formatted into a tensor name or written as JSON."""
_MAX_LONG_BYTES = _MAX_INT_DIGITS * 100 // 241  # 256**n < 10**4300 (log10(256) > 2.408)

_ACTIVE: ContextVar[Budget | None] = ContextVar("safeload_pickle_budget", default=None)
"""The budget of the pickle being run, so a pickle a reconstruction runs *inside* it (an
embedded checkpoint) spends from the same budget instead of a fresh one per call: otherwise
one memoised blob passed to ``_load_from_bytes`` N times costs N full budgets."""


@dataclass(frozen=True, slots=True)
class Opaque:
    """Stands in for a refused global (and anything made from it) in ``collect_unsafe`` mode."""

    name: str


class _Machine:
    """One run over one pickle stream; attributes are the VM registers."""

    def __init__(
        self,
        data: bytes | memoryview,
        start: int,
        limits: Limits,
        persistent_load: Callable[[object], object] | None,
        safe: Mapping[str, SafeGlobal],
        collect: list[str] | None,
        name: str | None,
        encoding: str,
    ) -> None:
        self.raw = data if isinstance(data, bytes) else None
        self.mv = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        self.pos = start
        self.end = len(self.mv)
        self.op_pos = start
        self.limits = limits
        self.persistent_load = persistent_load
        self.safe = safe
        self.collect = collect
        self.name = name
        self.encoding = encoding
        self.stack: list[Any] = []
        self.metastack: list[list[Any]] = []
        self.memo: dict[int, Any] = {}
        outer = _ACTIVE.get()
        self.budget = outer if outer is not None and outer.limits == limits else Budget(limits)
        self.ctx = Ctx(limits, frozenset(sg.cls for sg in safe.values()))
        self.built_user: dict[int, object] = {}
        self.done = False

    # --- errors -----------------------------------------------------------------------
    def fail(self, cls: type[SafeloadError], msg: str, rule: str, **kw: str | None) -> NoReturn:
        raise cls(msg, path=self.name, rule=rule, offset=self.op_pos, **kw)

    def bad(self, msg: str, rule: str = "pickle.malformed", detail: str | None = None) -> NoReturn:
        self.fail(FormatError, msg, rule, detail=detail)

    def refuse(
        self, msg: str, rule: str = "pickle.opcodes", code: str = "SL102", detail: str | None = None
    ) -> NoReturn:
        self.fail(UnsafeModelError, msg, rule, code=code, detail=detail)

    # --- reading ----------------------------------------------------------------------
    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > self.end:
            self.bad(f"pickle truncated: needs {n} more bytes", "pickle.truncated")
        out = self.mv[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        pos = self.pos
        if pos >= self.end:
            self.bad("pickle truncated: needs 1 more byte", "pickle.truncated")
        self.pos = pos + 1
        return self.mv[pos]

    def unpack(self, fmt: struct.Struct) -> Any:
        pos = self.pos
        if pos + fmt.size > self.end:
            self.bad(f"pickle truncated: needs {fmt.size} more bytes", "pickle.truncated")
        self.pos = pos + fmt.size
        return fmt.unpack_from(self.mv, pos)[0]

    def line(self) -> bytes:
        """Bytes up to the next newline (protocol 0 arguments), charged to the alloc budget."""
        if self.raw is not None:
            nl = self.raw.find(b"\n", self.pos)
        else:
            nl, i = -1, self.pos
            while i < self.end:
                chunk = bytes(self.mv[i : min(i + 65536, self.end)])
                j = chunk.find(b"\n")
                if j >= 0:
                    nl = i + j
                    break
                i += len(chunk)
        if nl < 0:
            self.bad("pickle truncated: line without newline", "pickle.truncated")
        self.budget.charge(nl - self.pos)
        out = bytes(self.mv[self.pos : nl])
        self.pos = nl + 1
        return out

    def blob(self, n: int) -> bytes:
        if n < 0:
            self.bad(f"negative length {n}")
        if n > self.end - self.pos:
            self.bad(f"pickle truncated: a {n}-byte value", "pickle.truncated")
        self.budget.charge(n)
        return bytes(self.take(n))

    def text(self, raw: bytes, codec: str = "utf-8") -> str:
        try:
            return raw.decode(codec, "surrogatepass" if codec == "utf-8" else "strict")
        except UnicodeDecodeError as exc:
            self.bad(f"malformed {codec} text in pickle", detail=str(exc))

    def py2str(self, raw: bytes) -> object:
        if self.encoding == "bytes":
            return raw
        return self.text(raw, self.encoding)

    def decimal(self, raw: bytes) -> int:
        if not _DECIMAL.fullmatch(raw):
            self.bad(f"malformed integer {raw[:40]!r}")
        if len(raw) > _MAX_INT_DIGITS + 1:  # the interpreter's own limit may be off (0)
            self.bad("integer literal too long", detail=f"over {_MAX_INT_DIGITS} digits")
        try:
            return int(raw)
        except ValueError as exc:  # longer than sys.get_int_max_str_digits
            self.bad("integer literal too long", detail=str(exc))

    # --- stack ------------------------------------------------------------------------
    def push(self, v: object) -> None:
        self.stack.append(v)

    def pop(self) -> Any:
        if not self.stack:
            self.bad("pickle stack underflow", "pickle.stack")
        return self.stack.pop()

    def top(self) -> Any:
        if not self.stack:
            self.bad("pickle stack underflow", "pickle.stack")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.metastack:
            self.bad("pickle has no MARK to pop to", "pickle.stack")
        items = self.stack
        self.stack = self.metastack.pop()
        return items

    # --- containers -------------------------------------------------------------------
    def new(self, obj: Any) -> Any:
        """Count a fresh object's memory, so a stream of ``]]]]`` hits the alloc limit."""
        self.budget.charge(OBJECT_BYTES)
        return obj

    def tuple_of(self, items: list[Any]) -> tuple[Any, ...]:
        t = tuple(items)
        self.budget.nest(t, t)
        return t

    def target(self, kinds: tuple[type, ...], op: str) -> Any:
        obj = self.top()
        if type(obj) is Opaque:
            return None
        if type(obj) not in kinds:
            self.refuse(f"{op} on a {type(obj).__name__}", "pickle.opcodes", code="SL102")
        return obj

    def setitems(self, items: list[Any]) -> None:
        d = self.target((dict, collections.OrderedDict), "SETITEMS")
        if len(items) % 2:
            self.bad("SETITEMS with an odd number of items")
        if d is None:
            return
        keys = items[0::2]
        self.budget.hashing(keys)
        self.budget.distinct_hashes(d, self.hashable(keys))
        for i in range(0, len(items), 2):
            d[items[i]] = items[i + 1]
        self.budget.nest(d, items)

    def hashable(self, items: list[Any]) -> list[Any]:
        for x in items:
            try:
                hash(x)
            except TypeError as exc:
                self.bad("unhashable dict key or set member", detail=str(exc))
        return items

    # --- memo -------------------------------------------------------------------------
    def put(self, idx: int) -> None:
        if idx < 0:
            self.bad("negative memo index")
        if idx not in self.memo:
            if len(self.memo) >= self.limits.max_memo_entries:
                self.budget.over("max_memo_entries", "memo entries")
            self.budget.charge(OBJECT_BYTES)
        self.memo[idx] = self.top()

    def get(self, idx: int) -> None:
        if idx not in self.memo:
            self.refuse(f"memo index {idx} was never set", "pickle.memo", code="SL105")
        self.push(self.memo[idx])

    # --- globals and calls ------------------------------------------------------------
    def resolve(self, qualname: str) -> object:
        entry = ALLOWLIST.get(qualname)
        if entry is not None:
            return entry.value if entry.has_value else entry
        user = self.safe.get(qualname)
        if user is not None:
            return user
        if self.collect is not None:  # escaped if it could drive a terminal
            self.collect.append(qualname if qualname.isprintable() else ascii(qualname))
            return Opaque(qualname)
        self.refuse(f"global {qualname!r} is not allowlisted", "pickle.globals", "SL101", _ADVICE)

    def call(self, func: object, args: object, op: str, *, newobj: bool = False) -> object:
        if type(func) is Opaque:
            return Opaque(f"{func.name}(...)")
        if type(args) is not tuple:
            self.bad(f"{op} arguments are not a tuple")
        if type(func) is AllowedGlobal:
            fn = func.newobj if newobj else func.reduce
            if fn is None:
                self.refuse(f"{op} of {func.name} is not allowed", "pickle.reduce", "SL103")
            if self.collect is not None and any(type(a) is Opaque for a in args):
                return Opaque(f"{func.name}(...)")
            if func.hashes:  # charge hashing the members before set()/OrderedDict() does
                for a in args:
                    if type(a) in (list, tuple):
                        self.budget.hashing(a)
                        keys = a
                        if func.name == "collections.OrderedDict":  # (key, value) pairs
                            keys = [p[0] if type(p) in (list, tuple) and p else p for p in a]
                        self.budget.distinct_hashes(None, self.hashable(keys))
            return self.review(func.name, lambda: self.budget.account(fn(args, self.ctx)))
        if type(func) is SafeGlobal:
            return self.review(
                func.name, lambda: self.budget.account(instantiate(func, args, self.ctx))
            )
        self.refuse(f"{op} on a {type(func).__name__} is not allowed", "pickle.reduce", "SL103")

    def review(self, name: str, make: Callable[[], object]) -> object:
        """Run one reconstruction. In review mode a refusal becomes an :class:`Opaque` and
        reading goes on, so every global gets listed; limits still stop it."""
        try:
            out = make()
        except (FormatError, UnsafeModelError):
            if self.collect is None:
                raise
            out = Opaque(f"{name}(...)")
        self.spend(0)
        return out

    def build(self, obj: Any, state: object) -> None:
        if type(obj) is Opaque:
            return
        pending = self.ctx.pending.pop(id(obj), None)
        if pending is not None and pending[0] is obj:
            pending[1](obj, state, self.ctx)
        elif type(obj) is TensorSpec:
            build_tensor_spec(obj, state, self.ctx)
        elif type(obj) in self.ctx.user_types and id(obj) not in self.built_user:
            self.built_user[id(obj)] = obj  # kept alive so the id stays unique
            build_instance(obj, state, self.ctx)
        else:
            self.refuse(
                f"BUILD on a {type(obj).__name__} is not allowed",
                "pickle.build",
                code="SL103",
                detail="only allowlisted reconstructions accept state, once",
            )

    def spend(self, n: int) -> None:
        self.budget.spend(n + self.ctx.work)
        self.budget.charge(self.ctx.alloc)
        self.ctx.work = self.ctx.alloc = 0

    def pers(self, pid: object) -> None:
        if self.persistent_load is None:
            self.refuse("unexpected persistent id", "pickle.persistent_id", "SL104")
        if self.collect is not None and (
            type(pid) is Opaque or (type(pid) is tuple and any(type(p) is Opaque for p in pid))
        ):
            return self.push(Opaque("<persistent id>"))
        try:
            self.push(self.persistent_load(pid))
        except SafeloadError:
            raise
        except Exception as exc:  # noqa: BLE001 - the caller's resolver rejected a hostile id
            self.bad(
                "persistent id could not be resolved",
                "pickle.persistent_id",
                detail=f"{type(exc).__name__}: {exc}",
            )

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> tuple[object, int]:
        table = _DISPATCH
        max_ops, budget = self.limits.max_pickle_opcodes, self.budget
        while not self.done:
            self.op_pos = self.pos
            if self.pos >= self.end:
                self.bad("pickle ended without STOP", "pickle.truncated")
            op = self.mv[self.pos]
            self.pos += 1
            budget.ops += 1
            if budget.ops > max_ops:
                self.budget.over("max_pickle_opcodes", "pickle opcodes executed")
            handler = table.get(op)
            if handler is None:
                self.refuse(f"opcode 0x{op:02x} is not allowed", "pickle.opcodes", code="SL102")
            handler(self)
        if self.metastack or len(self.stack) != 1:
            self.bad("pickle stack is not a single value at STOP", "pickle.stack")
        forbidden = (AllowedGlobal, SafeGlobal) if self.collect is None else ()
        check_result(self.stack[0], self.limits, forbidden)
        return self.stack[0], self.pos


# --- opcode handlers ------------------------------------------------------------------
Handler = Callable[[_Machine], None]
_DISPATCH: dict[int, Handler] = {}


def _op(*codes: bytes) -> Callable[[Handler], Handler]:
    def reg(fn: Handler) -> Handler:
        for c in codes:
            _DISPATCH[c[0]] = fn
        return fn

    return reg


@_op(b"\x80")
def _proto(m: _Machine) -> None:
    if m.u8() > 5:
        m.bad("unsupported pickle protocol", "pickle.protocol")


@_op(b"\x95")
def _frame(m: _Machine) -> None:
    n = m.unpack(_U64)
    if n > m.end - m.pos:
        m.bad("pickle frame runs past the end", "pickle.truncated")


@_op(b".")
def _stop(m: _Machine) -> None:
    m.done = True


_op(b"N")(lambda m: m.push(None))
_op(b"\x88")(lambda m: m.push(True))
_op(b"\x89")(lambda m: m.push(False))
_op(b"K")(lambda m: m.push(m.u8()))
_op(b"M")(lambda m: m.push(m.unpack(_U16)))
_op(b"J")(lambda m: m.push(m.unpack(_I32)))
_op(b"G")(lambda m: m.push(m.unpack(_F64)))


@_op(b"I")
def _int(m: _Machine) -> None:
    raw = m.line()
    if raw in (b"00", b"01"):  # protocol 0 spells booleans as I00 / I01
        m.push(raw == b"01")
    else:
        m.push(m.decimal(raw))


@_op(b"L")
def _long(m: _Machine) -> None:
    raw = m.line()
    m.push(m.decimal(raw[:-1] if raw.endswith(b"L") else raw))


@_op(b"F")
def _float(m: _Machine) -> None:
    raw = m.line()
    try:
        if not _FLOAT_CHARS.fullmatch(raw):
            raise ValueError
        m.push(float(raw))
    except ValueError:
        m.bad(f"malformed float {raw[:40]!r}")


def _long_n(m: _Machine, n: int) -> None:
    """A binary int is refused past what ``str()`` can print: downstream names, reports and the
    sandbox's JSON skeleton all format ints, and a 4 GiB LONG4 would make each one raise."""
    if n > _MAX_LONG_BYTES:
        m.budget.charge(n)  # over the alloc limit too? that limit is the one to name
        m.bad(f"a {n}-byte integer", detail=f"ints are limited to {_MAX_INT_DIGITS} digits")
    m.push(int.from_bytes(m.blob(n), "little", signed=True))


_op(b"\x8a")(lambda m: _long_n(m, m.u8()))
_op(b"\x8b")(lambda m: _long_n(m, m.unpack(_I32)))


@_op(b"S")
def _string(m: _Machine) -> None:
    raw = m.line()
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
        m.bad("malformed STRING literal")
    try:
        value = codecs.escape_decode(raw[1:-1])[0]
    except ValueError as exc:
        m.bad("malformed STRING escape", detail=str(exc))
    m.push(m.py2str(value))


_op(b"T")(lambda m: m.push(m.py2str(m.blob(m.unpack(_I32)))))
_op(b"U")(lambda m: m.push(m.py2str(m.blob(m.u8()))))
_op(b"B")(lambda m: m.push(m.blob(m.unpack(_U32))))
_op(b"C")(lambda m: m.push(m.blob(m.u8())))
_op(b"\x8e")(lambda m: m.push(m.blob(m.unpack(_U64))))
_op(b"\x96")(lambda m: m.push(bytearray(m.blob(m.unpack(_U64)))))
_op(b"\x8c")(lambda m: m.push(m.text(m.blob(m.u8()))))
_op(b"X")(lambda m: m.push(m.text(m.blob(m.unpack(_U32)))))
_op(b"\x8d")(lambda m: m.push(m.text(m.blob(m.unpack(_U64)))))


_op(b"V")(lambda m: m.push(m.text(m.line(), "raw_unicode_escape")))
_op(b"\x97", b"\x98")(lambda m: m.refuse("out-of-band pickle buffers are not supported"))


_op(b"]")(lambda m: m.push(m.new([])))
_op(b")")(lambda m: m.push(()))
_op(b"}")(lambda m: m.push(m.new({})))
_op(b"\x8f")(lambda m: m.push(m.new(set())))


@_op(b"a")
def _append(m: _Machine) -> None:
    item = m.pop()
    lst = m.target((list,), "APPEND")
    if lst is not None:
        lst.append(item)
        m.budget.nest(lst, (item,))


@_op(b"e")
def _appends(m: _Machine) -> None:
    items = m.pop_mark()
    lst = m.target((list,), "APPENDS")
    if lst is not None:
        lst.extend(items)
        m.budget.nest(lst, items)


@_op(b"l")
def _list(m: _Machine) -> None:
    items = m.pop_mark()
    m.budget.nest(items, items)
    m.push(items)


_op(b"t")(lambda m: m.push(m.tuple_of(m.pop_mark())))


@_op(b"\x85", b"\x86", b"\x87")
def _tuple_n(m: _Machine) -> None:
    n = m.mv[m.op_pos] - 0x84
    if len(m.stack) < n:
        m.bad("pickle stack underflow", "pickle.stack")
    items = m.stack[-n:]
    del m.stack[-n:]
    m.push(m.tuple_of(items))


@_op(b"d")
def _dict(m: _Machine) -> None:
    items = m.pop_mark()
    m.push(m.new({}))
    m.setitems(items)


@_op(b"s")
def _setitem(m: _Machine) -> None:
    v = m.pop()
    k = m.pop()
    m.setitems([k, v])


_op(b"u")(lambda m: m.setitems(m.pop_mark()))


@_op(b"\x90")
def _additems(m: _Machine) -> None:
    items = m.pop_mark()
    s = m.target((set,), "ADDITEMS")
    m.budget.hashing(items)
    if s is not None:
        m.budget.distinct_hashes(s, m.hashable(items))
        s.update(items)
        m.budget.nest(s, items)


@_op(b"\x91")
def _frozenset(m: _Machine) -> None:
    items = m.pop_mark()
    m.budget.hashing(items)
    m.budget.distinct_hashes(None, m.hashable(items))
    fs = frozenset(items)
    m.budget.nest(fs, items)
    m.push(fs)


@_op(b"0")
def _pop(m: _Machine) -> None:
    if m.stack:
        m.stack.pop()
    else:
        m.pop_mark()


_op(b"2")(lambda m: m.push(m.top()))


@_op(b"(")
def _mark(m: _Machine) -> None:
    if len(m.metastack) >= m.limits.max_nesting_depth:
        m.budget.over("max_nesting_depth", "MARK nesting")
    m.metastack.append(m.stack)
    m.stack = m.new([])


_op(b"1")(lambda m: m.pop_mark().clear())
_op(b"g")(lambda m: m.get(m.decimal(m.line())))
_op(b"h")(lambda m: m.get(m.u8()))
_op(b"j")(lambda m: m.get(m.unpack(_U32)))
_op(b"p")(lambda m: m.put(m.decimal(m.line())))
_op(b"q")(lambda m: m.put(m.u8()))
_op(b"r")(lambda m: m.put(m.unpack(_U32)))
_op(b"\x94")(lambda m: m.put(len(m.memo)))


@_op(b"\x82", b"\x83", b"\x84")
def _ext(m: _Machine) -> None:
    m.refuse("EXT opcodes name globals through copyreg's extension registry")


def _global_name(m: _Machine, module: object, qualname: object) -> str | None:
    if type(module) is not str or type(qualname) is not str:
        if m.collect is not None:
            m.collect.append("<STACK_GLOBAL with non-string operands>")
            return None
        m.refuse("STACK_GLOBAL operands must be strings", "pickle.globals", code="SL101")
    return f"{module}.{qualname}"


@_op(b"c")
def _global(m: _Machine) -> None:
    module = m.text(m.line())
    qualname = m.text(m.line())
    m.push(m.resolve(f"{module}.{qualname}"))


@_op(b"\x93")
def _stack_global(m: _Machine) -> None:
    qualname = m.pop()
    module = m.pop()
    full = _global_name(m, module, qualname)
    m.push(Opaque("<dynamic>") if full is None else m.resolve(full))


@_op(b"R")
def _reduce(m: _Machine) -> None:
    args = m.pop()
    func = m.pop()
    m.push(m.call(func, args, "REDUCE"))


@_op(b"\x81")
def _newobj(m: _Machine) -> None:
    args = m.pop()
    cls = m.pop()
    m.push(m.call(cls, args, "NEWOBJ", newobj=True))


@_op(b"\x92")
def _newobj_ex(m: _Machine) -> None:
    kwargs = m.pop()
    args = m.pop()
    cls = m.pop()
    if kwargs != {} or type(kwargs) is not dict:
        m.refuse("NEWOBJ_EX with keyword arguments", "pickle.reduce", code="SL103")
    m.push(m.call(cls, args, "NEWOBJ_EX", newobj=True))


@_op(b"i")
def _inst(m: _Machine) -> None:
    module = m.text(m.line())
    qualname = m.text(m.line())
    args = tuple(m.pop_mark())
    m.push(m.call(m.resolve(f"{module}.{qualname}"), args, "INST"))


@_op(b"o")
def _obj(m: _Machine) -> None:
    items = m.pop_mark()
    if not items:
        m.bad("OBJ without a class", "pickle.stack")
    m.push(m.call(items[0], tuple(items[1:]), "OBJ"))


@_op(b"b")
def _build(m: _Machine) -> None:
    state = m.pop()
    obj = m.top()
    m.review("BUILD", lambda: m.build(obj, state))


_op(b"P")(lambda m: m.pers(m.text(m.line(), "ascii")))
_op(b"Q")(lambda m: m.pers(m.pop()))


def run_pickle(
    data: bytes | memoryview,
    *,
    limits: Limits,
    start: int = 0,
    persistent_load: Callable[[object], object] | None = None,
    safe_globals: Mapping[str, SafeGlobal] | None = None,
    collect_unsafe: list[str] | None = None,
    name: str | None = None,
    expect_end: bool = False,
    encoding: str = "ascii",
) -> tuple[object, int]:
    """Interpret one pickle starting at ``start``; returns (value, offset just after STOP).

    ``safe_globals=None`` means the user registry as it stands (:func:`get_safe_globals`);
    pass ``{}`` for none. With ``collect_unsafe`` given, refused global names are appended to
    it and replaced by :class:`Opaque` so a review can list everything a file needs.
    ``expect_end`` refuses bytes after STOP. ``encoding`` decodes Python 2 ``str`` values
    (``"bytes"`` keeps them as bytes, as numpy's latin-1 pickles need).
    """
    if encoding not in _ENCODINGS:
        raise UsageError(f"encoding must be one of {_ENCODINGS}", rule="pickle.encoding")
    safe = get_safe_globals() if safe_globals is None else safe_globals
    m = _Machine(data, start, limits, persistent_load, safe, collect_unsafe, name, encoding)
    token = _ACTIVE.set(m.budget)
    try:
        value, end = m.run()
    except SafeloadError as exc:
        if exc.offset is None:
            exc.offset = m.op_pos
        if name is not None:
            exc.with_path(name)
        raise
    except (RecursionError, MemoryError) as exc:
        detail = type(exc).__name__
        m.fail(LimitExceededError, "pickle too complex to read", "limits.pickle", detail=detail)
    except Exception as exc:  # noqa: BLE001 - fail closed: any other slip is a malformed file
        m.bad("malformed pickle", detail=f"{type(exc).__name__}: {exc}")
    finally:
        _ACTIVE.reset(token)
    if expect_end and end != m.end:
        m.op_pos = end
        m.bad("data after the pickle's STOP opcode", "pickle.trailing_data")
    _log.debug("pickle %s: %d opcodes, %d memo entries", name, m.budget.ops, len(m.memo))
    return value, end

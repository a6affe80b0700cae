"""Pickle checkpoints to safetensors, with nothing in the input run and every tensor checked.

Why this is more than ``torch.load`` + ``save_file``: the input is read by ``safeload.load``
(allowlist-only, in the sandbox worker when asked or when the policy says so), so a hostile
checkpoint is refused instead of executed; and the output only gets its final name after it
was read back with safeload's own safetensors reader and found bit-identical, tensor by tensor
(dtype, shape, raw bytes: NaN payloads and signed zeros included). Until then it is a temporary
file in the output's folder, removed on any failure, so a reader of ``output`` sees either
nothing or a checked file.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import json
import logging
import mmap
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from safeload.convert._report import ConversionReport
from safeload.errors import ConversionError, SafeloadError, SourceError
from safeload.policy import Limits, Policy

__all__ = ["to_safetensors"]

logger = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""``progress(done, total)``: bytes of tensor data checked so far, of the total."""

# Where training scripts put the model's weights in a checkpoint, most specific first
# (HF's convert script and most trainers agree on these).
_STATE_KEYS = ("state_dict", "model", "module")
_META_PREFIX = "safeload."
_NOTE_NAMES = 12  # names listed in one note before "... and N more"


@dataclass
class _Flat:
    """The input as safetensors can hold it: named tensors and string metadata."""

    tensors: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def to_safetensors(
    source: Any,
    output: str | os.PathLike[str],
    *,
    policy: Policy | str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    sandbox: bool | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> ConversionReport:
    """Convert one checkpoint to a checked safetensors file; raise instead of half-succeeding.

    ``source`` is a path or a ``VerifiedFile`` from ``safeload.verify`` (its hashed bytes are
    the ones converted). It is read with ``safeload.load`` under ``policy`` and ``limits``;
    ``sandbox`` is as for ``load`` (``None``: the policy decides). A refused input raises the
    loader's :class:`~safeload.errors.RefusedError`; a value safetensors cannot hold, an
    existing ``output`` (unless ``overwrite``) or a read-back that differs raises
    :class:`~safeload.errors.ConversionError`. Either way no file is left at ``output``.
    ``progress(done, total)`` is called with bytes of tensor data checked.
    """
    from safeload.formats._safe_globals import get_safe_globals
    from safeload.integrations._load import load_detailed
    from safeload.policy import audit_event, policy_gate

    started = time.monotonic()
    framework: Literal["torch", "numpy"] = (
        "torch" if importlib.util.find_spec("torch") is not None else "numpy"
    )
    name = _name_of(source)
    out = Path(os.fspath(output))
    _check_output(out, source, overwrite=overwrite)
    gate = policy_gate(policy, limits, source=source, registered_globals=get_safe_globals())
    loaded = load_detailed(source, framework=framework, policy=policy, limits=limits,
                           sandbox=sandbox)  # fmt: skip
    value, fmt, sandboxed = loaded.value, loaded.format, loaded.sandboxed
    sandbox_layers = loaded.layers  # what the worker reported applied
    flat = _flatten(value, name=name, is_tensor=_tensor_test(framework))
    del value
    if framework == "torch":
        _arrays_to_torch(flat, name)
    written, metadata = _prepare(flat, framework, name)

    def record(size: int, sha256: str) -> None:
        # Before the output gets its name: a policy audit_log that cannot be appended to
        # fails the conversion (as it fails a load) instead of leaving an unrecorded file.
        audit_event(
            "convert",
            gate.policy,
            path=name,
            output=str(out),
            target="safetensors",
            format=fmt,
            sha256=sha256,
            bytes=size,
            tensors=len(written),
            sandboxed=sandboxed,
            layers=list(sandbox_layers),
            notes=list(flat.notes),
        )

    size, sha256 = _write_checked(
        written, metadata, flat.tensors, out, framework=framework, limits=gate.limits,
        overwrite=overwrite, progress=progress, before_publish=record,
    )  # fmt: skip
    report = ConversionReport(
        source=name,
        output=str(out),
        target="safetensors",
        source_format=fmt,
        tensors=len(written),
        checked=len(written),
        bytes_written=size,
        sha256=sha256,
        sandboxed=sandboxed,
        layers=sandbox_layers,
        seconds=time.monotonic() - started,
        notes=tuple(flat.notes),
    )
    logger.debug("converted %s to %s: %d tensors checked", name, out, report.checked)
    return report


# -- before reading --------------------------------------------------------------------------
def _name_of(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fsdecode(os.fspath(source))
    path = getattr(source, "path", None) or getattr(source, "name", None)
    return str(path) if isinstance(path, (str, os.PathLike)) else ""


def _check_output(out: Path, source: object, *, overwrite: bool) -> None:
    """Refuse early what the final rename would refuse anyway (no point reading 10 GB first)."""
    parent = out.parent
    if not parent.is_dir():
        raise ConversionError(
            "output folder does not exist", path=str(out), rule="convert.output",
            detail=f"create {parent} first",
        )  # fmt: skip
    try:
        st = os.lstat(out)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ConversionError("cannot check output", path=str(out), rule="convert.output",
                              detail=str(exc)) from None  # fmt: skip
    if stat.S_ISDIR(st.st_mode):
        raise ConversionError("output is a folder", path=str(out), rule="convert.output",
                              detail="name the .safetensors file to write")  # fmt: skip
    name = _name_of(source)
    if name and _same_file(out, Path(name)):
        raise ConversionError(
            "output is the input file", path=str(out), rule="convert.output",
            detail="write the safetensors file next to the checkpoint, not over it",
        )  # fmt: skip
    if not overwrite:
        raise ConversionError(
            "output already exists", path=str(out), rule="convert.overwrite",
            detail="pass overwrite=True (--overwrite) to replace it",
        )  # fmt: skip


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


@contextmanager
def _mapped(path: Path, *, populate: bool = False, fd: int | None = None) -> Iterator[memoryview]:
    """A file's bytes as a read-only private map; ``populate`` faults it all in at once
    (one batched call instead of a fault per page while tensors are compared)."""
    own = fd is None
    if fd is None:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise SourceError("cannot open file", path=str(path), rule="source.open",
                              detail=str(exc)) from None  # fmt: skip
    try:
        size = os.fstat(fd).st_size
        if size == 0:
            yield memoryview(b"")
            return
        flags = mmap.MAP_PRIVATE | (getattr(mmap, "MAP_POPULATE", 0) if populate else 0)
        mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
        view = memoryview(mm)
        try:
            yield view
        finally:
            # Arrays read from it may still be alive (in a traceback, say): then the map is
            # unmapped when the last of them goes, and the error in flight is not masked.
            with suppress(BufferError):
                view.release()
            with suppress(BufferError):
                mm.close()
    finally:
        if own:
            os.close(fd)


# -- flattening ------------------------------------------------------------------------------
def _tensor_test(framework: str) -> Callable[[object], bool]:
    import numpy as np

    if framework == "torch":
        import torch

        # NumPy files (and NumPy arrays inside torch checkpoints) give arrays even then.
        return lambda v: isinstance(v, (torch.Tensor, np.ndarray))
    return lambda v: isinstance(v, np.ndarray)


# ml_dtypes' NumPy types torch cannot take from NumPy directly: same bits, as an integer view.
_BITS_AS = {
    "bfloat16": ("uint16", "bfloat16"),
    "float8_e4m3fn": ("uint8", "float8_e4m3fn"),
    "float8_e5m2": ("uint8", "float8_e5m2"),
}


def _arrays_to_torch(flat: _Flat, name: str) -> None:
    """Make every NumPy array a torch tensor over the same bytes (safetensors.torch needs
    tensors); the check then compares the written file with these exact bits."""
    import numpy as np
    import torch

    for key, value in flat.tensors.items():
        if not isinstance(value, np.ndarray):
            continue
        array = value if value.flags.writeable else value.copy()  # torch wants writable memory
        bits = _BITS_AS.get(array.dtype.name)
        try:
            if bits is not None:
                tensor = torch.from_numpy(array.view(bits[0])).view(getattr(torch, bits[1]))
            else:
                tensor = torch.from_numpy(array)
        except (TypeError, RuntimeError):
            raise ConversionError(
                f"array {key!r} has dtype {array.dtype}, which safetensors cannot hold",
                path=name or None, rule="convert.unsupported_value",
            ) from None  # fmt: skip
        flat.tensors[key] = tensor


def _flatten(value: object, *, name: str, is_tensor: Callable[[object], bool]) -> _Flat:
    """Name every tensor the way HF's convert script and ``load_state_dict`` users expect."""
    flat = _Flat()
    if is_tensor(value):
        raise ConversionError(
            "the file holds one bare tensor, not a state dict", path=name or None,
            rule="convert.unsupported_value", detail="safetensors stores named tensors",
        )  # fmt: skip
    if not isinstance(value, (Mapping, list, tuple)):
        raise ConversionError(
            f"the file holds a {type(value).__name__}, not a state dict", path=name or None,
            rule="convert.unsupported_value",
        )  # fmt: skip
    chosen = _state_key(value, is_tensor) if isinstance(value, Mapping) else None
    if chosen is None:
        _walk(value, "", flat, name=name, is_tensor=is_tensor)
    else:
        assert isinstance(value, Mapping)
        flat.notes.append(f"took the state dict under {chosen!r}")
        _walk(value[chosen], "", flat, name=name, is_tensor=is_tensor)
        dropped = []
        for key, item in value.items():
            if key == chosen:
                continue
            count = _count_tensors(item, is_tensor)
            if count:
                dropped.append(f"{key!r} ({count} tensor{'' if count == 1 else 's'})")
            else:
                _walk(item, _key(key, "", name), flat, name=name, is_tensor=is_tensor,
                      tensors_allowed=False)  # fmt: skip
        if dropped:
            flat.notes.append("dropped what is not the model's state dict: " + ", ".join(dropped))
    if not flat.tensors:
        raise ConversionError("the file holds no tensors", path=name or None,
                              rule="convert.no_tensors")  # fmt: skip
    if flat.metadata:
        flat.notes.append(
            f"kept {len(flat.metadata)} non-tensor values in __metadata__: "
            + _names(sorted(flat.metadata))
        )
    return flat


def _state_key(value: Mapping[Any, Any], is_tensor: Callable[[object], bool]) -> str | None:
    for key in _STATE_KEYS:
        nested = value.get(key)
        if isinstance(nested, Mapping) and _count_tensors(nested, is_tensor):
            return key
    return None


def _count_tensors(value: object, is_tensor: Callable[[object], bool]) -> int:
    if is_tensor(value):
        return 1
    if isinstance(value, Mapping):
        return sum(_count_tensors(v, is_tensor) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_tensors(v, is_tensor) for v in value)
    return 0


def _key(key: object, prefix: str, name: str) -> str:
    # bool is an int to Python, but a True key is not an index anyone means.
    if isinstance(key, str) or (isinstance(key, int) and not isinstance(key, bool)):
        return f"{prefix}.{key}" if prefix else str(key)
    raise ConversionError(
        f"a {type(key).__name__} key cannot name a tensor", path=name or None,
        rule="convert.unsupported_key", detail=f"under {prefix or 'the top level'!r}: {key!r}",
    )  # fmt: skip


def _walk(
    value: object,
    prefix: str,
    flat: _Flat,
    *,
    name: str,
    is_tensor: Callable[[object], bool],
    tensors_allowed: bool = True,
) -> None:
    if is_tensor(value):
        assert tensors_allowed  # callers only walk tensor-free values with tensors_allowed=False
        _put(flat.tensors, prefix, value, name)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _walk(item, _key(key, prefix, name), flat, name=name, is_tensor=is_tensor,
                  tensors_allowed=tensors_allowed)  # fmt: skip
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _walk(item, _key(index, prefix, name), flat, name=name, is_tensor=is_tensor,
                  tensors_allowed=tensors_allowed)  # fmt: skip
    elif value is None or isinstance(value, (str, int, float, bool)):
        # JSON text keeps the type (3 vs "3" vs 3.0); None is kept too: checkpoints are full
        # of `"scheduler": None` and refusing them would help no one.
        _put(flat.metadata, _META_PREFIX + prefix, json.dumps(value), name)
    else:
        raise ConversionError(
            f"{prefix or 'the top level'!r} is a {type(value).__name__}, which safetensors "
            "cannot hold",
            path=name or None,
            rule="convert.unsupported_value",
            detail="only tensors and str/int/float/bool/None values convert; load it with "
            "safeload.load and build the state dict you want to save",
        )


def _put(target: dict[str, Any], key: str, value: Any, name: str) -> None:
    if key in target:
        raise ConversionError(
            f"two values flatten to the name {key!r}", path=name or None,
            rule="convert.duplicate_name", detail="a dotted key collides with a nested one",
        )  # fmt: skip
    target[key] = value


def _names(names: list[str]) -> str:
    shown = ", ".join(names[:_NOTE_NAMES])
    more = len(names) - _NOTE_NAMES
    return shown + (f" and {more} more" if more > 0 else "")


# -- what gets written -----------------------------------------------------------------------
def _prepare(flat: _Flat, framework: str, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The tensors to hand to safetensors and the header metadata.

    Tied weights (several names, one storage, the same view) keep one name, as
    ``safetensors.torch.save_model`` does, and the others are recorded as ``{alias: kept}``
    in the metadata; other views sharing a storage are written as copies; everything is
    made contiguous. NumPy arrays never alias in a way safetensors refuses.
    """
    metadata = dict(flat.metadata)
    if framework != "torch":
        return {k: _contiguous_np(v) for k, v in flat.tensors.items()}, metadata
    metadata["format"] = "pt"  # what transformers checks before loading a safetensors file
    aliases, copies = _shared(flat.tensors)
    written: dict[str, Any] = {}
    made_contiguous = []
    for key, tensor in flat.tensors.items():
        if tensor.is_quantized or tensor.layout != _torch_strided():
            raise ConversionError(
                f"tensor {key!r} is {'quantized' if tensor.is_quantized else 'sparse'}, which "
                "safetensors cannot hold",
                path=name or None,
                rule="convert.unsupported_value",
                detail="dequantize or densify it after safeload.load, then save it yourself",
            )
        if key in aliases:
            continue
        if key in copies:
            written[key] = tensor.detach().clone(memory_format=_torch_contiguous())
        elif not tensor.is_contiguous():
            made_contiguous.append(key)
            written[key] = tensor.detach().contiguous()
        else:
            written[key] = tensor.detach()
    for alias, kept in aliases.items():
        _put(metadata, alias, kept, "")
    if aliases:
        pairs = [f"{alias} -> {kept}" for alias, kept in sorted(aliases.items())]
        flat.notes.append(f"{len(aliases)} tied tensors stored once: " + _names(pairs))
    if copies:
        flat.notes.append(
            f"{len(copies)} tensors shared storage with a different view; written as copies: "
            + _names(sorted(copies))
        )
    if made_contiguous:
        flat.notes.append(
            f"{len(made_contiguous)} non-contiguous tensors made contiguous: "
            + _names(made_contiguous)
        )
    return written, metadata


def _torch_strided() -> Any:
    import torch

    return torch.strided


def _torch_contiguous() -> Any:
    import torch

    return torch.contiguous_format


def _contiguous_np(array: Any) -> Any:
    import numpy as np

    return np.ascontiguousarray(array)


def _shared(tensors: Mapping[str, Any]) -> tuple[dict[str, str], set[str]]:
    """``({alias: kept}, names to copy)`` for tensors that share a storage."""
    groups: dict[tuple[int, int], list[str]] = {}
    for key, tensor in tensors.items():
        storage = tensor.untyped_storage()
        if storage.data_ptr() == 0 or storage.nbytes() == 0:
            continue  # empty tensors share nothing (safetensors skips them the same way)
        groups.setdefault((storage.data_ptr(), storage.nbytes()), []).append(key)
    aliases: dict[str, str] = {}
    copies: set[str] = set()
    for names in groups.values():
        if len(names) < 2:
            continue
        views: dict[tuple[Any, ...], list[str]] = {}
        for key in names:
            t = tensors[key]
            views.setdefault((t.storage_offset(), tuple(t.shape), t.stride(), t.dtype), []).append(
                key
            )
        for same in views.values():
            kept, *others = sorted(same)  # safetensors keeps the first name in sorted order
            aliases.update(dict.fromkeys(others, kept))
            if len(views) > 1:
                copies.add(kept)
    return aliases, copies


# -- writing and checking --------------------------------------------------------------------
def _write_checked(
    written: dict[str, Any],
    metadata: dict[str, str],
    originals: Mapping[str, Any],
    out: Path,
    *,
    framework: Literal["torch", "numpy"],
    limits: Limits,
    overwrite: bool,
    progress: Progress | None,
    before_publish: Callable[[int, str], None],
) -> tuple[int, str]:
    """Write to a temporary file, read it back and compare, then give it its name.

    Returns ``(size, sha256)`` of exactly the bytes that were compared; ``before_publish``
    gets them once the check passed, and can still stop the output from appearing.
    """
    fd, tmp = _create_temp(out.parent, out.name)
    done = False
    try:
        # The reserved file's mode is 0o644 less the umask; safetensors replaces it with its
        # own (0o600) temporary file by rename, so that file gets this mode back.
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        os.close(fd)
        fd = -1
        _save(written, metadata, tmp, framework, out)
        try:
            fd = os.open(
                tmp, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            )
            os.fchmod(fd, mode)
            os.fsync(fd)
        except OSError as exc:
            raise ConversionError("cannot write output", path=str(out), rule="convert.write",
                                  detail=str(exc)) from None  # fmt: skip
        with _mapped(tmp, populate=True, fd=fd) as view, ThreadPoolExecutor(1) as pool:
            size = len(view)
            # hashlib releases the GIL on big buffers: the hash runs while tensors compare.
            digest = pool.submit(lambda: hashlib.sha256(view).hexdigest())
            _check(view, written, metadata, originals, out, limits, progress)
            sha256 = digest.result()
        before_publish(size, sha256)
        _publish(tmp, out, overwrite=overwrite)
        done = True
    finally:
        if fd >= 0:
            os.close(fd)
        if not done:
            tmp.unlink(missing_ok=True)
    return size, sha256


def _create_temp(parent: Path, name: str) -> tuple[int, Path]:
    """O_EXCL in the output's folder (so the rename stays on one filesystem); mode 0o644
    less the umask, like any file the user writes."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(16):
        tmp = parent / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o644), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise ConversionError("cannot create output", path=str(parent / name),
                                  rule="convert.write", detail=str(exc)) from None  # fmt: skip
    raise ConversionError("cannot pick a temporary name", path=str(parent / name),
                          rule="convert.write")  # fmt: skip


def _save(
    written: dict[str, Any], metadata: dict[str, str], tmp: Path, framework: str, out: Path
) -> None:
    try:
        if framework == "torch":
            from safetensors.torch import save_file
        else:
            from safetensors.numpy import save_file  # type: ignore[assignment]
        save_file(written, tmp, metadata=metadata)
    except OSError as exc:
        raise ConversionError("cannot write output", path=str(out), rule="convert.write",
                              detail=str(exc)) from None  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - safetensors refuses with bare exceptions (dtype...)
        raise ConversionError(
            "safetensors cannot hold these tensors", path=str(out),
            rule="convert.unsupported_value",
            detail=f"{type(exc).__name__}: {str(exc).strip()[:300]}",
        ) from None  # fmt: skip


def _check(
    view: memoryview,
    written: Mapping[str, Any],
    metadata: Mapping[str, str],
    originals: Mapping[str, Any],
    out: Path,
    limits: Limits,
    progress: Progress | None,
) -> None:
    """Read the output back with safeload's reader and compare every tensor's raw bytes."""
    from safeload.formats import Format, read

    def differ(detail: str) -> ConversionError:
        return ConversionError("the written file does not match the input", path=str(out),
                               rule="convert.check", detail=detail)  # fmt: skip

    # Our own output, read in-process by the reader ``safeload.load`` uses for safetensors,
    # under the same limits. Not through ``load`` itself: the caller's policy governs the
    # untrusted input, and a policy decision (and audit line) about our temp file is noise.
    # As NumPy arrays: views of the read-only map, no copy, and materialised by another path
    # than the torch tensors they are compared with.
    try:
        result = read(view, name=str(out), limits=limits, framework="numpy")
    except SafeloadError as exc:
        raise differ(f"safeload cannot read it back: {exc.diagnostics()}") from None
    back = result.value
    if result.format is not Format.SAFETENSORS or result.wrappers:
        raise differ(f"it reads back as {result.format.value}, not safetensors")
    if not isinstance(back, dict) or set(back) != set(written):
        raise differ("tensor names differ")
    header_len = int.from_bytes(view[:8], "little")
    header = json.loads(bytes(view[8 : 8 + header_len]))
    if header.get("__metadata__", {}) != dict(metadata):
        raise differ("__metadata__ differs")
    total = sum(_nbytes(originals[k]) for k in written)
    done = 0
    if progress is not None:
        progress(0, total)
    for key in written:
        if not _same(originals[key], back[key]):
            raise differ(f"tensor {key!r}: dtype, shape or bytes differ")
        done += _nbytes(originals[key])
        if progress is not None:
            progress(done, total)
    del back


def _nbytes(tensor: Any) -> int:
    if hasattr(tensor, "element_size"):
        return int(tensor.numel() * tensor.element_size())
    return int(tensor.nbytes)


def _dtype_name(tensor: Any) -> str:
    # torch's and NumPy's (with ml_dtypes) names agree: float32, bfloat16, float8_e4m3fn, bool...
    return str(tensor.dtype).removeprefix("torch.")


def _same(a: Any, b: Any) -> bool:
    """Whether source tensor (or array) ``a`` and read-back array ``b`` hold the same dtype,
    shape and bytes. Raw bytes, not values: NaN != NaN and -0.0 == 0.0 would both mislead."""
    import numpy as np

    if not isinstance(b, np.ndarray) or _dtype_name(a) != b.dtype.name:
        return False
    if tuple(a.shape) != b.shape:
        return False
    return bool(np.array_equal(_wide(_bytes_of(a)), _wide(_bytes_of(b))))


def _bytes_of(tensor: Any) -> Any:
    """A tensor's or array's bytes as a flat uint8 NumPy array (a view when contiguous)."""
    import numpy as np

    if isinstance(tensor, np.ndarray):
        return np.ascontiguousarray(tensor).reshape(-1).view(np.uint8)
    import torch

    return tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()


def _wide(raw: Any) -> Any:
    """The same bytes as the widest integer items their count allows: comparing int64s
    runs several times faster than comparing single bytes."""
    import numpy as np

    for wide in (np.int64, np.int32, np.int16):
        if raw.size % np.dtype(wide).itemsize == 0:
            return raw.view(wide)
    return raw


def _publish(tmp: Path, out: Path, *, overwrite: bool) -> None:
    """Give the checked file its name: never clobbering unless asked, never half-written."""
    try:
        if overwrite:
            tmp.replace(out)
        else:
            try:
                os.link(tmp, out)  # fails if anything took the name since _check_output
            except FileExistsError:
                raise ConversionError(
                    "output already exists", path=str(out), rule="convert.overwrite",
                    detail="pass overwrite=True (--overwrite) to replace it",
                ) from None  # fmt: skip
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                    raise
                if os.path.lexists(out):  # no hard links here: check, then rename
                    raise ConversionError("output already exists", path=str(out),
                                          rule="convert.overwrite") from None  # fmt: skip
                tmp.replace(out)
            else:
                tmp.unlink()
        _fsync_dir(out.parent)
    except OSError as exc:
        raise ConversionError("cannot move output into place", path=str(out),
                              rule="convert.write", detail=str(exc)) from None  # fmt: skip


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return  # not every platform can open a folder; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)



"""``safeload.scan``: a verdict for every model file under some paths, without running any of them.

Each file is opened once, checked to be a regular file, mapped read-only (``MAP_PRIVATE``) and
handed as one buffer to content detection and then to the format analyser, which validates the
container, the pickle program and every tensor description without materialising tensors. No
byte of a scanned file is ever given to an unpickler, imported or executed; the attacker controls
every byte of every file here, and the only things we do with them are the allowlisted readers.

Which files are scanned is decided by *content*, not by name, with one documented exception:

* A file whose content is a known model format is always scanned, whatever it is called (a pickle
  named ``config.json`` is still a pickle).
* A file whose content is *not* a known model format is **skipped** only when its name is on the
  "not a model" rule below (:func:`skip_reason`) and its bytes look like what the name says
  (UTF-8 text for text names, the image magic for image names). Anything else unrecognised is
  **refused** as :class:`~safeload.errors.FormatError` (fail closed: a scanner that waves through
  what it cannot read is a scanner an attacker picks a new extension for).
* Python source (a ``*.py`` file whose text parses as Python; parsed with :func:`ast.parse`,
  never compiled to code or run) sitting in a *model folder* (a folder holding at least one
  scanned model file) is reported as a finding (:data:`PYTHON_IN_MODEL_FOLDER_CODE`): it is code
  that ``from_pretrained(trust_remote_code=True)`` would import, which safeload never does.
  Python source anywhere else (a project's own code, ``examples/make_examples.py``) is skipped. A
  ``.py`` file that does not parse as Python goes through the content rules like any other file.
* Empty files are skipped: they hold nothing a loader could run.

Folders are walked in sorted order without following directory links (no loops); file links are
followed (Hugging Face cache snapshots are links into ``blobs/``). Version-control metadata
(``.git``, ``.hg``, ``.svn``) and ``__pycache__`` folders are not entered.
"""

from __future__ import annotations

import ast
import logging
import mmap
import os
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from safeload.errors import (
    FormatError,
    LimitExceededError,
    RefusedError,
    SafeloadError,
    SourceError,
    UnsafeModelError,
)
from safeload.policy import Limits, Policy, PolicyGate

if TYPE_CHECKING:
    from safeload.formats import Format

__all__ = [
    "PYTHON_IN_MODEL_FOLDER_CODE",
    "FileResult",
    "ProgressCallback",
    "ScanReport",
    "Verdict",
    "scan",
    "skip_reason",
]

logger = logging.getLogger(__name__)

Verdict = Literal["clean", "unsafe", "error", "skipped"]
ProgressCallback = Callable[[int, int, str], None]
"""Called as ``progress(done, total, path)`` after each file; ``total`` is known up front."""

PYTHON_IN_MODEL_FOLDER_CODE = "SL110"
"""Rule id for Python source shipped inside a model folder (remote code a loader would import)."""

UNRECOGNISED_CODE = "SL210"
"""Rule id for a file whose content is no format safeload knows and whose name is not skippable."""

INTERNAL_ERROR_CODE = "SL001"
"""Rule id for a reader that failed in a way it did not anticipate (reported, never passed)."""

_PYTHON = "python"
_SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__"})

# Names whose unrecognised content is expected to be text a loader parses as data, never code.
_TEXT_SUFFIXES = frozenset(
    {
        ".json", ".jsonl", ".md", ".markdown", ".rst", ".txt", ".yaml", ".yml", ".toml",
        ".cfg", ".ini", ".csv", ".tsv", ".html", ".css", ".gitattributes", ".gitignore",
        ".license", ".cff", ".tiktoken",
    }
)  # fmt: skip
_TEXT_NAMES = frozenset({"license", "licence", "notice", "readme", "copying", "authors"})
# Binary formats that are data by construction and recognisable by their magic bytes.
_IMAGE_MAGIC: dict[str, tuple[bytes, ...]] = {
    ".png": (b"\x89PNG\r\n\x1a\n",),
    ".jpg": (b"\xff\xd8\xff",),
    ".jpeg": (b"\xff\xd8\xff",),
    ".gif": (b"GIF87a", b"GIF89a"),
    ".webp": (b"RIFF",),
}
# SentencePiece models are protobuf read by sentencepiece's C++ parser, which runs no code.
_SENTENCEPIECE_NAMES = frozenset({"tokenizer.model", "spiece.model", "sentencepiece.bpe.model"})
_PYTHON_SUFFIXES = frozenset({".py"})
_MAX_PYTHON_SOURCE = 16 << 20  # bigger ".py" files are judged by the content rules only
_TEXT_PROBE_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class FileResult:
    """The verdict on one file, with enough structure for JSON and SARIF without parsing text."""

    path: str
    format: str | None
    verdict: Verdict
    code: str | None = None
    rule: str | None = None
    message: str | None = None
    offset: int | None = None
    globals: tuple[str, ...] = ()
    """On refusal: the globals the file needs that no allowlist grants (review these)."""
    tensor_count: int | None = None
    size_bytes: int = 0
    seconds: float = 0.0
    detail: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "format": self.format,
            "verdict": self.verdict,
            "code": self.code,
            "rule": self.rule,
            "message": self.message,
            "detail": self.detail,
            "offset": self.offset,
            "globals": list(self.globals),
            "tensor_count": self.tensor_count,
            "size_bytes": self.size_bytes,
            "seconds": round(self.seconds, 6),
        }


@dataclass(frozen=True, slots=True)
class ScanReport:
    """Every file's result in walk order, and the exit code the CLI turns it into."""

    results: tuple[FileResult, ...]
    seconds: float = 0.0
    roots: tuple[str, ...] = field(default=())

    def _with(self, verdict: Verdict) -> tuple[FileResult, ...]:
        return tuple(r for r in self.results if r.verdict == verdict)

    @property
    def clean(self) -> tuple[FileResult, ...]:
        return self._with("clean")

    @property
    def unsafe(self) -> tuple[FileResult, ...]:
        return self._with("unsafe")

    @property
    def errors(self) -> tuple[FileResult, ...]:
        return self._with("error")

    @property
    def skipped(self) -> tuple[FileResult, ...]:
        return self._with("skipped")

    @property
    def scanned(self) -> tuple[FileResult, ...]:
        return tuple(r for r in self.results if r.verdict != "skipped")

    @property
    def exit_code(self) -> int:
        """1 if anything was refused (the verdict matters most), else 2 on errors, 3 if nothing
        was scanned, else 0."""
        if self.unsafe:
            return 1
        if self.errors:
            return 2
        if not self.clean:
            return 3
        return 0

    def to_dict(self) -> dict[str, object]:
        return {
            "roots": list(self.roots),
            "seconds": round(self.seconds, 6),
            "exit_code": self.exit_code,
            "summary": {
                "clean": len(self.clean),
                "unsafe": len(self.unsafe),
                "error": len(self.errors),
                "skipped": len(self.skipped),
            },
            "results": [r.to_dict() for r in self.results],
        }


def skip_reason(name: str, head: bytes) -> str | None:
    """Why a file whose content no reader recognised may be skipped, or ``None`` to refuse it.

    ``head`` is the start of the file (up to 64 KiB). The rule is an allowlist of names that
    hold data a model loader parses without running code, each confirmed by a content check.
    """
    lower = name.lower()
    suffix = Path(lower).suffix
    stem = Path(lower).stem
    if suffix in _TEXT_SUFFIXES or lower in _TEXT_SUFFIXES or stem in _TEXT_NAMES:
        return "text file (documentation or configuration)" if _is_text(head) else None
    magics = _IMAGE_MAGIC.get(suffix)
    if magics is not None:
        return "image" if head.startswith(magics) else None
    if lower in _SENTENCEPIECE_NAMES:
        return "SentencePiece tokenizer (protobuf data)"
    return None


def _is_text(head: bytes) -> bool:
    if b"\x00" in head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the probe window is still text.
        return exc.start >= len(head) - 3 and len(head) == _TEXT_PROBE_BYTES
    return True


def _walk(root: Path, problems: list[FileResult]) -> Iterable[Path]:
    def unreadable(exc: OSError) -> None:
        # A folder we cannot list is reported, never silently left out of the verdict.
        err = SourceError(
            "cannot list folder", path=str(exc.filename), rule="scan.walk", detail=exc.strerror
        )
        problems.append(_from_error(str(exc.filename), None, err, "error", 0, 0.0))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        for name in sorted(filenames):
            yield Path(dirpath) / name


def _collect(paths: Sequence[str | os.PathLike[str]]) -> tuple[list[Path], list[FileResult]]:
    files: list[Path] = []
    missing: list[FileResult] = []
    seen: set[str] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates: Iterable[Path] = _walk(path, missing)
        elif path.exists():
            candidates = (path,)
        else:
            err = SourceError("path does not exist", path=str(path), rule="scan.path")
            missing.append(_from_error(str(path), None, err, "error", 0, 0.0))
            continue
        for file in candidates:
            key = os.path.realpath(file)
            if key not in seen:
                seen.add(key)
                files.append(file)
    return files, missing


def scan(
    paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    *,
    limits: Limits | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    progress: ProgressCallback | None = None,
    sandbox: bool | None = None,
) -> ScanReport:
    """Scan files and folders; a verdict per file, never an exception for a bad model.

    Refusals (the model asks for code, is malformed, or exceeds ``limits``) become ``"unsafe"``
    results; operational failures (a missing path, an unreadable file) become ``"error"``
    results. Nothing in a scanned file is executed.

    Without ``policy`` the verdict is about content alone. With one (a ``Policy`` or a policy
    file), its limits apply and every file that reads cleanly is then decided and audited as
    ``safeload.load`` would decide it (formats allowed, size and tensor rules, signatures: a
    scanned file is never "verified", so a policy that requires signatures refuses it). A bad
    policy raises :class:`~safeload.errors.PolicyError` before any file is read.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    gate: PolicyGate | None = None
    if policy is not None:
        from safeload.formats._safe_globals import get_safe_globals
        from safeload.policy import policy_gate

        gate = policy_gate(policy, limits, registered_globals=get_safe_globals())
        limits = gate.limits
    limits = limits if limits is not None else Limits()
    worker = _sandbox_plan(gate, sandbox)
    started = time.perf_counter()
    files, results = _collect(paths)
    python_files = [f for f in files if f.suffix.lower() in _PYTHON_SUFFIXES]
    model_like = [f for f in files if f.suffix.lower() not in _PYTHON_SUFFIXES]
    total = len(files)
    done = 0
    model_dirs: set[str] = set()
    by_path: dict[Path, FileResult] = {}
    for file in model_like:
        result = _scan_file(file, limits, gate, worker)
        by_path[file] = result
        if result.verdict != "skipped":
            model_dirs.add(os.path.realpath(file.parent))
        done += 1
        if progress is not None:
            progress(done, total, str(file))
    for file in python_files:
        result = _scan_file(file, limits, gate, worker)
        if result.format == _PYTHON:
            result = _python_file(result, os.path.realpath(file.parent) in model_dirs)
        by_path[file] = result
        done += 1
        if progress is not None:
            progress(done, total, str(file))
    results.extend(by_path[f] for f in files)
    return ScanReport(
        results=tuple(results),
        seconds=time.perf_counter() - started,
        roots=tuple(str(p) for p in paths),
    )


def _python_file(found: FileResult, in_model_folder: bool) -> FileResult:
    if not in_model_folder:
        return replace(found, message="Python source outside a model folder")
    err = UnsafeModelError(
        "Python source shipped inside a model folder",
        path=found.path,
        rule="scan.python_in_model_folder",
        code=PYTHON_IN_MODEL_FOLDER_CODE,
        detail="loaders with trust_remote_code=True would import it; safeload never runs it",
    )
    return _from_error(found.path, _PYTHON, err, "unsafe", found.size_bytes, found.seconds)


def _is_python_source(path: Path, view: memoryview) -> bool:
    """A ``.py`` file whose text is valid Python (syntax tree only; nothing is compiled or run)."""
    if path.suffix.lower() not in _PYTHON_SUFFIXES or len(view) > _MAX_PYTHON_SOURCE:
        return False
    try:
        ast.parse(bytes(view).decode("utf-8"), filename=path.name)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False
    return True


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _from_error(
    path: str,
    fmt: str | None,
    err: SafeloadError,
    verdict: Verdict,
    size: int,
    seconds: float,
    offending: Sequence[str] = (),
) -> FileResult:
    return FileResult(
        path=path,
        format=fmt,
        verdict=verdict,
        code=err.code,
        rule=err.rule,
        message=err.message,
        detail=err.detail,
        offset=err.offset,
        globals=tuple(offending),
        size_bytes=size,
        seconds=seconds,
    )


def _open_regular(path: Path) -> tuple[int, int]:
    """Open without blocking on FIFOs or devices; only regular files are read."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise SourceError(
            "cannot open file", path=str(path), rule="scan.open", detail=exc.strerror
        ) from exc
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SourceError("not a regular file", path=str(path), rule="scan.file_type")
    return fd, st.st_size


def _sandbox_plan(gate: PolicyGate | None, sandbox: bool | None) -> tuple[str, ...] | None:
    """None: parse in-process; else the layers each file's worker must have."""
    if sandbox is not None and type(sandbox) is not bool:
        from safeload.errors import UsageError

        raise UsageError("sandbox must be True, False or None", rule="scan.sandbox")
    if gate is None:
        return () if sandbox else None
    from safeload.policy import needs_sandbox

    required = needs_sandbox(gate.policy, verified=False)
    if sandbox is False and required and gate.policy.mode == "enforce":
        from safeload.errors import PolicyViolation

        raise PolicyViolation(
            f"refused by policy: sandbox mode {gate.policy.sandbox.mode!r} requires parsing "
            "in the sandbox worker, and sandbox=False was passed",
            rule="sandbox.mode",
            detail="drop --no-sandbox (the policy decides) or pass --sandbox",
        )
    use = required if sandbox is None else sandbox
    return tuple(gate.policy.sandbox.required_layers) if use else None


def _scan_file(
    path: Path, limits: Limits, gate: PolicyGate | None, worker: tuple[str, ...] | None = None
) -> FileResult:
    started = time.perf_counter()
    try:
        fd, size = _open_regular(path)
    except SafeloadError as exc:
        return _from_error(str(path), None, exc, "error", _size(path), 0.0)
    try:
        work = lambda: _scan_fd(fd, path, size, limits, gate, started, worker)  # noqa: E731
        return _guarded(path, size, started, work)
    finally:
        os.close(fd)


def _scan_fd(
    fd: int,
    path: Path,
    size: int,
    limits: Limits,
    gate: PolicyGate | None,
    started: float,
    worker: tuple[str, ...] | None = None,
) -> FileResult:
    if size > limits.max_file_bytes:
        raise LimitExceededError(
            "file is larger than the policy allows",
            path=str(path),
            rule="limits.max_file_bytes",
            detail=f"{size} > {limits.max_file_bytes} bytes",
        )
    if size == 0:
        fmt = _PYTHON if path.suffix.lower() in _PYTHON_SUFFIXES else None
        return FileResult(str(path), fmt, "skipped", message="empty file", seconds=0.0)
    mapped = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
    try:
        # Exceptions become results inside _guarded, so no traceback still pins a view of the
        # mapping by the time it is closed.
        work = lambda: _scan_buffer(  # noqa: E731
            path, memoryview(mapped), limits, gate, size, started, fd, worker
        )
        return _guarded(path, size, started, work)
    finally:
        try:
            mapped.close()
        except BufferError:
            # A reader kept a view alive (e.g. in a cached object); the mapping is released
            # when that view is collected. It is read-only and private either way.
            logger.debug("mapping of %s still exported; left to the garbage collector", path)


def _guarded(
    path: Path, size: int, started: float, work: Callable[[], FileResult]
) -> FileResult:
    """Run ``work``; every exception becomes a verdict (refusal, error, or internal error)."""
    try:
        return work()
    except RefusedError as exc:
        exc.with_path(str(path))
        return _from_error(str(path), None, exc, "unsafe", size, time.perf_counter() - started)
    except SafeloadError as exc:
        exc.with_path(str(path))
        return _from_error(str(path), None, exc, "error", size, time.perf_counter() - started)
    except Exception as exc:  # a reader bug is reported as an error, never as a pass
        logger.debug("reader failed unexpectedly on %s", path, exc_info=True)
        err = SafeloadError(
            "internal error while reading",
            path=str(path),
            rule="scan.internal",
            code=INTERNAL_ERROR_CODE,
            detail=f"{type(exc).__name__}: {exc}",
        )
        return _from_error(str(path), None, err, "error", size, time.perf_counter() - started)


def _unrecognised(path: Path, head: bytes, size: int, started: float) -> FileResult:
    reason = skip_reason(path.name, head)
    if reason is not None:
        return FileResult(
            path=str(path), format=None, verdict="skipped", message=reason, size_bytes=size,
            seconds=time.perf_counter() - started,
        )  # fmt: skip
    raise FormatError(
        "content is not a model format safeload reads, and the name is not a known data file",
        path=str(path),
        rule="scan.unrecognised",
        code=UNRECOGNISED_CODE,
        detail="refused rather than skipped: see the skip rule in docs/cli.md",
    )


def _scan_buffer(
    path: Path,
    view: memoryview,
    limits: Limits,
    gate: PolicyGate | None,
    size: int,
    started: float,
    fd: int | None = None,
    worker: tuple[str, ...] | None = None,
) -> FileResult:
    """One file's verdict: the readers' survey (here, or in a sandbox worker reading ``fd``
    when ``worker`` names its required layers), then the policy's decision on it.

    The parent keeps what needs no parsing of model bytes: the name and text-probe rules for
    files no reader knows, the syntax check of ``.py`` files (CPython's own parser, nothing
    compiled), and the policy's decision (pinned hashes are taken over the parent's mapping).
    """
    if _is_python_source(path, view):
        return FileResult(
            str(path), _PYTHON, "skipped", size_bytes=size, seconds=time.perf_counter() - started
        )
    if worker is None:
        from safeload.formats._survey import survey

        found = survey(view, name=path.name, limits=limits)
        refused: SafeloadError | None = found.refused
        fmt, offending = found.format, found.globals
        shapes: list[tuple[int, ...]] = [tuple(t.shape) for t in found.tensors]
    else:
        assert fd is not None
        fmt, refused, offending, shapes = _survey_in_worker(fd, path, limits, worker)
    if refused is not None:
        refused.with_path(str(path))
        verdict: Verdict = "unsafe" if isinstance(refused, RefusedError) else "error"
        return _from_error(str(path), fmt, refused, verdict, size,
                           time.perf_counter() - started, offending)  # fmt: skip
    if fmt is None:
        return _unrecognised(path, bytes(view[:_TEXT_PROBE_BYTES]), size, started)
    if gate is not None:
        # Raises PolicyViolation (a refusal) when the policy, in enforce mode, says no.
        gate.check(view, name=str(path), fmt=fmt.value, shapes=shapes,
                   sandboxed=worker is not None)  # fmt: skip
    return FileResult(
        path=str(path),
        format=fmt,
        verdict="clean",
        tensor_count=len(shapes),
        size_bytes=size,
        seconds=time.perf_counter() - started,
    )


def _survey_in_worker(
    fd: int, path: Path, limits: Limits, required: Sequence[str]
) -> tuple[Format | None, SafeloadError | None, tuple[str, ...], list[tuple[int, ...]]]:
    """The worker's ``scan`` task (the same ``survey``), its answer checked as untrusted."""
    from safeload.errors import SandboxError
    from safeload.formats import Format
    from safeload.sandbox._runner import SandboxInput, _rebuild_error, run_in_sandbox

    item = SandboxInput(fd, path.name, path=Path(os.path.realpath(path)))
    meta = run_in_sandbox("scan", [item], limits=limits, required_layers=required).meta
    raw = meta.get("format")
    if raw == "unknown":
        return None, None, (), []
    try:
        fmt = Format(str(raw))
    except ValueError:
        raise SandboxError("the worker reported no known format", path=str(path),
                           rule="sandbox.result") from None  # fmt: skip
    if meta.get("refused") is not None:
        found = meta.get("globals") or []
        offending = tuple(g for g in found if isinstance(g, str))[:1000]
        return fmt, _rebuild_error(meta["refused"], str(path)), offending, []
    raw_shapes = meta.get("shapes")
    if not isinstance(raw_shapes, list) or len(raw_shapes) > limits.max_tensors or not all(
        isinstance(s, list) and all(type(d) is int and d >= 0 for d in s) for s in raw_shapes
    ):
        raise SandboxError("the worker reported malformed shapes", path=str(path),
                           rule="sandbox.result")  # fmt: skip
    return fmt, None, (), [tuple(s) for s in raw_shapes]

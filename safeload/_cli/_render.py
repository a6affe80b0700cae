"""Turn a :class:`~safeload.ScanReport` into text, JSON or SARIF 2.1.0.

Renderers are pure functions from a report to a string, so the same bytes go to stdout or to
``--output`` and tests can check them without a terminal. SARIF rule ids are the stable error
codes (``SL101``...), taken from the exception tree itself so a new error class gets a rule
without touching this file; the text is for GitHub code scanning and other SARIF viewers.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.table import Table
from rich.text import Text

import safeload
from safeload import errors
from safeload.integrations._scan import (
    INTERNAL_ERROR_CODE,
    PYTHON_IN_MODEL_FOLDER_CODE,
    UNRECOGNISED_CODE,
    FileResult,
    ScanReport,
)

__all__ = [
    "SARIF_SCHEMA_URI",
    "render",
    "render_inspect",
    "render_json",
    "render_sarif",
    "render_text",
    "rule_catalogue",
    "sarif_document",
]

SARIF_SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
_SARIF_VERSION = "2.1.0"
_DOCS_PAGE = "docs/cli.md"

# Codes the scanner itself emits, beyond one per exception class.
_SCANNER_RULES: dict[str, tuple[str, str]] = {
    INTERNAL_ERROR_CODE: (
        "ReaderInternalError",
        "A reader failed in a way it did not anticipate; the file is not treated as clean.",
    ),
    PYTHON_IN_MODEL_FOLDER_CODE: (
        "PythonInModelFolder",
        "Python source ships inside a model folder; trust_remote_code loaders would import it.",
    ),
    UNRECOGNISED_CODE: (
        "UnrecognisedContent",
        "The content is no format safeload reads and the name is not a known data file.",
    ),
}

# Finer codes the pickle reader raises within the SL1xx family (see formats/_pickle_vm.py).
_READER_RULES: dict[str, tuple[str, str]] = {
    "SL102": (
        "DisallowedOpcode",
        "The pickle uses an opcode, or an opcode on an operand, that is not allowed.",
    ),
    "SL103": (
        "DisallowedConstruct",
        "An allowlisted global was called or built with arguments outside its safe shape.",
    ),
    "SL104": (
        "UnexpectedPersistentId",
        "A persistent id appears in a pickle whose container does not define any.",
    ),
    "SL105": ("BadMemoReference", "The pickle reads a memo slot it never wrote."),
}

_VERDICT_STYLE = {"clean": "green", "unsafe": "bold red", "error": "yellow", "skipped": "dim"}


def _error_classes() -> Iterator[type[errors.SafeloadError]]:
    todo: list[type[errors.SafeloadError]] = [errors.SafeloadError]
    while todo:
        cls = todo.pop()
        yield cls
        todo.extend(cls.__subclasses__())


def rule_catalogue() -> dict[str, tuple[str, str]]:
    """``code -> (name, one-line description)`` for every code safeload can report."""
    table: dict[str, tuple[str, str]] = {}
    for cls in _error_classes():
        doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        table.setdefault(cls.code, (cls.__name__, doc))
    for code, entry in {**_READER_RULES, **_SCANNER_RULES}.items():
        table.setdefault(code, entry)
    return dict(sorted(table.items()))


def _rule_for(code: str, catalogue: Mapping[str, tuple[str, str]]) -> tuple[str, str]:
    if code in catalogue:
        return catalogue[code]
    # A finer code a reader added (SL1xx): describe it by its family (SL100).
    family = catalogue.get(code[:3] + "00")
    if family is not None:
        return f"{family[0]}{code}", family[1]
    return f"Rule{code}", "A safeload finding."


def render(report: ScanReport, fmt: str, *, color: bool = False, width: int | None = None) -> str:
    if fmt == "json":
        return render_json(report)
    if fmt == "sarif":
        return render_sarif(report)
    return render_text(report, color=color, width=width)


def render_json(report: ScanReport) -> str:
    doc = {"tool": "safeload", "version": safeload.__version__, **report.to_dict()}
    return json.dumps(doc, indent=2) + "\n"


def render_text(report: ScanReport, *, color: bool = False, width: int | None = None) -> str:
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        force_terminal=color,
        no_color=not color,
        width=width or max(120, max((len(r.path) for r in report.results), default=0) + 100),
        highlight=False,
        soft_wrap=False,
    )
    if report.results:
        table = Table(show_edge=False, pad_edge=False, expand=False)
        table.add_column("verdict", no_wrap=True)
        table.add_column("file", no_wrap=True)
        table.add_column("format", no_wrap=True)
        table.add_column("tensors", justify="right", no_wrap=True)
        table.add_column("finding", overflow="fold")
        for r in report.results:
            table.add_row(
                Text(r.verdict, style=_VERDICT_STYLE[r.verdict]),
                r.path,
                r.format or "-",
                "-" if r.tensor_count is None else str(r.tensor_count),
                _finding_text(r),
            )
        console.print(table)
    console.print(_summary(report))
    return buffer.getvalue()


def _finding_text(r: FileResult) -> str:
    if r.verdict == "clean":
        return ""
    if r.verdict == "skipped":
        return r.message or "not a model file"
    parts = [f"{r.code} {r.message or ''}".strip()]
    if r.globals:
        parts.append("needs " + ", ".join(r.globals))
    if r.rule:
        parts.append(f"[rule {r.rule}]")
    if r.offset is not None:
        parts.append(f"@ byte {r.offset}")
    return " ".join(parts)


def _summary(report: ScanReport) -> str:
    return (
        f"{len(report.scanned)} scanned: {len(report.clean)} clean, {len(report.unsafe)} unsafe, "
        f"{len(report.errors)} error; {len(report.skipped)} skipped "
        f"({report.seconds:.2f} s) -> exit {report.exit_code}"
    )


def _artifact_location(path: str) -> dict[str, Any]:
    """Relative to the working directory when under it (what code scanning expects)."""
    resolved = Path(path).absolute()
    try:
        rel = resolved.relative_to(Path.cwd())
    except ValueError:
        return {"uri": resolved.as_uri()}
    return {"uri": quote(rel.as_posix()), "uriBaseId": "%SRCROOT%"}


def _docs_uri() -> str | None:
    try:
        urls = metadata.metadata("safeload").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        return None
    for entry in urls:
        label, _, url = entry.partition(",")
        if label.strip().lower() == "documentation" and url.strip():
            return str(url.strip().rstrip("/"))
    return None


def render_sarif(report: ScanReport) -> str:
    return json.dumps(sarif_document(report), indent=2) + "\n"


def sarif_document(report: ScanReport) -> dict[str, Any]:
    """One SARIF run: refusals are results; operational errors are tool notifications."""
    catalogue = rule_catalogue()
    docs = _docs_uri()
    findings = report.unsafe
    used = sorted({r.code or errors.RefusedError.code for r in findings})
    rules = []
    for code in used:
        name, text = _rule_for(code, catalogue)
        rule: dict[str, Any] = {
            "id": code,
            "name": name,
            "shortDescription": {"text": text},
            "fullDescription": {"text": text},
            "help": {
                "text": f"{text} See {_DOCS_PAGE} (rule {code}).",
                "markdown": f"{text} See [{_DOCS_PAGE}]({_DOCS_PAGE}#{code.lower()}).",
            },
            "defaultConfiguration": {"level": "error"},
            "properties": {"tags": ["security", "model-file"]},
        }
        if docs is not None:
            rule["helpUri"] = f"{docs}/cli.html#{code.lower()}"
        rules.append(rule)
    index = {code: i for i, code in enumerate(used)}
    results = [_sarif_result(r, index) for r in findings]
    notifications = [
        {
            "level": "error",
            "message": {"text": f"{r.code} {r.message or ''}: {r.path}".strip()},
            "locations": [{"physicalLocation": {"artifactLocation": _artifact_location(r.path)}}],
            "descriptor": {"id": r.code or errors.SafeloadError.code},
        }
        for r in report.errors
    ]
    driver: dict[str, Any] = {
        "name": "safeload",
        "version": safeload.__version__,
        "semanticVersion": safeload.__version__,
        "rules": rules,
    }
    if docs is not None:
        driver["informationUri"] = docs
    run: dict[str, Any] = {
        "tool": {"driver": driver},
        "originalUriBaseIds": {"%SRCROOT%": {"uri": Path.cwd().as_uri() + "/"}},
        "invocations": [
            {
                "executionSuccessful": not report.errors,
                "exitCode": report.exit_code,
                "toolExecutionNotifications": notifications,
            }
        ],
        "results": results,
        "columnKind": "unicodeCodePoints",
    }
    return {"$schema": SARIF_SCHEMA_URI, "version": _SARIF_VERSION, "runs": [run]}


def _sarif_result(r: FileResult, index: Mapping[str, int]) -> dict[str, Any]:
    code = r.code or errors.RefusedError.code
    text = r.message or "refused"
    if r.globals:
        text += ": needs " + ", ".join(r.globals)
    if r.detail:
        text += f". {r.detail}"
    physical: dict[str, Any] = {"artifactLocation": _artifact_location(r.path)}
    if r.offset is not None and r.offset >= 0:
        physical["region"] = {"byteOffset": r.offset, "byteLength": 1}
    return {
        "ruleId": code,
        "ruleIndex": index[code],
        "level": "error",
        "kind": "fail",
        "message": {"text": text},
        "locations": [{"physicalLocation": physical}],
        "properties": {
            "format": r.format,
            "rule": r.rule,
            "globals": list(r.globals),
            "sizeBytes": r.size_bytes,
        },
    }


# -- inspect -----------------------------------------------------------------------------------


def render_inspect(info: safeload.ModelInfo, fmt: str, *, color: bool = False) -> str:
    """A file's tensor table: rich text for people, JSON (``ModelInfo.to_dict``) for tools."""
    if fmt == "json":
        return json.dumps(info.to_dict(), indent=2) + "\n"
    buffer = io.StringIO()
    console = Console(
        file=buffer, force_terminal=color, no_color=not color, width=120, highlight=False
    )
    wrappers = f" inside {' > '.join(info.wrappers)}" if info.wrappers else ""
    console.print(f"{info.path}: {info.format.value}{wrappers}, {info.size} bytes")
    table = Table(show_edge=False, pad_edge=False)
    table.add_column("tensor", overflow="fold")
    table.add_column("dtype", no_wrap=True)
    table.add_column("shape", no_wrap=True)
    table.add_column("bytes", justify="right", no_wrap=True)
    table.add_column("offset", justify="right", no_wrap=True)
    total = 0
    for t in info.tensors:
        total += t.nbytes
        table.add_row(
            t.name,
            t.dtype,
            str(tuple(t.shape)),  # Python tuple spelling: (16,) for one dim, () for a scalar
            str(t.nbytes),
            "-" if t.offset is None else str(t.offset),
        )
    if info.tensors:
        console.print(table)
    console.print(f"{len(info.tensors)} tensors, {total} bytes of tensor data")
    return buffer.getvalue()

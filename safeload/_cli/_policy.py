"""``safeload policy``: check, show, export and explain policies.

Why ``explain`` exists: a refusal in production should be reproducible on a laptop. It runs
the same :func:`~safeload.policy.decide` the loader runs, on the file's detected format, size
and digest, so the rules it prints are the rules ``safeload.load`` would apply. It never parses
the model beyond format detection; when the folder has a ``model.sig`` it is verified against
the same policy, so signature rules are judged on real signatures.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from safeload.errors import FormatError, PolicyError, SafeloadError, SourceError
from safeload.policy import (
    Candidate,
    Decision,
    Policy,
    decide,
    effective_policy,
    load_policy,
    policy_files,
    provenance,
)

__all__ = ["policy"]

_SIGNATURE = "model.sig"

_FORMAT = click.option(
    "--format",
    "output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
_POLICY = click.option(
    "--policy",
    "policy_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Policy file (default: discovery: $SAFELOAD_POLICY, ./safeload.toml, ...).",
)


@click.group(name="policy")
def policy() -> None:
    """Validate, show, explain and export safeload policies."""


@policy.command("check")
@click.argument("file", type=click.Path(path_type=Path))
def check(file: Path) -> None:
    """Validate FILE and everything it extends (exit 0 valid, 1 invalid)."""
    try:
        loaded = load_policy(file)
    except PolicyError as exc:
        click.echo(f"safeload: invalid policy: {exc.diagnostics()}", err=True)
        raise SystemExit(1) from None
    click.echo(f"ok: {file} (mode {loaded.mode}, policy digest {loaded.digest()})")


@policy.command("show")
@_POLICY
@_FORMAT
def show(policy_file: Path | None, output: str) -> None:
    """Print the effective policy and which file set each value."""
    effective = effective_policy(policy_file)
    sources = provenance(effective)
    if output == "json":
        doc = {
            "policy": effective.model_dump(mode="json"),
            "provenance": sources,
            "files": list(policy_files(effective)),
            "digest": effective.digest(),
        }
        click.echo(json.dumps(doc, indent=2))
        return
    click.echo(f"# effective policy {effective.digest()}")
    click.echo(f"# built from: {', '.join(policy_files(effective))}")
    flat = _flatten(effective.model_dump(mode="json"))
    width = min(56, max(len(f"{k} = {_toml(v)}") for k, v in flat.items() if k in sources))
    for leaf, source in sources.items():
        text = f"{leaf} = {_toml(flat[leaf])}"
        click.echo(f"{text:<{width}}  # {source}")


@policy.command("schema")
def schema() -> None:
    """Print the policy JSON Schema (every field documented)."""
    click.echo(json.dumps(Policy.model_json_schema(), indent=2))


@policy.command("explain")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@_POLICY
@_FORMAT
def explain(path: Path, policy_file: Path | None, output: str) -> None:
    """Say what the effective policy would decide for the model at PATH, and why.

    Exit 0 when every file is allowed (or only recorded, in audit mode), 1 when one is refused.
    """
    effective = effective_policy(policy_file)
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    files = [f for f in files if f.name != _SIGNATURE]
    signed, signature_note = _verification(path, effective)
    decisions = []
    for file in files:
        candidate = _candidate(file, effective)
        signers = signed.get(str(file.resolve()))
        if signers is not None:
            candidate = replace(candidate, verified=True, signers=signers)
        decisions.append(decide(candidate, effective))
    if output == "json":
        doc = [_decision_json(d) | {"signature": signature_note} for d in decisions]
        click.echo(json.dumps(doc, indent=2, default=str))
    else:
        click.echo(f"policy {effective.digest()} (mode {effective.mode})")
        click.echo(f"  from: {', '.join(policy_files(effective))}")
        click.echo(f"  signature: {signature_note}")
        for d in decisions:
            click.echo(d.explain())
            cand = d.candidate
            click.echo(f"  size {cand.size_bytes} bytes, sha256 {cand.digest}")
            for hit in d.rules:
                click.echo(f"    seen {hit.seen!r}, limit {hit.limit!r}")
    if any(d.verdict == "refuse" for d in decisions):
        raise SystemExit(1)


def _verification(path: Path, effective: Policy) -> tuple[dict[str, tuple[str, ...]], str]:
    """Verify the folder's ``model.sig`` against the policy: verified file -> its signers."""
    folder = path if path.is_dir() else path.parent
    if not (folder / _SIGNATURE).is_file():
        return {}, f"unsigned (no {_SIGNATURE} in {folder})"
    from safeload.signing import verify

    try:
        model = verify(folder, policy=effective, keep_bytes=False)
    except SafeloadError as exc:
        return {}, f"did not verify: {exc.diagnostics()}"
    signed = {str(Path(f.path).resolve()): model.signers for f in model}
    return signed, f"verified by {', '.join(model.signers)}"


def _candidate(file: Path, effective: Policy) -> Candidate:
    """Detect format, size and digest from one read-only mapping of the file."""
    digest = hashlib.sha256()
    fmt = "unknown"
    try:
        with file.open("rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            if size:
                with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as view:
                    fmt = _detect_format(view, str(file), effective)
                    digest.update(view)
    except OSError as exc:
        raise SourceError(
            "cannot read the model file", path=str(file), rule="source.open", detail=str(exc)
        ) from None
    return Candidate(path=str(file), format=fmt, size_bytes=size, digest=digest.hexdigest())


def _detect_format(view: mmap.mmap, name: str, effective: Policy) -> str:
    from safeload.formats import detect

    with memoryview(view) as data:
        try:
            return str(detect(data, name=name, limits=effective.limits).format.value)
        except FormatError:
            return "unknown"


def _decision_json(decision: Decision) -> dict[str, Any]:
    cand = decision.candidate
    return {
        "path": cand.path,
        "format": cand.format,
        "size_bytes": cand.size_bytes,
        "digest": cand.digest,
        "verdict": decision.verdict,
        "allowed": decision.allowed,
        "mode": decision.mode,
        "rules": [hit.to_dict() for hit in decision.rules],
        "policy_digest": decision.policy.digest(),
    }


def _flatten(doc: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and key != "extends" and key in Policy.model_fields:
            for sub, inner in value.items():
                flat[f"{key}.{sub}"] = inner
        else:
            flat[key] = value
    return flat


def _toml(value: Any) -> str:
    """A TOML-ish rendering good enough to read (and mostly paste back)."""
    if value is None:
        return "(unset)"
    return json.dumps(value)

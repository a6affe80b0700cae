"""Audit lines: one JSON object per decision or unsafe option, for people who watch fleets.

Why a dedicated ``safeload.audit`` logger and never a handler of our own: the application owns
logging; it routes ``safeload.audit`` to its SIEM however it likes. The optional ``audit_log``
file is for hosts without that plumbing. Writing it is part of the decision: if the file cannot
be appended to, the load fails with a :class:`PolicyError` instead of silently going unrecorded.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from safeload.errors import PolicyError, UsageError
from safeload.policy._decide import Decision
from safeload.policy._models import Policy

__all__ = ["AUDIT_LOGGER_NAME", "audit", "audit_event", "audit_unsafe_option"]

AUDIT_LOGGER_NAME = "safeload.audit"
_audit_logger = logging.getLogger(AUDIT_LOGGER_NAME)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _emit(record: dict[str, Any], audit_log: str | None, level: int) -> dict[str, Any]:
    line = json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))
    _audit_logger.log(level, line)
    if audit_log is not None:
        try:
            # O_APPEND: concurrent processes each add whole lines (one write per line).
            fd = os.open(audit_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise PolicyError(
                "cannot append to the audit log", path=audit_log, rule="audit_log", detail=str(exc)
            ) from None
    return record


def _listening(level: int) -> bool:
    """Whether a record at ``level`` would reach a handler that does something with it.

    Mirrors ``Logger.callHandlers``: a disabled level, or handlers up the propagation chain
    that are all ``NullHandler`` or above ``level``, drop the record; no handler at all sends
    it to ``logging.lastResort`` (stderr, WARNING and up), which counts as listening."""
    if not _audit_logger.isEnabledFor(level):
        return False
    found = False
    logger: logging.Logger | None = _audit_logger
    while logger is not None:
        for handler in logger.handlers:
            found = True
            if not isinstance(handler, logging.NullHandler) and level >= handler.level:
                return True
        logger = logger.parent if logger.propagate else None
    last = logging.lastResort
    return not found and last is not None and level >= last.level


def _base(event: str) -> dict[str, Any]:
    return {"event": event, "time": _now(), "host": socket.gethostname(), "pid": os.getpid()}


def audit(decision: Decision, *, unsafe_options: Sequence[str] = ()) -> dict[str, Any]:
    """Record ``decision`` to the ``safeload.audit`` logger and the policy's ``audit_log``.

    Returns the record written. Violations log at WARNING, clean decisions at INFO. When
    nothing would record it (no ``audit_log``, no handler for that level) the record is not
    built and ``{}`` is returned: this runs on every load.
    """
    level = logging.INFO if decision.allowed else logging.WARNING
    if decision.policy.audit_log is None and not _listening(level):
        return {}
    cand = decision.candidate
    record = _base("decision") | {
        "path": cand.path,
        "digest": cand.digest,
        "format": cand.format,
        "signer": list(cand.signers),
        "verified": cand.verified,
        "repo": cand.repo,
        "revision": cand.revision,
        "verdict": decision.verdict,
        "rules": [hit.to_dict() for hit in decision.rules],
        "policy_digest": decision.policy.digest(),
        "mode": decision.mode,
        "unsafe_options": list(unsafe_options),
    }
    return _emit(record, decision.policy.audit_log, level)


def audit_event(
    event: str, policy: Policy | None = None, *, level: int = logging.INFO, **fields: Any
) -> dict[str, Any]:
    """Record an event that is not a load decision (a patch installed, shipped code ignored).

    Same destinations and fail-closed ``audit_log`` as :func:`audit`; ``fields`` are added to
    the record as given. Returns the record, or ``{}`` when nothing would record it.
    """
    audit_log = None if policy is None else policy.audit_log
    if audit_log is None and not _listening(level):
        return {}
    record = _base(event) | fields | {
        "policy_digest": None if policy is None else policy.digest(),
        "mode": None if policy is None else policy.mode,
    }
    return _emit(record, audit_log, level)


def audit_unsafe_option(
    name: str, detail: str, *, path: str | None = None, policy: Policy | None = None
) -> dict[str, Any]:
    """Record that an ``unsafe_...`` option was used; every use, every time."""
    if not name.startswith("unsafe_"):
        raise UsageError(f"unsafe options are named unsafe_...; got {name!r}", rule="audit")
    record = _base("unsafe_option") | {
        "option": name,
        "detail": detail,
        "path": path,
        "policy_digest": None if policy is None else policy.digest(),
        "mode": None if policy is None else policy.mode,
    }
    return _emit(record, None if policy is None else policy.audit_log, logging.WARNING)

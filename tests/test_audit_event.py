"""The public ``audit_event`` and the audit fast path (no record built when nobody listens).

Listeners are real ``logging`` handlers on real loggers; each test restores what it changed.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from safeload.policy import (
    AUDIT_LOGGER_NAME,
    Candidate,
    Policy,
    audit,
    audit_event,
    decide,
)


class _Lines(logging.Handler):
    def __init__(self, level: int = logging.NOTSET) -> None:
        super().__init__(level)
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(record.getMessage()))


@contextmanager
def _only(*handlers: logging.Handler, level: int = logging.INFO) -> Iterator[None]:
    """``safeload.audit`` with exactly these handlers and nothing above it (no propagation,
    so pytest's own capture handler on the root logger does not count as a listener)."""
    log = logging.getLogger(AUDIT_LOGGER_NAME)
    saved = (log.handlers[:], log.level, log.propagate)
    log.handlers[:] = list(handlers)
    log.setLevel(level)
    log.propagate = False
    try:
        yield
    finally:
        log.handlers[:], log.level, log.propagate = saved[0], saved[1], saved[2]


def _clean() -> Candidate:
    return Candidate(path="/m/model.safetensors", format="safetensors", size_bytes=8)


def test_audit_event_is_public_and_records_policy_and_fields(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    policy = Policy(mode="audit", audit_log=str(log))
    sink = _Lines()
    with _only(sink):
        record = audit_event("patched", policy, target="torch.load")
    assert record["event"] == "patched" and record["target"] == "torch.load"
    assert record["policy_digest"] == policy.digest() and record["mode"] == "audit"
    assert sink.lines == [record]
    assert [json.loads(x) for x in log.read_text().splitlines()] == [record]


def test_nothing_listening_builds_no_record() -> None:
    """Level disabled, or only a NullHandler (the library's polite default): ``{}``."""
    with _only(logging.NullHandler()):
        assert audit(decide(_clean(), Policy())) == {}
        assert audit_event("patched", None, target="x") == {}
    sink = _Lines()
    with _only(sink, level=logging.WARNING):
        assert audit(decide(_clean(), Policy())) == {}
    assert sink.lines == []


def test_handler_above_the_level_is_not_a_listener_but_one_at_it_is() -> None:
    quiet, loud = _Lines(logging.WARNING), _Lines(logging.INFO)
    with _only(quiet):
        assert audit(decide(_clean(), Policy())) == {}
    with _only(quiet, loud):
        record = audit(decide(_clean(), Policy()))
    assert record["verdict"] == "allow" and loud.lines == [record] and quiet.lines == []


def test_violation_with_no_handler_at_all_still_reaches_last_resort(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """No handler anywhere: ``logging.lastResort`` prints WARNING lines to stderr, so a
    refusal is still built and written."""
    refused = decide(Candidate(path="/m/x.gguf", format="gguf", size_bytes=8), Policy())
    with _only():
        record = audit(refused)
    assert record["verdict"] == "refuse"
    assert json.loads(capsys.readouterr().err.strip()) == record


def test_audit_log_alone_is_enough_to_record(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    with _only(logging.NullHandler()):
        record = audit(decide(_clean(), Policy(audit_log=str(log))))
    assert record["verdict"] == "allow"
    assert json.loads(log.read_text()) == record

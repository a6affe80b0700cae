"""Decisions, enforcement and audit lines: every rule that fires is reported with the value seen
and the limit; enforce refuses, audit records; audit lines reach the logger and the file."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

import pytest

from safeload.errors import PolicyError, PolicyViolation, UsageError
from safeload.policy import (
    AUDIT_LOGGER_NAME,
    Candidate,
    Policy,
    audit,
    audit_unsafe_option,
    decide,
    enforce,
    load_policy,
    needs_sandbox,
)

HEX = "c" * 64
SIGNED = {
    "require_signature": True,
    "signers": [{"method": "key", "public_key": "k.pem"}],
}


def cand(**kw: object) -> Candidate:
    base: dict[str, object] = {
        "path": "/m/model.safetensors",
        "format": "safetensors",
        "size_bytes": 100,
    }
    base.update(kw)
    return Candidate(**base)  # type: ignore[arg-type]


def test_default_policy_allows_a_plain_safetensors_file() -> None:
    decision = decide(cand(), Policy())
    assert decision.allowed and decision.rules == () and decision.verdict == "allow"
    enforce(decision)


RULES = {
    "formats.allowed": (Policy(), cand(format="pickle"), "pickle"),
    "trust.require_signature": (Policy(trust=SIGNED), cand(), False),
    "trust.min_signers": (
        Policy(
            trust={
                **SIGNED,
                "min_signers": 2,
                "signers": [
                    {"method": "key", "public_key": "a.pem"},
                    {"method": "key", "public_key": "b.pem"},
                ],
            }
        ),
        cand(verified=True, signers=("key:a", "key:a")),
        1,
    ),
    "trust.pinned_digests": (
        Policy(trust={"pinned_digests": {"model.safetensors": f"sha256:{HEX}"}}),
        cand(digest="d" * 64),
        "sha256:" + "d" * 64,
    ),
    "limits.max_file_bytes": (Policy(limits={"max_file_bytes": 99}), cand(), 100),
    "limits.max_total_bytes": (Policy(limits={"max_total_bytes": 50}), cand(), 100),
    "limits.max_tensors": (Policy(limits={"max_tensors": 3}), cand(tensor_count=4), 4),
    "limits.max_tensor_elements": (
        Policy(limits={"max_tensor_elements": 10}),
        cand(max_tensor_elements=11),
        11,
    ),
    "sources.allowed_repos": (
        Policy(sources={"allowed_repos": ["org/*"]}),
        cand(repo="evil/model"),
        "evil/model",
    ),
    "sources.require_revision": (
        Policy(sources={"require_revision": True}),
        cand(repo="org/model", revision="main"),
        "main",
    ),
    "sandbox.mode": (
        Policy(sandbox={"mode": "always"}),
        cand(verified=True, signers=("key:k",)),
        "in-process",
    ),
}


@pytest.mark.parametrize(
    ("rule", "policy", "candidate", "seen"),
    [(rule, *case) for rule, case in RULES.items()],
    ids=RULES.keys(),
)
def test_each_rule_fires_with_seen_and_limit(
    rule: str, policy: Policy, candidate: Candidate, seen: object
) -> None:
    decision = decide(candidate, policy)
    assert not decision.allowed
    assert [h.rule for h in decision.rules] == [rule]
    hit = decision.rules[0]
    assert hit.seen == seen
    assert hit.limit is not None and hit.message
    with pytest.raises(PolicyViolation) as info:
        enforce(decision)
    assert info.value.rule == rule
    assert info.value.path == candidate.path
    assert info.value.exit_code == 1


def test_all_rules_are_reported_not_just_the_first() -> None:
    policy = load_policy(Path(__file__).resolve().parent.parent / "policies" / "strict.toml")
    decision = decide(cand(format="torch_zip", size_bytes=1 << 50), policy)
    fired = [h.rule for h in decision.rules]
    assert fired == [
        "formats.allowed",
        "trust.require_signature",
        "limits.max_file_bytes",
        "limits.max_total_bytes",
        "sandbox.mode",
    ]
    with pytest.raises(PolicyViolation) as info:
        enforce(decision)
    assert info.value.detail is not None and "sandbox.mode" in info.value.detail


def test_rules_that_pass() -> None:
    policy = Policy(
        trust={
            **SIGNED,
            "pinned_digests": {"model.safetensors": f"sha256:{HEX}", "org/model": f"sha256:{HEX}"},
        },
        sources={"allowed_repos": ["org/*"], "require_revision": True},
        sandbox={"mode": "untrusted"},
    )
    ok = cand(
        verified=True,
        signers=("key:k",),
        digest=f"sha256:{HEX}",
        repo="org/model",
        revision="0123456789abcdef0123456789abcdef01234567",
    )
    assert decide(ok, policy).allowed
    # Untrusted mode: an unverified model must have been sandboxed.
    unverified = decide(cand(sandboxed=True), Policy(sandbox={"mode": "untrusted"}))
    assert unverified.allowed
    assert needs_sandbox(Policy(sandbox={"mode": "untrusted"}), verified=False)
    assert not needs_sandbox(Policy(sandbox={"mode": "untrusted"}), verified=True)


def test_unpinned_files_are_not_affected_by_other_pins() -> None:
    policy = Policy(trust={"pinned_digests": {"other.bin": f"sha256:{HEX}"}})
    assert decide(cand(digest="0" * 64), policy).allowed


def test_pinned_but_no_digest_is_a_violation() -> None:
    policy = Policy(trust={"pinned_digests": {"model.safetensors": f"sha256:{HEX}"}})
    assert [h.rule for h in decide(cand(), policy).rules] == ["trust.pinned_digests"]


def test_audit_mode_records_but_does_not_refuse() -> None:
    decision = decide(cand(format="pickle"), Policy(mode="audit"))
    assert not decision.allowed
    assert decision.verdict == "audit_violation"
    enforce(decision)  # returns


def test_audit_line_goes_to_the_audit_logger(caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(mode="audit")
    decision = decide(cand(format="pickle", digest=HEX, signers=("key:k",)), policy)
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        record = audit(decision, unsafe_options=["unsafe_skip_verify"])
    [log] = [r for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    assert log.levelno == logging.WARNING
    line = json.loads(log.getMessage())
    assert line == record
    assert line["event"] == "decision"
    assert line["path"] == "/m/model.safetensors"
    assert line["digest"] == HEX
    assert line["format"] == "pickle"
    assert line["signer"] == ["key:k"]
    assert line["verdict"] == "audit_violation"
    assert line["mode"] == "audit"
    assert line["rules"][0]["rule"] == "formats.allowed"
    assert line["policy_digest"] == policy.digest()
    assert line["unsafe_options"] == ["unsafe_skip_verify"]
    assert line["host"] == socket.gethostname() and line["pid"] == os.getpid()
    assert line["time"].endswith("Z") and "T" in line["time"]


def test_clean_decision_logs_at_info(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        audit(decide(cand(), Policy()))
    [log] = [r for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    assert log.levelno == logging.INFO
    assert json.loads(log.getMessage())["verdict"] == "allow"


def test_audit_log_file_gets_one_line_per_decision(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    (tmp_path / "p.toml").write_text('version = 1\naudit_log = "audit.jsonl"\n')
    policy = load_policy(tmp_path / "p.toml")
    audit(decide(cand(), policy))
    audit(decide(cand(format="gguf"), policy))
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert [x["verdict"] for x in lines] == ["allow", "refuse"]
    assert lines[1]["rules"][0]["seen"] == "gguf"


def test_unwritable_audit_log_fails_closed(tmp_path: Path) -> None:
    policy = Policy(audit_log=str(tmp_path / "missing-dir" / "audit.jsonl"))
    with pytest.raises(PolicyError, match="audit log") as info:
        audit(decide(cand(), policy))
    assert info.value.rule == "audit_log"


def test_library_does_not_configure_logging() -> None:
    assert logging.getLogger(AUDIT_LOGGER_NAME).handlers == []


def test_unsafe_option_is_audited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    policy = Policy(audit_log=str(tmp_path / "a.jsonl"))
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        audit_unsafe_option(
            "unsafe_allow_pickle", "raw pickle read", path="/m/x.pkl", policy=policy
        )
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["event"] == "unsafe_option" and line["option"] == "unsafe_allow_pickle"
    assert line["path"] == "/m/x.pkl" and line["policy_digest"] == policy.digest()
    assert json.loads(caplog.records[-1].getMessage()) == line
    with pytest.raises(UsageError):
        audit_unsafe_option("allow_pickle", "not named unsafe_")


def test_policy_digest_is_canonical() -> None:
    a = Policy(limits={"max_tensors": 5}, mode="audit")
    b = Policy(mode="audit", limits={"max_tensors": 5})
    assert a.digest() == b.digest() != Policy().digest()
    assert a.digest().startswith("sha256:") and len(a.digest()) == 71

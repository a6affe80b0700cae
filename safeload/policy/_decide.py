"""Turning "what was read" into a verdict: every rule is checked, every hit is reported.

Why evaluate all rules instead of stopping at the first: audit mode exists to show a fleet's
owners everything their models would trip before enforcement starts, and a refusal that names
only one of three problems costs two more round-trips. ``decide`` never raises; ``enforce``
does, and only in enforce mode.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any, Literal

from safeload.errors import PolicyViolation
from safeload.policy._models import Policy

__all__ = ["Candidate", "Decision", "RuleHit", "decide", "enforce", "needs_sandbox"]

_REVISION_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True, slots=True)
class Candidate:
    """What the loader learnt about one model, after verifying and reading it."""

    path: str
    format: str
    """A ``safeload.formats.Format`` value (``"safetensors"``, ``"torch_zip"``...)."""
    size_bytes: int
    digest: str | None = None
    """SHA-256 hex of the file (or OMS whole-model digest); ``"sha256:"`` prefix optional."""
    signers: tuple[str, ...] = ()
    """Descriptions of the trusted signers whose signatures verified (one per distinct signer)."""
    verified: bool = False
    """True only when signature verification against the policy's signers succeeded."""
    tensor_count: int | None = None
    max_tensor_elements: int | None = None
    repo: str | None = None
    """Hugging Face repo id the model came from, if any."""
    revision: str | None = None
    sandboxed: bool = False
    """True when the bytes were parsed inside the sandbox worker."""
    signers_reviewed: bool = False
    """True when the signers were already held to this policy's ``trust.requirements`` and
    ``min_signers`` (a verified file's record, re-checked by the gate): ``trust_findings``
    then speaks for those rules instead of the description count below."""
    trust_findings: tuple[RuleHit, ...] = ()
    """What that re-check found short (``trust.requirements`` / ``trust.min_signers``)."""
    pin_names: tuple[str, ...] = ()
    """More names a ``trust.pinned_digests`` entry may use for this file (its name inside a
    verified model folder, e.g. ``sub/model.bin``)."""
    model_digest: str | None = None
    """The verified model's OMS digest, which a ``"model"`` pin is held against."""


@dataclass(frozen=True, slots=True)
class RuleHit:
    """One rule that fired: the policy field, what was seen, and the limit it broke."""

    rule: str
    seen: Any
    limit: Any
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"rule": self.rule, "seen": self.seen, "limit": self.limit, "message": self.message}


@dataclass(frozen=True)
class Decision:
    """The verdict for one candidate under one effective policy."""

    candidate: Candidate
    policy: Policy = field(repr=False)
    rules: tuple[RuleHit, ...]
    """Every rule that fired, in policy order; empty means allowed."""

    @property
    def allowed(self) -> bool:
        """True when no rule fired (audit mode may still load a model that is not allowed)."""
        return not self.rules

    @property
    def mode(self) -> Literal["enforce", "audit"]:
        return self.policy.mode

    @property
    def verdict(self) -> Literal["allow", "refuse", "audit_violation"]:
        """What happens: allowed, refused (enforce), or loaded-but-recorded (audit)."""
        if self.allowed:
            return "allow"
        return "refuse" if self.mode == "enforce" else "audit_violation"

    def explain(self) -> str:
        """Human text: the verdict and one line per rule that fired."""
        head = f"{self.verdict}: {self.candidate.path} ({self.candidate.format})"
        return "\n".join([head, *(f"  {hit.rule}: {hit.message}" for hit in self.rules)])


def needs_sandbox(policy: Policy, *, verified: bool) -> bool:
    """Whether the loader must parse in the sandbox worker under this policy."""
    mode = policy.sandbox.mode
    return mode == "always" or (mode == "untrusted" and not verified)


def _strip(digest: str | None) -> str | None:
    if digest is None:
        return None
    return digest.lower().removeprefix("sha256:")


def _pins_for(candidate: Candidate, pins: Mapping[str, str]) -> list[tuple[str, str]]:
    names = {PurePath(candidate.path).name, *candidate.pin_names}
    if candidate.model_digest is not None:
        names.add("model")
    if candidate.repo:
        names |= {candidate.repo, candidate.repo.rsplit("/", 1)[-1]}
    return [(name, pins[name]) for name in sorted(names) if name in pins]


def decide(candidate: Candidate, policy: Policy) -> Decision:
    """Evaluate every rule of ``policy`` against ``candidate``; never raises."""
    hits: list[RuleHit] = []

    def hit(rule: str, seen: Any, limit: Any, message: str) -> None:
        hits.append(RuleHit(rule, seen, limit, message))

    allowed_formats = policy.formats.allowed
    if candidate.format not in allowed_formats:
        hit(
            "formats.allowed",
            candidate.format,
            list(allowed_formats),
            f"format {candidate.format!r} is not in the allowed formats",
        )

    trust = policy.trust
    # A verified file's record was re-checked against every group by the gate (structured
    # signers, so a group can be attributed). Its findings come first: "signed, but not by whom
    # this policy requires" says more than the require_signature hit it usually implies.
    hits.extend(candidate.trust_findings)
    if trust.require_signature and not candidate.verified:
        hit("trust.require_signature", False, True, "no valid signature from a trusted signer")
    # Unsigned models are require_signature's business. For a candidate whose signers are only
    # descriptions (not reviewed), min_signers speaks when there were too few distinct ones: a
    # description cannot be attributed to a group (a CA without an identity, an identity
    # regex); what a description list can show is that no group's count is missed.
    distinct = len(set(candidate.signers))
    required = max((g.min_signers for g in trust.signer_groups()), default=1)
    required = max(required, trust.min_signers)
    if (
        not candidate.signers_reviewed
        and candidate.verified
        and candidate.signers
        and distinct < required
    ):
        hit(
            "trust.min_signers",
            distinct,
            required,
            f"{distinct} distinct trusted signer(s), {required} required",
        )
    for name, pinned in _pins_for(candidate, trust.pinned_digests):
        seen_digest = _strip(candidate.model_digest if name == "model" else candidate.digest)
        if seen_digest != _strip(pinned):
            hit(
                "trust.pinned_digests",
                None if seen_digest is None else f"sha256:{seen_digest}",
                pinned,
                f"digest of {name!r} does not match its pin",
            )

    limits = policy.limits
    for rule, seen, limit, what in (
        ("limits.max_file_bytes", candidate.size_bytes, limits.max_file_bytes, "bytes"),
        ("limits.max_total_bytes", candidate.size_bytes, limits.max_total_bytes, "bytes"),
        ("limits.max_tensors", candidate.tensor_count, limits.max_tensors, "tensors"),
        (
            "limits.max_tensor_elements",
            candidate.max_tensor_elements,
            limits.max_tensor_elements,
            "elements in one tensor",
        ),
    ):
        if seen is not None and seen > limit:
            hit(rule, seen, limit, f"{seen} {what} exceeds the limit of {limit}")

    sources = policy.sources
    if candidate.repo is not None:
        repos = sources.allowed_repos
        if repos is not None and not any(fnmatch.fnmatchcase(candidate.repo, p) for p in repos):
            hit(
                "sources.allowed_repos",
                candidate.repo,
                list(repos),
                f"repo {candidate.repo!r} is not an allowed source",
            )
        if sources.require_revision and not _REVISION_RE.match(candidate.revision or ""):
            hit(
                "sources.require_revision",
                candidate.revision,
                "40-hex commit",
                "a full commit revision is required, not a branch or tag",
            )

    if needs_sandbox(policy, verified=candidate.verified) and not candidate.sandboxed:
        hit(
            "sandbox.mode",
            "in-process",
            policy.sandbox.mode,
            f"sandbox mode {policy.sandbox.mode!r} requires parsing in the sandbox worker",
        )
    return Decision(candidate=candidate, policy=policy, rules=tuple(hits))


def enforce(decision: Decision) -> None:
    """Raise :class:`PolicyViolation` when the decision refuses; return in audit mode."""
    if decision.allowed or decision.mode == "audit":
        return
    first = decision.rules[0]
    others = f" (+{len(decision.rules) - 1} more)" if len(decision.rules) > 1 else ""
    raise PolicyViolation(
        f"refused by policy: {first.message}{others}",
        path=decision.candidate.path,
        rule=first.rule,
        detail="; ".join(f"{h.rule}: {h.message}" for h in decision.rules),
    )

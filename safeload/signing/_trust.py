"""What the verifier trusts, read from a policy without depending on its class layout.

``safeload.policy`` owns the schema; this module only reads the ``trust`` and ``limits``
fields verification needs into one immutable :class:`TrustSettings`. The signer entries stay
the policy's own objects (anything with a ``method`` of ``"sigstore"``, ``"key"`` or
``"certificate"``), so the Sigstore verifier receives exactly what the policy validated.
The small ``*Signer`` dataclasses below are the stand-ins the CLI and tests use when they
name a signer on the command line rather than in a policy file.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from safeload.errors import UsageError

if TYPE_CHECKING:
    from safeload.signing._verified import VerificationRecord, VerifiedSigner

__all__ = [
    "CertificateSignerSpec",
    "KeySignerSpec",
    "SignerGroupSpec",
    "SigstoreSignerSpec",
    "TrustReview",
    "TrustSettings",
    "TrustShortfall",
    "anchor_fingerprint",
    "make_signer",
    "review_record",
    "settings_from_policy",
    "signer_matches",
    "spki_fingerprint",
]


@dataclass(frozen=True, slots=True)
class KeySignerSpec:
    public_key: str
    """Path to a PEM public key, or the PEM itself."""
    method: Literal["key"] = "key"


@dataclass(frozen=True, slots=True)
class CertificateSignerSpec:
    ca_chain: str
    """Path to PEM trust anchors, or the PEM itself."""
    identity: str | None = None
    method: Literal["certificate"] = "certificate"


@dataclass(frozen=True, slots=True)
class SigstoreSignerSpec:
    issuer: str
    identity: str | None = None
    identity_regex: str | None = None
    method: Literal["sigstore"] = "sigstore"


def make_signer(method: str, **fields: Any) -> Any:
    """The policy's signer class for ``method`` when available, else the local stand-in."""
    try:
        import safeload.policy as pol

        cls = {"key": "KeySigner", "certificate": "CertificateSigner",
               "sigstore": "SigstoreSigner"}[method]
        policy_cls = getattr(pol, cls, None)
        if policy_cls is not None:
            return policy_cls(method=method, **{k: v for k, v in fields.items() if v is not None})
    except KeyError:
        raise UsageError(f"unknown signing method {method!r}") from None
    except (TypeError, ValueError) as exc:  # pydantic's ValidationError is a ValueError
        raise UsageError(f"invalid {method} signer", detail=str(exc)) from exc
    local = {"key": KeySignerSpec, "certificate": CertificateSignerSpec,
             "sigstore": SigstoreSignerSpec}[method]
    return local(**fields)


@dataclass(frozen=True, slots=True)
class SignerGroupSpec:
    """One requirement verification enforces: ``min_signers`` distinct signers of ``signers``.

    Layered policies yield one per layer that lists signers, and *every* one must hold, so a
    child adding its own key adds a requirement instead of a way around the parent's.
    """

    signers: tuple[Any, ...]
    min_signers: int = 1
    source: str = ""
    """Which policy file asked for it, for error messages."""


@dataclass(frozen=True, slots=True)
class TrustSettings:
    """The verification-relevant part of the effective policy."""

    signers: tuple[Any, ...] = ()
    min_signers: int = 1
    allow_ca_leaf: bool = False
    allow_symlinks: bool = False
    ignore_paths: tuple[str, ...] = ()
    trust_config: Path | None = None
    pinned_digests: Mapping[str, str] = field(default_factory=dict)
    require_signature: bool = False
    allow_unsafe_mmap: bool = False
    max_file_bytes: int | None = None
    max_total_bytes: int | None = None
    allowed_repos: tuple[str, ...] | None = None
    """Hugging Face repo ids or globs a ``org/name@rev`` path may name (None: any)."""
    require_revision: bool = False
    """A Hugging Face path must pin a 40-hex commit, not a branch that can move."""
    audit: bool = False
    """Policy mode ``audit``: a repo outside ``allowed_repos`` is logged, not refused."""
    policy: Any = None
    """The policy object these settings came from (passed on to Sigstore), if any."""
    groups: tuple[SignerGroupSpec, ...] = ()
    """The policy's ``trust.requirements``; empty means one group, ``signers``."""

    def with_overrides(self, **changes: Any) -> TrustSettings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def requirements(self) -> tuple[SignerGroupSpec, ...]:
        """Every group that must hold; the flat ``signers`` list when the policy has none.

        ``min_signers`` applies on top of these, over all trusted signers together.
        """
        if self.groups:
            return self.groups
        if not self.signers:
            return ()
        return (SignerGroupSpec(self.signers, min(self.min_signers, len(self.signers))),)


def _opt_path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(os.fspath(value))


def settings_from_policy(policy: Any) -> TrustSettings:
    """Read a ``safeload.policy.Policy`` (or ``None``: the built-in default) into settings."""
    if isinstance(policy, TrustSettings):
        return policy
    if policy is None or isinstance(policy, str | os.PathLike):
        try:
            from safeload.policy import effective_policy
        except ImportError:
            if policy is not None:
                raise UsageError("policy files need safeload.policy, which is not available",
                                 path=str(policy)) from None
            return TrustSettings()
        policy = effective_policy(policy)
    trust = getattr(policy, "trust", None)
    limits = getattr(policy, "limits", None)
    sources = getattr(policy, "sources", None)
    repos = getattr(sources, "allowed_repos", None)
    source_rules: dict[str, Any] = {
        "allowed_repos": None if repos is None else tuple(str(r) for r in repos),
        "require_revision": bool(getattr(sources, "require_revision", False)),
        "audit": getattr(policy, "mode", None) == "audit",
    }
    if trust is None:
        return TrustSettings(policy=policy, **source_rules)
    return TrustSettings(
        **source_rules,
        signers=tuple(getattr(trust, "signers", ()) or ()),
        min_signers=int(getattr(trust, "min_signers", 1)),
        allow_ca_leaf=bool(getattr(trust, "allow_ca_leaf", False)),
        allow_symlinks=bool(getattr(trust, "allow_symlinks", False)),
        ignore_paths=tuple(str(p) for p in getattr(trust, "ignore_paths", ()) or ()),
        trust_config=_opt_path(getattr(trust, "trust_config", None)),
        pinned_digests=dict(getattr(trust, "pinned_digests", {}) or {}),
        require_signature=bool(getattr(trust, "require_signature", False)),
        allow_unsafe_mmap=bool(getattr(trust, "allow_unsafe_mmap", False)),
        max_file_bytes=getattr(limits, "max_file_bytes", None),
        max_total_bytes=getattr(limits, "max_total_bytes", None),
        policy=policy,
        groups=_groups(trust),
    )


def _groups(trust: Any) -> tuple[SignerGroupSpec, ...]:
    """``trust.requirements`` (or the policy's own derivation of it) as plain specs."""
    derive = getattr(trust, "signer_groups", None)
    groups = derive() if callable(derive) else getattr(trust, "requirements", ())
    return tuple(
        SignerGroupSpec(tuple(g.signers), int(g.min_signers), str(getattr(g, "source", "")))
        for g in groups or ()
    )


# ------------------------------------------------------------ re-checking a verification record


@dataclass(frozen=True, slots=True)
class TrustShortfall:
    """One signer requirement a recorded verification does not meet (a policy rule hit)."""

    rule: str
    seen: Any
    limit: Any
    message: str


@dataclass(frozen=True, slots=True)
class TrustReview:
    """A verification record held against a (possibly different) policy's signers."""

    trusted: bool
    """At least one recorded signer is one this policy trusts (or, when it names none, any
    signer verified). False for a hash-only record: no signer, nothing to trust."""
    counted: tuple[str, ...]
    """Descriptions of the recorded signers this policy's signers match."""
    shortfalls: tuple[TrustShortfall, ...] = ()


def spki_fingerprint(public_key: Any) -> str:
    """``sha256:<hex>`` of a public key's SubjectPublicKeyInfo DER: the key, not its encoding."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def anchor_fingerprint(cert: Any) -> str:
    """``sha256:<hex>`` of a certificate's DER (how a trust anchor is recorded and matched)."""
    from cryptography.hazmat.primitives import hashes

    return "sha256:" + bytes(cert.fingerprint(hashes.SHA256())).hex()


class _SignerFacts:
    """A configured signer's matchable facts, loaded once per review (keys and CAs parse)."""

    def __init__(self) -> None:
        self._cache: dict[int, frozenset[str]] = {}

    def fingerprints(self, signer: Any) -> frozenset[str]:
        got = self._cache.get(id(signer))
        if got is None:
            if signer.method == "key":
                from safeload.signing._key import load_public_key

                got = frozenset({spki_fingerprint(load_public_key(signer.public_key))})
            else:
                from safeload.signing._certificate import load_certificates

                got = frozenset(anchor_fingerprint(c) for c in load_certificates(signer.ca_chain))
            self._cache[id(signer)] = got
        return got


def signer_matches(recorded: VerifiedSigner, signer: Any, facts: _SignerFacts | None = None
                   ) -> bool:
    """Whether a configured ``signer`` would have accepted the recorded one.

    The same tests verification applies: Sigstore on the exact issuer plus the exact identity
    or a whole-SAN regex; a key on its SPKI fingerprint; a certificate on the anchor its chain
    led to plus, when the signer names one, an identity on the leaf.
    """
    method = getattr(signer, "method", None)
    if method != recorded.method:
        return False
    facts = facts or _SignerFacts()
    if method == "sigstore":
        san, issuer = recorded.identity, recorded.issuer
        if san is None or issuer is None or issuer != signer.issuer:
            return False
        if signer.identity is not None and san == signer.identity:
            return True
        regex = getattr(signer, "identity_regex", None)
        return regex is not None and re.fullmatch(regex, san) is not None
    if method == "key":
        return recorded.key_fingerprint in facts.fingerprints(signer)
    if method == "certificate":
        if recorded.anchor_fingerprint not in facts.fingerprints(signer):
            return False
        identity = getattr(signer, "identity", None)
        return identity is None or identity in recorded.leaf_identities
    return False


def review_record(record: VerificationRecord | None, settings: TrustSettings) -> TrustReview:
    """Hold a past verification to ``settings``: every group, ``min_signers``, no hashing.

    A policy that names no signers asks nothing about who signed: any recorded signer is
    trusted and only ``min_signers`` counts. Otherwise a recorded signer counts only for the
    groups that list a matching signer, exactly as ``safeload.verify`` counts them.
    """
    recorded = () if record is None else record.signers
    if not recorded:
        return TrustReview(trusted=False, counted=())
    if not settings.signers:
        counted = tuple(dict.fromkeys(s.description for s in recorded))
        out = [] if len(counted) >= settings.min_signers else [_too_few(counted, settings)]
        return TrustReview(trusted=True, counted=counted, shortfalls=tuple(out))
    facts = _SignerFacts()

    def count(signers: tuple[Any, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(r.description for r in recorded
                                   if any(signer_matches(r, s, facts) for s in signers)))

    counted = count(settings.signers)
    shortfalls: list[TrustShortfall] = []
    verified = ", ".join(dict.fromkeys(s.description for s in recorded))
    for group in settings.groups:
        if group.signers == settings.signers and group.min_signers <= settings.min_signers:
            continue  # the flat rule: min_signers below says the same, and says it better
        in_group = count(group.signers)
        if len(in_group) < group.min_signers:
            where = group.source or "the load policy"
            shortfalls.append(TrustShortfall(
                "trust.requirements", len(in_group), group.min_signers,
                f"signer requirement from {where} not met: {len(in_group)} of its signer(s) "
                f"verified this file, {group.min_signers} required (verified by: {verified})",
            ))
    if len(counted) < settings.min_signers:
        shortfalls.append(_too_few(counted, settings, verified))
    return TrustReview(trusted=bool(counted), counted=counted, shortfalls=tuple(shortfalls))


def _too_few(counted: tuple[str, ...], settings: TrustSettings, verified: str = ""
             ) -> TrustShortfall:
    also = f" (verified by: {verified})" if verified else ""
    return TrustShortfall(
        "trust.min_signers", len(counted), settings.min_signers,
        f"{len(counted)} distinct signer(s) trusted by the load policy verified this file, "
        f"{settings.min_signers} required{also}",
    )

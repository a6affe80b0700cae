"""What the verifier trusts, read from a policy without depending on its class layout.

``safeload.policy`` owns the schema; this module only reads the ``trust`` and ``limits``
fields verification needs into one immutable :class:`TrustSettings`. The signer entries stay
the policy's own objects (anything with a ``method`` of ``"sigstore"``, ``"key"`` or
``"certificate"``), so the Sigstore verifier receives exactly what the policy validated.
The small ``*Signer`` dataclasses below are the stand-ins the CLI and tests use when they
name a signer on the command line rather than in a policy file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from safeload.errors import UsageError

__all__ = [
    "CertificateSignerSpec",
    "KeySignerSpec",
    "SignerGroupSpec",
    "SigstoreSignerSpec",
    "TrustSettings",
    "make_signer",
    "settings_from_policy",
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

"""Sigstore keyless signing and verification of OMS statements.

Why this module exists: sigstore-python already verifies everything cryptographic in a
Sigstore bundle (DSSE signature, Fulcio chain at the log's time, embedded SCT, Rekor
inclusion proof, signed checkpoint and SET, RFC 3161 timestamps). What it does not do is
say *who* is trusted in safeload's terms: a policy lists signers as an exact identity or an
anchored ``identity_regex`` plus an exact OIDC issuer. This module is the thin adapter:

* it turns every sigstore/cryptography failure into a :class:`VerificationError` with a
  ``rule`` (fail closed: a crash inside the third-party verifier is a refusal, not a pass);
* it matches the verified leaf against the policy's signers with a custom
  ``VerificationPolicy`` (``re.fullmatch`` on the SAN, issuer from the Fulcio v2 extension
  ``1.3.6.1.4.1.57264.1.8`` or the legacy v1 ``1.3.6.1.4.1.57264.1.1``);
* it verifies offline by default, against the trust root embedded in the sigstore wheel or a
  pinned ``ClientTrustConfig`` file, so a verifier never depends on the network.

sigstore is imported lazily: ``import safeload`` must stay cheap.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from safeload.errors import SafeloadError, UsageError, VerificationError

if TYPE_CHECKING:
    from cryptography.x509 import Certificate
    from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
    from sigstore.verify import Verifier

__all__ = [
    "IN_TOTO_PAYLOAD_TYPE",
    "SigstoreSignerLike",
    "sign_sigstore",
    "verify_artifact_sigstore",
    "verify_sigstore",
]

_logger = logging.getLogger(__name__)

IN_TOTO_PAYLOAD_TYPE = "application/vnd.in-toto+json"

# Fulcio certificate extensions (https://github.com/sigstore/fulcio/blob/main/docs/oid-info.md).
_OIDC_ISSUER_V1 = "1.3.6.1.4.1.57264.1.1"  # raw bytes of the issuer URL (deprecated)
_OIDC_ISSUER_V2 = "1.3.6.1.4.1.57264.1.8"  # DER UTF8String of the issuer URL
_OTHERNAME_SAN = "1.3.6.1.4.1.57264.1.7"  # Sigstore "other name" identity (DER UTF8String)

_RULE_SIGNERS = "trust.signers"
_RULE_BUNDLE = "signature.bundle"
_RULE_SIGSTORE = "signature.sigstore"
_RULE_TRUST_CONFIG = "trust.trust_config"
_RULE_PAYLOAD = "signature.payload_type"


class SigstoreSignerLike(Protocol):
    """The fields of ``safeload.policy.SigstoreSigner`` this module reads.

    A Protocol so that signing does not import the policy package; the pydantic model
    validates (anchoring, exactly one of ``identity``/``identity_regex``) before it gets here.
    """

    @property
    def method(self) -> str: ...

    @property
    def identity(self) -> str | None: ...

    @property
    def identity_regex(self) -> str | None: ...

    @property
    def issuer(self) -> str: ...


# --------------------------------------------------------------------------------- trust root


_TRUSTED_ROOT_MEDIA_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"


def _read_trust_file(path: Path, error: type[SafeloadError], rule: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(
            "cannot read the Sigstore trust config", path=str(path), rule=rule, detail=str(exc)
        ) from exc


def _load_trust_config(
    path: Path, *, error: type[SafeloadError] = VerificationError, rule: str = _RULE_TRUST_CONFIG
) -> ClientTrustConfig:
    """Read a pinned ``ClientTrustConfig``; a broken trust file is a refusal, never a fallback."""
    from sigstore.models import ClientTrustConfig

    text = _read_trust_file(path, error, rule)
    try:
        config = ClientTrustConfig.from_json(text)
        config.trusted_root  # noqa: B018 - parse the root now, so errors surface here
    except Exception as exc:  # fail closed on any parser failure in sigstore
        raise error(
            "the Sigstore trust config is not a valid ClientTrustConfig",
            path=str(path),
            rule=rule,
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc
    return config


def _load_trusted_root(path: Path) -> TrustedRoot:
    """Verification needs only the root: accept a ``ClientTrustConfig`` or a bare
    ``trusted_root.json`` (what Sigstore instances and conformance suites publish)."""
    from sigstore.models import TrustedRoot
    from sigstore_models.trustroot import v1 as trustroot_v1

    text = _read_trust_file(path, VerificationError, _RULE_TRUST_CONFIG)
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise VerificationError(
            "the Sigstore trust config is not JSON",
            path=str(path),
            rule=_RULE_TRUST_CONFIG,
            detail=str(exc),
        ) from exc
    if isinstance(doc, dict) and doc.get("mediaType") == _TRUSTED_ROOT_MEDIA_TYPE:
        try:
            return TrustedRoot(trustroot_v1.TrustedRoot.from_json(text))
        except Exception as exc:  # fail closed on any parser failure in sigstore
            raise VerificationError(
                "the Sigstore trusted root is not valid",
                path=str(path),
                rule=_RULE_TRUST_CONFIG,
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc
    return _load_trust_config(path).trusted_root


def _make_verifier(trust_config: Path | None, *, offline: bool) -> Verifier:
    from sigstore.verify import Verifier

    if trust_config is not None:
        trusted_root = _load_trusted_root(Path(trust_config))
        try:
            return Verifier(trusted_root=trusted_root)
        except Exception as exc:  # fail closed
            raise VerificationError(
                "the Sigstore trust config cannot verify anything",
                path=str(trust_config),
                rule=_RULE_TRUST_CONFIG,
                detail=f"{type(exc).__name__}: {exc}",
            ) from exc
    try:
        return Verifier.production(offline=offline)
    except Exception as exc:  # fail closed: no root, no verification
        raise VerificationError(
            "cannot load the Sigstore production trust root",
            rule=_RULE_TRUST_CONFIG,
            detail=f"{type(exc).__name__}: {exc} (offline={offline}); pin a trust_config",
        ) from exc


# ------------------------------------------------------------------------- identity matching


def _san_identities(cert: Certificate) -> list[str]:
    """Every identity Fulcio can put in a SAN: email, URI, and the Sigstore other-name."""
    from cryptography import x509
    from cryptography.hazmat import asn1

    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    found: list[str] = list(san.get_values_for_type(x509.RFC822Name))
    found.extend(san.get_values_for_type(x509.UniformResourceIdentifier))
    for other in san.get_values_for_type(x509.OtherName):
        if other.type_id.dotted_string == _OTHERNAME_SAN:
            try:
                found.append(asn1.decode_der(str, other.value))
            except ValueError:
                continue  # a malformed other-name never matches anything
    return found


def _oidc_issuer(cert: Certificate) -> str | None:
    """The OIDC issuer Fulcio recorded; v2 (DER) and v1 (raw) must agree when both exist."""
    from cryptography import x509
    from cryptography.hazmat import asn1

    v1: str | None = None
    v2: str | None = None
    for ext in cert.extensions:
        dotted = ext.oid.dotted_string
        if dotted not in (_OIDC_ISSUER_V1, _OIDC_ISSUER_V2):
            continue
        if not isinstance(ext.value, x509.UnrecognizedExtension):
            return None
        raw = ext.value.value
        try:
            if dotted == _OIDC_ISSUER_V2:
                v2 = asn1.decode_der(str, raw)
            else:
                v1 = raw.decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
    if v1 is not None and v2 is not None and v1 != v2:
        return None
    return v2 if v2 is not None else v1


def _describe(signer: SigstoreSignerLike) -> str:
    who = signer.identity if signer.identity is not None else f"~{signer.identity_regex}"
    return f"{who} ({signer.issuer})"


def _checked_signers(signers: Sequence[SigstoreSignerLike]) -> list[SigstoreSignerLike]:
    """An empty or identity-less signer list would mean "anyone": refuse it as a caller error."""
    sigstore_signers = [s for s in signers if s.method == "sigstore"]
    if not sigstore_signers:
        raise UsageError(
            "no Sigstore signer is trusted",
            rule=_RULE_SIGNERS,
            detail="an empty signer list is not 'anyone'; list at least one identity and issuer",
        )
    for signer in sigstore_signers:
        if (signer.identity is None) == (signer.identity_regex is None):
            raise UsageError(
                "a Sigstore signer needs exactly one of identity or identity_regex",
                rule=_RULE_SIGNERS,
                detail=_describe(signer),
            )
        if not signer.issuer:
            raise UsageError("a Sigstore signer needs an issuer", rule=_RULE_SIGNERS)
    return sigstore_signers


def _matches(signer: SigstoreSignerLike, sans: list[str], issuer: str | None) -> str | None:
    """The SAN that satisfies ``signer``, or None. Regexes must match the whole SAN."""
    if issuer is None or issuer != signer.issuer:
        return None
    for san in sans:
        if signer.identity is not None and san == signer.identity:
            return san
        if signer.identity_regex is not None and re.fullmatch(signer.identity_regex, san):
            return san
    return None


class _IdentityMismatchError(Exception):
    """Raised inside sigstore's verifier by :class:`_AnySignerPolicy`; mapped to trust.signers."""


class _AnySignerPolicy:
    """A sigstore ``VerificationPolicy``: the leaf must belong to one of the trusted signers.

    sigstore calls ``verify`` only after the chain, SCT and key usages checked out, and before
    the log entry and signature; the matched signer is remembered for the caller.
    """

    def __init__(self, signers: list[SigstoreSignerLike]) -> None:
        self._signers = signers
        self.matched: str | None = None

    def verify(self, cert: Certificate) -> None:
        sans = _san_identities(cert)
        issuer = _oidc_issuer(cert)
        for signer in self._signers:
            san = _matches(signer, sans, issuer)
            if san is not None:
                self.matched = f"sigstore:{san} ({issuer})"
                return
        raise _IdentityMismatchError(
            f"certificate identity {sans} (issuer {issuer!r}) matches none of the trusted "
            f"signers: {'; '.join(_describe(s) for s in self._signers)}"
        )


# ------------------------------------------------------------------------------ verification


def _parse_bundle(bundle_json: bytes) -> Bundle:
    from sigstore.models import Bundle

    try:
        return Bundle.from_json(bundle_json)
    except Exception as exc:  # fail closed: any malformed bundle is a refusal
        raise VerificationError(
            "the signature is not a valid Sigstore bundle",
            rule=_RULE_BUNDLE,
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc


def _refusal(exc: Exception) -> VerificationError:
    if isinstance(exc, _IdentityMismatchError):
        return VerificationError(
            "the Sigstore signer is not trusted", rule=_RULE_SIGNERS, detail=str(exc)
        )
    return VerificationError(
        "the Sigstore signature did not verify",
        rule=_RULE_SIGSTORE,
        detail=f"{type(exc).__name__}: {exc}",
    )


def verify_sigstore(
    bundle_json: bytes,
    *,
    signers: Sequence[SigstoreSignerLike],
    trust_config: Path | None = None,
    offline: bool = True,
) -> tuple[str, bytes]:
    """Verify a DSSE Sigstore bundle and return ``(signer description, payload bytes)``.

    Everything cryptographic is sigstore-python's ``Verifier.verify_dsse``; the leaf must
    match one of ``signers``. The payload is returned only after it verified, and only when
    its type is an in-toto statement, so callers never parse unverified or foreign bytes.
    Raises :class:`VerificationError` (``trust.signers`` for an untrusted identity,
    ``signature.*`` for everything else) and :class:`UsageError` for an empty signer list.
    """
    trusted = _checked_signers(signers)
    verifier = _make_verifier(trust_config, offline=offline)
    bundle = _parse_bundle(bundle_json)
    policy = _AnySignerPolicy(trusted)
    try:
        payload_type, payload = verifier.verify_dsse(bundle, policy)
    except Exception as exc:  # fail closed on any failure inside the verifier
        raise _refusal(exc) from exc
    if policy.matched is None:  # pragma: no cover - sigstore always consults the policy
        raise VerificationError("no signer identity was checked", rule=_RULE_SIGNERS)
    if payload_type != IN_TOTO_PAYLOAD_TYPE:
        raise VerificationError(
            "the signed payload is not an in-toto statement",
            rule=_RULE_PAYLOAD,
            detail=f"payloadType {payload_type!r}, expected {IN_TOTO_PAYLOAD_TYPE!r}",
        )
    _logger.debug("Sigstore bundle verified for %s", policy.matched)
    return policy.matched, bytes(payload)


def verify_artifact_sigstore(
    artifact: bytes,
    bundle_json: bytes,
    *,
    signers: Sequence[SigstoreSignerLike],
    trust_config: Path | None = None,
    offline: bool = True,
) -> str:
    """Verify a ``messageSignature`` (hashedrekord) bundle over ``artifact``; return the signer.

    For plain Sigstore artifact signatures (not OMS model signatures), e.g. a signed wheel.
    Same trust and failure rules as :func:`verify_sigstore`.
    """
    trusted = _checked_signers(signers)
    verifier = _make_verifier(trust_config, offline=offline)
    bundle = _parse_bundle(bundle_json)
    policy = _AnySignerPolicy(trusted)
    try:
        verifier.verify_artifact(artifact, bundle, policy)
    except Exception as exc:  # fail closed on any failure inside the verifier
        raise _refusal(exc) from exc
    if policy.matched is None:  # pragma: no cover - sigstore always consults the policy
        raise VerificationError("no signer identity was checked", rule=_RULE_SIGNERS)
    return policy.matched


# ----------------------------------------------------------------------------------- signing


def _signing_error(message: str, exc: BaseException) -> SafeloadError:
    """Signing failed for an operational reason (network, Fulcio, Rekor): an error, no verdict."""
    return SafeloadError(message, rule="signing.sigstore", detail=f"{type(exc).__name__}: {exc}")


class _IssuedToUs:
    """Self-check policy for a bundle this process just signed.

    The certificate came from Fulcio for our own token moments ago; what is worth checking
    is that the chain, SCT and Rekor entry verify against the trust root that verifiers will
    use, so a misconfigured trust config fails at signing time and not at a user's load.
    The identity is checked by the issuer only: Fulcio may map the token to a different SAN.
    """

    def __init__(self, issuers: set[str]) -> None:
        self._issuers = issuers

    def verify(self, cert: Certificate) -> None:
        issuer = _oidc_issuer(cert)
        if issuer not in self._issuers:
            raise _IdentityMismatchError(
                f"Fulcio issued a certificate for issuer {issuer!r}, token said {self._issuers}"
            )


def sign_sigstore(
    payload: bytes, *, identity_token: str | None, trust_config: Path | None = None
) -> bytes:
    """DSSE-sign an in-toto statement with Sigstore keyless signing; return bundle v0.3 JSON.

    Fulcio issues a short-lived certificate for ``identity_token`` (``None``: detect an
    ambient CI credential), Rekor logs the DSSE entry, and the resulting bundle is verified
    once against the same trust root before it is returned. ``trust_config`` is a
    ``ClientTrustConfig`` whose signing config names the Fulcio/Rekor instances (default:
    Sigstore's public-good production instance, which needs the network).
    """
    from sigstore.dsse import Statement
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken, detect_credential
    from sigstore.sign import SigningContext
    from sigstore.verify import Verifier

    try:
        statement = Statement(payload)
    except Exception as exc:  # sigstore raises its own Error for bad statements
        raise UsageError(
            "the payload to sign is not an in-toto statement",
            rule="signing.payload",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc

    raw_token = identity_token
    if raw_token is None:
        try:
            raw_token = detect_credential()
        except Exception as exc:  # ambient detection failed: say why
            raise _signing_error("ambient OIDC credential detection failed", exc) from exc
        if raw_token is None:
            raise UsageError(
                "no OIDC identity token for Sigstore signing",
                rule="signing.identity_token",
                detail="pass identity_token, or run where an ambient credential is available",
            )
    try:
        token = IdentityToken(raw_token)
    except Exception as exc:  # malformed or expired token
        raise UsageError(
            "the OIDC identity token is not usable",
            rule="signing.identity_token",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc

    if trust_config is not None:
        config = _load_trust_config(
            Path(trust_config), error=UsageError, rule="signing.trust_config"
        )
    else:
        try:
            config = ClientTrustConfig.production()
        except Exception as exc:  # TUF refresh failed
            raise _signing_error("cannot load the Sigstore production trust config", exc) from exc

    try:
        context = SigningContext.from_trust_config(config)
        with context.signer(token, cache=True) as signer:
            bundle = signer.sign_dsse(statement)
    except Exception as exc:  # Fulcio/Rekor/network failures all end signing
        raise _signing_error("Sigstore signing failed", exc) from exc

    try:
        Verifier(trusted_root=config.trusted_root).verify_dsse(
            bundle, _IssuedToUs({token.issuer, token.federated_issuer})
        )
    except Exception as exc:  # never hand out a bundle that does not verify
        raise _signing_error("the new Sigstore bundle does not verify", exc) from exc

    _logger.debug("signed with Sigstore as %s (%s)", token.identity, token.issuer)
    return bundle.to_json().encode("utf-8")

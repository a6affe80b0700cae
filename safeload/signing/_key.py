"""The OMS ``key`` method: a DSSE signature by a raw public/private key pair.

Signing keys: ECDSA P-256 / P-384 (hash sized to the curve, as model_signing does) and
Ed25519. Verification additionally accepts P-521 for interop. The bundle names the key by
``publicKey.hint`` = SHA-256 hex of the public key's PEM (SubjectPublicKeyInfo); the hint only
selects which trusted key to try, it never makes a key trusted.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from safeload.errors import UsageError, VerificationError
from safeload.signing._bundle import ParsedBundle, build_bundle, pae, pae_v02_compat
from safeload.signing._manifest import PAYLOAD_TYPE

__all__ = [
    "PrivateKey",
    "PublicKey",
    "check_signature",
    "key_hint",
    "load_private_key",
    "load_public_key",
    "sign_key",
    "sign_pae",
    "verify_key",
]

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
_SIGN_CURVES = {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384}
_VERIFY_CURVES = {**_SIGN_CURVES, "secp521r1": hashes.SHA512}


def _pem_bytes(source: str | bytes | os.PathLike[str]) -> bytes:
    """Inline PEM (as a policy may carry it) or a path to a PEM file."""
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode("ascii")
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise UsageError("cannot read key file", path=str(source), detail=str(exc)) from exc


def load_private_key(source: str | bytes | os.PathLike[str],
                     password: bytes | None = None) -> PrivateKey:
    """A PEM private key of an allowed type; ``UsageError`` otherwise."""
    try:
        key = serialization.load_pem_private_key(_pem_bytes(source), password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise UsageError("cannot load private key", detail=str(exc)) from exc
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _SIGN_CURVES:
        return key
    raise UsageError("unsupported signing key", rule="signing.key_type",
                     detail="use ECDSA P-256, P-384 or Ed25519")


def load_public_key(source: str | bytes | os.PathLike[str]) -> PublicKey:
    """A PEM public key of an allowed type; ``UsageError`` otherwise."""
    try:
        key = serialization.load_pem_public_key(_pem_bytes(source))
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise UsageError("cannot load public key", detail=str(exc)) from exc
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _VERIFY_CURVES:
        return key
    raise UsageError("unsupported public key", rule="signing.key_type",
                     detail="ECDSA P-256/P-384/P-521 or Ed25519 keys are accepted")


def key_hint(public_key: PublicKey) -> str:
    pem = public_key.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def sign_pae(private_key: PrivateKey, payload: bytes) -> bytes:
    data = pae(PAYLOAD_TYPE, payload)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(data)
    return private_key.sign(data, ec.ECDSA(_SIGN_CURVES[private_key.curve.name]()))


def check_signature(public_key: PublicKey, signature: bytes, payload: bytes,
                    *, compat_hash: type[hashes.HashAlgorithm] | None = None) -> bool:
    """Check a DSSE signature; raise if neither PAE verifies. Returns True if compat PAE was used.

    ``compat_hash`` is the ECDSA hash the model_signing 0.2 compat path used; the caller must
    then accept only a legacy statement.
    """

    def ok(data: bytes, digest: type[hashes.HashAlgorithm] | None) -> bool:
        try:
            if isinstance(public_key, ed25519.Ed25519PublicKey):
                public_key.verify(signature, data)
            else:
                assert digest is not None
                public_key.verify(signature, data, ec.ECDSA(digest()))
        except InvalidSignature:
            return False
        return True

    digest = None
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        digest = _VERIFY_CURVES[public_key.curve.name]
    if ok(pae(PAYLOAD_TYPE, payload), digest):
        return False
    if ok(pae_v02_compat(payload), compat_hash or digest):
        return True
    raise VerificationError("signature does not match the signed statement",
                            rule="signature.dsse")


def sign_key(payload: bytes, private_key: PrivateKey) -> bytes:
    """A bundle with a DSSE signature of ``payload`` by ``private_key``."""
    return build_bundle(payload=payload, signature=sign_pae(private_key, payload),
                        key_hint=key_hint(private_key.public_key()))


def verify_key(bundle: ParsedBundle, public_keys: Sequence[PublicKey]) -> tuple[str, bool]:
    """Which trusted key signed ``bundle`` (``"key:sha256:<hint>"``) and whether compat PAE."""
    if not public_keys:
        raise VerificationError("no trusted public key to verify a key signature with",
                                rule="trust.signers")
    candidates = [k for k in public_keys if bundle.key_hint in (None, key_hint(k))]
    if not candidates:
        raise VerificationError(
            "signature was made by a key that is not trusted", rule="trust.signers",
            detail=f"bundle names key sha256:{bundle.key_hint}",
        )
    for key in candidates:
        try:
            compat = check_signature(key, bundle.envelope.signature, bundle.envelope.payload)
        except VerificationError:
            continue
        return f"key:sha256:{key_hint(key)}", compat
    raise VerificationError("signature does not verify with the trusted key",
                            rule="signature.dsse")

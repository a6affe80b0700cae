"""The OMS ``certificate`` method: a DSSE signature by a key certified by an X.509 chain.

Verification builds the path with ``cryptography``'s X.509 verifier against trust anchors
that the policy or the caller names explicitly: never the web PKI or a system store by
default, since any public CA could then vouch for a model. The leaf must be allowed to sign
code (KeyUsage digitalSignature and/or ExtendedKeyUsage codeSigning), must not itself be a CA
unless ``allow_ca_leaf`` (model_signing's own test certificates are CA leaves), must carry the
expected identity when one is given, and must be valid at signing time; these bundles carry
no signed timestamp, so "signing time" is now.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import (
    ExtensionPolicy,
    PolicyBuilder,
    Store,
)
from cryptography.x509.verification import (
    VerificationError as X509VerificationError,
)

from safeload.errors import UsageError, VerificationError
from safeload.signing._bundle import ParsedBundle, build_bundle
from safeload.signing._key import PrivateKey, _pem_bytes, check_signature, sign_pae

__all__ = ["certificate_identities", "load_certificates", "sign_certificate", "verify_certificate"]


def load_certificates(source: str | bytes | os.PathLike[str]) -> list[x509.Certificate]:
    """Every PEM certificate in a file (or inline PEM); ``UsageError`` if there is none."""
    try:
        certs = x509.load_pem_x509_certificates(_pem_bytes(source))
    except ValueError as exc:
        raise UsageError("cannot load certificates", detail=str(exc)) from exc
    return certs


def certificate_identities(cert: x509.Certificate) -> list[str]:
    """SAN emails, URIs and DNS names, then subject CNs: what ``identity`` may match."""
    out: list[str] = []
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        for kind in (x509.RFC822Name, x509.UniformResourceIdentifier, x509.DNSName):
            out.extend(str(v) for v in san.get_values_for_type(kind))
    out.extend(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return out


def sign_certificate(payload: bytes, private_key: PrivateKey, signing_cert: x509.Certificate,
                     chain: Sequence[x509.Certificate] = ()) -> bytes:
    """A bundle carrying the leaf and chain, signed by the key the leaf certifies."""
    if signing_cert.public_key() != private_key.public_key():
        raise UsageError("the signing certificate does not certify this private key",
                         rule="signing.certificate")
    der = tuple(c.public_bytes(serialization.Encoding.DER) for c in (signing_cert, *chain))
    return build_bundle(payload=payload, signature=sign_pae(private_key, payload),
                        certificates=der)


def _check_leaf_use(leaf: x509.Certificate, allow_ca_leaf: bool) -> None:
    ext = leaf.extensions
    try:
        if ext.get_extension_for_class(x509.BasicConstraints).value.ca and not allow_ca_leaf:
            raise VerificationError(
                "signing certificate is a CA certificate", rule="trust.allow_ca_leaf",
                detail="a CA may issue certificates to anyone; set allow_ca_leaf to accept it",
            )
    except x509.ExtensionNotFound:
        pass
    usable = False
    try:
        ku = ext.get_extension_for_class(x509.KeyUsage).value
        if not ku.digital_signature:
            raise VerificationError("signing certificate may not sign (KeyUsage)",
                                    rule="certificate.key_usage")
        usable = True
    except x509.ExtensionNotFound:
        pass
    try:
        eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.CODE_SIGNING not in eku:
            raise VerificationError("signing certificate is not for code signing (EKU)",
                                    rule="certificate.key_usage")
        usable = True
    except x509.ExtensionNotFound:
        pass
    if not usable:
        raise VerificationError("signing certificate has neither KeyUsage nor ExtendedKeyUsage",
                                rule="certificate.key_usage")


def verify_certificate(
    bundle: ParsedBundle,
    *,
    anchors: Sequence[x509.Certificate],
    identity: str | None = None,
    allow_ca_leaf: bool = False,
    at: datetime.datetime | None = None,
) -> tuple[str, bool]:
    """Who signed ``bundle`` (``"certificate:<identity>"``) and whether the compat PAE was used."""
    if not anchors:
        raise VerificationError("no trust anchors to verify a certificate signature with",
                                rule="trust.signers")
    try:
        leaf = x509.load_der_x509_certificate(bundle.certificates[0])
        intermediates = [x509.load_der_x509_certificate(c) for c in bundle.certificates[1:]]
    except ValueError as exc:
        raise VerificationError("malformed certificate in bundle", rule="oms.bundle",
                                detail=str(exc)) from None
    when = at or datetime.datetime.now(datetime.UTC)
    verifier = (
        PolicyBuilder()
        .store(Store(list(anchors)))
        .time(when)
        .extension_policies(ca_policy=ExtensionPolicy.webpki_defaults_ca(),
                            ee_policy=ExtensionPolicy.permit_all())
        .build_client_verifier()
    )
    try:
        verifier.verify(leaf, intermediates)
    except X509VerificationError as exc:
        raise VerificationError("certificate chain does not lead to a trusted anchor",
                                rule="certificate.chain", detail=str(exc)) from None
    _check_leaf_use(leaf, allow_ca_leaf)
    names = certificate_identities(leaf)
    if identity is not None and identity not in names:
        raise VerificationError(
            "signing certificate does not carry the expected identity",
            rule="certificate.identity", detail=f"expected {identity!r}, certificate has {names}",
        )
    key = leaf.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise VerificationError("unsupported key type in signing certificate",
                                rule="signing.key_type")
    compat = check_signature(key, bundle.envelope.signature, bundle.envelope.payload,
                             compat_hash=hashes.SHA256)
    who = identity or (names[0] if names else leaf.subject.rfc4514_string())
    return f"certificate:{who}", compat

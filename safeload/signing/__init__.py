"""Signing capability: OMS model signatures (key, certificate, Sigstore) and ``VerifiedModel``.

``verify`` checks a model folder's ``model.sig`` against trusted signers and returns the
verified bytes of every signed file; ``sign`` writes one; ``hash_model`` computes the OMS
manifest on its own.
"""

from safeload.signing._hashing import hash_model
from safeload.signing._manifest import Manifest, Resource, Serialization
from safeload.signing._sign import sign
from safeload.signing._trust import (
    CertificateSignerSpec,
    KeySignerSpec,
    SigstoreSignerSpec,
    TrustSettings,
    make_signer,
)
from safeload.signing._verified import (
    VerificationRecord,
    VerifiedFile,
    VerifiedModel,
    VerifiedSigner,
)
from safeload.signing._verify import verify

__all__ = [
    "CertificateSignerSpec",
    "KeySignerSpec",
    "Manifest",
    "Resource",
    "Serialization",
    "SigstoreSignerSpec",
    "TrustSettings",
    "VerificationRecord",
    "VerifiedFile",
    "VerifiedModel",
    "VerifiedSigner",
    "hash_model",
    "make_signer",
    "sign",
    "verify",
]

"""Sigstore bundle v0.3 JSON with a DSSE envelope: the OMS ``model.sig`` container.

Only what the key and certificate methods need is built here; Sigstore (keyless) bundles are
parsed just far enough to route them to the Sigstore verifier. Parsing is strict and
untrusting: the file is size-capped, every field is type-checked, and exactly one DSSE
signature is accepted (several signatures belong in several ``.sig`` files, so each one is
counted as one signer).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any, Literal

from safeload.errors import VerificationError
from safeload.signing._manifest import PAYLOAD_TYPE

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "MAX_BUNDLE_BYTES",
    "Envelope",
    "ParsedBundle",
    "build_bundle",
    "pae",
    "pae_v02_compat",
    "parse_bundle",
]

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
_ACCEPTED_MEDIA_TYPES = frozenset({
    BUNDLE_MEDIA_TYPE,
    "application/vnd.dev.sigstore.bundle+json;version=0.3",
})
MAX_BUNDLE_BYTES = 16 << 20
"""A signature file is a few KB; refuse anything that could only be an attack on the parser."""

BundleMethod = Literal["key", "certificate", "sigstore"]


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: what is actually signed."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def pae_v02_compat(payload: bytes) -> bytes:
    """The PAE model_signing 0.2 signed by mistake (``DSSEV1`` and the payload's ``repr``).

    Accepted only to verify old signatures (their statements use the legacy predicate); never
    produced.
    """
    text = f"DSSEV1 {len(PAYLOAD_TYPE)} {PAYLOAD_TYPE} {len(payload)} {payload!r}"
    return text.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Envelope:
    payload: bytes
    payload_type: str
    signature: bytes
    keyid: str = ""


@dataclass(frozen=True, slots=True)
class ParsedBundle:
    """A bundle's parts, not yet verified."""

    method: BundleMethod
    envelope: Envelope
    key_hint: str | None
    certificates: tuple[bytes, ...]
    """DER certificates, leaf first (certificate and Sigstore methods)."""
    raw: bytes


def _bad(msg: str) -> VerificationError:
    return VerificationError(f"malformed signature bundle: {msg}", rule="oms.bundle")


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise _bad(f"{what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{what} is not valid base64") from None


def _dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _bad(f"{what} is missing or not an object")
    return value


def parse_bundle(data: bytes) -> ParsedBundle:
    """Parse bundle JSON; ``VerificationError`` for anything that is not a usable bundle."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise _bad(f"larger than {MAX_BUNDLE_BYTES} bytes")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _bad(f"not JSON ({exc})") from None
    doc = _dict(doc, "bundle")
    media_type = doc.get("mediaType")
    if media_type not in _ACCEPTED_MEDIA_TYPES:
        raise _bad(f"unsupported mediaType {media_type!r}")
    material = _dict(doc.get("verificationMaterial"), "verificationMaterial")
    env = _dict(doc.get("dsseEnvelope"), "dsseEnvelope")
    payload_type = env.get("payloadType")
    if payload_type != PAYLOAD_TYPE:
        raise _bad(f"payloadType {payload_type!r}, expected {PAYLOAD_TYPE}")
    sigs = env.get("signatures")
    if not isinstance(sigs, list) or len(sigs) != 1:
        raise _bad("the DSSE envelope must carry exactly one signature")
    sig = _dict(sigs[0], "signatures[0]")
    keyid = sig.get("keyid", "")
    envelope = Envelope(
        payload=_b64(env.get("payload"), "dsseEnvelope.payload"),
        payload_type=payload_type,
        signature=_b64(sig.get("sig"), "signatures[0].sig"),
        keyid=keyid if isinstance(keyid, str) else "",
    )
    tlog = material.get("tlogEntries", [])
    if not isinstance(tlog, list):
        raise _bad("verificationMaterial.tlogEntries is not a list")
    if "publicKey" in material:
        hint = _dict(material["publicKey"], "publicKey").get("hint")
        if hint is not None and not isinstance(hint, str):
            raise _bad("publicKey.hint is not a string")
        return ParsedBundle("key", envelope, hint or None, (), data)
    if "certificate" in material:
        leaf = _b64(_dict(material["certificate"], "certificate").get("rawBytes"),
                    "certificate.rawBytes")
        return ParsedBundle("sigstore", envelope, None, (leaf,), data)
    if "x509CertificateChain" in material:
        chain = _dict(material["x509CertificateChain"], "x509CertificateChain").get("certificates")
        if not isinstance(chain, list) or not chain:
            raise _bad("x509CertificateChain.certificates is empty")
        certs = tuple(_b64(_dict(c, "certificate").get("rawBytes"), "certificates[].rawBytes")
                      for c in chain)
        return ParsedBundle("sigstore" if tlog else "certificate", envelope, None, certs, data)
    raise _bad("verificationMaterial has no publicKey, certificate or x509CertificateChain")


def build_bundle(
    *, payload: bytes, signature: bytes, key_hint: str | None = None,
    certificates: tuple[bytes, ...] = (),
) -> bytes:
    """Bundle JSON for the key (``key_hint``) or certificate (``certificates``) method."""
    material: dict[str, Any]
    if certificates:
        material = {"x509CertificateChain": {"certificates": [
            {"rawBytes": base64.b64encode(c).decode("ascii")} for c in certificates]}}
    else:
        material = {"publicKey": {"hint": key_hint or ""}}
    material["tlogEntries"] = []
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(signature).decode("ascii"), "keyid": ""}],
        },
    }
    return json.dumps(doc, indent=2).encode("utf-8")

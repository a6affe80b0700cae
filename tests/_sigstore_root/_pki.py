"""A private Fulcio: root + intermediate CA, a CT log key, and short-lived leaves with an SCT.

The leaves follow the Fulcio profile closely enough that *unmodified* sigstore-python accepts
them: empty subject, critical SAN with the identity, digitalSignature + codeSigning, the OIDC
issuer in both the v1 (raw) and v2 (DER UTF8String) extensions, and one embedded
precertificate SCT signed by our CT key over the RFC 6962 ``digitally-signed`` structure.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import struct
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OIDC_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """RFC 6962 key id: SHA-256 of the SubjectPublicKeyInfo (what sigstore keyrings use)."""
    return hashlib.sha256(spki_der(key)).digest()


def _der_octet_string(data: bytes) -> bytes:
    n = len(data)
    if n < 0x80:
        length = bytes([n])
    else:
        raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(raw)]) + raw
    return b"\x04" + length + data


def _u24(n: int) -> bytes:
    return n.to_bytes(3, "big")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "safeload-test.invalid"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


@dataclass
class CertificateAuthority:
    """Root (self-signed) and intermediate, both P-384, valid for ten years from creation."""

    root_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    intermediate_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP384R1())
    )
    ct_key: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )
    created: dt.datetime = field(
        default_factory=lambda: (
            dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
        )
    )

    def __post_init__(self) -> None:
        start, end = self.created, self.created + dt.timedelta(days=3650)
        root_pub = self.root_key.public_key()
        self.root = (
            x509.CertificateBuilder()
            .subject_name(_name("safeload-test root"))
            .issuer_name(_name("safeload-test root"))
            .public_key(root_pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_pub), critical=False)
            .sign(self.root_key, hashes.SHA384())
        )
        inter_pub = self.intermediate_key.public_key()
        self.intermediate = (
            x509.CertificateBuilder()
            .subject_name(_name("safeload-test intermediate"))
            .issuer_name(self.root.subject)
            .public_key(inter_pub)
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(inter_pub), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(root_pub), critical=False
            )
            .sign(self.root_key, hashes.SHA384())
        )

    @property
    def chain(self) -> list[x509.Certificate]:
        """Issuer chain of every leaf, leaf-side first (the order Fulcio and trusted roots use)."""
        return [self.intermediate, self.root]

    def issue(
        self,
        public_key: ec.EllipticCurvePublicKey,
        *,
        san: x509.GeneralName,
        issuer: str,
        not_before: dt.datetime,
        lifetime: dt.timedelta = dt.timedelta(minutes=10),
        sct_key: ec.EllipticCurvePrivateKey | None = None,
    ) -> x509.Certificate:
        """Issue a Fulcio-style leaf with one embedded SCT (signed by ``sct_key`` or our CT key)."""
        inter_pub = self.intermediate_key.public_key()
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.intermediate.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_before + lifetime)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(inter_pub), critical=False
            )
            .add_extension(x509.SubjectAlternativeName([san]), critical=True)
            .add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False
            )
            .add_extension(
                x509.UnrecognizedExtension(OIDC_ISSUER_V2, asn1.encode_der(issuer)),
                critical=False,
            )
        )
        # The precertificate TBS is the final TBS minus the SCT extension, so sign the SCT over
        # the TBS of the same certificate built without it, then add the SCT list last.
        precert = builder.sign(self.intermediate_key, hashes.SHA384())
        sct = self._sct(precert.tbs_certificate_bytes, inter_pub, not_before, sct_key)
        sct_list = struct.pack("!H", len(sct)) + sct
        leaf = builder.add_extension(
            x509.UnrecognizedExtension(
                SCT_LIST, _der_octet_string(struct.pack("!H", len(sct_list)) + sct_list)
            ),
            critical=False,
        ).sign(self.intermediate_key, hashes.SHA384())
        assert leaf.tbs_precertificate_bytes == precert.tbs_certificate_bytes
        return leaf

    def _sct(
        self,
        tbs: bytes,
        issuer_pub: ec.EllipticCurvePublicKey,
        when: dt.datetime,
        sct_key: ec.EllipticCurvePrivateKey | None,
    ) -> bytes:
        signer = sct_key or self.ct_key
        millis = int(when.timestamp() * 1000)
        signed_entry = key_id(issuer_pub) + _u24(len(tbs)) + tbs
        # digitally-signed struct: version v1, certificate_timestamp, precert_entry, no exts.
        to_sign = struct.pack("!BBQH", 0, 0, millis, 1) + signed_entry + struct.pack("!H", 0)
        signature = signer.sign(to_sign, ec.ECDSA(hashes.SHA256()))
        return (
            struct.pack("!B", 0)
            + key_id(self.ct_key.public_key())
            + struct.pack("!QH", millis, 0)
            + struct.pack("!BBH", 4, 3, len(signature))  # sha256, ecdsa
            + signature
        )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )

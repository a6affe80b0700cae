"""Key and certificate material made fresh in each test (nothing private is checked in)."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def write_key(path: Path, key: PrivateKey) -> tuple[Path, Path]:
    """Write ``key`` and its public half as PEM; returns (private, public) paths."""
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    pub = path.with_suffix(".pub.pem")
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, pub


def make_pki(folder: Path, *, leaf_email: str = "release@org.example",
             leaf_is_ca: bool = False) -> dict[str, Path]:
    """Root CA -> intermediate -> code-signing leaf; PEM files in ``folder``."""
    now = datetime.datetime.now(datetime.UTC)

    def cert(subject: str, key: PrivateKey, issuer: str, issuer_key: PrivateKey, *, ca: bool,
             email: str | None = None) -> x509.Certificate:
        b = (x509.CertificateBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
             .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(days=1))
             .not_valid_after(now + datetime.timedelta(days=30))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                            critical=False)
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 issuer_key.public_key()), critical=False))  # type: ignore[arg-type]
        signs = email is not None
        b = b.add_extension(x509.KeyUsage(signs, False, False, False, False, ca, ca, False, False),
                            critical=True)
        if email is not None:
            b = (b.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                                critical=False)
                 .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(email)]),
                                critical=False))
        return b.sign(issuer_key, hashes.SHA384())

    root_key = ec.generate_private_key(ec.SECP384R1())
    int_key = ec.generate_private_key(ec.SECP384R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = cert("test-root", root_key, "test-root", root_key, ca=True)
    inter = cert("test-intermediate", int_key, "test-root", root_key, ca=True)
    leaf = cert("test-leaf", leaf_key, "test-intermediate", int_key, ca=leaf_is_ca,
                email=leaf_email)
    pem = serialization.Encoding.PEM
    out = {"root": folder / "root.pem", "intermediate": folder / "int.pem",
           "leaf": folder / "leaf.pem"}
    out["root"].write_bytes(root.public_bytes(pem))
    out["intermediate"].write_bytes(inter.public_bytes(pem))
    out["leaf"].write_bytes(leaf.public_bytes(pem))
    out["leaf_key"], _ = write_key(folder / "leaf-key.pem", leaf_key)
    return out


def make_model(folder: Path) -> Path:
    """A small model folder with a subfolder, an empty file and a ':' in a name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 64)
    (folder / "config.json").write_text('{"hidden": 4}')
    (folder / "sub").mkdir(exist_ok=True)
    (folder / "sub" / "tok:en.txt").write_text("a b c")
    (folder / "empty").write_bytes(b"")
    return folder

"""Every key, certificate, legacy, OMS-spec and tampered vector gives the README's result.

Vectors: /work/shared/testdata/sigstore (see its README). Offline throughout. The keyless
``model-transparency/v1.*-sigstore`` vectors go through ``safeload.verify`` with part B's
Sigstore verifier and the pinned production trust config.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import safeload
from safeload.policy import CertificateSigner, KeySigner, SigstoreSigner

VECTORS = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "sigstore"
MT = VECTORS / "model-transparency"
OMS = VECTORS / "oms-spec" / "v1.0"
PUB = MT / "keys" / "signing-key-pub.pem"
CA = MT / "keys" / "ca-cert.pem"
PROD = VECTORS / "trust_config.production.json"
STEFAN = SigstoreSigner(identity="stefanb@us.ibm.com",
                        issuer="https://sigstore.verify.ibm.com/oauth2")

pytestmark = pytest.mark.skipif(not VECTORS.is_dir(), reason="shared test vectors not present")


def _key() -> list[KeySigner]:
    return [KeySigner(public_key=str(PUB))]


def _ca() -> list[CertificateSigner]:
    return [CertificateSigner(ca_chain=str(CA))]


def test_elliptic_key_valid() -> None:
    model = safeload.verify(MT / "v1.1.0-elliptic-key", signers=_key())
    assert sorted(model.files) == ["signme-1", "signme-2"]
    assert model.signer_ignored == ("ignore-me",)
    assert model.model_digest.startswith("sha256:92745110")


def test_elliptic_key_unrelated_key_invalid() -> None:
    unrelated = KeySigner(public_key=str(MT / "keys" / "unrelated-ec-p256-pub.pem"))
    with pytest.raises(safeload.VerificationError, match="not trusted"):
        safeload.verify(MT / "v1.1.0-elliptic-key", signers=[unrelated])


def test_renamed_file_invalid() -> None:
    with pytest.raises(safeload.VerificationError) as info:
        safeload.verify(MT / "derived-v1.1.0-elliptic-key-renamed", signers=_key())
    assert info.value.rule == "oms.files"
    assert "signme-3" in str(info.value) and "signme-2" in str(info.value)


@pytest.mark.parametrize("vector", ["v1.1.0-certificate", "v0.2.0-certificate"])
def test_certificate_vectors_need_allow_ca_leaf(vector: str) -> None:
    # The vectors' signing "leaf" is CA:TRUE: valid for model_signing, refused by default here.
    with pytest.raises(safeload.VerificationError) as info:
        safeload.verify(MT / vector, signers=_ca())
    assert info.value.rule == "trust.allow_ca_leaf"
    model = safeload.verify(MT / vector, signers=_ca(), allow_ca_leaf=True)
    assert sorted(model.files) == ["signme-1", "signme-2"]


def test_legacy_v02_uses_compat_path() -> None:
    model = safeload.verify(MT / "v0.2.0-certificate", signers=_ca(), allow_ca_leaf=True)
    assert model.signer_ignored == ()
    assert model.files["signme-1"].digest.startswith("sha256:f6310066")


def test_certificate_without_anchor_invalid() -> None:
    # Default trust is no trust: a chain to an unrelated anchor fails.
    other = MT / "keys" / "int-ca-cert.pem"
    with pytest.raises(safeload.VerificationError):
        safeload.verify(MT / "v1.1.0-certificate",
                        signers=[CertificateSigner(ca_chain=str(other))], allow_ca_leaf=False)


def test_certificate_identity_checked() -> None:
    with pytest.raises(safeload.VerificationError, match="identity"):
        safeload.verify(MT / "v1.1.0-certificate", allow_ca_leaf=True,
                        signers=[CertificateSigner(ca_chain=str(CA), identity="mallory")])
    safeload.verify(MT / "v1.1.0-certificate", allow_ca_leaf=True,
                    signers=[CertificateSigner(ca_chain=str(CA), identity="intermediate-ca")])


def test_oms_valid_key_bundle() -> None:
    model = safeload.verify(OMS / "model", signature=OMS / "valid" / "key.bundle.json",
                            signers=_key())
    assert sorted(model.files) == ["signme-1", "signme-2"]


def test_oms_valid_certificate_bundle() -> None:
    safeload.verify(OMS / "model", signature=OMS / "valid" / "certificate.bundle.json",
                    signers=_ca(), allow_ca_leaf=True)


@pytest.mark.parametrize("name", [
    "invalid-payload/wrong-predicate", "invalid/empty", "invalid/missing-envelope",
    "invalid/missing-verification-material",
])
def test_oms_invalid_bundles(name: str) -> None:
    with pytest.raises(safeload.VerificationError):
        safeload.verify(OMS / "model", signature=OMS / f"{name}.bundle.json", signers=_key())


def test_oms_missing_tlog_entries_invalid() -> None:
    with pytest.raises(safeload.VerificationError):
        safeload.verify(MT / "v1.1.0-sigstore",
                        signature=OMS / "invalid" / "missing-tlog-entries.bundle.json",
                        signers=[STEFAN], trust_config=PROD)


def test_sigstore_v110_valid() -> None:
    model = safeload.verify(MT / "v1.1.0-sigstore", signers=[STEFAN], trust_config=PROD)
    assert model.signer_ignored == ("ignore-me",)
    assert "ignore-me" not in model.files


def test_oms_valid_sigstore_bundle() -> None:
    safeload.verify(MT / "v1.1.0-sigstore", signature=OMS / "valid" / "sigstore.bundle.json",
                    signers=[STEFAN], trust_config=PROD)


def test_sigstore_v101_needs_ignore_paths() -> None:
    root = MT / "v1.0.1-sigstore"
    with pytest.raises(safeload.VerificationError, match="ignore-me"):
        safeload.verify(root, signers=[STEFAN], trust_config=PROD)
    model = safeload.verify(root, signers=[STEFAN], trust_config=PROD,
                            ignore_paths=[str(root / "ignore-me")])
    assert model.verifier_ignored == ("ignore-me",)


def test_sigstore_wrong_identity_invalid() -> None:
    other = SigstoreSigner(identity="mallory@example.com",
                           issuer="https://sigstore.verify.ibm.com/oauth2")
    with pytest.raises(safeload.VerificationError):
        safeload.verify(MT / "v1.1.0-sigstore", signers=[other], trust_config=PROD)


def test_sigstore_tampered_invalid() -> None:
    with pytest.raises(safeload.VerificationError) as info:
        safeload.verify(MT / "derived-v1.1.0-sigstore-tampered", signers=[STEFAN],
                        trust_config=PROD)
    assert info.value.rule == "oms.digest" and "signme-1" in str(info.value)


def test_sigstore_extra_file_invalid_unless_ignored() -> None:
    root = MT / "derived-v1.1.0-sigstore-extra-file"
    with pytest.raises(safeload.VerificationError, match=r"extra\.bin"):
        safeload.verify(root, signers=[STEFAN], trust_config=PROD)
    model = safeload.verify(root, signers=[STEFAN], trust_config=PROD, ignore_paths=["extra.bin"])
    assert "extra.bin" not in model.files


def test_signer_ignore_paths_cannot_hide_a_loadable_file(tmp_path: Path) -> None:
    # A file the signer's ignore list covers is never part of the verified files.
    root = tmp_path / "m"
    shutil.copytree(MT / "v1.1.0-elliptic-key", root)
    model = safeload.verify(root, signers=_key())
    with pytest.raises(KeyError):
        model.files["ignore-me"]
    assert model.signer_ignored == ("ignore-me",)


def test_cli_vectors_exit_codes() -> None:
    from safeload._cli import main

    assert main(["verify", str(MT / "v1.1.0-elliptic-key"), "--key", str(PUB)]) == 0
    assert main(["verify", str(MT / "derived-v1.1.0-elliptic-key-renamed"),
                 "--key", str(PUB)]) == 1
    assert main(["verify", str(MT / "v1.1.0-certificate"), "--cert-chain", str(CA)]) == 1
    assert main(["verify", str(MT / "v1.1.0-certificate"), "--cert-chain", str(CA),
                 "--allow-ca-leaf"]) == 0
    assert main(["verify", str(MT / "v1.1.0-sigstore"), "--cert-identity", "stefanb@us.ibm.com",
                 "--cert-oidc-issuer", "https://sigstore.verify.ibm.com/oauth2",
                 "--trust-config", str(PROD), "--format", "json"]) == 0
    assert main(["verify", str(MT / "no-such-dir"), "--key", str(PUB)]) == 2

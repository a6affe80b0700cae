"""Interop both ways with model_signing 1.1.1 (the reference OMS implementation), offline.

model_signing is a test-only dependency; keys and certificates are generated here.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_signing_helpers import make_model, make_pki, write_key

import safeload
from safeload.policy import CertificateSigner, KeySigner

ms_hashing = pytest.importorskip("model_signing.hashing")
ms_signing = pytest.importorskip("model_signing.signing")
ms_verifying = pytest.importorskip("model_signing.verifying")


def _flip(root: Path) -> None:
    data = bytearray((root / "weights.bin").read_bytes())
    data[7] ^= 0x40
    (root / "weights.bin").write_bytes(bytes(data))


def _add(root: Path) -> None:
    (root / "sub" / "new.py").write_text("x = 1\n")


def _remove(root: Path) -> None:
    (root / "config.json").unlink()


def _rename(root: Path) -> None:
    (root / "config.json").rename(root / "config.renamed.json")


TAMPER: dict[str, Callable[[Path], None]] = {
    "flip": _flip, "add": _add, "remove": _remove, "rename": _rename}


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return write_key(tmp_path / "key.pem", ec.generate_private_key(ec.SECP256R1()))


def _ms_sign_key(root: Path, priv: Path) -> Path:
    sig = root / "model.sig"
    (ms_signing.Config().use_elliptic_key_signer(private_key=priv)
     .set_hashing_config(ms_hashing.Config().use_file_serialization()
                         .set_ignored_paths(paths=[sig], ignore_git_paths=True))
     .sign(root, sig))
    return sig


def _ms_verify_key(root: Path, pub: Path, sig: Path) -> None:
    ms_verifying.Config().use_elliptic_key_verifier(public_key=pub).verify(root, sig)


def test_model_signing_key_signature_verifies_in_safeload(tmp_path: Path,
                                                          keys: tuple[Path, Path]) -> None:
    priv, pub = keys
    root = make_model(tmp_path / "model")
    _ms_sign_key(root, priv)
    model = safeload.verify(root, signers=[KeySigner(public_key=str(pub))])
    assert sorted(model.files) == ["config.json", "empty", "sub/tok:en.txt", "weights.bin"]


@pytest.mark.parametrize("serialization", ["files", "shards"])
def test_safeload_key_signature_verifies_in_model_signing(
        tmp_path: Path, keys: tuple[Path, Path], serialization: str) -> None:
    priv, pub = keys
    root = make_model(tmp_path / "model")
    if serialization == "shards":
        # model_signing's shard serializer skips empty files (safeload covers them as
        # name:0:0) and cannot parse shard names of files with ':' in their name, so a
        # shards signature interoperates only for folders without either.
        (root / "empty").unlink()
        (root / "sub" / "tok:en.txt").unlink()
    sig = safeload.sign(root, method="key", private_key=priv, serialization=serialization,  # type: ignore[arg-type]
                        shard_size=4096)
    _ms_verify_key(root, pub, sig)
    safeload.verify(root, signers=[KeySigner(public_key=str(pub))])


@pytest.mark.parametrize("change", sorted(TAMPER))
@pytest.mark.parametrize("signer", ["model_signing", "safeload"])
def test_tampering_refused_by_both(tmp_path: Path, keys: tuple[Path, Path], change: str,
                                   signer: str) -> None:
    priv, pub = keys
    root = make_model(tmp_path / "model")
    if signer == "model_signing":
        sig = _ms_sign_key(root, priv)
    else:
        sig = safeload.sign(root, method="key", private_key=priv, serialization="files")
    TAMPER[change](root)
    with pytest.raises(ValueError):  # model_signing raises plain ValueError
        _ms_verify_key(root, pub, sig)
    with pytest.raises(safeload.VerificationError):
        safeload.verify(root, signers=[KeySigner(public_key=str(pub))])


def test_certificate_interop_both_ways(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    anchors = [pki["root"]]
    ours = make_model(tmp_path / "ours")
    theirs = tmp_path / "theirs"
    shutil.copytree(ours, theirs)
    # model_signing signs, safeload verifies.
    sig = theirs / "model.sig"
    (ms_signing.Config()
     .use_certificate_signer(private_key=pki["leaf_key"], signing_certificate=pki["leaf"],
                             certificate_chain=[pki["intermediate"]])
     .set_hashing_config(ms_hashing.Config().use_file_serialization()
                         .set_ignored_paths(paths=[sig], ignore_git_paths=True))
     .sign(theirs, sig))
    model = safeload.verify(theirs, signers=[CertificateSigner(ca_chain=str(pki["root"]),
                                                               identity="release@org.example")])
    assert len(model.files) == 4
    # safeload signs, model_signing verifies.
    our_sig = safeload.sign(ours, method="certificate", private_key=pki["leaf_key"],
                            signing_cert=pki["leaf"], cert_chain=[pki["intermediate"]],
                            serialization="files")
    ms_verifying.Config().use_certificate_verifier(certificate_chain=anchors).verify(ours, our_sig)
    # ...and both refuse the same tampering.
    _flip(ours)
    with pytest.raises(ValueError):
        ms_verifying.Config().use_certificate_verifier(certificate_chain=anchors).verify(
            ours, our_sig)
    with pytest.raises(safeload.VerificationError):
        safeload.verify(ours, signers=[CertificateSigner(ca_chain=str(pki["root"]))])


def test_hash_model_matches_model_signing(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    (root / "empty").unlink()
    for method in ("files", "shards"):
        ours = safeload.hash_model(root, method=method, shard_size=1000)  # type: ignore[arg-type]
        cfg = ms_hashing.Config()
        cfg = (cfg.use_file_serialization() if method == "files"
               else cfg.use_shard_serialization(shard_size=1000))
        theirs = cfg.hash(root)
        assert [(r.name, r.digest.hex()) for r in ours.resources] == [
            (rd.identifier, rd.digest.digest_hex) for rd in theirs.resource_descriptors()]

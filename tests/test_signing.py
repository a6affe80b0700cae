"""Sign -> verify round trips with real keys and certificates made in the test."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from test_signing_helpers import make_model, make_pki, write_key

import safeload
from safeload.policy import CertificateSigner, KeySigner, Policy
from safeload.signing import TrustSettings
from safeload.signing._bundle import parse_bundle
from safeload.signing._manifest import parse_statement


@pytest.fixture(params=["p256", "p384", "ed25519"])
def keypair(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    key = {"p256": lambda: ec.generate_private_key(ec.SECP256R1()),
           "p384": lambda: ec.generate_private_key(ec.SECP384R1()),
           "ed25519": ed25519.Ed25519PrivateKey.generate}[request.param]()
    return write_key(tmp_path / "key.pem", key)


def _statement(sig: Path) -> dict[str, object]:
    payload = parse_bundle(sig.read_bytes()).envelope.payload
    doc: dict[str, object] = json.loads(payload)
    return doc


@pytest.mark.parametrize("serialization", ["files", "shards"])
def test_key_roundtrip(tmp_path: Path, keypair: tuple[Path, Path], serialization: str) -> None:
    priv, pub = keypair
    root = make_model(tmp_path / "model")
    sig = safeload.sign(root, method="key", private_key=priv, serialization=serialization,  # type: ignore[arg-type]
                        shard_size=4096)
    assert sig == root / "model.sig"
    model = safeload.verify(root, signers=[KeySigner(public_key=str(pub))])
    assert sorted(model.files) == ["config.json", "empty", "sub/tok:en.txt", "weights.bin"]
    assert bytes(model.files["weights.bin"].buffer()) == (root / "weights.bin").read_bytes()
    assert bytes(model.files["empty"].buffer()) == b""
    manifest = parse_statement(parse_bundle(sig.read_bytes()).envelope.payload)
    names = [r.name for r in manifest.resources]
    if serialization == "shards":
        # 16 KiB in 4 KiB shards, in numeric order; the empty file is covered too.
        assert [n for n in names if n.startswith("weights.bin")] == [
            f"weights.bin:{s}:{s + 4096}" for s in range(0, 16384, 4096)]
        assert "empty:0:0" in names
    else:
        assert names == ["config.json", "empty", "sub/tok:en.txt", "weights.bin"]


@pytest.mark.parametrize("change", ["flip", "add", "remove", "rename", "empty-add"])
def test_tampering_fails(tmp_path: Path, change: str) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="key", private_key=priv)
    if change == "flip":
        data = bytearray((root / "weights.bin").read_bytes())
        data[100] ^= 1
        (root / "weights.bin").write_bytes(bytes(data))
    elif change == "add":
        (root / "sub" / "extra.py").write_text("print('hi')")
    elif change == "remove":
        (root / "config.json").unlink()
    elif change == "rename":
        (root / "config.json").rename(root / "config2.json")
    else:
        (root / "__init__.py").write_bytes(b"")
    with pytest.raises(safeload.VerificationError):
        safeload.verify(root, signers=[KeySigner(public_key=str(pub))])


def test_certificate_roundtrip_and_identity(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="certificate", private_key=pki["leaf_key"],
                  signing_cert=pki["leaf"], cert_chain=[pki["intermediate"]])
    model = safeload.verify(root, signers=[CertificateSigner(ca_chain=str(pki["root"]),
                                                             identity="release@org.example")])
    assert model.signers == ("certificate:release@org.example",)
    with pytest.raises(safeload.VerificationError, match="identity"):
        safeload.verify(root, signers=[CertificateSigner(ca_chain=str(pki["root"]),
                                                         identity="someone@else")])
    # The intermediate alone is not an anchor the policy named.
    (tmp_path / "other").mkdir()
    other = make_pki(tmp_path / "other")
    with pytest.raises(safeload.VerificationError, match="chain"):
        safeload.verify(root, signers=[CertificateSigner(ca_chain=str(other["root"]))])


def test_ca_leaf_refused_by_default(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, leaf_is_ca=True)
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="certificate", private_key=pki["leaf_key"],
                  signing_cert=pki["leaf"], cert_chain=[pki["intermediate"]])
    signer = CertificateSigner(ca_chain=str(pki["root"]))
    with pytest.raises(safeload.VerificationError, match="CA certificate"):
        safeload.verify(root, signers=[signer])
    safeload.verify(root, signers=[signer], allow_ca_leaf=True)


def test_min_signers_counts_distinct_signers(tmp_path: Path) -> None:
    a_priv, a_pub = write_key(tmp_path / "a.pem", ec.generate_private_key(ec.SECP256R1()))
    b_priv, b_pub = write_key(tmp_path / "b.pem", ed25519.Ed25519PrivateKey.generate())
    root = make_model(tmp_path / "model")
    sig_a = safeload.sign(root, method="key", private_key=a_priv, signature=tmp_path / "a.sig")
    sig_b = safeload.sign(root, method="key", private_key=b_priv, signature=tmp_path / "b.sig")
    signers = [KeySigner(public_key=str(a_pub)), KeySigner(public_key=str(b_pub))]
    trust = {"min_signers": 2, "signers": [s.model_dump() for s in signers]}
    policy = Policy.model_validate({"version": 1, "trust": trust})
    model = safeload.verify(root, policy=policy, signature=sig_a, signatures=[sig_b])
    assert len(model.signers) == 2
    with pytest.raises(safeload.VerificationError, match="requires 2"):
        safeload.verify(root, policy=policy, signature=sig_a, signatures=[sig_a])
    with pytest.raises(safeload.VerificationError, match="requires 2"):
        safeload.verify(root, policy=policy, signature=sig_a)


def test_untrusted_second_signature_fails(tmp_path: Path) -> None:
    a_priv, a_pub = write_key(tmp_path / "a.pem", ec.generate_private_key(ec.SECP256R1()))
    b_priv, _ = write_key(tmp_path / "b.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="key", private_key=a_priv)
    other = safeload.sign(root, method="key", private_key=b_priv, signature=tmp_path / "b.sig")
    with pytest.raises(safeload.VerificationError):
        safeload.verify(root, signers=[KeySigner(public_key=str(a_pub))], signatures=[other])


def test_signer_ignore_list_is_reported_not_trusted(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    (root / "notes").mkdir()
    (root / "notes" / "readme.md").write_text("hi")
    safeload.sign(root, method="key", private_key=priv, ignore_paths=["notes"])
    (root / "notes" / "payload.pkl").write_bytes(b"anything")
    model = safeload.verify(root, signers=[KeySigner(public_key=str(pub))])
    assert model.signer_ignored == ("notes/payload.pkl", "notes/readme.md")
    assert not any(n.startswith("notes/") for n in model.files)


def test_blake3_roundtrip(tmp_path: Path) -> None:
    pytest.importorskip("blake3")
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP384R1()))
    root = make_model(tmp_path / "model")
    sig = safeload.sign(root, method="key", private_key=priv, hash_type="blake3",
                        serialization="files")
    stmt = _statement(sig)
    assert stmt["predicate"]["serialization"]["hash_type"] == "blake3"  # type: ignore[index]
    model = safeload.verify(root, signers=[KeySigner(public_key=str(pub))])
    assert model.files["config.json"].digest.startswith("blake3:")


def test_pinned_digests(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="key", private_key=priv)
    signer = KeySigner(public_key=str(pub))
    model = safeload.verify(root, signers=[signer])
    import hashlib

    good = "sha256:" + hashlib.sha256((root / "config.json").read_bytes()).hexdigest()
    ok = TrustSettings(signers=(signer,), pinned_digests={"config.json": good,
                                                          "model": model.model_digest})
    safeload.verify(root, policy=ok)
    bad = TrustSettings(signers=(signer,), pinned_digests={"model": "sha256:" + "0" * 64})
    with pytest.raises(safeload.VerificationError, match="pin"):
        safeload.verify(root, policy=bad)


def test_no_signers_is_an_error_not_anyone(tmp_path: Path) -> None:
    root = make_model(tmp_path / "model")
    with pytest.raises(safeload.VerificationError, match="no trusted signers"):
        safeload.verify(root, policy=TrustSettings())


def test_symlinks_refused_unless_allowed(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="key", private_key=priv)
    (root / "link").symlink_to(root / "config.json")
    signer = KeySigner(public_key=str(pub))
    with pytest.raises(safeload.SourceError, match="symlink"):
        safeload.verify(root, signers=[signer])


def test_unsafe_mmap_needs_policy(tmp_path: Path) -> None:
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    safeload.sign(root, method="key", private_key=priv)
    signer = KeySigner(public_key=str(pub))
    with pytest.raises(safeload.UsageError, match="unsafe_mmap"):
        safeload.verify(root, signers=[signer], unsafe_mmap=True, keep_bytes=False)
    settings = TrustSettings(signers=(signer,), allow_unsafe_mmap=True)
    model = safeload.verify(root, policy=settings, unsafe_mmap=True, keep_bytes=False)
    assert model.unsafe_mmap
    assert bytes(model.files["weights.bin"].buffer()) == (root / "weights.bin").read_bytes()


def test_cli_sign_then_verify(tmp_path: Path) -> None:
    from safeload._cli import main

    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    assert main(["sign", "key", str(root), "--private-key", str(priv)]) == 0
    assert main(["verify", str(root), "--key", str(pub)]) == 0
    pki = make_pki(tmp_path)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "model.sig").unlink()
    assert main(["sign", "certificate", str(copy), "--private-key", str(pki["leaf_key"]),
                 "--signing-cert", str(pki["leaf"]), "--cert-chain", str(pki["intermediate"]),
                 "--serialization", "files"]) == 0
    assert main(["verify", str(copy), "--cert-chain", str(pki["root"]),
                 "--identity", "release@org.example"]) == 0
    assert main(["verify", str(copy), "--cert-chain", str(pki["root"]),
                 "--cert-identity", "nobody@org.example"]) == 1
    (copy / "weights.bin").write_bytes(b"changed")
    assert main(["verify", str(copy), "--cert-chain", str(pki["root"])]) == 1
    assert main(["verify", str(copy)]) in (1, 2)  # no signer named anywhere: refused


def test_cli_env_vars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safeload._cli import main

    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = make_model(tmp_path / "model")
    monkeypatch.setenv("SAFELOAD_SIGN_KEY_PRIVATE_KEY", str(priv))
    assert main(["sign", "key", str(root)]) == 0
    monkeypatch.setenv("SAFELOAD_VERIFY_KEY", str(pub))  # repeatable flags split on spaces
    assert main(["verify", str(root)]) == 0

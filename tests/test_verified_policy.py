"""A verified file must satisfy the policy it is LOADED under, not only the one that verified it.

Real keys (made with ``cryptography``), real ``safeload.sign`` signatures, a real
``torch.save`` checkpoint; the load-time re-check reads the verification record only.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from test_signing_helpers import make_pki, write_key

import safeload
from safeload.errors import PolicyViolation
from safeload.policy import (
    CertificateSigner,
    KeySigner,
    Policy,
    SandboxPolicy,
    SignerGroup,
    TrustPolicy,
)
from safeload.signing._verified import VerificationRecord

torch = pytest.importorskip("torch")


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Any]:
    """A folder holding one real torch checkpoint, keys A and B, and a signature by A."""
    root = tmp_path / "model"
    root.mkdir()
    state = {"weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "step": 7}
    torch.save(state, root / "model.pt")
    out: dict[str, Any] = {"root": root, "state": state}
    for name, key in (("a", ec.generate_private_key(ec.SECP256R1())),
                      ("b", ed25519.Ed25519PrivateKey.generate())):
        priv, pub = write_key(tmp_path / f"{name}.pem", key)
        out[name] = KeySigner(public_key=str(pub))
        out[f"{name}_priv"] = priv
        out[f"{name}_key"] = key
    out["sig_a"] = safeload.sign(root, method="key", private_key=out["a_priv"],
                                 serialization="files", signature=tmp_path / "a.sig")
    return out


def _policy(*signers: KeySigner | CertificateSigner, **trust: Any) -> Policy:
    mode = trust.pop("mode", "enforce")
    extra = {k: trust.pop(k) for k in ("audit_log", "sandbox") if k in trust}
    return Policy(mode=mode, trust=TrustPolicy(signers=signers, require_signature=True, **trust),
                  **extra)


def _verified(world: dict[str, Any], policy: Policy, *sigs: Path) -> safeload.VerifiedFile:
    first, *rest = sigs or (world["sig_a"],)
    model = safeload.verify(world["root"], policy=policy, signature=first, signatures=rest)
    return model.files["model.pt"]


def _assert_state(loaded: Any, want: dict[str, Any]) -> None:
    assert loaded["step"] == want["step"]
    assert torch.equal(loaded["weight"], want["weight"])


def _refusal(vf: safeload.VerifiedFile, policy: Policy) -> PolicyViolation:
    with pytest.raises(PolicyViolation) as info:
        safeload.load(vf, policy=policy)
    return info.value


# --- the record ---------------------------------------------------------------------------------
def test_record_holds_structured_signers_and_digests(world: dict[str, Any]) -> None:
    p1 = _policy(world["a"])
    model = safeload.verify(world["root"], policy=p1, signature=world["sig_a"])
    (signer,) = model.verified_signers
    der = world["a_key"].public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert signer.method == "key"
    assert signer.key_fingerprint == "sha256:" + hashlib.sha256(der).hexdigest()
    assert signer.description == model.signers[0]
    vf = model.files["model.pt"]
    assert vf.record is model.record
    assert vf.record is not None and vf.record.model_digest == model.model_digest
    raw = (world["root"] / "model.pt").read_bytes()
    assert vf.digest == "sha256:" + hashlib.sha256(raw).hexdigest()
    assert model.to_dict()["verified_signers"][0]["key_fingerprint"] == signer.key_fingerprint


# --- the load policy decides ----------------------------------------------------------------------
def test_same_policy_loads(world: dict[str, Any]) -> None:
    p1 = _policy(world["a"])
    _assert_state(safeload.load(_verified(world, p1), policy=p1), world["state"])


def test_other_signer_is_refused(world: dict[str, Any]) -> None:
    vf = _verified(world, _policy(world["a"]))
    err = _refusal(vf, _policy(world["b"]))
    assert err.rule == "trust.min_signers"
    assert "0 distinct signer(s)" in str(err)
    vf = _verified(world, _policy(world["a"]))
    with pytest.raises(PolicyViolation) as info:  # the sandbox worker's path decides the same
        safeload.load(vf, policy=_policy(world["b"]), sandbox=True)
    assert info.value.rule == "trust.min_signers"


def test_signer_trusted_at_verify_but_not_at_load_is_refused(world: dict[str, Any]) -> None:
    # P1 trusts both keys; only A signed. P2 trusts B alone: A's signature proves nothing to it.
    vf = _verified(world, _policy(world["a"], world["b"]))
    assert _refusal(vf, _policy(world["b"])).rule == "trust.min_signers"


def test_more_signers_required_is_refused(world: dict[str, Any]) -> None:
    vf = _verified(world, _policy(world["a"]))
    err = _refusal(vf, _policy(world["a"], world["b"], min_signers=2))
    assert err.rule == "trust.min_signers"
    assert "1 distinct signer(s)" in str(err)


def test_two_signatures_satisfy_two_signers(world: dict[str, Any], tmp_path: Path) -> None:
    sig_b = safeload.sign(world["root"], method="key", private_key=world["b_priv"],
                          serialization="files", signature=tmp_path / "b.sig")
    p = _policy(world["a"], world["b"], min_signers=2)
    vf = _verified(world, p, world["sig_a"], sig_b)
    assert vf.record is not None and len(vf.record.signers) == 2
    _assert_state(safeload.load(vf, policy=p), world["state"])


def test_layered_group_not_met_is_refused(world: dict[str, Any]) -> None:
    vf = _verified(world, _policy(world["a"]))
    layered = _policy(world["a"], world["b"], requirements=(
        SignerGroup(signers=(world["a"],), source="org.toml"),
        SignerGroup(signers=(world["b"],), source="team.toml"),
    ))
    err = _refusal(vf, layered)
    assert err.rule == "trust.requirements"
    assert "team.toml" in str(err)
    assert "org.toml" not in str(err)  # A counts for the org's group


def test_pinned_model_digest(world: dict[str, Any]) -> None:
    p1 = _policy(world["a"])
    vf = _verified(world, p1)
    assert vf.record is not None
    err = _refusal(vf, _policy(world["a"], pinned_digests={"model": "sha256:" + "0" * 64}))
    assert err.rule == "trust.pinned_digests"
    vf = _verified(world, p1)
    assert vf.record is not None
    good = _policy(world["a"], pinned_digests={"model": vf.record.model_digest})
    _assert_state(safeload.load(vf, policy=good), world["state"])


def test_pinned_file_digest(world: dict[str, Any]) -> None:
    vf = _verified(world, _policy(world["a"]))
    err = _refusal(vf, _policy(world["a"], pinned_digests={"model.pt": "sha256:" + "1" * 64}))
    assert err.rule == "trust.pinned_digests"


def test_audit_mode_records_and_loads(world: dict[str, Any], tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    vf = _verified(world, _policy(world["a"]))
    p2 = _policy(world["b"], mode="audit", audit_log=str(log),
                 pinned_digests={"model": "sha256:" + "2" * 64})
    _assert_state(safeload.load(vf, policy=p2, sandbox=False), world["state"])
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["verdict"] == "audit_violation"
    rules = [r["rule"] for r in record["rules"]]
    assert "trust.min_signers" in rules
    assert "trust.pinned_digests" in rules
    assert "trust.require_signature" in rules  # not verified by a signer P2 trusts
    assert record["verified"] is False


# --- hash-only records and the sandbox ------------------------------------------------------------
def test_hash_only_record_is_not_signed(world: dict[str, Any]) -> None:
    vf = _verified(world, _policy(world["a"]))
    assert vf.record is not None
    hash_only = dataclasses.replace(vf, record=VerificationRecord((), vf.record.model_digest))
    assert _refusal(hash_only, _policy(world["a"])).rule == "trust.require_signature"


def test_untrusted_sandbox_mode_follows_the_load_policy(world: dict[str, Any]) -> None:
    untrusted = SandboxPolicy(mode="untrusted")
    vf = _verified(world, _policy(world["a"]))
    with pytest.raises(PolicyViolation) as info:
        safeload.load(vf, policy=_policy(world["b"], sandbox=untrusted), sandbox=False)
    assert info.value.rule == "sandbox.mode"
    # Trusted by the load policy: parsing in-process is what "untrusted" mode allows.
    vf = _verified(world, _policy(world["a"]))
    loaded = safeload.load(vf, policy=_policy(world["a"], sandbox=untrusted), sandbox=False)
    _assert_state(loaded, world["state"])


# --- certificates: anchor and identity ------------------------------------------------------------
def test_certificate_anchor_and_identity_are_rechecked(tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    (tmp_path / "other").mkdir()
    pki = make_pki(tmp_path / "pki")
    other = make_pki(tmp_path / "other")
    root = tmp_path / "model"
    root.mkdir()
    torch.save({"w": torch.ones(2)}, root / "model.pt")
    safeload.sign(root, method="certificate", private_key=pki["leaf_key"],
                  signing_cert=pki["leaf"], cert_chain=[pki["intermediate"]])
    both = tmp_path / "anchors.pem"
    both.write_bytes(other["root"].read_bytes() + pki["root"].read_bytes())
    p1 = _policy(CertificateSigner(ca_chain=str(both)))

    model = safeload.verify(root, policy=p1)
    (signer,) = model.verified_signers
    anchor = x509.load_pem_x509_certificate(pki["root"].read_bytes())
    assert signer.anchor_fingerprint == "sha256:" + anchor.fingerprint(hashes.SHA256()).hex()
    assert "release@org.example" in signer.leaf_identities

    refusals = {
        "other anchor": _policy(CertificateSigner(ca_chain=str(other["root"]))),
        "other identity": _policy(CertificateSigner(ca_chain=str(pki["root"]),
                                                    identity="someone@else.example")),
    }
    for why, p2 in refusals.items():
        vf = safeload.verify(root, policy=p1).files["model.pt"]
        assert _refusal(vf, p2).rule == "trust.min_signers", why
    p2 = _policy(CertificateSigner(ca_chain=str(pki["root"]), identity="release@org.example"))
    vf = safeload.verify(root, policy=p1).files["model.pt"]
    assert torch.equal(safeload.load(vf, policy=p2)["w"], torch.ones(2))


# --- Sigstore: exact identity or anchored regex, and the exact issuer ---------------------------
def test_sigstore_identity_and_issuer_are_rechecked(
    world: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _sigstore_root import TEST_ISSUER, TestRoot, loopback_only

    from safeload.policy import SigstoreSigner

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    bot = "release-bot@safeload.example"
    with loopback_only(), TestRoot().serve(tmp_path) as run:
        sig = safeload.sign(world["root"], method="sigstore",
                            identity_token=run.root.token(email=bot),
                            trust_config=run.trust_config, signature=tmp_path / "s.sig")

        def policy(**signer: str) -> Policy:
            return _policy(SigstoreSigner(**signer), trust_config=str(run.trust_config))

        p1 = policy(identity=bot, issuer=TEST_ISSUER)
        model = safeload.verify(world["root"], policy=p1, signature=sig)
        (signer,) = model.verified_signers
        assert (signer.method, signer.identity, signer.issuer) == ("sigstore", bot, TEST_ISSUER)

        refused = {
            "other identity": policy(identity="someone@safeload.example", issuer=TEST_ISSUER),
            "other issuer": policy(identity=bot, issuer="https://issuer.invalid"),
            "partial regex": policy(identity_regex="^release-bot$", issuer=TEST_ISSUER),
        }
        for why, p2 in refused.items():
            vf = safeload.verify(world["root"], policy=p1, signature=sig).files["model.pt"]
            assert _refusal(vf, p2).rule == "trust.min_signers", why
        vf = safeload.verify(world["root"], policy=p1, signature=sig).files["model.pt"]
        regex = policy(identity_regex=r"^release-bot@safeload\.example$", issuer=TEST_ISSUER)
        _assert_state(safeload.load(vf, policy=regex), world["state"])

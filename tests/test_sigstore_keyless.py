"""Keyless signing end to end, offline, through a private Sigstore on 127.0.0.1.

``sign_sigstore`` (the product code) talks to a loopback Fulcio + Rekor stand-in through
sigstore-python's own ``SigningContext``; ``verify_sigstore`` checks the result with
sigstore-python's own ``Verifier`` against the private root. Nothing in sigstore is patched.
Negative bundles that ``sign_sigstore`` refuses to hand out (it verifies its own output) are
made with sigstore-python's signer directly, then refused by ``verify_sigstore``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _sigstore_root import TEST_ISSUER, Running, TestRoot, loopback_only, signer
from cryptography.hazmat.primitives.asymmetric import ec

from safeload.errors import SafeloadError, UsageError, VerificationError
from safeload.signing._sigstore import sign_sigstore, verify_sigstore

BOT = "release-bot@safeload.example"
TRUSTED = signer(BOT, issuer=TEST_ISSUER)
STATEMENT = json.dumps(
    {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": "tiny-model", "digest": {"sha256": "ab" * 32}}],
        "predicateType": "https://model_signing/signature/v1.0",
        "predicate": {"serialization": {"method": "files", "hash_type": "sha256"}},
    }
).encode()


@pytest.fixture(autouse=True)
def _offline() -> Iterator[None]:
    """Every test here must pass with the network gone: only loopback connects are allowed."""
    with loopback_only():
        yield


@pytest.fixture(scope="module")
def root() -> TestRoot:
    return TestRoot()


@pytest.fixture
def running(root: TestRoot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    # Loopback only: make sure no proxy setting reroutes the stand-in's traffic.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    with root.serve(tmp_path) as run:
        yield run


def _raw_sigstore_sign(run: Running, payload: bytes = STATEMENT) -> bytes:
    """Sign with sigstore-python directly: no self-check, so broken services get through."""
    from sigstore.dsse import Statement
    from sigstore.models import ClientTrustConfig
    from sigstore.oidc import IdentityToken
    from sigstore.sign import SigningContext

    config = ClientTrustConfig.from_json(run.trust_config.read_text())
    context = SigningContext.from_trust_config(config)
    with context.signer(IdentityToken(run.root.token())) as s:
        return s.sign_dsse(Statement(payload)).to_json().encode()


def _edit(bundle: bytes, change: object) -> bytes:
    doc = json.loads(bundle)
    change(doc)  # type: ignore[operator]
    return json.dumps(doc).encode()


# ----------------------------------------------------------------------------- happy paths


def test_keyless_roundtrip(running: Running) -> None:
    bundle = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )
    assert running.stand_in.requests_seen == ["/api/v2/signingCert", "/api/v1/log/entries"]
    doc = json.loads(bundle)
    assert doc["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert doc["dsseEnvelope"]["payloadType"] == "application/vnd.in-toto+json"
    (entry,) = doc["verificationMaterial"]["tlogEntries"]
    assert entry["kindVersion"] == {"kind": "dsse", "version": "0.0.1"}
    assert int(entry["inclusionProof"]["treeSize"]) > 1  # a real path, not a 1-leaf tree

    who, payload = verify_sigstore(bundle, signers=[TRUSTED], trust_config=running.trust_config)
    assert who == f"sigstore:{BOT} ({TEST_ISSUER})"
    assert payload == STATEMENT


def test_keyless_roundtrip_uri_identity_with_regex(running: Running) -> None:
    workflow = "https://ci.safeload.example/org/model/.github/workflows/release.yml@refs/tags/v1"
    token = running.root.token(email=None, subject=workflow)
    bundle = sign_sigstore(STATEMENT, identity_token=token, trust_config=running.trust_config)
    regex = r"^https://ci\.safeload\.example/org/.+/\.github/workflows/release\.yml@refs/tags/v.*$"
    who, _ = verify_sigstore(
        bundle,
        signers=[signer(identity_regex=regex, issuer=TEST_ISSUER)],
        trust_config=running.trust_config,
    )
    assert who == f"sigstore:{workflow} ({TEST_ISSUER})"
    with pytest.raises(VerificationError) as info:
        verify_sigstore(
            bundle,
            signers=[signer(identity_regex=regex.replace("org", "other"), issuer=TEST_ISSUER)],
            trust_config=running.trust_config,
        )
    assert info.value.rule == "trust.signers"


def test_log_grows_across_signatures(running: Running) -> None:
    first = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )
    second = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )
    for bundle in (first, second):
        verify_sigstore(bundle, signers=[TRUSTED], trust_config=running.trust_config)
    index = [
        int(json.loads(b)["verificationMaterial"]["tlogEntries"][0]["logIndex"])
        for b in (first, second)
    ]
    assert index[1] == index[0] + 1


def test_ambient_credential_detection(running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    """identity_token=None: the GitLab-style ``SIGSTORE_ID_TOKEN`` ambient credential is used."""
    if Path("/sys/class/dmi/id/product_name").is_file():
        name = Path("/sys/class/dmi/id/product_name").read_text().strip()
        if name.startswith("Google"):
            pytest.skip("on GCP the ambient detector would query the metadata server")
    for var in ("GITHUB_ACTIONS", "BUILDKITE", "CIRCLECI", "GOOGLE_SERVICE_ACCOUNT_NAME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("GITLAB_CI", "true")
    monkeypatch.setenv("SIGSTORE_ID_TOKEN", running.root.token())
    bundle = sign_sigstore(STATEMENT, identity_token=None, trust_config=running.trust_config)
    verify_sigstore(bundle, signers=[TRUSTED], trust_config=running.trust_config)


# ------------------------------------------------------------------------------- refusals


def test_wrong_identity_and_issuer_refused(running: Running) -> None:
    bundle = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )
    for other in (
        signer("mallory@safeload.example", issuer=TEST_ISSUER),
        signer(BOT, issuer="https://token.actions.githubusercontent.com"),
    ):
        with pytest.raises(VerificationError) as info:
            verify_sigstore(bundle, signers=[other], trust_config=running.trust_config)
        assert info.value.rule == "trust.signers"


def test_tampered_payload_refused(running: Running) -> None:
    bundle = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )
    evil = STATEMENT.replace(b"ab" * 32, b"cd" * 32)

    def swap_payload(doc: dict[str, dict[str, str]]) -> None:
        doc["dsseEnvelope"]["payload"] = base64.b64encode(evil).decode()

    with pytest.raises(VerificationError) as info:
        verify_sigstore(
            _edit(bundle, swap_payload), signers=[TRUSTED], trust_config=running.trust_config
        )
    assert info.value.rule == "signature.sigstore"


def test_tampered_log_entry_refused(running: Running) -> None:
    """Moving the integrated time by two seconds (still inside the cert) breaks the SET."""
    bundle = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )

    def backdate(doc: dict[str, dict[str, list[dict[str, str]]]]) -> None:
        entry = doc["verificationMaterial"]["tlogEntries"][0]
        entry["integratedTime"] = str(int(entry["integratedTime"]) - 2)

    with pytest.raises(VerificationError) as info:
        verify_sigstore(
            _edit(bundle, backdate), signers=[TRUSTED], trust_config=running.trust_config
        )
    assert "inclusion promise" in (info.value.detail or "")


def test_certificate_expired_at_signing_time_refused(running: Running) -> None:
    """The log integrated the entry an hour after the 10-minute certificate expired."""
    running.knobs.integrated_time_offset = 3600
    with pytest.raises(SafeloadError, match="does not verify"):
        sign_sigstore(
            STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
        )
    bundle = _raw_sigstore_sign(running)
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[TRUSTED], trust_config=running.trust_config)
    assert info.value.rule == "signature.sigstore"
    assert "not valid" in (info.value.detail or "")


def test_entry_signed_by_foreign_log_key_refused(running: Running) -> None:
    """A log that claims our log id but signs checkpoint and SET with another key."""
    running.knobs.log_signing_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SafeloadError, match="does not verify"):
        sign_sigstore(
            STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
        )
    bundle = _raw_sigstore_sign(running)
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[TRUSTED], trust_config=running.trust_config)
    assert info.value.rule == "signature.sigstore"
    assert "log entry" in (info.value.detail or "")


def test_certificate_with_foreign_sct_refused_at_signing(running: Running) -> None:
    running.knobs.sct_key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(SafeloadError, match="signing failed") as info:
        sign_sigstore(
            STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
        )
    assert "SCT" in (info.value.detail or "")


def test_private_root_bundle_refused_by_other_roots(running: Running, tmp_path: Path) -> None:
    bundle = sign_sigstore(
        STATEMENT, identity_token=running.root.token(), trust_config=running.trust_config
    )
    with pytest.raises(VerificationError):  # the embedded production root
        verify_sigstore(bundle, signers=[TRUSTED])
    other = TestRoot()
    foreign = tmp_path / "other_trust_config.json"
    foreign.write_text(json.dumps(other.trust_config(running.url, running.url)))
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[TRUSTED], trust_config=foreign)
    assert info.value.rule == "signature.sigstore"


# -------------------------------------------------------------------------- signing errors


def test_token_from_unknown_issuer_key_rejected_by_fulcio(running: Running) -> None:
    impostor = TestRoot()  # same claims, signed by an OIDC key Fulcio does not trust
    with pytest.raises(SafeloadError, match="signing failed"):
        sign_sigstore(STATEMENT, identity_token=impostor.token(), trust_config=running.trust_config)


def test_expired_or_malformed_token_is_a_usage_error(running: Running) -> None:
    import datetime as dt

    expired = running.root.token(lifetime=dt.timedelta(seconds=-60))
    for token in (expired, "not-a-jwt"):
        with pytest.raises(UsageError) as info:
            sign_sigstore(STATEMENT, identity_token=token, trust_config=running.trust_config)
        assert info.value.rule == "signing.identity_token"
    assert running.stand_in.requests_seen == []


def test_payload_must_be_an_in_toto_statement(running: Running) -> None:
    for payload in (b"{}", b"not json", json.dumps({"_type": "x", "subject": []}).encode()):
        with pytest.raises(UsageError) as info:
            sign_sigstore(
                payload, identity_token=running.root.token(), trust_config=running.trust_config
            )
        assert info.value.rule == "signing.payload"


def test_signing_with_a_broken_trust_config_is_a_usage_error(
    running: Running, tmp_path: Path
) -> None:
    bare_root = tmp_path / "trusted_root.json"  # verification material only: cannot sign
    bare_root.write_text(json.dumps(running.root.trusted_root()))
    for config in (bare_root, tmp_path / "missing.json"):
        with pytest.raises(UsageError) as info:
            sign_sigstore(STATEMENT, identity_token=running.root.token(), trust_config=config)
        assert info.value.rule == "signing.trust_config"


def test_model_folder_keyless_sign_and_verify(running: Running, tmp_path: Path) -> None:
    """The whole OMS flow: safeload.sign(method="sigstore") then safeload.verify, offline."""
    import safeload

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"hidden": 4}')
    (model / "weights.bin").write_bytes(bytes(range(256)) * 64)
    sig = safeload.sign(
        model,
        method="sigstore",
        identity_token=running.root.token(),
        trust_config=running.trust_config,
    )
    verified = safeload.verify(model, signers=[TRUSTED], trust_config=running.trust_config)
    assert verified.signers == (f"sigstore:{BOT} ({TEST_ISSUER})",)
    assert set(verified.files) == {"config.json", "weights.bin"}

    (model / "weights.bin").write_bytes(bytes(range(256)) * 63)
    with pytest.raises(VerificationError):
        safeload.verify(model, signers=[TRUSTED], trust_config=running.trust_config)
    assert sig.is_file()


def _tiny_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text('{"layers": 2}')
    (folder / "weights.bin").write_bytes(bytes(range(256)) * 16)
    return folder


def test_model_signing_verifies_our_keyless_signature(running: Running, tmp_path: Path) -> None:
    """Interop: the reference implementation accepts what sign_sigstore produced."""
    import safeload

    ms_verifying = pytest.importorskip("model_signing.verifying")
    model = _tiny_model(tmp_path / "model")
    sig = safeload.sign(
        model,
        method="sigstore",
        serialization="files",
        identity_token=running.root.token(),
        trust_config=running.trust_config,
    )
    ms_verifying.Config().use_sigstore_verifier(
        identity=BOT, oidc_issuer=TEST_ISSUER, trust_config=running.trust_config
    ).verify(model, sig)


def test_we_verify_model_signing_keyless_signature(running: Running, tmp_path: Path) -> None:
    """Interop: model_signing signs through the same private Fulcio/Rekor; safeload verifies."""
    import safeload

    ms_signing = pytest.importorskip("model_signing.signing")
    model = _tiny_model(tmp_path / "model")
    sig = tmp_path / "model.sig"
    ms_signing.Config().use_sigstore_signer(
        identity_token=running.root.token(), trust_config=running.trust_config
    ).sign(model, sig)
    verified = safeload.verify(
        model, signature=sig, signers=[TRUSTED], trust_config=running.trust_config
    )
    assert verified.signers == (f"sigstore:{BOT} ({TEST_ISSUER})",)

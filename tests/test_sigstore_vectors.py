"""Real Sigstore bundles from production, staging, conformance and model-transparency.

Expected results are the ones recorded in ``/work/shared/testdata/sigstore/README.md``
(checked there with model_signing and the sigstore CLI, offline). Everything runs offline:
production bundles verify against the trust root embedded in the sigstore wheel or the
pinned ``trust_config.production.json``. OMS file-hash checks of the MT models are the OMS
core's tests; here it is the signature + identity level.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from _sigstore_root import loopback_only, signer

from safeload.errors import UsageError, VerificationError
from safeload.signing._sigstore import verify_artifact_sigstore, verify_sigstore

TESTDATA = Path(__file__).resolve().parent.parent.parent / "shared" / "testdata" / "sigstore"
PROD = TESTDATA / "trust_config.production.json"
MT = TESTDATA / "model-transparency"
CONF = TESTDATA / "conformance"
SP = TESTDATA / "sigstore-python"
FAKE = TESTDATA / "fake-keyless"

IBM_ID = "stefanb@us.ibm.com"
IBM_ISSUER = "https://sigstore.verify.ibm.com/oauth2"
GHA = "https://token.actions.githubusercontent.com"
BEACON = (
    "https://github.com/sigstore-conformance/extremely-dangerous-public-oidc-beacon/"
    ".github/workflows/extremely-dangerous-oidc-beacon.yml@refs/heads/main"
)
FAKE_ID = "release-bot@safeload.example"
FAKE_ISSUER = "https://issuer.safeload.example"

pytestmark = pytest.mark.skipif(not TESTDATA.is_dir(), reason="shared sigstore vectors missing")

IBM = signer(IBM_ID, issuer=IBM_ISSUER)


@pytest.fixture(autouse=True)
def _offline() -> Iterator[None]:
    """Every test here must pass with the network gone: only loopback connects are allowed."""
    with loopback_only():
        yield


CONF_SIGNER = signer(BEACON, issuer=GHA)


def _subjects(payload: bytes) -> list[dict[str, object]]:
    statement = json.loads(payload)
    assert statement["_type"] == "https://in-toto.io/Statement/v1"
    subjects: list[dict[str, object]] = statement["subject"]
    return subjects


# ------------------------------------------------------------------ model-transparency (OMS)


@pytest.mark.parametrize("trust_config", [None, PROD], ids=["embedded-root", "pinned-prod"])
@pytest.mark.parametrize("version", ["v1.1.0-sigstore", "v1.0.1-sigstore"])
def test_mt_production_signature_verifies_offline(version: str, trust_config: Path | None) -> None:
    bundle = (MT / version / "model.sig").read_bytes()
    who, payload = verify_sigstore(bundle, signers=[IBM], trust_config=trust_config)
    assert who == f"sigstore:{IBM_ID} ({IBM_ISSUER})"
    statement = json.loads(payload)
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    if version == "v1.1.0-sigstore":
        digest = "61d4849d9d90076d6215f4d525f13d6574af8e3f67aef3e6f36fc40a14fdd226"
        assert _subjects(payload)[0]["digest"] == {"sha256": digest}


def test_mt_signature_same_as_oms_spec_vector() -> None:
    ours = verify_sigstore((MT / "v1.1.0-sigstore" / "model.sig").read_bytes(), signers=[IBM])
    spec = (TESTDATA / "oms-spec/v1.0/valid/sigstore.bundle.json").read_bytes()
    assert verify_sigstore(spec, signers=[IBM], trust_config=PROD) == ours


@pytest.mark.parametrize(
    "trusted",
    [
        signer("mallory@example.com", issuer=IBM_ISSUER),
        signer(IBM_ID, issuer="https://accounts.google.com"),
        signer(IBM_ID, issuer=IBM_ISSUER + "/"),
    ],
    ids=["wrong-identity", "wrong-issuer", "issuer-not-exact"],
)
def test_mt_untrusted_signer_refused(trusted: object) -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[trusted], trust_config=PROD)  # type: ignore[list-item]
    assert info.value.rule == "trust.signers"
    assert IBM_ID in (info.value.detail or "")


def test_mt_foreign_root_refused() -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[IBM], trust_config=FAKE / "trust_config.json")
    assert info.value.rule == "signature.sigstore"


def test_second_signer_matches_when_first_does_not() -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    other = signer("someone@example.com", issuer=GHA)
    who, _ = verify_sigstore(bundle, signers=[other, IBM])
    assert who.startswith(f"sigstore:{IBM_ID}")


# ----------------------------------------------------------------------------- identity regex


@pytest.mark.parametrize(
    "regex", [r"^stefanb@us\.ibm\.com$", r"^[a-z]+@us\.ibm\.com$", r"^.+@us\.ibm\.com$"]
)
def test_anchored_identity_regex_accepted(regex: str) -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    who, _ = verify_sigstore(bundle, signers=[signer(identity_regex=regex, issuer=IBM_ISSUER)])
    assert who == f"sigstore:{IBM_ID} ({IBM_ISSUER})"


@pytest.mark.parametrize(
    "regex",
    [r"^mallory@.*$", r"^stefanb@us\.ibm\.co$", r"^stefanb@evil\.example$"],
)
def test_identity_regex_mismatch_refused(regex: str) -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[signer(identity_regex=regex, issuer=IBM_ISSUER)])
    assert info.value.rule == "trust.signers"


def test_unanchored_regex_never_matches_a_substring() -> None:
    """The policy refuses unanchored regexes; even if one slipped through, matching is whole-SAN."""
    from _sigstore_root import _Signer  # bypasses the policy's anchoring check on purpose

    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    for loose in ("stefanb", r"us\.ibm\.com", "ibm"):
        with pytest.raises(VerificationError) as info:
            verify_sigstore(bundle, signers=[_Signer(None, IBM_ISSUER, identity_regex=loose)])
        assert info.value.rule == "trust.signers"


def test_policy_refuses_unanchored_identity_regex() -> None:
    policy = pytest.importorskip("safeload.policy")
    model = getattr(policy, "SigstoreSigner", None)
    if model is None:
        pytest.skip("safeload.policy.SigstoreSigner not written yet")
    from safeload.errors import PolicyError

    with pytest.raises((ValueError, PolicyError)):
        model(method="sigstore", identity_regex=r"stefanb@us\.ibm\.com", issuer=IBM_ISSUER)


# ------------------------------------------------------------------------------- caller errors


def test_empty_signer_list_is_a_usage_error() -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    with pytest.raises(UsageError):
        verify_sigstore(bundle, signers=[])


def test_signer_without_identity_is_a_usage_error() -> None:
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    from _sigstore_root import _Signer

    with pytest.raises(UsageError):
        verify_sigstore(bundle, signers=[_Signer(identity=None, issuer=IBM_ISSUER)])


def test_broken_trust_config_refused(tmp_path: Path) -> None:
    bad = tmp_path / "trust.json"
    bad.write_text('{"mediaType": "nonsense"}')
    bundle = (MT / "v1.1.0-sigstore" / "model.sig").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[IBM], trust_config=bad)
    assert info.value.rule == "trust.trust_config"
    with pytest.raises(VerificationError):
        verify_sigstore(bundle, signers=[IBM], trust_config=tmp_path / "missing.json")
    bad.write_text("not json")
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[IBM], trust_config=bad)
    assert info.value.rule == "trust.trust_config"
    bad.write_text(json.dumps({"mediaType": TRUSTED_ROOT_TYPE, "tlogs": "nope"}))
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[IBM], trust_config=bad)
    assert info.value.rule == "trust.trust_config"


TRUSTED_ROOT_TYPE = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"


@pytest.mark.parametrize("name", ["trust_config.json", "trusted_root.json"])
def test_bare_trusted_root_or_client_trust_config(name: str) -> None:
    case = CONF / "rekor2-dsse-happy-path"
    bundle = (case / "bundle.sigstore.json").read_bytes()
    who, _ = verify_sigstore(bundle, signers=[CONF_SIGNER], trust_config=case / name)
    assert who == f"sigstore:{BEACON} ({GHA})"


# -------------------------------------------------------------------------- OMS spec vectors


@pytest.mark.parametrize(
    "name",
    [
        "empty",
        "missing-envelope",
        "missing-verification-material",
        "missing-tlog-entries",
    ],
)
def test_oms_invalid_bundles_refused(name: str) -> None:
    bundle = (TESTDATA / "oms-spec/v1.0/invalid" / f"{name}.bundle.json").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[IBM], trust_config=PROD)
    assert info.value.rule == "signature.bundle"


@pytest.mark.parametrize("data", [b"", b"not json", b"[]", b'{"mediaType": 3}', b"\xff\xfe"])
def test_garbage_bundle_refused(data: bytes) -> None:
    with pytest.raises(VerificationError) as info:
        verify_sigstore(data, signers=[IBM])
    assert info.value.rule == "signature.bundle"


# ------------------------------------------------------------------------ sigstore-conformance


def test_conformance_happy_path_message_signature() -> None:
    bundle = (CONF / "happy-path-v0.3" / "bundle.sigstore.json").read_bytes()
    artifact = (CONF / "a.txt").read_bytes()
    assert verify_artifact_sigstore(artifact, bundle, signers=[CONF_SIGNER]) == (
        f"sigstore:{BEACON} ({GHA})"
    )
    with pytest.raises(VerificationError):
        verify_artifact_sigstore(artifact + b"x", bundle, signers=[CONF_SIGNER])


def test_conformance_happy_path_dsse() -> None:
    bundle = (CONF / "happy-path-intoto-in-dsse-v3" / "bundle.sigstore.json").read_bytes()
    _, payload = verify_sigstore(bundle, signers=[CONF_SIGNER])
    digest = hashlib.sha256((CONF / "a.txt").read_bytes()).hexdigest()
    assert {"sha256": digest} in [s["digest"] for s in _subjects(payload)]


def test_conformance_rekor_v2_dsse_with_its_trust_config() -> None:
    case = CONF / "rekor2-dsse-happy-path"
    bundle = (case / "bundle.sigstore.json").read_bytes()
    _, payload = verify_sigstore(
        bundle, signers=[CONF_SIGNER], trust_config=case / "trust_config.json"
    )
    digest = hashlib.sha256((CONF / "a.txt").read_bytes()).hexdigest()
    assert {"sha256": digest} in [s["digest"] for s in _subjects(payload)]
    with pytest.raises(VerificationError):  # staging material: not the production root
        verify_sigstore(bundle, signers=[CONF_SIGNER])


def test_conformance_dsse_signature_mismatch_refused() -> None:
    bundle = (CONF / "dsse-mismatch-sig_fail" / "bundle.sigstore.json").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[CONF_SIGNER])
    assert info.value.rule == "signature.sigstore"


def test_conformance_message_signature_mismatch_refused() -> None:
    bundle = (CONF / "signature-mismatch_fail" / "bundle.sigstore.json").read_bytes()
    with pytest.raises(VerificationError):
        verify_artifact_sigstore((CONF / "a.txt").read_bytes(), bundle, signers=[CONF_SIGNER])


def test_conformance_intoto_custom_root_is_refused_by_sigstore_python() -> None:
    """Valid per conformance, but sigstore-python 4.5.1 rejects ``intoto/0.0.2`` entries."""
    case = CONF / "intoto-with-custom-trust-root"
    bundle = (case / "bundle.sigstore.json").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(bundle, signers=[CONF_SIGNER], trust_config=case / "trust_config.json")
    assert "Integrated time only supported" in (info.value.detail or "")


def test_conformance_expired_certificate_refused() -> None:
    case = CONF / "intoto-expired-certificate_fail"
    bundle = (case / "bundle.sigstore.json").read_bytes()
    with pytest.raises(VerificationError):
        verify_sigstore(bundle, signers=[CONF_SIGNER], trust_config=case / "trust_config.json")


def test_message_signature_bundle_is_not_a_dsse_statement() -> None:
    bundle = (CONF / "happy-path-v0.3" / "bundle.sigstore.json").read_bytes()
    with pytest.raises(VerificationError):
        verify_sigstore(bundle, signers=[CONF_SIGNER])


# ------------------------------------------------------------------------ sigstore-python assets


def test_sigstore_python_wheel_bundle_valid() -> None:
    identity = (
        "https://github.com/trailofbits/rfc8785.py/.github/workflows/release.yml@refs/tags/v0.1.2"
    )
    wheel = (SP / "bundle_v3_github.whl").read_bytes()
    bundle = (SP / "bundle_v3_github.whl.sigstore").read_bytes()
    who = verify_artifact_sigstore(wheel, bundle, signers=[signer(identity, issuer=GHA)])
    assert who == f"sigstore:{identity} ({GHA})"
    regex = r"^https://github\.com/trailofbits/.+/\.github/workflows/release\.yml@refs/tags/v.*$"
    verify_artifact_sigstore(wheel, bundle, signers=[signer(identity_regex=regex, issuer=GHA)])


def test_sigstore_python_staging_bundle_invalid_against_production() -> None:
    bundle = (SP / "bundle_v3.txt.sigstore").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_artifact_sigstore(
            (SP / "bundle_v3.txt").read_bytes(),
            bundle,
            signers=[signer("william@yossarian.net", issuer="https://github.com/login/oauth")],
        )
    assert info.value.rule == "signature.sigstore"


# ---------------------------------------------------------------------------------- fake-keyless


def test_fake_keyless_valid_with_its_root() -> None:
    bundle = (FAKE / "tiny-model" / "model.sig").read_bytes()
    who, payload = verify_sigstore(
        bundle,
        signers=[signer(FAKE_ID, issuer=FAKE_ISSUER)],
        trust_config=FAKE / "trust_config.json",
    )
    assert who == f"sigstore:{FAKE_ID} ({FAKE_ISSUER})"
    digest = "ed4acb57e099dc666dcac20c00d9f102b090496c92e9834fae7f11953ebf95f9"
    assert _subjects(payload)[0]["digest"] == {"sha256": digest}


@pytest.mark.parametrize("trust_config", [None, PROD], ids=["embedded-root", "pinned-prod"])
def test_fake_keyless_invalid_with_production_root(trust_config: Path | None) -> None:
    bundle = (FAKE / "tiny-model" / "model.sig").read_bytes()
    with pytest.raises(VerificationError) as info:
        verify_sigstore(
            bundle, signers=[signer(FAKE_ID, issuer=FAKE_ISSUER)], trust_config=trust_config
        )
    assert info.value.rule == "signature.sigstore"


def test_network_guard_is_active() -> None:
    import socket

    with pytest.raises(OSError, match="tried to reach the network"):
        socket.create_connection(("192.0.2.1", 443), timeout=1)

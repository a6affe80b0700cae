"""Model folder listing and Hugging Face cache resolution refuse every way out."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_signing_helpers import write_key

import safeload
from safeload.policy import KeySigner
from safeload.signing import TrustSettings
from safeload.source import check_relative_name, list_model_files, path_matcher, resolve_hf_ref

SHA = "0123456789abcdef0123456789abcdef01234567"


def test_listing_is_sorted_relative_and_excludes(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("1")
    (tmp_path / "a-b").write_text("2")
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    names = [e.name for e in list_model_files(tmp_path, exclude=path_matcher([".git"]))]
    assert names == ["a-b", "b/x"]


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../b", "a//b", "./a", "a\\b"])
def test_bad_relative_names(bad: str) -> None:
    with pytest.raises(safeload.SourceError):
        check_relative_name(bad)


def test_names_with_colons_are_fine() -> None:
    assert check_relative_name("sub/tok:en.txt") == "sub/tok:en.txt"


def test_symlink_refused_by_default(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(safeload.SourceError) as info:
        list_model_files(tmp_path)
    assert info.value.rule == "trust.allow_symlinks"


def test_symlink_inside_allowed_when_policy_allows(tmp_path: Path) -> None:
    (tmp_path / "real").write_text("x")
    (tmp_path / "link").symlink_to("real")
    entries = {e.name: e for e in list_model_files(tmp_path, allow_symlinks=True)}
    assert entries["link"].is_link and entries["link"].path == (tmp_path / "real").resolve()


def test_symlink_escaping_refused_even_when_allowed(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (tmp_path / "secret").write_text("x")
    (model / "link").symlink_to(tmp_path / "secret")
    with pytest.raises(safeload.SourceError, match="outside"):
        list_model_files(model, allow_symlinks=True)


def test_fifo_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(safeload.SourceError, match="regular"):
        list_model_files(tmp_path)


def _hf_cache(cache: Path) -> Path:
    repo = cache / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    (repo / "blobs" / "aaa").write_bytes(b"weights" * 100)
    (repo / "blobs" / "bbb").write_text('{"a": 1}')
    (snap / "model.bin").symlink_to("../../blobs/aaa")
    (snap / "config.json").symlink_to("../../blobs/bbb")
    return snap


def test_hf_ref_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _hf_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_hf_ref("org/tiny") == snap
    assert resolve_hf_ref("org/tiny@main") == snap
    assert resolve_hf_ref(f"org/tiny@{SHA}", require_revision=True) == snap
    with pytest.raises(safeload.SourceError, match="pin"):
        resolve_hf_ref("org/tiny@main", require_revision=True)
    with pytest.raises(safeload.SourceError):
        resolve_hf_ref("org/../x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(safeload.SourceError, match="HF_HUB_OFFLINE") as info:
        resolve_hf_ref("org/missing")
    assert info.value.rule == "sources.cache"


def test_hf_home_fallback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _hf_cache(tmp_path / "home" / "hub")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert resolve_hf_ref("org/tiny") == snap


def test_hf_snapshot_links_into_blobs_verify(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    snap = _hf_cache(tmp_path / "hub")
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    safeload.sign(snap, method="key", private_key=priv, allow_symlinks=True)
    signer = KeySigner(public_key=str(pub))
    with pytest.raises(safeload.SourceError):  # symlinks need the policy's consent
        safeload.verify(snap, signers=[signer])
    settings = TrustSettings(signers=(signer,), allow_symlinks=True)
    model = safeload.verify(snap, policy=settings)
    assert bytes(model.files["model.bin"].buffer()) == b"weights" * 100
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert sorted(safeload.verify("org/tiny", policy=settings).files) == [
        "config.json", "model.bin"]
    # A link that leaves the repo folder is refused even with allow_symlinks.
    (tmp_path / "outside").write_text("x")
    (snap / "evil").symlink_to(tmp_path / "outside")
    with pytest.raises(safeload.SourceError, match="outside"):
        safeload.verify(snap, policy=settings)


def _policy(signer: KeySigner, **sources: object) -> safeload.policy.Policy:
    """A real policy (as a policy file would give) trusting ``signer``, with ``sources`` rules."""
    from safeload.policy import Policy

    return Policy.model_validate({
        "trust": {"signers": [signer.model_dump()], "allow_symlinks": True},
        "sources": sources,
    })


@pytest.fixture
def signed_hf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KeySigner:
    snap = _hf_cache(tmp_path / "hub")
    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    safeload.sign(snap, method="key", private_key=priv, allow_symlinks=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    return KeySigner(public_key=str(pub))


def test_verify_hf_ref_needs_a_pinned_commit_when_policy_says_so(signed_hf: KeySigner) -> None:
    policy = _policy(signed_hf, require_revision=True)
    with pytest.raises(safeload.SourceError, match="pin") as info:
        safeload.verify("org/tiny@main", policy=policy)
    assert info.value.rule == "sources.require_revision"
    with pytest.raises(safeload.SourceError, match="pin"):
        safeload.verify("org/tiny", policy=policy)  # no revision means "main"
    model = safeload.verify(f"org/tiny@{SHA}", policy=policy)
    assert sorted(model.files) == ["config.json", "model.bin"]


def test_verify_hf_ref_outside_allowed_repos_is_refused(signed_hf: KeySigner) -> None:
    with pytest.raises(safeload.PolicyViolation, match="not an allowed source") as info:
        safeload.verify("org/tiny", policy=_policy(signed_hf, allowed_repos=["other/*"]))
    assert info.value.rule == "sources.allowed_repos"
    with pytest.raises(safeload.PolicyViolation):
        safeload.verify("org/tiny", policy=_policy(signed_hf, allowed_repos=[]))
    assert len(safeload.verify("org/tiny", policy=_policy(signed_hf, allowed_repos=["org/*"])))
    assert len(safeload.verify("org/tiny", policy=_policy(signed_hf, allowed_repos=["org/tiny"])))


def test_verify_hf_ref_audit_mode_logs_and_continues(
        signed_hf: KeySigner, caplog: pytest.LogCaptureFixture) -> None:
    from safeload.policy import Policy

    policy = Policy.model_validate({**_policy(signed_hf, allowed_repos=["other/*"]).model_dump(),
                                    "mode": "audit"})
    with caplog.at_level("WARNING", logger="safeload.signing._verify"):
        model = safeload.verify("org/tiny", policy=policy)
    assert len(model) == 2
    assert "not an allowed source" in caplog.text


def test_sources_rules_do_not_apply_to_plain_folders(tmp_path: Path,
                                                     signed_hf: KeySigner) -> None:
    # A local folder has no repo or revision: the rules are about where a ref points.
    snap = tmp_path / "hub" / "models--org--tiny" / "snapshots" / SHA
    policy = _policy(signed_hf, allowed_repos=[], require_revision=True)
    assert len(safeload.verify(snap, policy=policy)) == 2

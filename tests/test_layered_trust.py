"""Layered signer requirements are a conjunction: every layer's signers must be satisfied.

An org baseline trusting key A and a team policy adding key K mean "A and K", never "A or K".
Real keys, real signatures, real policy files; nothing about verification is mocked.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from test_signing_helpers import make_model, write_key

import safeload
from safeload.errors import PolicyError, VerificationError
from safeload.policy import KeySigner, SignerGroup, load_policy, provenance


def _key_block(pub: Path) -> str:
    return f'[[trust.signers]]\nmethod = "key"\npublic_key = "{pub.name}"\n'


@pytest.fixture
def world(tmp_path: Path) -> dict[str, Path]:
    """Keys A (org), K (team), B (a second org key), a model, and one signature per key."""
    out: dict[str, Path] = {"root": make_model(tmp_path / "model"), "dir": tmp_path}
    keys = {
        "a": ec.generate_private_key(ec.SECP256R1()),
        "k": ed25519.Ed25519PrivateKey.generate(),
        "b": ec.generate_private_key(ec.SECP384R1()),
    }
    for name, key in keys.items():
        priv, pub = write_key(tmp_path / f"{name}.pem", key)
        out[f"{name}_pub"] = pub
        out[f"{name}_sig"] = safeload.sign(
            out["root"], method="key", private_key=priv, signature=tmp_path / f"{name}.sig"
        )
    return out


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def _org_and_team(world: dict[str, Path], team_extra: str = "") -> tuple[Path, Path]:
    d = world["dir"]
    org = _write(
        d,
        "org-baseline.toml",
        "version = 1\n[trust]\nrequire_signature = true\nmin_signers = 1\n"
        + _key_block(world["a_pub"]),
    )
    team = _write(
        d,
        "team.toml",
        'version = 1\nextends = ["org-baseline.toml"]\n' + team_extra + _key_block(world["k_pub"]),
    )
    return org, team


def _verify(world: dict[str, Path], policy: object, *sigs: str) -> safeload.VerifiedModel:
    first, *rest = (world[f"{s}_sig"] for s in sigs)
    return safeload.verify(world["root"], policy=policy, signature=first, signatures=rest)


# --- org requires A, team adds K: both are needed ---------------------------------------------
def test_team_key_alone_is_refused(world: dict[str, Path]) -> None:
    org, team = _org_and_team(world)
    with pytest.raises(VerificationError) as info:
        _verify(world, team, "k")
    assert info.value.rule == "trust.requirements"
    assert str(org) in str(info.value)


def test_org_signer_alone_is_refused_by_the_team_group(world: dict[str, Path]) -> None:
    _, team = _org_and_team(world)
    with pytest.raises(VerificationError, match=r"team\.toml") as info:
        _verify(world, team, "a")
    assert info.value.rule == "trust.requirements"


def test_both_signers_are_accepted(world: dict[str, Path]) -> None:
    _, team = _org_and_team(world)
    model = _verify(world, team, "a", "k")
    assert len(model.signers) == 2
    assert model.files["weights.bin"].buffer().tobytes() == bytes(range(256)) * 64


def test_the_org_alone_still_accepts_its_own_signer(world: dict[str, Path]) -> None:
    org, _ = _org_and_team(world)
    assert len(_verify(world, org, "a").signers) == 1
    with pytest.raises(VerificationError, match="not trusted"):
        _verify(world, org, "k")


def test_groups_and_their_files_are_in_the_effective_policy(world: dict[str, Path]) -> None:
    org, team = _org_and_team(world)
    policy = load_policy(team)
    groups = policy.trust.requirements
    assert [g.source for g in groups] == [str(org), str(team)]
    assert [len(g.signers) for g in groups] == [1, 1]
    assert [g.min_signers for g in groups] == [1, 1]
    assert len(policy.trust.signers) == 2  # the union any signature is checked against
    assert provenance(policy)["trust.requirements"] == f"{org}; {team}"


def test_policy_show_lists_each_group_and_its_file(world: dict[str, Path]) -> None:
    from safeload._cli import cli

    org, team = _org_and_team(world)
    result = CliRunner().invoke(cli, ["policy", "show", "--policy", str(team)])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.output.splitlines() if x.startswith("trust.requirements"))
    assert str(org) in line and str(team) in line
    shown = CliRunner().invoke(cli, ["policy", "show", "--policy", str(team), "--format", "json"])
    doc = json.loads(shown.output)
    assert [g["source"] for g in doc["policy"]["trust"]["requirements"]] == [str(org), str(team)]


# --- what a child cannot do -------------------------------------------------------------------
def test_a_team_lowering_min_signers_is_refused_at_load(world: dict[str, Path]) -> None:
    d = world["dir"]
    _write(
        d,
        "org-baseline.toml",
        "version = 1\n[trust]\nmin_signers = 2\n"
        + _key_block(world["a_pub"])
        + _key_block(world["b_pub"]),
    )
    team = _write(
        d,
        "team.toml",
        'version = 1\nextends = ["org-baseline.toml"]\n[trust]\nmin_signers = 1\n'
        + _key_block(world["k_pub"]),
    )
    with pytest.raises(PolicyError) as info:
        load_policy(team)
    assert info.value.rule == "trust.min_signers"


def test_a_child_cannot_drop_the_parents_group(world: dict[str, Path]) -> None:
    """``requirements = []`` in a file combines with the parent's groups; it removes none."""
    org, team = _org_and_team(world, "[trust]\nrequirements = []\n")
    policy = load_policy(team)
    assert [g.source for g in policy.trust.requirements] == [str(org), str(team)]
    with pytest.raises(VerificationError, match="org-baseline"):
        _verify(world, team, "k")


def test_a_child_more_signers_than_keys_it_adds(world: dict[str, Path]) -> None:
    """``min_signers = 2`` beside one new key: the new key, plus the parent's group."""
    _, team = _org_and_team(world, "[trust]\nmin_signers = 2\n")
    policy = load_policy(team)
    assert policy.trust.min_signers == 2
    assert [g.min_signers for g in policy.trust.requirements] == [1, 1]
    assert len(_verify(world, team, "a", "k").signers) == 2
    with pytest.raises(VerificationError):
        _verify(world, team, "a", "a")


def test_sibling_parents_are_both_required(world: dict[str, Path]) -> None:
    d = world["dir"]
    _write(d, "one.toml", "version = 1\n" + _key_block(world["a_pub"]))
    _write(d, "two.toml", "version = 1\n" + _key_block(world["b_pub"]))
    both = _write(d, "both.toml", 'version = 1\nextends = ["one.toml", "two.toml"]\n')
    assert len(load_policy(both).trust.requirements) == 2
    with pytest.raises(VerificationError, match=r"two\.toml"):
        _verify(world, both, "a")
    assert len(_verify(world, both, "a", "b").signers) == 2


def test_the_exported_effective_policy_keeps_every_group(world: dict[str, Path]) -> None:
    """``policy show --format json`` output, reloaded as a policy, means the same thing."""
    _, team = _org_and_team(world)
    exported = load_policy(team).model_dump(mode="json")
    copy = _write(world["dir"], "exported.json", json.dumps(exported))
    reloaded = load_policy(copy)
    assert reloaded.trust.requirements == load_policy(team).trust.requirements
    with pytest.raises(VerificationError, match="not met"):
        _verify(world, copy, "k")


# --- one file: exactly the flat rule it always was -------------------------------------------
def test_a_single_policy_is_one_group(world: dict[str, Path]) -> None:
    path = _write(
        world["dir"],
        "single.toml",
        "version = 1\n" + _key_block(world["a_pub"]) + _key_block(world["k_pub"]),
    )
    policy = load_policy(path)
    assert policy.trust.requirements == (
        SignerGroup(signers=policy.trust.signers, min_signers=1, source=str(path)),
    )
    assert len(_verify(world, path, "k").signers) == 1
    assert len(_verify(world, path, "a").signers) == 1


def test_a_caller_signer_list_replaces_the_policy_groups(world: dict[str, Path]) -> None:
    """``verify(signers=...)`` (the CLI's ``--key``) names the whole requirement, as before."""
    _, team = _org_and_team(world)
    model = safeload.verify(
        world["root"], policy=team, signature=world["k_sig"],
        signers=[KeySigner(public_key=str(world["k_pub"]))],
    )
    assert len(model.signers) == 1


def test_a_group_needing_more_signers_than_it_lists_is_invalid() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        SignerGroup(signers=(KeySigner(public_key="k.pem"),), min_signers=2)


def test_decide_counts_the_largest_group(world: dict[str, Path]) -> None:
    """A policy built in Python may give a group a higher count than ``min_signers``."""
    from safeload.policy import Candidate, Policy, TrustPolicy, decide

    signers = (KeySigner(public_key=str(world["a_pub"])), KeySigner(public_key=str(world["b_pub"])))
    group = SignerGroup(signers=signers, min_signers=2, source="python")
    policy = Policy(trust=TrustPolicy(signers=signers, min_signers=1, requirements=(group,)))
    one = Candidate(path="w.bin", format="safetensors", size_bytes=1, signers=("a",), verified=True)
    hits = decide(one, policy).rules
    assert [(h.rule, h.limit) for h in hits] == [("trust.min_signers", 2)]
    with pytest.raises(VerificationError, match="python"):
        _verify(world, policy, "a")
    assert len(_verify(world, policy, "a", "b").signers) == 2


# --- the brief's shape with a real keyless signer: org trusts a Sigstore identity ------------
def test_org_sigstore_identity_and_team_key_are_both_required(
    world: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from _sigstore_root import TEST_ISSUER, TestRoot, loopback_only

    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    bot = "release-bot@safeload.example"
    with loopback_only(), TestRoot().serve(tmp_path) as run:
        a_sig = safeload.sign(
            world["root"], method="sigstore", identity_token=run.root.token(email=bot),
            trust_config=run.trust_config, signature=tmp_path / "a-sigstore.sig",
        )
        org = _write(
            tmp_path,
            "org-baseline.toml",
            f'version = 1\n[trust]\nrequire_signature = true\ntrust_config = "{run.trust_config}"\n'
            f'[[trust.signers]]\nmethod = "sigstore"\nidentity = "{bot}"\n'
            f'issuer = "{TEST_ISSUER}"\n',
        )
        team = _write(
            tmp_path,
            "team.toml",
            'version = 1\nextends = ["org-baseline.toml"]\n' + _key_block(world["k_pub"]),
        )
        root, k_sig = world["root"], world["k_sig"]
        with pytest.raises(VerificationError, match=r"org-baseline\.toml"):
            safeload.verify(root, policy=team, signature=k_sig)
        with pytest.raises(VerificationError, match=r"team\.toml"):
            safeload.verify(root, policy=team, signature=a_sig)
        both = safeload.verify(root, policy=team, signature=a_sig, signatures=[k_sig])
        assert f"sigstore:{bot} ({TEST_ISSUER})" in both.signers and len(both.signers) == 2
        assert len(safeload.verify(root, policy=org, signature=a_sig).signers) == 1

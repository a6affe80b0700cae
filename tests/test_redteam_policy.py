"""Red-team findings in policy loading and tighten-only layering.

Policies are written by operators, but reviewed by people: a file whose effective value is not
the one a reviewer reads, or a child that widens its parent while passing the tighten-only
check, defeats the point of layering.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from test_signing_helpers import make_model, write_key

import safeload
from safeload.errors import PolicyError, VerificationError
from safeload.policy import load_policy


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


# --- documents whose effective value is not the one a reviewer reads --------------------------
def test_json_duplicate_keys_are_refused(tmp_path: Path) -> None:
    """``json.loads`` keeps the last duplicate: ``"mode": "enforce"`` then ``"mode": "audit"``
    read as enforce and ran as audit."""
    p = _write(tmp_path, "p.json", '{"version": 1, "mode": "enforce", "mode": "audit"}')
    with pytest.raises(PolicyError, match="duplicate key 'mode'"):
        load_policy(p)


def test_yaml_duplicate_keys_are_refused(tmp_path: Path) -> None:
    text = "version: 1\ntrust:\n  allow_symlinks: false\n  allow_symlinks: true\n"
    with pytest.raises(PolicyError, match="duplicate key 'allow_symlinks'"):
        load_policy(_write(tmp_path, "p.yaml", text))


def test_yaml_merge_keys_are_refused(tmp_path: Path) -> None:
    """``<<: *strict`` reads as "the strict settings", while a key beside it overrides one of
    them; inheritance goes through ``extends``, which checks every field."""
    text = (
        "version: 1\n"
        "x-strict: &strict {allow_symlinks: false, require_signature: false}\n"
        "trust:\n  <<: *strict\n  allow_symlinks: true\n"
    )
    with pytest.raises(PolicyError, match="merge keys"):
        load_policy(_write(tmp_path, "p.yml", text))


def test_toml_duplicate_keys_stay_refused(tmp_path: Path) -> None:
    text = 'version = 1\nmode = "enforce"\nmode = "audit"\n'
    with pytest.raises(PolicyError, match="not valid TOML"):
        load_policy(_write(tmp_path, "p.toml", text))


def test_plain_yaml_and_json_policies_still_load(tmp_path: Path) -> None:
    yaml_text = "version: 1\nmode: audit\nlimits: {max_tensors: 5}\n"
    y = load_policy(_write(tmp_path, "p.yaml", yaml_text))
    j = load_policy(_write(tmp_path, "p.json", '{"version": 1, "limits": {"max_tensors": 5}}'))
    assert y.mode == "audit" and y.limits.max_tensors == j.limits.max_tensors == 5


# --- sources.allowed_repos: glob coverage ------------------------------------------------------
def _layer(tmp_path: Path, parent: list[str], child: list[str]) -> tuple[str, ...] | None:
    _write(tmp_path, "parent.toml", f"version = 1\n[sources]\nallowed_repos = {parent!r}\n")
    c = _write(
        tmp_path,
        "child.toml",
        f'version = 1\nextends = ["parent.toml"]\n[sources]\nallowed_repos = {child!r}\n',
    )
    return load_policy(c).sources.allowed_repos


@pytest.mark.parametrize(
    ("parent", "child"),
    [
        ("org/a?c", "org/a*c"),  # '*' is one character, so the string matched; it allows 'abbbc'
        ("org/[ab]-model", "org/?-model"),  # '?' is not in [ab] as a string, but 'c-model' is
        ("org/model-?", "org/model-[0-9]*"),
        ("org/*-prod", "org/*"),
    ],
)
def test_child_repo_glob_wider_than_parent_is_refused(
    tmp_path: Path, parent: str, child: str
) -> None:
    """Coverage was ``fnmatch(child_pattern, parent_pattern)``: the child's glob characters
    were matched as plain text, so ``org/a*c`` passed under ``org/a?c`` and widened it."""
    with pytest.raises(PolicyError, match=r"sources\.allowed_repos"):
        _layer(tmp_path, [parent], [child])


@pytest.mark.parametrize(
    ("parent", "child"),
    [
        ("org/*", "org/model-*"),
        ("org/*", "org/model"),
        ("org/a?c", "org/abc"),
        ("org/[ab]-model", "org/[ab]-model"),
    ],
)
def test_child_repo_glob_inside_parent_is_accepted(tmp_path: Path, parent: str, child: str) -> None:
    assert _layer(tmp_path, [parent], [child]) == (child,)


# --- trust.signers ----------------------------------------------------------------------------
def test_child_adding_a_signer_cannot_widen_who_may_sign(tmp_path: Path) -> None:
    """Parent: signatures required, one trusted key. A child that adds its own key (and keeps
    ``min_signers = 1``) used to pass the tighten-only check while a model signed *only* by the
    new key verified: the child widened trust. Each layer's signers are now a requirement of
    their own (``trust.requirements``), so the child's key adds a condition, never a bypass."""
    root = make_model(tmp_path / "model")
    sigs = {}
    for name in ("parent", "child"):
        priv, _ = write_key(tmp_path / f"{name}.pem", ec.generate_private_key(ec.SECP256R1()))
        sigs[name] = safeload.sign(
            root, method="key", private_key=priv, signature=tmp_path / f"{name}.sig"
        )
    _write(
        tmp_path,
        "parent.toml",
        "version = 1\n[trust]\nrequire_signature = true\nmin_signers = 1\n"
        '[[trust.signers]]\nmethod = "key"\npublic_key = "parent.pub.pem"\n',
    )
    child = _write(
        tmp_path,
        "child.toml",
        'version = 1\nextends = ["parent.toml"]\n'
        '[[trust.signers]]\nmethod = "key"\npublic_key = "child.pub.pem"\n',
    )
    with pytest.raises(VerificationError) as info:
        safeload.verify(root, policy=child, signature=sigs["child"])
    assert info.value.rule == "trust.requirements"
    assert "parent.toml" in str(info.value)
    both = safeload.verify(root, policy=child, signature=sigs["parent"], signatures=[sigs["child"]])
    assert len(both.signers) == 2


def test_every_policy_leaf_has_a_layering_rule() -> None:
    """A field added to the schema without a rule would make ``_rule_for`` raise a bare
    ``KeyError`` the first time a child sets it (or, with a generic fallback, let it loosen).
    Only ``limits.*`` share one rule (minimum)."""
    from safeload.policy import _layering

    missing = [
        leaf
        for leaf in _layering.leaf_paths()
        if not leaf.startswith("limits.") and leaf not in _layering._RULES
    ]
    assert missing == []


def test_a_look_alike_of_a_verified_file_is_not_verified() -> None:
    """The gate called anything with a ``buffer()`` method and a ``digest`` string verified:
    such an object satisfied ``require_signature`` (and skipped the ``untrusted`` sandbox)."""
    from safeload.policy._gate import policy_gate
    from safeload.policy._models import Policy

    class LookAlike:
        digest = "sha256:" + "0" * 64
        signers = ("key:sha256:trusted",)

        def buffer(self) -> memoryview:
            return memoryview(b"")

    gate = policy_gate(Policy(), source=LookAlike())
    assert not gate.verified
    assert gate.signers == ()


# --- a policy in the working directory cannot replace the machine's --------------------------
@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A system policy requiring enforce mode and small limits; the cwd is a 'model repo'."""
    from safeload.policy import _load as policy_load

    system = _write(
        tmp_path, "system.toml", 'version = 1\nmode = "enforce"\n[limits]\nmax_tensors = 10\n'
    )
    monkeypatch.setattr(policy_load, "SYSTEM_POLICY", system)
    monkeypatch.delenv("SAFELOAD_POLICY", raising=False)
    repo = tmp_path / "downloaded-model"
    repo.mkdir()
    monkeypatch.chdir(repo)
    return repo


@pytest.mark.parametrize("loosening", ['mode = "audit"\n', "[limits]\nmax_tensors = 1000000\n"])
def test_repo_shipped_safeload_toml_cannot_loosen_the_system_policy(
    machine: Path, loosening: str
) -> None:
    """``./safeload.toml`` (or ``[tool.safeload]`` in ``./pyproject.toml``) *replaced*
    ``/etc/safeload/policy.toml``: ``cd`` into a downloaded repo shipping one, and its
    ``mode = "audit"`` or raised limits applied instead of the administrator's."""
    from safeload.policy import effective_policy

    _write(machine, "safeload.toml", "version = 1\n" + loosening)
    with pytest.raises(PolicyError, match="may only tighten"):
        effective_policy()
    (machine / "safeload.toml").unlink()
    _write(
        machine,
        "pyproject.toml",
        "[tool.safeload]\nversion = 1\n" + loosening.replace("[limits]", "[tool.safeload.limits]"),
    )
    with pytest.raises(PolicyError, match="may only tighten"):
        effective_policy()


def test_repo_policy_that_tightens_the_system_policy_applies_over_it(machine: Path) -> None:
    from safeload.policy import effective_policy

    _write(machine, "safeload.toml", "version = 1\n[limits]\nmax_tensors = 3\n")
    policy = effective_policy()
    assert policy.limits.max_tensors == 3 and policy.mode == "enforce"

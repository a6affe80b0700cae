"""Tighten-only layering: every loosening attempt is refused naming both files, every tightening
is accepted and merged by its field's rule, and provenance says who set what."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from safeload.errors import PolicyError
from safeload.policy import load_policy, policy_files, provenance

REPO = Path(__file__).resolve().parent.parent
HEX_A = "a" * 64
HEX_B = "b" * 64

PARENT = f"""
version = 1
mode = "enforce"
audit_log = "parent-audit.jsonl"

[formats]
allowed = ["safetensors", "onnx", "numpy"]

[trust]
require_signature = true
min_signers = 1
allow_ca_leaf = false
allow_symlinks = false
trust_config = "trust.json"
ignore_paths = [".git", "README.md"]
[[trust.signers]]
method = "key"
public_key = "keys/parent.pem"
[trust.pinned_digests]
"model" = "sha256:{HEX_A}"

[sources]
allowed_repos = ["org/*", "other/model"]
require_revision = true

[limits]
max_file_bytes = 1000
max_tensors = 50

[pickle]
extra_globals = [
  {{ name = "mymod.Config", reason = "dataclass of floats" }},
  {{ name = "mymod.Vocab", reason = "dict of str to int" }},
]

[onnx]
allowed_domains = ["", "ai.onnx"]
allowed_ops = ["Add", "MatMul", "Relu"]
denied_ops = ["Loop"]
opset_min = 10
opset_max = 20
external_data = "forbid"
max_nodes = 500
run_timeout_seconds = 30

[sandbox]
mode = "untrusted"
required_layers = ["rlimits"]
"""

# child body -> (field, fragment of the reason)
LOOSENING = {
    "add a format": ('[formats]\nallowed = ["safetensors", "pickle"]\n', "formats.allowed"),
    "raise a limit": ("[limits]\nmax_file_bytes = 1001\n", "limits.max_file_bytes"),
    "raise max_tensors": ("[limits]\nmax_tensors = 51\n", "limits.max_tensors"),
    "raise a default limit": (
        "[limits]\nmax_zip_members = 2000000\n",
        "limits.max_zip_members",
    ),
    "switch to audit": ('mode = "audit"\n', "mode"),
    "drop the signature": ("[trust]\nrequire_signature = false\n", "trust.require_signature"),
    "lower min_signers": ("[trust]\nmin_signers = 1\n", None),  # equal: allowed (see below)
    "allow ca leaf": ("[trust]\nallow_ca_leaf = true\n", "trust.allow_ca_leaf"),
    "allow symlinks": ("[trust]\nallow_symlinks = true\n", "trust.allow_symlinks"),
    "allow unsafe mmap": ("[trust]\nallow_unsafe_mmap = true\n", "trust.allow_unsafe_mmap"),
    "ignore more paths": ('[trust]\nignore_paths = ["model.bin"]\n', "trust.ignore_paths"),
    "replace trust config": ('[trust]\ntrust_config = "mine.json"\n', "trust.trust_config"),
    "replace audit log": ('audit_log = "elsewhere.jsonl"\n', "audit_log"),
    "conflicting pin": (
        f'[trust.pinned_digests]\n"model" = "sha256:{HEX_B}"\n',
        "trust.pinned_digests",
    ),
    "add a repo": ('[sources]\nallowed_repos = ["evil/*"]\n', "sources.allowed_repos"),
    "widen a repo glob": ('[sources]\nallowed_repos = ["*/*"]\n', "sources.allowed_repos"),
    "drop require_revision": ("[sources]\nrequire_revision = false\n", "sources.require_revision"),
    "add a global": (
        '[pickle]\nextra_globals = [{ name = "os.system", reason = "trust me" }]\n',
        "pickle.extra_globals",
    ),
    "add a domain": ('[onnx]\nallowed_domains = ["", "com.evil"]\n', "onnx.allowed_domains"),
    "add an op": ('[onnx]\nallowed_ops = ["Add", "Custom"]\n', "onnx.allowed_ops"),
    "empty op list means all": ("[onnx]\nallowed_ops = []\n", "onnx.allowed_ops"),
    "lower opset_min": ("[onnx]\nopset_min = 7\n", "onnx.opset_min"),
    "raise opset_max": ("[onnx]\nopset_max = 23\n", "onnx.opset_max"),
    "allow external data": (
        '[onnx]\nexternal_data = "inside_model_dir"\n',
        "onnx.external_data",
    ),
    "raise max_nodes": ("[onnx]\nmax_nodes = 501\n", "onnx.max_nodes"),
    "longer timeout": ("[onnx]\nrun_timeout_seconds = 31\n", "onnx.run_timeout_seconds"),
    "sandbox never": ('[sandbox]\nmode = "never"\n', "sandbox.mode"),
}
LOOSENING = {k: v for k, v in LOOSENING.items() if v[1] is not None}


@pytest.fixture
def parent(tmp_path: Path) -> Path:
    path = tmp_path / "parent.toml"
    path.write_text(PARENT)
    return path


def child(tmp_path: Path, body: str, name: str = "child.toml") -> Path:
    path = tmp_path / name
    path.write_text('version = 1\nextends = ["parent.toml"]\n' + body)
    return path


def test_parent_alone_is_valid(parent: Path) -> None:
    policy = load_policy(parent)
    assert policy.trust.min_signers == 1


@pytest.mark.parametrize(("body", "field"), LOOSENING.values(), ids=LOOSENING.keys())
def test_loosening_is_refused(parent: Path, body: str, field: str) -> None:
    path = child(parent.parent, body)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert err.rule == field
    text = err.diagnostics()
    assert field in text
    assert str(path) in text and str(parent) in text, text


# child body -> (check on the effective policy)
TIGHTENING = {
    "fewer formats": (
        '[formats]\nallowed = ["safetensors"]\n',
        lambda p: p.formats.allowed == ("safetensors",),
    ),
    "lower a limit": ("[limits]\nmax_file_bytes = 10\n", lambda p: p.limits.max_file_bytes == 10),
    "lower a default limit": (
        "[limits]\nmax_zip_members = 3\n",
        lambda p: p.limits.max_zip_members == 3 and p.limits.max_tensors == 50,
    ),
    "enforce stays enforce": ('mode = "enforce"\n', lambda p: p.mode == "enforce"),
    "more signers required": (
        '[trust]\nmin_signers = 2\n[[trust.signers]]\nmethod = "key"\npublic_key = "k2.pem"\n',
        lambda p: p.trust.min_signers == 2 and len(p.trust.signers) == 2,
    ),
    "signers accumulate": (
        '[[trust.signers]]\nmethod = "sigstore"\nidentity = "a@org"\nissuer = "https://i"\n',
        lambda p: [s.method for s in p.trust.signers] == ["key", "sigstore"],
    ),
    "fewer ignored paths": (
        '[trust]\nignore_paths = [".git"]\n',
        lambda p: p.trust.ignore_paths == (".git",),
    ),
    "same trust config": (
        '[trust]\ntrust_config = "trust.json"\n',
        lambda p: p.trust.trust_config is not None and p.trust.trust_config.endswith("trust.json"),
    ),
    "pins accumulate": (
        f'[trust.pinned_digests]\n"model" = "sha256:{HEX_A}"\n"w.safetensors" = "sha256:{HEX_B}"\n',
        lambda p: (
            p.trust.pinned_digests
            == {"model": f"sha256:{HEX_A}", "w.safetensors": f"sha256:{HEX_B}"}
        ),
    ),
    "narrower repos": (
        '[sources]\nallowed_repos = ["org/model-a"]\n',
        lambda p: p.sources.allowed_repos == ("org/model-a",),
    ),
    "fewer globals": (
        '[pickle]\nextra_globals = [{ name = "mymod.Config", reason = "still fine" }]\n',
        lambda p: [g.name for g in p.pickle.extra_globals] == ["mymod.Config"],
    ),
    "no globals": ("[pickle]\nextra_globals = []\n", lambda p: p.pickle.extra_globals == ()),
    "fewer domains": (
        '[onnx]\nallowed_domains = [""]\n',
        lambda p: p.onnx.allowed_domains == ("",),
    ),
    "fewer ops": ('[onnx]\nallowed_ops = ["Add"]\n', lambda p: p.onnx.allowed_ops == ("Add",)),
    "denied ops union": (
        '[onnx]\ndenied_ops = ["Scan"]\n',
        lambda p: p.onnx.denied_ops == ("Loop", "Scan"),
    ),
    "narrower opsets": (
        "[onnx]\nopset_min = 12\nopset_max = 18\n",
        lambda p: (p.onnx.opset_min, p.onnx.opset_max) == (12, 18),
    ),
    "sandbox always": ('[sandbox]\nmode = "always"\n', lambda p: p.sandbox.mode == "always"),
    "layers union": (
        '[sandbox]\nrequired_layers = ["seccomp"]\n',
        lambda p: p.sandbox.required_layers == ("rlimits", "seccomp"),
    ),
    "shorter timeout": (
        "[onnx]\nrun_timeout_seconds = 5\n",
        lambda p: p.onnx.run_timeout_seconds == 5,
    ),
}


@pytest.mark.parametrize(("body", "check"), TIGHTENING.values(), ids=TIGHTENING.keys())
def test_tightening_is_accepted(parent: Path, body: str, check: object) -> None:
    policy = load_policy(child(parent.parent, body))
    assert callable(check) and check(policy)
    # Everything the child did not write is inherited unchanged.
    assert policy.trust.require_signature and policy.sources.require_revision


def test_child_may_not_add_a_trust_root(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text("version = 1\n")
    with pytest.raises(PolicyError) as info:
        load_policy(child(tmp_path, '[trust]\ntrust_config = "private-sigstore.json"\n'))
    assert info.value.rule == "trust.trust_config"


def test_child_may_add_an_audit_log(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text("version = 1\n")
    policy = load_policy(child(tmp_path, 'audit_log = "a.jsonl"\n'))
    assert policy.audit_log == str(tmp_path / "a.jsonl")


def test_audit_parent_child_may_enforce(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text('version = 1\nmode = "audit"\n')
    assert load_policy(child(tmp_path, 'mode = "enforce"\n')).mode == "enforce"


def test_provenance_names_the_file_that_set_each_value(parent: Path) -> None:
    path = child(
        parent.parent, "[limits]\nmax_tensors = 5\n[sandbox]\nrequired_layers = ['seccomp']\n"
    )
    policy = load_policy(path)
    prov = provenance(policy)
    assert prov["limits.max_tensors"] == str(path)
    assert prov["limits.max_file_bytes"] == str(parent)
    assert prov["limits.max_zip_members"] == "<built-in default>"
    assert prov["sandbox.required_layers"] == f"{parent}; {path}"
    assert policy_files(policy) == (str(parent), str(path))


def test_extends_chain_of_three(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text(PARENT)
    child(tmp_path, "[limits]\nmax_file_bytes = 100\n", name="mid.toml")
    leaf = tmp_path / "leaf.toml"
    leaf.write_text('version = 1\nextends = ["mid.toml"]\n[limits]\nmax_file_bytes = 200\n')
    with pytest.raises(PolicyError) as info:
        load_policy(leaf)
    assert str(tmp_path / "mid.toml") in info.value.diagnostics()
    leaf.write_text('version = 1\nextends = ["mid.toml"]\n[limits]\nmax_file_bytes = 50\n')
    assert load_policy(leaf).limits.max_file_bytes == 50


def test_sibling_parents_combine_to_the_strictest(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(
        'version = 1\n[formats]\nallowed = ["safetensors", "onnx"]\n[limits]\nmax_tensors = 9\n'
    )
    (tmp_path / "b.toml").write_text(
        'version = 1\nmode = "enforce"\n[formats]\nallowed = ["onnx", "numpy"]\n'
        '[sandbox]\nmode = "always"\n'
    )
    c = tmp_path / "c.toml"
    c.write_text('version = 1\nextends = ["a.toml", "b.toml"]\n')
    policy = load_policy(c)
    assert policy.formats.allowed == ("onnx",)
    assert policy.limits.max_tensors == 9
    assert policy.sandbox.mode == "always"
    prov = provenance(policy)
    assert prov["limits.max_tensors"] == str(tmp_path / "a.toml")
    assert prov["sandbox.mode"] == str(tmp_path / "b.toml")


def test_sibling_pin_conflict_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text(f'version = 1\n[trust.pinned_digests]\nm = "sha256:{HEX_A}"\n')
    (tmp_path / "b.toml").write_text(f'version = 1\n[trust.pinned_digests]\nm = "sha256:{HEX_B}"\n')
    c = tmp_path / "c.toml"
    c.write_text('version = 1\nextends = ["a.toml", "b.toml"]\n')
    with pytest.raises(PolicyError, match="conflicting") as info:
        load_policy(c)
    assert info.value.rule == "trust.pinned_digests"


def test_extends_cycle_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('version = 1\nextends = ["b.toml"]\n')
    (tmp_path / "b.toml").write_text('version = 1\nextends = ["a.toml"]\n')
    with pytest.raises(PolicyError, match="cycle") as info:
        load_policy(tmp_path / "a.toml")
    assert info.value.rule == "extends"


def test_self_extension_is_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('version = 1\nextends = ["./a.toml"]\n')
    with pytest.raises(PolicyError, match="cycle"):
        load_policy(tmp_path / "a.toml")


def test_missing_extends_file_names_the_entry(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text('version = 1\nextends = ["nope.toml"]\n')
    with pytest.raises(PolicyError, match=r"extends\[0\]") as info:
        load_policy(tmp_path / "a.toml")
    assert info.value.rule == "extends[0]"


def test_parent_errors_name_the_parent_file(tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text("version = 1\n[limits]\nmax_tensorz = 1\n")
    with pytest.raises(PolicyError) as info:
        load_policy(child(tmp_path, ""))
    assert info.value.path == str(tmp_path / "parent.toml")
    assert info.value.rule == "limits.max_tensorz"


def test_shipped_team_tightens_shipped_baseline() -> None:
    base = load_policy(REPO / "policies" / "org-baseline.toml")
    team = load_policy(REPO / "policies" / "team.toml")
    assert set(team.formats.allowed) < set(base.formats.allowed)
    assert team.limits.max_file_bytes < base.limits.max_file_bytes
    assert set(base.sandbox.required_layers) < set(team.sandbox.required_layers)
    assert team.trust.signers == base.trust.signers
    prov = provenance(team)
    assert prov["formats.allowed"].endswith("team.toml")
    assert prov["trust.require_signature"].endswith("org-baseline.toml")


def test_team_policy_that_loosens_the_baseline_is_refused(tmp_path: Path) -> None:
    baseline = (REPO / "policies" / "org-baseline.toml").read_text()
    (tmp_path / "org-baseline.toml").write_text(baseline)
    team = tmp_path / "team.toml"
    team.write_text('version = 1\nextends = ["org-baseline.toml"]\nmode = "audit"\n')
    with pytest.raises(PolicyError, match="mode"):
        load_policy(team)


_RANK = {
    "mode": ["audit", "enforce"],
    "sandbox.mode": ["never", "untrusted", "always"],
    "onnx.external_data": ["inside_model_dir", "forbid"],
}


def _not_looser(parent: object, effective: object) -> None:
    """Every leaf of ``effective`` is at least as strict as ``parent``'s."""
    from safeload.policy import Policy

    assert isinstance(parent, Policy) and isinstance(effective, Policy)
    for name in type(parent.limits).model_fields:
        assert getattr(effective.limits, name) <= getattr(parent.limits, name), name
    assert set(effective.formats.allowed) <= set(parent.formats.allowed)
    assert effective.trust.require_signature >= parent.trust.require_signature
    assert effective.trust.min_signers >= parent.trust.min_signers
    assert effective.trust.allow_ca_leaf <= parent.trust.allow_ca_leaf
    assert effective.sources.require_revision >= parent.sources.require_revision
    order = _RANK["mode"]
    assert order.index(effective.mode) >= order.index(parent.mode)
    order = _RANK["sandbox.mode"]
    assert order.index(effective.sandbox.mode) >= order.index(parent.sandbox.mode)
    assert set(parent.sandbox.required_layers) <= set(effective.sandbox.required_layers)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    max_file=st.integers(0, 3000),
    max_tensors=st.integers(0, 100),
    formats=st.lists(
        st.sampled_from(["safetensors", "onnx", "numpy", "pickle", "gguf"]), unique=True
    ),
    require=st.booleans(),
    ca_leaf=st.booleans(),
    mode=st.sampled_from(_RANK["mode"]),
    sandbox=st.sampled_from(_RANK["sandbox.mode"]),
)
def test_any_child_either_fails_or_is_not_looser(
    parent: Path,
    max_file: int,
    max_tensors: int,
    formats: list[str],
    require: bool,
    ca_leaf: bool,
    mode: str,
    sandbox: str,
) -> None:
    body = (
        f'mode = "{mode}"\n[formats]\nallowed = {formats!r}\n'
        f"[trust]\nrequire_signature = {str(require).lower()}\n"
        f"allow_ca_leaf = {str(ca_leaf).lower()}\n"
        f"[limits]\nmax_file_bytes = {max_file}\nmax_tensors = {max_tensors}\n"
        f'[sandbox]\nmode = "{sandbox}"\n'
    )
    path = child(parent.parent, body, name="prop.toml")
    try:
        effective = load_policy(path)
    except PolicyError as exc:
        assert exc.rule is not None and str(path) in exc.diagnostics()
        return
    _not_looser(load_policy(parent), effective)

"""Policy documents: shipped policies validate, the schema documents itself, bad input is refused
with the field path users wrote."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from safeload.errors import PolicyError
from safeload.policy import (
    KeySigner,
    Policy,
    SigstoreSigner,
    TrustPolicy,
    load_policy,
)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted((REPO / "policies").glob("*.toml"))


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_shipped_policy_validates(path: Path) -> None:
    policy = load_policy(path)
    assert policy.version == 1
    assert policy.extends == ()


def test_all_shipped_policies_are_present() -> None:
    names = {p.name for p in SHIPPED}
    assert {"strict.toml", "default.toml", "audit.toml", "org-baseline.toml", "team.toml"} <= names


def test_default_toml_is_the_builtin_default() -> None:
    shipped = load_policy(REPO / "policies" / "default.toml")
    assert shipped.model_dump() == Policy().model_dump()
    assert shipped.digest() == Policy().digest()
    assert "pickle" not in shipped.formats.allowed
    assert not shipped.trust.require_signature
    assert shipped.mode == "enforce"


def test_strict_and_audit_say_what_they_promise() -> None:
    strict = load_policy(REPO / "policies" / "strict.toml")
    assert strict.trust.require_signature and strict.trust.signers
    assert set(strict.formats.allowed) == {"safetensors", "onnx"}
    assert strict.sandbox.mode == "untrusted"
    audit = load_policy(REPO / "policies" / "audit.toml")
    assert audit.mode == "audit"
    assert audit.audit_log == str(REPO / "policies" / "safeload-audit.jsonl")


def _walk_schema(node: Any, where: str, missing: list[str]) -> None:
    if isinstance(node, dict):
        for name, prop in node.get("properties", {}).items():
            if "description" not in prop:
                missing.append(f"{where}.{name}")
        for key, value in node.items():
            _walk_schema(value, f"{where}/{key}", missing)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _walk_schema(value, f"{where}[{i}]", missing)


def test_every_schema_field_has_a_description() -> None:
    schema = Policy.model_json_schema()
    missing: list[str] = []
    _walk_schema(schema, "#", missing)
    assert missing == []
    # Walked something real: every section and model is in there.
    assert {"Limits", "TrustPolicy", "SigstoreSigner", "OnnxPolicy"} <= set(schema["$defs"])
    assert schema["additionalProperties"] is False


def test_json_and_yaml_equal_toml(tmp_path: Path) -> None:
    toml_policy = load_policy(REPO / "policies" / "strict.toml")
    doc = toml_policy.model_dump(mode="json")
    j = write(tmp_path, "p.json", json.dumps(doc))
    y = write(tmp_path, "p.yaml", yaml.safe_dump(doc))
    assert load_policy(j).model_dump() == toml_policy.model_dump()
    assert load_policy(y).model_dump() == toml_policy.model_dump()


def test_paths_resolve_against_the_policy_folder(tmp_path: Path) -> None:
    sub = tmp_path / "conf"
    sub.mkdir()
    (sub / "keys").mkdir()
    pem = "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
    (sub / "keys" / "release.pub.pem").write_text(pem)
    path = write(
        sub,
        "p.toml",
        """
version = 1
audit_log = "audit.jsonl"
[trust]
trust_config = "trust.json"
[[trust.signers]]
method = "key"
public_key = "keys/release.pub.pem"
[[trust.signers]]
method = "key"
public_key = '''-----BEGIN PUBLIC KEY-----
BBBB
-----END PUBLIC KEY-----'''
[[trust.signers]]
method = "certificate"
ca_chain = "keys/ca.pem"
""",
    )
    policy = load_policy(path)
    key, inline, cert = policy.trust.signers
    assert isinstance(key, KeySigner) and isinstance(inline, KeySigner)
    assert key.public_key == str(sub / "keys" / "release.pub.pem")
    assert key.pem_bytes() == pem.encode()
    assert inline.pem_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert cert.method == "certificate" and cert.ca_chain == str(sub / "keys" / "ca.pem")
    assert policy.audit_log == str(sub / "audit.jsonl")
    assert policy.trust.trust_config == str(sub / "trust.json")
    with pytest.raises(PolicyError, match="cannot read PEM"):
        cert.pem_bytes()


def test_models_are_frozen() -> None:
    policy = Policy()
    with pytest.raises(ValueError, match="frozen"):
        policy.mode = "audit"  # type: ignore[misc]
    signer = SigstoreSigner(identity="a@example.org", issuer="https://issuer.example")
    trust = TrustPolicy(require_signature=True, signers=(signer,))
    assert trust.signers[0] == signer


MALFORMED = {
    "wrong type": ("[trust]\nrequire_signature = 'maybe'\n", "trust.require_signature"),
    "wrong type in limits": ("[limits]\nmax_file_bytes = 'big'\n", "limits.max_file_bytes"),
    "negative limit": ("[limits]\nmax_tensors = -1\n", "limits.max_tensors"),
    "unknown top key": ("require_signatures = true\n", "require_signatures"),
    "unknown section key": ("[trust]\nrequire_signatures = true\n", "trust.require_signatures"),
    "unknown signer key": (
        '[[trust.signers]]\nmethod = "key"\npublic_key = "k.pem"\ncolour = "red"\n',
        "trust.signers[0].colour",
    ),
    "unknown extra_globals key": (
        '[pickle]\nextra_globals = [{name = "m.C", reason = "r", why = "x"}]\n',
        "pickle.extra_globals[0].why",
    ),
    "unknown format": ('[formats]\nallowed = ["safetensors", "exe"]\n', "formats.allowed[1]"),
    "unknown signer method": ('[[trust.signers]]\nmethod = "password"\n', "trust.signers[0]"),
    "missing issuer": (
        '[[trust.signers]]\nmethod = "key"\npublic_key = "k"\n'
        '[[trust.signers]]\nmethod = "sigstore"\nidentity = "a@b.c"\n',
        "trust.signers[1].issuer",
    ),
    "bad regex": (
        '[[trust.signers]]\nmethod = "sigstore"\nidentity_regex = "^(unclosed$"\nissuer = "i"\n',
        "trust.signers[0].identity_regex",
    ),
    "unanchored regex": (
        '[[trust.signers]]\nmethod = "sigstore"\nidentity_regex = ".*@org.example"\nissuer = "i"\n',
        "trust.signers[0].identity_regex",
    ),
    "escaped dollar is not an anchor": (
        '[[trust.signers]]\nmethod = "sigstore"\nidentity_regex = "^a\\\\$"\nissuer = "i"\n',
        "trust.signers[0].identity_regex",
    ),
    "both identity forms": (
        '[[trust.signers]]\nmethod = "sigstore"\nidentity = "a"\n'
        'identity_regex = "^a$"\nissuer = "i"\n',
        "trust.signers[0]",
    ),
    "bad digest": ('[trust.pinned_digests]\nmodel = "md5:abc"\n', "trust.pinned_digests"),
    "bad repo pattern": ('[sources]\nallowed_repos = ["just-a-name"]\n', "sources.allowed_repos"),
    "bad extra global name": (
        '[pickle]\nextra_globals = [{name = "os.system; rm", reason = "no"}]\n',
        "pickle.extra_globals[0].name",
    ),
    "global without reason": (
        '[pickle]\nextra_globals = [{name = "m.C", reason = ""}]\n',
        "pickle.extra_globals[0].reason",
    ),
    "opset range": ("[onnx]\nopset_min = 20\nopset_max = 10\n", "onnx"),
    "bad sandbox layer": (
        '[sandbox]\nrequired_layers = ["chroot"]\n',
        "sandbox.required_layers[0]",
    ),
    "absolute ignore path": ('[trust]\nignore_paths = ["/etc/passwd"]\n', "trust.ignore_paths"),
    "signature required, no signers": ("[trust]\nrequire_signature = true\n", "trust.signers"),
    "more signers required than trusted": (
        '[trust]\nmin_signers = 2\n[[trust.signers]]\nmethod = "key"\npublic_key = "k"\n',
        "trust.min_signers",
    ),
}


@pytest.mark.parametrize(("body", "field"), MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_policy_names_the_field(tmp_path: Path, body: str, field: str) -> None:
    path = write(tmp_path, "bad.toml", "version = 1\n" + body)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    err = info.value
    assert err.rule == field
    assert field in err.message
    assert err.path is not None and "bad.toml" in err.path


@pytest.mark.parametrize("version", ["2", "0", "'1'", "true"])
def test_unknown_version_is_refused(tmp_path: Path, version: str) -> None:
    path = write(tmp_path, "v.toml", f"version = {version}\n")
    with pytest.raises(PolicyError, match="unsupported policy version") as info:
        load_policy(path)
    assert info.value.rule == "version"


def test_missing_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="version: missing"):
        load_policy(write(tmp_path, "v.toml", 'mode = "audit"\n'))


@pytest.mark.parametrize(
    ("name", "text"),
    [("p.toml", "version = = 1"), ("p.json", "{"), ("p.yaml", "a: [b"), ("p.json", "[1, 2]")],
)
def test_unparseable_documents_are_policy_errors(tmp_path: Path, name: str, text: str) -> None:
    with pytest.raises(PolicyError) as info:
        load_policy(write(tmp_path, name, text))
    assert info.value.path == str(tmp_path / name)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "absent.toml")


def test_yaml_does_not_construct_python_objects(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "version: 1\nmode: !!python/object/apply:os.getpid []\n")
    with pytest.raises(PolicyError, match="not valid YAML"):
        load_policy(path)

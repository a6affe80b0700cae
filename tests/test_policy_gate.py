"""The policy gate a loader runs: limits in, verdict + audit line out, on real files.

Bytes come from real ``torch.save``/``safetensors``/``pickle.dumps`` outputs of plain data and
real key signatures; the reader is safeload's own (``safeload.formats.read``), never an
unpickler.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from safetensors.numpy import save_file

import safeload
from safeload.errors import PolicyError, PolicyViolation
from safeload.formats import read
from safeload.policy import (
    AUDIT_LOGGER_NAME,
    Limits,
    Policy,
    load_policy,
    policy_gate,
    select_extra_globals,
    tighter_limits,
)

REPO = Path(__file__).resolve().parent.parent


def _load_through_gate(path: Path | object, policy: object, limits: Limits | None = None) -> object:
    """What ``safeload.load`` does around its reader once the policy is wired in."""
    gate = policy_gate(policy, limits, source=path)  # type: ignore[arg-type]
    if isinstance(path, Path):
        data, name = memoryview(path.read_bytes()), str(path)
    else:
        data, name = path.buffer(), str(path.path)  # type: ignore[attr-defined]
    result = read(data, name=name, limits=gate.limits, framework="numpy")
    gate.check(data, name=name, fmt=result.format.value, shapes=[t.shape for t in result.tensors])
    return result.value


@pytest.fixture
def raw_pickle(tmp_path: Path) -> Path:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"lr": 0.1, "steps": [1, 2, 3]}, protocol=2))
    return path


@pytest.fixture
def st_file(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": np.arange(12, dtype=np.float32).reshape(3, 4)}, str(folder / "w.safetensors"))
    return folder / "w.safetensors"


def test_default_policy_refuses_raw_pickle_and_audits_it(
    raw_pickle: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME),
        pytest.raises(PolicyViolation) as info,
    ):
        _load_through_gate(raw_pickle, Policy())
    assert info.value.rule == "formats.allowed"
    line = json.loads(caplog.records[-1].getMessage())
    assert line["verdict"] == "refuse" and line["format"] == "pickle"
    assert line["digest"] is not None  # computed because the audit logger is on


def test_audit_mode_loads_the_violating_model_and_records_it(
    raw_pickle: Path, tmp_path: Path
) -> None:
    policy_file = tmp_path / "audit.toml"
    policy_file.write_text('version = 1\nmode = "audit"\naudit_log = "audit.jsonl"\n')
    value = _load_through_gate(raw_pickle, policy_file)
    assert value == {"lr": 0.1, "steps": [1, 2, 3]}
    [line] = [json.loads(x) for x in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert line["verdict"] == "audit_violation"
    assert line["rules"][0]["rule"] == "formats.allowed"
    assert line["policy_digest"] == load_policy(policy_file).digest()


def test_shipped_audit_policy_is_audit_mode(raw_pickle: Path, tmp_path: Path) -> None:
    text = (REPO / "policies" / "audit.toml").read_text()
    (tmp_path / "audit.toml").write_text(text)
    assert _load_through_gate(raw_pickle, tmp_path / "audit.toml") is not None
    assert (tmp_path / "safeload-audit.jsonl").exists()


def test_limits_come_from_the_policy_and_callers_only_lower_them(st_file: Path) -> None:
    gate = policy_gate(Policy(limits={"max_tensors": 5}), Limits(max_tensors=50, max_tensor_dims=3))
    assert gate.limits.max_tensors == 5 and gate.limits.max_tensor_dims == 3
    assert tighter_limits(Limits(), None) == Limits()
    tight = Policy(limits={"max_tensor_elements": 11})
    with pytest.raises(safeload.RefusedError) as info:
        _load_through_gate(st_file, tight)
    assert info.value.rule == "limits.max_tensor_elements"


def test_tensor_table_feeds_the_decision(st_file: Path) -> None:
    gate = policy_gate(Policy(), None)
    data = memoryview(st_file.read_bytes())
    result = read(data, name=str(st_file), limits=gate.limits, framework="numpy")
    decision = gate.check(
        data, name=str(st_file), fmt=result.format.value, shapes=[t.shape for t in result.tensors]
    )
    assert decision.allowed
    assert decision.candidate.tensor_count == 1
    assert decision.candidate.max_tensor_elements == 12


def test_policy_globals_resolve_only_to_registered_classes() -> None:
    policy = Policy(pickle={"extra_globals": [{"name": "mymod.Config", "reason": "floats"}]})
    registered = {"mymod.Config": "<class>", "other.Thing": "<class>"}
    assert select_extra_globals(policy, registered) == {"mymod.Config": "<class>"}
    assert select_extra_globals(Policy(), registered) == registered
    with pytest.raises(PolicyError, match="not registered") as info:
        policy_gate(policy, None, registered_globals={})
    assert info.value.rule == "pickle.extra_globals[0]"


@pytest.fixture
def signed_model(tmp_path: Path, st_file: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    priv = tmp_path / "release.key.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub = tmp_path / "release.pub.pem"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    safeload.sign(st_file.parent, method="key", private_key=priv)
    policy = tmp_path / "signed.toml"
    policy.write_text(
        "version = 1\n[trust]\nrequire_signature = true\n"
        '[[trust.signers]]\nmethod = "key"\npublic_key = "release.pub.pem"\n'
    )
    return st_file.parent, policy


def test_verified_file_satisfies_require_signature(signed_model: tuple[Path, Path]) -> None:
    folder, policy = signed_model
    verified = safeload.verify(folder, policy=policy)
    vf = verified.files["w.safetensors"]
    value = _load_through_gate(vf, policy)
    assert isinstance(value, dict) and value["w"].shape == (3, 4)
    # The same bytes from a plain path are unverified: the policy refuses them.
    with pytest.raises(PolicyViolation) as info:
        _load_through_gate(folder / "w.safetensors", policy)
    assert info.value.rule == "trust.require_signature"


def test_pinned_digest_checked_on_verified_bytes(signed_model: tuple[Path, Path]) -> None:
    folder, policy = signed_model
    vf = safeload.verify(folder, policy=policy).files["w.safetensors"]
    pinned = policy.parent / "pinned.toml"
    pinned.write_text(
        policy.read_text() + f'[trust.pinned_digests]\n"w.safetensors" = "sha256:{"0" * 64}"\n'
    )
    with pytest.raises(PolicyViolation) as info:
        _load_through_gate(vf, pinned)
    assert info.value.rule == "trust.pinned_digests"
    # Pins name the file's plain SHA-256 (the OMS sharded digest is a different value).
    sha = hashlib.sha256(vf.buffer()).hexdigest()
    pinned.write_text(
        policy.read_text() + f'[trust.pinned_digests]\n"w.safetensors" = "sha256:{sha}"\n'
    )
    assert _load_through_gate(vf, pinned) is not None


# --- through safeload.load ----------------------------------------------------------------------


def test_load_with_policy_enforces_and_audits(raw_pickle: Path, tmp_path: Path) -> None:
    strict = tmp_path / "enforce.toml"
    strict.write_text('version = 1\naudit_log = "a.jsonl"\n')
    with pytest.raises(PolicyViolation) as info:
        safeload.load(raw_pickle, policy=strict)
    assert info.value.rule == "formats.allowed"
    with pytest.raises(PolicyViolation):
        safeload.load(raw_pickle, policy=Policy())
    [line] = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert line["verdict"] == "refuse" and line["path"] == str(raw_pickle)


def test_load_in_audit_mode_loads_violating_model(raw_pickle: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.toml"
    audit.write_text('version = 1\nmode = "audit"\naudit_log = "a.jsonl"\n')
    assert safeload.load(raw_pickle, policy=audit) == {"lr": 0.1, "steps": [1, 2, 3]}
    line = json.loads((tmp_path / "a.jsonl").read_text())
    assert line["verdict"] == "audit_violation" and line["rules"][0]["seen"] == "pickle"


def test_load_takes_limits_from_policy(st_file: Path) -> None:
    with pytest.raises(safeload.RefusedError) as info:
        safeload.load(st_file, framework="numpy", policy=Policy(limits={"max_file_bytes": 10}))
    assert info.value.rule == "limits.max_file_bytes"
    # A caller's limits cannot raise the policy's.
    with pytest.raises(safeload.RefusedError):
        safeload.load(
            st_file,
            framework="numpy",
            limits=Limits(max_file_bytes=1 << 40),
            policy=Policy(limits={"max_file_bytes": 10}),
        )


def test_load_uses_discovered_policy(
    raw_pickle: Path, st_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_policy = tmp_path / "env.toml"
    env_policy.write_text("version = 1\n")
    monkeypatch.setenv("SAFELOAD_POLICY", str(env_policy))
    with pytest.raises(PolicyViolation):
        safeload.load(raw_pickle)
    assert safeload.load(st_file, framework="numpy")["w"].shape == (3, 4)


def test_load_refuses_unregistered_policy_global(st_file: Path) -> None:
    policy = Policy(pickle={"extra_globals": [{"name": "os.system", "reason": "no"}]})
    with pytest.raises(PolicyError, match="not registered"):
        safeload.load(st_file, framework="numpy", policy=policy)

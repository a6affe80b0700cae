"""Discovery order and the ``safeload policy`` commands, on real files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import save_file

from safeload._cli import cli
from safeload.errors import PolicyError
from safeload.policy import Policy, effective_policy, load_policy, policy_files, provenance
from safeload.policy import _load as policy_load

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working directory, no $SAFELOAD_POLICY, and a system path we control."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("SAFELOAD_POLICY", raising=False)
    monkeypatch.setattr(policy_load, "SYSTEM_POLICY", tmp_path / "etc" / "policy.toml")
    return tmp_path


def _policy(path: Path, max_tensors: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"version = 1\n[limits]\nmax_tensors = {max_tensors}\n")
    return path


def test_discovery_order(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = isolated / "work"
    # Nothing configured: the built-in default.
    assert effective_policy().model_dump() == Policy().model_dump()
    assert policy_files(effective_policy()) == ("<built-in default>",)
    # Each level, added in reverse priority, takes over from the one below.
    _policy(isolated / "etc" / "policy.toml", 5)
    assert effective_policy().limits.max_tensors == 5
    (work / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.safeload]\nversion = 1\n[tool.safeload.limits]\n'
        "max_tensors = 4\n"
    )
    assert effective_policy().limits.max_tensors == 4
    assert provenance(effective_policy())["limits.max_tensors"].endswith(
        "pyproject.toml[tool.safeload]"
    )
    _policy(work / "safeload.toml", 3)
    assert effective_policy().limits.max_tensors == 3
    monkeypatch.setenv("SAFELOAD_POLICY", str(_policy(isolated / "env.toml", 2)))
    assert effective_policy().limits.max_tensors == 2
    explicit = _policy(isolated / "explicit.toml", 1)
    assert effective_policy(explicit).limits.max_tensors == 1
    assert effective_policy(str(explicit)).limits.max_tensors == 1
    built = Policy(limits={"max_tensors": 0})
    assert effective_policy(built).limits.max_tensors == 0


def test_pyproject_without_table_is_skipped(isolated: Path) -> None:
    (isolated / "work" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert effective_policy().model_dump() == Policy().model_dump()


def test_bad_discovered_policy_is_an_error_not_a_fallback(isolated: Path) -> None:
    (isolated / "work" / "safeload.toml").write_text("version = 1\n[limits]\nmax_tensors = 'x'\n")
    with pytest.raises(PolicyError, match=r"limits\.max_tensors"):
        effective_policy()


def test_python_policy_is_checked_and_extends_resolve_from_cwd(isolated: Path) -> None:
    _policy(isolated / "work" / "base.toml", 7)
    with pytest.raises(PolicyError, match=r"limits\.max_tensors"):
        effective_policy(Policy(extends=("base.toml",), limits={"max_tensors": 8}))
    assert effective_policy(Policy(extends=("base.toml",))).limits.max_tensors == 7
    with pytest.raises(PolicyError, match=r"trust\.signers"):
        effective_policy(Policy(trust={"require_signature": True}))


def test_effective_policy_passes_a_loaded_policy_through() -> None:
    loaded = load_policy(REPO / "policies" / "team.toml")
    assert effective_policy(loaded) is loaded


# --- CLI ----------------------------------------------------------------------------------------


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["policy", *args])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("name", ["strict.toml", "default.toml", "audit.toml", "team.toml"])
def test_check_valid(name: str) -> None:
    code, out, _ = run("check", str(REPO / "policies" / name))
    assert code == 0 and out.startswith("ok:")


def test_check_invalid_prints_field_path_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        'version = 1\n[[trust.signers]]\nmethod = "key"\npublic_key = "k"\n'
        '[[trust.signers]]\nmethod = "sigstore"\nidentity = "a@b"\n'
    )
    code, out, err = run("check", str(bad))
    assert code == 1
    assert "trust.signers[1].issuer" in err
    assert "Traceback" not in out + err


def test_check_missing_file(tmp_path: Path) -> None:
    code, _, err = run("check", str(tmp_path / "nope.toml"))
    assert code == 1 and "cannot read policy file" in err


def test_show_text_names_sources() -> None:
    code, out, _ = run("show", "--policy", str(REPO / "policies" / "team.toml"))
    assert code == 0
    lines = {line.split(" = ")[0]: line for line in out.splitlines() if " = " in line}
    assert lines["formats.allowed"].endswith("team.toml")
    assert lines["trust.require_signature"].endswith("org-baseline.toml")
    assert lines["limits.max_zip_members"].endswith("<built-in default>")


def test_show_json(isolated: Path) -> None:
    code, out, _ = run("show", "--format", "json")
    doc = json.loads(out)
    assert code == 0
    assert doc["files"] == ["<built-in default>"]
    assert doc["digest"] == Policy().digest()
    assert set(doc["provenance"]) >= {"mode", "limits.max_file_bytes", "trust.signers"}


def test_show_with_broken_policy_is_a_diagnostic(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("version = 9\n")
    code, out, err = run("show", "--policy", str(bad))
    assert code == 2
    assert "unsupported policy version 9" in err and "Traceback" not in out + err


def test_schema_is_json_schema() -> None:
    code, out, _ = run("schema")
    doc = json.loads(out)
    assert code == 0 and doc["title"] == "Policy" and "trust" in doc["properties"]


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    save_file({"w": np.arange(6, dtype=np.float32)}, str(folder / "model.safetensors"))
    np.save(folder / "extra.npy", np.zeros(3))
    return folder


def test_explain_allowed(model_dir: Path, isolated: Path) -> None:
    code, out, _ = run("explain", str(model_dir / "model.safetensors"))
    assert code == 0
    assert "allow: " in out and "(safetensors)" in out


def test_explain_names_rules_that_fire(model_dir: Path) -> None:
    strict = str(REPO / "policies" / "strict.toml")
    code, out, _ = run("explain", str(model_dir), "--policy", strict, "--format", "json")
    assert code == 1
    by_name = {Path(d["path"]).name: d for d in json.loads(out)}
    npy = by_name["extra.npy"]
    assert npy["format"] == "numpy" and npy["verdict"] == "refuse"
    assert {r["rule"] for r in npy["rules"]} == {
        "formats.allowed",
        "trust.require_signature",
        "sandbox.mode",
    }
    st = by_name["model.safetensors"]
    assert "formats.allowed" not in {r["rule"] for r in st["rules"]}
    assert (
        len(st["digest"]) == 64
        and st["size_bytes"] == (model_dir / "model.safetensors").stat().st_size
    )


def test_explain_audit_mode_exits_zero(model_dir: Path) -> None:
    audit = str(REPO / "policies" / "audit.toml")
    code, out, _ = run("explain", str(model_dir), "--policy", audit)
    assert code == 0
    assert "allow:" in out


def test_explain_torch_zip_under_strict(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    path = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, path)
    code, out, _ = run("explain", str(path), "--policy", str(REPO / "policies" / "strict.toml"))
    assert code == 1
    assert "(torch_zip)" in out and "formats.allowed" in out


def test_explain_verifies_a_signed_folder(model_dir: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    import safeload

    key = ec.generate_private_key(ec.SECP256R1())
    priv = tmp_path / "k.pem"
    priv.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "k.pub.pem").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    policy = tmp_path / "signed.toml"
    policy.write_text(
        "version = 1\n[trust]\nrequire_signature = true\n"
        '[[trust.signers]]\nmethod = "key"\npublic_key = "k.pub.pem"\n'
    )
    code, out, _ = run("explain", str(model_dir), "--policy", str(policy), "--format", "json")
    assert code == 1 and "unsigned" in json.loads(out)[0]["signature"]
    safeload.sign(model_dir, method="key", private_key=priv)
    code, out, _ = run("explain", str(model_dir), "--policy", str(policy), "--format", "json")
    doc = json.loads(out)
    assert code == 0, doc
    assert {Path(d["path"]).name for d in doc} == {"model.safetensors", "extra.npy"}
    assert all(d["verdict"] == "allow" and d["signature"].startswith("verified") for d in doc)
    # Tampering after signing: verification fails, so the signature rule fires again.
    (model_dir / "extra.npy").write_bytes((model_dir / "extra.npy").read_bytes() + b"\0")
    code, out, _ = run("explain", str(model_dir), "--policy", str(policy))
    assert code == 1 and "did not verify" in out and "trust.require_signature" in out

"""``safeload.load`` under a policy: the default always decides, ``pickle.extra_globals``
narrows the program's safe globals, and audit mode loads a violating file but records it."""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import safeload
from safeload.policy import ExtraGlobal, FormatsPolicy, PicklePolicy, Policy

torch = pytest.importorskip("torch")

ALLOW_PICKLE = Policy(formats=FormatsPolicy(allowed=(*FormatsPolicy().allowed, "pickle")))


@dataclass
class TrainConfig:
    """A user's own plain-data class, saved inside a checkpoint."""

    lr: float
    steps: int


@dataclass
class OtherConfig:
    name: str


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture
def user_ckpt(tmp_path: Path) -> Path:
    path = tmp_path / "ckpt.pt"
    torch.save({"cfg": TrainConfig(0.5, 7), "w": torch.arange(3.0)}, path)
    return path


@pytest.fixture
def registered() -> Any:
    with safeload.safe_globals(
        [
            (TrainConfig, "a dataclass of two numbers; no methods run when rebuilt"),
            (OtherConfig, "a dataclass of one string"),
        ]
    ):
        yield


def _extra(*classes: type) -> Policy:
    entries = tuple(ExtraGlobal(name=_qualname(c), reason="plain data") for c in classes)
    return Policy(pickle=PicklePolicy(extra_globals=entries))


# -- the default policy ------------------------------------------------------------------------
def test_default_policy_refuses_raw_pickle_and_says_how_to_allow_it(no_torch_load: None) -> None:
    data = pickle.dumps({"ids": [1, 2, 3]}, protocol=4)
    with pytest.raises(safeload.PolicyViolation) as info:
        safeload.load(data)
    assert info.value.rule == "formats.allowed"
    assert "formats.allowed" in (info.value.detail or "")
    assert "'pickle'" in (info.value.detail or "")
    assert safeload.load(data, policy=ALLOW_PICKLE) == {"ids": [1, 2, 3]}


def test_default_policy_still_loads_checkpoints(user_ckpt: Path, registered: None) -> None:
    got = safeload.load(user_ckpt)
    assert got["cfg"] == TrainConfig(0.5, 7)
    assert type(got["cfg"]) is TrainConfig


# -- pickle.extra_globals ----------------------------------------------------------------------
def test_unregistered_user_class_is_refused(user_ckpt: Path) -> None:
    with pytest.raises(safeload.UnsafeModelError) as info:
        safeload.load(user_ckpt)
    assert "TrainConfig" in str(info.value)


def test_policy_extra_globals_narrow_the_registry(user_ckpt: Path, registered: None) -> None:
    with pytest.raises(safeload.UnsafeModelError) as info:  # registered, but not selected
        safeload.load(user_ckpt, policy=_extra(OtherConfig))
    assert "TrainConfig" in str(info.value)
    got = safeload.load(user_ckpt, policy=_extra(TrainConfig))
    assert got["cfg"] == TrainConfig(0.5, 7)
    assert torch.equal(got["w"], torch.arange(3.0))


def test_policy_cannot_grant_an_unregistered_class(user_ckpt: Path) -> None:
    with pytest.raises(safeload.PolicyError) as info:
        safeload.load(user_ckpt, policy=_extra(TrainConfig))
    assert info.value.rule == "pickle.extra_globals[0]"


def test_read_and_analyze_take_the_selected_globals(user_ckpt: Path, registered: None) -> None:
    data = user_ckpt.read_bytes()
    with pytest.raises(safeload.UnsafeModelError):
        safeload.formats.read(data, safe_globals={})
    with pytest.raises(safeload.UnsafeModelError):
        safeload.formats.analyze(data, safe_globals={})
    assert safeload.formats.read(data).value["cfg"] == TrainConfig(0.5, 7)


# -- audit mode --------------------------------------------------------------------------------
def test_extras_audit_mode_loads_a_violating_model_and_records_it(tmp_path: Path) -> None:
    log = tmp_path / "audit.jsonl"
    policy = Policy(mode="audit", audit_log=str(log))
    data = pickle.dumps({"ids": [1, 2]}, protocol=2)
    assert safeload.load(data, policy=policy) == {"ids": [1, 2]}
    (line,) = log.read_text().splitlines()
    record = json.loads(line)
    assert record["event"] == "decision"
    assert record["mode"] == "audit"
    assert record["format"] == "pickle"
    assert [r["rule"] for r in record["rules"]] == ["formats.allowed"]
    assert record["verdict"] == "audit_violation"


def test_every_load_is_audited_under_the_default_policy(
    user_ckpt: Path, registered: None, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO", logger="safeload.audit"):
        safeload.load(user_ckpt)
    (record,) = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safeload.audit"]
    assert record["format"] == "torch_zip" and record["rules"] == []

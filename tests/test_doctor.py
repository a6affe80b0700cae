"""``safeload doctor`` reports what a real probe worker got, in text and JSON."""

from __future__ import annotations

import json

from click.testing import CliRunner

import safeload
from safeload._cli import cli


def test_doctor_reports_every_layer_in_order() -> None:
    report = safeload.doctor()
    assert [r.name for r in report.layers] == list(safeload.SANDBOX_LAYERS)
    assert report.probe_error is None
    for r in report.layers:
        assert r.reason  # every layer says why, applied or not
        assert not r.applied or r.available
    # rlimits and no_new_privs need no privileges and exist on every Linux.
    assert {"rlimits", "no_new_privs"} <= set(report.supported)


def test_detect_only_applies_nothing() -> None:
    report = safeload.doctor(probe=False)
    assert not any(r.applied for r in report.layers)


def test_doctor_text_and_json_agree() -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["doctor"])
    assert text.exit_code == 0, text.output
    as_json = runner.invoke(cli, ["doctor", "--format", "json"])
    assert as_json.exit_code == 0, as_json.output
    doc = json.loads(as_json.output)
    assert [layer["name"] for layer in doc["layers"]] == list(safeload.SANDBOX_LAYERS)
    for layer in doc["layers"]:
        assert layer["name"] in text.output
        assert set(layer) == {"name", "available", "applied", "reason"}
    if doc["probe_error"] is None:  # the probe ran twice: the second job is a fork
        assert doc["first_job_ms"] > 0 and doc["job_ms"] > 0
        assert "worker start-up" in text.output


def test_doctor_require_is_a_gate() -> None:
    report = safeload.doctor()
    runner = CliRunner()
    ok = runner.invoke(cli, ["doctor", "--require", "rlimits"])
    assert ok.exit_code == 0
    missing = [r.name for r in report.layers if not r.applied]
    if missing:  # on a machine with every layer there is nothing to fail on
        bad = runner.invoke(cli, ["doctor", "--require", missing[0]])
        assert bad.exit_code == 1


def test_unknown_layer_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["doctor", "--require", "chroot"])
    assert result.exit_code == 2

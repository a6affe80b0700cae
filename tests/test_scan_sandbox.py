"""``safeload scan --sandbox``: every file parsed in its own forked worker, same verdicts.

The whole labelled corpus is scanned both ways and the results must match field for field,
so moving parsing into the worker changes where it runs, never what it concludes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import safeload
from safeload._cli import cli
from safeload.errors import PolicyViolation
from safeload.policy import Policy, SandboxPolicy

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox worker needs Linux")


def _facts(report: Any) -> dict[str, tuple[Any, ...]]:
    return {
        r.path: (r.verdict, r.rule, r.format, r.globals, r.tensor_count, r.code, r.message)
        for r in report.results
    }


def test_sandboxed_scan_of_the_corpus_matches_the_in_process_scan(corpus: Any) -> None:
    in_process = safeload.scan(corpus.root)
    sandboxed = safeload.scan(corpus.root, sandbox=True)
    assert not any(corpus.markers.iterdir())  # no payload ran, in either process
    assert _facts(sandboxed) == _facts(in_process)
    verdicts = {r.verdict for r in sandboxed.results}
    assert "unsafe" in verdicts and "clean" in verdicts
    assert sandboxed.exit_code == in_process.exit_code


def test_the_policy_sends_scans_to_the_worker_and_a_missing_layer_is_an_error(
    tmp_path: Path,
) -> None:
    import torch

    model = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, model)
    always = Policy(sandbox=SandboxPolicy(mode="always"))
    assert safeload.scan(model, policy=always).results[0].verdict == "clean"
    # A layer no machine has: the worker cannot run, and the file is an error, never a pass.
    impossible = Policy(
        sandbox=SandboxPolicy.model_construct(mode="always", required_layers=("no_such_layer",))
    )
    result = safeload.scan(model, policy=impossible).results[0]
    assert result.verdict == "error" and result.rule == "sandbox.required_layers"
    with pytest.raises(PolicyViolation) as info:
        safeload.scan(model, policy=always, sandbox=False)
    assert info.value.rule == "sandbox.mode"


def test_cli_scan_sandbox_flag(tmp_path: Path) -> None:
    import torch

    model = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, model)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00hi\x85R.")
    run = CliRunner().invoke(cli, ["scan", "--sandbox", "--format", "json", str(tmp_path)])
    assert run.exit_code == 1, run.output
    results = {Path(r["path"]).name: r for r in json.loads(run.output)["results"]}
    assert results["model.pt"]["verdict"] == "clean"
    assert results["bad.pkl"]["verdict"] == "unsafe"
    assert results["bad.pkl"]["globals"] == ["os.system"]

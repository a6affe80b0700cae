"""``safeload scan`` over the shared corpus and hand-made folders, through the real CLI.

The CLI runs in-process through click's ``CliRunner`` (fast, same interpreter) and once as a
real subprocess, so the exit code and "no traceback" promises are checked the way users and CI
see them. Every malicious sample must be refused without its payload running: the corpus
payloads only ever create a marker file, so "marker absent" is the proof.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import safeload
from safeload._cli import cli

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


# Benign core samples the readers refuse today, on purpose and cleanly (see tests/test_corpus.py).
KNOWN_GAPS: dict[str, str] = {}


def run(*args: str) -> Result:
    result = CliRunner().invoke(cli, ["scan", *args], catch_exceptions=False)
    assert "Traceback" not in result.output
    return result


def markers_fired(corpus: Any) -> list[str]:
    return sorted(p.name for p in Path(corpus.markers).iterdir())


# --- the corpus --------------------------------------------------------------------------------


def test_every_malicious_sample_is_unsafe_and_never_runs(corpus: Any) -> None:
    samples = corpus.samples("malicious")
    assert len(samples) > 50
    report = safeload.scan([corpus.path(s) for s in samples])
    by_path = {Path(r.path).name: r for r in report.results}
    not_refused = [s["file"] for s in samples if by_path[Path(s["file"]).name].verdict != "unsafe"]
    assert not_refused == []
    assert report.exit_code == 1
    assert markers_fired(corpus) == []


def test_each_malicious_sample_exits_1_from_the_cli(corpus: Any) -> None:
    failures = []
    for sample in corpus.samples("malicious"):
        result = run(str(corpus.path(sample)), "--format", "json")
        doc = json.loads(result.output)
        if result.exit_code != 1 or doc["results"][0]["verdict"] != "unsafe":
            failures.append((sample["file"], result.exit_code))
    assert failures == []
    assert markers_fired(corpus) == []


def test_every_benign_core_sample_is_clean(corpus: Any) -> None:
    samples = [s for s in corpus.samples("benign") if s.get("tier") == "core"]
    assert samples
    result = run(*(str(corpus.path(s)) for s in samples), "--format", "json")
    doc = json.loads(result.output)
    dirty = [
        (r["path"], r["code"], r["message"])
        for r in doc["results"]
        if r["verdict"] != "clean" and Path(r["path"]).name not in KNOWN_GAPS
    ]
    assert dirty == []
    gaps = {Path(r["path"]).name for r in doc["results"] if r["verdict"] != "clean"}
    assert gaps <= KNOWN_GAPS.keys()
    assert {r["verdict"] for r in doc["results"]} <= {"clean", "unsafe"}
    assert result.exit_code == (1 if gaps else 0)


def test_json_carries_the_offending_globals(corpus: Any) -> None:
    result = run(str(corpus.root / "malicious"), "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    by_name = {Path(r["path"]).name: r for r in doc["results"]}
    system = by_name["p1_posix_system.pkl"]
    assert system["verdict"] == "unsafe"
    assert system["code"].startswith("SL1")
    assert any("system" in g for g in system["globals"]), system
    assert any("eval" in g for g in by_name["p3_builtins_eval.pkl"]["globals"])
    assert doc["summary"]["unsafe"] == len(corpus.samples("malicious"))


def test_text_output_names_every_refused_file(corpus: Any) -> None:
    result = run(str(corpus.root / "malicious"))
    assert result.exit_code == 1
    for sample in corpus.samples("malicious")[:10]:
        assert Path(sample["file"]).name in result.output
    assert "unsafe" in result.output


def test_subprocess_scan_exit_code_and_no_traceback(corpus: Any, tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "safeload", "scan", str(corpus.root), "--format", "json",
         "--output", str(out)],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    doc = json.loads(out.read_text())
    assert doc["summary"]["unsafe"] >= len(corpus.samples("malicious"))
    assert markers_fired(corpus) == []


# --- exit codes and hand-made folders ----------------------------------------------------------


def test_examples_folder_is_clean() -> None:
    result = run(str(EXAMPLES))
    assert result.exit_code == 0, result.output
    assert "model.pt" in result.output and "model.safetensors" in result.output


def test_empty_folder_exits_3(tmp_path: Path) -> None:
    result = run(str(tmp_path))
    assert result.exit_code == 3


def test_only_text_files_exits_3(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# a model card\n")
    (tmp_path / "config.json").write_text('{"hidden": 4}\n')
    result = run(str(tmp_path), "--format", "json")
    assert result.exit_code == 3
    assert {r["verdict"] for r in json.loads(result.output)["results"]} == {"skipped"}


def test_missing_path_exits_2_without_traceback(tmp_path: Path) -> None:
    result = run(str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_refusal_outranks_an_error(corpus: Any, tmp_path: Path) -> None:
    bad = corpus.root / "malicious" / "p1_posix_system.pkl"
    assert run(str(bad), str(tmp_path / "missing")).exit_code == 1


def test_pickle_disguised_as_config_is_scanned(corpus: Any, tmp_path: Path) -> None:
    payload = (corpus.root / "malicious" / "p4_builtins_exec.pkl").read_bytes()
    (tmp_path / "config.json").write_bytes(payload)
    result = run(str(tmp_path), "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.output)["results"][0]["verdict"] == "unsafe"
    assert markers_fired(corpus) == []


def test_unrecognised_binary_is_refused_not_skipped(tmp_path: Path) -> None:
    (tmp_path / "weights.bin").write_bytes(bytes(range(256)) * 4)
    (tmp_path / "notes.txt").write_bytes(b"\x00\x01binary pretending to be text")
    result = run(str(tmp_path), "--format", "json")
    assert result.exit_code == 1
    doc = json.loads(result.output)
    assert [r["code"] for r in doc["results"]] == ["SL210", "SL210"]


def test_python_in_a_model_folder_is_a_finding(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    for name in ("model.safetensors", "config.json"):
        (model / name).write_bytes((EXAMPLES / "tiny-model" / name).read_bytes())
    (model / "modeling_custom.py").write_text("import os\n")
    (tmp_path / "train.py").write_text("print('mine')\n")
    result = run(str(tmp_path), "--format", "json")
    assert result.exit_code == 1
    rows = json.loads(result.output)["results"]
    verdicts = {Path(r["path"]).name: (r["verdict"], r["code"]) for r in rows}
    assert verdicts["modeling_custom.py"] == ("unsafe", "SL110")
    assert verdicts["train.py"][0] == "skipped"
    assert verdicts["model.safetensors"][0] == "clean"


def test_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.bin")
    result = run(str(tmp_path), "--format", "json")
    assert result.exit_code == 2
    assert json.loads(result.output)["results"][0]["verdict"] == "error"


def test_directory_symlink_loops_are_not_followed(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(
        (EXAMPLES / "tiny-model" / "model.safetensors").read_bytes()
    )
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    result = run(str(tmp_path), "--format", "json")
    assert result.exit_code == 0
    assert len(json.loads(result.output)["results"]) == 1


def test_policy_limits_apply(tmp_path: Path) -> None:
    policy = tmp_path / "tight.toml"
    policy.write_text("version = 1\n\n[limits]\nmax_file_bytes = 100\n")
    model = EXAMPLES / "tiny-model" / "model.pt"
    result = run(str(model), "--policy", str(policy), "--format", "json")
    assert result.exit_code == 1
    finding = json.loads(result.output)["results"][0]
    assert finding["rule"] == "limits.max_file_bytes"
    assert finding["code"] == safeload.LimitExceededError.code


def test_output_file_receives_the_report(tmp_path: Path) -> None:
    out = tmp_path / "scan.json"
    result = run(str(EXAMPLES), "--format", "json", "--output", str(out))
    assert result.exit_code == 0
    assert json.loads(out.read_text())["summary"]["clean"] == 2


def test_no_color_output_has_no_escape_codes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_COLOR", "1")
    result = run(str(EXAMPLES))
    assert "\x1b[" not in result.output


def test_format_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFELOAD_SCAN_FORMAT", "json")
    result = run(str(EXAMPLES))
    assert json.loads(result.output)["exit_code"] == 0


def test_progress_callback_counts_every_file(tmp_path: Path) -> None:
    for i in range(3):
        (tmp_path / f"notes{i}.txt").write_text("hello\n")
    seen: list[tuple[int, int]] = []
    report = safeload.scan([tmp_path], progress=lambda done, total, _p: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert report.exit_code == 3


def test_a_pickle_named_py_is_still_a_pickle(corpus: Any, tmp_path: Path) -> None:
    payload = (corpus.root / "malicious" / "p0_text_builtin_exec.pkl").read_bytes()
    (tmp_path / "helpers.py").write_bytes(payload)
    (tmp_path / "__init__.py").write_bytes(b"")
    result = run(str(tmp_path), "--format", "json")
    rows = {Path(r["path"]).name: r for r in json.loads(result.output)["results"]}
    assert rows["helpers.py"]["verdict"] == "unsafe"
    assert rows["helpers.py"]["code"].startswith("SL1")
    assert rows["__init__.py"]["verdict"] == "skipped"
    assert result.exit_code == 1
    assert markers_fired(corpus) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can list any folder")
def test_unlistable_folder_is_an_error(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result = run(str(tmp_path), "--format", "json")
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2
    assert json.loads(result.output)["results"][0]["rule"] == "scan.walk"


def test_policy_decides_each_clean_file(tmp_path: Path) -> None:
    policy = tmp_path / "st-only.toml"
    policy.write_text('version = 1\n\n[formats]\nallowed = ["safetensors"]\n')
    result = run(str(EXAMPLES), "--policy", str(policy), "--format", "json")
    assert result.exit_code == 1
    rows = {Path(r["path"]).name: r for r in json.loads(result.output)["results"]}
    assert rows["model.safetensors"]["verdict"] == "clean"
    assert rows["model.pt"]["verdict"] == "unsafe"
    assert rows["model.pt"]["code"] == safeload.PolicyViolation.code


def test_bad_policy_file_exits_2(tmp_path: Path) -> None:
    policy = tmp_path / "bad.toml"
    policy.write_text("version = 1\nrequire_signatures = true\n")
    result = run(str(EXAMPLES), "--policy", str(policy))
    assert result.exit_code == 2
    assert "safeload: error:" in result.output

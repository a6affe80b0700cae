"""``safeload.to_safetensors``: real ``torch.save`` outputs in, checked safetensors out.

Every conversion runs under ``no_torch_load`` (no stock unpickler touches model bytes); the
reference (``torch.load(weights_only=True)`` of our own benign files, ``safetensors``' own
``load_file`` of the output) runs only afterwards. Tensors are compared as raw bytes, so NaN
payloads and signed zeros count. A failed conversion leaves nothing in the output folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import struct
import sys
import warnings
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import pytest

import safeload
from safeload.convert._safetensors import _same
from safeload.policy import FormatsPolicy, Policy, SandboxPolicy

torch = pytest.importorskip("torch")
st = pytest.importorskip("safetensors.torch")

ALWAYS = Policy(sandbox=SandboxPolicy(mode="always"))
ALLOW_PICKLE = Policy(formats=FormatsPolicy(allowed=(*FormatsPolicy().allowed, "pickle")))
linux_only = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox worker needs Linux")


def _nan_payload() -> Any:
    # A NaN with a non-default payload and a negative zero: a value compare would miss both.
    return torch.tensor(struct.unpack("<2f", struct.pack("<2I", 0x7FC00123, 0x80000000)))


def _state_dict() -> dict[str, Any]:
    torch.manual_seed(0)
    return {
        "fp32": torch.randn(4, 3),
        "fp16": torch.randn(5).half(),
        "bf16": torch.randn(2, 3).bfloat16(),
        "int8": torch.randint(-128, 127, (6,), dtype=torch.int8),
        "uint8": torch.arange(7, dtype=torch.uint8),
        "int64": torch.arange(3),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "nan": _nan_payload(),
    }


def _bytes(t: Any) -> bytes:
    return bytes(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def _assert_same(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert sorted(got) == sorted(want)
    for key, w in want.items():
        g = got[key]
        assert (g.dtype, tuple(g.shape)) == (w.dtype, tuple(w.shape)), key
        assert _bytes(g) == _bytes(w), key


def _leftovers(folder: Path, *keep: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p not in keep)


def _header(path: Path) -> dict[str, Any]:
    raw = path.read_bytes()
    doc: dict[str, Any] = json.loads(raw[8 : 8 + int.from_bytes(raw[:8], "little")])
    return doc


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_round_trip_is_bit_exact(
    tmp_path: Path, zipfile: bool, monkeypatch: pytest.MonkeyPatch, no_torch_load: None
) -> None:
    src = tmp_path / "model.pt"
    torch.save(_state_dict(), src, _use_new_zipfile_serialization=zipfile)
    out = tmp_path / "model.safetensors"
    report = safeload.to_safetensors(src, out, sandbox=False)
    monkeypatch.undo()
    want = torch.load(src, weights_only=True)
    _assert_same(st.load_file(out), want)
    assert report.source_format == ("torch_zip" if zipfile else "torch_legacy")
    assert report.tensors == report.checked == len(want)
    assert report.bytes_written == out.stat().st_size
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert (report.target, report.output, report.source) == ("safetensors", str(out), str(src))
    assert not report.sandboxed and report.layers == ()
    assert _header(out)["__metadata__"] == {"format": "pt"}
    assert _leftovers(tmp_path) == ["model.pt", "model.safetensors"]


@linux_only
def test_sandboxed_conversion_matches_in_process(tmp_path: Path, no_torch_load: None) -> None:
    src = tmp_path / "model.pt"
    torch.save(_state_dict(), src)
    here = safeload.to_safetensors(src, tmp_path / "here.safetensors", sandbox=False)
    there = safeload.to_safetensors(src, tmp_path / "there.safetensors", sandbox=True)
    assert there.sandboxed and "seccomp" in there.layers
    # The layers the worker itself reported applied, not what the machine could offer.
    applied = {r.name for r in safeload.doctor().layers if r.available}
    assert set(there.layers) == applied
    assert there.source_format == here.source_format == "torch_zip"
    _assert_same(st.load_file(tmp_path / "there.safetensors"), _state_dict())
    _assert_same(st.load_file(tmp_path / "here.safetensors"), _state_dict())
    assert here.tensors == there.tensors == len(_state_dict())


@linux_only
def test_policy_decides_the_sandbox_when_not_asked(tmp_path: Path) -> None:
    src = tmp_path / "model.pt"
    torch.save({"w": torch.ones(3)}, src)
    report = safeload.to_safetensors(src, tmp_path / "a.safetensors", policy=ALWAYS)
    assert report.sandboxed
    with pytest.raises(safeload.PolicyViolation) as info:
        safeload.to_safetensors(src, tmp_path / "b.safetensors", policy=ALWAYS, sandbox=False)
    assert info.value.rule == "sandbox.mode"
    assert _leftovers(tmp_path) == ["a.safetensors", "model.pt"]


def test_tied_weights_are_stored_once_and_recorded(tmp_path: Path, no_torch_load: None) -> None:
    emb = torch.randn(10, 4)
    whole = torch.arange(12.0)
    src = tmp_path / "tied.pt"
    torch.save(
        {
            "embed.weight": emb,
            "lm_head.weight": emb,  # tied: the same view of one storage
            "whole": whole,
            "part": whole[4:8],  # another view of that storage: written as its own copy
        },
        src,
    )
    out = tmp_path / "tied.safetensors"
    report = safeload.to_safetensors(src, out)
    got = st.load_file(out)
    assert sorted(got) == ["embed.weight", "part", "whole"]
    assert torch.equal(got["embed.weight"], emb) and torch.equal(got["part"], whole[4:8])
    meta = _header(out)["__metadata__"]
    assert meta["lm_head.weight"] == "embed.weight"
    assert any("lm_head.weight -> embed.weight" in note for note in report.notes)
    assert any("copies" in note and "part" in note for note in report.notes)
    assert report.tensors == report.checked == 3


def test_non_contiguous_tensors_are_made_contiguous(tmp_path: Path) -> None:
    base = torch.randn(3, 5)
    src = tmp_path / "nc.pt"
    torch.save({"t": base.t(), "strided": torch.randn(8)[::2].clone()[::1]}, src)
    report = safeload.to_safetensors(src, tmp_path / "nc.safetensors")
    got = st.load_file(tmp_path / "nc.safetensors")
    assert _bytes(got["t"]) == _bytes(base.t()) and got["t"].shape == (5, 3)
    assert any("non-contiguous" in note and "t" in note for note in report.notes)


def test_checkpoint_takes_the_nested_state_dict(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, no_torch_load: None
) -> None:
    sd = _state_dict()
    src = tmp_path / "ckpt.pt"
    torch.save(
        {
            "epoch": 3,
            "arch": "resnet18",
            "lr": 0.1,
            "amp": True,
            "best": None,
            "state_dict": sd,
            "optimizer": {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1}]},
        },
        src,
    )
    out = tmp_path / "ckpt.safetensors"
    with caplog.at_level(logging.INFO, logger="safeload.audit"):
        report = safeload.to_safetensors(src, out)
    _assert_same(st.load_file(out), sd)
    meta = _header(out)["__metadata__"]
    assert {k: json.loads(v) for k, v in meta.items() if k.startswith("safeload.")} == {
        "safeload.epoch": 3,
        "safeload.arch": "resnet18",
        "safeload.lr": 0.1,
        "safeload.amp": True,
        "safeload.best": None,
    }
    assert "took the state dict under 'state_dict'" in report.notes
    assert any("'optimizer' (1 tensor)" in note for note in report.notes)
    events = [json.loads(r.getMessage()) for r in caplog.records if r.name == "safeload.audit"]
    converts = [e for e in events if e["event"] == "convert"]
    assert len(converts) == 1 and converts[0]["sha256"] == report.sha256


@pytest.mark.parametrize("key", ["model", "module"])
def test_other_checkpoint_keys(tmp_path: Path, key: str) -> None:
    src = tmp_path / "ckpt.pt"
    torch.save({key: {"w": torch.ones(2)}, "step": 10}, src)
    report = safeload.to_safetensors(src, tmp_path / "out.safetensors")
    assert sorted(st.load_file(tmp_path / "out.safetensors")) == ["w"]
    assert f"took the state dict under {key!r}" in report.notes


def test_nested_dicts_and_lists_become_dotted_names(tmp_path: Path) -> None:
    a, b, c = torch.ones(1), torch.zeros(2), torch.full((3,), 7.0)
    src = tmp_path / "nested.pt"
    torch.save({"encoder": {"layer": {"w": a}}, "blocks": [b, {"bias": c}], "head": a + 1}, src)
    safeload.to_safetensors(src, tmp_path / "nested.safetensors")
    got = st.load_file(tmp_path / "nested.safetensors")
    assert sorted(got) == ["blocks.0", "blocks.1.bias", "encoder.layer.w", "head"]
    assert torch.equal(got["blocks.1.bias"], c)


@pytest.mark.parametrize(
    ("value", "rule"),
    [
        ({"w": torch.ones(2), "blob": b"\x00raw"}, "convert.unsupported_value"),
        ({"w": torch.ones(2), "ids": {1, 2}}, "convert.unsupported_value"),
        ({"w": torch.ones(2), "dtype": torch.float16}, "convert.unsupported_value"),
        (torch.ones(3), "convert.unsupported_value"),
        ({"step": 1, "name": "x"}, "convert.no_tensors"),
        ({"a.b": torch.ones(1), "a": {"b": torch.zeros(1)}}, "convert.duplicate_name"),
    ],
    ids=["bytes", "set", "dtype", "bare-tensor", "no-tensors", "name-collision"],
)
def test_values_safetensors_cannot_hold_are_refused(tmp_path: Path, value: Any, rule: str) -> None:
    src = tmp_path / "m.pt"
    torch.save(value, src)
    with pytest.raises(safeload.ConversionError) as info:
        safeload.to_safetensors(src, tmp_path / "m.safetensors")
    assert info.value.rule == rule and info.value.exit_code == 2
    assert _leftovers(tmp_path) == ["m.pt"]


def test_failure_after_the_temp_file_exists_leaves_nothing(tmp_path: Path) -> None:
    # A quantized tensor reads fine but has no safetensors dtype: refused after the output's
    # temporary name was reserved, which must go too.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = torch.quantize_per_tensor(torch.ones(3), 0.1, 0, torch.qint8)
    src = tmp_path / "q.pt"
    torch.save({"w": torch.ones(2), "q": q}, src)
    with pytest.raises(safeload.ConversionError, match="quantized"):
        safeload.to_safetensors(src, tmp_path / "q.safetensors")
    assert _leftovers(tmp_path) == ["q.pt"]


def test_existing_output_is_kept_unless_overwrite(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.arange(4.0)}, src)
    out = tmp_path / "m.safetensors"
    out.write_bytes(b"precious")
    with pytest.raises(safeload.ConversionError) as info:
        safeload.to_safetensors(src, out)
    assert info.value.rule == "convert.overwrite"
    assert out.read_bytes() == b"precious"
    report = safeload.to_safetensors(src, out, overwrite=True)
    assert torch.equal(st.load_file(out)["w"], torch.arange(4.0))
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert _leftovers(tmp_path) == ["m.pt", "m.safetensors"]


def test_output_problems_are_refused_before_reading(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(1)}, src)
    with pytest.raises(safeload.ConversionError, match="input file"):
        safeload.to_safetensors(src, src, overwrite=True)
    with pytest.raises(safeload.ConversionError, match="folder"):
        safeload.to_safetensors(src, tmp_path, overwrite=True)
    with pytest.raises(safeload.ConversionError, match="does not exist"):
        safeload.to_safetensors(src, tmp_path / "missing" / "m.safetensors")
    assert _leftovers(tmp_path) == ["m.pt"]


def test_output_mode_follows_the_umask(tmp_path: Path) -> None:
    import os

    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(1)}, src)
    old = os.umask(0o027)
    try:
        safeload.to_safetensors(src, tmp_path / "m.safetensors")
    finally:
        os.umask(old)
    assert (tmp_path / "m.safetensors").stat().st_mode & 0o777 == 0o640


def test_progress_reports_checked_bytes(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"a": torch.ones(256), "b": torch.ones(16, dtype=torch.float64)}, src)
    calls: list[tuple[int, int]] = []
    safeload.to_safetensors(
        src, tmp_path / "m.safetensors", progress=lambda d, t: calls.append((d, t))
    )
    assert calls[0] == (0, 1152) and calls[-1] == (1152, 1152)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)


def test_byte_compare_sees_nan_payloads_and_signed_zeros() -> None:
    nan = _nan_payload()
    assert _same(nan, nan.numpy().copy())
    assert not _same(nan, np.array([np.nan, -0.0], dtype=np.float32))  # another NaN payload
    assert not _same(nan, np.array([nan[0].item(), 0.0], dtype=np.float32))  # +0.0 vs -0.0
    assert not _same(torch.ones(2), np.ones(2, dtype=np.float16))
    assert not _same(torch.ones(2, 1), np.ones(2, dtype=np.float32))
    bf = torch.tensor([1.5, -2.0]).bfloat16()
    assert _same(bf, bf.view(torch.int16).numpy().view(ml_dtypes.bfloat16))


def test_verified_file_is_converted_from_its_hashed_bytes(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from test_signing_helpers import write_key

    from safeload.policy import KeySigner

    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "signed"
    root.mkdir()
    torch.save({"w": torch.arange(6.0).reshape(2, 3), "step": 3}, root / "model.pt")
    safeload.sign(root, method="key", private_key=priv)
    verified = safeload.verify(root, signers=[KeySigner(public_key=str(pub))])["model.pt"]
    out = tmp_path / "model.safetensors"
    report = safeload.to_safetensors(verified, out, sandbox=False)
    assert report.source_format == "torch_zip"
    assert torch.equal(st.load_file(out)["w"], torch.arange(6.0).reshape(2, 3))
    assert json.loads(_header(out)["__metadata__"]["safeload.step"]) == 3


def _malicious(corpus: Any) -> list[tuple[dict[str, Any], Path]]:
    return [(s, corpus.path(s)) for s in corpus.samples("malicious")]


def test_every_malicious_sample_is_refused_with_nothing_written(
    corpus: Any, tmp_path: Path, no_torch_load: None
) -> None:
    samples = _malicious(corpus)
    assert samples
    for sample, path in samples:
        out = tmp_path / (path.name + ".safetensors")
        with pytest.raises(safeload.RefusedError):
            safeload.to_safetensors(path, out, policy=ALLOW_PICKLE, sandbox=False)
        assert not Path(sample["marker"]).exists(), f"{sample['file']}: the payload ran"
    assert _leftovers(tmp_path) == []
    assert list(corpus.markers.iterdir()) == []


@linux_only
@pytest.mark.parametrize(
    "fname", ["tz_reduce_system.pt", "legacy_main_payload.pt", "np_object_array.npy"]
)
def test_malicious_samples_are_refused_in_the_sandbox(
    corpus: Any, tmp_path: Path, fname: str
) -> None:
    entry = next((s for s in corpus.manifest if s["file"] == fname), None)
    if entry is None:
        pytest.skip(f"{fname} was not built")
    with pytest.raises(safeload.RefusedError):
        safeload.to_safetensors(corpus.path(entry), tmp_path / "out.safetensors", sandbox=True)
    assert _leftovers(tmp_path) == []
    assert not Path(entry["marker"]).exists(), "the payload ran"


@pytest.mark.wheels
def test_facenet_real_checkpoints(
    facenet_wheel: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_torch_load: None
) -> None:
    files = sorted(facenet_wheel.rglob("*.pt"))
    assert files
    reports = {p: safeload.to_safetensors(p, tmp_path / (p.stem + ".safetensors")) for p in files}
    monkeypatch.undo()
    for p, report in reports.items():
        want = torch.load(p, weights_only=True)
        assert isinstance(want, dict)
        _assert_same(st.load_file(tmp_path / (p.stem + ".safetensors")), want)
        assert report.source_format == "torch_legacy" and report.checked == len(want)


def test_policy_audit_log_records_the_conversion(tmp_path: Path) -> None:
    src = tmp_path / "m.pt"
    torch.save({"w": torch.ones(2)}, src)
    log = tmp_path / "audit.jsonl"
    report = safeload.to_safetensors(
        src, tmp_path / "m.safetensors", policy=Policy(audit_log=str(log))
    )
    events = [json.loads(line) for line in log.read_text().splitlines()]
    converts = [e for e in events if e["event"] == "convert"]
    assert len(converts) == 1
    assert converts[0]["sha256"] == report.sha256 and converts[0]["path"] == str(src)
    assert converts[0]["output"] == str(tmp_path / "m.safetensors")


def test_numpy_arrays_convert_bit_exactly(tmp_path: Path, no_torch_load: None) -> None:
    import numpy as np

    arrays = {
        "a": np.arange(4, dtype=np.float32),
        "b": np.full((2, 2), -3, dtype=np.int8),
        "h": np.array([np.nan, -0.0, 1.5], dtype=np.float16),
    }
    np.savez(tmp_path / "arrays.npz", **arrays)
    torch.save({"np": np.arange(5, dtype=np.float64), "w": torch.ones(2)}, tmp_path / "mixed.pt")
    report = safeload.to_safetensors(tmp_path / "arrays.npz", tmp_path / "arrays.safetensors")
    assert report.source_format == "npz"
    _assert_same(
        st.load_file(tmp_path / "arrays.safetensors"),
        {k: torch.from_numpy(v) for k, v in arrays.items()},
    )
    safeload.to_safetensors(tmp_path / "mixed.pt", tmp_path / "mixed.safetensors")
    got = st.load_file(tmp_path / "mixed.safetensors")
    assert torch.equal(got["np"], torch.arange(5, dtype=torch.float64))


def test_works_without_torch(tmp_path: Path) -> None:
    import subprocess

    src = tmp_path / "m.pt"
    torch.save({"model": {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2).half()}}, src)
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # as if torch were not installed\n"
        "import safeload\n"
        f"r = safeload.to_safetensors({str(src)!r}, {str(tmp_path / 'np.safetensors')!r})\n"
        "print(r.tensors, r.checked, r.source_format)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["2", "2", "torch_zip"]
    _assert_same(
        st.load_file(tmp_path / "np.safetensors"),
        {"w": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2).half()},
    )


def test_every_benign_sample_converts_or_is_refused_cleanly(
    corpus: Any, tmp_path: Path, no_torch_load: None
) -> None:
    converted = 0
    for sample in corpus.samples("benign"):
        path = corpus.path(sample)
        out = tmp_path / (path.name + ".safetensors")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the quantized sample warns when it is built
                report = safeload.to_safetensors(path, out, policy=ALLOW_PICKLE)
        except (safeload.ConversionError, safeload.RefusedError):
            assert not out.exists(), sample["file"]
            continue
        converted += 1
        got = st.load_file(out)
        assert len(got) == report.tensors == report.checked, sample["file"]
        loaded = safeload.load(path, policy=ALLOW_PICKLE)
        plain = isinstance(loaded, dict) and all(
            isinstance(v, torch.Tensor) for v in loaded.values()
        )
        if plain and not report.notes:  # a flat state dict with nothing tied: the same tensors
            _assert_same(got, loaded)
    assert converted >= 20


def test_a_read_back_that_differs_deletes_the_output(tmp_path: Path) -> None:
    # The checker itself, on a real written file: tensors that differ from what was written
    # (one flipped sign bit, a NaN payload) must fail the check and leave no file behind.
    from safeload.convert._safetensors import _write_checked

    written = {"a": torch.tensor([1.0, 2.0]), "n": _nan_payload()}
    for key, other in (("a", torch.tensor([1.0, -2.0])), ("n", torch.tensor([np.nan, -0.0]))):
        originals = {**written, key: other}
        with pytest.raises(safeload.ConversionError) as info:
            _write_checked(
                written, {"format": "pt"}, originals, tmp_path / "x.safetensors",
                framework="torch", limits=safeload.Limits(), overwrite=False, progress=None,
                before_publish=lambda size, sha: None,
            )  # fmt: skip
        assert info.value.rule == "convert.check" and repr(key) in (info.value.detail or "")
        assert _leftovers(tmp_path) == []

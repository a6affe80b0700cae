"""ONNX export through the sandbox: real weights, real exports, real onnxruntime runs.

The factories live in ``tests/_onnx_models.py``; the worker imports them through ``preload``
(``tests`` is a namespace package on the editable install's path). Every export here runs the
whole path: the worker reads the weights with safeload's reader, builds and exports the model
under every layer; the parent checks the graph, runs it with onnxruntime and compares.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import safeload  # noqa: E402
from safeload.convert._onnx_export import export_onnx  # noqa: E402
from safeload.errors import (  # noqa: E402
    ConversionError,
    FormatError,
    LimitExceededError,
    PolicyViolation,
    RefusedError,
    SandboxError,
    UnsafeModelError,
    UsageError,
)
from safeload.integrations._onnx_check import check_onnx_graph  # noqa: E402
from safeload.policy import OnnxPolicy, Policy  # noqa: E402
from tests import _onnx_models  # noqa: E402

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox worker needs Linux")

ALL_LAYERS = ("rlimits", "no_new_privs", "namespaces", "landlock", "seccomp")
CNN = "tests._onnx_models:small_cnn"
MLP = "tests._onnx_models:mlp"


def _trained(factory: Any) -> Any:
    """The factory's model with non-trivial weights and batch-norm statistics."""
    torch.manual_seed(1)
    model = factory()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("weights")
    cnn, mlp = _trained(_onnx_models.small_cnn), _trained(_onnx_models.mlp)
    torch.save(cnn.state_dict(), root / "cnn.pt")
    torch.save(mlp.state_dict(), root / "mlp.pt")
    from safetensors.torch import save_file

    save_file(mlp.state_dict(), str(root / "mlp.safetensors"))
    extra = dict(mlp.state_dict(), **{"head.weight": torch.zeros(2)})
    torch.save(extra, root / "extra.pt")
    missing = dict(mlp.state_dict())
    del missing["4.bias"]
    torch.save(missing, root / "missing.pt")
    torch.save(_onnx_models.drifting().state_dict(), root / "drift.pt")
    return {p.name.removesuffix(".pt"): p for p in root.iterdir()}


def _policy(**sandbox: Any) -> Policy:
    return Policy.model_validate({"sandbox": {"required_layers": list(ALL_LAYERS), **sandbox}})


def _ort_run(path: Path, *inputs: np.ndarray[Any, Any]) -> list[Any]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return list(session.run(None, dict(zip(names, inputs, strict=True))))


def _nothing_left(folder: Path, *keep: str) -> None:
    left = sorted(p.name for p in folder.iterdir() if p.name not in keep)
    assert left == [], f"left behind: {left}"


# -- exports that work ------------------------------------------------------------------------
def test_small_cnn_export_matches_torch(weights: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "cnn.onnx"
    report = export_onnx(
        weights["cnn"], out, model=CNN, input_shapes=[(1, 3, 8, 8)], policy=_policy()
    )
    assert report.target == "onnx" and report.sandboxed and report.source_format == "torch_zip"
    assert set(report.layers) == set(ALL_LAYERS)
    assert report.sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert report.bytes_written == out.stat().st_size
    assert report.checked >= 3  # conv 2 and the head keep their names; batch norm is folded
    assert any("folded" in n for n in report.notes)
    # Independently of the report: the file is a checked graph and computes what torch does.
    check_onnx_graph(out, policy=OnnxPolicy(), name="cnn.onnx")
    model = _trained(_onnx_models.small_cnn).eval()
    x = np.random.default_rng(7).standard_normal((1, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(_ort_run(out, x)[0], want, rtol=1e-4, atol=1e-5)
    _nothing_left(tmp_path, "cnn.onnx")


def test_mlp_from_safetensors_keeps_every_weight(weights: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mlp.onnx"
    report = export_onnx(
        weights["mlp.safetensors"], out, model=MLP, input_shapes=[[2, 16]], opset=17
    )
    assert report.source_format == "safetensors"
    assert report.checked == report.tensors == 6  # every Linear weight and bias, bit for bit
    graph = onnx.load(str(out))
    assert {o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")} == {17}
    state = _trained(_onnx_models.mlp).state_dict()
    for init in graph.graph.initializer:
        assert onnx.numpy_helper.to_array(init).tobytes() == state[init.name].numpy().tobytes()


def test_verified_file_exports_its_verified_bytes(weights: dict[str, Path], tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec
    from test_signing_helpers import write_key

    from safeload.policy import KeySigner

    priv, pub = write_key(tmp_path / "k.pem", ec.generate_private_key(ec.SECP256R1()))
    root = tmp_path / "signed"
    root.mkdir()
    (root / "model.pt").write_bytes(weights["mlp"].read_bytes())
    safeload.sign(root, method="key", private_key=priv)
    verified = safeload.verify(root, signers=[KeySigner(public_key=str(pub))])["model.pt"]
    out = tmp_path / "mlp.onnx"
    report = export_onnx(verified, out, model=MLP, input_shapes=[(2, 16)])
    assert report.checked == 6 and out.exists()
    _nothing_left(tmp_path, "mlp.onnx", "signed", Path(priv).name, Path(pub).name)


def test_overwrite_replaces_only_when_asked(weights: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "mlp.onnx"
    out.write_bytes(b"keep me")
    with pytest.raises(ConversionError) as info:
        export_onnx(weights["mlp"], out, model=MLP, input_shapes=[(2, 16)])
    assert info.value.rule == "convert.overwrite" and out.read_bytes() == b"keep me"
    export_onnx(weights["mlp"], out, model=MLP, input_shapes=[(2, 16)], overwrite=True)
    assert out.read_bytes() != b"keep me"
    _nothing_left(tmp_path, "mlp.onnx")


def test_output_over_the_weights_is_refused(weights: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "w.pt"
    target.write_bytes(weights["mlp"].read_bytes())
    with pytest.raises(ConversionError) as info:
        export_onnx(target, target, model=MLP, input_shapes=[(2, 16)], overwrite=True)
    assert info.value.rule == "convert.output"
    assert target.read_bytes() == weights["mlp"].read_bytes()


# -- what is refused ----------------------------------------------------------------------------
def test_malicious_corpus_pickle_is_refused_before_any_export(corpus: Any, tmp_path: Path) -> None:
    """The factory here would fail loudly if it ran (it spawns a process): it never runs."""
    bad = corpus.samples("malicious")
    samples = [s for s in bad if str(s.get("format", "")).startswith("torch")][:4]
    samples += [s for s in bad if str(s.get("format", "")).startswith("raw_pickle")][:1]
    if not samples:
        pytest.skip("the corpus has no malicious torch or pickle sample")
    for sample in samples:
        out = tmp_path / "evil.onnx"
        with pytest.raises(RefusedError) as info:
            export_onnx(
                corpus.path(sample),
                out,
                model="tests._onnx_models:spawns_process",
                input_shapes=[(2, 16)],
                policy=_policy(),
            )
        assert isinstance(info.value, UnsafeModelError | FormatError | PolicyViolation)
        assert not out.exists()
        if sample.get("marker"):
            assert not Path(sample["marker"]).exists(), "the payload ran"
    _nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("factory", "rule", "word"),
    [
        ("spawns_process", "sandbox.seccomp", "seccomp"),
        ("opens_socket", "sandbox.seccomp", "seccomp"),
        ("writes_outside", "sandbox.landlock", "Landlock"),
    ],
)
def test_misbehaving_factory_is_stopped_by_the_sandbox(
    weights: dict[str, Path], tmp_path: Path, factory: str, rule: str, word: str
) -> None:
    with pytest.raises(SandboxError) as info:
        export_onnx(
            weights["mlp"],
            tmp_path / "m.onnx",
            model=f"tests._onnx_models:{factory}",
            input_shapes=[(2, 16)],
            policy=_policy(),
        )
    assert info.value.rule == rule
    assert "stopped by the sandbox" in info.value.message and word in (info.value.detail or "")
    assert not Path("/tmp/safeload-onnx-export-escape").exists()
    _nothing_left(tmp_path)


def test_memory_hog_is_stopped_by_the_address_space_limit(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(LimitExceededError) as info:
        export_onnx(
            weights["mlp"],
            tmp_path / "m.onnx",
            model="tests._onnx_models:hogs_memory",
            input_shapes=[(2, 16)],
        )
    assert info.value.rule == "sandbox.memory_bytes"
    _nothing_left(tmp_path)


@pytest.mark.parametrize("stem", ["missing", "extra"])
def test_weights_must_match_the_model_exactly(
    weights: dict[str, Path], tmp_path: Path, stem: str
) -> None:
    with pytest.raises(FormatError) as info:
        export_onnx(weights[stem], tmp_path / "m.onnx", model=MLP, input_shapes=[(2, 16)])
    assert info.value.rule == "onnx_export.state_dict"
    assert ("4.bias" if stem == "missing" else "head.weight") in (info.value.detail or "")
    _nothing_left(tmp_path)


def test_an_export_that_differs_from_torch_is_refused(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    """The drifting model adds its call count: what was exported is not what ran."""
    with pytest.raises(ConversionError) as info:
        export_onnx(
            weights["drift"],
            tmp_path / "d.onnx",
            model="tests._onnx_models:drifting",
            input_shapes=[(2, 16)],
        )
    assert info.value.rule == "convert.onnx_outputs"
    _nothing_left(tmp_path)


def test_format_outside_the_policy_is_refused_before_the_worker(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    policy = Policy.model_validate({"formats": {"allowed": ["safetensors"]}})
    with pytest.raises(PolicyViolation) as info:
        export_onnx(
            weights["mlp"],
            tmp_path / "m.onnx",
            model="tests._onnx_models:spawns_process",
            input_shapes=[(2, 16)],
            policy=policy,
        )
    assert info.value.rule == "formats.allowed"


def test_policy_denied_op_refuses_the_exported_graph(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    policy = Policy.model_validate({"onnx": {"denied_ops": ["Gemm"]}})
    with pytest.raises(PolicyViolation) as info:
        export_onnx(
            weights["mlp"], tmp_path / "m.onnx", model=MLP, input_shapes=[(2, 16)], policy=policy
        )
    assert info.value.rule == "onnx.denied_ops"
    _nothing_left(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "rule"),
    [
        ({"model": "not a ref"}, "convert.model"),
        ({"model": "os:system; rm"}, "convert.model"),
        ({"input_shapes": []}, "convert.input_shapes"),
        ({"input_shapes": [(2, -1)]}, "convert.input_shapes"),
        ({"input_shapes": [(1 << 14, 1 << 14)]}, "convert.input_shapes"),
        ({"input_dtype": "object"}, "convert.input_dtype"),
        ({"opset": 99}, "onnx.opset"),
    ],
)
def test_bad_arguments_are_usage_errors(
    weights: dict[str, Path], tmp_path: Path, kwargs: dict[str, Any], rule: str
) -> None:
    args: dict[str, Any] = {"model": MLP, "input_shapes": [(2, 16)]} | kwargs
    with pytest.raises(UsageError) as info:
        export_onnx(weights["mlp"], tmp_path / "m.onnx", **args)
    assert info.value.rule == rule


def test_a_missing_required_layer_stops_the_export(
    weights: dict[str, Path], tmp_path: Path
) -> None:
    from safeload.sandbox._layers import detect_all

    missing = [r.name for r in detect_all() if not r.available]
    if not missing:
        pytest.skip("every layer is available here; nothing to require that is missing")
    policy = Policy.model_validate({"sandbox": {"required_layers": missing}})
    with pytest.raises(SandboxError) as info:
        export_onnx(
            weights["mlp"], tmp_path / "m.onnx", model=MLP, input_shapes=[(2, 16)], policy=policy
        )
    assert info.value.rule == "sandbox.required_layers"


# -- the CLI ------------------------------------------------------------------------------------
def test_cli_convert_to_onnx(weights: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from safeload._cli import cli

    out = tmp_path / "cnn.onnx"
    result = CliRunner().invoke(
        cli,
        [
            "convert",
            str(weights["cnn"]),
            "--to",
            "onnx",
            "--model",
            CNN,
            "--input-shape",
            "1,3,8,8",
            "-o",
            str(out),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["target"] == "onnx" and report["sandboxed"] is True
    assert report["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()


def test_cli_convert_to_onnx_refusal_exits_1(weights: dict[str, Path], tmp_path: Path) -> None:
    from click.testing import CliRunner

    from safeload._cli import cli

    result = CliRunner().invoke(
        cli,
        [
            "convert",
            str(weights["missing"]),
            "--to",
            "onnx",
            "--model",
            MLP,
            "--input-shape",
            "2,16",
            "-o",
            str(tmp_path / "m.onnx"),
            "--format",
            "json",
        ],
    )
    assert result.exit_code == 1, result.output
    assert json.loads(result.stdout)["error"]["rule"] == "onnx_export.state_dict"
    _nothing_left(tmp_path)


def test_a_factory_module_that_is_not_installed_is_found_on_the_callers_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker runs ``python -I``; the caller's ``sys.path`` is sent so its own module (here
    a file in a project folder, not installed) is imported there before lockdown."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "my_arch_0b1f.py").write_text(
        "import torch\n\n\ndef build():\n"
        "    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(project))
    torch.manual_seed(0)
    weights = tmp_path / "w.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).state_dict(), weights)
    report = export_onnx(weights, tmp_path / "out.onnx", model="my_arch_0b1f:build",
                         input_shapes=[[2, 4]])  # fmt: skip
    assert report.checked == 2 and report.sandboxed

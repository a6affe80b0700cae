"""The guarded onnxruntime session: real models run as plain onnxruntime runs them; hostile
graphs, unverified side files, bad inputs and unasked-for providers are refused with rules.

Real models are those onnx's wheel ships (``onnx/backend/test/data/light``); hostile and slow
graphs are built here with ``onnx.helper``, so each test shows its payload.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402
from test_signing_helpers import write_key  # noqa: E402

import safeload  # noqa: E402
from safeload.errors import (  # noqa: E402
    FormatError,
    LimitExceededError,
    PolicyViolation,
    RefusedError,
    UsageError,
)
from safeload.integrations._onnx_session import (  # noqa: E402
    GuardedSession,
    hardened_session_options,
    onnx_session,
)
from safeload.policy import AUDIT_LOGGER_NAME, KeySigner, OnnxPolicy, Policy  # noqa: E402

LIGHT = sorted((Path(onnx.__file__).parent / "backend" / "test" / "data" / "light").glob("*.onnx"))
CPU = ["CPUExecutionProvider"]


# -- models built here -----------------------------------------------------------------------
def _add_model(weights: np.ndarray[Any, Any], *, location: str | None = None) -> Any:
    """y = x + W over a [2, 3] float input; W inline, or external at ``location``."""
    w = numpy_helper.from_array(weights, "W")
    if location is not None:
        w.ClearField("raw_data")
        w.data_location = TensorProto.EXTERNAL
        for key, value in (
            ("location", location),
            ("offset", "0"),
            ("length", str(weights.nbytes)),
        ):
            entry = w.external_data.add()
            entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [w],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _external_folder(folder: Path, weights: np.ndarray[Any, Any], location: str = "w.bin") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    (folder / location).write_bytes(weights.tobytes())
    path = folder / "model.onnx"
    path.write_bytes(_add_model(weights, location=location).SerializeToString())
    return path


def _slow_model(n: int = 128) -> Any:
    """A Loop of 10**12 MatMul+Tanh steps on an [n, n] state: runs until something stops it."""
    body = helper.make_graph(
        [helper.make_node("MatMul", ["s_in", "s_in"], ["mm"]),
         helper.make_node("Tanh", ["mm"], ["s_out"]),
         helper.make_node("Identity", ["cond_in"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_in", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("s_out", TensorProto.FLOAT, [n, n])],
    )  # fmt: skip
    graph = helper.make_graph(
        [helper.make_node("Loop", ["trips", "cond", "x"], ["y"], body=body)], "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
        [numpy_helper.from_array(np.array(10**12, np.int64), "trips"),
         numpy_helper.from_array(np.array(True), "cond")],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


W = np.arange(6, dtype=np.float32).reshape(2, 3)
X = np.ones((2, 3), np.float32)


@pytest.fixture
def no_session(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Record any attempt to build an onnxruntime session (a refusal must come first)."""
    calls: list[object] = []

    def forbidden(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise AssertionError("an onnxruntime session was created for a refused model")

    from onnxruntime.capi import onnxruntime_inference_collection as collection

    monkeypatch.setattr(collection, "InferenceSession", forbidden)
    monkeypatch.setattr(ort, "InferenceSession", forbidden)
    return calls


def _input_of(session: GuardedSession, seed: int = 0) -> dict[str, np.ndarray[Any, Any]]:
    rng = np.random.default_rng(seed)
    feed = {}
    for arg in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in arg.shape]
        feed[arg.name] = rng.random(shape, dtype=np.float32)
    return feed


# -- real models -----------------------------------------------------------------------------
@pytest.mark.parametrize("path", LIGHT[:4], ids=lambda p: p.stem)
def test_real_model_gives_plain_onnxruntime_outputs(path: Path) -> None:
    guarded = onnx_session(path)
    assert guarded.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert guarded.info.nodes > 0 and guarded.info.external_data == ()
    assert guarded.get_providers() == CPU
    feed = _input_of(guarded)
    plain = ort.InferenceSession(str(path), providers=CPU)
    want = plain.run(None, feed)
    got = guarded.run(None, feed)
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)
    names = [o.name for o in guarded.get_outputs()]
    np.testing.assert_array_equal(guarded.run(names[:1], feed)[0], want[0])


def test_bytes_model_runs() -> None:
    guarded = onnx_session(_add_model(W).SerializeToString())
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W)
    assert "GuardedSession" in repr(guarded)


# -- hostile graphs: refused before any session exists ---------------------------------------
def test_custom_domain_refused_before_a_session(tmp_path: Path, no_session: list[object]) -> None:
    node = helper.make_node("Evil", ["x"], ["y"], domain="com.attacker")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )  # fmt: skip
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.attacker", 1)]
    )
    path = tmp_path / "custom.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path)
    assert info.value.rule == "onnx.allowed_domains"
    assert no_session == []


def test_external_data_escaping_the_folder_refused(tmp_path: Path, no_session: list[object]
                                                   ) -> None:  # fmt: skip
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    path.write_bytes(_add_model(W, location="../../etc/passwd").SerializeToString())
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path)
    assert info.value.rule == "onnx.external_data"
    assert no_session == []


def test_external_data_symlink_escape_refused(tmp_path: Path, no_session: list[object]) -> None:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(W.tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").symlink_to(outside)
    path = folder / "model.onnx"
    path.write_bytes(_add_model(W, location="w.bin").SerializeToString())
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path)
    assert info.value.rule == "onnx.external_data"
    assert no_session == []


def test_external_data_in_bytes_without_a_folder_refused(no_session: list[object]) -> None:
    with pytest.raises(PolicyViolation) as info:
        onnx_session(_add_model(W, location="w.bin").SerializeToString())
    assert info.value.rule == "onnx.external_data"


def test_format_not_allowed_refused(tmp_path: Path, no_session: list[object]) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_add_model(W).SerializeToString())
    policy = Policy(formats={"allowed": ("safetensors",)})  # type: ignore[arg-type]
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path, policy=policy)
    assert info.value.rule == "formats.allowed"


def test_garbage_is_a_format_error(tmp_path: Path, no_session: list[object]) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07\xff\xff garbage")
    with pytest.raises(FormatError):
        onnx_session(path)


def test_file_size_limit(tmp_path: Path, no_session: list[object]) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_add_model(W).SerializeToString())
    policy = Policy(limits={"max_file_bytes": 10})  # type: ignore[arg-type]
    with pytest.raises(LimitExceededError) as info:
        onnx_session(path, policy=policy)
    assert info.value.rule == "limits.max_file_bytes"


def test_fifo_refused_not_hung(tmp_path: Path, no_session: list[object]) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(safeload.SourceError):
        onnx_session(fifo)


def test_sandbox_policy_refuses_in_process_runtime(tmp_path: Path, no_session: list[object]
                                                    ) -> None:  # fmt: skip
    path = tmp_path / "model.onnx"
    path.write_bytes(_add_model(W).SerializeToString())
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path, policy=Policy(sandbox={"mode": "untrusted"}))  # type: ignore[arg-type]
    assert info.value.rule == "sandbox.mode"


def test_sandbox_policy_in_audit_mode_warns_and_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_add_model(W).SerializeToString())
    policy = Policy(mode="audit", sandbox={"mode": "always"})  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        guarded = onnx_session(path, policy=policy)
    events = [json.loads(r.getMessage())["event"] for r in caplog.records
              if r.name == AUDIT_LOGGER_NAME]  # fmt: skip
    assert "onnx_session.sandbox_mode" in events
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W)
    assert guarded.get_modelmeta() is not None


# -- external data ---------------------------------------------------------------------------
@pytest.mark.parametrize("location", ["w.bin", "sub/weights.data"])
def test_external_data_inside_the_folder_works(tmp_path: Path, location: str) -> None:
    path = _external_folder(tmp_path / "m", W, location)
    guarded = onnx_session(path)
    assert guarded.info.external_data == (location,)
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W)


def _external_tensor(name: str, weights: np.ndarray[Any, Any], location: str) -> Any:
    tensor = numpy_helper.from_array(weights, name)
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("length", str(weights.nbytes))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def test_one_side_file_named_two_ways_is_read_and_counted_once(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "w.bin").write_bytes(W.tobytes())
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["t"]), helper.make_node("Add", ["t", "V"], ["y"])],
        "twice",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [_external_tensor("W", W, "w.bin"), _external_tensor("V", W, "./w.bin")],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    path = folder / "model.onnx"
    path.write_bytes(data)
    room = len(data) + W.nbytes  # the model and one copy of the side file
    guarded = onnx_session(path, policy=Policy(limits={"max_total_bytes": room}))  # type: ignore[arg-type]
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + 2 * W)
    with pytest.raises(LimitExceededError) as info:
        onnx_session(path, policy=Policy(limits={"max_total_bytes": room - 1}))  # type: ignore[arg-type]
    assert info.value.rule == "limits.max_total_bytes"


def test_external_data_forbidden_by_policy(tmp_path: Path, no_session: list[object]) -> None:
    path = _external_folder(tmp_path / "m", W)
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path, policy=Policy(onnx=OnnxPolicy(external_data="forbid")))
    assert info.value.rule == "onnx.external_data"


def test_external_data_read_into_memory_once(tmp_path: Path) -> None:
    """The side file is read once, with the model: deleting it later changes nothing."""
    path = _external_folder(tmp_path / "m", W)
    guarded = onnx_session(path)
    (tmp_path / "m" / "w.bin").unlink()
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W)


# -- verified models -------------------------------------------------------------------------
def _signed(folder: Path, tmp_path: Path, **sign_kwargs: Any) -> tuple[KeySigner, Path]:
    priv, pub = write_key(tmp_path / "key.pem", ec.generate_private_key(ec.SECP256R1()))
    safeload.sign(folder, method="key", private_key=priv, **sign_kwargs)
    return KeySigner(public_key=str(pub)), pub


def test_verified_model_runs_its_verified_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    _external_folder(folder, W)
    signer, _ = _signed(folder, tmp_path)
    verified = safeload.verify(folder, signers=[signer])
    original = (folder / "model.onnx").read_bytes()
    # After verification, both files on disk are swapped for another model.
    other = np.full((2, 3), 100, np.float32)
    (folder / "w.bin").write_bytes(other.tobytes())
    (folder / "model.onnx").write_bytes(_add_model(other * 2).SerializeToString())
    policy = Policy(trust={"require_signature": True, "signers": [signer]})  # type: ignore[arg-type]
    guarded = onnx_session(verified, policy=policy)
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W)
    assert guarded.sha256 == hashlib.sha256(original).hexdigest()
    plain = onnx_session(folder / "model.onnx")  # what is on disk now is something else
    np.testing.assert_array_equal(plain.run(None, {"x": X})[0], X + other * 2)


def test_verified_file_alone_with_external_data_refused(
    tmp_path: Path, no_session: list[object]
) -> None:
    folder = tmp_path / "m"
    _external_folder(folder, W)
    signer, _ = _signed(folder, tmp_path)
    verified = safeload.verify(folder, signers=[signer])
    with pytest.raises(PolicyViolation) as info:
        onnx_session(verified["model.onnx"])
    assert info.value.rule == "onnx.external_data"
    assert "not covered by the verification" in info.value.message


def test_external_data_the_signer_left_out_refused(tmp_path: Path,
                                                   no_session: list[object]) -> None:  # fmt: skip
    folder = tmp_path / "m"
    _external_folder(folder, W)
    signer, _ = _signed(folder, tmp_path, ignore_paths=["w.bin"])
    verified = safeload.verify(folder, signers=[signer])
    assert "w.bin" not in verified.files
    with pytest.raises(PolicyViolation) as info:
        onnx_session(verified)
    assert info.value.rule == "onnx.external_data"


def test_verified_model_with_two_onnx_files_needs_a_name(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "a.onnx").write_bytes(_add_model(W).SerializeToString())
    (folder / "b.onnx").write_bytes(_add_model(W * 3).SerializeToString())
    signer, _ = _signed(folder, tmp_path)
    verified = safeload.verify(folder, signers=[signer])
    with pytest.raises(UsageError) as info:
        onnx_session(verified)
    assert info.value.rule == "onnx.name"
    guarded = onnx_session(verified, name="b.onnx")
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W * 3)


def test_require_signature_refuses_a_plain_path(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_add_model(W).SerializeToString())
    _, pub = write_key(tmp_path / "key.pem", ec.generate_private_key(ec.SECP256R1()))
    policy = Policy(
        trust={
            "require_signature": True,  # type: ignore[arg-type]
            "signers": [{"method": "key", "public_key": str(pub)}],
        }
    )
    with pytest.raises(RefusedError):
        onnx_session(path, policy=policy)


# -- inputs ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def add_session() -> GuardedSession:
    return onnx_session(_add_model(W).SerializeToString())


@pytest.mark.parametrize(
    ("feed", "rule"),
    [
        ({"X": X}, "onnx.input_name"),
        ({"x": X, "extra": X}, "onnx.input_name"),
        ({}, "onnx.input_name"),
        ({"x": X.astype(np.float64)}, "onnx.input_dtype"),
        ({"x": X.astype(">f4")}, "onnx.input_dtype"),
        ({"x": X.tolist()}, "onnx.input_type"),
        ({"x": np.ones((2, 4), np.float32)}, "onnx.input_shape"),
        ({"x": np.ones((3,), np.float32)}, "onnx.input_shape"),
        ({"x": np.ones((1, 2, 3), np.float32)}, "onnx.input_shape"),
    ],
)
def test_bad_inputs_refused_with_rules(add_session: GuardedSession, feed: dict[str, Any],
                                       rule: str) -> None:  # fmt: skip
    with pytest.raises(UsageError) as info:
        add_session.run(None, feed)
    assert info.value.rule == rule


def test_symbolic_dims_take_any_size(add_session: GuardedSession) -> None:
    x = np.ones((1, 3), np.float32)  # "batch" is symbolic; W broadcasts over it
    assert add_session.run(None, {"x": x})[0].shape == (2, 3)


def test_unknown_output_name_refused(add_session: GuardedSession) -> None:
    with pytest.raises(UsageError) as info:
        add_session.run(["nope"], {"x": X})
    assert info.value.rule == "onnx.output_name"


def test_input_size_limits() -> None:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])], "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"])],
    )  # fmt: skip
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    x = np.ones(100, np.float32)
    policy = Policy(limits={"max_tensor_elements": 99})  # type: ignore[arg-type]
    with pytest.raises(LimitExceededError) as info:
        onnx_session(data, policy=policy).run(None, {"x": x})
    assert info.value.rule == "limits.max_tensor_elements"
    policy = Policy(limits={"max_total_bytes": 399})  # type: ignore[arg-type]
    guarded = onnx_session(data, policy=policy)
    with pytest.raises(LimitExceededError) as info:
        guarded.run(None, {"x": x})
    assert info.value.rule == "limits.max_total_bytes"
    np.testing.assert_array_equal(guarded.run(None, {"x": x[:99]})[0], x[:99])


# -- timeout ---------------------------------------------------------------------------------
def test_timeout_stops_a_slow_graph() -> None:
    policy = Policy(onnx=OnnxPolicy(run_timeout_seconds=0.3))
    guarded = onnx_session(_slow_model().SerializeToString(), policy=policy)
    with pytest.raises(LimitExceededError) as info:
        guarded.run(None, {"x": np.zeros((128, 128), np.float32)})
    assert info.value.rule == "onnx.run_timeout_seconds"
    # The session still serves the next call (a fresh RunOptions each time).
    with pytest.raises(LimitExceededError):
        guarded.run(None, {"x": np.zeros((128, 128), np.float32)})


def test_watchdog_keeps_only_calls_in_flight() -> None:
    from safeload.integrations import _onnx_session

    guarded = onnx_session(_add_model(W).SerializeToString())
    for _ in range(500):
        guarded.run(None, {"x": X})
    assert len(_onnx_session._WATCHDOG._heap) <= 130  # finished tickets are dropped


def test_timeout_in_a_forked_child() -> None:
    """The watchdog thread does not survive fork; the child gets a fresh one."""
    policy = Policy(onnx=OnnxPolicy(run_timeout_seconds=0.3))
    data = _slow_model().SerializeToString()
    slow = onnx_session(data, policy=policy, intra_op_num_threads=1)
    onnx_session(_add_model(W).SerializeToString()).run(None, {"x": X})  # watchdog is running
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit code
        code = 1
        try:
            slow.run(None, {"x": np.zeros((128, 128), np.float32)})
        except LimitExceededError:
            code = 0
        finally:
            os._exit(code)
    for _ in range(300):  # at most 30 s, then kill rather than hang the suite
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        raise AssertionError("the forked child's run was never stopped")
    assert os.waitstatus_to_exitcode(status) == 0


# -- providers and options -------------------------------------------------------------------
def test_unasked_provider_refused(no_session: list[object]) -> None:
    data = _add_model(W).SerializeToString()
    with pytest.raises(UsageError) as info:
        onnx_session(data, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    assert info.value.rule == "onnx.providers"
    with pytest.raises(UsageError) as info:
        onnx_session(data, providers=("NoSuchExecutionProvider",),
                     unsafe_allow_providers=("NoSuchExecutionProvider",))  # fmt: skip
    assert info.value.rule == "onnx.providers"
    with pytest.raises(UsageError):
        onnx_session(data, providers="CPUExecutionProvider")
    with pytest.raises(UsageError):
        onnx_session(data, providers=())


def test_allowed_unsafe_provider_is_audited(caplog: pytest.LogCaptureFixture) -> None:
    extra = next((p for p in ort.get_available_providers() if p != "CPUExecutionProvider"), None)
    if extra is None:
        pytest.skip("this onnxruntime has only the CPU provider")
    data = _add_model(W).SerializeToString()
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        guarded = onnx_session(data, providers=(extra, "CPUExecutionProvider"),
                               unsafe_allow_providers=(extra,))  # fmt: skip
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    unsafe = [line for line in lines if line["event"] == "unsafe_option"]
    assert [u["option"] for u in unsafe] == ["unsafe_allow_providers"]
    assert extra in unsafe[0]["detail"]
    decision = [line for line in lines if line["event"] == "decision"]
    assert decision[0]["unsafe_options"] == ["unsafe_allow_providers"]
    assert decision[0]["format"] == "onnx"
    np.testing.assert_array_equal(guarded.run(None, {"x": X})[0], X + W)


def test_clean_session_is_audited(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_add_model(W).SerializeToString())
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME):
        guarded = onnx_session(path)
    [line] = [json.loads(r.getMessage()) for r in caplog.records if r.name == AUDIT_LOGGER_NAME]
    assert line["event"] == "decision" and line["format"] == "onnx"
    assert line["digest"] == guarded.sha256 and line["unsafe_options"] == []


def test_hardened_options() -> None:
    options = hardened_session_options(intra_op_num_threads=2)
    assert options.enable_profiling is False
    assert options.optimized_model_filepath == ""
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.use_env_allocators") == "0"
    assert options.get_session_config_entry("session.load_model_format") == "ONNX"
    assert options.get_session_config_entry("session.allow_released_opsets_only") == "1"
    with pytest.raises(UsageError):
        hardened_session_options(intra_op_num_threads=-1)


def test_public_names() -> None:
    assert safeload.onnx_session is onnx_session
    assert safeload.GuardedSession is GuardedSession
    assert safeload.check_onnx_graph.__name__ == "check_onnx_graph"
    assert safeload.OnnxGraphInfo.__name__ == "OnnxGraphInfo"


# -- safeload.patch(): onnxruntime.InferenceSession goes through the guard --------------------
def test_patch_routes_inference_session_through_the_guard(tmp_path: Path) -> None:
    original = ort.InferenceSession
    good = tmp_path / "model.onnx"
    good.write_bytes(_add_model(W).SerializeToString())
    bad = _external_folder(tmp_path / "m", W)
    bad.write_bytes(_add_model(W, location="../../etc/passwd").SerializeToString())
    with safeload.patched():
        assert ort.InferenceSession is not original
        session = ort.InferenceSession(str(good))  # unchanged application code
        assert isinstance(session, GuardedSession)
        np.testing.assert_array_equal(session.run(None, {"x": X})[0], X + W)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(good, options, providers=["CPUExecutionProvider"])
        assert session.get_providers() == CPU
        with pytest.raises(PolicyViolation) as info:
            ort.InferenceSession(str(bad))
        assert info.value.rule == "onnx.external_data"
        with pytest.raises(UsageError) as usage:
            ort.InferenceSession(str(good), providers=["CUDAExecutionProvider"])
        assert usage.value.rule == "onnx.providers"
        with pytest.raises(UsageError) as usage:
            ort.InferenceSession(str(good), provider_options=[{"x": "1"}])
        assert usage.value.rule == "patch.onnxruntime"
    assert ort.InferenceSession is original


def test_patch_is_audited_for_onnxruntime(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger=AUDIT_LOGGER_NAME), safeload.patched():
        pass
    targets = [
        json.loads(r.getMessage()).get("target")
        for r in caplog.records
        if r.name == AUDIT_LOGGER_NAME
    ]
    assert targets.count("onnxruntime.InferenceSession") == 2  # patched, then unpatched


# -- safeload inspect model.onnx: the graph check's view ---------------------------------------
def test_cli_inspect_prints_the_graph_check(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from safeload._cli import cli

    path = _external_folder(tmp_path / "m", W)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "format: onnx" in result.output and "external data: 'w.bin'" in result.output
    assert "operators: Add" in result.output
    result = CliRunner().invoke(cli, ["inspect", "--format", "json", str(path)])
    doc = json.loads(result.output)
    assert doc["format"] == "onnx" and doc["external_data"] == ["w.bin"] and doc["nodes"] == 1
    path.write_bytes(_add_model(W, location="../../etc/passwd").SerializeToString())
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 1
    assert "onnx.external_data" in result.output

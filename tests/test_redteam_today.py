"""Red-team findings on the code that landed on 2026-11-28: one test per attack, named after it.

Hostile code that must run *inside* a worker lives in ``tests/test_sandbox_tasks.py`` (loaded
through ``SAFELOAD_SANDBOX_TEST_TASKS``); everything here is real artefacts, no mocks.
"""

from __future__ import annotations

import errno
import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from safeload.policy import Limits
from safeload.sandbox import DoctorReport, SandboxInput, doctor, run_in_sandbox

TASKS_FILE = Path(__file__).with_name("test_sandbox_tasks.py")
LIMITS = Limits()


@pytest.fixture(autouse=True)
def _test_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFELOAD_SANDBOX_TEST_TASKS", str(TASKS_FILE))


@pytest.fixture(scope="module")
def machine() -> DoctorReport:
    return doctor()


def need(machine: DoctorReport, *layers: str) -> None:
    for name in layers:
        report = machine.layer(name)
        if not report.applied:
            pytest.skip(f"sandbox layer {name} not available here: {report.reason}")


def attempt(task: str, inputs: list[Path] | None = None, **params: Any) -> Any:
    result = run_in_sandbox(task, inputs or [], limits=LIMITS, params=params, timeout=60)
    assert all(r.applied for r in result.layers)
    return result.value


# --- a worker reaching other processes of the same user -------------------------------------


def test_prlimit_on_caller_and_fork_server_is_refused(machine: DoctorReport) -> None:
    """prlimit64 was allowed for any pid: a taken-over worker could set the caller's
    RLIMIT_AS or RLIMIT_CPU (same uid is all the kernel asks) and crash or kill it."""
    need(machine, "seccomp")
    value = attempt("attempt_prlimit_other", pid=os.getpid())
    assert value == {"caller": errno.EPERM, "server": errno.EPERM}


def test_prlimit_on_itself_still_works(machine: DoctorReport) -> None:
    need(machine, "seccomp")
    value = attempt("attempt_prlimit_self")
    assert value["blocked"] is False


def test_get_robust_list_of_caller_is_refused(machine: DoctorReport) -> None:
    """The robust-futex head is an address in the caller's libc: a layout leak if readable."""
    need(machine, "seccomp")
    value = attempt("attempt_robust_list_other", pid=os.getpid())
    assert value["blocked"] is True


def test_worker_holds_only_its_job_descriptors(tmp_path: Path) -> None:
    """A worker must hold fds 0-4, its inputs and its own /proc/self/status, nothing of the
    caller's (an inheritable descriptor included) nor of the fork server's."""
    model = tmp_path / "in.bin"
    model.write_bytes(b"x" * 10)
    leaked = os.open(model, os.O_RDONLY)
    os.set_inheritable(leaked, True)
    try:
        value = attempt("echo_open_fds", [model])
    finally:
        os.close(leaked)
    assert set(value) == {"0", "1", "2", "3", "4", "5", "6"}
    assert value["0"][0] == "sock"
    assert all(value[str(fd)][0] == "reg" for fd in range(1, 6))
    assert value["6"] == ["reg", os.stat("/proc/self/status").st_dev]  # its own status file


def test_landlock_grant_follows_the_descriptor_not_a_renamed_path(
    machine: DoctorReport, tmp_path: Path
) -> None:
    """The parent names an input's path for Landlock from a second resolution (``realpath``
    after ``open``); if the name is swapped in between (a symlink to a secret), the worker got
    read access to the secret. The grant must cover only the file behind the descriptor."""
    need(machine, "landlock")
    model = tmp_path / "model.bin"
    model.write_bytes(b"model")
    secret = tmp_path / "secret.txt"
    secret.write_text("secret")
    fd = os.open(model, os.O_RDONLY)
    try:
        # What a swap between open() and realpath() leaves: the fd on model, the path on secret.
        value = attempt("attempt_read_granted_path", [SandboxInput(fd, "model.bin", path=secret)])
    finally:
        os.close(fd)
    assert value["blocked"] is True
    assert value["errno"] == errno.EACCES


# --- ONNX external data ---------------------------------------------------------------------


def _onnx_add_model(location: str, nbytes: int) -> bytes:
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = helper.make_tensor("W", TensorProto.FLOAT, [2, 3], vals=[0.0] * 6)
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], [w],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def test_onnx_external_data_hard_link_to_a_file_outside_the_folder_is_refused(
    tmp_path: Path,
) -> None:
    """A hard link in the model folder (a tar extracted with Python's tarfile before 3.14 may
    make one to any file of the user's) passes every path check: the session must not read
    a side file that has other names, since one of them may be outside the folder."""
    pytest.importorskip("onnxruntime")
    import numpy as np

    from safeload.errors import PolicyViolation
    from safeload.integrations._onnx_session import onnx_session

    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(6, dtype=np.float32).tobytes())
    folder = tmp_path / "m"
    folder.mkdir()
    os.link(secret, folder / "w.bin")
    path = folder / "model.onnx"
    path.write_bytes(_onnx_add_model("w.bin", 24))
    with pytest.raises(PolicyViolation) as info:
        onnx_session(path)
    assert info.value.rule == "onnx.external_data"
    assert "hard link" in (info.value.detail or "")
    (folder / "w.bin").unlink()  # the same bytes under one name only: fine
    (folder / "w.bin").write_bytes(secret.read_bytes())
    x = np.ones((2, 3), dtype=np.float32)
    got = onnx_session(path).run(None, {"x": x})[0]
    np.testing.assert_array_equal(got, x + np.arange(6, dtype=np.float32).reshape(2, 3))


def _sparse_40gb() -> Any:
    """One stored float declaring a [100000, 100000] dense tensor (40 GB once densified)."""
    pytest.importorskip("onnx")
    import numpy as np
    from onnx import helper, numpy_helper

    values = numpy_helper.from_array(np.array([1.0], dtype=np.float32), "S")
    indices = numpy_helper.from_array(np.array([0], dtype=np.int64), "S_idx")
    return helper.make_sparse_tensor(values, indices, [100_000, 100_000])


def _identity_model(**extra: Any) -> Any:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"]), *extra.get("nodes", [])],
                              "g", [x], [y])  # fmt: skip
    graph.sparse_initializer.extend(extra.get("sparse", []))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_sparse_initializer_counts_at_its_dense_size() -> None:
    """onnxruntime densifies sparse initializers when it loads the graph; the check counted
    only the stored values, so 12 bytes in the file passed for a 40 GB allocation."""
    from safeload.errors import LimitExceededError
    from safeload.integrations._onnx_check import check_onnx_graph
    from safeload.policy import OnnxPolicy

    data = _identity_model(sparse=[_sparse_40gb()]).SerializeToString()
    with pytest.raises(LimitExceededError) as info:
        check_onnx_graph(data, policy=OnnxPolicy(), name="m.onnx")
    assert info.value.rule == "onnx.max_initializer_bytes"


def test_onnx_sparse_constant_attribute_counts_at_its_dense_size() -> None:
    from onnx import helper

    from safeload.errors import LimitExceededError
    from safeload.integrations._onnx_check import check_onnx_graph
    from safeload.policy import OnnxPolicy

    const = helper.make_node("Constant", [], ["c"], sparse_value=_sparse_40gb())
    data = _identity_model(nodes=[const]).SerializeToString()
    with pytest.raises(LimitExceededError) as info:
        check_onnx_graph(data, policy=OnnxPolicy(), name="m.onnx")
    assert info.value.rule == "onnx.max_initializer_bytes"


def _function_with_default(default: Any, body: list[Any], out_shape: list[int]) -> bytes:
    """A model calling local function F, whose default attribute value is ``default`` (IR 9:
    ``FunctionProto.attribute_proto``); the body refers to it with ``ref_attr_name``."""
    from onnx import TensorProto, helper

    f = helper.make_function("local", "F", ["a"], ["b"], body,
                             [helper.make_opsetid("", 17)])  # fmt: skip
    f.attribute_proto.append(default)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="local")], "g", [x], [y])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("local", 1)]
    model = helper.make_model(graph, opset_imports=opsets, functions=[f], ir_version=9)
    return bytes(model.SerializeToString())


def test_onnx_function_default_attribute_external_data_is_checked() -> None:
    """A function's default attribute values were never walked: an external-data tensor there
    (``../../etc/passwd``) passed the graph check; only onnxruntime's own path check stopped
    the read."""
    pytest.importorskip("onnx")
    from onnx import AttributeProto, TensorProto, helper

    from safeload.errors import PolicyViolation
    from safeload.integrations._onnx_check import check_onnx_graph
    from safeload.policy import OnnxPolicy

    t = TensorProto(name="T", data_type=TensorProto.UINT8, dims=[64])
    t.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "../../etc/passwd"), ("offset", "0"), ("length", "64")):
        entry = t.external_data.add()
        entry.key, entry.value = key, value
    const = helper.make_node("Constant", [], ["c"])
    const.attribute.append(AttributeProto(name="value", ref_attr_name="t",
                                          type=AttributeProto.TENSOR))  # fmt: skip
    body = [const, helper.make_node("Cast", ["c"], ["b"], to=TensorProto.FLOAT)]
    data = _function_with_default(helper.make_attribute("t", t), body, [64])
    policy = OnnxPolicy(allowed_domains=["", "local"])
    with pytest.raises(PolicyViolation) as info:
        check_onnx_graph(data, policy=policy, name="m.onnx")
    assert info.value.rule == "onnx.external_data"


def test_onnx_function_default_attribute_graph_is_checked() -> None:
    """A default graph attribute is a subgraph like any other: its operators are checked."""
    pytest.importorskip("onnx")
    from onnx import AttributeProto, TensorProto, helper

    from safeload.errors import PolicyViolation
    from safeload.integrations._onnx_check import check_onnx_graph
    from safeload.policy import OnnxPolicy

    out = helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])
    hidden = helper.make_graph([helper.make_node("Evil", ["a"], ["z"], domain="com.evil")],
                               "hidden", [], [out])  # fmt: skip
    true = helper.make_tensor("k", TensorProto.BOOL, [], [True])
    cond = helper.make_node("Constant", [], ["cond"], value=true)
    branch = helper.make_node("If", ["cond"], ["b"])
    for name in ("then_branch", "else_branch"):
        branch.attribute.append(AttributeProto(name=name, ref_attr_name="g",
                                               type=AttributeProto.GRAPH))  # fmt: skip
    data = _function_with_default(helper.make_attribute("g", hidden), [cond, branch], [4])
    policy = OnnxPolicy(allowed_domains=["", "local"])
    with pytest.raises(PolicyViolation) as info:
        check_onnx_graph(data, policy=policy, name="m.onnx")
    assert info.value.rule == "onnx.allowed_domains"


def test_onnx_session_finds_external_data_named_in_function_defaults() -> None:
    """The session's side-file walk must see the same places as the check."""
    pytest.importorskip("onnx")
    from onnx import AttributeProto, TensorProto, helper

    from safeload.integrations._onnx_session import _external_locations

    t = TensorProto(name="T", data_type=TensorProto.UINT8, dims=[4])
    t.data_location = TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "w.bin"
    const = helper.make_node("Constant", [], ["c"])
    const.attribute.append(AttributeProto(name="value", ref_attr_name="t",
                                          type=AttributeProto.TENSOR))  # fmt: skip
    body = [const, helper.make_node("Cast", ["c"], ["b"], to=TensorProto.FLOAT)]
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(_function_with_default(helper.make_attribute("t", t), body, [4]))
    assert _external_locations(model) == {"w.bin"}


# --- resources over many jobs ---------------------------------------------------------------


def test_300_sandboxed_loads_leak_no_descriptor_in_caller_or_fork_server(tmp_path: Path) -> None:
    """Every job passes five descriptors to the fork server and gets a pidfd back: none of
    them may stay open in the caller or in the server once the job is over."""
    torch = pytest.importorskip("torch")
    import safeload
    from safeload.sandbox import _runner

    model = tmp_path / "m.pt"
    torch.save({"w": torch.arange(10.0)}, model)
    safeload.load(model, sandbox=True)  # the fork server is up
    server = _runner._server
    assert server is not None

    def server_fds() -> int:
        """The server's count once it has reaped every worker (it holds a pidfd and a status
        socket per live child, released when it reaps it)."""
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        for _ in range(500):
            if not children.read_text().split():
                break
            time.sleep(0.01)
        return len(os.listdir(f"/proc/{server.pid}/fd"))

    mine = len(os.listdir("/proc/self/fd"))
    theirs = server_fds()
    for _ in range(300):
        safeload.load(model, sandbox=True)
    assert _runner._server is server  # the same server served every job
    assert len(os.listdir("/proc/self/fd")) == mine
    assert server_fds() == theirs


# --- the parent's zip CRC hints (parsed in the caller's process, before any worker) ----------

_PAD = 17 << 20  # above the size where the load reads on every core and folds zip CRCs


def _eocd(count: int, cd_size: int, cd_offset: int) -> bytes:
    return b"PK\x05\x06" + struct.pack("<4H2LH", 0, 0, count, count, cd_size, cd_offset, 0)


def _huge_eocd64_locator() -> bytes:
    """End records whose ZIP64 locator puts the ZIP64 record at offset 2**64 - 1."""
    return b"PK\x06\x07" + struct.pack("<LQL", 0, 2**64 - 1, 1) + _eocd(0, 0, 0)


def _huge_member_offset() -> bytes:
    """One stored member whose ZIP64 extra field gives a local header offset of 2**64 - 1."""
    extra = struct.pack("<2HQ", 1, 8, 2**64 - 1)
    name = b"a"
    central = b"PK\x01\x02" + struct.pack(
        "<6H3L5H2L", 20, 20, 0, 0, 0, 0, 0, 10, 10, len(name), len(extra), 0, 0, 0, 0, 0xFFFFFFFF
    ) + name + extra  # fmt: skip
    return central + _eocd(1, len(central), _PAD)


@pytest.mark.parametrize("tail", [_huge_eocd64_locator(), _huge_member_offset()],
                         ids=["eocd64_offset", "member_offset"])  # fmt: skip
@pytest.mark.parametrize("sandbox", [False, True])
def test_zip_offsets_past_2_63_are_a_refusal_not_an_overflow_error(
    tmp_path: Path, tail: bytes, sandbox: bool
) -> None:
    """The parent reads a big file's central directory for CRC hints; an offset past 2**63
    made ``os.pread`` raise a bare OverflowError out of ``safeload.load``."""
    import safeload
    from safeload.errors import SafeloadError

    path = tmp_path / "m.pt"
    path.write_bytes(b"\0" * _PAD + tail)
    with pytest.raises(SafeloadError):
        safeload.load(path, sandbox=sandbox)


# --- a worker that lies about being done ----------------------------------------------------


def test_worker_saying_done_before_its_reply_is_refused_and_killed() -> None:
    from safeload.errors import SandboxError
    from safeload.sandbox import _runner

    with pytest.raises(SandboxError) as info:
        run_in_sandbox("attempt_done_early", [], limits=LIMITS, timeout=60)
    assert info.value.rule == "sandbox.protocol"
    server = _runner._server
    assert server is not None
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
    for _ in range(500):  # the parent killed it; the fork server reaps it
        if not children.read_text().split():
            break
        time.sleep(0.01)
    assert children.read_text().split() == []

"""The sandbox stops hostile code, and each test says which layer stopped it.

Code from ``tests/test_sandbox_tasks.py`` runs inside a real worker. For every attempt the test
first shows the full sandbox stops it, then uses the audited ``unsafe_skip_layers`` to switch
off the layers in front, showing the next layer stops it too, and finally (where harmless) that
the attempt works with the layers off, so the test's target is real. A layer this machine lacks
skips its test with the same reason ``safeload doctor`` prints.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from safeload.errors import LimitExceededError, SandboxError
from safeload.policy import Limits
from safeload.sandbox import DoctorReport, doctor, run_in_sandbox

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


def attempt(task: str, inputs: list[Path] | None = None, skip: tuple[str, ...] = (),
            **kw: Any) -> dict[str, Any]:  # fmt: skip
    params = kw.pop("params", {})
    result = run_in_sandbox(task, inputs or [], limits=LIMITS, params=params,
                            unsafe_skip_layers=skip, timeout=60, **kw)  # fmt: skip
    skipped = {r.name for r in result.layers if not r.applied}
    assert skipped >= set(skip)
    assert isinstance(result.value, dict)
    return result.value


@pytest.fixture
def listener() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(1)
        yield srv.getsockname()[1]


def test_all_layers_apply_in_order(machine: DoctorReport) -> None:
    names = [r.name for r in machine.layers]
    assert names == ["rlimits", "no_new_privs", "namespaces", "landlock", "seccomp"]
    result = run_in_sandbox("probe", [], limits=LIMITS)
    assert [r.name for r in result.layers] == names
    assert result.value is None
    assert result.worker_memory.get("VmHWM", 0) > 0


# --- run a program -------------------------------------------------------------------------


def test_execve_is_stopped_by_seccomp(machine: DoctorReport) -> None:
    need(machine, "seccomp")
    out = attempt("attempt_exec")
    assert out == {"blocked": True, "step": "execve", "errno": errno.EPERM}


def test_execve_without_seccomp_is_stopped_by_landlock(machine: DoctorReport) -> None:
    need(machine, "landlock")
    out = attempt("attempt_exec", skip=("seccomp",))
    assert out == {"blocked": True, "step": "execve", "errno": errno.EACCES}


def test_fork_is_stopped_by_seccomp(machine: DoctorReport) -> None:
    need(machine, "seccomp")
    assert attempt("attempt_fork")["errno"] == errno.EPERM


# --- open a socket ---------------------------------------------------------------------------


def test_socket_is_stopped_by_seccomp(machine: DoctorReport, listener: int) -> None:
    need(machine, "seccomp")
    out = attempt("attempt_socket", params={"port": listener})
    assert out == {"blocked": True, "step": "socket", "errno": errno.EPERM}


def test_connect_without_seccomp_is_stopped_by_landlock(machine: DoctorReport,
                                                        listener: int) -> None:  # fmt: skip
    need(machine, "landlock")
    if "TCP denied" not in machine.layer("landlock").reason:
        pytest.skip("Landlock ABI < 4 does not restrict TCP")
    out = attempt("attempt_socket", skip=("seccomp",), params={"port": listener})
    assert out == {"blocked": True, "step": "connect", "errno": errno.EACCES}


def test_connect_without_seccomp_and_landlock_is_stopped_by_namespaces(
    machine: DoctorReport, listener: int
) -> None:
    need(machine, "namespaces")
    out = attempt("attempt_socket", skip=("seccomp", "landlock"), params={"port": listener})
    assert out == {"blocked": True, "step": "connect", "errno": errno.ENETUNREACH}
    # Control: with no network layer at all the same task reaches the listener.
    out = attempt("attempt_socket", skip=("seccomp", "landlock", "namespaces"),
                  params={"port": listener})  # fmt: skip
    assert out == {"blocked": False, "step": "connect", "errno": None}


# --- files -----------------------------------------------------------------------------------


def test_reading_outside_the_input_is_stopped_by_landlock(machine: DoctorReport,
                                                          tmp_path: Path) -> None:  # fmt: skip
    need(machine, "landlock")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the worker")
    model = tmp_path / "model.bin"
    model.write_bytes(b"model bytes")
    out = attempt("attempt_read_outside", [model], params={"path": str(secret)})
    assert out == {"blocked": True, "step": "open", "errno": errno.EACCES}
    out = attempt("attempt_read_outside", [model], skip=("landlock",),
                  params={"path": str(secret)})  # fmt: skip
    assert out["blocked"] is False
    # The input itself stays readable, by descriptor and by path.
    assert attempt("read_own_input", [model]) == {"same": True, "size": len(b"model bytes")}


def test_writing_outside_the_output_folder_is_stopped_by_landlock(
    machine: DoctorReport, tmp_path: Path
) -> None:
    need(machine, "landlock")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    outside = tmp_path / "planted.txt"
    out = attempt("attempt_write", output_dir=out_dir, params={"path": str(outside)})
    assert out == {"blocked": True, "step": "open", "errno": errno.EACCES}
    assert not outside.exists()
    inside = out_dir / "result.txt"
    out = attempt("attempt_write", output_dir=out_dir, params={"path": str(inside)})
    assert out["blocked"] is False
    assert inside.read_bytes() == b"written from the sandbox"


# --- signals ---------------------------------------------------------------------------------

CALLER = {"caller": os.getpid()}
"""The process that asked for the job; the worker's own parent is the fork server. The task
signals both, and says "mixed" if only one was stopped."""


def test_signalling_the_parent_is_stopped_by_seccomp(machine: DoctorReport) -> None:
    need(machine, "seccomp")
    out = attempt("attempt_signal_parent", skip=("landlock",), params=CALLER)
    assert out == {"blocked": True, "step": "kill", "errno": errno.EPERM}
    assert attempt("attempt_signal_self")["blocked"] is False


def test_signalling_the_parent_without_seccomp_is_stopped_by_landlock(
    machine: DoctorReport,
) -> None:
    need(machine, "landlock")
    if "signals" not in machine.layer("landlock").reason:
        pytest.skip("Landlock ABI < 6 does not scope signals")
    out = attempt("attempt_signal_parent", skip=("seccomp",), params=CALLER)
    assert out == {"blocked": True, "step": "kill", "errno": errno.EPERM}
    out = attempt("attempt_signal_parent", skip=("seccomp", "landlock"), params=CALLER)
    assert out["blocked"] is False


# --- resources -------------------------------------------------------------------------------


def test_allocating_8_gib_is_stopped_by_rlimits(machine: DoctorReport) -> None:
    need(machine, "rlimits")
    out = attempt("attempt_allocate", params={"bytes": 8 << 30})
    assert out == {"blocked": True, "step": "allocate", "errno": None}


def test_spinning_is_stopped_by_the_cpu_rlimit(machine: DoctorReport) -> None:
    need(machine, "rlimits")
    with pytest.raises(LimitExceededError) as info:
        run_in_sandbox("attempt_spin", [], limits=LIMITS, cpu_seconds=1, timeout=60)
    assert info.value.rule == "sandbox.cpu_seconds"
    assert "RLIMIT_CPU" in (info.value.detail or "")


def test_sleeping_forever_is_stopped_by_the_deadline() -> None:
    with pytest.raises(SandboxError) as info:
        run_in_sandbox("attempt_sleep", [], limits=LIMITS, timeout=5)
    assert info.value.rule == "sandbox.timeout"


# --- policy: required layers fail closed ------------------------------------------------------


def test_required_layer_that_is_not_applied_fails_closed() -> None:
    with pytest.raises(SandboxError) as info:
        run_in_sandbox("probe", [], limits=LIMITS, required_layers=["seccomp"],
                       unsafe_skip_layers=["seccomp"])  # fmt: skip
    assert info.value.rule == "sandbox.required_layers"
    assert "seccomp" in (info.value.detail or "")


def test_unknown_layer_name_is_refused() -> None:
    with pytest.raises(SandboxError) as info:
        run_in_sandbox("probe", [], limits=LIMITS, required_layers=["chroot"])
    assert info.value.rule == "sandbox.required_layers"


def test_unknown_task_is_refused() -> None:
    with pytest.raises(SandboxError) as info:
        run_in_sandbox("os.system", [], limits=LIMITS)
    assert info.value.rule == "sandbox.task"


def test_skipping_layers_is_audited(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="safeload.audit"):
        run_in_sandbox("probe", [], limits=LIMITS, unsafe_skip_layers=["seccomp"])
    assert any("unsafe_skip_layers" in r.getMessage() for r in caplog.records
               if r.name == "safeload.audit")  # fmt: skip


def test_worker_environment_holds_no_caller_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    from safeload.sandbox._forkserver import worker_env

    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    assert "HF_TOKEN" not in worker_env()


# --- the result channel ------------------------------------------------------------------------


def test_structure_and_tensors_round_trip() -> None:
    result = run_in_sandbox("echo_structure", [], limits=LIMITS)
    value = result.value
    assert isinstance(value, dict)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert np.array_equal(value["weights"], arr)
    assert value["same_again"] is value["weights"]  # one object in, one tensor out
    assert np.array_equal(value["transposed"], arr.T)
    assert value["state"][0]["step"] == 3
    assert np.array_equal(value["state"][0]["exp_avg"], np.ones(2))
    nested = value["nested"]
    assert nested[:2] == [1, 2.5] and np.isnan(nested[2])
    assert nested[3:] == [None, True, "text", b"\x00\x01", (1, "a")]
    assert value["empty"].shape == (0, 3)
    assert value["big_endian"].tolist() == [0, 1, 2]
    assert value["scalar"] == np.float32(1.5)
    assert value["structured"].dtype == np.dtype([("a", "<i4"), ("b", "<f8", (2,))])
    assert value["structured"]["b"].tolist() == [[2.0, 3.0]]
    assert value["text"].tolist() == ["ab", "cde"]
    assert value["complex"].dtype == np.complex64 and value["complex"][0] == 1 + 2j
    assert value["odd"] == [1 + 2j, frozenset({1}), {2, 3}, slice(1, None, 2), bytearray(b"x")]
    assert result.meta == {"kind": "echo"}
    assert value["weights"].flags.writeable  # a private mapping: writable, never shared back


def test_safetensors_passthrough_is_bit_identical(tmp_path: Path) -> None:
    import ml_dtypes
    from safetensors.numpy import load_file, save_file

    rng = np.random.default_rng(0)
    tensors = {
        "w": rng.standard_normal((64, 32)).astype(np.float32),
        "b": rng.standard_normal(32).astype(ml_dtypes.bfloat16),
        "i": np.arange(10, dtype=np.int64),
        "m": np.array([True, False]),
    }
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path), metadata={"source": "test"})
    result = run_in_sandbox("safetensors", [path], limits=LIMITS)
    assert isinstance(result.value, dict)
    expected = load_file(str(path))
    assert set(result.value) == set(expected)
    for key, arr in expected.items():
        got = result.value[key]
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == arr.tobytes()
    assert result.meta["metadata"] == {"source": "test"}


@pytest.mark.torch
def test_safetensors_passthrough_builds_torch_tensors(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file

    tensors = {"w": torch.randn(8, 4), "h": torch.randn(3).to(torch.bfloat16)}
    path = tmp_path / "model.safetensors"
    save_file(tensors, str(path))
    result = run_in_sandbox("safetensors", [path], limits=LIMITS, framework="torch")
    assert isinstance(result.value, dict)
    for key, ref in load_file(str(path)).items():
        got = result.value[key]
        assert isinstance(got, torch.Tensor) and got.dtype == ref.dtype
        assert torch.equal(got.view(torch.uint8), ref.view(torch.uint8))


def test_missing_input_is_a_source_error(tmp_path: Path) -> None:
    from safeload.errors import SourceError

    with pytest.raises(SourceError):
        run_in_sandbox("probe", [tmp_path / "nope.bin"], limits=LIMITS)


def test_worker_refusal_comes_back_as_the_same_error_class(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(SandboxError) as info:
        run_in_sandbox("safetensors", [bad], limits=LIMITS)
    assert info.value.rule == "sandbox.task"
    assert os.fspath(bad) == info.value.path


# --- the fork server --------------------------------------------------------------------------


def test_every_job_is_a_fresh_worker_forked_from_one_server(tmp_path: Path) -> None:
    from safeload.sandbox import _runner, prewarm

    model = tmp_path / "model.bin"
    model.write_bytes(b"abc")
    prewarm()
    try:
        server = _runner._server
        assert server is not None and server.alive()
        pids = {run_in_sandbox("echo_pid", [], limits=LIMITS).value for _ in range(3)}
        assert len(pids) == 3 and server.pid not in pids  # single use, never the server itself
        assert attempt("read_own_input", [model]) == {"same": True, "size": 3}
        assert _runner._server is server  # the same server forked them all
        # Every layer is applied to each forked worker.
        result = run_in_sandbox("probe", [], limits=LIMITS)
        assert all(r.applied for r in result.layers if r.available)
    finally:
        prewarm(False)
    assert _runner._server is None
    assert attempt("read_own_input", [model])["same"] is True  # the next job starts a new one


def test_a_dead_fork_server_is_replaced() -> None:
    import signal

    from safeload.sandbox import _runner, prewarm

    prewarm()
    server = _runner._server
    assert server is not None
    os.kill(server.pid, signal.SIGKILL)
    os.waitpid(server.pid, 0)
    assert not server.alive()
    assert run_in_sandbox("probe", [], limits=LIMITS).layers  # a new server answered
    assert _runner._server is not None and _runner._server is not server


def test_exit_status_and_usage_come_back_through_the_server() -> None:
    """The worker is the server's child: its status (here a CPU-limit kill) still reaches the
    parent, which names the layer that stopped it."""
    with pytest.raises(LimitExceededError) as info:
        run_in_sandbox("attempt_spin", [], limits=LIMITS, cpu_seconds=1, timeout=60)
    assert info.value.rule == "sandbox.cpu_seconds"


@pytest.mark.parametrize("kind", ["file", "memfd"])
def test_the_worker_cannot_change_the_bytes_the_parent_loads(tmp_path: Path, kind: str) -> None:
    """A path is sent read-only; bytes and verified files go as a sealed memfd. Either way a
    worker taken over by an exploit cannot write what the parent then builds tensors over."""
    import errno as errno_

    from safeload.integrations._load import _sandbox_input

    data = b"PK-not-really-a-model" * 100
    source: Any = data
    if kind == "file":
        source = tmp_path / "model.bin"
        source.write_bytes(data)
    with _sandbox_input(source, use_mmap=False, limits=LIMITS) as (item, held, _):
        outcome = run_in_sandbox("attempt_write_input", [item], limits=LIMITS).value
        assert outcome["blocked"] is True, outcome  # type: ignore[index]
        assert set(outcome["errno"]) <= {errno_.EBADF, errno_.EPERM, errno_.EACCES}  # type: ignore[index]
        assert bytes(held) == data and os.pread(item.fd, len(data), 0) == data


def test_a_forked_child_forgets_the_server() -> None:
    from safeload.sandbox import _runner, prewarm

    prewarm()
    try:
        server = _runner._server
        assert server is not None
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status only
            os._exit(0 if _runner._server is None else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _runner._server is server and server.alive()  # the parent's server is untouched
    finally:
        prewarm(False)
    prewarm()


def test_worker_imports_only_what_it_needs() -> None:
    value = run_in_sandbox("echo_modules", [], limits=LIMITS).value
    assert isinstance(value, list)
    modules = set(value)
    assert "safeload.formats._read" in modules and "numpy" in modules
    unneeded = {"pydantic", "torch", "cryptography", "sigstore", "model_signing", "rich",
                "click", "safeload.signing", "safeload.integrations", "safeload.policy._models",
                "safeload._cli"}  # fmt: skip
    assert not unneeded & modules


def test_lazy_import_scan_finds_every_nested_import() -> None:
    """The worker's cheap line scan must find every import ``ast`` finds below the top level."""
    import ast
    import importlib
    import pkgutil

    import safeload.formats as formats
    from safeload.sandbox._worker import _lazy_imports

    for info in pkgutil.walk_packages(formats.__path__, prefix="safeload.formats."):
        module = importlib.import_module(info.name)
        assert module.__file__ is not None
        tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
        top = {id(node) for node in tree.body}
        nested: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in top:
                continue
            if isinstance(node, ast.Import):
                nested.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                nested.add(node.module)
        nested = {n for n in nested if n.split(".")[0] != "torch"}
        assert nested <= _lazy_imports(module), info.name


def test_server_with_another_environment_is_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    from safeload.sandbox import _runner, prewarm

    monkeypatch.delenv("SAFELOAD_SANDBOX_TEST_TASKS")
    prewarm()
    try:
        monkeypatch.setenv("SAFELOAD_SANDBOX_TEST_TASKS", str(TASKS_FILE))
        assert _runner._server is not None and not _runner._server.alive()
        # The job runs in a worker of a new server that has the test tasks, not the stale one.
        assert attempt("attempt_signal_self")["blocked"] is False
    finally:
        prewarm(False)


def test_symlinked_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    from safeload.errors import SourceError

    real = tmp_path / "real.bin"
    real.write_bytes(b"x")
    link = tmp_path / "link.bin"
    link.symlink_to(real)
    with pytest.raises(SourceError) as info:
        run_in_sandbox("probe", [link], limits=LIMITS)
    assert "safeload.source" in (info.value.detail or "")


def test_ignored_sigchld_in_the_caller_loses_no_exit_status() -> None:
    """Workers are the fork server's children: a caller that ignores SIGCHLD (so it could not
    wait for its own children) still learns how a worker that never answered ended."""
    import signal

    from safeload.sandbox import prewarm

    previous = signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    try:
        prewarm(False)  # the next job starts a server while SIGCHLD is ignored here
        assert run_in_sandbox("probe", [], limits=LIMITS).value is None
        with pytest.raises(SandboxError) as info:
            run_in_sandbox("echo_crash", [], limits=LIMITS)
    finally:
        signal.signal(signal.SIGCHLD, previous)
    assert info.value.rule == "sandbox.crash"
    assert "exited with status 3" in info.value.message


def test_seccomp_allowlist_never_names_a_dangerous_call() -> None:
    from safeload.sandbox import _seccomp

    dangerous = {"execve", "execveat", "socket", "connect", "bind", "ptrace", "mount", "umount2",
                 "unshare", "setns", "pivot_root", "chroot", "fork", "vfork", "clone", "clone3",
                 "kill", "tkill", "tgkill", "process_vm_readv", "process_vm_writev", "bpf",
                 "init_module", "keyctl", "ioctl", "prctl", "userfaultfd"}  # fmt: skip
    assert dangerous.isdisjoint(_seccomp._ALLOWED)
    for machine, (_token, table) in _seccomp.ARCHES.items():
        missing = {n for n in _seccomp._ALLOWED if n not in table}
        # aarch64 has no legacy calls (open, stat, fork...); x86_64 must know every name.
        assert not missing if machine == "x86_64" else missing <= {
            "stat", "lstat", "open", "access", "dup2", "mkdir", "unlink", "rename", "rmdir",
            "readlink", "poll", "arch_prctl"}  # fmt: skip
        program = _seccomp.build_filter(machine, 1234)
        assert len(program) % 8 == 0 and len(program) // 8 < 4096


def test_fifo_input_is_refused_without_hanging(tmp_path: Path) -> None:
    from safeload.errors import SourceError

    fifo = tmp_path / "model.pt"
    os.mkfifo(fifo)
    with pytest.raises(SourceError) as info:
        run_in_sandbox("probe", [fifo], limits=LIMITS)
    assert "regular file" in info.value.message

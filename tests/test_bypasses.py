"""Regression tests for known bypasses of other pickle scanners and restricted unpicklers.

One test per advisory, named after it, with the payload assembled from opcodes right here.
Every payload's callable would create ``marker`` if it were ever executed; each test asserts
the reader refuses *and* the marker does not exist. Blocklist scanners (picklescan, fickling)
fell to names they had not listed; an allowlist has no such list to be incomplete, so most of
these are one global each, and the point of the test is that it stays refused forever.

Nothing here is ever given to ``pickle.loads``: the ``no_torch_load`` fixture makes any stock
unpickler call fail the test.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
from _pickle_asm import asm, call, glob, sglobal, ustr

from safeload import Limits, RefusedError, UnsafeModelError
from safeload.formats._pickle_vm import run_pickle
from safeload.formats._types import StorageRef, StorageType

LIMITS = Limits()


@pytest.fixture(autouse=True)
def _no_stock_unpickler(no_torch_load: None) -> None:
    """Every test here also proves no stock unpickler (or torch.load) was reached."""


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "executed"


def sh(marker: Path) -> Any:
    return ustr(f"touch {marker}")


def py(marker: Path) -> Any:
    return ustr(f"open({str(marker)!r}, 'w').close()")


def strict_storage_pl(pid: object) -> StorageRef:
    """A persistent_load as strict as the torch container reader's."""
    if (
        type(pid) is not tuple
        or len(pid) != 5
        or pid[0] != "storage"
        or type(pid[1]) is not StorageType
        or type(pid[2]) is not str
        or type(pid[3]) is not str
        or type(pid[4]) is not int
    ):
        raise ValueError(f"not a storage id: {pid!r}")
    return StorageRef(key=pid[2], dtype=pid[1].dtype, numel=pid[4], location=pid[3])


def refuse(
    data: bytes,
    marker: Path,
    names: list[str] | None = None,
    cls: type[RefusedError] = UnsafeModelError,
    rule: str | None = "pickle.globals",
    **kw: Any,
) -> RefusedError:
    """The payload is refused, names exactly ``names`` in review mode, and ran nothing."""
    with pytest.raises(cls) as ei:
        run_pickle(data, limits=LIMITS, safe_globals={}, name="payload.pkl", **kw)
    err = ei.value
    if rule is not None:
        assert err.rule == rule, err.diagnostics()
    assert err.offset is not None and err.path == "payload.pkl"
    if names is not None:
        found: list[str] = []
        # Review mode may still stop on a non-global refusal later in the stream.
        with contextlib.suppress(RefusedError):
            run_pickle(data, limits=LIMITS, safe_globals={}, collect_unsafe=found, **kw)
        assert found == names
    assert not marker.exists()
    return err


def one_call(module: str, name: str, *args: Any, stack: bool = False) -> bytes:
    """``module.name(*args)`` with GLOBAL (protocol 2) or STACK_GLOBAL (protocol 4)."""
    fn = sglobal(module, name) if stack else glob(module, name)
    return asm(("PROTO", 4 if stack else 2), call(fn, *args), "STOP")


# --- torch ---------------------------------------------------------------------------------


def test_cve_2025_32434_torch_weights_only_callable_through_allowlisted_rebuild(
    marker: Path,
) -> None:
    """torch <= 2.5.1: ``weights_only=True`` was bypassed to run code (Ji'an Zhou). Public
    write-ups describe allowlisted torch internals whose construction path reached a
    caller-chosen callable; ``_rebuild_from_type_v2(func, type, args, state)`` calls ``func``.
    We hand it ``builtins.exec``, and separately an allowlisted non-rebuild callable."""
    rebuild = glob("torch._tensor", "_rebuild_from_type_v2")
    exec_ = asm(
        call(
            rebuild,
            glob("builtins", "exec"),
            glob("torch", "Tensor"),
            ["MARK", py(marker), "TUPLE"],
            "EMPTY_DICT",
        ),
        "STOP",
    )
    refuse(exec_, marker, ["builtins.exec"])
    od = asm(
        call(
            rebuild,
            glob("collections", "OrderedDict"),
            glob("torch", "Tensor"),
            "EMPTY_TUPLE",
            "EMPTY_DICT",
        ),
        "STOP",
    )
    refuse(od, marker, [], rule="pickle.reduce")


def test_cve_2026_24747_torch_weights_only_memory_corruption_via_views(marker: Path) -> None:
    """torch < 2.10: a crafted checkpoint corrupted memory through the weights_only unpickler.
    The generic route is a tensor whose view (offset/size/stride) or legacy ``BUILD`` state
    reaches outside its storage; here, a view past the end and a BUILD on a tensor spec."""
    pid = [
        "MARK",
        ustr("storage"),
        glob("torch", "FloatStorage"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 4),
        "TUPLE",
        "BINPERSID",
    ]
    view = call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        ("BININT", 2**20),
        ["MARK", ("BININT1", 4), "TUPLE"],
        ["MARK", ("BININT1", 1), "TUPLE"],
        "NEWFALSE",
        "NONE",
    )
    refuse(
        asm(view, "STOP"),
        marker,
        cls=RefusedError,
        rule="pickle.tensor_bounds",
        persistent_load=strict_storage_pl,
    )
    ok_view = call(
        glob("torch._utils", "_rebuild_tensor_v2"),
        pid,
        ("BININT1", 0),
        ["MARK", ("BININT1", 4), "TUPLE"],
        ["MARK", ("BININT1", 1), "TUPLE"],
        "NEWFALSE",
        "NONE",
    )
    set_state = asm(ok_view, "MARK", pid, ("BININT1", 0), "TUPLE", "BUILD", "STOP")
    refuse(
        set_state,
        marker,
        cls=RefusedError,
        rule="pickle.reconstruct",
        persistent_load=strict_storage_pl,
    )


def test_torch_load_reached_through_globals(marker: Path) -> None:
    """Nested loaders: a pickle naming ``torch.load`` / ``torch.serialization.load`` /
    ``torch.jit.load`` would hand attacker bytes to an unrestricted loader."""
    for mod, name in [("torch", "load"), ("torch.serialization", "load"), ("torch.jit", "load")]:
        refuse(one_call(mod, name, ustr(str(marker))), marker, [f"{mod}.{name}"])


def test_torch_c_internals(marker: Path) -> None:
    """``torch._C`` exposes TorchScript compilation and module import from bytes."""
    for name in ["_import_ir_module", "_jit_script_compile", "_load_for_lite_interpreter"]:
        refuse(one_call("torch._C", name, py(marker)), marker, [f"torch._C.{name}"])


def test_ghsa_h3qp_7fh3_f8h4_torch_datapipes_decoder_basichandlers(marker: Path) -> None:
    """picklescan missed ``torch.utils.data.datapipes.utils.decoder.basichandlers``, which
    unpickles its input (a nested pickle running ``os.system``)."""
    mod = "torch.utils.data.datapipes.utils.decoder"
    refuse(
        one_call(mod, "basichandlers", ustr("pickle"), ("SHORT_BINBYTES", b"cos\nsystem\n")),
        marker,
        [f"{mod}.basichandlers"],
    )


def test_ghsa_vr7h_p6mm_wpmh_torch_jit_execwrapper(marker: Path) -> None:
    """picklescan missed ``torch.jit.unsupported_tensor_ops.execWrapper`` (runs ``exec``)."""
    mod = "torch.jit.unsupported_tensor_ops"
    refuse(
        one_call(mod, "execWrapper", py(marker), "EMPTY_DICT", "EMPTY_DICT"),
        marker,
        [f"{mod}.execWrapper"],
    )


def test_ghsa_f745_w6jp_hpxx_torch_collect_env_run(marker: Path) -> None:
    """picklescan missed ``torch.utils.collect_env.run`` (runs a shell command)."""
    refuse(
        one_call("torch.utils.collect_env", "run", sh(marker)),
        marker,
        ["torch.utils.collect_env.run"],
    )


def test_ghsa_86cj_95qr_2p4f_torch_dynamo_guardbuilder_get(marker: Path) -> None:
    """picklescan missed ``torch._dynamo.guards.GuardBuilder.get`` (evaluates a string)."""
    refuse(
        one_call("torch._dynamo.guards", "GuardBuilder.get", py(marker), stack=True),
        marker,
        ["torch._dynamo.guards.GuardBuilder.get"],
    )


def test_ghsa_vv6j_3g6g_2pvj_torch_config_module_load_config(marker: Path) -> None:
    """picklescan missed ``torch.utils._config_module.ConfigModule.load_config`` (unpickles)."""
    refuse(
        one_call("torch.utils._config_module", "ConfigModule.load_config", py(marker), stack=True),
        marker,
        ["torch.utils._config_module.ConfigModule.load_config"],
    )


def test_ghsa_4r9r_ch6f_vxmx_torch_bottleneck_run_cprofile(marker: Path) -> None:
    """picklescan missed ``torch.utils.bottleneck.__main__.run_cprofile`` (execs code)."""
    mod = "torch.utils.bottleneck.__main__"
    refuse(one_call(mod, "run_cprofile", py(marker), "EMPTY_DICT"), marker, [f"{mod}.run_cprofile"])


# --- picklescan: standard library gadgets ---------------------------------------------------


def test_ghsa_9w88_8rmg_7g2p_cprofile_runctx(marker: Path) -> None:
    """picklescan missed ``cProfile.runctx(code, globals, locals)``."""
    refuse(
        one_call("cProfile", "runctx", py(marker), "EMPTY_DICT", "NONE"),
        marker,
        ["cProfile.runctx"],
    )


def test_ghsa_jgw4_cr84_mqxg_asyncio_subprocess_transport_in_torch_zip(marker: Path) -> None:
    """picklescan missed ``asyncio.unix_events._UnixSubprocessTransport._start`` hidden in a
    PyTorch ``.bin`` among real tensor opcodes; spelled with STACK_GLOBAL over memoized
    strings so the name never appears contiguously."""
    tensor_pid = [
        "MARK",
        ustr("storage"),
        glob("torch", "FloatStorage"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 1),
        "TUPLE",
        "BINPERSID",
    ]
    data = asm(
        ("PROTO", 4),
        "EMPTY_DICT",
        ustr("w"),
        call(
            glob("torch._utils", "_rebuild_tensor_v2"),
            tensor_pid,
            ("BININT1", 0),
            ["MARK", ("BININT1", 1), "TUPLE"],
            ["MARK", ("BININT1", 1), "TUPLE"],
            "NEWFALSE",
            "NONE",
        ),
        "SETITEM",
        ustr("asyncio.unix_events"),
        "MEMOIZE",
        "POP",
        ustr("_UnixSubprocessTransport._start"),
        "MEMOIZE",
        "POP",
        ustr("x"),
        ("BINGET", 0),
        ("BINGET", 1),
        "STACK_GLOBAL",
        "MARK",
        "NONE",
        "MARK",
        sh(marker),
        "TUPLE",
        "NEWTRUE",
        "NONE",
        "NONE",
        "NONE",
        ("BININT1", 0),
        "TUPLE",
        "REDUCE",
        "SETITEM",
        "STOP",
    )
    refuse(
        data,
        marker,
        ["asyncio.unix_events._UnixSubprocessTransport._start"],
        persistent_load=strict_storage_pl,
    )


def test_ghsa_q77w_mwjj_7mqx_asyncio_subprocess_transport(marker: Path) -> None:
    """The same gadget as a plain pickle: a private class method two dots deep."""
    refuse(
        one_call("asyncio.unix_events", "_UnixSubprocessTransport._start", sh(marker), stack=True),
        marker,
        ["asyncio.unix_events._UnixSubprocessTransport._start"],
    )


def test_ghsa_84r2_jw7c_4r5q_pydoc_locate_and_methodcaller(marker: Path) -> None:
    """picklescan missed ``pydoc.locate`` (imports any dotted name) combined with
    ``operator.methodcaller`` to call a method on the located object."""
    data = asm(
        ("PROTO", 2),
        call(
            call(glob("operator", "methodcaller"), ustr("system"), sh(marker)),
            call(glob("pydoc", "locate"), ustr("os")),
        ),
        "STOP",
    )
    refuse(data, marker, ["operator.methodcaller", "pydoc.locate"])


def test_ghsa_955r_x9j8_7rhh_operator_methodcaller_and_import(marker: Path) -> None:
    """picklescan missed ``_operator.methodcaller`` applied to ``builtins.__import__('os')``."""
    data = asm(
        ("PROTO", 2),
        call(
            call(glob("_operator", "methodcaller"), ustr("system"), sh(marker)),
            call(glob("builtins", "__import__"), ustr("os")),
        ),
        "STOP",
    )
    refuse(data, marker, ["_operator.methodcaller", "builtins.__import__"])


def test_ghsa_46h3_79wf_xr6c_operator_attrgetter_and_import(marker: Path) -> None:
    """picklescan missed ``_operator.attrgetter('system')(__import__('os'))(cmd)``."""
    data = asm(
        ("PROTO", 2),
        call(
            call(
                call(glob("_operator", "attrgetter"), ustr("system")),
                call(glob("builtins", "__import__"), ustr("os")),
            ),
            sh(marker),
        ),
        "STOP",
    )
    refuse(data, marker, ["_operator.attrgetter", "builtins.__import__"])
    refuse(one_call("operator", "attrgetter", ustr("system")), marker, ["operator.attrgetter"])


def test_ghsa_4675_36f9_wf6r_ctypes_cdll(marker: Path) -> None:
    """picklescan missed ``ctypes.CDLL`` (loads an attacker-chosen shared library)."""
    refuse(one_call("ctypes", "CDLL", ustr(str(marker))), marker, ["ctypes.CDLL"])


def test_ghsa_vqmv_47xg_9wpr_pty_spawn(marker: Path) -> None:
    """picklescan missed ``pty.spawn``."""
    refuse(one_call("pty", "spawn", sh(marker)), marker, ["pty.spawn"])


def test_ghsa_m273_6v24_x4m4_distutils_write_file(marker: Path) -> None:
    """picklescan missed ``distutils.file_util.write_file`` (writes arbitrary files)."""
    data = one_call("distutils.file_util", "write_file", ustr(str(marker)), "EMPTY_LIST")
    refuse(data, marker, ["distutils.file_util.write_file"])


def test_ghsa_r8g5_cgf2_4m4m_numpy_f2py_getlincoef(marker: Path) -> None:
    """picklescan missed ``numpy.f2py.crackfortran.getlincoef`` (evals): a module inside a
    package we *do* allowlist parts of, showing entries are exact names, not packages."""
    mod = "numpy.f2py.crackfortran"
    refuse(one_call(mod, "getlincoef", py(marker), "EMPTY_DICT"), marker, [f"{mod}.getlincoef"])


def test_ghsa_5qwp_399c_mjwf_trace_run(marker: Path) -> None:
    """picklescan missed ``trace.Trace.run`` (execs a string)."""
    refuse(one_call("trace", "Trace.run", py(marker), stack=True), marker, ["trace.Trace.run"])


def test_ghsa_xp4f_hrf8_rxw7_ensurepip_run_pip(marker: Path) -> None:
    """picklescan missed ``ensurepip._run_pip`` (runs pip with attacker arguments)."""
    refuse(
        one_call("ensurepip", "_run_pip", ["MARK", ustr("install"), "LIST"]),
        marker,
        ["ensurepip._run_pip"],
    )


def test_ghsa_cj3c_v495_4xqh_code_interactive_interpreter(marker: Path) -> None:
    """picklescan missed ``code.InteractiveInterpreter.runcode``."""
    refuse(
        one_call("code", "InteractiveInterpreter.runcode", "NONE", py(marker), stack=True),
        marker,
        ["code.InteractiveInterpreter.runcode"],
    )


def test_ghsa_fqq6_7vqf_w3fg_doctest_debug_script(marker: Path) -> None:
    """picklescan missed ``doctest.debug_script`` (execs a source string)."""
    refuse(one_call("doctest", "debug_script", py(marker)), marker, ["doctest.debug_script"])


def test_ghsa_g38g_8gr9_h9xp_pyrepl_pager(marker: Path) -> None:
    """picklescan missed ``_pyrepl.pager.pipe_pager`` (pipes text to a shell command)."""
    refuse(
        one_call("_pyrepl.pager", "pipe_pager", ustr("x"), sh(marker)),
        marker,
        ["_pyrepl.pager.pipe_pager"],
    )


def test_cve_2025_1716_pip_main(marker: Path) -> None:
    """picklescan < 0.0.21 did not treat ``pip.main`` as unsafe (installs a package)."""
    refuse(
        one_call("pip", "main", ["MARK", ustr("install"), ustr(str(marker)), "LIST"]),
        marker,
        ["pip.main"],
    )


def test_cve_2026_56304_logging_filehandler(marker: Path) -> None:
    """picklescan < 1.0.1 let ``logging.FileHandler`` through: instantiating it creates a
    file, so even a class (not only a function) is a side effect."""
    refuse(one_call("logging", "FileHandler", ustr(str(marker))), marker, ["logging.FileHandler"])


def test_cve_2026_56315_stdlib_modules_that_shell_out(marker: Path) -> None:
    """picklescan < 1.0.4 missed stdlib modules that run commands internally (uuid,
    _osx_support, _aix_support, imaplib...)."""
    for mod, name in [
        ("uuid", "_get_command_stdout"),
        ("_osx_support", "_read_output"),
        ("_aix_support", "_read_cmd_output"),
        ("imaplib", "IMAP4_stream"),
    ]:
        refuse(one_call(mod, name, sh(marker)), marker, [f"{mod}.{name}"])


def test_picklescan_type_confusion_stack_global(marker: Path) -> None:
    """picklescan's "type-confusion" sample: STACK_GLOBAL over a non-string operand (42)
    confused its name tracking. We refuse non-string operands outright."""
    data = asm(
        ("PROTO", 4),
        ("BININT1", 42),
        ustr("os"),
        "STACK_GLOBAL",
        "POP",
        sglobal("os", "system"),
        sh(marker),
        "TUPLE1",
        "REDUCE",
        "STOP",
    )
    refuse(data, marker, ["<STACK_GLOBAL with non-string operands>", "os.system"])
    for bad in ["NONE", "EMPTY_LIST", ("BINBYTES", b"os")]:
        refuse(asm(("PROTO", 4), bad, ustr("system"), "STACK_GLOBAL", "STOP"), marker)


def test_picklescan_keyerror_exploit_memo_get_of_unset_index(marker: Path) -> None:
    """picklescan's "keyerror" sample made its memo tracking throw and stop scanning early.
    A memo index that was never set is a refusal here, never an early "clean"."""
    data = asm(
        ("PROTO", 4),
        ("BINGET", 9),
        "POP",
        sglobal("os", "system"),
        sh(marker),
        "TUPLE1",
        "REDUCE",
        "STOP",
    )
    refuse(data, marker, rule="pickle.memo")


# --- fickling -------------------------------------------------------------------------------


def test_ghsa_h4rm_mm56_xf63_fickling_builtins_imports(marker: Path) -> None:
    """fickling did not emit AST import nodes for builtins, so ``builtins.getattr``/``eval``/
    ``exec``/``__import__`` escaped its unsafe-import check."""
    for name in ["eval", "exec", "getattr", "__import__", "compile", "open"]:
        refuse(one_call("builtins", name, py(marker)), marker, [f"builtins.{name}"])
        refuse(one_call("__builtin__", name, py(marker)), marker, [f"__builtin__.{name}"])
    getattr_chain = asm(
        ("PROTO", 2),
        call(
            call(
                glob("builtins", "getattr"),
                call(glob("builtins", "__import__"), ustr("os")),
                ustr("system"),
            ),
            sh(marker),
        ),
        "STOP",
    )
    refuse(getattr_chain, marker, ["builtins.getattr", "builtins.__import__"])


def test_ghsa_q5qq_mvfm_j35x_fickling_submodule_of_blocked_package(marker: Path) -> None:
    """fickling compared the full dotted module name to its blocklist, so submodules of a
    blocked package passed. Names here are matched whole against an allowlist instead."""
    for mod, name in [
        ("os.path", "os.system"),
        ("subprocess", "Popen"),
        ("multiprocessing.util", "spawnv_passfds"),
        ("asyncio.subprocess", "create_subprocess_shell"),
    ]:
        refuse(one_call(mod, name, sh(marker), stack="." in name), marker, [f"{mod}.{name}"])


def test_ghsa_r7v6_mfhq_g3m2_fickling_pty(marker: Path) -> None:
    """fickling did not list ``pty`` (``pty.spawn`` runs a program)."""
    refuse(one_call("pty", "spawn", ustr("/bin/sh"), stack=True), marker, ["pty.spawn"])


def test_ghsa_565g_hwwr_4pp3_fickling_marshal_and_types(marker: Path) -> None:
    """fickling did not list ``marshal``/``types``: ``types.FunctionType(marshal.loads(b),
    {})()`` builds and runs a function from raw bytecode."""
    data = asm(
        ("PROTO", 2),
        call(
            call(
                glob("types", "FunctionType"),
                call(glob("marshal", "loads"), ("SHORT_BINBYTES", b"\xe3junk")),
                "EMPTY_DICT",
            )
        ),
        "STOP",
    )
    refuse(data, marker, ["types.FunctionType", "marshal.loads"])


def test_ghsa_5hwf_rc88_82xm_fickling_uuid_osx_aix_support(marker: Path) -> None:
    """fickling did not list ``uuid``, ``_osx_support``, ``_aix_support`` (they shell out)."""
    for mod, name in [
        ("uuid", "_get_command_stdout"),
        ("_osx_support", "_find_build_tool"),
        ("_aix_support", "_read_cmd_output"),
    ]:
        refuse(one_call(mod, name, sh(marker)), marker, [f"{mod}.{name}"])


def test_ghsa_m6fh_58r7_x697_fickling_posixsubprocess_site_atexit(marker: Path) -> None:
    """fickling did not list ``_posixsubprocess``, ``site`` (loads .pth code) or ``atexit``."""
    for mod, name in [
        ("_posixsubprocess", "fork_exec"),
        ("site", "addsitedir"),
        ("atexit", "register"),
    ]:
        refuse(one_call(mod, name, sh(marker)), marker, [f"{mod}.{name}"])


def test_ghsa_6ggj_6f2q_f7mx_fickling_interpreters_via_build_setstate(marker: Path) -> None:
    """fickling missed ``_interpreters.create``/``run_string`` routed through BUILD: the first
    BUILD puts a callable under ``__setstate__`` in an object's dict, the second BUILD makes
    pickle call it with attacker state. Refused at the global, and the BUILD trick is
    refused even on an allowlisted object with allowlisted (uncalled) callables."""
    data = asm(
        ("PROTO", 2),
        call(glob("_interpreters", "create")),
        "POP",
        glob("collections", "OrderedDict"),
        "EMPTY_TUPLE",
        "REDUCE",
        "EMPTY_DICT",
        ustr("__setstate__"),
        glob("_interpreters", "run_string"),
        "SETITEM",
        "BUILD",
        py(marker),
        "BUILD",
        "STOP",
    )
    refuse(data, marker, ["_interpreters.create", "_interpreters.run_string"])
    od = [glob("collections", "OrderedDict"), "EMPTY_TUPLE", "REDUCE"]
    trick = asm(
        ("PROTO", 2),
        od,
        "EMPTY_DICT",
        ustr("__setstate__"),
        glob("torch._utils", "_rebuild_tensor_v2"),
        "SETITEM",
        "BUILD",
        "STOP",
    )
    refuse(trick, marker, [], rule="pickle.build")
    slot_trick = asm(
        ("PROTO", 2),
        od,
        "NONE",
        "EMPTY_DICT",
        ustr("__setstate__"),
        "NONE",
        "SETITEM",
        "TUPLE2",
        "BUILD",
        "STOP",
    )
    refuse(slot_trick, marker, [], cls=RefusedError, rule=None)


# --- techniques -----------------------------------------------------------------------------


def test_classic_os_system_subprocess_runpy(marker: Path) -> None:
    """The textbook payloads, in GLOBAL and STACK_GLOBAL spellings and as ``posix``/``nt``."""
    for mod, name in [
        ("os", "system"),
        ("posix", "system"),
        ("nt", "system"),
        ("subprocess", "Popen"),
        ("subprocess", "run"),
        ("subprocess", "check_output"),
        ("runpy", "_run_code"),
        ("runpy", "run_path"),
    ]:
        for stack in (False, True):
            refuse(one_call(mod, name, sh(marker), stack=stack), marker, [f"{mod}.{name}"])


def test_nested_pickle_loads(marker: Path) -> None:
    """A pickle that unpickles another pickle with the stock unpickler."""
    inner = asm(glob("os", "system"), sh(marker), "TUPLE1", "REDUCE", "STOP")
    for mod in ("pickle", "_pickle"):
        for name in ("loads", "load", "Unpickler"):
            refuse(one_call(mod, name, ("BINBYTES", inner)), marker, [f"{mod}.{name}"])


def test_functools_partial_wrapping(marker: Path) -> None:
    """``functools.partial(os.system, cmd)()`` hides the final call behind a wrapper."""
    data = asm(
        ("PROTO", 2),
        call(call(glob("functools", "partial"), glob("os", "system"), sh(marker))),
        "STOP",
    )
    refuse(data, marker, ["functools.partial", "os.system"])


def test_numpy_load_and_runstring(marker: Path) -> None:
    """numpy loaders with ``allow_pickle`` and numpy's own test helper that execs strings."""
    refuse(one_call("numpy", "load", ustr(str(marker)), "NEWTRUE"), marker, ["numpy.load"])
    refuse(one_call("numpy.lib.npyio", "load", ustr("x")), marker, ["numpy.lib.npyio.load"])
    refuse(
        one_call("numpy.testing._private.utils", "runstring", py(marker), "EMPTY_DICT"),
        marker,
        ["numpy.testing._private.utils.runstring"],
    )


def test_dotted_qualnames_into_allowlisted_modules(marker: Path) -> None:
    """Attribute walks from an allowed name: pickle resolves ``a.b.c`` with getattr, so an
    allowlist matched by prefix would let ``collections.OrderedDict.__class__`` or
    ``torch._utils.os.system`` through. We only ever match exact strings. (Splitting the same
    allowed string differently, ``torch`` + ``_utils._rebuild_tensor_v2``, names the same
    entry and still reaches only our reconstruction.)"""
    names = [
        ("collections", "OrderedDict.__class__"),
        ("collections", "OrderedDict.fromkeys"),
        ("torch._utils", "os.system"),
        ("torch._utils.os", "system"),
        ("torch", "FloatStorage.__init__"),
        ("torch._utils", "_rebuild_tensor_v2.__globals__"),
        ("builtins", "set.__init__"),
        ("numpy", "dtype.__new__"),
        ("_codecs", "encode.__self__"),
        ("collections.OrderedDict", ""),
        ("", "collections.OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2."),
    ]
    for mod, name in names:
        refuse(one_call(mod, name, sh(marker), stack=True), marker, [f"{mod}.{name}"])


def test_unicode_lookalikes_of_allowed_names(marker: Path) -> None:
    """Homoglyphs, fullwidth and invisible characters around allowed names. Python resolves
    identifiers after NFKC normalisation, so fullwidth ``eval`` *is* ``eval`` to an importer."""
    for mod, name in [
        ("collections", "\u041erderedDict"),  # Cyrillic O
        ("c\u043ellections", "OrderedDict"),  # Cyrillic o
        ("collections", "OrderedDict\u200b"),  # zero-width space
        ("torch._utils", "_rebuild_tensor_v2\u00a0"),  # no-break space
        ("torch\uff0e_utils", "_rebuild_tensor_v2"),  # fullwidth full stop
        ("builtins", "\uff45val"),  # fullwidth e: NFKC gives "eval"
        ("collections ", "OrderedDict"),
        ("\u03bfs", "system"),  # Greek omicron
    ]:
        full = f"{mod}.{name}"  # review lists escape invisible characters
        shown = full if full.isprintable() else ascii(full)
        refuse(one_call(mod, name, sh(marker), stack=True), marker, [shown])


def test_inst_and_obj_opcodes(marker: Path) -> None:
    """Protocol 0/1 INST and OBJ build instances without REDUCE."""
    inst = asm("MARK", sh(marker), ("INST", ("os", "system")), "STOP")
    refuse(inst, marker, ["os.system"])
    obj = asm(("PROTO", 1), "MARK", glob("subprocess", "Popen"), sh(marker), "OBJ", "STOP")
    refuse(obj, marker, ["subprocess.Popen"])
    allowed_obj = asm(("PROTO", 1), "MARK", glob("torch", "FloatStorage"), "OBJ", "STOP")
    refuse(allowed_obj, marker, [], rule="pickle.reduce")


def test_ext_registry_opcodes(marker: Path) -> None:
    """EXT1/2/4 name a global through ``copyreg``'s extension registry instead of by name."""
    for op in ("EXT1", "EXT2", "EXT4"):
        data = asm(("PROTO", 2), (op, 1), sh(marker), "TUPLE1", "REDUCE", "STOP")
        refuse(data, marker, rule="pickle.opcodes")


def test_memo_forged_globals_across_records(marker: Path) -> None:
    """Legacy torch files hold several pickles back to back; a later record must not see an
    earlier record's memo (where a global might have been stashed)."""
    first = asm(
        ("PROTO", 2), glob("collections", "OrderedDict"), ("BINPUT", 0), "POP", "NONE", "STOP"
    )
    second = asm(("PROTO", 2), ("BINGET", 0), "EMPTY_TUPLE", "REDUCE", "STOP")
    data = first + second
    _, end = run_pickle(data, limits=LIMITS, safe_globals={})
    with pytest.raises(UnsafeModelError) as ei:
        run_pickle(data, limits=LIMITS, start=end)
    assert ei.value.rule == "pickle.memo"
    assert not marker.exists()


def test_memo_holding_an_allowlisted_callable_cannot_call_other_things(marker: Path) -> None:
    """Memoising an allowed callable and using it in REDUCE with hostile args just reaches
    our reconstruction, which checks its arguments."""
    data = asm(
        ("PROTO", 2),
        glob("_codecs", "encode"),
        ("BINPUT", 0),
        "POP",
        call(("BINGET", 0), sh(marker), ustr("rot13")),
        "STOP",
    )
    refuse(data, marker, [], cls=RefusedError, rule="pickle.reconstruct")


def test_storage_persistent_id_tricks(marker: Path) -> None:
    """The persistent id goes to the container's strict resolver raw; a global inside it is
    refused first, a callable marker in the type slot is rejected by the resolver, a storage
    reference cannot be called, and PERSID without a resolver is refused."""
    hostile_type = asm(
        ("PROTO", 2),
        "MARK",
        ustr("storage"),
        glob("os", "system"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 1),
        "TUPLE",
        "BINPERSID",
        "STOP",
    )
    refuse(hostile_type, marker, ["os.system"], persistent_load=strict_storage_pl)
    callable_type = asm(
        ("PROTO", 2),
        "MARK",
        ustr("storage"),
        glob("torch._utils", "_rebuild_tensor_v2"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 1),
        "TUPLE",
        "BINPERSID",
        "STOP",
    )
    refuse(
        callable_type,
        marker,
        cls=RefusedError,
        rule="pickle.persistent_id",
        persistent_load=strict_storage_pl,
    )
    call_storage = asm(
        ("PROTO", 2),
        "MARK",
        ustr("storage"),
        glob("torch", "FloatStorage"),
        ustr("0"),
        ustr("cpu"),
        ("BININT1", 1),
        "TUPLE",
        "BINPERSID",
        sh(marker),
        "TUPLE1",
        "REDUCE",
        "STOP",
    )
    refuse(call_storage, marker, [], rule="pickle.reduce", persistent_load=strict_storage_pl)
    refuse(asm(("PERSID", "storage"), "STOP"), marker, rule="pickle.persistent_id")

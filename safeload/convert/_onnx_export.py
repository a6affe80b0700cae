"""ONNX export: the caller's ``nn.Module`` over untrusted weights, exported in the sandbox.

Export is the one conversion that must run framework code while untrusted weights are in
memory (torch's tracer, the caller's model code), so it never runs in the caller's process:
the sandbox worker (:mod:`safeload.sandbox._export_task`) reads the weights with safeload's
own reader, builds the model, loads the weights strictly, runs it once and exports it into a
private folder. Nothing it writes is trusted here. The parent then:

1. holds the weights to the policy (format allowlist, pins, signers: the loader's gate),
2. checks the written graph with :func:`~safeload.integrations._onnx_check.check_onnx_graph`
   under the policy's ``onnx`` section (external data must stay inside the private folder),
3. runs it with onnxruntime (CPU provider only, no custom op library, one thread) on the
   same deterministic input and compares with the worker's torch output,
4. compares every initializer named like a state-dict key bit for bit with the weights the
   worker read back to us,
5. writes the very bytes it checked to ``output`` with an atomic rename.

A report exists only when all of that passed; otherwise nothing is left at ``output``.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import mmap
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from safeload.convert._report import ConversionReport
from safeload.errors import ConversionError, SafeloadError, SandboxError, UsageError
from safeload.policy import Limits, Policy

__all__ = ["export_onnx"]

logger = logging.getLogger(__name__)

_EXPORT_MODULE = "safeload.sandbox._export_task"
_ONNX_FILE = "model.onnx"  # the name the worker writes (``_export_task.ONNX_FILE``)
_MODEL_REF = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_INPUT_DTYPES = ("float32", "float64", "float16", "int64", "int32")
_MAX_INPUT_ELEMENTS = 1 << 26
"""Elements of all example inputs together: they cross as a file and run twice."""
_RTOL, _ATOL = 1e-4, 1e-5
_SEED = 0
_GiB = 1 << 30


def export_onnx(
    weights: Any,
    output: str | os.PathLike[str],
    *,
    model: str,
    input_shapes: Sequence[Sequence[int]],
    input_dtype: str = "float32",
    opset: int | None = None,
    policy: Policy | str | os.PathLike[str] | None = None,
    limits: Limits | None = None,
    overwrite: bool = False,
    timeout: float | None = None,
) -> ConversionReport:
    """Export ``model`` (``"package.module:factory"``) with ``weights`` to a checked ONNX file.

    ``weights`` is a state-dict file (torch zip, legacy torch, safetensors) or a
    ``VerifiedFile`` from ``safeload.verify`` (its verified bytes are the ones exported). The
    factory is called with no arguments in the sandbox worker and must return an
    ``nn.Module``; its module must be importable by a fresh ``python -I`` (an installed
    package). ``input_shapes`` gives one shape per model input; the example inputs are a
    seeded pattern of ``input_dtype``. The policy's ``sandbox.required_layers`` must all be
    applied. Raises :class:`~safeload.errors.RefusedError` subclasses for refused weights or
    graphs, :class:`~safeload.errors.SandboxError` when the worker (or the caller's code in
    it) fails, and :class:`~safeload.errors.ConversionError` when the ONNX output does not
    match torch's or the weights; nothing is left at ``output`` then.
    """
    from safeload.policy import audit_event, policy_gate
    from safeload.sandbox._runner import DEFAULT_TIMEOUT, run_in_sandbox

    started = time.monotonic()
    module = _check_model_ref(model)
    shapes = _check_shapes(input_shapes, input_dtype)
    if opset is not None and (type(opset) is not int or opset < 7):
        raise UsageError("opset must be an int >= 7", rule="convert.opset")
    out = Path(os.fspath(output))
    name = _name_of(weights)
    _check_output(out, weights, overwrite=overwrite)
    gate = policy_gate(policy, limits, source=weights)
    effective = gate.policy
    if opset is not None and not effective.onnx.opset_min <= opset <= effective.onnx.opset_max:
        raise UsageError(
            f"opset {opset} is outside the policy's onnx opset range",
            rule="onnx.opset",
            detail=f"{effective.onnx.opset_min}..{effective.onnx.opset_max}",
        )
    examples = _example_inputs(shapes, input_dtype)
    with contextlib.ExitStack() as stack:
        staging = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="safeload-onnx-")))
        source = stack.enter_context(_weights_file(weights, staging, name))
        inputs_file = staging / "inputs.safetensors"
        _save_inputs(examples, inputs_file)
        work = Path(tempfile.mkdtemp(prefix=".safeload-onnx-", dir=out.parent))
        stack.callback(shutil.rmtree, work, True)
        size = source.stat().st_size
        _check_format(source, name, gate.limits, effective)
        try:
            result = run_in_sandbox(
                "export_onnx",
                [source, inputs_file],
                limits=gate.limits,
                required_layers=effective.sandbox.required_layers,
                timeout=DEFAULT_TIMEOUT if timeout is None else timeout,
                framework="numpy",
                output_dir=work,
                params={"model": model, "inputs": len(shapes), "opset": opset, "name": name},
                preload=[_EXPORT_MODULE, module],
                sys_path=_caller_path(),
                memory_bytes=3 * _GiB + 4 * size,
                max_output_bytes=2 * size + 256 * (1 << 20),
            )
        except SafeloadError as exc:  # name the caller's file, not our resolved or staged copy
            if exc.path in (str(source), None):
                exc.path = name
            raise
        state, torch_out = _result_parts(result.value)
        fmt = str(result.meta.get("format"))
        with _mapped(source) as data:  # the policy's verdict on the weights, as load gives
            gate.check(
                data,
                name=name,
                fmt=fmt,
                sandboxed=True,
                shapes=[tuple(a.shape) for a in state.values()],
            )
        onnx_bytes = _read_private(work / _ONNX_FILE, gate.limits)
        from safeload.integrations._onnx_check import check_onnx_graph

        info = check_onnx_graph(onnx_bytes, policy=effective.onnx, model_dir=work, name=str(out))
        _compare_outputs(onnx_bytes, work, examples, torch_out, info.external_data, out)
        checked, folded, initializers = _compare_initializers(onnx_bytes, work, state, out)
        sha256 = _publish(onnx_bytes, work, info.external_data, out, overwrite=overwrite)
    notes = [
        f"torch output matched onnxruntime on {len(shapes)} seeded input(s) "
        f"(rtol {_RTOL}, atol {_ATOL})"
    ]
    if folded:
        notes.append(
            f"{folded} weight(s) were folded or renamed by the exporter (batch norm into "
            "conv, transposes); they are covered by the output comparison"
        )
    report = ConversionReport(
        source=name,
        output=str(out),
        target="onnx",
        source_format=fmt,
        tensors=initializers,
        checked=checked,
        bytes_written=len(onnx_bytes),
        sha256=sha256,
        sandboxed=True,
        layers=tuple(r.name for r in result.layers if r.applied),
        seconds=time.monotonic() - started,
        notes=tuple(notes),
    )
    audit_event(
        "convert",
        effective,
        path=name,
        output=str(out),
        target="onnx",
        format=fmt,
        sha256=sha256,
        tensors=report.tensors,
        sandboxed=True,
        model=model,
        layers=list(report.layers),
    )
    logger.debug("exported %s to %s: %d initializers checked", name, out, checked)
    return report


# -- before the worker -----------------------------------------------------------------------
def _check_model_ref(ref: object) -> str:
    if not isinstance(ref, str) or not _MODEL_REF.match(ref):
        raise UsageError(
            "model must be 'package.module:callable'",
            rule="convert.model",
            detail=f"got {ref!r}"[:200],
        )
    return ref.partition(":")[0]


def _check_shapes(shapes: object, dtype: str) -> list[tuple[int, ...]]:
    if dtype not in _INPUT_DTYPES:
        raise UsageError(
            f"input dtype {dtype!r} is not supported",
            rule="convert.input_dtype",
            detail=f"one of {', '.join(_INPUT_DTYPES)}",
        )
    if isinstance(shapes, str | bytes) or not isinstance(shapes, Sequence) or not shapes:
        raise UsageError(
            "input_shapes must list one shape per model input", rule="convert.input_shapes"
        )
    out = []
    for shape in shapes:
        if (
            isinstance(shape, str | bytes)
            or not isinstance(shape, Sequence)
            or not all(type(d) is int and d > 0 for d in shape)
        ):
            raise UsageError(
                f"bad input shape {shape!r}",
                rule="convert.input_shapes",
                detail="a sequence of positive ints, e.g. (1, 3, 224, 224)",
            )
        out.append(tuple(shape))
    if sum(int(np.prod(s)) for s in out) > _MAX_INPUT_ELEMENTS:
        raise UsageError(
            "example inputs are too large",
            rule="convert.input_shapes",
            detail=f"at most {_MAX_INPUT_ELEMENTS} elements in all",
        )
    return out


def _example_inputs(shapes: list[tuple[int, ...]], dtype: str) -> list[np.ndarray[Any, Any]]:
    """A seeded pattern (not zeros: zeros hide wrong weights behind ReLUs and biases)."""
    rng = np.random.default_rng(_SEED)
    if dtype.startswith("int"):
        return [rng.integers(0, 8, size=s).astype(dtype) for s in shapes]
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _save_inputs(examples: list[np.ndarray[Any, Any]], path: Path) -> None:
    import safetensors.numpy

    safetensors.numpy.save_file({f"input_{i}": a for i, a in enumerate(examples)}, str(path))


def _name_of(weights: object) -> str:
    if isinstance(weights, str | os.PathLike):
        return os.fsdecode(os.fspath(weights))
    for attr in ("path", "name"):
        value = getattr(weights, attr, None)
        if isinstance(value, str) and value:
            return value
    return "<weights>"


def _check_output(out: Path, weights: object, *, overwrite: bool) -> None:
    if not out.parent.is_dir():
        raise ConversionError(
            "output folder does not exist",
            path=str(out),
            rule="convert.output",
            detail=f"create {out.parent} first",
        )
    if os.path.lexists(out):
        if out.is_dir() and not out.is_symlink():
            raise ConversionError("output is a folder", path=str(out), rule="convert.output")
        if isinstance(weights, str | os.PathLike) and _same_file(out, Path(os.fspath(weights))):
            raise ConversionError(
                "output is the weights file",
                path=str(out),
                rule="convert.output",
                detail="write the ONNX file next to the weights, not over them",
            )
        if not overwrite:
            raise ConversionError(
                "output already exists",
                path=str(out),
                rule="convert.overwrite",
                detail="pass overwrite=True (--overwrite) to replace it",
            )


@contextlib.contextmanager
def _weights_file(weights: object, staging: Path, name: str) -> Iterator[Path]:
    """A path the worker may open: the caller's file, or a private copy of verified bytes."""
    if isinstance(weights, str | os.PathLike):
        # The worker refuses links (O_NOFOLLOW); the caller named this file, so resolve it.
        yield Path(os.path.realpath(os.fspath(weights)))
        return
    from safeload.signing import VerifiedFile

    if not isinstance(weights, VerifiedFile):
        raise UsageError(
            "weights must be a path or a VerifiedFile from safeload.verify", rule="convert.source"
        )
    path = staging / "weights"
    view = memoryview(weights.buffer()).cast("B")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
    except OSError as exc:
        raise SandboxError(
            "cannot stage the weights for the sandbox worker",
            path=name,
            rule="sandbox.inputs",
            detail=str(exc),
        ) from None
    yield path


@contextlib.contextmanager
def _mapped(path: Path) -> Iterator[memoryview]:
    with path.open("rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            yield memoryview(b"")
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                yield view
            finally:
                view.release()


def _check_format(source: Path, name: str, limits: Limits, policy: Policy) -> None:
    """The format allowlist, from the header alone, before the worker runs any code."""
    from safeload.errors import PolicyViolation
    from safeload.formats import detect

    with _mapped(source) as data:
        fmt = detect(data, name=name, limits=limits).format.value
    if fmt not in policy.formats.allowed:
        raise PolicyViolation(f"refused by policy: format {fmt!r} is not allowed", path=name,
                              rule="formats.allowed",
                              detail=f"allowed: {', '.join(policy.formats.allowed)}")  # fmt: skip


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


# -- after the worker ------------------------------------------------------------------------
def _result_parts(
    value: object,
) -> tuple[dict[str, np.ndarray[Any, Any]], list[np.ndarray[Any, Any]]]:
    """The worker's answer is untrusted: exactly a state dict of arrays and a list of arrays."""
    if not isinstance(value, Mapping) or set(value) != {"state", "outputs"}:
        raise SandboxError("the export worker sent a malformed result", rule="sandbox.result")
    state, outputs = value["state"], value["outputs"]
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items()
    ):
        raise SandboxError("the export worker sent a malformed state dict", rule="sandbox.result")
    if (
        not isinstance(outputs, list)
        or not outputs
        or not all(isinstance(a, np.ndarray) for a in outputs)
    ):
        raise SandboxError("the export worker sent malformed outputs", rule="sandbox.result")
    return dict(state), list(outputs)


def _read_private(path: Path, limits: Limits) -> bytes:
    """Read what the worker wrote, once: never through a link, only a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise SandboxError(
            "the export worker wrote no ONNX file",
            path=str(path),
            rule="sandbox.result",
            detail=exc.strerror,
        ) from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limits.max_file_bytes:
            raise SandboxError(
                "the export worker wrote something other than a model file",
                path=str(path),
                rule="sandbox.result",
            )
        return f.read(st.st_size + 1)


def _session(onnx_bytes: bytes, work: Path, external: tuple[str, ...]) -> Any:
    """onnxruntime, hardened: CPU provider only, no custom op library, no fallback."""
    import onnxruntime as ort

    from safeload.integrations._onnx_session import (
        hardened_session_options,
        inference_session_class,
    )

    options = hardened_session_options(intra_op_num_threads=1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # With external data, ORT must find the side files: the checked ones, in the private folder.
    model: bytes | str = str(work / _ONNX_FILE) if external else onnx_bytes
    try:
        session = inference_session_class()(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT raises its own exception family
        raise ConversionError(
            "onnxruntime cannot load the exported model",
            rule="convert.onnx",
            detail=f"{type(exc).__name__}: {exc}"[:500],
        ) from None
    if hasattr(session, "disable_fallback"):
        session.disable_fallback()
    return session


def _compare_outputs(
    onnx_bytes: bytes,
    work: Path,
    examples: list[np.ndarray[Any, Any]],
    expected: list[np.ndarray[Any, Any]],
    external: tuple[str, ...],
    out: Path,
) -> None:
    session = _session(onnx_bytes, work, external)
    names = [i.name for i in session.get_inputs()]
    if len(names) != len(examples):
        raise ConversionError(
            "the exported model takes a different number of inputs",
            path=str(out),
            rule="convert.onnx_inputs",
            detail=f"{len(names)} in ONNX, {len(examples)} given",
        )
    try:
        got = session.run(None, dict(zip(names, examples, strict=True)))
    except Exception as exc:  # noqa: BLE001
        raise ConversionError(
            "onnxruntime failed to run the exported model",
            path=str(out),
            rule="convert.onnx_run",
            detail=f"{type(exc).__name__}: {exc}"[:500],
        ) from None
    if len(got) != len(expected):
        raise ConversionError(
            "the exported model gives a different number of outputs",
            path=str(out),
            rule="convert.onnx_outputs",
            detail=f"{len(got)} from ONNX, {len(expected)} from torch",
        )
    for i, (ort_out, torch_out) in enumerate(zip(got, expected, strict=True)):
        ort_arr = np.asarray(ort_out)
        if ort_arr.shape != torch_out.shape or not np.allclose(
            ort_arr, torch_out, rtol=_RTOL, atol=_ATOL, equal_nan=True
        ):
            worst = (
                float(np.max(np.abs(ort_arr.astype(np.float64) - torch_out)))
                if ort_arr.shape == torch_out.shape
                else float("nan")
            )
            raise ConversionError(
                f"ONNX output {i} differs from torch's",
                path=str(out),
                rule="convert.onnx_outputs",
                detail=f"shapes {ort_arr.shape} vs {torch_out.shape}; largest difference {worst}",
            )


def _compare_initializers(
    onnx_bytes: bytes, work: Path, state: Mapping[str, np.ndarray[Any, Any]], out: Path
) -> tuple[int, int, int]:
    """Initializers named like a weight must be that weight, bit for bit.

    -> (checked, weights not found by name, initializers in the main graph)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load_model_from_string(onnx_bytes)
    checked = 0
    for init in model.graph.initializer:
        weight = state.get(init.name)
        if weight is None:
            continue
        try:
            array = numpy_helper.to_array(init, base_dir=str(work))
        except Exception as exc:  # noqa: BLE001 - a tensor onnx cannot decode: fail closed
            raise ConversionError(
                f"initializer {init.name!r} cannot be decoded",
                path=str(out),
                rule="convert.onnx_weights",
                detail=f"{type(exc).__name__}: {exc}"[:300],
            ) from None
        if (
            array.shape != weight.shape
            or array.dtype.itemsize != weight.dtype.itemsize
            or np.ascontiguousarray(array).tobytes() != np.ascontiguousarray(weight).tobytes()
        ):
            raise ConversionError(
                f"initializer {init.name!r} differs from the weight",
                path=str(out),
                rule="convert.onnx_weights",
                detail=f"{array.dtype}{array.shape} vs {weight.dtype}{weight.shape}",
            )
        checked += 1
    return checked, len(state) - checked, len(model.graph.initializer)


def _publish(
    onnx_bytes: bytes, work: Path, external: tuple[str, ...], out: Path, *, overwrite: bool
) -> str:
    """Write the checked bytes to ``out`` atomically; move checked side files next to it."""
    parent = out.parent
    for rel in external:
        target = parent / rel
        if os.path.lexists(target) and not overwrite:
            raise ConversionError(
                "an external data file would overwrite a file",
                path=str(target),
                rule="convert.overwrite",
            )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(onnx_bytes)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # mkstemp's 0o600 would surprise whoever serves the model
        for rel in external:  # side files first: the model must never point at nothing
            target = parent / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            (work / rel).replace(target)
        if overwrite:
            tmp.replace(out)
        else:
            try:
                os.link(tmp, out)  # fails if something appeared at ``out`` meanwhile
            finally:
                tmp.unlink(missing_ok=True)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ConversionError(
            "cannot write output", path=str(out), rule="convert.write", detail=str(exc)
        ) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return hashlib.sha256(onnx_bytes).hexdigest()


def _caller_path() -> list[str]:
    """Where this process finds the factory's module, for the worker (``python -I`` sees
    neither ``PYTHONPATH`` nor the current folder): this process's own ``sys.path``."""
    out: list[str] = []
    for entry in sys.path:
        folder = Path(entry or os.curdir).resolve()
        if folder.is_dir() and str(folder) not in out:
            out.append(str(folder))
    return out

"""Worker side of ONNX export: build the caller's model over untrusted weights, export it.

Export is the one conversion that must run framework code (torch's tracer, the caller's
``nn.Module``) while untrusted weights are in memory, so it only ever runs here, in the
sandbox worker. The parent names this module in ``run_in_sandbox(preload=...)``, together
with the caller's model module, so both are imported *before* the first layer: afterwards
Landlock would refuse to read their source files. Importing this module imports torch and
runs one tiny export into memory, so that everything torch imports lazily on a first export
is already loaded when the worker is locked down.

What the weights can do here: nothing but be tensors. They are read by safeload's own
allowlist reader (no pickle, no torch.load), loaded into the model with ``strict=True``, and
the worker can at most write under its output folder. The *caller's* code is trusted to be
the caller's, but it runs under the same layers: a factory that tries to start a process or
open a socket gets ``EPERM`` from seccomp, and the refusal says so.
"""

from __future__ import annotations

import errno
import io
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
import torch
import torch.onnx
import torch.onnx.utils

from safeload.errors import FormatError, SafeloadError, SandboxError, UsageError
from safeload.formats import _read
from safeload.formats._types import TensorSpec

__all__ = ["ONNX_FILE", "task_export_onnx"]

ONNX_FILE = "model.onnx"
"""The file the worker writes in its output folder (torch may add external data files)."""


@contextmanager
def _sandboxed(step: str) -> Iterator[None]:
    """Name the layer that stopped the caller's code, instead of a bare OSError."""
    try:
        yield
    except (SafeloadError, MemoryError, RecursionError):
        raise  # refusals as they are; the worker reports the last two as limits
    except OSError as exc:
        if exc.errno == errno.EPERM:
            raise SandboxError(
                f"{step} was stopped by the sandbox",
                rule="sandbox.seccomp",
                detail=f"a system call outside the seccomp allowlist was refused (EPERM): {exc}",
            ) from exc
        if exc.errno == errno.EACCES:
            raise SandboxError(
                f"{step} was stopped by the sandbox",
                rule="sandbox.landlock",
                detail=f"Landlock refused a file access outside the inputs and output: {exc}",
            ) from exc
        raise SandboxError(
            f"{step} failed", rule="onnx_export.task", detail=f"{type(exc).__name__}: {exc}"[:500]
        ) from exc
    except Exception as exc:
        raise SandboxError(
            f"{step} failed", rule="onnx_export.task", detail=f"{type(exc).__name__}: {exc}"[:500]
        ) from exc


def _factory(ref: object) -> Callable[[], Any]:
    """``"package.module:callable"``, from a module the parent asked the worker to preload."""
    if not isinstance(ref, str) or ref.count(":") != 1:
        raise UsageError("model must be 'package.module:callable'", rule="onnx_export.model")
    module_name, _, attr = ref.partition(":")
    module = sys.modules.get(module_name)
    if module is None:  # importing now would be refused by Landlock: the parent preloads it
        raise SandboxError(
            f"model module {module_name!r} was not preloaded", rule="onnx_export.model"
        )
    target: Any = module
    for part in attr.split("."):
        target = getattr(target, part, None)
    if not callable(target):
        raise UsageError(f"{ref!r} is not a callable", rule="onnx_export.model")
    return target  # type: ignore[no-any-return]


def _state_dict(ctx: Any, name: str) -> tuple[dict[str, torch.Tensor], dict[str, TensorSpec], str]:
    """The weights through safeload's reader: a flat ``{name: tensor}`` mapping or a refusal."""
    parsed = _read._parse(ctx.data(0), name=name, limits=ctx.limits)
    fmt = str(getattr(parsed.format, "value", parsed.format))
    specs = parsed.value
    if not isinstance(specs, Mapping) or not all(
        isinstance(k, str) and isinstance(v, TensorSpec) for k, v in specs.items()
    ):
        raise FormatError(
            "weights are not a flat state dict of tensors",
            path=name,
            rule="onnx_export.state_dict",
            detail="export needs {parameter name: tensor}",
        )
    specs = dict(specs)  # the materialiser may fill the parsed mapping in place
    with _read._fail_closed(name, "tensors could not be built from this file"):
        built = _read._build(parsed, limits=ctx.limits, name=name, framework="torch")
    ctx.storages = parsed.storages
    return dict(built.value), specs, fmt


def _load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise FormatError(
            "weights do not match the model's parameters",
            path=name,
            rule="onnx_export.state_dict",
            detail=f"missing: {missing[:8]}; unexpected: {extra[:8]}",
        )
    with _sandboxed("loading the weights into the model"):
        model.load_state_dict(state, strict=True)


def _outputs(value: object) -> list[np.ndarray[Any, Any]]:
    items = value if isinstance(value, tuple | list) else (value,)
    if not items or not all(isinstance(t, torch.Tensor) for t in items):
        raise SandboxError(
            "the model must return a tensor or a tuple of tensors", rule="onnx_export.outputs"
        )
    out = []
    for tensor in items:
        t = tensor.detach().contiguous()
        if t.dtype == torch.bfloat16:
            t = t.float()
        out.append(np.ascontiguousarray(t.numpy()))
    return out


def task_export_onnx(ctx: Any) -> tuple[object, dict[str, Any]]:
    """Input 0: the weights; input 1: the example inputs (safetensors, from the parent)."""
    params = ctx.params
    name = str(params.get("name") or ctx.names[0])
    if ctx.output_dir is None:
        raise SandboxError("export needs an output folder", rule="onnx_export.output")
    torch.set_num_threads(1)
    state, specs, fmt = _state_dict(ctx, name)
    examples = safetensors.numpy.load(bytes(ctx.data(1)))
    count = int(params["inputs"])
    args = tuple(torch.from_numpy(examples[f"input_{i}"].copy()) for i in range(count))
    factory = _factory(params.get("model"))
    with _sandboxed("building the model"):
        model = factory()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(
            f"{params.get('model')!r} did not return a torch.nn.Module", rule="onnx_export.model"
        )
    _load_strict(model, state, name)
    model.eval()
    with _sandboxed("running the model"), torch.no_grad():
        reference = _outputs(model(*args))
    out_path = Path(ctx.output_dir) / ONNX_FILE
    with _sandboxed("torch.onnx.export"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's DeprecationWarning
        torch.onnx.export(
            model,
            args,
            str(out_path),
            dynamo=False,
            opset_version=params.get("opset"),
            do_constant_folding=True,
            export_params=True,
            input_names=[f"input_{i}" for i in range(count)],
            output_names=[f"output_{i}" for i in range(len(reference))],
        )
    value = {"state": specs, "outputs": reference}
    return value, {"format": fmt, "onnx": ONNX_FILE, "torch": torch.__version__}


def _warm_up() -> None:
    """One tiny export into memory, before any layer: torch imports the rest of its exporter
    (symbolic tables, onnx helpers) on first use, and after Landlock it could not."""
    torch.set_num_threads(1)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3),
        torch.nn.BatchNorm2d(2),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(8, 2),
        torch.nn.Softmax(dim=-1),
    ).eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        sink = io.BytesIO()  # the legacy exporter writes to file objects; the stubs say paths
        torch.onnx.export(
            model, (torch.zeros(1, 1, 4, 4),), sink,  # type: ignore[arg-type]
            dynamo=False, do_constant_folding=True,
        )  # fmt: skip


_warm_up()

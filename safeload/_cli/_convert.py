"""``safeload convert SOURCE -o OUTPUT``: a checkpoint to a checked safetensors file (or ONNX).

The sandbox is on by default on Linux: a file someone wants converted is usually a file no one
trusts yet. Exit codes as everywhere: 0 written and checked, 1 the input was refused, 2 an
error (the output exists, a value safetensors cannot hold...). No output is left on failure.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import click

import safeload
from safeload._cli._progress import LazyBar

if TYPE_CHECKING:

    from safeload.convert import ConversionReport

__all__ = ["convert"]

logger = logging.getLogger(__name__)

_BAR_AFTER_BYTES = 64 << 20


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not like 1,3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise click.BadParameter(f"{text!r}: every dimension must be a positive integer")
    return dims


def _render_text(report: ConversionReport) -> str:
    lines = [
        f"output: {report.output}",
        f"sha256: {report.sha256}",
        f"format: {report.source_format} -> {report.target}",
        f"tensors checked: {report.checked}/{report.tensors}",
        f"bytes written: {report.bytes_written}",
    ]
    if report.sandboxed:
        lines.append(f"sandbox: yes ({', '.join(report.layers) or 'no layer reported'})")
    else:
        lines.append("sandbox: no")
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


@click.command("convert")
@click.argument("source", type=click.Path(dir_okay=False, path_type=str))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="File to write (written under a temporary name, checked, then renamed).",
)
@click.option(
    "--to",
    "target",
    type=click.Choice(["safetensors", "onnx"]),
    default="safetensors",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    default=None,
    help="Policy file: its limits and rules apply to reading SOURCE.",
)
@click.option(
    "--sandbox/--no-sandbox",
    default=sys.platform == "linux",
    show_default="on Linux",
    help="Parse SOURCE in the sandboxed worker (a policy that requires it refuses --no-sandbox).",
)
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("--model", default=None, help="ONNX only: MODULE:FACTORY building the nn.Module.")
@click.option(
    "--input-shape",
    "input_shapes",
    multiple=True,
    help="ONNX only: an input's shape, like 1,3,224,224 (repeat for several inputs).",
)
@click.option("--opset", type=int, default=None, help="ONNX only: the opset to export to.")
@click.option(
    "--format",
    "fmt",
    envvar="SAFELOAD_CONVERT_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
def convert(
    source: str,
    output: str,
    target: str,
    policy: str | None,
    sandbox: bool,
    overwrite: bool,
    model: str | None,
    input_shapes: tuple[str, ...],
    opset: int | None,
    fmt: str,
) -> None:
    """Convert SOURCE to safetensors (checked tensor by tensor) or ONNX, running nothing in it."""
    try:
        report = _run(source, output, target, policy, sandbox, overwrite, model, input_shapes,
                      opset)  # fmt: skip
    except safeload.SafeloadError as exc:
        if fmt == "json":
            click.echo(json.dumps({"error": exc.to_dict()}, indent=2))
        raise
    except click.ClickException:
        raise
    except Exception as exc:  # a bug: say so without a traceback, never as success
        logger.debug("convert failed unexpectedly on %s", source, exc_info=True)
        error = safeload.SafeloadError(
            "internal error while converting", path=source, rule="convert.internal",
            detail=f"{type(exc).__name__}: {exc}",
        )  # fmt: skip
        if fmt == "json":
            click.echo(json.dumps({"error": error.to_dict()}, indent=2))
        raise error from exc
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(_render_text(report), nl=False)


def _run(
    source: str,
    output: str,
    target: str,
    policy: str | None,
    sandbox: bool,
    overwrite: bool,
    model: str | None,
    input_shapes: tuple[str, ...],
    opset: int | None,
) -> ConversionReport:
    if target == "onnx":
        if model is None or not input_shapes:
            raise click.UsageError("--to onnx needs --model MODULE:FACTORY and --input-shape")
        from safeload.convert import export_onnx  # only this branch pays for torch.onnx

        kwargs: dict[str, Any] = {"opset": opset} if opset is not None else {}
        result: ConversionReport = export_onnx(
            source, output, model=model, input_shapes=[_shape(s) for s in input_shapes],
            policy=policy, overwrite=overwrite, **kwargs,
        )  # fmt: skip
        return result
    if model is not None or input_shapes or opset is not None:
        raise click.UsageError("--model, --input-shape and --opset are for --to onnx")
    interactive = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    with LazyBar(interactive, "checking tensors", after_total=_BAR_AFTER_BYTES) as bar:
        return safeload.to_safetensors(
            source, output, policy=policy, sandbox=sandbox, overwrite=overwrite,
            progress=bar.update,
        )  # fmt: skip

"""``safeload inspect FILE``: what a model file holds, without reading tensor data.

The table comes from :func:`safeload.inspect`, which validates the whole file (container, pickle
program, every tensor's bounds) exactly as loading would, so a file that prints a table here is
a file ``safeload.load`` accepts under the same limits. A refused file exits 1 with the reason.

A ``.onnx`` file is not a tensor container safeload reads: it gets the ONNX graph check
(:func:`safeload.check_onnx_graph` under the effective policy's ``onnx`` section) and prints
what that saw, which is what ``safeload.onnx_session`` would check before running it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

import click

import safeload
from safeload._cli._render import render_inspect

__all__ = ["inspect_cmd"]

logger = logging.getLogger(__name__)


@click.command("inspect")
@click.argument("file", type=click.Path(dir_okay=True, path_type=str))
@click.option(
    "--format",
    "fmt",
    envvar="SAFELOAD_INSPECT_FORMAT",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
def inspect_cmd(file: str, fmt: str) -> None:
    """Print a model file's tensor table (name, dtype, shape, bytes, offset)."""
    try:
        if Path(file).is_dir():
            raise safeload.SourceError(
                "is a folder, not a file", path=file, rule="inspect.path",
                detail="inspect reads one file; use `safeload scan` for folders",
            )  # fmt: skip
        if file.endswith(".onnx"):
            graph = safeload.check_onnx_graph(file, policy=safeload.effective_policy().onnx)
            click.echo(_render_onnx(graph, fmt), nl=False)
            return
        info = safeload.inspect(file)
    except safeload.SafeloadError as exc:
        if fmt == "json":
            click.echo(json.dumps({"error": exc.to_dict()}, indent=2))
        raise
    except Exception as exc:  # a reader bug: say so without a traceback, never as success
        logger.debug("inspect failed unexpectedly on %s", file, exc_info=True)
        raise safeload.SafeloadError(
            "internal error while reading", path=file, rule="inspect.internal",
            detail=f"{type(exc).__name__}: {exc}",
        ) from exc  # fmt: skip
    color = fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    click.echo(render_inspect(info, fmt, color=color), nl=False)


def _render_onnx(info: safeload.OnnxGraphInfo, fmt: str) -> str:
    data = {"format": "onnx", **dataclasses.asdict(info)}
    if fmt == "json":
        return json.dumps(data, indent=2) + "\n"
    lines = [
        "format: onnx",
        f"ir_version: {info.ir_version}",
        "opsets: " + ", ".join(f"{d or 'ai.onnx'} {v}" for d, v in sorted(info.opsets.items())),
        f"nodes: {info.nodes} in {info.graphs} graph(s), {info.functions} function(s)",
        f"initializers: {info.initializers} ({info.initializer_bytes} bytes)",
        # repr: names come from the file, and must not reach a terminal as escape sequences
        "external data: " + (", ".join(repr(n) for n in info.external_data) or "none"),
        f"producer: {info.producer!r}",
        "operators: " + ", ".join(info.op_types),
    ]
    return "\n".join(lines) + "\n"

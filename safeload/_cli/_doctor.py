"""``safeload doctor``: which sandbox layers this machine gives the worker, and why not the rest.

It starts one probe worker that applies every layer for real, so what it prints is what a
sandboxed load would get here. ``--require LAYER`` turns it into a CI gate: exit 1 when a
layer a policy would require is missing.
"""

from __future__ import annotations

import json

import click

import safeload

__all__ = ["doctor"]


@click.command("doctor")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--require",
    "required",
    multiple=True,
    type=click.Choice(list(safeload.SANDBOX_LAYERS)),
    help="Exit 1 unless this layer is applied (repeatable).",
)
@click.option("--no-probe", is_flag=True, help="Only detect; do not start a probe worker.")
def doctor(fmt: str, required: tuple[str, ...], no_probe: bool) -> None:
    """Report which sandbox layers this machine supports."""
    report = safeload.doctor(probe=not no_probe)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        click.echo(report.render_text())
    missing = [name for name in required if name not in report.supported]
    if missing:
        click.echo(f"safeload: required sandbox layer(s) missing: {', '.join(missing)}", err=True)
        raise SystemExit(1)

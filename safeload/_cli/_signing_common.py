"""Pieces ``safeload sign`` and ``safeload verify`` share: options, progress, error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from safeload.errors import SafeloadError

__all__ = ["common_options", "fail", "hashing_progress"]

F = TypeVar("F", bound=Callable[..., Any])


def common_options(func: F) -> F:
    """Options every sign/verify command takes (also readable as SAFELOAD_* variables)."""
    opts = [
        click.option("--signature", "signature", multiple=True, type=click.Path(dir_okay=False),
                     help="Signature file (default MODEL_DIR/model.sig); repeat for several."),
        click.option("--trust-config", type=click.Path(exists=True, dir_okay=False),
                     help="Sigstore ClientTrustConfig JSON (default: embedded production root)."),
        click.option("--offline/--online", default=True, show_default=True,
                     help="Sigstore: use the local trust root, never refresh it over the network."),
        click.option("--allow-ca-leaf", is_flag=True, default=None,
                     help="Accept a signing certificate that is itself a CA."),
        click.option("--policy", "policy", type=click.Path(exists=True, dir_okay=False),
                     help="Policy file (default: the effective policy)."),
        click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text",
                     envvar="SAFELOAD_FORMAT",
                     show_default=True),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


@contextmanager
def hashing_progress() -> Iterator[Callable[[int, int], None] | None]:
    """A rich progress bar on an interactive stderr; ``None`` (no output) otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TransferSpeedColumn,
    )

    bar = Progress("hashing", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                   console=Console(stderr=True), transient=True)
    task = bar.add_task("hashing", total=None)

    def update(done: int, total: int) -> None:
        bar.update(task, completed=done, total=total)

    with bar:
        yield update


def fail(exc: SafeloadError, fmt: str) -> None:
    """Report ``exc`` in the chosen format and exit with its code (1 invalid, 2 error)."""
    if fmt == "json":
        click.echo(json.dumps({"valid": False, "error": exc.to_dict()}, indent=2))
    click.echo(f"safeload: {exc.diagnostics()}", err=True)
    sys.exit(exc.exit_code)

"""``safeload scan PATH...``: a verdict per model file, for people and for CI.

Exit codes: 0 every scanned file is clean, 1 something was refused, 2 an error (missing path,
unreadable file, bad policy), 3 nothing was scanned. The progress bar appears only on an
interactive stderr and only once a scan proves long, so pipes and CI logs stay clean.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import click

import safeload
from safeload._cli._render import render

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

__all__ = ["scan"]

_PROGRESS_AFTER_SECONDS = 1.0
_PROGRESS_AFTER_FILES = 50


class _LazyProgress:
    """A rich progress bar that only appears once the scan is long enough to need one."""

    def __init__(self, enabled: bool) -> None:
        self._enabled = enabled
        self._started = time.monotonic()
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def __enter__(self) -> _LazyProgress:
        return self

    def __call__(self, done: int, total: int, path: str) -> None:
        if not self._enabled:
            return
        if self._bar is None:
            long = total > _PROGRESS_AFTER_FILES
            slow = time.monotonic() - self._started > _PROGRESS_AFTER_SECONDS
            if not (long or slow):
                return
            from rich.console import Console
            from rich.progress import Progress

            bar = Progress(console=Console(stderr=True), transient=True)
            bar.start()
            self._task = bar.add_task("scanning", total=total)
            self._bar = bar
        assert self._task is not None
        self._bar.update(self._task, completed=done, description=Path(path).name[:40])

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()


@click.command("scan")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--format",
    "fmt",
    envvar="SAFELOAD_SCAN_FORMAT",
    type=click.Choice(["text", "json", "sarif"]),
    default="text",
    show_default=True,
    help="Report format (SARIF 2.1.0 for code scanning).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True, path_type=str),
    default=None,
    help="Write the report to this file instead of stdout.",
)
@click.option(
    "--policy",
    type=click.Path(dir_okay=False, exists=True, path_type=str),
    default=None,
    help="Policy file: its limits apply, and each clean file is decided as load would.",
)
@click.option(
    "--sandbox/--no-sandbox",
    default=None,
    help="Parse each file in its own sandbox worker (default: as the policy's sandbox.mode "
    "says; without a policy, in-process). See `safeload doctor` for the layers.",
)
def scan(
    paths: tuple[str, ...], fmt: str, output: str | None, policy: str | None, sandbox: bool | None
) -> None:
    """Scan model files and folders without running them.

    Every file is identified by its content and validated by safeload's readers; nothing in a
    file is imported or executed. Text and configuration files are skipped (see docs/cli.md).
    """
    interactive = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
    with _LazyProgress(interactive) as progress:
        report = safeload.scan(list(paths), policy=policy, progress=progress, sandbox=sandbox)
    color = (
        output is None and fmt == "text" and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    )
    text = render(report, fmt, color=color)
    if output is None:
        click.echo(text, nl=False)
    else:
        Path(output).write_text(text, encoding="utf-8")
        click.echo(f"safeload: wrote {fmt} report to {output}", err=True)
    click.get_current_context().exit(report.exit_code)

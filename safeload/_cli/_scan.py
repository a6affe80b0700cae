"""``safeload scan PATH...``: a verdict per model file, for people and for CI.

Exit codes: 0 every scanned file is clean, 1 something was refused, 2 an error (missing path,
unreadable file, bad policy), 3 nothing was scanned. The progress bar appears only on an
interactive stderr and only once a scan proves long, so pipes and CI logs stay clean.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

import safeload
from safeload._cli._progress import LazyBar
from safeload._cli._render import render

__all__ = ["scan"]

_PROGRESS_AFTER_FILES = 50


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
    with LazyBar(interactive, "scanning", after_total=_PROGRESS_AFTER_FILES) as bar:

        def progress(done: int, total: int, path: str) -> None:
            bar.update(done, total, Path(path).name[:40])

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

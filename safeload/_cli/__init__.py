"""The ``safeload`` command line: a thin shell over the public API.

Subcommands live in their own modules and are imported only when invoked, so ``safeload
--help`` stays fast and a broken optional dependency only breaks the command that needs it.
Every :class:`~safeload.errors.SafeloadError` becomes a diagnostic on stderr and its exit code
(0 clean, 1 refused/violation, 2 error, 3 nothing scanned); nothing else escapes as a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from safeload.errors import SafeloadError

__all__ = ["main"]

# name -> "module:attribute" of a click.Command; imported on first use.
_COMMANDS: dict[str, tuple[str, str]] = {
    "scan": ("safeload._cli._scan:scan", "Scan model files and folders without running them."),
    "inspect": ("safeload._cli._inspect:inspect_cmd", "Print a model file's tensor table."),
    "policy": ("safeload._cli._policy:policy", "Validate, show, explain and export policies."),
    "sign": ("safeload._cli._sign:sign", "Sign a model folder (OMS format)."),
    "verify": ("safeload._cli._verify:verify", "Verify a model folder's signature."),
    "doctor": ("safeload._cli._doctor:doctor", "Report which sandbox layers this machine has."),
    "convert": ("safeload._cli._convert:convert", "Convert a checkpoint to checked safetensors."),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = _COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, _, attr = entry[0].partition(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text without importing every subcommand module.
        rows = [(name, _COMMANDS[name][1]) for name in sorted(_COMMANDS)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SafeloadError as exc:
            click.echo(f"safeload: error: {exc.diagnostics()}", err=True)
            ctx.exit(exc.exit_code)


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "SAFELOAD"},
)
@click.version_option(package_name="safeload")
def cli() -> None:
    """safeload: verified, data-only loading of ML model files."""
    # The CLI, not the library, decides where log lines go. sigstore warns on every offline
    # verification that its trust root will not be refreshed: expected, since --offline asked
    # for exactly that, so only its errors reach the terminal.
    logging.getLogger("sigstore").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    """Console entry point; returns the process exit code instead of raising SystemExit."""
    try:
        cli.main(args=argv, prog_name="safeload", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

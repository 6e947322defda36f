"""Shared pieces of the command-line interface: settings loading and error exits."""

from __future__ import annotations

from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from worker.config import Settings, SettingsError, load_settings

ERROR_CONSOLE = Console(stderr=True)


class CliState:
    """Options of the root command, shared with every subcommand through ``ctx.obj``."""

    def __init__(self, config_file: Path | None) -> None:
        self.config_file = config_file
        self._settings: Settings | None = None

    def settings(self, **overrides: object) -> Settings:
        """Return the settings, loaded once; a bad value exits with the message."""
        if self._settings is None or overrides:
            try:
                self._settings = load_settings(self.config_file, **overrides)
            except SettingsError as exc:
                fail(str(exc))
        return self._settings


def state_of(ctx: typer.Context) -> CliState:
    """Return the root command's state, creating it for commands run on their own."""
    root = ctx.find_root()
    if not isinstance(root.obj, CliState):
        root.obj = CliState(None)
    return root.obj


def settings_of(ctx: typer.Context, **overrides: object) -> Settings:
    """Return the settings of this invocation."""
    return state_of(ctx).settings(**overrides)


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``message`` as one error line on stderr and exit with ``code``."""
    # Escaped because messages quote setting values, and rich reads "[word]" as a style tag.
    ERROR_CONSOLE.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)

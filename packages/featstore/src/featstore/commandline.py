"""What both commands (featstore, trainer) do alike on the command line: every error is one line."""

from __future__ import annotations

import sys
from typing import Any

import click


class OneLineErrors(click.Group):
    """Option errors as one `error:` line and exit 2, like every other error (click's own take three lines)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        kwargs["standalone_mode"] = False
        try:
            return super().main(*args, **kwargs)
        except click.ClickException as error:
            click.echo(f"error: {error.format_message()}", err=True)
            sys.exit(error.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            sys.exit(130)

"""The typer application every sub-command registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="psfkit",
    help="Find stars, fit their PSF, and measure them with honest uncertainties.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit to raise (code 2)."""
    typer.echo(f"psfkit: error: {message}", err=True)
    return typer.Exit(code=2)

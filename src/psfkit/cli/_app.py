"""The typer application every sub-command registers on.

Start-up matters for a command line: ``psfkit --help`` must answer at once.  So the help
is typer's plain one (``rich_markup_mode=None``: typer would otherwise import rich and
markdown-it to draw boxes, a few hundred milliseconds), and :func:`psfkit.cli.main`
imports only the module of the command it runs (:data:`COMMANDS`), and options of plain types
are converted without pydantic (:mod:`psfkit.cli._coercion`).
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from psfkit.cli._coercion import install

install()  # options of plain types converted without pydantic (start-up, see cli._coercion)

#: command name -> the module of psfkit.cli that defines it, in the order ``psfkit --help`` lists them
COMMANDS = {
    "fit": "fit",
    "demo": "demo",
    "find": "find",
    "average": "find",
    "compare": "compare",
    "phot": "compare",
    "view": "view",
    "seq": "seq",
    "info": "info",
    "psf": "psf",
    "inspect": "inspect",
    "focus": "inspect",
}


class _Commands(TyperGroup):
    """The commands in :data:`COMMANDS` order, whichever module was imported first."""

    def list_commands(self, ctx):  # noqa: D102
        names = super().list_commands(ctx)
        order = {name: i for i, name in enumerate(COMMANDS)}
        return sorted(names, key=lambda n: order.get(n, len(order)))


app = typer.Typer(
    name="psfkit",
    help="Find stars, fit their PSF, and measure them with honest uncertainties.",
    cls=_Commands,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _psfkit() -> None:
    """Find stars, fit their PSF, and measure them with honest uncertainties."""
    # a callback keeps the app a group of commands when only one command module is imported
    # (typer runs a lone command as the whole program: `psfkit view x.fits` would break)


def fail(message: str) -> typer.Exit:
    """Print a one-line error and return the exit to raise (code 2)."""
    typer.echo(f"psfkit: error: {message}", err=True)
    return typer.Exit(code=2)

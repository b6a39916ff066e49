"""The ``psfkit`` command: thin faces over the library (no science here).

Each sub-command lives in its own module and registers itself on :data:`app`.
Problems with the user's input print ``psfkit: error: <one line>`` and exit 2.
"""

from __future__ import annotations

import sys

import typer

from psfkit.errors import PsfkitError

from psfkit.cli._app import app  # noqa: E402

# sub-commands (each module adds its commands to `app`)
from psfkit.cli import fit as _fit  # noqa: E402,F401
from psfkit.cli import demo as _demo  # noqa: E402,F401
from psfkit.cli import find as _find  # noqa: E402,F401
from psfkit.cli import compare as _compare  # noqa: E402,F401
from psfkit.cli import view as _view  # noqa: E402,F401
from psfkit.cli import seq as _seq  # noqa: E402,F401
from psfkit.cli import info as _info  # noqa: E402,F401
from psfkit.cli import psf as _psf  # noqa: E402,F401
from psfkit.cli import inspect as _inspect  # noqa: E402,F401


def _click_errors() -> tuple[type, ...]:
    """Click's exception and abort classes: typer's own copy of click (typer >= 0.20) and click itself."""
    found: list[type] = [typer.Abort]
    for name in ("typer._click.exceptions", "click.exceptions"):
        try:
            mod = __import__(name, fromlist=["ClickException"])
        except ImportError:
            continue
        found += [getattr(mod, cls) for cls in ("ClickException", "Abort") if hasattr(mod, cls)]
    return tuple(found)


_CLICK_ERRORS = _click_errors()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``psfkit`` command."""
    import warnings

    warnings.filterwarnings("ignore", module="astropy")
    try:
        # not standalone: click's usage errors come here and print as one line, not a framed box
        code = app(args=argv, standalone_mode=False)
    except _CLICK_ERRORS as exc:
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        ctx = getattr(exc, "ctx", None)
        if "NoArgsIsHelpError" in kinds:  # a bare `psfkit` or `psfkit seq`: the help
            typer.echo(ctx.get_help() if ctx is not None else exc.format_message())
            sys.exit(2)
        if "UsageError" in kinds:
            where = f"{ctx.command_path} --help" if ctx is not None else "psfkit --help"
            typer.echo(f"psfkit: error: {exc.format_message().rstrip('.')} (see {where})", err=True)
            sys.exit(2)
        if "Abort" in kinds:
            typer.echo("psfkit: interrupted", err=True)
            sys.exit(130)
        typer.echo(f"psfkit: error: {exc.format_message()}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))
    except PsfkitError as exc:
        typer.echo(f"psfkit: error: {exc}", err=True)
        sys.exit(2)
    except (OSError, MemoryError) as exc:
        typer.echo(f"psfkit: error: {exc}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)

"""The ``psfkit`` command: thin faces over the library (no science here).

Each sub-command lives in its own module and registers itself on :data:`app`.
Problems with the user's input print ``psfkit: error: <one line>`` and exit 2.
"""

from __future__ import annotations

import sys

import typer

from ..errors import PsfkitError

from ._app import app, fail  # noqa: E402

# sub-commands (each module adds its commands to `app`)
from . import fit as _fit  # noqa: E402,F401
from . import demo as _demo  # noqa: E402,F401
from . import find as _find  # noqa: E402,F401
from . import compare as _compare  # noqa: E402,F401
from . import view as _view  # noqa: E402,F401
from . import seq as _seq  # noqa: E402,F401
from . import info as _info  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``psfkit`` command."""
    import warnings

    warnings.filterwarnings("ignore", module="astropy")
    try:
        app(args=argv, standalone_mode=True)
    except PsfkitError as exc:
        typer.echo(f"psfkit: error: {exc}", err=True)
        sys.exit(2)
    except (OSError, MemoryError) as exc:
        typer.echo(f"psfkit: error: {exc}", err=True)
        sys.exit(2)

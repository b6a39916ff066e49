"""The ``psfkit`` command: thin faces over the library (no science here).

Each sub-command lives in its own module and registers itself on the typer app of
:mod:`psfkit.cli._app`; :func:`main` imports only the module of the command it runs
(all of them for ``psfkit --help``), and each command imports the library modules it
uses inside its function, so that ``psfkit --help`` answers at once and ``psfkit find``
loads no web server, plotting or Dask.  ``psfkit.cli.app`` is the app with every command.
Problems with the user's input print ``psfkit: error: <one line>`` and exit 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import typer

from psfkit.cli._app import COMMANDS
from psfkit.errors import PsfkitError

__all__ = ["main", "app", "load_commands"]


def load_commands(argv: list[str] | None = None) -> typer.Typer:
    """Import the module of the command named in ``argv`` (every command's when none is, or
    for an unknown name, so that the help lists them all) and return the typer app.
    """
    from psfkit.cli._app import app

    name = next((a for a in (argv or []) if not a.startswith("-")), None)
    modules = [COMMANDS[name]] if name in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in modules:
        importlib.import_module(f"psfkit.cli.{module}")
    return app


def __getattr__(name: str) -> Any:
    if name == "app":  # the app with every command (CliRunner tests, docs)
        return load_commands()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


class _Interrupts:
    """Whether SIGINT came during the run: the handler records it, then raises KeyboardInterrupt
    as Python's default does (main thread only); a KeyboardInterrupt Python had to swallow is
    recorded too, silently.
    """

    def __init__(self) -> None:
        import signal
        import threading

        self.seen = False
        self._previous = None
        # a KeyboardInterrupt Python cannot raise (inside a garbage-collector callback) is not
        # printed as "Exception ignored in ...": it is recorded, and the run ends as interrupted
        self._hook = sys.unraisablehook
        sys.unraisablehook = self._unraisable
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def _handler(self, signum, frame):
        self.seen = True
        raise KeyboardInterrupt

    def _unraisable(self, info) -> None:
        if isinstance(info.exc_value, KeyboardInterrupt):
            self.seen = True
        else:
            self._hook(info)

    def __call__(self) -> bool:
        return self.seen

    def restore(self) -> None:
        import signal

        sys.unraisablehook = self._hook
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``psfkit`` command (``argv``: the arguments, default ``sys.argv[1:]``).

    Exits with the command's code (``SystemExit``); 2 for bad input, with a one-line message.

    Examples
    --------
    >>> from psfkit.cli import main
    >>> try:
    ...     main(["find", "--threshold", "-1", "missing.fits"])
    ... except SystemExit as exc:
    ...     print(exc.code)
    2
    """
    import warnings

    warnings.filterwarnings("ignore", module="astropy")
    argv = list(sys.argv[1:] if argv is None else argv)
    app = load_commands(argv)
    errors = _click_errors()
    interrupted = _Interrupts()
    try:
        # not standalone: click's usage errors come here and print as one line, not a framed box
        code = app(args=argv, prog_name="psfkit", standalone_mode=False)
        if interrupted():
            # Ctrl+C whose KeyboardInterrupt Python swallowed (raised inside a garbage-collector
            # callback, as Dask's has: "Exception ignored in ...") still ends the run as one
            raise KeyboardInterrupt
    except errors as exc:
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
    except KeyboardInterrupt:
        typer.echo("psfkit: interrupted", err=True)
        sys.exit(130)
    except (OSError, MemoryError) as exc:
        typer.echo(f"psfkit: error: {exc}", err=True)
        sys.exit(2)
    finally:
        interrupted.restore()
    if code == 130:  # typer turns Ctrl+C into exit code 130, silently
        typer.echo("psfkit: interrupted", err=True)
    if isinstance(code, int) and code:
        sys.exit(code)

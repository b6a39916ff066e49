"""User-facing errors.

Every problem with the user's input (a file, a position, an option) raises
:class:`PsfkitError` with a one-line message.  The command line turns it into
``psfkit: error: <message>`` and exit code 2; nothing else is caught, so a real
bug still shows its traceback.
"""

from __future__ import annotations

__all__ = ["PsfkitError"]


class PsfkitError(ValueError):
    """A problem with the user's input, explained in one line.

    Examples
    --------
    >>> import psfkit
    >>> try:
    ...     psfkit.load_image("no-such-file.fits")
    ... except psfkit.PsfkitError as error:
    ...     print(type(error).__name__)
    PsfkitError
    """

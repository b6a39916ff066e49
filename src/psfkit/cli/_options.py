"""The image-loading options every command shares (--hdu, --channel, --focal-length, --pixel-size,
--binning, --scale), and the one call that loads an image from them.  No science here: the rules
live in :mod:`psfkit.io.image` (see docs/formats.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

__all__ = ["hdu_option", "channel_option", "focal_length_option", "pixel_size_option", "binning_option",
           "scale_option", "load_from_options", "is_per_channel", "user_optics"]

CHANNEL_HELP = ("Plane to measure: luminance (RGB default), R, G, B, a plane number (stacks); Bayer mosaics: green "
                "(default), luminance (2x2 binned), R, G, B or mosaic; 'all' or a list like R,G,B measures each "
                "plane (a 'channel' column).")


def hdu_option() -> Any:
    return typer.Option(None, "--hdu", help="FITS HDU to read: index or EXTNAME (default: the first holding an image).")


def channel_option(*, per_channel: bool = True) -> Any:
    text = CHANNEL_HELP if per_channel else CHANNEL_HELP.split(" 'all'")[0]
    return typer.Option(None, "--channel", help=text)


def focal_length_option() -> Any:
    return typer.Option(None, "--focal-length", help="Focal length in mm (wins over FOCALLEN).")


def pixel_size_option() -> Any:
    return typer.Option(None, "--pixel-size", help="Pixel size in um (wins over XPIXSZ).")


def binning_option() -> Any:
    return typer.Option(None, "--binning", help="The pixel size is the unbinned one: multiply it by this.")


def scale_option() -> Any:
    return typer.Option(None, "--scale", help="Image scale in arcsec/px (wins over everything else).")


def user_optics(focal_length: Optional[float], pixel_size: Optional[float], binning: Optional[float],
                scale: Optional[float]) -> dict:
    """The load_image keywords of the user's optics options."""
    return dict(focal_length=focal_length, pixel_size=pixel_size, binning=binning, pixel_scale=scale)


def is_per_channel(channel: Optional[str]) -> bool:
    """Whether --channel asks for every plane ('all') or a list (R,G,B)."""
    return channel is not None and (channel.strip().lower() == "all" or "," in channel)


def load_from_options(image: Path, *, hdu: Optional[str] = None, channel: Optional[str] = None,
                      focal_length: Optional[float] = None, pixel_size: Optional[float] = None,
                      binning: Optional[float] = None, scale: Optional[float] = None) -> Any:
    """:func:`psfkit.load_image` with the command line's options."""
    from psfkit.errors import PsfkitError
    from psfkit.io.image import load_image

    if is_per_channel(channel):
        raise PsfkitError(f"--channel {channel}: this command measures one plane; choose one (R, G, B, luminance ...)")
    return load_image(image, hdu=hdu, channel=channel,
                      **user_optics(focal_length, pixel_size, binning, scale))
